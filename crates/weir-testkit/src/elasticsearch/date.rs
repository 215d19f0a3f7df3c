//! Elasticsearch date formats, as far as the fake validates them: the built-in
//! `strict_date_optional_time`, `date_optional_time`, `epoch_millis`, `epoch_second` and a
//! handful of other named formats, plus simple Java patterns (`yyyy-MM-dd HH:mm:ss`).
//! A format the fake does not understand accepts every value (documented in the module
//! docs of [`crate::elasticsearch`]).

use crate::util::days_in_month;

/// The format of a mapped date field when the mapping does not name one.
pub(crate) const DEFAULT_FORMAT: &str = "strict_date_optional_time||epoch_millis";

/// The format Elasticsearch writes into the mapping of a field it detected from a
/// `yyyy/MM/dd` string.
pub(crate) const SLASH_FORMAT: &str = "yyyy/MM/dd HH:mm:ss||yyyy/MM/dd||epoch_millis";

#[derive(Clone, Debug)]
enum Format {
    OptionalTime {
        strict: bool,
    },
    EpochMillis,
    EpochSecond,
    Pattern(Vec<Tok>),
    /// Not understood: accepts everything.
    Unknown,
}

#[derive(Clone, Debug)]
enum Tok {
    Year(usize),
    Month(usize),
    Day(usize),
    Hour(usize),
    Minute(usize),
    Second(usize),
    Fraction(usize),
    Zone,
    Lit(char),
}

/// A parsed `format` mapping parameter (alternatives separated by `||`).
#[derive(Clone, Debug)]
pub(crate) struct DateFormats {
    spec: String,
    formats: Vec<Format>,
}

impl DateFormats {
    /// Parses a format specification such as `strict_date_optional_time||epoch_millis`.
    pub(crate) fn parse(spec: &str) -> Self {
        let formats = spec.split("||").map(|f| named(f.trim())).collect();
        Self {
            spec: spec.to_string(),
            formats,
        }
    }

    /// The specification as written.
    pub(crate) fn spec(&self) -> &str {
        &self.spec
    }

    /// Whether one of the formats parses the string `s`.
    pub(crate) fn accepts_str(&self, s: &str) -> bool {
        self.formats.iter().any(|f| match f {
            Format::OptionalTime { strict } => optional_time(s, *strict),
            Format::EpochMillis => epoch(s, 6),
            Format::EpochSecond => epoch(s, 9),
            Format::Pattern(toks) => pattern(s, toks),
            Format::Unknown => true,
        })
    }

    /// Whether one of the formats takes a JSON number (only the epoch formats do).
    pub(crate) fn accepts_number(&self, raw: &str) -> bool {
        self.formats.iter().any(|f| match f {
            Format::EpochMillis | Format::EpochSecond => {
                raw.parse::<f64>().is_ok_and(f64::is_finite)
            }
            Format::Unknown => true,
            _ => false,
        })
    }
}

fn named(name: &str) -> Format {
    let p = |s: &str| Format::Pattern(tokens(s));
    match name {
        "strict_date_optional_time" | "strict_date_optional_time_nanos" => {
            Format::OptionalTime { strict: true }
        }
        "date_optional_time" | "dateOptionalTime" | "iso8601" => {
            Format::OptionalTime { strict: false }
        }
        "epoch_millis" => Format::EpochMillis,
        "epoch_second" => Format::EpochSecond,
        "strict_date" | "date" => p("yyyy-MM-dd"),
        "strict_date_time" | "date_time" => p("yyyy-MM-dd'T'HH:mm:ss.SSSXXX"),
        "strict_date_time_no_millis" | "date_time_no_millis" => p("yyyy-MM-dd'T'HH:mm:ssXXX"),
        "strict_date_hour_minute_second" | "date_hour_minute_second" => p("yyyy-MM-dd'T'HH:mm:ss"),
        "strict_date_hour_minute_second_millis" | "date_hour_minute_second_millis" => {
            p("yyyy-MM-dd'T'HH:mm:ss.SSS")
        }
        "basic_date" => p("yyyyMMdd"),
        "strict_year_month_day" | "year_month_day" => p("yyyy-MM-dd"),
        "strict_year_month" | "year_month" => p("yyyy-MM"),
        "strict_year" | "year" => p("yyyy"),
        other if other.chars().any(|c| c.is_ascii_alphabetic()) && !other.contains('_') => {
            let toks = tokens(other);
            if toks.is_empty() {
                Format::Unknown
            } else {
                Format::Pattern(toks)
            }
        }
        _ => Format::Unknown,
    }
}

