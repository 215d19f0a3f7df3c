//! The query language: a hand-written recursive-descent parser with byte positions in
//! every error, the AST it produces, and a printer that round-trips that AST.
//!
//! The language is described for users in `docs/query-language.md`. The grammar:
//!
//! ```text
//! query    := ws* EOF                     (match all)
//!           | or_expr ws* EOF
//! or_expr  := and_expr ( "OR" and_expr )*
//! and_expr := unary ( "AND"? unary )*     (adjacent clauses are ANDed)
//! unary    := "NOT" unary | "+" primary | "-" primary | primary
//! primary  := "(" or_expr ")" | "*" | quoted | name ":" value | word
//! quoted   := '"' chars '"' ( "~" digits | "*" )?
//! value    := quoted | word
//! word     := ( char | "\" any )+ "*"?    (a trailing "*" makes a prefix)
//! ```
//!
//! Precedence, tightest first: `NOT`/`+`/`-`, `AND` (explicit or implicit), `OR`.

use std::fmt;

use weir_proto::Level;

/// The standard record fields that hold one exact value each (no tokenization).
pub const EXACT_FIELDS: [&str; 7] = [
    "level",
    "service",
    "namespace",
    "pod",
    "cluster",
    "trace_id",
    "span_id",
];

/// The full-text field. A clause without a field searches it too.
pub const BODY_FIELD: &str = "body";

/// Deepest nesting of parentheses and `NOT`s accepted, so that hostile input cannot
/// overflow the stack of the recursive-descent parser.
pub const MAX_NESTING: usize = 64;

/// A parsed query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// Every record (the empty query, or `*`).
    All,
    /// One clause: a word, phrase or prefix, in the body or in a named field.
    Match(Match),
    /// Every child matches (`a AND b`, `a b`, `+a +b`). At least two children.
    And(Vec<Query>),
    /// At least one child matches (`a OR b`). At least two children.
    Or(Vec<Query>),
    /// The child does not match (`NOT a`, `-a`).
    Not(Box<Query>),
}

/// One leaf clause: what to look for, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    /// `None` for the body; `Some("body")` is the same. A name in [`EXACT_FIELDS`] is that
    /// standard field; any other name is a stream label or a record attribute.
    pub field: Option<String>,
    /// What to look for.
    pub pattern: Pattern,
}

/// What a clause looks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// A bare word (`timeout`, `service:api`). In the body it is tokenized, and a word that
    /// yields several tokens (`user-service`) is searched as a phrase. In an exact field or
    /// label it is the whole value.
    Word(String),
    /// A word ending in `*` (`time*`, `pod:api-7f*`): the body word or field value starts
    /// with this (never empty).
    Prefix(String),
    /// A quoted string (`"connection reset"~2`, `service:"my api"`). In the body: the
    /// tokens in order with at most `slop` moves; in a field: the exact value (slop 0).
    Phrase {
        /// The text between the quotes, unescaped.
        text: String,
        /// `~N` after the closing quote; 0 without.
        slop: u32,
    },
    /// A quoted string followed by `*` (`"quick bro"*`): the phrase whose last word is a
    /// prefix. In an exact field, a prefix of the value.
    PhrasePrefix(String),
    /// A word between two `*` (`*clin*`): a body word containing it (letters and digits
    /// only, lower-cased). Body only.
    Infix(String),
}

/// A syntax error, with the byte offset in the query where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryError {
    /// Byte offset into the query string.
    pub position: usize,
    /// What was wrong, and what to write instead.
    pub message: String,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at position {}: {}", self.position, self.message)
    }
}

impl std::error::Error for QueryError {}

/// Parses a query string into a [`Query`].
///
/// # Errors
///
/// A [`QueryError`] with the byte position of the first problem: unbalanced parentheses
/// or quotes, a field with an empty value, an operator with nothing on one side, a slop
/// that is not a number, a `*` inside a word, an unknown level, nesting deeper than
/// [`MAX_NESTING`].
///
/// ```
/// use weir_index::{parse_query, Query};
/// assert_eq!(parse_query("").unwrap(), Query::All);
/// let err = parse_query("(error OR warn").unwrap_err();
/// assert_eq!(err.to_string(), "at position 14: expected ')' to close the '(' at position 0");
/// ```
pub fn parse_query(q: &str) -> Result<Query, QueryError> {
    let mut p = Parser {
        src: q,
        pos: 0,
        depth: 0,
    };
    p.skip_ws();
    if p.at_end() {
        return Ok(Query::All);
    }
    let query = p.parse_or()?;
    p.skip_ws();
    if !p.at_end() {
        // parse_or only stops early at a ')' it does not own.
        return Err(p.err_at(p.pos, "unexpected ')' with no matching '('"));
    }
    Ok(query)
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Keyword {
    And,
    Or,
    Not,
}

impl Keyword {
    fn as_str(self) -> &'static str {
        match self {
            Keyword::And => "AND",
            Keyword::Or => "OR",
            Keyword::Not => "NOT",
        }
    }
}

