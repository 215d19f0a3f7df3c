//! Loki push (`POST /loki/api/v1/push`): decoding both bodies Loki takes and mapping its
//! streams to Weir records.
//!
//! - Protobuf ([`decode_loki_proto`]): `logproto.PushRequest`, after the server has undone
//!   the snappy block compression ([`crate::unsnappy`]).
//! - JSON ([`decode_loki_json`]): `{"streams":[{"stream":{..},"values":[["<ns>","line",
//!   {metadata}]]}]}`, decoded into the same `PushRequest`. The `stream` object is rendered
//!   back into the selector text of `StreamAdapter.labels` (`{name="value", ...}`, Go
//!   escapes), so that both bodies go through one mapping and one label parser.
//!
//! # Mapping ([`loki_to_append`])
//!
//! Entries are flattened stream by stream, in order; `RecordError.index` is that flattened
//! position (as for OTLP, [`crate::flattened_position`] maps `normalize`'s positions back).
//!
//! | Loki | Weir |
//! | --- | --- |
//! | label `service_name`, else `service`, else `app` | `service` |
//! | label `namespace` / `pod` / `cluster` | `namespace` / `pod` / `cluster` |
//! | label `level`, else `detected_level`, else `severity`; when the stream has none, the entry's structured metadata of the same names | `level`; text that is no known level ([`Level::from_alias`]) gives info, and the text goes to attribute `loki.level` |
//! | every other label (`app`, `service_name`, `detected_level`, `severity`, `job`, ...) | a label of the same name (so `app` is both the service and the label `app`) |
//! | a label named `service`, `namespace`, `pod`, `cluster` or `level` | that field (it *is* the field; not also a label) |
//! | a label whose value differs from the field it would be (`service="a"` beside `service_name="b"`), or named like another standard field of the record model in any case (`trace_id`, `Level`, `timestamp`, ...) | attribute `loki.label.<name>` (a label may not take those names, and the value stays searchable) |
//! | a label with an empty value | dropped (in Prometheus and Loki an empty label is an absent one) |
//! | structured metadata `trace_id`, `traceID`, `trace-id` / `span_id`, `spanID`, `span-id` | `trace_id` / `span_id`, lower-cased, when 32 / 16 hex digits; otherwise an attribute under its own name |
//! | other structured metadata | attributes |
//! | entry timestamp | `timestamp_ns` (absent or 0 = receive time; past `i64` nanoseconds: refused, code `timestamp`) |
//! | line | `body` |
//!
//! A stream whose labels do not parse has each of its entries refused (code `label`, the
//! reason naming the stream number and the byte offset). Label names and values, and the
//! rest of each record, are then checked by [`crate::normalize`] like any append (a label
//! name such as `my-label` is refused there, as Loki itself refuses it).

use std::collections::BTreeMap;

use prost::Message;
use serde_json::Value;
use weir_proto::logproto::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter};
use weir_proto::v1::{AppendRequest, Record, RecordError};

use crate::normalize::{Rejection, STANDARD_FIELDS};
use crate::timefmt::SECOND_NS;
use crate::{quote, Error, Level, Result};

/// Which stream labels give which record field, in order of preference per field (the
/// first one present wins): the mapping table of the [module doc](crate::loki) as data.
pub const LOKI_LABEL_FIELDS: [(&str, &str); 9] = [
    ("service_name", "service"),
    ("service", "service"),
    ("app", "service"),
    ("namespace", "namespace"),
    ("pod", "pod"),
    ("cluster", "cluster"),
    ("level", "level"),
    ("detected_level", "level"),
    ("severity", "level"),
];

/// Label names that *are* a record field rather than also a label.
const FIELD_LABELS: [&str; 5] = ["service", "namespace", "pod", "cluster", "level"];

/// Structured metadata names read as the trace id and the span id.
const TRACE_ID_KEYS: [&str; 3] = ["trace_id", "traceID", "trace-id"];
const SPAN_ID_KEYS: [&str; 3] = ["span_id", "spanID", "span-id"];

