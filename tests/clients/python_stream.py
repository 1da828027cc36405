"""Sends traces of two spans, one after another, through both official OpenTelemetry Python OTLP
exporters (gRPC and HTTP/protobuf, taking turns), as --tenant, until its standard input is closed
(or --max-seconds pass), then prints {"acknowledged": [...], "failed": [...]} as JSON: the trace ids
whose every span's export was acknowledged, and those with an export that failed (after the
exporter's own retries).

The servers it sends to may be killed and restarted while it runs: that is what it is for. It
prints one line to standard error per 20 traces sent, so that a test can tell it is sending."""

import argparse
import collections
import json
import sys
import threading
import time

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind


class Recording(SpanExporter):
    """An exporter that notes, per trace, which exports were acknowledged and which failed."""

    def __init__(self, inner):
        self.inner = inner
        self.acknowledged = collections.Counter()
        self.failed = set()

    def export(self, spans):
        result = self.inner.export(spans)
        for span in spans:
            trace_id = format(span.context.trace_id, "032x")
            if result == SpanExportResult.SUCCESS:
                self.acknowledged[trace_id] += 1
            else:
                self.failed.add(trace_id)
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return self.inner.force_flush(timeout_millis)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grpc", required=True, help="OTLP/gRPC endpoint, e.g. http://127.0.0.1:4317")
    parser.add_argument("--http", required=True, help="OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces")
    parser.add_argument("--tenant", required=True, help="the tenant to send as, in the X-Scope-OrgID header")
    parser.add_argument("--interval-ms", type=float, default=10, help="pause between traces")
    parser.add_argument("--max-seconds", type=float, default=120, help="stop after this long in any case")
    args = parser.parse_args()
    headers = {"x-scope-orgid": args.tenant}
    stop = threading.Event()

    def until_stdin_closes():
        sys.stdin.read()
        stop.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    recorders = []
    tracers = []
    for protocol, exporter in [
        ("grpc", GrpcExporter(endpoint=args.grpc, insecure=True, timeout=10, headers=headers)),
        ("http", HttpExporter(endpoint=args.http, timeout=10, headers=headers)),
    ]:
        recording = Recording(exporter)
        provider = TracerProvider(resource=Resource.create({"service.name": f"stream-{protocol}"}))
        provider.add_span_processor(SimpleSpanProcessor(recording))
        recorders.append(recording)
        tracers.append(provider.get_tracer("hopscope-e2e-stream"))
    started = time.monotonic()
    sent = 0
    while not stop.is_set() and time.monotonic() - started < args.max_seconds:
        tracer = tracers[sent % 2]
        with tracer.start_as_current_span("GET /stream", kind=SpanKind.SERVER):
            with tracer.start_as_current_span("call inventory", kind=SpanKind.CLIENT) as child:
                child.set_attribute("peer.service", "inventory")
        sent += 1
        if sent % 20 == 0:
            print(f"sent {sent} traces", file=sys.stderr, flush=True)
        time.sleep(args.interval_ms / 1000)
    acknowledged = []
    failed = []
    for recording in recorders:
        for trace_id, count in recording.acknowledged.items():
            if count == 2 and trace_id not in recording.failed:
                acknowledged.append(trace_id)
        failed.extend(recording.failed)
    print(json.dumps({"acknowledged": acknowledged, "failed": failed}))


if __name__ == "__main__":
    main()
