//! Property tests of the public API: normalisation is total and its output is stable
//! through the storage encoding; routing is a function of the stream alone.

use std::collections::HashMap;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use prost::Message;
use weir_ingest::{
    normalize, normalize_record, otlp_to_append, shard_for, split_by_shard, stream_hash, Limits,
    Normalized,
};
use weir_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use weir_proto::otlp::common::v1::{any_value::Value, AnyValue, KeyValue};
use weir_proto::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use weir_proto::v1::{AppendRequest, Record, StoredBatch, StoredRecord};
use weir_proto::Level;

const NOW: i64 = 1_700_000_000_000_000_000;

fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0),
        (-8 * 86_400_000_000_000i64..700_000_000_000).prop_map(|d| NOW + d),
        any::<i64>(),
    ]
}

fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["", "info", "WARNING", "err", "7", "crit", "Fatal"])
            .prop_map(str::to_owned),
        1 => ".{0,8}",
    ]
}

fn label_name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-zA-Z_][a-zA-Z0-9_.]{0,10}",
        1 => ".{0,12}",
        1 => Just("service".to_owned()),
    ]
}

fn id(digits: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just(String::new()),
        2 => proptest::string::string_regex(&format!("[0-9a-fA-F]{{{digits}}}")).expect("valid regex"),
        1 => "[0-9a-z]{0,40}",
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (
        timestamp(),
        level(),
        prop_oneof![
            vec(any::<u8>(), 0..64),
            ".{0,40}".prop_map(String::into_bytes)
        ],
        ("[a-z]{0,6}", ".{0,6}", "[a-z0-9-]{0,8}", ".{0,4}"),
        btree_map(label_name(), ".{0,8}", 0..4),
        btree_map(".{0,10}", ".{0,16}", 0..6),
        id(32),
        id(16),
    )
        .prop_map(
            |(
                timestamp_ns,
                level,
                body,
                (service, namespace, pod, cluster),
                labels,
                attributes,
                trace_id,
                span_id,
            )| {
                Record {
                    timestamp_ns,
                    level,
                    body,
                    service,
                    namespace,
                    pod,
                    cluster,
                    labels,
                    attributes,
                    trace_id,
                    span_id,
                }
            },
        )
}

/// Records that pass the default limits (bodies may still need repair), so that the
/// round-trip property sees plenty of accepted records.
fn valid_record() -> impl Strategy<Value = Record> {
    (
        prop_oneof![
            Just(0),
            (-86_400_000_000_000i64..600_000_000_000).prop_map(|d| NOW + d)
        ],
        prop::sample::select(vec!["", "info", "WARNING", "err", "7", "crit", "Fatal"]),
        vec(any::<u8>(), 0..64),
        btree_map("l_[a-zA-Z0-9_.]{0,8}", ".{1,8}", 0..4),
        btree_map(".{1,10}", ".{0,16}", 0..4),
        (
            prop_oneof![Just(String::new()), "[0-9a-fA-F]{32}"],
            prop_oneof![Just(String::new()), "[0-9a-fA-F]{16}"],
        ),
    )
        .prop_map(
            |(timestamp_ns, level, body, labels, attributes, (trace_id, span_id))| Record {
                timestamp_ns,
                level: level.to_owned(),
                body,
                service: "api".into(),
                labels,
                attributes,
                trace_id,
                span_id,
                ..Default::default()
            },
        )
}

/// Tight limits, so that every check fires now and then.
fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        2 => Just(Limits::default()),
        1 => (1usize..200, 0usize..5, 0usize..5, 1usize..12, 1usize..10).prop_map(
            |(record_bytes, labels, attributes, name_bytes, value_bytes)| Limits {
                record_bytes_max: record_bytes,
                labels_per_record_max: labels,
                attributes_per_record_max: attributes,
                label_name_bytes_max: name_bytes,
                label_value_bytes_max: value_bytes,
                batch_records_max: 8,
                tenant_bytes_max: 6,
                ..Limits::default()
            }
        ),
    ]
}

