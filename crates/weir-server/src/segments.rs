//! Segment replication: a shard's index is built once, by the replica that leads the shard,
//! and its followers copy the leader's segments instead of indexing every record again
//! (docs/cluster.md, "Segment replication").
//!
//! - **Leader.** Asked for a shard's segments, it publishes the files of its last index
//!   commit (`ShardIndex::publish`: hard links, the writers and their merges go on) under
//!   `<data_dir>/segments/out/shard-<n>/<checkpoint>-<8 hex>/`, with a manifest of every
//!   file's size and CRC, and serves the files through the snapshot file stream (checksummed
//!   chunks). A publication is reused while the checkpoint stays; older ones go after
//!   60 s.
//! - **Follower.** Every `cluster.segment_sync_interval_ms`, for each shard it does not lead,
//!   it asks the leader for its manifest. When the leader's checkpoint is past its own
//!   index's and not past its own committed log (a replica's index is never ahead of its
//!   log), it assembles the copy in `<data_dir>/segments/in/shard-<n>/`: files its index
//!   already holds (same path and size: tantivy names segment files by a random id and
//!   never changes one) are linked, the rest fetched and checked against the manifest. The
//!   copy replaces the index only while the local indexer is idle
//!   (`ShardIndex::install_if_idle`), and the WAL is then compacted behind it as an
//!   indexer commit would.
//! - **A leader behind.** A leader whose index lags its log asks the other replicas, and
//!   takes the furthest copy that is further than its own index and not past its log
//!   (its indexer paused meanwhile): a replica handed its preferred shard soon after it
//!   came back empty does not index the whole log again, and a new leader takes the
//!   previous leader's last segments from whichever follower copied them.
//! - **Who indexes.** [`SegmentReplication::indexes_locally`] tells each shard's indexer
//!   whether to index itself: on the leader, yes; on a follower, only while the leader does
//!   not keep it up: five intervals (at least 5 s) without a copy installed or an answer
//!   that there is nothing to take. A fetch under way counts; a failed one does not; each
//!   shard has its own sync loop, so one shard's long fetch holds up no other. Not when
//!   its head is full: that happens when the leader's index is behind, and indexing on
//!   the follower too would take the CPU the leader needs (measured:
//!   benches/RESULTS.md). Records a follower has not received as segments yet are
//!   searched in its head meanwhile, so nothing committed is ever unsearchable; a
//!   follower that becomes leader indexes the tail after the last segments it installed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use tonic::transport::Channel;
use tonic::Status;
use weir_index::ShardIndex;
use weir_proto::v1::peer_client::PeerClient;
use weir_proto::v1::{SegmentManifestRequest, SegmentManifestResponse};
use weir_raft::{CommittedLog, RaftNode};

use crate::cluster::PeerLinks;
use crate::snapshot::{
    crc_of, remove_unlisted, safe_relative, walk_files, Fetcher, FileEntry, Manifest,
};

/// The manifest's format name (a snapshot package's is another).
const MANIFEST_FORMAT: &str = "weir-segments";

/// Where a publication holds the index (the manifest's paths begin with it).
const INDEX_PREFIX: &str = "index/";

/// The paths a publication's manifest lists.
type FileSet = Arc<std::collections::HashSet<String>>;

/// Publications of a shard whose file lists are kept in memory for serving.
const SERVED_KEEP: usize = 4;

/// A publication is kept this long (the newest one always).
const PUBLICATION_KEEP: Duration = Duration::from_secs(60);

/// Files of a published index whose content changes under the same name; every other
/// file is a tantivy segment file (named by a random segment id, never rewritten) or the
/// long-word marker (always the same bytes).
const MUTABLE_FILES: [&str; 3] = ["meta.json", ".managed.json", "checkpoint.json"];

/// Whether the file at `path` (in a manifest) is one of [`MUTABLE_FILES`].
fn is_mutable(path: &str) -> bool {
    MUTABLE_FILES
        .iter()
        .any(|n| path.rsplit('/').next() == Some(n))
}

/// A replica that does not lead a shard removes its old publications of it every this
/// many sync rounds.
const SWEEP_ROUNDS: u64 = 30;

/// A shard whose syncs keep failing logs one warning in this many.
const FAILURE_LOG_EVERY: u32 = 60;

