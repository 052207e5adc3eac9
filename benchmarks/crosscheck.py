"""An independent cross-check: GuideLLM's numbers for an OpenAI-compatible server.

    .venv/bin/python benchmarks/crosscheck.py --model tiny --concurrency 1,4 --requests 20
    .venv/bin/python benchmarks/crosscheck.py --url http://127.0.0.1:8080/v1 --model tiny

Without ``--url`` it starts ``mlx_lm.server`` on the model (127.0.0.1, a free port; always
stopped and reaped) and runs GuideLLM against it; with ``--url`` it uses a server already
running (``--model`` then names the tokenizer folder and the id to send). Prints one row
per concurrency level; ``--out`` writes them, with the exact command line, as JSON.

GuideLLM 0.8.1 lives in its own cached venv (:mod:`krmlx.bench.venvs`: ``guidellm==0.8.1``
with the CPU build ``torch==2.13.0``, which keeps it at ~1.5 GB instead of a CUDA build).
The command (:func:`guidellm_argv`), one run for all levels::

    guidellm run
      --backend '{"kind": "openai_http", "target": ROOT, "model": MODEL_ID,
                  "request_format": "/v1/chat/completions", "timeout": 600,
                  "extras": {"body": {"temperature": 0, "max_tokens": O}}}'
      --profile kind=concurrent,streams=C1 --override profile.streams C1,C2,...
      --constraint kind=max_requests,count=N
      --data kind=synthetic_text,prompt_tokens=P,output_tokens=O
      --tokenizer kind=huggingface_auto,model=FOLDER
      --seed kind=static,value=42
      --output kind=json,path=OUT.json --disable-console-interactive

with ``GUIDELLM__MAX_WORKER_PROCESSES=1`` (one client process, like krmlx's client; the
default spawns several, which on 2 cores take CPU from the server). ROOT is the base URL
without ``/v1``. GuideLLM streams every request (``stream_options.include_usage``), asks
for ``max_completion_tokens: O`` with ``ignore_eos: true`` (a server that ignores
``ignore_eos`` may stop early: ``output_tokens_p50`` shows it) and ``stop: null``; the
extras add ``temperature: 0`` and ``max_tokens: O`` (vllm-mlx 0.6.0 drops
``max_completion_tokens``). The synthetic prompt is P tokens by FOLDER's tokenizer before
the chat template (mlx_lm.server counts P + 7 on the tiny preset).

Where each number comes from in GuideLLM's JSON, ``benchmarks[i]`` (one per level):

==================  ==========================================================================
ttft_p50_ms         ``metrics.time_to_first_token_ms.successful.median``: first token
                    iteration (first content-bearing SSE event) - request start, per request
itl_p50_ms          ``metrics.inter_token_latency_ms.successful.median``: per request
                    (last token - first token) / (n - 1), weighted per token; this is what
                    krmlx and vLLM's bench call TPOT
tpot_p50_ms         ``metrics.time_per_output_token_ms.successful.median``: GuideLLM's TPOT
                    is request latency / n, *including* TTFT: not krmlx's TPOT
e2e_p50_ms          ``metrics.request_latency.successful.median`` x 1000
output_tok_s        ``metrics.output_tokens_per_second.successful.mean``: output tokens over
                    the benchmark's wall time (= sum of output tokens / ``duration``)
requests_ok/...     ``metrics.request_totals.{successful,errored,incomplete}``
prompt/output p50   ``metrics.{prompt,output}_token_count.successful.median`` (from usage)
duration_s          ``duration``; the level's ``concurrency`` is ``config.strategy.streams``
==================  ==========================================================================

A run on the tiny preset (2 shared cores, OpenBLAS, 20 requests per level, 64 prompt and
32 output tokens; ~30 s in all) printed, against mlx_lm.server 0.32.2::

    conc  ok err  TTFT p50 ms  ITL p50 ms  TPOT(gl) p50  E2E p50 ms  out tok/s  out tok
       1  20   0         36.3        4.79          5.95       198.7      138.1       32
       4  20   0        228.7        7.07         13.88       460.1      271.5       32

Run to run on this machine TTFT p50 at 4 moved 221-229 ms and ITL p50 at 4 between 0.14
and 7.1 ms: mlx_lm.server sometimes delivers a stream in one burst under load (see
:mod:`krmlx.bench.peers`), which GuideLLM's per-request ITL reflects. With GuideLLM's
default worker processes (4 here) the client took CPU from the server: TTFT p50 49/389 ms,
186 tok/s at 4, hence one worker.

Before GuideLLM runs, :func:`warm_up` sends untimed requests of the same shape at every
level (krmlx's equal-warm-up rule), so the server's first compile is not in the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from krmlx.bench.peers import get_peer, serving  # noqa: E402
from krmlx.bench.venvs import Venv, ensure_venv  # noqa: E402
from krmlx.errors import KrmlxError  # noqa: E402
from krmlx.models import resolve_model  # noqa: E402

GUIDELLM_PINS = ("guidellm==0.8.1", "torch==2.13.0")
DEFAULT_CONCURRENCY = (1, 4)
DEFAULT_REQUESTS = 20
DEFAULT_PROMPT_TOKENS = 64
DEFAULT_OUTPUT_TOKENS = 32
SEED = 42


@dataclass(frozen=True)
class ToolRow:
    """One concurrency level as GuideLLM measured it (see the module docstring)."""

    tool: str
    concurrency: int
    requests_ok: int
    requests_errored: int
    requests_incomplete: int
    ttft_p50_ms: float
    itl_p50_ms: float
    tpot_p50_ms: float
    e2e_p50_ms: float
    output_tok_s: float
    prompt_tokens_p50: float
    output_tokens_p50: float
    duration_s: float


def guidellm_venv() -> Venv:
    return ensure_venv("guidellm", GUIDELLM_PINS)


def guidellm_argv(venv: Venv, base_url: str, model_id: str, tokenizer: str | os.PathLike,
                  out_json: Path, *, concurrency=DEFAULT_CONCURRENCY, requests=DEFAULT_REQUESTS,
                  prompt_tokens=DEFAULT_PROMPT_TOKENS, output_tokens=DEFAULT_OUTPUT_TOKENS,
                  ) -> list[str]:
    """The GuideLLM command line for these settings (one run covering every level)."""
    root = base_url.rstrip("/").removesuffix("/v1")
    backend = {"kind": "openai_http", "target": root, "model": model_id,
               "request_format": "/v1/chat/completions", "timeout": 600,
               "extras": {"body": {"temperature": 0, "max_tokens": output_tokens}}}
    levels = ",".join(str(c) for c in concurrency)
    return [
        str(venv.script("guidellm")), "run",
        "--backend", json.dumps(backend),
        "--profile", f"kind=concurrent,streams={concurrency[0]}",
        "--override", "profile.streams", levels,
        "--constraint", f"kind=max_requests,count={requests}",
        "--data",
        f"kind=synthetic_text,prompt_tokens={prompt_tokens},output_tokens={output_tokens}",
        "--tokenizer", f"kind=huggingface_auto,model={tokenizer}",
        "--seed", f"kind=static,value={SEED}",
        "--output", f"kind=json,path={out_json}",
        "--disable-console-interactive",
    ]


def parse_guidellm(report: dict) -> list[ToolRow]:
    """Plain numbers from GuideLLM's JSON report, one row per benchmark (level)."""
    rows = []
    for b in report["benchmarks"]:
        m = b["metrics"]

        def med(name: str, scale: float = 1.0, m=m) -> float:
            return float(m[name]["successful"]["median"]) * scale

        totals = m["request_totals"]
        rows.append(ToolRow(
            tool="guidellm", concurrency=int(b["config"]["strategy"]["streams"]),
            requests_ok=int(totals["successful"]), requests_errored=int(totals["errored"]),
            requests_incomplete=int(totals["incomplete"]),
            ttft_p50_ms=med("time_to_first_token_ms"), itl_p50_ms=med("inter_token_latency_ms"),
            tpot_p50_ms=med("time_per_output_token_ms"), e2e_p50_ms=med("request_latency", 1e3),
            output_tok_s=float(m["output_tokens_per_second"]["successful"]["mean"]),
            prompt_tokens_p50=med("prompt_token_count"),
            output_tokens_p50=med("output_token_count"),
            duration_s=float(b["duration"]),
        ))
    return rows


