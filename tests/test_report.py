"""krmlx.report: plots return Figures, the report is one offline HTML file (checked in a
real headless chromium), the CLI works, the widget panel edits a StackConfig and runs."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

from krmlx.bench.metrics import to_frame
from krmlx.report import export, load_results, plots, save_results

EXTERNAL_REF = re.compile(r"""(?:src|href|action|url)\s*[=(]\s*["']?\s*(?!data:|#)[a-z][a-z0-9+.-]*:""", re.I)


@pytest.fixture(scope="session")
def doc(tiny_path):
    """A real smoke baseline on the tiny model (direct, phase0, all), with the measurements
    of reference metrics its summary carries (``estimates``)."""
    from krmlx.bench import make_workload, run_workload

    return asyncio.run(run_workload(make_workload("baseline", smoke=True, max_tokens=8,
                                                  warmup=False), "tiny"))


@pytest.fixture(scope="session")
def results_file(doc, tmp_path_factory):
    return save_results(doc, tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def report(results_file, tmp_path_factory):
    return export.build_report([results_file], tmp_path_factory.mktemp("report"))


def test_saved_file_keeps_estimates(results_file):
    loaded = load_results(results_file)[0]
    assert loaded["_source"] == str(results_file)
    rows = export.measured_rows(loaded)
    assert all(r.pop("smoke") is True for r in rows)  # a smoke run's rows say so
    assert rows == loaded["summary"]["estimates"] and len(rows) >= 5
    assert {"ttft_ms_mean", "e2e_ms_mean", "overhead_pct", "speedup_x"} <= {r["metric"] for r in rows}


def test_plots_return_figures(doc, results_file):
    loaded = load_results(results_file)[0]
    tables = export.estimate_tables(export.measured_rows(loaded))
    assert {"baseline", "baseline_observations", "summary_50q"} <= set(tables)
    figs = [plots.latency_distributions(doc), plots.latency_distributions(to_frame(loaded)),
            plots.throughput(loaded), plots.overhead(doc), plots.overhead(loaded["summary"]["overhead"]),
            plots.estimates_vs_measured(tables), plots.estimates_vs_measured(tables["baseline"])]
    for fig in figs:
        assert isinstance(fig, Figure) and fig.axes
        assert export.png_bytes(fig).startswith(b"\x89PNG")
    engines = {t.get_text() for t in figs[0].axes[0].get_xticklabels()}
    assert engines == {"direct", "phase0", "all"}
    assert [t.get_text() for t in figs[3].axes[0].get_yticklabels()] == ["phase0", "all"]


def test_sweep_from_records_and_summary_rows(doc):
    recs = to_frame(doc).assign(concurrency=lambda d: 1 + d.index % 2)
    df, key = plots.sweep_frame(recs)
    assert key == "concurrency" and set(df["concurrency"]) == {1, 2} and df["throughput"].gt(0).all()
    rows = [{"target": "all", "rate": r, "wall_throughput_tps": 10 * r, "ttft_ms_mean": 5 + r} for r in (1, 2, 4)]
    fig = plots.sweep({"summary": {"rate_sweep": rows}, "records": []})
    assert isinstance(fig, Figure) and list(fig.axes[0].lines[0].get_xdata()) == [1, 2, 4]
    assert plots.has_sweep(recs) and not plots.has_sweep(doc)


def test_plots_of_nothing_say_so():
    for fig in (plots.latency_distributions([]), plots.throughput([]), plots.overhead([]),
                plots.estimates_vs_measured({}), plots.sweep([])):
        assert isinstance(fig, Figure)
        assert any(t.get_text() for ax in fig.axes for t in ax.texts)


def test_report_files(report):
    assert report["html"].name == "report.html" and report["markdown"].exists()
    assert {p.stem.rsplit("_", 1)[-1] for p in report["png"]} >= {"latency", "throughput", "overhead", "estimates"}
    names = {p.name for p in report["csv"]}
    assert any(n.endswith("_records.csv") for n in names) and "reference_inconsistencies.csv" in names
    assert "estimates_vs_measured.csv" in names
    est = pd.read_csv(next(p for p in report["csv"] if p.name == "estimates_vs_measured.csv"))
    assert {"table", "row", "estimate", "measured", "ratio", "verdict"} <= set(est.columns)
    md = report["markdown"].read_text()
    for img in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (report["markdown"].parent / img).exists()


def test_html_is_self_contained(report):
    html = report["html"].read_text()
    assert "http://" not in html and "https://" not in html
    assert not EXTERNAL_REF.findall(html), EXTERNAL_REF.findall(html)[:3]
    assert "<script" not in html.lower() and "@import" not in html and "@font-face" not in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == len(report["png"]) and len(images) >= 5
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)


def test_html_has_the_tables(report):
    html = report["html"].read_text()
    for text in ("Environment", "targets", "overhead vs direct (95% CI in brackets; verdict: level",
                 "reference estimate vs measured: baseline", "internal inconsistencies", "openblas",
                 "TTFT (mean)", "ΔTTFT ms"):
        assert text in html, text
    assert html.count("<table") >= 7
    bad = export.inconsistencies()
    assert len(bad) and bad["check"].iloc[0].split(":")[0] in html


JUDGEMENTS = ("confirmed", "ruled out", "unresolved", "level", "slower", "faster")


def judged_cells(text: str) -> list[str]:
    """Table cells (Markdown, HTML, or a text table's last column) that hold a verdict word."""
    cells = re.findall(r"\|\s*([a-z ]+?)\s*(?=\|)", text) + re.findall(r"<td[^>]*>([a-z ]+)</td>", text)
    cells += [line.rsplit("  ", 1)[-1].strip() for line in text.splitlines()]
    return [c for c in cells if c in JUDGEMENTS]


def test_no_verdict_on_a_smoke_run_in_any_path(doc, report, tmp_path):
    """The CLI's table, the Markdown/HTML/CSV report, the widget panel and the notebooks'
    calls (beside_reference, estimate_tables) print 'smoke: not evidence', never a verdict."""
    from krmlx.bench.report_text import format_summary
    from krmlx.report.widgets import summary_html

    assert doc["config"]["smoke"]
    paths = {"cli": format_summary(doc), "markdown": report["markdown"].read_text(),
             "html": report["html"].read_text(), "panel": summary_html(doc)}
    for name, text in paths.items():
        assert "smoke: not evidence" in text, name
        assert judged_cells(text) == [], (name, judged_cells(text)[:5])
    csv = pd.read_csv(next(p for p in report["csv"] if p.name == "estimates_vs_measured.csv"))
    assert set(csv["verdict"]) <= {"smoke: not evidence", "not measured"}
    for table in (export.beside_reference(doc, "baseline"), *export.estimate_tables(doc).values()):
        assert "smoke: not evidence" in set(table["verdict"])
        assert set(table["verdict"].dropna()) <= {"smoke: not evidence", "not measured"}
    assert {r["total_verdict"] for r in doc["summary"]["overhead"]} == {"smoke: not evidence"}


def test_judged_cells_finds_verdicts():
    assert judged_cells("| a | confirmed |\n<td>level</td>\nrow   1.0  ruled out") == [
        "confirmed", "level", "ruled out"]


def test_report_cli(results_file, tmp_path):
    out = subprocess.run([sys.executable, "-m", "krmlx", "report", str(results_file), "--out",
                          str(tmp_path / "r")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r" / "report.html").exists() and "report.html" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "krmlx", "report", str(tmp_path / "nope.json")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no such results file" in bad.stderr


def page_requests(netlog: Path) -> list[str]:
    """URLs the page (not the browser's own services) asked for, from a chromium net log."""
    log = json.loads(netlog.read_text())
    types = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    return [e["params"]["url"] for e in log["events"]
            if types.get(e["type"]) == "URL_REQUEST_START_JOB"
            and "file://" in str(e.get("params", {}).get("network_isolation_key", ""))]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_report_renders_offline_in_chromium(report):
    shot, netlog = report["html"].parent / "screenshot.png", report["html"].parent / "netlog.json"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                        f"--log-net-log={netlog}", f"--screenshot={shot}", "--window-size=1200,3000",
                        report["html"].as_uri()], capture_output=True, timeout=120, check=True)
    assert page_requests(netlog) == [], "the report made requests"
    import matplotlib.image

    img = matplotlib.image.imread(shot)
    assert img.shape[:2] == (3000, 1200)
    ink = (img[..., :3].mean(axis=2) < 0.9).mean()  # share of non-white pixels
    assert ink > 0.03, f"the page looks blank ({ink:.3f} inked)"


def test_panel_builds_stack_configs():
    from krmlx.report.widgets import Panel, WidgetProgress
    from krmlx.stack import PHASES, StackConfig
    from krmlx.stages import BatcherConfig, BreakerPolicy, ModelCacheConfig, RetryPolicy

    p = Panel("tiny")
    assert p.config() == StackConfig()
    for name in PHASES:
        p.phase[name].value = True
    p.batch_window_ms.value, p.cache_max_models.value, p.cache_budget_gib.value = 4.0, 2, 0
    p.retry_attempts.value, p.codec.value, p.coalesce_tokens.value = 5, "json", 4
    cfg = p.config()
    batcher, cache = cfg.find(BatcherConfig), cfg.find(ModelCacheConfig)
    assert cfg.label == "all" and batcher.window_ms == 4.0 and batcher.max_batch == 10
    assert cache.max_models == 2 and cache.budget_bytes is None
    assert cfg.find(RetryPolicy).attempts == 5 and cfg.find(BreakerPolicy) is not None
    assert cfg.framer.codec == "json" and cfg.framer.coalesce_tokens == 4
    p.phase["batching"].value = False
    assert p.config().find(BatcherConfig) is None and p.batch_window_ms.disabled
    bar = WidgetProgress(p.progress)
    bar.total = 4
    bar.update(1)
    bar.total += 2
    assert (p.progress.value, p.progress.max) == (1, 6)


@pytest.mark.slow
def test_panel_runs(tiny_path, tmp_path):
    from krmlx.report.widgets import make_panel

    seen = []
    p = make_panel("tiny", on_done=seen.append, smoke=True, max_tokens=4, out_dir=tmp_path)
    p.phase["framing"].value = True

    async def click():  # what the Run button does in a kernel: a task on the running loop
        p.run_button.click()
        await p.task

    asyncio.run(click())
    doc = p.doc
    assert seen == [doc] and p.path.exists() and p.path.parent == tmp_path
    assert set(r["target"] for r in doc["records"]) == {"direct", "phase0", "framing"}
    assert p.progress.value == p.progress.max > 1 and not p.run_button.disabled
    assert "done in" in p.status.value


# --- the answer first: summary paragraph, labels, rounding, the reference once ---------

ROOT = Path(__file__).resolve().parents[1]
H200_BASELINE = ROOT / "results/gpu/h200-r18c/baseline-20261207-060317.json.gz"


def test_report_opens_with_the_answer(report, doc):
    from krmlx.bench.report_text import format_summary

    md = report["markdown"].read_text()
    first = md.split("## ")[1]
    assert first.startswith("Summary") and "phase0: total time" in first and "all: total time" in first
    assert "smoke: not evidence" in first and "Greedy outputs identical: phase0" in first
    assert md.index("## Summary") < md.index("## Environment")
    cli = format_summary(doc)
    assert cli.index("phase0: total time") < cli.index("TTFT mean ms")


def test_summary_paragraph_of_a_real_run_carries_ci_and_verdict():
    from krmlx.bench.answer import summary_paragraph
    from krmlx.bench.results import read_results

    text = summary_paragraph(read_results(H200_BASELINE))
    # the file's phase0 row: total -0.734 % [-4.17, +2.92], TTFT +0.080 ms [-0.954, +1.20]
    assert "phase0: total time -0.7 [-4.2, +2.9] % (unresolved), TTFT +0.1 [-1.0, +1.2] ms (level)" in text
    assert "3 trial(s)" in text and "smoke" not in text and "phase0 150/150 vs direct" in text


def test_a_one_trial_run_says_what_its_cis_leave_out():
    """One trial's CIs cover the requests, not the runs: the paragraph says so and names
    the A/A control, unless the run has one (or is a smoke run, which carries no verdict)."""
    from krmlx.bench.answer import ONE_TRIAL_NOTE, summary_paragraph
    from krmlx.bench.results import read_results

    one = read_results(ROOT / "results/cpu/2026-12-07/smollm2/baseline-20261207-214218.json.gz")
    assert one["config"]["trials"] == 1 and ONE_TRIAL_NOTE in summary_paragraph(one)
    three = read_results(ROOT / "results/cpu/2026-12-07/after-restructure/baseline-20261207-212032.json.gz")
    assert ONE_TRIAL_NOTE not in summary_paragraph(three)
    with_aa = {**one, "summary": {**one["summary"], "overhead": [*one["summary"]["overhead"],
                                                                 {"target": "direct~aa"}]}}
    assert ONE_TRIAL_NOTE not in summary_paragraph(with_aa)
    smoke = {**one, "config": {**one["config"], "smoke": True}}
    assert ONE_TRIAL_NOTE not in summary_paragraph(smoke)


def test_report_labels_rounding_and_reference_once(report, results_file, tmp_path):
    md = report["markdown"].read_text()
    assert "greedy outputs identical to phase 0" in md and "#### outputs_match_phase0" not in md
    assert md.count("#### reference estimate vs measured: baseline\n") == 1
    assert "tok/s (wall): output tokens over the trial's wall time" in md
    body = md.split("## Environment")[0] + md.split("## Environment")[1].split("\n## ", 1)[1]
    body = body.split("## All measurements")[0]
    long = [n for n in re.findall(r"\d+\.\d+", body) if len(n.replace(".", "").lstrip("0")) > 3]
    assert not long, f"numbers past 3 significant digits in the report: {long[:5]}"
    bare = export.build_report([results_file], tmp_path / "bare", reference=False)
    text = bare["markdown"].read_text()
    assert "reference estimate vs measured" not in text and "internal inconsistencies" not in text
    assert "## Summary" in text and not any(p.name.startswith("estimates") for p in bare["csv"])


@pytest.mark.parametrize(("args", "text"), [((1.2, -0.3, 2.7), "+1.2 [-0.3, +2.7]"),
                                            ((0.7023, 0.08324, 1.352), "+0.70 [+0.08, +1.35]"),
                                            ((1566.0, None, None), "+1566"),
                                            ((0.0861, -0.595, 0.861), "+0.09 [-0.59, +0.86]"),
                                            ((12.01, 11.11, 13.06), "+12.0 [+11.1, +13.1]"),
                                            ((0.0012, -0.0009, 0.0034), "+0.0012 [-0.0009, +0.0034]")])
def test_numbers_with_their_ci(args, text):
    from krmlx.bench.answer import with_ci

    assert with_ci(*args) == text


@pytest.mark.parametrize(("x", "text"), [(0.9996, "1.00"), (99.96, "100"), (9.996, "10.0"),
                                         (1.234, "1.23"), (0.01234, "0.0123"), (-0.9996, "-1.00")])
def test_three_significant_digits_when_rounding_carries(x, text):
    from krmlx.bench.answer import sig

    assert sig(x) == text
