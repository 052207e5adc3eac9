"""Every stage through the same checks, against the real worker and tiny model:
transparent alone on a healthy worker, errors propagate, cancellation reaches the worker,
stats filled in. Plus: each stage wraps a user-written service."""

import asyncio

import pytest

from krmlx.errors import BadRequest
from krmlx.service import Call, unary
from krmlx.stages.batcher import Batcher, BatcherConfig
from krmlx.stages.breaker import BreakerPolicy, CircuitBreaker
from krmlx.stages.framer import StreamFramer
from krmlx.stages.model_cache import ModelCache, ModelCacheConfig, SingleModel
from krmlx.stages.retry import Retry, RetryPolicy
from krmlx.types import Chunk, Done
from krmlx.worker.client import WorkerClient

STAGES = {
    "batcher": lambda s: Batcher(s, BatcherConfig(window_ms=1.0)),
    "model_cache": lambda s: ModelCache(s, ModelCacheConfig(max_models=2, warmup=False)),
    "single_model": lambda s: SingleModel(s),
    "retry": lambda s: Retry(s, RetryPolicy(attempts=2, backoff_initial_s=0.001)),
    "breaker": lambda s: CircuitBreaker(s, BreakerPolicy(failure_threshold=3)),
    "framer": lambda s: StreamFramer(s),
}
GEN = Call("generate", {"prompt": "How do bees make honey?", "max_tokens": 12}, "tiny")
TOK = Call("tokenize", {"text": "How do bees make honey?"}, "tiny")


async def _drain(service, call):
    return [item async for item in service.call(call)]


class _Shared:
    """A worker shared by the parametrized cases, closed by a stage's aclose never."""

    def __init__(self, client):
        self.client = client

    def call(self, call):
        return self.client.call(call)

    async def aclose(self):
        pass


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_contract(name, tiny_path):
    async def go():
        async with WorkerClient() as client:
            await unary(client, Call("load_model", {}, "tiny"))
            plain_gen = await _drain(client, GEN)
            plain_tok = await unary(client, TOK)
            stage = STAGES[name](_Shared(client))
            # transparent
            gen = await _drain(stage, GEN)
            tok = await unary(stage, TOK)
            # errors propagate as the documented types
            with pytest.raises(BadRequest, match="text"):
                await unary(stage, Call("tokenize", {"text": 3}, "tiny"))
            # cancellation reaches the worker
            it = stage.call(Call("generate", {"prompt": "bees", "max_tokens": 3000}, "tiny"))
            await it.__anext__()
            await it.aclose()
            await asyncio.sleep(0.3)
            s1 = await client.worker_stats()
            await asyncio.sleep(0.2)
            s2 = await client.worker_stats()
            await stage.aclose()
            return plain_gen, plain_tok, gen, tok, s1, s2, stage.stats

    plain_gen, plain_tok, gen, tok, s1, s2, stats = asyncio.run(go())
    strip = lambda items: [(c.token_id, c.text) if isinstance(c, Chunk) else c for c in items]  # noqa: E731
    assert strip(gen) == strip(plain_gen) and isinstance(gen[-1], Done)
    assert tok == plain_tok
    assert s1["active_streams"] == 0 and s2["tokens_out"] == s1["tokens_out"]
    assert stats and any(v for v in stats.values() if isinstance(v, (int, float)))


class UserService:
    """A user's own service: no worker, no mlx. Echoes tokenize, streams fixed chunks."""

    def __init__(self):
        self.calls = []

    def call(self, call):
        self.calls.append(call.method)
        return self._run(call)

    async def _run(self, call):
        if call.method == "generate":
            for i in range(3):
                yield Chunk(i, f"t{i}", i, 0.0)
            yield Done("length", 1)
        elif call.method == "batch_tokenize":
            yield [[len(t)] for t in call.params["texts"]]
        elif call.method in ("load_model", "unload_model"):
            yield {"model": call.model, "bytes": 10}
        else:
            yield [len(call.params.get("text", ""))]

    async def aclose(self):
        pass


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_wraps_a_user_service(name):
    async def go():
        user = UserService()
        stage = STAGES[name](user)
        gen = await _drain(stage, Call("generate", {"prompt": "x", "max_tokens": 3}, "m"))
        tok = await asyncio.gather(*(unary(stage, Call("tokenize", {"text": "abcd"[:i + 1]}, "m")) for i in range(4)))
        await stage.aclose()
        return gen, tok, user.calls

    gen, tok, calls = asyncio.run(go())
    assert [c.text for c in gen[:-1]] == ["t0", "t1", "t2"] and isinstance(gen[-1], Done)
    assert tok == [[1], [2], [3], [4]]
    if name == "batcher":
        assert "batch_tokenize" in calls and "tokenize" not in calls
