//! One indexer thread per shard: reads the committed log from the index checkpoint and
//! feeds the shard's index, committing at most every `commit_interval_ms`. Records are
//! searchable before the index commits them: searches scan the shard's head
//! ([`crate::head`]), from which the indexer also takes its decoded batches.
//!
//! Architecture invariant: the indexer sees the log only through `CommittedLog`; the WAL
//! below the index checkpoint may then be removed (`RaftNode::compact`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prost::Message;
use weir_index::ShardIndex;
use weir_proto::v1::StoredBatch;
use weir_raft::{CommittedLog, RaftNode, ShardLog};

use crate::head::ShardHead;
use crate::metrics::Metrics;

/// Bytes of log read per step.
const READ_BYTES_MAX: usize = 8 << 20;

/// How an indexer commits and expires.
#[derive(Clone)]
pub struct IndexerSettings {
    /// Commit (make searchable) at most this often.
    pub commit_interval: Duration,
    /// Drop index partitions whose records are all older than this; `None` keeps all.
    pub retention: Option<Duration>,
    /// Tenants' own retentions (shorter ones delete the tenant's records from whole
    /// partitions that end before them); applied at each retention check and as soon as
    /// they change.
    pub tenant_retention: Option<Arc<crate::rules::RuleTable>>,
    /// On a cluster: whether this replica indexes the shard itself now or copies its
    /// leader's segments ([`crate::segments`]); `None` indexes always.
    pub segments: Option<crate::segments::SegmentReplication>,
}

/// How often retention is checked.
const RETENTION_CHECK: Duration = Duration::from_secs(60);

/// A running indexer thread.
pub struct Indexer {
    stop: Arc<AtomicBool>,
    failed: Arc<std::sync::Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
    index: Arc<ShardIndex>,
}

impl Indexer {
    /// Starts indexing `log` into `index` from the index's checkpoint.
    pub fn start(
        log: Arc<ShardLog>,
        index: Arc<ShardIndex>,
        raft: Arc<RaftNode>,
        settings: IndexerSettings,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Indexer> {
        Indexer::start_with_head(log, index, raft, settings, metrics, None)
    }

    /// [`Indexer::start`], taking its batches from the shard's head where it holds them
    /// (decoded once for searches and the index), else from the log.
    pub fn start_with_head(
        log: Arc<ShardLog>,
        index: Arc<ShardIndex>,
        raft: Arc<RaftNode>,
        settings: IndexerSettings,
        metrics: Arc<Metrics>,
        head: Option<Arc<ShardHead>>,
    ) -> anyhow::Result<Indexer> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let failed = Arc::new(std::sync::Mutex::new(None));
        let f = failed.clone();
        let shard = log.shard();
        let closing = index.clone();
        let thread = std::thread::Builder::new()
            .name(format!("weir-index-{shard}"))
            .spawn(move || {
                lower_priority();
                if let Err(e) = run(&log, &index, head.as_deref(), &raft, &settings, &metrics, &s) {
                    tracing::error!(shard, error = %e, "indexer stopped; searches of this shard will lag until restart");
                    *f.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("shard {shard}: {e:#}"));
                }
            })
            .map_err(|e| anyhow::anyhow!("cannot start the indexer thread of shard {shard}: {e}"))?;
        Ok(Indexer {
            stop,
            failed,
            thread: Some(thread),
            index: closing,
        })
    }

    /// The slot where the thread reports the error that stopped it.
    pub fn failure_slot(&self) -> Arc<std::sync::Mutex<Option<String>>> {
        self.failed.clone()
    }

    /// Stops after a final commit of what was indexed so far (the rest is replayed from
    /// the log at the next start), and waits; then closes the index, so that no merge
    /// thread of it outlives the node (see [`ShardIndex::close`]).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Err(e) = self.index.close() {
            tracing::warn!(shard = self.index.shard().0, error = %e, "closing the index");
        }
    }
}

