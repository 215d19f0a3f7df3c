//! The tokenizer: every token carries its byte offset for error messages.

use crate::error::ParseError;

/// A token's kind and text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// An identifier or keyword.
    Ident(String),
    /// A string literal, unescaped.
    Str(String),
    /// A number-like word as written: `200`, `1.5`, `5m`, `10KB`, `1e3`.
    Num(String),
    /// The text between `[` and `]`.
    Range(String),
    /// `--strict` and the like, without the dashes.
    Flag(String),
    /// Punctuation and operators.
    Sym(&'static str),
    /// End of input.
    Eof,
}

/// A token and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub pos: usize,
}

const SYMBOLS: [&str; 26] = [
    "|=", "|~", "|>", "!=", "!~", "!>", "=~", "==", ">=", "<=", "{", "}", "(", ")", ",", "=", "|",
    ">", "<", "+", "-", "*", "/", "%", "^", ".",
];

pub(crate) fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let mut out = Vec::new();
    let bytes = src.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            i = src[i..].find('\n').map_or(bytes.len(), |n| i + n);
            continue;
        }
        let start = i;
        let (tok, next) = match c {
            b'"' => lex_quoted(src, i)?,
            b'`' => lex_raw(src, i)?,
            b'[' => lex_range(src, i)?,
            b'-' if bytes.get(i + 1) == Some(&b'-') && is_ident_start(bytes.get(i + 2)) => {
                let end = ident_end(bytes, i + 2);
                (Tok::Flag(src[i + 2..end].to_string()), end)
            }
            c if c.is_ascii_digit() || (c == b'.' && is_digit(bytes.get(i + 1))) => {
                let end = number_end(bytes, i);
                (Tok::Num(src[i..end].to_string()), end)
            }
            c if is_ident_start(Some(&c)) => {
                let end = ident_end(bytes, i);
                (Tok::Ident(src[i..end].to_string()), end)
            }
            _ => lex_symbol(src, i)?,
        };
        out.push(Token { tok, pos: start });
        i = next;
    }
    out.push(Token {
        tok: Tok::Eof,
        pos: src.len(),
    });
    Ok(out)
}

fn is_digit(c: Option<&u8>) -> bool {
    c.is_some_and(u8::is_ascii_digit)
}

fn is_ident_start(c: Option<&u8>) -> bool {
    c.is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
}

fn ident_end(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
        i += 1;
    }
    i
}

/// A number-like word: digits, letters (units), dots, and an exponent sign (`1e-3`).
fn number_end(bytes: &[u8], mut i: usize) -> usize {
    let start = i;
    while i < bytes.len() {
        let c = bytes[i];
        let exponent_sign = (c == b'+' || c == b'-')
            && matches!(bytes[i - 1], b'e' | b'E')
            && bytes[start..i - 1]
                .iter()
                .all(|b| b.is_ascii_digit() || *b == b'.')
            && is_digit(bytes.get(i + 1));
        if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || exponent_sign {
            i += 1;
        } else {
            break;
        }
    }
    i
}

fn lex_symbol(src: &str, i: usize) -> Result<(Tok, usize), ParseError> {
    let rest = &src[i..];
    for sym in SYMBOLS {
        if rest.starts_with(sym) {
            return Ok((Tok::Sym(sym), i + sym.len()));
        }
    }
    let c = rest.chars().next().unwrap_or('?');
    Err(ParseError::new(i, format!("unexpected character {c:?}")))
}

fn lex_range(src: &str, i: usize) -> Result<(Tok, usize), ParseError> {
    match src[i + 1..].find(']') {
        Some(n) => Ok((
            Tok::Range(src[i + 1..i + 1 + n].trim().to_string()),
            i + n + 2,
        )),
        None => Err(ParseError::new(
            i,
            format!("expected \"]\" to close the range opened at {i}"),
        )),
    }
}

fn lex_raw(src: &str, i: usize) -> Result<(Tok, usize), ParseError> {
    match src[i + 1..].find('`') {
        // Go drops carriage returns from raw strings.
        Some(n) => Ok((Tok::Str(src[i + 1..i + 1 + n].replace('\r', "")), i + n + 2)),
        None => Err(ParseError::new(
            i,
            format!("unterminated raw string opened at {i}: expected a closing \"`\""),
        )),
    }
}

