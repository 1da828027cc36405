//! Hops (design.md §4): every service-to-service call of a trace, paired from its spans by
//! [`EdgePairing`] (RPC pairs, virtual nodes for what is not instrumented, messaging, inferred hops,
//! depth and root), as rows of [`edges_schema`]. A consumer linked to a producer in another trace
//! is paired when every trace has been seen ([`crate::Rendezvous`]).

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, AsArray, BooleanBuilder, FixedSizeBinaryBuilder, Int32Builder, Int64Builder, ListBuilder, RecordBatch,
    StringBuilder, TimestampNanosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use hopscope_schemas::columns::{self as c, connection, edge, node_kind, pending, semconv};
use hopscope_schemas::spans::{kind, status, timestamp_type};

use crate::{CORE_COLUMNS, DeriveError, PerTrace, Rendezvous, Result, SpanColumns, TraceTree};

/// How far a call's two spans may lie apart in time and still be paired when a time range is asked:
/// the span scan behind `edges` reaches this far beyond the range on both sides.
pub const PAIRING_SLACK_NS: i64 = 5 * 60 * 1_000_000_000;

/// `db.system` values that are caches rather than databases.
const CACHE_SYSTEMS: &[&str] = &["redis", "memcached", "valkey", "hazelcast", "ignite", "geode", "coherence"];

/// The schema of the `edges` table.
pub fn edges_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
            Arc::new(Schema::new(vec![
                Field::new(edge::TRACE_ID, DataType::FixedSizeBinary(16), false),
                Field::new(edge::START_TIME, timestamp_type(), false),
                text(edge::CALLER, false),
                text(edge::CALLER_KIND, false),
                text(edge::CALLER_OPERATION, true),
                text(edge::CALLEE, false),
                text(edge::CALLEE_KIND, false),
                text(edge::CALLEE_OPERATION, true),
                text(edge::CONNECTION, false),
                text(edge::VIA, true),
                Field::new(edge::CLIENT_SPAN_ID, DataType::FixedSizeBinary(8), true),
                Field::new(edge::SERVER_SPAN_ID, DataType::FixedSizeBinary(8), true),
                Field::new(edge::CLIENT_DURATION_NS, DataType::Int64, true),
                Field::new(edge::SERVER_DURATION_NS, DataType::Int64, true),
                Field::new(edge::GAP_NS, DataType::Int64, true),
                Field::new(edge::ERROR, DataType::Boolean, false),
                Field::new(edge::DEPTH, DataType::Int32, false),
                text(edge::ROOT_SERVICE, false),
                text(edge::ROOT_OPERATION, false),
            ]))
        })
        .clone()
}

/// The `edges` columns that stored final rows leave null ([`EdgePairing::storing`]): a reader
/// asked for them derives the table from the spans.
pub const NOT_STORED: &[&str] = &[edge::CLIENT_SPAN_ID, edge::SERVER_SPAN_ID];

/// The schema of the `edges` table as stored beside the spans: [`edges_schema`] and the columns
/// that keep hops pending on other traces (see [`EdgePairing::storing`]).
pub fn stored_edges_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let mut fields: Vec<Field> = edges_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(edge::PENDING, DataType::Utf8, true));
            fields.push(Field::new(
                edge::LINKED_SPANS,
                DataType::List(Arc::new(Field::new_list_field(DataType::FixedSizeBinary(24), true))),
                true,
            ));
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// The span columns pairing reads.
pub fn input_columns() -> Vec<&'static str> {
    let mut columns = CORE_COLUMNS.to_vec();
    columns.extend([
        semconv::PEER_SERVICE,
        semconv::DB_SYSTEM,
        semconv::DB_SYSTEM_NAME,
        semconv::DB_NAMESPACE,
        semconv::DB_NAME,
        semconv::MESSAGING_SYSTEM,
        semconv::MESSAGING_DESTINATION_NAME,
        semconv::DB_OPERATION_NAME,
        semconv::DB_OPERATION,
        semconv::RPC_SYSTEM,
        semconv::SERVER_ADDRESS,
        semconv::SERVER_PORT,
        semconv::NETWORK_PEER_ADDRESS,
        semconv::URL_FULL,
        semconv::HTTP_URL,
        c::LINKS,
    ]);
    columns
}

