//! The LogQL syntax tree and its canonical printer.
//!
//! [`Expr`]'s `Display` prints canonical LogQL: [`crate::parse`] of the printed text
//! gives back an equal tree (pinned by a property test over generated trees).
//!
//! One tree cannot be written, in Loki's grammar as here: a `!=`/`!~` line filter right
//! after `drop`/`keep` whose last item is a bare name (`| keep a != "x"` reads as the
//! matcher `a!="x"`).

use std::fmt::{self, Display, Formatter, Write as _};

use crate::matcher::Matcher;
use crate::units::format_duration;

/// A parsed query: a log query (returns lines) or a metric query (returns samples).
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `{app="x"} |= "error" | json`.
    Log(LogExpr),
    /// `rate({app="x"}[5m])`, `sum by (level) (...)`, `1 + 1`.
    Metric(MetricExpr),
}

/// A stream selector followed by a pipeline of stages.
#[derive(Debug, Clone, PartialEq)]
pub struct LogExpr {
    /// The stream selector's matchers, in query order; at least one cannot match "".
    pub selector: Vec<Matcher>,
    /// The stages applied to every selected entry, in order.
    pub pipeline: Vec<Stage>,
}

/// How a line filter compares the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFilterOp {
    /// `|=`: the line contains the string (case-sensitive).
    Contains,
    /// `!=`: the line does not contain the string.
    NotContains,
    /// `|~`: the line matches the RE2 regex (unanchored).
    Match,
    /// `!~`: the line does not match the regex.
    NotMatch,
}

impl LineFilterOp {
    fn as_str(self) -> &'static str {
        match self {
            LineFilterOp::Contains => "|=",
            LineFilterOp::NotContains => "!=",
            LineFilterOp::Match => "|~",
            LineFilterOp::NotMatch => "!~",
        }
    }
}

/// One label extracted by `json` or `logfmt` with an expression: `label="path"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extraction {
    /// The label to set.
    pub label: String,
    /// For `json`: a path such as `a.b[0]` or `["key"]`; for `logfmt`: the key.
    pub path: String,
}

/// An operation of `label_format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelFormatOp {
    /// `to=from`: renames label `from` to `to`.
    Rename {
        /// The new name.
        to: String,
        /// The label renamed (and removed).
        from: String,
    },
    /// `to="{{.a}}-{{.b}}"`: sets `to` from a template.
    Template {
        /// The label set.
        to: String,
        /// The Go text/template source.
        template: String,
    },
}

/// A label named by `drop` or `keep`, optionally only when its value matches.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelSel {
    /// `name`: the label whatever its value.
    Name(String),
    /// `name="v"`: the label when its value matches.
    Matcher(Matcher),
}

/// A comparison in a label filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==` (or `=`)
    Eq,
    /// `!=`
    Neq,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

impl CmpOp {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Neq => "!=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
        }
    }

    pub(crate) fn holds<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Neq => a != b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
        }
    }
}

/// A label filter predicate (`| status >= 400 and level="error"`).
#[derive(Debug, Clone, PartialEq)]
pub enum LabelFilter {
    /// Every one holds (`and`, `,` or juxtaposition).
    And(Vec<LabelFilter>),
    /// At least one holds.
    Or(Vec<LabelFilter>),
    /// A string comparison; a missing label compares as "".
    Match(Matcher),
    /// A numeric comparison; a value that is not a number sets `__error__=LabelFilterErr`.
    Number {
        /// The label compared.
        name: String,
        /// The comparison.
        op: CmpOp,
        /// The literal compared against.
        value: f64,
    },
    /// A duration comparison (`> 1.5s`), values parsed as Go durations.
    Duration {
        /// The label compared.
        name: String,
        /// The comparison.
        op: CmpOp,
        /// The literal, in nanoseconds.
        value_ns: i64,
    },
    /// A byte-size comparison (`< 10KB`), values parsed as humanized sizes.
    Bytes {
        /// The label compared.
        name: String,
        /// The comparison.
        op: CmpOp,
        /// The literal, in bytes.
        value: u64,
    },
}

