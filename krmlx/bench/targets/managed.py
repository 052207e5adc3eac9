"""Managed servers: HTTP targets whose server the bench starts on 127.0.0.1, health-checks
and stops (:class:`krmlx.process.ManagedProcess` owns the process: own session, log file,
SIGTERM then SIGKILL of its group, always reaped).

- peers (``mlx_lm.server``, ``peer:NAME``) are managed servers too: :mod:`.peers`;
- :class:`KrmlxServe`: ``python -m krmlx serve`` with the given phases (``scheduler``
  batched unless given; other options become its flags);
- :class:`CommandServer`: any command line, ``{port}``, ``{model}`` (the model folder) and
  ``{host}`` filled in; ready when ``/v1/models`` answers.

A server that exits during a run makes its requests fail; :attr:`alive` turns False and
the runner stops sending it work, keeping what was measured.
"""

from __future__ import annotations

import asyncio
import shlex

from ...models import resolve_model
from ...process import ManagedProcess, free_port
from ...serve.process import ServerProcess
from ...stack import parse_phases
from ..peers import flags
from .base import process_tree
from .http import HttpTarget


def from_spec(kind: str, arg: str, options: dict, name: str | None, spec: str):
    if kind == "krmlx.serve":
        return KrmlxServe(arg or "phase0", name, spec, **options)
    return None


class ManagedServer(HttpTarget):
    kind = "managed"
    health_path = "/v1/models"
    label = "server"

    def __init__(self, name: str | None, spec: str, **options):
        super().__init__("http://127.0.0.1:0/v1", name or self.label, spec)
        self.options = options
        self.process: ManagedProcess | None = None

    def command(self, folder: str, port: int) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def make_process(self, folder: str, port: int) -> ManagedProcess:
        return ManagedProcess(self.command(folder, port), port=port, health_path=self.health_path,
                              name=self.name)

    async def start(self, model: str) -> ManagedServer:
        if self.process is None:
            self.model, folder = model, str(resolve_model(model))
            self.process = self.make_process(folder, free_port())
            try:
                await asyncio.to_thread(self.process.start)
            except BaseException:
                self.process = self.model = None
                raise
            self.base_url = self.process.base_url
        return await super().start(model)

    async def stop(self) -> None:
        await super().stop()
        if self.process is not None:
            process, self.process = self.process, None
            self.exit_code = await asyncio.to_thread(process.stop)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.alive

    def pids(self) -> list[int]:
        return process_tree(self.process.pid if self.process else None)

    def info(self) -> dict:
        out = super().info()
        if self.process is not None:
            out["argv"] = self.process.argv()
        return out

    def why_dead(self) -> str:
        if self.process is None or self.process.alive:
            return ""
        return (f"{self.name} exited with code {self.process.proc.returncode}: "
                f"{self.process.log_tail(600)}")


class KrmlxServe(ManagedServer):
    label = "krmlx.serve"
    health_path = "/health"

    def __init__(self, phases: str, name: str | None, spec: str, **options):
        names = parse_phases(phases)  # the serve CLI's grammar: checked here, before a start
        self.phases = ",".join(names) or "phase0"
        super().__init__(name or (f"serve:{phases}" if names else "serve"), spec, **options)

    def make_process(self, folder: str, port: int) -> ManagedProcess:
        opts = dict(self.options)
        scheduler = opts.pop("scheduler", "auto")
        return ServerProcess(self.model, phases=self.phases, scheduler=scheduler, port=port,
                             extra_args=flags(opts))


class CommandServer(ManagedServer):
    label = "cmd"

    def __init__(self, template: str, name: str | None, spec: str):
        self.template = template
        words = shlex.split(template)
        super().__init__(name or f"cmd:{words[0] if words else '?'}", spec)

    def command(self, folder: str, port: int) -> list[str]:
        return shlex.split(self.template.format(port=port, model=folder, host="127.0.0.1"))
