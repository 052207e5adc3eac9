"""What every scheduler shares: a stream's outbound side and a generation job.

- :class:`StreamOut`: one stream's tokens on their way out (the framing's coalescing and
  backpressure window, cancel, the timeline's marks);
- :class:`GenerateJob`: one ``generate`` call as the schedulers receive it;
- :func:`job_may_start` and :func:`encode_job`: the first two steps of every job (its
  injected delay and cancel check, then its prompt as token ids), each marked on the
  stream's timeline.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ... import gen
from ...framing import PLAIN, FramerConfig
from ..protocol import done_frame, token_frame


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

    def points(self, name: str) -> list | None:
        """The list this stream's timeline keeps under ``name`` (for points a callee
        appends, such as the prefill's chunks), or None when it keeps no timeline."""
        return None if self.timeline is None else self.timeline.setdefault(name, [])

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


