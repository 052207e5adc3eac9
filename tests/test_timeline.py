"""krmlx.timeline: every hop a request passes, on one clock, through DirectEngine and the
Engine (each scheduler), summarized hop by hop and exported as a Perfetto trace."""

from __future__ import annotations

import asyncio
import json

import pandas as pd
import pytest

from krmlx import DirectEngine, Engine, Request, StackConfig, WorkerConfig
from krmlx import timeline as T
from krmlx.bench import hops as H

SERVED_POINTS = ("client_written", "worker_read", "queued", "job_start", "encoded")


def complete(engine, n: int = 6):
    async def main():
        async with engine as e:
            return await e.complete(Request("Why is the sky blue?", max_tokens=n))
    return asyncio.run(main())


def test_direct_timeline_adds_up_to_its_ttft(tiny_path):
    c = complete(DirectEngine("tiny"))
    tl = c.extra["timeline"]
    assert len(tl["sampled"]) == c.usage.output_tokens == len(tl["delivered"])
    hops = T.ttft_hops(tl)
    assert set(hops) == {"encoded", "sampled"}
    assert sum(hops.values()) == pytest.approx(c.ttft_ms, abs=1e-3)


@pytest.mark.parametrize("scheduler", ["serial", "batched", "auto"])
def test_served_timeline_has_every_hop_in_order(tiny_path, scheduler):
    c = complete(Engine("tiny", StackConfig.phases([], scheduler=scheduler)))
    tl = c.extra["timeline"]
    n = c.usage.output_tokens
    assert n >= 2 and all(len(tl[p]) == n for p in T.PER_TOKEN), {p: len(tl[p]) for p in T.PER_TOKEN}
    points = [tl[p] for p in SERVED_POINTS] + [tl[p][0] for p in T.PER_TOKEN]
    assert points == sorted(points) and points[0] >= 0, points  # one clock, hops in order
    hops = T.ttft_hops(tl)
    assert list(hops) == [*SERVED_POINTS, "sampled", "written", "received", "yielded"]
    assert sum(hops.values()) == pytest.approx(c.ttft_ms, abs=1e-3)  # they add up to the TTFT
    assert tl["delivered"][-1] <= c.e2e_ms
    per_token = c.extra["token_hops"]
    assert set(per_token) == {"step", "written", "received", "yielded", "delivered"}
    assert all(v >= 0 for v in per_token.values())


def test_the_switch_turns_the_worker_timeline_off(tiny_path):
    c = complete(Engine("tiny", StackConfig(worker=WorkerConfig(timeline=False))))
    assert "timeline" not in c.extra and c.usage.output_tokens >= 1


