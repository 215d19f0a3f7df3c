//! The Elasticsearch query DSL lowered to Weir's query: a `_search` body (JSON) becomes a
//! [`weir_index::Query`], a time range (from `range` on `@timestamp` in a filter
//! position), a sort, paging and the aggregation requests. Pure: no I/O; the handlers
//! in [`crate::http::es_search`] run what this module plans.
//!
//! Every query is finished by printing it in Weir's query language and parsing that
//! text back ([`SearchFilter::text`]): peers of a cluster receive the text and parse it
//! again, so the query run here and there is the same one.
//!
//! ```
//! use weir_server::es_query::{parse_search, TIME_FIELD};
//! let body = serde_json::json!({
//!     "size": 5,
//!     "query": {"bool": {"filter": [
//!         {"range": {TIME_FIELD: {"gte": 1_700_000_000_000u64, "lte": 1_700_000_060_000u64,
//!                                 "format": "epoch_millis"}}},
//!         {"query_string": {"query": "log.level:error AND message:timeout"}}
//!     ]}},
//!     "sort": [{TIME_FIELD: {"order": "desc"}}]
//! });
//! let plan = parse_search(&body, 0).unwrap();
//! assert_eq!(plan.filter.text, "level:error AND timeout");
//! assert_eq!(plan.filter.start_ns, 1_700_000_000_000_000_000);
//! assert_eq!(plan.filter.end_ns, 1_700_000_060_001_000_000);
//! ```

use serde_json::{Map, Value};
use weir_index::{Cursor, HitKey, Match, Pattern, Query, Sort};

/// The time field of every Weir document, as Elasticsearch clients name it.
pub const TIME_FIELD: &str = "@timestamp";

const MS: i64 = 1_000_000;
const SEC: i64 = 1_000 * MS;

/// The query types this module lowers, for error messages.
pub const QUERY_TYPES: &str = "bool, match_all, match_none, query_string, simple_query_string, \
    term, terms, match, match_phrase, match_phrase_prefix, prefix, wildcard (trailing *), \
    exists, range (on @timestamp), constant_score, dis_max";

/// The aggregation types this module plans, for error messages.
pub const AGG_TYPES: &str = "date_histogram, terms, min, max, avg, sum, cardinality, value_count";

/// A request Weir refuses, in Elasticsearch's error vocabulary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EsError {
    /// HTTP status.
    pub status: u16,
    /// Elasticsearch's error `type` (`parsing_exception`, `illegal_argument_exception`).
    pub kind: &'static str,
    /// What was wrong and what to send instead.
    pub reason: String,
}

impl EsError {
    /// A 400 `parsing_exception`: the request is not one Weir reads.
    pub fn parsing(reason: impl Into<String>) -> EsError {
        EsError {
            status: 400,
            kind: "parsing_exception",
            reason: reason.into(),
        }
    }

    /// A 400 `illegal_argument_exception`: a value Weir cannot honour.
    pub fn illegal(reason: impl Into<String>) -> EsError {
        EsError {
            status: 400,
            kind: "illegal_argument_exception",
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for EsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.reason)
    }
}

type Result<T> = std::result::Result<T, EsError>;

/// Where an Elasticsearch field name points in a Weir record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldRef {
    /// `@timestamp`: the record time.
    Timestamp,
    /// `message`: the full-text body.
    Body,
    /// A standard exact field of the record (`level`, `service`, `trace_id`, ...).
    Standard(&'static str),
    /// A stream label or an attribute, under this name.
    Other(String),
}

impl FieldRef {
    /// The name Weir's query language uses for this field (`None` for the body).
    pub fn query_name(&self) -> Option<&str> {
        match self {
            FieldRef::Timestamp | FieldRef::Body => None,
            FieldRef::Standard(n) => Some(n),
            FieldRef::Other(n) => Some(n),
        }
    }
}

/// Maps an Elasticsearch (ECS) field name onto Weir's record, as `_bulk` maps documents:
/// `message` is the body, `log.level` the level, `service.name` the service, and so on
/// (docs/elasticsearch-search.md). A `.keyword` suffix (what Kibana and Grafana add for
/// aggregations on text fields) is dropped: every Weir field but the body is a keyword.
pub fn weir_field(name: &str) -> FieldRef {
    let name = name.strip_suffix(".keyword").unwrap_or(name);
    match name {
        TIME_FIELD => FieldRef::Timestamp,
        "message" | "body" | "_all" | "*" => FieldRef::Body,
        "log.level" | "level" => FieldRef::Standard("level"),
        "service.name" | "service" => FieldRef::Standard("service"),
        "kubernetes.namespace" | "kubernetes.namespace_name" | "namespace" => {
            FieldRef::Standard("namespace")
        }
        "kubernetes.pod.name" | "kubernetes.pod_name" | "pod" => FieldRef::Standard("pod"),
        "orchestrator.cluster.name" | "cluster" => FieldRef::Standard("cluster"),
        "trace.id" | "trace_id" => FieldRef::Standard("trace_id"),
        "span.id" | "span_id" => FieldRef::Standard("span_id"),
        other => FieldRef::Other(other.to_owned()),
    }
}

/// The ECS name Weir answers with for a standard field (the inverse of [`weir_field`]).
pub fn ecs_name(standard: &str) -> &str {
    match standard {
        "level" => "log.level",
        "service" => "service.name",
        "namespace" => "kubernetes.namespace",
        "pod" => "kubernetes.pod.name",
        "cluster" => "orchestrator.cluster.name",
        "trace_id" => "trace.id",
        "span_id" => "span.id",
        other => other,
    }
}

// ---------------------------------------------------------------------------------------
// Query building helpers

/// A query no record matches (`NOT *`).
pub fn nothing() -> Query {
    Query::Not(Box::new(Query::All))
}

fn is_nothing(q: &Query) -> bool {
    matches!(q, Query::Not(inner) if **inner == Query::All)
}

/// Every child: flattens nested `And`s, drops `*`, and is `NOT *` when one child is.
pub fn and(children: Vec<Query>) -> Query {
    let mut out = Vec::new();
    for c in children {
        match c {
            Query::All => {}
            Query::And(inner) => out.extend(inner),
            c if is_nothing(&c) => return nothing(),
            c => out.push(c),
        }
    }
    match out.len() {
        0 => Query::All,
        1 => out.remove(0),
        _ => Query::And(out),
    }
}

/// At least one child: flattens nested `Or`s, drops `NOT *`, and is `*` when one child is.
pub fn or(children: Vec<Query>) -> Query {
    let mut out = Vec::new();
    for c in children {
        match c {
            Query::All => return Query::All,
            Query::Or(inner) => out.extend(inner),
            c if is_nothing(&c) => {}
            c => out.push(c),
        }
    }
    match out.len() {
        0 => nothing(),
        1 => out.remove(0),
        _ => Query::Or(out),
    }
}

fn not(q: Query) -> Query {
    match q {
        Query::Not(inner) => *inner,
        q => Query::Not(Box::new(q)),
    }
}

fn clause(field: Option<&str>, pattern: Pattern) -> Query {
    Query::Match(Match {
        field: field.map(str::to_owned),
        pattern,
    })
}

/// `field` holds exactly `value` (a keyword field; in the body, the phrase).
pub fn exact(field: &FieldRef, value: &str) -> Query {
    if value.is_empty() {
        return nothing();
    }
    clause(
        field.query_name(),
        Pattern::Phrase {
            text: value.to_owned(),
            slop: 0,
        },
    )
}

/// A query and the time range it holds, as run: `text` is the query printed in Weir's
/// language and `query` that text parsed back (what a peer will parse too).
#[derive(Clone, Debug, PartialEq)]
pub struct SearchFilter {
    /// The parsed query.
    pub query: Query,
    /// Its text.
    pub text: String,
    /// Start of the time range, inclusive, ns.
    pub start_ns: i64,
    /// End of the time range, exclusive, ns.
    pub end_ns: i64,
}

impl SearchFilter {
    /// `query` within `[start_ns, end_ns)`, finished: printed and parsed back.
    ///
    /// # Errors
    /// 400 when the printed query does not parse (a value Weir's language refuses, such as
    /// a trace id prefix), with the parser's message.
    pub fn new(query: Query, start_ns: i64, end_ns: i64) -> Result<SearchFilter> {
        let text = match &query {
            Query::All => String::new(),
            q => q.to_string(),
        };
        let query = weir_index::parse_query(&text).map_err(|e| {
            EsError::parsing(format!(
                "the query lowers to Weir's query {text:?}, which is refused: {e}"
            ))
        })?;
        // The canonical text (level names normalised) of what was parsed.
        let text = match &query {
            Query::All => String::new(),
            q => q.to_string(),
        };
        Ok(SearchFilter {
            query,
            text,
            start_ns,
            end_ns,
        })
    }

