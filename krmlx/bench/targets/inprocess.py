"""In-process targets (no serving layer): ``direct``, mlx-lm in this process through
:class:`~krmlx.direct.DirectEngine` (the baseline), and ``raw``, mlx-lm's BatchGenerator
(waves only: the ceiling of continuous batching).

Contract: as :class:`~krmlx.bench.targets.base.Target`; one model each (a request naming
another raises NotSupported); ``raw`` samples greedily only.
"""

from __future__ import annotations

import asyncio
import time

from mlx_lm.generate import BatchGenerator

from ... import gen
from ...direct import DirectEngine
from ...models import load, resolve_model
from ...types import Completion, Request, Usage
from .base import Target


def from_spec(kind: str, arg: str, options: dict, name: str | None, spec: str) -> Target:
    if kind == "direct" and not arg and not options:
        return DirectTarget(name or "direct", spec)
    if kind == "raw" and not arg:
        return RawBatchTarget(name or "raw", spec, **options)
    return None


class DirectTarget(Target):
    kind = "direct"
    ops = frozenset({"generate", "tokenize"})

    def __init__(self, name: str = "direct", spec: str = "direct"):
        super().__init__(name, spec)
        self.engine = None

    async def start(self, model: str) -> DirectTarget:
        if self.engine is None:
            self.model, self.folder = model, resolve_model(model)
            self.engine = await DirectEngine(self.folder).start()
        return self

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.close()
        self.engine = self.model = None

    async def generate(self, request: Request) -> Completion:
        if request.model not in (None, self.model):
            raise self.lacks("model switching")
        return await self.engine.complete(request)

    async def tokenize(self, text: str, model: str | None = None) -> list[int]:
        if model not in (None, self.model):
            raise self.lacks("model switching")
        return await self.engine.tokenize(text)

    def info(self) -> dict:
        return {**super().info(), "load_ms": getattr(self.engine, "load_ms", None)}


class RawBatchTarget(Target):
    """mlx-lm's BatchGenerator in this process, no serving layer: the ceiling of continuous
    batching. A wave inserts every prompt at once and steps until all are done."""

    kind = "raw"

    def __init__(self, name: str = "raw", spec: str = "raw", *, completion_batch_size: int = 64,
                 prefill_batch_size: int = 8):
        super().__init__(name, spec)
        self.completion_batch_size, self.prefill_batch_size = completion_batch_size, prefill_batch_size
        self.loaded = None

    async def start(self, model: str) -> RawBatchTarget:
        if self.loaded is None:
            self.model, self.folder = model, resolve_model(model)
            self.loaded = load(self.folder)
        return self

    async def stop(self) -> None:
        self.loaded = self.model = None

    async def generate(self, request: Request) -> Completion:
        (done,) = await self.run_wave([request])
        if isinstance(done, BaseException):
            raise done
        return done

    async def run_wave(self, requests: list[Request]) -> list[Completion | BaseException]:
        model, tokenizer = self.loaded
        if any(r.temperature for r in requests):
            raise self.lacks("sampling with temperature")
        prompts = [gen.encode_prompt(tokenizer, r.to_params()) for r in requests]
        eos = sorted(tokenizer.eos_token_ids)
        t0 = time.perf_counter()
        batch = BatchGenerator(model, stop_tokens=[[t] for t in eos],
                               completion_batch_size=max(self.completion_batch_size, len(requests)),
                               prefill_batch_size=self.prefill_batch_size,
                               prefill_step_size=gen.DEFAULT_PREFILL_STEP)
        uids = batch.insert(prompts, max_tokens=[r.max_tokens for r in requests])
        times = {u: [] for u in uids}
        tokens = {u: [] for u in uids}
        detoks = {u: tokenizer.detokenizer for u in uids}  # a fresh one each: same text as streams
        reasons: dict = {}
        try:
            while len(reasons) < len(uids):
                _, responses = batch.next()
                now = time.perf_counter()
                for r in responses:
                    if r.finish_reason != "stop":
                        times[r.uid].append(now)
                        tokens[r.uid].append(r.token)
                        detoks[r.uid].add_token(r.token)
                    if r.finish_reason is not None:
                        reasons[r.uid] = r.finish_reason
                await asyncio.sleep(0)
        finally:
            batch.close()
        t_end = time.perf_counter()
        out = []
        for req, prompt, uid in zip(requests, prompts, uids, strict=True):
            detoks[uid].finalize()
            done = Completion(text=detoks[uid].text, token_ids=tuple(tokens[uid]),
                              finish_reason=reasons[uid], usage=Usage(len(prompt), len(tokens[uid])),
                              t_start_s=t0, token_times_s=tuple(times[uid]), t_end_s=t_end,
                              request_id=req.id)
            out.append(done)
        return out
