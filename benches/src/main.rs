//! `weir-bench`: the end-to-end load generator.
//!
//! - `weir-bench ingest`: pushes realistic lines over gRPC with N concurrent clients and
//!   reports lines/s, MB/s and acknowledgement latency (p50/p99/max), then measures the raw
//!   fsync'd write bandwidth of the same disk at the same batch size, so the two can be
//!   compared as a ratio from one run.
//! - `weir-bench query`: latency of a trace_id lookup, a term, a phrase and a time-range
//!   query against a loaded node.
//! - `weir-bench mirror`: starts a node in this process with both mirrors pointed at the
//!   in-repo Elasticsearch and Loki test servers, ingests at a fixed rate, and reports the
//!   lines/s each backend received and the mirrors' lag; then takes both backends down for
//!   a while and reports how fast the backlog drains once they are back.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use weir_proto::api::search::SearchResponse;
use weir_proto::v1::ingest_client::IngestClient;
use weir_proto::v1::{AppendRequest, Record};

mod protocols;
use protocols::BenchProtocol;

#[derive(Parser)]
#[command(name = "weir-bench", about = "Weir's end-to-end load generator")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Push realistic lines and report throughput and ack latency.
    Ingest(IngestArgs),
    /// Mirror throughput and lag, and backlog drain after an outage.
    Mirror(MirrorArgs),
    /// Measure query latencies on a loaded node.
    Query {
        /// HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        addr: String,
        /// Runs of each query.
        #[arg(long, default_value_t = 50)]
        iterations: usize,
        /// The time every query's range ends at, in Unix seconds (default: now). The
        /// time-bounded cases (the last 5 minutes, the last hour) then read the same
        /// records however long after the ingest they run, so that two builds can be
        /// compared over one data directory.
        #[arg(long)]
        at: Option<i64>,
    },
}

/// Arguments of `weir-bench mirror`.
#[derive(clap::Args)]
struct MirrorArgs {
    /// Ingest rate, lines/s.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Healthy phase.
    #[arg(long, default_value_t = 20)]
    healthy_secs: u64,
    /// Both backends down for this long (0 skips the outage and drain phases).
    #[arg(long, default_value_t = 20)]
    outage_secs: u64,
    /// Give up waiting for the drain after this long.
    #[arg(long, default_value_t = 120)]
    drain_max_secs: u64,
    /// Data directory of the node (a temporary one when absent).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Arguments of `weir-bench ingest`.
#[derive(clap::Args)]
struct IngestArgs {
    /// gRPC endpoint; several, comma separated, for a cluster (clients are spread over
    /// them, and a client whose node fails retries its batch on the next one).
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    addr: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Lines per Append.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// How long to push.
    #[arg(long, default_value_t = 20)]
    duration_secs: u64,
    /// Target lines/s over all clients (0 = as fast as acknowledgements allow).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Directory on the node's disk for the raw fsync baseline (skipped when absent).
    #[arg(long)]
    fsync_dir: Option<PathBuf>,
    /// Seed of the line generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The path to push through: Weir's gRPC Append, or the same lines as an OTLP/HTTP
    /// export, a Loki push or an Elasticsearch bulk request.
    #[arg(long, value_enum, default_value = "grpc")]
    protocol: BenchProtocol,
    /// HTTP endpoint, for the HTTP protocols and the search probe.
    #[arg(long, default_value = "http://127.0.0.1:4318")]
    http_addr: String,
    /// Every this many ms, append one record with a unique word and search for it until
    /// found, reporting the time from its ack to the first search that finds it (0: off).
    #[arg(long, default_value_t = 0)]
    probe_ms: u64,
}

const SERVICES: [&str; 16] = [
    "checkout",
    "payments",
    "cart",
    "search",
    "auth",
    "users",
    "orders",
    "inventory",
    "shipping",
    "email",
    "gateway",
    "pricing",
    "reviews",
    "ads",
    "recommend",
    "billing",
];
const NAMESPACES: [&str; 4] = ["prod", "staging", "batch", "infra"];

/// Builds one realistic log line (~200 bytes) and its record.
fn make_record(rng: &mut SmallRng, now_ns: i64) -> Record {
    let svc = SERVICES[rng.random_range(0..SERVICES.len())];
    let ms = rng.random_range(1..2500);
    let id = rng.random_range(100_000..999_999);
    let user = rng.random_range(1..50_000);
    let ip = format!(
        "10.{}.{}.{}",
        rng.random_range(0..255),
        rng.random_range(0..255),
        rng.random_range(1..255)
    );
    let (level, text) = match rng.random_range(0..100) {
        0..=34 => ("info", format!("GET /api/v1/orders/{id} 200 {ms}ms user={user} bytes={} ua=\"Mozilla/5.0 (X11; Linux x86_64)\"", rng.random_range(200..90_000))),
        35..=49 => ("debug", format!("cache miss for key session:{:016x} after {ms}ms, falling back to primary store shard={}", rng.random::<u64>(), id % 64)),
        50..=59 => ("info", format!("job {id} completed in {ms}ms, {} rows processed, {} skipped, checkpoint written", rng.random_range(1..1_000_000), rng.random_range(0..100))),
        60..=69 => ("info", format!("user {user} logged in from {ip} using method=password mfa=true session_ttl=3600s region=eu-west-1")),
        70..=79 => ("warn", format!("retrying request to {svc}.internal:8443 (attempt {}/5): deadline exceeded after {ms}ms", rng.random_range(1..5))),
        80..=87 => ("warn", format!("timeout after {ms}ms waiting for lock on table orders, query=UPDATE orders SET status='paid' WHERE id={id}")),
        88..=95 => ("error", format!("connection reset by peer while reading response from upstream {ip}:{} (request {id}, {ms}ms)", rng.random_range(1024..65535))),
        _ => ("error", format!("payment {id} declined: insufficient funds (card ****{:04}), customer={user} amount={}.{:02} EUR", rng.random_range(0..10_000), rng.random_range(1..900), rng.random_range(0..100))),
    };
    // Most services append structured context to the message; it brings lines to ~200 bytes.
    let text = format!(
        "{text} svc={svc} host=node-{:02} thread=worker-{} dur_ms={ms} version=2.{}.{} zone=eu-west-1{}",
        id % 40,
        rng.random_range(0..32),
        id % 9,
        id % 31,
        ["a", "b", "c"][id as usize % 3]
    );
    Record {
        timestamp_ns: now_ns,
        level: level.into(),
        body: text.into_bytes(),
        service: svc.into(),
        namespace: NAMESPACES[id as usize % NAMESPACES.len()].into(),
        pod: format!("{svc}-{:x}", id % 7),
        cluster: "bench".into(),
        labels: [
            ("app".to_string(), svc.to_string()),
            ("env".to_string(), "bench".to_string()),
        ]
        .into(),
        attributes: [(
            "request_id".to_string(),
            format!("{:016x}", rng.random::<u64>()),
        )]
        .into(),
        trace_id: format!("{:032x}", rng.random::<u128>()),
        span_id: format!("{:016x}", rng.random::<u64>()),
    }
}

use weir_proto::now_ns;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Ingest(args) => ingest(args).await,
        Cmd::Mirror(args) => mirror(args).await,
        Cmd::Query {
            addr,
            iterations,
            at,
        } => {
            query(
                addr,
                iterations,
                at.map_or_else(now_ns, |s| s * 1_000_000_000),
            )
            .await
        }
    }
}

