"""krmlx.bench.verdicts: the equivalence rule behind every word of judgement, on synthetic
intervals for each outcome (no run needed)."""

from __future__ import annotations

import math

import pytest

from krmlx.bench import verdicts as V


@pytest.mark.parametrize(("ci", "verdict"), [
    ((0.6, 1.4), "confirmed"),      # wholly within 1.0 ± 0.5
    ((0.5, 1.5), "confirmed"),      # the band's edges count as within
    ((1.6, 2.0), "ruled out"),      # wholly above
    ((-0.9, 0.4), "ruled out"),     # wholly below
    ((-4.0, 6.0), "unresolved"),    # holds the claim, but ten times wider than the band
    ((1.2, 1.9), "unresolved"),     # straddles the upper edge
])
def test_decide_each_outcome(ci, verdict):
    assert V.decide(1.0, *ci, 0.5)["verdict"] == verdict


def test_a_wide_ci_that_holds_the_claim_is_unresolved_with_what_would_resolve_it():
    # the smoke demo's case: estimate 0.7 %, measured -1.51 [-4.91, +2.11], margin 1 point
    r = V.decide(0.7, -4.91, 2.11, 1.0, measured=-1.51, n=50)
    assert r["verdict"] == "unresolved"
    assert r["ci_half_width"] == pytest.approx(3.51)
    # ruling 0.7 out needs a half-width of |−1.51 − 0.7| − 1 = 1.21: (3.51 / 1.21)^2 times the pairs
    assert r["resolve_factor"] == pytest.approx((3.51 / 1.21) ** 2)
    assert r["n_to_resolve"] == math.ceil(50 * (3.51 / 1.21) ** 2)


def test_confirming_needs_the_ci_inside_the_band():
    r = V.decide(0.0, -0.9, 1.3, 1.0, measured=0.2, n=100)
    assert r["verdict"] == "unresolved"
    # to confirm: half-width <= 1 - 0.2 = 0.8, now 1.1
    assert r["n_to_resolve"] == math.ceil(100 * (1.1 / 0.8) ** 2)


def test_resolved_and_ci_less_rows_say_nothing_about_more_data():
    assert math.isnan(V.decide(1.0, 0.9, 1.1, 0.5)["n_to_resolve"])
    r = V.decide(1.0, math.nan, math.nan, 0.5, measured=1.0)
    assert r["verdict"] == "unresolved" and math.isnan(r["ci_half_width"])


def test_smoke_is_never_evidence_whatever_the_interval():
    for ci in ((0.9, 1.1), (5, 6), (-10, 10)):
        assert V.decide(1.0, *ci, 0.5, smoke=True)["verdict"] == V.SMOKE
    assert V.is_smoke({"config": {"smoke": True}}) and V.is_smoke({"smoke": True})
    assert not V.is_smoke({"config": {"smoke": False}}) and not V.is_smoke(None)


@pytest.mark.parametrize(("diff", "ci", "verdict"), [
    (0.2, (-0.5, 0.8), "level"), (3.0, (2.1, 3.9), "slower"), (-3.0, (-3.9, -2.1), "faster"),
    (0.9, (-0.2, 2.0), "unresolved"),
])
def test_differences_against_zero(diff, ci, verdict):
    assert V.judge_difference(diff, *ci, 1.0)["verdict"] == verdict


def test_overhead_rows_get_their_margins():
    row = {"total_overhead_pct": 0.3, "total_overhead_pct_ci_low": -0.4,
           "total_overhead_pct_ci_high": 0.9, "ttft_ms_diff": 4.0, "ttft_ms_ci_low": 2.5,
           "ttft_ms_ci_high": 5.5, "pairs": 150}
    v = V.overhead_verdicts(row, smoke=False)
    assert v["total_verdict"] == "level" and v["ttft_verdict"] == "slower"
    assert v["total_margin_pct"] == 1.0 and v["ttft_margin_ms"] == 2.0
    assert V.overhead_verdicts(row, smoke=True)["total_verdict"] == V.SMOKE


def test_margins_by_metric_and_the_printed_rule():
    assert V.margin_for("overhead_pct").around(0.7) == 1.0
    assert V.margin_for("stream_overhead_reduction_pct").around(60) == 5.0
    assert V.margin_for("speedup_x").around(7.5) == pytest.approx(0.75)
    assert V.margin_for("total_s") is None
    text = V.rule_text()
    assert "±1 point" in text and "±5 points" in text and "±10%" in text and "±2 ms" in text
