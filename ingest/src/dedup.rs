//! De-duplication of spans a client sent twice (a resend after a lost acknowledgement).
//!
//! A span is a resend of another when trace id, span id, start and end time all match. Before
//! buffered spans are written, [`RecentSpans::keep_new`] drops rows that repeat a row written
//! recently or an earlier row of the same flush. "Recently" is bounded by a number of keys
//! (FIFO), which covers the retry windows of OTLP exporters (seconds to minutes) at any plausible
//! rate; a resend older than that is stored again.

use std::collections::{HashSet, VecDeque};

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::TimestampNanosecondType;
use hopscope_schemas::columns as c;

use crate::IngestError;
use crate::writer::stored_column;

/// What makes two rows the same span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SpanKey {
    trace: [u8; 16],
    span: [u8; 8],
    start: i64,
    end: i64,
}

/// The keys of spans written recently, oldest evicted first.
#[derive(Debug)]
pub(crate) struct RecentSpans {
    capacity: usize,
    keys: HashSet<SpanKey>,
    order: VecDeque<SpanKey>,
}

fn keys(batch: &RecordBatch) -> impl Iterator<Item = SpanKey> + '_ {
    let traces = stored_column::<arrow::array::FixedSizeBinaryArray>(batch, c::TRACE_ID);
    let spans = stored_column::<arrow::array::FixedSizeBinaryArray>(batch, c::SPAN_ID);
    let starts = batch.column_by_name(c::START_TIME).map(|a| a.as_primitive::<TimestampNanosecondType>().clone());
    let ends = batch.column_by_name(c::END_TIME).map(|a| a.as_primitive::<TimestampNanosecondType>().clone());
    (0..batch.num_rows()).map(move |row| SpanKey {
        trace: traces.value(row).try_into().expect("16-byte trace id"),
        span: spans.value(row).try_into().expect("8-byte span id"),
        start: starts.as_ref().filter(|a| a.is_valid(row)).map_or(0, |a| a.value(row)),
        end: ends.as_ref().filter(|a| a.is_valid(row)).map_or(0, |a| a.value(row)),
    })
}

/// `batch` without the rows that repeat an earlier row of it (a span stored twice), and how many
/// were dropped.
pub(crate) fn without_repeats(batch: &RecordBatch) -> Result<(RecordBatch, u64), IngestError> {
    let (mut out, dropped) = RecentSpans::new(0).keep_new(std::slice::from_ref(batch))?;
    Ok((out.pop().expect("one batch in, one batch out"), dropped))
}

impl RecentSpans {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { capacity, keys: HashSet::new(), order: VecDeque::new() }
    }

    /// The batches without rows already written recently or repeated within them (one output batch
    /// per input batch, possibly empty), and how many rows were dropped. Does not remember the
    /// rows: call [`Self::remember`] once they are committed.
    pub(crate) fn keep_new(&self, batches: &[RecordBatch]) -> Result<(Vec<RecordBatch>, u64), IngestError> {
        let mut seen = HashSet::new();
        let mut dropped = 0;
        let mut out = Vec::with_capacity(batches.len());
        for batch in batches {
            let keep: BooleanArray =
                keys(batch).map(|key| Some(!self.keys.contains(&key) && seen.insert(key))).collect();
            let kept = keep.true_count();
            dropped += (batch.num_rows() - kept) as u64;
            if kept == batch.num_rows() {
                out.push(batch.clone());
            } else {
                out.push(filter_record_batch(batch, &keep)?);
            }
        }
        Ok((out, dropped))
    }

    /// Remembers committed rows, evicting the oldest keys beyond the capacity.
    pub(crate) fn remember(&mut self, batches: &[RecordBatch]) {
        for batch in batches {
            for key in keys(batch) {
                if self.keys.insert(key) {
                    self.order.push_back(key);
                }
            }
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
    }
}
