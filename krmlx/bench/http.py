"""The bench's client for OpenAI-compatible servers: one streamed request, timed here.

:class:`OpenAIClient` sends a :class:`~krmlx.types.Request` to ``/v1/chat/completions`` (a
chat request: the server applies its chat template) or ``/v1/completions`` (``chat=False``:
the prompt as written), always streamed (SSE, ``stream_options.include_usage``), and returns
a :class:`~krmlx.types.Completion` timed on this side:

- ``t_start_s``: just before the request is sent; TTFT at the first *content-bearing* chunk
  (role-only or empty deltas are not a token);
- one arrival time per content chunk (a server that coalesces tokens sends several per
  chunk: ITL is then per chunk, and TPOT uses the token count, see below);
- token counts from the server's ``usage`` when it sends it (``usage_source="server"``),
  else from the model's tokenizer on the text (``"tokenizer"``), else one per chunk
  (``"chunks"``); the source is in ``Completion.extra``, next to the server's own timings
  when it reports any (krmlx serve's ``timings``, rapid-mlx's ``metrics``);
- ``token_ids`` are empty (a server sends text): outputs are compared as text;
- E2E ends at ``[DONE]`` (or the end of the stream), not when the server closes the body
  (rapid-mlx holds it ~0.4 s longer).

Transport: one ``httpx.AsyncClient`` per target, HTTP/1.1 with keep-alive (a pool of
``max_connections``, reused across requests), SSE parsed by ``httpx-sse``; :meth:`describe`
says so for the results file. A connection that fails *before any response* (refused,
reset, closed unanswered: e.g. mlx_lm.server's listen backlog of 5, socketserver's default,
resets connections beyond it when many clients connect at once) is tried again, up to
``connect_retries`` times (2, as the openai SDK's default ``max_retries``) 0.1 s apart, timed
from the first attempt; ``Completion.extra["connect_retries"]`` counts them. Once a status
line has arrived nothing is retried. Errors: a non-2xx answer raises :class:`HttpError` with the
status and the server's error message; a connection failure raises ``httpx`` errors
(the runner records them); an ``error`` event in the stream raises HttpError.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx
import orjson
from httpx_sse import aconnect_sse
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from ..errors import KrmlxError
from ..timeline import relative, trimmed
from ..types import Chunk, Completion, Usage

DEFAULT_TIMEOUT_S = 600.0
# a connection that failed before any response: the request was not served, send it again
UNANSWERED = (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


class HttpError(KrmlxError):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass
class Body:
    """A request's JSON body and the route it goes to."""

    path: str
    json: dict


def body_of(request, model_id: str, *, seed_default: int | None = None) -> Body:
    """The OpenAI body for a krmlx Request: chat (messages or system + prompt) or text
    completion (``chat=False``). ``prompt_ids`` have no OpenAI form here: ValueError."""
    if request.prompt_ids is not None:
        raise ValueError("prompt_ids: an OpenAI-compatible server takes text, not token ids")
    common = {"model": model_id, "max_tokens": request.max_tokens,
              "temperature": request.temperature, "stream": True,
              "stream_options": {"include_usage": True}}
    if request.top_p != 1.0:
        common["top_p"] = request.top_p
    seed = request.seed if request.seed is not None else seed_default
    if seed is not None:
        common["seed"] = seed
    if not request.chat:
        return Body("/completions", {**common, "prompt": request.prompt})
    if request.messages is not None:
        messages = [dict(m) for m in request.messages]
    else:
        messages = [{"role": "user", "content": request.prompt}]
    if request.system:
        messages.insert(0, {"role": "system", "content": request.system})
    return Body("/chat/completions", {**common, "messages": messages})


def chunk_text(event: dict) -> str:
    """The text a streamed chunk adds (chat ``delta.content`` or completions ``text``)."""
    out = []
    for choice in event.get("choices") or ():
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(text, str):
            out.append(text)
    return "".join(out)


def finish_of(event: dict) -> str | None:
    for choice in event.get("choices") or ():
        if choice.get("finish_reason"):
            return choice["finish_reason"]
    return None


