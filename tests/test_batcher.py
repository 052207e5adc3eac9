"""Batcher: unit tests around a recording inner service, plus one test on the real worker."""

from __future__ import annotations

import asyncio

import pytest

from krmlx.clock import FakeClock
from krmlx.errors import CallTimeout, ConfigError, TransientError
from krmlx.service import Call, unary
from krmlx.stages.batcher import Batcher, BatcherConfig
from krmlx.types import Chunk, Done


class RecordingService:
    """The inner service: records every call; batch methods answer item by item
    (tokenize -> code points of the text); ``error`` makes batch calls fail."""

    def __init__(self, error: BaseException | None = None):
        self.calls: list[Call] = []
        self.error = error

    def call(self, call: Call):
        self.calls.append(call)
        return self._answer(call)

    async def _answer(self, call: Call):
        await asyncio.sleep(0)
        if self.error is not None:
            raise self.error
        if call.method == "batch_tokenize":
            yield [[ord(c) for c in text] for text in call.params["texts"]]
        elif call.method == "batch_check_draft":
            yield [{"draft": d, "target": call.model} for d in call.params["drafts"]]
        elif call.method == "generate":
            yield Chunk(1, "a", 0, 0.0)
            yield Chunk(2, "b", 1, 0.0)
            yield Done("length", 3)
        else:
            yield {"method": call.method, "params": call.params}

    async def aclose(self):
        pass


class GateSleep:
    """An injected sleep that records its argument and waits until released."""

    def __init__(self):
        self.sleeps: list[float] = []
        self.gate = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await self.gate.wait()


def tok(text: str, model: str = "m", **params) -> Call:
    return Call("tokenize", {"text": text, **params}, model)


