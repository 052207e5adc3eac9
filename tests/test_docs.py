"""The README's quoted ratios, checked against the results files they cite.

A quoted ratio is followed at once by a marker naming where it comes from and which way it
reads, e.g. ``1.21x [1.17, 1.25]<!-- ratio results/cpu/r18d/x.json concurrency=16 tok_s
phase0/mlx_lm.server -->``: the file's ``summary.ratios`` row for that level holds either
phase0 over mlx_lm.server or its inverse, and the quoted point and CI must equal it as
rounded. A number that reads the other way than it says fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from krmlx.bench.results import read_results

ROOT = Path(__file__).resolve().parents[1]
QUOTE = re.compile(r"(\d+\.\d+)x?\s*\[(\d+\.\d+),\s*(\d+\.\d+)\]\s*<!--\s*ratio\s+(\S+)\s+"
                   r"(\w+)=(\S+)\s+(\w+)\s+([^/\s]+)/(\S+)\s*-->")
METRICS = {"tok_s": "tok_s_engine_over_base", "ttft_p50": "ttft_p50_engine_over_base"}


def quotes(text: str) -> list[tuple]:
    return QUOTE.findall(re.sub(r"\s+", " ", text))


def cited_ratio(path: str, key: str, value: str, metric: str, num: str, den: str) -> tuple:
    """(point, ci_low, ci_high) of num over den in the cited file, inverting a row stored
    the other way round."""
    rows = [r for r in read_results(ROOT / path)["summary"]["ratios"] if str(r.get(key)) == value]
    col = METRICS[metric]
    for r in rows:
        if (r["engine"], r["base"]) == (num, den):
            return r[col], r[f"{col}_ci_low"], r[f"{col}_ci_high"]
        if (r["engine"], r["base"]) == (den, num):
            return 1 / r[col], 1 / r[f"{col}_ci_high"], 1 / r[f"{col}_ci_low"]
    raise AssertionError(f"{path}: no ratios row for {num}/{den} at {key}={value}")


def same_as_quoted(quoted: str, exact: float) -> bool:
    decimals = len(quoted.split(".")[1])
    return abs(float(quoted) - exact) <= 0.5 * 10 ** -decimals + 1e-9


def test_readme_ratios_match_their_files():
    found = quotes((ROOT / "README.md").read_text())
    assert found, "README quotes no ratio with its source"
    for point, lo, hi, path, key, value, metric, num, den in found:
        exact = cited_ratio(path, key, value, metric, num, den)
        for q, x in zip((point, lo, hi), exact, strict=True):
            assert same_as_quoted(q, x), f"{num}/{den} {metric} @{value} in {path}: quoted {q}, file {x:.4f}"


def test_a_ratio_quoted_the_wrong_way_round_fails():
    text = ("0.83x [0.80, 0.86]<!-- ratio results/cpu/r18d/concurrency-20261207-051944.json.gz "
            "concurrency=16 tok_s phase0/mlx_lm.server -->")
    (q,) = quotes(text)
    exact = cited_ratio(*q[3:])
    assert not same_as_quoted(q[0], exact[0])  # the file says 1.21x that way round
    assert quotes(text.replace("phase0/mlx_lm.server", "mlx_lm.server/phase0"))


@pytest.mark.parametrize(("quoted", "exact", "ok"), [("1.21", 1.2078, True), ("1.21", 1.216, False),
                                                     ("0.5", 0.54, True), ("0.5", 0.56, False)])
def test_rounding_rule(quoted, exact, ok):
    assert same_as_quoted(quoted, exact) is ok
