//! End-to-end tests: a real `hopscope serve` process on loopback ports, real OTLP clients (raw
//! OTLP/HTTP, tonic, the Rust `opentelemetry-otlp` exporter, the OpenTelemetry Python SDK), and the
//! stored data read back through the API and straight from the Parquet files.
//!
//! The Python tests need the packages of `tests/requirements.txt` in the interpreter named by
//! `HOPSCOPE_TEST_PYTHON` (default: `.venv/bin/python` at the workspace root); `scripts/test`
//! installs them.

mod crash;
mod errors;
mod exporters;
mod query;
mod roundtrip;
mod support;
