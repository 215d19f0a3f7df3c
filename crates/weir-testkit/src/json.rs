//! A small JSON parser for the Elasticsearch fake. It keeps what `serde_json::Value`
//! drops and Elasticsearch's answers depend on: the line and column of every value (its
//! errors start with `[line:col]`), key order, and duplicate keys (Elasticsearch's
//! Jackson parser runs with strict duplicate detection and refuses them).
//!
//! Error texts follow Jackson's wording for the common cases; they are not byte-exact.

use std::fmt;

/// Deepest nesting accepted, like Jackson's default of 1000 (also keeps recursion bounded).
const MAX_DEPTH: usize = 1000;

/// A position in the text: 1-based line and column (columns count bytes, as Jackson does
/// for byte input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}:{}]", self.line, self.col)
    }
}

/// A parsed value and where it starts and ends (for objects and arrays: the closing
/// bracket; for scalars: the start).
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub kind: Kind,
    pub start: Pos,
    pub end: Pos,
}

/// The value itself.
#[derive(Clone, Debug)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    /// The number as written; [`Node::is_integer`] tells integers from floats.
    Num(String),
    Str(String),
    Arr(Vec<Node>),
    /// Members in document order.
    Obj(Vec<(String, Node)>),
}

/// A syntax error and where it is.
#[derive(Clone, Debug)]
pub(crate) struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

impl Node {
    /// Whether this is a number written without fraction or exponent.
    pub fn is_integer(&self) -> bool {
        matches!(&self.kind, Kind::Num(raw) if !raw.contains(['.', 'e', 'E']))
    }

