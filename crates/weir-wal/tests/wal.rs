//! Scenario tests of the WAL: both backends, recovery, GC, reset, disk full,
//! corruption, and the golden v1 segment.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use weir_wal::format::{self, Frame, HEADER_LEN};
use weir_wal::{detect_backend, Error, IoBackend, IoBackendChoice, IoThread, Wal, WalOptions};

fn std_io() -> Arc<IoThread> {
    IoThread::start(IoBackendChoice::Std).unwrap()
}

/// Every backend usable here; the uring one is skipped (with the reason
/// printed) where io_uring is unavailable.
fn backends() -> Vec<Arc<IoThread>> {
    let mut v = vec![std_io()];
    if detect_backend() == IoBackend::Uring {
        v.push(IoThread::start(IoBackendChoice::Uring).unwrap());
    } else {
        eprintln!(
            "skipping the uring backend: io_uring is unavailable here (detect_backend() = std)"
        );
    }
    v
}

fn small() -> WalOptions {
    WalOptions {
        segment_size_bytes: 4096,
        compress_min_bytes: 64,
    }
}

fn payload(i: u64, len: usize) -> Vec<u8> {
    // Pseudo-random (incompressible) for odd i, repetitive for even i.
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|k| {
            if i.is_multiple_of(2) {
                (k % 7) as u8
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

fn all_frames(path: &Path) -> Vec<(usize, u8, Option<u64>, bool)> {
    let bytes = std::fs::read(path).unwrap();
    let mut pos = HEADER_LEN;
    let mut out = Vec::new();
    while let Ok((f, n)) = format::decode_frame(&bytes[pos..]) {
        let (kind, idx) = match f {
            Frame::Entry { index, .. } => (format::KIND_ENTRY, Some(index)),
            Frame::Meta { .. } => (format::KIND_META, None),
            Frame::Seal { .. } => (format::KIND_SEAL, None),
        };
        out.push((pos, kind, idx, f.batch_start()));
        pos += n;
    }
    out
}

#[test]
fn append_flush_read_reopen_on_every_backend() {
    for io in backends() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), WalOptions::default(), io.clone()).unwrap();
        assert_eq!((wal.first_index(), wal.last_index()), (None, None));
        let sizes = [0usize, 1, 100, 511, 512, 4096, 65536, 1 << 20];
        for (k, &len) in sizes.iter().enumerate() {
            wal.append(10 + k as u64, &payload(k as u64, len)).unwrap();
        }
        wal.set_meta(b"hard state").unwrap();
        let reader = wal.reader();
        assert_eq!(
            reader.durable_last_index(),
            None,
            "nothing durable before the flush"
        );
        assert!(matches!(
            reader.read(10),
            Err(Error::NotFound { index: 10 })
        ));
        wal.flush().unwrap().wait().unwrap();
        assert_eq!(reader.first_index(), Some(10));
        assert_eq!(reader.durable_last_index(), Some(17));
        for (k, &len) in sizes.iter().enumerate() {
            assert_eq!(
                reader.read(10 + k as u64).unwrap(),
                payload(k as u64, len),
                "backend {}",
                io.backend()
            );
        }
        let mut out = Vec::new();
        reader.read_range(11, 100, 600, &mut out).unwrap();
        assert_eq!(
            out.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![11, 12, 13],
            "stops after max_bytes"
        );
        out.clear();
        reader.read_range(17, 17, 0, &mut out).unwrap();
        assert_eq!(out.len(), 1, "at least one entry");
        drop(wal);
        let wal = Wal::open(dir.path(), WalOptions::default(), io.clone()).unwrap();
        assert_eq!((wal.first_index(), wal.last_index()), (Some(10), Some(17)));
        assert_eq!(wal.meta().as_deref(), Some(&b"hard state"[..]));
        for (k, &len) in sizes.iter().enumerate() {
            assert_eq!(
                wal.reader().read(10 + k as u64).unwrap(),
                payload(k as u64, len)
            );
        }
    }
}

