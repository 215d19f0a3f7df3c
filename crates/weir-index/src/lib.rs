//! Committed log entries into tantivy and the label index; the query language; search.
//!
//! Each shard of a node has one [`ShardIndex`]. The indexer loop feeds it the shard's
//! committed raft entries (each a prost-encoded [`StoredBatch`]) in log order, commits every
//! ~250 ms, and after a restart replays from [`ShardIndex::checkpoint`]` + 1`. The HTTP
//! layer parses a query with [`parse_query`], runs it on every shard's index with
//! [`ShardIndex::search`], and merges the per-shard pages with [`merge`].
//!
//! Inside a shard the index is split by record time into *partitions*, one tantivy index
//! each, covering `[start, start + partition_span_secs)`. A search opens only the
//! partitions its time range overlaps; retention deletes whole partitions.
//!
//! ```
//! use weir_index::{merge, parse_query, IndexOptions, SearchRequest, ShardIndex, Sort};
//! use weir_proto::v1::{StoredBatch, StoredRecord};
//! use weir_proto::ShardId;
//!
//! # fn main() -> weir_index::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! // 1. Open (or create) the shard's index; it knows how far it got.
//! let index = ShardIndex::open(dir.path(), ShardId(0), IndexOptions::default())?;
//! assert_eq!(index.checkpoint(), 0);
//! // 2. Feed committed entries in log order, then commit: durable and searchable.
//! let batch = StoredBatch {
//!     tenant: "default".into(),
//!     records: vec![StoredRecord {
//!         timestamp_ns: 1_700_000_000_000_000_000,
//!         level: 5,
//!         body: "connection reset by peer".into(),
//!         service: "api".into(),
//!         ..Default::default()
//!     }],
//!     received_ns: 0,
//! };
//! index.add_batch(1, &batch)?;
//! index.commit()?;
//! assert_eq!(index.checkpoint(), 1);
//! // 3. Search every shard and merge the pages.
//! let req = SearchRequest {
//!     query: parse_query("service:api \"connection reset\"")?,
//!     tenant: "default".into(),
//!     start_ns: 0,
//!     end_ns: i64::MAX,
//!     levels: vec![],
//!     limit: 10,
//!     sort: Sort::TimeDesc,
//!     after: None,
//!     prefilter: false,
//! };
//! let shard_hits = index.search(&req)?;
//! let (hits, total, next) = merge(vec![shard_hits], req.sort, req.limit, req.after.as_ref());
//! assert_eq!((hits.len(), total, next), (1, 1, None));
//! # Ok(())
//! # }
//! ```

mod advised;
mod collect;
mod count;
mod durable;
mod exclude;
pub mod head;
mod idkey;
mod infix;
mod page;
mod query;
mod rarewords;
mod schema;
mod shard;

use std::path::PathBuf;

pub use count::{
    merge_counts, CountRequest, GroupCounts, LabelFilter, LabelSource, ValuePredicate,
};
pub use head::{HeadBatch, HeadEntry, RecordMatcher};
pub use infix::{BodyWords, InfixCache, Warmed, DEFAULT_INFIX_CACHE_BYTES};
pub use page::{merge, Cursor, Hit, HitKey, ShardHits, Sort};
pub use query::{
    parse_query, Match, Pattern, Query, QueryError, BODY_FIELD, EXACT_FIELDS, MAX_NESTING,
};
pub use schema::complete_body_tokens;
pub use shard::{
    DocStore, IndexOptions, SearchRequest, ShardIndex, ShardTop, DEFAULT_MERGE_FAN_IN, MAX_LIMIT,
};
pub use weir_proto::v1::{StoredBatch, StoredRecord};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// tantivy failed (I/O inside the index, a lock, a corrupt segment).
    #[error("tantivy: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    /// A file or directory operation of our own failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The query does not parse.
    #[error("invalid query: {0}")]
    Query(#[from] QueryError),
    /// The paging cursor is malformed or belongs to another sort order.
    #[error("invalid cursor: {0}")]
    BadCursor(String),
    /// A file of the index does not hold what it must; the index directory needs repair
    /// (or deleting: it is rebuilt from the log).
    #[error("corrupt index file {path}: {reason}")]
    Corrupt {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The directory holds another shard's index.
    #[error("index directory {path} belongs to shard {found}, not shard {expected}")]
    WrongShard {
        /// The directory.
        path: PathBuf,
        /// The shard it was opened for.
        expected: u32,
        /// The shard recorded in it.
        found: u32,
    },
    /// [`ShardIndex::add_batch`] got a log index at or below one it already took in this
    /// session (and above the durable checkpoint): the caller skipped or reordered entries.
    #[error("log index {log_index} is not after the last indexed entry {last}; entries must arrive in log order")]
    OutOfOrder {
        /// What was passed.
        log_index: u64,
        /// The last log index taken.
        last: u64,
    },
    /// An earlier write-side failure left pending documents in an unknown state. Reopen
    /// the index: it replays from its durable checkpoint.
    #[error("index of {shard} failed earlier and refuses writes; reopen it to replay from the checkpoint")]
    Poisoned {
        /// The shard.
        shard: weir_proto::ShardId,
    },
    /// The index was closed ([`ShardIndex::close`]): its node is shutting down.
    #[error("index of {shard} is closed")]
    Closed {
        /// The shard.
        shard: weir_proto::ShardId,
    },
    /// A request argument is out of range (an empty time range, a zero limit, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether the caller's request was wrong (HTTP 400), as opposed to a server failure.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Error::Query(_) | Error::BadCursor(_) | Error::InvalidArgument(_)
        )
    }
}
