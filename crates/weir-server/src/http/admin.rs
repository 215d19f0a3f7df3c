//! Access keys, tenants and their ingest rules over HTTP (admin scope; bodies in
//! [`weir_proto::api::keys`] and [`weir_proto::api::rules`]): what `weir keys`,
//! `weir tenants` and `weir rules` call.
//!
//! A change of the key table or the rules is proposed by the node that leads their raft
//! group ([`crate::keytable`], [`crate::rules`]); any other node forwards the request
//! there (to the leader's advertised HTTP address, `cluster.nodes[].http`) with the
//! caller's credentials, which are valid there since every node holds the same table.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use weir_proto::api::keys::{
    CreateKeyRequest, CreatedKey, KeyInfo, KeysResponse, TenantInfo, TenantsResponse,
};
use weir_proto::api::rules::{
    DryRunResponse, RetentionResponse, RetentionSpec, Rule, RuleSpec, RulesResponse,
    TenantRetention,
};
use weir_proto::{ApiError, ErrorKind};

use super::HttpError;
use crate::auth::{Caller, StoreError};
use crate::state::NodeState;

/// Marks a request one node forwarded to another: it is not forwarded again, so two
/// nodes that each believe the other leads cannot pass it back and forth.
const FORWARDED: &str = "x-weir-forwarded";

/// The admin routes (their need, admin, is in [`super::access::ROUTES`]).
pub fn router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/api/v1/keys", get(list).post(create))
        .route("/api/v1/keys/{id}", delete(revoke))
        .route("/api/v1/tenants", get(tenants))
        .route("/api/v1/rules", get(list_rules))
        .route(
            "/api/v1/rules/{tenant}/{id}",
            delete(delete_rule).put(set_rule),
        )
        .route("/api/v1/rules/{tenant}/{id}/dry-run", post(dry_run))
        .route("/api/v1/retention", get(list_retention))
        .route("/api/v1/retention/{tenant}", put(set_retention))
        .with_state(state)
}

/// `POST /api/v1/keys`: a new key; the answer is the only place its secret appears.
async fn create(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, HttpError> {
    let request: CreateKeyRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(format!(
            "the body must be JSON like {{\"tenants\":[\"acme\"],\"scopes\":[\"write\",\"read\"]}} \
             (tenants empty or absent: every tenant): {e}"
        ))
    })?;
    let (stored, created) = crate::auth::prepare_key(request, &st.config.limits.to_limits(), None)?;
    match st.auth.store().insert(stored).await {
        Ok(()) => {
            tracing::info!(key = %created.info.id, tenants = ?created.info.tenants, scopes = ?created.info.scopes, by = ?caller.key_id, "access key created");
            Ok(Json::<CreatedKey>(created).into_response())
        }
        Err(StoreError::NotLeader { leader }) => {
            forward(&st, leader, Method::POST, "/api/v1/keys", &headers, body).await
        }
        Err(e) => Err(ApiError::from(e).into()),
    }
}

/// `GET /api/v1/keys`: every key, never a secret.
async fn list(State(st): State<Arc<NodeState>>) -> Json<KeysResponse> {
    Json(KeysResponse {
        keys: st.auth.store().list().iter().map(|k| k.info()).collect(),
    })
}

/// `DELETE /api/v1/keys/{id}`: revokes a key; requests with it are refused from the
/// next one on (on other nodes within `keytable::REFRESH_INTERVAL` of the commit).
async fn revoke(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    match st.auth.store().revoke(&id, weir_proto::now_ns()).await {
        Ok(revoked) => {
            tracing::info!(key = %id, by = ?caller.key_id, "access key revoked");
            Ok(Json::<KeyInfo>(revoked.info()).into_response())
        }
        Err(StoreError::NotLeader { leader }) => {
            let path = format!("/api/v1/keys/{id}");
            forward(
                &st,
                leader,
                Method::DELETE,
                &path,
                &headers,
                Default::default(),
            )
            .await
        }
        Err(e) => Err(ApiError::from(e).into()),
    }
}

