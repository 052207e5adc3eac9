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
# 06 · Combined and mixed workloads. Parameters: KRMLX_SMOKE=1 runs everything small (tiny model).
import os

SMOKE = os.environ.get("KRMLX_SMOKE") == "1"
MODEL = "tiny" if SMOKE else "mini"
TRIALS = 1 if SMOKE else 3
PROFILE = {} if SMOKE else {"rate": 10.0, "duration_s": 30.0}  # smoke: 2 s
SWEEP = {} if SMOKE else {"rates": (2.0, 5.0, 10.0, 20.0)}  # smoke: 5 and 20 req/s, 1 s each
RUNS = os.environ.get("KRMLX_RUNS", "../runs")

# %% [markdown]
# # All phases together: best case, realistic, mixed and an API server
#
# The reference's combined tables multiply phase speedups; here they are measured in one run.
# `mixed` is its 40% generation / 40% tokenization / 20% model switching workload,
# `server_profile` an API server's traffic (Poisson arrivals, 20 tokenize calls per
# generation), and `rate_sweep` that profile at several arrival rates.

# %%
from krmlx.report import export, plots, run, setup_notebook

setup_notebook()

# %%
mixed = await run("mixed", MODEL, smoke=SMOKE, trials=TRIALS, runs=RUNS)
export.summary_tables(mixed)["components"]

# %%
server = await run("server_profile", MODEL, smoke=SMOKE, trials=TRIALS, runs=RUNS, **PROFILE)
export.summary_tables(server)["headline"]

# %%
sweep = await run("rate_sweep", MODEL, smoke=SMOKE, runs=RUNS, **SWEEP)
plots.sweep(sweep)

# %%
plots.latency_distributions(server, ("e2e_ms",), title="API-server profile: request latency")

# %% [markdown]
# ## The reference's combined tables beside ours
#
# `combined_realistic` and `summary_50q` are measured by the baseline with every phase on
# (notebook 01 writes it; the newest baseline under `runs/` is used when there is one).

# %%
from krmlx.report import load_results

baselines = [d for d in load_results(RUNS) if d["config"].get("workload") == "baseline"][-1:]
docs = [*baselines, mixed, server, sweep]
export.beside_reference(docs, "mixed_workload")

# %%
export.beside_reference(docs, "api_server")

# %%
export.beside_reference(docs, "combined_realistic")

# %% [markdown]
# ## Estimate vs measured

# %%
tables = export.estimate_tables(docs)
export.stack_tables(tables)

# %%
plots.estimates_vs_measured(tables, title="Combined workloads: reference estimate vs measured", measured_only=True)
