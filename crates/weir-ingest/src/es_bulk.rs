//! Elasticsearch `_bulk` ingest (Filebeat, Logstash, Fluent Bit, Vector, the official
//! clients): the NDJSON body split into operations ([`parse_bulk`]) and a document mapped
//! to a Weir record ([`es_doc_to_record`]).
//!
//! # Document mapping
//!
//! The document is flattened first (`{"log":{"level":"x"}}` and `{"log.level":"x"}` are
//! both the key `log.level`; arrays stay whole), then:
//!
//! | document | Weir |
//! | --- | --- |
//! | `@timestamp`, else `timestamp`, else `time`: RFC 3339 text, epoch milliseconds (number, or a string of digits) | `timestamp_ns` (none = receive time); an `@timestamp` that is no date refuses the document, a `timestamp`/`time` that is none stays an attribute |
//! | `message`, else `msg`, else `log` (when not an object) | `body` (a non-string as its JSON text) |
//! | `level`, else `log.level`, else `severity` | `level`; unknown text gives info, and the text goes to attribute `es.level` |
//! | `service.name`, else `service` (a string) | `service` |
//! | `kubernetes.namespace_name` (Fluent Bit), else `kubernetes.namespace` (Filebeat/ECS) | `namespace` |
//! | `kubernetes.pod_name` (Fluent Bit), else `kubernetes.pod.name` (Filebeat/ECS) | `pod` |
//! | `orchestrator.cluster.name` (ECS) | `cluster` |
//! | `trace.id`, else `trace_id` / `span.id`, else `span_id`, when 32 / 16 hex digits | `trace_id` / `span_id`, lower-cased (otherwise they stay attributes) |
//! | every other field (`kubernetes.host`, `kubernetes.labels.app`, `host.name`, ...) | attribute under its flattened key: strings as they are, other values as JSON text |
//! | the index, the `_id` | attributes `es.index`, `es.id` |
//!
//! No stream labels come from documents (as with OTLP): the stream is the tenant and
//! service, namespace, pod, cluster.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use weir_proto::v1::Record;

use crate::es_flat::{Document, DocumentError, FlatValue};
use crate::timefmt::parse_rfc3339;
use crate::{quote, shorten, Error, Level, Result};

/// A bulk action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BulkAction {
    /// `index`: store the document (replacing one of the same `_id` in Elasticsearch).
    Index,
    /// `create`: store the document (409 in Elasticsearch if its `_id` exists).
    Create,
    /// `delete`: no source line. Weir's log is append-only; the server refuses it per item.
    Delete,
    /// `update`: its source line (`{"doc":..}`) is read past and not kept. Refused per
    /// item by the server, like `delete`.
    Update,
}

impl BulkAction {
    /// The action's name in the NDJSON and in the answer's items.
    pub fn as_str(self) -> &'static str {
        match self {
            BulkAction::Index => "index",
            BulkAction::Create => "create",
            BulkAction::Delete => "delete",
            BulkAction::Update => "update",
        }
    }

    fn parse(name: &str) -> Option<BulkAction> {
        [
            BulkAction::Index,
            BulkAction::Create,
            BulkAction::Delete,
            BulkAction::Update,
        ]
        .into_iter()
        .find(|a| a.as_str() == name)
    }
}

/// One well-formed operation of a bulk request.
#[derive(Clone, Debug, PartialEq)]
pub struct BulkOp {
    /// What to do.
    pub action: BulkAction,
    /// The action's `_index`, else the index of the path (`/{index}/_bulk`).
    pub index: String,
    /// The action's `_id` (a number is taken as its text), if any.
    pub id: Option<String>,
    /// The document, flattened, for `index` and `create`; `None` for `delete` and `update`.
    pub source: Option<Document>,
}

/// One operation refused on its own; the rest of the request goes on. The fields are
/// those of an item of Elasticsearch's bulk answer (`{"<action>":{"_index","_id",
/// "status":400,"error":{"type","reason"}}}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BulkItemError {
    /// The action as written (`create`, or an unknown word).
    pub action: String,
    /// The index it was for; empty when none could be told.
    pub index: String,
    /// The `_id`, if one was given.
    pub id: Option<String>,
    /// Elasticsearch's error type: `mapper_parsing_exception` (the source is not a JSON
    /// object), `action_request_validation_exception` (no index, no source line),
    /// `illegal_argument_exception` (unknown action, metadata of the wrong type).
    pub error_type: &'static str,
    /// What was wrong, naming the line.
    pub reason: String,
}