/// A new log takes little disk: four lines in four shards used to preallocate 4 x 64 MiB.
/// Segments start at `FIRST_SEGMENT_BYTES` and double up to `segment_size_bytes`; a
/// restart keeps the small segment small.
#[test]
fn segments_start_small_and_double_up_to_the_configured_size() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions::default();
    let mut wal = Wal::open(dir.path(), opts, std_io()).unwrap();
    wal.append(1, b"one line").unwrap();
    wal.flush().unwrap().wait().unwrap();
    let sizes = |dir: &Path| -> Vec<u64> {
        segs(dir)
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .collect()
    };
    assert_eq!(sizes(dir.path()), vec![weir_wal::FIRST_SEGMENT_BYTES]);
    drop(wal);
    let mut wal = Wal::open(dir.path(), opts, std_io()).unwrap();
    assert_eq!(
        sizes(dir.path()),
        vec![weir_wal::FIRST_SEGMENT_BYTES],
        "reopening does not grow the segment"
    );
    // ~9 MiB of incompressible entries: 1 + 2 + 4 MiB segments fill, the next is 8 MiB.
    for i in 2..=150u64 {
        wal.append(i, &payload(2 * i + 1, 64 << 10)).unwrap();
    }
    wal.flush().unwrap().wait().unwrap();
    let got = sizes(dir.path());
    let mib = 1u64 << 20;
    assert_eq!(got[..4], [mib, 2 * mib, 4 * mib, 8 * mib], "{got:?}");
    assert!(got.iter().all(|&s| s <= opts.segment_size_bytes), "{got:?}");
    for i in 2..=150u64 {
        assert_eq!(wal.reader().read(i).unwrap(), payload(2 * i + 1, 64 << 10));
    }
}

#[test]
fn append_rejects_gaps_and_indexes_below_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), small(), std_io()).unwrap();
    wal.append(5, b"a").unwrap();
    wal.append(6, b"b").unwrap();
    assert!(matches!(
        wal.append(8, b"x"),
        Err(Error::OutOfOrder {
            expected: 7,
            got: 8
        })
    ));
    assert!(matches!(
        wal.append(4, b"x"),
        Err(Error::OutOfOrder {
            expected: 7,
            got: 4
        })
    ));
    assert!(matches!(
        wal.set_meta(&vec![0u8; 70_000]),
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(wal.last_index(), Some(6));
}

#[test]
fn suffix_truncating_append_is_replayed_by_recovery() {
    for io in backends() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), small(), io.clone()).unwrap();
        for i in 1..=10 {
            wal.append(i, &payload(i, 300)).unwrap();
        }
        wal.flush().unwrap().wait().unwrap();
        let reader = wal.reader();
        wal.append(5, b"five prime").unwrap();
        assert_eq!(wal.last_index(), Some(5));
        // Readers keep seeing the durable entries until the truncation is durable.
        assert_eq!(reader.durable_last_index(), Some(10));
        assert_eq!(reader.read(7).unwrap(), payload(7, 300));
        wal.flush().unwrap().wait().unwrap();
        assert_eq!(reader.durable_last_index(), Some(5));
        assert_eq!(reader.read(5).unwrap(), b"five prime");
        drop(wal);
        let wal = Wal::open(dir.path(), small(), io.clone()).unwrap();
        assert_eq!((wal.first_index(), wal.last_index()), (Some(1), Some(5)));
        assert_eq!(wal.reader().read(5).unwrap(), b"five prime");
        assert_eq!(wal.reader().read(4).unwrap(), payload(4, 300));
    }
}

