//! Stream labels as Loki reads them: `syntax.ParseLabels`, which is PromQL's
//! `parser.ParseMetric` (`name{a="b", c='d', e=`raw`}`) followed by dropping labels with
//! empty values. Errors read like PromQL's: `1:6: parse error: unexpected identifier "bar"
//! in label set, expected string`.

use std::fmt;

use crate::util::go_quote;

/// A parse error at a byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ParseError {
    pos: usize,
    message: String,
    input: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // PromQL's ParseErr.Error(): line and column of the error's start.
        let before = self.input.get(..self.pos).unwrap_or(&self.input);
        let line = before.matches('\n').count() + 1;
        let col = match before.rfind('\n') {
            Some(nl) => self.pos - nl,
            None => self.pos + 1,
        };
        write!(f, "{line}:{col}: parse error: {}", self.message)
    }
}

/// Parsed labels, sorted by name (duplicates kept, as PromQL keeps them), empty values
/// dropped.
pub(crate) type Labels = Vec<(String, String)>;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Number(String),
    LeftBrace,
    RightBrace,
    Comma,
    Eql,
    Op(&'static str),
    Eof,
}

impl Tok {
    /// PromQL's `Item.desc()`.
    fn desc(&self) -> String {
        match self {
            Tok::Ident(v) => format!("identifier {}", go_quote(v)),
            Tok::Str(raw) => {
                let q = if raw.chars().count() > 10 {
                    let head: String = raw.chars().take(10).collect();
                    format!("{}...", go_quote(&head))
                } else {
                    go_quote(raw)
                };
                format!("string {q}")
            }
            Tok::Number(v) => format!("number {}", go_quote(v)),
            Tok::LeftBrace => "\"{\"".into(),
            Tok::RightBrace => "\"}\"".into(),
            Tok::Comma => "\",\"".into(),
            Tok::Eql => "\"=\"".into(),
            Tok::Op(op) => format!("<op:{op}>"),
            Tok::Eof => "end of input".into(),
        }
    }
}

/// Go's `%q` of a rune.
fn quote_rune(c: char) -> String {
    match c {
        '\'' => "'\\''".into(),
        '\\' => "'\\\\'".into(),
        '\n' => "'\\n'".into(),
        '\t' => "'\\t'".into(),
        '\r' => "'\\r'".into(),
        c if c.is_control() => format!("'\\x{:02x}'", c as u32),
        c => format!("'{c}'"),
    }
}

/// Go's `%#U` of a rune.
fn unicode_rune(c: char) -> String {
    format!("U+{:04X} {}", c as u32, quote_rune(c))
}

