"""Prompt-cache reuse and speculative decoding in the worker, real tiny model."""

import asyncio

import pytest

from krmlx import Request, load_questions
from krmlx.engine import Engine
from krmlx.errors import BadRequest, ConfigError
from krmlx.models import parse_name
from krmlx.stack import StackConfig
from krmlx.worker.prompt_cache import PromptCacheConfig

SYSTEM = " ".join(f"Rule {i}: answer briefly about topic {i}." for i in range(30))


def run(coro):
    return asyncio.run(coro)


async def _answers(cfg, reqs):
    async with Engine("tiny", cfg) as eng:
        outs = [await eng.complete(r) for r in reqs]
        return outs, await eng.client.worker_stats()


def test_prompt_cache_reuses_shared_prefix_with_identical_outputs(tiny_path):
    qs = load_questions()[0][:6]
    reqs = [Request(q.question, system=SYSTEM, max_tokens=10) for q in qs] + \
           [Request(qs[-1].question, system=SYSTEM, max_tokens=10)]  # an exact repeat
    plain, _ = run(_answers(StackConfig(), reqs))
    cached, stats = run(_answers(StackConfig.phases(prompt_cache=PromptCacheConfig(max_entries=4)), reqs))
    assert [o.token_ids for o in cached] == [o.token_ids for o in plain]
    hits = [o.extra["cached_prompt_tokens"] for o in cached]
    assert hits[0] == 0 and all(h > 200 for h in hits[1:])
    assert hits[-1] == cached[-1].usage.prompt_tokens - 1  # whole prompt cached but its last token
    pc = stats["prompt_cache"]
    assert pc["hits"] == 6 and pc["hit_tokens"] == sum(hits) and pc["entries"] <= 4


@pytest.mark.parametrize("draft", ["tiny", "tiny-draft1"])
def test_speculative_decoding_keeps_greedy_output(draft, tiny_path):
    reqs = [Request(q.question, max_tokens=20) for q in load_questions()[0][:3]]
    plain, _ = run(_answers(StackConfig(), reqs))
    spec, _ = run(_answers(StackConfig.phases(draft=draft), reqs))
    assert [o.token_ids for o in spec] == [o.token_ids for o in plain]
    accepted = [o.extra["draft_accepted"] for o in spec]
    checked = [o.extra["draft_checked"] for o in spec]
    assert checked == [o.usage.output_tokens for o in spec]
    if draft == "tiny":  # the target as its own draft agrees by construction
        assert sum(accepted) >= 0.5 * sum(checked)


def test_incompatible_draft_and_bad_configs(tmp_path, tiny_path):
    assert parse_name("tiny-draft1").draft_layers == 1 and parse_name("tiny-draft4") is None
    with pytest.raises(ConfigError, match="draft"):
        StackConfig.phases(draft="tiny", scheduler="batched")

    async def go():
        async with Engine("tiny") as eng:
            return await eng.call("load_model", {"draft": "null"}, "tiny")

    with pytest.raises(BadRequest, match="not compatible"):
        run(go())
