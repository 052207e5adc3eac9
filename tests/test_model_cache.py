"""ModelCache and SingleModel against the real worker (tiny, tiny@1, tiny@2, tiny@3).

One WorkerClient serves the whole module. Its pipes belong to the event loop that
started it, so the module fixture owns that loop and each test runs its coroutine on it
(``bench.run(main())``) instead of ``asyncio.run``; every test starts with no model loaded.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from krmlx.errors import ConfigError, ModelError, UnknownModel
from krmlx.models import make_model, model_bytes
from krmlx.service import Call, unary
from krmlx.stages.model_cache import ModelCache, ModelCacheConfig, SingleModel
from krmlx.worker.client import WorkerClient

MODELS = ("tiny", "tiny@1", "tiny@2", "tiny@3")
HELLO = [2645, 356, 2987, 1869]  # "hello world" in the shared BPE tokenizer


class Recorder:
    """Forwards to the shared client and logs (method, model) of each call as it starts."""

    def __init__(self, inner):
        self.inner = inner
        self.log: list[tuple[str, str | None]] = []

    def call(self, call: Call):
        self.log.append((call.method, call.model))
        return self.inner.call(call)

    def count(self, method: str, model: str | None = None) -> int:
        return sum(m == method and (model is None or x == model) for m, x in self.log)

    async def aclose(self):
        pass  # the module fixture closes the shared client


class Bench:
    def __init__(self):
        for name in MODELS:
            make_model(name)
        self.loop = asyncio.new_event_loop()
        self.client = WorkerClient()
        self.run(self.client.start())

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    async def resident(self) -> list[str]:
        return sorted(m["model"] for m in await unary(self.client, Call("list_models")))

    async def unload_all(self) -> None:
        for name in await self.resident():
            with contextlib.suppress(UnknownModel):
                await unary(self.client, Call("unload_model", {}, name))

    def cancel_leftovers(self, keep: set) -> None:
        """Cancel tasks a failed test left on the shared loop, so failures don't cascade."""
        async def cancel():
            left = asyncio.all_tasks() - keep - {asyncio.current_task()}
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)

        self.run(cancel())

    def close(self):
        self.run(self.client.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def shared():
    bench = Bench()
    yield bench
    bench.close()


@pytest.fixture
def bench(shared):
    keep = asyncio.all_tasks(shared.loop)  # the client's reader tasks
    shared.run(shared.unload_all())
    yield shared
    shared.cancel_leftovers(keep)


def tok(model: str) -> Call:
    return Call("tokenize", {"text": "hello world"}, model)


def test_lru_eviction_order_and_hit_miss_counts(bench):
    async def main():
        rec = Recorder(bench.client)
        cache = ModelCache(rec, ModelCacheConfig(max_models=2))
        for name in ("tiny@1", "tiny@2", "tiny@1", "tiny@3"):
            assert await unary(cache, tok(name)) == HELLO
        assert await bench.resident() == ["tiny@1", "tiny@3"]  # tiny@2 was least recently used
        assert cache.stats["resident"] == ["tiny@1", "tiny@3"]
        await unary(cache, tok("tiny@2"))
        assert await bench.resident() == ["tiny@2", "tiny@3"]
        assert cache.stats["resident"] == ["tiny@3", "tiny@2"]  # MRU last
        assert [x for m, x in rec.log if m == "unload_model"] == ["tiny@2", "tiny@1"]
        st = cache.stats
        assert (st["hits"], st["misses"], st["loads"], st["evictions"]) == (1, 4, 4, 2)
        assert st["resident_bytes"] == 2 * 6033920 and st["load_ms_mean"] > 0
        # Warmup: one short generate per load, before the model counts as resident.
        assert rec.count("generate") == 4 and st["warmup_ms_total"] > 0

    bench.run(main())


def test_byte_budget_evicts_and_an_oversized_model_fails_clearly(bench):
    async def main():
        rec = Recorder(bench.client)
        budget = 2 * model_bytes(make_model("tiny")) + 1000
        cache = ModelCache(rec, ModelCacheConfig(max_models=3, budget_bytes=budget, warmup=False))
        for name in ("tiny@1", "tiny@2", "tiny@3"):
            await unary(cache, tok(name))
        assert await bench.resident() == ["tiny@2", "tiny@3"] and cache.stats["evictions"] == 1
        small = model_bytes(make_model("small"))
        with pytest.raises(ModelError) as err:
            await unary(cache, tok("small"))
        assert "'small'" in str(err.value) and str(small) in str(err.value)
        assert str(budget) in str(err.value)
        assert await bench.resident() == ["tiny@2", "tiny@3"]  # no eviction storm
        assert rec.count("unload_model") == 1 and rec.count("load_model", "small") == 0

    bench.run(main())


def test_a_model_with_a_stream_in_flight_is_never_evicted(bench):
    async def main():
        rec = Recorder(bench.client)
        cache = ModelCache(rec, ModelCacheConfig(max_models=1, warmup=False))
        stream = cache.call(Call("generate", {"prompt": "tell me", "max_tokens": 2000}, "tiny@1"))
        try:
            await stream.__anext__()  # tiny@1 is now resident with a request in flight
            b = asyncio.create_task(unary(cache, tok("tiny@2")))
            c = asyncio.create_task(unary(cache, tok("tiny@3")))
            await asyncio.sleep(0.3)
            # Ignoring the refcount would have sent unload_model(tiny@1) by now.
            assert rec.count("unload_model") == 0 and not b.done() and not c.done()
            assert await bench.resident() == ["tiny@1"] and cache.stats["waits"] >= 1
        finally:
            await stream.aclose()  # early close releases the ref (and cancels the generation)
        assert await asyncio.wait_for(asyncio.gather(b, c), 10) == [HELLO] * 2
        assert [x for m, x in rec.log if m == "unload_model"] == ["tiny@1", "tiny@2"]
        assert await bench.resident() == ["tiny@3"]

    bench.run(main())


def test_pinned_models_are_skipped_by_eviction(bench):
    async def main():
        cache = ModelCache(Recorder(bench.client),
                           ModelCacheConfig(max_models=2, warmup=False, pinned=("tiny@1",)))
        for name in ("tiny@1", "tiny@2", "tiny@3"):
            await unary(cache, tok(name))
        assert await bench.resident() == ["tiny@1", "tiny@3"]  # LRU tiny@1 kept: pinned
        cache.unpin("tiny@1")
        cache.pin("tiny@3")
        await unary(cache, tok("tiny@2"))
        assert await bench.resident() == ["tiny@2", "tiny@3"]
        cache.pin("tiny@2")  # both resident models pinned: nothing can make room
        with pytest.raises(ModelError, match="pinned"):
            await cache.ensure("tiny@1")
        assert await bench.resident() == ["tiny@2", "tiny@3"]

    bench.run(main())


def test_concurrent_requests_for_a_missing_model_share_one_load(bench):
    async def main():
        rec = Recorder(bench.client)
        cache = ModelCache(rec, ModelCacheConfig(max_models=2))
        results = await asyncio.gather(*(unary(cache, tok("tiny@2")) for _ in range(8)))
        assert results == [HELLO] * 8
        assert rec.count("load_model") == 1 and cache.stats["loads"] == 1
        assert cache.stats["misses"] == 8 and cache.stats["hits"] == 0
        errors = await asyncio.gather(*(unary(cache, tok("no-such-model")) for _ in range(3)),
                                      return_exceptions=True)
        assert all(isinstance(e, UnknownModel) for e in errors) and cache.stats["evictions"] == 0

    bench.run(main())


def test_explicit_load_and_unload_go_through_the_bookkeeping(bench):
    async def main():
        cache = ModelCache(Recorder(bench.client), ModelCacheConfig(warmup=False))
        first = await unary(cache, Call("load_model", {}, "tiny@1"))
        again = await unary(cache, Call("load_model", {}, "tiny@1"))
        assert first["cached"] is False and again["cached"] is True and first["bytes"] > 0
        assert await unary(cache, Call("unload_model", {}, "tiny@1")) == {
            "model": "tiny@1", "freed_bytes": first["bytes"]}
        assert cache.stats["resident"] == [] and await bench.resident() == []
        assert await unary(cache, Call("ping")) is not None  # no model: passes through

    bench.run(main())


def test_single_model_switches_after_in_flight_calls_finish(bench):
    async def main():
        rec = Recorder(bench.client)
        single = SingleModel(rec)
        for name in ("tiny@1", "tiny@1", "tiny@2", "tiny@1"):
            await unary(single, tok(name))
        assert await bench.resident() == ["tiny@1"]
        assert single.stats["switches"] == 3 and single.stats["unloads"] == 2
        assert [(m, x) for m, x in rec.log if m.endswith("load_model")] == [
            ("load_model", "tiny@1"), ("unload_model", "tiny@1"), ("load_model", "tiny@2"),
            ("unload_model", "tiny@2"), ("load_model", "tiny@1")]
        stream = single.call(Call("generate", {"prompt": "go", "max_tokens": 2000}, "tiny@1"))
        try:
            await stream.__anext__()
            other = asyncio.create_task(unary(single, tok("tiny@3")))
            await asyncio.sleep(0.2)
            assert not other.done() and rec.count("unload_model") == 2
        finally:
            await stream.aclose()
        assert await asyncio.wait_for(other, 10) == HELLO
        assert await bench.resident() == ["tiny@3"] and single.stats["load_ms_total"] > 0

    bench.run(main())


@pytest.mark.parametrize("kwargs, field", [
    ({"max_models": 0}, "max_models"), ({"budget_bytes": 0}, "budget_bytes"),
    ({"budget_bytes": -5}, "budget_bytes"), ({"warmup_tokens": 0}, "warmup_tokens"),
    ({"pinned": ["tiny"]}, "pinned"), ({"max_models": 1, "pinned": ("a", "b")}, "pinned"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ModelCacheConfig(**kwargs)
    assert ModelCacheConfig(budget_bytes=None).budget_bytes is None