/// The counters every client of `weir-bench ingest` adds to.
struct Tally<'a> {
    lines: &'a AtomicU64,
    bytes: &'a AtomicU64,
    errors: &'a AtomicU64,
    stop: &'a AtomicBool,
    hist: &'a Mutex<Histogram<u64>>,
    acks: &'a Mutex<Vec<u64>>,
    started: Instant,
}

impl Tally<'_> {
    /// One request of `lines` lines (`bytes` of bodies) acknowledged, sent at `sent`.
    fn acked(&self, sent: Instant, lines: usize, bytes: usize) {
        let us = sent.elapsed().as_micros() as u64;
        self.hist.lock().unwrap().record(us.max(1)).ok();
        self.acks
            .lock()
            .unwrap()
            .push(self.started.elapsed().as_micros() as u64);
        self.lines.fetch_add(lines as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Appends `req` over gRPC until it is acknowledged (or the run stops), moving to the next
/// node after a failure: a batch is retried with the same producer id and sequence, so it
/// is never stored twice; its latency includes the retries. Returns the node used last.
async fn push_grpc(
    clients: &mut [IngestClient<tonic::transport::Channel>],
    mut current: usize,
    req: AppendRequest,
    n_bytes: usize,
    tally: &Tally<'_>,
) -> usize {
    let t = Instant::now();
    loop {
        let mut r = grpc_request(req.clone());
        r.set_timeout(Duration::from_secs(15));
        match clients[current].append(r).await {
            Ok(_) => {
                tally.acked(t, req.records.len(), n_bytes);
                return current;
            }
            Err(s) => {
                if tally.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("append failed: {:?} {}", s.code(), s.message());
                }
                if tally.stop.load(Ordering::Relaxed) {
                    return current;
                }
                current = (current + 1) % clients.len();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Pushes `records` as one request of an HTTP protocol until it is acknowledged (or the
/// run stops); its latency includes the retries.
async fn push_http(
    http: &reqwest::Client,
    http_addr: &str,
    protocol: BenchProtocol,
    records: &[Record],
    n_bytes: usize,
    tally: &Tally<'_>,
) {
    let (path, content_type) = protocol.http();
    let body = protocol.body(records);
    let t = Instant::now();
    loop {
        let sent = http
            .post(format!("{http_addr}{path}"))
            .header("content-type", content_type)
            .body(body.clone())
            .timeout(Duration::from_secs(15))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                // An ES bulk answers 200 with per-item errors: read them.
                let text = r.text().await.unwrap_or_default();
                if protocol == BenchProtocol::EsBulk && text.contains("\"errors\":true") {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("bulk items refused: {}", &text[..text.len().min(300)]);
                }
                tally.acked(t, records.len(), n_bytes);
                return;
            }
            other => {
                if tally.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    match other {
                        Ok(r) => eprintln!(
                            "push refused: {} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        ),
                        Err(e) => eprintln!("push failed: {e}"),
                    }
                }
                if tally.stop.load(Ordering::Relaxed) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let IngestArgs {
        addr,
        concurrency,
        batch,
        duration_secs,
        rate,
        fsync_dir,
        seed,
        protocol,
        http_addr,
        probe_ms,
    } = args;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .default_headers(key_headers())
        .build()?;
    let lines = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    // When each ack completed (µs since start), over all clients: the longest gap between
    // two is how long acknowledgements stopped (a failover, a stall).
    let acks: Arc<Mutex<Vec<u64>>> = Arc::default();
    let duration = Duration::from_secs(duration_secs);
    let started = Instant::now();
    let addrs: Vec<String> = addr.split(',').map(|a| a.trim().to_owned()).collect();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let mut clients = Vec::new();
        for a in &addrs {
            let ch = tonic::transport::Endpoint::from_shared(a.clone())?
                .connect_timeout(Duration::from_secs(1))
                .connect_lazy();
            clients.push(IngestClient::new(ch).max_decoding_message_size(64 << 20));
        }
        let mut current = w % clients.len();
        let (lines, bytes, errors, stop, hist, acks) = (
            lines.clone(),
            bytes.clone(),
            errors.clone(),
            stop.clone(),
            hist.clone(),
            acks.clone(),
        );
        let per_worker_rate = rate as f64 / concurrency as f64;
        let (http, http_addr) = (http.clone(), http_addr.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed.wrapping_add(w as u64));
            let mut sent_lines = 0u64;
            // Clients at a target rate start a fraction of a batch interval apart: in
            // step, every client's batch would arrive at the same instant and each ack
            // would wait for the others' (agents are not in phase).
            let phase = if per_worker_rate > 0.0 {
                Duration::from_secs_f64(
                    batch as f64 / per_worker_rate * w as f64 / concurrency as f64,
                )
            } else {
                Duration::ZERO
            };
            let t0 = Instant::now() + phase;
            let producer_id = format!("weir-bench-{seed}-{w}-{}", rand::random::<u32>());
            let mut sequence = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if per_worker_rate > 0.0 {
                    let due = t0 + Duration::from_secs_f64(sent_lines as f64 / per_worker_rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let now = now_ns();
                let records: Vec<Record> = (0..batch).map(|_| make_record(&mut rng, now)).collect();
                let n_bytes: usize = records.iter().map(|r| r.body.len()).sum();
                let tally = Tally {
                    lines: &lines,
                    bytes: &bytes,
                    errors: &errors,
                    stop: &stop,
                    hist: &hist,
                    acks: &acks,
                    started,
                };
                if protocol == BenchProtocol::Grpc {
                    sequence += 1;
                    let req = AppendRequest {
                        records,
                        producer_id: producer_id.clone(),
                        sequence,
                        ..Default::default()
                    };
                    current = push_grpc(&mut clients, current, req, n_bytes, &tally).await;
                } else {
                    push_http(&http, &http_addr, protocol, &records, n_bytes, &tally).await;
                }
                sent_lines += batch as u64;
            }
        }));
    }
    let probe = (probe_ms > 0).then(|| {
        tokio::spawn(probe_search(
            addrs[0].clone(),
            http.clone(),
            http_addr.clone(),
            Duration::from_millis(probe_ms),
            stop.clone(),
        ))
    });
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let probed = match probe {
        Some(p) => Some(p.await??),
        None => None,
    };
    let (l, b) = (lines.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed));
    let mb_s = b as f64 / secs / 1e6;
    println!(
        "ingest: protocol={protocol:?} concurrency={concurrency} batch={batch} rate_target={} duration={secs:.1}s",
        if rate == 0 {
            "max".into()
        } else {
            rate.to_string()
        }
    );
    report_acks(
        secs,
        l,
        b,
        &hist.lock().unwrap(),
        errors.load(Ordering::Relaxed),
        &acks.lock().unwrap(),
    );
    // The raw size a record's index and log bytes are compared with (benches/RESULTS.md,
    // "Disk"): the record as an agent sends it, over a sample of the same generator.
    let mut sample = SmallRng::seed_from_u64(seed);
    let now = now_ns();
    let sampled: usize = (0..10_000)
        .map(|_| prost::Message::encoded_len(&make_record(&mut sample, now)))
        .sum();
    println!(
        "  avg record   {:.0} bytes (protobuf Record as sent, 10,000 generated)",
        sampled as f64 / 10_000.0
    );
    if let Some((h, within_1s, lost)) = probed {
        println!(
            "  searchable   ack to found: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms over {} probes; {} of them within 1 s; {} not found within 30 s",
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
            h.max() as f64 / 1e3,
            h.len(),
            within_1s,
            lost
        );
    }
    if let Some(dir) = fsync_dir {
        let chunk = (b / l.max(1)) as usize * batch;
        let raw = raw_fsync_bandwidth(&dir, chunk.max(4096), Duration::from_secs(5))?;
        println!(
            "  raw fsync    {:.1} MB/s at {} KiB per write+fdatasync (same disk: {})",
            raw / 1e6,
            chunk / 1024,
            dir.display()
        );
        println!("  ratio        {:.0}% of raw fsync'd bandwidth (body bytes; the WAL also writes labels, attributes and framing)", 100.0 * mb_s * 1e6 / raw);
    }
    Ok(())
}

/// Every `every`, appends one record carrying a unique word and searches for it until it
/// is found: the histogram of µs from its ack to the first search that finds it, how many
/// were found within 1 s, and how many were not found within 30 s.
async fn probe_search(
    grpc: String,
    http: reqwest::Client,
    http_addr: String,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let ch = tonic::transport::Endpoint::from_shared(grpc)?.connect_lazy();
    let mut client = IngestClient::new(ch);
    let mut h = Histogram::<u64>::new(3)?;
    let (mut within_1s, mut lost) = (0u64, 0u64);
    let mut tick = tokio::time::interval(every);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let word = format!("probe{:016x}", rand::random::<u64>());
        let req = grpc_request(AppendRequest {
            records: vec![Record {
                timestamp_ns: now_ns(),
                level: "info".into(),
                body: format!("search probe {word}").into_bytes(),
                service: "weir-bench-probe".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        if client.append(req).await.is_err() {
            continue;
        }
        let acked = Instant::now();
        let found = loop {
            let resp = http
                .get(format!("{http_addr}/api/v1/search"))
                .query(&[("q", word.as_str()), ("limit", "1")])
                .send()
                .await;
            if let Ok(r) = resp {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    if v["total"].as_u64() == Some(1) {
                        break Some(acked.elapsed());
                    }
                }
            }
            if acked.elapsed() > Duration::from_secs(30) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        match found {
            Some(d) => {
                h.record(d.as_micros() as u64)?;
                within_1s += u64::from(d <= Duration::from_secs(1));
            }
            None => lost += 1,
        }
    }
    Ok((h, within_1s, lost))
}

/// Prints throughput, ack latency, errors and the longest stretch without an ack.
fn report_acks(secs: f64, l: u64, b: u64, h: &Histogram<u64>, errors: u64, acks: &[u64]) {
    println!("  lines/s      {:.0}", l as f64 / secs);
    println!("  MB/s (body)  {:.1}", b as f64 / secs / 1e6);
    println!("  avg line     {:.0} bytes", b as f64 / l.max(1) as f64);
    println!(
        "  ack latency  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.max() as f64 / 1e3
    );
    println!("  errors       {errors} (each retried on the next node)");
    let mut times = acks.to_vec();
    times.sort_unstable();
    let (gap, at) = times
        .windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .max()
        .unwrap_or((0, 0));
    println!(
        "  longest time without any acknowledgement  {:.2} s (from {:.1} s into the run)",
        gap as f64 / 1e6,
        at as f64 / 1e6
    );
}

/// Sequential pwrite + fdatasync of `chunk` bytes in a loop: what the disk gives a single
/// durable writer at this batch size.
fn raw_fsync_bandwidth(dir: &std::path::Path, chunk: usize, dur: Duration) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(".weir-bench-fsync");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let buf = vec![0x5au8; chunk];
    let (mut off, t) = (0u64, Instant::now());
    while t.elapsed() < dur {
        f.write_all_at(&buf, off)?;
        f.sync_data()?;
        off += chunk as u64;
        if off > 1 << 30 {
            off = 0;
        }
    }
    let written = off as f64;
    let _ = std::fs::remove_file(&path);
    let _ = std::io::stdout().flush();
    Ok(written / t.elapsed().as_secs_f64())
}

/// `Authorization: Bearer $WEIR_KEY` when the variable is set: a node with access keys on
/// (the dev cluster) refuses requests without one.
/// A gRPC request carrying the access key of `WEIR_KEY`, if set.
fn grpc_request<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(v) = key_header() {
        if let Ok(v) = v.to_str().unwrap_or_default().parse() {
            r.metadata_mut().insert("authorization", v);
        }
    }
    r
}

fn key_header() -> Option<reqwest::header::HeaderValue> {
    static VALUE: std::sync::OnceLock<Option<reqwest::header::HeaderValue>> =
        std::sync::OnceLock::new();
    VALUE
        .get_or_init(|| {
            let key = std::env::var("WEIR_KEY").ok().filter(|k| !k.is_empty())?;
            format!("Bearer {}", key.trim()).parse().ok()
        })
        .clone()
}

fn key_headers() -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    if let Some(v) = key_header() {
        h.insert(reqwest::header::AUTHORIZATION, v);
    }
    h
}

async fn query(addr: String, iterations: usize, now: i64) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .default_headers(key_headers())
        .build()?;
    let url = format!("{}/api/v1/search", addr.trim_end_matches('/'));
    let sample: SearchResponse = client
        .get(&url)
        .query(&[("limit", "100"), ("start", "0")])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    // A record of the load, not one of `ingest --probe-ms`'s probes (they have no ids).
    let sampled = sample
        .hits
        .iter()
        .find(|h| !h.trace_id.is_empty())
        .context("the node holds no records with a trace id: run `weir-bench ingest` first")?;
    let trace = sampled.trace_id.clone();
    println!("query: {} records in the node", sample.total);
    let five_min_ago = (now - 300_000_000_000).to_string();
    let day_ago = (now - 86_400_000_000_000).to_string();
    let trace_q = format!("trace_id:{trace}");
    // An id-like attribute value (indexed by key, as trace ids are), whole and by a prefix
    // longer than its 3-character head (the records with that head read and checked).
    let request_id = sampled
        .attributes
        .get("request_id")
        .context("the sampled record has no request_id attribute")?;
    let request_q = format!("request_id:{request_id}");
    let request_prefix_q = format!("request_id:{}*", request_id.get(..10).unwrap_or(request_id));
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "trace_id lookup",
            vec![("q", trace_q.as_str()), ("start", day_ago.as_str())],
        ),
        (
            "request_id lookup",
            vec![("q", request_q.as_str()), ("start", day_ago.as_str())],
        ),
        (
            "request_id prefix",
            vec![
                ("q", request_prefix_q.as_str()),
                ("start", day_ago.as_str()),
            ],
        ),
        (
            "term",
            vec![
                ("q", "declined"),
                ("limit", "100"),
                ("start", day_ago.as_str()),
            ],
        ),
        (
            "phrase",
            vec![
                ("q", "\"connection reset by peer\""),
                ("limit", "100"),
                ("start", day_ago.as_str()),
            ],
        ),
        (
            "time range (5 min)",
            vec![("start", five_min_ago.as_str()), ("limit", "100")],
        ),
    ];
    search_cases(&client, &url, cases, iterations).await?;
    let needle = sampled.body.clone();
    // A needle that is one fragment (no whole word): the middle 12 of a cache-miss line's
    // 16 hex digits of session key, as someone pasting part of an id searches. The index
    // narrows it by an infix lookup over its body terms.
    let fragment = sample
        .hits
        .iter()
        .find_map(|h| session_fragment(&h.body))
        .context("none of the newest 100 records is a cache miss with a session key")?;
    logql_cases(&client, &addr, &needle, &fragment, iterations, now).await?;
    es_cases(&client, &addr, iterations, now).await
}

