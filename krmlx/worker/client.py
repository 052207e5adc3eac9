"""WorkerClient: speaks the worker's protocol; implements the Service protocol.

The process itself (spawn, environment, stderr, kill and reap) is a
:class:`~krmlx.worker.process.WorkerProcess`; this module holds the calls:

- starts the process and waits for its ``ready`` frame, which says which BLAS the
  worker got;
- routes reply frames to callers by request id; ``generate`` streams
  :class:`~krmlx.types.Chunk` items then a :class:`~krmlx.types.Done`;
- a consumer that stops early (``aclose()``) makes the client send ``cancel``;
- ``timeout_s`` (per call, or the config's default) bounds the whole call: on expiry the
  call is cancelled in the worker and :class:`~krmlx.errors.CallTimeout` is raised;
  ``idle_timeout_s`` bounds the wait for each next frame of a stream (a long, healthy
  stream is not cut; a stream that stops producing is);
- liveness: the worker sends a heartbeat while it runs; with calls pending and no frame
  from the worker for ``liveness_timeout_s`` (a hung or stopped worker), every pending call
  fails with :class:`~krmlx.errors.WorkerUnresponsive`, the worker is killed, and the next
  call restarts it. A stream whose frames wait unread for ``stall_timeout_s`` (a consumer
  that stopped reading without closing it) is cancelled in the worker; its reader, if it
  comes back, gets a CallTimeout;
- when the worker dies, every pending call fails at once with one
  :class:`~krmlx.errors.WorkerCrashed`; the next call restarts it (``auto_restart``) and
  reloads the models that were resident. The client is not ``alive`` until the new
  worker is ready *and* has reloaded them: calls made meanwhile wait for the restart
  (they never reach the old pipe, nor a new worker without its models). A reload is
  retried on a transient error (``reload_attempts`` tries in all); if it still fails,
  the new worker is killed and the error raised, so the next call restarts again;
- ``aclose()`` fails the calls still open with :class:`~krmlx.errors.EngineClosed`, sends
  the worker a ``shutdown`` and gives it ``close_timeout_s`` to exit (code 0) before it is
  killed; the process is always reaped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from ..errors import (
    BadRequest,
    CallTimeout,
    EngineClosed,
    FrameTooLarge,
    KrmlxError,
    ProtocolDesync,
    ProtocolError,
    TransientError,
    WorkerCrashed,
    WorkerUnresponsive,
)
from ..framing import PLAIN
from ..service import Call, mark
from ..types import Chunk, Done
from .config import WorkerConfig
from .process import WorkerProcess
from .protocol import (
    ack_frame,
    call_frame,
    make_codec,
    read_done,
    read_error,
    read_result,
    read_tokens,
)

log = logging.getLogger("krmlx.client")


class _Inbox:
    """One call's incoming frames: a deque plus a future to wake its (single) reader.

    Lighter than asyncio.Queue on the per-token path: no wakeup when nobody waits."""

    __slots__ = ("items", "waiter", "taken", "stream")

    def __init__(self, stream: bool = False):
        self.items: collections.deque = collections.deque()
        self.waiter: asyncio.Future | None = None
        self.taken = 0  # frames its reader took (the watchdog's sign of a live consumer)
        self.stream = stream

    def put(self, item) -> None:
        self.items.append(item)
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def get(self):
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.popleft()


class _OneShot:
    """The async iterator of a unary call: yields the coroutine's value once."""

    __slots__ = ("_coro", "_done")

    def __init__(self, coro):
        self._coro = coro
        self._done = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._done:
            raise StopAsyncIteration
        self._done = True
        return await self._coro

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._coro.close()


