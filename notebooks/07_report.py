# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     notebook_metadata_filter: kernelspec
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
# 07 · Report. Parameters: KRMLX_SMOKE=1 runs everything small (tiny model).
import os
from pathlib import Path

SMOKE = os.environ.get("KRMLX_SMOKE") == "1"
MODEL = "tiny" if SMOKE else "mini"
RUNS = Path(os.environ.get("KRMLX_RUNS", "../runs"))  # results files to report on
OUT = RUNS / "report"

# %% [markdown]
# # Report
#
# Load any results files (every notebook and `python -m krmlx bench` writes them under
# `runs/`), and export one offline HTML report (tables, plots, environment, the reference's
# estimates beside the measurements), a Markdown twin and CSVs. Same as
# `python -m krmlx report runs/ --out runs/report`.

# %%
from krmlx.report import build_report, load_results, run, setup_notebook

setup_notebook()
docs = load_results(RUNS) if RUNS.is_dir() else []
[(d["_source"], d["config"].get("workload")) for d in docs]

# %% [markdown]
# Nothing to report yet? Then run a small baseline first (direct vs the served stack).

# %%
if not docs:
    await run("baseline", MODEL, smoke=True, runs=RUNS, max_tokens=16)
    docs = load_results(RUNS)
len(docs)

# %%
written = build_report(docs, OUT)
{k: v if not isinstance(v, list) else f"{len(v)} files" for k, v in written.items()}

# %% [markdown]
# All measurements against the published estimates, as in the report:

# %%
from krmlx.report import export, plots

rows = [r for d in docs for r in export.measured_rows(d)]
tables = export.estimate_tables(rows)
plots.estimates_vs_measured(tables, measured_only=True) if tables else "no results file carries reference measurements yet"

# %% [markdown]
# The reference analysis's own arithmetic that does not add up:

# %%
export.inconsistencies()