    /// Jackson's name for the token that starts this value, as Elasticsearch prints it.
    pub fn token_name(&self) -> &'static str {
        match self.kind {
            Kind::Null => "VALUE_NULL",
            Kind::Bool(_) => "VALUE_BOOLEAN",
            Kind::Num(_) => "VALUE_NUMBER",
            Kind::Str(_) => "VALUE_STRING",
            Kind::Arr(_) => "START_ARRAY",
            Kind::Obj(_) => "START_OBJECT",
        }
    }

    /// The value as `serde_json::Value` (duplicate keys cannot occur: the parser refuses them).
    pub fn to_value(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            Kind::Null => Value::Null,
            Kind::Bool(b) => Value::Bool(*b),
            Kind::Num(raw) => serde_json::from_str::<serde_json::Number>(raw)
                .map(Value::Number)
                .unwrap_or_else(|_| Value::String(raw.clone())),
            Kind::Str(s) => Value::String(s.clone()),
            Kind::Arr(items) => Value::Array(items.iter().map(Node::to_value).collect()),
            Kind::Obj(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// The value as Java's `Object.toString()` prints the map/list Elasticsearch reads
    /// it into: `{a=1, b=[x, y]}`; used in "Preview of field's value".
    pub fn java_preview(&self) -> String {
        match &self.kind {
            Kind::Null => "null".to_string(),
            Kind::Bool(b) => b.to_string(),
            Kind::Num(raw) => raw.clone(),
            Kind::Str(s) => s.clone(),
            Kind::Arr(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(Node::java_preview)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Kind::Obj(members) => format!(
                "{{{}}}",
                members
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.java_preview()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Parses one JSON value; only whitespace may follow it.
pub(crate) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut p = Parser {
        bytes: text.as_bytes(),
        text,
        at: 0,
        line: 1,
        line_start: 0,
    };
    p.skip_ws();
    if p.at >= p.bytes.len() {
        return Err(p.error("No content to map due to end-of-input"));
    }
    let node = p.value(0)?;
    p.skip_ws();
    if p.at < p.bytes.len() {
        return Err(p.error(&format!(
            "Unexpected character ({}): expected end of input",
            p.describe_char()
        )));
    }
    Ok(node)
}

/// Parses a JSON value and reports whether only whitespace follows it (`Ok(None)` for
/// trailing data), for callers that word that case themselves.
pub(crate) fn parse_prefix(text: &str) -> Result<(Node, Option<Pos>), SyntaxError> {
    let mut p = Parser {
        bytes: text.as_bytes(),
        text,
        at: 0,
        line: 1,
        line_start: 0,
    };
    p.skip_ws();
    if p.at >= p.bytes.len() {
        return Err(p.error("No content to map due to end-of-input"));
    }
    let node = p.value(0)?;
    p.skip_ws();
    let trailing = (p.at < p.bytes.len()).then(|| p.pos());
    Ok((node, trailing))
}

struct Parser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    at: usize,
    line: usize,
    line_start: usize,
}

impl Parser<'_> {
    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            col: self.at - self.line_start + 1,
        }
    }

    fn error(&self, message: &str) -> SyntaxError {
        SyntaxError {
            pos: self.pos(),
            message: message.to_string(),
        }
    }

    fn describe_char(&self) -> String {
        match self
            .text
            .get(self.at..)
            .and_then(|rest| rest.chars().next())
        {
            Some(c) if (c as u32) < 0x20 => format!("CTRL-CHAR, code {}", c as u32),
            Some(c) => format!("'{c}' (code {})", c as u32),
            None => "end-of-input".to_string(),
        }
    }

    fn skip_ws(&mut self) {
        while let Some(&b) = self.bytes.get(self.at) {
            match b {
                b'\n' => {
                    self.at += 1;
                    self.line += 1;
                    self.line_start = self.at;
                }
                b' ' | b'\t' | b'\r' => self.at += 1,
                _ => break,
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(self.error(&format!(
                "Document nesting depth exceeds the maximum allowed ({MAX_DEPTH})"
            )));
        }
        let start = self.pos();
        let scalar = |kind| Node {
            kind,
            start,
            end: start,
        };
        match self.bytes.get(self.at) {
            None => Err(self.error("Unexpected end-of-input: expected a value")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(scalar(Kind::Str(self.string()?))),
            Some(b'-' | b'0'..=b'9') => Ok(scalar(Kind::Num(self.number()?))),
            Some(b't' | b'f' | b'n') => {
                let word = self.word();
                match word.as_str() {
                    "true" => Ok(scalar(Kind::Bool(true))),
                    "false" => Ok(scalar(Kind::Bool(false))),
                    "null" => Ok(scalar(Kind::Null)),
                    _ => Err(SyntaxError {
                        pos: start,
                        message: format!(
                            "Unrecognized token '{word}': was expecting (JSON String, Number, Array, Object or token 'null', 'true' or 'false')"
                        ),
                    }),
                }
            }
            Some(_) => {
                if self.bytes[self.at].is_ascii_alphabetic() {
                    let word = self.word();
                    return Err(SyntaxError {
                        pos: start,
                        message: format!(
                            "Unrecognized token '{word}': was expecting (JSON String, Number, Array, Object or token 'null', 'true' or 'false')"
                        ),
                    });
                }
                Err(self.error(&format!(
                    "Unexpected character ({}): expected a valid value (JSON String, Number, Array, Object or token 'null', 'true' or 'false')",
                    self.describe_char()
                )))
            }
        }
    }

    fn word(&mut self) -> String {
        let begin = self.at;
        while self
            .bytes
            .get(self.at)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            self.at += 1;
        }
        self.text
            .get(begin..self.at)
            .unwrap_or_default()
            .to_string()
    }

    fn object(&mut self, depth: usize) -> Result<Node, SyntaxError> {
        let start = self.pos();
        self.at += 1;
        let mut members: Vec<(String, Node)> = Vec::new();
        self.skip_ws();
        if self.bytes.get(self.at) == Some(&b'}') {
            let end = self.pos();
            self.at += 1;
            return Ok(Node {
                kind: Kind::Obj(members),
                start,
                end,
            });
        }
        loop {
            self.skip_ws();
            match self.bytes.get(self.at) {
                Some(b'"') => {}
                None => {
                    return Err(
                        self.error("Unexpected end-of-input: expected close marker for Object")
                    )
                }
                Some(_) => {
                    return Err(self.error(&format!(
                        "Unexpected character ({}): was expecting double-quote to start field name",
                        self.describe_char()
                    )))
                }
            }
            let key_pos = self.pos();
            let key = self.string()?;
            if members.iter().any(|(k, _)| *k == key) {
                return Err(SyntaxError {
                    pos: key_pos,
                    message: format!("Duplicate field '{key}'"),
                });
            }
            self.skip_ws();
            match self.bytes.get(self.at) {
                Some(b':') => self.at += 1,
                None => {
                    return Err(self.error(
                        "Unexpected end-of-input: expected close marker for Object",
                    ))
                }
                Some(_) => {
                    return Err(self.error(&format!(
                        "Unexpected character ({}): was expecting a colon to separate field name and value",
                        self.describe_char()
                    )))
                }
            }
            self.skip_ws();
            let value = self.value(depth + 1)?;
            members.push((key, value));
            self.skip_ws();
            match self.bytes.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    let end = self.pos();
                    self.at += 1;
                    return Ok(Node {
                        kind: Kind::Obj(members),
                        start,
                        end,
                    });
                }
                None => {
                    return Err(
                        self.error("Unexpected end-of-input: expected close marker for Object")
                    )
                }
                Some(_) => {
                    return Err(self.error(&format!(
                        "Unexpected character ({}): was expecting comma to separate Object entries",
                        self.describe_char()
                    )))
                }
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Node, SyntaxError> {
        let start = self.pos();
        self.at += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.bytes.get(self.at) == Some(&b']') {
            let end = self.pos();
            self.at += 1;
            return Ok(Node {
                kind: Kind::Arr(items),
                start,
                end,
            });
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.bytes.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    let end = self.pos();
                    self.at += 1;
                    return Ok(Node {
                        kind: Kind::Arr(items),
                        start,
                        end,
                    });
                }
                None => {
                    return Err(
                        self.error("Unexpected end-of-input: expected close marker for Array")
                    )
                }
                Some(_) => {
                    return Err(self.error(&format!(
                        "Unexpected character ({}): was expecting comma to separate Array entries",
                        self.describe_char()
                    )))
                }
            }
        }
    }

    fn number(&mut self) -> Result<String, SyntaxError> {
        let begin = self.at;
        let digits = |p: &mut Self| {
            let s = p.at;
            while p.bytes.get(p.at).is_some_and(u8::is_ascii_digit) {
                p.at += 1;
            }
            p.at - s
        };
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        let int_start = self.at;
        let n = digits(self);
        if n == 0 {
            return Err(self.error(&format!(
                "Unexpected character ({}) in numeric value: expected digit (0-9) to follow minus sign, for valid numeric value",
                self.describe_char()
            )));
        }
        if n > 1 && self.bytes[int_start] == b'0' {
            return Err(SyntaxError {
                pos: self.pos(),
                message: "Invalid numeric value: Leading zeroes not allowed".to_string(),
            });
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            if digits(self) == 0 {
                return Err(self.error(&format!(
                    "Unexpected character ({}) in numeric value: Decimal point not followed by a digit",
                    self.describe_char()
                )));
            }
        }
        if matches!(self.bytes.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.bytes.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if digits(self) == 0 {
                return Err(self.error(&format!(
                    "Unexpected character ({}) in numeric value: Exponent indicator not followed by a digit",
                    self.describe_char()
                )));
            }
        }
        if self
            .bytes
            .get(self.at)
            .is_some_and(|b| b.is_ascii_alphabetic())
        {
            return Err(self.error(&format!(
                "Unexpected character ({}) in numeric value: expected digit",
                self.describe_char()
            )));
        }
        Ok(self
            .text
            .get(begin..self.at)
            .unwrap_or_default()
            .to_string())
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        // Caller checked the opening quote.
        self.at += 1;
        let mut out = String::new();
        loop {
            let Some(&b) = self.bytes.get(self.at) else {
                return Err(self.error(
                    "Unexpected end-of-input: was expecting closing quote for a string value",
                ));
            };
            match b {
                b'"' => {
                    self.at += 1;
                    return Ok(out);
                }
                b'\\' => {
                    self.at += 1;
                    let Some(&e) = self.bytes.get(self.at) else {
                        return Err(
                            self.error("Unexpected end-of-input in character escape sequence")
                        );
                    };
                    self.at += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&hi)
                                && self.bytes.get(self.at) == Some(&b'\\')
                                && self.bytes.get(self.at + 1) == Some(&b'u')
                            {
                                self.at += 2;
                                let lo = self.hex4()?;
                                let code = 0x10000
                                    + ((hi - 0xD800) << 10)
                                    + (lo.wrapping_sub(0xDC00) & 0x3FF);
                                char::from_u32(code)
                            } else {
                                char::from_u32(hi)
                            };
                            out.push(c.unwrap_or('\u{FFFD}'));
                        }
                        other => {
                            self.at -= 1;
                            return Err(self.error(&format!(
                                "Unrecognized character escape '{}' (code {other})",
                                other as char
                            )));
                        }
                    }
                }
                b if b < 0x20 => {
                    return Err(self.error(&format!(
                        "Illegal unquoted character ((CTRL-CHAR, code {b})): has to be escaped using backslash to be included in string value"
                    )));
                }
                _ => {
                    // Copy one UTF-8 character (the input is a &str, so it is valid).
                    let rest = self.text.get(self.at..).unwrap_or_default();
                    if let Some(c) = rest.chars().next() {
                        out.push(c);
                        self.at += c.len_utf8();
                    } else {
                        self.at += 1;
                    }
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let mut v = 0;
        for _ in 0..4 {
            let Some(d) = self
                .bytes
                .get(self.at)
                .and_then(|b| (*b as char).to_digit(16))
            else {
                return Err(self.error(&format!(
                    "Unexpected character ({}): expected a hex-digit for character escape sequence",
                    self.describe_char()
                )));
            };
            v = v * 16 + d;
            self.at += 1;
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let n = parse(r#"{"a": {"b": "x"}}"#).unwrap_or_else(|e| panic!("{e:?}"));
        let Kind::Obj(m) = &n.kind else { panic!() };
        let Kind::Obj(inner) = &m[0].1.kind else {
            panic!()
        };
        assert_eq!(inner[0].1.start, Pos { line: 1, col: 13 });
        assert_eq!(m[0].1.end, Pos { line: 1, col: 16 });
    }

    #[test]
    fn duplicates_and_garbage_are_refused() {
        assert!(parse(r#"{"a":1,"a":2}"#)
            .unwrap_err()
            .message
            .contains("Duplicate field 'a'"));
        assert!(parse(r#"{"a":1"#).is_err());
        assert!(parse(r#"{"a":01}"#).is_err());
        assert!(parse(r#"{"a":1} x"#).is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn java_preview_reads_like_java() {
        let n = parse(r#"{"b":1,"c":["x",true]}"#).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(n.java_preview(), "{b=1, c=[x, true]}");
    }
}
