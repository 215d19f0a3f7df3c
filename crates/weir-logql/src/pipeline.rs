//! The log pipeline: a [`LogExpr`]'s stages compiled once, then run on every entry.
//!
//! Semantics follow Loki's `pkg/logql/log`:
//! * line filters are case-sensitive substring or unanchored RE2 matches on the current
//!   line; `or` alternatives: a positive filter needs one to match, a negative needs none;
//! * parsers (`json`, `logfmt`, `regexp`, `pattern`, `unpack`) add labels; a name that is
//!   already a stream label gets the suffix `_extracted` instead; names are sanitised
//!   (characters other than `[A-Za-z0-9_]` become `_`, a leading digit gets a `_`);
//!   `json` flattens nested objects with `_` and skips arrays and nulls;
//! * a parse failure sets `__error__` (`JSONParserErr`, ...) and `__error_details__` and
//!   keeps the line;
//! * numeric, duration and size label filters drop the line when the label is missing,
//!   and keep it with `__error__=LabelFilterErr` when the value does not convert;
//! * labels with an empty value do not exist (as in Prometheus label sets).

use regex::Regex;
use std::borrow::Cow;

use crate::ast::*;
use crate::error::ParseError;
use crate::matcher::Matcher;
use crate::template::Template;
use crate::units::{parse_bytes, parse_float, parse_go_duration};
use crate::{Entry, Labels};

/// The label Loki uses for pipeline errors.
pub const ERROR_LABEL: &str = "__error__";
/// The label Loki uses for an error's details.
pub const ERROR_DETAILS_LABEL: &str = "__error_details__";

const DECOLORIZE_RE: &str = "[\u{1b}\u{9b}][\\[\\]()#;?]*(?:(?:(?:[a-zA-Z\\d]*(?:;[a-zA-Z\\d]*)*)?\u{7})|(?:(?:\\d{1,4}(?:;\\d{0,4})*)?[\\dA-PRZcf-ntqry=><~]))";

/// An entry after the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Processed {
    /// The line, as rewritten by `line_format`/`decolorize`/`unpack`.
    pub line: String,
    /// Stream labels (after `drop`/`keep`/`label_format`).
    pub stream: Labels,
    /// Structured metadata (after `drop`/`keep`/`label_format`).
    pub metadata: Labels,
    /// Labels added by parsers and `label_format`, and `__error__`.
    pub parsed: Labels,
}

impl Processed {
    /// Every label, merged: what Loki shows as a stream's labels.
    pub fn labels(&self) -> Labels {
        let mut all = self.stream.clone();
        all.extend(self.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
        all.extend(self.parsed.iter().map(|(k, v)| (k.clone(), v.clone())));
        all
    }
}

/// A `json` path element: `.key`, `["key"]` or `[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathElem {
    Key(String),
    Index(usize),
}

/// Parses a `json` expression path such as `a.b[0]["c d"]`.
pub(crate) fn parse_json_path(path: &str) -> Result<Vec<PathElem>, String> {
    let err =
        || format!("invalid json expression {path:?}: expected a path such as a.b[0] or [\"key\"]");
    let mut out = Vec::new();
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'.' if i > 0 => i += 1,
            b'[' => {
                let close = path[i..].find(']').ok_or_else(err)? + i;
                let inner = path[i + 1..close].trim();
                if let Some(key) = inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    out.push(PathElem::Key(key.to_string()));
                } else {
                    out.push(PathElem::Index(inner.parse().map_err(|_| err())?));
                }
                i = close + 1;
            }
            _ => {
                let end = path[i..].find(['.', '[']).map_or(path.len(), |n| n + i);
                let key = &path[i..end];
                if key.is_empty() {
                    return Err(err());
                }
                out.push(PathElem::Key(key.to_string()));
                i = end;
            }
        }
    }
    if out.is_empty() {
        return Err(err());
    }
    Ok(out)
}

/// A compiled `pattern` expression.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    nodes: Vec<PatNode>,
}

#[derive(Debug, Clone, PartialEq)]
enum PatNode {
    Lit(String),
    /// `<name>`; `None` for `<_>`.
    Cap(Option<String>),
}

