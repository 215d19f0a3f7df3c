//! What the front ends share.

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
}

impl NodeState {
    /// Errors of indexers that stopped.
    pub fn indexer_failures(&self) -> Vec<String> {
        self.indexer_failed
            .iter()
            .filter_map(|f| f.lock().ok().and_then(|g| g.clone()))
            .collect()
    }
}
