//! What the front ends share.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use weir_raft::RaftNode;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::search::Searcher;

/// The node's shared state, handed to every handler.
pub struct NodeState {
    /// The configuration the node started with.
    pub config: Config,
    /// The raft layer.
    pub raft: Arc<RaftNode>,
    /// The search path.
    pub searcher: Arc<Searcher>,
    /// The append path every ingest protocol ends in.
    pub appender: Arc<crate::append::Appender>,
    /// The other members of the cluster; `None` on a single node.
    pub links: Option<Arc<crate::cluster::PeerLinks>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The mirrors to Elasticsearch and Loki.
    pub mirror: Arc<weir_mirror::Mirror>,
    /// This cluster's id (from `weir-node.json`).
    pub cluster_id: String,
    /// One slot per shard's indexer: the error that stopped it, if any.
    pub indexer_failed: Vec<Arc<std::sync::Mutex<Option<String>>>>,
    /// Committed records as they commit, for live tails.
    pub tail: Arc<crate::tail::TailHub>,
    /// Access keys: who may do what.
    pub auth: Arc<crate::auth::Auth>,
    /// Each tenant's limits.
    pub limiter: Arc<crate::tenants::TenantLimiter>,
    /// Each tenant's ingest rules.
    pub rules: Arc<crate::rules::RuleTable>,
    /// TLS toward the other members' HTTP ports (`[tls]` with `peer_ca_file`), for the
    /// requests this node forwards.
    pub tls_http_client: Option<Arc<crate::tls::ClientTls>>,
}

impl NodeState {
    /// The error that stopped this node's raft layer, if it stopped (the node must be
    /// restarted).
    pub fn raft_failure(&self) -> Option<String> {
        let h = self.raft.health();
        if !h.failed.load(Ordering::Acquire) {
            return None;
        }
        Some(
            h.failure
                .lock()
                .map(|f| f.clone().unwrap_or_default())
                .unwrap_or_default(),
        )
    }

    /// Whether the last flush failed for a full disk (appends are refused meanwhile).
    pub fn disk_full(&self) -> bool {
        self.raft.health().disk_full.load(Ordering::Acquire)
    }

    /// Whether some shard is still rejoining after this node lost its data.
    pub fn rejoining(&self) -> bool {
        self.raft.health().rejoining_shards.load(Ordering::Acquire) > 0
    }

    /// Errors of indexers that stopped.
    pub fn indexer_failures(&self) -> Vec<String> {
        self.indexer_failed
            .iter()
            .filter_map(|f| f.lock().ok().and_then(|g| g.clone()))
            .collect()
    }
}
