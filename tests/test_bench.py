"""The bench core on real targets (tiny model): every target passes one contract, the runner
treats them alike and survives what goes wrong, and the workloads past the 50 questions run.

Targets here are real: DirectEngine, the stdio Engine, mlx-lm's BatchGenerator, a real
``mlx_lm.server`` and a real ``krmlx serve`` on 127.0.0.1, an ``http://`` URL (a running
krmlx serve), and ``cmd:`` (the calibration stub, whose only job is to calibrate a client).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import psutil
import pytest

from krmlx import Request
from krmlx.bench import make_target, make_workload, run_workload
from krmlx.bench.targets import DirectTarget, HttpTarget, NotSupported
from krmlx.errors import ConfigError, KrmlxError
from krmlx.serve import ServerProcess
from krmlx.timeline import ttft_hops

MODEL = "tiny"
PROMPT = Request("Why is the sky blue?", max_tokens=12, id="contract")


def run(coro):
    return asyncio.run(coro)


def processes_of(pids) -> list[int]:
    return [p for p in pids if psutil.pid_exists(p) and
            psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def reference(tiny_path):
    async def go():
        t = await DirectTarget().start(MODEL)
        try:
            return await t.generate(PROMPT)
        finally:
            await t.stop()

    return run(go())


@pytest.fixture(scope="module")
def served(tiny_path):
    with ServerProcess(MODEL, scheduler="batched") as server:
        yield server


CONTRACT_SPECS = ["direct", "engine", "engine:all?scheduler=batched", "raw", "mlx_lm.server",
                  "krmlx.serve"]


@pytest.mark.parametrize("spec", CONTRACT_SPECS + ["url"])
def test_every_target_passes_the_same_contract(spec, reference, served):
    """Start, a greedy request (the same text as direct, its usage, TTFT within E2E, one
    arrival time per token or chunk), an operation it may lack (NotSupported, never
    another error), stop: nothing of it left running."""
    target = make_target(served.base_url if spec == "url" else spec)

    async def go():
        await target.start(MODEL)
        pids = target.pids()
        try:
            done = await target.generate(PROMPT)
            try:
                ids = await target.tokenize("hello there")
            except NotSupported:
                ids = None
        finally:
            await target.stop()
        return done, ids, pids

    done, ids, pids = run(go())
    assert done.text == reference.text and done.finish_reason == reference.finish_reason
    assert done.usage.output_tokens == reference.usage.output_tokens
    assert 0 < done.ttft_ms <= done.e2e_ms
    assert 1 <= len(done.token_times_s) <= done.usage.output_tokens
    if target.kind in ("direct", "engine"):
        assert done.token_ids == reference.token_ids and ids
    else:
        assert ids is None  # an OpenAI server has no tokenize: NotSupported, not a crash
    assert not target.started and not processes_of(pids)


def test_spec_strings_name_their_targets_and_bad_ones_say_what_exists():
    assert make_target("direct").name == "direct" and make_target("engine").name == "phase0"
    t = make_target("engine:batching,framing?scheduler=batched&liveness_timeout_s=5")
    assert t.name == "batching+framing?scheduler=batched&liveness_timeout_s=5"
    assert t.config.worker.scheduler == "batched" and t.config.worker.liveness_timeout_s == 5
    assert make_target("fast=engine:all").name == "fast"
    assert make_target("engine?prompt_cache=on").config.worker.prompt_cache is not None
    assert make_target("http://127.0.0.1:9/v1?model=m").model_id == "m"
    assert make_target("mlx_lm.server?decode_concurrency=8").options == {"decode_concurrency": 8}
    assert make_target("krmlx.serve:all").name == "serve:all"
    assert make_target("cmd:python -m x --port {port}").name == "cmd:python"
    with pytest.raises(ConfigError, match="unknown target 'vllm'; targets: direct"):
        make_target("vllm")
    with pytest.raises(ConfigError, match="scheduler"):
        make_target("engine?scheduler=magic")
    with pytest.raises(ConfigError, match="unknown phase"):
        make_target("engine:turbo")


def test_an_unreachable_url_is_an_error_naming_the_target(tiny_path):
    wl = make_workload("baseline", smoke=True, questions=1)
    with pytest.raises(KrmlxError, match=r"target 'nowhere' \(nowhere=http://127.0.0.1:9/v1\)"):
        run(run_workload(wl, MODEL, targets=["direct", "nowhere=http://127.0.0.1:9/v1"]))


def test_the_shuffled_order_balances_who_follows_whom():
    """A fixed cycle puts the same target after the same other every time (and charges it
    what that one leaves running); the seeded shuffle gives every ordered pair its share,
    and is the same on every run."""
    from collections import Counter

    from krmlx.bench.runner import rotate, shuffled

    names = ["a", "b", "c", "d"]
    def follows(orders):
        flat = [n for o in orders for n in o]
        return Counter(zip(flat, flat[1:], strict=False))
    cycle = follows(rotate(names, i) for i in range(600))
    assert cycle[("d", "a")] == 450 and cycle[("a", "d")] == 0  # a after d in 3 of 4 requests
    mixed = follows(shuffled(names, 0, i) for i in range(600))
    pairs = [(x, y) for x in names for y in names if x != y]
    assert all(120 < mixed[p] < 250 for p in pairs), mixed  # each pair about 1/12 of 2399
    assert [shuffled(names, 0, i) for i in range(5)] == [shuffled(names, 0, i) for i in range(5)]
    assert any(shuffled(names, 0, i) != shuffled(names, 1, i) for i in range(20))  # per trial


def test_targets_get_equal_warmup_and_interleaved_order(tiny_path):
    """Sequence: for each request every target in turn, in the seeded shuffle of that
    request; the warm-up each got is the same and recorded; the requests' hash is recorded."""
    from krmlx.bench.runner import shuffled

    wl = make_workload("baseline", smoke=True, questions=4, max_tokens=4)
    doc = run(run_workload(wl, MODEL, targets=["direct", "engine", "engine:all"]))
    recs = sorted(doc["records"], key=lambda r: r["t_start_s"])
    order = [r["target"] for r in recs]
    assert order == [n for i in range(4) for n in shuffled(["direct", "phase0", "all"], 0, i)]
    assert [r["request_id"] for r in recs[:3]] == [recs[0]["request_id"]] * 3
    assert "shuffle" in doc["config"]["treatment"]["order"][0]
    t = doc["config"]["treatment"]
    assert t["warmup"]["direct"] == t["warmup"]["phase0"] == t["warmup"]["all"]
    assert t["requests"]["baseline"]["n"] == 4 and len(t["requests"]["baseline"]["sha256"]) == 16
    threads = doc["env"]["threads"]  # who used which threads on how many cores, recorded
    assert set(threads["worker_blas_threads"]) == {"phase0", "all"}  # direct has no worker
    assert all(isinstance(n, int) and n >= 1 for n in threads["worker_blas_threads"].values())
    assert threads["cores_usable"] >= 1 and set(threads["oversubscription_warnings"]) <= {"phase0", "all"}
    # the engines' workers report their own clock, so the summary splits off the wire
    from krmlx.bench.metrics import summarize, to_frame

    s = summarize(to_frame(doc["records"])).set_index("target")
    for name in ("phase0", "all"):
        assert 0 < s.loc[name, "wire_ttft_ms_p50"] < s.loc[name, "ttft_ms_p50"]
        assert 0 < s.loc[name, "worker_tpot_ms_mean"]
    assert s["wire_ttft_ms_p50"].isna()["direct"]


