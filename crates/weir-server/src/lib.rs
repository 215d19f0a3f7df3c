//! Weir's server: configuration, the gRPC and HTTP front ends, and the wiring of the raft
//! layer, the indexers and the searcher into one node.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let mut config = weir_server::Config::default();
//! config.grpc_addr = "127.0.0.1:0".parse()?; // port 0: tests ask the node which port it got
//! config.http_addr = "127.0.0.1:0".parse()?;
//! let node = weir_server::Node::start(config).await?;
//! println!("grpc on {}, http on {}", node.grpc_addr(), node.http_addr());
//! node.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod append;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod config_keys;
pub mod devcluster;
pub mod es_query;
pub mod grpc;
pub mod head;
pub mod http;
pub mod indexer;
pub mod keytable;
pub mod logql;
pub mod metrics;
pub mod peer;
pub mod protocol;
pub mod rules;
pub mod search;
pub mod segments;
pub mod snapshot;
pub mod state;
pub mod status;
pub mod syslog;
pub mod tail;
pub mod tenants;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_index::{IndexOptions, ShardIndex};
use weir_proto::ShardId;
use weir_raft::{NodeConfig, RaftNode};

pub use config::Config;

use crate::append::Appender;
use crate::indexer::Indexer;
use crate::metrics::Metrics;
use crate::search::Searcher;
use crate::state::NodeState;

/// A running node.
pub struct Node {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    stop: watch::Sender<bool>,
    grpc_task: JoinHandle<Result<(), tonic::transport::Error>>,
    peer_task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    peer_addr: Option<SocketAddr>,
    http_task: JoinHandle<std::io::Result<()>>,
    syslog_addrs: Vec<SocketAddr>,
    raft: Arc<RaftNode>,
    indexers: Vec<Indexer>,
    heads: Arc<head::Heads>,
    mirror: Arc<weir_mirror::Mirror>,
    state: Arc<NodeState>,
    /// The key and rule tables' refreshers and, on a cluster, the first admin key's
    /// proposer.
    key_tasks: Vec<JoinHandle<()>>,
    /// Reloads the TLS files when they change (when `[tls]` names any).
    tls_task: Option<JoinHandle<()>>,
}

