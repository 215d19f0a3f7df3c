//! OTLP logs to Weir records.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use weir_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use weir_proto::otlp::common::v1::{any_value::Value, AnyValue, KeyValue};
use weir_proto::otlp::logs::v1::LogRecord;
use weir_proto::v1::{AppendRequest, Record, RecordError};

use crate::{level_from_otlp, parse_level, Level};

/// Resource attributes that become the record's standard fields.
const RESOURCE_FIELDS: [(&str, Field); 4] = [
    ("service.name", Field::Service),
    ("k8s.namespace.name", Field::Namespace),
    ("k8s.pod.name", Field::Pod),
    ("k8s.cluster.name", Field::Cluster),
];

#[derive(Clone, Copy)]
enum Field {
    Service,
    Namespace,
    Pod,
    Cluster,
}

/// What every record of one resource and scope shares.
#[derive(Clone, Default)]
struct Common {
    service: String,
    namespace: String,
    pod: String,
    cluster: String,
    attributes: BTreeMap<String, String>,
}

/// Maps an OTLP logs export to one [`AppendRequest`] for `tenant` (from the caller's
/// `x-weir-tenant` header; empty means the default tenant, as in [`crate::normalize`]).
///
/// Records come out in flattened order (resource, then scope, then record). For each:
///
/// - resource attributes `service.name`, `k8s.namespace.name`, `k8s.pod.name`,
///   `k8s.cluster.name` -> `service`, `namespace`, `pod`, `cluster`; every other resource
///   attribute -> attribute `resource.<key>`. No stream labels are made: the stream is
///   the tenant and those four fields, which keeps labels low-cardinality;
/// - scope name and version -> attributes `otel.scope.name`, `otel.scope.version` (when
///   set); scope attributes -> `scope.<key>`;
/// - log record attributes -> attributes under their own key (a record attribute wins over
///   a resource or scope attribute of the same final key), values rendered with
///   [`render_any_value`];
/// - `event_name` -> attribute `event.name` (when set);
/// - `time_unix_nano`, else `observed_time_unix_nano`, else 0 (= receive time);
/// - `severity_number` ([`level_from_otlp`]), else `severity_text` ([`parse_level`]), else
///   info; a `severity_text` that does not parse to the chosen level is kept as attribute
///   `otel.severity_text`, so custom severities are not lost;
/// - body rendered with [`render_any_value`];
/// - `trace_id` / `span_id` bytes -> lower-case hex; they must be 16 / 8 bytes or empty,
///   all zeros meaning empty (the OTLP spec calls both invalid).
///
/// The second vector holds the records refused here (bad id length, time past
/// `i64::MAX` ns), with their flattened position and the reason; they are not in the
/// request. The request still goes through [`crate::normalize`], whose positions count
/// only the records that are in it: [`flattened_position`] maps them back.
pub fn otlp_to_append(
    req: ExportLogsServiceRequest,
    tenant: &str,
) -> (AppendRequest, Vec<RecordError>) {
    let mut out = AppendRequest {
        tenant: tenant.to_owned(),
        ..Default::default()
    };
    let mut rejected = Vec::new();
    let mut position: u32 = 0;
    for resource_logs in req.resource_logs {
        let mut resource = Common::default();
        for kv in resource_logs
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default()
        {
            let text = render_any_value(kv.value.as_ref());
            match RESOURCE_FIELDS.iter().find(|(k, _)| *k == kv.key) {
                Some((_, Field::Service)) => resource.service = text,
                Some((_, Field::Namespace)) => resource.namespace = text,
                Some((_, Field::Pod)) => resource.pod = text,
                Some((_, Field::Cluster)) => resource.cluster = text,
                None => {
                    resource
                        .attributes
                        .insert(format!("resource.{}", kv.key), text);
                }
            }
        }
        for scope_logs in resource_logs.scope_logs {
            let mut common = resource.clone();
            if let Some(scope) = scope_logs.scope {
                if !scope.name.is_empty() {
                    common
                        .attributes
                        .insert("otel.scope.name".to_owned(), scope.name);
                }
                if !scope.version.is_empty() {
                    common
                        .attributes
                        .insert("otel.scope.version".to_owned(), scope.version);
                }
                insert_all(&mut common.attributes, "scope.", scope.attributes);
            }
            for log_record in scope_logs.log_records {
                match map_record(log_record, &common) {
                    Ok(record) => out.records.push(record),
                    Err(r) => rejected.push(RecordError {
                        index: position,
                        reason: r.reason,
                        code: r.code.to_owned(),
                    }),
                }
                // An export holding 2^32 records is far past any request size limit;
                // saturating keeps this total rather than wrapping.
                position = position.saturating_add(1);
            }
        }
    }
    (out, rejected)
}

