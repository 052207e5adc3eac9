"""Beyond the reference: prompt-cache reuse and speculative decoding, measured like the rest.

- :func:`run_prompt_cache`: requests sharing a long system prompt (~``shared_tokens``
  tokens), through an engine without and with prompt-cache reuse; TTFT per request and the
  reduction (target: >= 5x).
- :func:`run_speculative`: the 50 questions' first few through the serial engine without a
  draft and with each draft (the target itself, which agrees by construction, and a
  truncated copy: its first layers plus its head); acceptance rate and decode tokens/s.
Both return results documents (``env``, ``config``, ``records``, ``summary``).
"""

from __future__ import annotations

import time

import numpy as np

from ..doctor import collect_env
from ..engine import Engine
from ..models import PRESETS, parse_name
from ..questions import load_questions
from ..stack import StackConfig
from ..types import Request
from ..worker.prompt_cache import PromptCacheConfig
from .runner import record_of


def shared_system_prompt(shared_tokens: int = 500) -> str:
    """A system prompt of at least ``shared_tokens`` tokens with the shipped tokenizer."""
    from tokenizers import Tokenizer

    from ..models import TOKENIZER_DIR

    tok = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    text = ""
    for i in range(1, 10_000):
        text += f"Rule {i}: when asked about topic {i}, answer briefly, precisely and politely. "
        if len(tok.encode(text).ids) >= shared_tokens:
            break
    return text.strip()


async def _run(cfg: StackConfig, name: str, model: str, requests: list[Request]) -> list[dict]:
    records = []
    async with Engine(model, cfg) as eng:
        await eng.complete(Request("warm up", max_tokens=2))
        for req in requests:
            t0 = time.perf_counter()
            done = await eng.complete(req)
            records.append(record_of(name, 0, req, done, t_start_s=t0, workload="beyond",
                                     extra=dict(done.extra)))
    return records


async def run_prompt_cache(model: str = "mini", *, shared_tokens: int = 500, requests: int = 8,
                           max_tokens: int = 8) -> dict:
    system = shared_system_prompt(shared_tokens)
    qs = load_questions()[0][:requests]
    reqs = [Request(q.question, system=system, max_tokens=max_tokens, id=q.id) for q in qs]
    records = await _run(StackConfig(), "no_reuse", model, reqs)
    records += await _run(StackConfig.phases(prompt_cache=PromptCacheConfig()), "prompt_cache", model, reqs)
    by = {e: [r for r in records if r["engine"] == e] for e in ("no_reuse", "prompt_cache")}
    # The first request fills the cache: the reuse shows on the requests after it.
    ttft = {e: float(np.median([r["ttft_ms"] for r in rs[1:]])) for e, rs in by.items()}
    same = sum(a["output_ids"] == b["output_ids"] for a, b in zip(by["no_reuse"], by["prompt_cache"], strict=True))
    summary = {"prompt_cache": [{
        "prompt_tokens": by["no_reuse"][0]["prompt_tokens"],
        "cached_tokens_p50": float(np.median([r.get("cached_prompt_tokens", 0) for r in by["prompt_cache"][1:]])),
        "ttft_ms_p50_no_reuse": ttft["no_reuse"], "ttft_ms_p50_reuse": ttft["prompt_cache"],
        "ttft_reduction_x": ttft["no_reuse"] / ttft["prompt_cache"], "target_x": 5.0,
        "identical_outputs": same, "requests": len(reqs)}]}
    return {"env": {**collect_env(), "model": model},
            "config": {"workload": "prompt_cache", "model": model, "shared_tokens": shared_tokens,
                       "max_tokens": max_tokens}, "records": records, "summary": summary}


async def run_speculative(model: str = "mini", *, drafts: tuple[str, ...] | None = None,
                          requests: int = 4, max_tokens: int = 40) -> dict:
    spec = parse_name(model)
    if drafts is None:
        keep = max(1, PRESETS[spec.preset].num_hidden_layers // 4) if spec else None
        drafts = (model,) + ((f"{model}-draft{keep}",) if spec and keep else ())
    qs = load_questions()[0][:requests]
    reqs = [Request(q.question, max_tokens=max_tokens, id=q.id) for q in qs]
    records = await _run(StackConfig(), "no_draft", model, reqs)
    for d in drafts:
        records += await _run(StackConfig.phases(draft=d), f"draft={d}", model, reqs)
    base = {r["request_id"]: r["output_ids"] for r in records if r["engine"] == "no_draft"}
    rows = []
    for engine in dict.fromkeys(r["engine"] for r in records):
        rs = [r for r in records if r["engine"] == engine]
        acc = sum(r.get("draft_accepted", 0) for r in rs)
        chk = sum(r.get("draft_checked", 0) for r in rs)
        rows.append({"engine": engine, "acceptance": acc / chk if chk else None,
                     "decode_tps_mean": float(np.mean([1e3 / r["tpot_ms"] for r in rs if r["tpot_ms"]])),
                     "e2e_ms_mean": float(np.mean([r["e2e_ms"] for r in rs])),
                     "identical_to_no_draft": sum(base[r["request_id"]] == r["output_ids"] for r in rs)})
    return {"env": {**collect_env(), "model": model},
            "config": {"workload": "speculative", "model": model, "drafts": list(drafts),
                       "max_tokens": max_tokens}, "records": records, "summary": {"speculative": rows}}
