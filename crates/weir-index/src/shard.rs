//! One shard's index: time partitions, the checkpoint, writes, and searches.
//!
//! On disk, in the shard's directory:
//!
//! ```text
//! checkpoint.json            {"format":"weir-index-checkpoint","version":1,"shard":N,
//!                             "checkpoint":L,"dropped_before_ns":T}
//! part_<start_secs>_<span>/  one tantivy index per time partition; its commit payload is
//!                            the log index it is complete up to
//! part_..._<span>.tmp/       a partition being created (deleted on open)
//! ```
//!
//! Architecture invariant: a partition whose commit payload is `p` holds every record,
//! destined to it, of every entry `<= p`, and none of any entry `> p` (commits happen
//! between entries, or when `add_batch` evicts a writer: then `p` is the entry being
//! added if the partition already took all its records of it or has none, else the
//! entry before). The shard checkpoint `c` is `<=` every payload written since; replaying
//! entries `> c` and skipping, per partition, entries `<= payload` is therefore exact.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument};
use weir_proto::v1::{StoredBatch, StoredRecord};
use weir_proto::{Level, ShardId, DEFAULT_TENANT};

use crate::collect::{Candidate, TopCollector, TopN};
use crate::durable::{fsync_dir, write_atomic};
use crate::head::{HeadEntry, RecordMatcher};
use crate::page::{compare, Cursor, Hit, ShardHits, Sort};
use crate::query::Query;
use crate::schema::{label_prefix, stored_record, Fields};
use crate::{Error, Result};

const NS_PER_SEC: i64 = 1_000_000_000;
const CHECKPOINT_FILE: &str = "checkpoint.json";
const CHECKPOINT_FORMAT: &str = "weir-index-checkpoint";
const CHECKPOINT_VERSION: u32 = 1;
const PART_PREFIX: &str = "part_";

/// tantivy's minimum indexing memory per writer thread (its
/// `MEMORY_BUDGET_NUM_BYTES_MIN`, not exported).
const MIN_WRITER_MEMORY_PER_THREAD: usize = 15_000_000;

/// Largest page a search returns; bigger limits are an argument error.
pub const MAX_LIMIT: usize = 10_000;

/// Tuning of a [`ShardIndex`].
#[derive(Clone, Debug)]
pub struct IndexOptions {
    /// Width of a time partition. Records fall into `[k * span, (k + 1) * span)` by their
    /// timestamp; retention drops whole partitions, and a search opens only those its
    /// range overlaps. Default 3600. Changing it later is allowed: existing partitions
    /// keep their span, new ones use the new one.
    pub partition_span_secs: u64,
    /// Indexing memory of one partition writer; default 64 MiB. tantivy needs at least
    /// 15 MB per writer thread.
    pub writer_memory_bytes: usize,
    /// At most this many partition writers are open at once; opening another commits and
    /// closes the least recently used. Bounds indexing memory to
    /// `max_open_writers * writer_memory_bytes`. Default 2 (the current hour, and the
    /// previous one for late records).
    pub max_open_writers: usize,
    /// Indexing threads per partition writer. Default 1.
    pub writer_threads: usize,
    /// Where infix lookups keep each searched segment's body words; share one among the
    /// shards of a node to bound them together. Default: a cache of its own of
    /// [`crate::DEFAULT_INFIX_CACHE_BYTES`].
    pub infix_cache: Arc<crate::InfixCache>,
    /// How new partitions compress their stored records. Default [`DocStore::Zstd`].
    pub docstore: DocStore,
    /// How many segments of about the same size a partition gathers before they are
    /// merged into one (tantivy's log merge policy). Every commit makes a segment; a
    /// record is rewritten once per level, and a larger fan-in makes fewer levels (less
    /// merging CPU) at the price of more segments for a search to open. Default
    /// [`DEFAULT_MERGE_FAN_IN`].
    pub merge_fan_in: usize,
    /// Map the files lookups read (term dictionaries, postings, positions, stored blocks)
    /// for random access (`MADV_RANDOM`, `advised.rs`): a page missed from the page cache
    /// then reads only itself, not the device's read-ahead window around it. Default
    /// false: it made cold trace id and term lookups about twice as fast on a disk with
    /// 8 MiB of read-ahead, but merges and long postings scans of segments no longer
    /// cached then read a page at a time, and Linux (6.4 and later) does not count
    /// accesses through such maps as recent use, so under memory pressure their pages are
    /// reclaimed first (Elasticsearch and Lucene went back to the default advice after
    /// merge regressions from that). benches/RESULTS.md, cold lookups.
    pub random_access_maps: bool,
}

/// The default [`IndexOptions::merge_fan_in`] (tantivy's own default is 8; the
/// measurement behind this one is in benches/RESULTS.md).
pub const DEFAULT_MERGE_FAN_IN: usize = 16;

/// How a partition's document store (the records as stored) is compressed, chosen when
/// the partition is created: existing partitions keep theirs, and a mix reads fine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DocStore {
    /// zstd (level 3): records take about 40% less disk than with lz4 (random ids in hex
    /// are where lz4, without entropy coding, finds nothing), and reading them back costs
    /// more CPU (benches/RESULTS.md, the cost model).
    #[default]
    Zstd,
    /// lz4: cheaper to read back, larger.
    Lz4,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            partition_span_secs: 3600,
            writer_memory_bytes: 64 << 20,
            max_open_writers: 2,
            writer_threads: 1,
            infix_cache: Arc::new(crate::InfixCache::new(crate::DEFAULT_INFIX_CACHE_BYTES)),
            docstore: DocStore::default(),
            merge_fan_in: DEFAULT_MERGE_FAN_IN,
            random_access_maps: false,
        }
    }
}

/// A search of one shard.
#[derive(Clone, Debug)]
pub struct SearchRequest {
    /// The parsed query ([`crate::parse_query`]).
    pub query: Query,
    /// Only records of this tenant are seen. Empty means [`DEFAULT_TENANT`].
    pub tenant: String,
    /// Start of the time range, inclusive, ns.
    pub start_ns: i64,
    /// End of the time range, exclusive, ns.
    pub end_ns: i64,
    /// Only these levels; empty means all.
    pub levels: Vec<Level>,
    /// Page size, at most [`MAX_LIMIT`]. 0 counts only.
    pub limit: usize,
    /// Result order.
    pub sort: Sort,
    /// Continue after this cursor (from [`crate::merge`]); must be of the same sort.
    pub after: Option<Cursor>,
    /// The caller checks every hit against its own filter (LogQL's line filters): a
    /// conjunction of body words may then match records that lack some of them, which
    /// `total` counts too, because each segment intersects only its rarest words
    /// (`rarewords.rs`). The head's records are matched exactly all the same.
    pub prefilter: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct PartKey {
    start_secs: i64,
    span_secs: u64,
}

impl PartKey {
    fn for_timestamp(ts_ns: i64, span_secs: u64) -> PartKey {
        let span = i64::try_from(span_secs).unwrap_or(i64::MAX).max(1);
        let secs = ts_ns.div_euclid(NS_PER_SEC);
        PartKey {
            start_secs: secs.div_euclid(span) * span,
            span_secs: span as u64,
        }
    }

    fn start_ns(&self) -> i64 {
        clamp_ns(i128::from(self.start_secs) * i128::from(NS_PER_SEC))
    }

    fn end_ns(&self) -> i64 {
        clamp_ns(
            (i128::from(self.start_secs) + i128::from(self.span_secs)) * i128::from(NS_PER_SEC),
        )
    }

    fn overlaps(&self, start_ns: i64, end_ns: i64) -> bool {
        self.start_ns() < end_ns && start_ns < self.end_ns()
    }

    fn within(&self, start_ns: i64, end_ns: i64) -> bool {
        start_ns <= self.start_ns() && self.end_ns() <= end_ns
    }

    fn dir_name(&self) -> String {
        format!("{PART_PREFIX}{}_{}", self.start_secs, self.span_secs)
    }

