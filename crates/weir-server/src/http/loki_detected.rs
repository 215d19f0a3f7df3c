//! Loki's field detection, which Grafana's Logs Drilldown app (its *Fields* tab) and the
//! Loki data source's query builder call: `GET`/`POST /loki/api/v1/detected_fields` and
//! `/loki/api/v1/detected_field/{name}/values`.
//!
//! Both read a sample of the query: the `line_limit` (default 100, as Loki) most recent
//! lines of the log query `query` in `[start, end)`, exactly as `query_range` would return
//! them (the query's filters and parsers applied; run by [`super::loki_query`]'s query
//! runner, so with its slots, deadline and tenant). Each sampled line holds, as in Loki:
//!
//! - its structured metadata (fields without a parser);
//! - the labels the query's own parsers added (`| json`, `label_format`, ...);
//! - what `| json` extracts from the line when it is a JSON object, else what `| logfmt`
//!   does (Loki tries json, then logfmt), named as those stages name them, so a filter
//!   built from a field works ([`weir_logql::pipeline::line_fields`]).
//!
//! Stream labels are not fields (a line's key that is also a stream label is the field
//! `<key>_extracted`, as the parsers name it); neither are `__error__` and its details.
//!
//! The answer is Loki's `DetectedFieldsResponse` as Loki writes it: the object itself, no
//! `status`/`data` around it, empty lists and a zero `limit` left out (see
//! [`DetectedFieldsResponse`]). Where Weir differs from Loki, on purpose:
//!
//! - `cardinality` is exact: the number of distinct values in the sample (Loki estimates
//!   it with a HyperLogLog sketch). The sample is bounded by `query.lines_max`, so the
//!   sets of values are too.
//! - `type` is one every value of the field in the sample has (`int` and `float` mixed
//!   are `float`, any other mix `string`); Loki takes the type of whichever value it read
//!   last, so a field that is mostly text could be called `int`.
//! - Fields and values are sorted (Loki's come in hash-map order), and values are
//!   answered as the lines write them (Loki rewrites sizes such as `1024KiB` in its own
//!   units).

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use weir_logql::pipeline::{line_fields, LineFormat, ERROR_DETAILS_LABEL, ERROR_LABEL};
use weir_logql::units::{parse_bytes, parse_float, parse_go_duration};
use weir_logql::{Direction, Expr, Labels, QueryParams, QueryResult, StreamEntry};

use super::loki_query::{
    bad, limits, parse_query, run, Answer, Ctx, LokiError, LokiRequest, Params,
};
use crate::state::NodeState;

/// Lines sampled when the request names no `line_limit` (Loki's `defaultQueryLimit`).
const LINE_LIMIT_DEFAULT: usize = 100;
/// Fields (or values) answered when the request names no `limit` (Loki's default).
const FIELD_LIMIT_DEFAULT: usize = 1000;

/// The answer of both endpoints, Loki's `logproto.DetectedFieldsResponse`: `fields` from
/// `detected_fields`, `values` from `detected_field/{name}/values`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DetectedFieldsResponse {
    /// The fields of the sample, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<DetectedField>,
    /// The field (or value) limit applied; left out (0) when the answer is empty, as
    /// Loki does ("otherwise all they get is the field limit").
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limit: u32,
    /// The distinct values of one field in the sample, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One field of the sample (Loki's `logproto.DetectedField`, without its sketch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectedField {
    /// The field's name, as a label filter or `| json`/`| logfmt` names it.
    pub label: String,
    /// What its values are.
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// The number of distinct values in the sample (exact).
    pub cardinality: u64,
    /// The parsers that found it (`json`, `logfmt`); `null` (not `[]`) for a field that
    /// is only structured metadata, as Loki writes it.
    pub parsers: Option<Vec<String>>,
    /// For a field found in JSON lines, the keys from the root to its value as the line
    /// writes them (`| json name="[\"a\"][\"b-c\"]"` reads it); left out otherwise.
    #[serde(rename = "jsonPath", default, skip_serializing_if = "Vec::is_empty")]
    pub json_path: Vec<String>,
}

