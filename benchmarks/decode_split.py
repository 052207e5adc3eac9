"""Where does the served path's extra decode time come from? One decode, four ways.

The same greedy request (a prompt of ``--lengths`` tokens, ``--max-tokens`` out) runs,
round after round in rotated order, as:

- ``direct``: mlx-lm's loop (:func:`krmlx.gen.iter_tokens`) on this process's main thread;
- ``thread``: the same loop on a second thread of this process, each token handed to the
  main thread through a queue (the worker's compute thread, without the worker);
- ``echo``: the ``direct`` loop, plus each token written as the worker's token frame (the
  JSON codec) to a pipe that a second process reads with asyncio and decodes (the caller's
  per-token work and wakeups, without the worker);
- ``engine``: the served path, phase 0 (a worker process behind the plain client); its
  done frame also says when the worker saw its first and last token (``worker_decode_ms``);
- ``engine_coalesced``: the same, with the worker holding every token after the first for
  one last frame (the caller wakes twice per request instead of once per token).

Per request it records the time per output token after the first (TPOT) on the producing
side's clock, and for ``engine`` both the caller's and the worker's. Each round runs every
variant once per length, back to back, so the comparison is paired within a round; the CI
resamples rounds.

    python benchmarks/decode_split.py --model mini --rounds 30 --out results/cpu/r18/decode-split.json.gz
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import statistics
import subprocess
import sys
import threading
import time

READER = r"""
import asyncio, sys
from krmlx.worker.protocol import make_codec

async def main():
    codec, frames = make_codec("json"), asyncio.Queue()

    class P(asyncio.Protocol):
        def data_received(self, data):
            for f in codec.feed(data):
                frames.put_nowait(f)
        def connection_lost(self, exc):
            frames.put_nowait(None)

    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(P, sys.stdin.buffer)
    n = 0
    while (f := await frames.get()) is not None:
        n += len(f["tokens"])
    print(n)

