//! `GET /api/v1/search`: one page of the records matching a query in a time range.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Level;

/// The answer of `GET /api/v1/search`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SearchResponse {
    /// The page of hits, in the order asked for (`sort`).
    pub hits: Vec<Hit>,
    /// Every match in the time range, not only this page's.
    pub total: u64,
    /// Time taken on the node that answered, milliseconds.
    pub took_ms: u64,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// The limit actually applied (after capping to `search.limit_max`).
    pub limit: usize,
    /// Start of the time range searched, RFC 3339 (the hour before `end` unless `start`
    /// was given).
    pub start: String,
    /// End of the time range searched (exclusive), RFC 3339.
    pub end: String,
    /// What the node changed or chose for the request and the caller may not expect: a
    /// default time range, a capped limit, a clamped date. Absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
    /// True when some shard could not be searched (no live replica reachable): the page
    /// lacks its hits. Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// The shards missing from a partial page. Absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_shards: Vec<u32>,
    /// Records read from the log's head (committed, not yet indexed) rather than looked up
    /// in the index: the newest records, found before the index holds them. Absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub scanned_records: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One record of a search answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Hit {
    /// When it happened, RFC 3339 UTC with nanoseconds.
    pub timestamp: String,
    /// The same, nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    /// Its level, by canonical name (`info`, `warn`, ...).
    pub level: Level,
    /// The log line.
    pub body: String,
    /// The `service` it came from (empty when unknown).
    pub service: String,
    /// Its Kubernetes `namespace` (empty when unknown).
    pub namespace: String,
    /// Its `pod` (empty when unknown).
    pub pod: String,
    /// Its `cluster` (empty when unknown).
    pub cluster: String,
    /// Its stream labels, by name.
    pub labels: BTreeMap<String, String>,
    /// Its attributes (structured fields that are not stream labels), by name.
    pub attributes: BTreeMap<String, String>,
    /// The trace it belongs to, hex (empty when none).
    pub trace_id: String,
    /// The span it belongs to, hex (empty when none).
    pub span_id: String,
    /// Relevance to the query; present only with `sort=score`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
}

/// The answer of `GET /api/v1/histogram`: how many records match a query in each bucket
/// of a time range, by level.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct HistogramResponse {
    /// Start of the range (the first bucket's start), RFC 3339.
    pub start: String,
    /// End of the range (exclusive), RFC 3339.
    pub end: String,
    /// Width of each bucket, milliseconds (given as `interval`, or chosen from the range).
    pub interval_ms: u64,
    /// The buckets, oldest first, empty ones included.
    pub buckets: Vec<Bucket>,
    /// Every match in the range.
    pub total: u64,
    /// Time taken, milliseconds.
    pub took_ms: u64,
    /// What the node chose for the request (a default range, the interval). Absent when
    /// empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
    /// True when some shard could not be counted: the counts lack its records.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// The shards missing from a partial answer. Absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_shards: Vec<u32>,
}

/// One bucket of a histogram.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Bucket {
    /// Where it starts, RFC 3339.
    pub start: String,
    /// The same, nanoseconds since the Unix epoch.
    pub start_ns: i64,
    /// Matches in `[start, start + interval)`.
    pub count: u64,
    /// The same by level (canonical names); levels with none are left out.
    pub levels: BTreeMap<Level, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::round_trip;

    fn hit(score: Option<f32>) -> Hit {
        Hit {
            timestamp: "2026-11-21T10:04:21.123456789Z".into(),
            timestamp_ns: 1_795_255_461_123_456_789,
            level: Level::Warn,
            body: "timeout after 250ms waiting for lock on table orders".into(),
            service: "checkout".into(),
            namespace: "prod".into(),
            pod: "checkout-7d9f-x2".into(),
            cluster: "eu-1".into(),
            labels: [("team".to_owned(), "payments".to_owned())].into(),
            attributes: [("order_id".to_owned(), "42".to_owned())].into(),
            trace_id: "ab".repeat(16),
            span_id: "cd".repeat(8),
            score,
        }
    }

    #[test]
    fn a_full_page_round_trips() {
        let page = SearchResponse {
            hits: vec![hit(Some(1.5)), hit(None)],
            total: 1234,
            took_ms: 7,
            next_cursor: Some("dGltZV9kZXNjOjE3OTUyNTU0NjE".into()),
            limit: 1000,
            start: "2026-11-21T09:00:00Z".into(),
            end: "2026-11-21T10:05:00Z".into(),
            notices: vec!["limit 5000 capped to 1000 (search.limit_max)".into()],
            partial: true,
            missing_shards: vec![2, 3],
            scanned_records: 12,
        };
        round_trip(&page);
    }

    #[test]
    fn a_last_complete_page_leaves_out_the_optional_fields() {
        let page = SearchResponse {
            hits: vec![hit(None)],
            total: 1,
            took_ms: 0,
            next_cursor: None,
            limit: 100,
            start: "2026-11-21T09:00:00Z".into(),
            end: "2026-11-21T10:00:00Z".into(),
            notices: Vec::new(),
            partial: false,
            missing_shards: Vec::new(),
            scanned_records: 0,
        };
        let json = round_trip(&page);
        for absent in [
            "next_cursor",
            "notices",
            "partial",
            "missing_shards",
            "score",
            "scanned_records",
        ] {
            assert!(!json.contains(absent), "{absent} left out: {json}");
        }
        assert!(
            json.starts_with(r#"{"hits":[{"timestamp":"2026-11-21T10:04:21.123456789Z","timestamp_ns":1795255461123456789,"level":"warn","body":"#),
            "{json}"
        );
        assert!(
            json.ends_with(r#""total":1,"took_ms":0,"limit":100,"start":"2026-11-21T09:00:00Z","end":"2026-11-21T10:00:00Z"}"#),
            "{json}"
        );
    }

    #[test]
    fn a_level_is_read_by_canonical_name_only() {
        let mut v = serde_json::to_value(hit(None)).unwrap();
        v["level"] = "warning".into();
        assert!(serde_json::from_value::<Hit>(v).is_err());
    }
}
