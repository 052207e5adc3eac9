"""ServeSettings: what one ``krmlx serve`` process is configured with (besides its Engine).

Contract: a frozen value checked on construction (ConfigError naming the field); the app,
the request parser and the CLI read it, nothing writes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

DEFAULT_MAX_IN_FLIGHT = 256
DEFAULT_SERVE_MAX_TOKENS = 512  # what mlx_lm.server generates when a request gives no max_tokens
DEFAULT_MAX_BODY_BYTES = 8 * 2**20
DEFAULT_RETRY_AFTER_S = 1


@dataclass(frozen=True)
class ServeSettings:
    """``model_id``: the id clients name (``model`` field; ``/v1/models``); ``aliases``:
    other names accepted for it. ``api_key``: when set, every route but ``/health`` needs
    ``Authorization: Bearer <key>``. ``max_in_flight``: generation requests served at once;
    one more is answered 503 with ``Retry-After: retry_after_s`` at once (never queued).
    ``default_max_tokens``: for requests that give neither max_tokens nor
    max_completion_tokens. ``max_body_bytes``: larger request bodies get 413."""

    model_id: str
    aliases: tuple[str, ...] = ()
    api_key: str | None = None
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    default_max_tokens: int = DEFAULT_SERVE_MAX_TOKENS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    retry_after_s: int = DEFAULT_RETRY_AFTER_S

    def __post_init__(self):
        if not isinstance(self.model_id, str) or not self.model_id:
            raise ConfigError(f"model_id: must be a non-empty string, got {self.model_id!r}")
        object.__setattr__(self, "aliases", tuple(self.aliases))
        if not all(isinstance(a, str) and a for a in self.aliases):
            raise ConfigError(f"aliases: must be non-empty strings, got {self.aliases!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ConfigError("api_key: must be a non-empty string or None")
        for name in ("max_in_flight", "default_max_tokens", "max_body_bytes", "retry_after_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: must be an int >= 1, got {value!r}")

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every name a request may give in ``model`` (the id first)."""
        return (self.model_id, *(a for a in self.aliases if a != self.model_id))
