//! The `critical_path` table: one row per operation on a trace's critical path, with its spans'
//! self time on the path ([`hopscope_derive::paths::PathSections`]), which the aggregate endpoint (and `/sql`)
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
