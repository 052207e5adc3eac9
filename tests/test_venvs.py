"""Cached venvs (fake builder, no network) and the peer table's pure parts and process handling."""

import os
import sys
import urllib.request

import pytest

from krmlx.bench import peers, venvs
from krmlx.errors import KrmlxError

PINS = ("pkg-a==1.0", "pkg-b==2.0")


class FakeBuilder:
    """Makes a folder with a bin/python file; can be told to fail half way."""

    def __init__(self, fail: bool = False):
        self.calls, self.fail = 0, fail

    def __call__(self, path, pins):
        self.calls += 1
        (path / "bin").mkdir(parents=True)
        (path / "bin" / "python").write_text("#!/bin/sh\n")
        if self.fail:
            raise venvs.VenvBuildError("pip exited 1; last lines:\nERROR: no such package")


def test_builds_once_then_reuses(tmp_path):
    build = FakeBuilder()
    a = venvs.ensure_venv("peer", PINS, root=tmp_path, builder=build)
    b = venvs.ensure_venv("peer", PINS, root=tmp_path, builder=build)
    assert build.calls == 1 and a == b
    assert a.python == a.root / "bin" / "python" and a.python.is_file()
    assert a.script("serve") == a.root / "bin" / "serve"
    assert venvs.is_built(a.root, PINS)


def test_other_pins_get_another_folder(tmp_path):
    build = FakeBuilder()
    a = venvs.ensure_venv("peer", PINS, root=tmp_path, builder=build)
    b = venvs.ensure_venv("peer", ("pkg-a==1.1",), root=tmp_path, builder=build)
    assert a.root != b.root and build.calls == 2
    assert a.root.name.startswith("peer-") and a.root.parent == tmp_path


def test_half_built_folder_is_removed_and_rebuilt(tmp_path):
    path = venvs.venv_path("peer", PINS, tmp_path)
    (path / "lib").mkdir(parents=True)
    (path / "lib" / "leftover").write_text("from a build that died")
    build = FakeBuilder()
    v = venvs.ensure_venv("peer", PINS, root=tmp_path, builder=build)
    assert build.calls == 1 and not (v.root / "lib" / "leftover").exists()
    assert venvs.is_built(v.root, PINS)


def test_stamp_with_other_content_means_rebuild(tmp_path):
    build = FakeBuilder()
    v = venvs.ensure_venv("peer", PINS, root=tmp_path, builder=build)
    (v.root / venvs.STAMP).write_text("something else\n")
    venvs.ensure_venv("peer", PINS, root=tmp_path, builder=build)
    assert build.calls == 2


def test_failed_build_leaves_nothing_and_next_call_retries(tmp_path):
    with pytest.raises(venvs.VenvBuildError, match="no such package"):
        venvs.ensure_venv("peer", PINS, root=tmp_path, builder=FakeBuilder(fail=True))
    assert not venvs.venv_path("peer", PINS, tmp_path).exists()
    build = FakeBuilder()
    venvs.ensure_venv("peer", PINS, root=tmp_path, builder=build)
    assert build.calls == 1


def test_venvs_live_under_the_krmlx_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KRMLX_CACHE", str(tmp_path))
    assert venvs.venvs_dir() == tmp_path / "venvs"


def test_peer_command_and_cmd_target():
    rapid = peers.get_peer("rapid-mlx")
    venv = venvs.Venv(venvs.venv_path(rapid.name, rapid.pins), rapid.pins)
    argv = peers.peer_argv(rapid, venv, "/m/tiny", 8123)
    assert argv[0] == str(venv.bin / "rapid-mlx") and "/m/tiny" in argv and "8123" in argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    target = peers.cmd_target(rapid, venv)
    assert target.startswith("cmd:env ") and "RAPID_MLX_TELEMETRY=0" in target
    assert " {model} " in target and target.endswith("--port {port} --yes "
                                                    "--disable-model-downloads --no-preflight")
    own = peers.get_peer("mlx_lm.server")
    assert peers.peer_argv(own, peers.peer_venv(own), "m", 1)[0] == sys.executable
    assert peers.peer_model_id(own, ".") == os.getcwd()


def test_unknown_and_unavailable_peers_say_why():
    with pytest.raises(KrmlxError, match="known: mlx_lm.server"):
        peers.get_peer("nope")
    with pytest.raises(KrmlxError, match="mflux"):
        peers.peer_venv(peers.get_peer("mlx-openai-server"))


def _fake(argv, health="/"):
    return peers.Peer("fake", (), argv, health=health)


def test_serving_starts_checks_health_and_reaps(tmp_path):
    fake = _fake(("{python}", "-m", "http.server", "{port}", "--bind", "127.0.0.1"))
    with peers.serving(fake, tmp_path, log_dir=tmp_path) as srv:
        with urllib.request.urlopen(srv.base_url.removesuffix("/v1") + "/", timeout=5) as r:
            assert r.status == 200
        pid = srv.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_server_that_exits_raises_with_its_output(tmp_path):
    fake = _fake(("{python}", "-c", "import sys; print('bad flag --port {port}'); sys.exit(3)"))
    with pytest.raises(KrmlxError, match=r"fake exited with code 3(.|\n)*bad flag"):
        with peers.serving(fake, tmp_path, log_dir=tmp_path, timeout_s=30):
            pass


def test_serving_removes_the_log_folder_it_made(tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    fake = _fake(("{python}", "-m", "http.server", "{port}", "--bind", "127.0.0.1"))
    with peers.serving(fake, tmp_path) as srv:
        assert srv.log.is_file() and srv.log.parent.parent == scratch
    assert not list(scratch.iterdir())
    with pytest.raises(KrmlxError, match="fake exited with code 3"):  # on failure too
        with peers.serving(_fake(("{python}", "-c", "import sys; sys.exit(3)")), tmp_path,
                           timeout_s=30):
            pass
    assert not list(scratch.iterdir())
