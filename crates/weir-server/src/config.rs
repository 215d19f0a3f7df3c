//! Node configuration: TOML file, embedded defaults, command-line overrides.
//!
//! Every field has a default, so an empty file (or none at all) is a working single node:
//! data in `./weir-data`, gRPC on 4317, HTTP on 4318.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole configuration of one node.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where WAL segments and indexes live.
    pub data_dir: PathBuf,
    /// gRPC listen address (Append, OTLP Export).
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (search API, health).
    pub http_addr: SocketAddr,
    /// HTTP server limits and timeouts.
    pub http: HttpConfig,
    /// Raft and WAL settings.
    pub storage: StorageConfig,
    /// Ingest limits.
    pub limits: LimitsConfig,
    /// Index settings.
    pub index: IndexConfig,
    /// Search settings.
    pub search: SearchConfig,
    /// Limits of LogQL queries (the Loki query API).
    pub query: QueryConfig,
    /// Mirrors to Elasticsearch and Loki.
    pub mirror: MirrorConfig,
    /// The cluster this node belongs to; none configured is a cluster of one.
    pub cluster: ClusterConfig,
    /// Syslog listeners (`[[syslog]]` tables); none by default.
    pub syslog: Vec<crate::syslog::SyslogConfig>,
    /// Access keys (docs/security.md).
    pub auth: AuthConfig,
    /// The limits of every tenant (docs/tenants.md); 0: no limit.
    pub tenant_limits: crate::tenants::TenantLimits,
    /// One tenant's own limits (`[[tenants]]` tables): name and the keys of
    /// `[tenant_limits]` it sets differently.
    pub tenants: Vec<crate::tenants::TenantOverride>,
    /// TLS on the three ports and between members (docs/security.md).
    pub tls: TlsConfig,
}

/// `[auth]`: whether requests need an access key.
///
/// ```toml
/// [auth]
/// enabled = true     # every request but health needs a key; first start writes admin.key
/// ```
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Require an access key on every request but the health probes. The first start
    /// with it on writes an admin key to `<data_dir>/admin.key` (mode 0600).
    pub enabled: bool,
    /// Let a node without keys listen beyond loopback (`weir server --insecure`): anyone
    /// who reaches the ports reads and writes every tenant. Also lets a cluster's peer port
    /// listen beyond loopback without mutual TLS (`tls.peer_ca_file`).
    pub insecure: bool,
}

/// `[tls]`: TLS on the client ports (gRPC 4317, HTTP 4318) and mutual TLS between the
/// members of a cluster (peer port 4319, both ways). A path left empty is not set.
///
/// ```toml
/// [tls]
/// cert_file = "/etc/weir/node.crt"      # chain, leaf first (PEM): 4317 and 4318 speak TLS
/// key_file = "/etc/weir/node.key"
/// client_ca_file = "/etc/weir/clients-ca.crt"  # optional: clients must present a cert it signed
/// peer_ca_file = "/etc/weir/cluster-ca.crt"    # members speak mutual TLS, verified against it
/// ```
///
/// The files are read again when they change (polled every `reload_interval_secs`): new
/// connections get the new certificate, open ones keep theirs. A change that does not load
/// (a key that does not match its certificate) is logged and the previous files stay in use.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// This node's certificate chain (PEM, leaf first) for 4317 and 4318. Empty: both
    /// ports speak plaintext.
    pub cert_file: PathBuf,
    /// The private key of `cert_file` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA bundle (PEM) that clients' certificates must chain to on 4317 and 4318. Empty:
    /// no client certificate is asked for.
    pub client_ca_file: PathBuf,
    /// The cluster's CA bundle (PEM). Set: the peer port requires a client certificate
    /// that chains to it, and this node dials the others over TLS, verifying their
    /// certificates against it and presenting its own. Every member sets it, or none.
    pub peer_ca_file: PathBuf,
    /// This node's certificate on the peer port, as server and as client (needs both
    /// extended key usages). Empty: `cert_file`.
    pub peer_cert_file: PathBuf,
    /// The private key of `peer_cert_file`. Empty: `key_file`.
    pub peer_key_file: PathBuf,
    /// How often the files' modification times are checked for a reload.
    pub reload_interval_secs: u64,
    /// Time a client has to finish its TLS handshake; a slower one is disconnected.
    pub handshake_timeout_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: PathBuf::new(),
            peer_ca_file: PathBuf::new(),
            peer_cert_file: PathBuf::new(),
            peer_key_file: PathBuf::new(),
            reload_interval_secs: 10,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// `Some(path)` when a path key is set (not empty).
