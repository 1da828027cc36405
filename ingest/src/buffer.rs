//! The trace buffer: accepted spans wait here, grouped by trace, until their trace has been quiet
//! for a while (or has waited long enough, or the buffer is full), so that a trace's spans usually
//! land in one file and per-trace analyses read one file.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use arrow::array::{BooleanArray, FixedSizeBinaryArray, RecordBatch};
use arrow::compute::filter_record_batch;
use hopscope_schemas::columns as c;

use crate::IngestError;

/// When buffered traces are handed to the writer.
#[derive(Debug, Clone, Copy)]
pub struct CutOff {
    /// A trace with no new span for this long is complete enough to write.
    pub idle: Duration,
    /// A trace buffered this long is written even if spans still arrive.
    pub max_age: Duration,
}

#[derive(Debug, Clone, Copy)]
struct TraceTimes {
    first_seen: Instant,
    last_seen: Instant,
    /// Spans buffered: what the trace adds to a flush.
    spans: usize,
}

/// Spans of one WAL record (one export payload), or the part of them not yet written.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The WAL segment the record is in.
    pub segment: u64,
    pub batch: RecordBatch,
    /// Writes of these spans that failed so far.
    pub failures: u32,
}

/// Trace ids as big-endian integers, hashed with a fast hasher: the buffer touches the map once
/// per span.
type TraceMap<V> = HashMap<u128, V, foldhash::fast::RandomState>;

fn trace_key(id: &[u8]) -> u128 {
    u128::from_be_bytes(id.try_into().expect("trace ids are 16 bytes"))
}

/// Spans accepted but not yet written.
#[derive(Debug, Default)]
pub struct TraceBuffer {
    batches: Vec<Pending>,
    traces: TraceMap<TraceTimes>,
    rows: usize,
    /// Memory held by the buffered batches.
    bytes: usize,
    /// Memory held by spans taken by a flush that has not finished: they are still in memory.
    flushing: usize,
}

impl TraceBuffer {
    /// Spans held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Memory the spans not yet written hold, in bytes: those waiting here and those a flush is
    /// writing.
    pub fn bytes(&self) -> usize {
        self.bytes + self.flushing
    }

    /// A flush took spans holding `bytes` (see [`Self::take_ready`]) and is done with them.
    pub fn flushed(&mut self, bytes: usize) {
        self.flushing = self.flushing.saturating_sub(bytes);
    }

    /// The lowest WAL segment holding buffered spans.
    pub fn min_segment(&self) -> Option<u64> {
        self.batches.iter().map(|p| p.segment).min()
    }

    /// Adds a batch of spans in the stored schema, logged in WAL `segment`.
    pub fn push(&mut self, batch: RecordBatch, segment: u64, now: Instant) {
        self.push_pending(Pending { segment, batch, failures: 0 }, now);
    }

    fn push_pending(&mut self, pending: Pending, now: Instant) {
        let batch = &pending.batch;
        for id in trace_id_column(batch).iter().flatten() {
            self.traces
                .entry(trace_key(id))
                .and_modify(|t| {
                    t.last_seen = now;
                    t.spans += 1;
                })
                .or_insert(TraceTimes { first_seen: now, last_seen: now, spans: 1 });
        }
        self.rows += batch.num_rows();
        self.bytes += batch_bytes(batch);
        self.batches.push(pending);
    }

    /// Puts back spans that could not be written, so that they are tried again once their traces
    /// are ready again (at least the idle cut-off from now).
    pub fn restore(&mut self, pending: Vec<Pending>, now: Instant) {
        for p in pending {
            self.push_pending(p, now);
        }
    }

    /// Removes and returns the spans of the traces that are ready at `now` (all of them when
    /// `everything` is set), oldest first, whole traces, holding about `max_bytes` at most (at least
    /// one trace): a flush's working memory grows with the spans it writes, so a large buffer is
    /// written in several pieces. What they hold stays counted in [`Self::bytes`] until the flush
    /// says it is done with them ([`Self::flushed`]).
    pub fn take_ready(
        &mut self,
        now: Instant,
        cut_off: CutOff,
        everything: bool,
        max_bytes: usize,
    ) -> Result<Taken, IngestError> {
        let before = self.bytes;
        let (pending, more) = self.take_ready_batches(now, cut_off, everything, max_bytes)?;
        let bytes = before - self.bytes;
        self.flushing += bytes;
        Ok(Taken { pending, bytes, more })
    }

