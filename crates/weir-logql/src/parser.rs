//! A hand-written recursive-descent parser for LogQL.
//!
//! Every error carries the byte offset of the token at fault. Nesting (parentheses,
//! aggregations, right-associative `^` chains) and the depth of the resulting tree are
//! both bounded by [`MAX_DEPTH`], so no input can exhaust the stack of the parser, the
//! printer or the evaluator.

use crate::ast::*;
use crate::error::ParseError;
use crate::lexer::{lex, Tok, Token};
use crate::matcher::{MatchOp, Matcher};
use crate::units::{parse_bytes, parse_go_duration, parse_range_duration};

/// The deepest nesting of parentheses, aggregations and binary operations accepted.
pub const MAX_DEPTH: usize = 64;

type PResult<T> = Result<T, ParseError>;

/// Parses a LogQL query.
///
/// # Errors
/// A [`ParseError`] with the byte position of the problem; syntax Loki has but this
/// engine does not implement is refused with a message starting with "unsupported".
pub fn parse(q: &str) -> PResult<Expr> {
    let toks = lex(q)?;
    let mut p = Parser {
        toks,
        i: 0,
        depth: 0,
    };
    let (e, _) = p.expr(0)?;
    if p.peek() != &Tok::Eof {
        return Err(p.unexpected("the end of the query or a binary operator"));
    }
    Ok(e)
}

struct Parser {
    toks: Vec<Token>,
    i: usize,
    depth: usize,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("{s:?}"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Num(s) => format!("number {s:?}"),
        Tok::Range(s) => format!("range [{s}]"),
        Tok::Flag(s) => format!("flag --{s}"),
        Tok::Sym(s) => format!("{s:?}"),
        Tok::Eof => "the end of the query".to_string(),
    }
}

const KEYWORDS: [&str; 9] = [
    "and", "or", "unless", "by", "without", "offset", "bool", "on", "ignoring",
];

const STAGE_KEYWORDS: [&str; 12] = [
    "json",
    "logfmt",
    "regexp",
    "pattern",
    "unpack",
    "decolorize",
    "line_format",
    "label_format",
    "drop",
    "keep",
    "distinct",
    "unwrap",
];

fn unsupported(pos: usize, what: &str) -> ParseError {
    ParseError::new(pos, format!("unsupported: {what}"))
}

impl Parser {
    // ---- token helpers ------------------------------------------------------------

    fn peek(&self) -> &Tok {
        &self.toks[self.i.min(self.toks.len() - 1)].tok
    }

    fn peek_at(&self, n: usize) -> &Tok {
        &self.toks[(self.i + n).min(self.toks.len() - 1)].tok
    }

    fn pos(&self) -> usize {
        self.toks[self.i.min(self.toks.len() - 1)].pos
    }

    fn bump(&mut self) -> Token {
        let t = self.toks[self.i.min(self.toks.len() - 1)].clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }

    fn unexpected(&self, expected: &str) -> ParseError {
        ParseError::new(
            self.pos(),
            format!("expected {expected}, found {}", describe(self.peek())),
        )
    }

    fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Tok::Sym(x) if *x == s)
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        let yes = self.is_sym(s);
        if yes {
            self.bump();
        }
        yes
    }

    fn expect_sym(&mut self, s: &str, context: &str) -> PResult<usize> {
        if self.is_sym(s) {
            Ok(self.bump().pos)
        } else {
            Err(self.unexpected(&format!("\"{s}\"{context}")))
        }
    }

    fn is_ident(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Ident(x) if x == kw)
    }

    fn eat_ident(&mut self, kw: &str) -> bool {
        let yes = self.is_ident(kw);
        if yes {
            self.bump();
        }
        yes
    }

    fn ident(&mut self, what: &str) -> PResult<(String, usize)> {
        match self.peek().clone() {
            Tok::Ident(s) => Ok((s, self.bump().pos)),
            _ => Err(self.unexpected(what)),
        }
    }

    fn string(&mut self, what: &str) -> PResult<(String, usize)> {
        match self.peek().clone() {
            Tok::Str(s) => Ok((s, self.bump().pos)),
            _ => Err(self.unexpected(what)),
        }
    }

    fn enter(&mut self, pos: usize) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError::new(
                pos,
                format!("query nested too deeply (more than {MAX_DEPTH} levels)"),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    // ---- expressions ----------------------------------------------------------------

    fn peek_binop(&self) -> Option<BinOp> {
        let s = match self.peek() {
            Tok::Sym(s) => *s,
            Tok::Ident(s) => s.as_str(),
            _ => return None,
        };
        BinOp::ALL.into_iter().find(|op| op.as_str() == s)
    }

    /// Precedence climbing; returns the expression and the depth of its tree.
    fn expr(&mut self, min_prec: u8) -> PResult<(Expr, usize)> {
        let lhs_pos = self.pos();
        let (mut lhs, mut depth) = self.unary()?;
        while let Some(op) = self.peek_binop() {
            if op.precedence() < min_prec {
                break;
            }
            let op_pos = self.bump().pos;
            let return_bool = self.eat_ident("bool");
            let matching = self.vector_matching()?;
            let next_min = if op == BinOp::Pow {
                op.precedence()
            } else {
                op.precedence() + 1
            };
            self.enter(op_pos)?;
            let rhs_pos = self.pos();
            let (rhs, rhs_depth) = self.expr(next_min)?;
            self.leave();
            depth = depth.max(rhs_depth) + 1;
            if depth > MAX_DEPTH {
                return Err(ParseError::new(
                    op_pos,
                    format!("expression too deep (more than {MAX_DEPTH} levels)"),
                ));
            }
            let bin = BinaryExpr {
                op,
                lhs: metric_operand(lhs, lhs_pos, op)?,
                rhs: metric_operand(rhs, rhs_pos, op)?,
                return_bool,
                matching,
            };
            check_binary(&bin, op_pos)?;
            lhs = Expr::Metric(MetricExpr::Binary(Box::new(bin)));
        }
        Ok((lhs, depth))
    }

    fn vector_matching(&mut self) -> PResult<Option<VectorMatching>> {
        let on = if self.eat_ident("on") {
            true
        } else if self.eat_ident("ignoring") {
            false
        } else {
            return Ok(None);
        };
        let labels = self.label_list()?;
        let group = if self.is_ident("group_left") || self.is_ident("group_right") {
            let right = self.is_ident("group_right");
            self.bump();
            let include = if self.is_sym("(") {
                self.label_list()?
            } else {
                Vec::new()
            };
            Some(GroupModifier { right, include })
        } else {
            None
        };
        Ok(Some(VectorMatching { on, labels, group }))
    }

    fn unary(&mut self) -> PResult<(Expr, usize)> {
        let pos = self.pos();
        match self.peek().clone() {
            Tok::Sym("{") => Ok((Expr::Log(self.log_expr()?), 0)),
            Tok::Sym("(") => {
                self.bump();
                self.enter(pos)?;
                let inner = self.expr(0)?;
                self.leave();
                self.expect_sym(")", &format!(" to close the parenthesis opened at {pos}"))?;
                Ok(inner)
            }
            Tok::Sym(s @ ("-" | "+")) if matches!(self.peek_at(1), Tok::Num(_)) => {
                self.bump();
                let n = self.number("a number")?;
                let n = if s == "-" { -n } else { n };
                Ok((Expr::Metric(MetricExpr::Number(n)), 0))
            }
            Tok::Num(_) => Ok((
                Expr::Metric(MetricExpr::Number(self.number("a number")?)),
                0,
            )),
            Tok::Ident(name) => self.function(&name, pos),
            _ => Err(self.unexpected("a stream selector, an aggregation or a number")),
        }
    }

    fn number(&mut self, what: &str) -> PResult<f64> {
        let pos = self.pos();
        match self.peek().clone() {
            Tok::Num(text) => {
                self.bump();
                parse_plain_number(&text)
                    .ok_or_else(|| ParseError::new(pos, format!("expected {what}, found {text:?}")))
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn function(&mut self, name: &str, pos: usize) -> PResult<(Expr, usize)> {
        self.bump();
        let metric = |m: MetricExpr, d: usize| Ok((Expr::Metric(m), d));
        if let Some(op) = RangeOp::from_name(name) {
            return metric(self.range_agg(op, pos)?, 1);
        }
        if let Some(op) = VectorOp::from_name(name) {
            let (agg, d) = self.vector_agg(op, pos)?;
            return metric(agg, d);
        }
        match name {
            "vector" => {
                self.expect_sym("(", " after vector")?;
                let sign = if self.eat_sym("-") { -1.0 } else { 1.0 };
                let n = self.number("a number in vector(..)")?;
                self.expect_sym(")", " to close vector(")?;
                metric(MetricExpr::VectorLiteral(sign * n), 0)
            }
            "label_replace" => {
                let (lr, d) = self.label_replace(pos)?;
                metric(lr, d)
            }
            "rate_counter" | "approx_topk" | "quantile_sketch_over_time"
            | "first_over_time_with_timestamp" | "last_over_time_with_timestamp" => {
                Err(unsupported(pos, &format!("the function {name}")))
            }
            _ => Err(ParseError::new(
                pos,
                format!("unknown function or keyword {name:?}: expected a stream selector, an aggregation or a number"),
            )),
        }
    }

    fn label_list(&mut self) -> PResult<Vec<String>> {
        let open = self.expect_sym("(", "")?;
        let mut labels = Vec::new();
        if self.eat_sym(")") {
            return Ok(labels);
        }
        loop {
            labels.push(self.ident("a label name")?.0);
            if self.eat_sym(")") {
                return Ok(labels);
            }
            self.expect_sym(
                ",",
                &format!(" or \")\" to close the list opened at {open}"),
            )?;
        }
    }

    fn grouping(&mut self) -> PResult<Option<Grouping>> {
        let without = if self.eat_ident("by") {
            false
        } else if self.eat_ident("without") {
            true
        } else {
            return Ok(None);
        };
        Ok(Some(Grouping {
            without,
            labels: self.label_list()?,
        }))
    }

    fn vector_agg(&mut self, op: VectorOp, pos: usize) -> PResult<(MetricExpr, usize)> {
        let before = self.grouping()?;
        let open = self.expect_sym("(", &format!(" after {}", op.name()))?;
        let param = if op.takes_param() {
            let ppos = self.pos();
            let k = self.number(&format!("the k of {}(k, ...)", op.name()))?;
            if k < 1.0 || k.fract() != 0.0 || k > u32::MAX as f64 {
                return Err(ParseError::new(
                    ppos,
                    format!(
                        "invalid parameter {k} for {}: must be an integer greater than 0",
                        op.name()
                    ),
                ));
            }
            self.expect_sym(",", &format!(" after the k of {}", op.name()))?;
            Some(k)
        } else {
            None
        };
        self.enter(open)?;
        let inner_pos = self.pos();
        let (inner, d) = self.expr(0)?;
        self.leave();
        self.expect_sym(")", &format!(" to close {}( opened at {open}", op.name()))?;
        let after = self.grouping()?;
        if before.is_some() && after.is_some() {
            return Err(ParseError::new(pos, "by/without may be given only once"));
        }
        let grouping = before.or(after);
        if grouping.is_some() && matches!(op, VectorOp::Sort | VectorOp::SortDesc) {
            return Err(ParseError::new(
                pos,
                format!("{} does not take by/without", op.name()),
            ));
        }
        let inner = match inner {
            Expr::Metric(m) if !m.is_scalar() => m,
            Expr::Metric(_) => {
                return Err(ParseError::new(inner_pos, format!("{} expects a vector, found a scalar", op.name())))
            }
            Expr::Log(_) => {
                return Err(ParseError::new(
                    inner_pos,
                    format!("{} needs a metric expression such as count_over_time({{...}}[5m]), found a log query", op.name()),
                ))
            }
        };
        let agg = VectorAgg {
            op,
            param,
            grouping,
            inner: Box::new(inner),
        };
        Ok((MetricExpr::Aggregate(agg), d + 1))
    }

    fn label_replace(&mut self, pos: usize) -> PResult<(MetricExpr, usize)> {
        let open = self.expect_sym("(", " after label_replace")?;
        self.enter(open)?;
        let inner_pos = self.pos();
        let (inner, d) = self.expr(0)?;
        self.leave();
        let Expr::Metric(inner) = inner else {
            return Err(ParseError::new(
                inner_pos,
                "label_replace needs a metric expression, found a log query",
            ));
        };
        let mut args = Vec::new();
        for what in ["destination label", "replacement", "source label", "regex"] {
            self.expect_sym(",", " between label_replace's arguments")?;
            args.push(self.string(&format!("the {what} (a string)"))?);
        }
        self.expect_sym(")", &format!(" to close label_replace( opened at {pos}"))?;
        if crate::matcher::anchored(&args[3].0).is_err() {
            return Err(ParseError::new(
                args[3].1,
                format!("invalid regex {:?}", args[3].0),
            ));
        }
        if !is_label_name(&args[0].0) {
            return Err(ParseError::new(
                args[0].1,
                format!("invalid destination label name {:?}", args[0].0),
            ));
        }
        let mut it = args.into_iter().map(|a| a.0);
        let mut next = || it.next().unwrap_or_default();
        let lr = LabelReplace {
            inner,
            dst: next(),
            replacement: next(),
            src: next(),
            regex: next(),
        };
        Ok((MetricExpr::LabelReplace(Box::new(lr)), d + 1))
    }

    fn range_agg(&mut self, op: RangeOp, pos: usize) -> PResult<MetricExpr> {
        let open = self.expect_sym("(", &format!(" after {}", op.name()))?;
        let param = if op == RangeOp::QuantileOverTime {
            let q = self.number("the quantile of quantile_over_time(q, ...)")?;
            self.expect_sym(",", " after the quantile")?;
            Some(q)
        } else {
            None
        };
        let (log, unwrap, range, offset_ns) = self.log_range(op)?;
        self.expect_sym(")", &format!(" to close {}( opened at {open}", op.name()))?;
        let grouping = self.grouping()?;
        if grouping.is_some() && !op.allows_grouping() {
            return Err(ParseError::new(
                pos,
                format!("grouping not allowed for {} aggregation", op.name()),
            ));
        }
        if unwrap.is_some() && !op.allows_unwrap() {
            return Err(ParseError::new(
                pos,
                format!("invalid aggregation {} with unwrap", op.name()),
            ));
        }
        if unwrap.is_none() && !op.allows_no_unwrap() {
            return Err(ParseError::new(
                pos,
                format!(
                    "invalid aggregation {} without unwrap: add | unwrap <label> before the range",
                    op.name()
                ),
            ));
        }
        Ok(MetricExpr::Range(Box::new(RangeAgg {
            op,
            param,
            log,
            unwrap,
            range,
            offset_ns,
            grouping,
        })))
    }

    /// `{..} |= "x" | unwrap y [5m] offset 1m`, also with the range right after the
    /// selector or the log query in parentheses.
    fn log_range(&mut self, op: RangeOp) -> PResult<(LogExpr, Option<Unwrap>, RangeSpan, i64)> {
        let paren = self.is_sym("(");
        let open = self.pos();
        if paren {
            self.bump();
        }
        let selector = self.selector()?;
        let early = if !paren && matches!(self.peek(), Tok::Range(_)) {
            Some(self.range_and_offset()?)
        } else {
            None
        };
        let (pipeline, unwrap) = self.pipeline(true)?;
        if paren {
            self.expect_sym(")", &format!(" to close the parenthesis opened at {open}"))?;
        }
        let (range, offset) = match early {
            Some(r) => r,
            None if matches!(self.peek(), Tok::Range(_)) => self.range_and_offset()?,
            None => return Err(self.unexpected(&format!("a range such as [5m] for {}", op.name()))),
        };
        Ok((LogExpr { selector, pipeline }, unwrap, range, offset))
    }

    fn range_and_offset(&mut self) -> PResult<(RangeSpan, i64)> {
        let pos = self.pos();
        let Tok::Range(text) = self.bump().tok else {
            return Err(ParseError::new(pos, "expected a range"));
        };
        let range = if text == "$__auto" {
            RangeSpan::Auto
        } else {
            match parse_range_duration(&text) {
                Some(ns) if ns > 0 => RangeSpan::Fixed(ns),
                _ => {
                    return Err(ParseError::new(
                        pos,
                        format!("invalid range [{text}]: expected a positive duration such as [5m], [1h30m] or [$__auto]"),
                    ))
                }
            }
        };
        let offset = if self.eat_ident("offset") {
            let opos = self.pos();
            match self.peek().clone() {
                Tok::Num(t) => {
                    self.bump();
                    parse_range_duration(&t).ok_or_else(|| {
                        ParseError::new(
                            opos,
                            format!("invalid offset {t:?}: expected a duration such as 5m"),
                        )
                    })?
                }
                Tok::Sym("-") => return Err(unsupported(opos, "negative offsets")),
                _ => return Err(self.unexpected("a duration after offset")),
            }
        } else {
            0
        };
        Ok((range, offset))
    }

    // ---- log queries ----------------------------------------------------------------

    fn log_expr(&mut self) -> PResult<LogExpr> {
        let selector = self.selector()?;
        let (pipeline, _) = self.pipeline(false)?;
        Ok(LogExpr { selector, pipeline })
    }

    fn selector(&mut self) -> PResult<Vec<Matcher>> {
        let open = self.expect_sym("{", " to open a stream selector")?;
        let mut matchers = Vec::new();
        if !self.is_sym("}") {
            loop {
                matchers.push(self.matcher(&["=", "!=", "=~", "!~"])?);
                if self.eat_sym(",") {
                    continue;
                }
                if self.is_sym("}") {
                    break;
                }
                return Err(self.unexpected(&format!(
                    "\",\" or \"}}\" to close the stream selector opened at {open}"
                )));
            }
        }
        self.bump();
        if !matchers.iter().any(|m| !m.matches("")) {
            return Err(ParseError::new(
                open,
                "queries require at least one regexp or equality matcher that does not have an empty-compatible value. For instance, app=~\".*\" does not meet this requirement, but app=~\".+\" will",
            ));
        }
        Ok(matchers)
    }

    /// `name op "value"` with one of `ops`.
    fn matcher(&mut self, ops: &[&str]) -> PResult<Matcher> {
        let (name, _) = self.ident("a label name")?;
        let op = match self.peek() {
            Tok::Sym(s) if ops.contains(s) => match *s {
                "=" | "==" => MatchOp::Eq,
                "!=" => MatchOp::Neq,
                "=~" => MatchOp::Re,
                _ => MatchOp::Nre,
            },
            _ => return Err(self.unexpected("a matcher operator (=, !=, =~ or !~)")),
        };
        self.bump();
        let (value, vpos) = self.string("a string value (\"...\" or `...`)")?;
        Matcher::new(name, op, value).map_err(|e| ParseError::new(vpos, e.message))
    }

    /// Stages until something that is not one; `unwrap` is accepted when `allow_unwrap`.
    fn pipeline(&mut self, allow_unwrap: bool) -> PResult<(Vec<Stage>, Option<Unwrap>)> {
        let mut stages = Vec::new();
        loop {
            let pos = self.pos();
            let op = match self.peek() {
                Tok::Sym("|=") => LineFilterOp::Contains,
                Tok::Sym("!=") => LineFilterOp::NotContains,
                Tok::Sym("|~") => LineFilterOp::Match,
                Tok::Sym("!~") => LineFilterOp::NotMatch,
                Tok::Sym("|>" | "!>") => {
                    return Err(unsupported(pos, "pattern line filters (|> and !>)"))
                }
                Tok::Sym("|") => {
                    self.bump();
                    if self.is_ident("unwrap") {
                        if !allow_unwrap {
                            return Err(ParseError::new(
                                self.pos(),
                                "unwrap is only allowed inside a range aggregation such as sum_over_time(... | unwrap x [5m])",
                            ));
                        }
                        self.bump();
                        return Ok((stages, Some(self.unwrap()?)));
                    }
                    stages.push(self.stage()?);
                    continue;
                }
                _ => return Ok((stages, None)),
            };
            self.bump();
            stages.push(self.line_filter(op)?);
        }
    }

    fn line_filter(&mut self, op: LineFilterOp) -> PResult<Stage> {
        let mut values = Vec::new();
        loop {
            if self.is_ident("ip") {
                return Err(unsupported(self.pos(), "ip() line filters"));
            }
            let (v, vpos) = self.string("a string after a line filter")?;
            if matches!(op, LineFilterOp::Match | LineFilterOp::NotMatch) {
                regex::Regex::new(&v)
                    .map_err(|e| ParseError::new(vpos, format!("invalid regex {v:?}: {e}")))?;
            }
            values.push(v);
            if self.is_ident("or") && matches!(self.peek_at(1), Tok::Str(_)) {
                self.bump();
                continue;
            }
            return Ok(Stage::LineFilter { op, values });
        }
    }

    fn unwrap(&mut self) -> PResult<Unwrap> {
        let conv = match self.peek() {
            Tok::Ident(s) if matches!(self.peek_at(1), Tok::Sym("(")) => match s.as_str() {
                "duration" => Some(Conversion::Duration),
                "duration_seconds" => Some(Conversion::DurationSeconds),
                "bytes" => Some(Conversion::Bytes),
                other => {
                    return Err(ParseError::new(
                        self.pos(),
                        format!("unknown unwrap conversion {other:?}: expected duration, duration_seconds or bytes"),
                    ))
                }
            },
            _ => None,
        };
        let (label, conversion) = match conv {
            Some(c) => {
                self.bump();
                self.bump();
                let (label, _) = self.ident("the label to unwrap")?;
                self.expect_sym(")", " to close the unwrap conversion")?;
                (label, c)
            }
            None => (self.ident("the label to unwrap")?.0, Conversion::Float),
        };
        let mut post_filters = Vec::new();
        while self.eat_sym("|") {
            if !matches!(self.peek(), Tok::Ident(_) | Tok::Sym("(")) {
                return Err(
                    self.unexpected("a label filter (only label filters may follow unwrap)")
                );
            }
            post_filters.push(self.label_filter_or()?);
        }
        Ok(Unwrap {
            label,
            conversion,
            post_filters,
        })
    }

    fn stage(&mut self) -> PResult<Stage> {
        let pos = self.pos();
        let name = match self.peek() {
            Tok::Ident(s) => s.clone(),
            Tok::Sym("(") => return Ok(Stage::LabelFilter(self.label_filter_or()?)),
            _ => return Err(self.unexpected("a parser, a formatter or a label filter after \"|\"")),
        };
        // As in Loki, stage names are keywords: `| unpack != "x"` is a stage and a line
        // filter, never a label filter on a label named "unpack".
        if !STAGE_KEYWORDS.contains(&name.as_str()) {
            return Ok(Stage::LabelFilter(self.label_filter_or()?));
        }
        self.bump();
        Ok(match name.as_str() {
            "json" => Stage::Json {
                fields: self.extractions(true)?,
            },
            "logfmt" => {
                if let Tok::Flag(f) = self.peek() {
                    return Err(unsupported(self.pos(), &format!("logfmt --{f}")));
                }
                Stage::Logfmt {
                    fields: self.extractions(false)?,
                }
            }
            "regexp" => self.regexp_stage()?,
            "pattern" => {
                let (p, ppos) = self.string("a pattern string")?;
                crate::pipeline::Pattern::parse(&p).map_err(|m| ParseError::new(ppos, m))?;
                Stage::Pattern { pattern: p }
            }
            "unpack" => Stage::Unpack,
            "decolorize" => Stage::Decolorize,
            "line_format" => {
                let (t, tpos) = self.string("a template string")?;
                crate::template::Template::parse(&t).map_err(|m| ParseError::new(tpos, m))?;
                Stage::LineFormat { template: t }
            }
            "label_format" => self.label_format()?,
            "drop" => Stage::Drop {
                labels: self.label_sels()?,
            },
            "keep" => Stage::Keep {
                labels: self.label_sels()?,
            },
            "distinct" => return Err(unsupported(pos, "the distinct stage")),
            _ => return Err(ParseError::new(pos, "unwrap must be the last stage")),
        })
    }

    fn regexp_stage(&mut self) -> PResult<Stage> {
        let (p, ppos) = self.string("a regex string")?;
        let re = regex::Regex::new(&p)
            .map_err(|e| ParseError::new(ppos, format!("invalid regex {p:?}: {e}")))?;
        let names: Vec<&str> = re.capture_names().flatten().collect();
        if names.is_empty() {
            return Err(ParseError::new(
                ppos,
                "at least one named capture must be supplied, e.g. (?P<name>re)",
            ));
        }
        if let Some(bad) = names.iter().find(|n| !is_label_name(n)) {
            return Err(ParseError::new(
                ppos,
                format!("invalid extracted label name {bad:?}"),
            ));
        }
        Ok(Stage::Regexp { pattern: p })
    }

    fn at_list_item(&self) -> bool {
        matches!(self.peek(), Tok::Ident(s) if !KEYWORDS.contains(&s.as_str()))
    }

    fn extractions(&mut self, json: bool) -> PResult<Vec<Extraction>> {
        let mut out = Vec::new();
        if !self.at_list_item() {
            return Ok(out);
        }
        loop {
            let (label, _) = self.ident("a label name")?;
            let path = if self.eat_sym("=") {
                let (path, ppos) = self.string("a string expression")?;
                if json {
                    crate::pipeline::parse_json_path(&path)
                        .map_err(|m| ParseError::new(ppos, m))?;
                }
                path
            } else {
                label.clone()
            };
            out.push(Extraction { label, path });
            if !self.eat_sym(",") {
                return Ok(out);
            }
        }
    }

    fn label_format(&mut self) -> PResult<Stage> {
        let mut ops: Vec<LabelFormatOp> = Vec::new();
        loop {
            let (to, tpos) = self.ident("a label name")?;
            self.expect_sym("=", " after the label name in label_format")?;
            let op = match self.peek().clone() {
                Tok::Ident(from) => {
                    self.bump();
                    LabelFormatOp::Rename {
                        to: to.clone(),
                        from,
                    }
                }
                Tok::Str(t) => {
                    let spos = self.bump().pos;
                    crate::template::Template::parse(&t).map_err(|m| ParseError::new(spos, m))?;
                    LabelFormatOp::Template {
                        to: to.clone(),
                        template: t,
                    }
                }
                _ => return Err(self.unexpected("a label name or a template string")),
            };
            let dup = ops.iter().any(|o| match o {
                LabelFormatOp::Rename { to: t, .. } | LabelFormatOp::Template { to: t, .. } => {
                    *t == to
                }
            });
            if dup {
                return Err(ParseError::new(
                    tpos,
                    format!("multiple label name {to:?} in label_format"),
                ));
            }
            ops.push(op);
            if !self.eat_sym(",") {
                return Ok(Stage::LabelFormat { ops });
            }
        }
    }

    fn label_sels(&mut self) -> PResult<Vec<LabelSel>> {
        let mut out = Vec::new();
        loop {
            if matches!(self.peek_at(1), Tok::Sym("=" | "!=" | "=~" | "!~")) {
                out.push(LabelSel::Matcher(self.matcher(&["=", "!=", "=~", "!~"])?));
            } else {
                out.push(LabelSel::Name(self.ident("a label name")?.0));
            }
            if !self.eat_sym(",") {
                return Ok(out);
            }
        }
    }

    // ---- label filters --------------------------------------------------------------

    fn label_filter_or(&mut self) -> PResult<LabelFilter> {
        let mut items = vec![self.label_filter_and()?];
        while self.is_ident("or") {
            self.bump();
            items.push(self.label_filter_and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            LabelFilter::Or(items)
        })
    }

    fn label_filter_and(&mut self) -> PResult<LabelFilter> {
        let mut items = vec![self.label_filter_primary()?];
        loop {
            let juxtaposed = self.at_list_item()
                && matches!(
                    self.peek_at(1),
                    Tok::Sym("=" | "==" | "!=" | "=~" | "!~" | ">" | ">=" | "<" | "<=")
                );
            if self.eat_ident("and") || self.eat_sym(",") || juxtaposed {
                items.push(self.label_filter_primary()?);
            } else {
                break;
            }
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            LabelFilter::And(items)
        })
    }

    fn label_filter_primary(&mut self) -> PResult<LabelFilter> {
        let pos = self.pos();
        if self.eat_sym("(") {
            self.enter(pos)?;
            let inner = self.label_filter_or()?;
            self.leave();
            self.expect_sym(")", &format!(" to close the parenthesis opened at {pos}"))?;
            return Ok(inner);
        }
        let (name, _) = self.ident("a label name in a label filter")?;
        let op_pos = self.pos();
        let op = match self.peek() {
            Tok::Sym(s) => *s,
            _ => return Err(self.unexpected("a comparison operator")),
        };
        let cmp = match op {
            "=" | "==" => CmpOp::Eq,
            "!=" => CmpOp::Neq,
            ">" => CmpOp::Gt,
            ">=" => CmpOp::Ge,
            "<" => CmpOp::Lt,
            "<=" => CmpOp::Le,
            "=~" | "!~" => CmpOp::Eq,
            _ => return Err(self.unexpected("a comparison operator")),
        };
        self.bump();
        match self.peek().clone() {
            Tok::Str(v) if matches!(op, "=" | "==" | "!=" | "=~" | "!~") => {
                let vpos = self.bump().pos;
                let mop = match op {
                    "=" | "==" => MatchOp::Eq,
                    "!=" => MatchOp::Neq,
                    "=~" => MatchOp::Re,
                    _ => MatchOp::Nre,
                };
                let m = Matcher::new(name, mop, v).map_err(|e| ParseError::new(vpos, e.message))?;
                Ok(LabelFilter::Match(m))
            }
            Tok::Ident(f) if f == "ip" => Err(unsupported(self.pos(), "ip() label filters")),
            Tok::Num(_) | Tok::Sym("-") if !matches!(op, "=~" | "!~") => self.typed_filter(name, cmp),
            _ => Err(ParseError::new(
                op_pos,
                format!("expected a value after {name}{op}: a string for =, !=, =~, !~, or a number, duration (1.5s) or size (10KB)"),
            )),
        }
    }

    fn typed_filter(&mut self, name: String, op: CmpOp) -> PResult<LabelFilter> {
        let pos = self.pos();
        let negative = self.eat_sym("-");
        let Tok::Num(text) = self.peek().clone() else {
            return Err(self.unexpected("a number, duration or size"));
        };
        self.bump();
        if let Some(v) = parse_plain_number(&text) {
            let value = if negative { -v } else { v };
            return Ok(LabelFilter::Number { name, op, value });
        }
        if let Ok(ns) = parse_go_duration(&text) {
            let value_ns = if negative { -ns } else { ns };
            return Ok(LabelFilter::Duration { name, op, value_ns });
        }
        match parse_bytes(&text) {
            Ok(value) if !negative => Ok(LabelFilter::Bytes { name, op, value }),
            _ => Err(ParseError::new(
                pos,
                format!("invalid value {text:?}: expected a number, a duration (1.5s, 1h30m) or a size (10KB, 1MiB)"),
            )),
        }
    }
}

/// A plain decimal number (`200`, `1.5`, `1e3`), not a duration or size.
fn parse_plain_number(text: &str) -> Option<f64> {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if plain {
        text.parse::<f64>().ok()
    } else {
        None
    }
}

pub(crate) fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn metric_operand(e: Expr, pos: usize, op: BinOp) -> PResult<MetricExpr> {
    match e {
        Expr::Metric(m) => Ok(m),
        Expr::Log(_) => Err(ParseError::new(
            pos,
            format!("a log query cannot be an operand of {:?}: wrap it in a metric aggregation such as count_over_time(...[5m])", op.as_str()),
        )),
    }
}

fn check_binary(b: &BinaryExpr, pos: usize) -> PResult<()> {
    let scalars = (b.lhs.is_scalar(), b.rhs.is_scalar());
    let name = b.op.as_str();
    if b.return_bool && !b.op.is_comparison() {
        return Err(ParseError::new(
            pos,
            "bool modifier can only be used on comparison operators",
        ));
    }
    if b.op.is_comparison() && scalars == (true, true) && !b.return_bool {
        return Err(ParseError::new(
            pos,
            "comparisons between scalars must use the bool modifier",
        ));
    }
    if b.op.is_set() && (scalars.0 || scalars.1) {
        return Err(ParseError::new(
            pos,
            format!("set operator {name:?} not allowed in binary scalar expression"),
        ));
    }
    if let Some(m) = &b.matching {
        if scalars.0 || scalars.1 {
            return Err(ParseError::new(
                pos,
                "vector matching (on/ignoring) only allowed between vectors",
            ));
        }
        if m.group.is_some() && b.op.is_set() {
            return Err(ParseError::new(
                pos,
                format!("no grouping allowed for {name:?} operation"),
            ));
        }
    }
    Ok(())
}
