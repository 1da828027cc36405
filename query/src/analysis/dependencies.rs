//! Hidden dependencies (design.md §4) from the `edges` table: the service graph with its virtual
//! nodes, resources shared by several services, what each entry endpoint reaches transitively, and
//! asynchronous links through brokers.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::arrow::array::Array;
use datafusion::functions::expr_fn::coalesce;
use datafusion::functions_aggregate::expr_fn::{count, max, percentile_cont};
use datafusion::prelude::{col, lit, when};
use hopscope_schemas::api::{
    AsyncLinkView, DependenciesView, EndpointDependenciesView, GraphEdgeView, GraphNodeView, ReachedNodeView,
    SharedResourceView, SlowestHopView,
};
use hopscope_schemas::columns::{connection, edge, node_kind};

use datafusion::dataframe::DataFrame;
use datafusion::prelude::SessionContext;
use hopscope_schemas::time::{TimeRange, format_time};

use super::frame::{Results, count_where, in_range, percentile_aggregates};
use crate::QueryError;
use crate::tables::EDGES as EDGES_TABLE;

/// The duration of a call as its caller saw it: the client span's, else the server span's.
const CALL_NS: &str = "call_ns";

/// The grouping column of the reach query that names a messaging hop's consumer operation.
const LINKED_OPERATION: &str = "linked_operation";

/// Node kinds that are shared resources when several services use them.
const RESOURCE_KINDS: &[&str] = &[node_kind::DATABASE, node_kind::CACHE, node_kind::MESSAGING];

/// The dependencies seen in the calls of a time range.
pub(crate) async fn dependencies(ctx: &SessionContext, range: TimeRange) -> Result<DependenciesView, QueryError> {
    let edges = ctx
        .table(EDGES_TABLE)
        .await?
        .filter(in_range(edge::START_TIME, range))?
        .with_column(CALL_NS, coalesce(vec![col(edge::CLIENT_DURATION_NS), col(edge::SERVER_DURATION_NS)]))?;
    // Three aggregations of the same calls, independent of each other: run side by side, each
    // one's final (single-threaded) phase overlaps the others' scans.
    let (mut graph, (async_links, brokers), endpoints) =
        futures::try_join!(graph(edges.clone()), async_links(edges.clone()), endpoints(edges))?;
    for (broker, (services, messages)) in brokers {
        let entry = graph.users.entry(broker).or_insert_with(|| (node_kind::MESSAGING.to_owned(), BTreeSet::new(), 0));
        entry.1.extend(services);
        entry.2 += messages;
    }
    graph.edges.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| (&a.caller, &a.callee).cmp(&(&b.caller, &b.callee))));
    Ok(DependenciesView {
        start: format_time(range.start_ns),
        end: format_time(range.end_ns),
        nodes: graph.nodes.into_iter().map(|(name, (kind, calls_in))| GraphNodeView { name, kind, calls_in }).collect(),
        edges: graph.edges,
        shared_resources: graph
            .users
            .into_iter()
            .filter(|(_, (_, services, _))| services.len() >= 2)
            .map(|(name, (kind, services, calls))| SharedResourceView {
                name,
                kind,
                services: services.into_iter().collect(),
                calls,
            })
            .collect(),
        endpoints,
        async_links,
    })
}

/// The p99 of the calls' durations, named `name`.
fn p99(name: &str) -> datafusion::prelude::Expr {
    percentile_cont(col(CALL_NS).sort(true, false), lit(0.99)).alias(name)
}

/// Who uses each resource: its kind, the services, and their calls.
type Users = BTreeMap<String, (String, BTreeSet<String>, u64)>;

/// The service graph: nodes with the calls they receive, edges, and who uses each resource.
struct Graph {
    nodes: BTreeMap<String, (String, u64)>,
    edges: Vec<GraphEdgeView>,
    users: Users,
}

