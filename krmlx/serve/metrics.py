"""ServeMetrics: the server's Prometheus metrics, one CollectorRegistry per app.

Metrics (text format at ``GET /metrics``):

- ``krmlx_serve_requests_total{route, status}``: every HTTP request, by route (``other``
  for paths that are not routes) and status code;
- ``krmlx_serve_ttft_seconds``, ``krmlx_serve_tpot_seconds``, ``krmlx_serve_e2e_seconds``,
  ``krmlx_serve_queue_seconds`` (histograms, server-side, per finished generation; TPOT
  only where there were 2+ tokens); ``krmlx_serve_tokens_total{kind=prompt|completion}``;
- ``krmlx_serve_active_streams``, ``krmlx_serve_in_flight`` (gauges);
- ``krmlx_serve_shutdown_ended_total{kind=stream|request}``: requests the server ended
  when the grace period after SIGTERM was over (apart from clients that left: those are
  ``status="499"`` in the requests counter);
- from the engine at scrape time (:class:`EngineCollector`): ``krmlx_worker_up``,
  ``krmlx_worker_restarts_total`` and ``krmlx_worker_crashes_total`` (the client's stats),
  and, while the worker runs, ``krmlx_worker_tokens_out_total`` (the worker's own token
  counter; it restarts from 0 with a new worker) and ``krmlx_worker_active_streams``.

Contract: observing never raises; a scrape asks the worker for its stats only while it
is alive (with a timeout), so a scrape never restarts a dead worker nor hangs on one.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                     10.0, 30.0, 60.0)
TPOT_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
STATS_TIMEOUT_S = 2.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def engine_status(engine) -> dict:
    """Whether the engine's worker is up, its pid, restarts and crashes, and (while it is
    alive) its own counters; a DirectEngine (no worker) reports ``worker: False``."""
    client = getattr(engine, "client", None)
    if client is None:
        return {"up": getattr(engine, "model", None) is not None, "worker": False}
    out = {"up": client.alive, "worker": True, "worker_pid": client.pid if client.alive else None,
           "restarts": client.stats.get("restarts", 0), "crashes": client.stats.get("crashes", 0)}
    if client.alive:
        try:
            stats = await asyncio.wait_for(client.worker_stats(), STATS_TIMEOUT_S)
            out.update(tokens_out=stats.get("tokens_out"), active_streams=stats.get("active_streams"),
                       streams_done=stats.get("streams_done"), worker_pid=stats.get("pid"))
        except Exception as e:  # noqa: BLE001 - a status read never fails the caller
            out["stats_error"] = f"{type(e).__name__}: {e}"
    return out


class EngineCollector:
    """Yields the engine's metrics from the last :func:`engine_status` snapshot."""

    def __init__(self):
        self.snapshot: dict = {}

    def describe(self):
        return []

    def collect(self):
        s = self.snapshot
        yield GaugeMetricFamily("krmlx_worker_up", "1 while the engine's worker can take calls",
                                value=1 if s.get("up") else 0)
        yield CounterMetricFamily("krmlx_worker_restarts", "worker restarts by the client",
                                  value=s.get("restarts", 0))
        yield CounterMetricFamily("krmlx_worker_crashes", "worker deaths the client saw",
                                  value=s.get("crashes", 0))
        if s.get("tokens_out") is not None:
            yield CounterMetricFamily("krmlx_worker_tokens_out", "tokens the current worker "
                                      "sent (its own counter)", value=s["tokens_out"])
            yield GaugeMetricFamily("krmlx_worker_active_streams", "streams open in the worker",
                                    value=s.get("active_streams") or 0)


class ServeMetrics:
    def __init__(self, engine):
        self.engine = engine
        self.registry = r = CollectorRegistry()
        self.requests = Counter("krmlx_serve_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.ttft = Histogram("krmlx_serve_ttft_seconds", "receipt to first token",
                              buckets=LATENCY_BUCKETS_S, registry=r)
        self.tpot = Histogram("krmlx_serve_tpot_seconds", "time per output token after the "
                              "first", buckets=TPOT_BUCKETS_S, registry=r)
        self.e2e = Histogram("krmlx_serve_e2e_seconds", "receipt to the last token",
                             buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue = Histogram("krmlx_serve_queue_seconds", "receipt to the engine call",
                               buckets=LATENCY_BUCKETS_S, registry=r)
        self.tokens = Counter("krmlx_serve_tokens", "tokens by kind", ["kind"], registry=r)
        self.active_streams = Gauge("krmlx_serve_active_streams", "SSE streams open",
                                    registry=r)
        self.in_flight = Gauge("krmlx_serve_in_flight", "generation requests being served",
                               registry=r)
        self.cut = Counter("krmlx_serve_shutdown_ended", "requests ended by the server at the "
                           "end of its shutdown grace period", ["kind"], registry=r)
        self.engine_collector = EngineCollector()
        r.register(self.engine_collector)

    def count_request(self, path: str, status: int) -> None:
        self.requests.labels(path if path in ROUTES else "other", str(status)).inc()

    def observe(self, timings: dict, usage: dict) -> None:
        """One finished generation's timings (``*_ms``) and usage."""
        for hist, key in ((self.ttft, "ttft_ms"), (self.tpot, "tpot_ms"), (self.e2e, "e2e_ms"),
                          (self.queue, "queue_ms")):
            if timings.get(key) is not None:
                hist.observe(timings[key] / 1e3)
        self.tokens.labels("prompt").inc(usage.get("prompt_tokens", 0))
        self.tokens.labels("completion").inc(usage.get("completion_tokens", 0))

    async def render(self) -> bytes:
        self.engine_collector.snapshot = await engine_status(self.engine)
        return generate_latest(self.registry)


def parse_metrics(text: str, prefix: str = "krmlx_") -> list[dict]:
    """The samples of a Prometheus text exposition (e.g. ``GET /metrics``) whose name starts
    with ``prefix``, as rows ``{"name", "labels", "value"}`` (parsed by prometheus_client)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [{"name": s.name, "labels": ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())),
             "value": s.value}
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith(prefix)]
