//! How a partition's files are mapped with `index.random_access_maps` on (off by
//! default, `IndexOptions::random_access_maps` says why): for random access, except the
//! columns.
//!
//! tantivy maps every file of an index. A search reads term dictionaries, postings,
//! positions and stored blocks a few pages at a time, all over the files, and with the
//! kernel's default advice every page missed from the page cache reads the device's
//! read-ahead window around it: 8 MiB on some VMs, so that the first needle lookup after a
//! restart read hundreds of MB (benches/RESULTS.md, cold lookups). Those files are mapped
//! with `MADV_RANDOM` (only the pages touched are read). The columns (`.fast`: timestamps,
//! log indexes; `.fieldnorm`) are small, and counts and histograms scan them whole, so
//! they keep the default advice and its read-ahead.

use std::io;
use std::path::Path;
use std::sync::Arc;

use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    Advice, Directory, DirectoryLock, FileHandle, Lock, MmapDirectory, WatchCallback, WatchHandle,
    WritePtr,
};

/// A partition directory: `random` maps the files searched by lookups, `scanned` the
/// columns. Everything but mapping goes through `random`.
#[derive(Clone, Debug)]
pub(crate) struct AdvisedDirectory {
    random: MmapDirectory,
    scanned: MmapDirectory,
}

impl AdvisedDirectory {
    /// The directory at `path`.
    pub fn open(path: &Path) -> tantivy::Result<AdvisedDirectory> {
        Ok(AdvisedDirectory {
            random: MmapDirectory::open_with_madvice(path, Advice::Random)?,
            scanned: MmapDirectory::open(path)?,
        })
    }
}

/// Whether a file of a segment is a column, read whole by counts.
fn scanned(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("fast" | "fieldnorm")
    )
}

impl Directory for AdvisedDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        if scanned(path) {
            self.scanned.get_file_handle(path)
        } else {
            self.random.get_file_handle(path)
        }
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        self.random.delete(path)
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        self.random.exists(path)
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        self.random.open_write(path)
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        self.random.atomic_read(path)
    }

    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.random.atomic_write(path, data)
    }

    fn sync_directory(&self) -> io::Result<()> {
        self.random.sync_directory()
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        self.random.acquire_lock(lock)
    }

    fn watch(&self, watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.random.watch(watch_callback)
    }
}