/// One stage of a log pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// `|= "a" or "b"`: keeps lines per `op`; alternatives joined by `or`.
    LineFilter {
        /// The comparison.
        op: LineFilterOp,
        /// One or more alternatives (`or`): a positive filter needs one to match, a
        /// negative one needs none to.
        values: Vec<String>,
    },
    /// `| json` (every scalar field, nested objects flattened with `_`) or
    /// `| json a="x.y", b` (only these).
    Json {
        /// The expressions; empty means every field.
        fields: Vec<Extraction>,
    },
    /// `| logfmt` or `| logfmt a="key", b`.
    Logfmt {
        /// The expressions; empty means every key.
        fields: Vec<Extraction>,
    },
    /// `| regexp "(?P<name>re)"`: named groups become labels.
    Regexp {
        /// The RE2 regex.
        pattern: String,
    },
    /// `| pattern "<ip> - <_> <status>"`.
    Pattern {
        /// The pattern.
        pattern: String,
    },
    /// `| unpack`: string fields of a JSON object become labels, `_entry` the line.
    Unpack,
    /// `| status >= 400`.
    LabelFilter(LabelFilter),
    /// `| line_format "{{.label}}"`.
    LineFormat {
        /// The template.
        template: String,
    },
    /// `| label_format new=old, x="{{.a}}"`.
    LabelFormat {
        /// The operations, applied in order.
        ops: Vec<LabelFormatOp>,
    },
    /// `| drop a, b="v"`.
    Drop {
        /// The labels dropped.
        labels: Vec<LabelSel>,
    },
    /// `| keep a, b="v"`.
    Keep {
        /// The labels kept; every other is dropped.
        labels: Vec<LabelSel>,
    },
    /// `| decolorize`: removes ANSI escape sequences from the line.
    Decolorize,
}

/// A range aggregation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOp {
    /// `count_over_time`
    CountOverTime,
    /// `rate` (lines per second, or unwrapped sum per second)
    Rate,
    /// `bytes_over_time`
    BytesOverTime,
    /// `bytes_rate`
    BytesRate,
    /// `absent_over_time`
    AbsentOverTime,
    /// `sum_over_time`
    SumOverTime,
    /// `avg_over_time`
    AvgOverTime,
    /// `min_over_time`
    MinOverTime,
    /// `max_over_time`
    MaxOverTime,
    /// `stddev_over_time`
    StddevOverTime,
    /// `stdvar_over_time`
    StdvarOverTime,
    /// `quantile_over_time`
    QuantileOverTime,
    /// `first_over_time`
    FirstOverTime,
    /// `last_over_time`
    LastOverTime,
}

impl RangeOp {
    /// Every range operation, for lookups and generators.
    pub const ALL: [RangeOp; 14] = [
        RangeOp::CountOverTime,
        RangeOp::Rate,
        RangeOp::BytesOverTime,
        RangeOp::BytesRate,
        RangeOp::AbsentOverTime,
        RangeOp::SumOverTime,
        RangeOp::AvgOverTime,
        RangeOp::MinOverTime,
        RangeOp::MaxOverTime,
        RangeOp::StddevOverTime,
        RangeOp::StdvarOverTime,
        RangeOp::QuantileOverTime,
        RangeOp::FirstOverTime,
        RangeOp::LastOverTime,
    ];

