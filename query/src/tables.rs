//! The names of the tables a session holds: the stored spans and the tables derived from them per
//! trace. Every module names them through these constants.

/// The stored spans.
pub(crate) const SPANS: &str = "spans";

/// One row per trace: its extent, size, errors and root (see [`crate::analysis::search`]).
pub(crate) const TRACES: &str = "traces";

/// Every hop of every trace (see [`crate::analysis::pairing`]).
pub(crate) const EDGES: &str = "edges";

/// The sections of every critical path (see [`crate::analysis::paths`]).
pub(crate) const CRITICAL_PATH: &str = "critical_path";

/// Per-trace findings with the default thresholds (see [`crate::analysis::findings`];
/// `GET /api/v1/findings` builds its own with the request's thresholds).
pub(crate) const FINDINGS: &str = "findings";

/// Per minute and hop: calls, errors and latency sketches of `edges` (see
/// [`crate::walk::DerivedRollupTable`]).
pub(crate) const HOP_ROLLUP: &str = "hop_rollup";

/// Per minute, entry endpoint, hop and depth: calls, errors and latency sketches of `edges`, what
/// `GET /api/v1/dependencies` groups (see [`crate::walk::DerivedRollupTable`]).
pub(crate) const DEPENDENCY_ROLLUP: &str = "dependency_rollup";

/// Per minute and call (caller and its operation, callee and its operation, connection): calls,
/// errors, a latency sketch and the slowest call's trace, what `GET /api/v1/findings` groups for
/// unbounded tails (see [`crate::walk::DerivedRollupTable`]).
pub(crate) const CALL_ROLLUP: &str = "call_rollup";

/// Per minute and finding (kind, service, operation, callee, threshold): occurrences, traces, calls,
/// cost and the lowest trace ids of `findings`, what `GET /api/v1/findings` groups for the
/// per-trace findings (see [`crate::walk::DerivedRollupTable`]).
pub(crate) const FINDING_ROLLUP: &str = "finding_rollup";

/// Per minute, entry endpoint and bucket of path duration: the critical paths and each operation's
/// self time on them, what `GET /api/v1/critical-path` groups (see
/// [`crate::walk::DerivedRollupTable`]).
pub(crate) const PATH_ROLLUP: &str = "path_rollup";

/// Per minute and service operation: spans and a latency sketch of their durations (see
/// [`crate::walk::OperationRollupTable`]).
pub(crate) const OPERATION_ROLLUP: &str = "operation_rollup";

/// The consumer spans that name the message they consumed, what `GET /api/v1/findings` counts for
/// poison messages (see [`crate::walk::DeliveriesTable`]).
pub(crate) const DELIVERIES: &str = "deliveries";
