//! The `critical_path` table: one row per span on a trace's critical path, with its self time on
//! the path ([`hopscope_derive::paths::PathSections`]), which the aggregate endpoint (and `/sql`)
//! groups.

use std::sync::Arc;

use hopscope_derive::CORE_COLUMNS;
use hopscope_derive::paths::{PathSections, critical_path_schema};

use crate::walk::Derivation;

/// The `critical_path` table.
pub(crate) fn derivation() -> Derivation<()> {
    Derivation {
        name: crate::tables::CRITICAL_PATH,
        schema: critical_path_schema(),
        input_columns: CORE_COLUMNS.to_vec(),
        slack_ns: super::pairing::PAIRING_SLACK_NS,
        factory: Arc::new(|| Box::new(PathSections::default())),
    }
}

/// The `critical_path` rows as the ingester stores them (without span ids; see
/// [`PathSections::storing`]): for traces split across span files, walked again.
pub(crate) fn storing_derivation() -> Derivation<()> {
    Derivation { factory: Arc::new(|| Box::new(PathSections::storing())), ..derivation() }
}
