"""Cached virtual environments for tools whose pins clash with krmlx's own.

Peer servers (rapid-mlx, vllm-mlx, ...) pin mlx-lm < 0.32 and a load generator pulls its
own stack, so each lives in a venv of its own under krmlx's cache folder:
``<cache>/venvs/<name>-<hash of pins and interpreter>``.

Contract of :func:`ensure_venv`:

- idempotent: a venv whose stamp file (``.krmlx-pins``) holds exactly the wanted pins is
  returned as it is, without running pip;
- a folder without that stamp (a build that died half way, or other pins under a colliding
  name) is removed and built again; the stamp is written last, so it only exists for a
  complete build;
- builds of one venv are serialized with a lock file beside it (two processes asking at once
  get one build);
- a failed build raises :class:`VenvBuildError` with the command and the tail of its output,
  and leaves no stamp (the next call starts over).

The builder is injectable (``builder=``) so the stamp and rebuild logic is tested without a
network; :func:`pip_builder` is the real one (``python -m venv`` then ``pip install PINS``).
The peer table lives in :mod:`krmlx.bench.peers`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from krmlx.errors import KrmlxError
from krmlx.models import cache_dir

STAMP = ".krmlx-pins"
Builder = Callable[[Path, Sequence[str]], None]
# pip lines that say nothing about why a build failed (left out of the error's tail)
_NOISE = ("WARNING: Location", "Collecting ", "  Downloading ", "  Using cached ", "Processing ",
          "Requirement already satisfied")


class VenvBuildError(KrmlxError):
    """A venv could not be built; the message holds the command and its output's tail."""


@dataclass(frozen=True)
class Venv:
    """A built venv: its folder, its ``bin`` folder and its interpreter."""

    root: Path
    pins: tuple[str, ...]

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def script(self, name: str) -> Path:
        """The path of console script ``name`` in this venv (it may not exist)."""
        return self.bin / name


def venvs_dir() -> Path:
    """``<krmlx cache>/venvs`` (``$KRMLX_CACHE/venvs``, else ``~/.cache/krmlx/venvs``)."""
    return cache_dir().parent / "venvs"


def stamp_text(pins: Sequence[str]) -> str:
    """What the stamp holds: the pins and the interpreter the venv was made from."""
    info = {
        "pins": list(pins),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "base": sys.base_prefix,
    }
    return json.dumps(info, indent=1, sort_keys=True) + "\n"


def venv_path(name: str, pins: Sequence[str], root: Path | None = None) -> Path:
    """The folder a venv named ``name`` with these pins lives in."""
    digest = hashlib.sha256(stamp_text(pins).encode()).hexdigest()[:12]
    return (root or venvs_dir()) / f"{name}-{digest}"


def is_built(path: Path, pins: Sequence[str]) -> bool:
    stamp = path / STAMP
    return stamp.is_file() and stamp.read_text() == stamp_text(pins)


def ensure_venv(name: str, pins: Sequence[str], *, root: Path | None = None,
                builder: Builder | None = None) -> Venv:
    """Return the venv for ``name`` with ``pins``, building it first if needed."""
    pins = tuple(pins)
    path = venv_path(name, pins, root)
    if is_built(path, pins):
        return Venv(path, pins)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_built(path, pins):   # another process may have built it meanwhile
            if path.exists():
                shutil.rmtree(path)
            try:
                (builder or pip_builder)(path, pins)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
            (path / STAMP).write_text(stamp_text(pins))
    return Venv(path, pins)


def run_logged(cmd: Sequence[str], log: Path, env: dict | None = None) -> None:
    """Run ``cmd`` with its output appended to ``log``; raise VenvBuildError on failure."""
    with open(log, "a") as out:
        out.write(f"$ {' '.join(map(str, cmd))}\n")
        out.flush()
        rc = subprocess.run(list(map(str, cmd)), stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env).returncode
    if rc != 0:
        lines = [ln for ln in log.read_text().splitlines() if not ln.startswith(_NOISE)]
        tail = "\n".join(lines[-15:])
        raise VenvBuildError(f"{' '.join(map(str, cmd))} exited {rc}; last lines:\n{tail}")


def pip_builder(path: Path, pins: Sequence[str]) -> None:
    """Build a venv at ``path`` with ``python -m venv`` and ``pip install PINS``.

    The log of the build is kept at ``<path>.log`` (beside the venv, so it survives a failed
    build that removes the folder).
    """
    log = path.with_name(path.name + ".log")
    log.write_text("")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    run_logged([sys.executable, "-m", "venv", path], log, env)
    run_logged([path / "bin" / "python", "-m", "pip", "install", "--progress-bar", "off", *pins],
               log, env)
