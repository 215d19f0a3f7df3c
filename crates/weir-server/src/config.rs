//! Node configuration: TOML file, embedded defaults, command-line overrides.
//!
//! Every field has a default, so an empty file (or none at all) is a working single node:
//! data in `./weir-data`, gRPC on 4317, HTTP on 4318.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole configuration of one node.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where WAL segments and indexes live.
    pub data_dir: PathBuf,
    /// gRPC listen address (Append, OTLP Export).
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (search API, health).
    pub http_addr: SocketAddr,
    /// Raft and WAL settings.
    pub storage: StorageConfig,
    /// Ingest limits.
    pub limits: LimitsConfig,
    /// Index settings.
    pub index: IndexConfig,
    /// Search settings.
    pub search: SearchConfig,
    /// Mirrors to Elasticsearch and Loki.
    pub mirror: MirrorConfig,
    /// The cluster this node belongs to; none configured is a cluster of one.
    pub cluster: ClusterConfig,
}

/// `[cluster]`: static membership. Every node of a cluster has the same `nodes` list and
/// its own `node_id`.
///
/// ```toml
/// [cluster]
/// node_id = 1
/// peer_addr = "0.0.0.0:4319"       # where this node listens for peers
/// [[cluster.nodes]]
/// id = 1
/// peer = "10.0.0.1:4319"           # where the others reach it
/// grpc = "10.0.0.1:4317"           # advertised to clients (status, CLI)
/// http = "10.0.0.1:4318"
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id, one of `nodes`.
    pub node_id: u64,
    /// Listen address of the peer service (raft, forwarded appends, fan-out searches).
    pub peer_addr: SocketAddr,
    /// Every member, this node included. Empty: a single node.
    pub nodes: Vec<MemberConfig>,
    /// Raft messages queued toward one peer at most (per lane); past it they are dropped
    /// and raft retransmits.
    pub peer_queue_len: usize,
    /// Bytes of a shard's WAL a leader keeps for a replica that is behind (down, cut off,
    /// slow). Past it the leader and the others compact as if that replica were not
    /// there, and it catches up by snapshot when it returns: a replica that is away for
    /// long costs bounded disk, not a growing WAL on every node.
    pub replica_log_max_bytes: u64,
    /// Start as a rejoining node (`weir server --rejoin`): the data directory is a copy of
    /// another member's, not this node's own (docs/cluster.md). Not a file key.
    #[serde(skip)]
    pub rejoin: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: 1,
            peer_addr: "0.0.0.0:4319".parse().expect("literal address"),
            nodes: Vec::new(),
            peer_queue_len: 4096,
            replica_log_max_bytes: 4 << 30,
            rejoin: false,
        }
    }
}

/// One member of the cluster, as every node knows it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Raft id, non-zero, unique.
    pub id: u64,
    /// Peer address the other nodes connect to (host:port).
    pub peer: String,
    /// gRPC address clients use (shown by the status).
    #[serde(default)]
    pub grpc: String,
    /// HTTP address clients use (shown by the status).
    #[serde(default)]
    pub http: String,
}

impl ClusterConfig {
    /// Whether this node has peers.
    pub fn is_clustered(&self) -> bool {
        self.nodes.len() > 1
    }

    /// Every member's id (`[node_id]` for a single node).
    pub fn voters(&self) -> Vec<u64> {
        if self.nodes.is_empty() {
            vec![self.node_id]
        } else {
            let mut v: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
            v.sort_unstable();
            v
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.node_id != 0, "cluster.node_id must be positive");
        anyhow::ensure!(
            self.peer_queue_len > 0,
            "cluster.peer_queue_len must be positive"
        );
        if self.nodes.is_empty() {
            return Ok(());
        }
        let mut ids = std::collections::HashSet::new();
        let mut peers = std::collections::HashSet::new();
        for n in &self.nodes {
            anyhow::ensure!(n.id != 0, "cluster.nodes: node ids must be positive, not 0");
            anyhow::ensure!(
                ids.insert(n.id),
                "cluster.nodes: node id {} appears twice",
                n.id
            );
            anyhow::ensure!(
                n.peer
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0)),
                "cluster.nodes[id={}].peer must be host:port, not {:?}",
                n.id,
                n.peer
            );
            anyhow::ensure!(
                peers.insert(n.peer.clone()),
                "cluster.nodes: peer address {} appears twice",
                n.peer
            );
        }
        anyhow::ensure!(
            ids.contains(&self.node_id),
            "cluster.node_id {} is not one of cluster.nodes (ids {:?})",
            self.node_id,
            self.voters()
        );
        Ok(())
    }
}