def warm_up(base_url: str, model_id: str, *, concurrency=DEFAULT_CONCURRENCY,
            prompt_tokens=DEFAULT_PROMPT_TOKENS, output_tokens=DEFAULT_OUTPUT_TOKENS) -> None:
    """Untimed requests of the measured shape: one batch of ``c`` concurrent ones per level."""
    body = json.dumps({
        "model": model_id, "max_tokens": output_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": " ".join(["warm"] * prompt_tokens)}],
    }).encode()

    def one(_):
        req = urllib.request.Request(f"{base_url.rstrip('/')}/chat/completions", body,
                                     {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            r.read()

    for c in concurrency:
        with ThreadPoolExecutor(c) as pool:
            list(pool.map(one, range(c)))


def run_guidellm(base_url: str, model_id: str, tokenizer: str | os.PathLike, *,
                 concurrency=DEFAULT_CONCURRENCY, requests: int = DEFAULT_REQUESTS,
                 prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
                 output_tokens: int = DEFAULT_OUTPUT_TOKENS, workers: int = 1,
                 workdir: Path | None = None, timeout_s: float = 1800,
                 ) -> tuple[list[ToolRow], dict]:
    """Run GuideLLM against ``base_url`` (``http://HOST:PORT/v1``); return rows and run info.

    ``model_id`` is sent as ``model``; ``tokenizer`` is a local model folder (no hub);
    ``workers`` caps GuideLLM's client processes.
    The info holds the command line, the JSON report's path and GuideLLM's own warnings.
    Raises KrmlxError with the tail of GuideLLM's output when it fails.
    """
    venv = guidellm_venv()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="krmlx-guidellm-"))
    out_json = workdir / "guidellm.json"
    argv = guidellm_argv(venv, base_url, model_id, tokenizer, out_json,
                         concurrency=tuple(concurrency), requests=requests,
                         prompt_tokens=prompt_tokens, output_tokens=output_tokens)
    env = {**os.environ, "GUIDELLM__MAX_WORKER_PROCESSES": str(workers), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("LD_PRELOAD", None)   # the client needs no BLAS; keep it off the server's cores
    log = workdir / "guidellm.log"
    with open(log, "wb") as out:
        rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, timeout=timeout_s, cwd=workdir).returncode
    if rc != 0 or not out_json.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise KrmlxError(f"guidellm exited {rc}: {' '.join(argv)}\n{tail}")
    report = json.loads(out_json.read_text())
    warnings = [w.get("message") for b in report["benchmarks"] for w in b.get("warnings") or []]
    info = {"tool": "guidellm", "version": GUIDELLM_PINS[0].split("==")[1], "argv": argv,
            "env": {"GUIDELLM__MAX_WORKER_PROCESSES": str(workers)}, "report": str(out_json),
            "warnings": warnings}
    return parse_guidellm(report), info


