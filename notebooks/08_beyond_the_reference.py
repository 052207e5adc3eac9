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
# 08 · Beyond the reference. Parameters: KRMLX_SMOKE=1 runs everything small (tiny model).
import os

SMOKE = os.environ.get("KRMLX_SMOKE") == "1"
MODEL = "tiny" if SMOKE else "mini"
LEVELS = (1, 4) if SMOKE else (1, 2, 4, 8, 16, 32, 64)
RUNS = os.environ.get("KRMLX_RUNS", "../runs")

# %% [markdown]
# # Beyond the reference: continuous batching, prompt-cache reuse, speculative decoding
#
# The reference analysis concluded its phases give ~0% on generation-heavy work and pointed at "MLX
# parameters" instead. Here the worker batches concurrent generations into one mlx-lm
# `BatchGenerator` (the default `auto` scheduler: one stream alone runs on the serial path,
# two or more share the batch; `scheduler="batched"` always batches), reuses the KV state of shared
# prompt prefixes, and decodes speculatively with a draft model.

# %%
import pandas as pd

from krmlx.report import plots, run, setup_notebook

setup_notebook()

# %% [markdown]
# ## Continuous batching: throughput and TTFT per concurrency level
# The engine (`auto` scheduler, streamed), raw `BatchGenerator` in this process (no
# serving layer) and mlx-lm's own HTTP server, same prompts, model folder and warm-up (one
# wave at every level, untimed, for each).

# %%
sweep = await run("concurrency", MODEL, smoke=SMOKE, runs=RUNS, levels=LEVELS)  # noqa: F704
pd.DataFrame(sweep["summary"]["levels"])

# %%
pd.DataFrame(sweep["summary"]["ratios"])  # each target against the first (the engine)

# %%
plots.sweep(sweep, title=f"Concurrency sweep on {MODEL}")

# %% [markdown]
# ## Prompt-cache reuse: a shared ~500-token system prompt

# %%
reuse = await run("prompt_cache", MODEL, smoke=SMOKE, runs=RUNS)  # noqa: F704
pd.DataFrame(reuse["summary"]["prompt_cache"])

# %% [markdown]
# ## Speculative decoding
# Random weights make a separately trained draft useless (acceptance ~0), so two drafts:
# the target itself (agrees by construction: the mechanism runs, but the draft costs as
# much as the target) and the target's first layers plus its head.

# %%
spec = await run("speculative", MODEL, smoke=SMOKE, runs=RUNS)  # noqa: F704
pd.DataFrame(spec["summary"]["speculative"])
