//! Per-tenant limits and ingest rules against a real node: a tenant over its rate is
//! refused (429 with Retry-After, gRPC RESOURCE_EXHAUSTED) with nothing stored while
//! another tenant is unaffected; a tenant's query range limit holds on the native and Loki
//! APIs; sampling and filter rules set over the admin API keep the expected share,
//! decide the same way for the same records, are counted, and a dry run predicts them.

mod common;

use std::time::Duration;

use common::*;
use weir_proto::api::rules::{Action, DryRunResponse, RuleSpec, RulesResponse};
use weir_proto::v1::AppendRequest;
use weir_server::tenants::{TenantLimits, TenantOverride};

/// A Loki push of `n` lines (`prefix-i`) for `tenant`, its status, `Retry-After` and body.
async fn loki_push(
    n: &TestNode,
    tenant: &str,
    prefix: &str,
    lines: usize,
) -> (u16, Option<String>, String) {
    let now = now_ns();
    let values: Vec<_> = (0..lines)
        .map(|i| serde_json::json!([(now + i as i64).to_string(), format!("{prefix}-{i}")]))
        .collect();
    let body = serde_json::json!({"streams":[{"stream":{"service":"api"},"values":values}]});
    let resp = reqwest::Client::new()
        .post(format!("{}/loki/api/v1/push", n.http))
        .header("x-scope-orgid", tenant)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, resp.text().await.unwrap())
}

