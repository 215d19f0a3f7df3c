//! The log of one shard: the single writer ([`Wal`]) and its readers
//! ([`WalReader`]).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::durable;
use crate::format::{
    self, Frame, SegmentHeader, FRAME_PREFIX_LEN, HEADER_FLAG_RESET, HEADER_LEN, MAX_META_BYTES,
    MAX_PAYLOAD_BYTES, SEAL_FRAME_LEN, SHORT_BODY_PREFIX,
};
use crate::index::{IndexMap, Loc};
use crate::io::{IoThread, Job, SyncTicket, WalIo, Write};
use crate::{Error, Result, WalOptions};

/// File name of segment `seq`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

/// A read-only memory map of one segment file.
pub(crate) struct SegMap {
    pub path: Arc<Path>,
    map: memmap2::MmapRaw,
}

impl SegMap {
    pub fn new(file: &File, path: Arc<Path>) -> Result<SegMap> {
        let map = memmap2::MmapOptions::new()
            .map_raw_read_only(file)
            .map_err(|e| Error::io(path.to_path_buf(), e))?;
        Ok(SegMap { path, map })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The bytes `[offset, offset + len)` of the file.
    ///
    /// # Safety
    ///
    /// The caller guarantees that nobody writes this range of the file while
    /// the returned slice lives, and that the file is not shrunk below it.
    pub unsafe fn bytes(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len)?;
        if end > self.map.len() {
            return None;
        }
        // SAFETY: `start..end` is inside the mapping (checked above), which
        // lives as long as `self`; immutability of the range is the caller's
        // contract.
        Some(unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(start), len) })
    }
}

/// A segment as the writer sees it.
pub(crate) struct Segment {
    pub seq: u64,
    pub path: Arc<Path>,
    pub file: Arc<File>,
    /// Preallocated size of the file.
    pub size: u64,
    /// End of the staged (or recovered) frames.
    pub write_pos: u64,
    /// Ends with a seal frame (staged or on disk): nothing more goes in.
    pub sealed: bool,
    pub map: Arc<SegMap>,
}