/// A node that is not an instrumented service: its name and kind.
pub fn virtual_node(spans: &SpanColumns, row: usize) -> (String, &'static str) {
    let attr = |column| spans.semconv(row, column);
    let db_system = attr(semconv::DB_SYSTEM).or(attr(semconv::DB_SYSTEM_NAME));
    let messaging_system = attr(semconv::MESSAGING_SYSTEM);
    let kind = if let Some(system) = db_system {
        if CACHE_SYSTEMS.contains(&system.to_ascii_lowercase().as_str()) {
            node_kind::CACHE
        } else {
            node_kind::DATABASE
        }
    } else if messaging_system.is_some() {
        node_kind::MESSAGING
    } else if attr(semconv::RPC_SYSTEM).is_some() || attr(semconv::PEER_SERVICE).is_some() {
        node_kind::RPC
    } else {
        node_kind::EXTERNAL
    };
    let name = if let Some(peer) = attr(semconv::PEER_SERVICE) {
        peer.to_owned()
    } else if let Some(system) = db_system {
        match attr(semconv::DB_NAMESPACE).or(attr(semconv::DB_NAME)) {
            Some(namespace) => format!("{system}/{namespace}"),
            None => system.to_owned(),
        }
    } else if let Some(via) = broker(spans, row) {
        via
    } else if let Some(address) = attr(semconv::SERVER_ADDRESS) {
        match spans.server_port(row) {
            Some(port) => format!("{address}:{port}"),
            None => address.to_owned(),
        }
    } else if let Some(address) = attr(semconv::NETWORK_PEER_ADDRESS) {
        address.to_owned()
    } else if let Some(host) = attr(semconv::URL_FULL).or(attr(semconv::HTTP_URL)).and_then(url_host) {
        host.to_owned()
    } else {
        "unknown".to_owned()
    };
    (name, kind)
}

/// The broker a messaging span talks to, as `system/destination`.
fn broker(spans: &SpanColumns, row: usize) -> Option<String> {
    let system = spans.semconv(row, semconv::MESSAGING_SYSTEM)?;
    Some(match spans.semconv(row, semconv::MESSAGING_DESTINATION_NAME) {
        Some(destination) => format!("{system}/{destination}"),
        None => system.to_owned(),
    })
}

/// The host of a URL (`scheme://[user@]host[:port]/...`), without the port.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(bracketed) = host_port.strip_prefix('[') {
        bracketed.split(']').next()?
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

/// One span of a hop, copied out of its batch (a hop may be finished after the batch is gone).
#[derive(Debug, Clone, Copy)]
struct Side {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    start_ns: i64,
    end_ns: i64,
    error: bool,
}

impl Side {
    fn of(spans: &SpanColumns, row: usize) -> Self {
        let mut trace_id = [0; 16];
        trace_id.copy_from_slice(spans.trace_id.value(row));
        let mut span_id = [0; 8];
        span_id.copy_from_slice(spans.span_id.value(row));
        Side {
            trace_id,
            span_id,
            start_ns: spans.start_ns.value(row),
            end_ns: spans.end_ns.value(row),
            error: spans.status_code.value(row) == status::ERROR,
        }
    }

    fn duration_ns(&self) -> i64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// One hop, before it is appended to the output columns.
struct Hop<'a> {
    caller: &'a str,
    caller_kind: &'static str,
    caller_operation: Option<&'a str>,
    callee: &'a str,
    callee_kind: &'static str,
    callee_operation: Option<&'a str>,
    connection: &'static str,
    via: Option<&'a str>,
    client: Option<Side>,
    server: Option<Side>,
    /// Hops from outside the system to this call (an entry hop is 1).
    depth: u32,
    /// The service and operation of the root span of the tree the call is in.
    root: (&'a str, &'a str),
}

/// The entry hop of a root span `server` of `callee` (service, operation), from its broker (consumers)
/// or else its `peer.service`, given as `from`, or else from `user`.
fn entry_hop<'a>(
    server: Side,
    callee: (&'a str, &'a str),
    from: (Option<&'a str>, Option<&'a str>),
    depth: u32,
    root: (&'a str, &'a str),
) -> Hop<'a> {
    let (broker, peer) = from;
    let (caller, caller_kind) = match (broker, peer) {
        (Some(broker), _) => (broker, node_kind::MESSAGING),
        (None, Some(peer)) => (peer, node_kind::EXTERNAL),
        (None, None) => (c::USER_NODE, node_kind::USER),
    };
    Hop {
        caller,
        caller_kind,
        caller_operation: None,
        callee: callee.0,
        callee_kind: node_kind::SERVICE,
        callee_operation: Some(callee.1),
        connection: connection::ENTRY,
        via: broker,
        client: None,
        server: Some(server),
        depth,
        root,
    }
}