fn set(p: &Path) -> Option<&Path> {
    (!p.as_os_str().is_empty()).then_some(p)
}

impl TlsConfig {
    /// Whether gRPC and HTTP speak TLS.
    pub fn enabled(&self) -> bool {
        set(&self.cert_file).is_some()
    }

    /// Whether gRPC and HTTP accept only clients with a certificate from `client_ca_file`.
    pub fn requires_client_certs(&self) -> bool {
        self.enabled() && set(&self.client_ca_file).is_some()
    }

    /// Whether the peer port and the connections to the other members use mutual TLS.
    pub fn peer_enabled(&self) -> bool {
        set(&self.peer_ca_file).is_some()
    }

    /// The certificate and key files of the peer port (keys named for errors), when peer
    /// TLS is on.
    pub fn peer_identity(&self) -> Option<[(&'static str, &Path); 2]> {
        if !self.peer_enabled() {
            return None;
        }
        Some(match set(&self.peer_cert_file) {
            Some(cert) => [
                ("tls.peer_cert_file", cert),
                ("tls.peer_key_file", &self.peer_key_file),
            ],
            None => [
                ("tls.cert_file", &self.cert_file),
                ("tls.key_file", &self.key_file),
            ],
        })
    }

    fn validate(&self) -> anyhow::Result<()> {
        let pairs = [
            (
                "tls.cert_file",
                &self.cert_file,
                "tls.key_file",
                &self.key_file,
            ),
            (
                "tls.peer_cert_file",
                &self.peer_cert_file,
                "tls.peer_key_file",
                &self.peer_key_file,
            ),
        ];
        for (a, pa, b, pb) in pairs {
            anyhow::ensure!(
                set(pa).is_some() == set(pb).is_some(),
                "{a} and {b} go together: set both or neither"
            );
        }
        anyhow::ensure!(
            set(&self.client_ca_file).is_none() || self.enabled(),
            "tls.client_ca_file needs tls.cert_file and tls.key_file (a client certificate is \
             asked for during a TLS handshake)"
        );
        anyhow::ensure!(
            set(&self.peer_cert_file).is_none() || self.peer_enabled(),
            "tls.peer_cert_file needs tls.peer_ca_file (the CA the members' certificates \
             chain to)"
        );
        anyhow::ensure!(
            !self.peer_enabled() || self.enabled() || set(&self.peer_cert_file).is_some(),
            "tls.peer_ca_file needs this node's certificate: tls.peer_cert_file and \
             tls.peer_key_file, or tls.cert_file and tls.key_file"
        );
        anyhow::ensure!(
            self.reload_interval_secs > 0 && self.handshake_timeout_ms > 0,
            "tls.reload_interval_secs and tls.handshake_timeout_ms must be positive"
        );
        Ok(())
    }
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
#[derive(Clone, Debug, Deserialize, Serialize)]
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
    #[serde(alias = "replica_log_max_bytes")]
    pub replica_log_bytes_max: u64,
    /// Followers copy the shard leader's index segments instead of indexing every record
    /// again (docs/cluster.md, "Segment replication"). Off: every replica indexes.
    pub segment_replication: bool,
    /// How often a follower asks each shard's leader for the segments of its last index
    /// commit. What was committed since is searched in the follower's head meanwhile.
    pub segment_sync_interval_ms: u64,
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
            replica_log_bytes_max: 4 << 30,
            segment_replication: true,
            segment_sync_interval_ms: 1000,
            rejoin: false,
        }
    }
}

/// One member of the cluster, as every node knows it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
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
        anyhow::ensure!(
            (100..=60_000).contains(&self.segment_sync_interval_ms),
            "cluster.segment_sync_interval_ms must be between 100 and 60000, not {}: followers \
             search what their leader committed since its last sync in their head",
            self.segment_sync_interval_ms
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
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    /// The sinks; none by default (their keys: docs/mirrors.md).
    #[serde(skip_serializing)]
    pub sinks: Vec<weir_mirror::SinkConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("weir-data"),
            // Loopback: a node reachable from elsewhere must be told so, with keys on
            // (auth.enabled) or knowingly open (auth.insecure).
            grpc_addr: "127.0.0.1:4317".parse().expect("literal address"),
            http_addr: "127.0.0.1:4318".parse().expect("literal address"),
            http: HttpConfig::default(),
            storage: StorageConfig::default(),
            limits: LimitsConfig::default(),
            index: IndexConfig::default(),
            search: SearchConfig::default(),
            query: QueryConfig::default(),
            mirror: MirrorConfig::default(),
            cluster: ClusterConfig::default(),
            syslog: Vec::new(),
            auth: AuthConfig::default(),
            tenant_limits: crate::tenants::TenantLimits::default(),
            tenants: Vec::new(),
            tls: TlsConfig::default(),
        }
    }
}

