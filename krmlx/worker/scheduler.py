"""Where generation runs: one compute thread that owns all MLX work.

:class:`SerialScheduler` runs one ``generate`` at a time, in arrival order, token by
token; model loads and unloads queue on the same thread (MLX work is never spread over
threads). Each stream's tokens go out through :class:`StreamOut`, which applies the
framing (coalescing, backpressure window) and honours cancel between tokens.
A batched scheduler (continuous batching) implements the same ``submit``/``run``/
``stop`` and reuses StreamOut.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass

from .. import gen
from ..framing import PLAIN, FramerConfig
from .config import SCHEDULERS
from .group import GROUP_BROKEN_EXIT_CODE
from .protocol import NULL_MODEL, done_frame, token_frame


class StreamOut:
    """One stream's outbound side: the framing's coalescing and backpressure window
    (:class:`~krmlx.framing.FramerConfig`; :data:`~krmlx.framing.PLAIN` when none), cancel.

    A full window never blocks the compute thread: the stream's new tokens are held and go
    out coalesced in one frame once the client acks, so a slow (or abandoned) consumer
    costs held tokens, never the other streams' progress; the client cancels a stream
    that is not read at all (its ``stall_timeout_s``)."""

    def __init__(self, fid: int, send, options: FramerConfig = PLAIN, crash_after: int | None = None,
                 crash=None, timeline: dict | None = None):
        """``timeline``: the hops this stream has passed so far (``time.perf_counter()``
        seconds: one monotonic clock across the processes of a host), or None to keep no
        timeline. StreamOut adds ``queued`` (now), the marks of :meth:`mark`, and per token
        when it was sampled and when its frame was written; it all goes out in the done
        frame's ``info["timeline"]`` (:mod:`krmlx.timeline` reads it)."""
        self.id = fid
        self._send = send
        self.opts = options
        self.cancelled = threading.Event()
        self._sent = 0  # token frames sent (compute thread)
        self._acked = 0  # token frames the client acknowledged (read thread)
        self._held: list = []
        self._held_since = 0.0
        self.tokens = 0
        self.frames = 0
        # the worker's own clock: when the request arrived, its first and its last token
        # (reported in the done frame's info, so a caller can tell the worker's compute
        # from the transport: worker_ttft_ms, worker_decode_ms)
        self._t_created = time.perf_counter()
        self._t_first = self._t_last = 0.0
        self._crash_after = crash_after
        self._crash = crash
        self.timeline = timeline
        if timeline is not None:
            timeline.update(queued=self._t_created, sampled=[], written=[])

    def mark(self, hop: str) -> None:
        """Timestamp ``hop`` (job_start, encoded, ...) when this stream keeps a timeline."""
        if self.timeline is not None:
            self.timeline[hop] = time.perf_counter()

    def ack(self, n: int) -> None:
        self._acked += n

    def cancel(self) -> None:
        self.cancelled.set()

    def put(self, token: int, text: str) -> None:
        if self._crash_after is not None and self.tokens >= self._crash_after:
            self._crash()
        self.tokens += 1
        self._held.append((token, text))
        now = self._t_last = time.perf_counter()
        if self.timeline is not None:
            self.timeline["sampled"].append(now)
        if self.tokens == 1:
            self._t_first = now
        if len(self._held) == 1:
            self._held_since = now
        if (self.tokens == 1 or len(self._held) >= self.opts.coalesce_tokens
                or (now - self._held_since) * 1e3 >= self.opts.coalesce_ms > 0):
            self.flush()

    def flush(self, force: bool = False) -> None:
        if not self._held:
            return
        window = self.opts.window
        if window and not force and self._sent - self._acked >= window:
            return  # the window is full: keep holding (coalesced into the next frame)
        if window:
            self._sent += 1
        t_write = self._send(token_frame(self.id, self._held))
        if self.timeline is not None:  # when the frame, encoded, started down the pipe
            self.timeline["written"] += [t_write] * len(self._held)
        self._held = []
        self.frames += 1

    def finish(self, finish_reason: str, prompt_tokens: int, tail: str = "", info: dict | None = None) -> None:
        self.flush(force=True)  # the last frame goes out whatever the window says
        if self.tokens:
            info = {**(info or {}), "worker_ttft_ms": (self._t_first - self._t_created) * 1e3,
                    "worker_decode_ms": (self._t_last - self._t_first) * 1e3}
        if self.timeline is not None:
            info = {**(info or {}), "timeline": self.timeline}
        self._send(done_frame(self.id, finish_reason, prompt_tokens, tail, self.tokens, info))


