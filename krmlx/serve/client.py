"""HttpEngine: an OpenAI-compatible server seen from its client, with the engines' API.

``complete(request)`` streams the request through the official openai SDK and returns a
:class:`~krmlx.types.Completion` timed on this side (``t_start_s`` before the call, one
token time per chunk that carries text), so TTFT / TPOT / E2E follow krmlx's definitions
and :func:`krmlx.bench.runner.run_interleaved` and :mod:`krmlx.bench.metrics` treat the HTTP
path like any engine::

    async with ServerProcess("tiny") as server, HttpEngine(server.base_url, "tiny") as http:
        done = await http.complete(Request("Why is the sky blue?"))
        done.ttft_ms, done.extra["server_timings"]["ttft_ms"]  # client side, server side

Contract: ``usage`` is the server's (``stream_options.include_usage``); ``token_ids`` is
empty (the API sends text, not ids); a Request with ``chat`` (the default) or ``messages``
goes to ``/v1/chat/completions``, one with ``chat=False`` or ``prompt_ids`` to
``/v1/completions``. SDK errors are raised as the SDK raises them. Needs the ``openai``
package (the dev extra).
"""

from __future__ import annotations

import time

from ..base import BaseEngine
from ..types import Completion, Request, Usage


class HttpEngine(BaseEngine):
    def __init__(self, base_url: str, model: str, *, api_key: str = "unused",
                 name: str = "http", timeout_s: float = 300.0):
        self.base_url, self.model_name, self.api_key = base_url, model, api_key
        self.name, self.timeout_s = name, timeout_s
        self.client = None

    async def start(self) -> HttpEngine:
        if self.client is None:
            import openai

            self.client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key,
                                             max_retries=0, timeout=self.timeout_s)
        return self

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    def _args(self, request: Request) -> tuple[object, dict]:
        args = {"model": request.model or self.model_name, "max_tokens": request.max_tokens,
                "temperature": request.temperature, "stream": True,
                "stream_options": {"include_usage": True}}
        if request.seed is not None:
            args["seed"] = request.seed
        if request.top_p != 1.0:
            args["top_p"] = request.top_p
        if request.messages is not None or (request.chat and request.prompt_ids is None):
            messages = list(request.messages or [{"role": "user", "content": request.prompt}])
            if request.system:
                messages.insert(0, {"role": "system", "content": request.system})
            return self.client.chat.completions, {**args, "messages": messages}
        prompt = list(request.prompt_ids) if request.prompt_ids is not None else request.prompt
        return self.client.completions, {**args, "prompt": prompt}

    async def complete(self, request: Request) -> Completion:
        if self.client is None:
            raise RuntimeError("HttpEngine is not started: use 'async with' or await start()")
        endpoint, args = self._args(request)
        t0 = time.perf_counter()
        stream = await endpoint.create(**args)
        parts, times, usage, timings, finish = [], [], None, None, "error"
        async with stream:
            async for event in stream:
                if event.choices:
                    choice = event.choices[0]
                    text = choice.delta.content if hasattr(choice, "delta") else choice.text
                    if text:
                        times.append(time.perf_counter())
                        parts.append(text)
                    finish = choice.finish_reason or finish
                if event.usage is not None:
                    usage = event.usage
                    timings = (event.model_extra or {}).get("timings")
        t_end = time.perf_counter()
        done = Completion("".join(parts), (), finish,
                          Usage(usage.prompt_tokens if usage else 0,
                                usage.completion_tokens if usage else len(times)),
                          t0, tuple(times), t_end, request.id)
        done.extra["server_timings"] = timings or {}
        return done

    async def tokenize(self, text: str, **_) -> list[int]:
        raise NotImplementedError("the OpenAI API has no tokenize route")
