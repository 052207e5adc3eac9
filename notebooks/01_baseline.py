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
# 01 · Baseline. Parameters: KRMLX_SMOKE=1 runs everything small (tiny model).
import os

SMOKE = os.environ.get("KRMLX_SMOKE") == "1"
MODEL = "tiny" if SMOKE else "mini"
TRIALS = 1 if SMOKE else 3
PHASES = "all" if SMOKE else "each"  # each: phase0, every phase alone, all of them
PARAMS = {"max_tokens": 16} if SMOKE else {}  # smoke also means 6 questions, no warmup
RUNS = os.environ.get("KRMLX_RUNS", "../runs")

# %% [markdown]
# # The 50-question baseline: direct vs the serving layer
#
# The reference analysis (kr-serve-mlx "Phase 3+") measured its serving layer at +11% total time
# over LM Studio's mlx-engine on 50 questions. Here the same questions go through
# `DirectEngine` (mlx-lm in this process) and `Engine` with phases off (`phase0`) and on,
# interleaved per request, and every comparison carries a 95% bootstrap CI.

# %%
from krmlx.report import export, plots, run, setup_notebook

setup_notebook()

# %%
doc = await run("baseline", MODEL, phases=PHASES, smoke=SMOKE, trials=TRIALS, runs=RUNS, **PARAMS)
doc["_source"]

# %%
from krmlx.bench.report_text import format_summary

print(format_summary(doc))

# %%
plots.latency_distributions(doc)

# %%
plots.overhead(doc)

# %% [markdown]
# ## Where the time goes, hop by hop
#
# Every request carries its timeline: a timestamp at each hop it passed (the client's pipe
# write, the worker's read, its queue, the prefill, the frame back, ...) on one clock shared
# by the processes of this host (`krmlx.timeline`). The hops add up to the TTFT, so the gap
# between a served target and direct splits into parts; the compute hops (template and
# tokenize, prefill) are the same model math on every path.

# %%
plots.hop_breakdown(doc)

# %%
served = next(r for r in doc["records"] if r["target"] == "phase0" and r["ok"])
plots.waterfall(served)

# %%
from IPython.display import display

from krmlx.bench import hops

for caption, table in hops.tables(doc["summary"]).items():
    print(caption)
    display(table)

# %%
# the whole run as a Perfetto trace: open it at ui.perfetto.dev (or chrome://tracing)
hops.write_trace(doc, doc["_source"])

# %% [markdown]
# ## The reference's baseline table beside ours
#
# The reference's "kr-serve-mlx" column is the serving layer as it was (our `phase0`); its
# "mlx-engine" column is in-process generation (our `direct`). Absolute times depend on
# the model and machine; the overhead is what carries over.

# %%
export.beside_reference(doc, "baseline")

# %%
export.beside_reference(doc, "baseline_observations")

# %% [markdown]
# ## Try it: flip a phase and rerun
#
# The panel edits a `StackConfig` and runs the baseline on it (direct and phase0 beside
# it). Click **Run**, or drive it from code as below.

# %%
from krmlx.report.widgets import make_panel

panel = make_panel(MODEL, smoke=SMOKE, out_dir=RUNS, max_tokens=PARAMS.get("max_tokens"))
panel

# %%
panel.phase["batching"].value = True
panel.phase["framing"].value = True
panel.config().label

# %%
tried = await panel.run()
export.display_table("overhead", tried["summary"]["overhead"])

# %% [markdown]
# ## Estimate vs measured: every reference row the baseline measures

# %%
tables = export.estimate_tables(doc)
export.stack_tables(tables)

# %%
plots.estimates_vs_measured(tables, measured_only=True)
