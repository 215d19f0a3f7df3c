//! The append path: validate and normalise a request, split it by shard, propose each
//! piece to its shard's raft group, and answer once every piece is committed.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use weir_proto::v1::{AppendRequest, AppendResponse};
use weir_proto::{ApiError, ErrorKind};
use weir_raft::{DedupKey, RaftNode};

use crate::cluster::PeerLinks;
use crate::metrics::Metrics;
use crate::protocol::Protocol;

/// Accepts batches on behalf of the gRPC and HTTP front ends.
pub struct Appender {
    raft: Arc<RaftNode>,
    /// The other members; `None` on a single node (every shard is led here).
    links: Option<Arc<PeerLinks>>,
    limits: weir_ingest::Limits,
    commit_timeout: Duration,
    metrics: Arc<Metrics>,
    /// Each tenant's rates and streams.
    limiter: Arc<crate::tenants::TenantLimiter>,
    /// Each tenant's filters and sampling.
    rules: Arc<crate::rules::RuleTable>,
    /// The shards' unindexed heads: an append waits while its shard's is full.
    heads: Option<Arc<crate::head::Heads>>,
}

impl Appender {
    /// The node's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// An appender proposing into `raft`, under each tenant's limits and rules.
    pub fn new(
        raft: Arc<RaftNode>,
        links: Option<Arc<PeerLinks>>,
        limits: weir_ingest::Limits,
        commit_timeout: Duration,
        metrics: Arc<Metrics>,
        limiter: Arc<crate::tenants::TenantLimiter>,
        rules: Arc<crate::rules::RuleTable>,
    ) -> Self {
        // gRPC counts an Append's records on the wire, before decoding it.
        weir_proto::codec::set_append_records_max(limits.batch_records_max);
        Appender {
            raft,
            links,
            limits,
            commit_timeout,
            metrics,
            limiter,
            rules,
            heads: None,
        }
    }

    /// Makes appends wait while a shard's head (committed, not yet indexed) is over its
    /// bound ([`crate::head::Heads::wait_for_room`]).
    #[must_use]
    pub fn with_heads(mut self, heads: Arc<crate::head::Heads>) -> Self {
        self.heads = Some(heads);
        self
    }

    /// The limits requests are checked against.
    pub fn limits(&self) -> &weir_ingest::Limits {
        &self.limits
    }

    /// Stores `req`. Answers only once every accepted record is committed.
    ///
    /// # Errors
    /// InvalidArgument for a request that breaks a whole-request limit; ResourceExhausted
    /// when the node is overloaded, the disk is full or the tenant is over a limit
    /// ([`crate::tenants`]); Unavailable when the commit did not
    /// happen within the commit timeout or the node is stopping. After a retryable error
    /// some pieces may be stored: retry with the same `producer_id` and `sequence` to
    /// avoid storing them twice.
    pub async fn append(&self, req: AppendRequest) -> Result<AppendResponse, ApiError> {
        self.append_via(Protocol::Append, req).await
    }

    /// [`Appender::append`] for a request that came by `protocol`, counted under it and
    /// its tenant (records accepted, rejected and deduplicated; latency).
    ///
    /// # Errors
    /// As [`Appender::append`].
    pub async fn append_via(
        &self,
        protocol: Protocol,
        req: AppendRequest,
    ) -> Result<AppendResponse, ApiError> {
        let started = std::time::Instant::now();
        let submitted = req.records.len() as u64;
        // Counted under the tenant as stored (normalised by the append).
        let raw_tenant = req.tenant.clone();
        let mut tenant = String::new();
        let result = self.append_inner(req, &mut tenant).await;
        if tenant.is_empty() {
            // Refused before its tenant was settled (too many records, say): the name as
            // the ingest rules read it, or `_invalid` when it breaks them.
            tenant = weir_ingest::normalize_tenant(&raw_tenant, &self.limits)
                .unwrap_or_else(|_| "_invalid".to_owned());
        }
        let ingest = &self.metrics.ingest;
        match &result {
            Ok(r) => {
                let rejected = r.rejected.len() as u64;
                let (accepted, deduplicated) = if r.duplicate {
                    (0, submitted.saturating_sub(rejected + r.dropped))
                } else {
                    (r.accepted, 0)
                };
                ingest.request(
                    protocol,
                    &tenant,
                    accepted,
                    rejected,
                    deduplicated,
                    started.elapsed(),
                );
            }
            Err(e) => {
                let refused = if e.retryable() {
                    &self.metrics.appends_refused_retryable
                } else {
                    &self.metrics.appends_refused_invalid
                };
                refused.inc_by(1);
                ingest.refused(protocol, &tenant, started.elapsed());
            }
        }
        result
    }

