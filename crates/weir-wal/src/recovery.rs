//! Recovery: rebuild a log's state from its segment files.
//!
//! The rules (see `docs/wal-format.md`, "Recovery"):
//!
//! 1. Segments are replayed in sequence order. Everything before the last
//!    segment whose header has the RESET flag is void and deleted.
//! 2. An entry frame replaces the suffix from its index ("truncate, then
//!    append"); an index below the first one restarts the log there (what
//!    remains after the GC dropped older segments); an index past
//!    `last + 1` is a gap: corrupt.
//! 3. A non-last segment ends with a seal frame. A segment with a bad header
//!    is handled like a bad frame at its offset 0. Replay stops at the first
//!    place that is not a valid frame (zero length or bad). If a valid frame
//!    flagged BATCH_START follows anywhere after it (this or a later
//!    segment), data written after this point had been synced: the bad frame
//!    is a hole in durable data and the log is [`Error::Corrupt`]. Otherwise
//!    it is the torn tail of the last, unacknowledged write round: the
//!    segment is cut there (zeroed to its end) and later segments deleted.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::durable;
use crate::format::{self, DecodeError, Frame, SegmentHeader, HEADER_FLAG_RESET, HEADER_LEN};
use crate::index::{IndexMap, Loc};
use crate::wal::{SegMap, Segment};
use crate::{Error, Result, WalOptions};

pub(crate) struct Recovered {
    pub segments: Vec<Segment>,
    pub index: IndexMap,
    pub meta: Option<Vec<u8>>,
    /// The segment holding the last meta frame.
    pub meta_seq: Option<u64>,
    pub expected_next: Option<u64>,
    pub next_seq: u64,
}

struct RawSegment {
    seq: u64,
    path: Arc<Path>,
    file: File,
    len: u64,
    header: std::result::Result<SegmentHeader, String>,
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, Arc<Path>)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(seq) = stem.parse::<u64>() {
            out.push((seq, entry.path().into()));
        }
    }
    out.sort_by_key(|(seq, _)| *seq);
    Ok(out)
}

fn open_raw(seq: u64, path: Arc<Path>) -> Result<RawSegment> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(path.to_path_buf(), e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(path.to_path_buf(), e))?
        .len();
    let header = if len < HEADER_LEN as u64 {
        Err(format!(
            "file of {len} bytes is shorter than a segment header"
        ))
    } else {
        let mut b = [0u8; HEADER_LEN];
        file.read_exact_at(&mut b, 0)
            .map_err(|e| Error::io(path.to_path_buf(), e))?;
        SegmentHeader::decode(&b).and_then(|h| {
            if h.seq == seq {
                Ok(h)
            } else {
                Err(format!(
                    "header says segment {} but the file name says {seq}",
                    h.seq
                ))
            }
        })
    };
    Ok(RawSegment {
        seq,
        path,
        file,
        len,
        header,
    })
}

/// Maps a whole file for recovery. `None` for an empty file.
fn map(raw: &RawSegment) -> Result<Option<SegMap>> {
    if raw.len == 0 {
        return Ok(None);
    }
    SegMap::new(&raw.file, raw.path.clone()).map(Some)
}

fn with_bytes<T>(m: &Option<SegMap>, f: impl FnOnce(&[u8]) -> T) -> T {
    match m {
        // SAFETY: recovery runs inside `Wal::open` before the log exists: no
        // writer or reader of this process touches the file, and one process
        // owns a log directory. The mapping is dropped before the file is cut.
        Some(m) => f(unsafe { m.bytes(0, m.len()) }.unwrap_or(&[])),
        None => f(&[]),
    }
}

fn remove(path: &Path) -> Result<()> {
    std::fs::remove_file(path).map_err(|e| Error::io(path, e))
}

