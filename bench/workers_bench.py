#!/usr/bin/env python3
"""Workers benchmark: the same questions asked of a querier alone (DataFusion in its own process,
the reference) and of queriers given 1, 2 and 4 `--role worker` processes (`--workers`), in one
run, over one store in an S3-compatible server (moto's, from PyPI, on loopback). Run through
`bench/run`:

    bench/run workers --spans 10000000

One ingester stores the corpus (`hopscope load`, OTLP/HTTP) into the store; then, for each setup,
fresh workers and a fresh querier on the store answer every question once (a warm-up: footers and
byte ranges reach the caches) and `--repeat` more times; the median is printed. Every answer must
equal the reference's before any figure is printed, and no query may have fallen back from the
workers to the querier. The table also says how many of each question's timed runs and of a
setup's queries were spread over the workers (`hopscope_query_spread_total`), and the CPU time its
hopscope processes (the querier and the workers, not moto) used per run (from /proc): on a machine of two cores the querier, the workers and moto share the same cores, so the
figures say what spreading costs here, not what a cluster of machines would gain.
"""

import argparse
import os
import re
import shutil
import statistics
import tempfile
import time

from harness import ROOT, Server, die, machine, run
from ingest_bench import load, wait
from storage_bench import BUCKET, S3Server, same

QUESTIONS = [
    ("spans and the longest per service, a scan of `spans`",
     "SELECT service_name, count(*) AS spans, max(duration_ns) AS longest FROM spans "
     "GROUP BY service_name ORDER BY service_name"),
    ("traces and failed spans, a scan of `spans`",
     "SELECT count(DISTINCT trace_id) AS traces, count(*) FILTER (WHERE status_code = 2) AS failed FROM spans"),
    ("per-hop exact p50/p99 on `edges`",
     "SELECT caller, callee, count(*) AS calls, percentile_cont(server_duration_ns, 0.5) AS s50, "
     "percentile_cont(server_duration_ns, 0.99) AS s99 FROM edges WHERE connection = 'rpc' "
     "GROUP BY caller, callee ORDER BY caller, callee"),
    ("per-hop p99 merging sketches on `hop_rollup`",
     "SELECT caller, callee, sum(calls) AS calls, sketch_quantile(merge_sketches(server_sketch), 0.99) AS s99 "
     "FROM hop_rollup WHERE connection = 'rpc' GROUP BY caller, callee ORDER BY caller, callee"),
]


def worker_addr(server):
    """The gRPC address a worker logged in its listening line."""
    for line in server.log:
        if "hopscope listening" in line:
            return re.search(r"worker=(\S+)", line).group(1)
    die("a worker logged no address")