/// A producer span nobody in its own trace consumed: a consumer in another trace may link to it.
/// Until every trace has been seen it is a call to the broker (a virtual node).
#[derive(Debug)]
struct PendingProducer {
    side: Side,
    service: String,
    operation: String,
    broker: Option<String>,
    /// The virtual node it calls when no consumer links to it, and that call's operation.
    callee: (String, &'static str),
    callee_operation: String,
    /// The depth of the producer's call (to the broker, or to a linked consumer).
    depth: u32,
    root: (String, String),
}

/// A root consumer span that links to spans of other traces: its producer may be one of them.
#[derive(Debug)]
struct PendingConsumer {
    side: Side,
    service: String,
    operation: String,
    broker: Option<String>,
    /// `peer.service`, naming the caller when no producer is found.
    peer: Option<String>,
    links: Vec<([u8; 16], [u8; 8])>,
    depth: u32,
    root: (String, String),
}

impl PendingProducer {
    /// Its call to the broker, as it stands when no consumer links to it.
    fn unconsumed_hop(&self) -> Hop<'_> {
        Hop {
            caller: &self.service,
            caller_kind: node_kind::SERVICE,
            caller_operation: Some(&self.operation),
            callee: &self.callee.0,
            callee_kind: self.callee.1,
            callee_operation: Some(&self.callee_operation),
            connection: connection::UNINSTRUMENTED,
            via: self.broker.as_deref(),
            client: Some(self.side),
            server: None,
            depth: self.depth,
            root: (&self.root.0, &self.root.1),
        }
    }

    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.service.len()
            + self.operation.len()
            + self.broker.as_ref().map_or(0, String::len)
            + self.callee.0.len()
            + self.callee_operation.len()
            + self.root.0.len()
            + self.root.1.len()
    }
}

impl PendingConsumer {
    /// Its entry hop, as it stands when none of the spans it links to is a producer.
    fn entry_hop(&self) -> Hop<'_> {
        let callee = (self.service.as_str(), self.operation.as_str());
        let from = (self.broker.as_deref(), self.peer.as_deref());
        entry_hop(self.side, callee, from, self.depth, (&self.root.0, &self.root.1))
    }

    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.service.len()
            + self.operation.len()
            + self.broker.as_ref().map_or(0, String::len)
            + self.peer.as_ref().map_or(0, String::len)
            + self.links.len() * 24
            + self.root.0.len()
            + self.root.1.len()
    }
}

/// What one partition could not pair alone, handed to the [`Rendezvous`].
#[derive(Debug, Default)]
pub struct Pending {
    producers: Vec<PendingProducer>,
    consumers: Vec<PendingConsumer>,
    bytes: usize,
}

impl Pending {
    /// Adds the pending rows of a batch of stored edges.
    fn read_stored(&mut self, batch: &RecordBatch) -> Result<()> {
        let column = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| DeriveError::MissingColumn(format!("stored edges: {name}")))
        };
        // (Text as any string type a reader gives it: a query reads `edges` as views.)
        let text = |name: &str| -> Result<_> {
            Ok(arrow::compute::cast(column(name)?, &DataType::Utf8)?.as_string::<i32>().clone())
        };
        let marks = text(edge::PENDING)?;
        if marks.null_count() == marks.len() {
            return Ok(());
        }
        let (caller, caller_kind, caller_operation) =
            (text(edge::CALLER)?, text(edge::CALLER_KIND)?, text(edge::CALLER_OPERATION)?);
        let (callee, callee_kind, callee_operation) =
            (text(edge::CALLEE)?, text(edge::CALLEE_KIND)?, text(edge::CALLEE_OPERATION)?);
        let (via, root_service, root_operation) =
            (text(edge::VIA)?, text(edge::ROOT_SERVICE)?, text(edge::ROOT_OPERATION)?);
        let trace_ids = column(edge::TRACE_ID)?.as_fixed_size_binary();
        let (client_ids, server_ids) = (
            column(edge::CLIENT_SPAN_ID)?.as_fixed_size_binary(),
            column(edge::SERVER_SPAN_ID)?.as_fixed_size_binary(),
        );
        let starts = column(edge::START_TIME)?.as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        let client_durations = column(edge::CLIENT_DURATION_NS)?.as_primitive::<arrow::datatypes::Int64Type>();
        let server_durations = column(edge::SERVER_DURATION_NS)?.as_primitive::<arrow::datatypes::Int64Type>();
        let errors = column(edge::ERROR)?.as_boolean();
        let depths = column(edge::DEPTH)?.as_primitive::<arrow::datatypes::Int32Type>();
        let links = column(edge::LINKED_SPANS)?.as_list::<i32>();
        let optional = |a: &arrow::array::StringArray, r: usize| a.is_valid(r).then(|| a.value(r).to_owned());
        for r in (0..batch.num_rows()).filter(|&r| marks.is_valid(r)) {
            let side = |ids: &arrow::array::FixedSizeBinaryArray, duration: i64| -> Result<Side> {
                let stored = |what: &str| DeriveError::MissingColumn(format!("stored edges: a pending row's {what}"));
                Ok(Side {
                    trace_id: trace_ids.value(r).try_into().map_err(|_| stored("trace id"))?,
                    span_id: ids.value(r).try_into().map_err(|_| stored("span id"))?,
                    start_ns: starts.value(r),
                    end_ns: starts.value(r).saturating_add(duration),
                    error: errors.value(r),
                })
            };
            let depth = u32::try_from(depths.value(r)).unwrap_or(0);
            let root = (root_service.value(r).to_owned(), root_operation.value(r).to_owned());
            match marks.value(r) {
                pending::PRODUCER => {
                    let producer = PendingProducer {
                        side: side(client_ids, client_durations.value(r))?,
                        service: caller.value(r).to_owned(),
                        operation: optional(&caller_operation, r).unwrap_or_default(),
                        broker: optional(&via, r),
                        callee: (callee.value(r).to_owned(), stored_node_kind(callee_kind.value(r))),
                        callee_operation: optional(&callee_operation, r).unwrap_or_default(),
                        depth,
                        root,
                    };
                    self.bytes += producer.bytes();
                    self.producers.push(producer);
                }
                _ => {
                    let linked = if links.is_valid(r) {
                        links.value(r)
                    } else {
                        arrow::array::new_empty_array(&DataType::FixedSizeBinary(24))
                    };
                    let linked = linked.as_fixed_size_binary();
                    let consumer = PendingConsumer {
                        side: side(server_ids, server_durations.value(r))?,
                        service: callee.value(r).to_owned(),
                        operation: optional(&callee_operation, r).unwrap_or_default(),
                        broker: optional(&via, r),
                        peer: (caller_kind.value(r) == node_kind::EXTERNAL).then(|| caller.value(r).to_owned()),
                        links: (0..linked.len())
                            .filter_map(|i| {
                                let id = linked.value(i);
                                Some((id[..16].try_into().ok()?, id[16..].try_into().ok()?))
                            })
                            .collect(),
                        depth,
                        root,
                    };
                    self.bytes += consumer.bytes();
                    self.consumers.push(consumer);
                }
            }
        }
        Ok(())
    }
}

