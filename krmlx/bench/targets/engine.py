"""``engine[:PHASES][?k=v]``: the stdio :class:`~krmlx.engine.Engine` (stages over a worker
process), PHASES in :func:`~krmlx.stack.parse_phases`'s grammar, ``k=v`` WorkerConfig
fields.

Contract: as :class:`~krmlx.bench.targets.base.Target`, with every operation (tokenize,
load, worker calls, ``with_worker`` variants); ``stats()`` are the stages' and client's
counters; ``pids()`` the worker's process tree.
"""

from __future__ import annotations

import json

from ...engine import Engine
from ...errors import ConfigError
from ...stack import StackConfig, parse_phases
from ...types import Completion, Request
from ...worker.launch import DistributedConfig
from ...worker.prompt_cache import PromptCacheConfig
from .base import Target, process_tree


def from_spec(kind: str, arg: str, options: dict, name: str | None, spec: str) -> Target:
    try:
        cfg = engine_config(arg, options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"target {spec!r}: {e}") from None
    query = spec.partition("?")[2]
    return EngineTarget(cfg, name or cfg.label + (f"?{query}" if query else ""), spec)


def engine_config(phases: str, options: dict):
    """A StackConfig from ``engine:PHASES?options``: options are WorkerConfig fields; a few
    take a short form (``prompt_cache=on``, ``distributed=2``, ``faults={json}``)."""
    worker = dict(options)
    if "prompt_cache" in worker:
        worker["prompt_cache"] = PromptCacheConfig() if worker["prompt_cache"] else None
    if isinstance(worker.get("distributed"), int):
        worker["distributed"] = DistributedConfig(ranks=worker["distributed"])
    if isinstance(worker.get("faults"), str):
        worker["faults"] = json.loads(worker["faults"])
    return StackConfig.phases(parse_phases(phases), **worker)


class EngineTarget(Target):
    kind = "engine"
    ops = frozenset({"generate", "tokenize", "load", "call", "worker"})

    def __init__(self, config=None, name: str | None = None, spec: str | None = None):
        self.config = config if config is not None else StackConfig()
        super().__init__(name or self.config.label, spec or f"engine:{self.config.label}")
        self.engine = None

    async def start(self, model: str) -> EngineTarget:
        if self.engine is None:
            engine = Engine(model, self.config)
            try:
                await engine.start()
            except BaseException:
                await engine.close()
                raise
            self.engine, self.folder, self.model = engine, engine.path, model
        return self

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.close()
        self.engine = self.model = None

    @property
    def alive(self) -> bool:
        return self.engine is not None

    async def generate(self, request: Request) -> Completion:
        return await self.engine.complete(request)

    async def tokenize(self, text: str, model: str | None = None) -> list[int]:
        return await self.engine.tokenize(text, model=model)

    async def load(self, model: str) -> dict:
        return await self.engine.call("load_model", {}, model)

    async def call(self, method: str, params: dict | None = None, model: str | None = None):
        return await self.engine.call(method, params, model)

    def with_worker(self, name: str | None = None, **changes) -> EngineTarget:
        cfg = self.config.with_worker(**changes)
        return EngineTarget(cfg, name or self.name, self.spec)

    def with_config(self, config, name: str | None = None) -> EngineTarget:
        return EngineTarget(config, name or self.name, self.spec)

    def stats(self) -> dict:
        return self.engine.stats() if self.engine is not None else {}

    def pids(self) -> list[int]:
        client = getattr(self.engine, "client", None)
        return process_tree(getattr(client, "pid", None))

    def info(self) -> dict:
        client = getattr(self.engine, "client", None)
        return {**super().info(), "config": self.config.to_dict(),
                "load_ms": getattr(self.engine, "load_ms", None),
                "worker": dict(getattr(client, "ready", None) or {})}
