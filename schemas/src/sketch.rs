//! Mergeable latency sketches: the per-minute rollups keep one per hop and side (client time, server
//! time, gap), and percentiles over any range merge them instead of reading every call.
//!
//! A sketch counts values in logarithmic buckets, as DDSketch does: bucket `i` holds the values `v`
//! with `γ^(i-1) < |v| ≤ γ^i`, where `γ = (1 + α) / (1 - α)` and `α` is [`RELATIVE_ERROR`]; each
//! bucket stands for `2γ^i / (γ + 1)`, which lies within `α` of every value in it. Values below
//! 1 ns in magnitude are counted as exactly 0; negative values (a gap under clock skew) have buckets
//! of their own. Counts are signed, so a sketch can also take values away (a reader corrects a
//! rollup by the calls it recounts), and merging is adding counts: exact, in any order.
//!
//! [`LatencySketch::quantile`] answers as `percentile_cont` does over the values themselves (linear
//! interpolation between the two values nearest the rank), with each of those two values replaced
//! by its bucket's value: the estimate differs from the exact percentile by at most `α` times the
//! larger magnitude of the two nearest values.

use std::sync::LazyLock;

use crate::SchemaError;

/// The relative error bound of every bucket's value: 1%.
pub const RELATIVE_ERROR: f64 = 0.01;

/// `γ`, the ratio between consecutive bucket bounds.
fn gamma() -> f64 {
    (1.0 + RELATIVE_ERROR) / (1.0 - RELATIVE_ERROR)
}

static INV_LN_GAMMA: LazyLock<f64> = LazyLock::new(|| 1.0 / gamma().ln());

/// The first byte of an encoded sketch: the encoding's version.
const ENCODING_VERSION: u8 = 1;

/// Counts of latency values (nanoseconds) in logarithmic buckets (see the module's documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencySketch {
    /// Bucket index → count, for values ≥ 1 ns.
    positive: Store,
    /// Bucket index of `-v` → count, for values ≤ -1 ns.
    negative: Store,
    /// Values between -1 and 1 ns, exclusive: 0 ns for integer nanoseconds.
    zero: i64,
}

/// The counts of consecutive buckets, dense: merging two stores adds two runs of numbers, with no
/// lookup per bucket (a merge of the sketches of a few thousand rollup rows is the cost of a rollup
/// query). Indices are at least 0 (magnitudes of at least 1) and at most [`MAX_INDEX`], so a store
/// holds a few thousand counts at the most, however its values were chosen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Store {
    /// The bucket index of `counts[0]`.
    offset: i32,
    /// Counts of the buckets from `offset` on; the first and the last are never 0, so equal counts
    /// are equal stores.
    counts: Vec<i64>,
}

/// The buckets a store makes room for when it counts its first value.
const STARTING_CAPACITY: usize = 32;

impl Store {
    /// Widens the store to hold the buckets `from..=to`.
    fn cover(&mut self, from: i32, to: i32) {
        if self.counts.is_empty() {
            self.offset = from;
            // Room for the buckets around it (32 span values within a factor of about 1.9), so
            // that counting the values that usually follow rarely reallocates.
            let len = (to - from + 1) as usize;
            self.counts.reserve(len.max(STARTING_CAPACITY));
            self.counts.resize(len, 0);
            return;
        }
        // Past the starting room, a store grows by what it needs, not by doubling: values that
        // widen a store are rare (new extremes), and a rollup of a seal's file holds tens of
        // thousands of stores at once.
        if from < self.offset {
            let before = (self.offset - from) as usize;
            self.counts.reserve_exact(before);
            self.counts.splice(0..0, std::iter::repeat_n(0, before));
            self.offset = from;
        }
        let last = self.offset + self.counts.len() as i32 - 1;
        if to > last {
            self.counts.reserve_exact((to - last) as usize);
            self.counts.resize(self.counts.len() + (to - last) as usize, 0);
        }
    }

    /// Drops the zero counts at either end.
    fn trim(&mut self) {
        while self.counts.last() == Some(&0) {
            self.counts.pop();
        }
        let leading = self.counts.iter().take_while(|&&n| n == 0).count();
        if leading > 0 {
            self.counts.drain(..leading);
            self.offset += leading as i32;
        }
        if self.counts.is_empty() {
            self.offset = 0;
        }
    }

    fn add(&mut self, index: i32, weight: i64) {
        self.cover(index, index);
        let count = &mut self.counts[(index - self.offset) as usize];
        *count = count.saturating_add(weight);
        if *count == 0 {
            self.trim();
        }
    }

