//! Admission: an export is taken only if the memory it will hold fits under `--max-buffered-bytes`
//! beside what buffered spans and the other exports in progress hold.
//!
//! A request's spans take memory long before they reach the trace buffer: its body, the decoded
//! protobuf or JSON, the converted Arrow batch, and the body again in the write-ahead log's queue.
//! Counting only the buffer let 24 simultaneous 14 MiB exports in at once under an 8 MiB bound. So
//! each export reserves, before any work, what it is expected to hold while decoded; the estimate
//! is corrected once the body is inflated (a gzip body's size is known only then) and once it is
//! converted (then the reservation is the body and the batch, what the log and buffer receive);
//! it is released when the spans are in the buffer, which counts them from then on, or when the
//! export fails or its client goes away. An export no other export is in progress beside is taken
//! while the buffer is under the bound (the rule before reservations), so a request larger than the
//! bound (which `--otlp-http-max-body-bytes` and `--otlp-grpc-max-message-bytes` cap) is not refused
//! for ever.
//!
//! The flush needs memory of its own while it writes what the buffer held: each span file being
//! written (one per core) has a Parquet writer per column, its derived tables' writers, and the
//! rows it is gathering into order. That is kept out of what exports and the buffer may take: a
//! share of the bound ([`flush_headroom`]), so that the bound covers the flush too; and what it
//! holds beside its writers grows with the spans it writes, so it writes at most a quarter of the
//! bound's worth of spans at a time ([`flush_piece_bytes`]).
//!
//! Maintenance's merges hold memory too (readers, a span file's writers, the derivation of the
//! file they write: [`crate::compaction::CompactionJob::memory_estimate`]). A merge reserves what
//! it will hold, at most half of what exports and the buffer may hold, and only if that fits
//! beside them ([`Admission::reserve_if_fits`]); otherwise it waits for a later maintenance pass,
//! so ingest comes first and a burst of exports is not met by a merge's memory on top of it.
//! While a merge runs, exports fit beside its reservation. A merge that has waited
//! [`crate::ingester::IngesterConfig::merge_max_wait`] runs anyway ([`Admission::hold`]): under
//! sustained overload, exports are then refused until what they hold fits beside it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;

use crate::IngestError;
use crate::metrics::level;

/// Memory a body's spans hold while decoded, per byte of inflated body: the body itself, the
/// decoded request (owned strings and vectors per value, about 2.5× the protobuf bytes) and the
/// Arrow batch being built (about 2.5×).
pub(crate) const DECODING_PER_BYTE: usize = 6;

/// A gzip body inflates to an unknown size; until it is inflated, it is reserved as this many
/// times its own bytes (OTLP compresses about 6:1).
pub(crate) const GZIP_INFLATION_GUESS: usize = 6;

/// What a body of `len` bytes (`gzip`: compressed) is expected to hold while decoded, at most
/// what a body inflated up to `limit` bytes could hold.
pub(crate) fn estimate(len: usize, gzip: bool, limit: usize) -> usize {
    let inflated = if gzip { len.saturating_mul(GZIP_INFLATION_GUESS).min(limit) } else { len };
    inflated.saturating_mul(DECODING_PER_BYTE)
}

/// Memory one span file holds while it is written, beside the spans it is written from: a
/// Parquet column writer per column (each with its own zstd compression and decompression
/// contexts and page buffers), the same for each derived table, and the rows being gathered into
/// order. Measured with heaptrack under `hopscope load` (1M spans, two files written at once):
/// about 75 MB per file at the flush's peak.
pub(crate) const FILE_WRITING_BYTES: usize = 72 << 20;

/// What the buffer and exports leave of `limit` for a flush: a span file's writers per core, at
/// most a quarter of the bound (so that small bounds still take exports).
pub(crate) fn flush_headroom(limit: usize, cores: usize) -> usize {
    FILE_WRITING_BYTES.saturating_mul(cores).min(limit / 4)
}