/// Loki's field types, tried in this order on a value (its `determineType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// Go's `strconv.ParseInt` reads it (`200`, `-3`).
    Int,
    /// Go's `strconv.ParseFloat` reads it (`0.5`, `1e3`).
    Float,
    /// Go's `strconv.ParseBool` reads it (`true`, `F`).
    Boolean,
    /// Go's `time.ParseDuration` reads it (`150ms`, `1h2m`).
    Duration,
    /// go-humanize's `ParseBytes` reads it (`10MB`, `1.5 KiB`, `1,024`).
    Bytes,
    /// Anything else.
    String,
}

impl FieldType {
    /// The type of one value, as Loki's `determineType` decides it.
    pub fn of(value: &str) -> FieldType {
        if value.parse::<i64>().is_ok() {
            FieldType::Int
        } else if is_go_float(value) {
            FieldType::Float
        } else if matches!(
            value,
            "1" | "t"
                | "T"
                | "TRUE"
                | "true"
                | "True"
                | "0"
                | "f"
                | "F"
                | "FALSE"
                | "false"
                | "False"
        ) {
            FieldType::Boolean
        } else if parse_go_duration(value).is_ok() {
            FieldType::Duration
        } else if !value.starts_with(char::is_whitespace) && parse_bytes(value).is_ok() {
            // go-humanize reads the number from the first character: no leading space.
            FieldType::Bytes
        } else {
            FieldType::String
        }
    }

    /// The type two sets of values have together: the same, `float` for numbers, else
    /// `string`.
    fn and(self, other: FieldType) -> FieldType {
        use FieldType::{Float, Int};
        match (self, other) {
            (a, b) if a == b => a,
            (Int | Float, Int | Float) => Float,
            _ => FieldType::String,
        }
    }
}

/// Go's `ParseFloat` refuses what overflows (`1e400`), where Rust reads infinity; it
/// takes the spelled-out infinities and NaN as Rust does.
fn is_go_float(value: &str) -> bool {
    parse_float(value).is_some_and(|f| {
        f.is_finite() || {
            let word = value.trim_start_matches(['+', '-']).to_ascii_lowercase();
            matches!(word.as_str(), "inf" | "infinity" | "nan")
        }
    })
}

/// `GET /loki/api/v1/detected_fields?query&start&end&line_limit&limit`: the fields of the
/// sample, at most `limit` (or `field_limit`; default 1000) of them, those seen first in
/// the newest lines kept.
pub(super) async fn detected_fields(
    State(ctx): State<Ctx>,
    LokiRequest { p, tenant, .. }: LokiRequest,
) -> Answer {
    let sample = Sample::of(&p, &ctx.st)?;
    let limit = field_limit(&p)?;
    let fields = sample
        .read(&ctx, tenant, move |lines| fields_of(lines, limit))
        .await?;
    let limit = if fields.is_empty() { 0 } else { wire(limit) };
    Ok(axum::Json(DetectedFieldsResponse {
        fields,
        limit,
        values: Vec::new(),
    })
    .into_response())
}

/// `GET /loki/api/v1/detected_field/{name}/values?query&start&end&line_limit&limit`: the
/// distinct values of field `name` in the sample, at most `limit` (default 1000), those
/// of the newest lines kept.
pub(super) async fn detected_field_values(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    LokiRequest { p, tenant, .. }: LokiRequest,
) -> Answer {
    let sample = Sample::of(&p, &ctx.st)?;
    let limit = field_limit(&p)?;
    let values = sample
        .read(&ctx, tenant, move |lines| values_of(lines, &name, limit))
        .await?;
    let limit = if values.is_empty() { 0 } else { wire(limit) };
    Ok(axum::Json(DetectedFieldsResponse {
        fields: Vec::new(),
        limit,
        values,
    })
    .into_response())
}

/// A limit as Loki's answer carries it (32 bits); a larger one was applied as asked.
fn wire(limit: usize) -> u32 {
    u32::try_from(limit).unwrap_or(u32::MAX)
}

/// A positive integer parameter, `None` when absent.
///
/// # Errors
/// 400 for anything else, in Loki's words where it has some.
fn positive(p: &Params, name: &str) -> Result<Option<usize>, LokiError> {
    let Some(v) = p.get(name) else {
        return Ok(None);
    };
    match v.parse::<i64>() {
        Ok(n) if n > 0 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
        Ok(_) => Err(bad(format!("{name} must be a positive value"))),
        Err(_) => Err(bad(format!(
            "invalid {name} {v:?}: give a positive integer"
        ))),
    }
}

