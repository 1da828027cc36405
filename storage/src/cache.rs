//! A read-through cache of the byte ranges queries read from the store.
//!
//! A query over shared storage reads the same parts of the same files as the query before it: the
//! footer, page indexes and bloom filters of every file it considers, and the column chunks of the
//! row groups it keeps. Each is a request to the store (tens of milliseconds on S3, and billed);
//! [`RangeCache`] answers repeated ones from memory, within a byte bound, evicting the least
//! recently used range first.
//!
//! Only Parquet files are cached: hopscope never rewrites one under the same key (files are named
//! for their contents: a new file id, or a new derivation version), so a cached range can never be
//! stale. Everything else (manifests, listings, writes) passes straight through.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// What a cached range costs beyond its bytes (its key twice, its entries in two maps, its
/// allocation, a share of its object's metadata), as an estimate.
const ENTRY_OVERHEAD_BYTES: usize = 256;

/// The largest share of the bound one range may take: a larger one is passed through, so that a
/// single big read does not push out everything else.
const LARGEST_SHARE: usize = 8;

/// How many kept ranges, starting at or before a range asked for, are looked at for one that holds it.
const LOOKED_AT: usize = 4;

/// An [`ObjectStore`] that keeps the byte ranges read from the Parquet files of `inner` in memory,
/// up to a bound. See the module documentation.
pub struct RangeCache {
    inner: Arc<dyn ObjectStore>,
    limit: usize,
    ranges: Mutex<Ranges>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What the cache has done since it was made, and holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Ranges answered from memory.
    pub hits: u64,
    /// Ranges read from the store.
    pub misses: u64,
    /// Bytes held now (with a small overhead per range).
    pub bytes: usize,
    /// The bound on `bytes`.
    pub limit: usize,
}

#[derive(Default)]
struct Ranges {
    /// Per object: the cached ranges by their first byte.
    by_path: HashMap<Path, Object>,
    /// Every cached range by when it was last used, oldest first: `(path, start)`.
    by_use: BTreeMap<u64, (Path, u64)>,
    clock: u64,
    bytes: usize,
}

#[derive(Default)]
struct Object {
    /// The object's metadata as the store last described it, to answer a whole `get` with.
    meta: Option<ObjectMeta>,
    ranges: BTreeMap<u64, Cached>,
}

struct Cached {
    bytes: Bytes,
    used: u64,
}

