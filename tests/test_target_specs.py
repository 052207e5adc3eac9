"""Every target spec the docs show starts and serves a request; one phase grammar everywhere.

The specs the docs (README.md, docs/cli.md) and ``krmlx bench --help`` show are the ones a new user types first,
so each is started here on the tiny model (real processes on 127.0.0.1) and must answer
a greedy request; peers, whose venvs are heavy, are parsed only. The docs' own list is read
back, so a spec kind added to the docs without a run here fails.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import psutil
import pytest

from krmlx import Request, StackConfig
from krmlx.bench import make_target
from krmlx.bench.workloads.base import phase_configs
from krmlx.cli import build_parser
from krmlx.cli.serve import serve_config
from krmlx.errors import ConfigError
from krmlx.serve import ServerProcess
from krmlx.stack import PHASES, parse_phases
from krmlx.worker.config import WorkerConfig
from krmlx.worker.schedulers import SCHEDULERS

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny"
PROMPT = Request("Why is the sky blue?", max_tokens=8, id="spec")
# a cmd: target: any server command line, {model} and {port} filled in by the bench
CMD = (f"cmd:{sys.executable} -m krmlx serve --model {{model}} --host {{host}} --port {{port}} "
       "--scheduler serial")
STARTED = ["direct", "raw", "engine", "engine:phase0", "engine:all", "krmlx.serve",
           "krmlx.serve:phase0", "krmlx.serve:all", "mlx_lm.server", "url", CMD]
PARSED_ONLY = ["peer:rapid-mlx", "peer:vllm-mlx"]


def kind_of(spec: str) -> str:
    """A spec's kind as the docs name it: ``engine``, ``http``, ``cmd``, ``peer``..."""
    text = spec.split("=", 1)[1] if re.match(r"^[\w.-]+=", spec) and not spec.startswith(
        ("http", "cmd:")) else spec
    if text.startswith(("http://", "https://")) or text == "url":
        return "http"
    return re.split(r"[:?\[]", text, maxsplit=1)[0]


def documented_specs() -> list[str]:
    """The target specs in the docs' table (docs/cli.md) and examples (README, docs/cli.md)
    and in ``bench --help``."""
    readme = (ROOT / "README.md").read_text() + (ROOT / "docs" / "cli.md").read_text()
    rows = readme.split("| target spec | what runs |", 1)[1].split("\n\n", 1)[0]
    table = re.findall(r"^\| `([^`]+)` \|", rows, flags=re.M)
    examples = re.findall(r"--target ([^\s`]+)", readme)
    bench = next(a for a in build_parser()._subparsers._group_actions[0].choices.items()
                 if a[0] == "bench")[1]
    help_text = next(a.help for a in bench._actions if "--target" in a.option_strings)
    listed = help_text.split(":", 1)[1].split("(default")[0]
    return [s for s in table if kind_of(s) != "NAME"] + examples + \
        [w.strip(" ,") for w in listed.split(", ")]


def test_the_docs_show_no_target_kind_that_is_not_run_here():
    specs = documented_specs()
    kinds = {kind_of(s) for s in specs}
    assert {"direct", "raw", "engine", "krmlx.serve", "mlx_lm.server", "http", "cmd",
            "peer"} <= kinds  # the docs were read (a broken reader would see nothing)
    assert kinds <= {kind_of(s) for s in STARTED + PARSED_ONLY}
    for spec in specs:
        if not any(c in spec for c in "[]") and spec not in ("cmd:COMMAND", "peer:NAME"):
            make_target(spec)  # every concrete spec the docs show parses


@pytest.fixture(scope="module")
def served(tiny_path):
    with ServerProcess(MODEL, scheduler="serial") as server:
        yield server


