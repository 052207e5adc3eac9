"""DirectEngine: mlx-lm in this process, with no serving layer. The baseline.

Same async API as :class:`krmlx.engine.Engine`, so a runner can swap them::

    async with DirectEngine("small") as eng:
        async for chunk in eng.stream(Request("Why is the sky blue?")):
            print(chunk.text, end="")
        done = await eng.complete(Request("What is pi?"))
        print(done.ttft_ms, done.e2e_ms)

Each token is computed inline when the consumer asks for it (no thread hop, no
queue), so nothing but mlx-lm's own loop stands between caller and model.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import gen
from .base import BaseEngine
from .models import DEFAULT_MODEL, load, resolve_model
from .types import Chunk, ChunkStream, Completion, Done, Request, complete_stream


class DirectEngine(BaseEngine):
    name = "direct"

    def __init__(self, model: str | Path = DEFAULT_MODEL, *, trust_remote_code: bool = False,
                 max_prompt_tokens: int | None = None):
        """``max_prompt_tokens``: refuse longer prompts (default: the model's context)."""
        self.model_name = str(model)
        self.trust_remote_code = trust_remote_code
        self.max_prompt_tokens = max_prompt_tokens
        self.model = self.tokenizer = None
        self.limits = gen.NO_LIMITS  # the model's vocabulary and context, once loaded
        self.path: Path | None = None
        self.load_ms: float | None = None

    async def start(self) -> DirectEngine:
        if self.model is None:
            self.path = resolve_model(self.model_name)
            t0 = time.perf_counter()
            self.model, self.tokenizer = load(self.path, trust_remote_code=self.trust_remote_code)
            self.limits = gen.PromptLimits.of(self.model, self.tokenizer, self.max_prompt_tokens)
            self.load_ms = (time.perf_counter() - t0) * 1e3
        return self

    async def close(self) -> None:
        self.model = self.tokenizer = None

    def _require(self):
        if self.model is None:
            raise RuntimeError("DirectEngine is not started: use 'async with' or await start()")

    def stream(self, request: Request) -> ChunkStream:
        """Stream the request's tokens as :class:`Chunk` (timestamps on arrival)."""
        self._require()
        return ChunkStream(self._generate(request))

    async def _generate(self, request: Request):
        prompt_ids = gen.encode_prompt(self.tokenizer, request.to_params(), self.limits)
        sampled: list[float] = []
        prefill: list[float] = []
        timeline = {"encoded": time.perf_counter(), "prefill": prefill, "sampled": sampled}
        steps = gen.iter_tokens(self.model, self.tokenizer, prompt_ids,
                                max_tokens=request.max_tokens,
                                temperature=request.temperature, seed=request.seed,
                                top_p=request.top_p, prefill=prefill)
        run = gen.TokenRun(steps)
        try:
            for index, (token, text) in enumerate(run):
                now = time.perf_counter()
                sampled.append(now)
                yield Chunk(token, text, index, now)
            yield Done(run.finish, len(prompt_ids), run.tail, {"timeline": timeline})
        finally:
            steps.close()

    async def complete(self, request: Request) -> Completion:
        t0 = time.perf_counter()
        return await complete_stream(self.stream(request), t0, request.id)

    async def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        self._require()
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))
