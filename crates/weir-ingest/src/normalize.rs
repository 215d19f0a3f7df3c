//! Validation and normalisation of an [`AppendRequest`] to [`StoredRecord`]s.

use weir_proto::v1::{AppendRequest, Record, RecordError, StoredRecord};
use weir_proto::DEFAULT_TENANT;

use crate::{parse_level, quote, Error, Limits, Result};

/// Standard fields of the record model. A label may not take one of these names
/// (compared ASCII-case-insensitively): `service:api` in a query must mean the field.
pub(crate) const STANDARD_FIELDS: [&str; 10] = [
    "service",
    "namespace",
    "pod",
    "cluster",
    "level",
    "tenant",
    "trace_id",
    "span_id",
    "body",
    "timestamp",
];

/// A validated, normalised request: what the proposer needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Normalized {
    /// The tenant, [`DEFAULT_TENANT`] when the request named none.
    pub tenant: String,
    /// The request's idempotency key (empty when none), carried through for deduplication.
    pub producer_id: String,
    /// The request's sequence number, carried through with `producer_id`.
    pub sequence: u64,
    /// Accepted records in request order, each with its position in the request.
    pub records: Vec<(u32, StoredRecord)>,
    /// Refused records, in request order, with their position and a reason naming the
    /// field, the offending size or value, and the limit with its config key.
    pub rejected: Vec<RecordError>,
    /// Accepted records whose body had invalid UTF-8 replaced by U+FFFD.
    pub bodies_repaired: u64,
}

/// Refuses a request whose encoded size is over `limits.batch_bytes_max`. The server calls
/// this with the encoded length before decoding (a decoded request no longer knows it).
///
/// # Errors
///
/// [`Error::BatchTooLarge`].
pub fn check_batch_bytes(encoded_bytes: usize, limits: &Limits) -> Result<()> {
    if encoded_bytes > limits.batch_bytes_max {
        return Err(Error::BatchTooLarge {
            bytes: encoded_bytes,
            limit: limits.batch_bytes_max,
        });
    }
    Ok(())
}

/// The tenant to store a request under: [`DEFAULT_TENANT`] for an empty name, the name
/// itself when it is at most `limits.tenant_bytes_max` of `[A-Za-z0-9_.-]` and not `.` or
/// `..` (a tenant may become a path component or an index name downstream).
///
/// # Errors
///
/// [`Error::BadTenant`] saying which rule the name broke.
pub fn normalize_tenant(tenant: &str, limits: &Limits) -> Result<String> {
    let bad = |reason: String| Error::BadTenant {
        tenant: crate::shorten(tenant),
        reason,
    };
    if tenant.is_empty() {
        return Ok(DEFAULT_TENANT.to_owned());
    }
    if tenant.len() > limits.tenant_bytes_max {
        return Err(bad(format!(
            "it is {} bytes, limit {} (limits.tenant_bytes_max)",
            tenant.len(),
            limits.tenant_bytes_max
        )));
    }
    if let Some(c) = tenant
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(bad(format!(
            "it contains {c:?}; allowed characters are A-Z a-z 0-9 _ . -"
        )));
    }
    if tenant == "." || tenant == ".." {
        return Err(bad("\".\" and \"..\" are reserved".to_owned()));
    }
    Ok(tenant.to_owned())
}

