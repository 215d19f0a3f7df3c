//! The node: every shard's `RawNode`, driven by one thread that runs the Ready loop.
//!
//! One round of the loop:
//! 1. take inputs (proposals, shutdown) from the bounded queue, waiting at most until the
//!    next tick; tick every shard when a tick is due;
//! 2. for every shard with a Ready: apply the committed entries it carries, stage its new
//!    entries and hard state in the shard's WAL, and start the flush (all shards' flushes
//!    are in flight at once: that is the group commit, one fdatasync per shard per round
//!    covering every proposal that arrived during the previous round);
//! 3. wait for every flush; only then make the entries visible to raft, send persisted
//!    messages, `advance`, apply what became committed and answer its proposers.
//!
//! Architecture invariant: nothing is acknowledged before the flush covering it completed.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use raft::eraftpb::{Entry, EntryType, MessageType, Snapshot};
use raft::{RawNode, SnapshotStatus};
use tokio::sync::oneshot;
use weir_wal::{IoBackend, IoBackendChoice, IoThread, Wal, WalOptions};

use crate::codec::{self, DedupKey};
use crate::dedup::{DedupTable, Seen};
use crate::internals::RawNodeExt;
use crate::snapshot::{SnapshotOffer, SnapshotRequest, Snapshots, SNAPSHOT_TICKS};
use crate::storage::{EntrySource, FlushTicket, LogStore, WalStorage};
use crate::{CommittedLog, Error, LogEntry, Result};

/// Where the raft layer hands messages for other nodes: the peer transport (and, for
/// tests, a simulated network). Called on the raft thread, so it must not block: when its
/// queue toward `to` is full it drops the message (raft retransmits what matters).
pub trait Outbox: Send + Sync + 'static {
    /// Sends one encoded raft message of `shard` to node `to`.
    fn send(&self, to: u64, shard: u32, message: Vec<u8>);
}

/// The outbox of a single node: there is nobody to send to.
struct NoPeers;

impl Outbox for NoPeers {
    fn send(&self, to: u64, shard: u32, _message: Vec<u8>) {
        tracing::warn!(
            to,
            shard,
            "raft message for another node, but this node has no peers"
        );
    }
}

/// Configuration of the raft layer of one node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's raft id (non-zero).
    pub node_id: u64,
    /// Every voter's id; `[node_id]` for a single node.
    pub voters: Vec<u64>,
    /// Where the shards' WAL directories live (`<dir>/shard-<n>/wal`).
    pub data_dir: PathBuf,
    /// Number of shards (raft groups).
    pub shard_count: u32,
    /// WAL segment options.
    pub wal: WalOptions,
    /// Which I/O backend the WAL thread uses.
    pub io_backend: IoBackendChoice,
    /// Raft tick.
    pub tick_interval_ms: u64,
    /// Capacity of the proposal queue into the raft thread. When it is full, `propose`
    /// fails at once with [`Error::Overloaded`] (the client is told to retry).
    pub proposal_queue_len: usize,
    /// Producers remembered per shard for idempotent retries.
    pub dedup_producers_max: usize,
    /// This node's data is new but the cluster has some (a wiped node coming back): until
    /// a shard holds everything its leader had committed when they first spoke, this node
    /// neither votes nor campaigns in it, because its old votes and acknowledgements are
    /// lost and the others may still count on them.
    pub rejoining: bool,
    /// Bytes of a shard's WAL a leader keeps for replicas that are behind; past it they
    /// are left to catch up by snapshot (see `Input::Compact`).
    pub replica_log_bytes_max: u64,
}

impl NodeConfig {
    /// A single-node configuration with defaults, storing under `data_dir`.
    pub fn single(data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            node_id: 1,
            voters: vec![1],
            data_dir: data_dir.into(),
            shard_count: 4,
            wal: WalOptions::default(),
            io_backend: IoBackendChoice::Auto,
            tick_interval_ms: 100,
            proposal_queue_len: 4096,
            dedup_producers_max: 100_000,
            rejoining: false,
            replica_log_bytes_max: 4 << 30,
        }
    }
}

/// What a committed proposal reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The log index of the entry (0 for a duplicate found already applied).
    pub index: u64,
    /// True when the dedup key had already been stored: nothing new was stored.
    pub duplicate: bool,
}

/// A proposal in flight: resolves once it is committed (durable) or failed.
pub type Proposal = oneshot::Receiver<Result<Committed>>;

/// Status of one shard, for `/api/v1/cluster` and the CLI.
#[derive(Clone, Debug)]
pub struct ShardStatus {
    /// Shard number.
    pub shard: u32,
    /// Whether this node leads it.
    pub leader: bool,
    /// Leader's node id (0 = unknown).
    pub leader_id: u64,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index (the [`CommittedLog`] watermark).
    pub applied: u64,
    /// First index still held in the WAL.
    pub first_index: u64,
    /// Last durable index.
    pub last_index: u64,
    /// Term of the entry at `last_index` (0 when the log is empty).
    pub last_term: u64,
    /// Bytes of WAL segments on disk.
    pub wal_bytes: u64,
    /// When this node leads the shard: each voter's id and the last index known to be on
    /// its disk (`matched`); empty on a follower.
    pub replicas: Vec<(u64, u64)>,
}

/// How far a rejoining node must catch up in one shard (see [`NodeConfig::rejoining`]):
/// what one peer reported when it forgot the node's old log ([`RaftNode::forget_peer`]),
/// or, [`RejoinTarget::merge`]d, what every peer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RejoinTarget {
    /// The highest last log index: whatever was committed with the help of the lost log is
    /// at or below it. The node votes and campaigns freely again once it committed so far.
    pub last_index: u64,
    /// The most up-to-date (last log term, last index) of the peers' logs. Until caught
    /// up, the node grants its vote only to a candidate whose log is at least as up to
    /// date: such a log holds everything committed with the help of the lost log (raft's
    /// election restriction), so the vote cannot help elect a leader that lacks it.
    pub log: (u64, u64),
    /// The highest raft term: the node's old self may have voted in any term up to it.
    pub term: u64,
}

impl RejoinTarget {
    /// One peer's log: its last index and that entry's term, and its raft term.
    pub fn of(last_index: u64, last_term: u64, term: u64) -> RejoinTarget {
        RejoinTarget {
            last_index,
            log: (last_term, last_index),
            term,
        }
    }

    /// Takes in another peer's report: the result is at least as far as both.
    pub fn merge(&mut self, other: RejoinTarget) {
        self.last_index = self.last_index.max(other.last_index);
        self.log = self.log.max(other.log);
        self.term = self.term.max(other.term);
    }
}

pub(crate) enum Input {
    Propose {
        shard: u32,
        key: Option<DedupKey>,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Committed>>,
    },
    ProposeCursor {
        shard: u32,
        name: String,
        position: u64,
        reply: oneshot::Sender<Result<Committed>>,
    },
    Compact {
        shard: u32,
        below: u64,
    },
    Step {
        shard: u32,
        message: raft::eraftpb::Message,
    },
    ForgetPeer {
        id: u64,
        done: oneshot::Sender<Vec<RejoinTarget>>,
    },
    RejoinConfirmed {
        targets: Vec<RejoinTarget>,
    },
    SnapshotReady {
        shard: u32,
        index: u64,
        term: u64,
        data: Vec<u8>,
    },
    InstallSnapshot {
        shard: u32,
        offer: SnapshotOffer,
        state: Vec<u8>,
        reply: oneshot::Sender<Result<bool>>,
    },
    Status {
        reply: oneshot::Sender<Vec<ShardStatus>>,
    },
    Shutdown,
}

/// The raft layer of one node: every shard's raft group and the thread that drives them.
pub struct RaftNode {
    tx: SyncSender<Input>,
    /// Each shard's WAL fault hook (see [`RaftNode::inject_wal_write_error`]).
    #[cfg(feature = "testing")]
    faults: Vec<weir_wal::FaultInjector>,
    logs: Vec<Arc<ShardLog>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    health: Arc<Health>,
    backend: IoBackend,
    required_cursors: Arc<Mutex<Vec<String>>>,
    /// Proposals queued toward the driver (bounded by `proposal_queue_len`).
    queued_proposals: Arc<AtomicUsize>,
    proposal_queue_len: usize,
    /// Raft messages from peers queued toward the driver (bounded by [`STEP_QUEUE_LEN`]).
    queued_steps: Arc<AtomicUsize>,
    node_id: u64,
    /// The node's half of snapshots, once it has told it (see [`RaftNode::serve_snapshots`]).
    snapshots: SnapshotHook,
}

/// Set once the node's snapshot half exists (it needs the raft node first).
type SnapshotHook = Arc<OnceLock<Arc<dyn Snapshots>>>;

/// Raft messages from peers that may wait for the driver; past it they are dropped.
const STEP_QUEUE_LEN: usize = 65_536;

/// Conditions the driver thread reports to the rest of the node.
#[derive(Default)]
pub struct Health {
    /// The last flush failed because the disk is full; appends are refused until it is not.
    pub disk_full: AtomicBool,
    /// The driver hit an unrecoverable error and stopped: the node must be restarted.
    pub failed: AtomicBool,
    /// The error that stopped it.
    pub failure: Mutex<Option<String>>,
    /// Shutdown was asked for: retry loops (disk full) give up.
    pub stopping: AtomicBool,
    /// Shards still rejoining (see [`NodeConfig::rejoining`]); the node may forget that it
    /// was rejoining only once this is 0.
    pub rejoining_shards: AtomicUsize,
}

