"""Hostile soak over HTTP: well-formed streaming requests from the openai SDK, first alone
("calm"), then beside a mix of hostile clients, against ``krmlx serve`` (and, for
comparison, ``mlx_lm.server``, where it survives).

    python benchmarks/hostile_soak.py --requests 2000 --concurrency 8 --target krmlx \
        --target mlx_lm.server --out results/cpu/

Contract: every well-formed request is a greedy chat completion of one of a fixed pool of
prompts; its text must equal the text the same server gave that prompt alone (taken
before the soak); a request that fails or differs is recorded with why. The hostile mix
runs while the second pass lasts, each kind in its own loop (:data:`PROBES`): stalled
bodies (headers promising a body that never comes), slowloris (headers trickled), silent
connections, message floods, oversized prompts, random disconnects mid-stream,
non-readers (a stream never read, then dropped), bad bodies. Memory: the high-water RSS of
the server and of every process under it (its worker), sampled every 0.2 s. After the
server is stopped, none of its processes may be left.

Stats (the results file's summary, per target): ``calm`` and ``hostile`` (completed,
failed, different text, p50/p99 e2e ms), ``probes`` (how many of each kind started and
how those that ended were answered: a status code, ``closed``, ``open`` or ``held``), ``rss_high_mib`` (server, worker), ``left_running`` (pids).
Exit status 1 when any well-formed request failed or differed, or a process was left.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import sys
import time
from pathlib import Path

import httpx
import openai
import psutil

from krmlx.models import resolve_model
from krmlx.process import ManagedProcess, free_port
from krmlx.serve import ServerProcess

PROMPTS = tuple(f"Question {i}: why is the {w} blue?" for i, w in
                enumerate(("sky", "sea", "lamp", "river", "glass", "tiger", "cloud", "maple")))
MiB = 2**20


def start_server(target: str, model: str, scheduler: str) -> tuple[ManagedProcess, str]:
    folder = str(resolve_model(model))
    if target == "krmlx":
        s = ServerProcess(model, scheduler=scheduler, stop_timeout_s=30)
        name = model
    else:
        port = free_port()
        s = ManagedProcess([sys.executable, "-m", "mlx_lm.server", "--model", folder,
                            "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"],
                           port=port, health_path="/health", name="mlx_lm.server")
        name = folder
    s.start()
    return s, name


class RssWatch:
    """High-water RSS of a process and of everything under it."""

    def __init__(self, pid: int):
        self.pid, self.high = pid, {"server": 0, "worker": 0}
        self.pids: set[int] = {pid}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                root = psutil.Process(self.pid)
                self.high["server"] = max(self.high["server"], root.memory_info().rss)
                kids = root.children(recursive=True)
                self.pids.update(k.pid for k in kids)
                rss = sum(k.memory_info().rss for k in kids)
                self.high["worker"] = max(self.high["worker"], rss)
            except psutil.Error:
                pass
            await asyncio.sleep(0.2)


async def one_stream(client: openai.AsyncOpenAI, model: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    try:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
            temperature=0, stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        return {"prompt": prompt, "ok": True, "text": "".join(parts),
                "e2e_ms": (time.perf_counter() - t0) * 1e3}
    except Exception as e:  # noqa: BLE001 - recorded: the soak counts every failure
        return {"prompt": prompt, "ok": False, "error": f"{type(e).__name__}: {e}"[:300],
                "e2e_ms": (time.perf_counter() - t0) * 1e3}


async def well_formed(client, model, n: int, concurrency: int, max_tokens: int, seed: int):
    rng = random.Random(seed)
    prompts = [rng.choice(PROMPTS) for _ in range(n)]
    sem = asyncio.Semaphore(concurrency)

    async def go(p):
        async with sem:
            return await one_stream(client, model, p, max_tokens)

    return await asyncio.gather(*(go(p) for p in prompts))


# -- the hostile probes: each one action, returning how it was answered --------------------------

async def _raw(port: int, data: bytes, hold_s: float, read: bool = True) -> str:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(data)
        await w.drain()
        if not read:
            await asyncio.sleep(hold_s)
            return "held"
        try:
            head = await asyncio.wait_for(r.read(12), hold_s)
        except TimeoutError:
            return "open"
        return head.decode(errors="replace")[9:12] or "closed"
    finally:
        w.close()


async def stalled_body(url, port, model):
    return await _raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      b"application/json\r\nContent-Length: 1000\r\n\r\n{", 40)


async def slowloris(url, port, model):
    return await _raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n", 40)


async def silent(url, port, model):
    return await _raw(port, b"", 40)


async def _post(url, body, **kw):
    async with httpx.AsyncClient(timeout=60) as http:
        r = await http.post(url + "/v1/chat/completions", json=body, **kw)
        return str(r.status_code)


async def message_flood(url, port, model):
    return await _post(url, {"model": model, "max_tokens": 1,
                             "messages": [{"role": "user", "content": ""}] * 270_001})


async def oversized_prompt(url, port, model):
    return await _post(url, {"model": model, "max_tokens": 1,
                             "messages": [{"role": "user", "content": "bees " * 60_000}]})


async def random_disconnect(url, port, model):
    body = {"model": model, "max_tokens": 200, "stream": True,
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}]}
    async with httpx.AsyncClient(timeout=60) as http, \
            http.stream("POST", url + "/v1/chat/completions", json=body) as r:
        n = random.randint(1, 20)
        async for _ in r.aiter_lines():
            n -= 1
            if n <= 0:
                break
        return str(r.status_code)


async def non_reader(url, port, model):
    body = json.dumps({"model": model, "max_tokens": 2000, "stream": True,
                       "messages": [{"role": "user", "content": "Tell me a long story."}]})
    return await _raw(port, f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      f"application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode(),
                      10, read=False)


async def bad_body(url, port, model):
    body = random.choice([b"{", b"[1]", b'{"messages": 5}', b'{"messages": [], "stop": 5}',
                          b'{"messages": [{"role": "user", "content": "x"}], "n": NaN}'])
    async with httpx.AsyncClient(timeout=60) as http:
        r = await http.post(url + "/v1/chat/completions", content=body,
                            headers={"Content-Type": "application/json"})
        return str(r.status_code)


# kind -> (probe, how many at once, pause between rounds in s)
PROBES = {"stalled_body": (stalled_body, 64, 1.0), "slowloris": (slowloris, 32, 1.0),
          "silent": (silent, 32, 1.0), "message_flood": (message_flood, 1, 2.0),
          "oversized_prompt": (oversized_prompt, 1, 1.0),
          "random_disconnect": (random_disconnect, 4, 0.2), "non_reader": (non_reader, 2, 1.0),
          "bad_body": (bad_body, 2, 0.2)}


async def hostile_mix(url: str, port: int, model: str, stop: asyncio.Event, scale: float):
    counts: dict = collections.defaultdict(collections.Counter)

    async def loop(kind, probe, width, pause):
        width = max(1, int(width * scale))
        while not stop.is_set():
            counts[kind]["started"] += width
            answers = await asyncio.gather(*(probe(url, port, model) for _ in range(width)),
                                           return_exceptions=True)
            for a in answers:
                counts[kind][a if isinstance(a, str) else type(a).__name__] += 1
            await asyncio.sleep(pause)

    tasks = [asyncio.ensure_future(loop(k, *v)) for k, v in PROBES.items()]
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {k: dict(v) for k, v in counts.items()}


def summarize(records: list[dict], reference: dict[str, str]) -> dict:
    done = [r for r in records if r["ok"]]
    differ = [r for r in done if r["text"] != reference[r["prompt"]]]
    e2e = sorted(r["e2e_ms"] for r in done)

    def pct(q):
        return e2e[min(len(e2e) - 1, int(q * len(e2e)))] if e2e else None

    return {"requests": len(records), "completed": len(done), "failed": len(records) - len(done),
            "different_text": len(differ), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "errors": collections.Counter(r["error"].split(":")[0] for r in records
                                          if not r["ok"]).most_common(5)}


async def soak_target(target: str, args) -> dict:
    server, model = start_server(target, args.model, args.scheduler)
    pids: set[int] = set()
    try:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0,
                                    timeout=120)
        reference = {p: (await one_stream(client, model, p, args.max_tokens))["text"]
                     for p in PROMPTS}
        stop_watch = asyncio.Event()
        watch = RssWatch(server.pid)
        watching = asyncio.ensure_future(watch.run(stop_watch))
        calm = await well_formed(client, model, args.requests, args.concurrency,
                                 args.max_tokens, args.seed)
        stop = asyncio.Event()
        mix = asyncio.ensure_future(hostile_mix(server.url, server.port, model, stop, args.scale))
        await asyncio.sleep(1.0)  # the probes are in place
        hostile = await well_formed(client, model, args.requests, args.concurrency,
                                    args.max_tokens, args.seed)
        stop.set()
        probes = await mix
        alive = server.alive
        stop_watch.set()
        await watching
        pids = watch.pids
    finally:
        server.stop()
    left = [p for p in pids if psutil.pid_exists(p)
            and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    return {"target": target, "calm": summarize(calm, reference),
            "hostile": summarize(hostile, reference), "probes": probes,
            "server_alive_after": alive, "left_running": left,
            "rss_high_mib": {k: round(v / MiB, 1) for k, v in watch.high.items()},
            "records": [{"target": target, "pass": name, **{k: v for k, v in r.items()
                                                           if k != "text"}}
                        for name, recs in (("calm", calm), ("hostile", hostile)) for r in recs]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="well-formed requests per pass")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--model", default="tiny")
    p.add_argument("--scheduler", default="auto")
    p.add_argument("--target", action="append", choices=["krmlx", "mlx_lm.server"])
    p.add_argument("--scale", type=float, default=1.0, help="how many probes of each kind at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results", help="a directory, or a path ending in .json")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from krmlx.bench.results import write_results
    from krmlx.doctor import collect_env

    parts = [asyncio.run(soak_target(t, args)) for t in args.target or ["krmlx"]]
    records = [r for part in parts for r in part.pop("records")]
    summary = {part["target"]: part for part in parts}
    path = Path(args.out)
    if path.suffix != ".json":
        path = path / f"hostile_soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_results(path, env=collect_env(load_interval_s=0.1), config=vars(args),
                  records=records, summary=summary)
    for part in parts:
        print(json.dumps({k: v for k, v in part.items()}, indent=1, default=str))
    print(f"results: {path}")
    krmlx = summary.get("krmlx")
    bad = krmlx is not None and (krmlx["hostile"]["failed"] or krmlx["hostile"]["different_text"]
                                 or krmlx["calm"]["failed"] or krmlx["left_running"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
