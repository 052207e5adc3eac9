"""The 50-question baseline: the same questions through DirectEngine and Engine(s), one run.

:func:`run_baseline` starts every engine, runs the questions interleaved for N trials,
and returns a results document (see :mod:`krmlx.bench.results`); the caller writes it.
"""

from __future__ import annotations

import asyncio
import time

from ..direct import DirectEngine
from ..doctor import collect_env
from ..engine import Engine
from ..models import model_bytes, resolve_model
from ..questions import load_questions
from ..stack import StackConfig
from ..types import Request
from . import metrics
from .runner import RunPlan, run_interleaved

SMOKE_QUESTIONS = 6


def baseline_requests(*, smoke: bool = False, max_tokens: int = 50, limit: int | None = None):
    questions, qhash = load_questions()
    n = SMOKE_QUESTIONS if smoke else (limit or len(questions))
    return [Request(q.question, max_tokens=max_tokens, id=q.id) for q in questions[:n]], qhash


def make_configs(phases: str) -> dict[str, StackConfig]:
    """Engine configurations for ``--phases``: none | all | each | a comma list of phases."""
    configs = {"phase0": StackConfig()}
    if phases in ("", "none"):
        return configs
    if phases == "all":
        configs["all"] = StackConfig.all()
        return configs
    from ..stack import PHASES

    names = PHASES if phases == "each" else [p.strip() for p in phases.split(",") if p.strip()]
    for name in names:
        configs[name] = StackConfig.phases([name])
    if phases == "each":
        configs["all"] = StackConfig.all()
    return configs


def summary_tables(records: list[dict], base: str = "direct") -> dict:
    df = metrics.to_frame(records)
    out = {"engines": metrics.summarize(df)}
    if base in set(df["engine"]) and df["engine"].nunique() > 1:
        out["overhead"] = metrics.overhead(df, base)
        out["outputs_match"] = outputs_match(df, base)
    return out


def outputs_match(df, base: str) -> list[dict]:
    """Per engine: how many requests gave exactly the base engine's greedy token ids."""
    ref = {(r.trial, r.request_id): r.output_ids for r in df[df["engine"] == base].itertuples()}
    rows = []
    for engine, part in df[df["engine"] != base].groupby("engine"):
        same = sum(ref.get((r.trial, r.request_id)) == r.output_ids for r in part.itertuples())
        rows.append({"engine": engine, "requests": len(part), "identical_outputs": same})
    return rows


async def run_baseline(model: str, configs: dict[str, StackConfig], *, trials: int = 1,
                       smoke: bool = False, max_tokens: int = 50, warmup: int = 2,
                       include_direct: bool = True, records: list | None = None,
                       progress=None) -> dict:
    requests, qhash = baseline_requests(smoke=smoke, max_tokens=max_tokens)
    path = resolve_model(model)
    env = collect_env()
    env.update({"question_set_sha256": qhash, "model": model, "model_path": str(path),
                "model_bytes": model_bytes(path)})
    engines: dict = {}
    records = [] if records is None else records
    plan = RunPlan(trials=trials, warmup=0 if smoke else warmup)
    config = {"workload": "baseline", "model": model, "trials": trials, "smoke": smoke,
              "max_tokens": max_tokens, "questions": len(requests),
              "engines": {name: cfg.to_dict() for name, cfg in configs.items()},
              "trial_log": plan.trial_log}
    try:
        if include_direct:
            engines["direct"] = await DirectEngine(path).start()
        for name, cfg in configs.items():
            engines[name] = await Engine(model, cfg).start()
        config["load_ms"] = {name: e.load_ms for name, e in engines.items()}
        config["worker_blas"] = {name: e.client.ready.get("blas") for name, e in engines.items()
                                 if isinstance(e, Engine)}
        if progress is not None:
            progress.total = len(requests) * len(engines) * trials
        t0 = time.perf_counter()
        await run_interleaved(engines, requests, plan, records, workload="baseline",
                              progress=progress)
        config["run_s"] = time.perf_counter() - t0
        config["stage_stats"] = {n: e.stats() for n, e in engines.items() if isinstance(e, Engine)}
    finally:
        await asyncio.gather(*(e.close() for e in engines.values()), return_exceptions=True)
    return {"env": env, "config": config, "records": records,
            "summary": summary_tables(records) if records else {}}