impl RaftNode {
    /// Opens (recovering) every shard and starts the driver thread.
    ///
    /// # Errors
    /// Any WAL error on open, including [`weir_wal::Error::Corrupt`] for a hole in a log:
    /// the node refuses to start rather than serve it.
    pub fn start(cfg: NodeConfig) -> Result<RaftNode> {
        Self::start_with(cfg, Arc::new(NoPeers))
    }

    /// Like [`RaftNode::start`], for a node of a cluster: messages for the other voters
    /// go to `outbox`, and the transport hands what arrives to [`RaftNode::step`].
    ///
    /// # Errors
    /// As [`RaftNode::start`]; [`Error::InvalidVoters`] when `voters` does not contain
    /// `node_id` or contains 0.
    pub fn start_with(cfg: NodeConfig, outbox: Arc<dyn Outbox>) -> Result<RaftNode> {
        assert!(cfg.node_id != 0, "raft node ids start at 1");
        assert!(cfg.shard_count > 0, "at least one shard");
        if !cfg.voters.contains(&cfg.node_id) || cfg.voters.contains(&0) {
            return Err(Error::InvalidVoters {
                node_id: cfg.node_id,
                voters: cfg.voters.clone(),
            });
        }
        let single = cfg.voters == [cfg.node_id];
        let io = IoThread::start(cfg.io_backend)?;
        let backend = io.backend();
        let required_cursors = Arc::new(Mutex::new(Vec::new()));
        let (shards, logs) = open_shards(&cfg, &io, &required_cursors)?;
        #[cfg(feature = "testing")]
        let faults = shards
            .iter()
            .map(|s| s.raw.store().fault_injector())
            .collect();
        // Proposals and peer messages share the channel, each kind bounded by its counter.
        let (tx, rx) = mpsc::sync_channel(cfg.proposal_queue_len.max(1) + STEP_QUEUE_LEN + 64);
        let health = Arc::new(Health::default());
        if cfg.rejoining && !single {
            health
                .rejoining_shards
                .store(cfg.shard_count as usize, Ordering::Release);
        }
        let queued_proposals = Arc::new(AtomicUsize::new(0));
        let queued_steps = Arc::new(AtomicUsize::new(0));
        let snapshots = SnapshotHook::default();
        let driver = Driver {
            snapshots: snapshots.clone(),
            shards,
            rx,
            tick: Duration::from_millis(cfg.tick_interval_ms.max(1)),
            health: health.clone(),
            outbox,
            queued_proposals: queued_proposals.clone(),
            queued_steps: queued_steps.clone(),
            node_id: cfg.node_id,
        };
        let thread = spawn_driver(driver, health.clone())?;
        tracing::info!(shards = cfg.shard_count, node_id = cfg.node_id, backend = %backend, "raft node started");
        Ok(RaftNode {
            tx,
            #[cfg(feature = "testing")]
            faults,
            logs,
            thread: Mutex::new(Some(thread)),
            health,
            backend,
            required_cursors,
            queued_proposals,
            proposal_queue_len: cfg.proposal_queue_len.max(1),
            queued_steps,
            node_id: cfg.node_id,
            snapshots,
        })
    }

    /// This node's raft id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Hands a raft message from a peer (encoded by the peer's [`Outbox`]) to `shard`.
    /// Never blocks: when the queue toward the raft thread holds `STEP_QUEUE_LEN` (65,536)
    /// messages the message is dropped, which raft tolerates (it retransmits).
    ///
    /// # Errors
    /// [`Error::NoSuchShard`] for a shard this node does not have, [`Error::BadMessage`]
    /// for bytes that are not a raft message.
    pub fn step(&self, shard: u32, message: &[u8]) -> Result<()> {
        if shard >= self.shard_count() {
            return Err(Error::NoSuchShard {
                shard,
                shard_count: self.shard_count(),
            });
        }
        let message: raft::eraftpb::Message = protobuf::Message::parse_from_bytes(message)
            .map_err(|e| Error::BadMessage {
                shard,
                reason: e.to_string(),
            })?;
        let message = match route(message, self.commit_index(shard)) {
            Incoming::Fetch(offer) => {
                match self.snapshots.get() {
                    Some(s) => s.fetch(shard, offer),
                    None => tracing::warn!(
                        shard,
                        from = offer.from,
                        "a snapshot was offered, but this node cannot fetch snapshots yet"
                    ),
                }
                return Ok(());
            }
            Incoming::Step(message) => message,
        };
        if self.queued_steps.fetch_add(1, Ordering::AcqRel) >= STEP_QUEUE_LEN {
            self.queued_steps.fetch_sub(1, Ordering::AcqRel);
            return Ok(());
        }
        if self.tx.try_send(Input::Step { shard, message }).is_err() {
            self.queued_steps.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Node `id` lost its data and is coming back empty: every shard led here forgets what
    /// it knew of that node's log (its acknowledgements no longer hold) and probes it from
    /// the start.
    ///
    /// The returned receiver gives, once every shard has done so, each shard's log and term
    /// at that moment ([`RejoinTarget::of`]). Everything committed with the help of the
    /// peer's old log is on some other node, so at or below the highest such index (a
    /// commit index would not do: a wiped leader took the only record of what it
    /// committed), and every vote the peer cast was in a term at or below the highest such
    /// term: that is how far the peer must catch up before it votes freely again.
    pub fn forget_peer(&self, id: u64) -> oneshot::Receiver<Vec<RejoinTarget>> {
        let (done, rx) = oneshot::channel();
        let _ = self.tx.try_send(Input::ForgetPeer { id, done });
        rx
    }

    /// On a rejoining node: every peer has forgotten this node's old log, and `targets[s]`
    /// merges what they reported of shard `s` when they did. The shard moves to that term
    /// at once, withholding its vote in it (its old self may have voted in it). Until it
    /// has committed `last_index`, it never campaigns and votes only for a candidate whose
    /// log is at least as up to date as the peers' were (so two rejoining replicas of
    /// three can still elect the third, which holds everything); then it is an ordinary
    /// voter again.
    pub fn rejoin_confirmed(&self, targets: Vec<RejoinTarget>) {
        // Not try_send: losing this would leave the node unable to vote until a restart.
        let _ = self.tx.send(Input::RejoinConfirmed { targets });
    }

    /// Hands the raft layer the node's half of snapshots (see [`crate::snapshot`]). Until
    /// then, leaders answer raft "no snapshot yet" and offers are dropped; both are
    /// retried by raft.
    pub fn serve_snapshots(&self, snapshots: Arc<dyn Snapshots>) {
        let _ = self.snapshots.set(snapshots);
    }

    /// Leader: the node has packaged `shard` at `index` (asked by [`Snapshots::build`]);
    /// `data` describes the package to followers (it travels in raft's snapshot message).
    pub fn snapshot_ready(&self, shard: u32, index: u64, term: u64, data: Vec<u8>) {
        // Blocking send: the node calls this off the async runtime, and losing it would
        // only cost another build.
        let _ = self.tx.send(Input::SnapshotReady {
            shard,
            index,
            term,
            data,
        });
    }

    /// Follower: the node fetched and installed its part of `offer`; `state` is the raft
    /// layer's part, as [`SnapshotRequest::state`] on the leader. Resolves to whether raft
    /// took the snapshot (false when this replica had meanwhile got as far another way).
    ///
    /// # Errors
    /// [`Error::Corrupt`] when `state` does not decode.
    pub fn install_snapshot(
        &self,
        shard: u32,
        offer: SnapshotOffer,
        state: Vec<u8>,
    ) -> oneshot::Receiver<Result<bool>> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Input::InstallSnapshot {
            shard,
            offer,
            state,
            reply,
        });
        rx
    }

    /// The commit index of `shard` here, as of the raft thread's last round.
    pub fn commit_index(&self, shard: u32) -> u64 {
        self.logs[shard as usize].commit.load(Ordering::Acquire)
    }

    /// Whether this replica of `shard` can serve reads as current: it is not rejoining and
    /// has applied all but at most `max_lag` of what it knows is committed.
    pub fn is_current(&self, shard: u32, max_lag: u64) -> bool {
        let log = &self.logs[shard as usize];
        !log.rejoining.load(Ordering::Acquire)
            && log.commit.load(Ordering::Acquire) <= log.watermark() + max_lag
    }

    /// Who leads `shard` as this node last saw it (its own id when it does), `None` when
    /// no leader is known (an election is under way or this node is cut off).
    pub fn leader_of(&self, shard: u32) -> Option<u64> {
        match self.logs[shard as usize].leader_id.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        self.logs.len() as u32
    }

    /// The WAL I/O backend in use.
    pub fn io_backend(&self) -> IoBackend {
        self.backend
    }

    /// Health flags set by the driver thread.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The committed log of `shard`.
    ///
    /// # Panics
    /// If `shard >= shard_count()`.
    pub fn committed_log(&self, shard: u32) -> Arc<ShardLog> {
        self.logs[shard as usize].clone()
    }

    /// Proposes `data` to `shard`. The returned [`Proposal`] resolves once the entry is
    /// committed (durable), or at once as a duplicate when `key` was already stored or is
    /// in flight (then it resolves when the original does).
    ///
    /// # Errors
    /// [`Error::Overloaded`] when the proposal queue is full, [`Error::DiskFull`] while the
    /// disk is full, [`Error::Stopped`] after shutdown or failure.
    pub fn propose(&self, shard: u32, key: Option<DedupKey>, data: Vec<u8>) -> Result<Proposal> {
        self.submit(shard, |reply| Input::Propose {
            shard,
            key,
            data,
            reply,
        })
    }

