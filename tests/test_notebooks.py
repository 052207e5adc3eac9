"""Every notebook in notebooks/ runs top to bottom in smoke mode, and each .ipynb is in sync
with its .py (the source of truth).

The kernel is this interpreter: a kernelspec written into a temporary JUPYTER_PATH with
``ipykernel.kernelspec.write_kernel_spec`` (argv = sys.executable -m ipykernel_launcher),
so a fresh ``pip install -e .[dev]`` needs no ``ipykernel install`` and no user config.
The kernel gets ``KRMLX_SMOKE=1`` and a temporary ``KRMLX_RUNS`` shared by all notebooks
(07 reports on what 01-06 wrote). Notebooks run in file-name order; the last test fails
when the executed set differs from the notebooks on disk, so none can be skipped.
``KRMLX_NOTEBOOK_OUT=DIR`` keeps the executed notebooks (with outputs) there.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.py"))
EXPECTED = {"00_quickstart", "01_baseline", "02_batching", "03_model_cache", "04_retry_breaker",
            "05_stream_framing", "06_combined", "07_report", "08_beyond_the_seed", "09_distributed",
            "10_serve"}
KERNEL = "krmlx-test"
CELL_TIMEOUT_S = 300
EXECUTED: dict[str, float] = {}  # notebook name -> seconds, for those that ran without error


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernelspec for this interpreter, with the smoke environment, on JUPYTER_PATH."""
    from ipykernel.kernelspec import write_kernel_spec

    root = tmp_path_factory.mktemp("jupyter")
    runs = tmp_path_factory.mktemp("runs")
    env = {"KRMLX_SMOKE": "1", "KRMLX_RUNS": str(runs), "HF_HUB_OFFLINE": "1"}
    write_kernel_spec(root / "kernels" / KERNEL,
                      overrides={"display_name": "krmlx test", "env": env, "argv": [
                          sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.pathsep.join([str(root), os.environ.get("JUPYTER_PATH", "")]))
        mp.setenv("KRMLX_SMOKE", "1")
        yield {"name": KERNEL, "runs": runs}


def test_the_notebooks_are_all_there():
    assert {p.stem for p in NOTEBOOKS} == EXPECTED
    assert {p.stem for p in NB_DIR.glob("*.ipynb")} == EXPECTED, "run: jupytext --sync notebooks/*.py"


def _cells(nb) -> list[tuple]:
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ()))) for c in nb.cells]


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_ipynb_in_sync_with_py(py):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: jupytext --sync {py}"
    assert _cells(jupytext.read(py)) == _cells(nbformat.read(ipynb, as_version=4)), \
        f"{ipynb.name} is out of date: jupytext --sync {py}"


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_starts_with_parameters_cell(py):
    first = jupytext.read(py).cells[0]
    assert first.cell_type == "code" and "parameters" in first.metadata.get("tags", [])
    assert 'os.environ.get("KRMLX_SMOKE") == "1"' in first.source


@pytest.mark.slow
@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(py, kernel):
    from nbclient import NotebookClient

    nb = jupytext.read(py)
    client = NotebookClient(nb, kernel_name=kernel["name"], timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(NB_DIR)}})
    t0 = time.perf_counter()
    try:
        client.execute()  # raises CellExecutionError naming the cell and the traceback
    finally:
        if os.environ.get("KRMLX_NOTEBOOK_OUT"):  # keep the executed notebooks to look at
            out = Path(os.environ["KRMLX_NOTEBOOK_OUT"])
            out.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out / f"{py.stem}.ipynb")
    EXECUTED[py.stem] = time.perf_counter() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.slow
def test_every_notebook_was_executed(kernel):
    """Runs after the notebooks: none may be skipped or have failed."""
    on_disk = {p.stem for p in NOTEBOOKS}
    assert set(EXECUTED) == on_disk, f"not executed (or failed): {sorted(on_disk - set(EXECUTED))}"
    total = sum(EXECUTED.values())
    print(f"\nnotebooks: {len(EXECUTED)} in {total:.0f} s: "
          + ", ".join(f"{k} {v:.0f}s" for k, v in sorted(EXECUTED.items())))