def setup_run(binary, work, s3, url, name, worker_count, repeat, scan_bytes):
    """Fresh workers and a querier given them; per question, (answer, median seconds, timed runs
    spread); the queries spread; the CPU seconds of hopscope's processes per run."""
    env = s3.env()
    processes = []
    try:
        workers = []
        for i in range(worker_count):
            data_dir = os.path.join(work, f"{name}-worker-{i}")
            workers.append(Server(binary, data_dir, "--role", "worker", "--storage-url", url,
                                  "--worker-addr", "127.0.0.1:0", env=env, answers_queries=False))
            processes.append(workers[-1])
        spread = ["--workers", ",".join(f"http://{worker_addr(w)}" for w in workers)] if workers else []
        if workers and scan_bytes:
            spread += ["--worker-scan-bytes", str(scan_bytes)]
        querier = Server(binary, os.path.join(work, f"{name}-querier"), "--role", "querier",
                         "--storage-url", url, *spread, env=env)
        processes.append(querier)
        answers = {}
        for what, sql in QUESTIONS:
            querier.sql(sql)
        cpu_before = sum(p.cpu_seconds() for p in processes)
        for what, sql in QUESTIONS:
            spread_before = querier.metric("hopscope_query_spread_total") if workers else 0.0
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                answer = querier.sql(sql)
                times.append(time.perf_counter() - started)
            spread_runs = querier.metric("hopscope_query_spread_total") - spread_before if workers else 0.0
            answers[what] = (answer, statistics.median(times), spread_runs)
        cpu = (sum(p.cpu_seconds() for p in processes) - cpu_before) / repeat
        spread_count = querier.metric("hopscope_query_spread_total") if workers else 0.0
        fallbacks = querier.metric("hopscope_query_worker_fallbacks_total")
        if fallbacks:
            die(f"{name}: {fallbacks:.0f} queries fell back from the workers to the querier:\n"
                + "".join(querier.log[-20:]))
        return answers, spread_count, cpu
    finally:
        for process in processes:
            process.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "hopscope"))
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each question (after a warm-up)")
    parser.add_argument("--workers", default="1,2,4", help="the worker counts to compare, comma-separated")
    parser.add_argument("--worker-scan-bytes", type=int,
                        help="the queriers' --worker-scan-bytes (default: theirs, 16 MiB)")
    parser.add_argument("--work-dir", help="where to keep the data (default: a temporary directory)")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]

    work = args.work_dir or tempfile.mkdtemp(prefix="hopscope-bench-workers-")
    os.makedirs(work, exist_ok=True)
    s3 = S3Server()
    url = f"s3://{BUCKET}/workers"
    try:
        corpus = os.path.join(work, "corpus.bin")
        out = run(args.binary, "simulate", "--output", corpus, "--spans", str(args.spans), "--seed", "1",
                  "--backfill", "1h", "--scenario", "all")
        sent = int(re.search(r"sent (\d+) spans", out).group(1))
        ingester_dir = os.path.join(work, "ingester")
        shutil.rmtree(ingester_dir, ignore_errors=True)
        ingester = Server(args.binary, ingester_dir, "--role", "ingester", "--storage-url", url, env=s3.env(),
                          answers_queries=False)
        try:
            load(args.binary, corpus, "http", ingester, 8)
            wait(lambda: ingester.metric("hopscope_ingest_spans_committed_total") >= sent, "committing every span")
        finally:
            ingester.stop()
        setups = [("querier alone (the reference)", "alone", 0)]
        setups += [(f"{n} worker{'s' if n > 1 else ''}", f"w{n}", n) for n in counts]
        results = {}
        for label, name, count in setups:
            results[label] = setup_run(args.binary, work, s3, url, name, count, args.repeat, args.worker_scan_bytes)
    finally:
        s3.stop()

    reference, _, _ = results[setups[0][0]]
    for label, (answers, _, _) in results.items():
        for what, _ in QUESTIONS:
            if not same(answers[what][0], reference[what][0]):
                die(f"{label} answers {what!r} otherwise than the querier alone")
    print(f"\n{sent:,} spans in moto's S3 on loopback; median of {args.repeat} runs after a warm-up; every "
          "setup's answers equal the querier's alone, none fell back")
    print(f"machine: {machine()}\n")
    labels = list(results)
    print("| question | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for what, _ in QUESTIONS:
        base = reference[what][1]
        cells = [f"{answers[what][1] * 1e3:.0f} ms ({answers[what][1] / base:.2f}×"
                 + (f", {answers[what][2]:.0f}/{args.repeat} spread)" if answers[what][2] else ")")
                 for answers, _, _ in results.values()]
        print(f"| {what} | " + " | ".join(cells) + " |")
    print("| queries spread over the workers | " + " | ".join(
        "–" if not count else f"{spread:.0f} of {len(QUESTIONS) * (args.repeat + 1)}"
        for (_, spread, _), (_, _, count) in zip(results.values(), setups)) + " |")
    print("| CPU seconds of hopscope's processes per run of the questions | " + " | ".join(
        f"{cpu:.2f}" for _, _, cpu in results.values()) + " |")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