    fn parse(name: &str) -> Option<PartKey> {
        let rest = name.strip_prefix(PART_PREFIX)?;
        let (start, span) = rest.rsplit_once('_')?;
        let key = PartKey {
            start_secs: start.parse().ok()?,
            span_secs: span.parse().ok().filter(|s| *s > 0)?,
        };
        (key.dir_name() == name).then_some(key)
    }
}

fn clamp_ns(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// One time partition as the read side sees it.
struct Partition {
    key: PartKey,
    dir: PathBuf,
    index: Index,
    reader: IndexReader,
    /// Every document of the partition carries the long-token marker where its body had
    /// a word the index dropped ([`crate::schema::LONG_TOKEN_MARKER`]): body-word infix
    /// lookups are sound here. Partitions created before the marker existed lack it.
    long_tokens_marked: bool,
    /// The commit payload (last log index added) its reader was last reloaded at: no
    /// searchable document of it comes from a later entry.
    visible_through: AtomicU64,
}

impl Partition {
    /// The `log_index` bound a search of this partition needs when the index answers for
    /// entries up to `through` (the rest being the head's): `through` if its reader may
    /// show later entries, else none.
    fn cut(&self, through: Option<u64>) -> Option<u64> {
        through.filter(|t| self.visible_through.load(Ordering::Acquire) > *t)
    }

    /// What translating a query for this partition needs of it.
    fn context(&self) -> crate::schema::PartContext<'_> {
        crate::schema::PartContext {
            marked: self.long_tokens_marked,
            dir: &self.dir,
        }
    }
}

/// Bytes of records the document store compresses together. tantivy's default (16 KiB)
/// leaves the compressor less to find across records; larger blocks compress the stored
/// records better at the price of decompressing more to fetch one hit (tantivy caches
/// recent blocks). Set when a partition is created; existing partitions keep theirs.
const DOCSTORE_BLOCK_BYTES: usize = 64 << 10;

/// The file whose presence in a partition directory says its documents carry the
/// long-token marker from the start.
const LONG_TOKENS_MARKED: &str = "weir-long-tokens-marked";

struct OpenWriter {
    writer: IndexWriter<TantivyDocument>,
    /// Its partition's schema has the stream column ([`crate::schema::Layout::streams`]).
    streams: bool,
    pending: bool,
    last_used: u64,
}

/// Write-side state, behind one mutex: writes are serialised, searches never take it.
struct WriteState {
    /// The last log index passed to `add_batch` (or the checkpoint after open).
    last_added: u64,
    /// Records older than this were dropped by retention and are not indexed again.
    dropped_before_ns: i64,
    /// Each partition's committed payload.
    committed: HashMap<PartKey, u64>,
    writers: HashMap<PartKey, OpenWriter>,
    tick: u64,
    poisoned: bool,
    /// Set by [`ShardIndex::close`]: every write is refused from then on.
    closed: bool,
}

#[derive(Serialize, Deserialize)]
struct CheckpointFile {
    format: String,
    version: u32,
    shard: u32,
    checkpoint: u64,
    dropped_before_ns: i64,
}

/// The index of one shard. `Send + Sync`: share it in an `Arc`; every method takes
/// `&self`. Writes (`add_batch`, `commit`, `drop_partitions_before`) serialise on an
/// internal mutex; searches and label queries never wait for them.
pub struct ShardIndex {
    dir: PathBuf,
    shard: ShardId,
    opts: IndexOptions,
    fields: Fields,
    parts: RwLock<BTreeMap<PartKey, Arc<Partition>>>,
    write: Mutex<WriteState>,
    checkpoint: AtomicU64,
    /// Held (write) while readers are reloaded and the checkpoint advanced, (read) while a
    /// search takes its searchers and the checkpoint: a search's searchers then hold every
    /// record up to the checkpoint it read, which is where its scan of the head begins.
    view: RwLock<()>,
    partitions_searched: AtomicU64,
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ShardIndex>();
};

impl ShardIndex {
    /// Opens the index of `shard` in `dir` (the shard's own directory), creating it if
    /// needed. Partitions being created when the process stopped are deleted.
    ///
    /// # Errors
    ///
    /// [`Error::WrongShard`] if `dir` holds another shard's index; [`Error::Corrupt`] if
    /// the checkpoint file or a partition's commit payload does not parse, or a partition
    /// has another schema; I/O and tantivy errors.
    pub fn open(dir: &Path, shard: ShardId, opts: IndexOptions) -> Result<ShardIndex> {
        if opts.partition_span_secs == 0 || opts.max_open_writers == 0 || opts.writer_threads == 0 {
            return Err(Error::InvalidArgument(
                "partition_span_secs, max_open_writers and writer_threads must be positive".into(),
            ));
        }
        if opts.writer_memory_bytes / opts.writer_threads < MIN_WRITER_MEMORY_PER_THREAD {
            return Err(Error::InvalidArgument(format!(
                "writer_memory_bytes {} is under the {MIN_WRITER_MEMORY_PER_THREAD} bytes per \
                 writer thread tantivy needs",
                opts.writer_memory_bytes
            )));
        }
        let old = set_aside_path(dir);
        if !dir.exists() && old.exists() {
            // A crash in the middle of `install`: the index it replaced comes back.
            fs::rename(&old, dir).map_err(|e| Error::io(dir, e))?;
        }
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let fields = Fields::new(opts.infix_cache.clone(), opts.random_access_maps);
        let (ckpt, parts, committed) = load(dir, shard, &fields)?;
        tracing::info!(
            shard = shard.0,
            checkpoint = ckpt.checkpoint,
            partitions = parts.len(),
            "opened shard index"
        );
        Ok(ShardIndex {
            dir: dir.to_path_buf(),
            shard,
            opts,
            fields,
            parts: RwLock::new(parts),
            write: Mutex::new(WriteState {
                last_added: ckpt.checkpoint,
                dropped_before_ns: ckpt.dropped_before_ns,
                committed,
                writers: HashMap::new(),
                tick: 0,
                poisoned: false,
                closed: false,
            }),
            checkpoint: AtomicU64::new(ckpt.checkpoint),
            view: RwLock::new(()),
            partitions_searched: AtomicU64::new(0),
        })
    }

    /// The shard's index directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shard this index belongs to.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// Raft log index up to which everything is durably indexed (0 = nothing). After a
    /// restart the indexer replays from `checkpoint() + 1`.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint.load(Ordering::Acquire)
    }