/// Parses a Loki stream selector as clients push it: `{name="value", other="v2"}`.
///
/// Prometheus selector syntax: names `[a-zA-Z_][a-zA-Z0-9_]*` (or a quoted string, as
/// Prometheus 3 writes names outside that set), `=` only, values quoted with `"`, `'` or
/// `` ` `` (raw). In quoted values Go's escapes apply: `\" \' \\ \a \b \f \n \r \t \v`,
/// `\xHH`, `\NNN` (octal), `\uXXXX`, `\UXXXXXXXX`. Whitespace is allowed around every
/// token, a trailing comma is allowed, and `{}` is an empty set. Pairs come back in the
/// order written.
///
/// # Errors
///
/// A sentence naming what was expected and the byte offset where it was not found, e.g.
/// ``expected '=' after label name "app" at byte 4, found ':'``; a name given twice; an
/// escape that is not one of Go's; a value whose escapes make invalid UTF-8.
///
/// ```
/// use weir_ingest::parse_loki_labels;
/// assert_eq!(
///     parse_loki_labels(r#"{job="varlogs", filename="/var/log/a \"b\".log"}"#).unwrap(),
///     vec![("job".into(), "varlogs".into()), ("filename".into(), "/var/log/a \"b\".log".into())]
/// );
/// assert!(parse_loki_labels("{job=varlogs}").unwrap_err().contains("byte 5"));
/// ```
pub fn parse_loki_labels(s: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut p = Parser {
        s: s.as_bytes(),
        at: 0,
    };
    p.skip_ws();
    p.expect(b'{', "'{' to open the label set")?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let name_at = p.at;
        let name = p.label_name()?;
        p.skip_ws();
        if !p.eat(b'=') {
            return Err(format!(
                "expected '=' after label name {} at byte {}, found {}",
                quote(&name),
                p.at,
                p.found()
            ));
        }
        p.skip_ws();
        let value = p.quoted()?;
        if pairs.iter().any(|(n, _)| *n == name) {
            return Err(format!(
                "label {} is given twice (second at byte {name_at})",
                quote(&name)
            ));
        }
        pairs.push((name, value));
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        p.expect(b',', "',' or '}' after a label value")?;
    }
    p.skip_ws();
    if p.at != p.s.len() {
        return Err(format!(
            "unexpected {} after the closing '}}' at byte {}",
            p.found(),
            p.at
        ));
    }
    Ok(pairs)
}

/// A byte cursor over a selector; offsets in errors are byte offsets into it.
struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.at += usize::from(hit);
        hit
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// What is at the cursor, for an error message.
    fn found(&self) -> String {
        match std::str::from_utf8(&self.s[self.at.min(self.s.len())..])
            .ok()
            .and_then(|rest| rest.chars().next())
        {
            None if self.at >= self.s.len() => "the end of the text".to_owned(),
            None => format!("byte 0x{:02x}", self.s[self.at]),
            Some(c) => format!("{c:?}"),
        }
    }

    fn expect(&mut self, b: u8, what: &str) -> std::result::Result<(), String> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(format!(
                "expected {what} at byte {}, found {}",
                self.at,
                self.found()
            ))
        }
    }

    fn label_name(&mut self) -> std::result::Result<String, String> {
        if matches!(self.peek(), Some(b'"' | b'\'' | b'`')) {
            return self.quoted();
        }
        let start = self.at;
        while let Some(b) = self.peek() {
            let ok =
                b == b'_' || b.is_ascii_alphabetic() || (self.at > start && b.is_ascii_digit());
            if !ok {
                break;
            }
            self.at += 1;
        }
        if self.at == start {
            return Err(format!(
                "expected a label name ([a-zA-Z_][a-zA-Z0-9_]*) at byte {}, found {}",
                self.at,
                self.found()
            ));
        }
        // The bytes are ASCII, checked just above.
        Ok(String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    /// A quoted string at the cursor, unescaped.
    fn quoted(&mut self) -> std::result::Result<String, String> {
        let open_at = self.at;
        let quote_byte = match self.peek() {
            Some(q @ (b'"' | b'\'' | b'`')) => q,
            _ => {
                return Err(format!(
                    "expected a quoted label value at byte {}, found {}",
                    self.at,
                    self.found()
                ))
            }
        };
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(format!("the string opened at byte {open_at} is not closed"));
            };
            self.at += 1;
            if b == quote_byte {
                break;
            }
            if b == b'\\' && quote_byte != b'`' {
                self.escape(&mut out)?;
            } else {
                out.push(b);
            }
        }
        String::from_utf8(out).map_err(|_| {
            format!("the string opened at byte {open_at} is not valid UTF-8 once unescaped")
        })
    }

    /// One Go escape sequence, the backslash already read.
    fn escape(&mut self, out: &mut Vec<u8>) -> std::result::Result<(), String> {
        let at = self.at - 1;
        let bad = |what: &str| format!("invalid escape {what} at byte {at}");
        let Some(b) = self.peek() else {
            return Err(bad("at the end of the text"));
        };
        self.at += 1;
        let simple = match b {
            b'a' => Some(0x07),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(0x0b),
            b'\\' | b'"' | b'\'' => Some(b),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            return Ok(());
        }
        match b {
            b'x' => {
                let v = self
                    .radix_digits(2, 16)
                    .ok_or_else(|| bad("\\x (two hex digits)"))?;
                out.push(v as u8);
            }
            b'0'..=b'7' => {
                self.at -= 1;
                let v = self
                    .radix_digits(3, 8)
                    .filter(|&v| v <= 0xff)
                    .ok_or_else(|| bad("\\NNN (three octal digits up to \\377)"))?;
                out.push(v as u8);
            }
            b'u' | b'U' => {
                let digits = if b == b'u' { 4 } else { 8 };
                let c = self
                    .radix_digits(digits, 16)
                    .and_then(char::from_u32)
                    .ok_or_else(|| bad(&format!("\\{} (a Unicode scalar value)", b as char)))?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            _ => {
                return Err(bad(&format!(
                    "\\{}",
                    std::str::from_utf8(&self.s[self.at - 1..])
                        .ok()
                        .and_then(|rest| rest.chars().next())
                        .unwrap_or(char::REPLACEMENT_CHARACTER)
                )))
            }
        }
        Ok(())
    }

    fn radix_digits(&mut self, n: usize, radix: u32) -> Option<u32> {
        let digits = self.s.get(self.at..self.at + n)?;
        let mut v = 0u32;
        for &d in digits {
            v = v * radix + char::from(d).to_digit(radix)?;
        }
        self.at += n;
        Some(v)
    }
}