impl Node {
    /// Opens the data directory (recovering WAL and indexes), starts raft, the indexers and
    /// both servers. Returns once they listen.
    ///
    /// # Errors
    /// Bad configuration, a corrupt log, ports in use.
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        config.validate()?;
        config.check_exposure()?;
        let tls = tls::NodeTls::load(&config.tls)?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        let (stop, stop_rx) = watch::channel(false);
        let tls_task = (tls.clients.is_some() || tls.peer_server.is_some()).then(|| {
            tls.spawn_reloader(
                Duration::from_secs(config.tls.reload_interval_secs),
                stop_rx.clone(),
            )
        });
        let metrics = Arc::new(Metrics::default());
        let Membership {
            cluster_id,
            rejoining,
            peer,
        } = join_cluster(&config, &tls, &stop_rx).await?;
        let links = peer.as_ref().map(|p| p.links.clone());
        let raft = open_raft(&config, rejoining, links.clone()).await?;
        let keys = keytable::RaftKeyStore::new(raft.clone());
        let mut key_tasks = vec![keys.spawn_refresher(stop_rx.clone())];
        let auth = Arc::new(auth::Auth::new(config.auth.enabled, keys.clone()));
        let rules = rules::RuleTable::new(Some(raft.clone()));
        key_tasks.push(rules.spawn_refresher(stop_rx.clone()));
        let limiter = Arc::new(tenants::TenantLimiter::new(
            config.tenant_limits.clone(),
            &config.tenants,
            config.cluster.nodes.len(),
        )?);
        // Before any indexer can ask for compaction: the WAL must keep what the mirrors
        // have not delivered from the first moment.
        raft.require_cursors(weir_mirror::config::cursor_names(&config.mirror.sinks));
        let (indexes, indexers, heads, segments) =
            start_indexers(&config, &raft, &metrics, &rules)?;
        let appender = Arc::new(
            Appender::new(
                raft.clone(),
                links.clone(),
                config.limits.to_limits(),
                Duration::from_millis(config.storage.commit_timeout_ms),
                metrics.clone(),
                limiter.clone(),
                rules.clone(),
            )
            .with_heads(heads.clone()),
        );
        let mirror = Arc::new(
            weir_mirror::Mirror::start(
                config.mirror.sinks.clone(),
                raft.clone(),
                &config.data_dir,
                &cluster_id,
                disk_pressure(config.data_dir.clone(), config.storage.disk_free_bytes_min),
            )
            .context("cannot start the mirrors")?,
        );
        let indexer_failed: Vec<_> = indexers.iter().map(Indexer::failure_slot).collect();
        let searcher = Arc::new(Searcher::new(
            indexes.clone(),
            links.clone().map(|links| search::ClusterView {
                raft: raft.clone(),
                links,
                indexer_failed: indexer_failed.clone(),
            }),
            Some(heads.clone()),
        ));
        let (peer_task, peer_addr) = match peer {
            Some(p) => {
                let addr = p.addr;
                if let Some(t) =
                    segments.spawn_follower(raft.clone(), p.links.clone(), stop_rx.clone())
                {
                    key_tasks.push(t);
                }
                let task = serve_peers(
                    p,
                    &config,
                    &raft,
                    indexes,
                    segments,
                    &searcher,
                    &metrics,
                    rejoining,
                    &cluster_id,
                )?;
                (Some(task), Some(addr))
            }
            None => (None, None),
        };
        let state = Arc::new(NodeState {
            config: config.clone(),
            raft: raft.clone(),
            searcher,
            appender: appender.clone(),
            links,
            metrics,
            mirror: mirror.clone(),
            cluster_id,
            indexer_failed,
            tail: tail::TailHub::new(raft.clone(), config.storage.shards),
            auth: auth.clone(),
            limiter,
            rules,
            tls_http_client: tls.http_client.clone(),
        });
        let mut syslog_addrs = Vec::new();
        for l in &config.syslog {
            let listener = syslog::start(
                l.clone(),
                appender.clone(),
                state.metrics.syslog.clone(),
                stop_rx.clone(),
            )
            .await?;
            syslog_addrs.push(listener.addr);
        }
        let front = start_front_door(
            &config,
            tls.clients.clone(),
            appender,
            auth.clone(),
            state.clone(),
            stop_rx.clone(),
        )
        .await?;
        if config.auth.enabled {
            let first_key = first_admin_key(config.clone(), raft.clone(), keys, stop_rx);
            if config.cluster.is_clustered() {
                // The others may not be up yet: the key comes when shard 0 has a leader.
                key_tasks.push(tokio::spawn(async move {
                    if let Err(e) = first_key.await {
                        tracing::error!(error = %format!("{e:#}"), "no first admin key");
                    }
                }));
            } else {
                // A single node leads at once: its key is there when `start` returns.
                tokio::time::timeout(Duration::from_secs(30), first_key)
                    .await
                    .context("the first admin key was not committed within 30 s")??;
            }
        }
        tracing::info!(grpc_addr = %front.grpc_addr, http_addr = %front.http_addr, data_dir = %config.data_dir.display(), backend = %raft.io_backend(), "weir node listening");
        Ok(Node {
            grpc_addr: front.grpc_addr,
            http_addr: front.http_addr,
            stop,
            grpc_task: front.grpc_task,
            peer_task,
            peer_addr,
            http_task: front.http_task,
            syslog_addrs,
            raft,
            indexers,
            heads,
            mirror,
            state,
            key_tasks,
            tls_task,
        })
    }

    /// Where each `[[syslog]]` listener listens, in configuration order.
    pub fn syslog_addrs(&self) -> &[SocketAddr] {
        &self.syslog_addrs
    }

    /// Where gRPC listens.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where HTTP listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the peer service listens (a node of a cluster only).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// Shared state (for tests and embedding).
    pub fn state(&self) -> &Arc<NodeState> {
        &self.state
    }

    /// Graceful shutdown: stop accepting, let in-flight requests finish (their appends are
    /// committed and answered), stop raft after its queue drained, commit the indexes.
    ///
    /// # Errors
    /// A server task failed.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        // Replays in HTTP handlers watch the mirror's stop signal; without it the HTTP
        // server's graceful shutdown would wait for them.
        self.mirror.signal_stop();
        // Open tails end here; the HTTP server's graceful shutdown would wait for them.
        let tail = self.state.tail.clone();
        tokio::task::spawn_blocking(move || tail.stop()).await?;
        for t in self.key_tasks.into_iter().chain(self.tls_task) {
            let _ = t.await;
        }
        let grpc = self.grpc_task.await;
        let http = self.http_task.await;
        if let Some(t) = self.peer_task {
            // Peers get UNAVAILABLE from now on and retry elsewhere.
            if let Ok(Err(e)) = t.await {
                tracing::warn!(error = %e, "peer server");
            }
        }
        // Mirrors stop first: a batch in flight is sent again from its cursor next time.
        self.mirror.shutdown().await;
        let raft = self.raft.clone();
        let indexers = self.indexers;
        let heads = self.heads;
        tokio::task::spawn_blocking(move || {
            heads.stop();
            raft.shutdown();
            for i in indexers {
                i.stop();
            }
        })
        .await?;
        grpc?.context("grpc server")?;
        http?.context("http server")?;
        tracing::info!("weir node stopped");
        Ok(())
    }
}

