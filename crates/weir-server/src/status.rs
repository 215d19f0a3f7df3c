//! The node's view of its cluster, and the policy that turns it into one health word.
//!
//! The HTTP handlers (`GET /api/v1/cluster`, `/readyz`, `/metrics`) only render what this
//! module computes: what counts as degraded lives here, in named functions and constants,
//! not in a handler. The answer's types are the API's ([`weir_proto::api::cluster`]),
//! which clients read back.

use std::sync::atomic::Ordering;
use std::time::Duration;

use weir_proto::api::mirror::BreakerState;
use weir_proto::v1::ShardStatusProto;

use crate::state::NodeState;

pub use weir_proto::api::cluster::{
    ClusterStatus, ClusterView, Health, NodeStatus, ReplicaStatus, ShardStatus,
};

/// A replica more than this many entries behind its leader's commit makes the cluster
/// `degraded`: it would not survive losing another replica without a long catch-up.
pub const REPLICA_LAG_DEGRADED_ENTRIES: u64 = 10_000;

/// How long the status waits for the raft thread and for each peer.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` answers: `Ok` or why the node should not take traffic.
pub fn readiness(st: &NodeState) -> Result<(), String> {
    if let Some(why) = st.raft_failure() {
        return Err(format!("failed: {why}"));
    }
    if let Some(why) = st.indexer_failures().into_iter().next() {
        return Err(format!("indexer failed, searches lag: {why}"));
    }
    if st.disk_full() {
        return Err("disk full: appends are refused".to_owned());
    }
    Ok(())
}

/// Gathers the status from the raft thread and every peer (each within
/// [`STATUS_TIMEOUT`]) and judges it.
pub async fn cluster_status(st: &NodeState) -> ClusterStatus {
    let local = match tokio::time::timeout(STATUS_TIMEOUT, st.raft.status()).await {
        Ok(Ok(l)) => l,
        other => {
            let reason = unanswered_reason(st, other.ok().and_then(Result::err));
            return ClusterStatus {
                cluster_id: st.cluster_id.clone(),
                node_id: st.raft.node_id(),
                health: if st.raft_failure().is_some() {
                    Health::Failed
                } else {
                    Health::Degraded
                },
                reason: Some(reason),
                view: None,
            };
        }
    };
    let me = st.raft.node_id();
    let mut views: Vec<(u64, Vec<ShardStatusProto>)> =
        vec![(me, crate::peer::shard_views(&local, &st.searcher))];
    let mut nodes = vec![self_status(st)];
    nodes.extend(peer_statuses(st, &mut views).await);
    let shards: Vec<ShardStatus> = local.iter().map(|s| shard_status(s, &views)).collect();
    let shards_without_leader: Vec<u32> = shards
        .iter()
        .filter(|s| s.leader == 0)
        .map(|s| s.shard)
        .collect();
    let view = ClusterView {
        shards_without_leader,
        nodes,
        shards,
        mirrors: st.mirror.status(),
    };
    ClusterStatus {
        cluster_id: st.cluster_id.clone(),
        node_id: me,
        health: judge(st, &view),
        reason: None,
        view: Some(view),
    }
}

/// Why the raft thread did not answer: stopped, stuck retrying a full disk, or slow.
fn unanswered_reason(st: &NodeState, error: Option<weir_raft::Error>) -> String {
    if let Some(why) = st.raft_failure() {
        why
    } else if st.disk_full() {
        "the disk is full".to_owned()
    } else {
        match error {
            Some(e) => e.to_string(),
            None => format!(
                "the raft thread did not answer within {} s",
                STATUS_TIMEOUT.as_secs()
            ),
        }
    }
}

/// The health policy: failed, then unavailable, then degraded, else ok.
fn judge(st: &NodeState, view: &ClusterView) -> Health {
    if st.raft_failure().is_some() {
        return Health::Failed;
    }
    if !view.shards_without_leader.is_empty() {
        return Health::Unavailable;
    }
    let lagging = view
        .shards
        .iter()
        .flat_map(|s| &s.replicas)
        .any(|r| r.lag > REPLICA_LAG_DEGRADED_ENTRIES);
    let node_down = view.nodes.iter().any(|n| !n.up);
    let mirror_stuck = view
        .mirrors
        .iter()
        .any(|m| m.breaker != BreakerState::Closed || m.shards.iter().any(|s| s.stalled.is_some()));
    // A node still rejoining after it lost its data holds an incomplete copy of some
    // shards: the cluster cannot lose another replica of those without losing data.
    let degraded = st.disk_full()
        || st.rejoining()
        || node_down
        || lagging
        || mirror_stuck
        || !st.indexer_failures().is_empty();
    if degraded {
        Health::Degraded
    } else {
        Health::Ok
    }
}

