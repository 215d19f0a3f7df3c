//! One raft-rs group per shard over weir-wal; the Ready loop; the [`CommittedLog`] interface.
//!
//! Everything outside this crate sees the replicated log only through [`CommittedLog`]:
//! a commit watermark and a way to read committed payloads. `raft` and its `eraftpb` types
//! never leak out of this crate.
//!
//! ```no_run
//! use weir_raft::{CommittedLog, NodeConfig, RaftNode};
//! # async fn demo() -> weir_raft::Result<()> {
//! // 1. Open every shard's WAL (recovering it) and start the driver thread.
//! let node = RaftNode::start(NodeConfig::single("/tmp/weir-demo"))?;
//! // 2. Propose a payload to shard 0; the future resolves once it is durable.
//! let committed = node.propose(0, None, b"payload".to_vec())?.await.expect("driver alive")?;
//! // 3. Consumers read the committed log without touching raft.
//! let log = node.committed_log(0);
//! let entries = log.read(committed.index, log.watermark(), 1 << 20)?;
//! assert_eq!(entries[0].data, b"payload");
//! node.shutdown();
//! # Ok(()) }
//! ```

use std::time::Duration;

mod codec;
mod dedup;
mod internals;
mod node;
#[cfg(feature = "testing")]
pub mod sim;
pub mod snapshot;
mod storage;

pub use codec::{DedupKey, CURSOR_NAME_BYTES_MAX};
pub use dedup::{DedupTable, Seen, WINDOW as DEDUP_WINDOW};
pub use node::{
    Committed, Health, NodeConfig, Outbox, Proposal, RaftNode, RejoinTarget, ShardLog, ShardStatus,
};
pub use snapshot::{SnapshotOffer, SnapshotRequest, Snapshots};
pub use weir_wal::{IoBackend, IoBackendChoice, WalOptions};