#[test]
fn segments_roll_gc_keeps_meta_and_recovery_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let io = std_io();
    let mut wal = Wal::open(dir.path(), small(), io.clone()).unwrap();
    wal.set_meta(b"term 7").unwrap();
    for i in 1..=60 {
        wal.append(i, &payload(i * 2 + 1, 700)).unwrap();
        if i % 7 == 0 {
            wal.flush().unwrap().wait().unwrap();
        }
    }
    wal.flush().unwrap().wait().unwrap();
    let segs = wal.segment_paths().len();
    assert!(segs > 5, "700-byte entries in 4 KiB segments roll: {segs}");
    let before = wal.disk_bytes();
    let freed = wal.remove_segments_below(40).unwrap();
    assert!(freed > 0 && wal.disk_bytes() == before - freed);
    let first = wal.first_index().unwrap();
    assert!(first > 1 && first <= 40, "first {first}");
    assert_eq!(wal.reader().first_index(), Some(first));
    assert!(matches!(
        wal.reader().read(first - 1),
        Err(Error::NotFound { .. })
    ));
    // Never the segment holding the last entry, nor the active one.
    wal.remove_segments_below(1000).unwrap();
    assert_eq!(wal.last_index(), Some(60));
    assert!(wal.first_index().is_some());
    let first = wal.first_index().unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), small(), io).unwrap();
    assert_eq!(
        (wal.first_index(), wal.last_index()),
        (Some(first), Some(60))
    );
    assert_eq!(
        wal.meta().as_deref(),
        Some(&b"term 7"[..]),
        "meta survives the gc"
    );
    for i in first..=60 {
        assert_eq!(wal.reader().read(i).unwrap(), payload(i * 2 + 1, 700));
    }
}

#[test]
fn reset_drops_everything_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let io = std_io();
    let mut wal = Wal::open(dir.path(), small(), io.clone()).unwrap();
    wal.set_meta(b"m1").unwrap();
    for i in 1..=20 {
        wal.append(i, &payload(i, 500)).unwrap();
    }
    wal.flush().unwrap().wait().unwrap();
    wal.append(21, b"staged, dropped by reset").unwrap();
    wal.reset(100).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (None, None));
    assert_eq!(wal.reader().durable_last_index(), None);
    assert_eq!(wal.segment_paths().len(), 1);
    assert!(matches!(
        wal.append(5, b"x"),
        Err(Error::OutOfOrder {
            expected: 100,
            got: 5
        })
    ));
    drop(wal);
    let mut wal = Wal::open(dir.path(), small(), io.clone()).unwrap();
    assert_eq!(wal.meta().as_deref(), Some(&b"m1"[..]));
    assert!(
        matches!(
            wal.append(5, b"x"),
            Err(Error::OutOfOrder {
                expected: 100,
                got: 5
            })
        ),
        "recovery keeps the reset point"
    );
    wal.append(100, b"hundred").unwrap();
    wal.flush().unwrap().wait().unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), small(), io).unwrap();
    assert_eq!(
        (wal.first_index(), wal.last_index()),
        (Some(100), Some(100))
    );
    assert_eq!(wal.reader().read(100).unwrap(), b"hundred");
}

#[test]
fn disk_full_is_its_own_error_and_a_later_flush_retries() {
    for io in backends() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), small(), io.clone()).unwrap();
        wal.append(1, b"one").unwrap();
        wal.flush().unwrap().wait().unwrap();
        for i in 2..=12 {
            wal.append(i, &payload(i, 900)).unwrap();
        }
        wal.inject_write_error(Some(libc::ENOSPC));
        let err = wal.flush().unwrap().wait().unwrap_err();
        assert!(matches!(err, Error::DiskFull { .. }), "{err}");
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(
            wal.reader().durable_last_index(),
            Some(1),
            "nothing published"
        );
        assert_eq!(wal.last_index(), Some(12), "still staged");
        // Still failing: more data joins the retry.
        wal.append(13, b"thirteen").unwrap();
        assert!(matches!(
            wal.flush().unwrap().wait(),
            Err(Error::DiskFull { .. })
        ));
        wal.inject_write_error(None);
        wal.flush().unwrap().wait().unwrap();
        assert_eq!(wal.reader().durable_last_index(), Some(13));
        drop(wal);
        let wal = Wal::open(dir.path(), small(), io.clone()).unwrap();
        assert_eq!(wal.last_index(), Some(13));
        for i in 2..=12 {
            assert_eq!(wal.reader().read(i).unwrap(), payload(i, 900));
        }
    }
}

/// Writes 1..=n in separate flushes (one round each) and returns the wal dir.
fn rounds(n: u64, opts: WalOptions) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), opts, std_io()).unwrap();
    for i in 1..=n {
        wal.append(i, &payload(i, 600)).unwrap();
        wal.flush().unwrap().wait().unwrap();
    }
    dir
}

