//! `raft::Storage` over one shard's weir-wal [`Wal`].
//!
//! Owned by the shard's `RawNode` (so no locks): the driver thread mutates it through
//! `RawNode::mut_store()`. It only ever reflects what is durable: entries are staged in the
//! WAL, flushed, and only after the flush completes does [`WalStorage::commit_staged`] make
//! them visible to raft through `entries()`/`term()`/`last_index()`.

use std::cell::Cell;
use std::collections::VecDeque;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use weir_wal::{SyncTicket, Wal, WalReader};

use crate::codec::{self, Meta};
use crate::{Error, Result};

/// What the driver needs of a shard's log storage beyond `raft::Storage`: stage what a
/// Ready carries, make it durable, and only then show it to raft. [`WalStorage`] is the
/// real one; the simulator (`crate::sim`) has an in-memory one that can lose what was not
/// yet durable.
pub(crate) trait LogStore: raft::Storage + Send + 'static {
    /// Completes when a flush is durable.
    type Ticket: FlushTicket;
    /// Stages one entry (a conflicting suffix is replaced). On error nothing was staged.
    fn stage_entry(&mut self, e: &Entry) -> Result<()>;
    /// Stages the hard state.
    fn set_hard_state(&mut self, hs: &HardState);
    /// Stages a new commit index.
    fn set_commit(&mut self, commit: u64);
    /// Whether a flush has anything to write.
    fn needs_flush(&self) -> bool;
    /// Starts making everything staged durable.
    fn flush(&mut self) -> Result<Self::Ticket>;
    /// After the flush is durable: shows the staged entries to raft.
    fn commit_staged(&mut self);
    /// Drops entries below `index` (already applied); returns bytes freed.
    fn compact(&mut self, index: u64) -> Result<u64>;
    /// Last durable index.
    fn last(&self) -> u64;
    /// Bytes on disk.
    fn disk_bytes(&self) -> u64;
    /// The snapshot this leader's node packaged (see [`SnapshotSlot`]).
    fn snapshots(&self) -> &SnapshotSlot;
    /// The same, to change.
    fn snapshots_mut(&mut self) -> &mut SnapshotSlot;
    /// Replaces the whole log by a snapshot at `index` (whose entry had term `term`): the
    /// log is empty and its next entry is `index + 1`; the commit index is at least
    /// `index`. Durable when it returns.
    fn apply_snapshot(&mut self, index: u64, term: u64, conf: &ConfState) -> Result<()>;
    /// Makes the applied state (`codec::encode_state`) durable, replacing the last one:
    /// written before compaction removes entries and when a snapshot replaces the log,
    /// so that what the removed entries built (the idempotency table) outlives them.
    fn save_applied_state(&mut self, state: &[u8]) -> Result<()>;
    /// The applied state saved last, if any.
    fn load_applied_state(&self) -> Result<Option<Vec<u8>>>;
}

/// A leader's packaged snapshot, what raft asked for, and how long the log after a
/// snapshot must be kept. `raft::Storage::snapshot` takes `&self`, hence the cells (the
/// storage lives on the raft thread only). Its clock is the shard's ticks (see
/// [`SnapshotSlot::tick`]), as every other timer of the raft layer, so that the simulator
/// drives it.
#[derive(Default)]
pub(crate) struct SnapshotSlot {
    ready: Option<Snapshot>,
    /// raft asked for a snapshot that is not packaged (or no longer usable).
    wanted: Cell<bool>,
    /// The index whose successors a follower will ask for (a snapshot being built or
    /// handed out), and the tick it was last so.
    held: Cell<Option<(u64, u64)>>,
    /// Ticks since the storage was opened.
    now: u64,
}

/// A package for the same index is asked of the node again after this many ticks (30 s
/// at the default 100 ms tick) when it has not arrived: raft asks at every heartbeat.
const SNAPSHOT_REBUILD_TICKS: u64 = 300;