/// A node kind as stored, as the constant it was written from.
fn stored_node_kind(kind: &str) -> &'static str {
    [node_kind::SERVICE, node_kind::USER, node_kind::DATABASE, node_kind::CACHE, node_kind::MESSAGING, node_kind::RPC]
        .into_iter()
        .find(|k| *k == kind)
        .unwrap_or(node_kind::EXTERNAL)
}

/// Pairs the spans of each trace into hops and builds the `edges` rows.
///
/// A consumer that links to a producer in another trace is paired when every partition has been
/// read: such consumers, and the producers nobody consumed in their own trace, wait in [`Pending`]
/// (charged to the query's memory pool) until the partitions meet.
pub struct EdgePairing {
    tree: TraceTree,
    pending: Pending,
    trace_id: FixedSizeBinaryBuilder,
    start_time: TimestampNanosecondBuilder,
    caller: StringBuilder,
    caller_kind: StringBuilder,
    caller_operation: StringBuilder,
    callee: StringBuilder,
    callee_kind: StringBuilder,
    callee_operation: StringBuilder,
    connection: StringBuilder,
    via: StringBuilder,
    client_span_id: FixedSizeBinaryBuilder,
    server_span_id: FixedSizeBinaryBuilder,
    client_duration: Int64Builder,
    server_duration: Int64Builder,
    gap: Int64Builder,
    error: BooleanBuilder,
    depth: Int32Builder,
    root_service: StringBuilder,
    root_operation: StringBuilder,
    rows: usize,
    /// When storing: which hops are pending on other traces, and what they link to.
    stubs: Option<StubColumns>,
}

/// The stored edges' columns of pending hops.
struct StubColumns {
    pending: StringBuilder,
    linked_spans: ListBuilder<FixedSizeBinaryBuilder>,
}

impl StubColumns {
    fn new() -> Self {
        Self { pending: StringBuilder::new(), linked_spans: ListBuilder::new(FixedSizeBinaryBuilder::new(24)) }
    }
}

impl Default for EdgePairing {
    fn default() -> Self {
        Self {
            tree: TraceTree::default(),
            pending: Pending::default(),
            trace_id: FixedSizeBinaryBuilder::new(16),
            start_time: TimestampNanosecondBuilder::new(),
            caller: StringBuilder::new(),
            caller_kind: StringBuilder::new(),
            caller_operation: StringBuilder::new(),
            callee: StringBuilder::new(),
            callee_kind: StringBuilder::new(),
            callee_operation: StringBuilder::new(),
            connection: StringBuilder::new(),
            via: StringBuilder::new(),
            client_span_id: FixedSizeBinaryBuilder::new(8),
            server_span_id: FixedSizeBinaryBuilder::new(8),
            client_duration: Int64Builder::new(),
            server_duration: Int64Builder::new(),
            gap: Int64Builder::new(),
            error: BooleanBuilder::new(),
            depth: Int32Builder::new(),
            root_service: StringBuilder::new(),
            root_operation: StringBuilder::new(),
            rows: 0,
            stubs: None,
        }
    }
}

