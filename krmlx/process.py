"""ManagedProcess: a server process on 127.0.0.1 that krmlx starts, health-checks and stops.

Used for krmlx's own server (:class:`krmlx.serve.ServerProcess`) and for the servers the
bench manages (mlx_lm.server, any ``cmd:`` command line, peers in their own venvs)::

    with ManagedProcess(argv, port=port, health_path="/health", name="my server") as p:
        ...                                      # p.url, p.pid, p.log_tail()

Contract:

- ``start()`` starts ``argv`` in its own session (so it and its children can be stopped as
  one group), with its output in a log file (``log_path``, never a pipe nobody reads), and
  waits until ``GET health_path`` answers 200; if the process exits first or
  ``ready_timeout_s`` passes, it is stopped and :class:`ServerStartError` (a KrmlxError and
  a RuntimeError) raised with its log's tail.
- ``stop()`` sends SIGTERM, waits up to ``stop_timeout_s``, then SIGKILLs the whole process
  group; the process is always reaped. Idempotent. The log is removed unless ``keep_log``
  (a ``log_path`` given by the caller is the caller's: kept).

:func:`free_port` is the one free-port picker (127.0.0.1 unless told).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .errors import KrmlxError


class ServerStartError(KrmlxError, RuntimeError):
    """A managed process exited, or stayed unhealthy, before it was ready."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ManagedProcess:
    def __init__(self, argv: list[str], *, port: int, host: str = "127.0.0.1",
                 health_path: str = "/health", name: str = "server", env: dict | None = None,
                 ready_timeout_s: float = 120.0, stop_timeout_s: float = 10.0,
                 keep_log: bool = False, log_path: str | os.PathLike | None = None):
        self._argv, self.port, self.host = list(argv), port, host
        self.health_path, self.name, self.env = health_path, name, env
        self.ready_timeout_s, self.stop_timeout_s = ready_timeout_s, stop_timeout_s
        self.keep_log = keep_log or log_path is not None
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None if log_path is None else Path(log_path)
        self._log = None
        self._tmp: str | None = None  # the server's TMPDIR: what it leaves there goes with it

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``.../v1``), as the openai SDK takes it."""
        return self.url + "/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def argv(self) -> list[str]:
        return self._argv

    def environ(self) -> dict:
        return dict(os.environ if self.env is None else self.env)

    def start(self) -> ManagedProcess:
        if self.proc is not None:
            return self
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="krmlx-server-", suffix=".log")
            self.log_path, self._log = Path(name), os.fdopen(fd, "wb")
        else:
            self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._tmp = tempfile.mkdtemp(prefix="krmlx-server-tmp-")
        env = {**self.environ(), "TMPDIR": self._tmp}
        try:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as e:
            self._log.close()
            self._log = None
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise ServerStartError(f"{self.name}: could not start {self.argv()[0]!r}: {e}") from None
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"{self.name} exited with code {self.proc.returncode} before "
                                   f"it was ready:\n{self.log_tail()}")
            try:
                if self.health(timeout_s=1.0) is not None:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise ServerStartError(f"{self.name} was not ready in {self.ready_timeout_s} s:\n"
                           f"{self.log_tail()}")

    def health(self, timeout_s: float = 5.0) -> dict | None:
        """``GET health_path`` as a dict (None unless it answered 200)."""
        try:
            with urllib.request.urlopen(self.url + self.health_path, timeout=timeout_s) as r:
                if r.status != 200:
                    return None
                body = r.read()
                try:
                    return json.loads(body) or {}
                except ValueError:
                    return {}
        except urllib.error.HTTPError:
            return None

    def log_tail(self, n: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def stop(self) -> int | None:
        """Stop and reap the process group; its exit code (None if it never started)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # its children too, if anything is left
        proc.wait()
        if self._tmp is not None:  # temp files the server (or a library of its) left behind
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        if self._log is not None:
            self._log.close()
            self._log = None
            if not self.keep_log:
                self.log_path.unlink(missing_ok=True)
        return proc.returncode

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def __aenter__(self) -> ManagedProcess:
        try:
            return await asyncio.to_thread(self.start)
        except asyncio.CancelledError:
            self.stop()
            raise

    async def __aexit__(self, *exc) -> None:
        await asyncio.to_thread(self.stop)