    /// This filter with `extra` ANDed to its query.
    ///
    /// # Errors
    /// As [`SearchFilter::new`].
    pub fn and(&self, extra: Query) -> Result<SearchFilter> {
        SearchFilter::new(
            and(vec![self.query.clone(), extra]),
            self.start_ns,
            self.end_ns,
        )
    }

    /// This filter over `[start_ns, end_ns)` intersected with its own range.
    pub fn within(&self, start_ns: i64, end_ns: i64) -> SearchFilter {
        SearchFilter {
            start_ns: self.start_ns.max(start_ns),
            end_ns: self.end_ns.min(end_ns),
            ..self.clone()
        }
    }

    /// Whether the time range holds no instant.
    pub fn is_empty(&self) -> bool {
        self.start_ns >= self.end_ns || is_nothing(&self.query)
    }
}

// ---------------------------------------------------------------------------------------
// Lenient readers: Grafana sends numbers as strings in places.

fn as_u64(v: &Value, what: &str) -> Result<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| EsError::parsing(format!("[{what}] must be a non-negative integer, not {v}")))
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| EsError::parsing(format!("[{what}] must be an object, not {v}")))
}

/// The single `{field: spec}` entry of a leaf query such as `term`, ignoring `boost`
/// and `_name` beside it.
fn single_field<'a>(v: &'a Value, kind: &str) -> Result<(&'a str, &'a Value)> {
    let o = object(v, kind)?;
    let mut fields = o
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "boost" | "_name"));
    match (fields.next(), fields.next()) {
        (Some((k, v)), None) => Ok((k, v)),
        _ => Err(EsError::parsing(format!(
            "[{kind}] query takes exactly one field, as {{\"{kind}\": {{\"field\": ...}}}}"
        ))),
    }
}

/// A leaf's value: `{"field": "v"}` or `{"field": {"<key>": "v", ...}}`.
fn leaf_value(spec: &Value, key: &str, kind: &str) -> Result<String> {
    let v = match spec {
        Value::Object(o) => o.get(key).ok_or_else(|| {
            EsError::parsing(format!("[{kind}] query needs [{key}] in its field object"))
        })?,
        v => v,
    };
    as_text(v).ok_or_else(|| {
        EsError::parsing(format!(
            "[{kind}] value must be a string, number or boolean, not {v}"
        ))
    })
}

// ---------------------------------------------------------------------------------------
// Time

/// The `format` of a range or bound: epoch numbers in milliseconds (the default for
/// numbers) or seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EpochUnit {
    Millis,
    Seconds,
}

fn epoch_unit(format: Option<&Value>) -> EpochUnit {
    match format.and_then(Value::as_str) {
        Some(f) if f.split("||").next() == Some("epoch_second") => EpochUnit::Seconds,
        _ => EpochUnit::Millis,
    }
}

/// A date of the DSL as ns, and the unit it was given in (rounding of `lte` and `gt`):
/// epoch numbers (ms, or s with `format: epoch_second`), RFC 3339, `yyyy-MM-dd`,
/// `yyyy-MM-ddTHH:mm:ss` (UTC), and date math on `now` (`now-15m`, `now/d`).
fn parse_date(v: &Value, unit: EpochUnit, now_ns: i64) -> Result<(i64, i64)> {
    let epoch = |n: f64| -> (i64, i64) {
        match unit {
            EpochUnit::Millis => ((n * MS as f64) as i64, MS),
            EpochUnit::Seconds => ((n * SEC as f64) as i64, SEC),
        }
    };
    match v {
        Value::Number(n) => n
            .as_f64()
            .map(epoch)
            .ok_or_else(|| EsError::parsing(format!("bad date {v}"))),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(n) = s.parse::<f64>() {
                return Ok(epoch(n));
            }
            if let Some(math) = s.strip_prefix("now") {
                return date_math(now_ns, math).map(|ns| (ns, 1));
            }
            parse_date_text(s).map(|ns| (ns, 1)).ok_or_else(|| {
                EsError::parsing(format!(
                    "failed to parse date field [{s}]: send epoch milliseconds (with \
                     \"format\": \"epoch_millis\"), RFC 3339, or now-15m"
                ))
            })
        }
        _ => Err(EsError::parsing(format!("bad date {v}"))),
    }
}

fn parse_date_text(s: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let ns = |t: time::OffsetDateTime| {
        t.unix_timestamp_nanos()
            .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    };
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Some(ns(t));
    }
    let with_z = format!("{s}Z");
    if let Ok(t) = time::OffsetDateTime::parse(&with_z, &Rfc3339) {
        return Some(ns(t));
    }
    // A date alone: midnight UTC.
    let midnight = format!("{s}T00:00:00Z");
    time::OffsetDateTime::parse(&midnight, &Rfc3339)
        .ok()
        .map(ns)
}

fn unit_ns(c: char) -> Option<i64> {
    Some(match c {
        's' => SEC,
        'm' => 60 * SEC,
        'h' | 'H' => 3_600 * SEC,
        'd' => 86_400 * SEC,
        'w' => 7 * 86_400 * SEC,
        _ => return None,
    })
}

