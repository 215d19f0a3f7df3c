//! weir-index micro-benchmarks: indexing throughput of realistic ~200-byte lines in
//! batches of 1000, and search latency (trace_id lookup, term, phrase, time range) over a
//! shard holding `WEIR_BENCH_INDEX_DOCS` records (default 500 000) spread over 24 hourly
//! partitions.
//!
//! Run: `cargo bench -p weir-bench --bench index`. With `WEIR_BENCH_SUSTAINED_RECORDS=N`
//! it first indexes N records the way a node's four indexers do, merges included, and
//! reports records/s and CPU seconds (add `-- index/ingest` to skip the search part).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use weir_index::{parse_query, IndexOptions, SearchRequest, ShardIndex, Sort};
use weir_proto::v1::{StoredBatch, StoredRecord};
use weir_proto::ShardId;

const BATCH: usize = 1000;

#[path = "common/gen.rs"]
mod gen;
use gen::{cpu_secs, Gen, HOUR, T0};

fn batch(records: Vec<StoredRecord>) -> StoredBatch {
    StoredBatch {
        tenant: "default".into(),
        records,
        received_ns: 0,
    }
}

fn bench_indexing(c: &mut Criterion) {
    let mut g = c.benchmark_group("index/ingest");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(15))
        .warm_up_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut gen = Gen(0x9e37_79b9_7f4a_7c15);
    let n = 10_000_000;
    let mut i = 0u64;
    let mut next_batch = move || {
        let records = (0..BATCH)
            .map(|_| {
                i += 1;
                gen.record(i, n)
            })
            .collect();
        batch(records)
    };
    let avg_len = {
        let b = next_batch();
        b.records.iter().map(|r| r.body.len()).sum::<usize>() / b.records.len()
    };
    eprintln!("average body length: {avg_len} bytes (a record: body + service, pod, labels, ids)");
    // One index for the whole run, committed every 10 batches (10 000 records), as the
    // indexer does every 250 ms at ~40k records/s.
    let dir = tempfile::tempdir().unwrap();
    let ix = ShardIndex::open(dir.path(), ShardId(0), IndexOptions::default()).unwrap();
    let mut log_index = 0u64;
    g.bench_function("batch_1000_commit_every_10", |b| {
        b.iter_batched(
            &mut next_batch,
            |bt| {
                log_index += 1;
                ix.add_batch(log_index, &bt).unwrap();
                if log_index.is_multiple_of(10) {
                    ix.commit().unwrap();
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// Sustained indexing as the node does it, run only when `WEIR_BENCH_SUSTAINED_RECORDS` is
/// set: one thread per shard (4), each committing every 250 ms like the indexer, until
/// that many records are in and every merge is done. Reports records/s of the whole run and the CPU seconds it took
/// (the steadier number on a shared machine). Not a criterion measurement: merges make one
/// run's cost depend on everything indexed before it, so it runs once.
fn sustained(_c: &mut Criterion) {
    let Some(total) = std::env::var("WEIR_BENCH_SUSTAINED_RECORDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return;
    };
    let shards = 4u64;
    let dir = tempfile::tempdir().unwrap();
    let cpu0 = cpu_secs();
    let started = Instant::now();
    let threads: Vec<_> = (0..shards)
        .map(|s| {
            let path = dir.path().join(format!("shard-{s}"));
            std::thread::spawn(move || {
                let ix =
                    ShardIndex::open(&path, ShardId(s as u32), IndexOptions::default()).unwrap();
                let mut gen = Gen(0x9e37_79b9_7f4a_7c15 ^ (s + 1));
                let mut last_commit = Instant::now();
                let (mut i, mut log_index) = (0u64, 0u64);
                while i < total / shards {
                    // Timestamps 10 µs apart: one hourly partition, as live ingest is.
                    let records = (0..BATCH)
                        .map(|_| {
                            i += 1;
                            gen.record(i, 8_640_000_000)
                        })
                        .collect();
                    log_index += 1;
                    ix.add_batch(log_index, &batch(records)).unwrap();
                    if last_commit.elapsed() >= Duration::from_millis(250) {
                        ix.commit().unwrap();
                        last_commit = Instant::now();
                    }
                }
                ix.close().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    eprintln!(
        "index/sustained: {total} records, 4 shards, commit every 250 ms: {secs:.1} s, \
         {:.0} records/s, merges included; {cpu:.1} CPU s ({:.1} µs of CPU a record)",
        total as f64 / secs,
        cpu * 1e6 / total as f64
    );
}

fn loaded_index(dir: &std::path::Path, n: u64) -> (ShardIndex, String) {
    let ix = ShardIndex::open(dir, ShardId(0), IndexOptions::default()).unwrap();
    let mut gen = Gen(0x2545_f491_4f6c_dd1d);
    let started = Instant::now();
    let mut trace = String::new();
    let mut i = 0u64;
    let mut log_index = 0u64;
    while i < n {
        let records: Vec<StoredRecord> = (0..BATCH as u64)
            .map(|_| {
                i += 1;
                gen.record(i, n)
            })
            .collect();
        if trace.is_empty() && i >= n / 2 {
            trace = records[BATCH / 2].trace_id.clone();
        }
        log_index += 1;
        ix.add_batch(log_index, &batch(records)).unwrap();
        if log_index.is_multiple_of(10) {
            ix.commit().unwrap();
        }
    }
    ix.commit().unwrap();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "loaded {n} records in {secs:.1} s ({:.0} records/s), {} partitions",
        n as f64 / secs,
        ix.partition_count()
    );
    (ix, trace)
}

fn bench_search(c: &mut Criterion) {
    let n: u64 = std::env::var("WEIR_BENCH_INDEX_DOCS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500_000);
    let dir = tempfile::tempdir().unwrap();
    let (ix, trace) = loaded_index(dir.path(), n);
    let whole_day = |q: &str, sort: Sort| SearchRequest {
        query: parse_query(q).unwrap(),
        tenant: "default".into(),
        start_ns: T0,
        end_ns: T0 + 24 * HOUR,
        levels: vec![],
        limit: 100,
        sort,
        after: None,
        prefilter: false,
    };
    let cases = vec![
        (
            "trace_id",
            whole_day(&format!("trace_id:{trace}"), Sort::TimeDesc),
        ),
        ("term_timeout", whole_day("timeout", Sort::TimeDesc)),
        ("term_timeout_by_score", whole_day("timeout", Sort::Score)),
        (
            "phrase_connection_reset",
            whole_day("\"connection reset\"", Sort::TimeDesc),
        ),
        (
            "field_and_term",
            whole_day("service:payments level:error timeout", Sort::TimeDesc),
        ),
        (
            "time_range_1h_all",
            SearchRequest {
                start_ns: T0 + 12 * HOUR + HOUR / 2,
                end_ns: T0 + 13 * HOUR + HOUR / 2,
                ..whole_day("", Sort::TimeDesc)
            },
        ),
    ];
    for (name, r) in &cases {
        let h = ix.search(r).unwrap();
        eprintln!("{name}: {} matches", h.total);
        assert!(h.total > 0, "{name} matches nothing");
    }
    let mut g = c.benchmark_group("index/search");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for (name, r) in &cases {
        g.bench_function(*name, |b| b.iter(|| ix.search(r).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, sustained, bench_indexing, bench_search);
criterion_main!(benches);
