"""``chat``: multi-turn conversations that share a long system prompt, the load a prompt
cache is for. ``conversations`` chats of ``turns`` turns each; turn ``k`` of a chat sends
the system prompt, the chat's first ``k-1`` user turns with fixed assistant replies (the
same for every target: the history never depends on what a target generated), and a new
user question. Chats are interleaved turn by turn (chat 1 turn 1, chat 2 turn 1, ...), one
request at a time through every target in turn.

Default targets: ``phase0`` (no reuse) and ``prompt_cache`` (the stdio Engine with KV
prefix reuse); ``direct`` and HTTP servers with ``--target``. The summary: TTFT by turn per
target, the cached prompt tokens a target reports (``usage`` / the engine's done info), and
the TTFT reduction of each target against the base (the first target) per turn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...questions import load_questions
from ...types import Request
from .. import metrics
from ..targets import EngineTarget
from .base import BASE, Workload, check_positive, outputs_match, phase_configs, target_tables

REPLY = "Here is a short answer: it depends on the details, but the main idea is simple."


@dataclass(frozen=True)
class Chat(Workload):
    name = "chat"
    SMOKE = {"conversations": 2, "turns": 2, "system_tokens": 200, "max_tokens": 8}

    conversations: int = 4
    turns: int = 4
    system_tokens: int = 500
    max_tokens: int = 16

    def validate(self, model):
        check_positive(self.name, conversations=self.conversations, turns=self.turns,
                       system_tokens=self.system_tokens, max_tokens=self.max_tokens)

    def default_targets(self, phases, model):
        base = phase_configs(phases or "none")[BASE]
        return [EngineTarget(base, BASE),
                EngineTarget(base.with_worker(prompt_cache=_prompt_cache()), "prompt_cache")]

    def planned_records(self, n_targets):
        return self.conversations * self.turns * n_targets

    def requests(self, run) -> list[Request]:
        from ..prompts import shared_system_prompt

        system = shared_system_prompt(run.tokenizer(), self.system_tokens)
        questions = [q.question for q in load_questions()[0]]
        out = []
        for turn in range(self.turns):
            for chat in range(self.conversations):
                asked = [questions[(chat * self.turns + k) % len(questions)] for k in range(turn + 1)]
                messages = [{"role": "system", "content": system}]
                for q in asked[:-1]:
                    messages += [{"role": "user", "content": q}, {"role": "assistant", "content": REPLY}]
                messages.append({"role": "user", "content": asked[-1]})
                out.append(Request(messages=tuple(messages), max_tokens=self.max_tokens,
                                   id=f"chat{chat}-turn{turn}"))
        return out

    async def run(self, run, group=0):
        reqs = self.requests(run)
        await run.warm([("generate", Request("warm up", max_tokens=2))], label="one request")
        await run.trials(lambda trial: run.sequence(reqs, trial, series="chat"))

    def summarize(self, records, config):
        df = metrics.to_frame(records)
        df["turn"] = df["request_id"].str.extract(r"turn(\d+)$")[0].astype(float)
        names = list(df["target"].unique())
        rows = []
        for (engine, turn), part in df[df["ok"]].groupby(["target", "turn"], sort=True):
            cached = part["cached_prompt_tokens"] if "cached_prompt_tokens" in part else None
            rows.append({"target": engine, "turn": int(turn), "requests": len(part),
                         "prompt_tokens_mean": float(part["prompt_tokens"].mean()),
                         "ttft_ms_p50": float(np.median(part["ttft_ms"])),
                         "cached_prompt_tokens_mean": float(cached.mean())
                         if cached is not None and cached.notna().any() else None})
        base = names[0] if names else None
        by = {(r["target"], r["turn"]): r for r in rows}
        for r in rows:
            b = by.get((base, r["turn"]))
            r["ttft_reduction_x"] = (b["ttft_ms_p50"] / r["ttft_ms_p50"]
                                     if b and r["ttft_ms_p50"] else None)
        return {"targets": target_tables(df), "turns": rows,
                "outputs_match": outputs_match(df, base, names[1:]) if base else []}


def _prompt_cache():
    from ...worker.prompt_cache import PromptCacheConfig

    return PromptCacheConfig()
