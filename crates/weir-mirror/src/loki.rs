//! Loki: push bodies (`logproto.PushRequest`, snappy block compressed, or JSON).
//!
//! A record becomes one entry: its body is the line, its timestamp is kept, the configured
//! record fields and labels become stream labels and others structured metadata. Within
//! a request, a stream's entries are in time order (Loki rejects older entries when it
//! runs with ordered writes, and collapses an entry identical to one it has — same
//! stream, timestamp and line — which makes a replay harmless).
//!
//! Label names are made valid for Loki (`[a-zA-Z_][a-zA-Z0-9_]*`: other characters
//! become `_`); empty values are left out; a record with no label at all gets
//! `service="unknown"`, because Loki refuses a stream without labels.

use std::collections::BTreeMap;

use prost::Message;
use serde_json::json;
use weir_proto::logproto::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter};

use crate::config::LokiFormat;
use crate::item::{field, Item};

/// Which record fields go where.
#[derive(Clone, Debug)]
pub struct LokiMapping {
    /// Sources of stream labels (`labels.*` = every record label).
    pub stream_labels: Vec<String>,
    /// Sources of structured metadata.
    pub structured_metadata: Vec<String>,
}

/// A Loki label name from any key: invalid characters become `_`, a leading digit gets a
/// `_` in front.
pub fn label_name(k: &str) -> String {
    let mut out: String = k
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

impl LokiMapping {
    /// The stream labels of `item`, sorted by name.
    pub fn labels(&self, item: &Item) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for src in &self.stream_labels {
            if src == "labels.*" {
                for (k, v) in &item.record.labels {
                    if !v.is_empty() {
                        out.insert(label_name(k), v.clone());
                    }
                }
            } else if let Some(v) = field(&item.record, src) {
                let name = src.strip_prefix("labels.").unwrap_or(src);
                out.insert(label_name(name), v.to_owned());
            }
        }
        if out.is_empty() {
            out.insert("service".into(), "unknown".into());
        }
        out
    }

    /// The structured metadata of `item`.
    pub fn metadata(&self, item: &Item) -> Vec<(String, String)> {
        self.structured_metadata
            .iter()
            .filter_map(|src| {
                let v = field(&item.record, src)?;
                let name = src
                    .strip_prefix("labels.")
                    .or_else(|| src.strip_prefix("attributes."))
                    .unwrap_or(src);
                Some((label_name(name), v.to_owned()))
            })
            .collect()
    }
}

/// Renders labels in Prometheus selector syntax: `{a="x", b="y \"q\""}`.
pub fn selector(labels: &BTreeMap<String, String>) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// Groups `items` (all of one Loki tenant) into streams, each in time order (ties keep
/// log order).
pub fn streams<'a>(
    items: &'a [Item],
    mapping: &LokiMapping,
) -> BTreeMap<BTreeMap<String, String>, Vec<&'a Item>> {
    let mut out: BTreeMap<BTreeMap<String, String>, Vec<&Item>> = BTreeMap::new();
    for it in items {
        out.entry(mapping.labels(it)).or_default().push(it);
    }
    for v in out.values_mut() {
        v.sort_by_key(|it| (it.record.timestamp_ns, it.index, it.offset));
    }
    out
}

