"""One set of input rules, used wherever input arrives: :class:`~krmlx.types.Request` (so
DirectEngine, Engine and the HTTP front refuse the same things the same way) and the
worker's call checks (what reaches its pipe from any client).

Every check raises :class:`~krmlx.errors.BadRequest` naming the field and what is allowed,
before any work is done. Limits are module constants:

- text (a prompt, a system prompt, a tokenize text): valid Unicode (no lone surrogates),
  at most :data:`MAX_TEXT_CHARS` characters (a batch: in all);
- token ids: ints in ``[0, 2**32)`` (the model's vocabulary is checked where it is known);
- ``messages``: ``{"role", "content"}`` maps, roles system / user / assistant;
- ``max_tokens``: an int in ``[1, MAX_TOKENS]``; ``temperature``: a finite number >= 0;
  ``top_p``: a number in ``(0, 1]``; ``seed``: an int in ``[0, 2**64)`` (MLX's seeds).

Model limits (the prompt against the model's context) are checked in :mod:`krmlx.gen`,
where the model is known.
"""

from __future__ import annotations

import math

from .errors import BadRequest

MAX_TEXT_CHARS = 1 << 20  # 1 Mi characters: far beyond any context, bounded work and frames
MAX_TOKENS = 1 << 20
TOKEN_ID_LIMIT = 2**32  # token ids travel as u32 in tokenizers
SEED_LIMIT = 2**64  # MLX seeds are u64


def is_int(value) -> bool:
    return type(value) is int  # not bool, not float


def check_text(field: str, value, *, max_chars: int = MAX_TEXT_CHARS, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{field}: must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise BadRequest(f"{field}: must be a non-empty string")
    if len(value) > max_chars:
        raise BadRequest(f"{field}: {len(value):,} characters exceed the limit of {max_chars:,}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRequest(f"{field}: must be valid Unicode text (a lone surrogate at index "
                         f"{e.start})") from None
    return value


def check_texts(field: str, values, *, max_chars: int = MAX_TEXT_CHARS) -> list[str]:
    """A list of texts whose total length is within ``max_chars``."""
    if not isinstance(values, (list, tuple)):
        raise BadRequest(f"{field}: must be a list of strings, got {type(values).__name__}")
    total = 0
    for i, v in enumerate(values):
        check_text(f"{field}[{i}]", v, max_chars=max_chars, allow_empty=True)
        total += len(v)
    if total > max_chars:
        raise BadRequest(f"{field}: {total:,} characters in all exceed the limit of {max_chars:,}")
    return list(values)


def check_int(field: str, value, low: int, high: int) -> int:
    """An int in ``[low, high)``."""
    if not is_int(value):
        raise BadRequest(f"{field}: must be an int, got {type(value).__name__}")
    if not low <= value < high:
        raise BadRequest(f"{field}: must be in [{low}, {_bound(high)}), got {value}")
    return value


def _bound(n: int) -> str:
    for p in (32, 64):
        if n == 2**p:
            return f"2**{p}"
    return str(n)


def check_token_ids(field: str, ids, vocab_size: int | None = None) -> list[int]:
    """Token ids: ints in ``[0, vocab_size)`` (``[0, 2**32)`` when the vocabulary is unknown)."""
    if not isinstance(ids, (list, tuple)):
        raise BadRequest(f"{field}: must be a list of token ids, got {type(ids).__name__}")
    limit = TOKEN_ID_LIMIT if vocab_size is None else vocab_size
    for i, t in enumerate(ids):
        if type(t) is not int:
            raise BadRequest(f"{field}: must be ints, got {type(t).__name__} at index {i}")
        if not 0 <= t < limit:
            where = "outside the vocabulary" if vocab_size is not None else "out of range"
            raise BadRequest(f"{field}: id {t} at index {i} is {where} ([0, {_bound(limit)}))")
    return list(ids)


def check_max_tokens(field: str, value) -> int:
    if not is_int(value) or value < 1:
        raise BadRequest(f"{field}: must be a positive int, got {value!r}")
    if value > MAX_TOKENS:
        raise BadRequest(f"{field}: must be at most {MAX_TOKENS:,}, got {value:,}")
    return value


def check_temperature(field: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise BadRequest(f"{field}: must be a finite number >= 0, got {value!r}")
    return value


def check_top_p(field: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 0 < value <= 1:
        raise BadRequest(f"{field}: must be a number in (0, 1], got {value!r}")
    return value


def check_seed(field: str, value) -> int:
    return check_int(field, value, 0, SEED_LIMIT)


MESSAGE_ROLES = ("system", "user", "assistant")


def check_messages(field: str, messages, *, max_chars: int = MAX_TEXT_CHARS) -> tuple[dict, ...]:
    """A conversation: a non-empty list of ``{"role", "content"}`` maps (role system, user
    or assistant; content text, at most ``max_chars`` characters in all), as a tuple of
    fresh dicts; BadRequest names the entry (``messages[1].role``)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise BadRequest(f"{field}: must be a non-empty list of {{role, content}} maps")
    out, total = [], 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"{field}[{i}]: must be a map with role and content, "
                             f"got {type(m).__name__}")
        if m.get("role") not in MESSAGE_ROLES:
            raise BadRequest(f"{field}[{i}].role: must be one of {', '.join(MESSAGE_ROLES)}, "
                             f"got {m.get('role')!r}")
        extra = sorted(set(m) - {"role", "content"})
        if extra:
            raise BadRequest(f"{field}[{i}]: unknown keys {extra}")
        total += len(check_text(f"{field}[{i}].content", m.get("content"), max_chars=max_chars,
                                allow_empty=True))
        out.append({"role": m["role"], "content": m["content"]})
    if total > max_chars:
        raise BadRequest(f"{field}: {total:,} characters in all exceed the limit of {max_chars:,}")
    if not any(m["content"].strip() for m in out):
        raise BadRequest(f"{field}: every content is empty")
    return tuple(out)


def check_generate_params(params: dict) -> dict:
    """A generate request's params (as :meth:`krmlx.types.Request.to_params` writes them and
    as the worker receives them): the one validation both sides run. The prompt is
    ``prompt_ids``, else ``messages``, else ``prompt`` (text)."""
    ids = params.get("prompt_ids")
    if ids is not None:
        check_token_ids("prompt_ids", ids)
        if not ids:
            raise BadRequest("prompt_ids: must be a non-empty list of token ids")
    elif params.get("messages") is not None:
        check_messages("messages", params["messages"])
    else:
        check_text("prompt", params.get("prompt"))
    if params.get("system") is not None:
        check_text("system", params["system"], allow_empty=True)
    check_max_tokens("max_tokens", params.get("max_tokens"))
    check_temperature("temperature", params.get("temperature", 0.0))
    if "top_p" in params:
        check_top_p("top_p", params["top_p"])
    if params.get("seed") is not None:
        check_seed("seed", params["seed"])
    if not isinstance(params.get("chat", True), bool):
        raise BadRequest(f"chat: must be a bool, got {params['chat']!r}")
    return params