impl SnapshotSlot {
    /// What `raft::Storage::snapshot` answers: the packaged snapshot while the log still
    /// holds the entries after it, else "temporarily unavailable" (and a package is
    /// wanted: the driver asks the node for one).
    pub(crate) fn answer(&self, request_index: u64, first: u64) -> raft::Result<Snapshot> {
        match &self.ready {
            Some(s)
                if s.get_metadata().index + 1 >= first
                    && s.get_metadata().index >= request_index =>
            {
                self.held.set(Some((s.get_metadata().index, self.now)));
                Ok(s.clone())
            }
            _ => {
                self.wanted.set(true);
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }

    /// One tick of the shard's clock.
    pub(crate) fn tick(&mut self) {
        self.now += 1;
    }

    /// Whether raft asked for a snapshot since the last call.
    pub(crate) fn take_wanted(&self) -> bool {
        self.wanted.replace(false)
    }

    /// A package for `index` is being built: keep what follows it.
    pub(crate) fn building(&self, index: u64) {
        self.held.set(Some((index, self.now)));
    }

    /// Whether to ask the node for a package at `index`: not while one for the same index
    /// was asked for within the last [`SNAPSHOT_REBUILD_TICKS`].
    pub(crate) fn should_build(&self, index: u64) -> bool {
        let fresh = self
            .ready
            .as_ref()
            .is_some_and(|s| s.get_metadata().index == index);
        !fresh
            && !self
                .held
                .get()
                .is_some_and(|(i, at)| i == index && self.now - at < SNAPSHOT_REBUILD_TICKS)
    }

    /// The node packaged a snapshot.
    pub(crate) fn set(&mut self, snapshot: Snapshot) {
        self.ready = Some(snapshot);
    }

    /// The lowest index compaction must keep: the one after a snapshot built or handed out
    /// within [`crate::snapshot::SNAPSHOT_HOLD_TICKS`].
    pub(crate) fn hold(&self) -> Option<u64> {
        self.held
            .get()
            .filter(|(_, at)| self.now - at < crate::snapshot::SNAPSHOT_HOLD_TICKS)
            .map(|(index, _)| index + 1)
    }
}

/// A flush in flight.
pub(crate) trait FlushTicket {
    /// Waits until it is durable.
    fn wait(self) -> Result<()>;
}

impl FlushTicket for SyncTicket {
    fn wait(self) -> Result<()> {
        SyncTicket::wait(self).map_err(Error::from)
    }
}

/// Where a [`crate::ShardLog`] reads committed entries from: the WAL's reader, or the
/// simulator's memory.
pub(crate) trait EntrySource: Send + Sync + 'static {
    /// Encoded entries with `lo <= index <= hi`, stopping after `max_bytes`.
    fn read_range(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: usize,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> Result<()>;
    /// First index held, `None` when empty.
    fn first_index(&self) -> Option<u64>;
}

impl EntrySource for WalReader {
    fn read_range(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: usize,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> Result<()> {
        WalReader::read_range(self, lo, hi, max_bytes, out).map_err(Error::from)
    }

    fn first_index(&self) -> Option<u64> {
        WalReader::first_index(self)
    }
}

impl LogStore for WalStorage {
    type Ticket = SyncTicket;

    fn stage_entry(&mut self, e: &Entry) -> Result<()> {
        WalStorage::stage_entry(self, e)
    }

    fn set_hard_state(&mut self, hs: &HardState) {
        WalStorage::set_hard_state(self, hs)
    }

    fn set_commit(&mut self, commit: u64) {
        WalStorage::set_commit(self, commit)
    }

    fn needs_flush(&self) -> bool {
        WalStorage::needs_flush(self)
    }

    fn flush(&mut self) -> Result<SyncTicket> {
        WalStorage::flush(self)
    }

    fn commit_staged(&mut self) {
        WalStorage::commit_staged(self)
    }

    fn compact(&mut self, index: u64) -> Result<u64> {
        WalStorage::compact(self, index)
    }

    fn last(&self) -> u64 {
        WalStorage::last(self)
    }

    fn disk_bytes(&self) -> u64 {
        WalStorage::disk_bytes(self)
    }

    fn snapshots(&self) -> &SnapshotSlot {
        &self.snapshots
    }

    fn snapshots_mut(&mut self) -> &mut SnapshotSlot {
        &mut self.snapshots
    }

    fn apply_snapshot(&mut self, index: u64, term: u64, conf: &ConfState) -> Result<()> {
        WalStorage::apply_snapshot(self, index, term, conf)
    }

    fn save_applied_state(&mut self, state: &[u8]) -> Result<()> {
        let path = self.applied_state_path();
        weir_wal::durable::atomic_write(&path, state)
            .map_err(|e| Error::Wal(weir_wal::Error::io(path, e)))
    }

    fn load_applied_state(&self) -> Result<Option<Vec<u8>>> {
        let path = self.applied_state_path();
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Wal(weir_wal::Error::io(path, e))),
        }
    }
}

/// The hard state a shard opens with, from the durable one and the durable log
/// `first..=last` (`last_term`: its last entry's term, `None` when it holds no entry).
/// Shared by [`WalStorage`] and the simulator's storage, so that both recover alike.
///
/// # Panics
/// When the commit index still falls outside `[first - 1, last]`: the log is inconsistent.
pub(crate) fn recover_hard_state(
    shard: u32,
    me: u64,
    hs: &mut HardState,
    first: u64,
    last: u64,
    last_term: Option<u64>,
) {
    // A commit index past the durable log can only come from a torn tail: what was not
    // durable was never acknowledged, so raft learns the commit again from its leader.
    if hs.commit > last {
        tracing::warn!(
            shard,
            commit = hs.commit,
            last,
            "commit index past the durable log, lowered"
        );
        hs.commit = last;
    }
    if let Some(last_term) = last_term {
        reconcile_term(shard, hs, last_term, me);
    }
    // Compacted entries were applied, hence committed: raft-rs requires
    // commit >= first_index - 1.
    hs.commit = hs.commit.max(first - 1);
    // A commit index is never ahead of the durable log, nor behind what was compacted.
    assert!(
        first - 1 <= hs.commit && hs.commit <= last,
        "shard {shard}: commit index {} outside [{}, {last}] after recovery",
        hs.commit,
        first - 1
    );
}

/// A crash can leave entries of term T durable while the hard state written in the same
/// round (a separate frame) was torn off, so the durable term is older than the log.
/// raft-rs assumes term >= the last entry's term (it would, for one, answer a pre-vote
/// with term 0 and abort). The term becomes T, and the vote in T is recorded as this node's
/// own: it may have voted for someone in T before the crash, and must not vote for anyone
/// else in T now (voting for itself grants no one anything).
pub(crate) fn reconcile_term(shard: u32, hs: &mut HardState, last_term: u64, me: u64) {
    if hs.term < last_term {
        tracing::warn!(
            shard,
            term = hs.term,
            last_term,
            "the durable term is older than the log (a torn write): raised, vote withheld for that term"
        );
        hs.term = last_term;
        hs.vote = me;
    }
}

/// Clones `entries` until they add up to more than `max` bytes (always at least one), as
/// `raft::Storage::entries` must.
pub(crate) fn within_size<'a>(entries: impl Iterator<Item = &'a Entry>, max: usize) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut size = 0usize;
    for e in entries {
        size += entry_bytes(e);
        if !out.is_empty() && size > max {
            break;
        }
        out.push(e.clone());
    }
    out
}

