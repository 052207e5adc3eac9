"""A long prompt delays the streams already decoding by about one prefill chunk at most, on
every scheduler path (serial, batched, auto: its solo stream is handed to the batch when
the long prompt comes), measured on the real worker and the tiny model: the running
stream's longest gap between tokens while a 2560-token prompt is admitted, against the
time of one prefill chunk measured on the same worker (a ratio, not a wall time)."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from reliability_support import run, ttft_ms

from krmlx import Engine, Request, StackConfig
from krmlx.gen import DEFAULT_PREFILL_STEP

LONG_IDS = tuple(5 + (i * 7) % 3000 for i in range(2560))  # five chunks
CHUNKS = math.ceil(len(LONG_IDS) / DEFAULT_PREFILL_STEP)
MAX_GAP_CHUNKS = 2.0  # one chunk, a decode step, and a 2-core machine's noise


async def measure(scheduler: str):
    async with Engine("tiny", StackConfig.phases(scheduler=scheduler)) as eng:
        await eng.complete(Request(prompt_ids=LONG_IDS[:600], max_tokens=2))  # warm up
        full = await ttft_ms(eng, Request(prompt_ids=LONG_IDS, max_tokens=1))
        decoding = asyncio.ensure_future(eng.complete(Request("Tell me about bees",
                                                              max_tokens=400)))
        await asyncio.sleep(0.3)  # decoding alone (auto: on its solo path)
        t_long = time.perf_counter()
        long = await eng.complete(Request(prompt_ids=LONG_IDS, max_tokens=2))
        done = await decoding
    return full / CHUNKS, t_long, done, long


@pytest.mark.parametrize("scheduler", ["serial", "batched", "auto"])
def test_a_long_prompt_delays_a_decoding_stream_by_about_one_chunk(scheduler):
    chunk_ms, t_long, done, long = run(measure(scheduler))
    assert long.usage.output_tokens == 2
    times = done.token_times_s
    gaps = [(b - a) * 1e3 for a, b in zip(times, times[1:], strict=False) if b > t_long]
    assert gaps, "the decoding stream ended before the long prompt came"
    assert done.token_times_s[-1] > t_long
    worst = max(gaps)
    print(f"{scheduler}: longest gap {worst:.1f} ms = {worst / chunk_ms:.2f} chunks of "
          f"{chunk_ms:.1f} ms")
    assert worst < MAX_GAP_CHUNKS * chunk_ms, (
        f"{scheduler}: the longest gap {worst:.1f} ms is {worst / chunk_ms:.2f} chunks "
        f"(one chunk {chunk_ms:.1f} ms, {CHUNKS} chunks {chunk_ms * CHUNKS:.0f} ms)")
