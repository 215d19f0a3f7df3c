//! Per-shard write-ahead log: bytes in, bytes out.
//!
//! A [`Wal`] is one shard's log of opaque entries addressed by a dense `u64`
//! index, plus a small "meta" blob made durable together with the entries.
//! It knows nothing of raft or of log records. Entries live in preallocated
//! segment files (`<seq:020>.seg`), each entry one frame with a length, a
//! crc32 and an lz4-compressed payload when that pays off (format:
//! `docs/wal-format.md`). Durable entries are read back through memory maps
//! by any number of [`WalReader`]s while the single writer keeps appending.
//!
//! Writes go through one node-wide [`IoThread`] (io_uring where the kernel
//! and the container allow it, a small pool doing `pwrite` + `fdatasync`
//! otherwise). [`Wal::flush`] hands everything staged to it and returns a
//! [`SyncTicket`] at once, so several shards flush concurrently: that is the
//! group commit across shards.
//!
//! On [`Wal::open`], a torn tail (a crash during an unacknowledged write) is
//! truncated at the last valid frame; a bad frame followed by data written
//! after it had been synced is a hole, reported as [`Error::Corrupt`], and
//! the log refuses to open.
//!
//! # Example
//!
//! ```
//! use weir_wal::{IoBackendChoice, IoThread, Wal, WalOptions};
//!
//! # fn main() -> weir_wal::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! // 1. One I/O thread per node, shared by every shard's log.
//! let io = IoThread::start(IoBackendChoice::Auto)?;
//! // 2. Open (or recover) one shard's log.
//! let mut wal = Wal::open(dir.path(), WalOptions::default(), io.clone())?;
//! // 3. Stage entries and the meta blob, then make them durable.
//! wal.append(1, b"first entry")?;
//! wal.append(2, b"second entry")?;
//! wal.set_meta(b"term=1 vote=2 commit=1")?;
//! wal.flush()?.wait()?;
//! // 4. Read durable entries from any thread.
//! let reader = wal.reader();
//! assert_eq!(reader.read(2)?, b"second entry");
//! assert_eq!(reader.durable_last_index(), Some(2));
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub mod durable;
pub mod format;
mod index;
mod io;
mod recovery;
mod wal;

pub use io::{detect_backend, IoThread, SyncTicket};
#[cfg(feature = "testing")]
pub use wal::FaultInjector;
pub use wal::{Wal, WalReader};

/// Errors of the WAL. Messages are lowercase and name the file and offset
/// when there is one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed.
    #[error("wal i/o error on {path}: {source}")]
    Io {
        /// File or directory the operation was on.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The disk (or quota) is full. Nothing acknowledged is lost; what was
    /// staged stays staged and the next flush retries it.
    #[error("wal disk full writing {path}: free some space; the next flush retries")]
    DiskFull {
        /// File being written or created.
        path: PathBuf,
    },
    /// The log on disk is inconsistent (a bad frame followed by valid data
    /// written later, a bad segment header, a gap in the indexes). The node
    /// must not serve this log: inspect or repair it.
    #[error("wal corrupt at {path} offset {offset}: {reason}")]
    Corrupt {
        /// Segment file.
        path: PathBuf,
        /// Byte offset in the file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The index is not in `[first_index, durable_last_index]`.
    #[error("wal entry {index} not found")]
    NotFound {
        /// The index asked for.
        index: u64,
    },
    /// An append would leave a gap (or go below the first index).
    #[error("wal append out of order: expected index {expected} (or a lower one to truncate), got {got}")]
    OutOfOrder {
        /// The next index the log accepts.
        expected: u64,
        /// The index given.
        got: u64,
    },
    /// A payload or meta blob is larger than the format allows.
    #[error("wal {what} of {len} bytes is larger than the maximum {max}")]
    TooLarge {
        /// "entry" or "meta".
        what: &'static str,
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The io_uring backend was asked for but cannot run here.
    #[error("io_uring unavailable: {0}; use io backend \"std\" (or \"auto\")")]
    UringUnavailable(String),
    /// The I/O thread is gone (shut down or panicked).
    #[error("wal i/o thread is gone")]
    Closed,
}

impl Error {
    /// Maps an I/O error on `path`, giving `ENOSPC`/`EDQUOT` its own variant.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        let path = path.into();
        if durable::is_disk_full(&source) {
            Error::DiskFull { path }
        } else {
            Error::Io { path, source }
        }
    }

    /// A copy of the error, for reporting one failure to several waiters.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Io { path, source } => Error::Io {
                path: path.clone(),
                source: match source.raw_os_error() {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::new(source.kind(), source.to_string()),
                },
            },
            Error::DiskFull { path } => Error::DiskFull { path: path.clone() },
            Error::Corrupt {
                path,
                offset,
                reason,
            } => Error::Corrupt {
                path: path.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            Error::NotFound { index } => Error::NotFound { index: *index },
            Error::OutOfOrder { expected, got } => Error::OutOfOrder {
                expected: *expected,
                got: *got,
            },
            Error::TooLarge { what, len, max } => Error::TooLarge {
                what,
                len: *len,
                max: *max,
            },
            Error::UringUnavailable(s) => Error::UringUnavailable(s.clone()),
            Error::Closed => Error::Closed,
        }
    }
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Size of a log's first segment (see [`WalOptions::segment_size_bytes`]).
pub const FIRST_SEGMENT_BYTES: u64 = 1 << 20;

