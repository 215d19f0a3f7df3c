//! OTLP/JSON (`POST /v1/logs` with `Content-Type: application/json`) decoded into the
//! same prost messages as OTLP/protobuf, so that both go through [`crate::otlp_to_append`].
//!
//! The encoding is protobuf's JSON mapping with the OTLP specification's exceptions:
//!
//! - keys in lowerCamelCase (`timeUnixNano`); the proto field names (`time_unix_nano`) are
//!   accepted too, as every protobuf JSON parser does; unknown keys are ignored, `null` is
//!   the field's default;
//! - `traceId` / `spanId` as **hex** strings (not base64, unlike plain protobuf JSON);
//! - enums (`severityNumber`) as integers, or their names (`SEVERITY_NUMBER_ERROR`);
//! - 64-bit integers (`timeUnixNano`, `observedTimeUnixNano`, `intValue`) as decimal
//!   strings or JSON numbers;
//! - `doubleValue` a number or `"NaN"`, `"Infinity"`, `"-Infinity"` (or a numeric string);
//!   `bytesValue` base64 (standard or URL-safe, padded or not).
//!
//! `arrayValue` and `kvlistValue` may nest at most [`OTLP_JSON_DEPTH_MAX`] levels: the
//! decoder and the renderer recurse, so depth is bounded where the input comes in.

use serde_json::{Map, Value};
use weir_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use weir_proto::otlp::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use weir_proto::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use weir_proto::otlp::resource::v1::Resource;

use crate::{Error, Result};

/// How deeply `arrayValue` / `kvlistValue` may nest in one attribute or body (a plain
/// value is depth 1). Structured logs rarely pass 5.
pub const OTLP_JSON_DEPTH_MAX: usize = 32;

/// Decodes an OTLP/JSON logs export (see the [module doc](crate::otlp_json) for the encoding rules).
///
/// # Errors
///
/// [`Error::Malformed`] (`otlp json`): the JSON does not parse (line and column), or a
/// field has the wrong type, with its path (`resourceLogs[0].scopeLogs[0].logRecords[3]
/// .traceId: ...`), or values nest deeper than [`OTLP_JSON_DEPTH_MAX`].
///
/// ```
/// let body = br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name",
///   "value":{"stringValue":"api"}}]},"scopeLogs":[{"logRecords":[{"timeUnixNano":"1700000000000000000",
///   "severityNumber":"SEVERITY_NUMBER_WARN","body":{"stringValue":"slow"},
///   "traceId":"5B8EFFF798038103D269B633813FC60C"}]}]}]}"#;
/// let export = weir_ingest::decode_otlp_json(body)?;
/// let record = &export.resource_logs[0].scope_logs[0].log_records[0];
/// assert_eq!(record.severity_number, 13);
/// assert_eq!(record.trace_id[0], 0x5b);
/// # Ok::<(), weir_ingest::Error>(())
/// ```
pub fn decode_otlp_json(body: &[u8]) -> Result<ExportLogsServiceRequest> {
    let malformed = |reason: String| Error::Malformed {
        format: "otlp json",
        reason,
    };
    let root: Value = serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
    export(root).map_err(malformed)
}

type Decoded<T> = std::result::Result<T, String>;

/// Where a value is in the document, for errors: a list linked through the stack, so that
/// nothing is formatted unless an error is.
#[derive(Clone, Copy)]
struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    seg: Seg<'a>,
}

#[derive(Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

