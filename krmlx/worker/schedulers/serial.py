"""SerialScheduler (``scheduler="serial"``): one ``generate`` at a time, in arrival order.

Everything runs on the one compute thread that owns all MLX work: generations token by
token (:func:`run_generate`, mlx-lm's single-sequence ``generate_step``), and model loads
and unloads queued between them (MLX work is never spread over threads). The only path
for a draft model (speculative decoding), prompt-cache reuse and a distributed group; the
batch schedulers run the null model and unloaded models through :func:`run_generate` too.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import time

from ... import gen
from ...errors import UnknownModel
from ..group import GROUP_BROKEN_EXIT_CODE
from ..protocol import NULL_MODEL
from .stream import GenerateJob, encode_job, job_may_start

log = logging.getLogger("krmlx.worker")


class SerialScheduler:
    """Run jobs one at a time on the compute thread. A job is a GenerateJob or a callable.

    ``submit``/``run``/``stop`` (and ``name``, ``active``) are what the worker uses of
    every scheduler; ``on_error(job, exc)`` reports a job that failed."""

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


def _in_lockstep(steps):
    """A group's steps: one that fails inside leaves the ranks out of step, so rank 0
    exits (the launcher ends the group; the engine restarts it)."""
    try:
        return (yield from steps)
    except GeneratorExit:
        raise
    except BaseException:
        log.exception("generation failed inside a step")
        os._exit(GROUP_BROKEN_EXIT_CODE)


def _stream_null(job: GenerateJob) -> None:
    """The null model: synthetic tokens, no MLX (the stream cost benchmarks)."""
    out = job.out
    for i in range(job.params["max_tokens"]):
        if out.cancelled.is_set():
            out.finish("cancelled", 0)
            return
        out.put(i % 1000, "tok ")
    out.finish("length", 0)


def run_generate(job: GenerateJob) -> None:
    """One generation, token by token, on the calling (compute) thread."""
    out, entry, params = job.out, job.entry, job.params
    if not job_may_start(job):
        return
    if entry.unloaded:
        raise UnknownModel(f"model {entry.id!r} was unloaded before this request ran")
    if entry.id == NULL_MODEL:
        _stream_null(job)
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
                            cancelled=out.cancelled.is_set if group is None else None,
                            prefill=out.points("prefill"))
    if group is None:
        run = gen.TokenRun(steps, lambda: not out.cancelled.is_set())
    else:  # before each step: the other ranks learn of a cancel
        steps = _in_lockstep(steps)
        run = gen.TokenRun(steps, lambda: group.step(not out.cancelled.is_set()))
    entry.refs += 1
    finished = False
    ended = group is None  # the other ranks know this generation ended (or there are none)
    try:
        for token, text in run:
            out.put(token, text)
        ended = True
        if run.stopped:
            out.finish("cancelled", len(prompt_ids))
            return
        finished = run.finish != "cancelled"  # a cancelled prefill's cache is partial
        if drafts:
            info["draft_accepted"], info["draft_checked"] = sum(drafts), len(drafts)
        out.finish(run.finish, len(prompt_ids), run.tail, info)
    finally:
        if not ended:  # an error between steps: release the other ranks
            group.step(False)
        steps.close()
        entry.refs -= 1
        entry.last_used = time.monotonic()
        if finished and pc is not None:
            pc.store(entry.id, prompt_ids, cache)