/// Mirrors: `[[mirror.sinks]]` tables (see `weir_mirror::SinkConfig` for every key).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    /// The sinks; none by default.
    pub sinks: Vec<weir_mirror::SinkConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("weir-data"),
            grpc_addr: "0.0.0.0:4317".parse().expect("literal address"),
            http_addr: "0.0.0.0:4318".parse().expect("literal address"),
            storage: StorageConfig::default(),
            limits: LimitsConfig::default(),
            index: IndexConfig::default(),
            search: SearchConfig::default(),
            mirror: MirrorConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

/// Raft, shards and WAL.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Number of shards (raft groups). Fixed for the life of a data directory.
    pub shards: u32,
    /// WAL segment size; segments are preallocated and rolled when full.
    pub segment_size_bytes: u64,
    /// WAL write backend: "auto" (probe io_uring, fall back to pwrite), "uring", "std".
    pub io_backend: String,
    /// Proposals queued into the raft thread at most; past that appends get
    /// RESOURCE_EXHAUSTED and should be retried.
    pub proposal_queue_len: usize,
    /// How long an append waits for its commit before answering UNAVAILABLE.
    pub commit_timeout_ms: u64,
    /// Producers remembered per shard for idempotent retries.
    pub dedup_producers_max: usize,
    /// Below this much free space on the data directory's file system the node is under
    /// disk pressure: mirrors past their `unmirrored_bytes_max` release what they cannot
    /// deliver, so the WAL can shrink.
    pub disk_free_min_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            shards: 4,
            segment_size_bytes: 64 << 20,
            io_backend: "auto".into(),
            proposal_queue_len: 4096,
            commit_timeout_ms: 10_000,
            dedup_producers_max: 100_000,
            disk_free_min_bytes: 1 << 30,
        }
    }
}

/// Ingest limits (see `weir_ingest::Limits`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Encoded request size at most.
    pub max_batch_bytes: usize,
    /// Records per request at most.
    pub max_batch_records: usize,
    /// Bytes of one record (body, labels, attributes) at most.
    pub max_record_bytes: usize,
    /// Stream labels per record at most.
    pub max_labels_per_record: usize,
    /// Attributes per record at most.
    pub max_attributes_per_record: usize,
    /// Label name length at most.
    pub max_label_name_bytes: usize,
    /// Label value length at most.
    pub max_label_value_bytes: usize,
    /// How far in the past a timestamp may be.
    pub max_timestamp_age_secs: u64,
    /// How far in the future a timestamp may be.
    pub max_timestamp_future_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = weir_ingest::Limits::default();
        LimitsConfig {
            max_batch_bytes: d.max_batch_bytes,
            max_batch_records: d.max_batch_records,
            max_record_bytes: d.max_record_bytes,
            max_labels_per_record: d.max_labels_per_record,
            max_attributes_per_record: d.max_attributes_per_record,
            max_label_name_bytes: d.max_label_name_bytes,
            max_label_value_bytes: d.max_label_value_bytes,
            max_timestamp_age_secs: (d.max_timestamp_age_ns / 1_000_000_000) as u64,
            max_timestamp_future_secs: (d.max_timestamp_future_ns / 1_000_000_000) as u64,
        }
    }
}

impl LimitsConfig {
    /// The ingest layer's view of these limits.
    pub fn to_limits(&self) -> weir_ingest::Limits {
        weir_ingest::Limits {
            max_batch_bytes: self.max_batch_bytes,
            max_batch_records: self.max_batch_records,
            max_record_bytes: self.max_record_bytes,
            max_labels_per_record: self.max_labels_per_record,
            max_attributes_per_record: self.max_attributes_per_record,
            max_label_name_bytes: self.max_label_name_bytes,
            max_label_value_bytes: self.max_label_value_bytes,
            max_timestamp_age_ns: (self.max_timestamp_age_secs as i64)
                .saturating_mul(1_000_000_000),
            max_timestamp_future_ns: (self.max_timestamp_future_secs as i64)
                .saturating_mul(1_000_000_000),
            ..weir_ingest::Limits::default()
        }
    }
}

/// Indexing.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// Time span of one index partition (retention drops whole partitions).
    pub partition_span_secs: u64,
    /// How often the indexer commits (records become searchable).
    pub commit_interval_ms: u64,
    /// Memory per partition writer.
    pub writer_memory_bytes: usize,
    /// Records older than this are dropped with their partition; 0 keeps everything.
    pub retention_secs: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            partition_span_secs: 3600,
            commit_interval_ms: 250,
            writer_memory_bytes: 64 << 20,
            retention_secs: 7 * 24 * 3600,
        }
    }
}

