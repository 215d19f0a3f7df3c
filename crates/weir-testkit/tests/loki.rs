//! The fake Loki over real HTTP: each test names the real behaviour it protects.

use std::time::Duration;

use prost::Message;
use reqwest::{Client, StatusCode};
use serde_json::json;
use weir_proto::logproto::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter};
use weir_testkit::loki::{FakeLoki, LokiOptions, OrderMode};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const TENANT: &str = "tenant-a";
const SECOND: i64 = 1_000_000_000;

use weir_proto::now_ns;

fn entry(ts_ns: i64, line: &str) -> EntryAdapter {
    EntryAdapter {
        timestamp: Some(prost_types::Timestamp {
            seconds: ts_ns.div_euclid(SECOND),
            nanos: ts_ns.rem_euclid(SECOND) as i32,
        }),
        line: line.to_string(),
        structured_metadata: Vec::new(),
    }
}

fn stream(labels: &str, entries: Vec<EntryAdapter>) -> StreamAdapter {
    StreamAdapter {
        labels: labels.to_string(),
        entries,
        hash: 0,
    }
}

fn snappy_proto(streams: Vec<StreamAdapter>) -> Result<Vec<u8>, snap::Error> {
    snap::raw::Encoder::new().compress_vec(&PushRequest { streams }.encode_to_vec())
}

async fn push_proto(
    client: &Client,
    loki: &FakeLoki,
    streams: Vec<StreamAdapter>,
) -> Result<(StatusCode, String), Box<dyn std::error::Error>> {
    let resp = client
        .post(format!("{}/loki/api/v1/push", loki.url()))
        .header("Content-Type", "application/x-protobuf")
        .header("X-Scope-OrgID", TENANT)
        .body(snappy_proto(streams)?)
        .send()
        .await?;
    Ok((resp.status(), resp.text().await?))
}

async fn push_json(
    client: &Client,
    loki: &FakeLoki,
    body: serde_json::Value,
) -> Result<(StatusCode, String), Box<dyn std::error::Error>> {
    let resp = client
        .post(format!("{}/loki/api/v1/push", loki.url()))
        .header("X-Scope-OrgID", TENANT)
        .json(&body)
        .send()
        .await?;
    Ok((resp.status(), resp.text().await?))
}

/// Go's `time.Time.String()` of a UTC time with whole seconds.
fn go_time(ts_ns: i64) -> String {
    // Only used with whole seconds in these tests; format via RFC3339 pieces.
    let secs = ts_ns.div_euclid(SECOND);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} +0000 UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn rfc3339(ts_ns: i64) -> String {
    let secs = ts_ns.div_euclid(SECOND);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[tokio::test]
async fn protobuf_snappy_push_is_stored_and_readable() -> TestResult {
    let loki = FakeLoki::start().await?;
    let t = now_ns();
    let mut with_metadata = entry(t + 1, "second");
    with_metadata.structured_metadata = vec![LabelPairAdapter {
        name: "trace_id".into(),
        value: "abc".into(),
    }];
    let (status, body) = push_proto(
        &Client::new(),
        &loki,
        vec![stream(
            r#"{job="weir", env="test"}"#,
            vec![entry(t, "first"), with_metadata],
        )],
    )
    .await?;
    assert_eq!(status, 204, "{body}");
    assert!(body.is_empty());
    let entries = loki.entries(TENANT);
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].line, "first");
    assert_eq!(entries[0].timestamp_ns, t);
    assert_eq!(entries[0].labels["job"], "weir");
    // Loki 3 adds service_name from the first of its discovery labels present (job here).
    assert_eq!(entries[0].labels["service_name"], "weir");
    assert_eq!(entries[1].structured_metadata["trace_id"], "abc");
    assert_eq!(loki.entry_count(), 2);
    assert_eq!(loki.push_requests(), 1);
    assert!(loki.entries("someone-else").is_empty());
    Ok(())
}

#[tokio::test]
async fn json_push_is_stored() -> TestResult {
    let loki = FakeLoki::start().await?;
    let t = now_ns();
    let (status, body) = push_json(
        &Client::new(),
        &loki,
        json!({"streams": [{
            "stream": {"app": "api"},
            "values": [[t.to_string(), "hello"], [(t + 1).to_string(), "with meta", {"user": "u1"}]]
        }]}),
    )
    .await?;
    assert_eq!(status, 204, "{body}");
    let entries = loki.entries(TENANT);
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1].structured_metadata["user"], "u1");
    assert_eq!(entries[0].labels["service_name"], "api");
    Ok(())
}

