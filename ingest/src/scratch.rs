//! A scratch directory for unit tests: created empty, removed when dropped, so a failing test
//! leaves nothing behind in the system's temporary directory either.

use std::path::{Path, PathBuf};

pub(crate) struct ScratchDir(PathBuf);

impl ScratchDir {
    /// A new, empty directory named for `what` (and unique).
    pub(crate) fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hopscope-{what}-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        Self(dir)
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
