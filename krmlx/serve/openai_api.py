"""The OpenAI API's bodies as plain data: request bodies in, krmlx Requests out; response
and chunk bodies built here. No HTTP, no engine.

Contract:

- :func:`parse_request` checks one body of ``/v1/chat/completions`` (``kind="chat"``) or
  ``/v1/completions`` (``kind="text"``) and returns a :class:`ParsedRequest` (with a krmlx
  :class:`~krmlx.types.Request`), or raises :class:`ApiError` (4xx) whose ``param`` names
  the field at fault. A JSON ``null`` means "not given" for every optional field.
- Fields: :data:`SUPPORTED` are honoured; :data:`IGNORED` are accepted and have no effect
  (they change nothing in what is generated); :data:`NEUTRAL_ONLY` (fields mlx_lm.server
  or OpenAI accept that this stack can't honour) are accepted only at their neutral value
  and are a 400 naming the field otherwise (``n`` > 1, ``logprobs``, penalties, tools, ...);
  any other field is a 400 "unrecognized request argument" naming it.
- Errors are ``{"error": {"message", "type", "param", "code"}}`` (:meth:`ApiError.body`).
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass, field

from ..errors import BadRequest
from ..types import Request
from .settings import ServeSettings

SUPPORTED = ("model", "messages", "prompt", "max_tokens", "max_completion_tokens",
             "temperature", "top_p", "seed", "stop", "stream", "stream_options")
IGNORED = ("user", "metadata", "store", "service_tier", "parallel_tool_calls",
           "prompt_cache_key", "safety_identifier")
# field -> the values it may take here (what changes nothing); any other is refused
NEUTRAL_ONLY: dict[str, tuple] = {
    "n": (1,), "best_of": (1,), "logprobs": (False, 0), "top_logprobs": (0,), "echo": (False,),
    "suffix": ("",), "presence_penalty": (0,), "frequency_penalty": (0,),
    "repetition_penalty": (0, 1), "top_k": (0, -1), "min_p": (0,), "xtc_probability": (0,),
    "logit_bias": ({},), "tools": ([],), "tool_choice": ("none",), "functions": ([],),
    "function_call": ("none",), "response_format": ({"type": "text"},), "ignore_eos": (False,),
    "min_tokens": (0,), "adapters": (), "draft_model": (), "num_draft_tokens": (),
    "role_mapping": (), "chat_template_kwargs": ({},), "presence_context_size": (),
    "frequency_context_size": (), "repetition_context_size": (), "xtc_threshold": (),
}
MAX_STOPS = 16
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role
MESSAGE_IGNORED_KEYS = ("name",)


class ApiError(Exception):
    """An error answered OpenAI-style: HTTP ``status`` and the error object's fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def invalid(param: str | None, message: str, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class ParsedRequest:
    kind: str  # "chat" | "text"
    request: Request
    model: str
    stream: bool = False
    include_usage: bool = False
    stop: tuple[str, ...] = ()
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def response_id(self) -> str:
        return ("chatcmpl-" if self.kind == "chat" else "cmpl-") + self.id


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_fields(body: dict) -> None:
    for name, value in body.items():
        if name in SUPPORTED or name in IGNORED or value is None:
            continue
        if name in NEUTRAL_ONLY:
            if not any(value == ok and type(value) is type(ok) or (_is_number(value) and
                       _is_number(ok) and value == ok) for ok in NEUTRAL_ONLY[name]):
                raise invalid(name, f"{name}={value!r} is not supported by this server "
                              f"(it serves one completion per request, sampled with "
                              f"temperature, top_p and seed only)", "unsupported_parameter")
            continue
        raise invalid(name, f"Unrecognized request argument supplied: {name}",
                      "unrecognized_argument")


def parse_model(body: dict, settings: ServeSettings) -> str:
    model = body.get("model")
    if model is None:
        return settings.model_id
    if not isinstance(model, str):
        raise invalid("model", f"model: must be a string, got {type(model).__name__}")
    if model not in settings.model_names:
        raise ApiError(404, f"The model {model!r} does not exist; this server serves "
                       f"{', '.join(map(repr, settings.model_names))}", param="model",
                       code="model_not_found")
    return model