@dataclass
class GenerateJob:
    out: StreamOut
    entry: object  # the worker's ModelEntry
    params: dict
    delay_s: float = 0.0  # injected latency before the job starts
    draft: object = None  # the draft model's entry (speculative decoding), if any
    prompt_cache: object = None  # the worker's PromptCache, if reuse is on
    group: object = None  # krmlx.worker.group.Leader: this worker is rank 0 of a group


class SerialScheduler:
    """Run jobs one at a time on the compute thread. A job is a GenerateJob or a callable."""

    name = "serial"

    def __init__(self, on_error):
        self._jobs: queue.Queue = queue.Queue()
        self._on_error = on_error  # (job, exc) -> None: reports a failed job
        self.active = 0

    def submit(self, job) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        self._jobs.put(None)

    def run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if isinstance(job, GenerateJob):
                    self.active += 1
                    try:
                        run_generate(job)
                    finally:
                        self.active -= 1
                else:
                    job()
            except Exception as e:  # noqa: BLE001 - reported to the caller, worker keeps serving
                self._on_error(job, e)


def job_may_start(job: GenerateJob) -> bool:
    """Apply the job's injected delay; False (and the stream finished) if it was cancelled.
    Marks the job's start on its timeline."""
    if job.delay_s:
        time.sleep(job.delay_s)
    if job.out.cancelled.is_set():
        job.out.finish("cancelled", 0)
        return False
    job.out.mark("job_start")
    return True


def encode_job(job: GenerateJob) -> list[int]:
    """The job's prompt as token ids (chat template, tokenizer, limits), marked ``encoded``."""
    ids = gen.encode_prompt(job.entry.tokenizer, job.params, job.entry.limits)
    job.out.mark("encoded")
    return ids


def run_generate(job: GenerateJob) -> None:
    out, entry, params = job.out, job.entry, job.params
    if not job_may_start(job):
        return
    if entry.unloaded:
        from ..errors import UnknownModel

        raise UnknownModel(f"model {entry.id!r} was unloaded before this request ran")
    if entry.id == NULL_MODEL:  # the null model: synthetic tokens, no MLX (stream cost benchmarks)
        n = params["max_tokens"]
        for i in range(n):
            if out.cancelled.is_set():
                out.finish("cancelled", 0)
                return
            out.put(i % 1000, "tok ")
        out.finish("length", 0)
        return
    prompt_ids = encode_job(job)
    info: dict = {}
    cache, rest = None, prompt_ids
    pc = job.prompt_cache if job.draft is None else None  # speculative keeps its own caches
    if pc is not None:
        cache, rest = pc.fetch(entry.id, entry.model, prompt_ids)
        info["cached_prompt_tokens"] = len(prompt_ids) - len(rest)
    drafts: list[bool] = []
    temperature, seed, group = params.get("temperature", 0.0), params.get("seed"), job.group
    if group is not None:  # the other ranks run this generation in lockstep
        if temperature and seed is None:
            seed = random.getrandbits(63)  # every rank must draw the same samples
            info["seed"] = seed  # reported, so the run can be repeated
        group.command("generate", model=entry.id, prompt_ids=prompt_ids,
                      max_tokens=params["max_tokens"], temperature=temperature, seed=seed,
                      top_p=params.get("top_p", 1.0))
    # a cancel stops the prefill between chunks (not in a group: every rank must run the
    # same collectives, so there a cancel waits for the first decode step's flag)
    steps = gen.iter_tokens(entry.model, entry.tokenizer, rest, max_tokens=params["max_tokens"],
                            temperature=temperature, seed=seed, top_p=params.get("top_p", 1.0),
                            prompt_cache=cache, draft_model=job.draft.model if job.draft else None,
                            on_draft=drafts.append,
                            cancelled=out.cancelled.is_set if group is None else None)
    entry.refs += 1
    finished = False
    ended = group is None  # the other ranks know this generation ended (or there are none)
    try:
        while True:
            go = not out.cancelled.is_set()
            if group is not None:
                go = group.step(go)  # before each step: the other ranks learn of a cancel
            if not go:
                ended = True
                out.finish("cancelled", len(prompt_ids))
                return
            try:
                token, text = next(steps)
            except StopIteration as stop:
                ended = True
                finish, tail = stop.value
                finished = finish != "cancelled"  # a cancelled prefill's cache is partial
                if drafts:
                    info["draft_accepted"], info["draft_checked"] = sum(drafts), len(drafts)
                out.finish(finish, len(prompt_ids), tail, info)
                return
            except BaseException:
                if group is not None:  # failed inside a step: the ranks are out of step
                    logging.getLogger("krmlx.worker").exception("generation failed inside a step")
                    os._exit(GROUP_BROKEN_EXIT_CODE)  # the launcher ends the group; the engine restarts it
                raise
            out.put(token, text)
    finally:
        if not ended:  # an error between steps: release the other ranks
            group.step(False)
        steps.close()
        entry.refs -= 1
        entry.last_used = time.monotonic()
        if finished and pc is not None:
            pc.store(entry.id, prompt_ids, cache)