/// Appends `records` for `tenant` over gRPC; panics unless the node answers.
async fn append_as(
    n: &TestNode,
    tenant: &str,
    records: Vec<weir_proto::v1::Record>,
) -> weir_proto::v1::AppendResponse {
    n.append(AppendRequest {
        tenant: tenant.into(),
        records,
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn total(n: &TestNode, tenant: &str, q: &str) -> u64 {
    let (status, body) = n
        .search_raw(&[("q", q), ("start", "0"), ("limit", "1")], Some(tenant))
        .await;
    assert_eq!(status, 200, "{body}");
    body["total"].as_u64().unwrap()
}

async fn wait_total(n: &TestNode, tenant: &str, q: &str, want: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let t = total(n, tenant, q).await;
        if t == want || std::time::Instant::now() > deadline {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(n: &TestNode, series: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", n.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_ingest_rate_is_refused_whole_while_another_tenant_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.tenants = vec![TenantOverride {
        name: "noisy".into(),
        ingest_lines_per_sec: Some(100),
        ..Default::default()
    }];
    let n = TestNode::start_with(dir, cfg).await;

    // The burst (one second of the rate) takes 100 lines; the next batch waits.
    let (status, _, body) = loki_push(&n, "noisy", "first", 100).await;
    assert_eq!(status, 204, "{body}");
    let (status, retry, body) = loki_push(&n, "noisy", "over", 60).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body.contains("noisy") && body.contains("[[tenants]] ingest_lines_per_sec"),
        "the refusal names the tenant and the limit: {body}"
    );
    assert_eq!(
        retry.as_deref(),
        Some("1"),
        "60 lines at 100/s: retry after 1 s"
    );
    // gRPC says RESOURCE_EXHAUSTED.
    let status = n
        .append(AppendRequest {
            tenant: "noisy".into(),
            records: (0..60).map(|i| record(&format!("grpc-{i}"))).collect(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("ingest_lines_per_sec"),
        "{status:?}"
    );
    // More than the burst at once: no wait admits it, so it is not retryable.
    let (status, _, body) = loki_push(&n, "noisy", "huge", 101).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("ingest_lines_burst"), "{body}");

    // Another tenant is not limited.
    for round in 0..5 {
        let (status, _, body) = loki_push(&n, "calm", &format!("calm{round}"), 1000).await;
        assert_eq!(status, 204, "{body}");
    }
    assert_eq!(wait_total(&n, "calm", "", 5000).await, 5000);
    // Nothing of a refused batch was stored.
    assert_eq!(wait_total(&n, "noisy", "", 100).await, 100);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(total(&n, "noisy", "over").await, 0);
    assert_eq!(total(&n, "noisy", "grpc").await, 0);
    assert_eq!(
        metric(
            &n,
            "weir_tenant_limited_total{tenant=\"noisy\",limit=\"ingest_lines_per_sec\"}"
        )
        .await,
        2
    );
    // After the wait the tenant is admitted again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, body) = loki_push(&n, "noisy", "later", 60).await;
    assert_eq!(status, 204, "{body}");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_query_range_limit_holds_on_the_native_and_loki_apis() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.tenant_limits = TenantLimits {
        query_range_hours_max: 2,
        ..Default::default()
    };
    cfg.tenants = vec![TenantOverride {
        name: "wide".into(),
        query_range_hours_max: Some(0),
        ..Default::default()
    }];
    let n = TestNode::start_with(dir, cfg).await;
    let now = now_ns();
    let three_hours = (now - 3 * 3_600_000_000_000).to_string();
    let one_hour = (now - 3_600_000_000_000).to_string();
    let (status, body) = n
        .search_raw(&[("start", &three_hours)], Some("narrow"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("tenant_limits.query_range_hours_max"),
        "{body}"
    );
    let (status, body) = n.search_raw(&[("start", &one_hour)], Some("narrow")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = n.search_raw(&[("start", &three_hours)], Some("wide")).await;
    assert_eq!(status, 200, "{body}");
    let loki = |tenant: &'static str| {
        reqwest::Client::new()
            .get(format!("{}/loki/api/v1/query_range", n.http))
            .header("x-scope-orgid", tenant)
            .query(&[
                ("query", "{service=\"api\"}"),
                ("start", three_hours.as_str()),
            ])
            .send()
    };
    let resp = loki("narrow").await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("query_range_hours_max"));
    assert_eq!(loki("wide").await.unwrap().status(), 200);
    n.stop().await;
}

async fn put_rule(n: &TestNode, tenant: &str, id: &str, spec: &RuleSpec) {
    let resp = reqwest::Client::new()
        .put(format!("{}/api/v1/rules/{tenant}/{id}", n.http))
        .json(spec)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

fn sample(order: u32, rate: f64, levels: &[&str], services: &[&str]) -> RuleSpec {
    RuleSpec {
        order,
        action: Some(if rate == 0.0 {
            Action::Drop
        } else {
            Action::Sample
        }),
        rate: (rate > 0.0).then_some(rate),
        levels: levels.iter().map(|s| s.to_string()).collect(),
        services: services.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// The same generated records (fixed times) for any tenant.
fn generated(service: &str, level: &str, n: usize, t0: i64) -> Vec<weir_proto::v1::Record> {
    (0..n)
        .map(|i| weir_proto::v1::Record {
            body: format!("{service} {level} request {i} served").into_bytes(),
            timestamp_ns: t0 + i as i64 * 1000,
            level: level.into(),
            service: service.into(),
            ..Default::default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_rules_keep_their_share_decide_alike_for_the_same_records_and_are_counted() {
    let n = TestNode::start().await;
    let t0 = now_ns() - 60_000_000_000;
    let info = generated("payment-api", "info", 10_000, t0);
    let errors = generated("payment-api", "error", 200, t0);
    let debug = generated("checkout", "debug", 500, t0);
    // Before any rule: the dry run of "drop debug" over what tenant "pre" stored.
    let pre = append_as(&n, "pre", debug.clone()).await;
    assert_eq!(pre.accepted, 500);
    assert_eq!(wait_total(&n, "pre", "", 500).await, 500);
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/rules/pre/no-debug/dry-run", n.http))
        .json(&sample(50, 0.0, &["debug"], &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let dry: DryRunResponse = resp.json().await.unwrap();
    assert_eq!((dry.records, dry.matched, dry.would_drop), (500, 500, 500));

    // The tiered pipeline, for two tenants that receive the same records.
    for tenant in ["a", "b"] {
        put_rule(
            &n,
            tenant,
            "errors",
            &RuleSpec {
                order: 10,
                action: Some(Action::Keep),
                levels: vec!["error".into(), "fatal".into()],
                ..Default::default()
            },
        )
        .await;
        put_rule(
            &n,
            tenant,
            "info-payment",
            &sample(30, 0.1, &["info"], &["payment-api"]),
        )
        .await;
        put_rule(&n, tenant, "no-debug", &sample(50, 0.0, &["debug"], &[])).await;
    }
    let listed: RulesResponse = reqwest::get(format!("{}/api/v1/rules?tenant=a", n.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<_> = listed.rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        ["errors", "info-payment", "no-debug"],
        "in the order they are tried"
    );

    let mut stored = Vec::new();
    for tenant in ["a", "b"] {
        let mut records = info.clone();
        records.extend(errors.clone());
        records.extend(debug.clone());
        let r = append_as(&n, tenant, records).await;
        assert_eq!(r.accepted + r.dropped, 10_700, "{r:?}");
        stored.push(r.accepted);
    }
    assert_eq!(
        stored[0], stored[1],
        "the same records are decided the same way"
    );
    let kept_info = stored[0] - 200;
    // Binomial(10,000, 0.1): 5 standard deviations (30) either side.
    assert!(
        (850..=1150).contains(&kept_info),
        "kept {kept_info} of 10,000 info lines at 10%"
    );
    for tenant in ["a", "b"] {
        assert_eq!(wait_total(&n, tenant, "", stored[0]).await, stored[0]);
        assert_eq!(
            total(&n, tenant, "error").await,
            200,
            "errors are always kept"
        );
        assert_eq!(total(&n, tenant, "debug").await, 0, "debug is dropped");
    }
    // Which records: the same ones for both tenants.
    let page = |tenant: &'static str| {
        let n = &n;
        async move {
            let (_, body) = n
                .search_raw(
                    &[("q", "info"), ("start", "0"), ("limit", "2000")],
                    Some(tenant),
                )
                .await;
            let mut b = bodies(&body);
            b.sort();
            b
        }
    };
    assert_eq!(page("a").await, page("b").await);
    // A retry of the same records (a new request) keeps the same ones again.
    let r = append_as(&n, "a", info.clone()).await;
    assert_eq!(r.accepted, kept_info);
    assert_eq!(
        metric(
            &n,
            "weir_ingest_sampled_out_total{tenant=\"a\",rule=\"info-payment\"}"
        )
        .await,
        2 * (10_000 - kept_info)
    );
    assert_eq!(
        metric(
            &n,
            "weir_ingest_filtered_total{tenant=\"b\",rule=\"no-debug\"}"
        )
        .await,
        500
    );
    // Deleted: the next records are all stored.
    let resp = reqwest::Client::new()
        .delete(format!("{}/api/v1/rules/a/info-payment", n.http))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = append_as(&n, "a", generated("payment-api", "info", 100, t0 + 1)).await;
    assert_eq!((r.accepted, r.dropped), (100, 0));
    // A bad rule is refused naming what is wrong.
    let resp = reqwest::Client::new()
        .put(format!("{}/api/v1/rules/a/bad", n.http))
        .json(&serde_json::json!({"action": "sample", "rate": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("share from 0 to 1"));
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_retention_deletes_its_old_records_and_leaves_other_tenants_alone() {
    let n = TestNode::start().await;
    let three_days_ago = now_ns() - 3 * 86_400_000_000_000;
    for tenant in ["short", "long"] {
        let mut records = generated("api", "info", 50, three_days_ago);
        records.extend(generated("api", "warn", 20, now_ns() - 1_000_000_000));
        let r = append_as(&n, tenant, records).await;
        assert_eq!(r.accepted, 70);
        assert_eq!(wait_total(&n, tenant, "", 70).await, 70);
    }
    let resp = reqwest::Client::new()
        .put(format!("{}/api/v1/retention/short", n.http))
        .json(&serde_json::json!({"days": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    // Applied by each indexer as soon as it sees the setting.
    assert_eq!(wait_total(&n, "short", "", 20).await, 20);
    assert_eq!(total(&n, "short", "warn").await, 20, "recent records stay");
    assert_eq!(
        total(&n, "long", "").await,
        70,
        "another tenant keeps its records"
    );
    let listed: serde_json::Value = reqwest::get(format!("{}/api/v1/retention", n.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["tenants"],
        serde_json::json!([{"tenant": "short", "days": 1}])
    );
    // The deletion is committed: it holds after a restart.
    let n = n.restart().await;
    assert_eq!(total(&n, "short", "").await, 20);
    assert_eq!(total(&n, "long", "").await, 70);
    n.stop().await;
}
