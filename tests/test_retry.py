"""Retry stage on a fake clock, around a scripted service (the allowed 'scripted faults' fake)."""

from __future__ import annotations

import asyncio

import pytest
from scripted import ScriptedService
from tenacity import RetryError

from krmlx.clock import FakeClock
from krmlx.errors import (
    BadRequest,
    CallTimeout,
    CircuitOpen,
    ConfigError,
    TransientError,
    UnknownModel,
    WorkerCrashed,
    WorkerError,
)
from krmlx.service import Call, Service, unary
from krmlx.stages.retry import Retry, RetryPolicy, is_transient
from krmlx.types import Chunk, Done

GEN = Call("generate", {"prompt": "hi"}, model="tiny")
TOK = Call("tokenize", {"text": "hi"}, model="tiny")


def chunk(i: int, text: str) -> Chunk:
    return Chunk(token_id=i, text=text, index=i, t_s=0.0)


def make(service, clock, **policy):
    return Retry(service, RetryPolicy(**policy), clock=clock, sleep=clock.sleep, seed=0)


async def drain(it):
    return [item async for item in it]


def test_passes_a_stream_through_and_closes_the_inner_one_when_closed_early():
    """Retry is a Service; a stream goes through item for item, and a consumer that stops
    after the first chunk closes the inner stream (which cancels it in the worker)."""
    clock = FakeClock()
    svc = ScriptedService([chunk(0, "a"), chunk(1, "b"), chunk(2, "c"), Done("length", 3)])
    retry = make(svc, clock, attempts=3)
    assert isinstance(retry, Service)
    assert asyncio.run(drain(retry.call(GEN))) == [chunk(0, "a"), chunk(1, "b"), chunk(2, "c"),
                                                    Done("length", 3)]

    async def first_then_close():
        it = retry.call(GEN)
        first = await it.__anext__()
        await it.aclose()
        return first

    assert asyncio.run(first_then_close()) == chunk(0, "a")
    assert svc.calls == 2 and svc.closed == 2 and retry.stats["retries"] == 0


def test_succeeds_after_transient_errors_and_counts_stats():
    clock = FakeClock()
    svc = ScriptedService([TransientError("busy")], [WorkerCrashed("died")], [[1, 2, 3]])
    retry = make(svc, clock, attempts=3)
    assert asyncio.run(unary(retry, TOK)) == [1, 2, 3]
    assert svc.calls == 3
    assert retry.stats["calls"] == 1
    assert retry.stats["retries"] == 2
    assert retry.stats["succeeded_after_retry"] == 1
    assert retry.stats["gave_up"] == 0
    assert retry.stats["retry_wait_s"] == pytest.approx(sum(clock.sleeps))
    assert len(clock.sleeps) == 2


def test_gives_up_after_attempts_with_the_last_error_itself():
    clock = FakeClock()
    errors = [TransientError(f"busy {i}") for i in range(3)]
    svc = ScriptedService(*[[e] for e in errors])
    retry = make(svc, clock, attempts=3)
    with pytest.raises(TransientError) as info:
        asyncio.run(unary(retry, TOK))
    assert info.value is errors[-1]
    assert not isinstance(info.value, RetryError)
    assert svc.calls == 3 and svc.closed == 3
    assert retry.stats | {"retry_wait_s": 0} == {
        "calls": 1, "retries": 2, "gave_up": 1, "succeeded_after_retry": 0, "retry_wait_s": 0}


def test_deadline_stops_retrying_on_the_injected_clock():
    clock = FakeClock()
    # Each attempt takes 0.4 s of fake time, then times out.
    svc = ScriptedService([lambda: clock.advance(0.4), CallTimeout("slow")])
    retry = make(svc, clock, attempts=10, deadline_s=1.0, backoff_initial_s=0.05, jitter_s=0.0)
    with pytest.raises(CallTimeout):
        asyncio.run(unary(retry, TOK))
    # 0.4 | wait 0.05 | 0.85 | wait 0.1 -> 0.95 | 1.35: the next wait would pass the deadline.
    assert svc.calls == 3
    assert clock.sleeps == pytest.approx([0.05, 0.1])
    assert retry.stats["gave_up"] == 1


def test_deadline_already_passed_means_no_retry():
    clock = FakeClock()
    svc = ScriptedService([lambda: clock.advance(2.0), TransientError("busy")])
    retry = make(svc, clock, attempts=5, deadline_s=1.0)
    with pytest.raises(TransientError):
        asyncio.run(unary(retry, TOK))
    assert svc.calls == 1 and clock.sleeps == []


@pytest.mark.parametrize("error", [
    BadRequest("max_tokens: bad"), UnknownModel("nope"), WorkerError("internal", "boom"),
    CircuitOpen("circuit breaker is open"), RuntimeError("bug"),
])
def test_non_transient_errors_are_not_retried(error):
    clock = FakeClock()
    svc = ScriptedService([error], ["never"])
    retry = make(svc, clock, attempts=5)
    with pytest.raises(type(error)) as info:
        asyncio.run(unary(retry, TOK))
    assert info.value is error
    assert svc.calls == 1 and clock.sleeps == []
    assert retry.stats["retries"] == 0 and retry.stats["gave_up"] == 0


