"""Reports from results documents: one offline HTML file, a Markdown twin, and CSVs.

:func:`build_report` takes results files (or loaded documents, of any workload) and writes
into ``out_dir``:

- ``report.html``: self-contained (inline CSS, plots as base64 PNG ``data:`` URIs, no
  scripts, fonts or links to anywhere), so it opens offline and makes no requests;
- ``report.md`` with the same sections and the plots as PNG files beside it;
- ``csv/``: per document the records and every summary table
  (:func:`krmlx.bench.results.export_csv`), its estimate-vs-measured rows, and the
  reference's inconsistent arithmetic.

Sections: the answer first (per document a summary paragraph:
:func:`krmlx.bench.answer.summary_paragraph`, overhead vs direct with CI and verdict per
target), environment (device, BLAS, versions, git SHA, model), then per document its
summary tables under human labels (:data:`krmlx.bench.answer.LABELS`; overhead with 95%
CIs) and plots, then, once and only with ``reference=True`` (the default), every
measurement against the reference's estimates
(:func:`krmlx.bench.estimates.compare_estimates`) and the reference's internal
inconsistencies (:func:`krmlx.bench.estimates.check_consistency`).
"""

from __future__ import annotations

import base64
import html
import io
import re
import time
from pathlib import Path

import pandas as pd

