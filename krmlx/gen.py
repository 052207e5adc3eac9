"""The generation loop shared by the direct baseline and the worker.

Both paths run exactly this code (mlx-lm's ``generate_step`` plus its streaming
detokenizer: :func:`iter_tokens`, read through :class:`TokenRun`; the continuous batch
shares its per-token step, :func:`next_text`), so any difference between them is the
serving layer, not the loop. Prompts become token ids here too (:func:`encode_prompt`,
checked against the model's :class:`PromptLimits`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .errors import BadRequest
from .validate import check_token_ids

DEFAULT_PREFILL_STEP = 512  # prompt tokens per prefill chunk: cancel and admission points


def vocab_size(model) -> int | None:
    """How many rows the model's input embedding has (the valid token ids are
    ``[0, vocab_size)``): the embedding's shape when found, else ``args.vocab_size``;
    None when neither is known (then ids are only checked to be non-negative ints)."""
    inner = getattr(model, "model", None)
    for owner in (inner, model):
        embed = getattr(owner, "embed_tokens", None) if owner is not None else None
        n = getattr(embed, "num_embeddings", None)
        if n is None:
            weight = getattr(embed, "weight", None)
            shape = getattr(weight, "shape", None)
            n = shape[0] if shape else None
        if isinstance(n, int) and n > 0:
            return n
    n = getattr(getattr(model, "args", None), "vocab_size", None)
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def context_length(model) -> int | None:
    """The model's context (``max_position_embeddings`` of its config), if it says."""
    n = getattr(getattr(model, "args", None), "max_position_embeddings", None)
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def longest_token_chars(tokenizer) -> int:
    """The most characters one token of the vocabulary spells (so a text of ``n``
    characters is at least ``n / longest_token_chars`` tokens); 1 when unknown."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    return max((len(t) for t in vocab), default=1) or 1


@dataclass(frozen=True)
class PromptLimits:
    """What a prompt may be on one model: ids below ``vocab_size``, at most ``max_tokens``
    tokens (the model's context, or a configured lower limit), and text that can't be
    longer than ``max_tokens * longest_token`` characters (refused before tokenizing)."""

    vocab_size: int | None = None
    max_tokens: int | None = None
    longest_token: int = 1

    @classmethod
    def of(cls, model, tokenizer, max_prompt_tokens: int | None = None) -> PromptLimits:
        limit = context_length(model)
        if max_prompt_tokens is not None:
            limit = max_prompt_tokens if limit is None else min(limit, max_prompt_tokens)
        return cls(vocab_size(model), limit, longest_token_chars(tokenizer))

    def check_ids(self, ids) -> list[int]:
        """The prompt's ids checked against the vocabulary and the token limit."""
        ids = check_token_ids("prompt_ids", ids, self.vocab_size)
        self.check_length(len(ids))
        return ids

    def check_length(self, n: int) -> None:
        if self.max_tokens is not None and n > self.max_tokens:
            raise BadRequest(f"prompt: {n:,} tokens exceed the limit of {self.max_tokens:,} "
                             "(the model's context, or the configured max_prompt_tokens)")

    def check_text(self, text: str) -> None:
        if self.max_tokens is not None and len(text) > self.max_tokens * self.longest_token:
            raise BadRequest(f"prompt: {len(text):,} characters can't fit the limit of "
                             f"{self.max_tokens:,} tokens (a token spells at most "
                             f"{self.longest_token} characters here)")


NO_LIMITS = PromptLimits()


def encode_prompt(tokenizer, params: dict, limits: PromptLimits = NO_LIMITS) -> list[int]:
    """Token ids for a request's params (``prompt_ids`` win; else template + encode),
    checked against ``limits`` (BadRequest naming the field and the limit): ids outside
    the vocabulary would make the model read outside its embedding table (wrong output,
    or a crash of the process); a text too long to fit is refused before tokenizing."""
    if params.get("prompt_ids"):
        return limits.check_ids(params["prompt_ids"])
    if params.get("messages"):  # a whole conversation (checked by Request / the worker)
        messages = list(params["messages"])
        if params.get("system"):
            messages.insert(0, {"role": "system", "content": params["system"]})
        limits.check_text("".join(m["content"] for m in messages))
        ids = apply_chat_template(tokenizer, messages)
        limits.check_length(len(ids))
        return ids
    prompt = params.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("prompt: must be a non-empty string")
    limits.check_text(prompt + (params.get("system") or ""))
    if params.get("chat", True) and getattr(tokenizer, "chat_template", None):
        messages = []
        if params.get("system"):
            messages.append({"role": "system", "content": params["system"]})
        messages.append({"role": "user", "content": prompt})
        ids = apply_chat_template(tokenizer, messages)
    else:
        ids = list(tokenizer.encode(prompt))
    limits.check_length(len(ids))
    return ids


def apply_chat_template(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of ``messages`` through the tokenizer's chat template (with the generation
    prompt); without a template, the contents joined by newlines, encoded."""
    if not getattr(tokenizer, "chat_template", None):
        return list(tokenizer.encode("\n".join(m["content"] for m in messages)))
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # a dict or BatchEncoding


def make_sampler(temperature: float, seed: int | None, top_p: float = 1.0):
    from mlx_lm.sample_utils import make_sampler as _make

    if temperature and seed is not None:
        import mlx.core as mx

        mx.random.seed(seed)
    return _make(temp=float(temperature), top_p=float(top_p))


def next_text(detok, token: int, *, eos: bool = False, last: bool = False) -> str:
    """One sampled token through a streaming detokenizer: the text it releases. An EOS is
    not added (it ends the text, unyielded); an EOS or a stream's last token finalizes it.
    The per-token step of every loop, :func:`iter_tokens`'s and the continuous batch's."""
    if not eos:
        detok.add_token(token)
    if eos or last:
        detok.finalize()
    return detok.last_segment


class TokenRun:
    """The one token loop: pull :func:`iter_tokens`'s tokens while ``go()`` allows (asked
    before each step; None: always)::

        run = TokenRun(steps, go=lambda: not cancelled.is_set())
        for token, text in run:
            ...                      # hand the token on; a ``break`` leaves the rest unread
        run.finish, run.tail         # how it ended ("stop", "length", "cancelled")

    ``stopped`` is True when ``go()`` ended it (``finish`` is then "cancelled", ``tail``
    empty). The direct baseline, the worker's serial and solo paths and a group's followers
    all read their tokens through it. Closing ``steps`` stays the caller's job."""

    def __init__(self, steps: Iterator[tuple[int, str]], go: Callable[[], bool] | None = None):
        self.steps, self.go = steps, go
        self.finish: str | None = None
        self.tail = ""
        self.stopped = False

    def __iter__(self) -> Iterator[tuple[int, str]]:
        while self.go is None or self.go():
            try:
                token, text = next(self.steps)
            except StopIteration as stop:
                self.finish, self.tail = stop.value
                return
            yield token, text
        self.finish, self.tail, self.stopped = "cancelled", "", True