impl<'a> Path<'a> {
    const ROOT: Path<'static> = Path {
        parent: None,
        seg: Seg::Key(""),
    };

    fn key(&'a self, key: &'a str) -> Path<'a> {
        Path {
            parent: Some(self),
            seg: Seg::Key(key),
        }
    }

    fn index(&'a self, i: usize) -> Path<'a> {
        Path {
            parent: Some(self),
            seg: Seg::Index(i),
        }
    }

    /// `message` prefixed with this path.
    fn err(&self, message: impl std::fmt::Display) -> String {
        let mut segs = Vec::new();
        let mut at = Some(self);
        while let Some(p) = at {
            segs.push(p.seg);
            at = p.parent;
        }
        let mut out = String::new();
        for seg in segs.iter().rev() {
            match seg {
                Seg::Key("") => {}
                Seg::Key(k) if out.is_empty() => out.push_str(k),
                Seg::Key(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Seg::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        if out.is_empty() {
            format!("the body: {message}")
        } else {
            format!("{out}: {message}")
        }
    }
}

/// Takes a field by its lowerCamelCase name or its proto name; `null` is absent.
fn take(map: &mut Map<String, Value>, camel: &str, snake: &str) -> Option<Value> {
    let snake_value = if camel == snake {
        None
    } else {
        map.remove(snake)
    };
    map.remove(camel).or(snake_value).filter(|v| !v.is_null())
}

fn what(v: &Value) -> String {
    let text = v.to_string();
    match v {
        Value::Object(_) => "an object".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        _ => crate::shorten(&text),
    }
}

fn object(v: Value, path: &Path<'_>) -> Decoded<Map<String, Value>> {
    match v {
        Value::Object(map) => Ok(map),
        other => Err(path.err(format!("{} is not a JSON object", what(&other)))),
    }
}

/// The elements of an array field, each with its path.
fn array(v: Option<Value>, path: &Path<'_>) -> Decoded<Vec<Value>> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(path.err(format!("{} is not an array", what(&other)))),
    }
}

fn string(v: Option<Value>, path: &Path<'_>) -> Decoded<String> {
    match v {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(path.err(format!("{} is not a string", what(&other)))),
    }
}

/// An integer field: a JSON number (integral) or a decimal string, in `T`'s range.
fn integer<T: TryFrom<i128>>(v: Option<Value>, path: &Path<'_>, type_name: &str) -> Decoded<T> {
    let Some(v) = v else {
        return T::try_from(0).map_err(|_| path.err("has no default"));
    };
    let wide: Option<i128> = match &v {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 2f64.powi(64))
                    .map(|f| f as i128)
            }),
        Value::String(s) => s.parse::<i128>().ok(),
        _ => None,
    };
    wide.and_then(|w| T::try_from(w).ok()).ok_or_else(|| {
        path.err(format!(
            "{} is not an integer of type {type_name} (a JSON number or a decimal string)",
            what(&v)
        ))
    })
}

fn export(root: Value) -> Decoded<ExportLogsServiceRequest> {
    let path = Path::ROOT;
    let mut root = object(root, &path)?;
    let path = path.key("resourceLogs");
    let items = array(take(&mut root, "resourceLogs", "resource_logs"), &path)?;
    let mut out = ExportLogsServiceRequest {
        resource_logs: Vec::with_capacity(items.len()),
    };
    for (i, item) in items.into_iter().enumerate() {
        out.resource_logs.push(resource_logs(item, &path.index(i))?);
    }
    Ok(out)
}

fn resource_logs(v: Value, path: &Path<'_>) -> Decoded<ResourceLogs> {
    let mut m = object(v, path)?;
    let resource = match take(&mut m, "resource", "resource") {
        None => None,
        Some(r) => {
            let path = path.key("resource");
            let mut r = object(r, &path)?;
            Some(Resource {
                attributes: key_values(
                    take(&mut r, "attributes", "attributes"),
                    &path.key("attributes"),
                    0,
                )?,
                dropped_attributes_count: integer(
                    take(&mut r, "droppedAttributesCount", "dropped_attributes_count"),
                    &path.key("droppedAttributesCount"),
                    "uint32",
                )?,
            })
        }
    };
    let scopes_path = path.key("scopeLogs");
    let scopes = array(take(&mut m, "scopeLogs", "scope_logs"), &scopes_path)?;
    let mut scope_logs = Vec::with_capacity(scopes.len());
    for (j, s) in scopes.into_iter().enumerate() {
        scope_logs.push(scope_logs_of(s, &scopes_path.index(j))?);
    }
    Ok(ResourceLogs {
        resource,
        scope_logs,
        schema_url: string(
            take(&mut m, "schemaUrl", "schema_url"),
            &path.key("schemaUrl"),
        )?,
    })
}

