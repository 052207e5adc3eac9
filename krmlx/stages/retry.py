"""Retry: re-issue a call that failed with a transient error, with exponential backoff.

Contract
--------
``Retry(inner, policy)`` wraps any :class:`~krmlx.service.Service`. A call is tried
up to ``policy.attempts`` times while ``policy.retry_on(exc)`` says the error is worth
retrying (by default :func:`is_transient`), waiting ``backoff_initial_s *
backoff_multiplier ** (n - 1)`` (capped at ``backoff_max_s``) plus a uniform jitter in
``[0, jitter_s]`` before retry ``n``. With ``deadline_s`` set, no retry starts once
``deadline_s`` has passed since the call began, nor one whose wait would reach it
(time read from the injected ``clock``; tenacity's own clock can't be injected).

* Only the part of a call *before its first item* is retried. A unary call's one
  value and a stream's first :class:`~krmlx.types.Chunk` end the retry window: an
  error after a chunk went to the caller propagates unchanged, so text is never
  duplicated.
* Except for a *buffered* stream (``Call.buffered``: the caller keeps everything until
  the end, as ``Engine.complete()`` does): its whole stream is the attempt. Retry
  collects the items until the :class:`~krmlx.types.Done` and hands them on only
  then, so an error at any point (a worker death after the first token included) is
  retried like any other, re-running the request from the start, with the same policy
  (attempts, backoff, deadline). Nothing is duplicated: a failed attempt's items are
  dropped. Chunks keep their arrival times (those of the attempt that succeeded).
* When it gives up (attempts or deadline used up), the *last error itself* is raised,
  not tenacity's ``RetryError``. Errors the predicate rejects are raised at once.
* Closing the returned iterator early closes the inner one.
* Bounded: an attempt on a hung worker ends after the client's ``liveness_timeout_s``
  (WorkerUnresponsive; the worker is killed and restarted), so with the defaults a call
  waits at most ``attempts * (liveness_timeout_s + a restart) + backoff``; ``deadline_s``
  bounds the total wall time (no retry starts past it) and ``Call.timeout_s`` each try.

Stats: ``calls`` (calls started), ``retries`` (re-attempts made), ``gave_up`` (calls
that failed with a retryable error after attempts/deadline ran out),
``succeeded_after_retry`` (calls whose first item came after at least one retry),
``retry_wait_s`` (total seconds spent waiting between attempts).

Place in the stack: retry sits ABOVE the circuit breaker. :class:`~krmlx.errors.CircuitOpen`
is not transient, so a call the breaker rejects fails fast instead of being retried
against an open circuit; a transient error that passes through the breaker is retried
(and counted by the breaker on each attempt).
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_base, wait_exponential

from .. import clock as _clock
from ..errors import CallTimeout, ConfigError, EngineClosed, TransientError, WorkerCrashed
from ..service import Call, Service, Stage

_EMPTY = object()  # the inner iterator ended without yielding anything


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: TransientError, WorkerCrashed, CallTimeout (and so
    WorkerUnresponsive: the hung worker was killed, the retry runs on a new one).

    False for everything else: BadRequest, UnknownModel, plain WorkerError, EngineClosed
    (the caller closed it), and CircuitOpen (a rejection by the breaker below must not be
    retried in a loop).
    """
    return (isinstance(exc, (TransientError, WorkerCrashed, CallTimeout))
            and not isinstance(exc, EngineClosed))