from ..bench import estimates as E
from ..bench import metrics
from ..bench.answer import TOK_S_NOTE, sig, summary_paragraph, with_ci
from ..bench.answer import label as human_label
from ..bench.hops import tables as hop_tables
from ..bench.report_text import PERCENTILE_NOTE, TARGET_COLUMNS, percentile_rows
from ..bench.results import export_csv
from ..bench.verdicts import OVERHEAD_CAPTION, rule_text
from . import load_results, plots

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1150px;
color:#212529;line-height:1.4;padding:0 1em}
h1{border-bottom:2px solid #264653}h2{margin-top:2em;border-bottom:1px solid #dee2e6}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:13px}
th,td{border:1px solid #dee2e6;padding:3px 8px;text-align:right}
th{background:#f1f3f5}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#f8f9fa}
img{max-width:100%;border:1px solid #e9ecef;margin:.5em 0}
.note{color:#6c757d;font-size:13px}.warn{color:#b02a37;font-weight:600}
.confirmed,.level{color:#2a9d8f}.unresolved{color:#457b9d}.ruled-out{color:#e76f51}.context{color:#888}
"""
ENV_FIELDS = (("workload", "config.workload"), ("model", "env.model"),
              ("model bytes", "env.model_bytes"), ("device", "env.device"),
              ("BLAS", "env.blas.kind"), ("BLAS library", "env.blas.library"),
              ("mlx", "env.mlx"), ("mlx-lm", "env.mlx_lm"), ("krmlx", "env.krmlx"),
              ("python", "env.python"), ("platform", "env.platform"), ("cores", "env.cores"),
              ("git SHA", "env.git_sha"), ("questions sha256", "env.question_set_sha256"),
              ("trials", "config.trials"), ("smoke", "config.smoke"), ("complete", "complete"))


def fmt(x) -> str:
    """Numbers for people: 3 significant digits, whole numbers from 100 on (thousands
    grouped from 10,000), blanks for NaN."""
    if x is None or (isinstance(x, float) and pd.isna(x)):
        return ""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int) or abs(x) >= 1e4:
        return f"{x:,.0f}"
    return sig(x)


def _get(doc: dict, dotted: str):
    for part in dotted.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


def measured_rows(doc: dict) -> list[dict]:
    """The document's measurements of reference metrics, marked ``smoke`` for a smoke run
    (:func:`krmlx.bench.estimates.rows_of`)."""
    return E.rows_of(doc)


def estimate_tables(source, estimates: dict | None = None, *,
                    measured_only_tables: bool = True) -> dict[str, pd.DataFrame]:
    """:func:`krmlx.bench.estimates.estimate_tables` over ``source`` (a doc, docs or rows),
    keeping every row of the reference tables that have a measured one (all tables when not
    ``measured_only_tables``)."""
    tables = E.estimate_tables(source, estimates, measured_only=False)
    if not measured_only_tables:
        return tables
    return {tid: t for tid, t in tables.items() if t["measured"].notna().any()}


def stack_tables(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Estimate tables (from :func:`estimate_tables`) as one frame with a ``table`` column."""
    if not tables:
        return pd.DataFrame(columns=["table", *E.COMPARE_COLUMNS])
    return pd.concat([t.assign(table=tid) for tid, t in tables.items()], ignore_index=True)[
        ["table", *E.COMPARE_COLUMNS]]


def beside_reference(source, table_id: str, estimates: dict | None = None) -> pd.DataFrame:
    """A reference table as written (its columns, cell text as published) with krmlx's
    measurement, 95% CI and verdict beside each row that has one."""
    est = E.load_estimates() if estimates is None else estimates
    table = next((t for t in est["tables"] if t["id"] == table_id), None)
    if table is None:
        raise KeyError(f"no reference table {table_id!r}; tables: {[t['id'] for t in est['tables']]}")
    ref = pd.DataFrame([{table["columns"][0]: r["row"], **r["values"]} for r in table["rows"]])
    ours = estimate_tables(source, est, measured_only_tables=False).get(table_id)
    if ours is None:
        return ref
    ours = ours.drop_duplicates("row").set_index("row")
    label = table["columns"][0]
    ref["krmlx metric"] = ref[label].map(ours["metric"])
    ref["krmlx measured"] = ref[label].map(ours["measured"])
    ref["95% CI"] = [f"[{fmt(ours.at[r, 'ci_low'])}, {fmt(ours.at[r, 'ci_high'])}]"
                      if r in ours.index and not pd.isna(ours.at[r, "ci_low"]) else ""
                      for r in ref[label]]
    ref["verdict"] = ref[label].map(ours["verdict"])
    return ref


def inconsistencies(estimates: dict | None = None) -> pd.DataFrame:
    """The reference's own arithmetic that does not add up (check_consistency, inconsistent rows)."""
    checks = E.check_consistency(estimates)
    return checks[~checks["consistent"]].drop(columns="consistent").reset_index(drop=True)


def environment_tables(docs: list[dict], names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fields equal in every document as field/value rows, a row per document with the
    fields that differ plus workload, model, trials, smoke and complete)."""
    values = {label: [_get(d, key) for d in docs] for label, key in ENV_FIELDS}
    always = ("workload", "model", "trials", "smoke", "complete")
    same = {k: v[0] for k, v in values.items() if k not in always and all(x == v[0] for x in v)}
    common = pd.DataFrame({"field": list(same), "value": [fmt(v) for v in same.values()]})
    per_doc = pd.DataFrame({"results": names, **{k: v for k, v in values.items() if k not in same}})
    return common, per_doc


def display_table(name: str, rows) -> pd.DataFrame:
    """A summary table as shown in reports: engines trimmed to the key columns, overhead
    with each estimate and its 95% CI in one cell; other tables as they are."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    if name == "targets" and "target" in df:
        cols = [c for c in TARGET_COLUMNS if c in df] + [c for c in ("wall_throughput_tps_mean",) if c in df]
        return df[cols].rename(columns={**TARGET_COLUMNS, "wall_throughput_tps_mean": "tok/s (wall)"})
    if name == "overhead" and "target" in df:
        out = pd.DataFrame({"target": df["target"]})
        for col, label in (("ttft_ms_diff", "ΔTTFT ms"), ("e2e_ms_diff", "ΔE2E ms"),
                           ("total_overhead_pct", "total %")):
            if col in df:
                stem = col.rsplit("_", 1)[0] if col.endswith("_diff") else col
                lo, hi = df.get(f"{stem}_ci_low"), df.get(f"{stem}_ci_high")
                out[label] = [with_ci(v, a, b) for v, a, b in zip(
                    df[col], lo if lo is not None else [None] * len(df),
                    hi if hi is not None else [None] * len(df), strict=True)]
        for col, label in (("total_s_base", "base total s"), ("total_s", "total s"),
                           ("total_verdict", "total verdict"), ("ttft_verdict", "TTFT verdict")):
            if col in df:
                out[label] = df[col]
        return out
    return df


def summary_tables(doc: dict) -> dict[str, pd.DataFrame]:
    """Every table-shaped entry of ``summary`` (a list of row dicts) except ``estimates``."""
    return {name: pd.DataFrame(t) for name, t in plots.summary_of(doc).items()
            if name not in ("estimates", "hops", "hops_vs_direct")
            and isinstance(t, list) and t and isinstance(t[0], dict)}


def doc_figures(doc: dict, tables: dict[str, pd.DataFrame]) -> dict:
    """The plots that apply to one document: name -> Figure."""
    figs = {}
    recs = metrics.to_frame(doc)
    label = doc.get("config", {}).get("workload", "")
    if "target" in recs and len(recs):
        shown = tuple(m for m in ("ttft_ms", "e2e_ms") if m in recs and recs[m].notna().any())
        if shown:
            figs["latency"] = plots.latency_distributions(recs, shown, title=f"{label}: latency per configuration")
        if "output_tokens" in recs and recs["output_tokens"].fillna(0).sum() > 0:
            figs["throughput"] = plots.throughput(recs, title=f"{label}: throughput per configuration")
    if plots.summary_of(doc).get("overhead"):
        figs["overhead"] = plots.overhead(doc, title=f"{label}: overhead vs direct (95% CI)")
    if plots.has_sweep(doc):
        figs["sweep"] = plots.sweep(doc)
    if plots.summary_of(doc).get("hops"):
        figs["hops"] = plots.hop_breakdown(doc, title=f"{label}: where the time to first token goes")
    if tables:
        figs["estimates"] = plots.estimates_vs_measured(tables, title=f"{label}: reference estimate vs measured",
                                                         measured_only=True)
    return figs


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return '<p class="note">(no rows)</p>'
    body = df.to_html(index=False, border=0, na_rep="", escape=True,
                      formatters={c: fmt for c in df.columns})
    body = re.sub(r"<td>(confirmed|unresolved|context|level)</td>", r'<td class="\1">\1</td>', body)
    body = body.replace("<td>ruled out</td>", '<td class="ruled-out">ruled out</td>')
    return f'<div class="scroll">{body}</div>'


def md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(no rows)_"
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in df.columns) + " |",
             "|" + "|".join("---" for _ in df.columns) + "|"]
    lines += ["| " + " | ".join(esc(fmt(v)) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


class _Doc:
    """Accumulates one report as parallel HTML and Markdown parts."""

    def __init__(self, out: Path):
        self.out, self.html, self.md, self.pngs = out, [], [], []

    def heading(self, text: str, level: int = 2):
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md.append("#" * level + " " + text)

    def para(self, text: str, cls: str = ""):
        attr = f' class="{cls}"' if cls else ""
        self.html.append(f"<p{attr}>{html.escape(text)}</p>")
        self.md.append(f"**{text}**" if cls == "warn" else text)

    def table(self, df: pd.DataFrame, caption: str | None = None):
        if caption:
            self.html.append(f"<h4>{html.escape(caption)}</h4>")
            self.md.append(f"#### {caption}")
        self.html.append(html_table(df))
        self.md.append(md_table(df))

    def figure(self, fig, name: str, alt: str):
        data = png_bytes(fig)
        path = self.out / f"{name}.png"
        path.write_bytes(data)
        self.pngs.append(path)
        b64 = base64.b64encode(data).decode("ascii")
        self.html.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">')
        self.md.append(f"![{alt}]({path.name})")


def _stem(doc: dict, i: int, seen: set) -> str:
    src = doc.get("_source")
    base = Path(src).stem if src else f"{doc.get('config', {}).get('workload', 'results')}"
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base) or f"results{i}"
    stem, n = base, 2
    while stem in seen:
        stem, n = f"{base}-{n}", n + 1
    seen.add(stem)
    return stem


def _docs(paths_or_docs) -> list[dict]:
    if isinstance(paths_or_docs, (dict, str, Path)):
        paths_or_docs = [paths_or_docs]
    out = []
    for item in paths_or_docs:
        out += [item] if isinstance(item, dict) else load_results(item)
    return out


def _reference_sections(r: _Doc, out: Path, all_rows: list[dict], est: dict) -> list[Path]:
    """Every measurement against the reference's estimates (each table once), then the
    reference's own inconsistent arithmetic; returns the CSVs written."""
    csvs = []
    r.heading("All measurements against the reference estimates")
    combined = estimate_tables(all_rows, est)
    if combined:
        verdicts = pd.concat(combined.values())["verdict"].value_counts()
        r.para("Verdicts: " + ", ".join(f"{v} {n}" for v, n in verdicts.items())
               + f" ({rule_text()}).", "note")
        r.figure(plots.estimates_vs_measured(combined, measured_only=True), "all_estimates",
                 "all estimates vs measured")
        for tid, t in combined.items():
            r.table(t, f"reference estimate vs measured: {tid}")
        p = out / "csv" / "estimates_vs_measured.csv"
        pd.concat([t.assign(table=tid) for tid, t in combined.items()]).to_csv(p, index=False)
        csvs.append(p)
    else:
        r.para("No results document carries measurements of reference metrics (an 'estimates' list).", "note")
    r.heading("The reference's internal inconsistencies")
    bad = inconsistencies(est)
    r.para(f"{len(bad)} of {len(E.check_consistency(est))} checks of the analysis's own arithmetic "
           "do not add up (stated vs computed from its other numbers):", "note")
    r.table(bad)
    p = out / "csv" / "reference_inconsistencies.csv"
    bad.to_csv(p, index=False)
    csvs.append(p)
    return csvs


def build_report(paths_or_docs, out_dir, *, title: str = "krmlx report",
                 estimates: dict | None = None, reference: bool = True) -> dict:
    """Write the report for results files / folders / documents into ``out_dir``.

    Returns ``{"html": Path, "markdown": Path, "png": [Path], "csv": [Path]}``. Any
    workload's document works: tables are whatever its ``summary`` holds, plots are
    those its records and summary support. ``reference=False`` leaves out the sections on
    the reference's estimates. Raises ResultsError for an unreadable file and ValueError
    when given nothing.
    """
    docs = _docs(paths_or_docs)
    if not docs:
        raise ValueError("build_report: no results documents given")
    out = Path(out_dir)
    (out / "csv").mkdir(parents=True, exist_ok=True)
    est = E.load_estimates() if estimates is None else estimates
    r, csvs, seen, all_rows = _Doc(out), [], set(), []
    r.heading(title, 1)
    r.para(f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from {len(docs)} results "
           f"document(s). Comparisons carry 95% bootstrap confidence intervals.", "note")
    stems = [_stem(d, i, seen) for i, d in enumerate(docs)]
    r.heading("Summary")
    for stem, d in zip(stems, docs, strict=True):
        r.para(f"{stem}: {summary_paragraph(d)}")
    r.heading("Environment")
    common, per_doc = environment_tables(docs, stems)
    r.table(common, "shared by every results file")
    r.table(per_doc, "per results file")
    for stem, d in zip(stems, docs, strict=True):
        for key in ("blas_warning", "direct_blas_warning"):
            if _get(d, f"env.{key}"):
                r.para(f"{stem}: {d['env'][key]}", "warn")
    for stem, d in zip(stems, docs, strict=True):
        cfg = d.get("config", {})
        r.heading(f"{cfg.get('workload', 'results')}: {stem}")
        r.para(f"model {cfg.get('model')} · {cfg.get('questions', len(d.get('records', [])))} requests · "
               f"{cfg.get('trials', '?')} trial(s)" + (" · smoke" if cfg.get("smoke") else "")
               + ("" if d.get("complete", True) else " · INCOMPLETE (interrupted run)"), "note")
        tables = summary_tables(d)
        for caption, t in hop_tables(plots.summary_of(d)).items():
            r.table(t, caption)
        for name, t in tables.items():
            caption = OVERHEAD_CAPTION if name == "overhead" else human_label(name)
            r.table(display_table(name, t), caption)
            if name == "targets" and "wall_throughput_tps_mean" in t:
                r.para(TOK_S_NOTE, "note")
            if name == "targets" and percentile_rows(t.to_dict(orient="records")):
                r.table(pd.DataFrame(percentile_rows(t.to_dict(orient="records"))), PERCENTILE_NOTE)
        rows = measured_rows(d) if reference else []
        all_rows += rows
        est_tables = estimate_tables(rows, est)
        for name, fig in doc_figures(d, est_tables).items():
            r.figure(fig, f"{stem}_{name}", f"{stem} {name}")
        csvs += export_csv(d, out / "csv", stem=stem)
        if rows:
            p = out / "csv" / f"{stem}_estimates.csv"
            pd.concat([t.assign(table=tid) for tid, t in est_tables.items()] or [pd.DataFrame(rows)],
                      ignore_index=True).to_csv(p, index=False)
            csvs.append(p)
    if reference:
        csvs += _reference_sections(r, out, all_rows, est)
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                         f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
                         + "\n".join(r.html) + "\n</body></html>\n", encoding="utf-8")
    md_path.write_text("\n\n".join(r.md) + "\n", encoding="utf-8")
    return {"html": html_path, "markdown": md_path, "png": r.pngs, "csv": csvs}