impl EdgePairing {
    /// Pairs the trace whose tree (built for its rows) is `tree`.
    pub fn trace_with(&mut self, spans: &SpanColumns, tree: &TraceTree) -> Result<()> {
        let calls = CallsInTrace::of(spans, tree);
        let depths = depths(spans, tree, &calls);
        tree.rows().try_for_each(|r| {
            let at = Position { row: r, depth: depths[tree.index(r)].0, root: depths[tree.index(r)].1 };
            self.push_arrival(spans, tree, &calls, at)?;
            self.push_call_out(spans, tree, &calls, at)
        })
    }

    /// Pairing for storing the hops beside the spans: its batches are in [`stored_edges_schema`],
    /// and [`EdgePairing::stub_pending`] keeps what waits for other traces as pending rows, which
    /// [`EdgePairing::pair_stored`] pairs once every part of the input has been read. Final rows
    /// leave the span ids null ([`NOT_STORED`]: two random 8-byte ids per hop, which no encoding
    /// shrinks, are more than half of the stored table's bytes); pending rows keep them for pairing.
    pub fn storing() -> Self {
        Self { stubs: Some(StubColumns::new()), ..Self::default() }
    }

    fn push(&mut self, hop: Hop<'_>) -> Result<()> {
        // Stored final rows leave the span ids null (see [`NOT_STORED`]).
        let span_ids = self.stubs.is_none();
        if let Some(stubs) = &mut self.stubs {
            stubs.pending.append_null();
            stubs.linked_spans.append_null();
        }
        self.push_row(hop, span_ids)
    }

    /// A hop that may change once other traces are read, as a pending row.
    fn push_pending(&mut self, hop: Hop<'_>, side: &str, links: &[([u8; 16], [u8; 8])]) -> Result<()> {
        let stubs = self.stubs.as_mut().expect("pending rows are only written when storing");
        stubs.pending.append_value(side);
        for (trace, span) in links {
            let mut id = [0u8; 24];
            id[..16].copy_from_slice(trace);
            id[16..].copy_from_slice(span);
            stubs.linked_spans.values().append_value(id)?;
        }
        stubs.linked_spans.append(true);
        // Pairing a pending row needs its span ids.
        self.push_row(hop, true)
    }

    /// Appends the hop; its span ids only when `span_ids` (else null).
    fn push_row(&mut self, hop: Hop<'_>, span_ids: bool) -> Result<()> {
        let first = hop.client.or(hop.server).expect("a hop has at least one span");
        self.trace_id.append_value(first.trace_id)?;
        self.start_time.append_value(first.start_ns);
        self.caller.append_value(hop.caller);
        self.caller_kind.append_value(hop.caller_kind);
        self.caller_operation.append_option(hop.caller_operation);
        self.callee.append_value(hop.callee);
        self.callee_kind.append_value(hop.callee_kind);
        self.callee_operation.append_option(hop.callee_operation);
        self.connection.append_value(hop.connection);
        self.via.append_option(hop.via);
        for (ids, side) in [(&mut self.client_span_id, hop.client), (&mut self.server_span_id, hop.server)] {
            match side {
                Some(side) if span_ids => ids.append_value(side.span_id)?,
                _ => ids.append_null(),
            }
        }
        self.client_duration.append_option(hop.client.map(|s| s.duration_ns()));
        self.server_duration.append_option(hop.server.map(|s| s.duration_ns()));
        let gap = match (hop.client, hop.server) {
            // For messaging, the gap is the time the message waited: consumer start minus producer end.
            (Some(producer), Some(consumer)) if hop.connection == connection::MESSAGING => {
                Some(consumer.start_ns.saturating_sub(producer.end_ns))
            }
            (Some(client), Some(server)) => Some(client.duration_ns().saturating_sub(server.duration_ns())),
            _ => None,
        };
        self.gap.append_option(gap);
        self.error.append_value(hop.client.is_some_and(|s| s.error) || hop.server.is_some_and(|s| s.error));
        self.depth.append_value(i32::try_from(hop.depth).unwrap_or(i32::MAX));
        self.root_service.append_value(hop.root.0);
        self.root_operation.append_value(hop.root.1);
        self.rows += 1;
        Ok(())
    }

    /// The messaging hop from a producer to a consumer that linked to it from another trace.
    fn push_linked(&mut self, producer: &PendingProducer, consumer: &PendingConsumer) -> Result<()> {
        let via = producer.broker.as_deref().or(consumer.broker.as_deref());
        self.push(Hop {
            caller: &producer.service,
            caller_kind: node_kind::SERVICE,
            caller_operation: Some(&producer.operation),
            callee: &consumer.service,
            callee_kind: node_kind::SERVICE,
            callee_operation: Some(&consumer.operation),
            connection: connection::MESSAGING,
            via,
            client: Some(producer.side),
            server: Some(consumer.side),
            // The message continues the producer's request: the hop counts from the producer's root.
            depth: producer.depth,
            root: (&producer.root.0, &producer.root.1),
        })
    }

    /// The call to the broker from a producer no consumer linked to.
    fn push_unconsumed(&mut self, producer: &PendingProducer) -> Result<()> {
        self.push(producer.unconsumed_hop())
    }