/// A bare token as read: the unescaped text and whether it ended in an unescaped `*`.
struct Bare {
    text: String,
    /// Ends in an unescaped `*`.
    star: bool,
    /// Starts with an unescaped `*` followed by more (`*clin*`).
    leading: bool,
}

fn is_boundary(c: char) -> bool {
    c.is_whitespace() || c == '(' || c == ')' || c == '"'
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if !c.is_whitespace() {
                break;
            }
            self.pos += c.len_utf8();
        }
    }

    fn err_at(&self, position: usize, message: impl Into<String>) -> QueryError {
        QueryError {
            position,
            message: message.into(),
        }
    }

    /// The keyword at the cursor, if any: upper case, followed by a boundary or the end.
    fn keyword(&self) -> Option<Keyword> {
        for kw in [Keyword::And, Keyword::Or, Keyword::Not] {
            if let Some(after) = self.rest().strip_prefix(kw.as_str()) {
                if after.chars().next().is_none_or(is_boundary) {
                    return Some(kw);
                }
            }
        }
        None
    }

    /// Whether a clause can start at the cursor (not the end, a ')' or a binary operator).
    fn clause_starts_here(&self) -> bool {
        !(self.at_end()
            || self.peek() == Some(')')
            || matches!(self.keyword(), Some(Keyword::And | Keyword::Or)))
    }

    fn enter(&mut self, at: usize) -> Result<(), QueryError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.err_at(
                at,
                format!("query nests deeper than {MAX_NESTING} levels; simplify it"),
            ));
        }
        Ok(())
    }

    fn parse_or(&mut self) -> Result<Query, QueryError> {
        let mut children = vec![self.parse_and()?];
        loop {
            self.skip_ws();
            if self.keyword() != Some(Keyword::Or) {
                break;
            }
            let at = self.pos;
            self.pos += 2;
            self.skip_ws();
            if !self.clause_starts_here() {
                return Err(self.err_at(at, "expected a term after 'OR'"));
            }
            children.push(self.parse_and()?);
        }
        Ok(if children.len() == 1 {
            children.remove(0)
        } else {
            Query::Or(children)
        })
    }

    fn parse_and(&mut self) -> Result<Query, QueryError> {
        let mut children = vec![self.parse_unary()?];
        loop {
            self.skip_ws();
            if self.at_end() || self.peek() == Some(')') || self.keyword() == Some(Keyword::Or) {
                break;
            }
            if self.keyword() == Some(Keyword::And) {
                let at = self.pos;
                self.pos += 3;
                self.skip_ws();
                if !self.clause_starts_here() {
                    return Err(self.err_at(at, "expected a term after 'AND'"));
                }
            }
            children.push(self.parse_unary()?);
        }
        Ok(if children.len() == 1 {
            children.remove(0)
        } else {
            Query::And(children)
        })
    }

    fn parse_unary(&mut self) -> Result<Query, QueryError> {
        self.skip_ws();
        let at = self.pos;
        match self.keyword() {
            Some(Keyword::Not) => {
                self.pos += 3;
                self.skip_ws();
                if !self.clause_starts_here() {
                    return Err(self.err_at(at, "expected a term after 'NOT'"));
                }
                self.enter(at)?;
                let inner = self.parse_unary()?;
                self.depth -= 1;
                return Ok(Query::Not(Box::new(inner)));
            }
            Some(kw @ (Keyword::And | Keyword::Or)) => {
                return Err(self.err_at(
                    at,
                    format!(
                        "'{}' needs a term on both sides (to search the word, write it in lower case)",
                        kw.as_str()
                    ),
                ));
            }
            None => {}
        }
        match self.peek() {
            Some(op @ ('+' | '-')) => {
                self.pos += 1;
                if self.peek().is_none_or(|c| c.is_whitespace() || c == ')') {
                    return Err(self.err_at(
                        at,
                        format!("expected a term right after '{op}' (no space in between)"),
                    ));
                }
                if matches!(self.peek(), Some('+' | '-')) {
                    return Err(self.err_at(self.pos, "unexpected second '+' or '-'"));
                }
                let inner = self.parse_primary()?;
                Ok(if op == '-' {
                    Query::Not(Box::new(inner))
                } else {
                    inner
                })
            }
            Some(')') => Err(self.err_at(at, "unexpected ')' with no matching '('")),
            None => Err(self.err_at(at, "expected a term")),
            _ => self.parse_primary(),
        }
    }

    fn parse_primary(&mut self) -> Result<Query, QueryError> {
        let at = self.pos;
        let q = match self.peek() {
            Some('(') => {
                self.pos += 1;
                self.enter(at)?;
                self.skip_ws();
                if self.peek() == Some(')') {
                    return Err(self.err_at(at, "empty parentheses"));
                }
                if self.at_end() {
                    return Err(self.err_at(
                        self.pos,
                        format!("expected ')' to close the '(' at position {at}"),
                    ));
                }
                let inner = self.parse_or()?;
                self.skip_ws();
                if self.peek() != Some(')') {
                    return Err(self.err_at(
                        self.pos,
                        format!("expected ')' to close the '(' at position {at}"),
                    ));
                }
                self.pos += 1;
                self.depth -= 1;
                inner
            }
            Some('"') => {
                let pattern = self.parse_quoted(None)?;
                Query::Match(Match {
                    field: None,
                    pattern,
                })
            }
            _ => self.parse_field_or_word()?,
        };
        self.expect_boundary()?;
        Ok(q)
    }

    /// After a clause: whitespace, ')' or the end.
    fn expect_boundary(&self) -> Result<(), QueryError> {
        match self.peek() {
            None | Some(')') => Ok(()),
            Some(c) if c.is_whitespace() => Ok(()),
            Some(c) => Err(self.err_at(
                self.pos,
                format!("unexpected '{c}': separate terms with a space"),
            )),
        }
    }

    /// Reads a bare token. Stops (unescaped) at whitespace, parentheses, quotes, and also
    /// ':' when `stop_at_colon`. A backslash escapes any character.
    fn read_bare(&mut self, stop_at_colon: bool) -> Result<Bare, QueryError> {
        let mut text = String::new();
        let mut star = false;
        // `*word*`: an infix; the leading star is taken here, the trailing one below.
        let leading = self.peek() == Some('*')
            && self
                .rest()
                .chars()
                .nth(1)
                .is_some_and(|c| !is_boundary(c) && c != '*' && !(stop_at_colon && c == ':'));
        if leading {
            self.pos += 1;
        }
        while let Some(c) = self.peek() {
            if is_boundary(c) || (stop_at_colon && c == ':') {
                break;
            }
            let at = self.pos;
            self.pos += c.len_utf8();
            if star {
                return Err(self.err_at(
                    at - 1,
                    "'*' is only supported at the end of a word (a prefix such as time*)",
                ));
            }
            match c {
                '\\' => match self.bump() {
                    Some(e) => text.push(e),
                    None => {
                        return Err(self.err_at(at, "'\\' at the end of the query escapes nothing"))
                    }
                },
                '*' => star = true,
                _ => text.push(c),
            }
        }
        Ok(Bare {
            text,
            star,
            leading,
        })
    }

    fn parse_field_or_word(&mut self) -> Result<Query, QueryError> {
        let at = self.pos;
        let name = self.read_bare(true)?;
        if self.peek() != Some(':') {
            if name.text.is_empty() && name.star {
                return Ok(Query::All);
            }
            if name.text.is_empty() {
                // Only reachable on a stray ':' which is handled above, or an empty token.
                return Err(self.err_at(at, "expected a term"));
            }
            let pattern = match (name.leading, name.star) {
                (true, true) => infix(&name.text).map_err(|m| self.err_at(at, m))?,
                (true, false) => {
                    return Err(self.err_at(
                        at,
                        format!(
                        "a leading '*' needs a trailing one: *{}* finds a body word containing it",
                        name.text
                    ),
                    ))
                }
                (false, true) => Pattern::Prefix(name.text),
                (false, false) => Pattern::Word(name.text),
            };
            return Ok(Query::Match(Match {
                field: None,
                pattern,
            }));
        }
        // A field clause.
        if name.text.is_empty() {
            return Err(self.err_at(at, "expected a field name before ':'"));
        }
        if name.star || name.leading {
            return Err(self.err_at(at, "a field name cannot contain '*'"));
        }
        let field = name.text;
        self.pos += 1; // ':'
        let value_at = self.pos;
        let pattern = match self.peek() {
            None => {
                return Err(self.err_at(value_at, format!("empty value for field '{field}'")));
            }
            Some(c) if c.is_whitespace() || c == ')' => {
                return Err(self.err_at(value_at, format!("empty value for field '{field}'")));
            }
            Some('(') => {
                return Err(self.err_at(
                    value_at,
                    format!(
                        "grouping after '{field}:' is not supported; write ({field}:a OR {field}:b)"
                    ),
                ));
            }
            Some('"') => self.parse_quoted(Some(&field))?,
            Some(_) => {
                let value = self.read_bare(false)?;
                if value.leading {
                    return Err(self.err_at(
                        value_at,
                        format!(
                            "'{field}:*...' is not supported: a value can be matched whole or by prefix ({field}:a*)"
                        ),
                    ));
                }
                if value.text.is_empty() {
                    return Err(self.err_at(
                        value_at,
                        format!("'{field}:*' is not supported; give a prefix such as {field}:a*"),
                    ));
                }
                if value.star {
                    Pattern::Prefix(value.text)
                } else {
                    Pattern::Word(value.text)
                }
            }
        };
        let pattern = check_field_pattern(&field, pattern).map_err(|m| self.err_at(value_at, m))?;
        Ok(Query::Match(Match {
            field: Some(field),
            pattern,
        }))
    }

    /// At a '"': the quoted text and its `~N` or `*` suffix.
    fn parse_quoted(&mut self, field: Option<&str>) -> Result<Pattern, QueryError> {
        let open = self.pos;
        self.pos += 1;
        let mut text = String::new();
        loop {
            match self.bump() {
                None => {
                    return Err(self.err_at(open, "unterminated quote: add the closing '\"'"));
                }
                Some('"') => break,
                Some('\\') => match self.bump() {
                    Some(e) => text.push(e),
                    None => {
                        return Err(self.err_at(open, "unterminated quote: add the closing '\"'"));
                    }
                },
                Some(c) => text.push(c),
            }
        }
        if text.is_empty() {
            return Err(self.err_at(
                open,
                match field {
                    Some(f) => format!("empty value for field '{f}'"),
                    None => "empty phrase".to_string(),
                },
            ));
        }
        match self.peek() {
            Some('~') => {
                let tilde = self.pos;
                self.pos += 1;
                let digits_at = self.pos;
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.pos += 1;
                }
                let digits = &self.src[digits_at..self.pos];
                if digits.is_empty() {
                    return Err(
                        self.err_at(digits_at, "expected a number after '~' (a slop such as ~2)")
                    );
                }
                let slop: u32 = digits
                    .parse()
                    .map_err(|_| self.err_at(digits_at, "slop after '~' is too large"))?;
                if self.peek() == Some('*') {
                    return Err(
                        self.err_at(self.pos, "a phrase prefix (\"...\"*) cannot have a slop")
                    );
                }
                if field.is_some_and(|f| f != BODY_FIELD) {
                    return Err(
                        self.err_at(tilde, "a slop (~N) only applies to phrases in the body")
                    );
                }
                Ok(Pattern::Phrase { text, slop })
            }
            Some('*') => {
                self.pos += 1;
                Ok(Pattern::PhrasePrefix(text))
            }
            _ => Ok(Pattern::Phrase { text, slop: 0 }),
        }
    }
}