/// Validates and normalises a request.
///
/// Whole-request checks come first (tenant, record count); then every record is checked on
/// its own by [`normalize_record`]: a refused record goes to [`Normalized::rejected`] with
/// its position, the others are kept in order. `now_ns` is the receive time: it replaces
/// timestamp 0 and anchors the timestamp window.
///
/// Never panics, whatever the request holds.
///
/// # Errors
///
/// [`Error::BadTenant`], [`Error::TooManyRecords`]. The encoded size
/// ([`Error::BatchTooLarge`]) is the caller's to check, with [`check_batch_bytes`].
pub fn normalize(req: AppendRequest, now_ns: i64, limits: &Limits) -> Result<Normalized> {
    let tenant = normalize_tenant(&req.tenant, limits)?;
    if !req.producer_id.is_empty() && req.sequence == 0 {
        return Err(Error::MissingSequence {
            producer_id: req.producer_id.chars().take(64).collect(),
        });
    }
    let count = req.records.len();
    // Positions are u32 on the wire, so the request may hold at most u32::MAX + 1 records
    // whatever the configured limit; past the check, `i as u32` below cannot truncate.
    if count > limits.batch_records_max || u32::try_from(count).is_err() {
        return Err(Error::TooManyRecords {
            count,
            limit: limits.batch_records_max,
        });
    }
    let mut n = Normalized {
        tenant,
        producer_id: req.producer_id,
        sequence: req.sequence,
        records: Vec::with_capacity(count),
        rejected: Vec::new(),
        bodies_repaired: 0,
    };
    for (i, record) in req.records.into_iter().enumerate() {
        let index = i as u32;
        match normalize_record(record, now_ns, limits) {
            Ok((stored, repaired)) => {
                n.bodies_repaired += u64::from(repaired);
                n.records.push((index, stored));
            }
            Err(r) => n.rejected.push(RecordError {
                index,
                reason: r.reason,
                code: r.code.to_owned(),
            }),
        }
    }
    Ok(n)
}

/// Why one record is refused: a sentence for people and a code for programs and metrics
/// (`RecordError.code`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// One of [`REJECTION_CODES`].
    pub code: &'static str,
    /// Names the field, the size or value, and the limit with its config key.
    pub reason: String,
}

/// Every [`Rejection::code`]: too large (`limits.record_bytes_max`), a timestamp out of
/// range, an unknown level, a malformed trace or span id, a bad label or label count, a
/// bad attribute name or count, an over-long service/namespace/pod/cluster.
pub const REJECTION_CODES: [&str; 7] = [
    "too_large",
    "timestamp",
    "level",
    "id",
    "label",
    "attribute",
    "field",
];

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Validates one record and turns it into what is stored; the `bool` says whether its body
/// had invalid UTF-8 replaced by U+FFFD. For ingest paths that build records themselves
/// (Loki push, Elasticsearch bulk) as much as for [`normalize`].
///
/// Checks, in this order (the first failure is reported): label and attribute counts,
/// label names (syntax `[a-zA-Z_][a-zA-Z0-9_.]*`, length, not `__`-prefixed, not a standard
/// field) and values (non-empty, length), attribute names (non-empty, length), the lengths
/// of `service`, `namespace`, `pod`, `cluster`, the level text, the timestamp window,
/// `trace_id` (32 hex digits or empty) and `span_id` (16 or empty), then the record size
/// (body after repair + label and attribute names and values).
///
/// Normalises: timestamp 0 -> `now_ns`; level text -> its number; body -> UTF-8; ids ->
/// lower case, and an all-zero id (invalid per W3C trace context) -> empty.
///
/// # Errors
///
/// A [`Rejection`]: its reason names the field, the size or value, and the limit
/// with its config key, e.g. `label "app" value is 2048 bytes, limit 1024
/// (limits.label_value_bytes_max)`.
pub fn normalize_record(
    record: Record,
    now_ns: i64,
    limits: &Limits,
) -> std::result::Result<(StoredRecord, bool), Rejection> {
    let kind = |code: &'static str| move |reason: String| Rejection { code, reason };
    if record.labels.len() > limits.labels_per_record_max {
        return Err(kind("label")(format!(
            "record has {} labels, limit {} (limits.labels_per_record_max)",
            record.labels.len(),
            limits.labels_per_record_max
        )));
    }
    if record.attributes.len() > limits.attributes_per_record_max {
        return Err(kind("attribute")(format!(
            "record has {} attributes, limit {} (limits.attributes_per_record_max)",
            record.attributes.len(),
            limits.attributes_per_record_max
        )));
    }
    // The maps iterate in name order, so the reported failure is always the same one for
    // the same bad record.
    for (name, value) in &record.labels {
        check_label(name, value, limits).map_err(kind("label"))?;
    }
    for name in record.attributes.keys() {
        check_attribute_name(name, limits).map_err(kind("attribute"))?;
    }
    for (field, value) in [
        ("service", &record.service),
        ("namespace", &record.namespace),
        ("pod", &record.pod),
        ("cluster", &record.cluster),
    ] {
        if value.len() > limits.label_value_bytes_max {
            return Err(kind("field")(format!(
                "{field} is {} bytes, limit {} (limits.label_value_bytes_max)",
                value.len(),
                limits.label_value_bytes_max
            )));
        }
    }
    let level = parse_level(&record.level).map_err(kind("level"))?;
    let timestamp_ns =
        check_timestamp(record.timestamp_ns, now_ns, limits).map_err(kind("timestamp"))?;
    let trace_id = normalize_id("trace_id", record.trace_id, 32).map_err(kind("id"))?;
    let span_id = normalize_id("span_id", record.span_id, 16).map_err(kind("id"))?;

    let names_and_values: usize = record
        .labels
        .iter()
        .chain(record.attributes.iter())
        .map(|(k, v)| k.len().saturating_add(v.len()))
        .fold(0, usize::saturating_add);
    // Repair can only make the body longer, so checking the raw body first refuses an
    // oversized record without copying it.
    check_record_bytes(record.body.len().saturating_add(names_and_values), limits)
        .map_err(kind("too_large"))?;
    let (body, repaired) = match String::from_utf8(record.body) {
        Ok(body) => (body, false),
        Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
    };
    if repaired {
        check_record_bytes(body.len().saturating_add(names_and_values), limits)
            .map_err(kind("too_large"))?;
    }

    let stored = StoredRecord {
        timestamp_ns,
        level: level as u32,
        body,
        service: record.service,
        namespace: record.namespace,
        pod: record.pod,
        cluster: record.cluster,
        labels: record.labels,
        attributes: record.attributes,
        trace_id,
        span_id,
    };
    Ok((stored, repaired))
}

