//! The dead-letter endpoints: records a mirror's backend refused for good, kept by the
//! sink until they are replayed.
//!
//! - `GET /api/v1/dlq`: [`DlqSinksResponse`].
//! - `GET /api/v1/dlq/{sink}?limit=N&after=SEQ`: [`DlqListResponse`].
//! - `GET /api/v1/dlq/{sink}/{seq}`: one [`DeadLetter`].
//! - `POST /api/v1/dlq/{sink}/replay` with an optional [`ReplayRequest`]: [`ReplayReport`].
//!
//! The listing bodies (and a [`DeadLetter`], which is also a line of the sink's dead-letter
//! log on disk) keep their fields in alphabetical order: that is the order they have
//! always been written in, and a test holds them to it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::mirror::Backend;

/// The answer of `GET /api/v1/dlq`: each sink and how many dead letters it holds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DlqSinksResponse {
    /// Every sink of the node, in configuration order.
    pub sinks: Vec<DlqSink>,
}

/// One sink in a [`DlqSinksResponse`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DlqSink {
    /// Where the sink writes.
    pub backend: Backend,
    /// Records held in its dead-letter log.
    pub dead_letters: usize,
    /// The sink's name.
    pub sink: String,
}

/// The answer of `GET /api/v1/dlq/{sink}`: a page of its dead letters, oldest first.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DlqListResponse {
    /// At most `limit` (default 100) dead letters numbered above `after`, oldest first.
    pub dead_letters: Vec<DeadLetter>,
    /// The sink's name.
    pub sink: String,
    /// Every dead letter the sink holds, not only this page's.
    pub total: usize,
}

/// One dead-lettered record: the answer of `GET /api/v1/dlq/{sink}/{seq}`, an element of
/// a [`DlqListResponse`], and a line of the sink's dead-letter log.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// When it was dead-lettered, nanoseconds since the Unix epoch.
    pub at_ns: i64,
    /// The raft log index of its batch.
    pub index: u64,
    /// Its position within the batch.
    pub offset: u32,
    /// Why the backend refused it (its status and error, as it answered).
    pub reason: String,
    /// The record, every stored field.
    pub record: DeadLetterRecord,
    /// Its number in the sink's dead-letter log, from 1, never reused: what
    /// `weir dlq show` and [`ReplayRequest::seqs`] name.
    pub seq: u64,
    /// The shard whose log holds it.
    pub shard: u32,
    /// Its tenant.
    pub tenant: String,
}

/// The record of a [`DeadLetter`] as stored in the log: unlike a search
/// [`Hit`](super::search::Hit), the level is its stored number and the timestamp only
/// nanoseconds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRecord {
    /// Its attributes (structured fields that are not stream labels), by name.
    pub attributes: BTreeMap<String, String>,
    /// The log line.
    pub body: String,
    /// Its `cluster` (empty when unknown).
    pub cluster: String,
    /// Its stream labels, by name.
    pub labels: BTreeMap<String, String>,
    /// Its level as stored: 1 trace, 2 debug, 3 info, 4 warn, 5 error, 6 fatal
    /// ([`Level`](crate::Level)).
    pub level: u32,
    /// Its Kubernetes `namespace` (empty when unknown).
    pub namespace: String,
    /// Its `pod` (empty when unknown).
    pub pod: String,
    /// The `service` it came from (empty when unknown).
    pub service: String,
    /// The span it belongs to, hex (empty when none).
    pub span_id: String,
    /// When it happened, nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    /// The trace it belongs to, hex (empty when none).
    pub trace_id: String,
}

/// The body of `POST /api/v1/dlq/{sink}/replay`; an empty body replays every dead letter.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplayRequest {
    /// Only the dead letters with these numbers; every one when absent or `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seqs: Option<Vec<u64>>,
}

