"""``error_rates``: transient faults injected on ``generate`` at several rates.

For each rate the compared configurations run in their own worker processes, started with
the fault plan ``{"error_rate": {"generate": rate}, "seed": seed}`` (engine names
``phase0@err10``, ``retry@err10`` ...; rate 0 injects nothing). The workload plays the
user: a request that fails is re-sent ``user_retries`` times (once, as the reference modelled),
after ``user_retry_delay_s``. Phase 0 shows those failures to the user; the retry phase
retries inside the stack. Each record carries ``attempts``, ``user_visible_failures`` and
``failed_ms`` (time spent in failed attempts); TTFT and E2E run from the first attempt.

The time errors cost (``penalty_s``, the reference's "error penalty") is what the failures
added: failed attempts and user waits as the user saw them, plus the retry stage's
backoff waits (its stats' ``retry_wait_s``; the failed attempts inside the stack are not
visible from outside and are not counted). Note that the worker fails an injected fault
at dispatch, before any token, so a failed attempt itself costs about one round trip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import ConfigError
from ...questions import load_questions
from ...types import Request
from .. import metrics
from .base import (
    BASE,
    Workload,
    check_positive,
    est,
    keep,
    measurement_means,
    outputs_match,
    pct_less,
    pick,
    target_tables,
)


def rate_tag(rate: float) -> str:
    """10 for 0.1, 2.5 for 0.025: the rate in percent, as target names and series use it."""
    pct = round(rate * 100, 6)
    return f"{pct:g}"


@dataclass(frozen=True)
class ErrorRates(Workload):
    """The questions at each fault rate in ``fault_rates``: phase0 (the user retries) vs retry
    (the stack retries). Smoke: rates 0 and 10%, 10 questions of 8 tokens."""

    name = "error_rates"
    default_phases = "retry"
    SMOKE = {"fault_rates": (0.0, 0.1), "questions": 10, "max_tokens": 8}

    fault_rates: tuple[float, ...] = (0.0, 0.05, 0.10, 0.20)
    questions: int | None = None
    max_tokens: int = 50
    user_retries: int = 1
    user_retry_delay_s: float = 0.0

    def validate(self, model):
        if not self.fault_rates or not all(isinstance(r, (int, float)) and 0 <= r < 1 for r in self.fault_rates):
            raise ConfigError(f"{self.name}: fault_rates must be probabilities in [0, 1), got {self.fault_rates!r}")
        check_positive(self.name, max_tokens=self.max_tokens)
        if not isinstance(self.user_retries, int) or self.user_retries < 0:
            raise ConfigError(f"{self.name}: user_retries must be an int >= 0, got {self.user_retries!r}")

    def groups(self, targets):
        """One group per fault rate: each target restarted with that fault plan (a target
        that takes no worker settings is not supported here), named ``NAME@errRATE``."""
        groups = []
        for rate in self.fault_rates:
            faults = {"error_rate": {"generate": float(rate)}, "seed": self.seed} if rate > 0 else None
            tag = rate_tag(rate)
            groups.append((f"error_rate_{tag}", [t.with_worker(f"{t.name}@err{tag}", faults=faults)
                                                 for t in targets if "worker" in t.ops]))
        return groups

    def requests(self) -> list[Request]:
        return [Request(q.question, max_tokens=self.max_tokens, id=q.id)
                for q in load_questions()[0][: self.questions]]

    def planned_records(self, n_engines):
        return len(self.requests()) * n_engines  # per group

    async def run(self, run, group=0):
        rate = self.fault_rates[group]
        series = f"error_rate_{rate_tag(rate)}"
        reqs = self.requests()
        await run.warm([("generate", Request("warmup", max_tokens=4))], label="one request")
        await run.trials(lambda trial: run.sequence(
            reqs, trial, series=series, measure=True, retries=self.user_retries,
            retry_delay_s=self.user_retry_delay_s, error_rate=float(rate)), series=series)

    def summarize(self, records, config):
        df = metrics.to_frame(records)
        labels = list(dict.fromkeys(e.split("@err")[0] for e in df["target"]))
        table, matches, rows = [], [], []
        for rate in self.fault_rates:
            tag = rate_tag(rate)
            series = f"error_rate_{tag}"
            part = df[df["series"] == series]
            if part.empty:
                continue
            base = f"{BASE}@err{tag}"
            table += [self.row(part, config, series, f"{label}@err{tag}", base, rate) for label in labels
                      if f"{label}@err{tag}" in set(part["target"])]
            matches += outputs_match(part, base, [f"{x}@err{tag}" for x in labels if x != BASE])
            if rate > 0:
                rows += self.estimates(df, table, labels, tag)
        return {"targets": target_tables(df, "series"), "errors": table, "headline": table,
                "outputs_match": matches, "estimates": keep(rows)}

    @staticmethod
    def row(part, config, series, engine, base, rate) -> dict:
        mine = part[part["target"] == engine]
        trials = max(1, mine["trial"].nunique())
        m = measurement_means(config, series, engine)

        def get(col):  # per-trial sum of a record column
            return float(mine[col].fillna(0).sum()) / trials if col in mine else 0.0

        row = {"series": series, "target": engine, "error_rate": rate,
               "requests": int(len(mine) / trials), "user_visible_failures": get("user_visible_failures"),
               "failed_requests": float((~mine["ok"]).sum()) / trials,
               "failed_attempt_s": get("failed_ms") / 1e3, "user_wait_s": get("user_wait_ms") / 1e3,
               "total_s": get("e2e_ms") / 1e3,
               "retries": m.get("retry.retries", math.nan), "gave_up": m.get("retry.gave_up", math.nan),
               "retry_wait_s": m.get("retry.retry_wait_s", math.nan),
               "breaker_opened": m.get("breaker.opened", math.nan),
               "breaker_rejected": m.get("breaker.rejected", math.nan)}
        # The time errors cost: failed attempts and waits the user saw, plus the stack's
        # backoff waits (the failed attempts inside the stack are not visible from here).
        row["penalty_s"] = row["failed_attempt_s"] + row["user_wait_s"] + (
            0.0 if math.isnan(row["retry_wait_s"]) else row["retry_wait_s"])
        if engine != base:
            t = metrics.paired_totals(part, base, engine)
            if t:
                row.update({"speedup_x": t["speedup_x"], "ci_low": t["speedup_ci_low"],
                            "ci_high": t["speedup_ci_high"]})
        return row

    def estimates(self, df, table, labels, tag) -> list[dict]:
        """Reference rows of phase3 (error_rate_5/10/20) for one rate."""
        w, opt = f"error_rate_{tag}", pick(labels, "retry", "all")
        base, other = f"{BASE}@err{tag}", f"{opt}@err{tag}"
        rows = []
        t = metrics.paired_totals(df, base, other) if opt else None
        if t:
            rows.append(est(w, "speedup_x", t["speedup_x"], t["speedup_ci_low"], t["speedup_ci_high"],
                            f"{base} total / {other} total (requests ok in both)"))
        pen = {r["target"].split("@err")[0]: r for r in table if r["series"] == w}
        name = {BASE: "error_penalty_s", opt: "error_penalty_s_optimized"}
        for label in (BASE, opt):
            if label in pen:
                rows.append(est(w, name[label], pen[label]["penalty_s"], source=(
                    f"{label}: failed attempts + user waits + retry backoff waits, per trial")))
        if BASE in pen and opt in pen:
            b, o = pen[BASE]["penalty_s"], pen[opt]["penalty_s"]
            rows.append(est(w, "error_penalty_reduction_pct", pct_less(o, b),
                            source="1 - optimized penalty / phase0 penalty"))
            fails = pen[BASE]["user_visible_failures"]
            if fails:
                rows.append(est(w, "retry_savings_ms_per_failure", (b - o) * 1e3 / fails,
                                source="(phase0 penalty - optimized penalty) / phase0 user-visible failures"))
        return rows