    /// Queues a proposal for the driver unless the node failed, the disk is full or the
    /// queue is full.
    fn submit(
        &self,
        shard: u32,
        input: impl FnOnce(oneshot::Sender<Result<Committed>>) -> Input,
    ) -> Result<Proposal> {
        assert!(shard < self.shard_count(), "shard {shard} out of range");
        if self.health.failed.load(Ordering::Acquire) {
            return Err(Error::Stopped(shard));
        }
        if self.health.disk_full.load(Ordering::Acquire) {
            return Err(Error::DiskFull);
        }
        if self.queued_proposals.fetch_add(1, Ordering::AcqRel) >= self.proposal_queue_len {
            self.queued_proposals.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::Overloaded);
        }
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(input(reply)) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.queued_proposals.fetch_sub(1, Ordering::AcqRel);
                match e {
                    TrySendError::Full(_) => Err(Error::Overloaded),
                    TrySendError::Disconnected(_) => Err(Error::Stopped(shard)),
                }
            }
        }
    }

    /// Proposes that consumer cursor `name` of `shard` moves to `position` (a log index
    /// the consumer has finished with). Once committed, every replica's
    /// [`ShardLog::cursor`] reports it, so a new leader resumes where the old one stopped.
    /// Cursors only move forward: a smaller position than the applied one is ignored.
    ///
    /// # Errors
    /// As [`RaftNode::propose`]; [`Error::NotLeader`] from the returned proposal when this
    /// node does not lead the shard.
    ///
    /// # Panics
    /// If `name` is longer than [`crate::CURSOR_NAME_BYTES_MAX`] bytes.
    pub fn propose_cursor(&self, shard: u32, name: &str, position: u64) -> Result<Proposal> {
        assert!(
            name.len() <= crate::CURSOR_NAME_BYTES_MAX,
            "cursor name too long"
        );
        self.submit(shard, |reply| Input::ProposeCursor {
            shard,
            name: name.to_owned(),
            position,
            reply,
        })
    }

    /// Names the cursors that hold back WAL compaction: no entry above a required cursor's
    /// position is removed, and while a required cursor has never been set on a shard,
    /// nothing of that shard is removed. Replaces the previous set.
    pub fn require_cursors(&self, names: Vec<String>) {
        *self
            .required_cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = names;
    }

    /// Allows the WAL segments wholly below `below` to be deleted (the caller has
    /// everything before it elsewhere: the index checkpoint, mirror cursors).
    pub fn compact(&self, shard: u32, below: u64) {
        let _ = self.tx.try_send(Input::Compact { shard, below });
    }

    /// Test hook: makes every later WAL write of `shard` fail with `errno` (`None` heals).
    /// Only with the `testing` feature.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn inject_wal_write_error(&self, shard: u32, errno: Option<i32>) {
        self.faults[shard as usize].set(errno);
    }

    /// Every shard's status.
    pub async fn status(&self) -> Result<Vec<ShardStatus>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Input::Status { reply })
            .map_err(|_| Error::Overloaded)?;
        rx.await.map_err(|_| Error::Stopped(0))
    }

    /// Stops the driver after it has handled every input queued before this call (queued
    /// proposals are committed and answered), and waits for it.
    pub fn shutdown(&self) {
        self.health.stopping.store(true, Ordering::Release);
        let _ = self.tx.send(Input::Shutdown);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for RaftNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where a raft message from a peer goes.
pub(crate) enum Incoming {
    /// To raft, at once.
    Step(raft::eraftpb::Message),
    /// To the node, which fetches the snapshot it offers before raft sees it (see
    /// [`crate::snapshot`]).
    Fetch(SnapshotOffer),
}

/// Routes a raft message from a peer: a snapshot is an offer the node fetches before it
/// is stepped; any other message is stepped at once.
///
/// So is a snapshot at or below `commit`, this replica's commit index: raft-rs never
/// installs one (it holds those entries already) and answers it with its commit index,
/// which tells the leader where to resume sending entries. The node would not fetch it
/// either, and without that answer a leader that believes this replica needs the
/// snapshot (it compacted past what it last knew of the replica) offers it again and
/// again, and the replica never catches up.
pub(crate) fn route(message: raft::eraftpb::Message, commit: u64) -> Incoming {
    if message.get_msg_type() != MessageType::MsgSnapshot
        || message.get_snapshot().get_metadata().index <= commit
    {
        return Incoming::Step(message);
    }
    let meta = message.get_snapshot().get_metadata();
    Incoming::Fetch(SnapshotOffer {
        from: message.from,
        index: meta.index,
        term: meta.term,
        data: message.get_snapshot().data.to_vec(),
        message,
    })
}

/// Opens (recovering) every shard's WAL and raft group.
fn open_shards(
    cfg: &NodeConfig,
    io: &Arc<IoThread>,
    required_cursors: &Arc<Mutex<Vec<String>>>,
) -> Result<(Vec<Shard>, Vec<Arc<ShardLog>>)> {
    let single = cfg.voters == [cfg.node_id];
    let logger = slog::Logger::root(crate::TracingDrain, slog::o!());
    let mut shards = Vec::with_capacity(cfg.shard_count as usize);
    let mut logs = Vec::with_capacity(cfg.shard_count as usize);
    for shard in 0..cfg.shard_count {
        let dir = cfg.data_dir.join(format!("shard-{shard}")).join("wal");
        let wal = Wal::open(&dir, cfg.wal, io.clone())?;
        let storage = WalStorage::open(shard, cfg.node_id, wal, &cfg.voters)?;
        let log = Arc::new(ShardLog::new(
            shard,
            storage.reader(),
            required_cursors.clone(),
        ));
        log.set_first(raft::Storage::first_index(&storage).unwrap_or(1));
        shards.push(Shard::open(
            cfg,
            shard,
            storage,
            log.clone(),
            raft_config(cfg.node_id, single),
            &logger,
        )?);
        logs.push(log);
    }
    Ok((shards, logs))
}

/// Starts the "weir-raft" thread running `driver`.
fn spawn_driver(driver: Driver, health: Arc<Health>) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("weir-raft".into())
        .spawn(move || {
            // A panic (raft-rs asserts its invariants) must not leave a node that looks
            // alive: the node reports itself failed, and its proposers are dropped
            // (their appends answer UNAVAILABLE).
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| driver.run()))
            {
                let why = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(error = %why, "raft driver panicked; the node must be restarted");
                *health.failure.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("raft driver panicked: {why}"));
                health.failed.store(true, Ordering::Release);
            }
        })
        .map_err(Error::ThreadSpawn)
}

/// The raft-rs configuration of every shard of node `id`.
pub(crate) fn raft_config(id: u64, single: bool) -> raft::Config {
    raft::Config {
        id,
        election_tick: 10,
        heartbeat_tick: 2,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        // Bounds memory when a restart re-applies a large log (applied = 0 below).
        max_committed_size_per_ready: 16 << 20,
        // 0: raft hands every committed entry to apply again after a restart, which is how
        // the dedup table and the watermark are rebuilt.
        applied: 0,
        pre_vote: true,
        // A leader cut off from its quorum steps down after an election timeout, so its
        // clients are told to go elsewhere instead of waiting.
        check_quorum: !single,
        ..Default::default()
    }
}

pub(crate) struct Shard<S: LogStore = WalStorage> {
    pub(crate) id: u32,
    pub(crate) raw: RawNode<S>,
    log: Arc<ShardLog>,
    dedup: DedupTable,
    /// Keys proposed and not yet applied, with the index and term they were proposed at.
    pending_keys: HashMap<DedupKey, (u64, u64)>,
    /// The key proposed at an index, so that whatever entry lands there clears it.
    pending_at: HashMap<u64, DedupKey>,
    /// The voter that should lead this shard when it is healthy (spreads leaders evenly).
    preferred_leader: u64,
    /// Ticks since leadership was last handed to the preferred leader (the raft layer's
    /// clock is its ticks, so that the simulator can drive it).
    ticks_since_balance: u64,
    /// A peer that came back without its data, and the index it must hold before
    /// leadership is handed to it (it neither votes nor campaigns until it caught up).
    balance_hold: Option<(u64, u64)>,
    /// While rejoining with lost data (see [`NodeConfig::rejoining`]); `None` once caught
    /// up.
    pub(crate) rejoin: Option<Rejoin>,
    /// Proposers waiting for an index: (term proposed in, duplicate?, reply).
    waiters: BTreeMap<u64, Vec<Waiter>>,
    /// Proposals held back until this leader has applied every entry of earlier terms
    /// (until then the dedup table may miss keys committed by a previous term).
    deferred: Vec<Deferred>,
    deferred_max: usize,
    /// Ticks of this shard's clock since it was opened (the raft layer's clock is its
    /// ticks, so that the simulator can drive it).
    ticks: u64,
    /// The tick the WAL was last compacted at (each compaction costs a meta flush).
    last_compact: Option<u64>,
    /// See [`NodeConfig::replica_log_bytes_max`].
    replica_log_bytes_max: u64,
    /// The applied state of a snapshot being installed, until raft hands it back.
    restore: Option<codec::AppliedState>,
    /// Leader: ticks each follower has spent in raft-rs's snapshot state.
    snapshot_ticks: HashMap<u64, u64>,
    dedup_producers_max: usize,
}

