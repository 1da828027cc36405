#!/usr/bin/env python3
"""Ingest and storage benchmark, every figure a ratio measured in one run.

1. `hopscope simulate --output` writes a corpus of N spans as pre-encoded OTLP export requests.
2. For OTLP/gRPC and OTLP/HTTP protobuf, `hopscope load` (a process of its own) replays the corpus
   into a fresh server twice: once with storage switched off (`serve --discard`: the same
   receivers decode, validate and convert, then drop; the ceiling) and once storing (WAL with fsync,
   trace buffer, sorted zstd Parquet, manifest commits). Reported: sustained spans/s and MB/s
   (until the last span is committed, not only acknowledged), the ratio to the ceiling, the rate
   of acknowledgements, the server's CPU-seconds per million spans, its peak resident memory, and
   how long after the last acknowledgement every span was committed, and the bytes the write-ahead
   log wrote against the corpus's OTLP bytes. Over gRPC, a third run stores
   without the derived tables (`serve --no-derive`): what deriving at flush costs; then further
   pairs of gRPC runs, with and without deriving, alternate (`--derive-pairs`): one pair's share
   moves by tens of points from run to run, so the median and range of all pairs are reported.
3. Acknowledgement to queryable: single traces exported to an idle server, timed until
   `GET /api/v1/traces/{id}` returns them.
4. Storage: bytes per span in the Parquet files (as written, and after `hopscope compact`), against
   the raw OTLP protobuf of the same spans and that protobuf compressed with zstd (level 3, the
   whole corpus as one stream); the span files' bytes per column after compaction (what a layout
   change could save); the derived files beside them, against the span files.

Run through `bench/run ingest --spans N` (which builds the release binary and the virtualenv).
"""

import argparse
import json
import os
import secrets
import shutil
import statistics
import tempfile
import time
import urllib.error
import urllib.request

import duckdb
import zstandard

from harness import Server, committed_derived_files, committed_files, die, machine, run, ROOT


def load(binary, corpus, protocol, server, concurrency):
    endpoint = f"http://{server.grpc if protocol == 'grpc' else server.http}"
    out = run(binary, "load", "--corpus", corpus, "--protocol", protocol, "--endpoint", endpoint,
              "--concurrency", str(concurrency), "--json")
    return json.loads(out)


