//! Validation and normalisation of incoming logs to Weir's record model, the decoders and
//! mappings of the protocols agents already speak, and shard routing. Pure: no I/O, no
//! async, no clock (callers pass `now_ns`).
//!
//! An append goes through three steps before the proposer sees it:
//!
//! 1. **Decode and map** (every protocol but Weir's own): the body is inflated within
//!    `limits.batch_bytes_max` ([`gunzip`], [`unsnappy`]), decoded, and mapped to an
//!    [`AppendRequest`]; records the mapping cannot make are refused with their place in
//!    the request, as `normalize` refuses records.
//!    - OTLP: protobuf (prost) or OTLP/JSON ([`decode_otlp_json`]), then
//!      [`otlp_to_append`], which renders OTLP values as text and refuses records whose
//!      trace or span id has the wrong length;
//!    - Loki push: [`decode_loki_proto`] or [`decode_loki_json`], then [`loki_to_append`]
//!      (labels parsed by [`parse_loki_labels`]);
//!    - Elasticsearch `_bulk`: [`parse_bulk`] into operations, [`es_doc_to_record`] per
//!      document;
//!    - syslog: [`SyslogFramer`] cuts a TCP stream into messages, [`parse_syslog`] makes a
//!      record of each (it never fails: a malformed message is kept whole).
//! 2. **Normalise**: [`normalize`] checks the tenant and the batch (whole-request
//!    [`Error`]s) and then each record against [`Limits`]. A bad record is refused on its
//!    own, with its position and a reason naming the limit and its config key; the rest of
//!    the batch goes on. Accepted records become [`StoredRecord`]s: timestamp 0 replaced by
//!    the receive time, level a number, body valid UTF-8, ids lower-case hex.
//! 3. **Route**: [`split_by_shard`] cuts the batch into one [`StoredBatch`] per shard
//!    ([`shard_for`]: a stable hash of the tenant and the stream identity, so one stream
//!    always lands in one shard, in order), each with the original positions of its
//!    records so per-record outcomes can be reported.
//!
//! ```
//! use weir_ingest::{normalize, split_by_shard, Limits};
//! use weir_proto::v1::{AppendRequest, Record};
//!
//! let now_ns = 1_700_000_000_000_000_000;
//! let req = AppendRequest {
//!     tenant: "acme".into(),
//!     records: vec![
//!         Record { level: "WARNING".into(), body: b"disk 91% full".to_vec(),
//!                  service: "api".into(), ..Default::default() },
//!         Record { level: "loud".into(), body: b"?".to_vec(), ..Default::default() },
//!     ],
//!     ..Default::default()
//! };
//!
//! // 1. Validate and normalise: record 1 is refused, record 0 kept.
//! let n = normalize(req, now_ns, &Limits::default())?;
//! assert_eq!(n.records.len(), 1);
//! assert_eq!(n.records[0].1.timestamp_ns, now_ns); // 0 means "received now"
//! assert_eq!(n.records[0].1.level, weir_proto::Level::Warn as u32);
//! assert_eq!(n.rejected[0].index, 1);
//!
//! // 2. Route: one batch per shard that has records, with their positions in the request.
//! let pieces = split_by_shard(n, 8, now_ns);
//! assert_eq!(pieces.len(), 1);
//! let (shard, batch, positions) = &pieces[0];
//! assert!(shard.0 < 8);
//! assert_eq!((batch.tenant.as_str(), positions.as_slice()), ("acme", &[0][..]));
//! # Ok::<(), weir_ingest::Error>(())
//! ```
//!
//! The decisions behind the rules (why invalid UTF-8 is repaired rather than refused, how
//! OTLP values are rendered, what the hash covers) are in `docs/ingest.md`; each protocol's
//! mapping is tabled in its module's doc ([`loki`], [`es_bulk`], [`syslog`], [`otlp_json`];
//! everything in them is also exported at the crate root).

pub mod compress;
pub mod es_bulk;
pub mod es_flat;
mod level;
mod limits;
pub mod loki;
mod normalize;
mod otlp;
pub mod otlp_json;
mod route;
pub mod syslog;
mod timefmt;

pub use compress::{gunzip, unsnappy};
pub use es_bulk::{es_doc_to_record, parse_bulk, BulkAction, BulkItem, BulkItemError, BulkOp};
pub use level::{level_from_otlp, parse_level};
pub use limits::Limits;
pub use loki::{
    decode_loki_json, decode_loki_proto, loki_to_append, parse_loki_labels, LOKI_LABEL_FIELDS,
};
pub use normalize::{
    check_batch_bytes, normalize, normalize_record, normalize_tenant, Normalized, Rejection,
    REJECTION_CODES,
};
pub use otlp::{flattened_position, otlp_to_append, render_any_value, OtlpShape};
pub use otlp_json::{decode_otlp_json, OTLP_JSON_DEPTH_MAX};
pub use route::{shard_for, split_by_shard, stream_hash};
pub use syslog::{parse_syslog, SyslogFramer};
pub use timefmt::parse_rfc3339;

