//! The inbound half of the peer transport: the `weir.v1.Peer` service on the peer port.
//!
//! It starts before the raft layer (other nodes ask `Hello` while the cluster id is being
//! agreed); every other call answers UNAVAILABLE until [`PeerService::ready`] was given the
//! node's parts. Every call but `Hello` carries the caller's cluster id, and a node refuses
//! traffic of another cluster with FAILED_PRECONDITION naming both.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tonic::{Request, Response, Status};
use weir_proto::v1::peer_server::Peer;
use weir_proto::v1::{
    ForwardError, ForwardRequest, ForwardResponse, HelloRequest, HelloResponse, RaftBatch,
    RaftBatchResponse, SegmentManifestRequest, SegmentManifestResponse, ShardLabelsRequest,
    ShardLabelsResponse, ShardSearchRequest, ShardSearchResponse, ShardStatusProto,
    ShardStatusRequest, ShardStatusResponse, SnapshotChunk, SnapshotFileRequest,
};
use weir_raft::{DedupKey, RaftNode, RejoinTarget};

use crate::cluster::PeerLinks;
use crate::search::Searcher;

/// What the service needs once the node is up.
pub struct PeerBackend {
    /// The raft layer.
    pub raft: Arc<RaftNode>,
    /// Local searches.
    pub searcher: Arc<Searcher>,
    /// How long a forwarded append may wait for its commit.
    pub commit_timeout: Duration,
    /// Snapshot packages this node built, served to followers.
    pub snapshots: crate::snapshot::SnapshotStore,
    /// Segment publications of the shards this node leads, served to followers.
    pub segments: crate::segments::SegmentReplication,
}

/// The `weir.v1.Peer` service.
#[derive(Clone)]
pub struct PeerService {
    node_id: u64,
    shards: u32,
    cluster_id: Arc<Mutex<String>>,
    backend: Arc<OnceLock<PeerBackend>>,
    links: Arc<PeerLinks>,
    /// Per peer, the oldest incarnation whose raft batches are still accepted (raised when
    /// the peer rejoins without its data). The lock also orders "raise, then forget"
    /// against "check, then step", so no batch of an old incarnation reaches raft after the
    /// forget.
    incarnations: Arc<Mutex<std::collections::HashMap<u64, u64>>>,
}

impl PeerService {
    /// A service answering `Hello` with `cluster_id` (empty until agreed) and nothing else
    /// until [`PeerService::ready`].
    pub fn new(
        node_id: u64,
        shards: u32,
        cluster_id: Arc<Mutex<String>>,
        links: Arc<PeerLinks>,
    ) -> Self {
        PeerService {
            node_id,
            shards,
            cluster_id,
            backend: Arc::new(OnceLock::new()),
            links,
            incarnations: Arc::default(),
        }
    }

    /// Hands the service the node's parts: from now on it serves every call.
    pub fn ready(&self, backend: PeerBackend) {
        let _ = self.backend.set(backend);
    }

