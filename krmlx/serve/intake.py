"""Everything a generation request passes before it may take an in-flight slot: its
Content-Type, its body (bounded in size and in time), the OpenAI fields, the size limits,
and the prompt rendered and tokenized in the front.

Contract:

- :func:`read_body`: the body as JSON, or :class:`~krmlx.serve.openai_api.ApiError`:
  415 unless ``Content-Type`` is ``application/json`` (a browser's "simple" POST can't
  send it, so a web page can't start generations here), 413 past ``max_body_bytes``, 408
  (with ``Connection: close``) when the body is not complete ``body_timeout_s`` after its
  headers, 400 if it is not JSON. A client that leaves mid-upload is :class:`ClientGone`
  (one access-log line, no traceback).
- :class:`PromptEncoder`: the model folder's tokenizer and context (transformers, no
  MLX), loaded once. :meth:`PromptEncoder.prepare` renders the chat template and
  tokenizes on its own single thread (never the worker's compute thread, which decodes
  the other streams; one at a time, so a flood of big prompts costs one core at most),
  checks the token count against the context (or ``max_prompt_tokens``) and caps
  ``max_tokens`` by the context left after the prompt; the request then goes to the worker
  as token ids. A prompt too long is a 400 ``context_length_exceeded`` naming the limit.
  Without a model folder (an engine that has no ``path``) the request goes on as it came
  and the worker renders it under the same limits.

Stats: none of its own; refusals show in ``krmlx_serve_requests_total`` by status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import orjson
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HttpRequest

from .. import gen
from ..errors import BadRequest
from . import openai_api as api
from .settings import ServeSettings

log = logging.getLogger("krmlx.serve")


class ClientGone(Exception):
    """The client disconnected before its response could start."""


def check_content_type(request: HttpRequest) -> None:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise api.ApiError(415, f"Content-Type must be application/json, got "
                           f"{media or 'none'!r}", code="unsupported_media_type")


async def read_body(request: HttpRequest, settings: ServeSettings):
    """The body as JSON (see the module doc for the errors)."""
    check_content_type(request)
    limit = settings.max_body_bytes
    too_big = api.ApiError(413, f"request body over {limit} bytes", code="body_too_large")
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > limit:
        raise too_big
    parts, n = [], 0
    try:
        with anyio.fail_after(settings.body_timeout_s):
            async for part in request.stream():
                n += len(part)
                if n > limit:
                    raise too_big
                parts.append(part)
    except ClientDisconnect:
        raise ClientGone from None
    except TimeoutError:
        raise api.ApiError(408, f"the request body was not complete {settings.body_timeout_s:g} "
                           f"s after its headers ({n} bytes came)", code="body_timeout",
                           headers={"Connection": "close"}) from None
    try:
        return orjson.loads(b"".join(parts))
    except orjson.JSONDecodeError as e:
        raise api.ApiError(400, f"the request body is not valid JSON: {e}",
                           code="invalid_json") from None


def _context_of(path: Path) -> tuple[int | None, int | None]:
    """(max_position_embeddings, vocab_size) from the folder's config.json, if it says."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None, None
    out = []
    for key in ("max_position_embeddings", "vocab_size"):
        v = config.get(key)
        out.append(v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None)
    return out[0], out[1]


class PromptEncoder:
    def __init__(self, path: Path | str | None, settings: ServeSettings):
        self.path, self.settings = path, settings
        self.context: int | None = None
        self.limits = gen.NO_LIMITS
        self._tokenizer = None
        self._failed = False
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="krmlx-prompt")

    def load(self):
        """The tokenizer, context and limits (loaded once; thread-safe); None if the model
        folder has no tokenizer transformers can read (the worker renders then)."""
        with self._lock:
            if self._tokenizer is None and not self._failed and self.path is not None:
                try:
                    from transformers import AutoTokenizer

                    tok = AutoTokenizer.from_pretrained(str(self.path))
                except Exception as e:  # noqa: BLE001 - the worker's own path still works
                    log.warning("prompts are rendered by the worker: no tokenizer in %s (%s)",
                                self.path, e)
                    self._failed = True
                    return None
                self.context, vocab = _context_of(self.path)
                limit = self.context
                if self.settings.max_prompt_tokens is not None:
                    limit = min(x for x in (limit, self.settings.max_prompt_tokens) if x)
                self.limits = gen.PromptLimits(vocab, limit, gen.longest_token_chars(tok))
                self._tokenizer = tok
            return self._tokenizer

    def encode(self, params: dict) -> list[int] | None:
        tok = self.load()
        return None if tok is None else gen.encode_prompt(tok, params, self.limits)

    async def __call__(self, params: dict) -> int:
        """The prompt's token count (0 when it can't be counted here)."""
        ids = await asyncio.get_running_loop().run_in_executor(self._pool, self.encode, params)
        return len(ids or ())

    async def prepare(self, parsed: api.ParsedRequest) -> api.ParsedRequest:
        """The request with its prompt as token ids and max_tokens capped by the context
        (ApiError 400 naming the limit when the prompt does not fit)."""
        if self.path is None:
            return parsed
        req = parsed.request
        param = "messages" if parsed.kind == "chat" else "prompt"
        try:
            ids = await asyncio.get_running_loop().run_in_executor(
                self._pool, self.encode, req.to_params())
        except BadRequest as e:
            code = "context_length_exceeded" if "exceed" in str(e) or "can't fit" in str(e) \
                else "invalid_value"
            raise api.invalid(api.param_of(e) if code == "invalid_value" else param,
                              str(e), code) from None
        if ids is None:
            return parsed
        max_tokens = req.max_tokens
        if self.context is not None:
            room = self.context - len(ids)
            if room < 1:
                raise api.invalid(param, f"{param}: {len(ids):,} tokens leave no room to "
                                  f"generate in the model's context of {self.context:,} tokens",
                                  "context_length_exceeded")
            max_tokens = min(max_tokens, room)
        request = dataclasses.replace(req, prompt="", system=None, messages=None, chat=False,
                                      prompt_ids=tuple(ids), max_tokens=max_tokens)
        return dataclasses.replace(parsed, request=request)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