fn self_status(st: &NodeState) -> NodeStatus {
    let me = st.raft.node_id();
    let member = st.config.cluster.nodes.iter().find(|n| n.id == me);
    let advertised = |a: Option<&String>, fallback: std::net::SocketAddr| {
        a.filter(|a| !a.is_empty())
            .cloned()
            .unwrap_or_else(|| fallback.to_string())
    };
    NodeStatus {
        id: me,
        up: st.raft_failure().is_none(),
        is_self: Some(true),
        version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        peer_addr: member.map(|n| n.peer.clone()),
        grpc_addr: advertised(member.map(|n| &n.grpc), st.config.grpc_addr),
        http_addr: advertised(member.map(|n| &n.http), st.config.http_addr),
        io_backend: Some(st.raft.io_backend().to_string()),
        last_seen_secs: None,
        raft_messages_dropped: None,
    }
}

/// Asks every peer for its shard views (at once, each within [`STATUS_TIMEOUT`]), adds
/// them to `views`, and reports each peer.
async fn peer_statuses(
    st: &NodeState,
    views: &mut Vec<(u64, Vec<ShardStatusProto>)>,
) -> Vec<NodeStatus> {
    let Some(links) = &st.links else {
        return Vec::new();
    };
    let mut calls = tokio::task::JoinSet::new();
    for p in links.all() {
        let p = p.clone();
        let cluster_id = st.cluster_id.clone();
        calls.spawn(async move {
            let mut r = tonic::Request::new(weir_proto::v1::ShardStatusRequest { cluster_id });
            r.set_timeout(STATUS_TIMEOUT);
            let res = p.client.clone().status(r).await;
            (p, res)
        });
    }
    let mut answers = Vec::new();
    while let Some(Ok(a)) = calls.join_next().await {
        answers.push(a);
    }
    answers.sort_by_key(|(p, _)| p.id);
    let mut nodes = Vec::new();
    for (p, res) in answers {
        let version = match res {
            Ok(r) => {
                p.seen();
                let r = r.into_inner();
                views.push((p.id, r.shards));
                Some(r.version)
            }
            Err(e) => {
                p.failed(e.message());
                None
            }
        };
        nodes.push(NodeStatus {
            id: p.id,
            up: version.is_some(),
            is_self: None,
            version,
            peer_addr: Some(p.member.peer.clone()),
            grpc_addr: p.member.grpc.clone(),
            http_addr: p.member.http.clone(),
            io_backend: None,
            last_seen_secs: p.last_seen_secs(),
            raft_messages_dropped: Some(p.dropped.load(Ordering::Relaxed)),
        });
    }
    nodes
}

/// A shard as the views report it: the leader is the one they agree on at the highest
/// term, and each replica's lag is measured against that leader's commit.
fn shard_status(s: &weir_raft::ShardStatus, views: &[(u64, Vec<ShardStatusProto>)]) -> ShardStatus {
    let (leader, term) = views
        .iter()
        .filter_map(|(_, v)| v.iter().find(|x| x.shard == s.shard))
        .filter(|x| x.leader_id != 0)
        .map(|x| (x.leader_id, x.term))
        .max_by_key(|(_, t)| *t)
        .unwrap_or((0, s.term));
    let commit = views
        .iter()
        .find(|(n, _)| *n == leader)
        .and_then(|(_, v)| v.iter().find(|x| x.shard == s.shard))
        .map_or(s.commit, |x| x.commit);
    let replicas = views
        .iter()
        .filter_map(|(n, v)| v.iter().find(|x| x.shard == s.shard).map(|x| (*n, x)))
        .map(|(node, x)| ReplicaStatus {
            node,
            applied: x.applied,
            indexed: x.indexed,
            lag: commit.saturating_sub(x.applied),
        })
        .collect();
    ShardStatus {
        shard: s.shard,
        leader,
        term,
        commit,
        local_commit: s.commit,
        applied: s.applied,
        first_index: s.first_index,
        last_index: s.last_index,
        wal_bytes: s.wal_bytes,
        replicas,
    }
}
