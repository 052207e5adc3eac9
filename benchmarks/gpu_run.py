"""The GPU numbers in one command: baseline (direct vs phase0 vs all) and the concurrency
sweep for one model, each written as a results file.

    python3 benchmarks/gpu_run.py --model llama-3.2-3b --out DIR [--levels 1,2,...,256]
        [--skip baseline,sweep] [--distributed 2 --backend nccl] [--server-levels 1,16]

``--distributed N``: the ``distributed`` workload (1 GPU vs N GPUs, tensor parallel);
``--server-levels``: the engine vs mlx_lm.server at those concurrency levels only.

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
    p.add_argument("--distributed", type=int, default=0, help="ranks (GPUs) for the distributed run")
    p.add_argument("--backend", default="nccl")
    p.add_argument("--questions", type=int, default=20, help="distributed: questions per engine")
    p.add_argument("--mlx-launch", action="store_true", help="distributed: also via mlx.launch")
    p.add_argument("--server-levels", default="", help="engine vs mlx_lm.server at these levels")
    p.add_argument("--tag", default="", help="suffix of the results files (e.g. the device)")
    a = p.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    tag = a.model.replace(".", "") + (f"-{a.tag}" if a.tag else "")
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
    if a.distributed:
        from krmlx.bench.workloads import make_workload, run_workload

        wl = make_workload("distributed", questions=a.questions, max_tokens=a.max_tokens,
                           warmup=a.warmup, ranks=a.distributed, backend=a.backend,
                           mlx_launch=a.mlx_launch, probe_iters=100)
        doc = asyncio.run(run_workload(wl, a.model))
        out = write_results(os.path.join(a.out, f"distributed-{tag}.json"), **doc)
        print(format_summary(doc), json.dumps(doc["summary"]["collectives"], indent=1),
              f"\nresults: {out}", flush=True)
    if a.server_levels:
        out = os.path.join(a.out, f"server-{tag}.json")
        doc = asyncio.run(run_concurrency(a.model, levels=a.server_levels.split(","),
                                          max_tokens=a.sweep_tokens, raw=False))
        write_results(out, **doc)
        import pandas as pd

        print(pd.DataFrame(level_table(doc["summary"]["paths"])).to_string(index=False))
        print(json.dumps({k: v for k, v in doc["config"].items() if "server" in k}, indent=1)[:3000],
              f"\nresults: {out}", flush=True)


if __name__ == "__main__":
    main()
