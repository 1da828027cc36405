"""Debian's Chromium, headless, as every browser check launches it (Playwright, no downloaded browser),
and the page every check watches."""
import os

PATH = os.environ.get("HOPSCOPE_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Every host name but loopback fails inside Chromium: nothing leaves the machine.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


def launch(playwright):
    return playwright.chromium.launch(executable_path=PATH, headless=True, args=ARGS, timeout=60000)


def open_page(playwright, out, bases):
    """Launches the browser and opens a 1400x900 page whose console errors, uncaught errors, dialogs
    and requests to any host but `bases` are recorded in `out` (under console_errors, page_errors,
    dialogs, offhost_requests). Returns (browser, page)."""
    for key in ("console_errors", "page_errors", "dialogs", "offhost_requests"):
        out.setdefault(key, [])
    browser = launch(playwright)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60000)
    page.on("console", lambda m: m.type == "error" and out["console_errors"].append(f"{page.url}: {m.text}"))
    page.on("pageerror", lambda e: out["page_errors"].append(f"{page.url}: {e}"))
    page.on("dialog", lambda d: (out["dialogs"].append(d.message), d.dismiss()))
    page.on(
        "request",
        lambda r: None
        if r.url.startswith("data:") or any(r.url.startswith(b) for b in bases)
        else out["offhost_requests"].append(r.url),
    )
    return browser, page
