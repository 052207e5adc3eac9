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
# 04 · Retry and circuit breaker. Parameters: KRMLX_SMOKE=1 runs everything small (tiny model).
import os

SMOKE = os.environ.get("KRMLX_SMOKE") == "1"
MODEL = "tiny" if SMOKE else "mini"
TRIALS = 1 if SMOKE else 3
ERRORS = {} if SMOKE else {"rates": (0.0, 0.05, 0.10, 0.20)}  # smoke: 0% and 10%, 10 questions
RUNS = os.environ.get("KRMLX_RUNS", "../runs")

# %% [markdown]
# # `retry`: retry and circuit breaking under injected faults (the reference's Phase 3)
#
# The worker injects seeded transient errors into `generate` at each rate. Without the
# retry phase the caller sees the error and tries again itself (a user retry); with it,
# `Retry` retries inside the serving layer and `CircuitBreaker` stops hammering a worker
# that keeps failing. The reference analysis expected ~0 overhead when nothing fails and 4-17% gains as
# the error rate grows.

# %%
from krmlx.report import export, plots, run, setup_notebook

setup_notebook()

# %%
errors = await run("error_rates", MODEL, smoke=SMOKE, trials=TRIALS, runs=RUNS, **ERRORS)
export.summary_tables(errors)["headline"]

# %%
export.summary_tables(errors)["errors"]

# %%
plots.latency_distributions(errors, ("e2e_ms",), title="E2E per engine and fault rate")

# %% [markdown]
# ## The breaker, up close
#
# Every `generate` fails: Retry tries each request a few times, the breaker counts the
# failures and opens, and from then on calls fail at once with `CircuitOpen`.

# %%
from krmlx import KrmlxError, Request
from krmlx.engine import Engine
from krmlx.stack import StackConfig

outcomes = []
async with Engine(MODEL, StackConfig.phases(["retry"], faults={"error_rate": {"generate": 1.0}})) as eng:
    for _ in range(6):
        try:
            outcomes.append((await eng.complete(Request("hi", max_tokens=4))).finish_reason)
        except KrmlxError as e:
            outcomes.append(type(e).__name__)
    stats = eng.stats()
outcomes, stats.get("circuit_breaker", stats)

# %% [markdown]
# ## Estimate vs measured

# %%
export.beside_reference(errors, "phase3_errors")

# %%
tables = export.estimate_tables(errors)
export.stack_tables(tables)

# %%
plots.estimates_vs_measured(tables, title="retry (reference Phase 3): estimate vs measured")
