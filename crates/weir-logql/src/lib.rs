//! A LogQL engine: Grafana Loki's query language over an abstract source of log entries.
//!
//! The crate knows nothing about storage. The storage layer implements [`Source`]
//! (hand over the entries of the streams a selector picks, in time order); the engine
//! parses the query, runs the log pipeline on every entry and evaluates metric queries.
//!
//! ```
//! use weir_logql::{parse, Expr};
//!
//! let q = parse(r#"sum by (level) (count_over_time({app="api"} |= "error" | json [5m]))"#).unwrap();
//! assert!(matches!(q, Expr::Metric(_)));
//! // The printer writes canonical LogQL that parses back to the same tree.
//! assert_eq!(parse(&q.to_string()).unwrap(), q);
//! let err = parse(r#"{app="api""#).unwrap_err();
//! assert_eq!(err.to_string(), r#"parse error at position 10: expected "," or "}" to close the stream selector opened at 0, found the end of the query"#);
//! ```
//!
//! Evaluating against a source (here a vector of entries):
//!
//! ```
//! use weir_logql::*;
//!
//! struct Entries(Vec<Entry>);
//!
//! impl Source for Entries {
//!     fn select(&self, selector: &[Matcher], hints: &Hints, start_ns: i64, end_ns: i64,
//!               direction: Direction) -> Result<EntryIter<'_>> {
//!         let mut out: Vec<Entry> = self.0.iter()
//!             .filter(|e| e.ts_ns >= start_ns && e.ts_ns < end_ns)
//!             .filter(|e| selector.iter().all(|m| m.matches_labels(&e.stream)))
//!             .filter(|e| hints.may_match(&e.line)) // optional: skips only what cannot match
//!             .cloned()
//!             .collect();
//!         out.sort_by_key(|e| e.ts_ns);
//!         if direction == Direction::Backward {
//!             out.reverse();
//!         }
//!         Ok(Box::new(out.into_iter().map(Ok)))
//!     }
//! }
//!
//! let stream: Labels = [("app".to_string(), "api".to_string())].into();
//! let entry = |ts_ns, line: &str| Entry {
//!     ts_ns, line: line.into(), stream: stream.clone(), metadata: Labels::new(),
//! };
//! let source = Entries(vec![entry(1_000_000_000, "level=error msg=boom"), entry(2_000_000_000, "level=info msg=ok")]);
//! let query = parse(r#"sum by (level) (count_over_time({app="api"} | logfmt | drop msg [1m]))"#)?;
//! let params = QueryParams { end_ns: 60_000_000_000, instant: true, ..QueryParams::default() };
//! let QueryResult::Vector(samples) = evaluate(&query, &params, &source)? else { unreachable!() };
//! assert_eq!(samples.len(), 2);
//! assert_eq!(samples[0].labels["level"], "error");
//! # Ok::<(), EngineError>(())
//! ```
//!
//! # Supported
//!
//! * Stream selectors `{a="x", b!="y", c=~"re", d!~"re"}`, regexes fully anchored (RE2
//!   via `regex`), strings double-quoted with Go escapes or in backticks, `#` comments.
//! * Line filters `|=`, `!=`, `|~`, `!~`, chained, with `or` alternatives.
//! * Parsers `json` (all fields, or `json a="x.y", b`), `logfmt` (all keys or
//!   `logfmt a="key"`), `regexp`, `pattern`, `unpack`; `line_format`, `label_format`,
//!   `drop`, `keep` (names and matchers), `decolorize`.
//! * Label filters: string matchers, numbers, durations (`1.5s`), sizes (`10KB`, `1MiB`),
//!   combined with `and`, `,`, juxtaposition, `or` and parentheses; `__error__` filters.
//! * Templates (`line_format`/`label_format`): see [`template`].
//! * Range aggregations `count_over_time`, `rate`, `bytes_over_time`, `bytes_rate`,
//!   `absent_over_time`, and with `| unwrap x` / `duration(x)` / `duration_seconds(x)` /
//!   `bytes(x)` (post-unwrap label filters too) `sum_`, `avg_`, `min_`, `max_`,
//!   `stddev_`, `stdvar_`, `quantile_`, `first_`, `last_over_time` and `rate`; ranges in
//!   Prometheus durations or `[$__auto]` (the query step), `offset`; `by`/`without` on
//!   the range aggregations where Loki allows them.
//! * Vector aggregations `sum avg min max count stddev stdvar topk bottomk sort
//!   sort_desc` with `by`/`without` before or after the parentheses.
//! * Binary operators `+ - * / % ^ == != > < >= <=` (with `bool`), `and or unless`,
//!   Prometheus precedence, `on`/`ignoring`, `group_left`/`group_right`; scalars,
//!   `vector(n)`, `label_replace`.
//!
//! # Refused
//!
//! Refused when parsing, with the position and a message starting "unsupported":
//! pattern line filters (`|>`, `!>`), `ip()` filters, `logfmt --strict/--keep-empty`,
//! `distinct`, negative offsets, `rate_counter`, `approx_topk`, the sketch and
//! `*_with_timestamp` functions. Template functions other than those listed in
//! [`template`] are refused naming the function.
//!
//! # Differences from Loki worth knowing
//!
//! * Labels with an empty value do not exist, as in Prometheus label sets.
//! * `json` renders numbers through `serde_json` (`1e3` becomes `1000.0`).
//! * A log query's entries must come from the [`Source`] in the asked direction; one
//!   out of order is an [`EngineError::Source`] (this is what lets a log query stop
//!   reading after `limit` entries).
//! * [`Limits`] bound memory: `max_series` applies to every range aggregation as well as
//!   to the result. Where a `sum`, `min` or `max` grouping is pushed down into the range
//!   aggregation (see [`evaluate`]), as Loki does for `sum`, it counts groups, so `sum by
//!   (level) (count_over_time(...))` works over any number of streams and metadata
//!   values; elsewhere (`count by`, `avg by`, ...) a range aggregation over more series
//!   than that is refused rather than buffered.
//! * An instant query of a log query returns streams (Loki's `/query` refuses it).
//! * [`EngineError::Unsupported`] is not produced by [`evaluate`] today: [`parse`]
//!   refuses unsupported syntax with a [`ParseError`] whose message starts with
//!   "unsupported".

mod ast;
mod error;
mod eval;
mod lexer;
mod matcher;
mod parser;
pub mod pipeline;
mod result;
mod source;
pub mod template;
pub mod units;
mod vector;

pub use ast::*;
pub use error::{EngineError, ParseError, Result};
pub use eval::{evaluate, Limits, QueryParams};
pub use matcher::{MatchOp, Matcher};
pub use parser::{parse, MAX_DEPTH};
pub use pipeline::{Pipeline, Processed};
pub use result::{QueryResult, Sample, Series, Stream, StreamEntry};
pub use source::{hints, CountRequest, Direction, EntryIter, GroupCounts, Hints, Source};

/// A label set, sorted by name.
pub type Labels = std::collections::BTreeMap<String, String>;

/// One log entry as the storage layer hands it to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: i64,
    /// The log line.
    pub line: String,
    /// The stream's labels.
    pub stream: Labels,
    /// Structured metadata (Loki 3).
    pub metadata: Labels,
}