/// Digits 2..14 of the session key in a `make_record` cache-miss line (`session:<16 hex>`):
/// a fragment of one body word, neither its start nor its end.
fn session_fragment(body: &str) -> Option<String> {
    let at = body.find("session:")? + "session:".len();
    let key = body.get(at..at + 16)?;
    key.bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then(|| key[2..14].to_owned())
}

/// Grafana's Elasticsearch data source over the last hour, through `_msearch` on the
/// default tenant's index: its logs query (the newest 500 hits with a date histogram of
/// 60 buckets) and its metric query (count per service over time).
async fn es_cases(
    client: &reqwest::Client,
    addr: &str,
    iterations: usize,
    now: i64,
) -> anyhow::Result<()> {
    let url = format!("{}/_msearch", addr.trim_end_matches('/'));
    let now_ms = now / 1_000_000;
    let hour_ago_ms = now_ms - 3_600_000;
    let range = serde_json::json!({"range": {"@timestamp": {
        "gte": hour_ago_ms, "lte": now_ms, "format": "epoch_millis"}}});
    let histogram = serde_json::json!({"date_histogram": {"field": "@timestamp",
        "fixed_interval": "1m", "format": "epoch_millis", "min_doc_count": 0,
        "extended_bounds": {"min": hour_ago_ms, "max": now_ms}}});
    let header = serde_json::json!({"search_type": "query_then_fetch",
        "ignore_unavailable": true, "index": "weir-default"});
    let logs = serde_json::json!({
        "size": 500,
        "query": {"bool": {"filter": [range,
            {"query_string": {"analyze_wildcard": true, "query": "*"}}]}},
        "sort": [{"@timestamp": {"order": "desc", "unmapped_type": "boolean"}},
            {"_doc": {"order": "desc"}}],
        "script_fields": {}, "docvalue_fields": [],
        "aggs": {"1": histogram},
    });
    let metric = serde_json::json!({
        "size": 0,
        "query": {"bool": {"filter": [range,
            {"query_string": {"analyze_wildcard": true, "query": "*"}}]}},
        "aggs": {"3": {"terms": {"field": "service.name", "size": 10,
            "order": {"_key": "desc"}, "min_doc_count": 1}, "aggs": {"2": histogram}}},
    });
    for (name, body) in [
        ("es _msearch logs + histogram (1 h)", logs),
        ("es _msearch count per service (1 h)", metric),
    ] {
        let ndjson = format!("{header}\n{body}\n");
        let mut h = Histogram::<u64>::new(3)?;
        let mut total = 0;
        for _ in 0..iterations {
            let t = Instant::now();
            let resp = client
                .post(&url)
                .header("content-type", "application/x-ndjson")
                .body(ndjson.clone())
                .send()
                .await?;
            let status = resp.status();
            let answer: serde_json::Value = resp.json().await.unwrap_or_default();
            let first = &answer["responses"][0];
            anyhow::ensure!(
                status.is_success() && first["status"] == 200,
                "{name}: {status} {answer}"
            );
            h.record(t.elapsed().as_micros() as u64)?;
            total = first["hits"]["total"]["value"].as_u64().unwrap_or(0);
        }
        println!(
            "  {name:38} p50 {:8.2} ms  p99 {:8.2} ms  ({total} matches)",
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
        );
    }
    Ok(())
}

