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

Which methods exist, which need a model and which batch is the protocol's method table
(:data:`krmlx.worker.protocol.METHODS`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Call:
    """One call into a service: method name, params, the model it is for, a timeout.

    ``buffered``: the caller hands nothing of a stream on before it has ended (as
    ``Engine.complete()`` does), so a stage may re-run the whole stream after a failure
    past its first chunk (:class:`~krmlx.stages.retry.Retry` does); stages that don't
    care ignore it."""

    method: str
    params: dict = field(default_factory=dict)
    model: str | None = None
    timeout_s: float | None = None
    buffered: bool = False

    @property
    def streaming(self) -> bool:
        return self.method == "generate"


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

    def __init__(self, inner: Service):
        self.inner = inner
        self.stats: dict[str, Any] = {}

    def call(self, call: Call) -> AsyncIterator[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def aclose(self) -> None:
        await self.inner.aclose()
