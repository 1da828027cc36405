#!/usr/bin/env python3
"""Two builds' storing cost, side by side: runs alternate, so drift of the machine falls on both.

For each of `--pairs` rounds, each binary (in alternating order) stores the corpus in a fresh
server, as `bench/ingest_bench.py` does (`hopscope load` over the chosen protocol, 8 requests in
flight, until the last span is committed). Reported per binary: the server's CPU-seconds per
million spans, sustained spans/s and peak resident memory, each as the median and range of the
runs. One run's CPU moves by about a tenth from run to run on a 2-core machine: a change smaller
than that needs several pairs.

    cargo build --release && cp target/release/hopscope /tmp/after
    git stash && cargo build --release && cp target/release/hopscope /tmp/before && git stash pop
    hopscope simulate --output /tmp/corpus.bin --spans 1000000 --seed 1 --backfill 1h --scenario all
    bench/ab_ingest.py --corpus /tmp/corpus.bin --binaries /tmp/before /tmp/after --pairs 8
"""

import argparse
import statistics
import struct
import tempfile

from ingest_bench import ingest_run


def corpus_spans(path):
    """The spans a corpus holds (its records' span counts)."""
    total = 0
    with open(path, "rb") as f:
        f.read(12)
        while header := f.read(8):
            spans, length = struct.unpack("<II", header)
            total += spans
            f.seek(length, 1)
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="written by `hopscope simulate --output`")
    parser.add_argument("--binaries", nargs=2, required=True, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    args = parser.parse_args()
    spans = corpus_spans(args.corpus)
    runs = {binary: [] for binary in args.binaries}
    with tempfile.TemporaryDirectory(prefix="hopscope-ab-") as work:
        for pair in range(args.pairs):
            order = args.binaries if pair % 2 == 0 else args.binaries[::-1]
            for binary in order:
                result, _ = ingest_run(binary, args.corpus, spans, args.protocol, False, work, 8)
                runs[binary].append(result)
                print(f"pair {pair + 1}: {binary}: {result['cpu_per_million']:.2f} CPU-s per 1M spans, "
                      f"{result['sustained']:,.0f} spans/s, peak {result['peak_rss'] / 2**20:.0f} MiB", flush=True)
    print(f"\n{spans:,} spans over {args.protocol}, {args.pairs} pairs (median, range):")
    for binary, results in runs.items():
        def summary(key, scale=1.0, fmt="{:.2f}"):
            values = sorted(r[key] * scale for r in results)
            return f"{fmt.format(statistics.median(values))} ({fmt.format(values[0])}–{fmt.format(values[-1])})"
        print(f"  {binary}: CPU-s per 1M spans {summary('cpu_per_million')}; "
              f"spans/s {summary('sustained', fmt='{:,.0f}')}; peak MiB {summary('peak_rss', 2**-20, '{:.0f}')}")


if __name__ == "__main__":
    main()