/// Runs each search case `iterations` times; prints latency percentiles.
async fn search_cases(
    client: &reqwest::Client,
    url: &str,
    cases: Vec<(&str, Vec<(&str, &str)>)>,
    iterations: usize,
) -> anyhow::Result<()> {
    for (name, params) in cases {
        let mut h = Histogram::<u64>::new(3)?;
        let mut total = 0;
        for _ in 0..iterations {
            let t = Instant::now();
            let body: SearchResponse = client
                .get(url)
                .query(&params)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            h.record(t.elapsed().as_micros() as u64)?;
            total = body.total;
        }
        println!(
            "  {name:20} p50 {:7.2} ms  p99 {:7.2} ms  max {:7.2} ms  ({total} matches)",
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
            h.max() as f64 / 1e3
        );
    }
    Ok(())
}

/// The LogQL cases of issue-sized loads, through the Loki query API: a needle (one
/// line's whole text), Grafana's per-level volume over the last hour, a filtered count and
/// a top-k rate. Metric cases run at most 5 times (each reads every matching record).
async fn logql_cases(
    client: &reqwest::Client,
    addr: &str,
    needle: &str,
    fragment: &str,
    iterations: usize,
    now: i64,
) -> anyhow::Result<()> {
    let base = addr.trim_end_matches('/');
    let fragment_q = format!("{{env=\"bench\"}} |= {fragment:?}");
    let hour_ago = (now - 3_600_000_000_000).to_string();
    let day_ago = (now - 86_400_000_000_000).to_string();
    let now_s = now.to_string();
    let needle_q = format!("{{env=\"bench\"}} |= {needle:?}");
    // (name, endpoint, parameters, runs)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, usize);
    let cases: Vec<Case> = vec![
        (
            "logql needle (1 day)",
            "query_range",
            vec![
                ("query", needle_q.as_str()),
                ("start", day_ago.as_str()),
                ("end", now_s.as_str()),
                ("limit", "100"),
            ],
            iterations,
        ),
        (
            "logql one-fragment needle (1 day)",
            "query_range",
            vec![
                ("query", fragment_q.as_str()),
                ("start", day_ago.as_str()),
                ("end", now_s.as_str()),
                ("limit", "100"),
            ],
            iterations,
        ),
        (
            "logql volume by level (1 h, step 1m)",
            "query_range",
            vec![
                (
                    "query",
                    "sum by (level) (count_over_time({env=\"bench\"}[1m]))",
                ),
                ("start", hour_ago.as_str()),
                ("end", now_s.as_str()),
                ("step", "60s"),
            ],
            iterations.min(5),
        ),
        (
            "logql count |= declined (5m)",
            "query",
            vec![
                (
                    "query",
                    "sum(count_over_time({env=\"bench\"} |= \"declined\" [5m]))",
                ),
                ("time", now_s.as_str()),
            ],
            iterations.min(5),
        ),
        (
            "logql topk rate (5m)",
            "query",
            vec![
                (
                    "query",
                    "topk(3, sum by (service) (rate({env=\"bench\"}[5m])))",
                ),
                ("time", now_s.as_str()),
            ],
            iterations.min(5),
        ),
    ];
    for (name, endpoint, params, runs) in cases {
        let url = format!("{base}/loki/api/v1/{endpoint}");
        let mut h = Histogram::<u64>::new(3)?;
        let mut lines = 0u64;
        for _ in 0..runs {
            let t = Instant::now();
            let resp = client.get(&url).query(&params).send().await?;
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            if !status.is_success() {
                // A query over its limits is a result too (a timeout, say): the others run.
                println!(
                    "  {name:38} {status} after {:.2} s: {body}",
                    t.elapsed().as_secs_f64()
                );
                break;
            }
            h.record(t.elapsed().as_micros() as u64)?;
            lines = body["data"]["stats"]["summary"]["totalLinesProcessed"]
                .as_u64()
                .unwrap_or(0);
        }
        if h.is_empty() {
            continue;
        }
        println!(
            "  {name:38} p50 {:8.2} ms  p99 {:8.2} ms  ({lines} lines processed)",
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
        );
    }
    Ok(())
}

