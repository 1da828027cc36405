//! Hidden dependencies (design.md §4) from the `edges` table: the service graph with its virtual
//! nodes, resources shared by several services, what each entry endpoint reaches transitively, and
//! asynchronous links through brokers.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::arrow::array::Array;
use datafusion::functions::expr_fn::coalesce;
use datafusion::functions_aggregate::expr_fn::{count, max, percentile_cont};
use datafusion::prelude::{col, lit};
use hopscope_schemas::api::{
    AsyncLinkView, DependenciesView, EndpointDependenciesView, GraphEdgeView, GraphNodeView, ReachedNodeView,
    SharedResourceView, SlowestHopView,
};
use hopscope_schemas::columns::{connection, edge, node_kind};

use crate::engine::EDGES_TABLE;
use crate::latency::{Results, count_where, in_range, percentile_aggregates};
use crate::params::{TimeRange, format_time};
use crate::{QueryEngine, QueryError};

/// The duration of a call as its caller saw it: the client span's, else the server span's.
const CALL_NS: &str = "call_ns";

/// Node kinds that are shared resources when several services use them.
const RESOURCE_KINDS: &[&str] = &[node_kind::DATABASE, node_kind::CACHE, node_kind::MESSAGING];

impl QueryEngine {
    /// The dependencies seen in the calls of a time range.
    pub async fn dependencies(&self, range: TimeRange) -> Result<DependenciesView, QueryError> {
        let edges = self
            .context()
            .table(EDGES_TABLE)
            .await?
            .filter(in_range(edge::START_TIME, range))?
            .with_column(CALL_NS, coalesce(vec![col(edge::CLIENT_DURATION_NS), col(edge::SERVER_DURATION_NS)]))?;
        let p99 = |name: &str| percentile_cont(col(CALL_NS).sort(true, false), lit(0.99)).alias(name);

        // The graph.
        let graph = edges
            .clone()
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
        let mut nodes: BTreeMap<String, (String, u64)> = BTreeMap::new();
        let mut graph_edges = Vec::new();
        let mut users: BTreeMap<String, (String, BTreeSet<String>, u64)> = BTreeMap::new();
        for batch in &graph {
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
                nodes.entry(caller.value(row).to_owned()).or_insert_with(|| (caller_kind.value(row).to_owned(), 0));
                nodes
                    .entry(callee.value(row).to_owned())
                    .or_insert_with(|| (callee_kind.value(row).to_owned(), 0))
                    .1 += calls;
                if RESOURCE_KINDS.contains(&callee_kind.value(row)) && caller_kind.value(row) == node_kind::SERVICE {
                    let entry = users
                        .entry(callee.value(row).to_owned())
                        .or_insert_with(|| (callee_kind.value(row).to_owned(), BTreeSet::new(), 0));
                    entry.1.insert(caller.value(row).to_owned());
                    entry.2 += calls;
                }
                graph_edges.push(GraphEdgeView {
                    caller: caller.value(row).to_owned(),
                    callee: callee.value(row).to_owned(),
                    connection: connection.value(row).to_owned(),
                    calls,
                    errors: errors.value(row) as u64,
                    p99_ns: if p99.is_null(row) { 0.0 } else { p99.value(row) },
                });
            }
        }

        // Asynchronous links; their brokers are resources of both sides.
        let mut aggregates = vec![count(lit(1)).alias("messages")];
        aggregates.extend(percentile_aggregates(edge::GAP_NS, "delay"));
        let links = edges
            .clone()
            .filter(col(edge::CONNECTION).eq(lit(connection::MESSAGING)))?
            .aggregate(vec![col(edge::CALLER), col(edge::VIA), col(edge::CALLEE)], aggregates)?
            .collect()
            .await?;
        let mut async_links = Vec::new();
        for batch in &links {
            let r = Results(batch);
            let (producer, via, consumer, messages) =
                (r.strings(edge::CALLER)?, r.strings(edge::VIA)?, r.strings(edge::CALLEE)?, r.ints("messages")?);
            for row in 0..batch.num_rows() {
                let broker = via.is_valid(row).then(|| via.value(row).to_owned());
                if let Some(broker) = &broker {
                    let entry = users
                        .entry(broker.clone())
                        .or_insert_with(|| (node_kind::MESSAGING.to_owned(), BTreeSet::new(), 0));
                    entry.1.insert(producer.value(row).to_owned());
                    entry.1.insert(consumer.value(row).to_owned());
                    entry.2 += messages.value(row) as u64;
                }
                async_links.push(AsyncLinkView {
                    producer: producer.value(row).to_owned(),
                    broker,
                    consumer: consumer.value(row).to_owned(),
                    messages: messages.value(row) as u64,
                    queue_delay: r.percentiles("delay", row)?,
                });
            }
        }

        // What each entry endpoint reaches.
        let reach = edges
            .filter(col(edge::CONNECTION).not_eq(lit(connection::ENTRY)))?
            .aggregate(
                vec![
                    col(edge::ROOT_SERVICE),
                    col(edge::ROOT_OPERATION),
                    col(edge::CALLER),
                    col(edge::CALLEE),
                    col(edge::CALLEE_KIND),
                ],
                vec![count(lit(1)).alias("calls"), max(col(edge::DEPTH)).alias("depth"), p99("p99")],
            )?
            .collect()
            .await?;
        type Endpoint = (BTreeMap<String, ReachedNodeView>, Option<SlowestHopView>);
        let mut endpoints: BTreeMap<(String, String), Endpoint> = BTreeMap::new();
        for batch in &reach {
            let r = Results(batch);
            let (service, operation, caller, callee, kind) = (
                r.strings(edge::ROOT_SERVICE)?,
                r.strings(edge::ROOT_OPERATION)?,
                r.strings(edge::CALLER)?,
                r.strings(edge::CALLEE)?,
                r.strings(edge::CALLEE_KIND)?,
            );
            let (calls, depth, p99) = (r.ints("calls")?, r.ints("depth")?, r.floats("p99")?);
            for row in 0..batch.num_rows() {
                let (reached, slowest) =
                    endpoints.entry((service.value(row).to_owned(), operation.value(row).to_owned())).or_default();
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

        graph_edges
            .sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| (&a.caller, &a.callee).cmp(&(&b.caller, &b.callee))));
        Ok(DependenciesView {
            start: format_time(range.start_ns),
            end: format_time(range.end_ns),
            nodes: nodes.into_iter().map(|(name, (kind, calls_in))| GraphNodeView { name, kind, calls_in }).collect(),
            edges: graph_edges,
            shared_resources: users
                .into_iter()
                .filter(|(_, (_, services, _))| services.len() >= 2)
                .map(|(name, (kind, services, calls))| SharedResourceView {
                    name,
                    kind,
                    services: services.into_iter().collect(),
                    calls,
                })
                .collect(),
            endpoints: endpoints
                .into_iter()
                .map(|((service, operation), (reached, slowest_hop))| EndpointDependenciesView {
                    depth: reached.values().map(|n| n.max_depth).max().unwrap_or(1),
                    service,
                    operation,
                    reaches: reached.into_values().collect(),
                    slowest_hop,
                })
                .collect(),
            async_links,
        })
    }
}
