"""Cancellation and load (issue 8, items 4 and 5), through an Engine on the real tiny model.

Cancellation is checked where it matters, in the worker: its ``stats`` counts every token
it sends (``tokens_out``) and the streams still open (``active_streams``). A stream the
consumer abandons must stop within one decode step: after the cancel reaches the worker,
at most the token being computed at that moment (one) may still go out.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import psutil
import pytest
from reliability_support import load_soak, run

from krmlx.engine import Engine
from krmlx.stack import StackConfig
from krmlx.types import Request

soak = load_soak()
LONG = 3000  # max_tokens of a stream that would run for ~20 s if nobody stopped it


async def settled_stats(eng: Engine, timeout: float = 10.0) -> dict:
    """Worker stats once no stream is active (or AssertionError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        s = await eng.client.worker_stats()
        if s["active_streams"] == 0:
            return s
        assert time.monotonic() < deadline, f"streams still active after {timeout} s: {s}"
        await asyncio.sleep(0.02)


async def assert_stopped(eng: Engine, after_cancel: dict) -> dict:
    """Generation stopped: at most the in-flight token of each stream still open at
    ``after_cancel`` (stats taken right after the cancels were sent: a batched step may
    be computing one token for each of them), no active stream, and nothing more later."""
    s1 = await settled_stats(eng)
    await asyncio.sleep(0.3)
    s2 = await eng.client.worker_stats()
    in_flight = max(1, after_cancel["active_streams"])
    assert s1["tokens_out"] - after_cancel["tokens_out"] <= in_flight, \
        (s1["tokens_out"], after_cancel["tokens_out"], after_cancel["active_streams"])
    assert s2["tokens_out"] == s1["tokens_out"] and s2["active_streams"] == 0, (s1, s2)
    return s2


@pytest.mark.parametrize("how", ["aclose", "task_cancel", "task_cancel_while_consumer_busy"])
def test_abandoned_stream_stops_within_one_decode_step(how, tiny_path):
    """The consumer stops reading and closes the stream (aclose), or its task is cancelled
    while it waits for the next token, or while it is busy with its own work (then the
    stream is closed when the cancelled consumer's frame lets go of it)."""

    async def go():
        async with Engine("tiny") as eng:
            base = await eng.client.worker_stats()
            got = []
            if how == "aclose":
                stream = eng.stream(Request("Tell me about bees", max_tokens=LONG))
                got = [await stream.__anext__() for _ in range(3)]
                await asyncio.sleep(0.2)  # let the worker run ahead: it does not wait for reads
                await stream.aclose()
            else:
                async def consume():
                    async for chunk in eng.stream(Request("Tell me about bees", max_tokens=LONG)):
                        got.append(chunk)
                        if how == "task_cancel_while_consumer_busy":
                            await asyncio.sleep(0.05)  # the cancel lands here, outside the stream

                task = asyncio.create_task(consume())
                while len(got) < 3:
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0.2)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                await asyncio.sleep(0)  # a closed-by-finalizer stream sends its cancel now
            after_cancel = await eng.client.worker_stats()
            final = await assert_stopped(eng, after_cancel)
            return base, after_cancel, final, got

    base, after_cancel, final, got = run(go())
    assert len(got) >= 3
    generated = final["tokens_out"] - base["tokens_out"]
    assert generated < LONG / 2, f"the stream ran on: {generated} tokens"
    assert final["streams_done"] == base["streams_done"] + 1


@pytest.mark.parametrize("config", [StackConfig(), StackConfig.all()], ids=["phase0", "all"])
def test_cancel_storm_leaves_no_state_behind(config, tiny_path):
    """100 concurrent streams: 50 consumers are cancelled (task.cancel()) in flight, 50
    stop reading after 1-3 tokens and close their stream. Afterwards: no active stream in
    the worker, no pending call in the client, generation stopped, and the engine still
    serves correct output."""
    rng = random.Random(3)

    async def go():
        async with Engine("tiny", config) as eng:
            want = await eng.complete(Request("After the storm", max_tokens=12))
            base = await eng.client.worker_stats()
            progress = [0] * 100
            outcome = {}

            async def consumer(i):
                stop_after = rng.randint(1, 3) if i % 2 else None
                stream = eng.stream(Request(f"storm {i}: tell me a story", max_tokens=400))
                try:
                    async for _ in stream:
                        progress[i] += 1
                        if stop_after and progress[i] >= stop_after:
                            break  # stops reading ...
                finally:
                    await stream.aclose()  # ... and closes: the usual `async with`-less pattern
                outcome[i] = "closed"

            tasks = [asyncio.create_task(consumer(i)) for i in range(100)]
            t0 = time.monotonic()
            while sum(progress) < 20 and time.monotonic() - t0 < 30:
                await asyncio.sleep(0.01)
            for i in range(0, 100, 2):
                tasks[i].cancel()
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 120)
            after_cancel = await eng.client.worker_stats()
            final = await assert_stopped(eng, after_cancel)
            again = await eng.complete(Request("After the storm", max_tokens=12))
            pending = len(getattr(eng.client, "_pending", {}))
            return want, again, base, final, results, outcome, progress, pending, eng.stats()

    want, again, base, final, results, outcome, progress, pending, stats = run(go())
    cancelled = [i for i, r in enumerate(results) if isinstance(r, asyncio.CancelledError)]
    errors = [r for r in results if isinstance(r, BaseException)
              and not isinstance(r, asyncio.CancelledError)]
    assert not errors, errors[:3]
    assert set(cancelled) | set(outcome) == set(range(100))
    assert set(cancelled) <= set(range(0, 100, 2))  # only the ones cancelled (some may have ended)
    assert final["active_streams"] == 0 and pending == 0
    # 100 streams of up to 400 tokens: an unstopped storm would be ~40000 tokens
    generated = final["tokens_out"] - base["tokens_out"]
    assert generated < 2000, generated
    assert final["streams_done"] - base["streams_done"] == 100  # every stream ended, once
    assert again.token_ids == want.token_ids
    print(f"\n[storm {config.label}] tokens generated {generated}, cancelled "
          f"{len(cancelled)}, closed after 1-3 tokens {len(outcome)}")