/// A proposal held back: its key, payload and proposer.
type Deferred = (
    Option<DedupKey>,
    Vec<u8>,
    oneshot::Sender<Result<Committed>>,
);

/// A shard's state while its node rejoins without its old data.
#[derive(Default)]
pub(crate) struct Rejoin {
    /// Once every peer has forgotten this node's old log ([`RaftNode::rejoin_confirmed`]):
    /// how far their logs went then.
    target: Option<RejoinTarget>,
}

struct Waiter {
    /// The term of the proposal being waited for: a different term at that index means it
    /// was overwritten.
    term: u64,
    duplicate: bool,
    reply: oneshot::Sender<Result<Committed>>,
}

pub(crate) struct Driver<S: LogStore = WalStorage> {
    pub(crate) shards: Vec<Shard<S>>,
    rx: Receiver<Input>,
    tick: Duration,
    health: Arc<Health>,
    outbox: Arc<dyn Outbox>,
    queued_proposals: Arc<AtomicUsize>,
    queued_steps: Arc<AtomicUsize>,
    node_id: u64,
    snapshots: SnapshotHook,
}

/// A shard's leadership is handed to its preferred voter at most every this many ticks
/// (3 s at the default 100 ms tick).
const BALANCE_TICKS: u64 = 30;

const MAX_INPUTS_PER_ROUND: usize = 8192;

/// The cursor a leader moves to the last index every replica holds; on a cluster, no
/// replica compacts past it (see `Input::Compact`).
pub(crate) const REPLICAS_CURSOR: &str = "\u{1}replicas";

/// A shard's WAL is compacted at most every this many ticks (10 s at the default 100 ms
/// tick).
const COMPACT_INTERVAL_TICKS: u64 = 100;

impl<S: LogStore> Driver<S> {
    /// A driver not attached to a thread: the simulator calls `handle`, `tick_all` and
    /// `round` itself.
    #[cfg(feature = "testing")]
    pub(crate) fn detached(shards: Vec<Shard<S>>, outbox: Arc<dyn Outbox>, node_id: u64) -> Self {
        let (_tx, rx) = mpsc::sync_channel(1);
        Driver {
            shards,
            rx,
            tick: Duration::from_millis(100),
            health: Arc::new(Health::default()),
            outbox,
            queued_proposals: Arc::new(AtomicUsize::new(usize::MAX / 2)),
            queued_steps: Arc::new(AtomicUsize::new(usize::MAX / 2)),
            node_id,
            snapshots: SnapshotHook::default(),
        }
    }

    /// Hands a detached driver the node's half of snapshots (what
    /// [`RaftNode::serve_snapshots`] does for the driver thread).
    #[cfg(feature = "testing")]
    pub(crate) fn serve_snapshots(&self, snapshots: Arc<dyn Snapshots>) {
        let _ = self.snapshots.set(snapshots);
    }

    /// Whether some shard still rejoins.
    #[cfg(feature = "testing")]
    pub(crate) fn rejoining(&self) -> bool {
        self.shards.iter().any(|s| s.rejoin.is_some())
    }

    /// One tick of every shard's clock.
    pub(crate) fn tick_all(&mut self) {
        for s in &mut self.shards {
            if s.rejoin.is_none() {
                s.raw.tick();
            } else {
                // A rejoining shard never campaigns, so its election timer is not run; but
                // the time since it last heard a leader still passes, or raft-rs would
                // count that leader's lease as current forever and ignore every candidate.
                s.raw.age_leader_lease();
            }
            s.ticks += 1;
            s.raw.mut_store().snapshots_mut().tick();
            s.balance(self.node_id);
            s.watch_snapshots();
        }
    }

