"""Engine against DirectEngine on the real tiny model, and the stack's configuration."""

import asyncio

import pytest

from krmlx import DirectEngine, Request, load_questions
from krmlx.engine import Engine
from krmlx.errors import ConfigError
from krmlx.service import Stage
from krmlx.stack import StackConfig, build_stack
from krmlx.stages import (
    BatcherConfig,
    BreakerPolicy,
    FramerConfig,
    ModelCacheConfig,
    RetryPolicy,
    SingleModelConfig,
)
from krmlx.worker.config import WorkerConfig


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def direct_outputs(tiny_path):
    questions = load_questions()[0]

    async def go():
        async with DirectEngine(tiny_path) as eng:
            return [await eng.complete(Request(q.question, max_tokens=16, id=q.id)) for q in questions]

    return run(go())


@pytest.mark.parametrize("config", [StackConfig(), StackConfig(worker=WorkerConfig(codec="msgpack")), StackConfig.all(
    framer=FramerConfig(coalesce_tokens=4, coalesce_ms=5.0, window=8))], ids=["phase0-json", "phase0-msgpack", "all"])
def test_50_questions_match_direct_token_for_token(config, direct_outputs, tiny_path):
    questions = load_questions()[0]

    async def go():
        async with Engine("tiny", config) as eng:
            outs = [await eng.complete(Request(q.question, max_tokens=16, id=q.id)) for q in questions]
            return outs, eng.stats()

    outs, stats = run(go())
    for want, got in zip(direct_outputs, outs, strict=True):
        assert got.token_ids == want.token_ids, want.request_id
        assert got.text == want.text and got.finish_reason == want.finish_reason
        assert got.usage == want.usage
        assert got.ttft_ms > 0 and len(got.token_times_s) == got.usage.output_tokens
        # the worker's own clock sits inside the caller's: it got the request after the
        # caller sent it and made the first token before the caller read it
        assert 0 < got.extra["worker_ttft_ms"] < got.ttft_ms
        assert 0 <= got.extra["worker_decode_ms"] < got.e2e_ms - got.extra["worker_ttft_ms"]
    assert stats["client"]["calls"] >= 51


def test_stack_order_and_labels():
    cfg = StackConfig.all()
    assert cfg.label == "all" and StackConfig().label == "phase0"
    assert StackConfig.phases(["batching", "framing"]).label == "batching+framing"
    assert cfg.wire_codec == "msgpack" and StackConfig().wire_codec == "json"

    class Dummy:
        def call(self, call):  # pragma: no cover - never called
            raise AssertionError

        async def aclose(self):
            pass

    top, stages = build_stack(cfg, Dummy())
    assert [s.name for s in stages] == ["retry", "breaker", "model_cache", "batcher", "framer"]
    assert top is stages[0]
    _, stages0 = build_stack(StackConfig(), Dummy())
    assert [s.name for s in stages0] == ["single_model"]
    # without a model cache, SingleModel goes where the cache would: above the batcher
    _, stages1 = build_stack(StackConfig.phases(["batching", "retry"]), Dummy())
    assert [s.name for s in stages1] == ["retry", "breaker", "single_model", "batcher"]
    assert StackConfig() == StackConfig.phases() == StackConfig(layers=[SingleModelConfig()])
    assert StackConfig.phases(scheduler="batched").worker.scheduler == "batched"
    assert StackConfig.all(breaker=None).find(BreakerPolicy) is None
    assert cfg.with_layer(BatcherConfig(window_ms=5)).find(BatcherConfig).window_ms == 5
    assert cfg.to_dict()["layers"][0] == {"layer": "retry", **cfg.to_dict()["layers"][0]}
    assert cfg.to_dict()["worker"]["framing"]["codec"] == "msgpack"


class CountCalls(Stage):
    """A user's own stage: counts every call and every streamed item passing through."""

    name = "count_calls"

    def __init__(self, inner):
        super().__init__(inner)
        self.stats = {"calls": 0, "items": 0}
        self.methods: list[str] = []

    async def _relay(self, call):
        it = self.inner.call(call)
        try:
            async for item in it:
                self.stats["items"] += 1
                yield item
        finally:
            await it.aclose()

    def call(self, call):
        self.stats["calls"] += 1
        self.methods.append(call.method)
        return self._relay(call)


