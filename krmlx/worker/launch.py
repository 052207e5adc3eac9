"""Start the worker as an MLX distributed group of N ranks (see :mod:`krmlx.worker.group`).

Two launchers, chosen by :class:`DistributedConfig.launcher`:

- ``krmlx`` (one host): ``python -m krmlx.worker.launch --ranks N --backend ring|nccl
  --port P -- WORKER...`` starts the N ranks itself. Rank 0 *inherits* this process's
  stdin and stdout, so frames go straight between the engine and rank 0 (no relay);
  the other ranks read nothing and write to stderr. It then lets go of its own stdio and
  waits: when any rank exits it kills the others, reaps them all and exits with the
  first failing rank's code. Each follower gets a doorbell pipe from rank 0, so it waits
  for the next command on the pipe rather than in a spinning collective. Ranks die with it (PR_SET_PDEATHSIG) and share its process
  group, which the client kills on close.
- ``mlx.launch`` (a hostfile, or ``-n N`` on one host): MLX's own launcher, which ssh-es
  into each host of the hostfile and relays every rank's stdio through itself. The
  engine then speaks JSON lines only (the relay decodes output as text) and rank 0
  writes ASCII-only frames (the relay reads 8 KiB at a time and would drop a UTF-8
  character cut in two); the relay polls its stdin every 0.1 s, which shows in TTFT
  (measured by ``bench distributed``).

Backends: ``ring`` (TCP; CPU; loopback on one host) and ``nccl`` (NVIDIA GPUs, one rank
per GPU, ``CUDA_VISIBLE_DEVICES`` = rank).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from ..errors import ConfigError

BACKENDS = ("ring", "nccl")
LAUNCHERS = ("krmlx", "mlx.launch")
FOLLOWER_GRACE_S = 5.0  # after rank 0 exits cleanly, how long the others get to follow
DOORBELLS_ENV = "KRMLX_DOORBELLS"  # rank 0: write fds, comma-separated; a follower: its read fd
GROUP_FOLDER_ENV = "KRMLX_GROUP_FOLDER"  # rank 0: the launcher's temp folder, removed once all ranks joined


@dataclass(frozen=True)
class DistributedConfig:
    """The worker as ``ranks`` processes (tensor parallel). ``hostfile`` (mlx.launch's JSON
    format) requires ``launcher="mlx.launch"``; ``port`` None picks free ports."""

    ranks: int = 2
    backend: str = "ring"
    launcher: str = "krmlx"
    hostfile: str | None = None
    port: int | None = None

    def __post_init__(self):
        if isinstance(self.ranks, bool) or not isinstance(self.ranks, int) or self.ranks < 1:
            raise ConfigError(f"distributed.ranks: must be an int >= 1, got {self.ranks!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"distributed.backend: must be one of {BACKENDS}, got {self.backend!r}")
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"distributed.launcher: must be one of {LAUNCHERS}, got {self.launcher!r}")
        if self.hostfile is not None:
            if self.launcher != "mlx.launch":
                raise ConfigError("distributed.hostfile: needs launcher='mlx.launch' (the krmlx "
                                  "launcher starts ranks on this host only)")
            if not os.path.isfile(self.hostfile):
                raise ConfigError(f"distributed.hostfile: no such file {self.hostfile!r}")
        if self.port is not None and not 1024 <= self.port <= 65535 - self.ranks:
            raise ConfigError(f"distributed.port: must be in [1024, {65535 - self.ranks}], got {self.port!r}")

    def check_codec(self, codec: str) -> None:
        """mlx.launch relays every rank's stdout as text: a group it starts speaks JSON."""
        if self.ranks > 1 and self.launcher == "mlx.launch" and codec != "json":
            raise ConfigError("distributed: mlx.launch relays the worker's stdout as text; "
                              f"use the json codec, not {codec!r}")

    def argv(self, python: str, worker_argv: list[str], port: int) -> list[str]:
        """The command that starts the group; ``worker_argv`` is one rank's worker command."""
        worker = [*worker_argv, "--distributed", self.backend]
        if self.launcher == "krmlx":
            return [python, "-m", "krmlx.worker.launch", "--ranks", str(self.ranks),
                    "--backend", self.backend, "--port", str(port), "--", *worker]
        hosts = ["--hostfile", self.hostfile] if self.hostfile else [
            "-n", str(self.ranks), *(f"--env={k}={v}" for k, v in blas_threads(self.ranks).items())]
        return [python, "-c", "from mlx._distributed_utils.launch import main; main()",
                *hosts, "--backend", self.backend, "--starting-port", str(port),
                "--nccl-port", str(port), "--", *worker, "--ascii-frames"]


