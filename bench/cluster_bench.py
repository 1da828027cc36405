#!/usr/bin/env python3
"""Cluster benchmark: ingest through a distributor (`serve --role distributor`) to one and to two
ingesters (`serve --role ingester`), against sending to one ingester directly, in one run, with one
corpus, every ingester storing into one S3-compatible store (moto's server from PyPI, on loopback).
Run through `bench/run`:

    bench/run cluster --spans 1000000

Each setup starts fresh processes on a fresh prefix of the bucket, replays the corpus with
`hopscope load` (OTLP/HTTP protobuf) at the distributor or the lone ingester, and times it until
the last span is acknowledged and until the last span is committed; then a querier
(`--role querier`) on the same prefix must count every span once before any figure is printed.
CPU time is each process's own (from /proc), so the extra hop's cost shows apart from the
machine's: on a machine of two cores the load generator, the distributor, the ingesters and moto
share the same cores, so two ingesters cannot run faster than one here, and the figures say what
the hop costs, not what a cluster of machines would gain. Prints a Markdown table for
BENCHMARKS.md.
"""

import argparse
import os
import re
import shutil
import tempfile
import time

from harness import ROOT, Server, die, machine, run
from storage_bench import BUCKET, S3Server
from ingest_bench import load, wait


def setup_run(binary, corpus, spans, work, s3, name, ingester_count, distributed, concurrency):
    """One setup: `ingester_count` ingesters, behind a distributor when `distributed`."""
    url = ["--storage-url", f"s3://{BUCKET}/{name}"]
    env = s3.env()
    processes = []
    try:
        ingesters = []
        for i in range(ingester_count):
            data_dir = os.path.join(work, f"{name}-ingester-{i}")
            shutil.rmtree(data_dir, ignore_errors=True)
            ingesters.append(Server(binary, data_dir, "--role", "ingester", *url, env=env, answers_queries=False))
            processes.append(ingesters[-1])
        target = ingesters[0]
        if distributed:
            addresses = ",".join(f"http://{i.http}" for i in ingesters)
            target = Server(binary, os.path.join(work, f"{name}-distributor"), "--role", "distributor",
                            "--ingesters", addresses, answers_queries=False)
            processes.append(target)
        cpu_before = [p.cpu_seconds() for p in processes]
        result = load(binary, corpus, "http", target, concurrency)
        acked = time.perf_counter()
        committed = lambda: sum(i.metric("hopscope_ingest_spans_committed_total") for i in ingesters)
        wait(lambda: committed() >= spans, "committing every span")
        drain = time.perf_counter() - acked
        cpu = [p.cpu_seconds() - before for p, before in zip(processes, cpu_before)]
        shares = [i.metric("hopscope_ingest_spans_accepted_total") for i in ingesters]
        querier_dir = os.path.join(work, f"{name}-querier")
        querier = Server(binary, querier_dir, "--role", "querier", *url, env=env)
        processes.append(querier)
        stored = querier.sql("SELECT count(*) AS n, count(DISTINCT span_id) AS ids FROM spans")[0]
        if stored != {"n": spans, "ids": spans}:
            die(f"{name}: the querier counts {stored}, {spans} spans were sent once each")
        return {
            "acked": result["seconds"],
            "sustained": spans / (result["seconds"] + drain),
            "cpu_per_million": sum(cpu) / spans * 1e6,
            "distributor_cpu_per_million": (cpu[-1] / spans * 1e6) if distributed else 0.0,
            "shares": shares,
        }
    finally:
        for process in processes:
            process.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "hopscope"))
    parser.add_argument("--concurrency", type=int, default=8, help="requests `hopscope load` keeps in flight")
    parser.add_argument("--work-dir", help="where to keep the data (default: a temporary directory)")
    args = parser.parse_args()

    work = args.work_dir or tempfile.mkdtemp(prefix="hopscope-bench-cluster-")
    os.makedirs(work, exist_ok=True)
    s3 = S3Server()
    try:
        corpus = os.path.join(work, "corpus.bin")
        out = run(args.binary, "simulate", "--output", corpus, "--spans", str(args.spans), "--seed", "1",
                  "--backfill", "1h", "--scenario", "all")
        sent = int(re.search(r"sent (\d+) spans", out).group(1))
        setups = [("one ingester, direct", "direct", 1, False),
                  ("distributor → one ingester", "one", 1, True),
                  ("distributor → two ingesters", "two", 2, True)]
        results = {}
        for label, name, count, distributed in setups:
            results[label] = setup_run(args.binary, corpus, sent, work, s3, name, count, distributed,
                                       args.concurrency)
    finally:
        s3.stop()

    direct = results["one ingester, direct"]
    print(f"\n{sent:,} spans over OTLP/HTTP (`hopscope load`, {args.concurrency} requests in flight), "
          f"stored into moto's S3 on loopback; every span counted once by a querier")
    print(f"machine: {machine()}\n")
    print("| setup | acknowledged in | sustained (until committed) | vs direct | CPU s per 1M spans (all processes) "
          "| of which the distributor | spans per ingester |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for label, r in results.items():
        shares = " / ".join(f"{s:,.0f}" for s in r["shares"])
        print(f"| {label} | {r['acked']:.1f} s | {r['sustained']:,.0f} spans/s | "
              f"{r['sustained'] / direct['sustained']:.2f}× | {r['cpu_per_million']:.1f} | "
              f"{r['distributor_cpu_per_million']:.1f} | {shares} |")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
