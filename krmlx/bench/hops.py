"""Where the time goes, from the records' timelines (:mod:`krmlx.timeline`): per-target
breakdowns with CIs, served-minus-direct attribution hop by hop, and a Perfetto trace.

Contract: pure functions of records (a DataFrame of them, or the list); nothing measures.
Means, not medians, so the parts of a breakdown add up to the whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..timeline import (
    COMPUTE_HOPS,
    TOKEN_HOPS,
    TTFT_HOPS,
    WORKER_POINTS,
    first_point,
    stage_hops,
    ttft_hops,
)
from . import metrics


def hop_frame(df: pd.DataFrame, kind: str = "ttft") -> pd.DataFrame:
    """One row per record with a timeline: target, trial, request_id, and a column per hop
    (ms; 0 where the path has no such hop)."""
    column = "timeline" if kind == "ttft" else "token_hops"
    if column not in df:
        return pd.DataFrame()
    rows = []
    for r in df[df["ok"]].itertuples():
        value = getattr(r, column, None)
        if isinstance(value, dict) and value:
            hops = ttft_hops(value) if kind == "ttft" else value
            rows.append({"target": r.target, "trial": r.trial, "request_id": r.request_id, **hops})
    if not rows:
        return pd.DataFrame()
    hops = [p for p, _ in (TTFT_HOPS if kind == "ttft" else TOKEN_HOPS)]
    out = pd.DataFrame(rows)
    for h in hops:
        out[h] = out[h].fillna(0.0) if h in out else 0.0
    return out[["target", "trial", "request_id", *hops]]


def breakdown(df: pd.DataFrame) -> list[dict]:
    """Per target and hop: the mean ms spent there for the first token (``phase="ttft"``) and
    per token after it (``phase="token"``), with a 95% bootstrap CI over requests; the
    TTFT hops of a target add up to its mean TTFT as the timeline saw it (``ttft_ms_mean``
    of the same records, stated in each row as ``whole_ms``)."""
    rows = []
    for kind, hops in (("ttft", TTFT_HOPS), ("token", TOKEN_HOPS)):
        frame = hop_frame(df, kind)
        if frame.empty:
            continue
        for engine, part in frame.groupby("target", sort=False):
            whole = float(part[[h for h, _ in hops]].sum(axis=1).mean())
            for hop, label in hops:
                c = metrics.mean_ci(part[hop].to_numpy(float), n_boot=1000)
                rows.append({"target": engine, "phase": kind, "hop": hop, "label": label,
                             "mean_ms": c["mean"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
                             "whole_ms": whole, "requests": len(part)})
    return rows


def stage_breakdown(df: pd.DataFrame) -> list[dict]:
    """Per target and stage: the mean ms of the way out to the worker's pipe spent there
    (:func:`krmlx.timeline.stage_hops`: ``caller``, each ``stage:<name>``, ``stage:client``),
    with a 95% bootstrap CI over requests; [] for targets without stages' points."""
    if "timeline" not in df:
        return []
    rows = []
    for target, part in df[df["ok"]].groupby("target", sort=False):
        split = pd.DataFrame([stage_hops(t) for t in part["timeline"] if isinstance(t, dict)])
        for stage in split.columns:
            c = metrics.mean_ci(split[stage].to_numpy(float), n_boot=1000)
            rows.append({"target": target, "stage": stage, "mean_ms": c["mean"],
                         "ci_low": c["ci_low"], "ci_high": c["ci_high"], "requests": c["n"]})
    return rows


def _paired(df: pd.DataFrame, base: str, other: str):
    """The TTFT hop frames of ``base`` and ``other`` over the requests both completed
    (paired by trial and request id), or None with fewer than 2 pairs."""
    frame = hop_frame(df, "ttft")
    if frame.empty or not {base, other} <= set(frame["target"]):
        return None
    key = ["trial", "request_id"]
    a = frame[frame["target"] == base].set_index(key)
    b = frame[frame["target"] == other].set_index(key)
    common = a.index.intersection(b.index)
    return (a.loc[common], b.loc[common]) if len(common) >= 2 else None


