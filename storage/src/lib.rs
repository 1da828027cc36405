//! Shared storage: hopscope's committed files on an S3-compatible object store.
//!
//! A single process keeps everything in its local data directory (`hopscope-ingest`'s own code,
//! with fsync and rename). When several processes share one store (ingesters committing to one
//! tenant, stateless queriers reading it), the files and manifests live in an object store instead,
//! and what the rename gave a single writer, conditional writes give many: a manifest is replaced
//! only if it is still the version its writer read ([`ObjectStorage::write_if`]), so two writers
//! never overwrite each other's commit; the loser re-reads the newer manifest and tries again.
//!
//! The client is `object_store` at the version DataFusion uses, so the queriers' scans and the
//! ingesters' commits speak to the store through one library. Its calls are asynchronous; the
//! methods here block on a small runtime of the storage's own, for the blocking threads that commit
//! (callers must not be async worker threads).

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use tokio::io::AsyncWriteExt;

mod cache;
pub use cache::{CacheStats, RangeCache};

/// The size of one part of an upload, and of the single request of a smaller file.
const UPLOAD_PART_BYTES: usize = 8 << 20;

/// What went wrong with the shared storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The storage URL is not one hopscope can use.
    #[error("storage URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A storage option (`AWS_*` setting) is unknown or has a bad value.
    #[error("storage option {key:?}: {reason}")]
    InvalidOption { key: String, reason: String },
    /// The client for the store could not be built (missing region, bad endpoint, ...).
    #[error("cannot use {url}: {source}")]
    Client { url: String, source: Box<object_store::Error> },
    /// A conditional write lost: the object changed (or appeared) since its writer read it.
    #[error("{key} in {url} changed since it was read: another writer committed first")]
    Conflict { key: String, url: String },
    /// A request to the store failed.
    #[error("{what} {key} in {url}: {source}")]
    Request { what: &'static str, key: String, url: String, source: Box<object_store::Error> },
    /// The store answered a write without an ETag, which conditional writes need.
    #[error("{url} returned no ETag for {key}; hopscope needs a store with conditional writes (If-Match)")]
    NoVersion { key: String, url: String },
    /// A local file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Local { what: &'static str, path: std::path::PathBuf, source: std::io::Error },
    /// The store cannot be used by hopscope (see [`ObjectStorage::check`]).
    #[error("cannot use {url}: {reason}")]
    Unusable { url: String, reason: String },
    /// The storage's own runtime could not be started or lost a task.
    #[error("storage runtime: {0}")]
    Runtime(String),
}

/// What [`ObjectStorage::upload_new`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uploaded {
    /// The file is stored now.
    Stored,
    /// An object of the same size was there already (see [`ObjectStorage::upload_new`]).
    AlreadyThere,
}

/// Which version of an object a writer read: its ETag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(String);

/// An object's bytes and the version they are.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub bytes: Bytes,
    pub version: Version,
}

/// What [`ObjectStorage::read_if_changed`] found.
#[derive(Debug, Clone)]
pub enum Changed {
    /// The object is still the version given.
    Not,
    /// The object is another version now.
    To(Versioned),
    /// The object does not exist.
    Gone,
}

/// A bucket (and prefix) of an object store, with blocking calls for the threads that commit.
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    /// How the S3 client was configured, to give the query engine a client of its own (one that
    /// lives on its runtime); `None` for a store given ready-made.
    s3: Option<AmazonS3Builder>,
    /// `s3://BUCKET`: the store's URL as DataFusion registers it.
    store_url: String,
    /// Every key is under this prefix (empty: the bucket's root).
    prefix: String,
    /// The URL the storage was opened with, for messages.
    url: String,
    io: Io,
}

impl fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStorage").field("url", &self.url).finish_non_exhaustive()
    }
}