    fn lock_write(&self) -> Result<MutexGuard<'_, WriteState>> {
        // A panic while holding the lock leaves the writers in an unknown state: refuse.
        let ws = self
            .write
            .lock()
            .map_err(|_| Error::Poisoned { shard: self.shard })?;
        if ws.closed {
            return Err(Error::Closed { shard: self.shard });
        }
        if ws.poisoned {
            return Err(Error::Poisoned { shard: self.shard });
        }
        Ok(ws)
    }

    /// Commits what was added, then closes every partition writer and waits for their
    /// merges, so that no tantivy thread of this index touches its directory once this
    /// returns (a merge finishing later would rewrite `meta.json` and delete files in a
    /// directory that may belong to another process or a new copy by then). Writes are
    /// refused afterwards ([`Error::Closed`]); searches still work. Idempotent.
    ///
    /// # Errors
    ///
    /// The final commit failed (the writers are closed all the same; what was not
    /// committed is replayed from the log at the next start).
    pub fn close(&self) -> Result<()> {
        let mut ws = self.write.lock().unwrap_or_else(|p| p.into_inner());
        if ws.closed {
            return Ok(());
        }
        ws.closed = true;
        let committed = if ws.poisoned {
            Ok(())
        } else {
            self.commit_locked(&mut ws)
        };
        for (key, w) in ws.writers.drain() {
            if let Err(e) = w.writer.wait_merging_threads() {
                tracing::warn!(shard = self.shard.0, partition = %key.dir_name(), error = %e, "a merge failed while closing the index");
            }
        }
        committed
    }

    /// Indexes the records of committed entry `log_index` (strictly increasing across
    /// calls). Entries at or below the durable checkpoint are skipped, and so are the
    /// records of a partition whose committed payload is `>= log_index` (replay after a
    /// crash between partition commits), so replaying never duplicates. Records older than
    /// what retention dropped are skipped. Not searchable before [`ShardIndex::commit`].
    ///
    /// # Errors
    ///
    /// [`Error::OutOfOrder`] if `log_index` is not after the previous call's; tantivy and
    /// I/O errors, after which the index refuses writes ([`Error::Poisoned`]) until
    /// reopened.
    pub fn add_batch(&self, log_index: u64, batch: &StoredBatch) -> Result<()> {
        self.add_batch_since(log_index, batch, i64::MIN)
    }

    /// [`ShardIndex::add_batch`], leaving out the records older than `since_ns` as well
    /// (a tenant's own retention), each record keeping its position in the batch.
    ///
    /// # Errors
    ///
    /// As [`ShardIndex::add_batch`].
    pub fn add_batch_since(
        &self,
        log_index: u64,
        batch: &StoredBatch,
        since_ns: i64,
    ) -> Result<()> {
        let mut ws = self.lock_write()?;
        if log_index <= self.checkpoint() {
            tracing::debug!(log_index, "entry already indexed; skipped");
            return Ok(());
        }
        if log_index <= ws.last_added {
            return Err(Error::OutOfOrder {
                log_index,
                last: ws.last_added,
            });
        }
        let tenant = tenant_or_default(&batch.tenant);
        // Group by partition so that each partition takes all of this entry's records in
        // one go: a writer evicted meanwhile is then complete up to `log_index`.
        let mut by_part: BTreeMap<PartKey, Vec<(u32, &StoredRecord)>> = BTreeMap::new();
        for (offset, r) in batch.records.iter().enumerate() {
            if r.timestamp_ns < ws.dropped_before_ns || r.timestamp_ns < since_ns {
                continue;
            }
            let key = PartKey::for_timestamp(r.timestamp_ns, self.opts.partition_span_secs);
            let offset = u32::try_from(offset).map_err(|_| {
                Error::InvalidArgument(format!("batch {log_index} has over 2^32 records"))
            })?;
            by_part.entry(key).or_default().push((offset, r));
        }
        let repeated = crate::schema::repeated_ids(&batch.records);
        let mut remaining: BTreeSet<PartKey> = by_part.keys().copied().collect();
        let result = (|| {
            for (key, records) in by_part {
                if ws.committed.get(&key).is_some_and(|p| *p >= log_index) {
                    remaining.remove(&key);
                    continue;
                }
                let w = self.writer_for(&mut ws, key, log_index, &remaining)?;
                let layout = crate::schema::Layout {
                    streams: w.streams,
                    repeated: Some(&repeated),
                };
                for (offset, r) in records {
                    let d = self.fields.document(tenant, log_index, offset, r, &layout);
                    w.writer.add_document(d)?;
                }
                w.pending = true;
                remaining.remove(&key);
            }
            Ok(())
        })();
        if result.is_err() {
            ws.poisoned = true;
        } else {
            ws.last_added = log_index;
        }
        result
    }

    /// The open writer of `key`, creating the partition and evicting the least recently
    /// used writer as needed. `adding` is the entry being added and `remaining` the
    /// partitions still to take records of it: an evicted partition is committed as
    /// complete up to `adding` unless it is among them (then up to the entry before).
    fn writer_for<'w>(
        &self,
        ws: &'w mut WriteState,
        key: PartKey,
        adding: u64,
        remaining: &BTreeSet<PartKey>,
    ) -> Result<&'w mut OpenWriter> {
        ws.tick += 1;
        let tick = ws.tick;
        if !ws.writers.contains_key(&key) {
            while ws.writers.len() >= self.opts.max_open_writers {
                let Some(lru) = ws
                    .writers
                    .iter()
                    .min_by_key(|(_, w)| w.last_used)
                    .map(|(k, _)| *k)
                else {
                    break;
                };
                if let Some(mut w) = ws.writers.remove(&lru) {
                    if w.pending {
                        let complete_up_to = if remaining.contains(&lru) {
                            ws.last_added
                        } else {
                            adding
                        };
                        commit_writer(&mut w.writer, complete_up_to)?;
                        ws.committed.insert(lru, complete_up_to);
                        self.reload(lru, complete_up_to)?;
                    }
                    w.writer.wait_merging_threads()?;
                    tracing::debug!(partition = %lru.dir_name(), "closed partition writer");
                }
            }
            let part = self.partition_or_create(key)?;
            ws.committed.entry(key).or_insert(0);
            let writer: IndexWriter<TantivyDocument> = part
                .index
                .writer_with_num_threads(self.opts.writer_threads, self.opts.writer_memory_bytes)?;
            let mut policy = tantivy::merge_policy::LogMergePolicy::default();
            policy.set_min_num_segments(self.opts.merge_fan_in.max(2));
            writer.set_merge_policy(Box::new(policy));
            ws.writers.insert(
                key,
                OpenWriter {
                    writer,
                    streams: crate::schema::has_streams(&part.index.schema()),
                    pending: false,
                    last_used: tick,
                },
            );
        }
        let w = ws
            .writers
            .get_mut(&key)
            .ok_or_else(|| Error::InvalidArgument("writer vanished".into()))?;
        w.last_used = tick;
        Ok(w)
    }

    fn partition_or_create(&self, key: PartKey) -> Result<Arc<Partition>> {
        if let Some(p) = self.read_parts().get(&key) {
            return Ok(p.clone());
        }
        let dir = self.dir.join(key.dir_name());
        let tmp = self.dir.join(format!("{}.tmp", key.dir_name()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        drop(
            Index::builder()
                .schema(self.fields.schema.clone())
                .settings(tantivy::IndexSettings {
                    docstore_blocksize: DOCSTORE_BLOCK_BYTES,
                    docstore_compression: match self.opts.docstore {
                        DocStore::Zstd => {
                            tantivy::store::Compressor::Zstd(tantivy::store::ZstdCompressor {
                                compression_level: Some(3),
                            })
                        }
                        DocStore::Lz4 => tantivy::store::Compressor::Lz4,
                    },
                    ..Default::default()
                })
                .create_in_dir(&tmp)?,
        );
        let marked = tmp.join(LONG_TOKENS_MARKED);
        fs::write(
            &marked,
            b"documents with a body word of 40 bytes or more carry a marker term\n",
        )
        .map_err(|e| Error::io(&marked, e))?;
        fsync_dir(&tmp)?;
        fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
        fsync_dir(&self.dir)?;
        let part = Arc::new(open_partition(key, dir, &self.fields)?);
        self.parts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, part.clone());
        tracing::debug!(partition = %key.dir_name(), "created partition");
        Ok(part)
    }

    fn read_parts(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<PartKey, Arc<Partition>>> {
        // The map is only ever replaced entry by entry; a panic elsewhere cannot leave it
        // half-updated, so a poisoned lock is still consistent.
        self.parts.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes partition `key`'s documents up to commit payload `through` searchable.
    fn reload(&self, key: PartKey, through: u64) -> Result<()> {
        if let Some(p) = self.read_parts().get(&key) {
            p.reader.reload()?;
            p.visible_through.fetch_max(through, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Commits every partition with pending records (payload: the last log index added),
    /// then durably writes the shard checkpoint, then makes the records searchable.
    ///
    /// # Errors
    ///
    /// tantivy and I/O errors, after which the index refuses writes ([`Error::Poisoned`])
    /// until reopened.
    pub fn commit(&self) -> Result<()> {
        let mut ws = self.lock_write()?;
        let started = Instant::now();
        let result = self.commit_locked(&mut ws);
        if result.is_err() {
            ws.poisoned = true;
        }
        tracing::debug!(
            shard = self.shard.0,
            checkpoint = self.checkpoint(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "index commit"
        );
        result
    }

    fn commit_locked(&self, ws: &mut WriteState) -> Result<()> {
        let up_to = ws.last_added;
        let mut committed = Vec::new();
        for (key, w) in ws.writers.iter_mut() {
            if w.pending {
                commit_writer(&mut w.writer, up_to)?;
                w.pending = false;
                committed.push(*key);
            }
        }
        for key in &committed {
            ws.committed.insert(*key, up_to);
        }
        let advance = up_to > self.checkpoint();
        if advance {
            self.write_checkpoint(up_to, ws.dropped_before_ns)?;
        }
        // Readers first, then the checkpoint, in one step as searches see it.
        let _view = self.view.write().unwrap_or_else(|e| e.into_inner());
        for key in committed {
            self.reload(key, up_to)?;
        }
        if advance {
            self.checkpoint.store(up_to, Ordering::Release);
        }
        Ok(())
    }

    fn write_checkpoint(&self, checkpoint: u64, dropped_before_ns: i64) -> Result<()> {
        write_ckpt(
            &self.dir.join(CHECKPOINT_FILE),
            &CheckpointFile {
                format: CHECKPOINT_FORMAT.into(),
                version: CHECKPOINT_VERSION,
                shard: self.shard.0,
                checkpoint,
                dropped_before_ns,
            },
        )
    }

    /// Searches the partitions overlapping `[start_ns, end_ns)`.
    ///
    /// # Errors
    ///
    /// [`Error::BadCursor`] for a cursor of another sort; [`Error::InvalidArgument`] for
    /// an empty range or a limit over [`MAX_LIMIT`]; tantivy errors.
    pub fn search(&self, req: &SearchRequest) -> Result<ShardHits> {
        self.search_with_head(req, &[])
    }

    /// Searches as [`ShardIndex::search`] does, and the records of `head` too: the
    /// committed log entries after the checkpoint, decoded, in log order (see
    /// [`crate::head`]). The index answers for the entries up to its checkpoint, `head`
    /// for those after it, so each record is answered once; `head` must be read before
    /// this call (entries the index holds by then are skipped). The answer's `scanned`
    /// counts the head's records read.
    ///
    /// # Errors
    ///
    /// As [`ShardIndex::search`].
    pub fn search_with_head(&self, req: &SearchRequest, head: &[HeadEntry]) -> Result<ShardHits> {
        self.top_with_head(req, head)?.into_hits()
    }

    /// Searches as [`ShardIndex::search_with_head`] does, but leaves the records of the
    /// hits found in the index unread: a node merging several shards' answers into one
    /// page reads only those its page keeps ([`ShardTop::read`]).
    ///
    /// # Errors
    ///
    /// As [`ShardIndex::search`].
    pub fn top_with_head(&self, req: &SearchRequest, head: &[HeadEntry]) -> Result<ShardTop> {
        if let Some(c) = &req.after {
            c.check_sort(req.sort)?;
        }
        if req.limit > MAX_LIMIT {
            return Err(Error::InvalidArgument(format!(
                "limit {} is over the maximum {MAX_LIMIT}",
                req.limit
            )));
        }
        let mut top = ShardTop {
            hits: ShardHits::default(),
            unread: HashMap::new(),
            searchers: Vec::new(),
            dirs: Vec::new(),
            record: self.fields.record,
        };
        if req.start_ns >= req.end_ns {
            return Ok(top);
        }
        let tenant = tenant_or_default(&req.tenant);
        let n = match (&req.after, req.sort) {
            (Some(c), Sort::Score) => usize::try_from(c.skip())
                .unwrap_or(usize::MAX)
                .saturating_add(req.limit),
            _ => req.limit,
        };
        let (through, parts, searchers) = self.view(req.start_ns, req.end_ns, head);
        self.partitions_searched
            .fetch_add(parts.len() as u64, Ordering::Relaxed);
        let collector = TopCollector {
            sort: req.sort,
            n,
            after: req.after,
            shard: self.shard.0,
        };
        let mut best = TopN::new(req.sort, n);
        let mut total = 0;
        // Newest partition first for a newest-first sort, so that older ones find the top
        // full and are only counted (see `search_by_time`).
        let mut order: Vec<usize> = (0..parts.len()).collect();
        if req.sort == Sort::TimeDesc {
            order.reverse();
        }
        for i in order {
            let (q, range) = self.partition_query(req, tenant, &parts[i], through);
            let searcher = &searchers[i];
            if req.sort == Sort::Score {
                let found = searcher.search(q.as_ref(), &collector)?;
                total += found.total;
                for c in found.top {
                    best.push(Candidate { part: i, ..c });
                }
            } else {
                total += search_by_time(searcher, q.as_ref(), &collector, &mut best, i, range)?;
            }
        }
        let mut hits = Vec::new();
        for c in best.into_sorted() {
            top.unread.insert(c.key, (c.part, c.doc));
            hits.push(Hit {
                key: c.key,
                score: if req.sort == Sort::Score {
                    c.score
                } else {
                    0.0
                },
                tenant: tenant.to_string(),
                record: StoredRecord::default(),
            });
        }
        top.searchers = searchers;
        top.dirs = parts.iter().map(|p| p.dir.clone()).collect();
        let Some(through) = through else {
            top.hits = ShardHits {
                hits,
                total,
                scanned: 0,
            };
            return Ok(top);
        };
        let matcher = RecordMatcher::new(&req.query, tenant, &req.levels, req.start_ns, req.end_ns);
        let scanned = crate::head::search_entries(
            &matcher,
            head,
            through,
            self.shard.0,
            req.sort,
            req.after.as_ref(),
            n,
        );
        hits.extend(scanned.hits);
        hits.sort_by(|a, b| compare(req.sort, &a.key, a.score, &b.key, b.score));
        hits.truncate(n);
        top.hits = ShardHits {
            hits,
            total: total + scanned.total,
            scanned: scanned.scanned,
        };
        Ok(top)
    }

    /// Calls `each` with every record of `req.tenant` that matches `req.query` and
    /// `req.levels` in `[req.start_ns, req.end_ns)` (the sort, limit and cursor are not
    /// used), in batches of at most `batch`: first the index's, in the order they lie in
    /// it, so that each block of the document store is decompressed once, then the
    /// head's, as [`ShardIndex::search_with_head`] divides them. Stops early when `each`
    /// returns false. Holds one batch at a time; returns the head records read.
    ///
    /// For readers of every match in a range that need no order (a range aggregation
    /// adds each record to its steps by its own time); paging through the same records
    /// sorted by time reads the window's matches again for every page.
    ///
    /// # Errors
    ///
    /// tantivy and I/O errors; [`Error::Corrupt`] for a stored document that is not a
    /// record.
    pub fn scan_with_head(
        &self,
        req: &SearchRequest,
        head: &[HeadEntry],
        batch: usize,
        each: &mut dyn FnMut(Vec<StoredRecord>) -> bool,
    ) -> Result<u64> {
        use tantivy::query::EnableScoring;
        use tantivy::{DocAddress, DocSet, TERMINATED};
        if req.start_ns >= req.end_ns {
            return Ok(0);
        }
        let tenant = tenant_or_default(&req.tenant);
        let batch = batch.max(1);
        let (through, parts, searchers) = self.view(req.start_ns, req.end_ns, head);
        self.partitions_searched
            .fetch_add(parts.len() as u64, Ordering::Relaxed);
        let mut out = Vec::with_capacity(batch);
        // Adds a record to the batch, handing the batch over when full; false once `each`
        // says stop.
        let mut add = |r: StoredRecord| {
            out.push(r);
            out.len() < batch || each(std::mem::replace(&mut out, Vec::with_capacity(batch)))
        };
        for (p, searcher) in parts.iter().zip(&searchers) {
            let (q, range) = self.partition_query(req, tenant, p, through);
            let weight = q.weight(EnableScoring::disabled_from_searcher(searcher))?;
            let mut streams = Streams::new(searcher);
            for (ord, seg) in searcher.segment_readers().iter().enumerate() {
                let ts = seg.fast_fields().i64(crate::schema::F_TIMESTAMP)?;
                if outside(&ts, range) {
                    continue;
                }
                let alive = seg.alive_bitset();
                let mut scorer = weight.scorer(seg, 1.0)?;
                let mut doc = scorer.doc();
                while doc != TERMINATED {
                    if alive.is_none_or(|a| a.is_alive(doc)) {
                        let at = DocAddress::new(ord as u32, doc);
                        let t = ts.first(doc).unwrap_or_default();
                        let r = read_record(&mut streams, at, t, self.fields.record, &p.dir)?;
                        if !add(r) {
                            return Ok(0);
                        }
                    }
                    doc = scorer.advance();
                }
            }
        }
        let mut scanned = 0;
        if let Some(through) = through {
            let matcher =
                RecordMatcher::new(&req.query, tenant, &req.levels, req.start_ns, req.end_ns);
            for (log_index, b) in head {
                if *log_index <= through || !matcher.tenant_matches(&b.batch) {
                    continue;
                }
                scanned += b.batch.records.len() as u64;
                for (_, r) in matcher.matching(b) {
                    if !add(r.clone()) {
                        return Ok(scanned);
                    }
                }
            }
        }
        if !out.is_empty() {
            each(out);
        }
        Ok(scanned)
    }

    /// `req`'s query over partition `p` (`through`: the checkpoint the index answers up
    /// to, when the head answers after it), and the time range it filters on: none when
    /// the partition lies within the request's range.
    fn partition_query(
        &self,
        req: &SearchRequest,
        tenant: &str,
        p: &Partition,
        through: Option<u64>,
    ) -> (Box<dyn tantivy::query::Query>, Option<(i64, i64)>) {
        let range = (!p.key.within(req.start_ns, req.end_ns)).then_some((req.start_ns, req.end_ns));
        let user = self
            .fields
            .translate(&req.query, tenant, p.context(), req.prefilter);
        let q = self
            .fields
            .filtered(user, tenant, &req.levels, range, p.cut(through));
        (q, range)
    }

    /// The partitions overlapping `[start_ns, end_ns)` with their searchers, and, when
    /// `head` holds entries after the checkpoint, that checkpoint: the index then answers
    /// for entries up to it and the head for the rest. A partition whose reader may show
    /// later entries (a writer evicted, or committed before a crash:
    /// `visible_through` past the checkpoint) is cut at it by a `log_index` clause.
    fn view(
        &self,
        start_ns: i64,
        end_ns: i64,
        head: &[HeadEntry],
    ) -> (Option<u64>, Vec<Arc<Partition>>, Vec<Searcher>) {
        let _view = self.view.read().unwrap_or_else(|e| e.into_inner());
        let checkpoint = self.checkpoint();
        let parts = self.overlapping(start_ns, end_ns);
        let searchers = parts.iter().map(|p| p.reader.searcher()).collect();
        let through = head
            .last()
            .is_some_and(|(i, _)| *i > checkpoint)
            .then_some(checkpoint);
        (through, parts, searchers)
    }

    /// Counts `req.tenant`'s records per group of label values and time bucket, from the
    /// index alone (see [`crate::CountRequest`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a bucket layout that is empty or needs more than
    /// `req.cells_max` counters; tantivy and I/O errors.
    pub fn count(&self, req: &crate::CountRequest) -> Result<Vec<crate::GroupCounts>> {
        self.count_with_head(req, &[]).map(|(counts, _)| counts)
    }

    /// Counts as [`ShardIndex::count`] does, and the records of `head` after the
    /// checkpoint too (see [`ShardIndex::search_with_head`]); also returns the number of
    /// head records read.
    ///
    /// # Errors
    ///
    /// As [`ShardIndex::count`].
    pub fn count_with_head(
        &self,
        req: &crate::CountRequest,
        head: &[HeadEntry],
    ) -> Result<(Vec<crate::GroupCounts>, u64)> {
        let tenant = tenant_or_default(&req.tenant);
        let (through, parts, searchers) = self.view(req.span().0, req.span().1, head);
        let parts: Vec<crate::count::CountPart> = parts
            .iter()
            .zip(searchers)
            .map(|(p, searcher)| crate::count::CountPart {
                searcher,
                dir: p.dir.clone(),
                marked: p.long_tokens_marked,
                through: p.cut(through),
            })
            .collect();
        self.partitions_searched
            .fetch_add(parts.len() as u64, Ordering::Relaxed);
        let mut counts = crate::count::count(&parts, &self.fields, tenant, req)?;
        let scanned = match through {
            Some(through) => crate::head::count_entries(req, head, through, &mut counts),
            None => 0,
        };
        if counts.len().saturating_mul(req.buckets) > req.cells_max {
            return Err(crate::count::too_many(req));
        }
        Ok((counts, scanned))
    }

    fn overlapping(&self, start_ns: i64, end_ns: i64) -> Vec<Arc<Partition>> {
        self.read_parts()
            .values()
            .filter(|p| p.key.overlaps(start_ns, end_ns))
            .cloned()
            .collect()
    }

    /// Stream label names of `tenant`, plus those of `service`, `namespace`, `pod`,
    /// `cluster` and `level` that have a value, in records of partitions overlapping
    /// `[start_ns, end_ns)`: sorted, deduplicated. The range is honoured at partition
    /// granularity (names from up to one partition span around it may appear), as Loki
    /// does with its index periods.
    ///
    /// # Errors
    ///
    /// tantivy and I/O errors.
    pub fn label_names(&self, tenant: &str, start_ns: i64, end_ns: i64) -> Result<Vec<String>> {
        let prefix = format!("{}\0", tenant_or_default(tenant));
        let names = self.label_terms(&prefix, LabelPart::Name, start_ns, end_ns)?;
        Ok(names.into_iter().collect())
    }

    /// Values of label `name` (a stream label, or one of `service`, `namespace`, `pod`,
    /// `cluster`, `level`) for `tenant`, sorted and deduplicated; the range is honoured
    /// at partition granularity, as in [`ShardIndex::label_names`].
    ///
    /// # Errors
    ///
    /// tantivy and I/O errors.
    pub fn label_values(
        &self,
        tenant: &str,
        name: &str,
        start_ns: i64,
        end_ns: i64,
    ) -> Result<Vec<String>> {
        let prefix = label_prefix(tenant_or_default(tenant), name);
        let values = self.label_terms(&prefix, LabelPart::Rest, start_ns, end_ns)?;
        Ok(values.into_iter().collect())
    }

    /// What follows `prefix` (ending in the `\0` separator) in the label terms
    /// (`tenant \0 name \0 value`) of the partitions overlapping the range: all of it, or
    /// only up to the next separator. For the latter each part is found once per segment,
    /// by a range starting past every term that shares it, so listing label names costs
    /// one range per name, not one step per value.
    fn label_terms(
        &self,
        prefix: &str,
        part: LabelPart,
        start_ns: i64,
        end_ns: i64,
    ) -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        if start_ns >= end_ns {
            return Ok(out);
        }
        let (lo, hi) = crate::schema::prefix_range(prefix);
        for p in self.overlapping(start_ns, end_ns) {
            let searcher = p.reader.searcher();
            for seg in searcher.segment_readers() {
                let inv = seg.inverted_index(self.fields.labels)?;
                let mut from = lo.clone();
                'seek: loop {
                    let mut stream = inv
                        .terms()
                        .range()
                        .ge(&from)
                        .lt(&hi)
                        .into_stream()
                        .map_err(|e| Error::io(&p.dir, e))?;
                    while stream.advance() {
                        let rest = &stream.key()[lo.len()..];
                        let item = match part {
                            LabelPart::Rest => rest,
                            LabelPart::Name => match rest.iter().position(|&b| b == 0) {
                                Some(end) => &rest[..end],
                                None => continue,
                            },
                        };
                        if let Ok(s) = std::str::from_utf8(item) {
                            if !out.contains(s) {
                                out.insert(s.to_owned());
                            }
                        }
                        if let LabelPart::Name = part {
                            // Past every `prefix name \0 …`: the separator bumped to `\x01`.
                            from.truncate(lo.len());
                            from.extend_from_slice(item);
                            from.push(1);
                            continue 'seek;
                        }
                    }
                    break;
                }
            }
        }
        Ok(out)
    }

    /// A tenant's own retention: deletes `tenant`'s records from every partition whose
    /// time range ends at or before `cutoff_ns` (the other tenants' records stay until the
    /// index's retention drops the whole partition), and commits. Returns how many
    /// partitions held records of the tenant. A partition without any is not touched, so
    /// calling this again costs one count per old partition.
    ///
    /// # Errors
    ///
    /// tantivy and I/O errors, after which the index refuses writes ([`Error::Poisoned`])
    /// until reopened.
    pub fn delete_tenant_before(&self, tenant: &str, cutoff_ns: i64) -> Result<usize> {
        use tantivy::query::{Query as _, TermQuery};
        let mut ws = self.lock_write()?;
        let term = tantivy::Term::from_field_text(self.fields.tenant, tenant);
        let old: Vec<Arc<Partition>> = self
            .read_parts()
            .values()
            .filter(|p| p.key.end_ns() <= cutoff_ns)
            .cloned()
            .collect();
        let mut touched = 0;
        let result = (|| {
            for part in old {
                let q = TermQuery::new(term.clone(), tantivy::schema::IndexRecordOption::Basic);
                // Records added but not committed yet are the writer's to delete too.
                let pending = ws.writers.get(&part.key).is_some_and(|w| w.pending);
                if !pending && q.count(&part.reader.searcher())? == 0 {
                    continue;
                }
                let adding = ws.last_added;
                let w = self.writer_for(&mut ws, part.key, adding, &BTreeSet::new())?;
                w.writer.delete_term(term.clone());
                w.pending = true;
                touched += 1;
                tracing::info!(partition = %part.key.dir_name(), %tenant, "tenant retention deleted its records");
            }
            if touched > 0 {
                self.commit_locked(&mut ws)?;
            }
            Ok(())
        })();
        if result.is_err() {
            ws.poisoned = true;
        }
        result.map(|()| touched)
    }

    /// Retention: deletes every partition whose time range ends at or before `cutoff_ns`,
    /// with any records it had pending, and from then on skips records older than
    /// `cutoff_ns` (so a replay does not bring them back). Returns how many partitions
    /// were deleted.
    ///
    /// # Errors
    ///
    /// I/O errors, after which the index refuses writes ([`Error::Poisoned`]) until
    /// reopened.
    pub fn drop_partitions_before(&self, cutoff_ns: i64) -> Result<usize> {
        let mut ws = self.lock_write()?;
        let doomed: Vec<PartKey> = self
            .read_parts()
            .keys()
            .filter(|k| k.end_ns() <= cutoff_ns)
            .copied()
            .collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let result = (|| {
            // First make the watermark durable: a crash after deleting must not let a
            // replay recreate what was deleted.
            let watermark = ws.dropped_before_ns.max(cutoff_ns);
            self.write_checkpoint(self.checkpoint(), watermark)?;
            ws.dropped_before_ns = watermark;
            for key in &doomed {
                if let Some(w) = ws.writers.remove(key) {
                    // Pending records are expired anyway; drop them uncommitted.
                    drop(w);
                }
                ws.committed.remove(key);
                let part = self
                    .parts
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(key);
                if let Some(part) = part {
                    // Searches holding the partition keep reading their mmaps; the files
                    // go when they finish.
                    fs::remove_dir_all(&part.dir).map_err(|e| Error::io(&part.dir, e))?;
                    tracing::info!(partition = %key.dir_name(), "retention dropped partition");
                }
            }
            fsync_dir(&self.dir)
        })();
        if result.is_err() {
            ws.poisoned = true;
        }
        result.map(|()| doomed.len())
    }

    /// A copy is written only into a directory that does not exist yet.
    fn refuse_existing(&self, dest: &Path, verb: &str) -> Result<()> {
        if dest.exists() {
            return Err(Error::InvalidArgument(format!(
                "cannot {verb} the index of shard {} into {}: it exists",
                self.shard.0,
                dest.display()
            )));
        }
        Ok(())
    }

    /// Writes a consistent copy of this index into `dest` (which must not exist), for
    /// another replica of the same shard, and returns its checkpoint: the copy holds every
    /// record of every entry up to it. Files are hard links where the file system allows
    /// (tantivy never changes a file in place), else copies. What was added is committed
    /// first, and the partition writers are closed so that no merge changes a partition
    /// while it is copied (they reopen on the next `add_batch`). Writes wait meanwhile;
    /// searches do not.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `dest` exists; tantivy and I/O errors.
    pub fn export(&self, dest: &Path) -> Result<u64> {
        self.refuse_existing(dest, "export")?;
        let mut ws = self.lock_write()?;
        let closed: Result<()> = (|| {
            self.commit_locked(&mut ws)?;
            for (_, w) in ws.writers.drain() {
                w.writer.wait_merging_threads()?;
            }
            Ok(())
        })();
        if closed.is_err() {
            ws.poisoned = true;
        }
        closed?;
        link_tree(&self.dir, dest)?;
        Ok(self.checkpoint())
    }

    /// Writes into `dest` (which must not exist) hard links to the files of this index's
    /// last commit, for a replica of the same shard that copies the index instead of
    /// building it (segment replication), and returns the checkpoint they hold. Unlike
    /// [`ShardIndex::export`], nothing is committed and the writers stay open: merges go
    /// on meanwhile. Each partition's files are the segments its `meta.json` lists, read
    /// and linked while tantivy's meta lock is held, so that no garbage collection after a
    /// merge removes one in between; a merge that ends meanwhile changes which segments
    /// hold the records, not which records there are, and commits (which would) wait for
    /// this to finish. The copy's `.managed.json` lists its files, so that a replica that
    /// later writes to it lets tantivy collect them once merged away.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `dest` exists; [`Error::Corrupt`] for a
    /// `meta.json` that does not parse; tantivy and I/O errors (the index is unchanged).
    pub fn publish(&self, dest: &Path) -> Result<u64> {
        self.refuse_existing(dest, "publish")?;
        let ws = self.lock_write()?;
        fs::create_dir(dest).map_err(|e| Error::io(dest, e))?;
        let parts: Vec<Arc<Partition>> = self.read_parts().values().cloned().collect();
        for part in parts {
            publish_partition(&part, &dest.join(part.key.dir_name()))?;
        }
        let checkpoint = self.checkpoint();
        let dropped_before_ns = ws.dropped_before_ns;
        drop(ws);
        let ckpt_path = dest.join(CHECKPOINT_FILE);
        let ckpt = serde_json::to_vec(&CheckpointFile {
            format: CHECKPOINT_FORMAT.into(),
            version: CHECKPOINT_VERSION,
            shard: self.shard.0,
            checkpoint,
            dropped_before_ns,
        })
        .map_err(|e| Error::Corrupt {
            path: ckpt_path.clone(),
            reason: format!("cannot serialise checkpoint: {e}"),
        })?;
        // Not made durable either (see `publish_partition`).
        fs::write(&ckpt_path, ckpt).map_err(|e| Error::io(&ckpt_path, e))?;
        Ok(checkpoint)
    }

    /// The furthest log entry any partition of the copy in `src` (a [`ShardIndex::publish`]
    /// or [`ShardIndex::export`]) holds records of: its partitions' largest commit payload.
    /// It can be past the copy's checkpoint (a writer evicted while an entry was added
    /// commits what it has), so a replica that must not hold records its log has not
    /// committed compares this, not only the checkpoint, with its log.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] for a `meta.json` or payload that does not parse; I/O errors.
    pub fn furthest_entry_of_copy(src: &Path) -> Result<u64> {
        let mut furthest = 0;
        for entry in fs::read_dir(src).map_err(|e| Error::io(src, e))? {
            let entry = entry.map_err(|e| Error::io(src, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if PartKey::parse(&name).is_none() {
                continue;
            }
            let (_, meta) = MetaSegments::read(&entry.path())?;
            furthest = furthest.max(meta.payload(&entry.path())?);
        }
        Ok(furthest)
    }

    /// [`ShardIndex::install`], unless this index holds records added and not committed
    /// yet (its own indexer is writing) or the copy is behind this index: then nothing
    /// changes and `Ok(None)` says so, for the caller to try again later. A copy taken
    /// while this replica was idle therefore never drops records its indexer already
    /// moved past.
    ///
    /// # Errors
    ///
    /// As [`ShardIndex::install`], but a copy behind this index is `Ok(None)`.
    pub fn install_if_idle(&self, src: &Path) -> Result<Option<u64>> {
        self.install_copy(src, true)
    }

    /// Replaces this index by `src`, an [`ShardIndex::export`] of another replica of the
    /// same shard, moved into place (it must be on the same file system). What was added
    /// and not committed is dropped: a replica installs a copy only when it is behind it.
    /// Searches see the new index once this returns. Returns the new checkpoint. A crash
    /// in the middle leaves the old index or the new one (see [`ShardIndex::open`]).
    ///
    /// # Errors
    ///
    /// [`Error::WrongShard`] when `src` is another shard's; [`Error::Corrupt`] when it is
    /// not an index; [`Error::InvalidArgument`] when it is behind this index's
    /// checkpoint; I/O and tantivy errors (the old index then stays).
    pub fn install(&self, src: &Path) -> Result<u64> {
        self.install_copy(src, false)
            .map(|c| c.expect("installed when not required to be idle"))
    }

    fn install_copy(&self, src: &Path, only_if_idle: bool) -> Result<Option<u64>> {
        // Checked before anything changes: a bad copy leaves the index as it was.
        let ckpt_path = src.join(CHECKPOINT_FILE);
        if !ckpt_path.is_file() {
            return Err(Error::Corrupt {
                path: ckpt_path,
                reason: "not an exported index: no checkpoint file".into(),
            });
        }
        // Every partition of the copy opens (schema, files), but the ones this index shows
        // as they are in the copy: those are not opened twice.
        let open_now = self.read_parts().clone();
        let (copy, _, _) = load_reusing(src, self.shard, &self.fields, &open_now)?;
        if !only_if_idle && copy.checkpoint < self.checkpoint() {
            // The indexer only moves forward: what lies between would never be indexed.
            return Err(Error::InvalidArgument(format!(
                "the copy of shard {} is indexed up to {}, behind this index ({})",
                self.shard.0,
                copy.checkpoint,
                self.checkpoint()
            )));
        }
        // Taken even when poisoned: the copy replaces whatever state the writers were in.
        let mut ws = self.write.lock().unwrap_or_else(|p| p.into_inner());
        if ws.closed {
            return Err(Error::Closed { shard: self.shard });
        }
        if only_if_idle
            && (ws.last_added > self.checkpoint() || copy.checkpoint < self.checkpoint())
        {
            return Ok(None);
        }
        for (_, w) in ws.writers.drain() {
            if let Err(e) = w.writer.wait_merging_threads() {
                tracing::debug!(shard = self.shard.0, error = %e, "closing a writer of the replaced index");
            }
        }
        let old = set_aside_path(&self.dir);
        if old.exists() {
            fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        fs::rename(&self.dir, &old).map_err(|e| Error::io(&self.dir, e))?;
        if let Err(e) = fs::rename(src, &self.dir) {
            fs::rename(&old, &self.dir).map_err(|e| Error::io(&self.dir, e))?;
            return Err(Error::io(src, e));
        }
        if let Some(parent) = self.dir.parent() {
            fsync_dir(parent)?;
        }
        // A partition whose segments are those it already shows is kept open: on a
        // replica that installs a copy every second, only the partitions that changed
        // (the newest, and those a merge rewrote) are opened again.
        let open_now = self.read_parts().clone();
        let (ckpt, parts, committed) =
            load_reusing(&self.dir, self.shard, &self.fields, &open_now)?;
        let view = self.view.write().unwrap_or_else(|e| e.into_inner());
        *self.parts.write().unwrap_or_else(|e| e.into_inner()) = parts;
        ws.last_added = ckpt.checkpoint;
        ws.dropped_before_ns = ckpt.dropped_before_ns;
        ws.committed = committed;
        ws.poisoned = false;
        self.checkpoint.store(ckpt.checkpoint, Ordering::Release);
        drop(view);
        if let Err(e) = fs::remove_dir_all(&old) {
            tracing::warn!(path = %old.display(), error = %e, "cannot remove the replaced index");
        }
        tracing::info!(
            shard = self.shard.0,
            checkpoint = ckpt.checkpoint,
            "index replaced by a copy from another replica"
        );
        Ok(Some(ckpt.checkpoint))
    }

    /// Number of searchable (committed) records.
    pub fn doc_count(&self) -> u64 {
        self.read_parts()
            .values()
            .map(|p| p.reader.searcher().num_docs())
            .sum()
    }

    /// Copies the body words of segments no infix lookup has seen yet into the infix
    /// cache (see [`crate::InfixCache::warm`]), so that the first `*fragment*` (or LogQL
    /// needle that is not a whole word) after a commit or a merge does not pay for it.
    /// Returns how many segments were copied.
    ///
    /// # Errors
    /// tantivy and I/O errors reading a term dictionary.
    pub fn warm_infix(&self) -> Result<usize> {
        let parts: Vec<Arc<Partition>> = self.read_parts().values().rev().cloned().collect();
        let mut copied = 0;
        // Newest partition first: that is where needles are looked for most.
        for p in parts {
            if !p.long_tokens_marked {
                continue;
            }
            let searcher = p.reader.searcher();
            for seg in searcher.segment_readers() {
                match self.fields.infix.warm(
                    seg,
                    self.fields.body,
                    self.fields.read_ahead(&p.dir),
                )? {
                    crate::infix::Warmed::Copied => copied += 1,
                    crate::infix::Warmed::Held => {}
                    // Older segments would not fit either: stop asking after every commit.
                    crate::infix::Warmed::Full => return Ok(copied),
                }
            }
        }
        Ok(copied)
    }

    /// Number of time partitions.
    pub fn partition_count(&self) -> usize {
        self.read_parts().len()
    }

    /// The `[start_ns, end_ns)` range of each partition, oldest first.
    pub fn partition_ranges(&self) -> Vec<(i64, i64)> {
        self.read_parts()
            .keys()
            .map(|k| (k.start_ns(), k.end_ns()))
            .collect()
    }

    /// How many partitions searches have opened since this index was opened (a search
    /// opens those its time range overlaps). For metrics and tests.
    pub fn partitions_searched(&self) -> u64 {
        self.partitions_searched.load(Ordering::Relaxed)
    }
}

/// What `open` and `install` read of an index directory: the checkpoint, each partition,
/// and each partition's committed payload. Removes partitions left half-created.
type Loaded = (
    CheckpointFile,
    BTreeMap<PartKey, Arc<Partition>>,
    HashMap<PartKey, u64>,
);

fn load(dir: &Path, shard: ShardId, fields: &Fields) -> Result<Loaded> {
    load_reusing(dir, shard, fields, &BTreeMap::new())
}

/// [`load`], keeping each partition of `open` whose searcher shows exactly the segments
/// (and deletes) the partition's `meta.json` in `dir` lists, instead of opening it again
/// (the partition is then the same files, by name: tantivy never rewrites one).
fn load_reusing(
    dir: &Path,
    shard: ShardId,
    fields: &Fields,
    open: &BTreeMap<PartKey, Arc<Partition>>,
) -> Result<Loaded> {
    let ckpt_path = dir.join(CHECKPOINT_FILE);
    let ckpt = match fs::read(&ckpt_path) {
        Ok(bytes) => {
            let c: CheckpointFile = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                path: ckpt_path.clone(),
                reason: format!("not a checkpoint file: {e}"),
            })?;
            if c.format != CHECKPOINT_FORMAT || c.version != CHECKPOINT_VERSION {
                return Err(Error::Corrupt {
                    path: ckpt_path,
                    reason: format!("unknown format {} version {}", c.format, c.version),
                });
            }
            if c.shard != shard.0 {
                return Err(Error::WrongShard {
                    path: dir.to_path_buf(),
                    expected: shard.0,
                    found: c.shard,
                });
            }
            c
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let c = CheckpointFile {
                format: CHECKPOINT_FORMAT.into(),
                version: CHECKPOINT_VERSION,
                shard: shard.0,
                checkpoint: 0,
                dropped_before_ns: i64::MIN,
            };
            write_ckpt(&ckpt_path, &c)?;
            c
        }
        Err(e) => return Err(Error::io(&ckpt_path, e)),
    };

    let mut parts = BTreeMap::new();
    let mut committed = HashMap::new();
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with(PART_PREFIX) && name.ends_with(".tmp") {
            tracing::info!(path = %path.display(), "removing partition left half-created");
            fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            continue;
        }
        let Some(key) = PartKey::parse(&name) else {
            continue;
        };
        if let Some(p) = open.get(&key).filter(|p| shows_meta(p, &path)) {
            committed.insert(key, p.visible_through.load(Ordering::Acquire));
            parts.insert(key, p.clone());
            continue;
        }
        let part = open_partition(key, path, fields)?;
        let payload = partition_payload(&part)?;
        part.visible_through.store(payload, Ordering::Release);
        committed.insert(key, payload);
        parts.insert(key, Arc::new(part));
    }
    fsync_dir(dir)?;
    Ok((ckpt, parts, committed))
}

/// Where `install` moves the index it replaces until the new one is in place.
fn set_aside_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".old");
    dir.with_file_name(name)
}

/// Recreates the tree `src` in `dst` (which must not exist) with hard links, or copies
/// where the file system cannot link. Skips lock files and half-created partitions.
fn link_tree(src: &Path, dst: &Path) -> Result<()> {
    fs::create_dir(dst).map_err(|e| Error::io(dst, e))?;
    for entry in fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let entry = entry.map_err(|e| Error::io(src, e))?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        let (from, to) = (entry.path(), dst.join(&name));
        let kind = entry.file_type().map_err(|e| Error::io(&from, e))?;
        if kind.is_dir() {
            if !name_str.ends_with(".tmp") {
                link_tree(&from, &to)?;
            }
        } else if kind.is_file()
            && !name_str.ends_with(".lock")
            && fs::hard_link(&from, &to).is_err()
        {
            fs::copy(&from, &to).map_err(|e| Error::io(&to, e))?;
        }
    }
    fsync_dir(dst)
}

/// The extensions of a segment's files (tantivy's `SegmentComponent`s but the deletes,
/// whose file name carries an opstamp, and the temporary store of a merge in progress).
const SEGMENT_FILE_EXTENSIONS: [&str; 6] = ["idx", "pos", "term", "store", "fast", "fieldnorm"];

/// What the copies of an index (`publish_partition`, `shows_meta`,
/// `furthest_entry_of_copy`) read of a partition's `meta.json`.
#[derive(Deserialize)]
struct MetaSegments {
    segments: Vec<MetaSegment>,
    payload: Option<String>,
}

impl MetaSegments {
    /// The `meta.json` in `dir`: its bytes and what they say.
    fn read(dir: &Path) -> Result<(Vec<u8>, MetaSegments)> {
        let path = dir.join("meta.json");
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let meta = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            path,
            reason: format!("not a tantivy meta.json: {e}"),
        })?;
        Ok((bytes, meta))
    }

    /// The commit payload: the log index the partition is complete up to (0 = none).
    fn payload(&self, dir: &Path) -> Result<u64> {
        self.payload.as_deref().map_or(Ok(0), |p| {
            p.parse().map_err(|_| Error::Corrupt {
                path: dir.join("meta.json"),
                reason: format!("commit payload {p:?} is not a log index"),
            })
        })
    }
}

