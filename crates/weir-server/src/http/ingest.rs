//! What the HTTP ingest protocols (OTLP/HTTP, Loki push, Elasticsearch bulk) share: the
//! body's content encoding undone within the request limit, and the retry hint on
//! overload. (Their tenant is the caller's: [`super::access`].)

use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use weir_proto::ApiError;

use super::HttpError;
use crate::config::Config;

/// Loki's (and Grafana's, Promtail's, Mimir's) tenant header.
pub const SCOPE_ORG_ID: &str = "x-scope-orgid";

/// The request body with its `Content-Encoding` undone (`gzip`, `snappy`, `identity` or
/// none), inflated no further than `limits.batch_bytes_max`; the result is checked
/// against that limit too, as an uncompressed body would be.
///
/// # Errors
/// 415 for an encoding Weir does not take; 400 for a body that does not inflate or
/// inflates past the limit (a compression bomb is refused before it is inflated whole).
pub fn decoded_body(
    headers: &HeaderMap,
    body: axum::body::Bytes,
    config: &Config,
) -> Result<axum::body::Bytes, HttpError> {
    let max = config.limits.batch_bytes_max;
    let encoding = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let inflated = match encoding.as_str() {
        "" | "identity" => body,
        "gzip" | "x-gzip" => weir_ingest::gunzip(&body, max)
            .map_err(|e| HttpError(ApiError::invalid(e.to_string())))?
            .into(),
        "snappy" => weir_ingest::unsnappy(&body, max)
            .map_err(|e| HttpError(ApiError::invalid(e.to_string())))?
            .into(),
        other => {
            return Err(HttpError(ApiError::new(
                weir_proto::ErrorKind::InvalidArgument,
                format!("content-encoding {other:?} is not supported; send gzip, snappy or none"),
            )))
        }
    };
    weir_ingest::check_batch_bytes(inflated.len(), &config.limits.to_limits())
        .map_err(|e| HttpError(ApiError::invalid(e.to_string())))?;
    Ok(inflated)
}

/// The media type of a request, lower case, without parameters (`application/json`).
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Adds `Retry-After` to a 429 or 503 answer: `secs` (the error's
/// [`weir_proto::ApiError::retry_after_secs`]: 1 unless it knows better, as a tenant's rate
/// limit does). Every client of these protocols backs off on it (OTLP exporters honour
/// it; Promtail, Alloy, Fluent Bit and Vector retry).
pub fn with_retry_after(mut response: Response, secs: u64) -> Response {
    let status = response.status().as_u16();
    if status == 429 || status == 503 {
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(secs.max(1)),
        );
    }
    response
}