    fn run(mut self) {
        let mut next_tick = Instant::now() + self.tick;
        let mut stopping = false;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let first = if stopping {
                None
            } else {
                match self.rx.recv_timeout(wait) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        stopping = true;
                        None
                    }
                }
            };
            if let Some(m) = first {
                stopping |= self.handle(m);
                let mut n = 1;
                while n < MAX_INPUTS_PER_ROUND && !stopping {
                    match self.rx.try_recv() {
                        Ok(m) => stopping |= self.handle(m),
                        Err(_) => break,
                    }
                    n += 1;
                }
            }
            if Instant::now() >= next_tick {
                self.tick_all();
                next_tick = Instant::now() + self.tick;
            }
            if let Err(e) = self.round() {
                tracing::error!(error = %e, "raft driver stopped on an unrecoverable error");
                *self
                    .health
                    .failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                self.health.failed.store(true, Ordering::Release);
                self.fail_all(&e);
                return;
            }
            if stopping && !self.shards.iter().any(|s| s.raw.has_ready()) {
                // Proposals that were queued before the shutdown were handled above.
                // Persist the last commit index so a restart re-applies no more than needed.
                for s in &mut self.shards {
                    let store = s.raw.mut_store();
                    if store.needs_flush() {
                        if let Err(e) = store.flush().and_then(FlushTicket::wait) {
                            tracing::warn!(shard = s.id, error = %e, "final flush failed");
                        }
                    }
                }
                let e = Error::Stopped(0);
                self.fail_all(&e);
                tracing::info!("raft driver stopped");
                return;
            }
        }
    }

    /// Handles one input; returns true on shutdown.
    pub(crate) fn handle(&mut self, m: Input) -> bool {
        match m {
            Input::Propose {
                shard,
                key,
                data,
                reply,
            } => {
                self.queued_proposals.fetch_sub(1, Ordering::AcqRel);
                self.shards[shard as usize].propose(key, data, reply);
            }
            Input::ProposeCursor {
                shard,
                name,
                position,
                reply,
            } => {
                self.queued_proposals.fetch_sub(1, Ordering::AcqRel);
                self.shards[shard as usize].propose_cursor(&name, position, reply);
            }
            Input::Compact { shard, below } => {
                let me = self.node_id;
                self.shards[shard as usize].compact(below, me);
            }
            Input::Status { reply } => {
                let _ = reply.send(self.shards.iter().map(Shard::status).collect());
            }
            Input::Step { shard, message } => {
                self.queued_steps.fetch_sub(1, Ordering::AcqRel);
                self.shards[shard as usize].step(message);
            }
            Input::RejoinConfirmed { targets } => self.rejoin_confirmed(&targets),
            Input::ForgetPeer { id, done } => {
                let _ = done.send(self.forget_peer(id));
            }
            Input::SnapshotReady {
                shard,
                index,
                term,
                data,
            } => self.shards[shard as usize].snapshot_ready(index, term, data),
            Input::InstallSnapshot {
                shard,
                offer,
                state,
                reply,
            } => {
                let _ = reply.send(self.shards[shard as usize].offer_snapshot(offer, &state));
            }
            Input::Shutdown => return true,
        }
        false
    }

    /// Every peer has forgotten this node's old log: each rejoining shard learns how far
    /// it must catch up (`targets[shard]`, see [`RaftNode::rejoin_confirmed`]).
    fn rejoin_confirmed(&mut self, targets: &[RejoinTarget]) {
        let me = self.node_id;
        for s in &mut self.shards {
            let target = targets.get(s.id as usize).copied().unwrap_or_default();
            s.rejoin_confirmed(target, me);
        }
    }

    /// Node `id` lost its data (see [`RaftNode::forget_peer`]): every shard forgets what it
    /// knew of its log; returns each shard's log and term once all have.
    fn forget_peer(&mut self, id: u64) -> Vec<RejoinTarget> {
        for s in &mut self.shards {
            s.forget_peer(id);
        }
        self.shards.iter().map(Shard::rejoin_report).collect()
    }

    /// Installs the snapshot of a Ready in shard `i`: the log is replaced (durably) and
    /// the applied state becomes the snapshot's.
    fn install_snapshot(&mut self, i: usize, meta: &raft::eraftpb::SnapshotMetadata) -> Result<()> {
        let (index, term, conf) = (meta.index, meta.term, meta.get_conf_state().clone());
        if let Some((applied, cursors, dedup)) = &self.shards[i].restore {
            // Before the log it covers goes: a restart after the reset needs it.
            let state = codec::encode_state(*applied, cursors, dedup);
            if let Err(e) = self.shards[i].raw.mut_store().save_applied_state(&state) {
                self.retry_disk_full(i, e, |d| {
                    d.shards[i].raw.mut_store().save_applied_state(&state)
                })?;
            }
        }
        if let Err(e) = self.shards[i]
            .raw
            .mut_store()
            .apply_snapshot(index, term, &conf)
        {
            self.retry_disk_full(i, e, |d| {
                d.shards[i]
                    .raw
                    .mut_store()
                    .apply_snapshot(index, term, &conf)
            })?;
        }
        let s = &mut self.shards[i];
        match s.restore.take() {
            Some((_, cursors, dedup)) => {
                s.dedup = dedup;
                for (name, position) in cursors {
                    s.log.set_cursor(name, position);
                }
            }
            None => tracing::warn!(
                shard = s.id,
                index,
                "snapshot installed without its applied state: cursors and idempotency table are rebuilt from the log only"
            ),
        }
        s.settle_proposals_through(index);
        s.log.set_first(index + 1);
        s.log.advance(index);
        tracing::info!(
            shard = s.id,
            index,
            term,
            "snapshot installed: the log continues after it"
        );
        Ok(())
    }

    /// Asks the node to package a snapshot for every shard whose raft wanted one.
    fn request_snapshots(&mut self) {
        for s in &mut self.shards {
            let store = s.raw.store();
            if !store.snapshots().take_wanted() {
                continue;
            }
            let first = raft::Storage::first_index(store).unwrap_or(1);
            let index = first - 1;
            let Ok(term) = raft::Storage::term(store, index) else {
                continue;
            };
            if index == 0 || !store.snapshots().should_build(index) {
                continue;
            }
            let Some(hook) = self.snapshots.get() else {
                tracing::warn!(
                    shard = s.id,
                    "a follower needs a snapshot, but this node cannot build one yet"
                );
                continue;
            };
            store.snapshots().building(index);
            let state = codec::encode_state(s.log.watermark(), &s.log.cursors(), &s.dedup);
            tracing::info!(
                shard = s.id,
                index,
                term,
                "a follower is behind the compacted log: packaging a snapshot"
            );
            hook.build(s.id, SnapshotRequest { index, term, state });
        }
    }

    /// Hands encoded messages to the outbox.
    fn send(&self, shard: u32, messages: Vec<raft::eraftpb::Message>) {
        for m in messages {
            match protobuf::Message::write_to_bytes(&m) {
                Ok(bytes) => self.outbox.send(m.to, shard, bytes),
                Err(e) => tracing::error!(shard, error = %e, "cannot encode a raft message"),
            }
        }
    }

    /// One round of the Ready loop (see the module docs): stage every shard's Ready and
    /// start its flush, then finish each once durable, then publish what changed.
    pub(crate) fn round(&mut self) -> Result<()> {
        let mut readies = Vec::new();
        for i in 0..self.shards.len() {
            if let Some((rd, ticket)) = self.stage_ready(i)? {
                readies.push((i, rd, ticket));
            }
        }
        for (i, rd, ticket) in readies {
            self.finish_ready(i, rd, ticket)?;
        }
        self.finish_rejoins();
        self.request_snapshots();
        self.publish();
        Ok(())
    }

    /// Takes shard `i`'s Ready, if any: sends the leader's messages, installs a snapshot,
    /// applies what is committed, stages the new entries and hard state and starts their
    /// flush (a full disk is retried).
    fn stage_ready(&mut self, i: usize) -> Result<Option<(raft::Ready, Option<S::Ticket>)>> {
        let s = &mut self.shards[i];
        if !s.raw.has_ready() {
            return Ok(None);
        }
        let mut rd = s.raw.ready();
        // A leader's appends go out before its own write (raft allows it: an entry
        // commits only once a quorum including the leader's matched index has it).
        let id = s.id;
        let out = rd.take_messages();
        self.send(id, out);
        if !rd.snapshot().is_empty() {
            let meta = rd.snapshot().get_metadata().clone();
            self.install_snapshot(i, &meta)?;
        }
        let s = &mut self.shards[i];
        s.apply(rd.take_committed_entries())?;
        for e in rd.entries() {
            let store = self.shards[i].raw.mut_store();
            if let Err(err) = store.stage_entry(e) {
                // Nothing of this entry was staged: retry it while the disk is full.
                self.retry_disk_full(i, err, |d| d.shards[i].raw.mut_store().stage_entry(e))?;
            }
        }
        let store = self.shards[i].raw.mut_store();
        if let Some(hs) = rd.hs() {
            store.set_hard_state(hs);
        }
        let ticket = if store.needs_flush() {
            match store.flush() {
                Ok(t) => Some(t),
                Err(err) => {
                    Some(self.retry_disk_full(i, err, |d| d.shards[i].raw.mut_store().flush())?)
                }
            }
        } else {
            None
        };
        Ok(Some((rd, ticket)))
    }

    /// Once shard `i`'s flush is durable: sends the messages that promise it (votes,
    /// acknowledgements), shows the entries to raft, advances, and applies what became
    /// committed.
    fn finish_ready(
        &mut self,
        i: usize,
        mut rd: raft::Ready,
        ticket: Option<S::Ticket>,
    ) -> Result<()> {
        if let Some(t) = ticket {
            self.wait_durable(i, t)?;
        }
        // Votes and follower acks only once what they promise is on disk.
        let persisted = rd.take_persisted_messages();
        let id = self.shards[i].id;
        self.send(id, persisted);
        let s = &mut self.shards[i];
        s.raw.mut_store().commit_staged();
        let mut light = s.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            s.raw.mut_store().set_commit(commit);
        }
        let out = light.take_messages();
        self.send(id, out);
        let s = &mut self.shards[i];
        s.apply(light.take_committed_entries())?;
        s.raw.advance_apply();
        s.release_deferred();
        Ok(())
    }

    /// A rejoining shard that committed as far as its peers' logs went votes again.
    fn finish_rejoins(&mut self) {
        for s in &mut self.shards {
            if let Some(Rejoin {
                target: Some(target),
            }) = s.rejoin
            {
                if s.raw.committed() >= target.last_index {
                    tracing::info!(
                        shard = s.id,
                        commit = target.last_index,
                        "caught up after rejoining: voting again"
                    );
                    s.rejoin = None;
                }
            }
        }
    }

    /// Tells the rest of the node what this round changed: shards still rejoining, and
    /// each shard's leadership, leader and commit index.
    fn publish(&self) {
        let rejoining = self.shards.iter().filter(|s| s.rejoin.is_some()).count();
        self.health
            .rejoining_shards
            .store(rejoining, Ordering::Release);
        for s in &self.shards {
            let current = s.raw.is_leader() && s.caught_up();
            s.log.leader.store(current, Ordering::Release);
            s.log.leader_id.store(s.raw.leader_id(), Ordering::Release);
            s.log.commit.store(s.raw.committed(), Ordering::Release);
            s.log.rejoining.store(s.rejoin.is_some(), Ordering::Release);
        }
    }

    /// Waits for a flush; a full disk is retried (see [`Driver::retry_disk_full`]).
    fn wait_durable(&mut self, shard: usize, ticket: S::Ticket) -> Result<()> {
        match FlushTicket::wait(ticket) {
            Ok(()) => {
                self.disk_has_space();
                Ok(())
            }
            Err(e) => self.retry_disk_full(shard, e, |d| {
                let t = d.shards[shard].raw.mut_store().flush()?;
                FlushTicket::wait(t)
            }),
        }
    }

    /// A full disk is not fatal: `op` is retried every second until space returns
    /// (appends are refused meanwhile, nothing acknowledged is lost) or shutdown is asked
    /// for. Any other error is returned.
    fn retry_disk_full<T>(
        &mut self,
        shard: usize,
        first: Error,
        mut op: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let mut err = first;
        loop {
            if !matches!(err, Error::Wal(weir_wal::Error::DiskFull { .. })) {
                return Err(err);
            }
            if !self.health.disk_full.swap(true, Ordering::AcqRel) {
                tracing::error!(shard, error = %err, "disk full: appends are refused until space is freed; nothing acknowledged is lost");
            }
            if self.health.stopping.load(Ordering::Acquire) {
                return Err(Error::Stopped(shard as u32));
            }
            std::thread::sleep(Duration::from_secs(1));
            match op(self) {
                Ok(v) => {
                    self.disk_has_space();
                    return Ok(v);
                }
                Err(e) => err = e,
            }
        }
    }

    fn disk_has_space(&self) {
        if self.health.disk_full.swap(false, Ordering::AcqRel) {
            tracing::info!("disk has space again, appends resume");
        }
    }

    fn fail_all(&mut self, e: &Error) {
        for s in &mut self.shards {
            // Consumers that run on the leader (mirrors) must stop proposing.
            s.log.leader.store(false, Ordering::Release);
            s.log.leader_id.store(0, Ordering::Release);
            for (_, _, reply) in std::mem::take(&mut s.deferred) {
                let _ = reply.send(Err(Error::Stopped(s.id)));
            }
            for (_, ws) in std::mem::take(&mut s.waiters) {
                for w in ws {
                    let _ = w.reply.send(Err(match e {
                        Error::Stopped(_) => Error::Stopped(s.id),
                        other => Error::DriverFailed {
                            shard: s.id,
                            reason: other.to_string(),
                        },
                    }));
                }
            }
        }
    }
}

impl<S: LogStore> Shard<S> {
    /// A shard over `storage`, configured by `cfg` (its voters, rejoining, queue sizes).
    pub(crate) fn open(
        cfg: &NodeConfig,
        shard: u32,
        storage: S,
        log: Arc<ShardLog>,
        raft_cfg: raft::Config,
        logger: &slog::Logger,
    ) -> Result<Self> {
        let single = cfg.voters == [cfg.node_id];
        log.replicated.store(!single, Ordering::Release);
        raft_cfg.validate().map_err(|e| Error::InvalidConfig {
            shard,
            reason: e.to_string(),
        })?;
        // What compaction or a snapshot took from the log but the log built: the
        // idempotency table and the cursors, as of some applied index at or above the
        // log's first index - 1. Re-applying the log on top changes nothing it knew.
        let mut dedup = DedupTable::new(cfg.dedup_producers_max);
        if let Some(bytes) = storage.load_applied_state()? {
            let (_, cursors, table) = codec::decode_state(&bytes, cfg.dedup_producers_max)
                .map_err(|reason| Error::Corrupt {
                    shard,
                    index: 0,
                    reason: format!(
                        "the saved applied state (applied-state beside the WAL) does not decode: {reason}; removing that file starts the shard with the idempotency table rebuilt from the log alone"
                    ),
                })?;
            dedup = table;
            for (name, position) in cursors {
                log.set_cursor(name, position);
            }
        }
        let mut raw = RawNode::new(&raft_cfg, storage, logger).map_err(|e| Error::Open {
            shard,
            reason: e.to_string(),
        })?;
        if single {
            // The only voter: it elects itself at once (a cluster waits for election ticks).
            raw.campaign().map_err(|e| Error::Open {
                shard,
                reason: format!("the only voter cannot campaign: {e}"),
            })?;
        }
        Ok(Shard {
            id: shard,
            raw,
            log,
            dedup,
            pending_keys: HashMap::new(),
            pending_at: HashMap::new(),
            preferred_leader: cfg.voters[shard as usize % cfg.voters.len()],
            rejoin: (cfg.rejoining && !single).then_some(Rejoin::default()),
            ticks_since_balance: 0,
            balance_hold: None,
            waiters: BTreeMap::new(),
            deferred: Vec::new(),
            deferred_max: cfg.proposal_queue_len.max(1),
            ticks: 0,
            last_compact: None,
            replica_log_bytes_max: cfg.replica_log_bytes_max,
            restore: None,
            snapshot_ticks: HashMap::new(),
            dedup_producers_max: cfg.dedup_producers_max,
        })
    }