    fn merge(&mut self, other: &Store) {
        if other.counts.is_empty() {
            return;
        }
        self.cover(other.offset, other.offset + other.counts.len() as i32 - 1);
        let start = (other.offset - self.offset) as usize;
        for (count, &n) in self.counts[start..].iter_mut().zip(&other.counts) {
            *count = count.saturating_add(n);
        }
        self.trim();
    }

    /// The store of `buckets`, (index, count) pairs in increasing index order with counts not 0.
    fn from_sorted(buckets: &[(i32, i64)]) -> Self {
        let (Some(&(first, _)), Some(&(last, _))) = (buckets.first(), buckets.last()) else {
            return Self::default();
        };
        let mut counts = vec![0; (last - first + 1) as usize];
        for &(index, count) in buckets {
            counts[(index - first) as usize] = count;
        }
        Self { offset: first, counts }
    }

    /// The buckets with a count, as (index, count), in index order.
    fn iter(&self) -> impl DoubleEndedIterator<Item = (i32, i64)> + '_ {
        self.counts.iter().enumerate().filter(|&(_, &n)| n != 0).map(|(i, &n)| (self.offset + i as i32, n))
    }

    fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// The bucket of a magnitude of at least 1.
fn bucket_of(magnitude: f64) -> i32 {
    (magnitude.ln() * *INV_LN_GAMMA).ceil() as i32
}

/// The largest bucket index a nanosecond value can have (`i64::MAX` ns): a decoded index above it
/// is corrupt.
static MAX_INDEX: LazyLock<i32> = LazyLock::new(|| bucket_of(i64::MAX as f64));

/// The value bucket `index` stands for.
fn bucket_value(index: i32) -> f64 {
    let gamma = gamma();
    2.0 * gamma.powi(index) / (gamma + 1.0)
}

/// The bucket a value of at least 0 ns falls in, for tables that key rows by it (the paths of
/// `path_rollup`): a sketch's bucket for values of at least 1 ns, and -1 for values below (0 ns).
pub fn bucket_index(value_ns: i64) -> i32 {
    if value_ns < 1 { -1 } else { bucket_of(value_ns as f64) }
}

/// The value (ns) bucket `index` of [`bucket_index`] stands for: within [`RELATIVE_ERROR`] of every
/// value in it; 0 for -1.
pub fn bucket_index_value(index: i32) -> f64 {
    if index < 0 { 0.0 } else { bucket_value(index) }
}

/// The smallest and the largest value (ns) bucket `index` of [`bucket_index`] can hold, rounded
/// outwards: every value in it lies within them.
pub fn bucket_index_bounds(index: i32) -> (i64, i64) {
    if index < 0 {
        return (0, 0);
    }
    let gamma = gamma();
    // Float to integer casts saturate.
    (gamma.powi(index - 1).floor() as i64, gamma.powi(index).ceil() as i64)
}

impl LatencySketch {
    /// An empty sketch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts `value_ns` `weight` times (a negative weight takes it away).
    pub fn add(&mut self, value_ns: i64, weight: i64) {
        if weight == 0 {
            return;
        }
        let (store, magnitude) = match value_ns {
            0 => {
                self.zero = self.zero.saturating_add(weight);
                return;
            }
            v if v > 0 => (&mut self.positive, v as f64),
            v => (&mut self.negative, (v as f64).abs()),
        };
        store.add(bucket_of(magnitude), weight);
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &LatencySketch) {
        self.zero = self.zero.saturating_add(other.zero);
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
    }

    /// The number of values counted (what was taken away subtracted).
    pub fn count(&self) -> i64 {
        self.positive.iter().chain(self.negative.iter()).fold(self.zero, |sum, (_, n)| sum.saturating_add(n))
    }

    /// The bytes the sketch holds on the heap (its dense stores' capacity), for memory accounting.
    pub fn heap_size(&self) -> usize {
        (self.positive.counts.capacity() + self.negative.counts.capacity()) * std::mem::size_of::<i64>()
    }

    /// Whether no value is counted.
    pub fn is_empty(&self) -> bool {
        self.zero == 0 && self.positive.is_empty() && self.negative.is_empty()
    }