/// How many records each scope of each resource of an export holds, so that a flattened
/// position can be told back as `resource_logs[i].scope_logs[j].log_records[k]`. Taken
/// before [`otlp_to_append`] consumes the export.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OtlpShape(Vec<Vec<u32>>);

impl OtlpShape {
    /// The shape of `req`.
    pub fn of(req: &ExportLogsServiceRequest) -> OtlpShape {
        OtlpShape(
            req.resource_logs
                .iter()
                .map(|r| {
                    r.scope_logs
                        .iter()
                        .map(|s| u32::try_from(s.log_records.len()).unwrap_or(u32::MAX))
                        .collect()
                })
                .collect(),
        )
    }

    /// `resource_logs[i].scope_logs[j].log_records[k]` of a flattened position, or the
    /// position itself when it is past the export's end.
    pub fn locate(&self, flattened: u32) -> String {
        let mut left = flattened;
        for (i, scopes) in self.0.iter().enumerate() {
            for (j, &n) in scopes.iter().enumerate() {
                if left < n {
                    return format!("resource_logs[{i}].scope_logs[{j}].log_records[{left}]");
                }
                left -= n;
            }
        }
        format!("record {flattened}")
    }

    /// `partial_success.error_message` for refused records (flattened positions): the first
    /// `shown`, each with its place in the export and its reason, then how many more.
    pub fn rejection_message(&self, rejected: &[RecordError], shown: usize) -> String {
        let mut msg = rejected
            .iter()
            .take(shown)
            .map(|r| format!("{}: {}", self.locate(r.index), r.reason))
            .collect::<Vec<_>>()
            .join("; ");
        if rejected.len() > shown {
            msg.push_str(&format!("; and {} more", rejected.len() - shown));
        }
        msg
    }
}

/// Maps a position in the [`AppendRequest`] made by [`otlp_to_append`] (for example a
/// [`RecordError::index`] from [`crate::normalize`]) back to the record's flattened
/// position in the OTLP export, given the records [`otlp_to_append`] refused (as it
/// returned them: ascending positions).
///
/// ```
/// use weir_ingest::flattened_position;
/// use weir_proto::v1::RecordError;
/// // Export records 1 and 3 were refused: request positions 0, 1, 2 are export 0, 2, 4.
/// let refused = [1, 3].map(|index| RecordError { index, ..Default::default() });
/// assert_eq!([0, 1, 2].map(|i| flattened_position(i, &refused)), [0, 2, 4]);
/// ```
pub fn flattened_position(append_index: u32, otlp_rejected: &[RecordError]) -> u32 {
    let mut position = append_index;
    for refused in otlp_rejected {
        if refused.index <= position {
            position = position.saturating_add(1);
        } else {
            break;
        }
    }
    position
}

fn map_record(lr: LogRecord, common: &Common) -> Result<Record, crate::normalize::Rejection> {
    let id = |reason| crate::normalize::Rejection { code: "id", reason };
    let trace_id = id_hex("trace_id", &lr.trace_id, 16).map_err(id)?;
    let span_id = id_hex("span_id", &lr.span_id, 8).map_err(id)?;
    let time = if lr.time_unix_nano != 0 {
        ("time_unix_nano", lr.time_unix_nano)
    } else {
        ("observed_time_unix_nano", lr.observed_time_unix_nano)
    };
    let timestamp_ns = i64::try_from(time.1).map_err(|_| crate::normalize::Rejection {
        code: "timestamp",
        reason: format!(
            "{} {} is out of range: past the year 2262 (i64 nanoseconds)",
            time.0, time.1
        ),
    })?;

    let mut attributes = common.attributes.clone();
    let text_level = parse_level(&lr.severity_text).ok();
    let level = level_from_otlp(lr.severity_number)
        .or(text_level)
        .unwrap_or(Level::Info);
    if !lr.severity_text.is_empty() && text_level != Some(level) {
        attributes.insert("otel.severity_text".to_owned(), lr.severity_text);
    }
    if !lr.event_name.is_empty() {
        attributes.insert("event.name".to_owned(), lr.event_name);
    }
    insert_all(&mut attributes, "", lr.attributes);

    Ok(Record {
        timestamp_ns,
        level: level.as_str().to_owned(),
        body: render_any_value(lr.body.as_ref()).into_bytes(),
        service: common.service.clone(),
        namespace: common.namespace.clone(),
        pod: common.pod.clone(),
        cluster: common.cluster.clone(),
        labels: BTreeMap::new(),
        attributes,
        trace_id,
        span_id,
    })
}

