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
# 10 · Serving over the OpenAI API. Parameters: KRMLX_SMOKE=1 runs it small (tiny model).
import os

SMOKE = os.environ.get("KRMLX_SMOKE") == "1"
MODEL = "tiny" if SMOKE else "mini"
SCHEDULER = "batched"
PROMPTS = 3 if SMOKE else 12
MAX_TOKENS = 16 if SMOKE else 64
TRIALS = 1 if SMOKE else 3

# %% [markdown]
# # Serving over the OpenAI API: `krmlx serve`
#
# `python -m krmlx serve --model M` puts one Engine (the stdio worker behind the stage stack)
# behind the OpenAI HTTP API (Starlette on uvicorn), so that real clients can drive it.
# `ServerProcess` starts one on a free port of 127.0.0.1 and stops it (and its worker) at
# the end; here the official `openai` SDK talks to it.

# %%
import httpx
import openai
import pandas as pd

from krmlx import DirectEngine, Request, load_questions
from krmlx.bench import metrics
from krmlx.bench.runner import RunPlan, run_interleaved
from krmlx.engine import Engine
from krmlx.report import setup_notebook
from krmlx.serve import ServerProcess
from krmlx.serve.client import HttpEngine
from krmlx.serve.metrics import parse_metrics
from krmlx.stack import StackConfig

setup_notebook()
server = ServerProcess(MODEL, scheduler=SCHEDULER).start()
server.health()

# %% [markdown]
# ## A chat completion, then a stream
# `usage` counts prompt, completion and cached tokens; `timings` beside it are the server's
# own (from its receipt of the request: queue, TTFT, decode, E2E, TPOT, in ms).

# %%
client = openai.OpenAI(base_url=server.base_url, api_key="unused")
messages = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Why is the sky blue?"}]
reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS,
                                       temperature=0)
print(repr(reply.choices[0].message.content), reply.choices[0].finish_reason)
pd.DataFrame([{**reply.usage.model_dump(exclude_none=True), **reply.model_extra["timings"]}])

# %%
stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS,
                                        stream=True, stream_options={"include_usage": True})
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="|")
print("\nusage:", chunk.usage.completion_tokens, "tokens; timings:", chunk.model_extra["timings"])

# %% [markdown]
# ## What `/metrics` says (Prometheus text format)

# %%
rows = parse_metrics(httpx.get(server.url + "/metrics").text)
pd.DataFrame([r for r in rows if not r["name"].endswith(("_bucket", "_created"))])

# %% [markdown]
# ## Direct vs stdio Engine vs HTTP, the same prompts
# Interleaved, one request at a time, greedy: `direct` is mlx-lm in this kernel, `engine`
# an Engine (worker over stdio) in this kernel, `http` the server above seen from its
# client (the openai SDK, streaming: TTFT at the first chunk with text). The server's own
# worker is a second one, so `http - engine` is the HTTP front's cost plus the client's.

# %%
questions = load_questions()[0][:PROMPTS]
requests = [Request(q.question, max_tokens=MAX_TOKENS, id=q.id) for q in questions]
records = []
async with (DirectEngine(MODEL) as direct, Engine(MODEL, StackConfig.phases(scheduler=SCHEDULER)) as engine,  # noqa: F704
            HttpEngine(server.base_url, MODEL) as http):
    await run_interleaved({"direct": direct, "engine": engine, "http": http}, requests,  # noqa: F704
                          RunPlan(trials=TRIALS, warmup=1), records, workload="serve")
df = metrics.to_frame(records)
metrics.summarize(df)[["engine", "requests", "errors", "ttft_ms_p50", "ttft_ms_p90",
                       "e2e_ms_p50", "e2e_ms_p90", "tpot_ms_p50"]]

# %%
metrics.overhead(df, "direct")[["engine", "ttft_ms_diff", "ttft_ms_ci_low", "ttft_ms_ci_high",
                                "e2e_ms_diff", "e2e_ms_ci_low", "e2e_ms_ci_high",
                                "total_overhead_pct"]]

# %%
exit_code = server.stop()  # SIGTERM: uvicorn shuts down (the worker too), then re-raises it
exit_code, server.proc.poll()
