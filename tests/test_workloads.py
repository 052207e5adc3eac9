"""The reference's workloads (krmlx.bench.workloads' suite) in smoke mode on the tiny
model, and `bench`'s CLI.

Every workload runs once on its default targets, the ones several share started once here
(run_workload leaves a caller's started targets running), and its results file is written
and read back; the tests below look at those files.
"""

import asyncio
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from krmlx.bench import workloads as W
from krmlx.bench.results import read_results, write_results
from krmlx.bench.runner import run_workload, stats_delta, summarize_partial
from krmlx.bench.targets import DirectTarget, EngineTarget
from krmlx.cli import main
from krmlx.errors import ConfigError
from krmlx.stack import StackConfig

MODEL = "tiny"
# Smaller than smoke where smoke is still slow on 2 cores (every engine start costs ~3 s).
SMALLER = {"baseline": {"max_tokens": 16}, "long_form": {"max_tokens": 100},
           "error_rates": {"fault_rates": (0.1,)}, "rate_sweep": {"duration_s": 0.8}}
ENGINES = {
    "baseline": {"direct", "phase0", "all"},
    "tokenize_flood": {"direct", "phase0", "batching"},
    "model_switching": {"phase0", "caching"},
    "multi_tenant": {"phase0", "caching"},
    "mixed": {"phase0", "all"},
    "error_rates": {"phase0@err10", "retry@err10"},
    "long_form": {"direct", "phase0", "framing"},
    "server_profile": {"phase0", "all"},
    "rate_sweep": {"phase0", "all"},
}
GENERATES = ("baseline", "model_switching", "multi_tenant", "mixed", "error_rates", "long_form")


def shared_targets() -> dict:
    """The targets several workloads use, by name (caching as the workloads adapt it)."""
    from krmlx.stages import ModelCacheConfig

    out = {"direct": DirectTarget(), "phase0": EngineTarget(StackConfig(), "phase0"),
           "all": EngineTarget(StackConfig.all(model_cache=ModelCacheConfig(max_models=5)), "all")}
    for phase in ("batching", "caching"):
        cfg = StackConfig.phases([phase], model_cache=ModelCacheConfig(max_models=5)) \
            if phase == "caching" else StackConfig.phases([phase])
        out[phase] = EngineTarget(cfg, phase)
    return out


@pytest.fixture(scope="module")
def docs(tmp_path_factory, tiny_path):
    out = tmp_path_factory.mktemp("runs")

    async def go():
        found, shared = {}, shared_targets()
        try:
            for t in shared.values():
                await t.start(MODEL)
            for name in W.SUITE:
                wl = W.make_workload(name, smoke=True, **SMALLER.get(name, {}))
                targets = [shared.get(t.name, t) for t in wl.default_targets(None, MODEL)]
                doc = await run_workload(wl, MODEL, targets=targets)
                found[name] = read_results(write_results(out / f"{name}.json", **doc))
        finally:
            for t in shared.values():
                await t.stop()
        return found

    return asyncio.run(go())


def test_the_registry_names_every_workload_of_the_issue():
    assert set(W.SUITE) == set(ENGINES)
    for name in W.SUITE:
        wl = W.make_workload(name, smoke=True)
        assert wl.name == name and wl.smoke
    assert W.make_workload("tokenize_flood", smoke=True).requests == 100
    assert W.make_workload("tokenize_flood", smoke=True, requests=7).requests == 7  # given wins
    assert W.make_workload("tokenize_flood").requests == 1000
    assert W.make_workload("model_switching").switches == (10, 100)
    assert W.make_workload("error_rates", smoke=True).fault_rates == (0.0, 0.1)


@pytest.mark.parametrize("name", list(ENGINES))
def test_every_workload_writes_a_readable_results_file(docs, name):
    doc = docs[name]
    recs = doc["records"]
    assert doc["complete"] and doc["config"]["workload"] == name and doc["config"]["smoke"]
    assert recs and {r["workload"] for r in recs} == {name}
    assert {r["target"] for r in recs} == ENGINES[name] == set(doc["config"]["targets"])
    assert all(r["ok"] for r in recs if "@err" not in r["target"]), [r["error"] for r in recs if not r["ok"]]
    assert doc["summary"]["targets"] and "estimates" in doc["summary"]
    assert {"git_sha", "blas", "model_bytes", "question_set_sha256"} <= set(doc["env"])
    treatment = doc["config"]["treatment"]  # equal treatment, recorded
    assert treatment["order"] and treatment["requests"]
    assert set(treatment["warmup"]) == ENGINES[name]
    assert len({tuple(w) for w in treatment["warmup"].values()}) == 1


