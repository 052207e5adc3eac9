"""Peer serving layers: how to install, start, health-check and read each one.

A :class:`Peer` says which pins its venv holds (built by :mod:`krmlx.bench.venvs`; no pins
means krmlx's own environment), the command line that serves a model folder on 127.0.0.1
at a port, the GET path that answers 200 once it is ready, the model id it lists in
``/v1/models`` (and expects in requests), and the timings it reports itself. A peer that
cannot run here keeps its entry with ``unavailable_reason``: the command that failed and
the last lines of its output, for results and README to quote.

Each peer's ``/v1/chat/completions``, as seen on the ``tiny`` preset (``"stream": true,
"stream_options": {"include_usage": true}``; SSE, one ``data:`` line per event, a blank
line between events; ``benchmarks/peers_probe.py`` checks all of this again):

==========  =========================  =========================  =========================
            mlx_lm.server 0.32.2       rapid-mlx 0.16.10          vllm-mlx 0.6.0
==========  =========================  =========================  =========================
comments    ``: keepalive N/M`` while  ``: keepalive``, also      none seen
            the prompt is processed    between data events
first       has content: ``delta:      role only: ``delta:        role only: ``delta:
event       {role, content}``          {role: assistant}``        {role}``, ``usage: null``
content     ``delta: {role, content}`` ``delta: {content}``       ``delta: {content}``;
events      (role repeated); sent                                 every event has a
            when the detokenized                                  ``usage`` key (null until
            text grows: events <=                                 the last content event)
            tokens
last        one more event: ``finish_  the last content event     the last content event
content     reason``, ``delta:         has ``finish_reason`` and  has ``finish_reason`` and
            {role}``, no content       ``metrics`` (below)        ``usage`` (even without
                                                                  include_usage)
usage       ``object: chat.completion  ``chat.completion.chunk``  ``chat.completion.chunk``,
event       `` (no ``.chunk``),        ``choices: []``; only      ``choices: []``: usage is
            ``choices: []``; only      with include_usage         sent twice, take the last
            with include_usage
end         ``data: [DONE]``           ``data: [DONE]``           ``data: [DONE]``
HTTP        1.0, closes after every    1.1 keep-alive (uvicorn)   1.1 keep-alive (uvicorn)
            response: no reuse
model id    folder's resolved path;    folder path as given;      folder path as given;
            omitted: the loaded one    omitted: the served one;   omitted: 422; unknown:
            (echoed ``default_         unknown: 404 ``model_not_  404 ``{"detail": ...}``
            model``); unknown: a hub   found``
            lookup (fails offline)
max tokens  ``max_tokens``, ``max_     ``max_tokens``, ``max_     ``max_tokens`` only:
            completion_tokens``        completion_tokens``        ``max_completion_tokens``
                                                                  is dropped (it generates
                                                                  to ``--max-tokens``,
                                                                  32768 by default)
temp 0      greedy, same text on       greedy, same text (and     greedy, same text (and
            repeats, stream or not     same as mlx_lm.server)     same as mlx_lm.server)
seed        accepted, but a request    accepted, text unchanged   accepted, text unchanged
            with ``seed`` is not
            batchable (runs alone):
            do not send it
own         none                       ``metrics{time_to_first_   Prometheus ``/metrics``
timings                                token_ms, mean_itl_ms}``;  with ``--enable-metrics``
                                       Prometheus ``/metrics``    (TTFT histogram)
batching    on (decode 32, prompt 8)   on by default (batched     only with ``--continuous-
                                       engine)                    batching`` (used here)
==========  =========================  =========================  =========================

Other things a client must handle: rapid-mlx keeps a stream's HTTP body open for ~0.4 s
after ``data: [DONE]`` (seen: [DONE] at 236 ms, body end at 617 ms, tiny, 32 tokens), so E2E
must be taken at ``[DONE]``, and a closed-loop client that reuses the connection waits that
long before its next request can start (GuideLLM at concurrency 1 showed a TTFT p50 of 472
ms, most likely from this, against ~40 ms per request alone). mlx_lm.server given
``stream_options`` without ``include_usage`` raises KeyError after the content (no usage
event, no ``[DONE]``); under concurrent load on 2 cores it sometimes delivers a stream in
one burst (all tokens within ~2 ms, after a late first token), so per-stream ITL medians
swing at concurrency > 1.

rapid-mlx's ``time_to_first_token_ms`` runs, on the monotonic clock, from the engine's
``Request`` object being made (after HTTP parsing, chat template and tokenization) to the
scheduler seeing the first token; ``mean_itl_ms`` = (last token - first token) / (n - 1).
Neither includes HTTP, SSE serialization or the client, so it sits below a client's TTFT.

mlx_lm.server's concurrency flags (0.32.2): ``--decode-concurrency`` (default 32: requests
decoded together), ``--prompt-concurrency`` (default 8: prompts prefilled together),
``--prefill-step-size`` (default 2048 tokens per prefill step). Its ``/v1/models`` scans the
hub cache and answers an empty 200 body when that folder does not exist; :func:`peer_env`
points ``HF_HUB_CACHE`` at an empty folder in that case.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..blas import blas_env
from ..errors import KrmlxError
from ..process import ManagedProcess, free_port
from .venvs import Venv, ensure_venv, venvs_dir


@dataclass(frozen=True)
class Peer:
    """One serving layer.

    ``pins``: what its venv holds (empty: krmlx's own environment). ``argv``: the command
    that serves a model folder on 127.0.0.1, with placeholders ``{bin}`` (the venv's bin
    folder), ``{python}``, ``{model}`` and ``{port}``. ``health``: a GET path that answers
    200 once the model is loaded. ``model_id``: the id it lists in ``/v1/models`` and wants
    as ``model`` (``{model}`` as given, ``{model_resolved}`` the resolved path). ``options``:
    its flags unless the caller says otherwise (``{"decode_concurrency": 64}`` ->
    ``--decode-concurrency 64``; :func:`peer_argv` adds them). ``env``: variables it needs
    (telemetry and update checks off). ``own_metrics``: where it reports its own timings.
    ``unavailable_reason``: set when it cannot run here (then never built).
    """

    name: str
    pins: tuple[str, ...]
    argv: tuple[str, ...]
    health: str = "/v1/models"
    model_id: str = "{model}"
    options: dict = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    own_metrics: str | None = None
    unavailable_reason: str | None = None


_QUIET = {"HF_HUB_OFFLINE": "1"}

PEERS: dict[str, Peer] = {p.name: p for p in [
    Peer(
        "mlx_lm.server", (),
        ("{python}", "-m", "mlx_lm", "server", "--model", "{model}", "--host", "127.0.0.1",
         "--port", "{port}"),
        health="/health", model_id="{model_resolved}",
        # its KV prompt cache off unless asked for: the bench and the cross-check repeat
        # prompts (warm-up, trials), and krmlx's engine reuses no KV state unless its prompt
        # cache is on; a continuous batch of 64, the size of krmlx's own
        options={"decode_concurrency": 64, "prompt_cache_size": 0, "log_level": "WARNING"},
    ),
    Peer(
        "rapid-mlx", ("rapid-mlx==0.16.10", "mlx[cpu]==0.32.4"),
        ("{bin}/rapid-mlx", "serve", "{model}", "--host", "127.0.0.1", "--port", "{port}",
         "--yes", "--disable-model-downloads", "--no-preflight"),
        env={"RAPID_MLX_TELEMETRY": "0", "DO_NOT_TRACK": "1",
             "RAPID_MLX_DISABLE_VERSION_CHECK": "1"},
        own_metrics="metrics.time_to_first_token_ms, metrics.mean_itl_ms: top level of a "
                    "response, last content event of a stream; Prometheus /metrics",
    ),
    Peer(
        "vllm-mlx", ("vllm-mlx==0.6.0", "mlx[cpu]==0.32.4", "torch==2.14.1",
                     "torchvision==0.29.1"),
        # --continuous-batching: without it vllm-mlx serves one request at a time
        ("{bin}/vllm-mlx", "serve", "{model}", "--host", "127.0.0.1", "--port", "{port}",
         "--continuous-batching", "--enable-metrics"),
        own_metrics="Prometheus /metrics (with --enable-metrics): "
                    "vllm_mlx_inference_ttft_seconds histogram, streaming requests only",
    ),
    Peer(
        "mlx-openai-server", ("mlx-openai-server==1.8.1", "mlx[cpu]==0.32.4"),
        # command line read from its CLI source (app/cli.py), never run here
        ("{bin}/mlx-openai-server", "launch", "--model-path", "{model}", "--model-type", "lm",
         "--host", "127.0.0.1", "--port", "{port}"),
        unavailable_reason=(
            "not installable on Linux: `pip install mlx-openai-server==1.8.1 "
            "mlx[cpu]==0.32.4` -> ResolutionImpossible: 'mflux 0.17.5 depends on "
            "mlx[cuda13]<0.32.0 and >=0.30.3; sys_platform == \"linux\"'; without the mlx "
            "pin: 'mlx-openai-server 1.8.1 depends on mlx>=0.31.2' and 'mlx[cuda13] 0.31.2 "
            "depends on mlx-cuda-13==0.31.2', which has no release (PyPI has 0.31.1, 0.32.0+)"),
    ),
]}


def get_peer(name: str) -> Peer:
    """The peer named ``name``; KrmlxError naming the known ones otherwise."""
    try:
        return PEERS[name]
    except KeyError:
        raise KrmlxError(f"unknown peer {name!r}; known: {', '.join(PEERS)}") from None


def peer_venv(peer: Peer, *, builder: Callable | None = None) -> Venv:
    """The peer's venv, built on first use; krmlx's own environment for a peer without pins.

    Raises KrmlxError with the recorded reason for a peer that cannot run here.
    """
    if peer.unavailable_reason:
        raise KrmlxError(f"{peer.name} is unavailable here: {peer.unavailable_reason}")
    if not peer.pins:
        return Venv(Path(sys.prefix), ())
    return ensure_venv(peer.name, peer.pins, builder=builder)


def flags(options: dict) -> list[str]:
    """``{"decode_concurrency": 64, "trust": True}`` -> ``--decode-concurrency 64 --trust``
    (False and None leave a flag out; 0 is a value: ``--prompt-cache-size 0``)."""
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is not False and value is not None:
            out += [flag, str(value)]
    return out


def peer_argv(peer: Peer, venv: Venv, model: str | os.PathLike, port: int | str,
              options: dict | None = None, extra: Sequence[str] = ()) -> list[str]:
    """The peer's command line for ``model`` at ``port``: its argv, its ``options`` updated
    with ``options`` as flags, then ``extra`` flags as given."""
    python = sys.executable if not venv.pins else str(venv.python)
    values = {"bin": str(venv.bin), "python": python, "model": str(model), "port": str(port)}
    return ([a.format(**values) for a in peer.argv] + flags({**peer.options, **(options or {})})
            + list(extra))


def peer_model_id(peer: Peer, model: str | os.PathLike) -> str:
    """The id the peer lists in ``/v1/models`` for ``model`` (send it as ``model``)."""
    return peer.model_id.format(model=str(model), model_resolved=str(Path(model).resolve()))


def peer_env(peer: Peer, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment to start the peer in: krmlx's BLAS choice, offline hub, its own vars.

    Peers in their own venvs run the same ``mlx[cpu]`` wheel as krmlx, so they get the same
    OpenBLAS preload as krmlx's workers (equal treatment).
    """
    env = blas_env(base)
    env.update(_QUIET)
    env.update(peer.env)
    hub = Path(env.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    if "HF_HUB_CACHE" not in env and not hub.is_dir():
        empty = venvs_dir().parent / "hf-hub-empty"
        empty.mkdir(parents=True, exist_ok=True)
        env["HF_HUB_CACHE"] = str(empty)
    return env


def cmd_target(peer: Peer, venv: Venv, extra_env: Sequence[str] = ()) -> str:
    """The peer as a bench ``cmd:`` target string, ``{model}`` and ``{port}`` left open.

    Its own variables come first through ``env`` (the bench adds BLAS and HF variables).
    """
    filled = peer_argv(peer, venv, "{model}", "{port}")
    env = [f"{k}={v}" for k, v in {**_QUIET, **peer.env}.items()] + list(extra_env)
    words = (["env", *env] if env else []) + filled
    return "cmd:" + " ".join(w if w in ("{model}", "{port}") else shlex.quote(w) for w in words)


@dataclass(frozen=True)
class RunningPeer:
    """A started peer: where to reach it and what to call its model."""

    peer: Peer
    base_url: str        # http://127.0.0.1:PORT/v1
    model_id: str
    pid: int
    log: Path


@contextlib.contextmanager
def serving(peer: Peer | str, model: str | os.PathLike, *, port: int | None = None,
            venv: Venv | None = None, options: dict | None = None, extra: Sequence[str] = (),
            timeout_s: float = 180.0, log_dir: Path | None = None) -> Iterator[RunningPeer]:
    """Start ``peer`` on ``model`` at 127.0.0.1, wait until healthy, yield, stop and reap.

    A :class:`~krmlx.process.ManagedProcess` (its own session, SIGTERM then SIGKILL of the
    group, always reaped); its stdout and stderr go to a log file (in ``log_dir``, else in a
    temporary folder removed when the server stops). A server that exits or stays unhealthy
    past ``timeout_s`` raises :class:`~krmlx.process.ServerStartError` (a KrmlxError) with
    the last lines of that log.
    """
    peer = get_peer(peer) if isinstance(peer, str) else peer
    venv = venv or peer_venv(peer)
    port = port or free_port()
    own_dir = log_dir is None  # a folder made here goes when the peer stops
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="krmlx-peer-"))
    log = log_dir / f"{peer.name}-{port}.log"
    process = ManagedProcess(peer_argv(peer, venv, model, port, options, extra), port=port,
                             health_path=peer.health, name=peer.name, env=peer_env(peer),
                             ready_timeout_s=timeout_s, stop_timeout_s=15.0, log_path=log)
    try:
        with process:
            yield RunningPeer(peer, process.base_url, peer_model_id(peer, model), process.pid,
                              log)
    finally:
        if own_dir:
            shutil.rmtree(log_dir, ignore_errors=True)
