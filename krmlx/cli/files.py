"""The commands on results files: compare, divergence, resummarize, pool, report, otel."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..bench.otel import export_otlp
from ..bench.pool import pool_results
from ..bench.report_text import format_compare
from ..bench.results import read_results, write_results
from ..bench.workloads import WORKLOADS, make_workload
from ..divergence import divergences, format_divergences
from ..doctor import git_sha
from ..errors import KrmlxError, ResultsError
from ..models import load, resolve_model
from ..report.export import build_report


def cmd_compare(args) -> int:
    try:
        a, b = read_results(args.a), read_results(args.b)
        for path, doc in ((args.a, a), (args.b, b)):
            if not doc["records"]:
                raise ResultsError(f"{path}: no request records to compare (an interrupted "
                                   "run's partial file may hold none)")
        print(format_compare(a, b))
    except ResultsError as e:
        print(f"krmlx compare: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_divergence(args) -> int:
    """Where each target's greedy answers part from the reference's, with the reference
    model's top-2 logit gap at that token (:mod:`krmlx.divergence`)."""
    try:
        doc = read_results(args.results)
        model = args.model or doc.get("config", {}).get("model") or doc.get("env", {}).get("model")
        if not model:
            print(f"krmlx divergence: {args.results} names no model; give --model", file=sys.stderr)
            return 2
        weights, tokenizer = load(resolve_model(model))
        rows, summary = divergences(doc, weights, tokenizer, reference=args.reference,
                                    others=args.target)
    except (KrmlxError, ValueError) as e:
        print(f"krmlx divergence: {e}", file=sys.stderr)
        return 2
    print(format_divergences(rows, summary, args.reference))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model, "reference": args.reference,
                                               "summary": summary, "rows": rows}, indent=2))
        print(f"written: {args.json}")
    return 0


def cmd_resummarize(args) -> int:
    """Recompute each workload results file's ``summary`` from its raw records and config
    with this krmlx (the records are not touched; the file is rewritten atomically and
    records which krmlx summarized it)."""
    for path in args.results:
        try:
            doc = read_results(path)
            doc["config"]["resummarized_by"] = git_sha()
            write_results(path, env=doc["env"], config=doc["config"], records=doc["records"],
                          summary=_summarize_doc(path, doc), complete=doc.get("complete", True))
            print(f"{path}: summary recomputed from {len(doc['records'])} records")
        except KrmlxError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


def _summarize_doc(path, doc) -> dict:
    """The summary of a results document, by its workload's own summarize step."""
    cfg = doc["config"]
    if cfg.get("workload") not in WORKLOADS:
        raise KrmlxError(f"{path}: workload {cfg.get('workload')!r} has no summarize step here")
    params = {k: tuple(v) if isinstance(v, list) else v
              for k, v in (cfg.get("params") or {}).items() if k != "smoke"}
    wl = make_workload(cfg["workload"], smoke=bool(cfg.get("smoke")), **params)
    return wl.summarize(doc["records"], cfg)


def cmd_pool(args) -> int:
    """Summarize replications of one workload as one run (krmlx.bench.pool)."""
    out = Path(args.out)
    if out.is_dir() or any(out.resolve() == Path(p).resolve() for p in args.results):
        print(f"krmlx pool: --out {out} must be a new file, not a folder or one of the "
              "files pooled", file=sys.stderr)
        return 2
    try:
        doc = pool_results(args.results)
        doc["config"]["pooled_by"] = git_sha()
        summary = _summarize_doc(out, doc)
        if args.summary_only:  # the records are in the files pooled: pooling again remakes them
            doc["config"]["records_left_out"] = len(doc["records"])
            doc["records"] = []
        write_results(out, **doc, summary=summary)
    except KrmlxError as e:
        print(f"krmlx pool: {e}", file=sys.stderr)
        return 2
    n = doc["config"].get("records_left_out", len(doc["records"]))
    print(f"{out}: {n} records, {doc['config']['trials']} trials "
          f"from {len(args.results)} files")
    return 0


def cmd_report(args) -> int:
    try:
        written = build_report(args.results, args.out, title=args.title, reference=args.reference)
    except (ResultsError, ValueError) as e:
        print(f"krmlx report: {e}", file=sys.stderr)
        return 2
    print(f"html: {written['html']}\nmarkdown: {written['markdown']}\n"
          f"{len(written['png'])} plots, {len(written['csv'])} CSVs in {args.out}")
    return 0


def export_otel(doc: dict, name, endpoint: str | None) -> int:
    """Send one results document's spans over OTLP (krmlx.bench.otel); 1 on failure."""
    try:
        n = export_otlp(doc, endpoint)
    except KrmlxError as e:
        print(f"error: {name}: {e}", file=sys.stderr)
        return 1
    print(f"{name}: {n} spans sent over OTLP to {endpoint or 'OTEL_EXPORTER_OTLP_ENDPOINT'}")
    return 0


def cmd_otel(args) -> int:
    for path in args.results:
        try:
            doc = read_results(path)
        except ResultsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if code := export_otel(doc, path, args.endpoint):
            return code
    return 0
