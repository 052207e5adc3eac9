"""krmlx's command line (the only argparse in krmlx).

    python -m krmlx doctor [--json]
    python -m krmlx models make PRESET [--rebuild] | models list
    python -m krmlx bench baseline [--model M] [--phases none|all|each|LIST] [--trials N] [--smoke] [--out DIR]
    python -m krmlx compare A.json B.json
    python -m krmlx report RESULTS... [--out DIR]

Model code runs under the fastest BLAS available: on Linux the command re-executes
itself with OpenBLAS preloaded when it is installed (KRMLX_BLAS=reference opts out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

REEXEC_FLAG = "KRMLX_REEXECED"


def reexec_under_blas() -> None:
    from .blas import blas_env

    if os.environ.get(REEXEC_FLAG):
        return
    env = blas_env()
    if env.get("LD_PRELOAD", "") != os.environ.get("LD_PRELOAD", ""):
        env[REEXEC_FLAG] = "1"
        os.execve(sys.executable, [sys.executable, "-m", "krmlx", *sys.argv[1:]], env)


def cmd_doctor(args) -> int:
    from .doctor import collect_env, format_env

    env = collect_env(load_interval_s=0.5)
    print(json.dumps(env, indent=2) if args.json else format_env(env))
    return 0


def cmd_models(args) -> int:
    from .models import PRESETS, cache_dir, make_model, model_bytes

    if args.action == "list":
        for name, p in PRESETS.items():
            print(f"{name:14} {p.description}")
        built = sorted(d.name for d in cache_dir().glob("*") if d.is_dir() and not d.name.startswith("."))
        print(f"built in {cache_dir()}: {', '.join(built) or 'none'}")
        return 0
    t0 = time.perf_counter()
    path = make_model(args.preset, rebuild=args.rebuild)
    print(f"{args.preset}: {path} ({model_bytes(path) / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")
    return 0


def default_out(out: str, workload: str) -> Path:
    return Path(out) / f"{workload}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def cmd_bench(args) -> int:
    from tqdm import tqdm

    from .bench.baseline import make_configs, run_baseline
    from .bench.report_text import format_summary
    from .bench.results import write_results

    if args.workload != "baseline":
        print(f"unknown workload {args.workload!r}", file=sys.stderr)
        return 2
    configs = make_configs(args.phases)
    path = default_out(args.out, args.workload)
    records: list = []
    doc = None
    with tqdm(desc=f"{args.workload} on {args.model}", unit="req", disable=args.quiet) as bar:
        try:
            doc = asyncio.run(run_baseline(args.model, configs, trials=args.trials, smoke=args.smoke,
                                           max_tokens=args.max_tokens, records=records, progress=bar))
        except KeyboardInterrupt:
            from .bench.baseline import summary_tables
            from .doctor import collect_env

            print(f"\ninterrupted: writing the {len(records)} records completed so far", file=sys.stderr)
            write_results(path, env=collect_env(load_interval_s=0.05),
                          config={"workload": args.workload, "interrupted": True},
                          records=records, summary=summary_tables(records) if records else {},
                          complete=False)
            print(f"results: {path}")
            return 130
    write_results(path, **doc)
    print(format_summary(doc))
    print(f"results: {path}")
    return 0


def cmd_compare(args) -> int:
    from .bench.report_text import format_compare
    from .bench.results import read_results

    print(format_compare(read_results(args.a), read_results(args.b)))
    return 0


def cmd_report(args) -> int:
    from .errors import ResultsError
    from .report.export import build_report

    try:
        written = build_report(args.results, args.out, title=args.title)
    except (ResultsError, ValueError) as e:
        print(f"krmlx report: {e}", file=sys.stderr)
        return 2
    print(f"html: {written['html']}\nmarkdown: {written['markdown']}\n"
          f"{len(written['png'])} plots, {len(written['csv'])} CSVs in {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="krmlx", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("doctor", help="print the environment results depend on")
    d.add_argument("--json", action="store_true")
    m = sub.add_parser("models", help="build synthetic models")
    m.add_argument("action", choices=["make", "list"])
    m.add_argument("preset", nargs="?", default="small")
    m.add_argument("--rebuild", action="store_true")
    b = sub.add_parser("bench", help="run a workload and write a results file")
    b.add_argument("workload")
    b.add_argument("--model", default=os.environ.get("KRMLX_MODEL", "mini"))
    b.add_argument("--phases", default="all", help="none | all | each | comma list of "
                   "batching,caching,retry,framing")
    b.add_argument("--trials", type=int, default=1)
    b.add_argument("--max-tokens", type=int, default=50)
    b.add_argument("--smoke", action="store_true", help="a few requests, for a quick check")
    b.add_argument("--out", default="runs")
    b.add_argument("--quiet", action="store_true")
    c = sub.add_parser("compare", help="compare two results files")
    c.add_argument("a")
    c.add_argument("b")
    r = sub.add_parser("report", help="write an offline HTML/Markdown/CSV report of results files")
    r.add_argument("results", nargs="+", help="results files or folders of them")
    r.add_argument("--out", default="report", help="output folder")
    r.add_argument("--title", default="krmlx report")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd in ("doctor", "bench"):
        reexec_under_blas()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    handler = {"doctor": cmd_doctor, "models": cmd_models, "bench": cmd_bench,
               "compare": cmd_compare, "report": cmd_report}[args.cmd]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
