"""Where a request's time goes: its timeline, hop by hop, on one monotonic clock.

Contract: every producer timestamps the hops it sees with ``time.perf_counter()`` (on
Linux and macOS a system-wide monotonic clock, so the caller's and the worker's
timestamps of one host compare directly), and the request's record carries them as
``timeline``: milliseconds after the request's start (:func:`relative`).

Producers and their points:

- :class:`krmlx.direct.DirectEngine`: ``encoded`` (chat template and tokenizer done), per
  token ``sampled``;
- the worker (:class:`krmlx.worker.schedulers.stream.StreamOut`, on when ``WorkerConfig.timeline``):
  ``worker_read`` (the call's bytes read from the pipe), ``queued`` (decoded and routed,
  its job queued), ``job_start`` (the compute thread took it), ``encoded``, per token
  ``sampled`` and ``written`` (its frame encoded, the pipe write starting);
- the worker client: ``client_written`` (the call frame encoded, its pipe write starting), per token
  ``received`` (its frame's bytes arrived) and ``yielded`` (the chunk handed up the
  stages: the time TTFT and ITL are measured at), ``done_received``;
- :func:`krmlx.types.complete_stream`: per token ``delivered`` (the caller has it), and the
  whole made relative to the request's start (:func:`for_record`);
- krmlx serve (:mod:`krmlx.serve.generation`): ``serve_received`` (the request reached the
  app), ``serve_ready`` (its body read, validated, prompt encoded, slot taken: the engine
  call), the engine's timeline above, ``sse_first`` (the first content event handed to
  the SSE writer), sent in the ``include_usage`` chunk's ``timings.timeline``;
- the stages and the worker client, on the caller's side: ``stage:<name>`` as each one's
  ``call`` is entered (:func:`krmlx.service.mark`; ``stage:client`` for the worker
  client), which split the way out to ``client_written`` (:func:`stage_hops`);
- the bench's HTTP client (:mod:`krmlx.bench.http`): ``http_sent`` (the request written),
  ``http_headers`` (the response headers in; on the chain only for servers that send no
  timeline of their own, since krmlx serve sends its headers after its first token),
  ``http_content`` (each content-bearing event parsed: the first is the TTFT).
- the stub server (:mod:`krmlx.bench.stub`), off the chain: ``stub_received``,
  ``stub_headers``, ``stub_first``, against which ``bench micro`` calibrates the client's
  points (:func:`krmlx.bench.workloads.micro.client_hops`).

The first token's hops (:data:`TTFT_HOPS`) telescope: each hop runs from the previous point
the record has to its own, so a record's hops add up to its TTFT exactly, served or direct.
Per token after the first (:data:`TOKEN_HOPS`), the decode step and each transit.
:func:`for_record` is what a request's record keeps. The analysis (per-target breakdown,
served-minus-direct attribution, the Perfetto trace) is :mod:`krmlx.bench.hops`; the
OpenTelemetry spans, :mod:`krmlx.bench.otel`.
"""

from __future__ import annotations

import math
import time
from statistics import fmean

# (point, the hop that ends there), in the order a request passes them
TTFT_HOPS = (
    ("http_sent", "client: connect, send the request"),
    ("serve_received", "HTTP transit, server: parse headers"),
    ("serve_ready", "server: body, validate, template + tokenize, slot"),
    ("client_written", "request out: stages, encode"),
    ("worker_read", "pipe write + transit to the worker"),
    ("queued", "worker: decode, route, queue"),
    ("job_start", "queue wait"),
    ("encoded", "chat template + tokenize"),
    ("sampled", "prefill + first token (compute)"),
    ("written", "first frame: encode"),
    ("received", "pipe write + transit to the client"),
    ("yielded", "client: decode, route"),
    ("sse_first", "server: stop check, SSE encode"),
    ("http_headers", "server: until response headers"),
    ("http_content", "to the first content event: transit, client SSE parse"),
)
PER_TOKEN = ("sampled", "written", "received", "yielded", "delivered")
TOKEN_HOPS = (
    ("step", "decode step (compute)"),
    ("written", "frame: encode"),
    ("received", "pipe write + transit to the client"),
    ("yielded", "client: decode, route"),
    ("delivered", "stages out, to the caller"),
)
KEEP_TOKENS = 64  # per-token points a record keeps (its token_hops cover all tokens)
COMPUTE_HOPS = ("encoded", "sampled")  # the same model math on every path: not serving cost
WORKER_POINTS = ("worker_read", "queued", "job_start", "encoded", "sampled", "written")
SERVER_POINTS = ("serve_received", "serve_ready", "client_written", "received", "yielded", "sse_first")