    /// The function's LogQL name.
    pub fn name(self) -> &'static str {
        match self {
            RangeOp::CountOverTime => "count_over_time",
            RangeOp::Rate => "rate",
            RangeOp::BytesOverTime => "bytes_over_time",
            RangeOp::BytesRate => "bytes_rate",
            RangeOp::AbsentOverTime => "absent_over_time",
            RangeOp::SumOverTime => "sum_over_time",
            RangeOp::AvgOverTime => "avg_over_time",
            RangeOp::MinOverTime => "min_over_time",
            RangeOp::MaxOverTime => "max_over_time",
            RangeOp::StddevOverTime => "stddev_over_time",
            RangeOp::StdvarOverTime => "stdvar_over_time",
            RangeOp::QuantileOverTime => "quantile_over_time",
            RangeOp::FirstOverTime => "first_over_time",
            RangeOp::LastOverTime => "last_over_time",
        }
    }

    pub(crate) fn from_name(s: &str) -> Option<RangeOp> {
        RangeOp::ALL.into_iter().find(|op| op.name() == s)
    }

    /// Whether Loki accepts this operation with `| unwrap`.
    pub fn allows_unwrap(self) -> bool {
        !matches!(
            self,
            RangeOp::CountOverTime | RangeOp::BytesOverTime | RangeOp::BytesRate
        )
    }

    /// Whether Loki accepts this operation without `| unwrap`.
    pub fn allows_no_unwrap(self) -> bool {
        matches!(
            self,
            RangeOp::CountOverTime
                | RangeOp::Rate
                | RangeOp::BytesOverTime
                | RangeOp::BytesRate
                | RangeOp::AbsentOverTime
        )
    }

    /// Whether Loki accepts `by`/`without` on this operation.
    pub fn allows_grouping(self) -> bool {
        matches!(
            self,
            RangeOp::AvgOverTime
                | RangeOp::StddevOverTime
                | RangeOp::StdvarOverTime
                | RangeOp::QuantileOverTime
                | RangeOp::MaxOverTime
                | RangeOp::MinOverTime
                | RangeOp::FirstOverTime
                | RangeOp::LastOverTime
        )
    }
}

/// How `unwrap` converts a label value to a sample value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// `unwrap label`: a float.
    Float,
    /// `unwrap duration(label)`: a Go duration, in seconds.
    Duration,
    /// `unwrap duration_seconds(label)`: the same as `duration`.
    DurationSeconds,
    /// `unwrap bytes(label)`: a humanized size, in bytes.
    Bytes,
}

/// `| unwrap label` and the label filters that follow it.
#[derive(Debug, Clone, PartialEq)]
pub struct Unwrap {
    /// The label whose value becomes the sample value.
    pub label: String,
    /// How the value is converted.
    pub conversion: Conversion,
    /// Label filters applied after the conversion (`| __error__=""`).
    pub post_filters: Vec<LabelFilter>,
}

/// The range of a range aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpan {
    /// `[5m]`, in nanoseconds (> 0).
    Fixed(i64),
    /// `[$__auto]`: the query's step.
    Auto,
}

/// `by (a, b)` or `without (a)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouping {
    /// `without` rather than `by`.
    pub without: bool,
    /// The labels named.
    pub labels: Vec<String>,
}

/// `count_over_time({app="x"} |= "error" [5m] offset 1m)`.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeAgg {
    /// The function.
    pub op: RangeOp,
    /// The quantile for `quantile_over_time`.
    pub param: Option<f64>,
    /// The log query the samples come from.
    pub log: LogExpr,
    /// `| unwrap`, for the operations over values.
    pub unwrap: Option<Unwrap>,
    /// The window.
    pub range: RangeSpan,
    /// `offset`, in nanoseconds (>= 0).
    pub offset_ns: i64,
    /// `by`/`without` after the parentheses, where Loki allows it.
    pub grouping: Option<Grouping>,
}

/// A vector aggregation operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorOp {
    /// `sum`
    Sum,
    /// `avg`
    Avg,
    /// `min`
    Min,
    /// `max`
    Max,
    /// `count`
    Count,
    /// `stddev`
    Stddev,
    /// `stdvar`
    Stdvar,
    /// `topk(k, ..)`
    Topk,
    /// `bottomk(k, ..)`
    Bottomk,
    /// `sort`
    Sort,
    /// `sort_desc`
    SortDesc,
}

impl VectorOp {
    /// Every vector operation.
    pub const ALL: [VectorOp; 11] = [
        VectorOp::Sum,
        VectorOp::Avg,
        VectorOp::Min,
        VectorOp::Max,
        VectorOp::Count,
        VectorOp::Stddev,
        VectorOp::Stdvar,
        VectorOp::Topk,
        VectorOp::Bottomk,
        VectorOp::Sort,
        VectorOp::SortDesc,
    ];

