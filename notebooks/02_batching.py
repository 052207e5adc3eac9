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
# 02 · Batching. Parameters: KRMLX_SMOKE=1 runs everything small (tiny model).
import os

SMOKE = os.environ.get("KRMLX_SMOKE") == "1"
MODEL = "tiny" if SMOKE else "mini"
TRIALS = 1 if SMOKE else 3
FLOOD = {} if SMOKE else {"requests": 1000, "concurrency": 10}  # smoke: 100 requests
RUNS = os.environ.get("KRMLX_RUNS", "../runs")

# %% [markdown]
# # `batching`: request batching (the reference's Phase 1)
#
# The reference analysis expected 7.5x from batching tokenize calls (1000 calls, batches of 10) and a
# modest gain on generation. `Batcher` groups concurrent `tokenize` calls into one
# `batch_tokenize` message for a short window. `tokenize_flood` sends N tokenize calls with
# C in flight through direct (in-process), phase0 and batching.

# %%
from krmlx.report import export, plots, run, setup_notebook

setup_notebook()

# %%
flood = await run("tokenize_flood", MODEL, smoke=SMOKE, trials=TRIALS, runs=RUNS, **FLOOD)
export.summary_tables(flood)["headline"]

# %%
export.summary_tables(flood)["comparisons"]

# %%
plots.latency_distributions(flood, ("e2e_ms",), title="tokenize call latency")

# %% [markdown]
# What the batcher did (batches sent, mean batch size, hold time):

# %%
{name: stats.get("batcher") for name, stats in flood["config"]["stage_stats"].items() if "batcher" in stats}

# %% [markdown]
# ## Estimate vs measured

# %%
export.beside_reference(flood, "phase1_tokenize")

# %%
tables = export.estimate_tables(flood)
export.stack_tables(tables)

# %%
plots.estimates_vs_measured(tables, title="batching (reference Phase 1): estimate vs measured")
