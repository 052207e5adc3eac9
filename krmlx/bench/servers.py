"""Managed servers: HTTP targets whose server the bench starts on 127.0.0.1, health-checks
and stops (:class:`krmlx.process.ManagedProcess` owns the process: own session, log file,
SIGTERM then SIGKILL of its group, always reaped).

- :class:`PeerServer`: a peer (:data:`krmlx.bench.peers.PEERS`: command, default flags,
  health path, model id, environment) in its own venv; options become its flags
  (``decode_concurrency=32`` -> ``--decode-concurrency 32``);
- :class:`MlxLmServer`: the ``mlx_lm.server`` peer, in this environment (its defaults:
  ``--decode-concurrency 64``, the size of krmlx's own continuous batch, and
  ``--prompt-cache-size 0``: its KV prompt cache would serve the bench's repeated prompts
  from memory);
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

from ..process import ManagedProcess, free_port
from ..stack import parse_phases
from .peers import Peer, flags, get_peer, peer_argv, peer_env, peer_model_id, peer_venv
from .targets import HttpTarget, _descendants
from .venvs import Venv


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


class PeerServer(ManagedServer):
    """A :class:`~krmlx.bench.peers.Peer` as a managed server: its venv (built on first use;
    krmlx's own environment for a peer without pins), its command line with its default
    options updated by the spec's, its environment, health path and model id. A peer that
    can't run here fails to start with the recorded reason."""

    kind = "peer"

    def __init__(self, peer: Peer | str, name: str | None = None, spec: str | None = None,
                 **options):
        self.peer = get_peer(peer) if isinstance(peer, str) else peer
        self.label, self.health_path = self.peer.name, self.peer.health
        self.venv: Venv | None = None
        super().__init__(name, spec or f"peer:{self.peer.name}", **options)

    async def start(self, model: str) -> PeerServer:
        if self.venv is None:
            self.venv = await asyncio.to_thread(peer_venv, self.peer)
        return await super().start(model)

    def make_process(self, folder: str, port: int) -> ManagedProcess:
        self.model_id = peer_model_id(self.peer, folder)
        return ManagedProcess(peer_argv(self.peer, self.venv, folder, port, self.options),
                              port=port, health_path=self.health_path, name=self.name,
                              env=peer_env(self.peer), ready_timeout_s=300.0)

    def info(self) -> dict:
        return {**super().info(), "pins": list(self.peer.pins), "own_metrics": self.peer.own_metrics}


class MlxLmServer(PeerServer):
    """mlx-lm's server in this environment (same mlx, mlx-lm and BLAS as the other targets):
    ``PEERS["mlx_lm.server"]``, its one definition (prompt cache off unless asked). Its
    ``/v1/models`` lists the Hugging Face cache, so requests name the served folder, which
    it has loaded."""

    kind = "managed"

    def __init__(self, name: str | None = None, spec: str = "mlx_lm.server", **options):
        super().__init__("mlx_lm.server", name, spec, **options)


class KrmlxServe(ManagedServer):
    label = "krmlx.serve"
    health_path = "/health"

    def __init__(self, phases: str, name: str | None, spec: str, **options):
        names = parse_phases(phases)  # the serve CLI's grammar: checked here, before a start
        self.phases = ",".join(names) or "phase0"
        super().__init__(name or (f"serve:{phases}" if names else "serve"), spec, **options)

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
