//! Loki's field detection (`detected_fields`, `detected_field/{name}/values`) against a
//! real node on port 0. Every expectation is computed from the lines the test generates
//! (which field each line holds, its value, type, parser and JSON path), so a handler
//! that loses, invents or misnames a field fails here.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use weir_proto::v1::{AppendRequest, Record};
use weir_server::http::loki_detected::{DetectedField, DetectedFieldsResponse, FieldType};

const NS: i64 = 1_000_000_000;
const MS: i64 = 1_000_000;

/// A field the test put in a line, as detection must report it.
#[derive(Clone)]
struct Put {
    name: &'static str,
    value: String,
    kind: FieldType,
    /// `None` for structured metadata.
    parser: Option<&'static str>,
    json_path: Vec<&'static str>,
}

/// A generated line: the record and the fields it holds.
struct Gen {
    record: Record,
    fields: Vec<Put>,
}

fn put(name: &'static str, value: impl ToString, kind: FieldType, parser: &'static str) -> Put {
    Put {
        name,
        value: value.to_string(),
        kind,
        parser: Some(parser),
        json_path: Vec::new(),
    }
}

fn json_put(
    name: &'static str,
    value: impl ToString,
    kind: FieldType,
    path: &[&'static str],
) -> Put {
    Put {
        json_path: path.to_vec(),
        ..put(name, value, kind, "json")
    }
}

/// `n` lines of the stream `{app="shop"}` one millisecond apart, the last at `end`:
/// logfmt and JSON lines alternating in the same stream, a request id in structured
/// metadata on each, and a key only the four oldest lines have.
fn shop_lines(n: usize, end: i64) -> Vec<Gen> {
    use FieldType::*;
    (0..n)
        .map(|i| {
            let status = [200, 404, 500][i % 3];
            let mut fields = Vec::new();
            let body = if i % 2 == 0 {
                let took = format!("{}ms", 10 + i);
                let ratio = format!("{}.5", i % 4);
                fields.push(put("status", status, Int, "logfmt"));
                fields.push(put("took", &took, Duration, "logfmt"));
                fields.push(put("user", format!("u{}", i % 5), String, "logfmt"));
                fields.push(put("ratio", &ratio, Float, "logfmt"));
                // `app` is a stream label: the parser's name for the key is app_extracted.
                fields.push(put("app_extracted", "other", String, "logfmt"));
                let mut body = format!(
                    "status={status} took={took} user=u{} ratio={ratio} app=other",
                    i % 5
                );
                if i < 4 {
                    fields.push(put("old_only", "yes", String, "logfmt"));
                    body.push_str(" old_only=yes");
                }
                body
            } else {
                let cached = i % 4 == 1;
                fields.push(json_put("status", status, Int, &["status"]));
                fields.push(json_put("cached", cached, Boolean, &["cached"]));
                fields.push(json_put(
                    "req_path",
                    format!("/p{}", i % 6),
                    String,
                    &["req", "path"],
                ));
                fields.push(json_put(
                    "req_user_agent",
                    format!("ua {}", i % 3),
                    String,
                    &["req", "user-agent"],
                ));
                format!(
                    r#"{{"status":{status},"cached":{cached},"req":{{"path":"/p{}","user-agent":"ua {}"}}}}"#,
                    i % 6,
                    i % 3
                )
            };
            fields.push(Put {
                name: "request_id",
                value: format!("r{i}"),
                kind: String,
                parser: None,
                json_path: Vec::new(),
            });
            Gen {
                record: Record {
                    timestamp_ns: end - (n - 1 - i) as i64 * MS,
                    body: body.into_bytes(),
                    attributes: labels(&[("request_id", &format!("r{i}"))]),
                    ..with_app("shop")
                },
                fields,
            }
        })
        .collect()
}

fn with_app(app: &str) -> Record {
    Record {
        labels: labels(&[("app", app)]),
        ..record("")
    }
}

/// What detection must answer for `lines` (all of them sampled).
fn expected(lines: &[&Gen]) -> BTreeMap<String, DetectedField> {
    let mut values: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut fields: BTreeMap<String, DetectedField> = BTreeMap::new();
    for g in lines {
        for f in &g.fields {
            let seen = values.entry(f.name).or_default();
            seen.insert(&f.value);
            let field = fields
                .entry(f.name.to_owned())
                .or_insert_with(|| DetectedField {
                    label: f.name.to_owned(),
                    kind: f.kind,
                    cardinality: 0,
                    parsers: None,
                    json_path: Vec::new(),
                });
            field.cardinality = seen.len() as u64;
            if let Some(p) = f.parser {
                let parsers = field.parsers.get_or_insert_with(Vec::new);
                if !parsers.iter().any(|q| q == p) {
                    parsers.push(p.to_owned());
                    parsers.sort();
                }
            }
            if !f.json_path.is_empty() {
                field.json_path = f.json_path.iter().map(|p| p.to_string()).collect();
            }
        }
    }
    fields
}

/// The answer's fields by name, parsers sorted (their order is the order lines were read).
fn by_name(r: &DetectedFieldsResponse) -> BTreeMap<String, DetectedField> {
    r.fields
        .iter()
        .map(|f| {
            let mut f = f.clone();
            if let Some(p) = &mut f.parsers {
                p.sort();
            }
            (f.label.clone(), f)
        })
        .collect()
}

async fn get(
    n: &TestNode,
    path: &str,
    params: &[(&str, String)],
    tenant: Option<&str>,
) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .get(format!("{}{path}", n.http))
        .query(params);
    if let Some(t) = tenant {
        req = req.header("X-Scope-OrgID", t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// A detection endpoint's answer; panics unless it is 200 and parses.
async fn detect(
    n: &TestNode,
    path: &str,
    params: &[(&str, String)],
    tenant: Option<&str>,
) -> DetectedFieldsResponse {
    let (status, body) = get(n, path, params, tenant).await;
    assert_eq!(status, 200, "{path} {params:?}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn window(end: i64, query: &str) -> Vec<(&'static str, String)> {
    vec![
        ("query", query.to_owned()),
        ("start", (end - 600 * NS).to_string()),
        ("end", (end + NS).to_string()),
    ]
}

/// Appends `lines` to `tenant` and waits until its index has `total` records.
async fn store(node: &TestNode, tenant: &str, lines: &[Gen], total: u64) {
    node.append(AppendRequest {
        tenant: tenant.to_owned(),
        records: lines.iter().map(|g| g.record.clone()).collect(),
        ..Default::default()
    })
    .await
    .expect("append accepted");
    let (start, end) = (
        (now_ns() - 3600 * NS).to_string(),
        (now_ns() + 3600 * NS).to_string(),
    );
    let params = [("q", "*"), ("limit", "1"), ("start", &start), ("end", &end)];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = node.search_raw(&params, Some(tenant)).await;
        assert_eq!(status, 200, "{body}");
        if body["total"].as_u64() == Some(total) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the index never held {total} records: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logfmt_and_json_lines_give_typed_fields_with_their_parsers_and_paths() {
    let node = TestNode::start().await;
    let end = now_ns() - 5 * NS;
    let lines = shop_lines(40, end);
    store(&node, "default", &lines, 40).await;

    let all: Vec<&Gen> = lines.iter().collect();
    let params = window(end, r#"{app="shop"}"#);
    let got = detect(&node, "/loki/api/v1/detected_fields", &params, None).await;
    assert_eq!(by_name(&got), expected(&all));
    assert_eq!(got.limit, 1000, "the default field limit, echoed");
    assert!(got.values.is_empty());

    // Stream labels are not fields: none of the stream's label names is listed.
    let mut series = params.clone();
    series.push(("match[]", r#"{app="shop"}"#.to_owned()));
    let (status, body) = get(&node, "/loki/api/v1/series", &series, None).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let stream_labels: BTreeSet<String> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s.as_object().unwrap().keys().cloned())
        .collect();
    assert!(stream_labels.contains("app"), "{stream_labels:?}");
    for f in &got.fields {
        assert!(
            !stream_labels.contains(&f.label),
            "{} is a stream label",
            f.label
        );
    }

    // Loki's JSON: the object itself; parsers null for metadata, jsonPath only for JSON.
    let (_, raw) = get(&node, "/loki/api/v1/detected_fields", &params, None).await;
    let raw: Value = serde_json::from_str(&raw).unwrap();
    let keys: BTreeSet<&str> = raw
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys, BTreeSet::from(["fields", "limit"]));
    let field = |name: &str| {
        raw["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["label"] == name)
            .unwrap_or_else(|| panic!("no {name} in {raw}"))
            .clone()
    };
    assert_eq!(field("request_id")["parsers"], Value::Null);
    assert!(field("took").get("jsonPath").is_none());
    assert_eq!(
        field("req_user_agent")["jsonPath"],
        serde_json::json!(["req", "user-agent"])
    );
    assert_eq!(field("cached")["type"], "boolean");

    // The query's filters decide the sample: only the JSON lines hold "cached".
    let json_only: Vec<&Gen> = lines
        .iter()
        .filter(|g| String::from_utf8_lossy(&g.record.body).contains("cached"))
        .collect();
    let filtered = window(end, r#"{app="shop"} |= "cached""#);
    let got = detect(&node, "/loki/api/v1/detected_fields", &filtered, None).await;
    assert_eq!(by_name(&got), expected(&json_only));

    // A selector that matches nothing: Loki's empty answer, no limit.
    let none = window(end, r#"{app="nowhere"}"#);
    let (status, body) = get(&node, "/loki/api/v1/detected_fields", &none, None).await;
    assert_eq!((status, body.trim()), (200, "{}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_limit_bounds_the_sample_to_the_newest_lines() {
    let node = TestNode::start().await;
    let end = now_ns() - 5 * NS;
    let lines = shop_lines(40, end);
    store(&node, "default", &lines, 40).await;
    let newest = |k: usize| -> Vec<&Gen> { lines.iter().rev().take(k).collect() };

    for k in [1, 7, 36] {
        let mut params = window(end, r#"{app="shop"}"#);
        params.push(("line_limit", k.to_string()));
        let got = detect(&node, "/loki/api/v1/detected_fields", &params, None).await;
        assert_eq!(by_name(&got), expected(&newest(k)), "line_limit={k}");
        // The four oldest lines are the only ones with old_only.
        assert!(!by_name(&got).contains_key("old_only"), "line_limit={k}");
    }

    // `limit` bounds the fields (those of the newest lines first), and is echoed.
    let mut params = window(end, r#"{app="shop"}"#);
    params.push(("limit", "3".to_owned()));
    let got = detect(&node, "/loki/api/v1/detected_fields", &params, None).await;
    assert_eq!((got.fields.len(), got.limit), (3, 3));
    let known = expected(&newest(40));
    let in_newest: BTreeSet<&str> = newest(1)[0].fields.iter().map(|f| f.name).collect();
    for (name, field) in by_name(&got) {
        assert!(
            in_newest.contains(name.as_str()),
            "{name} is not in the newest line"
        );
        assert_eq!(field, known[&name], "a kept field still counts every line");
    }

    // Loki samples 100 lines when no line_limit is given.
    let many: Vec<Gen> = (0..130)
        .map(|i| Gen {
            record: Record {
                timestamp_ns: end - (129 - i) as i64 * MS,
                body: format!("seq={i}").into_bytes(),
                ..with_app("many")
            },
            fields: Vec::new(),
        })
        .collect();
    store(&node, "default", &many, 170).await;
    let params = window(end, r#"{app="many"}"#);
    let got = detect(&node, "/loki/api/v1/detected_fields", &params, None).await;
    assert_eq!(by_name(&got)["seq"].cardinality, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_values_are_the_distinct_values_of_the_sample() {
    let node = TestNode::start().await;
    let end = now_ns() - 5 * NS;
    let lines = shop_lines(40, end);
    store(&node, "default", &lines, 40).await;
    let values_in = |lines: &[&Gen], name: &str| -> Vec<String> {
        let set: BTreeSet<String> = lines
            .iter()
            .flat_map(|g| g.fields.iter())
            .filter(|f| f.name == name)
            .map(|f| f.value.clone())
            .collect();
        set.into_iter().collect()
    };
    let all: Vec<&Gen> = lines.iter().collect();

    // From logfmt and JSON lines, from nested JSON, from structured metadata.
    for name in ["status", "req_user_agent", "request_id", "took"] {
        let params = window(end, r#"{app="shop"}"#);
        let path = format!("/loki/api/v1/detected_field/{name}/values");
        let got = detect(&node, &path, &params, None).await;
        assert_eq!(got.values, values_in(&all, name), "{name}");
        assert_eq!(got.limit, 1000);
        assert!(got.fields.is_empty());
    }

    // The sample is the same as detected_fields': line_limit bounds it.
    let mut params = window(end, r#"{app="shop"}"#);
    params.push(("line_limit", "5".to_owned()));
    let got = detect(
        &node,
        "/loki/api/v1/detected_field/request_id/values",
        &params,
        None,
    )
    .await;
    let newest: Vec<&Gen> = lines.iter().rev().take(5).collect();
    assert_eq!(got.values, values_in(&newest, "request_id"));

    // `limit` keeps the first distinct values of the newest lines.
    let mut params = window(end, r#"{app="shop"}"#);
    params.push(("limit", "2".to_owned()));
    let got = detect(
        &node,
        "/loki/api/v1/detected_field/user/values",
        &params,
        None,
    )
    .await;
    let mut first = Vec::new();
    for g in lines.iter().rev() {
        for f in g.fields.iter().filter(|f| f.name == "user") {
            if first.len() < 2 && !first.contains(&f.value) {
                first.push(f.value.clone());
            }
        }
    }
    first.sort();
    assert_eq!((got.values, got.limit), (first, 2));

    // A field no line has: Loki's empty answer.
    let params = window(end, r#"{app="shop"}"#);
    let (status, body) = get(
        &node,
        "/loki/api/v1/detected_field/nothing/values",
        &params,
        None,
    )
    .await;
    assert_eq!((status, body.trim()), (200, "{}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_answer_400_in_lokis_plain_text() {
    let node = TestNode::start().await;
    let end = now_ns();
    let with = |q: &str, extra: &[(&'static str, &str)]| {
        let mut p = window(end, q);
        p.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        p
    };
    let cases = [
        (with(r#"{app="shop""#, &[]), "parse error"),
        (
            with(r#"sum(count_over_time({app="shop"}[1m]))"#, &[]),
            "log query",
        ),
        (
            with(r#"{app="shop"}"#, &[("line_limit", "0")]),
            "line_limit",
        ),
        (
            with(r#"{app="shop"}"#, &[("line_limit", "5001")]),
            "query.lines_max",
        ),
        (with(r#"{app="shop"}"#, &[("limit", "many")]), "limit"),
        (
            vec![("start", end.to_string())],
            "query parameter is required",
        ),
    ];
    for path in [
        "/loki/api/v1/detected_fields",
        "/loki/api/v1/detected_field/status/values",
    ] {
        for (params, says) in &cases {
            let (status, body) = get(&node, path, params, None).await;
            assert_eq!(status, 400, "{path} {params:?}: {body}");
            assert!(
                serde_json::from_str::<Value>(&body).is_err(),
                "Loki's errors are plain text: {body}"
            );
            assert!(body.contains(says), "{path} {params:?}: {body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_header_separates_tenants() {
    let node = TestNode::start().await;
    let end = now_ns() - 5 * NS;
    let shop = shop_lines(10, end);
    store(&node, "default", &shop, 10).await;
    let team: Vec<Gen> = (0..6)
        .map(|i| Gen {
            record: Record {
                timestamp_ns: end - i * MS,
                body: format!("secret_key=k{i}").into_bytes(),
                ..with_app("shop")
            },
            fields: vec![put(
                "secret_key",
                format!("k{i}"),
                FieldType::String,
                "logfmt",
            )],
        })
        .collect();
    store(&node, "team-a", &team, 6).await;

    let params = window(end, r#"{app="shop"}"#);
    let team_refs: Vec<&Gen> = team.iter().collect();
    let got = detect(
        &node,
        "/loki/api/v1/detected_fields",
        &params,
        Some("team-a"),
    )
    .await;
    assert_eq!(by_name(&got), expected(&team_refs));
    let shop_refs: Vec<&Gen> = shop.iter().collect();
    let got = detect(&node, "/loki/api/v1/detected_fields", &params, None).await;
    assert_eq!(by_name(&got), expected(&shop_refs));

    let got = detect(
        &node,
        "/loki/api/v1/detected_field/secret_key/values",
        &params,
        Some("team-a"),
    )
    .await;
    assert_eq!(got.values.len(), 6);
    let (status, body) = get(
        &node,
        "/loki/api/v1/detected_field/secret_key/values",
        &params,
        Some("other-team"),
    )
    .await;
    assert_eq!((status, body.trim()), (200, "{}"));
}