pub(crate) fn recover(dir: &Path, opts: &WalOptions) -> Result<Recovered> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let listed = list_segments(dir)?;
    let next_seq = listed.last().map_or(1, |(seq, _)| seq + 1);
    let mut raws = listed
        .into_iter()
        .map(|(seq, p)| open_raw(seq, p))
        .collect::<Result<Vec<_>>>()?;
    let mut replay = Replay {
        expected_next: drop_voided_by_reset(dir, &mut raws)?,
        ..Replay::default()
    };
    let mut segments = Vec::new();
    let mut i = 0;
    while i < raws.len() {
        let raw = &raws[i];
        let m = map(raw)?;
        if let Err(reason) = &raw.header {
            let reason = reason.clone();
            drop_torn_creation(dir, &mut raws, i, &reason, m)?;
            break;
        }
        let (pos, sealed, stop) = replay.frames(raw, &m)?;
        let Some(reason) = stop else {
            // Sealed: the segment is complete.
            let Some(m) = m else {
                return Err(corrupt(&raw.path, 0, "empty segment with a valid header"));
            };
            segments.push(raw.segment(raw.len, pos, sealed, m)?);
            i += 1;
            continue;
        };
        segments.push(end_at_stop_point(dir, &raws, i, pos, &reason, m, opts)?);
        break;
    }
    Ok(Recovered {
        segments,
        index: replay.index,
        meta: replay.meta,
        meta_seq: replay.meta_seq,
        expected_next: replay.expected_next,
        next_seq,
    })
}

