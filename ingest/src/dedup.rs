//! De-duplication of spans a client sent twice (a resend after a lost acknowledgement).
//!
//! A span is a resend of another when trace id, span id, start and end time all match
//! ([`SpanKey`]). Copies within one flush end up next to each other when its rows are sorted
//! ([`crate::writer::sort_and_dedup`]); copies of a span written earlier are found here:
//! [`RecentSpans`] remembers the keys of the spans written recently. "Recently" is bounded by a
//! number of keys (FIFO), which covers the retry windows of OTLP exporters (seconds to minutes) at
//! any plausible rate; a resend older than that is stored again, until compaction merges it away.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::writer::SpanKey;

/// A [`SpanKey`] in 40 bytes (the struct takes 48, aligned for its 128-bit trace id).
type PackedKey = [u64; 5];

fn pack(key: &SpanKey) -> PackedKey {
    [(key.trace >> 64) as u64, key.trace as u64, key.start as u64, key.span, key.end as u64]
}

/// The keys of spans written recently, oldest evicted first.
///
/// Each key is held once, in a ring of the last `capacity` keys; a hash table of slot numbers finds
/// them. About 50 bytes a key (the ring's 40 and the table's 4-byte slots at its load factor),
/// where a set of keys beside a queue of them took about 194 bytes (heaptrack, 1M keys).
#[derive(Debug)]
pub(crate) struct RecentSpans {
    capacity: usize,
    /// The keys; once full, `ring[next]` is the oldest.
    ring: Vec<PackedKey>,
    next: usize,
    /// Slots of `ring`, by their key's hash.
    slots: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl RecentSpans {
    /// Remembers up to `capacity` keys (at most `u32::MAX`).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.min(u32::MAX as usize),
            ring: Vec::new(),
            next: 0,
            slots: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Whether a span with this key was written recently.
    pub(crate) fn contains(&self, key: &SpanKey) -> bool {
        let key = pack(key);
        self.slots.find(self.hasher.hash_one(key), |&slot| self.ring[slot as usize] == key).is_some()
    }

    /// Remembers the keys of committed rows, evicting the oldest beyond the capacity.
    pub(crate) fn remember(&mut self, keys: impl IntoIterator<Item = SpanKey>) {
        if self.capacity == 0 {
            return;
        }
        let Self { ring, next, slots, hasher, capacity } = self;
        for key in keys {
            let key = pack(&key);
            let hash = hasher.hash_one(key);
            if slots.find(hash, |&slot| ring[slot as usize] == key).is_some() {
                continue;
            }
            let slot = if ring.len() < *capacity {
                ring.push(key);
                ring.len() - 1
            } else {
                // The oldest key's slot takes the new key.
                let slot = *next;
                *next = (slot + 1) % *capacity;
                if let Ok(entry) = slots.find_entry(hasher.hash_one(ring[slot]), |&s| s as usize == slot) {
                    entry.remove();
                }
                ring[slot] = key;
                slot
            };
            slots.insert_unique(hash, slot as u32, |&s| hasher.hash_one(ring[s as usize]));
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
    fn a_full_window_keeps_exactly_the_last_keys_through_many_evictions() {
        let mut recent = RecentSpans::new(100);
        let keys: Vec<SpanKey> = (0..1_000u64)
            .map(|i| SpanKey { trace: u128::from(i) << 70 | 5, start: -(i as i64), span: i, end: 9 })
            .collect();
        for chunk in keys.chunks(37) {
            recent.remember(chunk.iter().copied());
        }
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(recent.contains(key), i >= 900, "key {i}");
        }
        assert!(!RecentSpans::new(0).contains(&keys[0]));
        let mut none = RecentSpans::new(0);
        none.remember([keys[0]]);
        assert!(!none.contains(&keys[0]), "a window of 0 remembers nothing");
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