/// One parsed item: an operation, or why it is refused.
pub type BulkItem = std::result::Result<BulkOp, BulkItemError>;

/// Splits a `_bulk` NDJSON body into its operations, in request order.
///
/// Lines end with `\n` (a `\r` before it is dropped); the last newline is optional. An
/// action line is a JSON object with one key, the action, whose value holds the metadata
/// (`_index`, `_id`; `_type`, `routing`, `pipeline` and the rest are ignored). `index`,
/// `create` and `update` are followed by a source line, `delete` is not; an unknown action
/// is taken to have one, as every action but `delete` does. Blank lines where an action
/// is expected are skipped; a blank source line is that item's error (skipping it would
/// take the next action line as the source).
///
/// Problems of one operation (the source not a JSON object, no index in the action or the
/// path, an unknown action) are that item's [`BulkItemError`], and parsing goes on with the
/// next pair.
///
/// # Errors
///
/// [`Error::Malformed`] (`bulk`) naming the line when an action line is not a JSON object
/// with exactly one key: from there on, which line is an action and which a source can no
/// longer be told.
///
/// ```
/// use weir_ingest::{parse_bulk, BulkAction};
/// let body = b"{\"create\":{\"_index\":\"logs\",\"_id\":\"1\"}}\n{\"message\":\"hi\"}\n\
///              {\"delete\":{\"_id\":\"2\"}}\n{\"index\":{}}\n[1]\n";
/// let items = parse_bulk(body, Some("fallback"))?;
/// let first = items[0].as_ref().unwrap();
/// assert_eq!((first.action, first.index.as_str()), (BulkAction::Create, "logs"));
/// assert_eq!(items[1].as_ref().unwrap().index, "fallback");
/// assert_eq!(items[2].as_ref().unwrap_err().error_type, "mapper_parsing_exception");
/// # Ok::<(), weir_ingest::Error>(())
/// ```
pub fn parse_bulk(body: &[u8], path_index: Option<&str>) -> Result<Vec<BulkItem>> {
    let path_index = path_index.filter(|i| !i.is_empty());
    let mut lines = body
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.strip_suffix(b"\r").unwrap_or(line)));
    let mut items = Vec::new();
    while let Some((n, line)) = lines.next() {
        if is_blank(line) {
            continue;
        }
        let (name, meta) = action_line(line, n)?;
        let action = BulkAction::parse(&name);
        let source_line = if action == Some(BulkAction::Delete) {
            None
        } else {
            Some(lines.next())
        };
        items.push(item(n, &name, action, meta, source_line, path_index));
    }
    Ok(items)
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// The metadata of an action that Weir reads; the rest (`_type`, `routing`, `pipeline`,
/// ...) is skipped without being built.
#[derive(Default, Deserialize)]
struct Meta {
    #[serde(rename = "_index", default)]
    index: Option<Value>,
    #[serde(rename = "_id", default)]
    id: Option<Value>,
}

/// An action's metadata, or why it is refused (the metadata is not an object).
type Metadata = std::result::Result<Meta, String>;

/// An action's metadata as written: an object, `null`, or something else (refused).
enum MetaAs {
    Object(Meta),
    Null,
    Other,
}

