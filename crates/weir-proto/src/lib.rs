//! Weir's wire and storage messages, generated from `proto/` at build time.
//!
//! - [`v1`]: Weir's own ingest API and the storage messages written into the log.
//! - [`otlp`]: the OpenTelemetry logs collector service and the messages it uses
//!   (`otlp::collector::logs::v1::ExportLogsServiceRequest`, `otlp::common::v1::AnyValue`, ...).
//! - [`api`]: the JSON bodies of the HTTP API (search, labels, cluster status, dead
//!   letters, errors), shared by the server and its clients.

/// `weir.v1`: the ingest API and the log's payload messages.
pub mod v1 {
    tonic::include_proto!("weir.v1");
}

/// OpenTelemetry protocol messages (vendored `opentelemetry-proto`), nested as their
/// packages are so that generated cross-references resolve: `otlp::common::v1::KeyValue`,
/// `otlp::logs::v1::LogRecord`, `otlp::collector::logs::v1::ExportLogsServiceRequest`.
pub mod opentelemetry {
    /// `opentelemetry.proto`
    pub mod proto {
        /// `opentelemetry.proto.common`
        pub mod common {
            /// `opentelemetry.proto.common.v1`
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.common.v1");
            }
        }
        /// `opentelemetry.proto.resource`
        pub mod resource {
            /// `opentelemetry.proto.resource.v1`
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.resource.v1");
            }
        }
        /// `opentelemetry.proto.logs`
        pub mod logs {
            /// `opentelemetry.proto.logs.v1`
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.logs.v1");
            }
        }
        /// `opentelemetry.proto.collector`
        pub mod collector {
            /// `opentelemetry.proto.collector.logs`
            pub mod logs {
                /// `opentelemetry.proto.collector.logs.v1`
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.collector.logs.v1");
                }
            }
        }
    }
}

pub use opentelemetry::proto as otlp;

/// Grafana Loki's push API messages (`logproto.PushRequest`), from Loki's `push.proto`.
pub mod logproto {
    tonic::include_proto!("logproto");
}

pub mod api;
pub mod codec;
mod error;
pub use error::{ApiError, ErrorKind};

use std::fmt;

use serde::{Deserialize, Serialize};

/// Severity of a record. Stored as its number in [`v1::StoredRecord::level`]; in JSON
/// (the search API), its canonical name ([`Level::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u32)]
pub enum Level {
    /// `trace`
    Trace = 1,
    /// `debug`
    Debug = 2,
    /// `info`
    Info = 3,
    /// `warn`
    Warn = 4,
    /// `error`
    Error = 5,
    /// `fatal`
    Fatal = 6,
}

/// Every accepted spelling of a level, in every path that reads one (ingest, the `level`
/// search parameter, `level:` in a query), (compared ASCII-case-insensitively after trimming), with the
/// level it means. Canonical names first; then the aliases agents are known to send:
/// syslog / RFC 5424 keywords, logrus' four-letter forms (`DEBU`, `ERRO`, `FATA`, `PANI`),
/// `java.util.logging` (`FINEST`, `FINE`, `SEVERE`), glog and logcat single letters.
pub const LEVEL_ALIASES: &[(&str, Level)] = &[
    ("trace", Level::Trace),
    ("debug", Level::Debug),
    ("info", Level::Info),
    ("warn", Level::Warn),
    ("error", Level::Error),
    ("fatal", Level::Fatal),
    // trace
    ("trc", Level::Trace),
    ("trce", Level::Trace),
    ("trac", Level::Trace),
    ("finest", Level::Trace),
    ("verbose", Level::Trace),
    ("t", Level::Trace),
    ("v", Level::Trace),
    // debug
    ("dbg", Level::Debug),
    ("dbug", Level::Debug),
    ("debu", Level::Debug),
    ("fine", Level::Debug),
    ("finer", Level::Debug),
    ("d", Level::Debug),
    // info
    ("inf", Level::Info),
    ("information", Level::Info),
    ("informational", Level::Info),
    ("notice", Level::Info),
    ("i", Level::Info),
    // warn
    ("warning", Level::Warn),
    ("wrn", Level::Warn),
    ("w", Level::Warn),
    // error
    ("err", Level::Error),
    ("erro", Level::Error),
    ("eror", Level::Error),
    ("severe", Level::Error),
    ("e", Level::Error),
    // fatal
    ("fata", Level::Fatal),
    ("ftl", Level::Fatal),
    ("critical", Level::Fatal),
    ("crit", Level::Fatal),
    ("alert", Level::Fatal),
    ("emerg", Level::Fatal),
    ("emergency", Level::Fatal),
    ("panic", Level::Fatal),
    ("pani", Level::Fatal),
    ("f", Level::Fatal),
    ("a", Level::Fatal),
    // RFC 5424 numeric severities.
    ("0", Level::Fatal),
    ("1", Level::Fatal),
    ("2", Level::Fatal),
    ("3", Level::Error),
    ("4", Level::Warn),
    ("5", Level::Info),
    ("6", Level::Info),
    ("7", Level::Debug),
];

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 6] = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Fatal,
    ];

    /// The canonical lower-case name (`"warn"`, ...), as indexed and returned by search.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }

    /// The level stored as `n` in a [`v1::StoredRecord`], if `n` is one.
    pub fn from_u32(n: u32) -> Option<Level> {
        Level::ALL.get((n as usize).wrapping_sub(1)).copied()
    }

    /// The level a name or alias means ([`LEVEL_ALIASES`], ASCII-case-insensitive,
    /// surrounding whitespace ignored): the one table every path uses, so that
    /// `level=critical` and `level:critical` agree with what ingest stored as fatal.
    pub fn from_alias(s: &str) -> Option<Level> {
        let t = s.trim();
        LEVEL_ALIASES
            .iter()
            .find(|(alias, _)| alias.eq_ignore_ascii_case(t))
            .map(|&(_, level)| level)
    }

    /// The canonical name parsed back (exact, lower case); [`Level::from_alias`] also takes
    /// aliases such as `warning`.
    pub fn from_canonical(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Index of a shard, `0..shard_count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard-{}", self.0)
    }
}

/// The tenant used when a request names none.
pub const DEFAULT_TENANT: &str = "default";

/// Header (HTTP) and metadata key (gRPC) naming the tenant of a request whose message
/// does not name one.
pub const TENANT_HEADER: &str = "x-weir-tenant";

/// Nanoseconds since the unix epoch: the clock of every timestamp Weir writes (0 if the
/// system clock is before 1970).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_numbers_round_trip_and_reject_out_of_range() {
        for l in Level::ALL {
            assert_eq!(Level::from_u32(l as u32), Some(l));
            assert_eq!(Level::from_canonical(l.as_str()), Some(l));
        }
        assert_eq!(Level::from_u32(0), None);
        assert_eq!(Level::from_u32(7), None);
        assert_eq!(Level::from_canonical("WARN"), None);
    }

    #[test]
    fn a_level_is_its_canonical_name_in_json() {
        for l in Level::ALL {
            let json = serde_json::to_value(l).unwrap();
            assert_eq!(json, l.as_str());
            assert_eq!(serde_json::from_value::<Level>(json).unwrap(), l);
        }
    }
}