def wait(condition, what, timeout=1800):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            die(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def ingest_run(binary, corpus, spans, protocol, discard, work, concurrency, derive=True):
    mode = "discard" if discard else "store" if derive else "store-underived"
    data_dir = os.path.join(work, f"data-{protocol}-{mode}")
    shutil.rmtree(data_dir, ignore_errors=True)
    server = Server(binary, data_dir, *(["--discard"] if discard else []), *([] if derive else ["--no-derive"]))
    try:
        cpu_before = server.cpu_seconds()
        result = load(binary, corpus, protocol, server, concurrency)
        acked = time.perf_counter()
        drain = 0.0
        if not discard:
            wait(lambda: server.metric("hopscope_ingest_spans_committed_total") >= spans, "committing every span")
            drain = time.perf_counter() - acked
            # Every byte the write-ahead log wrote (refused and retried requests are not logged).
            result["wal_bytes"] = server.metric("hopscope_wal_written_bytes_total")
        # Sustained: until the last span is committed, not only acknowledged.
        result["sustained"] = spans / (result["seconds"] + drain)
        result["cpu_per_million"] = (server.cpu_seconds() - cpu_before) / spans * 1e6
        result["peak_rss"] = server.peak_rss()
        # What stays resident once every span is committed and nothing is buffered.
        result["rss_after"] = server.rss()
        result["drain"] = drain
    finally:
        server.stop()
    return result, data_dir


def ack_to_queryable(binary, work, probes):
    """Seconds from an export's acknowledgement until the API returns its trace, per probe."""
    # A fresh directory: a work directory kept from an earlier run (--work-dir) may hold files
    # another build wrote.
    data_dir = os.path.join(work, "data-latency")
    shutil.rmtree(data_dir, ignore_errors=True)
    server = Server(binary, data_dir)
    times = []
    try:
        for _ in range(probes):
            trace_id = secrets.token_hex(16)
            now = time.time_ns()
            body = {"resourceSpans": [{"resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "probe"}}]}, "scopeSpans": [{"spans": [{
                    "traceId": trace_id, "spanId": secrets.token_hex(8), "name": "probe", "kind": 2,
                    "startTimeUnixNano": str(now), "endTimeUnixNano": str(now + 1_000_000)}]}]}]}
            request = urllib.request.Request(f"http://{server.http}/v1/traces", data=json.dumps(body).encode(),
                                             headers={"content-type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                response.read()
            acked = time.perf_counter()

            def visible():
                try:
                    with urllib.request.urlopen(f"http://{server.api}/api/v1/traces/{trace_id}", timeout=60):
                        return True
                except urllib.error.HTTPError as e:
                    if e.code != 404:
                        die(f"trace lookup failed: {e.code}")
                    return False

            wait(visible, "the probe trace becoming queryable", timeout=120)
            times.append(time.perf_counter() - acked)
    finally:
        server.stop()
    return times


def column_bytes(files):
    """Compressed bytes of each top-level column over `files`, largest first (from the footers)."""
    rows = duckdb.connect().execute(
        "SELECT split_part(path_in_schema, ',', 1) AS col, sum(total_compressed_size) AS bytes "
        "FROM parquet_metadata(?) GROUP BY col ORDER BY bytes DESC", [list(files)]).fetchall()
    return [(col, int(size)) for col, size in rows]


def parquet_bytes(data_dir):
    return sum(os.path.getsize(f) for f in committed_files(data_dir))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "hopscope"))
    parser.add_argument("--concurrency", type=int, default=8, help="requests `hopscope load` keeps in flight")
    parser.add_argument("--probes", type=int, default=5, help="acknowledgement-to-queryable probes")
    parser.add_argument("--work-dir", help="where to keep the data (default: a temporary directory)")
    parser.add_argument("--derive-pairs", type=int, default=3,
                        help="gRPC runs with and without deriving, alternating, for deriving's CPU share (at least 1)")
    args = parser.parse_args()
    if args.derive_pairs < 1:
        parser.error(f"--derive-pairs: at least 1, got {args.derive_pairs}")

    work = args.work_dir or tempfile.mkdtemp(prefix="hopscope-ingest-bench-")
    os.makedirs(work, exist_ok=True)
    corpus = os.path.join(work, "corpus.bin")
    out = run(args.binary, "simulate", "--output", corpus, "--spans", str(args.spans), "--seed", "1",
              "--backfill", "1h", "--scenario", "all")
    spans = int(out.split("sent ")[1].split()[0])
    raw = os.path.getsize(corpus)

    rows = []
    stored = None
    for protocol in ("grpc", "http"):
        ceiling, _ = ingest_run(args.binary, corpus, spans, protocol, True, work, args.concurrency)
        storing, data_dir = ingest_run(args.binary, corpus, spans, protocol, False, work, args.concurrency)
        if storing["spans"] != spans or ceiling["spans"] != spans:
            die(f"load sent {storing['spans']} / {ceiling['spans']} spans of {spans}")
        rows.append((protocol, ceiling, storing))
        stored = data_dir
        if protocol == "grpc":
            underived, underived_dir = ingest_run(args.binary, corpus, spans, protocol, False, work,
                                                  args.concurrency, derive=False)
            shutil.rmtree(underived_dir, ignore_errors=True)

    # Deriving's share of the storing CPU, pair by pair: the first pair is the runs above.
    pairs = [(rows[0][2], underived)]
    for _ in range(args.derive_pairs - 1):
        with_derived, with_dir = ingest_run(args.binary, corpus, spans, "grpc", False, work, args.concurrency)
        without, without_dir = ingest_run(args.binary, corpus, spans, "grpc", False, work, args.concurrency,
                                          derive=False)
        shutil.rmtree(with_dir, ignore_errors=True)
        shutil.rmtree(without_dir, ignore_errors=True)
        pairs.append((with_derived, without))
    shares = [1 - without["cpu_per_million"] / with_derived["cpu_per_million"] for with_derived, without in pairs]

    latencies = ack_to_queryable(args.binary, work, args.probes)

    # Storage, from the last storing run; then compacted offline.
    written = parquet_bytes(stored)
    derived_by_table = {}
    for table, path in committed_derived_files(stored):
        derived_by_table[table] = derived_by_table.get(table, 0) + os.path.getsize(path)
    derived_written = sum(derived_by_table.values())
    files_written = len(committed_files(stored))
    run(args.binary, "compact", "--data-dir", stored)
    compacted = parquet_bytes(stored)
    files_compacted = len(committed_files(stored))
    derived_compacted = sum(os.path.getsize(path) for _, path in committed_derived_files(stored))
    by_column = column_bytes(committed_files(stored))
    # The corpus is the raw protobuf plus 8 bytes of framing per request and a 12-byte header.
    requests = rows[0][2]["requests"]
    otlp = raw - 12 - 8 * requests
    with open(corpus, "rb") as f:
        zstd_otlp = len(zstandard.ZstdCompressor(level=3).compress(f.read()))
    # Each request compressed on its own, as an exporter's zstd or a log of requests would.
    compressor = zstandard.ZstdCompressor(level=3)
    zstd_requests = 0
    with open(corpus, "rb") as f:
        f.read(12)
        while header := f.read(8):
            length = int.from_bytes(header[4:], "little")
            zstd_requests += len(compressor.compress(f.read(length)))

    print(f"\n{spans:,} spans in {requests:,} requests ({otlp / spans:.0f} B/span of OTLP protobuf), "
          f"`hopscope load` with {args.concurrency} requests in flight; machine: {machine()}\n")
    print("| protocol | storing, sustained: spans/s (MB/s) | ceiling (`--discard`): spans/s (MB/s) "
          "| storing / ceiling | acknowledged at (spans/s) | CPU-s per 1M spans (storing, ceiling) "
          "| peak RSS (storing, ceiling) | RSS once all committed | last ack → all committed "
          "| WAL bytes / OTLP bytes |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for protocol, ceiling, storing in rows:
        mb = storing["sustained"] * otlp / spans / 1e6
        print(f"| OTLP/{'gRPC' if protocol == 'grpc' else 'HTTP protobuf'} "
              f"| {storing['sustained']:,.0f} ({mb:.1f}) "
              f"| {ceiling['spans_per_second']:,.0f} ({ceiling['megabytes_per_second']:.1f}) "
              f"| {storing['sustained'] / ceiling['spans_per_second']:.2f}× "
              f"| {storing['spans_per_second']:,.0f} "
              f"| {storing['cpu_per_million']:.1f}, {ceiling['cpu_per_million']:.1f} "
              f"| {storing['peak_rss'] / 2**20:.0f} MiB, {ceiling['peak_rss'] / 2**20:.0f} MiB "
              f"| {storing['rss_after'] / 2**20:.0f} MiB "
              f"| {storing['drain']:.1f} s | {storing['wal_bytes'] / otlp:.2f}× |")
    bound = 512 * 2**20  # `serve`'s default --max-buffered-bytes, which the runs keep
    print(f"\nmemory: the peak RSS storing is {max(r[2]['peak_rss'] for r in rows) / bound:.2f}× the default "
          f"--max-buffered-bytes (512 MiB); the target is ≤ 1.5× + 256 MiB, i.e. "
          f"{(1.5 * bound + 256 * 2**20) / bound:.2f}×")
    grpc_storing = rows[0][2]
    print(f"\nderiving at flush (OTLP/gRPC): {grpc_storing['cpu_per_million']:.1f} CPU-s per 1M spans storing "
          f"with the derived tables, {underived['cpu_per_million']:.1f} without (`serve --no-derive`): "
          f"deriving is {1 - underived['cpu_per_million'] / grpc_storing['cpu_per_million']:.0%} of the "
          f"storing path's CPU; sustained {grpc_storing['sustained']:,.0f} vs {underived['sustained']:,.0f} spans/s")
    print(f"deriving's share over {len(shares)} alternating pairs of gRPC runs: median "
          f"{statistics.median(shares):.0%} (range {min(shares):.0%} to {max(shares):.0%}; CPU-s per 1M spans with, "
          "without: " + ", ".join(f"{w['cpu_per_million']:.1f}/{o['cpu_per_million']:.1f}" for w, o in pairs) + ")")
    print(f"\nacknowledgement → queryable, single traces on an idle server: median "
          f"{statistics.median(latencies):.2f} s (min {min(latencies):.2f}, max {max(latencies):.2f}, "
          f"{len(latencies)} probes)\n")
    print("| storage | bytes | B/span | / zstd OTLP |")
    print("|---|---:|---:|---:|")
    for name, size in [("OTLP protobuf, raw", otlp), ("OTLP protobuf, zstd -3 per request", zstd_requests),
                       ("OTLP protobuf, zstd -3 (one stream)", zstd_otlp),
                       (f"hopscope Parquet as written ({files_written} files)", written),
                       (f"hopscope Parquet after `hopscope compact` ({files_compacted} files)", compacted)]:
        print(f"| {name} | {size:,} | {size / spans:.1f} | {size / zstd_otlp:.2f}× |")
    print("\nspan files after `hopscope compact`, B/span per column (the largest; nested columns summed): "
          + ", ".join(f"{column} {size / spans:.2f}" for column, size in by_column[:8])
          + f"; the other {len(by_column) - 8} columns {sum(size for _, size in by_column[8:]) / spans:.2f}")
    print(f"derived files as written: {derived_written:,} bytes, {derived_written / spans:.1f} B/span, "
          f"{derived_written / written:.2f}× the span files; per table (B/span): "
          + ", ".join(f"{table} {size / spans:.1f}" for table, size in sorted(derived_by_table.items())))
    print(f"derived files after `hopscope compact`: {derived_compacted:,} bytes, {derived_compacted / spans:.1f} "
          f"B/span, {derived_compacted / compacted:.2f}× the span files")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