fn scope_logs_of(v: Value, path: &Path<'_>) -> Decoded<ScopeLogs> {
    let mut m = object(v, path)?;
    let scope = match take(&mut m, "scope", "scope") {
        None => None,
        Some(s) => {
            let path = path.key("scope");
            let mut s = object(s, &path)?;
            Some(InstrumentationScope {
                name: string(take(&mut s, "name", "name"), &path.key("name"))?,
                version: string(take(&mut s, "version", "version"), &path.key("version"))?,
                attributes: key_values(
                    take(&mut s, "attributes", "attributes"),
                    &path.key("attributes"),
                    0,
                )?,
                dropped_attributes_count: integer(
                    take(&mut s, "droppedAttributesCount", "dropped_attributes_count"),
                    &path.key("droppedAttributesCount"),
                    "uint32",
                )?,
            })
        }
    };
    let records_path = path.key("logRecords");
    let records = array(take(&mut m, "logRecords", "log_records"), &records_path)?;
    let mut log_records = Vec::with_capacity(records.len());
    for (k, r) in records.into_iter().enumerate() {
        log_records.push(log_record(r, &records_path.index(k))?);
    }
    Ok(ScopeLogs {
        scope,
        log_records,
        schema_url: string(
            take(&mut m, "schemaUrl", "schema_url"),
            &path.key("schemaUrl"),
        )?,
    })
}

fn log_record(v: Value, path: &Path<'_>) -> Decoded<LogRecord> {
    let mut m = object(v, path)?;
    let body = match take(&mut m, "body", "body") {
        None => None,
        Some(b) => Some(any_value(b, &path.key("body"), 1)?),
    };
    Ok(LogRecord {
        time_unix_nano: integer(
            take(&mut m, "timeUnixNano", "time_unix_nano"),
            &path.key("timeUnixNano"),
            "uint64",
        )?,
        observed_time_unix_nano: integer(
            take(&mut m, "observedTimeUnixNano", "observed_time_unix_nano"),
            &path.key("observedTimeUnixNano"),
            "uint64",
        )?,
        severity_number: severity_number(
            take(&mut m, "severityNumber", "severity_number"),
            &path.key("severityNumber"),
        )?,
        severity_text: string(
            take(&mut m, "severityText", "severity_text"),
            &path.key("severityText"),
        )?,
        body,
        attributes: key_values(
            take(&mut m, "attributes", "attributes"),
            &path.key("attributes"),
            0,
        )?,
        dropped_attributes_count: integer(
            take(&mut m, "droppedAttributesCount", "dropped_attributes_count"),
            &path.key("droppedAttributesCount"),
            "uint32",
        )?,
        flags: integer(take(&mut m, "flags", "flags"), &path.key("flags"), "uint32")?,
        trace_id: hex_id(take(&mut m, "traceId", "trace_id"), &path.key("traceId"))?,
        span_id: hex_id(take(&mut m, "spanId", "span_id"), &path.key("spanId"))?,
        event_name: string(
            take(&mut m, "eventName", "event_name"),
            &path.key("eventName"),
        )?,
    })
}

/// `SeverityNumber`: an integer (unknown values kept, as proto3 enums are open) or a name.
fn severity_number(v: Option<Value>, path: &Path<'_>) -> Decoded<i32> {
    let Some(Value::String(name)) = &v else {
        return integer(v, path, "SeverityNumber (int32)");
    };
    if let Ok(n) = name.parse::<i32>() {
        return Ok(n);
    }
    severity_by_name(name).ok_or_else(|| {
        path.err(format!(
            "{} is not a SeverityNumber: send an integer 0-24 or a name such as \
             SEVERITY_NUMBER_ERROR",
            crate::quote(name)
        ))
    })
}