#[derive(Deserialize)]
struct MetaSegment {
    segment_id: String,
    max_doc: u32,
    deletes: Option<MetaDeletes>,
}

impl MetaSegment {
    /// The id its files are named by (`meta.json` holds it hyphenated).
    fn file_id(&self) -> String {
        self.segment_id.replace('-', "")
    }
}

#[derive(Deserialize)]
struct MetaDeletes {
    num_deleted_docs: u32,
    opstamp: u64,
}

/// Whether `part`'s searcher shows exactly the segments, with as many documents each,
/// that the `meta.json` in `dir` lists, and the commit payload it was reloaded at is the
/// one that `meta.json` carries.
fn shows_meta(part: &Partition, dir: &Path) -> bool {
    let Ok((_, meta)) = MetaSegments::read(dir) else {
        return false;
    };
    if meta.payload(dir).ok() != Some(part.visible_through.load(Ordering::Acquire)) {
        return false;
    }
    let listed: BTreeSet<(String, u32)> = meta
        .segments
        .iter()
        .map(|s| {
            let deleted = s.deletes.as_ref().map_or(0, |d| d.num_deleted_docs);
            (s.file_id(), s.max_doc - deleted)
        })
        .collect();
    let shown: BTreeSet<(String, u32)> = part
        .reader
        .searcher()
        .segment_readers()
        .iter()
        .map(|r| (r.segment_id().uuid_string(), r.num_docs()))
        .collect();
    listed == shown
}

