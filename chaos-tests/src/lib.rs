//! Fault injection against a real Weir cluster: `weir server` processes on loopback, a
//! writer that records every acknowledged record, and a checker that reads every node's
//! copy back through the search API.
//!
//! - [`Cluster`] starts N processes from the `weir` binary next to this test's target
//!   directory (or `$WEIR_BIN`). Every connection between two nodes, and from clients to a
//!   node, goes through a [`Proxy`] owned by the harness, so a partition is real: the
//!   proxies of a node's links refuse connections and cut the open ones.
//! - Faults: [`Cluster::kill`] (SIGKILL), [`Cluster::pause`]/[`Cluster::resume`]
//!   (SIGSTOP/SIGCONT), [`Cluster::isolate`]/[`Cluster::heal`], [`Cluster::restart`],
//!   [`Cluster::wipe`] (delete the data directory of a stopped node).
//! - [`Writer`] appends batches with a producer id and sequence, retrying a batch on any
//!   retryable error against the next node with the same sequence, and records what was
//!   acknowledged (and what was given up on: uncertain, it may or may not be stored).
//! - [`check`] reads every node's search answer and reports records lost, duplicated and
//!   appearing without having been written.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use weir_proto::api::cluster::{ClusterStatus, Health};
use weir_proto::api::search::SearchResponse;
use weir_proto::v1::ingest_client::IngestClient;
use weir_proto::v1::{AppendRequest, Record};
use weir_testkit::ports::loopback_addr;