/// Options of one [`Wal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// Largest size of a segment file, preallocated when it is created; the
    /// log rolls to a new segment when the next frame does not fit. A frame
    /// larger than this gets a segment of its own. Default 64 MiB.
    ///
    /// Segments grow to it: a log's first segment is [`FIRST_SEGMENT_BYTES`]
    /// (or this, if smaller) and each next one twice the one before, so that
    /// a small or idle log takes a few MiB of disk, not a full segment per
    /// shard.
    pub segment_size_bytes: u64,
    /// Payloads of at least this many bytes are lz4-compressed (kept raw when
    /// that does not make them smaller). Default 512.
    pub compress_min_bytes: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size_bytes: 64 << 20,
            compress_min_bytes: 512,
        }
    }
}

/// The I/O backend an [`IoThread`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoBackend {
    /// A small thread pool doing `pwrite` + `fdatasync`.
    Std,
    /// One thread running a tokio-uring runtime (`write_at` + `sync_data`).
    Uring,
}

impl fmt::Display for IoBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoBackend::Std => "std",
            IoBackend::Uring => "uring",
        })
    }
}

impl FromStr for IoBackend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "std" => Ok(IoBackend::Std),
            "uring" => Ok(IoBackend::Uring),
            other => Err(format!(
                "unknown io backend {other:?}: expected \"std\" or \"uring\""
            )),
        }
    }
}

/// The configured choice of backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IoBackendChoice {
    /// The preferred backend when it works here ([`AUTO_PREFERS`]), else the
    /// other one.
    #[default]
    Auto,
    /// Always [`IoBackend::Std`].
    Std,
    /// [`IoBackend::Uring`], or an error at start when it is unavailable.
    Uring,
}

/// What [`IoBackendChoice::Auto`] picks when io_uring is available. Chosen
/// from the `wal` benchmark (see `docs/wal-format.md`, "I/O backends"): the
/// std pool was as fast or faster than io_uring for every batch size and for
/// the 4-shard group commit on the reference machine.
pub const AUTO_PREFERS: IoBackend = IoBackend::Std;

impl fmt::Display for IoBackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoBackendChoice::Auto => "auto",
            IoBackendChoice::Std => "std",
            IoBackendChoice::Uring => "uring",
        })
    }
}

impl FromStr for IoBackendChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(IoBackendChoice::Auto),
            "std" => Ok(IoBackendChoice::Std),
            "uring" => Ok(IoBackendChoice::Uring),
            other => Err(format!(
                "unknown io backend {other:?}: expected \"auto\", \"std\" or \"uring\""
            )),
        }
    }
}
