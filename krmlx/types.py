"""The values that flow through krmlx: requests in, chunks and completions out.

Times are ``time.perf_counter()`` seconds (``*_s``) on the caller's clock; derived
metrics carry their unit in the name (``ttft_ms``, ``e2e_ms``, ``decode_tps``) and
follow vLLM's bench definitions: TTFT = first token - request start; ITL = each gap
between consecutive tokens; TPOT = (E2E - TTFT) / (N - 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import BadRequest
from .timeline import for_record
from .validate import check_generate_params, check_messages, check_top_p

DEFAULT_REQUEST_MAX_TOKENS = 50


@dataclass(frozen=True)
class Request:
    """One generation request. ``prompt`` is user text (chat template applied when
    ``chat`` is true); ``messages`` (``{"role", "content"}`` maps, roles system / user /
    assistant) is a whole conversation put through the chat template instead of
    ``system`` + ``prompt``; ``prompt_ids`` bypasses templating and tokenization.
    ``top_p`` is nucleus sampling (1.0: off; only used with a temperature > 0)."""

    prompt: str = ""
    max_tokens: int = DEFAULT_REQUEST_MAX_TOKENS
    temperature: float = 0.0
    chat: bool = True
    system: str | None = None
    prompt_ids: tuple[int, ...] | None = None
    model: str | None = None
    seed: int | None = None
    id: str = ""
    top_p: float = 1.0
    messages: tuple[dict, ...] | None = field(default=None, hash=False)

    def __post_init__(self):
        """Validated once, here, by the rules the worker applies too
        (:func:`krmlx.validate.check_generate_params`): BadRequest names the field."""
        if self.messages is not None:
            object.__setattr__(self, "messages", check_messages("messages", self.messages))
        if self.prompt_ids is not None:
            if not isinstance(self.prompt_ids, (list, tuple)):
                raise BadRequest(f"prompt_ids: must be a sequence of token ids, "
                                 f"got {type(self.prompt_ids).__name__}")
            object.__setattr__(self, "prompt_ids", tuple(self.prompt_ids))
        check_top_p("top_p", self.top_p)  # to_params leaves a top_p of 1 out
        check_generate_params(self.to_params())
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise BadRequest(f"model: must be a non-empty string or None, got {self.model!r}")
        if not isinstance(self.id, str):
            raise BadRequest(f"id: must be a string, got {type(self.id).__name__}")

    def to_params(self) -> dict:
        """The request as plain data for the wire."""
        params = {
            "prompt": self.prompt,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "chat": self.chat,
        }
        if self.system is not None:
            params["system"] = self.system
        if self.prompt_ids is not None:
            params["prompt_ids"] = list(self.prompt_ids)
        if self.seed is not None:
            params["seed"] = self.seed
        if self.top_p != 1.0:
            params["top_p"] = self.top_p
        if self.messages is not None:
            params["messages"] = [dict(m) for m in self.messages]
        return params


class Chunk(NamedTuple):
    """One streamed token: its id, the new text it adds, and when it arrived.

    A NamedTuple rather than a frozen dataclass: one is built per token on the hot path."""

    token_id: int
    text: str
    index: int
    t_s: float


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Completion:
    """A finished request with its timings."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    usage: Usage
    t_start_s: float
    token_times_s: tuple[float, ...]
    t_end_s: float
    request_id: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def ttft_ms(self) -> float | None:
        return (self.token_times_s[0] - self.t_start_s) * 1e3 if self.token_times_s else None

    @property
    def e2e_ms(self) -> float:
        return (self.t_end_s - self.t_start_s) * 1e3

    @property
    def itl_ms(self) -> list[float]:
        t = self.token_times_s
        return [(b - a) * 1e3 for a, b in zip(t, t[1:], strict=False)]

    @property
    def tpot_ms(self) -> float | None:
        """TPOT = (E2E - TTFT) / (N - 1), N the output tokens (``usage``), never the events:
        a server that sends several tokens per event has the same TPOT as one that sends
        one (vLLM's definition). None below 2 tokens or without a first token time."""
        n, ttft = self.usage.output_tokens, self.ttft_ms
        if n < 2 or ttft is None:
            return None
        return (self.e2e_ms - ttft) / (n - 1)

    @property
    def decode_tps(self) -> float | None:
        """Tokens per second after the first (the first token's time is prefill)."""
        tpot = self.tpot_ms
        return 1e3 / tpot if tpot else None


@dataclass(frozen=True)
class Done:
    """The end of a stream: why it stopped and how long the prompt was."""

    finish_reason: str
    prompt_tokens: int
    tail: str = ""  # text released only at the end (the detokenizer's last word)
    info: dict = field(default_factory=dict, compare=False)  # e.g. cached_prompt_tokens, draft_accepted


class ChunkStream:
    """An async iterator of :class:`Chunk` over a source that ends with a :class:`Done`.

    After iteration ends, ``finish_reason`` and ``prompt_tokens`` hold the Done's values.
    ``aclose()`` closes the source (which cancels the generation where it runs).
    """

    def __init__(self, source):
        self._source = source
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.tail = ""
        self.info: dict = {}

    def __aiter__(self):
        return self

    async def __anext__(self) -> Chunk:
        item = await self._source.__anext__()
        if isinstance(item, Done):
            self.finish_reason, self.prompt_tokens, self.tail = item.finish_reason, item.prompt_tokens, item.tail
            self.info = item.info
            await self.aclose()
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        await self._source.aclose()


async def complete_stream(stream: ChunkStream, t_start_s: float, request_id: str = "") -> Completion:
    """Drain ``stream`` into a Completion (the shared body of every engine's complete())."""
    import time

    chunks, delivered = [], []
    async for chunk in stream:
        delivered.append(time.perf_counter())
        chunks.append(chunk)
    done = collect(chunks, t_start_s=t_start_s, t_end_s=time.perf_counter(),
                   finish_reason=stream.finish_reason or "error", tail=stream.tail,
                   prompt_tokens=stream.prompt_tokens or 0, request_id=request_id)
    done.extra.update(stream.info)
    if isinstance(stream.info.get("timeline"), dict):  # its hops, as ms after the start
        done.extra.update(for_record({**stream.info["timeline"], "delivered": delivered}, t_start_s))
    return done


def collect(chunks: list[Chunk], *, t_start_s: float, t_end_s: float, finish_reason: str,
            prompt_tokens: int, request_id: str = "", tail: str = "") -> Completion:
    """Build a Completion from the chunks of one stream."""
    return Completion(
        text="".join(c.text for c in chunks) + tail,
        token_ids=tuple(c.token_id for c in chunks),
        finish_reason=finish_reason,
        usage=Usage(prompt_tokens, len(chunks)),
        t_start_s=t_start_s,
        token_times_s=tuple(c.t_s for c in chunks),
        t_end_s=t_end_s,
        request_id=request_id,
    )
