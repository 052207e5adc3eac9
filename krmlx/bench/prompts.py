"""Prompts for the workloads beyond the 50 questions: text (so every target, HTTP servers
included, gets the same thing), sized in tokens by the model's own tokenizer with its chat
template, deterministic for a seed.

- :func:`prompt_of_length`: a prompt whose templated length is close to ``n`` tokens
  (within a few tokens: words are added until it reaches ``n``);
- :func:`long_prompts`: ``k`` prompts of ``low``..``high`` tokens (prefill-heavy loads);
- :func:`shared_system_prompt`: a system prompt of at least ``n`` tokens (shared prefixes).
"""

from __future__ import annotations

import random

from .. import gen
from ..questions import load_questions
from ..types import Request

WORDS = ("river", "sky", "bees", "bridge", "cloud", "seven", "light", "stone", "field",
         "north", "paper", "glass", "maple", "ocean", "tiger", "song", "iron", "lamp")


def _length(tokenizer, text: str, chat: bool = True) -> int:
    return len(gen.encode_prompt(tokenizer, {"prompt": text, "chat": chat}))


def prompt_of_length(tokenizer, n: int, *, seed: int = 0, chat: bool = True) -> str:
    """A question-like text whose prompt (chat template included) is about ``n`` tokens:
    the first length at or above ``n`` reached by adding words (a word is a token or two)."""
    rng = random.Random(seed)
    questions = [q.question for q in load_questions()[0]]
    head = rng.choice(questions)
    words: list[str] = []
    text = head
    if _length(tokenizer, text, chat) >= n:
        return text
    # grow in large steps first, then word by word (each length costs one tokenization)
    step = max(1, n // 4)
    while True:
        trial = words + [rng.choice(WORDS) for _ in range(step)]
        candidate = head + " Context: " + " ".join(trial) + "."
        if _length(tokenizer, candidate, chat) < n:
            words = trial
            continue
        if step == 1:
            return candidate
        step = max(1, step // 4)


def long_prompts(tokenizer, k: int, *, low: int = 100, high: int = 200, seed: int = 0,
                 max_tokens: int = 32, prefix: str = "long") -> list[Request]:
    """``k`` requests whose prompts are ``low``..``high`` tokens long (evenly spread)."""
    out = []
    for i in range(k):
        n = low + (high - low) * i // max(1, k - 1)
        out.append(Request(prompt_of_length(tokenizer, n, seed=seed + i), max_tokens=max_tokens,
                           id=f"{prefix}-{i:03d}"))
    return out


def shared_system_prompt(tokenizer, n: int = 500) -> str:
    """A system prompt of at least ``n`` tokens (through the model's tokenizer)."""
    text = ""
    for i in range(1, 10_000):
        text += f"Rule {i}: when asked about topic {i}, answer briefly, precisely and politely. "
        if len(tokenizer.encode(text)) >= n:
            break
    return text.strip()