@dataclass
class _Active:
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
    the batch. The null model is served serially, as in :class:`SerialScheduler`.

    ``staged=True`` ("batched-staged"): a BatchGenerator step that has prompts waiting
    decodes *and* prefills the next group of up to ``prefill_batch_size`` prompts before it
    returns, so the first tokens of one group reach their clients only after the next
    group's prefill. Staged admission holds new prompts back until every prompt already
    inserted has produced its first token, so each group's first tokens go out before the
    next prefill starts: lower TTFT where prefill is slow (a CPU), at the price of a slower
    ramp-up (a group per ~3 steps instead of one per step).
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
        self._active: dict[tuple[str, int], _Active] = {}
        self._waiting: list[tuple] = []  # staged: (job, prompt_ids, sampler) not yet inserted
        self.steps = 0
        self.prefills = 0  # steps that prefilled prompts (each stalls the decoding streams)

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
            from mlx_lm.generate import BatchGenerator

            eos = sorted(entry.tokenizer.eos_token_ids)
            # prefill in chunks of DEFAULT_PREFILL_STEP: between chunks the batch decodes a
            # step, so one long prompt stalls the other streams by at most one chunk
            batch = BatchGenerator(entry.model, stop_tokens=[[t] for t in eos],
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
            self._insert(job, prompt_ids, sampler)

    def _insert(self, job: GenerateJob, prompt_ids: list[int], sampler) -> None:
        entry = job.entry
        (uid,) = self._generator(entry).insert([prompt_ids], max_tokens=[job.params["max_tokens"]],
                                               samplers=[sampler])
        self._active[(entry.id, uid)] = _Active(job.out, entry, entry.tokenizer.detokenizer,
                                                len(prompt_ids))

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
                self._insert(job, prompt_ids, sampler)
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
        for r in responses:
            key = (model_id, r.uid)
            a = self._active.get(key)
            if a is None:
                continue
            if r.finish_reason == "stop":  # an EOS: not yielded, as in serial mode
                a.detok.finalize()
                self._finish(key, "stop", a.detok.last_segment)
                continue
            a.detok.add_token(r.token)
            if r.finish_reason == "length":
                a.detok.finalize()
                a.out.put(r.token, a.detok.last_segment)
                self._finish(key, "length")
            else:
                a.out.put(r.token, a.detok.last_segment)


def make_scheduler(name: str, on_error):
    if name == "auto":
        from .auto import AutoScheduler

        return AutoScheduler(on_error)
    if name == "serial":
        return SerialScheduler(on_error)
    if name == "batched":
        return BatchScheduler(on_error)
    if name == "batched-staged":
        return BatchScheduler(on_error, staged=True)
    raise ValueError(f"scheduler: must be one of {SCHEDULERS}, got {name!r}")
