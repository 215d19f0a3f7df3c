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

    // Rule 1: a RESET segment voids everything before it.
    let mut expected_next = None;
    if let Some(k) = raws
        .iter()
        .rposition(|r| matches!(&r.header, Ok(h) if h.flags & HEADER_FLAG_RESET != 0))
    {
        if k > 0 {
            for r in raws.drain(..k) {
                tracing::info!(path = %r.path.display(), "removing wal segment voided by a later reset");
                remove(&r.path)?;
            }
            durable::fsync_dir(dir).map_err(|e| Error::io(dir, e))?;
        }
        if let Ok(h) = &raws[0].header {
            expected_next = Some(h.base_index);
        }
    }

    let mut index = IndexMap::default();
    let mut meta = None;
    let mut meta_seq = None;
    let mut segments = Vec::new();
    let mut i = 0;
    while i < raws.len() {
        let is_last = i + 1 == raws.len();
        let raw = &raws[i];
        let m = map(raw)?;
        if let Err(reason) = &raw.header {
            // A header is written by the round that created the segment (or
            // synchronously). If no round started after it (no BATCH_START
            // frame here or later), that round was cut by a crash before it
            // was acknowledged: drop this segment and the later ones.
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
            break;
        }

        // Replay the frames.
        let mut pos = HEADER_LEN;
        let mut sealed = false;
        let stop = with_bytes(&m, |bytes| -> Result<Option<String>> {
            loop {
                match format::decode_frame(&bytes[pos.min(bytes.len())..]) {
                    Ok((frame, n)) => {
                        match frame {
                            Frame::Seal { .. } => {
                                sealed = true;
                                pos += n;
                                return Ok(None);
                            }
                            Frame::Entry { index: ix, .. } => {
                                if index.last().is_none() {
                                    if let Some(e) = expected_next {
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
                                    len: n as u32,
                                };
                                index.apply(ix, loc).map_err(|expected| {
                                    corrupt(
                                        &raw.path,
                                        pos as u64,
                                        format!("gap: entry {ix} where {expected} was expected"),
                                    )
                                })?;
                                expected_next = None;
                            }
                            Frame::Meta { payload, lz4, .. } => {
                                let blob = format::decode_payload(payload, lz4).map_err(|e| {
                                    corrupt(&raw.path, pos as u64, format!("meta frame: {e}"))
                                })?;
                                meta = Some(blob);
                                meta_seq = Some(raw.seq);
                            }
                        }
                        pos += n;
                    }
                    Err(DecodeError::End) => {
                        return Ok(Some("end of data without a seal".to_string()))
                    }
                    Err(DecodeError::Bad(reason)) => return Ok(Some(reason)),
                }
            }
        })?;

        let Some(reason) = stop else {
            // Sealed: the segment is complete.
            segments.push(Segment {
                seq: raw.seq,
                path: raw.path.clone(),
                file: Arc::new(
                    raws[i]
                        .file
                        .try_clone()
                        .map_err(|e| Error::io(raws[i].path.to_path_buf(), e))?,
                ),
                size: raw.len,
                write_pos: pos as u64,
                sealed,
                map: Arc::new(match m {
                    Some(m) => m,
                    None => return Err(corrupt(&raw.path, 0, "empty segment with a valid header")),
                }),
            });
            i += 1;
            continue;
        };

        // Rule 3: a stop point. Hole or torn tail?
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
        let clean_end =
            here.first_nonzero.is_none() && is_last && reason.starts_with("end of data");
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
        let raw = &raws[i];
        let map = SegMap::new(&raw.file, raw.path.clone())?;
        segments.push(Segment {
            seq: raw.seq,
            path: raw.path.clone(),
            file: Arc::new(
                raw.file
                    .try_clone()
                    .map_err(|e| Error::io(raw.path.to_path_buf(), e))?,
            ),
            size,
            write_pos: pos as u64,
            sealed: false,
            map: Arc::new(map),
        });
        break;
    }

    Ok(Recovered {
        segments,
        index,
        meta,
        meta_seq,
        expected_next,
        next_seq,
    })
}
