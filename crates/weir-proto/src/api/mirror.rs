//! The status of a mirror sink (Elasticsearch or Loki), as `GET /api/v1/cluster` lists it
//! under `mirrors` and `weir cluster status` prints it. The mirror (`weir-mirror`) builds
//! these; its configuration reads [`Backend`] from the same names.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Which backend a sink writes to; spelled the same in the configuration, the API and
/// the metrics' `backend` label.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Elasticsearch `_bulk` (`elasticsearch`).
    Elasticsearch,
    /// Grafana Loki's push API (`loki`).
    Loki,
}

impl Backend {
    /// The name used in configuration, status and metrics (`backend="elasticsearch"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Elasticsearch => "elasticsearch",
            Backend::Loki => "loki",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a sink's circuit breaker.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// Requests flow (`closed`).
    Closed,
    /// Requests wait: the backend failed too often in a row (`open`).
    Open,
    /// One probe request is allowed (`half-open`).
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open`, `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    /// 0 closed, 1 open, 2 half-open (the value of `weir_mirror_breaker_state`).
    pub fn as_number(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status of one sink on the node that answered.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SinkStatus {
    /// The sink's name (`mirror.sinks[].name`).
    pub name: String,
    /// Where it writes.
    pub backend: Backend,
    /// The backend's URL.
    pub url: String,
    /// Its circuit breaker.
    pub breaker: BreakerState,
    /// Records the backend has stored (since this node started).
    pub records_sent: u64,
    /// Records dead-lettered (since this node started).
    pub dead_lettered: u64,
    /// Records held in the dead-letter log now.
    pub dead_letters_held: usize,
    /// Records this sink will never receive (released before delivery under disk
    /// pressure), since this node started.
    pub dropped: u64,
    /// Entries committed but not yet delivered, over the shards this node leads.
    pub lag_entries: u64,
    /// Estimated records behind (entries behind times the mean records per entry).
    pub lag_records: u64,
    /// Age of the oldest record being delivered, seconds (0 when caught up).
    pub lag_seconds: f64,
    /// The last failure, if any (`null` otherwise).
    pub last_error: Option<String>,
    /// Every shard, by number.
    pub shards: Vec<SinkShardStatus>,
}

/// One shard of a [`SinkStatus`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SinkShardStatus {
    /// The shard's number.
    pub shard: u32,
    /// Whether this node runs the shard's worker (it leads the shard).
    pub active: bool,
    /// The sink's committed cursor: every entry at or below it was delivered or
    /// dead-lettered.
    pub cursor: u64,
    /// The shard's commit watermark now.
    pub watermark: u64,
    /// Why the worker cannot advance (dead-letter log full, ...), if it cannot (`null`
    /// otherwise).
    pub stalled: Option<String>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::testing::round_trip;

    /// A sink behind a failing Loki: breaker half-open, one shard stalled.
    pub(crate) fn sink() -> SinkStatus {
        SinkStatus {
            name: "loki".into(),
            backend: Backend::Loki,
            url: "http://loki:3100".into(),
            breaker: BreakerState::HalfOpen,
            records_sent: 120_000,
            dead_lettered: 3,
            dead_letters_held: 2,
            dropped: 0,
            lag_entries: 41,
            lag_records: 20_500,
            lag_seconds: 12.5,
            last_error: Some("503 Service Unavailable".into()),
            shards: vec![
                SinkShardStatus {
                    shard: 0,
                    active: true,
                    cursor: 900,
                    watermark: 941,
                    stalled: Some("dead-letter log full".into()),
                },
                SinkShardStatus {
                    shard: 1,
                    active: false,
                    cursor: 880,
                    watermark: 880,
                    stalled: None,
                },
            ],
        }
    }

    #[test]
    fn a_sink_status_round_trips_with_the_names_the_api_always_used() {
        let json = round_trip(&sink());
        assert!(
            json.starts_with(
                r#"{"name":"loki","backend":"loki","url":"http://loki:3100","breaker":"half-open","records_sent":120000,"#
            ),
            "{json}"
        );
        assert!(
            json.ends_with(r#""watermark":880,"stalled":null}]}"#),
            "{json}"
        );
    }

    #[test]
    fn names_match_as_str() {
        for b in [Backend::Elasticsearch, Backend::Loki] {
            assert_eq!(serde_json::to_value(b).unwrap(), b.as_str());
        }
        for s in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
