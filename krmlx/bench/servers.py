"""Managed servers: HTTP targets whose server the bench starts on 127.0.0.1, health-checks
and stops (:class:`krmlx.process.ManagedProcess` owns the process: own session, log file,
SIGTERM then SIGKILL of its group, always reaped).

- :class:`MlxLmServer`: ``python -m mlx_lm.server`` on the model folder, in this
  environment (same mlx, mlx-lm and BLAS as the other targets); options become its flags
  (``decode_concurrency=64`` -> ``--decode-concurrency 64``; 64 unless given, the size of
  krmlx's own continuous batch; ``--prompt-cache-size 0`` unless given: its KV prompt cache
  would serve the bench's repeated prompts from memory);
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
import sys

from ..process import ManagedProcess, free_port
from .targets import HttpTarget, _descendants


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
        from ..models import resolve_model

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
        return _descendants(self.process.pid if self.process else None)

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


def flags(options: dict) -> list[str]:
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value not in (False, None):
            out += [flag, str(value)]
    return out


class MlxLmServer(ManagedServer):
    """Its ``/v1/models`` lists the Hugging Face cache (and fails without one), so requests
    name the served folder itself, which it has loaded."""

    label = "mlx_lm.server"
    health_path = "/health"

    def make_process(self, folder: str, port: int) -> ManagedProcess:
        self.model_id = folder
        return super().make_process(folder, port)

    def command(self, folder: str, port: int) -> list[str]:
        # its prompt cache off unless asked for: the bench repeats prompts (warm-up, trials),
        # and krmlx's own engine reuses no KV state unless its prompt cache is on
        opts = {"decode_concurrency": 64, "prompt_cache_size": 0, "log_level": "WARNING",
                **self.options}
        return [sys.executable, "-m", "mlx_lm.server", "--model", folder, "--host", "127.0.0.1",
                "--port", str(port), *flags(opts)]


class KrmlxServe(ManagedServer):
    label = "krmlx.serve"
    health_path = "/health"

    def __init__(self, phases: str, name: str | None, spec: str, **options):
        self.phases = phases
        super().__init__(name or ("serve" if phases in ("", "none", "phase0") else f"serve:{phases}"),
                         spec, **options)

    def make_process(self, folder: str, port: int) -> ManagedProcess:
        from ..serve.process import ServerProcess

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