fn severity_by_name(name: &str) -> Option<i32> {
    const BASES: [(&str, i32); 6] = [
        ("TRACE", 1),
        ("DEBUG", 5),
        ("INFO", 9),
        ("WARN", 13),
        ("ERROR", 17),
        ("FATAL", 21),
    ];
    let rest = name.strip_prefix("SEVERITY_NUMBER_")?;
    if rest == "UNSPECIFIED" {
        return Some(0);
    }
    BASES.iter().find_map(|&(base, n)| {
        let suffix = rest.strip_prefix(base)?;
        match suffix {
            "" => Some(n),
            "2" => Some(n + 1),
            "3" => Some(n + 2),
            "4" => Some(n + 3),
            _ => None,
        }
    })
}

/// A trace or span id: hex text (either case) to bytes; empty is no id. The length is the
/// mapping's to check ([`crate::otlp_to_append`] refuses the record, not the export).
fn hex_id(v: Option<Value>, path: &Path<'_>) -> Decoded<Vec<u8>> {
    let text = string(v, path)?;
    let bytes = text.as_bytes();
    let nibble = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let decoded: Option<Vec<u8>> = (bytes.len() % 2 == 0)
        .then(|| {
            bytes
                .chunks(2)
                .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
                .collect()
        })
        .flatten();
    decoded.ok_or_else(|| {
        path.err(format!(
            "{} is not hex (OTLP/JSON sends trace and span ids as hex digits, not base64)",
            crate::quote(&text)
        ))
    })
}

fn key_values(v: Option<Value>, path: &Path<'_>, depth: usize) -> Decoded<Vec<KeyValue>> {
    let items = array(v, path)?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let path = path.index(i);
        let mut m = object(item, &path)?;
        let key = string(take(&mut m, "key", "key"), &path.key("key"))?;
        let value = match take(&mut m, "value", "value") {
            None => None,
            Some(v) => Some(any_value(v, &path.key("value"), depth + 1)?),
        };
        out.push(KeyValue { key, value });
    }
    Ok(out)
}

/// The `AnyValue` kinds, by lowerCamelCase and proto name.
const ANY_VALUE_KEYS: [(&str, &str); 7] = [
    ("stringValue", "string_value"),
    ("boolValue", "bool_value"),
    ("intValue", "int_value"),
    ("doubleValue", "double_value"),
    ("arrayValue", "array_value"),
    ("kvlistValue", "kvlist_value"),
    ("bytesValue", "bytes_value"),
];

fn any_value(v: Value, path: &Path<'_>, depth: usize) -> Decoded<AnyValue> {
    if depth > OTLP_JSON_DEPTH_MAX {
        return Err(path.err(format!(
            "values nest deeper than {OTLP_JSON_DEPTH_MAX} levels of arrayValue / kvlistValue; \
             send flatter attributes and bodies"
        )));
    }
    let mut m = object(v, path)?;
    let mut found: Option<(usize, Value)> = None;
    for (kind, (camel, snake)) in ANY_VALUE_KEYS.iter().enumerate() {
        if let Some(value) = take(&mut m, camel, snake) {
            if let Some((other, _)) = &found {
                return Err(path.err(format!(
                    "has both {} and {camel}; an AnyValue holds one value",
                    ANY_VALUE_KEYS[*other].0
                )));
            }
            found = Some((kind, value));
        }
    }
    let Some((kind, value)) = found else {
        return Ok(AnyValue { value: None });
    };
    let path = path.key(ANY_VALUE_KEYS[kind].0);
    let path = &path;
    let value = match kind {
        0 => any_value::Value::StringValue(string(Some(value), path)?),
        1 => match value {
            Value::Bool(b) => any_value::Value::BoolValue(b),
            other => return Err(path.err(format!("{} is not true or false", what(&other)))),
        },
        2 => any_value::Value::IntValue(integer(Some(value), path, "int64")?),
        3 => any_value::Value::DoubleValue(double(value, path)?),
        4 => {
            let mut a = object(value, path)?;
            let values_path = path.key("values");
            let items = array(take(&mut a, "values", "values"), &values_path)?;
            let mut values = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                values.push(any_value(item, &values_path.index(i), depth + 1)?);
            }
            any_value::Value::ArrayValue(ArrayValue { values })
        }
        5 => {
            let mut kv = object(value, path)?;
            let values = key_values(
                take(&mut kv, "values", "values"),
                &path.key("values"),
                depth,
            )?;
            any_value::Value::KvlistValue(KeyValueList { values })
        }
        _ => any_value::Value::BytesValue(
            base64_decode(&string(Some(value), path)?)
                .ok_or_else(|| path.err("is not base64 (standard or URL-safe alphabet)"))?,
        ),
    };
    Ok(AnyValue { value: Some(value) })
}