/// `now` followed by `+N<unit>`, `-N<unit>` and `/<unit>` (rounded down), units of fixed
/// size (s, m, h, d, w).
fn date_math(now_ns: i64, mut rest: &str) -> Result<i64> {
    let original = rest;
    let bad = |why: &str| {
        EsError::parsing(format!(
            "date math now{original} is not supported: {why}; use s, m, h, d or w (now-15m, \
             now/d)"
        ))
    };
    let mut t = now_ns;
    while let Some(op) = rest.chars().next() {
        rest = &rest[1..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        rest = &rest[digits.len()..];
        let unit = rest.chars().next().ok_or_else(|| bad("no unit"))?;
        rest = &rest[unit.len_utf8()..];
        let step = unit_ns(unit).ok_or_else(|| bad("a unit of varying length"))?;
        match op {
            '/' if digits.is_empty() => t = t.div_euclid(step) * step,
            '+' | '-' => {
                let n: i64 = digits.parse().map_err(|_| bad("no number"))?;
                let d = n.saturating_mul(step);
                t = if op == '+' {
                    t.saturating_add(d)
                } else {
                    t.saturating_sub(d)
                };
            }
            _ => return Err(bad(&format!("unexpected {op:?}"))),
        }
    }
    Ok(t)
}

/// A `range` on `@timestamp` as `[start, end)` in ns.
fn time_range(spec: &Value, now_ns: i64) -> Result<(i64, i64)> {
    let o = object(spec, "range")?;
    let unit = epoch_unit(o.get("format"));
    let (mut start, mut end) = (i64::MIN, i64::MAX);
    let inclusive = |k: &str, default: bool| o.get(k).and_then(Value::as_bool).unwrap_or(default);
    for (k, v) in o {
        if v.is_null() {
            continue;
        }
        match k.as_str() {
            "gte" | "gt" | "from" => {
                let (t, step) = parse_date(v, unit, now_ns)?;
                let incl = k == "gte" || (k == "from" && inclusive("include_lower", true));
                start = start.max(if incl { t } else { t.saturating_add(step) });
            }
            "lte" | "lt" | "to" => {
                let (t, step) = parse_date(v, unit, now_ns)?;
                let incl = k == "lte" || (k == "to" && inclusive("include_upper", true));
                end = end.min(if incl { t.saturating_add(step) } else { t });
            }
            "format" | "time_zone" | "boost" | "relation" | "include_lower" | "include_upper"
            | "_name" => {}
            other => {
                return Err(EsError::parsing(format!(
                    "[range] query does not support [{other}]"
                )))
            }
        }
    }
    Ok((start, end))
}

// ---------------------------------------------------------------------------------------
// Queries

/// A query's lowering: the Weir query and, from filter positions, the time range.
struct Lowering {
    now_ns: i64,
    start_ns: i64,
    end_ns: i64,
}

/// Lowers a DSL query (the value of `"query"`) to a [`SearchFilter`]; `now_ns` is what
/// `now` means in date math.
///
/// # Errors
/// 400 naming an unknown query type, a malformed query, or a part Weir cannot honour (a
/// `range` on a field other than `@timestamp`, a time range under `should` or
/// `must_not`).
pub fn lower_query(q: Option<&Value>, now_ns: i64) -> Result<SearchFilter> {
    let mut l = Lowering {
        now_ns,
        start_ns: i64::MIN,
        end_ns: i64::MAX,
    };
    let query = match q {
        None | Some(Value::Null) => Query::All,
        Some(q) => l.lower(q, true)?,
    };
    SearchFilter::new(query, l.start_ns, l.end_ns)
}

impl Lowering {
    /// `filter_position`: every record the whole query matches also matches this part
    /// (it is ANDed all the way up), so a time range here narrows the search.
    fn lower(&mut self, q: &Value, filter_position: bool) -> Result<Query> {
        let o = object(q, "query")?;
        let mut entries = o.iter();
        let (kind, spec) = match (entries.next(), entries.next()) {
            (Some(e), None) => e,
            (None, _) => return Ok(Query::All),
            _ => {
                return Err(EsError::parsing(
                    "a query object holds one query type; combine several with bool",
                ))
            }
        };
        match kind.as_str() {
            "match_all" => Ok(Query::All),
            "match_none" => Ok(nothing()),
            "bool" => self.bool(spec, filter_position),
            "constant_score" => {
                let f = object(spec, kind)?
                    .get("filter")
                    .ok_or_else(|| EsError::parsing("[constant_score] needs [filter]"))?;
                self.lower(f, filter_position)
            }
            "dis_max" => {
                let qs = object(spec, kind)?
                    .get("queries")
                    .and_then(Value::as_array)
                    .ok_or_else(|| EsError::parsing("[dis_max] needs [queries], an array"))?;
                let parts = qs
                    .iter()
                    .map(|q| self.lower(q, false))
                    .collect::<Result<Vec<_>>>()?;
                Ok(or(parts))
            }
            "query_string" | "simple_query_string" => query_string(spec, kind),
            "term" => {
                let (f, v) = single_field(spec, kind)?;
                let field = leaf_field(f, kind)?;
                Ok(exact(&field, &leaf_value(v, "value", kind)?))
            }
            "terms" => terms_query(spec),
            "match" => match_query(spec),
            "match_phrase" => match_phrase(spec, false),
            "match_phrase_prefix" => match_phrase(spec, true),
            "prefix" => {
                let (f, v) = single_field(spec, kind)?;
                let field = leaf_field(f, kind)?;
                prefix(&field, &leaf_value(v, "value", kind)?)
            }
            "wildcard" => {
                let (f, v) = single_field(spec, kind)?;
                let field = leaf_field(f, kind)?;
                let value =
                    leaf_value(v, "value", kind).or_else(|_| leaf_value(v, "wildcard", kind))?;
                match value.strip_suffix('*') {
                    Some(p) if !p.contains(['*', '?']) => prefix(&field, p),
                    _ if !value.contains(['*', '?']) => Ok(exact(&field, &value)),
                    _ => Err(EsError::illegal(format!(
                        "[wildcard] {value:?}: Weir supports a single trailing * (a prefix)"
                    ))),
                }
            }
            "exists" => {
                let f = object(spec, kind)?
                    .get("field")
                    .and_then(Value::as_str)
                    .ok_or_else(|| EsError::parsing("[exists] needs [field], a string"))?;
                exists(&weir_field(f))
            }
            "range" => {
                let (f, v) = single_field(spec, kind)?;
                if weir_field(f) != FieldRef::Timestamp {
                    return Err(EsError::illegal(format!(
                        "[range] on [{f}] is not supported: Weir stores attributes as text; \
                         ranges apply to {TIME_FIELD} only"
                    )));
                }
                if !filter_position {
                    return Err(EsError::illegal(format!(
                        "[range] on {TIME_FIELD} is supported where every hit must match it \
                         (query, bool.must, bool.filter), not under should or must_not"
                    )));
                }
                let (s, e) = time_range(v, self.now_ns)?;
                self.start_ns = self.start_ns.max(s);
                self.end_ns = self.end_ns.min(e);
                Ok(Query::All)
            }
            other => Err(EsError::parsing(format!(
                "unknown query [{other}]: Weir supports {QUERY_TYPES}"
            ))),
        }
    }

    fn clauses(&mut self, v: Option<&Value>, filter_position: bool) -> Result<Vec<Query>> {
        match v {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a.iter().map(|q| self.lower(q, filter_position)).collect(),
            Some(q) => Ok(vec![self.lower(q, filter_position)?]),
        }
    }

    /// `bool`: `must` and `filter` all match, `must_not` none; `should` needs at least
    /// `minimum_should_match` (default 1 alone, 0 beside `must`/`filter`).
    fn bool(&mut self, spec: &Value, filter_position: bool) -> Result<Query> {
        let o = object(spec, "bool")?;
        for k in o.keys() {
            if !matches!(
                k.as_str(),
                "must"
                    | "filter"
                    | "should"
                    | "must_not"
                    | "minimum_should_match"
                    | "boost"
                    | "_name"
                    | "adjust_pure_negative"
            ) {
                return Err(EsError::parsing(format!(
                    "[bool] query does not support [{k}]"
                )));
            }
        }
        let mut all = self.clauses(o.get("must"), filter_position)?;
        all.extend(self.clauses(o.get("filter"), filter_position)?);
        let required_before_should = !all.is_empty();
        let should = self.clauses(o.get("should"), false)?;
        for q in self.clauses(o.get("must_not"), false)? {
            all.push(not(q));
        }
        let min = match o.get("minimum_should_match") {
            None | Some(Value::Null) => usize::from(!required_before_should),
            Some(v) => minimum_should_match(v, should.len())?,
        };
        if !should.is_empty() && min > 0 {
            all.push(at_least(should, min)?);
        }
        Ok(and(all))
    }
}

/// `minimum_should_match` as a count of `n` clauses: `2`, `-1`, `"75%"`, `"-25%"`.
fn minimum_should_match(v: &Value, n: usize) -> Result<usize> {
    let bad = || {
        EsError::parsing(format!(
            "[minimum_should_match] {v} is not supported: give N, -N, N% or -N%"
        ))
    };
    let text = as_text(v).ok_or_else(bad)?;
    let text = text.trim();
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text),
    };
    let count = match body.strip_suffix('%') {
        Some(p) => {
            let p: usize = p.trim().parse().map_err(|_| bad())?;
            n * p.min(100) / 100
        }
        None => body.parse().map_err(|_| bad())?,
    };
    Ok(if neg {
        n.saturating_sub(count)
    } else {
        count.min(n)
    })
}

/// At least `min` of `qs` match.
fn at_least(qs: Vec<Query>, min: usize) -> Result<Query> {
    if min <= 1 {
        return Ok(or(qs));
    }
    if min >= qs.len() {
        return Ok(and(qs));
    }
    // Every choice of `min` clauses: bounded, since the count grows fast.
    let mut combos = Vec::new();
    let n = qs.len();
    let mut idx: Vec<usize> = (0..min).collect();
    loop {
        if combos.len() >= 64 {
            return Err(EsError::illegal(format!(
                "[minimum_should_match] {min} of {n} should clauses makes too many \
                 combinations (more than 64); use 1 or all of them"
            )));
        }
        combos.push(and(idx.iter().map(|&i| qs[i].clone()).collect()));
        let Some(i) = (0..min).rev().find(|&i| idx[i] < n - min + i) else {
            break;
        };
        idx[i] += 1;
        for j in i + 1..min {
            idx[j] = idx[j - 1] + 1;
        }
    }
    Ok(or(combos))
}

/// A field of a leaf query; `@timestamp` is only for `range`.
fn leaf_field(name: &str, kind: &str) -> Result<FieldRef> {
    match weir_field(name) {
        FieldRef::Timestamp => Err(EsError::illegal(format!(
            "[{kind}] on {TIME_FIELD} is not supported; use a range query"
        ))),
        f => Ok(f),
    }
}

fn prefix(field: &FieldRef, p: &str) -> Result<Query> {
    if p.is_empty() {
        return exists(field);
    }
    Ok(clause(field.query_name(), Pattern::Prefix(p.to_owned())))
}

