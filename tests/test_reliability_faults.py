"""Reliability under faults and worker death (issue 8, items 1 and 2), on the real tiny model.

Item 1 runs the soak harness of ``benchmarks/soak.py`` at CI size: 1000 requests at
concurrency 16. The mix (seeded): about 10% ``generate`` (greedy, 1-3 tokens, over 24
prompts) and 90% ``tokenize`` of random text: 1000 generate calls don't fit the time
budget of this 2-core machine, and most of what can go wrong (routing, restarts,
retries, exactly-once) is per request, not per token. Faults come from the worker's own
seeded injector (10% transient errors on every method); the 3 kills are SIGKILLs of the
worker after seeded numbers of finished requests.

Every request is tracked by id: it must end exactly once, completed or failed, and a
failure must name its cause (an injected error or the killed worker). A request that
outlives a 20 s guard timeout counts as hung (a deadlock), and stops the run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psutil
import pytest
from reliability_support import load_soak, pid_gone, run, worker_children, zombie_children

from krmlx.engine import Engine
from krmlx.errors import BadRequest, WorkerCrashed
from krmlx.stack import StackConfig
from krmlx.stages.breaker import BreakerPolicy
from krmlx.stages.retry import RetryPolicy
from krmlx.types import Request
from krmlx.worker.config import WorkerConfig

soak = load_soak()

N, CONCURRENCY, KILLS = 1000, 16, 3
# Seed 0: the first fault draw of a fresh worker (the reload of its model after a
# restart) is not an error. test_failed_reload_after_a_restart_is_not_permanent is the
# seed where it is.
SEED = 0
OPS = soak.make_ops(N, gen_fraction=0.1, max_tokens=3, seed=SEED)
FAULTS = {"error_rate": {"*": 0.1}, "seed": SEED}
OP_TIMEOUT_S = 20.0  # a worker restart takes 2-5 s here; 20 s without an answer is a hang


async def soak_run(config: StackConfig, kill_at=()):
    async with Engine("tiny", config) as eng:
        return await soak.run_soak(eng, OPS, concurrency=CONCURRENCY, kill_at=kill_at,
                                   op_timeout_s=OP_TIMEOUT_S, stop_on_hang=True)


def assert_each_request_ended_once(result) -> None:
    ledger = result.ledger
    hung = [r["request_id"] for r in result.records if r["cause"] == "hung"]
    assert not hung, f"requests hung (no answer in {OP_TIMEOUT_S} s): {hung[:10]}"
    assert sorted(ledger.started) == list(range(N)), "not every request was issued"
    assert ledger.never_ended == [], f"requests that never ended: {ledger.never_ended[:10]}"
    assert ledger.duplicates == [], f"requests that ended twice: {ledger.duplicates[:10]}"
    for r in result.records:
        assert r["ok"] != bool(r["cause"]), r  # completed xor failed with a cause


@pytest.fixture(scope="module")
def reference(tiny_path):
    """The fault-free run: every request's output (greedy: the same on every run)."""
    result = run(soak_run(StackConfig()))
    assert_each_request_ended_once(result)
    assert all(r["ok"] for r in result.records)
    return {r["request_id"]: r["output_ids"] for r in result.records}


def test_nothing_lost_under_errors_and_kills(reference):
    """No retry: 10% injected errors and 3 kills. Each request completes or fails once,
    naming its cause; completed outputs equal the fault-free run's."""
    result = run(soak_run(StackConfig.phases(faults=FAULTS), soak.kill_points(N, KILLS, SEED)))
    summary = soak.summarize(result, reference)
    print("\n[no retry]", soak.format_summary(summary))
    assert_each_request_ended_once(result)
    counts = summary["counts"]
    failed = [r for r in result.records if not r["ok"]]
    assert set(counts["failed_by_cause"]) <= {"injected_error", "worker_crashed"}, counts
    for r in failed:  # the error names its cause
        phrase = {"injected_error": "injected transient fault in",
                  "worker_crashed": "exited with code -9"}[r["cause"]]
        assert phrase in r["error"], r
    assert counts["kills"] == KILLS and counts["kills_of_live_worker"] == KILLS
    assert counts["restarts"] == KILLS and counts["crashes"] == KILLS
    # 10% of ~1000 calls (binomial sd ~10): a count far off means faults were not injected
    assert 50 <= counts["failed_by_cause"].get("injected_error", 0) <= 160, counts
    # a kill fails what was in flight: at least one call, at most one per client task
    assert KILLS <= counts["failed_by_cause"].get("worker_crashed", 0) <= KILLS * CONCURRENCY
    assert counts["completed"] + counts["failed"] == N
    assert counts["outputs_checked"] == counts["completed"] and counts["outputs_differing"] == 0