fn segs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn flip(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 0x40;
    std::fs::write(path, b).unwrap();
}

#[test]
fn mid_segment_corruption_followed_by_synced_frames_is_corrupt() {
    let dir = rounds(20, WalOptions::default());
    let seg = segs(dir.path()).pop().unwrap();
    let frames = all_frames(&seg);
    let (off, _, idx, bs) = frames.iter().find(|f| f.2 == Some(5)).copied().unwrap();
    assert_eq!((idx, bs), (Some(5), true), "each flush is a round");
    flip(&seg, off + 20);
    let err = Wal::open(dir.path(), WalOptions::default(), std_io()).unwrap_err();
    match &err {
        Error::Corrupt {
            path,
            offset,
            reason,
        } => {
            assert_eq!(path, &seg);
            assert_eq!(*offset, off as u64);
            assert!(reason.contains("crc"), "{reason}");
        }
        other => panic!("expected corrupt, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&seg.display().to_string()) && msg.contains(&format!("offset {off}")),
        "{msg}"
    );
}

#[test]
fn zeroed_hole_in_synced_data_is_corrupt() {
    let dir = rounds(10, WalOptions::default());
    let seg = segs(dir.path()).pop().unwrap();
    let frames = all_frames(&seg);
    let (off, ..) = frames.iter().find(|f| f.2 == Some(3)).copied().unwrap();
    let mut b = std::fs::read(&seg).unwrap();
    b[off..off + 4].fill(0);
    std::fs::write(&seg, b).unwrap();
    assert!(
        matches!(Wal::open(dir.path(), WalOptions::default(), std_io()), Err(Error::Corrupt { offset, .. }) if offset == off as u64)
    );
}

#[test]
fn bad_frame_in_a_non_last_segment_is_corrupt() {
    let dir = rounds(30, small());
    let all = segs(dir.path());
    assert!(all.len() > 2);
    let first = &all[0];
    let (off, ..) = all_frames(first)
        .iter()
        .find(|f| f.2.is_some())
        .copied()
        .unwrap();
    flip(first, off + 12);
    let err = Wal::open(dir.path(), small(), std_io()).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { path, .. } if path == first),
        "{err}"
    );
    // A bad header of a non-last segment too.
    let dir = rounds(30, small());
    let all = segs(dir.path());
    flip(&all[1], 3);
    let err = Wal::open(dir.path(), small(), std_io()).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { path, offset: 0, .. } if path == &all[1]),
        "{err}"
    );
}

#[test]
fn torn_tail_of_the_last_round_is_truncated_and_writable_again() {
    let dir = tempfile::tempdir().unwrap();
    let io = std_io();
    let mut wal = Wal::open(dir.path(), WalOptions::default(), io.clone()).unwrap();
    for i in 1..=10 {
        wal.append(i, &payload(i, 300)).unwrap();
    }
    wal.flush().unwrap().wait().unwrap();
    for i in 11..=13 {
        wal.append(i, &payload(i, 300)).unwrap();
    }
    // Pretend this round was cut by a crash: written, never acknowledged.
    wal.flush().unwrap().wait().unwrap();
    drop(wal);
    let seg = segs(dir.path()).pop().unwrap();
    let frames = all_frames(&seg);
    let (off12, ..) = frames.iter().find(|f| f.2 == Some(12)).copied().unwrap();
    assert!(
        !frames.iter().find(|f| f.2 == Some(12)).unwrap().3,
        "12 is inside the round"
    );
    flip(&seg, off12 + 30);
    let mut wal = Wal::open(dir.path(), WalOptions::default(), io.clone()).unwrap();
    assert_eq!(
        wal.last_index(),
        Some(11),
        "cut at the bad frame; 13 was part of the torn round"
    );
    wal.append(12, b"twelve again").unwrap();
    wal.flush().unwrap().wait().unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), WalOptions::default(), io).unwrap();
    assert_eq!(wal.last_index(), Some(12));
    assert_eq!(wal.reader().read(12).unwrap(), b"twelve again");
    assert_eq!(wal.reader().read(11).unwrap(), payload(11, 300));
}

