//! WAL micro-benchmarks: append + flush + wait of one batch (4 KiB, 64 KiB,
//! 1 MiB) on both I/O backends, against a raw `pwrite` + `fdatasync` baseline
//! of the same size on the same disk, so that the WAL/raw ratio can be read
//! off one run; and a group commit of 4 shards flushing at once.
//!
//! `cargo bench -p weir-bench --bench wal`. Files go under the cargo target
//! dir (a real disk, not a tmpfs).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weir_wal::{detect_backend, IoBackend, IoBackendChoice, IoThread, Wal, WalOptions};

const SIZES: [usize; 3] = [4 << 10, 64 << 10, 1 << 20];

fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir under the target dir")
}

/// Incompressible bytes, so lz4 neither helps nor skews the comparison.
fn payload(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn backends() -> Vec<(IoBackend, Arc<IoThread>)> {
    let mut v = vec![(
        IoBackend::Std,
        IoThread::start(IoBackendChoice::Std).unwrap(),
    )];
    if detect_backend() == IoBackend::Uring {
        v.push((
            IoBackend::Uring,
            IoThread::start(IoBackendChoice::Uring).unwrap(),
        ));
    } else {
        eprintln!("io_uring unavailable here: skipping the uring cases");
    }
    v
}

fn append_flush(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_append_flush_wait");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(10);
    let backends = backends();
    for &size in &SIZES {
        let data = payload(size);
        g.throughput(Throughput::Bytes(size as u64));

        // Baseline: pwrite + fdatasync into a preallocated file.
        g.bench_with_input(
            BenchmarkId::new("raw_pwrite_fdatasync", size),
            &size,
            |b, &size| {
                let dir = tmpdir();
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(dir.path().join("raw"))
                    .unwrap();
                let span = 256u64 << 20;
                weir_wal::durable::preallocate(&f, span).unwrap();
                let mut off = 0u64;
                b.iter(|| {
                    if off + size as u64 > span {
                        off = 0;
                    }
                    f.write_all_at(&data, off).unwrap();
                    f.sync_data().unwrap();
                    off += size as u64;
                });
            },
        );

        for (backend, io) in &backends {
            g.bench_with_input(
                BenchmarkId::new(format!("wal_{backend}"), size),
                &size,
                |b, _| {
                    let dir = tmpdir();
                    let mut wal = Wal::open(dir.path(), WalOptions::default(), io.clone()).unwrap();
                    let mut i = 0u64;
                    b.iter(|| {
                        i += 1;
                        wal.append(i, &data).unwrap();
                        wal.flush().unwrap().wait().unwrap();
                        if i.is_multiple_of(256) {
                            wal.remove_segments_below(i.saturating_sub(64)).unwrap();
                        }
                    });
                },
            );
        }
    }
    g.finish();
}

fn group_commit(c: &mut Criterion) {
    const SHARDS: usize = 4;
    let mut g = c.benchmark_group("wal_group_commit_4_shards_64KiB");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(10);
    g.throughput(Throughput::Bytes((SHARDS * (64 << 10)) as u64));
    let data = payload(64 << 10);
    for (backend, io) in backends() {
        g.bench_function(
            BenchmarkId::new(format!("wal_{backend}"), "concurrent"),
            |b| {
                let dirs: Vec<_> = (0..SHARDS).map(|_| tmpdir()).collect();
                let mut wals: Vec<_> = dirs
                    .iter()
                    .map(|d| Wal::open(d.path(), WalOptions::default(), io.clone()).unwrap())
                    .collect();
                let mut i = 0u64;
                b.iter(|| {
                    i += 1;
                    let tickets: Vec<_> = wals
                        .iter_mut()
                        .map(|w| {
                            w.append(i, &data).unwrap();
                            w.flush().unwrap()
                        })
                        .collect();
                    for t in tickets {
                        t.wait().unwrap();
                    }
                    if i.is_multiple_of(256) {
                        for w in &mut wals {
                            w.remove_segments_below(i.saturating_sub(64)).unwrap();
                        }
                    }
                });
            },
        );
        g.bench_function(
            BenchmarkId::new(format!("wal_{backend}"), "one_after_another"),
            |b| {
                let dirs: Vec<_> = (0..SHARDS).map(|_| tmpdir()).collect();
                let mut wals: Vec<_> = dirs
                    .iter()
                    .map(|d| Wal::open(d.path(), WalOptions::default(), io.clone()).unwrap())
                    .collect();
                let mut i = 0u64;
                b.iter(|| {
                    i += 1;
                    for w in &mut wals {
                        w.append(i, &data).unwrap();
                        w.flush().unwrap().wait().unwrap();
                    }
                    if i.is_multiple_of(256) {
                        for w in &mut wals {
                            w.remove_segments_below(i.saturating_sub(64)).unwrap();
                        }
                    }
                });
            },
        );
    }
    g.finish();
}

criterion_group!(benches, append_flush, group_commit);
criterion_main!(benches);
