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
# 05 · Stream framing. Parameters: KRMLX_SMOKE=1 runs everything small (tiny model).
import os

SMOKE = os.environ.get("KRMLX_SMOKE") == "1"
MODEL = "tiny" if SMOKE else "mini"
TRIALS = 1 if SMOKE else 3
MICRO = {} if SMOKE else {"stream_tokens": 20000, "reps": 5}  # smoke: 2 streams of 2000
LONG = {} if SMOKE else {"requests": 3, "max_tokens": 1000}  # smoke: 2 x 200 tokens
RUNS = os.environ.get("KRMLX_RUNS", "../runs")

# %% [markdown]
# # `framing`: stream framing (the reference's Phase 5)
#
# Every generated token crosses the process boundary as a frame. The reference analysis expected binary
# framing to cut stream overhead by 60%, worth ~0.2% on 50-token answers and more on long
# ones. First the per-token cost alone: the worker's null model streams tokens with no
# MLX compute, per codec and coalescing setting.

# %%
from krmlx.report import export, plots, run, setup_notebook

setup_notebook()

# %%
import pandas as pd

micro = await run("micro", MODEL, smoke=SMOKE, runs=RUNS, **MICRO)
pd.DataFrame(micro["summary"]["stream"])

# %% [markdown]
# The same client over HTTP: the bench's own HTTP client against a stub server that streams
# prepared tokens on a fixed schedule. What it measures beyond the schedule is the client's
# own cost, the floor under every HTTP number.

# %%
pd.DataFrame(micro["summary"]["http"])

# %% [markdown]
# ## Long-form generation: direct, phase0 and framing (4 tokens per frame)

# %%
long_form = await run("long_form", MODEL, smoke=SMOKE, trials=TRIALS, runs=RUNS, **LONG)
export.summary_tables(long_form)["headline"]

# %%
export.summary_tables(long_form)["stream_cost"]

# %%
plots.throughput(long_form, title="long form: output tokens/s")

# %% [markdown]
# ## Estimate vs measured

# %%
export.beside_reference(long_form, "phase5_streaming")

# %%
tables = export.estimate_tables(long_form)
export.stack_tables(tables)

# %%
plots.estimates_vs_measured(tables, title="framing (reference Phase 5): estimate vs measured")