    /// Appends `req`; sets `tenant_out` to its tenant once that is known to be valid.
    async fn append_inner(
        &self,
        req: AppendRequest,
        tenant_out: &mut String,
    ) -> Result<AppendResponse, ApiError> {
        let started = std::time::Instant::now();
        let now = now_ns();
        let mut normalized = weir_ingest::normalize(req, now, &self.limits)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let tenant = normalized.tenant.clone();
        tenant_out.clone_from(&tenant);
        let producer = (!normalized.producer_id.is_empty())
            .then(|| format!("{tenant}\u{0}{}", normalized.producer_id));
        let sequence = normalized.sequence;
        // The tenant's rules first (what they drop costs nothing more), then its limits
        // over what is left; a refusal stores nothing of the request.
        let dropped = self.rules.apply(&tenant, &mut normalized.records);
        self.limiter.admit(&tenant, &normalized.records)?;
        let accepted = normalized.records.len() as u64;
        let rejected = std::mem::take(&mut normalized.rejected);
        let bodies_repaired = normalized.bodies_repaired;
        self.metrics.count_rejected(&rejected);
        let mut response = AppendResponse {
            accepted,
            rejected,
            duplicate: false,
            bodies_repaired,
            dropped,
        };
        if accepted == 0 {
            return Ok(response);
        }
        let pieces: Vec<(u32, Vec<u8>, u64)> =
            weir_ingest::split_by_shard(normalized, self.raft.shard_count(), now)
                .into_iter()
                .map(|(shard, batch, _positions)| {
                    (shard.0, batch.encode_to_vec(), batch.records.len() as u64)
                })
                .collect();
        let deadline = tokio::time::Instant::now() + self.commit_timeout;
        if let Some(heads) = &self.heads {
            // Backpressure: the index must keep up within the head's bound.
            let sizes: Vec<(u32, usize)> = pieces.iter().map(|(s, d, _)| (*s, d.len())).collect();
            heads.wait_for_room(&sizes, deadline).await?;
        }
        let mut placed = Vec::with_capacity(pieces.len());
        for (shard, data, records) in pieces {
            let key = producer
                .clone()
                .map(|producer| DedupKey { producer, sequence });
            let task = match &self.links {
                // A single node leads every shard: propose here, no task needed.
                None => Placed::Here(self.raft.propose(shard, key, data).map_err(raft_error)?),
                // Pieces may go to other nodes: each runs on its own, concurrently.
                Some(links) => Placed::Elsewhere(tokio::spawn(place(
                    self.raft.clone(),
                    links.clone(),
                    shard,
                    key,
                    data,
                    deadline,
                ))),
            };
            placed.push((task, records));
        }
        let wait_all = async {
            let (mut duplicate, mut stored) = (false, 0u64);
            for (task, records) in placed {
                let committed = match task {
                    Placed::Here(p) => p.await.map_err(|_| stopped())?.map_err(raft_error)?,
                    Placed::Elsewhere(h) => h.await.map_err(|e| {
                        ApiError::new(ErrorKind::Internal, format!("append task failed: {e}"))
                    })??,
                };
                duplicate |= committed.duplicate;
                if !committed.duplicate {
                    stored += records;
                }
            }
            Ok::<(bool, u64), ApiError>((duplicate, stored))
        };
        let stored;
        (response.duplicate, stored) =
            match tokio::time::timeout_at(deadline + Duration::from_millis(50), wait_all).await {
                Ok(r) => r?,
                Err(_) => return Err(not_committed(self.commit_timeout)),
            };
        self.metrics.records_accepted.inc_by(stored);
        self.metrics.append_latency.observe(started.elapsed());
        Ok(response)
    }
}