def test_oversubscription_is_warned_when_worker_and_caller_want_more_cores_than_usable():
    from krmlx.doctor import oversubscription_warning

    warning = oversubscription_warning(2, 2)
    assert warning and "2 BLAS threads" in warning and "3 cores, 2 usable" in warning
    assert oversubscription_warning(4, 2) is None and oversubscription_warning(2, 1) is None
    assert oversubscription_warning(None, 2) is None and oversubscription_warning(2, None) is None


def test_what_a_target_lacks_is_recorded_not_a_crash(tiny_path):
    """model_switching through direct (one model) and an engine: direct is not supported
    for it (recorded once, no records), the engine runs it."""
    wl = make_workload("model_switching", smoke=True, switches=(3,), warm_cache=False)
    doc = run(run_workload(wl, MODEL, targets=["direct", "engine:caching"]))
    assert {r["target"] for r in doc["records"]} == {"caching"}
    (note,) = [n for n in doc["config"]["not_supported"] if n["target"] == "direct"]
    assert note["op"] == "generate" and "model switching" in note["reason"]


def test_a_server_that_dies_mid_run_is_recorded_and_the_run_keeps_what_it_measured(tiny_path):
    wl = make_workload("baseline", smoke=True, questions=6, max_tokens=8, warmup=False)
    server = make_target("mlx_lm.server")

    async def go():
        async def killer():
            while not server.alive:
                await asyncio.sleep(0.05)
            while sum(1 for r in records if r["target"] == "mlx_lm.server") < 2:
                await asyncio.sleep(0.01)
            os.killpg(server.process.pid, signal.SIGKILL)

        kill = asyncio.ensure_future(killer())
        doc = await run_workload(wl, MODEL, targets=["direct", server], records=records)
        await kill
        return doc

    records: list = []
    doc = run(go())
    mine = [r for r in doc["records"] if r["target"] == "mlx_lm.server"]
    assert 2 <= len(mine) < 6 and sum(not r["ok"] for r in mine) == 1
    assert "mlx_lm.server" in doc["config"]["target_errors"]
    assert len([r for r in doc["records"] if r["target"] == "direct"]) == 6  # the others go on
    assert not server.started