    fn propose(
        &mut self,
        key: Option<DedupKey>,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Committed>>,
    ) {
        if !self.raw.is_leader() {
            let _ = reply.send(Err(Error::NotLeader {
                shard: self.id,
                leader: self.raw.leader_id(),
            }));
            return;
        }
        if !self.caught_up() {
            if self.deferred.len() >= self.deferred_max {
                let _ = reply.send(Err(Error::Overloaded));
            } else {
                self.deferred.push((key, data, reply));
            }
            return;
        }
        if let Some(k) = &key {
            match self.dedup.check(k) {
                Seen::New => {}
                Seen::Stored => {
                    let _ = reply.send(Ok(Committed {
                        index: 0,
                        duplicate: true,
                    }));
                    return;
                }
                Seen::TooOld { floor } => {
                    let _ = reply.send(Err(Error::SequenceTooOld {
                        producer: k.producer.clone(),
                        sequence: k.sequence,
                        floor,
                        window: crate::DEDUP_WINDOW,
                    }));
                    return;
                }
            }
            if let Some(&(index, term)) = self.pending_keys.get(k) {
                // Answered with the original: stored if it commits, retried if a new
                // leader overwrote it.
                self.waiters.entry(index).or_default().push(Waiter {
                    term,
                    duplicate: true,
                    reply,
                });
                return;
            }
        }
        let ctx = codec::encode_dedup(key.as_ref());
        if let Err(e) = self.raw.propose(ctx, data) {
            let _ = reply.send(Err(self.refused(e)));
            return;
        }
        let index = self.raw.last_index();
        let term = self.raw.term();
        if let Some(k) = key {
            if let Some(old) = self.pending_at.insert(index, k.clone()) {
                // An earlier term's proposal at this index was overwritten before applying.
                self.pending_keys.remove(&old);
            }
            self.pending_keys.insert(k, (index, term));
        }
        self.waiters.entry(index).or_default().push(Waiter {
            term,
            duplicate: false,
            reply,
        });
    }

    /// Proposes a cursor entry (see [`RaftNode::propose_cursor`]).
    fn propose_cursor(
        &mut self,
        name: &str,
        position: u64,
        reply: oneshot::Sender<Result<Committed>>,
    ) {
        if !self.raw.is_leader() {
            let _ = reply.send(Err(Error::NotLeader {
                shard: self.id,
                leader: self.raw.leader_id(),
            }));
            return;
        }
        let data = codec::encode_cursor(name, position);
        if let Err(e) = self.raw.propose(vec![codec::CURSOR_CONTEXT], data) {
            let _ = reply.send(Err(self.refused(e)));
            return;
        }
        let index = self.raw.last_index();
        let term = self.raw.term();
        self.waiters.entry(index).or_default().push(Waiter {
            term,
            duplicate: false,
            reply,
        });
    }

    /// The log was replaced by a snapshot at `index`: the proposals at or below it are
    /// answered (whether their entry is the one proposed cannot be told from here) and
    /// their keys are no longer in flight.
    fn settle_proposals_through(&mut self, index: u64) {
        let settled: Vec<u64> = self.waiters.range(..=index).map(|(i, _)| *i).collect();
        for at in settled {
            for w in self.waiters.remove(&at).unwrap_or_default() {
                let _ = w.reply.send(Err(Error::ReplacedBySnapshot {
                    shard: self.id,
                    index: at,
                    snapshot: index,
                }));
            }
        }
        let stale: Vec<u64> = self
            .pending_at
            .keys()
            .filter(|at| **at <= index)
            .copied()
            .collect();
        for at in stale {
            if let Some(k) = self.pending_at.remove(&at) {
                self.pending_keys.remove(&k);
            }
        }
    }

    /// What a proposer is told when raft-rs refuses a proposal: while leadership is being
    /// handed over (raft-rs drops proposals then) it is "not the leader", naming the node
    /// taking over, so the proposer retries there.
    fn refused(&self, e: raft::Error) -> Error {
        match e {
            raft::Error::ProposalDropped => Error::NotLeader {
                shard: self.id,
                leader: self.raw.transferring_to().unwrap_or(0),
            },
            other => Error::ProposalRefused {
                shard: self.id,
                reason: other.to_string(),
            },
        }
    }

    /// Whether this leader has applied an entry of its own term, and so every entry of
    /// earlier terms (raft commits those only together with one of the current term).
    fn caught_up(&self) -> bool {
        let applied = self.log.watermark();
        applied > 0 && self.raw.term_of(applied) == Some(self.raw.term())
    }

    /// Proposes what was held back, once caught up (or fails it when no longer leader).
    fn release_deferred(&mut self) {
        if self.deferred.is_empty() || (self.raw.is_leader() && !self.caught_up()) {
            return;
        }
        for (key, data, reply) in std::mem::take(&mut self.deferred) {
            self.propose(key, data, reply);
        }
    }

    /// Applies committed entries in order: the dedup table, then the watermark, then the
    /// proposers (so that whoever is answered can already read what it proposed).
    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        self.assert_applicable(&entries);
        for e in &entries {
            if e.get_entry_type() == EntryType::EntryNormal && codec::is_cursor(&e.context) {
                let (name, position) =
                    codec::decode_cursor(&e.data).map_err(|m| m.at(self.id, e.index))?;
                self.log.set_cursor(name, position);
            } else if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                let key = codec::decode_dedup(&e.context).map_err(|m| m.at(self.id, e.index))?;
                if let Some(k) = key {
                    self.dedup.insert(&k, e.index);
                }
            }
            // Whatever landed at this index settles the key proposed there: stored now,
            // or overwritten (the proposer is told to retry).
            if let Some(k) = self.pending_at.remove(&e.index) {
                if self
                    .pending_keys
                    .get(&k)
                    .is_some_and(|&(i, _)| i == e.index)
                {
                    self.pending_keys.remove(&k);
                }
            }
        }
        self.log.advance(last);
        for e in &entries {
            // Committed if the entry is the one they proposed (same term), dropped
            // otherwise (a new leader overwrote it).
            if let Some(ws) = self.waiters.remove(&e.index) {
                for w in ws {
                    let r = if w.term == e.term {
                        Ok(Committed {
                            index: e.index,
                            duplicate: w.duplicate,
                        })
                    } else {
                        Err(Error::Dropped {
                            shard: self.id,
                            index: e.index,
                        })
                    };
                    let _ = w.reply.send(r);
                }
            }
        }
        Ok(())
    }

    /// Checks, before any of `entries` is applied, that they continue the applied log with
    /// neither gap nor repeat and that all of them are durable here (raft-rs hands out
    /// only committed entries it was told are persisted): nothing is applied, and so
    /// nothing acknowledged, before the flush that covers it completed.
    ///
    /// # Panics
    /// When either does not hold: the log or the driver is inconsistent, and going on
    /// would acknowledge or index what may not be stored.
    fn assert_applicable(&self, entries: &[Entry]) {
        let mut prev = self.log.watermark();
        for e in entries {
            assert_eq!(
                e.index,
                prev + 1,
                "shard {}: entry {} handed to apply after entry {prev}: entries are applied contiguously",
                self.id,
                e.index
            );
            prev = e.index;
        }
        let durable = self.raw.store().last();
        assert!(
            prev <= durable,
            "shard {}: applying up to index {prev}, past the durable log's last index {durable}",
            self.id
        );
    }

    fn status(&self) -> ShardStatus {
        let st = self.raw.store();
        ShardStatus {
            shard: self.id,
            leader: self.raw.is_leader(),
            leader_id: self.raw.leader_id(),
            term: self.raw.term(),
            commit: self.raw.committed(),
            applied: self.log.watermark(),
            first_index: raft::Storage::first_index(st).unwrap_or(0),
            last_index: st.last(),
            last_term: raft::Storage::term(st, st.last()).unwrap_or(0),
            wal_bytes: st.disk_bytes(),
            replicas: if self.raw.is_leader() {
                let mut r: Vec<(u64, u64)> =
                    self.raw.replicas().map(|r| (r.id, r.matched)).collect();
                r.sort_unstable();
                r
            } else {
                Vec::new()
            },
        }
    }

    /// Leader: a follower that stays in raft-rs's snapshot state for [`SNAPSHOT_TICKS`] is
    /// reported failed, so raft offers the snapshot again (the follower may have lost the
    /// offer, or restarted while fetching).
    fn watch_snapshots(&mut self) {
        if !self.raw.is_leader() {
            self.snapshot_ticks.clear();
            return;
        }
        let waiting: Vec<u64> = self
            .raw
            .replicas()
            .filter(|r| r.snapshotting)
            .map(|r| r.id)
            .collect();
        self.snapshot_ticks.retain(|id, _| waiting.contains(id));
        for id in waiting {
            let ticks = self.snapshot_ticks.entry(id).or_insert(0);
            *ticks += 1;
            if *ticks >= SNAPSHOT_TICKS {
                *ticks = 0;
                tracing::info!(
                    shard = self.id,
                    peer = id,
                    "no answer to the snapshot offered: offering it again"
                );
                self.raw.report_snapshot(id, SnapshotStatus::Failure);
            }
        }
    }

    /// Hands leadership to the preferred voter when it is healthy and has every entry, so
    /// leaders spread evenly and come back after a failure heals.
    fn balance(&mut self, me: u64) {
        self.ticks_since_balance += 1;
        if !self.raw.is_leader()
            || self.preferred_leader == me
            || self.raw.transferring_to().is_some()
            || self.ticks_since_balance < BALANCE_TICKS
        {
            return;
        }
        let last = self.raw.last_index();
        let matched = self.raw.replica(self.preferred_leader).map(|r| r.matched);
        if let Some((peer, until)) = self.balance_hold {
            if peer == self.preferred_leader && matched.is_none_or(|m| m < until) {
                return;
            }
            self.balance_hold = None;
        }
        let ready = self
            .raw
            .replica(self.preferred_leader)
            .is_some_and(|r| r.recent_active && r.matched == last);
        if ready && self.caught_up() {
            self.ticks_since_balance = 0;
            tracing::info!(
                shard = self.id,
                to = self.preferred_leader,
                "handing leadership to the preferred node"
            );
            self.raw.transfer_leader(self.preferred_leader);
        }
    }
}

