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
# 09 · Past one machine. Parameters: KRMLX_SMOKE=1 runs everything small (tiny model).
import os

SMOKE = os.environ.get("KRMLX_SMOKE") == "1"
MODEL = "tiny" if SMOKE else "mini"
RANKS = 2
BACKEND = "ring"  # "nccl" on a host with several NVIDIA GPUs (one rank per GPU)
QUESTIONS = 3 if SMOKE else 10
RUNS = os.environ.get("KRMLX_RUNS", "../runs")

# %% [markdown]
# # Past one machine: the worker as an MLX distributed group
#
# `StackConfig.phases(distributed=DistributedConfig(ranks=2))` starts the worker as 2 ranks
# (tensor parallel: `mlx_lm`'s sharded load). Rank 0 speaks the usual stdio protocol and
# sends every model step to the other ranks, which follow in lockstep; stages, cancel,
# faults and metrics are unchanged. Here the same questions run through one worker
# process (`rank1`), the group started by krmlx's launcher (`ranks2`, rank 0 holds the
# engine's pipes) and the group started by `mlx.launch` (`ranks2-mlx.launch`, which relays
# stdio through itself). Each runs alone: an idle group still spins a core per follower.
#
# On one CPU host, ranks share its cores, so more ranks are slower: that is expected, and
# the collectives table shows what each token pays for them.

# %%
import pandas as pd

from krmlx.bench import make_workload, run_workload
from krmlx.report import plots, save_results, setup_notebook

setup_notebook()

# %%
wl = make_workload("distributed", smoke=SMOKE, questions=QUESTIONS, ranks=RANKS, backend=BACKEND)
doc = await run_workload(wl, MODEL)  # noqa: F704
save_results(doc, RUNS, "distributed")
pd.DataFrame(doc["summary"]["targets"])[["target", "requests", "ttft_ms_p50", "tpot_ms_mean", "throughput_tps_mean"]]

# %% [markdown]
# ## Collectives: what a token pays
# `allsum_*_us`: the median time of one all_sum on the group (a scalar: the per-step flag;
# a hidden-size vector: what each layer sums, twice per token). `step_flag_wait_us_mean`:
# rank 0's mean wait on the per-token flag, which also covers the step's compute in flight.

# %%
pd.DataFrame(doc["summary"]["collectives"])

# %%
pd.DataFrame(doc["summary"]["comparisons"])[["metric", "base", "other", "diff", "ci_low", "ci_high"]]

# %%
plots.throughput(doc, title=f"{MODEL}: 1 rank vs {RANKS} ranks ({BACKEND})")

# %%
plots.latency_distributions(doc, ("ttft_ms", "tpot_ms"))
