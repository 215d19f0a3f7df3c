//! A deterministic simulation of the raft layer: the real `Shard` and `Driver` code of
//! `node.rs` (proposals, dedup, waiters, rejoin, leader balancing, compaction, snapshots),
//! with the network, the clock, the disk and the node's index replaced by simulated ones
//! driven from one seeded random generator.
//!
//! - **Network**: every raft message goes into one pool; each step may deliver any of
//!   them (reordering), drop it, deliver it twice, or hold it while a partition cuts its
//!   link.
//! - **Clock**: the raft layer's time is its ticks (election timeouts, leader balancing,
//!   the compaction interval, how long a snapshot's log is held); the simulator ticks
//!   nodes when it chooses. raft-rs randomises election timeouts with its own generator,
//!   so each (node, shard, incarnation) gets a fixed timeout drawn from the seed instead.
//! - **Disk**: [`MemDisk`] keeps what was flushed; a crash loses what was staged and not
//!   flushed, and a crash *during* a flush keeps a random prefix of it (a torn write).
//!   Compaction and snapshots really drop entries; the disk keeps the index and term of
//!   the last one dropped, as the WAL's meta does, and opens with the same recovery.
//! - **Index**: each node indexes each shard from its own committed log
//!   (`CommittedLog::read`) at random steps: a checkpoint and the batches indexed, in log
//!   order (durable across crashes, lost with a wipe). It asks for compaction behind its
//!   checkpoint (`Input::Compact`, as weir-server's indexer calls `RaftNode::compact`), so
//!   leaders clamp to what followers hold and, past `replica_log_bytes_max` (drawn per
//!   run), leave a lagging replica to a snapshot.
//! - **Snapshots**: the node's half ([`Snapshots`]) packages the leader's index at its
//!   checkpoint with the applied state raft hands over; a follower fetches the package
//!   from the node the offer names, through the simulated network (delayed, lost, its
//!   node crashing mid-fetch or between the index install and the raft install), and
//!   installs it as weir-server does: not at all when it has committed the snapshot's
//!   index, the index first and never behind its own, then raft.
//! - **Segment transfer**: a follower copies its leader's index at the leader's
//!   checkpoint C and installs the copy only if C is at or above its own checkpoint and
//!   at or below its own commit index; a leader indexes the tail itself.
//!
//! Checked, at every step or at the end:
//! 1. at most one leader per term per shard;
//! 2. an entry, once committed on any node, never changes on any node;
//! 3. after healing (every node up, no partition, no loss), clients' retries of every
//!    batch are acknowledged (progress resumes) and every acknowledged batch is present
//!    exactly once on every replica (its index, then its log after the index checkpoint);
//!    no batch is present twice;
//! 4. every index holds exactly the client batches of the committed log up to its
//!    checkpoint, each once, in log order (so never an entry that was not committed);
//!    its checkpoint is at or below the node's commit index, unless a snapshot package
//!    or a restart (whose durable commit index may lag what was indexed) put it ahead,
//!    which the indexer and segment copies never do; no log is compacted past its
//!    node's index checkpoint; a leader asked for a snapshot holds an index at or above
//!    it; after healing every node's index has caught up with what it applied.
//!
//! `run(seed, &SimConfig::default())` returns what happened or the first violation, with
//! the seed to replay it: `WEIR_SIM_SEED=<seed> cargo test -p weir-raft --test sim`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;

use crate::codec::{self, DedupKey};
use crate::internals::RawNodeExt;
use crate::node::{
    raft_config, route, Driver, Incoming, Input, NodeConfig, Outbox, RejoinTarget, Shard,
};
use crate::snapshot::{SnapshotOffer, SnapshotRequest, Snapshots};
use crate::storage::{EntrySource, FlushTicket, LogStore};
use crate::{Committed, CommittedLog, Error, Result, ShardLog};

/// What a simulated disk holds for one shard: only what was flushed. Compaction and
/// snapshots really drop entries; like the WAL's meta, the disk remembers the index and
/// term of the last entry dropped.
#[derive(Default)]
pub struct MemDisk {
    /// The entries after `compacted_index`, contiguous.
    entries: Vec<Entry>,
    /// The last index removed by compaction or replaced by a snapshot (0: none).
    compacted_index: u64,
    /// The term of the entry at `compacted_index`.
    compacted_term: u64,
    hard_state: HardState,
    conf_state: ConfState,
    /// The next flush of this disk crashes the node partway: only a prefix of what was
    /// staged reaches the disk.
    tear_next_flush: bool,
    tear_keep: usize,
    /// What `save_applied_state` wrote last.
    applied_state: Option<Vec<u8>>,
}

impl MemDisk {
    fn first(&self) -> u64 {
        self.compacted_index + 1
    }

