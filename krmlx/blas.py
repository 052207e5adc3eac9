"""Which BLAS mlx runs on, and the environment that makes it a fast one.

The Linux ``mlx[cpu]`` wheel bundles the reference (netlib) BLAS, whose matmul is
~34x slower than OpenBLAS. mlx calls the standard ``cblas_*`` symbols, so preloading
an OpenBLAS that exports them (``LD_PRELOAD``) makes mlx use it with no other change.

- :func:`detect_blas` says which library ``cblas_sgemm`` resolves to in *this* process.
- :func:`find_openblas` looks for an OpenBLAS on the machine.
- :func:`blas_env` returns an environment for a child process (the worker, or the CLI
  re-executing itself) that runs on OpenBLAS when one exists. ``KRMLX_BLAS=reference``
  opts out, so the two can be compared.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
from dataclasses import asdict, dataclass

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/local/lib/libopenblas.so.0",
)
ENV_CHOICE = "KRMLX_BLAS"  # "auto" (default), "openblas", or "reference"


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


@dataclass(frozen=True)
class BlasInfo:
    """What a results file records about BLAS."""

    kind: str  # "openblas", "reference", "accelerate" (macOS), "gpu", or "unknown"
    library: str | None  # path of the library cblas_sgemm resolves to
    openblas_available: str | None  # an OpenBLAS found on the machine, if any
    threads: int | None = None  # the BLAS's thread pool in this process (OpenBLAS), if known

    def to_dict(self) -> dict:
        return asdict(self)


def find_openblas() -> str | None:
    """Path of an OpenBLAS shared library with standard cblas symbols, or None."""
    for path in OPENBLAS_CANDIDATES:
        if os.path.exists(path) and _exports_cblas(path):
            return path
    for path in sorted(glob.glob("/usr/lib/*/openblas*/libopenblas*.so*")):
        if _exports_cblas(path):
            return path
    found = ctypes.util.find_library("openblas")
    return found if found and _exports_cblas(found) else None


def _exports_cblas(path: str) -> bool:
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
    except OSError:
        return False
    return hasattr(lib, "cblas_sgemm")


def _resolved_library(symbol: str) -> str | None:
    """The file that a global lookup of ``symbol`` resolves to in this process."""
    libc = ctypes.CDLL(None)
    try:
        func = getattr(libc, symbol)
    except AttributeError:
        return None
    info = _DlInfo()
    dladdr = libc.dladdr
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    if not dladdr(ctypes.cast(func, ctypes.c_void_p), ctypes.byref(info)):
        return None
    return os.path.realpath(info.dli_fname.decode()) if info.dli_fname else None


def _mapped_blas() -> str | None:
    """The BLAS mapped into this process that mlx's own library links: the one in mlx's
    wheel (``mlx_cpu.libs``). Other BLASes may be mapped too without mlx using them:
    numpy's private OpenBLAS, or the OpenBLAS that :func:`find_openblas` opened
    (``RTLD_LOCAL``) to look for its symbols; they count only when mlx's is not mapped."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if ".so" in line}
    except OSError:
        return None
    blas = sorted(p for p in paths if "blas" in os.path.basename(p).lower())
    mlx_own = [p for p in blas if "mlx" in os.path.basename(os.path.dirname(p)).lower()]
    return (mlx_own or blas or [None])[0]


def classify(library: str | None) -> str:
    if library is None:
        return "unknown"
    name = os.path.basename(library).lower()
    if "openblas" in name:
        return "openblas"
    if "accelerate" in library.lower():
        return "accelerate"
    if name.startswith("libblas"):
        return "reference"
    return "unknown"


def detect_blas() -> BlasInfo:
    """Which BLAS mlx uses in this process (imports mlx so its libraries are loaded)."""
    import mlx.core as mx

    if sys.platform == "darwin":
        return BlasInfo("accelerate", None, None)
    if mx.default_device() == mx.gpu:
        return BlasInfo("gpu", None, find_openblas())
    # A preloaded library wins the global lookup; the wheel's bundled BLAS is loaded
    # privately (RTLD_LOCAL), so when the lookup finds nothing, the mapped files tell.
    library = _resolved_library("cblas_sgemm") or _mapped_blas()
    kind = classify(library)
    return BlasInfo(kind, library, find_openblas(), openblas_threads() if kind == "openblas" else 1)


def openblas_threads() -> int | None:
    """The size of this process's OpenBLAS thread pool (``openblas_get_num_threads``)."""
    try:
        get = ctypes.CDLL(None).openblas_get_num_threads
    except AttributeError:
        return None
    get.restype = ctypes.c_int
    return int(get())


def blas_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default: os.environ) under which child processes use OpenBLAS.

    Unchanged when none is found, on macOS, or when ``KRMLX_BLAS=reference``.
    """
    env = dict(os.environ if base is None else base)
    choice = env.get(ENV_CHOICE, "auto")
    if choice not in ("auto", "openblas", "reference"):
        raise ValueError(f"{ENV_CHOICE} must be auto, openblas or reference, not {choice!r}")
    if sys.platform != "linux" or choice == "reference":
        return env
    path = find_openblas()
    if path is None:
        if choice == "openblas":
            raise RuntimeError(
                f"{ENV_CHOICE}=openblas but no OpenBLAS was found; install it "
                "(Debian/Ubuntu: apt-get install libopenblas0-pthread)"
            )
        return env
    preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p]
    if path not in preload:
        env["LD_PRELOAD"] = ":".join([path, *preload])
    return env


REEXEC_FLAG = "KRMLX_REEXECED"


def reexec_under_blas(args: list[str]) -> None:
    """Re-execute this Python (``sys.executable`` with ``args``) under :func:`blas_env`
    when this process runs on another BLAS; once only (``KRMLX_REEXECED``), so a preload
    that does not take can't loop. Call it before mlx is imported."""
    if os.environ.get(REEXEC_FLAG):
        return
    env = blas_env()
    if env.get("LD_PRELOAD", "") != os.environ.get("LD_PRELOAD", ""):
        env[REEXEC_FLAG] = "1"
        os.execve(sys.executable, [sys.executable, *args], env)


def running_on_preferred_blas() -> bool:
    """True when this process already runs with the BLAS that blas_env() would choose."""
    wanted = blas_env().get("LD_PRELOAD", "")
    return wanted == os.environ.get("LD_PRELOAD", "")


def slow_blas_warning(info: BlasInfo) -> str | None:
    if info.kind == "reference":
        hint = (
            f"OpenBLAS is available at {info.openblas_available} but not in use"
            if info.openblas_available
            else "install OpenBLAS (Debian/Ubuntu: apt-get install libopenblas0-pthread)"
        )
        return f"mlx is using the slow reference BLAS ({info.library}); {hint}."
    return None
