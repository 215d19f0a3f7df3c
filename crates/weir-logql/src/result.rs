//! Query results and their encoding as the `data` object of Loki's HTTP API.

use serde_json::{json, Map, Value};

use crate::units::format_value;
use crate::Labels;

/// One entry of a log query's result.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEntry {
    /// Timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: i64,
    /// The line, after the pipeline.
    pub line: String,
    /// Structured metadata (after `drop`/`keep`).
    pub metadata: Labels,
    /// Labels added by parsers and `label_format`, and `__error__`.
    pub parsed: Labels,
}

/// A log query's entries sharing one final label set.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    /// Every label merged (stream, structured metadata, parsed): what Loki shows
    /// without `categorize-labels`, and what entries are grouped by.
    pub labels: Labels,
    /// The stream labels alone.
    pub stream: Labels,
    /// Entries in the query's direction.
    pub entries: Vec<StreamEntry>,
}

/// One series of a range query's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The series' labels.
    pub labels: Labels,
    /// `(timestamp ns, value)` at the steps where the series has a value.
    pub points: Vec<(i64, f64)>,
}

/// One sample of an instant query's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's labels.
    pub labels: Labels,
    /// The evaluation time, nanoseconds.
    pub ts_ns: i64,
    /// The value.
    pub value: f64,
}

/// What a query returns.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryResult {
    /// A log query: streams sorted by labels.
    Streams(Vec<Stream>),
    /// A range metric query: series sorted by labels.
    Matrix(Vec<Series>),
    /// An instant metric query: sorted by labels (by value under `sort`, `sort_desc`,
    /// `topk`, `bottomk`).
    Vector(Vec<Sample>),
    /// An instant query of a scalar expression (`1 + 1`).
    Scalar {
        /// The evaluation time, nanoseconds.
        ts_ns: i64,
        /// The value.
        value: f64,
    },
}

fn labels_json(l: &Labels) -> Value {
    Value::Object(
        l.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// A timestamp as Prometheus writes it: seconds with millisecond precision, a number.
fn secs_json(ts_ns: i64) -> Value {
    let ms = ts_ns.div_euclid(1_000_000);
    if ms % 1000 == 0 {
        json!(ms / 1000)
    } else {
        json!(ms as f64 / 1000.0)
    }
}

fn point_json(ts_ns: i64, v: f64) -> Value {
    json!([secs_json(ts_ns), format_value(v)])
}

impl QueryResult {
    /// Loki's `data` object: `{"resultType": ..., "result": ...}`.
    ///
    /// With `categorize_labels` (Loki's `X-Loki-Response-Encoding-Flags:
    /// categorize-labels`), a stream's `"stream"` holds only its stream labels and every
    /// value carries a third element `{"structuredMetadata": {..}, "parsed": {..}}`,
    /// empty maps left out.
    pub fn to_loki_json(&self, categorize_labels: bool) -> Value {
        let (kind, result) = match self {
            QueryResult::Streams(streams) => (
                "streams",
                Value::Array(streams.iter().map(|s| stream_json(s, categorize_labels)).collect()),
            ),
            QueryResult::Matrix(series) => (
                "matrix",
                Value::Array(
                    series
                        .iter()
                        .map(|s| {
                            let values: Vec<Value> = s.points.iter().map(|(t, v)| point_json(*t, *v)).collect();
                            json!({"metric": labels_json(&s.labels), "values": values})
                        })
                        .collect(),
                ),
            ),
            QueryResult::Vector(samples) => (
                "vector",
                Value::Array(
                    samples
                        .iter()
                        .map(|s| json!({"metric": labels_json(&s.labels), "value": point_json(s.ts_ns, s.value)}))
                        .collect(),
                ),
            ),
            QueryResult::Scalar { ts_ns, value } => ("scalar", point_json(*ts_ns, *value)),
        };
        json!({"resultType": kind, "result": result})
    }
}

fn stream_json(s: &Stream, categorize: bool) -> Value {
    let values: Vec<Value> = s
        .entries
        .iter()
        .map(|e| {
            let mut v = vec![
                Value::String(e.ts_ns.to_string()),
                Value::String(e.line.clone()),
            ];
            if categorize {
                let mut extra = Map::new();
                if !e.metadata.is_empty() {
                    extra.insert("structuredMetadata".into(), labels_json(&e.metadata));
                }
                if !e.parsed.is_empty() {
                    extra.insert("parsed".into(), labels_json(&e.parsed));
                }
                v.push(Value::Object(extra));
            }
            Value::Array(v)
        })
        .collect();
    let labels = if categorize { &s.stream } else { &s.labels };
    json!({"stream": labels_json(labels), "values": values})
}
