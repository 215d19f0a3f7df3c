//! The worker of one sink on one shard, and the delivery loop it shares with replay.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use prost::Message;
use rand::Rng;
use tokio::sync::watch;
use weir_proto::v1::StoredBatch;
use weir_raft::{CommittedLog, RaftNode, ShardLog};

use crate::breaker::Admit;
use crate::item::Item;
use crate::sink::{Attempt, ItemResult};
use crate::stats::SinkStats;
use crate::SinkRuntime;

/// Why a delivery ended without finishing.
#[derive(Debug)]
pub(crate) enum Unfinished {
    /// Shutdown.
    Stopped,
    /// `max_attempts` retryable failures in a row (replay only); the reason of the last.
    GaveUp(String),
    /// Disk pressure: the records not yet stored were given up (`dropped` of them); those
    /// rejected before are still to be dead-lettered.
    Released {
        dropped: usize,
        rejected: Vec<(Item, String)>,
    },
}

/// Delivers `items`: every item ends up stored (or found already stored) or in the
/// returned list of rejected items with the backend's reason. Retryable failures are
/// retried with exponential backoff and full jitter, honouring `Retry-After`, until
/// `stop` or, when given, `max_attempts` consecutive failures.
///
/// The items are cut into requests (`batch_records_max`, `batch_bytes_max`). A sink that
/// does not need them in order (Elasticsearch: every document has its own `_id`) sends up
/// to `concurrency` of them at once, each retried, split and counted by the breaker on its
/// own; the sink's limiter still bounds the requests in flight over all shards. Loki gets
/// them one after the other, so that a stream's entries arrive in time order.
pub(crate) async fn deliver(
    rt: &SinkRuntime,
    items: Vec<Item>,
    stop: &watch::Receiver<bool>,
    max_attempts: Option<u32>,
    release: Option<&AtomicBool>,
) -> Result<Vec<(Item, String)>, Unfinished> {
    let cfg = &rt.config;
    let mut queue: VecDeque<Vec<Item>> = VecDeque::new();
    for group in rt.sink.group(items) {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for it in group {
            let b = it.approx_bytes();
            if !chunk.is_empty()
                && (chunk.len() >= cfg.batch_records_max || bytes + b > cfg.batch_bytes_max)
            {
                queue.push_back(std::mem::take(&mut chunk));
                bytes = 0;
            }
            bytes += b;
            chunk.push(it);
        }
        if !chunk.is_empty() {
            queue.push_back(chunk);
        }
    }
    let window = if rt.sink.in_order() {
        1
    } else {
        cfg.concurrency.max(1)
    };
    let mut rejected = Vec::new();
    // Records given up under disk pressure; once set, no request is started any more and
    // the ones in flight end at their next failure (or succeed).
    let mut dropped: Option<usize> = None;
    let mut running = FuturesUnordered::new();
    loop {
        while dropped.is_none() && running.len() < window {
            let Some(chunk) = queue.pop_front() else {
                break;
            };
            running.push(deliver_chunk(rt, chunk, stop, max_attempts, release));
        }
        let Some(end) = running.next().await else {
            break;
        };
        match end {
            Ok(ChunkEnd::Delivered(r)) => rejected.extend(r),
            Ok(ChunkEnd::Split(first, second, r)) => {
                rejected.extend(r);
                match &mut dropped {
                    Some(d) => *d += first.len() + second.len(),
                    None => {
                        queue.push_front(second);
                        queue.push_front(first);
                    }
                }
            }
            Err(Unfinished::Released {
                dropped: d,
                rejected: r,
            }) => {
                let queued: usize = queue.drain(..).map(|c| c.len()).sum();
                *dropped.get_or_insert(0) += d + queued;
                rejected.extend(r);
            }
            // Dropping the other requests in flight cancels them: whatever they stored is
            // recognised when it is sent again.
            Err(e) => return Err(e),
        }
    }
    match dropped {
        Some(dropped) => Err(Unfinished::Released { dropped, rejected }),
        None => Ok(rejected),
    }
}

/// How one request's items ended.
enum ChunkEnd {
    /// All stored, but these, rejected with the backend's reason.
    Delivered(Vec<(Item, String)>),
    /// Refused as a whole: send the halves (in this order) to find the items at fault;
    /// the items rejected in earlier answers to this request.
    Split(Vec<Item>, Vec<Item>, Vec<(Item, String)>),
}

