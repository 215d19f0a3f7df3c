//! Scatter/gather over the shards. Index work runs on the blocking pool: a search never
//! blocks the async runtime.
//!
//! On a cluster every node holds a replica of every shard. A shard is searched here when
//! this replica is live (its indexer runs and it knows the shard's leader, so it is not cut
//! off); otherwise on another node that is up (the shard's leader first), through the peer
//! service. Replicas hold the same log, so the paging cursor (a log position) works on any
//! of them. A shard no node could answer for makes the page partial, naming the shard.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use weir_index::{
    Cursor, HeadEntry, Hit, HitKey, SearchRequest, ShardHits, ShardIndex, ShardTop, Sort,
};
use weir_proto::v1::{
    PeerHit, ShardHitsProto, ShardLabelsRequest, ShardSearchRequest, StoredRecord,
};
use weir_proto::{ApiError, ErrorKind};
use weir_raft::{CommittedLog, RaftNode};

use crate::cluster::PeerLinks;
use crate::head::Heads;

/// One page of merged results.
pub struct Page {
    /// Hits in the requested order.
    pub hits: Vec<Hit>,
    /// Every match in range, over all shards.
    pub total: u64,
    /// Cursor for the next page.
    pub next: Option<Cursor>,
    /// Shards no node could answer for: the page lacks their hits.
    pub missing_shards: Vec<u32>,
    /// Records read from the shards' log heads (committed, not yet indexed) rather than
    /// looked up in the index.
    pub scanned: u64,
}

/// Searches every shard (here or on a peer) and merges.
pub struct Searcher {
    indexes: Vec<Arc<ShardIndex>>,
    cluster: Option<ClusterView>,
    /// The committed entries each index does not hold yet ([`crate::head`]).
    heads: Option<Arc<Heads>>,
    /// Records searches read from the heads.
    scanned: std::sync::atomic::AtomicU64,
}

/// What a shard's reader of a [`Searcher::scan_local`] sends.
#[derive(Debug)]
pub enum ScanMsg {
    /// Matching records, at most the scan's batch size.
    Batch(Vec<StoredRecord>),
    /// The shard's reader read every match.
    Done,
    /// The shard's reader stopped on this error.
    Failed(ApiError),
}

/// The receiving end of a [`Searcher::scan_local`].
#[derive(Debug)]
pub struct ScanQueue {
    /// Batches, then one [`ScanMsg::Done`] or [`ScanMsg::Failed`] per shard.
    pub rx: std::sync::mpsc::Receiver<ScanMsg>,
    /// How many shards' readers send to it.
    pub shards: usize,
}

/// What the searcher needs to know of the cluster.
pub struct ClusterView {
    /// The raft layer (who leads each shard, as this node knows).
    pub raft: Arc<RaftNode>,
    /// The other nodes.
    pub links: Arc<PeerLinks>,
    /// One slot per shard's indexer: set when it stopped.
    pub indexer_failed: Vec<Arc<std::sync::Mutex<Option<String>>>>,
}

/// A search as sent to a peer: the parsed request and the query text it came from.
pub struct RemoteSearch {
    /// The request.
    pub request: SearchRequest,
    /// The query text (`q`), which the peer parses again.
    pub query: String,
}

impl RemoteSearch {
    fn to_proto(&self, cluster_id: String, shards: Vec<u32>) -> ShardSearchRequest {
        let r = &self.request;
        ShardSearchRequest {
            cluster_id,
            shards,
            tenant: r.tenant.clone(),
            query: self.query.clone(),
            start_ns: r.start_ns,
            end_ns: r.end_ns,
            levels: r.levels.iter().map(|l| l.as_str().to_owned()).collect(),
            limit: r.limit as u32,
            sort: r.sort.as_str().to_owned(),
            cursor: r.after.map(|c| c.encode()).unwrap_or_default(),
            prefilter: r.prefilter,
        }
    }