/// Buffered span memory one flush piece takes at most under the bound `limit`: a quarter of it.
/// Beside the spans themselves, a flush holds their sorted index and its derivations' state, which
/// grow with the spans it writes; a flush of everything the buffer held at 10M spans took 100–200
/// MiB more at its peak than pieces of this size (BENCHMARKS.md, "A flush in pieces"). Smaller
/// pieces hold still less, but write smaller files, each with its own derived tables.
pub(crate) fn flush_piece_bytes(limit: usize) -> usize {
    limit / 4
}

/// Memory reserved by exports in progress, against one bound shared with the trace buffer.
#[derive(Debug)]
pub(crate) struct Admission {
    /// `--max-buffered-bytes` (or the tenant's own), as errors name it.
    limit: AtomicUsize,
    /// What exports and the buffer may hold together: the bound less the flush's headroom.
    usable: AtomicUsize,
    reserved: Mutex<usize>,
    /// `hopscope_ingest_reserved_bytes`.
    gauge: Gauge,
}

impl Admission {
    /// Admission under the bound `limit`, of which `headroom` is kept for the flush.
    pub(crate) fn new(limit: usize, headroom: usize, gauge: Gauge) -> Arc<Self> {
        let usable = AtomicUsize::new(limit.saturating_sub(headroom));
        Arc::new(Self { limit: AtomicUsize::new(limit), usable, reserved: Mutex::new(0), gauge })
    }

    /// Changes the bound to `limit`, of which `headroom` is kept for the flush: reservations held
    /// stay, and the next ones are checked against the new bound.
    pub(crate) fn set_bound(&self, limit: usize, headroom: usize) {
        let _reserved = self.reserved.lock().expect("admission lock");
        self.limit.store(limit, Ordering::Relaxed);
        self.usable.store(limit.saturating_sub(headroom), Ordering::Relaxed);
    }

    /// Reserves `bytes` if they fit beside `buffered` (what the trace buffer holds) and what is
    /// already reserved, or if nothing else is reserved and the buffer is under the bound.
    pub(crate) fn reserve(self: &Arc<Self>, bytes: usize, buffered: usize) -> Result<Reservation, IngestError> {
        let mut reservation = Reservation { admission: Arc::clone(self), bytes: 0 };
        reservation.resize(bytes, buffered)?;
        Ok(reservation)
    }

    /// Reserves what an export whose body declares `len` bytes (`gzip`: compressed; at most `limit`
    /// bytes inflated) will hold while decoded, beside `buffered` (see [`Self::reserve`]); refused
    /// while the server is `closed` (stopping) or when the body could never fit under `limit`.
    pub(crate) fn admit_export(
        self: &Arc<Self>,
        closed: bool,
        len: usize,
        gzip: bool,
        limit: usize,
        buffered: impl FnOnce() -> usize,
    ) -> Result<Reservation, IngestError> {
        if closed {
            Err(IngestError::ShuttingDown)
        } else if len > limit {
            Err(IngestError::TooLarge { limit, decompressed: false })
        } else {
            self.reserve(estimate(len, gzip, limit), buffered())
        }
    }

    /// What exports, the buffer and maintenance may hold together: the bound less the flush's
    /// headroom.
    pub(crate) fn usable(&self) -> usize {
        self.usable.load(Ordering::Relaxed)
    }

    /// Reserves `bytes` for maintenance (a merge) only if they fit beside `buffered` and what is
    /// already reserved: unlike an export's, a merge's reservation is never taken alone past the
    /// bound, since a merge can wait for a later pass and ingest cannot.
    pub(crate) fn reserve_if_fits(self: &Arc<Self>, bytes: usize, buffered: usize) -> Option<Reservation> {
        let mut reservation = Reservation { admission: Arc::clone(self), bytes: 0 };
        reservation.change(bytes, Fit::Strict { buffered }).ok()?;
        Some(reservation)
    }

