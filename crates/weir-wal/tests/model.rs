//! Model-based property test of the WAL (in the style of mrecordlog's
//! proptests): random appends, suffix-truncating appends, meta updates,
//! flushes, segment rolls (4 KiB segments), GC, resets, clean reopens and
//! crashes (a written but unacknowledged round, then the last files cut or a
//! bit flipped after the last acknowledged position) checked against an
//! in-memory model.
//!
//! Property: after every reopen, every acknowledged entry (not below a GC
//! point) is present and exact, nothing appears that was never appended, the
//! meta is the latest acknowledged one, and what survives of the
//! unacknowledged round is a prefix of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use weir_wal::{IoBackend, IoBackendChoice, IoThread, Wal, WalOptions};

const OPTS: WalOptions = WalOptions {
    segment_size_bytes: 4096,
    compress_min_bytes: 128,
};

#[derive(Debug, Clone)]
enum Damage {
    None,
    Cut(prop::sample::Index, prop::sample::Index),
    Flip(prop::sample::Index, prop::sample::Index, u8),
}

#[derive(Debug, Clone)]
enum Op {
    /// back = 0: next index; else truncate `back` entries (not below first).
    Append {
        back: u8,
        len: u16,
        compressible: bool,
    },
    SetMeta(u8),
    Flush,
    Gc(u8),
    Reset(u8),
    Reopen,
    Crash {
        unacked: bool,
        damage: Damage,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let damage = prop_oneof![
        1 => Just(Damage::None),
        2 => (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(a, b)| Damage::Cut(a, b)),
        2 => (any::<prop::sample::Index>(), any::<prop::sample::Index>(), 0u8..8).prop_map(|(a, b, c)| Damage::Flip(a, b, c)),
    ];
    prop_oneof![
        12 => (prop_oneof![8 => Just(0u8), 2 => 1u8..6], 0u16..1500, any::<bool>())
            .prop_map(|(back, len, compressible)| Op::Append { back, len, compressible }),
        2 => any::<u8>().prop_map(Op::SetMeta),
        5 => Just(Op::Flush),
        1 => any::<u8>().prop_map(Op::Gc),
        1 => (0u8..5).prop_map(Op::Reset),
        1 => Just(Op::Reopen),
        3 => (any::<bool>(), damage).prop_map(|(unacked, damage)| Op::Crash { unacked, damage }),
    ]
}

#[derive(Debug, Clone)]
enum Staged {
    Entry(u64, Vec<u8>),
    Meta(Vec<u8>),
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Log {
    first: u64,
    entries: Vec<Vec<u8>>,
    meta: Option<Vec<u8>>,
    expected: Option<u64>,
}

impl Log {
    fn last(&self) -> Option<u64> {
        (!self.entries.is_empty()).then(|| self.first + self.entries.len() as u64 - 1)
    }
    fn get(&self, i: u64) -> Option<&Vec<u8>> {
        self.entries
            .get(usize::try_from(i.checked_sub(self.first)?).ok()?)
    }
    fn apply(&mut self, s: &Staged) {
        match s {
            Staged::Meta(m) => self.meta = Some(m.clone()),
            Staged::Entry(i, p) => {
                match self.last() {
                    None => self.first = *i,
                    Some(last) => {
                        assert!(*i <= last + 1);
                        if *i < self.first {
                            self.entries.clear();
                            self.first = *i;
                        } else {
                            self.entries.truncate((*i - self.first) as usize);
                        }
                    }
                }
                self.entries.push(p.clone());
                self.expected = None;
            }
        }
    }
    fn with(&self, staged: &[Staged]) -> Log {
        let mut l = self.clone();
        for s in staged {
            l.apply(s);
        }
        l
    }
}

fn make_payload(n: u64, len: usize, compressible: bool) -> Vec<u8> {
    let mut out = n.to_le_bytes().to_vec();
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while out.len() < len.max(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(if compressible {
            (out.len() % 5) as u8
        } else {
            x as u8
        });
    }
    out
}

/// Checks the recovered log against the model; `Err` says what differs.
fn matches(wal: &Wal, m: &Log, floor: u64) -> Result<(), String> {
    if wal.last_index() != m.last() {
        return Err(format!(
            "last {:?} != model {:?}",
            wal.last_index(),
            m.last()
        ));
    }
    if wal.meta() != m.meta {
        return Err(format!("meta {:?} != model {:?}", wal.meta(), m.meta));
    }
    let r = wal.reader();
    if r.durable_last_index() != wal.last_index() {
        return Err("reader does not see every recovered entry".into());
    }
    if let (Some(first), Some(last)) = (wal.first_index(), wal.last_index()) {
        for i in first..=last {
            let got = r.read(i).map_err(|e| e.to_string())?;
            match m.get(i) {
                Some(p) if *p == got => {}
                Some(_) => return Err(format!("entry {i} differs")),
                None => {
                    return Err(format!(
                        "entry {i} was never appended (model first {})",
                        m.first
                    ))
                }
            }
        }
        let required = m.first.max(floor);
        if m.last().is_some_and(|l| l >= required) && first > required {
            return Err(format!(
                "entries {required}..{first} lost (model first {}, gc floor {floor})",
                m.first
            ));
        }
    }
    Ok(())
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

fn run(ops: Vec<Op>, io: Arc<IoThread>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), OPTS, io.clone()).unwrap();
    let mut acked = Log::default();
    let mut staged: Vec<Staged> = Vec::new();
    let mut floor = 0u64;
    let mut counter = 0u64;
    let mut acked_pos = wal.write_position();
    for op in ops {
        match op {
            Op::Append {
                back,
                len,
                compressible,
            } => {
                let cur = acked.with(&staged);
                let index = match (wal.first_index(), cur.last()) {
                    (Some(first), Some(last)) => (last + 1).saturating_sub(back as u64).max(first),
                    _ => cur.expected.unwrap_or(1),
                };
                counter += 1;
                let p = make_payload(counter, len as usize, compressible);
                wal.append(index, &p).unwrap();
                staged.push(Staged::Entry(index, p));
            }
            Op::SetMeta(b) => {
                counter += 1;
                let m = make_payload(counter, b as usize, false);
                wal.set_meta(&m).unwrap();
                staged.push(Staged::Meta(m));
            }
            Op::Flush => {
                wal.flush().unwrap().wait().unwrap();
                acked = acked.with(&staged);
                staged.clear();
                acked_pos = wal.write_position();
                let r = wal.reader();
                prop_assert_eq!(r.durable_last_index(), acked.last());
                if let (Some(f), Some(l)) = (r.first_index(), r.durable_last_index()) {
                    for i in [f, (f + l) / 2, l] {
                        prop_assert_eq!(Some(&r.read(i).unwrap()), acked.get(i));
                    }
                }
            }
            Op::Gc(frac) => {
                if let (Some(f), Some(l)) = (wal.first_index(), wal.last_index()) {
                    let idx = f + (l + 1 - f) * frac as u64 / 255;
                    wal.remove_segments_below(idx).unwrap();
                    floor = floor.max(idx);
                    let nf = wal.first_index().unwrap();
                    prop_assert!(
                        nf <= idx.min(wal.last_index().unwrap()),
                        "gc dropped entries at or above {}",
                        idx
                    );
                }
            }
            Op::Reset(k) => {
                let cur = acked.with(&staged);
                let n = cur.last().unwrap_or(0) + k as u64;
                wal.reset(n).unwrap();
                acked = Log {
                    first: 0,
                    entries: Vec::new(),
                    meta: cur.meta,
                    expected: Some(n),
                };
                staged.clear();
                floor = 0;
                acked_pos = wal.write_position();
            }
            Op::Reopen => {
                wal.flush().unwrap().wait().unwrap();
                acked = acked.with(&staged);
                staged.clear();
                drop(wal);
                wal = Wal::open(dir.path(), OPTS, io.clone()).unwrap();
                matches(&wal, &acked, floor).map_err(TestCaseError::fail)?;
                acked_pos = wal.write_position();
            }
            Op::Crash { unacked, damage } => {
                let pending = if unacked && !staged.is_empty() {
                    // Written (and even synced) but never acknowledged.
                    let _ = wal.flush().unwrap().wait();
                    std::mem::take(&mut staged)
                } else {
                    staged.clear();
                    Vec::new()
                };
                drop(wal);
                // Damage only what lies after the last acknowledged position.
                let files: Vec<PathBuf> = segs(dir.path())
                    .into_iter()
                    .filter(|p| *p >= acked_pos.0)
                    .collect();
                let pick = |fi: &prop::sample::Index, oi: &prop::sample::Index| -> (PathBuf, u64) {
                    let f = fi.get(&files).clone();
                    let len = std::fs::metadata(&f).unwrap().len();
                    let lo = if f == acked_pos.0 { acked_pos.1 } else { 0 };
                    (f, lo + oi.index((len - lo) as usize) as u64)
                };
                match &damage {
                    Damage::None => {}
                    Damage::Cut(fi, oi) if !files.is_empty() => {
                        let (f, at) = pick(fi, oi);
                        std::fs::OpenOptions::new()
                            .write(true)
                            .open(&f)
                            .unwrap()
                            .set_len(at)
                            .unwrap();
                    }
                    Damage::Flip(fi, oi, bit) if !files.is_empty() => {
                        let (f, at) = pick(fi, oi);
                        let mut b = std::fs::read(&f).unwrap();
                        b[at as usize] ^= 1 << bit;
                        std::fs::write(&f, b).unwrap();
                    }
                    _ => {}
                }
                wal = match Wal::open(dir.path(), OPTS, io.clone()) {
                    Ok(w) => w,
                    Err(e) => {
                        return Err(TestCaseError::fail(format!(
                            "open after crash ({damage:?}): {e}"
                        )))
                    }
                };
                let mut found = None;
                let mut why = Vec::new();
                for k in 0..=pending.len() {
                    let m = acked.with(&pending[..k]);
                    match matches(&wal, &m, floor) {
                        Ok(()) => {
                            found = Some(m);
                            break;
                        }
                        Err(e) => why.push(format!("k={k}: {e}")),
                    }
                }
                match found {
                    Some(m) => acked = m,
                    None => return Err(TestCaseError::fail(format!("after crash ({damage:?}) no prefix of the unacknowledged round matches: {why:?}"))),
                }
                acked_pos = wal.write_position();
            }
        }
        let cur = acked.with(&staged);
        prop_assert_eq!(wal.last_index(), cur.last());
        prop_assert_eq!(wal.meta(), cur.meta.clone());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn wal_matches_model_std(ops in proptest::collection::vec(op(), 1..100)) {
        run(ops, IoThread::start(IoBackendChoice::Std).unwrap())?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 500, ..ProptestConfig::default() })]

    #[test]
    fn wal_matches_model_uring(ops in proptest::collection::vec(op(), 1..100)) {
        if weir_wal::detect_backend() != IoBackend::Uring {
            eprintln!("skipping the uring model test: io_uring is unavailable here");
            return Ok(());
        }
        run(ops, IoThread::start(IoBackendChoice::Uring).unwrap())?;
    }
}
