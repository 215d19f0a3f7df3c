//! OTLP over HTTP: `POST /v1/logs`, as the OpenTelemetry SDKs' and Collector's
//! `otlphttp` exporters send it.
//!
//! - Body: `ExportLogsServiceRequest` as `application/x-protobuf` or `application/json`
//!   (OTLP/JSON: lowerCamelCase keys, hex trace and span ids, enums as numbers or names,
//!   unknown fields ignored), optionally `Content-Encoding: gzip`.
//! - Answer: 200 with `ExportLogsServiceResponse` in the request's content type;
//!   `partial_success` lists the records refused, each by its place in the export.
//! - Errors carry a `google.rpc.Status` in the request's content type: 400 for bad input
//!   (not retried), 415 for another content type, 429 / 503 with `Retry-After` when the
//!   node is full or the commit did not happen in time (retried, with the same bytes: the
//!   retry is recognised and not stored twice).
//! - The tenant is `X-Scope-OrgID` or `x-weir-tenant` (absent: `default`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use prost::Message;
use weir_proto::otlp::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use weir_proto::ApiError;

use super::ingest::{decoded_body, media_type, with_retry_after};
use crate::auth::Caller;
use crate::protocol::Protocol;
use crate::state::NodeState;

/// The OTLP/HTTP routes.
pub fn router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/v1/logs", post(export))
        .with_state(state)
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// A `google.rpc.Code`.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What was wrong.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// The two encodings OTLP/HTTP defines.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

async fn export(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let encoding = match media_type(&headers).as_str() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        other => {
            return error(
                Encoding::Json,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!(
                    "content-type {other:?} is not OTLP; send application/x-protobuf or application/json"
                ),
            )
        }
    };
    match handle(&st, &caller.tenant, &headers, body, encoding).await {
        Ok(resp) => answer(encoding, &resp),
        Err(e) => {
            let status =
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            with_retry_after(error(encoding, status, &e.message), e.retry_after_secs())
        }
    }
}

async fn handle(
    st: &NodeState,
    tenant: &str,
    headers: &HeaderMap,
    body: Bytes,
    encoding: Encoding,
) -> Result<ExportLogsServiceResponse, ApiError> {
    let body = decoded_body(headers, body, &st.config).map_err(|e| e.0)?;
    let req = match encoding {
        Encoding::Protobuf => ExportLogsServiceRequest::decode(body.clone()).map_err(|e| {
            ApiError::invalid(format!("body is not an OTLP ExportLogsServiceRequest: {e}"))
        })?,
        Encoding::Json => {
            weir_ingest::decode_otlp_json(&body).map_err(|e| ApiError::invalid(e.to_string()))?
        }
    };
    crate::protocol::export_otlp(&st.appender, Protocol::OtlpHttp, req, tenant, Some(&body)).await
}

fn answer(encoding: Encoding, resp: &ExportLogsServiceResponse) -> Response {
    match encoding {
        Encoding::Protobuf => (
            [("content-type", "application/x-protobuf")],
            resp.encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => {
            // OTLP/JSON: lowerCamelCase, int64 as a string.
            let body = match &resp.partial_success {
                None => serde_json::json!({}),
                Some(p) => serde_json::json!({
                    "partialSuccess": {
                        "rejectedLogRecords": p.rejected_log_records.to_string(),
                        "errorMessage": p.error_message,
                    }
                }),
            };
            ([("content-type", "application/json")], body.to_string()).into_response()
        }
    }
}

/// An error answer with a `google.rpc.Status` body.
fn error(encoding: Encoding, status: StatusCode, message: &str) -> Response {
    let code = grpc_code(status);
    match encoding {
        Encoding::Protobuf => (
            status,
            [("content-type", "application/x-protobuf")],
            RpcStatus {
                code,
                message: message.to_owned(),
            }
            .encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => (
            status,
            [("content-type", "application/json")],
            serde_json::json!({ "code": code, "message": message }).to_string(),
        )
            .into_response(),
    }
}

/// A refusal before the handler (no key, wrong scope) as an OTLP exporter reads it: a
/// `google.rpc.Status` in the request's encoding (JSON unless it sent protobuf).
pub(super) fn refusal(headers: &HeaderMap, status: StatusCode, message: &str) -> Response {
    let encoding = match media_type(headers).as_str() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        _ => Encoding::Json,
    };
    error(encoding, status, message)
}

/// The `google.rpc.Code` that goes with an HTTP status (per the OTLP/HTTP spec's mapping).
fn grpc_code(status: StatusCode) -> i32 {
    match status.as_u16() {
        400 | 415 => 3, // INVALID_ARGUMENT
        413 => 11,      // OUT_OF_RANGE
        429 => 8,       // RESOURCE_EXHAUSTED
        503 => 14,      // UNAVAILABLE
        404 => 5,       // NOT_FOUND
        401 => 16,      // UNAUTHENTICATED
        403 => 7,       // PERMISSION_DENIED
        _ => 13,        // INTERNAL
    }
}
