//! The node's counters and histograms, rendered in the Prometheus text format at
//! `GET /metrics`. Lock-free: atomics only, so the hot paths pay one relaxed add.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing counter.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the latency histogram buckets, seconds.
const BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_S.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS_S.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, out: &mut String) {
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in BUCKETS_S.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// The classes of [`reject_reason`], the `reason` label of
/// `weir_ingest_records_rejected_total`.
pub const REJECT_REASONS: [&str; 8] = [
    "too_large",
    "timestamp",
    "level",
    "id",
    "label",
    "attribute",
    "field",
    "other",
];

/// The class of a record's rejection reason (as written by `weir_ingest`), for metrics.
/// The reasons are sentences meant for people; this reads the one thing each names
/// first (the limit's config key, or the field).
pub fn reject_reason(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("limits.max_record_bytes") {
        "too_large"
    } else if r.contains("timestamp") {
        "timestamp"
    } else if r.contains("level") {
        "level"
    } else if r.contains("trace_id") || r.contains("span_id") {
        "id"
    } else if ["service ", "namespace ", "pod ", "cluster "]
        .iter()
        .any(|f| r.starts_with(f))
    {
        "field"
    } else if r.contains("label") {
        "label"
    } else if r.contains("attribute") {
        "attribute"
    } else {
        "other"
    }
}

/// Every metric of the node.
#[derive(Default)]
pub struct Metrics {
    /// Records stored (duplicates not counted).
    pub records_accepted: Counter,
    /// Records refused by validation.
    pub records_rejected: Counter,
    /// Records refused by validation, by [`reject_reason`] class (in `REJECT_REASONS` order).
    pub records_rejected_by: [Counter; REJECT_REASONS.len()],
    /// Append requests refused whole, by reason.
    pub appends_refused_invalid: Counter,
    /// Append requests refused as retryable (queue or disk full, timeout).
    pub appends_refused_retryable: Counter,
    /// Time from receiving an append to answering it.
    pub append_latency: Histogram,
    /// Searches answered.
    pub searches: Counter,
    /// Time to answer a search.
    pub search_latency: Histogram,
    /// Records indexed.
    pub records_indexed: Counter,
}

impl Metrics {
    /// Counts one rejected record under its reason class.
    pub fn record_rejected(&self, reason: &str) {
        let class = reject_reason(reason);
        let i = REJECT_REASONS
            .iter()
            .position(|c| *c == class)
            .unwrap_or(REJECT_REASONS.len() - 1);
        self.records_rejected_by[i].inc_by(1);
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "weir_ingest_records_accepted_total",
            "records stored",
            self.records_accepted.get(),
        );
        let _ = writeln!(
            out,
            "# HELP weir_ingest_records_rejected_total records refused by validation, by reason\n# TYPE weir_ingest_records_rejected_total counter"
        );
        for (reason, c) in REJECT_REASONS.iter().zip(&self.records_rejected_by) {
            let _ = writeln!(
                out,
                "weir_ingest_records_rejected_total{{reason=\"{reason}\"}} {}",
                c.get()
            );
        }
        let _ = writeln!(out, "# TYPE weir_ingest_requests_refused_total counter");
        let _ = writeln!(
            out,
            "weir_ingest_requests_refused_total{{reason=\"invalid\"}} {}",
            self.appends_refused_invalid.get()
        );
        let _ = writeln!(
            out,
            "weir_ingest_requests_refused_total{{reason=\"retryable\"}} {}",
            self.appends_refused_retryable.get()
        );
        self.append_latency
            .render("weir_append_latency_seconds", &mut out);
        counter(
            &mut out,
            "weir_search_requests_total",
            "searches answered",
            self.searches.get(),
        );
        self.search_latency
            .render("weir_search_latency_seconds", &mut out);
        counter(
            &mut out,
            "weir_index_records_total",
            "records indexed",
            self.records_indexed.get(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_reasons_of_the_ingest_layer_are_classified() {
        use weir_proto::v1::Record;
        let limits = weir_ingest::Limits::default();
        let now = 1_800_000_000_000_000_000;
        let reason = |r: Record| weir_ingest::normalize_record(r, now, &limits).unwrap_err();
        let cases = [
            (
                Record {
                    body: vec![b'x'; limits.max_record_bytes + 1],
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
                    service: "s".repeat(limits.max_label_value_bytes + 1),
                    ..Default::default()
                },
                "field",
            ),
        ];
        for (record, want) in cases {
            let r = reason(record);
            assert_eq!(reject_reason(&r), want, "{r}");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        let mut out = String::new();
        h.render("x", &mut out);
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2"), "{out}");
        assert!(out.contains("x_count 2"), "{out}");
    }
}
