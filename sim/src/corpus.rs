//! A corpus of pre-encoded OTLP export requests: what `hopscope simulate --output` writes and
//! `hopscope load` replays, so that ingest is measured on the same bytes every run, without the
//! generator's cost in the measurement.
//!
//! ```text
//! "HSCORPUS" | version u32 LE (1) | record*
//! record: spans u32 LE | length u32 LE | protobuf ExportTraceServiceRequest (length bytes)
//! ```

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::SimError;

const MAGIC: &[u8; 8] = b"HSCORPUS";
const VERSION: u32 = 1;

/// Writes a corpus, one request at a time.
pub(crate) struct CorpusWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl CorpusWriter {
    pub(crate) fn create(path: &Path) -> Result<Self, SimError> {
        let file = File::create(path).map_err(SimError::io(format!("creating {}", path.display())))?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        file.write_all(MAGIC)
            .and_then(|()| file.write_all(&VERSION.to_le_bytes()))
            .map_err(SimError::io(format!("writing {}", path.display())))?;
        Ok(Self { path: path.to_owned(), file })
    }

    /// Appends one encoded request holding `spans` spans.
    pub(crate) fn append(&mut self, spans: usize, body: &[u8]) -> Result<(), SimError> {
        let too_large = |_| {
            SimError::Invalid(format!("a request of {spans} spans, {} bytes, is too large for a corpus", body.len()))
        };
        let (spans, len) = (u32::try_from(spans).map_err(too_large)?, u32::try_from(body.len()).map_err(too_large)?);
        self.file
            .write_all(&spans.to_le_bytes())
            .and_then(|()| self.file.write_all(&len.to_le_bytes()))
            .and_then(|()| self.file.write_all(body))
            .map_err(SimError::io(format!("writing {}", self.path.display())))
    }

    /// Flushes and syncs the file.
    pub(crate) fn finish(self) -> Result<(), SimError> {
        let path = self.path;
        let file =
            self.file.into_inner().map_err(|e| SimError::io(format!("writing {}", path.display()))(e.into_error()))?;
        file.sync_all().map_err(SimError::io(format!("syncing {}", path.display())))
    }
}

/// One request of a corpus.
pub(crate) struct Request {
    pub(crate) spans: u32,
    pub(crate) body: Bytes,
}

/// Reads a whole corpus into memory.
pub(crate) fn read(path: &Path) -> Result<Vec<Request>, SimError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(SimError::io(format!("reading {}", path.display())))?;
    let bytes = Bytes::from(bytes);
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(SimError::Invalid(format!(
            "{} is not a hopscope corpus (write one with `hopscope simulate --output FILE`)",
            path.display()
        )));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(SimError::Invalid(format!(
            "{} is a version {version} corpus; this hopscope reads version {VERSION}",
            path.display()
        )));
    }
    let mut requests = Vec::new();
    let mut at = 12;
    while at < bytes.len() {
        if bytes.len() - at < 8 {
            return Err(SimError::Invalid(format!("{} ends inside a record header at byte {at}", path.display())));
        }
        let spans = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        at += 8;
        if bytes.len() - at < len {
            return Err(SimError::Invalid(format!(
                "{} ends inside a request at byte {at} ({len} bytes announced)",
                path.display()
            )));
        }
        requests.push(Request { spans, body: bytes.slice(at..at + len) });
        at += len;
    }
    Ok(requests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_damage_is_named() {
        let path = std::env::temp_dir().join(format!("hopscope-corpus-{}", std::process::id()));
        let mut writer = CorpusWriter::create(&path).unwrap();
        writer.append(3, b"first").unwrap();
        writer.append(1, b"").unwrap();
        writer.append(7, b"third request").unwrap();
        writer.finish().unwrap();
        let read_back: Vec<(u32, Vec<u8>)> =
            read(&path).unwrap().into_iter().map(|r| (r.spans, r.body.to_vec())).collect();
        assert_eq!(read_back, [(3, b"first".to_vec()), (1, Vec::new()), (7, b"third request".to_vec())]);

        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() - 2]).unwrap();
        let error = read(&path).err().unwrap().to_string();
        assert!(error.contains("ends inside a request"), "{error}");
        std::fs::write(&path, b"something else entirely").unwrap();
        assert!(read(&path).err().unwrap().to_string().contains("not a hopscope corpus"));
        std::fs::remove_file(path).unwrap();
    }
}