    /// Reserves `bytes` whatever is held already: what a merge that has waited long enough holds
    /// (exports are refused until what they hold fits beside it).
    pub(crate) fn hold(self: &Arc<Self>, bytes: usize) -> Reservation {
        let mut reservation = Reservation { admission: Arc::clone(self), bytes: 0 };
        reservation.set(bytes);
        reservation
    }

    /// Bytes reserved now.
    #[cfg(test)]
    fn reserved(&self) -> usize {
        *self.reserved.lock().expect("admission lock")
    }
}

/// What growing a reservation must fit under.
#[derive(Debug, Clone, Copy)]
enum Fit {
    /// Nothing: what is held once the work is done.
    Unchecked,
    /// The bound beside `buffered` (what the trace buffer holds) and the other reservations, unless
    /// no other is held and the buffer is under the bound (an export alone).
    Export { buffered: usize },
    /// The bound beside `buffered` and the other reservations, always (maintenance, which can wait).
    Strict { buffered: usize },
}

/// Memory held for one export or merge; released when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    admission: Arc<Admission>,
    bytes: usize,
}

impl Reservation {
    /// Makes the reservation `bytes`. Shrinking always succeeds; growing must fit as a new
    /// reservation would (the reservation is unchanged when it does not).
    pub(crate) fn resize(&mut self, bytes: usize, buffered: usize) -> Result<(), IngestError> {
        self.change(bytes, Fit::Export { buffered })
    }

    /// Makes the reservation `bytes` unchecked: what an export holds once its work is done, which
    /// may pass the estimate it was admitted with (refusing it then would only waste the work).
    pub(crate) fn set(&mut self, bytes: usize) {
        // Unchecked: never refused.
        let _ = self.change(bytes, Fit::Unchecked);
    }

