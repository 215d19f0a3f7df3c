//! What every ingest protocol shares once its request is decoded: which protocol it came
//! by (for metrics), the idempotency key of a request that carries none, and the counters
//! per protocol and tenant.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use prost::Message;
use weir_proto::otlp::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use weir_proto::v1::{AppendRequest, RecordError};
use weir_proto::ApiError;

use crate::append::Appender;
use crate::metrics::Histogram;

/// Stores an OTLP export (from gRPC or HTTP) for `tenant`: maps it to records, keys it for
/// deduplication by content (when every record carries its time), appends it, and answers
/// with the records refused, each told by its place in the export.
///
/// # Errors
/// The append path's: invalid (400 / INVALID_ARGUMENT), overloaded or not committed in
/// time (retryable).
///
/// `content` is the request's bytes as received, for the deduplication key; without them
/// (gRPC hands over the decoded message) the request is encoded again to be hashed.
pub async fn export_otlp(
    appender: &Appender,
    protocol: Protocol,
    req: ExportLogsServiceRequest,
    tenant: &str,
    content: Option<&[u8]>,
) -> Result<ExportLogsServiceResponse, ApiError> {
    let shape = weir_ingest::OtlpShape::of(&req);
    let timestamped = req
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
        .all(|r| r.time_unix_nano != 0 || r.observed_time_unix_nano != 0);
    let key = match content {
        Some(bytes) => request_key(protocol, bytes, timestamped),
        None if timestamped => request_key(protocol, &req.encode_to_vec(), true),
        None => None,
    };
    let (mut append, mut rejected) = weir_ingest::otlp_to_append(req, tenant);
    // Refused while mapping (the rest are counted by the append path).
    appender.metrics().count_rejected(&rejected);
    if !append.records.is_empty() {
        keyed(&mut append, key);
        let resp = appender.append_via(protocol, append).await?;
        rejected = merge_rejections(rejected, resp.rejected);
    }
    let partial_success = (!rejected.is_empty()).then(|| ExportLogsPartialSuccess {
        rejected_log_records: rejected.len() as i64,
        error_message: shape.rejection_message(&rejected, 5),
    });
    Ok(ExportLogsServiceResponse { partial_success })
}

/// Gives `req` the request key as its idempotency key (sequence 1), unless the client set
/// one of its own.
pub fn keyed(req: &mut AppendRequest, key: Option<String>) {
    if let (true, Some(k)) = (req.producer_id.is_empty(), key) {
        req.producer_id = k;
        req.sequence = 1;
    }
}

/// The refusals of a request that was mapped to an `AppendRequest` and then appended,
/// all as positions in the request as it came, ascending: `mapped` were refused while
/// mapping (already such positions, ascending, as the mappings produce them), `appended`
/// by the append path (positions in the `AppendRequest`, which lacks the `mapped` ones).
pub fn merge_rejections(
    mut mapped: Vec<RecordError>,
    appended: Vec<RecordError>,
) -> Vec<RecordError> {
    debug_assert!(mapped.windows(2).all(|w| w[0].index < w[1].index));
    let moved: Vec<RecordError> = appended
        .into_iter()
        .map(|mut r| {
            r.index = weir_ingest::flattened_position(r.index, &mapped);
            r
        })
        .collect();
    mapped.extend(moved);
    mapped.sort_by_key(|r| r.index);
    mapped
}

/// The ways records reach a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// `weir.v1.Ingest/Append` (gRPC).
    Append,
    /// OTLP `LogsService/Export` over gRPC.
    OtlpGrpc,
    /// OTLP over HTTP (`POST /v1/logs`).
    OtlpHttp,
    /// Loki push (`POST /loki/api/v1/push`).
    Loki,
    /// Elasticsearch `_bulk`.
    EsBulk,
    /// Syslog over UDP.
    SyslogUdp,
    /// Syslog over TCP.
    SyslogTcp,
}