def test_the_http_client_is_calibrated_against_the_stub(tiny_path):
    """The stub streams its first token after 20 ms, then one every 2 ms: the client can't
    see a token earlier than that, nor the gaps shorter on average; what it adds is in the
    micro summary (the floor under any HTTP measurement)."""
    doc = run(run_workload(make_workload("micro", smoke=True), MODEL))
    http = {r["target"]: r for r in doc["summary"]["http"]}
    paced = http["stub:paced"]
    assert paced["ttft_ms_p50"] >= 20.0 and paced["client_added_ttft_ms_p50"] >= 0
    assert paced["itl_ms_p50"] >= 1.0 and paced["client_cpu_us_per_chunk"] > 0
    assert http["stub:burst"]["wall_us_per_chunk"] > 0
    # the stub's own points calibrate the client's hops: request out, headers in, first event
    hops = {(r["target"], r["hop"]): r for r in doc["summary"]["client_hops"]}
    assert set(hops) == {(f"stub:{n}", h) for n in ("burst", "paced")
                         for h in ("request", "headers", "first_event")}
    assert all(r["ci_low"] <= r["p50_ms"] <= r["ci_high"] for r in hops.values())
    # stamped before it is written: the client parses the first event after
    assert hops["stub:paced", "request"]["p50_ms"] > 0 and hops["stub:paced", "first_event"]["p50_ms"] > 0
    stub = next(r for r in doc["records"] if r["target"] == "stub:paced" and r["ok"])
    assert list(ttft_hops(stub["timeline"])) == ["http_sent", "http_headers", "http_content"]
    stream = {r["target"]: r for r in doc["summary"]["stream"]}
    assert set(stream) == {f"stream:{c}{v}" for c in ("json", "msgpack")
                           for v in ("", "+window64", "+coalesce8")} | {"stream:json+no-timeline"}
    # CPU times tick at 10 ms: a smoke stream may round the worker's to 0
    assert all(r["wall_us_per_token"] > 0 and r["caller_cpu_us_per_token"] > 0
               and r["worker_cpu_us_per_token"] >= 0 for r in stream.values())
    assert {r["target"] for r in doc["summary"]["ping"]} == {"ping:json", "ping:msgpack"}
    paths = {r["target"] for r in doc["summary"]["tokenize"]}
    assert paths == {"tokenize:in-process", "tokenize:worker", "tokenize:batched"}


@pytest.mark.parametrize("name, params, check", [
    ("lengths", {}, lambda s: {r["length"] for r in s["overhead_by_length"]} == {16, 256}),
    ("chat", {}, lambda s: {r["turn"] for r in s["turns"]} == {0, 1}
     and max(r["cached_prompt_tokens_mean"] or 0 for r in s["turns"]) > 0),
    ("goodput", {}, lambda s: all(0 <= r["goodput_fraction"] <= 1 for r in s["rates"])),
    ("prompt_cache", {}, lambda s: {r["target"]: r for r in s["prompt_cache"]}["prompt_cache"]
     ["cached_tokens_p50"] > 0),
    ("speculative", {}, lambda s: s["speculative"][1]["identical_to_no_draft"] == 2),
])
def test_the_workloads_past_the_50_questions_run_on_their_targets(name, params, check, tiny_path):
    targets = ["engine"] if name == "goodput" else None
    doc = run(run_workload(make_workload(name, smoke=True, **params), MODEL, targets=targets))
    assert doc["records"] and all(r["ok"] for r in doc["records"]), doc["config"]["target_errors"]
    assert check(doc["summary"]), doc["summary"]


