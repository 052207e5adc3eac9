"""ServerProcess: a managed ``python -m krmlx serve`` on 127.0.0.1 (tests, notebooks, bench)::

    with ServerProcess("tiny", scheduler="batched") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
        ...
    async with ServerProcess("tiny") as server:  # the same, without blocking the loop
        ...

Contract:

- ``start()`` picks a free port (unless ``port`` is given), starts the server in its own
  session (so it and its worker can be stopped as one group), and waits until ``/health``
  answers 200; if the process exits first or ``ready_timeout_s`` passes, it is stopped and
  RuntimeError raised with the tail of its log.
- ``stop()`` sends SIGTERM (uvicorn shuts down: open streams end, the engine's worker is
  shut down and reaped), waits up to ``stop_timeout_s``, then SIGKILLs the whole process
  group; the process is always reaped. Idempotent.
- The server's output goes to a log file (``log_path``), never to a pipe nobody reads;
  ``stop()`` removes it unless ``keep_log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, model: str = "tiny", *, phases: str = "none", scheduler: str = "batched",
                 port: int | None = None, api_key: str | None = None, extra_args=(),
                 host: str = "127.0.0.1", env: dict | None = None,
                 ready_timeout_s: float = 120.0, stop_timeout_s: float = 10.0,
                 python: str = sys.executable, keep_log: bool = False):
        self.model, self.phases, self.scheduler = model, phases, scheduler
        self.host, self.port, self.api_key = host, port, api_key
        self.extra_args = tuple(extra_args)
        self.env = env
        self.ready_timeout_s, self.stop_timeout_s = ready_timeout_s, stop_timeout_s
        self.python = python
        self.keep_log = keep_log
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self._log = None

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
        argv = [self.python, "-m", "krmlx", "serve", "--model", self.model, "--phases",
                self.phases, "--scheduler", self.scheduler, "--host", self.host,
                "--port", str(self.port), *self.extra_args]
        return argv

    def start(self) -> ServerProcess:
        if self.proc is not None:
            return self
        if self.port is None:
            self.port = free_port(self.host)
        env = dict(os.environ if self.env is None else self.env)
        env.pop("KRMLX_API_KEY", None)
        if self.api_key:
            env["KRMLX_API_KEY"] = self.api_key  # not on the command line (ps shows that)
        fd, name = tempfile.mkstemp(prefix="krmlx-serve-", suffix=".log")
        self.log_path, self._log = Path(name), os.fdopen(fd, "wb")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"krmlx serve exited with code {self.proc.returncode} before "
                                   f"it was ready:\n{self.log_tail()}")
            try:
                if self.health(timeout_s=1.0) is not None:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"krmlx serve was not ready in {self.ready_timeout_s} s:\n"
                           f"{self.log_tail()}")

    def health(self, timeout_s: float = 5.0) -> dict | None:
        """``GET /health`` as a dict (None unless it answered 200)."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=timeout_s) as r:
                return json.loads(r.read()) if r.status == 200 else None
        except urllib.error.HTTPError:
            return None

    def log_tail(self, n: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def stop(self) -> int | None:
        """Stop and reap the server; its exit code (None if it never started)."""
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
            os.killpg(proc.pid, signal.SIGKILL)  # the worker too, if anything is left
        proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
            if not self.keep_log:
                self.log_path.unlink(missing_ok=True)
        return proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def __aenter__(self) -> ServerProcess:
        try:
            return await asyncio.to_thread(self.start)
        except asyncio.CancelledError:
            self.stop()
            raise

    async def __aexit__(self, *exc) -> None:
        await asyncio.to_thread(self.stop)
