#!/usr/bin/env python3
"""Where a storing server's memory goes over time: `hopscope load` replays a corpus over OTLP/gRPC
into a fresh `hopscope serve`, and every quarter second the server's resident memory is sampled
beside what it says it holds (`hopscope_ingest_buffered_bytes`, `hopscope_ingest_reserved_bytes`)
and how far storing has come (spans accepted, spans committed). Sampling stops a few seconds after
the last span is committed. Prints the peak resident memory, the peak before the first maintenance
pass could have merged anything (`--maintenance-interval` after the start), and CPU-seconds; with
`--out`, writes the timeline.

    bench/memory_timeline.py --binary target/release/hopscope --corpus CORPUS [--out FILE] \
        [-- SERVE-ARGS...]

The corpus is one `hopscope simulate --output` wrote (`bench/ingest_bench.py --work-dir DIR` keeps
its corpus as DIR/corpus.bin). Arguments after `--` go to `serve` (e.g. `--maintenance-interval 1h`,
so that no merge runs beside the load).
"""

import argparse
import re
import subprocess
import tempfile
import time

from harness import Server


def seconds(duration):
    """A duration as `serve` takes it (`90s`, `1m 30s`, `1h30m`, `500ms`), in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h)", duration)
    if not parts or re.sub(r"\s", "", duration) != "".join(n + u for n, u in parts):
        raise SystemExit(f"cannot read the duration {duration!r}: use e.g. 90s, 1m30s or 1h")
    return sum(float(n) * units[u] for n, u in parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--out", help="where to write the timeline (one line per sample)")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds sampled once every span is committed")
    parser.add_argument("--concurrency", type=int, default=8, help="requests `hopscope load` keeps in flight")
    parser.add_argument("serve_args", nargs="*", help="after `--`: more arguments for `serve`")
    args = parser.parse_args()
    maintenance_s = 60.0
    if "--maintenance-interval" in args.serve_args:
        maintenance_s = seconds(args.serve_args[args.serve_args.index("--maintenance-interval") + 1])

    with tempfile.TemporaryDirectory(prefix="hopscope-memory-") as data_dir:
        server = Server(args.binary, data_dir, *args.serve_args)
        started = time.monotonic()
        load = subprocess.Popen(
            [args.binary, "load", "--corpus", args.corpus, "--protocol", "grpc", "--endpoint",
             f"http://{server.grpc}", "--concurrency", str(args.concurrency), "--json"],
            stdout=subprocess.DEVNULL)
        samples, idle_until = [], None
        while idle_until is None or time.monotonic() < idle_until:
            at = time.monotonic() - started
            accepted = server.metric("hopscope_ingest_spans_accepted_total")
            committed = server.metric("hopscope_ingest_spans_committed_total")
            samples.append((at, server.rss() >> 20, server.metric("hopscope_ingest_buffered_bytes") / 2**20,
                            server.metric("hopscope_ingest_reserved_bytes") / 2**20, accepted, committed))
            if idle_until is None and load.poll() is not None and committed >= accepted:
                idle_until = time.monotonic() + args.idle
            time.sleep(0.25)
        if load.returncode != 0:
            raise SystemExit(f"hopscope load failed with status {load.returncode}")
        peak, cpu = server.peak_rss() >> 20, server.cpu_seconds()
        server.stop()

    before_merges = max((rss for at, rss, *_ in samples if at < maintenance_s), default=0)
    print(f"peak RSS {peak} MiB; before the first merge could run ({maintenance_s:g} s): {before_merges} MiB; "
          f"at the end: {samples[-1][1]} MiB; {cpu:.1f} CPU-s; all committed after {samples[-1][0] - args.idle:.1f} s")
    if args.out:
        with open(args.out, "w") as f:
            for at, rss, buffered, reserved, accepted, committed in samples:
                f.write(f"{at:7.2f} s  rss {rss:5d} MiB  buffered {buffered:6.1f} MiB  reserved {reserved:5.1f} MiB"
                        f"  accepted {accepted:.0f}  committed {committed:.0f}\n")


if __name__ == "__main__":
    main()
