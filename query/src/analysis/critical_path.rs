//! Critical paths of one trace and over many: the per-trace paths come from the algorithm in
//! [`super::paths`] run on the trace's spans; the aggregate groups the `critical_path` table.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::Result as DfResult;
use datafusion::prelude::SessionContext;
use hopscope_schemas::columns::critical_path as cp;

use crate::walk::{SpanColumns, TraceTree};
use hopscope_derive::paths::{critical_paths, path_spans};

/// What `GET /api/v1/critical-path` asks: paths whose root matches, started in the range.
#[derive(Debug, Clone)]
pub struct AggregatePathQuery {
    pub range: hopscope_schemas::time::TimeRange,
    pub service: Option<String>,
    pub operation: Option<String>,
}

/// percentile_cont over sorted values: rank q·(n−1), interpolating between neighbours.
fn percentile(sorted: &[i64], q: f64) -> f64 {
    let rank = q * (sorted.len().saturating_sub(1)) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] as f64 + (sorted[hi] - sorted[lo]) as f64 * (rank - lo as f64)
}

/// The critical path of each root of one trace; `None` when the trace is not stored.
pub(crate) async fn trace_critical_path(
    ctx: &SessionContext,
    trace_id: hopscope_schemas::TraceId,
) -> Result<Option<hopscope_schemas::api::TraceCriticalPathView>, crate::QueryError> {
    use datafusion::common::ScalarValue;
    use datafusion::prelude::{col, lit};
    use hopscope_schemas::api::{CriticalPathView, PathSectionView, PathSelfTimeView, TraceCriticalPathView};
    use hopscope_schemas::columns as c;

    let id = lit(ScalarValue::FixedSizeBinary(16, Some(trace_id.0.to_vec())));
    let batches = ctx
        .table(crate::tables::SPANS)
        .await?
        .filter(col(c::TRACE_ID).eq(id))?
        .select_columns(crate::walk::CORE_COLUMNS)?
        .sort(vec![col(c::START_TIME).sort(true, false), col(c::SPAN_ID).sort(true, false)])?
        .collect()
        .await?;
    let Some(first) = batches.first() else { return Ok(None) };
    let batch = datafusion::arrow::compute::concat_batches(&first.schema(), &batches)?;
    if batch.num_rows() == 0 {
        return Ok(None);
    }
    let spans = SpanColumns::new(&batch)?;
    let (mut tree, mut path_input) = (TraceTree::default(), Vec::new());
    tree.build(&spans, 0..batch.num_rows());
    path_spans(&spans, &tree, &mut path_input);
    let time = hopscope_schemas::time::format_time;
    let paths = critical_paths(&path_input)
        .into_iter()
        .map(|path| {
            let root = path.root;
            let mut self_times: Vec<PathSelfTimeView> = path
                .self_times()
                .into_iter()
                .map(|(span, self_ns)| PathSelfTimeView {
                    span_id: hex::encode(spans.span_id.value(span)),
                    service: spans.service(span).to_owned(),
                    operation: spans.name(span).to_owned(),
                    self_ns,
                })
                .collect();
            self_times.sort_by_key(|t| std::cmp::Reverse(t.self_ns));
            CriticalPathView {
                root_span_id: hex::encode(spans.span_id.value(root)),
                root_service: spans.service(root).to_owned(),
                root_operation: spans.name(root).to_owned(),
                start_time: time(spans.start_ns.value(root)),
                duration_ns: spans.duration_ns(root).max(0),
                sections: path
                    .sections
                    .iter()
                    .map(|s| PathSectionView {
                        span_id: hex::encode(spans.span_id.value(s.span)),
                        service: spans.service(s.span).to_owned(),
                        operation: spans.name(s.span).to_owned(),
                        start_time: time(s.start),
                        end_time: time(s.end),
                        start_time_unix_nano: s.start.to_string(),
                        duration_ns: s.end - s.start,
                    })
                    .collect(),
                self_times,
            }
        })
        .collect();
    Ok(Some(TraceCriticalPathView { trace_id: trace_id.to_hex(), paths }))
}

/// One group of paths (the typical ones, or the tail): how many, and their durations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PathGroup {
    pub(crate) traces: u64,
    pub(crate) min_duration_ns: i64,
    pub(crate) max_duration_ns: i64,
    pub(crate) mean_duration_ns: f64,
}

/// The aggregate critical path: the groups, and per (service, operation) its share of the path in
/// each, as rows of [`summary_schema`] ranked by the time it adds in the tail.
#[derive(Debug)]
pub(crate) struct AggregatePath {
    pub(crate) traces: u64,
    pub(crate) typical: PathGroup,
    pub(crate) tail: PathGroup,
    pub(crate) operations: RecordBatch,
}