/// The answer of `POST /api/v1/dlq/{sink}/replay`: what the replay did.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records delivered and removed from the dead-letter log.
    pub delivered: usize,
    /// Records refused again (kept, with the new reason).
    pub rejected_again: usize,
    /// Records not tried because the backend stayed unavailable (kept).
    pub not_attempted: usize,
    /// Why the backend was unavailable, when it was (`null` otherwise).
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::{keys_sorted, round_trip};

    fn letter(seq: u64) -> DeadLetter {
        DeadLetter {
            at_ns: 1_795_255_461_000_000_000,
            index: 4411,
            offset: 3,
            reason: "400 mapper_parsing_exception: failed to parse field [status]".into(),
            record: DeadLetterRecord {
                attributes: [
                    ("order_id".to_owned(), "42".to_owned()),
                    ("status".to_owned(), "paid".to_owned()),
                ]
                .into(),
                body: "poison \"quoted\" line".into(),
                cluster: "eu-1".into(),
                labels: [("team".to_owned(), "payments".to_owned())].into(),
                level: 5,
                namespace: "prod".into(),
                pod: "checkout-7d9f-x2".into(),
                service: "checkout".into(),
                span_id: String::new(),
                timestamp_ns: 1_795_255_460_123_456_789,
                trace_id: "ab".repeat(16),
            },
            seq,
            shard: 1,
            tenant: "default".into(),
        }
    }

    #[test]
    fn dead_letter_bodies_round_trip_with_sorted_keys() {
        let sinks = DlqSinksResponse {
            sinks: vec![
                DlqSink {
                    backend: Backend::Elasticsearch,
                    dead_letters: 2,
                    sink: "es".into(),
                },
                DlqSink {
                    backend: Backend::Loki,
                    dead_letters: 0,
                    sink: "loki".into(),
                },
            ],
        };
        keys_sorted(&sinks);
        assert_eq!(
            round_trip(&sinks),
            r#"{"sinks":[{"backend":"elasticsearch","dead_letters":2,"sink":"es"},{"backend":"loki","dead_letters":0,"sink":"loki"}]}"#
        );
        let list = DlqListResponse {
            dead_letters: vec![letter(7), letter(9)],
            sink: "es".into(),
            total: 12,
        };
        keys_sorted(&list);
        round_trip(&list);
        let one = letter(7);
        assert_eq!(
            round_trip(&one),
            concat!(
                r#"{"at_ns":1795255461000000000,"index":4411,"offset":3,"#,
                r#""reason":"400 mapper_parsing_exception: failed to parse field [status]","#,
                r#""record":{"attributes":{"order_id":"42","status":"paid"},"#,
                r#""body":"poison \"quoted\" line","cluster":"eu-1","labels":{"team":"payments"},"#,
                r#""level":5,"namespace":"prod","pod":"checkout-7d9f-x2","service":"checkout","#,
                r#""span_id":"","timestamp_ns":1795255460123456789,"#,
                r#""trace_id":"abababababababababababababababab"},"#,
                r#""seq":7,"shard":1,"tenant":"default"}"#
            )
        );
    }

    #[test]
    fn a_replay_request_and_report_round_trip() {
        let some = ReplayRequest {
            seqs: Some(vec![1, 2]),
        };
        assert_eq!(round_trip(&some), r#"{"seqs":[1,2]}"#);
        assert_eq!(round_trip(&ReplayRequest::default()), "{}");
        let null: ReplayRequest = serde_json::from_str(r#"{"seqs":null}"#).unwrap();
        assert_eq!(null, ReplayRequest::default());
        assert!(serde_json::from_str::<ReplayRequest>(r#"{"seqs":[1,-2]}"#).is_err());

        let stayed_down = ReplayReport {
            delivered: 0,
            rejected_again: 0,
            not_attempted: 2,
            error: Some("backend unavailable after 5 attempts: 503".into()),
        };
        round_trip(&stayed_down);
        let fixed = ReplayReport {
            delivered: 2,
            rejected_again: 1,
            not_attempted: 0,
            error: None,
        };
        assert_eq!(
            round_trip(&fixed),
            r#"{"delivered":2,"rejected_again":1,"not_attempted":0,"error":null}"#
        );
    }
}