impl<'de> Deserialize<'de> for MetaAs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MetaAs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an action's metadata")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<MetaAs, A::Error> {
                Meta::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(MetaAs::Object)
            }
            fn visit_unit<E>(self) -> std::result::Result<MetaAs, E> {
                Ok(MetaAs::Null)
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<MetaAs, E> {
                Ok(MetaAs::Other)
            }
            fn visit_i64<E>(self, _: i64) -> std::result::Result<MetaAs, E> {
                Ok(MetaAs::Other)
            }
            fn visit_u64<E>(self, _: u64) -> std::result::Result<MetaAs, E> {
                Ok(MetaAs::Other)
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<MetaAs, E> {
                Ok(MetaAs::Other)
            }
            fn visit_str<E>(self, _: &str) -> std::result::Result<MetaAs, E> {
                Ok(MetaAs::Other)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<MetaAs, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(MetaAs::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// An action line: `{"<action>": <metadata>}`, read without building a map.
struct ActionLine {
    name: String,
    meta: MetaAs,
    keys: usize,
}

impl<'de> Deserialize<'de> for ActionLine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Option<ActionLine>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an action line")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut line = ActionLine {
                    name: String::new(),
                    meta: MetaAs::Null,
                    keys: 0,
                };
                while let Some(name) = map.next_key::<String>()? {
                    if line.keys == 0 {
                        (line.name, line.meta) = (name, map.next_value()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                    line.keys += 1;
                }
                Ok(Some(line))
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_i64<E>(self, _: i64) -> std::result::Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_u64<E>(self, _: u64) -> std::result::Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_str<E>(self, _: &str) -> std::result::Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(None)
            }
        }
        d.deserialize_any(V)?
            .ok_or_else(|| serde::de::Error::custom(NOT_AN_OBJECT))
    }
}

const NOT_AN_OBJECT: &str = "weir: the action line is not a JSON object";

/// The action's name and its metadata.
fn action_line(line: &[u8], n: usize) -> Result<(String, Metadata)> {
    let malformed = |what: String| Error::Malformed {
        format: "bulk",
        reason: format!(
            "line {n}: {what}; each action line is one JSON object such as \
             {{\"create\":{{\"_index\":\"logs\"}}}}, followed by its source line (delete has none)"
        ),
    };
    let line: ActionLine = serde_json::from_slice(line).map_err(|e| {
        if e.to_string().starts_with(NOT_AN_OBJECT) {
            malformed("the action line is not a JSON object".to_owned())
        } else {
            malformed(format!("the action line is not JSON ({e})"))
        }
    })?;
    if line.keys != 1 {
        return Err(malformed(format!(
            "the action line has {} keys, not one (index, create, delete or update)",
            line.keys
        )));
    }
    let meta = match line.meta {
        MetaAs::Object(meta) => Ok(meta),
        MetaAs::Null => Ok(Meta::default()),
        MetaAs::Other => Err(format!(
            "line {n}: the {} action's metadata is not an object",
            quote(&line.name)
        )),
    };
    Ok((line.name, meta))
}

/// Builds one item; `source_line` is `None` for `delete`, `Some(None)` when the body ended
/// where a source line was due.
fn item(
    n: usize,
    name: &str,
    action: Option<BulkAction>,
    meta: Metadata,
    source_line: Option<Option<(usize, &[u8])>>,
    path_index: Option<&str>,
) -> BulkItem {
    let mut refused = BulkItemError {
        action: name.to_owned(),
        index: path_index.unwrap_or_default().to_owned(),
        id: None,
        error_type: "illegal_argument_exception",
        reason: String::new(),
    };
    let meta = match meta {
        Ok(meta) => meta,
        Err(reason) => {
            refused.reason = reason;
            return Err(refused);
        }
    };
    let index = match meta.index {
        None | Some(Value::Null) => path_index.map(str::to_owned),
        Some(Value::String(i)) if i.is_empty() => path_index.map(str::to_owned),
        Some(Value::String(i)) => Some(i),
        Some(other) => {
            refused.reason = format!(
                "line {n}: _index {} is not a string",
                shorten(&other.to_string())
            );
            return Err(refused);
        }
    };
    refused.index = index.clone().unwrap_or_default();
    refused.id = match meta.id {
        Some(Value::String(id)) => Some(id),
        Some(Value::Number(id)) => Some(id.to_string()),
        _ => None,
    };
    let Some(action) = action else {
        refused.reason = format!(
            "line {n}: unknown action {}; use index, create, delete or update",
            quote(name)
        );
        return Err(refused);
    };
    let Some(index) = index else {
        refused.error_type = "action_request_validation_exception";
        refused.reason = format!(
            "line {n}: index is missing; name it in the action (\"_index\") or in the path \
             (/{{index}}/_bulk)"
        );
        return Err(refused);
    };
    let source = match (action, source_line) {
        (BulkAction::Index | BulkAction::Create, Some(line)) => match source(line, n) {
            Ok(map) => Some(map),
            Err((error_type, reason)) => {
                refused.error_type = error_type;
                refused.reason = reason;
                return Err(refused);
            }
        },
        _ => None,
    };
    Ok(BulkOp {
        action,
        index,
        id: refused.id,
        source,
    })
}

/// The source document of the action on line `n`.
fn source(
    line: Option<(usize, &[u8])>,
    n: usize,
) -> std::result::Result<Document, (&'static str, String)> {
    let Some((m, line)) = line else {
        return Err((
            "action_request_validation_exception",
            format!("line {n}: the action has no source line after it"),
        ));
    };
    if is_blank(line) {
        return Err((
            "mapper_parsing_exception",
            format!("line {m}: the source line is empty"),
        ));
    }
    Document::parse(line).map_err(|e| {
        let reason = match e {
            DocumentError::NotAnObject => format!("line {m}: the source is not a JSON object"),
            DocumentError::Json(e) => format!("line {m}: failed to parse the source: {e}"),
        };
        ("mapper_parsing_exception", reason)
    })
}

/// Maps one document to a [`Record`] by the table of the [module doc](crate::es_bulk). `index` becomes
/// attribute `es.index`, `id` (the action's `_id`) attribute `es.id`. The document's
/// strings move into the record.
///
/// # Errors
///
/// The reason, when `@timestamp` is not a date (Elasticsearch refuses such a document
/// too, every logs template maps `@timestamp` as a date) or is outside `i64` nanoseconds:
/// the server answers it as that item's `mapper_parsing_exception`.
///
/// ```
/// use weir_ingest::{es_doc_to_record, es_flat::Document};
/// let doc = Document::parse(br#"{
///     "@timestamp": "2024-01-15T10:20:30.123Z", "message": "card declined",
///     "log": {"level": "ERROR"}, "service": {"name": "pay"}, "http.status": 502
/// }"#).unwrap();
/// let r = es_doc_to_record(doc, "logs-pay", Some("abc")).unwrap();
/// assert_eq!((r.service.as_str(), r.level.as_str()), ("pay", "error"));
/// assert_eq!(r.timestamp_ns, 1_705_314_030_123_000_000);
/// assert_eq!(r.attributes["http.status"], "502");
/// assert_eq!(r.attributes["es.index"], "logs-pay");
/// assert_eq!(r.attributes["es.id"], "abc");
/// ```
pub fn es_doc_to_record(
    doc: Document,
    index: &str,
    id: Option<&str>,
) -> std::result::Result<Record, String> {
    let chosen = choose(&doc);
    let Document { keys, fields } = doc;
    let mut fields: Vec<Option<(std::ops::Range<usize>, FlatValue)>> =
        fields.into_iter().map(Some).collect();
    let mut take = |slot: Slot| chosen[slot as usize].and_then(|(_, at)| fields[at].take());
    let text = |f: Option<(std::ops::Range<usize>, FlatValue)>| f.map(|(_, v)| v.into_text());
    let body = text(take(Slot::Body)).unwrap_or_default();
    let timestamp_ns = match take(Slot::AtTimestamp) {
        Some((key, v)) => es_time(&v).ok_or_else(|| not_a_date(&keys[key], &v))?,
        None => take(Slot::Time).and_then(|(_, v)| es_time(&v)).unwrap_or(0),
    };
    let level_text = text(take(Slot::Level));
    let service = text(take(Slot::Service)).unwrap_or_default();
    let namespace = text(take(Slot::Namespace)).unwrap_or_default();
    let pod = text(take(Slot::Pod)).unwrap_or_default();
    let cluster = text(take(Slot::Cluster)).unwrap_or_default();
    let lower = |id: Option<String>| {
        let mut s = id.unwrap_or_default();
        s.make_ascii_lowercase();
        s
    };
    let trace_id = lower(text(take(Slot::TraceId)));
    let span_id = lower(text(take(Slot::SpanId)));

    let mut attributes: BTreeMap<String, String> = BTreeMap::new();
    attributes.extend(
        fields
            .into_iter()
            .flatten()
            .map(|(k, v)| (keys[k].to_owned(), v.into_text())),
    );
    let level = match level_text {
        Some(t) if !t.trim().is_empty() => Level::from_alias(&t).unwrap_or_else(|| {
            attributes.insert("es.level".to_owned(), t);
            Level::Info
        }),
        _ => Level::Info,
    };
    attributes.insert("es.index".to_owned(), index.to_owned());
    if let Some(id) = id {
        attributes.insert("es.id".to_owned(), id.to_owned());
    }
    Ok(Record {
        timestamp_ns,
        level: level.as_str().to_owned(),
        body: body.into_bytes(),
        service,
        namespace,
        pod,
        cluster,
        labels: BTreeMap::new(),
        attributes,
        trace_id,
        span_id,
    })
}

/// The record fields a document's fields may fill.
#[derive(Clone, Copy)]
enum Slot {
    Body,
    AtTimestamp,
    Time,
    Level,
    Service,
    Namespace,
    Pod,
    Cluster,
    TraceId,
    SpanId,
}

const SLOTS: usize = 10;

/// The slot a field fills, with its rank (lower is preferred), if its value is of a kind
/// the slot takes. A top-level `message`/`msg` was kept whole by the parser, so that a
/// structured body stays one JSON text; `log` is a body only when it is not an object
/// (ECS's `log` holds `log.level`, ..., and was flattened, so no field is named `log`).
fn slot_of(key: &str, v: &FlatValue) -> Option<(Slot, u8)> {
    let hex = |digits| v.as_str().is_some_and(|s| is_hex(s, digits));
    let scalar = !v.is_array();
    Some(match key {
        "message" => (Slot::Body, 0),
        "msg" => (Slot::Body, 1),
        "log" => (Slot::Body, 2),
        "@timestamp" => (Slot::AtTimestamp, 0),
        "timestamp" if es_time(v).is_some() => (Slot::Time, 0),
        "time" if es_time(v).is_some() => (Slot::Time, 1),
        "level" => (Slot::Level, 0),
        "log.level" => (Slot::Level, 1),
        "severity" => (Slot::Level, 2),
        "service.name" => (Slot::Service, 0),
        "service" if v.as_str().is_some() => (Slot::Service, 1),
        "kubernetes.namespace_name" if scalar => (Slot::Namespace, 0),
        "kubernetes.namespace" if scalar => (Slot::Namespace, 1),
        "kubernetes.pod_name" if scalar => (Slot::Pod, 0),
        "kubernetes.pod.name" if scalar => (Slot::Pod, 1),
        "orchestrator.cluster.name" if scalar => (Slot::Cluster, 0),
        "trace.id" if hex(32) => (Slot::TraceId, 0),
        "trace_id" if hex(32) => (Slot::TraceId, 1),
        "span.id" if hex(16) => (Slot::SpanId, 0),
        "span_id" if hex(16) => (Slot::SpanId, 1),
        _ => return None,
    })
}

/// For each slot, the (rank, position) of the field that fills it: the most preferred
/// key, and of several fields with that key the first in the document. One pass over the
/// fields, however many the document has.
fn choose(doc: &Document) -> [Option<(u8, usize)>; SLOTS] {
    let mut chosen = [None; SLOTS];
    for (at, (k, v)) in doc.iter().enumerate() {
        if let Some((slot, rank)) = slot_of(k, v) {
            let best = &mut chosen[slot as usize];
            if best.is_none_or(|(r, _)| rank < r) {
                *best = Some((rank, at));
            }
        }
    }
    chosen
}

/// The refusal of an `@timestamp` that is not a date.
fn not_a_date(key: &str, v: &FlatValue) -> String {
    let shown = match v {
        FlatValue::Str(s) => Value::String(s.clone()).to_string(),
        FlatValue::Json(j) => j.to_string(),
    };
    format!(
        "field [{key}] {} is not a date: send RFC 3339 text (2024-01-15T10:20:30.123Z) or \
         epoch milliseconds, within the years 1678-2262",
        shorten(&shown)
    )
}

/// A date as Elasticsearch's default `date` format takes it (`strict_date_optional_time
/// ||epoch_millis`): RFC 3339 / ISO 8601 text, or milliseconds since the epoch as a number
/// or a string of digits. `None` for anything else or past `i64` nanoseconds.
fn es_time(v: &FlatValue) -> Option<i64> {
    const MILLI_NS: i128 = 1_000_000;
    let from_millis = |ms: i128| i64::try_from(ms.checked_mul(MILLI_NS)?).ok();
    match v {
        FlatValue::Json(Value::Number(n)) => {
            if let Some(ms) = n.as_i64() {
                from_millis(i128::from(ms))
            } else {
                // Fractional milliseconds: whole and fraction apart, so that the
                // nanoseconds are not rounded to a 256 ns step of an f64 near 1.7e18.
                let ms = n.as_f64().filter(|f| f.is_finite() && f.abs() < 9.2e12)?;
                let whole = from_millis(ms.trunc() as i128)?;
                whole.checked_add((ms.fract() * 1e6).round() as i64)
            }
        }
        FlatValue::Str(s) => {
            let digits = s.strip_prefix('-').unwrap_or(s);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                from_millis(s.parse::<i128>().ok()?)
            } else {
                parse_rfc3339(s)
            }
        }
        _ => None,
    }
}

