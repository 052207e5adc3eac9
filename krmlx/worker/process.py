"""WorkerProcess: the worker's OS process as its client sees it (spawn, output, exit, kill).

One per :class:`~krmlx.worker.client.WorkerClient`, spawned again on each restart.

- :meth:`WorkerProcess.spawn` starts ``python -m krmlx.worker`` (a distributed group's
  launcher, in a session of its own, when the config has a group) with this process's
  environment, so it runs on the same BLAS (or on OpenBLAS with ``fast_blas=True``,
  :func:`krmlx.blas.blas_env`); its stdout bytes go to ``on_stdout`` straight from the
  event loop's read callback (asyncio subprocess protocol: no reader task, no
  StreamReader: one task wakeup per reply instead of two), and ``last_heard`` says when it
  last wrote (the client's liveness check);
- stderr: the last lines are kept (``stderr_tail``, quoted in errors); with
  ``KRMLX_WORKER_STDERR`` set they are echoed to this process's stderr;
- its exit calls ``on_exit``; a stdout that closes while the process stays (a group's
  launcher stopped or stuck after rank 0, which holds the pipe, left) calls
  ``on_lost(reason)`` after ``STDOUT_EOF_GRACE_S``, so pending calls never wait on it;
- :meth:`~WorkerProcess.kill` gives it ``grace_s`` to exit by itself, then SIGKILLs it
  (:meth:`~WorkerProcess.hard_kill`: a group's whole process group); it is always reaped.
  ``killed`` says the exit was krmlx's doing, not a crash.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from ..blas import blas_env
from .config import WorkerConfig
from .launch import free_port_range


class _Protocol(asyncio.SubprocessProtocol):
    """Hands the pipes' bytes and the exit to the WorkerProcess, from the event loop's
    callbacks."""

    def __init__(self, process: WorkerProcess):
        self.process = process
        self.exited = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self.process.last_heard = time.monotonic()
            self.process.on_stdout(data)
        else:
            self.process.read_stderr(data)

    def pipe_connection_lost(self, fd: int, exc) -> None:
        if fd == 1:
            self.process.stdout_closed()

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)
        self.process.on_exit()


class WorkerProcess:
    STDOUT_EOF_GRACE_S = 1.0  # stdout closed: how long the process gets to exit by itself

    def __init__(self, config: WorkerConfig, *, env: dict | None, python: str,
                 on_stdout: Callable[[bytes], None], on_exit: Callable[[], None],
                 on_lost: Callable[[str], None]):
        """``env``: the worker's environment (None: this process's); ``python``: its
        interpreter; the callbacks run in the event loop (see the module's docstring)."""
        self.config = config
        self.env = env
        self.python = python
        self.on_stdout, self.on_exit, self.on_lost = on_stdout, on_exit, on_lost
        self.transport: asyncio.SubprocessTransport | None = None
        self._protocol: _Protocol | None = None
        self._stdin = None
        self.pid: int | None = None
        self.killed = False  # krmlx killed this process (its exit is no crash)
        self.closing = False  # its client is closing: a stdout EOF is expected
        self.last_heard = 0.0  # monotonic time of its last stdout output
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._stderr_buf = b""
        self._tmpdir: str | None = None  # mlx.launch's TMPDIR while its group runs

    @property
    def returncode(self) -> int | None:
        return self.transport.get_returncode() if self.transport is not None else None

    @property
    def running(self) -> bool:
        return self.transport is not None and self.transport.get_returncode() is None

    def argv(self) -> list[str]:
        argv = self.config.argv(self.python)
        d = self.config.group
        if d is not None:
            return d.argv(self.python, argv, d.port or free_port_range(d.ranks))
        return argv

    def _environ(self) -> dict:
        # The worker runs on the BLAS this process runs on (the CLI re-executes itself under
        # OpenBLAS when it can), so the direct baseline and the worker compare like for like;
        # fast_blas=True forces OpenBLAS for the worker alone.
        env = blas_env(self.env) if self.config.fast_blas else dict(os.environ if self.env is None else self.env)
        env.setdefault("HF_HUB_OFFLINE", "1")
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        group = self.config.group
        if group is not None and group.launcher == "mlx.launch":
            # mlx.launch writes each rank's pidfile (and a hostfile copy) with mktemp and
            # leaves them when the group ends: give it a folder of its own, removed in kill()
            self._tmpdir = env["TMPDIR"] = tempfile.mkdtemp(prefix="krmlx-mlx-launch-")
        return env

    async def spawn(self) -> None:
        """Start a new process (the previous one, if any, must be reaped: :meth:`kill`)."""
        env = self._environ()
        self.killed = self.closing = False
        loop = asyncio.get_running_loop()
        self.transport, self._protocol = await loop.subprocess_exec(
            lambda: _Protocol(self), *self.argv(), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            start_new_session=self.config.group is not None)
        self._stdin = self.transport.get_pipe_transport(0)
        self.pid = self.transport.get_pid()
        self.last_heard = time.monotonic()

    def write(self, data: bytes) -> None:
        self._stdin.write(data)

    async def wait(self) -> None:
        """Until the process has exited (it must have been spawned)."""
        await self._protocol.exited

    async def kill(self, grace_s: float = 0.5) -> None:
        """Make sure the process is gone and reaped (``grace_s`` to exit on its own before a
        SIGKILL); close its pipes and remove its launcher's folder."""
        transport = self.transport
        if transport is None:
            return
        if transport.get_returncode() is None:
            try:
                await asyncio.wait_for(asyncio.shield(self._protocol.exited), grace_s)
            except TimeoutError:
                self.hard_kill()
        await self._protocol.exited
        transport.close()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def hard_kill(self) -> None:
        """SIGKILL the process if it runs; a distributed group's whole process group (its
        launcher and every local rank: they all share the session it was started in)."""
        if not self.running:
            return
        self.killed = True
        if self.config.group is not None:
            try:
                os.killpg(self.transport.get_pid(), signal.SIGKILL)
                return
            except ProcessLookupError:
                pass
        self.transport.kill()

    def read_stderr(self, data: bytes) -> None:
        lines = (self._stderr_buf + data).split(b"\n")
        self._stderr_buf = lines.pop()[-4096:]
        for line in lines:
            text = line.decode(errors="replace").rstrip()
            self.stderr_tail.append(text)
            if os.environ.get("KRMLX_WORKER_STDERR"):
                print(text, file=sys.stderr)

    def stdout_closed(self) -> None:
        """Nothing more can come. The exit normally follows at once; a process that stays
        is reported lost after ``STDOUT_EOF_GRACE_S``."""
        transport = self.transport
        if self.closing or not self.running:
            return

        def check():
            if self.transport is transport and transport.get_returncode() is None:
                self.on_lost(f"worker pid {self.pid} closed its stdout but had not exited "
                             f"{self.STDOUT_EOF_GRACE_S:g} s later; killed, the next call "
                             "restarts it")

        asyncio.get_running_loop().call_later(self.STDOUT_EOF_GRACE_S, check)
