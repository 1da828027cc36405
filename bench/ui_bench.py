#!/usr/bin/env python3
"""Times each web UI page against the API answers it shows, on a stored corpus.

Starts `hopscope serve` on a data directory that `bench/run query --work-dir DIR` left (DIR/data),
opens each page in Debian's headless Chromium (Playwright, no downloaded browser) over the whole
stored range, and times navigation to the `load` event (server rendering, transfer, layout and
paint); then, in the same page, fetches the API answers that carry the page's data, together as the
page's handler asks for them (the ceiling a page built on the API could reach). Prints a Markdown
table of medians.

Usage: bench/run ui --work-dir DIR [--repeat N]
"""
import argparse
import json
import os
import statistics
import sys
import time
import urllib.parse

from harness import Server, die, machine

CHROMIUM = os.environ.get("HOPSCOPE_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--work-dir", required=True, help="the work directory of a `bench/run query` run")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    data_dir = os.path.join(args.work_dir, "data")
    if not os.path.isdir(data_dir):
        die(f"{data_dir} does not exist: run `bench/run query --work-dir {args.work_dir}` first")
    from playwright.sync_api import sync_playwright

    server = Server(args.binary, data_dir)
    try:
        def one(query, what):
            rows = server.sql(query)
            if not rows or any(v is None for v in rows[0].values()):
                die(f"the store has no {what}")
            return rows[0]

        extent = one("SELECT count(*) AS n, CAST(min(start_time) AS BIGINT) AS s, "
                     "CAST(max(start_time) AS BIGINT) AS e FROM traces", "traces")
        traces, first, last = extent["n"], extent["s"], extent["e"]
        minute = 60_000_000_000
        start, end = first // minute * minute, -(-(last + 1) // minute) * minute
        window = f"start={start}&end={end}"
        service = one("SELECT service_name FROM operation_rollup WHERE kind IN (2, 5) OR root "
                      "GROUP BY 1 ORDER BY sum(spans) DESC, 1 LIMIT 1", "entry spans")["service_name"]
        hop = one("SELECT caller, callee FROM hop_rollup WHERE caller_kind = 'service' "
                  "AND callee_kind = 'service' GROUP BY 1, 2 ORDER BY sum(calls) DESC, 1, 2 LIMIT 1",
                  "hop between services")
        root = one("SELECT root_service, root_operation FROM traces "
                   "GROUP BY 1, 2 ORDER BY count(*) DESC, 1, 2 LIMIT 1", "root")
        big = one("SELECT hex_id(trace_id) AS id, span_count FROM traces WHERE span_count <= 2000 "
                  "ORDER BY span_count DESC, trace_id LIMIT 1", "trace of at most 2,000 spans")

        def q(text):
            return urllib.parse.quote(text, safe="")
        # Step of the service and hop pages (ui/src/latency.rs `step_for`).
        step_s = next((s for s in [10, 30, 60, 120, 300, 600, 1800, 3600, 21600]
                       if (end - start) // 1_000_000_000 // s <= 60), 86400)
        step = f"step={step_s}s"
        pages = [
            ("service graph", f"/ui/graph?{window}", [f"/api/v1/dependencies?{window}"]),
            (f"service `{service}`", f"/ui/service?name={q(service)}&{window}",
             [f"/api/v1/latency?service={q(service)}&{window}&{step}", f"/api/v1/edges?service={q(service)}&{window}",
              f"/api/v1/services/{q(service)}/operations"]),
            (f"hop `{hop['caller']} → {hop['callee']}`",
             f"/ui/hop?caller={q(hop['caller'])}&callee={q(hop['callee'])}&{window}",
             [f"/api/v1/latency?caller={q(hop['caller'])}&callee={q(hop['callee'])}&{window}&{step}",
              f"/api/v1/edges?service={q(hop['caller'])}&{window}"]),
            (f"trace of {big['span_count']} spans", f"/ui/trace/{big['id']}",
             [f"/api/v1/traces/{big['id']}", f"/api/v1/traces/{big['id']}/critical-path"]),
            # The same trace with its runs of like calls unfolded: the page a person gets with
            # "Show every span" (and the whole page before folding existed).
            (f"trace of {big['span_count']} spans, every span (`?fold=off`)", f"/ui/trace/{big['id']}?fold=off",
             [f"/api/v1/traces/{big['id']}", f"/api/v1/traces/{big['id']}/critical-path"]),
            ("aggregate critical path", f"/ui/critical-path?service={q(root['root_service'])}&operation="
             f"{q(root['root_operation'])}&{window}",
             [f"/api/v1/critical-path?service={q(root['root_service'])}&operation={q(root['root_operation'])}"
              f"&{window}", f"/api/v1/dependencies?{window}"]),
            ("findings", f"/ui/findings?{window}", [f"/api/v1/findings?{window}"]),
        ]
        # The comparison the service page links as "p99 or slower": the tail's traces against the
        # others of the range.
        p99 = server.get(f"/api/v1/latency?service={q(service)}&{window}&{step}")["summary"]["percentiles"]["p99_ns"]
        tail = f"service={q(service)}&min_duration={int(p99)}ns&{window}"
        pages.append((f"comparison: `{service}` p99 or slower against the rest", f"/ui/compare?{tail}",
                      [f"/api/v1/compare?{tail}"]))
        base = f"http://{server.api}"
        results = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS, timeout=60000)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(600000)
            for name, url, apis in pages:
                page_ms, api_ms = [], []
                for _ in range(args.repeat):
                    started = time.monotonic()
                    response = page.goto(base + url, wait_until="load")
                    page_ms.append((time.monotonic() - started) * 1000)
                    if response is None or response.status != 200:
                        die(f"{url}: {response.status if response else 'no response'}")
                    try:
                        api_ms.append(max(0.001, page.evaluate(
                            "async (paths) => { const t = performance.now(); "
                            "const answers = await Promise.all(paths.map(async (p) => { const r = await fetch(p); "
                            "if (!r.ok) throw new Error(p + ': ' + r.status); return r.json(); })); "
                            "return performance.now() - t; }", apis)))
                    except Exception as error:  # Playwright reports the page's exception
                        die(f"{name}: an API answer failed: {error}")
                results.append((name, statistics.median(page_ms), statistics.median(api_ms), apis))
            browser.close()
    finally:
        server.stop()

    print(f"\n{traces:,} traces stored in {data_dir}, whole range ({(end - start) / 60e9:.0f} minutes); "
          f"machine: {machine()}; median of {args.repeat} loads\n")
    print("| page | page load | its API answers | page / API | API answers fetched |")
    print("|---|---:|---:|---:|---|")
    for name, page_ms, api_ms, apis in results:
        shown = ", ".join(f"`{a.split('?')[0]}`" for a in apis)
        print(f"| {name} | {page_ms:.0f} ms | {api_ms:.0f} ms | {page_ms / api_ms:.2f}× | {shown} |")


if __name__ == "__main__":
    sys.exit(main())
