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
//!
//! The indexer frees the head only when it commits (every `index.commit_interval_ms`), so a
//! sustained overload against the bound alone stops every append until the next commit,
//! for as long as a commit interval and more. Past half the bound, appends are therefore
//! paced instead (`Pacer`, as RocksDB delays writes before it stops them): they take
//! turns at about the rate the indexer drained the head from commit to commit over the
//! last seconds, a little faster while the head is near half full and slower as it nears
//! the bound, so that a steady overload settles between the two with acknowledgements
//! flowing evenly.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prost::Message;
use weir_index::{HeadBatch, HeadEntry, ShardIndex};
use weir_proto::v1::StoredBatch;
use weir_proto::{ApiError, ErrorKind};
use weir_raft::{CommittedLog, RaftNode};

/// Log bytes read per step.
const READ_BYTES_MAX: usize = 4 << 20;
/// How often a waiting append looks at the head again.
const ROOM_POLL: Duration = Duration::from_millis(5);
/// How often a paced append, waiting for its turn, looks whether the heads are back under
/// half their bound.
const PACE_POLL: Duration = Duration::from_millis(20);
/// The shortest span of the head's recent drain rate, which paced appends are admitted at
/// (at least three commit intervals, so that the steps in which commits free the head
/// average out).
const RATE_WINDOW_MIN: Duration = Duration::from_secs(10);
/// Pacing starts once the drain rate spans this much history.
const RATE_SPAN_MIN: Duration = Duration::from_secs(1);

/// One shard's head.
pub struct ShardHead {
    held: Mutex<Held>,
    bytes: AtomicUsize,
    /// The follower has stopped reading at twice the bound.
    stalled: AtomicBool,
    max_bytes: usize,
    pacer: Mutex<Pacer>,
}

/// Admits appends to a head over half its bound at about the rate the indexer drains it.
#[derive(Debug)]
struct Pacer {
    /// (when, bytes freed by then): at each prune that freed any, over the last `window`,
    /// and since the head last turned from empty to holding something (the time before,
    /// when the indexer had nothing to do, says nothing of its rate).
    samples: VecDeque<(Instant, u64)>,
    freed: u64,
    window: Duration,
    /// When the next paced append may go: each admitted one moves it by its bytes at the
    /// admission rate.
    next_slot: Instant,
}

impl Pacer {
    fn new(window: Duration, now: Instant) -> Pacer {
        Pacer {
            samples: VecDeque::new(),
            freed: 0,
            window,
            next_slot: now,
        }
    }

