//! The Loki query API against a real node on port 0: Loki's JSON shapes for Grafana and
//! logcli, logcli's paging, categorize-labels, the refusals, and a differential check
//! that every query answers exactly what the LogQL engine gives when it reads every
//! record (read back through the native search API, which shares nothing with the LogQL
//! reader: no index pre-filter, no windows).

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;
use weir_logql::{Direction, Entry, EntryIter, Hints, Matcher, QueryParams, Source};
use weir_proto::v1::Record;

const NS: i64 = 1_000_000_000;

/// Every record, in memory: the brute-force side of the differential check.
struct AllRecords(Vec<Entry>);

impl Source for AllRecords {
    fn select(
        &self,
        selector: &[Matcher],
        _hints: &Hints,
        start_ns: i64,
        end_ns: i64,
        direction: Direction,
    ) -> Result<EntryIter<'_>, weir_logql::EngineError> {
        let mut out: Vec<Entry> = self
            .0
            .iter()
            .filter(|e| e.ts_ns >= start_ns && e.ts_ns < end_ns)
            .filter(|e| selector.iter().all(|m| m.matches_labels(&e.stream)))
            .cloned()
            .collect();
        out.sort_by_key(|e| e.ts_ns);
        if direction == Direction::Backward {
            out.reverse();
        }
        Ok(Box::new(out.into_iter().map(Ok)))
    }
}

/// A small deterministic generator (no test depends on a random seed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// `n` records over the `span_secs` before `end`: three services, three levels, two apps,
/// bodies in plain text, JSON and logfmt; with `ties`, some share a timestamp.
fn records(n: usize, end: i64, span_secs: i64, ties: bool) -> Vec<Record> {
    let mut g = Lcg(7);
    let services = ["pay", "cart", "auth"];
    let levels = ["info", "warn", "error"];
    let apps = ["web", "worker"];
    let mut ts = end - span_secs * NS;
    let step = span_secs * NS / n as i64;
    (0..n)
        .map(|i| {
            if g.next(5) != 0 || !ties {
                ts += step;
            }
            let id = g.next(40);
            let body = match g.next(4) {
                0 => format!("order {id} declined by bank"),
                1 => format!("GET /cart/{id} 200 took_ms={}", g.next(900)),
                2 => format!(
                    r#"{{"status":{},"msg":"upstream timeout","duration":"{}ms"}}"#,
                    [200, 502, 503][g.next(3) as usize],
                    g.next(3000)
                ),
                _ => format!("level=warn user=u{id} latency={}ms", g.next(500)),
            };
            Record {
                timestamp_ns: ts,
                level: levels[g.next(3) as usize].into(),
                body: body.into_bytes(),
                service: services[g.next(3) as usize].into(),
                labels: if i % 10 == 0 {
                    // A label Grafana's name for the service stands for, differing from
                    // the service: LogQL sees the label, the pre-filter must too.
                    labels(&[
                        ("app", apps[g.next(2) as usize]),
                        ("env", "prod"),
                        ("service_name", "legacy"),
                    ])
                } else {
                    labels(&[("app", apps[g.next(2) as usize]), ("env", "prod")])
                },
                attributes: labels(&[("request_id", &format!("r{i}"))]),
                ..Default::default()
            }
        })
        .collect()
}

async fn get(n: &TestNode, path: &str, params: &[(&str, String)]) -> (u16, String) {
    get_with(n, path, params, &[]).await
}

