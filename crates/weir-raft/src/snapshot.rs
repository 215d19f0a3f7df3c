//! Raft snapshots: how a replica behind every other replica's compacted log catches up.
//!
//! The raft layer knows only its own part of a shard's state: the log, the consumer
//! cursors and the idempotency table. The rest (the index the consumers built from the
//! log) belongs to the node, which packages and moves it through [`Snapshots`]:
//!
//! 1. A leader's raft-rs needs a snapshot for a follower (the follower needs entries the
//!    leader compacted). The driver hands the node a [`SnapshotRequest`]: the snapshot's
//!    index (the leader's last compacted index, so the follower continues from the
//!    leader's first held entry and no consumer cursor is skipped) and the raft layer's
//!    applied state, and answers raft "temporarily unavailable" until the node calls
//!    [`crate::RaftNode::snapshot_ready`] with a small description of its package.
//! 2. raft-rs sends the follower a `MsgSnapshot` carrying that description. The follower's
//!    [`crate::RaftNode::step`] does not step it: it hands the node a [`SnapshotOffer`],
//!    and the node fetches the package (in chunks, checksummed, resumable), installs its
//!    part, and gives the offer back with the raft layer's state to
//!    [`crate::RaftNode::install_snapshot`].
//! 3. The driver steps the message; when raft-rs accepts it, the shard's WAL is reset to
//!    start after the snapshot's index, and the cursors and the idempotency table become
//!    the snapshot's.
//!
//! The applied state is taken at the leader's applied index, which is at or above the
//! snapshot's index: the follower then re-applies the entries between the two, and
//! applying an entry twice changes neither the cursors (they only move forward) nor the
//! idempotency table. So the state is exact once the follower has applied as far as the
//! leader had.
//!
//! A leader whose follower stays in raft-rs's snapshot state longer than
//! [`SNAPSHOT_TICKS`] reports the snapshot failed, so raft offers it again (the follower
//! resumes its fetch where it stopped).

/// What a leader asks its node to package for a follower behind the compacted log.
#[derive(Clone, Debug)]
pub struct SnapshotRequest {
    /// The snapshot's log index: the follower continues from `index + 1`.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
    /// The raft layer's applied state (opaque to the node): it travels with the package
    /// and is handed back to [`crate::RaftNode::install_snapshot`].
    pub state: Vec<u8>,
}

/// A snapshot a leader offered this node.
#[derive(Clone, Debug)]
pub struct SnapshotOffer {
    /// The leader that sent it.
    pub from: u64,
    /// The snapshot's log index.
    pub index: u64,
    /// The snapshot's term.
    pub term: u64,
    /// What the leader's node passed to [`crate::RaftNode::snapshot_ready`].
    pub data: Vec<u8>,
    pub(crate) message: raft::eraftpb::Message,
}

/// The node's half of snapshots (see the module docs). Both calls come from the raft
/// thread or a transport task and must not block: start the work and return.
pub trait Snapshots: Send + Sync + 'static {
    /// Leader: package shard `shard` at `request.index` (everything a replica needs besides
    /// the log after that index) and then call [`crate::RaftNode::snapshot_ready`].
    /// Called again while raft still needs one, so a second call for a shard whose package
    /// is being built may be ignored.
    fn build(&self, shard: u32, request: SnapshotRequest);

    /// Follower: fetch and install `offer`, then call
    /// [`crate::RaftNode::install_snapshot`]. Offers are repeated while the transfer
    /// runs; a repeat of an offer being fetched may be ignored.
    fn fetch(&self, shard: u32, offer: SnapshotOffer);
}

/// Ticks (10 s at the default 100 ms tick) a follower may stay in raft-rs's snapshot state
/// before its leader reports the snapshot failed, so raft-rs offers it again.
pub const SNAPSHOT_TICKS: u64 = 100;

/// Ticks (10 min at the default 100 ms tick) a leader keeps the log after a snapshot it
/// handed out, so the follower that installs it finds the entries that follow it.
pub(crate) const SNAPSHOT_HOLD_TICKS: u64 = 6000;