impl Pattern {
    pub(crate) fn parse(src: &str) -> Result<Pattern, String> {
        let mut nodes: Vec<PatNode> = Vec::new();
        let mut lit = String::new();
        let mut rest = src;
        while !rest.is_empty() {
            if let Some(name) = capture_at(rest) {
                if !lit.is_empty() {
                    nodes.push(PatNode::Lit(std::mem::take(&mut lit)));
                }
                if matches!(nodes.last(), Some(PatNode::Cap(_))) {
                    return Err(format!(
                        "invalid pattern {src:?}: found consecutive captures"
                    ));
                }
                let cap = (name != "_").then(|| name.to_string());
                if cap.is_some() && nodes.contains(&PatNode::Cap(cap.clone())) {
                    return Err(format!(
                        "invalid pattern {src:?}: duplicate capture <{name}>"
                    ));
                }
                nodes.push(PatNode::Cap(cap));
                rest = &rest[name.len() + 2..];
            } else {
                let c = rest.chars().next().unwrap_or_default();
                lit.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        if !lit.is_empty() {
            nodes.push(PatNode::Lit(lit));
        }
        if !nodes.iter().any(|n| matches!(n, PatNode::Cap(Some(_)))) {
            return Err(format!(
                "invalid pattern {src:?}: at least one named capture such as <name> is required"
            ));
        }
        Ok(Pattern { nodes })
    }

    /// The named captures found in `line`, as Loki's pattern matcher finds them.
    fn matches<'l>(&self, mut line: &'l str) -> Vec<(&str, &'l str)> {
        let mut out = Vec::new();
        let mut nodes = self.nodes.as_slice();
        if let Some(PatNode::Lit(l)) = nodes.first() {
            match line.strip_prefix(l.as_str()) {
                Some(rest) => line = rest,
                None => return out,
            }
            nodes = &nodes[1..];
        }
        while let Some(PatNode::Cap(cap)) = nodes.first() {
            let lit = match nodes.get(1) {
                Some(PatNode::Lit(l)) => l,
                _ => {
                    if let Some(name) = cap {
                        out.push((name.as_str(), line));
                    }
                    return out;
                }
            };
            nodes = &nodes[2..];
            let Some(i) = line.find(lit.as_str()) else {
                if let Some(name) = cap {
                    out.push((name.as_str(), line));
                }
                return out;
            };
            if let Some(name) = cap {
                out.push((name.as_str(), &line[..i]));
            }
            line = &line[i + lit.len()..];
        }
        out
    }
}

fn capture_at(s: &str) -> Option<&str> {
    let inner = s.strip_prefix('<')?;
    let end = inner.find('>')?;
    let name = &inner[..end];
    crate::parser::is_label_name(name).then_some(name)
}

/// Sanitises a key into a label name as Loki does.
fn sanitize(key: &str, is_prefix: bool) -> String {
    let key = key.trim();
    let mut out = String::with_capacity(key.len() + 1);
    if is_prefix && key.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    out
}

#[derive(Debug, Clone)]
enum Compiled {
    LineFilter(LineFilterOp, Vec<String>, Vec<Regex>),
    Json(Vec<(String, Vec<PathElem>)>),
    Logfmt(Vec<Extraction>),
    Regexp(Regex),
    Pattern(Pattern),
    Unpack,
    LabelFilter(LabelFilter),
    LineFormat(Template),
    LabelFormat(Vec<(LabelFormatOp, Option<Template>)>),
    Drop(Vec<LabelSel>),
    Keep(Vec<LabelSel>),
    Decolorize(Regex),
}

/// `| unwrap` compiled: the label, the conversion and the post filters.
#[derive(Debug, Clone)]
pub(crate) struct CompiledUnwrap {
    pub label: String,
    pub conversion: Conversion,
    pub post_filters: Vec<LabelFilter>,
}

/// A log pipeline compiled once per query (regexes and templates compiled here).
#[derive(Debug, Clone)]
pub struct Pipeline {
    stages: Vec<Compiled>,
}

fn compile_err(e: impl std::fmt::Display) -> ParseError {
    ParseError::new(0, e.to_string())
}

fn compile_stage(stage: &Stage) -> Result<Compiled, ParseError> {
    Ok(match stage {
        Stage::LineFilter { op, values } => {
            let regexes = match op {
                LineFilterOp::Match | LineFilterOp::NotMatch => values
                    .iter()
                    .map(|v| Regex::new(v).map_err(compile_err))
                    .collect::<Result<_, _>>()?,
                _ => Vec::new(),
            };
            Compiled::LineFilter(*op, values.clone(), regexes)
        }
        Stage::Json { fields } => Compiled::Json(
            fields
                .iter()
                .map(|f| {
                    Ok((
                        f.label.clone(),
                        parse_json_path(&f.path).map_err(compile_err)?,
                    ))
                })
                .collect::<Result<_, ParseError>>()?,
        ),
        Stage::Logfmt { fields } => Compiled::Logfmt(fields.clone()),
        Stage::Regexp { pattern } => Compiled::Regexp(Regex::new(pattern).map_err(compile_err)?),
        Stage::Pattern { pattern } => {
            Compiled::Pattern(Pattern::parse(pattern).map_err(compile_err)?)
        }
        Stage::Unpack => Compiled::Unpack,
        Stage::LabelFilter(lf) => Compiled::LabelFilter(lf.clone()),
        Stage::LineFormat { template } => {
            Compiled::LineFormat(Template::parse(template).map_err(compile_err)?)
        }
        Stage::LabelFormat { ops } => Compiled::LabelFormat(
            ops.iter()
                .map(|op| match op {
                    LabelFormatOp::Template { template, .. } => Ok((
                        op.clone(),
                        Some(Template::parse(template).map_err(compile_err)?),
                    )),
                    LabelFormatOp::Rename { .. } => Ok((op.clone(), None)),
                })
                .collect::<Result<_, ParseError>>()?,
        ),
        Stage::Drop { labels } => Compiled::Drop(labels.clone()),
        Stage::Keep { labels } => Compiled::Keep(labels.clone()),
        Stage::Decolorize => Compiled::Decolorize(Regex::new(DECOLORIZE_RE).map_err(compile_err)?),
    })
}

/// The labels and line of one entry while it goes through the stages.
struct State<'a> {
    base: &'a Labels,
    ts_ns: i64,
    line: Cow<'a, str>,
    stream: Cow<'a, Labels>,
    metadata: Cow<'a, Labels>,
    parsed: Labels,
}