async fn get_with(
    n: &TestNode,
    path: &str,
    params: &[(&str, String)],
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .get(format!("{}{path}", n.http))
        .query(params);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Starts a node, stores `records(n)`, waits until the index has them all, and reads them
/// back through the native search API as LogQL entries.
async fn node_with(n: usize, end: i64, span_secs: i64, ties: bool) -> (TestNode, AllRecords) {
    let node = TestNode::start().await;
    for chunk in records(n, end, span_secs, ties).chunks(100) {
        node.append_records(chunk.to_vec()).await;
    }
    let window = [
        ("q", "*"),
        ("start", &(end - 2 * span_secs * NS).to_string()),
        ("end", &(end + NS).to_string()),
        ("limit", "10000"),
    ];
    let window: Vec<(&str, &str)> = window.iter().map(|(k, v)| (*k, *v)).collect();
    let all = node.wait_total(&window, n as u64).await;
    let page: weir_proto::api::search::SearchResponse = serde_json::from_value(all).unwrap();
    assert_eq!(page.hits.len(), n, "the index has every record");
    let entries = page
        .hits
        .into_iter()
        .map(|h| {
            weir_server::logql::entry_of(weir_proto::v1::StoredRecord {
                timestamp_ns: h.timestamp_ns,
                level: h.level as u32,
                body: h.body,
                service: h.service,
                namespace: h.namespace,
                pod: h.pod,
                cluster: h.cluster,
                labels: h.labels.into_iter().collect(),
                attributes: h.attributes.into_iter().collect(),
                trace_id: h.trace_id,
                span_id: h.span_id,
            })
        })
        .collect();
    (node, AllRecords(entries))
}

/// The engine's answer over every record, in Loki's JSON (the `data.result` part).
fn brute(all: &AllRecords, q: &str, p: &QueryParams) -> Value {
    let expr = weir_logql::parse(q).unwrap();
    weir_logql::evaluate(&expr, p, all)
        .unwrap()
        .to_loki_json(false)["result"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_answers_what_reading_every_line_gives() {
    let end = now_ns() - 5 * NS;
    // Distinct timestamps: which of several lines of one nanosecond a limit cuts off is
    // not defined (in Loki either); the paging test below has ties.
    let (node, all) = node_with(600, end, 600, false).await;
    let (start, stop) = (end - 700 * NS, end + NS);
    let log_queries = [
        r#"{service="pay"}"#,
        r#"{service_name=~"pa.*|cart", level!="info"}"#,
        r#"{service_name="legacy"}"#,
        r#"{service_name="pay", detected_level="warn"}"#,
        r#"{app="web"} |= "declined""#,
        r#"{app="web"} |= "order 1" != "declined""#,
        r#"{env="prod"} |= " order 2 " or "/cart/3 ""#,
        r#"{env="prod"} |~ "time?out" |= "upstream""#,
        r#"{env="prod"} | json | status >= 500"#,
        r#"{env="prod"} | logfmt | latency > 100ms"#,
        r#"{env="prod"} |= "upstream timeout" | json | line_format "{{.msg}} {{.status}}""#,
        r#"{detected_level="error", app="worker"}"#,
        r#"{app="worker"} | pattern "<method> <path> <code> <_>" | code="200""#,
        r#"{env="prod"} != "a" |= "u1""#,
    ];
    let metric_queries = [
        r#"count_over_time({env="prod"} | drop request_id [1m])"#,
        r#"sum by (level) (count_over_time({env="prod"}[1m]))"#,
        r#"sum by (level, detected_level) (count_over_time({env="prod"} | drop __error__ [5m]))"#,
        r#"topk(2, sum by (service) (rate({env="prod"}[5m])))"#,
        r#"sum(count_over_time({env="prod"} |= "declined" [5m]))"#,
        r#"sum by (service) (bytes_over_time({app="web"}[2m]))"#,
        r#"avg_over_time({env="prod"} |= "took_ms" | logfmt | unwrap took_ms [5m])"#,
        r#"sum(count_over_time({env="prod"}[1m])) / 2"#,
        r#"sum by (service) (count_over_time({service="pay"} |= " declined " [1m])) > 1"#,
    ];
    for q in log_queries {
        for (direction, dir) in [
            ("backward", Direction::Backward),
            ("forward", Direction::Forward),
        ] {
            for limit in [25usize, 5000] {
                let params = [
                    ("query", q.to_owned()),
                    ("start", start.to_string()),
                    ("end", stop.to_string()),
                    ("limit", limit.to_string()),
                    ("direction", direction.to_owned()),
                ];
                let (status, body) = get(&node, "/loki/api/v1/query_range", &params).await;
                assert_eq!(status, 200, "{q}: {body}");
                let got = json(&body);
                assert_eq!(got["status"], "success");
                assert_eq!(got["data"]["resultType"], "streams", "{q}");
                let want = brute(
                    &all,
                    q,
                    &QueryParams {
                        start_ns: start,
                        end_ns: stop,
                        limit,
                        direction: dir,
                        ..QueryParams::default()
                    },
                );
                assert_eq!(got["data"]["result"], want, "{q} {direction} limit {limit}");
            }
        }
    }
    for q in metric_queries {
        let step = 30 * NS;
        let params = [
            ("query", q.to_owned()),
            ("start", start.to_string()),
            ("end", stop.to_string()),
            ("step", "30s".to_owned()),
        ];
        let (status, body) = get(&node, "/loki/api/v1/query_range", &params).await;
        assert_eq!(status, 200, "{q}: {body}");
        let got = json(&body);
        assert_eq!(got["data"]["resultType"], "matrix", "{q}");
        let want = brute(
            &all,
            q,
            &QueryParams {
                start_ns: start,
                end_ns: stop,
                step_ns: step,
                ..QueryParams::default()
            },
        );
        assert!(
            want.as_array().is_some_and(|a| !a.is_empty()),
            "{q} finds something"
        );
        assert_eq!(got["data"]["result"], want, "{q}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_and_logcli_get_lokis_shapes() {
    let end = now_ns() - 5 * NS;
    let (node, all) = node_with(300, end, 300, true).await;
    let range = [
        ("start", (end - 400 * NS).to_string()),
        ("end", (end + NS).to_string()),
    ];

    // Grafana's data-source health check.
    let (status, body) = get(
        &node,
        "/loki/api/v1/query",
        &[("query", "vector(1)+vector(1)".to_owned())],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["data"]["resultType"], "vector");
    assert_eq!(v["data"]["result"][0]["value"][1], "2");
    assert!(v["data"]["stats"]["summary"].is_object());

    // Grafana's log-volume query, an instant variant.
    let q =
        r#"sum by (level, detected_level) (count_over_time({env="prod"} | drop __error__ [10m]))"#;
    let (status, body) = get(
        &node,
        "/loki/api/v1/query",
        &[("query", q.to_owned()), ("time", (end + NS).to_string())],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    let total: f64 = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, 300.0, "every record counted once: {body}");

    // Labels and values, with Grafana's names.
    let (_, body) = get(&node, "/loki/api/v1/labels", &range).await;
    let names = json(&body)["data"].clone();
    for want in [
        "app",
        "env",
        "level",
        "detected_level",
        "service",
        "service_name",
    ] {
        assert!(
            names.as_array().unwrap().iter().any(|n| n == want),
            "{want} in {names}"
        );
    }
    let (_, body) = get(&node, "/loki/api/v1/label/service_name/values", &range).await;
    assert_eq!(
        json(&body)["data"],
        serde_json::json!(["auth", "cart", "legacy", "pay"]),
        "the service field's values and those of a service_name label"
    );
    let mut with_query = range.to_vec();
    with_query.push(("query", r#"{service="pay"}"#.to_owned()));
    let (_, body) = get(&node, "/loki/api/v1/label/service/values", &with_query).await;
    assert_eq!(json(&body)["data"], serde_json::json!(["pay"]));

    // Series.
    let mut series = range.to_vec();
    series.push(("match[]", r#"{app="web", service="pay"}"#.to_owned()));
    let (status, body) = get(&node, "/loki/api/v1/series", &series).await;
    assert_eq!(status, 200, "{body}");
    let sets = json(&body)["data"].clone();
    let levels: BTreeSet<&str> = sets
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(
                (s["app"].as_str(), s["service"].as_str()),
                (Some("web"), Some("pay"))
            );
            s["level"].as_str().unwrap()
        })
        .collect();
    assert_eq!(levels, BTreeSet::from(["error", "info", "warn"]));

    // categorize-labels: structured metadata apart, three-element values.
    let mut q = range.to_vec();
    q.push(("query", r#"{service="pay"} | logfmt"#.to_owned()));
    q.push(("limit", "1000".to_owned()));
    let (_, body) = get_with(
        &node,
        "/loki/api/v1/query_range",
        &q,
        &[("X-Loki-Response-Encoding-Flags", "categorize-labels")],
    )
    .await;
    let v = json(&body);
    assert_eq!(
        v["data"]["encodingFlags"],
        serde_json::json!(["categorize-labels"])
    );
    let streams = v["data"]["result"].as_array().unwrap();
    assert!(!streams.is_empty());
    let mut saw_parsed = false;
    for s in streams {
        assert!(
            s["stream"].get("request_id").is_none(),
            "metadata is not a stream label"
        );
        for value in s["values"].as_array().unwrap() {
            assert_eq!(value.as_array().unwrap().len(), 3, "{value}");
            assert!(value[2]["structuredMetadata"]["request_id"].is_string());
            saw_parsed |= value[2]["parsed"]["user"].is_string();
        }
    }
    assert!(saw_parsed, "logfmt's labels are under parsed");

    // logcli's paging: backward, `end` moved to the last timestamp + 1 ns, the entries at
    // that timestamp seen again and dropped; every line comes once.
    let selector = r#"{env="prod"}"#;
    let mut seen: Vec<(i64, String)> = Vec::new();
    let mut page_end = end + NS;
    let mut last_batch: Vec<(i64, String)> = Vec::new();
    for _ in 0..200 {
        let params = [
            ("query", selector.to_owned()),
            ("start", (end - 400 * NS).to_string()),
            ("end", page_end.to_string()),
            ("limit", "17".to_owned()),
            ("direction", "BACKWARD".to_owned()),
        ];
        let (status, body) = get(&node, "/loki/api/v1/query_range", &params).await;
        assert_eq!(status, 200, "{body}");
        let mut batch: Vec<(i64, String)> = json(&body)["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| {
                s["values"].as_array().unwrap().iter().map(|v| {
                    (
                        v[0].as_str().unwrap().parse::<i64>().unwrap(),
                        v[1].as_str().unwrap().to_owned(),
                    )
                })
            })
            .collect();
        batch.sort_by(|a, b| b.cmp(a));
        let fresh: Vec<_> = batch
            .iter()
            .filter(|e| !last_batch.contains(e))
            .cloned()
            .collect();
        if fresh.is_empty() {
            break;
        }
        seen.extend(fresh);
        page_end = batch.last().unwrap().0 + 1;
        last_batch = batch;
    }
    let mut want: Vec<(i64, String)> = all.0.iter().map(|e| (e.ts_ns, e.line.clone())).collect();
    want.sort();
    seen.sort();
    assert_eq!(seen.len(), want.len(), "every line once");
    assert_eq!(seen, want);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_get_lokis_errors_naming_what_was_wrong() {
    let node = TestNode::start().await;
    // (path, parameters, status, text the answer must contain)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, u16, &'a str);
    let cases: [Case; 6] = [
        (
            "/loki/api/v1/query_range",
            vec![("query", r#"{app="x""#.to_owned())],
            400,
            "parse error at position 8",
        ),
        (
            "/loki/api/v1/query_range",
            vec![
                ("query", r#"{app="x"}"#.to_owned()),
                ("limit", "100000".to_owned()),
            ],
            400,
            "query.lines_max",
        ),
        (
            "/loki/api/v1/query",
            vec![("query", r#"{app="x"}"#.to_owned())],
            400,
            "log queries are not supported as an instant query type",
        ),
        (
            "/loki/api/v1/query_range",
            vec![
                ("query", r#"rate({app="x"}[1m])"#.to_owned()),
                ("start", "0".to_owned()),
                ("end", "86400".to_owned()),
                ("step", "1s".to_owned()),
            ],
            400,
            "query.points_per_series_max",
        ),
        (
            "/loki/api/v1/query_range",
            vec![
                ("query", r#"{app="x"}"#.to_owned()),
                ("start", "soon".to_owned()),
            ],
            400,
            "invalid start",
        ),
        (
            "/loki/api/v1/series",
            vec![],
            400,
            "match[] parameter is required",
        ),
    ];
    for (path, params, status, needle) in cases {
        let (got, body) = get(&node, path, &params).await;
        assert_eq!(got, status, "{path} {params:?}: {body}");
        assert!(body.contains(needle), "{path} {params:?}: {body}");
    }
    // The node still answers.
    let (status, _) = get(&node, "/loki/api/v1/labels", &[]).await;
    assert_eq!(status, 200);
    node.stop().await;
}

/// A LogQL string literal for `s`.
fn lit(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `s` as a regex that matches itself.
fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let meta = "\\.+*?()|[]{}^$#&-~".contains(c);
            meta.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// One generated query: a selector of one or two matchers, up to two line filters whose
/// needles are random pieces of stored lines (cut anywhere, so that they begin and end
/// inside words as often as not: the pre-filter's hard case), sometimes an `or`, a parser,
/// and sometimes a metric aggregation around it.
fn generated_query(g: &mut Lcg, lines: &[String]) -> (String, bool) {
    let matchers = [
        r#"service="pay""#,
        r#"service_name="legacy""#,
        r#"service_name="cart""#,
        r#"app="web""#,
        r#"env="prod""#,
        r#"level="warn""#,
        r#"detected_level="error""#,
        r#"service=~"pa.*|auth""#,
    ];
    let mut selector = vec![matchers[g.next(matchers.len() as u64) as usize]];
    if g.next(2) == 0 {
        selector.push(r#"app!="worker""#);
    }
    let mut q = format!("{{{}}}", selector.join(", "));
    for _ in 0..g.next(3) {
        let line = &lines[g.next(lines.len() as u64) as usize];
        let chars: Vec<char> = line.chars().collect();
        let len = 2 + g.next(10) as usize;
        let at = g.next(chars.len().saturating_sub(len).max(1) as u64) as usize;
        let piece: String = chars[at..(at + len).min(chars.len())].iter().collect();
        let other = &lines[g.next(lines.len() as u64) as usize];
        let other: String = other.chars().skip(3).take(6).collect();
        q.push_str(&match g.next(5) {
            0 => format!(" != {}", lit(&piece)),
            1 => format!(" |~ {}", lit(&regex_escape(&piece))),
            2 => format!(" |= {} or {}", lit(&piece), lit(&other)),
            _ => format!(" |= {}", lit(&piece)),
        });
    }
    if g.next(4) == 0 {
        q.push_str(" | logfmt");
    }
    match g.next(4) {
        0 => (format!("sum by (level) (count_over_time({q} [1m]))"), true),
        1 => (format!("sum(bytes_over_time({q} [5m]))"), true),
        _ => (q, false),
    }
}

/// Generated queries (see [`generated_query`]) answer over HTTP, with the index
/// pre-filter and the windowed reader, exactly what the engine gives reading every
/// record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_queries_answer_what_reading_every_line_gives() {
    let end = now_ns() - 5 * NS;
    let (node, all) = node_with(400, end, 400, false).await;
    let (start, stop) = (end - 500 * NS, end + NS);
    let lines: Vec<String> = all.0.iter().map(|e| e.line.clone()).collect();
    let mut g = Lcg(2026);
    let mut matched = 0;
    for _ in 0..60 {
        let (q, metric) = generated_query(&mut g, &lines);
        let mut params = vec![
            ("query", q.clone()),
            ("start", start.to_string()),
            ("end", stop.to_string()),
        ];
        let engine_params = if metric {
            params.push(("step", "30s".to_owned()));
            QueryParams {
                start_ns: start,
                end_ns: stop,
                step_ns: 30 * NS,
                ..QueryParams::default()
            }
        } else {
            params.push(("limit", "1000".to_owned()));
            QueryParams {
                start_ns: start,
                end_ns: stop,
                limit: 1000,
                direction: Direction::Backward,
                ..QueryParams::default()
            }
        };
        let (status, body) = get(&node, "/loki/api/v1/query_range", &params).await;
        assert_eq!(status, 200, "{q}: {body}");
        let want = brute(&all, &q, &engine_params);
        matched += usize::from(want.as_array().is_some_and(|a| !a.is_empty()));
        assert_eq!(json(&body)["data"]["result"], want, "{q}");
    }
    assert!(
        matched >= 20,
        "only {matched} of 60 generated queries match anything"
    );
    node.stop().await;
}

/// `index/volume` and `volume_range` (Grafana's Logs Drilldown): the bytes of the lines
/// per label set of the selector's labels (or `targetLabels`), largest first, or per
/// label name with `aggregateBy=labels`; the same bytes as the records sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_the_bytes_of_the_lines_per_label_set() {
    let end = now_ns() - 5 * NS;
    let (node, all) = node_with(300, end, 300, false).await;
    let (start, stop) = (end - 400 * NS, end + NS);
    let bytes_where = |f: &dyn Fn(&weir_logql::Entry) -> bool| -> u64 {
        all.0
            .iter()
            .filter(|e| f(e))
            .map(|e| e.line.len() as u64)
            .sum()
    };
    let range = [("start", start.to_string()), ("end", stop.to_string())];
    let ask = |extra: Vec<(&'static str, String)>, path: &'static str| {
        let mut params = range.to_vec();
        params.extend(extra);
        let node = &node;
        async move {
            let (status, body) = get(node, path, &params).await;
            assert_eq!(status, 200, "{body}");
            json(&body)["data"].clone()
        }
    };
    let v = ask(
        vec![("query", r#"{service="pay"}"#.to_owned())],
        "/loki/api/v1/index/volume",
    )
    .await;
    assert_eq!(v["resultType"], "vector");
    assert_eq!(
        v["result"][0]["metric"],
        serde_json::json!({"service": "pay"})
    );
    let pay = bytes_where(&|e| e.stream.get("service").is_some_and(|s| s == "pay"));
    assert_eq!(v["result"][0]["value"][1], pay.to_string());

    let v = ask(
        vec![
            ("query", r#"{env="prod"}"#.to_owned()),
            ("targetLabels", "app".to_owned()),
        ],
        "/loki/api/v1/index/volume",
    )
    .await;
    let got: Vec<(String, String)> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["metric"]["app"].as_str().unwrap().to_owned(),
                s["value"][1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut want: Vec<(String, String)> = ["web", "worker"]
        .iter()
        .map(|a| {
            let b = bytes_where(&|e| e.stream.get("app").is_some_and(|s| s == a));
            ((*a).to_owned(), b.to_string())
        })
        .collect();
    want.sort_by(|a, b| {
        b.1.parse::<u64>()
            .unwrap()
            .cmp(&a.1.parse::<u64>().unwrap())
    });
    assert_eq!(got, want, "largest first");

    let v = ask(
        vec![
            ("query", r#"{env="prod"}"#.to_owned()),
            ("aggregateBy", "labels".to_owned()),
        ],
        "/loki/api/v1/index/volume",
    )
    .await;
    assert_eq!(v["result"][0]["metric"], serde_json::json!({"env": ""}));
    assert_eq!(
        v["result"][0]["value"][1],
        bytes_where(&|_| true).to_string()
    );

    let v = ask(
        vec![
            ("query", r#"{service="pay"}"#.to_owned()),
            ("step", "60s".to_owned()),
        ],
        "/loki/api/v1/index/volume_range",
    )
    .await;
    assert_eq!(v["resultType"], "matrix");
    let points = v["result"][0]["values"].as_array().unwrap();
    assert!(points.len() > 4, "{v}");
    node.stop().await;
}
