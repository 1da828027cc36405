"""Debian's Chromium, headless, as every browser check launches it (Playwright, no downloaded browser)."""
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
