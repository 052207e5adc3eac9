"""What every workload shares: the Workload contract, the engine pool, the run context,
request helpers that turn calls into records, and the summary/estimate helpers.

A workload (see :mod:`krmlx.bench.workloads` for the registry) is a frozen dataclass of
its parameters. Its life, driven by :func:`krmlx.bench.workloads.run_workload`:

1. ``validate(model)`` raises :class:`~krmlx.errors.ConfigError` for a setting it cannot
   run (before any engine starts); ``engine_groups(model, phases)`` names the engine
   configurations it compares, as groups started one after another (most have one group;
   ``error_rates`` has one per fault rate);
2. ``run(engines, ctx, group)`` sends its requests through the started engines of a group,
   appending one record per request per trial (``runner.record_of``: ``engine`` names the
   configuration, ``workload`` the workload, plus ``kind`` and ``series``) to ``ctx``;
3. ``summarize(records, config)`` is pure: per-engine tables (``metrics.summarize``),
   comparisons with CIs (``metrics.compare`` / ``paired_totals``) and ``estimates`` rows
   ``{workload, metric, measured, ci_low, ci_high, source}`` named as in data/estimates.json.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

import pandas as pd

from ..direct import DirectEngine
from ..engine import Engine
from ..errors import ConfigError
from ..models import ModelSpec, parse_name, resolve_model
from ..questions import load_questions
from ..stack import StackConfig
from ..types import Request
from . import metrics
from .baseline import make_configs
from .runner import LoadMeter, RunPlan, record_of, settle

DIRECT = "direct"  # the engine spec of the in-process baseline
BASE = "phase0"
DEFAULT_CACHE_MODELS = 5  # the caching phase keeps this many models (the reference's 5 tenants)


# -- the contract ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    """Base of the workloads. Subclasses set ``name``, ``default_phases``, ``uses_direct``
    and ``SMOKE`` (parameter values that ``smoke=True`` fills in unless given)."""

    name: ClassVar[str] = ""
    default_phases: ClassVar[str] = "all"
    uses_direct: ClassVar[bool] = False
    SMOKE: ClassVar[dict] = {}

    smoke: bool = False
    seed: int = 1

    @classmethod
    def make(cls, *, smoke: bool = False, **params) -> Workload:
        """The workload with ``params``; smoke sizes fill in what ``params`` leaves out."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(f"{cls.name}: unknown parameter(s) {unknown}; it takes "
                              f"{sorted(known - {'smoke'})}")
        return cls(smoke=smoke, **({**cls.SMOKE, **params} if smoke else params))

    @classmethod
    def accepts(cls, param: str) -> bool:
        return param in {f.name for f in fields(cls)}

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def models(self, model: str) -> list[str]:
        """Every model the requests name (built before any engine starts)."""
        return [model]

    def validate(self, model: str) -> None:
        """Raise ConfigError if this workload cannot run on ``model``."""

    def engine_groups(self, model: str, phases: str | None) -> list[dict]:
        """Groups of {engine name: DIRECT or StackConfig}, run one group after another."""
        group = {DIRECT: DIRECT} if self.uses_direct else {}
        group.update(self.adjust_configs(make_configs(phases or self.default_phases)))
        return [group]

    def adjust_configs(self, configs: dict[str, StackConfig]) -> dict[str, StackConfig]:
        """Caching keeps DEFAULT_CACHE_MODELS models (the base model and 4 tenants fit)."""
        from ..stages.model_cache import ModelCacheConfig

        out = {}
        for name, cfg in configs.items():
            cache = cfg.find(ModelCacheConfig)
            if cache is not None and cache.max_models < DEFAULT_CACHE_MODELS:
                cfg = cfg.with_layer(replace(cache, max_models=DEFAULT_CACHE_MODELS))
            out[name] = cfg
        return out

    def planned_records(self, n_engines: int) -> int | None:
        return None

    async def run(self, engines: dict, ctx: RunContext, group: int = 0) -> None:  # pragma: no cover
        raise NotImplementedError

    def summarize(self, records: list[dict], config: dict) -> dict:  # pragma: no cover
        raise NotImplementedError


# -- engines --------------------------------------------------------------------------------------

class EnginePool:
    """Started engines, reused by (model, spec): a spec is DIRECT or a StackConfig. A pool
    shared across workloads (tests, notebooks) starts each configuration once; the owner
    closes it (``async with EnginePool(model) as pool``)."""

    def __init__(self, model: str):
        self.model = model
        self._items: list[tuple[object, object]] = []  # (spec, started engine)

    def find(self, spec):
        return next((e for s, e in self._items if s == spec), None)

    async def get_many(self, specs: dict) -> dict:
        """{name: started engine} for {name: spec}; missing ones start (workers in parallel)."""
        if DIRECT in specs.values() and self.find(DIRECT) is None:
            self._items.append((DIRECT, await DirectEngine(resolve_model(self.model)).start()))
        todo = []
        for spec in specs.values():
            if self.find(spec) is None and all(spec != s for s in todo):
                todo.append(spec)
        engines = [Engine(self.model, spec) for spec in todo]
        self._items.extend(zip(todo, engines, strict=True))  # registered first, so close() reaches them
        await asyncio.gather(*(e.start() for e in engines))
        return {name: self.find(spec) for name, spec in specs.items()}

    async def close(self) -> None:
        items, self._items = self._items, []
        await asyncio.gather(*(e.close() for _, e in items), return_exceptions=True)

    async def __aenter__(self) -> EnginePool:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def spec_dict(spec) -> dict | str:
    return spec if spec == DIRECT else spec.to_dict()


