//! Crash safety: a real `weir` process is SIGKILLed at random moments while a writer is
//! appending, then restarted. Protects the acknowledgement contract: every acknowledged
//! record is found exactly once afterwards, and nothing (acknowledged or not) appears twice
//! — in search, and in the Elasticsearch and Loki test servers the node mirrors to.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use weir_proto::v1::ingest_client::IngestClient;
use weir_proto::v1::{AppendRequest, Record};

struct Proc {
    child: Child,
    grpc: String,
    http: String,
}

fn start(dir: &std::path::Path) -> Proc {
    start_with(dir, &[])
}

fn start_with(dir: &std::path::Path, extra: &[&std::ffi::OsStr]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "server",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir binary starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains("weir node listening") {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(name))
                        .map(str::to_owned)
                };
                let _ = tx.send((field("grpc_addr="), field("http_addr=")));
                sent = true;
            }
            if line.contains("ERROR") {
                eprintln!("weir: {line}");
            }
        }
    });
    let (grpc, http) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("node reports its addresses");
    Proc {
        child,
        grpc: format!("http://{}", grpc.unwrap()),
        http: format!("http://{}", http.unwrap()),
    }
}

/// Appends batches of 50 records made by `record(batch, i)` until the node stops
/// answering (it was killed), pausing `pause` between batches; returns the bodies of
/// every record acknowledged.
async fn write_until_refused(
    grpc: String,
    pause: Duration,
    record: impl Fn(u64, u64) -> Record,
) -> Vec<String> {
    let mut acked = Vec::new();
    let Ok(mut client) = IngestClient::connect(grpc).await else {
        return acked;
    };
    for batch in 0.. {
        let records: Vec<Record> = (0..50).map(|i| record(batch, i)).collect();
        let bodies: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8(r.body.clone()).unwrap())
            .collect();
        let req = AppendRequest {
            records,
            ..Default::default()
        };
        match client.append(req).await {
            Ok(r) => {
                assert_eq!(r.get_ref().accepted, 50);
                acked.extend(bodies);
            }
            Err(_) => return acked,
        }
        tokio::time::sleep(pause).await;
    }
    acked
}

fn kill(mut p: Proc) {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(p.child.id() as i32, libc::SIGKILL) };
    let _ = p.child.wait();
}

