//! The bodies of Weir's HTTP API (port 4318), one module per endpoint family: what the
//! server's handlers return and what the `weir` CLI, the chaos harness and the benches
//! read back, so that neither side spells a field by string.
//!
//! - [`search`]: `GET /api/v1/search`.
//! - [`labels`]: `GET /api/v1/labels` and `GET /api/v1/labels/{name}/values`.
//! - [`cluster`]: `GET /api/v1/cluster`.
//! - [`mirror`]: the status of a mirror sink (part of the cluster status).
//! - [`dlq`]: the dead-letter endpoints under `/api/v1/dlq`.
//! - [`keys`]: access keys and tenants under `/api/v1/keys` and `/api/v1/tenants`.
//! - [`rules`]: per-tenant ingest rules (filters, sampling) under `/api/v1/rules`.
//! - [`error`]: the body of every API error.
//!
//! Every type deserializes exactly what it serializes (the unit tests round-trip each
//! one and pin the JSON of those whose field order or skip rules matter). Fields that are
//! left out when empty (`skip_serializing_if`) read back as empty.
//!
//! ```
//! use weir_proto::api::{error::ErrorBody, search::SearchResponse};
//!
//! // What a client does with an answer: the API's error, or the typed body.
//! fn read(status: u16, body: &[u8]) -> Result<SearchResponse, String> {
//!     if status >= 400 {
//!         let e: ErrorBody = serde_json::from_slice(body).map_err(|e| e.to_string())?;
//!         return Err(e.error);
//!     }
//!     serde_json::from_slice(body).map_err(|e| e.to_string())
//! }
//!
//! let page = read(200, br#"{"hits":[],"total":0,"took_ms":1,"limit":100,
//!     "start":"2026-11-21T09:00:00Z","end":"2026-11-21T10:00:00Z"}"#).unwrap();
//! assert!(!page.partial && page.next_cursor.is_none() && page.notices.is_empty());
//! assert_eq!(read(400, br#"{"error":"bad query"}"#).unwrap_err(), "bad query");
//! ```

pub mod cluster;
pub mod dlq;
pub mod error;
pub mod keys;
pub mod labels;
pub mod mirror;
pub mod rules;
pub mod search;

#[cfg(test)]
pub(crate) mod testing {
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    /// Serializes `value`, reads it back, checks it is the same, and returns the JSON.
    pub fn round_trip<T>(value: &T) -> String
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let json = serde_json::to_string(value).expect("serializes");
        let back: T = serde_json::from_str(&json).expect("reads back what it wrote");
        assert_eq!(&back, value, "round trip through {json}");
        json
    }

    /// Checks that `value` serializes with its keys in alphabetical order at every level,
    /// as `serde_json::json!` (a sorted map) wrote the bodies these types replaced.
    pub fn keys_sorted<T: Serialize>(value: &T) {
        let direct = serde_json::to_string(value).expect("serializes");
        let sorted = serde_json::to_string(&serde_json::to_value(value).expect("to value"))
            .expect("serializes");
        assert_eq!(direct, sorted, "fields are declared in alphabetical order");
    }
}