    fn last(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.compacted_index, |e| e.index)
    }

    fn write(&mut self, e: Entry) {
        assert!(
            e.index > self.compacted_index,
            "entry {} written below the compacted index {}",
            e.index,
            self.compacted_index
        );
        let keep = (e.index - self.first()) as usize;
        self.entries.truncate(keep);
        assert_eq!(self.last() + 1, e.index, "entries are contiguous");
        self.entries.push(e);
    }

    /// Drops the entries below `index`; returns the bytes they took.
    fn remove_below(&mut self, index: u64) -> u64 {
        let n = (index.saturating_sub(self.first()) as usize).min(self.entries.len());
        let mut freed = 0;
        for e in self.entries.drain(..n) {
            freed += crate::storage::entry_bytes(&e) as u64;
            self.compacted_index = e.index;
            self.compacted_term = e.term;
        }
        freed
    }

    fn bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| crate::storage::entry_bytes(e) as u64)
            .sum()
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.compacted_index {
            return Ok(self.compacted_term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.entries
            .get((idx - self.first()) as usize)
            .map(|e| e.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }
}

/// A shard's storage over a [`MemDisk`]: what is staged is lost on a crash.
pub(crate) struct MemStorage {
    disk: Arc<Mutex<MemDisk>>,
    staged: Vec<Entry>,
    hard_state: HardState,
    dirty: bool,
    snapshots: crate::storage::SnapshotSlot,
}

impl MemStorage {
    /// Opens the storage as `WalStorage::open` does: the same recovery of the hard state
    /// from the durable one and the durable log.
    fn open(shard: u32, me: u64, disk: Arc<Mutex<MemDisk>>, voters: &[u64]) -> Self {
        let hard_state = {
            let mut d = disk.lock().unwrap();
            if d.conf_state.voters.is_empty() {
                d.conf_state.voters = voters.to_vec();
            }
            let mut hs = d.hard_state.clone();
            let last_term = d.entries.last().map(|e| e.term);
            crate::storage::recover_hard_state(shard, me, &mut hs, d.first(), d.last(), last_term);
            hs
        };
        MemStorage {
            disk,
            staged: Vec::new(),
            hard_state,
            dirty: false,
            snapshots: Default::default(),
        }
    }

    /// Everything staged reaches the disk, with the hard state.
    fn write_staged(&mut self, d: &mut MemDisk) {
        for e in self.staged.drain(..) {
            d.write(e);
        }
        d.hard_state = self.hard_state.clone();
        self.dirty = false;
    }
}

/// A failure of the simulated disk, as the real driver would see one of its WAL: neither a
/// full disk (which the driver retries) nor anything the driver handles otherwise.
fn simulated_io_error(what: &str) -> Error {
    Error::Wal(weir_wal::Error::Io {
        path: "<simulated disk>".into(),
        source: std::io::Error::other(format!("simulated: {what}")),
    })
}

/// Flushes of the simulated disk complete at once (or have already failed).
pub(crate) struct Done;

impl FlushTicket for Done {
    fn wait(self) -> Result<()> {
        Ok(())
    }
}

impl LogStore for MemStorage {
    type Ticket = Done;

    fn stage_entry(&mut self, e: &Entry) -> Result<()> {
        if self.staged.last().is_some_and(|s| s.index >= e.index) {
            self.staged.retain(|s| s.index < e.index);
        }
        self.staged.push(e.clone());
        Ok(())
    }

    fn set_hard_state(&mut self, hs: &HardState) {
        if self.hard_state != *hs {
            self.hard_state = hs.clone();
            self.dirty = true;
        }
    }

    fn set_commit(&mut self, commit: u64) {
        if self.hard_state.commit != commit {
            self.hard_state.commit = commit;
            self.dirty = true;
        }
    }

    fn needs_flush(&self) -> bool {
        !self.staged.is_empty() || self.dirty
    }

    fn flush(&mut self) -> Result<Done> {
        let disk = self.disk.clone();
        let mut d = disk.lock().unwrap();
        if d.tear_next_flush {
            d.tear_next_flush = false;
            let keep = d.tear_keep.min(self.staged.len());
            for e in self.staged.drain(..).take(keep) {
                d.write(e);
            }
            return Err(simulated_io_error("a crash during fsync"));
        }
        self.write_staged(&mut d);
        Ok(Done)
    }

    fn commit_staged(&mut self) {}

    /// As `WalStorage::compact`: the hard state (with the current commit index) is made
    /// durable first, then the entries below `index` go (exactly those: the simulated disk
    /// has no segments).
    fn compact(&mut self, index: u64) -> Result<u64> {
        let disk = self.disk.clone();
        let mut d = disk.lock().unwrap();
        let index = index.min(d.last());
        assert!(
            index <= self.hard_state.commit + 1,
            "compaction below {index} past the commit index {}",
            self.hard_state.commit
        );
        if index <= d.first() {
            return Ok(0);
        }
        self.write_staged(&mut d);
        Ok(d.remove_below(index))
    }

    fn last(&self) -> u64 {
        self.disk.lock().unwrap().last()
    }

    fn disk_bytes(&self) -> u64 {
        self.disk.lock().unwrap().bytes()
    }

    fn snapshots(&self) -> &crate::storage::SnapshotSlot {
        &self.snapshots
    }

    fn snapshots_mut(&mut self) -> &mut crate::storage::SnapshotSlot {
        &mut self.snapshots
    }

    fn save_applied_state(&mut self, state: &[u8]) -> Result<()> {
        self.disk.lock().unwrap().applied_state = Some(state.to_vec());
        Ok(())
    }

    fn load_applied_state(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.disk.lock().unwrap().applied_state.clone())
    }

    /// As `WalStorage::apply_snapshot`: the log is replaced at once, durably, and the
    /// hard state written with it is the one staged, its commit index raised to `index`.
    fn apply_snapshot(&mut self, index: u64, term: u64, conf: &ConfState) -> Result<()> {
        let mut d = self.disk.lock().unwrap();
        self.hard_state.commit = self.hard_state.commit.max(index);
        d.hard_state = self.hard_state.clone();
        d.conf_state = conf.clone();
        d.entries.clear();
        d.compacted_index = index;
        d.compacted_term = term;
        self.staged.clear();
        self.dirty = false;
        Ok(())
    }
}

impl raft::Storage for MemStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let d = self.disk.lock().unwrap();
        Ok(RaftState::new(
            self.hard_state.clone(),
            d.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let d = self.disk.lock().unwrap();
        if low < d.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > d.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let max = max_size.into().unwrap_or(u64::MAX).min(usize::MAX as u64) as usize;
        let range = &d.entries[(low - d.first()) as usize..(high - d.first()) as usize];
        Ok(crate::storage::within_size(range.iter(), max))
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.disk.lock().unwrap().term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.disk.lock().unwrap().first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.disk.lock().unwrap().last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let first = self.disk.lock().unwrap().first();
        self.snapshots.answer(request_index, first)
    }
}

struct MemSource(Arc<Mutex<MemDisk>>);

impl EntrySource for MemSource {
    fn read_range(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: usize,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> Result<()> {
        let d = self.0.lock().unwrap();
        let mut total = 0;
        for e in d.entries.iter().filter(|e| e.index >= lo && e.index <= hi) {
            let mut buf = Vec::new();
            codec::encode_entry(e, &mut buf);
            total += buf.len();
            out.push((e.index, buf));
            if total >= max_bytes {
                break;
            }
        }
        Ok(())
    }

    fn first_index(&self) -> Option<u64> {
        let d = self.0.lock().unwrap();
        (!d.entries.is_empty()).then(|| d.first())
    }
}

/// The messages nodes sent, waiting in the simulated network.
#[derive(Default)]
struct Pool {
    /// (from, the sender's incarnation, to, shard, message)
    messages: Vec<(u64, u64, u64, u32, Vec<u8>)>,
}

struct SimOutbox {
    from: u64,
    incarnation: u64,
    pool: Arc<Mutex<Pool>>,
}

impl Outbox for SimOutbox {
    fn send(&self, to: u64, shard: u32, message: Vec<u8>) {
        self.pool
            .lock()
            .unwrap()
            .messages
            .push((self.from, self.incarnation, to, shard, message));
    }
}

/// How a simulation runs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Nodes (voters).
    pub nodes: u64,
    /// Shards (raft groups) per node.
    pub shards: u32,
    /// Steps with faults.
    pub fault_steps: u32,
    /// Steps allowed after healing for every batch to be acknowledged.
    pub heal_steps: u32,
    /// Clients (producers), each with one batch in flight at a time.
    pub clients: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 3,
            shards: 2,
            fault_steps: 5000,
            heal_steps: 20_000,
            clients: 8,
        }
    }
}

/// A committed entry as first seen: term, context, data, and whether it is a client's
/// batch (what an indexer indexes: neither a no-op, a cursor nor a configuration change).
type CommittedEntry = (u64, Vec<u8>, Vec<u8>, bool);

/// What a simulation did.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Batches acknowledged.
    pub acked: u64,
    /// Messages delivered, dropped, duplicated.
    pub delivered: u64,
    /// Messages dropped.
    pub dropped: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Crashes (including torn flushes).
    pub crashes: u64,
    /// Partitions.
    pub partitions: u64,
    /// Nodes wiped and restarted empty.
    pub wipes: u64,
    /// Leader elections seen (distinct (shard, term) with a leader).
    pub elections: u64,
    /// Compactions that removed entries from a node's log.
    pub compactions: u64,
    /// Snapshot packages built by leaders.
    pub snapshots_built: u64,
    /// Snapshots raft took on a follower (after the index copy was installed).
    pub snapshots_installed: u64,
    /// Snapshots offered to a replica that had committed past them, stepped into raft
    /// (which answers with its commit index) instead of fetched.
    pub snapshots_answered: u64,
    /// Copies of a leader's index a follower installed (moving its checkpoint forward).
    pub segment_copies: u64,
}

/// A property that did not hold.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The seed that produced it.
    pub seed: u64,
    /// The step it was found at.
    pub step: u64,
    /// What did not hold.
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} step {}: {} (replay: WEIR_SIM_SEED={} cargo test -p weir-raft --test sim)",
            self.seed, self.step, self.what, self.seed
        )
    }
}

/// A node's index of one shard, as weir-index builds it from the committed log: the
/// client batches indexed, in log order, and the checkpoint (the last log index covered).
/// Durable across crashes (the index commits what it holds), lost with a wipe.
#[derive(Clone, Debug, Default)]
struct SimIndex {
    checkpoint: u64,
    batches: Vec<Vec<u8>>,
}