/// Sends one request's items until each is stored or rejected, or the request is split.
///
/// Under disk pressure (`release` set) the items still pending are given up after a
/// failed attempt of this request (also one whose backoff was already running when
/// `release` was set). Never before a first attempt: a request waiting for an open
/// breaker may be its probe, and giving up there would keep the breaker open and release
/// everything that follows.
async fn deliver_chunk(
    rt: &SinkRuntime,
    mut pending: Vec<Item>,
    stop: &watch::Receiver<bool>,
    max_attempts: Option<u32>,
    release: Option<&AtomicBool>,
) -> Result<ChunkEnd, Unfinished> {
    let released = || release.is_some_and(|r| r.load(Ordering::Relaxed));
    let stats = &rt.stats;
    let mut rejected = Vec::new();
    let mut attempt: u32 = 0;
    loop {
        if *stop.borrow() {
            return Err(Unfinished::Stopped);
        }
        if attempt > 0 && released() {
            return Err(Unfinished::Released {
                dropped: pending.len(),
                rejected,
            });
        }
        if !admitted(rt, stop).await {
            return Err(Unfinished::Stopped);
        }
        let attempt_result = {
            let _permit = rt.limiter.acquire().await;
            SinkStats::add(&stats.requests, 1);
            rt.sink
                .send(&pending, |n| SinkStats::add(&stats.bytes_sent, n as u64))
                .await
        };
        // A failed attempt: why, and how long the backend asked to be left alone.
        let (reason, retry_after) = match attempt_result {
            Attempt::Items(results) => match settle_items(rt, pending, results, &mut rejected) {
                None => return Ok(ChunkEnd::Delivered(rejected)),
                Some((retry, reason)) => {
                    pending = retry;
                    (reason, None)
                }
            },
            Attempt::Retry {
                reason,
                metric,
                retry_after,
            } => {
                stats.fail(metric, 1, &reason);
                if rt.breaker.failure() {
                    tracing::warn!(sink = %rt.config.name, %reason, "circuit breaker opened");
                } else {
                    tracing::debug!(sink = %rt.config.name, %reason, "request failed; retrying");
                }
                (reason, retry_after)
            }
            Attempt::Split { reason } => {
                // The backend is up and judged the content: not a breaker failure.
                rt.breaker.success();
                if pending.len() == 1 {
                    stats.fail("rejected", 1, &reason);
                    rejected.push((pending.remove(0), reason));
                    return Ok(ChunkEnd::Delivered(rejected));
                }
                tracing::debug!(sink = %rt.config.name, n = pending.len(), %reason, "request refused as a whole; splitting it to find the records at fault");
                let second = pending.split_off(pending.len() / 2);
                return Ok(ChunkEnd::Split(pending, second, rejected));
            }
        };
        attempt += 1;
        if max_attempts.is_some_and(|m| attempt >= m) {
            return Err(Unfinished::GaveUp(reason));
        }
        if released() {
            return Err(Unfinished::Released {
                dropped: pending.len(),
                rejected,
            });
        }
        SinkStats::add(&stats.retries, 1);
        if sleep_or_stop(backoff(rt, attempt, retry_after), stop).await {
            return Err(Unfinished::Stopped);
        }
    }
}

/// Waits until the sink's breaker admits a request; false on stop.
async fn admitted(rt: &SinkRuntime, stop: &watch::Receiver<bool>) -> bool {
    loop {
        match rt.breaker.try_admit() {
            Admit::Yes => return true,
            Admit::Wait(d) => {
                if sleep_or_stop(d, stop).await {
                    return false;
                }
            }
        }
    }
}

/// Books a request's per-item answers: stored ones counted, refused ones added to
/// `rejected`, the breaker told whether the backend worked. `None` when nothing is left
/// to retry; otherwise the items to send again and the reason of the last retry.
fn settle_items(
    rt: &SinkRuntime,
    pending: Vec<Item>,
    results: Vec<ItemResult>,
    rejected: &mut Vec<(Item, String)>,
) -> Option<(Vec<Item>, String)> {
    let stats = &rt.stats;
    let n = pending.len();
    let mut retry = Vec::new();
    let mut last_retry_reason = String::new();
    for (it, r) in pending.into_iter().zip(results) {
        match r {
            ItemResult::Done => SinkStats::add(&stats.records_sent, 1),
            ItemResult::Retry(reason) => {
                last_retry_reason = reason;
                retry.push(it);
            }
            ItemResult::Reject(reason) => {
                stats.fail("rejected", 1, &reason);
                rejected.push((it, reason));
            }
        }
    }
    if retry.is_empty() {
        rt.breaker.success();
        return None;
    }
    stats.fail("item_retry", retry.len() as u64, &last_retry_reason);
    // Every item to retry: the backend failed the request; some stored: it works.
    if retry.len() == n {
        rt.breaker.failure();
    } else {
        rt.breaker.success();
    }
    Some((retry, last_retry_reason))
}

