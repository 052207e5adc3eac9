"""One HTTP request's generation: an engine stream turned into text pieces, with stop
sequences applied, usage counted and server-side timings taken.

Contract:

- :class:`Generation` wraps ``engine.stream(request)``. :meth:`Generation.next_text` returns
  the next non-empty piece of text to hand out, or None once the generation is over; after
  that ``finish_reason``, :meth:`usage` and :meth:`timings` are final. Engine errors are
  raised from ``next_text`` as the engine raised them (:func:`api_error` maps them).
- Stop sequences (:class:`StopMatcher`): text is handed out only once it can no longer be
  the start of a stop string; when one appears, the text before it is the last piece, the
  engine stream is closed (the worker cancels the generation) and the finish reason is
  "stop". ``completion_tokens`` then counts the tokens received until then; the prompt's
  token count, which the worker reports only at the end of a stream, is that of the
  request's token ids (encoded in the front), else ``count_prompt``'s (the same template
  and tokenizer, :class:`krmlx.serve.intake.PromptEncoder`).
- :meth:`Generation.aclose` closes the engine stream (idempotent): a caller that stops
  early (a client gone) cancels the generation in the worker this way.
- Timings (``*_ms``, from the server's receipt of the request, ``t_recv_s``): ``queue_ms``
  (receipt -> the engine call: body read, parsing, the in-flight slot), ``ttft_ms``
  (receipt -> first token from the engine), ``decode_ms`` (first token -> end), ``e2e_ms``
  (receipt -> end), ``tpot_ms`` ((e2e - ttft) / (tokens - 1), vLLM's definition), computed
  by :class:`krmlx.types.Completion`.
"""

from __future__ import annotations

import time

from ..errors import (
    BadRequest,
    CallTimeout,
    CircuitOpen,
    KrmlxError,
    TransientError,
    UnknownModel,
    WorkerCrashed,
)
from ..timeline import relative, token_hops, trimmed
from ..types import Completion, Usage
from .openai_api import ApiError, ParsedRequest, param_of


class StopMatcher:
    """Finds stop strings in streamed text, holding back only what could start one."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to hand out now, whether a stop string was found)."""
        if not self.stops:
            return text, False
        buf = self.pending + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return buf[:min(hits)], True
        keep = 0  # the longest tail of buf that is a proper prefix of some stop string
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:k]):
                    keep = k
                    break
        self.pending = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Generation:
    def __init__(self, engine, parsed: ParsedRequest, t_recv_s: float, count_prompt=None):
        self.parsed = parsed
        self.t_recv_s = t_recv_s
        self.count_prompt = count_prompt
        self.t_engine_s = time.perf_counter()
        self.stream = engine.stream(parsed.request)
        self.matcher = StopMatcher(parsed.stop)
        self.token_ids: list[int] = []
        self.token_times_s: list[float] = []
        self.text_parts: list[str] = []
        self.finish_reason: str | None = None
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.t_end_s: float | None = None
        self.t_sse_first: float | None = None  # set by the app as the first content event goes out
        self._closed = False

    @property
    def done(self) -> bool:
        return self.t_end_s is not None

    async def next_text(self) -> str | None:
        while not self.done:
            try:
                chunk = await self.stream.__anext__()
            except StopAsyncIteration:
                s = self.stream
                text, stopped = self.matcher.feed(s.tail)
                text += "" if stopped else self.matcher.flush()
                self.finish_reason = "stop" if stopped else s.finish_reason or "stop"
                self.prompt_tokens = s.prompt_tokens or 0
                self.cached_tokens = int(s.info.get("cached_prompt_tokens") or 0)
                self._end()
                if text:
                    return self._hand_out(text)
                return None
            self.token_ids.append(chunk.token_id)
            self.token_times_s.append(chunk.t_s)
            text, stopped = self.matcher.feed(chunk.text)
            if stopped:
                await self.aclose()  # cancels the generation in the worker
                self.finish_reason = "stop"
                self._end()
                ids = self.parsed.request.prompt_ids
                if ids:  # encoded in the front (the usual case)
                    self.prompt_tokens = len(ids)
                elif self.count_prompt is not None:
                    self.prompt_tokens = await self.count_prompt(self.parsed.request.to_params())
            if text:
                return self._hand_out(text)
        return None

    def _hand_out(self, text: str) -> str:
        self.text_parts.append(text)
        return text

    def _end(self) -> None:
        self.t_end_s = time.perf_counter()

    async def run(self) -> str:
        """The whole text (the non-streaming path)."""
        while await self.next_text() is not None:
            pass
        return self.text

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self.stream.aclose()

    def completion(self) -> Completion:
        return Completion(self.text, tuple(self.token_ids), self.finish_reason or "error",
                          Usage(self.prompt_tokens, len(self.token_ids)), self.t_recv_s,
                          tuple(self.token_times_s), self.t_end_s or time.perf_counter())

    def timeline(self) -> dict:
        """This request's hops on the shared clock (absolute ``perf_counter`` seconds,
        :mod:`krmlx.timeline`): the server's own (received, ready, first SSE event) around
        the engine's (its client's and worker's), per-token lists cut to the first
        KEEP_TOKENS and the per-token hop means (ms) over all of them in ``token_hops``."""
        engine = self.stream.info.get("timeline") if isinstance(self.stream.info, dict) else None
        tl = {**(engine or {}), "serve_received": self.t_recv_s, "serve_ready": self.t_engine_s,
              "sse_first": self.t_sse_first}
        return {**trimmed(tl), "token_hops": token_hops(relative(tl, self.t_recv_s))}

    def usage(self) -> dict:
        from .openai_api import usage_body

        return usage_body(self.prompt_tokens, len(self.token_ids), self.cached_tokens)

    def timings(self) -> dict:
        c = self.completion()
        ttft = c.ttft_ms
        return {"queue_ms": (self.t_engine_s - self.t_recv_s) * 1e3, "ttft_ms": ttft,
                "decode_ms": None if ttft is None else c.e2e_ms - ttft, "e2e_ms": c.e2e_ms,
                "tpot_ms": c.tpot_ms}


def api_error(exc: KrmlxError) -> ApiError:
    """The HTTP answer for an engine error (raised before or instead of any text)."""
    name = type(exc).__name__
    if isinstance(exc, BadRequest):
        return ApiError(400, str(exc), param=param_of(exc), code="invalid_value")
    if isinstance(exc, UnknownModel):
        return ApiError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, CircuitOpen):
        return ApiError(503, f"{name}: {exc}", type="server_error", code="circuit_open",
                        headers={"Retry-After": "1"})
    if isinstance(exc, TransientError):
        return ApiError(503, f"{name}: {exc}", type="server_error", code="transient",
                        headers={"Retry-After": "1"})
    if isinstance(exc, WorkerCrashed):
        return ApiError(502, f"{name}: {exc}", type="server_error", code="worker_crashed")
    if isinstance(exc, CallTimeout):
        return ApiError(504, f"{name}: {exc}", type="server_error", code="timeout")
    return ApiError(500, f"{name}: {exc}", type="server_error", code="engine_error")