/// A snapshot package on its leader's disk (`snapshots/out/shard-N/<package>/`): the index
/// at its checkpoint and the raft layer's applied state. It outlives a crash of its node,
/// not a wipe; a newer package of the same shard supersedes it.
struct Package {
    /// Index into `Sim::nodes` of the node that built it.
    node: usize,
    shard: u32,
    index: SimIndex,
    state: Vec<u8>,
}

/// Work of a node's snapshot half or of a segment transfer, in flight until the
/// simulator finishes it (or the node that started it crashes: `incarnation`).
enum Job {
    /// A leader packages its index for a snapshot (`Snapshots::build`).
    Build {
        node: usize,
        incarnation: u64,
        shard: u32,
        request: SnapshotRequest,
    },
    /// A follower fetches the package an offer names and installs it
    /// (`Snapshots::fetch`); `started` once it checked whether it still needs it.
    Fetch {
        node: usize,
        incarnation: u64,
        shard: u32,
        offer: Box<SnapshotOffer>,
        started: bool,
    },
    /// A follower copies its leader's index at the leader's checkpoint.
    Copy {
        node: usize,
        incarnation: u64,
        shard: u32,
        index: SimIndex,
    },
}

/// The simulated node's half of snapshots: it queues the work for the simulator, ignoring
/// a repeat while the same shard is being built or fetched (as weir-server's does).
struct SimSnapshots {
    node: usize,
    incarnation: u64,
    jobs: Arc<Mutex<Vec<Job>>>,
    building: Mutex<BTreeSet<u32>>,
    fetching: Mutex<BTreeSet<u32>>,
}

impl Snapshots for SimSnapshots {
    fn build(&self, shard: u32, request: SnapshotRequest) {
        if self.building.lock().unwrap().insert(shard) {
            self.jobs.lock().unwrap().push(Job::Build {
                node: self.node,
                incarnation: self.incarnation,
                shard,
                request,
            });
        }
    }

    fn fetch(&self, shard: u32, offer: SnapshotOffer) {
        if self.fetching.lock().unwrap().insert(shard) {
            self.jobs.lock().unwrap().push(Job::Fetch {
                node: self.node,
                incarnation: self.incarnation,
                shard,
                offer: Box::new(offer),
                started: false,
            });
        }
    }
}

struct SimNode {
    id: u64,
    disks: Vec<Arc<Mutex<MemDisk>>>,
    driver: Option<Driver<MemStorage>>,
    /// Each shard's committed log, as the node's consumers see it.
    logs: Vec<Arc<ShardLog>>,
    /// Each shard's index (see [`SimIndex`]).
    indexes: Vec<SimIndex>,
    /// Per shard, the highest checkpoint the index reached other than from this node's
    /// own commit index: a snapshot package (its checkpoint is at or above the snapshot's
    /// index, so ahead of the log it replaces) or a restart (the durable commit index may
    /// lag what was applied and indexed). Up to it the index may be ahead of the commit
    /// index; the indexer and segment copies never put it further.
    index_ahead: Vec<u64>,
    /// The node's half of snapshots in its current incarnation.
    snapshots: Option<Arc<SimSnapshots>>,
    /// Entries checked against the committed record, per shard.
    checked: Vec<u64>,
    /// Durable: the node was wiped and has not finished rejoining (`weir-node.json` says
    /// so on a real node), so a restart rejoins again.
    rejoining: bool,
    /// Starts so far: the incarnation its messages carry.
    incarnation: u64,
    /// Per peer, the oldest incarnation whose messages this node still accepts (what the
    /// peer service does with `RaftBatch.incarnation`).
    floors: HashMap<u64, u64>,
}

/// A client's batch: the shard, its key, and where it stands.
struct Batch {
    shard: u32,
    key: DedupKey,
    data: Vec<u8>,
    reply: Option<oneshot::Receiver<Result<Committed>>>,
    acked: bool,
}

struct Sim {
    seed: u64,
    cfg: SimConfig,
    rng: SmallRng,
    nodes: Vec<SimNode>,
    pool: Arc<Mutex<Pool>>,
    /// Links cut: a message between a cut node and any other is held back.
    cut: Vec<bool>,
    /// (shard, term) -> leader.
    leaders: HashMap<(u32, u64), u64>,
    /// Per shard: index -> (term, context, data) once committed anywhere.
    committed: Vec<BTreeMap<u64, CommittedEntry>>,
    batches: Vec<Batch>,
    next_seq: Vec<u64>,
    /// Snapshot builds and fetches and segment copies in flight.
    jobs: Arc<Mutex<Vec<Job>>>,
    /// Snapshot packages on the leaders' disks, by id.
    packages: BTreeMap<u64, Package>,
    next_package: u64,
    /// A leader's log past this many bytes no longer waits for lagging replicas (drawn
    /// per run, so that leaders sometimes leave a replica to catch up by snapshot).
    replica_log_bytes_max: u64,
    report: SimReport,
    step: u64,
    /// `WEIR_SIM_TRACE=1`: print every fault as it happens.
    trace: bool,
}