/// One observation of the mirror bench.
struct Sample {
    t: f64,
    accepted: u64,
    es: u64,
    loki: u64,
    lag_es: f64,
    lag_loki: f64,
}

async fn mirror(args: MirrorArgs) -> anyhow::Result<()> {
    use weir_testkit::elasticsearch::{EsOptions, FakeElasticsearch};
    use weir_testkit::loki::{FakeLoki, LokiOptions};
    // The test servers judge every request as usual but only count what they accept:
    // kept, the millions of documents of a 10-minute outage ran this process out of memory.
    // They run on a runtime of their own whose threads are named, so that the CPU they take
    // (which real backends would take on their own machines) is told apart from Weir's.
    let backends = BackendRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(BACKEND_THREAD)
            .enable_all()
            .build()?,
    ));
    let (es, loki) = backends
        .handle()
        .spawn(async {
            let es = FakeElasticsearch::start_with(EsOptions {
                keep_sources: false,
                ..EsOptions::default()
            })
            .await?;
            let loki = FakeLoki::start_with(LokiOptions {
                keep_entries: false,
                ..LokiOptions::default()
            })
            .await?;
            anyhow::Ok((es, loki))
        })
        .await??;
    let tmp = tempfile::tempdir()?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let mut cfg: weir_server::Config = toml::from_str(&format!(
        "data_dir = {:?}\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n\
         [[mirror.sinks]]\nname = \"es\"\ntype = \"elasticsearch\"\nurl = \"{}\"\n\
         [[mirror.sinks]]\nname = \"loki\"\ntype = \"loki\"\nurl = \"{}\"\n",
        dir.display().to_string(),
        es.url(),
        loki.url()
    ))?;
    cfg.validate()?;
    cfg.index.writer_memory_bytes = 64 << 20;
    let node = weir_server::Node::start(cfg).await?;
    let state = node.state().clone();
    let total = args.healthy_secs + args.outage_secs + args.drain_max_secs;
    let ingest_task = tokio::spawn(ingest(IngestArgs {
        addr: format!("http://{}", node.grpc_addr()),
        concurrency: 4,
        batch: 500,
        duration_secs: total,
        rate: args.rate,
        fsync_dir: None,
        seed: 7,
        protocol: BenchProtocol::Grpc,
        http_addr: format!("http://{}", node.http_addr()),
        probe_ms: 0,
    }));
    let t0 = Instant::now();
    let cpu0 = CpuSplit::now();
    let sample = || {
        let status = state.mirror.status();
        let lag = |n: &str| {
            status
                .iter()
                .find(|s| s.name == n)
                .map_or(0.0, |s| s.lag_seconds)
        };
        Sample {
            t: t0.elapsed().as_secs_f64(),
            accepted: state.metrics.records_accepted.get(),
            es: es.doc_count() as u64,
            loki: loki.entry_count() as u64,
            lag_es: lag("es"),
            lag_loki: lag("loki"),
        }
    };
    let mut healthy = Vec::new();
    while t0.elapsed() < Duration::from_secs(args.healthy_secs) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        healthy.push(sample());
    }
    // Skip the first second (connections, template) when rating the healthy phase.
    let first = healthy.iter().find(|s| s.t >= 1.0).unwrap_or(&healthy[0]);
    let last = healthy.last().expect("samples");
    let cpu_healthy = CpuSplit::now();
    let span = last.t - first.t;
    let mut lags_es: Vec<f64> = healthy.iter().map(|s| s.lag_es).collect();
    let mut lags_loki: Vec<f64> = healthy.iter().map(|s| s.lag_loki).collect();
    lags_es.sort_by(f64::total_cmp);
    lags_loki.sort_by(f64::total_cmp);
    let p99 = |v: &[f64]| v[((v.len() as f64 * 0.99) as usize).min(v.len() - 1)];
    println!(
        "mirror: healthy phase {span:.1} s at a target of {} lines/s",
        args.rate
    );
    println!(
        "  accepted        {:.0} lines/s",
        (last.accepted - first.accepted) as f64 / span
    );
    println!(
        "  elasticsearch   {:.0} lines/s delivered, lag p99 {:.2} s max {:.2} s",
        (last.es - first.es) as f64 / span,
        p99(&lags_es),
        lags_es.last().unwrap_or(&0.0)
    );
    println!(
        "  loki            {:.0} lines/s delivered, lag p99 {:.2} s max {:.2} s",
        (last.loki - first.loki) as f64 / span,
        p99(&lags_loki),
        lags_loki.last().unwrap_or(&0.0)
    );
    cpu_healthy.since(&cpu0, last.t).print();
    if args.outage_secs > 0 {
        es.set_down(true);
        loki.set_down(true);
        let down_at = sample();
        let back_at = Instant::now() + Duration::from_secs(args.outage_secs);
        while Instant::now() < back_at {
            tokio::time::sleep((back_at - Instant::now()).min(Duration::from_secs(60))).await;
            let lag_records = |n: &str| {
                state
                    .mirror
                    .status()
                    .iter()
                    .find(|s| s.name == n)
                    .map_or(0, |s| s.lag_records)
            };
            println!(
                "  outage          {:.0} s in: accepted {}, lag_records elasticsearch {} loki {}; rss {} MiB",
                t0.elapsed().as_secs_f64() - down_at.t,
                state.metrics.records_accepted.get() - down_at.accepted,
                lag_records("es"),
                lag_records("loki"),
                rss_mib()
            );
        }
        es.set_down(false);
        loki.set_down(false);
        let up = sample();
        let cpu_up = CpuSplit::now();
        println!(
            "  outage          {} s, backlog at recovery: elasticsearch {} lines, loki {} lines (accepted during outage {})",
            args.outage_secs,
            up.accepted - up.es,
            up.accepted - up.loki,
            up.accepted - down_at.accepted
        );
        let mut done_es: Option<Sample> = None;
        let mut done_loki: Option<Sample> = None;
        let deadline = Instant::now() + Duration::from_secs(args.drain_max_secs);
        let mut next_report = Instant::now() + Duration::from_secs(30);
        while (done_es.is_none() || done_loki.is_none()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let s = sample();
            if Instant::now() >= next_report {
                next_report += Duration::from_secs(30);
                println!(
                    "  draining        {:.0} s after recovery: elasticsearch {} lines behind, loki {} behind; rss {} MiB",
                    s.t - up.t,
                    s.accepted.saturating_sub(s.es),
                    s.accepted.saturating_sub(s.loki),
                    rss_mib()
                );
            }
            // Caught up: within one second of ingest of what was accepted.
            let slack = args.rate;
            if done_es.is_none() && s.es + slack >= s.accepted {
                done_es = Some(sample());
            }
            if done_loki.is_none() && s.loki + slack >= s.accepted {
                done_loki = Some(sample());
            }
        }
        let drained = sample();
        CpuSplit::now().since(&cpu_up, drained.t - up.t).print();
        for (name, done, at_up) in [
            ("elasticsearch", &done_es, up.es),
            ("loki", &done_loki, up.loki),
        ] {
            match done {
                Some(d) => {
                    let secs = d.t - up.t;
                    let rate = (if name == "loki" { d.loki } else { d.es } - at_up) as f64 / secs;
                    println!(
                        "  {name:<15} drained in {secs:.1} s at {rate:.0} lines/s = {:.1}x the ingest rate",
                        rate / args.rate as f64
                    );
                }
                None => println!(
                    "  {name:<15} did NOT drain within {} s",
                    args.drain_max_secs
                ),
            }
        }
    }
    println!(
        "  peak rss        {} MiB (node, both test servers and the load generator)",
        peak_rss_mib()
    );
    ingest_task.abort();
    node.shutdown().await?;
    drop((es, loki));
    Ok(())
}