/// Creates and preallocates segment `seq` and maps it. Nothing is written.
pub(crate) fn create_segment(dir: &Path, seq: u64, size: u64) -> Result<Segment> {
    let path: Arc<Path> = segment_path(dir, seq).into();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io(path.to_path_buf(), e))?;
    let made = durable::preallocate(&file, size)
        .map_err(|e| Error::io(path.to_path_buf(), e))
        .and_then(|()| SegMap::new(&file, path.clone()));
    match made {
        Ok(map) => Ok(Segment {
            seq,
            path,
            file: Arc::new(file),
            size,
            write_pos: 0,
            sealed: false,
            map: Arc::new(map),
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

// ---------------------------------------------------------------- reader state

/// What readers see: durable entries only.
pub(crate) struct ReaderState {
    pub index: IndexMap,
    pub maps: BTreeMap<u64, Arc<SegMap>>,
    /// Segment holding the end of the durable data: every earlier segment is
    /// completely written and synced.
    pub durable_seq: u64,
}

/// Reader state shared between the writer, the I/O thread and readers.
pub(crate) struct Shared {
    state: RwLock<ReaderState>,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, ReaderState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, ReaderState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the entries of a job that is now durable.
    pub fn publish(&self, updates: &[(u64, Loc)], end_seq: Option<u64>) {
        let mut st = self.write();
        for &(index, loc) in updates {
            // Same sequence the writer applied (jobs of a log complete in order).
            if let Err(expected) = st.index.apply(index, loc) {
                panic!("wal reader state diverged: entry {index} published, expected {expected}");
            }
        }
        if let Some(seq) = end_seq {
            st.durable_seq = st.durable_seq.max(seq);
        }
    }
}

// ---------------------------------------------------------------- writer

/// One shard's log. Single writer (`&mut self`); readers through
/// [`WalReader`]. Dropping it waits for its running flushes and discards what
/// is staged but not flushed.
pub struct Wal {
    dir: Arc<Path>,
    opts: WalOptions,
    io: Arc<IoThread>,
    wio: Arc<WalIo>,
    /// Oldest first; the last one is the active segment. Never empty.
    segments: Vec<Segment>,
    index: IndexMap,
    /// After a reset (or recovery of one) with no entry yet: the index the
    /// next append must have.
    expected_next: Option<u64>,
    meta: Option<Vec<u8>>,
    staged: Vec<Write>,
    staged_updates: Vec<(u64, Loc)>,
    staged_first_frame: Option<(usize, usize)>,
    staged_sync_dir: bool,
    next_seq: u64,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("first_index", &self.first_index())
            .field("last_index", &self.last_index())
            .field("segments", &self.segments.len())
            .finish()
    }
}

impl Wal {
    /// Opens or creates the log in `dir` (creating `dir`).
    ///
    /// Recovery scans the segments in order. A torn tail (bad frames followed
    /// only by frames of the same unacknowledged write round) is truncated at
    /// the last valid frame, with a warning naming the file and offset.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] naming the file and offset when a bad frame is
    /// followed by data written after it had been synced (a hole: the node
    /// must not serve this log), on a bad segment header followed by such
    /// data, or on a
    /// gap in the indexes. I/O errors.
    pub fn open(dir: &Path, opts: WalOptions, io: Arc<IoThread>) -> Result<Wal> {
        let rec = crate::recovery::recover(dir, &opts)?;
        let durable_seq = rec.segments.iter().map(|s| s.seq).max().unwrap_or(0);
        let shared = Arc::new(Shared {
            state: RwLock::new(ReaderState {
                index: rec.index.clone(),
                maps: rec
                    .segments
                    .iter()
                    .map(|s| (s.seq, s.map.clone()))
                    .collect(),
                durable_seq,
            }),
        });
        let mut wal = Wal {
            dir: dir.into(),
            opts,
            io,
            wio: Arc::new(WalIo::new(shared)),
            segments: rec.segments,
            index: rec.index,
            expected_next: rec.expected_next,
            meta: rec.meta,
            staged: Vec::new(),
            staged_updates: Vec::new(),
            staged_first_frame: None,
            staged_sync_dir: false,
            next_seq: rec.next_seq,
        };
        let meta_seq = rec.meta_seq;
        if wal.segments.last().is_none_or(|s| s.sealed) {
            // Written synchronously, so that a segment header is never part
            // of a round whose BATCH_START frame lies in the same segment
            // (recovery of a torn header relies on it).
            let base = wal
                .index
                .last()
                .map(|l| l + 1)
                .or(wal.expected_next)
                .unwrap_or(0);
            let seg = wal.create_synced_segment(0, base)?;
            let mut st = wal.wio.shared.write();
            st.maps.insert(seg.seq, seg.map.clone());
            st.durable_seq = seg.seq;
            drop(st);
            wal.segments.push(seg);
        } else if let (Some(meta), Some(active)) = (wal.meta.clone(), wal.segments.last()) {
            // Every segment starts with the meta current when it was created, and a later
            // meta lands in the active segment, so the newest meta is always in the newest
            // segment, which gc never removes. A torn tail cut away by recovery can take
            // the active segment's copy with it while an older segment still holds one:
            // write it again now, before gc may remove that older segment (the WAL model
            // test found the meta gone after a crash, a gc and a reopen).
            if meta_seq != Some(active.seq) {
                wal.set_meta(&meta)?;
                wal.flush()?.wait()?;
            }
        }
        tracing::debug!(dir = %dir.display(), first = ?wal.first_index(), last = ?wal.last_index(), segments = wal.segments.len(), "wal opened");
        Ok(wal)
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// First index (staged entries included); `None` when empty.
    pub fn first_index(&self) -> Option<u64> {
        self.index.first()
    }

    /// Last index (staged entries included); `None` when empty.
    pub fn last_index(&self) -> Option<u64> {
        self.index.last()
    }

    /// Stages an entry at the tail. `index` must be `last_index + 1`, or
    /// anything when the log is empty (the first append sets the base; after
    /// [`reset`](Self::reset) it must be the index given there). An index in
    /// `[first_index, last_index]` truncates the suffix from `index` first
    /// (raft conflict resolution); recovery reproduces that.
    ///
    /// May roll to a new segment: creates and preallocates a file (no sync;
    /// that is done by the next flush).
    ///
    /// # Errors
    ///
    /// [`Error::OutOfOrder`] on a gap or below the first index,
    /// [`Error::TooLarge`] above [`MAX_PAYLOAD_BYTES`], [`Error::DiskFull`] if
    /// a new segment cannot be allocated. On error nothing is staged.
    pub fn append(&mut self, index: u64, payload: &[u8]) -> Result<()> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(Error::TooLarge {
                what: "entry",
                len: payload.len(),
                max: MAX_PAYLOAD_BYTES,
            });
        }
        match (self.index.first(), self.index.last()) {
            (Some(first), Some(last)) => {
                if index > last + 1 || index < first {
                    return Err(Error::OutOfOrder {
                        expected: last + 1,
                        got: index,
                    });
                }
            }
            _ => {
                if let Some(expected) = self.expected_next {
                    if index != expected {
                        return Err(Error::OutOfOrder {
                            expected,
                            got: index,
                        });
                    }
                }
            }
        }
        let min = self.opts.compress_min_bytes;
        let loc =
            self.stage_frame(&|buf, bs| format::encode_entry(buf, index, payload, min, bs))?;
        if let Err(expected) = self.index.apply(index, loc) {
            // Checked above; the index map must agree.
            panic!("wal index map rejected entry {index} (expected {expected}) after validation");
        }
        self.staged_updates.push((index, loc));
        self.expected_next = None;
        Ok(())
    }

    /// Stages a meta blob, durable with the next flush. [`meta`](Self::meta)
    /// and recovery return the latest one; it is rewritten at the head of
    /// every new segment so that the GC never loses it.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] above [`MAX_META_BYTES`] (64 KiB),
    /// [`Error::DiskFull`] if a new segment cannot be allocated.
    pub fn set_meta(&mut self, meta: &[u8]) -> Result<()> {
        if meta.len() > MAX_META_BYTES {
            return Err(Error::TooLarge {
                what: "meta",
                len: meta.len(),
                max: MAX_META_BYTES,
            });
        }
        let min = self.opts.compress_min_bytes;
        self.stage_frame(&|buf, bs| format::encode_meta(buf, meta, min, bs))?;
        self.meta = Some(meta.to_vec());
        Ok(())
    }

    /// The latest meta blob set (staged or durable).
    pub fn meta(&self) -> Option<Vec<u8>> {
        self.meta.clone()
    }

    /// Hands everything staged to the I/O thread (write + one fdatasync per
    /// file touched) and returns at once; the ticket completes when it is
    /// durable. Flushing several logs and then waiting all tickets runs their
    /// syncs concurrently. A flush issued while this log's previous one runs
    /// is merged with any other waiting one and covered by one sync.
    ///
    /// Blocks only when the I/O thread's bounded queue is full (more than
    /// `QUEUE_BOUND` logs flushing at once).
    ///
    /// # Errors
    ///
    /// None today: failures are reported by [`SyncTicket::wait`]; the data
    /// then stays staged and the next flush retries it.
    pub fn flush(&mut self) -> Result<SyncTicket> {
        let writes = std::mem::take(&mut self.staged);
        let end_seq = writes.last().map(|w| w.seq);
        let job = Job {
            writes,
            sync_dir: std::mem::take(&mut self.staged_sync_dir).then(|| self.dir.clone()),
            updates: std::mem::take(&mut self.staged_updates),
            end_seq,
            first_frame: self.staged_first_frame.take(),
            done: Vec::new(),
        };
        Ok(self.wio.submit(&self.io, job))
    }

    /// Drops whole segments whose entries are all below `index`: only a
    /// prefix of the segments, only ones completely durable, never the
    /// active one, nor the ones holding the last entry and the last
    /// durable entry. Returns the bytes
    /// freed. Readers stop seeing the dropped entries at once.
    ///
    /// # Errors
    ///
    /// I/O errors removing files or syncing the directory.
    pub fn remove_segments_below(&mut self, index: u64) -> Result<u64> {
        let Some(last_seq) = self.index.last_loc().map(|l| l.seq) else {
            return Ok(0);
        };
        let n = {
            let st = self.wio.shared.read();
            let mut n = 0;
            for seg in &self.segments[..self.segments.len() - 1] {
                let below = |m: &IndexMap| {
                    m.last_index_in_segments_upto(seg.seq)
                        .is_none_or(|i| i < index)
                };
                // Keep the segments holding the last staged and the last
                // durable entry, so that neither this log nor a recovered one
                // is ever emptied by the gc.
                let durable_last_seq = st.index.last_loc().map_or(0, |l| l.seq);
                if seg.seq >= st.durable_seq
                    || seg.seq >= last_seq
                    || seg.seq >= durable_last_seq
                    || !below(&self.index)
                    || !below(&st.index)
                {
                    break;
                }
                n += 1;
            }
            n
        };
        if n == 0 {
            return Ok(0);
        }
        let upto = self.segments[n - 1].seq;
        {
            let mut st = self.wio.shared.write();
            st.index.drop_segments_upto(upto);
            st.maps.retain(|&seq, _| seq > upto);
        }
        self.index.drop_segments_upto(upto);
        assert!(self.index.first().is_some(), "gc must never empty the log");
        let mut freed = 0;
        for seg in self.segments.drain(..n) {
            std::fs::remove_file(&seg.path).map_err(|e| Error::io(seg.path.to_path_buf(), e))?;
            freed += seg.size;
        }
        durable::fsync_dir(&self.dir).map_err(|e| Error::io(self.dir.to_path_buf(), e))?;
        tracing::debug!(dir = %self.dir.display(), below = index, segments = n, freed_bytes = freed, "wal segments removed");
        Ok(freed)
    }

    /// Drops everything (staged and durable); the next append must be at
    /// `next_index`. Used when a raft snapshot replaces the log. Synchronous:
    /// waits for running flushes, writes and syncs a new segment marked
    /// RESET (with the current meta), then deletes the old ones.
    ///
    /// # Errors
    ///
    /// I/O errors ([`Error::DiskFull`]); the log is then unchanged.
    pub fn reset(&mut self, next_index: u64) -> Result<()> {
        self.wio.wait_idle();
        let seg = self.create_synced_segment(HEADER_FLAG_RESET, next_index)?;
        let seq = seg.seq;
        // The RESET segment is durable: from here on, recovery ignores the old ones.
        self.wio.discard_carry();
        self.staged.clear();
        self.staged_updates.clear();
        self.staged_first_frame = None;
        self.staged_sync_dir = false;
        self.index.clear();
        self.expected_next = Some(next_index);
        {
            let mut st = self.wio.shared.write();
            st.index.clear();
            st.maps.clear();
            st.maps.insert(seq, seg.map.clone());
            st.durable_seq = seq;
        }
        let old = std::mem::replace(&mut self.segments, vec![seg]);
        for s in old {
            std::fs::remove_file(&s.path).map_err(|e| Error::io(s.path.to_path_buf(), e))?;
        }
        durable::fsync_dir(&self.dir).map_err(|e| Error::io(self.dir.to_path_buf(), e))?;
        tracing::info!(dir = %self.dir.display(), next_index, "wal reset");
        Ok(())
    }

    /// A reader of the durable entries, cheap to clone and share.
    pub fn reader(&self) -> WalReader {
        WalReader {
            shared: self.wio.shared.clone(),
        }
    }

    /// Bytes the segment files take (preallocated sizes).
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// Fault injection for tests: while `Some(errno)`, the I/O thread fails
    /// this log's writes with that errno (e.g. `libc::ENOSPC`).
    #[doc(hidden)]
    pub fn inject_write_error(&self, errno: Option<i32>) {
        self.wio.set_fail_errno(errno);
    }

    /// Fault injection for tests, usable from another thread than the writer's (a writer
    /// blocked retrying a full disk cannot be told to heal through its own queue). Only
    /// with the `testing` feature.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn fault_injector(&self) -> FaultInjector {
        FaultInjector(self.wio.clone())
    }

    /// The active segment and the end of what is staged in it (after a
    /// waited flush with nothing staged since: the durable end). Tests.
    #[doc(hidden)]
    pub fn write_position(&self) -> (PathBuf, u64) {
        let s = self
            .segments
            .last()
            .expect("a wal always has an active segment");
        (s.path.to_path_buf(), s.write_pos)
    }

    /// Paths of the segment files, oldest first (tests and tools).
    #[doc(hidden)]
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.to_path_buf()).collect()
    }

    /// The size of the next segment: twice the last one's, from
    /// [`crate::FIRST_SEGMENT_BYTES`] up to `segment_size_bytes` (whole pages).
    fn next_segment_size(&self) -> u64 {
        let max = self.opts.segment_size_bytes.max(4096);
        let first = crate::FIRST_SEGMENT_BYTES.min(max);
        let size = match self.segments.last() {
            None => first,
            Some(s) => s.size.saturating_mul(2).clamp(first, max),
        };
        size.div_ceil(4096) * 4096
    }

    /// Creates segment `next_seq` and writes its header and the current meta
    /// synchronously (file and directory synced).
    fn create_synced_segment(&mut self, flags: u32, base_index: u64) -> Result<Segment> {
        let seq = self.next_seq;
        let mut seg = create_segment(&self.dir, seq, self.next_segment_size())?;
        self.next_seq += 1;
        let mut buf = SegmentHeader {
            flags,
            seq,
            base_index,
        }
        .encode()
        .to_vec();
        if let Some(meta) = &self.meta {
            format::encode_meta(&mut buf, meta, self.opts.compress_min_bytes, true);
        }
        let written = seg
            .file
            .write_all_at(&buf, 0)
            .and_then(|()| seg.file.sync_data())
            .and_then(|()| durable::fsync_dir(&self.dir));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&seg.path);
            return Err(Error::io(seg.path.to_path_buf(), e));
        }
        seg.write_pos = buf.len() as u64;
        Ok(seg)
    }

    /// The staging buffer at the write position of the active segment.
    fn write_buf(&mut self) -> usize {
        let Some(seg) = self.segments.last() else {
            unreachable!("a wal always has an active segment")
        };
        if let Some(w) = self.staged.last() {
            if w.seq == seg.seq && w.offset + w.data.len() as u64 == seg.write_pos {
                return self.staged.len() - 1;
            }
        }
        self.staged.push(Write {
            file: seg.file.clone(),
            path: seg.path.clone(),
            seq: seg.seq,
            offset: seg.write_pos,
            data: Vec::new(),
        });
        self.staged.len() - 1
    }

    /// Stages a frame in the active segment without checking that it fits
    /// (room for it was reserved).
    fn stage_unchecked(&mut self, enc: &dyn Fn(&mut Vec<u8>, bool) -> usize) -> Loc {
        let batch_start = self.staged_first_frame.is_none();
        let wi = self.write_buf();
        let before = self.staged[wi].data.len();
        let len = enc(&mut self.staged[wi].data, batch_start);
        self.commit_staged(wi, before, len, batch_start)
    }

    fn commit_staged(&mut self, wi: usize, before: usize, len: usize, batch_start: bool) -> Loc {
        if batch_start {
            self.staged_first_frame = Some((wi, before));
        }
        let Some(seg) = self.segments.last_mut() else {
            unreachable!("a wal always has an active segment")
        };
        let loc = Loc {
            seq: seg.seq,
            offset: seg.write_pos,
            len: len as u32,
        };
        seg.write_pos += len as u64;
        assert!(
            seg.write_pos <= seg.size,
            "frame staged past the end of segment {}",
            seg.path.display()
        );
        loc
    }

    /// Stages a frame, rolling to a new segment when it does not fit (room
    /// for the seal frame is always kept).
    fn stage_frame(&mut self, enc: &dyn Fn(&mut Vec<u8>, bool) -> usize) -> Result<Loc> {
        let batch_start = self.staged_first_frame.is_none();
        let wi = self.write_buf();
        let before = self.staged[wi].data.len();
        let len = enc(&mut self.staged[wi].data, batch_start);
        let Some(seg) = self.segments.last() else {
            unreachable!("a wal always has an active segment")
        };
        if seg.write_pos + (len + SEAL_FRAME_LEN) as u64 <= seg.size {
            return Ok(self.commit_staged(wi, before, len, batch_start));
        }
        // Does not fit: take it back, roll, encode again in the new segment
        // (the batch-start flag may differ now; the length does not).
        self.staged[wi].data.truncate(before);
        if self.staged[wi].data.is_empty() {
            self.staged.pop();
        }
        self.roll(len)?;
        Ok(self.stage_unchecked(enc))
    }

    /// Creates the next segment (room for a frame of `frame_len`), seals
    /// the active one and stages the new header and meta.
    fn roll(&mut self, frame_len: usize) -> Result<()> {
        let meta_len = self
            .meta
            .as_ref()
            .map_or(0, |m| FRAME_PREFIX_LEN + SHORT_BODY_PREFIX + m.len());
        let need = (HEADER_LEN + meta_len + frame_len + SEAL_FRAME_LEN) as u64;
        let size = self.next_segment_size().max(need.div_ceil(4096) * 4096);
        let seq = self.next_seq;
        let mut seg = create_segment(&self.dir, seq, size)?;
        self.next_seq += 1;
        if self.segments.last().is_some_and(|s| !s.sealed) {
            self.stage_unchecked(&|buf, bs| format::encode_seal(buf, bs));
            if let Some(s) = self.segments.last_mut() {
                s.sealed = true;
            }
        }
        let base_index = self
            .index
            .last()
            .map(|l| l + 1)
            .or(self.expected_next)
            .unwrap_or(0);
        let header = SegmentHeader {
            flags: 0,
            seq,
            base_index,
        }
        .encode();
        self.wio.shared.write().maps.insert(seq, seg.map.clone());
        seg.write_pos = HEADER_LEN as u64;
        self.staged.push(Write {
            file: seg.file.clone(),
            path: seg.path.clone(),
            seq,
            offset: 0,
            data: header.to_vec(),
        });
        self.segments.push(seg);
        self.staged_sync_dir = true;
        if let Some(meta) = self.meta.clone() {
            let min = self.opts.compress_min_bytes;
            self.stage_unchecked(&|buf, bs| format::encode_meta(buf, &meta, min, bs));
        }
        Ok(())
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.wio.wait_idle();
    }
}

