"""Targets: the serving layers a benchmark measures, each reached the same way.

A target is the only thing that knows how to reach a serving layer; workloads and the runner
only ever call this interface::

    t = make_target("engine:all")          # or Target objects built in Python
    await t.start("mini")                  # load, spawn, health-check (idempotent)
    done = await t.generate(Request(...))  # a krmlx Completion, timed on the caller's side
    await t.stop()                         # always: processes killed and reaped

Operations beyond ``generate`` (``tokenize``, ``load`` a model, worker ``call``s, ``with_worker``
variants such as injected faults) raise :class:`NotSupported` where a target has none; the
runner records that once per workload, never a crash. ``run_wave(requests)`` sends requests
at once (the raw BatchGenerator target overrides it: it *is* a wave).

Spec strings (``--target`` on the CLI, :func:`make_target`), optionally ``NAME=SPEC``:

================================  =========================================================
``direct``                        DirectEngine: mlx-lm in this process (the baseline)
``raw``                           mlx-lm's BatchGenerator in this process (waves only)
``engine[:PHASES][?k=v&...]``     the stdio Engine; PHASES ``phase0`` (default) | ``all`` |
                                  a comma list; ``k=v``: WorkerConfig fields
                                  (``scheduler=batched``, ``prompt_cache=on``, ``draft=M``...)
``http://HOST:PORT/v1[?model=ID]`` any OpenAI-compatible endpoint already running
``mlx_lm.server[?k=v]``           mlx-lm's server, started here; ``k=v``: its flags
                                  (``decode_concurrency=32``)
``krmlx.serve[:PHASES][?k=v]``     krmlx's own server, started here (``?scheduler=serial``...)
``cmd:COMMAND``                   any server command line, with ``{port}``, ``{model}`` (the
                                  model folder) and ``{host}``; started and stopped here
``peer:NAME``                     a peer server in its own venv (:mod:`krmlx.bench.peers`)
================================  =========================================================
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from ..errors import ConfigError, KrmlxError
from ..types import Completion, Request


class NotSupported(KrmlxError):
    """A target lacks an operation a workload needs (recorded, not a failure)."""


class Target:
    """The interface; see the module docstring. ``name`` labels the target's records
    (the ``engine`` column), ``spec`` is what made it."""

    kind = "target"
    ops: frozenset = frozenset({"generate"})

    def __init__(self, name: str, spec: str):
        self.name, self.spec = name, spec
        self.model: str | None = None
        self.folder: Path | None = None

    async def start(self, model: str) -> Target:
        return self

    async def stop(self) -> None:
        pass

    @property
    def alive(self) -> bool:
        return True

    @property
    def started(self) -> bool:
        """Started (by whoever started it: :func:`~krmlx.bench.runner.run_workload` stops
        only the targets it started itself)."""
        return self.model is not None

    async def generate(self, request: Request) -> Completion:  # pragma: no cover - abstract
        raise NotImplementedError

    async def run_wave(self, requests: list[Request]) -> list[Completion | BaseException]:
        return await asyncio.gather(*(self.generate(r) for r in requests), return_exceptions=True)

    def lacks(self, op: str) -> NotSupported:
        return NotSupported(f"{self.name} ({self.kind}) has no {op!r}")

    async def tokenize(self, text: str, model: str | None = None) -> list[int]:
        raise self.lacks("tokenize")

    async def load(self, model: str) -> dict:
        raise self.lacks("load")

    async def call(self, method: str, params: dict | None = None, model: str | None = None):
        raise self.lacks(method)

    def with_worker(self, name: str | None = None, **changes) -> Target:
        raise self.lacks("worker settings " + ", ".join(sorted(changes)))

    def stats(self) -> dict:
        """Stage and client counters (engines); {} elsewhere."""
        return {}

    def pids(self) -> list[int]:
        """The processes whose CPU time is this target's (besides the caller's own)."""
        return []

    def info(self) -> dict:
        return {"name": self.name, "spec": self.spec, "kind": self.kind, "ops": sorted(self.ops)}


def _descendants(pid: int | None) -> list[int]:
    import psutil

    if not pid:
        return []
    try:
        return [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        return []


class DirectTarget(Target):
    kind = "direct"
    ops = frozenset({"generate", "tokenize"})

    def __init__(self, name: str = "direct", spec: str = "direct"):
        super().__init__(name, spec)
        self.engine = None

    async def start(self, model: str) -> DirectTarget:
        from ..direct import DirectEngine
        from ..models import resolve_model

        if self.engine is None:
            self.model, self.folder = model, resolve_model(model)
            self.engine = await DirectEngine(self.folder).start()
        return self

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.close()
        self.engine = self.model = None

    async def generate(self, request: Request) -> Completion:
        if request.model not in (None, self.model):
            raise self.lacks("model switching")
        return await self.engine.complete(request)

    async def tokenize(self, text: str, model: str | None = None) -> list[int]:
        if model not in (None, self.model):
            raise self.lacks("model switching")
        return await self.engine.tokenize(text)

    def info(self) -> dict:
        return {**super().info(), "load_ms": getattr(self.engine, "load_ms", None)}


class EngineTarget(Target):
    kind = "engine"
    ops = frozenset({"generate", "tokenize", "load", "call", "worker"})

    def __init__(self, config=None, name: str | None = None, spec: str | None = None):
        from ..stack import StackConfig

        self.config = config if config is not None else StackConfig()
        super().__init__(name or self.config.label, spec or f"engine:{self.config.label}")
        self.engine = None

    async def start(self, model: str) -> EngineTarget:
        from ..engine import Engine

        if self.engine is None:
            engine = Engine(model, self.config)
            try:
                await engine.start()
            except BaseException:
                await engine.close()
                raise
            self.engine, self.folder, self.model = engine, engine.path, model
        return self

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.close()
        self.engine = self.model = None

    @property
    def alive(self) -> bool:
        return self.engine is not None

    async def generate(self, request: Request) -> Completion:
        return await self.engine.complete(request)

    async def tokenize(self, text: str, model: str | None = None) -> list[int]:
        return await self.engine.tokenize(text, model=model)

    async def load(self, model: str) -> dict:
        return await self.engine.call("load_model", {}, model)

    async def call(self, method: str, params: dict | None = None, model: str | None = None):
        return await self.engine.call(method, params, model)

    def with_worker(self, name: str | None = None, **changes) -> EngineTarget:
        cfg = self.config.with_worker(**changes)
        return EngineTarget(cfg, name or self.name, self.spec)

    def with_config(self, config, name: str | None = None) -> EngineTarget:
        return EngineTarget(config, name or self.name, self.spec)

    def stats(self) -> dict:
        return self.engine.stats() if self.engine is not None else {}

    def pids(self) -> list[int]:
        client = getattr(self.engine, "client", None)
        return _descendants(getattr(client, "pid", None))

    def info(self) -> dict:
        client = getattr(self.engine, "client", None)
        return {**super().info(), "config": self.config.to_dict(),
                "load_ms": getattr(self.engine, "load_ms", None),
                "worker": dict(getattr(client, "ready", None) or {})}


class RawBatchTarget(Target):
    """mlx-lm's BatchGenerator in this process, no serving layer: the ceiling of continuous
    batching. A wave inserts every prompt at once and steps until all are done."""

    kind = "raw"

    def __init__(self, name: str = "raw", spec: str = "raw", *, completion_batch_size: int = 64,
                 prefill_batch_size: int = 8):
        super().__init__(name, spec)
        self.completion_batch_size, self.prefill_batch_size = completion_batch_size, prefill_batch_size
        self.loaded = None

    async def start(self, model: str) -> RawBatchTarget:
        from ..models import load, resolve_model

        if self.loaded is None:
            self.model, self.folder = model, resolve_model(model)
            self.loaded = load(self.folder)
        return self

    async def stop(self) -> None:
        self.loaded = self.model = None

    async def generate(self, request: Request) -> Completion:
        (done,) = await self.run_wave([request])
        if isinstance(done, BaseException):
            raise done
        return done

    async def run_wave(self, requests: list[Request]) -> list[Completion | BaseException]:
        from mlx_lm.generate import BatchGenerator

        from .. import gen
        from ..types import Usage

        model, tokenizer = self.loaded
        if any(r.temperature for r in requests):
            raise self.lacks("sampling with temperature")
        prompts = [gen.encode_prompt(tokenizer, r.to_params()) for r in requests]
        eos = sorted(tokenizer.eos_token_ids)
        t0 = time.perf_counter()
        batch = BatchGenerator(model, stop_tokens=[[t] for t in eos],
                               completion_batch_size=max(self.completion_batch_size, len(requests)),
                               prefill_batch_size=self.prefill_batch_size,
                               prefill_step_size=gen.DEFAULT_PREFILL_STEP)
        uids = batch.insert(prompts, max_tokens=[r.max_tokens for r in requests])
        times = {u: [] for u in uids}
        tokens = {u: [] for u in uids}
        detoks = {u: tokenizer.detokenizer for u in uids}  # a fresh one each: same text as streams
        reasons: dict = {}
        try:
            while len(reasons) < len(uids):
                _, responses = batch.next()
                now = time.perf_counter()
                for r in responses:
                    if r.finish_reason != "stop":
                        times[r.uid].append(now)
                        tokens[r.uid].append(r.token)
                        detoks[r.uid].add_token(r.token)
                    if r.finish_reason is not None:
                        reasons[r.uid] = r.finish_reason
                await asyncio.sleep(0)
        finally:
            batch.close()
        t_end = time.perf_counter()
        out = []
        for req, prompt, uid in zip(requests, prompts, uids, strict=True):
            detoks[uid].finalize()
            done = Completion(text=detoks[uid].text, token_ids=tuple(tokens[uid]),
                              finish_reason=reasons[uid], usage=Usage(len(prompt), len(tokens[uid])),
                              t_start_s=t0, token_times_s=tuple(times[uid]), t_end_s=t_end,
                              request_id=req.id)
            out.append(done)
        return out


class HttpTarget(Target):
    """Any OpenAI-compatible endpoint (``base_url`` ends in ``/v1``). ``model_id`` None: the
    first model the server lists (``/v1/models``)."""

    kind = "http"

    def __init__(self, base_url: str, name: str | None = None, spec: str | None = None, *,
                 model_id: str | None = None, api_key: str | None = None,
                 max_connections: int = 256):
        super().__init__(name or "http:" + urlsplit(base_url).netloc, spec or base_url)
        self.base_url, self.model_id, self.api_key = base_url.rstrip("/"), model_id, api_key
        self.max_connections = max_connections
        self.client = None
        self.served_models: list[str] = []
        self.models_error: str | None = None  # /models failed (the model id was given)

    async def start(self, model: str) -> HttpTarget:
        from ..models import resolve_model
        from .http import OpenAIClient

        if self.client is None:
            self.model = model
            try:
                self.folder = resolve_model(model)
            except KrmlxError:
                self.folder = None  # a model only the server knows
            self.client = OpenAIClient(self.base_url, api_key=self.api_key,
                                       max_connections=self.max_connections,
                                       count_tokens=self._token_counter())
            try:
                self.served_models = await self.client.models()
            except Exception as e:
                if self.model_id is None:  # without a list, only a given model id will do
                    await self.client.aclose()
                    self.client = self.model = None
                    raise KrmlxError(f"{self.name}: no model list from {self.base_url}/models "
                                     f"({type(e).__name__}: {e}); give ?model=ID") from None
                self.models_error = f"{type(e).__name__}: {e}"
            if self.model_id is None:
                self.model_id = self._pick_model()
        return self

    def _pick_model(self) -> str:
        names = self.served_models
        if not names:
            raise KrmlxError(f"{self.name}: {self.base_url}/models lists no model")
        for candidate in (self.model, str(self.folder) if self.folder else None):
            if candidate in names:
                return candidate
        return names[0]

    def _token_counter(self):
        """Counts output tokens with the model's tokenizer for servers that send no usage."""
        if self.folder is None:
            return None
        tokenizer = []

        def count(text: str) -> int:
            if not tokenizer:
                from transformers import AutoTokenizer

                tokenizer.append(AutoTokenizer.from_pretrained(str(self.folder)))
            return len(tokenizer[0].encode(text, add_special_tokens=False))

        return count

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        self.client = self.model = None

    async def generate(self, request: Request) -> Completion:
        if request.model not in (None, self.model):
            raise self.lacks("model switching")
        if request.prompt_ids is not None:
            raise self.lacks("prompt_ids (an OpenAI server takes text)")
        return await self.client.generate(request, self.model_id)

    def info(self) -> dict:
        out = {**super().info(), "base_url": self.base_url, "model_id": self.model_id,
               "served_models": self.served_models, "models_error": self.models_error}
        if self.client is not None:
            out["http_client"] = self.client.describe()
        return out


