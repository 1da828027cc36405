//! A tenant's limits, which the server may change while it runs (`--tenant-limits`, read again on
//! SIGHUP): the memory its exports and buffer may hold, how long and how much it keeps, and the
//! rate at which it may send spans.
//!
//! The rate is a token bucket of spans: it holds at most `burst_spans`, refills at
//! `spans_per_second`, and each export takes the spans it stored. An export is refused (HTTP 429,
//! gRPC `RESOURCE_EXHAUSTED` with a retry delay) while the bucket is empty; one export may take
//! more spans than are left, leaving the bucket in debt, so that the rate holds over time without
//! decoding an export twice to count it first.

use std::time::{Duration, Instant};

use crate::IngestError;
use crate::retention::RetentionPolicy;

/// How fast a tenant may send spans.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Spans per second, over time.
    pub spans_per_second: f64,
    /// Spans that may arrive at once after a quiet while.
    pub burst_spans: f64,
}

/// Everything about one tenant that its limits decide.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TenantLimits {
    /// What its exports in progress and buffered spans may hold (`--max-buffered-bytes`).
    pub max_buffered_bytes: usize,
    /// How long and how much it keeps.
    pub retention: RetentionPolicy,
    /// How fast it may send spans; `None`: as fast as the server takes them.
    pub rate: Option<RateLimit>,
}

/// The spans a tenant may still send now.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    limit: RateLimit,
    /// Spans left; below zero after an export larger than what was left.
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub(crate) fn new(limit: RateLimit, now: Instant) -> Self {
        Self { limit, tokens: limit.burst_spans, refilled: now }
    }

    /// The same bucket under a new limit: what is left carries over, within the new burst.
    pub(crate) fn with_limit(mut self, limit: RateLimit, now: Instant) -> Self {
        self.refill(now);
        self.limit = limit;
        self.tokens = self.tokens.min(limit.burst_spans);
        self
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.limit.spans_per_second).min(self.limit.burst_spans);
        self.refilled = now;
    }

    /// Whether an export may start now: refused, with when to retry, while the bucket is empty.
    pub(crate) fn admit(&mut self, now: Instant) -> Result<(), IngestError> {
        self.refill(now);
        if self.tokens > 0.0 {
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / self.limit.spans_per_second.max(f64::MIN_POSITIVE);
        Err(IngestError::RateLimited {
            spans_per_second: self.limit.spans_per_second,
            retry_after: Duration::from_secs_f64(wait.clamp(0.001, 3600.0)),
        })
    }

    /// Takes the spans an export stored.
    pub(crate) fn take(&mut self, spans: u64, now: Instant) {
        self.refill(now);
        self.tokens -= spans as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(rate: f64, burst: f64) -> (TokenBucket, Instant) {
        let now = Instant::now();
        (TokenBucket::new(RateLimit { spans_per_second: rate, burst_spans: burst }, now), now)
    }

    #[test]
    fn a_burst_is_taken_then_the_rate_holds() {
        let (mut bucket, t0) = bucket(10.0, 20.0);
        bucket.admit(t0).unwrap();
        bucket.take(25, t0);
        // 5 spans in debt: empty until 0.6 s later (5 to repay, then 1 to hold).
        let refused = bucket.admit(t0 + Duration::from_millis(100)).unwrap_err();
        let IngestError::RateLimited { retry_after, spans_per_second } = refused else { panic!("{refused:?}") };
        assert_eq!(spans_per_second, 10.0);
        assert!((retry_after.as_secs_f64() - 0.5).abs() < 1e-6, "{retry_after:?}");
        bucket.admit(t0 + Duration::from_millis(600)).unwrap();
        // Refill stops at the burst.
        bucket.admit(t0 + Duration::from_secs(3600)).unwrap();
        bucket.take(20, t0 + Duration::from_secs(3600));
        assert!(bucket.admit(t0 + Duration::from_secs(3600)).is_err());
    }

    #[test]
    fn a_new_limit_keeps_what_is_left_within_its_burst() {
        let (bucket, t0) = bucket(10.0, 100.0);
        let mut bucket = bucket.with_limit(RateLimit { spans_per_second: 1.0, burst_spans: 5.0 }, t0);
        bucket.take(5, t0);
        assert!(bucket.admit(t0).is_err());
        bucket.admit(t0 + Duration::from_secs(1)).unwrap();
    }
}