fn insert_all(into: &mut BTreeMap<String, String>, prefix: &str, kvs: Vec<KeyValue>) {
    for kv in kvs {
        let text = render_any_value(kv.value.as_ref());
        into.insert(format!("{prefix}{}", kv.key), text);
    }
}

/// Lower-case hex of an OTLP id: empty and all-zero ids give "", other lengths than
/// `bytes` are refused.
fn id_hex(field: &str, id: &[u8], bytes: usize) -> Result<String, String> {
    if id.is_empty() || (id.len() == bytes && id.iter().all(|&b| b == 0)) {
        return Ok(String::new());
    }
    if id.len() != bytes {
        return Err(format!(
            "{field} is {} bytes, must be {bytes} (or empty)",
            id.len()
        ));
    }
    let mut hex = String::with_capacity(2 * bytes);
    for b in id {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{b:02x}");
    }
    Ok(hex)
}

/// Renders an OTLP `AnyValue` as text, the way Weir stores bodies and attribute values:
///
/// - string: as is; bool: `true` / `false`; int: decimal;
/// - double: shortest text that reads back to the same number (`1.5`, `1.0`, `1e300`),
///   `NaN`, `Infinity`, `-Infinity`;
/// - bytes: standard base64 with padding (as in OTLP/JSON);
/// - array and kvlist: compact JSON (`[1,"a",true]`, `{"k":"v","n":2}`), nested values as
///   JSON of their kind: strings escaped, ints and finite doubles as numbers, non-finite
///   doubles and bytes as strings (`"NaN"`, base64), unset values as `null`; kvlist keys
///   keep their order, duplicates included;
/// - unset (`None`, or an `AnyValue` with no value): empty.
///
/// ```
/// use weir_ingest::render_any_value;
/// use weir_proto::otlp::common::v1::{any_value::Value, AnyValue, ArrayValue};
/// let v = |value| AnyValue { value: Some(value) };
/// assert_eq!(render_any_value(Some(&v(Value::IntValue(-3)))), "-3");
/// let array = ArrayValue { values: vec![v(Value::StringValue("a\"b".into())), v(Value::BoolValue(true))] };
/// assert_eq!(render_any_value(Some(&v(Value::ArrayValue(array)))), r#"["a\"b",true]"#);
/// ```
pub fn render_any_value(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => double_text(*d),
        Some(Value::BytesValue(b)) => base64(b),
        Some(v @ (Value::ArrayValue(_) | Value::KvlistValue(_))) => {
            let mut out = String::new();
            json(Some(v), &mut out);
            out
        }
    }
}