@pytest.mark.parametrize("name", GENERATES)
def test_greedy_outputs_equal_phase0s(docs, name):
    summary = docs[name]["summary"]
    rows = summary.get("outputs_match_phase0") or summary["outputs_match"]
    assert rows and all(r["compared"] > 0 and r["identical_outputs"] == r["compared"] for r in rows), rows


def test_kinds_and_series(docs):
    kinds = {r["kind"] for r in docs["mixed"]["records"]}
    assert kinds == {"generate", "tokenize", "switch"}
    assert {r["series"] for r in docs["rate_sweep"]["records"]} == {"rate_5", "rate_20"}
    for name in ("server_profile", "rate_sweep"):  # the seeded schedules hold a generate
        assert {r["kind"] for r in docs[name]["records"]} == {"generate", "tokenize"}
    sw = docs["model_switching"]["summary"]["headline"]
    assert {r["target"]: r["loads"] for r in sw} == {"phase0": 6, "caching": 0}  # every request switched
    probe = [r for r in docs["model_switching"]["records"] if r["kind"] == "load"]
    assert len(probe) == 5 and all(r["cached"] for r in probe)
    flood = {r["target"]: r for r in docs["tokenize_flood"]["summary"]["flood"]}
    assert flood["batching"]["batches"] < 100 and flood["batching"]["speedup_x"] > 0


def test_error_rates_retry_hides_the_failures_phase0_shows(docs):
    rows = {r["target"]: r for r in docs["error_rates"]["summary"]["errors"]}
    # The fault draws are seeded (seed=1), so these counts are the same on every run.
    assert rows["phase0@err10"]["user_visible_failures"] > 0
    assert rows["retry@err10"]["user_visible_failures"] == 0 and rows["retry@err10"]["retries"] > 0
    recs = [r for r in docs["error_rates"]["records"] if r["target"] == "retry@err10"]
    assert recs and all(r["ok"] for r in recs)


def test_estimate_rows_join_the_reference_tables(docs):
    for name in ("baseline", "tokenize_flood"):
        tables = W.estimate_tables(docs[name], measured_only=True)
        assert sum(len(t) for t in tables.values()) >= 1, name
    flood = W.estimate_tables(docs["tokenize_flood"], measured_only=True)
    assert "speedup_x" in set(flood["phase1_tokenize"]["metric"])
    assert set(W.estimate_tables(docs["baseline"], measured_only=True)) >= {"baseline"}
    every = W.estimate_tables(list(docs.values()), measured_only=True)  # the suite's table
    assert {"phase1_tokenize", "baseline", "phase3_retry", "phase5_streaming"} <= set(every)
    for doc in docs.values():
        for row in doc["summary"]["estimates"]:
            assert row["source"] and isinstance(row["measured"], float)
    # smoke runs are never evidence, whatever the numbers say
    assert set(pd.concat(every.values())["verdict"]) == {"smoke: not evidence"}


def test_each_phase_reference_row_is_that_phase_alone_against_phase0():
    """The per-phase "50-question generation" rows take that phase alone vs phase 0, not
    all phases together (each engine's paired totals on the same questions)."""
    from krmlx.bench.workloads.sequential import Baseline

    recs = []
    for engine, scale in (("direct", 1.0), ("phase0", 1.0), ("batching", 0.5), ("all", 0.25)):
        for i in range(4):
            recs.append({"target": engine, "trial": 0, "request_id": f"q{i}", "ok": True,
                         "kind": "generate", "ttft_ms": 10.0, "e2e_ms": 100.0 * scale + i,
                         "tpot_ms": 1.0, "prompt_tokens": 5, "output_ids": [i],
                         "output_tokens": 10, "t_start_s": 0.0, "t_end_s": 1.0, "itl_ms": []})
    rows = {r["metric"]: r for r in Baseline().summarize(recs, {})["estimates"]}
    assert rows["batching_speedup_x"]["measured"] == pytest.approx(406 / 206)
    assert rows["speedup_x"]["measured"] == pytest.approx(406 / 106)
    assert "caching_speedup_x" not in rows


def test_config_errors_come_before_any_target_starts():
    class Watched(EngineTarget):
        starts = 0

        async def start(self, model):
            Watched.starts += 1
            return await super().start(model)

    def go(wl, model, phases=None):
        return asyncio.run(run_workload(wl, model, targets=[Watched(StackConfig(), "phase0")]
                                        if phases is None else None, phases=phases))

    with pytest.raises(ConfigError, match="at least 2 models"):
        go(W.make_workload("model_switching", smoke=True, n_models=1), MODEL)
    with pytest.raises(ConfigError, match="synthetic preset"):
        go(W.make_workload("multi_tenant", smoke=True), "tiny@2")
    with pytest.raises(ConfigError, match="unknown phase"):
        go(W.make_workload("baseline"), MODEL, "batching,warp")
    with pytest.raises(ConfigError, match="rates"):
        go(W.make_workload("error_rates", fault_rates=(0.0, 1.5)), MODEL)
    assert Watched.starts == 0
    with pytest.raises(ConfigError, match="unknown workload 'nope'; workloads: baseline"):
        W.make_workload("nope")
    with pytest.raises(ConfigError, match="unknown parameter"):
        W.make_workload("tokenize_flood", bogus=1)