/// The operations on the paths `query` matches, and per path its duration and each operation's
/// self time on it.
struct PathParts {
    operations: Vec<(String, String)>,
    /// One per (trace id, root span id).
    paths: HashMap<(Vec<u8>, Vec<u8>), Path>,
}

/// One critical path: its duration, and the self time each operation (by index into
/// [`PathParts::operations`]) has on it.
struct Path {
    duration_ns: i64,
    self_ns: Vec<(usize, i64)>,
}

async fn path_parts(ctx: &SessionContext, query: &AggregatePathQuery) -> Result<PathParts, crate::QueryError> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{DataType, Int64Type};
    use datafusion::common::ScalarValue;
    use datafusion::functions_aggregate::expr_fn::sum;
    use datafusion::prelude::{col, lit};

    let timestamp = |ns: i64| lit(ScalarValue::TimestampNanosecond(Some(ns), Some("UTC".into())));
    let mut condition = col(cp::START_TIME)
        .gt_eq(timestamp(query.range.start_ns))
        .and(col(cp::START_TIME).lt(timestamp(query.range.end_ns)));
    if let Some(service) = &query.service {
        condition = condition.and(col(cp::ROOT_SERVICE).eq(lit(service.as_str())));
    }
    if let Some(operation) = &query.operation {
        condition = condition.and(col(cp::ROOT_OPERATION).eq(lit(operation.as_str())));
    }
    let batches = ctx
        .table(crate::tables::CRITICAL_PATH)
        .await?
        .filter(condition)?
        .aggregate(
            vec![
                col(cp::TRACE_ID),
                col(cp::ROOT_SPAN_ID),
                col(cp::PATH_DURATION_NS),
                col(cp::SERVICE),
                col(cp::OPERATION),
            ],
            vec![sum(col(cp::SELF_NS)).alias(cp::SELF_NS)],
        )?
        .collect()
        .await?;

    let mut operations: Vec<(String, String)> = Vec::new();
    let mut operation_index: HashMap<(String, String), usize> = HashMap::new();
    let mut paths = HashMap::new();
    for batch in &batches {
        let text = |name: &str| -> Result<_, crate::QueryError> {
            Ok(datafusion::arrow::compute::cast(
                batch.column_by_name(name).ok_or_else(|| crate::QueryError::Corrupt(name.into()))?,
                &DataType::Utf8,
            )?)
        };
        let column =
            |name: &str| batch.column_by_name(name).cloned().ok_or_else(|| crate::QueryError::Corrupt(name.into()));
        let (trace, root) = (column(cp::TRACE_ID)?, column(cp::ROOT_SPAN_ID)?);
        let (trace, root) = (trace.as_fixed_size_binary(), root.as_fixed_size_binary());
        let duration = datafusion::arrow::compute::cast(&column(cp::PATH_DURATION_NS)?, &DataType::Int64)?;
        let duration = duration.as_primitive::<Int64Type>();
        let self_ns = datafusion::arrow::compute::cast(&column(cp::SELF_NS)?, &DataType::Int64)?;
        let self_ns = self_ns.as_primitive::<Int64Type>();
        let (service, operation) = (text(cp::SERVICE)?, text(cp::OPERATION)?);
        let (service, operation) = (service.as_string::<i32>(), operation.as_string::<i32>());
        for row in 0..batch.num_rows() {
            let key = (service.value(row).to_owned(), operation.value(row).to_owned());
            let index = *operation_index.entry(key.clone()).or_insert_with(|| {
                operations.push(key);
                operations.len() - 1
            });
            let path = paths
                .entry((trace.value(row).to_vec(), root.value(row).to_vec()))
                .or_insert_with(|| Path { duration_ns: duration.value(row), self_ns: Vec::new() });
            path.self_ns.push((index, if self_ns.is_null(row) { 0 } else { self_ns.value(row) }));
        }
    }
    Ok(PathParts { operations, paths })
}

