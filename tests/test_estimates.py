"""data/estimates.json and krmlx.bench.estimates: the published kr-serve-mlx estimates."""

import copy
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from krmlx.bench import estimates as E
from krmlx.errors import ResultsError

SOURCE_MD = Path("/work/shared/reference/kr-serve-mlx-phase3-estimates.md")

# Every table of the markdown ("table") and every prose list of figures ("bullets"),
# in document order, with its row count.
EXPECTED = {
    "baseline": ("table", 5),
    "baseline_observations": ("bullets", 5),
    "phase1_ipc_breakdown": ("bullets", 10),
    "phase1_conservative": ("bullets", 6),
    "phase1_tokenize": ("bullets", 6),
    "phase1_batching": ("table", 4),
    "phase2_model_loads": ("bullets", 7),
    "phase2_caching": ("table", 4),
    "phase3_retry": ("bullets", 9),
    "phase3_errors": ("table", 4),
    "combined_best_case": ("table", 5),
    "combined_realistic": ("table", 5),
    "phase5_streaming": ("bullets", 12),
    "summary_50q": ("table", 5),
    "mixed_workload": ("table", 5),
    "api_server": ("table", 5),
}
KEY = re.compile(r"^(n_[a-z]+|([a-z]+_)+(s|ms|hours|x|pct|gb)(_(low|high|conservative|optimistic))?)$")


@pytest.fixture(scope="module")
def est():
    return E.load_estimates()


def rows_of(est):
    return [(t["id"], r) for t in est["tables"] for r in t["rows"]]


def test_every_table_and_row_is_there(est):
    assert est["source"] == "kr-serve-mlx-phase3-estimates.md" and est["date"] == "2025-11-04"
    assert E.DEFAULT_PATH == Path(__file__).resolve().parents[1] / "data" / "estimates.json"
    got = {t["id"]: (t["format"], len(t["rows"])) for t in est["tables"]}
    assert list(got) == list(EXPECTED) and got == EXPECTED
    assert sum(n for _, n in EXPECTED.values()) == len(rows_of(est)) == 97
    for t in est["tables"]:
        assert t["title"] and t["section"] and len(t["columns"]) >= 2
        assert len({r["row"] for r in t["rows"]}) == len(t["rows"]), t["id"]
        for r in t["rows"]:
            assert list(r["values"]) == t["columns"][1:], (t["id"], r["row"])


@pytest.mark.skipif(not SOURCE_MD.exists(), reason="the reference markdown is not on this machine")
def test_markdown_tables_are_copied_as_written(est):
    tables, current = [], None
    for line in SOURCE_MD.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            current = None
            continue
        cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
        if set("".join(cells)) <= set("-: "):
            continue
        if current is None:
            current = [cells]
            tables.append(current)
        else:
            current.append(cells)
    ours = [t for t in est["tables"] if t["format"] == "table"]
    assert len(tables) == len(ours) == 9
    for md, t in zip(tables, ours, strict=True):
        assert md[0] == t["columns"], t["id"]
        assert md[1:] == [[r["row"], *r["values"].values()] for r in t["rows"]], t["id"]


def cell_numbers(text):
    """Candidate values in a cell: each number, ms also as s, and the sum of an 'A + B' cell."""
    found = [(float(m.group(1)), m.group(2)) for m in re.finditer(r"(\d+(?:\.\d+)?)\s*(ms|s\b)?", text)]
    out = [x for x, _ in found] + [x / 1e3 for x, unit in found if unit == "ms"]
    if " + " in text:
        out.append(sum(x for x, _ in found))
    return out


def test_parsed_numbers_match_the_text(est):
    for tid, r in rows_of(est):
        where = (tid, r["row"])
        assert r["parsed"], where
        texts = list(r["values"].values())
        candidates = [x for text in texts for x in cell_numbers(text)]
        for key, value in r["parsed"].items():
            assert KEY.match(key), (where, key)
            assert any(math.isclose(abs(value), c, rel_tol=1e-9, abs_tol=1e-12) for c in candidates), (where, key)
            if value < 0:
                assert any("-" + f"{abs(value):g}" in t.replace("−", "-") for t in texts), (where, key)
        for text in texts:  # every cell with a figure gave at least one parsed number
            if re.search(r"\d", text):
                assert any(math.isclose(abs(v), c) for v in r["parsed"].values() for c in cell_numbers(text)), (where, text)


