"""Tensor-parallel decode speed of mlx-lm alone (no krmlx worker, no step flags): the floor
that ``bench distributed`` is set against. Run one process, or N ranks on this host:

    python3 benchmarks/tp_raw.py MODEL [--tokens 200]
    python3 -m krmlx.worker.launch --ranks 2 --backend nccl -- python3 benchmarks/tp_raw.py MODEL

Rank 0 prints one JSON line: ranks, prefill and decode times, decode tok/s.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> None:
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    from krmlx.models import load, load_sharded, resolve_model

    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--backend", default="nccl" if mx.cuda.is_available() else "ring")
    a = p.parse_args()
    path = resolve_model(a.model)
    if "MLX_RANK" in os.environ:
        group = mx.distributed.init(strict=True, backend=a.backend)
        model, _ = load_sharded(path, group, a.backend)
    else:
        group = None
        model, _ = load(path)
    prompt = mx.array(list(range(10, 74)))
    rows = []
    for _ in range(3):  # the first pass compiles kernels: keep the last
        t0 = time.perf_counter()
        steps = generate_step(prompt, model, max_tokens=a.tokens)
        next(steps)
        t1 = time.perf_counter()
        n = 1 + sum(1 for _ in steps)
        t2 = time.perf_counter()
        rows.append({"ranks": group.size() if group else 1, "backend": a.backend if group else None,
                     "prefill_ms": (t1 - t0) * 1e3, "decode_tokens": n - 1,
                     "decode_tps": (n - 1) / (t2 - t1), "tpot_ms": (t2 - t1) / (n - 1) * 1e3})
    if group is None or group.rank() == 0:
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
