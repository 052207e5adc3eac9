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
# 03 · Model cache. Parameters: KRMLX_SMOKE=1 runs everything small (tiny model).
import os

SMOKE = os.environ.get("KRMLX_SMOKE") == "1"
MODEL = "tiny" if SMOKE else "mini"
TRIALS = 1 if SMOKE else 3
SWITCHING = {} if SMOKE else {"switches": (10, 100)}  # smoke: 6 switches
RUNS = os.environ.get("KRMLX_RUNS", "../runs")

# %% [markdown]
# # `caching`: model caching (the reference's Phase 2)
#
# Without a cache the serving layer holds one model: a request for another one unloads it
# and loads the next. The reference analysis expected 2-3x on model switching and multi-tenant serving.
# Both workloads use 5 variants of the model (`tiny@1` .. `tiny@5`: same size, different
# seeded weights) and compare phase0 (one resident model) with the caching phase (5).

# %%
from krmlx.report import export, plots, run, setup_notebook

setup_notebook()

# %%
switching = await run("model_switching", MODEL, smoke=SMOKE, trials=TRIALS, runs=RUNS, **SWITCHING)
export.summary_tables(switching)["headline"]

# %%
plots.latency_distributions(switching, ("e2e_ms",), title="model switching: request latency")

# %%
tenants = await run("multi_tenant", MODEL, smoke=SMOKE, trials=TRIALS, runs=RUNS)
export.summary_tables(tenants)["headline"]

# %%
plots.latency_distributions(tenants, title="multi-tenant: 5 models round robin")

# %% [markdown]
# ## Estimate vs measured

# %%
export.beside_reference([switching, tenants], "phase2_caching")

# %%
tables = export.estimate_tables([switching, tenants])
export.stack_tables(tables)

# %%
plots.estimates_vs_measured(tables, title="caching (reference Phase 2): estimate vs measured")