/// Decodes a Loki protobuf push body (already snappy-decompressed, see
/// [`crate::unsnappy`]).
///
/// # Errors
///
/// [`Error::Malformed`] (`loki protobuf`) naming what prost could not decode.
pub fn decode_loki_proto(body: &[u8]) -> Result<PushRequest> {
    PushRequest::decode(body).map_err(|e| Error::Malformed {
        format: "loki protobuf",
        reason: format!("{e}; send a snappy-compressed logproto.PushRequest"),
    })
}

/// Decodes a Loki JSON push body into the same [`PushRequest`] as the protobuf one:
/// `{"streams":[{"stream":{"app":"pay"},"values":[["1700000000000000000","line",
/// {"trace_id":"..."}]]}]}`.
///
/// Each stream's `stream` object is rendered as selector text into `labels` (names that
/// are not `[a-zA-Z_][a-zA-Z0-9_]*` quoted, values with Go escapes), which
/// [`loki_to_append`] parses back. Each value is `[timestamp, line]` or `[timestamp, line,
/// metadata]`: the timestamp a string of decimal nanoseconds (a JSON integer is accepted
/// too), the line a string, the metadata an object of strings (numbers and booleans are
/// taken as their text, `null` as absent). Unknown keys are ignored; missing `streams`,
/// `stream` or `values` are empty.
///
/// # Errors
///
/// [`Error::Malformed`] (`loki json`) naming the stream and value index and what was wrong
/// there, or where the JSON itself broke (line and column).
pub fn decode_loki_json(body: &[u8]) -> Result<PushRequest> {
    let malformed = |reason: String| Error::Malformed {
        format: "loki json",
        reason,
    };
    let root: Value = serde_json::from_slice(body).map_err(|e| malformed(format!("{e}")))?;
    let Value::Object(mut root) = root else {
        return Err(malformed(
            "the body is not a JSON object; send {\"streams\":[...]}".to_owned(),
        ));
    };
    let streams = match root.remove("streams") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(streams)) => streams,
        Some(_) => return Err(malformed("\"streams\" is not an array".to_owned())),
    };
    let mut out = PushRequest {
        streams: Vec::with_capacity(streams.len()),
    };
    for (i, stream) in streams.into_iter().enumerate() {
        let stream = json_stream(stream).map_err(|e| malformed(format!("stream {i}: {e}")))?;
        out.streams.push(stream);
    }
    Ok(out)
}

fn json_stream(stream: Value) -> std::result::Result<StreamAdapter, String> {
    let Value::Object(mut stream) = stream else {
        return Err("is not a JSON object".to_owned());
    };
    let labels = match stream.remove("stream") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(labels)) => labels,
        Some(_) => return Err("\"stream\" is not an object of labels".to_owned()),
    };
    let values = match stream.remove("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(values)) => values,
        Some(_) => return Err("\"values\" is not an array".to_owned()),
    };
    let mut rendered = String::from("{");
    for (k, (name, value)) in labels.into_iter().enumerate() {
        let Value::String(value) = value else {
            return Err(format!("label {} is not a string", quote(&name)));
        };
        if k > 0 {
            rendered.push_str(", ");
        }
        render_label(&name, &value, &mut rendered);
    }
    rendered.push('}');
    let mut entries = Vec::with_capacity(values.len());
    for (j, value) in values.into_iter().enumerate() {
        entries.push(json_entry(value).map_err(|e| format!("value {j}: {e}"))?);
    }
    Ok(StreamAdapter {
        labels: rendered,
        entries,
        hash: 0,
    })
}

