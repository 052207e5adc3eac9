"""Beyond the reference: prompt-cache reuse and speculative decoding, measured like the rest.

- ``prompt_cache``: requests sharing a long system prompt (~``shared_tokens`` tokens),
  through an engine without and with prompt-cache reuse (one at a time, interleaved);
  TTFT per request and the reduction (target: >= 5x). The first request of each target
  fills its cache: the reuse shows on the requests after it.
- ``speculative``: the first few questions through the serial engine without a draft and
  with each draft (the target itself, which agrees by construction, and a truncated copy:
  its first layers plus its head); acceptance rate and decode tokens/s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...models import PRESETS, parse_name
from ...questions import load_questions
from ...stack import StackConfig
from ...types import Request
from .. import metrics
from ..targets import EngineTarget
from .base import Workload, check_positive


@dataclass(frozen=True)
class PromptCache(Workload):
    name = "prompt_cache"
    SMOKE = {"requests": 3, "shared_tokens": 200}

    shared_tokens: int = 500
    requests: int = 8
    max_tokens: int = 8

    def validate(self, model):
        check_positive(self.name, shared_tokens=self.shared_tokens, requests=self.requests,
                       max_tokens=self.max_tokens)

    def default_targets(self, phases, model):
        from ...worker.prompt_cache import PromptCacheConfig

        return [EngineTarget(StackConfig(), "no_reuse"),
                EngineTarget(StackConfig.phases(prompt_cache=PromptCacheConfig()), "prompt_cache")]

    def planned_records(self, n_targets):
        return self.requests * n_targets

    async def run(self, run, group=0):
        from ..prompts import shared_system_prompt

        system = shared_system_prompt(run.tokenizer(), self.shared_tokens)
        reqs = [Request(q.question, system=system, max_tokens=self.max_tokens, id=q.id)
                for q in load_questions()[0][: self.requests]]
        await run.warm([("generate", Request("warm up", max_tokens=2))], label="one request")
        await run.trials(lambda trial: run.sequence(reqs, trial, series="shared_prefix"))

    def summarize(self, records, config):
        df = metrics.to_frame(records)
        names = list(df["target"].unique())
        rows = []
        for name in names:
            part = df[(df["target"] == name) & df["ok"]]
            later = part[part["request_id"] != part["request_id"].iloc[0]] if len(part) else part
            cached = later["cached_prompt_tokens"] if "cached_prompt_tokens" in later else None
            rows.append({"target": name, "prompt_tokens": float(part["prompt_tokens"].mean()),
                         "ttft_ms_p50": float(np.median(later["ttft_ms"])) if len(later) else None,
                         "cached_tokens_p50": float(np.median(cached.fillna(0)))
                         if cached is not None and len(cached) else 0.0})
        base = rows[0]["ttft_ms_p50"] if rows else None
        for r in rows:
            r["ttft_reduction_x"] = base / r["ttft_ms_p50"] if base and r["ttft_ms_p50"] else None
        from .base import outputs_match

        return {"prompt_cache": rows, "target_x": 5.0,
                "outputs_match": outputs_match(df, names[0], names[1:]) if names else []}


@dataclass(frozen=True)
class Speculative(Workload):
    name = "speculative"
    SMOKE = {"requests": 2, "max_tokens": 16}

    requests: int = 4
    max_tokens: int = 40
    drafts: tuple[str, ...] | None = None

    def validate(self, model):
        check_positive(self.name, requests=self.requests, max_tokens=self.max_tokens)

    def draft_models(self, model: str) -> tuple[str, ...]:
        if self.drafts is not None:
            return tuple(self.drafts)
        spec = parse_name(model)
        keep = max(1, PRESETS[spec.preset].num_hidden_layers // 4) if spec else None
        return (model,) + ((f"{model}-draft{keep}",) if spec and keep else ())

    def models(self, model):
        return [model, *self.draft_models(model)]

    def default_targets(self, phases, model):
        return [EngineTarget(StackConfig(), "no_draft"),
                *(EngineTarget(StackConfig.phases(draft=d), f"draft={d}")
                  for d in self.draft_models(model))]

    def planned_records(self, n_targets):
        return self.requests * n_targets

    async def run(self, run, group=0):
        reqs = [Request(q.question, max_tokens=self.max_tokens, id=q.id)
                for q in load_questions()[0][: self.requests]]
        await run.trials(lambda trial: run.sequence(reqs, trial, series="speculative"))

    def summarize(self, records, config):
        df = metrics.to_frame(records)
        names = list(df["target"].unique())
        base = {r.request_id: r.output_ids for r in df[df["target"] == names[0]].itertuples()}
        rows = []
        for name in names:
            part = df[(df["target"] == name) & df["ok"]]
            acc = part["draft_accepted"].sum() if "draft_accepted" in part else 0
            chk = part["draft_checked"].sum() if "draft_checked" in part else 0
            tpot = part["tpot_ms"].dropna()
            rows.append({"target": name, "acceptance": float(acc / chk) if chk else None,
                         "decode_tps_mean": float(np.mean(1e3 / tpot)) if len(tpot) else None,
                         "e2e_ms_mean": float(part["e2e_ms"].mean()),
                         "identical_to_no_draft": int(sum(base.get(r.request_id) == r.output_ids
                                                          for r in part.itertuples()))})
        return {"speculative": rows}
