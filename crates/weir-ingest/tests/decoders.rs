//! Property tests of the protocol decoders: none panics on arbitrary bytes, each reads
//! back what an encoder written here (independent of the decoder) produced, and the
//! bounded ones stay within their bounds (decompression limits, the syslog framer's
//! buffer).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use weir_ingest::{
    decode_loki_json, decode_loki_proto, decode_otlp_json, es_doc_to_record, gunzip,
    loki_to_append, parse_bulk, parse_loki_labels, parse_syslog, unsnappy, BulkAction, Error,
    SyslogFramer,
};
use weir_proto::logproto::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter};
use weir_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use weir_proto::otlp::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use weir_proto::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use weir_proto::otlp::resource::v1::Resource;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// Arbitrary bytes, and bytes that start like the real thing (so decoders get past their
/// first check now and then).
fn bytes_like(prefix: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..256),
        vec(any::<u8>(), 0..256).prop_map(move |tail| [prefix, &tail].concat()),
    ]
}

// ---------------------------------------------------------------------------------------
// Go-style quoting for Loki selectors, written here from the Go spec (strconv.Quote).

fn go_quote(s: &str, style: u8) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                // strconv.Quote writes \x.. for bytes; \u00.. is as good.
                if style.is_multiple_of(2) {
                    out.push_str(&format!("\\x{:02x}", c as u32));
                } else {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                }
            }
            c if style.is_multiple_of(3) && !c.is_ascii() && (c as u32) > 0xffff => {
                out.push_str(&format!("\\U{:08x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn label_set() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,10}", any::<String>(), 0..6)
}

// ---------------------------------------------------------------------------------------
// OTLP/JSON written here by hand, the way the specification lays it out.

fn any_value_strategy() -> impl Strategy<Value = AnyValue> {
    let leaf = prop_oneof![
        ".{0,8}".prop_map(any_value::Value::StringValue),
        any::<bool>().prop_map(any_value::Value::BoolValue),
        any::<i64>().prop_map(any_value::Value::IntValue),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(any_value::Value::DoubleValue),
        vec(any::<u8>(), 0..8).prop_map(any_value::Value::BytesValue),
    ]
    .prop_map(|v| AnyValue { value: Some(v) });
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|values| AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue { values })),
            }),
            vec((".{0,6}", inner), 0..4).prop_map(|kvs| AnyValue {
                value: Some(any_value::Value::KvlistValue(KeyValueList {
                    values: kvs
                        .into_iter()
                        .map(|(key, v)| KeyValue {
                            key,
                            value: Some(v),
                        })
                        .collect(),
                })),
            }),
        ]
    })
}

fn key_values() -> impl Strategy<Value = Vec<KeyValue>> {
    vec(
        (".{0,8}", any_value_strategy()).prop_map(|(key, v)| KeyValue {
            key,
            value: Some(v),
        }),
        0..3,
    )
}

fn log_record() -> impl Strategy<Value = LogRecord> {
    (
        (any::<u64>(), any::<u64>(), 0i32..30, ".{0,8}"),
        proptest::option::of(any_value_strategy()),
        key_values(),
        (any::<u32>(), any::<u32>()),
        (vec(any::<u8>(), 0..17), vec(any::<u8>(), 0..9), ".{0,8}"),
    )
        .prop_map(
            |(
                (time, observed, severity_number, severity_text),
                body,
                attributes,
                (dropped, flags),
                (trace_id, span_id, event_name),
            )| LogRecord {
                time_unix_nano: time,
                observed_time_unix_nano: observed,
                severity_number,
                severity_text,
                body,
                attributes,
                dropped_attributes_count: dropped,
                flags,
                trace_id,
                span_id,
                event_name,
            },
        )
}