/// Records that have a value in `field`. Weir indexes values, not presence, so a
/// non-standard field is "a value starting with a printable ASCII character" (a
/// value starting with another character is not found; docs say so).
fn exists(field: &FieldRef) -> Result<Query> {
    match field {
        FieldRef::Timestamp | FieldRef::Body | FieldRef::Standard("level") => Ok(Query::All),
        FieldRef::Standard(id @ ("trace_id" | "span_id")) => Err(EsError::illegal(format!(
            "[exists] on {} is not supported: ids are looked up whole; search the id",
            ecs_name(id)
        ))),
        f => Ok(or((' '..='~')
            .map(|c| clause(f.query_name(), Pattern::Prefix(c.to_string())))
            .collect())),
    }
}

fn terms_query(spec: &Value) -> Result<Query> {
    let (f, v) = single_field(spec, "terms")?;
    let field = leaf_field(f, "terms")?;
    let values = v.as_array().ok_or_else(|| {
        EsError::parsing("[terms] takes an array of values (a terms lookup is not supported)")
    })?;
    let parts = values
        .iter()
        .map(|v| {
            as_text(v)
                .map(|t| exact(&field, &t))
                .ok_or_else(|| EsError::parsing(format!("[terms] value {v} is not a scalar")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(or(parts))
}

/// `match`: on the body, the words of the text (any of them, or all with
/// `operator: and`); on a keyword field, the exact value.
fn match_query(spec: &Value) -> Result<Query> {
    let (f, v) = single_field(spec, "match")?;
    let field = leaf_field(f, "match")?;
    let text = leaf_value(v, "query", "match")?;
    if field != FieldRef::Body {
        return Ok(exact(&field, &text));
    }
    let all = v
        .get("operator")
        .and_then(Value::as_str)
        .is_some_and(|o| o.eq_ignore_ascii_case("and"));
    let words: Vec<Query> = text
        .split_whitespace()
        .map(|w| clause(None, Pattern::Word(w.to_owned())))
        .collect();
    if words.is_empty() {
        return Ok(nothing());
    }
    Ok(if all { and(words) } else { or(words) })
}

fn match_phrase(spec: &Value, last_is_prefix: bool) -> Result<Query> {
    let kind = if last_is_prefix {
        "match_phrase_prefix"
    } else {
        "match_phrase"
    };
    let (f, v) = single_field(spec, kind)?;
    let field = leaf_field(f, kind)?;
    let text = leaf_value(v, "query", kind)?;
    if text.trim().is_empty() {
        return Ok(nothing());
    }
    if last_is_prefix {
        return Ok(clause(field.query_name(), Pattern::PhrasePrefix(text)));
    }
    let slop = match v.get("slop") {
        Some(s) if field == FieldRef::Body => as_u64(s, "slop")? as u32,
        _ => 0,
    };
    Ok(clause(field.query_name(), Pattern::Phrase { text, slop }))
}

/// `query_string`: Lucene syntax, parsed by Weir's parser (the same grammar for terms,
/// phrases, prefixes and operators), its field names mapped onto Weir's.
fn query_string(spec: &Value, kind: &str) -> Result<Query> {
    let o = object(spec, kind)?;
    let text = o
        .get("query")
        .and_then(as_text_ref)
        .ok_or_else(|| EsError::parsing(format!("[{kind}] needs [query], a string")))?;
    let default_field = o
        .get("default_field")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            o.get("fields")
                .and_then(Value::as_array)
                .filter(|f| f.len() == 1)
                .and_then(|f| f[0].as_str())
                .map(str::to_owned)
        })
        .map(|f| weir_field(&f))
        .unwrap_or(FieldRef::Body);
    let parsed = weir_index::parse_query(text)
        .map_err(|e| EsError::parsing(format!("[{kind}] failed to parse query [{text}]: {e}")))?;
    rename_fields(parsed, &default_field)
}

fn as_text_ref(v: &Value) -> Option<&str> {
    v.as_str()
}

/// Maps the field names of a parsed Lucene query onto Weir's; `_exists_:f` is
/// [`exists`].
fn rename_fields(q: Query, default_field: &FieldRef) -> Result<Query> {
    Ok(match q {
        Query::All => Query::All,
        Query::And(c) => and(c
            .into_iter()
            .map(|q| rename_fields(q, default_field))
            .collect::<Result<_>>()?),
        Query::Or(c) => or(c
            .into_iter()
            .map(|q| rename_fields(q, default_field))
            .collect::<Result<_>>()?),
        Query::Not(inner) => not(rename_fields(*inner, default_field)?),
        Query::Match(m) => {
            if let Pattern::Word(w) = &m.pattern {
                if m.field.is_some() && w.starts_with(['[', '{']) {
                    return Err(EsError::illegal(format!(
                        "range syntax in query_string ({}:{w} ...) is not supported; use a \
                         range query on {TIME_FIELD}",
                        m.field.as_deref().unwrap_or_default()
                    )));
                }
            }
            let field = match m.field.as_deref() {
                None => default_field.clone(),
                Some("_exists_") => {
                    return match &m.pattern {
                        Pattern::Word(f) | Pattern::Phrase { text: f, .. } => {
                            exists(&weir_field(f))
                        }
                        _ => Err(EsError::illegal("_exists_ takes a field name")),
                    };
                }
                Some(f) => weir_field(f),
            };
            if field == FieldRef::Timestamp {
                return Err(EsError::illegal(format!(
                    "{TIME_FIELD} cannot be searched in query_string; use a range query"
                )));
            }
            let pattern = match (&field, m.pattern) {
                // Only the body has positions: a slop elsewhere means nothing.
                (FieldRef::Standard(_) | FieldRef::Other(_), Pattern::Phrase { text, .. }) => {
                    Pattern::Phrase { text, slop: 0 }
                }
                (_, p) => p,
            };
            clause(field.query_name(), pattern)
        }
    })
}

// ---------------------------------------------------------------------------------------
// The whole search body

/// One planned `_search`.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchPlan {
    /// What to match, within which time.
    pub filter: SearchFilter,
    /// Hits to return (`size`, default 10).
    pub size: usize,
    /// Hits to skip (`from`).
    pub from: usize,
    /// Hit order.
    pub sort: Sort,
    /// Where to continue (`search_after`).
    pub after: Option<Cursor>,
    /// The aggregations, in request order.
    pub aggs: Vec<NamedAgg>,
    /// How exactly `hits.total` is counted (`track_total_hits`).
    pub track_total: TrackTotal,
}

/// `track_total_hits`: how far `hits.total` counts. Elasticsearch counts exactly up to
/// 10,000 by default and then answers `{"value": 10000, "relation": "gte"}`, which lets a
/// search sorted by time stop once it has its page and that many matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackTotal {
    /// `true`: every match counted.
    Exact,
    /// A number (default 10,000): counted exactly below it, else at least it.
    UpTo(u64),
    /// `false`: no `hits.total`.
    Off,
}

/// Elasticsearch's default `track_total_hits`.
pub const TRACK_TOTAL_DEFAULT: u64 = 10_000;

fn track_total(v: Option<&Value>) -> Result<TrackTotal> {
    match v {
        None | Some(Value::Null) => Ok(TrackTotal::UpTo(TRACK_TOTAL_DEFAULT)),
        Some(Value::Bool(true)) => Ok(TrackTotal::Exact),
        Some(Value::Bool(false)) => Ok(TrackTotal::Off),
        // -1 is Elasticsearch's own spelling of "exact" in some versions' clients.
        Some(Value::Number(n)) if n.as_i64() == Some(-1) => Ok(TrackTotal::Exact),
        Some(v) => Ok(TrackTotal::UpTo(as_u64(v, "track_total_hits")?)),
    }
}

/// The body keys Weir accepts without using them: refusing them breaks Grafana and
/// Kibana (COMPAT.md).
const IGNORED_KEYS: [&str; 16] = [
    "highlight",
    "script_fields",
    "docvalue_fields",
    "stored_fields",
    "version",
    "seq_no_primary_term",
    "_source",
    "fields",
    "track_scores",
    "timeout",
    "terminate_after",
    "explain",
    "profile",
    "min_score",
    "runtime_mappings",
    "indices_boost",
];

