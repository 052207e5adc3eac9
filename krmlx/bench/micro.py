"""Microbenchmarks of the served path's own costs (no model compute where possible).

- ``ping``: round trip of a ``ping`` through the full client (µs percentiles), per codec;
- ``stream``: per-token cost of streaming N synthetic tokens from the worker's null model
  (no MLX), per codec and stream options: wall µs/token and CPU µs/token of client and worker;
- ``tokenize``: one text tokenized in-process vs via the worker one call per message vs
  ``batch_tokenize`` of 10 (µs per item).

Each returns plain rows; :func:`run_micro` gathers them into a results document.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import psutil

from ..framing import FramerConfig, plain
from ..service import Call, unary
from ..worker.client import WorkerClient
from ..worker.config import WorkerConfig
from ..worker.protocol import NULL_MODEL

TOKENIZE_TEXT = ("Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen; "
                 "the light reactions in the thylakoid membranes make ATP and NADPH, which the "
                 "Calvin cycle then spends to fix carbon.")


def _pcts(samples_s: list[float]) -> dict:
    a = np.asarray(samples_s) * 1e6
    return {"n": int(a.size), "p50_us": float(np.percentile(a, 50)), "p90_us": float(np.percentile(a, 90)),
            "p99_us": float(np.percentile(a, 99)), "mean_us": float(a.mean())}


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


async def bench_ping(codec: str, n: int = 3000, warmup: int = 300) -> dict:
    async with WorkerClient(WorkerConfig(codec=codec)) as c:
        for _ in range(warmup):
            await c.ping()
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            await c.ping()
            samples.append(time.perf_counter() - t0)
    return {"bench": "ping", "codec": codec, **_pcts(samples)}


async def bench_stream(opts: FramerConfig, n: int = 20000, reps: int = 5) -> dict:
    """``reps`` streams of ``n`` synthetic tokens after a warm-up one; the medians over the
    streams (one stream of 20k tokens lasts ~0.1 s, so single runs vary by tens of %)."""
    import statistics

    async with WorkerClient(WorkerConfig(framing=opts)) as c:
        worker = psutil.Process(c.pid)
        call = Call("generate", {"prompt": "x", "max_tokens": n}, NULL_MODEL)
        async for _ in c.call(Call("generate", {"prompt": "x", "max_tokens": 2000}, NULL_MODEL)):
            pass  # warm up
        walls, clients, workers = [], [], []
        for _ in range(reps):
            c0, w0, t0 = time.process_time(), _cpu(worker), time.perf_counter()
            tokens = -1  # the Done is not a token
            async for _ in c.call(call):
                tokens += 1
            walls.append((time.perf_counter() - t0) / tokens * 1e6)
            clients.append((time.process_time() - c0) / tokens * 1e6)
            workers.append((_cpu(worker) - w0) / tokens * 1e6)
        return {"bench": "stream", "codec": opts.codec, "coalesce_tokens": opts.coalesce_tokens,
                "coalesce_ms": opts.coalesce_ms, "window": opts.window, "tokens": tokens, "reps": reps,
                "wall_us_per_token": statistics.median(walls),
                "wall_us_per_token_min": min(walls), "wall_us_per_token_max": max(walls),
                "client_cpu_us_per_token": statistics.median(clients),
                "worker_cpu_us_per_token": statistics.median(workers)}


async def bench_tokenize(model: str, n: int = 500) -> list[dict]:
    from ..models import load, resolve_model

    _, tok = load(resolve_model(model))
    hf = getattr(tok, "_tokenizer", tok)
    ids = hf.encode(TOKENIZE_TEXT, add_special_tokens=False)
    rows = []
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        hf.encode(TOKENIZE_TEXT, add_special_tokens=False)
        samples.append(time.perf_counter() - t0)
    rows.append({"bench": "tokenize", "path": "in-process", "tokens": len(ids), **_pcts(samples)})
    async with WorkerClient() as c:
        await unary(c, Call("load_model", {}, model))
        one = Call("tokenize", {"text": TOKENIZE_TEXT}, model)
        assert await unary(c, one) == ids
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            await unary(c, one)
            samples.append(time.perf_counter() - t0)
        rows.append({"bench": "tokenize", "path": "worker, one per message", "tokens": len(ids), **_pcts(samples)})
        batch = Call("batch_tokenize", {"texts": [TOKENIZE_TEXT] * 10}, model)
        samples = []
        for _ in range(n // 10):
            t0 = time.perf_counter()
            await unary(c, batch)
            samples.append((time.perf_counter() - t0) / 10)
        rows.append({"bench": "tokenize", "path": "worker, batch_tokenize of 10 (per item)",
                     "tokens": len(ids), **_pcts(samples)})
    return rows


def stream_variants(codec: str) -> list[FramerConfig]:
    """A frame per token without a window; with a 64-frame window; coalescing 8 / 5 ms."""
    return [plain(codec), FramerConfig(codec, window=64),
            FramerConfig(codec, coalesce_tokens=8, coalesce_ms=5.0, window=64)]


async def run_micro(model: str = "tiny", *, smoke: bool = False) -> dict:
    """All microbenchmarks, one after another (never concurrently: 2 cores)."""
    from ..doctor import collect_env

    env = collect_env()
    n_ping, n_tok, n_stream = (300, 50, 2000) if smoke else (3000, 500, 20000)
    ping = [await bench_ping(codec, n_ping) for codec in ("json", "msgpack")]
    stream = [await bench_stream(opts, n_stream, 2 if smoke else 5) for codec in ("json", "msgpack")
              for opts in stream_variants(codec)]
    tokenize = await bench_tokenize(model, n_tok)
    return {"env": {**env, "model": model},
            "config": {"workload": "micro", "model": model, "smoke": smoke},
            "records": ping + stream + tokenize,
            "summary": {"ping": ping, "stream": stream, "tokenize": tokenize}}


def main(argv=None) -> None:
    import argparse

    from .results import write_results

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default="runs/micro.json")
    args = p.parse_args(argv)
    doc = asyncio.run(run_micro(args.model, smoke=args.smoke))
    write_results(args.out, **doc)
    import pandas as pd

    for name, rows in doc["summary"].items():
        print(f"\n{name}\n" + pd.DataFrame(rows).drop(columns=["bench"]).to_string(
            index=False, float_format=lambda x: f"{x:.2f}"))
    print(f"\nresults: {args.out}")
