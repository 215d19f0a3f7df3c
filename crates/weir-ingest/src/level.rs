//! Severity text and numbers to [`Level`].

use weir_proto::Level;

/// Parses level text into a [`Level`].
///
/// Accepts the canonical names `trace`, `debug`, `info`, `warn`, `error`, `fatal`; common
/// aliases (`warning`, `err`, `dbg`, `trc`, `notice`/`information`/`informational` -> info,
/// `critical`/`crit`/`alert`/`emerg`/`emergency`/`panic` -> fatal, logrus' `ERRO`/`FATA`,
/// JUL's `SEVERE`/`FINE`/`FINEST`, single letters `t d i w e f`); and RFC 5424 numeric
/// severities `"0"`..`"7"` (0..=2 fatal, 3 error, 4 warn, 5..=6 info, 7 debug). Matching is
/// ASCII-case-insensitive and ignores surrounding whitespace. Empty text means
/// [`Level::Info`].
///
/// # Errors
///
/// Anything else: the message quotes the text (shortened) and lists the accepted values.
///
/// ```
/// use weir_ingest::parse_level;
/// use weir_proto::Level;
/// assert_eq!(parse_level("WARNING"), Ok(Level::Warn));
/// assert_eq!(parse_level("3"), Ok(Level::Error));
/// assert_eq!(parse_level(""), Ok(Level::Info));
/// assert!(parse_level("loud").unwrap_err().contains("trace, debug, info, warn, error or fatal"));
/// ```
pub fn parse_level(text: &str) -> Result<Level, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(Level::Info);
    }
    Level::from_alias(t).ok_or_else(|| {
        format!(
            "level {} is not a level; use trace, debug, info, warn, error or fatal \
                 (aliases such as warning, err, critical, notice and RFC 5424 numbers 0-7 \
                 are accepted; empty means info)",
            crate::quote(text)
        )
    })
}

/// Maps an OTLP `SeverityNumber` to a [`Level`]: 1..=4 trace, 5..=8 debug, 9..=12 info,
/// 13..=16 warn, 17..=20 error, 21..=24 fatal. `0` (unspecified) and anything out of range
/// give `None`; the OTLP mapping then falls back to `severity_text`, then to info.
///
/// ```
/// use weir_ingest::level_from_otlp;
/// use weir_proto::Level;
/// assert_eq!(level_from_otlp(17), Some(Level::Error));
/// assert_eq!(level_from_otlp(0), None);
/// ```
pub fn level_from_otlp(severity_number: i32) -> Option<Level> {
    match severity_number {
        1..=4 => Some(Level::Trace),
        5..=8 => Some(Level::Debug),
        9..=12 => Some(Level::Info),
        13..=16 => Some(Level::Warn),
        17..=20 => Some(Level::Error),
        21..=24 => Some(Level::Fatal),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names_parse_in_any_case() {
        for l in Level::ALL {
            assert_eq!(parse_level(l.as_str()), Ok(l));
            assert_eq!(parse_level(&l.as_str().to_uppercase()), Ok(l));
        }
        assert_eq!(parse_level("  Error \n"), Ok(Level::Error));
    }

    #[test]
    fn aliases_map_to_their_level() {
        let cases = [
            ("warning", Level::Warn),
            ("WARNING", Level::Warn),
            ("err", Level::Error),
            ("ERRO", Level::Error),
            ("severe", Level::Error),
            ("critical", Level::Fatal),
            ("crit", Level::Fatal),
            ("alert", Level::Fatal),
            ("emerg", Level::Fatal),
            ("Emergency", Level::Fatal),
            ("panic", Level::Fatal),
            ("notice", Level::Info),
            ("informational", Level::Info),
            ("Information", Level::Info),
            ("dbg", Level::Debug),
            ("trc", Level::Trace),
            ("finest", Level::Trace),
            ("I", Level::Info),
        ];
        for (text, want) in cases {
            assert_eq!(parse_level(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rfc5424_numbers_map_by_severity() {
        let want = [
            Level::Fatal,
            Level::Fatal,
            Level::Fatal,
            Level::Error,
            Level::Warn,
            Level::Info,
            Level::Info,
            Level::Debug,
        ];
        for (n, l) in want.into_iter().enumerate() {
            assert_eq!(parse_level(&n.to_string()), Ok(l), "{n}");
        }
        assert!(parse_level("8").is_err());
        assert!(parse_level("-1").is_err());
    }

    #[test]
    fn empty_is_info_and_unknown_lists_accepted_values() {
        assert_eq!(parse_level(""), Ok(Level::Info));
        assert_eq!(parse_level("   "), Ok(Level::Info));
        let e = parse_level("loud").unwrap_err();
        assert!(e.contains("\"loud\""), "{e}");
        assert!(
            e.contains("trace, debug, info, warn, error or fatal"),
            "{e}"
        );
    }

    #[test]
    fn otlp_severity_numbers_map_in_groups_of_four() {
        assert_eq!(level_from_otlp(0), None);
        assert_eq!(level_from_otlp(25), None);
        assert_eq!(level_from_otlp(-3), None);
        for n in 1..=24 {
            let want = Level::ALL[((n - 1) / 4) as usize];
            assert_eq!(level_from_otlp(n), Some(want), "{n}");
        }
    }
}