    /// The buckets in value order, as (bucket value, count): most negative first. Counts below zero
    /// (more taken away than was added: not a sketch of any values) count as none.
    pub fn buckets(&self) -> impl Iterator<Item = (f64, i64)> + '_ {
        let negative = self.negative.iter().rev().map(|(i, n)| (-bucket_value(i), n));
        let zero = std::iter::once((0.0, self.zero));
        let positive = self.positive.iter().map(|(i, n)| (bucket_value(i), n));
        negative.chain(zero).chain(positive).filter(|&(_, n)| n > 0)
    }

    /// The `q`-quantile (0 ≤ q ≤ 1) as `percentile_cont` computes it, each of the two values it
    /// interpolates between replaced by its bucket's value (see the module's documentation); `None`
    /// for an empty sketch.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets().fold(0i64, |sum, (_, n)| sum.saturating_add(n));
        if total <= 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * (total - 1) as f64;
        let (low, high) = (rank.floor() as i64, rank.ceil() as i64);
        let fraction = rank - low as f64;
        let (mut low_value, mut high_value) = (None, None);
        let mut seen = 0i64;
        for (value, n) in self.buckets() {
            seen = seen.saturating_add(n);
            if low_value.is_none() && low < seen {
                low_value = Some(value);
            }
            if high < seen {
                high_value = Some(value);
                break;
            }
        }
        let (low_value, high_value) = (low_value?, high_value?);
        Some(low_value + fraction * (high_value - low_value))
    }

    /// The sketch as bytes (what the rollup tables store): a version byte, the zero count, then
    /// each store as its length and (index delta, count) pairs, every number a zigzag varint.
    pub fn encode(&self) -> Vec<u8> {
        let buckets = |store: &Store| store.iter().count();
        let mut out = Vec::with_capacity(8 + 3 * (buckets(&self.positive) + buckets(&self.negative)));
        out.push(ENCODING_VERSION);
        put_varint(&mut out, self.zero);
        for store in [&self.positive, &self.negative] {
            put_varint(&mut out, buckets(store) as i64);
            let mut previous = 0i64;
            for (index, count) in store.iter() {
                put_varint(&mut out, i64::from(index) - previous);
                put_varint(&mut out, count);
                previous = i64::from(index);
            }
        }
        out
    }

    /// Reads what [`LatencySketch::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, SchemaError> {
        let invalid = |why: &str| SchemaError::InvalidSketch(why.to_owned());
        let (&version, mut rest) = bytes.split_first().ok_or_else(|| invalid("no bytes"))?;
        if version != ENCODING_VERSION {
            return Err(invalid(&format!("encoding version {version}, expected {ENCODING_VERSION}")));
        }
        let mut sketch = LatencySketch { zero: take_varint(&mut rest)?, ..Self::default() };
        for negative in [false, true] {
            let len = take_varint(&mut rest)?;
            // Indices increase from 0 to at most MAX_INDEX: no store holds more buckets than that.
            if len < 0 || len as usize > rest.len() || len > i64::from(*MAX_INDEX) + 1 {
                return Err(invalid("a store longer than its bytes"));
            }
            let mut index = 0i64;
            let mut buckets = Vec::with_capacity(len as usize);
            for i in 0..len {
                let step = take_varint(&mut rest)?;
                // Indices are written in increasing order, each once.
                if step < 0 || (i > 0 && step == 0) {
                    return Err(invalid("bucket indices out of order"));
                }
                index = index.saturating_add(step);
                if index > i64::from(*MAX_INDEX) {
                    return Err(invalid("a bucket index out of range"));
                }
                let count = take_varint(&mut rest)?;
                if count != 0 {
                    buckets.push((index as i32, count));
                }
            }
            let store = if negative { &mut sketch.negative } else { &mut sketch.positive };
            *store = Store::from_sorted(&buckets);
        }
        if !rest.is_empty() {
            return Err(invalid("trailing bytes"));
        }
        Ok(sketch)
    }
}

fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Result<i64, SchemaError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) =
            bytes.split_first().ok_or_else(|| SchemaError::InvalidSketch("a number cut short".to_owned()))?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err(SchemaError::InvalidSketch("a number longer than 64 bits".to_owned()))
}

/// The count, mean and sum of squared deviations from the mean (`M2`) of latency values, updated
/// one value at a time (Welford) and merged pairwise (Chan et al.): the mean and the population
/// standard deviation without the cancellation of `E[x²] − mean²`, which loses every digit of a
/// deviation small against the mean (nearly constant durations of a second or more).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub count: i64,
    pub mean: f64,
    pub m2: f64,
}

impl Moments {
    /// The moments of a group of `count` values whose mean is `mean` and `M2` is `m2`.
    pub fn of(count: i64, mean: f64, m2: f64) -> Self {
        Self { count, mean, m2 }
    }

    pub fn add(&mut self, value_ns: i64) {
        self.count += 1;
        let value = value_ns as f64;
        let delta = value - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (value - self.mean);
    }