/// Full jitter: uniform in [0, min(max, initial * 2^attempt)], at least `retry_after`.
fn backoff(rt: &SinkRuntime, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let cfg = &rt.config;
    let cap = cfg
        .retry_backoff_initial_ms
        .saturating_mul(1u64 << attempt.min(30))
        .min(cfg.retry_backoff_max_ms);
    let jitter = Duration::from_millis(rand::rng().random_range(0..=cap));
    match retry_after {
        Some(r) => jitter.max(r.min(Duration::from_millis(
            cfg.retry_backoff_max_ms.max(1000) * 10,
        ))),
        None => jitter,
    }
}

/// Sleeps `d`; true when stop was asked for meanwhile.
async fn sleep_or_stop(d: Duration, stop: &watch::Receiver<bool>) -> bool {
    let mut rx = stop.clone();
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = rx.wait_for(|s| *s) => return true,
    }
    *stop.borrow()
}

/// Reads the committed log of one shard from the sink's cursor and delivers it, for as
/// long as this node leads the shard, until `stop`.
pub(crate) async fn run(
    rt: Arc<SinkRuntime>,
    raft: Arc<RaftNode>,
    log: Arc<ShardLog>,
    stop: watch::Receiver<bool>,
) {
    let mut w = Worker {
        name: crate::cursor_name(&rt.config.name),
        shard: log.shard(),
        flush: Duration::from_millis(rt.config.flush_interval_ms.max(1)),
        rt,
        raft,
        log,
        stop,
        scanned_to: 0,
        uncommitted: None,
    };
    loop {
        if *w.stop.borrow() {
            return;
        }
        match w.step().await {
            Next::Now => {}
            Next::After(wait) => {
                if sleep_or_stop(wait, &w.stop).await {
                    return;
                }
            }
            Next::Stop => return,
        }
    }
}

/// What the worker does after a step.
enum Next {
    /// The next step at once.
    Now,
    /// The next step after this long (or on stop).
    After(Duration),
    /// Shutdown.
    Stop,
}

/// The state of one sink's worker on one shard.
struct Worker {
    rt: Arc<SinkRuntime>,
    raft: Arc<RaftNode>,
    log: Arc<ShardLog>,
    stop: watch::Receiver<bool>,
    /// The sink's cursor name in the raft state.
    name: String,
    shard: u32,
    /// How long to wait when there is nothing to read.
    flush: Duration,
    /// Highest index known to hold nothing for this sink above the cursor (cursor and
    /// no-op entries), so they are not read again and again.
    scanned_to: u64,
    /// Delivered (or dead-lettered) up to here, cursor not committed yet: commit it before
    /// reading again rather than sending the same records twice.
    uncommitted: Option<u64>,
}

impl Worker {
    fn progress(&self) -> &crate::stats::ShardProgress {
        &self.rt.stats.shards[self.shard as usize]
    }

    /// One step of the delivery loop: settle leadership and the cursor, then read,
    /// deliver, dead-letter and commit the next part of the log.
    async fn step(&mut self) -> Next {
        if !self.log.is_leader() {
            return self.not_leading();
        }
        self.progress().active.store(true, Ordering::Relaxed);
        let Some(cursor) = self.log.cursor(&self.name) else {
            return self.first_cursor().await;
        };
        if let Some(to) = self.uncommitted.filter(|to| *to > cursor) {
            return self.commit_uncommitted(to).await;
        }
        self.uncommitted = None;
        let rt = self.rt.clone();
        let progress = &rt.stats.shards[self.shard as usize];
        progress.cursor.store(cursor, Ordering::Relaxed);
        progress
            .delivered_to
            .fetch_max(cursor.max(self.scanned_to), Ordering::Relaxed);
        let watermark = self.log.watermark();
        let from = cursor.max(self.scanned_to) + 1;
        if watermark < from {
            progress.oldest_pending_ns.store(0, Ordering::Relaxed);
            return Next::After(self.flush);
        }
        if !self.rt.ready.load(Ordering::Acquire) {
            // The index template is not installed yet; show the wait as lag.
            progress
                .oldest_pending_ns
                .compare_exchange(0, crate::now_ns(), Ordering::Relaxed, Ordering::Relaxed)
                .ok();
            return Next::After(Duration::from_millis(100));
        }
        let entries = match self.read(cursor, from, watermark).await {
            Ok(entries) => entries,
            Err(next) => return next,
        };
        let Some(last) = entries.last().map(|e| e.index) else {
            // Nothing but cursor and no-op entries: no need to move the durable cursor,
            // and nothing is pending up to the watermark.
            self.scanned_to = watermark;
            progress.oldest_pending_ns.store(0, Ordering::Relaxed);
            progress
                .delivered_to
                .fetch_max(watermark, Ordering::Relaxed);
            return Next::Now;
        };
        let items = match self.items_of(&entries) {
            Ok(items) => items,
            Err(next) => return next,
        };
        let Some(rejected) = self.deliver(items, last).await else {
            return Next::Stop;
        };
        if let Err(next) = self.dead_letter(rejected) {
            return next;
        }
        self.finish(last).await
    }