def attribution(df: pd.DataFrame, base: str, other: str, *, seed: int = 0,
                n_boot: int = 1000) -> list[dict]:
    """Mean TTFT of ``other`` minus ``base``'s, hop by hop, over the requests both completed
    (paired by trial and request id), each with a paired 95% bootstrap CI. A hop only one
    path has counts whole. ``serving`` says whether the hop is serving-layer work (False for
    the compute hops: the same model math on both paths, so a difference there is the
    host's, e.g. the other process's share of the cores). The last row, ``unexplained``, is
    the measured ΔTTFT (of the records' own TTFT) less the hops' sum: nonzero where a
    record's timeline misses points."""
    pair = _paired(df, base, other)
    if pair is None:
        return []
    a, b = pair
    common = a.index
    ok = df[df["ok"]]
    ttft = {e: ok[ok["target"] == e].set_index(["trial", "request_id"])["ttft_ms"] for e in (base, other)}
    measured = (ttft[other].reindex(common) - ttft[base].reindex(common)).to_numpy(float)
    idx = np.random.default_rng(seed).integers(0, len(common), size=(n_boot, len(common)))
    rows, total = [], np.zeros(len(common))
    for hop, label in TTFT_HOPS:
        d = b[hop].to_numpy(float) - a[hop].to_numpy(float)
        total += d
        lo, hi = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
        rows.append({"target": other, "base": base, "hop": hop, "label": label,
                     "serving": hop not in COMPUTE_HOPS, "diff_ms": float(d.mean()),
                     "ci_low": float(lo), "ci_high": float(hi), "pairs": len(common)})
    rest = measured - total
    lo, hi = np.nanpercentile(rest[idx].mean(axis=1), [2.5, 97.5])
    rows.append({"target": other, "base": base, "hop": "unexplained",
                 "label": "measured ΔTTFT not in any hop", "serving": None,
                 "diff_ms": float(np.nanmean(rest)), "ci_low": float(lo), "ci_high": float(hi),
                 "pairs": len(common)})
    return rows


# The reference's per-request IPC breakdown (its "Current IPC Overhead per Request" rows),
# as sums of the engine's hops over direct's. The reference counts one serialization, one
# stdio write/read and one deserialization per request; a request through the stdio worker
# has two of each before its first token (the call going in, the first frame coming back).
IPC_HOPS = {
    "serialize_ms_mean": ("client_written", "written"),  # stages + encode the call; encode the frame
    "stdio_ms_mean": ("worker_read", "received"),  # the pipe to the worker and back
    "deserialize_ms_mean": ("queued", "yielded"),  # the worker's decode and route; the client's
    "coordination_ms_mean": ("job_start",),  # the wait in the worker's queue
}
IPC_HOPS["ipc_ms_mean"] = tuple(h for hops in IPC_HOPS.values() for h in hops)


def grouped(df: pd.DataFrame, base: str, other: str, groups: dict = IPC_HOPS, *,
            seed: int = 0, n_boot: int = 1000) -> dict:
    """Per group of hops: (mean, ci_low, ci_high, pairs) of ``other``'s time in those hops
    minus ``base``'s, per request paired by trial and id (95% bootstrap CI). {} without
    two pairs."""
    pair = _paired(df, base, other)
    if pair is None:
        return {}
    a, b = pair
    out = {}
    for name, hops in groups.items():
        d = (b[list(hops)].sum(axis=1) - a[list(hops)].sum(axis=1)).to_numpy(float)
        c = metrics.mean_ci(d, seed=seed, n_boot=n_boot)
        out[name] = (c["mean"], c["ci_low"], c["ci_high"], c["n"])
    return out