#[doc(no_inline)]
pub use weir_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
#[doc(no_inline)]
pub use weir_proto::v1::{AppendRequest, Record, RecordError, StoredBatch, StoredRecord};
#[doc(no_inline)]
pub use weir_proto::{Level, ShardId};

/// Whole-request errors: the request is refused and nothing of it is stored. The server
/// maps every variant to gRPC `INVALID_ARGUMENT` / HTTP 400 (retrying the same request
/// cannot succeed; to Loki, Fluent Bit and Vector clients 400 means "drop it", which is
/// right for data that can never be stored). Messages name the limit's config key and say
/// what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The encoded request is larger than `limits.batch_bytes_max`.
    #[error(
        "request is {bytes} bytes, limit {limit} (limits.batch_bytes_max); send smaller batches"
    )]
    BatchTooLarge {
        /// Encoded size of the request.
        bytes: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The request holds more than `limits.batch_records_max` records.
    #[error(
        "request has {count} records, limit {limit} (limits.batch_records_max); send smaller batches"
    )]
    TooManyRecords {
        /// Records in the request.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A `producer_id` without a sequence: every batch after the first would look like a
    /// retry of it and be dropped as a duplicate.
    #[error("producer_id {producer_id:?} is set but sequence is 0: sequences start at 1 and increase with every new batch of the producer")]
    MissingSequence {
        /// The producer id as sent, shortened to 64 characters.
        producer_id: String,
    },
    /// The tenant name is too long or has characters outside `[A-Za-z0-9_.-]`.
    #[error("tenant {tenant:?} is invalid: {reason}")]
    BadTenant {
        /// The tenant as sent, shortened to 64 characters.
        tenant: String,
        /// What is wrong with it, naming the limit where one applies.
        reason: String,
    },
    /// A compressed body inflates past `limits.batch_bytes_max`. Refused as soon as the
    /// output would pass the limit, so a small "compression bomb" costs the limit at most.
    #[error(
        "{encoding} body inflates past {limit} bytes (limits.batch_bytes_max); send smaller requests"
    )]
    Decompressed {
        /// `gzip` or `snappy`.
        encoding: &'static str,
        /// The configured limit.
        limit: usize,
    },
    /// The body is not what its content type or encoding says: bad gzip or snappy data,
    /// protobuf that does not decode, JSON of the wrong shape, an NDJSON action line that
    /// is not JSON.
    #[error("malformed {format} body: {reason}")]
    Malformed {
        /// What was being decoded: `gzip`, `snappy`, `loki protobuf`, `loki json`,
        /// `otlp json`, `bulk`.
        format: &'static str,
        /// A sentence naming what was wrong and where (line, byte offset, stream and value
        /// index, JSON path).
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Longest piece of user text echoed back in an error (characters).
const QUOTE_MAX_CHARS: usize = 64;

/// User text shortened to [`QUOTE_MAX_CHARS`] (with `…` when cut), so that a 16 MiB label
/// never ends up in a response or a log line.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(QUOTE_MAX_CHARS) {
        None => s.to_owned(),
        Some((cut, _)) => format!("{}…", &s[..cut]),
    }
}

/// User text shortened and quoted with Rust's escaping (control characters made visible).
fn quote(s: &str) -> String {
    format!("{:?}", shorten(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_shortens_and_escapes() {
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
        let long = "é".repeat(100);
        let q = quote(&long);
        assert_eq!(q.chars().filter(|&c| c == 'é').count(), QUOTE_MAX_CHARS);
        assert!(q.ends_with("…\""));
    }

    #[test]
    fn whole_request_errors_name_their_config_key() {
        let e = Error::BatchTooLarge {
            bytes: 20,
            limit: 10,
        }
        .to_string();
        assert!(
            e.contains("limits.batch_bytes_max") && e.contains("20"),
            "{e}"
        );
        let e = Error::TooManyRecords {
            count: 20,
            limit: 10,
        }
        .to_string();
        assert!(
            e.contains("limits.batch_records_max") && e.contains("20"),
            "{e}"
        );
        let e = Error::Decompressed {
            encoding: "gzip",
            limit: 16777216,
        }
        .to_string();
        assert_eq!(
            e,
            "gzip body inflates past 16777216 bytes (limits.batch_bytes_max); send smaller requests"
        );
        let e = Error::Malformed {
            format: "bulk",
            reason: "line 3: the action line is not JSON".into(),
        }
        .to_string();
        assert_eq!(
            e,
            "malformed bulk body: line 3: the action line is not JSON"
        );
    }
}
