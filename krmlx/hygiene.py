"""Run hygiene: what keeps other processes' load and the garbage collector out of a
measurement. Used by the bench runner (every trial) and by ``krmlx doctor`` (the load now);
it sits outside ``krmlx.bench`` so the doctor can import it without the bench.

Contract: :class:`LoadMeter` measures, over a ``with`` block, the CPU time of processes other
than this one and its children, in cores (``cores``); :func:`settle` collects garbage and
freezes what survives before a timed stretch; :func:`cpu_seconds` sums processes' CPU time
(a process gone is skipped). A leaf module: it imports nothing of krmlx.
"""

from __future__ import annotations

import gc
import time

import psutil

DEFAULT_LOAD_LIMIT_CORES = 0.5  # a trial with more foreign load than this is run again


class LoadMeter:
    """CPU time used by processes other than this one and its children, in cores."""

    def __init__(self):
        self.me = psutil.Process()

    def _own(self) -> float:
        total = 0.0
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def __enter__(self):
        self.t0, self.c0, self.own0 = time.perf_counter(), psutil.cpu_times(), self._own()
        return self

    def __exit__(self, *exc):
        c1, own1 = psutil.cpu_times(), self._own()
        busy = (c1.user + c1.system + c1.nice) - (self.c0.user + self.c0.system + self.c0.nice)
        self.cores = max(0.0, (busy - (own1 - self.own0)) / max(1e-9, time.perf_counter() - self.t0))


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def settle() -> None:
    """Before a timed stretch: collect garbage now and freeze what survives, so a full
    collection (which walks every live object, e.g. the records gathered so far) does not
    land inside a measurement."""
    gc.collect()
    gc.freeze()
