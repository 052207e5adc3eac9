"""WorkerConfig: how the worker process is spawned and spoken to (one object, one concern).

The stage stack (:class:`krmlx.stack.StackConfig` ``layers``) says what happens to a call
on its way down; this says what runs at the bottom: the wire codec and framing, which
scheduler generates, timeouts, injected faults, prompt-cache reuse, a draft model, a
distributed group, and how the client restarts a dead worker. :class:`~krmlx.worker.client.
WorkerClient` takes it whole; :meth:`WorkerConfig.argv` is the worker's command line, which
carries the config as one JSON object (``--config``, :meth:`~WorkerConfig.to_dict`) that the
worker reads back with :meth:`~WorkerConfig.from_dict`: one writer, one reader.

Fields (validated on creation; ConfigError names the field):

- ``codec``: the wire codec when no framing is set (``json`` lines or ``msgpack``);
- ``framing``: a :class:`~krmlx.framing.FramerConfig` (codec, coalescing, backpressure
  window) or None for a frame per token without a window; a framer layer in the stack
  sets it;
- ``scheduler``: ``auto`` (the default: one stream on the serial path, two or more in the
  continuous batch, :mod:`krmlx.worker.schedulers.auto`; ``serial`` when a draft, prompt-cache reuse
  or a group of ranks asks for it), ``serial`` (one generation at a time), ``batched``
  (continuous batching) or ``batched-staged`` (staged admission);
- ``timeout_s``: default whole-call deadline (None: none); per call, ``Call.timeout_s``;
- ``idle_timeout_s``: the longest wait for a stream's next frame (None: none), so a stream
  that stops producing fails without cutting a long healthy one;
- ``liveness_timeout_s``: with calls pending, this long without any frame from the worker
  (it sends a heartbeat every ``liveness_timeout_s / 5`` s, busy or not) means it is hung or
  stopped: every pending call fails with WorkerUnresponsive, the worker is killed and the
  next call restarts it (None: no liveness check);
- ``stall_timeout_s``: a stream whose frames wait this long unread (its consumer stopped
  reading without closing it) is cancelled in the worker (None: never);
- ``close_timeout_s``: how long ``aclose()`` gives the worker to exit after ``shutdown``;
- ``max_prompt_tokens``: refuse longer prompts (None: each model's context);
- ``faults``: a :class:`~krmlx.worker.faults.FaultPlan` (or its dict) injected in the worker;
- ``prompt_cache``: a :class:`~krmlx.worker.prompt_cache.PromptCacheConfig` (KV prefix reuse);
- ``draft``: a draft model for speculative decoding (serial scheduler only);
- ``distributed``: a :class:`~krmlx.worker.launch.DistributedConfig` (the worker as N ranks);
- ``max_frame_bytes``, ``ready_timeout_s``, ``auto_restart``, ``reload_on_restart``,
  ``reload_attempts``, ``fast_blas``: see :class:`~krmlx.worker.client.WorkerClient`;
- ``timeline``: timestamp each stream's hops in the worker and return them in its done
  frame (:mod:`krmlx.timeline`; its cost is measured by ``bench micro``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

from ..errors import ConfigError
from ..framing import CODECS, FramerConfig
from .faults import FaultPlan
from .launch import DistributedConfig
from .prompt_cache import PromptCacheConfig
from .schedulers import SCHEDULERS

DEFAULT_LIVENESS_TIMEOUT_S = 10.0
DEFAULT_STALL_TIMEOUT_S = 10.0
HEARTBEATS_PER_LIVENESS = 5


def _positive(name: str, value, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ConfigError(f"{name}: must be a positive number{' or None' if allow_none else ''}, "
                          f"got {value!r}")


@dataclass(frozen=True)
class WorkerConfig:
    codec: str = "json"
    framing: FramerConfig | None = None
    scheduler: str = "auto"
    timeout_s: float | None = None
    idle_timeout_s: float | None = None
    liveness_timeout_s: float | None = DEFAULT_LIVENESS_TIMEOUT_S
    stall_timeout_s: float | None = DEFAULT_STALL_TIMEOUT_S
    close_timeout_s: float = 2.0
    max_prompt_tokens: int | None = None
    faults: FaultPlan | None = None
    prompt_cache: PromptCacheConfig | None = None
    draft: str | None = None
    distributed: DistributedConfig | None = None
    max_frame_bytes: int | None = None
    ready_timeout_s: float = 120.0
    auto_restart: bool = True
    reload_on_restart: bool = True
    reload_attempts: int = 3
    fast_blas: bool = False
    timeline: bool = True  # each stream's hops, timestamped in the worker (krmlx.timeline)

    def __post_init__(self):
        if isinstance(self.faults, dict):
            object.__setattr__(self, "faults", FaultPlan.from_dict(self.faults))
        if self.codec not in CODECS:
            raise ConfigError(f"codec: must be one of {CODECS}, got {self.codec!r}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler: must be one of {SCHEDULERS}, got {self.scheduler!r}")
        for name, cls in (("framing", FramerConfig), ("faults", FaultPlan),
                          ("prompt_cache", PromptCacheConfig), ("distributed", DistributedConfig)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, cls):
                raise ConfigError(f"{name}: must be a {cls.__name__} or None, got {type(value).__name__}")
        if self.draft is not None and (not isinstance(self.draft, str) or not self.draft):
            raise ConfigError(f"draft: must be a model name or None, got {self.draft!r}")
        if self.scheduler == "auto" and (self.draft or self.prompt_cache is not None
                                         or self.group is not None):
            object.__setattr__(self, "scheduler", "serial")  # what those run on
        if self.draft is not None and self.scheduler != "serial":
            raise ConfigError("draft: speculative decoding runs with the serial scheduler only")
        for name in ("timeout_s", "idle_timeout_s", "liveness_timeout_s", "stall_timeout_s"):
            _positive(name, getattr(self, name))
        _positive("ready_timeout_s", self.ready_timeout_s, allow_none=False)
        _positive("close_timeout_s", self.close_timeout_s, allow_none=False)
        if self.max_prompt_tokens is not None and (type(self.max_prompt_tokens) is not int
                                                   or self.max_prompt_tokens < 1):
            raise ConfigError(f"max_prompt_tokens: must be an int >= 1 or None, "
                              f"got {self.max_prompt_tokens!r}")
        if self.max_frame_bytes is not None and (type(self.max_frame_bytes) is not int
                                                 or self.max_frame_bytes < 1024):
            raise ConfigError(f"max_frame_bytes: must be an int >= 1024 or None, "
                              f"got {self.max_frame_bytes!r}")
        if type(self.reload_attempts) is not int or self.reload_attempts < 1:
            raise ConfigError(f"reload_attempts: must be an int >= 1, got {self.reload_attempts!r}")
        for name in ("auto_restart", "reload_on_restart", "fast_blas", "timeline"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: must be a bool, got {getattr(self, name)!r}")
        d = self.distributed
        if d is not None and d.ranks > 1:
            if self.scheduler != "serial" or self.prompt_cache is not None or self.draft:
                raise ConfigError("distributed: a worker of several ranks runs the serial "
                                  "scheduler, without prompt_cache or draft")
            d.check_codec(self.wire_codec)

    @property
    def wire_codec(self) -> str:
        return self.framing.codec if self.framing is not None else self.codec

    @property
    def group(self) -> DistributedConfig | None:
        """The distributed group, when it has more than one rank (one rank: a plain worker)."""
        d = self.distributed
        return d if d is not None and d.ranks > 1 else None

    def replace(self, **changes) -> WorkerConfig:
        return replace(self, **changes)

    def argv(self, python: str) -> list[str]:
        """One rank's worker command line (a distributed group wraps it in its launcher):
        the whole config as one JSON argument."""
        return [python, "-m", "krmlx.worker", "--config", json.dumps(self.to_dict())]

    @property
    def heartbeat_s(self) -> float | None:
        """How often the worker sends a heartbeat (None: never): liveness_timeout_s / 5."""
        return self.liveness_timeout_s / HEARTBEATS_PER_LIVENESS if self.liveness_timeout_s else None

    def to_dict(self) -> dict:
        """Plain data (JSON-safe), read back whole by :meth:`from_dict`."""
        out = asdict(self)
        out["faults"] = self.faults.to_dict() if self.faults else None
        out["framing"] = self.framing.to_dict() if self.framing else None
        return out

    @classmethod
    def from_dict(cls, data: dict) -> WorkerConfig:
        """The config :meth:`to_dict` wrote (checked again; ConfigError names a bad field)."""
        if not isinstance(data, dict):
            raise ConfigError(f"worker config: must be a map, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"worker config: unknown field(s) {unknown}; fields: {sorted(known)}")
        values = dict(data)
        nested = {"framing": FramerConfig.from_dict, "faults": FaultPlan.from_dict,
                  "prompt_cache": lambda d: PromptCacheConfig(**d),
                  "distributed": lambda d: DistributedConfig(**d)}
        for name, make in nested.items():
            if isinstance(values.get(name), dict):
                try:
                    values[name] = make(values[name])
                except TypeError as e:
                    raise ConfigError(f"{name}: {e}") from None
        return cls(**values)