def test_some_cells_by_hand(est):
    rows = {(tid, r["row"]): r for tid, r in rows_of(est)}
    assert rows[("baseline", "TTFT (mean)")]["parsed"] == {
        "krserve_ms": 95.77, "mlx_engine_ms": 90.75, "overhead_ms": 5.02, "overhead_pct": 5.5}
    assert rows[("baseline", "Throughput")]["parsed"]["overhead_pct"] == -0.7
    assert rows[("phase2_caching", "100 model switches (4GB RAM)")]["values"]["Speedup"] == "3.01x"
    assert rows[("combined_best_case", "+ Phase 2 (Caching)")]["parsed"]["baseline_s"] == 40
    assert rows[("api_server", "Total")]["parsed"] == {"baseline_hours": 10.5, "optimized_hours": 7.43, "reduction_pct": 29.2}
    assert rows[("phase5_streaming", "Conclusion: long-form generation (1000+ tokens)")]["estimate_key"] is None
    assert "Gain" not in rows[("combined_realistic", "Baseline")]["parsed"]


def test_rows_name_workload_metric_and_estimate(est):
    for tid, r in rows_of(est):
        assert r["workload"] in (None, *E.WORKLOADS), (tid, r["row"])
        if r["estimate_key"] is not None:
            assert r["workload"] and r["metric"] and r["estimate_key"] in r["parsed"], (tid, r["row"])
        if r["workload"] is None:
            assert r["metric"] is None and r["estimate_key"] is None, (tid, r["row"])
    used = {r["workload"] for _, r in rows_of(est)} - {None}
    assert used == set(E.WORKLOADS)


def test_estimates_frame(est):
    f = E.estimates_frame(est)
    assert list(f.columns) == ["table", "row", "key", "estimate", "workload", "metric"]
    assert len(f) == sum(len(r["parsed"]) for _, r in rows_of(est))
    hit = f[(f.table == "baseline") & (f.row == "Total Time") & (f.key == "krserve_s")]
    assert hit.estimate.tolist() == [199.49] and hit.metric.tolist() == ["total_s"]


def test_direction_rule():
    for metric in ("speedup_x", "throughput_tok_s", "gain_pct", "total_reduction_pct", "retry_savings_ms_per_failure"):
        assert E.higher_is_better(metric), metric
    for metric in ("total_s", "ttft_ms_mean", "e2e_ms_mean", "overhead_pct", "model_memory_gb"):
        assert not E.higher_is_better(metric), metric


def small_doc():
    def row(label, metric, key, value):
        return {"row": label, "values": {"v": str(value)}, "parsed": {key: value},
                "workload": "baseline", "metric": metric, "estimate_key": key}
    return {"tables": [
        {"id": "t", "title": "T", "section": "S", "columns": ["r", "v"], "rows": [
            row("speed", "speedup_x", "speedup_x", 2.0), row("time", "total_s", "total_s", 100.0),
            row("unmeasured", "ttft_ms_mean", "krserve_ms", 50.0)]},
        {"id": "u", "title": "U", "section": "S", "columns": ["r", "v"], "rows": [
            {**row("other", "e2e_ms_mean", "krserve_ms", 400.0), "workload": "mixed"}]},
        {"id": "w", "title": "W", "section": "S", "columns": ["r", "v"], "rows": [
            {**row("range only", "gain_pct", "gain_pct_low", 5.0), "estimate_key": None}]},
    ]}


@pytest.mark.parametrize(("speed", "time", "verdicts"), [
    ((2.05, 1.95, 2.15), 120.0, ("confirmed", "context")),  # CI within 2.0 ± 10%
    ((1.6, 1.5, 1.7), 80.0, ("ruled out", "context")),  # CI wholly below 1.8
    ((2.4, 1.9, 2.9), 120.0, ("unresolved", "context")),  # holds 2.0, but is wider than the band
    ((3.0, None, None), 50.0, ("unresolved", "context")),  # no CI: nothing to decide by
])
def test_compare_verdicts_judge_only_dimensionless_claims(speed, time, verdicts):
    """A speedup's CI decides against the estimate ± 10% (within: confirmed; wholly outside:
    ruled out; across an edge, or no CI: unresolved); seconds from another machine and
    model are context, never judged."""
    value, low, high = speed
    measured = [{"workload": "baseline", "metric": "speedup_x", "measured": value,
                 "ci_low": low if low is not None else math.nan,
                 "ci_high": high if high is not None else math.nan},
                {"workload": "baseline", "metric": "total_s", "measured": time, "unit": "s"}]
    out = E.compare_estimates(measured, small_doc())
    assert set(out) == {"t", "u"}  # "w" has no point estimate to compare
    t = out["t"]
    assert list(t.columns) == E.COMPARE_COLUMNS
    assert tuple(t.verdict[:2]) == verdicts and t.verdict[2] == "not measured"
    assert t.ratio.tolist()[:2] == pytest.approx([value / 2.0, time / 100.0])
    assert math.isnan(t.ratio[2]) and math.isnan(t.measured[2])
    assert out["u"].verdict.tolist() == ["not measured"]