/// The pattern of `*text*`: letters and digits only (a body word cannot hold anything
/// else), lower-cased as the body is indexed.
fn infix(text: &str) -> Result<Pattern, String> {
    if text.chars().all(char::is_alphanumeric) {
        Ok(Pattern::Infix(text.to_lowercase()))
    } else {
        Err(format!(
            "*{text}* is refused: a body word holds only letters and digits, so the text between              the stars must too (search \"{text}\" as a phrase instead)"
        ))
    }
}

/// Field-specific checks done at parse time so that errors carry a position: `level`
/// values must name a level or one of its aliases ([`Level::from_alias`], the table ingest
/// uses; normalised to the canonical name); a
/// trace or span id is looked up whole, never by prefix ([`crate::idkey`]).
fn check_field_pattern(field: &str, pattern: Pattern) -> Result<Pattern, String> {
    if matches!(field, "trace_id" | "span_id") {
        return match pattern {
            Pattern::Prefix(v) | Pattern::PhrasePrefix(v) => Err(format!(
                "{field} is looked up whole: '{field}:{v}*' is not supported; give the whole id"
            )),
            p => Ok(p),
        };
    }
    if field != "level" {
        return Ok(pattern);
    }
    let known = || {
        Level::ALL
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match pattern {
        Pattern::Word(v) | Pattern::Phrase { text: v, .. } => match Level::from_alias(&v) {
            Some(l) => Ok(Pattern::Word(l.as_str().to_string())),
            None => Err(format!(
                "unknown level '{v}' (expected one of {}, or an alias such as warning, \
                     err or critical)",
                known()
            )),
        },
        Pattern::Prefix(v) | Pattern::PhrasePrefix(v) => Ok(Pattern::Prefix(v.to_lowercase())),
        Pattern::Infix(v) => Err(format!("'level:*{v}*' is not supported")),
    }
}

// ---------------------------------------------------------------------------------------
// Printer

fn push_escaped_bare(out: &mut String, s: &str, escape_colon: bool) {
    for (i, c) in s.chars().enumerate() {
        let special = is_boundary(c)
            || c == '\\'
            || c == '*'
            || (escape_colon && c == ':')
            || (i == 0 && (c == '+' || c == '-'));
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    // A bare token equal to a keyword would be read as the operator.
    if matches!(s, "AND" | "OR" | "NOT") {
        out.insert(out.len() - s.len(), '\\');
    }
}

fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

impl fmt::Display for Query {
    /// Prints the query in the query language; parsing the output gives back an equal
    /// [`Query`] (nested `AND`/`OR` are parenthesised).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        print_query(self, &mut out);
        f.write_str(&out)
    }
}

fn print_child(q: &Query, out: &mut String) {
    if matches!(q, Query::And(_) | Query::Or(_)) {
        out.push('(');
        print_query(q, out);
        out.push(')');
    } else {
        print_query(q, out);
    }
}

fn print_query(q: &Query, out: &mut String) {
    match q {
        Query::All => out.push('*'),
        Query::Match(m) => {
            if let Some(field) = &m.field {
                push_escaped_bare(out, field, true);
                out.push(':');
            }
            match &m.pattern {
                Pattern::Word(w) => push_escaped_bare(out, w, m.field.is_none()),
                Pattern::Prefix(p) => {
                    push_escaped_bare(out, p, m.field.is_none());
                    out.push('*');
                }
                Pattern::Phrase { text, slop } => {
                    push_quoted(out, text);
                    if *slop > 0 {
                        out.push_str(&format!("~{slop}"));
                    }
                }
                Pattern::PhrasePrefix(text) => {
                    push_quoted(out, text);
                    out.push('*');
                }
                Pattern::Infix(text) => {
                    out.push('*');
                    push_escaped_bare(out, text, true);
                    out.push('*');
                }
            }
        }
        Query::And(children) | Query::Or(children) => {
            let sep = if matches!(q, Query::And(_)) {
                " AND "
            } else {
                " OR "
            };
            for (i, c) in children.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                print_child(c, out);
            }
        }
        Query::Not(inner) => {
            out.push_str("NOT ");
            print_child(inner, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(w: &str) -> Query {
        Query::Match(Match {
            field: None,
            pattern: Pattern::Word(w.into()),
        })
    }

    fn field(f: &str, p: Pattern) -> Query {
        Query::Match(Match {
            field: Some(f.into()),
            pattern: p,
        })
    }

    fn err(q: &str) -> QueryError {
        parse_query(q).expect_err(q)
    }

    #[test]
    fn empty_and_star_match_all() {
        assert_eq!(parse_query("").unwrap(), Query::All);
        assert_eq!(parse_query("   ").unwrap(), Query::All);
        assert_eq!(parse_query("*").unwrap(), Query::All);
    }

    #[test]
    fn adjacent_clauses_are_anded_and_or_binds_loosest() {
        assert_eq!(
            parse_query("a b OR c").unwrap(),
            Query::Or(vec![Query::And(vec![word("a"), word("b")]), word("c")])
        );
        assert_eq!(
            parse_query("a AND b").unwrap(),
            Query::And(vec![word("a"), word("b")])
        );
        assert_eq!(
            parse_query("a (b OR c)").unwrap(),
            Query::And(vec![word("a"), Query::Or(vec![word("b"), word("c")])])
        );
    }

    #[test]
    fn not_plus_minus() {
        assert_eq!(
            parse_query("+a -b NOT c").unwrap(),
            Query::And(vec![
                word("a"),
                Query::Not(Box::new(word("b"))),
                Query::Not(Box::new(word("c")))
            ])
        );
        // A '-' inside a word is part of it.
        assert_eq!(parse_query("user-service").unwrap(), word("user-service"));
    }

    #[test]
    fn fields_phrases_prefixes() {
        assert_eq!(
            parse_query("service:api").unwrap(),
            field("service", Pattern::Word("api".into()))
        );
        assert_eq!(
            parse_query("service:\"my api\"").unwrap(),
            field(
                "service",
                Pattern::Phrase {
                    text: "my api".into(),
                    slop: 0
                }
            )
        );
        assert_eq!(
            parse_query("pod:api-7f*").unwrap(),
            field("pod", Pattern::Prefix("api-7f".into()))
        );
        assert_eq!(
            parse_query("\"connection reset\"~2").unwrap(),
            Query::Match(Match {
                field: None,
                pattern: Pattern::Phrase {
                    text: "connection reset".into(),
                    slop: 2
                }
            })
        );
        assert_eq!(
            parse_query("\"quick bro\"*").unwrap(),
            Query::Match(Match {
                field: None,
                pattern: Pattern::PhrasePrefix("quick bro".into())
            })
        );
        assert_eq!(
            parse_query("url:http://x/y").unwrap(),
            field("url", Pattern::Word("http://x/y".into()))
        );
        assert_eq!(
            parse_query("level:WARN").unwrap(),
            field("level", Pattern::Word("warn".into()))
        );
        // The ingest alias table: `level:critical` means what ingest stored as fatal, as
        // the `level=critical` search parameter does (it used to be a 400 here).
        for (alias, canonical) in [("critical", "fatal"), ("warning", "warn"), ("ERR", "error")] {
            assert_eq!(
                parse_query(&format!("level:{alias}")).unwrap(),
                field("level", Pattern::Word(canonical.into())),
                "{alias}"
            );
        }
        assert_eq!(
            parse_query(r#"msg:"say \"hi\"""#).unwrap(),
            field(
                "msg",
                Pattern::Phrase {
                    text: "say \"hi\"".into(),
                    slop: 0
                }
            )
        );
    }

    #[test]
    fn a_word_between_stars_is_a_body_word_containing_it() {
        assert_eq!(
            parse_query("*Clin*").unwrap(),
            Query::Match(Match {
                field: None,
                pattern: Pattern::Infix("clin".into()),
            })
        );
        assert!(err("*a-b*").message.contains("only letters and digits"));
        assert!(err("*clin").message.contains("needs a trailing one"));
        assert!(err("body:*clin*").message.contains("not supported"));
        assert!(err("*x*:y").message.contains("field name cannot contain"));
        assert_eq!(parse_query("\\*clin*").unwrap().to_string(), "\\*clin*");
    }

    #[test]
    fn errors_carry_positions() {
        let e = err("(error OR warn");
        assert_eq!(e.position, 14);
        assert_eq!(
            e.to_string(),
            "at position 14: expected ')' to close the '(' at position 0"
        );
        assert_eq!(err("a)").position, 1);
        assert_eq!(err("say \"hello").position, 4);
        assert_eq!(err("service:").position, 8);
        assert_eq!(err("service: x").position, 8);
        assert_eq!(err("a AND").position, 2);
        assert_eq!(err("OR a").position, 0);
        assert_eq!(err("a OR OR b").position, 2);
        assert_eq!(err("NOT").position, 0);
        assert_eq!(err("\"a b\"~x").position, 6);
        assert_eq!(err("\"a b\"~").position, 6);
        assert_eq!(err("()").position, 0);
        assert_eq!(err("fo*o").position, 2);
        assert_eq!(err("level:loud").position, 6);
        assert_eq!(err("service:\"a\"~2").position, 11);
        assert_eq!(err("- a").position, 0);
        assert_eq!(err("\"\"").position, 0);
        assert_eq!(err(":x").position, 0);
        assert_eq!(err("a\"b\"").position, 1);
        assert!(err(&"(".repeat(100)).message.contains("nests deeper"));
        assert!(err(&format!("{}x", "NOT ".repeat(100)))
            .message
            .contains("nests deeper"));
    }

    #[test]
    fn an_id_prefix_is_refused_because_ids_are_indexed_as_keys() {
        let e = err("level:error trace_id:4bf9*");
        assert_eq!(e.position, 21);
        assert_eq!(
            e.message,
            "trace_id is looked up whole: 'trace_id:4bf9*' is not supported; give the whole id"
        );
        assert!(err("span_id:\"00f0\"*")
            .message
            .contains("span_id is looked up whole"));
        assert!(parse_query("trace_id:4bf92f3577b34da6a3ce929d0e0e4736").is_ok());
    }

    #[test]
    fn printer_round_trips_tricky_values() {
        for q in [
            "a b OR c",
            "NOT (a OR b)",
            "body:\"a \\\" b\"~3",
            "x:\"a \\\" b\"",
            "\\AND",
            "\\-a",
            "a\\:b",
            "f\\:g:v",
            "\"quick bro\"*",
            "pod:api*",
            "*clin* AND a*",
        ] {
            let parsed = parse_query(q).unwrap();
            let printed = parsed.to_string();
            assert_eq!(parse_query(&printed).unwrap(), parsed, "{q} -> {printed}");
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            // Words with the characters that need escaping mixed in.
            "[a-zA-Z0-9_:*()\"\\\\+\\- ~.é]{1,8}".prop_filter("non-empty", |s| !s.is_empty())
        }

        fn leaf() -> impl Strategy<Value = Query> {
            let field = prop_oneof![
                Just(None),
                Just(Some("service".to_string())),
                Just(Some("body".to_string())),
                "[a-z_.]{1,6}"
                    .prop_filter("level values are normalised", |f| f != "level")
                    .prop_map(Some),
            ];
            let pattern = prop_oneof![
                text().prop_map(Pattern::Word),
                text().prop_map(Pattern::Prefix),
                (text(), 0u32..5).prop_map(|(text, slop)| Pattern::Phrase { text, slop }),
                text().prop_map(Pattern::PhrasePrefix),
            ];
            let infix = "[a-z0-9]{1,8}".prop_map(|t| {
                Query::Match(Match {
                    field: None,
                    pattern: Pattern::Infix(t),
                })
            });
            let other = (field, pattern).prop_map(|(field, pattern)| {
                let pattern = match (&field, pattern) {
                    // Slop only in the body: drop it elsewhere, as the parser demands.
                    (Some(f), Pattern::Phrase { text, .. }) if f != BODY_FIELD => {
                        Pattern::Phrase { text, slop: 0 }
                    }
                    (_, p) => p,
                };
                Query::Match(Match { field, pattern })
            });
            prop_oneof![4 => other, 1 => infix]
        }

        fn query() -> impl Strategy<Value = Query> {
            leaf().prop_recursive(4, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 2..4).prop_map(Query::And),
                    prop::collection::vec(inner.clone(), 2..4).prop_map(Query::Or),
                    inner.prop_map(|q| Query::Not(Box::new(q))),
                ]
            })
        }

        proptest! {
            #[test]
            fn parser_never_panics(s in "\\PC{0,40}") {
                let _ = parse_query(&s);
            }

            #[test]
            fn parser_never_panics_on_query_like_input(s in "[a-z:*()\"\\\\+\\- ~0-9ANDORT]{0,40}") {
                if let Err(e) = parse_query(&s) {
                    prop_assert!(e.position <= s.len());
                }
            }

            #[test]
            fn printed_ast_parses_back(q in query()) {
                let printed = q.to_string();
                let parsed = parse_query(&printed);
                prop_assert_eq!(parsed, Ok(q), "printed: {}", printed);
            }
        }
    }
}
