//! The head of each shard's log: the committed entries its index has not made searchable
//! yet, decoded and held for searches to scan ([`weir_index::head`]).
//!
//! One thread per shard follows the committed log from the index checkpoint (so after a
//! restart the unindexed part is held too), decodes each entry once and appends it; entries
//! at or below the checkpoint are dropped as the indexer commits. A record is therefore
//! searchable as soon as it is committed and this thread has read it (it wakes on each
//! commit), however far the indexer lags.
//!
//! The head is bounded by `index.head_bytes_max` (log payload bytes). Past it, appends to
//! the shard wait for the indexer ([`Heads::wait_for_room`]) and are refused with 429 once
//! the request's commit timeout passes: a burst over the indexing rate slows ingest
//! instead of making every search scan more. Pieces already in flight may take the head up
//! to twice the bound; there the follower stops reading until the indexer catches up,
//! and [`ShardHead::complete`] turns false: searches then leave the shard to a replica
//! that has it all (on a cluster) or say how many committed entries they could not see.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prost::Message;
use weir_index::{HeadBatch, HeadEntry, ShardIndex};
use weir_proto::v1::StoredBatch;
use weir_proto::{ApiError, ErrorKind};
use weir_raft::{CommittedLog, RaftNode};

/// Log bytes read per step.
const READ_BYTES_MAX: usize = 4 << 20;
/// How often a waiting append looks at the head again.
const ROOM_POLL: Duration = Duration::from_millis(5);

/// One shard's head.
pub struct ShardHead {
    held: Mutex<Held>,
    bytes: AtomicUsize,
    /// The follower has stopped reading at twice the bound.
    stalled: AtomicBool,
    max_bytes: usize,
}

/// What a head holds, under one lock so that readers see the entries and how far they
/// reach together.
struct Held {
    entries: VecDeque<(u64, Arc<HeadBatch>, usize)>,
    /// Every payload entry in `[covered_from, next)` above the index checkpoint is held.
    covered_from: u64,
    next: u64,
}

impl ShardHead {
    fn new(max_bytes: usize, next: u64) -> ShardHead {
        ShardHead {
            held: Mutex::new(Held {
                entries: VecDeque::new(),
                covered_from: next,
                next,
            }),
            bytes: AtomicUsize::new(0),
            stalled: AtomicBool::new(false),
            max_bytes,
        }
    }

    /// The entries held, oldest first (cheap: the batches are shared).
    pub fn snapshot(&self) -> Vec<HeadEntry> {
        self.lock()
            .entries
            .iter()
            .map(|(i, b, _)| (*i, b.clone()))
            .collect()
    }

    /// Log payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Whether the head holds every committed entry up to `watermark` that the index does
    /// not: false only while the follower is stalled at twice the bound, behind it.
    pub fn complete(&self, watermark: u64) -> bool {
        !self.stalled.load(Ordering::Acquire) || self.lock().next > watermark
    }

