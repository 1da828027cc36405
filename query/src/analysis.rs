//! The analyses of design.md §4, each a function over a DataFusion session with hopscope's tables
//! registered (see [`crate::engine`]), returning what it found. They never run a query outside the
//! engine's bounds: the engine calls them inside [`crate::QueryEngine::run`], and the table
//! functions of `/sql` inside the calling query.
//!
//! - the per-trace walks that make the derived tables: hop pairing ([`pairing`], the `edges`
//!   table), critical paths ([`paths`], `critical_path`) and per-trace findings ([`findings`]);
//! - questions over those tables and the spans: per-hop and tail latency ([`latency`]), what sets
//!   a selection of a target's calls apart from the rest ([`compare`]), trace search
//!   ([`search`]), critical paths of one trace and over many ([`critical_path`]), hidden
//!   dependencies ([`dependencies`]), findings ([`findings`]), and what is stored ([`spans`]);
//! - shared pieces: DataFrame helpers ([`frame`]) and stored rows read back as spans
//!   ([`span_rows`]).

pub(crate) mod compare;
pub(crate) mod critical_path;
pub(crate) mod dependencies;
pub(crate) mod findings;
pub(crate) mod frame;
pub(crate) mod latency;
pub(crate) mod pairing;
pub(crate) mod paths;
pub(crate) mod search;
pub(crate) mod span_rows;
pub(crate) mod span_sets;
pub(crate) mod spans;
