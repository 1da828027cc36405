"""Sends one small trace (or --traces N) through each official OpenTelemetry Python OTLP exporter
(gRPC and HTTP/protobuf), as a tenant and with a token when --tenant and --token say so, and prints
{"grpc": trace_id, "http": trace_id, "traces": {"grpc": [trace_id, ...], "http": [...]}} as JSON
(the first trace of each exporter, then all of them)."""

import argparse
import json

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode


def send(protocol: str, exporter, traces: int) -> list[str]:
    provider = TracerProvider(resource=Resource.create({"service.name": f"python-{protocol}"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("hopscope-e2e-python")
    trace_ids = []
    for _ in range(traces):
        with tracer.start_as_current_span(f"GET /python/{protocol}", kind=SpanKind.SERVER) as root:
            trace_ids.append(format(root.get_span_context().trace_id, "032x"))
            with tracer.start_as_current_span("call inventory", kind=SpanKind.CLIENT) as child:
                child.set_attribute("peer.service", "inventory")
                child.set_attribute("retries", 3)
                child.set_attribute("cache.hit", False)
                child.set_attribute("tags", ["a", "b"])
                child.add_event("retrying", {"attempt": 2})
                child.set_status(Status(StatusCode.ERROR, "upstream timed out"))
    if not provider.force_flush(30_000):
        raise SystemExit(f"{protocol} exporter did not flush")
    provider.shutdown()
    return trace_ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grpc", required=True, help="OTLP/gRPC endpoint, e.g. http://127.0.0.1:4317")
    parser.add_argument("--http", required=True, help="OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces")
    parser.add_argument("--tenant", help="the tenant to send as, in the X-Scope-OrgID header")
    parser.add_argument("--token", help="a token to present, as Authorization: Bearer")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="gRPC over TLS (the CA from OTEL_EXPORTER_OTLP_CERTIFICATE, as for HTTP with an https URL)",
    )
    parser.add_argument("--traces", type=int, default=1, help="traces to send through each exporter")
    args = parser.parse_args()
    headers = {}
    if args.tenant:
        headers["x-scope-orgid"] = args.tenant
    if args.token:
        headers["authorization"] = f"Bearer {args.token}"
    headers = headers or None
    traces = {
        "grpc": send(
            "grpc", GrpcExporter(endpoint=args.grpc, insecure=not args.tls, timeout=30, headers=headers), args.traces
        ),
        "http": send("http", HttpExporter(endpoint=args.http, timeout=30, headers=headers), args.traces),
    }
    print(json.dumps({"grpc": traces["grpc"][0], "http": traces["http"][0], "traces": traces}))


if __name__ == "__main__":
    main()
