"""Batcher: gather concurrent small calls into one batch call to the worker (reference Phase 1).

Contract
--------
``Batcher(inner, config)`` groups concurrent ``tokenize`` calls by ``(model,
add_special_tokens)`` and ``check_draft`` calls by ``model``. A group opens at its first
call and is held for ``window_ms`` (slept on the injected ``sleep``) or until it holds
``max_batch`` calls, whichever comes first; then ONE ``batch_tokenize`` (``{"texts": [...]}``)
or ``batch_check_draft`` (``{"drafts": [...]}``) goes to ``inner`` and each caller gets its
own item of the reply. A group of one is sent as a batch of one, after the same hold.

* Errors: if the batch call fails, every caller still waiting in that batch gets that
  error. A reply whose length does not match the batch fails it with ProtocolError.
* Cancellation: a caller cancelled (or timed out via ``Call.timeout_s``) while its group is
  held is removed from the group; the others are unaffected. Once the batch is sent, a
  cancelled caller's item is simply dropped.
* Calls that do not fit the batch shape (another method, no model, unusual params such
  as per-call ``faults`` or a non-string text) pass straight through to ``inner`` untouched,
  streams included, so one malformed call can never fail a batch of good ones.
* ``adaptive=True`` ignores ``window_ms``/``max_batch`` and picks them per group from the
  number of batchable calls in flight in this stage (waiting or in a sent batch):
  ``adaptive_low`` = (in flight, max_batch, window_ms) at or below the low point,
  ``adaptive_high`` at or above the high point, linear in between.

Stats: ``batches`` (batch calls sent), ``items`` (calls they carried),
``mean_batch_size``, ``max_batch_size``, ``hold_ms_mean`` (first arrival to send, on the
injected clock), ``passthrough`` (calls forwarded unbatched), ``batch_errors``.

Place in the stack: below the model layer (``model_cache`` or ``single_model``, which makes
sure the model is resident for each caller before the call is held here), above the
framer and the worker client (the rules are in :mod:`krmlx.stack`).

Which methods batch, and into what, is the table of calls
(:data:`krmlx.service.METHODS`, each method's ``batching``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from .. import clock as _clock
from ..errors import CallTimeout, ConfigError, ProtocolError
from ..service import METHODS, Call, Service, Stage, unary

MAX_WINDOW_MS = 10.0
BATCHABLE = {name: m.batching for name, m in METHODS.items() if m.batching is not None}


def _check_window(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
            or not 0 <= value <= MAX_WINDOW_MS:
        raise ConfigError(f"{name}: must be a number of ms in [0, {MAX_WINDOW_MS:g}], got {value!r}")


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}: must be an int >= 1, got {value!r}")


@dataclass(frozen=True)
class BatcherConfig:
    """How long and how large batches grow. Validated on creation (ConfigError names the field)."""

    window_ms: float = 2.0
    max_batch: int = 10
    adaptive: bool = False
    adaptive_low: tuple[int, int, float] = (1, 10, 4.0)    # (in flight, max_batch, window_ms)
    adaptive_high: tuple[int, int, float] = (40, 20, 1.0)

    def __post_init__(self):
        _check_window("window_ms", self.window_ms)
        _check_count("max_batch", self.max_batch)
        if not isinstance(self.adaptive, bool):
            raise ConfigError(f"adaptive: must be a bool, got {self.adaptive!r}")
        for name in ("adaptive_low", "adaptive_high"):
            point = getattr(self, name)
            if not isinstance(point, tuple) or len(point) != 3:
                raise ConfigError(f"{name}: must be (in_flight, max_batch, window_ms), got {point!r}")
            _check_count(f"{name}.in_flight", point[0])
            _check_count(f"{name}.max_batch", point[1])
            _check_window(f"{name}.window_ms", point[2])
        if self.adaptive_high[0] <= self.adaptive_low[0]:
            raise ConfigError("adaptive_high: its in_flight must be above adaptive_low's")

    def limits(self, in_flight: int) -> tuple[int, float]:
        """(max_batch, window_ms) for a group opened with ``in_flight`` calls in flight."""
        if not self.adaptive:
            return self.max_batch, self.window_ms
        (n0, b0, w0), (n1, b1, w1) = self.adaptive_low, self.adaptive_high
        frac = min(1.0, max(0.0, (in_flight - n0) / (n1 - n0)))
        return round(b0 + (b1 - b0) * frac), w0 + (w1 - w0) * frac


@dataclass(eq=False)
class _Group:
    key: tuple
    max_batch: int
    window_s: float
    opened: float
    items: list[tuple[Any, asyncio.Future]] = field(default_factory=list)
    timer: asyncio.Task | None = None
    sent: bool = False


class Batcher(Stage):
    """Batches concurrent tokenize / check_draft calls; see the module docstring."""

    name = "batcher"

    def __init__(self, inner: Service, config: BatcherConfig | None = None, *,
                 clock: _clock.Clock = _clock.monotonic, sleep: _clock.Sleep = _clock.sleep):
        super().__init__(inner)
        self.config = config if config is not None else BatcherConfig()
        self._clock, self._sleep = clock, sleep
        self._open: dict[tuple, _Group] = {}
        self._tasks: set[asyncio.Task] = set()
        self._in_flight = 0
        self._hold_ms_total = 0.0
        self.stats = {"batches": 0, "items": 0, "mean_batch_size": 0.0, "max_batch_size": 0,
                      "hold_ms_mean": 0.0, "passthrough": 0, "batch_errors": 0}

    def call(self, call: Call) -> AsyncIterator[Any]:
        key = self._key(call)
        if key is None:
            self.stats["passthrough"] += 1
            return self.inner.call(call)
        return self._batched(call, key)

    @staticmethod
    def _key(call: Call) -> tuple | None:
        """The group a call belongs to, or None when it must pass through unbatched."""
        spec = BATCHABLE.get(call.method)
        if spec is None or not isinstance(call.model, str):
            return None
        params = call.params
        if not isinstance(params.get(spec.item), str) or set(params) - {spec.item, *spec.flags}:
            return None
        values = tuple(params.get(name, False) for name in spec.flags)
        if not all(isinstance(v, bool) for v in values):
            return None
        return (call.method, call.model, *values)

    async def _batched(self, call: Call, key: tuple) -> AsyncIterator[Any]:
        self._in_flight += 1
        try:
            yield await self._submit(call, key)
        finally:
            self._in_flight -= 1

    async def _submit(self, call: Call, key: tuple) -> Any:
        group = self._open.get(key)
        if group is None:
            max_batch, window_ms = self.config.limits(self._in_flight)
            group = _Group(key, max_batch, window_ms / 1e3, self._clock())
            self._open[key] = group
            group.timer = self._spawn(self._hold(group))
        fut = asyncio.get_running_loop().create_future()
        entry = (call.params[BATCHABLE[call.method].item], fut)
        group.items.append(entry)
        if len(group.items) >= group.max_batch:
            group.timer.cancel()
            self._dispatch(group)
        try:
            if call.timeout_s is None:
                return await fut
            try:
                return await asyncio.wait_for(fut, call.timeout_s)
            except asyncio.TimeoutError:  # noqa: UP041 - a distinct class on Python 3.10
                raise CallTimeout(f"{call.method} timed out after {call.timeout_s} s") from None
        except BaseException:
            fut.cancel()
            if not group.sent and entry in group.items:
                group.items.remove(entry)
                if not group.items:  # nobody left: close the group without sending
                    group.timer.cancel()
                    self._open.pop(key, None)
            raise

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _hold(self, group: _Group) -> None:
        try:
            await self._sleep(group.window_s)
        except asyncio.CancelledError:
            return  # filled up (the filler sent it) or emptied by cancellations
        self._dispatch(group)

    def _dispatch(self, group: _Group) -> None:
        if self._open.get(group.key) is group:
            del self._open[group.key]
        if group.sent or not group.items:
            return
        group.sent = True
        self._spawn(self._send(group))

    async def _send(self, group: _Group) -> None:
        method, model, *flags = group.key
        spec = BATCHABLE[method]
        items = [(value, fut) for value, fut in group.items if not fut.done()]
        n = len(items)
        if not n:  # every caller left (cancelled) before their removal ran: send nothing
            return
        st = self.stats
        self._hold_ms_total += (self._clock() - group.opened) * 1e3
        st["batches"] += 1
        st["items"] += n
        st["mean_batch_size"] = st["items"] / st["batches"]
        st["max_batch_size"] = max(st["max_batch_size"], n)
        st["hold_ms_mean"] = self._hold_ms_total / st["batches"]
        params = {spec.items: [value for value, _ in items]}
        params.update({name: v for name, v in zip(spec.flags, flags, strict=True) if v})
        try:
            result = await unary(self.inner, Call(spec.method, params, model))
            if not isinstance(result, list) or len(result) != n:
                raise ProtocolError(f"{spec.method}: expected a list of {n} results, "
                                    f"got {type(result).__name__} of {len(result) if isinstance(result, list) else '?'}")
        except BaseException as exc:
            st["batch_errors"] += 1
            for _, fut in items:
                if not fut.done():
                    if isinstance(exc, asyncio.CancelledError):
                        fut.cancel()
                    else:
                        fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), value in zip(items, result, strict=True):
            if not fut.done():
                fut.set_result(value)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.inner.aclose()
