"""Engine: the served path. A worker process behind the stage stack, with the same async
API as :class:`krmlx.direct.DirectEngine` (``stream``, ``complete``, ``tokenize``)::

    async with Engine("small", StackConfig.all()) as eng:
        done = await eng.complete(Request("Why is the sky blue?"))

With ``StackConfig()`` (no phases) it is "phase 0": the plain serving layer.
"""

from __future__ import annotations

import time
from pathlib import Path

from .base import BaseEngine
from .models import DEFAULT_MODEL, resolve_model
from .service import Call, unary
from .stack import StackConfig, build_stack
from .types import ChunkStream, Completion, Request, complete_stream
from .worker.client import WorkerClient


class Engine(BaseEngine):
    def __init__(self, model: str | Path = DEFAULT_MODEL, config: StackConfig | None = None, *,
                 env: dict | None = None):
        """``config``: the stage stack and the worker (:class:`~krmlx.stack.StackConfig`);
        ``env``: the worker's environment (default: this process's)."""
        self.model_name = str(model)
        self.config = config or StackConfig()
        self.name = self.config.label
        self.env = env
        self.client: WorkerClient | None = None
        self.service = None
        self.stages: list = []
        self.path: Path | None = None
        self.load_ms: float | None = None

    async def start(self) -> Engine:
        if self.client is not None:
            return self
        cfg = self.config
        self.path = resolve_model(self.model_name)  # build synthetic presets here, not in the worker
        self.client = WorkerClient(cfg.worker_config, env=self.env)
        await self.client.start()
        self.service, self.stages = build_stack(cfg, self.client)
        t0 = time.perf_counter()
        draft = cfg.worker.draft
        await unary(self.service, Call("load_model", {"draft": draft} if draft else {},
                                       self.model_name))
        self.load_ms = (time.perf_counter() - t0) * 1e3
        return self

    async def close(self) -> None:
        if self.service is not None:
            await self.service.aclose()
        elif self.client is not None:
            await self.client.aclose()
        self.client = self.service = None

    def _require(self):
        if self.service is None:
            raise RuntimeError("Engine is not started: use 'async with' or await start()")

    def stream(self, request: Request) -> ChunkStream:
        self._require()
        call = Call("generate", request.to_params(), request.model or self.model_name, marks={})
        return ChunkStream(self.service.call(call))

    async def complete(self, request: Request) -> Completion:
        """The whole completion. Nothing is handed out before the end, so the call is
        ``buffered``: with retry on, a stream that fails even after its first token (a
        worker death mid-stream) is re-run whole under the retry policy (``stream()``
        is never retried past its first chunk: its caller has seen the text)."""
        self._require()
        t0 = time.perf_counter()
        call = Call("generate", request.to_params(), request.model or self.model_name,
                    buffered=True, marks={})
        return await complete_stream(ChunkStream(self.service.call(call)), t0, request.id)

    async def tokenize(self, text: str, *, add_special_tokens: bool = False,
                       model: str | None = None) -> list[int]:
        self._require()
        return await unary(self.service, Call("tokenize", {"text": text, "add_special_tokens": add_special_tokens},
                                              model or self.model_name))

    async def call(self, method: str, params: dict | None = None, model: str | None = None):
        """Any unary worker method through the stack (e.g. ``check_draft``, ``list_models``)."""
        self._require()
        return await unary(self.service, Call(method, params or {}, model))

    def stats(self) -> dict:
        """Each stage's stats (top first) and the client's."""
        out = {getattr(s, "name", type(s).__name__): dict(getattr(s, "stats", {}))
               for s in self.stages}
        if self.client is not None:
            out["client"] = dict(self.client.stats)
        return out
