"""AutoScheduler (``scheduler="auto"``, the default): one stream runs on mlx-lm's
single-sequence ``generate_step`` (the serial path: pipelined, no batch bookkeeping), two
or more share the continuous batch.

- A request that arrives to an idle scheduler runs *solo*, token by token, in a KV cache
  the scheduler owns, unless another arrived while its prompt was encoded (then both join
  the batch: a wave's requests come a few ms apart, and ``batched`` prefills them in one
  group). Between tokens it looks at its queue: when another job is waiting,
  the solo stream is handed to the batch without a restart: its cache is trimmed by its
  last token, and the batch is given that token as the prompt, that cache as its prefix
  and the tokens it still may generate (``BatchGenerator.insert(..., caches=...)``, the
  same mechanism as prompt-cache reuse). Its detokenizer and stream go on unchanged, so
  the caller sees one continuous stream. Greedy outputs are those of either path.
- A request that arrives while anything is running joins the batch, as with ``batched``.
- Admission to the batch is staged on a CPU (each group's first tokens go out before the
  next group's prefill: measured lower TTFT under load where prefill is slow) and plain on
  a GPU (where staging slowed the ramp-up).

The handed-off stream enters the decode batch at once (one BatchGenerator step with
nothing to prefill), so the prompts that were waiting keep mlx-lm's prefill groups whole.

A solo stream's prefill is not interrupted: a job arriving during it waits for its first
token (one prefill), then both are batched. The null model and unloaded models go the
serial way, as in :class:`~krmlx.worker.schedulers.batch.BatchScheduler`.
"""

from __future__ import annotations

import time

from ... import gen
from .batch import Active, BatchScheduler
from .stream import GenerateJob, encode_job, job_may_start


def on_gpu() -> bool:
    import mlx.core as mx  # MLX only where MLX work runs (the client imports this package)

    return mx.default_device() == mx.gpu


class AutoScheduler(BatchScheduler):
    """One stream solo on the serial path, two or more in the continuous batch (above);
    ``solo_runs`` and ``handoffs`` count the solo streams and those handed to the batch."""

    name = "auto"

    def __init__(self, on_error, *, staged: bool | None = None, **kw):
        super().__init__(on_error, staged=not on_gpu() if staged is None else staged, **kw)
        self.name = "auto"
        self.solo_runs = 0
        self.handoffs = 0

    def _admit(self, job: GenerateJob) -> None:
        if self._busy():
            return super()._admit(job)
        self._solo(job)

    def _solo(self, job: GenerateJob) -> None:
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

        out, entry, params = job.out, job.entry, job.params
        if not job_may_start(job):
            return
        prompt_ids = encode_job(job)
        if self._waiting_generation():
            # another request came while this prompt was encoded (a wave's requests arrive
            # a few ms apart): both go to the batch, prefilled in one group, as on
            # ``batched``, whose own admission has the same window
            self._enqueue(job, prompt_ids)
            return
        temperature, seed = params.get("temperature", 0.0), params.get("seed")
        cache = make_prompt_cache(entry.model)
        detok = entry.tokenizer.detokenizer
        steps = gen.iter_tokens(entry.model, entry.tokenizer, prompt_ids,
                                max_tokens=params["max_tokens"], temperature=temperature,
                                seed=seed, top_p=params.get("top_p", 1.0), prompt_cache=cache,
                                cancelled=out.cancelled.is_set, detok=detok,
                                prefill=out.points("prefill"))
        self.solo_runs += 1
        entry.refs += 1
        handed = False
        try:
            run = gen.TokenRun(steps, lambda: not out.cancelled.is_set())
            for token, text in run:
                out.put(token, text)
                # a load or an unload waiting in the queue waits for the solo stream, as on
                # the serial path; a generation takes it into the batch
                if (self._waiting_generation() and not out.cancelled.is_set()
                        and out.tokens < params["max_tokens"] and can_trim_prompt_cache(cache)):
                    steps.close()  # the cache now holds every token up to ``token``
                    trim_prompt_cache(cache, 1)
                    left = params["max_tokens"] - out.tokens
                    sampler = gen.make_sampler(temperature, seed, params.get("top_p", 1.0))
                    batch = self._insert(Active(out, entry, detok, len(prompt_ids)), [token],
                                         left, sampler, cache)
                    self.handoffs += 1
                    handed = True
                    # Move it into the decode batch now, before the waiting prompts are
                    # inserted: its cache needs no prefill, but left among them it would take
                    # a slot of the first prefill group (mlx-lm groups prompts by
                    # prefill_batch_size), and a wave's groups would go 7, 1, 7, 1, ... : twice
                    # the prefill calls, each stalling every decoding stream (the cause found
                    # for auto's 0.87x of ``batched``'s throughput at 64 streams on an H200).
                    self._advance(entry.id, batch)
                    return
            out.finish(run.finish, len(prompt_ids), run.tail)
        finally:
            steps.close()
            if not handed:
                entry.refs -= 1
                entry.last_used = time.monotonic()