    fn take_ready_batches(
        &mut self,
        now: Instant,
        cut_off: CutOff,
        everything: bool,
        max_bytes: usize,
    ) -> Result<(Vec<Pending>, bool), IngestError> {
        let mut ready: Vec<(Instant, u128, usize)> = self
            .traces
            .iter()
            .filter(|(_, t)| {
                everything
                    || now.duration_since(t.last_seen) >= cut_off.idle
                    || now.duration_since(t.first_seen) >= cut_off.max_age
            })
            .map(|(id, t)| (t.first_seen, *id, t.spans))
            .collect();
        if ready.is_empty() {
            return Ok((Vec::new(), false));
        }
        // Traces are taken whole, the longest-buffered first, until their spans (at the buffer's
        // average size) fill `max_bytes`.
        let span_bytes = self.bytes / self.rows.max(1);
        let ready_spans: usize = ready.iter().map(|(_, _, spans)| spans).sum();
        let more = ready_spans.saturating_mul(span_bytes) > max_bytes;
        if more {
            ready.sort_unstable_by_key(|(first_seen, id, _)| (*first_seen, *id));
            let mut bytes = 0usize;
            let taken = ready
                .iter()
                .position(|(_, _, spans)| {
                    bytes = bytes.saturating_add(spans.saturating_mul(span_bytes));
                    bytes >= max_bytes
                })
                .map_or(ready.len(), |last| last + 1);
            ready.truncate(taken);
        }
        if ready.len() == self.traces.len() {
            self.traces.clear();
            self.rows = 0;
            self.bytes = 0;
            return Ok((std::mem::take(&mut self.batches), false));
        }
        let ready: HashSet<u128, foldhash::fast::RandomState> = ready.into_iter().map(|(_, id, _)| id).collect();
        let mut taken = Vec::new();
        let mut kept = Vec::new();
        for Pending { segment, batch, failures } in std::mem::take(&mut self.batches) {
            let mask: BooleanArray = trace_id_column(&batch)
                .iter()
                .map(|id| Some(id.is_some_and(|id| ready.contains(&trace_key(id)))))
                .collect();
            // Whole batches move without a copy; mixed ones are split.
            match mask.true_count() {
                0 => kept.push(Pending { segment, batch, failures }),
                n if n == batch.num_rows() => taken.push(Pending { segment, batch, failures }),
                _ => {
                    let take = filter_record_batch(&batch, &mask)?;
                    let keep = filter_record_batch(&batch, &arrow::compute::not(&mask)?)?;
                    taken.push(Pending { segment, batch: take, failures });
                    kept.push(Pending { segment, batch: keep, failures });
                }
            }
        }
        self.traces.retain(|id, _| !ready.contains(id));
        self.rows = kept.iter().map(|p| p.batch.num_rows()).sum();
        self.bytes = kept.iter().map(|p| batch_bytes(&p.batch)).sum();
        self.batches = kept;
        Ok((taken, more))
    }
}

/// What [`TraceBuffer::take_ready`] took.
#[derive(Debug)]
pub struct Taken {
    /// The spans, by the WAL record they came in.
    pub pending: Vec<Pending>,
    /// The memory they hold, which the buffer counts until [`TraceBuffer::flushed`].
    pub bytes: usize,
    /// Whether ready traces were left for another piece, to keep within the size asked for.
    pub more: bool,
}

/// The memory a batch's rows take, as the buffer counts it. Batches decoded from an Arrow IPC record
/// share one buffer per record (and filtered ones share their parent's), so this counts the rows'
/// slices, not whole buffers.
pub(crate) fn batch_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size()))
        .sum()
}

