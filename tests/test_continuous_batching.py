"""The batched scheduler (continuous batching over mlx-lm's BatchGenerator), real tiny model."""

import asyncio

import pytest

from krmlx import Request, load_questions
from krmlx.engine import Engine
from krmlx.stack import StackConfig


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def serial_outputs(tiny_path):
    questions = load_questions()[0]

    async def go():
        async with Engine("tiny", StackConfig.phases(scheduler="serial")) as eng:
            assert eng.client.ready["scheduler"] == "serial"
            return [await eng.complete(Request(q.question, max_tokens=30, id=q.id)) for q in questions]

    return run(go())


@pytest.mark.parametrize("scheduler", ["batched", "batched-staged", "auto"])
def test_50_concurrent_requests_equal_serial_outputs(serial_outputs, scheduler):
    questions = load_questions()[0]

    async def go():
        async with Engine("tiny", StackConfig.phases(scheduler=scheduler)) as eng:
            assert eng.client.ready["scheduler"] == scheduler
            outs = await asyncio.gather(*(eng.complete(Request(q.question, max_tokens=30, id=q.id))
                                          for q in questions))
            return outs, await eng.client.worker_stats()

    outs, stats = run(go())
    for want, got in zip(serial_outputs, outs, strict=True):
        assert got.token_ids == want.token_ids, want.request_id
        assert got.text == want.text and got.finish_reason == want.finish_reason
    assert any(o.finish_reason == "stop" for o in outs)  # EOS handled as in serial mode
    assert stats["active_streams"] == 0


@pytest.mark.parametrize("scheduler", ["batched", "batched-staged", "auto"])
def test_per_request_max_tokens_cancel_and_admission_between_steps(tiny_path, scheduler):
    async def go():
        async with Engine("tiny", StackConfig.phases(scheduler=scheduler)) as eng:
            long = asyncio.create_task(eng.complete(Request("Tell me about bees", max_tokens=400)))
            await asyncio.sleep(0.3)  # the long one is decoding
            order = []

            async def short(n):
                done = await eng.complete(Request(f"Question {n}?", max_tokens=n))
                order.append(("short", n, done.usage.output_tokens))

            stream = eng.stream(Request("Why is the sky blue?", max_tokens=500))
            first = await stream.__anext__()
            await asyncio.gather(*(short(n) for n in (3, 7, 11)))
            await stream.aclose()  # cancel one stream in the middle of the batch
            done_long = await long
            order.append(("long", 400, done_long.usage.output_tokens))
            await asyncio.sleep(0.2)
            return order, first, await eng.client.worker_stats()

    order, first, stats = run(go())
    assert [o[0] for o in order] == ["short", "short", "short", "long"]  # admitted mid-batch
    assert all(o[1] == o[2] for o in order)  # each request's own max_tokens
    assert first.index == 0 and stats["active_streams"] == 0


def test_auto_runs_one_stream_solo_and_hands_it_to_the_batch_when_others_come(serial_outputs):
    """auto (the default): a lone request runs on the serial path; when others arrive while
    it decodes, it moves into the batch mid-stream (its KV cache handed over) and goes on:
    every output, the moved one included, equals the serial scheduler's."""
    questions = load_questions()[0]
    long_q, others = questions[0], questions[1:9]

    async def go():
        async with Engine("tiny") as eng:
            assert eng.client.ready["scheduler"] == "auto"
            alone = await eng.complete(Request(long_q.question, max_tokens=30, id=long_q.id))
            stream = eng.stream(Request(long_q.question, max_tokens=30, id=long_q.id))
            first = [await stream.__anext__() for _ in range(5)]  # solo, decoding
            rest = asyncio.gather(*(eng.complete(Request(q.question, max_tokens=30, id=q.id))
                                    for q in others))
            tail = [c async for c in stream]
            return alone, first + tail, stream.tail, await rest, (await eng.client.worker_stats())

    alone, moved, end, outs, stats = run(go())
    want = {o.request_id: o for o in serial_outputs}
    assert alone.token_ids == want[long_q.id].token_ids
    assert tuple(c.token_id for c in moved) == want[long_q.id].token_ids  # one stream, unbroken
    assert "".join(c.text for c in moved) + end == want[long_q.id].text
    for q, got in zip(others, outs, strict=True):
        assert got.token_ids == want[q.id].token_ids, q.id
    counts = stats["scheduler_counts"]
    assert counts["solo_runs"] >= 2 and counts["handoffs"] >= 1


