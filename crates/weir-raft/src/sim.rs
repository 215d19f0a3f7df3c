//! A deterministic simulation of the raft layer: the real `Shard` and `Driver` code of
//! `node.rs` (proposals, dedup, waiters, rejoin, leader balancing), with the network, the
//! clock and the disk replaced by simulated ones driven from one seeded random generator.
//!
//! - **Network**: every raft message goes into one pool; each step may deliver any of
//!   them (reordering), drop it, deliver it twice, or hold it while a partition cuts its
//!   link.
//! - **Clock**: the raft layer's time is its ticks; the simulator ticks nodes when it
//!   chooses. raft-rs randomises election timeouts with its own generator, so each
//!   (node, shard, incarnation) gets a fixed timeout drawn from the seed instead.
//! - **Disk**: [`MemDisk`] keeps what was flushed; a crash loses what was staged and not
//!   flushed, and a crash *during* a flush keeps a random prefix of it (a torn write).
//!
//! Checked, at every step or at the end:
//! 1. at most one leader per term per shard;
//! 2. an entry, once committed on any node, never changes on any node;
//! 3. after healing (every node up, no partition, no loss), clients' retries of every
//!    batch are acknowledged (progress resumes) and every acknowledged batch is present
//!    exactly once on every replica; no batch is present twice.
//!
//! `run(seed, &SimConfig::default())` returns what happened or the first violation, with
//! the seed to replay it: `WEIR_SIM_SEED=<seed> cargo test -p weir-raft --test sim`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;

use crate::codec::{self, DedupKey};
use crate::internals::RawNodeExt;
use crate::node::{raft_config, Driver, Input, NodeConfig, Outbox, RejoinTarget, Shard};
use crate::storage::{EntrySource, FlushTicket, LogStore};
use crate::{Committed, Error, Result, ShardLog};

/// What a simulated disk holds for one shard: only what was flushed.
#[derive(Default)]
pub struct MemDisk {
    entries: Vec<Entry>,
    hard_state: HardState,
    conf_state: ConfState,
    /// The next flush of this disk crashes the node partway: only a prefix of what was
    /// staged reaches the disk.
    tear_next_flush: bool,
    tear_keep: usize,
    /// What `save_applied_state` wrote (never, as long as nothing compacts).
    applied_state: Option<Vec<u8>>,
}