fn lex_quoted(src: &str, open: usize) -> Result<(Tok, usize), ParseError> {
    let bytes = src.as_bytes();
    let mut out: Vec<u8> = Vec::new();
    let mut i = open + 1;
    loop {
        let Some(&c) = bytes.get(i) else {
            return Err(ParseError::new(
                open,
                format!("unterminated string opened at {open}: expected a closing '\"'"),
            ));
        };
        match c {
            b'"' => break,
            b'\n' => {
                return Err(ParseError::new(
                    i,
                    "newline in string: use \\n or a `raw string`",
                ))
            }
            b'\\' => i = unescape(src, i, &mut out)?,
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    let s = String::from_utf8(out)
        .map_err(|_| ParseError::new(open, "string escapes do not form valid UTF-8"))?;
    Ok((Tok::Str(s), i + 1))
}

/// Decodes one Go escape starting at the backslash at `i`; returns the index after it.
fn unescape(src: &str, i: usize, out: &mut Vec<u8>) -> Result<usize, ParseError> {
    let bytes = src.as_bytes();
    let bad = |msg: &str| ParseError::new(i, msg.to_string());
    let Some(&e) = bytes.get(i + 1) else {
        return Err(bad("unterminated escape sequence"));
    };
    let simple = match e {
        b'a' => Some(7u8),
        b'b' => Some(8),
        b'f' => Some(12),
        b'n' => Some(b'\n'),
        b'r' => Some(b'\r'),
        b't' => Some(b'\t'),
        b'v' => Some(11),
        b'\\' => Some(b'\\'),
        b'"' => Some(b'"'),
        b'\'' => Some(b'\''),
        _ => None,
    };
    if let Some(b) = simple {
        out.push(b);
        return Ok(i + 2);
    }
    let hex = |len: usize| -> Result<u32, ParseError> {
        let digits = src
            .get(i + 2..i + 2 + len)
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| bad(&format!("expected {len} hex digits after \\{}", e as char)))?;
        u32::from_str_radix(digits, 16).map_err(|_| bad("invalid hex escape"))
    };
    match e {
        b'x' => {
            out.push(hex(2)? as u8);
            Ok(i + 4)
        }
        b'u' | b'U' => {
            let len = if e == b'u' { 4 } else { 8 };
            let c =
                char::from_u32(hex(len)?).ok_or_else(|| bad("escape is not a valid code point"))?;
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            Ok(i + 2 + len)
        }
        b'0'..=b'7' => {
            let digits = src
                .get(i + 1..i + 4)
                .filter(|d| d.bytes().all(|b| (b'0'..=b'7').contains(&b)))
                .ok_or_else(|| bad("expected 3 octal digits after \\"))?;
            let v = u32::from_str_radix(digits, 8).map_err(|_| bad("invalid octal escape"))?;
            out.push(u8::try_from(v).map_err(|_| bad("octal escape above \\377"))?);
            Ok(i + 4)
        }
        _ => Err(bad(&format!("unknown escape sequence \\{}", e as char))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn go_escapes_decode() {
        assert_eq!(
            toks(r#""a\"b\\c\n\x41\u00e9\101""#)[0],
            Tok::Str("a\"b\\c\nAéA".into())
        );
        assert_eq!(toks("`a\\b`")[0], Tok::Str("a\\b".into()));
        assert!(lex(r#""\q""#).is_err());
        assert!(lex(r#""\xff""#).is_err());
    }

    #[test]
    fn numbers_keep_their_units() {
        assert_eq!(
            toks("1h30m 10KB 1e-3 1.5s"),
            vec![
                Tok::Num("1h30m".into()),
                Tok::Num("10KB".into()),
                Tok::Num("1e-3".into()),
                Tok::Num("1.5s".into()),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn errors_carry_positions() {
        let e = lex("{a=\"x}").unwrap_err();
        assert_eq!(e.position, 3);
        let e = lex("rate({a=\"b\"}[5m)").unwrap_err();
        assert_eq!(e.position, 12);
    }
}
