//! A temporary directory for a test's files (a collector's spool, its configuration),
//! removed when the test ends.

use std::path::{Path, PathBuf};

/// A fresh directory under the system's temporary directory, removed (with what it holds)
/// when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a directory named `prefix` and a random suffix.
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(crate::unique_name(prefix));
        std::fs::create_dir_all(&path).expect("a temporary directory");
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