@pytest.mark.parametrize("staged", [False, True])
def test_auto_handoff_keeps_the_waiting_prompts_prefill_groups_whole(tiny_path, staged):
    """A wave's first request runs solo; when it is handed to the batch, the 16 prompts that
    waited meanwhile are prefilled in two whole groups of 8 (mlx-lm's prefill_batch_size),
    not 7, 1, 7, 1, ...: the handed-off stream needs no prefill and must not take a slot
    (each extra prefill stalls every decoding stream: the cause found for auto's 0.87x of
    batched's throughput at 64 streams on an H200). Both admission modes (GPU: plain, CPU:
    staged)."""
    import threading

    from mlx_lm import load

    from krmlx import gen
    from krmlx.worker.registry import ModelEntry
    from krmlx.worker.schedulers import AutoScheduler, GenerateJob, StreamOut

    model, tokenizer = load(str(tiny_path))
    entry = ModelEntry("tiny", model, tokenizer, limits=gen.PromptLimits.of(model, tokenizer))
    errors, done = [], threading.Semaphore(0)
    first_token_out, go_on = threading.Event(), threading.Event()

    def send(frame):
        if frame["kind"] == "done":
            done.release()

    def send_first(frame):  # the solo stream's first token holds the compute thread here
        if not first_token_out.is_set():
            first_token_out.set()
            assert go_on.wait(30)
        send(frame)

    def job(i, sender=send):
        params = {"prompt": f"Question number {i}: why is the sky blue?", "max_tokens": 12}
        return GenerateJob(StreamOut(i, sender), entry, params)

    sched = AutoScheduler(lambda j, e: errors.append(e), staged=staged)
    thread = threading.Thread(target=sched.run)
    thread.start()
    try:
        sched.submit(job(0, send_first))
        assert first_token_out.wait(30)  # running solo, between its first and second token
        for i in range(1, 17):
            sched.submit(job(i))
        go_on.set()
        for _ in range(17):
            assert done.acquire(timeout=60)
    finally:
        sched.stop()
        thread.join(30)
    assert not errors and sched.solo_runs == 1 and sched.handoffs == 1
    assert sched.prefills == 2  # two groups of 8 (the old hand-off made 4: 7, 1, 7, 1)


@pytest.mark.parametrize("staged", [False, True])
def test_auto_batches_a_request_that_arrives_while_the_first_prompt_is_encoded(
        tiny_path, monkeypatch, staged):
    """A wave's requests reach the worker a few ms apart (0.3-2.9 ms measured in the bench's
    waves of 2). A second one that arrives while an idle scheduler encodes the first prompt
    joins it in the batch: one prefill group, no solo run, no hand-off (as ``batched``,
    whose admission has the same window); the old check, made before the encode, ran the
    first solo and prefilled the second alone (0.91x ``batched`` at 2 CPU streams)."""
    import threading

    from mlx_lm import load

    from krmlx import gen
    from krmlx.worker.registry import ModelEntry
    from krmlx.worker.schedulers import AutoScheduler, GenerateJob, StreamOut

    model, tokenizer = load(str(tiny_path))
    entry = ModelEntry("tiny", model, tokenizer, limits=gen.PromptLimits.of(model, tokenizer))
    errors, done, tokens = [], threading.Semaphore(0), {0: 0, 1: 0}

    def job(i):
        def send(frame):
            if frame["kind"] == "token":
                tokens[i] += len(frame["tokens"])
            elif frame["kind"] == "done":
                done.release()
        params = {"prompt": f"Question number {i}: why is the sky blue?", "max_tokens": 12}
        return GenerateJob(StreamOut(i, send), entry, params)

    sched = AutoScheduler(lambda j, e: errors.append(e), staged=staged)
    encode, arrived = gen.encode_prompt, []

    def encode_while_the_second_arrives(*a, **kw):
        if not arrived:
            arrived.append(1)
            sched.submit(job(1))
        return encode(*a, **kw)

    monkeypatch.setattr(gen, "encode_prompt", encode_while_the_second_arrives)
    thread = threading.Thread(target=sched.run)
    thread.start()
    try:
        sched.submit(job(0))
        for _ in range(2):
            assert done.acquire(timeout=60)
    finally:
        sched.stop()
        thread.join(30)
    assert not errors and tokens == {0: 12, 1: 12}
    assert sched.solo_runs == 0 and sched.handoffs == 0 and sched.prefills == 1


