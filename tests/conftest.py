import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = "tiny"


@pytest.fixture(scope="session")
def tiny_path():
    from krmlx.models import make_model

    return make_model(TINY)


def children_pids() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}


@pytest.fixture(autouse=True, scope="session")
def no_leftover_processes():
    """Fail the session if any worker process outlives the tests."""
    yield
    import psutil

    left = [p for p in psutil.Process().children(recursive=True)
            if "krmlx.worker" in " ".join(p.cmdline() or [])]
    for p in left:
        p.kill()
    assert not left, f"worker processes left behind: {[p.pid for p in left]}"


def run_py(code: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)
