//! Access keys against a real node with keys on: every route of the HTTP front door and
//! both gRPC services refuse a missing, revoked, foreign-tenant or wrong-scope key with
//! the right status and no data, and a tenant's records never reach another tenant.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use weir_proto::api::keys::{CreateKeyRequest, CreatedKey, Scope};
use weir_proto::otlp::collector::logs::v1::logs_service_client::LogsServiceClient;
use weir_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use weir_proto::v1::AppendRequest;
use weir_server::http::access::{Need, ROUTES};

/// The reason of a refusal, read as the route's own clients read errors: Loki's plain
/// text, an OTLP `Status`, Elasticsearch's `security_exception`, else `{"error": ...}`.
fn reason(path: &str, body: &str) -> String {
    if path.starts_with("/loki/") || path.starts_with("/api/prom/") {
        return body.trim().to_owned();
    }
    let v: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{path}: the refusal is not JSON ({e}): {body}"));
    if path == "/v1/logs" {
        assert!(matches!(v["code"].as_i64(), Some(7 | 16)), "{path}: {body}");
        return v["message"].as_str().unwrap_or_default().to_owned();
    }
    if path == "/" || path.starts_with("/_") || path.starts_with("/{index}") {
        assert_eq!(v["error"]["type"], "security_exception", "{path}: {body}");
        assert!(v["status"].as_u64().is_some(), "{path}: {body}");
        return v["error"]["reason"].as_str().unwrap_or_default().to_owned();
    }
    v["error"].as_str().unwrap_or_default().to_owned()
}

/// A node with keys on and the admin key its first start wrote.
async fn node_with_keys() -> (TestNode, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.auth.enabled = true;
    let n = TestNode::start_with(dir, cfg).await;
    let path = n.dir.path().join("admin.key");
    let admin = std::fs::read_to_string(&path).unwrap().trim().to_owned();
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin.key must be readable by its owner only");
    (n, admin)
}

