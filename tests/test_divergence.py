"""krmlx.divergence: the first differing token of two answers and the reference model's
top-2 logit gap there, on a real mlx-lm model (the tiny preset)."""

import asyncio

import pytest

from krmlx import DirectEngine, Request, models
from krmlx.divergence import divergences, first_difference, format_divergences, logit_gap
from krmlx.gen import encode_prompt
from krmlx.questions import load_questions


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2
    assert first_difference([], [4]) == 0


def record(engine, ids, rid, trial=0):
    return {"target": engine, "request_id": rid, "trial": trial, "ok": True,
            "output_ids": list(ids), "output_text": ""}


def test_a_forced_divergence_is_found_with_its_gap(tiny_path):
    model, tok = models.load(tiny_path)
    q = load_questions()[0][0]
    req = Request(q.question, max_tokens=8, id=q.id)

    async def greedy():
        async with DirectEngine(tiny_path) as eng:
            return list((await eng.complete(req)).token_ids)

    ref = asyncio.run(greedy())
    prompt = encode_prompt(tok, req.to_params())
    step = logit_gap(model, tok, prompt, ref, 3)
    assert step["top1"] == ref[3] and step["top2_gap"] >= 0  # the prefill agrees with the decode
    other = ref[:3] + [step["top2"]] + ref[4:]
    doc = {"config": {"params": {"max_tokens": 8}},
           "records": [record("direct", ref, q.id), record("peer", other, q.id),
                       record("peer", ref, q.id, trial=1), record("same", ref, q.id),
                       record("peer", ref, "not-a-question")]}
    rows, summary = divergences(doc, model, tok)
    assert summary["same"] == {"compared": 1, "identical": 1, "diverged": 0, "skipped": 0}
    assert summary["peer"] == {"compared": 1, "identical": 0, "diverged": 1, "skipped": 0}
    (row,) = rows
    assert (row["target"], row["position"], row["reference_token"], row["other"]) == \
        ("peer", 3, ref[3], step["top2"])
    assert row["other_rank"] == 1 and row["other_gap"] == pytest.approx(row["top2_gap"])
    text = format_divergences(rows, summary, "direct")
    assert "peer vs direct: identical 0/1" in text and f"{q.id} @ token 3" in text
    with pytest.raises(ValueError, match="reference target 'nope' is not in the results"):
        divergences(doc, model, tok, reference="nope")


def test_concurrency_wave_ids_map_back_to_their_questions():
    from krmlx.divergence import question_of

    qs = load_questions()[0]
    waves = {"config": {"workload": "concurrency", "params": {"prompts": "questions"}}}
    assert question_of(waves, "c64-051", qs) == qs[1].question
    assert question_of(waves, qs[7].id, qs) == qs[7].question
    synthetic = {"config": {"workload": "concurrency", "params": {"prompts": "synthetic"}}}
    assert question_of(synthetic, "c64-051", qs) is None
    assert question_of({"config": {"workload": "baseline"}}, "c2-001", qs) is None


def test_an_answer_known_as_text_is_compared_as_text(tiny_path):
    """A server's answer comes as text; re-encoded, two newline tokens may merge into one.
    Equal texts are identical, and a real split is placed at the reference's token."""
    from krmlx.divergence import text_difference

    _, tok = models.load(tiny_path)
    nl = tok.encode("\n", add_special_tokens=False)
    ids = tok.encode("Blue sky", add_special_tokens=False) + nl + nl + tok.encode("Red", add_special_tokens=False)
    text = tok.decode(ids)
    assert text_difference(tok, ids, text) == (None, None)
    cut = len(tok.encode("Blue sky", add_special_tokens=False))
    head = tok.decode(ids[:cut])
    pos, theirs = text_difference(tok, ids, head + " green")
    assert pos == cut and theirs == tok.encode(" green", add_special_tokens=False)[0]
    assert text_difference(tok, ids, head) == (cut, None)  # the server stopped there