def parse_messages(messages) -> tuple[dict, ...]:
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "messages: must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise invalid(f"messages[{i}]", f"messages[{i}]: must be an object")
        extra = sorted(set(m) - {"role", "content", *MESSAGE_IGNORED_KEYS})
        if extra:
            raise invalid(f"messages[{i}].{extra[0]}", f"messages[{i}].{extra[0]}: not "
                          f"supported (a message has role and content)", "unsupported_parameter")
        role = ROLE_ALIASES.get(m.get("role"), m.get("role"))
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" \
                        or not isinstance(part.get("text"), str):
                    raise invalid(f"messages[{i}].content[{j}]", f"messages[{i}].content[{j}]: "
                                  f"only text parts are supported", "unsupported_parameter")
                texts.append(part["text"])
            content = "".join(texts)
        out.append({"role": role, "content": content})
    return tuple(out)


def parse_prompt(prompt) -> dict:
    """Request fields for a completions ``prompt``: a string, a list of one string, or a
    list of token ids."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return {"prompt": prompt, "chat": False}
    if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        return {"prompt_ids": tuple(prompt), "chat": False}
    raise invalid("prompt", "prompt: must be a string, a list of one string, or a list of "
                  "token ids (one prompt per request)")


def parse_sampling(body: dict, settings: ServeSettings) -> dict:
    out = {}
    for name in ("max_completion_tokens", "max_tokens"):  # the newer name wins
        value = body.get(name)
        if value is not None:
            if not _is_int(value) or value < 1:
                raise invalid(name, f"{name}: must be an integer >= 1, got {value!r}")
            out.setdefault("max_tokens", value)
    out.setdefault("max_tokens", settings.default_max_tokens)
    if body.get("temperature") is not None:
        t = body["temperature"]
        if not _is_number(t) or not 0 <= t <= 2:
            raise invalid("temperature", f"temperature: must be a number in [0, 2], got {t!r}")
        out["temperature"] = float(t)
    if body.get("top_p") is not None:
        p = body["top_p"]
        if not _is_number(p) or not 0 < p <= 1:
            raise invalid("top_p", f"top_p: must be a number in (0, 1], got {p!r}")
        out["top_p"] = float(p)
    if body.get("seed") is not None:
        s = body["seed"]
        if not _is_int(s) or not 0 <= s < 2**63:
            raise invalid("seed", f"seed: must be an integer in [0, 2**63), got {s!r}")
        out["seed"] = s
    return out


def parse_stop(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise invalid("stop", "stop: must be a non-empty string or a list of them")
    if len(stops) > MAX_STOPS:
        raise invalid("stop", f"stop: at most {MAX_STOPS} sequences, got {len(stops)}")
    return tuple(dict.fromkeys(stops))


def parse_stream(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream", f"stream: must be a boolean, got {stream!r}")
    opts = body.get("stream_options")
    if opts is None:
        return bool(stream), False
    if not stream:
        raise invalid("stream_options", "stream_options: only allowed when stream is true")
    if not isinstance(opts, dict):
        raise invalid("stream_options", "stream_options: must be an object")
    for key, value in opts.items():
        if value is None:
            continue
        if key == "include_usage":
            if not isinstance(value, bool):
                raise invalid("stream_options.include_usage", "stream_options.include_usage: "
                              "must be a boolean")
        elif value not in (None, False):
            raise invalid(f"stream_options.{key}", f"stream_options.{key}: not supported",
                          "unsupported_parameter")
    return True, bool(opts.get("include_usage"))


_QUOTED = re.compile(r"param '([\w.\[\]]+)'")
_LEADING = re.compile(r"^(?:generate: (?:param )?)?([\w.\[\]]+): ")


def param_of(exc: BadRequest) -> str | None:
    """The field a krmlx BadRequest names (its messages start ``field: ...`` or say
    ``param 'field'``), or None."""
    m = _QUOTED.search(str(exc)) or _LEADING.match(str(exc))
    name = m.group(1) if m else None
    return None if name == "generate" else name


def check_prompt_chars(kind: str, fields: dict, settings: ServeSettings) -> None:
    """The prompt's text (all messages' contents) against ``settings.max_prompt_chars``."""
    if kind == "chat":
        n = sum(len(m["content"]) for m in fields["messages"] if isinstance(m["content"], str))
    else:
        n = len(fields.get("prompt") or "") or len(fields.get("prompt_ids") or ())
    if n > settings.max_prompt_chars:
        param = "messages" if kind == "chat" else "prompt"
        raise invalid(param, f"{param}: {n:,} characters (or token ids) exceed the limit of "
                      f"{settings.max_prompt_chars:,} (--max-prompt-chars)", "prompt_too_long")


def parse_request(kind: str, body, settings: ServeSettings) -> ParsedRequest:
    """One request body -> a ParsedRequest, or ApiError naming the field (see module doc)."""
    if not isinstance(body, dict):
        raise invalid(None, f"the request body must be a JSON object, got {type(body).__name__}",
                      "invalid_body")
    check_fields(body)
    model = parse_model(body, settings)
    fields = parse_sampling(body, settings)
    if kind == "chat":
        if "prompt" in body:
            raise invalid("prompt", "prompt: not a chat field (give messages, or use "
                          "/v1/completions)", "unrecognized_argument")
        messages = body.get("messages")
        if isinstance(messages, list) and len(messages) > settings.max_messages:
            raise invalid("messages", f"messages: {len(messages):,} messages exceed the limit "
                          f"of {settings.max_messages:,} (--max-messages)", "too_many_messages")
        fields["messages"] = parse_messages(messages)
    else:
        if "messages" in body:
            raise invalid("messages", "messages: not a completions field (give prompt, or use "
                          "/v1/chat/completions)", "unrecognized_argument")
        fields.update(parse_prompt(body.get("prompt")))
    check_prompt_chars(kind, fields, settings)
    stream, include_usage = parse_stream(body)
    stop = parse_stop(body.get("stop"))
    try:
        request = Request(**fields)
    except BadRequest as e:
        raise invalid(param_of(e), str(e)) from None
    return ParsedRequest(kind, request, model, stream, include_usage, stop)


# -- responses -------------------------------------------------------------------------------

def finish_reason(reason: str | None) -> str:
    return reason if reason in ("stop", "length") else "stop"


def usage_body(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def _head(p: ParsedRequest, chunk: bool) -> dict:
    obj = ("chat.completion.chunk" if chunk else "chat.completion") if p.kind == "chat" \
        else "text_completion"
    return {"id": p.response_id, "object": obj, "created": p.created, "model": p.model}


def response_body(p: ParsedRequest, text: str, reason: str, usage: dict, timings: dict) -> dict:
    """The whole (non-streaming) response, ``usage`` and ``timings`` beside the choices."""
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}}
              if p.kind == "chat" else {"index": 0, "text": text})
    choice.update({"finish_reason": finish_reason(reason), "logprobs": None})
    return {**_head(p, False), "choices": [choice], "usage": usage, "timings": timings}


def chunk_body(p: ParsedRequest, text: str | None, reason: str | None = None, *,
               role: bool = False) -> dict:
    """One streamed chunk: a text delta (chat: ``role`` for the first), or the last one
    with a finish reason and no text."""
    if p.kind == "chat":
        delta = {"role": "assistant", "content": text or ""} if role else \
            ({} if text is None else {"content": text})
        choice = {"index": 0, "delta": delta}
    else:
        choice = {"index": 0, "text": text or ""}
    choice.update({"finish_reason": None if reason is None else finish_reason(reason),
                   "logprobs": None})
    body = {**_head(p, True), "choices": [choice]}
    if p.include_usage:
        body["usage"] = None
    return body


def usage_chunk_body(p: ParsedRequest, usage: dict, timings: dict) -> dict:
    """The final chunk of ``stream_options.include_usage``: no choices, usage and timings."""
    return {**_head(p, True), "choices": [], "usage": usage, "timings": timings}


def models_body(settings: ServeSettings, created: int) -> dict:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                        "owned_by": "krmlx"} for name in settings.model_names]}