impl ObjectStorage {
    /// Opens `s3://BUCKET/PREFIX` on any S3-compatible store. Credentials, region and endpoint come
    /// from the standard `AWS_*` environment variables (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP=true`
    /// for a local store, ...), then from `options` (the same names in lower case, e.g.
    /// `aws_endpoint`), which win. Makes no request: a wrong endpoint shows at the first read.
    pub fn open_s3(url: &str, options: &[(&str, &str)]) -> Result<Self, StorageError> {
        let (bucket, prefix) = parse_s3_url(url)?;
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (key, value) in options {
            let config_key = AmazonS3ConfigKey::from_str(&key.to_ascii_lowercase())
                .map_err(|e| StorageError::InvalidOption { key: (*key).to_owned(), reason: e.to_string() })?;
            builder = builder.with_config(config_key, *value);
        }
        let store = builder
            .clone()
            .build()
            .map_err(|source| StorageError::Client { url: url.to_owned(), source: Box::new(source) })?;
        // One spelling per store: slashes at the ends or doubled name the same prefix.
        let prefix = prefix.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("/");
        let normalized = if prefix.is_empty() { format!("s3://{bucket}") } else { format!("s3://{bucket}/{prefix}") };
        let mut storage = Self::new(Arc::new(store), &format!("s3://{bucket}"), &prefix, &normalized)?;
        storage.s3 = Some(builder);
        Ok(storage)
    }

    /// Wraps an already-built store (an in-memory one in tests) registered as `store_url`; keys
    /// are put under `prefix`.
    pub fn new(store: Arc<dyn ObjectStore>, store_url: &str, prefix: &str, url: &str) -> Result<Self, StorageError> {
        Ok(Self {
            store,
            s3: None,
            store_url: store_url.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            url: url.to_owned(),
            io: Io::new()?,
        })
    }

    /// The store's URL as DataFusion registers it (`s3://BUCKET`), for the query engine's scans.
    pub fn store_url(&self) -> &str {
        &self.store_url
    }

    /// The prefix every key is under (empty: the bucket's root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A client of the store for the query engine, whose scans run on its own runtime: a new S3
    /// client (its connections belong to the runtime that uses them), or the store given.
    pub fn query_client(&self) -> Result<Arc<dyn ObjectStore>, StorageError> {
        match &self.s3 {
            Some(builder) => Ok(Arc::new(
                builder
                    .clone()
                    .build()
                    .map_err(|source| StorageError::Client { url: self.url.clone(), source: Box::new(source) })?,
            )),
            None => Ok(Arc::clone(&self.store)),
        }
    }

    /// Where `key` is within the store (the prefix and the key), as DataFusion's scans name files.
    pub fn location(&self, key: &str) -> String {
        self.path(key).to_string()
    }

    /// The URL this storage was opened with (for S3, without trailing slashes).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Reads `key` (a `/`-separated path under the prefix): its bytes and version, or `None` when
    /// it does not exist. Blocking.
    pub fn read(&self, key: &str) -> Result<Option<Versioned>, StorageError> {
        let (store, path) = (Arc::clone(&self.store), self.path(key));
        let got = self.io.run(async move {
            let got = match store.get(&path).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            let e_tag = got.meta.e_tag.clone();
            Ok(Some((got.bytes().await?, e_tag)))
        })?;
        match got.map_err(|source| self.request_error("reading", key, source))? {
            None => Ok(None),
            Some((bytes, Some(e_tag))) => Ok(Some(Versioned { bytes, version: Version(e_tag) })),
            Some((_, None)) => Err(StorageError::NoVersion { key: key.to_owned(), url: self.url.clone() }),
        }
    }

    /// Reads `key` unless it is still `since` (a version read before): the store answers "not
    /// modified" without sending the object again. Blocking.
    pub fn read_if_changed(&self, key: &str, since: Option<&Version>) -> Result<Changed, StorageError> {
        let Some(Version(e_tag)) = since else {
            return Ok(self.read(key)?.map_or(Changed::Gone, Changed::To));
        };
        let (store, path) = (Arc::clone(&self.store), self.path(key));
        let options = GetOptions { if_none_match: Some(e_tag.clone()), ..GetOptions::default() };
        let got = self.io.run(async move {
            let got = store.get_opts(&path, options).await?;
            let e_tag = got.meta.e_tag.clone();
            Ok((got.bytes().await?, e_tag))
        })?;
        match got {
            Ok((bytes, Some(e_tag))) => Ok(Changed::To(Versioned { bytes, version: Version(e_tag) })),
            Ok((_, None)) => Err(StorageError::NoVersion { key: key.to_owned(), url: self.url.clone() }),
            Err(object_store::Error::NotModified { .. }) => Ok(Changed::Not),
            Err(object_store::Error::NotFound { .. }) => Ok(Changed::Gone),
            Err(source) => Err(self.request_error("reading", key, source)),
        }
    }