def free_port_range(n: int, attempts: int = 50) -> int:
    """A base port P such that P..P+n-1 can be bound on 127.0.0.1 right now."""
    for _ in range(attempts):
        base = random.randrange(20000, 60000 - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise OSError(f"no {n} consecutive free ports found on 127.0.0.1")


def blas_threads(ranks: int) -> dict:
    """BLAS/OpenMP threads per rank when N ranks share this host's cores: cores // N (at
    least 1), unless the environment already says. OpenBLAS's default (a thread per core
    in every rank) oversubscribes the cores: on a 2-core VM, 2 ranks of ``mini`` decoded at
    50.7 ms/token with it and 36.1 ms/token with one thread each."""
    n = str(max(1, (os.cpu_count() or 1) // ranks))
    return {k: os.environ.get(k, n) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}


def rank_envs(ranks: int, backend: str, port: int, folder: str) -> list[dict]:
    """Each rank's extra environment for MLX's distributed init on this host."""
    envs = []
    if backend == "ring":
        hostfile = os.path.join(folder, "ring.json")
        with open(hostfile, "w") as f:
            json.dump([[f"127.0.0.1:{port + i}"] for i in range(ranks)], f)
        for i in range(ranks):
            envs.append({"MLX_RANK": str(i), "MLX_HOSTFILE": hostfile, **blas_threads(ranks)})
    else:
        for i in range(ranks):
            envs.append({"MLX_RANK": str(i), "MLX_WORLD_SIZE": str(ranks),
                         "NCCL_HOST_IP": "127.0.0.1", "NCCL_PORT": str(port),
                         "CUDA_VISIBLE_DEVICES": str(i)})
    return envs


def _die_with_parent() -> None:
    """In a rank (before exec): get SIGKILL when the launcher dies, however it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the process group kill still applies
        pass


def kill_all(procs: list[subprocess.Popen]) -> None:
    """SIGKILL every rank still running, then reap them all."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def supervise(procs: list[subprocess.Popen]) -> int:
    """Wait until a rank exits; then end the others. The exit code: the first failing
    rank's (a signal as 128 + its number), else 0."""
    first = None
    while first is None:
        for i, p in enumerate(procs):
            if p.poll() is not None:
                first = i
                break
        else:
            try:  # sleep until any child exits; WNOWAIT leaves reaping to poll() above
                os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                pass
    code = procs[first].returncode
    if first == 0 and code == 0:  # rank 0 shut down: the others got 'shutdown' too
        deadline = time.monotonic() + FOLLOWER_GRACE_S
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.02)
    kill_all(procs)
    codes = [p.returncode for p in procs]
    failed = [c for c in [code, *codes] if c]
    if not failed:
        return 0
    c = failed[0]
    return 128 - c if c < 0 else c


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m krmlx.worker.launch")
    parser.add_argument("--ranks", type=int, required=True)
    parser.add_argument("--backend", choices=BACKENDS, default="ring")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.ranks < 1:
        parser.error("give --ranks N >= 1 and a command after --")
    port = args.port or free_port_range(args.ranks)
    folder = tempfile.mkdtemp(prefix="krmlx-group-")
    procs: list[subprocess.Popen] = []

    def stop(signum, _frame):
        kill_all(procs)
        shutil.rmtree(folder, ignore_errors=True)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        # one doorbell pipe per follower: rank 0 rings it before each command (krmlx.worker.group)
        bells = [os.pipe() for _ in range(args.ranks - 1)]
        for i, extra in enumerate(rank_envs(args.ranks, args.backend, port, folder)):
            env = {**os.environ, **extra}
            lead = i == 0
            if lead:
                # rank 0 removes the folder (the ring hostfile) once every rank has joined,
                # so a launcher that is SIGKILLed later leaves nothing behind
                env[GROUP_FOLDER_ENV] = folder
                env[DOORBELLS_ENV] = ",".join(str(w) for _, w in bells)
                fds = [w for _, w in bells]
            else:
                env[DOORBELLS_ENV] = str(bells[i - 1][0])
                fds = [bells[i - 1][0]]
            procs.append(subprocess.Popen(
                command, env=env, stdin=None if lead else subprocess.DEVNULL,
                stdout=None if lead else sys.stderr.fileno(), preexec_fn=_die_with_parent,
                pass_fds=fds))
        for r, w in bells:  # the ranks hold them now: a rank's death closes its ends
            os.close(r)
            os.close(w)
        # Let go of stdin/stdout: rank 0 holds them now, so the engine sees EOF when it dies.
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        return supervise(procs)
    finally:
        kill_all(procs)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
