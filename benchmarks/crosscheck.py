"""An independent cross-check: GuideLLM's numbers for an OpenAI-compatible server.

    .venv/bin/python benchmarks/crosscheck.py --model mini --servers mlx_lm.server,krmlx.serve \
        --concurrency 1,4 --requests 20 --out results/cpu/crosscheck.json
    .venv/bin/python benchmarks/crosscheck.py --url http://127.0.0.1:8080/v1 --model tiny

Without ``--url`` it starts each of ``--servers`` on the model in turn (``mlx_lm.server``,
``krmlx.serve``: 127.0.0.1, a free port; always stopped and reaped; mlx_lm.server with the
bench's own flags, its one definition in ``krmlx.bench.peers.PEERS``: prompt cache off,
so repeated prompts are not cache hits, and a decode batch of 64); with ``--url`` it uses
a server already running (``--model`` then names the tokenizer folder and the id to send).
On each server, after the same untimed warm-up: GuideLLM, then krmlx's own client with the
same settings (``bench concurrency`` in its closed-loop mode: ``requests`` requests with
``c`` in flight, synthetic prompts as long as GuideLLM's were by the server's count, the
same output length, greedy), then GuideLLM again, so drift between runs shows. Prints one
row per tool and level and the comparison: krmlx's TTFT p50 and output tok/s against the
mean of the two GuideLLM runs, and whether they agree within ``--tolerance`` (10%).
Each row also says how much CPU the client's processes used during the level and the
median gap between consecutive request starts: both tools run a closed loop, but krmlx's
restarts requests that end together at the same moment (gaps under 1 ms at c=4: prefills
arrive in clusters) while GuideLLM's drift apart (gaps of ~90 ms), and TTFT under load
depends on that phase (measured on krmlx serve, mini, 2 cores: see README). ``--out``
writes it all as JSON, with GuideLLM's exact command line and reports; krmlx's runs are
results files of their own beside it. ``--no-krmlx`` runs GuideLLM alone.

GuideLLM 0.8.1 lives in its own cached venv (:mod:`krmlx.bench.venvs`: ``guidellm==0.8.1``
with the CPU build ``torch==2.13.0``, which keeps it at ~1.5 GB instead of a CUDA build).
The command (:func:`guidellm_argv`), one run for all levels::

    guidellm run
      --backend '{"kind": "openai_http", "target": ROOT, "model": MODEL_ID,
                  "request_format": "/v1/chat/completions", "timeout": 600,
                  "extras": {"body": {"temperature": 0, "max_tokens": O, "ignore_eos": false,
                                      "stream_options": {"continuous_usage_stats": false}}}}'
      --profile kind=concurrent,streams=C1 --override profile.streams C1,C2,...
      --constraint kind=max_requests,count=N
      --data kind=synthetic_text,prompt_tokens=P,output_tokens=O
      --tokenizer kind=huggingface_auto,model=FOLDER
      --seed kind=static,value=42
      --output kind=json,path=OUT.json --disable-console-interactive

with ``GUIDELLM__MAX_WORKER_PROCESSES=1`` (one client process, like krmlx's client; the
default spawns several, which on 2 cores take CPU from the server). ROOT is the base URL
without ``/v1``. GuideLLM streams every request (``stream_options.include_usage``), asks
for ``max_completion_tokens: O`` and ``stop: null``; the extras add ``temperature: 0`` and
``max_tokens: O`` (vllm-mlx 0.6.0 drops ``max_completion_tokens``) and turn off two vLLM
extensions GuideLLM asks for, ``ignore_eos: true`` and ``stream_options.continuous_usage_stats``:
mlx_lm.server ignores both fields, krmlx serve refuses them (400: it does neither), so
every server gets the same body, where a model's EOS may end a request early
(``output_tokens_p50`` shows it; krmlx's client stops at EOS too). The synthetic prompt is
P tokens by FOLDER's tokenizer before the chat template (mlx_lm.server counts P + 7 on
the tiny preset).

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
32 output tokens; ~30 s in all) printed, against mlx_lm.server 0.32.2 (then started with its
own defaults: prompt cache on, decode batch 32; not yet re-run with the bench's flags)::

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
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
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
    # CPU seconds the client's processes used during the level (on 2 cores, CPU a client
    # takes is CPU the server lacks)
    client_cpu_s: float = float("nan")
    # median gap between consecutive request starts: a closed loop whose requests end
    # together restarts them together (small gaps: prefills arrive in clusters), one that
    # drifts apart spreads them (larger gaps); TTFT under load depends on which
    start_gap_p50_ms: float = float("nan")


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
               "extras": {"body": {"temperature": 0, "max_tokens": output_tokens,
                                   "ignore_eos": False,
                                   "stream_options": {"continuous_usage_stats": False}}}}
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
            start_gap_p50_ms=start_gap_p50_ms(
                r["info"]["timings"]["request_start"]
                for r in (b.get("requests") or {}).get("successful") or ()
                if (r.get("info") or {}).get("timings", {}).get("request_start") is not None),
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
                 report_to: Path | None = None, timeout_s: float = 1800,
                 ) -> tuple[list[ToolRow], dict]:
    """Run GuideLLM against ``base_url`` (``http://HOST:PORT/v1``); return rows and run info.

    ``model_id`` is sent as ``model``; ``tokenizer`` is a local model folder (no hub);
    ``workers`` caps GuideLLM's client processes. GuideLLM runs in a temporary folder,
    removed afterwards; its JSON report is copied to ``report_to`` when given.
    The info holds the command line, the report's path and GuideLLM's own warnings.
    Raises KrmlxError with the tail of GuideLLM's output when it fails.
    """
    venv = guidellm_venv()
    with tempfile.TemporaryDirectory(prefix="krmlx-guidellm-") as tmp:
        workdir = Path(tmp)
        out_json = workdir / "guidellm.json"
        argv = guidellm_argv(venv, base_url, model_id, tokenizer, out_json,
                             concurrency=tuple(concurrency), requests=requests,
                             prompt_tokens=prompt_tokens, output_tokens=output_tokens)
        env = {**os.environ, "GUIDELLM__MAX_WORKER_PROCESSES": str(workers),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        env.pop("LD_PRELOAD", None)   # the client needs no BLAS; keep it off the server's cores
        log = workdir / "guidellm.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=workdir)
            try:
                cpu = cpu_samples(proc, timeout_s)
            finally:
                if proc.poll() is None:
                    proc.kill()
                rc = proc.wait()
        if rc != 0 or not out_json.is_file():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            raise KrmlxError(f"guidellm exited {rc}: {' '.join(argv)}\n{tail}")
        report = json.loads(out_json.read_text())
        if report_to is not None:
            Path(report_to).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out_json, report_to)
    warnings = [w.get("message") for b in report["benchmarks"] for w in b.get("warnings") or []]
    info = {"tool": "guidellm", "version": GUIDELLM_PINS[0].split("==")[1], "argv": argv,
            "env": {"GUIDELLM__MAX_WORKER_PROCESSES": str(workers)},
            "report": None if report_to is None else str(report_to), "warnings": warnings}
    rows = [replace(row, client_cpu_s=cpu_between(cpu, b["start_time"], b["end_time"]))
            for row, b in zip(parse_guidellm(report), report["benchmarks"], strict=True)]
    return rows, info


def cpu_samples(proc: subprocess.Popen, timeout_s: float, every_s: float = 0.1) -> list:
    """(time.time(), CPU seconds of ``proc`` and its children so far), every ``every_s``
    until it exits (KrmlxError after ``timeout_s``)."""
    import psutil

    root, seen, samples = psutil.Process(proc.pid), {}, []
    t_end = time.time() + timeout_s
    while proc.poll() is None:
        if time.time() > t_end:
            raise KrmlxError(f"guidellm ran past {timeout_s:.0f} s")
        try:
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    seen[p.pid] = t.user + t.system
        except psutil.Error:
            pass
        samples.append((time.time(), sum(seen.values())))
        time.sleep(every_s)
    return samples


def cpu_between(samples: list, t0: float, t1: float) -> float:
    """CPU seconds used between ``t0`` and ``t1`` (the nearest samples around them)."""
    before = [c for t, c in samples if t <= t0]
    after = [c for t, c in samples if t >= t1]
    if not before or not after:
        return float("nan")
    return after[0] - before[-1]


def run_krmlx(base_url: str, model: str, model_id: str, *, concurrency, requests: int,
              prompt_tokens: int, output_tokens: int, out_dir: Path | None = None,
              label: str = "krmlx") -> tuple[list[ToolRow], str | None]:
    """krmlx's client on the same server and settings: ``bench concurrency`` closed-loop
    (``requests`` with ``c`` in flight per level, synthetic prompts of ``prompt_tokens``
    tokens, chat template included, ``output_tokens`` out, greedy). Rows, and the path of
    the results file written into ``out_dir`` (None without one)."""
    import asyncio

    from krmlx.bench.results import write_results
    from krmlx.bench.runner import run_workload
    from krmlx.bench.workloads import make_workload

    wl = make_workload("concurrency", mode="closed", levels=tuple(concurrency),
                       requests=requests, prompts="synthetic", prompt_tokens=prompt_tokens,
                       max_tokens=output_tokens)
    doc = asyncio.run(run_workload(wl, model, targets=[f"{label}={base_url}?model={model_id}"]))
    path = None
    if out_dir is not None:
        path = str(write_results(Path(out_dir) / f"crosscheck-{label}.json", **doc))
    by_level: dict[int, list] = {}
    for r in doc["records"]:
        if r["ok"]:
            by_level.setdefault(r["level"], []).append(r)
    rows = []
    for lv in doc["summary"]["levels"]:
        recs = by_level.get(lv["concurrency"], [])
        rows.append(ToolRow(
            tool="krmlx", concurrency=lv["concurrency"], requests_ok=lv["requests"] - lv["errors"],
            requests_errored=lv["errors"], requests_incomplete=0, ttft_p50_ms=lv["ttft_ms_p50"],
            itl_p50_ms=lv["tpot_ms_p50"], tpot_p50_ms=_median([r["e2e_ms"] / r["output_tokens"]
                                                                for r in recs if r["output_tokens"]]),
            e2e_p50_ms=lv["e2e_ms_p50"], output_tok_s=lv["aggregate_tps"],
            prompt_tokens_p50=_median([r["prompt_tokens"] for r in recs]),
            output_tokens_p50=_median([r["output_tokens"] for r in recs]),
            duration_s=float("nan"), client_cpu_s=lv["caller_cpu_s"],
            start_gap_p50_ms=start_gap_p50_ms(r["t_start_s"] for r in recs)))
    return rows, path


def start_gap_p50_ms(starts) -> float:
    """The median gap (ms) between consecutive request start times (seconds, any clock)."""
    ts = sorted(starts)
    return _median([(b - a) * 1e3 for a, b in zip(ts[:-1], ts[1:], strict=True)])


def _median(values) -> float:
    import statistics

    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else float("nan")


def compare(krmlx_rows: list[ToolRow], tool_runs: list[list[ToolRow]],
            tolerance: float = 0.10) -> list[dict]:
    """Per level: krmlx's TTFT p50 and output tok/s against the mean of the tool's runs;
    ``agree`` when both differ by at most ``tolerance`` (a fraction). ``*_tool_spread_pct``:
    how far the tool's own runs lie apart ((max - min) / mean); ``within_tool_spread``: both
    of krmlx's figures lie inside the range of the tool's runs (where the tool disagrees
    with itself by more than ``tolerance``, no agreement finer than that can be read)."""
    out = []
    for k in krmlx_rows:
        theirs = [r for run in tool_runs for r in run if r.concurrency == k.concurrency]
        if not theirs:
            continue
        row = {"concurrency": k.concurrency}
        for metric in ("ttft_p50_ms", "output_tok_s"):
            runs = [getattr(r, metric) for r in theirs]
            ref, mine = sum(runs) / len(runs), getattr(k, metric)
            row.update({f"{metric}_krmlx": mine, f"{metric}_tool": ref,
                        f"{metric}_tool_runs": runs,
                        f"{metric}_tool_spread_pct": (max(runs) - min(runs)) / ref * 100
                        if ref else float("nan"),
                        f"{metric}_diff_pct": (mine / ref - 1) * 100 if ref else float("nan")})
        row["client_cpu_s_krmlx"] = k.client_cpu_s
        row["client_cpu_s_tool"] = sum(r.client_cpu_s for r in theirs) / len(theirs)
        row["start_gap_p50_ms_krmlx"] = k.start_gap_p50_ms
        row["start_gap_p50_ms_tool"] = sum(r.start_gap_p50_ms for r in theirs) / len(theirs)
        row["agree"] = all(abs(row[f"{m}_diff_pct"]) <= tolerance * 100
                           for m in ("ttft_p50_ms", "output_tok_s"))
        row["within_tool_spread"] = all(
            min(row[f"{m}_tool_runs"]) <= row[f"{m}_krmlx"] <= max(row[f"{m}_tool_runs"])
            for m in ("ttft_p50_ms", "output_tok_s"))
        out.append(row)
    return out


def crosscheck_server(server: str, model: str, settings: dict, *, with_krmlx: bool = True,
                      out_dir: Path | None = None, tolerance: float = 0.10) -> dict:
    """One server (``mlx_lm.server`` or ``krmlx.serve``) started on ``model``: warm-up, GuideLLM,
    krmlx, GuideLLM; stopped and reaped whatever happens."""
    from contextlib import ExitStack

    folder = resolve_model(model)
    with ExitStack() as stack:
        if server == "krmlx.serve":
            from krmlx.serve.process import ServerProcess

            srv = stack.enter_context(ServerProcess(model))
            base_url, model_id = srv.base_url, model
        elif server == "mlx_lm.server":
            srv = stack.enter_context(serving(get_peer("mlx_lm.server"), folder))
            base_url, model_id = srv.base_url, srv.model_id
        else:
            raise KrmlxError(f"--servers: mlx_lm.server or krmlx.serve, got {server!r}")
        return crosscheck_url(base_url, model, model_id, settings, server=server,
                              with_krmlx=with_krmlx, out_dir=out_dir, tolerance=tolerance)


def crosscheck_url(base_url: str, model: str, model_id: str, settings: dict, *, server: str,
                   with_krmlx: bool = True, out_dir: Path | None = None,
                   tolerance: float = 0.10) -> dict:
    folder = resolve_model(model)
    warm = {k: settings[k] for k in ("concurrency", "prompt_tokens", "output_tokens")}
    warm_up(base_url, model_id, **warm)
    runs, infos = [], []
    slug = server.replace(".", "-").replace("_", "-").replace(":", "-").replace("/", "")
    label = f"krmlx-{slug}"

    def report(n: int) -> Path | None:
        return None if out_dir is None else Path(out_dir) / f"crosscheck-guidellm-{slug}-{n}.json"

    rows, info = run_guidellm(base_url, model_id, folder, report_to=report(1), **settings)
    runs.append(rows)
    infos.append(info)
    result = {"server": server, "base_url": base_url, "model": str(folder), "model_id": model_id,
              "guidellm_runs": [[asdict(r) for r in run] for run in runs], "guidellm": infos}
    if with_krmlx:
        # as long as GuideLLM's prompts were, by the server's own count (template included)
        prompt_tokens = round(_median([r.prompt_tokens_p50 for r in rows]))
        mine, path = run_krmlx(base_url, model, model_id, concurrency=settings["concurrency"],
                               requests=settings["requests"], prompt_tokens=prompt_tokens,
                               output_tokens=settings["output_tokens"], out_dir=out_dir,
                               label=label)
        rows2, info2 = run_guidellm(base_url, model_id, folder, report_to=report(2), **settings)
        runs.append(rows2)
        infos.append(info2)
        result.update({"guidellm_runs": [[asdict(r) for r in run] for run in runs],
                       "krmlx": [asdict(r) for r in mine], "krmlx_results": path,
                       "krmlx_prompt_tokens": prompt_tokens,
                       "comparison": compare(mine, runs, tolerance), "tolerance": tolerance})
    result["rows"] = runs, result.get("krmlx")
    return result


def format_comparison(rows: list[dict]) -> str:
    lines = [f"{'conc':>4} {'TTFT p50 krmlx':>14} {'guidellm':>9} {'diff %':>7} "
             f"{'tok/s krmlx':>11} {'guidellm':>9} {'diff %':>7} {'client CPU s krmlx':>18} "
             f"{'guidellm':>9} {'GuideLLM spread % (TTFT, tok/s)':>31}  agree"]
    for r in rows:
        lines.append(f"{r['concurrency']:>4} {r['ttft_p50_ms_krmlx']:>14.1f} "
                     f"{r['ttft_p50_ms_tool']:>9.1f} {r['ttft_p50_ms_diff_pct']:>+7.1f} "
                     f"{r['output_tok_s_krmlx']:>11.1f} {r['output_tok_s_tool']:>9.1f} "
                     f"{r['output_tok_s_diff_pct']:>+7.1f} {r.get('client_cpu_s_krmlx', float('nan')):>18.2f} "
                     f"{r.get('client_cpu_s_tool', float('nan')):>9.2f} "
                     f"{r['ttft_p50_ms_tool_spread_pct']:>21.1f}, {r['output_tok_s_tool_spread_pct']:>7.1f}  "
                     f"{'yes' if r['agree'] else ('within its spread' if r['within_tool_spread'] else 'NO')}")
    return "\n".join(lines)


def format_rows(rows: list[ToolRow]) -> str:
    head = (f"{'tool':9} {'conc':>4} {'ok':>4} {'err':>3} {'TTFT p50 ms':>11} {'ITL p50 ms':>10} "
            f"{'TPOT(gl) p50':>12} {'E2E p50 ms':>10} {'out tok/s':>9} {'out tok':>7} "
            f"{'client CPU s':>12} {'start gap p50 ms':>16}")
    lines = [head]
    for r in rows:
        lines.append(f"{r.tool:9} {r.concurrency:>4} {r.requests_ok:>4} {r.requests_errored:>3} "
                     f"{r.ttft_p50_ms:>11.1f} {r.itl_p50_ms:>10.2f} {r.tpot_p50_ms:>12.2f} "
                     f"{r.e2e_p50_ms:>10.1f} {r.output_tok_s:>9.1f} {r.output_tokens_p50:>7.0f} "
                     f"{r.client_cpu_s:>12.2f} {r.start_gap_p50_ms:>16.1f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="preset or model folder (tokenizer too)")
    ap.add_argument("--servers", default="mlx_lm.server",
                    help="comma list: mlx_lm.server, krmlx.serve (started here in turn)")
    ap.add_argument("--url", help="an already running server's base URL (http://HOST:PORT/v1)")
    ap.add_argument("--model-id", help="id to send with --url (default: the folder path)")
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    ap.add_argument("--prompt-tokens", type=int, default=DEFAULT_PROMPT_TOKENS)
    ap.add_argument("--output-tokens", type=int, default=DEFAULT_OUTPUT_TOKENS)
    ap.add_argument("--workers", type=int, default=1, help="GuideLLM client processes")
    ap.add_argument("--tolerance", type=float, default=0.10, help="agreement bound (fraction)")
    ap.add_argument("--no-krmlx", action="store_true", help="GuideLLM alone")
    ap.add_argument("--out", help="write rows, comparison and run info as JSON here")
    args = ap.parse_args()
    settings = {"concurrency": tuple(int(c) for c in args.concurrency.split(",")),
                "requests": args.requests, "prompt_tokens": args.prompt_tokens,
                "output_tokens": args.output_tokens, "workers": args.workers}
    out_dir = Path(args.out).parent if args.out else None
    opts = {"with_krmlx": not args.no_krmlx, "out_dir": out_dir, "tolerance": args.tolerance}
    if args.url:
        model_id = args.model_id or str(resolve_model(args.model))
        results = [crosscheck_url(args.url, args.model, model_id, settings, server=args.url, **opts)]
    else:
        results = [crosscheck_server(s, args.model, settings, **opts)
                   for s in args.servers.split(",") if s]
    for res in results:
        runs, mine = res.pop("rows")
        print(f"== {res['server']}")
        print(format_rows([r for run in runs for r in run] + (mine and [ToolRow(**m) for m in mine] or [])))
        for w in (w for info in res["guidellm"] for w in info["warnings"]):
            print(f"guidellm warning: {w}")
        if "comparison" in res:
            print(format_comparison(res["comparison"]))
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": settings, "results": results}, indent=1))


if __name__ == "__main__":
    main()