    pub fn merge(&mut self, other: &Moments) {
        if other.count <= 0 {
            return;
        }
        if self.count <= 0 {
            *self = *other;
            return;
        }
        let count = self.count + other.count;
        let delta = other.mean - self.mean;
        let (a, b, n) = (self.count as f64, other.count as f64, count as f64);
        self.mean += delta * b / n;
        self.m2 += other.m2 + delta * delta * a * b / n;
        self.count = count;
    }

    /// The population standard deviation (as `stddev_pop`); `None` without values.
    pub fn stddev(&self) -> Option<f64> {
        (self.count > 0).then(|| (self.m2.max(0.0) / self.count as f64).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// `percentile_cont` over `values`, and the larger magnitude of the two values it interpolates
    /// between: the scale of the sketch's error bound.
    fn exact(values: &[i64], q: f64) -> (f64, f64) {
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let rank = q * (sorted.len() - 1) as f64;
        let (low, high) = (sorted[rank.floor() as usize] as f64, sorted[rank.ceil() as usize] as f64);
        (low + (rank - rank.floor()) * (high - low), low.abs().max(high.abs()))
    }

    fn within_bound(sketch: &LatencySketch, values: &[i64]) {
        for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let (want, scale) = exact(values, q);
            let got = sketch.quantile(q).expect("values were counted");
            assert!(
                (got - want).abs() <= RELATIVE_ERROR * scale + 1e-9 * scale.max(1.0),
                "q {q}: sketch {got}, exact {want} (bound {})",
                RELATIVE_ERROR * scale
            );
        }
    }

    proptest! {
        #[test]
        fn quantiles_are_within_the_stated_bound(
            values in prop::collection::vec(
                prop_oneof![-1_000_000i64..1_000_000, 0i64..=3, 1i64..60_000_000_000, Just(i64::MAX / 4)],
                1..400,
            ),
        ) {
            let mut sketch = LatencySketch::new();
            for &v in &values {
                sketch.add(v, 1);
            }
            prop_assert_eq!(sketch.count(), values.len() as i64);
            within_bound(&sketch, &values);
            // Encoding loses nothing.
            prop_assert_eq!(LatencySketch::decode(&sketch.encode()).expect("decodes"), sketch);
        }

        #[test]
        fn merging_parts_and_taking_values_away_is_exact(
            values in prop::collection::vec(-5_000i64..5_000_000_000, 2..300),
            cut in 0usize..300,
            extra in prop::collection::vec(1i64..5_000_000, 0..50),
        ) {
            let cut = cut % values.len();
            let mut whole = LatencySketch::new();
            values.iter().for_each(|&v| whole.add(v, 1));
            // Two parts merged, plus values added then taken away again: the same counts.
            let (mut first, mut second) = (LatencySketch::new(), LatencySketch::new());
            values[..cut].iter().for_each(|&v| first.add(v, 1));
            values[cut..].iter().for_each(|&v| second.add(v, 1));
            extra.iter().for_each(|&v| second.add(v, 1));
            let mut correction = LatencySketch::new();
            extra.iter().for_each(|&v| correction.add(v, -1));
            let correction = LatencySketch::decode(&correction.encode()).expect("decodes");
            first.merge(&second);
            first.merge(&correction);
            prop_assert_eq!(first, whole);
        }
    }

    #[test]
    fn an_empty_sketch_has_no_quantile_and_bad_bytes_are_refused() {
        let mut sketch = LatencySketch::new();
        assert_eq!(sketch.quantile(0.5), None);
        sketch.add(7, 1);
        sketch.add(7, -1);
        assert!(sketch.is_empty());
        assert_eq!(sketch.quantile(0.5), None);
        for bad in [&[][..], &[2, 0, 0, 0][..], &[1, 0, 4, 1][..], &[1, 0, 0, 0, 9][..], &[1, 0xff][..]] {
            assert!(LatencySketch::decode(bad).is_err(), "{bad:?}");
        }
        // Varints are zigzag: 2 is 1, 1 is -1. A bucket given twice, indices going back, an index
        // no nanosecond value reaches.
        for bad in
            [&[1, 0, 4, 2, 2, 0, 2, 0][..], &[1, 0, 4, 4, 2, 1, 2, 0][..], &[1, 0, 2, 0xc0, 0x9a, 0x0c, 2, 0][..]]
        {
            assert!(LatencySketch::decode(bad).is_err(), "{bad:?}");
        }
        // Two buckets in order (0 and 1, one value each): read, and written again byte for byte,
        // as the rollups already stored hold them.
        let two = [1, 0, 4, 2, 2, 2, 2, 0];
        assert_eq!(LatencySketch::decode(&two).expect("two buckets in order").encode(), two);
    }

    #[test]
    fn values_taken_away_again_leave_an_empty_sketch() {
        let mut sketch = LatencySketch::new();
        for v in [-40_000, -3, 0, 7, 1_000_000, 9_000_000_000] {
            sketch.add(v, 2);
        }
        for v in [9_000_000_000, -3, 7, 0, -40_000, 1_000_000] {
            sketch.add(v, -2);
        }
        assert_eq!(sketch, LatencySketch::new());
        assert_eq!(LatencySketch::decode(&sketch.encode()).expect("empty"), sketch);
    }

    /// A duration's bucket stands for a value within the relative error of it, buckets grow with
    /// the values, and 0 ns has a bucket of its own that stands for 0.
    #[test]
    fn a_bucket_index_stands_for_its_values() {
        assert_eq!((bucket_index(0), bucket_index(-5)), (-1, -1));
        assert_eq!((bucket_index_value(-1), bucket_index_bounds(-1)), (0.0, (0, 0)));
        let mut previous = -1;
        for v in [1i64, 2, 3, 10, 999, 1_000, 1_001, 123_456_789, 9_000_000_000, i64::MAX] {
            let index = bucket_index(v);
            assert!(index >= previous, "{v}");
            previous = index;
            let value = bucket_index_value(index);
            assert!((value - v as f64).abs() <= RELATIVE_ERROR * v as f64 * (1.0 + 1e-12), "{v}: {value}");
            let (low, high) = bucket_index_bounds(index);
            assert!(low <= v && v <= high && (high - low) as f64 <= 0.03 * v as f64 + 2.0, "{v}: [{low}, {high}]");
        }
    }

    /// Moments added one by one, or merged from any split, give the mean and deviation computed
    /// from the values directly; for nearly constant values of about a minute too, where the
    /// difference of squares keeps no digit of the deviation.
    #[test]
    fn moments_merge_to_the_mean_and_deviation_of_all_values() {
        let values: Vec<i64> = (0..1_000).map(|i| 60_000_000_000 + (i * 7_919) % 1_000).collect();
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let stddev = (values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(stddev > 200.0 && stddev < 400.0, "{stddev}");
        for split in [1, 3, 250, 999] {
            let (mut left, mut right) = (Moments::default(), Moments::default());
            values[..split].iter().for_each(|&v| left.add(v));
            values[split..].iter().for_each(|&v| right.add(v));
            let mut merged = Moments::default();
            merged.merge(&left);
            merged.merge(&Moments::default());
            merged.merge(&right);
            assert_eq!(merged.count, 1_000);
            assert!((merged.mean - mean).abs() <= 1e-9 * mean, "{split}: {} vs {mean}", merged.mean);
            let got = merged.stddev().unwrap();
            assert!((got - stddev).abs() <= 1e-6 * stddev, "{split}: {got} vs {stddev}");
        }
        let squares = values.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n;
        assert!(((squares - mean * mean).max(0.0).sqrt() - stddev).abs() > 0.01 * stddev, "cancellation");
        assert_eq!(Moments::default().stddev(), None);
    }

    /// What a sketch holds grows with the buckets it counts, and is measured without encoding it.
    #[test]
    fn heap_size_counts_the_buckets_held() {
        let mut sketch = LatencySketch::new();
        assert_eq!(sketch.heap_size(), 0);
        sketch.add(1, 1);
        sketch.add(1_000_000_000, 1);
        // From 1 ns to 1 s: over a thousand buckets, held densely.
        assert!(sketch.heap_size() >= 1_000 * 8, "{}", sketch.heap_size());
    }

    #[test]
    fn counts_saturate_instead_of_overflowing() {
        let mut sketch = LatencySketch::new();
        sketch.add(5, i64::MAX);
        sketch.add(0, i64::MAX);
        let copy = sketch.clone();
        sketch.merge(&copy);
        sketch.add(5, 1);
        assert_eq!(sketch.count(), i64::MAX);
        assert!(sketch.quantile(0.5).is_some());
    }

    #[test]
    fn one_value_is_its_bucket_value() {
        let mut sketch = LatencySketch::new();
        sketch.add(1_000_000, 3);
        let got = sketch.quantile(0.99).expect("counted");
        assert!((got - 1_000_000.0).abs() <= 10_000.0, "{got}");
        assert_eq!(sketch.count(), 3);
    }
}
