//! Cutting a stream of trace-ordered batches into whole traces.

use std::ops::Range;

use arrow::array::{Array, AsArray, FixedSizeBinaryArray, RecordBatch};
use arrow::compute::concat_batches;
use hopscope_schemas::columns as c;

use crate::{PerTrace, Result, SpanColumns};

/// Hands each whole trace of a stream of batches to a [`PerTrace`] analysis (or any function of a
/// trace's rows, see [`OneTrace`]). The batches hold
/// spans ordered by (trace id, start time), and a trace may straddle two or more of them: the rows
/// of the last trace of a batch are carried until the next batch shows where it ends (only those
/// rows are copied).
#[derive(Debug, Default)]
pub struct WholeTraces {
    /// Rows of the last trace seen, which may continue in the next batch.
    carry: Option<RecordBatch>,
}

impl WholeTraces {
    /// Hands the traces `batch` completes to `analysis`, and carries its last trace.
    pub fn push(&mut self, batch: &RecordBatch, analysis: &mut (impl OneTrace + ?Sized)) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let spans = SpanColumns::new(batch)?;
        let mut from = 0;
        if let Some(carry) = self.carry.take() {
            let carried_id = carry.column_by_name(c::TRACE_ID).map(|a| a.as_fixed_size_binary().value(0).to_vec());
            let same = carried_id.map_or(0, |id| leading_rows_of(&spans.trace_id, &id));
            if same == batch.num_rows() {
                self.carry = Some(concat_batches(&batch.schema(), [&carry, batch])?);
                return Ok(());
            }
            let joined = concat_batches(&batch.schema(), [&carry, &batch.slice(0, same)])?;
            let joined_spans = SpanColumns::new(&joined)?;
            for_each_trace(&joined_spans, 0..joined.num_rows(), analysis)?;
            from = same;
        }
        let last = last_trace_start(&spans.trace_id).max(from);
        for_each_trace(&spans, from..last, analysis)?;
        self.carry = Some(batch.slice(last, batch.num_rows() - last));
        Ok(())
    }

    /// Hands the carried trace to `analysis`: the stream has ended.
    pub fn end(&mut self, analysis: &mut (impl OneTrace + ?Sized)) -> Result<()> {
        if let Some(carry) = self.carry.take() {
            let spans = SpanColumns::new(&carry)?;
            for_each_trace(&spans, 0..carry.num_rows(), analysis)?;
        }
        Ok(())
    }

    /// Bytes of the rows carried.
    pub fn carried_bytes(&self) -> usize {
        self.carry.as_ref().map_or(0, RecordBatch::get_array_memory_size)
    }
}

/// What looks at one whole trace at a time: rows `rows` of `spans`, ordered by start time.
pub trait OneTrace {
    fn one_trace(&mut self, spans: &SpanColumns, rows: Range<usize>) -> Result<()>;
}

impl<D: Send + 'static> OneTrace for dyn PerTrace<Deposit = D> + '_ {
    fn one_trace(&mut self, spans: &SpanColumns, rows: Range<usize>) -> Result<()> {
        self.trace(spans, rows)
    }
}

impl<T: PerTrace> OneTrace for T {
    fn one_trace(&mut self, spans: &SpanColumns, rows: Range<usize>) -> Result<()> {
        self.trace(spans, rows)
    }
}

/// How many leading rows of a batch belong to the trace `id`.
fn leading_rows_of(ids: &FixedSizeBinaryArray, id: &[u8]) -> usize {
    (0..ids.len()).take_while(|&i| ids.value(i) == id).count()
}

/// The first row of the last trace in a batch ordered by trace id.
fn last_trace_start(ids: &FixedSizeBinaryArray) -> usize {
    let n = ids.len();
    let last = ids.value(n - 1);
    let mut i = n - 1;
    while i > 0 && ids.value(i - 1) == last {
        i -= 1;
    }
    i
}

/// Calls the analysis once per trace in `rows` (ordered by trace id).
fn for_each_trace(spans: &SpanColumns, rows: Range<usize>, analysis: &mut (impl OneTrace + ?Sized)) -> Result<()> {
    let mut start = rows.start;
    while start < rows.end {
        let id = spans.trace_id.value(start);
        let mut end = start + 1;
        while end < rows.end && spans.trace_id.value(end) == id {
            end += 1;
        }
        analysis.one_trace(spans, start..end)?;
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use hopscope_schemas::fixture::{SpanRow, batch_of};
    use hopscope_schemas::spans::kind::SERVER;

    use super::*;

    /// Records each trace it is handed: its id's last byte and its span ids' first bytes.
    #[derive(Default)]
    struct Recorder(Vec<(u8, Vec<u8>)>);

    impl PerTrace for Recorder {
        type Deposit = ();

        fn trace(&mut self, spans: &SpanColumns, rows: Range<usize>) -> Result<()> {
            let id = spans.trace_id.value(rows.start)[15];
            self.0.push((id, rows.map(|r| spans.span_id.value(r)[0]).collect()));
            Ok(())
        }

        fn take_batch(&mut self) -> Result<Option<RecordBatch>> {
            Ok(None)
        }
    }

    #[test]
    fn every_trace_is_handed_over_whole_however_the_batches_are_cut() {
        // Traces of 1, 4, 2 and 5 spans, in trace order.
        let mut rows = Vec::new();
        for (trace, spans) in [(1u8, 1u8), (2, 4), (3, 2), (4, 5)] {
            for s in 0..spans {
                let mut id = [0u8; 16];
                id[15] = trace;
                rows.push(SpanRow::new(id, [s + 1; 8], "a", "op", SERVER).during(i64::from(s), i64::from(s) + 1));
            }
        }
        let batch = batch_of(&rows).unwrap();
        let expected: Vec<(u8, Vec<u8>)> =
            vec![(1, vec![1]), (2, vec![1, 2, 3, 4]), (3, vec![1, 2]), (4, vec![1, 2, 3, 4, 5])];
        for size in 1..=batch.num_rows() {
            let (mut whole, mut seen) = (WholeTraces::default(), Recorder::default());
            for offset in (0..batch.num_rows()).step_by(size) {
                let slice = batch.slice(offset, size.min(batch.num_rows() - offset));
                whole.push(&slice, &mut seen).unwrap();
                whole.push(&batch.slice(0, 0), &mut seen).unwrap();
            }
            whole.end(&mut seen).unwrap();
            assert_eq!(seen.0, expected, "batches of {size} rows");
            assert_eq!(whole.carried_bytes(), 0);
        }
    }
}
