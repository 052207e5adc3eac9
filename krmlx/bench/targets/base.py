"""Target: the one interface every serving layer is reached through (see
:mod:`krmlx.bench.targets` for the kinds and their spec strings).

Contract: ``start(model)`` is idempotent and leaves nothing running when it raises;
``stop()`` always stops and reaps what ``start`` made; ``generate`` returns a
:class:`~krmlx.types.Completion` timed on the caller's side; an operation a kind lacks
raises :class:`NotSupported` (the runner records it once, never a crash). ``pids()``: the
processes whose CPU time is the target's (:func:`process_tree` of what it started).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import psutil

from ...errors import KrmlxError
from ...types import Completion, Request


class NotSupported(KrmlxError):
    """A target lacks an operation a workload needs (recorded, not a failure)."""


class Target:
    """The interface; see the module docstring. ``name`` labels the target's records
    (the ``engine`` column), ``spec`` is what made it."""

    kind = "target"
    ops: frozenset = frozenset({"generate"})

    def __init__(self, name: str, spec: str):
        self.name, self.spec = name, spec
        self.model: str | None = None
        self.folder: Path | None = None

    async def start(self, model: str) -> Target:
        return self

    async def stop(self) -> None:
        pass

    @property
    def alive(self) -> bool:
        return True

    @property
    def started(self) -> bool:
        """Started (by whoever started it: :func:`~krmlx.bench.runner.run_workload` stops
        only the targets it started itself)."""
        return self.model is not None

    async def generate(self, request: Request) -> Completion:  # pragma: no cover - abstract
        raise NotImplementedError

    async def run_wave(self, requests: list[Request]) -> list[Completion | BaseException]:
        return await asyncio.gather(*(self.generate(r) for r in requests), return_exceptions=True)

    def lacks(self, op: str) -> NotSupported:
        return NotSupported(f"{self.name} ({self.kind}) has no {op!r}")

    async def tokenize(self, text: str, model: str | None = None) -> list[int]:
        raise self.lacks("tokenize")

    async def load(self, model: str) -> dict:
        raise self.lacks("load")

    async def call(self, method: str, params: dict | None = None, model: str | None = None):
        raise self.lacks(method)

    def with_worker(self, name: str | None = None, **changes) -> Target:
        raise self.lacks("worker settings " + ", ".join(sorted(changes)))

    def stats(self) -> dict:
        """Stage and client counters (engines); {} elsewhere."""
        return {}

    def pids(self) -> list[int]:
        """The processes whose CPU time is this target's (besides the caller's own)."""
        return []

    def info(self) -> dict:
        return {"name": self.name, "spec": self.spec, "kind": self.kind, "ops": sorted(self.ops)}


def process_tree(pid: int | None) -> list[int]:
    """``pid`` and its descendants (whose CPU time a target's is); [] without a pid."""
    if not pid:
        return []
    try:
        return [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        return []