fn export() -> impl Strategy<Value = ExportLogsServiceRequest> {
    let scope = (
        proptest::option::of((".{0,8}", ".{0,4}", key_values())),
        vec(log_record(), 0..3),
        ".{0,8}",
    )
        .prop_map(|(scope, log_records, schema_url)| ScopeLogs {
            scope: scope.map(|(name, version, attributes)| InstrumentationScope {
                name,
                version,
                attributes,
                dropped_attributes_count: 0,
            }),
            log_records,
            schema_url,
        });
    vec(
        (proptest::option::of(key_values()), vec(scope, 0..3)).prop_map(
            |(resource, scope_logs)| ResourceLogs {
                resource: resource.map(|attributes| Resource {
                    attributes,
                    dropped_attributes_count: 0,
                }),
                scope_logs,
                schema_url: String::new(),
            },
        ),
        0..3,
    )
    .prop_map(|resource_logs| ExportLogsServiceRequest { resource_logs })
}

fn hex(bytes: &[u8], upper: bool) -> String {
    bytes
        .iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        for _ in chunk.len()..3 {
            out.push('=');
        }
    }
    out
}

fn any_value_json(v: &AnyValue) -> Value {
    match &v.value {
        None => json!({}),
        Some(any_value::Value::StringValue(s)) => json!({ "stringValue": s }),
        Some(any_value::Value::BoolValue(b)) => json!({ "boolValue": b }),
        // int64 as a string, as protobuf's JSON mapping writes it.
        Some(any_value::Value::IntValue(i)) => json!({ "intValue": i.to_string() }),
        // As a string too: exact whatever the JSON parser's float handling.
        Some(any_value::Value::DoubleValue(d)) => json!({ "doubleValue": format!("{d:?}") }),
        Some(any_value::Value::BytesValue(b)) => json!({ "bytesValue": base64(b) }),
        Some(any_value::Value::ArrayValue(a)) => {
            json!({ "arrayValue": { "values": a.values.iter().map(any_value_json).collect::<Vec<_>>() } })
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            json!({ "kvlistValue": { "values": key_values_json(&kv.values) } })
        }
    }
}

fn key_values_json(kvs: &[KeyValue]) -> Vec<Value> {
    kvs.iter()
        .map(|kv| match &kv.value {
            Some(v) => json!({ "key": kv.key, "value": any_value_json(v) }),
            None => json!({ "key": kv.key }),
        })
        .collect()
}

fn export_json(e: &ExportLogsServiceRequest, variant: u8) -> Value {
    let rl: Vec<Value> = e
        .resource_logs
        .iter()
        .map(|r| {
            let mut o = Map::new();
            if let Some(res) = &r.resource {
                o.insert(
                    "resource".into(),
                    json!({ "attributes": key_values_json(&res.attributes) }),
                );
            }
            let scopes: Vec<Value> = r
                .scope_logs
                .iter()
                .map(|s| {
                    let mut so = Map::new();
                    if let Some(scope) = &s.scope {
                        so.insert(
                            "scope".into(),
                            json!({ "name": scope.name, "version": scope.version,
                                    "attributes": key_values_json(&scope.attributes) }),
                        );
                    }
                    let records: Vec<Value> = s
                        .log_records
                        .iter()
                        .map(|lr| {
                            let mut o = json!({
                                "severityNumber": lr.severity_number,
                                "severityText": lr.severity_text,
                                "attributes": key_values_json(&lr.attributes),
                                "droppedAttributesCount": lr.dropped_attributes_count,
                                "flags": lr.flags,
                                "traceId": hex(&lr.trace_id, variant.is_multiple_of(2)),
                                "spanId": hex(&lr.span_id, variant % 2 == 1),
                                "eventName": lr.event_name,
                                "unknownField": {"ignored": [1, 2]},
                            });
                            let o = o.as_object_mut().unwrap();
                            // uint64 as strings or as numbers: both are accepted.
                            if variant.is_multiple_of(3) {
                                o.insert("timeUnixNano".into(), json!(lr.time_unix_nano));
                                o.insert(
                                    "observed_time_unix_nano".into(),
                                    json!(lr.observed_time_unix_nano),
                                );
                            } else {
                                o.insert(
                                    "timeUnixNano".into(),
                                    json!(lr.time_unix_nano.to_string()),
                                );
                                o.insert(
                                    "observedTimeUnixNano".into(),
                                    json!(lr.observed_time_unix_nano.to_string()),
                                );
                            }
                            if let Some(b) = &lr.body {
                                o.insert("body".into(), any_value_json(b));
                            }
                            Value::Object(o.clone())
                        })
                        .collect();
                    so.insert("logRecords".into(), Value::Array(records));
                    so.insert("schemaUrl".into(), json!(s.schema_url));
                    Value::Object(so)
                })
                .collect();
            o.insert("scopeLogs".into(), Value::Array(scopes));
            Value::Object(o)
        })
        .collect();
    json!({ "resourceLogs": rl })
}