/// One shard's piece on its way: proposed here, or placed by a task (cluster).
enum Placed {
    Here(weir_raft::Proposal),
    Elsewhere(tokio::task::JoinHandle<Result<weir_raft::Committed, ApiError>>),
}

/// The answer when the raft layer went away before answering.
fn stopped() -> ApiError {
    ApiError::new(
        ErrorKind::Unavailable,
        "the node stopped before the batch was committed; retry",
    )
}

/// The answer when a batch was not committed in time.
fn not_committed(timeout: Duration) -> ApiError {
    ApiError::new(
        ErrorKind::Unavailable,
        format!(
            "the batch was not committed within {} ms (storage.commit_timeout_ms); it may still be stored: retry with the same producer_id and sequence to avoid duplicates",
            timeout.as_millis()
        ),
    )
}

/// How long to wait before asking again who leads a shard.
const NO_LEADER_RETRY: Duration = Duration::from_millis(50);

/// Commits one shard's piece on a cluster: proposed here when this node leads the shard,
/// forwarded to the leader otherwise. A refusal that proves nothing was stored (not the
/// leader, overwritten by a new leader) is retried against whoever leads now, until
/// `deadline`; so is a lost forward when the piece carries a dedup key (the leader drops a
/// second copy). Without a key a lost forward is not retried: it may have been stored.
async fn place(
    raft: Arc<RaftNode>,
    links: Arc<PeerLinks>,
    shard: u32,
    key: Option<DedupKey>,
    data: Vec<u8>,
    deadline: tokio::time::Instant,
) -> Result<weir_raft::Committed, ApiError> {
    let piece = Piece {
        shard,
        key,
        data,
        deadline,
    };
    let mut hint: Option<u64> = None;
    loop {
        if tokio::time::Instant::now() >= deadline {
            return Err(piece.no_leader());
        }
        let attempt = match hint.take().or_else(|| raft.leader_of(shard)) {
            None => Attempt::Again(None),
            Some(l) if l == links.me() => piece.propose_here(&raft).await?,
            Some(l) => piece.forward_to(&links, l).await?,
        };
        match attempt {
            Attempt::Committed(c) => return Ok(c),
            Attempt::Again(h) => hint = h,
        }
        tokio::time::sleep(
            NO_LEADER_RETRY.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
        )
        .await;
    }
}

/// One shard's piece of an append, on its way to the shard's leader.
struct Piece {
    shard: u32,
    key: Option<DedupKey>,
    data: Vec<u8>,
    deadline: tokio::time::Instant,
}

/// How one attempt to place a piece ended, when it did not fail for good.
enum Attempt {
    /// Committed.
    Committed(weir_raft::Committed),
    /// Provably not stored (not the leader, dropped by a new leader): try again, at the
    /// hinted leader when there is one.
    Again(Option<u64>),
}

impl Piece {
    fn no_leader(&self) -> ApiError {
        ApiError::new(
            ErrorKind::Unavailable,
            format!("shard {} has no reachable leader with a quorum (an election is under way or a majority of nodes is down); retry with the same producer_id and sequence", self.shard),
        )
    }

    /// Proposes the piece on this node, which leads the shard (as far as it knows).
    async fn propose_here(&self, raft: &RaftNode) -> Result<Attempt, ApiError> {
        let proposal = raft
            .propose(self.shard, self.key.clone(), self.data.clone())
            .map_err(raft_error)?;
        match tokio::time::timeout_at(self.deadline, proposal).await {
            Err(_) => Err(self.no_leader()),
            Ok(Err(_)) => Err(stopped()),
            Ok(Ok(Ok(c))) => Ok(Attempt::Committed(c)),
            Ok(Ok(Err(weir_raft::Error::NotLeader { leader, .. }))) => {
                Ok(Attempt::Again((leader != 0).then_some(leader)))
            }
            Ok(Ok(Err(weir_raft::Error::Dropped { .. }))) => Ok(Attempt::Again(None)),
            Ok(Ok(Err(e))) => Err(raft_error(e)),
        }
    }