// ---------------------------------------------------------------- readers

/// Reads durable entries (flushed and synced) through memory maps while the
/// writer keeps appending on another thread. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct WalReader {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalReader")
            .field("first_index", &self.first_index())
            .field("durable_last_index", &self.durable_last_index())
            .finish()
    }
}

impl WalReader {
    /// The decompressed payload of entry `index`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] outside `[first_index, durable_last_index]`;
    /// [`Error::Corrupt`] if the frame fails its checks (crc, index).
    pub fn read(&self, index: u64) -> Result<Vec<u8>> {
        let (loc, map) = {
            let st = self.shared.read();
            let loc = st.index.get(index).ok_or(Error::NotFound { index })?;
            let map = st.maps.get(&loc.seq).cloned();
            (loc, map)
        };
        let Some(map) = map else {
            return Err(Error::Corrupt {
                path: PathBuf::from(format!("<segment {}>", loc.seq)),
                offset: loc.offset,
                reason: format!("entry {index} points to a segment that is not mapped"),
            });
        };
        let corrupt = |reason: String| Error::Corrupt {
            path: map.path.to_path_buf(),
            offset: loc.offset,
            reason,
        };
        // SAFETY: this frame's location was published to the reader state only
        // after the I/O thread had written and fdatasynced it. The writer
        // never writes a range twice once published (it only appends after
        // the write position; a retried write covers unpublished ranges only),
        // files are only shrunk during recovery before anything is mapped for
        // readers, and deleted files stay mapped until `map` is dropped.
        let bytes = unsafe { map.bytes(loc.offset, loc.len as usize) }.ok_or_else(|| {
            corrupt(format!(
                "entry {index} lies past the end of the mapping ({} bytes)",
                map.len()
            ))
        })?;
        // Paired check after reading: crc, kind, index and length.
        match format::decode_frame(bytes) {
            Ok((
                Frame::Entry {
                    index: got,
                    payload,
                    lz4,
                    ..
                },
                n,
            )) if got == index && n == loc.len as usize => {
                format::decode_payload(payload, lz4).map_err(corrupt)
            }
            Ok((f, n)) => Err(corrupt(format!(
                "expected entry {index} ({} bytes), found {f:?} ({n} bytes)",
                loc.len
            ))),
            Err(e) => Err(corrupt(format!("entry {index}: {e:?}"))),
        }
    }

