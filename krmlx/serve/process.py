"""ServerProcess: a managed ``python -m krmlx serve`` on 127.0.0.1 (tests, notebooks, bench)::

    with ServerProcess("tiny", scheduler="serial") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
        ...
    async with ServerProcess("tiny") as server:  # the same, without blocking the loop
        ...

A :class:`krmlx.process.ManagedProcess` (start, health, stop: see its contract) whose
command is ``krmlx serve``: a free port unless ``port`` is given; SIGTERM starts the
server's graceful stop (open requests get ``--graceful-timeout``, 10 s by default, so the
stop waits 20 s before SIGKILL) and the engine shuts its worker down; the API key goes in the environment
(``KRMLX_API_KEY``), never on the command line.
"""

from __future__ import annotations

import sys

from ..process import ManagedProcess, free_port


class ServerProcess(ManagedProcess):
    def __init__(self, model: str = "tiny", *, phases: str = "none", scheduler: str = "auto",
                 port: int | None = None, api_key: str | None = None, extra_args=(),
                 host: str = "127.0.0.1", env: dict | None = None,
                 ready_timeout_s: float = 120.0, stop_timeout_s: float = 20.0,
                 python: str = sys.executable, keep_log: bool = False):
        super().__init__([], port=port, host=host, health_path="/health", name="krmlx serve",
                         env=env, ready_timeout_s=ready_timeout_s, stop_timeout_s=stop_timeout_s,
                         keep_log=keep_log)
        self.model, self.phases, self.scheduler, self.api_key = model, phases, scheduler, api_key
        self.extra_args = tuple(extra_args)
        self.python = python

    def argv(self) -> list[str]:
        return [self.python, "-m", "krmlx", "serve", "--model", self.model, "--phases",
                self.phases, "--scheduler", self.scheduler, "--host", self.host,
                "--port", str(self.port), *self.extra_args]

    def environ(self) -> dict:
        env = super().environ()
        env.pop("KRMLX_API_KEY", None)
        if self.api_key:
            env["KRMLX_API_KEY"] = self.api_key  # not on the command line (ps shows that)
        return env

    def start(self) -> ServerProcess:
        if self.proc is None and self.port is None:
            self.port = free_port(self.host)
        return super().start()
