"""Start each peer server on a model folder and probe its OpenAI-compatible surface.

    .venv/bin/python benchmarks/peers_probe.py [--model tiny] [--peer rapid-mlx ...] [--out F]

For every peer of :data:`krmlx.bench.peers.PEERS` (or those named), one at a time: build its
venv if needed, start it on 127.0.0.1, and check ``/v1/models``, a non-streaming chat
completion twice (greedy, ``temperature: 0``: is the text the same?), the same with
``seed``, and a stream with ``stream_options.include_usage`` (what its first event, first
content event, usage event and end look like). Prints one JSON object per peer; a peer that
cannot run here is reported with its recorded reason. The server is always stopped.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from krmlx.bench.peers import PEERS, get_peer, serving  # noqa: E402
from krmlx.errors import KrmlxError  # noqa: E402
from krmlx.models import resolve_model  # noqa: E402

PROMPT = "Why is the sky blue?"


def post(port: int, body: dict) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"content-type": "application/json"})
    r = conn.getresponse()
    data, headers = r.read(), dict(r.getheaders())
    conn.close()
    return r.status, data, {"http": f"HTTP/{r.version / 10:.1f}", **headers}


def stream(port: int, body: dict) -> dict:
    """The stream's events, classified, with arrival times relative to the request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True}),
                 {"content-type": "application/json"})
    r = conn.getresponse()
    out = {"status": r.status, "comments": 0, "events": [], "done": False}
    for raw in r:
        line = raw.decode().rstrip("\r\n")
        if line.startswith(":"):
            out["comments"] += 1
        elif line.startswith("data: "):
            payload = line[6:]
            if payload == "[DONE]":
                out["done"] = True
                continue
            ev = json.loads(payload)
            ev["_t_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
            out["events"].append(ev)
    conn.close()
    evs = out.pop("events")
    content = [e for e in evs if any((c.get("delta") or {}).get("content")
                                     for c in e.get("choices") or [])]
    usage = [e for e in evs if e.get("usage")]
    out.update(
        n_events=len(evs), n_content_events=len(content),
        first_event=_short(evs[0]) if evs else None,
        first_content_event=_short(content[0]) if content else None,
        last_event=_short(evs[-1]) if evs else None,
        events_with_usage=len(usage), usage=usage[-1]["usage"] if usage else None,
        metrics=[e["metrics"] for e in evs if e.get("metrics")],
        text="".join(c["delta"].get("content") or "" for e in content for c in e["choices"]),
    )
    return out


def _short(ev: dict) -> dict:
    return {k: ev[k] for k in ("object", "choices", "usage", "metrics", "_t_ms") if k in ev}


def probe(name: str, folder: str, max_tokens: int) -> dict:
    peer = get_peer(name)
    if peer.unavailable_reason:
        return {"peer": name, "unavailable_reason": peer.unavailable_reason}
    t0 = time.perf_counter()
    with serving(peer, folder) as srv:
        port = int(srv.base_url.rsplit(":", 1)[1].split("/")[0])
        res = {"peer": name, "pins": list(peer.pins),
               "startup_s": round(time.perf_counter() - t0, 1)}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/v1/models")
        models = conn.getresponse().read()
        conn.close()
        res["models"] = [m["id"] for m in json.loads(models or b'{"data": []}')["data"]]
        res["model_id"] = srv.model_id
        body = {"model": srv.model_id, "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": max_tokens, "temperature": 0}
        texts = []
        for extra in ({}, {}, {"seed": 7}):
            status, data, headers = post(port, {**body, **extra})
            d = json.loads(data)
            texts.append(d["choices"][0]["message"]["content"] if status == 200 else d)
            res.setdefault("usage", d.get("usage"))
            res.setdefault("own_metrics", d.get("metrics"))
            res.setdefault("http", headers["http"])
            res.setdefault("connection_header", headers.get("Connection") or headers.get(
                "connection"))
        res["greedy_deterministic"] = texts[0] == texts[1]
        res["seed_same_text"] = texts[2] == texts[0]
        status, data, _ = post(port, {**{k: v for k, v in body.items() if k != "max_tokens"},
                                      "max_completion_tokens": 3})
        res["max_completion_tokens_honoured"] = (
            status == 200 and json.loads(data)["usage"]["completion_tokens"] == 3)
        status, data, _ = post(port, {k: v for k, v in body.items() if k != "model"})
        res["model_omitted"] = status if status != 200 else json.loads(data).get("model")
        status, data, _ = post(port, {**body, "model": "no-such-model"})
        res["unknown_model"] = [status, data.decode(errors="replace")[:160]]
        res["stream"] = stream(port, {**body, "stream_options": {"include_usage": True}})
        res["stream_same_text"] = res["stream"].pop("text") == texts[0]
        res["stream_no_usage_option"] = stream(port, body)["events_with_usage"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--peer", action="append", choices=list(PEERS))
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--out")
    args = ap.parse_args()
    folder = str(resolve_model(args.model))
    results = []
    for name in args.peer or list(PEERS):
        try:
            res = probe(name, folder, args.max_tokens)
        except KrmlxError as e:
            res = {"peer": name, "error": str(e)}
        results.append(res)
        print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