/// Plans a `_search` body; `now_ns` is `now` for date math.
///
/// # Errors
/// 400 for an unknown key, query type or aggregation type (named), a sort on a field
/// other than `@timestamp`, `_score` or `_doc`, a malformed value.
pub fn parse_search(body: &Value, now_ns: i64) -> Result<SearchPlan> {
    let empty = Map::new();
    let o = match body {
        Value::Null => &empty,
        v => object(v, "search body")?,
    };
    for k in o.keys() {
        if !matches!(
            k.as_str(),
            "query"
                | "size"
                | "from"
                | "sort"
                | "search_after"
                | "aggs"
                | "aggregations"
                | "post_filter"
                | "track_total_hits"
        ) && !IGNORED_KEYS.contains(&k.as_str())
        {
            return Err(EsError::parsing(format!(
                "unknown key [{k}] in the search body"
            )));
        }
    }
    let mut filter = lower_query(o.get("query"), now_ns)?;
    if let Some(post) = o.get("post_filter") {
        let p = lower_query(Some(post), now_ns)?;
        filter = filter.and(p.query)?.within(p.start_ns, p.end_ns);
    }
    let size = match o.get("size") {
        None | Some(Value::Null) => 10,
        Some(v) => as_u64(v, "size")? as usize,
    };
    let from = match o.get("from") {
        None | Some(Value::Null) => 0,
        Some(v) => as_u64(v, "from")? as usize,
    };
    let sort = parse_sort(o.get("sort"))?;
    let after = match o.get("search_after") {
        None | Some(Value::Null) => None,
        Some(v) => {
            if from > 0 {
                return Err(EsError::illegal(
                    "[from] parameter must be set to 0 when [search_after] is used",
                ));
            }
            Some(search_after(v, sort)?)
        }
    };
    let aggs = match o.get("aggs").or_else(|| o.get("aggregations")) {
        None | Some(Value::Null) => Vec::new(),
        Some(a) => parse_aggs(a)?,
    };
    Ok(SearchPlan {
        filter,
        size,
        from,
        sort,
        after,
        aggs,
        track_total: track_total(o.get("track_total_hits"))?,
    })
}

/// The order of hits: `@timestamp` asc/desc (any `unmapped_type`, `_doc` as a tiebreak),
/// `_score` (the default, as in Elasticsearch), `_doc` alone (oldest first).
///
/// # Errors
/// 400 naming a sort field Weir does not sort on.
pub fn parse_sort(v: Option<&Value>) -> Result<Sort> {
    let items: Vec<&Value> = match v {
        None | Some(Value::Null) => return Ok(Sort::Score),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v) => vec![v],
    };
    let mut first_doc = None;
    for item in items {
        let (field, order) = match item {
            Value::String(s) => match s.rsplit_once(':') {
                Some((f, o)) if matches!(o, "asc" | "desc") => (f.to_owned(), Some(o.to_owned())),
                _ => (s.clone(), None),
            },
            Value::Object(o) if o.len() == 1 => {
                let (f, spec) = o.iter().next().expect("one entry, checked");
                let order = match spec {
                    Value::String(s) => Some(s.clone()),
                    Value::Object(so) => so.get("order").and_then(Value::as_str).map(str::to_owned),
                    _ => None,
                };
                (f.clone(), order)
            }
            other => return Err(EsError::parsing(format!("bad sort {other}"))),
        };
        let desc = |default_desc: bool| -> Result<bool> {
            match order.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None => Ok(default_desc),
                Some("desc") => Ok(true),
                Some("asc") => Ok(false),
                Some(o) => Err(EsError::parsing(format!(
                    "sort order must be asc or desc, not {o}"
                ))),
            }
        };
        match field.as_str() {
            TIME_FIELD => {
                return Ok(if desc(false)? {
                    Sort::TimeDesc
                } else {
                    Sort::TimeAsc
                })
            }
            "_score" => return Ok(Sort::Score),
            "_doc" => {
                if first_doc.is_none() {
                    first_doc = Some(if desc(false)? {
                        Sort::TimeDesc
                    } else {
                        Sort::TimeAsc
                    });
                }
            }
            other => {
                return Err(EsError::illegal(format!(
                    "sorting on [{other}] is not supported: sort on {TIME_FIELD}, _score or _doc"
                )))
            }
        }
    }
    Ok(first_doc.unwrap_or(Sort::Score))
}

/// The sort values Weir gives a hit (and takes back in `search_after`): the time in
/// epoch ms, and a tiebreak naming the hit exactly.
pub fn sort_values(sort: Sort, key: &HitKey) -> Vec<Value> {
    let tiebreak = Cursor::after(sort, *key).encode();
    vec![
        Value::from(key.timestamp_ns.div_euclid(MS)),
        Value::from(tiebreak),
    ]
}

/// `search_after`: the sort values of the last hit seen. With Weir's tiebreak the page
/// continues right after that hit; with a time alone (a client's own value), after
/// every record of that millisecond.
fn search_after(v: &Value, sort: Sort) -> Result<Cursor> {
    let a = v
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| EsError::parsing("[search_after] must be a non-empty array"))?;
    if sort == Sort::Score {
        return Err(EsError::illegal(format!(
            "[search_after] needs a sort on {TIME_FIELD}"
        )));
    }
    if let Some(c) = a.get(1).and_then(Value::as_str) {
        if let Ok(c) = Cursor::decode(c) {
            if c.sort() == sort {
                return Ok(c);
            }
        }
    }
    let ms: i64 = match &a[0] {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        EsError::parsing(format!("[search_after] {} is not a time in epoch ms", a[0]))
    })?;
    let ns = ms.saturating_mul(MS);
    let key = match sort {
        Sort::TimeDesc => HitKey {
            timestamp_ns: ns,
            shard: 0,
            log_index: 0,
            offset: 0,
        },
        _ => HitKey {
            timestamp_ns: ns.saturating_add(MS - 1),
            shard: u32::MAX,
            log_index: u64::MAX,
            offset: u32::MAX,
        },
    };
    Ok(Cursor::after(sort, key))
}

// ---------------------------------------------------------------------------------------
// Aggregations

/// One aggregation request, by its name in the answer.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedAgg {
    /// The key the client gave it.
    pub name: String,
    /// What it computes.
    pub agg: Agg,
    /// Aggregations inside each of its buckets.
    pub subs: Vec<NamedAgg>,
}

/// What an aggregation computes.
#[derive(Clone, Debug, PartialEq)]
pub enum Agg {
    /// Counts per time bucket.
    DateHistogram(DateHistogram),
    /// Counts per value of a field, the top ones.
    Terms(Terms),
    /// One number over the matching records' values of a field.
    Metric(Metric, FieldRef),
}

/// A `date_histogram`.
#[derive(Clone, Debug, PartialEq)]
pub struct DateHistogram {
    /// Bucket width, ns.
    pub interval_ns: i64,
    /// Buckets start at multiples of the width plus this, ns.
    pub offset_ns: i64,
    /// Buckets with fewer records are left out; 0 keeps empty buckets.
    pub min_doc_count: u64,
    /// With `min_doc_count: 0`, buckets reach at least over these times (ns, inclusive).
    pub extended_bounds: Option<(i64, i64)>,
    /// No bucket outside these times (ns, inclusive).
    pub hard_bounds: Option<(i64, i64)>,
    /// `key_as_string` is the epoch ms (`format: epoch_millis`), else ISO 8601.
    pub epoch_millis: bool,
}

impl DateHistogram {
    /// The start of the bucket holding `t`.
    pub fn bucket_of(&self, t: i64) -> i64 {
        (t - self.offset_ns).div_euclid(self.interval_ns) * self.interval_ns + self.offset_ns
    }
}

/// A `terms` aggregation.
#[derive(Clone, Debug, PartialEq)]
pub struct Terms {
    /// The field.
    pub field: FieldRef,
    /// How many buckets.
    pub size: usize,
    /// Bucket order.
    pub order: TermsOrder,
    /// Values with fewer records are left out.
    pub min_doc_count: u64,
}

/// The order of `terms` buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TermsOrder {
    /// By record count (ties by value ascending).
    Count {
        /// Ascending.
        asc: bool,
    },
    /// By value.
    Key {
        /// Ascending.
        asc: bool,
    },
}

/// A single-value metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Smallest number.
    Min,
    /// Largest number.
    Max,
    /// Mean of the numbers.
    Avg,
    /// Sum of the numbers.
    Sum,
    /// Distinct values.
    Cardinality,
    /// Values (records holding the field).
    ValueCount,
}

