//! De-duplication of spans a client sent twice (a resend after a lost acknowledgement).
//!
//! A span is a resend of another when trace id, span id, start and end time all match
//! ([`SpanKey`]). Copies within one flush end up next to each other when its rows are sorted
//! ([`crate::writer::sort_and_dedup`]); copies of a span written earlier are found here:
//! [`RecentSpans`] remembers the keys of the spans written recently. "Recently" is bounded by a
//! number of keys (FIFO), which covers the retry windows of OTLP exporters (seconds to minutes) at
//! any plausible rate; a resend older than that is stored again, until compaction merges it away.

use std::collections::{HashSet, VecDeque};

use crate::writer::SpanKey;

/// The keys of spans written recently, oldest evicted first.
#[derive(Debug)]
pub(crate) struct RecentSpans {
    capacity: usize,
    keys: HashSet<SpanKey, foldhash::fast::RandomState>,
    order: VecDeque<SpanKey>,
}

impl RecentSpans {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { capacity, keys: HashSet::default(), order: VecDeque::new() }
    }

    /// Whether a span with this key was written recently.
    pub(crate) fn contains(&self, key: &SpanKey) -> bool {
        self.keys.contains(key)
    }

    /// Remembers the keys of committed rows, evicting the oldest beyond the capacity.
    pub(crate) fn remember(&mut self, keys: impl IntoIterator<Item = SpanKey>) {
        for key in keys {
            if self.keys.insert(key) {
                self.order.push_back(key);
            }
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(span: u64) -> SpanKey {
        SpanKey { trace: 7, start: 1, span, end: 2 }
    }

    #[test]
    fn remembers_the_most_recent_keys_only() {
        let mut recent = RecentSpans::new(2);
        recent.remember([key(1), key(2), key(1)]);
        assert!(recent.contains(&key(1)) && recent.contains(&key(2)));
        recent.remember([key(3)]);
        assert!(!recent.contains(&key(1)), "the oldest is evicted");
        assert!(recent.contains(&key(2)) && recent.contains(&key(3)));
        assert!(!recent.contains(&SpanKey { end: 3, ..key(2) }), "other times make another span");
    }
}