fn run(
    log: &ShardLog,
    index: &ShardIndex,
    head: Option<&ShardHead>,
    raft: &RaftNode,
    settings: &IndexerSettings,
    metrics: &Metrics,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let shard = log.shard();
    // What the index already holds, ready for infix lookups after a restart (new
    // segments are copied after each commit, below).
    if let Err(e) = index.warm_infix() {
        tracing::warn!(shard, error = %e, "copying body words for infix lookups failed");
    }
    let mut next = index.checkpoint() + 1;
    let mut dirty = false;
    let mut last_commit = Instant::now();
    let mut last_retention: Option<Instant> = None;
    let mut retention_seen = u64::MAX;
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let local = settings
            .segments
            .as_ref()
            .is_none_or(|s| s.indexes_locally(shard, log));
        if !local {
            // A follower copying its leader's segments: what it indexed while replication
            // lagged is committed, so that the next copy (which needs an idle index) can
            // replace it; then it waits. Retention comes with the copies.
            if dirty {
                index.commit()?;
                dirty = false;
            }
            if stopping {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
            next = next.max(index.checkpoint() + 1);
            continue;
        }
        let watermark = log.wait_for(
            next - 1,
            if dirty {
                Duration::from_millis(20)
            } else {
                Duration::from_millis(100)
            },
        );
        // A snapshot may have replaced the index by a copy that is further along (it is
        // installed before the log jumps past what this replica held).
        next = next.max(index.checkpoint() + 1);
        if watermark >= next {
            if let Some((held, read_to)) = head.and_then(|h| h.batches_from(next, READ_BYTES_MAX)) {
                if held.is_empty() && read_to <= next {
                    // The head reader has not read it yet; it wakes on the same commit.
                    std::thread::sleep(Duration::from_millis(1));
                } else {
                    for (i, b) in &held {
                        metrics.records_indexed.inc_by(b.batch.records.len() as u64);
                        index.add_batch_since(*i, &b.batch, kept_since(settings, &b.batch))?;
                    }
                    next = read_to;
                    dirty |= !held.is_empty();
                }
            } else {
                let entries = log.read(next, watermark, READ_BYTES_MAX)?;
                // An empty read means the whole range held no payload (raft no-ops).
                let scanned_to = entries.last().map_or(watermark, |e| e.index);
                for e in &entries {
                    let batch = StoredBatch::decode(e.data.as_slice()).map_err(|err| {
                        anyhow::anyhow!(
                            "shard {shard}: entry {} is not a StoredBatch: {err}",
                            e.index
                        )
                    })?;
                    metrics.records_indexed.inc_by(batch.records.len() as u64);
                    index.add_batch_since(e.index, &batch, kept_since(settings, &batch))?;
                }
                next = scanned_to + 1;
                dirty |= !entries.is_empty();
            }
        }
        if dirty && (last_commit.elapsed() >= settings.commit_interval || stopping) {
            index.commit()?;
            raft.compact(shard, index.checkpoint() + 1);
            // New and merged segments' body words, for the next infix lookup; a failure
            // only leaves that lookup to copy them.
            if let Err(e) = index.warm_infix() {
                tracing::warn!(shard, error = %e, "copying body words for infix lookups failed");
            }
            last_commit = Instant::now();
            dirty = false;
        }
        let due = last_retention.is_none_or(|t| t.elapsed() >= RETENTION_CHECK);
        let retention_changed = settings
            .tenant_retention
            .as_ref()
            .is_some_and(|r| r.retention_version() != retention_seen);
        if due {
            last_retention = Some(Instant::now());
            if let Some(keep) = settings.retention {
                let cutoff = crate::append::now_ns()
                    .saturating_sub(keep.as_nanos().min(i64::MAX as u128) as i64);
                let dropped = index.drop_partitions_before(cutoff)?;
                if dropped > 0 {
                    tracing::info!(shard, dropped, "index partitions past retention dropped");
                }
            }
        }
        if let Some(rules) = settings
            .tenant_retention
            .as_ref()
            .filter(|_| due || retention_changed)
        {
            retention_seen = rules.retention_version();
            for (tenant, days) in rules.retentions().iter() {
                let keep = Duration::from_secs(u64::from(*days) * 86_400);
                if settings.retention.is_some_and(|global| global <= keep) {
                    // The whole partitions go first.
                    continue;
                }
                let cutoff = crate::append::now_ns()
                    .saturating_sub(keep.as_nanos().min(i64::MAX as u128) as i64);
                let touched = index.delete_tenant_before(tenant, cutoff)?;
                if touched > 0 {
                    tracing::info!(shard, %tenant, days, partitions = touched, "a tenant's records past its retention deleted");
                }
            }
        }
        if stopping {
            return Ok(());
        }
    }
}

/// The oldest record time the batch's tenant keeps (its own retention, when shorter than
/// the index's): older records are not indexed, so a record indexed after its tenant's
/// retention ran is not kept past it either.
fn kept_since(settings: &IndexerSettings, batch: &StoredBatch) -> i64 {
    let Some(rules) = &settings.tenant_retention else {
        return i64::MIN;
    };
    let tenant = if batch.tenant.is_empty() {
        weir_proto::DEFAULT_TENANT
    } else {
        batch.tenant.as_str()
    };
    let Some(days) = rules.retentions().get(tenant).copied() else {
        return i64::MIN;
    };
    let keep = Duration::from_secs(u64::from(days) * 86_400);
    crate::append::now_ns().saturating_sub(keep.as_nanos().min(i64::MAX as u128) as i64)
}

/// Indexing is the node's largest CPU consumer and can catch up later; acknowledgements
/// cannot wait. The indexer thread lowers its own scheduling priority to the lowest nice
/// value (19), and the tantivy writer and merge threads it creates inherit it (Linux: nice
/// is per thread and inherited on thread creation). At nice 10 an append now and then
/// waited behind a merge (ack max 61–124 ms at half the maximum rate, against 26–36 ms
/// at 19: benches/RESULTS.md, "Backpressure paced"). `SCHED_IDLE` did about as well but
/// leaves indexing ~0.3% of a core while other threads keep both cores busy, and the
/// head's backpressure then all but stops ingest; nice 19 leaves it ~1.5%.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority with who = 0 changes only the calling thread's nice value.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the indexer's priority");
        }
    }
}