impl Sim {
    fn new(seed: u64, cfg: SimConfig) -> Sim {
        let pool = Arc::new(Mutex::new(Pool::default()));
        let nodes = (1..=cfg.nodes)
            .map(|id| SimNode {
                id,
                disks: (0..cfg.shards).map(|_| Arc::default()).collect(),
                driver: None,
                logs: Vec::new(),
                indexes: vec![SimIndex::default(); cfg.shards as usize],
                index_ahead: vec![0; cfg.shards as usize],
                snapshots: None,
                checked: vec![0; cfg.shards as usize],
                rejoining: false,
                incarnation: 0,
                floors: HashMap::new(),
            })
            .collect();
        let mut rng = SmallRng::seed_from_u64(seed);
        let replica_log_bytes_max = [600, 1500, 4 << 30][rng.random_range(0..3)];
        let mut sim = Sim {
            seed,
            rng,
            jobs: Arc::default(),
            packages: BTreeMap::new(),
            next_package: 0,
            replica_log_bytes_max,
            nodes,
            pool,
            cut: vec![false; cfg.nodes as usize + 1],
            leaders: HashMap::new(),
            committed: vec![BTreeMap::new(); cfg.shards as usize],
            batches: Vec::new(),
            next_seq: vec![0; cfg.clients as usize],
            report: SimReport {
                seed,
                ..Default::default()
            },
            step: 0,
            trace: std::env::var_os("WEIR_SIM_TRACE").is_some(),
            cfg,
        };
        for i in 0..sim.nodes.len() {
            sim.start(i).expect("a fresh node starts");
        }
        sim
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.seed,
            step: self.step,
            what,
        }
    }

    /// Starts node `i` over its disks, as after a crash (`rejoining`: its disks were
    /// wiped and the others have data).
    fn start(&mut self, i: usize) -> Result<()> {
        self.start_as(i, false)
    }

    /// Restarts node `i` after a crash: rejoining again (announce, confirm) when it had
    /// not finished.
    fn restart(&mut self, i: usize) -> Result<(), Violation> {
        if self.nodes[i].rejoining {
            self.start_as(i, true)
                .map_err(|e| self.violation(format!("restart failed: {e}")))?;
            self.announce(i)
        } else {
            self.start(i)
                .map_err(|e| self.violation(format!("restart failed: {e}")))
        }
    }

    fn start_as(&mut self, i: usize, rejoining: bool) -> Result<()> {
        self.note(|| format!("node {} starts (rejoining: {rejoining})", i + 1));
        let n = &self.nodes[i];
        let voters: Vec<u64> = (1..=self.cfg.nodes).collect();
        let cfg = NodeConfig {
            node_id: n.id,
            voters: voters.clone(),
            shard_count: self.cfg.shards,
            rejoining,
            replica_log_bytes_max: self.replica_log_bytes_max,
            ..NodeConfig::single("/nonexistent")
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut shards = Vec::new();
        let mut logs = Vec::new();
        for s in 0..self.cfg.shards {
            let disk = n.disks[s as usize].clone();
            let storage = MemStorage::open(s, n.id, disk.clone(), &voters);
            let log = Arc::new(ShardLog::new(s, MemSource(disk), Arc::default()));
            log.set_first(raft::Storage::first_index(&storage).unwrap_or(1));
            logs.push(log.clone());
            let mut rc = raft_config(n.id, false);
            // raft-rs draws election timeouts from its own generator: fix each one from
            // the seed instead (a range of one).
            let e = self.rng.random_range(10..25);
            rc.min_election_tick = e;
            rc.max_election_tick = e + 1;
            shards.push(Shard::open(&cfg, s, storage, log, rc, &logger)?);
        }
        let id = n.id;
        self.nodes[i].incarnation += 1;
        let outbox = Arc::new(SimOutbox {
            from: id,
            incarnation: self.nodes[i].incarnation,
            pool: self.pool.clone(),
        });
        let driver = Driver::detached(shards, outbox, id);
        let snapshots = Arc::new(SimSnapshots {
            node: i,
            incarnation: self.nodes[i].incarnation,
            jobs: self.jobs.clone(),
            building: Mutex::default(),
            fetching: Mutex::default(),
        });
        driver.serve_snapshots(snapshots.clone());
        let n = &mut self.nodes[i];
        n.driver = Some(driver);
        n.snapshots = Some(snapshots);
        n.logs = logs;
        n.checked = vec![0; self.cfg.shards as usize];
        // The durable commit index may lag what was indexed before the crash.
        for (ahead, index) in n.index_ahead.iter_mut().zip(&n.indexes) {
            *ahead = (*ahead).max(index.checkpoint);
        }
        Ok(())
    }

    /// Node `i` loses its disks and comes back empty; the others forget its old log
    /// (what `Hello` with `fresh` does on a real cluster) and then it may measure how far
    /// it must catch up.
    fn wipe(&mut self, i: usize) -> Result<(), Violation> {
        self.crash(i);
        for d in &self.nodes[i].disks {
            *d.lock().unwrap() = MemDisk::default();
        }
        // The index and the snapshot packages go with the data directory.
        let shards = self.cfg.shards as usize;
        self.nodes[i].indexes = vec![SimIndex::default(); shards];
        self.nodes[i].index_ahead = vec![0; shards];
        self.packages.retain(|_, p| p.node != i);
        self.report.wipes += 1;
        self.nodes[i].rejoining = true;
        self.start_as(i, true)
            .map_err(|e| self.violation(format!("restart after wipe failed: {e}")))?;
        self.announce(i)
    }

    /// What `announce_fresh` does: every other node forgets node `i`'s old log, then node
    /// `i` may measure its catch-up. Only called while every node is up (a real rejoining
    /// node waits for every peer to confirm).
    fn announce(&mut self, i: usize) -> Result<(), Violation> {
        if self.live().len() != self.nodes.len() {
            return Ok(());
        }
        let id = self.nodes[i].id;
        let incarnation = self.nodes[i].incarnation;
        let mut targets = vec![RejoinTarget::default(); self.cfg.shards as usize];
        for j in 0..self.nodes.len() {
            if j == i {
                continue;
            }
            self.nodes[j].floors.insert(id, incarnation);
            if let Some(d) = self.nodes[j].driver.as_mut() {
                let (done, mut rx) = oneshot::channel();
                d.handle(Input::ForgetPeer { id, done });
                if let Ok(reported) = rx.try_recv() {
                    for (t, r) in targets.iter_mut().zip(reported) {
                        t.merge(r);
                    }
                }
            }
            self.round(j)?;
        }
        if let Some(d) = self.nodes[i].driver.as_mut() {
            d.handle(Input::RejoinConfirmed { targets });
        }
        self.round(i)
    }

    fn note(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("step {}: {}", self.step, what());
        }
    }

    /// What a rejoining node does now and then (`announce_fresh`): measure again, without
    /// forgetting, how far it must catch up. Only while every node is up.
    fn measure(&mut self, i: usize) -> Result<(), Violation> {
        if !self.nodes[i].rejoining || self.live().len() != self.nodes.len() {
            return Ok(());
        }
        let mut targets = vec![RejoinTarget::default(); self.cfg.shards as usize];
        for j in (0..self.nodes.len()).filter(|j| *j != i) {
            if let Some(d) = self.nodes[j].driver.as_ref() {
                for (t, s) in targets.iter_mut().zip(&d.shards) {
                    t.merge(RejoinTarget::of(
                        s.raw.last_index(),
                        s.raw.last_term(),
                        s.raw.term(),
                    ));
                }
            }
        }
        self.note(|| format!("node {} measures again: {targets:?}", i + 1));
        if let Some(d) = self.nodes[i].driver.as_mut() {
            d.handle(Input::RejoinConfirmed { targets });
        }
        self.round(i)
    }

    fn crash(&mut self, i: usize) {
        self.note(|| format!("node {} crashes", i + 1));
        self.nodes[i].snapshots = None;
        if self.nodes[i].driver.take().is_some() {
            self.report.crashes += 1;
        }
    }

    /// Runs the Ready loop of node `i` and checks the safety properties on it. A failed
    /// round (a torn flush) is a crash.
    fn round(&mut self, i: usize) -> Result<(), Violation> {
        let Some(d) = self.nodes[i].driver.as_mut() else {
            return Ok(());
        };
        if let Err(e) = d.round() {
            self.note(|| format!("node {} round failed: {e}", i + 1));
            self.crash(i);
            return Ok(());
        }
        let still = d.rejoining();
        if self.nodes[i].rejoining && !still {
            self.note(|| format!("node {} finished rejoining", i + 1));
            self.nodes[i].rejoining = false;
        }
        self.check(i)
    }

    fn check(&mut self, i: usize) -> Result<(), Violation> {
        let id = self.nodes[i].id;
        let Some(d) = self.nodes[i].driver.as_ref() else {
            return Ok(());
        };
        let mut found = Vec::new();
        let mut checked = Vec::new();
        for s in &d.shards {
            if s.raw.is_leader() {
                found.push(((s.id, s.raw.term()), id));
            }
            let commit = s.raw.committed();
            let index = &self.nodes[i].indexes[s.id as usize];
            if index.checkpoint > commit
                && index.checkpoint > self.nodes[i].index_ahead[s.id as usize]
            {
                return Err(self.violation(format!(
                    "node {id} shard {}: index checkpoint {} ahead of the commit index {commit}",
                    s.id, index.checkpoint
                )));
            }
            // What was compacted or replaced by a snapshot here was checked before (by
            // this node, or by the leader whose snapshot replaced it).
            let first = raft::Storage::first_index(s.raw.store()).unwrap_or(1);
            if first > index.checkpoint + 1 {
                return Err(self.violation(format!(
                    "node {id} shard {}: the log starts at {first}, past the index checkpoint {}",
                    s.id, index.checkpoint
                )));
            }
            let from = (self.nodes[i].checked[s.id as usize] + 1).max(first);
            if commit >= from {
                let entries = s.raw.entries_from(from).map_err(|e| {
                    self.violation(format!(
                        "node {id} shard {} cannot read its committed entries from {from}: {e}",
                        s.id
                    ))
                })?;
                for e in entries.into_iter().take_while(|e| e.index <= commit) {
                    let batch = e.get_entry_type() == EntryType::EntryNormal
                        && !e.data.is_empty()
                        && !codec::is_cursor(&e.context);
                    let rec = (e.term, e.context.to_vec(), e.data.to_vec(), batch);
                    match self.committed[s.id as usize].get(&e.index) {
                        Some(old) if *old != rec => {
                            return Err(self.violation(format!(
                                "shard {} index {}: node {id} committed term {} but term {} was committed before; {}",
                                s.id, e.index, e.term, old.0, self.views(s.id, e.index)
                            )));
                        }
                        Some(_) => {}
                        None => {
                            if self.trace {
                                eprintln!(
                                    "step {}: node {id} shard {} commits index {} term {}",
                                    self.step, s.id, e.index, e.term
                                );
                            }
                            self.committed[s.id as usize].insert(e.index, rec);
                        }
                    }
                }
                checked.push((s.id as usize, commit));
            }
        }
        for (s, commit) in checked {
            self.nodes[i].checked[s] = commit;
        }
        for (k, leader) in found {
            if self.trace && !self.leaders.contains_key(&k) {
                eprintln!(
                    "step {}: node {leader} leads shard {} in term {}",
                    self.step, k.0, k.1
                );
            }
            match self.leaders.get(&k) {
                Some(other) if *other != leader => {
                    return Err(self.violation(format!(
                        "shard {} term {}: nodes {other} and {leader} both lead",
                        k.0, k.1
                    )))
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(k, leader);
                    self.report.elections += 1;
                }
            }
        }
        Ok(())
    }

    /// Every node's view of `shard` around `index`, for a violation's message.
    fn views(&self, shard: u32, index: u64) -> String {
        let views: Vec<String> = self
            .nodes
            .iter()
            .map(|n| match &n.driver {
                None => format!("node {} down", n.id),
                Some(d) => {
                    let s = &d.shards[shard as usize];
                    format!(
                        "node {}: term {} vote {} leader {} first {} last {}/{} commit {} term@{index}={:?} rejoining {} replicas {:?}",
                        n.id,
                        s.raw.term(),
                        s.raw.vote(),
                        s.raw.leader_id(),
                        raft::Storage::first_index(s.raw.store()).unwrap_or(0),
                        s.raw.last_index(),
                        s.raw.last_term(),
                        s.raw.committed(),
                        s.raw.term_of(index),
                        s.rejoin.is_some(),
                        if s.raw.is_leader() { s.raw.replicas().collect() } else { Vec::new() }
                    )
                }
            })
            .collect();
        views.join("; ")
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].driver.is_some())
            .collect()
    }

    /// Delivers (or drops, or duplicates) one message from the pool.
    fn deliver_one(&mut self, faults: bool) -> Result<(), Violation> {
        let n = self.pool.lock().unwrap().messages.len();
        if n == 0 {
            return Ok(());
        }
        let k = self.rng.random_range(0..n);
        let (from, incarnation, to, shard, bytes) =
            self.pool.lock().unwrap().messages.swap_remove(k);
        if self.nodes[(to - 1) as usize]
            .floors
            .get(&from)
            .is_some_and(|f| incarnation < *f)
        {
            // From the sender's life before it lost its data.
            self.report.dropped += 1;
            return Ok(());
        }
        if self.cut[from as usize] || self.cut[to as usize] {
            // Held back while the partition lasts: a partition loses messages too.
            self.report.dropped += 1;
            return Ok(());
        }
        if faults && self.rng.random_bool(0.05) {
            self.report.dropped += 1;
            return Ok(());
        }
        if faults && self.rng.random_bool(0.05) {
            self.report.duplicated += 1;
            self.pool
                .lock()
                .unwrap()
                .messages
                .push((from, incarnation, to, shard, bytes.clone()));
        }
        let i = (to - 1) as usize;
        if self.nodes[i].driver.is_none() {
            self.report.dropped += 1;
            return Ok(());
        }
        let message: raft::eraftpb::Message =
            protobuf::Message::parse_from_bytes(&bytes).expect("the simulator's own encoding");
        self.report.delivered += 1;
        // As `RaftNode::step`: a snapshot goes to the node's snapshot half, which fetches
        // and installs the package before raft sees the message, unless this replica has
        // committed past it (then raft answers it with its commit index).
        let commit = self.nodes[i]
            .driver
            .as_ref()
            .map_or(0, |d| d.shards[shard as usize].raw.committed());
        if message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot
            && message.get_snapshot().get_metadata().index <= commit
        {
            self.report.snapshots_answered += 1;
        }
        let message = match route(message, commit) {
            Incoming::Fetch(offer) => {
                self.note(|| {
                    format!(
                        "node {to} shard {shard}: snapshot at {} offered by node {from}",
                        offer.index
                    )
                });
                if let Some(h) = &self.nodes[i].snapshots {
                    h.fetch(shard, offer);
                }
                return Ok(());
            }
            Incoming::Step(message) => message,
        };
        if let Some(d) = self.nodes[i].driver.as_mut() {
            d.handle(Input::Step { shard, message });
        }
        self.round(i)
    }

    /// The indexer of node `i`: indexes shard `s`'s committed log after its checkpoint,
    /// at most `max` entries, through the `CommittedLog` weir-server's indexer reads.
    fn index_step(&mut self, i: usize, s: u32, max: u64) -> Result<(), Violation> {
        if self.nodes[i].driver.is_none() {
            return Ok(());
        }
        let log = self.nodes[i].logs[s as usize].clone();
        let from = self.nodes[i].indexes[s as usize].checkpoint + 1;
        let to = log.watermark().min((from - 1).saturating_add(max));
        if to < from {
            return Ok(());
        }
        let entries = log.read(from, to, usize::MAX).map_err(|e| {
            self.violation(format!(
                "node {} shard {s}: the indexer cannot read {from}..={to} (the log was compacted past the index checkpoint?): {e}",
                i + 1
            ))
        })?;
        let index = &mut self.nodes[i].indexes[s as usize];
        index.batches.extend(entries.into_iter().map(|e| e.data));
        index.checkpoint = to;
        self.check_index(i, s)
    }

    /// The index of node `i` holds exactly the client batches of the committed log up to
    /// its checkpoint, in log order: none that was not committed, none missing, none twice
    /// (the log holds each once: checked at the end).
    fn check_index(&self, i: usize, s: u32) -> Result<(), Violation> {
        let index = &self.nodes[i].indexes[s as usize];
        let committed = &self.committed[s as usize];
        let known = committed.range(..=index.checkpoint).count() as u64;
        if known != index.checkpoint {
            return Err(self.violation(format!(
                "node {} shard {s}: the index reaches {} but only {known} of those entries were ever committed",
                i + 1,
                index.checkpoint
            )));
        }
        let expected: Vec<&Vec<u8>> = committed
            .range(..=index.checkpoint)
            .filter(|(_, r)| r.3)
            .map(|(_, r)| &r.2)
            .collect();
        if expected.len() != index.batches.len()
            || expected.iter().zip(&index.batches).any(|(a, b)| *a != b)
        {
            let show = |v: &mut dyn Iterator<Item = &Vec<u8>>| {
                v.map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            return Err(self.violation(format!(
                "node {} shard {s}: the index at checkpoint {} holds [{}], the committed log up to it [{}]",
                i + 1,
                index.checkpoint,
                show(&mut index.batches.iter()),
                show(&mut expected.into_iter())
            )));
        }
        Ok(())
    }

    /// Node `i` compacts shard `s` behind its index checkpoint, as weir-server's indexer
    /// asks (`RaftNode::compact(shard, checkpoint + 1)`), through the driver: the shard
    /// clamps it (applied index, replicas cursor, what followers lack).
    fn compact_step(&mut self, i: usize, s: u32) -> Result<(), Violation> {
        let below = self.nodes[i].indexes[s as usize].checkpoint + 1;
        let Some(d) = self.nodes[i].driver.as_mut() else {
            return Ok(());
        };
        let first = |d: &Driver<MemStorage>| {
            raft::Storage::first_index(d.shards[s as usize].raw.store()).unwrap_or(1)
        };
        let before = first(d);
        d.handle(Input::Compact { shard: s, below });
        let after = first(d);
        if after > before {
            self.note(|| format!("node {} shard {s}: compacted below {after}", i + 1));
            self.report.compactions += 1;
        }
        self.round(i)
    }

    /// A follower of shard `s` (node `i`) starts copying its leader's index at the
    /// leader's checkpoint; the copy arrives later ([`Sim::install_copy`]).
    fn copy_start(&mut self, i: usize, s: u32) {
        let Some(d) = self.nodes[i].driver.as_ref() else {
            return;
        };
        let leader = d.shards[s as usize].raw.leader_id();
        if leader == 0 || leader == self.nodes[i].id {
            return;
        }
        let j = (leader - 1) as usize;
        if self.nodes[j].driver.is_none() || self.cut[leader as usize] || self.cut[i + 1] {
            return;
        }
        let index = self.nodes[j].indexes[s as usize].clone();
        self.jobs.lock().unwrap().push(Job::Copy {
            node: i,
            incarnation: self.nodes[i].incarnation,
            shard: s,
            index,
        });
    }

    /// The rule of segment transfer: a follower installs a copy of its leader's index at
    /// checkpoint C only if C is at or above its own checkpoint (never back) and at or
    /// below its own commit index (an index is never ahead of the log it was built for);
    /// otherwise it ignores it.
    fn install_copy(
        &mut self,
        i: usize,
        incarnation: u64,
        s: u32,
        copy: SimIndex,
    ) -> Result<(), Violation> {
        let Some(d) = self.nodes[i].driver.as_ref() else {
            return Ok(());
        };
        if self.nodes[i].incarnation != incarnation {
            return Ok(());
        }
        let commit = d.shards[s as usize].raw.committed();
        let own = self.nodes[i].indexes[s as usize].checkpoint;
        if copy.checkpoint < own || copy.checkpoint > commit {
            return Ok(());
        }
        if copy.checkpoint > own {
            self.note(|| {
                format!(
                    "node {} shard {s}: index copied at {} (own {own}, commit {commit})",
                    i + 1,
                    copy.checkpoint
                )
            });
            self.report.segment_copies += 1;
        }
        self.nodes[i].indexes[s as usize] = copy;
        self.check_index(i, s)
    }

    /// Finishes one job in flight, picked at random (so they complete in any order); with
    /// `faults`, it may fail, take longer, or crash its node.
    fn job_step(&mut self, faults: bool) -> Result<(), Violation> {
        let n = self.jobs.lock().unwrap().len();
        if n == 0 {
            return Ok(());
        }
        let k = self.rng.random_range(0..n);
        let job = self.jobs.lock().unwrap().swap_remove(k);
        match job {
            Job::Build {
                node,
                incarnation,
                shard,
                request,
            } => self.finish_build(node, incarnation, shard, request, faults),
            Job::Fetch {
                node,
                incarnation,
                shard,
                offer,
                started,
            } => self.fetch_step(node, incarnation, shard, offer, started, faults),
            Job::Copy {
                node,
                incarnation,
                shard,
                index,
            } => {
                if faults && self.rng.random_bool(0.1) {
                    return Ok(());
                }
                self.install_copy(node, incarnation, shard, index)
            }
        }
    }

    /// Whether node `i` still runs the incarnation that started a job.
    fn alive(&self, i: usize, incarnation: u64) -> bool {
        self.nodes[i].driver.is_some() && self.nodes[i].incarnation == incarnation
    }

    /// A leader packages its index for the snapshot raft asked for, and tells raft
    /// (`RaftNode::snapshot_ready`).
    fn finish_build(
        &mut self,
        i: usize,
        incarnation: u64,
        shard: u32,
        request: SnapshotRequest,
        faults: bool,
    ) -> Result<(), Violation> {
        if !self.alive(i, incarnation) {
            return Ok(());
        }
        if let Some(h) = &self.nodes[i].snapshots {
            h.building.lock().unwrap().remove(&shard);
        }
        if faults && self.rng.random_bool(0.1) {
            // The build failed (a full disk, say): raft asks again.
            return Ok(());
        }
        let index = self.nodes[i].indexes[shard as usize].clone();
        if index.checkpoint < request.index {
            return Err(self.violation(format!(
                "node {} shard {shard}: a snapshot at {} was asked for but the index is at {}: the log was compacted past the index checkpoint",
                i + 1,
                request.index,
                index.checkpoint
            )));
        }
        let id = self.next_package;
        self.next_package += 1;
        // A newer package supersedes every older one of the shard on that node.
        self.packages
            .retain(|_, p| !(p.node == i && p.shard == shard));
        self.note(|| {
            format!(
                "node {} shard {shard}: package {id} at {} (index at {})",
                i + 1,
                request.index,
                index.checkpoint
            )
        });
        self.packages.insert(
            id,
            Package {
                node: i,
                shard,
                index,
                state: request.state,
            },
        );
        self.report.snapshots_built += 1;
        let data = format!("{}/{id}", i + 1).into_bytes();
        if let Some(d) = self.nodes[i].driver.as_mut() {
            d.handle(Input::SnapshotReady {
                shard,
                index: request.index,
                term: request.term,
                data,
            });
        }
        self.round(i)
    }

    /// One step of a follower's fetch of a snapshot package, as weir-server's: a replica
    /// that has committed the snapshot's index does not fetch it; the package comes from
    /// the node the offer names (which must be up and reachable, and still hold it); the
    /// index is installed first, and only when it is ahead of the one it replaces; then
    /// raft is handed the offer and the applied state.
    fn fetch_step(
        &mut self,
        i: usize,
        incarnation: u64,
        shard: u32,
        offer: Box<SnapshotOffer>,
        started: bool,
        faults: bool,
    ) -> Result<(), Violation> {
        if !self.alive(i, incarnation) {
            return Ok(());
        }
        let commit = self.nodes[i].driver.as_ref().expect("alive").shards[shard as usize]
            .raw
            .committed();
        if !started || (faults && self.rng.random_bool(0.3)) {
            if commit >= offer.index {
                self.note(|| {
                    format!(
                        "node {} shard {shard}: snapshot at {} not fetched, commit {commit}",
                        i + 1,
                        offer.index
                    )
                });
                self.fetch_done(i, shard);
                return Ok(());
            }
            // The transfer takes a while.
            self.jobs.lock().unwrap().push(Job::Fetch {
                node: i,
                incarnation,
                shard,
                offer,
                started: true,
            });
            return Ok(());
        }
        let lost = faults && self.rng.random_bool(0.05);
        let Some((index, state)) = self.package(i, shard, &offer).filter(|_| !lost) else {
            // Failed: it resumes when the leader offers again.
            self.note(|| format!("node {} shard {shard}: snapshot fetch failed", i + 1));
            self.fetch_done(i, shard);
            return Ok(());
        };
        if faults && self.rng.random_bool(0.05) {
            self.note(|| format!("node {} crashes while fetching a snapshot", i + 1));
            self.crash(i);
            return Ok(());
        }
        self.install_package(i, shard, offer, index, state, faults)
    }

    /// The package `offer` names, as node `i` fetches it: from the node that built it,
    /// which must be up, reachable, and still hold it.
    fn package(&self, i: usize, shard: u32, offer: &SnapshotOffer) -> Option<(SimIndex, Vec<u8>)> {
        let (node, id) = std::str::from_utf8(&offer.data).ok()?.split_once('/')?;
        let (node, id) = (node.parse::<u64>().ok()?, id.parse::<u64>().ok()?);
        let p = self.packages.get(&id)?;
        let reachable =
            self.nodes[p.node].driver.is_some() && !self.cut[p.node + 1] && !self.cut[i + 1];
        (p.node as u64 + 1 == node && p.shard == shard && reachable)
            .then(|| (p.index.clone(), p.state.clone()))
    }

    /// Node `i` installs a fetched package as weir-server does: the index first, unless
    /// its own is as far already, then raft is handed the offer and the applied state.
    fn install_package(
        &mut self,
        i: usize,
        shard: u32,
        offer: Box<SnapshotOffer>,
        index: SimIndex,
        state: Vec<u8>,
        faults: bool,
    ) -> Result<(), Violation> {
        if self.nodes[i].indexes[shard as usize].checkpoint < index.checkpoint {
            let n = &mut self.nodes[i];
            n.index_ahead[shard as usize] = n.index_ahead[shard as usize].max(index.checkpoint);
            n.indexes[shard as usize] = index;
            self.check_index(i, shard)?;
        }
        if faults && self.rng.random_bool(0.05) {
            self.note(|| {
                format!(
                    "node {} crashes between installing the index and the snapshot",
                    i + 1
                )
            });
            self.crash(i);
            return Ok(());
        }
        let (reply, mut rx) = oneshot::channel();
        let at = offer.index;
        if let Some(d) = self.nodes[i].driver.as_mut() {
            d.handle(Input::InstallSnapshot {
                shard,
                offer: *offer,
                state,
                reply,
            });
        }
        self.fetch_done(i, shard);
        let taken = matches!(rx.try_recv(), Ok(Ok(true)));
        self.note(|| {
            format!(
                "node {} shard {shard}: snapshot at {at} taken: {taken}",
                i + 1
            )
        });
        if taken {
            self.report.snapshots_installed += 1;
        }
        self.round(i)
    }

    fn fetch_done(&self, i: usize, shard: u32) {
        if let Some(h) = &self.nodes[i].snapshots {
            h.fetching.lock().unwrap().remove(&shard);
        }
    }

    fn tick(&mut self, i: usize) -> Result<(), Violation> {
        if let Some(d) = self.nodes[i].driver.as_mut() {
            d.tick_all();
        }
        self.round(i)
    }

    /// A client sends batch `b` (again) to a random live node.
    fn send(&mut self, b: usize) -> Result<(), Violation> {
        let live = self.live();
        if live.is_empty() || self.batches[b].acked {
            return Ok(());
        }
        let i = live[self.rng.random_range(0..live.len())];
        let (tx, rx) = oneshot::channel();
        let batch = &mut self.batches[b];
        batch.reply = Some(rx);
        let input = Input::Propose {
            shard: batch.shard,
            key: Some(batch.key.clone()),
            data: batch.data.clone(),
            reply: tx,
        };
        if let Some(d) = self.nodes[i].driver.as_mut() {
            d.handle(input);
        }
        self.round(i)
    }

    /// Collects answers; returns the batches that need sending (again).
    fn settle(&mut self) -> Vec<usize> {
        let mut again = Vec::new();
        for (b, batch) in self.batches.iter_mut().enumerate() {
            if batch.acked {
                continue;
            }
            match batch.reply.as_mut().map(|r| r.try_recv()) {
                Some(Ok(Ok(_))) => {
                    batch.acked = true;
                    batch.reply = None;
                    self.report.acked += 1;
                }
                Some(Err(oneshot::error::TryRecvError::Empty)) => {}
                // Refused (not the leader, overwritten, node crashed): the client retries
                // with the same key, as real clients do.
                _ => again.push(b),
            }
        }
        again
    }

    fn new_batch(&mut self) {
        let c = self.rng.random_range(0..self.cfg.clients) as usize;
        // One batch in flight per client, as with a real agent.
        if self
            .batches
            .iter()
            .any(|b| !b.acked && b.key.producer == format!("client-{c}"))
        {
            return;
        }
        self.next_seq[c] += 1;
        let seq = self.next_seq[c];
        let shard = self.rng.random_range(0..self.cfg.shards);
        self.batches.push(Batch {
            shard,
            key: DedupKey {
                producer: format!("client-{c}"),
                sequence: seq,
            },
            data: format!("client-{c}-batch-{seq}").into_bytes(),
            reply: None,
            acked: false,
        });
        let b = self.batches.len() - 1;
        let _ = self.send(b);
    }

    fn fault_step(&mut self) -> Result<(), Violation> {
        let live = self.live();
        let roll = self.rng.random_range(0..1000);
        match roll {
            0..=409 => self.deliver_one(true)?,
            410..=689 => {
                if !live.is_empty() {
                    let i = live[self.rng.random_range(0..live.len())];
                    self.tick(i)?;
                }
            }
            690..=789 => self.new_batch(),
            790..=859 => {
                for b in self.settle() {
                    self.send(b)?;
                }
            }
            860..=939 if !live.is_empty() => {
                let i = live[self.rng.random_range(0..live.len())];
                let s = self.rng.random_range(0..self.cfg.shards);
                self.background_step(i, s, true)?;
            }
            940..=944 => {
                // Crash, sometimes in the middle of a flush (a torn write).
                if live.len() > 1 {
                    let i = live[self.rng.random_range(0..live.len())];
                    if self.rng.random_bool(0.5) {
                        let s = self.rng.random_range(0..self.cfg.shards) as usize;
                        let keep = self.rng.random_range(0..3);
                        self.note(|| {
                            format!(
                                "node {} shard {s}: next flush torn after {keep} entries",
                                i + 1
                            )
                        });
                        let mut d = self.nodes[i].disks[s].lock().unwrap();
                        d.tear_next_flush = true;
                        d.tear_keep = keep;
                    } else {
                        self.crash(i);
                    }
                }
            }
            945..=974 => {
                let down: Vec<usize> = (0..self.nodes.len())
                    .filter(|i| self.nodes[*i].driver.is_none())
                    .collect();
                if !down.is_empty() {
                    let i = down[self.rng.random_range(0..down.len())];
                    self.restart(i)?;
                }
            }
            975..=977 => {
                // Wipe a node, only while every other node is up (a real wiped node waits
                // for every peer to confirm it forgot the node's old log) and none is
                // still rejoining: two wiped replicas of three are a lost majority, which
                // no protocol can make safe (the shard then waits for an operator).
                if live.len() == self.nodes.len() && self.nodes.iter().all(|n| !n.rejoining) {
                    let i = live[self.rng.random_range(0..live.len())];
                    self.wipe(i)?;
                }
            }
            978..=979 => {
                let i = self.rng.random_range(0..self.nodes.len());
                self.measure(i)?;
            }
            980..=986 => {
                let n = self.rng.random_range(1..=self.cfg.nodes) as usize;
                if !self.cut[n] && self.cut.iter().filter(|c| **c).count() == 0 {
                    self.note(|| format!("node {n} cut off"));
                    self.cut[n] = true;
                    self.report.partitions += 1;
                }
            }
            _ => {
                self.note(|| "partition healed".into());
                self.cut.iter_mut().for_each(|c| *c = false)
            }
        }
        Ok(())
    }

    /// What runs beside raft on node `i`, shard `s`, picked at random: its indexer (every
    /// leader's; a follower's now and then, as followers mostly copy their leader's
    /// index), a compaction behind the index checkpoint, the start of a segment copy, or
    /// one step of a snapshot build, fetch or copy in flight anywhere.
    fn background_step(&mut self, i: usize, s: u32, faults: bool) -> Result<(), Violation> {
        match self.rng.random_range(0..8) {
            0..=2 => {
                let leads = self.nodes[i]
                    .driver
                    .as_ref()
                    .is_some_and(|d| d.shards[s as usize].raw.is_leader());
                if leads || self.rng.random_bool(0.3) {
                    let max = self.rng.random_range(1..=20);
                    self.index_step(i, s, max)?;
                }
                Ok(())
            }
            3 => self.compact_step(i, s),
            4 => {
                self.copy_start(i, s);
                Ok(())
            }
            _ => self.job_step(faults),
        }
    }

    /// Heals everything and runs without faults until every batch is acknowledged.
    fn heal(&mut self) -> Result<(), Violation> {
        self.cut.iter_mut().for_each(|c| *c = false);
        for i in 0..self.nodes.len() {
            for d in &self.nodes[i].disks {
                d.lock().unwrap().tear_next_flush = false;
            }
            if self.nodes[i].driver.is_none() {
                self.restart(i)?;
            }
        }
        // A rejoining node that could not announce itself while some node was down does
        // it now that all are up.
        for i in 0..self.nodes.len() {
            if self.nodes[i].rejoining {
                self.announce(i)?;
            }
        }
        for step in 0..self.cfg.heal_steps {
            self.step += 1;
            if step % 8 == 0 {
                for i in 0..self.nodes.len() {
                    self.tick(i)?;
                }
            }
            for _ in 0..4 {
                self.deliver_one(false)?;
            }
            if step % 4 == 0 {
                let i = self.rng.random_range(0..self.nodes.len());
                let s = self.rng.random_range(0..self.cfg.shards);
                self.background_step(i, s, false)?;
            }
            if step % 2000 == 1999 {
                for i in 0..self.nodes.len() {
                    self.measure(i)?;
                }
            }
            if step % 16 == 0 {
                let again = self.settle();
                if again.is_empty() && self.batches.iter().all(|b| b.acked) {
                    return Ok(());
                }
                for b in again {
                    self.send(b)?;
                }
            }
        }
        let pending = self.batches.iter().filter(|b| !b.acked).count();
        Err(self.violation(format!(
            "no progress after healing: {pending} batches still unacknowledged after {} steps",
            self.cfg.heal_steps
        )))
    }

    /// Every replica holds every acknowledged batch exactly once and no batch twice, and
    /// every node's index, once it has caught up, holds the same.
    fn check_final(&mut self) -> Result<(), Violation> {
        // Let every replica catch up to the leaders' commit (by snapshot where the log it
        // needs was compacted: a failed build is asked for again only after
        // `SNAPSHOT_REBUILD_TICKS`, a lost offer after `SNAPSHOT_TICKS`).
        for round in 0..2000 {
            if round >= 200 && self.caught_up() {
                break;
            }
            for i in 0..self.nodes.len() {
                self.tick(i)?;
            }
            let mut budget = 100_000;
            while budget > 0
                && !(self.pool.lock().unwrap().messages.is_empty()
                    && self.jobs.lock().unwrap().is_empty())
            {
                self.deliver_one(false)?;
                self.job_step(false)?;
                budget -= 1;
            }
        }
        self.converge_indexes()?;
        for i in 0..self.nodes.len() {
            for s in 0..self.cfg.shards {
                self.check_replica(i, s)?;
            }
        }
        Ok(())
    }

    /// Whether every node's commit index of every shard is the same, and nothing is in
    /// flight.
    fn caught_up(&self) -> bool {
        self.pool.lock().unwrap().messages.is_empty()
            && self.jobs.lock().unwrap().is_empty()
            && (0..self.cfg.shards as usize).all(|s| {
                let commits: BTreeSet<u64> = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.driver.as_ref())
                    .map(|d| d.shards[s].raw.committed())
                    .collect();
                commits.len() == 1
            })
    }

    /// Every leader indexes its log to the end; every follower copies its leader's index
    /// (as segment transfer does) and indexes what follows itself.
    fn converge_indexes(&mut self) -> Result<(), Violation> {
        for s in 0..self.cfg.shards {
            let leader = |sim: &Sim, i: usize| {
                sim.nodes[i]
                    .driver
                    .as_ref()
                    .map_or(0, |d| d.shards[s as usize].raw.leader_id())
            };
            for i in 0..self.nodes.len() {
                if leader(self, i) == self.nodes[i].id {
                    self.index_step(i, s, u64::MAX)?;
                }
            }
            for i in 0..self.nodes.len() {
                let l = leader(self, i);
                if l != 0 && l != self.nodes[i].id {
                    let copy = self.nodes[(l - 1) as usize].indexes[s as usize].clone();
                    let incarnation = self.nodes[i].incarnation;
                    self.install_copy(i, incarnation, s, copy)?;
                }
                self.index_step(i, s, u64::MAX)?;
            }
        }
        Ok(())
    }

    /// Node `i`'s replica of shard `s`: its index, then its log after the index
    /// checkpoint up to the commit index, hold every acknowledged batch exactly once and
    /// no batch twice; the index has caught up with what was applied.
    fn check_replica(&self, i: usize, s: u32) -> Result<(), Violation> {
        let id = self.nodes[i].id;
        let d = self.nodes[i].driver.as_ref().expect("healed");
        let shard = &d.shards[s as usize];
        let commit = shard.raw.committed();
        let index = &self.nodes[i].indexes[s as usize];
        let applied = self.nodes[i].logs[s as usize].watermark();
        if index.checkpoint < applied {
            return Err(self.violation(format!(
                "node {id} shard {s}: the index stays at {} behind the applied index {applied}",
                index.checkpoint
            )));
        }
        let mut count: HashMap<&[u8], usize> = HashMap::new();
        for b in &index.batches {
            *count.entry(b).or_default() += 1;
        }
        let tail = if commit > index.checkpoint {
            shard.raw.entries_from(index.checkpoint + 1).map_err(|e| {
                self.violation(format!(
                    "node {id} shard {s}: cannot read the log after the index checkpoint {}: {e}",
                    index.checkpoint
                ))
            })?
        } else {
            Vec::new()
        };
        for e in tail.iter().filter(|e| e.index <= commit) {
            if e.get_entry_type() == EntryType::EntryNormal
                && !e.data.is_empty()
                && !codec::is_cursor(&e.context)
            {
                *count.entry(&e.data).or_default() += 1;
            }
        }
        if let Some((data, n)) = count.iter().find(|(_, n)| **n > 1) {
            return Err(self.violation(format!(
                "node {id} shard {s}: {} stored {n} times",
                String::from_utf8_lossy(data)
            )));
        }
        for b in self.batches.iter().filter(|b| b.acked && b.shard == s) {
            if !count.contains_key(b.data.as_slice()) {
                return Err(self.violation(format!(
                    "node {id} shard {s} (commit {commit}, index at {}): acknowledged {} is missing; {}",
                    index.checkpoint,
                    String::from_utf8_lossy(&b.data),
                    self.views(s, commit)
                )));
            }
        }
        Ok(())
    }
}

/// Runs one simulation.
///
/// # Errors
/// The first property that did not hold, with the seed and step.
pub fn run(seed: u64, cfg: &SimConfig) -> Result<SimReport, Violation> {
    let mut sim = Sim::new(seed, cfg.clone());
    for _ in 0..cfg.fault_steps {
        sim.step += 1;
        sim.fault_step()?;
    }
    sim.heal()?;
    sim.check_final()?;
    Ok(sim.report)
}
