//! Durability in one place: atomic file replacement and directory fsyncs.
//!
//! tantivy makes its own files durable; this module covers the files and directories
//! Weir adds around it (the shard checkpoint, partition directories), through weir-wal's
//! `durable` module, the one place that knows how.

use std::path::Path;

use crate::{Error, Result};

/// Replaces `path` with `bytes` atomically and durably (weir-wal's `atomic_write`: write
/// a temporary file, fsync it, rename it over `path`, fsync the directory). A crash leaves
/// either the old or the new content, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    weir_wal::durable::atomic_write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Fsyncs a directory.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    weir_wal::durable::fsync_dir(dir).map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file is left"
        );
    }
}