def parse_options(query: str) -> dict:
    """``k=v&k=v`` as typed values (int, float, bool, None or text)."""
    out = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        low = value.lower()
        if low in ("true", "on", "yes"):
            out[key] = True
        elif low in ("false", "off", "no"):
            out[key] = False
        elif low in ("none", "null"):
            out[key] = None
        else:
            try:
                out[key] = int(value)
            except ValueError:
                try:
                    out[key] = float(value)
                except ValueError:
                    out[key] = value
    return out


def engine_config(phases: str, options: dict):
    """A StackConfig from ``engine:PHASES?options``: options are WorkerConfig fields; a few
    take a short form (``prompt_cache=on``, ``distributed=2``, ``faults={json}``)."""
    import json

    from ..stack import StackConfig, parse_phases
    from ..worker.launch import DistributedConfig
    from ..worker.prompt_cache import PromptCacheConfig

    worker = dict(options)
    if "prompt_cache" in worker:
        worker["prompt_cache"] = PromptCacheConfig() if worker["prompt_cache"] else None
    if isinstance(worker.get("distributed"), int):
        worker["distributed"] = DistributedConfig(ranks=worker["distributed"])
    if isinstance(worker.get("faults"), str):
        worker["faults"] = json.loads(worker["faults"])
    return StackConfig.phases(parse_phases(phases), **worker)


