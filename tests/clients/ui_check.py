#!/usr/bin/env python3
"""Opens every hopscope page in Debian's headless Chromium (driven by Playwright, no downloaded
browser) and reports what a person would see, as JSON on stdout. The Rust test
(tests/e2e/ui.rs) compares it with the API's answers; this script only looks and clicks.

Usage: ui_check.py --base http://127.0.0.1:PORT --empty-base http://127.0.0.1:PORT2
                   --plan plan.json --screenshots DIR
plan.json names the pages to open: {"big_trace": id, "deep_span": a span id of it, "small_trace": id, "wide_trace": id, "xss_trace": id,
"service": name, "endpoint": [service, operation]}.
"""
import argparse
import json
import os
import sys
import time

from playwright.sync_api import sync_playwright

import chromium


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--empty-base", required=True)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--screenshots", required=True)
    args = parser.parse_args()
    with open(args.plan) as f:
        plan = json.load(f)
    os.makedirs(args.screenshots, exist_ok=True)
    base = args.base
    out = {"console_errors": [], "page_errors": [], "dialogs": [], "offhost_requests": [], "timings_ms": {}}

    with sync_playwright() as p:
        browser, page = chromium.open_page(p, out, [base, args.empty_base])

        def visit(name, url):
            started = time.monotonic()
            page.goto(url, wait_until="load")
            out["timings_ms"][name] = round((time.monotonic() - started) * 1000)
            page.screenshot(path=os.path.join(args.screenshots, f"{name}.png"), full_page=False)

        def api_ms(path):
            # The same data as JSON from the API, fetched by the page: the ceiling a page can reach.
            return round(page.evaluate(
                "async (p) => { const t = performance.now(); await (await fetch(p)).json(); return performance.now() - t; }",
                path,
            ))

        def xss_fired():
            return page.evaluate("() => typeof window.__xss !== 'undefined'")

        def drawn():
            return {
                "focus": page.get_attribute("#service-graph", "data-focus"),
                "nodes": page.eval_on_selector_all(
                    "#service-graph g.node", "els => els.map(e => ({name: e.dataset.name, kind: e.dataset.kind, shared: e.classList.contains('shared')}))"
                ),
                "edges": page.eval_on_selector_all(
                    "#service-graph g.edge", "els => els.map(e => ({caller: e.dataset.caller, callee: e.dataset.callee, label: e.querySelector('text').textContent}))"
                ),
                # Edge labels drawn (not hidden until hover or focus) and the nodes' boxes, on screen.
                "labels": page.eval_on_selector_all(
                    "#service-graph g.edge text",
                    "els => els.map(t => { const r = t.getBoundingClientRect(); return {shown: getComputedStyle(t).display !== 'none', box: [r.left, r.top, r.right, r.bottom]}; })",
                ),
                "node_boxes": page.eval_on_selector_all(
                    "#service-graph g.node .shape",
                    "els => els.map(s => { const r = s.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })",
                ),
                # Where calls end (in the drawing's units), whether with an arrowhead, the trunks
                # that bundle calls into one node, and where the nodes are.
                "edge_ends": page.eval_on_selector_all(
                    "#service-graph g.edge path.edge-line",
                    "els => els.map(p => { const g = p.closest('g.edge'), b = p.getPointAtLength(p.getTotalLength()); return {caller: g.dataset.caller, callee: g.dataset.callee, to: [b.x, b.y], arrow: p.hasAttribute('marker-end')}; })",
                ),
                "trunks": page.eval_on_selector_all(
                    "#service-graph path.trunk",
                    "els => els.map(p => { const a = p.getPointAtLength(0), b = p.getPointAtLength(p.getTotalLength()); return {callee: p.dataset.callee, from: [a.x, a.y], to: [b.x, b.y], arrow: p.hasAttribute('marker-end')}; })",
                ),
                "node_at": page.eval_on_selector_all(
                    "#service-graph g.node",
                    "els => els.map(e => { const m = e.transform.baseVal.consolidate().matrix; return [e.dataset.name, m.e, m.f]; })",
                ),
                "node_height": float(page.get_attribute("#service-graph", "data-node-height")),
                # Where the drawing is on the screen: all of it is in the window.
                "box": page.eval_on_selector("#service-graph", "e => { const r = e.getBoundingClientRect(); return {right: r.right, bottom: r.bottom, width: r.width, height: r.height, window_width: window.innerWidth, window_height: window.innerHeight}; }"),
            }

        def view_box():
            return [float(v) for v in page.get_attribute("#service-graph", "viewBox").split()]

        # The service graph, reached through the redirect from /: a big graph opens on the
        # neighbourhood of its busiest entry point.
        visit("graph", base + "/")
        out["graph_url"] = page.url
        out["timings_ms"]["graph_api"] = api_ms("/api/v1/dependencies")
        out["default_graph"] = drawn()
        # A label hidden to avoid a collision shows while its edge has the focus.
        out["hidden_label_on_focus"] = page.evaluate(
            """() => {
                const hidden = [...document.querySelectorAll('#service-graph text.on-hover')];
                if (!hidden.length) return null;
                hidden[0].closest('a').focus();
                return getComputedStyle(hidden[0]).display !== 'none';
            }"""
        )

        # Every node, fitted to the screen; the buttons, the wheel and a drag zoom and move it.
        visit("graph_all", base + "/ui/graph?focus=all")
        whole = drawn()
        out["graph_nodes"], out["graph_edges"], out["graph_box"] = whole["nodes"], whole["edges"], whole["box"]
        out["graph_ends"] = {key: whole[key] for key in ["edge_ends", "trunks", "node_at", "node_height"]}
        # In a window 1440 × 900 px, each node's box on the screen and the size its label is drawn
        # at (its font size times the drawing's scale).
        window_before = page.viewport_size
        page.set_viewport_size({"width": 1440, "height": 900})
        out["graph_all_screen"] = page.evaluate("""() => {
            const g = document.getElementById('service-graph'), h = parseFloat(g.dataset.nodeHeight);
            return {compact: g.classList.contains('compact'), nodes: [...g.querySelectorAll('g.node')].map(n => {
                const r = n.querySelector('.shape').getBoundingClientRect(), t = n.querySelector('.node-label');
                return {box: [r.left, r.top, r.right, r.bottom], label_px: parseFloat(getComputedStyle(t).fontSize) * r.height / h};
            }), window: [window.innerWidth, window.innerHeight]};
        }""")
        page.set_viewport_size(window_before)
        # The keyboard passes the graph's links: the skip link comes before them, shows when
        # focused, and after it the next Tab lands in the tables below the graph.
        skip = page.locator("a.skip-link")
        skip.focus()
        out["graph_skip"] = {
            "before_graph": page.evaluate("() => !!(document.querySelector('a.skip-link').compareDocumentPosition(document.querySelector('#service-graph a')) & Node.DOCUMENT_POSITION_FOLLOWING)"),
            # (Off screen until focused: its box then starts inside the window.)
            "visible": page.evaluate("() => { const r = document.querySelector('a.skip-link').getBoundingClientRect(); return r.left >= 0 && r.width > 0; }"),
            "text": skip.inner_text(),
        }
        page.keyboard.press("Enter")
        page.keyboard.press("Tab")
        out["graph_skip"]["next_focus"] = page.evaluate("() => { const t = document.activeElement.closest('table'); return t ? t.className : document.activeElement.outerHTML.slice(0, 80); }")
        out["shared_table"] = page.eval_on_selector_all("table.shared-resources tbody tr td:first-child", "els => els.map(e => e.textContent)")
        out["graph_xss_fired"] = xss_fired()
        fitted = view_box()
        page.click(".graph-controls .zoom button[data-zoom=in]")
        zoomed_in = view_box()
        page.click(".graph-controls .zoom button[data-zoom=fit]")
        refitted = view_box()
        box = page.locator("#graph-view").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -300)
        page.wait_for_function("(w) => document.getElementById('service-graph').viewBox.baseVal.width < w", arg=fitted[2])
        wheeled = view_box()
        url_before_drag = page.url
        page.mouse.move(box["x"] + 40, box["y"] + 40)
        page.mouse.down()
        page.mouse.move(box["x"] + 140, box["y"] + 90, steps=5)
        page.mouse.up()
        dragged = view_box()
        page.focus("#graph-view")
        page.keyboard.press("0")
        keyed = view_box()
        out["graph_zoom"] = {
            "fitted": fitted, "zoomed_in": zoomed_in, "refitted": refitted, "wheeled": wheeled,
            "dragged": dragged, "keyed": keyed, "url_kept": page.url == url_before_drag,
        }
        # The first click after a drag follows its link.
        page.locator(f"#service-graph g.node[data-name='{plan['service']}']").click()
        page.wait_for_url("**/ui/service**")
        out["graph_zoom"]["click_after_drag"] = page.url
        page.go_back()
        page.wait_for_load_state("load")

        # The service search: one node and what is one call away.
        page.fill("form.focus input[name=focus]", plan["search"])
        page.select_option("form.focus select[name=depth]", "1")
        page.click("form.focus button[type=submit]")
        page.wait_for_load_state("load")
        out["searched_graph"] = {"url": page.url, **drawn()}

        # Click a node of the service's neighbourhood, then come back and click an edge.
        visit("graph_service", base + "/ui/graph?focus=" + plan["service"])
        node = page.locator(f"#service-graph g.node[data-name='{plan['service']}']")
        node.click()
        page.wait_for_url("**/ui/service**")
        page.wait_for_load_state("load")
        out["node_click"] = {"url": page.url, "h1": page.locator("h1").inner_text()}
        page.screenshot(path=os.path.join(args.screenshots, "service.png"), full_page=True)
        out["service_page"] = {
            "heatmap_cells": page.eval_on_selector("svg.heatmap", "e => e.dataset.cells.split(' ').filter(Boolean).length"),
            "percentile_lines": page.locator("svg.percentiles polyline.series").count(),
            "histogram_bars": page.locator("svg.histogram rect.bar").count(),
            "slowest_links": page.eval_on_selector_all("table.slowest a.trace-link", "els => els.map(e => e.getAttribute('href'))"),
        }
        # Drag across the heatmap's slower half: the comparison of the calls in the region.
        heat = page.locator("svg.heatmap").bounding_box()
        # From inside the top row of cells (the plot starts 12 px down).
        x0, y0 = heat["x"] + heat["width"] * 0.3, heat["y"] + 16
        x1, y1 = heat["x"] + heat["width"] * 0.98, heat["y"] + heat["height"] * 0.5
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(x1, y1, steps=8)
        with page.expect_navigation():
            page.mouse.up()
        page.wait_for_load_state("load")
        out["compare"] = {
            "url": page.url,
            "h1": page.locator("h1").inner_text(),
            "selected": page.locator("p.selection strong").first.inner_text(),
            "sections": page.eval_on_selector_all("table.contrast", "els => els.map(e => e.dataset.section)"),
            "rows": page.locator("table.contrast tbody tr").count(),
            "slowest_links": page.eval_on_selector_all("table.slowest a.trace-link", "els => els.map(e => e.getAttribute('href'))"),
        }
        page.screenshot(path=os.path.join(args.screenshots, "compare.png"), full_page=True)
        page.go_back()
        page.wait_for_load_state("load")
        page.go_back()
        page.wait_for_load_state("load")
        # An edge: click the middle of its label, choosing one whose label nothing covers.
        target = page.evaluate(
            """(caller) => {
                for (const g of document.querySelectorAll('#service-graph g.edge')) {
                    if (g.dataset.caller !== caller) continue;
                    const label = g.querySelector('text');
                    label.scrollIntoView({block: 'center', inline: 'center'});
                    const r = label.getBoundingClientRect();
                    const x = r.left + r.width / 2, y = r.top + r.height / 2;
                    const hit = document.elementFromPoint(x, y);
                    if (hit && g.contains(hit)) return {x, y, caller: g.dataset.caller, callee: g.dataset.callee};
                }
                return null;
            }""",
            plan["service"],
        )
        if target is None:
            raise SystemExit(f"no edge from {plan['service']} has an uncovered label")
        edge_caller, edge_callee = target["caller"], target["callee"]
        page.mouse.click(target["x"], target["y"])
        page.wait_for_url("**/ui/hop**")
        page.wait_for_load_state("load")
        out["edge_click"] = {
            "caller": edge_caller,
            "callee": edge_callee,
            "url": page.url,
            "h1": page.locator("h1").inner_text(),
            "distributions": page.eval_on_selector_all("table.side-by-side tr[data-distribution]", "els => els.map(e => e.dataset.distribution)"),
            "heatmap_cells": page.eval_on_selector("svg.heatmap", "e => e.dataset.cells.split(' ').filter(Boolean).length"),
            "slowest_links": page.eval_on_selector_all("table.slowest a.trace-link", "els => els.map(e => e.getAttribute('href'))"),
            "slowest_header": page.eval_on_selector_all("table.slowest th.num", "els => els.map(e => e.textContent)"),
        }
        page.screenshot(path=os.path.join(args.screenshots, "hop.png"), full_page=True)
        # A click on one heatmap cell (the one with most calls) opens the comparison of its calls.
        cell = page.evaluate(
            """() => {
                // The grid the drawing describes (ui/src/charts.rs), read here on its own.
                const map = document.querySelector('svg.heatmap'), d = map.dataset;
                const columns = d.columns.split(' ').map(c => c.split(':'));
                const rows = d.rows.split('|').map(r => r.split(','));
                let best = null;
                for (const c of d.cells.split(' ').filter(Boolean)) {
                    const [j, r, n] = c.split(':').map(Number);
                    if (!best || n > best.n) best = {j, r, n};
                }
                map.scrollIntoView({block: 'center'});
                const x = +columns[best.j][1] + d.cellW / 2, y = d.bottom - (best.r + 0.5) * d.rowH;
                const p = new DOMPoint(x, y).matrixTransform(map.getScreenCTM());
                // What is drawn there: the busiest cell is drawn in the darkest colour.
                const hit = document.elementFromPoint(p.x, p.y);
                const light = f => +/,\s*([\d.]+)%\)$/.exec(f)[1];
                const darkest = Math.min(...[...map.querySelectorAll('path.cells')].map(e => light(e.getAttribute('fill'))));
                const drawn = !!hit && hit.matches('path.cells') && light(hit.getAttribute('fill')) === darkest;
                return {x: p.x, y: p.y, start: columns[best.j][0], end: (BigInt(columns[best.j][0]) + BigInt(d.step)).toString(),
                        lower: rows[best.r][0], upper: rows[best.r][1], label: rows[best.r][2], count: best.n, drawn};
            }"""
        )
        # Its count shows on hover (two moves inside the cell: the pointer may already be there).
        page.mouse.move(cell["x"] - 2, cell["y"])
        page.mouse.move(cell["x"], cell["y"])
        cell["tip"] = page.inner_text(".heat-tip") if page.is_visible(".heat-tip") else None
        with page.expect_navigation():
            page.mouse.click(cell["x"], cell["y"])
        page.wait_for_load_state("load")
        out["cell_click"] = {"cell": cell, "url": page.url, "selected": page.locator("p.selection strong").first.inner_text()}
        page.go_back()
        page.wait_for_load_state("load")

        # The time-range picker keeps the range in the URL.
        page.select_option("form.range select[name=range]", "15m")
        page.wait_for_url("**range=15m**")
        page.wait_for_load_state("load")
        out["range_pick"] = {"url": page.url, "h1": page.locator("h1").inner_text()}
        # Back: the picker shows the range of the page it is on again.
        page.go_back()
        page.wait_for_load_state("load")
        out["range_after_back"] = {
            "url": page.url,
            "picker": page.eval_on_selector("form.range select[name=range]", "s => s.value"),
        }
        page.go_forward()
        page.wait_for_load_state("load")


        # Trace pages: the critical path highlighted, details on click.
        def waterfall():
            return {
                "rows": page.locator(".span-row[data-span-id]").count(),
                "ids": page.eval_on_selector_all(".span-row[data-span-id]", "els => els.map(e => e.dataset.spanId)"),
                "critical": page.eval_on_selector_all(".span-row.critical", "els => els.map(e => e.dataset.spanId)"),
                "self_time_cells": page.eval_on_selector_all(".span-row.critical .span-self", "els => els.filter(e => e.textContent.trim() !== '').length"),
                # Folded runs: [operation, spans folded (with what they call), button text, on the critical path].
                "folds": page.eval_on_selector_all(
                    ".span-row.fold",
                    "els => els.map(e => [e.querySelector('.op').textContent, Number(e.dataset.spans), e.querySelector('button.unfold').textContent, e.classList.contains('fold-critical')])",
                ),
            }

        for key in ["big_trace", "small_trace"]:
            visit(key, f"{base}/ui/trace/{plan[key]}")
            out["timings_ms"][key + "_api"] = api_ms(f"/api/v1/traces/{plan[key]}")
            out[key] = waterfall()
        # The big trace: unfold the run of calls to the workers, then show every span.
        visit("big_trace", f"{base}/ui/trace/{plan['big_trace']}")
        page.locator(".span-row.fold", has_text="POST /work").locator("button.unfold").click()
        page.locator(".span-row.fold", has_text="POST /work").first.wait_for(state="detached")
        out["big_trace_unfolded"] = waterfall()
        # A link to one span, hidden in two folds: the page asks the server to show it.
        page.goto(f"{base}/ui/trace/{plan['big_trace']}#span={plan['deep_span']}", wait_until="load")
        page.wait_for_url("**span=*#span=*")
        page.wait_for_selector("#span-details h3")
        out["big_trace_linked"] = {
            "url": page.url,
            "selected": page.eval_on_selector_all(".span-row.selected", "els => els.map(e => e.dataset.spanId)"),
            "heading": page.locator("#span-details h3").inner_text(),
        }
        # A link to a span the trace does not have: one reload, then a note that says so.
        page.goto(f"{base}/ui/trace/{plan['big_trace']}#span=FFFFFFFFFFFFFFFF", wait_until="load")
        page.wait_for_url("**span=ffffffffffffffff#span=*")
        page.wait_for_load_state("load")
        out["big_trace_missing_span"] = {"url": page.url, "note": page.locator("p.error-message").inner_text()}
        # Find in trace: the deep step by its attribute's value, typed in another case.
        page.fill("form.find input[name=find]", "job-needle-42")
        with page.expect_navigation(wait_until="load"):
            page.click("form.find button[type=submit]")
        out["big_trace_find"] = {
            "found": page.eval_on_selector_all(".span-row.found", "els => els.map(e => e.dataset.spanId)"),
            "result": page.locator(".find-result").inner_text(),
        }
        page.get_by_role("link", name="Show every span").click()
        page.wait_for_url("**fold=off**")
        page.wait_for_load_state("load")
        out["big_trace_every_span"] = waterfall()
        # The fan-out trace's critical path alone.
        visit("wide_trace", f"{base}/ui/trace/{plan['wide_trace']}")
        with page.expect_navigation(wait_until="load"):
            page.get_by_role("link", name="Only the critical path").click()
        out["wide_trace_path"] = {"url": page.url, **waterfall()}
        # Span details for the small trace's first critical span.
        visit("small_trace", f"{base}/ui/trace/{plan['small_trace']}")
        row = page.locator(".span-row.critical").first
        row.click()
        page.wait_for_selector("#span-details h3")
        out["span_details"] = {"span_id": row.get_attribute("data-span-id"), "heading": page.locator("#span-details h3").inner_text(), "text": page.locator("#span-details").inner_text()}
        # The overview above the waterfall: a drag across its right half zooms the bars to the
        # trace's second half; key 0 shows the whole trace again. Each bar as [span id, left,
        # right] in fractions of its row's bar area, and the area's width in pixels.
        def bars():
            return page.eval_on_selector_all(".span-row[data-span-id]", """els => els.map(e => {
                const area = e.querySelector('.span-bar-area').getBoundingClientRect();
                const bar = e.querySelector('.span-bar').getBoundingClientRect();
                return [e.dataset.spanId, (bar.left - area.left) / area.width, (bar.right - area.left) / area.width, area.width];
            })""")

        def zoom_state():
            return {
                "bars": bars(),
                "label": page.locator(".minimap-note .zoom-range").inner_text(),
                "whole_button": page.locator(".minimap-note .zoom-whole").is_visible(),
                "axis": [page.locator(".span-row.head .axis-start").inner_text(), page.locator(".span-row.head .axis-end").inner_text()],
            }

        overview = page.locator("svg.minimap").bounding_box()
        whole = zoom_state()
        middle_y = overview["y"] + overview["height"] / 2
        page.mouse.move(overview["x"] + overview["width"] * 0.5, middle_y)
        page.mouse.down()
        page.mouse.move(overview["x"] + overview["width"] * 0.75, middle_y, steps=4)
        page.mouse.move(overview["x"] + overview["width"] + 20, middle_y, steps=4)
        page.mouse.up()
        zoomed = zoom_state()
        page.screenshot(path=os.path.join(args.screenshots, "trace_zoomed.png"), full_page=False)
        page.locator("svg.minimap").focus()
        page.keyboard.press("0")
        out["trace_zoom"] = {"whole": whole, "zoomed": zoomed, "reset": zoom_state(), "drawn": page.locator("svg.minimap rect.mm-span").count()}
        # The range picker of a trace page stays on the trace.
        page.select_option("form.range select[name=range]", "6h")
        page.wait_for_url("**range=6h**")
        page.wait_for_load_state("load")
        out["trace_range_pick"] = {"url": page.url, "rows": page.locator(".span-row[data-span-id]").count()}

        # The XSS trace: payloads show as text and never run.
        visit("xss_trace", f"{base}/ui/trace/{plan['xss_trace']}")
        page.locator(".span-row[data-span-id]").first.click()
        page.wait_for_selector("#span-details h3")
        out["xss"] = {
            "body_text": page.locator("body").inner_text(),
            "details_text": page.locator("#span-details").inner_text(),
            "fired": xss_fired(),
            "javascript_hrefs": page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href')).filter(h => h.trim().toLowerCase().startsWith('javascript:'))"),
            "injected_elements": page.locator("main img, main script, #span-details b, .span-name svg").count(),
        }
        visit("graph_again", base + "/ui/graph")
        out["xss"]["graph_fired"] = xss_fired()
        out["xss"]["graph_has_payload_node"] = page.locator("#service-graph g.node", has_text="<script>").count()

        # The aggregate critical path of an endpoint.
        service, operation = plan["endpoint"]
        visit("critical_path", f"{base}/ui/critical-path?service={service}&operation={operation}")
        out["critical_path"] = {
            "h1": page.locator("h1").inner_text(),
            "rows": page.eval_on_selector_all("table.aggregate-path tbody tr", "els => els.map(e => [e.dataset.service, e.dataset.operation])"),
        }

        # Findings, each with evidence traces; follow the first.
        visit("findings", base + "/ui/findings")
        out["findings"] = {
            "kinds": page.eval_on_selector_all("table.findings tbody tr", "els => els.map(e => e.dataset.kind)"),
            "evidence": page.eval_on_selector_all("table.findings td.evidence a", "els => els.map(e => e.getAttribute('href'))"),
            "pagers": page.locator("nav.pager").count(),
            "groups_note": page.locator("p.finding-groups").inner_text(),
            # The threshold and calls cells, as shown.
            "thresholds": page.eval_on_selector_all("table.findings tbody tr td:nth-child(8)", "els => els.map(e => e.textContent)"),
            # Each row's calls: its own, or for a group of variants the summary over them.
            "calls": page.eval_on_selector_all(
                "table.findings tbody tr",
                "els => els.map(e => [e.dataset.kind, +e.dataset.variants, (e.children[2].querySelector('summary') || e.children[2]).textContent])",
            ),
        }
        if out["findings"]["evidence"]:
            page.locator("table.findings td.evidence a").first.click()
            page.wait_for_load_state("load")
            out["findings"]["followed"] = {"url": page.url, "rows": page.locator(".span-row[data-span-id]").count()}

        # Search: fill the form like a person, then open the first result.
        visit("search", base + "/ui/search")
        page.select_option("form.search select[name=service]", plan["service"])
        page.select_option("form.search select[name=sort]", "slowest")
        page.click("form.search button[type=submit]")
        page.wait_for_load_state("load")
        out["search"] = {
            "url": page.url,
            "results": page.eval_on_selector_all("table.traces a.trace-link", "els => els.map(e => e.getAttribute('href'))"),
        }
        page.screenshot(path=os.path.join(args.screenshots, "search_results.png"), full_page=False)
        if out["search"]["results"]:
            page.locator("table.traces a.trace-link").first.click()
            page.wait_for_load_state("load")
            out["search"]["followed"] = page.url
        # Bad parameters: the 400s the browser logs for them are expected, and only those.
        errors_before = len(out["console_errors"])
        # A bad search keeps what was typed, the message beside the field at fault.
        page.goto(base + "/ui/search?range=6h&operation=checkout&min_duration=fast")
        out["bad_search"] = {
            "operation": page.input_value("form.search input[name=operation]"),
            "min_duration": page.input_value("form.search input[name=min_duration]"),
            "invalid": page.eval_on_selector_all("form.search [aria-invalid=true]", "els => els.map(e => e.name)"),
            "beside": page.eval_on_selector("form.search [aria-invalid=true]", "e => e.closest('label').querySelector('.field-error').textContent"),
            "picker": page.eval_on_selector("form.range select[name=range]", "s => s.value"),
        }
        # Any other failing page keeps the navigation and the range picker.
        page.goto(base + "/ui/hop?range=24h&caller=nobody")
        out["failed_page"] = {
            "h1": page.locator("h1").inner_text(),
            "message": page.locator("p.error-message").inner_text(),
            "nav": page.eval_on_selector_all("header.top nav a", "els => els.map(e => e.getAttribute('href'))"),
            "picker": page.eval_on_selector("form.range select[name=range]", "s => s.value"),
        }
        out["search"]["bad_input_console"] = out["console_errors"][errors_before:]
        del out["console_errors"][errors_before:]

        # An empty server says how to send spans.
        visit("empty", args.empty_base + "/")
        out["empty"] = page.locator("main").inner_text()

        browser.close()
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