async fn graph(edges: DataFrame) -> Result<Graph, QueryError> {
    let batches = edges
        .aggregate(
            vec![
                col(edge::CALLER),
                col(edge::CALLER_KIND),
                col(edge::CALLEE),
                col(edge::CALLEE_KIND),
                col(edge::CONNECTION),
            ],
            vec![count(lit(1)).alias("calls"), count_where(col(edge::ERROR)).alias("errors"), p99("p99")],
        )?
        .collect()
        .await?;
    let mut graph = Graph { nodes: BTreeMap::new(), edges: Vec::new(), users: Users::new() };
    for batch in &batches {
        let r = Results(batch);
        let (caller, caller_kind, callee, callee_kind, connection) = (
            r.strings(edge::CALLER)?,
            r.strings(edge::CALLER_KIND)?,
            r.strings(edge::CALLEE)?,
            r.strings(edge::CALLEE_KIND)?,
            r.strings(edge::CONNECTION)?,
        );
        let (calls, errors, p99) = (r.ints("calls")?, r.ints("errors")?, r.floats("p99")?);
        for row in 0..batch.num_rows() {
            let calls = calls.value(row) as u64;
            graph.nodes.entry(caller.value(row).to_owned()).or_insert_with(|| (caller_kind.value(row).to_owned(), 0));
            graph
                .nodes
                .entry(callee.value(row).to_owned())
                .or_insert_with(|| (callee_kind.value(row).to_owned(), 0))
                .1 += calls;
            if RESOURCE_KINDS.contains(&callee_kind.value(row)) && caller_kind.value(row) == node_kind::SERVICE {
                let entry = graph
                    .users
                    .entry(callee.value(row).to_owned())
                    .or_insert_with(|| (callee_kind.value(row).to_owned(), BTreeSet::new(), 0));
                entry.1.insert(caller.value(row).to_owned());
                entry.2 += calls;
            }
            graph.edges.push(GraphEdgeView {
                caller: caller.value(row).to_owned(),
                callee: callee.value(row).to_owned(),
                connection: connection.value(row).to_owned(),
                calls,
                errors: errors.value(row) as u64,
                p99_ns: if p99.is_null(row) { 0.0 } else { p99.value(row) },
            });
        }
    }
    Ok(graph)
}

/// Per broker, the services on either side of it and the messages through it.
type Brokers = BTreeMap<String, (BTreeSet<String>, u64)>;

/// Asynchronous links, producer to consumer through a broker, with the queueing delay; and the
/// brokers, each a resource of both sides.
async fn async_links(edges: DataFrame) -> Result<(Vec<AsyncLinkView>, Brokers), QueryError> {
    let mut aggregates = vec![count(lit(1)).alias("messages")];
    aggregates.extend(percentile_aggregates(edge::GAP_NS, "delay"));
    let batches = edges
        .filter(col(edge::CONNECTION).eq(lit(connection::MESSAGING)))?
        .aggregate(vec![col(edge::CALLER), col(edge::VIA), col(edge::CALLEE)], aggregates)?
        .collect()
        .await?;
    let (mut links, mut brokers) = (Vec::new(), Brokers::new());
    for batch in &batches {
        let r = Results(batch);
        let (producer, via, consumer, messages) =
            (r.strings(edge::CALLER)?, r.strings(edge::VIA)?, r.strings(edge::CALLEE)?, r.ints("messages")?);
        for row in 0..batch.num_rows() {
            let broker = via.is_valid(row).then(|| via.value(row).to_owned());
            if let Some(broker) = &broker {
                let entry = brokers.entry(broker.clone()).or_default();
                entry.0.insert(producer.value(row).to_owned());
                entry.0.insert(consumer.value(row).to_owned());
                entry.1 += messages.value(row) as u64;
            }
            links.push(AsyncLinkView {
                producer: producer.value(row).to_owned(),
                broker,
                consumer: consumer.value(row).to_owned(),
                messages: messages.value(row) as u64,
                queue_delay: r.percentiles("delay", row)?,
            });
        }
    }
    Ok((links, brokers))
}

