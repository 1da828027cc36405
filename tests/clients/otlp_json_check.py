"""Reads an answer holding OTLP/JSON traces ({"result": {"resourceSpans": [...]}}, as Jaeger's api_v3
answers) from the file named by its argument, parses it strictly into the OTLP protobuf `TracesData` of the `opentelemetry-proto`
package (an unknown or mistyped field fails), and prints its spans as JSON: ids in hex, enums as
numbers, attribute values as plain JSON, so that a test can compare them with what was stored.

OTLP/JSON differs from protobuf's JSON mapping in one way: trace and span ids are hex, not base64.
They are turned into base64 before parsing (and must be valid hex of the right length)."""

import base64
import json
import sys

from google.protobuf import json_format
from opentelemetry.proto.trace.v1 import trace_pb2


def hex_to_base64(value: str, length: int) -> str:
    raw = bytes.fromhex(value)
    if len(raw) != length:
        raise SystemExit(f"id {value!r} is {len(raw)} bytes, expected {length}")
    return base64.b64encode(raw).decode()


def fix_ids(item: dict) -> None:
    for key, length in (("traceId", 16), ("spanId", 8), ("parentSpanId", 8)):
        if key in item:
            item[key] = hex_to_base64(item[key], length)


def plain(value):
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, kind)


def attributes(kvs) -> dict:
    return {kv.key: plain(kv.value) for kv in kvs}


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as file:
        answer = json.load(file)
    result = answer["result"]
    for resource_spans in result.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                fix_ids(span)
                for link in span.get("links", []):
                    fix_ids(link)
    data = json_format.ParseDict(result, trace_pb2.TracesData(), ignore_unknown_fields=False)
    spans = []
    for resource_spans in data.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    {
                        "resource": attributes(resource_spans.resource.attributes),
                        "scope": scope_spans.scope.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex() or None,
                        "name": span.name,
                        "kind": span.kind,
                        "start": str(span.start_time_unix_nano),
                        "end": str(span.end_time_unix_nano),
                        "status": [span.status.code, span.status.message],
                        "attributes": attributes(span.attributes),
                        "events": [
                            {"name": e.name, "time": str(e.time_unix_nano), "attributes": attributes(e.attributes)}
                            for e in span.events
                        ],
                    }
                )
    print(json.dumps({"resource_spans": len(data.resource_spans), "spans": spans}))


if __name__ == "__main__":
    main()
