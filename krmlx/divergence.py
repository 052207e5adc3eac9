"""Where two greedy answers part, and how close the reference model was to a tie there.

Contract: :func:`first_difference` gives the first position where two token sequences
differ. :func:`logit_gap` runs the reference model on ``prompt + tokens[:position]`` (one
prefill, float32 logits) and reports its top-2 tokens at that step, the gap between them,
and where the other answer's token stood (its logit below the top one, its rank). A gap near
zero means the two answers split on a numerical near-tie (any change in kernel, batch shape
or precision may flip it); a large gap means the other side computed something else.
:func:`divergences` does this for every question answered by two targets of a results file
(the first trial of each): records carry ``output_ids``; a target that reports none (an
HTTP server) has its text re-encoded, which is stated in the row (``ids_from``).

Only requests rebuilt from the 50 questions can be replayed: a question id (the baseline),
or ``c{C}-{i}`` of a concurrency run on its default prompts (question ``i`` mod 50); others
are counted as ``skipped``.
The logits come from one prefill, not the incremental decode the answer came from: the
gap is what the model says at that step, not a replay of either server's arithmetic.

Stats: the summary of :func:`divergences` gives per target ``compared``, ``identical``,
``diverged``, ``skipped``.
"""

from __future__ import annotations

import re

from .gen import encode_prompt
from .questions import load_questions
from .types import Request


def first_difference(a, b) -> int | None:
    """The first index where ``a`` and ``b`` differ (the shorter one's length when one is
    a prefix of the other); None when they are equal."""
    a, b = list(a), list(b)
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def logit_gap(model, tokenizer, prompt_ids, tokens, position: int, other: int | None = None) -> dict:
    """The reference model's view of step ``position`` after ``prompt_ids + tokens[:position]``:
    its top-2 tokens and their logit gap; with ``other`` (the other answer's token there),
    that token's logit below the top one and its rank (0: the top)."""
    import mlx.core as mx

    ids = list(prompt_ids) + list(tokens[:position])
    logits = model(mx.array(ids)[None])[0, -1].astype(mx.float32)
    order = mx.argsort(-logits)
    top1, top2 = int(order[0].item()), int(order[1].item())
    values = logits.tolist()
    row = {"position": position, "top1": top1, "top1_text": tokenizer.decode([top1]),
           "top2": top2, "top2_text": tokenizer.decode([top2]),
           "top2_gap": values[top1] - values[top2]}
    if other is not None:
        row.update({"other": other, "other_text": tokenizer.decode([other]),
                    "other_gap": values[top1] - values[other],
                    "other_rank": int(sum(v > values[other] for v in values))})
    return row


def question_of(doc: dict, request_id: str, questions: list) -> str | None:
    """The question a record's request asked, where the results file says how to rebuild it."""
    by_id = {q.id: q.question for q in questions}
    if request_id in by_id:
        return by_id[request_id]
    cfg = doc.get("config", {})
    m = re.fullmatch(r"c\d+-(\d+)", request_id)
    if m and cfg.get("workload") == "concurrency" and \
            cfg.get("params", {}).get("prompts", "questions") == "questions":
        return questions[int(m[1]) % len(questions)].question
    return None


def _ids(record: dict, tokenizer) -> tuple[list[int], str]:
    if record.get("output_ids"):
        return list(record["output_ids"]), "output_ids"
    return list(tokenizer.encode(record.get("output_text", ""), add_special_tokens=False)), "text"


def text_difference(tokenizer, ids, text: str) -> tuple[int | None, int | None]:
    """Where ``text`` (an answer known only as text) parts from the answer of token ``ids``:
    (the first token of ``ids`` whose text ``text`` does not continue, the first token of
    ``text``'s rest there, or None if it has none); (None, None) when the texts are equal.
    Re-encoding ``text`` and comparing ids would report a split where the tokenizer merges
    what the model produced as two tokens (``'\\n' '\\n'`` re-encoded as ``'\\n\\n'``)."""
    done, whole = "", 0  # the text of ids[:whole], the longest prefix that text continues
    for i in range(len(ids)):
        upto = tokenizer.decode(list(ids[:i + 1]))
        if upto.endswith("\ufffd"):  # a character cut between tokens: judge it whole
            continue
        if not text.startswith(upto):
            break
        done, whole = upto, i + 1
    if whole == len(ids) and text == done:
        return None, None
    rest = tokenizer.encode(text[len(done):], add_special_tokens=False) if len(text) > len(done) else []
    return whole, (rest[0] if rest else None)


def divergences(doc: dict, model, tokenizer, *, reference: str = "direct",
                others: list[str] | None = None) -> tuple[list[dict], dict]:
    """(rows, summary) comparing ``reference``'s answers with each other target's in results
    document ``doc`` (first trial each). A row per diverging question."""
    records = [r for r in doc.get("records", []) if r.get("ok")]
    first = {}
    for r in records:
        key = (r["target"], r["request_id"])
        if key not in first or r.get("trial", 0) < first[key].get("trial", 0):
            first[key] = r
    engines = list(dict.fromkeys(r["target"] for r in records))
    if reference not in engines:
        raise ValueError(f"reference target {reference!r} is not in the results "
                         f"(targets: {', '.join(engines)})")
    others = others or [e for e in engines if e != reference]
    questions = load_questions()[0]
    max_tokens = doc.get("config", {}).get("params", {}).get("max_tokens", 50)
    rows, summary = [], {}
    for other in others:
        s = summary.setdefault(other, {"compared": 0, "identical": 0, "diverged": 0, "skipped": 0})
        for (engine, rid), ref in first.items():
            if engine != reference or (other, rid) not in first:
                continue
            question = question_of(doc, rid, questions)
            if question is None:
                s["skipped"] += 1
                continue
            a, _ = _ids(ref, tokenizer)
            b, source = _ids(first[(other, rid)], tokenizer)
            s["compared"] += 1
            if source == "text":  # compare as text, from the reference's tokens
                pos, theirs = text_difference(tokenizer, a, first[(other, rid)].get("output_text", ""))
            else:
                pos = first_difference(a, b)
                theirs = b[pos] if pos is not None and pos < len(b) else None
            if pos is None:
                s["identical"] += 1
                continue
            s["diverged"] += 1
            prompt = encode_prompt(tokenizer, Request(question, max_tokens=max_tokens).to_params())
            row = {"target": other, "request_id": rid, "ids_from": source,
                   "reference_token": a[pos] if pos < len(a) else None,
                   **logit_gap(model, tokenizer, prompt, a, pos, theirs)}
            rows.append(row)
    return rows, summary


def format_divergences(rows: list[dict], summary: dict, reference: str) -> str:
    lines = []
    for target, s in summary.items():
        lines.append(f"{target} vs {reference}: identical {s['identical']}/{s['compared']}"
                     + (f" ({s['skipped']} not replayable)" if s["skipped"] else ""))
    for r in rows:
        other = (f"{r['target']} chose {r['other_text']!r} ({r['other_gap']:.3f} below the top, "
                 f"rank {r['other_rank']})" if "other" in r else f"{r['target']} ended there")
        lines.append(f"  {r['request_id']} @ token {r['position']}: top-2 {r['top1_text']!r} vs "
                     f"{r['top2_text']!r}, gap {r['top2_gap']:.3f} logits; {other} "
                     f"[ids from {r['ids_from']}]")
    return "\n".join(lines)