impl MemDisk {
    fn first(&self) -> u64 {
        self.entries.first().map_or(1, |e| e.index)
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.index)
    }

    fn write(&mut self, e: Entry) {
        let keep = e.index.saturating_sub(self.first()) as usize;
        self.entries.truncate(keep);
        debug_assert_eq!(self.last() + 1, e.index, "entries are contiguous");
        self.entries.push(e);
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
    fn open(shard: u32, me: u64, disk: Arc<Mutex<MemDisk>>, voters: &[u64]) -> Self {
        let hard_state = {
            let mut d = disk.lock().unwrap();
            if d.conf_state.voters.is_empty() {
                d.conf_state.voters = voters.to_vec();
            }
            // As WalStorage: a commit index past the durable log came from a torn tail,
            // and so does a term older than the log's.
            let last = d.last();
            if d.hard_state.commit > last {
                d.hard_state.commit = last;
            }
            if let Some(t) = d.entries.last().map(|e| e.term) {
                let mut hs = d.hard_state.clone();
                crate::storage::reconcile_term(shard, &mut hs, t, me);
                d.hard_state = hs;
            }
            d.hard_state.clone()
        };
        MemStorage {
            disk,
            staged: Vec::new(),
            hard_state,
            dirty: false,
            snapshots: Default::default(),
        }
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
        let mut d = self.disk.lock().unwrap();
        if d.tear_next_flush {
            d.tear_next_flush = false;
            let keep = d.tear_keep.min(self.staged.len());
            for e in self.staged.drain(..).take(keep) {
                d.write(e);
            }
            return Err(simulated_io_error("a crash during fsync"));
        }
        for e in self.staged.drain(..) {
            d.write(e);
        }
        d.hard_state = self.hard_state.clone();
        self.dirty = false;
        Ok(Done)
    }

    fn commit_staged(&mut self) {}

    fn compact(&mut self, _index: u64) -> Result<u64> {
        Ok(0)
    }

    fn last(&self) -> u64 {
        self.disk.lock().unwrap().last()
    }

    fn disk_bytes(&self) -> u64 {
        0
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

    fn apply_snapshot(&mut self, index: u64, _term: u64, _conf: &ConfState) -> Result<()> {
        // The simulated disk is never compacted (`compact` above), so no leader asks for
        // a snapshot and none reaches a follower.
        Err(simulated_io_error(&format!(
            "the simulator does not compact, yet a snapshot at {index} arrived"
        )))
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
        let max = max_size.into().unwrap_or(u64::MAX).min(usize::MAX as u64) as usize;
        let range = &d.entries[(low - d.first()) as usize..(high - d.first()) as usize];
        Ok(crate::storage::within_size(range.iter(), max))
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let d = self.disk.lock().unwrap();
        if idx == 0 {
            return Ok(0);
        }
        if idx < d.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        d.entries
            .get((idx - d.first()) as usize)
            .map(|e| e.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
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

/// A committed entry as first seen: term, context, data.
type CommittedEntry = (u64, Vec<u8>, Vec<u8>);

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

struct SimNode {
    id: u64,
    disks: Vec<Arc<Mutex<MemDisk>>>,
    driver: Option<Driver<MemStorage>>,
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
                checked: vec![0; cfg.shards as usize],
                rejoining: false,
                incarnation: 0,
                floors: HashMap::new(),
            })
            .collect();
        let mut sim = Sim {
            seed,
            rng: SmallRng::seed_from_u64(seed),
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
            ..NodeConfig::single("/nonexistent")
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut shards = Vec::new();
        for s in 0..self.cfg.shards {
            let disk = n.disks[s as usize].clone();
            let storage = MemStorage::open(s, n.id, disk.clone(), &voters);
            let log = Arc::new(ShardLog::new(s, MemSource(disk), Arc::default()));
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
        let n = &self.nodes[i];
        self.nodes[i].driver = Some(Driver::detached(shards, outbox, n.id));
        self.nodes[i].checked = vec![0; self.cfg.shards as usize];
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
            let from = self.nodes[i].checked[s.id as usize] + 1;
            if commit >= from {
                let entries = s.raw.entries_from(from).map_err(|e| {
                    self.violation(format!(
                        "node {id} shard {} cannot read its committed entries from {from}: {e}",
                        s.id
                    ))
                })?;
                for e in entries.into_iter().take_while(|e| e.index <= commit) {
                    let rec = (e.term, e.context.to_vec(), e.data.to_vec());
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
                        "node {}: term {} vote {} last {}/{} commit {} term@{index}={:?} rejoining {}",
                        n.id,
                        s.raw.term(),
                        s.raw.vote(),
                        s.raw.last_index(),
                        s.raw.last_term(),
                        s.raw.committed(),
                        s.raw.term_of(index),
                        s.rejoin.is_some()
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
        let Some(d) = self.nodes[i].driver.as_mut() else {
            self.report.dropped += 1;
            return Ok(());
        };
        let message: raft::eraftpb::Message =
            protobuf::Message::parse_from_bytes(&bytes).expect("the simulator's own encoding");
        d.handle(Input::Step { shard, message });
        self.report.delivered += 1;
        self.round(i)
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
            0..=449 => self.deliver_one(true)?,
            450..=749 => {
                if !live.is_empty() {
                    let i = live[self.rng.random_range(0..live.len())];
                    self.tick(i)?;
                }
            }
            750..=859 => self.new_batch(),
            860..=939 => {
                for b in self.settle() {
                    self.send(b)?;
                }
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

    /// Every replica holds every acknowledged batch exactly once and no batch twice.
    fn check_final(&mut self) -> Result<(), Violation> {
        // Let every replica catch up to the leaders' commit.
        for _ in 0..200 {
            for i in 0..self.nodes.len() {
                self.tick(i)?;
            }
            let mut budget = 100_000;
            while budget > 0 && !self.pool.lock().unwrap().messages.is_empty() {
                self.deliver_one(false)?;
                budget -= 1;
            }
        }
        for i in 0..self.nodes.len() {
            let id = self.nodes[i].id;
            let d = self.nodes[i].driver.as_ref().expect("healed");
            for s in &d.shards {
                let commit = s.raw.committed();
                let entries = s.raw.entries_from(1).unwrap_or_default();
                let mut count: HashMap<Vec<u8>, usize> = HashMap::new();
                for e in entries.iter().filter(|e| e.index <= commit) {
                    if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                        *count.entry(e.data.to_vec()).or_default() += 1;
                    }
                }
                if let Some((data, n)) = count.iter().find(|(_, n)| **n > 1) {
                    return Err(self.violation(format!(
                        "node {id} shard {}: {} stored {n} times",
                        s.id,
                        String::from_utf8_lossy(data)
                    )));
                }
                for b in self.batches.iter().filter(|b| b.acked && b.shard == s.id) {
                    if !count.contains_key(&b.data) {
                        return Err(self.violation(format!(
                            "node {id} shard {} (commit {commit}): acknowledged {} is missing",
                            s.id,
                            String::from_utf8_lossy(&b.data)
                        )));
                    }
                }
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
