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
# 00 · Quickstart. Parameters: KRMLX_SMOKE=1 runs everything small (tiny model).
import os

SMOKE = os.environ.get("KRMLX_SMOKE") == "1"
MODEL = "tiny" if SMOKE else "mini"
MAX_TOKENS = 16 if SMOKE else 50
PROMPT = "Why is the sky blue?"

# %% [markdown]
# # Quickstart
#
# krmlx measures what a serving layer costs on top of MLX. The same request goes through
# `DirectEngine` (mlx-lm in this process: the baseline) and `Engine` (a worker process
# behind switchable serving stages). First: what are we running on?

# %%
from krmlx.report import setup_notebook

setup_notebook()

# %%
from krmlx.doctor import collect_env, format_env

print(format_env(collect_env()))

# %% [markdown]
# krmlx builds synthetic models, so no model hub is needed: real mlx-lm folders (llama
# shapes, seeded random weights, a real BPE tokenizer), built once, then cached. A model
# folder of your own or a hub id (`owner/name`, where the hub is reachable) works too.

# %%
import krmlx

path = krmlx.make_model(MODEL)
path

# %% [markdown]
# ## One request, no serving layer

# %%
from krmlx import DirectEngine, Request

async with DirectEngine(MODEL) as direct:
    done = await direct.complete(Request(PROMPT, max_tokens=MAX_TOKENS))
print(repr(done.text))
print(f"TTFT {done.ttft_ms:.1f} ms · E2E {done.e2e_ms:.1f} ms · {done.usage.output_tokens} tokens")

# %% [markdown]
# ## The same request through the serving layer, every phase on
#
# `StackConfig()` is phase 0 (the plain worker); `StackConfig.all()` adds batching, model
# caching, retry + circuit breaker and binary stream framing.

# %%
from krmlx.engine import Engine
from krmlx.stack import StackConfig

async with Engine(MODEL, StackConfig.all()) as engine:
    served = await engine.complete(Request(PROMPT, max_tokens=MAX_TOKENS))
    stats = engine.stats()
print(f"TTFT {served.ttft_ms:.1f} ms · E2E {served.e2e_ms:.1f} ms · same tokens as direct: "
      f"{served.token_ids == done.token_ids}")
stats
