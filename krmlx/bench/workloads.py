"""The workloads of issue 5, by name, and :func:`run_workload`, which runs one of them::

    import asyncio
    from krmlx.bench.workloads import make_workload, run_workload, estimate_tables

    wl = make_workload("tokenize_flood", smoke=True)      # ConfigError for bad parameters
    doc = asyncio.run(run_workload(wl, "tiny"))           # env, config, records, summary
    estimate_tables(doc)["phase1_tokenize"]               # the reference's figures beside ours

=================  ==========================================================  ==========
name               what (parameters)                                           smoke
=================  ==========================================================  ==========
baseline           the 50 questions, direct vs phase0 vs phases                6 questions
                   (questions, max_tokens, warmup)
tokenize_flood     N tokenize calls, C in flight (requests=1000, concurrency)  100
model_switching    each request on the next of 5 variants {model}@1..@5        6 switches
                   (switches=(10, 100), n_models, max_tokens, warm_cache)
multi_tenant       the questions round robin over 5 variants                   6 questions
mixed              40% generate / 40% tokenize / 20% switch, seeded order      20 requests
                   (requests, shares, n_models, concurrency)
error_rates        transient faults on generate (fault_rates=(0,.05,.1,.2),    rates 0, .1;
                   questions, user_retries, user_retry_delay_s)                10 questions
long_form          long generations (requests=3, max_tokens=1000, coalesce)    2 x 200 tok
server_profile     Poisson arrivals, tokenize:generate 20:1 (rate, duration_s, 2 s
                   max_requests, max_tokens, n_models, error_rate)
rate_sweep         server_profile at each of rates (rates, duration_s)         5, 20 req/s
=================  ==========================================================  ==========

Every workload takes ``seed`` (request order, arrivals, fault draws). Default engine
configurations (``--phases``) per workload: baseline ``all`` (+direct), tokenize_flood
``batching`` (+direct), model_switching / multi_tenant ``caching``, mixed / server_profile /
rate_sweep ``all``, error_rates ``retry``, long_form ``framing`` (+direct). phase0 is always
there: it is what the others are compared against. Workload-specific adjustments: the
caching phase keeps 5 models; long_form's framing coalesces 4 tokens per frame.
"""

from __future__ import annotations

import math
import time

import pandas as pd

from ..blas import running_on_preferred_blas
from ..doctor import collect_env
from ..errors import ConfigError
from ..models import model_bytes, resolve_model
from ..questions import load_questions
from .estimates import compare_estimates
from .runner import RunPlan
from .workloads_core import DIRECT, EnginePool, RunContext, Workload, spec_dict, stage_stats
from .workloads_dist import Distributed
from .workloads_err import ErrorRates
from .workloads_load import Mixed, RateSweep, ServerProfile, TokenizeFlood
from .workloads_long import LongForm
from .workloads_seq import Baseline, ModelSwitching, MultiTenant

WORKLOADS: dict[str, type[Workload]] = {cls.name: cls for cls in (
    Baseline, TokenizeFlood, ModelSwitching, MultiTenant, Mixed, ErrorRates, LongForm,
    ServerProfile, RateSweep, Distributed)}
SUITE = tuple(n for n in WORKLOADS if n != Distributed.name)  # ``bench suite``, in order

__all__ = ["SUITE", "WORKLOADS", "EnginePool", "Workload", "estimate_tables", "make_workload",
           "measured_estimates", "prepare", "run_workload", "summarize_partial"]


def make_workload(name: str, *, smoke: bool = False, **params) -> Workload:
    """The workload called ``name`` with ``params`` (smoke sizes fill in the rest)."""
    cls = WORKLOADS.get(name)
    if cls is None:
        raise ConfigError(f"unknown workload {name!r}; workloads: {', '.join(WORKLOADS)} (or suite)")
    return cls.make(smoke=smoke, **params)


def prepare(workload: Workload, model: str, phases: str | None = None) -> list[dict]:
    """Check ``workload`` can run on ``model`` and build the models it names; the engine
    groups. Raises ConfigError (or UnknownModel) before any engine starts."""
    workload.validate(model)
    groups = workload.engine_groups(model, phases)
    if not any(groups):
        raise ConfigError(f"{workload.name}: no engine configuration to run")
    for m in dict.fromkeys([model, *workload.models(model)]):
        resolve_model(m)
    return groups