class OpenAIClient:
    """Streams requests to one OpenAI-compatible base URL (``http://host:port/v1``)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, max_connections: int = 256,
                 timeout_s: float = DEFAULT_TIMEOUT_S, count_tokens=None,
                 connect_retries: int = 2):
        self.connect_retries = connect_retries
        self.base_url = base_url.rstrip("/")
        self.count_tokens = count_tokens  # text -> int, when the server sends no usage
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=max_connections,
                              max_keepalive_connections=max_connections)
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=headers, limits=limits,
                                      timeout=httpx.Timeout(timeout_s, connect=30.0))
        self.max_connections = max_connections

    def describe(self) -> dict:
        return {"client": f"httpx {httpx.__version__} + httpx-sse", "http": "HTTP/1.1",
                "keep_alive": True, "max_connections": self.max_connections,
                "connect_retries": self.connect_retries,
                "retried": "a connection that failed before any response, 0.1 s apart, timed "
                           "from the first attempt",
                "ttft": "first content-bearing SSE chunk"}

    async def models(self) -> list[str]:
        r = await self.http.get("/models")
        if r.status_code != 200:
            raise HttpError(r.status_code, r.text[:300])
        return [m.get("id") for m in r.json().get("data", []) if isinstance(m, dict)]

    async def generate(self, request, model_id: str) -> Completion:
        body = body_of(request, model_id)
        chunks: list[Chunk] = []
        usage, finish, server_timings = None, None, {}
        seen: dict[str, float] = {}  # httpcore's trace: when the request went out, headers came

        async def trace(event: str, _info) -> None:
            if event in HTTP_POINTS:
                seen[HTTP_POINTS[event]] = time.perf_counter()

        t0 = time.perf_counter()
        retries = 0
        async with AsyncExitStack() as stack:
            async for attempt in AsyncRetrying(retry=retry_if_exception_type(UNANSWERED),
                                               stop=stop_after_attempt(1 + self.connect_retries),
                                               wait=wait_fixed(0.1), reraise=True):
                with attempt:
                    retries = attempt.retry_state.attempt_number - 1
                    source = await stack.enter_async_context(
                        aconnect_sse(self.http, "POST", body.path, json=body.json,
                                     extensions={"trace": trace}))
            response = source.response
            if response.status_code != 200:
                await response.aread()
                raise HttpError(response.status_code, _error_message(response))
            t_end = None
            async for sse in source.aiter_sse():
                data = sse.data
                if data == "[DONE]":  # E2E here: a server may hold the body open after it
                    t_end = time.perf_counter()
                    break
                now = time.perf_counter()
                event = orjson.loads(data)
                if "error" in event:
                    err = event["error"]
                    raise HttpError(500, err.get("message", str(err)) if isinstance(err, dict) else str(err))
                text = chunk_text(event)
                if text:
                    chunks.append(Chunk(-1, text, len(chunks), now))
                finish = finish_of(event) or finish
                if event.get("usage"):
                    usage = event["usage"]
                for key in ("timings", "metrics"):
                    if isinstance(event.get(key), dict):
                        server_timings[key] = event[key]
            if t_end is None:
                t_end = time.perf_counter()
        text = "".join(c.text for c in chunks)
        if usage:
            out_tokens, in_tokens, source_ = (usage.get("completion_tokens", len(chunks)),
                                              usage.get("prompt_tokens", 0), "server")
        elif self.count_tokens is not None:
            out_tokens, in_tokens, source_ = self.count_tokens(text), 0, "tokenizer"
        else:
            out_tokens, in_tokens, source_ = len(chunks), 0, "chunks"
        done = Completion(text=text, token_ids=(), finish_reason=finish or "unknown",
                          usage=Usage(int(in_tokens), int(out_tokens)), t_start_s=t0,
                          token_times_s=tuple(c.t_s for c in chunks), t_end_s=t_end,
                          request_id=request.id)
        server_tl = (server_timings.get("timings") or {}).pop("timeline", None)
        done.extra.update({"usage_source": source_, "chunks": len(chunks),
                           "connect_retries": retries, **server_timings})
        done.extra.update(client_timeline(seen, chunks, server_tl, t0, t_end))
        cached = ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is not None:
            done.extra["cached_prompt_tokens"] = cached
        return done

    async def aclose(self) -> None:
        await self.http.aclose()


HTTP_POINTS = {"http11.send_request_body.complete": "http_sent",
               "http11.receive_response_headers.complete": "http_headers"}


def client_timeline(seen: dict, chunks: list, server: dict | None, t0: float, t_end: float) -> dict:
    """The record's ``timeline`` and ``token_hops`` (:mod:`krmlx.timeline`): this client's
    points (request sent, headers in, each content event) and, where the server sent its
    own timeline (krmlx serve, the stub), the server's, on the same clock: taken only when
    every one of its points lies within this request's own span (a server on another host
    has another clock), and then without ``http_headers`` on the chain where the server's
    reach its first content event (``sse_first``: krmlx serve answers with headers after
    its first token; the stub's points, :mod:`krmlx.bench.stub`, are off the chain)."""
    mine = {**seen, "http_content": [c.t_s for c in chunks]}
    if isinstance(server, dict):
        token = server.pop("token_hops", {})
        points = [t for v in server.values() for t in (v if isinstance(v, list) else [v])
                  if isinstance(t, (int, float))]
        if points and all(t0 <= t <= t_end for t in points):
            if "sse_first" in server:
                mine.pop("http_headers", None)
            return {"timeline": trimmed(relative({**server, **mine}, t0)), "token_hops": token}
        mine["server_clock"] = None  # the server's points fall outside: not this host's clock
    return {"timeline": trimmed(relative(mine, t0)), "token_hops": {}}


def _error_message(response: httpx.Response) -> str:
    try:
        err = response.json().get("error")
        return err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        return response.text[:300]
