"""ModelCache: keep several models resident in the worker, evict LRU (reference Phase 2).

Contract
--------
``ModelCache(inner, config)``: every call with a ``model`` first makes sure that model is
resident in the worker. On a miss it loads it (``load_model``) and, with ``warmup``, runs
a ``warmup_tokens`` generate of the prompt "warmup" and drains it, so the first real
request does not pay compile/allocation. Before loading, it evicts least-recently-used
unpinned models (``unload_model``) until both ``max_models`` and ``budget_bytes`` fit. A
model's size is estimated from its safetensors bytes on disk before loading and replaced
by the ``bytes`` the load reply reports.

* In flight: a model is never evicted while calls for it are running (refcount held from
  before the load until the call completes, fails, or its stream is closed early). When
  nothing can be evicted, the loader waits until a refcount drops. Note: a task that holds
  a stream of model A open and then waits on a call for model B with ``max_models=1``
  deadlocks; that is the honest consequence of the limit.
* One load per model: concurrent calls for the same missing model share one load (run as
  its own task, so a cancelled caller does not cancel it for the others). Loads and
  evictions are serialized (the worker runs them on one thread anyway).
* Errors: a load error reaches every caller waiting for that load; nothing is left in the
  bookkeeping. A model larger than the whole budget, or one that can't fit beside the
  pinned models, fails at once with :class:`~krmlx.errors.ModelError` naming the model,
  its bytes and the budget (no eviction happens). A warmup error is logged and counted
  (``warmup_errors``), not raised: the model is loaded, the real call reports its own error.
* ``load_model`` through the cache means "ensure resident" (the reply says ``cached``);
  ``unload_model`` waits for the model's in-flight calls, unloads it and drops it from the
  bookkeeping. The worker's always-resident "null" model passes straight through.
* :meth:`pin` / :meth:`unpin` exempt a model from eviction; :meth:`ensure` preloads.

Stats: ``hits``, ``misses`` (calls that waited for a load, shared or not), ``loads``,
``evictions``, ``waits`` (times a loader waited for in-flight calls), ``load_ms_total``,
``load_ms_mean`` (load_model wall time seen here), ``warmup_ms_total``, ``warmup_errors``,
``resident_bytes``, ``resident`` (names, most recently used last).

Place in the stack: below retry and breaker (a retried call counts as a new hit), above
the batcher (each caller holds its refcount while its item waits in a batch). Default
order, top to bottom: retry, breaker, model_cache (or single_model), batcher, framer,
worker (the rules are in :mod:`krmlx.stack`).

SingleModel
-----------
:class:`SingleModel` is the cache-off baseline (the reference's "without caching"): exactly one
model resident; a call for another model waits for the current model's in-flight calls,
unloads it and loads the new one (no warmup). Calls pass through a FIFO lock, so with
interleaved models each call in arrival order may pay a switch. Load errors reach the
caller (nothing resident afterwards); an unload error leaves the old model current. Stats:
``switches`` (loads caused by a change of model, the first included), ``unloads``,
``load_ms_total``. Place: where the model cache would be, above the batcher (its layer is
:class:`SingleModelConfig`, which :class:`krmlx.stack.StackConfig` puts in when a stack has
no model cache).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from .. import clock as _clock
from ..errors import ConfigError, ModelError, UnknownModel
from ..service import NULL_MODEL, Call, Service, Stage, unary

log = logging.getLogger(__name__)
UNMANAGED_MODELS = frozenset({NULL_MODEL})  # the worker's always-resident synthetic model


def model_size_estimate(model: str) -> int:
    """Bytes of the model's safetensors on disk (may build a synthetic model first); 0 for a
    name krmlx can't resolve (a user's own service's model): its load reply then tells."""
    from ..models import model_bytes, resolve_model

    try:
        return model_bytes(resolve_model(model))
    except ModelError:
        return 0