/// Bytes of recently persisted entries kept in memory per shard.
const TAIL_CACHE_BYTES: usize = 16 << 20;

/// What an entry costs in the tail cache (payload, context, fixed overhead).
pub(crate) fn entry_bytes(e: &Entry) -> usize {
    e.data.len() + e.context.len() + 32
}

pub(crate) struct WalStorage {
    shard: u32,
    wal: Wal,
    reader: WalReader,
    meta: Meta,
    meta_dirty: bool,
    /// `terms[i]` is the term of index `first + i`, for every durable entry.
    terms: VecDeque<u64>,
    first: u64,
    /// Entries staged in the WAL but not yet durable, in order.
    staged: Vec<Entry>,
    /// The most recently persisted entries (payloads are refcounted `Bytes`), so that
    /// raft reading back what it just persisted, to apply it, does not go through the WAL
    /// (mmap, crc, lz4, copy) on the raft thread. Bounded by [`TAIL_CACHE_BYTES`].
    tail: VecDeque<Entry>,
    tail_bytes: usize,
    buf: Vec<u8>,
    snapshots: SnapshotSlot,
}

/// The term of every entry from `first` to `last`, read from the WAL (the one full scan
/// of the log at start).
///
/// # Errors
/// [`Error::Corrupt`] for an entry that does not decode or whose term is lower than its
/// predecessor's.
fn read_terms(shard: u32, reader: &WalReader, first: u64, last: u64) -> Result<VecDeque<u64>> {
    let mut terms: VecDeque<u64> = VecDeque::new();
    let mut out = Vec::new();
    let mut lo = first;
    while lo <= last {
        out.clear();
        reader.read_range(lo, last, 64 << 20, &mut out)?;
        for (index, payload) in &out {
            let v = codec::decode_entry(payload).map_err(|m| m.at(shard, *index))?;
            if let Some(prev) = terms.back() {
                if v.term < *prev {
                    return Err(Error::Corrupt {
                        shard,
                        index: *index,
                        reason: format!("term {} after term {prev}", v.term),
                    });
                }
            }
            terms.push_back(v.term);
            lo = index + 1;
        }
    }
    Ok(terms)
}

