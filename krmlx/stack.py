"""StackConfig: the stage stack as data, and the worker below it; build_stack builds it.

A stack is an ordered list of layers, top first (a call enters at the top), above one
worker::

    from krmlx import StackConfig, WorkerConfig
    from krmlx.stages import BatcherConfig, ModelCacheConfig, RetryPolicy

    cfg = StackConfig(layers=[RetryPolicy(), count_calls, ModelCacheConfig(), BatcherConfig()],
                      worker=WorkerConfig(scheduler="batched"))

A layer is a krmlx stage config (its stage is built from :data:`STAGES`) or any callable
``layer(inner: Service) -> Service``: a user's own stage (see :mod:`krmlx.service`). The
krmlx layers, in their default order (what :meth:`StackConfig.phases` and
:meth:`StackConfig.all` give)::

    RetryPolicy       Retry           phase "retry"    retries transient failures (before a
                                                       stream's first token)
    BreakerPolicy     CircuitBreaker  phase "retry"    rejects fast while the worker keeps failing
    ModelCacheConfig  ModelCache      phase "caching"  several models resident, LRU under a budget
    SingleModelConfig SingleModel     (caching off)    one resident model; a switch unloads/loads
    BatcherConfig     Batcher         phase "batching" groups concurrent tokenize / check_draft
    FramerConfig      StreamFramer    phase "framing"  observes streams; its codec, coalescing and
                                                       window are applied by the worker at spawn
    (WorkerConfig)    WorkerClient                     the worker process

Rules, checked when a StackConfig is made (ConfigError names the layer):

1. Retry sits above the breaker, so an open breaker's fast rejection is not retried and a
   retried call counts once per try in the breaker.
2. The model layer sits above the batcher, so a batch only ever holds calls for resident
   models (each caller holds the model's refcount while its item waits in a batch).
3. Exactly one model layer: a stack without ModelCacheConfig or SingleModelConfig gets a
   SingleModelConfig just above the topmost Batcher or StreamFramer (else at the bottom).
4. Each krmlx layer appears at most once; a FramerConfig layer sets the worker's framing
   (``worker.framing`` may then only be None or the same).

User layers may go anywhere; a stage that is off is simply absent (never disabled inside).
``StackConfig()`` is phase 0 (the plain serving layer: one SingleModel over the worker).

Phases as text (``--phases``, ``engine:PHASES``, ``krmlx.serve:PHASES``) have one grammar,
:func:`parse_phases`: ``phase0`` / ``none`` / empty (no phase), ``all`` (every phase), or
phase names joined by ``,`` or ``+`` (a stack's :attr:`~StackConfig.label` reads back).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from .errors import ConfigError
from .framing import FramerConfig
from .service import Service
from .stages.batcher import Batcher, BatcherConfig
from .stages.breaker import BreakerPolicy, CircuitBreaker
from .stages.framer import StreamFramer
from .stages.model_cache import ModelCache, ModelCacheConfig, SingleModel, SingleModelConfig
from .stages.retry import Retry, RetryPolicy
from .worker.config import WorkerConfig

PHASES = ("batching", "caching", "retry", "framing")
NO_PHASES = ("phase0", "none", "")  # every spelling of the plain stack
# stage config type -> the stage it builds
STAGES = {RetryPolicy: Retry, BreakerPolicy: CircuitBreaker, ModelCacheConfig: ModelCache,
          SingleModelConfig: lambda inner, _cfg: SingleModel(inner), BatcherConfig: Batcher,
          FramerConfig: StreamFramer}
PHASE_OF = {BatcherConfig: "batching", ModelCacheConfig: "caching", RetryPolicy: "retry",
            BreakerPolicy: "retry", FramerConfig: "framing"}
# phases() keyword -> the layer type it overrides, in default order (top first)
LAYER_KEYS = {"retry": RetryPolicy, "breaker": BreakerPolicy, "model_cache": ModelCacheConfig,
              "batcher": BatcherConfig, "framer": FramerConfig}


def layer_name(layer) -> str:
    """A layer's name in labels and results: its phase's config key, or the user's name."""
    for key, cls in LAYER_KEYS.items():
        if type(layer) is cls:
            return key
    if type(layer) is SingleModelConfig:
        return "single_model"
    return getattr(layer, "name", None) or getattr(layer, "__name__", None) or type(layer).__name__