def test_concurrency_sweep_smoke_has_one_row_per_level_and_three_targets(tiny_path):
    """The concurrency workload on its default targets: the batched engine, raw
    BatchGenerator and a real mlx_lm.server (over HTTP), each warmed with one wave per
    level, every request answered, the engine's greedy text equal to the server's."""
    from krmlx.bench import make_workload, run_workload

    doc = run(run_workload(make_workload("concurrency", smoke=True), "tiny"))
    levels = doc["summary"]["levels"]
    assert {(r["target"], r["concurrency"]) for r in levels} == {
        (t, c) for t in ("engine", "raw", "mlx_lm.server") for c in (1, 4)}
    assert all(r["aggregate_tps"] > 0 and r["errors"] == 0 for r in levels)
    server = [r for r in doc["records"] if r["target"] == "mlx_lm.server"]
    assert len(server) == 5 and all(r["ok"] and r["output_tokens"] > 0 for r in server)
    assert all(r["usage_source"] == "server" for r in server)  # stream_options.include_usage
    match = {r["target"]: r for r in doc["summary"]["outputs_match"]}
    assert match["mlx_lm.server"]["identical_outputs"] == match["mlx_lm.server"]["compared"] == 5
    warm = doc["config"]["treatment"]["warmup"]
    assert warm["engine"] == warm["raw"] == warm["mlx_lm.server"]  # equal treatment, recorded


def _decode(make, model, prompts, max_tokens, samplers=None, gens=None):
    """Every prompt through a BatchGenerator built by ``make``; the second half joins after
    a few steps (a batch that grows, then shrinks as streams end). Tokens per uid."""
    batch = make(model, completion_batch_size=16, prefill_batch_size=4)
    if gens is not None:
        gens.append(batch)
    half = max(1, len(prompts) // 2)
    kw = {} if samplers is None else {"samplers": samplers[:half]}
    uids = batch.insert(prompts[:half], max_tokens=max_tokens[:half], **kw)
    out: dict[int, list[int]] = {}
    steps = 0
    while True:
        responses = batch.next()[1]
        steps += 1
        if steps == 3 and prompts[half:]:
            kw = {} if samplers is None else {"samplers": samplers[half:]}
            uids += batch.insert(prompts[half:], max_tokens=max_tokens[half:], **kw)
        for r in responses:
            out.setdefault(r.uid, []).append(r.token)
        if steps > 3 and not responses:
            break
    batch.close()
    return [out[u] for u in uids]


def test_lean_decode_step_gives_mlx_lm_tokens(tiny_path):
    """krmlx's decode step (no per-row log-probabilities; rows sampled per distinct sampler)
    against mlx-lm's own, same model, prompts of different lengths, per-request lengths."""
    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator

    from krmlx.models import load
    from krmlx.worker.schedulers import step

    model, tok = load(tiny_path)
    prompts = [tok.encode(q.question) for q in load_questions()[0][:8]]
    assert len({len(p) for p in prompts}) > 1  # left padding in play
    lengths = [5, 12, 3, 20, 7, 9, 15, 2]
    want = _decode(BatchGenerator, model, prompts, lengths)
    gens = []
    got = _decode(step.LeanBatchGenerator, model, prompts, lengths, gens=gens)
    assert got == want
    assert [len(t) for t in got] == lengths
    # padded rows keep the mask; once the last long stream runs alone it has none
    skipped = gens[0].masks_skipped
    assert 0 < skipped < sum(lengths) // 2

    # no row padded (one prompt; four of one length): every decode step runs without a mask
    same = [prompts[0], prompts[0][::-1], prompts[0][1:] + prompts[0][:1], prompts[0]]
    for group in ([prompts[3]], same):
        n = [9] * len(group)
        gens = []
        assert _decode(step.LeanBatchGenerator, model, group, n, gens=gens) == \
            _decode(BatchGenerator, model, group, n)
        assert gens[0].masks_skipped > 0

    # two samplers in one batch: each row still gets its own sampler's token
    lowest = lambda lp: mx.argmin(lp, axis=-1)  # noqa: E731 - a deterministic second sampler
    greedy = lambda lp: mx.argmax(lp, axis=-1)  # noqa: E731
    samplers = [greedy if i % 3 else lowest for i in range(8)]
    want = _decode(BatchGenerator, model, prompts, lengths, samplers)
    got = _decode(step.LeanBatchGenerator, model, prompts, lengths, samplers)
    assert got == want


def test_sample_rows_calls_each_sampler_once_in_row_order():
    import mlx.core as mx

    from krmlx.worker.schedulers.step import sample_rows

    calls = []

    def sampler(name, fn):
        def s(lp):
            calls.append((name, lp.shape[0]))
            return fn(lp, axis=-1)
        return s

    hi, lo = sampler("hi", mx.argmax), sampler("lo", mx.argmin)
    lp = mx.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.0, 0.3, 0.7], [0.4, 0.1, 0.5]])
    got = sample_rows(lp, [hi, lo, None, lo], fallback=hi).tolist()
    assert got == [1, 1, 2, 1]
    assert sorted(calls) == [("hi", 2), ("lo", 2)]
    calls.clear()
    assert sample_rows(lp, [lo] * 4, fallback=hi).tolist() == [2, 1, 0, 1]
    assert calls == [("lo", 4)]