/// The test servers' runtime. Dropping a runtime blocks, which tokio refuses inside an
/// async context (it panics, hiding whatever error made the bench return early), so it
/// is shut down in the background instead.
struct BackendRuntime(Option<tokio::runtime::Runtime>);

impl BackendRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        // Some from construction until drop.
        self.0
            .as_ref()
            .map(|r| r.handle())
            .expect("runtime present until drop")
    }
}

impl Drop for BackendRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Names the threads of the mirror bench's test servers.
const BACKEND_THREAD: &str = "fake-backend";

/// CPU seconds this process has used: all of it, and the test servers' threads' share.
struct CpuSplit {
    total_s: f64,
    backends_s: f64,
}

impl CpuSplit {
    /// From /proc: the process total (dead threads included) and the live threads named
    /// [`BACKEND_THREAD`] (runtime workers, which live as long as the bench).
    fn now() -> CpuSplit {
        // SAFETY: sysconf only reads a configuration value; it has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // utime and stime: fields 14 and 15 of stat, counted after the `(comm)` field.
        let cpu = |stat: &str| -> Option<(String, f64)> {
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
            let utime: f64 = rest.get(11)?.parse().ok()?;
            let stime: f64 = rest.get(12)?.parse().ok()?;
            Some((stat[open + 1..close].to_string(), (utime + stime) / ticks))
        };
        let total_s = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| cpu(&s))
            .map_or(0.0, |(_, c)| c);
        let mut backends_s = 0.0;
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for t in tasks.flatten() {
                if let Some((comm, c)) = std::fs::read_to_string(t.path().join("stat"))
                    .ok()
                    .and_then(|s| cpu(&s))
                {
                    if comm.starts_with(BACKEND_THREAD) {
                        backends_s += c;
                    }
                }
            }
        }
        CpuSplit {
            total_s,
            backends_s,
        }
    }

    /// Cores used since `before`, over `secs` of wall time.
    fn since(&self, before: &CpuSplit, secs: f64) -> CpuShare {
        let backends = (self.backends_s - before.backends_s) / secs;
        CpuShare {
            weir: (self.total_s - before.total_s) / secs - backends,
            backends,
        }
    }
}

/// Cores used in one phase.
struct CpuShare {
    /// The node and the load generator.
    weir: f64,
    /// The Elasticsearch and Loki test servers.
    backends: f64,
}

impl CpuShare {
    fn print(&self) {
        println!(
            "  cpu             node + load generator {:.2} cores, test servers {:.2} cores (of {})",
            self.weir,
            self.backends,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
    }
}

/// This process's resident memory now, MiB (0 where /proc is not there).
fn rss_mib() -> u64 {
    proc_status_kib("VmRSS:") / 1024
}

/// This process's peak resident memory, MiB.
fn peak_rss_mib() -> u64 {
    proc_status_kib("VmHWM:") / 1024
}

fn proc_status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
