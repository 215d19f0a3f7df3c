//! The HTTP front door (port 4318): one server that owns the listener, its limits and
//! timeouts, the tenant of a request and the shape of every error; each API family is a
//! module with a router of its own, mounted here.
//!
//! - [`serve`]: the accept loop (connection cap, header-read timeout, graceful stop).
//! - [`api`]: Weir's own API: search, labels, cluster status, dead letters, health,
//!   metrics; [`histogram`]: counts per time bucket and level; [`tail`]: records as
//!   they commit (Server-Sent Events).
//! - [`otlp`]: OTLP over HTTP (`POST /v1/logs`).
//! - [`loki`]: Loki push (`POST /loki/api/v1/push`, `GET /ready`).
//! - [`loki_query`]: the Loki query API (LogQL: `query_range`, `query`, labels, series).
//! - [`es`]: Elasticsearch `_bulk` and the handshakes its clients make; [`es_search`]:
//!   its search API (`_search`, `_msearch`, `_mapping`, `_field_caps`).
//! - [`ingest`]: what the ingest protocols share (content encoding, retry hint).
//! - [`access`]: every route's need (scope) in one table, and the one extractor that
//!   turns a request's key and tenant header into a [`Caller`](crate::auth::Caller).
//! - [`admin`]: access keys and tenants (`/api/v1/keys`, `/api/v1/tenants`).
//!
//! Every answer of 400 and above has a body that says what was wrong: the API's own JSON
//! `{"error": ...}`, or, for what the router or the limits refuse before a handler runs
//! (404, 405, 413, 414, 431), the same shape written by the front door itself.

pub mod access;
pub mod admin;
pub mod api;
pub mod es;
pub mod es_search;
pub mod histogram;
pub mod ingest;
pub mod loki;
pub mod loki_detected;
pub mod loki_query;
pub mod otlp;
pub mod serve;
pub mod tail;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use weir_proto::api::error::ErrorBody;
use weir_proto::{ApiError, DEFAULT_TENANT};

use crate::config::Config;
use crate::state::NodeState;

pub use api::rfc3339;
pub use weir_proto::TENANT_HEADER;

/// Every HTTP route of the node, behind the limits every request passes.
pub fn router(state: Arc<NodeState>) -> Router {
    let body_limit = state.config.limits.batch_bytes_max;
    api::router(state.clone())
        .merge(otlp::router(state.clone()))
        .merge(loki::router(state.clone()))
        .merge(loki_query::router(state.clone()))
        .merge(es::router(state.clone()))
        .merge(admin::router(state.clone()))
        // Per route (it reads the matched path): every handler runs with a checked caller.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::authorize,
        ))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(state, explain_errors))
}

/// An [`ApiError`] as an HTTP response: status from the one mapping, body an
/// [`ErrorBody`] (`{"error": message}`).
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let secs = self.0.retry_after_secs();
        ingest::with_retry_after(error_response(status, self.0.message), secs)
    }
}

fn error_response(status: StatusCode, error: String) -> Response {
    (status, Json(ErrorBody { error })).into_response()
}

/// The tenant header `name` names, checked by the ingest rules; `None` when absent.
///
/// # Errors
/// 400 naming the header and the rule it breaks.
pub fn tenant_in(
    headers: &HeaderMap,
    name: &str,
    config: &Config,
) -> Result<Option<String>, HttpError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        HttpError(ApiError::invalid(format!(
            "header {name} is not ASCII text; a tenant is 1-{} of A-Z a-z 0-9 _ . - \
             (empty or absent means {DEFAULT_TENANT:?})",
            config.limits.tenant_bytes_max
        )))
    })?;
    weir_ingest::normalize_tenant(text, &config.limits.to_limits())
        .map(Some)
        .map_err(|e| HttpError(ApiError::invalid(format!("header {name}: {e}"))))
}

async fn not_found(request: Request) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!(
            "no route for {} {}; Weir's API is under /api/v1 (search, histogram, tail, labels, cluster, dlq), \
             plus /healthz, /readyz and /metrics; ingest: /v1/logs (OTLP), \
             /loki/api/v1/push, /_bulk; LogQL: /loki/api/v1/query_range, /query, /labels, \
             /series, /tail; Elasticsearch: /_search, /_msearch, /{{index}}/_mapping",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Checks the request line and headers against `[http]` limits, answering 414 and 431
/// with a body that names the limit; and gives a body to any error answer that has none
/// (a 405 from the router, a 413 from the body limit), so no refusal is a bare status.
async fn explain_errors(
    State(st): State<Arc<NodeState>>,
    request: Request,
    next: Next,
) -> Response {
    let http = &st.config.http;
    let uri_bytes = request.uri().to_string().len();
    if uri_bytes > http.request_uri_bytes_max {
        return error_response(
            StatusCode::URI_TOO_LONG,
            format!(
                "the request URI is {uri_bytes} bytes, limit {} (http.request_uri_bytes_max); \
                 send long queries in fewer parameters",
                http.request_uri_bytes_max
            ),
        );
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > http.request_headers_bytes_max {
        return error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request headers are {header_bytes} bytes, limit {} \
                 (http.request_headers_bytes_max)",
                http.request_headers_bytes_max
            ),
        );
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let empty = axum::body::HttpBody::size_hint(response.body()).exact() == Some(0);
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the request body is larger than {} bytes (limits.batch_bytes_max); send smaller \
             requests",
            st.config.limits.batch_bytes_max
        ),
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("{path} does not take {method}; see the API docs for its methods")
        }
        // A handler's own text answer (readyz says why it is not ready) stays as it is.
        _ if !empty => return response,
        other => format!("{other} for {method} {path}"),
    };
    error_response(status, message)
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}
