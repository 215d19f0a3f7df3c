//! The append path: validate and normalise a request, split it by shard, propose each
//! piece to its shard's raft group, and answer once every piece is committed.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use weir_proto::v1::{AppendRequest, AppendResponse};
use weir_proto::{ApiError, ErrorKind};
use weir_raft::{DedupKey, RaftNode};

use crate::metrics::Metrics;

/// Accepts batches on behalf of the gRPC and HTTP front ends.
pub struct Appender {
    raft: Arc<RaftNode>,
    limits: weir_ingest::Limits,
    commit_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Appender {
    /// The node's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// An appender proposing into `raft`.
    pub fn new(
        raft: Arc<RaftNode>,
        limits: weir_ingest::Limits,
        commit_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Appender {
            raft,
            limits,
            commit_timeout,
            metrics,
        }
    }

    /// The limits requests are checked against.
    pub fn limits(&self) -> &weir_ingest::Limits {
        &self.limits
    }

    /// Stores `req`. Answers only once every accepted record is committed.
    ///
    /// # Errors
    /// InvalidArgument for a request that breaks a whole-request limit; ResourceExhausted
    /// when the node is overloaded or the disk is full; Unavailable when the commit did not
    /// happen within the commit timeout or the node is stopping. After a retryable error
    /// some pieces may be stored: retry with the same `producer_id` and `sequence` to
    /// avoid storing them twice.
    pub async fn append(&self, req: AppendRequest) -> Result<AppendResponse, ApiError> {
        let result = self.append_inner(req).await;
        if let Err(e) = &result {
            let refused = if e.retryable() {
                &self.metrics.appends_refused_retryable
            } else {
                &self.metrics.appends_refused_invalid
            };
            refused.inc_by(1);
        }
        result
    }

    async fn append_inner(&self, req: AppendRequest) -> Result<AppendResponse, ApiError> {
        let started = std::time::Instant::now();
        let now = now_ns();
        let mut normalized = weir_ingest::normalize(req, now, &self.limits)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let tenant = normalized.tenant.clone();
        let producer = (!normalized.producer_id.is_empty())
            .then(|| format!("{tenant}\u{0}{}", normalized.producer_id));
        let sequence = normalized.sequence;
        let accepted = normalized.records.len() as u64;
        let rejected = std::mem::take(&mut normalized.rejected);
        let bodies_repaired = normalized.bodies_repaired;
        self.metrics.count_rejected(&rejected);
        let mut response = AppendResponse {
            accepted,
            rejected,
            duplicate: false,
            bodies_repaired,
        };
        if accepted == 0 {
            return Ok(response);
        }
        let pieces = weir_ingest::split_by_shard(normalized, self.raft.shard_count(), now);
        let mut proposals = Vec::with_capacity(pieces.len());
        for (shard, batch, _positions) in pieces {
            let key = producer
                .clone()
                .map(|producer| DedupKey { producer, sequence });
            let records = batch.records.len() as u64;
            let proposal = self
                .raft
                .propose(shard.0, key, batch.encode_to_vec())
                .map_err(raft_error)?;
            proposals.push((proposal, records));
        }
        let wait_all = async {
            let (mut duplicate, mut stored) = (false, 0u64);
            for (p, records) in proposals {
                let committed = p
                    .await
                    .map_err(|_| {
                        ApiError::new(
                            ErrorKind::Unavailable,
                            "the node stopped before the batch was committed; retry",
                        )
                    })?
                    .map_err(raft_error)?;
                duplicate |= committed.duplicate;
                if !committed.duplicate {
                    stored += records;
                }
            }
            Ok::<(bool, u64), ApiError>((duplicate, stored))
        };
        let stored;
        (response.duplicate, stored) = match tokio::time::timeout(self.commit_timeout, wait_all).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ApiError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "the batch was not committed within {} ms (storage.commit_timeout_ms); it may still be stored: retry with the same producer_id and sequence to avoid duplicates",
                        self.commit_timeout.as_millis()
                    ),
                ))
            }
        };
        self.metrics.records_accepted.inc_by(stored);
        self.metrics.append_latency.observe(started.elapsed());
        Ok(response)
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
        other => ApiError::new(ErrorKind::Internal, other.to_string()),
    }
}

/// Nanoseconds since the unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
