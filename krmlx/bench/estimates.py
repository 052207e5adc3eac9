"""The published kr-serve-mlx Phase 3+ estimates beside krmlx's measurements.

``data/estimates.json`` holds every table (and prose list of figures) of
*kr-serve-mlx-phase3-estimates.md* as rows of ``values`` (cell text as written) and
``parsed`` (numbers, unit in the key; ``n_`` is a count), each naming the krmlx
``workload`` and ``metric`` that would measure it and ``estimate_key``, the parsed key
holding the estimate (null where the text gives only a range or nothing measurable).
:func:`compare_estimates` sets measurements beside the estimates with a verdict;
:func:`check_consistency` redoes the analysis's own arithmetic.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from krmlx.errors import ResultsError

from . import verdicts as V

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "data" / "estimates.json"
WORKLOADS = ("baseline", "tokenize_flood", "model_switching_10", "model_switching_100",
             "multi_tenant", "mixed", "error_rate_5", "error_rate_10", "error_rate_20",
             "long_form", "server_profile", "stream_per_token", "ipc_per_request")
CONSISTENCY_TOLERANCE = 0.02
COMPARE_COLUMNS = ["row", "metric", "estimate", "measured", "ratio", "ci_low", "ci_high",
                   "margin", "ci_half_width", "n_to_resolve", "verdict"]
UNIT_SCALE = {"ms": 1e-3, "s": 1.0, "hours": 3600.0}


def load_estimates(path: str | Path | None = None) -> dict:
    """The estimates document; ResultsError if the file is missing or malformed."""
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"estimates file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"estimates file {path} is not readable JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tables"), list) or not doc["tables"]:
        raise ResultsError(f"{path}: expected an object with a non-empty 'tables' list")
    for table in doc["tables"]:
        if not (isinstance(table, dict) and {"id", "title", "section", "columns", "rows"} <= table.keys()):
            raise ResultsError(f"{path}: a table lacks id/title/section/columns/rows")
        for row in table["rows"]:
            validate_row(row, f"{path}: table {table['id']!r}")
    return doc


def validate_row(row, where: str) -> None:
    """Raise ResultsError naming the first thing wrong with one row."""
    if not isinstance(row, dict) or not all(isinstance(row.get(k), dict) for k in ("values", "parsed")):
        raise ResultsError(f"{where}: a row needs 'row', 'values' and 'parsed' objects")
    where = f"{where}, row {row.get('row')!r}"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row["parsed"].values()):
        raise ResultsError(f"{where}: parsed values must be numbers")
    if row.get("workload") not in (None, *WORKLOADS):
        raise ResultsError(f"{where}: unknown workload {row.get('workload')!r}")
    if row.get("estimate_key") is not None and row["estimate_key"] not in row["parsed"]:
        raise ResultsError(f"{where}: estimate_key {row['estimate_key']!r} is not a parsed key")


def estimates_frame(estimates: dict | None = None) -> pd.DataFrame:
    """One row per (table, row, parsed key): table, row, key, estimate, workload, metric."""
    est = load_estimates() if estimates is None else estimates
    records = [{"table": t["id"], "row": r["row"], "key": key, "estimate": float(value),
                "workload": r.get("workload"), "metric": r.get("metric")}
               for t in est["tables"] for r in t["rows"] for key, value in r["parsed"].items()]
    return pd.DataFrame(records, columns=["table", "row", "key", "estimate", "workload", "metric"])


def higher_is_better(metric: str) -> bool:
    """Direction rule: speedups, throughputs, gains, reductions and savings are better
    higher; everything else (times, overheads, memory) is better lower."""
    return any(word in metric for word in ("speedup", "tok_s", "gain", "reduction", "savings"))


DIMENSIONLESS = ("speedup_x", "_pct", "_x")


def dimensionless(metric: str) -> bool:
    """Speedups, ratios and percentages: claims that carry from the reference's machine and
    model to another. Seconds, milliseconds and tokens/s do not."""
    return metric.endswith(DIMENSIONLESS)


def judge(estimate: float, measured: float, metric: str,
          ci_low: float = math.nan, ci_high: float = math.nan, *, smoke: bool = False,
          n: int | None = None) -> str:
    """The verdict on one reference figure (:func:`assess` gives it with its margin)."""
    return assess(estimate, measured, metric, ci_low, ci_high, smoke=smoke, n=n)["verdict"]


def assess(estimate: float, measured: float, metric: str,
           ci_low: float = math.nan, ci_high: float = math.nan, *, smoke: bool = False,
           n: int | None = None) -> dict:
    """The verdict on one reference figure, with the margin it was judged by:

    - 'not measured';
    - 'smoke: not evidence' for anything a smoke run measured;
    - 'context' for absolute figures (s, ms, tok/s: the reference's Mac and 3B model are
      not this machine and model; they are shown beside ours, never judged);
    - for dimensionless claims (overheads, speedups, reductions), the equivalence test of
      :func:`krmlx.bench.verdicts.decide` with the metric's margin
      (:func:`~krmlx.bench.verdicts.margin_for`): 'confirmed' when the whole 95% CI lies
      within estimate ± margin, 'ruled out' when it lies wholly outside, else (a CI that
      straddles an edge, or none) 'unresolved', with its half-width and the trials or pairs
      that would resolve it."""
    blank = {"margin": math.nan, "ci_half_width": math.nan, "n_to_resolve": math.nan}
    if pd.isna(measured):
        return {**blank, "verdict": "not measured"}
    margin = V.margin_for(metric) if dimensionless(metric) else None
    if margin is None:
        return {**blank, "verdict": V.SMOKE if smoke else "context"}
    r = V.decide(estimate, ci_low, ci_high, margin.around(estimate), measured=measured,
                 n=None if n is None or pd.isna(n) else int(n), smoke=smoke)
    return {k: r[k] for k in ("verdict", "margin", "ci_half_width", "n_to_resolve")}


def rows_of(source) -> list[dict]:
    """The measurements of reference metrics in ``source``: a results document, a list of
    them, or a list of rows ({workload, metric, measured, ci_low, ci_high, [n], [smoke]}).
    A document's rows (``summary.estimates``, or a top-level ``estimates``) are marked
    ``smoke`` by :func:`krmlx.bench.verdicts.is_smoke`, so no path can lose the flag."""
    if isinstance(source, dict):
        docs = [source]
    else:
        items = list(source)
        if not (items and isinstance(items[0], dict) and ("records" in items[0] or "summary" in items[0])):
            return [r for r in items if isinstance(r, dict) and r.get("workload") and r.get("metric")]
        docs = items
    out = []
    for doc in docs:
        rows = doc.get("estimates")
        if rows is None or len(rows) == 0:
            rows = (doc.get("summary") or {}).get("estimates")
        if isinstance(rows, pd.DataFrame):
            rows = rows.to_dict(orient="records")
        smoke = V.is_smoke(doc)
        out += [{**r, "smoke": smoke or bool(r.get("smoke"))} for r in rows or []
                if isinstance(r, dict) and r.get("workload") and r.get("metric")]
    return out


def estimate_tables(source, estimates: dict | None = None, *,
                    measured_only: bool = True) -> dict[str, pd.DataFrame]:
    """:func:`compare_estimates` over the rows of ``source`` (:func:`rows_of`; for a
    workload/metric measured twice the last wins): one DataFrame per reference table.
    ``measured_only`` keeps only the rows with a measurement, and only tables that have one."""
    rows = rows_of(source)
    m = pd.DataFrame(rows).drop_duplicates(["workload", "metric"], keep="last") if rows else []
    tables = compare_estimates(m, estimates)
    if not measured_only:
        return tables
    out = {tid: df[df["measured"].notna()].reset_index(drop=True) for tid, df in tables.items()}
    return {tid: df for tid, df in out.items() if len(df)}


def compare_estimates(measured: pd.DataFrame | list[dict],
                      estimates: dict | None = None) -> dict[str, pd.DataFrame]:
    """Per table id with rows that have a workload, metric and point estimate: those rows
    beside ``measured`` (columns workload, metric, measured; optionally ci_low, ci_high,
    unit, n: the trials or pairs behind the CI, smoke), with ratio = measured / estimate
    and an :func:`assess` verdict with its margin."""
    est = load_estimates() if estimates is None else estimates
    m = pd.DataFrame(measured if len(measured) else {"workload": [], "metric": [], "measured": []})
    missing = {"workload", "metric", "measured"} - set(m.columns)
    if missing:
        raise ResultsError(f"measured lacks columns: {sorted(missing)}")
    m = m.assign(**{c: m.get(c, math.nan) for c in ("ci_low", "ci_high", "n")})
    m = m.assign(smoke=m.get("smoke", False))
    if m.duplicated(["workload", "metric"]).any():
        raise ResultsError("measured has more than one value for a workload/metric pair")
    targets = pd.DataFrame(
        [{"table": t["id"], "row": r["row"], "workload": r["workload"], "metric": r["metric"],
          "estimate": float(r["parsed"][r["estimate_key"]])}
         for t in est["tables"] for r in t["rows"]
         if r.get("workload") and r.get("metric") and r.get("estimate_key")],
        columns=["table", "row", "workload", "metric", "estimate"])
    merged = targets.merge(m[["workload", "metric", "measured", "ci_low", "ci_high", "n", "smoke"]],
                           on=["workload", "metric"], how="left")
    merged["smoke"] = merged["smoke"].fillna(False).astype(bool)
    merged["measured"] = pd.to_numeric(merged["measured"]).astype(float)
    merged["ratio"] = merged["measured"] / merged["estimate"].where(merged["estimate"] != 0)
    judged = pd.DataFrame([assess(r.estimate, r.measured, r.metric, r.ci_low, r.ci_high,
                                  smoke=r.smoke, n=r.n) for r in merged.itertuples()],
                          columns=["verdict", "margin", "ci_half_width", "n_to_resolve"], index=merged.index)
    merged = pd.concat([merged, judged], axis=1)
    return {tid: part[COMPARE_COLUMNS].reset_index(drop=True)
            for tid, part in merged.groupby("table", sort=False)}


def find_rounding(row: dict, value: float) -> float:
    """Half a unit of the last digit ``value`` is written with in ``row`` (0 if not found)."""
    for text in row["values"].values():
        for m in re.finditer(r"\d+(?:\.(\d*))?", text):
            if math.isclose(float(m.group()), abs(value)):
                return 0.5 * 10 ** -len(m.group(1) or "")
    return 0.0


def check_consistency(estimates: dict | None = None) -> pd.DataFrame:
    """The analysis's arithmetic redone from its own numbers: check, stated, computed, rel_error
    (to computed) and consistent (within 2%, or equal to computed rounded as stated is written)."""
    est = load_estimates() if estimates is None else estimates
    rows = {(t["id"], r["row"]): r for t in est["tables"] for r in t["rows"]}
    try:
        checks = [c for (tid, label), r in rows.items() for c in check_row(tid, label, r["parsed"])]
        checks += list(check_across(lambda table, row: rows[(table, row)]["parsed"], list(rows)))
    except (KeyError, IndexError, StopIteration) as e:
        raise ResultsError(f"estimates lack a row or key the checks need: {e!r}") from None
    records = []
    for tid, label, key, what, computed in checks:
        stated, computed = float(rows[(tid, label)]["parsed"][key]), float(computed)
        diff = abs(stated - computed)
        rel = 0.0 if diff == 0 else diff / abs(computed) if computed else math.inf
        ok = rel <= CONSISTENCY_TOLERANCE or diff <= find_rounding(rows[(tid, label)], stated) + 1e-12
        records.append({"check": f"{tid}/{label}: {key} {what}", "stated": stated,
                        "computed": computed, "rel_error": rel, "consistent": bool(ok)})
    return pd.DataFrame(records, columns=["check", "stated", "computed", "rel_error", "consistent"])


def check_row(tid: str, label: str, q: dict):
    """Checks within one row: (table, row, stated key, description, computed value)."""
    n, per, total = ([k for k in q if k.startswith(s)] for s in ("n_", "per_", "total_"))
    if len(n) == len(per) == len(total) == 1:  # "n × per = total"
        unit = [UNIT_SCALE[k.rsplit("_", 1)[1]] for k in (per[0], total[0])]
        yield tid, label, total[0], f"= {n[0]} x {per[0]}", q[n[0]] * q[per[0]] * unit[0] / unit[1]
    if tid == "baseline":
        u = next(k[len("krserve_"):] for k in q if k.startswith("krserve_"))
        kr, mlx = q["krserve_" + u], q["mlx_engine_" + u]
        yield tid, label, "overhead_" + u, "= kr-serve-mlx - mlx-engine", kr - mlx
        yield tid, label, "overhead_pct", "= overhead / mlx-engine", 100 * (kr - mlx) / mlx
    u = "hours" if "optimized_hours" in q else "s"
    b, o = q.get("baseline_" + u, 0), q.get("optimized_" + u, 0)
    if "speedup_x" in q and o:
        yield tid, label, "speedup_x", "= baseline / optimized", b / o
    if "reduction_pct" in q and o:
        yield tid, label, "reduction_pct", "= (baseline - optimized) / baseline", 100 * (b - o) / b
    if "gain_pct" in q and o:  # the analysis's "Gain" has two meanings: take the closer
        gains = {"speedup - 1": 100 * (b / o - 1), "time saved": 100 * (b - o) / b}
        how = min(gains, key=lambda k: abs(gains[k] - q["gain_pct"]))
        yield tid, label, "gain_pct", f"= {how}", gains[how]


def check_across(p, keys: list):
    """Checks across rows and tables; ``p(table, row)`` gives a row's parsed numbers."""
    def labels(table, prefix=""):
        return [label for t, label in keys if t == table and label.startswith(prefix)]

    obs, src = "baseline_observations", "Overhead sources: "
    n = p(obs, "Total time overhead")["n_questions"]
    per_req = p(obs, "Individual request overhead")["overhead_ms"]
    for key in ("krserve_s", "mlx_engine_s", "overhead_s"):
        yield "baseline", "Total Time", key, f"= {n:g} x Per Question", n * p("baseline", "Per Question")[key]
    for tid, label in (("baseline", "Total Time"), (obs, src + "Aggregated overhead across 50 questions")):
        yield tid, label, "overhead_s", f"= {n:g} x {per_req:g} ms per-request overhead", n * per_req / 1e3
    parts = (p(obs, src + "IPC serialization/deserialization")["ipc_ms"]
             + p(obs, src + "Process coordination")["coordination_ms"])
    yield obs, "Individual request overhead", "overhead_ms", "= IPC + process coordination", parts
    # Phase 1: IPC breakdown and batch of 5, tokenize.
    ipc, w5 = "phase1_ipc_breakdown", "With Batching (batch size = 5): "
    current = p(ipc, "Current IPC Overhead per Request")["ipc_ms"]
    parts = [sum(p(ipc, x).values()) for x in labels(ipc, "Breakdown: ")]
    yield ipc, "Current IPC Overhead per Request", "ipc_ms", "= sum of breakdown", sum(parts)
    for key in ("batch_ms", "total_ms"):
        parts = [p(ipc, x)[key] for x in labels(ipc, w5) if "(1 " in x]
        yield ipc, w5 + "Total", key, "= sum of parts", sum(parts)
    per5 = p(ipc, w5 + "Total")["batch_ms"] / p(ipc, w5 + "Total")["n_requests"]
    yield ipc, w5 + "Overhead per request", "per_request_ms", "= batch total / n", per5
    yield (ipc, w5 + "Overhead per request", "reduction_pct", "= 1 - batched / current per request",
           100 * (1 - per5 / current))
    now = p("phase1_tokenize", "For 1000 tokenize operations: Current")["total_s"]
    for tid, label in (("phase1_batching", "1000 tokenize requests"), ("combined_best_case", "Baseline")):
        yield tid, label, "baseline_s", "= 1000 tokenize requests as in phase1_tokenize", now
    # Phase 3: prose against the table.
    ret, f50 = "phase3_retry", "For 50 questions with 5 failures (10%): "
    e10, e0 = p("phase3_errors", "10% error rate"), p("phase3_errors", "Error-free (benchmark)")
    yield (ret, f50 + "Savings", "savings_s", "= phase3_errors 10% row: current - with Phase 3",
           e10["baseline_s"] - e10["optimized_s"])
    yield (ret, f50 + "Current", "total_s", "= phase3_errors: 10% row - error-free row",
           e10["baseline_s"] - e0["baseline_s"])
    ovh = p(ret, "Error-Free Scenario: Overhead")["overhead_ms"]
    yield ("phase3_errors", "Error-free (benchmark)", "gain_pct", f"= -{n:g} x {ovh:g} ms / total",
           -100 * n * ovh / 1e3 / e0["baseline_s"])
    # Combined tables: totals against their phases.
    for tid in ("combined_best_case", "combined_realistic"):
        phases = labels(tid, "+ ")
        added = sum(v for x in phases for k, v in p(tid, x).items() if re.fullmatch(r"baseline_\w+_s", k))
        yield (tid, "Total", "baseline_s", "= first baseline + added loads/errors",
               p(tid, "Baseline")["baseline_s"] + added)
        yield tid, "Total", "optimized_s", "= last phase's optimized", p(tid, phases[-1])["optimized_s"]
        yield (tid, "Total", "speedup_x", "= product of phase speedups",
               math.prod(p(tid, x)["speedup_x"] for x in phases))
    # Phase 5: streaming.
    p5, cs, wo = "phase5_streaming", "Current Streaming Overhead: ", "With Optimization: "
    for head, chunk, coord in ((cs, "Per-token chunk serialization", "Stream coordination"),
                               (wo, "Binary framing (vs JSON)", "Optimized backpressure")):
        yield (p5, head + "Total", "total_ms", "= serialization + coordination",
               p(p5, head + chunk)["total_ms"] + p(p5, head + coord)["coordination_ms"])
    now, opt = p(p5, cs + "Total")["total_ms"], p(p5, wo + "Total")["total_ms"]
    yield p5, "Savings", "savings_ms", "= current - optimized", now - opt
    yield p5, "Savings", "reduction_pct", "= savings / current", 100 * (1 - opt / now)
    saved_s = p(p5, "For 50 questions: Savings")["savings_ms"] / 1e3
    total_s = p("baseline", "Total Time")["krserve_s"]
    yield p5, "For 50 questions: Savings", "gain_pct", "= savings / baseline total", 100 * saved_s / total_s
    # The 50-question summary against the phase sections; the two component tables.
    sources = {"Phase 1: Batching": ("phase1_batching", "50-question generation"),
               "Phase 2: Caching": ("phase2_caching", "Single model (benchmark)"),
               "Phase 3: Error Handling": ("phase3_errors", "Error-free (benchmark)"),
               "Phase 5: Streaming": (p5, "For 50 questions: Savings")}
    for label, ref in sources.items():
        yield "summary_50q", label, "gain_pct", f"= {ref[0]} / {ref[1]}", p(*ref)["gain_pct"]
    total_gain = sum(p("summary_50q", x)["gain_pct"] for x in sources)
    yield "summary_50q", "Combined", "gain_pct", "= sum of phase gains", total_gain
    for tid in ("mixed_workload", "api_server"):
        for key in (k for k in p(tid, "Total") if k != "reduction_pct"):
            parts = [p(tid, x)[key] for x in labels(tid) if x != "Total"]
            yield tid, "Total", key, "= sum of components", sum(parts)