def test_lengths_prompts_have_the_lengths_they_name(tiny_path):
    from krmlx.bench.prompts import prompt_of_length
    from krmlx.bench.runner import Plan, Run

    tok = Run({}, Plan(), "lengths", MODEL, [], {}).tokenizer()
    from krmlx import gen

    for n in (16, 64, 256):
        got = len(gen.encode_prompt(tok, {"prompt": prompt_of_length(tok, n), "chat": True}))
        assert n <= got <= n + 3, (n, got)


def max_in_flight(recs) -> int:
    """The most requests open at once (from each record's start and end)."""
    edges = sorted([(r["t_start_s"], 1) for r in recs] + [(r["t_end_s"], -1) for r in recs],
                   key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, d in edges:
        now += d
        most = max(most, now)
    return most


def test_closed_loop_concurrency_keeps_c_in_flight_with_prompts_of_the_length_asked(tiny_path):
    """mode=closed (the load generators' ``concurrent`` profile): ``requests`` per level,
    never more than ``c`` open, the next sent as one ends; synthetic prompts of
    ``prompt_tokens``."""
    wl = make_workload("concurrency", levels=(1, 3), mode="closed", requests=6,
                       prompts="synthetic", prompt_tokens=40, max_tokens=24)
    doc = run(run_workload(wl, MODEL, targets=["engine"]))
    recs = doc["records"]
    assert all(r["ok"] for r in recs)
    for c in (1, 3):
        level = [r for r in recs if r["level"] == c]
        assert len(level) == 6 and len({r["request_id"] for r in level}) == 6
        assert max_in_flight(level) == c  # c open at once, never more
        assert all(40 <= r["prompt_tokens"] <= 43 for r in level), [r["prompt_tokens"] for r in level]
    rows = {r["concurrency"]: r for r in doc["summary"]["levels"]}
    assert set(rows) == {1, 3} and all(rows[c]["aggregate_tps"] > 0 for c in rows)
    floor = doc["config"]["hardware_floor"]
    assert floor["weight_bytes"] > 1e5 and floor["bandwidth_gbs"] > 0.1
    for c, row in rows.items():  # the weight-streaming ceiling: c x bandwidth / weights
        assert row["floor_tok_s"] == pytest.approx(c * floor["bandwidth_gbs"] * 1e9 / floor["weight_bytes"])
        assert row["floor_fraction"] == pytest.approx(row["aggregate_tps"] / row["floor_tok_s"])
        assert 0 < row["floor_fraction"] < 1
    with pytest.raises(ConfigError, match="mode"):
        make_workload("concurrency", mode="open").validate(MODEL)


def test_the_crosscheck_agrees_only_within_its_tolerance():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from crosscheck import ToolRow, compare, start_gap_p50_ms

    def row(tool, c, ttft, tps):
        return ToolRow(tool, c, 20, 0, 0, ttft, 5.0, 6.0, 200.0, tps, 64, 32, 1.0)

    mine = [row("krmlx", 1, 105.0, 100.0), row("krmlx", 4, 130.0, 300.0)]
    tool = [[row("guidellm", 1, 100.0, 98.0), row("guidellm", 4, 100.0, 300.0)],
            [row("guidellm", 1, 100.0, 102.0), row("guidellm", 4, 100.0, 300.0)]]
    got = {r["concurrency"]: r for r in compare(mine, tool, 0.10)}
    assert got[1]["agree"] and got[1]["ttft_p50_ms_diff_pct"] == pytest.approx(5.0)
    assert got[1]["output_tok_s_tool"] == pytest.approx(100.0)  # the mean of the two runs
    assert not got[4]["agree"] and got[4]["ttft_p50_ms_diff_pct"] == pytest.approx(30.0)
    assert got[1]["within_tool_spread"] is False  # 105 ms lies outside the runs' 100..100
    assert got[1]["output_tok_s_tool_spread_pct"] == pytest.approx(4.0)
    wide = [[row("guidellm", 4, 80.0, 250.0)], [row("guidellm", 4, 140.0, 320.0)]]
    (w,) = compare([row("krmlx", 4, 130.0, 300.0)], wide, 0.10)
    assert not w["agree"] and w["within_tool_spread"]
    # request starts 1 ms and 99 ms apart: the median gap is 50 ms, in any order
    assert start_gap_p50_ms([0.1, 0.0, 0.001]) == pytest.approx(50.0)


def test_direct_is_refused_for_open_loop_arrivals(tiny_path):
    doc = run(run_workload(make_workload("goodput", smoke=True), MODEL, targets=["direct", "engine"]))
    assert {r["target"] for r in doc["records"]} == {"phase0"}
    assert [n["target"] for n in doc["config"]["not_supported"]] == ["direct"]


def test_the_cli_runs_a_workload_on_the_targets_given(tmp_path, tiny_path):
    import subprocess

    from krmlx.bench.results import read_results

    p = subprocess.run([sys.executable, "-m", "krmlx", "bench", "baseline", "--smoke", "--model",
                        MODEL, "--target", "direct", "--target", "engine", "--param",
                        "questions=2", "--out", str(tmp_path), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    (path,) = tmp_path.glob("baseline-*.json")  # its trace is in traces/, apart
    assert (tmp_path / "traces" / path.name).exists()
    doc = read_results(path)
    assert {r["target"] for r in doc["records"]} == {"direct", "phase0"}
    assert len(doc["records"]) == 4 and doc["config"]["params"]["questions"] == 2
    bad = subprocess.run([sys.executable, "-m", "krmlx", "bench", "baseline", "--target", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown target 'nope'" in bad.stderr


def test_an_http_target_takes_the_model_the_server_lists_and_says_how_it_connects(served, tiny_path):
    target = HttpTarget(served.base_url)

    async def go():
        await target.start(MODEL)
        try:
            return target.model_id, target.info()
        finally:
            await target.stop()

    model_id, info = run(go())
    assert model_id == MODEL and info["served_models"][0] == MODEL
    assert info["http_client"]["keep_alive"] is True and info["http_client"]["max_connections"] > 0


SSE_REPLY = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
             b'data: {"choices": [{"delta": {"content": "hi"}, "finish_reason": "length"}]}\n\n'
             b"data: [DONE]\n\n")


async def resetting_server(resets: int):
    """A calibration server: the first ``resets`` connections are reset after their request
    arrives, unanswered (as a full listen backlog does); later ones get one SSE reply."""
    import socket
    import struct

    seen = []

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        seen.append(len(seen))
        if len(seen) <= resets:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        writer.write(SSE_REPLY)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


@pytest.mark.parametrize("resets, ok", [(2, True), (3, False)])
def test_the_http_client_sends_again_a_request_whose_connection_died_unanswered(resets, ok):
    """Two retries (the openai SDK's default), timed from the first attempt and counted in
    the completion; a third reset is the request's error."""
    from krmlx.bench.http import OpenAIClient

    async def go():
        server, port, seen = await resetting_server(resets)
        client = OpenAIClient(f"http://127.0.0.1:{port}/v1")
        try:
            if not ok:
                with pytest.raises(Exception) as e:
                    await client.generate(Request("x", max_tokens=1), "m")
                assert "ReadError" in type(e.value).__name__ or "Protocol" in type(e.value).__name__
                return len(seen), None
            done = await client.generate(Request("x", max_tokens=1), "m")
            return len(seen), done
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()

    attempts, done = run(go())
    assert attempts == 3
    if ok:
        assert done.text == "hi" and done.extra["connect_retries"] == 2
        assert done.ttft_ms >= 200  # two waits of 0.1 s before the answered attempt


def test_the_trial_block_ci_widens_where_noise_is_shared_within_a_trial():
    """Every request of a trial shifted together (a host slow for a whole trial, on both
    targets' turns in different amounts): the per-request CI treats 160 pairs as
    independent and comes out narrow; resampling whole trials does not."""
    import numpy as np
    import pandas as pd

    from krmlx.bench.metrics import paired_totals, trial_block_ratio_ci

    rng = np.random.default_rng(1)
    rows = []
    for trial in range(20):
        shift = rng.normal(0, 0.05)  # the other target's share of this trial's noise
        for i in range(8):
            base = 100 * (1 + rng.normal(0, 0.01))
            rows += [{"target": "a", "trial": trial, "request_id": f"r{i}", "ok": True,
                      "e2e_ms": base},
                     {"target": "b", "trial": trial, "request_id": f"r{i}", "ok": True,
                      "e2e_ms": base * (1 + shift)}]
    df = pd.DataFrame(rows)
    per_request = paired_totals(df, "a", "b")
    by_trial = trial_block_ratio_ci(df, "a", "b")
    assert by_trial["trials"] == 20 and by_trial["ratio"] == pytest.approx(per_request["ratio"])
    assert by_trial["ratio_ci_low"] < by_trial["ratio"] < by_trial["ratio_ci_high"]
    width = by_trial["ratio_ci_high"] - by_trial["ratio_ci_low"]
    assert width > 2 * (per_request["ratio_ci_high"] - per_request["ratio_ci_low"])
    assert trial_block_ratio_ci(df[df["trial"] < 9], "a", "b") is None  # too few trials: no CI


def test_trial_ratio_ci_resamples_whole_trials_of_plateaued_ttfts():
    """A wave's first tokens come in plateaus, so one trial's p50 jumps with how arrivals
    split. Ten trials where the other target's TTFTs are exactly half the base's give a
    CI of exactly 0.5; one trial where they are level widens it, above 0.5 and around the
    pooled ratio; nine trials give no CI. Through the concurrency summary: the ratio rows
    carry these CIs (resampling trials) for TTFT p50 and throughput."""
    import math

    from krmlx.bench.metrics import trial_ratio_ci
    from krmlx.bench.workloads.concurrency import Concurrency

    base = {t: [600.0] * 8 + [1450.0] * 8 for t in range(10)}
    half = {t: [v / 2 for v in vs] for t, vs in base.items()}
    exact = trial_ratio_ci(base, half)
    assert exact["trials"] == 10 and exact["ratio"] == pytest.approx(0.5)
    assert exact["ratio_ci_low"] == pytest.approx(0.5) and exact["ratio_ci_high"] == pytest.approx(0.5)
    mixed = trial_ratio_ci(base, {**half, 3: base[3]})
    assert 0.5 <= mixed["ratio_ci_low"] <= mixed["ratio"] <= mixed["ratio_ci_high"]
    assert mixed["ratio_ci_high"] > 0.5
    few = trial_ratio_ci({t: base[t] for t in range(9)}, half)
    assert few["trials"] == 9 and math.isnan(few["ratio_ci_low"]) and math.isnan(few["ratio_ci_high"])

    records, measurements = [], []
    for trial in range(10):
        for name, ttfts, wall in (("a", base[trial], 2.0), ("b", half[trial], 1.0)):
            measurements.append({"trial": trial, "target": name, "level": 16, "wall_s": wall,
                                 "caller_cpu_s": 0.0, "target_cpu_s": 0.0})
            records += [{"workload": "concurrency", "target": name, "trial": trial, "level": 16,
                         "request_id": f"r{i}", "ok": True, "ttft_ms": v, "e2e_ms": v + 100,
                         "tpot_ms": 10.0, "output_tokens": 8, "output_ids": [1] * 8}
                        for i, v in enumerate(ttfts)]
    summary = Concurrency().summarize(records, {"targets": {"a": {}, "b": {}},
                                                "measurements": measurements})
    (row,) = summary["ratios"]
    assert row["trials"] == 10 and row["ttft_p50_target_over_base"] == pytest.approx(0.5)
    assert row["ttft_p50_target_over_base_ci_low"] == pytest.approx(0.5) == row["ttft_p50_target_over_base_ci_high"]
    assert row["tok_s_target_over_base"] == pytest.approx(2.0) == row["tok_s_target_over_base_ci_low"]


def test_pool_summarizes_replications_as_one_run_with_trials_kept_whole(tiny_path, tmp_path):
    """Two 5-trial lengths runs (different seeds, so different prompts) pooled: 10 distinct
    trials, every record kept and naming its file, and the CI over whole trials that
    neither run has alone (it needs 10). A run with other settings, or --out naming an
    input, is refused with the reason, and the inputs are left as they were."""
    from krmlx.bench.pool import pool_results
    from krmlx.bench.results import read_results, write_results
    from krmlx.cli import main
    from krmlx.errors import ResultsError

    # The first model load in a process loads the system's OpenBLAS, which the env then
    # reports: after one untimed run, both runs below share one env (as a CLI run's do).
    run(run_workload(make_workload("lengths", smoke=True), MODEL, targets=["direct"]))
    paths = []
    for seed in (1, 2):
        wl = make_workload("lengths", lengths=(16,), per_length=2, max_tokens=4, seed=seed)
        doc = run(run_workload(wl, MODEL, targets=["direct", "engine"], trials=5))
        assert not any("trial_ci_low" in k for row in doc["summary"]["overhead_by_length"]
                       for k in row)
        paths.append(write_results(tmp_path / f"run{seed}.json", **doc))
    out = tmp_path / "pooled.json"
    assert main(["pool", *map(str, paths), "--out", str(out)]) == 0
    pooled = read_results(out)
    inputs = [read_results(p) for p in paths]
    assert len(pooled["records"]) == sum(len(d["records"]) for d in inputs) == 40
    assert sorted({r["trial"] for r in pooled["records"]}) == list(range(10))
    assert {r["pooled_from"] for r in pooled["records"]} == set(map(str, paths))
    assert [s["seed"] for s in pooled["config"]["pooled_from"]] == [1, 2]
    (row,) = pooled["summary"]["overhead_by_length"]
    assert row["e2e_overhead_pct_trial_ci_low"] < row["e2e_overhead_pct"] \
        < row["e2e_overhead_pct_trial_ci_high"]
    assert pooled["summary"]["outputs_match"][0]["identical_outputs"] == 20

    other = dict(inputs[1], config={**inputs[1]["config"],
                                    "params": {**inputs[1]["config"]["params"], "max_tokens": 8}})
    odd = write_results(tmp_path / "odd.json", **{k: other[k] for k in
                                                  ("env", "config", "records", "summary")})
    with pytest.raises(ResultsError, match=r"max_tokens"):
        pool_results([paths[0], odd])
    small = tmp_path / "pooled-summary.json"
    assert main(["pool", *map(str, paths), "--out", str(small), "--summary-only"]) == 0
    brief = read_results(small)
    assert brief["records"] == [] and brief["config"]["records_left_out"] == 40
    assert brief["summary"]["overhead_by_length"] == pooled["summary"]["overhead_by_length"]
    before = paths[0].read_bytes()
    assert main(["pool", str(paths[0]), str(paths[1]), "--out", str(paths[0])]) == 2
    assert paths[0].read_bytes() == before


def test_order_split_separates_what_running_second_costs():
    """Whichever target runs second in a pair is 4% slower (it follows the other one's
    process): the overhead over the pairs where the base ran first shows +4%, the other way
    round -4%, and their mean the true 0."""
    import pandas as pd

    from krmlx.bench.metrics import order_split

    rows = []
    for trial in range(4):
        for i in range(6):
            base_first = (i + trial) % 2 == 0
            for engine, t in (("a", 0.0 if base_first else 1.0), ("b", 1.0 if base_first else 0.0)):
                rows.append({"target": engine, "trial": trial, "request_id": f"r{i}", "ok": True,
                             "t_start_s": 10.0 * i + t, "e2e_ms": 100.0 * (1.04 if t else 1.0)})
    split = order_split(pd.DataFrame(rows), "a", "b")
    assert split["n_base_first"] == split["n_other_first"] == 12
    assert split["base_first"] == pytest.approx(1.04) and split["other_first"] == pytest.approx(1 / 1.04)
    one_way = pd.DataFrame([r for r in rows if r["request_id"] in ("r0", "r2", "r4")
                            and r["trial"] % 2 == 0])
    assert order_split(one_way, "a", "b") is None  # one order only: nothing to split


def test_lengths_in_blocks_runs_each_target_through_a_lengths_requests_in_turn(tiny_path):
    wl = make_workload("lengths", lengths=(16,), per_length=3, max_tokens=4, order="blocks")
    doc = run(run_workload(wl, MODEL, targets=["direct", "engine"], trials=2))
    by_start = sorted(doc["records"], key=lambda r: r["t_start_s"])
    runs = [(r["trial"], r["target"]) for r in by_start]
    assert runs == [(0, "direct")] * 3 + [(0, "phase0")] * 3 + [(1, "phase0")] * 3 + [(1, "direct")] * 3
    assert doc["config"]["treatment"]["order"][0].startswith("sequence in blocks")
    (row,) = doc["summary"]["overhead_by_length"]
    assert row["e2e_overhead_pct_base_first"] is not None and row["e2e_overhead_pct_other_first"] is not None
    with pytest.raises(ConfigError, match="order must be one of"):
        make_workload("lengths", order="zigzag").validate(MODEL)
