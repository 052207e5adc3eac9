"""Seeded, reproducible fault injection for the worker.

A :class:`FaultPlan` is plain data, set at spawn (``WorkerConfig.faults``) or per call
(``params["faults"]``, which overrides the spawn plan for that call):

- ``error_rate``: {method: probability} of answering with a ``transient`` error
  (``"*"`` applies to every method not listed);
- ``latency_ms``: {method: milliseconds} added before handling;
- ``crash_after_tokens``: the worker process exits (os._exit) after emitting this many
  tokens of one stream;
- ``crash_rate``: per-call probability of exiting at a random point of the call;
- ``seed``: the random stream all of the above draw from.

The draws happen in call-arrival order, so the same plan and the same sequence of
calls gives the same faults.
"""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass, field

from ..errors import BadRequest

CRASH_EXIT_CODE = 86


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class FaultPlan:
    error_rate: dict = field(default_factory=dict)
    latency_ms: dict = field(default_factory=dict)
    crash_after_tokens: int | None = None
    crash_rate: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for name in ("error_rate", "latency_ms"):
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(
                    _number(v) and 0 <= v < float("inf") for v in value.values()):
                raise BadRequest(f"faults.{name}: must map method names to finite non-negative numbers")
        if not _number(self.crash_rate):
            raise BadRequest(f"faults.crash_rate: must be a number, got {type(self.crash_rate).__name__}")
        if any(v > 1 for v in self.error_rate.values()) or not 0 <= self.crash_rate <= 1:
            raise BadRequest("faults: rates must be between 0 and 1")
        if self.crash_after_tokens is not None and (type(self.crash_after_tokens) is not int
                                                    or self.crash_after_tokens < 0):
            raise BadRequest(f"faults.crash_after_tokens: must be an int >= 0 or null, "
                             f"got {self.crash_after_tokens!r}")
        if type(self.seed) is not int:
            raise BadRequest(f"faults.seed: must be an int, got {type(self.seed).__name__}")

    @classmethod
    def from_dict(cls, data: dict | None) -> FaultPlan | None:
        if not data:
            return None
        if not isinstance(data, dict):
            raise BadRequest("faults: must be a map")
        unknown = set(data) - {"error_rate", "latency_ms", "crash_after_tokens", "crash_rate", "seed"}
        if unknown:
            raise BadRequest(f"faults: unknown keys {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return {"error_rate": self.error_rate, "latency_ms": self.latency_ms,
                "crash_after_tokens": self.crash_after_tokens, "crash_rate": self.crash_rate,
                "seed": self.seed}


@dataclass
class CallFaults:
    """What the plan decided for one call."""

    error: bool = False
    latency_s: float = 0.0
    crash_after_tokens: int | None = None  # streams: exit after this many tokens
    crash_now: bool = False  # unary calls: exit before answering


class FaultInjector:
    def __init__(self, plan: FaultPlan | None):
        self.plan = plan
        self._rng = random.Random(plan.seed if plan else 0)
        self._lock = threading.Lock()
        self.injected = {"errors": 0, "delays": 0}

    def draw(self, method: str, override: FaultPlan | None = None) -> CallFaults:
        plan = override or self.plan
        if plan is None:
            return CallFaults()
        rng = random.Random(plan.seed) if override else self._rng
        with self._lock:
            rate = plan.error_rate.get(method, plan.error_rate.get("*", 0.0))
            error = rng.random() < rate
            latency = plan.latency_ms.get(method, plan.latency_ms.get("*", 0.0)) / 1e3
            streaming = method == "generate"
            crash_at = plan.crash_after_tokens if streaming else None
            crash_now = False
            if plan.crash_rate and rng.random() < plan.crash_rate:
                if streaming:
                    crash_at = rng.randint(0, 8)
                else:
                    crash_now = True
            self.injected["errors"] += error
            self.injected["delays"] += latency > 0
        return CallFaults(error, latency, crash_at, crash_now)


def crash_now() -> None:
    """Die the way a real crash does: no reply, no cleanup."""
    os._exit(CRASH_EXIT_CODE)