/// What the driver's commands do to one shard.
impl<S: LogStore> Shard<S> {
    /// Compacts the WAL below `below` (see [`RaftNode::compact`]), at most every
    /// [`COMPACT_INTERVAL_TICKS`], clamped to what must stay (see [`Shard::compaction_bound`]);
    /// a leader of several voters also moves [`REPLICAS_CURSOR`] first.
    fn compact(&mut self, below: u64, me: u64) {
        if self
            .last_compact
            .is_some_and(|t| self.ticks - t < COMPACT_INTERVAL_TICKS)
        {
            return;
        }
        self.last_compact = Some(self.ticks);
        let applied = self.log.watermark();
        // A leader keeps what a follower has not got yet (catching up from the log is
        // cheaper than a snapshot), up to a bound: past it, a replica that is far behind
        // is left to catch up by snapshot.
        let hold_for_replicas = self.raw.store().disk_bytes() <= self.replica_log_bytes_max;
        let below = self.compaction_bound(below, applied, hold_for_replicas, me);
        if self.raw.is_leader() && self.raw.replica_count() > 1 {
            self.advance_replicas_cursor(applied, hold_for_replicas);
        }
        if below <= 1 {
            return;
        }
        self.remove_log_below(below, applied);
    }

    /// The lowest index compaction may keep as first when asked for `below`: never past
    /// the applied index, a required cursor, what a follower lacks (a leader holding the
    /// log for its replicas) or the log after a snapshot handed out.
    fn compaction_bound(&self, below: u64, applied: u64, hold_for_replicas: bool, me: u64) -> u64 {
        let leader = self.raw.is_leader();
        if leader && !hold_for_replicas {
            self.warn_replicas_released(applied);
        }
        let followers = if leader && hold_for_replicas {
            self.raw
                .replicas()
                .filter(|r| r.id != me)
                .map(|r| r.matched + 1)
                .min()
                .unwrap_or(u64::MAX)
        } else {
            u64::MAX
        };
        // The entries after a snapshot handed out (or being built) stay, so the follower
        // installing it can continue from there.
        let snapshot_hold = self
            .raw
            .store()
            .snapshots()
            .hold()
            .filter(|h| self.raw.replicas().any(|r| r.matched + 1 < *h))
            .unwrap_or(u64::MAX);
        let cursor_floor = self.log.cursor_floor();
        let bound = below
            .min(applied + 1)
            .min(cursor_floor)
            .min(followers)
            .min(snapshot_hold);
        // Architecture invariant: no compaction past what was applied, what a required
        // cursor (on a cluster, the replicas cursor) still needs or, on a leader holding
        // the log for its replicas, what a follower lacks.
        assert!(
            bound <= applied + 1 && bound <= cursor_floor && bound <= followers,
            "shard {}: compaction below {bound} passes applied {applied}, cursor floor {cursor_floor} or followers' next index {followers}",
            self.id
        );
        bound
    }

    /// Leader past `replica_log_bytes_max`: names the replicas that now catch up by
    /// snapshot.
    fn warn_replicas_released(&self, applied: u64) {
        let behind: Vec<u64> = self
            .raw
            .replicas()
            .filter(|r| r.matched < applied)
            .map(|r| r.id)
            .collect();
        if !behind.is_empty() {
            tracing::warn!(
                shard = self.id,
                wal_bytes = self.raw.store().disk_bytes(),
                limit = self.replica_log_bytes_max,
                ?behind,
                "the log kept for replicas that are behind passed cluster.replica_log_bytes_max: released, they catch up by snapshot"
            );
        }
    }

    /// Leader of several voters: proposes [`REPLICAS_CURSOR`] at what every replica has
    /// (or, no longer holding the log for them, at `applied`). Followers compact no
    /// further, so whoever leads next still has what a lagging replica needs.
    fn advance_replicas_cursor(&mut self, applied: u64, hold_for_replicas: bool) {
        let held = if hold_for_replicas {
            self.raw.replicas().map(|r| r.matched).min().unwrap_or(0)
        } else {
            applied
        };
        if held > self.log.cursor(REPLICAS_CURSOR).unwrap_or(0) {
            let (reply, _) = oneshot::channel();
            self.propose_cursor(REPLICAS_CURSOR, held, reply);
        }
    }