async def relay(inner: Service, call: Call, acquire, release) -> AsyncIterator[Any]:
    """Run ``call`` on ``inner`` between ``await acquire()`` and ``await release()``: the
    release comes when the stream ends, fails or is closed early (the inner one is closed
    first, which cancels it in the worker)."""
    await acquire()
    it = None
    try:
        it = inner.call(call)
        async for item in it:
            yield item
    finally:
        try:
            if it is not None:
                await it.aclose()
        finally:
            await release()


@dataclass(frozen=True)
class ModelCacheConfig:
    """Cache limits. Validated on creation (ConfigError names the field)."""

    max_models: int = 3
    budget_bytes: int | None = 8 * 2**30  # None: no byte limit
    warmup: bool = True
    warmup_tokens: int = 2
    pinned: tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("max_models", "warmup_tokens") + (("budget_bytes",) if self.budget_bytes is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: must be an int >= 1, got {value!r}")
        if not isinstance(self.warmup, bool):
            raise ConfigError(f"warmup: must be a bool, got {self.warmup!r}")
        if not isinstance(self.pinned, tuple) or not all(isinstance(m, str) and m for m in self.pinned):
            raise ConfigError(f"pinned: must be a tuple of model names, got {self.pinned!r}")
        if len(set(self.pinned)) > self.max_models:
            raise ConfigError(f"pinned: {len(set(self.pinned))} pinned models exceed max_models={self.max_models}")


@dataclass(frozen=True)
class SingleModelConfig:
    """The cache-off model layer (:class:`SingleModel`): it has no settings."""


class ModelCache(Stage):
    """Keeps up to ``max_models`` models resident, LRU eviction; see the module docstring."""

    name = "model_cache"

    def __init__(self, inner: Service, config: ModelCacheConfig | None = None, *,
                 clock: _clock.Clock = _clock.monotonic):
        super().__init__(inner)
        self.config = config if config is not None else ModelCacheConfig()
        self._clock = clock
        self._resident: OrderedDict[str, int] = OrderedDict()  # name -> bytes, LRU first
        self._refs: dict[str, int] = {}
        self._pinned: set[str] = set(self.config.pinned)
        self._loading: dict[str, asyncio.Task] = {}
        self._estimates: dict[str, int] = {}
        self._admit = asyncio.Lock()  # serializes loads, evictions, unloads
        self._cond = asyncio.Condition()  # notified when a refcount drops to 0
        self.stats = {"hits": 0, "misses": 0, "loads": 0, "evictions": 0, "waits": 0,
                      "load_ms_total": 0.0, "load_ms_mean": 0.0, "warmup_ms_total": 0.0,
                      "warmup_errors": 0, "resident_bytes": 0, "resident": []}

    # -- public ------------------------------------------------------------------------------
    def pin(self, model: str) -> None:
        self._pinned.add(model)

    def unpin(self, model: str) -> None:
        self._pinned.discard(model)

    async def ensure(self, model: str, params: dict | None = None) -> dict:
        """Make ``model`` resident (loading it if needed); returns a load_model-like reply."""
        reply = await self._acquire(model, params or {})
        await self._release(model)
        return reply

    def call(self, call: Call) -> AsyncIterator[Any]:
        if not isinstance(call.model, str) or call.model in UNMANAGED_MODELS:
            return self.inner.call(call)
        if call.method == "load_model":
            return self._explicit_load(call)
        if call.method == "unload_model":
            return self._explicit_unload(call)
        return self._run(call)

    # -- calls -------------------------------------------------------------------------------
    def _run(self, call: Call) -> AsyncIterator[Any]:
        return relay(self.inner, call, lambda: self._acquire(call.model, {}),
                     lambda: self._release(call.model))

    async def _explicit_load(self, call: Call) -> AsyncIterator[Any]:
        reply = await self.ensure(call.model, call.params)
        if call.params and reply.get("cached"):  # resident already: the params (e.g. a draft) still apply
            reply = await unary(self.inner, call)
        yield reply

    async def _explicit_unload(self, call: Call) -> AsyncIterator[Any]:
        model = call.model
        async with self._admit:
            async with self._cond:
                await self._cond.wait_for(lambda: not self._refs.get(model))
            self._resident.pop(model, None)
            self._sync_stats()
            reply = await unary(self.inner, call)
        yield reply

    # -- refcounts ---------------------------------------------------------------------------
    async def _acquire(self, model: str, params: dict) -> dict:
        """Hold a ref on ``model`` and return once it is resident."""
        self._refs[model] = self._refs.get(model, 0) + 1  # held before loading: no eviction race
        try:
            if model in self._resident:
                self._resident.move_to_end(model)
                self.stats["hits"] += 1
                self._sync_stats()
                return {"model": model, "cached": True, "bytes": self._resident[model], "load_ms": 0.0}
            self.stats["misses"] += 1
            task = self._loading.get(model)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._load(model, params))
                task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved
                self._loading[model] = task
            return await asyncio.shield(task)
        except BaseException:
            await self._release(model)
            raise

    async def _release(self, model: str) -> None:
        n = self._refs.get(model, 0) - 1
        if n > 0:
            self._refs[model] = n
            return
        self._refs.pop(model, None)
        async with self._cond:
            self._cond.notify_all()

    # -- loading and eviction ------------------------------------------------------------------
    async def _load(self, model: str, params: dict) -> dict:
        try:
            async with self._admit:  # loads go in arrival order
                if model in self._resident:  # loaded by an explicit call meanwhile
                    return {"model": model, "cached": True, "bytes": self._resident[model], "load_ms": 0.0}
                need = await self._estimate(model)
                await self._make_room(model, need)
                t0 = self._clock()
                reply = await unary(self.inner, Call("load_model", params, model))
                load_ms = (self._clock() - t0) * 1e3
                st = self.stats
                st["loads"] += 1
                st["load_ms_total"] += load_ms
                st["load_ms_mean"] = st["load_ms_total"] / st["loads"]
                if self.config.warmup:
                    await self._warmup(model)
                self._resident[model] = int(reply.get("bytes") or need)
                self._sync_stats()
                return reply
        finally:
            self._loading.pop(model, None)

    async def _estimate(self, model: str) -> int:
        if model not in self._estimates:
            # resolve_model may build a synthetic model (~1 s): keep it off the event loop.
            self._estimates[model] = await asyncio.to_thread(model_size_estimate, model)
        return self._estimates[model]

    def _fits(self, need: int) -> bool:
        budget = self.config.budget_bytes
        return (len(self._resident) + 1 <= self.config.max_models
                and (budget is None or sum(self._resident.values()) + need <= budget))

    def _victim(self) -> str | None:
        """The least recently used model that is neither pinned nor in flight."""
        return next((m for m in self._resident if m not in self._pinned and not self._refs.get(m)), None)

    async def _make_room(self, model: str, need: int) -> None:
        budget, limit = self.config.budget_bytes, self.config.max_models
        if budget is not None and need > budget:
            raise ModelError(f"model {model!r} needs {need} bytes, more than the whole model "
                             f"cache budget of {budget} bytes (ModelCacheConfig.budget_bytes)")
        pinned = {m: b for m, b in self._resident.items() if m in self._pinned}
        if len(pinned) + 1 > limit or (budget is not None and sum(pinned.values()) + need > budget):
            raise ModelError(f"model {model!r} ({need} bytes) can't fit beside the pinned models "
                             f"{sorted(pinned)} ({sum(pinned.values())} bytes) within "
                             f"max_models={limit}, budget_bytes={budget}")
        while not self._fits(need):
            victim = self._victim()
            if victim is None:  # everything evictable is in flight: wait for a refcount to drop
                self.stats["waits"] += 1
                async with self._cond:
                    await self._cond.wait_for(lambda: self._victim() is not None or self._fits(need))
                continue
            await self._evict(victim)

    async def _evict(self, victim: str) -> None:
        nbytes = self._resident.pop(victim)
        self._sync_stats()
        try:
            await unary(self.inner, Call("unload_model", {}, victim))
        except BaseException:
            self._resident[victim] = nbytes  # still loaded as far as we know
            self._resident.move_to_end(victim, last=False)
            self._sync_stats()
            raise
        self.stats["evictions"] += 1

    async def _warmup(self, model: str) -> None:
        t0 = self._clock()
        call = Call("generate", {"prompt": "warmup", "max_tokens": self.config.warmup_tokens,
                                 "chat": False}, model)
        it = self.inner.call(call)
        try:
            async for _ in it:
                pass
        except Exception as exc:  # noqa: BLE001 - warmup is an optimization, never fatal
            self.stats["warmup_errors"] += 1
            log.warning("warmup of %r failed: %s", model, exc)
        finally:
            await it.aclose()
            self.stats["warmup_ms_total"] += (self._clock() - t0) * 1e3

    def _sync_stats(self) -> None:
        self.stats["resident"] = list(self._resident)
        self.stats["resident_bytes"] = sum(self._resident.values())

    async def aclose(self) -> None:
        for task in list(self._loading.values()):
            task.cancel()
        await asyncio.gather(*self._loading.values(), return_exceptions=True)
        await self.inner.aclose()


