"""Sends one small trace through the OpenTelemetry Python SDK's Zipkin exporter (JSON or protobuf)
and prints, as JSON, what was sent: the trace id and each span as the SDK held it (ids, parent,
name, kind, start and end in ns, attributes, events, status).

The JSON exporter comes from tests/requirements.txt; the protobuf one pins protobuf 3 and lives in
its own virtualenv (tests/requirements-zipkin-proto.txt)."""

import argparse
import json

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode


def exporter(encoding: str, url: str):
    if encoding == "json":
        from opentelemetry.exporter.zipkin.json import ZipkinExporter
    else:
        from opentelemetry.exporter.zipkin.proto.http import ZipkinExporter
    return ZipkinExporter(endpoint=url, timeout=30)


def plain(value):
    return list(value) if isinstance(value, tuple) else value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="e.g. http://127.0.0.1:9411/api/v2/spans")
    parser.add_argument("--encoding", choices=["json", "proto"], required=True)
    args = parser.parse_args()

    service = f"zipkin-{args.encoding}"
    provider = TracerProvider(resource=Resource.create({"service.name": service, "deployment.environment": "e2e"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter(args.encoding, args.url)))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("hopscope-e2e-zipkin", "1.2.3")
    with tracer.start_as_current_span(f"GET /{service}", kind=SpanKind.SERVER) as root:
        root.set_attribute("http.route", f"/{service}")
        with tracer.start_as_current_span("call inventory", kind=SpanKind.CLIENT) as child:
            child.set_attribute("peer.service", "inventory")
            child.set_attribute("retries", 3)
            child.set_attribute("cache.hit", False)
            child.set_attribute("tags", ["a", "b"])
            child.add_event("retrying", {"attempt": 2, "reason": "timeout"})
            child.set_status(Status(StatusCode.ERROR, "upstream timed out"))
        with tracer.start_as_current_span("render", kind=SpanKind.INTERNAL):
            pass
    if not provider.force_flush(30_000):
        raise SystemExit(f"the Zipkin {args.encoding} exporter did not flush")
    provider.shutdown()

    spans = []
    for span in memory.get_finished_spans():
        spans.append({
            "span_id": format(span.context.span_id, "016x"),
            "parent_span_id": format(span.parent.span_id, "016x") if span.parent else None,
            "name": span.name,
            "kind": span.kind.name.lower(),
            "start": span.start_time,
            "end": span.end_time,
            "attributes": {k: plain(v) for k, v in span.attributes.items()},
            "events": [{"name": e.name, "time": e.timestamp, "attributes": dict(e.attributes)} for e in span.events],
            "status": [span.status.status_code.name.lower(), span.status.description or ""],
        })
    trace_id = format(root.get_span_context().trace_id, "032x")
    print(json.dumps({"trace_id": trace_id, "service": service, "spans": spans}))


if __name__ == "__main__":
    main()