def _check_number(name: str, value: Any, *, minimum: float = 0.0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum \
            or math.isinf(value):
        raise ConfigError(f"{name}: must be a finite number >= {minimum:g}, got {value!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently :class:`Retry` retries. Validated on creation."""

    attempts: int = 3
    deadline_s: float | None = None
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0
    backoff_multiplier: float = 2.0
    jitter_s: float = 0.02
    retry_on: Callable[[BaseException], bool] = is_transient

    def __post_init__(self):
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigError(f"attempts: must be an int >= 1, got {self.attempts!r}")
        if self.deadline_s is not None:
            _check_number("deadline_s", self.deadline_s)
        _check_number("backoff_initial_s", self.backoff_initial_s)
        _check_number("backoff_max_s", self.backoff_max_s)
        _check_number("backoff_multiplier", self.backoff_multiplier, minimum=1.0)
        _check_number("jitter_s", self.jitter_s)
        if not callable(self.retry_on):
            raise ConfigError(f"retry_on: must be a callable(exc) -> bool, got {self.retry_on!r}")


class _StopBeforeDeadline(stop_base):
    """Stop when the injected clock says no retry can start before the deadline."""

    def __init__(self, deadline_s: float, clock: _clock.Clock):
        self.deadline_s, self.clock, self.start = deadline_s, clock, clock()

    def __call__(self, retry_state) -> bool:
        elapsed = self.clock() - self.start
        return elapsed + (retry_state.upcoming_sleep or 0.0) >= self.deadline_s


class _SeededJitter(wait_base):
    """Uniform jitter in [0, jitter_s] from a seeded RNG (tenacity's uses the global one)."""

    def __init__(self, jitter_s: float, rng: random.Random):
        self.jitter_s, self.rng = jitter_s, rng

    def __call__(self, retry_state) -> float:
        return self.rng.uniform(0.0, self.jitter_s) if self.jitter_s else 0.0


class Retry(Stage):
    """Retries transient failures of the service below; see the module docstring."""

    name = "retry"

    def __init__(self, inner: Service, policy: RetryPolicy | None = None, *,
                 clock: _clock.Clock = _clock.monotonic, sleep: _clock.Sleep = _clock.sleep,
                 seed: int | None = None):
        super().__init__(inner)
        self.policy = policy if policy is not None else RetryPolicy()
        self._clock, self._sleep = clock, sleep
        self._rng = random.Random(seed)
        self.stats = {"calls": 0, "retries": 0, "gave_up": 0, "succeeded_after_retry": 0,
                      "retry_wait_s": 0.0}

    def call(self, call: Call) -> AsyncIterator[Any]:
        return self._run(call)

    def _make_retrying(self, waits: list[float]) -> AsyncRetrying:
        """A fresh tenacity loop for one call; its waits are appended to ``waits``."""
        p = self.policy
        stop = stop_after_attempt(p.attempts)
        if p.deadline_s is not None:
            stop = stop | _StopBeforeDeadline(p.deadline_s, self._clock)
        wait = wait_exponential(multiplier=p.backoff_initial_s, max=p.backoff_max_s,
                                exp_base=p.backoff_multiplier) + _SeededJitter(p.jitter_s, self._rng)
        # Only Exceptions are ever retried: cancellation and exits pass straight through.
        retry = retry_if_exception(lambda exc: isinstance(exc, Exception) and p.retry_on(exc))
        return AsyncRetrying(stop=stop, wait=wait, retry=retry,
                             sleep=lambda s: self._wait(float(s), waits), reraise=True)

    async def _wait(self, seconds: float, waits: list[float]) -> None:
        waits.append(seconds)
        self.stats["retries"] += 1
        self.stats["retry_wait_s"] += seconds
        await self._sleep(seconds)

    async def _first(self, call: Call) -> tuple[AsyncIterator[Any], Any]:
        """One attempt: open the inner iterator and get its first item (or _EMPTY)."""
        it = self.inner.call(call)
        try:
            return it, await it.__anext__()
        except StopAsyncIteration:
            return it, _EMPTY
        except BaseException:
            await it.aclose()
            raise

    async def _whole(self, call: Call) -> tuple[None, list]:
        """One attempt of a buffered stream: all of its items (an error at any point
        fails the attempt)."""
        it = self.inner.call(call)
        try:
            return None, [item async for item in it]
        finally:
            await it.aclose()

    async def _run(self, call: Call) -> AsyncIterator[Any]:
        self.stats["calls"] += 1
        waits: list[float] = []
        it = None
        attempt = self._whole if call.buffered and call.streaming else self._first
        try:
            try:
                it, first = await self._make_retrying(waits)(attempt, call)
            except Exception as exc:
                if self.policy.retry_on(exc):
                    self.stats["gave_up"] += 1
                raise
            if waits:
                self.stats["succeeded_after_retry"] += 1
            if it is None:  # a buffered stream: every item is here already
                for item in first:
                    yield item
                return
            if first is _EMPTY:
                return
            yield first
            # Past the first item nothing is retried: errors propagate as they are.
            async for item in it:
                yield item
        finally:
            if it is not None:
                await it.aclose()
