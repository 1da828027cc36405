#!/usr/bin/env python3
"""Walks hopscope's pages on a server that keeps tenants apart (--multi-tenant), in Debian's
headless Chromium driven by Playwright, as a person would: the tenant picker, then one tenant's
pages by their links, the range picker, search, and a trace's span details (which the script
fetches from the API). Reports what it saw as JSON on stdout; tests/e2e/tenants.rs compares it with
the API's answers.

Usage: ui_tenants_check.py --base http://127.0.0.1:PORT --tenant NAME --trace ID
"""
import argparse
import json
from urllib.parse import parse_qs, urlparse

from playwright.sync_api import sync_playwright

import chromium


def tenants_of(url):
    return parse_qs(urlparse(url).query).get("tenant", [])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--trace", required=True, help="a trace of --tenant's")
    args = parser.parse_args()
    base, tenant = args.base, args.tenant
    out = {"links_without_tenant": []}

    with sync_playwright() as p:
        browser, page = chromium.open_page(p, out, [base])

        def check_links():
            """Every link to another page keeps the tenant."""
            # getAttribute: an SVG link's `href` property is no string.
            hrefs = page.eval_on_selector_all(
                "a[href]", "els => els.map(e => new URL(e.getAttribute('href'), document.baseURI).href)"
            )
            for href in hrefs:
                if urlparse(href).path.startswith("/ui/") and tenants_of(href) != [tenant]:
                    out["links_without_tenant"].append(f"{page.url}: {href}")

        # The address people are given: the picker, since it names no tenant.
        response = page.goto(base + "/")
        out["picker"] = {
            "status": response.status,
            "h1": page.locator("h1").inner_text(),
            "tenants": page.eval_on_selector_all("ul.tenants a", "els => els.map(e => e.textContent)"),
            "styled": page.eval_on_selector("header.top", "e => getComputedStyle(e).display") == "flex",
        }

        # Choose the tenant: its service graph, its name in the header.
        page.get_by_role("link", name=tenant, exact=True).click()
        page.wait_for_load_state()
        out["graph"] = {"url": page.url, "header_tenant": page.locator("header.top a.tenant").inner_text()}
        check_links()

        # Another range: the form keeps the tenant.
        with page.expect_navigation():
            page.select_option("form.range select[name=range]", "24h")
        out["range_url"] = page.url
        check_links()

        # Search from the nav bar, then submit the form: the results are the tenant's traces.
        page.get_by_role("link", name="Search", exact=True).click()
        page.wait_for_load_state()
        page.click("form.search button[type=submit]")
        page.wait_for_load_state()
        out["search"] = {
            "url": page.url,
            "traces": sorted(
                {
                    urlparse(h).path.rsplit("/", 1)[-1]
                    for h in page.eval_on_selector_all("main a[href*='/ui/trace/']", "els => els.map(e => e.href)")
                }
            ),
        }
        check_links()

        # A trace: the span details come from the API, asked for as the tenant.
        page.goto(f"{base}/ui/trace/{args.trace}?tenant={tenant}")
        row = page.locator(".span-row[data-span-id]").first
        row.click()
        page.wait_for_selector("#span-details h3")
        out["details"] = {"span_id": row.get_attribute("data-span-id"), "text": page.locator("#span-details").inner_text()}
        check_links()

        # The header's tenant link leads back to the picker, the current tenant marked.
        page.locator("header.top a.tenant").click()
        page.wait_for_load_state()
        out["picker_again"] = {
            "url": page.url,
            "current": page.eval_on_selector_all("ul.tenants a[aria-current=page]", "els => els.map(e => e.textContent)"),
        }
        browser.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
