"""krmlx.bench.otel: a real run's records sent as OpenTelemetry spans over OTLP/HTTP to a
receiver on 127.0.0.1 that decodes them with opentelemetry-proto, as a collector does."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from krmlx import timeline as T
from krmlx.bench import otel
from krmlx.errors import KrmlxError


def value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind)


class Receiver(ThreadingHTTPServer):
    """POST /v1/traces: keeps each span as a dict (with its resource's attributes);
    answers 400 while ``refuse`` is set."""

    def __init__(self):
        self.spans: list[dict] = []
        self.refuse = False
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces" or self.server.refuse:
            self.send_response(400)
            self.end_headers()
            return
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            resource = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.server.spans.append({
                        "name": s.name, "kind": s.kind, "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(), "parent": s.parent_span_id.hex(),
                        "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                        "status": s.status.code, "resource": resource,
                        "attributes": {a.key: value(a.value) for a in s.attributes}})
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_a_run_arrives_as_one_trace_per_request_with_its_hops(tiny_path, receiver, tmp_path):
    from krmlx.bench import export_otlp, make_workload, run_workload
    from krmlx.bench.results import write_results
    from krmlx.cli import main

    before = time.time_ns()
    doc = asyncio.run(run_workload(make_workload("baseline", smoke=True, questions=4, max_tokens=6,
                                                 warmup=False), "tiny", targets=["direct", "engine"]))
    after = time.time_ns()
    n = export_otlp(doc, receiver.url)
    assert n == len(receiver.spans)
    roots = {s["span_id"]: s for s in receiver.spans if not s["parent"]}
    ok = [r for r in doc["records"] if r["ok"]]
    assert len(roots) == len(ok) == 8
    by_request = {(r["attributes"]["krmlx.target"], r["attributes"]["krmlx.request_id"]): r
                  for r in roots.values()}
    for rec in ok:
        root = by_request[(rec["target"], rec["request_id"])]
        assert root["name"] == "chat tiny" and root["kind"] == Span.SPAN_KIND_CLIENT
        assert root["attributes"] == {
            "gen_ai.operation.name": "chat", "gen_ai.request.model": "tiny",
            "gen_ai.request.max_tokens": 6, "gen_ai.usage.input_tokens": rec["prompt_tokens"],
            "gen_ai.usage.output_tokens": rec["output_tokens"],
            "gen_ai.response.finish_reasons": [rec["finish_reason"]],
            "krmlx.target": rec["target"], "krmlx.trial": 0, "krmlx.request_id": rec["request_id"],
            "krmlx.ttft_ms": pytest.approx(rec["ttft_ms"])}
        assert root["resource"]["service.name"] == "krmlx" and root["resource"]["krmlx.clock"] == "run"
        assert before <= root["start"] < root["end"] <= after  # the run's wall clock
        assert (root["end"] - root["start"]) / 1e6 == pytest.approx(rec["e2e_ms"], abs=1e-3)
        children = sorted((s for s in receiver.spans if s["parent"] == root["span_id"]),
                          key=lambda s: s["start"])
        assert {s["trace_id"] for s in children} == {root["trace_id"]}
        hops, decode = children[:-1], children[-1]
        assert [s["name"] for s in hops] == list(T.ttft_hops(rec["timeline"]))
        assert hops[0]["start"] == root["start"] and decode["name"] == "decode"
        assert all(a["end"] == b["start"] for a, b in zip(hops, children[1:], strict=True))  # they tile
        assert sum(s["end"] - s["start"] for s in hops) / 1e6 == pytest.approx(rec["ttft_ms"], abs=1e-3)
        assert decode["end"] == root["end"] and decode["attributes"]["krmlx.token.step_ms"] > 0
    served = by_request[("phase0", ok[0]["request_id"])]
    names = {s["name"] for s in receiver.spans if s["parent"] == served["span_id"]}
    assert {"client_written", "worker_read", "queued", "job_start", "sampled"} <= names

    path = write_results(tmp_path / "run.json", **doc)  # and the same through the CLI
    receiver.spans.clear()
    assert main(["otel", str(path), "--endpoint", f"{receiver.url}/v1/traces"]) == 0
    assert len(receiver.spans) == n


def test_an_endpoint_that_refuses_is_an_error(receiver):
    receiver.refuse = True
    doc = {"config": {"model": "m"}, "records": [
        {"target": "t", "trial": 0, "request_id": "r", "ok": True, "t_start_s": 1.0,
         "ttft_ms": 2.0, "e2e_ms": 3.0, "timeline": {"encoded": 1.0, "sampled": [2.0]}}]}
    with pytest.raises(KrmlxError, match="OTLP export .* failed"):
        otel.export_otlp(doc, receiver.url, timeout_s=2)


def test_old_files_failures_and_hops_out_of_order():
    """A file without a clock anchor is placed as if it ended now; a failed request is an
    ERROR span without children; a hop the timeline saw negative is an empty span and the
    hops still tile the TTFT."""
    doc = {"config": {"model": "m"}, "records": [
        {"target": "serve", "trial": 1, "request_id": "a", "ok": True, "chat": False,
         "t_start_s": 10.0, "t_end_s": 10.05, "ttft_ms": 30.0, "e2e_ms": 50.0,
         "timeline": {"http_sent": 5.0, "serve_received": 4.0, "serve_ready": 8.0,
                      "http_content": [30.0, 40.0]}},
        {"target": "serve", "trial": 1, "request_id": "b", "ok": False, "t_start_s": 10.1,
         "error": "HttpError: HTTP 503: busy", "e2e_ms": 1.0},
        {"target": "serve", "kind": "ping", "ok": True, "t_start_s": 10.2, "e2e_ms": 0.1}]}
    now = time.time_ns()
    spans = otel.spans(doc)
    roots = [s for s in spans if s.parent is None]
    assert [s.name for s in roots] == ["text_completion m", "chat m"]  # no span for the ping
    assert {s.resource.attributes["krmlx.clock"] for s in spans} == {"export"}
    ok, failed = roots
    assert abs(ok.end_time - now) < 5e8  # 'a' ended about now
    hops = sorted((s for s in spans if s.parent and s.parent.span_id == ok.context.span_id
                   and s.name != "decode"), key=lambda s: s.start_time)
    assert [(s.name, (s.end_time - s.start_time) / 1e6, s.attributes["krmlx.hop_ms"]) for s in hops] == [
        ("http_sent", 5.0, 5.0), ("serve_received", 0.0, -1.0), ("serve_ready", 3.0, 4.0),
        ("http_content", 22.0, 22.0)]
    assert failed.status.status_code.name == "ERROR" and failed.attributes["error.type"] == "HttpError"
    assert not [s for s in spans if s.parent and s.parent.span_id == failed.context.span_id]


def test_without_the_sdk_the_error_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(otel, "TracerProvider", None)
    with pytest.raises(KrmlxError, match=r"pip install 'krmlx\[otel\]'"):
        otel.spans({"records": []})
