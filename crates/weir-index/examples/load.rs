//! Sustained indexing throughput, as the node's indexers see it: `--shards` threads, each
//! feeding its own shard index batches of `--batch` load-generator-like records and
//! committing every `--commit-ms`, until `--records` are in; then it waits for every merge
//! and reports records/s over the whole run, merges included.
//!
//! `cargo run --release -p weir-index --example load -- --records 2000000 --shards 4`
//!
//! Used to profile indexing (`perf record -e cpu-clock -g`) without the rest of the node.

use std::time::{Duration, Instant};

use weir_index::{IndexOptions, ShardIndex};
use weir_proto::v1::{StoredBatch, StoredRecord};
use weir_proto::ShardId;

struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }

    fn record(&mut self, ts: i64) -> StoredRecord {
        let services = ["api", "checkout", "payments", "search", "auth", "inventory"];
        let msgs = [
            "request completed",
            "connection reset by peer while reading response body",
            "upstream timeout after retries exhausted",
            "cache miss for key, fetching from primary store",
            "slow query detected in orders repository",
            "user session refreshed successfully",
        ];
        let service = self.pick(&services);
        let status = [200, 200, 200, 201, 404, 500, 503][(self.next() % 7) as usize];
        let body = format!(
            "{} {} status={} duration_ms={} user_id=u{} order_id=o{} client=10.{}.{}.{} {}",
            self.pick(&["GET", "POST", "PUT", "DELETE"]),
            self.pick(&["/api/v1/orders", "/api/v1/users/me", "/healthz"]),
            status,
            self.next() % 2000,
            self.next() % 100_000,
            self.next() % 10_000_000,
            self.next() % 256,
            self.next() % 256,
            self.next() % 256,
            self.pick(&msgs),
        );
        let mut r = StoredRecord {
            timestamp_ns: ts,
            level: 3,
            body,
            service: service.into(),
            namespace: "prod".into(),
            pod: format!("{service}-{:x}", self.next() % 16),
            cluster: "eu-west-1".into(),
            trace_id: format!("{:016x}{:016x}", self.next(), self.next()),
            span_id: format!("{:016x}", self.next()),
            ..Default::default()
        };
        r.labels.insert("app".into(), service.into());
        r.labels.insert("env".into(), "production".into());
        r.attributes
            .insert("request_id".into(), format!("{:016x}", self.next()));
        r
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn main() {
    let records = arg("--records", 2_000_000);
    let shards = arg("--shards", 4);
    let batch = arg("--batch", 1000);
    let commit_ms = arg("--commit-ms", 250);
    let dir = tempfile::tempdir().expect("temp dir");
    let t0 = 1_700_000_000_000_000_000i64;
    let started = Instant::now();
    let threads: Vec<_> = (0..shards)
        .map(|s| {
            let path = dir.path().join(format!("shard-{s}"));
            std::thread::spawn(move || {
                let ix = ShardIndex::open(&path, ShardId(s as u32), IndexOptions::default())
                    .expect("open");
                let mut gen = Gen(0x9e37_79b9_7f4a_7c15 ^ (s + 1));
                let mut last_commit = Instant::now();
                let mut n = 0u64;
                let mut log_index = 0;
                while n < records / shards {
                    let rs = (0..batch)
                        .map(|i| gen.record(t0 + ((n + i) * 10_000) as i64))
                        .collect();
                    n += batch;
                    log_index += 1;
                    let b = StoredBatch {
                        tenant: "default".into(),
                        records: rs,
                        received_ns: 0,
                    };
                    ix.add_batch(log_index, &b).expect("add");
                    if last_commit.elapsed() >= Duration::from_millis(commit_ms) {
                        ix.commit().expect("commit");
                        last_commit = Instant::now();
                    }
                }
                ix.close().expect("close");
                n
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    let secs = started.elapsed().as_secs_f64();
    let bytes: u64 = walkdir_size(dir.path());
    println!(
        "{total} records in {secs:.1} s: {:.0} records/s, merges included; index {:.1} MB ({:.0} B/record)",
        total as f64 / secs,
        bytes as f64 / 1e6,
        bytes as f64 / total as f64
    );
}

fn walkdir_size(p: &std::path::Path) -> u64 {
    let mut sum = 0;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let m = e.metadata().expect("metadata");
        sum += if m.is_dir() {
            walkdir_size(&e.path())
        } else {
            m.len()
        };
    }
    sum
}