def _script(name, monkeypatch):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    monkeypatch.syspath_prepend(str(path.parent))  # as when the script runs: its neighbours import
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_batch_step_and_mlx_repro_run_small(tiny_path, monkeypatch):
    """benchmarks/batch_step.py's rows (every variant timed, the floor fraction) and
    benchmarks/mlx_repro.py's two reproductions, at a tiny size."""
    from krmlx.models import load

    bs = _script("batch_step", monkeypatch)
    model, _ = load(tiny_path)
    rows = bs.measure(model, [1, 2], steps=3, prompt_tokens=6, floor_ms=1.0)
    assert [r["batch"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("plain_pipelined_ms", "batchgen_ms", "batchgen_lean_ms", "batchgen_lean_padded_ms",
                    "batchcache_ms", "batchcache_nomask_ms", "batchgen_nomask_ms", "sdpa_mask_ms",
                    "sdpa_nomask_ms", "split_forward_build_ms"):
            assert r[key] > 0, key
        assert r["floor_fraction_batchgen"] == pytest.approx(1.0 / r["batchgen_ms"])

    repro = _script("mlx_repro", monkeypatch)
    repro.LAYERS, repro.HIDDEN, repro.FFN = 2, 64, 128
    att = repro.attention(2, kv_len=8)
    assert att["sdpa_mask_ms"] > 0 and att["sdpa_nomask_ms"] > 0
    assert [r["m"] for r in repro.mlp_matmuls((1, 2))] == [1, 2]


def test_batched_worker_counts_its_unmasked_steps(tiny_path):
    """The worker's stats say how many batch steps ran without a mask: every decode step of
    a stream alone, only some in a wave of prompts of different lengths (rows padded)."""
    questions = load_questions()[0][:8]

    async def go():
        async with Engine("tiny", StackConfig.phases(scheduler="batched")) as eng:
            await eng.complete(Request(questions[0].question, max_tokens=20))
            alone = (await eng.client.worker_stats())["scheduler_counts"]
            await asyncio.gather(*(eng.complete(Request(q.question, max_tokens=20)) for q in questions))
            wave = (await eng.client.worker_stats())["scheduler_counts"]
            return alone, wave

    alone, wave = run(go())
    assert alone["unmasked_steps"] >= alone["steps"] - 2 > 0  # all but the prefill's steps
    steps, unmasked = wave["steps"] - alone["steps"], wave["unmasked_steps"] - alone["unmasked_steps"]
    assert 0 <= unmasked < steps - 2  # padded rows: the mask is back for most of the wave
