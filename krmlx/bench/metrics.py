"""Pure functions from raw records to summaries (vLLM bench definitions, DESIGN.md habit 5).

A record is one request of one trial through one target: ``target``, ``trial``,
``request_id``, ``ok``, ``ttft_ms``, ``e2e_ms``, ``tpot_ms``, ``itl_ms`` (list),
``output_tokens``, ``prompt_tokens``, ``t_start_s``, ``t_end_s``. Nothing here measures;
everything here is deterministic given its inputs (bootstraps take a seed).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

STATS = ("n", "mean", "p50", "p90", "p95", "max")
LATENCY_METRICS = ("ttft_ms", "tpot_ms", "e2e_ms")
PERCENTILES = (50, 90, 99)
# the fewest samples a percentile can rest on before it is only the slowest few requests
MIN_SAMPLES = {50: 1, 90: 20, 99: 100}
MIN_TRIALS_TO_RESAMPLE = 10  # below this, a bootstrap over trials is itself too narrow


def to_frame(data) -> pd.DataFrame:
    """The records DataFrame (the one builder): from a results document, a list of record
    dicts or a DataFrame (returned as is). ``kind`` defaults to "generate" and ``series``
    to "" where a record has none."""
    if isinstance(data, pd.DataFrame):
        return data
    records = data.get("records", []) if isinstance(data, dict) else list(data)
    df = pd.DataFrame.from_records(records)
    for col, default in (("kind", "generate"), ("series", "")):
        df[col] = df[col].fillna(default) if col in df else default
    return df


def describe(values, qs=(50, 90, 95)) -> dict:
    """n, mean, the percentiles ``qs`` (:func:`percentiles`) and max of ``values`` (None and
    NaN dropped), NaN where empty."""
    a = np.asarray([v for v in values if v is not None and not pd.isna(v)], dtype=float)
    nan = float("nan")
    return {"n": int(a.size), "mean": float(a.mean()) if a.size else nan, **percentiles(a, qs),
            "max": float(a.max()) if a.size else nan}


def percentile_ci(clusters, qs=PERCENTILES, *, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> dict:
    """Percentiles ``qs`` of the pooled values of ``clusters`` (a list of arrays: one per
    trial, or one per request) with bootstrap CIs that resample whole clusters, so values
    that share a trial (or a request's inter-token gaps) stay together. Returns
    ``{"n": samples, "p50": .., "p50_ci_low": .., "p50_ci_high": .., ..., "p99_few": bool}``;
    ``pQ_few`` is True where fewer than MIN_SAMPLES[Q] samples stand behind pQ. CIs are NaN
    with fewer than 2 clusters."""
    clusters = [a[~np.isnan(a)] for a in (np.asarray(c, float).ravel() for c in clusters)]
    clusters = [c for c in clusters if c.size]
    pooled = np.concatenate(clusters) if clusters else np.array([])
    out: dict = {"n": int(pooled.size)}
    nan = float("nan")
    point = np.percentile(pooled, qs) if pooled.size else [nan] * len(qs)
    lo = hi = [nan] * len(qs)
    if len(clusters) >= 2:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, len(clusters), size=(n_boot, len(clusters)))
        if all(c.size == 1 for c in clusters):  # one value each: resample the values at once
            stats = np.percentile(pooled[draws], qs, axis=1).T
        else:
            stats = np.array([np.percentile(np.concatenate([clusters[i] for i in row]), qs)
                              for row in draws])
        lo, hi = np.percentile(stats, [(1 - level) / 2 * 100, (1 + level) / 2 * 100], axis=0)
    for q, v, a, b in zip(qs, point, lo, hi, strict=True):
        out.update({f"p{q:g}": float(v), f"p{q:g}_ci_low": float(a), f"p{q:g}_ci_high": float(b),
                    f"p{q:g}_few": bool(pooled.size < MIN_SAMPLES.get(q, 1))})
    return out


def percentile_cis(ok: pd.DataFrame, *, seed: int = 0) -> dict:
    """TTFT, ITL and E2E percentiles of one target's completed requests with CIs
    (:func:`percentile_ci`): clusters are whole trials where there are at least
    MIN_TRIALS_TO_RESAMPLE, else requests. Keys ``{metric}_{pQ}[_ci_low|_ci_high|_few]``,
    ``{metric}_samples`` and ``percentile_ci_over`` ("trials" or "requests")."""
    by_trial = "trial" in ok and ok["trial"].nunique() >= MIN_TRIALS_TO_RESAMPLE
    out = {"percentile_ci_over": "trials" if by_trial else "requests"}
    for metric in ("ttft_ms", "itl_ms", "e2e_ms"):
        if metric not in ok:
            continue
        if metric == "itl_ms":
            per_request = [np.asarray(g or [], float) for g in ok[metric]]
        else:
            per_request = [np.asarray([v], float) for v in ok[metric]]
        if by_trial:
            trials = ok["trial"].to_numpy()
            clusters = [np.concatenate([per_request[i] for i in np.flatnonzero(trials == t)])
                        for t in np.unique(trials)]
        else:
            clusters = per_request
        r = percentile_ci(clusters, seed=seed)
        out[f"{metric}_samples"] = r.pop("n")
        out.update({f"{metric}_{k}": v for k, v in r.items()})
    return out


def trial_totals(df: pd.DataFrame) -> pd.DataFrame:
    """Per engine and trial: busy time (sum of E2E: the engine's own time when requests run
    one at a time, interleaved with other engines), wall time (first start to last end:
    right for concurrent runs of one engine), tokens, and throughput over each."""
    ok = df[df["ok"]]
    g = ok.groupby(["target", "trial"])
    out = pd.DataFrame({
        "wall_s": g["t_end_s"].max() - g["t_start_s"].min(),
        "busy_s": g["e2e_ms"].sum() / 1e3,
        "output_tokens": g["output_tokens"].sum(),
        "requests": g.size(),
    })
    out["throughput_tps"] = out["output_tokens"] / out["busy_s"]
    out["wall_throughput_tps"] = out["output_tokens"] / out["wall_s"]
    return out.reset_index()


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per engine: latency stats, ITL stats, totals, error count."""
    rows = []
    totals = trial_totals(df)
    for engine, part in df.groupby("target", sort=False):
        ok = part[part["ok"]]
        row = {"target": engine, "requests": len(part), "errors": int((~part["ok"]).sum())}
        for metric in LATENCY_METRICS:
            for stat, value in describe(ok[metric]).items():
                if stat != "n":
                    row[f"{metric}_{stat}"] = value
        itl = [x for gaps in ok["itl_ms"] for x in (gaps or [])]
        for stat in ("mean", "p50", "p90", "p95", "max"):
            row[f"itl_ms_{stat}"] = describe(itl)[stat]
        t = totals[totals["target"] == engine]
        row["total_s_mean"] = float(t["busy_s"].mean()) if len(t) else float("nan")
        row["wall_s_mean"] = float(t["wall_s"].mean()) if len(t) else float("nan")
        row["throughput_tps_mean"] = float(t["throughput_tps"].mean()) if len(t) else float("nan")
        row["wall_throughput_tps_mean"] = float(t["wall_throughput_tps"].mean()) if len(t) else float("nan")
        row["output_tokens"] = int(ok["output_tokens"].sum())
        row.update(percentile_cis(ok))
        if "worker_ttft_ms" in ok and ok["worker_ttft_ms"].notna().any():
            # an engine's worker reports its own clock: what of the caller's TTFT the wire
            # took (the request in, the first token out), and its TPOT without the wire
            row["wire_ttft_ms_p50"] = describe(ok["ttft_ms"] - ok["worker_ttft_ms"])["p50"]
            many = ok[ok["output_tokens"] > 1]
            row["worker_tpot_ms_mean"] = describe(
                many["worker_decode_ms"] / (many["output_tokens"] - 1))["mean"]
        rows.append(row)
    return pd.DataFrame(rows)


def bootstrap_ci(a, b, *, paired: bool, stat=np.mean, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """Point estimate and CI of stat(b) - stat(a) and stat(b) / stat(a)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    if paired:
        if a.shape != b.shape:
            raise ValueError("paired bootstrap needs equal-length samples")
        idx = rng.integers(0, a.size, size=(n_boot, a.size))
        sa, sb = stat(a[idx], axis=1), stat(b[idx], axis=1)
    else:
        sa = stat(a[rng.integers(0, a.size, size=(n_boot, a.size))], axis=1)
        sb = stat(b[rng.integers(0, b.size, size=(n_boot, b.size))], axis=1)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    diff, ratio = sb - sa, sb / sa
    return {"a": float(stat(a)), "b": float(stat(b)), "diff": float(stat(b) - stat(a)),
            "diff_ci_low": float(np.percentile(diff, lo)), "diff_ci_high": float(np.percentile(diff, hi)),
            "ratio": float(stat(b) / stat(a)), "ratio_ci_low": float(np.percentile(ratio, lo)),
            "ratio_ci_high": float(np.percentile(ratio, hi))}


def compare(df: pd.DataFrame, base: str, other: str, metric: str = "e2e_ms", *,
            seed: int = 0) -> dict:
    """Compare ``metric`` of engine ``other`` against ``base`` with a 95% bootstrap CI.

    Requests are paired by (trial, request_id) when both engines ran the same ones.
    ``ci_low``/``ci_high`` bound the difference (other - base, in the metric's unit).
    """
    ok = df[df["ok"]]
    a = ok[ok["target"] == base].set_index(["trial", "request_id"])[metric]
    b = ok[ok["target"] == other].set_index(["trial", "request_id"])[metric]
    common = a.index.intersection(b.index)
    paired = len(common) >= 2 and len(common) == len(a) == len(b)
    if paired:
        a, b = a.loc[common], b.loc[common]
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"compare {base} vs {other}: need >= 2 ok records each for {metric}")
    r = bootstrap_ci(a.dropna().values if not paired else a.values,
                     b.dropna().values if not paired else b.values, paired=paired, seed=seed)
    return {"base": base, "other": other, "metric": metric, "paired": paired, "n": int(len(b)),
            **r, "ci_low": r["diff_ci_low"], "ci_high": r["diff_ci_high"]}


def _paired_series(df: pd.DataFrame, base: str, other: str, metric):
    """``metric`` (a column, or a list of them) of base and other over the (trial,
    request_id) pairs both completed, in the same order."""
    ok = df[df["ok"]]
    a = ok[ok["target"] == base].set_index(["trial", "request_id"])[metric]
    b = ok[ok["target"] == other].set_index(["trial", "request_id"])[metric]
    common = a.index.intersection(b.index)
    return a.loc[common], b.loc[common]


def _paired(df: pd.DataFrame, base: str, other: str, metric: str):
    a, b = _paired_series(df, base, other, metric)
    return (a.values, b.values) if len(a) >= 2 else None


def overhead(df: pd.DataFrame, base: str = "direct", *, seed: int = 0) -> pd.DataFrame:
    """Overhead of every other engine over ``base``: per request (TTFT, E2E, with CIs) and in
    total (sum of E2E per trial, as % of base)."""
    rows = []
    totals = trial_totals(df).set_index(["target", "trial"])
    for engine in [e for e in df["target"].unique() if e != base]:
        row = {"target": engine, "base": base}
        for metric in ("ttft_ms", "e2e_ms"):
            c = compare(df, base, engine, metric, seed=seed)
            row.update({f"{metric}_diff": c["diff"], f"{metric}_ci_low": c["ci_low"],
                        f"{metric}_ci_high": c["ci_high"], f"{metric}_ratio": c["ratio"]})
        tb, te = totals.loc[base]["busy_s"], totals.loc[engine]["busy_s"]
        trials = tb.index.intersection(te.index)
        row["total_s_base"] = float(tb.loc[trials].mean())
        row["total_s"] = float(te.loc[trials].mean())
        row["total_overhead_pct"] = (row["total_s"] / row["total_s_base"] - 1) * 100
        # CI of the total: resample requests (paired), ratio of summed E2E.
        c = _paired(df, base, engine, "e2e_ms")
        row["pairs"] = len(c[0]) if c else 0
        r = bootstrap_ci(*c, paired=True, stat=np.sum, seed=seed) if c else None
        row["total_overhead_pct_ci_low"] = (r["ratio_ci_low"] - 1) * 100 if r else float("nan")
        row["total_overhead_pct_ci_high"] = (r["ratio_ci_high"] - 1) * 100 if r else float("nan")
        row["ci_low"], row["ci_high"] = row["e2e_ms_ci_low"], row["e2e_ms_ci_high"]
        rows.append(row)
    return pd.DataFrame(rows)


# -- helpers for the workloads (krmlx.bench.workloads*) ------------------------------------------

def percentiles(values, qs=(50, 90, 99)) -> dict:
    """``{"p50": ..., "p90": ..., "p99": ...}`` of ``values`` (None/NaN dropped; NaN if empty):
    the one point-percentile definition (numpy's linear interpolation)."""
    a = np.asarray([v for v in values if v is not None and not pd.isna(v)], dtype=float)
    return {f"p{q:g}": float(np.percentile(a, q)) if a.size else float("nan") for q in qs}


def mean_ci(values, *, seed: int = 0, n_boot: int = 2000, level: float = 0.95) -> dict:
    """Mean of ``values`` with a bootstrap CI: n, mean, ci_low, ci_high (NaN CI below 2 values)."""
    a = np.asarray([v for v in values if v is not None and not pd.isna(v)], dtype=float)
    if a.size == 0:
        return {"n": 0, "mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    if a.size < 2:
        return {"n": 1, "mean": float(a[0]), "ci_low": float("nan"), "ci_high": float("nan")}
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {"n": int(a.size), "mean": float(a.mean()), "ci_low": float(np.percentile(means, lo)),
            "ci_high": float(np.percentile(means, hi))}


def summarize_by(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """:func:`summarize` within each value of column ``by`` (first column of the result)."""
    if by not in df:
        return summarize(df)
    parts = []
    for key, part in df.groupby(by, sort=False):
        table = summarize(part)
        table.insert(0, by, key)
        parts.append(table)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def paired_totals(df: pd.DataFrame, base: str, other: str, metric: str = "e2e_ms", *,
                  seed: int = 0) -> dict | None:
    """Sum of ``metric`` for ``other`` vs ``base`` over the requests both completed (paired by
    trial and request_id), with paired bootstrap CIs: total_base, total_other, diff (other -
    base; ci_low/ci_high bound it), ratio (other / base) and speedup_x (base / other) with
    their CIs. None when fewer than 2 requests pair up."""
    pairs = _paired(df, base, other, metric)
    if pairs is None:
        return None
    r = bootstrap_ci(*pairs, paired=True, stat=np.sum, seed=seed)

    def inv(x):
        return 1.0 / x if x else float("nan")

    return {"base": base, "other": other, "metric": metric, "n": int(len(pairs[0])),
            "total_base": r["a"], "total_other": r["b"], "diff": r["diff"],
            "ci_low": r["diff_ci_low"], "ci_high": r["diff_ci_high"], "ratio": r["ratio"],
            "ratio_ci_low": r["ratio_ci_low"], "ratio_ci_high": r["ratio_ci_high"],
            "speedup_x": inv(r["ratio"]), "speedup_ci_low": inv(r["ratio_ci_high"]),
            "speedup_ci_high": inv(r["ratio_ci_low"])}


def trial_block_ratio_ci(df: pd.DataFrame, base: str, other: str, metric: str = "e2e_ms", *,
                         seed: int = 0, n_boot: int = 2000, level: float = 0.95,
                         min_trials: int = 10) -> dict | None:
    """sum(other) / sum(base) over the requests both completed, with a CI that resamples
    whole trials (each trial's pairs stay together). A trial's requests run close in time,
    so on a noisy host their errors are correlated and a per-request bootstrap
    (:func:`paired_totals`) is too narrow; this one is not, given enough trials. None with
    fewer than ``min_trials`` (a bootstrap over a handful of trials is itself too narrow)."""
    a, b = (dict(tuple(s.groupby(level="trial"))) for s in _paired_series(df, base, other, metric))
    r = trial_ratio_ci(a, b, np.sum, seed=seed, n_boot=n_boot, level=level, min_trials=min_trials)
    return r if r["trials"] >= max(2, min_trials) else None


def trial_ratio_ci(base: dict, other: dict, stat=np.median, *, seed: int = 0,
                   n_boot: int = 2000, level: float = 0.95, min_trials: int = 10) -> dict:
    """stat(other's values, pooled over trials) / stat(base's), with a CI that resamples whole
    trials, paired: ``base`` and ``other`` map trial -> values, and a resample draws trial
    numbers, taking both targets' values of each drawn trial (the two ran side by side, so
    a trial's host state is common to both). For a wave's TTFT p50 (stat = median): its
    first tokens come in plateaus, one per prefill group, so the p50 of one trial jumps with
    how its arrivals split; resampling trials carries that. ratio_ci_low/high are NaN with
    fewer than ``min_trials`` trials in common (a bootstrap over a handful is too narrow)."""
    trials = sorted(set(base) & set(other))

    def pool(d, ts):
        return np.concatenate([np.asarray(d[t], float) for t in ts]) if ts else np.array([])

    a, b = pool(base, trials), pool(other, trials)
    out = {"trials": len(trials), "ratio": float(stat(b) / stat(a)) if a.size and b.size
           else float("nan"), "ratio_ci_low": float("nan"), "ratio_ci_high": float("nan")}
    if len(trials) < max(2, min_trials):
        return out
    idx = np.random.default_rng(seed).integers(0, len(trials), size=(n_boot, len(trials)))
    ratios = [stat(pool(other, [trials[i] for i in row])) / stat(pool(base, [trials[i] for i in row]))
              for row in idx]
    lo, hi = np.percentile(ratios, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return {**out, "ratio_ci_low": float(lo), "ratio_ci_high": float(hi)}


def order_split(df: pd.DataFrame, base: str, other: str, metric: str = "e2e_ms") -> dict | None:
    """sum(other) / sum(base) over the pairs where base ran first and, apart, over those
    where other ran first (by ``t_start_s``): in a crossover design the two differ by what
    running second costs (on a small host, following another process). Their mean is the
    order-balanced ratio; their gap is the order effect. None unless both orders occur."""
    a, b = _paired_series(df, base, other, [metric, "t_start_s"])
    first = a["t_start_s"].values < b["t_start_s"].values
    if not first.any() or first.all():
        return None
    ratio = {k: float(b[metric].values[m].sum() / a[metric].values[m].sum())
             for k, m in (("base_first", first), ("other_first", ~first))}
    return {**ratio, "n_base_first": int(first.sum()), "n_other_first": int((~first).sum())}


def speedup_of(base_walls, other_walls, base: str = "base", other: str = "other", *,
               seed: int = 0) -> dict | None:
    """mean(base_walls) / mean(other_walls), one wall time per trial each, with a bootstrap
    CI over trials (NaN with fewer than 2 each); None if either has none."""
    a, b = np.asarray(other_walls, dtype=float), np.asarray(base_walls, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return None
    row = {"base": base, "other": other, "trials": int(min(len(a), len(b))),
           "wall_s_base": float(b.mean()), "wall_s_other": float(a.mean()),
           "speedup_x": float(b.mean() / a.mean()), "ci_low": float("nan"), "ci_high": float("nan")}
    if len(a) >= 2 and len(b) >= 2:
        r = bootstrap_ci(a, b, paired=False, seed=seed)
        row["ci_low"], row["ci_high"] = r["ratio_ci_low"], r["ratio_ci_high"]
    return row


def goodput(df: pd.DataFrame, *, ttft_ms: float, tpot_ms: float) -> dict:
    """Requests that met the SLO (ok, TTFT <= ``ttft_ms`` and TPOT <= ``tpot_ms``; a
    one-token answer has no TPOT and meets that part): ``n``, ``good``, ``fraction``."""
    n = len(df)
    if not n:
        return {"n": 0, "good": 0, "fraction": float("nan")}
    ok = df["ok"].astype(bool)
    ttft = df["ttft_ms"].astype(float)
    tpot = df["tpot_ms"].astype(float)
    met = ok & (ttft <= ttft_ms) & (tpot.isna() | (tpot <= tpot_ms))
    return {"n": n, "good": int(met.sum()), "fraction": float(met.sum() / n)}
