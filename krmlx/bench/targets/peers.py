"""Peer servers as targets: ``mlx_lm.server[?k=v]`` (in this environment) and
``peer:NAME[?k=v]`` (a peer in its own venv), each started from its one definition in
:data:`krmlx.bench.peers.PEERS` (command, default flags, health path, model id, environment);
``k=v`` options update its default flags.

Contract: as :class:`~krmlx.bench.targets.managed.ManagedServer`; a peer that cannot run
here fails to start with its recorded reason.
"""

from __future__ import annotations

import asyncio

from ...process import ManagedProcess
from ..peers import Peer, get_peer, peer_argv, peer_env, peer_model_id, peer_venv
from ..venvs import Venv
from .managed import ManagedServer


def from_spec(kind: str, arg: str, options: dict, name: str | None, spec: str):
    if kind == "mlx_lm.server" and not arg:
        return MlxLmServer(name, spec, **options)
    if kind == "peer" and arg:
        get_peer(arg)  # an unknown peer is named now, not at start
        return PeerServer(arg, name or f"peer:{arg}", spec, **options)
    return None


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