def parse_phases(text) -> list[str]:
    """The phases a ``--phases`` string names, in :data:`PHASES` order (see the module
    docstring for the grammar); a list or tuple of names is checked the same way.
    ConfigError names what is unknown."""
    if isinstance(text, str):
        spec = text.strip()
        if spec.lower() in NO_PHASES:
            return []
        if spec.lower() == "all":
            return list(PHASES)
        names = [p.strip() for p in spec.replace("+", ",").split(",")]
    elif isinstance(text, (list, tuple)):
        names = list(text)
    else:
        raise ConfigError(f"phases: a string or a list of phase names, got {type(text).__name__}")
    unknown = [n for n in names if n not in PHASES]
    if unknown or not names:
        raise ConfigError(f"unknown phase(s) {unknown or names}; phases are {', '.join(PHASES)}, "
                          f"or phase0 (none) or all (e.g. 'batching,caching')")
    return [p for p in PHASES if p in names]


def _index(layers, cls) -> int | None:
    return next((i for i, x in enumerate(layers) if type(x) is cls), None)


@dataclass(frozen=True)
class StackConfig:
    layers: tuple = ()
    worker: WorkerConfig = field(default_factory=WorkerConfig)

    def __post_init__(self):
        if not isinstance(self.layers, (list, tuple)):
            raise ConfigError(f"layers: must be a list of stage configs or callables, "
                              f"got {type(self.layers).__name__}")
        if not isinstance(self.worker, WorkerConfig):
            raise ConfigError(f"worker: must be a WorkerConfig, got {type(self.worker).__name__}")
        layers = list(self.layers)
        for i, layer in enumerate(layers):
            if isinstance(layer, type) and layer in STAGES:
                raise ConfigError(f"layers[{i}]: pass an instance ({layer.__name__}()), not the class")
            if type(layer) not in STAGES and not callable(layer):
                raise ConfigError(f"layers[{i}]: must be a stage config or a callable "
                                  f"inner -> Service, got {type(layer).__name__}")
        for cls in STAGES:
            if sum(type(x) is cls for x in layers) > 1:
                raise ConfigError(f"layers: {cls.__name__} appears more than once")
        cache, single = _index(layers, ModelCacheConfig), _index(layers, SingleModelConfig)
        if cache is not None and single is not None:
            raise ConfigError("layers: one model layer only (ModelCacheConfig or SingleModelConfig)")
        if cache is None and single is None:
            below = [i for i in (_index(layers, BatcherConfig), _index(layers, FramerConfig))
                     if i is not None]
            layers.insert(min(below) if below else len(layers), SingleModelConfig())
        retry, breaker = _index(layers, RetryPolicy), _index(layers, BreakerPolicy)
        if retry is not None and breaker is not None and retry > breaker:
            raise ConfigError("layers: RetryPolicy must sit above BreakerPolicy (an open "
                              "breaker's fast rejection must not be retried)")
        model = _index(layers, ModelCacheConfig)
        model = _index(layers, SingleModelConfig) if model is None else model
        batcher = _index(layers, BatcherConfig)
        if batcher is not None and model > batcher:
            raise ConfigError("layers: the model layer (ModelCacheConfig/SingleModelConfig) must "
                              "sit above BatcherConfig (batches hold calls for resident models)")
        framer = next((x for x in layers if type(x) is FramerConfig), None)
        if framer is not None:
            if self.worker.framing not in (None, framer):
                raise ConfigError("worker.framing: set by the FramerConfig layer; leave it None")
            replace(self.worker, framing=framer)  # the worker the client gets: checked whole
        object.__setattr__(self, "layers", tuple(layers))

    # -- making configs -------------------------------------------------------------------
    @classmethod
    def phases(cls, names=(), **overrides) -> StackConfig:
        """The default stack with the named phases on, e.g. ``phases(["batching"])`` or
        ``phases("batching,caching")`` (any :func:`parse_phases` spelling).

        Keywords: ``retry=``, ``breaker=``, ``model_cache=``, ``batcher=``, ``framer=`` put
        that layer in with this config (None takes it out); any :class:`WorkerConfig`
        field (``scheduler=``, ``faults=``, ...) sets the worker."""
        names = parse_phases(names) if names else []
        worker_fields = {f.name for f in fields(WorkerConfig)}
        bad = sorted(set(overrides) - set(LAYER_KEYS) - worker_fields)
        if bad:
            raise ConfigError(f"unknown setting(s) {bad}; layers: {sorted(LAYER_KEYS)}, "
                              f"worker: {sorted(worker_fields)}")
        chosen = {key: lt() for key, lt in LAYER_KEYS.items() if PHASE_OF[lt] in names}
        chosen.update({k: v for k, v in overrides.items() if k in LAYER_KEYS})
        for key, layer in chosen.items():
            if layer is not None and type(layer) is not LAYER_KEYS[key]:
                raise ConfigError(f"{key}: must be a {LAYER_KEYS[key].__name__} or None, "
                                  f"got {type(layer).__name__}")
        layers = [chosen[k] for k in LAYER_KEYS if chosen.get(k) is not None]
        worker = WorkerConfig(**{k: v for k, v in overrides.items() if k in worker_fields})
        return cls(layers, worker)

    @classmethod
    def all(cls, **overrides) -> StackConfig:
        return cls.phases(PHASES, **overrides)

    def replace(self, **changes) -> StackConfig:
        return replace(self, **changes)

    def with_worker(self, **changes) -> StackConfig:
        """The same layers over a worker with ``changes`` (WorkerConfig fields)."""
        return replace(self, worker=replace(self.worker, **changes))

    def with_layer(self, new) -> StackConfig:
        """The layer of ``new``'s type replaced by ``new`` (ConfigError if there is none)."""
        i = _index(self.layers, type(new))
        if i is None:
            raise ConfigError(f"layers: no {type(new).__name__} to replace")
        return replace(self, layers=(*self.layers[:i], new, *self.layers[i + 1:]))

    # -- reading configs ------------------------------------------------------------------
    def find(self, cls):
        """The layer of type ``cls``, or None."""
        i = _index(self.layers, cls)
        return None if i is None else self.layers[i]

    @property
    def framer(self) -> FramerConfig | None:
        return self.find(FramerConfig)

    @property
    def worker_config(self) -> WorkerConfig:
        """What the worker client gets: the worker, with the framer layer's framing."""
        framer = self.framer
        return self.worker if framer is None else replace(self.worker, framing=framer)

    @property
    def enabled(self) -> list[str]:
        on = {PHASE_OF[type(x)] for x in self.layers if type(x) in PHASE_OF}
        return [name for name in PHASES if name in on]

    @property
    def user_layers(self) -> list[str]:
        return [layer_name(x) for x in self.layers if type(x) not in STAGES]

    @property
    def label(self) -> str:
        """'phase0', 'all', or the enabled phases and user layers joined by '+'."""
        on, own = self.enabled, self.user_layers
        if not own and on == list(PHASES):
            return "all"
        return "+".join(on + own) or "phase0"

    @property
    def wire_codec(self) -> str:
        return self.worker_config.wire_codec

    def to_dict(self) -> dict:
        """Plain data for results files (a policy's callables by their names)."""
        from dataclasses import asdict, is_dataclass

        def plain(x):
            return getattr(x, "__name__", repr(x)) if callable(x) else x

        layers = [{"layer": layer_name(x),
                   **({k: plain(v) for k, v in asdict(x).items()} if is_dataclass(x) else {})}
                  for x in self.layers]
        return {"layers": layers, "worker": self.worker_config.to_dict(), "label": self.label}


def build_stack(config: StackConfig, client: Service) -> tuple[Service, list]:
    """Wrap ``client`` in ``config.layers`` (bottom first); returns (top, stages top-first)."""
    service: Service = client
    stages: list = []
    for layer in reversed(config.layers):
        make = STAGES.get(type(layer))
        service = make(service, layer) if make is not None else layer(service)
        if not isinstance(service, Service):
            raise ConfigError(f"layer {layer_name(layer)!r} returned {type(service).__name__}, "
                              "not a Service (an object with call(call) and aclose())")
        stages.append(service)
    return service, stages[::-1]
