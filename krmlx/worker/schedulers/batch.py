"""BatchScheduler (``scheduler="batched"`` and ``"batched-staged"``): continuous batching
on mlx-lm's BatchGenerator (with krmlx's decode step, :mod:`.step`), one per model, on the
compute thread.

:class:`Active` (one stream in a batch) and the protected methods listed in
:class:`BatchScheduler`'s docstring are the interface a subclass builds on
(:class:`~krmlx.worker.schedulers.auto.AutoScheduler`).
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass

from ... import gen
from ..protocol import NULL_MODEL
from .serial import run_generate
from .stream import GenerateJob, StreamOut, encode_job, job_may_start


@dataclass
class Active:
    """One stream in a batch: where its tokens go, its model, its detokenizer (the
    stream's own: text goes on where it stopped) and its prompt's length."""

    out: StreamOut
    entry: object
    detok: object
    prompt_tokens: int


class BatchScheduler:
    """Continuous batching: concurrent ``generate`` jobs share one mlx-lm BatchGenerator per
    model. New jobs are admitted between decode steps (the job queue is drained before
    every step: no fixed admission budget); each request keeps its own ``max_tokens``,
    sampler and cancel; tokens stream per request as each step produces them.

    Backpressure in this mode never blocks the shared step: a stream whose window is full
    keeps its tokens in its StreamOut (coalesced into its next frame) instead of pausing
    the batch. The null model is served serially, as in
    :class:`~krmlx.worker.schedulers.serial.SerialScheduler`.

    ``staged=True`` ("batched-staged"): a BatchGenerator step that has prompts waiting
    decodes *and* prefills the next group of up to ``prefill_batch_size`` prompts before it
    returns, so the first tokens of one group reach their clients only after the next
    group's prefill. Staged admission holds new prompts back until every prompt already
    inserted has produced its first token, so each group's first tokens go out before the
    next prefill starts: lower TTFT where prefill is slow (a CPU), at the price of a slower
    ramp-up (a group per ~3 steps instead of one per step).

    For subclasses: :meth:`_admit` (a job that may start), :meth:`_busy` (anything
    running, waiting or queued), :meth:`_waiting_generation` (a generation waits in the
    queue), :meth:`_enqueue` (an encoded job into the batch), :meth:`_insert` (a stream,
    with a KV prefix, into a model's batch) and :meth:`_advance` (one step of that batch).
    """

    name = "batched"

    def __init__(self, on_error, *, completion_batch_size: int = 64, prefill_batch_size: int = 8,
                 staged: bool = False):
        self._jobs: queue.Queue = queue.Queue()
        self._on_error = on_error
        self.completion_batch_size = completion_batch_size
        self.prefill_batch_size = prefill_batch_size
        self.staged = staged
        if staged:
            self.name = "batched-staged"
        self._gens: dict[str, object] = {}  # model id -> BatchGenerator
        self._active: dict[tuple[str, int], Active] = {}
        self._waiting: list[tuple] = []  # staged: (job, prompt_ids, sampler) not yet inserted
        self.steps = 0
        self.prefills = 0  # steps that prefilled prompts (each stalls the decoding streams)
        self.unmasked_steps = 0  # steps whose decode ran without a mask (no row padded)

    @property
    def active(self) -> int:
        return len(self._active)

    def submit(self, job) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        self._jobs.put(None)

    def run(self) -> None:
        while True:
            try:
                while True:  # admit everything that arrived, blocking only when idle
                    job = self._jobs.get(block=not (self._active or self._waiting))
                    if job is None:
                        return
                    self._handle(job)
            except queue.Empty:
                pass
            if self._waiting:
                self._insert_waiting()
            if self._active:
                self._step()

    def _busy(self) -> bool:
        """Whether a stream runs in a batch, a prompt waits to go in, or a job is queued."""
        return bool(self._active or self._waiting) or not self._jobs.empty()

    def _waiting_generation(self) -> bool:
        """Whether a generation that would join the batch waits in the queue (other jobs,
        such as a load or an unload, don't count)."""
        if self._jobs.empty():
            return False
        with self._jobs.mutex:
            return any(isinstance(j, GenerateJob) and j.entry.id != NULL_MODEL
                       and not j.entry.unloaded for j in self._jobs.queue)

    def _handle(self, job) -> None:
        try:
            if isinstance(job, GenerateJob):
                if job.entry.id == NULL_MODEL or job.entry.unloaded:
                    run_generate(job)
                else:
                    self._admit(job)
            else:
                job()
        except Exception as e:  # noqa: BLE001 - reported to the caller; the batch goes on
            self._on_error(job, e)
        for model_id in [m for m, (_, entry) in self._gens.items() if entry.unloaded]:
            del self._gens[model_id]  # an unloaded model's generator goes with it

    def _generator(self, entry):
        if entry.id not in self._gens:
            from .step import LeanBatchGenerator  # mlx-lm only where MLX work runs

            eos = sorted(entry.tokenizer.eos_token_ids)
            # prefill in chunks of DEFAULT_PREFILL_STEP: between chunks the batch decodes a
            # step, so one long prompt stalls the other streams by at most one chunk
            batch = LeanBatchGenerator(entry.model, stop_tokens=[[t] for t in eos],
                                       completion_batch_size=self.completion_batch_size,
                                       prefill_batch_size=self.prefill_batch_size,
                                       prefill_step_size=gen.DEFAULT_PREFILL_STEP)
            self._gens[entry.id] = (batch, entry)
        return self._gens[entry.id][0]

    def _admit(self, job: GenerateJob) -> None:
        if not job_may_start(job):
            return
        self._enqueue(job, encode_job(job))

    def _enqueue(self, job: GenerateJob, prompt_ids: list[int]) -> None:
        """An admitted job, its prompt encoded, into the batch (staged: into the waiting list)."""
        params = job.params
        sampler = gen.make_sampler(params.get("temperature", 0.0), params.get("seed"),
                                   params.get("top_p", 1.0))
        job.entry.refs += 1
        if self.staged:
            self._waiting.append((job, prompt_ids, sampler))
        else:
            self._insert_job(job, prompt_ids, sampler)

    def _insert_job(self, job: GenerateJob, prompt_ids: list[int], sampler) -> None:
        stream = Active(job.out, job.entry, job.entry.tokenizer.detokenizer, len(prompt_ids))
        self._insert(stream, prompt_ids, job.params["max_tokens"], sampler)

    def _insert(self, stream: Active, prompt: list[int], max_tokens: int, sampler, cache=None):
        """``stream`` into its model's batch: ``prompt`` to prefill (after ``cache``, a KV
        prefix, when given), then up to ``max_tokens`` tokens. Returns the BatchGenerator."""
        batch = self._generator(stream.entry)
        kw = {} if cache is None else {"caches": [cache]}
        (uid,) = batch.insert([prompt], max_tokens=[max_tokens], samplers=[sampler], **kw)
        self._active[(stream.entry.id, uid)] = stream
        return batch

    def _insert_waiting(self) -> None:
        """Staged admission: cancelled waiters leave; the next group goes in once every
        inserted prompt has produced its first token."""
        for item in [w for w in self._waiting if w[0].out.cancelled.is_set()]:
            self._waiting.remove(item)
            item[0].entry.refs -= 1
            item[0].out.finish("cancelled", len(item[1]))
        if any(a.out.tokens == 0 for a in self._active.values()):
            return
        group, self._waiting = (self._waiting[:self.prefill_batch_size],
                                self._waiting[self.prefill_batch_size:])
        for job, prompt_ids, sampler in group:
            try:
                self._insert_job(job, prompt_ids, sampler)
            except Exception as e:  # noqa: BLE001 - this request fails, the others go on
                job.entry.refs -= 1
                self._on_error(job, e)

    def _finish(self, key, reason: str, tail: str = "") -> None:
        a = self._active.pop(key)
        a.entry.refs -= 1
        a.entry.last_used = time.monotonic()
        a.out.finish(reason, a.prompt_tokens, tail)

    def _step(self) -> None:
        for model_id, (batch, _) in list(self._gens.items()):
            keys = [k for k in self._active if k[0] == model_id]
            if not keys:
                continue
            cancelled = [k for k in keys if self._active[k].out.cancelled.is_set()]
            if cancelled:
                batch.remove([uid for _, uid in cancelled])
                for k in cancelled:
                    self._finish(k, "cancelled")
                if len(cancelled) == len(keys):
                    continue
            self._advance(model_id, batch)

    def _advance(self, model_id: str, batch) -> None:
        """One step of a model's BatchGenerator: its tokens go to their streams, those that
        ended finish; if the step fails, every request of that model fails with the error
        (its generator is dropped) and the scheduler keeps serving the others."""
        skipped = batch.masks_skipped
        try:
            prompted, responses = batch.next()
        except Exception as e:  # noqa: BLE001 - fail this model's requests, keep serving
            for k in [k for k in self._active if k[0] == model_id]:
                a = self._active.pop(k)
                a.entry.refs -= 1
                self._on_error(GenerateJob(a.out, a.entry, {}), e)
            self._gens.pop(model_id, None)
            return
        self.steps += 1
        self.prefills += any(not p.end_of_prompt for p in prompted)
        self.unmasked_steps += batch.masks_skipped - skipped
        for r in responses:
            key = (model_id, r.uid)
            a = self._active.get(key)
            if a is None:
                continue
            # an EOS ("stop") is not yielded, as in serial mode
            text = gen.next_text(a.detok, r.token, eos=r.finish_reason == "stop",
                                 last=r.finish_reason == "length")
            if r.finish_reason == "stop":
                self._finish(key, "stop", text)
                continue
            a.out.put(r.token, text)
            if r.finish_reason == "length":
                self._finish(key, "length")
