//! The cost model of ingest: CPU µs per record for each stage a record passes through on
//! its way to being searchable, measured one stage at a time over the same records, and,
//! as the floor, tantivy indexing only the bodies of those records with the same commit
//! cadence and merge policy.
//!
//! `cargo bench -p weir-bench --bench cost` (`WEIR_BENCH_COST_RECORDS`, default 400,000).
//! Each stage runs alone, so the process's CPU time (getrusage: user + system, every
//! thread, tantivy's merge threads included) over the stage is the stage's. Stages:
//!
//! 1. decode: prost decoding of `AppendRequest`s of 1,000 records (the gRPC body);
//! 2. normalize: `weir_ingest::normalize` (validation, levels, UTF-8 repair);
//! 3. ingest rules: a tenant's tiered rules (`weir_server::rules`), every record hashed;
//! 4. shard + encode: `split_by_shard` into 4 shards and the `StoredBatch` encoding;
//! 5. wal: each piece appended to its shard's WAL, the 4 flushed together and waited for
//!    (the std backend: pwrite + fdatasync), as the raft thread's group commit does;
//! 6. index: four `ShardIndex`es, one thread each, committed every second as the node's
//!    indexers do by default (`index.commit_interval_ms`), then closed (merges finished):
//!    the whole record (every field, terms, fast fields, the stored record), once with
//!    each document store compression (zstd, lz4), each followed by reading every record
//!    back in time-sorted pages;
//!    After the zstd one, every partition's segments are merged into one: the CPU of one
//!    merge level, which a node pays once per level as a partition's segments grow;
//! 7. floor: the same four threads and cadence, a tantivy index of one `TEXT` field, the
//!    body, nothing stored.
//!
//! Raft's own work (messages, the Ready loop) is not a stage here: the node's total CPU per
//! record under `weir-bench ingest` less these stages bounds it.
//!
//! With `WEIR_BENCH_COST_NODE_DIR=<a stopped node's data directory>` it measures nothing
//! else: it prints that node's index bytes by structure and field, merges every partition
//! into one segment (as the cost model's own index is measured) and prints them again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use weir_index::{DocStore, IndexOptions, ShardIndex};
use weir_proto::v1::{AppendRequest, Record, StoredBatch};
use weir_proto::ShardId;
use weir_wal::{IoBackendChoice, IoThread, Wal, WalOptions};

#[path = "common/gen.rs"]
mod gen;
use gen::{cpu_secs, Gen};

const BATCH: usize = 1000;
const SHARDS: u32 = 4;
const COMMIT_EVERY: Duration = Duration::from_millis(1000);

