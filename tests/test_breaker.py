"""CircuitBreaker on a fake clock, around a scripted service (the allowed 'scripted faults' fake)."""

from __future__ import annotations

import asyncio

import pytest
from scripted import ScriptedService

from krmlx.clock import FakeClock
from krmlx.errors import BadRequest, CircuitOpen, ConfigError, TransientError, WorkerCrashed
from krmlx.service import Call, Service, unary
from krmlx.stages.breaker import BreakerPolicy, CircuitBreaker
from krmlx.stages.retry import Retry, RetryPolicy, is_transient
from krmlx.types import Chunk, Done

GEN = Call("generate", {"prompt": "hi"}, model="tiny")
TOK = Call("tokenize", {"text": "hi"}, model="tiny")
FAIL = [TransientError("busy")]
OK = ["ok"]
STREAM_OK = [Chunk(0, "He", 0, 0.0), Chunk(1, "llo", 1, 0.0), Done("length", 3)]


def make(svc, clock, **policy):
    breaker = CircuitBreaker(svc, BreakerPolicy(**policy), clock=clock)
    breaker.transitions = []
    breaker.add_listener(lambda old, new: breaker.transitions.append((old, new)))
    return breaker


def outcome(breaker, call=TOK):
    """Run one call to its end; return its value list or the exception raised."""
    async def go():
        try:
            return [item async for item in breaker.call(call)]
        except Exception as exc:
            return exc
    return asyncio.run(go())


def trip(clock, threshold=3, open_s=5.0, **policy):
    svc = ScriptedService(*[FAIL] * threshold, OK)
    breaker = make(svc, clock, failure_threshold=threshold, open_s=open_s, **policy)
    for _ in range(threshold):
        assert isinstance(outcome(breaker), TransientError)
    return svc, breaker


def test_a_closed_breaker_passes_calls_through_and_counts_successes():
    """Closed, the breaker is a Service that hands every item through unchanged and
    counts a finished call as a success (no transition)."""
    svc = ScriptedService(OK)
    breaker = make(svc, FakeClock())
    assert isinstance(breaker, Service)
    assert outcome(breaker) == list(OK) and outcome(breaker) == list(OK)
    assert svc.calls == 2 and svc.closed == 2
    assert breaker.state == "closed" and breaker.transitions == []


def test_opens_after_threshold_and_rejects_fast():
    clock = FakeClock()
    svc, breaker = trip(clock, threshold=3, open_s=5.0)
    assert breaker.state == "open"
    assert breaker.transitions == [("closed", "open")]
    clock.advance(1.0)
    exc = outcome(breaker)
    assert isinstance(exc, CircuitOpen)
    assert "open" in str(exc) and "4 s" in str(exc)  # 4 more seconds to go
    assert svc.calls == 3  # rejected without touching the service
    assert breaker.stats == {"state": "open", "opened": 1, "rejected": 1, "failures": 3,
                             "successes": 0}


def test_only_consecutive_failures_open():
    clock = FakeClock()
    svc = ScriptedService(FAIL, FAIL, OK, FAIL, FAIL, OK)
    breaker = make(svc, clock, failure_threshold=3)
    for _ in range(6):
        outcome(breaker)
    assert breaker.state == "closed"
    assert breaker.stats["failures"] == 4 and breaker.stats["successes"] == 2


def test_half_opens_after_open_s_and_closes_on_probe_success():
    clock = FakeClock()
    svc, breaker = trip(clock, threshold=2, open_s=5.0)
    clock.advance(4.9)
    assert breaker.state == "open"
    clock.advance(0.1)
    assert breaker.state == "half_open"
    assert asyncio.run(unary(breaker, TOK)) == "ok"
    assert breaker.state == "closed"
    assert breaker.transitions == [("closed", "open"), ("open", "half_open"),
                                   ("half_open", "closed")]
    assert breaker.stats["state"] == "closed"


def test_probe_failure_reopens_for_another_open_s():
    clock = FakeClock()
    svc = ScriptedService(FAIL, FAIL, [WorkerCrashed("died again")], OK)
    breaker = make(svc, clock, failure_threshold=2, open_s=5.0)
    outcome(breaker), outcome(breaker)
    clock.advance(5.0)
    assert isinstance(outcome(breaker), WorkerCrashed)  # the probe
    assert breaker.state == "open"
    assert breaker.stats["opened"] == 2
    exc = outcome(breaker)
    assert isinstance(exc, CircuitOpen) and "5 s" in str(exc)
    assert breaker.transitions == [("closed", "open"), ("open", "half_open"),
                                   ("half_open", "open")]