/// How long a leader taking a copy waits for its own indexer to stop writing.
const IDLE_WAIT: Duration = Duration::from_secs(3);

/// Replication has stopped keeping up when no sync made progress for this many sync
/// intervals (and at least 5 s): the follower then indexes by itself.
const STALE_INTERVALS: u32 = 5;

/// How long without progress from the leader makes a follower index by itself.
fn stale_after(interval: Duration) -> Duration {
    (interval * STALE_INTERVALS).max(Duration::from_secs(5))
}

/// Counters of segment replication, for `/metrics`.
#[derive(Default)]
pub struct SegmentCounters {
    /// Publications built here (as a leader).
    pub published: AtomicU64,
    /// Copies installed here (as a follower).
    pub installed: AtomicU64,
    /// Syncs that failed (retried at the next interval).
    pub failed: AtomicU64,
    /// Bytes of segment files received.
    pub transfer: Arc<crate::snapshot::SnapshotCounters>,
    /// Bytes of segment files taken from this replica's own index instead of fetched.
    pub bytes_linked: AtomicU64,
}

/// The newest publication of a shard.
struct Published {
    package: String,
    checkpoint: u64,
    manifest: Vec<u8>,
    files: FileSet,
}

struct Inner {
    root: PathBuf,
    node_id: u64,
    enabled: bool,
    interval: Duration,
    started: Instant,
    indexes: Vec<Arc<ShardIndex>>,
    /// By shard.
    shards: Vec<ShardSync>,
    counters: Arc<SegmentCounters>,
}

/// One shard's replication state on this node.
#[derive(Default)]
struct ShardSync {
    /// When (ms after `Inner::started`) a sync last made progress: a copy installed, or
    /// nothing to take. Starts at 0: a replica that just started gives replication
    /// [`stale_after`] to make some.
    contact: AtomicU64,
    /// This replica leads the shard and installs a copy: its indexer waits.
    paused: AtomicBool,
    /// The indexer last saw this replica lead the shard.
    leading: AtomicBool,
    /// Until when (ms after `Inner::started`; 0 = not) a replica that just became leader
    /// waits for one look at the others' copies before indexing by itself.
    check_due: AtomicU64,
    /// Wakes the shard's sync loop early (this replica just became leader).
    wake: tokio::sync::Notify,
    /// A copy is being fetched (the leader answers, chunk by chunk).
    fetching: AtomicBool,
    /// The newest publication (as a leader).
    published: tokio::sync::Mutex<Option<Published>>,
    /// The files of the last few publications, so that serving a file does not read and
    /// parse the manifest again.
    served: Mutex<std::collections::VecDeque<(String, FileSet)>>,
    /// CRC of each segment file published, by its path (segment files never change).
    crcs: Mutex<HashMap<String, (u64, u32)>>,
}

/// This node's half of segment replication; cheap to clone.
#[derive(Clone)]
pub struct SegmentReplication(Arc<Inner>);

impl SegmentReplication {
    /// Replication for a node whose shard indexes are `indexes` (by shard), under
    /// `<data_dir>/segments`. With `enabled` false (a single node, or
    /// `cluster.segment_replication = false`) every replica indexes every shard.
    pub fn new(
        data_dir: &Path,
        node_id: u64,
        enabled: bool,
        interval: Duration,
        indexes: Vec<Arc<ShardIndex>>,
        counters: Arc<SegmentCounters>,
    ) -> SegmentReplication {
        let n = indexes.len();
        SegmentReplication(Arc::new(Inner {
            root: data_dir.join("segments"),
            node_id,
            enabled,
            interval,
            started: Instant::now(),
            indexes,
            shards: (0..n).map(|_| ShardSync::default()).collect(),
            counters,
        }))
    }