/// `name="value"` in selector syntax, the way [`parse_loki_labels`] reads it back.
fn render_label(name: &str, value: &str, out: &mut String) {
    let plain = name
        .bytes()
        .enumerate()
        .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()))
        && !name.is_empty();
    if plain {
        out.push_str(name);
    } else {
        go_quote(name, out);
    }
    out.push('=');
    go_quote(value, out);
}

fn go_quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_entry(value: Value) -> std::result::Result<EntryAdapter, String> {
    let Value::Array(parts) = value else {
        return Err("is not an array [timestamp, line] or [timestamp, line, metadata]".to_owned());
    };
    if !(2..=3).contains(&parts.len()) {
        return Err(format!(
            "has {} elements; send [timestamp, line] or [timestamp, line, metadata]",
            parts.len()
        ));
    }
    let mut parts = parts.into_iter();
    let ns = json_timestamp(parts.next().unwrap_or(Value::Null))?;
    let line = match parts.next() {
        Some(Value::String(line)) => line,
        _ => return Err("the line (second element) is not a string".to_owned()),
    };
    let structured_metadata = match parts.next() {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(metadata)) => json_metadata(metadata)?,
        Some(_) => return Err("the metadata (third element) is not an object".to_owned()),
    };
    Ok(EntryAdapter {
        timestamp: Some(prost_types::Timestamp {
            seconds: ns.div_euclid(SECOND_NS),
            // In 0..1e9, which fits.
            nanos: ns.rem_euclid(SECOND_NS) as i32,
        }),
        line,
        structured_metadata,
    })
}

fn json_timestamp(value: Value) -> std::result::Result<i64, String> {
    let parsed = match &value {
        Value::String(s) => s.parse::<i64>().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    };
    parsed.ok_or_else(|| {
        format!(
            "timestamp {} is not a whole number of nanoseconds since the epoch in i64 range \
             (send it as a string, e.g. \"1700000000000000000\")",
            crate::shorten(&value.to_string())
        )
    })
}

fn json_metadata(
    metadata: serde_json::Map<String, Value>,
) -> std::result::Result<Vec<LabelPairAdapter>, String> {
    let mut out = Vec::with_capacity(metadata.len());
    for (name, value) in metadata {
        let value = match value {
            Value::Null => continue,
            Value::String(s) => s,
            v @ (Value::Bool(_) | Value::Number(_)) => v.to_string(),
            Value::Array(_) | Value::Object(_) => {
                return Err(format!("metadata {} is not a string", quote(&name)))
            }
        };
        out.push(LabelPairAdapter { name, value });
    }
    Ok(out)
}

/// What every entry of one stream shares.
#[derive(Default)]
struct StreamFields {
    service: String,
    namespace: String,
    pod: String,
    cluster: String,
    /// The level text from the labels, if any label gave one.
    level: Option<String>,
    labels: BTreeMap<String, String>,
    attributes: BTreeMap<String, String>,
}

impl StreamFields {
    fn of(pairs: Vec<(String, String)>) -> StreamFields {
        let pairs: Vec<(String, String)> =
            pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        let first = |field: &str| -> Option<&String> {
            LOKI_LABEL_FIELDS
                .iter()
                .filter(|(_, f)| *f == field)
                .find_map(|(label, _)| pairs.iter().find(|(n, _)| n == label).map(|(_, v)| v))
        };
        let mut s = StreamFields {
            service: first("service").cloned().unwrap_or_default(),
            namespace: first("namespace").cloned().unwrap_or_default(),
            pod: first("pod").cloned().unwrap_or_default(),
            cluster: first("cluster").cloned().unwrap_or_default(),
            level: first("level").cloned(),
            ..StreamFields::default()
        };
        for (name, value) in pairs {
            if FIELD_LABELS.contains(&name.as_str()) {
                let field_value = match name.as_str() {
                    "service" => Some(&s.service),
                    "namespace" => Some(&s.namespace),
                    "pod" => Some(&s.pod),
                    "cluster" => Some(&s.cluster),
                    _ => s.level.as_ref(),
                };
                if field_value != Some(&value) {
                    s.attributes.insert(format!("loki.label.{name}"), value);
                }
            } else if STANDARD_FIELDS
                .iter()
                .any(|f| f.eq_ignore_ascii_case(&name))
            {
                s.attributes.insert(format!("loki.label.{name}"), value);
            } else {
                s.labels.insert(name, value);
            }
        }
        s
    }
}

