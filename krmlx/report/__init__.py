"""The Jupyter-first face of krmlx: plots, reports and a widget panel over results documents.

- :mod:`krmlx.report.plots`    functions that return matplotlib Figures
- :mod:`krmlx.report.export`   :func:`build_report`: offline HTML + Markdown + CSV
- :mod:`krmlx.report.widgets`  :class:`Panel`: phase switches, settings, run, live progress

Importing this package does not import mlx, so :func:`setup_notebook` can still choose
the BLAS the notebook's own process (the direct baseline) will use.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

__all__ = ["build_report", "load_results", "run", "save_results", "setup_notebook", "smoke_mode"]


def smoke_mode() -> bool:
    """True when ``KRMLX_SMOKE=1``: notebooks run small (tiny model, few requests)."""
    return os.environ.get("KRMLX_SMOKE") == "1"


def use_fast_blas_in_process() -> str | None:
    """Load OpenBLAS with global symbol scope before mlx is imported, so in-process
    model code (the DirectEngine baseline) runs on the same BLAS as the worker, which
    gets it through ``LD_PRELOAD`` (:func:`krmlx.blas.blas_env`). Returns the library
    loaded, or None (none found, ``KRMLX_BLAS=reference``, or mlx already imported).
    Sets ``LD_PRELOAD`` as :func:`krmlx.blas.blas_env` would, so this process reads as
    preloaded and its children run on the same library."""
    from ..blas import blas_env

    if sys.platform != "linux" or "mlx.core" in sys.modules:
        return None
    wanted = [p for p in blas_env().get("LD_PRELOAD", "").split(":") if "openblas" in p]
    if not wanted:
        return None
    ctypes.CDLL(wanted[0], mode=ctypes.RTLD_GLOBAL)
    # Say so the way a preloaded process would, for checks that read the environment
    # (running_on_preferred_blas); child processes inherit the preload as blas_env() gives it.
    os.environ["LD_PRELOAD"] = blas_env()["LD_PRELOAD"]
    return wanted[0]


def setup_notebook(*, offline: bool = True) -> dict:
    """First call of every krmlx notebook: fast BLAS in this process (see
    :func:`use_fast_blas_in_process`), offline model hub, inline PNG figures.
    Returns what it did (and a ``blas_warning`` when mlx ended up on the slow BLAS)."""
    if offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    done = {"preloaded_blas": use_fast_blas_in_process()}
    try:
        ip = get_ipython()  # type: ignore[name-defined]  # noqa: F821 - defined inside IPython
        ip.run_line_magic("matplotlib", "inline")
    except NameError:
        pass
    from ..blas import detect_blas, slow_blas_warning

    info = detect_blas()
    done.update({"blas": info.kind, "blas_warning": slow_blas_warning(info)})
    return done


def load_results(paths) -> list[dict]:
    """Results documents from files and folders (a folder gives its ``*.json``, newest
    last); each doc gets ``_source`` (its path) for the report."""
    from ..bench.results import read_results

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        found = [*p.glob("*.json"), *p.glob("*.json.gz")] if p.is_dir() else []
        files += sorted(found, key=lambda f: f.stat().st_mtime) if p.is_dir() else [p]
    docs = []
    for f in files:
        doc = read_results(f)
        doc["_source"] = str(f)
        docs.append(doc)
    return docs


def save_results(doc: dict, out_dir, name: str | None = None) -> Path:
    """Write ``doc`` as ``out_dir/NAME-YYYYmmdd-HHMMSS.json`` (NAME: its workload) and
    return the path. A top-level ``estimates`` list is kept, under ``summary``."""
    import time

    from ..bench.results import write_results

    summary = dict(doc.get("summary") or {})
    if doc.get("estimates") is not None and len(doc["estimates"]) and "estimates" not in summary:
        summary["estimates"] = doc["estimates"]
    name = name or doc.get("config", {}).get("workload", "results")
    path = Path(out_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    n = 2
    while path.exists():
        path, n = path.with_name(f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{n}.json"), n + 1
    return write_results(path, env=doc["env"], config=doc["config"], records=doc["records"],
                         summary=summary, complete=doc.get("complete", True))


async def run(workload: str, model: str, *, runs=None, progress: bool = True, **options) -> dict:
    """Run ``workload`` on ``model`` with a progress bar and, when ``runs`` is given, write
    its results file there (path in ``doc["_source"]``). ``options``: configs or phases,
    smoke, trials and the workload's own parameters (see
    :func:`krmlx.report.widgets.run_workload`)."""
    from tqdm.auto import tqdm

    from .widgets import run_workload

    # smoothing=0: the rate is count / elapsed. The default moving average only takes in
    # updates at least 0.1 s apart, so a run whose records land in a burst after seconds of
    # engine start-up would show the start-up's rate ("4.44s/req" for 300 requests in 5 s).
    with tqdm(desc=f"{workload} on {model}", unit="req", disable=not progress, smoothing=0) as bar:
        doc = await run_workload(workload, model, progress=bar, **options)
    if runs is not None:
        doc["_source"] = str(save_results(doc, runs))
    return doc


def build_report(paths_or_docs, out_dir, **kwargs) -> dict:
    """See :func:`krmlx.report.export.build_report`."""
    from .export import build_report as _build

    return _build(paths_or_docs, out_dir, **kwargs)
