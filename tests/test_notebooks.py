"""Every notebook in notebooks/ runs top to bottom in smoke mode; the .py (jupytext percent
format) are the only notebook files git tracks.

The kernel is this interpreter: a kernelspec written into a temporary JUPYTER_PATH with
``ipykernel.kernelspec.write_kernel_spec`` (argv = sys.executable -m ipykernel_launcher),
so a fresh ``pip install -e .[dev]`` needs no ``ipykernel install`` and no user config.
The kernel gets ``KRMLX_SMOKE=1`` and a temporary ``KRMLX_RUNS`` shared by all notebooks
(07 reports on what 01-06 wrote). Notebooks run in file-name order; the last test fails
when the executed set differs from the notebooks on disk, so none can be skipped.
``KRMLX_NOTEBOOK_OUT=DIR`` keeps the executed notebooks (with outputs) there.

Outputs: notebooks/jupytext.toml pairs each .py with an .ipynb that Jupyter writes on save,
outputs included; the .ipynb are git-ignored, and saving leaves the .py as it was (checked
here through jupytext's contents manager, and in a real browser in tests/test_lab.py).
The README's export command, ``jupytext --to ipynb --execute``, is run on one notebook with
the environment's own ``python3`` kernel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.py"))
EXPECTED = {"00_quickstart", "01_baseline", "02_batching", "03_model_cache", "04_retry_breaker",
            "05_stream_framing", "06_combined", "07_report", "08_beyond_the_reference", "09_distributed",
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


def git(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=NB_DIR.parent, capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("git") is None or git("rev-parse").returncode != 0,
                    reason="not a git checkout")
def test_only_the_py_are_tracked_and_the_ipynb_ignored():
    tracked = git("ls-files", "notebooks").stdout.split()
    assert {Path(t).name for t in tracked if t.endswith(".py")} == {f"{n}.py" for n in EXPECTED}
    assert not [t for t in tracked if t.endswith(".ipynb")], "the .ipynb are generated: git rm them"
    ignored = git("check-ignore", *(f"notebooks/{n}.ipynb" for n in sorted(EXPECTED))).stdout.split()
    assert len(ignored) == len(EXPECTED), "the paired .ipynb must be git-ignored"


def test_saving_in_jupyter_writes_outputs_to_the_ipynb_only(tmp_path):
    """What JupyterLab does on save (jupytext's contents manager, notebooks/jupytext.toml):
    the .py is unchanged, the outputs land in the paired .ipynb."""
    from jupytext import TextFileContentsManager

    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    for name in ("01_baseline.py", "jupytext.toml"):
        shutil.copy(NB_DIR / name, nb_dir / name)
    cm = TextFileContentsManager(root_dir=str(tmp_path))
    model = cm.get("notebooks/01_baseline.py")
    assert model["type"] == "notebook"
    nb = model["content"]
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="an output\n")]
    code.execution_count = 1
    cm.save({"type": "notebook", "content": nb}, "notebooks/01_baseline.py")
    assert (nb_dir / "01_baseline.py").read_bytes() == (NB_DIR / "01_baseline.py").read_bytes()
    saved = nbformat.read(nb_dir / "01_baseline.ipynb", as_version=4)
    assert any(o.get("text") == "an output\n" for c in saved.cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_jupytext_cli_executes_a_notebook(tmp_path):
    """``jupytext --to ipynb --execute`` (the README's export) from this environment: its
    nbconvert and the ``python3`` kernel the notebooks name, with no ``ipykernel install``."""
    py = NB_DIR / "00_quickstart.py"
    out = tmp_path / py.with_suffix(".ipynb").name
    env = {**os.environ, "KRMLX_SMOKE": "1", "KRMLX_RUNS": str(tmp_path / "runs"), "HF_HUB_OFFLINE": "1"}
    jupytext_cli = Path(sys.executable).parent / "jupytext"
    r = subprocess.run([str(jupytext_cli), "--to", "ipynb", "--execute", "--output", str(out), str(py)],
                       env=env, capture_output=True, text=True, timeout=CELL_TIMEOUT_S)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    nb = nbformat.read(out, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "not every cell ran"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]


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
