//! Every ingest protocol against a real node on port 0, with the real clients that install
//! here: the OpenTelemetry Python SDK's OTLP/HTTP exporter, the official Python
//! `elasticsearch` client, util-linux `logger` for syslog, and a Loki push client that
//! encodes the real `logproto` messages with snappy. Each checks that the records are
//! searchable with the right fields; bad input and bombs get their error while the node
//! keeps serving; a retried identical push is stored once.
//!
//! A client that is not installed skips its test with a message saying how to install it,
//! unless `WEIR_REQUIRE_CLIENTS=1` (CI sets it), where a missing client fails the test.

mod common;

use std::process::Command;

use common::*;
use prost::Message;
use weir_proto::logproto::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter};

/// Whether `check` (a command) works; otherwise says how to get it, and fails when
/// clients are required.
fn client_available(name: &str, check: &mut Command, install: &str) -> bool {
    let ok = check.output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        let required = std::env::var("WEIR_REQUIRE_CLIENTS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{name} is required (WEIR_REQUIRE_CLIENTS=1) but missing: {install}"
        );
        eprintln!("SKIPPED: {name} is not installed here ({install}); this test did not run");
    }
    ok
}

fn script(name: &str) -> String {
    format!("{}/tests/clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs a client script of `tests/clients` with `args`; panics with its output unless it
/// exits 0.
fn run_client(name: &str, args: &[&str]) {
    let out = Command::new("python3")
        .arg(script(name))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first hit whose body contains `needle`.
fn hit_with(body: &serde_json::Value, needle: &str) -> serde_json::Value {
    body["hits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["body"].as_str().unwrap().contains(needle))
        .unwrap_or_else(|| panic!("no hit with {needle:?}: {body}"))
        .clone()
}

async fn hits(n: &TestNode, q: &str, tenant: &str, want: u64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) = n
            .search_raw(&[("q", q), ("start", "0")], Some(tenant))
            .await;
        assert_eq!(status, 200, "{body}");
        if body["total"].as_u64() == Some(want) || std::time::Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opentelemetry_sdk_http_exporter_is_stored_with_its_resource() {
    if !client_available(
        "the OpenTelemetry Python SDK",
        Command::new("python3").args(["-c", "import opentelemetry.exporter.otlp.proto.http"]),
        "pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http",
    ) {
        return;
    }
    let n = TestNode::start().await;
    run_client("otlp_http.py", &[&n.http, "acme", "otlpmark"]);
    let body = hits(&n, "otlpmark", "acme", 3).await;
    assert_eq!(body["total"], 3, "{body}");
    let declined = hit_with(&body, "declined");
    assert_eq!(declined["level"], "error");
    assert_eq!(declined["service"], "checkout-py");
    assert_eq!(declined["namespace"], "shop");
    assert_eq!(declined["pod"], "checkout-1");
    assert_eq!(declined["attributes"]["order_id"], "8812", "{declined}");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_elasticsearch_client_bulk_indexes_through_its_product_check() {
    if !client_available(
        "the Python elasticsearch client",
        Command::new("python3").args(["-c", "import elasticsearch"]),
        "pip install 'elasticsearch>=8,<9'",
    ) {
        return;
    }
    let n = TestNode::start().await;
    run_client("es_bulk.py", &[&n.http, "shop", "esmark"]);
    let body = hits(&n, "esmark", "shop", 3).await;
    assert_eq!(body["total"], 3, "created once despite the retry: {body}");
    let by_body = |needle: &str| hit_with(&body, needle);
    let ecs = by_body("ecs order shipped");
    assert_eq!(ecs["level"], "warn");
    assert_eq!(ecs["service"], "shipping");
    assert_eq!(ecs["namespace"], "shop");
    assert_eq!(ecs["pod"], "ship-1");
    assert_eq!(ecs["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(ecs["attributes"]["order.id"], "77", "{ecs}");
    assert_eq!(ecs["attributes"]["es.index"], "logs-shop", "{ecs}");
    let fb = by_body("fluent bit line");
    assert_eq!(fb["level"], "error");
    assert_eq!(fb["namespace"], "shop");
    assert_eq!(fb["pod"], "cart-2");
    n.stop().await;
}

/// A document that carries an `_id` is stored once per tenant and index, whatever request
/// brings it again (Filebeat and Logstash resend only the failed items, in a new bulk):
/// `create` answers 409 and `index` 200 `updated`, as Elasticsearch does; the same `_id`
/// in another index, or another tenant, is another document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_with_an_id_is_stored_once_whatever_request_brings_it() {
    let n = TestNode::start().await;
    let bulk = |tenant: &'static str, lines: Vec<String>| {
        let http = n.http.clone();
        async move {
            let v: serde_json::Value = reqwest::Client::new()
                .post(format!("{http}/_bulk"))
                .header("content-type", "application/x-ndjson")
                .header("X-Scope-OrgID", tenant)
                .body(lines.join("\n") + "\n")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    let (action, r) = i.as_object().unwrap().iter().next().unwrap();
                    format!("{action} {} {}", r["_id"].as_str().unwrap(), r["status"])
                })
                .collect::<Vec<String>>()
        }
    };
    let doc = |action: &str, index: &str, id: &str, msg: &str| {
        vec![
            format!(r#"{{"{action}":{{"_index":"{index}","_id":"{id}"}}}}"#),
            format!(r#"{{"message":"{msg}","service":"shop"}}"#),
        ]
    };
    let first = [
        doc("create", "logs", "a1", "idmark one"),
        doc("create", "logs", "a2", "idmark two"),
    ]
    .concat();
    assert_eq!(
        bulk("acme", first).await,
        ["create a1 201", "create a2 201"]
    );
    // A new request: a1 again (resent alone, with another neighbour), a3 new, a1 twice
    // in one request, a2 through `index`, a1 in another index.
    let second = [
        doc("create", "logs", "a3", "idmark three"),
        doc("create", "logs", "a1", "idmark one"),
        doc("index", "logs", "a2", "idmark two"),
        doc("create", "logs", "a3", "idmark three"),
        doc("create", "other", "a1", "idmark one elsewhere"),
    ]
    .concat();
    let got = bulk("acme", second).await;
    assert_eq!(got[1], "create a1 409");
    assert_eq!(got[2], "index a2 200");
    assert_eq!(got[4], "create a1 201");
    let mut a3: Vec<&str> = vec![&got[0], &got[3]];
    a3.sort();
    assert_eq!(
        a3,
        ["create a3 201", "create a3 409"],
        "one of the two copies in one request is stored"
    );
    // Another tenant's a1 is its own document.
    assert_eq!(
        bulk("other", doc("create", "logs", "a1", "idmark one")).await,
        ["create a1 201"]
    );
    let body = hits(&n, "idmark", "acme", 4).await;
    assert_eq!(
        body["total"], 4,
        "a1, a2, a3 in logs and a1 in other: {body}"
    );
    n.stop().await;
}

fn loki_push(streams: Vec<(&str, Vec<(i64, &str)>)>) -> Vec<u8> {
    let req = PushRequest {
        streams: streams
            .into_iter()
            .map(|(labels, entries)| StreamAdapter {
                labels: labels.to_owned(),
                entries: entries
                    .into_iter()
                    .map(|(ns, line)| EntryAdapter {
                        timestamp: Some(prost_types::Timestamp {
                            seconds: ns / 1_000_000_000,
                            nanos: (ns % 1_000_000_000) as i32,
                        }),
                        line: line.to_owned(),
                        structured_metadata: vec![LabelPairAdapter {
                            name: "trace_id".into(),
                            value: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                        }],
                    })
                    .collect(),
                hash: 0,
            })
            .collect(),
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap()
}

async fn post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, String) {
    let mut req = reqwest::Client::new().post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loki_protobuf_push_is_stored_once_even_when_retried() {
    let n = TestNode::start().await;
    let now = now_ns();
    let body = loki_push(vec![
        (
            r#"{app="pay", env="prod", level="error"}"#,
            vec![
                (now - 2000, "lokimark card declined"),
                (now - 1000, "lokimark retry failed"),
            ],
        ),
        (
            r#"{service_name="cart", namespace="shop"}"#,
            vec![(now, "lokimark cart saved")],
        ),
    ]);
    let url = format!("{}/loki/api/v1/push", n.http);
    let headers = [
        ("content-type", "application/x-protobuf"),
        ("x-scope-orgid", "team-a"),
    ];
    let (status, text) = post(&url, &headers, body.clone()).await;
    assert_eq!(status, 204, "{text}");
    // Promtail retries the same bytes after a timeout: stored once.
    let (status, text) = post(&url, &headers, body).await;
    assert_eq!(status, 204, "{text}");
    let found = hits(&n, "lokimark", "team-a", 3).await;
    assert_eq!(found["total"], 3, "{found}");
    let declined = hits(&n, "lokimark AND declined AND app:pay", "team-a", 1).await;
    let h = &declined["hits"][0];
    assert_eq!(h["service"], "pay", "{h}");
    assert_eq!(h["level"], "error");
    assert_eq!(h["labels"]["env"], "prod");
    assert_eq!(h["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let cart = hits(&n, "lokimark AND service_name:cart", "team-a", 1).await;
    assert_eq!(cart["hits"][0]["service"], "cart");
    assert_eq!(cart["hits"][0]["namespace"], "shop");
    // The metrics say one push was deduplicated.
    let metrics = reqwest::get(format!("{}/metrics", n.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "weir_ingest_protocol_records_deduplicated_total{protocol=\"loki\",tenant=\"team-a\"} 3"
        ),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("protocol"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loki_json_push_gzipped_is_stored_and_bad_pushes_are_refused_by_name() {
    let n = TestNode::start().await;
    let now = now_ns();
    let json = serde_json::json!({"streams": [{
        "stream": {"app": "web", "level": "info"},
        "values": [[now.to_string(), "jsonmark hello", {"user": "42"}]]
    }]})
    .to_string();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, json.as_bytes()).unwrap();
    let url = format!("{}/loki/api/v1/push", n.http);
    let (status, text) = post(
        &url,
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        gz.finish().unwrap(),
    )
    .await;
    assert_eq!(status, 204, "{text}");
    let found = hits(&n, "jsonmark", "default", 1).await;
    assert_eq!(found["hits"][0]["attributes"]["user"], "42", "{found}");

    // A gzip bomb: 64 MiB of zeros in ~64 KiB, refused without inflating it.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut bomb, &vec![0u8; 64 << 20]).unwrap();
    let (status, text) = post(
        &url,
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        bomb.finish().unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("limits.batch_bytes_max"), "{text}");
    // A snappy body that declares a huge length.
    let (status, text) = post(
        &url,
        &[("content-type", "application/x-protobuf")],
        vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0],
    )
    .await;
    assert_eq!(status, 400, "{text}");
    // Malformed JSON, bad labels, a too-new entry next to a good one.
    let (status, text) = post(
        &url,
        &[("content-type", "application/json")],
        b"{\"streams\":[".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let mixed = serde_json::json!({"streams": [
        {"stream": {"app": "web"}, "values": [
            [now.to_string(), "mixedmark good"],
            [(now + 3_600_000_000_000i64).to_string(), "mixedmark from the future"]
        ]}
    ]})
    .to_string();
    let (status, text) = post(
        &url,
        &[("content-type", "application/json")],
        mixed.into_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("entry 1") && text.contains("limits.timestamp_future_secs_max"),
        "{text}"
    );
    let found = hits(&n, "mixedmark", "default", 1).await;
    assert_eq!(
        bodies(&found),
        vec!["mixedmark good"],
        "the good entry is stored"
    );
    // Vector's health check.
    let ready = reqwest::get(format!("{}/ready", n.http)).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_json_and_errors_follow_the_spec() {
    let n = TestNode::start().await;
    let now = now_ns();
    let url = format!("{}/v1/logs", n.http);
    let body = serde_json::json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]},
        "scopeLogs": [{"logRecords": [
            {"timeUnixNano": now.to_string(), "severityNumber": 17, "body": {"stringValue": "otlpjsonmark failed"},
             "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "futureField": 1},
            {"timeUnixNano": now.to_string(), "body": {"stringValue": "otlpjsonmark bad"}, "traceId": "abcd"}
        ]}]
    }]})
    .to_string();
    let (status, text) = post(
        &url,
        &[("content-type", "application/json")],
        body.into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        answer["partialSuccess"]["rejectedLogRecords"], "1",
        "{answer}"
    );
    assert!(
        answer["partialSuccess"]["errorMessage"]
            .as_str()
            .unwrap()
            .starts_with("resource_logs[0].scope_logs[0].log_records[1]"),
        "{answer}"
    );
    let found = hits(&n, "otlpjsonmark", "default", 1).await;
    assert_eq!(found["hits"][0]["service"], "api");
    assert_eq!(found["hits"][0]["level"], "error");
    assert_eq!(
        found["hits"][0]["trace_id"],
        "5b8efff798038103d269b633813fc60c"
    );
    // Bad protobuf: 400 with a google.rpc.Status in protobuf.
    let (status, _) = post(
        &url,
        &[("content-type", "application/x-protobuf")],
        vec![0xff; 10],
    )
    .await;
    assert_eq!(status, 400);
    let (status, text) = post(&url, &[("content-type", "text/plain")], b"x".to_vec()).await;
    assert_eq!(status, 415, "{text}");
    assert!(text.contains("application/x-protobuf"), "{text}");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_from_logger_over_udp_and_tcp_is_stored_with_its_fields() {
    if !client_available(
        "util-linux logger",
        Command::new("logger").arg("--version"),
        "apt-get install bsdutils",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    for transport in ["udp", "tcp"] {
        cfg.syslog.push(
            toml::from_str(&format!(
                "listen = \"127.0.0.1:0\"\ntransport = \"{transport}\"\ntenant = \"ops\""
            ))
            .unwrap(),
        );
    }
    let n = TestNode::start_with(dir, cfg).await;
    let addrs = n.node.as_ref().unwrap().syslog_addrs().to_vec();
    let (udp, tcp) = (addrs[0], addrs[1]);
    let run = |args: &[&str]| {
        let out = Command::new("logger").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "logger {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (up, tp) = (udp.port().to_string(), tcp.port().to_string());
    run(&[
        "--server",
        "127.0.0.1",
        "--port",
        &up,
        "--udp",
        "--rfc5424",
        "-t",
        "billing",
        "-p",
        "user.err",
        "sysmark udp 5424",
    ]);
    run(&[
        "--server",
        "127.0.0.1",
        "--port",
        &up,
        "--udp",
        "--rfc3164",
        "-t",
        "cron",
        "-p",
        "daemon.warning",
        "sysmark udp 3164",
    ]);
    run(&[
        "--server",
        "127.0.0.1",
        "--port",
        &tp,
        "--tcp",
        "--rfc5424",
        "--octet-count",
        "-t",
        "billing",
        "-p",
        "user.info",
        "sysmark tcp octet",
    ]);
    run(&[
        "--server",
        "127.0.0.1",
        "--port",
        &tp,
        "--tcp",
        "--rfc3164",
        "-t",
        "sshd",
        "-p",
        "auth.notice",
        "sysmark tcp newline",
    ]);
    let found = hits(&n, "sysmark", "ops", 4).await;
    assert_eq!(found["total"], 4, "{found}");
    let by = |needle: &str| hit_with(&found, needle);
    let h = by("udp 5424");
    assert_eq!(
        (h["level"].as_str(), h["service"].as_str()),
        (Some("error"), Some("billing")),
        "{h}"
    );
    let h = by("udp 3164");
    assert_eq!(
        (h["level"].as_str(), h["service"].as_str()),
        (Some("warn"), Some("cron")),
        "{h}"
    );
    let h = by("tcp octet");
    assert_eq!(h["level"], "info", "{h}");
    let h = by("tcp newline");
    assert_eq!(h["service"], "sshd", "{h}");
    assert!(
        h["labels"]["host"].as_str().is_some_and(|s| !s.is_empty()),
        "{h}"
    );
    n.stop().await;
}
