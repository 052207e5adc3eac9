"""Injectable time, so stages and tests never depend on the real clock.

A *clock* is a zero-argument callable returning monotonic seconds; a *sleep* is an
async callable taking seconds. Production code defaults to :func:`time.perf_counter`
and :func:`asyncio.sleep`; tests pass a :class:`FakeClock`, whose ``sleep`` advances
time instantly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

monotonic: Clock = time.perf_counter
sleep: Sleep = asyncio.sleep


class FakeClock:
    """A clock that moves only when told; ``await clock.sleep(s)`` moves it by ``s``."""

    def __init__(self, start: float = 0.0):
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)  # still yield, as a real sleep would
