"""krmlx serve under hostile clients, live (``python -m krmlx serve --model tiny``): slots
held only for work, bounded header/body reads, limits checked in the front, a graceful
stop, quiet logs, Content-Type and Authorization hygiene."""

import json
import signal
import socket
import threading
import time

import httpx
import pytest

from krmlx.serve import ServerProcess

KEY = "sk-hostile"
JSON = {"Content-Type": "application/json"}
HELLO = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
LONG_CHAT = [{"role": "user", "content": "Tell me a long story."}]  # greedy: 1500+ tokens
CONTEXT = 4096  # the synthetic models' max_position_embeddings


def stalled_body(port: int) -> socket.socket:
    """A POST whose headers promise 1000 bytes of body, of which one is sent."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
              b"application/json\r\nContent-Length: 1000\r\n\r\n{")
    return s


def closed_within(s: socket.socket, timeout_s: float) -> tuple[bool, bytes]:
    """Whether the server closed ``s`` within ``timeout_s`` (and what it sent first)."""
    s.settimeout(timeout_s)
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
        return True, got
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        return True, got


@pytest.fixture(scope="module")
def server(tiny_path):
    s = ServerProcess("tiny", scheduler="batched", keep_log=True,
                      extra_args=("--max-in-flight", "4", "--header-timeout", "1.5",
                                  "--body-timeout", "1.5", "--max-messages", "64",
                                  "--max-prompt-chars", "20000"))
    s.start()
    yield s
    s.stop()
    s.log_path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def guarded(tiny_path):
    s = ServerProcess("tiny", scheduler="batched", api_key=KEY)
    s.start()
    yield s
    s.stop()


def post(server, body, path="/v1/chat/completions", **kw):
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


# -- slots only for work; bounded reads ---------------------------------------------------------

def test_stalled_bodies_hold_no_slot_and_get_408(server):
    socks = [stalled_body(server.port) for _ in range(8)]  # twice the in-flight bound
    try:
        time.sleep(0.3)
        r = post(server, HELLO)
        assert r.status_code == 200, r.text  # not 503 server_busy
        closed, got = closed_within(socks[0], 5)
        assert closed and got.startswith(b"HTTP/1.1 408"), got[:200]
        assert b"body_timeout" in got
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("sent", [b"", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"],
                         ids=["silent", "slowloris"])
def test_a_connection_without_complete_headers_is_closed(server, sent):
    s = socket.create_connection(("127.0.0.1", server.port))
    try:
        s.sendall(sent)
        t0 = time.monotonic()
        closed, _ = closed_within(s, 6)
        assert closed, "the connection was still open 6 s later"
        assert time.monotonic() - t0 < 4
    finally:
        s.close()
    assert post(server, HELLO).status_code == 200


# -- limits before work ------------------------------------------------------------------------

@pytest.mark.parametrize("body, param, code", [
    ({"messages": [{"role": "user", "content": ""}] * 65, "max_tokens": 1}, "messages",
     "too_many_messages"),
    ({"messages": [{"role": "user", "content": "a" * 20001}], "max_tokens": 1}, "messages",
     "prompt_too_long"),
    ({"messages": [{"role": "user", "content": "bees " * 3000}], "max_tokens": 1}, "messages",
     "context_length_exceeded"),
])
def test_limits_are_400s_naming_the_limit(server, body, param, code):
    r = post(server, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == (param, code)


def test_max_tokens_is_capped_by_the_context_left(server):
    r = post(server, {"prompt": [5] * (CONTEXT - 3), "max_tokens": 500}, "/v1/completions")
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] == CONTEXT - 3
    assert usage["completion_tokens"] <= 3
    r = post(server, {"prompt": [5] * CONTEXT, "max_tokens": 1}, "/v1/completions")
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


# -- quiet logs ----------------------------------------------------------------------------------

def test_an_aborted_upload_is_one_quiet_line(server):
    before = server.log_path.read_text()
    s = stalled_body(server.port)
    time.sleep(0.3)
    s.close()
    time.sleep(0.5)
    new = server.log_path.read_text()[len(before):]
    assert "Traceback" not in new and " ERROR " not in new, new
    assert [ln for ln in new.splitlines() if "/v1/chat/completions 499" in ln], new


# -- Content-Type, auth ----------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Content-Type": "text/plain"},
                                     {"Content-Type": "application/x-www-form-urlencoded"}])
def test_posts_need_json_content_type(server, headers):
    r = httpx.post(server.url + "/v1/chat/completions", content=json.dumps(HELLO),
                   headers=headers, timeout=30)
    assert r.status_code == 415, r.text
    assert r.json()["error"]["code"] == "unsupported_media_type"


def test_bearer_is_case_insensitive_and_two_authorizations_are_refused(guarded):
    for scheme in ("Bearer", "bearer", "BEARER"):
        r = post(guarded, HELLO, headers={"Authorization": f"{scheme} {KEY}"})
        assert r.status_code == 200, (scheme, r.text)
    r = httpx.post(guarded.url + "/v1/chat/completions", content=json.dumps(HELLO),
                   headers=[("Content-Type", "application/json"), ("Authorization", "Bearer no"),
                            ("Authorization", f"Bearer {KEY}")], timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "duplicate_authorization"


def test_health_with_a_key_says_only_healthy(guarded):
    r = httpx.get(guarded.url + "/health", timeout=30)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


# -- the graceful stop ------------------------------------------------------------------------

def read_stream(url: str, body: dict, out: list, started: threading.Event):
    lines = []
    try:
        with httpx.stream("POST", url, json=body, timeout=60) as r:
            started.set()
            for line in r.iter_lines():
                if line.startswith("data: "):
                    lines.append(line[6:])
        out.append(("ok", lines))
    except httpx.HTTPError as e:
        out.append((type(e).__name__, lines))


def test_sigterm_lets_short_requests_finish_then_ends_the_rest_cleanly(tiny_path):
    s = ServerProcess("tiny", scheduler="batched", keep_log=True, stop_timeout_s=20,
                      extra_args=("--graceful-timeout", "1.0"))
    s.start()
    try:
        url = s.url + "/v1/chat/completions"
        long_body = {"messages": LONG_CHAT, "max_tokens": 3500, "stream": True}
        results, started = [], []
        threads = []
        for body in [long_body] * 3 + [{**long_body, "max_tokens": 40}]:
            ev = threading.Event()
            t = threading.Thread(target=read_stream, args=(url, body, results, ev))
            t.start()
            threads.append(t)
            started.append(ev)
        plain = {}

        def non_streaming():
            r = httpx.post(url, json={"messages": LONG_CHAT, "max_tokens": 3500}, timeout=60)
            plain.update(status=r.status_code, body=r.json())

        tp = threading.Thread(target=non_streaming)
        tp.start()
        assert all(ev.wait(30) for ev in started)
        time.sleep(0.3)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):  # no new connections
            httpx.get(s.url + "/health", timeout=5)
        for t in (*threads, tp):
            t.join(30)
        code = s.proc.wait(20)
        elapsed = time.monotonic() - t0
    finally:
        code = s.stop()
        log = s.log_path.read_text()
        s.log_path.unlink(missing_ok=True)
    assert code == 0, log[-3000:]
    assert elapsed < 1.0 + 5, elapsed
    assert all(kind == "ok" for kind, _ in results), results
    ended = [lines for _, lines in results if '"server_shutting_down"' in "".join(lines)]
    finished = [lines for _, lines in results if '"server_shutting_down"' not in "".join(lines)]
    assert len(ended) == 3 and len(finished) == 1
    for lines in results:
        lines = lines[1]
        assert lines[-1] == "[DONE]"
    for lines in ended:
        assert json.loads(lines[-2])["error"]["code"] == "server_shutting_down"
    assert json.loads(finished[0][-2])["choices"][0]["finish_reason"] in ("length", "stop")
    assert plain["status"] == 503 and plain["body"]["error"]["code"] == "server_shutting_down"
    assert "Traceback" not in log, log[-3000:]
    assert " 499 " not in log  # ended by the server: not counted as clients gone
    assert log.count("/v1/chat/completions 503") == 4


@pytest.mark.parametrize("field, value", [("header_timeout_s", 0), ("body_timeout_s", -1),
                                          ("graceful_timeout_s", float("nan")),
                                          ("max_messages", 0), ("max_prompt_chars", True),
                                          ("max_prompt_tokens", 0)])
def test_limits_and_timeouts_are_checked(field, value):
    from krmlx.errors import ConfigError
    from krmlx.serve import ServeSettings

    with pytest.raises(ConfigError, match=field):
        ServeSettings("tiny", **{field: value})
