"""Two costs of a batched decode step that sit inside MLX, each in a few lines, on
Llama-3.2-3B's shapes (bf16, 28 layers). No model, no mlx-lm: MLX alone.

1. Attention with a mask: one decode-shaped ``scaled_dot_product_attention`` per layer,
   without a mask and with a boolean one (what a batch with left-padded rows must pass).
   With an array mask MLX's CUDA backend leaves its fused decode kernel.
2. The MLP's matmuls per batch size M (rows of the decode step): ``x @ W`` for the gate, up
   and down projections of every layer, M = 1, 2, 3, 4, 8, 16, 32, 64. The weights are
   read once per step at any M up to a few dozen, so the time should stay flat.

    python benchmarks/mlx_repro.py [--out results/gpu/mlx-repro.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import mlx.core as mx

LAYERS, HEADS, KV_HEADS, DIM, HIDDEN, FFN = 28, 24, 8, 128, 3072, 8192


def ms(fn, n: int = 30) -> float:
    """Median wall time of ``mx.eval(fn())`` over ``n`` runs, after 3 untimed ones."""
    times = []
    for i in range(n + 3):
        t0 = time.perf_counter()
        mx.eval(fn())
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def attention(b: int, kv_len: int = 96, *, heads: int = HEADS, kv_heads: int = KV_HEADS,
              dim: int = DIM, layers: int | None = None, dtype=mx.bfloat16) -> dict:
    """``layers`` (default: ``LAYERS``) decode-shaped attention calls chained in one graph,
    without and with a boolean mask of the batch's shape (``benchmarks/batch_step.py`` calls
    it with its model's shapes)."""
    q = mx.random.normal((b, heads, 1, dim)).astype(dtype)
    k, v = (mx.random.normal((b, kv_heads, kv_len, dim)).astype(dtype) for _ in "kv")
    mask = mx.ones((b, 1, 1, kv_len), dtype=mx.bool_)
    mx.eval(q, k, v, mask)

    def chain(m):
        x = q
        for _ in range(LAYERS if layers is None else layers):
            x = mx.fast.scaled_dot_product_attention(x, k, v, scale=dim ** -0.5, mask=m)
        return x

    return {"batch": b, "sdpa_nomask_ms": ms(lambda: chain(None)), "sdpa_mask_ms": ms(lambda: chain(mask))}


def mlp_matmuls(ms_list) -> list[dict]:
    w = [(mx.random.normal((HIDDEN, FFN)).astype(mx.bfloat16) * 0.01,
          mx.random.normal((HIDDEN, FFN)).astype(mx.bfloat16) * 0.01,
          mx.random.normal((FFN, HIDDEN)).astype(mx.bfloat16) * 0.01) for _ in range(LAYERS)]
    mx.eval(w)
    rows = []
    for m in ms_list:
        x0 = mx.random.normal((m, HIDDEN)).astype(mx.bfloat16)

        def chain(x=x0):
            for gate, up, down in w:
                x = ((x @ gate) * (x @ up)) @ down
            return x

        rows.append({"m": m, "mlp_matmuls_ms": ms(chain)})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None)
    a = p.parse_args()
    doc = {"benchmark": "mlx_repro", "mlx": mx.__version__, "device": str(mx.default_device()),
           "attention": [attention(b) for b in (1, 2, 16, 64)],
           "matmul": mlp_matmuls((1, 2, 3, 4, 8, 16, 32, 64))}
    for row in doc["attention"] + doc["matmul"]:
        print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
