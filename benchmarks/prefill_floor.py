"""The TTFT floor of a wave: how soon can the median of N simultaneous prompts get its
first token, given what one prefill costs on this machine?

In-process, no serving layer. For the concurrency workload's prompts (N prompts of
``--low``..``--high`` tokens, chat template applied) it measures:

- ``solo``: each prompt alone on mlx-lm's single-sequence path, time to its first token
  (prefill + one sample), median of ``--reps``;
- ``batch``: the N prompts inserted at once into one ``BatchGenerator`` with
  ``prefill_batch_size`` b, stepped until each has its first token; the TTFT of each, per b;
- ``floor``: the median TTFT of a scheduler that prefills the N prompts one at a time in
  arrival order and decodes nothing until all have started: the k-th first token comes
  after the first k solo times. No scheduler that keeps started streams decoding (every
  continuous batcher, mlx_lm.server's included) gets a lower median, unless batching
  prompts makes each prefill cheaper, which ``batch`` shows (tokens per second of prefill
  for each b).

- ``profile``: where one prefill's time goes: one decoder layer at the median prompt
  length, split into its attention, its MLP, the MLP's three matmuls and its SwiGLU
  activation, and the cost of ``exp`` per element (median of 30 evaluations each).

    python benchmarks/prefill_floor.py --model mini --n 16 --out results/cpu/r18/prefill-floor.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def first_token_s(model, tokenizer, ids) -> float:
    from krmlx import gen

    t0 = time.perf_counter()
    steps = gen.iter_tokens(model, tokenizer, ids, max_tokens=1)
    next(steps)
    dt = time.perf_counter() - t0
    steps.close()
    return dt


def batch_ttfts(model, tokenizer, prompts, b: int) -> list[float]:
    from mlx_lm.generate import BatchGenerator

    from krmlx import gen

    eos = sorted(tokenizer.eos_token_ids)
    bg = BatchGenerator(model, stop_tokens=[[t] for t in eos], completion_batch_size=64,
                        prefill_batch_size=b, prefill_step_size=gen.DEFAULT_PREFILL_STEP)
    t0 = time.perf_counter()
    uids = bg.insert(prompts, max_tokens=[2] * len(prompts))
    seen: dict[int, float] = {}
    while len(seen) < len(uids):
        _, responses = bg.next()
        now = time.perf_counter() - t0
        for r in responses:
            seen.setdefault(r.uid, now)
    bg.close()
    return sorted(seen.values())


def median_ms(f, reps: int = 30) -> float:
    import mlx.core as mx

    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        mx.eval(f())
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def layer_profile(model, n: int) -> dict:
    """One decoder layer's parts on an ``n``-token prefill, ms (llama-shaped models)."""
    import mlx.core as mx
    from mlx_lm.models.activations import swiglu

    layer, dim = model.model.layers[0], model.args.hidden_size
    x = mx.random.normal((1, n, dim))
    mlp = layer.mlp
    gate, up = mlp.gate_proj(x), mlp.up_proj(x)
    mx.eval(x, gate, up)
    return {
        "prompt_tokens": n, "layers": len(model.model.layers),
        "layer_ms": median_ms(lambda: layer(x, mask="causal", cache=None)),
        "attention_ms": median_ms(lambda: layer.self_attn(x, mask="causal", cache=None)),
        "mlp_ms": median_ms(lambda: mlp(x)),
        "mlp_matmuls_ms": median_ms(lambda: [mlp.gate_proj(x), mlp.up_proj(x)])
        + median_ms(lambda: mlp.down_proj(gate)),
        "swiglu_ms": median_ms(lambda: swiglu(gate, up)),
        "exp_ns_per_element": median_ms(lambda: mx.exp(gate)) * 1e6 / gate.size,
        "mul_ns_per_element": median_ms(lambda: gate * up) * 1e6 / gate.size,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mini")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--low", type=int, default=100)
    ap.add_argument("--high", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-sizes", default="1,2,4,8,16")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from krmlx.blas import reexec_under_blas

    reexec_under_blas(sys.argv)  # on OpenBLAS, as the worker and the bench's direct target run
    from krmlx import gen
    from krmlx.bench.prompts import long_prompts
    from krmlx.bench.results import write_results
    from krmlx.doctor import collect_env
    from krmlx.models import load, resolve_model

    model, tokenizer = load(resolve_model(args.model))
    reqs = long_prompts(tokenizer, args.n, low=args.low, high=args.high, max_tokens=1)
    prompts = [gen.encode_prompt(tokenizer, {"prompt": r.prompt, "chat": True}) for r in reqs]
    first_token_s(model, tokenizer, prompts[0])  # warm-up: every shape once, untimed
    batch_ttfts(model, tokenizer, prompts, max(int(b) for b in args.batch_sizes.split(",")))

    solo = [statistics.median(first_token_s(model, tokenizer, p) for _ in range(args.reps))
            for p in prompts]
    cum = [sum(solo[:k + 1]) for k in range(len(solo))]
    summary = {"n": args.n, "prompt_tokens": [len(p) for p in prompts],
               "solo_first_token_ms": [s * 1e3 for s in solo],
               "solo_median_ms": statistics.median(solo) * 1e3,
               "floor_ttft_p50_ms": statistics.median(cum) * 1e3,
               "floor_all_started_ms": cum[-1] * 1e3, "batch": {}}
    records = []
    total_tokens = sum(len(p) for p in prompts)
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        runs = [batch_ttfts(model, tokenizer, prompts, b) for _ in range(args.reps)]
        p50 = statistics.median(statistics.median(r) for r in runs)
        last = statistics.median(r[-1] for r in runs)
        summary["batch"][str(b)] = {"ttft_p50_ms": p50 * 1e3, "all_started_ms": last * 1e3,
                                    "prefill_tok_s": total_tokens / last}
        records += [{"prefill_batch_size": b, "rep": i, "ttfts_ms": [t * 1e3 for t in r]}
                    for i, r in enumerate(runs)]
    summary["solo_prefill_tok_s"] = total_tokens / cum[-1]
    summary["profile"] = prof = layer_profile(model, int(statistics.median(len(p) for p in prompts)))
    print(f"{args.n} prompts, {min(summary['prompt_tokens'])}-{max(summary['prompt_tokens'])} "
          f"tokens: solo first token median {summary['solo_median_ms']:.1f} ms "
          f"({summary['solo_prefill_tok_s']:.0f} prompt tok/s); one-at-a-time floor "
          f"TTFT p50 {summary['floor_ttft_p50_ms']:.0f} ms, all started {cum[-1] * 1e3:.0f} ms")
    for b, s in summary["batch"].items():
        print(f"  BatchGenerator prefill_batch_size={b:>2}: TTFT p50 {s['ttft_p50_ms']:.0f} ms, "
              f"all started {s['all_started_ms']:.0f} ms ({s['prefill_tok_s']:.0f} prompt tok/s)")
    print(f"  one layer at {prof['prompt_tokens']} tokens: {prof['layer_ms']:.1f} ms (attention "
          f"{prof['attention_ms']:.1f}, MLP {prof['mlp_ms']:.1f}: matmuls {prof['mlp_matmuls_ms']:.1f}, "
          f"SwiGLU {prof['swiglu_ms']:.1f}); exp {prof['exp_ns_per_element']:.1f} ns/element, "
          f"multiply {prof['mul_ns_per_element']:.2f}")
    if args.out:
        write_results(args.out, env=collect_env(), records=records, summary=summary,
                      config={"workload": "prefill_floor", "model": args.model, "n": args.n,
                              "low": args.low, "high": args.high, "reps": args.reps,
                              "warm_up": "one solo prompt and one batch of all, untimed"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