fn main() {
    // `cargo bench` passes `--bench`; a filter argument runs nothing else here.
    let total: usize = std::env::var("WEIR_BENCH_COST_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400_000);
    if let Some(data) = std::env::var_os("WEIR_BENCH_COST_NODE_DIR") {
        return node_merged(std::path::Path::new(&data));
    }
    let now = weir_proto::now_ns();
    let mut gen = Gen(0x9e37_79b9_7f4a_7c15);
    // The records as an agent sends them, stamped now (1 µs apart) so that none is too old.
    let wire: Vec<Vec<u8>> = (0..total / BATCH)
        .map(|b| {
            let records = (0..BATCH)
                .map(|j| {
                    let i = (b * BATCH + j) as u64;
                    let s = gen.record(i, total as u64);
                    Record {
                        timestamp_ns: now + i as i64 * 1000,
                        level: ["", "trace", "debug", "info", "warn", "error", "fatal"]
                            [s.level as usize]
                            .into(),
                        body: s.body.into_bytes(),
                        service: s.service,
                        namespace: s.namespace,
                        pod: s.pod,
                        cluster: s.cluster,
                        labels: s.labels.into_iter().collect(),
                        attributes: s.attributes.into_iter().collect(),
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                    }
                })
                .collect();
            AppendRequest {
                tenant: "default".into(),
                records,
                ..Default::default()
            }
            .encode_to_vec()
        })
        .collect();
    let n = (wire.len() * BATCH) as f64;
    let raw_bytes: usize = wire.iter().map(Vec::len).sum();
    println!(
        "cost model: {} records, {:.0} bytes each on the wire, {} shards, commit every {} ms",
        n,
        raw_bytes as f64 / n,
        SHARDS,
        COMMIT_EVERY.as_millis()
    );
    let mut rows = Vec::new();

    let (requests, cpu) = stage(|| {
        wire.iter()
            .map(|b| AppendRequest::decode(b.as_slice()).unwrap())
            .collect::<Vec<_>>()
    });
    rows.push(("decode (prost)".into(), cpu));

    let limits = weir_ingest::Limits::default();
    let (normalized, cpu) = stage(|| {
        requests
            .into_iter()
            .map(|r| {
                let n = weir_ingest::normalize(r, now, &limits).unwrap();
                assert!(n.rejected.is_empty(), "{:?}", n.rejected.first());
                n
            })
            .collect::<Vec<_>>()
    });
    rows.push(("normalize".into(), cpu));

    // A tenant's tiered rules (errors kept; warn, info and debug sampled at 99.99%, so
    // that every record is hashed and nearly all go on to the next stages).
    let rules = tiered_rules();
    let (normalized, cpu) = stage(|| {
        normalized
            .into_iter()
            .map(|mut n| {
                n.records.retain(|(_, r)| {
                    weir_server::rules::decide(&rules, r) == weir_server::rules::Decision::Keep
                });
                n
            })
            .collect::<Vec<_>>()
    });
    rows.push(("ingest rules: 4 rules, sampling hash".into(), cpu));
    let kept: usize = normalized.iter().map(|n| n.records.len()).sum();

    let (pieces, cpu) = stage(|| {
        normalized
            .into_iter()
            .map(|n| {
                weir_ingest::split_by_shard(n, SHARDS, now)
                    .into_iter()
                    .map(|(shard, batch, _)| (shard.0, batch.encode_to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    });
    rows.push(("shard + encode".into(), cpu));
    let stored_bytes: usize = pieces.iter().flatten().map(|(_, b)| b.len()).sum();

    let wal_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let io = IoThread::start(IoBackendChoice::Std).unwrap();
    let mut wals: Vec<Wal> = (0..SHARDS)
        .map(|s| {
            let d = wal_dir.path().join(format!("shard-{s}"));
            std::fs::create_dir_all(&d).unwrap();
            Wal::open(&d, WalOptions::default(), io.clone()).unwrap()
        })
        .collect();
    let ((), cpu) = stage(|| {
        let mut next = vec![0u64; SHARDS as usize];
        for round in &pieces {
            let mut tickets = Vec::new();
            for (shard, bytes) in round {
                let s = *shard as usize;
                next[s] += 1;
                wals[s].append(next[s], bytes).unwrap();
            }
            for w in &mut wals {
                tickets.push(w.flush().unwrap());
            }
            for t in tickets {
                t.wait().unwrap();
            }
        }
    });
    rows.push(("wal append + group fsync".into(), cpu));
    drop(wals);

    // Per shard: its batches in log order.
    let mut by_shard: Vec<Vec<StoredBatch>> = vec![Vec::new(); SHARDS as usize];
    for round in &pieces {
        for (shard, bytes) in round {
            by_shard[*shard as usize].push(StoredBatch::decode(bytes.as_slice()).unwrap());
        }
    }
    let by_shard = Arc::new(by_shard);

    // The whole record, once per document store compression, then every record read back.
    let mut stores = Vec::new();
    let mut by_field = std::collections::BTreeMap::new();
    for (name, docstore) in [("zstd", DocStore::Zstd), ("lz4", DocStore::Lz4)] {
        let index_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let ((), cpu) = stage(|| {
            let threads: Vec<_> = (0..SHARDS)
                .map(|s| {
                    let path = index_dir.path().join(format!("shard-{s}"));
                    let batches = by_shard.clone();
                    std::thread::spawn(move || {
                        let opts = IndexOptions {
                            docstore,
                            ..IndexOptions::default()
                        };
                        let ix = ShardIndex::open(&path, ShardId(s), opts).unwrap();
                        let mut last = Instant::now();
                        for (i, b) in batches[s as usize].iter().enumerate() {
                            ix.add_batch(i as u64 + 1, b).unwrap();
                            if last.elapsed() >= COMMIT_EVERY {
                                ix.commit().unwrap();
                                last = Instant::now();
                            }
                        }
                        ix.close().unwrap();
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        });
        rows.push((
            format!("index ({name} store): whole record, merges included"),
            cpu,
        ));
        let (read, cpu) = stage(|| read_back(index_dir.path()));
        assert_eq!(read, kept as u64, "every record reads back");
        rows.push((
            format!("read back ({name} store): every record, time-sorted pages"),
            cpu,
        ));
        let mut by_kind = std::collections::BTreeMap::new();
        bytes_by_extension(index_dir.path(), &mut by_kind);
        stores.push((name, dir_bytes(index_dir.path()), by_kind));
        if docstore == DocStore::Zstd {
            // What one merge level costs: every partition's segments merged into one, so
            // that every record is rewritten once. A node pays this once per level.
            let shards = shard_dirs(index_dir.path());
            let ((), cpu) = stage(|| merge_everything(&shards));
            rows.push((
                "merge (zstd store): every record rewritten once".into(),
                cpu,
            ));
            by_field = space_by_field(&shards);
        }
    }

    let floor_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ((), cpu) = stage(|| {
        let threads: Vec<_> = (0..SHARDS)
            .map(|s| {
                let path = floor_dir.path().join(format!("shard-{s}"));
                let batches = by_shard.clone();
                std::thread::spawn(move || body_only(&path, &batches[s as usize]))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    });
    rows.push(("floor: tantivy, body only, merges included".into(), cpu));
    let floor_bytes = dir_bytes(floor_dir.path());

    println!("| stage | CPU s | µs a record |");
    println!("| --- | --- | --- |");
    for (name, cpu) in &rows {
        println!("| {name} | {cpu:.2} | {:.2} |", cpu * 1e6 / n);
    }
    let cpu_of = |prefix: &str| {
        rows.iter()
            .find(|(name, _)| name.starts_with(prefix))
            .map_or(f64::NAN, |(_, cpu)| *cpu)
    };
    let floor = cpu_of("floor");
    println!(
        "whole record / floor: zstd store {:.2}x, lz4 store {:.2}x (floor {:.0} bytes a record)",
        cpu_of("index (zstd") / floor,
        cpu_of("index (lz4") / floor,
        floor_bytes as f64 / n
    );
    println!(
        "one merge level / indexing (zstd store): {:.2}",
        cpu_of("merge (zstd") / cpu_of("index (zstd")
    );
    for (name, bytes, by_kind) in &stores {
        let kinds: Vec<String> = by_kind
            .iter()
            .filter(|(_, b)| **b as f64 / n >= 0.5)
            .map(|(k, b)| format!("{k} {:.0}", *b as f64 / n))
            .collect();
        println!(
            "{name} store: index {:.0} bytes a record as indexed, every file of its \
             segments ({:.2} of the stored record's {:.0} bytes, {:.2} of the {:.0} bytes \
             on the wire); by file kind: {}",
            *bytes as f64 / n,
            *bytes as f64 / stored_bytes as f64,
            stored_bytes as f64 / n,
            *bytes as f64 / raw_bytes as f64,
            raw_bytes as f64 / n,
            kinds.join(", ")
        );
    }
    // Where the fully merged zstd index's bytes are, by structure and field, so that a
    // change to the schema names the bytes it moves.
    let merged = by_field.values().sum::<u64>() as f64;
    println!(
        "zstd store, every partition merged into one segment: {:.1} bytes a record ({:.3} of \
         the stored record, {:.3} of the wire bytes); by structure and field: {}",
        merged / n,
        merged / stored_bytes as f64,
        merged / raw_bytes as f64,
        per_record(&by_field, n, 0.5)
    );
}

/// `by_field`'s entries of at least `min` bytes a record over `n` records, as
/// `structure field bytes` separated by commas.
fn per_record(
    by_field: &std::collections::BTreeMap<(String, String), u64>,
    n: f64,
    min: f64,
) -> String {
    by_field
        .iter()
        .filter(|(_, b)| **b as f64 / n >= min)
        .map(|((kind, field), b)| format!("{kind} {field} {:.1}", *b as f64 / n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The shard index directories of the cost model's index in `dir`.
fn shard_dirs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    (0..SHARDS)
        .map(|s| dir.join(format!("shard-{s}")))
        .collect()
}

/// A stopped node's index under data directory `data`, by structure and field, before and
/// after every partition is merged into one segment.
fn node_merged(data: &std::path::Path) {
    let shards: Vec<std::path::PathBuf> = std::fs::read_dir(data)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("index"))
        .filter(|p| p.is_dir())
        .collect();
    let docs = shards
        .iter()
        .flat_map(|s| std::fs::read_dir(s).unwrap().flatten())
        .filter(|p| p.path().is_dir())
        .map(|p| {
            let index = tantivy::Index::open_in_dir(p.path()).unwrap();
            index.reader().unwrap().searcher().num_docs()
        })
        .sum::<u64>() as f64;
    let report = |when: &str| {
        let by_field = space_by_field(&shards);
        let total = by_field.values().sum::<u64>() as f64;
        println!(
            "{docs} records, {when}: {:.1} bytes a record; {}",
            total / docs,
            per_record(&by_field, docs, 0.05)
        );
    };
    report("as the node left it");
    merge_everything(&shards);
    report("every partition merged into one segment");
}

/// Bytes of every partition under the shard index directories `shards` (each holding
/// partition directories) by tantivy structure and field: `(structure, field) -> bytes`,
/// read off tantivy's own space accounting.
fn space_by_field(
    shards: &[std::path::PathBuf],
) -> std::collections::BTreeMap<(String, String), u64> {
    let mut out = std::collections::BTreeMap::new();
    for shard in shards {
        for part in std::fs::read_dir(shard).unwrap().flatten() {
            if !part.path().is_dir() {
                continue;
            }
            let index = tantivy::Index::open_in_dir(part.path()).unwrap();
            let searcher = index.reader().unwrap().searcher();
            for seg in searcher.space_usage().unwrap().segments() {
                let per_field = [
                    ("term", seg.termdict()),
                    ("idx", seg.postings()),
                    ("pos", seg.positions()),
                    ("fast", seg.fast_fields()),
                    ("fieldnorm", seg.fieldnorms()),
                ];
                for (kind, usage) in per_field {
                    for f in usage.fields() {
                        *out.entry((kind.to_owned(), f.field_name().to_owned()))
                            .or_default() += f.total().get_bytes();
                    }
                }
                *out.entry(("store".to_owned(), "record".to_owned()))
                    .or_default() += seg.store().total().get_bytes();
            }
        }
    }
    out
}

/// Reads every record of every shard index under `dir` back, newest first, in pages of
/// [`weir_index::MAX_LIMIT`] (what a scanning LogQL query does); returns how many.
fn read_back(dir: &std::path::Path) -> u64 {
    let mut read = 0;
    for s in 0..SHARDS {
        let ix = ShardIndex::open(
            &dir.join(format!("shard-{s}")),
            ShardId(s),
            IndexOptions::default(),
        )
        .unwrap();
        let mut after = None;
        loop {
            let req = weir_index::SearchRequest {
                query: weir_index::Query::All,
                tenant: "default".into(),
                start_ns: 0,
                end_ns: i64::MAX,
                levels: Vec::new(),
                limit: weir_index::MAX_LIMIT,
                sort: weir_index::Sort::TimeDesc,
                after: after.take(),
                prefilter: false,
            };
            let hits = ix.search(&req).unwrap();
            let (page, _, next) =
                weir_index::merge(vec![hits], req.sort, req.limit, req.after.as_ref());
            read += page
                .iter()
                .map(|h| u64::from(!h.record.body.is_empty()))
                .sum::<u64>();
            match next {
                Some(c) if !page.is_empty() => after = Some(c),
                _ => break,
            }
        }
        ix.close().unwrap();
    }
    read
}

/// Bytes under `p` by file extension (tantivy: `store` the stored records, `idx`
/// postings, `pos` positions, `term` term dictionaries, `fast` fast fields).
fn bytes_by_extension(p: &std::path::Path, out: &mut std::collections::BTreeMap<String, u64>) {
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let m = e.metadata().unwrap();
        if m.is_dir() {
            bytes_by_extension(&e.path(), out);
        } else {
            let ext = e
                .path()
                .extension()
                .map_or_else(|| "other".to_owned(), |x| x.to_string_lossy().into_owned());
            *out.entry(ext).or_default() += m.len();
        }
    }
}

/// The tiered pipeline of docs/tenants.md, at rates that keep nearly everything.
fn tiered_rules() -> Vec<Arc<weir_server::rules::Compiled>> {
    use weir_proto::api::rules::{Action, Rule, RuleSpec};
    let rule = |id: &str, order: u32, action: Action, rate: Option<f64>, levels: &[&str]| {
        Arc::new(
            weir_server::rules::Compiled::new(Rule {
                tenant: "default".into(),
                id: id.into(),
                updated_ns: 0,
                spec: RuleSpec {
                    order,
                    action: Some(action),
                    rate,
                    levels: levels.iter().map(|l| l.to_string()).collect(),
                    ..Default::default()
                },
            })
            .unwrap(),
        )
    };
    vec![
        rule("errors", 10, Action::Keep, None, &["error", "fatal"]),
        rule("warn", 20, Action::Sample, Some(0.9999), &["warn"]),
        rule("info", 30, Action::Sample, Some(0.9999), &["info"]),
        rule("debug", 50, Action::Sample, Some(0.9999), &["debug"]),
    ]
}

/// Merges the segments of every partition of every shard index under `dir` into one
/// segment, one thread a shard, with tantivy's writer as the node's (one thread, 64 MiB).
fn merge_everything(shards: &[std::path::PathBuf]) {
    let parts: Vec<std::path::PathBuf> = shards
        .iter()
        .flat_map(|s| {
            std::fs::read_dir(s)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
        })
        .collect();
    let threads: Vec<_> = parts
        .into_iter()
        .map(|part| {
            std::thread::spawn(move || {
                let index = tantivy::Index::open_in_dir(&part).unwrap();
                let opts = IndexOptions::default();
                let mut w: tantivy::IndexWriter<tantivy::TantivyDocument> = index
                    .writer_with_num_threads(opts.writer_threads, opts.writer_memory_bytes)
                    .unwrap();
                w.set_merge_policy(Box::new(tantivy::merge_policy::NoMergePolicy));
                let ids = index.searchable_segment_ids().unwrap();
                if ids.len() > 1 {
                    w.merge(&ids).wait().unwrap();
                }
                w.wait_merging_threads().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Runs `f` and returns what it made and the process CPU seconds it took.
fn stage<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let before = cpu_secs();
    let out = f();
    (out, cpu_secs() - before)
}

/// The floor: a tantivy index of the bodies alone, with the node's writer settings (one
/// indexing thread, 64 MiB), the default merge policy, a commit every second.
fn body_only(path: &std::path::Path, batches: &[StoredBatch]) {
    use tantivy::schema::{Schema, TEXT};
    std::fs::create_dir_all(path).unwrap();
    let mut b = Schema::builder();
    let body = b.add_text_field("body", TEXT);
    let index = tantivy::Index::create_in_dir(path, b.build()).unwrap();
    let opts = IndexOptions::default();
    let mut w: tantivy::IndexWriter<tantivy::TantivyDocument> = index
        .writer_with_num_threads(opts.writer_threads, opts.writer_memory_bytes)
        .unwrap();
    let mut last = Instant::now();
    for batch in batches {
        for r in &batch.records {
            let mut d = tantivy::TantivyDocument::default();
            d.add_text(body, &r.body);
            w.add_document(d).unwrap();
        }
        if last.elapsed() >= COMMIT_EVERY {
            w.commit().unwrap();
            last = Instant::now();
        }
    }
    w.commit().unwrap();
    w.wait_merging_threads().unwrap();
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}