    /// The operator's LogQL name.
    pub fn name(self) -> &'static str {
        match self {
            VectorOp::Sum => "sum",
            VectorOp::Avg => "avg",
            VectorOp::Min => "min",
            VectorOp::Max => "max",
            VectorOp::Count => "count",
            VectorOp::Stddev => "stddev",
            VectorOp::Stdvar => "stdvar",
            VectorOp::Topk => "topk",
            VectorOp::Bottomk => "bottomk",
            VectorOp::Sort => "sort",
            VectorOp::SortDesc => "sort_desc",
        }
    }

    pub(crate) fn from_name(s: &str) -> Option<VectorOp> {
        VectorOp::ALL.into_iter().find(|op| op.name() == s)
    }

    /// Whether the operator takes a parameter (`topk(5, ..)`).
    pub fn takes_param(self) -> bool {
        matches!(self, VectorOp::Topk | VectorOp::Bottomk)
    }
}

/// `sum by (level) (rate(...))`, `topk(5, ...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorAgg {
    /// The operator.
    pub op: VectorOp,
    /// `k` for `topk`/`bottomk`.
    pub param: Option<f64>,
    /// `by`/`without`, written before or after the parentheses.
    pub grouping: Option<Grouping>,
    /// The aggregated expression.
    pub inner: Box<MetricExpr>,
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Mod,
    /// `^`
    Pow,
    /// `==`
    Eq,
    /// `!=`
    Neq,
    /// `>`
    Gt,
    /// `<`
    Lt,
    /// `>=`
    Ge,
    /// `<=`
    Le,
    /// `and`
    And,
    /// `or`
    Or,
    /// `unless`
    Unless,
}

impl BinOp {
    /// Every binary operator.
    pub const ALL: [BinOp; 15] = [
        BinOp::Add,
        BinOp::Sub,
        BinOp::Mul,
        BinOp::Div,
        BinOp::Mod,
        BinOp::Pow,
        BinOp::Eq,
        BinOp::Neq,
        BinOp::Gt,
        BinOp::Lt,
        BinOp::Ge,
        BinOp::Le,
        BinOp::And,
        BinOp::Or,
        BinOp::Unless,
    ];

    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Pow => "^",
            BinOp::Eq => "==",
            BinOp::Neq => "!=",
            BinOp::Gt => ">",
            BinOp::Lt => "<",
            BinOp::Ge => ">=",
            BinOp::Le => "<=",
            BinOp::And => "and",
            BinOp::Or => "or",
            BinOp::Unless => "unless",
        }
    }

    /// Prometheus precedence: `or` 1, `and unless` 2, comparisons 3, `+ -` 4,
    /// `* / %` 5, `^` 6 (right-associative).
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And | BinOp::Unless => 2,
            BinOp::Eq | BinOp::Neq | BinOp::Gt | BinOp::Lt | BinOp::Ge | BinOp::Le => 3,
            BinOp::Add | BinOp::Sub => 4,
            BinOp::Mul | BinOp::Div | BinOp::Mod => 5,
            BinOp::Pow => 6,
        }
    }

    /// Whether this is a comparison (`==`, `>`, ...).
    pub fn is_comparison(self) -> bool {
        self.precedence() == 3
    }

    /// Whether this is a set operator (`and`, `or`, `unless`).
    pub fn is_set(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or | BinOp::Unless)
    }
}

/// `group_left(..)` or `group_right(..)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupModifier {
    /// `group_right` rather than `group_left`.
    pub right: bool,
    /// Labels copied from the "one" side.
    pub include: Vec<String>,
}

/// `on(..)`/`ignoring(..)` and an optional group modifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorMatching {
    /// `on` rather than `ignoring`.
    pub on: bool,
    /// The labels named.
    pub labels: Vec<String>,
    /// `group_left`/`group_right`.
    pub group: Option<GroupModifier>,
}

/// `lhs op rhs`.
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryExpr {
    /// The operator.
    pub op: BinOp,
    /// Left operand.
    pub lhs: MetricExpr,
    /// Right operand.
    pub rhs: MetricExpr,
    /// `bool` after a comparison: return 0/1 instead of filtering.
    pub return_bool: bool,
    /// Vector matching modifiers.
    pub matching: Option<VectorMatching>,
}

/// `label_replace(v, "dst", "replacement", "src", "regex")`.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelReplace {
    /// The vector whose labels are rewritten.
    pub inner: MetricExpr,
    /// Destination label.
    pub dst: String,
    /// Replacement, with `$1`/`${name}` references.
    pub replacement: String,
    /// Source label.
    pub src: String,
    /// Regex matched (anchored) against the source label's value.
    pub regex: String,
}