impl<'a> State<'a> {
    fn new(e: &'a Entry) -> Self {
        State {
            base: &e.stream,
            ts_ns: e.ts_ns,
            line: Cow::Borrowed(&e.line),
            stream: Cow::Borrowed(&e.stream),
            metadata: Cow::Borrowed(&e.metadata),
            parsed: Labels::new(),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.parsed
            .get(name)
            .or_else(|| self.metadata.get(name))
            .or_else(|| self.stream.get(name))
            .map(String::as_str)
    }

    fn value(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().to_string()
    }

    fn del(&mut self, name: &str) {
        self.parsed.remove(name);
        if self.metadata.contains_key(name) {
            self.metadata.to_mut().remove(name);
        }
        if self.stream.contains_key(name) {
            self.stream.to_mut().remove(name);
        }
    }

    /// Sets a label in the parsed category (a name lives in one category at a time).
    fn set_parsed(&mut self, name: &str, value: String) {
        if self.metadata.contains_key(name) {
            self.metadata.to_mut().remove(name);
        }
        if self.stream.contains_key(name) {
            self.stream.to_mut().remove(name);
        }
        if value.is_empty() {
            self.parsed.remove(name);
        } else {
            self.parsed.insert(name.to_string(), value);
        }
    }

    /// A parser's label: `_extracted` when the name is one of the entry's stream labels.
    fn set_extracted(&mut self, name: &str, value: String) {
        if name.is_empty() {
            return;
        }
        if self.base.contains_key(name) {
            self.set_parsed(&format!("{name}_extracted"), value);
        } else {
            self.set_parsed(name, value);
        }
    }

    fn has_err(&self) -> bool {
        self.parsed.contains_key(ERROR_LABEL)
    }

    fn set_err(&mut self, err: &str, details: String) {
        self.parsed.insert(ERROR_LABEL.to_string(), err.to_string());
        if !details.is_empty() {
            self.parsed.insert(ERROR_DETAILS_LABEL.to_string(), details);
        }
    }

    fn all_labels(&self) -> Labels {
        let mut all = self.stream.clone().into_owned();
        all.extend(self.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
        all.extend(self.parsed.iter().map(|(k, v)| (k.clone(), v.clone())));
        all
    }

    fn into_processed(self) -> Processed {
        Processed {
            line: self.line.into_owned(),
            stream: self.stream.into_owned(),
            metadata: self.metadata.into_owned(),
            parsed: self.parsed,
        }
    }
}

impl Pipeline {
    /// Compiles a log query's stages.
    ///
    /// # Errors
    /// Only for trees not produced by [`crate::parse`] (which validates all of this).
    pub fn new(log: &LogExpr) -> Result<Pipeline, ParseError> {
        Ok(Pipeline {
            stages: log
                .pipeline
                .iter()
                .map(compile_stage)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Runs the stages on one entry; `None` when a filter drops it.
    pub fn process(&self, entry: &Entry) -> Option<Processed> {
        self.run(entry).map(State::into_processed)
    }

    fn run<'a>(&self, entry: &'a Entry) -> Option<State<'a>> {
        let mut st = State::new(entry);
        for stage in &self.stages {
            if !apply(stage, &mut st) {
                return None;
            }
        }
        Some(st)
    }

    /// Runs the stages, then `unwrap`: the sample value and the entry's labels, or
    /// `None` when a filter drops the entry or the unwrapped label is missing or empty.
    pub(crate) fn process_sample(
        &self,
        entry: &Entry,
        unwrap: &CompiledUnwrap,
    ) -> Option<(f64, Labels)> {
        let mut st = self.run(entry)?;
        let raw = st.value(&unwrap.label);
        if raw.is_empty() {
            return None;
        }
        let converted = match unwrap.conversion {
            Conversion::Float => parse_float(&raw)
                .ok_or_else(|| format!("strconv.ParseFloat: parsing {raw:?}: invalid syntax")),
            Conversion::Duration | Conversion::DurationSeconds => {
                parse_go_duration(&raw).map(|ns| ns as f64 / 1e9)
            }
            Conversion::Bytes => parse_bytes(&raw).map(|b| b as f64),
        };
        let value = converted.unwrap_or_else(|details| {
            st.set_err("SampleExtractionErr", details);
            0.0
        });
        for lf in &unwrap.post_filters {
            if !label_filter(lf, &mut st) {
                return None;
            }
        }
        Some((value, st.all_labels()))
    }

    /// Runs the stages: the final line's length in bytes and the entry's labels.
    pub(crate) fn process_line(&self, entry: &Entry) -> Option<(usize, Labels)> {
        let st = self.run(entry)?;
        Some((st.line.len(), st.all_labels()))
    }
}

/// Applies one stage; `false` drops the entry.
fn apply(stage: &Compiled, st: &mut State<'_>) -> bool {
    match stage {
        Compiled::LineFilter(op, values, regexes) => line_filter(*op, values, regexes, &st.line),
        Compiled::Json(fields) if fields.is_empty() => {
            json_all(st);
            true
        }
        Compiled::Json(fields) => {
            json_fields(fields, st);
            true
        }
        Compiled::Logfmt(fields) => {
            logfmt(fields, st);
            true
        }
        Compiled::Regexp(re) => {
            regexp(re, st);
            true
        }
        Compiled::Pattern(p) => {
            let caps: Vec<(String, String)> = p
                .matches(&st.line)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            for (k, v) in caps {
                st.set_extracted(&k, v);
            }
            true
        }
        Compiled::Unpack => {
            unpack(st);
            true
        }
        Compiled::LabelFilter(lf) => label_filter(lf, st),
        Compiled::LineFormat(t) => {
            let line = t.render(&|n| st.value(n), &st.line, st.ts_ns);
            st.line = Cow::Owned(line);
            true
        }
        Compiled::LabelFormat(ops) => {
            label_format(ops, st);
            true
        }
        Compiled::Drop(sels) => {
            drop_labels(sels, st);
            true
        }
        Compiled::Keep(sels) => {
            keep_labels(sels, st);
            true
        }
        Compiled::Decolorize(re) => {
            if let Cow::Owned(s) = re.replace_all(&st.line, "") {
                st.line = Cow::Owned(s);
            }
            true
        }
    }
}

fn line_filter(op: LineFilterOp, values: &[String], regexes: &[Regex], line: &str) -> bool {
    match op {
        LineFilterOp::Contains => values.iter().any(|v| line.contains(v.as_str())),
        LineFilterOp::NotContains => !values.iter().any(|v| line.contains(v.as_str())),
        LineFilterOp::Match => regexes.iter().any(|r| r.is_match(line)),
        LineFilterOp::NotMatch => !regexes.iter().any(|r| r.is_match(line)),
    }
}

fn json_scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_json_object(st: &mut State<'_>) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str::<serde_json::Value>(&st.line) {
        Ok(serde_json::Value::Object(map)) => Some(map),
        Ok(_) => {
            st.set_err(
                "JSONParserErr",
                "Value looks like it is not a JSON object".to_string(),
            );
            None
        }
        Err(e) => {
            st.set_err("JSONParserErr", e.to_string());
            None
        }
    }
}

fn json_all(st: &mut State<'_>) {
    let Some(map) = parse_json_object(st) else {
        return;
    };
    let mut out = Vec::new();
    flatten(&map, None, &mut Vec::new(), &mut |k, _, v| out.push((k, v)));
    for (k, v) in out {
        st.set_extracted(&k, v);
    }
}

/// Calls `out(label, path, value)` for every scalar of a JSON object, nested objects
/// flattened with `_`; `path` is the keys from the root as the line writes them (what
/// field detection reports as `jsonPath`, so a client can name the value in `| json`).
fn flatten<'m, F: FnMut(String, &[&'m str], String)>(
    map: &'m serde_json::Map<String, serde_json::Value>,
    prefix: Option<&str>,
    path: &mut Vec<&'m str>,
    out: &mut F,
) {
    for (k, v) in map {
        let key = match prefix {
            None => sanitize(k, true),
            Some(p) => format!("{p}_{}", sanitize(k, false)),
        };
        path.push(k);
        match v {
            serde_json::Value::Object(inner) => flatten(inner, Some(&key), path, out),
            other => {
                if let Some(s) = json_scalar(other) {
                    out(key, path, s);
                }
            }
        }
        path.pop();
    }
}