def crosscheck_mlx_lm_server(model: str = "tiny", **settings) -> tuple[list[ToolRow], dict]:
    """Start mlx_lm.server on ``model``, warm it up, run GuideLLM, stop the server."""
    folder = resolve_model(model)
    with serving(get_peer("mlx_lm.server"), folder) as srv:
        warm = {k: v for k, v in settings.items()
                if k in ("concurrency", "prompt_tokens", "output_tokens")}
        warm_up(srv.base_url, srv.model_id, **warm)
        rows, info = run_guidellm(srv.base_url, srv.model_id, folder, **settings)
    info["server"] = {"peer": "mlx_lm.server", "model": str(folder)}
    return rows, info


def format_rows(rows: list[ToolRow]) -> str:
    head = (f"{'tool':9} {'conc':>4} {'ok':>4} {'err':>3} {'TTFT p50 ms':>11} {'ITL p50 ms':>10} "
            f"{'TPOT(gl) p50':>12} {'E2E p50 ms':>10} {'out tok/s':>9} {'out tok':>7}")
    lines = [head]
    for r in rows:
        lines.append(f"{r.tool:9} {r.concurrency:>4} {r.requests_ok:>4} {r.requests_errored:>3} "
                     f"{r.ttft_p50_ms:>11.1f} {r.itl_p50_ms:>10.2f} {r.tpot_p50_ms:>12.2f} "
                     f"{r.e2e_p50_ms:>10.1f} {r.output_tok_s:>9.1f} {r.output_tokens_p50:>7.0f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="preset or model folder (tokenizer too)")
    ap.add_argument("--url", help="an already running server's base URL (http://HOST:PORT/v1)")
    ap.add_argument("--model-id", help="id to send with --url (default: the folder path)")
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    ap.add_argument("--prompt-tokens", type=int, default=DEFAULT_PROMPT_TOKENS)
    ap.add_argument("--output-tokens", type=int, default=DEFAULT_OUTPUT_TOKENS)
    ap.add_argument("--workers", type=int, default=1, help="GuideLLM client processes")
    ap.add_argument("--out", help="write rows and run info as JSON here")
    args = ap.parse_args()
    settings = {"concurrency": tuple(int(c) for c in args.concurrency.split(",")),
                "requests": args.requests, "prompt_tokens": args.prompt_tokens,
                "output_tokens": args.output_tokens, "workers": args.workers}
    if args.url:
        folder = resolve_model(args.model)
        model_id = args.model_id or str(folder)
        warm_up(args.url, model_id, concurrency=settings["concurrency"],
                prompt_tokens=args.prompt_tokens, output_tokens=args.output_tokens)
        rows, info = run_guidellm(args.url, model_id, folder, **settings)
    else:
        rows, info = crosscheck_mlx_lm_server(args.model, **settings)
    print(format_rows(rows))
    for w in info["warnings"]:
        print(f"guidellm warning: {w}")
    if args.out:
        Path(args.out).write_text(json.dumps(
            {"settings": settings, "info": info, "rows": [asdict(r) for r in rows]}, indent=1))


if __name__ == "__main__":
    main()