    /// Whether the indexer of `shard` indexes by itself now (see the module docs): always
    /// without replication or on the shard's leader; on a follower only while replication
    /// is not keeping up.
    pub fn indexes_locally(&self, shard: u32, log: &weir_raft::ShardLog) -> bool {
        let (inner, s) = (&self.0, shard as usize);
        if !inner.enabled {
            return true;
        }
        if inner.shards[s].paused.load(Ordering::Acquire) {
            return false;
        }
        if log.is_leader() {
            if !inner.shards[s].leading.swap(true, Ordering::AcqRel) {
                // Just became leader: one look at the others' copies first (the sync loop
                // runs at once), for at most as long as replication may be silent.
                let until = self.now_ms() + stale_after(inner.interval).as_millis() as u64;
                inner.shards[s].check_due.store(until, Ordering::Release);
                inner.shards[s].wake.notify_one();
            }
            let due = inner.shards[s].check_due.load(Ordering::Acquire);
            return due == 0 || self.now_ms() >= due;
        }
        inner.shards[s].leading.store(false, Ordering::Release);
        let stale = |at: &AtomicU64| {
            let now = inner.started.elapsed().as_millis() as u64;
            Duration::from_millis(now.saturating_sub(at.load(Ordering::Acquire)))
                > stale_after(inner.interval)
        };
        // Not because the head is full: a follower's head fills when its leader's index
        // falls behind, and indexing here as well would only take the CPU the leader
        // needs to catch up.
        let sync = &inner.shards[s];
        stale(&sync.contact) && !sync.fetching.load(Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        self.0.started.elapsed().as_millis() as u64
    }

    fn touch(&self, shard: u32) {
        self.0.shards[shard as usize]
            .contact
            .store(self.now_ms(), Ordering::Release);
    }

    /// Leader: the manifest of the newest publication of `shard`, published now if the
    /// index committed since the last one. An asker already at this index's checkpoint
    /// gets checkpoint 0 and no publication.
    ///
    /// # Errors
    /// INTERNAL when the index cannot be published (it says why).
    pub async fn manifest(
        &self,
        req: &SegmentManifestRequest,
    ) -> Result<SegmentManifestResponse, Status> {
        let inner = self.0.clone();
        let shard = req.shard;
        let index = inner
            .indexes
            .get(shard as usize)
            .ok_or_else(|| Status::invalid_argument(format!("no shard {shard} here")))?
            .clone();
        if index.checkpoint() <= req.checkpoint {
            return Ok(SegmentManifestResponse::default());
        }
        let mut newest = inner.shards[shard as usize].published.lock().await;
        let out = inner.shard_out(shard);
        if newest
            .as_ref()
            .is_none_or(|p| p.checkpoint < index.checkpoint() || !out.join(&p.package).is_dir())
        {
            let i = inner.clone();
            let keep = newest.as_ref().map(|p| p.package.clone());
            let p = tokio::task::spawn_blocking(move || i.publish(shard, &index, keep.as_deref()))
                .await
                .map_err(|e| Status::internal(format!("publishing shard {shard}: {e}")))?
                .map_err(|e| {
                    Status::internal(format!("cannot publish the index of shard {shard}: {e:#}"))
                })?;
            inner.counters.published.fetch_add(1, Ordering::Relaxed);
            let mut served = inner.shards[shard as usize]
                .served
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            served.push_front((p.package.clone(), p.files.clone()));
            served.truncate(SERVED_KEEP);
            drop(served);
            *newest = Some(p);
        }
        let p = newest.as_ref().expect("published above");
        Ok(SegmentManifestResponse {
            checkpoint: p.checkpoint,
            package: p.package.clone(),
            manifest_crc32: crc32fast::hash(&p.manifest),
            manifest: p.manifest.clone(),
        })
    }

    /// The file `path` of publication `package` of `shard`, for a follower's
    /// `SnapshotFile` call with `segments` set: only the files its manifest lists.
    ///
    /// # Errors
    /// As [`crate::snapshot::SnapshotStore::package_file`].
    pub fn package_file(&self, shard: u32, package: &str, path: &str) -> Result<PathBuf, Status> {
        let inner = &self.0;
        let sync = inner
            .shards
            .get(shard as usize)
            .ok_or_else(|| Status::invalid_argument(format!("no shard {shard} here")))?;
        let listed = sync
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(p, _)| p == package)
            .map(|(_, files)| files.clone());
        match listed {
            Some(files) if files.contains(path) || path == crate::snapshot::MANIFEST => {
                Ok(inner.shard_out(shard).join(package).join(path))
            }
            Some(_) => Err(Status::not_found(format!(
                "segment publication {package} of shard {shard} has no file {path:?}"
            ))),
            // Older than the last few: its manifest on disk says (if it is still there).
            None => crate::snapshot::package_file(&inner.root, shard, package, path),
        }
    }