/// `limit`, else `field_limit` (the name older clients send), else 1000.
fn field_limit(p: &Params) -> Result<usize, LokiError> {
    Ok(match positive(p, "limit")? {
        Some(n) => n,
        None => positive(p, "field_limit")?.unwrap_or(FIELD_LIMIT_DEFAULT),
    })
}

/// The query a detection request samples, and how many of its lines.
struct Sample {
    expr: Expr,
    params: QueryParams,
}

/// One line of the sample.
struct Line<'a> {
    /// Its stream's labels (after the query's `drop`/`keep`/`label_format`).
    stream: &'a Labels,
    /// The line after the pipeline, its structured metadata and parsed labels.
    entry: &'a StreamEntry,
}

impl Sample {
    /// Reads `query` (a log query), `start`/`end` and `line_limit` as Loki does.
    ///
    /// # Errors
    /// 400 for a missing or bad query, a metric query, a bad range, or a `line_limit`
    /// above `query.lines_max` (Loki checks it against its per-query line limit too).
    fn of(p: &Params, st: &NodeState) -> Result<Sample, LokiError> {
        let expr = parse_query(p.get("query"))?;
        if matches!(expr, Expr::Metric(_)) {
            return Err(bad(
                "detected fields are read from a log query's lines; give a log query such as {app=\"shop\"} or {app=\"shop\"} |= \"error\", not a metric query",
            ));
        }
        let (start, end) = p.range(st)?;
        let line_limit = positive(p, "line_limit")?.unwrap_or(LINE_LIMIT_DEFAULT);
        let max = st.config.query.lines_max;
        if line_limit > max {
            return Err(bad(format!(
                "max entries limit per query exceeded, line_limit > max_entries_limit ({line_limit} > {max}, query.lines_max)"
            )));
        }
        Ok(Sample {
            expr,
            params: QueryParams {
                start_ns: start,
                end_ns: end,
                step_ns: 0,
                limit: line_limit,
                direction: Direction::Backward,
                instant: false,
                limits: limits(st),
            },
        })
    }

