"""CircuitBreaker: stop calling a failing service for a while, then probe it.

Contract
--------
``CircuitBreaker(inner, policy)`` wraps any :class:`~krmlx.service.Service` and is in
one of three states (pybreaker's model):

* ``"closed"``: calls go through. ``failure_threshold`` *consecutive* counted failures
  open the circuit; a success resets the count.
* ``"open"``: every call is rejected at once with :class:`~krmlx.errors.CircuitOpen`
  (raised from the returned iterator, before the inner service is touched); the message
  says the breaker is open and for how many more seconds.
* ``"half_open"``: once ``open_s`` has passed (read from the injected ``clock``; the move
  happens lazily, when ``state`` is read or the next call arrives), up to
  ``half_open_probes`` calls at a time go through as probes and the rest are rejected
  with CircuitOpen. ``half_open_probes`` probe successes close the circuit; one probe
  failure opens it again for another ``open_s``.

What counts: a *failure* is an exception raised by the inner iterator before the call
completed for which ``policy.counts(exc)`` is true (by default
:func:`~krmlx.stages.retry.is_transient`). A *success* is a stream's
:class:`~krmlx.types.Done` arriving, or a unary call's value arriving. Anything else is
neutral and does not move the state: errors the predicate does not count (BadRequest,
UnknownModel ... pass through unchanged), cancellation, the caller closing the iterator
early. Outcomes of calls admitted before the latest state change are counted in stats
but do not move the new state.

One failure event counts once: a failure that *is* (the same exception instance as) the
last counted failure, of a call that was already in flight when that failure was
counted, is neutral. The worker client fails every call pending when the worker dies
with one shared :class:`~krmlx.errors.WorkerCrashed`, so one crash with many calls in
flight is one failure, not one per call (else a single crash under load would open the
breaker while the client is already restarting the worker). A call admitted after the
failure was counted counts again even if it fails with the same instance: that is a
new failure of the service, not a second view of the same one.

Listeners registered with :meth:`add_listener` are called as ``listener(old, new)`` on
every transition, in order; a listener that raises is logged, not propagated.

Stats: ``state``, ``opened`` (times the circuit opened), ``rejected`` (calls refused
with CircuitOpen), ``failures`` and ``successes`` (counted outcomes; a repeated failure
instance is not counted).

Place in the stack: below :class:`~krmlx.stages.retry.Retry`. CircuitOpen is not
transient, so Retry does not retry a rejection; each retried attempt that reaches the
breaker counts as one outcome here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from .. import clock as _clock
from ..errors import CircuitOpen, ConfigError
from ..service import Call, Service, Stage
from ..types import Done
from .retry import is_transient

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

Listener = Callable[[str, str], Any]


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}: must be an int >= 1, got {value!r}")


@dataclass(frozen=True)
class BreakerPolicy:
    """When :class:`CircuitBreaker` opens and how it recovers. Validated on creation."""

    failure_threshold: int = 5
    open_s: float = 5.0
    half_open_probes: int = 1
    counts: Callable[[BaseException], bool] = is_transient

    def __post_init__(self):
        _check_int("failure_threshold", self.failure_threshold)
        if isinstance(self.open_s, bool) or not isinstance(self.open_s, (int, float)) \
                or not 0 <= self.open_s < float("inf"):
            raise ConfigError(f"open_s: must be a finite number >= 0, got {self.open_s!r}")
        _check_int("half_open_probes", self.half_open_probes)
        if not callable(self.counts):
            raise ConfigError(f"counts: must be a callable(exc) -> bool, got {self.counts!r}")


class CircuitBreaker(Stage):
    """Rejects calls fast while the service below keeps failing; see the module docstring."""

    name = "breaker"

    def __init__(self, inner: Service, policy: BreakerPolicy | None = None, *,
                 clock: _clock.Clock = _clock.monotonic):
        super().__init__(inner)
        self.policy = policy if policy is not None else BreakerPolicy()
        self._clock = clock
        self.listeners: list[Listener] = []
        self._state = CLOSED
        self._generation = 0  # bumped on every transition; stale outcomes are ignored
        self._consecutive_failures = 0
        self._open_until = 0.0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._last_failure: BaseException | None = None  # the last counted failure instance
        self._failure_seq = 0  # counted failures so far (calls note it when admitted)
        self.stats = {"state": CLOSED, "opened": 0, "rejected": 0, "failures": 0,
                      "successes": 0}

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(old_state, new_state)`` on every transition."""
        self.listeners.append(listener)

    @property
    def state(self) -> str:
        self._refresh()
        return self._state

    def _refresh(self) -> None:
        if self._state == OPEN and self._clock() >= self._open_until:
            self._transition(HALF_OPEN)

    def _transition(self, new: str) -> None:
        old, self._state = self._state, new
        self._generation += 1
        self._consecutive_failures = self._probes_in_flight = self._probe_successes = 0
        if new == OPEN:
            self._open_until = self._clock() + self.policy.open_s
            self.stats["opened"] += 1
        self.stats["state"] = new
        for listener in list(self.listeners):
            try:
                listener(old, new)
            except Exception:
                log.exception("breaker listener %r failed on %s -> %s", listener, old, new)

    def _admit(self) -> tuple[int, bool]:
        """Let a call through (returning its generation and whether it is a probe) or raise."""
        self._refresh()
        if self._state == OPEN:
            self.stats["rejected"] += 1
            remaining = max(0.0, self._open_until - self._clock())
            raise CircuitOpen(f"circuit breaker is open: calls are rejected for another "
                              f"{remaining:.3g} s")
        if self._state == HALF_OPEN:
            if self._probes_in_flight >= self.policy.half_open_probes:
                self.stats["rejected"] += 1
                raise CircuitOpen(f"circuit breaker is half-open: {self._probes_in_flight} "
                                  f"probe(s) in flight, other calls are rejected until they end")
            self._probes_in_flight += 1
            return self._generation, True
        return self._generation, False

    def _settle(self, generation: int, probe: bool, outcome: bool | None) -> None:
        """Record a call's end: True success, False counted failure, None neutral."""
        if outcome is True:
            self.stats["successes"] += 1
        elif outcome is False:
            self.stats["failures"] += 1
        if generation != self._generation:
            return  # admitted under an earlier state: don't let it move this one
        if probe:
            self._probes_in_flight -= 1
        if outcome is None:
            return
        if self._state == CLOSED:
            if outcome:
                self._consecutive_failures = 0
            else:
                self._consecutive_failures += 1
                if self._consecutive_failures >= self.policy.failure_threshold:
                    self._transition(OPEN)
        elif self._state == HALF_OPEN:
            if not outcome:
                self._transition(OPEN)
            else:
                self._probe_successes += 1
                if self._probe_successes >= self.policy.half_open_probes:
                    self._transition(CLOSED)

    def call(self, call: Call) -> AsyncIterator[Any]:
        return self._run(call)

    async def _run(self, call: Call) -> AsyncIterator[Any]:
        generation, probe = self._admit()
        seen_failures = self._failure_seq
        outcome: bool | None = None
        settled = False
        it = self.inner.call(call)
        try:
            async for item in it:
                if not settled and (not call.streaming or isinstance(item, Done)):
                    # Settle before handing the item on: the caller may close right after.
                    settled, outcome = True, True
                    self._settle(generation, probe, True)
                yield item
        except Exception as exc:
            if not settled and self.policy.counts(exc):
                if exc is self._last_failure and seen_failures < self._failure_seq:
                    pass  # the failure counted last, seen by another call in flight: neutral
                else:
                    self._last_failure = exc
                    self._failure_seq += 1
                    outcome = False
            raise
        finally:
            if not settled:
                self._settle(generation, probe, outcome)
            await it.aclose()
