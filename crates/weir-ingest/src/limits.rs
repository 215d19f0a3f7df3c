//! Ingest limits.

/// Nanoseconds in one second.
const SECOND_NS: i64 = 1_000_000_000;

/// What one append may contain. The server maps its `[limits]` configuration section onto
/// this (field names are the config keys: `limits.max_batch_bytes`, ...); every rejection
/// names the key it hit so an operator knows what to raise. [`Limits::default`] holds the
/// documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Encoded size of one request, bytes. Checked by the server before decoding (see
    /// [`crate::check_batch_bytes`]); over it the whole request is refused. Default 16 MiB.
    pub max_batch_bytes: usize,
    /// Records in one request; over it the whole request is refused. Default 100 000.
    pub max_batch_records: usize,
    /// Body, label and attribute bytes (names and values) of one record, after UTF-8
    /// repair. Default 256 KiB.
    pub max_record_bytes: usize,
    /// Stream labels on one record. Default 32.
    pub max_labels_per_record: usize,
    /// Attributes on one record. Default 128.
    pub max_attributes_per_record: usize,
    /// Bytes in a label or attribute name. Default 128.
    pub max_label_name_bytes: usize,
    /// Bytes in a label value, and in each of `service`, `namespace`, `pod`, `cluster`
    /// (they are stream identity too). Default 1024.
    pub max_label_value_bytes: usize,
    /// How far in the past a timestamp may be, nanoseconds. Default 7 days.
    pub max_timestamp_age_ns: i64,
    /// How far in the future a timestamp may be, nanoseconds. Default 10 minutes.
    pub max_timestamp_future_ns: i64,
    /// Bytes in a tenant name (charset `[A-Za-z0-9_.-]`). Default 128.
    pub max_tenant_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_bytes: 16 * 1024 * 1024,
            max_batch_records: 100_000,
            max_record_bytes: 256 * 1024,
            max_labels_per_record: 32,
            max_attributes_per_record: 128,
            max_label_name_bytes: 128,
            max_label_value_bytes: 1024,
            max_timestamp_age_ns: 7 * 24 * 3600 * SECOND_NS,
            max_timestamp_future_ns: 10 * 60 * SECOND_NS,
            max_tenant_bytes: 128,
        }
    }
}
