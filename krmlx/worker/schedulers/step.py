"""The continuous batch's decode step: mlx-lm's BatchGenerator with krmlx's own
:class:`LeanGenerationBatch` (imported where MLX work runs, never by the CLI).

mlx-lm's ``GenerationBatch._step`` splits the step's log-probabilities into one array per
sequence and evaluates them every step, for callers that read them; krmlx never does. The
lean step keeps everything a token depends on (the forward pass, the normalisation, the
sampler: greedy tokens stay bit-identical) and drops the per-sequence split, and samples
rows that share a sampler in one call (mlx-lm batches only when *every* row shares one).
When no row of the batch is left-padded (one stream, or streams whose histories line up),
the decode step passes attention no mask: the mask mlx-lm's BatchKVCache builds is then
all true, and on MLX's CUDA backend attention with a mask array took 2.4-6.3x as long as
without (docs/decode-step.md). Any padded row brings the mask back.

``benchmarks/batch_step.py`` measures it beside mlx-lm's own step; the batch scheduler
counts its unmasked steps (``unmasked_steps`` in the worker's stats).
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, GenerationBatch
from mlx_lm.models.cache import BatchKVCache


def _no_decode_mask(N: int, **_):
    if N != 1:
        raise RuntimeError(f"a decode step with {N} tokens per row")
    return None


class LeanGenerationBatch(GenerationBatch):
    """A GenerationBatch whose step builds and evaluates only what the next tokens need."""

    _unpadded: bool | None = None  # no row left-padded (None: not known since the last change)
    masks_skipped = 0  # decode steps that ran without a mask

    def extend(self, batch):
        super().extend(batch)
        self._unpadded = None

    def filter(self, keep):
        super().filter(keep)
        self._unpadded = None

    def _mask_free(self) -> bool:
        """Whether this batch's decode mask would be all true: its caches are plain
        BatchKVCaches (no window) and no row is left-padded. Read once per change."""
        if self._unpadded is None:
            c = self.prompt_cache
            self._unpadded = bool(c) and all(type(x) is BatchKVCache for x in c) and \
                not c[0].left_padding.any().item()
        return self._unpadded

    def _forward(self, inputs):
        if not self._mask_free():
            return self.model(inputs[:, None], cache=self.prompt_cache)
        first = self.prompt_cache[0]  # the model asks the first layer's cache for the mask
        first.make_mask = _no_decode_mask
        try:
            self.masks_skipped += 1
            return self.model(inputs[:, None], cache=self.prompt_cache)
        finally:
            del first.make_mask

    def _step(self):
        if any(self.logits_processors):
            raise ValueError("the lean decode step takes no logits processors")
        inputs = self._current_tokens = self._next_tokens
        self._current_logprobs = []  # extend() appends to it: keep nothing across steps
        logits = self._forward(inputs)[:, -1, :]
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        self._next_tokens = sample_rows(logprobs, self.samplers, self.fallback_sampler)
        self._next_logprobs = [None] * len(self.uids)
        mx.async_eval(self._next_tokens)  # the next step runs while the host reads these
        tokens = inputs.tolist()
        for seq, t in zip(self.tokens, tokens, strict=True):
            seq.append(t)
        return tokens, [None] * len(tokens)


def sample_rows(logprobs, samplers, fallback):
    """One sampler call per distinct sampler (not per row): rows that share one are sampled
    together, then put back in row order."""
    rows = [fallback if s is None else s for s in (samplers or [None] * logprobs.shape[0])]
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(rows):
        groups.setdefault(id(s), []).append(i)
    if len(groups) == 1:
        return rows[0](logprobs)
    order, parts = [], []
    for idx in groups.values():
        parts.append(rows[idx[0]](logprobs[mx.array(idx)]))
        order.extend(idx)
    inverse = [0] * len(order)
    for pos, i in enumerate(order):
        inverse[i] = pos
    return mx.concatenate(parts)[mx.array(inverse)]


class LeanBatchGenerator(BatchGenerator):
    """mlx-lm's BatchGenerator (same arguments) decoding with :class:`LeanGenerationBatch`."""

    def __init__(self, model, **kwargs):
        super().__init__(model, **kwargs)
        self._generation_batch = LeanGenerationBatch.empty(self.model, self.sampler)

    @property
    def masks_skipped(self) -> int:
        """Decode steps run without a mask so far (no row padded)."""
        return self._generation_batch.masks_skipped
