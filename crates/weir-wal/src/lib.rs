//! Per-shard write-ahead log segments. (Being written: see the helper's task.)

/// Errors of the WAL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// I/O failed.
    #[error("wal i/o on {path}: {source}")]
    Io {
        /// file
        path: std::path::PathBuf,
        /// cause
        source: std::io::Error,
    },
}
