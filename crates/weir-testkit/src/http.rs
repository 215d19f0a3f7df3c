//! HTTP odds and ends shared by the fakes: responses, query strings, percent-decoding,
//! and the admin API's request bodies.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::StatusCode;
use serde::{Deserialize, Serialize};

/// A status code, or 500 for a number that is not one.
pub(crate) fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A response with a body and a content type.
pub(crate) fn response(code: u16, content_type: &str, body: impl Into<Body>) -> Response {
    let mut resp = (status(code), body.into()).into_response();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    resp
}

/// A JSON response.
pub(crate) fn json(code: u16, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    response(code, "application/json", bytes)
}

/// An empty response.
pub(crate) fn empty(code: u16) -> Response {
    (status(code), Body::empty()).into_response()
}

/// Adds a header if name and value are valid.
pub(crate) fn add_header(resp: &mut Response, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        resp.headers_mut().append(n, v);
    }
}

/// Decodes `%XX` escapes (and `+` as space when `plus_is_space`).
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string as decoded `(key, value)` pairs, in order.
pub(crate) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// The path split into decoded segments (empty segments dropped).
pub(crate) fn path_segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false))
        .collect()
}

/// `POST /_testkit/fail`.
#[derive(Debug, Deserialize)]
pub(crate) struct FailBody {
    pub requests: usize,
    #[serde(default = "default_fail_status")]
    pub status: u16,
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
}

fn default_fail_status() -> u16 {
    503
}

/// `POST /_testkit/down`.
#[derive(Debug, Deserialize)]
pub(crate) struct DownBody {
    pub down: bool,
    #[serde(default)]
    pub for_ms: Option<u64>,
}

/// `POST /_testkit/latency`.
#[derive(Debug, Deserialize)]
pub(crate) struct LatencyBody {
    pub ms: u64,
}

/// A plain-text 400 for a bad admin request.
pub(crate) fn admin_error(message: impl std::fmt::Display) -> Response {
    response(400, "text/plain; charset=utf-8", format!("{message}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%2Ab+c", true), "a*b c");
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%4", false), "%4");
        assert_eq!(
            query_pairs(Some(
                "refresh=wait_for&filter_path=items.*.error,errors&pretty"
            )),
            vec![
                ("refresh".to_string(), "wait_for".to_string()),
                (
                    "filter_path".to_string(),
                    "items.*.error,errors".to_string()
                ),
                ("pretty".to_string(), String::new())
            ]
        );
    }
}
