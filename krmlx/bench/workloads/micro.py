"""``micro``: the served path's own costs, each measured on its own variants of krmlx's
stack (the workload makes its targets; ``--target`` does not apply):

- ``ping``: round trips of a ``ping`` through the full client, per codec (µs percentiles);
- ``stream``: the per-token cost of streaming ``stream_tokens`` synthetic tokens from the
  worker's null model (no MLX), per framing (a frame per token without a window, a 64-frame
  window, coalescing 8 tokens / 5 ms), per codec: wall µs per token and CPU µs per token of
  the caller and of the worker (medians over ``reps`` streams); ``json+no-timeline``: the
  plain JSON stream with the worker's timeline off (``json`` minus it: the timeline's cost);
- ``tokenize``: one text tokenized in this process, through the worker one call per
  message, and through the batching phase with 10 in flight (µs per item);
- ``http``: the bench's own HTTP client against a stub server that streams prepared tokens
  on a fixed schedule (:mod:`krmlx.bench.stub`): its added TTFT (measured TTFT - the
  stub's first-token delay) and per-token cost (CPU per chunk; each gap - the interval):
  the floor under any HTTP measurement; and ``client_hops``: the client's own share of
  its timeline hops, its marks against the stub's (:func:`client_hops`).
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass

import numpy as np

from ...framing import FramerConfig, plain
from ...stack import StackConfig
from ...timeline import first_point
from ...types import Request
from ...worker.config import WorkerConfig
from ...worker.protocol import NULL_MODEL
from .. import metrics
from ..targets import CommandServer, DirectTarget, EngineTarget
from .base import Workload, check_positive

TOKENIZE_TEXT = ("Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen; "
                 "the light reactions in the thylakoid membranes make ATP and NADPH, which the "
                 "Calvin cycle then spends to fix carbon.")
STUB = {"burst": (0.0, 0.0), "paced": (20.0, 2.0)}  # name -> (ttft_ms, interval_ms)
# (hop, what it measures, from point, to point); None: the request's start
CLIENT_HOPS = (
    ("request", "request start to the stub's receipt: build, send, loopback, server parse",
     None, "stub_received"),
    ("headers", "headers written by the stub to parsed by the client", "stub_headers", "http_headers"),
    ("first_event", "first content event written by the stub to parsed by the client",
     "stub_first", "http_content"),
)


def framing_variants() -> dict[str, FramerConfig]:
    out = {}
    for codec in ("json", "msgpack"):
        out[f"{codec}"] = plain(codec)
        out[f"{codec}+window64"] = FramerConfig(codec, window=64)
        out[f"{codec}+coalesce8"] = FramerConfig(codec, coalesce_tokens=8, coalesce_ms=5.0, window=64)
    return out


def stub_target(name: str, ttft_ms: float, interval_ms: float) -> CommandServer:
    cmd = (f"{sys.executable} -m krmlx.bench.stub --port {{port}} --ttft-ms {ttft_ms:g} "
           f"--interval-ms {interval_ms:g}")
    return CommandServer(cmd, f"stub:{name}", f"cmd:{cmd}")


@dataclass(frozen=True)
class Micro(Workload):
    name = "micro"
    SMOKE = {"pings": 200, "stream_tokens": 2000, "reps": 2, "tokenizes": 50, "http_requests": 5}

    pings: int = 3000
    stream_tokens: int = 20000
    reps: int = 5
    tokenizes: int = 500
    http_requests: int = 30

    def validate(self, model):
        check_positive(self.name, pings=self.pings, stream_tokens=self.stream_tokens,
                       reps=self.reps, tokenizes=self.tokenizes, http_requests=self.http_requests)

    def default_targets(self, phases, model):
        return []

    def groups(self, targets):
        worker = StackConfig(worker=WorkerConfig(codec="msgpack"))
        return [
            ("ping", [EngineTarget(StackConfig(), "ping:json"), EngineTarget(worker, "ping:msgpack")]),
            ("stream", [EngineTarget(StackConfig(worker=WorkerConfig(framing=f)), f"stream:{n}")
                        for n, f in framing_variants().items()]
             # the timeline's own cost: the plain JSON stream with the worker's part off
             + [EngineTarget(StackConfig(worker=WorkerConfig(framing=plain("json"), timeline=False)),
                             "stream:json+no-timeline")]),
            ("tokenize", [DirectTarget("tokenize:in-process"),
                          EngineTarget(StackConfig(), "tokenize:worker"),
                          EngineTarget(StackConfig.phases(["batching"]), "tokenize:batched")]),
            ("http", [stub_target(n, *s) for n, s in STUB.items()]),
        ]

    async def run(self, run, group=0):
        name = ["ping", "stream", "tokenize", "http"][group]
        await getattr(self, f"_{name}")(run)

    async def _ping(self, run):
        reqs = [Request("ping", max_tokens=1, id=f"ping-{i}") for i in range(self.pings)]
        await run.warm([("ping", r) for r in reqs[: self.pings // 10]], label="pings")
        await run.trials(lambda trial: run.sequence(reqs, trial, kind="ping", series="ping"))

    async def _stream(self, run):
        req = Request("x", max_tokens=self.stream_tokens, model=NULL_MODEL, id="null-stream")
        await run.warm([("generate", Request("x", max_tokens=2000, model=NULL_MODEL))],
                       label="one stream of 2000")

        async def body(trial):
            for _rep in range(self.reps):
                await run.batch([("generate", req)], trial, series="stream", concurrency=1)

        await run.trials(body)

    async def _tokenize(self, run):
        reqs = [Request(TOKENIZE_TEXT, max_tokens=1, id=f"tok-{i}") for i in range(self.tokenizes)]
        await run.warm([("tokenize", r) for r in reqs[:20]], label="20 tokenize calls")

        async def body(trial):
            await run.sequence(reqs, trial, kind="tokenize", series="one_per_message",
                               targets=["tokenize:in-process", "tokenize:worker"])
            await run.batch([("tokenize", r) for r in reqs], trial, series="batched_10",
                            concurrency=10, targets=["tokenize:batched"])

        await run.trials(body)

    async def _http(self, run):
        burst = Request("calibrate", max_tokens=2000, id="burst")
        paced = [Request("calibrate", max_tokens=200, id=f"paced-{i}") for i in range(self.http_requests)]
        await run.warm([("generate", Request("calibrate", max_tokens=16))], label="one request")

        async def body(trial):
            await run.sequence([burst] * 3, trial, series="burst", targets=["stub:burst"])
            await run.batch([("generate", r) for r in paced], trial, series="paced",
                            concurrency=1, targets=["stub:paced"])

        await run.trials(body)

    def summarize(self, records, config):
        df = metrics.to_frame(records)
        ms = config.get("measurements", [])
        ping = [{"target": e, **_pcts_us(part["e2e_ms"])}
                for e, part in df[df["kind"] == "ping"].groupby("target", sort=False)]
        stream = []
        for name in [t for t in config.get("targets", {}) if t.startswith("stream:")]:
            rows = [m for m in ms if m["target"] == name and m["series"] == "stream"]
            if not rows:
                continue
            n = self.stream_tokens
            wall = [m["wall_s"] / n * 1e6 for m in rows]
            stream.append({"target": name, "tokens": n, "reps": len(rows),
                           "wall_us_per_token": statistics.median(wall),
                           "wall_us_per_token_min": min(wall), "wall_us_per_token_max": max(wall),
                           "caller_cpu_us_per_token": statistics.median(m["caller_cpu_s"] / n * 1e6 for m in rows),
                           "worker_cpu_us_per_token": statistics.median(m["target_cpu_s"] / n * 1e6 for m in rows)})
        tok = df[df["kind"] == "tokenize"]
        tokenize = [{"target": e, "path": "one per message", **_pcts_us(part["e2e_ms"])}
                    for e, part in tok[tok["series"] == "one_per_message"].groupby("target", sort=False)]
        for m in [m for m in ms if m["series"] == "batched_10"]:
            tokenize.append({"target": m["target"], "path": "10 in flight, batched",
                             "mean_us_per_item": m["wall_s"] / self.tokenizes * 1e6,
                             "batches": m.get("batcher.batches")})
        return {"ping": ping, "stream": stream, "tokenize": tokenize, "http": http_rows(df, ms),
                "client_hops": client_hops(df)}


def http_rows(df, ms) -> list[dict]:
    """The HTTP client against the stub: its added TTFT and per-chunk cost."""
    out = []
    for name, (ttft_ms, interval_ms) in STUB.items():
        part = df[(df["target"] == f"stub:{name}") & df["ok"]]
        if part.empty:
            continue
        gaps = np.asarray([g for gs in part["itl_ms"] for g in gs], dtype=float)
        chunks = float(part["output_tokens"].sum())
        cpu = sum(m["caller_cpu_s"] for m in ms if m["target"] == f"stub:{name}")
        row = {"target": f"stub:{name}", "stub_ttft_ms": ttft_ms, "stub_interval_ms": interval_ms,
               "requests": len(part), "ttft_ms_p50": float(part["ttft_ms"].median()),
               "client_added_ttft_ms_p50": float(part["ttft_ms"].median()) - ttft_ms,
               "itl_ms_p50": float(np.median(gaps)) if gaps.size else None,
               "itl_excess_ms_p50": float(np.median(gaps)) - interval_ms if gaps.size else None}
        if name == "burst":  # as fast as the stub writes: the client's own cost per chunk
            wall_per = (part["e2e_ms"] - part["ttft_ms"]).sum() / max(1.0, chunks - len(part))
            row["wall_us_per_chunk"] = wall_per * 1e3
        if cpu and name == "paced":
            row["client_cpu_us_per_chunk"] = cpu / chunks * 1e6
        out.append(row)
    return out


def client_hops(df) -> list[dict]:
    """Per stub variant and hop of :data:`CLIENT_HOPS`: the median ms from the first point
    to the second (on the one clock of the host, :mod:`krmlx.bench.stub`) with its 95%
    bootstrap CI over requests: what the HTTP client itself adds to the hops it records
    for a server krmlx does not control."""
    out = []
    for name in STUB:
        part = df[(df["target"] == f"stub:{name}") & df["ok"]]
        timelines = [tl for tl in part.get("timeline", ()) if isinstance(tl, dict)]
        for hop, label, a, b in CLIENT_HOPS:
            values = [v for tl in timelines if (v := _between(tl, a, b)) is not None]
            if values:
                r = metrics.percentile_ci([[v] for v in values], qs=(50,))
                out.append({"target": f"stub:{name}", "hop": hop, "label": label, "requests": r["n"],
                            "p50_ms": r["p50"], "ci_low": r["p50_ci_low"], "ci_high": r["p50_ci_high"]})
    return out


def _between(timeline: dict, a: str | None, b: str) -> float | None:
    start, end = first_point(timeline, a) if a else 0.0, first_point(timeline, b)
    return None if start is None or end is None else end - start


def _pcts_us(values_ms) -> dict:
    """p50, p90, p99, mean and max of ``values_ms`` in µs (empty: {})."""
    d = metrics.describe(values_ms, (50, 90, 99))
    return {f"{k}_us": v * 1e3 for k, v in d.items() if k != "n"} if d["n"] else {}