// ---------------------------------------------------------------------------------------
// JSON documents for the Elasticsearch mapping.

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        // Quarters are exact in binary and in decimal: no float parsing subtleties.
        any::<i32>().prop_map(|i| json!(f64::from(i) / 4.0)),
        ".{0,10}".prop_map(Value::String),
        prop::sample::select(vec![
            "2024-01-15T10:20:30.123Z",
            "1705314030123",
            "ERROR",
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "00f067aa0ba902b7",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(doc_key(), inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn doc_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "@timestamp", "timestamp", "time", "message", "msg", "log", "level", "log.level",
            "severity", "service", "name", "kubernetes", "namespace_name", "pod_name",
            "pod", "namespace", "orchestrator", "cluster", "trace", "span", "id", "trace_id",
            "span_id",
        ])
        .prop_map(str::to_owned),
        1 => ".{0,6}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn gunzip_round_trips_and_holds_its_limit(data in vec(any::<u8>(), 0..4096), cut in 0usize..4096) {
        let body = gzip(&data);
        prop_assert_eq!(gunzip(&body, data.len()).unwrap(), data.clone());
        let limit = cut.min(data.len().saturating_sub(1));
        if limit < data.len() {
            prop_assert_eq!(gunzip(&body, limit), Err(Error::Decompressed { encoding: "gzip", limit }));
        }
    }

    #[test]
    fn gunzip_never_panics_nor_passes_the_limit(body in bytes_like(b"\x1f\x8b\x08\x00"), max in 0usize..1024) {
        if let Ok(out) = gunzip(&body, max) {
            prop_assert!(out.len() <= max);
        }
    }

    #[test]
    fn unsnappy_round_trips_and_never_passes_the_limit(data in vec(any::<u8>(), 0..4096), junk in vec(any::<u8>(), 0..64), max in 0usize..4096) {
        let body = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        prop_assert_eq!(unsnappy(&body, data.len()).unwrap(), data.clone());
        for body in [body, junk] {
            match unsnappy(&body, max) {
                Ok(out) => prop_assert!(out.len() <= max),
                Err(Error::Decompressed { limit, .. }) => prop_assert_eq!(limit, max),
                Err(Error::Malformed { format, .. }) => prop_assert_eq!(format, "snappy"),
                Err(e) => prop_assert!(false, "{e:?}"),
            }
        }
    }

    #[test]
    fn loki_labels_round_trip_through_go_quoting(
        labels in label_set(),
        style in any::<u8>(),
        spaces in vec(prop::sample::select(vec!["", " ", "\t", "\n "]), 8),
        trailing_comma in any::<bool>(),
    ) {
        let pairs: Vec<String> = labels
            .iter()
            .enumerate()
            .map(|(i, (k, v))| format!("{k}{}={}{}", spaces[i % 8], spaces[(i + 1) % 8], go_quote(v, style)))
            .collect();
        let mut text = format!("{}{{{}", spaces[0], pairs.join(&format!(",{}", spaces[2])));
        if trailing_comma && !labels.is_empty() {
            text.push(',');
        }
        text.push_str(spaces[3]);
        text.push('}');
        let got = parse_loki_labels(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let want: Vec<(String, String)> = labels.into_iter().collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn loki_label_parser_never_panics_and_names_an_offset(text in prop_oneof![
        any::<String>(),
        "\\{[a-z_ =,\"'`\\\\xu0-9A-F}]{0,24}",
    ]) {
        if let Err(e) = parse_loki_labels(&text) {
            prop_assert!(e.contains("byte"), "{}", e);
        }
    }

    #[test]
    fn loki_json_round_trips_into_the_protobuf_shape(
        streams in vec((label_set(), vec((0i64..i64::MAX, any::<String>(), btree_map(".{0,6}", ".{0,6}", 0..3), any::<bool>()), 0..4)), 0..4),
    ) {
        let body = json!({
            "streams": streams.iter().map(|(labels, entries)| json!({
                "stream": labels,
                "values": entries.iter().map(|(ns, line, metadata, as_number)| {
                    let ts = if *as_number { json!(ns) } else { json!(ns.to_string()) };
                    if metadata.is_empty() { json!([ts, line]) } else { json!([ts, line, metadata]) }
                }).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        let push = decode_loki_json(body.to_string().as_bytes()).unwrap();
        prop_assert_eq!(push.streams.len(), streams.len());
        for (got, (labels, entries)) in push.streams.iter().zip(&streams) {
            let mut parsed = parse_loki_labels(&got.labels).unwrap();
            parsed.sort();
            prop_assert_eq!(parsed, labels.clone().into_iter().collect::<Vec<_>>());
            prop_assert_eq!(got.entries.len(), entries.len());
            for (e, (ns, line, metadata, _)) in got.entries.iter().zip(entries) {
                let ts = e.timestamp.unwrap();
                prop_assert_eq!(i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos), i128::from(*ns));
                prop_assert_eq!(&e.line, line);
                let md: BTreeMap<String, String> = e.structured_metadata.iter().map(|p| (p.name.clone(), p.value.clone())).collect();
                prop_assert_eq!(&md, metadata);
            }
        }
        // And the mapping accounts for every entry, at its flattened position.
        let total: usize = streams.iter().map(|(_, e)| e.len()).sum();
        let (req, refused) = loki_to_append(push, "t");
        prop_assert_eq!(req.records.len() + refused.len(), total);
    }

    #[test]
    fn loki_decoders_never_panic(body in bytes_like(b"{\"streams\":[{\"stream\":{"), proto in bytes_like(b"\x0a\x10\x0a\x07{a=\"b\"}")) {
        let _ = decode_loki_json(&body);
        if let Ok(push) = decode_loki_proto(&proto) {
            let total: usize = push.streams.iter().map(|s| s.entries.len()).sum();
            let (req, refused) = loki_to_append(push, "t");
            prop_assert_eq!(req.records.len() + refused.len(), total);
        }
    }

    #[test]
    fn loki_mapping_accounts_for_every_entry(
        streams in vec((prop_oneof![label_set().prop_map(|l| format!("{l:?}").replace(':', "=")), any::<String>()],
                        vec((proptest::option::of((any::<i64>(), any::<i32>())), vec((".{0,8}", ".{0,40}"), 0..3)), 0..4)), 0..4),
    ) {
        let push = PushRequest {
            streams: streams.into_iter().map(|(labels, entries)| StreamAdapter {
                labels,
                entries: entries.into_iter().map(|(ts, md)| EntryAdapter {
                    timestamp: ts.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
                    line: String::new(),
                    structured_metadata: md.into_iter().map(|(name, value)| LabelPairAdapter { name, value }).collect(),
                }).collect(),
                hash: 0,
            }).collect(),
        };
        let total: u32 = push.streams.iter().map(|s| s.entries.len() as u32).sum();
        let (req, refused) = loki_to_append(push, "t");
        prop_assert_eq!(req.records.len() + refused.len(), total as usize);
        let positions: HashSet<u32> = refused.iter().map(|r| r.index).collect();
        prop_assert_eq!(positions.len(), refused.len());
        prop_assert!(refused.iter().all(|r| r.index < total && !r.reason.is_empty()));
        for r in &req.records {
            prop_assert!(r.trace_id.is_empty() || r.trace_id.len() == 32);
            prop_assert!(weir_proto::Level::from_canonical(&r.level).is_some());
        }
    }

    #[test]
    fn otlp_json_round_trips(e in export(), variant in any::<u8>()) {
        let text = export_json(&e, variant).to_string();
        let got = decode_otlp_json(text.as_bytes()).map_err(|err| TestCaseError::fail(format!("{err}\n{text}")))?;
        prop_assert_eq!(got, e);
    }

    #[test]
    fn otlp_json_never_panics(body in prop_oneof![
        bytes_like(b"{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[{"),
        "[\\[\\]{}\"a-zA-Z:,0-9]{0,64}".prop_map(String::into_bytes),
    ]) {
        let _ = decode_otlp_json(&body);
    }

    #[test]
    fn bulk_round_trips(
        ops in vec((0u8..4, proptest::option::of("[a-z][a-z0-9-]{0,8}"), proptest::option::of("[A-Za-z0-9_-]{1,8}"), btree_map("[a-z.@]{1,8}", json_value(), 0..4)), 0..8),
        crlf in any::<bool>(),
        final_newline in any::<bool>(),
    ) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut body = String::new();
        for (action, index, id, source) in &ops {
            let name = ["index", "create", "delete", "update"][usize::from(*action)];
            let mut meta = Map::new();
            if let Some(i) = index { meta.insert("_index".into(), json!(i)); }
            if let Some(i) = id { meta.insert("_id".into(), json!(i)); }
            meta.insert("_type".into(), json!("_doc"));
            let mut action_line = Map::new();
            action_line.insert(name.to_owned(), Value::Object(meta));
            body.push_str(&Value::Object(action_line).to_string());
            body.push_str(eol);
            match *action {
                2 => {}
                3 => { body.push_str(&json!({ "doc": source }).to_string()); body.push_str(eol); }
                _ => { body.push_str(&serde_json::to_string(source).unwrap()); body.push_str(eol); }
            }
        }
        if !final_newline && body.ends_with(eol) {
            body.truncate(body.len() - eol.len());
        }
        let items = parse_bulk(body.as_bytes(), Some("from-path")).unwrap();
        prop_assert_eq!(items.len(), ops.len());
        for (item, (action, index, id, source)) in items.iter().zip(&ops) {
            let op = item.as_ref().map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            let want = [BulkAction::Index, BulkAction::Create, BulkAction::Delete, BulkAction::Update][usize::from(*action)];
            prop_assert_eq!(op.action, want);
            prop_assert_eq!(&op.index, index.as_deref().unwrap_or("from-path"));
            prop_assert_eq!(&op.id, id);
            let want_source = (*action < 2).then(|| {
                let map: Map<String, Value> = source.clone().into_iter().collect();
                weir_ingest::es_flat::Document::from_value(&Value::Object(map)).unwrap()
            });
            prop_assert_eq!(&op.source, &want_source);
        }
    }

    #[test]
    fn bulk_parser_never_panics(body in prop_oneof![
        bytes_like(b"{\"create\":{\"_index\":\"a\"}}\n"),
        vec(prop::sample::select(vec!["{\"index\":{}}", "{\"delete\":{\"_index\":\"x\"}}", "{\"a\":1}", "[1]", "", " ", "{", "\"s\""]), 0..8)
            .prop_map(|lines| lines.join("\n").into_bytes()),
    ], path_index in proptest::option::of("[a-z]{0,3}")) {
        if let Ok(items) = parse_bulk(&body, path_index.as_deref()) {
            prop_assert!(items.len() <= body.split(|&b| b == b'\n').count());
        }
    }

    #[test]
    fn es_mapping_never_panics(doc in btree_map(doc_key(), json_value(), 0..8), id in proptest::option::of(".{0,4}")) {
        let doc: Map<String, Value> = doc.into_iter().collect();
        let has_timestamp = doc.contains_key("@timestamp");
        let doc = weir_ingest::es_flat::Document::from_value(&Value::Object(doc)).unwrap();
        if let Ok(r) = es_doc_to_record(doc, "idx", id.as_deref()) {
            prop_assert_eq!(r.attributes.get("es.index").map(String::as_str), Some("idx"));
            prop_assert!(weir_proto::Level::from_canonical(&r.level).is_some());
            prop_assert!(r.trace_id.is_empty() || r.trace_id.len() == 32);
            prop_assert!(r.span_id.is_empty() || r.span_id.len() == 16);
        } else {
            prop_assert!(has_timestamp);
        }
    }

    #[test]
    fn syslog_never_panics_and_keeps_every_byte_somewhere(msg in bytes_like(b"<13>1 "), received in any::<i64>()) {
        let r = parse_syslog(&msg, received);
        prop_assert!(weir_proto::Level::from_canonical(&r.level).is_some());
        if r.attributes.contains_key("syslog.error") {
            let trimmed_len = msg.iter().rposition(|b| !matches!(b, b'\n' | b'\r' | 0)).map_or(0, |p| p + 1);
            prop_assert_eq!(&r.body[..], &msg[..trimmed_len]);
        }
    }

    #[test]
    fn rfc5424_round_trips(
        pri in 0u8..192,
        ns in 0i64..4_102_444_800_000_000_000, // up to 2100
        (host, app, procid, msgid) in ("[!-~]{1,20}", "[!-~]{1,20}", "[!-~]{1,12}", "[!-~]{1,12}"),
        sd in vec(("[!-<>-\\\\^-~&&[^\"]]{1,8}", btree_map("[a-zA-Z0-9_.]{1,8}", ".{0,10}", 0..3)), 0..3),
        msg in "([^\u{feff}\r\n\0][^\r\n\0]{0,30})?",
        bom in any::<bool>(),
    ) {
        let secs = ns.div_euclid(1_000_000_000);
        let frac = ns.rem_euclid(1_000_000_000);
        let ts = rfc3339_utc(secs, frac);
        let mut text = format!("<{pri}>1 {ts} {host} {app} {procid} {msgid} ");
        let mut ids = HashSet::new();
        let sd: Vec<_> = sd.into_iter().filter(|(id, _)| ids.insert(id.clone())).collect();
        if sd.is_empty() {
            text.push('-');
        }
        for (id, params) in &sd {
            text.push('[');
            text.push_str(id);
            for (k, v) in params {
                let escaped = v.replace('\\', "\\\\").replace('"', "\\\"").replace(']', "\\]");
                text.push_str(&format!(" {k}=\"{escaped}\""));
            }
            text.push(']');
        }
        if !msg.is_empty() {
            text.push(' ');
            if bom { text.push('\u{feff}'); }
            text.push_str(&msg);
        }
        let r = parse_syslog(text.as_bytes(), 0);
        prop_assert!(!r.attributes.contains_key("syslog.error"), "{}: {:?}", text, r.attributes);
        prop_assert_eq!(r.timestamp_ns, ns);
        let nil = |s: &str| if s == "-" { String::new() } else { s.to_owned() };
        prop_assert_eq!(r.labels.get("host").cloned().unwrap_or_default(), nil(&host));
        prop_assert_eq!(&r.service, &nil(&app));
        prop_assert_eq!(r.attributes.get("syslog.procid").cloned().unwrap_or_default(), nil(&procid));
        prop_assert_eq!(r.attributes.get("syslog.msgid").cloned().unwrap_or_default(), nil(&msgid));
        for (id, params) in &sd {
            if params.is_empty() {
                prop_assert_eq!(r.attributes.get(&format!("sd.{id}")).map(String::as_str), Some(""));
            }
            for (k, v) in params {
                prop_assert_eq!(r.attributes.get(&format!("sd.{id}.{k}")), Some(v));
            }
        }
        prop_assert_eq!(r.body, msg.into_bytes());
        let facility = ["kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp",
            "cron", "authpriv", "ftp", "ntp", "security", "console", "solaris-cron"];
        let want_facility = facility.get(usize::from(pri / 8)).map(|s| s.to_string()).unwrap_or_else(|| format!("local{}", pri / 8 - 16));
        prop_assert_eq!(&r.attributes["syslog.facility"], &want_facility);
    }

    #[test]
    fn rfc3164_round_trips(
        (secs, received_offset) in (0i64..4_102_444_800, -86_400i64 * 150..86_400 * 150),
        pri in 0u8..192,
        host in "[a-zA-Z0-9.-]{1,20}",
        tag in "[a-zA-Z0-9_/.-]{1,20}",
        pid in proptest::option::of(0u32..100_000),
        msg in "[^\r\n\0]{0,30}",
    ) {
        let (y, mo, d, h, mi, s) = civil(secs);
        let _ = y;
        const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        let pid_text = pid.map(|p| format!("[{p}]")).unwrap_or_default();
        let text = format!("<{pri}>{} {d:>2} {h:02}:{mi:02}:{s:02} {host} {tag}{pid_text}: {msg}", MONTHS[mo as usize - 1]);
        let received_ns = (secs + received_offset) * 1_000_000_000;
        let r = parse_syslog(text.as_bytes(), received_ns);
        prop_assert!(!r.attributes.contains_key("syslog.error"), "{}: {:?}", text, r.attributes);
        // Within five months of the receive time, the year is the right one (29 February
        // aside: a year without one moves to the nearest that has it).
        if !(mo == 2 && d == 29) {
            prop_assert_eq!(r.timestamp_ns, secs * 1_000_000_000, "{}", text);
        }
        prop_assert_eq!(&r.labels["host"], &host);
        prop_assert_eq!(&r.service, &tag);
        prop_assert_eq!(r.attributes.get("syslog.procid").cloned(), pid.map(|p| p.to_string()));
        prop_assert_eq!(r.body, msg.into_bytes());
    }

    #[test]
    fn framer_splits_any_chunking_of_mixed_framings(
        msgs in vec((any::<bool>(), vec(any::<u8>(), 1..40)), 0..8),
        cuts in vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for (octet_counted, body) in &msgs {
            if *octet_counted {
                stream.extend(format!("{} ", body.len()).into_bytes());
                stream.extend(body);
                want.push(body.clone());
            } else {
                let mut line = b"<".to_vec();
                line.extend(body.iter().map(|&b| if b == b'\n' || b == 0 { b'.' } else { b }));
                stream.extend(&line);
                stream.push(b'\n');
                want.push(line);
            }
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let mut f = SyslogFramer::new(64);
        let mut got = Vec::new();
        for w in points.windows(2) {
            got.extend(f.push(&stream[w[0]..w[1]]));
        }
        prop_assert_eq!(got, want.into_iter().map(Ok).collect::<Vec<_>>());
        prop_assert_eq!(f.finish(), None);
    }

    #[test]
    fn framer_never_holds_more_than_its_limit(
        chunks in vec(prop_oneof![
            vec(any::<u8>(), 0..64),
            vec(prop::sample::select(vec![b'<', b'1', b'0', b' ', b'\n', b'x', 0]), 0..64),
        ], 0..16),
        max in 0usize..32,
    ) {
        let mut f = SyslogFramer::new(max);
        for chunk in &chunks {
            for m in f.push(chunk).into_iter().flatten() {
                prop_assert!(m.len() <= max);
            }
            prop_assert!(f.buffered_bytes() <= max);
        }
        if let Some(last) = f.finish() {
            prop_assert!(last.len() <= max);
        }
    }
}

/// `YYYY-MM-DDThh:mm:ss.fffffffffZ` of a time, written here from the civil calendar.
fn rfc3339_utc(secs: i64, nanos: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{nanos:09}Z")
}

/// Year, month, day, hour, minute, second of seconds since the epoch (UTC), by walking
/// the calendar a year and a month at a time: slow and obviously right.
fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mut days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let mut year = 1970;
    loop {
        let len = if leap(year) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        year += 1;
    }
    let lengths = [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let mut month = 0;
    while days >= lengths[month] {
        days -= lengths[month];
        month += 1;
    }
    (
        year,
        month as u32 + 1,
        days as u32 + 1,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
    )
}