#[test]
fn cut_file_and_torn_header_recover() {
    // A last segment cut short (even inside its header) is a torn creation/tail.
    let dir = rounds(40, small());
    let all = segs(dir.path());
    let last = all.last().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(last).unwrap();
    f.set_len(20).unwrap();
    drop(f);
    let wal = Wal::open(dir.path(), small(), std_io()).unwrap();
    let l = wal.last_index().unwrap();
    assert!(l < 40 && l > 1, "last {l}");
    for i in 1..=l {
        assert_eq!(wal.reader().read(i).unwrap(), payload(i, 600));
    }
}

#[test]
fn group_commit_across_shards() {
    for io in backends() {
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut wals: Vec<_> = dirs
            .iter()
            .map(|d| Wal::open(d.path(), WalOptions::default(), io.clone()).unwrap())
            .collect();
        for round in 0..5u64 {
            let mut tickets = Vec::new();
            for (s, w) in wals.iter_mut().enumerate() {
                w.append(round + 1, &payload(round * 10 + s as u64, 4096))
                    .unwrap();
                tickets.push(w.flush().unwrap());
            }
            for t in tickets {
                t.wait().unwrap();
            }
        }
        for (s, w) in wals.iter().enumerate() {
            assert_eq!(w.reader().durable_last_index(), Some(5));
            assert_eq!(w.reader().read(3).unwrap(), payload(20 + s as u64, 4096));
        }
        // Several flushes of one log without waiting merge into later rounds.
        let w = &mut wals[0];
        let mut tickets = Vec::new();
        for i in 6..=30 {
            w.append(i, &payload(i, 1000)).unwrap();
            tickets.push(w.flush().unwrap());
        }
        for t in tickets {
            t.wait().unwrap();
        }
        assert_eq!(w.reader().durable_last_index(), Some(30));
        let d = w.dir().to_path_buf();
        drop(wals);
        let w = Wal::open(&d, WalOptions::default(), io.clone()).unwrap();
        assert_eq!(w.last_index(), Some(30));
    }
}