def test_a_partial_run_still_summarizes(docs):
    doc = docs["mixed"]
    wl = W.make_workload("mixed", smoke=True)
    partial = summarize_partial(wl, doc["records"][:3], doc["config"])
    assert isinstance(partial, dict) and "targets" in partial
    assert summarize_partial(wl, [], {}) == {}


def test_cli_unknown_workload_lists_the_workloads(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "nope"])
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert "unknown workload 'nope'" in err and "tokenize_flood" in err and "suite" in err


def test_cli_bench_tokenize_flood_smoke(tmp_path, tiny_path):
    env = {**os.environ, "KRMLX_MODEL": "mini"}
    p = subprocess.run([sys.executable, "-m", "krmlx", "bench", "tokenize_flood", "--smoke", "--model",
                        MODEL, "--out", str(tmp_path), "--quiet"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    files = list(tmp_path.glob("tokenize_flood-*.json"))
    assert len(files) == 1
    doc = read_results(files[0])
    assert doc["complete"] and doc["config"]["model"] == MODEL and len(doc["records"]) == 300
    assert "estimate vs measured" in p.stdout and "phase1_tokenize" in p.stdout
    assert json.loads(files[0].read_text())["schema"]["name"] == "krmlx.results"


def test_cli_options_map_to_each_workloads_parameters():
    from krmlx.cli import build_parser
    from krmlx.cli.bench import workload_params

    args = build_parser().parse_args(["bench", "suite", "--rate", "1,2.5", "--requests", "5",
                                      "--concurrency", "3", "--max-tokens", "7"])
    assert workload_params("rate_sweep", args, note=False) == {"rates": (1.0, 2.5), "max_requests": 5,
                                                               "max_tokens": 7}
    assert workload_params("server_profile", args, note=False) == {"rate": 1.0, "max_requests": 5,
                                                                   "max_tokens": 7}
    assert workload_params("tokenize_flood", args, note=False) == {"requests": 5, "concurrency": 3}
    assert workload_params("error_rates", args, note=False) == {"questions": 5, "max_tokens": 7}
    assert args.phases is None  # each workload's default


def test_resummarize_recomputes_the_summary_from_the_records(docs, tmp_path):
    doc = docs["tokenize_flood"]
    path = write_results(tmp_path / "flood.json", env=doc["env"], config=doc["config"],
                         records=doc["records"], summary={"stale": True})
    assert main(["resummarize", str(path)]) == 0
    again = read_results(path)
    assert again["records"] == doc["records"]
    assert again["summary"]["flood"] == doc["summary"]["flood"]
    assert "stale" not in again["summary"] and "resummarized_by" in again["config"]


def test_stats_delta_keeps_counters_only():
    before = {"batcher": {"batches": 2, "items": 10, "mean_batch_size": 5.0, "max_batch_size": 8}}
    after = {"batcher": {"batches": 6, "items": 30, "mean_batch_size": 5.0, "max_batch_size": 8}}
    assert stats_delta(before, after) == {"batcher.batches": 4, "batcher.items": 20,
                                          "batcher.mean_batch_size": 5.0}


def test_aa_control_measures_the_first_target_twice(tiny_path):
    """``aa=1``: a second, independent instance of the first target, interleaved like any
    other; the summary's overhead table carries its A/A row with a verdict."""
    wl = W.make_workload("baseline", smoke=True, questions=3, max_tokens=4, warmup=False, aa=1)
    doc = asyncio.run(run_workload(wl, "tiny", targets=["direct", "engine"]))
    names = [r["target"] for r in doc["records"]]
    assert set(names) == {"direct", "direct~aa", "phase0"} and names.count("direct~aa") == 3
    assert list(doc["config"]["targets"]) == ["direct", "direct~aa", "phase0"]
    rows = {r["target"]: r for r in doc["summary"]["overhead"]}
    assert set(rows) == {"direct~aa", "phase0"}
    assert rows["direct~aa"]["total_verdict"] == "smoke: not evidence"
    engine = W.make_workload("baseline", aa=True).with_aa_control([EngineTarget(StackConfig(), "p0")])
    assert [t.name for t in engine] == ["p0", "p0~aa"] and engine[0] is not engine[1]
    assert W.make_workload("baseline").with_aa_control([DirectTarget()])[0].name == "direct"
