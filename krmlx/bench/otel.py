"""OpenTelemetry spans of a results document's requests, sent to an OTLP/HTTP endpoint.

    from krmlx.bench import export_otlp
    from krmlx.bench.results import read_results

    export_otlp(read_results("runs/baseline.json"), "http://127.0.0.1:4318")

or ``krmlx otel runs/baseline.json --endpoint http://127.0.0.1:4318`` (``bench --otlp URL``
sends each run's as it is written).

Spans, per generation record (ok or failed), named and attributed as the GenAI semantic
conventions name a client's inference span:

- the root, ``chat {model}`` or ``text_completion {model}`` (kind CLIENT), from the
  request's start to its end: ``gen_ai.operation.name``, ``gen_ai.request.model``,
  ``gen_ai.request.max_tokens``, ``gen_ai.usage.input_tokens`` / ``output_tokens``,
  ``gen_ai.response.finish_reasons`` where the record has them, and ``krmlx.target``,
  ``krmlx.trial``, ``krmlx.request_id``, ``krmlx.ttft_ms``; a failed request's status is
  ERROR with ``error.type``;
- a child per first-token hop the record's timeline has (:data:`krmlx.timeline.TTFT_HOPS`),
  named for the point it ends at (``http_sent``, ``sampled``, ...), its label in
  ``krmlx.hop`` and its length as the timeline saw it in ``krmlx.hop_ms``. The hops tile
  the root's first ``ttft`` exactly: a hop that came out negative (two processes' marks
  a hair apart, e.g. ``serve_received`` before the client's own ``http_sent``) is an empty
  span and the next hop keeps its time;
- a child ``decode`` from the first token to the end, with the per-token hop means
  (``krmlx.token.step_ms``, ...): per-token spans would make a long answer's trace long.

Clock: the marks are ``perf_counter`` seconds; the run's ``config["clock"]``
(:func:`krmlx.timeline.clock_anchor`) places them in wall time. A file without one (older
than the anchor) is placed as if its last request ended at export; the resource attribute
``krmlx.clock`` says which (``run`` / ``export``).

Contract: :func:`spans` builds finished spans in memory (the SDK's InMemorySpanExporter);
:func:`export_otlp` sends them with the SDK's OTLP/HTTP exporter, 512 a request, and raises
KrmlxError if the endpoint refuses them. The SDK is the optional extra ``krmlx[otel]``;
without it both raise KrmlxError saying so.
"""

from __future__ import annotations

import time

from ..errors import KrmlxError
from ..timeline import TTFT_HOPS, ttft_hops

try:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
except ImportError:  # the optional extra is not installed
    TracerProvider = None

MISSING = "OpenTelemetry export needs the opentelemetry SDK: pip install 'krmlx[otel]'"
BATCH = 512  # spans per OTLP request (the SDK's BatchSpanProcessor default)
TRACES_PATH = "/v1/traces"
LABELS = dict(TTFT_HOPS)


def _require() -> None:
    if TracerProvider is None:
        raise KrmlxError(MISSING)


def wall_clock(doc: dict) -> tuple[int, float, str]:
    """(wall ns, perf_counter s) read together, and where they come from: the run's
    ``config["clock"]``, else now against the last request's end (``"export"``)."""
    clock = (doc.get("config") or {}).get("clock")
    if isinstance(clock, dict) and {"wall_ns", "perf_counter_s"} <= set(clock):
        return int(clock["wall_ns"]), float(clock["perf_counter_s"]), "run"
    ends = [r.get("t_end_s") or r["t_start_s"] for r in doc.get("records", [])
            if r.get("t_start_s") is not None]
    return time.time_ns(), max(ends, default=0.0), "export"


def _attributes(rec: dict, model: str) -> dict:
    out = {"gen_ai.operation.name": "chat" if rec.get("chat", True) else "text_completion",
           "gen_ai.request.model": model, "gen_ai.request.max_tokens": rec.get("max_tokens"),
           "krmlx.target": rec.get("target"), "krmlx.trial": rec.get("trial"),
           "krmlx.request_id": rec.get("request_id"), "krmlx.ttft_ms": rec.get("ttft_ms")}
    if rec.get("ok"):
        out.update({"gen_ai.usage.input_tokens": rec.get("prompt_tokens"),
                    "gen_ai.usage.output_tokens": rec.get("output_tokens"),
                    "gen_ai.response.finish_reasons": [rec["finish_reason"]]
                    if rec.get("finish_reason") else None})
    return {k: v for k, v in out.items() if v is not None}


