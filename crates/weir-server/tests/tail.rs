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

/// Loki's live tail over WebSocket, as logcli and Grafana use it: the history first, then
/// a record committed after the connection opened, in Loki's message shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lokis_websocket_tail_sends_history_then_new_records() {
    let node = TestNode::start().await;
    let mut old = record("older declined payment");
    old.service = "pay".into();
    node.append_records(vec![old]).await;
    node.wait_total(&[("q", "older")], 1).await;
    let url = format!(
        "{}/loki/api/v1/tail?query={}&limit=10",
        node.http.replace("http://", "ws://"),
        urlencode(r#"{service_name="pay"} |= "declined""#)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let first = next_json(&mut ws).await;
    assert_eq!(first["dropped_entries"], serde_json::Value::Null);
    assert_eq!(
        first["streams"][0]["values"][0][1], "older declined payment",
        "{first}"
    );
    assert_eq!(first["streams"][0]["stream"]["service_name"], "pay");

    let mut new = record("new declined payment");
    new.service = "pay".into();
    node.append_records(vec![record("new declined elsewhere"), new])
        .await;
    let live = next_json(&mut ws).await;
    let values = live["streams"][0]["values"].as_array().unwrap();
    assert_eq!(values.len(), 1, "{live}");
    assert_eq!(values[0][1], "new declined payment");
    assert!(
        values[0][0].as_str().unwrap().parse::<i64>().is_ok(),
        "ns as a string"
    );
    ws.close(None).await.unwrap();
    node.stop().await;
}

/// The next WebSocket message, as JSON; panics after 10 s.
async fn next_json<S>(ws: &mut S) -> serde_json::Value
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a message within 10 s")
        .unwrap()
        .unwrap();
    serde_json::from_str(msg.to_text().unwrap()).unwrap()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A node stops while tails are open (an SSE reader and a Loki WebSocket): their streams
/// end, and the HTTP server's graceful shutdown does not wait for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tails_end_when_the_node_stops() {
    use futures_util::StreamExt;
    let node = TestNode::start().await;
    let mut sse = reqwest::Client::new()
        .get(format!("{}/api/v1/tail", node.http))
        .query(&[("query", r#"{service="pay"}"#)])
        .send()
        .await
        .unwrap();
    let url = format!(
        "{}/loki/api/v1/tail?query={}",
        node.http.replace("http://", "ws://"),
        urlencode(r#"{service="pay"}"#)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let _history = next_json(&mut ws).await;
    tokio::time::timeout(Duration::from_secs(15), node.stop())
        .await
        .expect("the node stops with tails open");
    // Both streams end (the SSE body finishes, the socket closes or errors).
    let sse_end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = sse.chunk().await {}
    })
    .await;
    assert!(sse_end.is_ok(), "the SSE stream ended");
    let ws_end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(ws_end.is_ok(), "the WebSocket ended");
}