def test_breakdown_attribution_and_trace_from_a_run(tiny_path, tmp_path):
    from krmlx.bench import make_workload, run_workload

    doc = asyncio.run(run_workload(make_workload("baseline", smoke=True, questions=4, max_tokens=6,
                                                 warmup=False), "tiny", targets=["direct", "engine"]))
    summary = doc["summary"]
    rows = pd.DataFrame(summary["hops"])
    ttft = rows[rows["phase"] == "ttft"]
    for engine, part in ttft.groupby("target"):  # the stacked means are the mean TTFT
        ok = [r["ttft_ms"] for r in doc["records"] if r["target"] == engine and r["ok"]]
        # the marks are kept to 0.1 µs (timeline.relative), so the sum can miss by a little
        assert part["mean_ms"].sum() == pytest.approx(sum(ok) / len(ok), abs=1e-3)
    diff = pd.DataFrame(summary["hops_vs_direct"])
    assert set(diff["target"]) == {"phase0"} and diff["pairs"].iloc[0] == 4
    measured = pd.DataFrame(doc["records"]).pivot_table(index="request_id", columns="target",
                                                        values="ttft_ms")
    delta = (measured["phase0"] - measured["direct"]).mean()
    hops = diff[diff["hop"] != "unexplained"]
    assert hops["diff_ms"].sum() == pytest.approx(delta, abs=1e-3)
    assert abs(diff.set_index("hop").loc["unexplained", "diff_ms"]) < 1e-3
    assert set(hops[~hops["serving"].astype(bool)]["hop"]) == set(T.COMPUTE_HOPS)
    # the reference's IPC breakdown rows get measured counterparts: sums of phase 0's hops
    ipc = {r["metric"]: r for r in summary["estimates"] if r["workload"] == "ipc_per_request"}
    assert set(ipc) == set(H.IPC_HOPS)
    by_hop = diff.set_index("hop")["diff_ms"]
    for metric, group in H.IPC_HOPS.items():
        assert ipc[metric]["measured"] == pytest.approx(by_hop[list(group)].sum(), abs=1e-6), metric
        assert ipc[metric]["ci_low"] <= ipc[metric]["measured"] <= ipc[metric]["ci_high"]
    from krmlx.bench.estimates import compare_estimates

    table = compare_estimates([{**r, "smoke": True} for r in summary["estimates"]])["phase1_ipc_breakdown"]
    row = table.set_index("row").loc["Breakdown: stdio write/read"]
    assert row["measured"] == pytest.approx(ipc["stdio_ms_mean"]["measured"])
    assert row["verdict"] == "smoke: not evidence"
    path = H.write_trace(doc, tmp_path / "run.json")
    assert path == tmp_path / "traces" / "run.json"
    trace = json.loads(path.read_text())["traceEvents"]
    names = {e["args"]["name"] for e in trace if e["ph"] == "M"}
    assert names == {"direct caller", "phase0 caller", "phase0 worker"}
    flows = [e for e in trace if e.get("cat") == "flow"]
    assert len({e["id"] for e in flows}) == 4 and {e["ph"] for e in flows} == {"s", "t", "f"}
    slices = [e for e in trace if e["ph"] == "X"]
    assert all(e["dur"] >= 0 for e in slices) and len(slices) >= 4 * (2 + 9)


def test_the_way_out_is_split_by_stage(tiny_path):
    """Every stage stamps its entry on the call's timeline, so the way out to the worker's
    pipe splits by stage, in stack order, and the parts add up to it."""
    from krmlx.bench import make_workload, run_workload

    doc = asyncio.run(run_workload(make_workload("baseline", smoke=True, questions=3, max_tokens=4,
                                                 warmup=False), "tiny", targets=["direct", "engine:all"]))
    for r in doc["records"]:
        split = T.stage_hops(r["timeline"])
        if r["target"] == "direct":
            assert split == {}
            continue
        order = [k for _, k in sorted((t, k) for k, t in r["timeline"].items() if k.startswith("stage:"))]
        assert order == ["stage:retry", "stage:breaker", "stage:model_cache", "stage:batcher",
                         "stage:framer", "stage:client"]
        assert all(v >= 0 for v in split.values())
        assert sum(split.values()) == pytest.approx(r["timeline"]["client_written"], abs=1e-3)
    rows = pd.DataFrame(doc["summary"]["stage_hops"])
    assert set(rows["target"]) == {"all"} and set(rows["stage"]) == {"caller", *order}
    assert (rows["requests"] == 3).all() and (rows["ci_low"] <= rows["mean_ms"]).all()


