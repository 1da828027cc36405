"""Exports one metric or one log record (`--signal`) through the official OpenTelemetry Python OTLP
exporters (HTTP/protobuf and gRPC) to a server that stores traces only, and prints as JSON what
each exporter reported: {"http": {"ok": bool, "log": "..."}, "grpc": {...}}. What the exporters
log is what a user of the SDK sees. One signal per process: the gRPC exporters' logger drops a
message logged with the same template within 20 seconds, so a second signal's failure would not
be logged at all."""

import argparse
import json
import logging

from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader


class Captured(logging.Handler):
    """Every record the exporters log."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def metrics_data():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("hopscope-e2e").create_counter("requests").add(1)
    data = reader.get_metrics_data()
    provider.shutdown()
    return data


def log_records():
    """One log record, as the SDK's logging handler makes it."""
    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    app = logging.getLogger("hopscope-e2e-app")
    handler = LoggingHandler(logger_provider=provider)
    app.addHandler(handler)
    app.warning("a log record for a traces-only backend")
    app.removeHandler(handler)
    provider.shutdown()
    return memory.get_finished_logs()


def export(exporter, data, captured):
    """Exports `data` once through `exporter`: whether it succeeded, and what the exporter logged."""
    captured.lines.clear()
    result = exporter.export(data)
    exporter.shutdown()
    return {"ok": result.name == "SUCCESS", "log": "\n".join(captured.lines)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--grpc", required=True, help="OTLP/gRPC endpoint, e.g. http://127.0.0.1:4317")
    parser.add_argument("--http", required=True, help="OTLP/HTTP base URL, e.g. http://127.0.0.1:4318")
    parser.add_argument("--signal", required=True, choices=["metrics", "logs"])
    args = parser.parse_args()
    captured = Captured()
    exporters = logging.getLogger("opentelemetry.exporter")
    exporters.addHandler(captured)
    exporters.setLevel(logging.INFO)
    exporters.propagate = False
    if args.signal == "metrics":
        report = {
            "http": export(HttpMetricExporter(endpoint=f"{args.http}/v1/metrics", timeout=10), metrics_data(), captured),
            "grpc": export(GrpcMetricExporter(endpoint=args.grpc, insecure=True, timeout=10), metrics_data(), captured),
        }
    else:
        report = {
            "http": export(HttpLogExporter(endpoint=f"{args.http}/v1/logs", timeout=10), log_records(), captured),
            "grpc": export(GrpcLogExporter(endpoint=args.grpc, insecure=True, timeout=10), log_records(), captured),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