/// The aggregate critical path: per (service, operation), its share of end-to-end latency on the
/// critical path in typical traces (p40–p60 of duration) and in the tail (p99 and slower), over
/// the paths `query` matches.
pub(crate) async fn aggregate_critical_path(
    ctx: &SessionContext,
    query: &AggregatePathQuery,
) -> Result<AggregatePath, crate::QueryError> {
    let PathParts { operations, paths } = path_parts(ctx, query).await?;
    let mut durations: Vec<i64> = paths.values().map(|path| path.duration_ns).collect();
    durations.sort_unstable();
    if durations.is_empty() {
        let empty = PathGroup { traces: 0, min_duration_ns: 0, max_duration_ns: 0, mean_duration_ns: 0.0 };
        return Ok(AggregatePath { traces: 0, typical: empty, tail: empty, operations: summary_batch(&[], 0, 0)? });
    }
    let (p40, p60, p99) = (percentile(&durations, 0.4), percentile(&durations, 0.6), percentile(&durations, 0.99));
    let typical = |d: i64| (d as f64) >= p40 && (d as f64) <= p60;
    let tail = |d: i64| (d as f64) >= p99;
    // Per group: traces, total duration, min, max, and per operation the total self time.
    struct Group {
        traces: u64,
        total: f64,
        min: i64,
        max: i64,
        self_ns: Vec<f64>,
    }
    let new_group =
        || Group { traces: 0, total: 0.0, min: i64::MAX, max: i64::MIN, self_ns: vec![0.0; operations.len()] };
    let (mut typical_group, mut tail_group) = (new_group(), new_group());
    for Path { duration_ns: duration, self_ns: parts } in paths.values() {
        for (group, member) in [(&mut typical_group, typical(*duration)), (&mut tail_group, tail(*duration))] {
            if !member {
                continue;
            }
            group.traces += 1;
            group.total += *duration as f64;
            group.min = group.min.min(*duration);
            group.max = group.max.max(*duration);
            for (index, self_ns) in parts {
                group.self_ns[*index] += *self_ns as f64;
            }
        }
    }
    let group = |g: &Group| PathGroup {
        traces: g.traces,
        min_duration_ns: if g.traces == 0 { 0 } else { g.min },
        max_duration_ns: if g.traces == 0 { 0 } else { g.max },
        mean_duration_ns: if g.traces == 0 { 0.0 } else { g.total / g.traces as f64 },
    };
    let mean = |g: &Group, i: usize| if g.traces == 0 { 0.0 } else { g.self_ns[i] / g.traces as f64 };
    let share = |g: &Group, i: usize| if g.total > 0.0 { g.self_ns[i] / g.total } else { 0.0 };
    let mut ranked: Vec<OperationShare> = operations
        .iter()
        .enumerate()
        .map(|(i, (service, operation))| OperationShare {
            service: service.clone(),
            operation: operation.clone(),
            typical_self_ns: mean(&typical_group, i),
            typical_share: share(&typical_group, i),
            tail_self_ns: mean(&tail_group, i),
            tail_share: share(&tail_group, i),
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.tail_extra_ns()
            .total_cmp(&a.tail_extra_ns())
            .then_with(|| (&a.service, &a.operation).cmp(&(&b.service, &b.operation)))
    });
    let (typical, tail) = (group(&typical_group), group(&tail_group));
    Ok(AggregatePath {
        traces: durations.len() as u64,
        typical,
        tail,
        operations: summary_batch(&ranked, typical.traces, tail.traces)?,
    })
}

/// One operation's place on the aggregate path.
struct OperationShare {
    service: String,
    operation: String,
    typical_self_ns: f64,
    typical_share: f64,
    tail_self_ns: f64,
    tail_share: f64,
}

impl OperationShare {
    fn tail_extra_ns(&self) -> f64 {
        self.tail_self_ns - self.typical_self_ns
    }
}

/// The rows of the aggregate path: one per operation, in rank order.
pub(crate) fn summary_schema() -> SchemaRef {
    use hopscope_schemas::columns::path_summary as ps;
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let float = |name: &str| Field::new(name, DataType::Float64, false);
            Arc::new(Schema::new(vec![
                Field::new(ps::RANK, DataType::Int64, false),
                Field::new(ps::SERVICE, DataType::Utf8, false),
                Field::new(ps::OPERATION, DataType::Utf8, false),
                float(ps::TYPICAL_SELF_NS),
                float(ps::TYPICAL_SHARE),
                float(ps::TAIL_SELF_NS),
                float(ps::TAIL_SHARE),
                float(ps::SHARE_DIFFERENCE),
                float(ps::TAIL_EXTRA_NS),
                Field::new(ps::TYPICAL_TRACES, DataType::Int64, false),
                Field::new(ps::TAIL_TRACES, DataType::Int64, false),
            ]))
        })
        .clone()
}

fn summary_batch(ops: &[OperationShare], typical_traces: u64, tail_traces: u64) -> DfResult<RecordBatch> {
    use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    let float =
        |f: fn(&OperationShare) -> f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values(ops.iter().map(f))) };
    let repeat = |n: u64| -> ArrayRef { Arc::new(Int64Array::from(vec![n as i64; ops.len()])) };
    Ok(RecordBatch::try_new(
        summary_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(1..=ops.len() as i64)),
            Arc::new(StringArray::from_iter_values(ops.iter().map(|o| o.service.as_str()))),
            Arc::new(StringArray::from_iter_values(ops.iter().map(|o| o.operation.as_str()))),
            float(|o| o.typical_self_ns),
            float(|o| o.typical_share),
            float(|o| o.tail_self_ns),
            float(|o| o.tail_share),
            float(|o| o.tail_share - o.typical_share),
            float(OperationShare::tail_extra_ns),
            repeat(typical_traces),
            repeat(tail_traces),
        ],
    )?)
}