/// Search API.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// `limit` when none is given.
    pub default_limit: usize,
    /// Largest `limit` accepted; larger values are capped to it.
    pub max_limit: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            default_limit: 100,
            max_limit: 1000,
        }
    }
}

impl Config {
    /// Reads a TOML file; unknown keys are errors naming the key.
    ///
    /// # Errors
    /// The file cannot be read or is not valid configuration.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        let cfg: Config = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but cannot work.
    ///
    /// # Errors
    /// Names the key and why.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=1024).contains(&self.storage.shards),
            "storage.shards must be between 1 and 1024, not {}",
            self.storage.shards
        );
        anyhow::ensure!(
            self.storage.segment_size_bytes >= 1 << 20,
            "storage.segment_size_bytes must be at least 1 MiB"
        );
        self.storage
            .io_backend
            .parse::<weir_wal::IoBackendChoice>()
            .map_err(|_| {
                anyhow::anyhow!(
                    "storage.io_backend must be \"auto\", \"uring\" or \"std\", not {:?}",
                    self.storage.io_backend
                )
            })?;
        anyhow::ensure!(
            self.storage.proposal_queue_len > 0,
            "storage.proposal_queue_len must be positive"
        );
        anyhow::ensure!(
            self.index.partition_span_secs >= 60,
            "index.partition_span_secs must be at least 60"
        );
        anyhow::ensure!(self.index.commit_interval_ms > 0 && self.index.commit_interval_ms <= 1000, "index.commit_interval_ms must be between 1 and 1000 (records must be searchable within a second)");
        anyhow::ensure!(
            self.search.max_limit > 0 && self.search.default_limit > 0,
            "search limits must be positive"
        );
        weir_mirror::config::validate_sinks(&self.mirror.sinks).map_err(|e| anyhow::anyhow!(e))?;
        self.cluster.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default_single_node() {
        let cfg: Config = toml::from_str("").unwrap();
        assert_eq!(cfg.grpc_addr.port(), 4317);
        assert_eq!(cfg.http_addr.port(), 4318);
        assert_eq!(cfg.data_dir, PathBuf::from("weir-data"));
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let e = toml::from_str::<Config>("[storage]\nshardz = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("shardz"), "{e}");
    }

    #[test]
    fn mirror_sinks_parse_and_a_misplaced_key_is_named() {
        let cfg: Config = toml::from_str(
            "[[mirror.sinks]]\nname = \"es\"\ntype = \"elasticsearch\"\nurl = \"http://es:9200\"\n\n[[mirror.sinks]]\nname = \"loki\"\ntype = \"loki\"\nurl = \"http://loki:3100\"\norg_id = \"ops\"\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.mirror.sinks.len(), 2);
        let cfg: Config = toml::from_str(
            "[[mirror.sinks]]\nname = \"es\"\ntype = \"elasticsearch\"\nurl = \"http://es:9200\"\norg_id = \"x\"\n",
        )
        .unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("mirror.sinks[name=es].org_id"), "{e}");
    }

    #[test]
    fn cluster_membership_is_checked_by_name() {
        let three = "[cluster]\nnode_id = 2\n[[cluster.nodes]]\nid = 1\npeer = \"a:4319\"\n[[cluster.nodes]]\nid = 2\npeer = \"b:4319\"\n[[cluster.nodes]]\nid = 3\npeer = \"c:4319\"\n";
        let cfg: Config = toml::from_str(three).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.cluster.voters(), vec![1, 2, 3]);
        assert!(cfg.cluster.is_clustered());
        let e = toml::from_str::<Config>(&three.replace("node_id = 2", "node_id = 9"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster.node_id 9"), "{e}");
        let e = toml::from_str::<Config>(&three.replace("id = 3", "id = 2"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("node id 2 appears twice"), "{e}");
        let e = toml::from_str::<Config>(&three.replace("c:4319", "c"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster.nodes[id=3].peer"), "{e}");
        let single: Config = toml::from_str("").unwrap();
        assert_eq!(single.cluster.voters(), vec![1]);
        assert!(!single.cluster.is_clustered());
    }

    #[test]
    fn bad_backend_is_named() {
        let cfg: Config = toml::from_str("[storage]\nio_backend = \"mmap\"\n").unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("storage.io_backend"), "{e}");
    }
}