impl WalStorage {
    /// Opens the storage over `wal`, rebuilding the term of every entry by reading it (the
    /// one full scan of the log at start), and bootstraps `voters` on a fresh log.
    pub(crate) fn open(shard: u32, me: u64, wal: Wal, voters: &[u64]) -> Result<Self> {
        let reader = wal.reader();
        let mut meta = match wal.meta() {
            Some(b) => codec::decode_meta(&b).map_err(|m| m.at(shard, 0))?,
            None => Meta::default(),
        };
        let fresh = meta.conf_state.voters.is_empty() && meta.conf_state.learners.is_empty();
        if fresh {
            meta.conf_state.voters = voters.to_vec();
        }
        let first = wal.first_index().unwrap_or(meta.compacted_index + 1);
        let terms = match wal.last_index() {
            Some(last) => read_terms(shard, &reader, first, last)?,
            None => VecDeque::new(),
        };
        let last = first + terms.len() as u64 - 1;
        if meta.compacted_index + 1 != first && wal.first_index().is_some() {
            // The WAL dropped segments below its first index after the meta was written
            // (compaction writes the meta first, then removes).
            meta.compacted_index = first - 1;
        }
        recover_hard_state(
            shard,
            me,
            &mut meta.hard_state,
            first,
            last,
            terms.back().copied(),
        );
        let mut s = WalStorage {
            shard,
            wal,
            reader,
            meta,
            meta_dirty: fresh,
            terms,
            first,
            staged: Vec::new(),
            tail: VecDeque::new(),
            tail_bytes: 0,
            buf: Vec::new(),
            snapshots: SnapshotSlot::default(),
        };
        if fresh {
            s.wal.set_meta(&codec::encode_meta(&s.meta))?;
            s.wal.flush()?.wait()?;
            s.meta_dirty = false;
        }
        Ok(s)
    }

    pub(crate) fn reader(&self) -> WalReader {
        self.reader.clone()
    }

    /// The WAL's fault hook (see `RaftNode::inject_wal_write_error`).
    #[cfg(feature = "testing")]
    pub(crate) fn fault_injector(&self) -> weir_wal::FaultInjector {
        self.wal.fault_injector()
    }

    /// `applied-state` beside the shard's WAL directory.
    fn applied_state_path(&self) -> std::path::PathBuf {
        let dir = self.wal.dir();
        dir.parent().unwrap_or(dir).join("applied-state")
    }

    pub(crate) fn last(&self) -> u64 {
        self.first + self.terms.len() as u64 - 1
    }

    /// Stages one entry from a Ready; a conflicting suffix is replaced (the WAL
    /// truncates). On error nothing was staged, so the caller may retry the same entry.
    pub(crate) fn stage_entry(&mut self, e: &Entry) -> Result<()> {
        codec::encode_entry(e, &mut self.buf);
        self.wal.append(e.index, &self.buf)?;
        if self.staged.last().is_some_and(|s| s.index >= e.index) {
            self.staged.retain(|s| s.index < e.index);
        }
        self.staged.push(e.clone());
        Ok(())
    }

    pub(crate) fn set_hard_state(&mut self, hs: &HardState) {
        if self.meta.hard_state != *hs {
            self.meta.hard_state = hs.clone();
            self.meta_dirty = true;
        }
    }

    pub(crate) fn set_commit(&mut self, commit: u64) {
        if self.meta.hard_state.commit != commit {
            self.meta.hard_state.commit = commit;
            self.meta_dirty = true;
        }
    }

    /// Whether a flush has anything to write.
    pub(crate) fn needs_flush(&self) -> bool {
        !self.staged.is_empty() || self.meta_dirty
    }

    /// Hands staged entries and meta to the I/O thread.
    pub(crate) fn flush(&mut self) -> Result<SyncTicket> {
        if self.meta_dirty {
            self.wal.set_meta(&codec::encode_meta(&self.meta))?;
            self.meta_dirty = false;
        }
        Ok(self.wal.flush()?)
    }