/// The parser field detection read a line with (see [`line_fields`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LineFormat {
    /// The line is a JSON object.
    Json,
    /// Anything else, read as logfmt (which may find nothing in prose).
    Logfmt,
}

impl LineFormat {
    /// The parser's name in LogQL and in Loki's `detected_fields` answer.
    pub fn as_str(self) -> &'static str {
        match self {
            LineFormat::Json => "json",
            LineFormat::Logfmt => "logfmt",
        }
    }
}

/// One field of a line, as the `json` or `logfmt` stage would extract it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineField {
    /// The label name the stage gives it (sanitised, nested JSON keys joined with `_`,
    /// `_extracted` appended when the stream has a label of that name).
    pub name: String,
    /// Its value (never empty: labels with an empty value do not exist).
    pub value: String,
    /// For a JSON field, the keys from the root to the value as the line writes them,
    /// unsanitised (`{"a":{"b-c":1}}` gives `["a", "b-c"]` for `a_b_c`); empty for logfmt.
    pub json_path: Vec<String>,
}

/// The fields of `line` as Loki's field detection finds them: the `json` stage's labels
/// when the line is a JSON object, else the `logfmt` stage's (Loki tries json, then
/// logfmt). Names are the ones `| json` or `| logfmt` would give on a stream labelled
/// `stream`; a name seen twice keeps its last value. Sorted by name.
///
/// ```
/// use weir_logql::pipeline::{line_fields, LineFormat};
/// use weir_logql::Labels;
///
/// let stream: Labels = [("app".to_string(), "pay".to_string())].into();
/// let (format, fields) = line_fields(r#"{"app":"x","req":{"id":7}}"#, &stream);
/// assert_eq!(format, LineFormat::Json);
/// assert_eq!(fields[0].name, "app_extracted");
/// assert_eq!(fields[1].name, "req_id");
/// assert_eq!(fields[1].json_path, ["req", "id"]);
/// let (format, fields) = line_fields("took=5ms ok", &stream);
/// assert_eq!((format, fields.len()), (LineFormat::Logfmt, 1));
/// ```
pub fn line_fields(line: &str, stream: &Labels) -> (LineFormat, Vec<LineField>) {
    let mut found: std::collections::BTreeMap<String, LineField> = Default::default();
    let mut set = |name: String, value: String, json_path: Vec<String>| {
        if name.is_empty() {
            return;
        }
        let name = if stream.contains_key(&name) {
            format!("{name}_extracted")
        } else {
            name
        };
        // As `set_extracted`: an empty value removes the label an earlier key set.
        if value.is_empty() {
            found.remove(&name);
        } else {
            found.insert(
                name.clone(),
                LineField {
                    name,
                    value,
                    json_path,
                },
            );
        }
    };
    let format = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(map)) => {
            flatten(&map, None, &mut Vec::new(), &mut |k, path, v| {
                set(k, v, path.iter().map(|p| p.to_string()).collect())
            });
            LineFormat::Json
        }
        _ => {
            for (k, v) in logfmt_pairs(line) {
                set(sanitize(&k, true), v, Vec::new());
            }
            LineFormat::Logfmt
        }
    };
    (format, found.into_values().collect())
}

