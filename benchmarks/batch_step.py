"""Where a batched decode step's time goes, per batch size, beside the weight-streaming floor.

For each batch size B (``--batches``), B prompts of ``--prompt-tokens`` random tokens are
prefilled, then ``--steps`` decode steps are timed several ways on the same model:

- ``plain_eval``: ``model(y, cache)`` + argmax, evaluated at once (``mx.eval``): the time to
  build the graph in Python (``build_ms``) and to evaluate it on the device (``eval_ms``,
  kernel time plus launch and one synchronisation);
- ``plain_pipelined``: the same step pipelined as ``stream_generate`` does: the next step's
  graph is built and submitted (``mx.async_eval``) before the host waits for the current
  token (``wait_ms``: what the host blocks on; near zero when the device is the bottleneck);
- ``batchgen``: mlx-lm's ``BatchGenerator.next()`` with the B sequences decoding (what
  krmlx's ``batched`` and ``auto`` schedulers run), per step;
- ``batchgen_lean``: the same with krmlx's decode step
  (:mod:`krmlx.worker.schedulers.step`, what krmlx's schedulers run; here no row is padded,
  so it runs without a mask); ``batchgen_lean_padded``: with prompts 0-6 tokens shorter
  than the longest, so rows are padded and the mask is back;
- ``batchcache``: the plain pipelined loop on the BatchKVCache a BatchGenerator built
  (left-padding aware, a mask array every step), without the generator's machinery;
  ``*_nomask``: ``batchcache`` and ``batchgen`` with that decode mask left out (right here:
  a size's prompts have one length, so no row is padded);
- ``sdpa_mask`` / ``sdpa_nomask``: one decode-shaped attention call per layer, alone, with
  and without a boolean mask: the mask's own cost;
- ``split``: one more run of those steps with the model's forward call, ``mx.eval`` and
  ``mx.async_eval`` timed: the step split into the forward graph build, the per-step
  synchronisation (waiting for the device), the asynchronous submit, and the rest of the
  host work (sampling graph, logprob slices, stop checks, responses, cache filters).

The floor: one decode step streams every weight once, so at batch sizes up to a few dozen
no step can beat ``weight_bytes / bandwidth`` (bandwidth measured here with a large
elementwise kernel). Each row gives ``floor_fraction`` = floor / step.

    python benchmarks/batch_step.py --model llama-3.2-3b --out results/gpu/batch-step.json
    python benchmarks/batch_step.py --model mini --steps 32 --repeats 3   # the CPU (on OpenBLAS)

``--repeats R`` measures every size R times in turn; ``rows`` holds the medians, ``runs``
every measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from krmlx.blas import reexec_under_blas

if __name__ == "__main__":  # on the CPU, on OpenBLAS as the worker runs: before mlx loads
    reexec_under_blas(sys.argv)

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64)


def weight_bytes(model) -> int:
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def prompts(vocab: int, b: int, n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(10, min(vocab, 30000), size=(b, n)).tolist()


def prefill(model, toks: list[list[int]]):
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    logits = model(mx.array(toks), cache=cache)
    y = mx.argmax(logits[:, -1, :], axis=-1)
    mx.eval(y, [c.state for c in cache])
    return y, cache


def pipelined(model, y, cache, steps: int, normalise: bool = False):
    """``steps`` decode steps in stream_generate's order (the next step is built and
    submitted before the host reads the current tokens); per step, the wall time and the
    host's wait for the tokens. ``normalise``: argmax over log-probabilities, as
    BatchGenerator takes it."""
    total, waits = [], []
    t_last = time.perf_counter()
    for _ in range(steps):
        logits = model(y[:, None], cache=cache)[:, -1, :]
        if normalise:
            logits = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        nxt = mx.argmax(logits, axis=-1)
        mx.async_eval(nxt)
        t0 = time.perf_counter()
        y.tolist()  # the host needs the current tokens (stop checks, streaming)
        now = time.perf_counter()
        waits.append(now - t0)
        total.append(now - t_last)
        t_last, y = now, nxt
    return total, waits


def time_plain(model, toks, steps: int) -> dict:
    """Unpipelined steps (build, then eval) and pipelined ones (stream_generate's order)."""
    y, cache = prefill(model, toks)
    build, evals = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        nxt = mx.argmax(model(y[:, None], cache=cache)[:, -1, :], axis=-1)
        t1 = time.perf_counter()
        mx.eval(nxt)
        t2 = time.perf_counter()
        build.append(t1 - t0)
        evals.append(t2 - t1)
        y = nxt
    y, cache = prefill(model, toks)
    mx.async_eval(y)
    total, waits = pipelined(model, y, cache, steps)
    ms = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
    return {"plain_build_ms": ms(build), "plain_eval_ms": ms(evals),
            "plain_unpipelined_ms": ms([a + b for a, b in zip(build, evals, strict=True)]),
            "plain_pipelined_ms": ms(total[1:]), "plain_wait_ms": ms(waits[1:])}


def batch_generator(model, toks, steps: int, lean: bool = False):
    """A BatchGenerator with every sequence of ``toks`` past its prefill, decoding (``lean``:
    with krmlx's decode step, :mod:`krmlx.worker.schedulers.step`)."""
    from mlx_lm.generate import BatchGenerator

    from krmlx.worker.schedulers import step

    make = step.LeanBatchGenerator if lean else BatchGenerator
    gen = make(model, max_tokens=steps * 3 + 8, completion_batch_size=max(len(toks), 32),
               prefill_batch_size=len(toks))
    gen.insert(toks, max_tokens=[steps * 3 + 8] * len(toks))
    while len(gen._generation_batch) < len(toks):  # prefill until all decode
        gen.next()
    for _ in range(3):  # past the first steps' shape changes
        gen.next()
    return gen


def time_batchgen(model, toks, steps: int, lean: bool = False, key: str | None = None) -> dict:
    gen = batch_generator(model, toks, steps, lean)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        responses = gen.next()[1]
        times.append(time.perf_counter() - t0)
        assert len(responses) == len(toks), "a sequence left the batch early"
    gen.close()
    return {key or f"batchgen{'_lean' if lean else ''}_ms": 1e3 * statistics.median(times)}


class NoDecodeMask:
    """While active, a BatchKVCache gives no mask to a one-token (decode) step: right when no
    row is padded, as here (every prompt of a size has the same length). It shows what the
    array mask costs the step."""

    def __enter__(self):
        from mlx_lm.models.cache import BatchKVCache

        self.cls, self.orig = BatchKVCache, BatchKVCache.make_mask
        orig = self.orig
        self.cls.make_mask = lambda c, N, **kw: None if N == 1 else orig(c, N, **kw)

    def __exit__(self, *exc):
        self.cls.make_mask = self.orig


def time_batchcache(model, toks, steps: int) -> dict:
    """The plain pipelined loop (forward, normalise, argmax) on the BatchKVCache a
    BatchGenerator built, without the generator's machinery: what the batch cache and its
    per-step mask cost over a plain KVCache."""
    gen = batch_generator(model, toks, steps)
    gb = gen._generation_batch
    total, _ = pipelined(model, gb._next_tokens, gb.prompt_cache, steps, normalise=True)
    gen.close()
    return {"batchcache_ms": 1e3 * statistics.median(total[1:])}


def time_sdpa(model, b: int, kv_len: int) -> dict:
    """One decode-shaped attention call per layer (the model's heads and dtype), without and
    with a boolean mask: the mask's cost alone, as ``benchmarks/mlx_repro.py`` times it."""
    from mlx_repro import attention  # this script's neighbour (benchmarks/ is on sys.path)

    a = model.args
    heads = a.num_attention_heads
    row = attention(b, kv_len, heads=heads, kv_heads=a.num_key_value_heads,
                    dim=getattr(a, "head_dim", None) or a.hidden_size // heads,
                    layers=len(model.layers), dtype=model.layers[0].self_attn.q_proj.weight.dtype)
    return {k: row[k] for k in ("sdpa_nomask_ms", "sdpa_mask_ms")}


class Timed:
    """A callable that adds up the wall time spent in ``fn``."""

    def __init__(self, fn):
        self.fn, self.s = fn, 0.0

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.s += time.perf_counter() - t0


class TimedModel:
    """The model, its forward calls timed (graph building in Python: MLX is lazy, so the
    call returns before any kernel runs); every other attribute passes through."""

    def __init__(self, model):
        self._model, self.forward = model, Timed(model)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def split_batchgen(model, toks, steps: int) -> dict:
    """A BatchGenerator step split by where its wall time goes: the forward graph build
    (``split_forward_build_ms``), the synchronisations (``mx.eval``: waiting for the device),
    the asynchronous submit (``mx.async_eval``), and the rest of the host work
    (``split_other_host_ms``: sampling graph, logprob slicing, stop checks, responses, cache
    filters, mask building), each per step."""
    timed = TimedModel(model)
    gen = batch_generator(timed, toks, steps)
    sync, submit = Timed(mx.eval), Timed(mx.async_eval)
    timed.forward.s = 0.0
    mx.eval, mx.async_eval = sync, submit
    try:
        t0 = time.perf_counter()
        for _ in range(steps):
            gen.next()
        wall = time.perf_counter() - t0
    finally:
        mx.eval, mx.async_eval = sync.fn, submit.fn
        gen.close()
    parts = {"forward_build": timed.forward.s, "sync": sync.s, "submit": submit.s}
    parts["other_host"] = wall - sum(parts.values())
    return {f"split_{k}_ms": 1e3 * v / steps for k, v in parts.items()}


def measure(model, batches, steps: int, prompt_tokens: int, floor_ms: float) -> list[dict]:
    vocab = model.args.vocab_size if hasattr(model, "args") else 32000
    rows = []
    for b in batches:
        toks = prompts(vocab, b, prompt_tokens, seed=b)
        # warm-up: every shape once, untimed (the first use of a shape compiles on a GPU)
        time_plain(model, toks, 4)
        time_batchgen(model, toks, 4)
        time_batchgen(model, toks, 4, lean=True)
        padded = [t[: len(t) - i % 7] for i, t in enumerate(toks)]  # rows left-padded 0..6
        time_batchgen(model, padded, 4, lean=True)
        time_batchcache(model, toks, 4)
        with NoDecodeMask():
            time_batchcache(model, toks, 4)
            time_batchgen(model, toks, 4)
        row = {"batch": b, **time_plain(model, toks, steps), **time_batchgen(model, toks, steps),
               **time_batchgen(model, toks, steps, lean=True), **time_batchcache(model, toks, steps),
               **time_batchgen(model, padded, steps, lean=True, key="batchgen_lean_padded_ms")}
        with NoDecodeMask():
            row["batchcache_nomask_ms"] = time_batchcache(model, toks, steps)["batchcache_ms"]
            row["batchgen_nomask_ms"] = time_batchgen(model, toks, steps)["batchgen_ms"]
        row.update(split_batchgen(model, toks, steps))
        row.update(time_sdpa(model, b, prompt_tokens + steps))
        row["batchgen_over_plain_pipelined"] = row["batchgen_ms"] / row["plain_pipelined_ms"]
        row["floor_ms"] = floor_ms
        row["floor_fraction_plain"] = floor_ms / row["plain_pipelined_ms"]
        row["floor_fraction_batchgen"] = floor_ms / row["batchgen_ms"]
        row["batchgen_tok_s"] = b / row["batchgen_ms"] * 1e3
        rows.append(row)
        print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mini")
    p.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)))
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1,
                   help="measure every size this many times over (in turn); rows hold medians")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    from krmlx.doctor import collect_env, memory_bandwidth_gbs
    from krmlx.models import load, model_bytes, resolve_model

    path = resolve_model(a.model)
    model, _ = load(path)
    wbytes = weight_bytes(model)
    bw = memory_bandwidth_gbs(1 << 27, 10)
    floor_ms = wbytes / (bw * 1e9) * 1e3
    print(f"model {a.model}: {wbytes / 1e9:.3f} GB of weights; bandwidth {bw:.0f} GB/s; "
          f"floor {floor_ms:.3f} ms per step on {mx.default_device()}", flush=True)
    runs = [measure(model, [int(x) for x in a.batches.split(",")], a.steps, a.prompt_tokens, floor_ms)
            for _ in range(a.repeats)]
    rows = [{k: (statistics.median(r[k] for r in same) if isinstance(v, float) else v)
             for k, v in same[0].items()} for same in zip(*runs, strict=True)]
    doc = {"benchmark": "batch_step", "env": collect_env(), "model": a.model,
           "model_bytes": model_bytes(path), "weight_bytes": wbytes, "bandwidth_gbs": bw,
           "steps": a.steps, "prompt_tokens": a.prompt_tokens, "repeats": a.repeats,
           "rows": rows, "runs": runs}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(doc, indent=1))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