    /// Writes `bytes` to `key` only if the object is still `expected` (`None`: only if it does not
    /// exist yet), and returns the version written. When another writer got there first the store
    /// refuses the write and this returns [`StorageError::Conflict`]: re-read and try again.
    /// Blocking.
    pub fn write_if(&self, key: &str, bytes: Vec<u8>, expected: Option<&Version>) -> Result<Version, StorageError> {
        let mode = match expected {
            None => PutMode::Create,
            Some(Version(e_tag)) => PutMode::Update(UpdateVersion { e_tag: Some(e_tag.clone()), version: None }),
        };
        let (store, path) = (Arc::clone(&self.store), self.path(key));
        let options = PutOptions { mode, ..PutOptions::default() };
        let written = self.io.run(async move { store.put_opts(&path, PutPayload::from(bytes), options).await })?;
        match written {
            Ok(written) => written
                .e_tag
                .map(Version)
                .ok_or_else(|| StorageError::NoVersion { key: key.to_owned(), url: self.url.clone() }),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Err(StorageError::Conflict { key: key.to_owned(), url: self.url.clone() })
            }
            Err(source) => Err(self.request_error("writing", key, source)),
        }
    }

    /// Writes `bytes` to `key`, over whatever is there (for objects one writer alone writes, such as
    /// its own status). Blocking.
    pub fn write(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        let (store, path) = (Arc::clone(&self.store), self.path(key));
        let written = self.io.run(async move { store.put(&path, PutPayload::from(bytes)).await })?;
        written.map(drop).map_err(|source| self.request_error("writing", key, source))
    }

    /// Uploads the local file `local` as `key`, in parts for a large one, so that memory stays
    /// bounded whatever the file's size. Blocking.
    pub fn upload(&self, local: &std::path::Path, key: &str) -> Result<(), StorageError> {
        use std::io::Read;
        let io_error = |e: std::io::Error| StorageError::Local { what: "reading", path: local.to_owned(), source: e };
        let mut file = std::fs::File::open(local).map_err(io_error)?;
        let mut writer = Some(BufWriter::with_capacity(Arc::clone(&self.store), self.path(key), UPLOAD_PART_BYTES));
        loop {
            let mut chunk = Vec::with_capacity(UPLOAD_PART_BYTES);
            (&mut file).take(UPLOAD_PART_BYTES as u64).read_to_end(&mut chunk).map_err(io_error)?;
            let last = chunk.len() < UPLOAD_PART_BYTES;
            let mut taken = writer.take().expect("a writer between parts");
            let (sent, result) = self.io.run(async move {
                let mut result = taken.put(Bytes::from(chunk)).await;
                if result.is_ok() && last {
                    result = taken
                        .shutdown()
                        .await
                        .map_err(|e| object_store::Error::Generic { store: "upload", source: Box::new(e) });
                }
                if result.is_err() {
                    let _ = taken.abort().await;
                }
                (taken, result)
            })?;
            result.map_err(|source| self.request_error("uploading", key, source))?;
            if last {
                return Ok(());
            }
            writer = Some(sent);
        }
    }

    /// Uploads the local file `local` as `key` unless an object is there already: one of the same
    /// size is taken for the same file ([`Uploaded::AlreadyThere`]), another is a
    /// [`StorageError::Conflict`]. A file of one part is written with put-if-absent; a larger one
    /// is checked first (a writer that stores the same key between the check and the upload is
    /// not caught). Blocking.
    pub fn upload_new(&self, local: &std::path::Path, key: &str) -> Result<Uploaded, StorageError> {
        let local_error = |e| StorageError::Local { what: "reading", path: local.to_owned(), source: e };
        let size = std::fs::metadata(local).map_err(local_error)?.len();
        if size < UPLOAD_PART_BYTES as u64 {
            let bytes = std::fs::read(local).map_err(local_error)?;
            return match self.write_if(key, bytes, None) {
                Ok(_) => Ok(Uploaded::Stored),
                Err(StorageError::Conflict { .. }) => self.existing(key, size),
                Err(e) => Err(e),
            };
        }
        let (store, path) = (Arc::clone(&self.store), self.path(key));
        match self.io.run(async move { store.head(&path).await })? {
            Ok(meta) => return self.found(key, meta.size, size),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => return Err(self.request_error("checking", key, source)),
        }
        self.upload(local, key).map(|()| Uploaded::Stored)
    }

    /// What an upload of `size` bytes to `key` found there: the same file (of an earlier attempt
    /// whose answer was lost, or written alike by another writer: files are named for what they
    /// hold), or another one, a [`StorageError::Conflict`].
    fn existing(&self, key: &str, size: u64) -> Result<Uploaded, StorageError> {
        let (store, path) = (Arc::clone(&self.store), self.path(key));
        match self.io.run(async move { store.head(&path).await })? {
            Ok(meta) => self.found(key, meta.size, size),
            Err(source) => Err(self.request_error("checking", key, source)),
        }
    }

    /// An object of `stored` bytes found at `key` where a file of `size` bytes was to go.
    fn found(&self, key: &str, stored: u64, size: u64) -> Result<Uploaded, StorageError> {
        match stored == size {
            true => Ok(Uploaded::AlreadyThere),
            false => Err(StorageError::Conflict { key: key.to_owned(), url: self.url.clone() }),
        }
    }

    /// Checks that the store can be used: the bucket is there, objects can be written, replaced
    /// and deleted, and it honours conditional writes (a second put-if-absent of one key, and a
    /// replacement of a version that is no longer the object's, are both refused), without which
    /// two writers could overwrite each other's manifest. Writes and deletes one small object
    /// under the prefix, named uniquely. Blocking.
    pub fn check(&self) -> Result<(), StorageError> {
        let key = format!(".hopscope-check-{}", uuid::Uuid::now_v7());
        let unusable = |reason: String| StorageError::Unusable { url: self.url.clone(), reason };
        let ignores = |header: &str| {
            unusable(format!(
                "it ignores conditional writes ({header}), which hopscope needs so that writers never overwrite \
                 each other's commits"
            ))
        };
        let first =
            self.write_if(&key, b"1".to_vec(), None).map_err(|e| unusable(format!("writing an object failed: {e}")))?;
        let checked = (|| {
            match self.write_if(&key, b"2".to_vec(), None) {
                Err(StorageError::Conflict { .. }) => {}
                Ok(_) => return Err(ignores("If-None-Match")),
                Err(e) => return Err(unusable(format!("a conditional write failed: {e}"))),
            }
            let second = self
                .write_if(&key, b"3".to_vec(), Some(&first))
                .map_err(|e| unusable(format!("replacing an object with If-Match failed: {e}")))?;
            match self.write_if(&key, b"4".to_vec(), Some(&first)) {
                Err(StorageError::Conflict { .. }) => {}
                Ok(_) => return Err(ignores("If-Match")),
                Err(e) => return Err(unusable(format!("a conditional write failed: {e}"))),
            }
            match self.read(&key) {
                Ok(Some(read)) if read.version == second && &read.bytes[..] == b"3" => Ok(()),
                Ok(_) => Err(ignores("If-Match")),
                Err(e) => Err(unusable(format!("reading an object back failed: {e}"))),
            }
        })();
        let deleted = self.delete(&key).map_err(|e| unusable(format!("deleting an object failed: {e}")));
        checked.and(deleted)
    }

    /// Checks that the store can be read, for a process that only reads it (a querier): the bucket
    /// is there and the credentials may list and read it. Lists a prefix no one writes (a read of a
    /// missing key would not tell a missing bucket from a missing key: both are 404s). Blocking.
    pub fn check_readable(&self) -> Result<(), StorageError> {
        match self.list_dirs(&format!(".hopscope-check-{}", uuid::Uuid::now_v7())) {
            Ok(_) => Ok(()),
            Err(e) => Err(StorageError::Unusable { url: self.url.clone(), reason: format!("listing failed: {e}") }),
        }
    }

    /// The names of the "directories" right under `prefix` (a `/`-separated path under the
    /// storage's prefix; empty: its top), sorted: the tenants, at the top. Blocking.
    pub fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let (store, path) = (Arc::clone(&self.store), self.path(prefix));
        let listed = self.io.run(async move { store.list_with_delimiter(Some(&path)).await })?;
        let listed = listed.map_err(|source| self.request_error("listing", prefix, source))?;
        let mut dirs: Vec<String> =
            listed.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_owned)).collect();
        dirs.sort();
        Ok(dirs)
    }

    /// Downloads `key` to the local file `local` (through a synced temporary file renamed into
    /// place), streaming it. Blocking.
    pub fn download(&self, key: &str, local: &std::path::Path) -> Result<(), StorageError> {
        let local_error = |what, e| StorageError::Local { what, path: local.to_owned(), source: e };
        if let Some(dir) = local.parent() {
            std::fs::create_dir_all(dir).map_err(|e| local_error("creating the directory of", e))?;
        }
        // Named as every file being written is, so that the sweep at open removes one a crash left.
        let mut tmp = local.as_os_str().to_owned();
        tmp.push(hopscope_schemas::layout::TMP_SUFFIX);
        let tmp = std::path::PathBuf::from(tmp);
        let (store, path, into) = (Arc::clone(&self.store), self.path(key), tmp.clone());
        let fetched = self.io.run(async move {
            use futures::StreamExt;
            let mut stream = match store.get(&path).await {
                Ok(got) => got.into_stream(),
                Err(e) => return Err(Err(e)),
            };
            let mut file = tokio::fs::File::create(&into).await.map_err(Ok)?;
            while let Some(chunk) = stream.next().await {
                file.write_all(&chunk.map_err(Err)?).await.map_err(Ok)?;
            }
            file.sync_all().await.map_err(Ok)
        })?;
        let failed = match fetched {
            Ok(()) => None,
            Err(Ok(e)) => Some(local_error("writing", e)),
            Err(Err(source)) => Some(self.request_error("downloading", key, source)),
        };
        if let Some(failed) = failed {
            let _ = std::fs::remove_file(&tmp);
            return Err(failed);
        }
        std::fs::rename(&tmp, local).map_err(|e| local_error("renaming a download into", e))
    }

    /// Every key under `prefix` (a `/`-separated path under the storage's prefix), with its size
    /// in bytes, sorted. Blocking.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StorageError> {
        use futures::TryStreamExt;
        let (store, path) = (Arc::clone(&self.store), self.path(prefix));
        let listed = self.io.run(async move { store.list(Some(&path)).try_collect::<Vec<_>>().await })?;
        let listed = listed.map_err(|source| self.request_error("listing", prefix, source))?;
        let own = |location: &str| match self.prefix.is_empty() {
            true => location.to_owned(),
            false => location.strip_prefix(&format!("{}/", self.prefix)).unwrap_or(location).to_owned(),
        };
        let mut keys: Vec<(String, u64)> = listed.iter().map(|m| (own(m.location.as_ref()), m.size)).collect();
        keys.sort();
        Ok(keys)
    }

    /// Deletes `key`; one already gone is not an error. Blocking.
    pub fn delete(&self, key: &str) -> Result<(), StorageError> {
        let (store, path) = (Arc::clone(&self.store), self.path(key));
        match self.io.run(async move { store.delete(&path).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(self.request_error("deleting", key, source)),
        }
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() { Path::from(key) } else { Path::from(format!("{}/{key}", self.prefix)) }
    }

    fn request_error(&self, what: &'static str, key: &str, source: object_store::Error) -> StorageError {
        StorageError::Request { what, key: key.to_owned(), url: self.url.clone(), source: Box::new(source) }
    }
}