def test_is_transient_table():
    assert is_transient(TransientError("x"))
    assert is_transient(WorkerCrashed("x"))
    assert is_transient(CallTimeout("x"))
    for exc in (BadRequest("x"), UnknownModel("x"), CircuitOpen("x"), WorkerError("c", "x"),
                ValueError("x"), asyncio.CancelledError()):
        assert not is_transient(exc)


def test_backoff_grows_exponentially_with_bounded_jitter():
    clock = FakeClock()
    svc = ScriptedService([TransientError("busy")])
    retry = make(svc, clock, attempts=6, backoff_initial_s=0.1, backoff_multiplier=2.0,
                 backoff_max_s=0.5, jitter_s=0.01)
    with pytest.raises(TransientError):
        asyncio.run(unary(retry, TOK))
    base = [0.1, 0.2, 0.4, 0.5, 0.5]
    assert len(clock.sleeps) == len(base)
    for slept, b in zip(clock.sleeps, base, strict=True):
        assert b <= slept <= b + 0.01
    assert len(set(s - b for s, b in zip(clock.sleeps, base, strict=True))) > 1  # jitter is really there


def test_seeded_jitter_is_reproducible():
    def sleeps(seed):
        clock = FakeClock()
        retry = Retry(ScriptedService([TransientError("busy")]), RetryPolicy(attempts=4),
                      clock=clock, sleep=clock.sleep, seed=seed)
        with pytest.raises(TransientError):
            asyncio.run(unary(retry, TOK))
        return clock.sleeps

    assert sleeps(42) == sleeps(42)
    assert sleeps(42) != sleeps(43)


def test_stream_is_retried_before_its_first_chunk():
    clock = FakeClock()
    svc = ScriptedService([TransientError("busy")],
                          [chunk(0, "He"), chunk(1, "llo"), Done("length", 3)])
    retry = make(svc, clock)
    items = asyncio.run(drain(retry.call(GEN)))
    assert [c.text for c in items[:-1]] == ["He", "llo"]
    assert items[-1] == Done("length", 3)
    assert svc.calls == 2 and retry.stats["succeeded_after_retry"] == 1


def test_stream_is_not_retried_after_a_chunk_went_out():
    clock = FakeClock()
    err = TransientError("died mid-stream")
    svc = ScriptedService([chunk(0, "He"), chunk(1, "llo"), err],
                          [chunk(0, "He"), chunk(1, "llo"), Done("length", 3)])
    retry = make(svc, clock, attempts=5)
    seen = []

    async def consume():
        async for item in retry.call(GEN):
            seen.append(item.text)

    with pytest.raises(TransientError) as info:
        asyncio.run(consume())
    assert info.value is err
    assert seen == ["He", "llo"]  # each chunk once, no duplicated text
    assert svc.calls == 1 and clock.sleeps == []
    assert retry.stats["retries"] == 0 and retry.stats["gave_up"] == 0


def test_early_close_closes_the_inner_iterator():
    clock = FakeClock()
    svc = ScriptedService([chunk(i, "x") for i in range(10)] + [Done("length", 1)])
    retry = make(svc, clock)

    async def take_one():
        it = retry.call(GEN)
        first = await it.__anext__()
        await it.aclose()
        return first

    assert asyncio.run(take_one()).index == 0
    assert svc.calls == 1 and svc.closed == 1


def test_empty_inner_stream_ends_quietly():
    retry = make(ScriptedService([]), FakeClock())
    assert asyncio.run(drain(retry.call(GEN))) == []


@pytest.mark.parametrize("field, value", [
    ("attempts", 0), ("attempts", 1.5), ("attempts", True), ("deadline_s", -1.0),
    ("backoff_initial_s", -0.1), ("backoff_max_s", float("nan")), ("backoff_multiplier", 0.5),
    ("jitter_s", -0.01), ("retry_on", "transient"),
])
def test_policy_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        RetryPolicy(**{field: value})


def test_default_policy_is_valid_and_frozen():
    policy = RetryPolicy()
    assert policy.attempts == 3 and policy.retry_on is is_transient
    with pytest.raises(AttributeError):
        policy.attempts = 5  # type: ignore[misc]


def test_buffered_stream_is_retried_whole_after_a_chunk():
    """Call.buffered (Engine.complete): the caller hands nothing on before the end, so a
    failure past the first chunk re-runs the whole stream; only the good attempt's items
    come out, and only once it has ended."""
    clock = FakeClock()
    svc = ScriptedService([chunk(0, "He"), TransientError("died mid-stream")],
                          [chunk(0, "He"), chunk(1, "llo"), Done("length", 3)])
    retry = make(svc, clock)
    call = Call("generate", {"prompt": "hi"}, "tiny", buffered=True)
    items = asyncio.run(drain(retry.call(call)))
    assert [c.text for c in items[:-1]] == ["He", "llo"] and items[-1] == Done("length", 3)
    assert svc.calls == 2 and svc.closed == 2
    assert retry.stats["retries"] == 1 and retry.stats["succeeded_after_retry"] == 1


def test_buffered_stream_gives_up_with_the_last_error():
    clock = FakeClock()
    err = WorkerCrashed("died again")
    svc = ScriptedService([chunk(0, "He"), err])
    retry = make(svc, clock, attempts=3)
    with pytest.raises(WorkerCrashed) as info:
        asyncio.run(drain(retry.call(Call("generate", {}, "tiny", buffered=True))))
    assert info.value is err and svc.calls == 3 and retry.stats["gave_up"] == 1
