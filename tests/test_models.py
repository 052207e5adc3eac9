import json

import pytest

from krmlx import models
from krmlx.errors import ModelError, UnknownModel


def test_parse_names():
    assert models.parse_name("tiny") == models.ModelSpec("tiny")
    assert models.parse_name("small-q4@3") == models.ModelSpec("small", True, 3)
    assert models.parse_name("llama-3.2-3b-q4") == models.ModelSpec("llama-3.2-3b", True, 0)
    assert models.parse_name("nope") is None
    assert models.parse_name("tiny@x") is None


def test_tiny_is_a_real_mlx_lm_folder(tiny_path):
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (tiny_path / f).is_file(), f
    cfg = json.loads((tiny_path / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    assert "chat_template" in json.loads((tiny_path / "tokenizer_config.json").read_text())
    model, tok = models.load(tiny_path)  # mlx_lm.load, the real loader
    n = sum(v.size for _, v in __import__("mlx.utils").utils.tree_flatten(model.parameters()))
    assert 1e6 < n < 5e6, n


def test_seeds_give_distinct_models_and_rebuild_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("KRMLX_CACHE", str(tmp_path))
    a, b = models.make_model("tiny@1"), models.make_model("tiny@2")
    assert a != b and (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes()
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    assert models.make_model("tiny@1") == a and (a / "model.safetensors").stat().st_mtime_ns == mtime
    same = models.make_model("tiny@1", rebuild=True)
    assert (same / "model.safetensors").read_bytes() == (a / "model.safetensors").read_bytes()  # seeded


def test_quantized_variant_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("KRMLX_CACHE", str(tmp_path))
    path = models.make_model("tiny-q4")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["quantization"]["bits"] == 4
    assert models.model_bytes(path) < models.model_bytes(models.make_model("tiny")) / 3
    models.load(path)


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("KRMLX_CACHE", str(tmp_path))

    def boom(spec, dest):
        dest.mkdir(parents=True)
        (dest / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "build_model", boom)
    with pytest.raises(RuntimeError):
        models.make_model("tiny@9")
    assert list((tmp_path / "models").iterdir()) == []


def test_bad_names_and_folders(tmp_path):
    with pytest.raises(UnknownModel, match="unknown model preset 'huge'|presets"):
        models.make_model("huge")
    with pytest.raises(UnknownModel, match="not a preset"):
        models.resolve_model("no such thing")
    with pytest.raises(ModelError, match="does not exist"):
        models.resolve_model(str(tmp_path / "missing"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        models.resolve_model(str(tmp_path / "broken"))
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no .*safetensors"):
        models.resolve_model(str(tmp_path / "noweights"))


def test_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownModel, match="unreachable|local folder"):
        models.resolve_model("someone/some-model")


def test_corrupt_weights_give_model_error(tmp_path, tiny_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_path, bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelError, match="could not load"):
        models.load(bad)