/// The shard count is fixed for the life of a data directory (it decides where every
/// stream lives): it is written on first start and checked on every later one. The file
/// also holds the cluster id (random when a cluster is founded, learnt from the others by a
/// node that joins), which keeps a node from joining another cluster with its data and the
/// Elasticsearch ids of a new cluster from colliding with those an old one left. Returns the
/// id, `None` when the directory has none yet.
fn read_node_file(config: &Config) -> anyhow::Result<(Option<String>, bool)> {
    let path = config.data_dir.join("weir-node.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
            let shards = v["shards"]
                .as_u64()
                .with_context(|| format!("{} has no \"shards\"", path.display()))?;
            anyhow::ensure!(
                shards == u64::from(config.storage.shards),
                "{} was created with {shards} shards but storage.shards is {}; the shard count of a data directory cannot change",
                config.data_dir.display(),
                config.storage.shards
            );
            Ok((
                v["cluster_id"].as_str().map(str::to_owned),
                v["rejoining"].as_bool().unwrap_or(false),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((None, false)),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes `weir-node.json` with the shard count, `cluster_id` and whether the node is
/// rejoining (it came back without its data and has not caught up yet).
fn write_node_file(config: &Config, cluster_id: &str, rejoining: bool) -> anyhow::Result<()> {
    let path = config.data_dir.join("weir-node.json");
    let mut body = serde_json::json!({ "format": 1, "shards": config.storage.shards, "cluster_id": cluster_id });
    if rejoining {
        body["rejoining"] = serde_json::Value::Bool(true);
    }
    weir_wal::durable::atomic_write(&path, body.to_string().as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Whether the file system of `dir` has less than `min_free` bytes available.
fn disk_pressure(dir: std::path::PathBuf, min_free: u64) -> Arc<dyn Fn() -> bool + Send + Sync> {
    Arc::new(move || match free_bytes(&dir) {
        Ok(free) => free < min_free,
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot read free disk space");
            false
        }
    })
}

/// Bytes available to unprivileged users on the file system of `dir`.
fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the
    // right type; statvfs fills it entirely when it returns 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: rc == 0, so statvfs initialised `st`.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u32 on some 32-bit ones).
    #[allow(clippy::useless_conversion)]
    let (avail, frsize) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
    Ok(avail.saturating_mul(frsize))
}

/// Eight random hex digits.
fn new_cluster_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Who this node is in its cluster, settled before any raft group opens.
struct Membership {
    cluster_id: String,
    /// The node's data is not its own (wiped, or a copy): it must catch up before voting.
    rejoining: bool,
    /// On a cluster: the peer service, already listening.
    peer: Option<PeerStart>,
}

/// The peer service of a clustered node, started before raft so that the others can ask
/// it for the cluster id; it serves raft and searches once [`serve_peers`] readies it.
struct PeerStart {
    links: Arc<cluster::PeerLinks>,
    service: peer::PeerService,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    addr: SocketAddr,
}

/// Reads the node file and, on a cluster, starts the peer service and agrees on the
/// cluster id with the other members; a single node founds its own cluster id.
async fn join_cluster(
    config: &Config,
    tls: &tls::NodeTls,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<Membership> {
    let (local_id, was_rejoining) = read_node_file(config)?;
    if !config.cluster.is_clustered() {
        let cluster_id = match local_id {
            Some(id) => id,
            None => {
                let id = new_cluster_id();
                write_node_file(config, &id, false)?;
                id
            }
        };
        return Ok(Membership {
            cluster_id,
            rejoining: false,
            peer: None,
        });
    }
    // The peer service starts first: the others ask it for the cluster id while this
    // node agrees on it with them.
    let shared_id = Arc::new(std::sync::Mutex::new(local_id.clone().unwrap_or_default()));
    let links =
        cluster::PeerLinks::new(&config.cluster, shared_id.clone(), tls.peer_client.clone())?;
    let service = peer::PeerService::new(
        config.cluster.node_id,
        config.storage.shards,
        shared_id.clone(),
        links.clone(),
    );
    let listener = TcpListener::bind(config.cluster.peer_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on cluster.peer_addr {}",
                config.cluster.peer_addr
            )
        })?;
    let addr = listener.local_addr()?;
    let mut rx = stop_rx.clone();
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            weir_proto::v1::peer_server::PeerServer::new(service.clone())
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        );
    let stopped = async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // With peer TLS, a connection without a certificate from the cluster's CA ends in
    // the handshake: it reaches no service.
    let task = match &tls.peer_server {
        Some(t) => tokio::spawn(server.serve_with_incoming_shutdown(
            tls::incoming(
                listener,
                t.clone(),
                handshake_timeout(config),
                stop_rx.clone(),
            ),
            stopped,
        )),
        None => tokio::spawn(
            server.serve_with_incoming_shutdown(tokio_stream_incoming(listener), stopped),
        ),
    };
    let agreed =
        cluster::agree_cluster_id(&links, local_id.clone(), config.storage.shards, stop_rx).await?;
    // A node that was rejoining when it stopped has not caught up yet: it rejoins
    // again (the flag is durable for that reason).
    let rejoining = agreed.rejoining || was_rejoining || config.cluster.rejoin;
    let id = agreed.cluster_id;
    if local_id.is_none() || rejoining != was_rejoining {
        write_node_file(config, &id, rejoining)?;
    }
    *shared_id.lock().unwrap_or_else(|p| p.into_inner()) = id.clone();
    Ok(Membership {
        cluster_id: id,
        rejoining,
        peer: Some(PeerStart {
            links,
            service,
            task,
            addr,
        }),
    })
}

/// Opens every shard's WAL and raft group (on the blocking pool: recovery reads files).
async fn open_raft(
    config: &Config,
    rejoining: bool,
    links: Option<Arc<cluster::PeerLinks>>,
) -> anyhow::Result<Arc<RaftNode>> {
    let raft_cfg = NodeConfig {
        node_id: config.cluster.node_id,
        voters: config.cluster.voters(),
        shard_count: config.storage.shards,
        wal: weir_raft::WalOptions {
            segment_size_bytes: config.storage.segment_size_bytes,
            ..Default::default()
        },
        io_backend: config
            .storage
            .io_backend
            .parse()
            .map_err(|_| anyhow::anyhow!("bad storage.io_backend"))?,
        proposal_queue_len: config.storage.proposal_queue_len,
        dedup_producers_max: config.storage.dedup_producers_max,
        replica_log_bytes_max: config.cluster.replica_log_bytes_max,
        rejoining,
        ..NodeConfig::single(&config.data_dir)
    };
    let outbox: Option<Arc<dyn weir_raft::Outbox>> = links.map(|l| l as Arc<dyn weir_raft::Outbox>);
    let data_dir = config.data_dir.clone();
    let raft = tokio::task::spawn_blocking(move || match outbox {
        Some(o) => RaftNode::start_with(raft_cfg, o),
        None => RaftNode::start(raft_cfg),
    })
    .await?
    .with_context(|| format!("cannot open the log in {}", data_dir.display()))?;
    Ok(Arc::new(raft))
}

/// Each shard's index, its indexer, every shard's head, and segment replication.
type IndexParts = (
    Vec<Arc<ShardIndex>>,
    Vec<Indexer>,
    Arc<head::Heads>,
    segments::SegmentReplication,
);

/// Opens each shard's index, starts following each shard's head (what the index does not
/// hold yet) and starts its indexer thread on the shard's committed log.
fn start_indexers(
    config: &Config,
    raft: &Arc<RaftNode>,
    metrics: &Arc<Metrics>,
    rules: &Arc<rules::RuleTable>,
) -> anyhow::Result<IndexParts> {
    let mut indexes = Vec::new();
    let mut indexers = Vec::new();
    let infix_cache = Arc::new(weir_index::InfixCache::new(config.search.infix_cache_bytes));
    for shard in 0..raft.shard_count() {
        let dir = config.data_dir.join(format!("shard-{shard}")).join("index");
        let opts = IndexOptions {
            partition_span_secs: config.index.partition_span_secs,
            writer_memory_bytes: config.index.writer_memory_bytes,
            docstore: config.index.docstore()?,
            merge_fan_in: config.index.merge_fan_in,
            random_access_maps: config.index.random_access_maps,
            infix_cache: infix_cache.clone(),
            ..Default::default()
        };
        indexes.push(Arc::new(
            ShardIndex::open(&dir, ShardId(shard), opts)
                .with_context(|| format!("cannot open index {}", dir.display()))?,
        ));
    }
    let heads = head::Heads::start(
        raft,
        &indexes,
        config.index.head_bytes_max,
        Duration::from_millis(config.index.commit_interval_ms),
    )?;
    let segments = segments::SegmentReplication::new(
        &config.data_dir,
        config.cluster.node_id,
        config.cluster.is_clustered() && config.cluster.segment_replication,
        Duration::from_millis(config.cluster.segment_sync_interval_ms),
        indexes.clone(),
        metrics.segments.clone(),
    );
    for (shard, index) in indexes.iter().enumerate() {
        let shard = shard as u32;
        indexers.push(Indexer::start_with_head(
            raft.committed_log(shard),
            index.clone(),
            raft.clone(),
            indexer::IndexerSettings {
                commit_interval: Duration::from_millis(config.index.commit_interval_ms),
                retention: (config.index.retention_secs > 0)
                    .then(|| Duration::from_secs(config.index.retention_secs)),
                tenant_retention: Some(rules.clone()),
                segments: Some(segments.clone()),
            },
            metrics.clone(),
            heads.shard(shard).cloned(),
        )?);
    }
    Ok((indexes, indexers, heads, segments))
}

/// Readies the peer service (raft, forwarded appends, searches, snapshots) and, on a node
/// that rejoins, announces it and records when every shard has caught up.
#[allow(clippy::too_many_arguments)]
fn serve_peers(
    peer: PeerStart,
    config: &Config,
    raft: &Arc<RaftNode>,
    indexes: Vec<Arc<ShardIndex>>,
    segments: segments::SegmentReplication,
    searcher: &Arc<Searcher>,
    metrics: &Arc<Metrics>,
    rejoining: bool,
    cluster_id: &str,
) -> anyhow::Result<JoinHandle<Result<(), tonic::transport::Error>>> {
    let snapshots = snapshot::SnapshotStore::open(
        &config.data_dir,
        raft.clone(),
        indexes,
        peer.links.clone(),
        metrics.snapshots.clone(),
    )?;
    raft.serve_snapshots(Arc::new(snapshots.clone()));
    peer.service.ready(peer::PeerBackend {
        raft: raft.clone(),
        searcher: searcher.clone(),
        commit_timeout: Duration::from_millis(config.storage.commit_timeout_ms),
        snapshots,
        segments,
    });
    if rejoining {
        tokio::spawn(finish_rejoin(
            peer.links.clone(),
            raft.clone(),
            config.clone(),
            cluster_id.to_owned(),
        ));
    }
    Ok(peer.task)
}

/// Announces a rejoining node to the others, then clears the durable rejoin flag once
/// every shard has caught up (until then a restart must rejoin again).
async fn finish_rejoin(
    links: Arc<cluster::PeerLinks>,
    raft: Arc<RaftNode>,
    config: Config,
    cluster_id: String,
) {
    cluster::announce_fresh(links, raft.clone()).await;
    while raft
        .health()
        .rejoining_shards
        .load(std::sync::atomic::Ordering::Acquire)
        > 0
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    match write_node_file(&config, &cluster_id, false) {
        Ok(()) => tracing::info!("rejoined: every shard has caught up and votes again"),
        Err(e) => tracing::warn!(error = %e, "cannot record that the node rejoined"),
    }
}

/// With keys on, makes sure the cluster has an admin key this machine can use: the key
/// in `<data_dir>/admin.key` if a previous start wrote one, else the one `WEIR_ADMIN_KEY`
/// holds (every node of a cluster given the same), else, when the key table is empty, a
/// new one. The node that leads shard 0 proposes it (the table's group); the file is
/// written (mode 0600) before the proposal, so a crash in between loses nothing, and a
/// generated key is printed once. Ends when the key is in the table (or, with no key of
/// its own to bring, when the table has one), or when the node stops.
async fn first_admin_key(
    config: Config,
    raft: Arc<RaftNode>,
    keys: Arc<keytable::RaftKeyStore>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use auth::KeyStore as _;
    let path = config.data_dir.join(auth::ADMIN_KEY_FILE);
    let given = std::env::var(auth::BOOTSTRAP_KEY_ENV)
        .ok()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty());
    let limits = config.limits.to_limits();
    let started = std::time::Instant::now();
    let mut warned = false;
    loop {
        keys.refresh();
        let saved = std::fs::read_to_string(&path)
            .ok()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty());
        let mine = saved.clone().or_else(|| given.clone());
        let known = |k: &str| auth::parse_key(k).is_some_and(|p| keys.get(p.id).is_some());
        match &mine {
            Some(k) if known(k) => {
                if saved.is_none() {
                    auth::write_private(&path, format!("{k}\n").as_bytes())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
                return Ok(());
            }
            None if !keys.list().is_empty() => {
                tracing::info!(
                    "the key table has keys already (made on another node); this node wrote no admin.key"
                );
                return Ok(());
            }
            _ => {}
        }
        if raft.committed_log(keytable::KEY_SHARD).is_leader() {
            let request = weir_proto::api::keys::CreateKeyRequest {
                tenants: Vec::new(),
                scopes: weir_proto::api::keys::Scope::ALL.to_vec(),
                note: "first admin key".into(),
            };
            let (stored, created) = auth::prepare_key(request, &limits, mine.as_deref())
                .map_err(|e| anyhow::anyhow!("cannot make the first admin key: {}", e.message))?;
            if saved.is_none() {
                auth::write_private(&path, format!("{}\n", created.key).as_bytes())
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            match keys.insert(stored).await {
                Ok(()) if mine.is_none() => {
                    // Once, on the console that started the node; the file keeps it.
                    eprintln!(
                        "weir: access keys are on; the first admin key (shown only now, also \
                         in {} with mode 0600):\n\n    {}\n",
                        path.display(),
                        created.key
                    );
                    return Ok(());
                }
                Ok(()) => {
                    tracing::info!(key = %created.info.id, file = %path.display(), "registered the first admin key");
                    return Ok(());
                }
                Err(e) => tracing::debug!(error = %e, "first admin key not stored yet; retrying"),
            }
        }
        if !warned && started.elapsed() > Duration::from_secs(30) {
            warned = true;
            tracing::warn!(
                leader = ?raft.leader_of(keytable::KEY_SHARD),
                "this node's admin key ({} or {}) is not in the key table yet: only the leader of \
                 shard 0 registers one; give every node the same {}",
                path.display(),
                auth::BOOTSTRAP_KEY_ENV,
                auth::BOOTSTRAP_KEY_ENV
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(keytable::REFRESH_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// The client-facing servers, listening.
struct FrontDoor {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    grpc_task: JoinHandle<Result<(), tonic::transport::Error>>,
    http_task: JoinHandle<std::io::Result<()>>,
}

/// Binds and serves gRPC (Append, OTLP) and HTTP until `stop_rx` turns true.
async fn start_front_door(
    config: &Config,
    tls: Option<Arc<tls::ServerTls>>,
    appender: Arc<Appender>,
    auth: Arc<auth::Auth>,
    state: Arc<NodeState>,
    stop_rx: watch::Receiver<bool>,
) -> anyhow::Result<FrontDoor> {
    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on grpc_addr {}", config.grpc_addr))?;
    let http_listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on http_addr {}", config.http_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let (ingest, otlp) = grpc::GrpcIngest::services(appender, auth);
    let mut rx = stop_rx.clone();
    let grpc = tonic::transport::Server::builder()
        .add_service(ingest)
        .add_service(otlp);
    let stopped = async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let grpc_task = match &tls {
        Some(t) => tokio::spawn(grpc.serve_with_incoming_shutdown(
            tls::incoming(
                grpc_listener,
                t.clone(),
                handshake_timeout(config),
                stop_rx.clone(),
            ),
            stopped,
        )),
        None => tokio::spawn(
            grpc.serve_with_incoming_shutdown(tokio_stream_incoming(grpc_listener), stopped),
        ),
    };
    let app = http::router(state);
    let handshake_ms = config.tls.handshake_timeout_ms;
    let http_task = tokio::spawn(http::serve::serve(
        http_listener,
        app,
        config.http.clone(),
        tls.map(|t| http::serve::HttpTls {
            config: t,
            handshake_timeout: Duration::from_millis(handshake_ms),
        }),
        stop_rx,
    ));
    Ok(FrontDoor {
        grpc_addr,
        http_addr,
        grpc_task,
        http_task,
    })
}

fn handshake_timeout(config: &Config) -> Duration {
    Duration::from_millis(config.tls.handshake_timeout_ms)
}

fn tokio_stream_incoming(l: TcpListener) -> tokio_stream::wrappers::TcpListenerStream {
    tokio_stream::wrappers::TcpListenerStream::new(l)
}

/// Runs a node until `shutdown` resolves, then shuts it down gracefully.
///
/// # Errors
/// Start-up failed, or a server failed.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let node = Node::start(config).await?;
    shutdown.await;
    tracing::info!("shutting down");
    node.shutdown().await
}
