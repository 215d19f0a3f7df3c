//! The Elasticsearch search API against a real node on port 0: Grafana's `_msearch`
//! bodies (COMPAT.md: the logs query with its date_histogram, the metric query with terms
//! around a date_histogram), `_search` paging, metrics, `_mapping` and `_field_caps`, each
//! checked against counts computed from the records the test sent; and the official
//! Python `elasticsearch` client's `search` (skipped when it is not installed, unless
//! `WEIR_REQUIRE_CLIENTS=1`).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use weir_proto::v1::{AppendRequest, Record};

const TENANT: &str = "shop";
const MINUTE_MS: i64 = 60_000;
const LEVELS: [&str; 4] = ["info", "error", "warn", "error"];
const SERVICES: [&str; 3] = ["api", "web", "db"];

/// One record the test sent, as the checks see it.
#[derive(Clone, Debug)]
struct Sent {
    ts_ms: i64,
    level: &'static str,
    service: &'static str,
    /// The `_bulk` index; `None` for a record sent by gRPC Append.
    index: Option<&'static str>,
    order: i64,
}

/// 60 records over ten minutes from `base_ms`: through `_bulk` into `logs-shop` and
/// `logs-other`, and through Append (no index), with cycling levels and services.
fn records(base_ms: i64) -> Vec<Sent> {
    (0..60)
        .map(|i| Sent {
            ts_ms: base_ms + i * 10_000 + 1_234,
            level: LEVELS[i as usize % 4],
            service: SERVICES[i as usize % 3],
            index: match (i % 5, (i / 5) % 2) {
                (0, _) => None,
                (_, 0) => Some("logs-shop"),
                _ => Some("logs-other"),
            },
            order: 1_000 + i,
        })
        .collect()
}

async fn post(url: &str, content_type: &str, body: String) -> (u16, Value, bool) {
    let resp = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .header("x-scope-orgid", TENANT)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let product = resp
        .headers()
        .get("x-elastic-product")
        .is_some_and(|v| v == "Elasticsearch");
    (status, resp.json().await.unwrap(), product)
}

