//! The latency histogram's log-scale buckets, shared by the `latency_bucket` SQL function, the
//! latency API and the UI's charts.

/// Log-scale buckets per doubling of a duration: each bucket is 2^(1/4) ≈ 19% wide.
pub const BUCKETS_PER_DOUBLING: f64 = 4.0;

/// The histogram bucket of a duration in nanoseconds: `floor(4 · log2(ns))`, and 0 for durations
/// under 1 ns (including negative ones).
pub fn latency_bucket(ns: i64) -> i32 {
    if ns <= 1 { 0 } else { ((ns as f64).log2() * BUCKETS_PER_DOUBLING).floor() as i32 }
}

/// The lower bound of a bucket in nanoseconds (inclusive).
pub fn bucket_lower_ns(bucket: i32) -> i64 {
    if bucket <= 0 { 0 } else { 2f64.powf(f64::from(bucket) / BUCKETS_PER_DOUBLING).ceil() as i64 }
}

/// The upper bound of a bucket in nanoseconds (exclusive).
pub fn bucket_upper_ns(bucket: i32) -> i64 {
    bucket_lower_ns(bucket.max(0) + 1).max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_durations_without_gaps() {
        for ns in [2i64, 3, 7, 1_000, 999_999, 1_000_000, 250_000_000, 60_000_000_000] {
            let b = latency_bucket(ns);
            assert!(bucket_lower_ns(b) <= ns && ns < bucket_upper_ns(b), "{ns} in bucket {b}");
        }
        for b in 1..200 {
            assert_eq!(bucket_upper_ns(b), bucket_lower_ns(b + 1));
        }
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(-5), 0);
    }
}