/// Tokenises a Java `DateTimeFormatter` pattern; returns nothing (= unknown) if it uses
/// letters the fake does not model.
fn tokens(pattern: &str) -> Vec<Tok> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                out.push(Tok::Lit(chars[i]));
                i += 1;
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() {
            let mut n = 1;
            while i + n < chars.len() && chars[i + n] == c {
                n += 1;
            }
            let tok = match c {
                'y' | 'u' => Tok::Year(n),
                'M' => Tok::Month(n),
                'd' => Tok::Day(n),
                'H' => Tok::Hour(n),
                'm' => Tok::Minute(n),
                's' => Tok::Second(n),
                'S' => Tok::Fraction(n),
                'X' | 'Z' | 'x' => Tok::Zone,
                _ => return Vec::new(),
            };
            out.push(tok);
            i += n;
            continue;
        }
        out.push(Tok::Lit(c));
        i += 1;
    }
    out
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, min: usize, max: usize) -> Option<i64> {
        let start = self.at;
        while self.at < self.b.len() && self.at - start < max && self.b[self.at].is_ascii_digit() {
            self.at += 1;
        }
        let n = self.at - start;
        if n < min {
            return None;
        }
        std::str::from_utf8(&self.b[start..self.at])
            .ok()?
            .parse()
            .ok()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.at) == Some(&c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn done(&self) -> bool {
        self.at == self.b.len()
    }

    /// `Z`, `+HH`, `+HHmm` or `+HH:mm`.
    fn zone(&mut self) -> bool {
        if self.eat(b'Z') {
            return true;
        }
        if !(self.eat(b'+') || self.eat(b'-')) {
            return false;
        }
        match self.digits(2, 2) {
            Some(h) if h <= 18 => {}
            _ => return false,
        }
        if self.at == self.b.len() {
            return true;
        }
        self.eat(b':');
        matches!(self.digits(2, 2), Some(m) if m < 60)
    }
}

