"""A stub OpenAI-compatible server that streams prepared tokens on a fixed schedule: its
only job is to calibrate the bench's HTTP client (the floor under any HTTP measurement).

    python -m krmlx.bench.stub --port 8123 [--ttft-ms 20] [--interval-ms 2] [--tokens-per-event 1]

``POST /v1/chat/completions`` (and ``/v1/completions``), streamed: after ``ttft_ms`` the
first token, then one token per ``interval_ms`` (0: as fast as it can write), each token
the text ``"tok "`` in its own SSE chunk, ``max_tokens`` of them, then a usage chunk and
``[DONE]``. The request may override the schedule with ``"stub": {"ttft_ms", "interval_ms",
"tokens_per_event"}`` (the last: that many tokens in each SSE chunk, as servers that
coalesce send them; the usage chunk still counts every token).
What the client then measures beyond the schedule (TTFT - ttft_ms, each gap - interval_ms,
its CPU per chunk) is the client's own cost. ``GET /v1/models``, ``GET /health``.

The usage chunk carries the stub's own points (``time.perf_counter()`` seconds, the
clock the client reads on the same host) as krmlx serve sends its own, in
``timings.timeline``: ``stub_received`` (the request reached the app), ``stub_headers``
(the response headers written) and ``stub_first`` (the first content event handed to the
server to write). Against the client's ``http_headers`` and first ``http_content`` they
measure the client's own share of its hops (:func:`krmlx.bench.workloads.micro.client_hops`).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

MODEL_ID = "stub"
TOKEN = "tok "


def make_app(ttft_ms: float = 20.0, interval_ms: float = 2.0, tokens_per_event: int = 1) -> Starlette:
    async def models(_request: Request):
        return JSONResponse({"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]})

    async def health(_request: Request):
        return JSONResponse({"status": "ok"})

    async def complete(request: Request):
        points = {"stub_received": time.perf_counter()}
        body = await request.json()
        n = int(body.get("max_tokens") or 16)
        opts = body.get("stub") or {}
        first = float(opts.get("ttft_ms", ttft_ms)) / 1e3
        gap = float(opts.get("interval_ms", interval_ms)) / 1e3
        per_event = max(1, int(opts.get("tokens_per_event", tokens_per_event)))
        chat = request.url.path.endswith("/chat/completions")

        def chunk(text: str | None, finish: str | None = None, usage: dict | None = None,
                  timings: dict | None = None) -> bytes:
            choice = ({"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}
                      if chat else {"index": 0, "text": text or "", "finish_reason": finish})
            event = {"id": "stub", "object": "chat.completion.chunk", "model": MODEL_ID,
                     "choices": [] if usage else [choice]}
            if usage:
                event.update({"usage": usage, "timings": timings})
            return b"data: " + orjson.dumps(event) + b"\n\n"

        async def stream():  # starts once the response headers are written
            t0 = points["stub_headers"] = time.perf_counter()
            events = -(-n // per_event)
            for i in range(events):
                due = t0 + first + i * gap
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                k = min(per_event, n - i * per_event)
                event = chunk(TOKEN * k, "length" if i == events - 1 else None)
                points.setdefault("stub_first", time.perf_counter())
                yield event
            yield chunk(None, usage={"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1},
                        timings={"timeline": points})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/models", models), Route("/health", health),
                             Route("/v1/chat/completions", complete, methods=["POST"]),
                             Route("/v1/completions", complete, methods=["POST"])])


def main(argv=None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--interval-ms", type=float, default=2.0)
    p.add_argument("--tokens-per-event", type=int, default=1)
    a = p.parse_args(argv)
    uvicorn.run(make_app(a.ttft_ms, a.interval_ms, a.tokens_per_event), host=a.host, port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