/// A metric (sample-returning) expression.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricExpr {
    /// A range aggregation over a log query.
    Range(Box<RangeAgg>),
    /// A vector aggregation.
    Aggregate(VectorAgg),
    /// A binary operation.
    Binary(Box<BinaryExpr>),
    /// A number literal (a scalar).
    Number(f64),
    /// `vector(1)`: a one-sample vector without labels at every step.
    VectorLiteral(f64),
    /// `label_replace(...)`.
    LabelReplace(Box<LabelReplace>),
}

impl MetricExpr {
    /// Whether this expression is a scalar (numbers and operations between them).
    pub fn is_scalar(&self) -> bool {
        match self {
            MetricExpr::Number(_) => true,
            MetricExpr::Binary(b) => b.lhs.is_scalar() && b.rhs.is_scalar(),
            _ => false,
        }
    }
}

/// Quotes `s` as a LogQL string literal that reads back to `s`.
pub(crate) fn quote(s: &str) -> String {
    let has_control = s.chars().any(|c| (c as u32) < 0x20 || c == '\u{7f}');
    if (s.contains('\\') || s.contains('"')) && !s.contains('`') && !has_control {
        return format!("`{s}`");
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn join<T: Display>(items: &[T], sep: &str) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

impl Display for Expr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Log(l) => l.fmt(f),
            Expr::Metric(m) => m.fmt(f),
        }
    }
}

impl Display for LogExpr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}}}", join(&self.selector, ", "))?;
        for stage in &self.pipeline {
            write!(f, " {stage}")?;
        }
        Ok(())
    }
}

impl Display for Extraction {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if self.label == self.path {
            f.write_str(&self.label)
        } else {
            write!(f, "{}={}", self.label, quote(&self.path))
        }
    }
}

impl Display for LabelSel {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            LabelSel::Name(n) => f.write_str(n),
            LabelSel::Matcher(m) => m.fmt(f),
        }
    }
}

impl Display for LabelFormatOp {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            LabelFormatOp::Rename { to, from } => write!(f, "{to}={from}"),
            LabelFormatOp::Template { to, template } => write!(f, "{to}={}", quote(template)),
        }
    }
}

fn write_fields(f: &mut Formatter<'_>, name: &str, fields: &[Extraction]) -> fmt::Result {
    write!(f, "| {name}")?;
    if !fields.is_empty() {
        write!(f, " {}", join(fields, ", "))?;
    }
    Ok(())
}

impl Display for Stage {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Stage::LineFilter { op, values } => {
                let quoted: Vec<String> = values.iter().map(|v| quote(v)).collect();
                write!(f, "{} {}", op.as_str(), quoted.join(" or "))
            }
            Stage::Json { fields } => write_fields(f, "json", fields),
            Stage::Logfmt { fields } => write_fields(f, "logfmt", fields),
            Stage::Regexp { pattern } => write!(f, "| regexp {}", quote(pattern)),
            Stage::Pattern { pattern } => write!(f, "| pattern {}", quote(pattern)),
            Stage::Unpack => f.write_str("| unpack"),
            Stage::LabelFilter(lf) => write!(f, "| {lf}"),
            Stage::LineFormat { template } => write!(f, "| line_format {}", quote(template)),
            Stage::LabelFormat { ops } => write!(f, "| label_format {}", join(ops, ", ")),
            Stage::Drop { labels } => write!(f, "| drop {}", join(labels, ", ")),
            Stage::Keep { labels } => write!(f, "| keep {}", join(labels, ", ")),
            Stage::Decolorize => f.write_str("| decolorize"),
        }
    }
}

