"""Plain-text tables for the terminal (the CLI's summary and compare output).

:func:`format_summary` opens with the answer (:func:`krmlx.bench.answer.summary_paragraph`),
then the tables; the reference's estimate tables come last and only with ``reference=True``.
"""

from __future__ import annotations

import textwrap

import pandas as pd

from . import hops, metrics
from .answer import TOK_S_NOTE, label, summary_paragraph, with_ci
from .estimates import estimate_tables
from .verdicts import OVERHEAD_CAPTION, rule_text

TARGET_COLUMNS = {
    "series": "series", "kind": "kind", "target": "target", "requests": "n", "errors": "err", "ttft_ms_mean": "TTFT mean ms",
    "ttft_ms_p50": "TTFT p50", "ttft_ms_p90": "TTFT p90", "e2e_ms_mean": "E2E mean ms",
    "tpot_ms_mean": "TPOT ms", "total_s_mean": "total s", "throughput_tps_mean": "tok/s",
}
OVERHEAD_COLUMNS = {
    "target": "target", "ttft_ms_diff": "dTTFT ms", "ttft_ms_ci_low": "lo", "ttft_ms_ci_high": "hi",
    "e2e_ms_diff": "dE2E ms", "e2e_ms_ci_low": "lo", "e2e_ms_ci_high": "hi",
    "total_overhead_pct": "total %", "total_overhead_pct_ci_low": "lo",
    "total_overhead_pct_ci_high": "hi", "total_verdict": "total", "ttft_verdict": "TTFT",
}


PERCENTILE_NOTE = ("percentiles with 95% bootstrap CIs (resampling whole trials from 10 trials on, "
                   "else requests); * = fewer samples than the percentile needs (p90 < 20, p99 < 100)")


def percentile_rows(engine_rows) -> list[dict]:
    """One row per target and metric (TTFT, ITL, E2E): each percentile as 'value [lo, hi]',
    starred where it rests on too few samples (:data:`krmlx.bench.metrics.MIN_SAMPLES`)."""
    def cell(row, key):
        v, lo, hi = (row.get(f"{key}{s}") for s in ("", "_ci_low", "_ci_high"))
        if v is None or pd.isna(v):
            return ""
        text = with_ci(v, lo, hi, signed=False) if lo is not None else with_ci(v, None, None, signed=False)
        return text + ("*" if row.get(f"{key}_few") else "")

    out = []
    for row in engine_rows:
        label = row.get("target", "")
        if row.get("length") is not None:
            label = f"{label} @{row['length']}"
        for metric, name in (("ttft_ms", "TTFT ms"), ("itl_ms", "ITL ms"), ("e2e_ms", "E2E ms")):
            if f"{metric}_samples" in row:
                out.append({"target": label, "metric": name, "n": row[f"{metric}_samples"],
                            **{f"p{q}": cell(row, f"{metric}_p{q}") for q in metrics.PERCENTILES}})
    return out


def format_hops(summary: dict) -> str:
    """Where the time goes (:func:`krmlx.bench.hops.tables`), as text."""
    return "\n".join(f"{caption}\n{table.to_string(index=False)}"
                     for caption, table in hops.tables(summary).items())


def _table(rows, columns: dict, floatfmt: str = "{:.3f}") -> str:
    df = pd.DataFrame(rows)
    if df.empty:
        return "(no rows)"
    df = df[[c for c in columns if c in df]]
    df.columns = [columns[c] for c in df.columns]
    return df.to_string(index=False, float_format=lambda x: floatfmt.format(x))


ESTIMATE_COLUMNS = {"row": "reference row", "metric": "metric", "estimate": "estimate",
                    "measured": "measured", "ratio": "ratio", "ci_low": "lo", "ci_high": "hi",
                    "margin": "±margin", "ci_half_width": "±CI", "n_to_resolve": "n to resolve",
                    "verdict": "verdict"}


def format_estimates(tables: dict) -> str:
    """The estimate-vs-measured tables (from ``compare_estimates``), one block per reference table."""
    parts = []
    for tid, df in tables.items():
        if len(df):
            parts += [f"[{tid}]", _table(df, ESTIMATE_COLUMNS, "{:.4g}")]
    return "\n".join(parts) if parts else "(no estimate has a measurement)"


def _matches_line(rows: list[dict]) -> str:
    return ", ".join(f"{r['target']} {r['identical_outputs']}/{r.get('compared', r.get('requests'))}"
                     f" (vs {r.get('base', 'direct')})" for r in rows)


