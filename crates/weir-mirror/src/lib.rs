//! Mirrors of the committed log to Elasticsearch and Loki.
//!
//! For every configured sink and every shard this node leads, a worker reads the shard's
//! [`weir_raft::CommittedLog`] from the sink's cursor, batches the records,
//! sends them, and once every record of the batch is stored or dead-lettered commits the
//! new cursor through raft ([`weir_raft::RaftNode::propose_cursor`]): a new leader resumes
//! from the last committed cursor, and what it sends again is recognised by the backend
//! (Elasticsearch `_id`s from the log position with `create`; Loki collapsing identical
//! entries). The WAL is kept until every sink's cursor has passed it
//! ([`weir_raft::RaftNode::require_cursors`]).
//!
//! Each sink has its own workers, retry state, circuit breaker, request limit and
//! dead-letter log: a dead Loki never slows Elasticsearch, and neither slows appends
//! (workers only read the committed log).
//!
//! ```no_run
//! # async fn demo(raft: std::sync::Arc<weir_raft::RaftNode>, cfg: weir_mirror::SinkConfig) -> weir_mirror::Result<()> {
//! let disk_pressure = std::sync::Arc::new(|| false);
//! let mirror = weir_mirror::Mirror::start(vec![cfg], raft, std::path::Path::new("/data"), "c0ffee00", disk_pressure)?;
//! for s in mirror.status() {
//!     println!("{} {} breaker={}", s.name, s.backend, s.breaker);
//! }
//! mirror.shutdown().await;
//! # Ok(()) }
//! ```

mod breaker;
pub mod config;
mod dlq;
pub mod es;
pub mod item;
pub mod loki;
pub mod sink;
mod stats;
mod worker;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use weir_raft::{CommittedLog, RaftNode, ShardLog};

pub use breaker::{Breaker, BreakerState};
pub use config::{Backend, LokiFormat, SinkConfig};
pub use dlq::{DeadLetter, DeadLetters};
pub use item::Item;
pub use sink::Sink;
pub use stats::SinkStats;
/// What [`Mirror::status`] and [`Mirror::replay`] answer: the API's types, which the
/// server returns as they are.
pub use weir_proto::api::dlq::ReplayReport;
pub use weir_proto::api::mirror::{SinkShardStatus, SinkStatus};

