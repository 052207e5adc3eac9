"""BLAS: detection, the fast path is taken when available, and results agree across BLASes."""

import json
import os
import subprocess
import sys

import pytest

from krmlx.blas import blas_env, classify, find_openblas

PROBE = r"""
import json, sys
import mlx.core as mx
from krmlx.blas import detect_blas
from krmlx import DirectEngine, Request, load_questions
import asyncio
mx.random.seed(0)
a = mx.random.normal((256, 512)); b = mx.random.normal((512, 128))
c = a @ b
async def gen():
    async with DirectEngine(sys.argv[1]) as e:
        qs = load_questions()[0][:5]
        return [list((await e.complete(Request(q.question, max_tokens=20))).token_ids) for q in qs]
print(json.dumps({"blas": detect_blas().kind, "matmul": c.tolist(), "ids": asyncio.run(gen())}))
"""


def probe(env, tiny_path):
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", PROBE, str(tiny_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_classify():
    assert classify("/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblasp-r0.3.21.so") == "openblas"
    assert classify("/x/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0") == "reference"
    assert classify(None) == "unknown"


def test_reference_opt_out_and_bad_choice():
    env = {**os.environ, "KRMLX_BLAS": "reference", "LD_PRELOAD": ""}
    assert blas_env(env).get("LD_PRELOAD", "") == ""
    with pytest.raises(ValueError, match="KRMLX_BLAS"):
        blas_env({"KRMLX_BLAS": "fastest"})


@pytest.mark.skipif(sys.platform != "linux", reason="the bundled reference BLAS is a Linux wheel matter")
def test_fast_path_taken_and_results_agree(tiny_path):
    base = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    slow = probe({**base, "KRMLX_BLAS": "reference"}, tiny_path)
    assert slow["blas"] == "reference"
    if find_openblas() is None:
        pytest.skip("no OpenBLAS on this machine (apt-get install libopenblas0-pthread)")
    env = blas_env(base)
    assert "openblas" in env["LD_PRELOAD"]
    fast = probe(env, tiny_path)
    assert fast["blas"] == "openblas"  # the fast path is really taken
    assert fast["ids"] == slow["ids"]  # greedy generation: identical token ids
    flat = lambda m: [x for row in m for x in row]  # noqa: E731
    diffs = [abs(x - y) for x, y in zip(flat(fast["matmul"]), flat(slow["matmul"]), strict=True)]
    print("max |fast - reference| matmul difference:", max(diffs))
    assert max(diffs) < 1e-3  # same matmul up to float32 summation order


@pytest.mark.skipif(sys.platform != "linux", reason="the bundled reference BLAS is a Linux wheel matter")
def test_detection_is_stable_in_a_process_not_preloaded(tiny_path):
    """Without a preload mlx runs on its bundled BLAS, and detect_blas says so before and
    after a model load and after looking for OpenBLAS (which maps it into the process,
    unused): two runs in one process (pytest, a notebook) carry the same env."""
    code = (
        "import json, sys\n"
        "from krmlx.blas import detect_blas, find_openblas\n"
        "before = detect_blas().to_dict()\n"
        "found = find_openblas()\n"
        "from mlx_lm import load\n"
        "load(sys.argv[1])\n"
        "print(json.dumps([before, detect_blas().to_dict(), found]))\n")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(tiny_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after, found = json.loads(out.stdout.strip().splitlines()[-1])
    assert before["kind"] == "reference" and "mlx" in before["library"]
    assert after == before
    if found is None:
        pytest.skip("no OpenBLAS on this machine: the unused mapping did not happen")