asyncio.run(main())
"""


def run_direct(model, tokenizer, ids, max_tokens, emit=None) -> tuple[list[int], list[float]]:
    from krmlx import gen

    tokens, times = [], []
    for token, text in gen.iter_tokens(model, tokenizer, ids, max_tokens=max_tokens):
        times.append(time.perf_counter())
        tokens.append(token)
        if emit is not None:
            emit(token, text)
    return tokens, times


def run_thread(model, tokenizer, ids, max_tokens) -> tuple[list[int], list[float]]:
    q: queue.SimpleQueue = queue.SimpleQueue()

    def produce():
        try:
            run_direct(model, tokenizer, ids, max_tokens,
                       emit=lambda tok, text: q.put((tok, time.perf_counter())))
        finally:
            q.put(None)

    t = threading.Thread(target=produce, name="compute")
    t.start()
    tokens, times = [], []
    while (item := q.get()) is not None:
        tokens.append(item[0])
        times.append(item[1])
    t.join()
    return tokens, times


class Echo:
    """A reader process on a pipe, fed one token frame per token."""

    def __init__(self):
        from krmlx.worker.protocol import make_codec

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen([sys.executable, "-c", READER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        self.fd = self.proc.stdin.fileno()
        self.codec = make_codec("json")

    def emit(self, token, text) -> None:
        from krmlx.worker.protocol import token_frame

        os.write(self.fd, self.codec.encode(token_frame(1, [(token, text)])))

    def close(self) -> int:
        out, _ = self.proc.communicate(timeout=30)  # closes its stdin: the reader ends
        return int(out)


def tpot_ms(times: list[float]) -> float | None:
    return (times[-1] - times[0]) / (len(times) - 1) * 1e3 if len(times) > 1 else None


async def run_engine(eng, prompt_ids, max_tokens):
    from krmlx.types import Request

    done = await eng.complete(Request(prompt_ids=prompt_ids, max_tokens=max_tokens))
    n = len(done.token_ids)
    worker = done.extra.get("worker_decode_ms")
    return (list(done.token_ids), tpot_ms(list(done.token_times_s)),
            worker / (n - 1) if worker is not None and n > 1 else None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mini")
    ap.add_argument("--lengths", default="16,256")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--variants", default="direct,thread,echo,engine")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from krmlx.blas import reexec_under_blas

    reexec_under_blas(sys.argv)  # OpenBLAS, as the worker and the bench's direct target run
    asyncio.run(amain(args))
    return 0


async def amain(args) -> None:
    from krmlx import gen
    from krmlx.bench.metrics import bootstrap_ci
    from krmlx.bench.prompts import prompt_of_length
    from krmlx.bench.results import write_results
    from krmlx.doctor import collect_env
    from krmlx.engine import Engine
    from krmlx.framing import FramerConfig
    from krmlx.models import load, resolve_model
    from krmlx.stack import StackConfig
    from krmlx.worker.config import WorkerConfig

    variants = args.variants.split(",")
    model, tokenizer = load(resolve_model(args.model))
    lengths = [int(n) for n in args.lengths.split(",")]
    prompts = {n: gen.encode_prompt(tokenizer, {"prompt": prompt_of_length(tokenizer, n)})
               for n in lengths}
    held = FramerConfig(codec="json", coalesce_tokens=1 << 20, window=0)
    configs = {"engine": StackConfig(),
               "engine_coalesced": StackConfig(worker=WorkerConfig(framing=held))}
    engines: dict = {}
    echo = Echo() if "echo" in variants else None
    records = []
    try:
        for v in [v for v in variants if v in configs]:
            engines[v] = Engine(args.model, configs[v])
            await engines[v].start()

        async def one(variant, ids):
            if variant in engines:
                return await run_engine(engines[variant], ids, args.max_tokens)
            if variant == "thread":
                toks, times = run_thread(model, tokenizer, ids, args.max_tokens)
            else:
                toks, times = run_direct(model, tokenizer, ids, args.max_tokens,
                                         emit=echo.emit if variant == "echo" else None)
            return toks, tpot_ms(times), None

        for n in lengths:  # warm-up: every variant and shape once, untimed
            for v in variants:
                await one(v, prompts[n])
        for r in range(args.rounds):
            for n in lengths:
                order = variants[r % len(variants):] + variants[:r % len(variants)]
                for v in order:
                    toks, tpot, worker_tpot = await one(v, prompts[n])
                    records.append({"round": r, "length": n, "prompt_tokens": len(prompts[n]),
                                    "variant": v, "tokens": len(toks), "tpot_ms": tpot,
                                    "worker_tpot_ms": worker_tpot, "output": toks})
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    finally:
        for eng in engines.values():
            await eng.close()
        echo_tokens = echo.close() if echo is not None else None

    summary: dict = {"echo_reader_tokens": echo_tokens, "lengths": {}}
    for n in lengths:
        rows = {v: [x for x in records if x["length"] == n and x["variant"] == v] for v in variants}
        outputs = {tuple(x["output"]) for v in variants for x in rows[v]}
        s: dict = {"identical_outputs": len(outputs) == 1, "tokens": len(next(iter(outputs))),
                   "tpot_ms_median": {v: statistics.median(x["tpot_ms"] for x in rows[v])
                                      for v in variants}}
        for v in engines:
            s[v + "_worker_tpot_ms_median"] = statistics.median(
                x["worker_tpot_ms"] for x in rows[v])
        base = [x["tpot_ms"] for x in rows[variants[0]]]
        s["vs_" + variants[0]] = {}
        for v in variants[1:]:
            ci = bootstrap_ci(base, [x["tpot_ms"] for x in rows[v]], paired=True)
            s["vs_" + variants[0]][v] = {k: ci[k] for k in ("diff", "diff_ci_low", "diff_ci_high")}
        for v in engines:
            ci = bootstrap_ci(base, [x["worker_tpot_ms"] for x in rows[v]], paired=True)
            s["vs_" + variants[0]][v + "_worker"] = {
                k: ci[k] for k in ("diff", "diff_ci_low", "diff_ci_high")}
        summary["lengths"][str(n)] = s
        print(f"{n}-token prompt ({len(prompts[n])} tokens), {s['tokens']} out, identical "
              f"{s['identical_outputs']}: TPOT median " + ", ".join(
                  f"{v} {t:.3f}" for v, t in s["tpot_ms_median"].items()) + " ms"
              + "".join(f", {v} (worker clock) {s[v + '_worker_tpot_ms_median']:.3f}"
                        for v in engines))
        for v, d in s["vs_" + variants[0]].items():
            print(f"  {v} - {variants[0]}: {d['diff'] * 1e3:+.0f} us/token "
                  f"[{d['diff_ci_low'] * 1e3:+.0f}, {d['diff_ci_high'] * 1e3:+.0f}]")
    if args.out:
        write_results(args.out, env=collect_env(), records=records, summary=summary,
                      config={"workload": "decode_split", "model": args.model,
                              "lengths": lengths, "max_tokens": args.max_tokens,
                              "rounds": args.rounds, "variants": variants, "sampling": "greedy",
                              "order": "rotated per round, every variant once per length",
                              "warm_up": "every variant and length once, untimed",
                              "ci": "paired bootstrap over rounds, 95%"})


if __name__ == "__main__":
    raise SystemExit(main())
