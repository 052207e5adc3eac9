"""How tokens travel from the worker to the caller: one options type for every side.

:class:`FramerConfig` is the framing phase (seed Phase 5) as data. The same object is the
StreamFramer stage's config (:mod:`krmlx.stages.framer`, which observes streams), what the
engine hands the worker client, and what the worker applies to each stream
(:class:`krmlx.worker.schedulers.stream.StreamOut`):

- ``codec``: the wire codec, ``"msgpack"`` (length-prefixed binary) or ``"json"`` (lines);
- ``coalesce_tokens`` / ``coalesce_ms``: after the first token (never held, so TTFT is not
  inflated), tokens are gathered into one frame until ``coalesce_tokens`` are held or
  ``coalesce_ms`` has passed since the first held one (1 / 0: a frame per token);
- ``window``: at most this many token frames unacknowledged per stream; past it that
  stream's new tokens are held in the worker and sent coalesced once the client acks
  (0: no window). Generation never pauses for a slow reader, so one slow or abandoned
  stream never holds up the others; a stream nobody reads is cancelled by the client
  (:class:`~krmlx.worker.config.WorkerConfig` ``stall_timeout_s``).

The defaults are the framing phase's. With no framing configured the worker sends a frame
per token with no window, in the worker's own codec: that is :data:`PLAIN` (or
:func:`plain` for another codec).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

CODECS = ("json", "msgpack")  # how frames are encoded on the pipe


@dataclass(frozen=True)
class FramerConfig:
    codec: str = "msgpack"
    coalesce_tokens: int = 1
    coalesce_ms: float = 0.0
    window: int = 64

    def __post_init__(self):
        if self.codec not in CODECS:
            raise ConfigError(f"framer.codec: must be one of {CODECS}, got {self.codec!r}")
        if isinstance(self.coalesce_tokens, bool) or not isinstance(self.coalesce_tokens, int) \
                or self.coalesce_tokens < 1:
            raise ConfigError(f"framer.coalesce_tokens: must be an int >= 1, got {self.coalesce_tokens!r}")
        if isinstance(self.coalesce_ms, bool) or not isinstance(self.coalesce_ms, (int, float)) \
                or not 0 <= self.coalesce_ms < float("inf"):
            raise ConfigError(f"framer.coalesce_ms: must be a finite number >= 0, got {self.coalesce_ms!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 0:
            raise ConfigError(f"framer.window: must be an int >= 0, got {self.window!r}")

    def to_dict(self) -> dict:
        return {"codec": self.codec, "coalesce_tokens": self.coalesce_tokens,
                "coalesce_ms": self.coalesce_ms, "window": self.window}

    @classmethod
    def from_dict(cls, data: dict) -> FramerConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"framer: must be a map, got {type(data).__name__}")
        unknown = set(data) - {"codec", "coalesce_tokens", "coalesce_ms", "window"}
        if unknown:
            raise ConfigError(f"framer: unknown keys {sorted(unknown)}")
        return cls(**data)


def plain(codec: str = "json") -> FramerConfig:
    """No framing phase: a frame per token, no backpressure window, in ``codec``."""
    return FramerConfig(codec=codec, window=0)


PLAIN = plain()
