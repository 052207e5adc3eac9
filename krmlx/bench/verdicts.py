"""Verdicts: what a measurement with a 95% CI may be said to show, and nothing stronger.

Contract: every word of judgement krmlx prints (the reference table's ``confirmed`` /
``ruled out``, the overhead table's ``level`` / ``slower`` / ``faster``) comes from
:func:`decide`, an equivalence test against a stated margin:

- *confirmed* (``level`` against zero): the whole CI lies within ``claim ± margin``;
- *ruled out* (``slower`` / ``faster``): the whole CI lies outside that band;
- *unresolved*: anything else, a CI that straddles an edge of the band, however close its
  point estimate sits to the claim (a CI ten points wide that holds the estimate confirms
  nothing); also a measurement without a CI.

With it come the CI's half-width, the margin, and how much more data the observed spread
says would resolve it (``resolve_factor``: times the current trials or pairs, assuming the
point estimate holds and the CI narrows as 1/sqrt(n); ``n_to_resolve`` where ``n`` is known).

A smoke run is never evidence: :func:`is_smoke` is the one test of that, and :func:`decide`
returns :data:`SMOKE` for it, whatever the numbers.

Margins (:data:`MARGINS`, chosen in docs/methodology.md): an overhead or gain in percent
±1 percentage point; a reduction in percent ±5 points; a speedup or ratio ±10% of the
claim; a time delta in ms ±2 ms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SMOKE = "smoke: not evidence"
CONFIRMED, RULED_OUT, UNRESOLVED = "confirmed", "ruled out", "unresolved"
LEVEL, SLOWER, FASTER = "level", "slower", "faster"


@dataclass(frozen=True)
class Margin:
    """Half-width of the equivalence band: ``value`` in the metric's unit, or, when
    ``relative``, as a fraction of the claim."""

    value: float
    relative: bool
    why: str

    def around(self, claim: float) -> float:
        return abs(claim) * self.value if self.relative else self.value

    def describe(self) -> str:
        return f"±{self.value:.0%}" if self.relative else f"±{self.value:g}"


MARGINS = {
    "reduction_pct": Margin(5.0, False, "the reference writes reductions as round figures "
                            "(60, 75, 87.5, 90%): 5 points is their own resolution"),
    "pct": Margin(1.0, False, "overheads and gains as % of total time: below 1 point no user "
                  "of a serving layer would act, and it is under the 1.3-2.1% order effect of "
                  "a 2-core host, so a finer claim is not measurable there"),
    "x": Margin(0.10, True, "speedups and ratios: ±10% of the claim"),
    "ms": Margin(2.0, False, "time deltas: 2 ms is about a tenth of a short answer's TTFT on "
                 "the CPU and the scale of the reference's own per-request figures"),
}


def margin_for(metric: str) -> Margin | None:
    """The margin for a dimensionless claim by its name's suffix (``_pct``, ``_x``); None
    for absolute figures (s, ms, tok/s of the reference's machine), which are context.
    Time deltas measured here use ``MARGINS["ms"]`` (:func:`overhead_verdicts`)."""
    if metric.endswith("reduction_pct"):
        return MARGINS["reduction_pct"]
    if metric.endswith("_pct"):
        return MARGINS["pct"]
    if metric.endswith("_x"):
        return MARGINS["x"]
    return None


def is_smoke(doc_or_config: dict | None) -> bool:
    """Whether a results document (or its ``config``) comes from a smoke run: the one place
    that decides whether its numbers may carry a verdict."""
    if not isinstance(doc_or_config, dict):
        return False
    cfg = doc_or_config.get("config", doc_or_config)
    return bool(cfg.get("smoke")) if isinstance(cfg, dict) else False


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def decide(claim: float, ci_low: float, ci_high: float, margin: float, *,
           measured: float = math.nan, n: int | None = None, smoke: bool = False,
           words: tuple[str, str, str] = (CONFIRMED, RULED_OUT, UNRESOLVED)) -> dict:
    """The verdict on ``claim`` given a measurement's 95% CI and an equivalence ``margin``
    (absolute, in the metric's unit). ``words``: (inside, outside, neither); the overhead
    table passes ("level", "slower"/"faster" chosen by side, "unresolved").

    Returns verdict, ci_half_width, margin, resolve_factor and n_to_resolve (NaN where they
    do not apply: resolved already, no CI, or a point estimate on the band's edge)."""
    out = {"verdict": words[2], "ci_half_width": math.nan, "margin": float(margin),
           "resolve_factor": math.nan, "n_to_resolve": math.nan}
    if smoke:
        return {**out, "verdict": SMOKE}
    if _nan(ci_low) or _nan(ci_high):
        return out
    lo, hi = min(ci_low, ci_high), max(ci_low, ci_high)
    out["ci_half_width"] = (hi - lo) / 2
    if claim - margin <= lo and hi <= claim + margin:
        return {**out, "verdict": words[0]}
    if hi < claim - margin or lo > claim + margin:
        return {**out, "verdict": words[1]}
    point = (lo + hi) / 2 if _nan(measured) else measured
    room = abs(abs(point - claim) - margin)  # the half-width that would settle it
    if room > 0 and out["ci_half_width"] > 0:
        factor = (out["ci_half_width"] / room) ** 2
        out["resolve_factor"] = factor
        if n:
            out["n_to_resolve"] = math.ceil(n * factor)
    return out


def judge_difference(diff: float, ci_low: float, ci_high: float, margin: float, *,
                     n: int | None = None, smoke: bool = False) -> dict:
    """A difference against zero (served minus direct): ``level`` when its CI lies within
    ±margin, ``slower`` / ``faster`` when wholly above / below the band, else ``unresolved``."""
    side = SLOWER if (diff if not _nan(diff) else (ci_low + ci_high) / 2) > 0 else FASTER
    return decide(0.0, ci_low, ci_high, margin, measured=diff, n=n, smoke=smoke,
                  words=(LEVEL, side, UNRESOLVED))


def overhead_verdicts(row: dict, *, smoke: bool) -> dict:
    """Verdict columns for one row of the overhead-vs-direct table (``metrics.overhead``):
    total time in % (margin ±1 point) and mean TTFT in ms (±2 ms) against zero."""
    total = judge_difference(row.get("total_overhead_pct", math.nan),
                             row.get("total_overhead_pct_ci_low", math.nan),
                             row.get("total_overhead_pct_ci_high", math.nan),
                             MARGINS["pct"].value, n=row.get("pairs"), smoke=smoke)
    ttft = judge_difference(row.get("ttft_ms_diff", math.nan), row.get("ttft_ms_ci_low", math.nan),
                            row.get("ttft_ms_ci_high", math.nan), MARGINS["ms"].value,
                            n=row.get("pairs"), smoke=smoke)
    return {"total_verdict": total["verdict"], "total_margin_pct": total["margin"],
            "total_ci_half_width_pct": total["ci_half_width"],
            "total_pairs_to_resolve": total["n_to_resolve"],
            "ttft_verdict": ttft["verdict"], "ttft_margin_ms": ttft["margin"]}


OVERHEAD_CAPTION = (f"overhead vs direct (95% CI in brackets; verdict: level when the CI lies "
                    f"within ±{MARGINS['pct'].value:g} point of total time / ±{MARGINS['ms'].value:g} ms "
                    "of TTFT, slower or faster when wholly outside, else unresolved)")


def rule_text() -> str:
    """The verdict rule and its margins in one sentence, printed wherever verdicts are."""
    m = MARGINS
    return (f"verdicts: confirmed when the whole 95% CI lies within the claim ± its margin, "
            f"ruled out when wholly outside, else unresolved (CI half-width and the trials or "
            f"pairs that would resolve it shown); margins: % of time {m['pct'].describe()} point, "
            f"reductions {m['reduction_pct'].describe()} points, speedups {m['x'].describe()}, "
            f"TTFT deltas {m['ms'].describe()} ms (level = within the margin of zero); "
            f"absolute figures from another machine are context; a smoke run is not evidence")
