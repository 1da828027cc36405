//! Hidden dependencies (design.md §4): the service graph with its virtual nodes, resources shared
//! by several services, what each entry endpoint reaches transitively, and asynchronous links
//! through brokers.
//!
//! Each is a grouping of the calls of a range: by default of the `dependency_rollup` rows over the
//! range widened to whole minutes (percentiles from merged latency sketches, within
//! [`sketch::RELATIVE_ERROR`]), or, when exact percentiles are asked or the range holds span files
//! stored before that rollup existed, of every `edges` row of the range. Both give the same calls, messages and depths over the same range.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::arrow::array::Array;
use datafusion::dataframe::DataFrame;
use datafusion::execution::FunctionRegistry;
use datafusion::functions::expr_fn::coalesce;
use datafusion::functions_aggregate::expr_fn::{count, max, percentile_cont, sum};
use datafusion::logical_expr::{AggregateUDF, Expr};
use datafusion::prelude::{SessionContext, col, lit, when};
use hopscope_schemas::api::{
    AsyncLinkView, DependenciesView, EndpointDependenciesView, GraphEdgeView, GraphNodeView, PercentileAccuracy,
    Percentiles, ReachedNodeView, SharedResourceView, SlowestHopView,
};
use hopscope_schemas::columns::{connection, dependency_rollup as dr, edge, node_kind};
use hopscope_schemas::sketch;
use hopscope_schemas::time::{TimeRange, format_time};

use super::frame::{Results, count_where, in_range, percentile_aggregates, rollup_computed, whole_minutes};
use crate::QueryError;
use crate::tables::{DEPENDENCY_ROLLUP, EDGES};

/// What `GET /api/v1/dependencies` asks.
#[derive(Debug, Clone, Copy)]
pub struct DependenciesQuery {
    pub range: TimeRange,
    /// Percentiles from every call of the asked range, instead of the per-minute sketches.
    pub exact: bool,
}

/// The duration of a call as its caller saw it: the client span's, else the server span's.
const CALL_NS: &str = "call_ns";

/// The aggregates the three groupings read, whatever the source.
const CALLS: &str = "calls";
const ERRORS: &str = "errors";
const DEPTH: &str = "max_depth";
/// The calls' durations: a p99 (exact), or a merged sketch.
const CALL: &str = "call";
/// The gaps (queue delays): four percentiles `gap_p50` … (exact), or a merged sketch `gap`.
const GAP: &str = "gap";

/// The calls a dependency answer groups (see the module's documentation).
#[derive(Clone)]
enum Calls {
    /// Every `edges` row of the range, with [`CALL_NS`].
    Every(DataFrame),
    /// The `dependency_rollup` rows of the range, and the sketch merge.
    RolledUp(DataFrame, std::sync::Arc<AggregateUDF>),
}

impl Calls {
    /// The number of calls, the calls with an error, and the calls' durations, named [`CALLS`],
    /// [`ERRORS`] and [`CALL`].
    fn aggregates(&self) -> Vec<Expr> {
        match self {
            Calls::Every(_) => vec![
                count(lit(1)).alias(CALLS),
                count_where(col(edge::ERROR)).alias(ERRORS),
                percentile_cont(col(CALL_NS).sort(true, false), lit(0.99)).alias(CALL),
            ],
            Calls::RolledUp(_, merge) => vec![
                sum(col(dr::CALLS)).alias(CALLS),
                sum(col(dr::ERRORS)).alias(ERRORS),
                merge.call(vec![col(dr::CALL_SKETCH)]).alias(CALL),
            ],
        }
    }

    /// The calls that meet `filter` grouped by `group`, with `aggregates` and the deepest depth as
    /// [`DEPTH`].
    fn group(
        &self,
        filter: Option<Expr>,
        group: Vec<Expr>,
        mut aggregates: Vec<Expr>,
    ) -> Result<DataFrame, QueryError> {
        let frame = match self {
            Calls::Every(frame) | Calls::RolledUp(frame, _) => frame.clone(),
        };
        let frame = match filter {
            Some(filter) => frame.filter(filter)?,
            None => frame,
        };
        aggregates.push(max(col(edge::DEPTH)).alias(DEPTH));
        match self {
            Calls::Every(_) => Ok(frame.aggregate(group, aggregates)?),
            Calls::RolledUp(_, merge) => {
                // A correction can leave a depth (or a whole group) without calls: sum per depth
                // first, and keep the depths that have calls, so the deepest is one calls reached.
                let mut by_depth = group.clone();
                by_depth.push(col(edge::DEPTH));
                let per_depth = frame
                    .aggregate(
                        by_depth,
                        vec![
                            sum(col(dr::CALLS)).alias(dr::CALLS),
                            sum(col(dr::ERRORS)).alias(dr::ERRORS),
                            merge.call(vec![col(dr::CALL_SKETCH)]).alias(dr::CALL_SKETCH),
                            merge.call(vec![col(dr::GAP_SKETCH)]).alias(dr::GAP_SKETCH),
                        ],
                    )?
                    .filter(col(dr::CALLS).gt(lit(0i64)))?;
                // The group's columns keep their names through the first grouping.
                Ok(per_depth.aggregate(group, aggregates)?)
            }
        }
    }