/// Splits `s3://BUCKET/PREFIX` into its bucket and prefix (possibly empty).
fn parse_s3_url(url: &str) -> Result<(&str, &str), StorageError> {
    let invalid = |reason: &str| StorageError::InvalidUrl { url: url.to_owned(), reason: reason.to_owned() };
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err(invalid("expected s3://BUCKET/PREFIX (an S3-compatible object store)"));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(invalid("no bucket name after s3://"));
    }
    // S3's rules for bucket names: 3 to 63 lower-case letters, digits, dots and hyphens, starting
    // and ending with a letter or digit.
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&bucket.len())
        || !bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        || !edge_ok(bucket.chars().next())
        || !edge_ok(bucket.chars().last())
    {
        return Err(invalid(&format!(
            "{bucket:?} is not a bucket name: 3 to 63 lower-case letters, digits, dots and hyphens, \
             starting and ending with a letter or digit"
        )));
    }
    if prefix.split('/').filter(|s| !s.is_empty()).any(|s| s == "." || s == "..") {
        return Err(invalid("the prefix may not contain . or .. segments"));
    }
    // Characters that need no escaping in a key, so that a file's key reads the same to every client.
    if let Some(c) = prefix.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'))) {
        return Err(invalid(&format!("the prefix may hold letters, digits, '/', '-', '_' and '.' only, not {c:?}")));
    }
    Ok((bucket, prefix))
}