/// What each entry endpoint reaches, with depth and its slowest hop, messages followed into the
/// consumers' own traces.
async fn endpoints(edges: DataFrame) -> Result<Vec<EndpointDependenciesView>, QueryError> {
    let batches = edges
        .filter(col(edge::CONNECTION).not_eq(lit(connection::ENTRY)))?
        .aggregate(
            vec![
                col(edge::ROOT_SERVICE),
                col(edge::ROOT_OPERATION),
                col(edge::CALLER),
                col(edge::CALLEE),
                col(edge::CALLEE_KIND),
                // The consumer operation of a messaging hop, to follow messages into the
                // consumers' own traces (NULL, so not splitting the group, for other hops).
                when(col(edge::CONNECTION).eq(lit(connection::MESSAGING)), col(edge::CALLEE_OPERATION))
                    .end()?
                    .alias(LINKED_OPERATION),
            ],
            vec![count(lit(1)).alias("calls"), max(col(edge::DEPTH)).alias("depth"), p99("p99")],
        )?
        .collect()
        .await?;
    let mut endpoints = Reach::new();
    let mut linked = Links::new();
    for batch in &batches {
        let r = Results(batch);
        let (service, operation, caller, callee, kind) = (
            r.strings(edge::ROOT_SERVICE)?,
            r.strings(edge::ROOT_OPERATION)?,
            r.strings(edge::CALLER)?,
            r.strings(edge::CALLEE)?,
            r.strings(edge::CALLEE_KIND)?,
        );
        let (calls, depth, p99) = (r.ints("calls")?, r.ints("depth")?, r.floats("p99")?);
        let linked_operation = r.strings(LINKED_OPERATION)?;
        for row in 0..batch.num_rows() {
            let endpoint = (service.value(row).to_owned(), operation.value(row).to_owned());
            if linked_operation.is_valid(row) {
                let consumer = (callee.value(row).to_owned(), linked_operation.value(row).to_owned());
                linked.entry(endpoint.clone()).or_default().push((consumer, depth.value(row) as i32));
            }
            let (reached, slowest) = endpoints.entry(endpoint).or_default();
            let node = reached.entry(callee.value(row).to_owned()).or_insert_with(|| ReachedNodeView {
                name: callee.value(row).to_owned(),
                kind: kind.value(row).to_owned(),
                calls: 0,
                max_depth: 0,
            });
            node.calls += calls.value(row) as u64;
            node.max_depth = node.max_depth.max(depth.value(row) as i32);
            let p99 = if p99.is_null(row) { 0.0 } else { p99.value(row) };
            if slowest.as_ref().is_none_or(|s| p99 > s.p99_ns) {
                *slowest = Some(SlowestHopView {
                    caller: caller.value(row).to_owned(),
                    callee: callee.value(row).to_owned(),
                    p99_ns: p99,
                });
            }
        }
    }
    follow_messages(&mut endpoints, &linked);
    Ok(endpoints
        .into_iter()
        .map(|((service, operation), (reached, slowest_hop))| EndpointDependenciesView {
            depth: reached.values().map(|n| n.max_depth).max().unwrap_or(1),
            service,
            operation,
            reaches: reached.into_values().collect(),
            slowest_hop,
        })
        .collect())
}

/// An endpoint or a consumer: (service, operation).
type Operation = (String, String);

/// Per endpoint, the consumers its messages reach and the messaging hop's depth.
type Links = BTreeMap<Operation, Vec<(Operation, i32)>>;

/// What each endpoint reaches and its slowest hop, by (service, operation) of the endpoint.
type Reach = BTreeMap<Operation, (BTreeMap<String, ReachedNodeView>, Option<SlowestHopView>)>;

/// Messages carry a request on: an endpoint also reaches what the consumers of its messages reach
/// when those run in traces of their own (their hops are rooted at the consumer, which is then an
/// endpoint too), at the depth of the messaging hop plus theirs, and so on through further messages.
/// A node already reached keeps its calls (a consumer in the producer's own trace is counted there).
fn follow_messages(endpoints: &mut Reach, linked: &Links) {
    let direct = endpoints.clone();
    for (endpoint, (reached, slowest)) in endpoints.iter_mut() {
        let mut pending: Vec<(Operation, i32)> = linked.get(endpoint).cloned().unwrap_or_default();
        let mut seen = BTreeSet::from([endpoint.clone()]);
        while let Some((consumer, depth)) = pending.pop() {
            if !seen.insert(consumer.clone()) {
                continue;
            }
            let Some((their_reach, their_slowest)) = direct.get(&consumer) else { continue };
            // The consumer's own hops count its arrival as depth 1; here it arrived at `depth`.
            for node in their_reach.values() {
                let at = depth + node.max_depth - 1;
                reached
                    .entry(node.name.clone())
                    .and_modify(|n| n.max_depth = n.max_depth.max(at))
                    .or_insert_with(|| ReachedNodeView { max_depth: at, ..node.clone() });
            }
            if let Some(theirs) = their_slowest
                && slowest.as_ref().is_none_or(|s| theirs.p99_ns > s.p99_ns)
            {
                *slowest = Some(theirs.clone());
            }
            for (next, next_depth) in linked.get(&consumer).into_iter().flatten() {
                pending.push((next.clone(), depth + next_depth - 1));
            }
        }
    }
}