def _record_spans(tracer, rec: dict, model: str, start_ns: int) -> None:
    """The root span of one record (its start at wall ``start_ns``) and its children."""
    def at(ms: float) -> int:  # in integers: a float of epoch ns is only good to 256 ns
        return start_ns + round(ms * 1e6)

    ttft, e2e = rec.get("ttft_ms"), rec.get("e2e_ms") or 0.0
    attrs = _attributes(rec, model)
    root = tracer.start_span(f"{attrs['gen_ai.operation.name']} {model}", kind=SpanKind.CLIENT,
                             attributes=attrs, start_time=at(0.0))
    if not rec.get("ok"):
        error = rec.get("error") or "error"
        root.set_attribute("error.type", error.split(":")[0])
        root.set_status(Status(StatusCode.ERROR, error))
    ctx = set_span_in_context(root)
    timeline = rec.get("timeline") if isinstance(rec.get("timeline"), dict) else {}
    t = edge = 0.0  # the point reached; the tiling's edge (never moves back)
    for point, hop in ttft_hops(timeline).items():
        t += hop
        end = max(edge, t)
        tracer.start_span(point, context=ctx, start_time=at(edge),
                          attributes={"krmlx.hop": LABELS[point], "krmlx.hop_ms": round(hop, 4)}).end(at(end))
        edge = end
    if ttft is not None and rec.get("ok"):
        token = {f"krmlx.token.{k}_ms": v for k, v in (rec.get("token_hops") or {}).items()}
        start = edge or ttft  # the first token, as the hops end (a record without a timeline: its TTFT)
        tracer.start_span("decode", context=ctx, start_time=at(start),
                          attributes=token).end(at(max(start, e2e)))
    root.end(at(max(edge, e2e)))


def spans(doc: dict) -> list:
    """The finished spans (SDK ``ReadableSpan``) of ``doc``'s generation records, each
    request its own trace."""
    _require()
    wall_ns, perf_s, source = wall_clock(doc)
    config = doc.get("config") or {}
    resource = Resource.create({"service.name": "krmlx", "krmlx.workload": config.get("workload") or "",
                                "krmlx.clock": source})
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("krmlx.bench.otel")
    for rec in doc.get("records", []):
        if rec.get("kind", "generate") != "generate" or rec.get("t_start_s") is None:
            continue
        _record_spans(tracer, rec, rec.get("model") or config.get("model") or "unknown",
                      wall_ns + round((rec["t_start_s"] - perf_s) * 1e9))
    provider.shutdown()
    return list(memory.get_finished_spans())


def export_otlp(doc: dict, endpoint: str | None = None, *, timeout_s: float = 10.0) -> int:
    """Send ``doc``'s spans (:func:`spans`) to the OTLP/HTTP ``endpoint`` (a base URL such
    as ``http://host:4318``, or the full ``.../v1/traces``; None: the SDK's
    ``OTEL_EXPORTER_OTLP_*`` environment variables); the number of spans sent."""
    out = spans(doc)
    if endpoint is not None and not endpoint.rstrip("/").endswith(TRACES_PATH):
        endpoint = endpoint.rstrip("/") + TRACES_PATH
    exporter = OTLPSpanExporter(endpoint=endpoint, timeout=timeout_s)
    try:
        for i in range(0, len(out), BATCH):
            if exporter.export(out[i:i + BATCH]) is not SpanExportResult.SUCCESS:
                raise KrmlxError(f"OTLP export to {endpoint or 'OTEL_EXPORTER_OTLP_ENDPOINT'} failed "
                                 f"(spans {i}..{min(len(out), i + BATCH) - 1} of {len(out)})")
    finally:
        exporter.shutdown()
    return len(out)