    /// The backend, after checking the caller's cluster id.
    fn check(&self, theirs: &str, from: Option<u64>) -> Result<&PeerBackend, Status> {
        let ours = self
            .cluster_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(backend) = self.backend.get() else {
            return Err(Status::unavailable("this node is starting"));
        };
        if ours != theirs {
            return Err(Status::failed_precondition(format!(
                "this node (id {}) belongs to cluster {ours}, the caller{} to cluster {theirs:?}",
                self.node_id,
                from.map(|f| format!(" (node {f})")).unwrap_or_default()
            )));
        }
        if let Some(p) = from.and_then(|f| self.links.get(f)) {
            p.seen();
        }
        Ok(backend)
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    type SnapshotFileStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

    async fn snapshot_file(
        &self,
        req: Request<SnapshotFileRequest>,
    ) -> Result<Response<Self::SnapshotFileStream>, Status> {
        let r = req.into_inner();
        let backend = self.check(&r.cluster_id, None)?;
        let file = if r.segments {
            backend
                .segments
                .package_file(r.shard, &r.package, &r.path)?
        } else {
            backend
                .snapshots
                .package_file(r.shard, &r.package, &r.path)?
        };
        Ok(Response::new(crate::snapshot::SnapshotStore::stream_file(
            file, r.offset,
        )))
    }

    async fn segment_manifest(
        &self,
        req: Request<SegmentManifestRequest>,
    ) -> Result<Response<SegmentManifestResponse>, Status> {
        let r = req.into_inner();
        let backend = self.check(&r.cluster_id, Some(r.from))?;
        if r.shard >= self.shards {
            return Err(Status::invalid_argument(format!(
                "shard {} does not exist: this cluster has {} shards",
                r.shard, self.shards
            )));
        }
        Ok(Response::new(backend.segments.manifest(&r).await?))
    }

    async fn hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        let (from, fresh, measure) = (
            req.get_ref().from,
            req.get_ref().fresh,
            req.get_ref().measure,
        );
        if let Some(p) = self.links.get(from) {
            p.seen();
        }
        let ours = self
            .cluster_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let backend = self.backend.get();
        let mut forgotten = None;
        if let (Some(b), true) = (backend, fresh) {
            if req.get_ref().cluster_id == ours {
                let done = {
                    let mut inc = self.incarnations.lock().unwrap_or_else(|p| p.into_inner());
                    let floor = inc.entry(from).or_insert(0);
                    *floor = (*floor).max(req.get_ref().incarnation);
                    b.raft.forget_peer(from)
                };
                forgotten = tokio::time::timeout(Duration::from_secs(2), done)
                    .await
                    .ok()
                    .and_then(Result::ok);
            }
        } else if let (Some(b), true) = (backend, measure) {
            if req.get_ref().cluster_id == ours {
                forgotten = tokio::time::timeout(Duration::from_secs(2), b.raft.status())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|st| {
                        st.iter()
                            .map(|s| RejoinTarget::of(s.last_index, s.last_term, s.term))
                            .collect()
                    });
            }
        }
        Ok(Response::new(HelloResponse {
            cluster_id: ours,
            node_id: self.node_id,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            shards: self.shards,
            ready: backend.is_some() && (!(fresh || measure) || forgotten.is_some()),
            last_indexes: forgotten.iter().flatten().map(|t| t.last_index).collect(),
            terms: forgotten.iter().flatten().map(|t| t.term).collect(),
            last_log_terms: forgotten.iter().flatten().map(|t| t.log.0).collect(),
        }))
    }

    async fn raft(&self, req: Request<RaftBatch>) -> Result<Response<RaftBatchResponse>, Status> {
        let batch = req.into_inner();
        let backend = self.check(&batch.cluster_id, Some(batch.from))?;
        let inc = self.incarnations.lock().unwrap_or_else(|p| p.into_inner());
        if inc
            .get(&batch.from)
            .is_some_and(|floor| batch.incarnation < *floor)
        {
            // From the peer's life before it lost its data: what it acknowledged is gone.
            return Ok(Response::new(RaftBatchResponse {}));
        }
        for m in batch.messages {
            backend
                .raft
                .step(m.shard, &m.message)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        Ok(Response::new(RaftBatchResponse {}))
    }

    async fn forward(
        &self,
        req: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let r = req.into_inner();
        let backend = self.check(&r.cluster_id, None)?;
        if r.shard >= backend.raft.shard_count() {
            return Err(Status::invalid_argument(format!("no shard {}", r.shard)));
        }
        let key = r.has_key.then_some(DedupKey {
            producer: r.producer,
            sequence: r.sequence,
        });
        let result = match backend.raft.propose(r.shard, key, r.batch) {
            Ok(p) => match tokio::time::timeout(backend.commit_timeout, p).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(weir_raft::Error::Stopped(r.shard)),
                Err(_) => {
                    return Ok(Response::new(ForwardResponse {
                        error: ForwardError::Other as i32,
                        message: format!(
                            "not committed within {} ms on the leader; it may still be stored",
                            backend.commit_timeout.as_millis()
                        ),
                        ..Default::default()
                    }))
                }
            },
            Err(e) => Err(e),
        };
        Ok(Response::new(forward_response(result)))
    }

    async fn search_shards(
        &self,
        req: Request<ShardSearchRequest>,
    ) -> Result<Response<ShardSearchResponse>, Status> {
        let r = req.into_inner();
        let backend = self.check(&r.cluster_id, None)?;
        let shards = r.shards.clone();
        let search = crate::search::RemoteSearch::from_proto(r)
            .map_err(|e| Status::invalid_argument(e.message))?;
        let results = backend
            .searcher
            .search_shards(search.request, &shards)
            .await
            .map_err(|e| Status::internal(e.message))?;
        Ok(Response::new(ShardSearchResponse {
            shards: results
                .into_iter()
                .map(|(shard, hits)| crate::search::shard_hits_to_proto(shard, hits))
                .collect(),
        }))
    }

    async fn label_shards(
        &self,
        req: Request<ShardLabelsRequest>,
    ) -> Result<Response<ShardLabelsResponse>, Status> {
        let r = req.into_inner();
        let backend = self.check(&r.cluster_id, None)?;
        let values = if r.name.is_empty() {
            backend
                .searcher
                .label_names_of(&r.shards, r.tenant, r.start_ns, r.end_ns)
                .await
        } else {
            backend
                .searcher
                .label_values_of(&r.shards, r.tenant, r.name, r.start_ns, r.end_ns)
                .await
        }
        .map_err(|e| Status::internal(e.message))?;
        Ok(Response::new(ShardLabelsResponse { values }))
    }

    async fn status(
        &self,
        req: Request<ShardStatusRequest>,
    ) -> Result<Response<ShardStatusResponse>, Status> {
        let backend = self.check(&req.get_ref().cluster_id, None)?;
        let shards = backend
            .raft
            .status()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(ShardStatusResponse {
            node_id: self.node_id,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            shards: shard_views(&shards, &backend.searcher),
        }))
    }
}

