"""The generation loop shared by the direct baseline and the worker.

Both paths run exactly this code (mlx-lm's ``generate_step`` plus its streaming
detokenizer), so any difference between them is the serving layer, not the loop.
"""

from __future__ import annotations

from collections.abc import Iterator

from .errors import BadRequest


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


def check_prompt_ids(ids, vocab_size: int | None = None) -> list[int]:
    """``ids`` as a list, or BadRequest naming ``prompt_ids``: every id must be an int in
    ``[0, vocab_size)`` (an id outside the embedding table would make the model read
    outside it: wrong output, or a crash of the process)."""
    if not isinstance(ids, (list, tuple)):
        raise BadRequest(f"prompt_ids: must be a list of token ids, got {type(ids).__name__}")
    for i, t in enumerate(ids):
        if type(t) is not int:
            raise BadRequest(f"prompt_ids: must be ints, got {type(t).__name__} at index {i}")
        if t < 0 or (vocab_size is not None and t >= vocab_size):
            bound = f"[0, {vocab_size})" if vocab_size is not None else ">= 0"
            raise BadRequest(f"prompt_ids: id {t} at index {i} is outside the vocabulary "
                             f"({bound})")
    return list(ids)


def encode_prompt(tokenizer, params: dict, vocab_size: int | None = None) -> list[int]:
    """Token ids for a request's params (``prompt_ids`` wins; else template + encode).

    ``prompt_ids`` are checked against ``vocab_size`` (the model's, see
    :func:`vocab_size`): an id outside ``[0, vocab_size)`` is a BadRequest."""
    if params.get("prompt_ids"):
        return check_prompt_ids(params["prompt_ids"], vocab_size)
    if params.get("messages"):  # a whole conversation (checked by Request / the worker)
        messages = list(params["messages"])
        if params.get("system"):
            messages.insert(0, {"role": "system", "content": params["system"]})
        return apply_chat_template(tokenizer, messages)
    prompt = params.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("prompt: must be a non-empty string")
    if params.get("chat", True) and getattr(tokenizer, "chat_template", None):
        messages = []
        if params.get("system"):
            messages.append({"role": "system", "content": params["system"]})
        messages.append({"role": "user", "content": prompt})
        return apply_chat_template(tokenizer, messages)
    return list(tokenizer.encode(prompt))


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


def iter_tokens(model, tokenizer, prompt_ids: list[int], *, max_tokens: int,
                temperature: float = 0.0, seed: int | None = None, top_p: float = 1.0,
                prompt_cache=None, draft_model=None, num_draft_tokens: int = 3,
                on_draft=None) -> Iterator[tuple[int, str]]:
    """Yield ``(token_id, new_text)`` per generated token; return the finish reason.

    Stops at an EOS token ("stop", the EOS itself is not yielded) or after
    ``max_tokens`` tokens ("length"). Closing the iterator early stops the work.
    """
    import mlx.core as mx
    from mlx_lm.generate import generate_step, speculative_generate_step

    if max_tokens <= 0:
        raise BadRequest(f"max_tokens: must be positive, got {max_tokens}")
    detok = tokenizer.detokenizer
    eos = tokenizer.eos_token_ids
    sampler = make_sampler(temperature, seed, top_p)
    if draft_model is None:
        steps = generate_step(mx.array(prompt_ids), model, max_tokens=max_tokens,
                              sampler=sampler, prompt_cache=prompt_cache)
    else:
        steps = speculative_generate_step(mx.array(prompt_ids), model, draft_model,
                                          num_draft_tokens=num_draft_tokens, max_tokens=max_tokens,
                                          sampler=sampler, prompt_cache=prompt_cache)
    n = 0
    try:
        for token, _, *draft in steps:
            if on_draft is not None and draft:
                on_draft(bool(draft[0]))
            if token in eos:
                detok.finalize()
                return "stop", detok.last_segment
            detok.add_token(token)
            n += 1
            if n == max_tokens:
                detok.finalize()
            yield token, detok.last_segment
            if n == max_tokens:
                return "length", ""
        detok.finalize()
        return "length", detok.last_segment
    finally:
        steps.close()