#[tokio::test]
async fn json_timestamps_must_be_strings_of_nanoseconds() -> TestResult {
    let loki = FakeLoki::start().await?;
    let client = Client::new();
    let (status, _) = push_json(
        &client,
        &loki,
        json!({"streams": [{"stream": {"app": "api"}, "values": [[now_ns(), "number"]]}]}),
    )
    .await?;
    assert_eq!(status, 400);
    let (status, body) = push_json(
        &client,
        &loki,
        json!({"streams": [{"stream": {"app": "api"}, "values": [["yesterday", "word"]]}]}),
    )
    .await?;
    assert_eq!(status, 400);
    assert!(
        body.contains("strconv.ParseInt: parsing \"yesterday\": invalid syntax"),
        "{body}"
    );
    assert_eq!(loki.entry_count(), 0);
    Ok(())
}

#[tokio::test]
async fn bad_snappy_is_a_400() -> TestResult {
    let loki = FakeLoki::start().await?;
    let resp = Client::new()
        .post(format!("{}/loki/api/v1/push", loki.url()))
        .header("Content-Type", "application/x-protobuf")
        .header("X-Scope-OrgID", TENANT)
        .body(
            PushRequest { streams: vec![] }
                .encode_to_vec()
                .into_iter()
                .chain([0xff, 0xff, 0xff])
                .collect::<Vec<u8>>(),
        )
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.text().await?, "snappy: corrupt input\n");
    Ok(())
}

#[tokio::test]
async fn missing_content_type_is_a_400_like_go_mime() -> TestResult {
    let loki = FakeLoki::start().await?;
    let resp = Client::new()
        .post(format!("{}/loki/api/v1/push", loki.url()))
        .header("X-Scope-OrgID", TENANT)
        .body(snappy_proto(vec![])?)
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.text().await?, "mime: no media type\n");
    Ok(())
}

#[tokio::test]
async fn missing_org_id_is_401() -> TestResult {
    let loki = FakeLoki::start().await?;
    let resp = Client::new()
        .post(format!("{}/loki/api/v1/push", loki.url()))
        .header("Content-Type", "application/x-protobuf")
        .body(snappy_proto(vec![stream(
            r#"{a="b"}"#,
            vec![entry(now_ns(), "x")],
        )])?)
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.text().await?, "no org id\n");
    assert_eq!(loki.entry_count(), 0);
    Ok(())
}

#[tokio::test]
async fn partial_400_stores_valid_entries_and_lists_the_ignored_ones() -> TestResult {
    let loki = FakeLoki::start_with(LokiOptions {
        max_line_size: 10,
        ..LokiOptions::default()
    })
    .await?;
    let client = Client::new();
    let t = (now_ns() / SECOND) * SECOND;
    let old = t - 8 * 24 * 3600 * SECOND;
    let (status, body) = push_proto(
        &client,
        &loki,
        vec![stream(
            r#"{job="weir"}"#,
            vec![
                entry(t, "ok 1"),
                entry(old, "too old"),
                entry(t + 1, "this line is far too long"),
                entry(t + 2, "ok 2"),
            ],
        )],
    )
    .await?;
    assert_eq!(status, 400);
    let labels = r#"{job="weir", service_name="weir"}"#;
    let lines: Vec<&str> = body.trim_end().split("; ").collect();
    assert_eq!(lines.len(), 2, "{body}");
    assert!(lines[0].starts_with(&format!(
        "1 errors like: entry for stream '{labels}' has timestamp too old: {}, oldest acceptable timestamp is: ",
        rfc3339(old)
    )), "{body}");
    assert_eq!(
        lines[1],
        format!("1 errors like: Max entry size '10' bytes exceeded for stream '{labels}' while adding an entry with length '25' bytes")
    );
    let stored: Vec<String> = loki.entries(TENANT).into_iter().map(|e| e.line).collect();
    assert_eq!(stored, vec!["ok 1", "ok 2"]);

    // Ordering errors come from the ingester: one line per ignored entry, then the total.
    let behind = t - 2 * 3600 * SECOND;
    let (status, body) = push_proto(
        &client,
        &loki,
        vec![stream(
            r#"{job="weir"}"#,
            vec![entry(behind, "behind"), entry(t + 3, "ok 3")],
        )],
    )
    .await?;
    assert_eq!(status, 400);
    let cutoff = t + 2 - 3600 * SECOND;
    assert_eq!(
        body,
        format!(
            "entry with timestamp {} ignored, reason: 'entry too far behind, entry timestamp is: {}, oldest acceptable timestamp is: {}',\nuser '{TENANT}', total ignored: 1 out of 2 for stream: {labels}\n",
            go_time(behind),
            rfc3339(behind),
            rfc3339(cutoff)
        )
    );
    assert_eq!(
        loki.entries(TENANT).last().map(|e| e.line.as_str()),
        Some("ok 3")
    );
    Ok(())
}