async def run_workload(workload: Workload, model: str, *, phases: str | None = None,
                       trials: int = 1, pool: EnginePool | None = None,
                       records: list | None = None, config: dict | None = None,
                       progress=None, max_reruns: int | None = None) -> dict:
    """Run ``workload`` on ``model``; a results document (env, config, records, summary).

    Engines come from ``pool`` when given (started there on first use, left open for the
    caller to close); otherwise each engine group gets its own engines, closed after it.
    ``records`` and ``config`` are filled as the run goes, so a caller that catches Ctrl-C
    still holds what completed (see :func:`summarize_partial`). Disturbed trials are re-run
    up to ``max_reruns`` times (default 2; 0 in smoke mode).
    """
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"trials: must be an int >= 1, got {trials!r}")
    if pool is not None and pool.model != model:
        raise ConfigError(f"the engine pool serves {pool.model!r}, not {model!r}")
    groups = prepare(workload, model, phases)
    records = [] if records is None else records
    config = {} if config is None else config
    reruns = (0 if workload.smoke else 2) if max_reruns is None else max_reruns
    plan = RunPlan(trials=trials, warmup=0, max_reruns=reruns)
    ctx = RunContext(plan, workload.name, model, records, [], progress)
    path = resolve_model(model)
    env = collect_env()
    env.update({"question_set_sha256": load_questions()[1], "model": model, "model_path": str(path),
                "model_bytes": model_bytes(path)})
    if any(DIRECT in g for g in groups) and not running_on_preferred_blas():
        env["direct_blas_warning"] = (
            "direct ran on this process's BLAS while the workers run under OpenBLAS: comparisons "
            "with direct are not like for like (`python -m krmlx bench` re-executes under OpenBLAS)")
    config.update({"workload": workload.name, "model": model, "trials": trials, "smoke": workload.smoke,
                   "phases": phases or workload.default_phases, "params": workload.params(),
                   "models": workload.models(model),
                   "engines": {n: spec_dict(s) for g in groups for n, s in g.items()},
                   "trial_log": plan.trial_log, "measurements": ctx.measurements,
                   "load_ms": {}, "stage_stats": {}})
    if progress is not None:
        planned = [workload.planned_records(len(g)) for g in groups]
        progress.total = sum(planned) * trials if None not in planned else None
    t0 = time.perf_counter()
    for i, group in enumerate(groups):
        own = pool is None
        group_pool = EnginePool(model) if own else pool
        try:
            engines = await group_pool.get_many(group)
            config["load_ms"].update({n: e.load_ms for n, e in engines.items()})
            config.setdefault("worker_blas", {}).update({  # what each worker reported at start
                n: (getattr(e.client, "ready", None) or {}).get("blas")
                for n, e in engines.items() if n != DIRECT and getattr(e, "client", None)})
            await workload.run(engines, ctx, i)
            config["stage_stats"].update({n: stage_stats(e) for n, e in engines.items() if n != DIRECT})
        finally:
            if own:
                await group_pool.close()
    config["run_s"] = time.perf_counter() - t0
    return {"env": env, "config": config, "records": records,
            "summary": workload.summarize(records, config) if records else {}}


def summarize_partial(workload: Workload, records: list, config: dict) -> dict:
    """The summary of an interrupted run's records (an empty one if they can't be summarized)."""
    if not records:
        return {}
    try:
        return workload.summarize(records, config)
    except Exception as e:  # noqa: BLE001 - a partial run may lack what a table needs
        return {"error": f"summary of the partial run failed: {type(e).__name__}: {e}"}


def measured_estimates(docs) -> list[dict]:
    """The ``estimates`` rows of one results document or of several (a suite)."""
    docs = [docs] if isinstance(docs, dict) else list(docs)
    return [row for doc in docs for row in (doc.get("summary") or {}).get("estimates", [])]


def estimate_tables(doc, *, measured_only: bool = False) -> dict[str, pd.DataFrame]:
    """``compare_estimates`` of a results document's (or several's) estimates rows: one
    DataFrame per reference table (estimate, measured, ratio, CI, verdict). ``measured_only``
    keeps only rows with a measurement, and only tables that have one."""
    tables = compare_estimates(measured_estimates(doc))
    if not measured_only:
        return tables
    out = {}
    for tid, df in tables.items():
        df = df[df["measured"].map(lambda x: x is not None and not (isinstance(x, float) and math.isnan(x)))]
        if len(df):
            out[tid] = df.reset_index(drop=True)
    return out
