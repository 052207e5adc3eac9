"""The Service protocol: what every stage wraps and what the worker client implements.

A service has one async entry point, ``call(call) -> AsyncIterator``. Every call
returns an async iterator: unary methods (``tokenize``, ``load_model``, ``ping`` ...)
yield exactly one value; ``generate`` yields :class:`~krmlx.types.Chunk` items and
ends with one :class:`~krmlx.types.Done`. Closing the iterator early (``aclose()``)
cancels the call where it runs. Errors are raised from the iterator as
:class:`~krmlx.errors.KrmlxError` subclasses.

A stage is a service that holds the service below it (``inner``), adds one concern,
keeps ``stats`` (a dict of plain numbers) and has ``aclose()``. Any object with this
shape works below a stage, so stages can wrap a user's own service; and any callable
``layer(inner) -> Service`` is a layer of :class:`krmlx.stack.StackConfig`, so a user's own
stage goes into an Engine's stack::

    class CountCalls(Stage):
        name = "count_calls"

        def __init__(self, inner):
            super().__init__(inner)
            self.stats = {"calls": 0}

        def call(self, call):
            self.stats["calls"] += 1
            return self.inner.call(call)

    StackConfig(layers=[RetryPolicy(), CountCalls, ModelCacheConfig()])

Which methods exist, which need a model, which stream and which batch is the table of
calls, :data:`METHODS` (the worker's wire, :mod:`krmlx.worker.protocol`, reads it too).

A call may carry ``marks``, its caller-side timeline: every stage's ``call`` stamps
``stage:<name>`` there on entry (:class:`Stage` does it for every subclass), so the time
from the caller to the worker's pipe is split by stage (:func:`krmlx.timeline.stage_hops`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Call:
    """One call into a service: method name, params, the model it is for, a timeout.

    ``buffered``: the caller hands nothing of a stream on before it has ended (as
    ``Engine.complete()`` does), so a stage may re-run the whole stream after a failure
    past its first chunk (:class:`~krmlx.stages.retry.Retry` does); stages that don't
    care ignore it. ``marks``: the call's caller-side timeline (point -> ``perf_counter``
    seconds), kept where the caller asks for one (:func:`mark`)."""

    method: str
    params: dict = field(default_factory=dict)
    model: str | None = None
    timeout_s: float | None = None
    buffered: bool = False
    marks: dict | None = field(default=None, compare=False, repr=False)

    @property
    def streaming(self) -> bool:
        method = METHODS.get(self.method)
        return method is not None and method.streaming


# -- methods -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Batching:
    """How the Batcher stage groups a method: into ``method``, collecting each call's
    ``item`` param into the list param ``items``; calls group by model and ``flags``."""

    method: str
    item: str
    items: str
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Method:
    """One worker method: its params (name -> (types, required)), whether it needs a
    ``model``, where the worker runs it (``inline`` in the read loop, ``aux`` on the
    tokenizer thread, ``compute`` on the MLX thread), whether it streams, and how the
    Batcher may batch it."""

    params: dict
    needs_model: bool = False
    runs: str = "inline"
    streaming: bool = False
    batching: Batching | None = None


METHODS: dict[str, Method] = {
    "ping": Method({}),
    "stats": Method({}),
    "shutdown": Method({}),
    "list_models": Method({}),
    "cancel": Method({"target": (int, True)}),
    "group_probe": Method({"hidden": (int, False), "iters": (int, False)}, runs="compute"),
    "load_model": Method({"trust_remote_code": (bool, False), "draft": (str, False)},
                         needs_model=True, runs="compute"),
    "unload_model": Method({}, needs_model=True, runs="compute"),
    "tokenize": Method({"text": (str, True), "add_special_tokens": (bool, False)},
                       needs_model=True, runs="aux",
                       batching=Batching("batch_tokenize", "text", "texts", ("add_special_tokens",))),
    "detokenize": Method({"ids": (list, True)}, needs_model=True, runs="aux"),
    "batch_tokenize": Method({"texts": (list, True), "add_special_tokens": (bool, False)},
                             needs_model=True, runs="aux"),
    "check_draft": Method({"draft": (str, True)}, needs_model=True, runs="aux",
                          batching=Batching("batch_check_draft", "draft", "drafts")),
    "batch_check_draft": Method({"drafts": (list, True)}, needs_model=True, runs="aux"),
    "generate": Method({"prompt": (str, False), "prompt_ids": (list, False),
                        "messages": (list, False), "max_tokens": (int, True),
                        "temperature": ((int, float), False), "top_p": ((int, float), False),
                        "chat": (bool, False), "system": (str, False), "seed": (int, False)},
                       needs_model=True, runs="compute", streaming=True),
}

NULL_MODEL = "null"  # always resident in a worker: synthetic tokens without MLX (stream costs)


def mark(call: Call, point: str) -> None:
    """Stamp ``point`` (its first time only) on ``call``'s timeline, when it keeps one."""
    if call.marks is not None:
        call.marks.setdefault(point, time.perf_counter())


@runtime_checkable
class Service(Protocol):
    def call(self, call: Call) -> AsyncIterator[Any]: ...

    async def aclose(self) -> None: ...


async def unary(service: Service, call: Call) -> Any:
    """Run a unary call and return its single value."""
    it = service.call(call)
    try:
        async for value in it:
            return value
    finally:
        await it.aclose()
    raise RuntimeError(f"{call.method}: the service yielded no value")


class Stage:
    """Base for stages: holds ``inner``, forwards ``aclose``, keeps ``stats``."""

    name = "stage"

    def __init_subclass__(cls, **kwargs):
        """A subclass's ``call`` stamps ``stage:<name>`` on the call's timeline on entry."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("call")
        if own is not None:
            def call(self, call: Call, _own=own) -> AsyncIterator[Any]:
                mark(call, f"stage:{self.name}")
                return _own(self, call)
            cls.call = functools.wraps(own)(call)

    def __init__(self, inner: Service):
        self.inner = inner
        self.stats: dict[str, Any] = {}

    def call(self, call: Call) -> AsyncIterator[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def aclose(self) -> None:
        await self.inner.aclose()