    /// Not leading: whoever leads now resends from the committed cursor.
    fn not_leading(&mut self) -> Next {
        self.uncommitted = None;
        let progress = self.progress();
        progress.active.store(false, Ordering::Relaxed);
        progress.oldest_pending_ns.store(0, Ordering::Relaxed);
        Next::After(Duration::from_millis(200))
    }

    /// A new sink starts with what the log still holds.
    async fn first_cursor(&mut self) -> Next {
        let start = self.log.first_index().saturating_sub(1);
        tracing::info!(sink = %self.rt.config.name, shard = self.shard, start, "new mirror cursor");
        match propose_cursor(&self.raft, self.shard, &self.name, start).await {
            Ok(()) => Next::Now,
            Err(e) => {
                tracing::debug!(sink = %self.rt.config.name, shard = self.shard, error = %e, "cannot set the first cursor; retrying");
                Next::After(Duration::from_millis(500))
            }
        }
    }

    /// Commits a cursor delivered up to before reading anything more.
    async fn commit_uncommitted(&mut self, to: u64) -> Next {
        match propose_cursor(&self.raft, self.shard, &self.name, to).await {
            Ok(()) => {
                self.uncommitted = None;
                Next::Now
            }
            Err(e) => {
                tracing::debug!(sink = %self.rt.config.name, shard = self.shard, error = %e, "cursor not committed yet; retrying");
                Next::After(Duration::from_millis(200))
            }
        }
    }

    /// Reads `[from, watermark]`, at most `batch_bytes_max` of it, on the blocking pool.
    async fn read(
        &self,
        cursor: u64,
        from: u64,
        watermark: u64,
    ) -> Result<Vec<weir_raft::LogEntry>, Next> {
        let l = self.log.clone();
        let max = self.rt.config.batch_bytes_max;
        let read = tokio::task::spawn_blocking(move || l.read(from, watermark, max)).await;
        let (sink, shard) = (&self.rt.config.name, self.shard);
        match read {
            Ok(Ok(e)) => Ok(e),
            Ok(Err(weir_raft::Error::Compacted { first, .. })) => {
                // Compaction never passes a required cursor, so this means entries were
                // removed behind the raft layer's back (or the sink was renamed). What is
                // gone cannot be counted per record; say so loudly and go on from what is left.
                tracing::error!(%sink, shard, cursor, first, "log entries were removed before this sink received them");
                self.rt.stats.fail(
                    "released_unmirrored",
                    1,
                    "log entries were removed before delivery",
                );
                match propose_cursor(&self.raft, shard, &self.name, first - 1).await {
                    Ok(()) => Err(Next::Now),
                    Err(_) => Err(Next::After(Duration::from_secs(1))),
                }
            }
            Ok(Err(e)) => {
                tracing::error!(%sink, shard, error = %e, "cannot read the committed log; retrying");
                Err(Next::After(Duration::from_secs(1)))
            }
            Err(e) => {
                tracing::error!(%sink, shard, error = %e, "log reader task failed");
                Err(Next::After(Duration::from_secs(1)))
            }
        }
    }

