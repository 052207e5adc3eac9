"""The answer first: a results document's outcome in a few sentences, for people.

Contract: :func:`summary_paragraph` reads only a document's ``config`` and ``summary`` (no
records), so it works on pooled summary-only files too, and returns plain text. Per target
it states the overhead against the base (``direct``) with its 95% CI and the verdict of
:mod:`krmlx.bench.verdicts`:

- sequential workloads (``summary.overhead``): total time in %, TTFT in ms;
- ``lengths`` (``summary.overhead_by_length``): E2E in % per prompt length, by the CI over
  whole trials where there is one;
- ``concurrency`` (``summary.ratios``): throughput and TTFT p50 as ratios per level.

A row that carries its verdict (``total_verdict``, ``ttft_verdict``, ``e2e_verdict``) is
quoted as is; an older row without one is judged here by the same rules. A smoke run
says ``smoke: not evidence`` in place of every verdict. Greedy-output checks close it.

Numbers are rounded for reading (:func:`sig`: 3 significant digits, whole numbers from 100
on); a number with a CI is written ``+1.2 [-0.3, +2.7]``, to the decimals its CI supports. :data:`LABELS` turns summary keys into the
words reports show; :data:`TOK_S_NOTE` says what the two throughput columns mean.

Stats: none (pure functions of the document).
"""

from __future__ import annotations

import math

from .verdicts import MARGINS, SMOKE, is_smoke, judge_difference, overhead_verdicts

LABELS = {
    "targets": "targets: latency, time and throughput per target",
    "overhead": "overhead vs direct",
    "overhead_by_length": "overhead vs direct, by prompt length",
    "outputs_match": "greedy outputs identical to the base target",
    "outputs_match_phase0": "greedy outputs identical to phase 0",
    "outputs_match_rank1": "greedy outputs identical to one process",
    "levels": "per concurrency level",
    "ratios": "ratios between targets, per level",
    "comparisons": "pairwise comparisons",
    "collectives": "collectives of the distributed group",
    "headline": "headline",
    "stage_hops": "the way out to the worker's pipe, by stage (mean ms)",
}
ONE_TRIAL_NOTE = ("One trial: its CIs cover the spread between requests, not between runs of "
                  "the whole workload on this host; run --trials 3 --param aa=1 to see that "
                  "spread (an A/A copy of direct measured beside the rest).")
TOK_S_NOTE = ("tok/s: output tokens over the target's own request time (the sum of its E2E), "
              "what a client sees one request at a time; tok/s (wall): output tokens over the "
              "trial's wall time from first start to last end, which in an interleaved run "
              "includes the other targets' turns, so it is lower and comparable only within "
              "one run.")


def label(key: str) -> str:
    """The words a report shows for a summary key (the key itself when it has none)."""
    return LABELS.get(key, key.replace("_", " "))


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def sig(x, *, signed: bool = False) -> str:
    """``x`` to 3 significant digits (whole numbers from 100 on), ``+`` on positives when
    ``signed``; empty for a missing value."""
    if _nan(x):
        return ""
    x = float(x)
    decimals = 0 if x == 0 or abs(x) >= 100 else max(0, 2 - math.floor(math.log10(abs(x))))
    if decimals and abs(round(x, decimals)) >= 10 ** (math.floor(math.log10(abs(x))) + 1):
        decimals -= 1  # rounding carried into the next power of ten (0.9996 -> 1.00, not 1.000)
    text = f"{x:+.{decimals}f}" if signed else f"{x:.{decimals}f}"
    return text


def with_ci(point, lo, hi, *, signed: bool = True) -> str:
    """``+1.2 [-0.3, +2.7]``: all three to the decimals that give the CI's half-width two
    significant digits (a point is worth no more digits than its interval), and never more
    than 3 significant digits of the largest of them; the point alone (:func:`sig`) when
    there is no CI."""
    if _nan(lo) or _nan(hi) or _nan(point) or hi == lo:
        return sig(point, signed=signed)
    half, top = abs(hi - lo) / 2, max(abs(point), abs(lo), abs(hi))
    decimals = min(max(0, 1 - math.floor(math.log10(half))),  # what the CI supports
                   0 if top >= 100 else 2 - math.floor(math.log10(top)))  # 3 significant digits
    f = (lambda x: f"{x:+.{decimals}f}") if signed else (lambda x: f"{x:.{decimals}f}")
    return f"{f(point)} [{f(lo)}, {f(hi)}]"