/// The storage's own runtime: one worker thread that runs the store's requests while a blocking
/// caller waits for them.
struct Io(Option<tokio::runtime::Runtime>);

impl Io {
    fn new() -> Result<Self, StorageError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hopscope-storage")
            .enable_all()
            .build()
            .map_err(|e| StorageError::Runtime(format!("starting: {e}")))?;
        Ok(Self(Some(runtime)))
    }

    /// Runs `task` on the storage's runtime and waits for it. Blocks the calling thread.
    fn run<F>(&self, task: F) -> Result<F::Output, StorageError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self.0.as_ref().ok_or_else(|| StorageError::Runtime("already stopped".into()))?;
        futures::executor::block_on(runtime.spawn(task)).map_err(|e| StorageError::Runtime(e.to_string()))
    }
}

impl Drop for Io {
    /// Stops the runtime without waiting: dropping a runtime waits for its threads, which an async
    /// caller may not do.
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[test]
    fn s3_urls_are_checked_with_a_reason() {
        assert_eq!(parse_s3_url("s3://traces").unwrap(), ("traces", ""));
        assert_eq!(parse_s3_url("s3://traces/team-a/hopscope").unwrap(), ("traces", "team-a/hopscope"));
        for (url, says) in [
            ("/var/lib/hopscope", "expected s3://BUCKET/PREFIX"),
            ("gs://traces", "expected s3://BUCKET/PREFIX"),
            ("s3://", "no bucket name"),
            ("s3:///prefix", "no bucket name"),
            ("s3://Traces", "not a bucket name"),
            ("s3://ab", "not a bucket name"),
            ("s3://-traces", "not a bucket name"),
            ("s3://traces/a/../b", ". or .."),
            ("s3://traces/team a", "not ' '"),
            ("s3://traces/50%", "not '%'"),
        ] {
            let message = parse_s3_url(url).unwrap_err().to_string();
            assert!(message.contains(says), "{url}: {message}");
        }
    }

