"""Run requests through engines, interleaved, and record one raw record per request per trial.

Engines are started once; every trial sends each request through every engine, rotating
the engine order per request, so slow drift (thermal, other processes) hits all engines
alike. The foreign CPU load (other processes) is measured per trial; a disturbed trial
is flagged and re-run (up to ``max_reruns``). Records accumulate in ``sink`` as they
complete, so an interrupted run keeps every finished record.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

import psutil

from ..types import Request

DEFAULT_LOAD_LIMIT_CORES = 0.5


class LoadMeter:
    """CPU time used by processes other than this one and its children, in cores."""

    def __init__(self):
        self.me = psutil.Process()

    def _own(self) -> float:
        total = 0.0
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def __enter__(self):
        self.t0, self.c0, self.own0 = time.perf_counter(), psutil.cpu_times(), self._own()
        return self

    def __exit__(self, *exc):
        c1, own1 = psutil.cpu_times(), self._own()
        busy = (c1.user + c1.system + c1.nice) - (self.c0.user + self.c0.system + self.c0.nice)
        self.cores = max(0.0, (busy - (own1 - self.own0)) / max(1e-9, time.perf_counter() - self.t0))


@dataclass
class RunPlan:
    trials: int = 1
    warmup: int = 2
    max_reruns: int = 2
    load_limit_cores: float = DEFAULT_LOAD_LIMIT_CORES
    trial_log: list = field(default_factory=list)


def record_of(engine: str, trial: int, request: Request, completion=None, error=None, *,
              t_start_s: float, workload: str, extra: dict | None = None) -> dict:
    rec = {"workload": workload, "engine": engine, "trial": trial, "request_id": request.id,
           "model": request.model, "ok": error is None, "error": None if error is None else
           f"{type(error).__name__}: {error}", "t_start_s": t_start_s}
    if completion is not None:
        c = completion
        rec.update({"ttft_ms": c.ttft_ms, "e2e_ms": c.e2e_ms, "tpot_ms": c.tpot_ms,
                    "itl_ms": c.itl_ms, "prompt_tokens": c.usage.prompt_tokens,
                    "output_tokens": c.usage.output_tokens, "output_ids": list(c.token_ids),
                    "finish_reason": c.finish_reason, "t_end_s": c.t_end_s})
    else:
        rec.update({"ttft_ms": None, "e2e_ms": (time.perf_counter() - t_start_s) * 1e3,
                    "tpot_ms": None, "itl_ms": [], "prompt_tokens": 0, "output_tokens": 0,
                    "output_ids": [], "finish_reason": "error", "t_end_s": time.perf_counter()})
    rec.update(extra or {})
    return rec


def settle() -> None:
    """Before a timed stretch: collect garbage now and freeze what survives, so a full
    collection (which walks every live object, e.g. the records gathered so far) does not
    land inside a measurement. Frozen objects stay alive; later garbage is collected."""
    gc.collect()
    gc.freeze()


async def run_interleaved(engines: dict, requests: list[Request], plan: RunPlan, sink: list,
                          *, workload: str = "baseline", progress=None) -> list[dict]:
    """Send every request through every (started) engine, ``plan.trials`` times."""
    names = list(engines)
    for name in names:  # warmup: compile, allocate, fill caches; not recorded
        for req in requests[: plan.warmup]:
            await engines[name].complete(req)
    trial = 0
    reruns = 0
    while trial < plan.trials:
        start = len(sink)
        settle()
        with LoadMeter() as meter:
            for i, req in enumerate(requests):
                order = names[i % len(names):] + names[: i % len(names)]
                for name in order:
                    t0 = time.perf_counter()
                    try:
                        done = await engines[name].complete(req)
                        sink.append(record_of(name, trial, req, done, t_start_s=t0, workload=workload))
                    except Exception as e:  # noqa: BLE001 - an error is a record, not a crash
                        sink.append(record_of(name, trial, req, error=e, t_start_s=t0, workload=workload))
                    if progress is not None:
                        progress.update(1)
        disturbed = meter.cores > plan.load_limit_cores
        plan.trial_log.append({"trial": trial, "foreign_cpu_cores": round(meter.cores, 3),
                               "disturbed": disturbed, "kept": not disturbed or reruns >= plan.max_reruns})
        if disturbed and reruns < plan.max_reruns:
            reruns += 1
            del sink[start:]  # re-run this trial; the disturbed records are dropped
            if progress is not None:
                progress.total += len(requests) * len(names)
            continue
        for rec in sink[start:]:
            rec["foreign_cpu_cores"] = round(meter.cores, 3)
            rec["disturbed"] = disturbed
        trial += 1
    return sink