def has_stage(engine, stage: str) -> bool:
    return stage in stage_stats(engine)


def stage_stats(engine) -> dict:
    return engine.stats() if isinstance(engine, Engine) else {}


GAUGES = ("mean", "max", "min")  # stats named so are not counters: a difference means nothing


def stats_delta(before: dict, after: dict) -> dict:
    """Numeric counters of the stages, flattened to ``stage.key``: after - before. Means and
    maxima are left out (a batcher's ``mean_batch_size`` is recomputed from the deltas of
    its ``items`` and ``batches``)."""
    out = {}
    for stage, stats in after.items():
        for key, value in stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and not any(g in key for g in GAUGES):
                out[f"{stage}.{key}"] = value - before.get(stage, {}).get(key, 0)
        batches = out.get(f"{stage}.batches")
        if batches and f"{stage}.items" in out:
            out[f"{stage}.mean_batch_size"] = out[f"{stage}.items"] / batches
    return out


def with_framer(cfg, coalesce_tokens: int, coalesce_ms: float):
    """The config with its framer's coalescing set (configs without framing unchanged)."""
    if cfg == DIRECT or cfg.framer is None:
        return cfg
    return cfg.with_layer(replace(cfg.framer, coalesce_tokens=coalesce_tokens,
                                  coalesce_ms=coalesce_ms))


def model_variants(workload: str, model: str, n: int) -> list[str]:
    """``{preset}@1 .. @n`` for a synthetic preset name; ConfigError otherwise."""
    if n < 2:
        raise ConfigError(f"{workload}: needs at least 2 models to switch between, got n_models={n}")
    spec = parse_name(model)
    if spec is None or spec.seed:
        raise ConfigError(f"{workload}: model {model!r} is not a synthetic preset name without "
                          "@SEED (e.g. 'tiny', 'mini'); it needs the preset's @1..@N variants")
    return [ModelSpec(spec.preset, spec.quantized, k).name for k in range(1, n + 1)]