/// Maps a Loki push to one [`AppendRequest`] for `tenant` (from `X-Scope-OrgID`; empty
/// means the default tenant, as in [`crate::normalize`]), by the table of the [module doc](crate::loki).
///
/// The second vector holds the entries refused here, with their flattened position (all
/// entries of the streams before, plus the place in their own stream) and the reason: code
/// `label` for every entry of a stream whose labels do not parse, `timestamp` for a time
/// past `i64` nanoseconds. They are not in the request.
///
/// ```
/// use weir_ingest::{decode_loki_json, loki_to_append};
/// let body = br#"{"streams":[{"stream":{"app":"pay","level":"warn","job":"k8s"},
///     "values":[["1700000000000000000","card declined",{"trace_id":"4BF92F3577B34DA6A3CE929D0E0E4736"}]]}]}"#;
/// let (req, refused) = loki_to_append(decode_loki_json(body)?, "acme");
/// assert!(refused.is_empty());
/// let r = &req.records[0];
/// assert_eq!((r.service.as_str(), r.level.as_str()), ("pay", "warn"));
/// assert_eq!(r.labels["app"], "pay");
/// assert_eq!(r.labels["job"], "k8s");
/// assert_eq!(r.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(r.timestamp_ns, 1_700_000_000_000_000_000);
/// # Ok::<(), weir_ingest::Error>(())
/// ```
pub fn loki_to_append(req: PushRequest, tenant: &str) -> (AppendRequest, Vec<RecordError>) {
    let mut out = AppendRequest {
        tenant: tenant.to_owned(),
        ..Default::default()
    };
    let mut rejected = Vec::new();
    let mut position: u32 = 0;
    for (i, stream) in req.streams.into_iter().enumerate() {
        match parse_loki_labels(&stream.labels) {
            Err(e) => {
                let reason = format!(
                    "stream {i}: labels {} do not parse: {e}",
                    quote(&stream.labels)
                );
                for _ in &stream.entries {
                    rejected.push(RecordError {
                        index: position,
                        reason: reason.clone(),
                        code: "label".to_owned(),
                    });
                    position = position.saturating_add(1);
                }
            }
            Ok(pairs) => {
                let fields = StreamFields::of(pairs);
                for entry in stream.entries {
                    match map_entry(entry, &fields) {
                        Ok(record) => out.records.push(record),
                        Err(r) => rejected.push(RecordError {
                            index: position,
                            reason: format!("stream {i}: {}", r.reason),
                            code: r.code.to_owned(),
                        }),
                    }
                    // A push of 2^32 entries is far past any request size limit;
                    // saturating keeps this total rather than wrapping.
                    position = position.saturating_add(1);
                }
            }
        }
    }
    (out, rejected)
}

fn map_entry(entry: EntryAdapter, fields: &StreamFields) -> std::result::Result<Record, Rejection> {
    let timestamp_ns = match entry.timestamp {
        None => 0,
        Some(ts) => {
            let ns = i128::from(ts.seconds) * i128::from(SECOND_NS) + i128::from(ts.nanos);
            i64::try_from(ns).map_err(|_| Rejection {
                code: "timestamp",
                reason: format!(
                    "entry timestamp {}s {}ns is out of range: past the year 2262 \
                     (i64 nanoseconds)",
                    ts.seconds, ts.nanos
                ),
            })?
        }
    };
    let mut attributes = fields.attributes.clone();
    let mut trace_id = String::new();
    let mut span_id = String::new();
    let mut metadata_level: Option<(usize, String)> = None;
    for LabelPairAdapter { name, value } in entry.structured_metadata {
        if trace_id.is_empty() && TRACE_ID_KEYS.contains(&name.as_str()) && is_hex(&value, 32) {
            trace_id = value.to_ascii_lowercase();
        } else if span_id.is_empty() && SPAN_ID_KEYS.contains(&name.as_str()) && is_hex(&value, 16)
        {
            span_id = value.to_ascii_lowercase();
        } else {
            if let Some(rank) = ["level", "detected_level", "severity"]
                .iter()
                .position(|l| *l == name)
            {
                if !value.is_empty() && metadata_level.as_ref().is_none_or(|(r, _)| rank < *r) {
                    metadata_level = Some((rank, value.clone()));
                }
            }
            attributes.insert(name, value);
        }
    }
    let level_text = fields
        .level
        .clone()
        .or_else(|| metadata_level.map(|(_, text)| text));
    let level = match level_text {
        None => Level::Info,
        Some(text) => Level::from_alias(&text).unwrap_or_else(|| {
            attributes.insert("loki.level".to_owned(), text);
            Level::Info
        }),
    };
    Ok(Record {
        timestamp_ns,
        level: level.as_str().to_owned(),
        body: entry.line.into_bytes(),
        service: fields.service.clone(),
        namespace: fields.namespace.clone(),
        pod: fields.pod.clone(),
        cluster: fields.cluster.clone(),
        labels: fields.labels.clone(),
        attributes,
        trace_id,
        span_id,
    })
}