/// `[http]`: limits of the HTTP server (port 4318). Each refusal names its key.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Connections served at once; one more is answered 503 and closed.
    pub connections_max: usize,
    /// Time a client has to send a request's headers (also while an idle kept-alive
    /// connection waits for its next request).
    pub header_read_timeout_ms: u64,
    /// Bytes of a request URI (path and query); over it: 414.
    pub request_uri_bytes_max: usize,
    /// Bytes of a request's headers (names and values); over it: 431.
    pub request_headers_bytes_max: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connections_max: 1024,
            header_read_timeout_ms: 30_000,
            request_uri_bytes_max: 16 << 10,
            request_headers_bytes_max: 64 << 10,
        }
    }
}

/// Raft, shards and WAL.
#[derive(Clone, Debug, Deserialize, Serialize)]
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
    #[serde(alias = "disk_free_min_bytes")]
    pub disk_free_bytes_min: u64,
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
            disk_free_bytes_min: 1 << 30,
        }
    }
}

/// Ingest limits (see `weir_ingest::Limits`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Encoded request size at most.
    #[serde(alias = "max_batch_bytes")]
    pub batch_bytes_max: usize,
    /// Records per request at most.
    #[serde(alias = "max_batch_records")]
    pub batch_records_max: usize,
    /// Bytes of one record (body, labels, attributes) at most.
    #[serde(alias = "max_record_bytes")]
    pub record_bytes_max: usize,
    /// Stream labels per record at most.
    #[serde(alias = "max_labels_per_record")]
    pub labels_per_record_max: usize,
    /// Attributes per record at most.
    #[serde(alias = "max_attributes_per_record")]
    pub attributes_per_record_max: usize,
    /// Label name length at most.
    #[serde(alias = "max_label_name_bytes")]
    pub label_name_bytes_max: usize,
    /// Label value length at most.
    #[serde(alias = "max_label_value_bytes")]
    pub label_value_bytes_max: usize,
    /// How far in the past a timestamp may be.
    #[serde(alias = "max_timestamp_age_secs")]
    pub timestamp_age_secs_max: u64,
    /// How far in the future a timestamp may be.
    #[serde(alias = "max_timestamp_future_secs")]
    pub timestamp_future_secs_max: u64,
    /// Bytes of a tenant name at most.
    pub tenant_bytes_max: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = weir_ingest::Limits::default();
        LimitsConfig {
            batch_bytes_max: d.batch_bytes_max,
            batch_records_max: d.batch_records_max,
            record_bytes_max: d.record_bytes_max,
            labels_per_record_max: d.labels_per_record_max,
            attributes_per_record_max: d.attributes_per_record_max,
            label_name_bytes_max: d.label_name_bytes_max,
            label_value_bytes_max: d.label_value_bytes_max,
            timestamp_age_secs_max: d.timestamp_age_secs_max,
            timestamp_future_secs_max: d.timestamp_future_secs_max,
            tenant_bytes_max: d.tenant_bytes_max,
        }
    }
}

impl LimitsConfig {
    /// The ingest layer's view of these limits.
    pub fn to_limits(&self) -> weir_ingest::Limits {
        weir_ingest::Limits {
            batch_bytes_max: self.batch_bytes_max,
            batch_records_max: self.batch_records_max,
            record_bytes_max: self.record_bytes_max,
            labels_per_record_max: self.labels_per_record_max,
            attributes_per_record_max: self.attributes_per_record_max,
            label_name_bytes_max: self.label_name_bytes_max,
            label_value_bytes_max: self.label_value_bytes_max,
            timestamp_age_secs_max: self.timestamp_age_secs_max,
            timestamp_future_secs_max: self.timestamp_future_secs_max,
            tenant_bytes_max: self.tenant_bytes_max,
        }
    }
}

