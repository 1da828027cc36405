"""Two helpers for the test of the series Grafana reads from hopscope's /metrics.

`send`: builds traces with the OpenTelemetry Python SDK (one TracerProvider per service: gateway
calls orders, orders queries PostgreSQL, gateway publishes to Kafka and billing consumes) and
exports them all in one request through the official OTLP/HTTP exporter, so no trace is split
across flushes. Prints what it sent as JSON: every hop (client, server, Tempo's connection_type,
client and server durations in ns, whether it failed) and every span (service, name, kind, status).

`parse`: reads an OpenMetrics exposition on stdin, parses it with prometheus_client's parser and
prints its samples as JSON [name, labels, value].
"""

import argparse
import json
import random
import sys
import time

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

MS = 1_000_000


class Collect(SpanProcessor):
    """Keeps every ended span, to export them all at once."""

    def __init__(self, into):
        self.into = into

    def on_end(self, span):
        self.into.append(span)


def send(url: str, traces: int, seed: int) -> None:
    rng = random.Random(seed)
    ended = []
    tracers = {}
    for service in ["gateway", "orders", "billing"]:
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(Collect(ended))
        tracers[service] = provider.get_tracer("hopscope-e2e-grafana")
    hops, spans = [], []

    def span(service, name, kind, start, end, parent=None, error=False, attributes=None):
        context = trace.set_span_in_context(parent) if parent is not None else None
        s = tracers[service].start_span(name, context=context, kind=kind, start_time=start, attributes=attributes)
        if error:
            s.set_status(Status(StatusCode.ERROR, "failed"))
        s.end(end_time=end)
        spans.append([service, name, kind.name, "ERROR" if error else "UNSET"])
        return s

    # The last few minutes: inside the default range of every API call.
    base = time.time_ns() - 180 * 1_000 * MS
    for i in range(traces):
        t = base + i * 200 * MS
        total = rng.randint(50, 150) * MS
        client = rng.randint(10_000, 40_000) * 1_000
        server = client - rng.randint(1_000, 5_000) * 1_000
        db = rng.randint(500, 5_000) * 1_000
        consumed = rng.randint(2, 30) * MS
        rpc_failed = i % 5 == 0
        db_failed = i % 7 == 0
        root = span("gateway", "GET /checkout", SpanKind.SERVER, t, t + total)
        call = span("gateway", "GET /orders", SpanKind.CLIENT, t + 5 * MS, t + 5 * MS + client, root, rpc_failed)
        served = span("orders", "GET /orders", SpanKind.SERVER, t + 6 * MS, t + 6 * MS + server, call, rpc_failed)
        span("orders", "SELECT orders", SpanKind.CLIENT, t + 7 * MS, t + 7 * MS + db, served, db_failed,
             {"db.system": "postgresql", "db.namespace": "shop"})
        produced = span("gateway", "publish order", SpanKind.PRODUCER, t + 40 * MS, t + 41 * MS, root, False,
                        {"messaging.system": "kafka", "messaging.destination.name": "orders"})
        span("billing", "process order", SpanKind.CONSUMER, t + 45 * MS, t + 45 * MS + consumed, produced)
        hops += [
            ["user", "gateway", "virtual_node", None, total, False],
            ["gateway", "orders", "", client, server, rpc_failed],
            ["orders", "postgresql/shop", "database", db, None, db_failed],
            ["gateway", "billing", "messaging_system", 1 * MS, consumed, False],
        ]
    result = OTLPSpanExporter(endpoint=url, timeout=30).export(ended)
    if result != SpanExportResult.SUCCESS:
        raise SystemExit(f"export failed: {result}")
    print(json.dumps({"hops": hops, "spans": spans}))


def parse() -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    samples = []
    for family in text_string_to_metric_families(sys.stdin.read()):
        for sample in family.samples:
            samples.append([sample.name, sample.labels, sample.value])
    print(json.dumps(samples))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    sending = sub.add_parser("send")
    sending.add_argument("--http", required=True, help="OTLP/HTTP traces URL")
    sending.add_argument("--traces", type=int, default=200)
    sending.add_argument("--seed", type=int, default=7)
    sub.add_parser("parse")
    args = parser.parse_args()
    if args.command == "send":
        send(args.http, args.traces, args.seed)
    else:
        parse()


if __name__ == "__main__":
    main()