/// This node's view of its shards, as `Status` sends it and the cluster status merges it.
pub fn shard_views(
    shards: &[weir_raft::ShardStatus],
    searcher: &Searcher,
) -> Vec<ShardStatusProto> {
    shards
        .iter()
        .map(|s| ShardStatusProto {
            shard: s.shard,
            leader_id: s.leader_id,
            term: s.term,
            commit: s.commit,
            applied: s.applied,
            indexed: searcher.checkpoint(s.shard),
        })
        .collect()
}

/// The answer to a forwarded append.
fn forward_response(r: weir_raft::Result<weir_raft::Committed>) -> ForwardResponse {
    use weir_raft::Error as E;
    let (error, leader_hint) = match &r {
        Ok(c) => {
            return ForwardResponse {
                error: ForwardError::ForwardOk as i32,
                index: c.index,
                duplicate: c.duplicate,
                ..Default::default()
            }
        }
        Err(E::NotLeader { leader, .. }) => (ForwardError::NotLeader, *leader),
        Err(E::Dropped { .. }) => (ForwardError::Dropped, 0),
        Err(E::Overloaded) => (ForwardError::Overloaded, 0),
        Err(E::DiskFull) => (ForwardError::DiskFull, 0),
        Err(E::Stopped(_)) => (ForwardError::Stopped, 0),
        Err(E::SequenceTooOld { .. }) => (ForwardError::SequenceTooOld, 0),
        Err(_) => (ForwardError::Other, 0),
    };
    ForwardResponse {
        error: error as i32,
        message: r.err().map(|e| e.to_string()).unwrap_or_default(),
        leader_hint,
        ..Default::default()
    }
}