impl Protocol {
    /// Every protocol, in metric order.
    pub const ALL: [Protocol; 7] = [
        Protocol::Append,
        Protocol::OtlpGrpc,
        Protocol::OtlpHttp,
        Protocol::Loki,
        Protocol::EsBulk,
        Protocol::SyslogUdp,
        Protocol::SyslogTcp,
    ];

    /// The `protocol` label of the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Append => "append",
            Protocol::OtlpGrpc => "otlp_grpc",
            Protocol::OtlpHttp => "otlp_http",
            Protocol::Loki => "loki",
            Protocol::EsBulk => "es_bulk",
            Protocol::SyslogUdp => "syslog_udp",
            Protocol::SyslogTcp => "syslog_tcp",
        }
    }

    fn index(self) -> usize {
        Protocol::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }
}

/// The idempotency key of a request whose protocol has none (Loki, OTLP, Elasticsearch
/// bulk): its tenant, protocol and content. Clients of these protocols retry a whole
/// request after a 429, a 5xx or a timeout; with this key as `producer_id` (sequence 1) the
/// append path acknowledges a retry that landed within the dedup window again instead of
/// storing it twice.
///
/// `None` when some record has no timestamp of its own: two such requests a minute apart
/// are different events with the same text, not a retry, so they must not collapse.
pub fn request_key(protocol: Protocol, content: &[u8], all_timestamped: bool) -> Option<String> {
    if !all_timestamped {
        return None;
    }
    // Two independent 64-bit FNV-1a passes: 128 bits, so that distinct requests of one
    // tenant collide with negligible probability (the tenant is part of the producer the
    // append path builds, so tenants never collide with each other).
    let (a, b) = fnv1a_128(content);
    Some(format!("{}/{a:016x}{b:016x}", protocol.as_str()))
}

/// Two 64-bit lanes of an FNV-1a-style hash taken a word (8 bytes) at a time: the key is
/// computed on every push, over the whole body, so it must cost far less than decoding it.
fn fnv1a_128(bytes: &[u8]) -> (u64, u64) {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let (mut a, mut b) = (0xcbf2_9ce4_8422_2325u64, 0x6c62_272e_07bb_0142u64);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        a = (a ^ x).wrapping_mul(PRIME);
        b = (b ^ x.rotate_left(29)).wrapping_mul(PRIME).rotate_left(17);
    }
    for &x in words.remainder() {
        a = (a ^ u64::from(x)).wrapping_mul(PRIME);
        b = (b ^ u64::from(x.rotate_left(3))).wrapping_mul(PRIME);
    }
    // The length, so that trailing zero bytes change the key.
    let len = bytes.len() as u64;
    (
        (a ^ len).wrapping_mul(PRIME),
        (b ^ len.rotate_left(32)).wrapping_mul(PRIME),
    )
}

/// Tenants counted by name per protocol at most; the others are counted as `_other`, so
/// that a client inventing tenants cannot grow the metrics without bound.
pub const TENANTS_TRACKED_MAX: usize = 1000;

/// Counts of one protocol and tenant.
#[derive(Clone, Copy, Default)]
struct Counts {
    accepted: u64,
    rejected: u64,
    deduplicated: u64,
    refused_requests: u64,
}

/// Records accepted, rejected and deduplicated per protocol and tenant, and request
/// latency per protocol.
#[derive(Default)]
pub struct IngestMetrics {
    by_tenant: Mutex<HashMap<(Protocol, String), Counts>>,
    latency: [Histogram; Protocol::ALL.len()],
}

impl IngestMetrics {
    /// Counts one answered request.
    pub fn request(
        &self,
        protocol: Protocol,
        tenant: &str,
        accepted: u64,
        rejected: u64,
        deduplicated: u64,
        took: Duration,
    ) {
        self.update(protocol, tenant, |c| {
            c.accepted += accepted;
            c.rejected += rejected;
            c.deduplicated += deduplicated;
        });
        self.latency[protocol.index()].observe(took);
    }