fn check_record_bytes(bytes: usize, limits: &Limits) -> std::result::Result<(), String> {
    if bytes > limits.record_bytes_max {
        return Err(format!(
            "record is {bytes} bytes (body, label and attribute names and values), \
             limit {} (limits.record_bytes_max)",
            limits.record_bytes_max
        ));
    }
    Ok(())
}

fn check_label(name: &str, value: &str, limits: &Limits) -> std::result::Result<(), String> {
    if name.len() > limits.label_name_bytes_max {
        return Err(format!(
            "label name {} is {} bytes, limit {} (limits.label_name_bytes_max)",
            quote(name),
            name.len(),
            limits.label_name_bytes_max
        ));
    }
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') {
        return Err(format!(
            "label name {} is invalid: it must match [a-zA-Z_][a-zA-Z0-9_.]*",
            quote(name)
        ));
    }
    if name.starts_with("__") {
        return Err(format!(
            "label name {} is reserved: names starting with \"__\" are for internal use",
            quote(name)
        ));
    }
    if let Some(field) = STANDARD_FIELDS
        .iter()
        .find(|f| f.eq_ignore_ascii_case(name))
    {
        return Err(format!(
            "label {} is a standard field; set the record's {field} field instead",
            quote(name)
        ));
    }
    if value.is_empty() {
        return Err(format!(
            "label {} value is empty; omit the label instead",
            quote(name)
        ));
    }
    if value.len() > limits.label_value_bytes_max {
        return Err(format!(
            "label {} value is {} bytes, limit {} (limits.label_value_bytes_max)",
            quote(name),
            value.len(),
            limits.label_value_bytes_max
        ));
    }
    Ok(())
}