class WorkerClient:
    name = "worker"

    RELOAD_BACKOFF_S = 0.05  # the first wait between reload attempts (doubles each time)

    def __init__(self, config: WorkerConfig | None = None, *, env: dict | None = None,
                 python: str = sys.executable):
        """``config``: how the worker is spawned and spoken to (:class:`WorkerConfig`);
        ``env``: its environment (default: this process's); ``python``: its interpreter."""
        self.config = config if config is not None else WorkerConfig()
        if not isinstance(self.config, WorkerConfig):
            raise TypeError(f"config: must be a WorkerConfig, got {type(self.config).__name__}")
        self.framing = self.config.framing or PLAIN
        self.distributed = self.config.group  # None for one rank: the plain worker
        self.timeout_s = self.config.timeout_s
        self.env = env
        self.python = python
        self.process = WorkerProcess(self.config, env=env, python=python,
                                     on_stdout=self._on_stdout, on_exit=self._on_exit,
                                     on_lost=self._give_up)
        self.ready: dict = {}
        self.resident: dict[str, dict] = {}  # model -> load params, replayed after a restart
        self.stats: dict[str, Any] = {"calls": 0, "restarts": 0, "crashes": 0, "protocol_errors": 0,
                                      "unresponsive": 0, "stalled_streams": 0}
        self._pending: dict[int, _Inbox] = {}
        self._next_id = 1
        self._dead: WorkerCrashed | None = None
        self._starting = False  # a (re)start is under way: not alive until it has finished
        self._start_lock: asyncio.Lock | None = None
        self._closed = False
        self.last_worker_error: str | None = None  # an error frame of id -1 (a bad frame, a desync)
        self._watchdog: asyncio.Task | None = None
        self._stalls: dict[int, tuple[int, float]] = {}  # stream id -> (frames taken, since)

    @property
    def transport(self) -> asyncio.SubprocessTransport | None:
        return self.process.transport

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def stderr_tail(self) -> collections.deque[str]:
        return self.process.stderr_tail

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """True when calls can go to the worker: it runs, and no (re)start is under way
        (calls made during one wait for it on the start lock, see :meth:`_ensure`)."""
        return self.transport is not None and self._dead is None and not self._starting

    async def start(self) -> WorkerClient:
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self.alive:
                return self
            if self.transport is not None:  # a dead worker: reap it, then start anew
                await self._kill()
                self.stats["restarts"] += 1
            self._closed = False
            self._starting = True
            try:
                await self._spawn()
                if self.config.reload_on_restart and self.resident:
                    await self._reload()
            except BaseException:
                if self._dead is None:  # never look alive after a failed start
                    self._dead = WorkerCrashed("worker failed to start")
                raise
            finally:
                self._starting = False
        return self

    async def _reload(self) -> None:
        """Load the models that were resident into a fresh worker (start lock held).

        A transient error is retried (``reload_attempts`` tries in all, waiting
        ``RELOAD_BACKOFF_S``, then twice as long each time); if a reload still fails, the
        worker is killed, so that it is not left alive without a model the stages above
        think is resident: the next call restarts it and tries again."""
        for model, params in list(self.resident.items()):
            retrying = AsyncRetrying(
                stop=stop_after_attempt(self.config.reload_attempts),
                wait=wait_exponential(multiplier=self.RELOAD_BACKOFF_S),
                retry=retry_if_exception(lambda e: isinstance(e, TransientError) and self._dead is None),
                before_sleep=lambda state, model=model: log.warning(
                    "reload of %r after a restart failed (%s); retrying", model,
                    state.outcome.exception()),
                reraise=True)
            try:
                async for attempt in retrying:
                    with attempt:
                        await self._unary(Call("load_model", params, model), internal=True)
            except BaseException as e:
                await self._abandon(f"reload of {model!r} after a restart failed: {e}")
                raise

    async def _abandon(self, reason: str) -> None:
        """Kill a worker that can't serve (e.g. its models did not reload): mark it dead
        first, so no call reaches it, and reap it; the next call starts a new one."""
        if self._dead is None:
            self._dead = WorkerCrashed(reason)
        if self.transport is None:
            return
        self.process.hard_kill()
        await self.process.wait()

    async def _spawn(self) -> None:
        """Start the process and wait for its ready frame (the handshake, id 0)."""
        self.codec = make_codec(self.config.wire_codec, self.config.max_frame_bytes)
        self._dead = None  # `alive` stays False until start() clears _starting
        self.last_worker_error = None
        ready = _Inbox()
        self._pending[0] = ready  # the handshake frame has id 0
        await self.process.spawn()
        try:
            frame = await asyncio.wait_for(ready.get(), self.config.ready_timeout_s)
            if isinstance(frame, BaseException):
                raise frame
            self.ready = frame
        except (TimeoutError, WorkerCrashed) as e:
            await self._kill()
            what = (f"sent no ready frame within ready_timeout_s={self.config.ready_timeout_s:g} s "
                    "(the handshake it sends once MLX is imported)" if isinstance(e, TimeoutError)
                    else f"exited before its ready frame ({e})")
            raise WorkerCrashed(f"worker pid {self.pid} {what}; stderr: "
                                f"{' | '.join(self.stderr_tail) or '(empty)'}") from None
        finally:
            self._pending.pop(0, None)
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def aclose(self) -> None:
        """Close: open calls end with EngineClosed, the worker is asked to shut down and
        given ``close_timeout_s`` to exit, then killed; always reaped."""
        was_alive = self.alive and not self._closed
        self._closed = self.process.closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.transport is None:
            return
        self._fail_all(EngineClosed("the engine was closed while this call was open"))
        if was_alive:
            try:
                self._send(call_frame(self._new_id(), "shutdown"))
            except (ConnectionError, RuntimeError, OSError):
                pass  # the pipe is gone: the worker is exiting anyway
        await self._kill(self.config.close_timeout_s)

    async def _kill(self, grace_s: float = 0.5) -> None:
        """Make sure the process is gone and reaped (``grace_s`` to exit on its own before a
        SIGKILL); fail whatever is still pending."""
        if self.transport is None:
            return
        await self.process.kill(grace_s)
        self._fail_all(WorkerCrashed("worker was closed"))

    async def __aenter__(self) -> WorkerClient:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # -- from the worker (event loop callbacks) -------------------------------------------
    def _on_stdout(self, data: bytes) -> None:
        t_in = time.perf_counter()  # when these frames' bytes arrived (the timeline's "received")
        for frame in self.codec.feed(data):
            if isinstance(frame, ProtocolError):
                self.stats["protocol_errors"] += 1
                log.warning("bad frame from worker: %s", frame)
                if isinstance(frame, ProtocolDesync):  # its output can't be read on: end it
                    self._give_up(f"the worker's output is out of step: {frame}")
                    return
                continue
            inbox = self._pending.get(frame["id"])
            if inbox is not None:
                if inbox.stream:
                    frame["t_in"] = t_in
                inbox.put(frame)
            elif frame["kind"] == "error" and frame["id"] == -1:
                self.stats["protocol_errors"] += 1
                self.last_worker_error = f"[{frame.get('code')}] {frame.get('message')}"
            # else: a late frame of a call its caller abandoned

    def _give_up(self, reason: str, error: type[KrmlxError] = WorkerCrashed) -> None:
        """Fail every pending call with ``error(reason)`` and kill the worker (from a
        callback or the watchdog: the exit is reaped by the process protocol; the next
        call restarts it)."""
        if self._dead is None:
            self._dead = WorkerCrashed(reason)
        self._fail_all(error(reason) if error is not WorkerCrashed else self._dead)
        self.process.hard_kill()

    def _on_exit(self) -> None:
        code = self.process.returncode
        killed = self.process.killed
        self.stats["crashes"] += not (self._closed or killed)
        why = f"{self._dead}; " if killed and self._dead is not None else ""
        said = f"; it last said {self.last_worker_error}" if self.last_worker_error else ""
        self._dead = WorkerCrashed(
            f"{why}worker pid {self.pid} exited with code {code}{said}"
            + (f"; stderr: {' | '.join(list(self.stderr_tail)[-5:])}" if self.stderr_tail else ""))
        self._fail_all(self._dead)

    def _fail_all(self, exc: KrmlxError) -> None:
        for inbox in self._pending.values():
            inbox.put(exc)
        self._pending.clear()

    # -- the watchdog ----------------------------------------------------------------------
    async def _watch(self) -> None:
        """Every ``tick``: a worker silent for ``liveness_timeout_s`` with calls pending is
        given up (WorkerUnresponsive); a stream whose frames wait unread for
        ``stall_timeout_s`` is cancelled. Runs until the client closes."""
        cfg = self.config
        limits = [t for t in (cfg.liveness_timeout_s, cfg.stall_timeout_s) if t]
        if not limits:
            return
        tick = max(0.02, min(1.0, min(limits) / 4))
        while not self._closed:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if (cfg.liveness_timeout_s and self._dead is None and self.transport is not None
                    and self._pending and 0 not in self._pending  # not during the handshake
                    and now - self.process.last_heard > cfg.liveness_timeout_s):
                self.stats["unresponsive"] += 1
                self._give_up(f"worker pid {self.pid} sent nothing, not even a heartbeat, for "
                              f"{now - self.process.last_heard:.1f} s (liveness_timeout_s="
                              f"{cfg.liveness_timeout_s:g}): it is hung or stopped; killed, the "
                              "next call restarts it", WorkerUnresponsive)
            if cfg.stall_timeout_s:
                self._cancel_stalled(now, cfg.stall_timeout_s)

    def _cancel_stalled(self, now: float, limit_s: float) -> None:
        seen = {}
        for fid, inbox in self._pending.items():
            if not inbox.stream or not inbox.items:
                continue
            taken, since = self._stalls.get(fid, (inbox.taken, now))
            if taken != inbox.taken:
                taken, since = inbox.taken, now
            if now - since <= limit_s:
                seen[fid] = (taken, since)
                continue
            self.stats["stalled_streams"] += 1
            del self._pending[fid]
            inbox.items.clear()
            inbox.put(CallTimeout(f"stream {fid} was not read for {now - since:.1f} s "
                                  f"(stall_timeout_s={limit_s:g}): cancelled in the worker"))
            self._cancel(fid)
        self._stalls = seen

    # -- calling ---------------------------------------------------------------------------
    async def _ensure(self) -> None:
        if self._closed:
            raise EngineClosed("the worker client is closed")
        if not self.alive:
            if self.transport is not None and not self.config.auto_restart and not self._starting:
                # a fresh instance per call: the shared one belongs to the calls the death
                # failed (a circuit breaker counts one instance once)
                raise WorkerCrashed(str(self._dead or "worker is not running"))
            await self.start()

    def _send(self, frame: dict) -> float:
        """Encode and write one frame; the time just before the write (the timeline's
        ``client_written``: the frame is encoded, the pipe write starts)."""
        try:
            data = self.codec.encode(frame)
        except (TypeError, ValueError, OverflowError) as e:  # e.g. an int past 64 bits
            raise BadRequest(f"{frame.get('method', frame['kind'])}: the call can't be "
                             f"encoded as {self.codec.name}: {e}") from None
        if len(data) > self.codec.max_frame_bytes:
            raise FrameTooLarge(f"{frame.get('method', frame['kind'])}: frame of {len(data)} bytes "
                                f"exceeds the limit of {self.codec.max_frame_bytes}")
        t = time.perf_counter()
        self.process.write(data)
        return t

    def call(self, call: Call) -> AsyncIterator[Any]:
        mark(call, "stage:client")
        return self._call(call) if call.streaming else _OneShot(self._unary(call))

    async def _unary(self, call: Call, *, internal: bool = False):
        """A unary call as a plain coroutine (the hot path for ping/tokenize: no generator).

        ``internal``: a call of the (re)start itself (the reload of resident models),
        made while ``alive`` is still False on purpose; it goes to the new worker as long
        as that one runs."""
        if internal:
            if self._dead is not None or self.transport is None:
                raise WorkerCrashed(str(self._dead or "worker is not running"))
        elif not self.alive or self._closed:
            await self._ensure()
        fid, inbox, timeout = self._register(call)
        try:
            self._send(call_frame(fid, call.method, call.params, call.model))
            frame = await self._next(inbox, None if timeout is None else time.perf_counter() + timeout, call)
        finally:
            self._pending.pop(fid, None)
        if frame["kind"] == "result":
            value = read_result(frame)
            self._track(call)
            return value
        if frame["kind"] == "error":
            raise read_error(frame)
        raise ProtocolError(f"{call.method}: unexpected {frame['kind']!r} frame for a unary call")

    def _new_id(self) -> int:
        fid = self._next_id
        self._next_id += 1
        return fid

    def _register(self, call: Call) -> tuple[int, _Inbox, float | None]:
        """A new call: its id, the inbox its frames are routed to, its timeout."""
        fid, inbox = self._new_id(), _Inbox(call.streaming)
        self._pending[fid] = inbox
        self.stats["calls"] += 1
        return fid, inbox, call.timeout_s if call.timeout_s is not None else self.timeout_s

    async def _call(self, call: Call):
        await self._ensure()
        fid, inbox, timeout = self._register(call)
        deadline = None if timeout is None else time.perf_counter() + timeout
        finished = False
        try:
            t_written = self._send(call_frame(fid, call.method, call.params, call.model))
            received: list[float] = []
            yielded: list[float] = []
            index = consumed = 0
            window = self.framing.window
            idle = self.config.idle_timeout_s
            items = inbox.items
            while True:
                if items and not isinstance(items[0], BaseException):
                    frame = items.popleft()  # already here: no await (the per-token fast path)
                else:
                    frame = await self._next(inbox, deadline, call, idle)
                inbox.taken += 1
                kind = frame["kind"]
                if kind == "token":
                    t_in = frame.get("t_in")
                    for token, text in read_tokens(frame):
                        now = time.perf_counter()
                        received.append(t_in)
                        yielded.append(now)
                        yield Chunk(token, text, index, now)
                        index += 1
                    if window:
                        consumed += 1
                        if consumed >= max(1, window // 2):
                            self._send(ack_frame(fid, consumed))
                            consumed = 0
                elif kind == "done":
                    finished = True
                    done = Done(*read_done(frame))
                    if isinstance(done.info.get("timeline"), dict):  # the client's hops join the worker's
                        done.info["timeline"].update(client_written=t_written, received=received,
                                                     yielded=yielded, done_received=frame.get("t_in"),
                                                     **(call.marks or {}))
                    yield done
                    return
                elif kind == "result":
                    finished = True
                    value = read_result(frame)
                    self._track(call)
                    yield value
                    return
                elif kind == "error":
                    finished = True
                    raise read_error(frame)
        finally:
            self._pending.pop(fid, None)
            if not finished and call.streaming and self.alive:
                self._cancel(fid)

    async def _next(self, inbox: _Inbox, deadline: float | None, call: Call,
                    idle_s: float | None = None) -> dict:
        """The next frame of a call; CallTimeout when its deadline passes first, or (a
        stream's ``idle_s``) when no frame comes for that long."""
        wait = None if deadline is None else max(0.0, deadline - time.perf_counter())
        idle = idle_s is not None and (wait is None or idle_s < wait)
        if idle:
            wait = idle_s
        if wait is None:
            item = await inbox.get()
        else:
            try:
                item = await asyncio.wait_for(inbox.get(), wait)
            except TimeoutError:
                if idle:
                    raise CallTimeout(f"{call.method}: no frame for {idle_s:g} s "
                                      "(idle_timeout_s)") from None
                raise CallTimeout(f"{call.method} timed out after "
                                  f"{call.timeout_s or self.timeout_s} s") from None
        if isinstance(item, BaseException):
            raise item
        return item

    def _cancel(self, target: int) -> None:
        """Tell the worker to stop a stream; the reply is not awaited (nobody waits for it)."""
        try:
            self._send(call_frame(self._new_id(), "cancel", {"target": target}))
        except (ConnectionError, RuntimeError):
            pass

    def _track(self, call: Call) -> None:
        if call.method == "load_model":
            self.resident[call.model] = call.params
        elif call.method == "unload_model":
            self.resident.pop(call.model, None)

    async def ping(self) -> dict:
        return await self._unary(Call("ping"))

    async def worker_stats(self) -> dict:
        return await self._unary(Call("stats"))
