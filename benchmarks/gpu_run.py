"""The GPU numbers in one command: baseline (direct vs phase0 vs all) and the concurrency
sweep for one model, each written as a results file.

    python3 benchmarks/gpu_run.py --model llama-3.2-3b --out DIR [--levels 1,2,...,256]

Used on an NVIDIA host through MLX's CUDA backend (see the GPU section of README.md).
"""

import argparse
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from krmlx.bench.baseline import make_configs, run_baseline
    from krmlx.bench.concurrency import level_table, run_concurrency
    from krmlx.bench.report_text import format_summary
    from krmlx.bench.results import write_results
    from krmlx.models import make_model, model_bytes

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama-3.2-3b")
    p.add_argument("--out", required=True)
    p.add_argument("--levels", default="1,2,4,8,16,32,64,128,256")
    p.add_argument("--max-tokens", type=int, default=50)
    p.add_argument("--sweep-tokens", type=int, default=64)
    p.add_argument("--trials", type=int, default=1)
    p.add_argument("--warmup", type=int, default=50,
                   help="warmup requests per engine (GPU kernels compile per prompt shape)")
    p.add_argument("--skip", default="", help="comma list of: baseline, sweep")
    a = p.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    tag = a.model.replace(".", "")
    t0 = time.perf_counter()
    # Build in a child process: the direct baseline then runs in a process that has done
    # nothing but load the model, like the worker.
    import subprocess

    subprocess.run([sys.executable, "-m", "krmlx", "models", "make", a.model], check=True)
    path = make_model(a.model)
    print(f"[gpu_run] {a.model}: {model_bytes(path) / 1e9:.2f} GB, ready in {time.perf_counter() - t0:.1f} s",
          flush=True)
    if "baseline" not in skip:
        doc = asyncio.run(run_baseline(a.model, make_configs("all"), trials=a.trials,
                                       max_tokens=a.max_tokens, warmup=a.warmup))
        out = write_results(os.path.join(a.out, f"baseline-{tag}.json"), **doc)
        print(format_summary(doc), f"\nresults: {out}", flush=True)
    if "sweep" not in skip:
        out = os.path.join(a.out, f"concurrency-{tag}.json")
        doc = asyncio.run(run_concurrency(a.model, levels=a.levels.split(","), max_tokens=a.sweep_tokens,
                                          checkpoint=lambda d: write_results(out, **d, complete=False)))
        write_results(out, **doc)
        import pandas as pd

        print(pd.DataFrame(level_table(doc["summary"]["paths"])).to_string(index=False))
        print(json.dumps(doc["summary"]["targets"], indent=1), f"\nresults: {out}", flush=True)


if __name__ == "__main__":
    main()
