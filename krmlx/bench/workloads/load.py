"""Concurrent workloads: many requests in flight, one engine at a time (the engine order
rotates per trial), wall time measured per engine.

``tokenize_flood`` (N tokenize calls, ``concurrency`` in flight), ``mixed`` (the reference's
40% generation / 40% tokenization / 20% model switching, seeded order), ``server_profile``
(open-loop Poisson arrivals at ``rate`` requests/s, tokenize:generate = 20:1 as in the
reference's API-server profile, like vLLM's bench and GuideLLM) and ``rate_sweep`` (the profile
at several rates).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ...errors import ConfigError
from ...types import Request
from .. import metrics
from .base import (
    BASE,
    DIRECT,
    Workload,
    check_positive,
    comparisons,
    est,
    keep,
    measurement_means,
    model_variants,
    outputs_match,
    pick,
    questions_text,
    reduction_pct,
    target_tables,
)
from .sequential import warm_models

DEFAULT_CONCURRENCY = 10  # the reference's "10 concurrent tokenize requests"


def wall_rows(df, config, series: str, base: str = BASE) -> list[dict]:
    """Per engine: wall time, requests/s, latency percentiles, batches, speedup over base."""
    rows = []
    for engine in df["target"].unique():
        part = df[df["target"] == engine]
        m = measurement_means(config, series, engine)
        wall = m.get("wall_s", math.nan)
        row = {"series": series, "target": engine, "requests": int(len(part) / max(1, part["trial"].nunique())),
               "errors": int((~part["ok"]).sum()), "wall_s": wall,
               "requests_per_s": (part["ok"].sum() / max(1, part["trial"].nunique())) / wall if wall else math.nan,
               "e2e_ms_mean": float(part[part["ok"]]["e2e_ms"].mean()),
               **{f"e2e_ms_{k}": v for k, v in metrics.percentiles(part[part["ok"]]["e2e_ms"]).items()},
               "batches": m.get("batcher.batches", math.nan)}
        s = measured_speedup(config, series, base, engine) if engine != base else None
        if s:
            row.update({"speedup_x": s["speedup_x"], "ci_low": s["ci_low"], "ci_high": s["ci_high"]})
        rows.append(row)
    return rows


def measured_speedup(config: dict, series: str, base: str, other: str) -> dict | None:
    """``base``'s wall time over ``other``'s, each as measured around its trial's batch of
    requests (the ``wall_s`` the tables show beside it), with a CI over trials."""
    def walls(engine):
        return [m["wall_s"] for m in config.get("measurements", [])
                if m.get("series") == series and m.get("target") == engine and "wall_s" in m]

    return metrics.speedup_of(walls(base), walls(other), base, other)


def less_pct(speedup: float) -> float:
    """A speedup as time saved, in percent: (1 - 1 / speedup) * 100."""
    return (1 - 1 / speedup) * 100 if speedup and not math.isnan(speedup) else math.nan


@dataclass(frozen=True)
class TokenizeFlood(Workload):
    """``requests`` tokenize calls (the questions' texts), ``concurrency`` in flight:
    phase0 vs batching, with direct's in-process tokenize as the floor. Smoke: 100."""

    name = "tokenize_flood"
    default_phases = "batching"
    uses_direct = True
    SMOKE = {"requests": 100}

    requests: int = 1000
    concurrency: int = DEFAULT_CONCURRENCY

    def validate(self, model):
        check_positive(self.name, requests=self.requests, concurrency=self.concurrency)

    def planned_records(self, n_engines):
        return self.requests * n_engines

    async def run(self, run, group=0):
        texts = questions_text()
        items = [("tokenize", Request(texts[i % len(texts)], max_tokens=1, model=run.model,
                                      id=f"tok-{i:04d}")) for i in range(self.requests)]
        await run.warm([("tokenize", Request(t, max_tokens=1)) for t in texts[: 2 * self.concurrency]],
                       label="tokenize", concurrency=self.concurrency)
        await run.trials(lambda trial: run.batch(items, trial, series="flood",
                                                 concurrency=self.concurrency))

    def summarize(self, records, config):
        df = metrics.to_frame(records)
        engines = set(df["target"])
        others = [e for e in df["target"].unique() if e not in (BASE, DIRECT)]
        table = wall_rows(df, config, "flood")
        out = {"targets": target_tables(df), "comparisons": comparisons(df, BASE, others, ("e2e_ms",)),
               "flood": table, "headline": table, "estimates": []}
        opt = pick(others, "batching", "all")
        if BASE not in engines:
            return out
        w, ok = self.name, df[(df["target"] == BASE) & df["ok"]]
        lat = metrics.mean_ci(ok["e2e_ms"])
        rows = [est(w, "tokenize_ms_mean", lat["mean"], lat["ci_low"], lat["ci_high"],
                    "phase0 mean latency per tokenize request"),
                est(w, "total_s", measurement_means(config, "flood", BASE).get("wall_s"),
                    source=f"phase0 wall time for {self.requests} requests")]
        if opt:
            m = measurement_means(config, "flood", opt)
            s = measured_speedup(config, "flood", BASE, opt)
            rows.append(est(w, "total_s_optimized", m.get("wall_s"), source=f"{opt} wall time"))
            if m.get("batcher.batches"):
                rows.append(est(w, "tokenize_batch_ms_optimized", m["wall_s"] * 1e3 / m["batcher.batches"],
                                source=f"{opt} wall time / batches sent"))
            if s:
                rows.append(est(w, "speedup_x", s["speedup_x"], s["ci_low"], s["ci_high"],
                                f"phase0 wall / {opt} wall"))
        out["estimates"] = keep(rows)
        return out


@dataclass(frozen=True)
class Mixed(Workload):
    """``requests`` drawn (seeded) as generation / tokenization / model switch by ``shares``;
    a switch moves to the next of ``n_models`` variants and generates there, the others use
    the current model. ``concurrency`` in flight; phase0 vs all. Smoke: 20 requests."""

    name = "mixed"
    default_phases = "all"
    SMOKE = {"requests": 20, "max_tokens": 8}

    requests: int = 100
    shares: tuple[float, float, float] = (0.4, 0.4, 0.2)
    n_models: int = 5
    max_tokens: int = 50
    switch_max_tokens: int = 8
    concurrency: int = DEFAULT_CONCURRENCY
    warm_cache: bool = True

    def models(self, model):
        return model_variants(self.name, model, self.n_models)

    def validate(self, model):
        self.models(model)
        check_positive(self.name, requests=self.requests, concurrency=self.concurrency,
                       max_tokens=self.max_tokens, switch_max_tokens=self.switch_max_tokens)
        if len(self.shares) != 3 or min(self.shares) < 0 or not sum(self.shares) > 0:
            raise ConfigError(f"{self.name}: shares must be 3 non-negative weights "
                              f"(generation, tokenization, switching), got {self.shares!r}")

    def planned_records(self, n_engines):
        return self.requests * n_engines

    def items(self, model: str) -> list[tuple[str, Request]]:
        rng, texts, models = random.Random(self.seed), questions_text(), self.models(model)
        kinds = rng.choices(["generate", "tokenize", "switch"], weights=self.shares, k=self.requests)
        current, out = len(models) - 1, []
        for i, kind in enumerate(kinds):
            if kind == "switch":
                current = (current + 1) % len(models)
            tokens = self.switch_max_tokens if kind == "switch" else self.max_tokens
            out.append((kind, Request(texts[rng.randrange(len(texts))], max_tokens=tokens,
                                      model=models[current], id=f"mx-{i:04d}")))
        return out

    async def run(self, run, group=0):
        models, items = self.models(run.model), self.items(run.model)
        if self.warm_cache:
            await run.warm(warm_models(models), label="each model once")
        start = [("load", Request("load", max_tokens=1, model=models[-1]))]  # the same for all
        await run.trials(lambda trial: run.batch(items, trial, series="mixed",
                                                 concurrency=self.concurrency, setup=start))

    def summarize(self, records, config):
        df = metrics.to_frame(records)
        others = [e for e in df["target"].unique() if e != BASE]
        table = wall_rows(df, config, "mixed")
        kinds = []
        for (engine, kind), part in df.groupby(["target", "kind"], sort=False):
            kinds.append({"target": engine, "kind": kind, "requests": len(part),
                          "errors": int((~part["ok"]).sum()),
                          "sum_e2e_s": float(part[part["ok"]]["e2e_ms"].sum() / 1e3 / max(1, part["trial"].nunique()))})
        out = {"targets": target_tables(df), "by_kind": target_tables(df, "kind"), "components": kinds,
               "walls": table, "headline": table, "comparisons": comparisons(df, BASE, others, ("e2e_ms",)),
               "outputs_match": outputs_match(df, BASE, others), "estimates": []}
        opt = pick(others, "all")
        if BASE not in set(df["target"]) or not opt:
            return out
        w, rows = self.name, []
        s = measured_speedup(config, "mixed", BASE, opt)
        if s:
            rows.append(est(w, "total_reduction_pct", less_pct(s["speedup_x"]), less_pct(s["ci_low"]),
                            less_pct(s["ci_high"]), f"1 - {opt} wall / phase0 wall"))
        for kind, metric in (("generate", "generation_reduction_pct"), ("tokenize", "tokenize_reduction_pct"),
                             ("switch", "model_load_reduction_pct")):
            t = metrics.paired_totals(df[df["kind"] == kind], BASE, opt)
            rows.append(est(w, metric, *reduction_pct(t), source=f"1 - {opt} / phase0, sum of {kind} E2E"))
        out["estimates"] = keep(rows)
        return out


@dataclass(frozen=True)
class ServerProfile(Workload):
    """Open-loop Poisson arrivals at ``rate`` requests/s for ``duration_s`` (or
    ``max_requests``), seeded; per block of ``tokenize_per_generate`` + 1 arrivals one is a
    generate of ``max_tokens`` (the reference's 10,000 tokenize : 500 generate per hour). With
    ``n_models`` > 1 each request picks one of the variants; ``error_rate`` injects transient
    faults on generate and tokenize. phase0 vs all. Smoke: 2 s."""

    name = "server_profile"
    default_phases = "all"
    SMOKE = {"duration_s": 2.0, "max_tokens": 16}

    rate: float = 10.0
    duration_s: float = 30.0
    max_requests: int | None = None
    tokenize_per_generate: int = 20
    max_tokens: int = 100
    n_models: int = 1
    error_rate: float = 0.0

    def sweep_rates(self) -> tuple[float, ...]:
        return (self.rate,)

    def models(self, model):
        return model_variants(self.name, model, self.n_models) if self.n_models > 1 else [model]

    def validate(self, model):
        self.models(model)
        check_positive(self.name, duration_s=self.duration_s, max_tokens=self.max_tokens,
                       **{f"rate {r!r}": r for r in self.sweep_rates()})
        if not isinstance(self.tokenize_per_generate, int) or self.tokenize_per_generate < 0:
            raise ConfigError(f"{self.name}: tokenize_per_generate must be an int >= 0")
        if not 0 <= self.error_rate < 1:
            raise ConfigError(f"{self.name}: error_rate must be in [0, 1), got {self.error_rate!r}")

    def adapt(self, target):
        target = super().adapt(target)
        if not self.error_rate:
            return target
        r = float(self.error_rate)
        faults = {"error_rate": {"generate": r, "tokenize": r, "batch_tokenize": r}, "seed": self.seed}
        return target.with_worker(faults=faults)

    def schedule(self, model: str, rate: float) -> list[tuple[float, str, Request]]:
        """(arrival offset s, kind, request), the same for every engine (seeded)."""
        rng, texts, models = random.Random(self.seed), questions_text(), self.models(model)
        out, t, deck = [], 0.0, []
        while self.max_requests is None or len(out) < self.max_requests:
            t += rng.expovariate(rate)
            if t > self.duration_s:
                break
            if not deck:
                deck = ["generate"] + ["tokenize"] * self.tokenize_per_generate
                rng.shuffle(deck)
            kind = deck.pop()
            req = Request(texts[rng.randrange(len(texts))], max_tokens=self.max_tokens,
                          model=models[rng.randrange(len(models))], id=f"r{rate:g}-{len(out):05d}")
            out.append((t, kind, req))
        return out

    def planned_records(self, n_engines):
        return None

    async def run(self, run, group=0):
        await run.warm([("generate", Request("warmup", max_tokens=4, model=m))
                        for m in self.models(run.model)], label="each model once")

        async def body(trial):
            for rate in self.sweep_rates():
                await run.arrivals(self.schedule(run.model, rate), trial, series=f"rate_{rate:g}",
                                   rate=rate)

        await run.trials(body)

    def summarize(self, records, config):
        df = metrics.to_frame(records)
        table = [row for rate in self.sweep_rates() for row in profile_rows(df, config, rate)]
        out = {"targets": target_tables(df, "series"), "profile": table, "headline": table,
               "estimates": []}
        opt = pick([e for e in df["target"].unique() if e != BASE], "all")
        if self.name == "server_profile" and opt and BASE in set(df["target"]):
            rows = [est(self.name, metric, *reduction_pct(metrics.paired_totals(part, BASE, opt)),
                        source=f"1 - {opt} / phase0, sum of {what} E2E")
                    for metric, what, part in (("tokenize_reduction_pct", "tokenize", df[df["kind"] == "tokenize"]),
                                               ("generation_reduction_pct", "generate", df[df["kind"] == "generate"]),
                                               ("total_reduction_pct", "all", df))]
            out["estimates"] = keep(rows)
        return out


def profile_rows(df, config, rate: float) -> list[dict]:
    """Per engine at one rate: throughput and TTFT/E2E p50/p90/p99 (vLLM bench's table)."""
    series, rows = f"rate_{rate:g}", []
    part = df[df["series"] == series]
    for engine in part["target"].unique():
        mine = part[part["target"] == engine]
        trials = max(1, mine["trial"].nunique())
        ok, wall = mine[mine["ok"]], measurement_means(config, series, engine).get("wall_s", math.nan)
        gen, tok = ok[ok["kind"] == "generate"], ok[ok["kind"] == "tokenize"]
        row = {"target": engine, "rate": rate, "requests": len(mine) / trials,
               "errors": int((~mine["ok"]).sum()), "wall_s": wall,
               "throughput_req_s": len(ok) / trials / wall if wall else math.nan,
               "output_tok_s": ok["output_tokens"].sum() / trials / wall if wall else math.nan}
        for label, values in (("ttft_ms", gen["ttft_ms"]), ("e2e_ms", gen["e2e_ms"]),
                              ("tokenize_ms", tok["e2e_ms"])):
            row.update({f"{label}_{k}": v for k, v in metrics.percentiles(values).items()})
        row["lag_ms_max"] = float(mine["lag_ms"].max()) if "lag_ms" in mine else math.nan
        rows.append(row)
    return rows


@dataclass(frozen=True)
class RateSweep(ServerProfile):
    """The server profile at each of ``rates`` (requests/s), ``duration_s`` each: throughput
    and TTFT/E2E percentiles per rate. Smoke: 5 and 20 requests/s, 1 s each."""

    name = "rate_sweep"
    SMOKE = {"rates": (5.0, 20.0), "duration_s": 1.0, "max_tokens": 16}

    duration_s: float = 20.0
    rates: tuple[float, ...] = (2.0, 5.0, 10.0, 20.0)

    def sweep_rates(self) -> tuple[float, ...]:
        return tuple(self.rates)