def test_a_users_stage_between_two_krmlx_stages_sees_every_call(tiny_path):
    """A user's layer between the model cache and the batcher of a live Engine: every call
    the cache sends down passes through it (the load, the warm-up, each request), and
    greedy outputs are those of direct."""
    seen: list[CountCalls] = []

    def count_calls(inner):
        stage = CountCalls(inner)
        seen.append(stage)
        return stage

    cfg = StackConfig(layers=[RetryPolicy(), BreakerPolicy(), ModelCacheConfig(), count_calls,
                              BatcherConfig()])
    assert cfg.label == "batching+caching+retry+count_calls"
    req = Request("Why is the sky blue?", max_tokens=8)

    async def go():
        async with DirectEngine(tiny_path) as d:
            want = await d.complete(req)
        async with Engine("tiny", cfg) as eng:
            got = await eng.complete(req)
            ids = await asyncio.gather(*(eng.tokenize(f"text {i}") for i in range(5)))
            return want, got, ids, eng.stats(), [s.name for s in eng.stages]

    want, got, ids, stats, names = run(go())
    assert names == ["retry", "breaker", "model_cache", "count_calls", "batcher"]
    assert got.token_ids == want.token_ids and len(ids) == 5
    (stage,) = seen
    # load_model, the cache's warm-up generate, the request, and the 5 tokenize calls
    assert stage.methods.count("load_model") == 1 and stage.methods.count("tokenize") == 5
    assert stage.methods.count("generate") == 2
    assert stats["count_calls"]["calls"] == len(stage.methods) == 8
    # every streamed token of the request and of the warm-up passed through it, plus a
    # Done per stream and one value per unary call
    assert stats["count_calls"]["items"] >= got.usage.output_tokens + 2 + 6


@pytest.mark.parametrize("make, field", [
    (lambda: StackConfig.phases(codec="xml"), "codec"),
    (lambda: StackConfig.phases(scheduler="magic"), "scheduler"),
    (lambda: StackConfig.phases(batcher=RetryPolicy()), "batcher"),
    (lambda: StackConfig.phases(["turbo"]), "turbo"),
    (lambda: StackConfig.phases(turbo=True), "turbo"),
    (lambda: StackConfig(worker=WorkerConfig(timeout_s=-1)), "timeout_s"),
    (lambda: StackConfig(worker=WorkerConfig(prompt_cache={"max_entries": 2})), "prompt_cache"),
    (lambda: StackConfig(worker={"scheduler": "batched"}), "worker"),
    (lambda: StackConfig(layers=[BatcherConfig]), "instance"),
    (lambda: StackConfig(layers=[3]), r"layers\[0\]"),
    (lambda: StackConfig(layers=[BatcherConfig(), BatcherConfig()]), "more than once"),
    (lambda: StackConfig(layers=[BreakerPolicy(), RetryPolicy()]), "above BreakerPolicy"),
    (lambda: StackConfig(layers=[BatcherConfig(), ModelCacheConfig()]), "above BatcherConfig"),
    (lambda: StackConfig(layers=[ModelCacheConfig(), SingleModelConfig()]), "one model layer"),
    (lambda: StackConfig(layers=[FramerConfig()], worker=WorkerConfig(framing=FramerConfig(window=3))),
     "worker.framing"),
    (lambda: BatcherConfig(window_ms=-1), "window_ms"),
    (lambda: ModelCacheConfig(budget_bytes=0), "budget_bytes"),
    (lambda: FramerConfig(window=-2), "framer.window"),
    (lambda: FramerConfig(codec="xml"), "framer.codec"),
    (lambda: RetryPolicy(attempts=0), "attempts"),
])
def test_invalid_config_names_the_field(make, field):
    """Each bad setting fails when the config is made, naming what is wrong."""
    with pytest.raises(ConfigError, match=field):
        make()


def test_engine_tokenize_and_unknown_model(tiny_path):
    async def go():
        async with DirectEngine(tiny_path) as d:
            want = await d.tokenize("Why do leaves change color?")
        async with Engine("tiny", StackConfig.phases(["batching"])) as eng:
            got = await eng.tokenize("Why do leaves change color?")
            many = await asyncio.gather(*(eng.tokenize(f"question {i}") for i in range(12)))
            return want, got, many, eng.stats()

    want, got, many, stats = run(go())
    assert got == want and len(many) == 12
    assert stats["batcher"]["items"] >= 13 and stats["batcher"]["batches"] < 13