async fn create_key(n: &TestNode, admin: &str, tenants: &[&str], scopes: &[Scope]) -> CreatedKey {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/keys", n.http))
        .bearer_auth(admin)
        .json(&CreateKeyRequest {
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
            scopes: scopes.to_vec(),
            note: String::new(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    resp.json().await.unwrap()
}

async fn revoke(n: &TestNode, admin: &str, id: &str) {
    let resp = reqwest::Client::new()
        .delete(format!("{}/api/v1/keys/{id}", n.http))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

/// A request that exercises the route mounted at `path`, with `word` in whatever it
/// writes: method, path and query, and a body with its content type.
fn sample(path: &str, word: &str) -> (Method, String, Option<(&'static str, String)>) {
    let q = |s: &str| url_escape(s);
    let sel = q("{service=\"checkout\"}");
    let json = "application/json";
    let ndjson = "application/x-ndjson";
    let loki = format!(
        r#"{{"streams":[{{"stream":{{"service":"checkout"}},"values":[["{}","{word}"]]}}]}}"#,
        now_ns()
    );
    let otlp = format!(
        r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"timeUnixNano":"{}","body":{{"stringValue":"{word}"}}}}]}}]}}]}}"#,
        now_ns()
    );
    let bulk = format!("{{\"create\":{{}}}}\n{{\"message\":\"{word}\"}}\n");
    let get = |p: &str| (Method::GET, p.to_owned(), None);
    match path {
        "/api/v1/search" => get("/api/v1/search?q=secret"),
        "/api/v1/histogram" => get("/api/v1/histogram"),
        "/api/v1/tail" => get(&format!("/api/v1/tail?query={sel}")),
        "/api/v1/labels" => get("/api/v1/labels"),
        "/api/v1/labels/{name}/values" => get("/api/v1/labels/team/values"),
        "/api/v1/dlq" => get("/api/v1/dlq"),
        "/api/v1/dlq/{sink}" => get("/api/v1/dlq/es"),
        "/api/v1/dlq/{sink}/{seq}" => get("/api/v1/dlq/es/1"),
        "/api/v1/dlq/{sink}/replay" => (Method::POST, "/api/v1/dlq/es/replay".into(), None),
        "/api/v1/cluster" => get("/api/v1/cluster"),
        "/metrics" => get("/metrics"),
        "/api/v1/keys" => get("/api/v1/keys"),
        "/api/v1/keys/{id}" => (Method::DELETE, "/api/v1/keys/0000000000000000".into(), None),
        "/api/v1/tenants" => get("/api/v1/tenants"),
        "/api/v1/rules" => get("/api/v1/rules"),
        "/api/v1/retention" => get("/api/v1/retention"),
        "/api/v1/retention/{tenant}" => (
            Method::PUT,
            "/api/v1/retention/acme".into(),
            Some((json, r#"{"days":0}"#.into())),
        ),
        "/api/v1/rules/{tenant}/{id}" => (
            Method::PUT,
            "/api/v1/rules/acme/r1".into(),
            Some((
                json,
                r#"{"action":"drop","body":"never-matches-anything"}"#.into(),
            )),
        ),
        "/api/v1/rules/{tenant}/{id}/dry-run" => (
            Method::POST,
            "/api/v1/rules/acme/r1/dry-run".into(),
            Some((json, r#"{"action":"drop"}"#.into())),
        ),
        "/healthz"
        | "/readyz"
        | "/ready"
        | "/loki/api/v1/status/buildinfo"
        | "/"
        | "/_license"
        | "/_xpack"
        | "/_cluster/health"
        | "/_mapping"
        | "/api/v1/nothing" => get(path),
        "/v1/logs" => (Method::POST, path.into(), Some((json, otlp))),
        "/loki/api/v1/push" | "/api/prom/push" => (Method::POST, path.into(), Some((json, loki))),
        "/loki/api/v1/query_range" => get(&format!("{path}?query={sel}")),
        "/loki/api/v1/query" => get(&format!(
            "{path}?query={}",
            q("count_over_time({service=\"checkout\"}[1h])")
        )),
        "/loki/api/v1/labels" | "/loki/api/v1/label" => get(path),
        "/loki/api/v1/label/{name}/values" => get("/loki/api/v1/label/team/values"),
        "/loki/api/v1/series" => get(&format!("{path}?match[]={sel}")),
        "/loki/api/v1/index/stats"
        | "/loki/api/v1/index/volume"
        | "/loki/api/v1/index/volume_range"
        | "/loki/api/v1/detected_fields"
        | "/loki/api/v1/tail" => get(&format!("{path}?query={sel}")),
        "/loki/api/v1/detected_field/{name}/values" => get(&format!(
            "/loki/api/v1/detected_field/team/values?query={sel}"
        )),
        "/_bulk" => (Method::POST, path.into(), Some((ndjson, bulk))),
        "/{index}/_bulk" => (Method::POST, "/logs/_bulk".into(), Some((ndjson, bulk))),
        "/_index_template/{name}"
        | "/_template/{name}"
        | "/_component_template/{name}"
        | "/_ilm/policy/{name}" => (
            Method::PUT,
            path.replace("{name}", "t"),
            Some((json, "{}".into())),
        ),
        "/_search" => (Method::POST, path.into(), Some((json, "{}".into()))),
        "/{index}/_search" => (
            Method::POST,
            "/weir-acme/_search".into(),
            Some((json, "{}".into())),
        ),
        "/_msearch" => (Method::POST, path.into(), Some((ndjson, "{}\n{}\n".into()))),
        "/{index}/_msearch" => (
            Method::POST,
            "/weir-acme/_msearch".into(),
            Some((ndjson, "{}\n{}\n".into())),
        ),
        "/{index}/_mapping" => get("/weir-acme/_mapping"),
        "/_field_caps" => get("/_field_caps?fields=*"),
        "/{index}/_field_caps" => get("/weir-acme/_field_caps?fields=*"),
        other => panic!("no sample request for route {other}: add one to tests/access.rs"),
    }
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How a request presents itself.
#[derive(Clone, Copy, Debug)]
enum Cred<'a> {
    None,
    Bearer(&'a str),
    /// A key and a tenant header naming `tenant`.
    BearerFor(&'a str, &'a str),
}

/// Sends `path`'s sample; the status and up to 64 KiB of the body (a tail streams on).
async fn call(n: &TestNode, path: &str, word: &str, cred: Cred<'_>) -> (u16, String) {
    let (method, url, body) = sample(path, word);
    let mut req = reqwest::Client::new().request(method, format!("{}{url}", n.http));
    match cred {
        Cred::None => {}
        Cred::Bearer(k) => req = req.bearer_auth(k),
        Cred::BearerFor(k, t) => req = req.bearer_auth(k).header("x-scope-orgid", t),
    }
    if let Some((ct, b)) = body {
        req = req.header("content-type", ct).body(b);
    }
    let mut resp = req.timeout(Duration::from_secs(30)).send().await.unwrap();
    let status = resp.status().as_u16();
    let mut text = Vec::new();
    // A tail answers 200 and streams: read what comes within a moment, then hang up.
    let until = Instant::now() + Duration::from_millis(300);
    while text.len() < 64 << 10 {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(c))) => text.extend_from_slice(&c),
            _ => break,
        }
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

/// The matrix: every route in the access table, with every kind of wrong credential,
/// answers 401/403 with a body naming why and no record; the right key gets through.
/// A route without a row in the table fails `every_mounted_route_declares_its_need`
/// (unit test of `http::access`); one without a sample request here fails this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_refuses_a_missing_revoked_foreign_or_wrong_scope_key() {
    let (n, admin) = node_with_keys().await;
    let acme_write = create_key(&n, &admin, &["acme"], &[Scope::Write]).await.key;
    let acme_read = create_key(&n, &admin, &["acme"], &[Scope::Read]).await.key;
    let acme_all = create_key(&n, &admin, &["acme"], &[Scope::Write, Scope::Read]).await;
    let beta = create_key(&n, &admin, &["beta"], &[Scope::Write, Scope::Read])
        .await
        .key;
    let op_read = create_key(&n, &admin, &[], &[Scope::Read, Scope::Write])
        .await
        .key;
    let revoked = create_key(&n, &admin, &["acme"], &[Scope::Write, Scope::Read]).await;
    revoke(&n, &admin, &revoked.info.id).await;

    // Data the wrong callers must never see: one acme record.
    let mut c = n.client().await;
    let mut req = tonic::Request::new(AppendRequest {
        records: vec![record("zebra-acme-secret")],
        ..Default::default()
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", acme_all.key).parse().unwrap(),
    );
    c.append(req).await.expect("acme's write key appends");

    // The table itself: only probes are open, only handshakes take any key. A data route
    // declared open here would pass the walk below as an open route.
    for route in ROUTES {
        match route.need {
            Need::Open => assert!(
                ["/healthz", "/readyz", "/ready"].contains(&route.path),
                "{} is declared open",
                route.path
            ),
            Need::AnyKey => assert!(
                [
                    "/",
                    "/_license",
                    "/_xpack",
                    "/_cluster/health",
                    "/loki/api/v1/status/buildinfo"
                ]
                .contains(&route.path),
                "{} is declared open to any key",
                route.path
            ),
            Need::Scope(_) => {}
        }
    }
    let garbage = "weir_0123456789abcdef_notasecretatallnotasecretatallnotasecret";
    for route in ROUTES {
        let path = route.path;
        let mut wrong: Vec<(&str, Cred, u16)> = Vec::new();
        match route.need {
            Need::Open => {
                let (status, _) = call(&n, path, "intruder", Cred::None).await;
                assert!(
                    ![401, 403].contains(&status),
                    "{path} is open yet answered {status} without a key"
                );
                continue;
            }
            Need::AnyKey => {}
            Need::Scope(Scope::Write) => {
                wrong.push(("a read key", Cred::Bearer(&acme_read), 403));
                wrong.push(("another tenant's key", Cred::BearerFor(&beta, "acme"), 403));
            }
            Need::Scope(Scope::Read) => {
                wrong.push(("a write key", Cred::Bearer(&acme_write), 403));
                wrong.push(("another tenant's key", Cred::BearerFor(&beta, "acme"), 403));
            }
            Need::Scope(Scope::Admin) => {
                wrong.push(("a tenant key", Cred::Bearer(&acme_all.key), 403));
                wrong.push(("an operator key without admin", Cred::Bearer(&op_read), 403));
            }
        }
        wrong.push(("no key", Cred::None, 401));
        wrong.push(("a revoked key", Cred::Bearer(&revoked.key), 401));
        wrong.push(("an unknown key", Cred::Bearer(garbage), 401));
        for (what, cred, want) in wrong {
            let (status, body) = call(&n, path, "intruder", cred).await;
            assert_eq!(status, want, "{path} with {what}: {body}");
            let message = reason(path, &body);
            assert!(!message.is_empty(), "{path} with {what}: no reason: {body}");
            assert!(
                !body.contains("zebra"),
                "{path} with {what} leaked a record: {body}"
            );
            if want == 403 && matches!(route.need, Need::Scope(_)) && what != "another tenant's key"
            {
                assert!(
                    message.contains("scope") || message.contains("operator"),
                    "{path} with {what}: {message}"
                );
            }
        }
        // The right key gets past the door (the answer itself is the handler's).
        let right = match route.need {
            Need::Scope(Scope::Admin) => admin.as_str(),
            Need::Scope(Scope::Read) => acme_read.as_str(),
            _ => acme_write.as_str(),
        };
        let (status, body) = call(&n, path, "legit", Cred::Bearer(right)).await;
        assert!(
            ![401, 403, 500].contains(&status),
            "{path} with the right key answered {status}: {body}"
        );
    }

    // gRPC: Append and OTLP Export.
    let append = |key: Option<String>, tenant: &str| {
        let grpc = n.grpc.clone();
        let tenant = tenant.to_owned();
        async move {
            let mut c = weir_proto::v1::ingest_client::IngestClient::connect(grpc)
                .await
                .unwrap();
            let mut req = tonic::Request::new(AppendRequest {
                tenant,
                records: vec![record("intruder")],
                ..Default::default()
            });
            if let Some(k) = key {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {k}").parse().unwrap());
            }
            c.append(req)
                .await
                .map(|_| ())
                .map_err(|s| (s.code(), s.message().to_owned()))
        }
    };
    let export = |key: Option<String>| {
        let grpc = n.grpc.clone();
        async move {
            let mut c = LogsServiceClient::connect(grpc).await.unwrap();
            let mut req = tonic::Request::new(ExportLogsServiceRequest::default());
            if let Some(k) = key {
                let basic = base64_basic("acme", &k);
                req.metadata_mut()
                    .insert("authorization", basic.parse().unwrap());
            }
            c.export(req).await.map(|_| ()).map_err(|s| s.code())
        }
    };
    use tonic::Code;
    for (what, key, tenant, want) in [
        ("no key", None, "", Code::Unauthenticated),
        (
            "a revoked key",
            Some(revoked.key.clone()),
            "",
            Code::Unauthenticated,
        ),
        (
            "a read key",
            Some(acme_read.clone()),
            "",
            Code::PermissionDenied,
        ),
        (
            "acme's key naming beta",
            Some(acme_write.clone()),
            "beta",
            Code::PermissionDenied,
        ),
    ] {
        let got = append(key, tenant).await.unwrap_err();
        assert_eq!(got.0, want, "Append with {what}: {}", got.1);
    }
    append(Some(acme_write.clone()), "acme")
        .await
        .expect("the right key appends");
    assert_eq!(export(None).await.unwrap_err(), Code::Unauthenticated);
    assert_eq!(
        export(Some(acme_read.clone())).await.unwrap_err(),
        Code::PermissionDenied
    );
    assert_eq!(
        export(Some(revoked.key.clone())).await.unwrap_err(),
        Code::Unauthenticated
    );
    export(Some(acme_write.clone()))
        .await
        .expect("Basic with a write key exports");

    // Nothing a refused request carried was stored, in any tenant.
    // Loki push, OTLP/HTTP, both _bulk routes and Append wrote "legit" or "intruder"
    // with the right key: 5 records (the empty OTLP export wrote none).
    let legit = wait_hits(&n, &admin, "acme", "legit", 4).await;
    assert!(legit >= 4, "the right keys' writes were stored: {legit}");
    for tenant in ["acme", "beta", "default"] {
        // Append with the right key wrote one "intruder" to acme on purpose.
        let want = u64::from(tenant == "acme");
        assert_eq!(
            hits(&n, &admin, tenant, "intruder").await,
            want,
            "a refused write was stored for {tenant}"
        );
    }
}

fn base64_basic(user: &str, key: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"))
    )
}

/// Hits of `q` in `tenant`, searched with `key` (naming `tenant`).
async fn hits(n: &TestNode, key: &str, tenant: &str, q: &str) -> u64 {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/v1/search", n.http))
        .bearer_auth(key)
        .header("x-weir-tenant", tenant)
        .query(&[("q", q)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["total"].as_u64().unwrap_or_else(|| panic!("{v}"))
}

/// [`hits`], waiting up to 10 s for at least `n` (records are searchable within a
/// second of their ack).
async fn wait_hits(node: &TestNode, key: &str, tenant: &str, q: &str, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = hits(node, key, tenant, q).await;
        if got >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn append_as(n: &TestNode, key: &str, body: &str, team: &str) {
    let mut c = n.client().await;
    let mut r = record(body);
    r.labels = labels(&[("team", team)]);
    let mut req = tonic::Request::new(AppendRequest {
        records: vec![r],
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    c.append(req).await.expect("append with a write key");
}

/// GET `path` as `auth` (a whole Authorization value); status and body.
async fn get_as(n: &TestNode, auth: &str, path: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", n.http))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// A tenant's records never reach another tenant: native search, labels, Loki
/// queries and labels, Elasticsearch search (even naming the other tenant's index) and
/// the live tail, with the key presented as Bearer, Basic and ApiKey.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_sees_only_its_own_records_on_every_read_path() {
    let (n, admin) = node_with_keys().await;
    let acme = create_key(&n, &admin, &["acme"], &[Scope::Write, Scope::Read]).await;
    let beta = create_key(&n, &admin, &["beta"], &[Scope::Write, Scope::Read]).await;
    append_as(&n, &acme.key, "zebra-acme-secret", "acme-only").await;
    append_as(&n, &beta.key, "beta-line", "beta-only").await;
    assert_eq!(wait_hits(&n, &acme.key, "acme", "zebra", 1).await, 1);
    assert_eq!(wait_hits(&n, &beta.key, "beta", "beta", 1).await, 1);

    let bearer = format!("Bearer {}", beta.key);
    let basic = base64_basic("beta", &beta.key);
    let api_key = format!("ApiKey {}", beta.api_key_encoded);
    let sel = url_escape("{service=\"checkout\"}");
    let start = now_ns() - 3_600_000_000_000;
    for auth in [&bearer, &basic, &api_key] {
        for path in [
            "/api/v1/search?q=".to_owned(),
            "/api/v1/labels/team/values".to_owned(),
            format!("/loki/api/v1/query_range?query={sel}&start={start}"),
            format!("/loki/api/v1/label/team/values?start={start}"),
            format!("/loki/api/v1/series?match[]={sel}&start={start}"),
            "/_search?q=*".to_owned(),
            "/weir-acme/_search".to_owned(),
            "/weir-acme/_mapping".to_owned(),
        ] {
            let (status, body) = get_as(&n, auth, &path).await;
            assert!(status < 500, "{path} as {auth}: {status} {body}");
            assert!(
                !body.contains("zebra") && !body.contains("acme-only"),
                "{path} as beta showed acme's data: {body}"
            );
        }
        // And beta's own data is there, so the checks above could fail.
        let (_, body) = get_as(&n, auth, "/api/v1/search?q=").await;
        assert!(body.contains("beta-line"), "{body}");
        let (_, body) = get_as(
            &n,
            auth,
            &format!("/loki/api/v1/query_range?query={sel}&start={start}"),
        )
        .await;
        assert!(body.contains("beta-line"), "{body}");
    }
    // Naming acme with beta's key is refused, not answered with acme's data.
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/search", n.http))
        .basic_auth("acme", Some(&beta.key))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    // The live tail: beta's stream never carries acme's records.
    let mut tail = reqwest::Client::new()
        .get(format!("{}/api/v1/tail?query={sel}", n.http))
        .bearer_auth(&beta.key)
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 200);
    append_as(&n, &acme.key, "zebra-tail", "acme-only").await;
    append_as(&n, &beta.key, "beta-tail", "beta-only").await;
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("beta-tail") && Instant::now() < deadline {
        if let Ok(Ok(Some(c))) = tokio::time::timeout(Duration::from_secs(1), tail.chunk()).await {
            seen.push_str(&String::from_utf8_lossy(&c));
        }
    }
    assert!(
        seen.contains("beta-tail"),
        "beta's tail missed its own record: {seen}"
    );
    assert!(
        !seen.contains("zebra"),
        "beta's tail carried acme's record: {seen}"
    );
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Revocation holds from the next request; keys (raft entries of the key table) and
/// revocations survive a restart, the admin key file is not rewritten, and no secret is
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_at_once_and_keys_survive_a_restart() {
    let (n, admin) = node_with_keys().await;
    let kept = create_key(&n, &admin, &["acme"], &[Scope::Read]).await;
    let gone = create_key(&n, &admin, &["acme"], &[Scope::Read]).await;
    let status = |n: &TestNode, k: String| {
        let url = format!("{}/api/v1/search", n.http);
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(k)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(&n, gone.key.clone()).await, 200);
    revoke(&n, &admin, &gone.info.id).await;
    assert_eq!(status(&n, gone.key.clone()).await, 401);
    let list: weir_proto::api::keys::KeysResponse = reqwest::Client::new()
        .get(format!("{}/api/v1/keys", n.http))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.keys.len(), 3, "admin, kept, gone: {list:?}");
    assert!(list
        .keys
        .iter()
        .any(|k| k.id == gone.info.id && k.revoked_ns.is_some()));
    // Only hashes are stored: no file of the data directory but admin.key holds a secret.
    for file in files_under(n.dir.path()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for k in [&admin, &kept.key, &gone.key] {
            let secret = weir_server::auth::parse_key(k).unwrap().secret.as_bytes();
            let holds = bytes.windows(secret.len()).any(|w| w == secret);
            assert!(
                !holds || (name == "admin.key" && k == &admin),
                "{} holds a secret",
                file.display()
            );
        }
    }

    let dir = n.stop().await;
    let mut cfg = test_config(dir.path());
    cfg.auth.enabled = true;
    let n = TestNode::start_with(dir, cfg).await;
    let again = std::fs::read_to_string(n.dir.path().join("admin.key")).unwrap();
    assert_eq!(
        again.trim(),
        admin,
        "a restart must not replace the admin key"
    );
    assert_eq!(status(&n, kept.key.clone()).await, 200);
    assert_eq!(status(&n, gone.key.clone()).await, 401);
    assert_eq!(status(&n, admin.clone()).await, 200);
}

/// The zero-config node listens on loopback and needs no key; a node listening beyond
/// loopback without keys refuses to start, naming the way out, unless told to run open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_beyond_loopback_without_keys_refuses_to_start_unless_insecure() {
    let default = weir_server::Config::default();
    assert!(default.http_addr.ip().is_loopback() && default.grpc_addr.ip().is_loopback());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.http_addr = "0.0.0.0:0".parse().unwrap();
    let e = format!(
        "{:#}",
        weir_server::Node::start(cfg.clone())
            .await
            .err()
            .expect("refused")
    );
    for needle in [
        "http_addr 0.0.0.0:0",
        "auth.enabled",
        "auth.insecure",
        "--insecure",
        "admin.key",
    ] {
        assert!(e.contains(needle), "the refusal must name {needle}: {e}");
    }
    cfg.auth.insecure = true;
    let n = TestNode::start_with(dir, cfg).await;
    // Open: any tenant header is obeyed and no key is asked for.
    let (status, _) = n.search_raw(&[("q", "")], Some("acme")).await;
    assert_eq!(status, 200);
    n.stop().await;
}