def trace_events(records: list[dict]) -> dict:
    """A Chrome / Perfetto trace (``{"traceEvents": [...]}``, opens in ui.perfetto.dev): a
    process per target's caller and one per its worker, a slice per TTFT hop, per prefill
    chunk and per decode step, and one flow per request from the caller's call to the worker and back."""
    events, pids, flow = [], {}, 0

    def pid(name: str) -> int:
        if name not in pids:
            pids[name] = len(pids) + 1
            events.append({"ph": "M", "name": "process_name", "pid": pids[name], "tid": 1,
                           "args": {"name": name}})
        return pids[name]

    for rec in records:
        tl = rec.get("timeline")
        if not rec.get("ok") or not isinstance(tl, dict) or rec.get("t_start_s") is None:
            continue
        t0 = rec["t_start_s"] * 1e6  # µs on the shared clock
        caller = pid(f"{rec['target']} caller")
        served = tl.get("worker_read") is not None
        worker = pid(f"{rec['target']} worker") if served else caller
        name = f"{rec.get('request_id', '')} (trial {rec.get('trial', 0)})"
        prev = 0.0
        for point, label in TTFT_HOPS:
            t = first_point(tl, point)
            if t is None:
                continue
            where = worker if point in WORKER_POINTS else caller
            events.append({"ph": "X", "name": label, "cat": "ttft", "pid": where, "tid": 1,
                           "ts": t0 + prev * 1e3, "dur": max(0.0, (t - prev) * 1e3),
                           "args": {"request": name}})
            prev = t
        chunks = [t for t in tl.get("prefill") or [] if t is not None]
        for i in range(1, len(chunks)):  # the prefill's chunks, beside the prefill hop
            events.append({"ph": "X", "name": "prefill chunk", "cat": "prefill", "pid": worker,
                           "tid": 2, "ts": t0 + chunks[i - 1] * 1e3,
                           "dur": max(0.0, (chunks[i] - chunks[i - 1]) * 1e3),
                           "args": {"request": name, "chunk": i}})
        sampled = tl.get("sampled") or []
        for i in range(1, len(sampled)):
            events.append({"ph": "X", "name": "decode step", "cat": "token", "pid": worker,
                           "tid": 2, "ts": t0 + sampled[i - 1] * 1e3,
                           "dur": max(0.0, (sampled[i] - sampled[i - 1]) * 1e3),
                           "args": {"request": name, "token": i}})
        if served and tl.get("client_written") is not None and first_point(tl, "received") is not None:
            flow += 1
            for ph, where, t in (("s", caller, tl["client_written"]), ("t", worker, tl["worker_read"]),
                                 ("t", worker, first_point(tl, "written")),
                                 ("f", caller, first_point(tl, "received"))):
                if t is not None:
                    events.append({"ph": ph, "name": "request", "cat": "flow", "id": flow,
                                   "pid": where, "tid": 1, "ts": t0 + t * 1e3, "bp": "e"})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_trace(doc: dict, results_path: str | Path) -> Path | None:
    """The trace of a results document's records, written as ``traces/NAME`` beside its
    results file ``NAME`` (a folder apart, so a folder of results files holds only those);
    None when no record has a timeline."""
    trace = trace_events(doc.get("records", []))
    if not any(e["ph"] == "X" for e in trace["traceEvents"]):
        return None
    results_path = Path(results_path)
    path = results_path.parent / "traces" / results_path.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(trace))
    return path


def tables(summary: dict) -> dict[str, pd.DataFrame]:
    """A summary's ``hops`` and ``hops_vs_direct`` as tables for people: caption -> a frame
    of hops (rows) by target (columns), means in ms; the attribution as 'Δ [CI]' cells;
    three significant digits."""
    out = {}
    rows = pd.DataFrame(summary.get("hops") or [])
    for phase, caption in (("ttft", "first token: mean ms per hop (the hops add up to the TTFT)"),
                           ("token", "per token after the first: mean ms per hop")):
        part = rows[rows["phase"] == phase] if len(rows) else rows
        if part.empty:
            continue
        table = part.pivot_table(index="label", columns="target", values="mean_ms", sort=False)
        if phase == "ttft":
            table.loc["= TTFT (mean)"] = part.groupby("target", sort=False)["whole_ms"].first()
        out[caption] = table.map(lambda x: float(f"{x:.3g}")).reset_index().rename(
            columns={"label": "hop"})
    diff = pd.DataFrame(summary.get("hops_vs_direct") or [])
    if len(diff):
        diff["cell"] = [f"{r.diff_ms:+.3g} [{r.ci_low:+.3g}, {r.ci_high:+.3g}]" for r in diff.itertuples()]
        diff["kind"] = diff["serving"].map({True: "serving", False: "compute"}).fillna("")
        table = diff.pivot_table(index=["label", "kind"], columns="target", values="cell",
                                 aggfunc="first", sort=False)
        out["first token vs direct, hop by hop, ms [95% CI] (compute: the same model math, so a "
            "difference there is the host's, not the serving layer's)"] = (
            table.reset_index().rename(columns={"label": "hop"}))
    return out
