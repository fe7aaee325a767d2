//! Temporary directories for the unit tests (the process tests have their own in
//! `tests/api_support`).

use std::path::{Path, PathBuf};

/// A fresh directory under the system's temporary directory, removed when dropped (also when
/// the test fails).
pub struct TempDir(pub PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `ballot-<name>-<pid>-<nanoseconds>`, created.
pub fn temp_dir(name: &str) -> TempDir {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let dir = std::env::temp_dir().join(format!("ballot-{name}-{}-{nanos:x}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    TempDir(dir)
}
