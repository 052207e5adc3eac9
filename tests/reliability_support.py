"""Shared helpers of the test_reliability_* files (not a test module).

- :func:`load_soak`: the soak harness of ``benchmarks/soak.py`` (the CI tests run it small);
- :class:`RawWorker`: a worker spawned with ``subprocess`` so a test controls the raw
  bytes on its stdin (fuzzing, oversized frames), with a reader thread that drains
  stdout into decoded frames;
- process helpers: the worker processes among this process's children, zombies.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from krmlx.blas import blas_env
from krmlx.errors import ProtocolError
from krmlx.worker.config import WorkerConfig
from krmlx.worker.protocol import call_frame, make_codec

ROOT = Path(__file__).resolve().parents[1]


def run(coro):
    return asyncio.run(coro)


async def ttft_ms(engine, request) -> float:
    """Milliseconds from asking ``engine`` for ``request``'s stream to its first chunk (the
    stream is closed after it)."""
    stream = engine.stream(request)
    t0 = time.perf_counter()
    await stream.__anext__()
    ms = (time.perf_counter() - t0) * 1e3
    await stream.aclose()
    return ms


def load_soak():
    """benchmarks/soak.py as a module (it is a script, not part of the package)."""
    name = "krmlx_bench_soak"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "soak.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


def worker_children() -> list[psutil.Process]:
    """This process's descendants that are krmlx workers (zombies included)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "krmlx.worker" in " ".join(p.cmdline() or []) or p.status() == psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def zombie_children() -> list[int]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.Error:
            pass
    return out


def pid_gone(pid: int) -> bool:
    """True when ``pid`` no longer names a live process (gone, or at most a zombie that is
    not ours: a reaped pid can only be a zombie if another process's child reused it)."""
    try:
        p = psutil.Process(pid)
        return p.status() == psutil.STATUS_ZOMBIE and p.ppid() != os.getpid()
    except psutil.NoSuchProcess:
        return True


class RawWorker:
    """``python -m krmlx.worker`` on pipes this test writes raw bytes to.

    A reader thread drains stdout continuously (a worker whose stdout pipe fills would
    block in write and stop reading stdin: the test would deadlock itself) and decodes it
    with the worker's codec; frames are kept in arrival order.
    """

    def __init__(self, codec: str = "json", *, max_frame_bytes: int | None = None,
                 extra_args: tuple[str, ...] = ()):
        # no heartbeats: every frame on stdout answers a frame this test wrote
        args = WorkerConfig(codec=codec, max_frame_bytes=max_frame_bytes,
                            liveness_timeout_s=None).argv(sys.executable)
        env = blas_env()
        env.setdefault("HF_HUB_OFFLINE", "1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_package_root()), env.get("PYTHONPATH")) if p)
        self.codec_name = codec
        self.encoder = make_codec(codec)
        self._decoder = make_codec(codec)  # the worker never sends over its limit
        self.proc = subprocess.Popen([*args, *extra_args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self.pid = self.proc.pid
        self.frames: list[dict] = []
        self.bad_output: list[ProtocolError] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ready = self.wait_for(lambda f: f["kind"] == "ready", 120)

    def _read(self) -> None:
        fd = self.proc.stdout.fileno()
        while True:
            data = os.read(fd, 1 << 16)
            if not data:
                break
            items = self._decoder.feed(data)
            with self._cond:
                for item in items:
                    (self.bad_output if isinstance(item, ProtocolError) else self.frames).append(item)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    # -- writing -------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, frame) -> None:
        self.write(self.encoder.encode(frame))

    def call(self, fid: int, method: str, params: dict | None = None, model: str | None = None) -> None:
        self.send(call_frame(fid, method, params, model))

    # -- reading -------------------------------------------------------------------------
    def wait_for(self, pred, timeout: float = 60.0) -> dict:
        """The first frame matching ``pred`` (waiting up to ``timeout`` s for it)."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for f in self.frames[seen:]:
                    if pred(f):
                        return f
                seen = len(self.frames)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise TimeoutError(f"no matching frame within {timeout} s "
                                       f"(worker exit code {self.proc.poll()})")
                self._cond.wait(min(left, 0.5))

    def result(self, fid: int, timeout: float = 60.0) -> dict:
        return self.wait_for(lambda f: f["id"] == fid and f["kind"] in ("result", "error", "done"), timeout)

    def request(self, fid: int, method: str, params: dict | None = None, model: str | None = None,
                timeout: float = 60.0):
        """A unary call: its value, or AssertionError on an error frame."""
        self.call(fid, method, params, model)
        f = self.result(fid, timeout)
        assert f["kind"] == "result", f
        return f["value"]

    def stream_tokens(self, fid: int) -> list[int]:
        with self._cond:
            return [t for f in self.frames if f["id"] == fid and f["kind"] == "token" for t, _ in f["tokens"]]

    def frames_for(self, fid: int) -> list[dict]:
        with self._cond:
            return [f for f in self.frames if f["id"] == fid]

    def snapshot(self) -> list[dict]:
        with self._cond:
            return list(self.frames)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call(2**31 - 1, "shutdown")
                self.proc.stdin.close()
                self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self._reader.join(5)

    def __enter__(self) -> RawWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _package_root() -> Path:
    import krmlx

    return Path(krmlx.__file__).resolve().parent.parent


def make_custom_code_model(folder: Path, tiny: Path, layout: str) -> Path:
    """A copy of tiny that asks for custom code; the code would write a marker. Layouts:
    ``model_file`` (mlx-lm's custom-architecture hook), ``auto_map`` (config and tokenizer
    name classes from the folder's code), ``tokenizer_code`` (only the tokenizer does: the
    model itself loads without it)."""
    shutil.copytree(tiny, folder)
    marker = folder.parent / f"{folder.name}.EXECUTED"
    (folder / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('code from the model folder ran')\n"
        "from mlx_lm.models.llama import Model, ModelArgs  # noqa: F401\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    cfg = json.loads((folder / "config.json").read_text())
    if layout != "tokenizer_code":
        cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.Model",
                           "AutoTokenizer": ["evil.EvilTokenizer", None]}
    if layout == "model_file":  # mlx-lm's own custom-architecture hook
        cfg["model_file"] = "evil.py"
    else:  # the Hugging Face hook: the tokenizer class only exists in the folder's code
        tok = json.loads((folder / "tokenizer_config.json").read_text())
        tok["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
        tok["tokenizer_class"] = "EvilTokenizer"
        (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    (folder / "config.json").write_text(json.dumps(cfg))
    return marker
