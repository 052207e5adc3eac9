"""krmlx serve, live: a real ``python -m krmlx serve --model tiny`` (ServerProcess) driven by
the official openai SDK (sync and async) and raw httpx, checked against DirectEngine.

Two servers per module: ``server`` (batched scheduler, an alias) for everything, and
``guarded`` (--max-in-flight 1, an API key) for the bound and auth. The worker-crash test
runs last (it restarts the worker)."""

import asyncio
import json
import os
import signal
import threading
import time

import httpx
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from krmlx import DirectEngine, Request
from krmlx.serve import ServerProcess

KEY = "sk-test-krmlx"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Why is the sky blue?"}]
TEXT = "Once upon a time"
LONG_CHAT = [{"role": "user", "content": "Tell me a long story."}]  # greedy: 1500+ tokens
N = 24


def _stopped(server: ServerProcess, worker_pid):
    server.stop()
    for pid in (server.pid, worker_pid):
        if pid and psutil.pid_exists(pid):
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, f"pid {pid} left running"


@pytest.fixture(scope="module")
def server(tiny_path):
    s = ServerProcess("tiny", scheduler="batched", extra_args=("--alias", "tiny-alias"))
    s.start()
    worker = s.health()["engine"]["worker_pid"]
    yield s
    _stopped(s, worker)


@pytest.fixture(scope="module")
def guarded(tiny_path):
    s = ServerProcess("tiny", scheduler="batched", api_key=KEY, extra_args=("--max-in-flight", "1"))
    s.start()
    worker = next(p.pid for p in psutil.Process(s.pid).children(recursive=True)
                  if "krmlx.worker" in " ".join(p.cmdline()))  # /health says no more with a key
    yield s
    _stopped(s, worker)


@pytest.fixture(scope="module")
def direct(tiny_path):
    """DirectEngine's greedy completions of the prompts used here."""
    async def go():
        async with DirectEngine(tiny_path) as eng:
            return {"chat": await eng.complete(Request(messages=CHAT, max_tokens=N)),
                    "text": await eng.complete(Request(TEXT, chat=False, max_tokens=N)),
                    "long": await eng.complete(Request(messages=LONG_CHAT, max_tokens=N)),
                    "qs": [await eng.complete(Request(f"Question {i}: why?", max_tokens=12))
                           for i in range(8)]}
    return asyncio.run(go())


def sdk(server, **kw):
    return openai.OpenAI(base_url=server.base_url, api_key=kw.pop("api_key", "unused"),
                         max_retries=0, timeout=60, **kw)


def asdk(server):
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)


def worker_stats(server) -> dict:
    return server.health()["engine"]


def check_timings(t: dict, completion_tokens: int):
    t = dict(t)
    timeline = t.pop("timeline", None)  # the streamed usage chunk's: the request's hops
    assert timeline is None or {"serve_received", "serve_ready", "sse_first"} <= set(timeline)
    assert set(t) == {"queue_ms", "ttft_ms", "decode_ms", "e2e_ms", "tpot_ms"}
    assert 0 <= t["queue_ms"] <= t["ttft_ms"] <= t["e2e_ms"]
    assert t["decode_ms"] == pytest.approx(t["e2e_ms"] - t["ttft_ms"])
    assert t["tpot_ms"] == pytest.approx(t["decode_ms"] / (completion_tokens - 1))


# -- the openai SDK, greedy output equal to DirectEngine's -----------------------------------

def test_sync_chat_equals_direct_with_usage_and_timings(server, direct):
    want = direct["chat"]
    r = sdk(server).chat.completions.create(model="tiny", messages=CHAT, temperature=0, max_tokens=N)
    assert r.choices[0].message.content == want.text
    assert r.choices[0].finish_reason == want.finish_reason
    u = r.usage
    assert (u.prompt_tokens, u.completion_tokens) == (want.usage.prompt_tokens, len(want.token_ids))
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details.cached_tokens == 0
    check_timings(r.model_extra["timings"], u.completion_tokens)


