//! Syslog listeners (off by default; one `[[syslog]]` table each): RFC 5424 and RFC 3164
//! over UDP (one message per datagram) and TCP (octet counting or newline framing, told
//! apart by the first byte of each frame, RFC 6587).
//!
//! Messages are parsed by `weir_ingest::parse_syslog` (a malformed one is stored whole as
//! its body, never lost) and gathered into batches of up to [`BATCH_RECORDS`] records or
//! [`BATCH_WAIT`], each appended like any other request.
//!
//! Bounds and what happens at them:
//! - between the sockets and the batcher, a queue of [`QUEUE_MESSAGES`] messages: a TCP
//!   connection waits (stops reading: the sender's TCP window fills), a UDP datagram is
//!   dropped and counted (`weir_syslog_messages_dropped_total{reason="queue_full"}`), since
//!   UDP has no way to push back;
//! - a message over `message_bytes_max` is dropped and counted (`reason="too_large"`);
//! - TCP connections per listener at most `connections_max`; one more is closed at once;
//! - a batch the node refuses as retryable (full, not committed in time) is retried for
//!   up to [`RETRY_FOR`], then dropped and counted (`reason="node_unavailable"`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use weir_proto::v1::{AppendRequest, Record};

use crate::append::Appender;
use crate::protocol::Protocol;

/// Records per appended batch at most.
pub const BATCH_RECORDS: usize = 1000;
/// How long the first message of a batch waits for others.
pub const BATCH_WAIT: Duration = Duration::from_millis(100);
/// Messages queued between the sockets and the batcher of one listener.
pub const QUEUE_MESSAGES: usize = 10_000;
/// How long a batch refused as retryable is retried before it is dropped.
pub const RETRY_FOR: Duration = Duration::from_secs(10);

/// `[[syslog]]`: one listener.
///
/// ```toml
/// [[syslog]]
/// listen = "0.0.0.0:514"
/// transport = "udp"        # or "tcp"
/// tenant = "default"
/// ```
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// `udp` or `tcp`.
    pub transport: Transport,
    /// The tenant every message of this listener is stored under.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Bytes of one message at most; a longer one is dropped and counted.
    #[serde(default = "default_message_bytes_max")]
    pub message_bytes_max: usize,
    /// TCP connections served at once (ignored for UDP).
    #[serde(default = "default_connections_max")]
    pub connections_max: usize,
}

fn default_tenant() -> String {
    weir_proto::DEFAULT_TENANT.to_owned()
}
fn default_message_bytes_max() -> usize {
    64 << 10
}
fn default_connections_max() -> usize {
    256
}

/// The transport of a syslog listener.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// One message per datagram.
    Udp,
    /// RFC 6587: octet counting or newline framing.
    Tcp,
}

impl SyslogConfig {
    /// Checks what parses but cannot work.
    ///
    /// # Errors
    /// Names the listener and the key.
    pub fn validate(&self, limits: &weir_ingest::Limits) -> anyhow::Result<()> {
        weir_ingest::normalize_tenant(&self.tenant, limits)
            .map_err(|e| anyhow::anyhow!("syslog[listen={}].tenant: {e}", self.listen))?;
        anyhow::ensure!(
            (1..=limits.record_bytes_max.max(1)).contains(&self.message_bytes_max),
            "syslog[listen={}].message_bytes_max must be between 1 and limits.record_bytes_max ({})",
            self.listen,
            limits.record_bytes_max
        );
        anyhow::ensure!(
            self.connections_max > 0,
            "syslog[listen={}].connections_max must be positive",
            self.listen
        );
        Ok(())
    }
}

/// Messages dropped by the syslog listeners, by reason.
#[derive(Default)]
pub struct SyslogCounters {
    /// Parsed and handed to the append path.
    pub received: AtomicU64,
    /// The queue to the batcher was full (UDP only).
    pub dropped_queue_full: AtomicU64,
    /// Over `message_bytes_max`.
    pub dropped_too_large: AtomicU64,
    /// The node refused the batch for longer than [`RETRY_FOR`].
    pub dropped_node_unavailable: AtomicU64,
    /// Stored whole because they did not parse as syslog.
    pub malformed: AtomicU64,
}

impl SyslogCounters {
    /// Renders the counters in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP weir_syslog_messages_received_total syslog messages handed to the append path\n# TYPE weir_syslog_messages_received_total counter\nweir_syslog_messages_received_total {}", v(&self.received));
        let _ = writeln!(out, "# HELP weir_syslog_messages_malformed_total syslog messages that did not parse, stored whole as their body\n# TYPE weir_syslog_messages_malformed_total counter\nweir_syslog_messages_malformed_total {}", v(&self.malformed));
        let _ = writeln!(out, "# HELP weir_syslog_messages_dropped_total syslog messages not stored, by reason\n# TYPE weir_syslog_messages_dropped_total counter");
        for (reason, c) in [
            ("queue_full", &self.dropped_queue_full),
            ("too_large", &self.dropped_too_large),
            ("node_unavailable", &self.dropped_node_unavailable),
        ] {
            let _ = writeln!(
                out,
                "weir_syslog_messages_dropped_total{{reason=\"{reason}\"}} {}",
                v(c)
            );
        }
    }
}

/// A running listener.
pub struct Listener {
    /// Where it listens (the port, when `listen` gave 0).
    pub addr: SocketAddr,
    /// Its tasks.
    pub tasks: Vec<JoinHandle<()>>,
}

