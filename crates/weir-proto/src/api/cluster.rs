//! `GET /api/v1/cluster`: every node (up or down, addresses, version), every shard
//! (leader, term, commit and applied index, each replica's lag behind the leader's
//! commit), every mirror sink, and one health word. The server decides what they hold
//! (`weir-server`'s `status.rs`, where the health policy lives).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::mirror::SinkStatus;

/// One word for the cluster as the node that answered sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Every node up, every shard led, replicas caught up, mirrors delivering (`ok`).
    Ok,
    /// Serving, but one more failure could cost availability or a backend is behind: a
    /// node down, a replica lagging, a mirror that cannot deliver, an indexer stopped, the
    /// disk full, or this node still rejoining (`degraded`).
    Degraded,
    /// Some shard has no leader (no quorum): appends to it fail (`unavailable`).
    Unavailable,
    /// This node's raft layer stopped: restart it (`failed`).
    Failed,
}

impl Health {
    /// `ok`, `degraded`, `unavailable`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Degraded => "degraded",
            Health::Unavailable => "unavailable",
            Health::Failed => "failed",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer of `GET /api/v1/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The cluster's id.
    pub cluster_id: String,
    /// The node that answered.
    pub node_id: u64,
    /// The health word.
    pub health: Health,
    /// Why, when the node's raft thread did not answer (then nothing else is known and
    /// `view` is absent). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The rest, when the raft thread answered: its fields sit beside the ones above in
    /// the JSON. Read back as `None` when they are absent (and, since serde cannot tell
    /// "absent" from "malformed" for a flattened option, when one of them is malformed).
    #[serde(flatten)]
    pub view: Option<ClusterView>,
}

/// What a node knows of its cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// Shards no node knows a leader of.
    pub shards_without_leader: Vec<u32>,
    /// The node that answered first, then its peers by id.
    pub nodes: Vec<NodeStatus>,
    /// Every shard, by number.
    pub shards: Vec<ShardStatus>,
    /// Every mirror sink of the node that answered.
    pub mirrors: Vec<SinkStatus>,
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its raft id.
    pub id: u64,
    /// It answered the status call (for the node that answered: its raft layer has not
    /// failed).
    pub up: bool,
    /// `"self": true` for the node that answered; absent for its peers.
    #[serde(rename = "self", default, skip_serializing_if = "Option::is_none")]
    pub is_self: Option<bool>,
    /// Its Weir version, when it answered (`null` otherwise).
    pub version: Option<String>,
    /// Where peers reach it (`null` when the node that answered is not in
    /// `cluster.nodes`: a single node).
    pub peer_addr: Option<String>,
    /// Where clients reach its gRPC port.
    pub grpc_addr: String,
    /// Where clients reach its HTTP port.
    pub http_addr: String,
    /// Its WAL backend (`uring` or `std`); only for the node that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_backend: Option<String>,
    /// Seconds since the last exchange with it that worked; only for peers that answered
    /// once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_secs: Option<f64>,
    /// Raft messages to it dropped on a full lane; only for peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_messages_dropped: Option<u64>,
}

/// One shard, as every node that answered reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStatus {
    /// The shard's number.
    pub shard: u32,
    /// Its leader's id, 0 when no node knows one.
    pub leader: u64,
    /// The term of that leader.
    pub term: u64,
    /// The leader's commit index (the answering node's when no leader answered).
    pub commit: u64,
    /// The answering node's commit index.
    pub local_commit: u64,
    /// The answering node's applied index.
    pub applied: u64,
    /// The first index in the answering node's WAL.
    pub first_index: u64,
    /// The last index in the answering node's WAL.
    pub last_index: u64,
    /// Bytes of this shard's WAL on the answering node.
    pub wal_bytes: u64,
    /// Each answering node's replica.
    pub replicas: Vec<ReplicaStatus>,
}

/// One replica of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The node holding it.
    pub node: u64,
    /// Its applied index.
    pub applied: u64,
    /// Its index checkpoint (last log index searchable there).
    pub indexed: u64,
    /// Entries behind the leader's commit.
    pub lag: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::mirror::tests::sink;
    use crate::api::testing::round_trip;

    fn three_nodes_one_down() -> ClusterStatus {
        ClusterStatus {
            cluster_id: "c0ffee00".into(),
            node_id: 1,
            health: Health::Degraded,
            reason: None,
            view: Some(ClusterView {
                shards_without_leader: vec![],
                nodes: vec![
                    NodeStatus {
                        id: 1,
                        up: true,
                        is_self: Some(true),
                        version: Some("0.1.0".into()),
                        peer_addr: Some("10.0.0.1:4319".into()),
                        grpc_addr: "10.0.0.1:4317".into(),
                        http_addr: "10.0.0.1:4318".into(),
                        io_backend: Some("uring".into()),
                        last_seen_secs: None,
                        raft_messages_dropped: None,
                    },
                    NodeStatus {
                        id: 2,
                        up: true,
                        is_self: None,
                        version: Some("0.1.0".into()),
                        peer_addr: Some("10.0.0.2:4319".into()),
                        grpc_addr: "10.0.0.2:4317".into(),
                        http_addr: "10.0.0.2:4318".into(),
                        io_backend: None,
                        last_seen_secs: Some(0.25),
                        raft_messages_dropped: Some(0),
                    },
                    NodeStatus {
                        id: 3,
                        up: false,
                        is_self: None,
                        version: None,
                        peer_addr: Some("10.0.0.3:4319".into()),
                        grpc_addr: "10.0.0.3:4317".into(),
                        http_addr: "10.0.0.3:4318".into(),
                        io_backend: None,
                        last_seen_secs: None,
                        raft_messages_dropped: Some(17),
                    },
                ],
                shards: vec![ShardStatus {
                    shard: 0,
                    leader: 1,
                    term: 4,
                    commit: 1500,
                    local_commit: 1500,
                    applied: 1500,
                    first_index: 1001,
                    last_index: 1500,
                    wal_bytes: 1 << 20,
                    replicas: vec![
                        ReplicaStatus {
                            node: 1,
                            applied: 1500,
                            indexed: 1490,
                            lag: 0,
                        },
                        ReplicaStatus {
                            node: 2,
                            applied: 1480,
                            indexed: 1480,
                            lag: 20,
                        },
                    ],
                }],
                mirrors: vec![sink()],
            }),
        }
    }

    #[test]
    fn a_full_status_round_trips_and_keeps_its_wire_form() {
        let json = round_trip(&three_nodes_one_down());
        // The view's fields sit beside the header's; `self` only on the answering node;
        // a peer's missing version is null, its missing io_backend absent.
        let expected_start = concat!(
            r#"{"cluster_id":"c0ffee00","node_id":1,"health":"degraded","#,
            r#""shards_without_leader":[],"nodes":["#,
            r#"{"id":1,"up":true,"self":true,"version":"0.1.0","peer_addr":"10.0.0.1:4319","#,
            r#""grpc_addr":"10.0.0.1:4317","http_addr":"10.0.0.1:4318","io_backend":"uring"},"#,
            r#"{"id":2,"up":true,"version":"0.1.0","peer_addr":"10.0.0.2:4319","#,
            r#""grpc_addr":"10.0.0.2:4317","http_addr":"10.0.0.2:4318","last_seen_secs":0.25,"#,
            r#""raft_messages_dropped":0},"#,
            r#"{"id":3,"up":false,"version":null,"peer_addr":"10.0.0.3:4319","#,
            r#""grpc_addr":"10.0.0.3:4317","http_addr":"10.0.0.3:4318","raft_messages_dropped":17}],"#,
            r#""shards":[{"shard":0,"leader":1,"term":4,"commit":1500,"local_commit":1500,"#,
            r#""applied":1500,"first_index":1001,"last_index":1500,"wal_bytes":1048576,"#,
            r#""replicas":[{"node":1,"applied":1500,"indexed":1490,"lag":0},"#,
            r#"{"node":2,"applied":1480,"indexed":1480,"lag":20}]}],"#,
            r#""mirrors":[{"name":"loki","#,
        );
        assert!(json.starts_with(expected_start), "{json}");
    }

    #[test]
    fn a_node_whose_raft_thread_did_not_answer_has_a_reason_and_no_view() {
        let status = ClusterStatus {
            cluster_id: "c0ffee00".into(),
            node_id: 2,
            health: Health::Failed,
            reason: Some("wal write failed: no space left on device".into()),
            view: None,
        };
        assert_eq!(
            round_trip(&status),
            r#"{"cluster_id":"c0ffee00","node_id":2,"health":"failed","reason":"wal write failed: no space left on device"}"#
        );
    }

    #[test]
    fn health_names_match_as_str() {
        for h in [
            Health::Ok,
            Health::Degraded,
            Health::Unavailable,
            Health::Failed,
        ] {
            assert_eq!(serde_json::to_value(h).unwrap(), h.as_str());
        }
    }
}
