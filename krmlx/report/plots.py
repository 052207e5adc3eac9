"""Plots of results: every function takes a results document (or its records / summary
rows) and RETURNS a :class:`matplotlib.figure.Figure`; nothing is shown or kept open.

Figures are built with ``Figure()`` directly, not pyplot, so they work under Agg (no
display), are never collected by pyplot's global figure list, and show once in Jupyter
when returned from a cell (the inline backend formats Figure objects as PNG).

- :func:`latency_distributions`  TTFT and E2E per configuration (box + points)
- :func:`throughput`             output tokens/s per configuration (one point per trial)
- :func:`overhead`               overhead vs the direct baseline with 95% CI bars
- :func:`estimates_vs_measured`  measured / estimate per reference row, coloured by verdict
- :func:`sweep`                  throughput and TTFT against concurrency or rate
- :func:`hop_breakdown`          the first token's mean time per hop, stacked per target
- :func:`waterfall`              one request's hops to its first token
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..bench import metrics

VERDICT_COLORS = {"confirmed": "#2a9d8f", "unresolved": "#457b9d", "ruled out": "#e76f51",
                  "context": "#888888", "smoke: not evidence": "#c9a227",
                  "not measured": "#adb5bd"}
THROUGHPUT_COLUMNS = ("wall_throughput_tps", "throughput_tps", "aggregate_tps", "output_tok_s",
                      "wall_throughput_tps_mean", "throughput_tps_mean", "throughput_tok_s",
                      "throughput_req_s")
TTFT_COLUMNS = ("ttft_ms_mean", "ttft_ms_p50", "ttft_ms")
SWEEP_KEYS = ("concurrency", "rate")


def summary_of(doc: dict) -> dict:
    """``doc["summary"]`` with DataFrame tables as lists of row dicts (an in-memory doc
    holds DataFrames, a loaded one lists)."""
    return {k: v.to_dict(orient="records") if isinstance(v, pd.DataFrame) else v
            for k, v in (doc.get("summary") or {}).items()}


def _empty(fig: Figure, ax, message: str) -> Figure:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#6c757d")
    ax.set_axis_off()
    return fig


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["ok"].astype(bool)] if "ok" in df else df


def _engines(df: pd.DataFrame) -> list[str]:
    """Engines in run order, with ``direct`` (the baseline) first when present."""
    names = list(dict.fromkeys(df["target"])) if "target" in df else []
    return sorted(names, key=lambda n: n != "direct")


def latency_distributions(data, metrics_: tuple[str, ...] = ("ttft_ms", "e2e_ms"),
                          title: str | None = None) -> Figure:
    """One panel per metric: a box per configuration with every request as a point."""
    df = _ok(metrics.to_frame(data))
    fig = Figure(figsize=(5.2 * len(metrics_), 3.8), layout="constrained")
    axes = fig.subplots(1, len(metrics_), squeeze=False)[0]
    engines = _engines(df)
    if not engines:
        return _empty(fig, axes[0], "no records")
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes, metrics_, strict=True):
        groups = [pd.to_numeric(df[df["target"] == e][metric], errors="coerce").dropna().values
                  if metric in df else np.array([]) for e in engines]
        ax.boxplot([g if len(g) else [np.nan] for g in groups], showfliers=False, widths=0.55)
        for i, g in enumerate(groups, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(g)), g, s=9, alpha=0.55, color="#264653",
                       zorder=3)
        ax.set_xticks(range(1, len(engines) + 1), engines, rotation=30, ha="right")
        ax.set_ylabel(metric.replace("_ms", " (ms)"))
        ax.set_title(metric.split("_")[0].upper() if metric != "e2e_ms" else "E2E latency")
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def throughput(data, title: str | None = None) -> Figure:
    """Output tokens per second of busy time per configuration: bar = mean over trials,
    dots = trials (see :func:`krmlx.bench.metrics.trial_totals`)."""
    df = metrics.to_frame(data)
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.subplots()
    needed = {"target", "trial", "ok", "t_start_s", "t_end_s", "e2e_ms", "output_tokens"}
    if df.empty or not needed <= set(df.columns) or not _ok(df).shape[0]:
        return _empty(fig, ax, "no throughput data")
    totals = metrics.trial_totals(df)
    engines = [e for e in _engines(df) if e in set(totals["target"])]
    means = [totals[totals["target"] == e]["throughput_tps"].mean() for e in engines]
    ax.bar(range(len(engines)), means, color="#8ab17d", width=0.6)
    for i, e in enumerate(engines):
        pts = totals[totals["target"] == e]["throughput_tps"].values
        ax.scatter(np.full(len(pts), i), pts, color="#264653", s=14, zorder=3)
    ax.set_xticks(range(len(engines)), engines, rotation=30, ha="right")
    ax.set_ylabel("output tokens / s (busy time)")
    ax.set_title(title or "Throughput per configuration")
    ax.grid(axis="y", alpha=0.3)
    return fig


def _overhead_rows(data) -> pd.DataFrame:
    if isinstance(data, dict):
        data = summary_of(data).get("overhead") or []
    return data if isinstance(data, pd.DataFrame) else pd.DataFrame(list(data))


def overhead(data, title: str | None = None) -> Figure:
    """Overhead of each configuration over its base (``direct``): TTFT and E2E differences
    in ms and the total-time overhead in %, each with its 95% bootstrap CI as error bars.
    Takes a results doc or the summary's ``overhead`` rows."""
    rows = _overhead_rows(data)
    panels = [("ttft_ms_diff", "ttft_ms_ci_low", "ttft_ms_ci_high", "TTFT overhead (ms)"),
              ("e2e_ms_diff", "e2e_ms_ci_low", "e2e_ms_ci_high", "E2E overhead (ms)"),
              ("total_overhead_pct", "total_overhead_pct_ci_low", "total_overhead_pct_ci_high",
               "total time overhead (%)")]
    panels = [p for p in panels if p[0] in rows]
    fig = Figure(figsize=(4.4 * max(1, len(panels)), 0.45 * len(rows) + 2.2), layout="constrained")
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    if rows.empty or not panels:
        return _empty(fig, axes[0], "no overhead rows (needs a direct baseline)")
    y = np.arange(len(rows))
    for ax, (col, lo, hi, label) in zip(axes, panels, strict=True):
        mid = pd.to_numeric(rows[col], errors="coerce").to_numpy(float)
        low = pd.to_numeric(rows.get(lo, pd.Series([np.nan] * len(rows))), errors="coerce").to_numpy(float)
        high = pd.to_numeric(rows.get(hi, pd.Series([np.nan] * len(rows))), errors="coerce").to_numpy(float)
        err = np.vstack([np.nan_to_num(mid - low), np.nan_to_num(high - mid)]).clip(min=0)
        colors = ["#e76f51" if m > 0 else "#2a9d8f" for m in np.nan_to_num(mid)]
        ax.barh(y, mid, color=colors, alpha=0.8, height=0.6)
        ax.errorbar(mid, y, xerr=err, fmt="none", ecolor="#264653", capsize=4)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y, rows["target"])
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    base = rows["base"].iloc[0] if "base" in rows else "direct"
    fig.suptitle(title or f"Overhead vs {base} (95% CI)")
    return fig