/// Links the files of `part`'s last `meta.json` into `dest` (see [`ShardIndex::publish`]).
fn publish_partition(part: &Partition, dest: &Path) -> Result<()> {
    use tantivy::directory::Directory as _;
    fs::create_dir(dest).map_err(|e| Error::io(dest, e))?;
    let _meta_lock = part
        .index
        .directory()
        .acquire_lock(&tantivy::directory::META_LOCK)
        .map_err(|e| Error::Tantivy(tantivy::TantivyError::from(e)))?;
    let (meta, listed) = MetaSegments::read(&part.dir)?;
    let mut files = vec!["meta.json".to_string()];
    for seg in &listed.segments {
        let id = seg.file_id();
        let mut names: Vec<String> = SEGMENT_FILE_EXTENSIONS
            .iter()
            .map(|ext| format!("{id}.{ext}"))
            .collect();
        if let Some(d) = &seg.deletes {
            names.push(format!("{id}.{}.del", d.opstamp));
        }
        for name in names {
            let from = part.dir.join(&name);
            match fs::hard_link(&from, dest.join(&name)) {
                Ok(()) => files.push(name),
                // A component this segment does not have (no positions, say).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => {
                    fs::copy(&from, dest.join(&name)).map_err(|e| Error::io(&from, e))?;
                    files.push(name);
                }
            }
        }
    }
    // Not made durable (here or below): a copy is rebuilt after a crash, and a replica
    // checks every file it takes. Fewer fsyncs while the shard's writes wait.
    let meta_copy = dest.join("meta.json");
    fs::write(&meta_copy, &meta).map_err(|e| Error::io(&meta_copy, e))?;
    if part.long_tokens_marked {
        let marker = dest.join(LONG_TOKENS_MARKED);
        fs::hard_link(part.dir.join(LONG_TOKENS_MARKED), &marker)
            .map_err(|e| Error::io(&marker, e))?;
    }
    let managed = serde_json::to_vec(&files).map_err(|e| Error::Corrupt {
        path: dest.to_path_buf(),
        reason: format!("cannot list the published files: {e}"),
    })?;
    let managed_path = dest.join(".managed.json");
    fs::write(&managed_path, &managed).map_err(|e| Error::io(&managed_path, e))
}