def test_compare_confirms_by_ci_and_keeps_it():
    measured = pd.DataFrame([{"workload": "baseline", "metric": "total_s", "measured": 200.0,
                              "ci_low": 90.0, "ci_high": 210.0},
                             {"workload": "baseline", "metric": "speedup_x", "measured": 3.0,
                              "ci_low": 2.5, "ci_high": 3.5}])
    t = E.compare_estimates(measured, small_doc())["t"].set_index("row")
    assert t.loc["time", "verdict"] == "context" and t.loc["time", "ci_low"] == 90.0
    assert t.loc["speed", "verdict"] == "ruled out"  # 2.0 lies outside [2.5, 3.5]


def test_a_smoke_run_is_never_evidence():
    measured = [{"workload": "baseline", "metric": "speedup_x", "measured": 2.0,
                 "ci_low": 1.9, "ci_high": 2.1, "smoke": True},
                {"workload": "baseline", "metric": "total_s", "measured": 100.0, "smoke": True}]
    t = E.compare_estimates(measured, small_doc())["t"]
    assert set(t.verdict[:2]) == {"smoke: not evidence"}


def test_compare_on_the_real_estimates(est):
    out = E.compare_estimates([{"workload": "tokenize_flood", "metric": "speedup_x", "measured": 7.0},
                               {"workload": "baseline", "metric": "ttft_ms_mean", "measured": 150.0}], est)
    comparable = {t["id"] for t in est["tables"] if any(r["estimate_key"] for r in t["rows"])}
    assert set(out) == comparable and "combined_best_case" not in out
    p1 = out["phase1_batching"].set_index("row")
    assert p1.loc["1000 tokenize requests", "verdict"] == "unresolved"  # no CI
    assert p1.loc["High-concurrency tokenize", "ratio"] == pytest.approx(7.0 / 7.5)
    assert p1.loc["Mixed workload (50% gen, 50% tokenize)", "verdict"] == "not measured"
    assert out["baseline"].set_index("row").loc["TTFT (mean)", "verdict"] == "context"
    assert set(out["api_server"].verdict) == {"not measured"}
    assert set(E.compare_estimates([], est)["baseline"].verdict) == {"not measured"}


def test_compare_rejects_bad_measurements(est):
    with pytest.raises(ResultsError, match="lacks columns"):
        E.compare_estimates([{"workload": "baseline", "measured": 1.0}], est)
    twice = [{"workload": "baseline", "metric": "total_s", "measured": x} for x in (1.0, 2.0)]
    with pytest.raises(ResultsError, match="more than one"):
        E.compare_estimates(twice, est)


def find(checks, prefix, contains=""):
    hit = checks[checks.check.str.startswith(prefix) & checks.check.str.contains(contains, regex=False)]
    assert len(hit) == 1, (prefix, contains, hit.check.tolist())
    return hit.iloc[0]


def test_consistency_flags_the_per_request_overhead(est):
    checks = E.check_consistency(est)
    assert list(checks.columns) == ["check", "stated", "computed", "rel_error", "consistent"]
    bad = find(checks, "baseline/Total Time: overhead_s", "2.7 ms per-request")
    assert (bad.stated, bad.computed, bad.consistent) == (20.07, pytest.approx(0.135), False)
    good = find(checks, "baseline/Total Time: krserve_s", "Per Question")
    assert good.computed == pytest.approx(199.5) and good.stated == 199.49 and good.consistent
    assert find(checks, "baseline/Total Time: mlx_engine_s", "Per Question").consistent


