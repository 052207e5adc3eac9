"""Soak: many mixed requests through an Engine under injected faults and worker kills.

Every request must end exactly once: completed, or failed with an error naming its
cause. The run writes a krmlx results file (:func:`krmlx.bench.results.write_results`):
one record per request (``ok``, ``cause``, ``error``, ``e2e_ms``, ``output_ids``), and a
summary with the counts (completed, failed by cause, retries, restarts, kills), latency
percentiles and the RSS of the client and the worker before and after.

    python benchmarks/soak.py --requests 5000 --concurrency 16 --error-rate 0.1 --kills 5
    python benchmarks/soak.py --duration-s 600 --kills 20 --retry --check-outputs --out runs/

The mix: ``--gen-fraction`` of the requests are greedy ``generate`` calls of 1 to
``--max-tokens`` tokens over a fixed pool of prompts, the rest ``tokenize`` calls of
seeded random text. Faults come from the worker's own seeded injector (``error_rate``
on every method, ``seed``); kills are SIGKILLs of the worker at seeded points: after a
given number of finished requests (``--requests`` mode) or at seeded times
(``--duration-s`` mode). ``--retry`` switches the stack's retry phase on.

``--hostile`` runs the same well-formed ops twice, first alone ("calm"), then beside a
hostile mix (:class:`Hostile`): long prompts cancelled during their prefill, streams read
once and abandoned (still referenced), SIGSTOP/SIGCONT of the worker, and bad requests.
Well-formed generate ops then go through ``complete()`` (so the retry stage can re-run one
caught by a stopped worker), every one must complete, and the summary sets their latency
percentiles with and without the mix side by side.

The harness (:func:`run_soak`, :func:`make_ops`, :class:`Ledger`) is also what
``tests/test_reliability_faults.py`` runs at CI size, so this script can't rot.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from krmlx.engine import Engine
from krmlx.errors import CallTimeout, CircuitOpen, TransientError, UnknownModel, WorkerCrashed
from krmlx.stack import StackConfig
from krmlx.types import Request

DEFAULT_OP_TIMEOUT_S = 30.0
WORDS = ("alpha", "bees", "river", "sky", "blue", "seven", "quantum", "bread", "north",
         "lamp", "ocean", "tiger", "paper", "cloud", "iron", "song", "glass", "maple")
PROMPTS = tuple(f"Question {i}: why is the {a} {b}?" for i, (a, b) in
                enumerate(itertools.islice(itertools.product(WORDS[:6], WORDS[6:]), 24)))
MiB = 2**20


# -- the workload -------------------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    """One request of the mix."""

    id: int
    kind: str  # "generate" | "tokenize"
    text: str
    max_tokens: int = 0


def iter_ops(*, gen_fraction: float = 0.1, max_tokens: int = 3, seed: int = 0) -> Iterator[Op]:
    """An endless, seeded stream of ops (the same seed gives the same ops)."""
    rng = random.Random(seed)
    for i in itertools.count():
        if rng.random() < gen_fraction:
            yield Op(i, "generate", rng.choice(PROMPTS), rng.randint(1, max_tokens))
        else:
            yield Op(i, "tokenize", " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))))


def make_ops(n: int, **kw) -> list[Op]:
    return list(itertools.islice(iter_ops(**kw), n))


def kill_points(n_requests: int, kills: int, seed: int) -> list[int]:
    """Seeded finished-request counts at which to kill the worker, one per equal segment
    of the run (so each kill hits a worker that has restarted and served since the last)."""
    rng = random.Random(seed ^ 0x5EED)
    seg = n_requests // (kills + 1)
    return [seg * (k + 1) + rng.randint(-seg // 3, seg // 3) for k in range(kills)]


def kill_times(duration_s: float, kills: int, seed: int) -> list[float]:
    rng = random.Random(seed ^ 0x5EED)
    seg = duration_s / (kills + 1)
    return [seg * (k + 1) + rng.uniform(-seg / 3, seg / 3) for k in range(kills)]


# -- outcomes ----------------------------------------------------------------------------
def cause_of(exc: BaseException) -> str:
    """The cause a failed request is counted under. Anything but the first three is a
    finding: the serving layer lost a request to something other than the fault itself."""
    if isinstance(exc, TransientError) and "injected" in str(exc):
        return "injected_error"
    if isinstance(exc, WorkerCrashed):
        return "worker_crashed"
    if isinstance(exc, CircuitOpen):
        return "circuit_open"
    if isinstance(exc, UnknownModel):
        return "model_not_loaded"
    if isinstance(exc, CallTimeout):
        return "call_timeout"
    return "other"


EXPECTED_CAUSES = ("injected_error", "worker_crashed")


@dataclass
class Ledger:
    """Tracks every op by id: started once, ended once (completed or failed)."""

    started: dict[int, Op] = field(default_factory=dict)
    ended: dict[int, dict] = field(default_factory=dict)
    duplicates: list[int] = field(default_factory=list)  # ids ended more than once

    def start(self, op: Op) -> None:
        if op.id in self.started:
            self.duplicates.append(op.id)
        self.started[op.id] = op

    def end(self, op: Op, record: dict) -> None:
        if op.id in self.ended:
            self.duplicates.append(op.id)
            return
        self.ended[op.id] = record

    @property
    def never_ended(self) -> list[int]:
        return sorted(set(self.started) - set(self.ended))

    def records(self) -> list[dict]:
        return [self.ended[i] for i in sorted(self.ended)]


@dataclass
class SoakResult:
    ledger: Ledger
    kills: list[dict]
    wall_s: float
    stats: dict  # engine.stats() at the end
    rss: dict
    hung: bool  # an op outlived its timeout (with stop_on_hang, the run stopped there)

    @property
    def records(self) -> list[dict]:
        return self.ledger.records()


def rss_of(pid: int | None) -> int | None:
    try:
        return psutil.Process(pid).memory_info().rss if pid else None
    except psutil.Error:
        return None


async def run_op(engine: Engine, op: Op, timeout_s: float, *, buffered: bool = False) -> dict:
    """Run one op; return its record. Never raises (except cancellation of the caller).
    ``buffered``: a generate goes through ``complete()`` (retried whole by the retry stage)
    instead of ``stream()``."""
    t0 = time.perf_counter()
    ids: list[int] = []
    rec = {"request_id": op.id, "kind": op.kind, "ok": False, "cause": None, "error": None,
           "chunks_before_error": 0, "output_ids": [], "finish_reason": None}

    async def body():
        if op.kind == "tokenize":
            ids.extend(await engine.tokenize(op.text))
            return None
        if buffered:
            done = await engine.complete(Request(op.text, max_tokens=op.max_tokens))
            ids.extend(done.token_ids)
            return done.finish_reason
        stream = engine.stream(Request(op.text, max_tokens=op.max_tokens))
        try:
            async for chunk in stream:
                ids.append(chunk.token_id)
        finally:
            await stream.aclose()
        return stream.finish_reason

    try:
        rec["finish_reason"] = await asyncio.wait_for(body(), timeout_s)
        rec["ok"] = True
    except Exception as e:  # noqa: BLE001 - every failure becomes a record
        if type(e) is TimeoutError:  # our guard (a stack's CallTimeout is a KrmlxError)
            rec["cause"], rec["error"] = "hung", f"no answer within {timeout_s} s (guard timeout)"
        else:
            rec["cause"], rec["error"] = cause_of(e), f"{type(e).__name__}: {e}"
    rec["e2e_ms"] = (time.perf_counter() - t0) * 1e3
    rec["output_ids"] = list(ids)
    rec["output_tokens"] = len(ids)
    if not rec["ok"]:
        rec["chunks_before_error"] = len(ids)
    return rec


def kill_worker(engine: Engine, ledger: Ledger, t0: float) -> dict:
    pid = engine.client.pid
    try:
        alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        alive = False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        alive = False
    return {"pid": pid, "was_alive": alive, "after_requests": len(ledger.ended),
            "t_s": round(time.perf_counter() - t0, 3)}


@dataclass
class Hostile:
    """The hostile mix, one seeded action every ``every_s`` while a soak runs: a
    4000-token prompt cancelled ``cancel_after_s`` into its prefill, a stream read once
    and abandoned (kept referenced: the client's stall timeout must cancel it), a
    SIGSTOP of the worker for ``stop_s`` then SIGCONT (the liveness check must fail and
    replace it), or a bad request (each must be refused with BadRequest)."""

    seed: int = 0
    every_s: float = 0.5
    cancel_after_s: float = 0.2
    stop_s: float = 2.0
    counts: collections.Counter = field(default_factory=collections.Counter)
    kept: list = field(default_factory=list)  # abandoned streams, referenced to the end

    BAD = ({"prompt": "x", "temperature": float("nan")}, {"prompt": "x\udc80"},
           {"prompt": "x", "seed": 2**70}, {"prompt_ids": (5, 2**40)}, {"prompt": "x", "max_tokens": 0})

    async def run(self, engine: Engine, stop: asyncio.Event) -> None:
        from krmlx.errors import BadRequest

        rng = random.Random(self.seed)
        long_ids = tuple(5 + (i * 7) % 3000 for i in range(4000))
        while not stop.is_set():
            await asyncio.sleep(self.every_s)
            action = rng.choice(("long_cancel", "abandon", "stop", "bad", "bad"))
            try:
                if action == "long_cancel":
                    stream = engine.stream(Request(prompt_ids=long_ids, max_tokens=8))
                    try:
                        await asyncio.wait_for(stream.__anext__(), self.cancel_after_s)
                    except (TimeoutError, StopAsyncIteration):
                        pass
                    await stream.aclose()
                elif action == "abandon":
                    stream = engine.stream(Request(rng.choice(PROMPTS), max_tokens=2000))
                    async for _ in stream:
                        break
                    self.kept.append(stream)
                elif action == "stop":
                    pid = engine.client.pid
                    os.kill(pid, signal.SIGSTOP)
                    try:
                        await asyncio.sleep(self.stop_s)
                    finally:
                        try:
                            os.kill(pid, signal.SIGCONT)
                        except ProcessLookupError:
                            pass  # the liveness check killed it already
                else:
                    try:
                        Request(**rng.choice(self.BAD))
                        self.counts["bad_accepted"] += 1
                    except BadRequest:
                        action = "bad_refused"
            except Exception as e:  # noqa: BLE001 - hostile actions may fail; count how
                self.counts[f"{action}_error:{type(e).__name__}"] += 1
                continue
            self.counts[action] += 1


async def run_soak(engine: Engine, ops: Iterable[Op], *, concurrency: int = 16,
                   kill_at: Iterable[int] = (), kill_at_s: Iterable[float] = (),
                   duration_s: float | None = None, op_timeout_s: float = DEFAULT_OP_TIMEOUT_S,
                   stop_on_hang: bool = False, hostile: Hostile | None = None,
                   buffered: bool = False) -> SoakResult:
    """Send ``ops`` through a started ``engine`` from ``concurrency`` tasks.

    Kills the worker (SIGKILL) when the number of finished ops reaches each of
    ``kill_at``, or at each of ``kill_at_s`` seconds into the run. Stops issuing new ops
    after ``duration_s``. Each op has a guard timeout (``op_timeout_s``): an op that
    outlives it is recorded with cause "hung" (a deadlock finding); with ``stop_on_hang``
    the run then stops issuing ops, so a CI test fails fast instead of hanging.
    ``hostile`` runs beside the ops until they are done; ``buffered`` (see :func:`run_op`).
    """
    ledger = Ledger()
    kills: list[dict] = []
    pending_kills = sorted(kill_at)
    source = iter(ops)
    t0 = time.perf_counter()
    stop = asyncio.Event()
    hung = False
    rss_before = {"client": rss_of(os.getpid()), "worker": rss_of(engine.client.pid)}

    async def client_task():
        nonlocal hung
        while not stop.is_set():
            if duration_s is not None and time.perf_counter() - t0 >= duration_s:
                return
            op = next(source, None)
            if op is None:
                return
            ledger.start(op)
            rec = await run_op(engine, op, op_timeout_s, buffered=buffered)
            rec["t_start_s"] = round(time.perf_counter() - t0 - rec["e2e_ms"] / 1e3, 4)
            ledger.end(op, rec)
            if rec["cause"] == "hung":
                hung = True
                if stop_on_hang:
                    stop.set()
            while pending_kills and len(ledger.ended) >= pending_kills[0]:
                pending_kills.pop(0)
                kills.append(kill_worker(engine, ledger, t0))

    async def timed_kills():
        for at in sorted(kill_at_s):
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
            kills.append(kill_worker(engine, ledger, t0))

    killer = asyncio.create_task(timed_kills())
    done_ops = asyncio.Event()
    hostility = asyncio.create_task(hostile.run(engine, done_ops)) if hostile else None
    try:
        await asyncio.gather(*(client_task() for _ in range(concurrency)))
    finally:
        done_ops.set()
        killer.cancel()
        await asyncio.gather(killer, return_exceptions=True)
        if hostility is not None:
            hostility.cancel()
            await asyncio.gather(hostility, return_exceptions=True)
    wall = time.perf_counter() - t0
    rss = {"client_before": rss_before["client"], "client_after": rss_of(os.getpid()),
           "worker_before": rss_before["worker"], "worker_after": rss_of(engine.client.pid)}
    return SoakResult(ledger, kills, wall, engine.stats(), rss, hung)


# -- summary -----------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: p99 of 1000 values is the 990th)."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def latency_table(records: list[dict]) -> dict:
    out = {}
    for kind in ("all", "generate", "tokenize"):
        lat = [r["e2e_ms"] for r in records if r["ok"] and kind in ("all", r["kind"])]
        out[kind] = {"n": len(lat), "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90),
                     "p99_ms": percentile(lat, 99), "max_ms": max(lat) if lat else None,
                     "mean_ms": sum(lat) / len(lat) if lat else None}
    return out


def summarize(result: SoakResult, reference: dict[int, list[int]] | None = None) -> dict:
    records = result.records
    failed = [r for r in records if not r["ok"]]
    stats = result.stats
    counts = {
        "requests": len(result.ledger.started),
        "completed": len(records) - len(failed),
        "failed": len(failed),
        "failed_by_cause": dict(collections.Counter(r["cause"] for r in failed)),
        "failed_mid_stream": sum(r["chunks_before_error"] > 0 for r in failed),
        "never_ended": len(result.ledger.never_ended),
        "ended_twice": len(result.ledger.duplicates),
        "kills": len(result.kills),
        "kills_of_live_worker": sum(k["was_alive"] for k in result.kills),
        "restarts": stats.get("client", {}).get("restarts", 0),
        "crashes": stats.get("client", {}).get("crashes", 0),
        "retries": stats.get("retry", {}).get("retries", 0),
        "retry_gave_up": stats.get("retry", {}).get("gave_up", 0),
        "breaker_opened": stats.get("breaker", {}).get("opened", 0),
        "breaker_rejected": stats.get("breaker", {}).get("rejected", 0),
    }
    if reference is not None:
        checked = [r for r in records if r["ok"] and r["request_id"] in reference]
        counts["outputs_checked"] = len(checked)
        counts["outputs_differing"] = sum(r["output_ids"] != reference[r["request_id"]] for r in checked)
    rss = {k: (None if v is None else round(v / MiB, 1)) for k, v in result.rss.items()}
    return {"counts": counts, "latency": latency_table(records),
            "rss_mib": rss,
            "wall_s": round(result.wall_s, 3),
            "throughput_rps": round(len(records) / result.wall_s, 1) if result.wall_s else None,
            "kills": result.kills, "hung": result.hung, "stage_stats": stats}


# -- command line ------------------------------------------------------------------------
def make_config(*, error_rate: float, seed: int, retry: bool, attempts: int) -> StackConfig:
    faults = {"error_rate": {"*": error_rate}, "seed": seed} if error_rate else None
    if not retry:
        return StackConfig.phases(faults=faults)
    from krmlx.stages.retry import RetryPolicy

    return StackConfig.phases(["retry"], faults=faults, retry=RetryPolicy(attempts=attempts))


HOSTILE_WORKER = {"liveness_timeout_s": 1.0, "stall_timeout_s": 1.0}


async def soak_hostile(args) -> tuple[dict, dict]:
    """The same well-formed ops alone, then beside the hostile mix (retry on, no injected
    faults or kills: what fails in the second run, the mix caused)."""
    from krmlx.stages.retry import RetryPolicy

    cfg = StackConfig.phases(["retry"], retry=RetryPolicy(attempts=args.attempts), **HOSTILE_WORKER)
    gen = {"gen_fraction": args.gen_fraction, "max_tokens": args.max_tokens, "seed": args.seed}
    ops = make_ops(args.requests, **gen)
    runs, hostile = {}, Hostile(seed=args.seed)
    for name in ("calm", "hostile"):
        async with Engine(args.model, cfg) as eng:
            for op in make_ops(20, **{**gen, "seed": args.seed + 1}):
                await run_op(eng, op, DEFAULT_OP_TIMEOUT_S)
            runs[name] = await run_soak(eng, ops, concurrency=args.concurrency,
                                        op_timeout_s=args.op_timeout_s, buffered=True,
                                        hostile=hostile if name == "hostile" else None)
    summary = {name: summarize(r) for name, r in runs.items()}
    summary["hostile_actions"] = dict(hostile.counts)
    summary["p99_ms"] = {name: summary[name]["latency"]["all"]["p99_ms"] for name in runs}
    config = {"workload": "soak-hostile", "model": args.model, "requests": args.requests,
              "concurrency": args.concurrency, "gen_fraction": args.gen_fraction,
              "max_tokens": args.max_tokens, "seed": args.seed, "op_timeout_s": args.op_timeout_s,
              "stack": cfg.to_dict(), "hostile": {"every_s": hostile.every_s,
                                                  "cancel_after_s": hostile.cancel_after_s,
                                                  "stop_s": hostile.stop_s}}
    records = [{**r, "run": name} for name, res in runs.items() for r in res.records]
    return config, {"result": runs["hostile"], "records": records, "summary": summary}


async def soak(args) -> tuple[dict, dict]:
    cfg = make_config(error_rate=args.error_rate, seed=args.seed, retry=args.retry,
                      attempts=args.attempts)
    gen = {"gen_fraction": args.gen_fraction, "max_tokens": args.max_tokens, "seed": args.seed}
    ops = make_ops(args.requests, **gen) if not args.duration_s else iter_ops(**gen)
    if args.duration_s:
        ops = itertools.islice(ops, args.requests) if args.requests else ops
        kw = {"kill_at_s": kill_times(args.duration_s, args.kills, args.seed),
              "duration_s": args.duration_s}
    else:
        kw = {"kill_at": kill_points(args.requests, args.kills, args.seed)}
    async with Engine(args.model, cfg) as eng:
        # warm up (compile, allocate) before the "before" RSS is taken
        for op in make_ops(20, **{**gen, "seed": args.seed + 1}):
            await run_op(eng, op, DEFAULT_OP_TIMEOUT_S)
        result = await run_soak(eng, ops, concurrency=args.concurrency,
                                op_timeout_s=args.op_timeout_s, **kw)
    reference = None
    if args.check_outputs:
        issued = [result.ledger.started[i] for i in sorted(result.ledger.started)]
        async with Engine(args.model, StackConfig()) as clean:
            ref = await run_soak(clean, issued, concurrency=args.concurrency,
                                 op_timeout_s=args.op_timeout_s)
        reference = {r["request_id"]: r["output_ids"] for r in ref.records if r["ok"]}
    config = {"workload": "soak", "model": args.model, "requests": args.requests,
              "concurrency": args.concurrency, "error_rate": args.error_rate, "kills": args.kills,
              "duration_s": args.duration_s, "retry": args.retry, "attempts": args.attempts,
              "gen_fraction": args.gen_fraction, "max_tokens": args.max_tokens, "seed": args.seed,
              "op_timeout_s": args.op_timeout_s, "stack": cfg.to_dict()}
    return config, {"result": result, "summary": summarize(result, reference)}


def format_summary(summary: dict) -> str:
    c, lat, rss = summary["counts"], summary["latency"], summary["rss_mib"]
    lines = [f"requests {c['requests']}: completed {c['completed']}, failed {c['failed']} "
             f"{c['failed_by_cause']} (mid-stream {c['failed_mid_stream']}), "
             f"never ended {c['never_ended']}, ended twice {c['ended_twice']}",
             f"kills {c['kills']} (of a live worker: {c['kills_of_live_worker']}), restarts "
             f"{c['restarts']}, retries {c['retries']} (gave up {c['retry_gave_up']}), breaker "
             f"opened {c['breaker_opened']} (rejected {c['breaker_rejected']})"]
    if "outputs_checked" in c:
        lines.append(f"outputs checked against a fault-free run: {c['outputs_checked']}, "
                     f"differing: {c['outputs_differing']}")
    for kind, row in lat.items():
        if row["n"]:
            lines.append(f"latency {kind:9} n={row['n']:5}  p50 {row['p50_ms']:8.1f} ms  "
                         f"p99 {row['p99_ms']:8.1f} ms  max {row['max_ms']:8.1f} ms")
    lines.append(f"rss MiB: client {rss['client_before']} -> {rss['client_after']}, "
                 f"worker {rss['worker_before']} -> {rss['worker_after']}")
    lines.append(f"wall {summary['wall_s']} s, {summary['throughput_rps']} requests/s")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=1000,
                   help="requests to send (with --duration-s: at most this many; 0 = no cap)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--error-rate", type=float, default=0.1,
                   help="injected transient error probability, every method")
    p.add_argument("--kills", type=int, default=3, help="worker SIGKILLs during the run")
    p.add_argument("--duration-s", type=float, default=0.0,
                   help="run for this long instead of a fixed request count (0 = off)")
    p.add_argument("--out", default="runs", help="a directory, or a path ending in .json")
    p.add_argument("--model", default="tiny")
    p.add_argument("--retry", action="store_true",
                   help="switch the retry phase on (retry + its default circuit breaker)")
    p.add_argument("--attempts", type=int, default=6, help="retry attempts (with --retry)")
    p.add_argument("--gen-fraction", type=float, default=0.1)
    p.add_argument("--max-tokens", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--op-timeout-s", type=float, default=DEFAULT_OP_TIMEOUT_S)
    p.add_argument("--check-outputs", action="store_true",
                   help="re-run the issued requests fault-free and compare greedy outputs")
    p.add_argument("--hostile", action="store_true",
                   help="the ops alone, then beside a hostile mix (see the module docstring)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.duration_s and args.requests <= 0:
        print("--requests must be positive without --duration-s", file=sys.stderr)
        return 2
    if args.hostile and (args.duration_s or args.requests <= 0):
        print("--hostile runs a fixed list of ops twice: give --requests N (no --duration-s)",
              file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from krmlx.bench.results import write_results
    from krmlx.doctor import collect_env

    config, out = asyncio.run(soak_hostile(args) if args.hostile else soak(args))
    summary = out["summary"]
    path = Path(args.out)
    if path.suffix != ".json":
        path = path / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_results(path, env=collect_env(load_interval_s=0.1), config=config,
                  records=out.get("records", out["result"].records), summary=summary,
                  complete=not out["result"].hung)
    parts = [summary[k] for k in ("calm", "hostile")] if args.hostile else [summary]
    for name, part in zip(("calm", "hostile") if args.hostile else ("",), parts, strict=True):
        print((f"-- {name}\n" if name else "") + format_summary(part))
    if args.hostile:
        print(f"hostile actions: {summary['hostile_actions']}; p99 ms: {summary['p99_ms']}")
    print(f"results: {path}")
    lost = any(p["counts"]["never_ended"] or p["counts"]["ended_twice"] for p in parts)
    failed = args.hostile and summary["hostile"]["counts"]["failed"]
    return 1 if lost or out["result"].hung or failed else 0


if __name__ == "__main__":
    sys.exit(main())