/// One shard's answer to a search before the records of the hits found in the index are
/// read ([`ShardIndex::top_with_head`]): reading a record decompresses its block of the
/// document store, so a node merging its shards' answers into one page reads only the
/// records the page keeps, where each shard's answer holds up to a page of its own.
pub struct ShardTop {
    /// In the request's order; the records of those in `unread` are empty.
    hits: ShardHits,
    /// The hits found in the index: which searched partition holds each, and where.
    unread: HashMap<crate::HitKey, (usize, tantivy::DocAddress)>,
    searchers: Vec<Searcher>,
    dirs: Vec<PathBuf>,
    record: tantivy::schema::Field,
}

impl std::fmt::Debug for ShardTop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardTop")
            .field("hits", &self.hits.hits.len())
            .field("total", &self.hits.total)
            .field("unread", &self.unread.len())
            .finish()
    }
}

impl ShardTop {
    /// The hits, total and head records scanned, for a merge; the records of the hits
    /// for which [`ShardTop::is_unread`] holds are empty. Leaves none here.
    pub fn take_hits(&mut self) -> ShardHits {
        std::mem::take(&mut self.hits)
    }

    /// Whether the hit with `key` was found in the index and its record is still to be
    /// read.
    pub fn is_unread(&self, key: &crate::HitKey) -> bool {
        self.unread.contains_key(key)
    }

