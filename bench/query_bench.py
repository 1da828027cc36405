#!/usr/bin/env python3
"""Query benchmark: hopscope against DuckDB on the same Parquet files, in one run.

Loads N spans from `hopscope simulate` into a fresh `hopscope serve` (real OTLP/HTTP ingest), then
times, for each question, hopscope's answer (over its HTTP API, JSON included) and DuckDB's answer to
the equivalent SQL over the very files hopscope wrote. Results are checked equal before any time is
reported. Run through `bench/run` (which builds the release binary and the virtualenv):

    bench/run query --spans 10000000

Prints a Markdown table for BENCHMARKS.md.
"""

import argparse
import json
import os
import re
import shutil
import tempfile
import time
import urllib.parse

import duckdb

from harness import ROOT, Server, committed_files, die, machine, run, timed


# Per-hop p50/p99 of client and server durations over every client/server pair: hopscope's `edges`,
# and DuckDB's self-join of the span files.
HOP_SQL = (
    "SELECT caller, callee, count(*) AS calls, "
    "percentile_cont(client_duration_ns, 0.5) AS c50, percentile_cont(client_duration_ns, 0.99) AS c99, "
    "percentile_cont(server_duration_ns, 0.5) AS s50, percentile_cont(server_duration_ns, 0.99) AS s99 "
    "FROM edges WHERE connection = 'rpc' GROUP BY caller, callee")
DUCK_HOP_SQL = (
    "SELECT c.service_name AS caller, s.service_name AS callee, count(*) AS calls, "
    "quantile_cont(c.duration_ns, 0.5), quantile_cont(c.duration_ns, 0.99), "
    "quantile_cont(s.duration_ns, 0.5), quantile_cont(s.duration_ns, 0.99) "
    "FROM spans c JOIN spans s ON s.trace_id = c.trace_id AND s.parent_span_id = c.span_id "
    "WHERE c.kind = 3 AND s.kind = 2 GROUP BY 1, 2")


