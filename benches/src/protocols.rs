//! The same records as each ingest protocol's request, for `weir-bench ingest --protocol`:
//! so that every path is measured on the same lines and batch size.
//!
//! - `otlp-http`: `ExportLogsServiceRequest` protobuf, one resource per (service,
//!   namespace, pod, cluster), labels and attributes as log record attributes.
//! - `loki`: `logproto.PushRequest`, snappy compressed; one stream per (service,
//!   namespace, level) with `app` and `env` labels (16 × 4 × 5 = 320 streams), and two
//!   structured-metadata fields per entry (`trace_id`, `request_id`), as a Promtail or
//!   Alloy push of the same lines would be.
//! - `es-bulk`: NDJSON `create` actions with ECS documents.

use std::collections::BTreeMap;

use prost::Message;
use weir_proto::logproto::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter};
use weir_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use weir_proto::otlp::common::v1::{any_value, AnyValue, KeyValue};
use weir_proto::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use weir_proto::otlp::resource::v1::Resource;
use weir_proto::v1::Record;

/// The path a benchmark pushes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchProtocol {
    /// `weir.v1.Ingest/Append` over gRPC.
    Grpc,
    /// OTLP over HTTP, protobuf.
    OtlpHttp,
    /// Loki push, protobuf + snappy.
    Loki,
    /// Elasticsearch `_bulk`.
    EsBulk,
}

impl BenchProtocol {
    /// The HTTP path and content type of the protocol's requests.
    pub fn http(self) -> (&'static str, &'static str) {
        match self {
            BenchProtocol::Grpc => ("", ""),
            BenchProtocol::OtlpHttp => ("/v1/logs", "application/x-protobuf"),
            BenchProtocol::Loki => ("/loki/api/v1/push", "application/x-protobuf"),
            BenchProtocol::EsBulk => ("/_bulk", "application/x-ndjson"),
        }
    }

    /// `records` as this protocol's request body.
    pub fn body(self, records: &[Record]) -> Vec<u8> {
        match self {
            BenchProtocol::Grpc => Vec::new(),
            BenchProtocol::OtlpHttp => otlp(records).encode_to_vec(),
            BenchProtocol::Loki => snap::raw::Encoder::new()
                .compress_vec(&loki(records).encode_to_vec())
                .unwrap_or_default(),
            BenchProtocol::EsBulk => es_bulk(records),
        }
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn severity(level: &str) -> i32 {
    match level {
        "trace" => 1,
        "debug" => 5,
        "info" => 9,
        "warn" => 13,
        "error" => 17,
        _ => 21,
    }
}

fn otlp(records: &[Record]) -> ExportLogsServiceRequest {
    let mut by_resource: BTreeMap<(&str, &str, &str, &str), Vec<LogRecord>> = BTreeMap::new();
    for r in records {
        let attributes = r
            .labels
            .iter()
            .chain(&r.attributes)
            .map(|(k, v)| kv(k, v))
            .collect();
        by_resource
            .entry((&r.service, &r.namespace, &r.pod, &r.cluster))
            .or_default()
            .push(LogRecord {
                time_unix_nano: r.timestamp_ns as u64,
                severity_number: severity(&r.level),
                severity_text: r.level.clone(),
                body: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(
                        String::from_utf8_lossy(&r.body).into_owned(),
                    )),
                }),
                attributes,
                trace_id: hex(&r.trace_id),
                span_id: hex(&r.span_id),
                ..Default::default()
            });
    }
    ExportLogsServiceRequest {
        resource_logs: by_resource
            .into_iter()
            .map(|((service, ns, pod, cluster), log_records)| ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", service),
                        kv("k8s.namespace.name", ns),
                        kv("k8s.pod.name", pod),
                        kv("k8s.cluster.name", cluster),
                    ],
                    dropped_attributes_count: 0,
                }),
                scope_logs: vec![ScopeLogs {
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

fn loki(records: &[Record]) -> PushRequest {
    let mut streams: BTreeMap<String, Vec<EntryAdapter>> = BTreeMap::new();
    for r in records {
        let labels = format!(
            "{{app=\"{}\", env=\"bench\", namespace=\"{}\", level=\"{}\"}}",
            r.service, r.namespace, r.level
        );
        streams.entry(labels).or_default().push(EntryAdapter {
            timestamp: Some(prost_types::Timestamp {
                seconds: r.timestamp_ns / 1_000_000_000,
                nanos: (r.timestamp_ns % 1_000_000_000) as i32,
            }),
            line: String::from_utf8_lossy(&r.body).into_owned(),
            structured_metadata: vec![
                LabelPairAdapter {
                    name: "trace_id".into(),
                    value: r.trace_id.clone(),
                },
                LabelPairAdapter {
                    name: "request_id".into(),
                    value: r.attributes.get("request_id").cloned().unwrap_or_default(),
                },
            ],
        });
    }
    PushRequest {
        streams: streams
            .into_iter()
            .map(|(labels, entries)| StreamAdapter {
                labels,
                entries,
                hash: 0,
            })
            .collect(),
    }
}

fn es_bulk(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * 400);
    for r in records {
        out.extend_from_slice(b"{\"create\":{\"_index\":\"logs-bench\"}}\n");
        let doc = serde_json::json!({
            "@timestamp": weir_mirror::item::rfc3339(r.timestamp_ns),
            "message": String::from_utf8_lossy(&r.body),
            "log": {"level": r.level},
            "service": {"name": r.service},
            "kubernetes": {"namespace": r.namespace, "pod": {"name": r.pod}},
            "orchestrator": {"cluster": {"name": r.cluster}},
            "trace": {"id": r.trace_id},
            "span": {"id": r.span_id},
            "labels": r.labels,
            "request_id": r.attributes.get("request_id"),
        });
        serde_json::to_writer(&mut out, &doc).unwrap_or_default();
        out.push(b'\n');
    }
    out
}