impl Display for LabelFilter {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let compound = |lf: &LabelFilter| matches!(lf, LabelFilter::And(_) | LabelFilter::Or(_));
        match self {
            LabelFilter::And(items) | LabelFilter::Or(items) => {
                let sep = if matches!(self, LabelFilter::And(_)) {
                    " and "
                } else {
                    " or "
                };
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(sep)?;
                    }
                    if compound(item) {
                        write!(f, "({item})")?;
                    } else {
                        write!(f, "{item}")?;
                    }
                }
                Ok(())
            }
            LabelFilter::Match(m) => m.fmt(f),
            LabelFilter::Number { name, op, value } => write!(f, "{name}{}{value}", op.as_str()),
            LabelFilter::Duration { name, op, value_ns } => {
                write!(f, "{name}{}{}", op.as_str(), format_duration(*value_ns))
            }
            LabelFilter::Bytes { name, op, value } => write!(f, "{name}{}{value}B", op.as_str()),
        }
    }
}

impl Display for Grouping {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let kw = if self.without { "without" } else { "by" };
        write!(f, "{kw} ({})", self.labels.join(", "))
    }
}

impl Display for Unwrap {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self.conversion {
            Conversion::Float => write!(f, "| unwrap {}", self.label)?,
            Conversion::Duration => write!(f, "| unwrap duration({})", self.label)?,
            Conversion::DurationSeconds => write!(f, "| unwrap duration_seconds({})", self.label)?,
            Conversion::Bytes => write!(f, "| unwrap bytes({})", self.label)?,
        }
        for lf in &self.post_filters {
            write!(f, " | {lf}")?;
        }
        Ok(())
    }
}

impl Display for RangeAgg {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{}(", self.op.name())?;
        if let Some(p) = self.param {
            write!(f, "{p}, ")?;
        }
        write!(f, "{}", self.log)?;
        if let Some(u) = &self.unwrap {
            write!(f, " {u}")?;
        }
        match self.range {
            RangeSpan::Fixed(ns) => write!(f, " [{}]", format_duration(ns))?,
            RangeSpan::Auto => f.write_str(" [$__auto]")?,
        }
        if self.offset_ns != 0 {
            write!(f, " offset {}", format_duration(self.offset_ns))?;
        }
        f.write_str(")")?;
        if let Some(g) = &self.grouping {
            write!(f, " {g}")?;
        }
        Ok(())
    }
}

impl Display for VectorAgg {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(self.op.name())?;
        if let Some(g) = &self.grouping {
            write!(f, " {g} ")?;
        }
        f.write_str("(")?;
        if let Some(p) = self.param {
            write!(f, "{p}, ")?;
        }
        write!(f, "{})", self.inner)
    }
}

impl Display for VectorMatching {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let kw = if self.on { "on" } else { "ignoring" };
        write!(f, "{kw}({})", self.labels.join(", "))?;
        if let Some(g) = &self.group {
            let kw = if g.right { "group_right" } else { "group_left" };
            write!(f, " {kw}({})", g.include.join(", "))?;
        }
        Ok(())
    }
}

fn needs_parens(child: &MetricExpr, parent: BinOp, is_rhs: bool) -> bool {
    let MetricExpr::Binary(b) = child else {
        return false;
    };
    let (cp, pp) = (b.op.precedence(), parent.precedence());
    let right_assoc = parent == BinOp::Pow;
    cp < pp || (cp == pp && (is_rhs != right_assoc))
}

impl Display for BinaryExpr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if needs_parens(&self.lhs, self.op, false) {
            write!(f, "({})", self.lhs)?;
        } else {
            write!(f, "{}", self.lhs)?;
        }
        write!(f, " {}", self.op.as_str())?;
        if self.return_bool {
            f.write_str(" bool")?;
        }
        if let Some(m) = &self.matching {
            write!(f, " {m}")?;
        }
        if needs_parens(&self.rhs, self.op, true) {
            write!(f, " ({})", self.rhs)
        } else {
            write!(f, " {}", self.rhs)
        }
    }
}

impl Display for MetricExpr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            MetricExpr::Range(r) => r.fmt(f),
            MetricExpr::Aggregate(v) => v.fmt(f),
            MetricExpr::Binary(b) => b.fmt(f),
            MetricExpr::Number(n) => write!(f, "{n}"),
            MetricExpr::VectorLiteral(n) => write!(f, "vector({n})"),
            MetricExpr::LabelReplace(l) => write!(
                f,
                "label_replace({}, {}, {}, {}, {})",
                l.inner,
                quote(&l.dst),
                quote(&l.replacement),
                quote(&l.src),
                quote(&l.regex)
            ),
        }
    }
}
