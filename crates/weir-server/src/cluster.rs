//! The cluster as this node sees it: the other members, a client for each, and the
//! outbound half of the peer transport.
//!
//! Raft messages toward a peer go through [`PeerLinks`], the [`weir_raft::Outbox`] of the
//! node: per peer, [`LANES`] bounded queues (a shard always uses the same lane, so its
//! messages stay in order, and a large append of one shard does not hold back the
//! heartbeats of the shards of other lanes). One task per lane drains its queue into
//! batches and sends each as one `Raft` call. A full queue drops the message (counted in
//! `weir_peer_raft_messages_dropped_total`): raft retransmits, so a dead peer costs bounded
//! memory.
//! A failed call marks the peer down and the lane backs off (100 ms doubling to 2 s);
//! tonic's lazy channel reconnects.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use weir_proto::v1::peer_client::PeerClient;
use weir_proto::v1::{HelloRequest, RaftBatch, RaftMessage};

use crate::config::{ClusterConfig, MemberConfig};

/// Lanes per peer.
pub const LANES: usize = 4;

/// Bytes of raft messages put in one batch at most (one message may be larger).
const BATCH_BYTES_MAX: usize = 4 << 20;

/// A call to a peer that takes longer fails (the peer is treated as down).
pub const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One other member of the cluster.
pub struct Peer {
    /// Its raft id.
    pub id: u64,
    /// What every node's configuration says of it.
    pub member: MemberConfig,
    /// A client over a lazily (re)connecting channel.
    pub client: PeerClient<Channel>,
    lanes: Vec<mpsc::Sender<(u32, Vec<u8>)>>,
    up: AtomicBool,
    /// When a call to it last succeeded or it last called us.
    last_seen: Mutex<Option<Instant>>,
    /// Raft messages dropped because a lane was full.
    pub dropped: AtomicU64,
}

impl Peer {
    /// Whether the last exchange with it worked.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Records a successful exchange.
    pub fn seen(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(peer = self.id, addr = %self.member.peer, "peer is up");
        }
        *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Records a failed call.
    pub fn failed(&self, why: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(peer = self.id, addr = %self.member.peer, error = why, "peer is down");
        }
    }

    /// Seconds since the last successful exchange, `None` if never.
    pub fn last_seen_secs(&self) -> Option<f64> {
        self.last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed().as_secs_f64())
    }
}

/// Every other member and the outbound raft transport.
pub struct PeerLinks {
    me: u64,
    /// When this process started (ns): the incarnation its raft batches carry.
    incarnation: u64,
    peers: HashMap<u64, Arc<Peer>>,
    cluster_id: Arc<Mutex<String>>,
}

impl PeerLinks {
    /// Clients for every member but this node. Must run inside a tokio runtime (it starts
    /// the lane tasks). The lanes send with the cluster id in `cluster_id` (set once the
    /// node agreed on it). With `tls` (peer TLS on), every connection is mutual TLS: the
    /// other's certificate must name the host of its `peer` address.
    ///
    /// # Errors
    /// A peer address that is not a valid URI authority.
    pub fn new(
        cfg: &ClusterConfig,
        cluster_id: Arc<Mutex<String>>,
        tls: Option<Arc<crate::tls::ClientTls>>,
    ) -> anyhow::Result<Arc<Self>> {
        let mut peers = HashMap::new();
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        for m in cfg.nodes.iter().filter(|m| m.id != cfg.node_id) {
            let endpoint = Endpoint::from_shared(format!("http://{}", m.peer))
                .map_err(|e| anyhow::anyhow!("cluster.nodes[id={}].peer {:?}: {e}", m.id, m.peer))?
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5));
            let client = PeerClient::new(crate::tls::lazy_channel(endpoint, tls.as_ref()))
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20);
            let mut lanes = Vec::with_capacity(LANES);
            let mut receivers = Vec::with_capacity(LANES);
            for _ in 0..LANES {
                let (tx, rx) = mpsc::channel(cfg.peer_queue_len);
                lanes.push(tx);
                receivers.push(rx);
            }
            let peer = Arc::new(Peer {
                id: m.id,
                member: m.clone(),
                client,
                lanes,
                up: AtomicBool::new(false),
                last_seen: Mutex::new(None),
                dropped: AtomicU64::new(0),
            });
            for rx in receivers {
                tokio::spawn(lane(
                    peer.clone(),
                    rx,
                    cfg.node_id,
                    incarnation,
                    cluster_id.clone(),
                ));
            }
            peers.insert(m.id, peer);
        }
        Ok(Arc::new(PeerLinks {
            incarnation,
            me: cfg.node_id,
            peers,
            cluster_id,
        }))
    }

    /// This node's id.
    pub fn me(&self) -> u64 {
        self.me
    }

    /// This process's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The peer with raft id `id`.
    pub fn get(&self, id: u64) -> Option<&Arc<Peer>> {
        self.peers.get(&id)
    }

    /// Every other member, by id.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Peer>> {
        let mut v: Vec<_> = self.peers.values().collect();
        v.sort_by_key(|p| p.id);
        v.into_iter()
    }

    /// The agreed cluster id (empty before agreement).
    pub fn cluster_id(&self) -> String {
        self.cluster_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Messages dropped toward every peer.
    pub fn dropped_total(&self) -> u64 {
        self.peers
            .values()
            .map(|p| p.dropped.load(Ordering::Relaxed))
            .sum()
    }
}