    /// Forwards the piece to node `leader` over the peer port.
    async fn forward_to(&self, links: &PeerLinks, leader: u64) -> Result<Attempt, ApiError> {
        let shard = self.shard;
        let Some(peer) = links.get(leader) else {
            return Err(ApiError::new(
                ErrorKind::Internal,
                format!("shard {shard} is led by node {leader}, which is not a member"),
            ));
        };
        let mut req = tonic::Request::new(weir_proto::v1::ForwardRequest {
            cluster_id: links.cluster_id(),
            shard,
            has_key: self.key.is_some(),
            producer: self
                .key
                .as_ref()
                .map(|k| k.producer.clone())
                .unwrap_or_default(),
            sequence: self.key.as_ref().map_or(0, |k| k.sequence),
            batch: self.data.clone(),
        });
        req.set_timeout(
            self.deadline
                .saturating_duration_since(tokio::time::Instant::now()),
        );
        match peer.client.clone().forward(req).await {
            Ok(r) => self.forwarded(leader, r.into_inner()),
            Err(status) => {
                peer.failed(status.message());
                // A reset connection also reads UNAVAILABLE: without a key nothing tells
                // whether the leader got the batch, so it is not sent again.
                if self.key.is_none() {
                    return Err(ApiError::new(
                        ErrorKind::Unavailable,
                        format!("forwarding to shard {shard}'s leader (node {leader}) failed: {}; the batch may be stored: send a producer_id and sequence so that retries are safe", status.message()),
                    ));
                }
                Ok(Attempt::Again(None))
            }
        }
    }

    /// What the leader's answer to a forward means for the piece.
    fn forwarded(
        &self,
        leader: u64,
        r: weir_proto::v1::ForwardResponse,
    ) -> Result<Attempt, ApiError> {
        use weir_proto::v1::ForwardError as F;
        let shard = self.shard;
        match F::try_from(r.error).unwrap_or(F::Other) {
            F::ForwardOk => Ok(Attempt::Committed(weir_raft::Committed {
                index: r.index,
                duplicate: r.duplicate,
            })),
            F::NotLeader => Ok(Attempt::Again(
                (r.leader_hint != 0).then_some(r.leader_hint),
            )),
            F::Dropped => Ok(Attempt::Again(None)),
            F::Overloaded | F::DiskFull => Err(ApiError::new(
                ErrorKind::ResourceExhausted,
                format!("shard {shard}'s leader (node {leader}): {}", r.message),
            )),
            // The leader stopped: the piece may be in its log already.
            F::Stopped if self.key.is_none() => Err(ApiError::new(
                ErrorKind::Unavailable,
                format!("shard {shard}'s leader (node {leader}) stopped while committing the batch; it may be stored: send a producer_id and sequence so that retries are safe"),
            )),
            F::Stopped => Ok(Attempt::Again(None)),
            F::SequenceTooOld => Err(ApiError::invalid(r.message)),
            F::Other => Err(ApiError::new(
                ErrorKind::Unavailable,
                format!("shard {shard}'s leader (node {leader}): {}", r.message),
            )),
        }
    }
}

/// Maps a raft-layer error to what the client is told.
pub fn raft_error(e: weir_raft::Error) -> ApiError {
    use weir_raft::Error as E;
    match e {
        E::Overloaded => ApiError::new(
            ErrorKind::ResourceExhausted,
            "the write queue is full (storage.proposal_queue_len); retry with backoff",
        ),
        E::DiskFull => ApiError::new(
            ErrorKind::ResourceExhausted,
            "the disk is full; appends resume when space is freed (nothing acknowledged is lost)",
        ),
        E::Stopped(_) => ApiError::new(
            ErrorKind::Unavailable,
            "the node is stopping or stopped; retry on another node or later",
        ),
        E::NotLeader { .. } | E::Dropped { .. } => {
            ApiError::new(ErrorKind::Unavailable, e.to_string())
        }
        // Nothing is broken: the outcome is unknown here, and a retry with the same
        // producer id and sequence settles it.
        E::ReplacedBySnapshot { .. } => ApiError::new(
            ErrorKind::Unavailable,
            format!("{e}; retry with the same producer_id and sequence"),
        ),
        other => ApiError::new(ErrorKind::Internal, other.to_string()),
    }
}

pub use weir_proto::now_ns;