    /// Removes the WAL segments wholly below `below`, saving the applied state first when
    /// entries go (what they built must outlive them).
    fn remove_log_below(&mut self, below: u64, applied: u64) {
        let shard = self.id;
        if below > raft::Storage::first_index(self.raw.store()).unwrap_or(1) {
            let state = codec::encode_state(applied, &self.log.cursors(), &self.dedup);
            if let Err(e) = self.raw.mut_store().save_applied_state(&state) {
                tracing::warn!(shard, error = %e, "cannot save the applied state; the log is not compacted");
                return;
            }
        }
        match self.raw.mut_store().compact(below) {
            Ok(freed) if freed > 0 => {
                tracing::debug!(shard, below, freed, "wal segments removed")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(shard, error = %e, "wal compaction failed"),
        }
    }

    /// Steps a raft message from a peer, unless this shard rejoins and must refuse it;
    /// a heartbeat's commit index past this log is clamped.
    fn step(&mut self, mut message: raft::eraftpb::Message) {
        if self.refuses_while_rejoining(&message) {
            return;
        }
        if message.get_msg_type() == MessageType::MsgSnapshot
            && message.get_snapshot().get_metadata().index > self.raw.committed()
        {
            // Only `offer_snapshot` steps a snapshot raft may take: the node installs its
            // part first (`route` hands over the others, which raft answers).
            tracing::warn!(
                shard = self.id,
                index = message.get_snapshot().get_metadata().index,
                "a snapshot past the commit index reached raft unfetched: ignored"
            );
            return;
        }
        self.clamp_heartbeat_commit(&mut message);
        if let Err(e) = self.raw.step(message) {
            tracing::debug!(shard = self.id, error = %e, "raft message ignored");
        }
    }

    /// While this node may lack what it once acknowledged: no campaign on a leader's
    /// hand-over, and a vote only for a candidate whose log holds whatever was committed
    /// with the help of the lost one.
    fn refuses_while_rejoining(&self, message: &raft::eraftpb::Message) -> bool {
        use raft::eraftpb::MessageType as M;
        let Some(r) = &self.rejoin else {
            return false;
        };
        match message.get_msg_type() {
            M::MsgTimeoutNow => true,
            M::MsgRequestVote | M::MsgRequestPreVote => r
                .target
                .is_none_or(|t| (message.log_term, message.index) < t.log),
            _ => false,
        }
    }

    /// A heartbeat whose commit index is past this node's log means the leader believes
    /// this node holds more than it does: its data directory was wiped. raft-rs would
    /// panic on a commit index past the log; the entries arrive by the usual append
    /// probing instead.
    fn clamp_heartbeat_commit(&self, message: &mut raft::eraftpb::Message) {
        let last = self.raw.last_index();
        let committed = self.raw.committed();
        if message.get_msg_type() == MessageType::MsgHeartbeat && message.commit > last {
            tracing::debug!(
                shard = self.id,
                commit = message.commit,
                last,
                "heartbeat commit past this node's log, clamped"
            );
            // Not to `last`: entries past the commit were never checked against this leader.
            message.commit = committed;
            // A follower's commit index is never ahead of its log.
            assert!(
                committed <= last,
                "shard {}: commit index {committed} past the last index {last}",
                self.id
            );
        }
    }

    /// A rejoining shard learns how far it must catch up; nothing for one that does not
    /// rejoin.
    fn rejoin_confirmed(&mut self, target: RejoinTarget, me: u64) {
        let Some(r) = self.rejoin.as_mut() else {
            return;
        };
        r.target = Some(target);
        if self.raw.term() < target.term {
            // Its old self may have voted in any term up to `target.term`: never vote in
            // those again.
            self.raw.enter_term_voting_for_self(target.term, me);
        }
    }

    /// Peer `id` lost its data: whoever leads later must not hand it the shard before it
    /// caught up, and a leader forgets what it acknowledged and probes it from the end.
    fn forget_peer(&mut self, id: u64) {
        self.balance_hold = Some((id, self.raw.last_index()));
        if !self.raw.is_leader() {
            return;
        }
        // Probed from the end: its rejection says where its log ends, so a node seeded
        // with a copy of another's data resumes from there (an empty one backs off to
        // index 1).
        let probe_from = self.raw.last_index() + 1;
        if let Some(matched) = self.raw.forget_replica(id, probe_from) {
            tracing::info!(
                shard = self.id,
                peer = id,
                matched,
                "peer lost its data: its acknowledgements no longer count"
            );
        }
    }

    /// This shard's log and term, as a peer that forgot a node reports them.
    fn rejoin_report(&self) -> RejoinTarget {
        RejoinTarget::of(self.raw.last_index(), self.raw.last_term(), self.raw.term())
    }

    /// Leader: the node packaged a snapshot at `index` (see [`RaftNode::snapshot_ready`]);
    /// raft hands it to the followers that need it.
    fn snapshot_ready(&mut self, index: u64, term: u64, data: Vec<u8>) {
        let shard = self.id;
        let conf = match raft::Storage::initial_state(self.raw.store()) {
            Ok(st) => st.conf_state,
            Err(e) => {
                tracing::warn!(shard, error = %e, "cannot read the configuration for a snapshot");
                return;
            }
        };
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = term;
        snap.mut_metadata().set_conf_state(conf);
        snap.data = data.into();
        self.raw.mut_store().snapshots_mut().set(snap);
        tracing::info!(shard, index, term, "snapshot packaged");
    }

    /// Follower: the node installed its part of `offer` (see
    /// [`RaftNode::install_snapshot`]); steps the snapshot message with `state` kept for
    /// the next round to install. Returns whether raft took it.
    fn offer_snapshot(&mut self, offer: SnapshotOffer, state: &[u8]) -> Result<bool> {
        let shard = self.id;
        let index = offer.index;
        let st = codec::decode_state(state, self.dedup_producers_max).map_err(|reason| {
            Error::Corrupt {
                shard,
                index,
                reason: format!("snapshot state: {reason}"),
            }
        })?;
        self.restore = Some(st);
        if let Err(e) = self.raw.step(offer.message) {
            tracing::debug!(shard, error = %e, "snapshot message ignored");
        }
        // raft-rs took it when it is now the log's pending snapshot; the next round
        // installs it.
        let taken = self.raw.pending_snapshot_index() == Some(index);
        if !taken {
            self.restore = None;
        }
        Ok(taken)
    }
}

/// One shard's committed log, shared with the indexer and the mirrors.
pub struct ShardLog {
    shard: u32,
    reader: Box<dyn EntrySource>,
    watermark: AtomicU64,
    lock: Mutex<()>,
    cond: Condvar,
    /// Applied consumer cursors: name -> position.
    cursors: Mutex<HashMap<String, u64>>,
    /// Cursors that hold back compaction (shared by every shard of the node).
    required: Arc<Mutex<Vec<String>>>,
    /// Whether this node led the shard at the end of the driver's last round.
    leader: AtomicBool,
    /// Who led the shard as of the driver's last round, 0 when unknown.
    leader_id: AtomicU64,
    /// The shard's commit index here as of the driver's last round.
    commit: AtomicU64,
    /// Whether this replica is still rejoining (it lacks data it once had).
    rejoining: AtomicBool,
    /// On a cluster: compaction also stops at [`REPLICAS_CURSOR`].
    replicated: AtomicBool,
    /// The first index when the WAL holds no entry (after a snapshot replaced the log).
    first_floor: AtomicU64,
}

impl ShardLog {
    pub(crate) fn new(
        shard: u32,
        reader: impl EntrySource,
        required: Arc<Mutex<Vec<String>>>,
    ) -> Self {
        ShardLog {
            shard,
            reader: Box::new(reader),
            watermark: AtomicU64::new(0),
            lock: Mutex::new(()),
            cond: Condvar::new(),
            cursors: Mutex::new(HashMap::new()),
            required,
            leader: AtomicBool::new(false),
            leader_id: AtomicU64::new(0),
            commit: AtomicU64::new(0),
            rejoining: AtomicBool::new(false),
            replicated: AtomicBool::new(false),
            first_floor: AtomicU64::new(1),
        }
    }

    /// Every applied cursor.
    pub(crate) fn cursors(&self) -> HashMap<String, u64> {
        self.cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The log starts at `first` (opened compacted, or replaced by a snapshot): what is
    /// below was applied.
    pub(crate) fn set_first(&self, first: u64) {
        self.first_floor.store(first, Ordering::Release);
        self.advance(first.saturating_sub(1));
    }

    /// The applied position of consumer cursor `name`, `None` when it was never set (or
    /// its last entry was compacted away, which compaction prevents for required cursors).
    pub fn cursor(&self, name: &str) -> Option<u64> {
        self.cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
    }

    /// Every applied cursor whose name starts with `prefix`, in no order: a cursor is
    /// also how a node-wide record that must be replicated, survive compaction and travel
    /// with snapshots is kept (weir-server's access keys), under a prefix of its own.
    pub fn cursors_with_prefix(&self, prefix: &str) -> Vec<(String, u64)> {
        self.cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, position)| (name.clone(), *position))
            .collect()
    }

    /// Whether this node leads the shard and has applied every entry committed before its
    /// term (as of the raft thread's last round), so that [`ShardLog::cursor`] is current.
    /// After a restart or an election this turns true only once the log is re-applied.
    /// Consumers that must run once per shard (mirrors) run where this is true.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    fn set_cursor(&self, name: String, position: u64) {
        let mut c = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        let v = c.entry(name).or_insert(0);
        *v = (*v).max(position);
    }

    /// The lowest index compaction may keep as first: one past the smallest required
    /// cursor, 0 (nothing may go) while a required cursor is unset.
    ///
    /// A cursor entry is always proposed after the entries it covers, so the latest entry
    /// of a cursor sits above its position and survives every compaction this allows:
    /// cursors are rebuilt from the log on restart.
    fn cursor_floor(&self) -> u64 {
        let required = self.required.lock().unwrap_or_else(|p| p.into_inner());
        let cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        let replicas = self
            .replicated
            .load(Ordering::Acquire)
            .then_some(REPLICAS_CURSOR);
        required
            .iter()
            .map(String::as_str)
            .chain(replicas)
            .map(|n| cursors.get(n).map_or(0, |p| p + 1))
            .min()
            .unwrap_or(u64::MAX)
    }

    fn advance(&self, to: u64) {
        if to > self.watermark.load(Ordering::Acquire) {
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.watermark.store(to, Ordering::Release);
            self.cond.notify_all();
        }
    }

    /// First index still held in the WAL.
    pub fn first_index(&self) -> u64 {
        let floor = self.first_floor.load(Ordering::Acquire);
        self.reader.first_index().map_or(floor, |f| f.max(floor))
    }
}

impl CommittedLog for ShardLog {
    fn shard(&self) -> u32 {
        self.shard
    }

    fn watermark(&self) -> u64 {
        self.watermark.load(Ordering::Acquire)
    }

    fn read(&self, lo: u64, hi: u64, max_bytes: usize) -> Result<Vec<LogEntry>> {
        let watermark = self.watermark();
        if hi > watermark {
            return Err(Error::NotCommitted {
                shard: self.shard,
                index: hi,
                watermark,
            });
        }
        let first = self.first_index();
        if lo < first {
            return Err(Error::Compacted {
                shard: self.shard,
                index: lo,
                first,
            });
        }
        let mut raw = Vec::new();
        let mut out = Vec::new();
        let mut next = lo;
        // Skip over entries without payload (no-ops) until some payload is found or the
        // range ends, so a caller always makes progress.
        while next <= hi && out.is_empty() {
            raw.clear();
            if let Err(e) = self.reader.read_range(next, hi, max_bytes, &mut raw) {
                // A snapshot install or compaction may drop the segments between the check
                // above and this read: the caller learns the range was compacted, as the
                // contract says, rather than a WAL error.
                let first = self.first_index();
                if next < first {
                    return Err(Error::Compacted {
                        shard: self.shard,
                        index: next,
                        first,
                    });
                }
                return Err(e);
            }
            let Some(last) = raw.last().map(|(i, _)| *i) else {
                break;
            };
            for (index, payload) in raw.drain(..) {
                let v = codec::decode_entry(&payload).map_err(|m| m.at(self.shard, index))?;
                if v.entry_type == EntryType::EntryNormal
                    && !v.data.is_empty()
                    && !codec::is_cursor(v.context)
                {
                    out.push(LogEntry {
                        index,
                        data: v.data.to_vec(),
                    });
                }
            }
            next = last + 1;
        }
        Ok(out)
    }

    fn wait_for(&self, after: u64, timeout: Duration) -> u64 {
        let now = Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600));
        let mut g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let w = self.watermark();
            let now = Instant::now();
            if w > after || now >= deadline {
                return w;
            }
            g = self
                .cond
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