    /// The records of `entries` this sink takes, as items; records the pending age and
    /// the records-per-entry rate. An entry that is not a batch stalls the worker.
    fn items_of(&self, entries: &[weir_raft::LogEntry]) -> Result<Vec<Item>, Next> {
        let progress = self.progress();
        let mut items = Vec::new();
        let mut oldest = i64::MAX;
        let mut records = 0usize;
        for e in entries {
            match StoredBatch::decode(e.data.as_slice()) {
                Ok(b) => {
                    oldest = oldest.min(b.received_ns);
                    records += b.records.len();
                    let cfg = &self.rt.config;
                    items.extend(Item::from_batch(self.shard, e.index, b, |t| {
                        cfg.wants_tenant(t)
                    }));
                }
                Err(err) => {
                    // The log is the source of truth; an entry that is not a batch means a
                    // bug or corruption. Do not skip it silently: stall and say so.
                    let msg = format!(
                        "entry {} of shard {} is not a StoredBatch: {err}",
                        e.index, self.shard
                    );
                    tracing::error!(sink = %self.rt.config.name, %msg, "mirror stalled");
                    *progress.stalled.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
                    return Err(Next::After(Duration::from_secs(5)));
                }
            }
        }
        let per_entry = (records as u64 * 1000) / entries.len() as u64;
        let prev = progress.records_per_entry_milli.load(Ordering::Relaxed);
        progress.records_per_entry_milli.store(
            if prev == 0 {
                per_entry
            } else {
                (prev * 7 + per_entry) / 8
            },
            Ordering::Relaxed,
        );
        progress.oldest_pending_ns.store(oldest, Ordering::Relaxed);
        Ok(items)
    }

    /// Delivers `items` (read up to `last`); the rejected ones, or `None` on shutdown.
    /// Records released under disk pressure are counted as dropped.
    async fn deliver(&self, items: Vec<Item>, last: u64) -> Option<Vec<(Item, String)>> {
        let rt = &self.rt;
        match deliver(rt, items, &self.stop, None, Some(&self.progress().release)).await {
            Ok(r) => Some(r),
            Err(Unfinished::Released { dropped, rejected }) => {
                SinkStats::add(&rt.stats.dropped, dropped as u64);
                rt.stats.fail(
                    "released_unmirrored",
                    dropped as u64,
                    &format!("disk pressure: {dropped} records released before delivery"),
                );
                tracing::error!(sink = %rt.config.name, shard = self.shard, records = dropped, up_to = last, "disk pressure: records released before this sink received them (unmirrored_bytes_max exceeded)");
                Some(rejected)
            }
            Err(_) => None,
        }
    }

    /// Writes the rejected items to the dead-letter log. If that fails the cursor must not
    /// advance (the only way not to lose them): stall loudly, then read and deliver again
    /// from the cursor (stored records answer as duplicates, the rejected ones are
    /// rejected again).
    fn dead_letter(&self, rejected: Vec<(Item, String)>) -> Result<(), Next> {
        let n = rejected.len() as u64;
        if n == 0 {
            return Ok(());
        }
        let rt = &self.rt;
        if let Err(e) = rt.dlq.append(rejected, crate::now_ns()) {
            let msg = format!("cannot dead-letter {n} records: {e}");
            tracing::error!(sink = %rt.config.name, shard = self.shard, %msg, "mirror stalled");
            *self
                .progress()
                .stalled
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(msg);
            return Err(Next::After(Duration::from_secs(5)));
        }
        SinkStats::add(&rt.stats.dead_lettered, n);
        tracing::warn!(sink = %rt.config.name, shard = self.shard, records = n, "records dead-lettered");
        Ok(())
    }

    /// After a delivery up to `last`: clears the stall, settles the pending age and
    /// commits the cursor.
    async fn finish(&mut self, last: u64) -> Next {
        let progress = self.progress();
        *progress.stalled.lock().unwrap_or_else(|p| p.into_inner()) = None;
        // With more committed behind this read, its oldest time stands for the backlog's
        // until the next read sets the real one: the lag stays an upper bound instead of
        // reading 0 between two reads of a backlog.
        if self.log.watermark() <= last {
            progress.oldest_pending_ns.store(0, Ordering::Relaxed);
        }
        match propose_cursor(&self.raft, self.shard, &self.name, last).await {
            Ok(()) => {
                self.progress().cursor.store(last, Ordering::Relaxed);
                Next::Now
            }
            Err(e) => {
                // Delivered but not recorded: retried first thing next round while this
                // node leads; a new leader (or a restart) sends it again instead, and the
                // backend recognises the copies.
                tracing::debug!(sink = %self.rt.config.name, shard = self.shard, error = %e, "cursor not committed; retrying it");
                self.uncommitted = Some(last);
                Next::After(Duration::from_millis(200))
            }
        }
    }
}

async fn propose_cursor(
    raft: &RaftNode,
    shard: u32,
    name: &str,
    position: u64,
) -> crate::Result<()> {
    let not_committed = |e: String| crate::Error::CursorNotCommitted(e);
    let p = raft
        .propose_cursor(shard, name, position)
        .map_err(|e| not_committed(e.to_string()))?;
    match p.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(not_committed(e.to_string())),
        Err(_) => Err(not_committed("raft stopped".into())),
    }
}
