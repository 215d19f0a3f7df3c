//! The node's counters and histograms, rendered in the Prometheus text format at
//! `GET /metrics`. Lock-free: atomics only, so the hot paths pay one relaxed add.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use weir_ingest::REJECTION_CODES;

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

/// A counter per pair of label values (tenant and limit, tenant and rule): as many
/// series as pairs that occurred, which the tenants and their rules or limits bound.
pub struct LabeledCounters {
    name: &'static str,
    help: &'static str,
    labels: (&'static str, &'static str),
    /// First label's value -> second label's value -> count: a lookup borrows the
    /// values, so counting an existing series allocates nothing.
    by: std::sync::Mutex<
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
    >,
}

impl LabeledCounters {
    /// Counters rendered as `name{a="..",b=".."}`.
    pub fn new(
        name: &'static str,
        help: &'static str,
        labels: (&'static str, &'static str),
    ) -> Self {
        LabeledCounters {
            name,
            help,
            labels,
            by: std::sync::Mutex::default(),
        }
    }

    /// Adds `n` to the series of `(a, b)`.
    pub fn inc(&self, a: &str, b: &str, n: u64) {
        if n == 0 {
            return;
        }
        let mut by = self.by.lock().unwrap_or_else(|p| p.into_inner());
        let inner = match by.get_mut(a) {
            Some(inner) => inner,
            None => by.entry(a.to_owned()).or_default(),
        };
        match inner.get_mut(b) {
            Some(v) => *v += n,
            None => {
                inner.insert(b.to_owned(), n);
            }
        }
    }

    /// The series of `(a, b)`.
    pub fn get(&self, a: &str, b: &str) -> u64 {
        let by = self.by.lock().unwrap_or_else(|p| p.into_inner());
        by.get(a)
            .and_then(|inner| inner.get(b))
            .copied()
            .unwrap_or(0)
    }

    /// Appends the samples in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let (name, (la, lb)) = (self.name, self.labels);
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} counter", self.help);
        let by = self.by.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (a, b, v) in by
            .iter()
            .flat_map(|(a, inner)| inner.iter().map(move |(b, v)| (a, b, v)))
        {
            let _ = writeln!(
                out,
                "{name}{{{la}=\"{}\",{lb}=\"{}\"}} {v}",
                escape_label(a),
                escape_label(b)
            );
        }
    }
}

/// A label value as the text format needs it (`\`, `"` and newlines escaped).
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
        self.render_samples(name, "", out);
    }

    /// The samples of this histogram with `labels` (`k="v",...`, or empty) on each; the
    /// caller writes the `# TYPE` line once for every label set of `name`.
    pub fn render_samples(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        let braces = |extra: &str| -> String {
            match (labels.is_empty(), extra.is_empty()) {
                (true, true) => String::new(),
                (true, false) => format!("{{{extra}}}"),
                (false, true) => format!("{{{labels}}}"),
                (false, false) => format!("{{{labels}{sep}{extra}}}"),
            }
        };
        let mut cumulative = 0;
        for (b, n) in BUCKETS_S.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{} {cumulative}",
                braces(&format!("le=\"{b}\""))
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{} {count}", braces("le=\"+Inf\""));
        let _ = writeln!(
            out,
            "{name}_sum{} {}",
            braces(""),
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{} {count}", braces(""));
    }
}

/// Every metric of the node.
#[derive(Default)]
pub struct Metrics {
    /// Records stored (duplicates not counted).
    pub records_accepted: Counter,
    /// Records refused by validation, by code (in `weir_ingest::REJECTION_CODES` order).
    pub records_rejected: [Counter; REJECTION_CODES.len()],
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
    /// Raft snapshots built, installed and fetched (a cluster only).
    pub snapshots: std::sync::Arc<crate::snapshot::SnapshotCounters>,
    /// Segment replication: publications, copies installed, bytes (a cluster only).
    pub segments: std::sync::Arc<crate::segments::SegmentCounters>,
    /// Records and requests per ingest protocol and tenant.
    pub ingest: crate::protocol::IngestMetrics,
    /// Syslog messages received and dropped.
    pub syslog: std::sync::Arc<crate::syslog::SyslogCounters>,
}

impl Metrics {
    /// Counts refused records by their code.
    pub fn count_rejected(&self, rejected: &[weir_proto::v1::RecordError]) {
        for r in rejected {
            // An unknown code cannot come from weir_ingest; it would be counted nowhere
            // rather than under a wrong code.
            if let Some(i) = REJECTION_CODES.iter().position(|c| *c == r.code) {
                self.records_rejected[i].inc_by(1);
            }
        }
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
        for (reason, c) in REJECTION_CODES.iter().zip(&self.records_rejected) {
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
        let snap = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        counter(
            &mut out,
            "weir_snapshots_built_total",
            "raft snapshot packages built for a follower behind the compacted log",
            snap(&self.snapshots.built),
        );
        counter(
            &mut out,
            "weir_snapshots_installed_total",
            "raft snapshots fetched from a leader and installed",
            snap(&self.snapshots.installed),
        );
        counter(
            &mut out,
            "weir_snapshot_fetches_failed_total",
            "snapshot fetches that failed (resumed at the leader's next offer)",
            snap(&self.snapshots.fetch_failed),
        );
        counter(
            &mut out,
            "weir_snapshot_bytes_fetched_total",
            "bytes of snapshot packages received",
            snap(&self.snapshots.bytes_fetched),
        );
        counter(
            &mut out,
            "weir_segment_publications_total",
            "index segment publications built for followers (as a shard leader)",
            snap(&self.segments.published),
        );
        counter(
            &mut out,
            "weir_segment_copies_installed_total",
            "copies of a shard leader's index segments installed (as a follower)",
            snap(&self.segments.installed),
        );
        counter(
            &mut out,
            "weir_segment_syncs_failed_total",
            "segment syncs that failed (retried at the next cluster.segment_sync_interval_ms)",
            snap(&self.segments.failed),
        );
        counter(
            &mut out,
            "weir_segment_bytes_fetched_total",
            "bytes of index segment files received from shard leaders",
            snap(&self.segments.transfer.bytes_fetched),
        );
        counter(
            &mut out,
            "weir_segment_bytes_linked_total",
            "bytes of index segment files a copy took from this replica's own index",
            snap(&self.segments.bytes_linked),
        );
        self.ingest.render(&mut out);
        self.syslog.render(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