async fn all_bodies(http: &str) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![
            ("limit", "1000".to_string()),
            ("sort", "time_asc".into()),
            ("start", "0".into()),
        ];
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let body: serde_json::Value = client
            .get(format!("{http}/api/v1/search"))
            .query(&q)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for h in body["hits"].as_array().expect("hits") {
            out.push(h["body"].as_str().unwrap().to_owned());
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_ingesting_loses_no_acknowledged_record_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashSet<String> = HashSet::new();
    let mut rng = rand::rng();
    let rounds = 5;
    for round in 0..rounds {
        let p = start(dir.path());
        let kill_after = Duration::from_millis(rng.random_range(300..1500));
        let writer = tokio::spawn(write_until_refused(
            p.grpc.clone(),
            Duration::ZERO,
            move |batch, i| Record {
                body: format!("r{round}-b{batch}-i{i}").into_bytes(),
                labels: [("app".to_string(), format!("a{}", i % 8))].into(),
                ..Default::default()
            },
        ));
        tokio::time::sleep(kill_after).await;
        kill(p);
        let got = writer.await.unwrap();
        eprintln!(
            "round {round}: {} records acknowledged before SIGKILL after {kill_after:?}",
            got.len()
        );
        acked.extend(got);
    }
    assert!(!acked.is_empty(), "the writer got acknowledgements");

    let p = start(dir.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    let bodies = loop {
        let bodies = all_bodies(&p.http).await;
        let have: HashSet<&String> = bodies.iter().collect();
        if acked.iter().all(|b| have.contains(b)) || Instant::now() > deadline {
            break bodies;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Let the indexer finish anything it still replays before checking for duplicates.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let bodies = if bodies.len() == all_bodies(&p.http).await.len() {
        bodies
    } else {
        all_bodies(&p.http).await
    };
    kill(p);

    let mut counts: HashMap<&str, usize> = HashMap::new();
    for b in &bodies {
        *counts.entry(b.as_str()).or_default() += 1;
    }
    let missing: Vec<&String> = acked
        .iter()
        .filter(|b| !counts.contains_key(b.as_str()))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged records lost: {missing:?} (of {} acked)",
        acked.len()
    );
    let dupes: Vec<(&&str, &usize)> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dupes.is_empty(), "records stored twice: {dupes:?}");
    eprintln!(
        "{} acknowledged, {} stored, none lost, none twice",
        acked.len(),
        bodies.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully_with_exit_0_and_keeps_everything_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = start(dir.path());
    let mut client = IngestClient::connect(p.grpc.clone()).await.unwrap();
    let records: Vec<Record> = (0..100)
        .map(|i| Record {
            body: format!("graceful {i}").into_bytes(),
            ..Default::default()
        })
        .collect();
    let resp = client
        .append(AppendRequest {
            records,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.accepted, 100);
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "weir did not exit within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");

    let p = start(dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    let bodies = loop {
        let b = all_bodies(&p.http).await;
        if b.len() >= 100 || Instant::now() > deadline {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    kill(p);
    let mut got: Vec<String> = bodies;
    got.sort();
    let mut want: Vec<String> = (0..100).map(|i| format!("graceful {i}")).collect();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_push_and_weir_query_work_against_a_real_node() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path());
    let mut push = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "push",
            "--addr",
            &p.grpc,
            "--service",
            "checkout",
            "--level",
            "warn",
            "--label",
            "app=shop",
            "--producer-id",
            "cli",
            "--batch",
            "2",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = push.stdin.take().unwrap();
        stdin
            .write_all(b"payment declined for order 8812\r\nuser 42 logged in\nsecond batch line\n")
            .unwrap();
    }
    let out = push.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("pushed 3 records, 0 refused"), "{stderr}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let stdout = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["query", "--addr", &p.http, "declined"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        if !stdout.is_empty() || Instant::now() > deadline {
            break stdout;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    kill(p);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    // "<timestamp> <level> <service> <body>", with the CR of the CRLF line stripped.
    assert!(
        lines[0].ends_with(" warn  checkout payment declined for order 8812"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_mirroring_loses_nothing_and_each_backend_sees_each_record_once() {
    use weir_testkit::elasticsearch::FakeElasticsearch;
    use weir_testkit::loki::FakeLoki;
    let es = FakeElasticsearch::start().await.unwrap();
    let loki = FakeLoki::start().await.unwrap();
    // Slow backends keep requests in flight, so kills land between a delivery and the
    // commit of its cursor.
    es.set_latency(Duration::from_millis(150));
    loki.set_latency(Duration::from_millis(150));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "[[mirror.sinks]]\nname = \"es\"\ntype = \"elasticsearch\"\nurl = \"{}\"\nflush_interval_ms = 20\n\n[[mirror.sinks]]\nname = \"loki\"\ntype = \"loki\"\nurl = \"{}\"\nflush_interval_ms = 20\n",
            es.url(),
            loki.url()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = [std::ffi::OsStr::new("--config"), config.as_os_str()];
    let mut acked: HashSet<String> = HashSet::new();
    let mut rng = rand::rng();
    for round in 0..4 {
        let p = start_with(&data, &args);
        let writer = tokio::spawn(write_until_refused(
            p.grpc.clone(),
            Duration::from_millis(20),
            move |batch, i| Record {
                body: format!("m{round}-b{batch}-i{i}").into_bytes(),
                service: format!("s{}", i % 4),
                ..Default::default()
            },
        ));
        tokio::time::sleep(Duration::from_millis(rng.random_range(400..1200))).await;
        kill(p);
        acked.extend(writer.await.unwrap());
    }
    assert!(!acked.is_empty());
    // A last start delivers the rest.
    let p = start_with(&data, &args);
    es.set_latency(Duration::ZERO);
    loki.set_latency(Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let es_bodies: HashSet<String> = es
            .docs()
            .iter()
            .map(|d| d.source["message"].as_str().unwrap().to_owned())
            .collect();
        let loki_lines: HashSet<String> = loki
            .entries("default")
            .into_iter()
            .map(|e| e.line)
            .collect();
        if acked.is_subset(&es_bodies) && acked.is_subset(&loki_lines) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged records missing: {} from elasticsearch, {} from loki",
            acked.difference(&es_bodies).count(),
            acked.difference(&loki_lines).count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Exactly once as each backend sees it, acknowledged or not.
    let mut seen = HashMap::new();
    for d in es.docs() {
        *seen
            .entry(d.source["message"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored twice in elasticsearch: {twice:?}");
    let mut seen = HashMap::new();
    for e in loki.entries("default") {
        *seen.entry(e.line).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored twice in loki: {twice:?}");
    eprintln!(
        "{} acknowledged; elasticsearch saw {} bulk requests for {} documents",
        acked.len(),
        es.bulk_requests(),
        es.doc_count()
    );
    kill(p);
}