    #[test]
    fn an_unknown_option_is_named() {
        let message = ObjectStorage::open_s3("s3://traces", &[("aws_endpoint_ur", "http://127.0.0.1:1")])
            .unwrap_err()
            .to_string();
        assert!(message.contains("aws_endpoint_ur"), "{message}");
    }

    #[test]
    fn a_write_wins_only_over_the_version_its_writer_read() {
        let storage = ObjectStorage::new(Arc::new(InMemory::new()), "memory://", "/prefix/", "memory://test").unwrap();
        assert!(storage.read("t/manifest.json").unwrap().is_none());
        let first = storage.write_if("t/manifest.json", b"1".to_vec(), None).unwrap();
        // Created only once: a second writer that also saw nothing loses.
        assert!(matches!(
            storage.write_if("t/manifest.json", b"other 1".to_vec(), None),
            Err(StorageError::Conflict { .. })
        ));
        let second = storage.write_if("t/manifest.json", b"2".to_vec(), Some(&first)).unwrap();
        assert_ne!(first, second);
        // A writer still holding the first version loses, and the object keeps the winner's bytes.
        let stale = storage.write_if("t/manifest.json", b"stale 2".to_vec(), Some(&first)).unwrap_err();
        assert!(stale.to_string().contains("another writer committed first"), "{stale}");
        let read = storage.read("t/manifest.json").unwrap().unwrap();
        assert_eq!((&read.bytes[..], &read.version), (&b"2"[..], &second));
        // A reader holding the current version is told nothing changed; holding an older one,
        // it gets the current bytes; once the object is gone, that.
        assert!(matches!(storage.read_if_changed("t/manifest.json", Some(&second)).unwrap(), Changed::Not));
        match storage.read_if_changed("t/manifest.json", Some(&first)).unwrap() {
            Changed::To(read) => assert_eq!((&read.bytes[..], &read.version), (&b"2"[..], &second)),
            other => panic!("expected the second version, got {other:?}"),
        }
        assert!(matches!(storage.read_if_changed("t/manifest.json", None).unwrap(), Changed::To(_)));
        storage.delete("t/manifest.json").unwrap();
        assert!(matches!(storage.read_if_changed("t/manifest.json", Some(&second)).unwrap(), Changed::Gone));
        assert!(matches!(storage.read_if_changed("t/manifest.json", None).unwrap(), Changed::Gone));
    }