    /// Evaluates the query and hands its lines, newest first, to `read`; both on the
    /// blocking pool (parsing a thousand lines is not work for the async runtime).
    async fn read<T: Send + 'static>(
        self,
        ctx: &Ctx,
        tenant: String,
        read: impl FnOnce(&[Line<'_>]) -> T + Send + 'static,
    ) -> Result<T, LokiError> {
        let Sample { expr, params } = self;
        let (out, _, _) = run(ctx, tenant, move |src| {
            let result = weir_logql::evaluate(&expr, &params, src)?;
            let QueryResult::Streams(streams) = &result else {
                // A log query evaluates to streams; anything else is a bug in the engine.
                return Err(weir_logql::EngineError::Invalid(
                    "the log query did not evaluate to streams".into(),
                ));
            };
            let mut lines: Vec<Line<'_>> = streams
                .iter()
                .flat_map(|s| {
                    s.entries.iter().map(move |entry| Line {
                        stream: &s.stream,
                        entry,
                    })
                })
                .collect();
            // Stable: lines of one nanosecond keep the engine's stream order.
            lines.sort_by_key(|l| std::cmp::Reverse(l.entry.ts_ns));
            Ok(read(&lines))
        })
        .await?;
        Ok(out)
    }
}

/// A field one line holds.
struct Found {
    name: String,
    value: String,
    /// `None` for structured metadata.
    parser: Option<LineFormat>,
    json_path: Vec<String>,
}

/// Every field of one line: structured metadata, then the query's parsed labels and
/// what detection finds, the latter two attributed to the parser detection used (as
/// Loki attributes them).
fn found_in(line: &Line<'_>) -> Vec<Found> {
    let e = line.entry;
    let (format, detected) = line_fields(&e.line, line.stream);
    let metadata = e.metadata.iter().map(|(k, v)| Found {
        name: k.clone(),
        value: v.clone(),
        parser: None,
        json_path: Vec::new(),
    });
    let parsed = e
        .parsed
        .iter()
        .filter(|(k, _)| *k != ERROR_LABEL && *k != ERROR_DETAILS_LABEL)
        .map(|(k, v)| Found {
            name: k.clone(),
            value: v.clone(),
            parser: Some(format),
            json_path: Vec::new(),
        });
    let detected = detected.into_iter().map(|f| Found {
        name: f.name,
        value: f.value,
        parser: Some(format),
        json_path: f.json_path,
    });
    metadata.chain(parsed).chain(detected).collect()
}

/// What the sample says of one field.
#[derive(Default)]
struct FieldAcc {
    values: BTreeSet<String>,
    parsers: Vec<LineFormat>,
    json_path: Vec<String>,
}

/// The fields of `lines` (newest first): the first `limit` names seen, by name.
fn fields_of(lines: &[Line<'_>], limit: usize) -> Vec<DetectedField> {
    let mut fields: BTreeMap<String, FieldAcc> = BTreeMap::new();
    for line in lines {
        for f in found_in(line) {
            if fields.len() >= limit && !fields.contains_key(&f.name) {
                continue;
            }
            let acc = fields.entry(f.name).or_default();
            if let Some(p) = f.parser {
                if !acc.parsers.contains(&p) {
                    acc.parsers.push(p);
                }
            }
            if acc.json_path.is_empty() {
                acc.json_path = f.json_path;
            }
            acc.values.insert(f.value);
        }
    }
    fields
        .into_iter()
        .map(|(label, acc)| DetectedField {
            label,
            kind: acc
                .values
                .iter()
                .map(|v| FieldType::of(v))
                .reduce(FieldType::and)
                .unwrap_or(FieldType::String),
            cardinality: acc.values.len() as u64,
            parsers: (!acc.parsers.is_empty())
                .then(|| acc.parsers.iter().map(|p| p.as_str().to_owned()).collect()),
            json_path: acc.json_path,
        })
        .collect()
}

/// The distinct values of field `name` in `lines` (newest first): the first `limit`
/// seen, sorted.
fn values_of(lines: &[Line<'_>], name: &str, limit: usize) -> Vec<String> {
    let mut values = BTreeSet::new();
    for line in lines {
        for f in found_in(line) {
            if f.name == name && (values.len() < limit || values.contains(&f.value)) {
                values.insert(f.value);
            }
        }
    }
    values.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_tried_in_lokis_order() {
        let cases = [
            ("200", FieldType::Int),
            ("-3", FieldType::Int),
            ("1", FieldType::Int),
            ("0.5", FieldType::Float),
            ("1e3", FieldType::Float),
            ("+Inf", FieldType::Float),
            ("1e400", FieldType::String),
            ("true", FieldType::Boolean),
            ("F", FieldType::Boolean),
            ("yes", FieldType::String),
            ("150ms", FieldType::Duration),
            ("1h2m", FieldType::Duration),
            ("10MB", FieldType::Bytes),
            ("1.5 KiB", FieldType::Bytes),
            ("1,024", FieldType::Bytes),
            (" 10MB", FieldType::String),
            ("GET", FieldType::String),
            ("", FieldType::String),
        ];
        for (value, want) in cases {
            assert_eq!(FieldType::of(value), want, "{value:?}");
        }
    }

    #[test]
    fn mixed_values_fall_back_to_a_type_they_all_have() {
        use FieldType::*;
        assert_eq!(Int.and(Int), Int);
        assert_eq!(Int.and(Float), Float);
        assert_eq!(Float.and(Int), Float);
        assert_eq!(Int.and(Duration), String);
        assert_eq!(Boolean.and(String), String);
    }

    #[test]
    fn the_answer_leaves_out_what_loki_leaves_out() {
        let empty = serde_json::to_value(DetectedFieldsResponse::default()).unwrap();
        assert_eq!(empty, serde_json::json!({}));
        let one = DetectedFieldsResponse {
            fields: vec![DetectedField {
                label: "trace_id".into(),
                kind: FieldType::String,
                cardinality: 2,
                parsers: None,
                json_path: Vec::new(),
            }],
            limit: 1000,
            values: Vec::new(),
        };
        assert_eq!(
            serde_json::to_value(&one).unwrap(),
            serde_json::json!({"fields": [{"label": "trace_id", "type": "string",
                "cardinality": 2, "parsers": null}], "limit": 1000})
        );
    }
}