fn json_fields(fields: &[(String, Vec<PathElem>)], st: &mut State<'_>) {
    let value: serde_json::Value = match serde_json::from_str(&st.line) {
        Ok(v) => v,
        Err(e) => {
            st.set_err("JSONParserErr", e.to_string());
            return;
        }
    };
    for (label, path) in fields {
        let mut cur = Some(&value);
        for elem in path {
            cur = match (cur, elem) {
                (Some(serde_json::Value::Object(m)), PathElem::Key(k)) => m.get(k),
                (Some(serde_json::Value::Array(a)), PathElem::Index(i)) => a.get(*i),
                _ => None,
            };
        }
        let text = match cur {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(v) => json_scalar(v).unwrap_or_else(|| v.to_string()),
        };
        st.set_extracted(label, text);
    }
}

fn unpack(st: &mut State<'_>) {
    let Some(map) = parse_json_object(st) else {
        return;
    };
    for (k, v) in &map {
        let serde_json::Value::String(s) = v else {
            continue;
        };
        if k == "_entry" {
            st.line = Cow::Owned(s.clone());
        } else {
            st.set_extracted(&sanitize(k, true), s.clone());
        }
    }
}

/// Splits a logfmt line into `(key, value)` pairs; malformed tokens are skipped
/// (Loki's default, non-strict mode).
fn logfmt_pairs(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = line.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c <= ' ' {
            chars.next();
            continue;
        }
        let mut end = line.len();
        let mut has_value = false;
        while let Some(&(i, d)) = chars.peek() {
            if d <= ' ' || d == '=' {
                end = i;
                has_value = d == '=';
                break;
            }
            chars.next();
        }
        let key = &line[start..end];
        if has_value {
            chars.next();
        }
        let value = if !has_value {
            Some(String::new())
        } else if chars.peek().is_some_and(|(_, d)| *d == '"') {
            logfmt_quoted(line, &mut chars)
        } else {
            let vstart = chars.peek().map_or(line.len(), |(i, _)| *i);
            let mut vend = line.len();
            let mut bad = false;
            while let Some(&(i, d)) = chars.peek() {
                if d <= ' ' {
                    vend = i;
                    break;
                }
                bad |= d == '=' || d == '"';
                chars.next();
            }
            (!bad).then(|| line[vstart..vend].to_string())
        };
        if let Some(v) = value {
            if !key.contains('"') && !key.is_empty() {
                out.push((key.to_string(), v));
            }
        }
    }
    out
}