    /// Rebuilds the search a peer sent.
    ///
    /// # Errors
    /// InvalidArgument when a part does not parse (a peer of another version).
    pub fn from_proto(p: ShardSearchRequest) -> Result<RemoteSearch, ApiError> {
        let query = weir_index::parse_query(&p.query)
            .map_err(|e| ApiError::invalid(format!("bad query {:?}: {e}", p.query)))?;
        let levels = p
            .levels
            .iter()
            .map(|l| weir_ingest::parse_level(l).map_err(|e| ApiError::invalid(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let sort: Sort = p
            .sort
            .parse()
            .map_err(|e: weir_index::Error| ApiError::invalid(e.to_string()))?;
        let after = if p.cursor.is_empty() {
            None
        } else {
            Some(
                Cursor::decode(&p.cursor)
                    .map_err(|e| ApiError::invalid(format!("bad cursor: {e}")))?,
            )
        };
        Ok(RemoteSearch {
            request: SearchRequest {
                query,
                tenant: p.tenant,
                start_ns: p.start_ns,
                end_ns: p.end_ns,
                levels,
                limit: p.limit as usize,
                sort,
                after,
                prefilter: p.prefilter,
            },
            query: p.query,
        })
    }
}

/// One shard's hits as the peer service sends them.
pub fn shard_hits_to_proto(shard: u32, h: ShardHits) -> ShardHitsProto {
    ShardHitsProto {
        shard,
        total: h.total,
        scanned: h.scanned,
        hits: h
            .hits
            .into_iter()
            .map(|h| PeerHit {
                timestamp_ns: h.key.timestamp_ns,
                shard: h.key.shard,
                log_index: h.key.log_index,
                offset: h.key.offset,
                score: h.score,
                tenant: h.tenant,
                record: Some(h.record),
            })
            .collect(),
    }
}

fn shard_hits_from_proto(p: ShardHitsProto) -> ShardHits {
    ShardHits {
        total: p.total,
        scanned: p.scanned,
        hits: p
            .hits
            .into_iter()
            .map(|h| Hit {
                key: HitKey {
                    timestamp_ns: h.timestamp_ns,
                    shard: h.shard,
                    log_index: h.log_index,
                    offset: h.offset,
                },
                score: h.score,
                tenant: h.tenant,
                record: h.record.unwrap_or_default(),
            })
            .collect(),
    }
}

/// A fan-out call to a peer that takes longer counts as failed.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(5);

fn index_error(e: weir_index::Error) -> ApiError {
    if e.is_client_error() {
        ApiError::invalid(e.to_string())
    } else {
        ApiError::new(ErrorKind::Internal, format!("search failed: {e}"))
    }
}

fn join_error(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(ErrorKind::Internal, format!("search task failed: {e}"))
}

impl Searcher {
    /// A searcher over `indexes` (one per shard), and the cluster when there is one.
    pub fn new(
        indexes: Vec<Arc<ShardIndex>>,
        cluster: Option<ClusterView>,
        heads: Option<Arc<Heads>>,
    ) -> Self {
        Searcher {
            indexes,
            cluster,
            heads,
            scanned: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Each shard's head (bytes and entries held) and the records searches scanned there,
    /// in the Prometheus text format.
    pub fn render_head_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let Some(heads) = &self.heads else { return };
        let _ = writeln!(out, "# HELP weir_index_head_bytes Committed log bytes the index does not hold yet, which searches scan (bound: index.head_bytes_max).\n# TYPE weir_index_head_bytes gauge");
        for shard in 0..self.indexes.len() as u32 {
            if let Some(h) = heads.shard(shard) {
                let _ = writeln!(
                    out,
                    "weir_index_head_bytes{{shard=\"{shard}\"}} {}",
                    h.bytes()
                );
            }
        }
        let _ = writeln!(out, "# HELP weir_search_head_records_scanned_total Records searches read from the head rather than looked up in the index.\n# TYPE weir_search_head_records_scanned_total counter");
        let _ = writeln!(
            out,
            "weir_search_head_records_scanned_total {}",
            self.scanned.load(std::sync::atomic::Ordering::Relaxed)
        );
    }

    /// The head of `shard` as it is now (empty without heads).
    fn head_of(&self, shard: u32) -> Vec<HeadEntry> {
        self.heads
            .as_ref()
            .and_then(|h| h.shard(shard))
            .map(|h| h.snapshot())
            .unwrap_or_default()
    }

    /// The last log index of `shard` this node has indexed (0 for an unknown shard).
    pub fn checkpoint(&self, shard: u32) -> u64 {
        self.indexes
            .get(shard as usize)
            .map_or(0, |ix| ix.checkpoint())
    }

    /// Whether this node's replica of `shard` can answer: its indexer runs and, on a
    /// cluster, it knows the shard's leader (it is not cut off from the others), is not
    /// rejoining and has applied all but 10,000 entries of what it knows is committed.
    fn live_here(&self, shard: u32) -> bool {
        let Some(c) = &self.cluster else {
            return true;
        };
        let failed = c.indexer_failed[shard as usize]
            .lock()
            .map(|g| g.is_some())
            .unwrap_or(true);
        // A replica rejoining without its data, or far behind, or whose head stopped
        // short of the log (its index lags past twice the head's bound), answers from
        // elsewhere.
        let head_complete = self
            .heads
            .as_ref()
            .and_then(|h| h.shard(shard))
            .is_none_or(|h| h.complete(c.raft.committed_log(shard).watermark()));
        !failed
            && head_complete
            && c.raft.leader_of(shard).is_some()
            && c.raft.is_current(shard, 10_000)
    }

    /// For each shard not live here, the peers to ask, best first: the shard's leader,
    /// then every other node that is up.
    fn plan(&self) -> (Vec<u32>, Vec<(u32, Vec<u64>)>) {
        let mut local = Vec::new();
        let mut remote = Vec::new();
        for shard in 0..self.indexes.len() as u32 {
            if self.live_here(shard) {
                local.push(shard);
                continue;
            }
            let Some(c) = &self.cluster else { continue };
            let leader = c.raft.leader_of(shard).filter(|l| *l != c.links.me());
            let mut peers: Vec<u64> = leader.into_iter().collect();
            peers.extend(
                c.links
                    .all()
                    .filter(|p| p.is_up() && Some(p.id) != leader)
                    .map(|p| p.id),
            );
            remote.push((shard, peers));
        }
        (local, remote)
    }

    /// Runs `search` on every shard (here or on peers) and merges into one page.
    ///
    /// # Errors
    /// InvalidArgument for a bad query or cursor; Internal when an index fails.
    pub async fn search(&self, search: RemoteSearch) -> Result<Page, ApiError> {
        let (local, remote) = self.plan();
        let (sort, limit, after) = (
            search.request.sort,
            search.request.limit,
            search.request.after,
        );
        let search = Arc::new(search);
        let mut results: Vec<ShardHits> = Vec::with_capacity(self.indexes.len());
        let mut missing = Vec::new();
        let remote_task = self.fan_out(search.clone(), remote);
        let local_task = self.top_shards(search.request.clone(), &local);
        let (local_res, (remote_hits, remote_missing)) = tokio::join!(local_task, remote_task);
        // The local shards' records are read after the merge: only the page's.
        let mut tops = local_res?;
        results.extend(tops.iter_mut().map(|(_, t)| t.take_hits()));
        results.extend(remote_hits);
        missing.extend(remote_missing);
        missing.sort_unstable();
        let scanned = results.iter().map(|r| r.scanned).sum();
        self.scanned
            .fetch_add(scanned, std::sync::atomic::Ordering::Relaxed);
        let (mut hits, total, next) = weir_index::merge(results, sort, limit, after.as_ref());
        Self::read_kept(tops, &mut hits).await?;
        Ok(Page {
            hits,
            total,
            next,
            missing_shards: missing,
            scanned,
        })
    }

    /// Asks peers for the shards not live here; returns their hits and the shards nobody
    /// answered for.
    async fn fan_out(
        &self,
        search: Arc<RemoteSearch>,
        mut remote: Vec<(u32, Vec<u64>)>,
    ) -> (Vec<ShardHits>, Vec<u32>) {
        let mut hits = Vec::new();
        let mut missing = Vec::new();
        let Some(c) = &self.cluster else {
            return (hits, missing);
        };
        // Each round sends every unanswered shard to its next candidate, grouped by peer.
        while !remote.is_empty() {
            let mut by_peer: HashMap<u64, Vec<u32>> = HashMap::new();
            let mut next_round = Vec::new();
            for (shard, mut peers) in remote.drain(..) {
                if peers.is_empty() {
                    missing.push(shard);
                    continue;
                }
                let p = peers.remove(0);
                by_peer.entry(p).or_default().push(shard);
                next_round.push((shard, peers));
            }
            let mut calls = tokio::task::JoinSet::new();
            for (peer_id, shards) in by_peer {
                let Some(peer) = c.links.get(peer_id).cloned() else {
                    continue;
                };
                let req = search.to_proto(c.links.cluster_id(), shards.clone());
                calls.spawn(async move {
                    let mut r = tonic::Request::new(req);
                    r.set_timeout(REMOTE_TIMEOUT);
                    let res = peer.client.clone().search_shards(r).await;
                    (peer_id, shards, res)
                });
            }
            let mut answered = Vec::new();
            while let Some(done) = calls.join_next().await {
                let Ok((peer_id, shards, res)) = done else {
                    continue;
                };
                match res {
                    Ok(r) => {
                        hits.extend(r.into_inner().shards.into_iter().map(shard_hits_from_proto));
                        answered.extend(shards);
                    }
                    Err(e) => {
                        tracing::warn!(peer = peer_id, ?shards, error = %e.message(), "fan-out search failed; trying another replica");
                    }
                }
            }
            remote = next_round
                .into_iter()
                .filter(|(s, _)| !answered.contains(s))
                .collect();
        }
        (hits, missing)
    }

    /// Runs `req` on the given shards of this node, on the blocking pool.
    ///
    /// # Errors
    /// InvalidArgument for a bad query or cursor; Internal when an index fails.
    pub async fn search_shards(
        &self,
        req: SearchRequest,
        shards: &[u32],
    ) -> Result<Vec<(u32, ShardHits)>, ApiError> {
        self.on_shards(req, shards, ShardIndex::search_with_head)
            .await
    }

    /// Runs `req` on the given shards of this node, on the blocking pool, leaving the
    /// records found in the index unread ([`ShardIndex::top_with_head`]).
    async fn top_shards(
        &self,
        req: SearchRequest,
        shards: &[u32],
    ) -> Result<Vec<(u32, ShardTop)>, ApiError> {
        self.on_shards(req, shards, ShardIndex::top_with_head).await
    }

    /// Runs `search` over each of `shards` with its head, one task each on the blocking
    /// pool.
    async fn on_shards<T: Send + 'static>(
        &self,
        req: SearchRequest,
        shards: &[u32],
        search: fn(&ShardIndex, &SearchRequest, &[HeadEntry]) -> weir_index::Result<T>,
    ) -> Result<Vec<(u32, T)>, ApiError> {
        let req = Arc::new(req);
        let mut tasks = Vec::with_capacity(shards.len());
        for &shard in shards {
            let ix = self
                .indexes
                .get(shard as usize)
                .ok_or_else(|| ApiError::invalid(format!("no shard {shard}")))?
                .clone();
            let req = req.clone();
            // The head is read before the index (see ShardIndex::search_with_head).
            let head = self.head_of(shard);
            tasks.push((
                shard,
                tokio::task::spawn_blocking(move || search(&ix, &req, &head)),
            ));
        }
        let mut results = Vec::with_capacity(tasks.len());
        for (shard, t) in tasks {
            results.push((shard, t.await.map_err(join_error)?.map_err(index_error)?));
        }
        Ok(results)
    }

    /// Every record matching `req` (its sort, limit and cursor unused), in no particular
    /// order, read by one task per shard on the blocking pool
    /// ([`ShardIndex::scan_with_head`]) and sent in batches of at most `batch` records
    /// through a queue of `queued` messages: a full queue stops the shards' reading until
    /// the receiver takes one, and dropping the receiver stops each reader at its next
    /// batch. Each reader ends with [`ScanMsg::Done`] or [`ScanMsg::Failed`]; a reader
    /// that ends otherwise (a panic) leaves the queue disconnected short of
    /// [`ScanQueue::shards`] of them, which the receiver must take as a failure. `None`
    /// when some shard is not live on this node (a cluster replica cut off or behind):
    /// the caller then pages through [`Searcher::search`], which asks peers.
    pub fn scan_local(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        req: SearchRequest,
        batch: usize,
        queued: usize,
    ) -> Option<ScanQueue> {
        let (local, remote) = self.plan();
        if !remote.is_empty() || local.len() != self.indexes.len() {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(queued.max(1));
        let req = Arc::new(req);
        let shards = local.len();
        for shard in local {
            let ix = self.indexes[shard as usize].clone();
            // The head is read before the index (see ShardIndex::search_with_head).
            let head = self.head_of(shard);
            let (tx, req, me) = (tx.clone(), req.clone(), self.clone());
            rt.spawn_blocking(move || {
                let sent = tx.clone();
                let end = match ix.scan_with_head(&req, &head, batch, &mut |records| {
                    sent.send(ScanMsg::Batch(records)).is_ok()
                }) {
                    Ok(scanned) => {
                        me.scanned
                            .fetch_add(scanned, std::sync::atomic::Ordering::Relaxed);
                        ScanMsg::Done
                    }
                    Err(e) => ScanMsg::Failed(index_error(e)),
                };
                // The receiver may be gone already (the query ended): nothing else to tell.
                let _ = tx.send(end);
            });
        }
        Some(ScanQueue { rx, shards })
    }

    /// Reads, on the blocking pool, the records of the hits of `hits` that a local
    /// shard's answer in `tops` left unread, and puts each in its hit.
    async fn read_kept(tops: Vec<(u32, ShardTop)>, hits: &mut [Hit]) -> Result<(), ApiError> {
        let mut tasks = Vec::new();
        for (shard, top) in tops {
            let keys: Vec<HitKey> = hits
                .iter()
                .filter(|h| h.key.shard == shard && top.is_unread(&h.key))
                .map(|h| h.key)
                .collect();
            if !keys.is_empty() {
                tasks.push(tokio::task::spawn_blocking(move || top.read(&keys)));
            }
        }
        let mut records = HashMap::new();
        for t in tasks {
            records.extend(t.await.map_err(join_error)?.map_err(index_error)?);
        }
        for h in hits {
            if let Some(r) = records.remove(&h.key) {
                h.record = r;
            }
        }
        Ok(())
    }

    /// Counts per group and time bucket over every shard, from this node's indexes
    /// ([`ShardIndex::count`]); `None` when some shard is not live here (a cluster
    /// replica cut off or behind), since counts are not asked of peers: the caller then
    /// reads the records through [`Searcher::search`], which fans out.
    pub async fn count_local(
        &self,
        req: weir_index::CountRequest,
    ) -> Option<Result<Vec<weir_index::GroupCounts>, ApiError>> {
        if self.plan().0.len() != self.indexes.len() {
            return None;
        }
        let req = Arc::new(req);
        let tasks: Vec<_> = self
            .indexes
            .iter()
            .enumerate()
            .map(|(shard, ix)| {
                let (ix, req) = (ix.clone(), req.clone());
                let head = self.head_of(shard as u32);
                tokio::task::spawn_blocking(move || ix.count_with_head(&req, &head))
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            match t.await {
                Ok(Ok((found, _))) => weir_index::merge_counts(&mut out, found),
                Ok(Err(e)) => return Some(Err(index_error(e))),
                Err(e) => return Some(Err(join_error(e))),
            }
        }
        Some(Ok(out))
    }

    /// Label names used by `tenant` in the range, over all shards.
    ///
    /// # Errors
    /// Internal when an index fails.
    pub async fn label_names(
        &self,
        tenant: String,
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, ApiError> {
        self.labels(tenant, String::new(), start, end).await
    }

    /// Label names over the given shards of this node.
    ///
    /// # Errors
    /// Internal when an index fails.
    pub async fn label_names_of(
        &self,
        shards: &[u32],
        tenant: String,
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, ApiError> {
        let heads = self.heads_of(shards);
        let mut names = self
            .union(shards, {
                let tenant = tenant.clone();
                move |ix| ix.label_names(&tenant, start, end)
            })
            .await?;
        // Names of records committed since the index's last commit.
        for head in &heads {
            names.extend(weir_index::head::label_names(head, &tenant, start, end));
        }
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    /// The heads of `shards` as they are now.
    fn heads_of(&self, shards: &[u32]) -> Vec<Vec<HeadEntry>> {
        shards.iter().map(|s| self.head_of(*s)).collect()
    }

    /// Values of label `name` over the given shards of this node.
    ///
    /// # Errors
    /// Internal when an index fails.
    pub async fn label_values_of(
        &self,
        shards: &[u32],
        tenant: String,
        name: String,
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, ApiError> {
        let heads = self.heads_of(shards);
        let mut values = self
            .union(shards, {
                let (tenant, name) = (tenant.clone(), name.clone());
                move |ix| ix.label_values(&tenant, &name, start, end)
            })
            .await?;
        for head in &heads {
            values.extend(weir_index::head::label_values(
                head, &tenant, &name, start, end,
            ));
        }
        values.sort_unstable();
        values.dedup();
        Ok(values)
    }

    /// Label names (`name` empty) or values of `name`, over every shard: here where the
    /// replica is live, on a peer otherwise. Shards nobody answers for are left out.
    async fn labels(
        &self,
        tenant: String,
        name: String,
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, ApiError> {
        let (local, remote) = self.plan();
        let mut all: std::collections::BTreeSet<String> = if name.is_empty() {
            self.label_names_of(&local, tenant.clone(), start, end)
                .await?
        } else {
            self.label_values_of(&local, tenant.clone(), name.clone(), start, end)
                .await?
        }
        .into_iter()
        .collect();
        if let Some(c) = &self.cluster {
            for (shard, peers) in remote {
                for p in peers {
                    let Some(peer) = c.links.get(p) else { continue };
                    let mut r = tonic::Request::new(ShardLabelsRequest {
                        cluster_id: c.links.cluster_id(),
                        shards: vec![shard],
                        tenant: tenant.clone(),
                        name: name.clone(),
                        start_ns: start,
                        end_ns: end,
                    });
                    r.set_timeout(REMOTE_TIMEOUT);
                    if let Ok(r) = peer.client.clone().label_shards(r).await {
                        all.extend(r.into_inner().values);
                        break;
                    }
                }
            }
        }
        Ok(all.into_iter().collect())
    }

    /// Values of label `name` used by `tenant` in the range, over all shards.
    ///
    /// # Errors
    /// Internal when an index fails.
    pub async fn label_values(
        &self,
        tenant: String,
        name: String,
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, ApiError> {
        self.labels(tenant, name, start, end).await
    }

    /// The sorted, deduplicated union of `f` over `shards` of this node, on the blocking
    /// pool.
    async fn union<F>(&self, shards: &[u32], f: F) -> Result<Vec<String>, ApiError>
    where
        F: Fn(&ShardIndex) -> weir_index::Result<Vec<String>> + Send + 'static,
    {
        let indexes: Vec<Arc<ShardIndex>> = shards
            .iter()
            .filter_map(|s| self.indexes.get(*s as usize).cloned())
            .collect();
        tokio::task::spawn_blocking(move || {
            let mut all = std::collections::BTreeSet::new();
            for ix in &indexes {
                all.extend(f(ix)?);
            }
            Ok(all.into_iter().collect())
        })
        .await
        .map_err(join_error)?
        .map_err(index_error)
    }
}
