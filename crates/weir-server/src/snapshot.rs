//! Snapshots of a shard, for a replica behind every other replica's compacted log (a node
//! whose data directory was wiped, or one down long enough): the leader packages its
//! index and the raft layer's state, and the follower fetches the package over the peer
//! port in checksummed chunks, resuming where it stopped, then installs it. The raft side
//! is `weir_raft::snapshot`; the whole protocol is in docs/cluster.md ("Snapshots").
//!
//! On disk, under `<data_dir>/snapshots/`:
//!
//! ```text
//! out/shard-<n>/<package>/      a package this node built (only the newest is kept):
//!     manifest.json             {shard, index, term, checkpoint, files: [{path, bytes, crc32}]}
//!     state.bin                 the raft layer's applied state (cursors, idempotency table)
//!     index/...                 hard links to the index files at its checkpoint
//! in/shard-<n>/                 the package being fetched (kept across restarts: resumable)
//!     PACKAGE                   its id
//!     manifest.json, files/...  as they arrive, each checked against the manifest
//! ```
//!
//! A package id is `<index>-<term>-<8 hex digits>`; the leader's snapshot message carries
//! it with the manifest's size and CRC, so every byte the follower installs is checked:
//! each chunk by its own CRC, each file by the manifest's, the manifest by the message's.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tonic::Status;
use weir_index::ShardIndex;
use weir_proto::v1::{SnapshotChunk, SnapshotFileRequest};
use weir_raft::{RaftNode, SnapshotOffer, SnapshotRequest, Snapshots};

use crate::cluster::PeerLinks;

/// Bytes of file per chunk.
const CHUNK_BYTES: usize = 1 << 20;

/// A chunk that takes longer to arrive fails the fetch (the leader offers again).
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// A package older than this is removed (its hard links keep index files on disk that the
/// index itself may have merged away); raft builds a new one if a follower still needs it.
const PACKAGE_MAX_AGE: Duration = Duration::from_secs(15 * 60);

pub(crate) const MANIFEST: &str = "manifest.json";
const MANIFEST_FORMAT: &str = "weir-snapshot";
const STATE_FILE: &str = "state.bin";
const INDEX_DIR: &str = "index";

/// What the leader's raft message says of a package.
#[derive(Serialize, Deserialize)]
struct Descriptor {
    package: String,
    node: u64,
    manifest_bytes: u64,
    manifest_crc32: u32,
}

/// What a package holds; a segment publication (`crate::segments`) has one too.
#[derive(Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) format: String,
    pub(crate) version: u32,
    pub(crate) shard: u32,
    pub(crate) index: u64,
    pub(crate) term: u64,
    /// The index checkpoint of the package (at or above `index`).
    pub(crate) checkpoint: u64,
    pub(crate) files: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct FileEntry {
    pub(crate) path: String,
    pub(crate) bytes: u64,
    pub(crate) crc32: u32,
}

/// Counters of snapshot traffic, for `/metrics`.
#[derive(Default)]
pub struct SnapshotCounters {
    /// Packages built here (as a leader).
    pub built: AtomicU64,
    /// Packages installed here (as a follower).
    pub installed: AtomicU64,
    /// Fetches that failed (each is retried when the leader offers again).
    pub fetch_failed: AtomicU64,
    /// Bytes received in chunks.
    pub bytes_fetched: AtomicU64,
}

struct Inner {
    root: PathBuf,
    node_id: u64,
    /// Weak: the raft node holds this store (its snapshot hook), and a strong reference
    /// back would keep both, and the shard indexes, alive after the node stopped.
    raft: Weak<RaftNode>,
    indexes: Vec<Arc<ShardIndex>>,
    links: Arc<PeerLinks>,
    rt: tokio::runtime::Handle,
    building: Mutex<HashSet<u32>>,
    fetching: Mutex<HashSet<u32>>,
    counters: Arc<SnapshotCounters>,
}