fn logfmt_quoted(
    line: &str,
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
) -> Option<String> {
    let (open, _) = chars.next()?;
    let mut escaped = false;
    let mut close = None;
    for (i, c) in chars.by_ref() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            close = Some(i);
            break;
        }
    }
    let close = close?;
    serde_json::from_str::<String>(&line[open..=close]).ok()
}

fn logfmt(fields: &[Extraction], st: &mut State<'_>) {
    let pairs = logfmt_pairs(&st.line);
    if fields.is_empty() {
        for (k, v) in pairs {
            st.set_extracted(&sanitize(&k, true), v);
        }
        return;
    }
    for f in fields {
        if let Some((_, v)) = pairs.iter().rev().find(|(k, _)| *k == f.path) {
            st.set_extracted(&f.label, v.clone());
        }
    }
}

fn regexp(re: &Regex, st: &mut State<'_>) {
    let Some(caps) = re.captures(&st.line) else {
        return;
    };
    let found: Vec<(String, String)> = re
        .capture_names()
        .flatten()
        .filter_map(|n| {
            caps.name(n)
                .map(|m| (n.to_string(), m.as_str().to_string()))
        })
        .collect();
    for (k, v) in found {
        st.set_extracted(&k, v);
    }
}

fn label_format(ops: &[(LabelFormatOp, Option<Template>)], st: &mut State<'_>) {
    let snapshot = st.all_labels();
    let lookup = |n: &str| snapshot.get(n).cloned().unwrap_or_default();
    for (op, template) in ops {
        match (op, template) {
            (LabelFormatOp::Rename { to, from }, _) => rename(st, from, to),
            (LabelFormatOp::Template { to, .. }, Some(t)) => {
                let v = t.render(&lookup, &st.line, st.ts_ns);
                st.set_parsed(to, v);
            }
            (LabelFormatOp::Template { .. }, None) => {}
        }
    }
}

