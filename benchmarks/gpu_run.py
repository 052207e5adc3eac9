"""The GPU numbers in one command: a list of ``python -m krmlx bench`` runs for one model,
each writing its results file into ``--out`` (the same bench, targets and warm-up as on the
CPU; only the model and the sizes differ).

    python3 benchmarks/gpu_run.py --model llama-3.2-3b --out DIR [--steps baseline,sweep,...]
        [--trials 3] [--levels 1,4,16,64] [--distributed 2]

Steps (``--steps``, in this order):

- ``baseline``: the 50 questions, direct vs phase0 vs all;
- ``sweep``: concurrency waves at ``--levels`` through the engine with each scheduler
  (auto, the default; serial; batched), raw BatchGenerator, mlx_lm.server and krmlx serve;
- ``lengths``: the prompt-length sweep, direct vs phase0 vs all vs krmlx serve;
- ``few``: one and two streams in a closed loop (16 requests per level and trial, fresh
  64-token prompts), auto vs serial vs batched: the small-load end of the sweep with more
  samples than its waves give;
- ``distributed``: 1 GPU vs ``--distributed`` GPUs (tensor parallel, NCCL).

Used on an NVIDIA host through MLX's CUDA backend (see the GPU section of README.md).
"""

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
STEPS = ("baseline", "sweep", "few", "lengths", "distributed")


def bench(model: str, out: str, workload: str, *args: str) -> int:
    cmd = [sys.executable, "-m", "krmlx", "bench", workload, "--model", model, "--out", out,
           "--quiet", *args]
    print(f"[gpu_run] {' '.join(cmd[2:])}", flush=True)
    t0 = time.perf_counter()
    code = subprocess.run(cmd, cwd=ROOT).returncode
    print(f"[gpu_run] {workload}: exit {code} after {time.perf_counter() - t0:.0f} s", flush=True)
    return code


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="llama-3.2-3b")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", default="baseline,sweep,lengths")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--levels", default="1,4,16,64")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--distributed", type=int, default=2)
    a = p.parse_args()
    steps = [s for s in a.steps.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        p.error(f"unknown steps {sorted(unknown)}; steps are {STEPS}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    subprocess.run([sys.executable, "-m", "krmlx", "models", "make", a.model], cwd=ROOT, check=True)
    trials = ["--trials", str(a.trials)]
    plan = {
        "baseline": ("baseline", *trials, "--target", "direct", "--target", "engine",
                     "--target", "engine:all"),
        "sweep": ("concurrency", *trials, "--levels", a.levels, "--max-tokens", str(a.max_tokens),
                  "--target", "auto=engine", "--target", "serial=engine?scheduler=serial",
                  "--target", "batched=engine?scheduler=batched", "--target", "raw",
                  "--target", "mlx_lm.server", "--target", "krmlx.serve"),
        "few": ("concurrency", *trials, "--levels", "1,2", "--max-tokens", str(a.max_tokens),
                "--requests", "16", "--prompts", "synthetic", "--param", "mode=closed",
                "--target", "auto=engine", "--target", "serial=engine?scheduler=serial",
                "--target", "batched=engine?scheduler=batched"),
        "lengths": ("lengths", *trials, "--max-tokens", "32", "--target", "direct", "--target",
                    "engine", "--target", "engine:all", "--target", "krmlx.serve?scheduler=serial"),
        "distributed": ("distributed", "--ranks", str(a.distributed), "--backend", "nccl"),
    }
    codes = [bench(a.model, a.out, *plan[s]) for s in steps]
    return max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
