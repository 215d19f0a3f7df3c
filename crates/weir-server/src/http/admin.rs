//! Access keys and tenants over HTTP (admin scope; bodies in
//! [`weir_proto::api::keys`]): what `weir keys` and `weir tenants` call.
//!
//! A change of the key table is proposed by the node that leads its raft group
//! ([`crate::keytable`]); any other node forwards the request there (to the leader's
//! advertised HTTP address, `cluster.nodes[].http`) with the caller's credentials, which
//! are valid there since every node holds the same table.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use weir_proto::api::keys::{
    CreateKeyRequest, CreatedKey, KeyInfo, KeysResponse, TenantInfo, TenantsResponse,
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
            "the node this request was forwarded to does not lead the key table either \
             (leadership is moving); retry",
        )
        .into());
    }
    let leader = leader.or_else(|| st.raft.leader_of(crate::keytable::KEY_SHARD));
    let member = leader.and_then(|id| st.config.cluster.nodes.iter().find(|m| m.id == id));
    let Some(member) = member.filter(|m| !m.http.is_empty() && m.id != st.raft.node_id()) else {
        return Err(ApiError::new(
            ErrorKind::Unavailable,
            format!(
                "the key table's group has no leader this node can reach (leader: {leader:?}; \
                 its cluster.nodes[].http must be set); retry"
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
                "cannot forward to node {} ({url}), which leads the key table: {e}",
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