/// `to=from`: moves the value, keeping the category (stream, metadata or parsed).
fn rename(st: &mut State<'_>, from: &str, to: &str) {
    if from == to {
        return;
    }
    let Some(v) = st.get(from).map(str::to_string) else {
        return;
    };
    let in_stream = st.stream.contains_key(from);
    let in_meta = st.metadata.contains_key(from) && !st.parsed.contains_key(from);
    st.del(from);
    st.del(to);
    if st.parsed.contains_key(from) || (!in_stream && !in_meta) {
        st.parsed.insert(to.to_string(), v);
    } else if in_meta {
        st.metadata.to_mut().insert(to.to_string(), v);
    } else {
        st.stream.to_mut().insert(to.to_string(), v);
    }
}

fn sel_matches(sel: &LabelSel, name: &str, value: &str) -> bool {
    match sel {
        LabelSel::Name(n) => n == name,
        LabelSel::Matcher(m) => m.name == name && m.matches(value),
    }
}

fn drop_labels(sels: &[LabelSel], st: &mut State<'_>) {
    for (name, value) in st.all_labels() {
        if sels.iter().any(|s| sel_matches(s, &name, &value)) {
            st.del(&name);
        }
    }
}

/// `keep`: every label not named goes, except the error labels (as in Loki).
fn keep_labels(sels: &[LabelSel], st: &mut State<'_>) {
    for (name, value) in st.all_labels() {
        let special = name == ERROR_LABEL || name == ERROR_DETAILS_LABEL;
        if !special && !sels.iter().any(|s| sel_matches(s, &name, &value)) {
            st.del(&name);
        }
    }
}

