"""ServeSettings: what one ``krmlx serve`` process is configured with (besides its Engine).

Contract: a frozen value checked on construction (ConfigError naming the field); the app,
the request parser, the HTTP server and the CLI read it, nothing writes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

DEFAULT_MAX_IN_FLIGHT = 256
DEFAULT_SERVE_MAX_TOKENS = 512  # what mlx_lm.server generates when a request gives no max_tokens
DEFAULT_MAX_BODY_BYTES = 8 * 2**20
DEFAULT_RETRY_AFTER_S = 1
DEFAULT_MAX_MESSAGES = 1024
DEFAULT_MAX_PROMPT_CHARS = 2**20  # 1 Mi characters of message / prompt text in all
DEFAULT_HEADER_TIMEOUT_S = 10.0  # connection open -> request headers complete
DEFAULT_BODY_TIMEOUT_S = 30.0  # headers complete -> body complete
DEFAULT_GRACEFUL_TIMEOUT_S = 10.0  # SIGTERM -> open requests are ended


@dataclass(frozen=True)
class ServeSettings:
    """``model_id``: the id clients name (``model`` field; ``/v1/models``); ``aliases``:
    other names accepted for it. ``api_key``: when set, every route but ``/health`` needs
    ``Authorization: Bearer <key>`` (and ``/health`` says only whether the server is
    healthy). ``max_in_flight``: generation requests served at once (counted from the
    moment a request's body is read and valid); one more is answered 503 with
    ``Retry-After: retry_after_s`` at once (never queued). ``default_max_tokens``: for
    requests that give neither max_tokens nor max_completion_tokens.

    Limits checked in the front before any work reaches the worker: ``max_body_bytes``
    (413), ``max_messages`` and ``max_prompt_chars`` (400), ``max_prompt_tokens`` (400;
    None: the model's context). Timeouts: ``header_timeout_s`` (a connection that has not
    sent complete request headers by then is closed; idle keep-alive connections too),
    ``body_timeout_s`` (a body not complete by then: 408), ``graceful_timeout_s`` (after
    SIGTERM, requests still open then are ended: streams with an error event and
    ``[DONE]``, others with 503)."""

    model_id: str
    aliases: tuple[str, ...] = ()
    api_key: str | None = None
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    default_max_tokens: int = DEFAULT_SERVE_MAX_TOKENS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    retry_after_s: int = DEFAULT_RETRY_AFTER_S
    max_messages: int = DEFAULT_MAX_MESSAGES
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    max_prompt_tokens: int | None = None
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    graceful_timeout_s: float = DEFAULT_GRACEFUL_TIMEOUT_S

    def __post_init__(self):
        if not isinstance(self.model_id, str) or not self.model_id:
            raise ConfigError(f"model_id: must be a non-empty string, got {self.model_id!r}")
        object.__setattr__(self, "aliases", tuple(self.aliases))
        if not all(isinstance(a, str) and a for a in self.aliases):
            raise ConfigError(f"aliases: must be non-empty strings, got {self.aliases!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ConfigError("api_key: must be a non-empty string or None")
        ints = ["max_in_flight", "default_max_tokens", "max_body_bytes", "retry_after_s",
                "max_messages", "max_prompt_chars"]
        if self.max_prompt_tokens is not None:
            ints.append("max_prompt_tokens")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: must be an int >= 1, got {value!r}")
        for name in ("header_timeout_s", "body_timeout_s", "graceful_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name}: must be a number of seconds > 0, got {value!r}")

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every name a request may give in ``model`` (the id first)."""
        return (self.model_id, *(a for a in self.aliases if a != self.model_id))
