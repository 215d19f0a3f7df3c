//! Live tail: records as they commit, to every reader of `GET /api/v1/tail`.
//!
//! One reader thread per shard follows the committed log from its watermark (as the
//! indexer and the mirrors do, independently of both), decodes each new batch and
//! broadcasts it. A record reaches the tail as soon as it is committed, whether or not the
//! index has caught up. The threads start with the first subscriber and skip decoding
//! while nobody listens.
//!
//! The broadcast is bounded (`TAIL_BATCHES` batches): a reader that falls further behind
//! loses the oldest batches and is told how many records it missed; ingest never waits
//! for a reader.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prost::Message;
use tokio::sync::broadcast;
use weir_proto::v1::StoredBatch;
use weir_raft::{CommittedLog, RaftNode};

/// Batches the broadcast holds for the slowest reader.
pub const TAIL_BATCHES: usize = 1024;
/// Log bytes read per step.
const READ_BYTES_MAX: usize = 4 << 20;

/// The committed batches of every shard, as they commit.
pub struct TailHub {
    raft: Arc<RaftNode>,
    shards: u32,
    /// `None` once stopped: with the last sender gone, every reader's stream ends, so
    /// that open tails do not hold up the HTTP server's graceful shutdown.
    tx: Mutex<Option<broadcast::Sender<Arc<StoredBatch>>>>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Option<Vec<JoinHandle<()>>>>,
}

impl TailHub {
    /// A hub over the `shards` of `raft`; no thread runs until [`TailHub::subscribe`].
    pub fn new(raft: Arc<RaftNode>, shards: u32) -> Arc<TailHub> {
        let (tx, _) = broadcast::channel(TAIL_BATCHES);
        Arc::new(TailHub {
            raft,
            shards,
            tx: Mutex::new(Some(tx)),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(None),
        })
    }

    /// Batches committed from now on.
    ///
    /// # Errors
    /// When the node is stopping, or a reader thread cannot be started.
    pub fn subscribe(&self) -> anyhow::Result<broadcast::Receiver<Arc<StoredBatch>>> {
        let sender = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sender) = sender.as_ref() else {
            anyhow::bail!("the node is stopping");
        };
        let rx = sender.subscribe();
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if threads.is_none() {
            let mut started = Vec::new();
            for shard in 0..self.shards {
                let log = self.raft.committed_log(shard);
                let (tx, stop) = (sender.clone(), self.stop.clone());
                started.push(
                    std::thread::Builder::new()
                        .name(format!("weir-tail-{shard}"))
                        .spawn(move || follow(log.as_ref(), &tx, &stop))?,
                );
            }
            *threads = Some(started);
        }
        Ok(rx)
    }

    /// Stops the reader threads and waits for them; every reader's stream then ends.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let threads = self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        for t in threads.into_iter().flatten() {
            let _ = t.join();
        }
    }
}

/// Follows one shard's committed log from its watermark until `stop`.
fn follow(log: &dyn CommittedLog, tx: &broadcast::Sender<Arc<StoredBatch>>, stop: &AtomicBool) {
    let mut seen = log.watermark();
    while !stop.load(Ordering::Acquire) {
        let watermark = log.wait_for(seen, Duration::from_millis(100));
        if watermark <= seen {
            continue;
        }
        if tx.receiver_count() == 0 {
            seen = watermark;
            continue;
        }
        match log.read(seen + 1, watermark, READ_BYTES_MAX) {
            Ok(entries) => {
                seen = entries.last().map_or(watermark, |e| e.index);
                for e in entries {
                    if let Ok(batch) = StoredBatch::decode(e.data.as_slice()) {
                        // Err only when nobody listens any more.
                        let _ = tx.send(Arc::new(batch));
                    }
                }
            }
            Err(e) => {
                // Compacted away under a reader this far behind: go on from the head.
                tracing::debug!(shard = log.shard(), error = %e, "tail skipped ahead");
                seen = watermark;
            }
        }
    }
}