def test_retry_phase_completes_everything_under_errors_and_kills(reference):
    """Retry on: every request completes with the fault-free output.

    Two settings differ from StackConfig.phases(["retry"])'s defaults, each for a
    reason shown by its own test: 6 attempts (3 attempts at a 10% error rate give up on
    1 request in 1000 by arithmetic: that is the policy, not a bug), and a breaker
    threshold above the concurrency (with the default 5, one kill opens the breaker:
    test_one_crash_does_not_open_the_breaker). One exception is allowed, by the Retry
    contract: a generate whose worker died after its first token was delivered is not
    retried (no duplicated text), at most one per kill (on the serial scheduler one stream
    runs at a time);
    test_complete_survives_a_kill_mid_stream_with_retry asks for more.
    """
    config = StackConfig.phases(["retry"], faults=FAULTS, retry=RetryPolicy(attempts=6),
                                breaker=BreakerPolicy(failure_threshold=4 * CONCURRENCY),
                                scheduler="serial")  # one stream at a time, as said above
    result = run(soak_run(config, soak.kill_points(N, KILLS, SEED)))
    summary = soak.summarize(result, reference)
    print("\n[retry]", soak.format_summary(summary))
    assert_each_request_ended_once(result)
    counts = summary["counts"]
    failed = [r for r in result.records if not r["ok"]]
    for r in failed:
        assert r["cause"] == "worker_crashed" and r["kind"] == "generate", r
        assert r["chunks_before_error"] > 0, r  # only mid-stream casualties
    assert len(failed) <= KILLS
    assert counts["restarts"] == KILLS and counts["retry_gave_up"] == 0
    assert counts["retries"] >= 50  # the faults did happen, and were retried
    assert counts["outputs_checked"] == counts["completed"] and counts["outputs_differing"] == 0