def test_sync_completions_stream_equals_direct(server, direct):
    want = direct["text"]
    stream = sdk(server).completions.create(model="tiny-alias", prompt=TEXT, temperature=0,
                                            max_tokens=N, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == want.finish_reason
    assert all(c.model == "tiny-alias" for c in chunks)


def test_async_chat_stream_with_usage_equals_direct(server, direct):
    want = direct["chat"]

    async def go():
        async with asdk(server) as client:
            stream = await client.chat.completions.create(
                model="tiny", messages=CHAT, temperature=0, max_tokens=N, stream=True,
                stream_options={"include_usage": True})
            return [c async for c in stream]

    chunks = asyncio.run(go())
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == len(want.token_ids)
    assert last.usage.prompt_tokens == want.usage.prompt_tokens
    check_timings(last.model_extra["timings"], last.usage.completion_tokens)
    assert all(c.usage is None for c in chunks[:-1])


def test_async_completions_body_and_timing_headers(server, direct):
    async def go():
        async with asdk(server) as client:
            return await client.completions.with_raw_response.create(
                model="tiny", prompt=TEXT, temperature=0, max_tokens=N)

    raw = asyncio.run(go())
    body = raw.parse()
    assert body.choices[0].text == direct["text"].text
    t = body.model_extra["timings"]
    check_timings(t, body.usage.completion_tokens)
    for key in ("queue_ms", "ttft_ms", "decode_ms", "e2e_ms", "tpot_ms"):
        header = raw.headers[f"x-krmlx-{key[:-3]}-ms"]
        assert float(header) == pytest.approx(t[key], abs=1e-3)


def test_models_route(server):
    ids = [m.id for m in sdk(server).models.list()]
    assert ids == ["tiny", "tiny-alias"]


# -- stop sequences ---------------------------------------------------------------------------

def test_stop_sequence_cuts_the_text_and_cancels_the_generation(server, direct):
    want = direct["long"]  # the first N tokens of a 1500+ token greedy generation
    stop = want.text[len(want.text) // 2:len(want.text) // 2 + 3]
    expected = want.text[:want.text.find(stop)]
    client = sdk(server)
    before = _stable_tokens(server)
    r = client.chat.completions.create(model="tiny", messages=LONG_CHAT, max_tokens=4000,
                                       stop=[stop, "\x00"])
    assert r.choices[0].message.content == expected
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < N
    assert r.usage.prompt_tokens == want.usage.prompt_tokens
    chunks = list(client.chat.completions.create(model="tiny", messages=LONG_CHAT, max_tokens=4000,
                                                 stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"
    # both generations were cancelled in the worker, far short of their 4000 tokens
    assert _stable_tokens(server, timeout_s=1.0) - before < 3 * N


# -- concurrency and cancel ---------------------------------------------------------------------

def test_64_concurrent_streams_complete(server, direct):
    async def one(client, i):
        stream = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"Question {i % 8}: why?"}],
            max_tokens=12, stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1].usage

    async def go():
        async with asdk(server) as client:
            return await asyncio.gather(*(one(client, i) for i in range(64)))

    before = worker_stats(server)["streams_done"]
    outs = asyncio.run(go())
    assert len(outs) == 64
    for i, (text, usage) in enumerate(outs):
        ref = direct["qs"][i % 8]
        assert usage.completion_tokens == len(ref.token_ids)
        assert text == ref.text
    after = worker_stats(server)
    assert after["streams_done"] - before == 64 and after["active_streams"] == 0
    assert server.health()["in_flight"] == 0


def _stable_tokens(server, timeout_s=5.0) -> int:
    """tokens_out once the worker has no stream open."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s = worker_stats(server)
        if s["active_streams"] == 0:
            return s["tokens_out"]
        time.sleep(0.01)
    raise AssertionError(f"the worker still streams {timeout_s} s after the client left: {s}")


def test_a_client_that_disconnects_stops_its_generation(server):
    body = {"model": "tiny", "messages": LONG_CHAT, "max_tokens": 4000, "stream": True}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            assert float(r.headers["x-krmlx-ttft-ms"]) >= float(r.headers["x-krmlx-queue-ms"]) >= 0
            events = 0
            for line in r.iter_lines():
                events += line.startswith("data: ")
                if events == 20:
                    break
            at_close = worker_stats(server)["tokens_out"]
    t_closed = time.monotonic()
    stopped = _stable_tokens(server)
    assert time.monotonic() - t_closed < 2.0
    # a few decode steps at most: the /health reads around the close take steps themselves
    assert stopped - at_close <= 10, (at_close, stopped)
    time.sleep(0.3)
    assert worker_stats(server)["tokens_out"] == stopped  # and nothing after


def test_a_non_streaming_client_that_disconnects_stops_its_generation(server):
    body = {"model": "tiny", "messages": LONG_CHAT, "max_tokens": 4000}
    before = _stable_tokens(server)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=0.5)
    stopped = _stable_tokens(server)
    assert stopped - before < 1000  # 0.5 s of decoding, not 4000 tokens
    time.sleep(0.3)
    assert worker_stats(server)["tokens_out"] == stopped


# -- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("path, content, status, param, code", [
    ("/v1/chat/completions", b"{not json", 400, None, "invalid_json"),
    ("/v1/chat/completions", b"[1, 2]", 400, None, "invalid_body"),
    ("/v1/chat/completions", b'{"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}',
     404, "model", "model_not_found"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
     400, "temperature", "invalid_value"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "n": 2}',
     400, "n", "unsupported_parameter"),
    ("/v1/chat/completions", b'{"messages": [{"role": "robot", "content": "x"}]}',
     400, "messages[0].role", "invalid_value"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": -1}', 400, "max_tokens", "invalid_value"),
    ("/v1/completions", b'{"prompt": [99999999]}', 400, "prompt_ids", "invalid_value"),
    ("/v1/nothing", b"{}", 404, None, "not_found"),
])
def test_bad_input_is_4xx_openai_style(server, path, content, status, param, code):
    r = httpx.post(server.url + path, content=content, timeout=30,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == (param, code)
    assert err["message"] and err["type"] == "invalid_request_error"


def test_the_sdk_raises_its_own_errors_for_them(server):
    client = sdk(server)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=CHAT)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=CHAT, n=2)
    assert e.value.body["param"] == "n"


# -- metrics -------------------------------------------------------------------------------------

def scrape(server) -> dict:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_in_prometheus_text_format_move(server):
    key = ("krmlx_serve_requests_total", (("route", "/v1/chat/completions"), ("status", "200")))
    before = scrape(server)
    sdk(server).chat.completions.create(model="tiny", messages=CHAT, max_tokens=4)
    httpx.post(server.url + "/v1/chat/completions", content=b"{", timeout=30,
               headers={"Content-Type": "application/json"})
    after = scrape(server)
    assert after[key] == before.get(key, 0) + 1
    bad = ("krmlx_serve_requests_total", (("route", "/v1/chat/completions"), ("status", "400")))
    assert after[bad] == before.get(bad, 0) + 1
    ttft = ("krmlx_serve_ttft_seconds_count", ())
    assert after[ttft] == before[ttft] + 1
    assert after[("krmlx_serve_tpot_seconds_count", ())] == before[("krmlx_serve_tpot_seconds_count", ())] + 1
    tokens = ("krmlx_worker_tokens_out_total", ())
    assert after[tokens] >= before[tokens] + 4
    assert after[("krmlx_serve_active_streams", ())] == 0
    assert after[("krmlx_worker_up", ())] == 1
    assert ("krmlx_worker_restarts_total", ()) in after


# -- the in-flight bound and the API key ------------------------------------------------------------

def test_api_key_guards_every_route_but_health(guarded):
    assert httpx.get(guarded.url + "/health", timeout=30).status_code == 200
    for path in ("/v1/models", "/metrics"):
        r = httpx.get(guarded.url + path, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.get(guarded.url + path, headers={"Authorization": "Bearer wrong"}, timeout=30)
        assert r.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        sdk(guarded).models.list()
    assert [m.id for m in sdk(guarded, api_key=KEY).models.list()] == ["tiny"]
    r = sdk(guarded, api_key=KEY).chat.completions.create(model="tiny", messages=CHAT, max_tokens=3)
    assert r.usage.completion_tokens == 3


def in_flight(guarded) -> float:
    text = httpx.get(guarded.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"},
                     timeout=30).text
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "krmlx_serve_in_flight")


def test_beyond_the_in_flight_bound_is_503_with_retry_after(guarded):
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "tiny", "messages": LONG_CHAT, "max_tokens": 4000, "stream": True}
    with httpx.Client(base_url=guarded.url, headers=auth, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as long:
            lines = long.iter_lines()  # kept: a dropped iterator closes the connection
            next(lines)  # the one slot is taken
            t0 = time.monotonic()
            r = http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 3})
            assert time.monotonic() - t0 < 2.0  # answered at once, not queued
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "server_busy"
            assert in_flight(guarded) == 1
    deadline = time.monotonic() + 5
    while in_flight(guarded) and time.monotonic() < deadline:
        time.sleep(0.02)
    r = sdk(guarded, api_key=KEY).chat.completions.create(model="tiny", messages=CHAT, max_tokens=3)
    assert r.choices[0].finish_reason == "length"


# -- a worker crash mid-stream (last: it restarts the worker) -------------------------------------

def test_a_worker_crash_ends_the_stream_with_an_error_and_the_server_keeps_serving(server, direct):
    client = sdk(server)
    pid = worker_stats(server)["worker_pid"]
    stream = client.chat.completions.create(model="tiny", messages=LONG_CHAT, max_tokens=4000,
                                            stream=True)
    got = 0
    with pytest.raises(openai.APIError) as e:
        for _ in stream:
            got += 1
            if got == 10:
                os.kill(pid, signal.SIGKILL)
    assert "WorkerCrashed" in str(e.value.message)
    assert e.value.body["code"] == "worker_crashed"
    r = client.chat.completions.create(model="tiny", messages=CHAT, temperature=0, max_tokens=N)
    assert r.choices[0].message.content == direct["chat"].text  # a fresh worker, same output
    health = worker_stats(server)
    assert health["up"] and health["worker_pid"] != pid and health["restarts"] >= 1
    assert scrape(server)[("krmlx_worker_restarts_total", ())] >= 1


def test_a_worker_crash_during_a_non_streaming_request_is_502(server):
    pid = worker_stats(server)["worker_pid"]
    result = {}

    def call():
        result["r"] = httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
            "model": "tiny", "messages": LONG_CHAT, "max_tokens": 4000})

    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 20
    while worker_stats(server).get("active_streams") != 1:
        assert time.monotonic() < deadline, "the request never reached the worker"
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    t.join(30)
    r = result["r"]
    assert r.status_code == 502 and r.json()["error"]["code"] == "worker_crashed"
    assert json.loads(r.text)["error"]["type"] == "server_error"
    r = sdk(server).chat.completions.create(model="tiny", messages=CHAT, max_tokens=3)
    assert r.usage.completion_tokens == 3


# -- the bench's HTTP target and the managed process's failures -----------------------------------

def test_the_bench_http_target_times_a_served_request_like_an_engine(server, direct):
    from krmlx.bench.targets import HttpTarget

    async def go():
        target = await HttpTarget(server.base_url).start("tiny")
        try:
            return (await target.generate(Request(messages=CHAT, max_tokens=N)),
                    await target.generate(Request(TEXT, chat=False, max_tokens=N)), target.model_id)
        finally:
            await target.stop()

    chat, text, model_id = asyncio.run(go())
    assert model_id == "tiny"  # picked from the server's /v1/models
    assert chat.text == direct["chat"].text and text.text == direct["text"].text
    assert chat.usage == direct["chat"].usage and chat.finish_reason == direct["chat"].finish_reason
    assert chat.extra["usage_source"] == "server"
    assert 0 < chat.ttft_ms <= chat.e2e_ms and len(chat.token_times_s) > 1
    assert chat.extra["timings"]["ttft_ms"] < chat.ttft_ms  # the server's is inside


@pytest.mark.parametrize("kw, message", [
    ({"phases": "bogus"}, "unknown phase"),
    ({"model": "no-such-model"}, "no-such-model"),
])
def test_a_server_that_cannot_start_raises_with_its_log_and_leaves_nothing(tiny_path, kw, message):
    s = ServerProcess(**{"model": "tiny", **kw}, ready_timeout_s=60)
    with pytest.raises(RuntimeError, match="exited with code") as e:
        s.start()
    assert message in str(e.value)
    assert s.proc.poll() is not None and not s.log_path.exists()
