"""Reads an answer holding traces from the file named by its first argument, parses it strictly into
the OTLP protobuf `TracesData` of the `opentelemetry-proto` package, and prints its spans as JSON:
ids in hex, enums as numbers, attribute values as plain JSON, so that a test can compare them with
what was stored. The second argument says what the file holds:

- `jaeger-v3`: OTLP/JSON as Jaeger's api_v3 answers, `{"result": {"resourceSpans": [...]}}` (an
  unknown or mistyped field fails). OTLP/JSON differs from protobuf's JSON mapping in one way:
  trace and span ids are hex, not base64; they are turned into base64 before parsing (and must be
  valid hex of the right length).
- `tempo-v1`: protobuf, Tempo's `Trace` (the same bytes as OTLP's `TracesData`).
- `tempo-v2`: protobuf, Tempo's `TraceByIDResponse`, whose field 1 is the `Trace` (the only field
  set here; anything else fails).
"""

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


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7


def parse(path: str, kind: str):
    if kind == "jaeger-v3":
        with open(path, encoding="utf-8") as file:
            result = json.load(file)["result"]
        for resource_spans in result.get("resourceSpans", []):
            for scope_spans in resource_spans.get("scopeSpans", []):
                for span in scope_spans.get("spans", []):
                    fix_ids(span)
                    for link in span.get("links", []):
                        fix_ids(link)
        return json_format.ParseDict(result, trace_pb2.TracesData(), ignore_unknown_fields=False)
    with open(path, "rb") as file:
        data = file.read()
    if kind == "tempo-v2":
        if not data or data[0] != 0x0A:
            raise SystemExit(f"expected field 1 (the trace) first, got {data[:1]!r}")
        length, start = read_varint(data, 1)
        if start + length != len(data):
            raise SystemExit(f"field 1 holds {length} bytes, {len(data) - start} follow: another field is set")
        data = data[start:]
    elif kind != "tempo-v1":
        raise SystemExit(f"unknown kind {kind!r}")
    parsed = trace_pb2.TracesData()
    parsed.ParseFromString(data)
    parsed.DiscardUnknownFields()
    if parsed.SerializeToString() != data:
        raise SystemExit("the protobuf holds fields TracesData does not have, or not as protobuf writes them")
    return parsed


def main() -> None:
    data = parse(sys.argv[1], sys.argv[2])
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