def format_summary(doc: dict, *, reference: bool = True) -> str:
    env, cfg, summary = doc["env"], doc["config"], doc["summary"]
    blas = env.get("blas", {})
    size = f"{len(doc['records'])} records"
    head = (f"{cfg.get('workload')}{' (SMOKE)' if cfg.get('smoke') else ''} · model {cfg.get('model')} · "
            f"{size} × {cfg.get('trials')} trial(s) · {env.get('device')} · BLAS {blas.get('kind')} · "
            f"{env.get('cores')} cores")
    if cfg.get("interrupted"):
        head += " · INTERRUPTED (partial)"
    parts = [head, "", textwrap.fill(summary_paragraph(doc), 100)]
    if summary.get("targets"):  # a workload of levels or lengths has its own tables below
        parts += ["", _table(summary["targets"], TARGET_COLUMNS, "{:.2f}")]
    if summary.get("targets") and "throughput_tps_mean" in summary["targets"][0]:
        parts += [textwrap.fill(TOK_S_NOTE.split("; tok/s (wall)")[0] + ".", 100)]
    pct = percentile_rows(summary.get("targets", []))
    if pct:
        parts += ["", PERCENTILE_NOTE, _table(pct, {k: k for k in pct[0]})]
    if summary.get("overhead") is not None and len(summary.get("overhead", [])):
        parts += ["", OVERHEAD_CAPTION,
                  _table(summary["overhead"], OVERHEAD_COLUMNS, "{:.3f}")]
    if summary.get("headline"):
        rows = summary["headline"]
        parts += ["", f"{cfg.get('workload')} results", _table(rows, {k: k for k in rows[0]}, "{:.4g}")]
    if summary.get("collectives"):
        rows = summary["collectives"]
        parts += ["", "collectives (median of all_sum; per token: 2 x layers x hidden + 1 step flag)",
                  _table(rows, {k: k for k in rows[0]}, "{:.4g}")]
    hops = format_hops(summary)
    if hops:
        parts += ["", hops]
    shown = {"targets", "overhead", "headline", "collectives", "estimates", "comparisons", "hops",
             "hops_vs_direct",
             "outputs_match", "outputs_match_phase0", "outputs_match_rank1"}
    for key, rows in summary.items():  # the workload's own tables (levels, lengths, turns...)
        if key in shown or not (isinstance(rows, list) and rows and isinstance(rows[0], dict)):
            continue
        if rows is summary.get("headline"):
            continue
        parts += ["", label(key), _table(rows, {k: k for k in rows[0]}, "{:.4g}")]
    for note in cfg.get("not_supported") or ():
        parts += [f"not supported: {note['target']}: {note['reason']}"]
    for name, why in (cfg.get("target_errors") or {}).items():
        parts += [f"TARGET FAILED: {name}: {why}"]
    matches = [r for key in ("outputs_match", "outputs_match_phase0", "outputs_match_rank1")
               for r in summary.get(key) or []]
    if matches:
        parts += ["", "greedy outputs identical: " + _matches_line(matches)]
    if reference and summary.get("estimates"):
        tables = estimate_tables(doc)
        note = " SMOKE sizes: totals are not the reference's workload" if cfg.get("smoke") else ""
        parts += ["", f"estimate vs measured (reference tables; ratio = measured / estimate){note}",
                  rule_text(), format_estimates(tables)]
    for key in ("blas_warning", "direct_blas_warning"):
        if env.get(key):
            parts += ["", "WARNING: " + env[key]]
    return "\n".join(parts)


def format_compare(a: dict, b: dict) -> str:
    """Engines present in both files: mean E2E and TTFT of B vs A with bootstrap CIs.
    ResultsError when a file has no records to compare."""
    from ..errors import ResultsError

    for name, doc in (("A", a), ("B", b)):
        recs = doc["records"]
        if not recs or not all("target" in r and "ok" in r for r in recs):
            raise ResultsError(f"file {name} has no request records to compare "
                               f"({len(recs)} records; an interrupted run's partial file may hold none)")
    da, db = metrics.to_frame(a), metrics.to_frame(b)
    rows = []
    for engine in sorted(set(da["target"]) & set(db["target"])):
        row = {"target": engine}
        for metric in ("ttft_ms", "e2e_ms"):
            xa = da[(da["target"] == engine) & da["ok"]][metric].dropna().values
            xb = db[(db["target"] == engine) & db["ok"]][metric].dropna().values
            if len(xa) >= 2 and len(xb) >= 2:
                r = metrics.bootstrap_ci(xa, xb, paired=False)
                row.update({f"{metric} A": r["a"], f"{metric} B": r["b"], f"{metric} B/A": r["ratio"],
                            "lo": r["ratio_ci_low"], "hi": r["ratio_ci_high"]})
        rows.append(row)
    if not rows:
        return "no engine appears in both files"
    return pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.3f}")


REAL_MODEL_HINT = "python -m krmlx bench baseline --model smollm2-135m --out runs"


def format_sample(doc: dict, n: int = 3, width: int = 240) -> str:
    """A few question/answer pairs as served (the first target's first trial), so a run
    shows what it generated; for a synthetic model, a note that its text is random and the
    command that runs the real model. Empty when the records carry no answers."""
    from ..models import parse_name
    from ..questions import load_questions

    questions = {q.id: q.question for q in load_questions()[0]}
    records = [r for r in doc.get("records", []) if r.get("ok") and r.get("output_text")
               and r.get("request_id") in questions and not r.get("warmup")]
    if not records:
        return ""
    first = records[0]
    shown = [r for r in records if r["target"] == first["target"]
             and r.get("trial") == first.get("trial")][:n]
    model = doc.get("config", {}).get("model") or doc.get("env", {}).get("model") or "?"
    lines = [f"sample answers ({first['target']}, model {model}):"]
    for r in shown:
        answer = " ".join(r["output_text"].split())
        answer = answer if len(answer) <= width else answer[: width - 3] + "..."
        lines += [f"  Q: {questions[r['request_id']]}",
                  f"  A: {answer}  [{r.get('output_tokens')} tokens, {r.get('finish_reason')}]"]
    if parse_name(str(model)) is not None:
        lines.append(f"  ({model} is a synthetic model with random weights: its text is not "
                     f"meant to read. A real chat model: {REAL_MODEL_HINT})")
    return "\n".join(lines)