impl weir_raft::Outbox for PeerLinks {
    fn send(&self, to: u64, shard: u32, message: Vec<u8>) {
        let Some(peer) = self.peers.get(&to) else {
            tracing::warn!(to, shard, "raft message for a node that is not a member");
            return;
        };
        let lane = &peer.lanes[shard as usize % LANES];
        if lane.try_send((shard, message)).is_err() {
            peer.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Drains one lane toward one peer: batches what is queued, sends, backs off on failure.
async fn lane(
    peer: Arc<Peer>,
    mut rx: mpsc::Receiver<(u32, Vec<u8>)>,
    me: u64,
    incarnation: u64,
    cluster_id: Arc<Mutex<String>>,
) {
    let mut backoff = Duration::from_millis(100);
    while let Some(first) = rx.recv().await {
        let mut bytes = first.1.len();
        let mut messages = vec![RaftMessage {
            shard: first.0,
            message: first.1,
        }];
        while bytes < BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok((shard, message)) => {
                    bytes += message.len();
                    messages.push(RaftMessage { shard, message });
                }
                Err(_) => break,
            }
        }
        let batch = RaftBatch {
            cluster_id: cluster_id.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            from: me,
            messages,
            incarnation,
        };
        let mut client = peer.client.clone();
        let mut req = tonic::Request::new(batch);
        req.set_timeout(PEER_CALL_TIMEOUT);
        match client.raft(req).await {
            Ok(_) => {
                peer.seen();
                backoff = Duration::from_millis(100);
            }
            Err(status) => {
                // The batch is lost; raft resends what it still needs.
                peer.failed(status.message());
                if status.code() == tonic::Code::FailedPrecondition {
                    tracing::error!(
                        peer = peer.id,
                        error = status.message(),
                        "peer refused our raft messages"
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                // What queued up meanwhile is stale: raft has resent what matters.
                while rx.try_recv().is_ok() {}
            }
        }
    }
}

/// What a starting node learnt from its peers.
pub struct Agreement {
    /// The cluster id.
    pub cluster_id: String,
    /// This node has no data and the cluster exists: it rejoins (see
    /// `weir_raft::NodeConfig::rejoining`) and must tell the leaders to forget its old log
    /// ([`announce_fresh`]).
    pub rejoining: bool,
}

/// How long a node with data goes on asking its members for their cluster id, none
/// having answered, before it starts alone (a round in progress then ends first: up to
/// 2 s for each member that does not answer).
const LONE_START_GRACE: Duration = Duration::from_secs(5);

/// Agrees on the cluster id before raft starts.
///
/// - `local`: the id in this node's data directory, if it has one.
/// - A node with an id checks every reachable peer has the same (or none yet) and
///   refuses to start when one belongs to another cluster; when none answers, it asks
///   again for 5 s (`LONE_START_GRACE`) before starting alone.
/// - A node without one (first start, or a wiped data directory) adopts its peers' id. When
///   no peer has one, the cluster is new: the member with the lowest id creates it, once it
///   has reached every other member (so a node that lost its data while the others were
///   down cannot found a second cluster beside the first); the others wait for it.
///
/// # Errors
/// A peer belongs to another cluster, or peers disagree, or their shard count differs.
pub async fn agree_cluster_id(
    links: &PeerLinks,
    local: Option<String>,
    shards: u32,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Agreement> {
    let lowest = links
        .all()
        .map(|p| p.id)
        .chain([links.me])
        .min()
        .unwrap_or(links.me);
    let mut last_log = Instant::now() - Duration::from_secs(60);
    let started = Instant::now();
    loop {
        let mut seen: Vec<(u64, String)> = Vec::new();
        let mut unreached: Vec<(u64, String)> = Vec::new();
        let mut reached = 0usize;
        for p in links.all() {
            let mut req = tonic::Request::new(HelloRequest {
                cluster_id: local.clone().unwrap_or_default(),
                from: links.me,
                fresh: false,
                incarnation: links.incarnation,
                measure: false,
            });
            req.set_timeout(Duration::from_secs(2));
            match p.client.clone().hello(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    reached += 1;
                    p.seen();
                    anyhow::ensure!(
                        r.shards == shards,
                        "node {} ({}) has {} shards but storage.shards is {shards} here; every node of a cluster must have the same shard count",
                        p.id,
                        p.member.peer,
                        r.shards
                    );
                    if !r.cluster_id.is_empty() {
                        seen.push((p.id, r.cluster_id));
                    }
                }
                Err(s) => {
                    p.failed(s.message());
                    unreached.push((p.id, status_causes(&s)));
                }
            }
        }
        if let Some(mine) = &local {
            if let Some((id, theirs)) = seen.iter().find(|(_, c)| c != mine) {
                anyhow::bail!(
                    "this node's data belongs to cluster {mine}, but node {id} belongs to cluster {theirs}: this data directory is from another cluster (wipe it to join this one, or fix cluster.nodes)"
                );
            }
            if reached == 0 && !links.peers.is_empty() {
                // A member that is up but slow to answer (a loaded machine) would let a
                // data directory of another cluster start unchecked: ask again for a while.
                // Past that the node starts alone (every other member may be down).
                if *stop.borrow() {
                    anyhow::bail!("stopped while asking the members for their cluster id");
                }
                if started.elapsed() < LONE_START_GRACE {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
                tracing::warn!(cluster_id = %mine, "no member answered within {} s: starting with this node's cluster id unconfirmed", LONE_START_GRACE.as_secs());
            }
            return Ok(Agreement {
                cluster_id: mine.clone(),
                rejoining: false,
            });
        }
        if let Some((id, first)) = seen.first() {
            if let Some((other, theirs)) = seen.iter().find(|(_, c)| c != first) {
                anyhow::bail!(
                    "nodes {id} and {other} belong to different clusters ({first} and {theirs}); fix cluster.nodes"
                );
            }
            // Whether the peers have data cannot be told reliably (a peer still opening its
            // log reports none), so a node without data always rejoins; on a new cluster
            // that costs nothing (there is nothing to catch up on).
            tracing::info!(cluster_id = %first, "joining the cluster without data: rejoining");
            return Ok(Agreement {
                cluster_id: first.clone(),
                rejoining: true,
            });
        }
        if links.me == lowest && reached == links.peers.len() {
            let id = format!("{:08x}", rand::random::<u32>());
            tracing::info!(cluster_id = %id, "every member reached and none has data: bootstrapping a new cluster");
            return Ok(Agreement {
                cluster_id: id,
                rejoining: false,
            });
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            // Why a member is not reached: down, or (with tls.peer_ca_file) a certificate
            // one side does not accept.
            for (peer, error) in &unreached {
                tracing::warn!(peer, error = %error, "cannot reach this member yet");
            }
            if links.me == lowest {
                tracing::info!(
                    reached,
                    members = links.peers.len() + 1,
                    "new cluster: waiting to reach every member before bootstrapping it"
                );
            } else {
                tracing::info!(bootstrapper = lowest, "no member has a cluster id yet: waiting for node {lowest} to bootstrap the cluster");
            }
        }
        if *stop.borrow() {
            anyhow::bail!("stopped while waiting for the cluster to bootstrap");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Tells every peer, until each has heard it with its raft running, that this node is
/// back without its data, so that the shards they lead stop counting on what it
/// acknowledged before; then lets the rejoining shards measure how far they must catch
/// up before they vote again.
pub async fn announce_fresh(links: Arc<PeerLinks>, raft: Arc<weir_raft::RaftNode>) {
    let targets = ask_every_peer(&links, &raft, true).await;
    raft.rejoin_confirmed(targets);
    // The target is the peers' last index, and a tail of it that was never committed may
    // be cut and not written again for a while on an idle shard: measure again now and
    // then until caught up. Lowering the target this way is safe because, while this node
    // does not vote, nothing committed with its lost log can leave every other log.
    // Checked often, so that the node stops counting as rejoining (weir-node.json, health)
    // soon after its last shard caught up: a restart while flagged makes the peers forget
    // its log again.
    let mut measured = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if raft
            .health()
            .rejoining_shards
            .load(std::sync::atomic::Ordering::Acquire)
            == 0
        {
            return;
        }
        if measured.elapsed() < Duration::from_secs(30) {
            continue;
        }
        measured = tokio::time::Instant::now();
        let targets = ask_every_peer(&links, &raft, false).await;
        tracing::info!(
            ?targets,
            "still rejoining: measured again how far to catch up"
        );
        raft.rejoin_confirmed(targets);
    }
}

/// Asks every peer (until each answers) for each shard's last index, its term and the
/// raft term; with `forget`, each first forgets this node's old log.
async fn ask_every_peer(
    links: &PeerLinks,
    raft: &weir_raft::RaftNode,
    forget: bool,
) -> Vec<weir_raft::RejoinTarget> {
    let mut pending: Vec<Arc<Peer>> = links.all().cloned().collect();
    let mut targets = vec![weir_raft::RejoinTarget::default(); raft.shard_count() as usize];
    while !pending.is_empty() {
        let mut still = Vec::new();
        for p in pending {
            let mut req = tonic::Request::new(HelloRequest {
                cluster_id: links.cluster_id(),
                from: links.me,
                fresh: forget,
                incarnation: links.incarnation,
                measure: !forget,
            });
            req.set_timeout(Duration::from_secs(2));
            match p.client.clone().hello(req).await {
                Ok(r) if r.get_ref().ready => {
                    let r = r.get_ref();
                    for (i, t) in targets.iter_mut().enumerate() {
                        let at = |v: &[u64]| v.get(i).copied().unwrap_or(0);
                        // A peer of an older version reports no log terms: then no
                        // candidate is up to date enough, and this node does not vote
                        // until caught up, as those versions did.
                        let last_term = r.last_log_terms.get(i).copied().unwrap_or(u64::MAX);
                        t.merge(weir_raft::RejoinTarget::of(
                            at(&r.last_indexes),
                            last_term,
                            at(&r.terms),
                        ));
                    }
                    if forget {
                        tracing::info!(
                            peer = p.id,
                            "peer told that this node rejoins without its old data"
                        );
                    }
                }
                _ => still.push(p),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    targets
}

/// A failed call's message and its causes (the message can be "transport error", a cause
/// "received fatal alert: DecryptError": a certificate the other side refused).
fn status_causes(s: &tonic::Status) -> String {
    let mut out = s.message().to_owned();
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_raft::Outbox;

    fn config(queue: usize) -> ClusterConfig {
        // Node 2's peer address is a port nothing listens on: its lanes never drain.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        ClusterConfig {
            node_id: 1,
            peer_queue_len: queue,
            nodes: vec![
                MemberConfig {
                    id: 1,
                    peer: "127.0.0.1:1".into(),
                    grpc: String::new(),
                    http: String::new(),
                },
                MemberConfig {
                    id: 2,
                    peer: dead.to_string(),
                    grpc: String::new(),
                    http: String::new(),
                },
            ],
            ..ClusterConfig::default()
        }
    }

    #[tokio::test]
    async fn a_full_lane_drops_and_counts_instead_of_growing() {
        let links = PeerLinks::new(&config(4), Arc::default(), None).unwrap();
        for _ in 0..100 {
            // Shard 0: always the same lane.
            links.send(2, 0, vec![0u8; 16]);
        }
        let dropped = links.get(2).unwrap().dropped.load(Ordering::Relaxed);
        // At most the queue plus the batch the lane task took out can be held.
        assert!(
            dropped >= 100 - 4 - 1,
            "dropped {dropped} of 100 with a queue of 4"
        );
        assert_eq!(links.dropped_total(), dropped);
        // A message for a node that is not a member goes nowhere and counts nowhere.
        links.send(9, 0, vec![1]);
        assert_eq!(links.dropped_total(), dropped);
    }
}