    /// Reads the records of the hits `keys` names (those not [`ShardTop::is_unread`] are
    /// skipped), in the order they lie in the index, so that each block of the document
    /// store is decompressed once however the hits are sorted.
    ///
    /// # Errors
    ///
    /// tantivy and I/O errors; [`Error::Corrupt`] for a stored document that is not a
    /// record.
    pub fn read(&self, keys: &[crate::HitKey]) -> Result<Vec<(crate::HitKey, StoredRecord)>> {
        let mut at: Vec<(usize, tantivy::DocAddress, crate::HitKey)> = keys
            .iter()
            .filter_map(|k| self.unread.get(k).map(|&(part, doc)| (part, doc, *k)))
            .collect();
        at.sort_unstable_by_key(|&(part, doc, _)| (part, doc.segment_ord, doc.doc_id));
        let mut streams: Option<(usize, Streams<'_>)> = None;
        at.into_iter()
            .map(|(part, doc, key)| {
                if streams.as_ref().is_none_or(|(p, _)| *p != part) {
                    streams = Some((part, Streams::new(&self.searchers[part])));
                }
                let (_, streams) = streams.as_mut().expect("set above");
                let record = read_record(
                    streams,
                    doc,
                    key.timestamp_ns,
                    self.record,
                    &self.dirs[part],
                )?;
                Ok((key, record))
            })
            .collect()
    }

    /// Every hit with its record.
    ///
    /// # Errors
    ///
    /// As [`ShardTop::read`].
    pub fn into_hits(mut self) -> Result<ShardHits> {
        let keys: Vec<crate::HitKey> = self
            .hits
            .hits
            .iter()
            .map(|h| h.key)
            .filter(|k| self.unread.contains_key(k))
            .collect();
        let mut records: HashMap<crate::HitKey, StoredRecord> =
            self.read(&keys)?.into_iter().collect();
        let mut hits = self.take_hits();
        for h in &mut hits.hits {
            if let Some(r) = records.remove(&h.key) {
                h.record = r;
            }
        }
        Ok(hits)
    }
}

/// The stream columns of one searcher's segments ([`crate::schema::stored_parts`]),
/// opened as its records are read, and the streams last read from them.
struct Streams<'s> {
    searcher: &'s Searcher,
    /// By segment ordinal; `None` for a segment without the column (created before it).
    columns: HashMap<u32, Option<tantivy::columnar::BytesColumn>>,
    /// By segment ordinal and term ordinal: a segment holds a few hundred streams, and a
    /// scan reads each of them many times.
    read: HashMap<(u32, u64), Vec<u8>>,
}

impl<'s> Streams<'s> {
    /// At most this many streams are kept decoded; past it the cache starts over.
    const KEEP: usize = 4096;

    fn new(searcher: &'s Searcher) -> Streams<'s> {
        Streams {
            searcher,
            columns: HashMap::new(),
            read: HashMap::new(),
        }
    }

    /// The stream of document `at`; `None` where its segment has no stream column.
    fn of(&mut self, at: tantivy::DocAddress) -> tantivy::Result<Option<&[u8]>> {
        let column = match self.columns.entry(at.segment_ord) {
            std::collections::hash_map::Entry::Occupied(c) => c.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(
                self.searcher
                    .segment_reader(at.segment_ord)
                    .fast_fields()
                    .bytes(crate::schema::F_STREAM)?,
            ),
        };
        let Some(column) = column else {
            return Ok(None);
        };
        let Some(ord) = column.ords().first(at.doc_id) else {
            return Ok(None);
        };
        if self.read.len() >= Self::KEEP && !self.read.contains_key(&(at.segment_ord, ord)) {
            self.read.clear();
        }
        let bytes = match self.read.entry((at.segment_ord, ord)) {
            std::collections::hash_map::Entry::Occupied(b) => b.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let mut bytes = Vec::new();
                if !column.ord_to_bytes(ord, &mut bytes)? {
                    return Err(tantivy::TantivyError::InternalError(format!(
                        "stream ordinal {ord} of segment {} is not in its dictionary",
                        at.segment_ord
                    )));
                }
                v.insert(bytes)
            }
        };
        Ok(Some(bytes.as_slice()))
    }
}

/// The stored record of document `at` of `streams`' searcher, whose timestamp column holds
/// `timestamp_ns`; [`Error::Corrupt`] naming the partition `dir` when the stored document
/// is not one.
fn read_record(
    streams: &mut Streams<'_>,
    at: tantivy::DocAddress,
    timestamp_ns: i64,
    record: tantivy::schema::Field,
    dir: &Path,
) -> Result<StoredRecord> {
    let d: TantivyDocument = streams.searcher.doc(at)?;
    let stream = streams.of(at)?;
    stored_record(&d, record, timestamp_ns, stream).map_err(|reason| Error::Corrupt {
        path: dir.to_path_buf(),
        reason: format!("document {at:?}: {reason}"),
    })
}

/// Whether a segment whose timestamp column is `ts` holds no record in `range`.
fn outside(ts: &tantivy::columnar::Column<i64>, range: Option<(i64, i64)>) -> bool {
    range.is_some_and(|(start, end)| ts.max_value() < start || ts.min_value() >= end)
}

/// Collects `query`'s matches in `searcher` into `top` (a time sort), returning how many
/// there are. Segments are visited from the one with the newest record (oldest, for an
/// ascending sort); once `top` is full of records newer than everything a segment holds,
/// the segment's matches are only counted (no timestamps read, no candidates ranked). A
/// partition's recent segments then give the page and its large merged ones are counted.
fn search_by_time(
    searcher: &Searcher,
    query: &dyn tantivy::query::Query,
    collector: &TopCollector,
    top: &mut TopN,
    part: usize,
    range: Option<(i64, i64)>,
) -> Result<u64> {
    use tantivy::collector::Collector;
    let weight = query.weight(tantivy::query::EnableScoring::disabled_from_searcher(
        searcher,
    ))?;
    let desc = collector.sort == Sort::TimeDesc;
    let mut segments = Vec::with_capacity(searcher.segment_readers().len());
    for (ord, seg) in searcher.segment_readers().iter().enumerate() {
        let ts = seg.fast_fields().i64(crate::schema::F_TIMESTAMP)?;
        if outside(&ts, range) {
            // No record of the segment is in the time range `query` also holds: skipped
            // before its terms are looked up (a windowed search, as LogQL's pages are,
            // would otherwise read every word's postings in every segment of the
            // partitions at the window's edges).
            continue;
        }
        let edge = if desc { ts.max_value() } else { ts.min_value() };
        segments.push((ord as u32, seg, edge));
    }
    if desc {
        segments.sort_by_key(|s| std::cmp::Reverse(s.2));
    } else {
        segments.sort_by_key(|s| s.2);
    }
    let mut total = 0u64;
    for (ord, seg, edge) in segments {
        if collector.n == 0 || top.cannot_take_timestamp(edge) {
            total += u64::from(weight.count(seg)?);
            continue;
        }
        let found = collector.collect_segment(weight.as_ref(), ord, seg)?;
        total += found.total;
        for c in found.top {
            top.push(Candidate { part, ..c });
        }
    }
    Ok(total)
}

/// Which part of a label term [`ShardIndex::label_terms`] lists.
#[derive(Clone, Copy)]
enum LabelPart {
    /// Up to the next separator: the label name.
    Name,
    /// Everything after the prefix: the value.
    Rest,
}

pub(crate) fn tenant_or_default(t: &str) -> &str {
    if t.is_empty() {
        DEFAULT_TENANT
    } else {
        t
    }
}

fn write_ckpt(path: &Path, c: &CheckpointFile) -> Result<()> {
    let bytes = serde_json::to_vec(c).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        reason: format!("cannot serialise checkpoint: {e}"),
    })?;
    write_atomic(path, &bytes)
}

fn commit_writer(w: &mut IndexWriter<TantivyDocument>, payload: u64) -> Result<()> {
    let mut prepared = w.prepare_commit()?;
    prepared.set_payload(&payload.to_string());
    prepared.commit()?;
    Ok(())
}

fn open_partition(key: PartKey, dir: PathBuf, fields: &Fields) -> Result<Partition> {
    // With random_access_maps, mapped for random access but for the columns
    // (crate::advised); else with the kernel's default advice, as tantivy maps them.
    let index = if fields.random_access_maps {
        Index::open(crate::advised::AdvisedDirectory::open(&dir)?)?
    } else {
        Index::open_in_dir(&dir)?
    };
    if !crate::schema::compatible(&index.schema(), &fields.schema) {
        return Err(Error::Corrupt {
            path: dir,
            reason: "partition was written with another schema".into(),
        });
    }
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()?;
    Ok(Partition {
        key,
        long_tokens_marked: dir.join(LONG_TOKENS_MARKED).exists(),
        dir,
        index,
        reader,
        visible_through: AtomicU64::new(0),
    })
}