    /// Keeps what waits for other traces (producers nobody in their own trace consumed, consumers
    /// that link to other traces) as pending rows: the hop each would be if nothing else were read.
    /// Only for a pairing made by [`EdgePairing::storing`].
    pub fn stub_pending(&mut self) -> Result<()> {
        let Pending { producers, consumers, .. } = std::mem::take(&mut self.pending);
        for producer in &producers {
            self.push_pending(producer.unconsumed_hop(), pending::PRODUCER, &[])?;
        }
        for consumer in &consumers {
            self.push_pending(consumer.entry_hop(), pending::CONSUMER, &consumer.links)?;
        }
        Ok(())
    }

    /// Pairs the pending rows of stored edges (in [`stored_edges_schema`]; other rows are skipped)
    /// as if their traces had been read together: a consumer with the producers it links to, and
    /// what stays unpaired as the hop it would have been within its own trace. The hops are taken
    /// with [`PerTrace::take_batch`].
    pub fn pair_stored(&mut self, stored: &[RecordBatch]) -> Result<()> {
        let mut pending = Pending::default();
        for batch in stored {
            pending.read_stored(batch)?;
        }
        self.pair_across_traces(vec![pending])
    }

    /// Pairs every partition's pending consumers with the pending producers they link to; what stays
    /// unpaired becomes the hop it would have been within its own trace.
    fn pair_across_traces(&mut self, deposits: Vec<Pending>) -> Result<()> {
        let (mut producers, mut consumers) = (Vec::new(), Vec::new());
        for deposit in deposits {
            producers.extend(deposit.producers);
            consumers.extend(deposit.consumers);
        }
        let index: std::collections::HashMap<([u8; 16], [u8; 8]), usize> =
            producers.iter().enumerate().map(|(i, p)| ((p.side.trace_id, p.side.span_id), i)).collect();
        let mut consumed = vec![false; producers.len()];
        for consumer in &consumers {
            let mut paired = false;
            for link in &consumer.links {
                if let Some(&i) = index.get(link) {
                    self.push_linked(&producers[i], consumer)?;
                    consumed[i] = true;
                    paired = true;
                }
            }
            if !paired {
                self.push(consumer.entry_hop())?;
            }
        }
        for (producer, consumed) in producers.iter().zip(consumed) {
            if !consumed {
                self.push_unconsumed(producer)?;
            }
        }
        Ok(())
    }
}

/// What the spans of a trace say about the calls between them, by position in the trace.
struct CallsInTrace {
    /// A consumer's producer in this trace: its parent when that is a producer, else a producer it
    /// links to.
    producer_of: Vec<Option<usize>>,
    /// Producers some consumer of the trace consumed.
    consumed: Vec<bool>,
    has_server_child: Vec<bool>,
    has_foreign_child: Vec<bool>,
}

impl CallsInTrace {
    fn of(spans: &SpanColumns, tree: &TraceTree) -> Self {
        let len = tree.rows().len();
        let mut calls = CallsInTrace {
            producer_of: vec![None; len],
            consumed: vec![false; len],
            has_server_child: vec![false; len],
            has_foreign_child: vec![false; len],
        };
        for r in tree.rows() {
            let i = tree.index(r);
            if let Some(p) = tree.parent(r) {
                calls.has_server_child[tree.index(p)] |= spans.kind.value(r) == kind::SERVER;
                calls.has_foreign_child[tree.index(p)] |= spans.service(p) != spans.service(r);
            }
            if spans.kind.value(r) == kind::CONSUMER {
                let trace_id = spans.trace_id.value(r);
                let producer = tree.parent(r).filter(|&p| spans.kind.value(p) == kind::PRODUCER).or_else(|| {
                    spans.links(r).into_iter().find_map(|(t, s)| {
                        let p = tree.find(&s)?;
                        (t.as_slice() == trace_id && spans.kind.value(p) == kind::PRODUCER).then_some(p)
                    })
                });
                if let Some(p) = producer {
                    calls.consumed[tree.index(p)] = true;
                    calls.producer_of[i] = Some(p);
                }
            }
        }
        calls
    }
}