/// Pushes a batch twice, then another line at the same time, then a malformed stream;
/// the server must hold 2, 2, 3 and 3 entries.
async fn duplicates_collapse_and_other_lines_stay(loki: &FakeLoki) -> TestResult {
    let client = Client::new();
    let t = now_ns();
    let batch = || {
        vec![stream(
            r#"{job="weir"}"#,
            vec![entry(t, "a"), entry(t + 1, "b")],
        )]
    };
    assert_eq!(push_proto(&client, loki, batch()).await?.0, 204);
    // A replay of the same batch succeeds and stores nothing new.
    assert_eq!(push_proto(&client, loki, batch()).await?.0, 204);
    assert_eq!(loki.entry_count(), 2);
    let other = vec![stream(
        r#"{job="weir"}"#,
        vec![entry(t, "a, again but different")],
    )];
    assert_eq!(push_proto(&client, loki, other).await?.0, 204);
    assert_eq!(loki.entry_count(), 3);
    let bad = vec![stream(r#"{job="weir""#, vec![entry(t + 2, "c")])];
    assert_eq!(push_proto(&client, loki, bad).await?.0, 400);
    assert_eq!(loki.entry_count(), 3);
    Ok(())
}

#[tokio::test]
async fn exact_duplicate_is_collapsed_silently_and_same_timestamp_other_line_is_kept() -> TestResult
{
    let loki = FakeLoki::start().await?;
    duplicates_collapse_and_other_lines_stay(&loki).await?;
    assert_eq!(loki.entries(TENANT).len(), 3);
    Ok(())
}

#[tokio::test]
async fn ordered_mode_rejects_out_of_order_entries() -> TestResult {
    let loki = FakeLoki::start_with(LokiOptions {
        order: OrderMode::Ordered,
        ..LokiOptions::default()
    })
    .await?;
    let client = Client::new();
    let t = (now_ns() / SECOND) * SECOND;
    assert_eq!(
        push_proto(
            &client,
            &loki,
            vec![stream(r#"{job="weir"}"#, vec![entry(t, "new")])]
        )
        .await?
        .0,
        204
    );
    let (status, body) = push_proto(
        &client,
        &loki,
        vec![stream(
            r#"{job="weir"}"#,
            vec![entry(t - SECOND, "older"), entry(t, "same time")],
        )],
    )
    .await?;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        format!(
            "entry with timestamp {} ignored, reason: 'entry out of order',\nuser '{TENANT}', total ignored: 1 out of 2 for stream: {{job=\"weir\", service_name=\"weir\"}}\n",
            go_time(t - SECOND)
        )
    );
    let lines: Vec<String> = loki.entries(TENANT).into_iter().map(|e| e.line).collect();
    assert_eq!(lines, vec!["new", "same time"]);
    Ok(())
}

#[tokio::test]
async fn too_old_and_too_new_entries_are_rejected() -> TestResult {
    let loki = FakeLoki::start_with(LokiOptions {
        reject_old_samples_max_age: Some(Duration::from_secs(3600)),
        discover_service_name: Vec::new(),
        ..LokiOptions::default()
    })
    .await?;
    let t = now_ns();
    let old = t - 2 * 3600 * SECOND;
    let (status, body) = push_proto(
        &Client::new(),
        &loki,
        vec![stream(r#"{job="weir"}"#, vec![entry(old, "old")])],
    )
    .await?;
    assert_eq!(status, 400);
    assert!(
        body.starts_with(&format!(
            "entry for stream '{{job=\"weir\"}}' has timestamp too old: {}, oldest acceptable timestamp is: ",
            rfc3339(old)
        )),
        "{body}"
    );
    let future = t + 3600 * SECOND;
    let (status, body) = push_proto(
        &Client::new(),
        &loki,
        vec![stream(r#"{job="weir"}"#, vec![entry(future, "future")])],
    )
    .await?;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        format!(
            "entry for stream '{{job=\"weir\"}}' has timestamp too new: {}\n",
            rfc3339(future)
        )
    );
    assert_eq!(loki.entry_count(), 0);
    Ok(())
}

#[tokio::test]
async fn label_syntax_and_limit_errors_are_400() -> TestResult {
    let loki = FakeLoki::start_with(LokiOptions {
        discover_service_name: Vec::new(),
        ..LokiOptions::default()
    })
    .await?;
    let client = Client::new();
    let t = now_ns();
    let (status, body) = push_proto(
        &client,
        &loki,
        vec![
            stream(
                r#"{job="weir"}"#,
                vec![entry(t, "valid, but the request fails whole")],
            ),
            stream(r#"{foo=bar}"#, vec![entry(t, "x")]),
        ],
    )
    .await?;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        "couldn't parse labels: 1:6: parse error: unexpected identifier \"bar\" in label set, expected string\n"
    );
    assert_eq!(
        loki.entry_count(),
        0,
        "a syntax error fails the whole request"
    );

    let many: Vec<String> = (0..16).map(|i| format!("l{i:02}=\"v\"")).collect();
    let many = format!("{{{}}}", many.join(", "));
    let (status, body) = push_proto(
        &client,
        &loki,
        vec![
            stream(&many, vec![entry(t, "x")]),
            stream(r#"{}"#, vec![entry(t, "x")]),
            stream(r#"{a="1", a="2"}"#, vec![entry(t, "x")]),
            stream(r#"{job="weir"}"#, vec![entry(t, "stored")]),
        ],
    )
    .await?;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        format!(
            "1 errors like: entry for stream '{many}' has 16 label names; limit 15; 1 errors like: error at least one label pair is required per stream; 1 errors like: stream '{{a=\"1\", a=\"2\"}}' has duplicate label name: 'a'\n"
        )
    );
    let stored: Vec<String> = loki.entries(TENANT).into_iter().map(|e| e.line).collect();
    assert_eq!(stored, vec!["stored"]);
    Ok(())
}

#[tokio::test]
async fn only_the_last_streams_ingester_error_is_reported_like_loki() -> TestResult {
    let loki = FakeLoki::start_with(LokiOptions {
        order: OrderMode::Ordered,
        ..LokiOptions::default()
    })
    .await?;
    let client = Client::new();
    let t = now_ns();
    push_proto(
        &client,
        &loki,
        vec![stream(r#"{job="a"}"#, vec![entry(t, "a")])],
    )
    .await?;
    // Stream a has an out-of-order entry, stream b is fine: Loki answers 204.
    let (status, _) = push_proto(
        &client,
        &loki,
        vec![
            stream(r#"{job="a"}"#, vec![entry(t - SECOND, "dropped")]),
            stream(r#"{job="b"}"#, vec![entry(t, "b")]),
        ],
    )
    .await?;
    assert_eq!(status, 204);
    let lines: Vec<String> = loki.entries(TENANT).into_iter().map(|e| e.line).collect();
    assert_eq!(lines, vec!["a", "b"]);
    Ok(())
}

#[tokio::test]
async fn fail_requests_then_down_then_recovery() -> TestResult {
    let loki = FakeLoki::start().await?;
    let client = Client::new();
    let batch = || vec![stream(r#"{job="weir"}"#, vec![entry(now_ns(), "x")])];
    loki.fail_requests(1, 429, Some(3));
    let resp = client
        .post(format!("{}/loki/api/v1/push", loki.url()))
        .header("Content-Type", "application/x-protobuf")
        .header("X-Scope-OrgID", TENANT)
        .body(snappy_proto(batch())?)
        .send()
        .await?;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "3");
    assert!(resp
        .text()
        .await?
        .starts_with("Ingestion rate limit exceeded for user tenant-a"));
    assert_eq!(push_proto(&client, &loki, batch()).await?.0, 204);

    loki.set_down(true);
    assert!(push_proto(&client, &loki, batch()).await.is_err());
    loki.set_down(false);
    assert_eq!(push_proto(&client, &loki, batch()).await?.0, 204);
    assert_eq!(
        loki.push_requests(),
        3,
        "the reset request never reached the handler"
    );

    let ready = client.get(format!("{}/ready", loki.url())).send().await?;
    assert_eq!(ready.text().await?, "ready\n");
    let entries: serde_json::Value = client
        .get(format!("{}/_testkit/entries", loki.url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(entries[TENANT].as_array().map(Vec::len), Some(2));
    Ok(())
}

/// `keep_entries: false` is for long benchmarks: it must judge and count exactly as the
/// default does (duplicates collapsed, other lines at the same time kept, bad entries
/// refused), only without holding the entries.
#[tokio::test]
async fn count_only_mode_counts_and_collapses_duplicates_like_the_default() -> TestResult {
    let loki = FakeLoki::start_with(LokiOptions {
        keep_entries: false,
        ..LokiOptions::default()
    })
    .await?;
    duplicates_collapse_and_other_lines_stay(&loki).await?;
    assert!(loki.entries(TENANT).is_empty(), "nothing is kept");
    Ok(())
}
