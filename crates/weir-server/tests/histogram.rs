//! `GET /api/v1/histogram` against a real node on port 0: the counts per bucket and level
//! are those of the records stored (computed here from what was sent), buckets line up on
//! multiples of the interval, filters apply, and bad parameters name what was wrong.

mod common;

use std::collections::BTreeMap;

use common::*;
use weir_proto::api::search::HistogramResponse;
use weir_proto::v1::Record;

const NS: i64 = 1_000_000_000;

async fn histogram(n: &TestNode, params: &[(&str, String)]) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/histogram", n.http))
        .query(params)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_per_bucket_and_level_are_those_of_the_records_stored() {
    let node = TestNode::start().await;
    let minute = 60 * NS;
    // Ten whole minutes, ending a minute ago.
    let end = (now_ns() / minute - 1) * minute;
    let start = end - 10 * minute;
    let levels = ["info", "warn", "error"];
    let mut want: BTreeMap<(i64, &str), u64> = BTreeMap::new();
    let mut records = Vec::new();
    for i in 0..500i64 {
        let ts = start + (i * 7919 * NS / 10) % (10 * minute);
        let level = levels[(i % 7 % 3) as usize];
        let body = if i % 5 == 0 { "payment declined" } else { "ok" };
        if body == "payment declined" {
            *want.entry((ts - ts.rem_euclid(minute), level)).or_default() += 1;
        }
        records.push(Record {
            timestamp_ns: ts,
            level: level.into(),
            body: body.into(),
            service: "pay".into(),
            ..Default::default()
        });
    }
    node.append_records(records).await;
    let window = [
        ("q", "*"),
        ("start", &start.to_string()),
        ("end", &end.to_string()),
    ];
    let window: Vec<(&str, &str)> = window.iter().map(|(k, v)| (*k, *v)).collect();
    node.wait_total(&window, 500).await;

    let params = [
        ("q", "declined".to_owned()),
        ("start", start.to_string()),
        ("end", end.to_string()),
        ("interval", "1m".to_owned()),
    ];
    let (status, body) = histogram(&node, &params).await;
    assert_eq!(status, 200, "{body}");
    let h: HistogramResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(h.interval_ms, 60_000);
    assert_eq!(h.buckets.len(), 10, "empty buckets included");
    let mut got: BTreeMap<(i64, &str), u64> = BTreeMap::new();
    for b in &h.buckets {
        assert_eq!(b.start_ns % minute, 0, "buckets start on whole minutes");
        assert_eq!(b.count, b.levels.values().sum::<u64>());
        for (l, n) in &b.levels {
            got.insert((b.start_ns, l.as_str()), *n);
        }
    }
    assert_eq!(got, want);
    assert_eq!(h.total, 100);

    // A level filter keeps only that level; no interval picks one and says so.
    let (_, body) = histogram(
        &node,
        &[
            ("q", "declined".to_owned()),
            ("start", start.to_string()),
            ("end", end.to_string()),
            ("level", "error".to_owned()),
        ],
    )
    .await;
    let h: HistogramResponse = serde_json::from_str(&body).unwrap();
    let errors: u64 = want
        .iter()
        .filter(|((_, l), _)| *l == "error")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(h.total, errors);
    assert!(h
        .buckets
        .iter()
        .all(|b| b.levels.keys().all(|l| l.as_str() == "error")));
    assert!(
        h.notices.iter().any(|n| n.contains("no interval given")),
        "{:?}",
        h.notices
    );

    // Too many buckets, and a search-only parameter, are refused by name.
    let (status, body) = histogram(
        &node,
        &[
            ("start", "0".to_owned()),
            ("end", end.to_string()),
            ("interval", "1s".to_owned()),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("search.histogram_buckets_max"), "{body}");
    let (status, body) = histogram(&node, &[("limit", "5".to_owned())]).await;
    assert_eq!(status, 400);
    assert!(body.contains("limit is a search parameter"), "{body}");
    node.stop().await;
}
