//! What the analyses found, in the shapes of the HTTP API and the UI (`hopscope_schemas::api`).
//! The analyses answer in Arrow rows where `/sql` shows the same answer as a table; these turn the
//! rows into the response types. Serialising them is the API's job.

use datafusion::arrow::array::Array;
use hopscope_schemas::api::{AggregateCriticalPathView, FindingView, FindingsView, PathGroupView, PathOperationView};
use hopscope_schemas::columns::{findings_report as fr, path_summary as ps};
use hopscope_schemas::time::format_time;

use crate::QueryError;
use crate::analysis::critical_path::{AggregatePath, PathGroup};
use crate::analysis::frame::Results;

fn group_view(group: &PathGroup) -> PathGroupView {
    PathGroupView {
        traces: group.traces,
        min_duration_ns: group.min_duration_ns,
        max_duration_ns: group.max_duration_ns,
        mean_duration_ns: group.mean_duration_ns,
    }
}

/// `GET /api/v1/critical-path`'s answer.
pub(crate) fn aggregate_path_view(path: &AggregatePath) -> Result<AggregateCriticalPathView, QueryError> {
    let r = Results(&path.operations);
    let (services, operations) = (r.strings(ps::SERVICE)?, r.strings(ps::OPERATION)?);
    let (typical_self, typical_share) = (r.floats(ps::TYPICAL_SELF_NS)?, r.floats(ps::TYPICAL_SHARE)?);
    let (tail_self, tail_share) = (r.floats(ps::TAIL_SELF_NS)?, r.floats(ps::TAIL_SHARE)?);
    let (difference, extra) = (r.floats(ps::SHARE_DIFFERENCE)?, r.floats(ps::TAIL_EXTRA_NS)?);
    let ranked = (0..path.operations.num_rows())
        .map(|row| PathOperationView {
            service: services.value(row).to_owned(),
            operation: operations.value(row).to_owned(),
            typical_self_ns: typical_self.value(row),
            typical_share: typical_share.value(row),
            tail_self_ns: tail_self.value(row),
            tail_share: tail_share.value(row),
            share_difference: difference.value(row),
            tail_extra_ns: extra.value(row),
        })
        .collect();
    Ok(AggregateCriticalPathView {
        start: format_time(path.range.start_ns),
        end: format_time(path.range.end_ns),
        percentiles: path.percentiles.clone(),
        traces: path.traces,
        typical: group_view(&path.typical),
        tail: group_view(&path.tail),
        operations: ranked,
    })
}

/// `GET /api/v1/findings`'s answer, from the report rows.
pub(crate) fn findings_view(report: crate::analysis::findings::Report) -> Result<FindingsView, QueryError> {
    let r = Results(&report.rows);
    let (kinds, services, operations, callees) =
        (r.strings(fr::KIND)?, r.strings(fr::SERVICE)?, r.strings(fr::OPERATION)?, r.strings(fr::CALLEE)?);
    let (occurrences, traces, calls) = (r.ints(fr::OCCURRENCES)?, r.ints(fr::TRACES)?, r.ints(fr::CALLS)?);
    let (mean, total) = (r.floats(fr::COST_NS_MEAN)?, r.ints(fr::COST_NS_TOTAL)?);
    let (evidence, thresholds) = (r.strings(fr::EVIDENCE_TRACE_IDS)?, r.strings(fr::THRESHOLD)?);
    let findings = (0..report.rows.num_rows())
        .map(|row| FindingView {
            kind: kinds.value(row).to_owned(),
            service: services.value(row).to_owned(),
            operation: operations.value(row).to_owned(),
            callee: callees.is_valid(row).then(|| callees.value(row).to_owned()),
            occurrences: occurrences.value(row) as u64,
            traces: traces.is_valid(row).then(|| traces.value(row) as u64),
            calls: calls.value(row) as u64,
            cost_ns_mean: mean.value(row),
            cost_ns_total: total.value(row),
            evidence_trace_ids: evidence.value(row).split(',').filter(|id| !id.is_empty()).map(str::to_owned).collect(),
            threshold: thresholds.value(row).to_owned(),
        })
        .collect();
    Ok(FindingsView {
        start: format_time(report.range.start_ns),
        end: format_time(report.range.end_ns),
        percentiles: report.percentiles,
        findings,
    })
}