    /// The queue delays: four percentiles (exact) or a merged sketch.
    fn gaps(&self) -> Vec<Expr> {
        match self {
            Calls::Every(_) => percentile_aggregates(edge::GAP_NS, GAP),
            Calls::RolledUp(_, merge) => vec![merge.call(vec![col(dr::GAP_SKETCH)]).alias(GAP)],
        }
    }

    /// The p99 of the calls' durations of a result row.
    fn p99(&self, r: &Results, row: usize) -> Result<f64, QueryError> {
        Ok(match self {
            Calls::Every(_) => {
                let p99 = r.floats(CALL)?;
                if p99.is_null(row) { 0.0 } else { p99.value(row) }
            }
            Calls::RolledUp(..) => r.sketch(CALL, row)?.and_then(|s| s.quantile(0.99)).unwrap_or(0.0),
        })
    }

    /// The queue delays of a result row.
    fn gap_percentiles(&self, r: &Results, row: usize) -> Result<Option<Percentiles>, QueryError> {
        match self {
            Calls::Every(_) => r.percentiles(GAP, row),
            Calls::RolledUp(..) => r.sketch_percentiles(GAP, row),
        }
    }
}

/// The dependencies seen in the calls of a time range.
pub(crate) async fn dependencies(
    ctx: &SessionContext,
    query: DependenciesQuery,
) -> Result<DependenciesView, QueryError> {
    let exact = query.exact || rollup_computed(ctx, DEPENDENCY_ROLLUP, whole_minutes(query.range)).await?;
    let (range, calls, percentiles) = if exact {
        let edges = ctx
            .table(EDGES)
            .await?
            .filter(in_range(edge::START_TIME, query.range))?
            .with_column(CALL_NS, coalesce(vec![col(edge::CLIENT_DURATION_NS), col(edge::SERVER_DURATION_NS)]))?;
        (query.range, Calls::Every(edges), PercentileAccuracy { method: "exact", relative_error: 0.0 })
    } else {
        let range = whole_minutes(query.range);
        let rows = ctx.table(DEPENDENCY_ROLLUP).await?.filter(in_range(dr::MINUTE, range))?;
        let accuracy = PercentileAccuracy { method: "sketch", relative_error: sketch::RELATIVE_ERROR };
        (range, Calls::RolledUp(rows, ctx.udaf("merge_sketches")?), accuracy)
    };
    // Three groupings of the same calls, independent of each other: run side by side, each one's
    // final (single-threaded) phase overlaps the others' scans.
    let (mut graph, (async_links, brokers), endpoints) =
        futures::try_join!(graph(&calls, range), async_links(&calls), endpoints(&calls))?;
    for (broker, (services, messages)) in brokers {
        let entry = graph.users.entry(broker).or_insert_with(|| (node_kind::MESSAGING.to_owned(), BTreeSet::new(), 0));
        entry.1.extend(services);
        entry.2 += messages;
    }
    graph.edges.sort_by(|a, b| {
        b.calls
            .cmp(&a.calls)
            .then_with(|| (&a.caller, &a.callee, &a.connection).cmp(&(&b.caller, &b.callee, &b.connection)))
    });
    Ok(DependenciesView {
        start: format_time(range.start_ns),
        end: format_time(range.end_ns),
        percentiles,
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

/// Who uses each resource: its kind, the services, and their calls.
type Users = BTreeMap<String, (String, BTreeSet<String>, u64)>;

/// The service graph: nodes with the calls they receive, edges, and who uses each resource.
struct Graph {
    nodes: BTreeMap<String, (String, u64)>,
    edges: Vec<GraphEdgeView>,
    users: Users,
}

async fn graph(calls: &Calls, range: TimeRange) -> Result<Graph, QueryError> {
    let group = vec![
        col(edge::CALLER),
        col(edge::CALLER_KIND),
        col(edge::CALLEE),
        col(edge::CALLEE_KIND),
        col(edge::CONNECTION),
    ];
    let batches = calls.group(None, group, calls.aggregates())?.collect().await?;
    let seconds = range.seconds();
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
        let (count, errors) = (r.ints(CALLS)?, r.ints(ERRORS)?);
        for row in 0..batch.num_rows() {
            let calls_made = count.value(row) as u64;
            node(&mut graph.nodes, caller.value(row), caller_kind.value(row));
            node(&mut graph.nodes, callee.value(row), callee_kind.value(row)).1 += calls_made;
            if RESOURCE_KINDS.contains(&callee_kind.value(row)) && caller_kind.value(row) == node_kind::SERVICE {
                let entry = graph
                    .users
                    .entry(callee.value(row).to_owned())
                    .or_insert_with(|| (callee_kind.value(row).to_owned(), BTreeSet::new(), 0));
                if node_kind::prevails(callee_kind.value(row), &entry.0) {
                    entry.0 = callee_kind.value(row).to_owned();
                }
                entry.1.insert(caller.value(row).to_owned());
                entry.2 += calls_made;
            }
            graph.edges.push(GraphEdgeView {
                caller: caller.value(row).to_owned(),
                callee: callee.value(row).to_owned(),
                connection: connection.value(row).to_owned(),
                calls: calls_made,
                errors: errors.value(row) as u64,
                rate_per_s: calls_made as f64 / seconds,
                p99_ns: calls.p99(&r, row)?,
            });
        }
    }
    Ok(graph)
}

/// The graph's node `name`, seen as `kind` (the kind that prevails when its calls name several).
fn node<'g>(nodes: &'g mut BTreeMap<String, (String, u64)>, name: &str, kind: &str) -> &'g mut (String, u64) {
    let node = nodes.entry(name.to_owned()).or_insert_with(|| (kind.to_owned(), 0));
    if node_kind::prevails(kind, &node.0) {
        node.0 = kind.to_owned();
    }
    node
}

