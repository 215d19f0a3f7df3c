//! `GET /api/v1/tail` against a real node on port 0: a record committed after the reader
//! connects arrives as a `record` event, filtered by the LogQL query and the tenant; the
//! pipeline's line is the body.

mod common;

use std::time::Duration;

use common::*;
use weir_proto::api::search::Hit;
use weir_proto::v1::{AppendRequest, Record};

/// Reads SSE events (`event:` and `data:` lines) from `resp` until `done` says so or 10 s
/// pass; returns every (event, data) read.
async fn read_events(
    mut resp: reqwest::Response,
    done: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let mut events = Vec::new();
    let mut buf = String::new();
    let mut event = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(&events) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("events within 10 s")
            .unwrap()
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(at) = buf.find('\n') {
            let line: String = buf.drain(..=at).collect();
            let line = line.trim_end();
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                events.push((event.clone(), d.trim().to_owned()));
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_record_reaches_a_reader_filtered_by_query_and_tenant() {
    let node = TestNode::start().await;
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/tail", node.http))
        .query(&[(
            "query",
            r#"{service="pay"} |= "declined" | line_format "PAY {{.level}}: {{__line__}}""#,
        )])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The stream is open once the headers are here; give the reader threads a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut other_tenant = record("card declined for order 7");
    other_tenant.service = "pay".into();
    node.append(AppendRequest {
        tenant: "acme".into(),
        records: vec![other_tenant],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut records: Vec<Record> = ["order 1 ok", "card declined for order 2", "order 3 ok"]
        .iter()
        .map(|b| {
            let mut r = record(b);
            r.service = "pay".into();
            r
        })
        .collect();
    records.push(record("card declined, but in checkout"));
    node.append_records(records).await;
    let events = read_events(resp, |ev| ev.iter().any(|(e, _)| e == "record")).await;
    let hits: Vec<Hit> = events
        .iter()
        .filter(|(e, _)| e == "record")
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(hits.len(), 1, "{events:?}");
    assert_eq!(hits[0].body, "PAY info: card declined for order 2");
    assert_eq!(hits[0].service, "pay");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_without_a_log_query_is_refused_by_name() {
    let node = TestNode::start().await;
    for (query, needle) in [
        (None, "query is required"),
        (Some(r#"rate({a="b"}[1m])"#), "tail takes a log query"),
        (Some(r#"{a="b""#), "parse error at position"),
    ] {
        let mut req = reqwest::Client::new().get(format!("{}/api/v1/tail", node.http));
        if let Some(q) = query {
            req = req.query(&[("query", q)]);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 400);
        let body = resp.text().await.unwrap();
        assert!(body.contains(needle), "{body}");
    }
    node.stop().await;
}
