"""Reliability under a serving load, on the real worker and the tiny model: long prompts
neither block others nor outlive their caller, a hung worker never hangs its callers, an
abandoned stream never stalls the others, close() is graceful, and every input is checked
once, the same way, before any work.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time

import pytest
from reliability_support import run, ttft_ms

from krmlx import DirectEngine, Engine, Request, StackConfig, WorkerConfig
from krmlx.errors import (
    BadRequest,
    CallTimeout,
    EngineClosed,
    ModelError,
    WorkerUnresponsive,
)
from krmlx.framing import FramerConfig
from krmlx.service import Call, unary
from krmlx.worker.client import WorkerClient

LONG_IDS = tuple(5 + (i * 7) % 3000 for i in range(4000))  # within tiny's 4096-token context


def cfg(**worker) -> StackConfig:
    return StackConfig(worker=WorkerConfig(**worker))


# -- long prompts ---------------------------------------------------------------------------

def test_a_cancelled_long_prompt_stops_within_one_prefill_chunk():
    """A 4000-token prompt abandoned during its prefill stops at the next chunk boundary:
    the next small request waits a fraction of the prefill, not all of it."""

    async def go():
        async with Engine("tiny") as eng:
            await eng.complete(Request(prompt_ids=LONG_IDS[:600], max_tokens=1))  # warm up
            full_ms = await ttft_ms(eng, Request(prompt_ids=LONG_IDS, max_tokens=1))
            stream = eng.stream(Request(prompt_ids=LONG_IDS, max_tokens=50))
            first = asyncio.ensure_future(stream.__anext__())
            await asyncio.sleep(full_ms / 1e3 / 4)  # a quarter into the prefill
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            await stream.aclose()  # the worker gets the cancel now
            t0 = time.perf_counter()
            small = await eng.complete(Request("Why is the sky blue?", max_tokens=2))
            return full_ms, (time.perf_counter() - t0) * 1e3, small

    full_ms, waited_ms, small = run(go())
    assert small.usage.output_tokens == 2
    # the rest of the prefill would be ~3/4 of full_ms; one chunk of 512 is ~1/8 of it
    assert waited_ms < 0.45 * full_ms, (waited_ms, full_ms)


@pytest.mark.parametrize("engine", ["direct", "served"])
def test_a_prompt_over_the_context_is_refused_up_front(engine, tiny_path):
    """4097 ids, or a text too long to fit, on a 4096-context model: BadRequest naming the
    limit, on both engines, before any prefill (fast), and the engine keeps serving."""
    over_ids = Request(prompt_ids=(5,) * 4097, max_tokens=1)
    over_text = Request("word " * 100_000, max_tokens=1)  # 500k characters: ~100k tokens

    async def go():
        eng = DirectEngine(tiny_path) if engine == "direct" else Engine("tiny")
        async with eng:
            errors = []
            for req in (over_ids, over_text):
                t0 = time.perf_counter()
                with pytest.raises(BadRequest) as e:
                    await eng.complete(req)
                errors.append((str(e.value), time.perf_counter() - t0))
            ok = await eng.complete(Request(prompt_ids=(5,) * 4096, max_tokens=1))
            return errors, ok

    errors, ok = run(go())
    assert "4,097 tokens exceed the limit of 4,096" in errors[0][0]
    assert "can't fit the limit of 4,096 tokens" in errors[1][0]
    assert all(t < 1.0 for _, t in errors), errors  # refused before the work
    assert ok.usage.output_tokens == 1


def test_a_configured_prompt_limit_is_enforced_by_the_worker():
    async def go():
        async with Engine("tiny", cfg(max_prompt_tokens=100)) as eng:
            with pytest.raises(BadRequest, match="101 tokens exceed the limit of 100"):
                await eng.complete(Request(prompt_ids=(5,) * 101, max_tokens=1))
            return await eng.complete(Request(prompt_ids=(5,) * 100, max_tokens=1))

    assert run(go()).usage.output_tokens == 1


def test_one_long_prefill_stalls_other_batched_streams_by_at_most_a_chunk():
    """Continuous batching: a stream decoding while a 4000-token prompt is admitted; the
    decoding stream's longest gap between tokens stays well under the long prefill (the
    batch decodes a step between prefill chunks of 512)."""

    async def go():
        async with Engine("tiny", StackConfig.phases(scheduler="batched")) as eng:
            await eng.complete(Request(prompt_ids=LONG_IDS[:600], max_tokens=2))  # warm up
            full_ms = await ttft_ms(eng, Request(prompt_ids=LONG_IDS, max_tokens=1))
            decoding = asyncio.ensure_future(eng.complete(Request("Tell me about bees",
                                                                  max_tokens=300)))
            await asyncio.sleep(0.3)
            long = await eng.complete(Request(prompt_ids=LONG_IDS, max_tokens=2))
            done = await decoding
            return full_ms, done, long

    full_ms, done, long = run(go())
    assert long.usage.output_tokens == 2
    t_long_start = long.t_start_s
    gaps = [b - a for a, b in zip(done.token_times_s, done.token_times_s[1:], strict=False)
            if b > t_long_start]
    assert gaps, "the decoding stream ended before the long prompt came"
    assert max(gaps) * 1e3 < full_ms / 3, (max(gaps) * 1e3, full_ms)


# -- a hung worker ---------------------------------------------------------------------------

@pytest.mark.parametrize("phases", [(), ("batching", "caching", "retry", "framing")],
                         ids=["phase0", "all"])
def test_a_stopped_worker_fails_streams_and_pings_within_the_liveness_timeout(phases):
    """SIGSTOP the worker mid-stream: the open stream and a ping fail with
    WorkerUnresponsive within the liveness timeout (not forever), the stopped worker is
    killed, and the next call gets a new worker."""
    config = StackConfig.phases(phases, liveness_timeout_s=1.5)

    async def go():
        async with Engine("tiny", config) as eng:
            stream = eng.stream(Request("Why is the sky blue?", max_tokens=2000))
            await stream.__anext__()
            old = eng.client.pid
            stopped = [old]
            try:
                os.kill(old, signal.SIGSTOP)
                t0 = time.perf_counter()
                with pytest.raises(WorkerUnresponsive, match="liveness_timeout_s=1.5"):
                    async for _ in stream:
                        pass
                waited = time.perf_counter() - t0
                after = await eng.complete(Request("What is a river?", max_tokens=3))
                new = eng.client.pid
                stopped.append(new)
                os.kill(new, signal.SIGSTOP)
                t0 = time.perf_counter()
                with pytest.raises(WorkerUnresponsive):
                    await eng.client.ping()
                ping_waited = time.perf_counter() - t0
            finally:
                for pid in stopped:
                    try:
                        os.kill(pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass
            last = await eng.complete(Request("What is a river?", max_tokens=3))
            return waited, ping_waited, old, new, after, last, eng.client.stats

    waited, ping_waited, old, new, after, last, stats = run(go())
    assert waited < 5.0 and ping_waited < 5.0, (waited, ping_waited)
    assert new != old and after.usage.output_tokens == 3 and last.token_ids == after.token_ids
    assert stats["unresponsive"] == 2 and stats["restarts"] == 2


def test_with_retry_a_hung_worker_costs_one_liveness_timeout_then_succeeds():
    """complete() through the retry stage: the try on the stopped worker ends after the
    liveness timeout, the retry runs on a new worker and the call succeeds."""
    config = StackConfig.phases(["retry"], liveness_timeout_s=1.5)

    async def go():
        async with Engine("tiny", config) as eng:
            await eng.complete(Request("warm up", max_tokens=2))
            os.kill(eng.client.pid, signal.SIGSTOP)
            t0 = time.perf_counter()
            done = await eng.complete(Request("Why is the sky blue?", max_tokens=4))
            return time.perf_counter() - t0, done, eng.stats()

    waited, done, stats = run(go())
    assert done.usage.output_tokens == 4
    assert 1.5 <= waited < 1.5 + 10, waited  # one liveness timeout plus a restart
    assert stats["retry"]["retries"] >= 1 and stats["client"]["restarts"] == 1


def test_a_busy_worker_is_not_mistaken_for_a_hung_one():
    """A worker that computes for longer than the liveness timeout (here: an injected 2 s
    wait on the compute thread) still sends heartbeats: the call completes."""
    config = cfg(liveness_timeout_s=0.5, faults={"latency_ms": {"generate": 2000}})

    async def go():
        async with Engine("tiny", config) as eng:
            return await eng.complete(Request("Why is the sky blue?", max_tokens=3)), eng.stats()

    done, stats = run(go())
    assert done.usage.output_tokens == 3 and stats["client"]["unresponsive"] == 0


def test_the_idle_timeout_cuts_a_silent_stream_but_not_a_long_healthy_one():
    """idle_timeout_s bounds the wait for each next frame, not the whole call: a stream
    of 600 tokens that takes longer than it passes; a stream whose first frame is 2 s away
    fails with CallTimeout after about the idle timeout, and is cancelled."""

    async def go():
        async with Engine("tiny", cfg(idle_timeout_s=0.6)) as eng:
            t0 = time.perf_counter()
            long = await eng.complete(Request("Tell me about bees", max_tokens=600))
            long_s = time.perf_counter() - t0
            slow = Request("x", max_tokens=3)
            t0 = time.perf_counter()
            with pytest.raises(CallTimeout, match="idle_timeout_s"):
                call = Call("generate", {**slow.to_params(), "faults": {"latency_ms": {"generate": 2000}}},
                            "tiny")
                async for _ in eng.service.call(call):
                    pass
            return long, long_s, time.perf_counter() - t0

    long, long_s, cut_s = run(go())
    assert long.usage.output_tokens == 600 and long_s > 0.6  # longer than the idle timeout
    assert 0.5 < cut_s < 1.8, cut_s


# -- an abandoned stream --------------------------------------------------------------------

@pytest.mark.parametrize("framer", [None, FramerConfig()], ids=["phase0", "framing"])
def test_an_abandoned_stream_never_stalls_the_others(framer):
    """Break out of ``async for`` and keep the stream object: the worker stops generating
    for it within the stall timeout, other requests complete meanwhile (with a window too:
    a full window never blocks the compute thread), and reading the stream again fails."""
    layers = [framer] if framer else []
    config = StackConfig(layers=layers, worker=WorkerConfig(stall_timeout_s=1.0))

    async def go():
        async with Engine("tiny", config) as eng:
            # greedy on tiny, "x" runs ~2600 tokens before an EOS: many seconds of work
            stream = eng.stream(Request("x", max_tokens=2500))
            async for _ in stream:
                break  # abandoned, but still referenced
            t0 = time.perf_counter()
            other = await eng.complete(Request("What is a river?", max_tokens=5))
            other_s = time.perf_counter() - t0
            await asyncio.sleep(1.6)
            a = (await eng.client.worker_stats())["tokens_out"]
            await asyncio.sleep(0.6)
            b = (await eng.client.worker_stats())["tokens_out"]
            with pytest.raises(CallTimeout, match="not read for"):
                async for _ in stream:
                    pass
            return other, other_s, a, b, eng.client.stats

    other, other_s, a, b, stats = run(go())
    assert other.usage.output_tokens == 5
    assert other_s < 3.0, other_s  # not the 2500 tokens of the abandoned stream
    assert b == a, "the worker kept generating for a stream nobody reads"
    assert a < 2500 and stats["stalled_streams"] == 1


# -- close ----------------------------------------------------------------------------------

def test_close_shuts_the_worker_down_gracefully_and_open_streams_say_so():
    async def go():
        eng = await Engine("tiny").start()
        proc = eng.client.transport
        stream = eng.stream(Request("Tell me about bees", max_tokens=2000))
        await stream.__anext__()
        t0 = time.perf_counter()
        await eng.close()
        close_s = time.perf_counter() - t0
        with pytest.raises(EngineClosed, match="closed"):
            async for _ in stream:
                pass
        return close_s, proc.get_returncode()

    close_s, code = run(go())
    assert code == 0, f"the worker exited with {code}, not after a shutdown"
    assert close_s < 1.5, close_s


# -- one validation -------------------------------------------------------------------------

BAD_REQUESTS = [
    (dict(prompt="x", temperature=math.nan), "temperature"),
    (dict(prompt="x", temperature=math.inf), "temperature"),
    (dict(prompt="x\udc80y"), "prompt: must be valid Unicode"),
    (dict(prompt="x", system="\ud800"), "system: must be valid Unicode"),
    (dict(prompt="x", seed=2**70), r"seed: must be in \[0, 2\*\*64\)"),
    (dict(prompt="x", seed=-1), r"seed: must be in \[0, 2\*\*64\)"),
    (dict(prompt_ids=(5, 2**70)), r"prompt_ids: id .* out of range \(\[0, 2\*\*32\)\)"),
    (dict(prompt_ids=(5, -3)), "prompt_ids: id -3"),
    (dict(prompt="x", max_tokens=0), "max_tokens"),
    (dict(prompt="x", max_tokens=2**30), "max_tokens: must be at most"),
    (dict(prompt="x" * (2**20 + 1)), "prompt: 1,048,577 characters exceed the limit"),
    (dict(prompt="   "), "prompt: must be a non-empty string"),
]


@pytest.mark.parametrize("fields, message", BAD_REQUESTS, ids=[m for _, m in BAD_REQUESTS])
def test_a_request_is_validated_once_naming_the_field(fields, message):
    """Request checks its fields when it is made, so DirectEngine, Engine and the HTTP
    front refuse the same input with the same BadRequest."""
    with pytest.raises(BadRequest, match=message):
        Request(**fields)


@pytest.mark.parametrize("params, message", [
    ({"prompt": "x", "max_tokens": 2, "temperature": math.inf}, "temperature"),
    ({"prompt": "x", "max_tokens": 2, "seed": -5}, "seed"),
    ({"prompt_ids": [5, 2**40], "max_tokens": 2}, "prompt_ids"),
])
def test_the_worker_applies_the_same_rules_to_raw_calls(params, message):
    async def go():
        async with WorkerClient() as c:
            await unary(c, Call("load_model", {}, "tiny"))
            with pytest.raises(BadRequest, match=message) as e:
                async for _ in c.call(Call("generate", params, "tiny")):
                    pass
            return str(e.value)

    assert run(go()).startswith("generate: ")


def test_big_tokenize_calls_are_refused_before_the_work():
    """2 Mi characters to tokenize: refused at once naming the limit, while a small
    tokenize next to it is answered without waiting."""
    big = "word " * (2**19)  # 2.5 Mi characters

    async def go():
        async with Engine("tiny") as eng:
            t0 = time.perf_counter()
            small = asyncio.ensure_future(eng.tokenize("hello"))
            with pytest.raises(BadRequest, match="characters exceed the limit of 1,048,576"):
                await eng.tokenize(big)
            with pytest.raises(BadRequest, match="in all exceed the limit"):
                await eng.call("batch_tokenize", {"texts": [big[: 2**19]] * 3}, "tiny")
            return await small, time.perf_counter() - t0

    ids, took = run(go())
    assert ids and took < 2.0, took


# -- errors keep their types ------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["direct", "served"])
def test_corrupt_weights_are_a_model_error_on_both_engines(engine, tmp_path, tiny_path):
    import shutil

    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_path, folder)
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: 1000])

    async def go():
        eng = DirectEngine(folder) if engine == "direct" else Engine(str(folder))
        async with eng:
            pass

    with pytest.raises(ModelError, match="could not load model folder") as e:
        run(go())
    assert type(e.value) is ModelError


# -- a worker that answers wrongly --------------------------------------------------------------

STUB = '''#!{python}
"""A worker that answers every call with a malformed frame (an injected protocol fault)."""
import os, sys
from krmlx.worker.protocol import make_codec, ready_frame
codec = make_codec("msgpack")
out = os.fdopen(1, "wb", buffering=0)
if "{mode}" != "silent":
    out.write(codec.encode(ready_frame(pid=os.getpid(), codec="msgpack", scheduler="serial",
                                       blas="reference", ranks=1, backend=None)))
replies = {{
    "ping": lambda f: {{"v": 1, "id": f["id"], "kind": "result"}},
    "stats": lambda f: {{"v": 1, "id": f["id"], "kind": "error", "message": "no code"}},
    "tokens": lambda f: {{"v": 1, "id": f["id"], "kind": "token", "tokens": "notalist"}},
    "pairs": lambda f: {{"v": 1, "id": f["id"], "kind": "token", "tokens": [[1, 2, 3]]}},
    "done": lambda f: {{"v": 1, "id": f["id"], "kind": "done", "prompt_tokens": 1}},
}}
while data := os.read(0, 1 << 16):
    for frame in codec.feed(data):
        if not isinstance(frame, dict) or frame.get("kind") != "call":
            continue
        key = frame["params"].get("prompt") if frame["method"] == "generate" else frame["method"]
        if key == "desync":
            out.write((2**31).to_bytes(4, "big") + b"x" * 16)
        elif key in replies:
            out.write(codec.encode(replies[key](frame)))
'''


def stub_client(tmp_path, mode: str = "answers", **config) -> WorkerClient:
    import stat
    import sys

    path = tmp_path / f"stub-{mode}"
    path.write_text(STUB.format(python=sys.executable, mode=mode))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return WorkerClient(WorkerConfig(codec="msgpack", liveness_timeout_s=None, **config),
                        python=str(path))


def test_malformed_worker_replies_are_protocol_errors_naming_the_frame_and_field(tmp_path):
    from krmlx.errors import ProtocolError

    async def go():
        out = {}
        async with stub_client(tmp_path) as c:
            for name, call in [("ping", Call("ping")), ("stats", Call("stats")),
                               *[(k, Call("generate", {"prompt": k, "max_tokens": 2}, "m"))
                                 for k in ("tokens", "pairs", "done")]]:
                with pytest.raises(ProtocolError) as e:
                    async for _ in c.call(call):
                        pass
                out[name] = str(e.value)
        return out

    errors = run(go())
    assert "result frame" in errors["ping"] and "'value'" in errors["ping"]
    assert "error frame" in errors["stats"] and "'code'" in errors["stats"]
    assert "token frame" in errors["tokens"] and "'tokens'" in errors["tokens"]
    assert "'tokens'" in errors["pairs"] and "[token_id, text] pairs" in errors["pairs"]
    assert "done frame" in errors["done"] and "'finish_reason'" in errors["done"]


def test_a_desynced_worker_is_given_up_and_replaced(tmp_path):
    """A length prefix no frame can have, from the worker: the pending call fails at once
    naming the desync, the worker is killed, the next call gets a new one."""
    from krmlx.errors import WorkerCrashed

    async def go():
        async with stub_client(tmp_path) as c:
            first = c.pid
            with pytest.raises(WorkerCrashed, match="out of step"):
                async for _ in c.call(Call("generate", {"prompt": "desync", "max_tokens": 2}, "m")):
                    pass
            with pytest.raises(ProtocolError):  # a new stub answers (wrongly, as stubs do)
                await c.ping()
            return first, c.pid, c.stats

    from krmlx.errors import ProtocolError

    first, second, stats = run(go())
    assert second != first and stats["restarts"] == 1


def test_the_ready_timeout_says_what_was_awaited(tmp_path):
    from krmlx.errors import WorkerCrashed

    async def go():
        async with stub_client(tmp_path, "silent", ready_timeout_s=1.0):
            pass

    with pytest.raises(WorkerCrashed, match=r"sent no ready frame within ready_timeout_s=1 s"):
        run(go())
