//! What the HTTP front door tells a caller it refused or changed: tenants, limits, dates,
//! defaults, and the bodies of errors no handler wrote. Each test pins a friction a new
//! user hit: an answer that was silently empty, wrapped or bare.

mod common;

use common::*;

async fn get(url: &str, headers: &[(&str, &[u8])]) -> (u16, String) {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, reqwest::header::HeaderValue::from_bytes(v).unwrap());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// An invalid tenant used to answer 200 with no hits, and a non-UTF-8 header to read as
/// `default` (another tenant's data). Both are now 400 naming the rule; empty means
/// `default`, explicitly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tenant_header_is_refused_and_an_empty_one_is_the_default() {
    let n = TestNode::start().await;
    n.append_records(vec![record("default tenant line")]).await;
    n.wait_total(&[], 1).await;
    let search = format!("{}/api/v1/search", n.http);
    for (value, rule) in [
        (&b"../etc"[..], "allowed characters"),
        (&b"caf\xc3\xa9"[..], "not ASCII"),
        (&b"\xff\xfe"[..], "not ASCII"),
    ] {
        let (status, body) = get(&search, &[("x-weir-tenant", value)]).await;
        assert_eq!(status, 400, "{value:?}: {body}");
        assert!(
            body.contains(rule) && body.contains("x-weir-tenant"),
            "{value:?}: {body}"
        );
        let labels = format!("{}/api/v1/labels", n.http);
        let (status, _) = get(&labels, &[("x-weir-tenant", value)]).await;
        assert_eq!(status, 400, "labels with {value:?}");
    }
    let (status, body) = get(&search, &[("x-weir-tenant", b"")]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("default tenant line"), "{body}");
    // gRPC: the same rules for the tenant metadata.
    let mut client = n.client().await;
    let mut req = tonic::Request::new(weir_proto::v1::AppendRequest {
        records: vec![record("x")],
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-weir-tenant", "../etc".parse().unwrap());
    let e = client.append(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    n.stop().await;
}

/// `limit` was capped at 1000 without a word while the docs promised 10 000 a page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_limit_is_reported_and_matches_the_documented_page_size() {
    let n = TestNode::start().await;
    let body = n.search(&[("limit", "5000")]).await;
    assert_eq!(body["limit"], 5000, "{body}");
    assert!(body
        .get("notices")
        .is_none_or(|v| !v.to_string().contains("capped")));
    let body = n.search(&[("limit", "50000")]).await;
    assert_eq!(body["limit"], 10000, "{body}");
    let notices = body["notices"].to_string();
    assert!(
        notices.contains("capped to 10000") && notices.contains("search.limit_max"),
        "{notices}"
    );
    n.stop().await;
}

/// Dates outside 1677..2262 wrapped silently (`start=0001-…` found nothing over data that
/// is there; `end=2300-…` quoted a wrapped negative number). They are clamped, and said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dates_outside_the_nanosecond_range_are_clamped_not_wrapped() {
    let n = TestNode::start().await;
    n.append_records(vec![record("here all along")]).await;
    n.wait_total(&[], 1).await;
    let body = n
        .search(&[
            ("start", "0001-01-01T00:00:00Z"),
            ("end", "9999-12-31T00:00:00Z"),
        ])
        .await;
    assert_eq!(bodies(&body), vec!["here all along"], "{body}");
    let notices = body["notices"].to_string();
    assert!(notices.contains("clamped"), "{notices}");
    assert!(
        body["start"].as_str().unwrap().starts_with("1677-09-21"),
        "{body}"
    );
    let body = n.search(&[("end", "2300-01-01T00:00:00Z")]).await;
    assert_eq!(
        bodies(&body),
        Vec::<String>::new(),
        "only the hour before 2262 is searched"
    );
    assert!(
        body["end"].as_str().unwrap().starts_with("2262-04-11"),
        "{body}"
    );
    n.stop().await;
}

/// Searches default to the last hour, so older data looked missing. The answer says
/// which range it searched, and that the default applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_says_which_time_range_was_searched() {
    let n = TestNode::start().await;
    let mut old = record("two hours old");
    old.timestamp_ns = now_ns() - 2 * 3600 * 1_000_000_000;
    n.append_records(vec![old]).await;
    let body = n.search(&[]).await;
    let notices = body["notices"].to_string();
    assert!(notices.contains("no start given"), "{body}");
    let start = time::OffsetDateTime::parse(
        body["start"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let age = time::OffsetDateTime::now_utc() - start;
    assert!((3590..=3610).contains(&age.whole_seconds()), "{age}");
    let body = n.wait_total(&[("start", "0")], 1).await;
    assert_eq!(bodies(&body), vec!["two hours old"]);
    assert!(body.get("notices").is_none(), "{body}");
    n.stop().await;
}

/// 404, 405, 413, 414 and 431 used to come back with an empty body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_before_a_handler_has_a_body_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.limits.batch_bytes_max = 1 << 20;
    let n = TestNode::start_with(dir, cfg).await;
    let (status, body) = get(&format!("{}/no/such/path", n.http), &[]).await;
    assert_eq!(status, 404);
    assert!(body.contains("no route for GET /no/such/path"), "{body}");

    let resp = reqwest::Client::new()
        .delete(format!("{}/api/v1/search", n.http))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let body = resp.text().await.unwrap();
    assert!(body.contains("does not take DELETE"), "{body}");

    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/dlq/none/replay", n.http))
        .body(vec![b' '; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let body = resp.text().await.unwrap();
    assert!(body.contains("limits.batch_bytes_max"), "{body}");

    let long = "x".repeat(20 << 10);
    let (status, body) = get(&format!("{}/api/v1/search?q={long}", n.http), &[]).await;
    assert_eq!(status, 414);
    assert!(body.contains("http.request_uri_bytes_max"), "{body}");

    let big = vec![b'y'; 8 << 10];
    let many: Vec<(String, &[u8])> = (0..10).map(|i| (format!("x-big-{i}"), &big[..])).collect();
    let headers: Vec<(&str, &[u8])> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let (status, body) = get(&format!("{}/api/v1/search", n.http), &headers).await;
    assert_eq!(status, 431);
    assert!(body.contains("http.request_headers_bytes_max"), "{body}");
    // Over a hundred headers (hyper's default cap, which answered with no body).
    let names: Vec<String> = (0..150).map(|i| format!("x-h-{i}")).collect();
    let headers: Vec<(&str, &[u8])> = names.iter().map(|k| (k.as_str(), &b"1"[..])).collect();
    let (status, body) = get(&format!("{}/healthz", n.http), &headers).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    n.stop().await;
}

/// A connection past `http.connections_max` is told why, not left hanging or reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_cap_gets_503_naming_the_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.http.connections_max = 2;
    let n = TestNode::start_with(dir, cfg).await;
    let addr = n.http.trim_start_matches("http://").to_owned();
    // Two idle connections take both slots.
    let _a = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _b = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("http.connections_max"), "{answer}");
    drop((_a, _b));
    n.stop().await;
}
