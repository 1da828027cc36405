#!/usr/bin/env python3
"""Two builds' per-hop SQL on one store, each against DuckDB's self-join in the same rounds.

For each binary in turn, a server on a copy of the store (started once; queries are not cached)
answers the per-hop p50/p99 question of `bench/query_bench.py` on `edges`, alternating with DuckDB's
self-join of the same span files, `--runs` times each; answers must be equal across the builds.
Reported per pass: both medians, their ranges and the ratio. Two passes by default (A, B, A, B), so
drift of the machine shows.

    bench/run query --spans 10000000 --work-dir /tmp/bq10      # leaves a compacted store
    bench/ab_query.py --store /tmp/bq10/data --binaries /tmp/before /tmp/after
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

import duckdb

from harness import Server, committed_files, die
from query_bench import DUCK_HOP_SQL, HOP_SQL


def one_pass(binary, store, work, runs, db):
    data = os.path.join(work, "data")
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(store, data)
    server = Server(binary, data, "--maintenance-interval", "1h")
    try:
        answer = sorted(json.dumps(row, sort_keys=True) for row in server.sql(HOP_SQL))
        db.execute(DUCK_HOP_SQL).fetchall()
        ours, theirs = [], []
        for _ in range(runs):
            started = time.perf_counter()
            server.sql(HOP_SQL)
            ours.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            db.execute(DUCK_HOP_SQL).fetchall()
            theirs.append((time.perf_counter() - started) * 1000)
    finally:
        server.stop()
    return answer, ours, theirs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="a data directory `bench/run query --work-dir` left")
    parser.add_argument("--binaries", nargs=2, required=True, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    db = duckdb.connect()
    db.execute(f"SET threads = {os.cpu_count()}")
    # As `bench/query_bench.py` reads the span files: `end_time` computed where it is not stored.
    stored = f"read_parquet({committed_files(args.store)!r}, union_by_name = true)"
    columns = [row[0] for row in db.execute(f"DESCRIBE SELECT * FROM {stored}").fetchall()]
    end = "make_timestamp_ns(epoch_ns(start_time) + duration_ns) AS end_time"
    db.execute(f"CREATE VIEW spans AS SELECT {f'* REPLACE ({end})' if 'end_time' in columns else f'*, {end}'} FROM {stored}")
    answers = {}
    print("| per-hop p50/p99 on `edges` | hopscope (range) | DuckDB, same runs (range) | ratio |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as work:
        for n in range(args.passes):
            for binary in args.binaries:
                answer, ours, theirs = one_pass(binary, args.store, work, args.runs, db)
                answers.setdefault(binary, answer)
                if answer != answers[args.binaries[0]]:
                    die(f"{binary} answers differently from {args.binaries[0]}")
                ratio = statistics.median(ours) / statistics.median(theirs)
                print(f"| {binary}, pass {n + 1} | {statistics.median(ours):.1f} ms ({min(ours):.0f}–{max(ours):.0f}) "
                      f"| {statistics.median(theirs):.1f} ms ({min(theirs):.0f}–{max(theirs):.0f}) | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