fn double(v: Value, path: &Path<'_>) -> Decoded<f64> {
    let parsed = match &v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            other => other.parse::<f64>().ok().filter(|f| f.is_finite()),
        },
        _ => None,
    };
    parsed.ok_or_else(|| {
        path.err(format!(
            "{} is not a number (or \"NaN\", \"Infinity\", \"-Infinity\")",
            what(&v)
        ))
    })
}

/// Base64 in the standard or URL-safe alphabet, padding optional (protobuf's JSON parsers
/// take both). `None` on any other character or an impossible length.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let trimmed = text.trim_end_matches('=');
    if text.len() - trimmed.len() > 2 {
        return None;
    }
    let sextet = |b: u8| -> Option<u32> {
        Some(match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    for chunk in trimmed.as_bytes().chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            n |= sextet(b)? << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp_to_append;

    /// `examples/logs.json` of opentelemetry-proto, as the specification ships it.
    const SPEC_EXAMPLE: &str = r#"{
      "resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
        "scopeLogs": [{
          "scope": {"name": "my.library", "version": "1.0.0",
                    "attributes": [{"key": "my.scope.attribute", "value": {"stringValue": "some scope attribute"}}]},
          "logRecords": [{
            "timeUnixNano": 1544712660300000000,
            "observedTimeUnixNano": 1544712660300000000,
            "severityText": "Information",
            "traceId": "5B8EFFF798038103D269B633813FC60C",
            "spanId": "EEE19B7EC3C1B174",
            "body": {"stringValue": "Example log record"},
            "attributes": [
              {"key": "string.attribute", "value": {"stringValue": "some string"}},
              {"key": "boolean.attribute", "value": {"boolValue": true}},
              {"key": "int.attribute", "value": {"intValue": 10}},
              {"key": "double.attribute", "value": {"doubleValue": 637.704}},
              {"key": "array.attribute", "value": {"arrayValue": {"values": [{"stringValue": "many"}, {"stringValue": "values"}]}}},
              {"key": "map.attribute", "value": {"kvlistValue": {"values": [{"key": "some.map.key", "value": {"stringValue": "some value"}}]}}}
            ]
          }]
        }]
      }]
    }"#;

    fn err(body: &str) -> String {
        match decode_otlp_json(body.as_bytes()) {
            Err(Error::Malformed {
                format: "otlp json",
                reason,
            }) => reason,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_specification_example_decodes_and_maps() {
        let export = decode_otlp_json(SPEC_EXAMPLE.as_bytes()).unwrap();
        let lr = &export.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(lr.time_unix_nano, 1_544_712_660_300_000_000);
        assert_eq!(
            lr.trace_id,
            [
                0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f,
                0xc6, 0x0c
            ]
        );
        assert_eq!(lr.span_id.len(), 8);
        let (req, refused) = otlp_to_append(export, "t");
        assert!(refused.is_empty());
        let r = &req.records[0];
        assert_eq!(r.service, "my.service");
        assert_eq!(r.level, "info", "severityText Information");
        assert_eq!(r.body, b"Example log record");
        assert_eq!(r.trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(r.span_id, "eee19b7ec3c1b174");
        assert_eq!(r.attributes["boolean.attribute"], "true");
        assert_eq!(r.attributes["int.attribute"], "10");
        assert_eq!(r.attributes["double.attribute"], "637.704");
        assert_eq!(r.attributes["array.attribute"], r#"["many","values"]"#);
        assert_eq!(
            r.attributes["map.attribute"],
            r#"{"some.map.key":"some value"}"#
        );
        assert_eq!(
            r.attributes["scope.my.scope.attribute"],
            "some scope attribute"
        );
        assert_eq!(r.attributes["otel.scope.version"], "1.0.0");
    }

    #[test]
    fn snake_case_strings_for_ints_enum_names_and_every_value_kind() {
        let body = r#"{"resource_logs":[{"scope_logs":[{"log_records":[
            {"time_unix_nano":"1700000000000000001","severity_number":"SEVERITY_NUMBER_ERROR3",
             "span_id":"","flags":1,"event_name":"e","unknownField":{"x":[1]},
             "body":{"kvlist_value":{"values":[
                {"key":"i","value":{"int_value":"-9223372036854775808"}},
                {"key":"d","value":{"doubleValue":"NaN"}},
                {"key":"d2","value":{"doubleValue":"2.5"}},
                {"key":"b","value":{"bytesValue":"aGkhPw=="}},
                {"key":"u","value":{"bytesValue":"_-8"}},
                {"key":"n","value":{}},
                {"key":"none"}]}}},
            {"severityNumber":21,"observedTimeUnixNano":5e2,"body":null}]}]}]}"#;
        let export = decode_otlp_json(body.as_bytes()).unwrap();
        let records = &export.resource_logs[0].scope_logs[0].log_records;
        assert_eq!(records[0].time_unix_nano, 1_700_000_000_000_000_001);
        assert_eq!(records[0].severity_number, 19);
        assert_eq!(records[0].flags, 1);
        assert_eq!(records[0].event_name, "e");
        let Some(any_value::Value::KvlistValue(kv)) =
            records[0].body.as_ref().and_then(|b| b.value.clone())
        else {
            panic!("kvlist body");
        };
        let v = |i: usize| kv.values[i].value.as_ref().and_then(|v| v.value.clone());
        assert_eq!(v(0), Some(any_value::Value::IntValue(i64::MIN)));
        assert!(matches!(v(1), Some(any_value::Value::DoubleValue(d)) if d.is_nan()));
        assert_eq!(v(2), Some(any_value::Value::DoubleValue(2.5)));
        assert_eq!(v(3), Some(any_value::Value::BytesValue(b"hi!?".to_vec())));
        assert_eq!(v(4), Some(any_value::Value::BytesValue(vec![0xff, 0xef])));
        assert_eq!(v(5), None);
        assert!(kv.values[6].value.is_none());
        assert_eq!(records[1].severity_number, 21);
        assert_eq!(records[1].observed_time_unix_nano, 500);
        assert!(records[1].body.is_none());
        assert_eq!(
            decode_otlp_json(b"{}").unwrap(),
            ExportLogsServiceRequest::default()
        );
    }

    #[test]
    fn every_severity_name_maps_to_its_number() {
        assert_eq!(severity_by_name("SEVERITY_NUMBER_UNSPECIFIED"), Some(0));
        let mut n = 1;
        for base in ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"] {
            for suffix in ["", "2", "3", "4"] {
                let name = format!("SEVERITY_NUMBER_{base}{suffix}");
                assert_eq!(severity_by_name(&name), Some(n), "{name}");
                n += 1;
            }
        }
        assert_eq!(severity_by_name("SEVERITY_NUMBER_WARN5"), None);
        assert_eq!(severity_by_name("WARN"), None);
    }

    #[test]
    fn errors_name_the_path_and_what_was_wrong() {
        let rec = |field: &str| {
            err(&format!(
                r#"{{"resourceLogs":[{{}},{{"scopeLogs":[{{"logRecords":[{{}},{{{field}}}]}}]}}]}}"#
            ))
        };
        assert_eq!(
            rec(r#""traceId":"W4/""#),
            "resourceLogs[1].scopeLogs[0].logRecords[1].traceId: \"W4/\" is not hex (OTLP/JSON \
             sends trace and span ids as hex digits, not base64)"
        );
        assert_eq!(
            rec(r#""severityNumber":"LOUD""#),
            "resourceLogs[1].scopeLogs[0].logRecords[1].severityNumber: \"LOUD\" is not a \
             SeverityNumber: send an integer 0-24 or a name such as SEVERITY_NUMBER_ERROR"
        );
        assert_eq!(
            rec(r#""timeUnixNano":-1"#),
            "resourceLogs[1].scopeLogs[0].logRecords[1].timeUnixNano: -1 is not an integer of \
             type uint64 (a JSON number or a decimal string)"
        );
        assert_eq!(
            rec(r#""body":{"stringValue":"a","intValue":1}"#),
            "resourceLogs[1].scopeLogs[0].logRecords[1].body: has both stringValue and \
             intValue; an AnyValue holds one value"
        );
        assert_eq!(
            rec(r#""attributes":[{"key":"k","value":{"boolValue":"yes"}}]"#),
            "resourceLogs[1].scopeLogs[0].logRecords[1].attributes[0].value.boolValue: \
             \"yes\" is not true or false"
        );
        assert_eq!(
            rec(r#""body":{"bytesValue":"!!"}"#),
            "resourceLogs[1].scopeLogs[0].logRecords[1].body.bytesValue: is not base64 \
             (standard or URL-safe alphabet)"
        );
        assert_eq!(err("[]"), "the body: an array is not a JSON object");
        assert_eq!(
            err(r#"{"resourceLogs":{}}"#),
            "resourceLogs: an object is not an array"
        );
        assert!(err("{").contains("EOF while parsing an object at line 1 column 1"));
    }

    #[test]
    fn nesting_is_bounded_and_says_so() {
        let nested = |depth: usize| {
            let mut v = r#"{"stringValue":"x"}"#.to_owned();
            for _ in 1..depth {
                v = format!(r#"{{"arrayValue":{{"values":[{v}]}}}}"#);
            }
            format!(r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"body":{v}}}]}}]}}]}}"#)
        };
        assert!(decode_otlp_json(nested(OTLP_JSON_DEPTH_MAX).as_bytes()).is_ok());
        let e = err(&nested(OTLP_JSON_DEPTH_MAX + 1));
        assert!(e.contains("values nest deeper than 32 levels"), "{e}");
        // Far deeper JSON is refused by the JSON parser's own limit, without recursing.
        let e = err(&nested(200));
        assert!(e.contains("recursion limit exceeded"), "{e}");
    }

    #[test]
    fn base64_accepts_both_alphabets_with_or_without_padding() {
        assert_eq!(base64_decode(""), Some(vec![]));
        assert_eq!(base64_decode("Zg=="), Some(b"f".to_vec()));
        assert_eq!(base64_decode("Zg"), Some(b"f".to_vec()));
        assert_eq!(base64_decode("Zm9vYmFy"), Some(b"foobar".to_vec()));
        assert_eq!(base64_decode("-_-_"), base64_decode("+/+/"));
        assert_eq!(base64_decode("Z"), None);
        assert_eq!(base64_decode("Zg==="), None);
        assert_eq!(base64_decode("Z m9"), None);
    }
}