    #[test]
    fn files_go_up_in_parts_and_come_back_whole() {
        let storage = ObjectStorage::new(Arc::new(InMemory::new()), "memory://", "p", "memory://test").unwrap();
        let dir = std::env::temp_dir().join(format!("hopscope-storage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Two whole parts and a bit: the upload takes three requests, the download one stream.
        let bytes: Vec<u8> = (0..2 * UPLOAD_PART_BYTES + 5).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.join("up.parquet"), &bytes).unwrap();
        storage.upload(&dir.join("up.parquet"), "t/spans/a.parquet").unwrap();
        storage.download("t/spans/a.parquet", &dir.join("deeper/down.parquet")).unwrap();
        assert!(std::fs::read(dir.join("deeper/down.parquet")).unwrap() == bytes);
        assert_eq!(storage.location("t/spans/a.parquet"), "p/t/spans/a.parquet");
        // A file smaller than a part, and an empty one.
        for size in [10, 0] {
            std::fs::write(dir.join("small"), &bytes[..size]).unwrap();
            storage.upload(&dir.join("small"), "t/small").unwrap();
            assert_eq!(&storage.read("t/small").unwrap().unwrap().bytes[..], &bytes[..size]);
        }
        assert_eq!(
            storage.list("t").unwrap(),
            [("t/small".to_owned(), 0), ("t/spans/a.parquet".to_owned(), bytes.len() as u64)]
        );
        // A new file goes up once: a second writer storing the same key is told.
        for (name, size) in [("one part", 10), ("three parts", bytes.len())] {
            std::fs::write(dir.join("new"), &bytes[..size]).unwrap();
            assert_eq!(storage.upload_new(&dir.join("new"), name).unwrap(), Uploaded::Stored);
            // Uploaded again (an answer lost): the same file is there.
            assert_eq!(storage.upload_new(&dir.join("new"), name).unwrap(), Uploaded::AlreadyThere);
            // Another file by that name is not overwritten.
            std::fs::write(dir.join("other"), &bytes[..size - 1]).unwrap();
            let other = storage.upload_new(&dir.join("other"), name).unwrap_err();
            assert!(matches!(other, StorageError::Conflict { .. }), "{name}: {other}");
            assert_eq!(storage.read(name).unwrap().unwrap().bytes.len(), size);
            storage.delete(name).unwrap();
        }
        // A store that honours conditional writes passes the check, and keeps nothing of it.
        storage.check().unwrap();
        storage.check_readable().unwrap();
        assert_eq!(storage.list_dirs("").unwrap(), ["t"]);
        assert_eq!(storage.list_dirs("t").unwrap(), ["spans"]);
        assert_eq!(storage.list("").unwrap().len(), 2, "t/small and t/spans/a.parquet");
        storage.delete("t/spans/a.parquet").unwrap();
        storage.delete("t/spans/a.parquet").unwrap();
        assert!(storage.read("t/spans/a.parquet").unwrap().is_none());
        let missing = storage.download("t/spans/a.parquet", &dir.join("never")).unwrap_err().to_string();
        assert!(missing.contains("downloading t/spans/a.parquet"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