    /// Appends entries `lo..=hi` to `out`, stopping after the one that
    /// reaches `max_bytes` of payload (at least one entry) or at the durable
    /// end.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if `lo` is not durable; [`Error::Corrupt`].
    pub fn read_range(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: usize,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> Result<()> {
        let mut total = 0usize;
        for index in lo..=hi {
            match self.read(index) {
                Ok(p) => {
                    total += p.len();
                    out.push((index, p));
                    if total >= max_bytes {
                        break;
                    }
                }
                Err(Error::NotFound { .. }) if index > lo => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// First durable index; `None` when nothing is durable.
    pub fn first_index(&self) -> Option<u64> {
        self.shared.read().index.first()
    }

    /// Last durable index; `None` when nothing is durable.
    pub fn durable_last_index(&self) -> Option<u64> {
        self.shared.read().index.last()
    }
}

/// Test hook: fails (or heals) one log's writes from any thread. See
/// [`Wal::fault_injector`]. Only with the `testing` feature.
#[cfg(feature = "testing")]
#[doc(hidden)]
#[derive(Clone)]
pub struct FaultInjector(Arc<WalIo>);

#[cfg(feature = "testing")]
impl FaultInjector {
    /// While `Some(errno)`, writes fail with that errno; `None` heals.
    pub fn set(&self, errno: Option<i32>) {
        self.0.set_fail_errno(errno);
    }
}