/// The HTTP body and content type of a push of `items` (one tenant).
pub fn encode(
    items: &[Item],
    mapping: &LokiMapping,
    format: LokiFormat,
) -> (Vec<u8>, &'static str) {
    let grouped = streams(items, mapping);
    match format {
        LokiFormat::Protobuf => {
            let req = PushRequest {
                streams: grouped
                    .iter()
                    .map(|(labels, its)| StreamAdapter {
                        labels: selector(labels),
                        entries: its
                            .iter()
                            .map(|it| EntryAdapter {
                                timestamp: Some(prost_types::Timestamp {
                                    seconds: it.record.timestamp_ns.div_euclid(1_000_000_000),
                                    nanos: it.record.timestamp_ns.rem_euclid(1_000_000_000) as i32,
                                }),
                                line: it.record.body.clone(),
                                structured_metadata: mapping
                                    .metadata(it)
                                    .into_iter()
                                    .map(|(name, value)| LabelPairAdapter { name, value })
                                    .collect(),
                            })
                            .collect(),
                        hash: 0,
                    })
                    .collect(),
            };
            let raw = req.encode_to_vec();
            // Compressing an in-memory buffer only fails for inputs over 4 GiB, which
            // batch_bytes_max rules out.
            let body = snap::raw::Encoder::new()
                .compress_vec(&raw)
                .unwrap_or_default();
            (body, "application/x-protobuf")
        }
        LokiFormat::Json => {
            let streams: Vec<_> = grouped
                .iter()
                .map(|(labels, its)| {
                    let values: Vec<_> = its
                        .iter()
                        .map(|it| {
                            let md: BTreeMap<String, String> =
                                mapping.metadata(it).into_iter().collect();
                            if md.is_empty() {
                                json!([it.record.timestamp_ns.to_string(), it.record.body])
                            } else {
                                json!([it.record.timestamp_ns.to_string(), it.record.body, md])
                            }
                        })
                        .collect();
                    json!({"stream": labels, "values": values})
                })
                .collect();
            (
                json!({ "streams": streams }).to_string().into_bytes(),
                "application/json",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::v1::StoredRecord;

    fn item(ts: i64, offset: u32, pod: &str) -> Item {
        Item {
            shard: 0,
            index: 5,
            offset,
            tenant: "t".into(),
            record: StoredRecord {
                timestamp_ns: ts,
                level: 3,
                body: format!("line {offset}"),
                service: "api".into(),
                pod: pod.into(),
                labels: [("app.kubernetes.io/name".to_string(), "x".to_string())].into(),
                trace_id: "abc".into(),
                ..Default::default()
            },
        }
    }

    fn mapping() -> LokiMapping {
        LokiMapping {
            stream_labels: ["service", "namespace", "cluster", "level", "labels.*"]
                .map(String::from)
                .to_vec(),
            structured_metadata: ["trace_id", "span_id", "pod"].map(String::from).to_vec(),
        }
    }

    #[test]
    fn label_names_are_made_valid() {
        assert_eq!(
            label_name("app.kubernetes.io/name"),
            "app_kubernetes_io_name"
        );
        assert_eq!(label_name("1x"), "_1x");
    }

    #[test]
    fn selectors_escape_values() {
        let l: BTreeMap<String, String> = [("a".to_string(), "say \"hi\"\\".to_string())].into();
        assert_eq!(selector(&l), r#"{a="say \"hi\"\\"}"#);
    }

    #[test]
    fn entries_of_a_stream_are_sorted_by_time_and_pods_go_to_metadata() {
        let items = vec![item(30, 0, "p1"), item(10, 1, "p2"), item(20, 2, "")];
        let (body, ct) = encode(&items, &mapping(), LokiFormat::Protobuf);
        assert_eq!(ct, "application/x-protobuf");
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let req = PushRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(req.streams.len(), 1, "pod is metadata, not a label");
        let s = &req.streams[0];
        assert_eq!(
            s.labels,
            r#"{app_kubernetes_io_name="x", level="info", service="api"}"#
        );
        let ts: Vec<i32> = s
            .entries
            .iter()
            .map(|e| e.timestamp.unwrap().nanos)
            .collect();
        assert_eq!(ts, vec![10, 20, 30]);
        assert_eq!(
            s.entries[0].structured_metadata.len(),
            2,
            "trace_id and pod"
        );
        assert_eq!(s.entries[1].structured_metadata.len(), 1, "no empty pod");
    }

    #[test]
    fn json_bodies_carry_timestamps_as_strings() {
        let (body, ct) = encode(&[item(7, 0, "")], &mapping(), LokiFormat::Json);
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["streams"][0]["values"][0][0], "7");
        assert_eq!(v["streams"][0]["values"][0][2]["trace_id"], "abc");
    }

    #[test]
    fn a_record_without_labels_gets_a_placeholder_stream() {
        let m = LokiMapping {
            stream_labels: vec!["namespace".into()],
            structured_metadata: vec![],
        };
        let l = m.labels(&item(1, 0, ""));
        assert_eq!(l.get("service").map(String::as_str), Some("unknown"));
    }
}