def check_positive(workload: str, **values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{workload}: {name} must be a positive number, got {value!r}")


def questions_text() -> list[str]:
    return [q.question for q in load_questions()[0]]


# -- running --------------------------------------------------------------------------------------

@dataclass
class RunContext:
    """Where a run's records and measurements go (kept on Ctrl-C), and its trial plan."""

    plan: RunPlan
    workload: str
    model: str = ""
    sink: list = field(default_factory=list)
    measurements: list = field(default_factory=list)
    progress: object = None

    def add(self, record: dict) -> None:
        self.sink.append(record)
        if self.progress is not None:
            self.progress.update(1)

    async def trials(self, body, *, group: str = "") -> None:
        """Run ``await body(trial)`` for each trial under a LoadMeter; a trial disturbed by
        other processes is dropped and re-run (up to ``plan.max_reruns``), like run_interleaved."""
        trial = reruns = 0
        while trial < self.plan.trials:
            start, mstart = len(self.sink), len(self.measurements)
            settle()
            with LoadMeter() as meter:
                await body(trial)
            disturbed = meter.cores > self.plan.load_limit_cores
            keep = not disturbed or reruns >= self.plan.max_reruns
            self.plan.trial_log.append({"trial": trial, "group": group, "disturbed": disturbed,
                                        "foreign_cpu_cores": round(meter.cores, 3), "kept": keep})
            if not keep:
                reruns += 1
                del self.sink[start:], self.measurements[mstart:]
                continue
            for rec in self.sink[start:]:
                rec["foreign_cpu_cores"], rec["disturbed"] = round(meter.cores, 3), disturbed
            trial += 1


def rotate(names: list, k: int) -> list:
    k %= max(1, len(names))
    return names[k:] + names[:k]


async def generate_record(name, engine, req: Request, trial: int, workload: str, **extra) -> dict:
    """Complete ``req`` on ``engine``; the record (an error is a record, not a crash)."""
    t0 = time.perf_counter()
    try:
        done = await engine.complete(req)
        return record_of(name, trial, req, done, t_start_s=t0, workload=workload,
                         extra={"kind": "generate", **extra})
    except Exception as e:  # noqa: BLE001
        return record_of(name, trial, req, error=e, t_start_s=t0, workload=workload,
                         extra={"kind": "generate", **extra})


async def tokenize_record(name, engine, req: Request, trial: int, workload: str, **extra) -> dict:
    """Tokenize ``req.prompt`` (on ``req.model`` where the engine serves several)."""
    t0 = time.perf_counter()
    try:
        if isinstance(engine, Engine):
            ids = await engine.tokenize(req.prompt, model=req.model)
        else:
            ids = await engine.tokenize(req.prompt)
    except Exception as e:  # noqa: BLE001
        return record_of(name, trial, req, error=e, t_start_s=t0, workload=workload,
                         extra={"kind": "tokenize", **extra})
    t1 = time.perf_counter()
    return record_of(name, trial, req, t_start_s=t0, workload=workload,
                     extra={"kind": "tokenize", "e2e_ms": (t1 - t0) * 1e3, "t_end_s": t1,
                            "prompt_tokens": len(ids), "finish_reason": "tokenized", **extra})


async def gather_limited(factories: list, concurrency: int) -> None:
    """Await every ``factory()`` with at most ``concurrency`` running at once."""
    sem = asyncio.Semaphore(concurrency)

    async def one(factory):
        async with sem:
            await factory()

    await asyncio.gather(*(one(f) for f in factories))


async def warm(engine, requests: list[Request]) -> None:
    """Unrecorded requests that compile, allocate and load (errors ignored: faults may hit)."""
    for req in requests:
        try:
            await engine.complete(req)
        except Exception:  # noqa: BLE001
            pass


# -- summaries ------------------------------------------------------------------------------------

def frame(records: list[dict]) -> pd.DataFrame:
    df = metrics.to_frame(records)
    for col, default in (("kind", "generate"), ("series", "")):
        if col not in df:
            df[col] = default
        df[col] = df[col].fillna(default)
    return df


def engine_tables(df: pd.DataFrame, by: str | None = None) -> list[dict]:
    table = metrics.summarize_by(df, by) if by else metrics.summarize(df)
    return table.to_dict(orient="records")


def comparisons(df: pd.DataFrame, base: str, others: list[str],
                metrics_: tuple = ("ttft_ms", "e2e_ms")) -> list[dict]:
    """``metrics.compare`` of each other engine against ``base`` (where both have >= 2 ok)."""
    rows = []
    for other in others:
        for metric in metrics_:
            try:
                rows.append(metrics.compare(df, base, other, metric))
            except (ValueError, KeyError):
                pass
    return rows


def outputs_match(df: pd.DataFrame, base: str, others: list[str]) -> list[dict]:
    """Per engine: generate requests (ok in both) whose greedy token ids equal ``base``'s."""
    gen = df[df["kind"].isin(["generate", "switch"]) & df["ok"]]
    ref = {(r.trial, r.request_id): r.output_ids for r in gen[gen["engine"] == base].itertuples()}
    rows = []
    for other in others:
        part = [r for r in gen[gen["engine"] == other].itertuples() if (r.trial, r.request_id) in ref]
        same = sum(ref[(r.trial, r.request_id)] == r.output_ids for r in part)
        rows.append({"engine": other, "base": base, "compared": len(part), "identical_outputs": same})
    return rows


def pick(names, *preferred: str) -> str | None:
    """The first of ``preferred`` among ``names``, else the first name that is not phase0/direct."""
    names = list(names)
    for p in preferred:
        if p in names:
            return p
    return next((n for n in names if n not in (BASE, DIRECT)), None)


def est(workload: str, metric: str, measured, ci_low=math.nan, ci_high=math.nan,
        source: str = "") -> dict | None:
    """One estimates row, or None when nothing was measured."""
    if measured is None or pd.isna(measured):
        return None

    def clean(x):
        return math.nan if x is None or pd.isna(x) else float(x)

    return {"workload": workload, "metric": metric, "measured": float(measured),
            "ci_low": clean(ci_low), "ci_high": clean(ci_high), "source": source}


def pct_less(new: float, old: float) -> float:
    """(1 - new / old) * 100: the reduction from ``old`` to ``new`` in percent."""
    return (1 - new / old) * 100 if old else math.nan


def gain_pct(t: dict | None) -> tuple[float, float, float]:
    """(speedup - 1) * 100 and its CI from a :func:`metrics.paired_totals` result."""
    if t is None:
        return math.nan, math.nan, math.nan
    return tuple((t[k] - 1) * 100 for k in ("speedup_x", "speedup_ci_low", "speedup_ci_high"))


def reduction_pct(t: dict | None) -> tuple[float, float, float]:
    """(1 - other/base) * 100 with its CI from a :func:`metrics.paired_totals` result."""
    if t is None:
        return math.nan, math.nan, math.nan
    return ((1 - t["ratio"]) * 100, (1 - t["ratio_ci_high"]) * 100, (1 - t["ratio_ci_low"]) * 100)


def keep(rows) -> list[dict]:
    return [r for r in rows if r is not None]


def measurement_means(config: dict, series: str, engine: str) -> dict:
    """Mean over trials of the stage-stat deltas recorded for (series, engine)."""
    rows = [m for m in config.get("measurements", []) if m.get("series") == series
            and m.get("engine") == engine]
    if not rows:
        return {}
    keys = {k for m in rows for k, v in m.items() if isinstance(v, (int, float)) and k != "trial"}
    return {k: sum(m.get(k, 0) for m in rows) / len(rows) for k in keys}