/// Errors of the raft layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The WAL below failed.
    #[error(transparent)]
    Wal(#[from] weir_wal::Error),
    /// An entry asked for was compacted away (below the log's first index).
    #[error("log index {index} of shard {shard} was compacted (first index is {first})")]
    Compacted {
        /// shard
        shard: u32,
        /// asked for
        index: u64,
        /// first index still held
        first: u64,
    },
    /// An entry asked for is not committed yet.
    #[error("log index {index} of shard {shard} is not committed (watermark {watermark})")]
    NotCommitted {
        /// shard
        shard: u32,
        /// asked for
        index: u64,
        /// the commit watermark
        watermark: u64,
    },
    /// The shard is shutting down or has stopped.
    #[error("shard {0} is stopped")]
    Stopped(u32),
    /// A decoded log entry was not what the raft layer wrote: the log is inconsistent.
    #[error("corrupt raft entry in shard {shard} at index {index}: {reason}")]
    Corrupt {
        /// shard
        shard: u32,
        /// index
        index: u64,
        /// what was wrong
        reason: String,
    },
    /// This node does not lead the shard (with the cluster, the proposal is forwarded).
    #[error("this node is not the leader of shard {shard} (leader: {leader})")]
    NotLeader {
        /// shard
        shard: u32,
        /// the leader's node id, 0 if unknown
        leader: u64,
    },
    /// The proposal was overwritten by a new leader before it committed: retry it.
    #[error("proposal at index {index} of shard {shard} was dropped by a leader change; retry")]
    Dropped {
        /// shard
        shard: u32,
        /// index it had been proposed at
        index: u64,
    },
    /// The producer's sequence is older than the window of sequences remembered for it:
    /// whether it was stored cannot be told.
    #[error("sequence {sequence} of producer {producer:?} is older than the last {window} sequences remembered for it (all at or below {floor}); whether it was stored cannot be told: use increasing sequence numbers")]
    SequenceTooOld {
        /// producer (tenant-qualified)
        producer: String,
        /// the sequence
        sequence: u64,
        /// the window's floor
        floor: u64,
        /// the window size
        window: usize,
    },
    /// The proposal queue is full: retry later.
    #[error("the proposal queue is full; retry later")]
    Overloaded,
    /// The disk is full: appends are refused until space is freed.
    #[error(
        "the disk is full; appends are refused until space is freed (nothing acknowledged is lost)"
    )]
    DiskFull,
    /// The node's voters are not a valid raft membership for it.
    #[error("voters {voters:?} must be non-zero and contain this node's id {node_id}")]
    InvalidVoters {
        /// this node's id
        node_id: u64,
        /// the configured voters
        voters: Vec<u64>,
    },
    /// A raft message named a shard this node does not have.
    #[error("raft message for shard {shard}, but this node has {shard_count} shards")]
    NoSuchShard {
        /// the shard named
        shard: u32,
        /// this node's shard count
        shard_count: u32,
    },
    /// A peer's bytes are not a raft message.
    #[error("undecodable raft message for shard {shard}: {reason}")]
    BadMessage {
        /// shard
        shard: u32,
        /// what the decoder said
        reason: String,
    },
    /// raft-rs refused the raft configuration of a shard.
    #[error("invalid raft configuration for shard {shard}: {reason}")]
    InvalidConfig {
        /// shard
        shard: u32,
        /// what raft-rs said
        reason: String,
    },
    /// raft-rs could not start a shard's raft group over its storage (or, for the only
    /// voter, its first election).
    #[error("cannot start the raft group of shard {shard}: {reason}")]
    Open {
        /// shard
        shard: u32,
        /// what raft-rs said
        reason: String,
    },
    /// The OS refused to start the raft thread.
    #[error("cannot start the raft thread: {0}")]
    ThreadSpawn(#[source] std::io::Error),
    /// raft-rs refused a proposal for a reason other than a leadership change.
    #[error("raft refused a proposal to shard {shard}: {reason}")]
    ProposalRefused {
        /// shard
        shard: u32,
        /// what raft-rs said
        reason: String,
    },
    /// A snapshot replaced the log under a proposal before it was applied here: whether
    /// it was stored cannot be told on this node.
    #[error("shard {shard} replaced its log by a snapshot at index {snapshot}; whether the proposal at {index} was stored cannot be told here")]
    ReplacedBySnapshot {
        /// shard
        shard: u32,
        /// index the proposal had been given
        index: u64,
        /// the snapshot's index
        snapshot: u64,
    },
    /// The raft thread stopped on an unrecoverable error (the log may be inconsistent):
    /// the node must be restarted.
    #[error("the raft thread stopped on an error: {reason}; restart the node")]
    DriverFailed {
        /// shard of the proposal this answers
        shard: u32,
        /// the error that stopped the thread
        reason: String,
    },
}

/// `Result` of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One committed entry's payload, as proposed by the ingest layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The raft log index of the entry.
    pub index: u64,
    /// The payload bytes given to `propose` (a `weir.v1.StoredBatch`).
    pub data: Vec<u8>,
}

/// The committed part of one shard's log, for consumers (indexer, mirrors) that must not
/// know about raft. Entries that carry no payload (raft no-ops, configuration changes, the
/// raft layer's own cursor entries) are never returned, so indexes may have gaps.
pub trait CommittedLog: Send + Sync + 'static {
    /// The shard this log belongs to.
    fn shard(&self) -> u32;

    /// The highest index that is committed (durable on a quorum) and applied here. Every
    /// entry at or below it can be read, unless compacted.
    fn watermark(&self) -> u64;

    /// Reads committed payload entries with `lo <= index <= hi` in index order, stopping
    /// once `max_bytes` of payload have been gathered (always at least one entry when any
    /// is in range). Returns an empty vector only when no payload entry is in the range.
    ///
    /// # Errors
    /// [`Error::Compacted`] when `lo` is below the first index still held,
    /// [`Error::NotCommitted`] when `hi` is above the watermark.
    fn read(&self, lo: u64, hi: u64, max_bytes: usize) -> Result<Vec<LogEntry>>;

    /// Blocks until the watermark is above `after` or `timeout` passes; returns the
    /// watermark.
    fn wait_for(&self, after: u64, timeout: Duration) -> u64;
}

/// Forwards raft-rs's slog records to `tracing` (target `raft`); its info level is chatty,
/// so it becomes debug.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        _values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", record.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::debug!(target: "raft", "{}", record.msg()),
            _ => tracing::trace!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}
