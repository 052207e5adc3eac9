"""Concurrency sweep: aggregate streamed throughput and TTFT per concurrency level.

Three paths get the same prompts (the 50 questions, cycled), the same model folder and
the same ``max_tokens`` at each level ``c`` (``c`` requests sent at once, one wave):

- ``engine``: krmlx's Engine with the batched scheduler (continuous batching), streamed;
- ``raw``: mlx-lm's BatchGenerator in this process, no serving layer (the ceiling);
- ``mlx_lm_server``: mlx-lm's own HTTP server (``python -m mlx_lm.server``), driven over
  streaming HTTP on 127.0.0.1; the workload starts and stops it.

The summary has one row per level (``concurrency``, ``aggregate_tps`` of the engine, and
the other paths' figures beside it) plus the targets at 16 streams.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

from ..errors import ConfigError
from ..questions import load_questions
from ..types import Request

DEFAULT_LEVELS = (1, 2, 4, 8, 16, 32, 64)
SMOKE_LEVELS = (1, 4)


def level_requests(c: int, max_tokens: int) -> list[Request]:
    qs = load_questions()[0]
    return [Request(qs[i % len(qs)].question, max_tokens=max_tokens, id=f"c{c}-{i}") for i in range(c)]


def _row(path: str, c: int, ttfts_ms: list, e2es_ms: list, tokens: int, wall_s: float) -> dict:
    return {"engine": path, "concurrency": c, "requests": len(e2es_ms), "output_tokens": tokens,
            "wall_s": wall_s, "aggregate_tps": tokens / wall_s,
            "ttft_ms_p50": float(np.median(ttfts_ms)) if ttfts_ms else None,
            "ttft_ms_p90": float(np.percentile(ttfts_ms, 90)) if ttfts_ms else None,
            "e2e_ms_p50": float(np.median(e2es_ms)) if e2es_ms else None}


async def run_engine_level(engine, c: int, max_tokens: int) -> tuple[dict, list[dict]]:
    reqs = level_requests(c, max_tokens)
    t0 = time.perf_counter()
    outs = await asyncio.gather(*(engine.complete(r) for r in reqs))
    wall = time.perf_counter() - t0
    recs = [{"engine": "engine", "concurrency": c, "request_id": o.request_id, "ok": True,
             "ttft_ms": o.ttft_ms, "e2e_ms": o.e2e_ms, "output_tokens": o.usage.output_tokens,
             "output_ids": list(o.token_ids)} for o in outs]
    return _row("engine", c, [o.ttft_ms for o in outs if o.ttft_ms], [o.e2e_ms for o in outs],
                sum(o.usage.output_tokens for o in outs), wall), recs


def run_raw_level(model, tokenizer, c: int, max_tokens: int) -> tuple[dict, list[dict]]:
    """mlx-lm's BatchGenerator directly: all c prompts inserted at once, stepped to the end."""
    from mlx_lm.generate import BatchGenerator

    from .. import gen

    prompts = [gen.encode_prompt(tokenizer, r.to_params()) for r in level_requests(c, max_tokens)]
    eos = sorted(tokenizer.eos_token_ids)
    t0 = time.perf_counter()
    batch = BatchGenerator(model, stop_tokens=[[t] for t in eos], completion_batch_size=max(64, c),
                           prefill_batch_size=8)
    uids = batch.insert(prompts, max_tokens=[max_tokens] * c)
    first: dict = {}
    count = dict.fromkeys(uids, 0)
    end: dict = {}
    while len(end) < c:
        _, responses = batch.next()
        now = time.perf_counter()
        for r in responses:
            if r.finish_reason != "stop":
                count[r.uid] += 1
                first.setdefault(r.uid, now)
            if r.finish_reason is not None:
                end[r.uid] = now
    wall = time.perf_counter() - t0
    batch.close()
    ttfts = [(first[u] - t0) * 1e3 for u in uids if u in first]
    e2es = [(end[u] - t0) * 1e3 for u in uids]
    recs = [{"engine": "raw", "concurrency": c, "request_id": f"c{c}-{i}", "ok": True,
             "ttft_ms": (first[u] - t0) * 1e3 if u in first else None, "e2e_ms": (end[u] - t0) * 1e3,
             "output_tokens": count[u]} for i, u in enumerate(uids)]
    return _row("raw", c, ttfts, e2es, sum(count.values()), wall), recs


async def _lines(reader):
    """Lines of a response; a connection the server resets ends them (the request failed)."""
    while True:
        try:
            line = await reader.readline()
        except ConnectionError:
            return
        if not line:
            return
        yield line