def test_half_open_admits_only_the_allowed_probes_concurrently():
    clock = FakeClock()
    svc, breaker = trip(clock, threshold=1, open_s=1.0)
    svc.scripts = [STREAM_OK]
    clock.advance(1.0)

    async def go():
        probe = breaker.call(GEN)
        first = await probe.__anext__()  # the probe is in flight
        with pytest.raises(CircuitOpen, match="half-open"):
            await breaker.call(TOK).__anext__()
        rest = [item async for item in probe]
        return [first, *rest]

    items = asyncio.run(go())
    assert items == STREAM_OK
    assert breaker.state == "closed"
    assert breaker.stats["rejected"] == 1


def test_several_probe_successes_needed_to_close():
    clock = FakeClock()
    svc, breaker = trip(clock, threshold=1, open_s=1.0, half_open_probes=2)
    clock.advance(1.0)
    outcome(breaker)
    assert breaker.state == "half_open"
    outcome(breaker)
    assert breaker.state == "closed"


def test_stream_error_before_done_counts_and_early_close_is_neutral():
    clock = FakeClock()
    svc = ScriptedService([STREAM_OK[0], TransientError("died mid-stream")])
    breaker = make(svc, clock, failure_threshold=1, open_s=1.0)
    assert isinstance(outcome(breaker, GEN), TransientError)
    assert breaker.state == "open"
    svc.scripts = [STREAM_OK]
    clock.advance(1.0)

    async def take_one_and_close():
        it = breaker.call(GEN)
        await it.__anext__()
        await it.aclose()

    asyncio.run(take_one_and_close())  # the probe is abandoned: neither outcome
    assert breaker.state == "half_open"
    assert outcome(breaker, GEN) == STREAM_OK  # the probe slot was freed
    assert breaker.state == "closed"


def test_non_counted_errors_pass_through_without_tripping():
    clock = FakeClock()
    err = BadRequest("max_tokens: must be positive")
    breaker = make(ScriptedService([err]), clock, failure_threshold=1)
    for _ in range(3):
        assert outcome(breaker) is err
    assert breaker.state == "closed"
    assert breaker.stats["failures"] == 0 and breaker.transitions == []


def test_listener_errors_do_not_break_the_breaker():
    clock = FakeClock()
    breaker = make(ScriptedService(FAIL), clock, failure_threshold=1)
    breaker.add_listener(lambda old, new: 1 / 0)
    assert isinstance(outcome(breaker), TransientError)
    assert breaker.state == "open" and breaker.transitions == [("closed", "open")]


def test_retry_above_breaker_does_not_retry_a_rejection():
    clock = FakeClock()
    svc = ScriptedService(FAIL)
    breaker = CircuitBreaker(svc, BreakerPolicy(failure_threshold=2), clock=clock)
    retry = Retry(breaker, RetryPolicy(attempts=10), clock=clock, sleep=clock.sleep, seed=0)
    with pytest.raises(CircuitOpen):
        asyncio.run(unary(retry, TOK))
    assert svc.calls == 2 and breaker.stats["rejected"] == 1
    assert retry.stats["retries"] == 2 and retry.stats["gave_up"] == 0


@pytest.mark.parametrize("field, value", [
    ("failure_threshold", 0), ("failure_threshold", 2.5), ("open_s", -1.0),
    ("open_s", float("inf")), ("half_open_probes", 0), ("counts", None),
])
def test_policy_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        BreakerPolicy(**{field: value})


def test_default_policy():
    policy = BreakerPolicy()
    assert (policy.failure_threshold, policy.open_s, policy.half_open_probes) == (5, 5.0, 1)
    assert policy.counts is is_transient


def test_one_failure_instance_seen_by_concurrent_calls_counts_once():
    """The client fails every call in flight at a worker death with ONE WorkerCrashed:
    that is one failure, however many calls were in flight."""
    crash = WorkerCrashed("worker exited with code -9")

    class Crashing:
        gate: asyncio.Event | None = None  # calls wait on it, then all fail with `crash`

        def call(self, call):
            return self._play()

        async def _play(self):
            if self.gate is not None:
                await self.gate.wait()
            raise crash
            yield  # pragma: no cover - makes this an async generator

        async def aclose(self):
            pass

    svc = Crashing()
    breaker = make(svc, FakeClock(), failure_threshold=2)

    async def go():
        svc.gate = asyncio.Event()
        tasks = [asyncio.create_task(unary(breaker, TOK)) for _ in range(8)]
        await asyncio.sleep(0)  # all 8 admitted
        svc.gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    assert all(r is crash for r in asyncio.run(go()))
    assert breaker.state == "closed" and breaker.stats["failures"] == 1
    # a call admitted after the failure was counted counts again, same instance or not
    svc.gate = None
    assert outcome(breaker) is crash
    assert breaker.state == "open" and breaker.stats["failures"] == 2