    /// The indexer's commit freed `bytes` of the head.
    fn freed(&mut self, bytes: usize, now: Instant) {
        self.freed += bytes as u64;
        self.samples.push_back((now, self.freed));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > self.window)
        {
            self.samples.pop_front();
        }
    }

    /// The head turned from empty to holding something: the indexer has work from `now`
    /// on, and its rate is measured from here.
    fn restart(&mut self, now: Instant) {
        self.samples.clear();
        self.samples.push_back((now, self.freed));
    }

    /// Bytes a second freed from the oldest sample of the window to the newest: from
    /// commit to commit, so that the rate neither sags between commits nor, right after
    /// a start whose first commit took a single batch, reads as that batch over a second.
    /// `None` until the samples span [`RATE_SPAN_MIN`] or when nothing was freed between
    /// them; so also once a stuck indexer's commits have left the window (the bound then
    /// holds alone).
    fn rate(&self, now: Instant) -> Option<f64> {
        let &(t0, b0) = self
            .samples
            .iter()
            .find(|(t, _)| now.saturating_duration_since(*t) <= self.window)?;
        let &(t1, b1) = self.samples.back()?;
        let span = t1.saturating_duration_since(t0);
        let freed = b1 - b0;
        (span >= RATE_SPAN_MIN && freed > 0).then(|| freed as f64 / span.as_secs_f64())
    }

    /// Takes a turn for an append of `bytes`, given the head holds `held` of `max`, if the
    /// turn comes within `patience`: when the append may go, and how far it moved the next
    /// append's turn; `None` (nothing taken) past `patience`.
    ///
    /// Under half the bound, or without a drain rate yet, the append goes at once and the
    /// queue is forgotten (the bound itself still holds). Past half, it goes after the
    /// appends admitted before it, and moves the next one's turn by its bytes at the drain
    /// rate times 1.5 at half the bound, falling to 0.5 at the bound: the head settles
    /// where admissions match the drain. An append's own bytes delay the next append, not
    /// itself, so a large one is not refused for its size alone.
    fn take_turn(
        &mut self,
        bytes: usize,
        held: usize,
        max: usize,
        now: Instant,
        patience: Duration,
    ) -> Option<(Instant, Duration)> {
        let soft = max / 2;
        let Some(rate) = self.rate(now).filter(|_| held >= soft) else {
            self.next_slot = now;
            return Some((now, Duration::ZERO));
        };
        let go = self.next_slot.max(now);
        if go.duration_since(now) > patience {
            return None;
        }
        let fill = ((held - soft) as f64 / (max - soft).max(1) as f64).min(1.0);
        let cost = Duration::from_secs_f64(bytes as f64 / (rate * (1.5 - fill)));
        self.next_slot = go + cost;
        Some((go, cost))
    }

    /// Gives back a turn that moved the next one by `cost` and was not used (its append
    /// was refused at another shard, or its request dropped while waiting): the turns
    /// after it come that much sooner.
    fn give_back(&mut self, cost: Duration, now: Instant) {
        self.next_slot = self.next_slot.checked_sub(cost).map_or(now, |t| t.max(now));
    }
}

/// The turns one append took; given back when dropped before [`Turns::used`].
struct Turns(Vec<(Arc<ShardHead>, Duration)>);

impl Turns {
    fn used(mut self) {
        self.0.clear();
    }
}

impl Drop for Turns {
    fn drop(&mut self) {
        let now = Instant::now();
        for (head, cost) in self.0.drain(..) {
            head.pacer().give_back(cost, now);
        }
    }
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
    fn new(max_bytes: usize, next: u64, rate_window: Duration) -> ShardHead {
        ShardHead {
            held: Mutex::new(Held {
                entries: VecDeque::new(),
                covered_from: next,
                next,
            }),
            bytes: AtomicUsize::new(0),
            stalled: AtomicBool::new(false),
            max_bytes,
            pacer: Mutex::new(Pacer::new(rate_window, Instant::now())),
        }
    }

    fn pacer(&self) -> std::sync::MutexGuard<'_, Pacer> {
        self.pacer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entries held, oldest first (cheap: the batches are shared).
    pub fn snapshot(&self) -> Vec<HeadEntry> {
        self.lock()
            .entries
            .iter()
            .map(|(i, b, _)| (*i, b.clone()))
            .collect()
    }

    /// The refusal of an append to `shard` that cannot wait for room.
    fn full(&self, shard: u32) -> ApiError {
        ApiError::new(
            ErrorKind::ResourceExhausted,
            format!(
                "shard {shard}'s index is {} bytes of log behind, with the bound \
                 index.head_bytes_max = {}: ingest is faster than indexing; \
                 retry, or raise the bound (searches scan the head)",
                self.bytes(),
                self.max_bytes
            ),
        )
        .retry_after(Duration::from_secs(1))
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
        let mut freed = 0;
        while let Some((i, _, bytes)) = held.entries.front() {
            if *i > checkpoint {
                break;
            }
            freed += *bytes;
            self.bytes.fetch_sub(*bytes, Ordering::AcqRel);
            held.entries.pop_front();
        }
        drop(held);
        if freed > 0 {
            self.pacer().freed(freed, Instant::now());
        }
    }