def close(a, b, rel):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=10_000_000)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "hopscope"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--work-dir", help="where to keep the data (default: a temporary directory)")
    args = parser.parse_args()

    work = args.work_dir or tempfile.mkdtemp(prefix="hopscope-bench-")
    data_dir = os.path.join(work, "data")
    shutil.rmtree(data_dir, ignore_errors=True)
    server = Server(args.binary, data_dir)
    try:
        started = time.perf_counter()
        sim = run(args.binary, "simulate", "--endpoint", f"http://{server.http}", "--rate", "0", "--spans",
                  str(args.spans), "--backfill", "1h", "--seed", "1", "--scenario", "all")
        sent = int(re.search(r"sent (\d+) spans", sim).group(1))
        deadline = time.time() + 1800
        while server.sql("SELECT count(*) AS n FROM spans")[0]["n"] != sent:
            if time.time() > deadline:
                die("spans were not all stored within 30 minutes")
            time.sleep(0.5)
        load_seconds = time.perf_counter() - started
    finally:
        server.stop()

    # Compacted as a running server would have done by now, then queried on a freshly started server.
    # DuckDB reads the files the manifest lists: a compaction the server starts meanwhile keeps
    # them on disk until no query can still read them.
    run(args.binary, "compact", "--data-dir", data_dir)
    server = Server(args.binary, data_dir)
    files = committed_files(data_dir)
    db = duckdb.connect()
    db.execute(f"SET threads = {args.threads}")
    # Span files do not store `end_time` (the `spans` table computes it from the start and the
    # duration, docs/sql.md; files of the first layout do): DuckDB computes it the same way.
    stored = f"read_parquet({files!r}, union_by_name = true)"
    columns = [row[0] for row in db.execute(f"DESCRIBE SELECT * FROM {stored}").fetchall()]
    end = "make_timestamp_ns(epoch_ns(start_time) + duration_ns) AS end_time"
    view = f"* REPLACE ({end})" if "end_time" in columns else f"*, {end}"
    db.execute(f"CREATE VIEW spans AS SELECT {view} FROM {stored}")
    # Compaction (which may rewrite whole hours) kept every span, as DuckDB reads the files.
    compacted = db.execute("SELECT count(*) FROM spans").fetchone()[0]
    if compacted != sent:
        die(f"{compacted} spans in the compacted files, {sent} sent and stored")
    rows = []
    try:
        span_range = db.execute("SELECT epoch_ns(min(start_time)), epoch_ns(max(start_time)) FROM spans").fetchone()
        start, end = span_range[0], span_range[1] + 1_000

        # 1. Per-hop p50/p99 of client and server durations over every client/server pair.
        ours, our_time = timed(lambda: server.sql(HOP_SQL), args.repeat)
        theirs, their_time = timed(lambda: db.execute(DUCK_HOP_SQL).fetchall(), args.repeat)
        ours = {(r["caller"], r["callee"]): (r["calls"], r["c50"], r["c99"], r["s50"], r["s99"]) for r in ours}
        theirs = {(r[0], r[1]): tuple(r[2:]) for r in theirs}
        if ours.keys() != theirs.keys():
            die(f"hops differ: {sorted(ours.keys() ^ theirs.keys())}")
        for key, mine in ours.items():
            other = theirs[key]
            if mine[0] != other[0] or not all(close(a, b, 1e-5) for a, b in zip(mine[1:], other[1:])):
                die(f"hop {key} differs: hopscope {mine}, duckdb {other}")
        rows.append(("per-hop p50/p99 (client, server) over all RPC pairs, `/sql` on `edges`", our_time, their_time,
                     f"{len(ours)} hops equal"))
        # The same from the per-minute rollups: calls exact, percentiles within the sketches' 1% (for
        # values of one sign, 1% of the exact percentile).
        rollup_sql = (
            "SELECT caller, callee, sum(calls) AS calls, "
            "sketch_quantile(merge_sketches(client_sketch), 0.5) AS c50, "
            "sketch_quantile(merge_sketches(client_sketch), 0.99) AS c99, "
            "sketch_quantile(merge_sketches(server_sketch), 0.5) AS s50, "
            "sketch_quantile(merge_sketches(server_sketch), 0.99) AS s99 "
            "FROM hop_rollup WHERE connection = 'rpc' GROUP BY caller, callee")
        rolled, rolled_time = timed(lambda: server.sql(rollup_sql), args.repeat)
        rolled = {(r["caller"], r["callee"]): (r["calls"], r["c50"], r["c99"], r["s50"], r["s99"]) for r in rolled}
        if rolled.keys() != theirs.keys():
            die(f"rolled-up hops differ: {sorted(rolled.keys() ^ theirs.keys())}")
        for key, mine in rolled.items():
            other = theirs[key]
            if mine[0] != other[0] or not all(abs(a - b) <= 0.01 * abs(b) + 1 for a, b in zip(mine[1:], other[1:])):
                die(f"rolled-up hop {key} differs beyond 1%: hopscope {mine}, duckdb {other}")
        rows.append(("per-hop p50/p99 (client, server) over all RPC pairs, `/sql` on `hop_rollup`", rolled_time,
                     their_time, f"{len(rolled)} hops: calls equal, percentiles within 1%"))
        edges_url = f"/api/v1/edges?start={start}&end={end}"
        exact, exact_time = timed(lambda: server.get(edges_url + "&exact=true"), args.repeat)
        sketched, edges_time = timed(lambda: server.get(edges_url), args.repeat)
        calls = lambda view: sorted((e["caller"], e["callee"], e["connection"], e["calls"]) for e in view["edges"])
        if calls(exact) != calls(sketched):
            die("GET /api/v1/edges counts differ between the rollups and exact=true")
        rows.append(("`GET /api/v1/edges` from the rollups (every hop kind, 12 percentiles each)", edges_time,
                     their_time, f"{len(exact['edges'])} hops, calls equal to exact=true"))
        rows.append(("`GET /api/v1/edges?exact=true` (every call read)", exact_time, their_time,
                     "the reference"))
        # The yardstick for the analyses no peer has (below): DuckDB's per-hop query.
        per_hop_duck = their_time

        # 2. Trace by id.
        ids = [r[0].hex() for r in db.execute(
            "SELECT DISTINCT trace_id FROM spans USING SAMPLE 20 ROWS").fetchall()]

        def ours_by_id():
            return [len(server.get(f"/api/v1/traces/{i}")["spans"]) for i in ids]

        def theirs_by_id():
            return [len(db.execute("SELECT * FROM spans WHERE trace_id = unhex(?)", [i]).fetchall()) for i in ids]

        mine, by_id_time = timed(ours_by_id, args.repeat)
        other, duck_by_id_time = timed(theirs_by_id, args.repeat)
        if mine != other:
            die(f"trace sizes differ: {mine} vs {other}")
        rows.append((f"trace by id, all columns ({len(ids)} traces, per trace)", by_id_time / len(ids),
                     duck_by_id_time / len(ids), "span counts equal"))
        # The same through Jaeger's API (issue 18: at most 1.2× the native endpoint's time).
        jaeger, jaeger_time = timed(
            lambda: [len(server.get(f"/api/traces/{i}")["data"][0]["spans"]) for i in ids], args.repeat)
        if jaeger != other:
            die(f"Jaeger trace sizes differ: {jaeger} vs {other}")
        rows.append((f"Jaeger `GET /api/traces/{{id}}`, per trace ({jaeger_time / by_id_time:.2f}× the native "
                     "trace by id)", jaeger_time / len(ids), duck_by_id_time / len(ids), "span counts equal"))

        # 3. Search: the slowest traces with a slow payments span.
        query = urllib.parse.urlencode({"service": "payments", "min_duration": "20ms", "sort": "slowest",
                                        "limit": 20, "start": start, "end": end})
        duck_search = (
            f"WITH m AS (SELECT DISTINCT trace_id FROM spans WHERE service_name = 'payments' "
            f"AND duration_ns >= 20000000 AND epoch_ns(start_time) >= {start} AND epoch_ns(start_time) < {end}) "
            "SELECT trace_id, epoch_ns(max(end_time)) - epoch_ns(min(start_time)) AS d, count(*) FROM spans "
            "WHERE trace_id IN (SELECT trace_id FROM m) GROUP BY trace_id ORDER BY d DESC LIMIT 20")
        mine, our_time = timed(lambda: server.get(f"/api/v1/traces?{query}")["traces"], args.repeat)
        other, their_time = timed(lambda: db.execute(duck_search).fetchall(), args.repeat)
        mine_d = [(t["trace_id"], t["span_count"]) for t in mine]
        other_d = [(r[0].hex(), r[2]) for r in other]
        if sorted(mine_d) != sorted(other_d):
            die(f"search results differ:\n{mine_d}\n{other_d}")
        rows.append(("search: 20 slowest traces with a payments span ≥ 20ms", our_time, their_time,
                     f"{len(mine)} traces equal"))
        # Jaeger's search answers whole traces, newest first: against the native search (newest first)
        # followed by each trace by id, which is what a client of the native API does for the same.
        start_us, end_us = start // 1000, -(-end // 1000)
        jaeger_query = urllib.parse.urlencode({"service": "payments", "minDuration": "20ms", "limit": 20,
                                               "start": start_us, "end": end_us})
        native_query = urllib.parse.urlencode({"service": "payments", "min_duration": "20ms", "limit": 20,
                                               "start": start_us * 1000, "end": end_us * 1000})
        jaeger, jaeger_time = timed(lambda: server.get(f"/api/traces?{jaeger_query}")["data"], args.repeat)
        summaries, search_time = timed(lambda: server.get(f"/api/v1/traces?{native_query}")["traces"], args.repeat)
        whole, whole_time = timed(lambda: [server.get(f"/api/v1/traces/{t['trace_id']}") for t in
                                           server.get(f"/api/v1/traces?{native_query}")["traces"]], args.repeat)
        jaeger_d = sorted((t["traceID"], len(t["spans"])) for t in jaeger)
        if jaeger_d != sorted((t["trace_id"], len(t["spans"])) for t in whole):
            die(f"Jaeger search differs from the native one:\n{jaeger_d}")
        rows.append((f"Jaeger `GET /api/traces` search: 20 newest traces with a payments span ≥ 20ms, whole "
                     f"({jaeger_time / whole_time:.2f}× the native search followed by each trace by id, "
                     f"{jaeger_time / search_time:.2f}× the native search alone)", jaeger_time, None,
                     f"{len(jaeger)} traces equal, span counts equal"))
        # Tempo's search (TraceQL) against the native search over the same range (Tempo's `end` is
        # inclusive at one-second resolution, so the native range ends a second after it).
        start_s, end_s = start // 1_000_000_000, -(-end // 1_000_000_000)
        for label, q, native in [
                ('`{ resource.service.name = "payments" && duration >= 20ms }`',
                 '{ resource.service.name = "payments" && duration >= 20ms }',
                 {"service": "payments", "min_duration": "20ms"}),
                ("`{}` (Grafana's empty search)", "{}", {})]:
            tempo_query = urllib.parse.urlencode({"q": q, "limit": 20, "start": start_s, "end": end_s})
            native_query = urllib.parse.urlencode({**native, "limit": 20, "start": start_s * 1_000_000_000,
                                                   "end": (end_s + 1) * 1_000_000_000})
            tempo, tempo_time = timed(lambda: server.get(f"/api/search?{tempo_query}")["traces"], args.repeat)
            summaries, search_time = timed(lambda: server.get(f"/api/v1/traces?{native_query}")["traces"],
                                           args.repeat)
            if [t["traceID"] for t in tempo] != [t["trace_id"] for t in summaries]:
                die(f"Tempo search {q} differs from the native one")
            rows.append((f"Tempo `GET /api/search` {label}, 20 newest traces with their matched spans "
                         f"({tempo_time / search_time:.2f}× the native search)", tempo_time, None,
                         f"{len(tempo)} traces equal"))

        # 4. The aggregate critical path of every trace, and the findings, against a plain scan of the
        # columns the critical path reads (issue 7's target: at least half the plain scan's span rate).
        window = f"start_time >= to_timestamp_nanos({start}) AND start_time < to_timestamp_nanos({end})"
        scan_sql = (
            "SELECT count(*) AS n, max(trace_id) AS t, max(span_id) AS s, max(parent_span_id) AS p, "
            "max(service_name) AS sv, max(name) AS nm, max(kind) AS k, max(start_time) AS st, "
            f"max(end_time) AS en, max(status_code) AS sc FROM spans WHERE {window}")
        scanned, scan_time = timed(lambda: server.sql(scan_sql), args.repeat)
        in_range = db.execute(
            f"SELECT count(*), count(DISTINCT trace_id) FROM spans "
            f"WHERE epoch_ns(start_time) >= {start} AND epoch_ns(start_time) < {end}").fetchone()
        if scanned[0]["n"] != in_range[0]:
            die(f"plain scan counted {scanned[0]['n']} spans, DuckDB {in_range[0]}")
        rows.append((f"plain scan of the 9 columns the critical path reads ({in_range[0]:,} spans)", scan_time, None,
                     "span count equal to DuckDB's"))
        def against(seconds):
            return (f"{seconds / scan_time:.2f}× the plain scan's time, "
                    f"{seconds / per_hop_duck:.2f}× DuckDB's per-hop query")

        path_url = f"/api/v1/critical-path?start={start}&end={end}"
        path, path_time = timed(lambda: server.get(path_url), args.repeat)
        path_exact, path_exact_time = timed(lambda: server.get(path_url + "&exact=true"), args.repeat)
        if path["traces"] != path_exact["traces"]:
            die(f"GET /api/v1/critical-path counts {path['traces']} paths, {path_exact['traces']} with exact=true")
        rows.append((f"`GET /api/v1/critical-path` from the rollups, every trace ({path['traces']:,} paths of "
                     f"{in_range[1]:,} traces; {against(path_time)}; {scan_time / path_time:.2f}× the scan's span "
                     "rate)", path_time, None, "paths equal to exact=true"))
        rows.append((f"`GET /api/v1/critical-path?exact=true` (every path read; {against(path_exact_time)})",
                     path_exact_time, None, "the reference"))
        findings_url = f"/api/v1/findings?start={start}&end={end}"
        found, findings_time = timed(lambda: server.get(findings_url), args.repeat)
        found_exact, findings_exact_time = timed(lambda: server.get(findings_url + "&exact=true"), args.repeat)
        # The range holds every span, so widening it to whole minutes adds none: the per-trace and
        # poison findings must be the same; unbounded tails compare sketch estimates with a ratio,
        # so a hop within 1% of it may differ, and is counted, not refused.
        tail = lambda f: f["threshold"].startswith("unbounded_tail_ratio=")
        others = lambda view: sorted(json.dumps(f, sort_keys=True) for f in view["findings"] if not tail(f))
        if others(found) != others(found_exact):
            die("GET /api/v1/findings: the per-trace findings differ with exact=true")
        places = lambda view: {(f["service"], f["operation"], f["callee"], f["calls"]) for f in view["findings"] if tail(f)}
        tails, tails_exact = places(found), places(found_exact)
        rows.append((f"`GET /api/v1/findings`, every trace, unbounded tails from the rollups ({len(found['findings'])} "
                     f"findings; {against(findings_time)})", findings_time, None,
                     f"per-trace findings equal to exact=true; {len(tails & tails_exact)} of "
                     f"{len(tails | tails_exact)} unbounded tails the same"))
        rows.append((f"`GET /api/v1/findings?exact=true` (every call read; {against(findings_exact_time)})",
                     findings_exact_time, None, "the reference"))
        deps_url = f"/api/v1/dependencies?start={start}&end={end}"
        graph, graph_time = timed(lambda: server.get(deps_url), args.repeat)
        graph_exact, graph_exact_time = timed(lambda: server.get(deps_url + "&exact=true"), args.repeat)
        graph_calls = lambda view: sorted((e["caller"], e["callee"], e["connection"], e["calls"])
                                          for e in view["edges"])
        if graph_calls(graph) != calls(sketched) or graph_calls(graph_exact) != calls(exact):
            die("GET /api/v1/dependencies counts calls differently from /api/v1/edges")
        rows.append((f"`GET /api/v1/dependencies` from the rollups: graph, shared resources, endpoints' reach, "
                     f"async links ({len(graph['edges'])} hops, {len(graph['endpoints'])} endpoints; "
                     f"{against(graph_time)})", graph_time, None, "calls equal to `/edges`"))
        rows.append((f"`GET /api/v1/dependencies?exact=true` (every call read; {against(graph_exact_time)})",
                     graph_exact_time, None, "the reference"))

        # 5. The latency view of the busiest service's entry spans in one-minute steps (the UI's
        # service page): from `operation_rollup`, and from every span, against DuckDB's count and
        # percentiles of the same spans (over whole minutes, which the rollup's answer covers).
        minute = 60_000_000_000
        lstart, lend = start // minute * minute, -(-end // minute) * minute
        entry = "(kind IN (2, 5) OR parent_span_id IS NULL)"
        service = db.execute(f"SELECT service_name FROM spans WHERE {entry} "
                             "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1").fetchone()[0]
        latency_sql = (f"SELECT count(*), quantile_cont(duration_ns, [0.5, 0.9, 0.99, 0.999]), "
                       f"max(duration_ns) - min(duration_ns) FROM spans "
                       f"WHERE service_name = ? AND {entry} AND epoch_ns(start_time) >= ? "
                       f"AND epoch_ns(start_time) < ?")
        duck_latency, duck_latency_time = timed(
            lambda: db.execute(latency_sql, [service, lstart, lend]).fetchone(), args.repeat)
        latency_url = (f"/api/v1/latency?service={urllib.parse.quote(service)}&start={lstart}&end={lend}"
                       f"&step=1m")
        view, view_time = timed(lambda: server.get(latency_url), args.repeat)
        view_exact, view_exact_time = timed(lambda: server.get(latency_url + "&exact=true"), args.repeat)
        keys = ["p50_ns", "p90_ns", "p99_ns", "p999_ns"]
        # Exact: `percentile_cont` rounds its interpolation weight to a multiple of 1e-6 of the gap
        # between the two values it interpolates between (at most the whole spread).
        # Sketched: within 1% (for values of one sign and many spans, of the exact percentile).
        spread = duck_latency[2]
        for answer, method, tolerance in [(view, "sketch", lambda v: 0.01 * abs(v) + 1),
                                          (view_exact, "exact", lambda v: 1e-6 * (abs(v) + spread) + 1)]:
            summary = answer["summary"]
            if answer["percentiles"]["method"] != method or summary["count"] != duck_latency[0]:
                die(f"GET /api/v1/latency ({method}) counts {summary['count']} spans, DuckDB {duck_latency[0]}")
            for key, theirs in zip(keys, duck_latency[1]):
                if abs(summary["percentiles"][key] - theirs) > tolerance(theirs):
                    die(f"GET /api/v1/latency ({method}) {key} {summary['percentiles'][key]}, DuckDB {theirs}")
        rows.append((f"`GET /api/v1/latency` of {service}'s entry spans, 1-minute steps, from `operation_rollup` "
                     f"({view['summary']['count']:,} spans)", view_time, duck_latency_time,
                     "count equal to DuckDB's, percentiles within 1%"))
        rows.append(("`GET /api/v1/latency?exact=true` (every span read; three aggregations: steps, heatmap, "
                     "summary)", view_exact_time, duck_latency_time, "count and percentiles equal to DuckDB's"))
    finally:
        server.stop()

    size = sum(os.path.getsize(f) for f in files)
    print(f"\n{sent:,} spans in {len(files)} Parquet files, {size / sent:.1f} B/span; "
          f"loaded over OTLP/HTTP in {load_seconds:.1f}s ({sent / load_seconds:,.0f} spans/s, ack to queryable)")
    print(f"machine: {machine()}; "
          f"DuckDB {duckdb.__version__} with {args.threads} threads; median of {args.repeat} runs\n")
    print("| question | hopscope | DuckDB | hopscope / DuckDB | results |")
    print("|---|---:|---:|---:|---|")
    for name, ours_s, theirs_s, check in rows:
        ratio = f"{ours_s / theirs_s:.2f}×" if theirs_s else "–"
        theirs_text = f"{theirs_s * 1000:.1f} ms" if theirs_s else "–"
        print(f"| {name} | {ours_s * 1000:.1f} ms | {theirs_text} | {ratio} | {check} |")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
