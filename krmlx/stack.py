"""StackConfig (the phase switches) and build_stack (the stages in order).

The stack, top to bottom (a call enters at the top)::

    Retry            phase "retry"    retries transient failures (before a stream's first token)
    CircuitBreaker   phase "retry"    rejects fast while the worker keeps failing
    ModelCache       phase "caching"  keeps several models resident, LRU under a budget
      or SingleModel (caching off)    one resident model; a switch unloads and loads
    Batcher          phase "batching" groups concurrent tokenize / check_draft calls
    StreamFramer     phase "framing"  observes streams; its codec, token coalescing and
                                      backpressure window are applied by the worker at spawn
    WorkerClient                      the worker process

Retry sits above the breaker so an open breaker's fast rejection is not retried; the
cache sits above the batcher so batches only ever hold calls for resident models.
A stage that is off is absent (not disabled inside). ``StackConfig()`` is phase 0 (the
plain serving layer), ``StackConfig.all()`` switches every phase on with defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .errors import ConfigError
from .service import Service
from .worker.protocol import CODECS
from .worker.scheduler import StreamOptions

PHASES = ("batching", "caching", "retry", "framing")
SCHEDULERS = ("serial", "batched", "batched-staged")


@dataclass(frozen=True)
class FramerConfig:
    """Phase 5: binary framing, token coalescing (first token never held), backpressure."""

    codec: str = "msgpack"
    coalesce_tokens: int = 1
    coalesce_ms: float = 0.0
    window: int = 64

    def __post_init__(self):
        if self.codec not in CODECS:
            raise ConfigError(f"framer.codec: must be one of {CODECS}, got {self.codec!r}")
        if not isinstance(self.coalesce_tokens, int) or self.coalesce_tokens < 1:
            raise ConfigError(f"framer.coalesce_tokens: must be an int >= 1, got {self.coalesce_tokens!r}")
        if self.coalesce_ms < 0:
            raise ConfigError(f"framer.coalesce_ms: must be >= 0, got {self.coalesce_ms!r}")
        if not isinstance(self.window, int) or self.window < 0:
            raise ConfigError(f"framer.window: must be an int >= 0, got {self.window!r}")

    def stream_options(self) -> StreamOptions:
        return StreamOptions(self.coalesce_tokens, self.coalesce_ms, self.window)


@dataclass(frozen=True)
class StackConfig:
    batcher: object = None  # krmlx.stages.batcher.BatcherConfig
    model_cache: object = None  # krmlx.stages.model_cache.ModelCacheConfig
    retry: object = None  # krmlx.stages.retry.RetryPolicy
    breaker: object = None  # krmlx.stages.breaker.BreakerPolicy
    framer: FramerConfig | None = None
    codec: str = "json"  # the wire codec when framing is off
    scheduler: str = "serial"
    timeout_s: float | None = None
    faults: dict | None = None  # a worker fault plan (see krmlx.worker.faults)
    prompt_cache: object = None  # krmlx.worker.prompt_cache.PromptCacheConfig: KV prefix reuse
    draft: str | None = None  # a draft model for speculative decoding (serial scheduler)
    distributed: object = None  # krmlx.worker.launch.DistributedConfig: the worker as N ranks

    def __post_init__(self):
        if self.codec not in CODECS:
            raise ConfigError(f"codec: must be one of {CODECS}, got {self.codec!r}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler: must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.draft is not None and self.scheduler != "serial":
            raise ConfigError("draft: speculative decoding runs with the serial scheduler only")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ConfigError(f"timeout_s: must be positive, got {self.timeout_s!r}")
        expected = {"batcher": "BatcherConfig", "model_cache": "ModelCacheConfig",
                    "retry": "RetryPolicy", "breaker": "BreakerPolicy",
                    "distributed": "DistributedConfig"}
        for name, cls in expected.items():
            value = getattr(self, name)
            if value is not None and type(value).__name__ != cls:
                raise ConfigError(f"{name}: must be a {cls} or None, got {type(value).__name__}")
        d = self.distributed
        if d is not None and d.ranks > 1:
            if self.scheduler != "serial" or self.prompt_cache is not None or self.draft:
                raise ConfigError("distributed: a worker of several ranks runs the serial "
                                  "scheduler, without prompt_cache or draft")
            d.check_codec(self.wire_codec)

    @classmethod
    def phases(cls, names=(), **overrides) -> StackConfig:
        """A config with the named phases on (defaults), e.g. phases(["batching"])."""
        from .stages.batcher import BatcherConfig
        from .stages.breaker import BreakerPolicy
        from .stages.model_cache import ModelCacheConfig
        from .stages.retry import RetryPolicy

        names = list(names)
        unknown = [n for n in names if n not in PHASES]
        if unknown:
            raise ConfigError(f"unknown phase(s) {unknown}; phases are {PHASES}")
        on = {
            "batcher": BatcherConfig() if "batching" in names else None,
            "model_cache": ModelCacheConfig() if "caching" in names else None,
            "retry": RetryPolicy() if "retry" in names else None,
            "breaker": BreakerPolicy() if "retry" in names else None,
            "framer": FramerConfig() if "framing" in names else None,
        }
        return cls(**{**on, **overrides})

    @classmethod
    def all(cls, **overrides) -> StackConfig:
        return cls.phases(PHASES, **overrides)

    @property
    def enabled(self) -> list[str]:
        flags = {"batching": self.batcher, "caching": self.model_cache,
                 "retry": self.retry or self.breaker, "framing": self.framer}
        return [name for name in PHASES if flags[name] is not None]

    @property
    def label(self) -> str:
        """'phase0', 'all', or the enabled phases joined by '+' (results' engine names)."""
        on = self.enabled
        return "phase0" if not on else "all" if on == list(PHASES) else "+".join(on)

    @property
    def wire_codec(self) -> str:
        return self.framer.codec if self.framer else self.codec

    def replace(self, **changes) -> StackConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        from dataclasses import asdict, is_dataclass

        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = {k: x for k, x in asdict(v).items() if not callable(x)} if is_dataclass(v) else v
        out["label"] = self.label
        return out


def build_stack(config: StackConfig, client: Service) -> tuple[Service, list]:
    """Wrap ``client`` in the stages ``config`` switches on; returns (top, stages top-first)."""
    from .stages.batcher import Batcher
    from .stages.breaker import CircuitBreaker
    from .stages.framer import StreamFramer
    from .stages.model_cache import ModelCache, SingleModel
    from .stages.retry import Retry

    service: Service = client
    stages: list = []
    if config.framer is not None:
        service = StreamFramer(service, config.framer)
        stages.append(service)
    if config.batcher is not None:
        service = Batcher(service, config.batcher)
        stages.append(service)
    service = ModelCache(service, config.model_cache) if config.model_cache else SingleModel(service)
    stages.append(service)
    if config.breaker is not None:
        service = CircuitBreaker(service, config.breaker)
        stages.append(service)
    if config.retry is not None:
        service = Retry(service, config.retry)
        stages.append(service)
    return service, stages[::-1]