/// Sends the request on to the node that leads the key table, with the caller's
/// credentials, and answers with what it answered.
async fn forward(
    st: &NodeState,
    leader: Option<u64>,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, HttpError> {
    if headers.contains_key(FORWARDED) {
        return Err(ApiError::new(
            ErrorKind::Unavailable,
            "the node this request was forwarded to does not lead the cluster's key and \
             rule table either (leadership is moving); retry",
        )
        .into());
    }
    let leader = leader.or_else(|| st.raft.leader_of(crate::keytable::KEY_SHARD));
    let member = leader.and_then(|id| st.config.cluster.nodes.iter().find(|m| m.id == id));
    let Some(member) = member.filter(|m| !m.http.is_empty() && m.id != st.raft.node_id()) else {
        return Err(ApiError::new(
            ErrorKind::Unavailable,
            format!(
                "the key and rule table's group has no leader this node can reach (leader: \
                 {leader:?}; its cluster.nodes[].http must be set); retry"
            ),
        )
        .into());
    };
    let (client, scheme) = forward_client(st)?;
    let url = format!("{scheme}://{}{path}", member.http);
    let mut req = client
        .request(method, &url)
        .timeout(std::time::Duration::from_secs(15))
        .header(FORWARDED, st.raft.node_id().to_string())
        .body(body);
    for name in [
        axum::http::header::AUTHORIZATION,
        axum::http::header::CONTENT_TYPE,
    ] {
        if let Some(v) = headers.get(&name) {
            req = req.header(name.as_str(), v.as_bytes());
        }
    }
    let resp = req.send().await.map_err(|e| {
        ApiError::new(
            ErrorKind::Unavailable,
            format!(
                "cannot forward to node {} ({url}), which leads the key and rule table: {e}",
                member.id
            ),
        )
    })?;
    let status = axum::http::StatusCode::from_u16(resp.status().as_u16())
        .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
    let bytes = resp.bytes().await.map_err(|e| {
        ApiError::new(
            ErrorKind::Unavailable,
            format!("the answer of {url} broke off: {e}"),
        )
    })?;
    Ok((
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response())
}

/// `GET /api/v1/tenants`: the tenants keys name and those this node ingested for.
async fn tenants(State(st): State<Arc<NodeState>>) -> Json<TenantsResponse> {
    let mut by_name: BTreeMap<String, TenantInfo> = BTreeMap::new();
    for k in st.auth.store().list() {
        if k.revoked_ns.is_none() {
            for t in &k.tenants {
                tenant_entry(&mut by_name, t).keys += 1;
            }
        }
    }
    for t in st.metrics.ingest.tenants() {
        tenant_entry(&mut by_name, &t).ingested = true;
    }
    Json(TenantsResponse {
        tenants: by_name.into_values().collect(),
    })
}

fn tenant_entry<'a>(m: &'a mut BTreeMap<String, TenantInfo>, name: &str) -> &'a mut TenantInfo {
    m.entry(name.to_owned()).or_insert_with(|| TenantInfo {
        name: name.to_owned(),
        keys: 0,
        ingested: false,
    })
}

/// `GET /api/v1/rules` (`?tenant=` for one): every ingest rule in effect on this node.
async fn list_rules(
    State(st): State<Arc<NodeState>>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Json<RulesResponse> {
    Json(RulesResponse {
        rules: st.rules.list(params.get("tenant").map(String::as_str)),
    })
}

/// The tenant a rules path names, as ingest spells it.
fn rule_tenant(st: &NodeState, tenant: &str) -> Result<String, ApiError> {
    weir_ingest::normalize_tenant(tenant, &st.config.limits.to_limits())
        .map_err(|e| ApiError::invalid(e.to_string()))
}

fn rule_spec(body: &[u8]) -> Result<RuleSpec, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(format!(
            "the body must be a rule as JSON, like {{\"order\":30,\"action\":\"sample\",\
             \"rate\":0.1,\"levels\":[\"info\"],\"services\":[\"payment-api\"]}}: {e}"
        ))
    })
}

