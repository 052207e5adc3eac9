"""The environment a measurement depends on: what ``krmlx doctor`` prints and every
results file records under ``env``."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from .blas import detect_blas, slow_blas_warning
from .hygiene import LoadMeter


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_sha() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return (sha + ("-dirty" if dirty else "")) if out.returncode == 0 else None


def foreign_cpu_load(interval_s: float = 0.2) -> float:
    """CPU use (in cores) by processes other than this one and its children."""
    with LoadMeter() as meter:
        time.sleep(interval_s)
    return meter.cores


def memory_bandwidth_gbs(n_floats: int = 1 << 26, reps: int = 5) -> float:
    """The device's memory bandwidth as a decode step can use it (GB/s): the best of
    ``reps`` runs of the faster of two kernels over ``n_floats`` float32s, an elementwise
    one (one read and one write) and a matrix-vector product (one read of the matrix, as a
    decode step reads its weights; on a CPU it runs on the BLAS's threads, where an
    elementwise kernel runs on one). A decode step streams every weight once, so
    ``weight bytes / this`` is the floor under a step."""
    import mlx.core as mx

    a = mx.ones((n_floats,), dtype=mx.float32)
    side = int(n_floats ** 0.5)
    w, x = a[: side * side].reshape(side, side), mx.ones((side,), dtype=mx.float32)
    mx.eval(a, w, x)
    best = 0.0
    for nbytes, op in ((2 * 4 * n_floats, lambda: a * 1.0001), (4 * side * side, lambda: w @ x)):
        for _ in range(reps):
            t0 = time.perf_counter()
            mx.eval(op())
            best = max(best, nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def oversubscription_warning(cores_usable: int | None, worker_blas_threads: int | None,
                             caller_threads: int = 1) -> str | None:
    """A warning when a worker's BLAS threads plus the caller's own busy threads (its event
    loop reads every frame while the worker computes) need more cores than this process may
    use; None when they fit or a count is unknown."""
    if not cores_usable or not worker_blas_threads:
        return None
    need = worker_blas_threads + caller_threads
    if need <= cores_usable:
        return None
    return (f"oversubscribed: the worker's {worker_blas_threads} BLAS threads and the caller's "
            f"{caller_threads} busy thread(s) want {need} cores, {cores_usable} usable: the two "
            "processes compete (prefill-heavy prompts suffer most); set OPENBLAS_NUM_THREADS "
            "for the worker to trade its matmul speed for the caller's latency")


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; else the platform's word for it)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect_env(*, load_interval_s: float = 0.2) -> dict:
    import mlx.core as mx
    import psutil

    blas = detect_blas()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "mlx": _version("mlx"),
        "mlx_lm": _version("mlx-lm"),
        "krmlx": _version("krmlx"),
        "device": str(mx.default_device()),
        "blas": blas.to_dict(),
        "blas_warning": slow_blas_warning(blas),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "caller_blas_threads": blas.threads,
        # a worker spawned from here inherits this environment, so it gets the same count
        "oversubscription_warning": oversubscription_warning(usable, blas.threads),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "foreign_cpu_load_cores": round(foreign_cpu_load(load_interval_s), 2),
        "git_sha": git_sha(),
        "argv": sys.argv[:],
    }


def format_env(env: dict) -> str:
    blas = env["blas"]
    lines = [
        f"python      {env['python']} ({env['machine']}, {env.get('cpu_model', '?')})",
        f"mlx         {env['mlx']}   mlx-lm {env['mlx_lm']}   krmlx {env['krmlx']}",
        f"device      {env['device']}",
        f"blas        {blas['kind']} ({blas['library']})",
        f"openblas    {blas['openblas_available'] or 'not found'}",
        f"cores       {env['cores']} ({env.get('cores_usable')} usable)   memory {env['memory_gib']} GiB",
        f"threads     BLAS {env.get('caller_blas_threads')} in this process; a worker spawned "
        "from here gets the same",
        f"cpu load    {env['foreign_cpu_load_cores']} cores used by other processes",
        f"git         {env['git_sha']}",
    ]
    for key in ("blas_warning", "oversubscription_warning"):
        if env.get(key):
            lines.append(f"WARNING     {env[key]}")
    return "\n".join(lines)