/// Per span of a trace (by position): the hops from outside the system to it, and the row of the
/// root of its tree. A span is one hop deeper than the span upstream of it (its producer, else its
/// parent) when a call arrives at it.
fn depths(spans: &SpanColumns, tree: &TraceTree, calls: &CallsInTrace) -> Vec<(u32, usize)> {
    let rows = tree.rows();
    let len = rows.len();
    let upstream: Vec<Option<usize>> =
        rows.clone().map(|r| calls.producer_of[tree.index(r)].or(tree.parent(r)).map(|p| tree.index(p))).collect();
    let arrives = |i: usize| -> u32 {
        let r = rows.start + i;
        let arrived = match (calls.producer_of[i], tree.parent(r)) {
            (Some(_), _) => true,
            (None, Some(p)) => {
                (spans.kind.value(p) == kind::CLIENT && spans.kind.value(r) == kind::SERVER)
                    || spans.service(p) != spans.service(r)
            }
            (None, None) => matches!(spans.kind.value(r), kind::SERVER | kind::CONSUMER),
        };
        u32::from(arrived)
    };
    let mut hops: Vec<Option<(u32, usize)>> = vec![None; len];
    // Spans of the chain being followed; each span is resolved once, so the whole is linear.
    let mut on_chain = vec![false; len];
    let mut chain = Vec::new();
    for i in 0..len {
        chain.clear();
        let mut cur = i;
        let resolved = loop {
            if let Some(known) = hops[cur] {
                break Some(known);
            }
            chain.push(cur);
            on_chain[cur] = true;
            match upstream[cur] {
                // A parent loop (malformed input) is cut where it closes.
                Some(up) if !on_chain[up] => cur = up,
                _ => break None,
            }
        };
        for &j in &chain {
            on_chain[j] = false;
        }
        let (mut depth, root) = match resolved {
            Some(known) => known,
            None => {
                let top = chain.pop().expect("the chain holds at least the span itself");
                let known = (arrives(top), top + rows.start);
                hops[top] = Some(known);
                known
            }
        };
        for &j in chain.iter().rev() {
            depth += arrives(j);
            hops[j] = Some((depth, root));
        }
    }
    hops.into_iter().map(|h| h.expect("every span resolved")).collect()
}

/// A span with its depth and the row of its tree's root.
#[derive(Debug, Clone, Copy)]
struct Position {
    row: usize,
    depth: u32,
    root: usize,
}

impl EdgePairing {
    /// The hop of the call that reached span `at`: from its producer, from its parent in another
    /// service, or from outside (an entry; a consumer whose producer may be in another trace waits
    /// for the rendezvous).
    fn push_arrival(
        &mut self,
        spans: &SpanColumns,
        tree: &TraceTree,
        calls: &CallsInTrace,
        at: Position,
    ) -> Result<()> {
        let r = at.row;
        let span_kind = spans.kind.value(r);
        let service = spans.service(r);
        let name = Some(spans.name(r));
        let root = (spans.service(at.root), spans.name(at.root));
        if let Some(p) = calls.producer_of[tree.index(r)] {
            let via = broker(spans, p).or_else(|| broker(spans, r));
            return self.push(Hop {
                caller: spans.service(p),
                caller_kind: node_kind::SERVICE,
                caller_operation: Some(spans.name(p)),
                callee: service,
                callee_kind: node_kind::SERVICE,
                callee_operation: name,
                connection: connection::MESSAGING,
                via: via.as_deref(),
                client: Some(Side::of(spans, p)),
                server: Some(Side::of(spans, r)),
                depth: at.depth,
                root,
            });
        }
        if let Some(p) = tree.parent(r) {
            let parent_kind = spans.kind.value(p);
            let pair = parent_kind == kind::CLIENT && span_kind == kind::SERVER;
            if !pair && spans.service(p) == service {
                return Ok(());
            }
            return self.push(Hop {
                caller: spans.service(p),
                caller_kind: node_kind::SERVICE,
                caller_operation: Some(spans.name(p)),
                callee: service,
                callee_kind: node_kind::SERVICE,
                callee_operation: name,
                connection: if pair { connection::RPC } else { connection::INFERRED },
                via: None,
                client: (parent_kind == kind::CLIENT).then(|| Side::of(spans, p)),
                server: Some(Side::of(spans, r)),
                depth: at.depth,
                root,
            });
        }
        if span_kind != kind::SERVER && span_kind != kind::CONSUMER {
            return Ok(());
        }
        let from_broker = (span_kind == kind::CONSUMER).then(|| broker(spans, r)).flatten();
        let peer = spans.semconv(r, semconv::PEER_SERVICE);
        let trace_id = spans.trace_id.value(r);
        let foreign_links: Vec<_> = if span_kind == kind::CONSUMER {
            spans.links(r).into_iter().filter(|(t, _)| t.as_slice() != trace_id).collect()
        } else {
            Vec::new()
        };
        if foreign_links.is_empty() {
            let callee = (service, spans.name(r));
            return self.push(entry_hop(Side::of(spans, r), callee, (from_broker.as_deref(), peer), at.depth, root));
        }
        // Its producer may be in another trace: pair it when every trace has been seen.
        let consumer = PendingConsumer {
            side: Side::of(spans, r),
            service: service.to_owned(),
            operation: spans.name(r).to_owned(),
            broker: from_broker,
            peer: peer.map(str::to_owned),
            links: foreign_links,
            depth: at.depth,
            root: (root.0.to_owned(), root.1.to_owned()),
        };
        self.pending.bytes += consumer.bytes();
        self.pending.consumers.push(consumer);
        Ok(())
    }