#[test]
fn readers_read_while_the_writer_appends() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), small(), std_io()).unwrap();
    let reader = wal.reader();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let t = std::thread::spawn(move || {
        let mut reads = 0u64;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(last) = reader.durable_last_index() {
                let first = reader.first_index().unwrap();
                for i in first..=last {
                    match reader.read(i) {
                        Ok(p) => assert_eq!(p, payload(i, 333)),
                        Err(Error::NotFound { .. }) => {} // gc'd meanwhile
                        Err(e) => panic!("{e}"),
                    }
                    reads += 1;
                }
            }
        }
        reads
    });
    for i in 1..=200 {
        wal.append(i, &payload(i, 333)).unwrap();
        if i % 10 == 0 {
            wal.flush().unwrap().wait().unwrap();
            wal.remove_segments_below(i.saturating_sub(50)).unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(t.join().unwrap() > 0);
}

#[test]
fn backend_names_parse() {
    assert_eq!("std".parse::<IoBackend>().unwrap(), IoBackend::Std);
    assert_eq!("uring".parse::<IoBackend>().unwrap().to_string(), "uring");
    assert_eq!(
        "auto".parse::<IoBackendChoice>().unwrap(),
        IoBackendChoice::Auto
    );
    assert!("io_uring".parse::<IoBackendChoice>().is_err());
    let io = IoThread::start(IoBackendChoice::Auto).unwrap();
    if detect_backend() == IoBackend::Std {
        assert_eq!(io.backend(), IoBackend::Std);
        assert!(matches!(
            IoThread::start(IoBackendChoice::Uring),
            Err(Error::UringUnavailable(_))
        ));
    }
}

// ---------------------------------------------------------------- golden v1

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/v1");

fn golden_entries() -> Vec<(u64, Vec<u8>)> {
    vec![
        (1, b"hello".to_vec()),
        (2, b"weir ".repeat(120)), // compressed
        (3, b"three".to_vec()),
        (2, b"two, again".to_vec()), // truncates 2..=3
        (3, (0u8..=255).collect()),
    ]
}

fn write_golden(dir: &Path) {
    let opts = WalOptions {
        segment_size_bytes: 4096,
        compress_min_bytes: 64,
    };
    let mut wal = Wal::open(dir, opts, std_io()).unwrap();
    let e = golden_entries();
    wal.append(e[0].0, &e[0].1).unwrap();
    wal.append(e[1].0, &e[1].1).unwrap();
    wal.set_meta(b"term=3 vote=1 commit=2").unwrap();
    wal.flush().unwrap().wait().unwrap();
    wal.append(e[2].0, &e[2].1).unwrap();
    wal.flush().unwrap().wait().unwrap();
    wal.append(e[3].0, &e[3].1).unwrap();
    wal.append(e[4].0, &e[4].1).unwrap();
    wal.flush().unwrap().wait().unwrap();
}

/// Pins format v1: the committed segment must decode to exactly these frames
/// and entries, and today's encoder must produce the same bytes. Regenerate
/// (only for a new format version!) with `WEIR_WAL_BLESS=1`.
#[test]
fn golden_v1_segment_decodes_exactly() {
    let golden = Path::new(GOLDEN);
    if std::env::var_os("WEIR_WAL_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(golden);
        write_golden(golden);
    }
    let files = segs(golden);
    assert_eq!(files.len(), 1, "golden dir holds one segment");
    let bytes = std::fs::read(&files[0]).unwrap();
    assert_eq!(bytes.len(), 4096);
    let h = format::SegmentHeader::decode(&bytes).unwrap();
    assert_eq!(
        h,
        format::SegmentHeader {
            flags: 0,
            seq: 1,
            base_index: 0
        }
    );
    assert_eq!(&bytes[..8], b"WEIRWAL\0");
    assert_eq!(&bytes[8..12], &1u32.to_le_bytes());

    // Frame by frame, re-encoded with today's code.
    let e = golden_entries();
    let mut expect = Vec::new();
    let mut want = Vec::new();
    format::encode_entry(&mut expect, e[0].0, &e[0].1, 64, true);
    format::encode_entry(&mut expect, e[1].0, &e[1].1, 64, false);
    format::encode_meta(&mut expect, b"term=3 vote=1 commit=2", 64, false);
    format::encode_entry(&mut expect, e[2].0, &e[2].1, 64, true);
    format::encode_entry(&mut expect, e[3].0, &e[3].1, 64, true);
    format::encode_entry(&mut expect, e[4].0, &e[4].1, 64, false);
    want.extend_from_slice(&bytes[HEADER_LEN..HEADER_LEN + expect.len()]);
    assert_eq!(
        want, expect,
        "frames differ from today's encoder: format drift"
    );
    assert!(
        bytes[HEADER_LEN + expect.len()..].iter().all(|&b| b == 0),
        "zeros after the data"
    );
    let frames = all_frames(&files[0]);
    assert_eq!(
        frames.iter().map(|f| (f.1, f.2, f.3)).collect::<Vec<_>>(),
        vec![
            (1, Some(1), true),
            (1, Some(2), false),
            (2, None, false),
            (1, Some(3), true),
            (1, Some(2), true),
            (1, Some(3), false)
        ]
    );
    // lz4 flag on the repetitive entry.
    let (f, _) = format::decode_frame(&bytes[frames[1].0..]).unwrap();
    assert!(matches!(f, Frame::Entry { lz4: true, .. }));

    // And the log as recovered from a copy.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&files[0], dir.path().join(files[0].file_name().unwrap())).unwrap();
    let wal = Wal::open(
        dir.path(),
        WalOptions {
            segment_size_bytes: 4096,
            compress_min_bytes: 64,
        },
        std_io(),
    )
    .unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (Some(1), Some(3)));
    assert_eq!(wal.meta().as_deref(), Some(&b"term=3 vote=1 commit=2"[..]));
    let r = wal.reader();
    assert_eq!(r.read(1).unwrap(), b"hello");
    assert_eq!(r.read(2).unwrap(), b"two, again");
    assert_eq!(r.read(3).unwrap(), (0u8..=255).collect::<Vec<_>>());
}