def test_64_concurrent_clients_no_deadlock_bounded_memory(tiny_path):
    """64 concurrent clients for 12 s (after a 4 s warm-up with the same mix): 20% greedy
    generate of 1-4 tokens, 80% tokenize, through every stage (StackConfig.all()).

    Asserted: every request ends (a 30 s guard per request: none hung, so no deadlock),
    all complete, no stream or pending call remains, the worker never restarted.
    RSS, measured after the warm-up and at the end, may grow by at most 40 MiB in this
    process and in the worker. Why 40 MiB: after the warm-up both are at steady state
    (MLX buffers, tokenizer and codec buffers allocated), and allocator noise on a steady
    workload is a few MiB; the measured phase runs ~1000-3000 requests on this 2-core
    machine, so 40 MiB admits at most a ~15-40 KiB leak per request: keeping what a
    request carries (its frames, token lists, inbox, stream record, a task) or an unbounded
    queue would exceed it. The test prints the growth per request; the soak benchmark is
    the tool for small leaks (longer runs, same measurement).
    """
    gen = {"gen_fraction": 0.2, "max_tokens": 4}

    async def go():
        async with Engine("tiny", StackConfig.all()) as eng:
            warm = await soak.run_soak(eng, soak.iter_ops(seed=11, **gen), concurrency=64,
                                       duration_s=4.0, op_timeout_s=30)
            worker = psutil.Process(eng.client.pid)
            me = psutil.Process(os.getpid())
            rss0 = (me.memory_info().rss, worker.memory_info().rss)
            result = await asyncio.wait_for(soak.run_soak(
                eng, soak.iter_ops(seed=12, **gen), concurrency=64, duration_s=12.0,
                op_timeout_s=30), 12.0 + 90)
            rss1 = (me.memory_info().rss, worker.memory_info().rss)
            stats = await settled_stats(eng)
            pending = len(getattr(eng.client, "_pending", {}))
            return warm, result, rss0, rss1, stats, pending, eng.client.pid, worker.pid

    warm, result, rss0, rss1, stats, pending, pid_end, pid_start = run(go())
    assert pid_end == pid_start, "the worker restarted under load"
    records = result.records
    assert result.ledger.never_ended == [] and not result.hung
    assert records and all(r["ok"] for r in records), [r for r in records if not r["ok"]][:3]
    assert stats["active_streams"] == 0 and pending == 0
    lat = soak.latency_table(records)
    growth = [(b - a) / 2**20 for a, b in zip(rss0, rss1, strict=True)]
    print(f"\n[load] {len(records)} requests in {result.wall_s:.1f} s "
          f"({len(records) / result.wall_s:.0f}/s) at concurrency 64; "
          + "; ".join(f"{k} n={v['n']} p50 {v['p50_ms']:.1f} ms p99 {v['p99_ms']:.1f} ms "
                      f"max {v['max_ms']:.1f} ms" for k, v in lat.items() if v["n"])
          + f"; RSS MiB client {rss0[0] / 2**20:.1f} -> {rss1[0] / 2**20:.1f}, "
          f"worker {rss0[1] / 2**20:.1f} -> {rss1[1] / 2**20:.1f} "
          f"({growth[0] * 2**10 / len(records):.2f} / {growth[1] * 2**10 / len(records):.2f} "
          "KiB per request)")
    assert len(records) >= 300  # it really was under load
    assert growth[0] < 40, f"client RSS grew {growth[0]:.1f} MiB over {len(records)} requests"
    assert growth[1] < 40, f"worker RSS grew {growth[1]:.1f} MiB over {len(records)} requests"