impl RangeCache {
    /// Caches what is read from `inner`'s Parquet files, holding at most `limit_bytes`.
    pub fn new(inner: Arc<dyn ObjectStore>, limit_bytes: usize) -> Self {
        Self {
            inner,
            limit: limit_bytes,
            ranges: Mutex::new(Ranges::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// What the cache has done and holds.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: self.lock().bytes,
            limit: self.limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ranges> {
        // The state is consistent between statements: a panic elsewhere leaves nothing half done.
        self.ranges.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cacheable(location: &Path) -> bool {
        location.extension() == Some("parquet")
    }

    /// The bytes of `range` of `location`, when a cached range holds them all.
    fn cached(&self, location: &Path, range: &Range<u64>) -> Option<Bytes> {
        if range.start > range.end {
            return None;
        }
        let mut ranges = self.lock();
        let ranges = &mut *ranges;
        let object = ranges.by_path.get_mut(location)?;
        // The kept ranges starting at or before it, nearest first: a short one may sit between a
        // longer one and the range asked for (a few are looked at, not all).
        let (start, cached) = object
            .ranges
            .range_mut(..=range.start)
            .rev()
            .take(LOOKED_AT)
            .find(|(start, cached)| **start + cached.bytes.len() as u64 >= range.end)
            .map(|(&start, cached)| (start, cached))?;
        ranges.clock += 1;
        ranges.by_use.remove(&cached.used);
        cached.used = ranges.clock;
        ranges.by_use.insert(cached.used, (location.clone(), start));
        let bytes = cached.bytes.slice((range.start - start) as usize..(range.end - start) as usize);
        Some(bytes)
    }

    /// Keeps `bytes`, the range starting at `start` of `location`, evicting the least recently
    /// used ranges to make room.
    fn keep(&self, location: &Path, start: u64, bytes: &Bytes, meta: Option<&ObjectMeta>) {
        let cost = bytes.len() + ENTRY_OVERHEAD_BYTES;
        if cost > self.limit / LARGEST_SHARE {
            return;
        }
        // A copy: the store may have answered with a slice of a larger (coalesced) read, which the
        // cache must not keep alive unaccounted.
        let bytes = Bytes::copy_from_slice(bytes);
        let mut ranges = self.lock();
        let ranges = &mut *ranges;
        if let (Some(meta), Some(object)) = (meta, ranges.by_path.get_mut(location)) {
            object.meta = Some(meta.clone());
        }
        // A range from the same byte kept already: a longer (or equal) one stays, as when two
        // queries read the same range at once; a shorter one makes way.
        if let Some(object) = ranges.by_path.get_mut(location)
            && let Some(kept) = object.ranges.get(&start)
        {
            if kept.bytes.len() >= bytes.len() {
                return;
            }
            let kept = object.ranges.remove(&start).expect("just found");
            ranges.by_use.remove(&kept.used);
            ranges.bytes -= kept.bytes.len() + ENTRY_OVERHEAD_BYTES;
        }
        while ranges.bytes + cost > self.limit {
            let Some((_, (path, start))) = ranges.by_use.pop_first() else { break };
            let object = ranges.by_path.get_mut(&path).expect("every range in the use order is cached");
            let evicted = object.ranges.remove(&start).expect("every range in the use order is cached");
            ranges.bytes -= evicted.bytes.len() + ENTRY_OVERHEAD_BYTES;
            if object.ranges.is_empty() {
                ranges.by_path.remove(&path);
            }
        }
        ranges.clock += 1;
        let used = ranges.clock;
        let object = ranges.by_path.entry(location.clone()).or_default();
        if let Some(meta) = meta {
            object.meta = Some(meta.clone());
        }
        object.ranges.insert(start, Cached { bytes, used });
        ranges.by_use.insert(used, (location.clone(), start));
        ranges.bytes += cost;
    }

    fn meta(&self, location: &Path) -> Option<ObjectMeta> {
        self.lock().by_path.get(location).and_then(|object| object.meta.clone())
    }
}

impl fmt::Debug for RangeCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RangeCache").field("inner", &self.inner.to_string()).field("stats", &self.stats()).finish()
    }
}

impl fmt::Display for RangeCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RangeCache({})", self.inner)
    }
}

/// Whether a read asks for nothing but bytes: no condition or version a cached range cannot check.
fn unconditional(options: &GetOptions) -> bool {
    options.if_match.is_none()
        && options.if_none_match.is_none()
        && options.if_modified_since.is_none()
        && options.if_unmodified_since.is_none()
        && options.version.is_none()
        && !options.head
}

