//! What the engine asks of the storage layer: [`Source`], with [`Hints`] to skip lines.

use std::str::FromStr;

use crate::ast::{LineFilterOp, LogExpr, Stage};
use crate::error::EngineError;
use crate::matcher::Matcher;
use crate::{Entry, Labels};

/// The order entries are read and returned in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Oldest first.
    Forward,
    /// Newest first (Loki's default for log queries).
    #[default]
    Backward,
}

impl FromStr for Direction {
    type Err = EngineError;

    /// `forward` or `backward`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "forward" => Ok(Direction::Forward),
            "backward" => Ok(Direction::Backward),
            _ => Err(EngineError::Invalid(format!(
                "invalid direction {s:?}: expected forward or backward"
            ))),
        }
    }
}

/// What a [`Source`] may use to skip entries that cannot match.
///
/// Every line the query can return contains, for each inner `Vec`, at least one of its
/// strings (case-sensitive). A source may skip any entry that fails this; it must never
/// skip one that passes. The engine re-checks everything, so ignoring hints is correct.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    /// Conjunction of disjunctions of literal substrings of the original line.
    pub line_contains_all: Vec<Vec<String>>,
}

/// The hints of a log query: its `|=` filters (with their `or` alternatives) that come
/// before any stage rewriting the line (`line_format`, `decolorize`, `unpack`).
pub fn hints(e: &LogExpr) -> Hints {
    let mut line_contains_all = Vec::new();
    for stage in &e.pipeline {
        match stage {
            Stage::LineFilter {
                op: LineFilterOp::Contains,
                values,
            } if !values.iter().any(String::is_empty) => line_contains_all.push(values.clone()),
            Stage::LineFormat { .. } | Stage::Decolorize | Stage::Unpack => break,
            _ => {}
        }
    }
    Hints { line_contains_all }
}

impl Hints {
    /// Whether `line` could match: it contains one string of every group.
    pub fn may_match(&self, line: &str) -> bool {
        self.line_contains_all
            .iter()
            .all(|any| any.iter().any(|s| line.contains(s.as_str())))
    }
}

/// An iterator of entries, or of the error that stopped the source.
pub type EntryIter<'a> = Box<dyn Iterator<Item = Result<Entry, EngineError>> + 'a>;

/// A count of entries per group and time bucket that the engine may ask of a source in
/// place of reading the entries (see [`Source::count`]).
#[derive(Debug, Clone, Copy)]
pub struct CountRequest<'a> {
    /// The entries counted: those whose stream labels satisfy every matcher.
    pub selector: &'a [Matcher],
    /// The stream labels whose values make a group.
    pub group_by: &'a [String],
    /// Bucket `k` holds the entries with `origin_ns + k * width_ns <= ts < origin_ns +
    /// (k + 1) * width_ns`.
    pub origin_ns: i64,
    /// Bucket width, > 0.
    pub width_ns: i64,
    /// Number of buckets, > 0.
    pub buckets: usize,
}

/// Per group (the `group_by` labels it has, with their values), the entries in each
/// bucket.
pub type GroupCounts = Vec<(Labels, Vec<u64>)>;

/// The storage layer, as the engine sees it.
pub trait Source {
    /// Every entry in `[start_ns, end_ns)` whose stream labels satisfy `selector`, in the
    /// order `direction` asks (Forward = oldest first; entries with equal timestamps in
    /// any order). `hints` may be used to skip entries that cannot match (never one that
    /// could); the engine re-checks the selector, the time range and every filter.
    ///
    /// # Errors
    /// [`EngineError::Source`] (or any other variant) to abort the query.
    fn select(
        &self,
        selector: &[Matcher],
        hints: &Hints,
        start_ns: i64,
        end_ns: i64,
        direction: Direction,
    ) -> Result<EntryIter<'_>, EngineError>;

    /// Every entry [`Source::select`] returns for the same arguments, in any order: what a
    /// range aggregation whose value does not depend on order (counts, bytes, minima,
    /// maxima, quantiles) reads, since it adds each sample to its steps by the sample's
    /// own time. A source may read faster without an order (each shard in the order its
    /// storage holds the entries, say). The default reads oldest first.
    ///
    /// # Errors
    /// As [`Source::select`].
    fn scan(
        &self,
        selector: &[Matcher],
        hints: &Hints,
        start_ns: i64,
        end_ns: i64,
    ) -> Result<EntryIter<'_>, EngineError> {
        self.select(selector, hints, start_ns, end_ns, Direction::Forward)
    }

    /// Counts entries per group and bucket without reading them, when the source can do
    /// so exactly: the answer must equal counting, per bucket, the entries
    /// [`Source::select`] returns that satisfy the selector, keyed by the values of the
    /// `group_by` labels each has. `None` when it cannot (the engine then reads the
    /// entries); the default.
    ///
    /// The engine asks only where a count is the whole answer: `sum` (by labels, or
    /// without grouping) over `count_over_time` or `rate` of a selector with no line
    /// filter or parser.
    fn count(&self, _req: &CountRequest<'_>) -> Option<Result<GroupCounts, EngineError>> {
        None
    }
}
