//! The scanned head against a real node whose indexer commits only once a second: a
//! record is found by the native search, a Loki log query and a Loki count as soon as it
//! is acknowledged, before the index holds it (the answer says it was scanned), and a
//! head over `index.head_bytes_max` makes appends wait, then refuses them with 429 naming
//! the key, until the indexer catches up.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A node whose index commits at most once a second (the bound's maximum).
async fn lagging_node(head_bytes_max: usize, commit_timeout_ms: u64) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.index.commit_interval_ms = 1000;
    cfg.index.head_bytes_max = head_bytes_max;
    cfg.storage.commit_timeout_ms = commit_timeout_ms;
    TestNode::start_with(dir, cfg).await
}

async fn get(n: &TestNode, path: &str, params: &[(&str, String)]) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", n.http))
        .query(params)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{path} {params:?}");
    resp.json().await.unwrap()
}

/// Polls `f` until it returns `Some`, for up to 10 s.
async fn eventually<T, F, Fut>(mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_are_found_before_the_index_commits_them() {
    let node = lagging_node(64 << 20, 10_000).await;
    let mut from_head = 0;
    let rounds = 6;
    for round in 0..rounds {
        let token = format!("needle{round}x");
        node.append_records(vec![record(&format!("payment {token} declined"))])
            .await;
        let found = eventually(|| async {
            let body = node.search(&[("q", token.as_str()), ("start", "0")]).await;
            (body["total"] == 1).then_some(body)
        })
        .await
        .unwrap_or_else(|| panic!("{token} was never found"));
        assert_eq!(bodies(&found), [format!("payment {token} declined")]);
        if found["scanned_records"].as_u64().unwrap_or(0) > 0 {
            from_head += 1;
        }
    }
    // The index commits once a second and each search follows its append within
    // milliseconds: most of these were answered by scanning, not by the index.
    assert!(
        from_head > 0,
        "no search scanned the head in {rounds} rounds"
    );
    let metrics = reqwest::get(format!("{}/metrics", node.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scanned: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weir_search_head_records_scanned_total "))
        .expect("the scanned counter is exported")
        .parse()
        .unwrap();
    assert!(scanned >= from_head, "{metrics}");
    assert!(metrics.contains("weir_index_head_bytes{shard=\"0\"}"));
    let (start, end) = (
        (now_ns() - 60_000_000_000).to_string(),
        (now_ns() + 60_000_000_000).to_string(),
    );
    // The Loki APIs read through the same searcher: a log query and a count.
    node.append_records(vec![record("late entry lokitoken")])
        .await;
    let lines = eventually(|| async {
        let body = get(
            &node,
            "/loki/api/v1/query_range",
            &[
                ("query", r#"{service="checkout"} |= "lokitoken""#.into()),
                ("start", start.clone()),
                ("end", end.clone()),
            ],
        )
        .await;
        let values = body["data"]["result"][0]["values"].as_array().cloned()?;
        (values.len() == 1).then_some(values)
    })
    .await
    .expect("the Loki log query finds the new line");
    assert_eq!(lines[0][1], "late entry lokitoken");
    node.append_records(vec![record("counted once")]).await;
    let total = rounds + 2;
    let counted = eventually(|| async {
        let body = get(
            &node,
            "/loki/api/v1/query",
            &[
                (
                    "query",
                    r#"sum(count_over_time({service="checkout"}[5m]))"#.into(),
                ),
                ("time", end.clone()),
            ],
        )
        .await;
        let v = body["data"]["result"][0]["value"][1].as_str()?.to_owned();
        (v == total.to_string()).then_some(v)
    })
    .await;
    assert_eq!(
        counted.as_deref(),
        Some(total.to_string().as_str()),
        "the count covers indexed and scanned records once each"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_head_makes_appends_wait_then_refuses_them() {
    let node = lagging_node(1 << 20, 100).await;
    // Past the indexer's first second, so that this append is committed at once and the
    // next commit is a second away.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    node.append_records(vec![record("first")]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // 1.2 MiB into the head; the index holds it only at its next commit.
    let big: Vec<_> = (0..150)
        .map(|i| record(&format!("{i} {}", "x".repeat(8 << 10))))
        .collect();
    node.append_records(big).await;
    // The head reader takes the batch a moment after its ack; from then on appends wait
    // for room and, past their 100 ms commit timeout, are refused.
    let refused = eventually(|| async {
        node.append(weir_proto::v1::AppendRequest {
            records: vec![record("over the bound")],
            ..Default::default()
        })
        .await
        .err()
    })
    .await
    .expect("an append is refused while the head is over its bound");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("index.head_bytes_max"),
        "{}",
        refused.message()
    );
    // Once the indexer commits, the head empties and appends go through again.
    let accepted = eventually(|| async {
        node.append(weir_proto::v1::AppendRequest {
            records: vec![record("after the commit")],
            ..Default::default()
        })
        .await
        .ok()
    })
    .await;
    assert!(accepted.is_some(), "appends never resumed");
    node.stop().await;
}