    /// Appends decoded entries read up to (not including) `next`.
    fn push(&self, entries: Vec<(u64, StoredBatch, usize)>, next: u64) {
        let mut held = self.lock();
        if held.entries.is_empty() && !entries.is_empty() {
            self.pacer().restart(Instant::now());
        }
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
    /// holding at most about `max_bytes` per shard; the indexers commit every
    /// `commit_interval` (which the drain rate is averaged over).
    ///
    /// # Errors
    /// A thread cannot be started.
    pub fn start(
        raft: &Arc<RaftNode>,
        indexes: &[Arc<ShardIndex>],
        max_bytes: usize,
        commit_interval: Duration,
    ) -> anyhow::Result<Arc<Heads>> {
        let rate_window = RATE_WINDOW_MIN.max(commit_interval * 3);
        let stop = Arc::new(AtomicBool::new(false));
        let mut shards = Vec::new();
        let mut threads = Vec::new();
        for (shard, index) in indexes.iter().enumerate() {
            let head = Arc::new(ShardHead::new(
                max_bytes,
                index.checkpoint() + 1,
                rate_window,
            ));
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

    /// Waits until every shard in `pieces` (shard, log bytes of its piece) may take its
    /// piece: its turn past half a shard's bound (`Pacer`), and under the bound.
    ///
    /// # Errors
    /// ResourceExhausted (429, retry after 1 s) naming the shard, its head and the bound
    /// `index.head_bytes_max`: at once when a shard's turn would come after half the time
    /// left to `deadline` (the rest is the commit's), or when the deadline passes while a
    /// head is over the bound.
    pub async fn wait_for_room(
        &self,
        pieces: &[(u32, usize)],
        deadline: tokio::time::Instant,
    ) -> Result<(), ApiError> {
        let now = Instant::now();
        let patience = deadline.saturating_duration_since(tokio::time::Instant::now()) / 2;
        let mut turns = Turns(Vec::with_capacity(pieces.len()));
        let mut go = now;
        for &(shard, bytes) in pieces {
            let Some(head) = self.shard(shard) else {
                continue;
            };
            let turn = head
                .pacer()
                .take_turn(bytes, head.bytes(), head.max_bytes, now, patience);
            // Refused: dropping `turns` gives back the turns taken at the other shards.
            let (at, cost) = turn.ok_or_else(|| head.full(shard))?;
            go = go.max(at);
            turns.0.push((head.clone(), cost));
        }
        // Until the turn, unless every head is back under half its bound before it (a
        // commit freed them; appends after that go at once, so this one need not wait).
        loop {
            let now = Instant::now();
            if now >= go || turns.0.iter().all(|(h, _)| h.bytes() < h.max_bytes / 2) {
                break;
            }
            tokio::time::sleep((go - now).min(PACE_POLL)).await;
        }
        turns.used();
        for &(shard, _) in pieces {
            let Some(head) = self.shard(shard) else {
                continue;
            };
            while head.bytes() >= head.max_bytes {
                if tokio::time::Instant::now() >= deadline {
                    return Err(head.full(shard));
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

    /// A pacer whose indexer freed 1 MB a second over the last second.
    fn draining_a_megabyte_a_second(t0: Instant) -> Pacer {
        let mut p = Pacer::new(RATE_WINDOW_MIN, t0);
        p.restart(t0);
        p.freed(500_000, t0 + Duration::from_millis(500));
        p.freed(500_000, t0 + Duration::from_secs(1));
        p
    }

    fn ms(from: Instant, to: Instant) -> u128 {
        to.duration_since(from).as_millis()
    }

    const PATIENT: Duration = Duration::from_secs(60);

    #[test]
    fn appends_past_half_the_bound_take_turns_at_the_drain_rate() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(1);
        let mut p = draining_a_megabyte_a_second(t0);
        assert_eq!(p.rate(now), Some(1_000_000.0));
        let max = 100 << 20;
        // Each goes at the previous one's turn and moves the next by its bytes at 1.5 MB/s
        // at half the bound, 0.5 MB/s at the bound and past it, 1 MB/s at three quarters.
        let mut turn = |bytes, held| {
            let (go, cost) = p.take_turn(bytes, held, max, now, PATIENT).unwrap();
            (ms(now, go), cost.as_millis())
        };
        assert_eq!(turn(150_000, max / 2), (0, 100));
        assert_eq!(turn(100_000, max), (100, 200));
        assert_eq!(turn(100_000, 2 * max), (300, 200));
        assert_eq!(turn(100_000, max / 4 * 3), (500, 100));
        assert_eq!(ms(now, p.next_slot), 600);
    }

    #[test]
    fn under_half_the_bound_appends_go_at_once_and_the_queue_is_forgotten() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(1);
        let mut p = draining_a_megabyte_a_second(t0);
        p.next_slot = now + Duration::from_millis(300);
        let max = 100 << 20;
        assert_eq!(
            p.take_turn(100_000, max / 2 - 1, max, now, PATIENT),
            Some((now, Duration::ZERO))
        );
        assert_eq!(p.next_slot, now);
    }

    #[test]
    fn a_turn_past_the_patience_is_not_taken() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(1);
        let mut p = draining_a_megabyte_a_second(t0);
        let queued = now + Duration::from_millis(300);
        p.next_slot = queued;
        let max = 100 << 20;
        let patience = Duration::from_millis(299);
        assert_eq!(p.take_turn(1, max, max, now, patience), None);
        assert_eq!(p.next_slot, queued, "nothing reserved");
        let (go, _) = p
            .take_turn(1, max, max, now, Duration::from_millis(300))
            .unwrap();
        assert_eq!(go, queued);
    }

    #[test]
    fn a_turn_given_back_brings_the_next_ones_forward() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(1);
        let mut p = draining_a_megabyte_a_second(t0);
        let max = 100 << 20;
        let (_, first) = p.take_turn(100_000, max, max, now, PATIENT).unwrap();
        let (_, second) = p.take_turn(100_000, max, max, now, PATIENT).unwrap();
        assert_eq!(ms(now, p.next_slot), 400);
        p.give_back(first, now);
        assert_eq!(ms(now, p.next_slot), 200);
        p.give_back(second, now);
        p.give_back(second, now);
        assert_eq!(p.next_slot, now, "never before now");
    }

    #[test]
    fn without_a_drain_rate_appends_are_left_to_the_bound() {
        let t0 = Instant::now();
        let max = 1 << 20;
        let mut p = Pacer::new(RATE_WINDOW_MIN, t0);
        assert_eq!(p.rate(t0), None, "nothing freed yet");
        assert_eq!(
            p.take_turn(1_000, max, max, t0, PATIENT),
            Some((t0, Duration::ZERO))
        );
        p.restart(t0);
        p.freed(1_000, t0 + Duration::from_millis(100));
        assert_eq!(
            p.rate(t0 + Duration::from_secs(2)),
            None,
            "the commits span under a second, however long ago the first was"
        );
        p.freed(1_000, t0 + Duration::from_secs(2));
        assert_eq!(p.rate(t0 + Duration::from_secs(3)), Some(1_000.0));
    }

    #[test]
    fn the_rate_is_measured_from_when_the_head_last_had_work() {
        // Three seconds of light load (the head emptied at each commit), then the head
        // fills and the first commit, three seconds on, frees 3 MB: the indexer drained
        // 1 MB a second since it had that work, whatever it freed before.
        let t0 = Instant::now();
        let mut p = Pacer::new(RATE_WINDOW_MIN, t0);
        for i in 0..3 {
            p.restart(t0 + Duration::from_secs(i));
            p.freed(10, t0 + Duration::from_secs(i) + Duration::from_millis(900));
        }
        let busy = t0 + Duration::from_secs(3);
        p.restart(busy);
        p.freed(3_000_000, busy + Duration::from_secs(3));
        assert_eq!(p.rate(busy + Duration::from_secs(3)), Some(1_000_000.0));
    }

    #[test]
    fn a_stalled_indexer_keeps_its_last_rate_until_its_commits_leave_the_window() {
        let t0 = Instant::now();
        let mut p = draining_a_megabyte_a_second(t0);
        assert_eq!(p.rate(t0 + Duration::from_secs(10)), Some(1_000_000.0));
        assert_eq!(
            p.rate(t0 + Duration::from_secs(10) + Duration::from_millis(500)),
            None,
            "the commits left in the window span half a second"
        );
        assert_eq!(
            p.rate(t0 + Duration::from_secs(12)),
            None,
            "the window is empty"
        );
        p.freed(1_000, t0 + Duration::from_secs(20));
        assert_eq!(
            p.samples.len(),
            1,
            "samples older than the window are dropped"
        );
        assert_eq!(p.rate(t0 + Duration::from_secs(21)), None, "one sample");
    }

    /// Heads of `max` bytes each holding `held`, whose indexers freed `rate` bytes a
    /// second over the two seconds up to now.
    fn paced_heads(n: usize, max: usize, held: usize, rate: u64) -> Heads {
        let shards = (0..n)
            .map(|_| {
                let head = Arc::new(ShardHead::new(max, 1, RATE_WINDOW_MIN));
                head.push(vec![(1, StoredBatch::default(), held)], 2);
                let t0 = Instant::now() - Duration::from_secs(2);
                let mut p = head.pacer();
                p.restart(t0);
                p.freed(2 * rate as usize, t0 + Duration::from_secs(2));
                drop(p);
                head
            })
            .collect();
        Heads {
            shards,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Vec::new()),
        }
    }

    fn in_secs(secs: u64) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(secs)
    }

    #[tokio::test]
    async fn an_append_whose_turn_is_past_half_its_deadline_is_refused_at_once() {
        // 600 kB of a 1 MiB head, drained at ~500 bytes a second.
        let heads = paced_heads(1, 1 << 20, 600_000, 500);
        let started = Instant::now();
        heads
            .wait_for_room(&[(0, 100_000)], in_secs(5))
            .await
            .expect("the first in the queue goes at once, however large");
        let err = heads
            .wait_for_room(&[(0, 100_000)], in_secs(5))
            .await
            .expect_err("the next turn is minutes away");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "refused at once"
        );
        assert_eq!(err.kind, ErrorKind::ResourceExhausted);
        assert!(
            err.message.contains("index.head_bytes_max = 1048576"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn an_append_dropped_while_waiting_gives_its_turn_back() {
        // 1 MB pieces at ~1 MB a second: the second append waits about a second.
        let heads = paced_heads(1, 4 << 20, 3 << 20, 1_000_000);
        heads
            .wait_for_room(&[(0, 1_000_000)], in_secs(10))
            .await
            .unwrap();
        let after_first = heads.shards[0].pacer().next_slot;
        let waited = tokio::time::timeout(
            Duration::from_millis(20),
            heads.wait_for_room(&[(0, 1_000_000)], in_secs(10)),
        )
        .await;
        assert!(waited.is_err(), "still waiting for its turn when dropped");
        assert_eq!(heads.shards[0].pacer().next_slot, after_first);
    }

    #[tokio::test]
    async fn a_refusal_at_one_shard_gives_back_the_turns_taken_at_the_others() {
        let heads = paced_heads(2, 1 << 20, 600_000, 500);
        let queued = Instant::now() + Duration::from_secs(3600);
        heads.shards[1].pacer().next_slot = queued;
        heads
            .wait_for_room(&[(0, 100_000), (1, 100_000)], in_secs(5))
            .await
            .expect_err("shard 1's turn is an hour away");
        assert!(
            heads.shards[0].pacer().next_slot <= Instant::now(),
            "shard 0's turn was given back"
        );
        assert_eq!(heads.shards[1].pacer().next_slot, queued);
    }

    #[test]
    fn prune_drops_what_the_index_holds_and_counts_bytes() {
        let h = ShardHead::new(100, 1, RATE_WINDOW_MIN);
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
        let h = ShardHead::new(100, 5, RATE_WINDOW_MIN);
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