struct Lexer<'a> {
    input: &'a str,
    pos: usize,
    in_braces: bool,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.input.get(self.pos..)?.chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn err(&self, pos: usize, message: String) -> ParseError {
        ParseError {
            pos,
            message,
            input: self.input.to_string(),
        }
    }

    /// The next token and where it starts.
    fn next(&mut self) -> Result<(Tok, usize), ParseError> {
        while self
            .peek()
            .is_some_and(|c| c == ' ' || c == '\t' || c == '\n' || c == '\r')
        {
            self.bump();
        }
        let start = self.pos;
        let Some(c) = self.bump() else {
            if self.in_braces {
                return Err(self.err(start, "unexpected end of input inside braces".into()));
            }
            return Ok((Tok::Eof, start));
        };
        let is_alpha = |c: char| c == '_' || c.is_ascii_alphabetic();
        if self.in_braces {
            let tok = match c {
                c if is_alpha(c) => {
                    while self
                        .peek()
                        .is_some_and(|c| is_alpha(c) || c.is_ascii_digit())
                    {
                        self.bump();
                    }
                    Tok::Ident(self.input[start..self.pos].to_string())
                }
                ',' => Tok::Comma,
                '"' | '\'' => Tok::Str(self.string(c, start)?),
                '`' => Tok::Str(self.raw_string(start)?),
                '=' => {
                    if self.peek() == Some('~') {
                        self.bump();
                        Tok::Op("=~")
                    } else {
                        Tok::Eql
                    }
                }
                '!' => match self.bump() {
                    Some('~') => Tok::Op("!~"),
                    Some('=') => Tok::Op("!="),
                    other => {
                        return Err(self.err(
                            start,
                            format!(
                                "unexpected character after '!' inside braces: {}",
                                quote_rune(other.unwrap_or('\u{FFFD}'))
                            ),
                        ))
                    }
                },
                '{' => {
                    return Err(self.err(start, format!("unexpected left brace {}", quote_rune(c))))
                }
                '}' => {
                    self.in_braces = false;
                    Tok::RightBrace
                }
                other => {
                    return Err(self.err(
                        start,
                        format!("unexpected character inside braces: {}", quote_rune(other)),
                    ))
                }
            };
            return Ok((tok, start));
        }
        let tok = match c {
            '{' => {
                self.in_braces = true;
                Tok::LeftBrace
            }
            '}' => {
                return Err(self.err(start, format!("unexpected right bracket {}", quote_rune(c))))
            }
            c if is_alpha(c) || c == ':' => {
                while self
                    .peek()
                    .is_some_and(|c| is_alpha(c) || c.is_ascii_digit() || c == ':')
                {
                    self.bump();
                }
                Tok::Ident(self.input[start..self.pos].to_string())
            }
            c if c.is_ascii_digit() || c == '.' => {
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.')
                {
                    self.bump();
                }
                Tok::Number(self.input[start..self.pos].to_string())
            }
            '"' | '\'' => Tok::Str(self.string(c, start)?),
            '`' => Tok::Str(self.raw_string(start)?),
            ',' => Tok::Comma,
            '=' => Tok::Eql,
            other => {
                return Err(self.err(
                    start,
                    format!("unexpected character: {}", quote_rune(other)),
                ))
            }
        };
        Ok((tok, start))
    }

    /// A quoted string with Go escapes; returns the unquoted value.
    fn string(&mut self, quote: char, start: usize) -> Result<String, ParseError> {
        let mut out = String::new();
        loop {
            match self.bump() {
                None | Some('\n') => {
                    return Err(self.err(start, "unterminated quoted string".into()))
                }
                Some('\\') => self.escape(quote, start, &mut out)?,
                Some(c) if c == quote => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn escape(&mut self, quote: char, start: usize, out: &mut String) -> Result<(), ParseError> {
        let Some(c) = self.bump() else {
            return Err(self.err(start, "escape sequence not terminated".into()));
        };
        let simple = match c {
            'a' => Some('\u{7}'),
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\u{b}'),
            '\\' => Some('\\'),
            c if c == quote => Some(c),
            _ => None,
        };
        if let Some(s) = simple {
            out.push(s);
            return Ok(());
        }
        let (digits, radix) = match c {
            '0'..='7' => (2, 8),
            'x' => (2, 16),
            'u' => (4, 16),
            'U' => (8, 16),
            other => {
                return Err(self.err(
                    start,
                    format!("unknown escape sequence {}", unicode_rune(other)),
                ))
            }
        };
        let mut value = if radix == 8 {
            c.to_digit(8).unwrap_or(0)
        } else {
            0
        };
        for _ in 0..digits {
            let Some(d) = self.bump() else {
                return Err(self.err(start, "escape sequence not terminated".into()));
            };
            let Some(v) = d.to_digit(radix) else {
                return Err(self.err(
                    start,
                    format!("illegal character {} in escape sequence", unicode_rune(d)),
                ));
            };
            value = value * radix + v;
        }
        // \xNN and octal escapes are bytes in Go; the fake keeps the character they name.
        match char::from_u32(value) {
            Some(ch) => out.push(ch),
            None => {
                return Err(self.err(
                    start,
                    "escape sequence is an invalid Unicode code point".into(),
                ))
            }
        }
        Ok(())
    }

    fn raw_string(&mut self, start: usize) -> Result<String, ParseError> {
        let begin = self.pos;
        loop {
            match self.bump() {
                None => return Err(self.err(start, "unterminated raw string".into())),
                Some('`') => return Ok(self.input[begin..self.pos - 1].to_string()),
                Some(_) => {}
            }
        }
    }
}

/// Parses a label selector the way Loki's `syntax.ParseLabels` does.
pub(crate) fn parse(input: &str) -> Result<Labels, ParseError> {
    let mut lx = Lexer {
        input,
        pos: 0,
        in_braces: false,
    };
    let unexpected = |tok: &Tok, pos: usize, context: &str, expected: &str| {
        let mut message = format!("unexpected {}", tok.desc());
        if !context.is_empty() {
            message.push_str(&format!(" in {context}"));
        }
        if !expected.is_empty() {
            message.push_str(&format!(", expected {expected}"));
        }
        ParseError {
            pos,
            message,
            input: input.to_string(),
        }
    };
    let mut labels: Labels = Vec::new();
    let (mut tok, mut pos) = lx.next()?;
    if let Tok::Ident(name) = &tok {
        labels.push(("__name__".into(), name.clone()));
        (tok, pos) = lx.next()?;
    }
    match tok {
        Tok::Eof => {}
        Tok::LeftBrace => {
            loop {
                let (t, p) = lx.next()?;
                let name = match t {
                    Tok::RightBrace => break,
                    Tok::Ident(name) => name,
                    other => return Err(unexpected(&other, p, "label set", "identifier or \"}\"")),
                };
                let (t, p) = lx.next()?;
                if t != Tok::Eql {
                    return Err(unexpected(&t, p, "label set", "\"=\""));
                }
                let (t, p) = lx.next()?;
                let Tok::Str(value) = t else {
                    return Err(unexpected(&t, p, "label set", "string"));
                };
                labels.push((name, value));
                let (t, p) = lx.next()?;
                match t {
                    Tok::Comma => continue,
                    Tok::RightBrace => break,
                    other => return Err(unexpected(&other, p, "label set", "\",\" or \"}\"")),
                }
            }
            let (t, p) = lx.next()?;
            if t != Tok::Eof {
                return Err(unexpected(&t, p, "", ""));
            }
        }
        other => return Err(unexpected(&other, pos, "", "")),
    }
    labels.retain(|(_, v)| !v.is_empty());
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(labels)
}

/// Prometheus' `labels.Labels.String()`: `{a="b", c="d"}`.
pub(crate) fn to_string(labels: &[(String, String)]) -> String {
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect();
    format!("{{{}}}", inner.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        parse(s)
            .map(|l| format!("{l:?}"))
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn parses_selectors() {
        assert_eq!(
            parse(r#"{job="weir", app='a\'b', x=`r\aw`, empty=""}"#).unwrap_or_default(),
            vec![
                ("app".to_string(), "a'b".to_string()),
                ("job".to_string(), "weir".to_string()),
                ("x".to_string(), "r\\aw".to_string()),
            ]
        );
        assert_eq!(
            parse(r#"{a="\"q\"\n"}"#).unwrap_or_default()[0].1,
            "\"q\"\n"
        );
        assert_eq!(parse("").unwrap_or_default(), vec![]);
        assert_eq!(parse("{}").unwrap_or_default(), vec![]);
        assert_eq!(parse("up{a=\"b\",}").unwrap_or_default().len(), 2);
        assert_eq!(
            to_string(&parse(r#"{b="2",a="x\"y"}"#).unwrap_or_default()),
            r#"{a="x\"y", b="2"}"#
        );
    }

    #[test]
    fn errors_read_like_promql() {
        assert_eq!(
            err(r#"{foo=bar}"#),
            "1:6: parse error: unexpected identifier \"bar\" in label set, expected string"
        );
        assert_eq!(
            err(r#"{foo}"#),
            "1:5: parse error: unexpected \"}\" in label set, expected \"=\""
        );
        assert_eq!(
            err(r#"{foo="bar""#),
            "1:11: parse error: unexpected end of input inside braces"
        );
        assert_eq!(
            err(r#"{foo="bar}"#),
            "1:6: parse error: unterminated quoted string"
        );
        assert_eq!(
            err(r#"{a-b="c"}"#),
            "1:3: parse error: unexpected character inside braces: '-'"
        );
        assert_eq!(
            err(r#"{a!="c"}"#),
            "1:3: parse error: unexpected <op:!=> in label set, expected \"=\""
        );
        assert_eq!(
            err(r#"{a="\q"}"#),
            "1:4: parse error: unknown escape sequence U+0071 'q'"
        );
    }
}