async fn get(url: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(url)
        .header("x-scope-orgid", TENANT)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// Sends `sent` and waits until the tenant's search sees all of it.
async fn ingest(n: &TestNode, sent: &[Sent]) {
    let mut bulk = String::new();
    let mut append = Vec::new();
    for s in sent {
        let message = format!("esmark line {} from {}", s.order, s.service);
        match s.index {
            Some(index) => {
                bulk.push_str(&json!({"create": {"_index": index}}).to_string());
                bulk.push('\n');
                bulk.push_str(
                    &json!({"@timestamp": s.ts_ms, "message": message, "log": {"level": s.level},
                        "service": {"name": s.service}, "order": {"id": s.order}})
                    .to_string(),
                );
                bulk.push('\n');
            }
            None => append.push(Record {
                timestamp_ns: s.ts_ms * 1_000_000,
                level: s.level.into(),
                body: message.into_bytes(),
                service: s.service.into(),
                attributes: labels(&[("order.id", &s.order.to_string())]),
                ..Default::default()
            }),
        }
    }
    let (status, body, _) = post(&format!("{}/_bulk", n.http), "application/x-ndjson", bulk).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["errors"], false, "{body}");
    n.append(AppendRequest {
        tenant: TENANT.into(),
        records: append,
        ..Default::default()
    })
    .await
    .expect("append accepted");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = n
            .search_raw(&[("q", "esmark"), ("start", "0")], Some(TENANT))
            .await;
        if body["total"].as_u64() == Some(sent.len() as u64) {
            return;
        }
        assert!(Instant::now() < deadline, "records not searchable: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A base time on a multiple of ten minutes (so 1m and 2m buckets start on it), half an
/// hour ago or a little more.
fn base_ms() -> i64 {
    let now_ms = now_ns() / 1_000_000;
    (now_ms - 30 * MINUTE_MS).div_euclid(10 * MINUTE_MS) * 10 * MINUTE_MS
}

fn ndjson(lines: &[Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn buckets(agg: &Value) -> Vec<(i64, u64)> {
    agg["buckets"]
        .as_array()
        .unwrap_or_else(|| panic!("no buckets in {agg}"))
        .iter()
        .map(|b| (b["key"].as_i64().unwrap(), b["doc_count"].as_u64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafanas_msearch_logs_and_metric_queries_count_what_was_sent() {
    let n = TestNode::start().await;
    let base = base_ms();
    let sent = records(base);
    ingest(&n, &sent).await;
    let end = base + 10 * MINUTE_MS;

    // Grafana's logs query (COMPAT.md), on one bulk index, errors only.
    let logs = json!({
        "size": 500,
        "query": {"bool": {"filter": [
            {"range": {"@timestamp": {"gte": base, "lte": end, "format": "epoch_millis"}}},
            {"query_string": {"analyze_wildcard": true, "query": "log.level:error"}}
        ]}},
        "sort": [{"@timestamp": {"order": "desc", "unmapped_type": "boolean"}}, {"_doc": {"order": "desc"}}],
        "script_fields": {}, "docvalue_fields": [],
        "highlight": {"fields": {"*": {}}, "pre_tags": ["@HIGHLIGHT@"], "post_tags": ["@/HIGHLIGHT@"], "fragment_size": 2147483647},
        "aggs": {"1": {"date_histogram": {"field": "@timestamp", "fixed_interval": "1m",
            "format": "epoch_millis", "min_doc_count": 0, "extended_bounds": {"min": base, "max": end}}}}
    });
    // Grafana's metric query: count per service over time, on the tenant's index.
    let metric = json!({
        "size": 0,
        "query": {"bool": {"filter": [
            {"range": {"@timestamp": {"gte": base, "lte": end, "format": "epoch_millis"}}},
            {"query_string": {"analyze_wildcard": true, "query": "*"}}
        ]}},
        "aggs": {"3": {"terms": {"field": "service.name", "size": 10, "order": {"_key": "desc"}, "min_doc_count": 1},
            "aggs": {"2": {"date_histogram": {"field": "@timestamp", "fixed_interval": "2m",
                "format": "epoch_millis", "min_doc_count": 0, "extended_bounds": {"min": base, "max": end}}}}}}
    });
    let header = |index: &str| json!({"search_type": "query_then_fetch", "ignore_unavailable": true, "index": index});
    let body = ndjson(&[
        header("logs-shop"),
        logs,
        header("weir-shop"),
        metric,
        header("logs-*"),
        json!({"query": {"fuzzy": {"message": "x"}}}),
    ]);
    let (status, answer, product) = post(
        &format!("{}/_msearch?max_concurrent_shard_requests=5", n.http),
        "application/x-ndjson",
        body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(product, "X-Elastic-Product on _msearch");
    let responses = answer["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 3);

    // The logs query: hits and buckets are what was sent.
    let logs = &responses[0];
    assert_eq!(logs["status"], 200, "{logs}");
    assert_eq!(logs["_shards"]["failed"], 0);
    let want: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.index == Some("logs-shop") && s.level == "error")
        .collect();
    assert!(!want.is_empty());
    assert_eq!(logs["hits"]["total"]["value"], want.len() as u64, "{logs}");
    let hits = logs["hits"]["hits"].as_array().unwrap();
    assert_eq!(hits.len(), want.len());
    let times: Vec<i64> = hits
        .iter()
        .map(|h| h["sort"][0].as_i64().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");
    for h in hits {
        assert_eq!(h["_index"], "logs-shop");
        let src = &h["_source"];
        assert_eq!(src["log"]["level"], "error", "{h}");
        assert!(src["message"].as_str().unwrap().starts_with("esmark line"));
        assert!(
            src["order"]["id"].is_string(),
            "attributes come back as text: {h}"
        );
        assert!(src["@timestamp"].as_str().unwrap().ends_with('Z'));
    }
    let mut per_minute: BTreeMap<i64, u64> = (0..=10).map(|m| (base + m * MINUTE_MS, 0)).collect();
    for s in &want {
        *per_minute
            .get_mut(&(s.ts_ms.div_euclid(MINUTE_MS) * MINUTE_MS))
            .unwrap() += 1;
    }
    assert_eq!(
        buckets(&logs["aggregations"]["1"]),
        per_minute.into_iter().collect::<Vec<_>>(),
        "one bucket per minute of the extended bounds, empty ones too"
    );
    assert_eq!(
        logs["aggregations"]["1"]["buckets"][0]["key_as_string"],
        base.to_string()
    );

    // The metric query: services by key, descending, each with its own histogram.
    let metric = &responses[1];
    assert_eq!(metric["status"], 200, "{metric}");
    assert_eq!(metric["hits"]["total"]["value"], sent.len() as u64);
    assert!(metric["hits"]["hits"].as_array().unwrap().is_empty());
    let terms = metric["aggregations"]["3"]["buckets"].as_array().unwrap();
    let keys: Vec<&str> = terms.iter().map(|b| b["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["web", "db", "api"]);
    for b in terms {
        let service = b["key"].as_str().unwrap();
        let of: Vec<&Sent> = sent.iter().filter(|s| s.service == service).collect();
        assert_eq!(b["doc_count"], of.len() as u64, "{b}");
        let mut per_2m: BTreeMap<i64, u64> =
            (0..=5).map(|m| (base + m * 2 * MINUTE_MS, 0)).collect();
        for s in of {
            *per_2m
                .get_mut(&(s.ts_ms.div_euclid(2 * MINUTE_MS) * 2 * MINUTE_MS))
                .unwrap() += 1;
        }
        assert_eq!(
            buckets(&b["2"]),
            per_2m.into_iter().collect::<Vec<_>>(),
            "{service}"
        );
    }

    // An unknown query type fails its own response only, in Elasticsearch's shape.
    let bad = &responses[2];
    assert_eq!(bad["status"], 400, "{bad}");
    assert_eq!(bad["error"]["type"], "parsing_exception");
    assert!(
        bad["error"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("unknown query [fuzzy]"),
        "{bad}"
    );
    n.stop().await;
}

/// A search sorted by time reads its range in windows from the newest end and stops once
/// it has its page and `track_total_hits` matches: the page must be the one a full read
/// gives, and the total a lower bound ("gte") only when counting stopped early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_sorted_search_stops_counting_at_track_total_hits_with_the_same_page() {
    let n = TestNode::start().await;
    let base = base_ms();
    let sent = records(base);
    ingest(&n, &sent).await;
    let end = base + 10 * MINUTE_MS;
    let mut newest: Vec<i64> = sent.iter().map(|s| s.ts_ms).collect();
    newest.sort_unstable_by(|a, b| b.cmp(a));
    let oldest: Vec<i64> = newest.iter().rev().copied().collect();

    let search = |order: &'static str, track: Value| {
        let mut body = json!({"size": 7,
            "query": {"range": {"@timestamp": {"gte": base, "lte": end, "format": "epoch_millis"}}},
            "sort": [{"@timestamp": {"order": order, "unmapped_type": "boolean"}}]});
        if !track.is_null() {
            body["track_total_hits"] = track;
        }
        let url = format!("{}/weir-shop/_search", n.http);
        async move {
            let (status, page, _) = post(&url, "application/json", body.to_string()).await;
            assert_eq!(status, 200, "{page}");
            let times: Vec<i64> = page["hits"]["hits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["sort"][0].as_i64().unwrap())
                .collect();
            (times, page["hits"].get("total").cloned())
        }
    };
    // The first window (the last minute) holds 6 records: the page of 7 needs a second.
    for (track, total) in [
        (json!(20), Some(json!({"value": 20, "relation": "gte"}))),
        (json!(true), Some(json!({"value": 60, "relation": "eq"}))),
        (Value::Null, Some(json!({"value": 60, "relation": "eq"}))),
        (json!(100), Some(json!({"value": 60, "relation": "eq"}))),
        (json!(false), None),
    ] {
        let (times, got) = search("desc", track.clone()).await;
        assert_eq!(
            times,
            newest[..7],
            "newest page with track_total_hits {track}"
        );
        assert_eq!(got, total, "total with track_total_hits {track}");
    }
    let (times, got) = search("asc", json!(20)).await;
    assert_eq!(times, oldest[..7], "oldest page, ascending");
    assert_eq!(got, Some(json!({"value": 20, "relation": "gte"})));
    // Aggregations only (`size: 0`, scored): the total counts the same way.
    for (track, total) in [
        (json!(20), json!({"value": 20, "relation": "gte"})),
        (json!(true), json!({"value": 60, "relation": "eq"})),
    ] {
        let body = json!({"size": 0, "track_total_hits": track,
            "query": {"range": {"@timestamp": {"gte": base, "lte": end, "format": "epoch_millis"}}}});
        let (status, page, _) = post(
            &format!("{}/weir-shop/_search", n.http),
            "application/json",
            body.to_string(),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(
            page["hits"]["total"], total,
            "size 0, track_total_hits {track}"
        );
    }
    let (status, page) = get(&format!(
        "{}/weir-shop/_search?size=1&sort=@timestamp:desc&track_total_hits=5&rest_total_hits_as_int=true",
        n.http
    ))
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["hits"]["total"], 5, "{page}");
    assert_eq!(page["hits"]["hits"][0]["sort"][0], newest[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_pages_aggregates_and_describes_fields_as_elasticsearch_does() {
    let n = TestNode::start().await;
    let base = base_ms();
    let sent = records(base);
    ingest(&n, &sent).await;
    let bulk: Vec<&Sent> = sent.iter().filter(|s| s.index.is_some()).collect();

    // search_after pages through every bulk record, oldest first, each once.
    let mut after: Option<Value> = None;
    let mut seen = Vec::new();
    loop {
        let mut body = json!({"size": 7, "query": {"match_all": {}}, "sort": [{"@timestamp": "asc"}, "_doc"],
            "track_total_hits": true, "_source": ["message"], "version": true});
        if let Some(a) = &after {
            body["search_after"] = a.clone();
        }
        let (status, page, product) = post(
            &format!("{}/logs-shop,logs-other/_search", n.http),
            "application/json",
            body.to_string(),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        assert!(product);
        assert_eq!(page["hits"]["total"]["value"], bulk.len() as u64);
        let hits = page["hits"]["hits"].as_array().unwrap().clone();
        if hits.is_empty() {
            break;
        }
        after = Some(hits.last().unwrap()["sort"].clone());
        seen.extend(hits.into_iter().map(|h| {
            (
                h["sort"][0].as_i64().unwrap(),
                h["_id"].as_str().unwrap().to_owned(),
            )
        }));
    }
    let want: Vec<i64> = bulk.iter().map(|s| s.ts_ms).collect();
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), want);
    let mut ids: Vec<&String> = seen.iter().map(|s| &s.1).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), bulk.len(), "ids are unique");

    // URL parameters, the tenant's index (Append records too), and metrics over an
    // attribute read from the records.
    let (status, page) = get(&format!(
        "{}/weir-shop/_search?q=service.name:api&size=2&sort=@timestamp:desc&rest_total_hits_as_int=true",
        n.http
    ))
    .await;
    assert_eq!(status, 200, "{page}");
    let api: Vec<&Sent> = sent.iter().filter(|s| s.service == "api").collect();
    assert_eq!(page["hits"]["total"], api.len() as u64);
    assert_eq!(
        page["hits"]["hits"][0]["sort"][0],
        api.last().unwrap().ts_ms
    );
    let (status, page, _) = post(
        &format!("{}/_search", n.http),
        "application/json",
        json!({"size": 0, "query": {"bool": {"must_not": {"term": {"log.level": "info"}},
                "should": [{"match": {"service.name": "web"}}, {"prefix": {"service.name": "d"}}]}},
            "aggs": {"max": {"max": {"field": "order.id"}}, "min": {"min": {"field": "order.id"}},
                "avg": {"avg": {"field": "order.id"}}, "n": {"value_count": {"field": "order.id"}},
                "levels": {"cardinality": {"field": "log.level"}},
                "idx": {"terms": {"field": "es.index", "order": {"_count": "desc"}}}}})
        .to_string(),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let m: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.level != "info" && s.service != "api")
        .collect();
    let aggs = &page["aggregations"];
    assert_eq!(page["hits"]["total"]["value"], m.len() as u64);
    let orders: Vec<f64> = m.iter().map(|s| s.order as f64).collect();
    assert_eq!(
        aggs["max"]["value"],
        orders.iter().cloned().fold(f64::MIN, f64::max)
    );
    assert_eq!(
        aggs["min"]["value"],
        orders.iter().cloned().fold(f64::MAX, f64::min)
    );
    assert_eq!(
        aggs["avg"]["value"],
        orders.iter().sum::<f64>() / orders.len() as f64
    );
    assert_eq!(aggs["n"]["value"], m.len() as u64);
    assert_eq!(aggs["levels"]["value"], 2);
    let mut by_index: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &m {
        if let Some(i) = s.index {
            *by_index.entry(i).or_default() += 1;
        }
    }
    let got: BTreeMap<&str, u64> = aggs["idx"]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["key"].as_str().unwrap(), b["doc_count"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, by_index);

    // A histogram of many buckets over few records (read, not counted per bucket) gives
    // the same counts, and min_doc_count 1 leaves the empty ones out.
    let (status, page, _) = post(
        &format!("{}/logs-shop/_search", n.http),
        "application/json",
        json!({"size": 0, "aggs": {"s": {"date_histogram": {"field": "@timestamp",
            "fixed_interval": "1s", "min_doc_count": 1}}}})
        .to_string(),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let mut per_second: BTreeMap<i64, u64> = BTreeMap::new();
    for s in sent.iter().filter(|s| s.index == Some("logs-shop")) {
        *per_second
            .entry(s.ts_ms.div_euclid(1_000) * 1_000)
            .or_default() += 1;
    }
    assert_eq!(
        buckets(&page["aggregations"]["s"]),
        per_second.into_iter().collect::<Vec<_>>()
    );

    // Refusals name what was refused, in Elasticsearch's shape, with the product header.
    for (body, kind, needle) in [
        (
            json!({"aggs": {"p": {"percentiles": {"field": "order.id"}}}}),
            "parsing_exception",
            "unknown aggregation type [percentiles]",
        ),
        (
            json!({"query": {"range": {"order.id": {"gte": 3}}}}),
            "illegal_argument_exception",
            "[range] on [order.id]",
        ),
        (
            json!({"size": 20000}),
            "illegal_argument_exception",
            "search.limit_max",
        ),
    ] {
        let (status, e, product) = post(
            &format!("{}/_search", n.http),
            "application/json",
            body.to_string(),
        )
        .await;
        assert_eq!(status, 400, "{e}");
        assert!(product);
        assert_eq!(e["status"], 400);
        assert_eq!(e["error"]["type"], kind, "{e}");
        assert!(
            e["error"]["reason"].as_str().unwrap().contains(needle),
            "{e}"
        );
    }

    // Fields for Grafana's query editor.
    let (status, mapping) = get(&format!("{}/logs-shop/_mapping", n.http)).await;
    assert_eq!(status, 200, "{mapping}");
    let props = &mapping["logs-shop"]["mappings"]["properties"];
    assert_eq!(props["@timestamp"]["type"], "date", "{mapping}");
    assert_eq!(props["message"]["type"], "text");
    assert_eq!(props["log"]["properties"]["level"]["type"], "keyword");
    assert_eq!(
        props["order"]["properties"]["id"]["type"], "keyword",
        "{mapping}"
    );
    let (status, caps) = get(&format!("{}/_field_caps?fields=*", n.http)).await;
    assert_eq!(status, 200, "{caps}");
    assert_eq!(caps["indices"], json!(["weir-shop"]));
    assert_eq!(caps["fields"]["@timestamp"]["date"]["aggregatable"], true);
    assert_eq!(
        caps["fields"]["service.name"]["keyword"]["searchable"],
        true
    );
    assert_eq!(caps["fields"]["order.id"]["keyword"]["type"], "keyword");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_elasticsearch_client_searches_with_query_string_and_a_histogram() {
    let ok = Command::new("python3")
        .args(["-c", "import elasticsearch"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        let install = "pip install 'elasticsearch>=8,<9'";
        assert!(
            std::env::var("WEIR_REQUIRE_CLIENTS").as_deref() != Ok("1"),
            "the Python elasticsearch client is required (WEIR_REQUIRE_CLIENTS=1) but missing: {install}"
        );
        eprintln!("SKIPPED: the Python elasticsearch client is not installed ({install})");
        return;
    }
    let n = TestNode::start().await;
    let script = format!("{}/tests/clients/es_search.py", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(script)
        .args([&n.http, "pyshop", "pysearchmark"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "es_search.py: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    n.stop().await;
}