def processes_of(pids) -> list[int]:
    return [p for p in pids if psutil.pid_exists(p) and
            psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("spec", STARTED, ids=lambda s: "cmd" if s.startswith("cmd:") else s)
def test_every_documented_target_spec_starts_and_serves_a_request(spec, served, tiny_path):
    target = make_target(served.base_url if spec == "url" else spec)

    async def go():
        await target.start(MODEL)
        pids = target.pids()
        try:
            return await target.generate(PROMPT), pids
        finally:
            await target.stop()

    done, pids = asyncio.run(go())
    assert done.text and done.usage.output_tokens > 0 and 0 < done.ttft_ms <= done.e2e_ms
    assert not target.started and not processes_of(pids)


@pytest.mark.parametrize("spec", PARSED_ONLY)
def test_peer_specs_parse(spec):
    target = make_target(spec)
    assert target.kind == "peer" and target.name == spec and not target.started


@pytest.mark.parametrize("text, names", [
    ("phase0", []), ("none", []), ("", []), ("all", list(PHASES)), ("ALL", list(PHASES)),
    ("batching", ["batching"]), ("caching,batching", ["batching", "caching"]),
    (" retry , framing ", ["retry", "framing"]), ("batching+framing", ["batching", "framing"]),
    (["caching"], ["caching"])])
def test_one_phase_grammar_reads_every_spelling(text, names):
    assert parse_phases(text) == names
    label = StackConfig.phases(names).label
    assert parse_phases(label) == names  # a stack's label reads back
    # each place that takes phases reads them the same way
    assert serve_config(text if isinstance(text, str) else ",".join(text), "auto", False) \
        == StackConfig.phases(names, scheduler="auto")
    if isinstance(text, str):
        assert make_target(f"engine:{text}").config == StackConfig.phases(names)
        assert make_target(f"krmlx.serve:{text}").phases == (",".join(names) or "phase0")


@pytest.mark.parametrize("bad", ["turbo", "batching,turbo", ",", "phase1"])
def test_an_unknown_phase_is_named_in_every_place_that_reads_phases(bad):
    for read in (parse_phases, lambda t: make_target(f"engine:{t}"),
                 lambda t: make_target(f"krmlx.serve:{t}"), phase_configs,
                 lambda t: serve_config(t, "auto", False)):
        with pytest.raises(ConfigError, match="unknown phase"):
            read(bad)


def test_bench_phase_sets_use_the_same_names():
    assert list(phase_configs("phase0")) == ["phase0"] == list(phase_configs("none"))
    assert list(phase_configs("all")) == ["phase0", "all"]
    assert list(phase_configs("each")) == ["phase0", *PHASES, "all"]
    assert list(phase_configs("batching,retry")) == ["phase0", "batching", "retry"]


def test_the_serve_cli_offers_exactly_the_schedulers_a_worker_config_takes():
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    action = next(a for a in serve._actions if "--scheduler" in a.option_strings)
    assert tuple(action.choices) == SCHEDULERS
    for name in SCHEDULERS:
        assert WorkerConfig(scheduler=name).scheduler == name


def test_the_worker_config_crosses_as_one_object_read_by_the_code_that_wrote_it(tmp_path):
    from krmlx.framing import FramerConfig
    from krmlx.worker.launch import DistributedConfig
    from krmlx.worker.prompt_cache import PromptCacheConfig

    cfg = WorkerConfig(framing=FramerConfig(codec="msgpack", coalesce_tokens=4, window=8),
                       faults={"error_rate": {"generate": 0.1}, "seed": 3},
                       prompt_cache=PromptCacheConfig(max_entries=2), max_prompt_tokens=99,
                       liveness_timeout_s=5.0, max_frame_bytes=4096)
    argv = cfg.argv("python")
    assert argv[:3] == ["python", "-m", "krmlx.worker"] and argv[3::2] == ["--config"]
    import json

    assert WorkerConfig.from_dict(json.loads(argv[4])) == cfg
    group = WorkerConfig(distributed=DistributedConfig(ranks=2))
    assert WorkerConfig.from_dict(json.loads(json.dumps(group.to_dict()))) == group
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['turbo'\]"):
        WorkerConfig.from_dict({"turbo": 1})
    with pytest.raises(ConfigError, match="scheduler"):
        WorkerConfig.from_dict({"scheduler": "magic"})


def test_mlx_lm_server_is_defined_once_with_its_prompt_cache_off_everywhere(tiny_path):
    """The bench's target and the cross-check's ``serving`` start the same command line:
    the one PEERS entry's, prompt cache off unless asked."""
    from krmlx.bench import peers
    from krmlx.bench.targets import MlxLmServer

    target = MlxLmServer()
    target.venv = peers.peer_venv(peers.get_peer("mlx_lm.server"))
    bench_argv = target.make_process(str(tiny_path), 8123).argv()
    with peers.serving("mlx_lm.server", tiny_path) as srv:
        running = psutil.Process(srv.pid).cmdline()
        port = running[running.index("--port") + 1]
    assert running[running.index("--prompt-cache-size") + 1] == "0"
    assert running[1:] == [port if a == "8123" else a for a in bench_argv][1:]
    asked = MlxLmServer(prompt_cache_size=10)
    asked.venv = target.venv
    cmd = asked.make_process(str(tiny_path), 8123).argv()
    assert cmd[cmd.index("--prompt-cache-size") + 1] == "10"


def _tpot(done) -> float:
    return (done.e2e_ms - done.ttft_ms) / (done.usage.output_tokens - 1)


def test_tpot_is_per_token_whichever_producer_and_however_many_tokens_an_event_carries(
        tiny_path):
    """One TPOT definition (the Completion's, per output token): the HTTP client reading a
    server that sends 4 tokens per event, the in-process producers (one event per token),
    and the runner's record all give (E2E - TTFT) / (N - 1)."""
    from krmlx.bench.runner import record_of

    stub = make_target(f"cmd:{sys.executable} -m krmlx.bench.stub --port {{port}} "
                       "--ttft-ms 5 --interval-ms 5 --tokens-per-event 4")
    request = Request("hi", max_tokens=12, id="tpot")

    async def go():
        out = []
        for target in (stub, make_target("direct"), make_target("engine")):
            await target.start(MODEL)
            try:
                out.append(await target.generate(request))
            finally:
                await target.stop()
        return out

    coalesced, direct, engine = asyncio.run(go())
    assert coalesced.usage.output_tokens == 12 and len(coalesced.token_times_s) == 3
    for done in (coalesced, direct, engine):
        assert done.tpot_ms == pytest.approx(_tpot(done))
        rec = record_of("t", 0, request, done, t_start_s=done.t_start_s, workload="w")
        assert rec["tpot_ms"] == done.tpot_ms
    # per event it would be 3x larger: 11 gaps of tokens, not 2 of events
    assert coalesced.tpot_ms < (coalesced.e2e_ms - coalesced.ttft_ms) / 2 / 2


def test_a_managed_server_gets_its_own_tmpdir_removed_when_it_stops(tmp_path):
    """What a server (or a library of its) leaves in its TMPDIR goes when krmlx stops it."""
    from krmlx.process import ManagedProcess, free_port

    port = free_port()
    with ManagedProcess([sys.executable, "-m", "krmlx.bench.stub", "--port", str(port)], port=port,
                        health_path="/v1/models", name="stub") as p:
        tmp = Path(psutil.Process(p.pid).environ()["TMPDIR"])
        assert tmp.is_dir() and tmp.name.startswith("krmlx-server-tmp-")
        (tmp / "left-behind").write_text("x")
    assert not tmp.exists()