/// This node's half of raft snapshots: builds packages as a leader, serves their files to
/// followers, fetches and installs them as a follower.
#[derive(Clone)]
pub struct SnapshotStore(Arc<Inner>);

impl SnapshotStore {
    /// The store under `<data_dir>/snapshots`. Packages a previous process built are
    /// removed (raft asks again for what it needs); a fetch in progress is kept, to be
    /// resumed. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// The directory cannot be created or cleaned.
    pub fn open(
        data_dir: &Path,
        raft: Arc<RaftNode>,
        indexes: Vec<Arc<ShardIndex>>,
        links: Arc<PeerLinks>,
        counters: Arc<SnapshotCounters>,
    ) -> anyhow::Result<SnapshotStore> {
        let root = data_dir.join("snapshots");
        let out = root.join("out");
        if out.exists() {
            std::fs::remove_dir_all(&out)
                .with_context(|| format!("cannot remove old packages in {}", out.display()))?;
        }
        std::fs::create_dir_all(root.join("in"))
            .with_context(|| format!("cannot create {}", root.display()))?;
        let gc_root = out.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let root = gc_root.clone();
                let _ = tokio::task::spawn_blocking(move || remove_old_packages(&root)).await;
            }
        });
        Ok(SnapshotStore(Arc::new(Inner {
            root,
            node_id: links.me(),
            raft: Arc::downgrade(&raft),
            indexes,
            links,
            rt: tokio::runtime::Handle::current(),
            building: Mutex::default(),
            fetching: Mutex::default(),
            counters,
        })))
    }

    /// The file `path` of package `package` of `shard`, for a follower's `SnapshotFile`
    /// call: only the manifest and the files it lists are served.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown package or path (the package was superseded: the follower
    /// waits for the next offer), INVALID_ARGUMENT for a malformed one.
    pub fn package_file(&self, shard: u32, package: &str, path: &str) -> Result<PathBuf, Status> {
        package_file(&self.0.root, shard, package, path)
    }

    /// Streams `file` from `offset` in checksummed chunks.
    pub fn stream_file(
        file: PathBuf,
        offset: u64,
    ) -> Pin<Box<dyn tokio_stream::Stream<Item = Result<SnapshotChunk, Status>> + Send>> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let result = async {
                let mut f = tokio::fs::File::open(&file).await?;
                f.seek(std::io::SeekFrom::Start(offset)).await?;
                let mut offset = offset;
                loop {
                    let mut data = vec![0u8; CHUNK_BYTES];
                    let mut n = 0;
                    while n < data.len() {
                        let got = f.read(&mut data[n..]).await?;
                        if got == 0 {
                            break;
                        }
                        n += got;
                    }
                    if n == 0 {
                        return Ok::<(), std::io::Error>(());
                    }
                    data.truncate(n);
                    let chunk = SnapshotChunk {
                        offset,
                        crc32: crc32fast::hash(&data),
                        data,
                    };
                    offset += n as u64;
                    if tx.send(Ok(chunk)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            .await;
            if let Err(e) = result {
                let _ = tx
                    .send(Err(Status::internal(format!(
                        "cannot read {}: {e}",
                        file.display()
                    ))))
                    .await;
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

impl Snapshots for SnapshotStore {
    fn build(&self, shard: u32, request: SnapshotRequest) {
        if !lock(&self.0.building).insert(shard) {
            return;
        }
        let inner = self.0.clone();
        self.0.rt.spawn_blocking(move || {
            let index = request.index;
            match inner.build(shard, request) {
                Ok(package) => {
                    inner.counters.built.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(shard, index, package, "snapshot package built");
                }
                Err(e) => {
                    tracing::warn!(shard, index, error = %format!("{e:#}"), "cannot build a snapshot package; raft asks again")
                }
            }
            lock(&inner.building).remove(&shard);
        });
    }

    fn fetch(&self, shard: u32, offer: SnapshotOffer) {
        if !lock(&self.0.fetching).insert(shard) {
            return;
        }
        let inner = self.0.clone();
        self.0.rt.spawn(async move {
            let (from, index) = (offer.from, offer.index);
            match inner.fetch(shard, offer).await {
                Ok(true) => {
                    inner.counters.installed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(shard, index, from, "snapshot installed");
                }
                Ok(false) => tracing::info!(
                    shard,
                    index,
                    "snapshot fetched, but raft no longer needed it (this replica caught up another way)"
                ),
                Err(e) => {
                    inner.counters.fetch_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(shard, index, from, error = %format!("{e:#}"), "snapshot fetch failed; it resumes when the leader offers again");
                }
            }
            lock(&inner.fetching).remove(&shard);
        });
    }
}

impl Inner {
    /// Builds a package of `shard` for `request` (blocking); returns its id.
    fn build(&self, shard: u32, request: SnapshotRequest) -> anyhow::Result<String> {
        let index = self
            .indexes
            .get(shard as usize)
            .with_context(|| format!("no shard {shard}"))?;
        let shard_dir = self.root.join("out").join(format!("shard-{shard}"));
        if shard_dir.exists() {
            // A newer package supersedes every older one.
            std::fs::remove_dir_all(&shard_dir)
                .with_context(|| format!("cannot remove {}", shard_dir.display()))?;
        }
        std::fs::create_dir_all(&shard_dir)
            .with_context(|| format!("cannot create {}", shard_dir.display()))?;
        let package = format!(
            "{}-{}-{:08x}",
            request.index,
            request.term,
            rand::random::<u32>()
        );
        let tmp = shard_dir.join(format!("{package}.tmp"));
        std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let checkpoint = index
            .export(&tmp.join(INDEX_DIR))
            .with_context(|| format!("cannot export the index of shard {shard}"))?;
        // The log after `request.index` is all the follower gets besides the package.
        ensure!(
            checkpoint >= request.index,
            "the index of shard {shard} is at {checkpoint}, below the snapshot's index {}",
            request.index
        );
        weir_wal::durable::atomic_write(&tmp.join(STATE_FILE), &request.state)
            .context("cannot write the raft state")?;
        let mut files = Vec::new();
        list_files(&tmp, &tmp, &mut files)?;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let manifest = serde_json::to_vec_pretty(&Manifest {
            format: MANIFEST_FORMAT.into(),
            version: 1,
            shard,
            index: request.index,
            term: request.term,
            checkpoint,
            files,
        })?;
        weir_wal::durable::atomic_write(&tmp.join(MANIFEST), &manifest)
            .context("cannot write the manifest")?;
        let dir = shard_dir.join(&package);
        std::fs::rename(&tmp, &dir).with_context(|| format!("cannot rename {}", tmp.display()))?;
        weir_wal::durable::fsync_dir(&shard_dir)?;
        let descriptor = serde_json::to_vec(&Descriptor {
            package: package.clone(),
            node: self.node_id,
            manifest_bytes: manifest.len() as u64,
            manifest_crc32: crc32fast::hash(&manifest),
        })?;
        self.raft()?
            .snapshot_ready(shard, request.index, request.term, descriptor);
        Ok(package)
    }

    /// The raft node, while it runs.
    fn raft(&self) -> anyhow::Result<Arc<RaftNode>> {
        self.raft.upgrade().context("the raft layer stopped")
    }

    /// Fetches the package `offer` describes into `in/shard-<n>/`, installs the index
    /// and hands the raft state to raft; returns whether raft took it.
    async fn fetch(&self, shard: u32, offer: SnapshotOffer) -> anyhow::Result<bool> {
        let raft = self.raft()?;
        if raft.commit_index(shard) >= offer.index {
            // A repeated offer, or caught up another way: installing would move the index
            // backwards.
            return Ok(false);
        }
        let d: Descriptor = serde_json::from_slice(&offer.data)
            .context("the snapshot's description is not JSON")?;
        ensure!(
            valid_package_id(&d.package),
            "{:?} is not a snapshot package id",
            d.package
        );
        let index = self
            .indexes
            .get(shard as usize)
            .with_context(|| format!("no shard {shard}"))?
            .clone();
        let peer = self
            .links
            .get(d.node)
            .with_context(|| format!("the snapshot is on node {}, not a member", d.node))?
            .clone();
        let staging = self.root.join("in").join(format!("shard-{shard}"));
        let same_package = stage(&staging, &d.package).await?;
        tracing::info!(
            shard,
            package = d.package,
            from = d.node,
            resume = same_package,
            "fetching a snapshot"
        );
        let fetcher = Fetcher {
            client: peer.client.clone(),
            cluster_id: self.links.cluster_id(),
            shard,
            package: d.package.clone(),
            segments: false,
            counters: self.counters.clone(),
        };
        let manifest_path = staging.join(MANIFEST);
        fetcher
            .file(
                &FileEntry {
                    path: MANIFEST.into(),
                    bytes: d.manifest_bytes,
                    crc32: d.manifest_crc32,
                },
                &manifest_path,
                same_package,
            )
            .await?;
        let m = read_manifest(&manifest_path, shard, &offer).await?;
        let files_dir = staging.join("files");
        fetch_files(&fetcher, &m, &files_dir, same_package).await?;
        let state = tokio::fs::read(files_dir.join(STATE_FILE))
            .await
            .context("the package has no raft state")?;
        let src = files_dir.join(INDEX_DIR);
        let checkpoint = if index.checkpoint() < m.checkpoint {
            tokio::task::spawn_blocking(move || index.install(&src))
                .await?
                .context("cannot install the index")?
        } else {
            // Already as far (a crash after the index was installed): an index ahead of
            // the log is harmless, the indexer skips what it holds.
            index.checkpoint()
        };
        let taken = raft
            .install_snapshot(shard, offer, state)
            .await
            .map_err(|_| anyhow::anyhow!("the raft layer stopped"))??;
        tokio::fs::remove_dir_all(&staging).await?;
        tracing::info!(
            shard,
            package = d.package,
            index_checkpoint = checkpoint,
            taken,
            "snapshot package installed"
        );
        Ok(taken)
    }
}

/// Prepares `staging` for `package`: true when a fetch of the same package was under way
/// there (its files are resumed); otherwise the marker names the new package and only
/// files the new manifest lists with the same size and CRC are kept (tantivy segment
/// files never change).
async fn stage(staging: &Path, package: &str) -> anyhow::Result<bool> {
    let marker = staging.join("PACKAGE");
    let same_package = tokio::fs::read_to_string(&marker).await.ok().as_deref() == Some(package);
    if !same_package {
        tokio::fs::create_dir_all(staging).await?;
        let _ = tokio::fs::remove_file(staging.join(MANIFEST)).await;
        weir_wal::durable::atomic_write(&marker, package.as_bytes())?;
    }
    Ok(same_package)
}

/// Reads a fetched manifest and checks it is of this format and of the snapshot offered.
async fn read_manifest(path: &Path, shard: u32, offer: &SnapshotOffer) -> anyhow::Result<Manifest> {
    let m: Manifest = serde_json::from_slice(&tokio::fs::read(path).await?)
        .context("the manifest is not JSON")?;
    ensure!(
        m.format == MANIFEST_FORMAT && m.version == 1,
        "unknown manifest format {} version {}",
        m.format,
        m.version
    );
    ensure!(
        m.shard == shard && m.index == offer.index && m.term == offer.term,
        "the manifest is of shard {} at {} (term {}), the offer of shard {shard} at {} (term {})",
        m.shard,
        m.index,
        m.term,
        offer.index,
        offer.term
    );
    Ok(m)
}

/// Fetches every file the manifest lists into `files_dir` (paths checked to stay inside
/// it), after removing what it does not list.
async fn fetch_files(
    fetcher: &Fetcher,
    m: &Manifest,
    files_dir: &Path,
    resume: bool,
) -> anyhow::Result<()> {
    let mut wanted = HashSet::new();
    for f in &m.files {
        ensure!(
            safe_relative(&f.path),
            "unsafe path {:?} in the manifest",
            f.path
        );
        wanted.insert(files_dir.join(&f.path));
    }
    remove_unlisted(files_dir, &wanted)?;
    for f in &m.files {
        fetcher.file(f, &files_dir.join(&f.path), resume).await?;
    }
    Ok(())
}

/// Fetches the files of one package from one peer.
pub(crate) struct Fetcher {
    pub(crate) client: weir_proto::v1::peer_client::PeerClient<tonic::transport::Channel>,
    pub(crate) cluster_id: String,
    pub(crate) shard: u32,
    pub(crate) package: String,
    /// The package is a segment publication.
    pub(crate) segments: bool,
    pub(crate) counters: Arc<SnapshotCounters>,
}

impl Fetcher {
    /// Makes `dest` the file `f`: kept when it already is (size and CRC), resumed from
    /// its length when `resume` (a partial file of the same package), else fetched anew.
    pub(crate) async fn file(
        &self,
        f: &FileEntry,
        dest: &Path,
        resume: bool,
    ) -> anyhow::Result<()> {
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let existing = tokio::fs::metadata(dest).await.ok().map(|m| m.len());
        // An empty file in the manifest is kept only if it exists (a missing file also has
        // no bytes, but its CRC cannot be read).
        if existing == Some(f.bytes) && file_crc(dest).await? == f.crc32 {
            return Ok(());
        }
        let have = existing.unwrap_or(0);
        let mut offset = if resume && have < f.bytes { have } else { 0 };
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(dest)
            .await
            .with_context(|| format!("cannot open {}", dest.display()))?;
        out.set_len(offset).await?;
        out.seek(std::io::SeekFrom::Start(offset)).await?;
        // The whole file's CRC, kept as the chunks arrive (only a resumed prefix is read
        // back), to compare with the manifest's at the end.
        let mut whole = if offset > 0 {
            let path = dest.to_path_buf();
            tokio::task::spawn_blocking(move || hash_file(&path, offset))
                .await??
                .1
        } else {
            crc32fast::Hasher::new()
        };
        let mut client = self.client.clone();
        let mut stream = client
            .snapshot_file(SnapshotFileRequest {
                cluster_id: self.cluster_id.clone(),
                shard: self.shard,
                package: self.package.clone(),
                path: f.path.clone(),
                offset,
                segments: self.segments,
            })
            .await
            .with_context(|| format!("cannot fetch {}", f.path))?
            .into_inner();
        loop {
            let chunk = tokio::time::timeout(CHUNK_TIMEOUT, stream.message())
                .await
                .with_context(|| format!("no chunk of {} for {CHUNK_TIMEOUT:?}", f.path))?
                .with_context(|| format!("fetching {}", f.path))?;
            let Some(chunk) = chunk else { break };
            ensure!(
                chunk.offset == offset,
                "chunk of {} at offset {}, expected {offset}",
                f.path,
                chunk.offset
            );
            ensure!(
                crc32fast::hash(&chunk.data) == chunk.crc32,
                "chunk of {} at offset {offset} fails its CRC",
                f.path
            );
            offset += chunk.data.len() as u64;
            ensure!(
                offset <= f.bytes,
                "{} is longer than the manifest's {} bytes",
                f.path,
                f.bytes
            );
            out.write_all(&chunk.data).await?;
            whole.update(&chunk.data);
            self.counters
                .bytes_fetched
                .fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
        }
        out.sync_all().await?;
        drop(out);
        if offset != f.bytes || whole.finalize() != f.crc32 {
            let _ = tokio::fs::remove_file(dest).await;
            bail!(
                "{} arrived with {offset} bytes and another CRC than the manifest's {} bytes: discarded",
                f.path,
                f.bytes
            );
        }
        Ok(())
    }
}

/// The file `path` of package `package` of `shard` under `root` (see
/// [`SnapshotStore::package_file`]).
pub(crate) fn package_file(
    root: &Path,
    shard: u32,
    package: &str,
    path: &str,
) -> Result<PathBuf, Status> {
    if !valid_package_id(package) {
        return Err(Status::invalid_argument(format!(
            "{package:?} is not a snapshot package id"
        )));
    }
    let dir = package_dir(root, shard, package);
    if path != MANIFEST {
        let manifest = std::fs::read(dir.join(MANIFEST)).map_err(|_| {
            Status::not_found(format!(
                "no snapshot package {package} of shard {shard} here (superseded or never built)"
            ))
        })?;
        let manifest: Manifest = serde_json::from_slice(&manifest)
            .map_err(|e| Status::internal(format!("unreadable manifest: {e}")))?;
        if !manifest.files.iter().any(|f| f.path == path) {
            return Err(Status::not_found(format!(
                "package {package} of shard {shard} has no file {path:?}"
            )));
        }
    }
    let file = dir.join(path);
    if !file.is_file() {
        return Err(Status::not_found(format!(
            "no snapshot package {package} of shard {shard} here (superseded or never built)"
        )));
    }
    Ok(file)
}

/// Removes packages under `out` older than [`PACKAGE_MAX_AGE`].
fn remove_old_packages(out: &Path) {
    let Ok(shards) = std::fs::read_dir(out) else {
        return;
    };
    for shard in shards.flatten() {
        let Ok(packages) = std::fs::read_dir(shard.path()) else {
            continue;
        };
        for p in packages.flatten() {
            let old = p
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > PACKAGE_MAX_AGE);
            if old {
                match std::fs::remove_dir_all(p.path()) {
                    Ok(()) => {
                        tracing::info!(package = %p.path().display(), "old snapshot package removed")
                    }
                    Err(e) => {
                        tracing::warn!(package = %p.path().display(), error = %e, "cannot remove an old snapshot package")
                    }
                }
            }
        }
    }
}

/// Where package `package` of `shard` lives under `root`.
fn package_dir(root: &Path, shard: u32, package: &str) -> PathBuf {
    root.join("out")
        .join(format!("shard-{shard}"))
        .join(package)
}

/// CRC-32 of a file's contents.
async fn file_crc(path: &Path) -> anyhow::Result<u32> {
    let path = path.to_path_buf();
    Ok(tokio::task::spawn_blocking(move || crc_of(&path)).await??.1)
}

/// Size and CRC-32 of a file, read in chunks.
pub(crate) fn crc_of(path: &Path) -> anyhow::Result<(u64, u32)> {
    let (total, h) = hash_file(path, u64::MAX)?;
    Ok((total, h.finalize()))
}

/// The CRC-32 state of the first `limit` bytes of a file (all of it when shorter), and
/// how many bytes that was.
fn hash_file(path: &Path, limit: u64) -> anyhow::Result<(u64, crc32fast::Hasher)> {
    use std::io::Read;
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut f = f.take(limit);
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((total, h));
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
}

/// Every file under `dir`, with paths relative to `base` ('/'-separated), sizes and CRCs.
fn list_files(base: &Path, dir: &Path, out: &mut Vec<FileEntry>) -> anyhow::Result<()> {
    let mut found = Vec::new();
    walk_files(base, dir, &mut found)?;
    for (rel, path, _) in found {
        if rel == MANIFEST {
            continue;
        }
        let (bytes, crc32) = crc_of(&path)?;
        out.push(FileEntry {
            path: rel,
            bytes,
            crc32,
        });
    }
    Ok(())
}

/// Every file under `dir`: its path relative to `base` ('/'-separated), its path, and
/// its size.
pub(crate) fn walk_files(
    base: &Path,
    dir: &Path,
    out: &mut Vec<(String, PathBuf, u64)>,
) -> anyhow::Result<()> {
    let listing = || format!("cannot list {}", dir.display());
    for entry in std::fs::read_dir(dir).with_context(listing)? {
        let entry = entry.with_context(listing)?;
        let path = entry.path();
        if entry.file_type().with_context(listing)?.is_dir() {
            walk_files(base, &path, out)?;
            continue;
        }
        let rel = path
            .strip_prefix(base)
            .with_context(listing)?
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let bytes = entry
            .metadata()
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        out.push((rel, path, bytes));
    }
    Ok(())
}

/// Removes every file under `dir` that is not in `keep`, and directories left empty.
pub(crate) fn remove_unlisted(dir: &Path, keep: &HashSet<PathBuf>) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            remove_unlisted(&path, keep)?;
            if std::fs::read_dir(&path)?.next().is_none() {
                std::fs::remove_dir(&path)?;
            }
        } else if !keep.contains(&path) {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// `<index>-<term>-<hex>`: digits, lowercase hex and dashes only.
fn valid_package_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-')
}

/// A relative path of plain components (no `..`, no root).
pub(crate) fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::v1::peer_server::{Peer, PeerServer};
    use weir_proto::v1::*;

    /// A peer that serves only the snapshot packages under its root.
    struct PackageServer(PathBuf);

    type Answer<T> = Result<tonic::Response<T>, Status>;

    #[tonic::async_trait]
    impl Peer for PackageServer {
        type SnapshotFileStream = std::pin::Pin<
            Box<dyn tokio_stream::Stream<Item = Result<SnapshotChunk, Status>> + Send>,
        >;
        async fn snapshot_file(
            &self,
            req: tonic::Request<SnapshotFileRequest>,
        ) -> Answer<Self::SnapshotFileStream> {
            let r = req.into_inner();
            let file = package_file(&self.0, r.shard, &r.package, &r.path)?;
            Ok(tonic::Response::new(SnapshotStore::stream_file(
                file, r.offset,
            )))
        }
        async fn hello(&self, _: tonic::Request<HelloRequest>) -> Answer<HelloResponse> {
            Err(Status::unimplemented("test"))
        }
        async fn raft(&self, _: tonic::Request<RaftBatch>) -> Answer<RaftBatchResponse> {
            Err(Status::unimplemented("test"))
        }
        async fn forward(&self, _: tonic::Request<ForwardRequest>) -> Answer<ForwardResponse> {
            Err(Status::unimplemented("test"))
        }
        async fn search_shards(
            &self,
            _: tonic::Request<ShardSearchRequest>,
        ) -> Answer<ShardSearchResponse> {
            Err(Status::unimplemented("test"))
        }
        async fn label_shards(
            &self,
            _: tonic::Request<ShardLabelsRequest>,
        ) -> Answer<ShardLabelsResponse> {
            Err(Status::unimplemented("test"))
        }
        async fn status(
            &self,
            _: tonic::Request<ShardStatusRequest>,
        ) -> Answer<ShardStatusResponse> {
            Err(Status::unimplemented("test"))
        }
        async fn segment_manifest(
            &self,
            _: tonic::Request<SegmentManifestRequest>,
        ) -> Answer<SegmentManifestResponse> {
            Err(Status::unimplemented("test"))
        }
    }

    const PACKAGE: &str = "120-3-0a1b2c3d";

    /// A package of shard 0 with one 3.5 MiB file; returns its entry and contents.
    fn package(root: &Path) -> (FileEntry, Vec<u8>) {
        let dir = package_dir(root, 0, PACKAGE);
        std::fs::create_dir_all(dir.join("index")).unwrap();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let body: Vec<u8> = (0..(7 << 19))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(dir.join("index/seg.store"), &body).unwrap();
        let entry = FileEntry {
            path: "index/seg.store".into(),
            bytes: body.len() as u64,
            crc32: crc32fast::hash(&body),
        };
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            version: 1,
            shard: 0,
            index: 120,
            term: 3,
            checkpoint: 130,
            files: vec![entry.clone()],
        };
        std::fs::write(dir.join(MANIFEST), serde_json::to_vec(&manifest).unwrap()).unwrap();
        (entry, body)
    }

    async fn fetcher(root: &Path) -> (Fetcher, Arc<SnapshotCounters>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = PackageServer(root.to_path_buf());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PeerServer::new(server))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let client = weir_proto::v1::peer_client::PeerClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let counters = Arc::new(SnapshotCounters::default());
        let f = Fetcher {
            client,
            cluster_id: String::new(),
            shard: 0,
            package: PACKAGE.into(),
            segments: false,
            counters: counters.clone(),
        };
        (f, counters)
    }

    #[tokio::test]
    async fn a_fetch_resumes_from_what_arrived_and_discards_what_fails_its_checksum() {
        let leader = tempfile::tempdir().unwrap();
        let (entry, body) = package(leader.path());
        let (fetcher, counters) = fetcher(leader.path()).await;
        let follower = tempfile::tempdir().unwrap();
        let dest = follower.path().join("files/index/seg.store");

        // A fetch that stopped after 1 MiB and a bit resumes there.
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let had = (1 << 20) + 100;
        std::fs::write(&dest, &body[..had]).unwrap();
        fetcher.file(&entry, &dest, true).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        assert_eq!(
            counters.bytes_fetched.load(Ordering::Relaxed),
            (body.len() - had) as u64,
            "only what was missing crossed the wire"
        );
        // A complete file is not fetched again.
        fetcher.file(&entry, &dest, true).await.unwrap();
        assert_eq!(
            counters.bytes_fetched.load(Ordering::Relaxed),
            (body.len() - had) as u64
        );

        // A partial file whose bytes are wrong: the whole file fails the manifest's CRC,
        // is discarded, and the next attempt fetches it whole.
        std::fs::write(&dest, vec![0u8; had]).unwrap();
        let err = fetcher.file(&entry, &dest, true).await.unwrap_err();
        assert!(format!("{err:#}").contains("discarded"), "{err:#}");
        assert!(!dest.exists());
        fetcher.file(&entry, &dest, true).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), body);

        // Another package's file of another size is fetched anew, not resumed.
        std::fs::write(&dest, &body[..had]).unwrap();
        let before = counters.bytes_fetched.load(Ordering::Relaxed);
        fetcher.file(&entry, &dest, false).await.unwrap();
        assert_eq!(
            counters.bytes_fetched.load(Ordering::Relaxed) - before,
            body.len() as u64
        );
    }

    #[tokio::test]
    async fn a_leader_serves_only_the_manifest_and_the_files_it_lists() {
        let leader = tempfile::tempdir().unwrap();
        package(leader.path());
        std::fs::write(leader.path().join("secret"), b"x").unwrap();
        let root = leader.path();
        assert!(package_file(root, 0, PACKAGE, MANIFEST).is_ok());
        assert!(package_file(root, 0, PACKAGE, "index/seg.store").is_ok());
        for (package, path) in [
            (PACKAGE, "../../secret"),
            (PACKAGE, "index/other"),
            ("../out", MANIFEST),
            ("120-3-ffffffff", MANIFEST),
        ] {
            assert!(
                package_file(root, 0, package, path).is_err(),
                "{package} {path} was served"
            );
        }
        assert!(
            package_file(root, 1, PACKAGE, MANIFEST).is_err(),
            "another shard's"
        );
    }

    #[test]
    fn package_ids_and_paths_from_a_peer_cannot_leave_the_snapshot_directory() {
        assert!(valid_package_id("120-3-0a1b2c3d"));
        assert!(!valid_package_id("../../etc"));
        assert!(!valid_package_id(""));
        assert!(safe_relative("index/part_1700000000_3600/abc.idx"));
        assert!(!safe_relative("../weir-node.json"));
        assert!(!safe_relative("/etc/passwd"));
        assert!(!safe_relative("index/../../x"));
        assert!(!safe_relative(""));
    }
}