class SingleModel(Stage):
    """One resident model; switching unloads and loads (cache off). See the module docstring."""

    name = "single_model"

    def __init__(self, inner: Service, *, clock: _clock.Clock = _clock.monotonic):
        super().__init__(inner)
        self._clock = clock
        self.current: str | None = None
        self._bytes = 0
        self._refs = 0  # calls running on ``current``
        self._lock = asyncio.Lock()  # FIFO: calls go in arrival order
        self._cond = asyncio.Condition()
        self.stats = {"switches": 0, "unloads": 0, "load_ms_total": 0.0}

    def call(self, call: Call) -> AsyncIterator[Any]:
        if not isinstance(call.model, str) or call.model in UNMANAGED_MODELS:
            return self.inner.call(call)
        if call.method == "unload_model":
            return self._explicit_unload(call)
        if call.method == "load_model":
            return self._explicit_load(call)
        return relay(self.inner, call, lambda: self._acquire(call.model, {}), self._release)

    async def _explicit_load(self, call: Call) -> AsyncIterator[Any]:
        reply = await self._acquire(call.model, call.params)
        try:
            if call.params and reply.get("cached"):  # resident: the params (a draft) still apply
                reply = await unary(self.inner, call)
            yield reply
        finally:
            await self._release()

    async def _acquire(self, model: str, params: dict) -> dict:
        if self.current == model and not self._lock.locked():  # the common case: no switch
            self._refs += 1
            return {"model": model, "cached": True, "bytes": self._bytes, "load_ms": 0.0}
        async with self._lock:
            reply = {"model": model, "cached": True, "bytes": self._bytes, "load_ms": 0.0}
            if self.current != model:
                await self._unload_current()
                t0 = self._clock()
                reply = await unary(self.inner, Call("load_model", params, model))
                self.stats["load_ms_total"] += (self._clock() - t0) * 1e3
                self.stats["switches"] += 1
                self.current, self._bytes = model, int(reply.get("bytes") or 0)
            self._refs += 1
            return reply

    async def _release(self) -> None:
        self._refs -= 1
        if self._refs == 0:
            async with self._cond:
                self._cond.notify_all()

    async def _unload_current(self) -> None:
        """Wait for the current model's calls to finish, then unload it (lock held)."""
        if self.current is None:
            return
        async with self._cond:
            await self._cond.wait_for(lambda: self._refs == 0)
        try:
            await unary(self.inner, Call("unload_model", {}, self.current))
        except UnknownModel:
            pass  # already gone (e.g. a restarted worker): nothing to free
        self.stats["unloads"] += 1
        self.current = None

    async def _explicit_unload(self, call: Call) -> AsyncIterator[Any]:
        async with self._lock:
            if self.current == call.model:
                async with self._cond:
                    await self._cond.wait_for(lambda: self._refs == 0)
            reply = await unary(self.inner, call)
            if self.current == call.model:
                self.current = None
        yield reply