/// The record a stored one came from, as a client would send it.
fn to_record(s: &StoredRecord) -> Record {
    Record {
        timestamp_ns: s.timestamp_ns,
        level: Level::from_u32(s.level)
            .expect("stored level is valid")
            .as_str()
            .to_owned(),
        body: s.body.clone().into_bytes(),
        service: s.service.clone(),
        namespace: s.namespace.clone(),
        pod: s.pod.clone(),
        cluster: s.cluster.clone(),
        labels: s.labels.clone().into_iter().collect(),
        attributes: s.attributes.clone().into_iter().collect(),
        trace_id: s.trace_id.clone(),
        span_id: s.span_id.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `normalize` is total: every record is either kept or refused with a reason, at its
    /// position, whatever the input and the limits.
    #[test]
    fn normalize_never_panics_and_accounts_for_every_record(
        tenant in prop_oneof![Just(String::new()), "[a-z.]{1,8}", ".{0,8}"],
        records in vec(record(), 0..12),
        limits in limits(),
    ) {
        let count = records.len();
        let req = AppendRequest { tenant, records, ..Default::default() };
        if let Ok(n) = normalize(req, NOW, &limits) {
            let mut positions: Vec<u32> = n.records.iter().map(|(i, _)| *i)
                .chain(n.rejected.iter().map(|e| e.index)).collect();
            positions.sort_unstable();
            prop_assert_eq!(positions, (0..count as u32).collect::<Vec<_>>());
            prop_assert!(n.rejected.iter().all(|e| !e.reason.is_empty()));
            prop_assert!(n.bodies_repaired as usize <= n.records.len());
        }
    }

    /// What normalize keeps is what the log stores: it survives the prost encoding
    /// unchanged, alone and in a batch, and normalising it again changes nothing.
    #[test]
    fn accepted_records_round_trip(
        record in prop_oneof![record(), valid_record()],
        limits in limits(),
    ) {
        let result = normalize_record(record, NOW, &limits);
        if let Ok((stored, _)) = result {
            let bytes = stored.encode_to_vec();
            prop_assert_eq!(&StoredRecord::decode(bytes.as_slice()).unwrap(), &stored);
            let batch = StoredBatch { tenant: "t".into(), records: vec![stored.clone()], received_ns: NOW };
            prop_assert_eq!(StoredBatch::decode(batch.encode_to_vec().as_slice()).unwrap(), batch);
            let (again, repaired) = normalize_record(to_record(&stored), NOW, &limits).unwrap();
            prop_assert!(!repaired);
            prop_assert_eq!(again, stored);
        }
    }

    /// The shard of a stream does not depend on the order its labels were inserted in,
    /// nor on anything but the stream identity.
    #[test]
    fn stream_hash_is_a_function_of_the_stream(
        labels in vec(("[a-z]{1,4}", "[a-z]{1,4}"), 0..10),
        body in ".{0,10}",
        level in 1u32..=6,
    ) {
        let forward: HashMap<String, String> = labels.iter().cloned().collect();
        let mut backward = HashMap::new();
        // The same final map as `forward`, built in another insertion order.
        for (k, v) in labels.iter().rev() {
            backward.insert(k.clone(), v.clone());
        }
        for (k, v) in &forward {
            backward.insert(k.clone(), v.clone());
        }
        let a = StoredRecord { service: "s".into(), labels: forward.into_iter().collect(), ..Default::default() };
        let b = StoredRecord { service: "s".into(), labels: backward.into_iter().collect(), body, level, ..Default::default() };
        prop_assert_eq!(stream_hash("t", &a), stream_hash("t", &b));
        prop_assert_eq!(shard_for("t", &a, 7), shard_for("t", &b, 7));
    }

    /// Every record lands in exactly one piece, in its shard, in request order.
    #[test]
    fn split_by_shard_preserves_order_and_positions(
        streams in vec((0u8..6, ".{0,6}"), 0..40),
        shard_count in 1u32..5,
    ) {
        let records: Vec<(u32, StoredRecord)> = streams.into_iter().enumerate().map(|(i, (s, body))| {
            (i as u32 * 3, StoredRecord { service: format!("svc{s}"), body, ..Default::default() })
        }).collect();
        let n = Normalized { tenant: "t".into(), records: records.clone(), ..Default::default() };
        let pieces = split_by_shard(n, shard_count, 5);
        let mut seen = Vec::new();
        for (shard, batch, positions) in pieces {
            prop_assert!(shard.0 < shard_count);
            prop_assert!(!positions.is_empty());
            prop_assert!(positions.windows(2).all(|w| w[0] < w[1]));
            for (r, p) in batch.records.iter().zip(&positions) {
                prop_assert_eq!(r, &records[(*p / 3) as usize].1);
                prop_assert_eq!(shard_for("t", r, shard_count), shard);
            }
            seen.extend(positions);
        }
        seen.sort_unstable();
        prop_assert_eq!(seen, records.iter().map(|(p, _)| *p).collect::<Vec<_>>());
    }

    /// The OTLP mapping is total and accounts for every record of the export.
    #[test]
    fn otlp_mapping_accounts_for_every_record(
        records in vec((any::<u64>(), any::<i32>(), ".{0,6}", vec(any::<u8>(), 0..18), vec(any::<u8>(), 0..10), ".{0,10}"), 0..10),
    ) {
        let count = records.len();
        let log_records = records.into_iter().map(|(t, sev, text, trace_id, span_id, key)| LogRecord {
            time_unix_nano: t,
            severity_number: sev,
            severity_text: text.clone(),
            body: Some(AnyValue { value: Some(Value::StringValue(text)) }),
            attributes: vec![KeyValue { key, value: Some(AnyValue { value: Some(Value::DoubleValue(t as f64)) }) }],
            trace_id,
            span_id,
            ..Default::default()
        }).collect();
        let export = ExportLogsServiceRequest { resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs { log_records, ..Default::default() }],
            ..Default::default()
        }]};
        let (req, refused) = otlp_to_append(export, "t");
        prop_assert_eq!(req.records.len() + refused.len(), count);
        prop_assert!(refused.windows(2).all(|w| w[0].index < w[1].index));
        for r in &req.records {
            prop_assert!(weir_ingest::parse_level(&r.level).is_ok());
        }
        let _ = normalize(req, NOW, &Limits::default());
    }
}
