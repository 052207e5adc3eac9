"""What every workload shares: the Workload contract and the summary helpers.

A workload (the registry is :mod:`krmlx.bench.workloads`) is a frozen dataclass of its
parameters. It makes requests and says how they are sent; it never talks to a serving
layer itself (the runner, :mod:`krmlx.bench.runner`, and the targets,
:mod:`krmlx.bench.targets`, do). Its life, driven by :func:`krmlx.bench.runner.run_workload`:

1. ``validate(model)`` raises :class:`~krmlx.errors.ConfigError` for a setting it cannot
   run, before anything starts; ``default_targets(phases)`` are the targets it compares
   when the caller names none (``--phases``: ``direct`` where it has one, and engines of
   the phases); ``adapt(target)`` adjusts any target to the workload (the caching phase
   keeps 5 models; long_form's framing coalesces); ``groups(targets)`` splits them into
   groups run one after another (one group by default; ``error_rates``: one per fault
   rate; ``distributed``: each target alone);
2. ``run(run, group)`` sends its requests through the run's primitives (``sequence``,
   ``batch``, ``wave``, ``arrivals``, ``warm``, ``trials``), which write one record per
   request per target per trial (``target`` names it);
3. ``summarize(records, config)`` is pure: per-target tables (``metrics.summarize``),
   comparisons with CIs and ``estimates`` rows ``{workload, metric, measured, ci_low,
   ci_high, source}`` named as in data/estimates.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import ClassVar

import pandas as pd

from ...errors import ConfigError
from ...models import ModelSpec, parse_name
from ...questions import load_questions
from ...stack import PHASES, StackConfig, parse_phases
from .. import metrics
from ..targets import DirectTarget, EngineTarget, Target, make_target

DIRECT = "direct"  # the name of the in-process baseline target
BASE = "phase0"  # the plain serving layer: what phases are compared against
DEFAULT_CACHE_MODELS = 5  # the caching phase keeps this many models (the reference's 5 tenants)


def phase_configs(phases: str) -> dict[str, StackConfig]:
    """Engine configurations to compare for ``--phases``: ``each`` (each phase alone, then
    all), ``all`` (all together), or a :func:`~krmlx.stack.parse_phases` list (each of its
    phases alone; ``phase0``/``none``: no more); phase0 is always there."""
    configs = {BASE: StackConfig()}
    text = (phases or "").strip().lower()
    if text == "all":
        configs["all"] = StackConfig.all()
        return configs
    names = PHASES if text == "each" else parse_phases(phases or "")
    for name in names:
        configs[name] = StackConfig.phases([name])
    if text == "each":
        configs["all"] = StackConfig.all()
    return configs


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
    aa: bool = False  # an A/A control: the first target measured twice (see with_aa_control)

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
        """Every model the requests name (built before any target starts)."""
        return [model]

    def validate(self, model: str) -> None:
        """Raise ConfigError if this workload cannot run on ``model``."""

    def default_targets(self, phases: str | None, model: str) -> list[Target]:
        """``direct`` (where the workload has one) and an engine per configuration of
        ``phases`` (the workload's own default when None)."""
        out: list[Target] = [DirectTarget()] if self.uses_direct else []
        return out + [EngineTarget(cfg, name) for name, cfg in
                      phase_configs(phases or self.default_phases).items()]

    def adapt(self, target: Target) -> Target:
        """Caching keeps DEFAULT_CACHE_MODELS models (the base model and 4 tenants fit)."""
        if isinstance(target, EngineTarget):
            from ...stages.model_cache import ModelCacheConfig

            cache = target.config.find(ModelCacheConfig)
            if cache is not None and cache.max_models < DEFAULT_CACHE_MODELS:
                return target.with_config(target.config.with_layer(
                    replace(cache, max_models=DEFAULT_CACHE_MODELS)))
        return target

    def with_aa_control(self, targets: list[Target]) -> list[Target]:
        """With ``aa`` on, a second, independent instance of the first target (named
        ``NAME~aa``) right after it: the same thing measured twice, interleaved like any
        other target, so its difference from the first is what "no difference" looks like
        on this host (docs/methodology.md). Unchanged with ``aa`` off."""
        if not self.aa or not targets:
            return targets
        first, name = targets[0], f"{targets[0].name}~aa"
        if isinstance(first, EngineTarget):
            twin = first.with_config(first.config, name)
        elif isinstance(first, DirectTarget):
            twin = DirectTarget(name, first.spec)
        else:
            twin = make_target(f"{name}={first.spec}")
        return [first, twin, *targets[1:]]

    def groups(self, targets: list[Target]) -> list[tuple[str, list[Target]]]:
        """(group name, targets) run one group after another; one group by default."""
        return [("", targets)]

    def planned_records(self, n_targets: int) -> int | None:
        return None

    async def run(self, run, group: int = 0) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def summarize(self, records: list[dict], config: dict) -> dict:  # pragma: no cover
        raise NotImplementedError


# -- requests and checks --------------------------------------------------------------------------

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


# -- summaries ------------------------------------------------------------------------------------

def target_tables(df: pd.DataFrame, by: str | None = None) -> list[dict]:
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
    """Per target: generate requests (ok in both) whose greedy output equals ``base``'s:
    token ids where both have them, else text (a server sends text)."""
    gen = df[df["kind"].isin(["generate", "switch"]) & df["ok"]]
    has_text = "output_text" in gen
    ref = {(r.trial, r.request_id): r for r in gen[gen["target"] == base].itertuples()}
    rows = []
    for other in others:
        part = [r for r in gen[gen["target"] == other].itertuples() if (r.trial, r.request_id) in ref]
        same = by_text = 0
        for r in part:
            a = ref[(r.trial, r.request_id)]
            if len(a.output_ids) and len(r.output_ids):
                same += a.output_ids == r.output_ids
            elif has_text:
                by_text += 1
                same += a.output_text == r.output_text
        rows.append({"target": other, "base": base, "compared": len(part),
                     "identical_outputs": same, "compared_as_text": by_text})
    return rows


def pick(names, *preferred: str) -> str | None:
    """The first of ``preferred`` among ``names``, else the first name that is not phase0/direct."""
    names = list(names)
    for p in preferred:
        if p in names:
            return p
    return next((n for n in names if n not in (BASE, DIRECT)), None)


def est(workload: str, metric: str, measured, ci_low=math.nan, ci_high=math.nan,
        source: str = "", n: int | None = None) -> dict | None:
    """One estimates row, or None when nothing was measured. ``n``: the pairs (or trials)
    behind the CI, from which a verdict says how many would resolve it."""
    if measured is None or pd.isna(measured):
        return None

    def clean(x):
        return math.nan if x is None or pd.isna(x) else float(x)

    row = {"workload": workload, "metric": metric, "measured": float(measured),
           "ci_low": clean(ci_low), "ci_high": clean(ci_high), "source": source}
    return {**row, "n": int(n)} if n else row


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
            and m.get("target") == engine]
    if not rows:
        return {}
    keys = {k for m in rows for k, v in m.items() if isinstance(v, (int, float)) and k != "trial"}
    return {k: sum(m.get(k, 0) for m in rows) / len(rows) for k in keys}