def test_http_targets_get_client_hops_and_krmlx_serve_its_own(tiny_path):
    """Over HTTP the client's hops (request sent, headers in, first content event) are on
    every target; krmlx serve adds its own and its engine's on the same clock, so its hops
    add up to the TTFT the client measured; mlx_lm.server's are the client's alone."""
    from krmlx.bench import make_workload, run_workload

    doc = asyncio.run(run_workload(make_workload("baseline", smoke=True, questions=2, max_tokens=6,
                                                 warmup=False), "tiny",
                                   targets=["direct", "serve=krmlx.serve", "mlx_lm.server"]))
    by = {}
    for r in doc["records"]:
        assert r["ok"], r.get("error")
        by.setdefault(r["target"], []).append(r)
    for r in by["serve"]:
        tl = r["timeline"]
        hops = T.ttft_hops(tl)
        assert {"http_sent", "serve_received", "serve_ready", "worker_read", "sampled",
                "sse_first", "http_content"} <= set(hops) and "http_headers" not in hops
        assert sum(hops.values()) == pytest.approx(r["ttft_ms"], abs=1e-3)
        assert all(v >= 0 for k, v in hops.items() if k != "serve_received"), hops
        assert r["token_hops"]["step"] > 0
    for r in by["mlx_lm.server"]:
        hops = T.ttft_hops(r["timeline"])
        assert list(hops) == ["http_sent", "http_headers", "http_content"]
        assert sum(hops.values()) == pytest.approx(r["ttft_ms"], abs=1e-3)
    diff = pd.DataFrame(doc["summary"]["hops_vs_direct"])
    assert set(diff["target"]) == {"serve", "mlx_lm.server"}
    assert (diff[diff["hop"] == "unexplained"]["diff_ms"].abs() < 1e-3).all()


def test_plots_of_the_breakdown_and_one_request(tiny_path):
    from matplotlib.figure import Figure

    from krmlx.bench import make_workload, run_workload
    from krmlx.report import plots

    doc = asyncio.run(run_workload(make_workload("baseline", smoke=True, questions=2, max_tokens=4,
                                                 warmup=False), "tiny", targets=["direct", "engine"]))
    fig = plots.hop_breakdown(doc)
    assert isinstance(fig, Figure)
    ends = {}  # each bar's right edge, per row: the stack's length is the mean TTFT
    for bar in fig.axes[0].patches:
        row = round(bar.get_y() + bar.get_height() / 2)
        ends[row] = max(ends.get(row, 0.0), bar.get_x() + bar.get_width())
    rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert sorted(rows) == ["direct", "phase0"]
    means = [sum(r["ttft_ms"] for r in doc["records"] if r["target"] == e) / 2 for e in rows]
    assert [ends[0], ends[1]] == pytest.approx(means, rel=1e-6)
    served = next(r for r in doc["records"] if r["target"] == "phase0")
    wf = plots.waterfall(served)
    assert [t.get_text() for t in wf.axes[0].get_yticklabels()][0] == dict(T.TTFT_HOPS)["client_written"]
    assert isinstance(plots.waterfall({"target": "x"}), Figure)  # no timeline: says so
    tables = H.tables(doc["summary"])
    assert len(tables) == 3 and all(len(t) for t in tables.values())


def test_a_long_prompt_marks_each_prefill_chunk(tiny_path):
    """The prefill runs in chunks of 512 tokens: the timeline keeps its start, each
    chunk's end and the first token's evaluation, between the prompt's encode and the first token, on the direct path and
    the worker's serial path alike; the trace shows them as slices."""
    from krmlx import models
    from krmlx.bench.prompts import prompt_of_length

    _, tok = models.load(tiny_path)
    req = Request(prompt_of_length(tok, 1200, chat=False), max_tokens=3, chat=False)

    async def go():
        config = StackConfig(worker=WorkerConfig(scheduler="serial"))
        async with DirectEngine(tiny_path) as direct, Engine(tiny_path, config) as served:
            return [await e.complete(req) for e in (direct, served)]

    for c in asyncio.run(go()):
        tl = c.extra["timeline"]
        chunks = tl["prefill"]
        # the start, the ends of 512 + 512 + the rest but one token, then the first token
        # evaluated (the last prompt token goes with the first step)
        assert len(chunks) == 5
        assert tl["encoded"] <= chunks[0] and chunks == sorted(chunks) and chunks[-1] <= tl["sampled"][0]