/// Node kinds that are shared resources when several services use them.
const RESOURCE_KINDS: &[&str] = &[node_kind::DATABASE, node_kind::CACHE, node_kind::MESSAGING];

/// Per broker, the services on either side of it and the messages through it.
type Brokers = BTreeMap<String, (BTreeSet<String>, u64)>;

/// Asynchronous links, producer to consumer through a broker, with the queueing delay; and the
/// brokers, each a resource of both sides.
async fn async_links(calls: &Calls) -> Result<(Vec<AsyncLinkView>, Brokers), QueryError> {
    let mut aggregates = vec![calls.aggregates().swap_remove(0)];
    aggregates.extend(calls.gaps());
    let messaging = col(edge::CONNECTION).eq(lit(connection::MESSAGING));
    let batches = calls
        .group(Some(messaging), vec![col(edge::CALLER), col(edge::VIA), col(edge::CALLEE)], aggregates)?
        .collect()
        .await?;
    let (mut links, mut brokers) = (Vec::new(), Brokers::new());
    for batch in &batches {
        let r = Results(batch);
        let (producer, via, consumer, messages) =
            (r.strings(edge::CALLER)?, r.strings(edge::VIA)?, r.strings(edge::CALLEE)?, r.ints(CALLS)?);
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
                queue_delay: calls.gap_percentiles(&r, row)?,
            });
        }
    }
    links.sort_by(|a, b| (&a.producer, &a.broker, &a.consumer).cmp(&(&b.producer, &b.broker, &b.consumer)));
    Ok((links, brokers))
}

/// What each entry endpoint reaches, with depth and its slowest hop, messages followed into the
/// consumers' own traces.
async fn endpoints(calls: &Calls) -> Result<Vec<EndpointDependenciesView>, QueryError> {
    // The consumer operation of a messaging hop, to follow messages into the consumers' own traces
    // (NULL, so not splitting the group, for other hops).
    let consumer_operation = match calls {
        Calls::Every(_) => when(col(edge::CONNECTION).eq(lit(connection::MESSAGING)), col(edge::CALLEE_OPERATION))
            .end()?
            .alias(dr::CONSUMER_OPERATION),
        Calls::RolledUp(..) => col(dr::CONSUMER_OPERATION),
    };
    let group = vec![
        col(edge::ROOT_SERVICE),
        col(edge::ROOT_OPERATION),
        col(edge::CALLER),
        col(edge::CALLEE),
        col(edge::CALLEE_KIND),
        consumer_operation,
    ];
    let not_entry = col(edge::CONNECTION).not_eq(lit(connection::ENTRY));
    let batches = calls.group(Some(not_entry), group, calls.aggregates())?.collect().await?;
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
        let (count, depth) = (r.ints(CALLS)?, r.ints(DEPTH)?);
        let linked_operation = r.strings(dr::CONSUMER_OPERATION)?;
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
            if node_kind::prevails(kind.value(row), &node.kind) {
                node.kind = kind.value(row).to_owned();
            }
            node.calls += count.value(row) as u64;
            node.max_depth = node.max_depth.max(depth.value(row) as i32);
            let p99 = calls.p99(&r, row)?;
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