    /// Follower: every interval until `stop`, copies the segments of each shard this node
    /// does not lead from its leader.
    pub fn spawn_follower(
        &self,
        raft: Arc<RaftNode>,
        links: Arc<PeerLinks>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if !self.0.enabled {
            return None;
        }
        // One loop per shard: a long fetch of one shard's merged segments does not keep
        // the others waiting.
        let mut loops = tokio::task::JoinSet::new();
        for shard in 0..self.0.indexes.len() as u32 {
            let (this, raft, links, mut stop) =
                (self.clone(), raft.clone(), links.clone(), stop.clone());
            loops.spawn(async move {
                let mut tick = tokio::time::interval(this.0.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut failing = 0u32;
                let mut rounds = 0u64;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = this.0.shards[shard as usize].wake.notified() => {}
                        _ = stop.changed() => return,
                    }
                    if *stop.borrow() {
                        return;
                    }
                    rounds += 1;
                    if rounds.is_multiple_of(SWEEP_ROUNDS) && raft.leader_of(shard) != Some(this.0.node_id) {
                        // Publications made while this node led the shard, or for a new
                        // leader's look, are not superseded by any later one here.
                        let out = this.0.shard_out(shard);
                        let _ = tokio::task::spawn_blocking(move || remove_superseded(&out, None)).await;
                    }
                    match this.sync(shard, &raft, &links).await {
                        Ok(_) => failing = 0,
                        Err(e) => {
                            this.0.counters.failed.fetch_add(1, Ordering::Relaxed);
                            // Every interval while a leader is away (or runs a version
                            // without segment replication): said once a minute or so.
                            if failing.is_multiple_of(FAILURE_LOG_EVERY) {
                                tracing::warn!(shard, failed_in_a_row = failing + 1, error = %format!("{e:#}"), "segment sync failed; retried at the next interval, and this shard indexes by itself while its leader does not answer");
                            }
                            failing = failing.saturating_add(1);
                        }
                    }
                }
            });
        }
        Some(tokio::spawn(async move {
            while loops.join_next().await.is_some() {}
        }))
    }

    /// One sync of `shard` from its leader.
    async fn sync(
        &self,
        shard: u32,
        raft: &Arc<RaftNode>,
        links: &Arc<PeerLinks>,
    ) -> anyhow::Result<Synced> {
        let inner = &self.0;
        let Some(leader) = raft.leader_of(shard) else {
            return Ok(Synced::NoLeader);
        };
        if leader == inner.node_id {
            let caught_up = self.catch_up_as_leader(shard, raft, links).await;
            inner.shards[shard as usize]
                .check_due
                .store(0, Ordering::Release);
            return caught_up;
        }
        let index = &inner.indexes[shard as usize];
        if raft.committed_log(shard).watermark() <= index.checkpoint() {
            // Nothing committed here that the index lacks: replication keeps up.
            self.touch(shard);
            return Ok(Synced::Current);
        }
        let (client, resp) = self.ask(links, leader, shard).await?;
        if resp.checkpoint > raft.committed_log(shard).watermark() {
            // The leader's index is past this replica's log (a replica catching up): give
            // the log one interval to get there.
            let (log, wanted, wait) = (raft.committed_log(shard), resp.checkpoint, inner.interval);
            tokio::task::spawn_blocking(move || log.wait_for(wanted - 1, wait)).await?;
        }
        self.take(shard, raft, links, leader, client, resp, false)
            .await
    }

    /// A leader whose index is behind another replica's (a replica handed the shard soon
    /// after it came back empty, or a new leader whose follower copied more of the old
    /// leader's index) takes the furthest copy instead of indexing it all again; its own
    /// indexer pauses only while the copy is installed.
    async fn catch_up_as_leader(
        &self,
        shard: u32,
        raft: &Arc<RaftNode>,
        links: &Arc<PeerLinks>,
    ) -> anyhow::Result<Synced> {
        let inner = &self.0;
        let have = inner.indexes[shard as usize].checkpoint();
        let committed = raft.committed_log(shard).watermark();
        if committed <= have {
            return Ok(Synced::Leading);
        }
        // A replica answers with nothing unless its index is further than this one's
        // (as a follower's copy of the previous leader's can be).
        let mut best = None;
        let mut best_node = None;
        for peer in links.all() {
            match self.ask(links, peer.id, shard).await {
                Ok((client, resp)) if resp.checkpoint > have && resp.checkpoint <= committed => {
                    if best
                        .as_ref()
                        .is_none_or(|(_, b): &(_, SegmentManifestResponse)| {
                            b.checkpoint < resp.checkpoint
                        })
                    {
                        best = Some((client, resp));
                        best_node = Some(peer.id);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(shard, peer = peer.id, error = %format!("{e:#}"), "no segments from this replica")
                }
            }
        }
        let Some((client, resp)) = best else {
            return Ok(Synced::Leading);
        };
        tracing::info!(
            shard,
            index = have,
            copy = resp.checkpoint,
            "this leader's index is behind a replica's: taking that copy"
        );
        let from = best_node.expect("set with best");
        self.take(shard, raft, links, from, client, resp, true)
            .await
    }

    /// Asks `node` for the manifest of its newest publication of `shard`.
    async fn ask(
        &self,
        links: &Arc<PeerLinks>,
        node: u64,
        shard: u32,
    ) -> anyhow::Result<(PeerClient<Channel>, SegmentManifestResponse)> {
        let inner = &self.0;
        let peer = links
            .get(node)
            .with_context(|| format!("node {node}, asked for shard {shard}, is not a member"))?;
        let mut client = peer.client.clone();
        let resp = client
            .segment_manifest(SegmentManifestRequest {
                cluster_id: links.cluster_id(),
                shard,
                from: inner.node_id,
                checkpoint: inner.indexes[shard as usize].checkpoint(),
            })
            .await
            .with_context(|| format!("asking node {node} for the segments of shard {shard}"))?
            .into_inner();
        Ok((client, resp))
    }

    /// Fetches the publication `resp` describes (from `client`) and installs it, when it
    /// is past this replica's index and not past its committed log. With `wait_idle`, the
    /// install waits up to [`IDLE_WAIT`] for the local indexer to stop writing.
    #[allow(clippy::too_many_arguments)]
    async fn take(
        &self,
        shard: u32,
        raft: &Arc<RaftNode>,
        links: &Arc<PeerLinks>,
        from: u64,
        client: PeerClient<Channel>,
        resp: SegmentManifestResponse,
        wait_idle: bool,
    ) -> anyhow::Result<Synced> {
        let inner = &self.0;
        let package = resp.package.clone();
        inner.shards[shard as usize]
            .fetching
            .store(true, Ordering::Release);
        let taken = self
            .fetch_and_install(shard, raft, links, client, resp, wait_idle)
            .await
            .with_context(|| format!("publication {package} of shard {shard} from node {from}"));
        inner.shards[shard as usize]
            .fetching
            .store(false, Ordering::Release);
        // Only progress, or nothing left to take, is the leader keeping this replica up:
        // a copy that fails, or one this replica's log never reaches, is not.
        if matches!(
            taken,
            Ok(Synced::Current | Synced::Installed(_) | Synced::Busy)
        ) {
            self.touch(shard);
        }
        taken
    }

    async fn fetch_and_install(
        &self,
        shard: u32,
        raft: &Arc<RaftNode>,
        links: &Arc<PeerLinks>,
        client: PeerClient<Channel>,
        resp: SegmentManifestResponse,
        wait_idle: bool,
    ) -> anyhow::Result<Synced> {
        let inner = &self.0;
        let index = inner.indexes[shard as usize].clone();
        if resp.checkpoint <= index.checkpoint() {
            return Ok(Synced::Current);
        }
        if resp.checkpoint > raft.committed_log(shard).watermark() {
            // That index is past this replica's log: wait for the log.
            return Ok(Synced::LogBehind);
        }
        ensure!(
            crc32fast::hash(&resp.manifest) == resp.manifest_crc32,
            "the manifest of publication {} of shard {shard} fails its CRC",
            resp.package
        );
        let m: Manifest =
            serde_json::from_slice(&resp.manifest).context("the segment manifest is not JSON")?;
        ensure!(
            m.format == MANIFEST_FORMAT && m.version == 1 && m.shard == shard,
            "publication {} is no segment manifest of shard {shard} ({} version {}, shard {})",
            resp.package,
            m.format,
            m.version,
            m.shard
        );
        ensure!(
            m.checkpoint == resp.checkpoint,
            "publication {} says checkpoint {} and its manifest {}",
            resp.package,
            resp.checkpoint,
            m.checkpoint
        );
        let staging = inner.root.join("in").join(format!("shard-{shard}"));
        let copy = staging.join(INDEX_PREFIX.trim_end_matches('/'));
        let fetcher = Fetcher {
            client,
            cluster_id: links.cluster_id(),
            shard,
            package: resp.package.clone(),
            segments: true,
            counters: inner.counters.transfer.clone(),
        };
        let mut wanted = std::collections::HashSet::new();
        for f in &m.files {
            ensure!(
                safe_relative(&f.path) && f.path.starts_with(INDEX_PREFIX),
                "unsafe path {:?} in the manifest",
                f.path
            );
            wanted.insert(staging.join(&f.path));
        }
        {
            let staging = staging.clone();
            tokio::task::spawn_blocking(move || remove_unlisted(&staging, &wanted)).await??;
        }
        let own = index.dir().to_path_buf();
        for f in &m.files {
            let dest = staging.join(&f.path);
            let mutable = is_mutable(&f.path);
            let own_file = own.join(&f.path[INDEX_PREFIX.len()..]);
            if !mutable && link_own(&own_file, &dest, f.bytes).await? {
                inner
                    .counters
                    .bytes_linked
                    .fetch_add(f.bytes, Ordering::Relaxed);
                continue;
            }
            // A segment file's name says what it holds: a partial one is resumed even
            // from another publication.
            fetcher.file(f, &dest, !mutable).await?;
        }
        // Partitions may hold records of entries after the copy's checkpoint (a writer
        // evicted mid-way commits what it has): none may be past this replica's log.
        let furthest = {
            let copy = copy.clone();
            tokio::task::spawn_blocking(move || ShardIndex::furthest_entry_of_copy(&copy))
                .await?
                .context("reading the copy's partitions")?
        };
        if furthest > raft.committed_log(shard).watermark() {
            return Ok(Synced::LogBehind);
        }
        let deadline = Instant::now() + if wait_idle { IDLE_WAIT } else { Duration::ZERO };
        if wait_idle {
            // A leader's indexer stops (and commits what it added) while the copy goes in.
            inner.shards[shard as usize]
                .paused
                .store(true, Ordering::Release);
        }
        let installed: anyhow::Result<Option<u64>> = async {
            loop {
                let (index, copy) = (index.clone(), copy.clone());
                let installed = tokio::task::spawn_blocking(move || index.install_if_idle(&copy))
                    .await?
                    .context("cannot install it")?;
                if installed.is_some() || Instant::now() >= deadline {
                    return Ok(installed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        .await;
        inner.shards[shard as usize]
            .paused
            .store(false, Ordering::Release);
        let installed = installed?;
        match installed {
            Some(checkpoint) => {
                inner.counters.installed.fetch_add(1, Ordering::Relaxed);
                // As an indexer commit would: the WAL behind the index may go.
                raft.compact(shard, checkpoint + 1);
                tracing::debug!(shard, checkpoint, "segments installed");
                // As after an indexer commit: the new segments' body words are copied for
                // infix lookups now, not by the first `*fragment*` search that needs them.
                let index = index.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = index.warm_infix() {
                        tracing::warn!(shard, error = %e, "copying body words for infix lookups failed");
                    }
                });
                Ok(Synced::Installed(checkpoint))
            }
            None => Ok(Synced::Busy),
        }
    }
}

/// What one sync of a shard did.
#[derive(Debug, PartialEq, Eq)]
enum Synced {
    NoLeader,
    Leading,
    /// The index holds everything the leader's does, or everything committed here.
    Current,
    /// The leader's index is past this replica's committed log.
    LogBehind,
    /// The local indexer was writing; the copy waits for the next sync.
    Busy,
    Installed(u64),
}

/// Makes `dest` a hard link to `own` (this replica's copy of the same segment file) when
/// it exists with `bytes` bytes; says whether it did.
async fn link_own(own: &Path, dest: &Path, bytes: u64) -> anyhow::Result<bool> {
    if tokio::fs::metadata(own).await.ok().map(|m| m.len()) != Some(bytes) {
        return Ok(false);
    }
    if tokio::fs::metadata(dest).await.ok().map(|m| m.len()) == Some(bytes) {
        return Ok(true);
    }
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let _ = tokio::fs::remove_file(dest).await;
    Ok(tokio::fs::hard_link(own, dest).await.is_ok())
}

impl Inner {
    /// Publishes the last commit of `shard`'s index (blocking) and removes publications
    /// superseded more than [`PUBLICATION_KEEP`] ago.
    fn publish(
        &self,
        shard: u32,
        index: &ShardIndex,
        keep: Option<&str>,
    ) -> anyhow::Result<Published> {
        let shard_dir = self.shard_out(shard);
        std::fs::create_dir_all(&shard_dir)
            .with_context(|| format!("cannot create {}", shard_dir.display()))?;
        remove_superseded(&shard_dir, keep);
        let tmp = shard_dir.join(format!("{:08x}.tmp", rand::random::<u32>()));
        std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let published = self.publish_into(shard, index, &tmp, &shard_dir);
        if published.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        published
    }

    /// Where the publications of `shard` live.
    fn shard_out(&self, shard: u32) -> PathBuf {
        self.root.join("out").join(format!("shard-{shard}"))
    }

    fn publish_into(
        &self,
        shard: u32,
        index: &ShardIndex,
        tmp: &Path,
        shard_dir: &Path,
    ) -> anyhow::Result<Published> {
        let checkpoint = index
            .publish(&tmp.join(INDEX_PREFIX.trim_end_matches('/')))
            .context("linking the files of its last commit")?;
        let package = format!("{checkpoint}-{:08x}", rand::random::<u32>());
        let mut found = Vec::new();
        walk_files(tmp, tmp, &mut found)?;
        let mut files: Vec<FileEntry> = found
            .into_iter()
            .map(|(path, _, bytes)| FileEntry {
                path,
                bytes,
                crc32: 0,
            })
            .collect();
        {
            let mut crcs = self.shards[shard as usize]
                .crcs
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for f in &mut files {
                let mutable = is_mutable(&f.path);
                let known = crcs.get(&f.path).filter(|(b, _)| *b == f.bytes).copied();
                f.crc32 = match known {
                    Some((_, crc)) if !mutable => crc,
                    _ => {
                        let (bytes, crc) = crc_of(&tmp.join(&f.path))
                            .with_context(|| format!("reading {}", f.path))?;
                        ensure!(bytes == f.bytes, "{} changed while published", f.path);
                        if !mutable {
                            crcs.insert(f.path.clone(), (bytes, crc));
                        }
                        crc
                    }
                };
            }
            // Only what the newest publication holds stays cached.
            let listed: std::collections::HashSet<&str> =
                files.iter().map(|f| f.path.as_str()).collect();
            crcs.retain(|p, _| listed.contains(p.as_str()));
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let paths = Arc::new(files.iter().map(|f| f.path.clone()).collect());
        let manifest = serde_json::to_vec(&Manifest {
            format: MANIFEST_FORMAT.into(),
            version: 1,
            shard,
            index: checkpoint,
            term: 0,
            checkpoint,
            files,
        })?;
        // Not made durable: a publication is rebuilt after a crash, and followers check
        // every file against the manifest they were sent.
        let manifest_path = tmp.join(crate::snapshot::MANIFEST);
        std::fs::write(&manifest_path, &manifest)
            .with_context(|| format!("cannot write {}", manifest_path.display()))?;
        std::fs::rename(tmp, shard_dir.join(&package))
            .with_context(|| format!("cannot rename {}", tmp.display()))?;
        Ok(Published {
            package,
            checkpoint,
            manifest,
            files: paths,
        })
    }
}

/// Removes publications (and half-built ones) of one shard made more than
/// [`PUBLICATION_KEEP`] ago, but `keep` (the one this node answers with): a follower
/// fetching one that goes resumes its segment files from the next.
fn remove_superseded(shard_dir: &Path, keep: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(shard_dir) else {
        return;
    };
    for e in entries.flatten() {
        if keep.is_some_and(|k| e.file_name().to_str() == Some(k)) {
            continue;
        }
        let (path, modified) = (e.path(), e.metadata().and_then(|m| m.modified()));
        if modified.is_ok_and(|m| m.elapsed().is_ok_and(|age| age > PUBLICATION_KEEP)) {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a superseded segment publication");
            }
        }
    }
}
