#!/usr/bin/env python3
"""Storage benchmark: the same spans stored in the data directory and in an S3-compatible store
(moto's server from PyPI, on loopback), and the same questions asked of both, in one run.

Sends one corpus of N spans from `hopscope simulate` (with `hopscope load`) to a `hopscope serve`
on a local data directory and to one with `--storage-url s3://...` (real OTLP/HTTP ingest, ack to
queryable), compacts both, then
asks each question of freshly started servers: once cold (the first time the question is asked:
what earlier questions read is cached already, and the operating system's page cache is warm for
local files) and then warm (median of the repeats), on local disk with
and without the query cache, and on the store with and without it. Answers are checked equal
between local disk and the store before any time is reported. Run through `bench/run`:

    bench/run storage --spans 1000000

moto serves one request at a time from Python: it is far slower per request than S3 or MinIO, so
the store's columns are an upper bound on what a real store costs on this machine, not a figure
for one. Prints a Markdown table for BENCHMARKS.md.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

from harness import ROOT, Server, die, machine, run, timed

BUCKET = "bench"


def canonical(answer, unordered=False):
    """An answer with floating-point values to 9 digits (files split differently sum their parts in
    another order); `unordered`: every list sorted too."""
    if isinstance(answer, float):
        return float(f"{answer:.9g}")
    if isinstance(answer, dict):
        return {key: canonical(value, unordered) for key, value in answer.items()}
    if isinstance(answer, list):
        items = [canonical(item, unordered) for item in answer]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True)) if unordered else items
    return answer


def same(a, b):
    """Whether two answers are equal, in order; files split differently may only order rows of
    equal rank differently (said on stderr when that is the only difference)."""
    if canonical(a) == canonical(b):
        return True
    if canonical(a, True) == canonical(b, True):
        print("bench: equal answers with rows in another order", file=sys.stderr)
        return True
    return False


class S3Server:
    """moto's S3 server (tests/clients/s3_server.py), with the benchmark's bucket."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tests", "clients", "s3_server.py"), BUCKET],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line:
            die("the S3 server (moto) did not start: run bench/run, which installs tests/requirements.txt")
        self.endpoint = f"http://127.0.0.1:{json.loads(line)['port']}"

    def env(self):
        return {**os.environ, "AWS_ENDPOINT_URL": self.endpoint, "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}

    def stop(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load(binary, data_dir, corpus, spans, *extra, env=None):
    """Sends the corpus to a fresh server, waits until its spans are queryable; returns the seconds."""
    server = Server(binary, data_dir, *extra, env=env)
    try:
        started = time.perf_counter()
        run(binary, "load", "--corpus", corpus, "--endpoint", f"http://{server.http}")
        deadline = time.time() + 1800
        while server.sql("SELECT count(*) AS n FROM spans")[0]["n"] != spans:
            if time.time() > deadline:
                die("spans were not all stored within 30 minutes")
            time.sleep(0.5)
        return time.perf_counter() - started
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "hopscope"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--work-dir", help="where to keep the data (default: a temporary directory)")
    args = parser.parse_args()

    work = args.work_dir or tempfile.mkdtemp(prefix="hopscope-bench-storage-")
    os.makedirs(work, exist_ok=True)
    local_dir, store_dir = os.path.join(work, "local"), os.path.join(work, "store")
    for path in (local_dir, store_dir):
        shutil.rmtree(path, ignore_errors=True)
    s3 = S3Server()
    env = s3.env()
    url = ["--storage-url", f"s3://{BUCKET}/hopscope"]
    servers = []
    try:
        # One corpus, sent to both: the same spans, the same times.
        corpus = os.path.join(work, "corpus.bin")
        out = run(args.binary, "simulate", "--output", corpus, "--spans", str(args.spans), "--seed", "1",
                  "--backfill", "1h", "--scenario", "all")
        sent = int(re.search(r"sent (\d+) spans", out).group(1))
        local_load = load(args.binary, local_dir, corpus, sent)
        store_load = load(args.binary, store_dir, corpus, sent, *url, env=env)
        run(args.binary, "compact", "--data-dir", local_dir)
        done = subprocess.run([args.binary, "compact", "--data-dir", store_dir, *url], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            die(f"compact on the store failed:\n{done.stderr}")

        setups = [("local disk", local_dir, [], None),
                  ("local disk, no query cache", local_dir, ["--query-cache-bytes", "0"], None),
                  ("store", store_dir, url, env),
                  ("store, no query cache", store_dir, [*url, "--query-cache-bytes", "0"], env)]
        # The questions, as the API and the UI ask them, over every stored span.
        probe = Server(args.binary, local_dir)
        servers.append(probe)
        extent = probe.sql("SELECT CAST(min(start_time) AS BIGINT) AS s, CAST(max(start_time) AS BIGINT) AS e "
                           "FROM spans")[0]
        start, end = extent["s"], extent["e"] + 1_000
        ids = [t["trace_id"] for t in probe.get(f"/api/v1/traces?limit=20&start={start}&end={end}")["traces"]]
        probe.stop()
        servers.clear()
        search = urllib.parse.urlencode({"service": "payments", "min_duration": "20ms", "sort": "slowest",
                                         "limit": 20, "start": start, "end": end})
        questions = [
            ("`/sql`: per-hop p99 over `edges` (exact)",
             lambda s: s.sql("SELECT caller, callee, count(*) AS calls, "
                             "percentile_cont(client_duration_ns, 0.99) AS c99 FROM edges "
                             "WHERE connection = 'rpc' GROUP BY caller, callee ORDER BY caller, callee")),
            ("`GET /api/v1/edges` (rollups)",
             lambda s: s.get(f"/api/v1/edges?start={start}&end={end}")["edges"]),
            (f"trace by id ({len(ids)} traces, all of them)",
             lambda s: [s.get(f"/api/v1/traces/{i}")["spans"] for i in ids]),
            ("search: 20 slowest traces with a payments span ≥ 20ms",
             lambda s: s.get(f"/api/v1/traces?{search}")["traces"]),
            ("`GET /api/v1/critical-path` (rollups)",
             lambda s: s.get(f"/api/v1/critical-path?start={start}&end={end}")),
            ("`GET /api/v1/dependencies` (rollups)",
             lambda s: s.get(f"/api/v1/dependencies?start={start}&end={end}")["edges"]),
        ]
        times = {}  # (setup, question) -> (cold, warm)
        answers = {}
        for setup, data_dir, extra, setup_env in setups:
            server = Server(args.binary, data_dir, *extra, env=setup_env)
            servers.append(server)
            for name, ask in questions:
                started = time.perf_counter()
                answer = ask(server)
                cold = time.perf_counter() - started
                again, warm = timed(lambda: ask(server), args.repeat)
                if not same(again, answer):
                    die(f"{setup}: {name} answered differently when asked again")
                first = answers.setdefault(name, (setup, answer))
                if not same(first[1], answer):
                    die(f"{name}: {setup} answers differently from {first[0]}:\n{first[1]}\n{answer}")
                times[(setup, name)] = (cold, warm)
            server.stop()
            servers.remove(server)
    finally:
        for server in servers:
            server.stop()
        s3.stop()

    print(f"\n{sent:,} spans, loaded over OTLP/HTTP (ack to queryable) in {local_load:.1f}s on local disk, "
          f"{store_load:.1f}s on the store ({store_load / local_load:.2f}×)")
    print(f"machine: {machine()}; the store: moto's S3 server on loopback, one request at a time; "
          f"cold = the first ask after start, warm = median of {args.repeat} more\n")
    names = [s[0] for s in setups]
    print("| question | " + " | ".join(f"{n}: cold / warm" for n in names) + " | store / local disk, warm |")
    print("|---|" + "---:|" * (len(names) + 1))
    for name, _ in questions:
        cells = [f"{times[(n, name)][0] * 1000:.0f} / {times[(n, name)][1] * 1000:.0f} ms" for n in names]
        ratio = times[("store", name)][1] / times[("local disk", name)][1]
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f}× |")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
