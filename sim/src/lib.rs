//! hopscope's traffic simulator: traces of a made-up but realistic shop (a gateway, a dozen
//! services, PostgreSQL, Redis, Kafka and an external payment API), with the latency patterns
//! hopscope must find injected on request, exported over OTLP/HTTP or OTLP/gRPC as an SDK exports
//! them, or written to a corpus of pre-encoded requests that [`load`] replays as fast as a server
//! takes them.
//!
//! The `hopscope simulate` and `hopscope load` commands are [`simulate::run`] and [`load::run`];
//! tests and benchmarks call them in-process.

mod corpus;
mod error;
mod export;
pub mod load;
pub mod simulate;

pub use error::SimError;
pub use export::Protocol;