/// Indexing.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// Time span of one index partition (retention drops whole partitions).
    pub partition_span_secs: u64,
    /// How often the indexer commits. Records are searchable before (the head is
    /// scanned); fewer commits make fewer segments to merge.
    pub commit_interval_ms: u64,
    /// Memory per partition writer.
    pub writer_memory_bytes: usize,
    /// Records older than this are dropped with their partition; 0 keeps everything.
    pub retention_secs: u64,
    /// How new partitions compress the stored records: `zstd` (smaller) or `lz4`
    /// (cheaper to read back).
    pub docstore_compression: String,
    /// Log payload bytes per shard committed but not yet indexed that searches scan (the
    /// head, [`crate::head`]); past it, appends to the shard wait for the indexer.
    pub head_bytes_max: usize,
    /// Segments of about the same size a partition gathers before merging them.
    pub merge_fan_in: usize,
    /// Map the index files lookups read for random access
    /// (`weir_index::IndexOptions::random_access_maps`).
    pub random_access_maps: bool,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            partition_span_secs: 3600,
            commit_interval_ms: 1000,
            writer_memory_bytes: 64 << 20,
            retention_secs: 7 * 24 * 3600,
            docstore_compression: "zstd".into(),
            head_bytes_max: 16 << 20,
            merge_fan_in: weir_index::DEFAULT_MERGE_FAN_IN,
            random_access_maps: false,
        }
    }
}

impl IndexConfig {
    /// `docstore_compression` as the index takes it.
    ///
    /// # Errors
    /// Neither `zstd` nor `lz4`.
    pub fn docstore(&self) -> anyhow::Result<weir_index::DocStore> {
        match self.docstore_compression.as_str() {
            "zstd" => Ok(weir_index::DocStore::Zstd),
            "lz4" => Ok(weir_index::DocStore::Lz4),
            other => anyhow::bail!(
                "index.docstore_compression is {other:?}: \"zstd\" (smaller) or \"lz4\" \
                 (cheaper to read back)"
            ),
        }
    }
}

/// Search API.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// `limit` when none is given.
    #[serde(alias = "default_limit")]
    pub limit_default: usize,
    /// Largest `limit` accepted; larger values are capped to it (and the answer says so).
    #[serde(alias = "max_limit")]
    pub limit_max: usize,
    /// Most buckets one histogram may have.
    pub histogram_buckets_max: usize,
    /// Memory for infix lookups (`*fragment*`, a LogQL needle that is not a whole word):
    /// the body words of recently searched index segments, shared by all shards.
    pub infix_cache_bytes: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            limit_default: 100,
            limit_max: 10_000,
            // Grafana asks for 1-minute buckets over a day (1,440).
            histogram_buckets_max: 2_000,
            infix_cache_bytes: weir_index::DEFAULT_INFIX_CACHE_BYTES,
        }
    }
}

/// Limits of one LogQL query (the Loki query API): each refusal names its key.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Longest time range a query may span.
    pub range_hours_max: u64,
    /// Most log lines one query returns (`limit` above it is refused, as Loki does).
    pub lines_max: usize,
    /// Most series a metric query holds at once (each range aggregation and the result).
    pub series_max: usize,
    /// Most points per series in a range query (`(end - start) / step`).
    pub points_per_series_max: usize,
    /// Most log records one query may read before it is refused: bounds the work of a
    /// query the index cannot narrow.
    pub records_scanned_max: u64,
    /// A query still running after this is stopped and answered 503.
    pub timeout_ms: u64,
    /// Queries evaluated at once on this node; more wait for a slot (within their timeout).
    pub concurrent_max: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            range_hours_max: 30 * 24 + 1,
            lines_max: 5_000,
            series_max: 500,
            points_per_series_max: 11_000,
            records_scanned_max: 50_000_000,
            timeout_ms: 60_000,
            concurrent_max: 4,
        }
    }
}

