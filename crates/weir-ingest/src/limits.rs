//! Ingest limits.

/// What one append may contain. The server maps its `[limits]` configuration section onto
/// this (field names are the config keys: `limits.batch_bytes_max`, ...); every rejection
/// names the key it hit so an operator knows what to raise. [`Limits::default`] holds the
/// documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Encoded size of one request, bytes. Checked by the server before decoding (see
    /// [`crate::check_batch_bytes`]); over it the whole request is refused. Default 16 MiB.
    pub batch_bytes_max: usize,
    /// Records in one request; over it the whole request is refused. Default 100 000.
    pub batch_records_max: usize,
    /// Body, label and attribute bytes (names and values) of one record, after UTF-8
    /// repair. Default 256 KiB.
    pub record_bytes_max: usize,
    /// Stream labels on one record. Default 32.
    pub labels_per_record_max: usize,
    /// Attributes on one record. Default 128.
    pub attributes_per_record_max: usize,
    /// Bytes in a label or attribute name. Default 128.
    pub label_name_bytes_max: usize,
    /// Bytes in a label value, and in each of `service`, `namespace`, `pod`, `cluster`
    /// (they are stream identity too). Default 1024.
    pub label_value_bytes_max: usize,
    /// How far in the past a timestamp may be, seconds. Default 7 days.
    pub timestamp_age_secs_max: u64,
    /// How far in the future a timestamp may be, seconds. Default 10 minutes.
    pub timestamp_future_secs_max: u64,
    /// Bytes in a tenant name (charset `[A-Za-z0-9_.-]`). Default 128.
    pub tenant_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            batch_bytes_max: 16 * 1024 * 1024,
            batch_records_max: 100_000,
            record_bytes_max: 256 * 1024,
            labels_per_record_max: 32,
            attributes_per_record_max: 128,
            label_name_bytes_max: 128,
            label_value_bytes_max: 1024,
            timestamp_age_secs_max: 7 * 24 * 3600,
            timestamp_future_secs_max: 10 * 60,
            tenant_bytes_max: 128,
        }
    }
}

impl Limits {
    /// [`Limits::timestamp_age_secs_max`] in nanoseconds, saturating.
    pub fn timestamp_age_ns_max(&self) -> i64 {
        secs_to_ns(self.timestamp_age_secs_max)
    }

    /// [`Limits::timestamp_future_secs_max`] in nanoseconds, saturating.
    pub fn timestamp_future_ns_max(&self) -> i64 {
        secs_to_ns(self.timestamp_future_secs_max)
    }
}

fn secs_to_ns(secs: u64) -> i64 {
    i64::try_from(secs)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000_000)
}