fn trace_id_column(batch: &RecordBatch) -> &FixedSizeBinaryArray {
    crate::writer::stored_column(batch, c::TRACE_ID)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::FixedSizeBinaryBuilder;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(traces: &[u8]) -> RecordBatch {
        let mut b = FixedSizeBinaryBuilder::new(16);
        for t in traces {
            b.append_value([*t; 16]).unwrap();
        }
        let schema = Schema::new(vec![Field::new(c::TRACE_ID, DataType::FixedSizeBinary(16), false)]);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(b.finish())]).unwrap()
    }

    fn ids(batches: &[Pending]) -> Vec<u8> {
        let mut out: Vec<u8> = batches
            .iter()
            .flat_map(|p| trace_id_column(&p.batch).iter().map(|id| id.unwrap()[0]).collect::<Vec<_>>())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn idle_traces_are_taken_and_active_ones_stay() {
        let cut = CutOff { idle: Duration::from_secs(1), max_age: Duration::from_secs(10) };
        let t0 = Instant::now();
        let mut buf = TraceBuffer::default();
        buf.push(batch(&[1, 2, 1]), 1, t0);
        buf.push(batch(&[2, 3]), 2, t0 + Duration::from_millis(900));
        assert_eq!(buf.min_segment(), Some(1));
        assert!(buf.take_ready(t0 + Duration::from_millis(500), cut, false, usize::MAX).unwrap().pending.is_empty());
        // Trace 1 has been idle for 1s; traces 2 and 3 saw spans 100ms ago.
        let taken = buf.take_ready(t0 + Duration::from_secs(1), cut, false, usize::MAX).unwrap();
        assert_eq!((ids(&taken.pending), taken.more), (vec![1, 1], false));
        assert_eq!(buf.rows(), 3);
        // Trace 2's first span is still buffered: segment 1 is still needed.
        assert_eq!(buf.min_segment(), Some(1));
        let rest = buf.take_ready(t0 + Duration::from_secs(1), cut, true, usize::MAX).unwrap();
        assert_eq!(ids(&rest.pending), vec![2, 2, 3]);
        assert_eq!(buf.rows(), 0);
        assert_eq!(buf.min_segment(), None);
    }

    #[test]
    fn busy_traces_are_taken_at_max_age() {
        let cut = CutOff { idle: Duration::from_secs(1), max_age: Duration::from_secs(2) };
        let t0 = Instant::now();
        let mut buf = TraceBuffer::default();
        for i in 0..5 {
            buf.push(batch(&[7]), 1, t0 + Duration::from_millis(500 * i));
        }
        assert_eq!(
            ids(&buf.take_ready(t0 + Duration::from_secs(2), cut, false, usize::MAX).unwrap().pending),
            vec![7; 5]
        );
    }

    #[test]
    fn bytes_count_the_rows_held_until_their_flush_is_done() {
        let whole = batch(&[7; 100]);
        let mut buffer = TraceBuffer::default();
        buffer.push(whole.slice(0, 10), 1, Instant::now());
        // Ten 16-byte trace ids, although the slice shares the 100-row buffer.
        assert_eq!(buffer.bytes(), 10 * 16);
        let taken = buffer
            .take_ready(Instant::now(), CutOff { idle: Duration::ZERO, max_age: Duration::ZERO }, true, usize::MAX)
            .unwrap()
            .bytes;
        assert_eq!((taken, buffer.rows()), (10 * 16, 0));
        // Being written, they still hold memory.
        assert_eq!(buffer.bytes(), 10 * 16);
        buffer.flushed(taken);
        assert_eq!(buffer.bytes(), 0);
    }

    #[test]
    fn a_full_buffer_is_taken_in_pieces_of_whole_traces_oldest_first() {
        let cut = CutOff { idle: Duration::from_secs(1), max_age: Duration::from_secs(10) };
        let t0 = Instant::now();
        let mut buf = TraceBuffer::default();
        // Trace 5 arrives first, then 1 (three spans), then 9; 5 sends one more span later. Every
        // span holds 16 bytes here (its trace id).
        buf.push(batch(&[5]), 1, t0);
        buf.push(batch(&[1, 1]), 1, t0 + Duration::from_millis(5));
        buf.push(batch(&[1, 9]), 2, t0 + Duration::from_millis(10));
        buf.push(batch(&[5]), 3, t0 + Duration::from_millis(20));
        let later = t0 + Duration::from_secs(5);
        // Room for two spans: trace 5 (the oldest), both its spans, and nothing else.
        let first = buf.take_ready(later, cut, false, 2 * 16).unwrap();
        assert_eq!((ids(&first.pending), first.bytes, first.more), (vec![5, 5], 2 * 16, true));
        // A trace larger than the room is still taken, whole.
        let second = buf.take_ready(later, cut, false, 16).unwrap();
        assert_eq!((ids(&second.pending), second.more), (vec![1, 1, 1], true));
        let last = buf.take_ready(later, cut, false, 16).unwrap();
        assert_eq!((ids(&last.pending), last.more), (vec![9], false));
        assert_eq!((buf.rows(), buf.min_segment()), (0, None));
        // Taken spans stay counted until their pieces are written.
        assert_eq!(buf.bytes(), 6 * 16);
    }
}