    /// After the flush is durable: makes the staged entries visible to raft.
    pub(crate) fn commit_staged(&mut self) {
        for e in std::mem::take(&mut self.staged) {
            let index = e.index;
            if self.terms.is_empty() {
                self.first = index;
            }
            let keep = index.saturating_sub(self.first) as usize;
            self.terms.truncate(keep);
            assert_eq!(
                self.first + self.terms.len() as u64,
                index,
                "shard {}: durable entry {index} does not follow the log's last index {}: entries are contiguous",
                self.shard,
                self.first + self.terms.len() as u64 - 1
            );
            self.terms.push_back(e.term);
            while self.tail.back().is_some_and(|t| t.index >= index) {
                let t = self.tail.pop_back().expect("checked non-empty");
                self.tail_bytes -= entry_bytes(&t);
            }
            if self.tail.back().is_some_and(|t| t.index + 1 != index) {
                self.tail.clear();
                self.tail_bytes = 0;
            }
            self.tail_bytes += entry_bytes(&e);
            self.tail.push_back(e);
            while self.tail_bytes > TAIL_CACHE_BYTES && self.tail.len() > 1 {
                let t = self.tail.pop_front().expect("len > 1");
                self.tail_bytes -= entry_bytes(&t);
            }
        }
    }

    /// Drops whole WAL segments below `index` (never past the applied index: the caller
    /// ensures it). The meta (with the current commit index) is made durable first, so a
    /// crash right after the removal reopens with a commit index covering what is gone.
    /// Returns bytes freed.
    pub(crate) fn compact(&mut self, index: u64) -> Result<u64> {
        let index = index.min(self.last());
        // What is removed was applied, hence committed.
        assert!(
            index <= self.meta.hard_state.commit + 1,
            "shard {}: compaction below {index} past the commit index {}",
            self.shard,
            self.meta.hard_state.commit
        );
        if index <= self.first {
            return Ok(0);
        }
        self.meta_dirty = true;
        self.flush()?.wait()?;
        let freed = self.wal.remove_segments_below(index)?;
        let new_first = self.wal.first_index().unwrap_or(self.first);
        if new_first > self.first {
            while self.tail.front().is_some_and(|t| t.index < new_first) {
                let t = self.tail.pop_front().expect("checked non-empty");
                self.tail_bytes -= entry_bytes(&t);
            }
            while self.first < new_first {
                let t = self.terms.pop_front().expect("first <= last");
                self.meta.compacted_index = self.first;
                self.meta.compacted_term = t;
                self.first += 1;
            }
            self.meta_dirty = true;
        }
        Ok(freed)
    }

    pub(crate) fn disk_bytes(&self) -> u64 {
        self.wal.disk_bytes()
    }

    /// Replaces the log by a snapshot at `index` (see [`LogStore::apply_snapshot`]). The
    /// new meta goes into the WAL's RESET segment, so a crash leaves either the old log
    /// or the new one.
    pub(crate) fn apply_snapshot(&mut self, index: u64, term: u64, conf: &ConfState) -> Result<()> {
        let mut meta = self.meta.clone();
        meta.compacted_index = index;
        meta.compacted_term = term;
        meta.conf_state = conf.clone();
        meta.hard_state.commit = meta.hard_state.commit.max(index);
        self.wal.set_meta(&codec::encode_meta(&meta))?;
        if let Err(e) = self.wal.reset(index + 1) {
            // The log is unchanged: so must the meta the next flush writes be.
            self.wal.set_meta(&codec::encode_meta(&self.meta))?;
            return Err(e.into());
        }
        self.meta = meta;
        self.meta_dirty = false;
        self.staged.clear();
        self.terms.clear();
        self.first = index + 1;
        self.tail.clear();
        self.tail_bytes = 0;
        Ok(())
    }

    fn term_of(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.meta.compacted_index && idx + 1 == self.first {
            return Ok(self.meta.compacted_term);
        }
        if idx < self.first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.terms.get((idx - self.first) as usize) {
            Some(t) => Ok(*t),
            None if idx == 0 => Ok(0),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }
}

impl raft::Storage for WalStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.meta.hard_state.clone(),
            self.meta.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let max = max_size.into().unwrap_or(u64::MAX).min(usize::MAX as u64) as usize;
        if let Some(front) = self.tail.front() {
            // The tail always ends at the last durable index; anything else falls back to
            // the WAL below.
            if low >= front.index && high - front.index <= self.tail.len() as u64 {
                let start = (low - front.index) as usize;
                let range = self.tail.range(start..(high - front.index) as usize);
                return Ok(within_size(range, max));
            }
        }
        let mut out = Vec::new();
        self.reader
            .read_range(low, high - 1, max, &mut out)
            .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?;
        out.into_iter()
            .map(|(i, b)| {
                codec::to_entry(i, &b).map_err(|m| {
                    raft::Error::Store(StorageError::Other(Box::new(m.at(self.shard, i))))
                })
            })
            .collect()
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.term_of(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        self.snapshots.answer(request_index, self.first)
    }
}
