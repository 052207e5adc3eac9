"""The generation loop shared by the direct baseline and the worker.

Both paths run exactly this code (mlx-lm's ``generate_step`` plus its streaming
detokenizer), so any difference between them is the serving layer, not the loop.
"""

from __future__ import annotations

from collections.abc import Iterator

from .errors import BadRequest


def encode_prompt(tokenizer, params: dict) -> list[int]:
    """Token ids for a request's params (``prompt_ids`` wins; else template + encode)."""
    if params.get("prompt_ids"):
        return list(params["prompt_ids"])
    prompt = params.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("prompt: must be a non-empty string")
    if params.get("chat", True) and getattr(tokenizer, "chat_template", None):
        messages = []
        if params.get("system"):
            messages.append({"role": "system", "content": params["system"]})
        messages.append({"role": "user", "content": prompt})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)
    return list(tokenizer.encode(prompt))


def make_sampler(temperature: float, seed: int | None):
    from mlx_lm.sample_utils import make_sampler as _make

    if temperature and seed is not None:
        import mlx.core as mx

        mx.random.seed(seed)
    return _make(temp=float(temperature))


def iter_tokens(model, tokenizer, prompt_ids: list[int], *, max_tokens: int,
                temperature: float = 0.0, seed: int | None = None,
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
    sampler = make_sampler(temperature, seed)
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
