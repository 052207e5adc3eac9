"""Docs that cannot drift: README.md and docs/*.md are checked against the code and the data.

- Every ```python block runs (in a fresh interpreter, on the tiny model, a few seconds
  each); a block that cannot run here (GPUs, several hosts) is fenced ```python no-run:
  REASON and there are few of them.
- Every command shown (``python -m krmlx ...``, ``krmlx ...``, ``./dev ...`` in shell blocks
  and in inline code) parses with krmlx's own argparse (parse only, nothing runs).
- Every number quoted from a results file carries a marker that names the file, and the
  number must equal the file's value as rounded:

  ``-0.7 [-4.2, +2.9]<!-- value FILE summary.overhead[target=phase0].total_overhead_pct{,_ci_low,_ci_high} -->``
      the numbers right before the marker (back to the previous marker or table cell edge)
      against the paths, in order; ``[k=v]`` picks the list element whose ``k`` is ``v``;
      one ``{a,b,...}`` group expands the path.
  ``unresolved<!-- verdict FILE POINT_PATH{,LO,HI} pct -->``
      the verdict word against :func:`krmlx.bench.verdicts.judge_difference` on the file's
      numbers with the margin named (``pct``: ±1 point, ``ms``: ±2 ms; ``x``: a ratio
      against 1 at ±10%, said ``higher`` / ``lower`` / ``level``; a path starting ``1/``
      reads a ratio stored the other way round).
  ``1.21x [1.17, 1.25]<!-- ratio FILE concurrency=16 tok_s phase0/mlx_lm.server -->``
      the file's ``summary.ratios`` row for that level, either way round; a ratio quoted
      the wrong way round fails.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from krmlx.bench.results import read_results

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NUMBER = re.compile(r"(?<![\w.])[+\-−]?\d+(?:\.\d+)?")
MARKER = re.compile(r"<!--\s*(value|verdict|ratio)\s+(.*?)\s*-->", re.S)
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.M | re.S)
MAX_NO_RUN = 6


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- markers ---------------------------------------------------------------------------

QUOTE = re.compile(r"(\d+\.\d+)x?\s*\[(\d+\.\d+),\s*(\d+\.\d+)\]\s*<!--\s*ratio\s+(\S+)\s+"
                   r"(\w+)=(\S+)\s+(\w+)\s+([^/\s]+)/(\S+)\s*-->")
METRICS = {"tok_s": "tok_s_target_over_base", "ttft_p50": "ttft_p50_target_over_base"}


def quotes(text: str) -> list[tuple]:
    return QUOTE.findall(re.sub(r"\s+", " ", text))


@cache
def results(path: str) -> dict:
    """A cited file: a krmlx results file (checked by read_results), or a benchmark script's
    own JSON (``benchmarks/*.py --out``, which has no results schema), gzip or not."""
    raw = (ROOT / path).read_bytes()
    doc = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    return read_results(ROOT / path) if "schema" in doc else doc


def cited_ratio(path: str, key: str, value: str, metric: str, num: str, den: str) -> tuple:
    """(point, ci_low, ci_high) of num over den in the cited file, inverting a row stored
    the other way round."""
    rows = [r for r in results(path)["summary"]["ratios"] if str(r.get(key)) == value]
    col = METRICS[metric]
    for r in rows:
        if (r["target"], r["base"]) == (num, den):
            return r[col], r[f"{col}_ci_low"], r[f"{col}_ci_high"]
        if (r["target"], r["base"]) == (den, num):
            return 1 / r[col], 1 / r[f"{col}_ci_high"], 1 / r[f"{col}_ci_low"]
    raise AssertionError(f"{path}: no ratios row for {num}/{den} at {key}={value}")


def same_as_quoted(quoted: str, exact: float) -> bool:
    quoted = quoted.replace("−", "-")
    decimals = len(quoted.split(".")[1]) if "." in quoted else 0
    return abs(float(quoted) - exact) <= 0.5 * 10 ** -decimals + 1e-9


def expand(path: str) -> list[str]:
    m = re.search(r"\{([^}]*)\}", path)
    if not m:
        return [path]
    return [path[:m.start()] + part + path[m.end():] for part in m.group(1).split(",")]


def lookup(doc, path: str):
    """The value at a dotted path; ``name[k=v,...]`` picks the one list element that matches,
    ``name[3]`` an index, ``'a.b'`` a key with dots. An AssertionError names the step that
    found nothing."""
    node = doc
    for step in re.findall(r"'[^']*'|[^.\[\]']+(?:\[[^\]]*\])*", path):
        if step.startswith("'"):  # a key with dots in it: 'mlx_lm.server'
            node = node[step[1:-1]]
            continue
        name, *selectors = re.split(r"\[|\]\[", step.rstrip("]"))
        node = node[name] if name else node
        for sel in selectors:
            if sel.isdigit():
                node = node[int(sel)]
                continue
            want = dict(kv.split("=", 1) for kv in sel.split(","))
            hits = [x for x in node if all(str(x.get(k)) == v for k, v in want.items())]
            assert len(hits) == 1, f"{path}: [{sel}] matches {len(hits)} elements"
            node = hits[0]
    return node


def markers(text: str):
    """(kind, args, quoted text before the marker) for every value/verdict marker."""
    out, last = [], 0
    for m in MARKER.finditer(text):
        before = text[last:m.start()]
        before = re.split(r"\||-->|\n\n", before)[-1]
        last = m.end()
        if m.group(1) != "ratio":
            out.append((m.group(1), m.group(2).split(), before))
    return out


def check_value(args: list[str], before: str) -> None:
    path, *paths = args
    doc = results(path)
    paths = [p for spec in paths for p in expand(spec)]
    quoted = NUMBER.findall(before)[-len(paths):]
    assert len(quoted) == len(paths), f"{path}: {len(paths)} paths but numbers {quoted} before the marker"
    for q, p in zip(quoted, paths, strict=True):
        exact = lookup(doc, p)
        assert same_as_quoted(q, exact), f"{path} {p}: quoted {q}, file {exact!r}"


def check_verdict(args: list[str], before: str) -> None:
    from krmlx.bench.verdicts import MARGINS, judge_difference

    path, spec, margin = args
    invert = spec.startswith("1/")
    point, lo, hi = (lookup(results(path), p) for p in expand(spec.removeprefix("1/")))
    if invert:
        point, lo, hi = 1 / point, 1 / hi, 1 / lo
    if margin == "x":  # a ratio against 1, ±10% (MARGINS["x"]): higher / lower / level
        v = judge_difference(point - 1, lo - 1, hi - 1, MARGINS["x"].around(1.0))["verdict"]
        want = {"slower": "higher", "faster": "lower"}.get(v, v)
    else:
        want = judge_difference(point, lo, hi, MARGINS[margin].value)["verdict"]
    words = re.findall(r"[a-z]+", before)
    assert words and words[-1] == want.split()[-1], f"{path} {spec}: quoted {words[-1:]}, rule says {want}"


def all_markers():
    for doc in DOCS:
        for i, (kind, args, before) in enumerate(markers(doc.read_text())):
            yield pytest.param(kind, args, before, id=f"{rel(doc)}-{kind}{i}")


@pytest.mark.parametrize(("kind", "args", "before"), list(all_markers()))
def test_quoted_numbers_match_their_files(kind, args, before):
    (check_value if kind == "value" else check_verdict)(args, before)


def test_quoted_ratios_match_their_files():
    found = [q for doc in DOCS for q in quotes(doc.read_text())]
    assert found, "the docs quote no ratio with its source"
    for point, lo, hi, path, key, value, metric, num, den in found:
        exact = cited_ratio(path, key, value, metric, num, den)
        for q, x in zip((point, lo, hi), exact, strict=True):
            assert same_as_quoted(q, x), f"{num}/{den} {metric} @{value} in {path}: quoted {q}, file {x:.4f}"


def test_every_headline_number_is_checked():
    """Each row of the README's headline table quotes its number and verdict with markers."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Headline results", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in table.splitlines() if r.startswith("|") and not set(r) <= set("|- ")][1:]
    assert len(rows) >= 3
    for row in rows:
        cells = row.strip("|").split("|")
        number, verdict = cells[3], cells[4]
        assert "<!-- value" in number or "<!-- ratio" in number, f"unchecked number: {row}"
        assert "<!-- verdict" in verdict or "<!-- ratio" in number, f"unchecked verdict: {row}"


def test_a_wrong_number_fails():
    path = "results/gpu/h200-r18c/baseline-20261207-060317.json.gz"
    spec = "summary.overhead[target=phase0].total_overhead_pct{,_ci_low,_ci_high}"
    check_value([path, spec], "| -0.7 [-4.2, +2.9]")
    with pytest.raises(AssertionError):
        check_value([path, spec], "| -0.7 [-4.2, +3.9]")
    check_verdict([path, spec, "pct"], "unresolved")
    with pytest.raises(AssertionError):
        check_verdict([path, spec, "pct"], "level")
    ratio = ("1/summary.ratios[target=mlx_lm.server,concurrency=16]"
             ".tok_s_target_over_base{,_ci_low,_ci_high}")
    wave = "results/cpu/r18d/concurrency-20261207-051944.json.gz"
    check_verdict([wave, ratio, "x"], "higher")  # phase0 over mlx_lm.server: 1.21 [1.17, 1.25]
    with pytest.raises(AssertionError):
        check_verdict([wave, ratio.removeprefix("1/"), "x"], "higher")


def test_a_ratio_quoted_the_wrong_way_round_fails():
    text = ("0.83x [0.80, 0.86]<!-- ratio results/cpu/r18d/concurrency-20261207-051944.json.gz "
            "concurrency=16 tok_s phase0/mlx_lm.server -->")
    (q,) = quotes(text)
    exact = cited_ratio(*q[3:])
    assert not same_as_quoted(q[0], exact[0])  # the file says 1.21x that way round
    assert quotes(text.replace("phase0/mlx_lm.server", "mlx_lm.server/phase0"))


@pytest.mark.parametrize(("quoted", "exact", "ok"), [("1.21", 1.2078, True), ("1.21", 1.216, False),
                                                     ("0.5", 0.54, True), ("0.5", 0.56, False),
                                                     ("−0.7", -0.734, True), ("1566", 1566.04, True)])
def test_rounding_rule(quoted, exact, ok):
    assert same_as_quoted(quoted, exact) is ok


# --- python blocks ---------------------------------------------------------------------

def python_blocks():
    for doc in DOCS:
        for i, m in enumerate(m for m in FENCE.finditer(doc.read_text()) if m.group(1).startswith("python")):
            yield doc, i, m.group(1).strip(), m.group(2)


def test_blocks_that_do_not_run_say_why_and_are_few():
    skipped = [(rel(d), info) for d, _, info, _ in python_blocks() if info != "python"]
    for where, info in skipped:
        assert re.fullmatch(r"python no-run: \S.{8,}", info), f"{where}: ```{info} (write ```python no-run: REASON)"
    assert len(skipped) <= MAX_NO_RUN, skipped


@pytest.mark.parametrize(("doc", "code"), [pytest.param(d, c, id=f"{rel(d)}-{i}")
                                           for d, i, info, c in python_blocks() if info == "python"])
def test_python_block_runs(doc, code, tmp_path, tiny_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "KRMLX_RUNS": str(tmp_path / "runs")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, f"{rel(doc)} block failed:\n{code}\n--- stderr:\n{out.stderr[-3000:]}"


# --- commands --------------------------------------------------------------------------

SHELL = {"bash", "sh", "shell", "console"}
COMMAND = re.compile(r"^(?:[A-Z_]+=\S*\s+)*(python3? -m krmlx|krmlx|\./dev)(\s.*)?$")


def commands():
    """(doc, command line) for every krmlx / ./dev command in shell blocks and inline code."""
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            if m.group(1).strip() in SHELL:
                for line in m.group(2).replace("\\\n", " ").splitlines():
                    line = line.split(" #")[0].strip().removeprefix("$ ")
                    if COMMAND.match(line):
                        yield doc, line
        prose = FENCE.sub("", text)
        for span in re.findall(r"`([^`\n]+)`", prose):
            if COMMAND.match(span.strip()):
                yield doc, span.strip()


def parse_command(line: str) -> None:
    from krmlx.cli import build_parser

    m = COMMAND.match(line)
    argv = shlex.split(m.group(2) or "")
    if not argv:
        return  # the program named in prose
    if m.group(1) == "./dev":
        assert argv and argv[0] in ("demo", "test", "lab"), f"./dev has demo|test|lab, not {argv[:1]}"
        if argv[0] != "demo":
            return  # test: pytest's arguments; lab: JupyterLab's
        argv = ["bench", "baseline", "--out", "runs", *argv[1:]]
    parser = build_parser()
    if len(argv) == 1 and not argv[0].startswith("-"):  # a command named in prose: it must exist
        sub = next(a for a in parser._actions if a.dest == "cmd")
        assert argv[0] in sub.choices, f"no command {argv[0]!r}"
        return
    try:
        parser.parse_args(argv)
    except SystemExit as e:
        if e.code:  # --help exits 0
            raise AssertionError(f"does not parse: {line}") from e


def test_docs_show_commands():
    found = list(commands())
    assert len(found) >= 15 and any(d.name == "README.md" for d, _ in found)


@pytest.mark.parametrize("line", sorted({c for _, c in commands()}))
def test_command_parses(line):
    parse_command(line)


def test_a_command_that_does_not_parse_fails():
    with pytest.raises(AssertionError):
        parse_command("python -m krmlx bench no_such_workload")
    with pytest.raises(AssertionError):
        parse_command("./dev deploy")
    parse_command("./dev demo --trials 3 --model small")