class MlxLmServer:
    """``python -m mlx_lm.server`` on 127.0.0.1 at a free port; started and stopped here."""

    def __init__(self, folder: str, *, decode_concurrency: int = 64, env: dict | None = None):
        self.folder, self.decode_concurrency, self.env = folder, decode_concurrency, env
        self.proc: subprocess.Popen | None = None
        self.errors: list[str] = []
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]

    async def __aenter__(self) -> MlxLmServer:
        env = dict(os.environ if self.env is None else self.env)  # same BLAS as this process
        env["HF_HUB_OFFLINE"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlx_lm.server", "--model", self.folder, "--host", "127.0.0.1",
             "--port", str(self.port), "--temp", "0.0", "--log-level", "WARNING",
             "--decode-concurrency", str(self.decode_concurrency)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlx_lm.server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                status, _ = await self._get("/health")
                if status == 200:
                    return self
            except OSError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError("mlx_lm.server did not become healthy in 120 s")

    async def __aexit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stderr_tail(self, n: int = 2000) -> str | None:
        """The server's last stderr output, if it exited (why its requests failed)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return self.proc.stderr.read().decode(errors="replace")[-n:]

    async def _get(self, path: str):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
        writer.close()
        return int(data.split(b" ", 2)[1]), data

    async def stream(self, prompt: str, max_tokens: int) -> tuple[float | None, float, int]:
        """(ttft_s, e2e_s, content chunks) of one streaming chat completion. A response
        without content keeps its first bytes in ``self.errors`` (why it failed)."""
        body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                           "temperature": 0.0, "stream": True}).encode()
        t0 = time.perf_counter()
        ttft, chunks = None, 0
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nConnection: close\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
        except ConnectionError:  # the server's accept backlog overflowed: a failed request
            return None, time.perf_counter() - t0, 0
        head = b""
        async for line in _lines(reader):
            if len(head) < 600:
                head += line
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            try:
                event = json.loads(line[6:])
            except ValueError:
                continue
            delta = (event.get("choices") or [{}])[0].get("delta", {})
            if delta.get("content"):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
        writer.close()
        if ttft is None and len(self.errors) < 5:
            self.errors.append(head.decode(errors="replace")[:600])
        return ttft, time.perf_counter() - t0, chunks



async def run_server_level(server: MlxLmServer, c: int, max_tokens: int, tokens_per_request: list[int]
                           ) -> tuple[dict, list[dict]]:
    reqs = level_requests(c, max_tokens)
    t0 = time.perf_counter()
    outs = await asyncio.gather(*(server.stream(r.prompt, max_tokens) for r in reqs))
    wall = time.perf_counter() - t0
    # The server streams text deltas; its token count per request is the engine's for the
    # same greedy prompt (same model folder, same template), which the caller passes in.
    tokens = sum(n for o, n in zip(outs, tokens_per_request, strict=True) if o[0] is not None)
    recs = [{"engine": "mlx_lm_server", "concurrency": c, "request_id": r.id, "ok": o[0] is not None,
             "ttft_ms": o[0] * 1e3 if o[0] else None, "e2e_ms": o[1] * 1e3,
             "output_tokens": n if o[0] is not None else 0,
             "content_chunks": o[2]} for r, o, n in zip(reqs, outs, tokens_per_request, strict=True)]
    row = _row("mlx_lm_server", c, [o[0] * 1e3 for o in outs if o[0]], [o[1] * 1e3 for o in outs],
               tokens, wall)
    row["failed"] = sum(o[0] is None for o in outs)
    return row, recs


def check_levels(levels) -> list[int]:
    levels = sorted({int(x) for x in levels})
    if not levels or levels[0] < 1:
        raise ConfigError(f"concurrency levels must be positive ints, got {levels}")
    return levels


SERVER_MAX_LEVEL = 64  # ThreadingHTTPServer's small accept backlog resets more connections


async def run_concurrency(model: str = "mini", *, levels=DEFAULT_LEVELS, max_tokens: int = 64,
                          smoke: bool = False, raw: bool = True, server: bool = True,
                          progress=None, checkpoint=None, warmup: bool = True,
                          scheduler: str = "batched") -> dict:
    """Run the sweep; ``checkpoint(doc)``, if given, is called after each path so a failure
    later (or a time limit) keeps what was measured."""
    from ..doctor import collect_env
    from ..engine import Engine
    from ..models import load, model_bytes, resolve_model
    from ..stack import StackConfig

    levels = check_levels(SMOKE_LEVELS if smoke else levels)
    max_tokens = 16 if smoke else max_tokens
    folder = resolve_model(model)
    env = {**collect_env(), "model": model, "model_path": str(folder), "model_bytes": model_bytes(folder)}
    rows, records = [], []
    config = {"workload": "concurrency", "model": model, "levels": levels, "max_tokens": max_tokens,
              "smoke": smoke, "scheduler": scheduler, "warmup": warmup}

    def document() -> dict:
        summary = {"levels": level_table(rows), "paths": rows, "targets": targets(rows)}
        return {"env": env, "config": config, "records": records, "summary": summary}

    def done_with_path() -> None:
        if checkpoint is not None:
            checkpoint(document())

    async with Engine(model, StackConfig.phases(scheduler=scheduler)) as engine:
        for c in levels if warmup else (2,):  # each batch shape once (GPUs compile per shape)
            await run_engine_level(engine, c, 4)
        for c in levels:
            row, recs = await run_engine_level(engine, c, max_tokens)
            rows.append(row)
            records += recs
            if progress is not None:
                progress.update(1)
    done_with_path()
    engine_tokens = {c: [r["output_tokens"] for r in records if r["concurrency"] == c] for c in levels}
    if raw:
        m, tok = load(folder)
        for c in levels if warmup else (2,):
            run_raw_level(m, tok, c, 4)
        for c in levels:
            row, recs = run_raw_level(m, tok, c, max_tokens)
            rows.append(row)
            records += recs
        del m, tok
        done_with_path()
    if server:
        server_levels = [c for c in levels if c <= SERVER_MAX_LEVEL]
        config["server_levels"] = server_levels
        async with MlxLmServer(str(folder), decode_concurrency=max(64, max(levels))) as srv:
            await srv.stream("warm up", 4)
            for c in server_levels:
                row, recs = await run_server_level(srv, c, max_tokens, engine_tokens[c])
                rows.append(row)
                records += recs
            config["server_stderr_tail"] = srv.stderr_tail()
            config["server_errors"] = srv.errors
        done_with_path()
    return document()


def level_table(rows: list[dict]) -> list[dict]:
    """One row per level: the engine's figures, with raw and server figures beside them."""
    by = {(r["engine"], r["concurrency"]): r for r in rows}
    out = []
    for c in sorted({r["concurrency"] for r in rows}):
        e = by.get(("engine", c), {})
        row = {"concurrency": c, "aggregate_tps": e.get("aggregate_tps"), "ttft_ms_p50": e.get("ttft_ms_p50")}
        for path in ("raw", "mlx_lm_server"):
            other = by.get((path, c))
            if other:
                row[f"{path}_aggregate_tps"] = other["aggregate_tps"]
                row[f"{path}_ttft_ms_p50"] = other["ttft_ms_p50"]
        out.append(row)
    return out


def targets(rows: list[dict], c: int = 16) -> list[dict]:
    by = {(r["engine"], r["concurrency"]): r for r in rows if r.get("aggregate_tps")}
    e = by.get(("engine", c))
    if e is None:
        return []
    out = []
    raw, srv = by.get(("raw", c)), by.get(("mlx_lm_server", c))
    if raw:
        ratio = e["aggregate_tps"] / raw["aggregate_tps"]
        out.append({"target": f"engine throughput >= 90% of raw BatchGenerator at {c}",
                    "measured": ratio, "goal": 0.9, "met": ratio >= 0.9})
    if srv:
        ratio = e["aggregate_tps"] / srv["aggregate_tps"]
        out.append({"target": f"engine throughput >= 1.0x mlx_lm.server at {c}", "measured": ratio,
                    "goal": 1.0, "met": ratio >= 1.0})
        if e["ttft_ms_p50"] and srv["ttft_ms_p50"]:
            ratio = e["ttft_ms_p50"] / srv["ttft_ms_p50"]
            out.append({"target": f"engine TTFT p50 <= 0.5x mlx_lm.server at {c}", "measured": ratio,
                        "goal": 0.5, "met": ratio <= 0.5})
    return out


if __name__ == "__main__":  # python -m krmlx.bench.concurrency [--smoke] [--model M]
    import argparse

    from .results import write_results

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mini")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--levels", default=",".join(map(str, DEFAULT_LEVELS)))
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", default="runs/concurrency.json")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    d = asyncio.run(run_concurrency(a.model, levels=a.levels.split(","), max_tokens=a.max_tokens,
                                    smoke=a.smoke))
    write_results(a.out, **d)
    import pandas as pd

    print(pd.DataFrame(d["summary"]["levels"]).to_string(index=False))
    print(pd.DataFrame(d["summary"]["targets"]).to_string(index=False))