fn check_attribute_name(name: &str, limits: &Limits) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("attribute name is empty".to_owned());
    }
    if name.len() > limits.label_name_bytes_max {
        return Err(format!(
            "attribute name {} is {} bytes, limit {} (limits.label_name_bytes_max)",
            quote(name),
            name.len(),
            limits.label_name_bytes_max
        ));
    }
    Ok(())
}

/// Nanoseconds in one second, for readable reasons.
const SECOND_NS: i128 = 1_000_000_000;

fn check_timestamp(ts: i64, now_ns: i64, limits: &Limits) -> std::result::Result<i64, String> {
    if ts == 0 {
        return Ok(now_ns);
    }
    // i128: no overflow whatever the timestamp, the clock or the limits.
    let delta = i128::from(ts) - i128::from(now_ns);
    if delta < -i128::from(limits.timestamp_age_ns_max()) {
        return Err(format!(
            "timestamp_ns {ts} is {} s in the past, limit {} s (limits.timestamp_age_secs_max)",
            -delta / SECOND_NS,
            limits.timestamp_age_secs_max
        ));
    }
    if delta > i128::from(limits.timestamp_future_ns_max()) {
        return Err(format!(
            "timestamp_ns {ts} is {} s in the future, limit {} s \
             (limits.timestamp_future_secs_max); check the sender's clock",
            delta / SECOND_NS,
            limits.timestamp_future_secs_max
        ));
    }
    Ok(ts)
}

