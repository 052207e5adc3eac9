"""``long_form``: a few long generations, one at a time through every engine in turn.

It measures what the stream framing phase is for: the per-token cost of streaming
through the serving layer, engine TPOT - direct TPOT (paired per request, with a
bootstrap CI), for phase 0 (JSON, a frame per token) and framing (msgpack, tokens
coalesced per frame).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...types import Request
from .. import metrics
from ..targets import EngineTarget
from .base import (
    BASE,
    DIRECT,
    Workload,
    check_positive,
    comparisons,
    est,
    gain_pct,
    keep,
    outputs_match,
    pct_less,
    pick,
    questions_text,
    target_tables,
)


@dataclass(frozen=True)
class LongForm(Workload):
    """A few long generations (``max_tokens`` >= 1000; smoke 200): direct vs phase0 (json,
    a frame per token) vs framing (msgpack, ``coalesce_tokens`` per frame). Reports the
    per-token stream cost: engine TPOT - direct TPOT. Smoke: 2 requests of 200 tokens."""

    name = "long_form"
    default_phases = "framing"
    uses_direct = True
    SMOKE = {"requests": 2, "max_tokens": 200}

    requests: int = 3
    max_tokens: int = 1000
    coalesce_tokens: int = 4
    coalesce_ms: float = 0.0

    def validate(self, model):
        check_positive(self.name, requests=self.requests, max_tokens=self.max_tokens,
                       coalesce_tokens=self.coalesce_tokens)

    def adapt(self, target):
        """An engine with the framing phase coalesces ``coalesce_tokens`` / ``coalesce_ms``."""
        target = super().adapt(target)
        if isinstance(target, EngineTarget) and target.config.framer is not None:
            framer = replace(target.config.framer, coalesce_tokens=self.coalesce_tokens,
                             coalesce_ms=self.coalesce_ms)
            return target.with_config(target.config.with_layer(framer))
        return target

    def planned_records(self, n_engines):
        return self.requests * n_engines

    async def run(self, run, group=0):
        texts = questions_text()
        reqs = [Request(texts[i % len(texts)], max_tokens=self.max_tokens, id=f"long-{i:02d}")
                for i in range(self.requests)]
        await run.warm([("generate", r) for r in run.shapes(reqs)], label="every prompt length once")
        await run.trials(lambda trial: run.sequence(reqs, trial, series="long"))

    def summarize(self, records, config):
        df = metrics.to_frame(records)
        engines = set(df["target"])
        others = [e for e in df["target"].unique() if e not in (BASE, DIRECT)]
        out = {"targets": target_tables(df),
               "comparisons": comparisons(df, BASE, others, ("ttft_ms", "tpot_ms", "e2e_ms")),
               "outputs_match": outputs_match(df, BASE, others), "stream_cost": [], "estimates": []}
        if DIRECT in engines:
            for engine in [e for e in (BASE, *others) if e in engines]:
                c = safe_compare(df, DIRECT, engine, "tpot_ms")
                if c:
                    out["stream_cost"].append({"target": engine, "tpot_ms_direct": c["a"],
                                               "tpot_ms": c["b"], "per_token_cost_ms": c["diff"],
                                               "ci_low": c["ci_low"], "ci_high": c["ci_high"]})
        out["headline"] = out["stream_cost"]
        cost = {r["target"]: r for r in out["stream_cost"]}
        opt = pick(others, "framing", "all")
        rows = []
        if BASE in cost:
            b = cost[BASE]
            rows.append(est("stream_per_token", "chunk_ms_per_token", b["per_token_cost_ms"], b["ci_low"],
                            b["ci_high"], "phase0 TPOT - direct TPOT (long generations)"))
        if opt in cost:
            o = cost[opt]
            rows.append(est("stream_per_token", "chunk_ms_per_token_optimized", o["per_token_cost_ms"],
                            o["ci_low"], o["ci_high"], f"{opt} TPOT - direct TPOT"))
            base_cost = cost.get(BASE, {}).get("per_token_cost_ms")
            if base_cost is not None and base_cost > 0 and cost[BASE]["ci_low"] > 0:
                # a share of a cost only means something where the cost itself is measurably > 0
                rows.append(est("stream_per_token", "stream_overhead_reduction_pct",
                                pct_less(o["per_token_cost_ms"], cost[BASE]["per_token_cost_ms"]),
                                source=f"1 - {opt} per-token cost / phase0 per-token cost"))
        if opt and BASE in engines:
            rows.append(est(self.name, "streaming_gain_pct",
                            *gain_pct(metrics.paired_totals(df, BASE, opt)),
                            source=f"phase0 total / {opt} total - 1"))
        out["estimates"] = keep(rows)
        return out


def safe_compare(df, base: str, other: str, metric: str) -> dict | None:
    try:
        return metrics.compare(df, base, other, metric)
    except (ValueError, KeyError):
        return None

