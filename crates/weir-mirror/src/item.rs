//! What a sink sends: one record of a committed batch, with where it sits in the log.

use std::collections::BTreeMap;

use serde_json::Value;
use weir_proto::api::dlq::DeadLetterRecord;
use weir_proto::v1::{StoredBatch, StoredRecord};
use weir_proto::Level;

/// One record on its way to a backend.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// The shard whose log holds it.
    pub shard: u32,
    /// The raft log index of its batch.
    pub index: u64,
    /// Its position within the batch.
    pub offset: u32,
    /// Its tenant.
    pub tenant: String,
    /// The record as stored.
    pub record: StoredRecord,
}

impl Item {
    /// Flattens a committed batch into items, keeping those whose tenant passes `keep`.
    pub fn from_batch(
        shard: u32,
        index: u64,
        batch: StoredBatch,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<Item> {
        if !keep(&batch.tenant) {
            return Vec::new();
        }
        let tenant = batch.tenant;
        batch
            .records
            .into_iter()
            .enumerate()
            .map(|(offset, record)| Item {
                shard,
                index,
                offset: offset as u32,
                tenant: tenant.clone(),
                record,
            })
            .collect()
    }

    /// A stable identity in the cluster's log: `<cluster>-<shard>-<index>-<offset>`. The
    /// same record always gets the same id, whichever node sends it and however often, so a
    /// replay is recognised by the backend (Elasticsearch `create` answers 409).
    pub fn id(&self, cluster: &str) -> String {
        format!("{cluster}-{}-{}-{}", self.shard, self.index, self.offset)
    }

    /// Rough encoded size, for batching.
    pub fn approx_bytes(&self) -> usize {
        let r = &self.record;
        let kv = |m: &BTreeMap<String, String>| {
            m.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>()
        };
        200 + r.body.len()
            + r.service.len()
            + r.namespace.len()
            + r.pod.len()
            + r.cluster.len()
            + r.trace_id.len()
            + r.span_id.len()
            + kv(&r.labels)
            + kv(&r.attributes)
    }
}

/// The name of a stored level number (`info` for 3); `unknown` for a number out of range.
pub fn level_name(level: u32) -> &'static str {
    Level::from_u32(level).map_or("unknown", |l| l.as_str())
}

/// A record field by name: standard fields, then `labels`, then `attributes` (or an
/// explicit `labels.<key>` / `attributes.<key>`). Empty strings count as absent.
pub fn field<'a>(r: &'a StoredRecord, name: &str) -> Option<&'a str> {
    let v: Option<&str> = match name {
        "service" => Some(&r.service),
        "namespace" => Some(&r.namespace),
        "pod" => Some(&r.pod),
        "cluster" => Some(&r.cluster),
        "trace_id" => Some(&r.trace_id),
        "span_id" => Some(&r.span_id),
        "level" => Some(level_name(r.level)),
        _ => {
            if let Some(k) = name.strip_prefix("labels.") {
                r.labels.get(k).map(String::as_str)
            } else if let Some(k) = name.strip_prefix("attributes.") {
                r.attributes.get(k).map(String::as_str)
            } else {
                r.labels
                    .get(name)
                    .or_else(|| r.attributes.get(name))
                    .map(String::as_str)
            }
        }
    };
    v.filter(|s| !s.is_empty())
}

/// The record with every field kept, as a dead letter shows it (in the API and the
/// dead-letter log; read back with [`record_from_json`]).
pub fn record_to_api(r: &StoredRecord) -> DeadLetterRecord {
    DeadLetterRecord {
        attributes: r.attributes.clone(),
        body: r.body.clone(),
        cluster: r.cluster.clone(),
        labels: r.labels.clone(),
        level: r.level,
        namespace: r.namespace.clone(),
        pod: r.pod.clone(),
        service: r.service.clone(),
        span_id: r.span_id.clone(),
        timestamp_ns: r.timestamp_ns,
        trace_id: r.trace_id.clone(),
    }
}

/// Reads a record written as [`record_to_api`] makes it.
///
/// # Errors
/// Names the field that is missing or of the wrong type.
pub fn record_from_json(v: &Value) -> Result<StoredRecord, String> {
    let s = |k: &str| -> Result<String, String> {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("record field {k:?} is missing or not a string"))
    };
    let m = |k: &str| -> Result<BTreeMap<String, String>, String> {
        let o = v
            .get(k)
            .and_then(Value::as_object)
            .ok_or_else(|| format!("record field {k:?} is missing or not an object"))?;
        o.iter()
            .map(|(k2, v2)| {
                v2.as_str()
                    .map(|s| (k2.clone(), s.to_owned()))
                    .ok_or_else(|| format!("record field {k}.{k2} is not a string"))
            })
            .collect()
    };
    Ok(StoredRecord {
        timestamp_ns: v
            .get("timestamp_ns")
            .and_then(Value::as_i64)
            .ok_or("record field \"timestamp_ns\" is missing or not an integer")?,
        level: v
            .get("level")
            .and_then(Value::as_u64)
            .ok_or("record field \"level\" is missing or not an integer")? as u32,
        body: s("body")?,
        service: s("service")?,
        namespace: s("namespace")?,
        pod: s("pod")?,
        cluster: s("cluster")?,
        labels: m("labels")?,
        attributes: m("attributes")?,
        trace_id: s("trace_id")?,
        span_id: s("span_id")?,
    })
}

/// An RFC 3339 UTC timestamp with nanoseconds, e.g. `2026-11-21T19:04:21.123456789Z`.
pub fn rfc3339(ns: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)) {
        Ok(t) => t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| ns.to_string()),
        Err(_) => ns.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> StoredRecord {
        StoredRecord {
            timestamp_ns: 1_700_000_000_123_456_789,
            level: 5,
            body: "boom \"quoted\"".into(),
            service: "api".into(),
            labels: [("team".to_string(), "core".to_string())].into(),
            attributes: [("order_id".to_string(), "42".to_string())].into(),
            trace_id: "ab".repeat(16),
            ..Default::default()
        }
    }

    #[test]
    fn a_record_round_trips_through_dead_letter_json() {
        let r = record();
        let json = serde_json::to_value(record_to_api(&r)).unwrap();
        assert_eq!(record_from_json(&json).unwrap(), r);
    }

    #[test]
    fn a_broken_dead_letter_record_names_the_field() {
        let mut v = serde_json::to_value(record_to_api(&record())).unwrap();
        v["labels"]["team"] = 3.into();
        assert!(record_from_json(&v).unwrap_err().contains("labels.team"));
    }

    #[test]
    fn fields_resolve_standard_then_labels_then_attributes() {
        let r = record();
        assert_eq!(field(&r, "service"), Some("api"));
        assert_eq!(field(&r, "level"), Some("error"));
        assert_eq!(field(&r, "team"), Some("core"));
        assert_eq!(field(&r, "order_id"), Some("42"));
        assert_eq!(field(&r, "attributes.order_id"), Some("42"));
        assert_eq!(field(&r, "pod"), None, "empty is absent");
    }

    #[test]
    fn ids_are_stable_and_name_the_log_position() {
        let b = StoredBatch {
            tenant: "t".into(),
            records: vec![record(), record()],
            received_ns: 0,
        };
        let items = Item::from_batch(2, 77, b, |_| true);
        assert_eq!(items[1].id("c1"), "c1-2-77-1");
    }

    #[test]
    fn timestamps_keep_nanoseconds() {
        assert_eq!(
            rfc3339(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
    }
}