def _overhead_parts(rows: list[dict], smoke: bool) -> list[str]:
    parts = []
    for r in rows:
        v = {k: r[k] for k in ("total_verdict", "ttft_verdict") if k in r}
        if len(v) < 2:
            v = {**overhead_verdicts(r, smoke=smoke), **v}
        if smoke:
            v = {"total_verdict": SMOKE, "ttft_verdict": SMOKE}
        text = (f"{r['target']}: total time {with_ci(r.get('total_overhead_pct'), r.get('total_overhead_pct_ci_low'), r.get('total_overhead_pct_ci_high'))} % "
                f"({v['total_verdict']})")
        if not _nan(r.get("ttft_ms_diff")):
            text += (f", TTFT {with_ci(r['ttft_ms_diff'], r.get('ttft_ms_ci_low'), r.get('ttft_ms_ci_high'))} ms "
                     f"({v['ttft_verdict']})")
        parts.append(text)
    return parts


def _length_parts(rows: list[dict], smoke: bool) -> list[str]:
    by_target: dict[str, list[str]] = {}
    for r in rows:
        trial = "e2e_overhead_pct_trial_ci_low" in r
        ci = "e2e_overhead_pct_trial_ci" if trial else "e2e_overhead_pct_ci"
        verdict = r.get("e2e_verdict")
        if verdict is None:
            verdict = judge_difference(r.get("e2e_overhead_pct", math.nan), r.get(f"{ci}_low", math.nan),
                                       r.get(f"{ci}_high", math.nan), MARGINS["pct"].value)["verdict"]
        if smoke:
            verdict = SMOKE
        by_target.setdefault(r["target"], []).append(
            f"{r['length']} tokens {with_ci(r.get('e2e_overhead_pct'), r.get(f'{ci}_low'), r.get(f'{ci}_high'))} % ({verdict})")
    return [f"{t}: E2E " + "; ".join(p) for t, p in by_target.items()]


def _ratio_parts(rows: list[dict]) -> list[str]:
    parts = []
    for r in rows:
        tok = with_ci(r.get("tok_s_target_over_base"), r.get("tok_s_target_over_base_ci_low"),
                      r.get("tok_s_target_over_base_ci_high"), signed=False)
        ttft = with_ci(r.get("ttft_p50_target_over_base"), r.get("ttft_p50_target_over_base_ci_low"),
                       r.get("ttft_p50_target_over_base_ci_high"), signed=False)
        parts.append(f"{r['target']} over {r['base']} at {r.get('concurrency')} streams: "
                     f"throughput {tok}x, TTFT p50 {ttft}x")
    return parts


def _matches(summary: dict) -> str:
    rows = [(key, r) for key in ("outputs_match", "outputs_match_phase0", "outputs_match_rank1")
            for r in summary.get(key) or []]
    if not rows:
        return ""
    text = ", ".join(f"{r['target']} {r.get('identical_outputs')}/{r.get('compared', r.get('requests'))}"
                     f" vs {r.get('base', 'direct')}" for _, r in rows)
    return f"Greedy outputs identical: {text}."


def summary_paragraph(doc: dict) -> str:
    """A results document's answer in a few sentences (see the module docstring)."""
    cfg, summary = doc.get("config") or {}, doc.get("summary") or {}
    smoke = is_smoke(doc)
    head = (f"{cfg.get('workload', 'results')} on {cfg.get('model', '?')}, "
            f"{cfg.get('trials', '?')} trial(s)" + (" (smoke run: sizes for a quick check, not evidence)"
                                                    if smoke else "") + ".")
    sentences = [head]
    if summary.get("overhead"):
        sentences.append("Against direct (served minus direct, 95% CI, verdict at ±1 point of "
                         "total time / ±2 ms of TTFT): " + "; ".join(_overhead_parts(summary["overhead"], smoke)) + ".")
        if not smoke and cfg.get("trials") == 1 and not any(
                str(r.get("target", "")).endswith("~aa") for r in summary["overhead"]):
            sentences.append(ONE_TRIAL_NOTE)
    if summary.get("overhead_by_length"):
        sentences.append("Against direct by prompt length (95% CI, over whole trials where there "
                         "are 10 or more): " + " | ".join(_length_parts(summary["overhead_by_length"], smoke)) + ".")
    if summary.get("ratios"):
        sentences.append("Ratios (95% CI over whole trials from 10 trials on): "
                         + "; ".join(_ratio_parts(summary["ratios"])) + ".")
    if len(sentences) == 1:
        sentences.append("This workload has no comparison against direct; its tables follow.")
    matches = _matches(summary)
    if matches:
        sentences.append(matches)
    if cfg.get("interrupted") or doc.get("complete") is False:
        sentences.append("The run was interrupted: these are the requests completed before it stopped.")
    return " ".join(sentences)