fn partition_payload(p: &Partition) -> Result<u64> {
    let meta = p.index.load_metas()?;
    match meta.payload {
        None => Ok(0),
        Some(s) => s.parse().map_err(|_| Error::Corrupt {
            path: p.dir.join("meta.json"),
            reason: format!("commit payload {s:?} is not a log index"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::parse_query;
    use crate::SearchRequest;

    const T0: i64 = 1_700_000_000_000_000_000;
    const HOUR: i64 = 3_600_000_000_000;

    fn rec(ts: i64, pod: &str, body: &str) -> StoredRecord {
        let mut r = StoredRecord {
            timestamp_ns: ts,
            level: 3,
            body: body.into(),
            service: "api".into(),
            namespace: "prod".into(),
            pod: pod.into(),
            cluster: "eu-1".into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            ..Default::default()
        };
        r.labels.insert("env".into(), "live".into());
        r.attributes.insert("user".into(), body.len().to_string());
        r
    }

    fn batch(records: Vec<StoredRecord>) -> StoredBatch {
        StoredBatch {
            tenant: "acme".into(),
            records,
            received_ns: 0,
        }
    }

    fn all() -> SearchRequest {
        SearchRequest {
            query: parse_query("*").unwrap(),
            tenant: "acme".into(),
            start_ns: i64::MIN,
            end_ns: i64::MAX,
            levels: vec![],
            limit: 1000,
            sort: Sort::TimeAsc,
            after: None,
            prefilter: false,
        }
    }

    /// Every record `ix` holds, by page and by scan, which must agree, oldest first.
    fn records(ix: &ShardIndex) -> Vec<StoredRecord> {
        let page: Vec<StoredRecord> = ix
            .search(&all())
            .unwrap()
            .hits
            .into_iter()
            .map(|h| h.record)
            .collect();
        let mut scanned = Vec::new();
        ix.scan_with_head(&all(), &[], 7, &mut |b| {
            scanned.extend(b);
            true
        })
        .unwrap();
        scanned.sort_by_key(|r| r.timestamp_ns);
        assert_eq!(scanned, page, "a scan reads what a page reads");
        page
    }

    /// Rewrites partition `key` of the index in `dir` as a release before the stream
    /// column wrote it: the schema without the column, whole records in the document
    /// store, the same records and commit payload.
    fn rewrite_without_streams(dir: &Path, key: PartKey, records: &[StoredRecord], entry: u64) {
        let fields = Fields::new(Arc::new(crate::InfixCache::new(0)), false);
        let mut b = tantivy::schema::Schema::builder();
        for (_, e) in fields.schema.fields() {
            if e.name() != crate::schema::F_STREAM {
                b.add_field(e.clone());
            }
        }
        let old = b.build();
        assert!(crate::schema::compatible(&old, &fields.schema));
        let part = dir.join(key.dir_name());
        fs::remove_dir_all(&part).unwrap();
        fs::create_dir(&part).unwrap();
        fs::write(part.join(LONG_TOKENS_MARKED), b"").unwrap();
        let index = Index::builder()
            .schema(old)
            .settings(tantivy::IndexSettings {
                docstore_blocksize: DOCSTORE_BLOCK_BYTES,
                ..Default::default()
            })
            .create_in_dir(&part)
            .unwrap();
        let mut w: IndexWriter<TantivyDocument> =
            index.writer_with_num_threads(1, 15 << 20).unwrap();
        for (offset, r) in records.iter().enumerate() {
            let layout = crate::schema::Layout {
                streams: false,
                repeated: None,
            };
            w.add_document(fields.document("acme", entry, offset as u32, r, &layout))
                .unwrap();
        }
        commit_writer(&mut w, entry).unwrap();
    }

    /// Partitions created before the stream column open, read back their whole stored
    /// records exactly, and go on taking (whole) records; partitions created now keep each
    /// distinct stream once in the column and read back the same records.
    #[test]
    fn partitions_before_the_stream_column_read_and_take_records_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let first = vec![
            rec(T0 + 1, "api-1", "first one"),
            rec(T0 + 2, "api-2", "first two"),
        ];
        let key = PartKey::for_timestamp(T0, 3600);
        {
            let ix = ShardIndex::open(dir.path(), ShardId(0), IndexOptions::default()).unwrap();
            ix.add_batch(1, &batch(first.clone())).unwrap();
            ix.commit().unwrap();
        }
        rewrite_without_streams(dir.path(), key, &first, 1);
        let ix = ShardIndex::open(dir.path(), ShardId(0), IndexOptions::default()).unwrap();
        assert_eq!(records(&ix), first, "whole stored records read back");

        // More records into the old partition, and some into a new one an hour later.
        let later = vec![
            rec(T0 + 3, "api-1", "second one"),
            rec(T0 + HOUR, "api-1", "next hour"),
        ];
        ix.add_batch(2, &batch(later.clone())).unwrap();
        ix.commit().unwrap();
        let mut want = first.clone();
        want.extend(later);
        assert_eq!(records(&ix), want);

        let schema_of = |key: PartKey| {
            Index::open_in_dir(dir.path().join(key.dir_name()))
                .unwrap()
                .schema()
        };
        assert!(
            schema_of(key).get_field(crate::schema::F_STREAM).is_err(),
            "an old partition keeps its schema"
        );
        let new_key = PartKey::for_timestamp(T0 + HOUR, 3600);
        assert!(schema_of(new_key)
            .get_field(crate::schema::F_STREAM)
            .is_ok());

        // The new partition's streams: one distinct value per stream, not per record.
        let many: Vec<StoredRecord> = (0..50)
            .map(|i| {
                rec(
                    T0 + HOUR + 10 + i,
                    ["api-1", "api-2"][i as usize % 2],
                    "many",
                )
            })
            .collect();
        ix.add_batch(3, &batch(many.clone())).unwrap();
        ix.commit().unwrap();
        want.extend(many);
        assert_eq!(records(&ix), want);
        let part = Index::open_in_dir(dir.path().join(new_key.dir_name())).unwrap();
        let searcher = part.reader().unwrap().searcher();
        let streams: usize = searcher
            .segment_readers()
            .iter()
            .map(|s| {
                s.fast_fields()
                    .bytes(crate::schema::F_STREAM)
                    .unwrap()
                    .expect("a stream column")
                    .num_terms()
            })
            .sum();
        assert!(
            streams <= 2 * searcher.segment_readers().len(),
            "{streams} streams in {} segments",
            searcher.segment_readers().len()
        );
    }

    /// Every `attrs` term of partition `key` of the index in `dir`.
    fn attr_terms(dir: &Path, key: PartKey) -> BTreeSet<String> {
        let index = Index::open_in_dir(dir.join(key.dir_name())).unwrap();
        let attrs = index.schema().get_field("attrs").unwrap();
        let searcher = index.reader().unwrap().searcher();
        let mut out = BTreeSet::new();
        for seg in searcher.segment_readers() {
            let inverted = seg.inverted_index(attrs).unwrap();
            let mut terms = inverted.terms().stream().unwrap();
            while terms.advance() {
                out.insert(String::from_utf8_lossy(terms.key()).into_owned());
            }
        }
        out
    }

    /// An id-like value held by one record of its batch is indexed by key; one that several
    /// records of the batch hold (a pod's uid) whole, so that its lookup reads no records;
    /// a partition created before the stream column indexes every value whole. Each is
    /// found by its lookup.
    #[test]
    fn id_like_values_are_keyed_when_unique_in_their_batch_in_partitions_with_streams() {
        const POD_UID: &str = "123e4567-e89b-12d3-a456-426614174000";
        let dir = tempfile::tempdir().unwrap();
        let old_key = PartKey::for_timestamp(T0, 3600);
        {
            let ix = ShardIndex::open(dir.path(), ShardId(0), IndexOptions::default()).unwrap();
            ix.add_batch(1, &batch(vec![rec(T0, "api-1", "seed")]))
                .unwrap();
            ix.commit().unwrap();
        }
        rewrite_without_streams(dir.path(), old_key, &[rec(T0, "api-1", "seed")], 1);
        let ix = ShardIndex::open(dir.path(), ShardId(0), IndexOptions::default()).unwrap();
        let with = |ts: i64, request: &str| {
            let mut r = rec(ts, "api-1", "work");
            r.attributes.insert("request_id".into(), request.into());
            r.attributes.insert("pod_uid".into(), POD_UID.into());
            r
        };
        let requests = ["00f067aa0ba902b7", "4bf92f3577b34da6"];
        ix.add_batch(
            2,
            &batch(vec![
                with(T0 + 1, requests[0]),
                with(T0 + HOUR, requests[0]),
                with(T0 + HOUR + 1, requests[1]),
            ]),
        )
        .unwrap();
        ix.commit().unwrap();
        let new_key = PartKey::for_timestamp(T0 + HOUR, 3600);
        let new_terms = attr_terms(dir.path(), new_key);
        // Repeated in the batch (across partitions too): whole.
        assert!(
            new_terms.contains(&format!("pod_uid\0{POD_UID}")),
            "{new_terms:?}"
        );
        assert!(new_terms.contains(&format!("request_id\0{}", requests[0])));
        // Once in the batch: keyed.
        assert!(new_terms.contains(&crate::idkey::attr_key_term("request_id", requests[1])));
        assert!(!new_terms.contains(&format!("request_id\0{}", requests[1])));
        // The old partition: whole values only, as its release indexed them.
        let old_terms = attr_terms(dir.path(), old_key);
        assert!(
            old_terms
                .iter()
                .all(|t| !t.contains('\x01') && !t.contains('\x02')),
            "{old_terms:?}"
        );
        for (q, n) in [
            (format!("pod_uid:{POD_UID}"), 3),
            (format!("request_id:{}", requests[0]), 2),
            (format!("request_id:{}", requests[1]), 1),
            ("request_id:4bf92f*".to_string(), 1),
            ("request_id:00f*".to_string(), 2),
        ] {
            let mut r = all();
            r.query = parse_query(&q).unwrap();
            assert_eq!(ix.search(&r).unwrap().total, n, "{q}");
        }
    }
}