def estimates_vs_measured(tables, title: str | None = None, *, measured_only: bool = False) -> Figure:
    """Measured / estimate per reference row (log scale; 1 = the estimate), coloured by verdict.

    ``tables``: ``{table_id: DataFrame}`` from :func:`krmlx.bench.estimates.compare_estimates`
    (columns row, metric, estimate, measured, ratio, verdict), one such DataFrame, or a list.
    Rows not measured are listed in grey at ratio 1 with no bar.
    """
    if isinstance(tables, pd.DataFrame):
        frames = [tables]
    elif isinstance(tables, dict):
        frames = [t.assign(table=tid) for tid, t in tables.items()]
    else:
        frames = list(tables)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if measured_only and not df.empty:
        df = df[df["measured"].notna()]
    fig = Figure(figsize=(8.5, 0.34 * max(len(df), 3) + 1.6), layout="constrained")
    ax = fig.subplots()
    if df.empty:
        return _empty(fig, ax, "no estimate rows")
    labels = [(f"{t}: " if isinstance(t, str) else "") + f"{r} [{m}]"
              for t, r, m in zip(df.get("table", [None] * len(df)), df["row"], df["metric"], strict=True)]
    labels = [lab if len(lab) <= 70 else lab[:67] + "..." for lab in labels]
    ratio = pd.to_numeric(df["ratio"], errors="coerce").to_numpy(float)
    y = np.arange(len(df))
    colors = [VERDICT_COLORS.get(v, "#adb5bd") for v in df["verdict"]]
    shown = np.where(np.isfinite(ratio) & (ratio > 0), ratio, np.nan)
    ax.barh(y, np.nan_to_num(shown, nan=1.0) - 1, left=1, color=colors, height=0.6)
    ax.scatter(np.nan_to_num(shown, nan=1.0), y, c=colors, s=18, zorder=3)
    ax.axvline(1, color="black", lw=0.8)
    finite = shown[np.isfinite(shown)]
    lo, hi = (min(0.5, finite.min() / 1.5), max(2.0, finite.max() * 1.5)) if finite.size else (0.5, 2)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if hi / lo > 200 else (1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("measured / estimate (log); colour: the verdict, by the CI against the row's margin")
    measured = pd.to_numeric(df["measured"], errors="coerce").to_numpy(float)
    for i in np.flatnonzero(np.isnan(shown) & ~np.isnan(measured)):  # ratio <= 0: no log bar
        ax.annotate(f"measured {measured[i]:.3g} vs {df['estimate'].iloc[i]:.3g}", (1, y[i]),
                    xytext=(6, -3), textcoords="offset points", fontsize=7, color=colors[i])
    handles = [ax.scatter([], [], c=c, label=v) for v, c in VERDICT_COLORS.items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.set_title(title or "Reference estimates vs measured")
    return fig


def _pick(columns, candidates) -> str | None:
    return next((c for c in candidates if c in columns), None)


def sweep_frame(data, x: str | None = None) -> tuple[pd.DataFrame, str | None]:
    """Rows (engine, x, throughput, ttft_ms) for a sweep, from summary rows that carry
    ``concurrency``/``rate`` or, failing that, from records grouped by engine, x and trial
    (throughput = output tokens / wall time). Returns (frame, x column or None)."""
    summary_rows = []
    if isinstance(data, dict):
        summary_rows = [t for t in summary_of(data).values()
                        if isinstance(t, list) and t and isinstance(t[0], dict)]
        rows = next((pd.DataFrame(t) for t in summary_rows
                     if any(k in t[0] for k in ((x,) if x else SWEEP_KEYS))), None)
        recs = metrics.to_frame(data)
    else:
        rows, recs = None, metrics.to_frame(data)
        if not {"e2e_ms", "t_start_s"} <= set(recs.columns) and len(recs):
            rows, recs = recs, pd.DataFrame()  # summary-style rows were passed in
    for src in (rows, recs):
        if src is None or src.empty:
            continue
        key = x or _pick(src.columns, SWEEP_KEYS)
        if key is None or key not in src:
            continue
        if src is rows:
            tp = _pick(src.columns, (("throughput_req_s",) if key == "rate" else ()) + THROUGHPUT_COLUMNS)
            tt = _pick(src.columns, TTFT_COLUMNS)
            out = pd.DataFrame({"target": src.get("target", pd.Series(["run"] * len(src))),
                                key: src[key], "throughput": src[tp] if tp else np.nan,
                                "ttft_ms": src[tt] if tt else np.nan})
            out.attrs["throughput_unit"] = "requests/s" if tp and tp.endswith("req_s") else "tokens/s"
            return out.sort_values(key), key
        ok = _ok(src)
        g = ok.groupby(["target", key, "trial"] if "trial" in ok else ["target", key])
        per = pd.DataFrame({"throughput": g["output_tokens"].sum() / (g["t_end_s"].max() - g["t_start_s"].min()),
                            "ttft_ms": g["ttft_ms"].mean()}).reset_index()
        out = per.groupby(["target", key], as_index=False)[["throughput", "ttft_ms"]].mean()
        return out.sort_values(key), key
    return pd.DataFrame(), None


def sweep(data, x: str | None = None, title: str | None = None) -> Figure:
    """Throughput and TTFT against ``concurrency`` or ``rate`` (auto-detected), one line
    per configuration. Takes a results doc, records, or summary rows carrying the x field."""
    df, key = sweep_frame(data, x)
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_tp, ax_ttft = fig.subplots(1, 2)
    if df.empty or key is None:
        _empty(fig, ax_ttft, "")
        return _empty(fig, ax_tp, "no concurrency / rate field in these results")
    for engine, part in df.groupby("target", sort=False):
        ax_tp.plot(part[key], part["throughput"], marker="o", label=engine)
        ax_ttft.plot(part[key], part["ttft_ms"], marker="o", label=engine)
    unit = df.attrs.get("throughput_unit", "tokens/s")
    for ax, label in ((ax_tp, f"throughput ({unit})"), (ax_ttft, "TTFT (ms)")):
        ax.set_xlabel(key + (" (requests/s)" if key == "rate" else ""))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_tp.legend(fontsize=8)
    fig.suptitle(title or f"{key.capitalize()} sweep")
    return fig


def has_sweep(data) -> bool:
    """True when :func:`sweep` would draw a curve: a concurrency/rate field with >= 2 values."""
    df, key = sweep_frame(data)
    return key is not None and df[key].nunique() >= 2


def hop_breakdown(data, title: str | None = None) -> Figure:
    """Where the first token's time goes (:mod:`krmlx.bench.hops`): per target, the mean ms
    of each hop stacked, so a bar's length is the target's mean TTFT; hops a target does not
    pass are absent from its bar. Takes a results doc or its summary's ``hops`` rows."""
    rows = pd.DataFrame(summary_of(data).get("hops") or [] if isinstance(data, dict) else list(data))
    fig = Figure(figsize=(10, 0.5 * max(3, rows["target"].nunique() if len(rows) else 3) + 2.4),
                 layout="constrained")
    ax = fig.subplots()
    if rows.empty:
        return _empty(fig, ax, "no timeline in these records")
    rows = rows[rows["phase"] == "ttft"]
    table = rows.pivot_table(index="target", columns="label", values="mean_ms", sort=False).fillna(0.0)
    colors = [f"C{i % 10}" for i in range(len(table.columns))]
    left = np.zeros(len(table))
    for color, label in zip(colors, table.columns, strict=True):
        width = table[label].to_numpy(float).clip(min=0)
        if width.any():
            ax.barh(np.arange(len(table)), width, left=left, color=color, label=label, height=0.6)
        left += width
    ax.set_yticks(np.arange(len(table)), table.index)
    ax.invert_yaxis()
    ax.set_xlabel("mean ms to the first token, by hop")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.set_title(title or "Where the time to first token goes")
    return fig


def waterfall(record: dict, title: str | None = None) -> Figure:
    """One request's way to its first token (a record with a ``timeline``): each hop a bar
    from where it starts to where it ends, in ms after the request's start."""
    from ..timeline import TTFT_HOPS, ttft_hops

    hops = ttft_hops(record.get("timeline") or {})
    fig = Figure(figsize=(9, 0.32 * max(len(hops), 3) + 1.6), layout="constrained")
    ax = fig.subplots()
    if not hops:
        return _empty(fig, ax, "this record has no timeline")
    labels = dict(TTFT_HOPS)
    start = 0.0
    for i, ms in enumerate(hops.values()):
        ax.barh(i, max(ms, 0.0), left=start, color=f"C{i % 10}", height=0.6)
        ax.annotate(f"{ms:.2f} ms", (start + max(ms, 0.0), i), xytext=(4, -3),
                    textcoords="offset points", fontsize=7)
        start += ms
    ax.set_yticks(np.arange(len(hops)), [labels[p] for p in hops], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms after the request's start")
    ax.set_title(title or f"{record.get('target')}: {record.get('request_id', '')} to its first token")
    return fig