def first_point(timeline: dict, point: str):
    v = timeline.get(point)
    if isinstance(v, list):
        return v[0] if v else None
    return v


def ttft_hops(timeline: dict) -> dict:
    """The first token's hops of one record (ms): each from the previous point present to
    its own; missing points give no hop. They add up to the last point's time (the TTFT)."""
    out, prev = {}, 0.0
    for point, _ in TTFT_HOPS:
        t = first_point(timeline, point)
        if t is not None and not (isinstance(t, float) and math.isnan(t)):
            out[point] = t - prev
            prev = t
    return out


def token_hops(timeline: dict) -> dict:
    """Mean per token after the first (ms): the decode step (sampled to sampled) and each
    transit (sampled to written, written to received, ...), over the points present."""
    sampled = timeline.get("sampled") or []
    if len(sampled) < 2:
        return {}
    out = {"step": fmean(b - a for a, b in zip(sampled, sampled[1:], strict=False))}
    prev = "sampled"
    for point in PER_TOKEN[1:]:
        ts = timeline.get(point)
        if not ts or len(ts) != len(sampled) or any(t is None for t in ts):
            continue
        out[point] = fmean(b - a for a, b in zip(timeline[prev][1:], ts[1:], strict=True))
        prev = point
    return out


def stage_hops(timeline: dict) -> dict:
    """The request's way out (the timeline's start to ``client_written``) split by the
    ``stage:<name>`` points the stages and the worker client stamp on entry (a relative
    timeline, ms): ``caller`` (start to the first stage), each stage (its entry to the
    next one's), ``stage:client`` (the client's routing and the frame's encode, to the
    pipe write). {} without those points. The parts add up to the ``client_written`` point."""
    end = timeline.get("client_written")
    points = sorted((t, k) for k, t in timeline.items()
                    if k.startswith("stage:") and isinstance(t, (int, float)))
    if end is None or not points:
        return {}
    out = {"caller": points[0][0]}
    for (t, k), (t_next, _) in zip(points, [*points[1:], (end, None)], strict=True):
        out[k] = t_next - t
    return out


def relative(timeline: dict, t0: float) -> dict:
    """A timeline of absolute ``perf_counter`` seconds as ms after ``t0``: lists stay
    lists, None stays None, anything else is dropped."""
    def ms(t):
        return None if t is None else round((t - t0) * 1e3, 4)

    return {k: ([ms(t) for t in v] if isinstance(v, list) else ms(v))
            for k, v in timeline.items() if v is None or isinstance(v, (int, float, list))}


def clock_anchor() -> dict:
    """The wall clock and the timeline's clock read together (``wall_ns``: ``time.time_ns()``,
    ``perf_counter_s``): a run's config keeps one, so its marks can be placed in wall time
    (:mod:`krmlx.bench.otel`)."""
    perf = time.perf_counter()
    wall = time.time_ns()
    return {"wall_ns": wall, "perf_counter_s": (perf + time.perf_counter()) / 2}


def trimmed(timeline: dict) -> dict:
    """``timeline`` with its per-token lists cut to the first KEEP_TOKENS."""
    return {k: v[:KEEP_TOKENS] if isinstance(v, list) else v for k, v in timeline.items()}


def for_record(timeline: dict, t0: float) -> dict:
    """What a request's record keeps of its timeline: ``timeline`` (ms after ``t0``, per
    token lists cut to the first KEEP_TOKENS, enough for a trace) and ``token_hops`` (the
    per-token means over every token, :func:`token_hops`), so a long answer does not make
    its record long."""
    rel = relative(timeline, t0)
    return {"timeline": trimmed(rel), "token_hops": token_hops(rel)}


