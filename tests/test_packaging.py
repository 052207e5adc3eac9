import re
import tomllib
from pathlib import Path

import yaml

import krmlx

ROOT = Path(__file__).resolve().parent.parent


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_environment_yml_pins_match_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_norm(r) for r in pyproject["dependencies"] + pyproject["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    got = {_norm(r) for r in pip if not r.startswith("-e")}
    assert got == wanted


def test_core_pins_are_exact():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "mlx[cpu]==0.32.4;sys_platform=='linux'" in {_norm(d) for d in deps}
    assert "mlx-lm==0.32.2" in {_norm(d) for d in deps}
    assert all("==" in d for d in deps), "every dependency is pinned exactly"


def test_public_api_is_small_and_sorted():
    assert krmlx.__all__ == sorted(krmlx.__all__)
    assert len(krmlx.__all__) <= 14
    for name in krmlx.__all__:
        assert name in vars(krmlx), name  # exported, not only listed
        assert getattr(vars(krmlx)[name], "__module__", "krmlx").startswith("krmlx"), name


def test_public_api_has_what_a_user_needs_and_no_internals():
    from krmlx import DirectEngine, Engine, Request, StackConfig, WorkerConfig  # noqa: F401
    from krmlx.engine import Engine as engine_module_engine
    from krmlx.stack import StackConfig as stack_module_config

    assert Engine is engine_module_engine and StackConfig is stack_module_config
    user_needs = {"DirectEngine", "Engine", "Request", "StackConfig", "WorkerConfig",
                  "Completion", "Chunk", "KrmlxError"}
    assert user_needs <= set(krmlx.__all__)
    internals = {"Call", "Service", "WorkerClient", "build_stack", "Done", "ChunkStream"}
    assert not internals & set(krmlx.__all__)
    import krmlx.stages as stages

    # every layer a user composes a stack from, beside its stage
    assert {"RetryPolicy", "BreakerPolicy", "ModelCacheConfig", "SingleModelConfig",
            "BatcherConfig", "FramerConfig", "Retry", "CircuitBreaker", "ModelCache",
            "SingleModel", "Batcher", "StreamFramer"} <= set(stages.__all__)


def test_top_level_layout():
    for d in ("krmlx", "notebooks", "data", "tests"):
        assert (ROOT / d).is_dir(), d
    assert (ROOT / "environment.yml").is_file()
    assert (ROOT / ".ci" / "run").is_file()
    readme = (ROOT / "README.md").read_text()
    assert "./dev demo" in readme and "./dev test" in readme and "./dev lab" in readme
    assert "./dev test" in (ROOT / ".ci" / "run").read_text()


def test_notebook_tools_are_pinned():
    """JupyterLab and nbconvert (``./dev lab``, ``jupytext --execute``) for everyone,
    Playwright (the browser test) for development."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_norm(d).split("==")[0] for d in project["dependencies"]}
    assert {"jupyterlab", "nbconvert", "jupytext", "ipykernel", "ipywidgets"} <= names
    assert "playwright" in {_norm(d).split("==")[0] for d in project["optional-dependencies"]["dev"]}
    assert (ROOT / "jupyter" / "labconfig" / "default_setting_overrides.json").is_file()