    /// The hop of a call out of span `at` to something not instrumented (a producer nobody in the
    /// trace consumed waits for the rendezvous: a consumer in another trace may link to it).
    fn push_call_out(
        &mut self,
        spans: &SpanColumns,
        tree: &TraceTree,
        calls: &CallsInTrace,
        at: Position,
    ) -> Result<()> {
        let (r, i) = (at.row, tree.index(at.row));
        let span_kind = spans.kind.value(r);
        let uninstrumented = match span_kind {
            kind::CLIENT => !calls.has_server_child[i] && !calls.has_foreign_child[i],
            kind::PRODUCER => !calls.consumed[i] && !calls.has_foreign_child[i],
            _ => false,
        };
        if !uninstrumented {
            return Ok(());
        }
        let service = spans.service(r);
        let name = Some(spans.name(r));
        let root = (spans.service(at.root), spans.name(at.root));
        let (callee, callee_kind) = virtual_node(spans, r);
        let operation =
            spans.semconv(r, semconv::DB_OPERATION_NAME).or(spans.semconv(r, semconv::DB_OPERATION)).or(name);
        if span_kind == kind::PRODUCER {
            let producer = PendingProducer {
                side: Side::of(spans, r),
                service: service.to_owned(),
                operation: spans.name(r).to_owned(),
                broker: broker(spans, r),
                callee: (callee, callee_kind),
                callee_operation: operation.unwrap_or_default().to_owned(),
                depth: at.depth + 1,
                root: (root.0.to_owned(), root.1.to_owned()),
            };
            self.pending.bytes += producer.bytes();
            self.pending.producers.push(producer);
            return Ok(());
        }
        self.push(Hop {
            caller: service,
            caller_kind: node_kind::SERVICE,
            caller_operation: name,
            callee: &callee,
            callee_kind,
            callee_operation: operation,
            connection: connection::UNINSTRUMENTED,
            via: None,
            client: Some(Side::of(spans, r)),
            server: None,
            depth: at.depth + 1,
            root,
        })
    }
}

impl PerTrace for EdgePairing {
    /// Consumers and producers waiting for their other side in another trace.
    type Deposit = Pending;

    fn trace(&mut self, spans: &SpanColumns, rows: Range<usize>) -> Result<()> {
        let mut tree = std::mem::take(&mut self.tree);
        tree.build(spans, rows);
        let result = self.trace_with(spans, &tree);
        self.tree = tree;
        result
    }

    /// A storing pairing keeps what waits for other traces as pending rows (its reader pairs
    /// them); a query-time one meets the other partitions and pairs it.
    fn finish(&mut self, rendezvous: &Rendezvous<Pending>) -> Result<()> {
        if self.stubs.is_some() {
            return self.stub_pending();
        }
        let pending = std::mem::take(&mut self.pending);
        let Some(deposits) = rendezvous.arrive(pending) else { return Ok(()) };
        self.pair_across_traces(deposits)
    }

    fn held_bytes(&self) -> usize {
        self.pending.bytes
    }

    fn take_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.rows == 0 {
            return Ok(None);
        }
        self.rows = 0;
        let mut columns: Vec<arrow::array::ArrayRef> = vec![
            Arc::new(self.trace_id.finish()),
            Arc::new(self.start_time.finish().with_timezone("UTC")),
            Arc::new(self.caller.finish()),
            Arc::new(self.caller_kind.finish()),
            Arc::new(self.caller_operation.finish()),
            Arc::new(self.callee.finish()),
            Arc::new(self.callee_kind.finish()),
            Arc::new(self.callee_operation.finish()),
            Arc::new(self.connection.finish()),
            Arc::new(self.via.finish()),
            Arc::new(self.client_span_id.finish()),
            Arc::new(self.server_span_id.finish()),
            Arc::new(self.client_duration.finish()),
            Arc::new(self.server_duration.finish()),
            Arc::new(self.gap.finish()),
            Arc::new(self.error.finish()),
            Arc::new(self.depth.finish()),
            Arc::new(self.root_service.finish()),
            Arc::new(self.root_operation.finish()),
        ];
        let schema = match &mut self.stubs {
            Some(stubs) => {
                columns.push(Arc::new(stubs.pending.finish()));
                columns.push(Arc::new(stubs.linked_spans.finish()));
                stored_edges_schema()
            }
            None => edges_schema(),
        };
        Ok(Some(RecordBatch::try_new(schema, columns)?))
    }
}

#[cfg(test)]
mod tests {
    use super::url_host;

    #[test]
    fn url_hosts() {
        assert_eq!(url_host("https://api.stripe.com/v1/charges"), Some("api.stripe.com"));
        assert_eq!(url_host("http://user:pw@example.org:8080/x?y"), Some("example.org"));
        assert_eq!(url_host("http://[::1]:9000/"), Some("::1"));
        assert_eq!(url_host("https://"), None);
    }
}