/// `id` lower-cased if it is `digits` hex digits; empty stays empty, all zeros becomes
/// empty (W3C trace context: an all-zero id is invalid, i.e. "no id").
fn normalize_id(field: &str, mut id: String, digits: usize) -> std::result::Result<String, String> {
    if id.is_empty() {
        return Ok(id);
    }
    if id.len() != digits || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{field} {} is not {digits} hex digits (or empty)",
            quote(&id)
        ));
    }
    if id.bytes().all(|b| b == b'0') {
        return Ok(String::new());
    }
    // In place: the id is the request's own string, most often lower case already.
    id.make_ascii_lowercase();
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use weir_proto::Level;

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn ok_record() -> Record {
        Record {
            timestamp_ns: NOW - 1_000,
            level: "info".into(),
            body: b"hello".to_vec(),
            service: "api".into(),
            labels: BTreeMap::from([("app".into(), "web".into())]),
            attributes: BTreeMap::from([("user.id".into(), "42".into())]),
            ..Default::default()
        }
    }

    #[test]
    fn every_kind_of_refusal_has_its_code() {
        let limits = Limits::default();
        let code = |r: Record| normalize_record(r, NOW, &limits).unwrap_err().code;
        let cases = [
            (
                Record {
                    body: vec![b'x'; limits.record_bytes_max + 1],
                    ..Default::default()
                },
                "too_large",
            ),
            (
                Record {
                    timestamp_ns: 1,
                    ..Default::default()
                },
                "timestamp",
            ),
            (
                Record {
                    level: "loud".into(),
                    ..Default::default()
                },
                "level",
            ),
            (
                Record {
                    trace_id: "zz".into(),
                    ..Default::default()
                },
                "id",
            ),
            (
                Record {
                    labels: [("__x".to_string(), "v".to_string())].into(),
                    ..Default::default()
                },
                "label",
            ),
            (
                Record {
                    attributes: [(String::new(), "v".to_string())].into(),
                    ..Default::default()
                },
                "attribute",
            ),
            (
                Record {
                    service: "s".repeat(limits.label_value_bytes_max + 1),
                    ..Default::default()
                },
                "field",
            ),
        ];
        for (record, want) in cases {
            assert_eq!(code(record), want);
            assert!(REJECTION_CODES.contains(&want));
        }
    }

    /// The reason `record` is refused with the default limits.
    fn reason(record: Record) -> String {
        reason_with(record, &Limits::default())
    }

    fn reason_with(record: Record, limits: &Limits) -> String {
        normalize_record(record, NOW, limits)
            .expect_err("record should be refused")
            .reason
    }

    #[test]
    fn valid_record_is_kept_and_normalised() {
        let mut r = ok_record();
        r.timestamp_ns = 0;
        r.level = "WARNING".into();
        r.trace_id = "4BF92F3577B34DA6A3CE929D0E0E4736".into();
        r.span_id = "00F067AA0BA902B7".into();
        let (s, repaired) = normalize_record(r, NOW, &Limits::default()).unwrap();
        assert!(!repaired);
        assert_eq!(s.timestamp_ns, NOW);
        assert_eq!(s.level, Level::Warn as u32);
        assert_eq!(s.body, "hello");
        assert_eq!(s.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.span_id, "00f067aa0ba902b7");
        assert_eq!(s.labels["app"], "web");
        assert_eq!(s.attributes["user.id"], "42");
    }

    #[test]
    fn empty_body_is_allowed() {
        let r = Record::default();
        let (s, _) = normalize_record(r, NOW, &Limits::default()).unwrap();
        assert_eq!(s.body, "");
        assert_eq!(s.level, Level::Info as u32);
    }

    #[test]
    fn invalid_utf8_body_is_repaired_and_counted_not_refused() {
        let mut bad = ok_record();
        bad.body = b"caf\xe9 \xff ok".to_vec();
        let req = AppendRequest {
            records: vec![ok_record(), bad],
            ..Default::default()
        };
        let n = normalize(req, NOW, &Limits::default()).unwrap();
        assert!(n.rejected.is_empty());
        assert_eq!(n.bodies_repaired, 1);
        assert_eq!(n.records[1].1.body, "caf\u{FFFD} \u{FFFD} ok");
    }

    #[test]
    fn repaired_body_is_measured_after_repair() {
        // 4 invalid bytes become 4 x 3 bytes of U+FFFD: 4 bytes raw, 12 stored.
        let limits = Limits {
            record_bytes_max: 10,
            ..Limits::default()
        };
        let r = Record {
            body: vec![0xff; 4],
            ..Default::default()
        };
        let e = reason_with(r, &limits);
        assert!(e.contains("record is 12 bytes"), "{e}");
        assert!(e.contains("limits.record_bytes_max"), "{e}");
    }

    #[test]
    fn too_big_record_names_max_record_bytes() {
        let mut r = ok_record();
        r.body = vec![b'x'; 256 * 1024];
        let e = reason(r);
        assert!(e.contains("limit 262144 (limits.record_bytes_max)"), "{e}");
    }

    #[test]
    fn too_many_labels_names_max_labels_per_record() {
        let mut r = ok_record();
        r.labels = (0..33).map(|i| (format!("l{i}"), "v".into())).collect();
        let e = reason(r);
        assert_eq!(
            e,
            "record has 33 labels, limit 32 (limits.labels_per_record_max)"
        );
    }

    #[test]
    fn too_many_attributes_names_max_attributes_per_record() {
        let mut r = ok_record();
        r.attributes = (0..129).map(|i| (format!("a{i}"), "v".into())).collect();
        let e = reason(r);
        assert_eq!(
            e,
            "record has 129 attributes, limit 128 (limits.attributes_per_record_max)"
        );
    }

    #[test]
    fn label_name_syntax_is_checked() {
        for bad in ["9app", "app-name", "", "a b", "é", ".x"] {
            let mut r = ok_record();
            r.labels = BTreeMap::from([(bad.to_owned(), "v".to_owned())]);
            let e = reason(r);
            assert!(e.contains("[a-zA-Z_][a-zA-Z0-9_.]*"), "{bad}: {e}");
        }
        for good in ["_x", "app.kubernetes.io", "A9_."] {
            let mut r = ok_record();
            r.labels = BTreeMap::from([(good.to_owned(), "v".to_owned())]);
            normalize_record(r, NOW, &Limits::default()).unwrap();
        }
    }

    #[test]
    fn double_underscore_label_names_are_reserved() {
        let mut r = ok_record();
        r.labels = BTreeMap::from([("__name__".into(), "v".into())]);
        assert!(reason(r).contains("reserved"));
    }

    #[test]
    fn label_named_like_a_standard_field_points_to_the_field() {
        for field in STANDARD_FIELDS {
            let mut r = ok_record();
            r.labels = BTreeMap::from([(field.to_uppercase(), "v".into())]);
            let e = reason(r);
            assert!(e.contains("is a standard field"), "{e}");
            assert!(
                e.contains(&format!("set the record's {field} field")),
                "{e}"
            );
        }
    }

    #[test]
    fn long_label_name_names_max_label_name_bytes() {
        let mut r = ok_record();
        r.labels = BTreeMap::from([("a".repeat(129), "v".into())]);
        let e = reason(r);
        assert!(
            e.contains("is 129 bytes, limit 128 (limits.label_name_bytes_max)"),
            "{e}"
        );
        // The name is echoed shortened, not in full.
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn empty_label_value_is_refused() {
        let mut r = ok_record();
        r.labels = BTreeMap::from([("app".into(), String::new())]);
        assert_eq!(
            reason(r),
            "label \"app\" value is empty; omit the label instead"
        );
    }

    #[test]
    fn long_label_value_names_max_label_value_bytes() {
        let mut r = ok_record();
        r.labels = BTreeMap::from([("app".into(), "v".repeat(2048))]);
        assert_eq!(
            reason(r),
            "label \"app\" value is 2048 bytes, limit 1024 (limits.label_value_bytes_max)"
        );
    }

    #[test]
    fn attribute_names_must_be_non_empty_and_short() {
        let mut r = ok_record();
        r.attributes = BTreeMap::from([(String::new(), "v".into())]);
        assert_eq!(reason(r), "attribute name is empty");
        let mut r = ok_record();
        r.attributes = BTreeMap::from([("a".repeat(200), "v".into())]);
        assert!(reason(r).contains("limit 128 (limits.label_name_bytes_max)"));
        // Attribute values may be empty; names need not follow the label syntax.
        let mut r = ok_record();
        r.attributes = BTreeMap::from([("http.status-code".into(), String::new())]);
        normalize_record(r, NOW, &Limits::default()).unwrap();
    }

    #[test]
    fn long_standard_fields_name_max_label_value_bytes() {
        let mut r = ok_record();
        r.pod = "p".repeat(1025);
        assert_eq!(
            reason(r),
            "pod is 1025 bytes, limit 1024 (limits.label_value_bytes_max)"
        );
    }

    #[test]
    fn unknown_level_is_refused_with_accepted_values() {
        let mut r = ok_record();
        r.level = "loud".into();
        let e = reason(r);
        assert!(e.starts_with("level \"loud\""), "{e}");
        assert!(
            e.contains("trace, debug, info, warn, error or fatal"),
            "{e}"
        );
    }

    #[test]
    fn timestamp_window_names_its_limits() {
        let day = 24 * 3600 * 1_000_000_000i64;
        let mut r = ok_record();
        r.timestamp_ns = NOW - 8 * day;
        assert_eq!(
            reason(r),
            format!(
                "timestamp_ns {} is 691200 s in the past, limit 604800 s \
                 (limits.timestamp_age_secs_max)",
                NOW - 8 * day
            )
        );
        let mut r = ok_record();
        r.timestamp_ns = NOW + 3600 * 1_000_000_000;
        let e = reason(r);
        assert!(e.contains("3600 s in the future, limit 600 s"), "{e}");
        assert!(e.contains("(limits.timestamp_future_secs_max)"), "{e}");
        // Edges are inside the window; extremes do not overflow.
        for ts in [NOW - 7 * day, NOW + 600 * 1_000_000_000] {
            let mut r = ok_record();
            r.timestamp_ns = ts;
            normalize_record(r, NOW, &Limits::default()).unwrap();
        }
        for ts in [i64::MIN, i64::MAX, -1] {
            let mut r = ok_record();
            r.timestamp_ns = ts;
            reason(r);
        }
    }

    #[test]
    fn ids_must_be_hex_of_the_right_length() {
        let mut r = ok_record();
        r.trace_id = "abc".into();
        assert_eq!(
            reason(r),
            "trace_id \"abc\" is not 32 hex digits (or empty)"
        );
        let mut r = ok_record();
        r.span_id = "zz".repeat(8);
        assert!(reason(r).starts_with("span_id \"zzzz"));
        let mut r = ok_record();
        r.trace_id = "0".repeat(32);
        r.span_id = "0".repeat(16);
        let (s, _) = normalize_record(r, NOW, &Limits::default()).unwrap();
        assert_eq!((s.trace_id.as_str(), s.span_id.as_str()), ("", ""));
    }

    #[test]
    fn tenant_rules() {
        let l = Limits::default();
        assert_eq!(normalize_tenant("", &l).unwrap(), DEFAULT_TENANT);
        assert_eq!(
            normalize_tenant("team-a_1.prod", &l).unwrap(),
            "team-a_1.prod"
        );
        let e = normalize_tenant(&"t".repeat(129), &l)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("129 bytes, limit 128 (limits.tenant_bytes_max)"),
            "{e}"
        );
        let e = normalize_tenant("a/b", &l).unwrap_err().to_string();
        assert!(e.contains("'/'") && e.contains("A-Z a-z 0-9 _ . -"), "{e}");
        assert!(normalize_tenant("..", &l).is_err());
    }

    #[test]
    fn a_producer_id_without_a_sequence_is_refused_whole() {
        let req = AppendRequest {
            producer_id: "agent-1".into(),
            sequence: 0,
            records: vec![Record::default()],
            ..Default::default()
        };
        let e = normalize(req, NOW, &Limits::default()).unwrap_err();
        assert_eq!(
            e,
            Error::MissingSequence {
                producer_id: "agent-1".into()
            }
        );
        assert!(e.to_string().contains("sequence"), "{e}");
        let ok = AppendRequest {
            producer_id: "agent-1".into(),
            sequence: 1,
            records: vec![Record::default()],
            ..Default::default()
        };
        assert!(normalize(ok, NOW, &Limits::default()).is_ok());
    }

    #[test]
    fn whole_request_errors() {
        let l = Limits {
            batch_records_max: 2,
            ..Limits::default()
        };
        let req = AppendRequest {
            records: vec![Record::default(); 3],
            ..Default::default()
        };
        assert_eq!(
            normalize(req, NOW, &l),
            Err(Error::TooManyRecords { count: 3, limit: 2 })
        );
        let req = AppendRequest {
            tenant: "a b".into(),
            ..Default::default()
        };
        assert!(matches!(
            normalize(req, NOW, &l),
            Err(Error::BadTenant { .. })
        ));
        assert!(check_batch_bytes(16 * 1024 * 1024, &l).is_ok());
        assert_eq!(
            check_batch_bytes(16 * 1024 * 1024 + 1, &l),
            Err(Error::BatchTooLarge {
                bytes: 16 * 1024 * 1024 + 1,
                limit: 16 * 1024 * 1024
            })
        );
    }

    #[test]
    fn bad_records_are_refused_with_their_position_and_the_rest_kept() {
        let mut bad = ok_record();
        bad.level = "loud".into();
        let req = AppendRequest {
            tenant: "acme".into(),
            producer_id: "agent-1".into(),
            sequence: 7,
            records: vec![ok_record(), bad.clone(), ok_record(), bad],
        };
        let n = normalize(req, NOW, &Limits::default()).unwrap();
        assert_eq!(n.tenant, "acme");
        assert_eq!((n.producer_id.as_str(), n.sequence), ("agent-1", 7));
        let kept: Vec<u32> = n.records.iter().map(|(i, _)| *i).collect();
        let refused: Vec<u32> = n.rejected.iter().map(|e| e.index).collect();
        assert_eq!((kept, refused), (vec![0, 2], vec![1, 3]));
    }
}
