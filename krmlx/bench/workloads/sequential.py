"""Sequential workloads: one request at a time, every request through every engine in
turn (the engine order rotates per request), so drift hits all configurations alike.

``baseline`` (the 50 questions), ``model_switching`` (each request on the next of N model
variants), ``multi_tenant`` (the questions, round robin over N tenants' models).
``long_form`` is in :mod:`krmlx.bench.workloads_long`, ``error_rates`` in
:mod:`krmlx.bench.workloads_err`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import ConfigError
from ...questions import load_questions
from ...types import Request
from .. import hops, metrics
from ..verdicts import is_smoke, overhead_verdicts
from .base import (
    BASE,
    DIRECT,
    Workload,
    check_positive,
    comparisons,
    est,
    gain_pct,
    keep,
    measurement_means,
    model_variants,
    outputs_match,
    pct_less,
    pick,
    questions_text,
    target_tables,
)

GAIN_METRICS = {"batching": "batching_gain_pct", "caching": "caching_gain_pct",
                "retry": "retry_gain_pct", "framing": "streaming_gain_pct", "all": "gain_pct"}


def warm_models(models: list[str]) -> list[tuple[str, Request]]:
    return [("generate", Request("warmup", max_tokens=2, model=m)) for m in models]


@dataclass(frozen=True)
class Baseline(Workload):
    """The 50-question generation run: direct vs phase0 vs the chosen phases (or any
    targets), one question at a time through every target in turn. Warm-up: every prompt
    length once, untimed, on every target. Smoke: 6 questions."""

    name = "baseline"
    default_phases = "all"
    uses_direct = True
    SMOKE = {"questions": 6}

    questions: int | None = None  # None: all 50
    max_tokens: int = 50
    warmup: bool = True

    def validate(self, model):
        check_positive(self.name, max_tokens=self.max_tokens)
        if self.questions is not None:
            check_positive(self.name, questions=self.questions)

    def requests(self) -> list[Request]:
        qs = load_questions()[0][: self.questions]
        return [Request(q.question, max_tokens=self.max_tokens, id=q.id) for q in qs]

    def planned_records(self, n_targets):
        return len(self.requests()) * n_targets

    async def run(self, run, group=0):
        reqs = self.requests()
        if self.warmup:
            await run.warm([("generate", r) for r in run.shapes(reqs)],
                           label="every prompt length once")
        await run.trials(lambda trial: run.sequence(reqs, trial, series="baseline"))

    def summarize(self, records, config):
        df = metrics.to_frame(records)
        names = list(df["target"].unique())
        out = {"targets": target_tables(df)}
        if DIRECT in names and len(names) > 1:
            smoke = is_smoke(config)
            out["overhead"] = [{**row, **overhead_verdicts(row, smoke=smoke)} for row in
                               metrics.overhead(df, DIRECT).to_dict(orient="records")]
            out["outputs_match"] = outputs_match(df, DIRECT, [n for n in names if n != DIRECT])
            out["hops_vs_direct"] = [row for n in names if n != DIRECT
                                     for row in hops.attribution(df, DIRECT, n)]
        out["hops"] = hops.breakdown(df)
        out["stage_hops"] = hops.stage_breakdown(df)
        others = [e for e in names if e not in (BASE, DIRECT)]
        out["comparisons"] = comparisons(df, BASE, others) if BASE in names else []
        out["outputs_match_phase0"] = outputs_match(df, BASE, others) if BASE in names else []
        out["estimates"] = self.estimates(df)
        return out

    def estimates(self, df) -> list[dict]:
        w, engines = self.name, set(df["target"])
        if BASE not in engines:
            return []
        ok = df[(df["target"] == BASE) & df["ok"]]
        totals = metrics.trial_totals(df)
        p0 = totals[totals["target"] == BASE]
        total_s = float(p0["busy_s"].mean())
        e2e, ttft = metrics.mean_ci(ok["e2e_ms"]), metrics.mean_ci(ok["ttft_ms"])
        rows = [est(w, "total_s", total_s, source="phase0: sum of E2E over the questions"),
                est(w, "per_question_s", total_s / max(1, ok["request_id"].nunique()),
                    source="phase0 total / questions"),
                est(w, "e2e_ms_mean", e2e["mean"], e2e["ci_low"], e2e["ci_high"], "phase0 mean E2E"),
                est(w, "ttft_ms_mean", ttft["mean"], ttft["ci_low"], ttft["ci_high"], "phase0 mean TTFT"),
                est(w, "throughput_tok_s", float(p0["throughput_tps"].mean()),
                    source="phase0 output tokens / sum of E2E")]
        if DIRECT in engines:
            c = metrics.compare(df, DIRECT, BASE, "e2e_ms")
            rows.append(est(w, "overhead_pct", (c["ratio"] - 1) * 100, (c["ratio_ci_low"] - 1) * 100,
                            (c["ratio_ci_high"] - 1) * 100, "phase0 mean E2E / direct - 1", n=c["n"]))
            t = metrics.paired_totals(df, DIRECT, BASE)
            if t:
                rows.append(est(w, "total_overhead_s", t["diff"] / 1e3, t["ci_low"] / 1e3,
                                t["ci_high"] / 1e3, "phase0 total - direct total"))
            for metric, (mean, lo, hi, n) in hops.grouped(df, DIRECT, BASE).items():
                rows.append(est("ipc_per_request", metric, mean, lo, hi, n=n,
                                source=f"phase0 - direct, TTFT hops {' + '.join(hops.IPC_HOPS[metric])}"))
        # each phase alone against phase 0 (its own reference rows), and all of them together
        for engine, metric in GAIN_METRICS.items():
            if engine not in engines:
                continue
            t = metrics.paired_totals(df, BASE, engine)
            n = t["n"] if t else None
            rows.append(est(w, metric, *gain_pct(t), source=f"phase0 total / {engine} total - 1", n=n))
            if t:
                name = "speedup_x" if engine == "all" else f"{engine}_speedup_x"
                rows.append(est(w, name, t["speedup_x"], t["speedup_ci_low"], t["speedup_ci_high"],
                                f"phase0 total / {engine} total", n=n))
        if "retry" in engines:
            c = metrics.compare(df, BASE, "retry", "e2e_ms")
            rows.append(est(w, "retry_overhead_ms_mean", c["diff"], c["ci_low"], c["ci_high"],
                            "retry mean E2E - phase0 mean E2E"))
        return keep(rows)


@dataclass(frozen=True)
class ModelSwitching(Workload):
    """Each request is one short generate on the next of ``n_models`` variants
    (``{model}@1..@N``), for each count in ``switches``; phase0 (SingleModel: every request
    unloads and loads) vs caching (ModelCache, 5 models). With ``warm_cache`` every engine
    first runs each model once, unrecorded (the reference's "all cached" case). After the runs,
    ``load_model`` of each model is timed on engines with a cache (the cache-hit cost).
    Smoke: 6 switches."""

    name = "model_switching"
    default_phases = "caching"
    SMOKE = {"switches": (6,), "max_tokens": 8}

    switches: tuple[int, ...] = (10, 100)
    n_models: int = 5
    max_tokens: int = 8
    warm_cache: bool = True

    def models(self, model):
        return model_variants(self.name, model, self.n_models)

    def validate(self, model):
        self.models(model)
        if not self.switches:
            raise ConfigError(f"{self.name}: switches must name at least one count")
        check_positive(self.name, max_tokens=self.max_tokens, **{f"switches[{i}]": n for i, n in
                                                                 enumerate(self.switches)})

    def planned_records(self, n_engines):
        return sum(self.switches) * n_engines

    def series_requests(self, model: str, n: int, texts: list[str]) -> list[Request]:
        models = self.models(model)
        return [Request(texts[i % len(texts)], max_tokens=self.max_tokens, model=models[i % len(models)],
                        id=f"sw{n}-{i:03d}") for i in range(n)]

    async def run(self, run, group=0):
        model, texts = run.model, questions_text()
        if self.warm_cache:
            await run.warm(warm_models(self.models(model)), label="each model once")

        async def body(trial):
            for n in self.switches:
                await run.sequence(self.series_requests(model, n, texts), trial,
                                   series=f"switches_{n}", measure=True, switch=True)
            await probe_loads(run, self.models(model), trial)

        await run.trials(body)

    def summarize(self, records, config):
        df = metrics.to_frame(records)
        out = {"targets": target_tables(df, "series"), "comparisons": [], "totals": [],
               "outputs_match": [], "estimates": []}
        probe = df[df["kind"] == "load"]
        for n in self.switches:
            part = df[df["series"] == f"switches_{n}"]
            if part.empty:
                continue
            others = [e for e in part["target"].unique() if e != BASE]
            out["comparisons"] += comparisons(part, BASE, others, ("e2e_ms",))
            out["outputs_match"] += outputs_match(part, BASE, others)
            out["totals"] += switch_totals(part, others, config, f"switches_{n}")
            out["estimates"] += switch_estimates(f"model_switching_{n}", part, probe, config,
                                                 f"switches_{n}")
        out["headline"] = out["totals"]
        return out


async def probe_loads(run, models: list[str], trial: int) -> None:
    """Time a load of each (resident) model on the targets that have a model cache."""
    cached = [n for n, t in run.targets.items() if "model_cache" in t.stats()]
    if cached:
        reqs = [Request("load_model", max_tokens=1, model=m, id=f"probe-{m}") for m in models]
        await run.sequence(reqs, trial, kind="load", series="load_probe", targets=cached)


def switch_totals(part, others: list[str], config: dict, series: str) -> list[dict]:
    """Per engine: total (sum of E2E), switches/loads from stage stats, speedup over phase0."""
    rows = []
    for engine in [BASE, *others]:
        m = measurement_means(config, series, engine)
        ok = part[(part["target"] == engine) & part["ok"]]
        row = {"series": series, "target": engine, "requests": int((part["target"] == engine).sum()),
               "errors": int(((part["target"] == engine) & ~part["ok"]).sum()),
               "total_s": float(ok["e2e_ms"].sum() / 1e3 / max(1, part["trial"].nunique())),
               "loads": m.get("single_model.switches", m.get("model_cache.loads", 0.0)),
               "load_s": (m.get("single_model.load_ms_total", 0.0) + m.get("model_cache.load_ms_total", 0.0)
                          + m.get("model_cache.warmup_ms_total", 0.0)) / 1e3,
               "cache_hits": m.get("model_cache.hits", math.nan)}
        t = metrics.paired_totals(part, BASE, engine) if engine != BASE else None
        if t:
            row.update({"speedup_x": t["speedup_x"], "ci_low": t["speedup_ci_low"],
                        "ci_high": t["speedup_ci_high"]})
        rows.append(row)
    return rows


def switch_estimates(w: str, part, probe, config: dict, series: str) -> list[dict]:
    """Reference rows of phase2 (model loads, caching) for one switching series."""
    engines = set(part["target"])
    opt = pick(engines, "caching", "all")
    if BASE not in engines:
        return []
    base_m = measurement_means(config, series, BASE)
    loads = base_m.get("single_model.switches", 0)
    base_load_s = base_m.get("single_model.load_ms_total", math.nan) / 1e3
    totals = metrics.trial_totals(part).set_index("target")["busy_s"].groupby(level=0).mean()
    rows = [est(w, "total_s", totals.get(BASE), source="phase0 sum of E2E"),
            est(w, "switch_overhead_s", base_load_s,
                source="phase0 single_model.load_ms_total (model loads; unloads not timed)"),
            est(w, "model_load_s", base_load_s / loads if loads else math.nan,
                source="phase0 load time / loads")]
    if opt:
        m = measurement_means(config, series, opt)
        opt_load_s = (m.get("model_cache.load_ms_total", 0.0) + m.get("model_cache.warmup_ms_total", 0.0)) / 1e3
        t = metrics.paired_totals(part, BASE, opt)
        hits = probe[(probe["target"] == opt) & probe["ok"]]["e2e_ms"]
        ci = metrics.mean_ci(hits)
        rows += [est(w, "total_s_optimized", totals.get(opt), source=f"{opt} sum of E2E"),
                 est(w, "switch_overhead_s_optimized", opt_load_s,
                     source=f"{opt} model_cache load + warmup ms during the series"),
                 est(w, "switch_overhead_reduction_pct", pct_less(opt_load_s, base_load_s),
                     source=f"1 - {opt} load time / phase0 load time"),
                 est(w, "cached_load_ms", ci["mean"], ci["ci_low"], ci["ci_high"],
                     f"{opt}: load_model of a resident model (probe)")]
        if t:
            rows.append(est(w, "speedup_x", t["speedup_x"], t["speedup_ci_low"], t["speedup_ci_high"],
                            f"phase0 total / {opt} total"))
    return keep(rows)


@dataclass(frozen=True)
class MultiTenant(Workload):
    """The questions round robin over ``n_models`` tenants' models (``{model}@1..@N``),
    one at a time: phase0 (SingleModel) vs caching. Smoke: 6 questions, 16 tokens."""

    name = "multi_tenant"
    default_phases = "caching"
    SMOKE = {"questions": 6, "max_tokens": 16}

    questions: int | None = None
    max_tokens: int = 50
    n_models: int = 5
    warm_cache: bool = True

    def models(self, model):
        return model_variants(self.name, model, self.n_models)

    def validate(self, model):
        self.models(model)
        check_positive(self.name, max_tokens=self.max_tokens)

    def requests(self, model) -> list[Request]:
        models = self.models(model)
        return [Request(q.question, max_tokens=self.max_tokens, model=models[i % len(models)], id=q.id)
                for i, q in enumerate(load_questions()[0][: self.questions])]

    async def run(self, run, group=0):
        if self.warm_cache:
            await run.warm(warm_models(self.models(run.model)), label="each model once")
        await run.trials(lambda trial: run.sequence(self.requests(run.model), trial,
                                                    series="tenants", measure=True))

    def summarize(self, records, config):
        df = metrics.to_frame(records)
        others = [e for e in df["target"].unique() if e != BASE]
        totals = switch_totals(df, others, config, "tenants") if BASE in set(df["target"]) else []
        opt = next((r for r in totals if r["target"] == pick(df["target"].unique(), "caching", "all")), None)
        rows = []
        if opt and "speedup_x" in opt:
            base = next(r for r in totals if r["target"] == BASE)
            rows = keep([est(self.name, "speedup_x", opt["speedup_x"], opt["ci_low"], opt["ci_high"],
                             f"phase0 total / {opt['target']} total"),
                         est(self.name, "total_s", base["total_s"], source="phase0 sum of E2E"),
                         est(self.name, "total_s_optimized", opt["total_s"],
                             source=f"{opt['target']} sum of E2E")])
        return {"targets": target_tables(df), "comparisons": comparisons(df, BASE, others),
                "outputs_match": outputs_match(df, BASE, others), "totals": totals,
                "headline": totals, "estimates": rows}