def test_worker_death_fails_pending_calls_fast_then_engine_recovers(tiny_path):
    """kill -9 mid-stream through an Engine: every pending call (the live stream, queued
    streams, slow tokenize calls) fails within 1 s with WorkerCrashed naming the exit;
    the next call restarts the worker and reloads tiny; nothing is left behind."""

    async def go():
        # the serial scheduler, so the queued calls wait behind the live stream
        async with Engine("tiny", StackConfig(worker=WorkerConfig(scheduler="serial"))) as eng:
            want = await eng.complete(Request("Why do bees dance?", max_tokens=8))
            want_ids = await eng.tokenize("hello world")
            first_pid = eng.client.pid
            stream = eng.stream(Request("Tell me about rivers", max_tokens=3000))
            got = [await stream.__anext__() for _ in range(3)]  # mid-stream
            ended: dict[str, tuple[float, BaseException | None]] = {}

            async def pending(name, coro):
                try:
                    await coro
                    ended[name] = (time.perf_counter(), None)
                except Exception as e:  # noqa: BLE001
                    ended[name] = (time.perf_counter(), e)

            async def drain(s):
                async for _ in s:
                    pass

            tasks = [asyncio.create_task(pending("stream", drain(stream)))]
            for i in range(2):  # queued behind the live stream (one runs at a time)
                tasks.append(asyncio.create_task(pending(
                    f"queued{i}", eng.complete(Request(f"queued {i}", max_tokens=5)))))
            for i in range(3):  # held in the worker by an injected 5 s delay
                tasks.append(asyncio.create_task(pending(f"tokenize{i}", eng.call(
                    "tokenize", {"text": "slow", "faults": {"latency_ms": {"tokenize": 5000}}},
                    "tiny"))))
            await asyncio.sleep(0.3)
            assert not ended, f"calls ended before the kill: {ended}"
            t_kill = time.perf_counter()
            os.kill(first_pid, signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            # new calls restart the worker and find tiny resident again
            again = await eng.complete(Request("Why do bees dance?", max_tokens=8))
            again_ids = await eng.tokenize("hello world")
            models = await eng.call("list_models")
            stats = dict(eng.client.stats)
            second_pid = eng.client.pid
            live = [p.pid for p in worker_children()]
        return (want, want_ids, got, ended, t_kill, again, again_ids, models, stats,
                first_pid, second_pid, live)

    (want, want_ids, got, ended, t_kill, again, again_ids, models, stats, first_pid,
     second_pid, live) = run(go())
    assert len(got) == 3 and len(ended) == 6
    for name, (t, exc) in ended.items():
        assert isinstance(exc, WorkerCrashed), (name, exc)
        assert "exited with code -9" in str(exc), (name, exc)
        assert t - t_kill < 1.0, f"{name} failed {t - t_kill:.2f} s after the kill"
    assert again.token_ids == want.token_ids and again_ids == want_ids
    assert [m["model"] for m in models] == ["tiny"]
    assert stats["restarts"] == 1 and stats["crashes"] == 1
    assert second_pid != first_pid and live == [second_pid]  # only the new worker, no zombie
    assert pid_gone(first_pid)
    assert worker_children() == [] and zombie_children() == []  # after close: nothing left


# -- bugs found by the suite (fixed; each test pins its fix) -----------------------------
def test_calls_made_during_a_restart_succeed(tiny_path):
    """After a worker death, calls made at once (a burst) and while the new worker starts
    and reloads (every 0.2 s) all wait for the restart and succeed."""

    async def go():
        async with Engine("tiny") as eng:
            want = await eng.tokenize("hello world")
            os.kill(eng.client.pid, signal.SIGKILL)
            while psutil.pid_exists(eng.client.pid) and not pid_gone(eng.client.pid):
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # the client has seen the exit

            async def one(delay):
                await asyncio.sleep(delay)
                try:
                    return await asyncio.wait_for(eng.tokenize("hello world"), 12)
                except Exception as e:  # noqa: BLE001
                    return f"{type(e).__name__}: {e}"

            return want, await asyncio.gather(*[one(0) for _ in range(4)],
                                              *[one(0.2 * i) for i in range(1, 12)])

    want, got = run(go())
    wrong = [g for g in got if g != want]
    assert not wrong, f"{len(wrong)} of {len(got)} calls failed, e.g. {wrong[:2]}"


def test_failed_reload_after_a_restart_is_not_permanent(tiny_path):
    # seed 31: the first fault draw of every fresh worker is an injected load_model error;
    # Engine.start's load is retried by the retry phase, the restart's reload is not.
    config = StackConfig.phases(["retry"], faults={"error_rate": {"load_model": 0.1}, "seed": 31})

    async def go():
        async with Engine("tiny", config) as eng:
            want = await eng.tokenize("hello world")
            pid = eng.client.pid
            os.kill(pid, signal.SIGKILL)
            while not pid_gone(pid):
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            out = []
            for _ in range(3):
                try:
                    out.append(await asyncio.wait_for(eng.tokenize("hello world"), 30))
                except Exception as e:  # noqa: BLE001
                    out.append(f"{type(e).__name__}: {e}")
            return want, out

    want, out = run(go())
    assert out[-1] == want, out  # at the latest the third call after the crash works


def test_one_crash_does_not_open_the_breaker(tiny_path):
    async def go():
        async with Engine("tiny", StackConfig.phases(["retry"])) as eng:
            want = await eng.tokenize("slow")
            slow = {"text": "slow", "faults": {"latency_ms": {"tokenize": 1500}}}
            tasks = [asyncio.create_task(eng.call("tokenize", slow, "tiny")) for _ in range(8)]
            await asyncio.sleep(0.3)
            os.kill(eng.client.pid, signal.SIGKILL)
            got = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
            return want, got, eng.stats()["breaker"]

    want, got, breaker = run(go())
    assert [g for g in got if g != want] == [], (got, breaker)
    assert breaker["opened"] == 0


def test_complete_survives_a_kill_mid_stream_with_retry(tiny_path):
    async def go():
        async with Engine("tiny", StackConfig.phases(["retry"])) as eng:
            req = Request("Tell me a long story", max_tokens=300)
            want = await eng.complete(req)
            base = (await eng.client.worker_stats())["tokens_out"]
            task = asyncio.create_task(eng.complete(req))
            while (await eng.client.worker_stats())["tokens_out"] < base + 5:
                await asyncio.sleep(0.02)
            os.kill(eng.client.pid, signal.SIGKILL)
            try:
                got = await asyncio.wait_for(task, 60)
            except Exception as e:  # noqa: BLE001
                got = e
            return want, got

    want, got = run(go())
    assert not isinstance(got, BaseException), got
    assert got.token_ids == want.token_ids


def test_out_of_vocabulary_prompt_ids_are_rejected(tiny_path):
    async def go():
        async with Engine("tiny") as eng:
            pid = eng.client.pid
            out = []
            for ids in ([4096], [2**31], [10**9]):  # tiny's vocab_size is 4096
                try:
                    c = await eng.complete(Request(prompt_ids=ids, max_tokens=2))
                    out.append((ids, f"generated {c.token_ids}"))
                except Exception as e:  # noqa: BLE001
                    out.append((ids, e))
            return pid, eng.client.pid, out

    pid, pid_after, out = run(go())
    assert all(isinstance(e, BadRequest) for _, e in out), out
    assert pid_after == pid  # the worker survived
