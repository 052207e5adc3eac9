"""``lengths``: the prompt-length sweep. For each length (~16 to 2048 prompt tokens, chat
template included, by the model's own tokenizer), ``per_length`` prompts of about that
length, ``max_tokens`` out, one request at a time through every target in turn (the order
rotated per request and trial). Each trial gets fresh prompts (so a server's prompt cache
can't serve a repeat); the warm-up, untimed on every target, gets others of the same
lengths.

The summary says how a serving layer's cost moves with prompt length: per length and
target, TTFT / TPOT / E2E (mean, p50), and against the base (``direct`` when it ran, else
the first target): the E2E overhead in % of the base's total with a paired bootstrap CI
over requests and a wider one over whole trials (``e2e_overhead_pct_trial_ci_*``, from 10
trials: the honest one where the host's noise is correlated in time), the same overhead over
the pairs where the base ran first and over those where the other did
(``e2e_overhead_pct_base_first`` / ``_other_first``: their gap is what running second
costs), and the TTFT difference in ms with its CI. ``order="blocks"`` runs a trial's
requests of one length through one target, then the next (a target follows itself)
instead of rotating the targets request by request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import ConfigError
from ...types import Request
from .. import metrics
from ..verdicts import MARGINS, is_smoke, judge_difference
from .base import DIRECT, Workload, check_positive, outputs_match, target_tables

DEFAULT_LENGTHS = (16, 64, 256, 1024, 2048)


@dataclass(frozen=True)
class Lengths(Workload):
    name = "lengths"
    default_phases = "all"
    uses_direct = True
    SMOKE = {"lengths": (16, 256), "per_length": 2, "max_tokens": 8}

    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    per_length: int = 5
    max_tokens: int = 32
    order: str = "rotate"  # or "blocks": see Run.sequence

    def validate(self, model):
        if not self.lengths or not all(isinstance(n, int) and n >= 8 for n in self.lengths):
            raise ConfigError(f"{self.name}: lengths must be ints >= 8, got {self.lengths!r}")
        check_positive(self.name, per_length=self.per_length, max_tokens=self.max_tokens)
        from ..runner import check_sequence_order

        check_sequence_order(self.name, self.order)

    def planned_records(self, n_targets):
        return len(self.lengths) * self.per_length * n_targets

    def requests(self, run, trial: int = 0) -> dict[int, list[Request]]:
        """A trial's prompts (fresh per trial; trial -1: the warm-up's, of the same lengths),
        so a server's prompt cache never sees a timed prompt before it is timed."""
        from ..prompts import prompt_of_length

        tok = run.tokenizer()
        base = self.seed * 100_000 + (trial + 1) * 10_000
        return {n: [Request(prompt_of_length(tok, n, seed=base + n + i),
                            max_tokens=self.max_tokens, id=f"len{n}-{i}")
                    for i in range(self.per_length)] for n in sorted(set(self.lengths))}

    async def run(self, run, group=0):
        warm = [r for reqs in self.requests(run, -1).values() for r in reqs]
        await run.warm([("generate", r) for r in warm], label="every length, per_length prompts")

        async def body(trial):
            for n, reqs in self.requests(run, trial).items():
                await run.sequence(reqs, trial, series=f"len={n}", length=n, order=self.order)

        await run.trials(body)

    @staticmethod
    def verdicts(row: dict, pairs: int | None, smoke: bool) -> dict:
        """E2E overhead against zero (±1 point), by the trial CI where there is one (the
        per-request CI is too narrow when noise is correlated within a trial), and ΔTTFT
        (±2 ms): :func:`krmlx.bench.verdicts.judge_difference`."""
        ci = "e2e_overhead_pct_trial_ci" if "e2e_overhead_pct_trial_ci_low" in row else "e2e_overhead_pct_ci"
        e2e = judge_difference(row.get("e2e_overhead_pct", math.nan), row.get(f"{ci}_low", math.nan),
                               row.get(f"{ci}_high", math.nan), MARGINS["pct"].value,
                               n=pairs, smoke=smoke)
        ttft = judge_difference(row.get("ttft_ms_diff", math.nan), row.get("ttft_ms_diff_ci_low", math.nan),
                                row.get("ttft_ms_diff_ci_high", math.nan), MARGINS["ms"].value, smoke=smoke)
        return {"e2e_verdict": e2e["verdict"], "e2e_verdict_ci": "trials" if "trial" in ci else "requests",
                "ttft_verdict": ttft["verdict"]}

    def summarize(self, records, config):
        df = metrics.to_frame(records)
        names = list(df["target"].unique())
        base = DIRECT if DIRECT in names else names[0]
        growth = []
        for n in sorted(df["length"].dropna().unique()):
            part = df[df["length"] == n]
            ran = set(part["target"])
            for other in [e for e in names if e != base and e in ran]:
                row = {"length": int(n), "target": other, "base": base,
                       "prompt_tokens_mean": float(part[part["target"] == other]["prompt_tokens"].mean())}
                t = metrics.paired_totals(part, base, other)
                if t:
                    row.update({"e2e_overhead_pct": (t["ratio"] - 1) * 100,
                                "e2e_overhead_pct_ci_low": (t["ratio_ci_low"] - 1) * 100,
                                "e2e_overhead_pct_ci_high": (t["ratio_ci_high"] - 1) * 100})
                tb = metrics.trial_block_ratio_ci(part, base, other)
                if tb:  # the honest CI where noise is correlated within a trial
                    row.update({"e2e_overhead_pct_trial_ci_low": (tb["ratio_ci_low"] - 1) * 100,
                                "e2e_overhead_pct_trial_ci_high": (tb["ratio_ci_high"] - 1) * 100})
                split = metrics.order_split(part, base, other)
                if split:  # what running second costs, either way round
                    row.update({"e2e_overhead_pct_base_first": (split["base_first"] - 1) * 100,
                                "e2e_overhead_pct_other_first": (split["other_first"] - 1) * 100})
                try:
                    c = metrics.compare(part, base, other, "ttft_ms")
                    row.update({"ttft_ms_diff": c["diff"], "ttft_ms_diff_ci_low": c["ci_low"],
                                "ttft_ms_diff_ci_high": c["ci_high"]})
                except (ValueError, KeyError):
                    pass
                row.update(self.verdicts(row, int(t["n"]) if t else None, is_smoke(config)))
                growth.append(row)
        return {"targets": target_tables(df, "length"), "overhead_by_length": growth,
                "outputs_match": outputs_match(df, base, [e for e in names if e != base])}