fn valid(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> bool {
    (1..=12).contains(&mo)
        && d >= 1
        && d <= i64::from(days_in_month(y, mo as u32))
        && (0..24).contains(&h)
        && (0..60).contains(&mi)
        && (0..60).contains(&s)
}

/// `strict_date_optional_time` (strict: fixed widths) / `date_optional_time`.
fn optional_time(s: &str, strict: bool) -> bool {
    let mut c = Cursor {
        b: s.as_bytes(),
        at: 0,
    };
    let (w1, w2) = if strict { (2, 2) } else { (1, 2) };
    let year = if strict {
        c.digits(4, 4)
    } else {
        c.digits(1, 9)
    };
    let Some(year) = year else { return false };
    let (mut mo, mut d, mut h, mut mi, mut sec) = (1, 1, 0, 0, 0);
    if c.eat(b'-') {
        let Some(m) = c.digits(w1, w2) else {
            return false;
        };
        mo = m;
        if c.eat(b'-') {
            let Some(day) = c.digits(w1, w2) else {
                return false;
            };
            d = day;
        }
    }
    if c.eat(b'T') {
        let Some(hh) = c.digits(w1, w2) else {
            return false;
        };
        h = hh;
        if c.eat(b':') {
            let Some(mm) = c.digits(w1, w2) else {
                return false;
            };
            mi = mm;
            if c.eat(b':') {
                let Some(ss) = c.digits(w1, w2) else {
                    return false;
                };
                sec = ss;
                if (c.eat(b'.') || c.eat(b',')) && c.digits(1, 9).is_none() {
                    return false;
                }
            }
        }
        if !c.done() && !c.zone() {
            return false;
        }
    }
    c.done() && valid(year, mo, d, h, mi, sec)
}

/// `epoch_millis` / `epoch_second` given as a string: digits, optionally signed, with an
/// optional fraction.
fn epoch(s: &str, max_fraction: usize) -> bool {
    let mut c = Cursor {
        b: s.as_bytes(),
        at: 0,
    };
    c.eat(b'-');
    if c.digits(1, 19).is_none() {
        return false;
    }
    if c.eat(b'.') && c.digits(1, max_fraction).is_none() {
        return false;
    }
    c.done()
}

fn pattern(s: &str, toks: &[Tok]) -> bool {
    let mut c = Cursor {
        b: s.as_bytes(),
        at: 0,
    };
    let (mut y, mut mo, mut d, mut h, mut mi, mut sec) = (1970, 1, 1, 0, 0, 0);
    for tok in toks {
        let ok = match *tok {
            Tok::Year(n) => c
                .digits(n.min(4), if n == 2 { 2 } else { 9 })
                .map(|v| y = v)
                .is_some(),
            Tok::Month(n) => c.digits(n.min(2), 2).map(|v| mo = v).is_some(),
            Tok::Day(n) => c.digits(n.min(2), 2).map(|v| d = v).is_some(),
            Tok::Hour(n) => c.digits(n.min(2), 2).map(|v| h = v).is_some(),
            Tok::Minute(n) => c.digits(n.min(2), 2).map(|v| mi = v).is_some(),
            Tok::Second(n) => c.digits(n.min(2), 2).map(|v| sec = v).is_some(),
            Tok::Fraction(n) => c.digits(n, n).is_some(),
            Tok::Zone => c.zone(),
            Tok::Lit(ch) => {
                let mut buf = [0; 4];
                ch.encode_utf8(&mut buf).bytes().all(|b| c.eat(b))
            }
        };
        if !ok {
            return false;
        }
    }
    c.done() && valid(y, mo, d, h, mi, sec)
}

/// What Elasticsearch's dynamic date detection makes of a string: `Some(format)` to map it
/// as a date (`None` inside: the default format), `None` if it is not a date.
///
/// Like Elasticsearch, only strings with more than one `:`, `-` or `/` are tried ("a safe
/// check since "1" gets parsed as well"), against `strict_date_optional_time` and then
/// `yyyy/MM/dd HH:mm:ss||yyyy/MM/dd`.
pub(crate) fn detect(s: &str) -> Option<Option<&'static str>> {
    let count = |ch| s.matches(ch).count();
    if count(':') <= 1 && count('-') <= 1 && count('/') <= 1 {
        return None;
    }
    if optional_time(s, true) {
        return Some(None);
    }
    let slash = [tokens("yyyy/MM/dd HH:mm:ss"), tokens("yyyy/MM/dd")];
    if slash.iter().any(|t| pattern(s, t)) {
        return Some(Some(SLASH_FORMAT));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_optional_time() {
        let f = DateFormats::parse(DEFAULT_FORMAT);
        for ok in [
            "2026-11-21T19:00:00Z",
            "2026-11-21",
            "2026",
            "2026-11-21T19:00:00.123456789+01:00",
            "2024-02-29T00:00",
            "1700000000000",
        ] {
            assert!(f.accepts_str(ok), "{ok}");
        }
        for bad in [
            "not a date",
            "2026-13-01",
            "2023-02-29",
            "2026-1-1",
            "2026-11-21T25:00",
            "21/11/2026",
        ] {
            assert!(!f.accepts_str(bad), "{bad}");
        }
        assert!(f.accepts_number("1700000000000"));
    }

    #[test]
    fn detection_follows_elasticsearch() {
        assert_eq!(detect("2026-11-21T19:00:00Z"), Some(None));
        assert_eq!(detect("2015/09/02"), Some(Some(SLASH_FORMAT)));
        assert_eq!(detect("2026"), None);
        assert_eq!(detect("12:30:00"), None);
        assert_eq!(detect("a-b-c"), None);
    }

    #[test]
    fn java_patterns() {
        let f = DateFormats::parse("yyyy-MM-dd HH:mm:ss");
        assert!(f.accepts_str("2026-01-02 03:04:05"));
        assert!(!f.accepts_str("2026-01-02T03:04:05"));
        assert!(!f.accepts_number("1"));
        assert!(DateFormats::parse("something_custom").accepts_str("whatever"));
    }
}