#[async_trait]
impl ObjectStore for RangeCache {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let range = match &options.range {
            Some(GetRange::Bounded(range))
                if range.start <= range.end && Self::cacheable(location) && unconditional(&options) =>
            {
                range.clone()
            }
            _ => return self.inner.get_opts(location, options).await,
        };
        if let Some(meta) = self.meta(location)
            && let Some(bytes) = self.cached(location, &range)
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(answer(meta, range, bytes));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let got = self.inner.get_opts(location, options).await?;
        let (meta, got_range) = (got.meta.clone(), got.range.clone());
        let bytes = got.bytes().await?;
        self.keep(location, got_range.start, &bytes, Some(&meta));
        Ok(answer(meta, got_range, bytes))
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        if !Self::cacheable(location) || ranges.iter().any(|range| range.start > range.end) {
            return self.inner.get_ranges(location, ranges).await;
        }
        let mut answers: Vec<Option<Bytes>> = ranges.iter().map(|range| self.cached(location, range)).collect();
        let missing: Vec<Range<u64>> = ranges
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| answer.is_none())
            .map(|(range, _)| range.clone())
            .collect();
        self.hits.fetch_add((ranges.len() - missing.len()) as u64, Ordering::Relaxed);
        if !missing.is_empty() {
            self.misses.fetch_add(missing.len() as u64, Ordering::Relaxed);
            // The store coalesces nearby ranges into fewer requests.
            let mut fetched = self.inner.get_ranges(location, &missing).await?.into_iter();
            for (range, answer) in ranges.iter().zip(answers.iter_mut()).filter(|(_, answer)| answer.is_none()) {
                let bytes = fetched.next().expect("the store answers every range asked");
                self.keep(location, range.start, &bytes, None);
                *answer = Some(bytes);
            }
        }
        Ok(answers.into_iter().map(|answer| answer.expect("every range answered")).collect())
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// A read of `range` answered with `bytes`.
fn answer(meta: ObjectMeta, range: Range<u64>, bytes: Bytes) -> GetResult {
    GetResult {
        payload: GetResultPayload::Stream(futures::stream::once(async move { Ok(bytes) }).boxed()),
        meta,
        range,
        attributes: Attributes::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    fn object(len: usize) -> Bytes {
        (0..len).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>().into()
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        futures::executor::block_on(future)
    }

    /// An in-memory store holding `len` bytes at `file`, and those bytes.
    fn store_with(file: &Path, len: usize) -> (Arc<InMemory>, Bytes) {
        let store = Arc::new(InMemory::new());
        let bytes = object(len);
        block_on(store.put(file, bytes.clone().into())).unwrap();
        (store, bytes)
    }

    #[test]
    fn a_range_read_again_is_answered_without_the_store() {
        let file = Path::from("t/spans/a.parquet");
        let (store, bytes) = store_with(&file, 10_000);
        let cache = RangeCache::new(Arc::clone(&store) as _, 1 << 20);
        // Read once through the cache (a single range, and several at once)...
        assert_eq!(block_on(cache.get_range(&file, 100..300)).unwrap(), bytes.slice(100..300));
        let several = block_on(cache.get_ranges(&file, &[1000..1100, 5000..6000])).unwrap();
        assert_eq!(several, [bytes.slice(1000..1100), bytes.slice(5000..6000)]);
        assert_eq!((cache.stats().hits, cache.stats().misses), (0, 3));
        // ...then gone from the store: what the cache holds is still answered, and only that.
        block_on(store.delete(&file)).unwrap();
        assert_eq!(block_on(cache.get_range(&file, 100..300)).unwrap(), bytes.slice(100..300));
        assert_eq!(block_on(cache.get_range(&file, 150..250)).unwrap(), bytes.slice(150..250), "within a range");
        let again = block_on(cache.get_ranges(&file, &[5000..6000, 1000..1100, 5500..5600])).unwrap();
        assert_eq!(again, [bytes.slice(5000..6000), bytes.slice(1000..1100), bytes.slice(5500..5600)]);
        assert_eq!((cache.stats().hits, cache.stats().misses), (5, 3));
        assert!(block_on(cache.get_range(&file, 250..350)).is_err(), "past a cached range: read from the store");
        let whole = block_on(cache.get(&file));
        assert!(whole.is_err(), "a whole read is not answered from ranges");
    }

    #[test]
    fn the_least_recently_used_ranges_make_room_and_the_bound_holds() {
        let file = Path::from("a.parquet");
        let (store, bytes) = store_with(&file, 100_000);
        // Room for eight ranges of 1000 bytes with their overhead (the largest share a range may take).
        let cache = RangeCache::new(Arc::clone(&store) as _, LARGEST_SHARE * (1000 + ENTRY_OVERHEAD_BYTES));
        let room_for = LARGEST_SHARE;
        let starts: Vec<u64> = (0..room_for as u64 + 1).map(|i| i * 2000).collect();
        for &start in &starts {
            block_on(cache.get_range(&file, start..start + 1000)).unwrap();
            // The first range is used after each new one, so it stays the most recent.
            block_on(cache.get_range(&file, 0..1000)).unwrap();
            assert!(cache.stats().bytes <= cache.limit, "{:?}", cache.stats());
        }
        block_on(store.delete(&file)).unwrap();
        // The first range was always in use: kept. The second was the oldest when the last came.
        assert_eq!(block_on(cache.get_range(&file, 0..1000)).unwrap(), bytes.slice(0..1000));
        assert!(block_on(cache.get_range(&file, starts[1]..starts[1] + 1000)).is_err(), "evicted");
        let last = *starts.last().unwrap();
        let kept = block_on(cache.get_range(&file, last..last + 1000)).unwrap();
        assert_eq!(kept, bytes.slice(last as usize..last as usize + 1000));
    }

    #[test]
    fn a_longer_range_from_the_same_byte_replaces_a_shorter_one() {
        let file = Path::from("a.parquet");
        let (store, bytes) = store_with(&file, 10_000);
        let cache = RangeCache::new(Arc::clone(&store) as _, 1 << 20);
        block_on(cache.get_range(&file, 100..200)).unwrap();
        block_on(cache.get_range(&file, 100..900)).unwrap();
        block_on(cache.get_range(&file, 100..150)).unwrap();
        assert_eq!(cache.stats().bytes, 800 + ENTRY_OVERHEAD_BYTES, "one range, the longer");
        // One range missed twice at once (as by two queries): kept once.
        let twice = block_on(cache.get_ranges(&file, &[2000..2500, 2000..2500])).unwrap();
        assert_eq!(twice, [bytes.slice(2000..2500), bytes.slice(2000..2500)]);
        assert_eq!(cache.stats().bytes, 800 + 500 + 2 * ENTRY_OVERHEAD_BYTES);
        // A range of another object kept through get_ranges, then read through get_range: once
        // more from the store (for the object's metadata, which get_ranges does not give), then
        // from the cache.
        let other = Path::from("b.parquet");
        block_on(store.put(&other, bytes.clone().into())).unwrap();
        block_on(cache.get_ranges(&other, &[0..100, 200..300])).unwrap();
        let (hits, misses) = (cache.stats().hits, cache.stats().misses);
        block_on(cache.get_range(&other, 0..100)).unwrap();
        assert_eq!((cache.stats().hits, cache.stats().misses), (hits, misses + 1));
        block_on(cache.get_range(&other, 0..100)).unwrap();
        assert_eq!((cache.stats().hits, cache.stats().misses), (hits + 1, misses + 1));
        block_on(store.delete(&file)).unwrap();
        assert_eq!(block_on(cache.get_range(&file, 300..900)).unwrap(), bytes.slice(300..900));
        block_on(store.delete(&other)).unwrap();

        // In a full cache, a longer range from a kept range's first byte takes that one's room
        // before anything else is evicted.
        let cost = 1000 + ENTRY_OVERHEAD_BYTES;
        let cache = RangeCache::new(Arc::clone(&store) as _, LARGEST_SHARE * (1100 + ENTRY_OVERHEAD_BYTES));
        block_on(store.put(&file, bytes.clone().into())).unwrap();
        let room = cache.limit / cost;
        for i in 0..room as u64 {
            block_on(cache.get_range(&file, i * 1000..i * 1000 + 1000)).unwrap();
        }
        assert_eq!(cache.stats().bytes, room * cost, "full");
        block_on(cache.get_range(&file, 0..1000)).unwrap();
        block_on(cache.get_range(&file, 0..1100)).unwrap();
        block_on(store.delete(&file)).unwrap();
        for i in 1..room as u64 {
            assert!(block_on(cache.get_range(&file, i * 1000..i * 1000 + 1000)).is_ok(), "range {i} was evicted");
        }

        // A short range kept before a longer one that covers it does not hide the longer one.
        let cache = RangeCache::new(Arc::clone(&store) as _, 1 << 20);
        block_on(store.put(&file, bytes.clone().into())).unwrap();
        block_on(cache.get_range(&file, 500..510)).unwrap();
        block_on(cache.get_range(&file, 100..900)).unwrap();
        block_on(store.delete(&file)).unwrap();
        assert_eq!(block_on(cache.get_range(&file, 505..600)).unwrap(), bytes.slice(505..600));
        // A range that ends before it starts is the store's to refuse, not the cache's to answer.
        assert!(block_on(cache.get_ranges(&file, &[Range { start: 500, end: 400 }])).is_err());
    }

    #[test]
    fn other_objects_large_ranges_and_conditional_reads_pass_through() {
        let store = Arc::new(InMemory::new());
        let (manifest, file) = (Path::from("t/manifest.json"), Path::from("t/a.parquet"));
        block_on(store.put(&manifest, object(100).into())).unwrap();
        block_on(store.put(&file, object(100_000).into())).unwrap();
        let cache = RangeCache::new(Arc::clone(&store) as _, 80_000);
        block_on(cache.get_range(&manifest, 0..50)).unwrap();
        block_on(cache.get_range(&file, 0..20_000)).unwrap();
        let conditional =
            GetOptions { range: Some((0..10).into()), if_match: Some("*".into()), ..GetOptions::default() };
        block_on(cache.get_opts(&file, conditional)).unwrap();
        assert_eq!(cache.stats().bytes, 0, "nothing kept: a manifest, a range over 1/8 of the bound, a condition");
        // The manifest changes: the cache answers its new bytes.
        block_on(store.put(&manifest, object(60).into())).unwrap();
        assert_eq!(block_on(cache.get_range(&manifest, 0..50)).unwrap(), object(60).slice(0..50));
    }
}
