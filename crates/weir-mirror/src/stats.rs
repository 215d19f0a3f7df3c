//! Counters and gauges of one sink, shared by its workers, status and `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Per-shard progress of one sink.
#[derive(Default)]
pub struct ShardProgress {
    /// Whether this node runs the shard's worker (it leads the shard).
    pub active: AtomicBool,
    /// Applied cursor: every entry at or below it was delivered or dead-lettered.
    pub cursor: AtomicU64,
    /// Every payload entry at or below this was delivered (the cursor, or past it when
    /// only cursor and no-op entries follow).
    pub delivered_to: AtomicU64,
    /// Receive time (Unix ns) of the oldest entry being delivered, or of the last read's
    /// while more is committed behind it (an upper bound of the backlog's age); 0 when
    /// the worker has caught up.
    pub oldest_pending_ns: AtomicI64,
    /// Mean records per entry seen, times 1000 (for the records-lag estimate).
    pub records_per_entry_milli: AtomicU64,
    /// Set while the node is under disk pressure and this sink holds back more than
    /// `unmirrored_bytes_max` of this shard's WAL: a delivery that is failing gives up
    /// and its records are released (counted as dropped).
    pub release: AtomicBool,
    /// Why the worker cannot advance (dead-letter log full, ...), if it cannot.
    pub stalled: Mutex<Option<String>>,
}

/// See the module documentation.
#[derive(Default)]
pub struct SinkStats {
    /// Records the backend has (stored, or found already there).
    pub records_sent: AtomicU64,
    /// Request body bytes sent (every attempt; compressed for Loki protobuf).
    pub bytes_sent: AtomicU64,
    /// Requests sent.
    pub requests: AtomicU64,
    /// Requests or items sent again.
    pub retries: AtomicU64,
    /// Records dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Records this sink will never receive because they were released before delivery.
    pub dropped: AtomicU64,
    /// Failed requests and items, by reason.
    pub failures: Mutex<BTreeMap<&'static str, u64>>,
    /// The last failure, for status.
    pub last_error: Mutex<Option<String>>,
    /// One per shard.
    pub shards: Vec<ShardProgress>,
}

impl SinkStats {
    /// Stats for `shards` shards.
    pub fn new(shards: u32) -> SinkStats {
        SinkStats {
            shards: (0..shards).map(|_| ShardProgress::default()).collect(),
            ..Default::default()
        }
    }

    /// Counts a failure.
    pub fn fail(&self, reason: &'static str, n: u64, message: &str) {
        *self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += n;
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.to_owned());
    }

    /// Adds to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}