/// Plans the `aggs` object of a search body (or of a bucket aggregation).
///
/// # Errors
/// 400 naming an unknown aggregation type, or a parameter Weir cannot honour.
pub fn parse_aggs(v: &Value) -> Result<Vec<NamedAgg>> {
    let mut out = Vec::new();
    for (name, spec) in object(v, "aggs")? {
        let o = object(spec, name)?;
        let mut agg = None;
        let mut subs = Vec::new();
        for (k, v) in o {
            match k.as_str() {
                "aggs" | "aggregations" => subs = parse_aggs(v)?,
                "meta" => {}
                kind => {
                    if agg.is_some() {
                        return Err(EsError::parsing(format!(
                            "aggregation [{name}] has more than one type"
                        )));
                    }
                    agg = Some(parse_agg(kind, v, name)?);
                }
            }
        }
        let agg =
            agg.ok_or_else(|| EsError::parsing(format!("aggregation [{name}] has no type")))?;
        if matches!(agg, Agg::Metric(..)) && !subs.is_empty() {
            return Err(EsError::parsing(format!(
                "aggregation [{name}] is a metric and cannot hold sub-aggregations"
            )));
        }
        out.push(NamedAgg {
            name: name.clone(),
            agg,
            subs,
        });
    }
    Ok(out)
}

fn agg_field(o: &Map<String, Value>, kind: &str, name: &str) -> Result<FieldRef> {
    if o.contains_key("script") {
        return Err(EsError::illegal(format!(
            "[{kind}] aggregation [{name}]: scripts are not supported; name a field"
        )));
    }
    o.get("field")
        .and_then(Value::as_str)
        .map(weir_field)
        .ok_or_else(|| EsError::parsing(format!("[{kind}] aggregation [{name}] needs [field]")))
}

fn parse_agg(kind: &str, v: &Value, name: &str) -> Result<Agg> {
    let o = object(v, kind)?;
    let metric = match kind {
        "date_histogram" => return date_histogram(o, name).map(Agg::DateHistogram),
        "terms" => return terms_agg(o, name).map(Agg::Terms),
        "min" => Metric::Min,
        "max" => Metric::Max,
        "avg" => Metric::Avg,
        "sum" => Metric::Sum,
        "cardinality" => Metric::Cardinality,
        "value_count" => Metric::ValueCount,
        other => {
            return Err(EsError::parsing(format!(
                "unknown aggregation type [{other}] in [{name}]: Weir supports {AGG_TYPES}"
            )))
        }
    };
    let field = agg_field(o, kind, name)?;
    if field == FieldRef::Body && !matches!(metric, Metric::ValueCount | Metric::Cardinality) {
        return Err(EsError::illegal(format!(
            "[{kind}] over message is not supported: the body is text"
        )));
    }
    Ok(Agg::Metric(metric, field))
}

/// An interval of fixed size: `30s`, `5m`, `1h`, `1d`, `250ms`, and the calendar units of
/// fixed size (`minute`, `1h`, `day`, `week`).
///
/// # Errors
/// 400 for months, quarters, years (varying size) and anything not an interval.
pub fn parse_interval(s: &str) -> Result<i64> {
    let s = s.trim();
    let named = match s {
        "second" => Some(SEC),
        "minute" => Some(60 * SEC),
        "hour" => Some(3_600 * SEC),
        "day" => Some(86_400 * SEC),
        "week" => Some(7 * 86_400 * SEC),
        _ => None,
    };
    if let Some(ns) = named {
        return Ok(ns);
    }
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    let unit = &s[digits.len()..];
    let n: i64 = if digits.is_empty() {
        1
    } else {
        digits.parse().unwrap_or(0)
    };
    let step = match unit {
        "ms" => MS,
        "s" => SEC,
        "m" => 60 * SEC,
        "h" => 3_600 * SEC,
        "d" => 86_400 * SEC,
        "w" => 7 * 86_400 * SEC,
        "M" | "q" | "y" | "month" | "quarter" | "year" => {
            return Err(EsError::illegal(format!(
                "interval [{s}] is not supported: months, quarters and years vary in length; \
                 use a fixed interval (30s, 5m, 1h, 1d, 1w)"
            )))
        }
        _ => 0,
    };
    let ns = n.saturating_mul(step);
    if ns <= 0 || (!digits.is_empty() && digits.len() > 12) {
        return Err(EsError::parsing(format!(
            "interval [{s}] is not an interval: use 30s, 5m, 1h, 1d or 1w"
        )));
    }
    Ok(ns)
}

fn bounds(v: Option<&Value>, unit: EpochUnit, what: &str) -> Result<Option<(i64, i64)>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let o = object(v, what)?;
    let get = |k: &str, default: i64| -> Result<i64> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => parse_date(v, unit, 0).map(|(t, _)| t),
        }
    };
    Ok(Some((get("min", i64::MIN)?, get("max", i64::MAX)?)))
}

fn date_histogram(o: &Map<String, Value>, name: &str) -> Result<DateHistogram> {
    let field = agg_field(o, "date_histogram", name)?;
    if field != FieldRef::Timestamp {
        return Err(EsError::illegal(format!(
            "[date_histogram] [{name}] on a field other than {TIME_FIELD} is not supported"
        )));
    }
    let interval = ["fixed_interval", "calendar_interval", "interval"]
        .iter()
        .find_map(|k| o.get(*k).and_then(as_text))
        .ok_or_else(|| {
            EsError::parsing(format!(
                "[date_histogram] [{name}] needs [fixed_interval] or [calendar_interval]"
            ))
        })?;
    let calendar = o.contains_key("calendar_interval");
    let interval_ns = parse_interval(&interval)?;
    let week = 7 * 86_400 * SEC;
    // Calendar weeks start on Monday; the epoch was a Thursday.
    let mut offset_ns = if calendar && interval_ns == week {
        4 * 86_400 * SEC
    } else {
        0
    };
    if let Some(off) = o.get("offset").and_then(as_text) {
        let (neg, body) = match off.strip_prefix('-') {
            Some(b) => (true, b),
            None => (false, off.strip_prefix('+').unwrap_or(&off)),
        };
        let ns = parse_interval(body)?;
        offset_ns += if neg { -ns } else { ns };
    }
    if let Some(tz) = o.get("time_zone").and_then(Value::as_str) {
        offset_ns -= zone_offset_ns(tz).unwrap_or(0);
    }
    let unit = epoch_unit(o.get("format"));
    Ok(DateHistogram {
        interval_ns,
        offset_ns: offset_ns.rem_euclid(interval_ns),
        min_doc_count: match o.get("min_doc_count") {
            None | Some(Value::Null) => 0,
            Some(v) => as_u64(v, "min_doc_count")?,
        },
        extended_bounds: bounds(o.get("extended_bounds"), unit, "extended_bounds")?,
        hard_bounds: bounds(o.get("hard_bounds"), unit, "hard_bounds")?,
        epoch_millis: o
            .get("format")
            .and_then(Value::as_str)
            .is_some_and(|f| f.starts_with("epoch_millis")),
    })
}

/// A fixed offset `+02:00`/`-0530`; `None` for UTC and named zones (taken as UTC).
fn zone_offset_ns(tz: &str) -> Option<i64> {
    let (sign, rest) = match tz.as_bytes().first()? {
        b'+' => (1, &tz[1..]),
        b'-' => (-1, &tz[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
    if digits.len() != 4 {
        return None;
    }
    let h: i64 = digits[..2].parse().ok()?;
    let m: i64 = digits[2..].parse().ok()?;
    Some(sign * (h * 3_600 + m * 60) * SEC)
}

fn terms_agg(o: &Map<String, Value>, name: &str) -> Result<Terms> {
    let field = agg_field(o, "terms", name)?;
    if matches!(field, FieldRef::Timestamp | FieldRef::Body) {
        return Err(EsError::illegal(format!(
            "[terms] [{name}] on {} is not supported: use a date_histogram on {TIME_FIELD}, \
             or a keyword field",
            if field == FieldRef::Body {
                "message"
            } else {
                TIME_FIELD
            }
        )));
    }
    let order = match o.get("order") {
        None | Some(Value::Null) => TermsOrder::Count { asc: false },
        Some(v) => {
            let first = match v {
                Value::Array(a) => a.first().cloned().unwrap_or(Value::Null),
                v => v.clone(),
            };
            let (k, dir) = first
                .as_object()
                .and_then(|m| m.iter().next())
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("desc").to_ascii_lowercase()))
                .ok_or_else(|| EsError::parsing(format!("[terms] [{name}] bad order {v}")))?;
            let asc = dir == "asc";
            match k.as_str() {
                "_count" => TermsOrder::Count { asc },
                "_key" | "_term" => TermsOrder::Key { asc },
                other => {
                    return Err(EsError::illegal(format!(
                        "[terms] [{name}] ordered by [{other}] is not supported: order by \
                         _count or _key"
                    )))
                }
            }
        }
    };
    Ok(Terms {
        field,
        size: match o.get("size") {
            None | Some(Value::Null) => 10,
            Some(v) => as_u64(v, "size")? as usize,
        },
        order,
        min_doc_count: match o.get("min_doc_count") {
            None | Some(Value::Null) => 1,
            Some(v) => as_u64(v, "min_doc_count")?,
        },
    })
}

// ---------------------------------------------------------------------------------------
// Index names

/// The virtual index of a tenant: every record of it, whatever protocol it came in by.
pub fn tenant_index(tenant: &str) -> String {
    format!("weir-{tenant}")
}

fn wildcard_matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|i| rest.is_char_boundary(*i))
                .any(|i| wildcard_matches(tail, &rest[i..]))
        }
    }
}

