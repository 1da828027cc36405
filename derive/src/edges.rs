//! Hops (design.md §4): every service-to-service call of a trace, paired from its spans by
//! [`EdgePairing`] (RPC pairs, virtual nodes for what is not instrumented, messaging, inferred hops,
//! depth and root), as rows of [`edges_schema`]. A consumer linked to a producer in another trace
//! is paired when every trace has been seen ([`crate::Rendezvous`]).

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    BooleanBuilder, FixedSizeBinaryBuilder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampNanosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use hopscope_schemas::columns::{self as c, connection, edge, node_kind, semconv};
use hopscope_schemas::spans::{kind, status, timestamp_type};

use crate::{CORE_COLUMNS, PerTrace, Rendezvous, Result, SpanColumns, TraceTree};

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
        }
    }
}

impl EdgePairing {
    fn push(&mut self, hop: Hop<'_>) -> Result<()> {
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
                Some(side) => ids.append_value(side.span_id)?,
                None => ids.append_null(),
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
        self.push(Hop {
            caller: &producer.service,
            caller_kind: node_kind::SERVICE,
            caller_operation: Some(&producer.operation),
            callee: &producer.callee.0,
            callee_kind: producer.callee.1,
            callee_operation: Some(&producer.callee_operation),
            connection: connection::UNINSTRUMENTED,
            via: producer.broker.as_deref(),
            client: Some(producer.side),
            server: None,
            depth: producer.depth,
            root: (&producer.root.0, &producer.root.1),
        })
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
                let root = (consumer.root.0.as_str(), consumer.root.1.as_str());
                let callee = (consumer.service.as_str(), consumer.operation.as_str());
                let from = (consumer.broker.as_deref(), consumer.peer.as_deref());
                self.push(entry_hop(consumer.side, callee, from, consumer.depth, root))?;
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
    for i in 0..len {
        let mut chain = Vec::new();
        let mut cur = i;
        let resolved = loop {
            if let Some(known) = hops[cur] {
                break Some(known);
            }
            chain.push(cur);
            match upstream[cur] {
                // A parent loop (malformed input) is cut where it closes.
                Some(up) if chain.len() <= len && !chain.contains(&up) => cur = up,
                _ => break None,
            }
        };
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
        let calls = CallsInTrace::of(spans, &tree);
        let depths = depths(spans, &tree, &calls);
        let result = tree.rows().try_for_each(|r| {
            let at = Position { row: r, depth: depths[tree.index(r)].0, root: depths[tree.index(r)].1 };
            self.push_arrival(spans, &tree, &calls, at)?;
            self.push_call_out(spans, &tree, &calls, at)
        });
        self.tree = tree;
        result
    }

    fn finish(&mut self, rendezvous: &Rendezvous<Pending>) -> Result<()> {
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
        let batch = RecordBatch::try_new(
            edges_schema(),
            vec![
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
            ],
        )?;
        Ok(Some(batch))
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
