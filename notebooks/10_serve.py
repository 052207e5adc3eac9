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
SCHEDULER = "auto"
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

from krmlx.report import run, setup_notebook
from krmlx.serve import ServerProcess
from krmlx.serve.metrics import parse_metrics

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
# The bench's baseline workload, interleaved one request at a time, greedy, with the same
# warm-up for each: `direct` is mlx-lm in this kernel, `engine` an Engine (worker over
# stdio) in this kernel, `http` the server above (any OpenAI-compatible URL works the same
# way), timed by the bench's HTTP client (streaming: TTFT at the first chunk with text). The
# server's worker is a second one, so `http - engine` is the HTTP front's cost plus the
# client's.

# %%
doc = await run("baseline", MODEL, smoke=SMOKE, trials=TRIALS, questions=PROMPTS,  # noqa: F704
                max_tokens=MAX_TOKENS,
                targets=["direct", f"engine?scheduler={SCHEDULER}", f"http={server.base_url}"])
pd.DataFrame(doc["summary"]["targets"])[["target", "requests", "errors", "ttft_ms_p50",
                                         "ttft_ms_p90", "e2e_ms_p50", "tpot_ms_p50"]]

# %%
pd.DataFrame(doc["summary"]["overhead"])[["target", "ttft_ms_diff", "ttft_ms_ci_low",
                                          "ttft_ms_ci_high", "e2e_ms_diff", "e2e_ms_ci_low",
                                          "e2e_ms_ci_high", "total_overhead_pct"]]

# %%
exit_code = server.stop()  # SIGTERM: uvicorn shuts down (the worker too), then re-raises it
exit_code, server.proc.poll()