    /// Counts one request refused whole (bad input, overload).
    pub fn refused(&self, protocol: Protocol, tenant: &str, took: Duration) {
        self.update(protocol, tenant, |c| c.refused_requests += 1);
        self.latency[protocol.index()].observe(took);
    }

    /// Every tenant counted since the node started, by name.
    pub fn tenants(&self) -> std::collections::BTreeSet<String> {
        self.by_tenant
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .map(|(_, t)| t.clone())
            .collect()
    }

    fn update(&self, protocol: Protocol, tenant: &str, f: impl FnOnce(&mut Counts)) {
        let mut map = self.by_tenant.lock().unwrap_or_else(|p| p.into_inner());
        let key = (protocol, tenant.to_owned());
        if !map.contains_key(&key) && map.len() >= TENANTS_TRACKED_MAX * Protocol::ALL.len() {
            f(map.entry((protocol, "_other".to_owned())).or_default());
            return;
        }
        f(map.entry(key).or_default());
    }

    /// Renders the counters and histograms in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let map = self
            .by_tenant
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut rows: Vec<_> = map.into_iter().collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        type Field = (&'static str, &'static str, fn(&Counts) -> u64);
        let fields: [Field; 4] = [
            (
                "weir_ingest_protocol_records_accepted_total",
                "records stored, by protocol and tenant",
                |c| c.accepted,
            ),
            (
                "weir_ingest_protocol_records_rejected_total",
                "records refused (bad field, limit), by protocol and tenant",
                |c| c.rejected,
            ),
            (
                "weir_ingest_protocol_records_deduplicated_total",
                "records of a retried request acknowledged again, not stored twice",
                |c| c.deduplicated,
            ),
            (
                "weir_ingest_protocol_requests_refused_total",
                "requests refused whole (bad input or overload), by protocol and tenant",
                |c| c.refused_requests,
            ),
        ];
        for (name, help, value) in fields {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((protocol, tenant), c) in &rows {
                let _ = writeln!(
                    out,
                    "{name}{{protocol=\"{}\",tenant=\"{tenant}\"}} {}",
                    protocol.as_str(),
                    value(c)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP weir_ingest_request_latency_seconds time from receiving an ingest request to answering it, by protocol\n# TYPE weir_ingest_request_latency_seconds histogram"
        );
        for p in Protocol::ALL {
            self.latency[p.index()].render_samples(
                "weir_ingest_request_latency_seconds",
                &format!("protocol=\"{}\"", p.as_str()),
                out,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_depends_on_protocol_and_content_and_only_timestamped_requests_get_one() {
        let a = request_key(Protocol::Loki, b"one", true).unwrap();
        assert_eq!(a, request_key(Protocol::Loki, b"one", true).unwrap());
        assert_ne!(a, request_key(Protocol::Loki, b"two", true).unwrap());
        assert_ne!(a, request_key(Protocol::OtlpHttp, b"one", true).unwrap());
        assert_eq!(request_key(Protocol::Loki, b"one", false), None);
        // Longer than a word, differing only in the tail, in one word, or by a zero byte.
        let long = b"0123456789abcdef0123456789".to_vec();
        let mut tail = long.clone();
        *tail.last_mut().unwrap() ^= 1;
        let mut word = long.clone();
        word[9] ^= 1;
        let mut longer = long.clone();
        longer.push(0);
        let keys: std::collections::HashSet<_> = [long, tail, word, longer]
            .iter()
            .map(|c| request_key(Protocol::Loki, c, true).unwrap())
            .collect();
        assert_eq!(keys.len(), 4);
    }

    #[test]
    fn tenants_past_the_cap_are_counted_as_other() {
        let m = IngestMetrics::default();
        for t in 0..(TENANTS_TRACKED_MAX * Protocol::ALL.len() + 5) {
            m.request(Protocol::Loki, &format!("t{t}"), 1, 0, 0, Duration::ZERO);
        }
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("weir_ingest_protocol_records_accepted_total{protocol=\"loki\",tenant=\"_other\"} 5"),
            "{}",
            &out[..2000.min(out.len())]
        );
    }
}