/// `PUT /api/v1/rules/{tenant}/{id}`: sets a rule; every node applies it within a second
/// of the commit.
async fn set_rule(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    headers: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, HttpError> {
    let tenant = rule_tenant(&st, &tenant)?;
    let spec = rule_spec(&body)?;
    match st.rules.set(&tenant, &id, spec).await {
        Ok(rule) => {
            tracing::info!(%tenant, rule = %id, by = ?caller.key_id, "ingest rule set");
            Ok(Json::<Rule>(rule).into_response())
        }
        Err(StoreError::NotLeader { leader }) => {
            let path = format!("/api/v1/rules/{tenant}/{id}");
            forward(&st, leader, Method::PUT, &path, &headers, body).await
        }
        Err(e) => Err(crate::rules::store_error(e).into()),
    }
}

/// `DELETE /api/v1/rules/{tenant}/{id}`.
async fn delete_rule(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    headers: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Response, HttpError> {
    let tenant = rule_tenant(&st, &tenant)?;
    match st.rules.delete(&tenant, &id).await {
        Ok(rule) => {
            tracing::info!(%tenant, rule = %id, by = ?caller.key_id, "ingest rule deleted");
            Ok(Json::<Rule>(rule).into_response())
        }
        Err(StoreError::NotLeader { leader }) => {
            let path = format!("/api/v1/rules/{tenant}/{id}");
            forward(
                &st,
                leader,
                Method::DELETE,
                &path,
                &headers,
                Default::default(),
            )
            .await
        }
        Err(e) => Err(crate::rules::store_error(e).into()),
    }
}

/// Records a dry run reads at most: the newest of the range, when it holds more.
pub const DRY_RUN_RECORDS_MAX: u64 = 1_000_000;

/// `POST /api/v1/rules/{tenant}/{id}/dry-run`: what the rule would drop of the tenant's
/// stored records of the last hour (or `start`..`end`, RFC 3339 or unix ns), were it in
/// place among the tenant's other rules. Read through the search path, newest first.
async fn dry_run(
    State(st): State<Arc<NodeState>>,
    Path((tenant, id)): Path<(String, String)>,
    Query(params): Query<BTreeMap<String, String>>,
    body: axum::body::Bytes,
) -> Result<Json<DryRunResponse>, HttpError> {
    let tenant = rule_tenant(&st, &tenant)?;
    let spec = rule_spec(&body)?;
    let candidate = crate::rules::Compiled::new(Rule {
        tenant: tenant.clone(),
        id: id.clone(),
        updated_ns: weir_proto::now_ns(),
        spec,
    })
    .map_err(ApiError::invalid)?;
    let mut rules: Vec<Arc<crate::rules::Compiled>> = st
        .rules
        .of(&tenant)
        .map(|r| r.iter().filter(|c| c.rule.id != id).cloned().collect())
        .unwrap_or_default();
    rules.push(Arc::new(candidate));
    rules.sort_by(|a, b| (a.rule.spec.order, &a.rule.id).cmp(&(b.rule.spec.order, &b.rule.id)));
    let me = rules
        .iter()
        .position(|c| c.rule.id == id)
        .unwrap_or_default();
    let time = |name: &str, default: i64| -> Result<i64, ApiError> {
        match params.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .or_else(|| weir_ingest::parse_rfc3339(v))
                .ok_or_else(|| {
                    ApiError::invalid(format!("{name} {v:?}: RFC 3339 or unix nanoseconds"))
                }),
        }
    };
    let end = time("end", weir_proto::now_ns())?;
    let start = time("start", end - 3_600_000_000_000)?;
    let mut out = DryRunResponse {
        start_ns: start,
        end_ns: end,
        note: "counts stored records only: what rules already dropped at ingest is not stored"
            .into(),
        ..Default::default()
    };
    let mut after = None;
    let page_size = st.config.search.limit_max.clamp(1, weir_index::MAX_LIMIT);
    loop {
        let request = weir_index::SearchRequest {
            query: weir_index::Query::All,
            tenant: tenant.clone(),
            start_ns: start,
            end_ns: end,
            levels: Vec::new(),
            limit: page_size,
            sort: weir_index::Sort::TimeDesc,
            after: after.take(),
            prefilter: false,
        };
        let page = st
            .limiter
            .query(
                &tenant,
                None,
                &st.config.query,
                st.searcher.search(crate::search::RemoteSearch {
                    request,
                    query: String::new(),
                }),
            )
            .await?;
        for h in &page.hits {
            out.records += 1;
            // The rule decides the records it is the first to match.
            if rules.iter().position(|c| c.matches(&h.record)) == Some(me) {
                out.matched += 1;
                if !rules[me].keeps(&h.record) {
                    out.would_drop += 1;
                }
            }
        }
        if out.records >= DRY_RUN_RECORDS_MAX && page.next.is_some() {
            out.truncated = true;
            break;
        }
        match page.next {
            Some(next) if !page.hits.is_empty() => after = Some(next),
            _ => break,
        }
    }
    Ok(Json(out))
}

/// `GET /api/v1/retention`: the index's retention and the tenants' own.
async fn list_retention(State(st): State<Arc<NodeState>>) -> Json<RetentionResponse> {
    Json(RetentionResponse {
        default_days: st.config.index.retention_secs as f64 / 86_400.0,
        tenants: st
            .rules
            .retentions()
            .iter()
            .map(|(tenant, days)| TenantRetention {
                tenant: tenant.clone(),
                days: *days,
            })
            .collect(),
    })
}

/// `PUT /api/v1/retention/{tenant}`: the tenant's records in index partitions that end
/// more than `days` ago are deleted, on every node, from the next check of each indexer
/// (at once when the setting arrives, then every minute).
async fn set_retention(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, HttpError> {
    let tenant = rule_tenant(&st, &tenant)?;
    let spec: RetentionSpec = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(format!("the body must be JSON like {{\"days\": 7}}: {e}"))
    })?;
    match st.rules.set_retention(&tenant, spec.days).await {
        Ok(()) => {
            tracing::info!(%tenant, days = spec.days, by = ?caller.key_id, "tenant retention set");
            Ok(Json(TenantRetention {
                tenant,
                days: spec.days,
            })
            .into_response())
        }
        Err(StoreError::NotLeader { leader }) => {
            let path = format!("/api/v1/retention/{tenant}");
            forward(&st, leader, Method::PUT, &path, &headers, body).await
        }
        Err(e) => Err(crate::rules::store_error(e).into()),
    }
}

/// The client that forwards to another member's HTTP port: https when this cluster's HTTP
/// ports speak TLS (`tls.cert_file`), verified against the cluster's CA and presenting
/// this node's peer certificate when `tls.peer_ca_file` is set, else against the public
/// roots.
fn forward_client(st: &NodeState) -> Result<(reqwest::Client, &'static str), HttpError> {
    if !st.config.tls.enabled() {
        return Ok((reqwest::Client::new(), "http"));
    }
    let builder = match &st.tls_http_client {
        Some(tls) => reqwest::Client::builder().use_preconfigured_tls((*tls.current()).clone()),
        None => reqwest::Client::builder(),
    };
    let client = builder.build().map_err(|e| {
        ApiError::new(
            ErrorKind::Internal,
            format!("cannot build the https client to forward this request: {e}"),
        )
    })?;
    Ok((client, "https"))
}