/// Evaluates a label filter; may set `__error__=LabelFilterErr`.
fn label_filter(lf: &LabelFilter, st: &mut State<'_>) -> bool {
    match lf {
        LabelFilter::And(items) => items.iter().all(|i| label_filter(i, st)),
        LabelFilter::Or(items) => items.iter().any(|i| label_filter(i, st)),
        LabelFilter::Match(m) => string_filter(m, st),
        LabelFilter::Number { name, op, value } => typed_filter(st, name, |v| {
            parse_float(v)
                .map(|x| op.holds(x, *value))
                .ok_or_else(|| format!("strconv.ParseFloat: parsing {v:?}: invalid syntax"))
        }),
        LabelFilter::Duration { name, op, value_ns } => typed_filter(st, name, |v| {
            parse_go_duration(v).map(|x| op.holds(x, *value_ns))
        }),
        LabelFilter::Bytes { name, op, value } => {
            typed_filter(st, name, |v| parse_bytes(v).map(|x| op.holds(x, *value)))
        }
    }
}

fn string_filter(m: &Matcher, st: &State<'_>) -> bool {
    m.matches(st.get(&m.name).unwrap_or_default())
}

fn typed_filter(
    st: &mut State<'_>,
    name: &str,
    check: impl Fn(&str) -> Result<bool, String>,
) -> bool {
    let Some(v) = st.get(name).map(str::to_string) else {
        return false;
    };
    match check(&v) {
        Ok(keep) => keep,
        Err(details) => {
            if !st.has_err() {
                st.set_err("LabelFilterErr", details);
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Field detection must name a field exactly as `| json` / `| logfmt` would, or a
    /// filter Grafana builds from a detected field matches nothing.
    #[test]
    fn line_fields_are_named_as_the_parsers_name_them() {
        let s = stream(&[("app", "pay"), ("level", "info")]);
        for line in [
            r#"{"app":"x","user-id":"u1","req":{"path":"/a","2nd":true},"n":null,"arr":[1]}"#,
            r#"app=x user-id=u1 req_path=/a took="5 ms" empty= bare"#,
        ] {
            let (format, fields) = line_fields(line, &s);
            let entry = Entry {
                ts_ns: 0,
                line: line.to_string(),
                stream: s.clone(),
                metadata: Labels::new(),
            };
            let stage = if format == LineFormat::Json {
                "json"
            } else {
                "logfmt"
            };
            assert_eq!(stage, format.as_str());
            let query = crate::parse(&format!(r#"{{app="pay"}} | {stage}"#)).unwrap();
            let crate::Expr::Log(log) = query else {
                unreachable!()
            };
            let parsed = Pipeline::new(&log).unwrap().process(&entry).unwrap().parsed;
            let got: Labels = fields
                .iter()
                .map(|f| (f.name.clone(), f.value.clone()))
                .collect();
            assert_eq!(got, parsed, "{line}");
        }
    }

    #[test]
    fn json_fields_carry_their_path_as_written() {
        let (format, fields) = line_fields(
            r#"{"status":200,"user-id":"u1","req":{"2nd":{"x.y":1.5}}}"#,
            &stream(&[("status", "s")]),
        );
        assert_eq!(format, LineFormat::Json);
        let paths: Vec<(&str, Vec<&str>)> = fields
            .iter()
            .map(|f| {
                (
                    f.name.as_str(),
                    f.json_path.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            paths,
            [
                ("req_2nd_x_y", vec!["req", "2nd", "x.y"]),
                ("status_extracted", vec!["status"]),
                ("user_id", vec!["user-id"]),
            ]
        );
    }

    #[test]
    fn a_line_that_is_not_a_json_object_is_read_as_logfmt() {
        for line in [r#"[1,2]"#, r#"{"a":1} trailing"#, "plain words only", ""] {
            let (format, _) = line_fields(line, &Labels::new());
            assert_eq!(format, LineFormat::Logfmt, "{line}");
        }
        let (_, fields) = line_fields("plain words only", &Labels::new());
        assert!(fields.is_empty());
        let (_, fields) = line_fields("a=1 a=2 b=3 b=", &Labels::new());
        let got: Vec<(&str, &str)> = fields
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_str()))
            .collect();
        assert_eq!(got, [("a", "2")]);
    }
}