/// The query an index expression selects within `tenant`: `_all`, `*`, empty or the
/// tenant's virtual index ([`tenant_index`]) is every record; another name is the
/// `es.index` that `_bulk` kept (a trailing `*` a prefix of it); names are comma
/// separated, and `-name` excludes.
///
/// # Errors
/// 400 for a `*` elsewhere than at the end of a name (Weir matches prefixes).
pub fn index_query(expr: &str, tenant: &str) -> Result<Query> {
    let virtual_name = tenant_index(tenant);
    let field = FieldRef::Other("es.index".to_owned());
    let (mut include, mut exclude) = (Vec::new(), Vec::new());
    let mut any_include = false;
    for raw in expr.split(',').map(str::trim) {
        let (neg, name) = match raw.strip_prefix('-') {
            Some(n) if any_include => (true, n),
            _ => (false, raw),
        };
        any_include |= !neg;
        let q = if name.is_empty()
            || name == "_all"
            || (!name.starts_with('-') && wildcard_matches(name, &virtual_name))
        {
            Query::All
        } else {
            match name.split_once('*') {
                None => exact(&field, name),
                Some((p, "")) if !p.is_empty() => {
                    clause(Some("es.index"), Pattern::Prefix(p.to_owned()))
                }
                _ => {
                    return Err(EsError::illegal(format!(
                        "index pattern [{name}] is not supported: Weir matches index names \
                         exactly or by a trailing * (logs-*)"
                    )))
                }
            }
        };
        if neg {
            exclude.push(not(q));
        } else {
            include.push(q);
        }
    }
    let mut all = vec![if include.is_empty() {
        Query::All
    } else {
        or(include)
    }];
    all.extend(exclude);
    Ok(and(all))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lowered(q: Value) -> SearchFilter {
        lower_query(Some(&q), 1_000 * SEC).unwrap()
    }

    fn text(q: Value) -> String {
        lowered(q).text
    }

    fn refused(q: Value) -> EsError {
        lower_query(Some(&q), 0).unwrap_err()
    }

    #[test]
    fn grafanas_logs_query_lowers_to_a_time_range_and_the_lucene_text() {
        let body = json!({
            "size": 500,
            "query": {"bool": {"filter": [
                {"range": {"@timestamp": {"gte": 1_700_000_000_000u64, "lte": 1_700_000_600_000u64, "format": "epoch_millis"}}},
                {"query_string": {"analyze_wildcard": true, "query": "service.name:api AND kubernetes.pod.name:api-7f* -log.level:DEBUG"}}
            ]}},
            "sort": [{"@timestamp": {"order": "desc", "unmapped_type": "boolean"}}, {"_doc": {"order": "desc"}}],
            "script_fields": {}, "docvalue_fields": [], "highlight": {"pre_tags": ["@HIGHLIGHT@"], "fields": {"*": {}}},
            "aggs": {"1": {"date_histogram": {"field": "@timestamp", "fixed_interval": "30s", "format": "epoch_millis",
                "min_doc_count": 0, "extended_bounds": {"min": 1_700_000_000_000u64, "max": 1_700_000_600_000u64}}}}
        });
        let plan = parse_search(&body, 0).unwrap();
        assert_eq!(plan.size, 500);
        assert_eq!(plan.sort, Sort::TimeDesc);
        assert_eq!(plan.filter.start_ns, 1_700_000_000_000 * MS);
        // lte in ms: the whole last millisecond is in.
        assert_eq!(plan.filter.end_ns, 1_700_000_600_001 * MS);
        assert_eq!(
            plan.filter.text,
            "service:api AND pod:api-7f* AND NOT level:debug"
        );
        let [agg] = &plan.aggs[..] else { panic!() };
        assert_eq!(agg.name, "1");
        let Agg::DateHistogram(h) = &agg.agg else {
            panic!()
        };
        assert_eq!(h.interval_ns, 30 * SEC);
        assert!(h.epoch_millis);
        assert_eq!(h.min_doc_count, 0);
        assert_eq!(
            h.extended_bounds,
            Some((1_700_000_000_000 * MS, 1_700_000_600_000 * MS))
        );
    }

    #[test]
    fn grafanas_metric_query_plans_terms_around_a_date_histogram() {
        let body = json!({"size": 0, "query": {"bool": {"filter": [{"query_string": {"query": "*"}}]}},
            "aggs": {"3": {"terms": {"field": "service.name.keyword", "size": "10", "order": {"_key": "desc"}, "min_doc_count": "1"},
                "aggs": {"2": {"date_histogram": {"field": "@timestamp", "interval": "1m", "min_doc_count": 0}}}}}});
        let plan = parse_search(&body, 0).unwrap();
        assert_eq!(plan.size, 0);
        assert_eq!(plan.filter.query, Query::All);
        let t = &plan.aggs[0];
        assert_eq!(
            t.agg,
            Agg::Terms(Terms {
                field: FieldRef::Standard("service"),
                size: 10,
                order: TermsOrder::Key { asc: false },
                min_doc_count: 1
            })
        );
        assert!(matches!(t.subs[0].agg, Agg::DateHistogram(_)));
    }

    #[test]
    fn ecs_field_names_map_onto_weirs_fields() {
        assert_eq!(
            text(
                json!({"query_string": {"query": "message:timeout log.level:warning kubernetes.namespace:shop orchestrator.cluster.name:eu trace.id:4bf92f3577b34da6a3ce929d0e0e4736 host.name:web-1"}})
            ),
            "timeout AND level:warn AND namespace:shop AND cluster:eu AND \
             trace_id:4bf92f3577b34da6a3ce929d0e0e4736 AND host.name:web-1"
        );
        assert_eq!(
            text(json!({"term": {"kubernetes.pod_name": "cart-2"}})),
            "pod:\"cart-2\""
        );
        assert_eq!(
            text(json!({"term": {"es.index": {"value": "logs-shop"}}})),
            "es.index:\"logs-shop\""
        );
        assert_eq!(text(json!({"match_all": {}})), "");
    }

    #[test]
    fn bool_should_alone_needs_one_and_beside_must_is_optional() {
        let a = json!({"term": {"service.name": "a"}});
        let b = json!({"term": {"service.name": "b"}});
        let c = json!({"match": {"message": "x"}});
        assert_eq!(
            text(json!({"bool": {"should": [a, b]}})),
            "service:\"a\" OR service:\"b\""
        );
        assert_eq!(text(json!({"bool": {"must": c, "should": [a, b]}})), "x");
        assert_eq!(
            text(json!({"bool": {"filter": c, "should": [a, b], "minimum_should_match": 1}})),
            "x AND (service:\"a\" OR service:\"b\")"
        );
        assert_eq!(
            text(json!({"bool": {"should": [a, b, c], "minimum_should_match": "-1"}})),
            "(service:\"a\" AND service:\"b\") OR (service:\"a\" AND x) OR (service:\"b\" AND x)"
        );
        assert_eq!(
            text(
                json!({"bool": {"must_not": [a], "filter": [{"exists": {"field": "@timestamp"}}]}})
            ),
            "NOT service:\"a\""
        );
    }

    #[test]
    fn match_phrase_prefix_terms_and_exists_lower_to_clauses() {
        assert_eq!(
            text(json!({"match": {"message": "connection reset"}})),
            "connection OR reset"
        );
        assert_eq!(
            text(json!({"match": {"message": {"query": "connection reset", "operator": "and"}}})),
            "connection AND reset"
        );
        assert_eq!(
            text(json!({"match_phrase": {"message": {"query": "connection reset", "slop": 2}}})),
            "\"connection reset\"~2"
        );
        assert_eq!(
            text(json!({"match_phrase_prefix": {"message": "connection re"}})),
            "\"connection re\"*"
        );
        assert_eq!(
            text(json!({"terms": {"log.level": ["ERROR", "warn"]}})),
            "level:error OR level:warn"
        );
        assert_eq!(text(json!({"prefix": {"pod": "api-"}})), "pod:api-*");
        assert_eq!(
            text(json!({"wildcard": {"pod": {"value": "api-*"}}})),
            "pod:api-*"
        );
        assert_eq!(text(json!({"terms": {"pod": []}})), "NOT *");
        let e = text(json!({"exists": {"field": "host.name"}}));
        assert!(e.starts_with("host.name:\\ * OR host.name:!* OR "), "{e}");
        assert_eq!(text(json!({"exists": {"field": "log.level"}})), "");
        assert_eq!(
            text(json!({"query_string": {"query": "_exists_:service.name AND timeout"}}))
                .matches("service:")
                .count(),
            95
        );
    }

    #[test]
    fn time_ranges_come_from_filter_positions_only() {
        let f = lowered(json!({"bool": {"must": [
            {"range": {"@timestamp": {"gt": "2024-01-15T10:00:00Z", "lt": "2024-01-15T11:00:00.5Z"}}},
            {"bool": {"filter": {"range": {"@timestamp": {"gte": "now-15m", "lte": "now"}}}}}
        ]}}));
        // now is 1000 s; the RFC 3339 range is far later: the intersection is empty.
        assert!(f.is_empty());
        let f = lowered(json!({"range": {"@timestamp": {"gte": "now-15m/m", "lte": "now"}}}));
        assert_eq!((f.start_ns, f.end_ns), (60 * SEC, 1_000 * SEC + 1));
        let f = lowered(
            json!({"range": {"@timestamp": {"gte": 10, "lt": 20, "format": "epoch_second"}}}),
        );
        assert_eq!((f.start_ns, f.end_ns), (10 * SEC, 20 * SEC));
        let f = lowered(
            json!({"range": {"@timestamp": {"from": "1000", "to": "2000", "include_upper": false}}}),
        );
        assert_eq!((f.start_ns, f.end_ns), (1_000 * MS, 2_000 * MS));
        let f = lowered(json!({"range": {"@timestamp": {"gte": "2024-01-15"}}}));
        assert_eq!(f.start_ns, 1_705_276_800 * SEC);
        let e = refused(json!({"bool": {"should": [{"range": {"@timestamp": {"gte": 1}}}]}}));
        assert!(e.reason.contains("not under should"), "{e}");
        let e = refused(json!({"range": {"bytes": {"gte": 1}}}));
        assert_eq!(e.kind, "illegal_argument_exception");
        assert!(e.reason.contains("[range] on [bytes]"), "{e}");
    }

    #[test]
    fn unknown_query_and_aggregation_types_are_refused_by_name() {
        let e = refused(json!({"fuzzy": {"message": "x"}}));
        assert_eq!((e.status, e.kind), (400, "parsing_exception"));
        assert!(e.reason.starts_with("unknown query [fuzzy]"), "{e}");
        let e =
            parse_search(&json!({"aggs": {"x": {"percentiles": {"field": "a"}}}}), 0).unwrap_err();
        assert!(
            e.reason
                .starts_with("unknown aggregation type [percentiles] in [x]"),
            "{e}"
        );
        let e = parse_search(&json!({"aggs": {"x": {"date_histogram": {"field": "@timestamp", "calendar_interval": "1M"}}}}), 0)
            .unwrap_err();
        assert!(e.reason.contains("months"), "{e}");
        let e = refused(json!({"query_string": {"query": "status:[400 TO 499]"}}));
        assert!(e.reason.contains("range syntax"), "{e}");
        let e = refused(json!({"query_string": {"query": "(a OR"}}));
        assert!(e.reason.contains("failed to parse query [(a OR]"), "{e}");
        let e = parse_search(&json!({"sort": [{"host.name": "asc"}]}), 0).unwrap_err();
        assert!(e.reason.contains("sorting on [host.name]"), "{e}");
    }

    #[test]
    fn ignored_keys_are_accepted() {
        let body = json!({"query": {"match_all": {}}, "highlight": {"fields": {}}, "version": true,
            "_source": ["message"], "track_total_hits": true, "stored_fields": ["*"], "timeout": "30s",
            "docvalue_fields": [{"field": "@timestamp", "format": "epoch_millis"}], "script_fields": {}});
        let plan = parse_search(&body, 0).unwrap();
        assert_eq!(plan.sort, Sort::Score);
        assert!(parse_search(&json!({"frobnicate": 1}), 0).is_err());
    }

    #[test]
    fn sorts_and_search_after() {
        let s = |v: Value| parse_sort(Some(&v)).unwrap();
        assert_eq!(s(json!("@timestamp:desc")), Sort::TimeDesc);
        assert_eq!(s(json!({"@timestamp": "asc"})), Sort::TimeAsc);
        assert_eq!(s(json!(["_doc"])), Sort::TimeAsc);
        assert_eq!(s(json!(["_score", "@timestamp"])), Sort::Score);
        let key = HitKey {
            timestamp_ns: 5 * MS + 7,
            shard: 1,
            log_index: 9,
            offset: 2,
        };
        let values = sort_values(Sort::TimeDesc, &key);
        assert_eq!(values[0], json!(5));
        let plan = parse_search(
            &json!({"sort": {"@timestamp": "desc"}, "search_after": values}),
            0,
        )
        .unwrap();
        assert_eq!(plan.after, Some(Cursor::after(Sort::TimeDesc, key)));
        // A bare time: after every record of that millisecond.
        let plan = parse_search(&json!({"sort": "@timestamp", "search_after": [5]}), 0).unwrap();
        let c = plan.after.unwrap();
        assert_eq!(c.sort(), Sort::TimeAsc);
        assert!(parse_search(&json!({"search_after": [5]}), 0).is_err());
    }

    #[test]
    fn intervals_of_fixed_size_only() {
        assert_eq!(parse_interval("30s").unwrap(), 30 * SEC);
        assert_eq!(parse_interval("250ms").unwrap(), 250 * MS);
        assert_eq!(parse_interval("1d").unwrap(), 86_400 * SEC);
        assert_eq!(parse_interval("hour").unwrap(), 3_600 * SEC);
        assert!(parse_interval("1y").is_err());
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("auto").is_err());
        let body = json!({"aggs": {"w": {"date_histogram": {"field": "@timestamp", "calendar_interval": "week"}}}});
        let Agg::DateHistogram(h) = &parse_search(&body, 0).unwrap().aggs[0].agg else {
            panic!()
        };
        // 1970-01-05 was a Monday.
        assert_eq!(h.bucket_of(5 * 86_400 * SEC), 4 * 86_400 * SEC);
        assert_eq!(h.bucket_of(3 * 86_400 * SEC), -3 * 86_400 * SEC);
    }

    #[test]
    fn index_expressions_select_es_index_or_the_tenant() {
        let q = |e: &str| {
            let q = index_query(e, "acme").unwrap();
            match q {
                Query::All => String::new(),
                q => q.to_string(),
            }
        };
        assert_eq!(q("_all"), "");
        assert_eq!(q("*"), "");
        assert_eq!(q("weir-acme"), "");
        assert_eq!(q("weir-*"), "");
        assert_eq!(q("logs-shop"), "es.index:\"logs-shop\"");
        assert_eq!(
            q("logs-2024.01.15,logs-2024.01.16"),
            "es.index:\"logs-2024.01.15\" OR es.index:\"logs-2024.01.16\""
        );
        assert_eq!(
            q("logs-*,-logs-debug"),
            "es.index:logs-* AND NOT es.index:\"logs-debug\""
        );
        assert!(index_query("*-prod", "acme").is_err());
        assert!(wildcard_matches("a*c*", "abxcy"));
        assert!(!wildcard_matches("a*c", "abxcy"));
    }

    #[test]
    fn every_lowered_query_parses_back_as_a_peer_would() {
        for q in [
            json!({"query_string": {"query": "\"a \\\"quoted\\\" b\"~3 OR url:http\\://x"}}),
            json!({"term": {"odd name": "AND"}}),
            json!({"exists": {"field": "a:b"}}),
            json!({"match": {"message": "- + NOT"}}),
        ] {
            let f = lowered(q.clone());
            assert_eq!(
                weir_index::parse_query(&f.text).unwrap(),
                f.query,
                "{q} -> {}",
                f.text
            );
        }
    }
}