fn double_text(d: f64) -> String {
    if d.is_nan() {
        "NaN".to_owned()
    } else if d.is_infinite() {
        if d > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else {
        // Debug is the shortest round-trip form, with an exponent for very large or small
        // magnitudes (Display would print 1e300 as 301 digits); both are valid JSON.
        format!("{d:?}")
    }
}

/// Compact JSON of a value. Recursion depth is bounded by prost's decode recursion limit
/// (100) for anything that came off the wire.
fn json(value: Option<&Value>, out: &mut String) {
    match value {
        None => out.push_str("null"),
        Some(Value::StringValue(s)) => json_string(s, out),
        Some(Value::BoolValue(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(Value::IntValue(i)) => {
            let _ = write!(out, "{i}");
        }
        Some(Value::DoubleValue(d)) if d.is_finite() => out.push_str(&double_text(*d)),
        Some(Value::DoubleValue(d)) => json_string(&double_text(*d), out),
        Some(Value::BytesValue(b)) => json_string(&base64(b), out),
        Some(Value::ArrayValue(a)) => {
            out.push('[');
            for (i, v) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json(v.value.as_ref(), out);
            }
            out.push(']');
        }
        Some(Value::KvlistValue(kvs)) => {
            out.push('{');
            for (i, kv) in kvs.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(&kv.key, out);
                out.push(':');
                json(kv.value.as_ref().and_then(|v| v.value.as_ref()), out);
            }
            out.push('}');
        }
    }
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < '\u{20}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (RFC 4648 section 4) with padding.
fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64_ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{normalize, Limits};
    use weir_proto::otlp::common::v1::{ArrayValue, InstrumentationScope, KeyValueList};
    use weir_proto::otlp::logs::v1::{ResourceLogs, ScopeLogs};
    use weir_proto::otlp::resource::v1::Resource;

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn v(value: Value) -> AnyValue {
        AnyValue { value: Some(value) }
    }

    fn s(text: &str) -> AnyValue {
        v(Value::StringValue(text.into()))
    }

    fn kv(key: &str, value: AnyValue) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(value),
        }
    }

    const TRACE: [u8; 16] = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];
    const SPAN: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];

    /// What an OpenTelemetry Collector sends for a pod: one resource, two scopes.
    fn realistic_export() -> ExportLogsServiceRequest {
        let resource = Resource {
            attributes: vec![
                kv("service.name", s("checkout")),
                kv("k8s.namespace.name", s("shop")),
                kv("k8s.pod.name", s("checkout-6c9f-abcde")),
                kv("k8s.cluster.name", s("eu-west-1")),
                kv("host.name", s("node-17")),
                kv("process.pid", v(Value::IntValue(4242))),
            ],
            dropped_attributes_count: 0,
        };
        let http_scope = ScopeLogs {
            scope: Some(InstrumentationScope {
                name: "io.opentelemetry.http".into(),
                version: "1.2.0".into(),
                ..Default::default()
            }),
            log_records: vec![
                LogRecord {
                    time_unix_nano: (NOW - 5_000) as u64,
                    observed_time_unix_nano: (NOW - 1_000) as u64,
                    severity_number: 9,
                    severity_text: "INFO".into(),
                    body: Some(s("GET /cart 200")),
                    attributes: vec![
                        kv("http.method", s("GET")),
                        kv("http.status_code", v(Value::IntValue(200))),
                        kv("http.duration_s", v(Value::DoubleValue(0.25))),
                        kv("http.cached", v(Value::BoolValue(false))),
                        kv(
                            "http.headers",
                            v(Value::KvlistValue(KeyValueList {
                                values: vec![
                                    kv("accept", s("*/*")),
                                    kv("x-retry", v(Value::IntValue(1))),
                                ],
                            })),
                        ),
                        kv(
                            "tags",
                            v(Value::ArrayValue(ArrayValue {
                                values: vec![
                                    s("a"),
                                    v(Value::DoubleValue(f64::NAN)),
                                    AnyValue::default(),
                                ],
                            })),
                        ),
                        kv("payload", v(Value::BytesValue(b"hi!?".to_vec()))),
                    ],
                    trace_id: TRACE.to_vec(),
                    span_id: SPAN.to_vec(),
                    ..Default::default()
                },
                LogRecord {
                    observed_time_unix_nano: (NOW - 2_000) as u64,
                    severity_number: 17,
                    severity_text: "Error".into(),
                    body: Some(v(Value::KvlistValue(KeyValueList {
                        values: vec![
                            kv("msg", s("db down")),
                            kv("retry", v(Value::BoolValue(true))),
                        ],
                    }))),
                    event_name: "db.failure".into(),
                    ..Default::default()
                },
            ],
            schema_url: String::new(),
        };
        let app_scope = ScopeLogs {
            scope: Some(InstrumentationScope {
                name: "checkout.app".into(),
                attributes: vec![kv("lib", s("slf4j"))],
                ..Default::default()
            }),
            log_records: vec![
                // No severity number, custom text: info, text kept.
                LogRecord {
                    severity_text: "AUDIT".into(),
                    body: Some(s("order 17 paid")),
                    ..Default::default()
                },
                // Trace id of the wrong length: refused at flattened position 3.
                LogRecord {
                    severity_number: 13,
                    body: Some(s("bad ids")),
                    trace_id: vec![1; 10],
                    ..Default::default()
                },
                // Severity only as text.
                LogRecord {
                    severity_text: "warning".into(),
                    body: Some(s("slow")),
                    span_id: SPAN.to_vec(),
                    ..Default::default()
                },
            ],
            schema_url: String::new(),
        };
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(resource),
                scope_logs: vec![http_scope, app_scope],
                schema_url: String::new(),
            }],
        }
    }

    #[test]
    fn realistic_export_maps_to_records() {
        let (req, refused) = otlp_to_append(realistic_export(), "acme");
        assert_eq!(req.tenant, "acme");
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].index, 3);
        assert_eq!(
            refused[0].reason,
            "trace_id is 10 bytes, must be 16 (or empty)"
        );
        assert_eq!(req.records.len(), 4);

        for r in &req.records {
            assert_eq!(
                (
                    r.service.as_str(),
                    r.namespace.as_str(),
                    r.pod.as_str(),
                    r.cluster.as_str()
                ),
                ("checkout", "shop", "checkout-6c9f-abcde", "eu-west-1")
            );
            assert!(r.labels.is_empty());
            assert_eq!(r.attributes["resource.host.name"], "node-17");
            assert_eq!(r.attributes["resource.process.pid"], "4242");
            assert!(!r.attributes.contains_key("resource.service.name"));
        }

        let http = &req.records[0];
        assert_eq!(http.timestamp_ns, NOW - 5_000);
        assert_eq!(http.level, "info");
        assert_eq!(http.body, b"GET /cart 200");
        assert_eq!(http.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(http.span_id, "00f067aa0ba902b7");
        let a = &http.attributes;
        assert_eq!(a["otel.scope.name"], "io.opentelemetry.http");
        assert_eq!(a["otel.scope.version"], "1.2.0");
        assert_eq!(a["http.method"], "GET");
        assert_eq!(a["http.status_code"], "200");
        assert_eq!(a["http.duration_s"], "0.25");
        assert_eq!(a["http.cached"], "false");
        assert_eq!(a["http.headers"], r#"{"accept":"*/*","x-retry":1}"#);
        assert_eq!(a["tags"], r#"["a","NaN",null]"#);
        assert_eq!(a["payload"], "aGkhPw==");
        assert!(
            !a.contains_key("otel.severity_text"),
            "INFO matches the number"
        );

        let db = &req.records[1];
        assert_eq!(db.timestamp_ns, NOW - 2_000, "falls back to observed time");
        assert_eq!(db.level, "error");
        assert_eq!(db.body, br#"{"msg":"db down","retry":true}"#);
        assert_eq!(db.attributes["event.name"], "db.failure");
        assert_eq!((db.trace_id.as_str(), db.span_id.as_str()), ("", ""));

        let audit = &req.records[2];
        assert_eq!(audit.timestamp_ns, 0, "no time at all: receive time");
        assert_eq!(audit.level, "info");
        assert_eq!(audit.attributes["otel.severity_text"], "AUDIT");
        assert_eq!(audit.attributes["otel.scope.name"], "checkout.app");
        assert_eq!(audit.attributes["scope.lib"], "slf4j");
        assert!(!audit.attributes.contains_key("otel.scope.version"));

        let slow = &req.records[3];
        assert_eq!(slow.level, "warn");
        assert_eq!(slow.span_id, "00f067aa0ba902b7");
        assert_eq!(flattened_position(3, &refused), 4);

        // And the mapped request passes normalisation whole.
        let n = normalize(req, NOW, &Limits::default()).unwrap();
        assert_eq!(n.rejected, vec![]);
        assert_eq!(n.records.len(), 4);
        assert_eq!(n.records[2].1.timestamp_ns, NOW);
    }

    #[test]
    fn bad_id_lengths_are_refused_with_their_flattened_position() {
        let record = |trace_id: Vec<u8>, span_id: Vec<u8>| LogRecord {
            trace_id,
            span_id,
            ..Default::default()
        };
        let export = ExportLogsServiceRequest {
            resource_logs: vec![
                ResourceLogs {
                    scope_logs: vec![ScopeLogs {
                        log_records: vec![record(vec![], vec![]), record(vec![7; 17], vec![])],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                ResourceLogs {
                    scope_logs: vec![ScopeLogs {
                        log_records: vec![
                            record(vec![0; 16], vec![0; 8]),
                            record(TRACE.to_vec(), vec![1; 4]),
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
        };
        let (req, refused) = otlp_to_append(export, "");
        assert_eq!(req.records.len(), 2);
        assert_eq!(
            refused,
            vec![
                RecordError {
                    index: 1,
                    reason: "trace_id is 17 bytes, must be 16 (or empty)".into(),
                    code: "id".into(),
                },
                RecordError {
                    index: 3,
                    reason: "span_id is 4 bytes, must be 8 (or empty)".into(),
                    code: "id".into(),
                },
            ]
        );
        // All-zero ids mean "no id".
        assert_eq!(req.records[1].trace_id, "");
        assert_eq!(flattened_position(0, &refused), 0);
        assert_eq!(flattened_position(1, &refused), 2);
    }

    #[test]
    fn time_past_i64_is_refused() {
        let export = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        time_unix_nano: u64::MAX,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let (req, refused) = otlp_to_append(export, "t");
        assert!(req.records.is_empty());
        assert!(refused[0]
            .reason
            .starts_with("time_unix_nano 18446744073709551615"));
    }

    #[test]
    fn record_attributes_win_over_resource_and_scope() {
        let export = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![kv("x", s("resource"))],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "scope".into(),
                        ..Default::default()
                    }),
                    log_records: vec![LogRecord {
                        attributes: vec![
                            kv("resource.x", s("record")),
                            kv("otel.scope.name", s("record")),
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let (req, _) = otlp_to_append(export, "t");
        assert_eq!(req.records[0].attributes["resource.x"], "record");
        assert_eq!(req.records[0].attributes["otel.scope.name"], "record");
    }

    #[test]
    fn render_covers_every_kind() {
        assert_eq!(render_any_value(None), "");
        assert_eq!(render_any_value(Some(&AnyValue::default())), "");
        assert_eq!(
            render_any_value(Some(&s("plain \"text\""))),
            "plain \"text\""
        );
        assert_eq!(render_any_value(Some(&v(Value::BoolValue(true)))), "true");
        assert_eq!(
            render_any_value(Some(&v(Value::IntValue(i64::MIN)))),
            i64::MIN.to_string()
        );
        let d = |x: f64| render_any_value(Some(&v(Value::DoubleValue(x))));
        assert_eq!(
            [
                d(1.0),
                d(-0.5),
                d(1e300),
                d(f64::INFINITY),
                d(f64::NEG_INFINITY),
                d(f64::NAN)
            ],
            ["1.0", "-0.5", "1e300", "Infinity", "-Infinity", "NaN"]
        );
        let nested = v(Value::KvlistValue(KeyValueList {
            values: vec![
                kv(
                    "a",
                    v(Value::ArrayValue(ArrayValue {
                        values: vec![
                            v(Value::IntValue(1)),
                            v(Value::DoubleValue(2.5)),
                            v(Value::DoubleValue(f64::INFINITY)),
                        ],
                    })),
                ),
                kv("esc", s("q\"\\\n\u{1}é")),
                kv("b", v(Value::BytesValue(vec![0xff]))),
                KeyValue {
                    key: "none".into(),
                    value: None,
                },
                kv("a", s("dup")),
            ],
        }));
        assert_eq!(
            render_any_value(Some(&nested)),
            r#"{"a":[1,2.5,"Infinity"],"esc":"q\"\\\n\u0001é","b":"/w==","none":null,"a":"dup"}"#
        );
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (raw, want) in cases {
            assert_eq!(base64(raw.as_bytes()), want);
        }
    }

    #[test]
    fn a_refusal_is_told_by_its_place_in_the_export() {
        let mut export = realistic_export();
        let shape = OtlpShape::of(&export);
        let total: u32 = export
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len() as u32)
            .sum();
        assert_eq!(
            shape.locate(0),
            "resource_logs[0].scope_logs[0].log_records[0]"
        );
        assert_eq!(shape.locate(total), format!("record {total}"));
        // The last record of the last scope of the last resource.
        let r = export.resource_logs.len() - 1;
        let s = export.resource_logs[r].scope_logs.len() - 1;
        let k = export.resource_logs[r].scope_logs[s].log_records.len() - 1;
        assert_eq!(
            shape.locate(total - 1),
            format!("resource_logs[{r}].scope_logs[{s}].log_records[{k}]")
        );
        export.resource_logs.clear();
        let refused: Vec<RecordError> = (0..7)
            .map(|i| RecordError {
                index: i,
                reason: format!("bad {i}"),
                code: "id".into(),
            })
            .collect();
        let msg = shape.rejection_message(&refused, 5);
        assert!(
            msg.starts_with("resource_logs[0].scope_logs[0].log_records[0]: bad 0; "),
            "{msg}"
        );
        assert!(msg.ends_with("; and 2 more"), "{msg}");
    }
}