impl Config {
    /// Reads a TOML file; unknown keys are errors naming the key.
    ///
    /// # Errors
    /// The file cannot be read or is not valid configuration.
    /// Deprecated key names are accepted and logged as warnings naming their replacement.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        let (cfg, warnings) = Config::from_toml_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid config file {}: {e:#}", path.display()))?;
        for w in warnings {
            tracing::warn!(file = %path.display(), "{w}");
        }
        Ok(cfg)
    }

    /// Parses and validates TOML text; also returns a warning for each deprecated key it
    /// uses. An unknown key's error suggests the nearest known one.
    ///
    /// # Errors
    /// Not TOML, an unknown key or a bad value, named.
    pub fn from_toml_str(text: &str) -> anyhow::Result<(Config, Vec<String>)> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!(crate::config_keys::with_suggestion(e.to_string())))?;
        let warnings = crate::config_keys::deprecation_warnings(&table);
        let cfg: Config = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!(crate::config_keys::with_suggestion(e.to_string())))?;
        cfg.validate()?;
        Ok((cfg, warnings))
    }

    /// Refuses a node that listens beyond loopback with nobody authenticated, unless it
    /// is told to run open (`auth.insecure`): on gRPC and HTTP, access keys or TLS with
    /// client certificates (TLS alone encrypts, but lets anyone in); on the peer port of a
    /// cluster, mutual TLS between the members.
    ///
    /// # Errors
    /// Names the address, the keys that allow it and what each means.
    pub fn check_exposure(&self) -> anyhow::Result<()> {
        if self.auth.insecure {
            return Ok(());
        }
        if !self.auth.enabled && !self.tls.requires_client_certs() {
            for (key, addr) in [("http_addr", self.http_addr), ("grpc_addr", self.grpc_addr)] {
                anyhow::ensure!(
                    addr.ip().is_loopback(),
                    "{key} {addr} listens beyond loopback, and access keys are off: anyone who \
                     reaches it could read and write every tenant. Turn keys on with \
                     auth.enabled = true (or `weir server --auth`; the first start writes an \
                     admin key to {}), or require client certificates (tls.cert_file, \
                     tls.key_file and tls.client_ca_file), or run open on purpose with \
                     auth.insecure = true (`weir server --insecure`)",
                    self.data_dir.join(crate::auth::ADMIN_KEY_FILE).display()
                );
            }
        }
        let peer = self.cluster.peer_addr;
        anyhow::ensure!(
            !self.cluster.is_clustered() || peer.ip().is_loopback() || self.tls.peer_enabled(),
            "cluster.peer_addr {peer} listens beyond loopback without TLS: anyone who reaches \
             it could send raft messages, read every shard and fetch snapshots. Give the \
             members mutual TLS with tls.peer_ca_file (the cluster's CA; `weir tls generate` \
             makes one), or run the peer port open on purpose with auth.insecure = true"
        );
        Ok(())
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
        self.index.docstore()?;
        anyhow::ensure!(
            self.index.partition_span_secs >= 60,
            "index.partition_span_secs must be at least 60"
        );
        anyhow::ensure!(
            self.index.head_bytes_max >= 1 << 20,
            "index.head_bytes_max must be at least 1 MiB (1048576): appends wait while a shard's head is over it"
        );
        anyhow::ensure!(
            (2..=64).contains(&self.index.merge_fan_in),
            "index.merge_fan_in is {}: it must be between 2 and 64 (segments merged at once)",
            self.index.merge_fan_in
        );
        anyhow::ensure!(self.index.commit_interval_ms > 0 && self.index.commit_interval_ms <= 10_000, "index.commit_interval_ms must be between 1 and 10000: what is committed between index commits is held in the head (index.head_bytes_max) and scanned by every search");
        anyhow::ensure!(
            self.http.connections_max > 0 && self.http.header_read_timeout_ms > 0,
            "http.connections_max and http.header_read_timeout_ms must be positive"
        );
        anyhow::ensure!(
            self.search.limit_max > 0 && self.search.limit_default > 0,
            "search.limit_max and search.limit_default must be positive"
        );
        weir_mirror::config::validate_sinks(&self.mirror.sinks)?;
        self.cluster.validate()?;
        self.tls.validate()?;
        let limits = self.limits.to_limits();
        let mut addrs = std::collections::HashSet::new();
        for l in &self.syslog {
            l.validate(&limits)?;
            anyhow::ensure!(
                addrs.insert((l.listen, l.transport)),
                "two syslog listeners on {} ({:?})",
                l.listen,
                l.transport
            );
        }
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
    fn tls_keys_that_cannot_work_together_are_named() {
        let check = |text: &str| {
            toml::from_str::<Config>(text)
                .unwrap()
                .validate()
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(
            check("[tls]\ncert_file = \"a.crt\"\nkey_file = \"a.key\"\n"),
            None
        );
        let e = check("[tls]\ncert_file = \"a.crt\"\n").unwrap();
        assert!(e.contains("tls.cert_file and tls.key_file"), "{e}");
        let e = check("[tls]\nclient_ca_file = \"ca.crt\"\n").unwrap();
        assert!(e.contains("tls.client_ca_file needs tls.cert_file"), "{e}");
        let e = check("[tls]\npeer_ca_file = \"ca.crt\"\n").unwrap();
        assert!(e.contains("tls.peer_ca_file needs"), "{e}");
        let e = check("[tls]\npeer_cert_file = \"p.crt\"\npeer_key_file = \"p.key\"\n").unwrap();
        assert!(
            e.contains("tls.peer_cert_file needs tls.peer_ca_file"),
            "{e}"
        );
        let peer_only = "[tls]\npeer_ca_file = \"ca.crt\"\npeer_cert_file = \"p.crt\"\npeer_key_file = \"p.key\"\n";
        assert_eq!(check(peer_only), None);
        let cfg: Config = toml::from_str(peer_only).unwrap();
        assert!(cfg.tls.peer_enabled() && !cfg.tls.enabled());
        assert_eq!(cfg.tls.peer_identity().unwrap()[0].0, "tls.peer_cert_file");
    }

    /// Who may listen beyond loopback: on gRPC and HTTP, keys or client certificates (TLS
    /// alone lets anyone in); on a cluster's peer port, mutual TLS; else `auth.insecure`.
    #[test]
    fn exposure_beyond_loopback_needs_keys_client_certificates_or_insecure() {
        let mut cfg = Config {
            http_addr: "0.0.0.0:4318".parse().unwrap(),
            ..Config::default()
        };
        let e = cfg.check_exposure().unwrap_err().to_string();
        assert!(
            e.contains("tls.client_ca_file") && e.contains("auth.enabled"),
            "{e}"
        );
        cfg.tls.cert_file = "n.crt".into();
        cfg.tls.key_file = "n.key".into();
        assert!(
            cfg.check_exposure().is_err(),
            "TLS without client certificates"
        );
        cfg.tls.client_ca_file = "ca.crt".into();
        cfg.check_exposure().unwrap();

        let three = "[auth]\nenabled = true\n[cluster]\nnode_id = 1\npeer_addr = \"0.0.0.0:4319\"\n[[cluster.nodes]]\nid = 1\npeer = \"a:4319\"\n[[cluster.nodes]]\nid = 2\npeer = \"b:4319\"\n";
        let mut cfg: Config = toml::from_str(three).unwrap();
        let e = cfg.check_exposure().unwrap_err().to_string();
        assert!(
            e.contains("cluster.peer_addr 0.0.0.0:4319") && e.contains("tls.peer_ca_file"),
            "{e}"
        );
        cfg.tls.peer_ca_file = "ca.crt".into();
        cfg.check_exposure().unwrap();
        cfg.tls.peer_ca_file = PathBuf::new();
        cfg.auth.insecure = true;
        cfg.check_exposure().unwrap();
        cfg.auth.insecure = false;
        cfg.cluster.peer_addr = "127.0.0.1:4319".parse().unwrap();
        cfg.check_exposure().unwrap();
    }

    #[test]
    fn bad_backend_is_named() {
        let cfg: Config = toml::from_str("[storage]\nio_backend = \"mmap\"\n").unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("storage.io_backend"), "{e}");
    }

    #[test]
    fn a_merge_fan_in_out_of_range_is_named() {
        for bad in [0, 1, 65] {
            let cfg: Config = toml::from_str(&format!("[index]\nmerge_fan_in = {bad}\n")).unwrap();
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains("index.merge_fan_in") && e.contains("64"), "{e}");
        }
        let cfg: Config = toml::from_str("[index]\nmerge_fan_in = 32\n").unwrap();
        cfg.validate().unwrap();
    }

    #[test]
    fn a_segment_sync_interval_out_of_range_is_named() {
        for bad in [0, 99, 60_001] {
            let cfg: Config =
                toml::from_str(&format!("[cluster]\nsegment_sync_interval_ms = {bad}\n")).unwrap();
            let e = cfg.validate().unwrap_err().to_string();
            assert!(
                e.contains("cluster.segment_sync_interval_ms") && e.contains("60000"),
                "{e}"
            );
        }
        let cfg: Config = toml::from_str(
            "[cluster]\nsegment_sync_interval_ms = 250\nsegment_replication = false\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        assert!(!cfg.cluster.segment_replication);
    }
}