fn is_hex(s: &str, digits: usize) -> bool {
    s.len() == digits && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{normalize, Limits};

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn ts(ns: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: ns.div_euclid(SECOND_NS),
            nanos: ns.rem_euclid(SECOND_NS) as i32,
        })
    }

    fn entry(ns: i64, line: &str, metadata: &[(&str, &str)]) -> EntryAdapter {
        EntryAdapter {
            timestamp: ts(ns),
            line: line.to_owned(),
            structured_metadata: metadata
                .iter()
                .map(|(n, v)| LabelPairAdapter {
                    name: (*n).to_owned(),
                    value: (*v).to_owned(),
                })
                .collect(),
        }
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
    }

    #[test]
    fn labels_as_promtail_and_alloy_write_them() {
        // Go's labels.String(): sorted, ", " between pairs, strconv.Quote'd values.
        assert_eq!(
            parse_loki_labels(r#"{filename="/var/log/syslog", job="varlogs"}"#).unwrap(),
            pairs(&[("filename", "/var/log/syslog"), ("job", "varlogs")])
        );
        assert_eq!(parse_loki_labels("{}").unwrap(), vec![]);
        assert_eq!(parse_loki_labels("  { }  ").unwrap(), vec![]);
        assert_eq!(
            parse_loki_labels("{a = 'x' ,\n\tb=`raw\\n`,}").unwrap(),
            pairs(&[("a", "x"), ("b", "raw\\n")])
        );
        assert_eq!(
            parse_loki_labels(r#"{"service.name"="api"}"#).unwrap(),
            pairs(&[("service.name", "api")])
        );
    }

    #[test]
    fn go_escapes_are_undone() {
        let got =
            parse_loki_labels(r#"{a="q\"b\\s\n\t\u00e9\U0001F600\x41\101\a\b\f\r\v\'"}"#).unwrap();
        assert_eq!(got[0].1, "q\"b\\s\n\té\u{1F600}AA\u{7}\u{8}\u{c}\r\u{b}'");
        // Raw UTF-8 passes as is.
        assert_eq!(parse_loki_labels("{a=\"日本\"}").unwrap()[0].1, "日本");
    }

    #[test]
    fn label_errors_name_the_byte_offset() {
        let cases = [
            (
                "",
                "expected '{' to open the label set at byte 0, found the end of the text",
            ),
            (
                "app=\"x\"",
                "expected '{' to open the label set at byte 0, found 'a'",
            ),
            (
                "{app:\"x\"}",
                "expected '=' after label name \"app\" at byte 4, found ':'",
            ),
            (
                "{app=x}",
                "expected a quoted label value at byte 5, found 'x'",
            ),
            ("{app=\"x}", "the string opened at byte 5 is not closed"),
            (
                "{app=\"x\" b=\"y\"}",
                "expected ',' or '}' after a label value at byte 9, found 'b'",
            ),
            (
                "{9a=\"x\"}",
                "expected a label name ([a-zA-Z_][a-zA-Z0-9_]*) at byte 1, found '9'",
            ),
            ("{a=\"\\q\"}", "invalid escape \\q at byte 4"),
            (
                "{a=\"\\xZZ\"}",
                "invalid escape \\x (two hex digits) at byte 4",
            ),
            (
                "{a=\"\\uD800\"}",
                "invalid escape \\u (a Unicode scalar value) at byte 4",
            ),
            (
                "{a=\"\\xff\"}",
                "the string opened at byte 3 is not valid UTF-8 once unescaped",
            ),
            (
                "{a=\"1\", a=\"2\"}",
                "label \"a\" is given twice (second at byte 8)",
            ),
            (
                "{a=\"1\"} x",
                "unexpected 'x' after the closing '}' at byte 8",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_loki_labels(text).unwrap_err(), want, "{text}");
        }
    }

    /// What Promtail pushes for a Kubernetes pod (its default scrape config's labels).
    fn promtail_push() -> PushRequest {
        PushRequest {
            streams: vec![
                StreamAdapter {
                    labels: r#"{app="checkout", container="server", filename="/var/log/pods/shop_checkout-6c9f_1/server/0.log", job="shop/checkout", namespace="shop", node_name="node-1", pod="checkout-6c9f-abcde", stream="stderr"}"#.into(),
                    entries: vec![
                        entry(NOW - 2_000, "level=error msg=\"card declined\"", &[
                            ("traceID", "4BF92F3577B34DA6A3CE929D0E0E4736"),
                            ("span_id", "not-a-span"),
                            ("user", "42"),
                        ]),
                        entry(NOW - 1_000, "retrying", &[]),
                    ],
                    hash: 0,
                },
                StreamAdapter {
                    labels: r#"{service_name="pay", service="billing", level="loud", cluster="eu-1", detected_level="warn", trace_id="x"}"#.into(),
                    entries: vec![entry(0, "custom level", &[])],
                    hash: 0,
                },
            ],
        }
    }

    #[test]
    fn promtail_streams_map_to_records() {
        let (req, refused) = loki_to_append(promtail_push(), "acme");
        assert_eq!(refused, vec![]);
        assert_eq!(req.tenant, "acme");
        assert_eq!(req.records.len(), 3);

        let r = &req.records[0];
        assert_eq!(r.timestamp_ns, NOW - 2_000);
        assert_eq!(r.body, b"level=error msg=\"card declined\"");
        assert_eq!(
            (
                r.service.as_str(),
                r.namespace.as_str(),
                r.pod.as_str(),
                r.cluster.as_str()
            ),
            ("checkout", "shop", "checkout-6c9f-abcde", "")
        );
        assert_eq!(r.level, "info", "no level label; the line is not read");
        let mut labels: Vec<_> = r.labels.keys().map(String::as_str).collect();
        labels.sort_unstable();
        assert_eq!(
            labels,
            ["app", "container", "filename", "job", "node_name", "stream"]
        );
        assert_eq!(r.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(r.span_id, "");
        assert_eq!(r.attributes["span_id"], "not-a-span", "invalid id kept");
        assert_eq!(r.attributes["user"], "42");
        assert_eq!(req.records[1].body, b"retrying");

        let r = &req.records[2];
        assert_eq!(r.timestamp_ns, 0, "no time: receive time");
        assert_eq!(r.service, "pay", "service_name wins over service");
        assert_eq!(r.cluster, "eu-1");
        assert_eq!(r.level, "info");
        assert_eq!(r.attributes["loki.level"], "loud");
        assert_eq!(r.attributes["loki.label.service"], "billing");
        assert_eq!(r.attributes["loki.label.trace_id"], "x");
        assert_eq!(r.labels["service_name"], "pay");
        assert_eq!(r.labels["detected_level"], "warn");
        assert!(!r.labels.contains_key("service") && !r.labels.contains_key("level"));

        // The mapped request passes normalisation whole.
        let n = normalize(req, NOW, &Limits::default()).unwrap();
        assert_eq!(n.rejected, vec![]);
    }

    #[test]
    fn level_comes_from_the_first_label_present_then_from_metadata() {
        let one = |labels: &str, metadata: &[(&str, &str)]| {
            let push = PushRequest {
                streams: vec![StreamAdapter {
                    labels: labels.into(),
                    entries: vec![entry(NOW, "x", metadata)],
                    hash: 0,
                }],
            };
            loki_to_append(push, "t").0.records.remove(0)
        };
        assert_eq!(
            one(r#"{severity="ERR", detected_level="debug"}"#, &[]).level,
            "debug"
        );
        assert_eq!(one(r#"{severity="critical"}"#, &[]).level, "fatal");
        assert_eq!(
            one(r#"{level="warning"}"#, &[("level", "error")]).level,
            "warn"
        );
        let r = one("{}", &[("severity", "error"), ("detected_level", "debug")]);
        assert_eq!(r.level, "debug");
        assert_eq!(r.attributes["severity"], "error");
        let r = one(r#"{job="x"}"#, &[("level", "chatty")]);
        assert_eq!(
            (r.level.as_str(), r.attributes["loki.level"].as_str()),
            ("info", "chatty")
        );
        let r = one(r#"{app="web", service="web", level=""}"#, &[]);
        assert_eq!((r.service.as_str(), r.level.as_str()), ("web", "info"));
        assert!(
            !r.attributes.contains_key("loki.label.service"),
            "same value"
        );
        assert!(
            !r.attributes.contains_key("loki.label.level"),
            "empty = absent"
        );
    }

    #[test]
    fn a_stream_with_bad_labels_has_every_entry_refused_at_its_flattened_position() {
        let push = PushRequest {
            streams: vec![
                StreamAdapter {
                    labels: "{a=\"1\"}".into(),
                    entries: vec![entry(NOW, "ok", &[])],
                    hash: 0,
                },
                StreamAdapter {
                    labels: "{a=1}".into(),
                    entries: vec![entry(NOW, "x", &[]), entry(NOW, "y", &[])],
                    hash: 0,
                },
                StreamAdapter {
                    labels: "{}".into(),
                    entries: vec![
                        EntryAdapter {
                            timestamp: Some(prost_types::Timestamp {
                                seconds: i64::MAX,
                                nanos: 0,
                            }),
                            ..Default::default()
                        },
                        entry(NOW, "last", &[]),
                    ],
                    hash: 0,
                },
            ],
        };
        let (req, refused) = loki_to_append(push, "t");
        assert_eq!(req.records.len(), 2);
        assert_eq!(req.records[1].body, b"last");
        let got: Vec<(u32, &str)> = refused.iter().map(|r| (r.index, r.code.as_str())).collect();
        assert_eq!(got, [(1, "label"), (2, "label"), (3, "timestamp")]);
        assert_eq!(
            refused[0].reason,
            "stream 1: labels \"{a=1}\" do not parse: expected a quoted label value at byte 3, found '1'"
        );
        assert!(refused[2]
            .reason
            .starts_with("stream 2: entry timestamp 9223372036854775807s"));
    }

    #[test]
    fn json_push_as_the_loki_docs_and_alloy_send_it() {
        let body = br#"{"streams":[
            {"stream":{"foo":"bar2","service_name":"svc","odd-name":"q\"v"},
             "values":[["1570818238000000000","fizzbuzz"],
                       ["1570818238000000001","with metadata",{"trace_id":"0242ac120002","n":7,"gone":null}]]},
            {"stream":{},"values":[[1570818238000000002,"number ts"]]},
            {"stream":{"a":"b"}}
        ],"unknown":true}"#;
        let push = decode_loki_json(body).unwrap();
        assert_eq!(push.streams.len(), 3);
        let s = &push.streams[0];
        // serde_json's map order (sorted, or as sent with `preserve_order`) is not ours to
        // pin: compare as sets.
        assert!(s.labels.contains(r#""odd-name"="q\"v""#), "{}", s.labels);
        let mut got = parse_loki_labels(&s.labels).unwrap();
        got.sort();
        assert_eq!(
            got,
            pairs(&[
                ("foo", "bar2"),
                ("odd-name", "q\"v"),
                ("service_name", "svc")
            ])
        );
        assert_eq!(s.entries[0].timestamp, ts(1_570_818_238_000_000_000));
        assert_eq!(s.entries[1].line, "with metadata");
        let mut metadata = s.entries[1].structured_metadata.clone();
        metadata.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(
            metadata,
            vec![
                LabelPairAdapter {
                    name: "n".into(),
                    value: "7".into()
                },
                LabelPairAdapter {
                    name: "trace_id".into(),
                    value: "0242ac120002".into()
                },
            ]
        );
        assert_eq!(push.streams[1].labels, "{}");
        assert_eq!(
            push.streams[1].entries[0].timestamp,
            ts(1_570_818_238_000_000_002)
        );
        assert!(push.streams[2].entries.is_empty());

        let (req, refused) = loki_to_append(push, "t");
        assert!(refused.is_empty());
        assert_eq!(
            req.records[1].attributes["trace_id"], "0242ac120002",
            "short id kept"
        );
        assert_eq!(
            req.records[0].labels["odd-name"], "q\"v",
            "normalize refuses the name"
        );
        assert_eq!(decode_loki_json(b"{}").unwrap(), PushRequest::default());
    }

    #[test]
    fn json_errors_name_the_stream_and_value() {
        let err = |body: &str| match decode_loki_json(body.as_bytes()) {
            Err(Error::Malformed {
                format: "loki json",
                reason,
            }) => reason,
            other => panic!("{other:?}"),
        };
        assert!(
            err("{\"streams\":[").contains("EOF while parsing"),
            "{}",
            err("{\"streams\":[")
        );
        assert_eq!(
            err("[]"),
            "the body is not a JSON object; send {\"streams\":[...]}"
        );
        assert_eq!(err(r#"{"streams":{}}"#), "\"streams\" is not an array");
        assert_eq!(
            err(
                r#"{"streams":[{"values":[]},{"stream":{"a":"b"},"values":[["1","x"],["abc","y"]]}]}"#
            ),
            "stream 1: value 1: timestamp \"abc\" is not a whole number of nanoseconds since \
             the epoch in i64 range (send it as a string, e.g. \"1700000000000000000\")"
        );
        assert_eq!(
            err(r#"{"streams":[{"values":[["1",2]]}]}"#),
            "stream 0: value 0: the line (second element) is not a string"
        );
        assert_eq!(
            err(r#"{"streams":[{"values":[["1"]]}]}"#),
            "stream 0: value 0: has 1 elements; send [timestamp, line] or [timestamp, line, metadata]"
        );
        assert_eq!(
            err(r#"{"streams":[{"stream":{"a":1}}]}"#),
            "stream 0: label \"a\" is not a string"
        );
        assert_eq!(
            err(r#"{"streams":[{"values":[["1","x",{"m":[1]}]]}]}"#),
            "stream 0: value 0: metadata \"m\" is not a string"
        );
        assert!(err(r#"{"streams":[{"values":[["1.5","x"]]}]}"#).contains("\"1.5\""));
        assert!(err(r#"{"streams":[{"values":[[1e3,"x"]]}]}"#).contains("1000.0"));
    }

    #[test]
    fn proto_round_trips_and_garbage_is_malformed() {
        let push = promtail_push();
        assert_eq!(decode_loki_proto(&push.encode_to_vec()).unwrap(), push);
        let e = decode_loki_proto(b"\x0a\xff\xff").unwrap_err();
        assert!(
            matches!(
                e,
                Error::Malformed {
                    format: "loki protobuf",
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
