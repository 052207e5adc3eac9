"""Collect the real model's answers on every path (see tests/test_real_model.py).

Run as a script (``python tests/real_model_support.py MODEL``) it prints the answers as
JSON: the test runs it in a child process started with :func:`krmlx.blas.blas_env`, so the
in-process direct path runs on the same BLAS as the worker and the servers (a preload
must be in place when the process starts)."""

import asyncio
import json
import sys
from dataclasses import asdict, dataclass

import openai

from krmlx import DirectEngine, Engine, Request
from krmlx.bench.targets import MlxLmServer
from krmlx.models import resolve_model
from krmlx.serve import ServerProcess
from krmlx.stack import StackConfig

USER = "user"
# (name, conversation, max_tokens): the length-capped answers end on a whole character
ASKS = [
    ("capital", [{"role": USER, "content": "What is the capital of France?"}], 24),
    ("cafe", [{"role": USER, "content": "Write the word café with its accent."}], 16),
    ("system", [{"role": "system", "content": "Be brief."},
                {"role": USER, "content": "What color is the sky on a clear day?"}], 14),
    ("emoji", [{"role": USER, "content": "Reply with only this emoji: 🙂"}], 6),
    ("japanese", [{"role": USER, "content": "Translate 'thank you' into Japanese."}], 8),
]
SCHEDULERS = ("serial", "batched", "auto")


@dataclass
class Answer:
    pieces: list[str]
    finish_reason: str | None
    prompt_tokens: int | None
    output_tokens: int | None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


async def engine_answers(eng) -> dict[str, Answer]:
    out = {}
    for name, messages, n in ASKS:
        stream = eng.stream(Request(messages=messages, max_tokens=n))
        pieces = [c.text async for c in stream]
        count = len(pieces)
        out[name] = Answer(pieces + [stream.tail], stream.finish_reason, stream.prompt_tokens, count)
    return out


def http_answers(base_url: str, model_id: str) -> dict[str, Answer]:
    out = {}
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300) as client:
        for name, messages, n in ASKS:
            pieces, finish, usage = [], None, None
            for event in client.chat.completions.create(
                    model=model_id, messages=messages, max_tokens=n, temperature=0.0,
                    stream=True, stream_options={"include_usage": True}):
                usage = event.usage or usage
                for choice in event.choices:
                    pieces.append(choice.delta.content or "")
                    finish = choice.finish_reason or finish
            out[name] = Answer(pieces, finish, usage and usage.prompt_tokens,
                               usage and usage.completion_tokens)
    return out


async def all_answers(model: str) -> dict[str, dict[str, Answer]]:
    paths = {}
    async with DirectEngine(resolve_model(model)) as eng:
        paths["direct"] = await engine_answers(eng)
    for scheduler in SCHEDULERS:
        async with Engine(model, StackConfig.phases([], scheduler=scheduler)) as eng:
            paths[f"engine/{scheduler}"] = await engine_answers(eng)
    with ServerProcess(model, scheduler="auto", ready_timeout_s=300) as server:
        paths["krmlx.serve"] = await asyncio.to_thread(http_answers, server.base_url, model)
    target = MlxLmServer(None, "mlx_lm.server")
    try:
        await target.start(model)
        paths["mlx_lm.server"] = await asyncio.to_thread(http_answers, target.base_url,
                                                         target.model_id)
    finally:
        await target.stop()
    return paths


def from_json(doc: dict) -> dict[str, dict[str, Answer]]:
    return {path: {name: Answer(**a) for name, a in answers.items()} for path, answers in doc.items()}


if __name__ == "__main__":
    result = asyncio.run(all_answers(sys.argv[1]))
    print(json.dumps({p: {n: asdict(a) for n, a in got.items()} for p, got in result.items()}))