def make_target(spec) -> Target:
    """A Target from its spec string (see the module docstring), or ``spec`` itself if it
    is a Target already. ConfigError names what is wrong."""
    if isinstance(spec, Target):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"target: a spec string or a Target, got {spec!r}")
    text = spec.strip()
    name = None
    head = text.split(":", 1)[0].split("?", 1)[0]
    if "=" in head and not text.startswith(("http://", "https://", "cmd:")):
        name, text = text.split("=", 1)
    if text.startswith(("http://", "https://")):
        url, _, query = text.partition("?")
        opts = parse_options(query)
        return HttpTarget(url, name, spec, model_id=opts.pop("model", None),
                          api_key=opts.pop("api_key", None) or os.environ.get("KRMLX_API_KEY"))
    if text.startswith("cmd:"):
        from .servers import CommandServer

        return CommandServer(text[4:], name, spec)
    base, _, query = text.partition("?")
    kind, _, arg = base.partition(":")
    opts = parse_options(query)
    if kind == "direct" and not arg and not opts:
        return DirectTarget(name or "direct", spec)
    if kind == "raw" and not arg:
        return RawBatchTarget(name or "raw", spec, **opts)
    if kind == "engine":
        try:
            cfg = engine_config(arg, opts)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"target {spec!r}: {e}") from None
        return EngineTarget(cfg, name or cfg.label + (f"?{query}" if query else ""), spec)
    if kind == "mlx_lm.server" and not arg:
        from .servers import MlxLmServer

        return MlxLmServer(name, spec, **opts)
    if kind == "krmlx.serve":
        from .servers import KrmlxServe

        return KrmlxServe(arg or "none", name, spec, **opts)
    if kind == "peer" and arg:
        from .servers import PeerServer

        return PeerServer(arg, name or f"peer:{arg}", spec, **opts)
    raise ConfigError(f"unknown target {spec!r}; targets: direct, raw, engine[:PHASES][?k=v], "
                      "http://HOST:PORT/v1, mlx_lm.server[?k=v], krmlx.serve[:PHASES][?k=v], "
                      "cmd:COMMAND, peer:NAME")