class _PrefillCancelled(Exception):
    """Raised between prefill chunks (through mlx-lm's progress callback) to stop there."""


def iter_tokens(model, tokenizer, prompt_ids: list[int], *, max_tokens: int,
                temperature: float = 0.0, seed: int | None = None, top_p: float = 1.0,
                prompt_cache=None, draft_model=None, num_draft_tokens: int = 3,
                on_draft=None, prefill_step: int = DEFAULT_PREFILL_STEP,
                cancelled: Callable[[], bool] | None = None,
                detok=None, prefill: list | None = None) -> Iterator[tuple[int, str]]:
    """Yield ``(token_id, new_text)`` per generated token; return the finish reason.

    Stops at an EOS token ("stop", the EOS itself is not yielded) or after
    ``max_tokens`` tokens ("length"). Closing the iterator early stops the work.

    The prompt is processed in chunks of ``prefill_step`` tokens; ``cancelled()`` is asked
    between chunks, and a True stops the prefill there ("cancelled", nothing yielded): a
    long prompt abandoned by its caller costs at most one more chunk. (Speculative
    decoding prefills in its own loop, without that check.) ``detok``: the streaming
    detokenizer to use (a fresh one by default; a caller that hands the stream on passes its
    own, so the text goes on where it stopped). ``prefill``: a list that gets the time
    (``perf_counter``) the prefill starts, each of its chunks ends and the first token is
    evaluated (mlx-lm's progress callback; the timeline's ``prefill`` point; not for
    speculative decoding).
    """
    import mlx.core as mx
    from mlx_lm.generate import generate_step, speculative_generate_step

    if max_tokens <= 0:
        raise BadRequest(f"max_tokens: must be positive, got {max_tokens}")
    detok = tokenizer.detokenizer if detok is None else detok
    eos = tokenizer.eos_token_ids
    sampler = make_sampler(temperature, seed, top_p)

    def between_chunks(done: int, total: int) -> None:
        if prefill is not None:
            prefill.append(time.perf_counter())
        if cancelled is not None and done < total and cancelled():
            raise _PrefillCancelled

    if draft_model is None:
        steps = generate_step(mx.array(prompt_ids), model, max_tokens=max_tokens,
                              sampler=sampler, prompt_cache=prompt_cache,
                              prefill_step_size=prefill_step,
                              prompt_progress_callback=between_chunks)
    else:
        steps = speculative_generate_step(mx.array(prompt_ids), model, draft_model,
                                          num_draft_tokens=num_draft_tokens, max_tokens=max_tokens,
                                          sampler=sampler, prompt_cache=prompt_cache,
                                          prefill_step_size=prefill_step)
    n = 0
    try:
        for token, _, *draft in steps:
            if on_draft is not None and draft:
                on_draft(bool(draft[0]))
            if token in eos:
                return "stop", next_text(detok, token, eos=True)
            n += 1
            yield token, next_text(detok, token, last=n == max_tokens)
            if n == max_tokens:
                return "length", ""
        detok.finalize()
        return "length", detok.last_segment
    except _PrefillCancelled:
        return "cancelled", ""
    finally:
        steps.close()
