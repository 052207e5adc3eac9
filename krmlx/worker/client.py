"""WorkerClient: spawns the worker and speaks its protocol; implements the Service protocol.

- spawns ``python -m krmlx.worker`` (asyncio subprocess protocol: frames are decoded and
  routed in the event loop's read callback) with this process's environment, so it runs on
  the same BLAS (or on OpenBLAS with ``fast_blas=True``, :func:`krmlx.blas.blas_env`), and
  waits for its ``ready`` frame, which says which BLAS the worker got;
- routes reply frames to callers by request id; ``generate`` streams
  :class:`~krmlx.types.Chunk` items then a :class:`~krmlx.types.Done`;
- a consumer that stops early (``aclose()``) makes the client send ``cancel``;
- ``timeout_s`` (per call, or the client default) bounds the whole call: on expiry the
  call is cancelled in the worker and :class:`~krmlx.errors.CallTimeout` is raised;
- when the worker dies, every pending call fails at once with one
  :class:`~krmlx.errors.WorkerCrashed`; the next call restarts it (``auto_restart``) and
  reloads the models that were resident. The client is not ``alive`` until the new
  worker is ready *and* has reloaded them: calls made meanwhile wait for the restart
  (they never reach the old pipe, nor a new worker without its models). A reload is
  retried on a transient error (``reload_attempts`` tries in all); if it still fails,
  the new worker is killed and the error raised, so the next call restarts again;
- ``aclose()`` always kills and reaps the process.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from ..blas import blas_env
from ..errors import CallTimeout, FrameTooLarge, ProtocolError, WorkerCrashed, error_from_code
from ..service import Call
from ..types import Chunk, Done
from .faults import FaultPlan
from .protocol import call_frame, make_codec
from .scheduler import StreamOptions

log = logging.getLogger("krmlx.client")


class _Inbox:
    """One call's incoming frames: a deque plus a future to wake its (single) reader.

    Lighter than asyncio.Queue on the per-token path: no wakeup when nobody waits."""

    __slots__ = ("items", "waiter")

    def __init__(self):
        self.items: collections.deque = collections.deque()
        self.waiter: asyncio.Future | None = None

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


class _Protocol(asyncio.SubprocessProtocol):
    """Routes the worker's stdout straight from the event loop's read callback (no reader
    task, no StreamReader: one task wakeup per reply instead of two)."""

    def __init__(self, client: WorkerClient):
        self.client = client
        self.exited = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self.client._on_stdout(data)
        else:
            self.client._on_stderr(data)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)
        self.client._on_exit()


class WorkerClient:
    name = "worker"

    RELOAD_BACKOFF_S = 0.05  # the first wait between reload attempts (doubles each time)

    def __init__(self, *, codec: str = "json", faults: FaultPlan | dict | None = None,
                 stream: StreamOptions = StreamOptions(), max_frame_bytes: int | None = None,
                 timeout_s: float | None = None, ready_timeout_s: float = 120.0,
                 auto_restart: bool = True, reload_on_restart: bool = True,
                 env: dict | None = None, python: str = sys.executable, scheduler: str = "serial",
                 prompt_cache: dict | None = None, fast_blas: bool = False,
                 reload_attempts: int = 3, distributed=None):
        make_codec(codec)  # validate early
        if distributed is not None:
            distributed.check_codec(codec)
        # krmlx.worker.launch.DistributedConfig; one rank is the plain worker
        self.distributed = distributed if distributed is not None and distributed.ranks > 1 else None
        if isinstance(reload_attempts, bool) or not isinstance(reload_attempts, int) \
                or reload_attempts < 1:
            raise ValueError(f"reload_attempts: must be an int >= 1, got {reload_attempts!r}")
        self.reload_attempts = reload_attempts
        self.fast_blas = fast_blas
        self.scheduler = scheduler
        self.prompt_cache = prompt_cache
        self.codec_name = codec
        self.faults = FaultPlan.from_dict(faults) if isinstance(faults, dict) else faults
        self.stream_opts = stream
        self.max_frame_bytes = max_frame_bytes
        self.timeout_s = timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.auto_restart = auto_restart
        self.reload_on_restart = reload_on_restart
        self.env = env
        self.python = python
        self.transport: asyncio.SubprocessTransport | None = None
        self._protocol: _Protocol | None = None
        self._stdin = None
        self.pid: int | None = None
        self.ready: dict = {}
        self.resident: dict[str, dict] = {}  # model -> load params, replayed after a restart
        self.stats: dict[str, Any] = {"calls": 0, "restarts": 0, "crashes": 0, "protocol_errors": 0}
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._stderr_buf = b""
        self._pending: dict[int, _Inbox] = {}
        self._next_id = 1
        self._dead: WorkerCrashed | None = None
        self._starting = False  # a (re)start is under way: not alive until it has finished
        self._expected_exit = False  # the client itself killed the worker (not a crash)
        self._start_lock: asyncio.Lock | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    def _argv(self) -> list[str]:
        argv = [self.python, "-m", "krmlx.worker", "--codec", self.codec_name,
                "--scheduler", self.scheduler]
        if self.max_frame_bytes:
            argv += ["--max-frame-bytes", str(self.max_frame_bytes)]
        if self.faults:
            argv += ["--faults", json.dumps(self.faults.to_dict())]
        if self.prompt_cache is not None:
            argv += ["--prompt-cache", json.dumps(self.prompt_cache)]
        if self.stream_opts != StreamOptions():
            o = self.stream_opts
            argv += ["--stream", json.dumps({"coalesce_tokens": o.coalesce_tokens,
                                             "coalesce_ms": o.coalesce_ms, "window": o.window})]
        if self.distributed is not None:
            from .launch import free_port_range

            d = self.distributed
            return d.argv(self.python, argv, d.port or free_port_range(d.ranks))
        return argv

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
                if self.reload_on_restart and self.resident:
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

        A transient error is retried (``reload_attempts`` tries in all, with a short
        backoff); if a reload still fails, the worker is killed, so that it is not left
        alive without a model the stages above think is resident: the next call
        restarts it and tries again."""
        from ..errors import TransientError

        for model, params in list(self.resident.items()):
            for attempt in range(1, self.reload_attempts + 1):
                try:
                    await self._unary(Call("load_model", params, model), internal=True)
                    break
                except TransientError as e:
                    if attempt < self.reload_attempts and self._dead is None:
                        log.warning("reload of %r after a restart failed (%s); retrying", model, e)
                        await asyncio.sleep(self.RELOAD_BACKOFF_S * 2 ** (attempt - 1))
                        continue
                    await self._abandon(f"reload of {model!r} after a restart failed: {e}")
                    raise
                except BaseException as e:
                    await self._abandon(f"reload of {model!r} after a restart failed: {e}")
                    raise

    async def _abandon(self, reason: str) -> None:
        """Kill a worker that can't serve (e.g. its models did not reload): mark it dead
        first, so no call reaches it, and reap it; the next call starts a new one."""
        if self._dead is None:
            self._dead = WorkerCrashed(reason)
        transport, protocol = self.transport, self._protocol
        if transport is None:
            return
        if transport.get_returncode() is None:
            self._expected_exit = True
            self._hard_kill(transport)
        await protocol.exited

    async def _spawn(self) -> None:
        # The worker runs on the BLAS this process runs on (the CLI re-executes itself under
        # OpenBLAS when it can), so the direct baseline and the worker compare like for like;
        # fast_blas=True forces OpenBLAS for the worker alone.
        env = blas_env(self.env) if self.fast_blas else dict(os.environ if self.env is None else self.env)
        env.setdefault("HF_HUB_OFFLINE", "1")
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.codec = make_codec(self.codec_name, *([self.max_frame_bytes] if self.max_frame_bytes else []))
        self._dead = None  # `alive` stays False until start() clears _starting
        self._expected_exit = False
        ready = _Inbox()
        self._pending[0] = ready  # the handshake frame has id 0
        loop = asyncio.get_running_loop()
        self.transport, self._protocol = await loop.subprocess_exec(
            lambda: _Protocol(self), *self._argv(), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            start_new_session=self.distributed is not None)
        self._stdin = self.transport.get_pipe_transport(0)
        self.pid = self.transport.get_pid()
        try:
            frame = await asyncio.wait_for(ready.get(), self.ready_timeout_s)
            if isinstance(frame, BaseException):
                raise frame
            self.ready = frame
        except (TimeoutError, WorkerCrashed) as e:
            await self._kill()
            raise WorkerCrashed(f"worker did not become ready: {e or 'timeout'}; "
                                f"stderr: {' | '.join(self.stderr_tail)}") from None
        finally:
            self._pending.pop(0, None)

    async def aclose(self) -> None:
        self._closed = True
        if self.transport is None:
            return
        if self.alive:
            try:
                await asyncio.wait_for(self._unary(Call("shutdown")), 1.0)
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
        await self._kill()

    async def _kill(self) -> None:
        """Make sure the process is gone and reaped; fail whatever is still pending."""
        transport, protocol = self.transport, self._protocol
        if transport is None:
            return
        if transport.get_returncode() is None:
            try:
                await asyncio.wait_for(asyncio.shield(protocol.exited), 0.5)
            except TimeoutError:
                self._hard_kill(transport)
        await protocol.exited
        transport.close()
        self._fail_all(WorkerCrashed("worker was closed"))

    def _hard_kill(self, transport) -> None:
        """SIGKILL the worker; a distributed group's whole process group (its launcher and
        every local rank: they all share the session the client started it in)."""
        if self.distributed is not None:
            try:
                os.killpg(transport.get_pid(), signal.SIGKILL)
                return
            except ProcessLookupError:
                pass
        transport.kill()

    async def __aenter__(self) -> WorkerClient:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # -- from the worker (event loop callbacks) -------------------------------------------
    def _on_stdout(self, data: bytes) -> None:
        for frame in self.codec.feed(data):
            if isinstance(frame, ProtocolError):
                self.stats["protocol_errors"] += 1
                log.warning("bad frame from worker: %s", frame)
                continue
            inbox = self._pending.get(frame["id"])
            if inbox is not None:
                inbox.put(frame)
            elif frame["kind"] == "error" and frame["id"] == -1:
                self.stats["protocol_errors"] += 1
            # else: a late frame of a call its caller abandoned

    def _on_stderr(self, data: bytes) -> None:
        lines = (self._stderr_buf + data).split(b"\n")
        self._stderr_buf = lines.pop()[-4096:]
        for line in lines:
            text = line.decode(errors="replace").rstrip()
            self.stderr_tail.append(text)
            if os.environ.get("KRMLX_WORKER_STDERR"):
                print(text, file=sys.stderr)

    def _on_exit(self) -> None:
        code = self.transport.get_returncode() if self.transport else None
        self.stats["crashes"] += not (self._closed or self._expected_exit)
        why = f"{self._dead}; " if self._expected_exit and self._dead is not None else ""
        self._dead = WorkerCrashed(
            f"{why}worker pid {self.pid} exited with code {code}"
            + (f"; stderr: {' | '.join(list(self.stderr_tail)[-5:])}" if self.stderr_tail else ""))
        self._fail_all(self._dead)

    def _fail_all(self, exc: WorkerCrashed) -> None:
        for inbox in self._pending.values():
            inbox.put(exc)
        self._pending.clear()

    # -- calling ---------------------------------------------------------------------------
    async def _ensure(self) -> None:
        if self._closed:
            raise WorkerCrashed("client is closed")
        if not self.alive:
            if self.transport is not None and not self.auto_restart and not self._starting:
                # a fresh instance per call: the shared one belongs to the calls the death
                # failed (a circuit breaker counts one instance once)
                raise WorkerCrashed(str(self._dead or "worker is not running"))
            await self.start()

    def _send(self, frame: dict) -> None:
        data = self.codec.encode(frame)
        if len(data) > self.codec.max_frame_bytes:
            raise FrameTooLarge(f"{frame.get('method', frame['kind'])}: frame of {len(data)} bytes "
                                f"exceeds the limit of {self.codec.max_frame_bytes}")
        self._stdin.write(data)

    def call(self, call: Call) -> AsyncIterator[Any]:
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
            self._track(call)
            return frame["value"]
        if frame["kind"] == "error":
            raise error_from_code(frame["code"], frame["message"])
        raise ProtocolError(f"{call.method}: unexpected {frame['kind']!r} frame for a unary call")

    def _new_id(self) -> int:
        fid = self._next_id
        self._next_id += 1
        return fid

    def _register(self, call: Call) -> tuple[int, _Inbox, float | None]:
        """A new call: its id, the inbox its frames are routed to, its timeout."""
        fid, inbox = self._new_id(), _Inbox()
        self._pending[fid] = inbox
        self.stats["calls"] += 1
        return fid, inbox, call.timeout_s if call.timeout_s is not None else self.timeout_s

    async def _call(self, call: Call):
        await self._ensure()
        fid, inbox, timeout = self._register(call)
        deadline = None if timeout is None else time.perf_counter() + timeout
        finished = False
        try:
            self._send(call_frame(fid, call.method, call.params, call.model))
            index = consumed = 0
            window = self.stream_opts.window
            items = inbox.items
            while True:
                if items and not isinstance(items[0], BaseException):
                    frame = items.popleft()  # already here: no await (the per-token fast path)
                else:
                    frame = await self._next(inbox, deadline, call)
                kind = frame["kind"]
                if kind == "token":
                    for token, text in frame["tokens"]:
                        yield Chunk(token, text, index, time.perf_counter())
                        index += 1
                    if window:
                        consumed += 1
                        if consumed >= max(1, window // 2):
                            self._send({"v": 1, "id": fid, "kind": "ack", "n": consumed})
                            consumed = 0
                elif kind == "done":
                    finished = True
                    yield Done(frame["finish_reason"], frame["prompt_tokens"], frame.get("tail", ""),
                               frame.get("info") or {})
                    return
                elif kind == "result":
                    finished = True
                    self._track(call)
                    yield frame["value"]
                    return
                elif kind == "error":
                    finished = True
                    raise error_from_code(frame["code"], frame["message"])
        finally:
            self._pending.pop(fid, None)
            if not finished and call.streaming and self.alive:
                self._cancel(fid)

    async def _next(self, inbox: _Inbox, deadline: float | None, call: Call) -> dict:
        if deadline is None:
            item = await inbox.get()
        else:
            try:
                item = await asyncio.wait_for(inbox.get(), max(0.0, deadline - time.perf_counter()))
            except TimeoutError:
                raise CallTimeout(f"{call.method} timed out after {call.timeout_s or self.timeout_s} s") from None
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
