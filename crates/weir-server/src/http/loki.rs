//! Loki's push API, as Promtail, Grafana Alloy, Fluent Bit and Vector send it.
//!
//! - `POST /loki/api/v1/push`: `logproto.PushRequest`, snappy block compressed
//!   (`application/x-protobuf`, the default), or JSON (`application/json`, optionally
//!   `Content-Encoding: gzip`). The tenant is `X-Scope-OrgID`.
//! - 204 when every entry is stored. When some entries are refused the others are stored
//!   and the answer is 400 with Loki-style text naming the first refused entry and how
//!   many there were: every Loki client drops a batch on 400 rather than retry it, which is
//!   right, since retrying cannot fix those entries.
//! - 429 (node full) and 503 (not committed in time) carry `Retry-After`: clients retry,
//!   and a retried identical push is recognised and not stored twice.
//! - `GET /ready` (Vector's health check) and `GET /loki/api/v1/status/buildinfo`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use weir_proto::ApiError;

use super::ingest::{decoded_body, media_type, with_retry_after};
use crate::auth::Caller;
use crate::protocol::{keyed, merge_rejections, request_key, Protocol};
use crate::state::NodeState;

/// The Loki routes of the ingest side.
pub fn router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/loki/api/v1/push", post(push))
        .route("/api/prom/push", post(push))
        .route("/ready", get(ready))
        .route("/loki/api/v1/status/buildinfo", get(buildinfo))
        .with_state(state)
}

async fn push(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match handle(&st, &caller.tenant, &headers, body).await {
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Ok(Some(refused)) => (StatusCode::BAD_REQUEST, refused).into_response(),
        Err(e) => {
            let status =
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            with_retry_after(
                (status, format!("{}\n", e.message)).into_response(),
                e.retry_after_secs(),
            )
        }
    }
}

/// Stores a push; `Some(text)` when entries were refused (the rest is stored).
async fn handle(
    st: &NodeState,
    tenant: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Option<String>, ApiError> {
    // The key hashes the decoded body as it came (re-encoding the request to hash it
    // would cost a second encode per push).
    let (req, content) = if media_type(headers) == "application/json" {
        let body = decoded_body(headers, body, &st.config).map_err(|e| e.0)?;
        let req =
            weir_ingest::decode_loki_json(&body).map_err(|e| ApiError::invalid(e.to_string()))?;
        (req, body.to_vec())
    } else {
        // Protobuf is snappy block compressed by the protocol itself, whatever the
        // Content-Encoding says.
        let raw = weir_ingest::unsnappy(&body, st.config.limits.batch_bytes_max)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        weir_ingest::check_batch_bytes(raw.len(), &st.config.limits.to_limits())
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let req =
            weir_ingest::decode_loki_proto(&raw).map_err(|e| ApiError::invalid(e.to_string()))?;
        (req, raw)
    };
    let timestamped = req.streams.iter().flat_map(|s| &s.entries).all(|e| {
        e.timestamp
            .as_ref()
            .is_some_and(|t| t.seconds != 0 || t.nanos != 0)
    });
    let key = request_key(Protocol::Loki, &content, timestamped);
    drop(content);
    let (mut append, mut rejected) = weir_ingest::loki_to_append(req, tenant);
    st.metrics.count_rejected(&rejected);
    if !append.records.is_empty() {
        keyed(&mut append, key);
        let resp = st.appender.append_via(Protocol::Loki, append).await?;
        rejected = merge_rejections(rejected, resp.rejected);
    }
    let Some(first) = rejected.first() else {
        return Ok(None);
    };
    Ok(Some(format!(
        "entry {} (counting every stream's entries in order) was refused: {}; {} of the push's entries were refused, the others were stored\n",
        first.index,
        first.reason,
        rejected.len()
    )))
}

async fn ready() -> &'static str {
    "ready\n"
}

/// What a client asking which Loki this is learns: the Loki API version Weir answers to.
async fn buildinfo() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": "3.4.0",
        "revision": concat!("weir-", env!("CARGO_PKG_VERSION")),
        "branch": "",
        "buildUser": "weir",
        "buildDate": "",
        "goVersion": "",
    }))
}
