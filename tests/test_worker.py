"""The worker and its client, against the real tiny model."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from krmlx import DirectEngine, Request, load_questions
from krmlx.errors import (
    BadRequest,
    CallTimeout,
    FrameTooLarge,
    NotFound,
    UnknownModel,
    WorkerCrashed,
    WorkerError,
)
from krmlx.service import Call, unary
from krmlx.types import Chunk, Done
from krmlx.worker.client import WorkerClient
from krmlx.worker.config import WorkerConfig
from krmlx.worker.protocol import JsonCodec, call_frame


def run(coro):
    return asyncio.run(coro)


async def generate(client, prompt="Why is the sky blue?", max_tokens=10, model="tiny", **kw):
    items = [x async for x in client.call(Call("generate", {"prompt": prompt, "max_tokens": max_tokens, **kw}, model))]
    assert isinstance(items[-1], Done)
    return [c for c in items if isinstance(c, Chunk)], items[-1]


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_generate_matches_direct_engine(codec, tiny_path):
    questions = load_questions()[0][:8]

    async def go():
        async with DirectEngine(tiny_path) as direct:
            want = [(await direct.complete(Request(q.question, max_tokens=20))) for q in questions]
        async with WorkerClient(WorkerConfig(codec=codec)) as client:
            assert client.ready["codec"] == codec
            await unary(client, Call("load_model", {}, "tiny"))
            got = [await generate(client, q.question, 20) for q in questions]
        return want, got

    want, got = run(go())
    for w, (chunks, done) in zip(want, got, strict=True):
        assert tuple(c.token_id for c in chunks) == w.token_ids
        assert "".join(c.text for c in chunks) + done.tail == w.text
        assert done.finish_reason == w.finish_reason and done.prompt_tokens == w.usage.prompt_tokens


def test_methods_and_errors_keep_worker_serving(tiny_path):
    async def go():
        async with WorkerClient() as c:
            assert (await c.ping())["pid"] == c.pid
            loaded = await unary(c, Call("load_model", {}, "tiny"))
            assert loaded["bytes"] > 1e6 and not loaded["cached"]
            assert (await unary(c, Call("load_model", {}, "tiny")))["cached"]
            models = await unary(c, Call("list_models"))
            assert [m["model"] for m in models] == ["tiny"] and models[0]["bytes"] == loaded["bytes"]
            ids = await unary(c, Call("tokenize", {"text": "hello world"}, "tiny"))
            batch = await unary(c, Call("batch_tokenize", {"texts": ["hello world", "bees"]}, "tiny"))
            assert batch[0] == ids
            text = await unary(c, Call("detokenize", {"ids": ids}, "tiny"))
            assert text == "hello world"
            draft = await unary(c, Call("check_draft", {"draft": "tiny"}, "tiny"))
            assert draft["compatible"]
            many = await unary(c, Call("batch_check_draft", {"drafts": ["tiny", "absent"]}, "tiny"))
            assert [d["compatible"] for d in many] == [True, False]
            errors = {}
            for call in [Call("nope"), Call("tokenize", {"text": 5}, "tiny"),
                         Call("tokenize", {"text": "x"}, "ghost"), Call("tokenize", {"txt": "x"}, "tiny"),
                         Call("generate", {"prompt": "x", "max_tokens": 0}, "tiny"),
                         Call("cancel", {"target": 12345})]:
                with pytest.raises((WorkerError, BadRequest, UnknownModel, NotFound)) as e:
                    await unary(c, call)
                errors[call.method + str(call.params)] = e.value
            stats = await c.worker_stats()
            assert (await c.ping())["pid"] == c.pid  # still serving
            return errors, stats

    errors, stats = run(go())
    msgs = [str(e) for e in errors.values()]
    assert any("unknown method 'nope'" in m for m in msgs)
    assert any("'text' has type int" in m for m in msgs)
    assert any("'ghost' is not loaded" in m for m in msgs)
    assert any("unknown params ['txt']" in m for m in msgs)
    assert any("max_tokens: must be a positive int, got 0" in m for m in msgs)
    assert any("no active stream" in m for m in msgs)
    assert stats["errors"] == 6 and stats["active_streams"] == 0
    # each error frame's code comes back as its exception type (the protocol's one table)
    assert [type(e).__name__ for e in errors.values()] == [
        "UnknownMethod", "BadRequest", "UnknownModel", "BadRequest", "BadRequest", "NotFound"]
    assert [e.code for e in errors.values()] == [
        "unknown_method", "bad_request", "unknown_model", "bad_request", "bad_request", "not_found"]


def test_oversized_frames_get_clear_errors(tiny_path):
    async def go():
        async with WorkerClient(WorkerConfig(max_frame_bytes=4096)) as c:
            await unary(c, Call("load_model", {}, "tiny"))
            with pytest.raises(FrameTooLarge, match="4096"):
                await unary(c, Call("tokenize", {"text": "word " * 2000}, "tiny"))
            # a reply over the limit becomes an error frame, not a dropped reply
            with pytest.raises(FrameTooLarge, match="reply of"):
                await unary(c, Call("batch_tokenize", {"texts": ["a b c d e f g h"] * 150}, "tiny"))
            return await c.ping()

    assert run(go())["pid"]


def test_early_close_cancels_generation_in_worker(tiny_path):
    async def go():
        async with WorkerClient() as c:
            await unary(c, Call("load_model", {}, "tiny"))
            stream = c.call(Call("generate", {"prompt": "Tell me about bees", "max_tokens": 2000}, "tiny"))
            got = [await stream.__anext__() for _ in range(3)]
            await stream.aclose()
            await asyncio.sleep(0.3)
            s1 = await c.worker_stats()
            await asyncio.sleep(0.3)
            s2 = await c.worker_stats()
            return got, s1, s2

    got, s1, s2 = run(go())
    assert len(got) == 3
    assert s1["active_streams"] == 0 and s1["tokens_out"] < 200
    assert s2["tokens_out"] == s1["tokens_out"]  # nothing generated after the cancel


def test_timeout_cancels_and_worker_keeps_serving(tiny_path):
    async def go():
        async with WorkerClient() as c:
            await unary(c, Call("load_model", {}, "tiny"))
            with pytest.raises(CallTimeout, match="generate timed out"):
                async for _ in c.call(Call("generate", {"prompt": "x y", "max_tokens": 5000}, "tiny", timeout_s=0.3)):
                    pass
            await asyncio.sleep(0.2)
            return await c.worker_stats(), await generate(c, max_tokens=3)

    stats, (chunks, done) = run(go())
    assert stats["active_streams"] == 0 and len(chunks) == 3


def test_worker_death_fails_every_pending_call_then_restarts(tiny_path):
    async def go():
        async with WorkerClient() as c:
            await unary(c, Call("load_model", {}, "tiny"))
            first_pid = c.pid
            stream = c.call(Call("generate", {"prompt": "bees", "max_tokens": 5000}, "tiny"))
            await stream.__anext__()
            pending = [asyncio.create_task(unary(c, Call("load_model", {}, "tiny@7")))]
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            os.kill(c.pid, signal.SIGKILL)
            with pytest.raises(WorkerCrashed, match="exited with code -9"):
                async for _ in stream:
                    pass
            results = await asyncio.gather(*pending, return_exceptions=True)
            elapsed = time.perf_counter() - t0
            assert not psutil.pid_exists(first_pid) or psutil.Process(first_pid).status() == psutil.STATUS_ZOMBIE
            chunks, _ = await generate(c, max_tokens=4)  # restarted, tiny reloaded
            return first_pid, c.pid, results, elapsed, chunks, c.stats

    first, second, results, elapsed, chunks, stats = run(go())
    assert all(isinstance(r, WorkerCrashed) for r in results)
    assert elapsed < 1.0
    assert second != first and len(chunks) == 4 and stats["restarts"] == 1
    assert not psutil.pid_exists(first)


def test_injected_crash_after_tokens(tiny_path):
    async def go():
        async with WorkerClient(WorkerConfig(faults={"crash_after_tokens": 5})) as c:
            await unary(c, Call("load_model", {}, "tiny"))
            got = []
            with pytest.raises(WorkerCrashed):
                async for item in c.call(Call("generate", {"prompt": "bees", "max_tokens": 50}, "tiny")):
                    got.append(item)
            return got

    assert len(run(go())) == 5


def test_read_loop_answers_ping_while_compute_thread_is_busy(tiny_path):
    """ping (read loop) and tokenize (aux thread) are answered while the compute thread is
    busy with a long generation: both complete before that stream's next few tokens."""
    async def go():
        async with WorkerClient() as c:
            await unary(c, Call("load_model", {}, "tiny"))
            stream = c.call(Call("generate", {"prompt": "bees", "max_tokens": 3000}, "tiny"))
            await stream.__anext__()  # the compute thread is now decoding
            before = (await c.worker_stats())["tokens_out"]
            for _ in range(5):
                await c.ping()
            await unary(c, Call("tokenize", {"text": "hi"}, "tiny"))
            after = (await c.worker_stats())["tokens_out"]
            await stream.aclose()
            return before, after

    before, after = run(go())
    assert after - before < 200  # answered within a few decode steps, not after 3000 tokens


def test_worker_opens_no_socket(tiny_path):
    async def go():
        async with WorkerClient() as c:
            await unary(c, Call("load_model", {}, "tiny"))
            await generate(c, max_tokens=3)
            return psutil.Process(c.pid).net_connections(kind="all")

    assert [conn for conn in run(go()) if conn.family != __import__("socket").AF_UNIX] == []


def test_stray_prints_cannot_corrupt_the_frame_stream():
    code = ("import threading; from krmlx.worker.server import main; "
            "threading.Timer(0.3, lambda: print('STRAY OUTPUT', flush=True)).start(); main()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        codec = JsonCodec()
        time.sleep(1.0)
        out, err = proc.communicate(codec.encode(call_frame(1, "ping")), timeout=60)
    finally:
        proc.kill()
        proc.wait()
    frames = codec.feed(out)
    assert [f["kind"] for f in frames] == ["ready", "result"]
    assert b"STRAY OUTPUT" in err


def test_close_reaps_the_process():
    async def go():
        c = await WorkerClient().start()
        pid = c.pid
        await c.aclose()
        return pid

    pid = run(go())
    assert not psutil.pid_exists(pid)