/// Errors of the mirror.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A sink's configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// A file of the mirror could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A dead-letter log holds a line that is not a dead letter, before its last line.
    #[error("dead-letter log {path} is corrupt at line {line}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The dead-letter log reached `dlq_bytes_max`.
    #[error("dead-letter log {path} is full ({max_bytes} bytes, dlq_bytes_max); replay or raise the limit")]
    DlqFull {
        /// The file.
        path: PathBuf,
        /// The limit.
        max_bytes: u64,
    },
    /// No sink has this name.
    #[error("no mirror sink is named {0:?}")]
    UnknownSink(String),
    /// Elasticsearch could not be asked to install the index template (unreachable,
    /// overloaded, timed out): retry.
    #[error("index template not installed yet: {0}")]
    TemplateUnreachable(String),
    /// Elasticsearch refused the index template (no permission, bad request): retrying
    /// will not help; documents get its default mappings.
    #[error("elasticsearch refused the index template: {status}: {reason}")]
    TemplateRefused {
        /// The HTTP status it answered.
        status: u16,
        /// An excerpt of its answer.
        reason: String,
    },
    /// A cursor could not be committed through raft (not leader, timed out, stopped).
    #[error("cursor not committed: {0}")]
    CursorNotCommitted(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// `Result` of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Installs the index template before the sink sends anything; retried with backoff while
/// Elasticsearch is unreachable or overloaded; a refusal (no permission) is logged and the
/// sink goes on without it.
async fn install_template(rt: Arc<SinkRuntime>, mut stop: watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(rt.config.retry_backoff_initial_ms);
    loop {
        match rt.sink.install_template().await {
            Ok(()) => {
                rt.breaker.success();
                tracing::info!(sink = %rt.config.name, "index template installed");
                break;
            }
            Err(e @ Error::TemplateRefused { .. }) => {
                tracing::warn!(sink = %rt.config.name, error = %e, "elasticsearch refused the index template; documents get its default mappings");
                break;
            }
            Err(e) => {
                rt.breaker.failure();
                tracing::debug!(sink = %rt.config.name, error = %e, "cannot install the index template yet; retrying");
                rt.stats
                    .fail("template", 1, &format!("index template: {e}"));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        delay = (delay * 2).min(Duration::from_millis(rt.config.retry_backoff_max_ms));
    }
    rt.ready.store(true, Ordering::Release);
}

/// Every second: under disk pressure, marks the shards where `rt` holds back more than its
/// `unmirrored_bytes_max` of WAL (estimated as the WAL's bytes times the share of its
/// index span above the cursor) for release; clears the marks otherwise.
async fn pressure_monitor(
    rt: Arc<SinkRuntime>,
    raft: Arc<RaftNode>,
    disk_pressure: Arc<dyn Fn() -> bool + Send + Sync>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let pressed = tokio::task::spawn_blocking({
            let f = disk_pressure.clone();
            move || f()
        })
        .await
        .unwrap_or(false);
        if !pressed {
            for p in &rt.stats.shards {
                p.release.store(false, Ordering::Relaxed);
            }
            continue;
        }
        let Ok(status) = raft.status().await else {
            continue;
        };
        for s in status {
            let p = &rt.stats.shards[s.shard as usize];
            let cursor = p.cursor.load(Ordering::Relaxed);
            let span = s.last_index.saturating_sub(s.first_index) + 1;
            let above = s
                .last_index
                .saturating_sub(cursor.max(s.first_index.saturating_sub(1)));
            let held = (u128::from(s.wal_bytes) * u128::from(above) / u128::from(span)) as u64;
            let release = held > rt.config.unmirrored_bytes_max;
            if release && !p.release.swap(true, Ordering::Relaxed) {
                tracing::warn!(sink = %rt.config.name, shard = s.shard, held, max = rt.config.unmirrored_bytes_max, "disk pressure: this sink holds back too much of the WAL; undeliverable records will be released");
            } else if !release {
                p.release.store(false, Ordering::Relaxed);
            }
        }
    }
}

/// The raft cursor name of sink `sink`.
pub fn cursor_name(sink: &str) -> String {
    format!("mirror/{sink}")
}

pub(crate) use weir_proto::now_ns;

/// Everything one sink's workers share.
pub(crate) struct SinkRuntime {
    pub(crate) config: SinkConfig,
    pub(crate) sink: Sink,
    pub(crate) breaker: Breaker,
    pub(crate) stats: SinkStats,
    pub(crate) dlq: DeadLetters,
    /// Requests in flight to the backend, over every shard (`concurrency`).
    pub(crate) limiter: Semaphore,
    /// False until the Elasticsearch index template is installed (or refused for good):
    /// documents sent before it would get the wrong mappings (or, with Elasticsearch 8's
    /// built-in `logs-*-*` template, land in data streams).
    pub(crate) ready: std::sync::atomic::AtomicBool,
}

/// The mirrors of one node.
pub struct Mirror {
    sinks: Vec<Arc<SinkRuntime>>,
    /// Each shard's committed log, for the live watermark in status: a worker stuck in a
    /// delivery (breaker open, backend down) does not look at the log meanwhile.
    logs: Vec<Arc<ShardLog>>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
}

impl Mirror {
    /// Starts every sink: opens its dead-letter log under `<data_dir>/dlq/`, installs the
    /// Elasticsearch template (in the background; a failure is logged), registers its
    /// cursor with raft so that the WAL is kept until it passed, and spawns one worker per
    /// shard on the current tokio runtime. `cluster` prefixes Elasticsearch ids.
    /// `disk_pressure` says whether the node is short of disk; while it is, a sink that
    /// holds back more than its `unmirrored_bytes_max` of a shard's WAL gives up the
    /// records it cannot deliver (counted, logged, in status) so the WAL can shrink.
    ///
    /// # Errors
    /// A sink's configuration is invalid or names repeat; its dead-letter log cannot be
    /// opened.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(
        configs: Vec<SinkConfig>,
        raft: Arc<RaftNode>,
        data_dir: &Path,
        cluster: &str,
        disk_pressure: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Result<Mirror> {
        config::validate_sinks(&configs)?;
        raft.require_cursors(config::cursor_names(&configs));
        let mut sinks = Vec::new();
        for cfg in configs {
            let sink = Sink::new(&cfg, cluster)?;
            let dlq = DeadLetters::open(&data_dir.join("dlq"), &cfg.name, cfg.dlq_bytes_max)?;
            sinks.push(Arc::new(SinkRuntime {
                breaker: Breaker::new(
                    cfg.breaker_failures,
                    Duration::from_millis(cfg.breaker_open_ms),
                ),
                stats: SinkStats::new(raft.shard_count()),
                limiter: Semaphore::new(cfg.concurrency),
                ready: std::sync::atomic::AtomicBool::new(
                    cfg.backend != Backend::Elasticsearch || cfg.install_template == Some(false),
                ),
                dlq,
                sink,
                config: cfg,
            }));
        }
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for rt in &sinks {
            if !rt.ready.load(Ordering::Acquire) {
                tasks.push(tokio::spawn(install_template(rt.clone(), stop_rx.clone())));
            }
            for shard in 0..raft.shard_count() {
                tasks.push(tokio::spawn(worker::run(
                    rt.clone(),
                    raft.clone(),
                    raft.committed_log(shard),
                    stop_rx.clone(),
                )));
            }
            tasks.push(tokio::spawn(pressure_monitor(
                rt.clone(),
                raft.clone(),
                disk_pressure.clone(),
                stop_rx.clone(),
            )));
            tracing::info!(sink = %rt.config.name, backend = rt.config.backend.as_str(), url = %rt.config.url, "mirror started");
        }
        Ok(Mirror {
            sinks,
            logs: (0..raft.shard_count())
                .map(|shard| raft.committed_log(shard))
                .collect(),
            tasks: std::sync::Mutex::new(tasks),
            stop,
        })
    }

    fn runtime(&self, sink: &str) -> Result<&Arc<SinkRuntime>> {
        self.sinks
            .iter()
            .find(|s| s.config.name == sink)
            .ok_or_else(|| Error::UnknownSink(sink.to_owned()))
    }

    /// Every sink's status.
    pub fn status(&self) -> Vec<SinkStatus> {
        let now = now_ns();
        self.sinks
            .iter()
            .map(|rt| {
                let st = &rt.stats;
                let mut lag_entries = 0;
                let mut lag_records = 0;
                let mut oldest = i64::MAX;
                let shards = st
                    .shards
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let active = p.active.load(Ordering::Relaxed);
                        let cursor = p.cursor.load(Ordering::Relaxed);
                        // The log's now, not the worker's last look: a worker waiting
                        // out a failing backend does not read the log, and its lag still
                        // grows.
                        let watermark = self.logs.get(i).map_or(0, |l| l.watermark());
                        if active {
                            let behind = watermark
                                .saturating_sub(p.delivered_to.load(Ordering::Relaxed).max(cursor));
                            lag_entries += behind;
                            lag_records +=
                                behind * p.records_per_entry_milli.load(Ordering::Relaxed) / 1000;
                            let o = p.oldest_pending_ns.load(Ordering::Relaxed);
                            if o > 0 {
                                oldest = oldest.min(o);
                            }
                        }
                        SinkShardStatus {
                            shard: i as u32,
                            active,
                            cursor,
                            watermark,
                            stalled: p.stalled.lock().ok().and_then(|s| s.clone()),
                        }
                    })
                    .collect();
                SinkStatus {
                    name: rt.config.name.clone(),
                    backend: rt.config.backend,
                    url: rt.config.url.clone(),
                    breaker: rt.breaker.state(),
                    records_sent: st.records_sent.load(Ordering::Relaxed),
                    dead_lettered: st.dead_lettered.load(Ordering::Relaxed),
                    dead_letters_held: rt.dlq.size().0,
                    dropped: st.dropped.load(Ordering::Relaxed),
                    lag_entries,
                    lag_records,
                    lag_seconds: if oldest == i64::MAX {
                        0.0
                    } else {
                        (now - oldest).max(0) as f64 / 1e9
                    },
                    last_error: st.last_error.lock().ok().and_then(|e| e.clone()),
                    shards,
                }
            })
            .collect()
    }

    /// Appends every sink's metrics in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let status = self.status();
        let mut family =
            |name: &str,
             kind: &str,
             help: &str,
             values: &mut dyn Iterator<Item = (String, String)>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (labels, v) in values {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            };
        let l = |rt: &SinkRuntime| {
            format!(
                "backend=\"{}\",sink=\"{}\"",
                rt.config.backend.as_str(),
                rt.config.name
            )
        };
        macro_rules! counter {
            ($name:expr, $help:expr, $field:ident) => {
                family(
                    $name,
                    "counter",
                    $help,
                    &mut self
                        .sinks
                        .iter()
                        .map(|rt| (l(rt), rt.stats.$field.load(Ordering::Relaxed).to_string())),
                );
            };
        }
        counter!(
            "weir_mirror_records_sent_total",
            "records the backend has stored",
            records_sent
        );
        counter!(
            "weir_mirror_bytes_sent_total",
            "request body bytes sent, every attempt",
            bytes_sent
        );
        counter!("weir_mirror_requests_total", "requests sent", requests);
        counter!(
            "weir_mirror_retries_total",
            "requests or items sent again",
            retries
        );
        counter!(
            "weir_mirror_dead_lettered_records_total",
            "records the backend refused for good",
            dead_lettered
        );
        counter!(
            "weir_mirror_dropped_records_total",
            "records released before this sink received them",
            dropped
        );
        family(
            "weir_mirror_write_failed_total",
            "counter",
            "failed requests (or items) by reason",
            &mut self.sinks.iter().flat_map(|rt| {
                let f = rt
                    .stats
                    .failures
                    .lock()
                    .map(|f| f.clone())
                    .unwrap_or_default();
                let base = l(rt);
                f.into_iter()
                    .map(move |(reason, n)| (format!("{base},reason=\"{reason}\""), n.to_string()))
            }),
        );
        // Gauges come from one status snapshot, which lists the sinks in the same order.
        type Gauge = (&'static str, &'static str, fn(&SinkStatus) -> String);
        let gauges: [Gauge; 5] = [
            (
                "weir_mirror_breaker_state",
                "circuit breaker: 0 closed, 1 open, 2 half-open",
                |s| s.breaker.as_number().to_string(),
            ),
            (
                "weir_mirror_lag_entries",
                "committed log entries not yet delivered",
                |s| s.lag_entries.to_string(),
            ),
            (
                "weir_mirror_lag_records",
                "records not yet delivered (estimated from the mean records per entry)",
                |s| s.lag_records.to_string(),
            ),
            (
                "weir_mirror_lag_seconds",
                "age of the oldest record being delivered",
                |s| s.lag_seconds.to_string(),
            ),
            (
                "weir_mirror_dead_letters",
                "records held in the dead-letter log",
                |s| s.dead_letters_held.to_string(),
            ),
        ];
        for (name, help, value) in gauges {
            family(
                name,
                "gauge",
                help,
                &mut status.iter().map(|s| {
                    (
                        format!("backend=\"{}\",sink=\"{}\"", s.backend, s.name),
                        value(s),
                    )
                }),
            );
        }
    }

    /// The dead letters of `sink`, oldest first.
    ///
    /// # Errors
    /// [`Error::UnknownSink`].
    pub fn dead_letters(&self, sink: &str) -> Result<Vec<DeadLetter>> {
        Ok(self.runtime(sink)?.dlq.list())
    }

    /// Sends the dead letters of `sink` (all, or those with the given sequence numbers)
    /// again. Delivered ones are removed; refused ones stay with the new reason; when the
    /// backend stays unavailable for 5 attempts the rest stay untouched.
    ///
    /// # Errors
    /// [`Error::UnknownSink`]; I/O rewriting the dead-letter log.
    pub async fn replay(&self, sink: &str, seqs: Option<Vec<u64>>) -> Result<ReplayReport> {
        let rt = self.runtime(sink)?.clone();
        let letters: Vec<DeadLetter> = rt
            .dlq
            .list()
            .into_iter()
            .filter(|l| seqs.as_ref().is_none_or(|s| s.contains(&l.seq)))
            .collect();
        let mut report = ReplayReport {
            delivered: 0,
            rejected_again: 0,
            not_attempted: 0,
            error: None,
        };
        let stop = self.stop.subscribe();
        // Item identity -> sequence number, to match results back.
        let key = |it: &Item| (it.shard, it.index, it.offset);
        let by_key: std::collections::HashMap<(u32, u64, u32), u64> =
            letters.iter().map(|l| (key(&l.item), l.seq)).collect();
        let items: Vec<Item> = letters.iter().map(|l| l.item.clone()).collect();
        match worker::deliver(&rt, items, &stop, Some(5), None).await {
            Ok(rejected) => {
                let again: Vec<(u64, String)> = rejected
                    .iter()
                    .filter_map(|(it, r)| by_key.get(&key(it)).map(|s| (*s, r.clone())))
                    .collect();
                let refused: std::collections::HashSet<u64> =
                    again.iter().map(|(s, _)| *s).collect();
                let delivered: Vec<u64> = letters
                    .iter()
                    .map(|l| l.seq)
                    .filter(|s| !refused.contains(s))
                    .collect();
                rt.dlq.settle(&delivered, &again)?;
                report.delivered = delivered.len();
                report.rejected_again = again.len();
            }
            Err(worker::Unfinished::GaveUp(reason)) => {
                report.not_attempted = letters.len();
                report.error = Some(reason);
            }
            Err(worker::Unfinished::Stopped | worker::Unfinished::Released { .. }) => {
                report.not_attempted = letters.len();
                report.error = Some("the node is shutting down".into());
            }
        }
        tracing::info!(
            sink,
            delivered = report.delivered,
            rejected_again = report.rejected_again,
            not_attempted = report.not_attempted,
            "dead letters replayed"
        );
        Ok(report)
    }

    /// Tells every worker and replay to stop, without waiting (see [`Mirror::shutdown`]).
    pub fn signal_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops every worker. Workers finish what they are doing for up to a second; then
    /// requests still in flight are abandoned, as a crash would: their records are
    /// after the committed cursor and are sent again by the next leader or start, which
    /// the backends recognise as copies.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        for t in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                abort.abort();
            }
        }
    }
}
