"""Engine against DirectEngine on the real tiny model, and the stack's configuration."""

import asyncio

import pytest

from krmlx import DirectEngine, Request, load_questions
from krmlx.engine import Engine
from krmlx.errors import ConfigError
from krmlx.stack import FramerConfig, StackConfig, build_stack
from krmlx.stages.batcher import BatcherConfig
from krmlx.stages.model_cache import ModelCacheConfig
from krmlx.stages.retry import RetryPolicy


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def direct_outputs(tiny_path):
    questions = load_questions()[0]

    async def go():
        async with DirectEngine(tiny_path) as eng:
            return [await eng.complete(Request(q.question, max_tokens=16, id=q.id)) for q in questions]

    return run(go())


@pytest.mark.parametrize("config", [StackConfig(), StackConfig(codec="msgpack"), StackConfig.all(
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


@pytest.mark.parametrize("make, field", [
    (lambda: StackConfig(codec="xml"), "codec"),
    (lambda: StackConfig(scheduler="magic"), "scheduler"),
    (lambda: StackConfig(batcher=RetryPolicy()), "batcher"),
    (lambda: StackConfig.phases(["turbo"]), "turbo"),
    (lambda: BatcherConfig(window_ms=-1), "window_ms"),
    (lambda: ModelCacheConfig(budget_bytes=0), "budget_bytes"),
    (lambda: FramerConfig(window=-2), "framer.window"),
    (lambda: FramerConfig(codec="xml"), "framer.codec"),
    (lambda: RetryPolicy(attempts=0), "attempts"),
])
def test_invalid_config_names_the_field(make, field):
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