    /// The held batches from log index `from` on, up to about `max_bytes` (at least one),
    /// and the index to read next after them; `None` when the head cannot vouch that it
    /// holds every payload entry from `from` (it started or skipped past it). The indexer
    /// takes its batches here, decoded once for both.
    pub fn batches_from(&self, from: u64, max_bytes: usize) -> Option<(Vec<HeadEntry>, u64)> {
        let held = self.lock();
        if from < held.covered_from {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for (i, b, n) in &held.entries {
            if *i < from {
                continue;
            }
            if !out.is_empty() && bytes + n > max_bytes {
                let next = *i;
                return Some((out, next));
            }
            bytes += n;
            out.push((*i, b.clone()));
        }
        Some((out, held.next.max(from)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the entries the index holds.
    fn prune(&self, checkpoint: u64) {
        let mut held = self.lock();
        while let Some((i, _, bytes)) = held.entries.front() {
            if *i > checkpoint {
                break;
            }
            self.bytes.fetch_sub(*bytes, Ordering::AcqRel);
            held.entries.pop_front();
        }
    }

    /// Appends decoded entries read up to (not including) `next`.
    fn push(&self, entries: Vec<(u64, StoredBatch, usize)>, next: u64) {
        let mut held = self.lock();
        for (index, batch, bytes) in entries {
            held.entries
                .push_back((index, Arc::new(HeadBatch::new(batch)), bytes));
            self.bytes.fetch_add(bytes, Ordering::AcqRel);
        }
        held.next = next;
    }

    /// Moves the read position past entries not read (a snapshot moved the index past
    /// them, or they were compacted): nothing before `next` is vouched for any more.
    fn skip_to(&self, next: u64) {
        let mut held = self.lock();
        if next > held.next {
            held.next = next;
            held.covered_from = next;
        }
    }
}

/// Every shard's head and the threads that fill them.
pub struct Heads {
    shards: Vec<Arc<ShardHead>>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Heads {
    /// Starts following each shard's committed log of `raft` from its index's checkpoint,
    /// holding at most about `max_bytes` per shard.
    ///
    /// # Errors
    /// A thread cannot be started.
    pub fn start(
        raft: &Arc<RaftNode>,
        indexes: &[Arc<ShardIndex>],
        max_bytes: usize,
    ) -> anyhow::Result<Arc<Heads>> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut shards = Vec::new();
        let mut threads = Vec::new();
        for (shard, index) in indexes.iter().enumerate() {
            let head = Arc::new(ShardHead::new(max_bytes, index.checkpoint() + 1));
            let log = raft.committed_log(shard as u32);
            let (h, ix, s) = (head.clone(), index.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("weir-head-{shard}"))
                    .spawn(move || follow(log.as_ref(), &ix, &h, &s))
                    .map_err(|e| {
                        anyhow::anyhow!("cannot start the head reader of shard {shard}: {e}")
                    })?,
            );
            shards.push(head);
        }
        Ok(Arc::new(Heads {
            shards,
            stop,
            threads: Mutex::new(threads),
        }))
    }

    /// The head of `shard`.
    pub fn shard(&self, shard: u32) -> Option<&Arc<ShardHead>> {
        self.shards.get(shard as usize)
    }

    /// Waits until the head of every shard in `shards` is under the bound, or `deadline`.
    ///
    /// # Errors
    /// ResourceExhausted (429, retry after 1 s) naming the shard, its head and the bound
    /// `index.head_bytes_max`, when the deadline passes first.
    pub async fn wait_for_room(
        &self,
        shards: &[u32],
        deadline: tokio::time::Instant,
    ) -> Result<(), ApiError> {
        for &shard in shards {
            let Some(head) = self.shard(shard) else {
                continue;
            };
            while head.bytes() >= head.max_bytes {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ApiError::new(
                        ErrorKind::ResourceExhausted,
                        format!(
                            "shard {shard}'s index is {} bytes of log behind, at the bound \
                             index.head_bytes_max = {}: ingest is faster than indexing; \
                             retry, or raise the bound (searches scan the head)",
                            head.bytes(),
                            head.max_bytes
                        ),
                    )
                    .retry_after(Duration::from_secs(1)));
                }
                tokio::time::sleep(ROOM_POLL).await;
            }
        }
        Ok(())
    }

    /// Stops the threads and waits for them.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Follows one shard's committed log until `stop`, holding what the index does not.
fn follow(log: &dyn CommittedLog, index: &ShardIndex, head: &ShardHead, stop: &AtomicBool) {
    let mut next = head.lock().next;
    while !stop.load(Ordering::Acquire) {
        let checkpoint = index.checkpoint();
        head.prune(checkpoint);
        if checkpoint + 1 > next {
            // A snapshot moved the index past what was read.
            next = checkpoint + 1;
            head.skip_to(next);
        }
        if head.bytes() >= head.max_bytes.saturating_mul(2) {
            head.stalled.store(true, Ordering::Release);
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        head.stalled.store(false, Ordering::Release);
        let watermark = log.wait_for(next - 1, Duration::from_millis(50));
        if watermark < next {
            continue;
        }
        match log.read(next, watermark, READ_BYTES_MAX) {
            Ok(entries) => {
                let read_to = entries.last().map_or(watermark, |e| e.index) + 1;
                let mut decoded = Vec::with_capacity(entries.len());
                for e in entries {
                    match StoredBatch::decode(e.data.as_slice()) {
                        Ok(batch) => decoded.push((e.index, batch, e.data.len())),
                        Err(err) => {
                            // Not vouched for: the indexer reads it from the log, stops on
                            // it and says so.
                            tracing::warn!(shard = log.shard(), index = e.index, error = %err, "a committed entry is not a StoredBatch; not held in the head");
                            head.push(std::mem::take(&mut decoded), e.index);
                            head.skip_to(e.index + 1);
                        }
                    }
                }
                head.push(decoded, read_to);
                next = read_to;
            }
            Err(e) => {
                // Compacted under us: the index holds it by now (compaction follows the
                // checkpoint); go on from there.
                tracing::debug!(shard = log.shard(), error = %e, "head reader skipped ahead");
                next = next.max(index.checkpoint() + 1);
                head.skip_to(next);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_drops_what_the_index_holds_and_counts_bytes() {
        let h = ShardHead::new(100, 1);
        h.push(
            (1..=4).map(|i| (i, StoredBatch::default(), 10)).collect(),
            6,
        );
        assert_eq!(h.bytes(), 40);
        h.prune(2);
        assert_eq!(h.bytes(), 20);
        assert_eq!(
            h.snapshot().iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [3, 4]
        );
    }

    #[test]
    fn the_indexer_takes_batches_only_where_the_head_vouches_for_them() {
        let h = ShardHead::new(100, 5);
        // Entry 7 was a raft no-op: not a payload, nothing to hold.
        h.push(
            [5, 6, 8, 9]
                .into_iter()
                .map(|i| (i, StoredBatch::default(), 10))
                .collect(),
            10,
        );
        let indexes = |from, max| {
            h.batches_from(from, max)
                .map(|(e, next)| (e.iter().map(|(i, _)| *i).collect::<Vec<_>>(), next))
        };
        assert_eq!(indexes(4, 1000), None, "before the head began");
        assert_eq!(indexes(6, 1000), Some((vec![6, 8, 9], 10)));
        assert_eq!(indexes(5, 15), Some((vec![5], 6)), "cut by bytes");
        assert_eq!(indexes(10, 1000), Some((vec![], 10)), "nothing new yet");
        h.skip_to(20);
        assert_eq!(indexes(10, 1000), None, "skipped past");
    }
}