/// A TCP proxy toward one address that can be cut.
pub struct Proxy {
    addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let blocked = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (b, c) = (blocked.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if b.load(Ordering::Acquire) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut g = c.lock().unwrap();
                g.retain(|h| !h.is_finished());
                g.push(task.abort_handle());
            }
        })
        .abort_handle();
        Ok(Proxy {
            addr,
            blocked,
            conns,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Refuses new connections and cuts the open ones.
    pub fn block(&self) {
        self.blocked.store(true, Ordering::Release);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// Lets connections through again.
    pub fn unblock(&self) {
        self.blocked.store(false, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.block();
    }
}

/// One node process and its addresses.
pub struct NodeProc {
    /// Raft id (1-based).
    pub id: u64,
    /// Its own HTTP address (not proxied: the checker reads its copy directly).
    pub http: SocketAddr,
    grpc: SocketAddr,
    peer: SocketAddr,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// A cluster of `weir server` processes on loopback, every link through a [`Proxy`].
pub struct Cluster {
    /// Where configs, data and logs live.
    pub dir: tempfile::TempDir,
    /// The nodes, index `id - 1`.
    pub nodes: Vec<NodeProc>,
    /// `links[(from, to)]`: the proxy node `from` uses to reach node `to`'s peer port.
    links: HashMap<(u64, u64), Proxy>,
    /// `clients[id]`: the proxy clients use to reach node `id`'s gRPC port.
    clients: HashMap<u64, Proxy>,
    bin: PathBuf,
    /// Faults injected so far, in order, for the summary.
    pub faults: Vec<String>,
}

/// The `weir` binary: `$WEIR_BIN`, or the one cargo built next to this executable.
pub fn weir_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("WEIR_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("weir");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "cannot find the weir binary next to {} (build it with `cargo build -p weir-server`, or set WEIR_BIN)",
        exe.display()
    )
}

impl Cluster {
    /// Starts `n` nodes with `shards` shards and waits until every shard has a leader.
    pub async fn start(n: u64, shards: u32) -> anyhow::Result<Cluster> {
        Self::start_with(n, shards, "").await
    }

    /// Like [`Cluster::start`], with `extra` TOML tables appended to every node's config
    /// (mirror sinks, for example).
    pub async fn start_with(n: u64, shards: u32, extra: &str) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("weir-chaos-").tempdir()?;
        let bin = weir_bin()?;
        let mut nodes = Vec::new();
        for id in 1..=n {
            nodes.push(NodeProc {
                id,
                http: loopback_addr(),
                grpc: loopback_addr(),
                peer: loopback_addr(),
                config: dir.path().join(format!("node{id}.toml")),
                data: dir.path().join(format!("node{id}")),
                log: dir.path().join(format!("node{id}.log")),
                child: None,
                paused: false,
            });
        }
        let mut links = HashMap::new();
        for from in 1..=n {
            for to in (1..=n).filter(|t| *t != from) {
                links.insert((from, to), Proxy::start(nodes[to as usize - 1].peer).await?);
            }
        }
        let mut clients = HashMap::new();
        for node in &nodes {
            clients.insert(node.id, Proxy::start(node.grpc).await?);
        }
        let mut c = Cluster {
            dir,
            nodes,
            links,
            clients,
            bin,
            faults: Vec::new(),
        };
        for id in 1..=n {
            let text = c.config_text(id, shards) + extra;
            std::fs::write(&c.nodes[id as usize - 1].config, text)?;
        }
        for id in 1..=n {
            c.spawn(id)?;
        }
        if let Err(e) = wait_healthy(&c, Duration::from_secs(60)).await {
            // The directory goes with `c`: say here what each node wrote.
            let tails: Vec<String> = (1..=n)
                .map(|id| format!("--- node {id}\n{}", c.log_tail(id)))
                .collect();
            anyhow::bail!("{e:#}\n{}", tails.join("\n"));
        }
        Ok(c)
    }

    fn config_text(&self, id: u64, shards: u32) -> String {
        let me = &self.nodes[id as usize - 1];
        let mut s = format!(
            "data_dir = {:?}\ngrpc_addr = \"{}\"\nhttp_addr = \"{}\"\n\n[storage]\nshards = {shards}\ncommit_timeout_ms = 5000\n\n[index]\nwriter_memory_bytes = 16777216\ncommit_interval_ms = 200\n\n[cluster]\nnode_id = {id}\npeer_addr = \"{}\"\n",
            me.data.display().to_string(),
            me.grpc,
            me.http,
            me.peer
        );
        for other in &self.nodes {
            let peer = if other.id == id {
                other.peer
            } else {
                self.links[&(id, other.id)].addr()
            };
            s.push_str(&format!(
                "\n[[cluster.nodes]]\nid = {}\npeer = \"{peer}\"\ngrpc = \"{}\"\nhttp = \"{}\"\n",
                other.id, other.grpc, other.http
            ));
        }
        s
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let bin = self.bin.clone();
        let n = &mut self.nodes[id as usize - 1];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let child = Command::new(&bin)
            .args(["server", "--config"])
            .arg(&n.config)
            .env("RUST_LOG", "info,raft=warn,tantivy=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    fn pid(&self, id: u64) -> Option<i32> {
        self.nodes[id as usize - 1]
            .child
            .as_ref()
            .map(|c| c.id() as i32)
    }

    fn signal(&self, id: u64, sig: i32) {
        if let Some(pid) = self.pid(id) {
            // SAFETY: kill(2) on a child process we started and have not reaped.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// SIGKILL: the node dies without a chance to flush anything.
    pub fn kill(&mut self, id: u64) {
        let n = &mut self.nodes[id as usize - 1];
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the node freezes (its peers see it time out; its sockets stay open).
    pub fn pause(&mut self, id: u64) {
        self.signal(id, libc::SIGSTOP);
        self.nodes[id as usize - 1].paused = true;
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT);
        self.nodes[id as usize - 1].paused = false;
    }

    /// Starts a killed node again with its data (or none, after [`Cluster::wipe`]).
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.spawn(id)
    }

    /// Deletes the data directory of a killed node.
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        let n = &self.nodes[id as usize - 1];
        anyhow::ensure!(n.child.is_none(), "wipe a node only after killing it");
        match std::fs::remove_dir_all(&n.data) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Cuts node `id` off from every other node and from clients.
    pub fn isolate(&mut self, id: u64) {
        for ((from, to), p) in &self.links {
            if *from == id || *to == id {
                p.block();
            }
        }
        self.clients[&id].block();
    }

    /// Undoes every partition.
    pub fn heal(&mut self) {
        for p in self.links.values().chain(self.clients.values()) {
            p.unblock();
        }
    }

    /// gRPC addresses clients use (through the proxies), by node id.
    pub fn client_addrs(&self) -> Vec<String> {
        let mut v: Vec<(u64, String)> = self
            .clients
            .iter()
            .map(|(id, p)| (*id, format!("http://{}", p.addr())))
            .collect();
        v.sort();
        v.into_iter().map(|(_, a)| a).collect()
    }

    /// The cluster status as node `id` reports it.
    pub async fn status(&self, id: u64) -> anyhow::Result<ClusterStatus> {
        status_of(self.nodes[id as usize - 1].http).await
    }

    /// The tail of a node's log, for failure messages.
    pub fn log_tail(&self, id: u64) -> String {
        let text = std::fs::read_to_string(&self.nodes[id as usize - 1].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Keeps the directory (configs, data, logs) after the run, for a post-mortem.
    pub fn keep(self) -> PathBuf {
        let mut c = self;
        for n in &mut c.nodes {
            if let Some(mut ch) = n.child.take() {
                if n.paused {
                    // SAFETY: as in `signal`.
                    unsafe { libc::kill(ch.id() as i32, libc::SIGCONT) };
                }
                let _ = ch.kill();
                let _ = ch.wait();
            }
        }
        let dir = std::mem::replace(&mut c.dir, tempfile::tempdir().expect("temp dir"));
        dir.keep()
    }

    /// Directory of node `id`'s data.
    pub fn data_dir(&self, id: u64) -> &Path {
        &self.nodes[id as usize - 1].data
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                // SAFETY: as in `signal`; a paused child must run to die of SIGTERM.
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGCONT);
                    libc::kill(c.id() as i32, libc::SIGTERM);
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// What writers know: every record acknowledged, and every record whose batch was given up
/// on (it may or may not be stored, but never twice).
#[derive(Default)]
pub struct Ledger {
    /// Bodies acknowledged.
    pub acked: HashSet<String>,
    /// Bodies of batches given up on.
    pub uncertain: HashSet<String>,
    /// Batches acknowledged.
    pub batches_acked: u64,
    /// Batches given up on.
    pub batches_given_up: u64,
    /// The longest time between two acknowledgements of one writer.
    pub longest_ack_gap: Duration,
}

/// A writer appending batches until stopped.
pub struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Records per batch.
pub const BATCH: usize = 20;

impl Writer {
    /// Starts writer `id` appending to `targets` (any node, round robin from a random one).
    pub fn start(id: u32, targets: Vec<String>, ledger: Arc<Mutex<Ledger>>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut clients: HashMap<String, IngestClient<tonic::transport::Channel>> =
                HashMap::new();
            let mut next = rand::random::<u32>() as usize;
            let mut last_ack = Instant::now();
            let mut seq = 0u64;
            while !s.load(Ordering::Acquire) {
                seq += 1;
                let bodies: Vec<String> =
                    (0..BATCH).map(|r| format!("w{id}-b{seq}-r{r}")).collect();
                let req = AppendRequest {
                    producer_id: format!("chaos-writer-{id}"),
                    sequence: seq,
                    records: bodies
                        .iter()
                        .enumerate()
                        .map(|(r, b)| Record {
                            body: b.clone().into_bytes(),
                            labels: [("stream".to_string(), format!("w{id}-{}", r % 8))].into(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                };
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut acked = false;
                while Instant::now() < deadline {
                    let target = targets[next % targets.len()].clone();
                    let client = match clients.get(&target) {
                        Some(c) => Some(c.clone()),
                        None => match tonic::transport::Endpoint::from_shared(target.clone())
                            .expect("valid uri")
                            .connect_timeout(Duration::from_secs(1))
                            .connect()
                            .await
                        {
                            Ok(ch) => {
                                let c = IngestClient::new(ch);
                                clients.insert(target.clone(), c.clone());
                                Some(c)
                            }
                            Err(_) => None,
                        },
                    };
                    if let Some(mut c) = client {
                        let mut r = tonic::Request::new(req.clone());
                        r.set_timeout(Duration::from_secs(7));
                        if let Some(v) = api_key().and_then(|k| format!("Bearer {k}").parse().ok())
                        {
                            r.metadata_mut().insert("authorization", v);
                        }
                        match c.append(r).await {
                            Ok(resp) => {
                                let resp = resp.into_inner();
                                assert!(
                                    resp.rejected.is_empty(),
                                    "records rejected: {:?}",
                                    resp.rejected
                                );
                                acked = true;
                                break;
                            }
                            Err(status) => {
                                assert!(
                                    !matches!(status.code(), tonic::Code::InvalidArgument),
                                    "append refused as invalid: {status}"
                                );
                                clients.remove(&target);
                            }
                        }
                    }
                    next += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let mut l = ledger.lock().unwrap();
                if acked {
                    let gap = last_ack.elapsed();
                    l.longest_ack_gap = l.longest_ack_gap.max(gap);
                    last_ack = Instant::now();
                    l.batches_acked += 1;
                    l.acked.extend(bodies);
                } else {
                    l.batches_given_up += 1;
                    l.uncertain.extend(bodies);
                }
            }
        });
        Writer { stop, task }
    }

    /// Stops after the batch in flight.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.task.await;
    }
}

/// What one node's search answer holds, against the ledger.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Node asked.
    pub node: u64,
    /// Records found.
    pub found: usize,
    /// Acknowledged records missing.
    pub lost: Vec<String>,
    /// Records found more than once.
    pub duplicated: Vec<String>,
    /// Records found that no writer sent.
    pub phantom: Vec<String>,
}

impl Verdict {
    /// Nothing lost, duplicated or invented.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty() && self.phantom.is_empty()
    }
}

/// The access key the harness presents to a cluster with keys on (the compose cluster):
/// set by [`set_api_key`], else `$WEIR_KEY`; none for the local processes (loopback,
/// keys off).
static API_KEY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Makes every later request of the harness present `key`. Only the first call counts.
pub fn set_api_key(key: String) {
    let _ = API_KEY.set(Some(key));
}

fn api_key() -> Option<&'static str> {
    API_KEY
        .get_or_init(|| std::env::var("WEIR_KEY").ok().filter(|k| !k.is_empty()))
        .as_deref()
}

/// An HTTP client presenting [`api_key`], if any.
fn http_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(v) = api_key().and_then(|k| format!("Bearer {k}").parse().ok()) {
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap_or_default()
}

/// Every record node `http` returns for the chaos writers' bodies, with its count.
pub async fn read_all(http: SocketAddr) -> anyhow::Result<HashMap<String, usize>> {
    let client = http_client();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as i64;
    let hour = 3_600_000_000_000i64;
    let mut counts = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut params = vec![
            ("start", (now - 6 * hour).to_string()),
            ("end", (now + hour).to_string()),
            ("sort", "time_asc".to_string()),
            ("limit", "1000".to_string()),
        ];
        if let Some(c) = &cursor {
            params.push(("cursor", c.clone()));
        }
        let v: SearchResponse = client
            .get(format!("http://{http}/api/v1/search"))
            .query(&params)
            .timeout(Duration::from_secs(10))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        anyhow::ensure!(
            !v.partial,
            "partial answer: shards {:?} missing",
            v.missing_shards
        );
        for h in v.hits {
            *counts.entry(h.body).or_insert(0) += 1;
        }
        match v.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok(counts)
}

/// Compares node `node`'s answer with the ledger.
pub fn judge(node: u64, counts: &HashMap<String, usize>, ledger: &Ledger) -> Verdict {
    let mut v = Verdict {
        node,
        found: counts.len(),
        ..Default::default()
    };
    for a in &ledger.acked {
        if !counts.contains_key(a) {
            v.lost.push(a.clone());
        }
    }
    for (b, n) in counts {
        if *n > 1 {
            v.duplicated.push(b.clone());
        }
        if !ledger.acked.contains(b) && !ledger.uncertain.contains(b) {
            v.phantom.push(b.clone());
        }
    }
    v.lost.sort();
    v.duplicated.sort();
    v.phantom.sort();
    v
}

/// Reads every running node's copy until each is clean or `timeout` passes (replicas
/// catch up and index in the meantime); returns the last verdict of each node.
pub async fn check(cluster: &impl Faults, ledger: &Ledger, timeout: Duration) -> Vec<Verdict> {
    let deadline = Instant::now() + timeout;
    let mut verdicts = Vec::new();
    for (id, http) in cluster.running_http() {
        loop {
            let v = match read_all(http).await {
                Ok(counts) => judge(id, &counts, ledger),
                Err(e) => Verdict {
                    node: id,
                    lost: vec![format!("(search failed: {e})")],
                    ..Default::default()
                },
            };
            // Duplicates and phantoms never heal: stop at once. Lost records may still be
            // on their way to this replica's index.
            if v.is_clean()
                || !v.duplicated.is_empty()
                || !v.phantom.is_empty()
                || Instant::now() >= deadline
            {
                verdicts.push(v);
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    verdicts
}

/// The one-paragraph summary of a run.
pub fn summary(faults: &[String], ledger: &Ledger, verdicts: &[Verdict]) -> String {
    let mut s = format!(
        "faults injected: {}\n{}\nbatches acked: {} ({} records), given up: {} ({} records, may or may not be stored)\nlongest gap between two acks of one writer: {:.2} s\n",
        faults.len(),
        faults.iter().map(|f| format!("  - {f}")).collect::<Vec<_>>().join("\n"),
        ledger.batches_acked,
        ledger.acked.len(),
        ledger.batches_given_up,
        ledger.uncertain.len(),
        ledger.longest_ack_gap.as_secs_f64(),
    );
    for v in verdicts {
        s.push_str(&format!(
            "node {}: found {}, lost {}, duplicated {}, phantom {}{}\n",
            v.node,
            v.found,
            v.lost.len(),
            v.duplicated.len(),
            v.phantom.len(),
            if v.is_clean() {
                String::new()
            } else {
                format!(
                    " (first lost {:?}, duplicated {:?}, phantom {:?})",
                    v.lost.iter().take(3).collect::<Vec<_>>(),
                    v.duplicated.iter().take(3).collect::<Vec<_>>(),
                    v.phantom.iter().take(3).collect::<Vec<_>>()
                )
            }
        ));
    }
    s
}

/// What a fault round needs of a cluster: the loopback [`Cluster`] of processes, or the
/// compose cluster ([`DockerCluster`]).
pub trait Faults {
    /// Members, ids `1..=n`.
    fn members(&self) -> u64;
    /// HTTP addresses of the nodes that run (neither killed nor frozen), by id.
    fn running_http(&self) -> Vec<(u64, SocketAddr)>;
    /// Faults injected so far.
    fn injected(&mut self) -> &mut Vec<String>;
    /// SIGKILL.
    fn kill_node(&mut self, id: u64) -> anyhow::Result<()>;
    /// Starts a killed node again (empty after [`Faults::wipe_node`]).
    fn restart_node(&mut self, id: u64) -> anyhow::Result<()>;
    /// Freezes a node.
    fn pause_node(&mut self, id: u64) -> anyhow::Result<()>;
    /// Thaws it.
    fn resume_node(&mut self, id: u64) -> anyhow::Result<()>;
    /// Cuts a node off from its peers and its clients.
    fn isolate_node(&mut self, id: u64) -> anyhow::Result<()>;
    /// Undoes every partition.
    fn heal_all(&mut self) -> anyhow::Result<()>;
    /// Deletes a killed node's data.
    fn wipe_node(&mut self, id: u64) -> anyhow::Result<()>;
}

impl Faults for Cluster {
    fn members(&self) -> u64 {
        self.nodes.len() as u64
    }
    fn running_http(&self) -> Vec<(u64, SocketAddr)> {
        // A frozen node would only make its callers wait for their timeout.
        self.nodes
            .iter()
            .filter(|n| n.child.is_some() && !n.paused)
            .map(|n| (n.id, n.http))
            .collect()
    }
    fn injected(&mut self) -> &mut Vec<String> {
        &mut self.faults
    }
    fn kill_node(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id);
        Ok(())
    }
    fn restart_node(&mut self, id: u64) -> anyhow::Result<()> {
        self.restart(id)
    }
    fn pause_node(&mut self, id: u64) -> anyhow::Result<()> {
        self.pause(id);
        Ok(())
    }
    fn resume_node(&mut self, id: u64) -> anyhow::Result<()> {
        self.resume(id);
        Ok(())
    }
    fn isolate_node(&mut self, id: u64) -> anyhow::Result<()> {
        self.isolate(id);
        Ok(())
    }
    fn heal_all(&mut self) -> anyhow::Result<()> {
        self.heal();
        Ok(())
    }
    fn wipe_node(&mut self, id: u64) -> anyhow::Result<()> {
        self.wipe(id)
    }
}

/// `GET /api/v1/cluster` of the node at `http`.
pub async fn status_of(http: SocketAddr) -> anyhow::Result<ClusterStatus> {
    let r = http_client()
        .get(format!("http://{http}/api/v1/cluster"))
        .timeout(Duration::from_secs(3))
        .send()
        .await?;
    Ok(r.json().await?)
}

/// The node leading `shard`, as any answering node reports it.
pub async fn leader_of(c: &impl Faults, shard: u32) -> Option<u64> {
    for (_, http) in c.running_http() {
        if let Ok(s) = status_of(http).await {
            let leader = s
                .view
                .and_then(|v| v.shards.into_iter().find(|s| s.shard == shard))
                .map_or(0, |s| s.leader);
            if leader != 0 {
                return Some(leader);
            }
        }
    }
    None
}

/// Waits until a running node reports health `ok`.
pub async fn wait_healthy(c: &impl Faults, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        // Every node, not any: a node still rejoining says "degraded" only in its own
        // view, and a fault injected before it caught up can destroy the last copy of
        // what it lost (two replicas of three lost is beyond any protocol).
        let mut all_ok = true;
        for (id, http) in c.running_http() {
            match status_of(http).await {
                Ok(s) if s.health == Health::Ok => {}
                Ok(s) => {
                    all_ok = false;
                    last = format!("node {id}: health {}", s.health);
                }
                Err(e) => {
                    all_ok = false;
                    last = format!("node {id}: {e}");
                }
            }
        }
        if all_ok {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("cluster not healthy within {timeout:?}: {last}")
}

/// One round of every fault, while writers run: SIGKILL of shard 0's leader and its
/// restart, a node frozen and thawed, a partition isolating a node, and a node killed,
/// wiped and restarted empty. `hold` is how long each fault lasts.
pub async fn fault_round(c: &mut impl Faults, round: u64, hold: Duration) -> anyhow::Result<()> {
    let n = c.members();
    let healthy = Duration::from_secs(90);
    let leader = leader_of(c, 0).await.unwrap_or(1);
    c.injected()
        .push(format!("SIGKILL node {leader} (leader of shard 0)"));
    c.kill_node(leader)?;
    tokio::time::sleep(hold).await;
    c.restart_node(leader)?;
    wait_healthy(c, healthy).await?;

    let victim = (round + 1) % n + 1;
    c.injected().push(format!("froze node {victim}"));
    c.pause_node(victim)?;
    tokio::time::sleep(hold).await;
    c.resume_node(victim)?;
    wait_healthy(c, healthy).await?;

    let victim = (round + 2) % n + 1;
    c.injected()
        .push(format!("partition isolating node {victim}"));
    c.isolate_node(victim)?;
    tokio::time::sleep(hold).await;
    c.heal_all()?;
    wait_healthy(c, healthy).await?;

    let victim = round % n + 1;
    c.injected().push(format!("wiped node {victim}"));
    c.kill_node(victim)?;
    c.wipe_node(victim)?;
    c.restart_node(victim)?;
    wait_healthy(c, healthy).await?;
    Ok(())
}

/// Mirror sinks toward an Elasticsearch and a Loki test server, as config tables.
pub fn mirror_sinks(es_url: &str, loki_url: &str) -> String {
    format!(
        "\n[[mirror.sinks]]\nname = \"es\"\ntype = \"elasticsearch\"\nurl = \"{es_url}\"\n\n[[mirror.sinks]]\nname = \"loki\"\ntype = \"loki\"\nurl = \"{loki_url}\"\n"
    )
}

/// What a backend received, against the ledger: acknowledged records missing, records
/// received more than once, and records no writer sent.
#[derive(Debug, Default)]
pub struct MirrorVerdict {
    /// Backend name.
    pub backend: &'static str,
    /// Distinct records received.
    pub received: usize,
    /// Acknowledged records never received.
    pub missing: Vec<String>,
    /// Records received more than once (with Loki, allowed: at least once).
    pub duplicated: Vec<String>,
    /// Records received that no writer sent.
    pub phantom: Vec<String>,
}

/// Judges the bodies a backend holds (`bodies`, one per stored copy).
pub fn judge_mirror(backend: &'static str, bodies: Vec<String>, ledger: &Ledger) -> MirrorVerdict {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for b in bodies {
        *counts.entry(b).or_default() += 1;
    }
    let v = judge(0, &counts, ledger);
    MirrorVerdict {
        backend,
        received: counts.len(),
        missing: v.lost,
        duplicated: v.duplicated,
        phantom: v.phantom,
    }
}

impl MirrorVerdict {
    /// One line: counts and the first few of each kind of fault.
    pub fn describe(&self) -> String {
        format!(
            "{}: received {}, missing {}, duplicated {}, phantom {} (first missing {:?}, duplicated {:?})",
            self.backend,
            self.received,
            self.missing.len(),
            self.duplicated.len(),
            self.phantom.len(),
            self.missing.iter().take(3).collect::<Vec<_>>(),
            self.duplicated.iter().take(3).collect::<Vec<_>>()
        )
    }
}

/// Waits (up to `timeout`) until the Elasticsearch and Loki test servers hold every
/// acknowledged record, then judges what each received. The mirrors run on each shard's
/// leader and resume from the cursor in raft after every failover, so they may still be
/// draining when the writers stop.
pub async fn await_mirrors(
    es: &weir_testkit::elasticsearch::FakeElasticsearch,
    loki: &weir_testkit::loki::FakeLoki,
    ledger: &Ledger,
    timeout: Duration,
) -> (MirrorVerdict, MirrorVerdict) {
    let deadline = Instant::now() + timeout;
    loop {
        let es_bodies: Vec<String> = es
            .docs()
            .iter()
            .filter_map(|d| d.source["message"].as_str().map(str::to_owned))
            .collect();
        let loki_bodies: Vec<String> = loki
            .all_entries()
            .into_values()
            .flatten()
            .map(|e| e.line)
            .collect();
        let es_v = judge_mirror("elasticsearch", es_bodies, ledger);
        let loki_v = judge_mirror("loki", loki_bodies, ledger);
        if (es_v.missing.is_empty() && loki_v.missing.is_empty()) || Instant::now() > deadline {
            return (es_v, loki_v);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether the mirrors kept their promises: Elasticsearch every acknowledged record
/// exactly once, Loki at least once, neither anything no writer sent.
pub fn mirrors_clean(es: &MirrorVerdict, loki: &MirrorVerdict) -> bool {
    es.missing.is_empty()
        && es.duplicated.is_empty()
        && es.phantom.is_empty()
        && loki.missing.is_empty()
        && loki.phantom.is_empty()
}

mod docker;
pub use docker::DockerCluster;