fn is_hex(s: &str, digits: usize) -> bool {
    s.len() == digits && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{normalize, Limits};
    use serde_json::json;

    fn obj(v: Value) -> Document {
        Document::from_value(&v).expect("an object")
    }

    #[test]
    fn fluent_bit_bulk_with_type_and_kubernetes_metadata() {
        // Fluent Bit's es output (Logstash_Format on, Suppress_Type_Name off) after its
        // kubernetes filter: `_type` in the action, `log` the raw line, `kubernetes.*`.
        let body = concat!(
            r#"{"create":{"_index":"logstash-2024.01.15","_type":"_doc"}}"#,
            "\n",
            r#"{"@timestamp":"2024-01-15T10:20:30.123Z","log":"2024-01-15 10:20:30 ERROR payment failed\n","stream":"stderr","time":"2024-01-15T10:20:30.123456789Z","kubernetes":{"pod_name":"checkout-6c9f-abcde","namespace_name":"shop","pod_id":"0b1c","labels":{"app":"checkout","pod-template-hash":"6c9f"},"host":"node-1","container_name":"server","docker_id":"d0c","container_image":"shop/checkout:1.4"}}"#,
            "\n",
        );
        let items = parse_bulk(body.as_bytes(), None).unwrap();
        assert_eq!(items.len(), 1);
        let op = items[0].as_ref().unwrap();
        assert_eq!(op.action, BulkAction::Create);
        assert_eq!(
            (op.index.as_str(), op.id.as_deref()),
            ("logstash-2024.01.15", None)
        );
        let r = es_doc_to_record(op.source.clone().unwrap(), &op.index, None).unwrap();
        assert_eq!(r.timestamp_ns, 1_705_314_030_123_000_000);
        assert_eq!(r.body, b"2024-01-15 10:20:30 ERROR payment failed\n");
        assert_eq!(r.level, "info", "the line is not read for a level");
        assert_eq!(
            (r.namespace.as_str(), r.pod.as_str(), r.cluster.as_str()),
            ("shop", "checkout-6c9f-abcde", "")
        );
        let a = &r.attributes;
        assert_eq!(a["kubernetes.host"], "node-1");
        assert_eq!(a["kubernetes.labels.app"], "checkout");
        assert_eq!(a["kubernetes.labels.pod-template-hash"], "6c9f");
        assert_eq!(a["kubernetes.container_name"], "server");
        assert_eq!(
            a["time"], "2024-01-15T10:20:30.123456789Z",
            "not the time used"
        );
        assert_eq!(a["stream"], "stderr");
        assert_eq!(a["es.index"], "logstash-2024.01.15");
        assert!(!a.contains_key("es.id"));
        assert!(!a.contains_key("log") && !a.contains_key("@timestamp"));
        assert!(r.labels.is_empty());
        let n = normalize(
            weir_proto::v1::AppendRequest {
                records: vec![r],
                ..Default::default()
            },
            1_705_314_031_000_000_000,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(n.rejected, vec![]);
    }

    #[test]
    fn filebeat_ecs_document() {
        let doc = obj(json!({
            "@timestamp": "2024-01-15T10:20:30.123Z",
            "message": "GET /cart 200",
            "log": {"level": "warn", "file": {"path": "/var/log/containers/checkout.log"}, "offset": 1234},
            "stream": "stdout",
            "input": {"type": "container"},
            "kubernetes": {
                "namespace": "shop",
                "pod": {"name": "checkout-6c9f-abcde", "uid": "0b1c", "ip": "10.0.0.5"},
                "node": {"name": "node-1"},
                "labels": {"app": "checkout"},
                "container": {"name": "server"}
            },
            "orchestrator": {"cluster": {"name": "prod-eu"}},
            "service": {"name": "checkout", "version": "1.4"},
            "trace": {"id": "4BF92F3577B34DA6A3CE929D0E0E4736"},
            "span": {"id": "00f067aa0ba902b7"},
            "host": {"name": "node-1"},
            "ecs": {"version": "8.0.0"},
            "tags": ["a", "b"],
            "empty": {}
        }));
        let r = es_doc_to_record(doc, ".ds-filebeat-8.12.0", Some("x1")).unwrap();
        assert_eq!(r.body, b"GET /cart 200");
        assert_eq!(r.level, "warn");
        assert_eq!(r.service, "checkout");
        assert_eq!(
            (r.namespace.as_str(), r.pod.as_str(), r.cluster.as_str()),
            ("shop", "checkout-6c9f-abcde", "prod-eu")
        );
        assert_eq!(r.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(r.span_id, "00f067aa0ba902b7");
        let a = &r.attributes;
        assert_eq!(a["log.file.path"], "/var/log/containers/checkout.log");
        assert_eq!(a["log.offset"], "1234");
        assert_eq!(a["kubernetes.pod.uid"], "0b1c");
        assert_eq!(a["service.version"], "1.4");
        assert_eq!(a["tags"], r#"["a","b"]"#);
        assert_eq!(a["es.id"], "x1");
        assert!(!a.contains_key("empty") && !a.contains_key("trace.id"));
    }

    #[test]
    fn dotted_keys_and_fallback_fields() {
        let doc = obj(json!({
            "timestamp": 1705314030123i64,
            "msg": {"structured": true},
            "log.level": "LOUD",
            "service": "billing",
            "kubernetes.pod_name": "p",
            "trace_id": "not-hex",
            "span_id": "00F067AA0BA902B7"
        }));
        let r = es_doc_to_record(doc, "i", None).unwrap();
        assert_eq!(r.timestamp_ns, 1_705_314_030_123_000_000);
        assert_eq!(r.body, br#"{"structured":true}"#);
        assert_eq!(
            (r.level.as_str(), r.attributes["es.level"].as_str()),
            ("info", "LOUD")
        );
        assert_eq!(r.service, "billing");
        assert_eq!(r.pod, "p");
        assert_eq!(
            (r.trace_id.as_str(), r.attributes["trace_id"].as_str()),
            ("", "not-hex")
        );
        assert_eq!(r.span_id, "00f067aa0ba902b7");
    }

    #[test]
    fn timestamps_in_every_form_elasticsearch_takes() {
        let t = |v: Value| es_doc_to_record(obj(json!({ "@timestamp": v })), "i", None);
        let want = 1_705_314_030_123_000_000;
        assert_eq!(
            t(json!("2024-01-15T10:20:30.123Z")).unwrap().timestamp_ns,
            want
        );
        assert_eq!(
            t(json!("2024-01-15T11:20:30.123+01:00"))
                .unwrap()
                .timestamp_ns,
            want
        );
        assert_eq!(t(json!(1705314030123i64)).unwrap().timestamp_ns, want);
        assert_eq!(t(json!("1705314030123")).unwrap().timestamp_ns, want);
        assert_eq!(
            t(json!(1705314030123.5)).unwrap().timestamp_ns,
            want + 500_000
        );
        let e = t(json!("yesterday")).unwrap_err();
        assert!(
            e.starts_with("field [@timestamp] \"yesterday\" is not a date"),
            "{e}"
        );
        assert!(t(json!(u64::MAX)).is_err());
        assert!(t(json!(i64::MAX)).is_err());
        // `time` that is not a date stays an attribute; no time at all is receive time.
        let r =
            es_doc_to_record(obj(json!({"time": "12ms", "timestamp": "bad"})), "i", None).unwrap();
        assert_eq!(r.timestamp_ns, 0);
        assert_eq!(r.attributes["time"], "12ms");
    }

    #[test]
    fn every_action_and_per_item_errors() {
        let body = concat!(
            "{\"index\":{\"_index\":\"a\",\"_id\":7}}\r\n",
            "{\"m\":1}\r\n",
            "\n",
            "{\"delete\":{\"_index\":\"a\",\"_id\":\"d\"}}\n",
            "{\"update\":{\"_id\":\"u\"}}\n",
            "{\"doc\":{\"m\":2}}\n",
            "{\"create\":{}}\n",
            "\"just a string\"\n",
            "{\"upsert\":{\"_index\":\"b\"}}\n",
            "{\"m\":3}\n",
            "{\"create\":{\"_index\":\"c\"}}\n",
            "{not json\n",
            "{\"create\":{\"_index\":\"c\"}}\n",
            "   \n",
            "{\"create\":{\"_index\":5}}\n",
            "{}\n",
            "{\"create\":{\"_index\":\"last\"}}",
        );
        let items = parse_bulk(body.as_bytes(), Some("")).unwrap();
        let summary: Vec<String> = items
            .iter()
            .map(|i| match i {
                Ok(op) => format!(
                    "{} {} {:?} {}",
                    op.action.as_str(),
                    op.index,
                    op.id,
                    op.source.is_some()
                ),
                Err(e) => format!("{} {} {}: {}", e.action, e.index, e.error_type, e.reason),
            })
            .collect();
        assert_eq!(
            summary,
            [
                "index a Some(\"7\") true",
                "delete a Some(\"d\") false",
                "update  action_request_validation_exception: line 5: index is missing; name it \
                 in the action (\"_index\") or in the path (/{index}/_bulk)",
                "create  action_request_validation_exception: line 7: index is missing; name it \
                 in the action (\"_index\") or in the path (/{index}/_bulk)",
                "upsert b illegal_argument_exception: line 9: unknown action \"upsert\"; use \
                 index, create, delete or update",
                "create c mapper_parsing_exception: line 12: failed to parse the source: key must \
                 be a string at line 1 column 2",
                "create c mapper_parsing_exception: line 14: the source line is empty",
                "create  illegal_argument_exception: line 15: _index 5 is not a string",
                "create last action_request_validation_exception: line 17: the action has no \
                 source line after it",
            ]
        );
        // With an index in the path, update is an item the server refuses on its own.
        let items = parse_bulk(b"{\"update\":{\"_id\":\"u\"}}\n{\"doc\":{}}\n", Some("p")).unwrap();
        assert_eq!(
            items,
            vec![Ok(BulkOp {
                action: BulkAction::Update,
                index: "p".into(),
                id: Some("u".into()),
                source: None
            })]
        );
        assert_eq!(parse_bulk(b"", None).unwrap(), vec![]);
        assert_eq!(parse_bulk(b"\n\n", None).unwrap(), vec![]);
    }

    #[test]
    fn a_broken_action_line_refuses_the_request_naming_the_line() {
        let cases = [
            (
                "{\"index\":{}}\n{}\n{nope\n{}\n",
                "line 3: the action line is not JSON (key must be a string at line 1 column 2)",
            ),
            ("[1]\n", "line 1: the action line is not a JSON object"),
            (
                "{\"index\":{},\"create\":{}}\n{}\n",
                "line 1: the action line has 2 keys, not one (index, create, delete or update)",
            ),
            (
                "{}\n",
                "line 1: the action line has 0 keys, not one (index, create, delete or update)",
            ),
        ];
        for (body, want) in cases {
            match parse_bulk(body.as_bytes(), Some("i")) {
                Err(Error::Malformed {
                    format: "bulk",
                    reason,
                }) => {
                    assert!(reason.starts_with(want), "{reason}");
                    assert!(reason.contains("followed by its source line"), "{reason}");
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }
}