def codes(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_25_concurrent_calls_make_3_batches_each_caller_gets_its_own_item():
    async def main():
        clock, inner = FakeClock(), RecordingService()
        b = Batcher(inner, BatcherConfig(max_batch=10), clock=clock, sleep=clock.sleep)
        texts = [f"text {i}" for i in range(25)]
        results = await asyncio.gather(*(unary(b, tok(t)) for t in texts))
        assert results == [codes(t) for t in texts]
        assert [c.method for c in inner.calls] == ["batch_tokenize"] * 3
        assert [c.params["texts"] for c in inner.calls] == [texts[:10], texts[10:20], texts[20:]]
        assert b.stats["batches"] == 3 and b.stats["items"] == 25
        assert b.stats["max_batch_size"] == 10
        assert b.stats["mean_batch_size"] == pytest.approx(25 / 3)
        assert clock.sleeps == [0.002]  # full groups went before their timer even started

    asyncio.run(main())


def test_groups_never_mix_models_or_special_token_settings():
    async def main():
        clock, inner = FakeClock(), RecordingService()
        b = Batcher(inner, clock=clock, sleep=clock.sleep)
        calls = [tok("x", "a"), tok("y", "b"), tok("z", "a", add_special_tokens=True),
                 tok("w", "a"), Call("check_draft", {"draft": "d1"}, "a"),
                 Call("check_draft", {"draft": "d2"}, "b")]
        results = await asyncio.gather(*(unary(b, c) for c in calls))
        assert results[:4] == [codes("x"), codes("y"), codes("z"), codes("w")]
        assert results[4:] == [{"draft": "d1", "target": "a"}, {"draft": "d2", "target": "b"}]
        got = sorted((c.method, c.model, str(c.params)) for c in inner.calls)
        assert got == sorted([
            ("batch_tokenize", "a", str({"texts": ["x", "w"]})),
            ("batch_tokenize", "b", str({"texts": ["y"]})),
            ("batch_tokenize", "a", str({"texts": ["z"], "add_special_tokens": True})),
            ("batch_check_draft", "a", str({"drafts": ["d1"]})),
            ("batch_check_draft", "b", str({"drafts": ["d2"]})),
        ])

    asyncio.run(main())


def test_group_is_held_for_the_window_unless_full():
    async def main():
        clock, inner, sleep = FakeClock(), RecordingService(), GateSleep()
        b = Batcher(inner, BatcherConfig(window_ms=3.0, max_batch=4), clock=clock, sleep=sleep)
        tasks = [asyncio.create_task(unary(b, tok(t))) for t in "abc"]
        for _ in range(5):
            await asyncio.sleep(0)
        assert inner.calls == [] and sleep.sleeps == [0.003]  # held, one timer for the group
        clock.advance(0.003)
        sleep.gate.set()
        assert await asyncio.gather(*tasks) == [codes(t) for t in "abc"]
        assert len(inner.calls) == 1 and b.stats["hold_ms_mean"] == pytest.approx(3.0)
        # A full group goes at once, without waiting for its timer.
        sleep.gate.clear()
        full = await asyncio.wait_for(asyncio.gather(*(unary(b, tok(t)) for t in "defg")), 1.0)
        assert full == [codes(t) for t in "defg"] and len(inner.calls) == 2

    asyncio.run(main())


def test_a_batch_error_reaches_every_caller_in_it():
    async def main():
        clock = FakeClock()
        b = Batcher(RecordingService(error=TransientError("boom")), clock=clock, sleep=clock.sleep)
        results = await asyncio.gather(*(unary(b, tok(t)) for t in "abcde"), return_exceptions=True)
        assert all(isinstance(r, TransientError) for r in results)
        assert b.stats["batch_errors"] == 1

    asyncio.run(main())


def test_a_cancelled_or_timed_out_waiter_leaves_the_batch_and_harms_nobody():
    async def main():
        clock, inner, sleep = FakeClock(), RecordingService(), GateSleep()
        b = Batcher(inner, clock=clock, sleep=sleep)
        tasks = [asyncio.create_task(unary(b, tok(t))) for t in "abc"]
        late = Call("tokenize", {"text": "t"}, "m", timeout_s=0.01)
        with pytest.raises(CallTimeout):
            await unary(b, late)
        tasks[1].cancel()
        await asyncio.sleep(0)
        sleep.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert results[0] == codes("a") and results[2] == codes("c")
        assert isinstance(results[1], asyncio.CancelledError)
        assert [c.params["texts"] for c in inner.calls] == [["a", "c"]]
        # A group whose callers all left sends nothing.
        sleep.gate.clear()
        lone = asyncio.create_task(unary(b, tok("z")))
        await asyncio.sleep(0)
        lone.cancel()
        sleep.gate.set()
        await asyncio.sleep(0.01)
        assert len(inner.calls) == 1 and b.stats["items"] == 2

    asyncio.run(main())


def test_other_calls_pass_through_untouched():
    async def main():
        clock, inner = FakeClock(), RecordingService()
        b = Batcher(inner, clock=clock, sleep=clock.sleep)
        gen = Call("generate", {"prompt": "hi", "max_tokens": 2}, "m")
        items = [x async for x in b.call(gen)]
        assert items == [Chunk(1, "a", 0, 0.0), Chunk(2, "b", 1, 0.0), Done("length", 3)]
        odd = [Call("detokenize", {"ids": [1]}, "m"), Call("tokenize", {"text": 3}, "m"),
               Call("tokenize", {"text": "x", "faults": {}}, "m"), Call("tokenize", {"text": "x"})]
        for call in odd:
            await unary(b, call)
        assert inner.calls == [gen, *odd]  # the very same Call objects, unbatched
        assert b.stats["passthrough"] == 5 and b.stats["batches"] == 0

    asyncio.run(main())


@pytest.mark.parametrize("kwargs, field", [
    ({"window_ms": -1}, "window_ms"), ({"window_ms": 10.5}, "window_ms"),
    ({"max_batch": 0}, "max_batch"), ({"max_batch": 2.5}, "max_batch"),
    ({"adaptive": "yes"}, "adaptive"), ({"adaptive_low": (1, 0, 4.0)}, "adaptive_low.max_batch"),
    ({"adaptive_high": (1, 20, 1.0)}, "adaptive_high"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        BatcherConfig(**kwargs)


def test_adaptive_limits_interpolate_between_the_table_points():
    cfg = BatcherConfig(adaptive=True)
    assert cfg.limits(0) == cfg.limits(1) == (10, 4.0)
    assert cfg.limits(40) == cfg.limits(100) == (20, 1.0)
    batch, window = cfg.limits(20)
    assert batch == 15 and window == pytest.approx(4.0 - 3.0 * 19 / 39)
    assert BatcherConfig(window_ms=5, max_batch=3).limits(50) == (3, 5)


def test_real_worker_batched_ids_equal_unbatched_with_fewer_worker_calls():
    from krmlx.worker.client import WorkerClient

    texts = [f"Question {i}: what is {i} times {i + 1}? Üñíçødé {'x' * i}" for i in range(20)]

    async def main():
        async with WorkerClient() as client:
            await unary(client, Call("load_model", {}, "tiny"))
            direct = [await unary(client, tok(t, "tiny")) for t in texts]
            b = Batcher(client, BatcherConfig(window_ms=2.0, max_batch=10))
            calls_before = client.stats["calls"]
            batched = await asyncio.gather(*(unary(b, tok(t, "tiny")) for t in texts))
            assert batched == direct
            assert client.stats["calls"] - calls_before == b.stats["batches"] == 2
            assert b.stats["items"] == 20
            drafts = await asyncio.gather(*(unary(b, Call("check_draft", {"draft": d}, "tiny"))
                                            for d in ("tiny", "nope")))
            assert [d["compatible"] for d in drafts] == [True, False]

    asyncio.run(main())