/// Starts one listener and its batcher; they stop when `stop` turns true.
///
/// # Errors
/// The address cannot be bound.
pub async fn start(
    cfg: SyslogConfig,
    appender: Arc<Appender>,
    counters: Arc<SyslogCounters>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Listener> {
    let (tx, rx) = mpsc::channel::<Record>(QUEUE_MESSAGES);
    let protocol = match cfg.transport {
        Transport::Udp => Protocol::SyslogUdp,
        Transport::Tcp => Protocol::SyslogTcp,
    };
    let batcher = tokio::spawn(batch_loop(
        rx,
        appender,
        cfg.tenant.clone(),
        protocol,
        counters.clone(),
    ));
    let (addr, reader) = match cfg.transport {
        Transport::Udp => {
            let socket = UdpSocket::bind(cfg.listen).await.map_err(|e| {
                anyhow::anyhow!("cannot listen on syslog[listen={}] (udp): {e}", cfg.listen)
            })?;
            let addr = socket.local_addr()?;
            (
                addr,
                tokio::spawn(udp_loop(socket, cfg, tx, counters, stop)),
            )
        }
        Transport::Tcp => {
            let listener = TcpListener::bind(cfg.listen).await.map_err(|e| {
                anyhow::anyhow!("cannot listen on syslog[listen={}] (tcp): {e}", cfg.listen)
            })?;
            let addr = listener.local_addr()?;
            (
                addr,
                tokio::spawn(tcp_loop(listener, cfg, tx, counters, stop)),
            )
        }
    };
    tracing::info!(%addr, ?protocol, "syslog listener");
    Ok(Listener {
        addr,
        tasks: vec![reader, batcher],
    })
}

/// Resolves when `stop` turns true (the guard `wait_for` returns is not `Send`: it is
/// dropped in here, not held across a `select!`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn parse(msg: &[u8], counters: &SyslogCounters) -> Record {
    let record = weir_ingest::parse_syslog(msg, weir_proto::now_ns());
    if record.attributes.contains_key("syslog.error") {
        counters.malformed.fetch_add(1, Ordering::Relaxed);
    }
    record
}

async fn udp_loop(
    socket: UdpSocket,
    cfg: SyslogConfig,
    tx: mpsc::Sender<Record>,
    counters: Arc<SyslogCounters>,
    mut stop: watch::Receiver<bool>,
) {
    // One byte more than the limit tells a datagram that was cut from one that fit.
    let mut buf = vec![0u8; cfg.message_bytes_max + 1];
    loop {
        let n = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, _)) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "syslog udp receive failed");
                    continue;
                }
            },
            () = stopped(&mut stop) => return,
        };
        if n > cfg.message_bytes_max {
            counters.dropped_too_large.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if tx.try_send(parse(&buf[..n], &counters)).is_err() {
            counters.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn tcp_loop(
    listener: TcpListener,
    cfg: SyslogConfig,
    tx: mpsc::Sender<Record>,
    counters: Arc<SyslogCounters>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(cfg.connections_max));
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "syslog tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                limit = cfg.connections_max,
                "syslog tcp connection refused: connections_max reached"
            );
            continue;
        };
        let (tx, counters, stop) = (tx.clone(), counters.clone(), stop.clone());
        let max = cfg.message_bytes_max;
        tokio::spawn(async move {
            tcp_connection(stream, max, tx, counters, stop).await;
            drop(slot);
        });
    }
}

async fn tcp_connection(
    mut stream: tokio::net::TcpStream,
    max: usize,
    tx: mpsc::Sender<Record>,
    counters: Arc<SyslogCounters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut framer = weir_ingest::SyslogFramer::new(max);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            () = stopped(&mut stop) => return,
        };
        for message in framer.push(&buf[..n]) {
            match message {
                Ok(m) => {
                    // Waits when the queue is full: the sender is slowed, nothing dropped.
                    if tx.send(parse(&m, &counters)).await.is_err() {
                        return;
                    }
                }
                Err(_) => {
                    counters.dropped_too_large.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    if let Some(m) = framer.finish() {
        let _ = tx.send(parse(&m, &counters)).await;
    }
}

/// Gathers records into batches and appends them.
async fn batch_loop(
    mut rx: mpsc::Receiver<Record>,
    appender: Arc<Appender>,
    tenant: String,
    protocol: Protocol,
    counters: Arc<SyslogCounters>,
) {
    // Each batch carries this producer and the next sequence, so that a batch retried
    // after a commit timeout is not stored twice.
    let producer = format!("{}/{}", protocol.as_str(), weir_proto::now_ns());
    let mut sequence = 0u64;
    while let Some(first) = rx.recv().await {
        sequence += 1;
        let mut records = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while records.len() < BATCH_RECORDS {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => records.push(r),
                Ok(None) | Err(_) => break,
            }
        }
        let req = AppendRequest {
            tenant: tenant.clone(),
            producer_id: producer.clone(),
            sequence,
            records,
        };
        append_batch(&appender, protocol, req, &counters).await;
    }
}

async fn append_batch(
    appender: &Appender,
    protocol: Protocol,
    req: AppendRequest,
    counters: &SyslogCounters,
) {
    let n = req.records.len() as u64;
    let give_up = tokio::time::Instant::now() + RETRY_FOR;
    let mut backoff = Duration::from_millis(100);
    loop {
        match appender.append_via(protocol, req.clone()).await {
            Ok(_) => {
                counters.received.fetch_add(n, Ordering::Relaxed);
                return;
            }
            Err(e) if e.retryable() && tokio::time::Instant::now() + backoff < give_up => {
                tracing::debug!(error = %e.message, "syslog batch refused; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::warn!(error = %e.message, records = n, "syslog batch dropped");
                counters
                    .dropped_node_unavailable
                    .fetch_add(n, Ordering::Relaxed);
                return;
            }
        }
    }
}