/// Rule 1: a RESET segment voids everything before it. Removes the voided segments and
/// returns the index the reset segment's first entry must have.
fn drop_voided_by_reset(dir: &Path, raws: &mut Vec<RawSegment>) -> Result<Option<u64>> {
    let Some(k) = raws
        .iter()
        .rposition(|r| matches!(&r.header, Ok(h) if h.flags & HEADER_FLAG_RESET != 0))
    else {
        return Ok(None);
    };
    if k > 0 {
        for r in raws.drain(..k) {
            tracing::info!(path = %r.path.display(), "removing wal segment voided by a later reset");
            remove(&r.path)?;
        }
        durable::fsync_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(match &raws[0].header {
        Ok(h) => Some(h.base_index),
        Err(_) => None,
    })
}

/// Segment `i` has no valid header. A header is written by the round that created the
/// segment (or synchronously). If no round started after it (no BATCH_START frame there
/// or later), that round was cut by a crash before it was acknowledged: this segment and
/// the later ones are removed. Otherwise synced data would be lost: corrupt.
fn drop_torn_creation(
    dir: &Path,
    raws: &mut Vec<RawSegment>,
    i: usize,
    reason: &str,
    m: Option<SegMap>,
) -> Result<()> {
    let raw = &raws[i];
    for later in &raws[i..] {
        let lm = if later.seq == raw.seq {
            None
        } else {
            map(later)?
        };
        let at = match &lm {
            None => with_bytes(&m, |b| format::scan_tail(b, 0).batch_start),
            Some(_) => with_bytes(&lm, |b| format::scan_tail(b, 0).batch_start),
        };
        if let Some(at) = at {
            return Err(corrupt(
                &raw.path,
                0,
                format!("{reason}; but data written after it had been synced follows in {} at offset {at}", later.path.display()),
            ));
        }
    }
    drop(m);
    for later in &raws[i..] {
        tracing::warn!(path = %later.path.display(), reason = %reason, "removing wal segment torn while being created");
        remove(&later.path)?;
    }
    durable::fsync_dir(dir).map_err(|e| Error::io(dir, e))?;
    raws.truncate(i);
    Ok(())
}

/// What replaying the frames of the segments so far has found.
#[derive(Default)]
struct Replay {
    index: IndexMap,
    meta: Option<Vec<u8>>,
    meta_seq: Option<u64>,
    /// The index the next entry must have (after a reset), until one is seen.
    expected_next: Option<u64>,
}

impl Replay {
    /// Replays `raw`'s frames from its header: entries into the index (contiguous, or
    /// corrupt), the last meta. Returns where replay stopped, whether at a seal, and, when
    /// not sealed, why it stopped (end of data or a bad frame: rule 3 decides which).
    fn frames(
        &mut self,
        raw: &RawSegment,
        m: &Option<SegMap>,
    ) -> Result<(usize, bool, Option<String>)> {
        let mut pos = HEADER_LEN;
        let stop = with_bytes(m, |bytes| -> Result<Option<String>> {
            loop {
                match format::decode_frame(&bytes[pos.min(bytes.len())..]) {
                    Ok((Frame::Seal { .. }, n)) => {
                        pos += n;
                        return Ok(None);
                    }
                    Ok((Frame::Entry { index: ix, .. }, n)) => {
                        self.entry(raw, ix, pos, n)?;
                        pos += n;
                    }
                    Ok((Frame::Meta { payload, lz4, .. }, n)) => {
                        let blob = format::decode_payload(payload, lz4).map_err(|e| {
                            corrupt(&raw.path, pos as u64, format!("meta frame: {e}"))
                        })?;
                        self.meta = Some(blob);
                        self.meta_seq = Some(raw.seq);
                        pos += n;
                    }
                    Err(DecodeError::End) => {
                        return Ok(Some("end of data without a seal".to_string()))
                    }
                    Err(DecodeError::Bad(reason)) => return Ok(Some(reason)),
                }
            }
        })?;
        Ok((pos, stop.is_none(), stop))
    }

    /// One entry frame at `pos`: the first after a reset must have the reset's index, and
    /// every entry must follow the one before (a gap is corruption).
    fn entry(&mut self, raw: &RawSegment, ix: u64, pos: usize, len: usize) -> Result<()> {
        if self.index.last().is_none() {
            if let Some(e) = self.expected_next {
                if ix != e {
                    return Err(corrupt(
                        &raw.path,
                        pos as u64,
                        format!("first entry {ix} after a reset to {e}"),
                    ));
                }
            }
        }
        let loc = Loc {
            seq: raw.seq,
            offset: pos as u64,
            len: len as u32,
        };
        self.index.apply(ix, loc).map_err(|expected| {
            corrupt(
                &raw.path,
                pos as u64,
                format!("gap: entry {ix} where {expected} was expected"),
            )
        })?;
        self.expected_next = None;
        Ok(())
    }
}

/// Rule 3: replay of segment `i` stopped at `pos` before a seal. A hole (synced frames
/// follow, here or in a later segment) is corruption; a torn tail is cut there (zeroed,
/// later segments removed) and the segment becomes the one written next.
fn end_at_stop_point(
    dir: &Path,
    raws: &[RawSegment],
    i: usize,
    pos: usize,
    reason: &str,
    m: Option<SegMap>,
    opts: &WalOptions,
) -> Result<Segment> {
    let raw = &raws[i];
    let here = with_bytes(&m, |b| format::scan_tail(b, pos));
    if let Some(at) = here.batch_start {
        return Err(corrupt(
            &raw.path,
            pos as u64,
            format!("{reason}; but a frame written after this point had been synced follows at offset {at}"),
        ));
    }
    for later in &raws[i + 1..] {
        let lm = map(later)?;
        if let Some(at) = with_bytes(&lm, |b| format::scan_tail(b, 0).batch_start) {
            return Err(corrupt(
                &raw.path,
                pos as u64,
                format!(
                    "{reason}; but data written after this point had been synced follows in {} at offset {at}",
                    later.path.display()
                ),
            ));
        }
    }
    let is_last = i + 1 == raws.len();
    let clean_end = here.first_nonzero.is_none() && is_last && reason.starts_with("end of data");
    drop(m);
    // The segment keeps the size it was created with (segments grow from small to
    // `segment_size_bytes`; growing a small one to that here would undo it on every
    // start), but never less than a first segment, nor too small to take the seal
    // frame after its data (a file cut short by a crash).
    let first = crate::FIRST_SEGMENT_BYTES.min(opts.segment_size_bytes.max(4096));
    let size = raw
        .len
        .max(first)
        .max(pos as u64 + format::SEAL_FRAME_LEN as u64)
        .max(HEADER_LEN as u64);
    if clean_end {
        if raw.len < size {
            durable::preallocate(&raw.file, size)
                .map_err(|e| Error::io(raw.path.to_path_buf(), e))?;
        }
    } else {
        tracing::warn!(
            path = %raw.path.display(),
            offset = pos,
            reason = %reason,
            "truncating torn wal tail (a write cut by a crash before it was acknowledged)"
        );
        durable::zero_tail(&raw.file, pos as u64, size)
            .map_err(|e| Error::io(raw.path.to_path_buf(), e))?;
        for later in &raws[i + 1..] {
            tracing::warn!(path = %later.path.display(), "removing wal segment after a torn tail");
            remove(&later.path)?;
        }
        durable::fsync_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    let map = SegMap::new(&raw.file, raw.path.clone())?;
    raw.segment(size, pos, false, map)
}

impl RawSegment {
    /// The writer's view of this file once recovery has settled it: `size` bytes, data up
    /// to `pos`, sealed or not, read through `map`.
    fn segment(&self, size: u64, pos: usize, sealed: bool, map: SegMap) -> Result<Segment> {
        Ok(Segment {
            seq: self.seq,
            path: self.path.clone(),
            file: Arc::new(
                self.file
                    .try_clone()
                    .map_err(|e| Error::io(self.path.to_path_buf(), e))?,
            ),
            size,
            write_pos: pos as u64,
            sealed,
            map: Arc::new(map),
        })
    }
}