def test_consistency_results(est):
    checks = E.check_consistency(est)
    ok = dict(zip(checks.check, checks.consistent, strict=True))
    assert len(ok) == len(checks)  # check names are unique
    for prefix, contains in [
        ("baseline/Response Time (mean): overhead_pct", ""),  # 0.685 rounds to the stated 0.7
        ("phase1_ipc_breakdown/Current IPC Overhead per Request", "sum of breakdown"),
        ("phase1_ipc_breakdown/With Batching (batch size = 5): Total: batch_ms", ""),
        ("phase1_ipc_breakdown/With Batching (batch size = 5): Overhead per request: per_request_ms", ""),
        ("phase1_tokenize/For 1000 tokenize operations: Current: total_s", "n_requests x per_request_ms"),
        ("phase5_streaming/Current Streaming Overhead: Per-token chunk serialization", ""),
        ("phase5_streaming/Current Streaming Overhead: Total", ""),
        ("phase5_streaming/With Optimization: Total", ""),
        ("phase5_streaming/Savings: reduction_pct", ""),
        ("mixed_workload/Total: baseline_s", ""), ("api_server/Total: optimized_hours", ""),
        ("api_server/Total: reduction_pct", ""), ("phase2_caching/100 model switches (4GB RAM): speedup_x", ""),
        ("summary_50q/Combined", ""),
    ]:
        assert find(checks, prefix, contains).consistent, prefix
    for prefix, contains in [
        ("baseline_observations/Overhead sources: Aggregated", ""),
        ("baseline_observations/Individual request overhead", "coordination"),
        ("combined_best_case/+ Phase 2 (Caching): speedup_x", ""),
        ("combined_best_case/Total: baseline_s", ""), ("combined_best_case/Total: speedup_x", "product"),
        ("combined_best_case/Baseline", "1000 tokenize"),
        ("phase3_retry/For 50 questions with 5 failures (10%): Savings", "phase3_errors"),
    ]:
        assert not find(checks, prefix, contains).consistent, prefix
    assert (~checks.consistent).sum() == 10


def test_consistency_is_computed_from_the_data(est):
    changed = copy.deepcopy(est)
    mixed = next(t for t in changed["tables"] if t["id"] == "mixed_workload")
    mixed["rows"][0]["parsed"]["baseline_s"] = 90.0  # Generation 80s -> 90s: the sum no longer holds
    checks = E.check_consistency(changed)
    assert not find(checks, "mixed_workload/Total: baseline_s").consistent
    assert find(E.check_consistency(est), "mixed_workload/Total: baseline_s").consistent
    del mixed["rows"][-1]
    with pytest.raises(ResultsError, match="lack"):
        E.check_consistency(changed)


def test_missing_or_malformed_file_raises(tmp_path, est):
    with pytest.raises(ResultsError, match="not found"):
        E.load_estimates(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ResultsError, match="JSON"):
        E.load_estimates(bad)
    for doc in ([1, 2], {"tables": []}, {"tables": [{"id": "x"}]}):
        bad.write_text(json.dumps(doc))
        with pytest.raises(ResultsError):
            E.load_estimates(bad)
    for mutate in (lambda r: r.update(estimate_key="nope"), lambda r: r.update(workload="warp_drive"),
                   lambda r: r["parsed"].update(total_s="199.49s"), lambda r: r.pop("parsed")):
        doc = copy.deepcopy(est)
        mutate(doc["tables"][0]["rows"][0])
        bad.write_text(json.dumps(doc))
        with pytest.raises(ResultsError):
            E.load_estimates(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(est))
    assert E.load_estimates(good) == est


def test_a_confidence_interval_that_excludes_the_estimate_does_not_confirm_it():
    from krmlx.bench.estimates import judge

    # 0.86x against an estimate of 1.04x ± 10% ([0.936, 1.144]): [0.74, 0.92] lies below it
    assert judge(1.04, 0.86, "speedup_x", 0.74, 0.92) == "ruled out"
    # [0.74, 0.96] excludes 1.04 itself but reaches into its band: not ruled out
    assert judge(1.04, 0.86, "speedup_x", 0.74, 0.96) == "unresolved"
    assert judge(1.04, 0.86, "speedup_x", 0.74, 1.10) == "unresolved"  # holds it, too wide
    assert judge(1.04, 1.02, "speedup_x", 0.95, 1.10) == "confirmed"
    assert judge(1.04, 1.04, "speedup_x") == "unresolved"  # no CI: nothing to decide by
    assert judge(199.5, 0.41, "total_s", 0.3, 0.5) == "context"  # another machine and model
