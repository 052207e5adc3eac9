"""krmlx bench: the workload options, one workload's run and its results file, the suite."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..bench.hops import write_trace
from ..bench.report_text import format_estimates, format_sample, format_summary
from ..bench.results import write_results
from ..bench.runner import run_workload, summarize_partial
from ..bench.targets import make_target
from ..bench.workloads import SUITE, WORKLOADS, estimate_tables, make_workload
from ..doctor import collect_env
from ..errors import ConfigError, KrmlxError, ModelError
from ..models import resolve_model
from .files import export_otel


def default_out(out: str, workload: str) -> Path:
    return Path(out) / f"{workload}-{time.strftime('%Y%m%d-%H%M%S')}.json"


# --bench options -> the workload parameter each sets (the first one the workload takes)
BENCH_OPTIONS = {
    "max_tokens": ("max_tokens",), "concurrency": ("concurrency",),
    "duration_s": ("duration_s",), "requests": ("requests", "questions", "max_requests"),
    "rate": ("rates", "rate"), "seed": ("seed",), "ranks": ("ranks",), "backend": ("backend",),
    "levels": ("levels",), "lengths": ("lengths",), "prompts": ("prompts",),
}


def workload_params(name: str, args, *, note: bool) -> dict:
    """The workload parameters the bench options given set for workload ``name``."""
    cls, params = WORKLOADS[name], {}
    for option, targets in BENCH_OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            continue
        target = next((t for t in targets if cls.accepts(t)), None)
        if target is None:
            if note:
                print(f"note: --{option.replace('_', '-')} does not apply to {name}", file=sys.stderr)
            continue
        params[target] = value[0] if target == "rate" else value
    params.update(dict(args.param or ()))
    return params


def run_bench_one(workload, args) -> tuple[int, dict | None]:
    """Run one workload, write its results file (a partial one on Ctrl-C or when a target
    fails), print its summary."""
    path = default_out(args.out, workload.name)
    records, config = [], {}
    # smoothing=0: the rate is count / elapsed (updates come in bursts after start-up)
    with tqdm(desc=f"{workload.name} on {args.model}", unit="req", disable=args.quiet,
              smoothing=0) as bar:
        try:
            doc = asyncio.run(run_workload(workload, args.model, targets=args.target,
                                           phases=args.phases, trials=args.trials,
                                           records=records, config=config, progress=bar))
        except (KeyboardInterrupt, KrmlxError) as e:
            stop = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
            print(f"\n{workload.name}: {stop}", file=sys.stderr)
            if not records:
                return (130 if isinstance(e, KeyboardInterrupt) else 1), None
            print(f"writing the {len(records)} records completed so far", file=sys.stderr)
            config.update({"workload": workload.name, "interrupted": True, "stopped_by": stop})
            write_results(path, env=collect_env(load_interval_s=0.05), config=config,
                          records=records, summary=summarize_partial(workload, records, config),
                          complete=False)
            print(f"results (partial): {path}")
            return (130 if isinstance(e, KeyboardInterrupt) else 1), None
    config["interrupted"] = False
    write_results(path, **doc)
    print(format_summary(doc))
    sample = format_sample(doc)
    if sample:
        print(sample)
    print(f"results: {path}")
    trace = write_trace(doc, path)
    if trace:
        print(f"trace (Perfetto / chrome://tracing): {trace}")
    if args.otlp:
        code = export_otel(doc, path, args.otlp)
        if code:
            return code, None
    print()
    return 0, doc


def cmd_bench(args) -> int:
    names = list(SUITE) if args.workload == "suite" else [args.workload]
    try:  # every workload and target is checked before anything starts
        workloads = [make_workload(n, smoke=args.smoke, **workload_params(n, args, note=len(names) == 1))
                     for n in names]
        for w in workloads:
            w.validate(args.model)
            for m in dict.fromkeys([args.model, *w.models(args.model)]):
                resolve_model(m)
        for t in args.target or ():
            make_target(t)
    except (ConfigError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    docs = []
    for w in workloads:
        code, doc = run_bench_one(w, args)
        if code:
            return code
        docs.append(doc)
    if len(docs) > 1:
        print("estimate vs measured, all workloads" + (" (SMOKE sizes: not evidence)"
                                                        if args.smoke else ""))
        print(format_estimates(estimate_tables(docs, measured_only=True)))
    return 0
