//! End-to-end tests: a real `hopscope serve` process on loopback ports, real OTLP clients (raw
//! OTLP/HTTP, tonic, the Rust `opentelemetry-otlp` exporter, the OpenTelemetry Python SDK), and the
//! stored data read back through the API and straight from the Parquet files, and the web UI in
//! headless Chromium.
//!
//! The Python tests need the packages of `tests/requirements.txt` in the interpreter named by
//! `HOPSCOPE_TEST_PYTHON` (default: `.venv/bin/python` at the workspace root); `scripts/test`
//! installs them. The UI test also needs Debian's `chromium` (`/usr/bin/chromium`, or the path in
//! `HOPSCOPE_TEST_CHROMIUM`), which `scripts/test` installs when it runs as root.

mod compat;
mod crash;
mod derived;
mod durability;
mod errors;
mod exporters;
mod grafana;
mod hostile;
mod query;
mod roundtrip;
mod simulator;
mod storage;
mod support;
mod tempo_search;
mod tenants;
mod tls;
mod ui;
mod zipkin;
