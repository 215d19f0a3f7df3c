//! A real single node (gRPC and HTTP on port 0, real files) driven through its APIs.

mod common;

use common::*;
use weir_proto::otlp::collector::logs::v1::logs_service_client::LogsServiceClient;
use weir_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use weir_proto::otlp::common::v1::{any_value, AnyValue, KeyValue};
use weir_proto::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use weir_proto::otlp::resource::v1::Resource;
use weir_proto::v1::{AppendRequest, Record};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_records_are_searchable_with_every_field() {
    let n = TestNode::start().await;
    let mut r = record("payment declined for order 8812");
    r.level = "error".into();
    r.namespace = "shop".into();
    r.pod = "checkout-7f9".into();
    r.cluster = "eu-1".into();
    r.labels = labels(&[("app", "checkout")]);
    r.attributes = labels(&[("order_id", "8812")]);
    r.trace_id = "0af7651916cd43dd8448eb211c80319c".into();
    r.span_id = "b7ad6b7169203331".into();
    let resp = n
        .append(AppendRequest {
            records: vec![r, record("all good")],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(resp.accepted, 2);
    assert!(resp.rejected.is_empty());

    let body = n.wait_total(&[("q", "declined")], 1).await;
    let hit = &body["hits"][0];
    assert_eq!(hit["body"], "payment declined for order 8812");
    assert_eq!(hit["level"], "error");
    assert_eq!(hit["service"], "checkout");
    assert_eq!(hit["namespace"], "shop");
    assert_eq!(hit["pod"], "checkout-7f9");
    assert_eq!(hit["cluster"], "eu-1");
    assert_eq!(hit["labels"]["app"], "checkout");
    assert_eq!(hit["attributes"]["order_id"], "8812");
    assert_eq!(hit["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(hit["span_id"], "b7ad6b7169203331");
    assert!(body["took_ms"].is_u64());
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_kind_finds_exactly_its_records() {
    let n = TestNode::start().await;
    let mut recs = Vec::new();
    let lines = [
        ("quick brown fox jumps", "info", "web", "a1"),
        ("the quick red fox", "warn", "web", "a2"),
        ("brown dog sleeps quietly", "error", "db", "a3"),
        ("connection refused by upstream", "error", "db", "a4"),
        ("connection reset by peer", "info", "api", "a5"),
    ];
    for (body, level, service, id) in lines {
        let mut r = record(body);
        r.level = level.into();
        r.service = service.into();
        r.labels = labels(&[("app", service)]);
        r.attributes = labels(&[("req", id)]);
        r.trace_id = format!("{id:0>32}");
        recs.push(r);
    }
    n.append_records(recs).await;
    n.wait_total(&[], 5).await;

    let cases: &[(&str, &[&str])] = &[
        ("fox", &["quick brown fox jumps", "the quick red fox"]),
        (
            "service:db",
            &["brown dog sleeps quietly", "connection refused by upstream"],
        ),
        ("app:api", &["connection reset by peer"]),
        ("req:a3", &["brown dog sleeps quietly"]),
        (
            "trace_id:000000000000000000000000000000a4",
            &["connection refused by upstream"],
        ),
        ("\"quick brown\"", &["quick brown fox jumps"]),
        (
            "\"quick fox\"~1",
            &["quick brown fox jumps", "the quick red fox"],
        ),
        (
            "conn*",
            &["connection refused by upstream", "connection reset by peer"],
        ),
        (
            "\"connection re\"*",
            &["connection refused by upstream", "connection reset by peer"],
        ),
        ("fox AND NOT red", &["quick brown fox jumps"]),
        (
            "fox OR dog",
            &[
                "quick brown fox jumps",
                "the quick red fox",
                "brown dog sleeps quietly",
            ],
        ),
        ("+brown -dog", &["quick brown fox jumps"]),
        (
            "(fox OR dog) AND level:error",
            &["brown dog sleeps quietly"],
        ),
    ];
    for (q, want) in cases {
        let body = n.search(&[("q", q), ("limit", "100")]).await;
        let mut got = bodies(&body);
        got.sort();
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "query {q:?}");
    }
    // The level filter and time range are parameters, not query syntax.
    let body = n.search(&[("level", "error")]).await;
    assert_eq!(body["total"], 2);
    let body = n
        .search(&[("end", &(now_ns() - 3_600_000_000_000).to_string())])
        .await;
    assert_eq!(
        body["total"], 0,
        "a range that ends an hour ago holds nothing"
    );
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_rejected_with_position_while_the_rest_is_stored() {
    let n = TestNode::start().await;
    let mut bad_level = record("bad level");
    bad_level.level = "loud".into();
    let mut bad_label = record("bad label");
    bad_label.labels = labels(&[("app", &"x".repeat(5000))]);
    let mut bad_utf8 = record("");
    bad_utf8.body = vec![b'o', b'k', 0xff, b'!'];
    let resp = n
        .append(AppendRequest {
            records: vec![record("good one"), bad_level, bad_label, bad_utf8],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        resp.accepted, 2,
        "the good record and the repaired one are stored"
    );
    let positions: Vec<u32> = resp.rejected.iter().map(|r| r.index).collect();
    assert_eq!(positions, vec![1, 2]);
    let codes: Vec<&str> = resp.rejected.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(
        codes,
        vec!["level", "label"],
        "each refusal carries its code"
    );
    assert!(
        resp.rejected[0].reason.contains("level"),
        "{}",
        resp.rejected[0].reason
    );
    assert!(
        resp.rejected[1].reason.contains("label_value_bytes_max"),
        "{}",
        resp.rejected[1].reason
    );
    assert_eq!(resp.bodies_repaired, 1);
    let body = n.wait_total(&[], 2).await;
    let mut got = bodies(&body);
    got.sort();
    assert_eq!(got, vec!["good one".to_string(), "ok\u{FFFD}!".to_string()]);
    let m = reqwest::get(format!("{}/metrics", n.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "weir_ingest_records_rejected_total{reason=\"level\"} 1",
        "weir_ingest_records_rejected_total{reason=\"label\"} 1",
        "weir_ingest_records_accepted_total 2",
    ] {
        assert!(m.contains(line), "metrics lack {line:?}:\n{m}");
    }
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_limit_is_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.limits.batch_bytes_max = 64 * 1024;
    let n = TestNode::start_with(dir, cfg).await;
    let big = Record {
        body: vec![b'x'; 100 * 1024],
        ..record("")
    };
    let err = n
        .append(AppendRequest {
            records: vec![big],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("limits.batch_bytes_max"),
        "{}",
        err.message()
    );
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_invalid_argument() {
    let n = TestNode::start().await;
    // A raw gRPC frame whose payload is not an AppendRequest (field 4 declared as a
    // length-delimited record running past the end).
    let payload: &[u8] = &[0x22, 0x7f, 0x01];
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = client
        .post(format!("{}/weir.v1.Ingest/Append", n.grpc))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(frame)
        .send()
        .await
        .unwrap();
    let status = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    // tonic puts the status in trailers for streaming answers, or headers for errors-only.
    let code = match status {
        Some(s) => s,
        None => {
            let _ = resp.bytes().await;
            panic!("no grpc-status header")
        }
    };
    assert_eq!(code, (tonic::Code::InvalidArgument as i32).to_string());
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_with_the_same_producer_and_sequence_is_stored_once() {
    let n = TestNode::start().await;
    let batch = |seq: u64| AppendRequest {
        producer_id: "agent-7".into(),
        sequence: seq,
        records: (0..20)
            .map(|i| {
                let mut r = record(&format!("line {seq}-{i}"));
                r.labels = labels(&[("app", &format!("a{}", i % 5))]);
                r
            })
            .collect(),
        ..Default::default()
    };
    let first = n.append(batch(1)).await.unwrap();
    assert!(!first.duplicate);
    let again = n.append(batch(1)).await.unwrap();
    assert!(again.duplicate, "the retry is recognised");
    let next = n.append(batch(2)).await.unwrap();
    assert!(!next.duplicate, "a new sequence is stored");
    n.wait_total(&[], 40).await;
    // Give a wrongly stored duplicate time to show up before asserting it did not.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(n.search(&[]).await["total"], 40);

    // The dedup table survives a restart (rebuilt from the log).
    let n = n.restart().await;
    let again = n.append(batch(2)).await.unwrap();
    assert!(again.duplicate, "the retry after a restart is recognised");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(n.search(&[]).await["total"], 40);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_from_a_client_is_mapped_and_reports_partial_success() {
    let n = TestNode::start().await;
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
    };
    let rec = |body: &str, sev: i32, trace: Vec<u8>| LogRecord {
        time_unix_nano: now_ns() as u64,
        severity_number: sev,
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(body.into())),
        }),
        attributes: vec![kv("http.route", "/pay")],
        trace_id: trace,
        ..Default::default()
    };
    let req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "payments"),
                    kv("k8s.namespace.name", "prod"),
                    kv("k8s.pod.name", "pay-1"),
                    kv("k8s.cluster.name", "eu"),
                ],
                dropped_attributes_count: 0,
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    rec("card charged", 9, vec![1; 16]),
                    rec("card refused", 17, vec![2; 16]),
                    rec("broken trace id", 9, vec![3; 5]),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut client = LogsServiceClient::connect(n.grpc.clone()).await.unwrap();
    let resp = client.export(req).await.unwrap().into_inner();
    let partial = resp.partial_success.expect("one record was rejected");
    assert_eq!(partial.rejected_log_records, 1);
    // The refused record is told by its place in the export, not only by its reason.
    assert!(
        partial
            .error_message
            .starts_with("resource_logs[0].scope_logs[0].log_records[2]: ")
            && partial.error_message.contains("trace"),
        "{}",
        partial.error_message
    );

    let body = n.wait_total(&[("q", "service:payments")], 2).await;
    let refused = body["hits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["body"] == "card refused")
        .expect("stored");
    assert_eq!(refused["level"], "error");
    assert_eq!(refused["namespace"], "prod");
    assert_eq!(refused["pod"], "pay-1");
    assert_eq!(refused["cluster"], "eu");
    assert_eq!(refused["trace_id"], "02".repeat(16));
    assert_eq!(refused["attributes"]["http.route"], "/pay");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_see_only_their_tenant() {
    let n = TestNode::start().await;
    n.append(AppendRequest {
        tenant: "acme".into(),
        records: vec![record("acme secret")],
        ..Default::default()
    })
    .await
    .unwrap();
    n.append_records(vec![record("public line")]).await;
    n.wait_total(&[], 1).await;
    let mut acme = serde_json::Value::Null;
    for _ in 0..200 {
        acme = n.search_raw(&[], Some("acme")).await.1;
        if acme["total"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(bodies(&acme), vec!["acme secret"]);
    let default = n.search(&[]).await;
    assert_eq!(bodies(&default), vec!["public line"]);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_pages_through_every_hit_exactly_once_in_both_orders() {
    let n = TestNode::start().await;
    let base = now_ns() - 60_000_000_000;
    let recs: Vec<Record> = (0..57)
        .map(|i| {
            let mut r = record(&format!("event {i}"));
            r.timestamp_ns = base + i * 1_000_000;
            r.labels = labels(&[("app", &format!("s{}", i % 7))]);
            r
        })
        .collect();
    n.append_records(recs).await;
    n.wait_total(&[], 57).await;
    for sort in ["time_desc", "time_asc"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut params = vec![("limit", "10".to_string()), ("sort", sort.to_string())];
            if let Some(c) = &cursor {
                params.push(("cursor", c.clone()));
            }
            let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let body = n.search(&p).await;
            let ts: Vec<i64> = body["hits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["timestamp_ns"].as_i64().unwrap())
                .collect();
            seen.extend(ts);
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let mut want: Vec<i64> = (0..57).map(|i| base + i * 1_000_000).collect();
        if sort == "time_desc" {
            want.reverse();
        }
        assert_eq!(seen, want, "{sort}");
    }
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_search_parameters_are_400_naming_the_problem() {
    let n = TestNode::start().await;
    for (params, needle) in [
        (vec![("q", "(unclosed")], "position"),
        (vec![("sort", "sideways")], "sort"),
        (vec![("start", "yesterday")], "start"),
        (vec![("limit", "-3")], "limit"),
        (vec![("cursor", "!!!")], "cursor"),
        (vec![("level", "loud")], "level"),
        (vec![("colour", "red")], "colour"),
    ] {
        let (status, body) = n.search_raw(&params, None).await;
        assert_eq!(status, 400, "{params:?}: {body}");
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains(needle), "{params:?}: {msg}");
    }
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_apis_list_names_and_values() {
    let n = TestNode::start().await;
    let mut a = record("one");
    a.labels = labels(&[("app", "web"), ("team", "red")]);
    let mut b = record("two");
    b.labels = labels(&[("app", "db")]);
    n.append(AppendRequest {
        records: vec![a, b],
        ..Default::default()
    })
    .await
    .unwrap();
    n.wait_total(&[], 2).await;
    let names: serde_json::Value = reqwest::get(format!("{}/api/v1/labels", n.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = names["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"app") && names.contains(&"team"),
        "{names:?}"
    );
    let values: serde_json::Value = reqwest::get(format!("{}/api/v1/labels/app/values", n.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(values["values"], serde_json::json!(["db", "web"]));
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics_answer() {
    let n = TestNode::start().await;
    assert_eq!(
        reqwest::get(format!("{}/healthz", n.http))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{}/readyz", n.http))
            .await
            .unwrap()
            .status(),
        200
    );
    n.append_records(vec![record("counted")]).await;
    let m = reqwest::get(format!("{}/metrics", n.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("weir_ingest_records_accepted_total 1"), "{m}");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_graceful_restart_and_are_not_indexed_twice() {
    let n = TestNode::start().await;
    let recs: Vec<Record> = (0..100)
        .map(|i| record(&format!("persisted {i}")))
        .collect();
    n.append_records(recs).await;
    n.wait_total(&[], 100).await;
    let n = n.restart().await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(n.search(&[("q", "persisted")]).await["total"], 100);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_id_without_a_sequence_is_refused_instead_of_deduplicated() {
    let n = TestNode::start().await;
    let err = n
        .append(AppendRequest {
            producer_id: "agent".into(),
            sequence: 0,
            records: vec![record("x")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("sequence"), "{}", err.message());
    // The refusal is counted (this metric read 0 forever before it was wired).
    let m = reqwest::get(format!("{}/metrics", n.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("weir_ingest_requests_refused_total{reason=\"invalid\"} 1"),
        "{m}"
    );
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_refuses_to_start_with_another_shard_count() {
    let n = TestNode::start().await;
    let dir = n.stop().await;
    let mut cfg = test_config(dir.path());
    cfg.storage.shards = 2;
    let err = weir_server::Node::start(cfg)
        .await
        .err()
        .expect("start must fail")
        .to_string();
    assert!(
        err.contains("4 shards") && err.contains("storage.shards"),
        "{err}"
    );
}

/// A 16 MiB Append of empty records decoded into ~2.5 GB and could abort the node: an
/// Append is measured on the wire (records counted) and refused before it is decoded,
/// naming the limit, and the node goes on serving. (The decoded-size bound itself is
/// tested on 1 M records in weir-proto's codec; here 200 000 keep the client small.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_of_too_many_empty_records_is_refused_before_decoding() {
    let n = TestNode::start().await;
    let e = n
        .append(AppendRequest {
            records: vec![Record::default(); 200_000],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(
        e.message()
            .contains("200000 records, limit 100000 (limits.batch_records_max)"),
        "{}",
        e.message()
    );
    n.append_records(vec![record("still serving")]).await;
    n.wait_total(&[], 1).await;
    n.stop().await;
}