    /// Makes the reservation `bytes`, and updates the total and its gauge, if growing it passes
    /// `fit` (the reservation is unchanged when it does not).
    fn change(&mut self, bytes: usize, fit: Fit) -> Result<(), IngestError> {
        let admission = &self.admission;
        let mut reserved = admission.reserved.lock().expect("admission lock");
        let others = *reserved - self.bytes;
        let (buffered, lone_rule) = match fit {
            Fit::Unchecked => (None, false),
            Fit::Export { buffered } => (Some(buffered), true),
            Fit::Strict { buffered } => (Some(buffered), false),
        };
        if let Some(buffered) = buffered {
            let held = others.saturating_add(buffered);
            let usable = admission.usable();
            let alone = lone_rule && others == 0 && buffered < usable;
            if bytes > self.bytes && !alone && held.saturating_add(bytes) > usable {
                let limit = admission.limit.load(Ordering::Relaxed);
                return Err(IngestError::Overloaded { held, wanted: bytes, limit });
            }
        }
        *reserved = others + bytes;
        self.bytes = bytes;
        admission.gauge.set(level(*reserved));
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_are_admitted_while_what_they_hold_fits() {
        let admission = Admission::new(100, 0, Gauge::default());
        let first = admission.reserve(60, 0).unwrap();
        // 60 reserved + 30 buffered + 20 wanted > 100.
        let refused = admission.reserve(20, 30).unwrap_err();
        assert!(matches!(refused, IngestError::Overloaded { held: 90, wanted: 20, limit: 100 }), "{refused:?}");
        assert!(refused.to_string().contains("retry later"), "{refused}");
        let second = admission.reserve(10, 30).unwrap();
        assert_eq!(admission.reserved(), 70);
        assert_eq!(admission.gauge.get(), 70);
        drop(first);
        assert_eq!(admission.reserved(), 10);
        drop(second);
        assert_eq!(admission.reserved(), 0);
        assert_eq!(admission.gauge.get(), 0);
    }

    #[test]
    fn a_lone_export_is_admitted_whatever_its_size_while_the_buffer_is_under_the_bound() {
        let admission = Admission::new(100, 0, Gauge::default());
        let mut lone = admission.reserve(1_000, 99).unwrap();
        assert!(admission.reserve(1, 0).is_err(), "nothing else while it is held");
        // It may still grow: no other export is in progress.
        lone.resize(5_000, 0).unwrap();
        drop(lone);
        assert!(admission.reserve(1_000, 100).is_err(), "the buffer is at the bound");
        // Once done, an export holds what it holds, past its estimate if need be.
        let mut done = admission.reserve(10, 0).unwrap();
        let _other = admission.reserve(80, 0).unwrap();
        done.set(50);
        assert_eq!(admission.reserved(), 130);
    }

    #[test]
    fn a_reservation_grows_only_if_it_fits_and_shrinks_always() {
        let admission = Admission::new(100, 0, Gauge::default());
        let _other = admission.reserve(50, 0).unwrap();
        let mut growing = admission.reserve(20, 0).unwrap();
        assert!(growing.resize(60, 0).is_err());
        assert_eq!(admission.reserved(), 70, "a refused growth leaves the reservation as it was");
        growing.resize(50, 0).unwrap();
        growing.resize(5, 1_000).unwrap();
        assert_eq!(admission.reserved(), 55);
    }

    #[test]
    fn the_flush_headroom_is_kept_from_exports() {
        // A bound of 100 with 20 kept for the flush: exports and the buffer share 80.
        let admission = Admission::new(100, 20, Gauge::default());
        let first = admission.reserve(60, 0).unwrap();
        let refused = admission.reserve(30, 0).unwrap_err();
        assert!(matches!(refused, IngestError::Overloaded { held: 60, wanted: 30, limit: 100 }), "{refused:?}");
        drop(first);
        // Alone, an export is taken while the buffer is under the usable share only.
        assert!(admission.reserve(500, 79).is_ok());
        assert!(admission.reserve(500, 80).is_err());
        assert_eq!(flush_headroom(1 << 40, 2), 2 * FILE_WRITING_BYTES);
        assert_eq!(flush_headroom(400, 2), 100);
        assert_eq!(flush_headroom(1, 2), 0);
    }

    #[test]
    fn maintenance_reserves_only_what_fits_and_exports_leave_room_for_it() {
        // A bound of 100 with 20 kept for the flush: exports, the buffer and merges share 80.
        let admission = Admission::new(100, 20, Gauge::default());
        assert_eq!(admission.usable(), 80);
        let export = admission.reserve(30, 0).unwrap();
        // 30 reserved + 20 buffered + 40 wanted > 80: the merge waits (no lone rule for merges).
        assert!(admission.reserve_if_fits(40, 20).is_none());
        assert_eq!(admission.reserved(), 30, "a merge that does not fit reserves nothing");
        let merge = admission.reserve_if_fits(30, 20).unwrap();
        assert_eq!(admission.reserved(), 60);
        assert_eq!(admission.gauge.get(), 60);
        // Exports now fit only beside the merge's share.
        assert!(admission.reserve(10, 20).is_err());
        drop(export);
        let small = admission.reserve(10, 20).unwrap();
        drop((merge, small));
        assert_eq!(admission.reserved(), 0);
        // Held whatever is held: a merge that waited long enough. Beside it an export is never
        // alone, so only what fits under the bound with it is taken.
        let _held = admission.hold(70);
        assert_eq!(admission.reserved(), 70);
        assert!(admission.reserve(20, 1).is_err());
        assert!(admission.reserve_if_fits(20, 0).is_none());
    }

    #[test]
    fn a_gzip_body_is_estimated_within_the_inflated_limit() {
        assert_eq!(estimate(1_000, false, 10_000), 1_000 * DECODING_PER_BYTE);
        assert_eq!(estimate(1_000, true, 100_000), 1_000 * GZIP_INFLATION_GUESS * DECODING_PER_BYTE);
        assert_eq!(estimate(1_000, true, 2_000), 2_000 * DECODING_PER_BYTE);
        assert_eq!(estimate(usize::MAX, false, usize::MAX), usize::MAX);
    }
}
