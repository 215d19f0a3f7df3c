//! Calendar arithmetic and the timestamp texts agents send (RFC 3339 / ISO 8601 in
//! Elasticsearch documents and RFC 5424 syslog, `Mmm dd hh:mm:ss` in RFC 3164 syslog),
//! without a time library: the rules are few and fixed, and UTC is all Weir stores.

pub(crate) const SECOND_NS: i64 = 1_000_000_000;
const DAY_SECS: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`). `month` 1..=12, `day` 1..=31; not checked here.
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The year of a time in nanoseconds since the epoch (UTC).
pub(crate) fn year_of(ns: i64) -> i64 {
    // civil_from_days, year only.
    let z = ns.div_euclid(SECOND_NS * DAY_SECS) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month_from_march = mp; // 0 = March ... 11 = February
    yoe + era * 400 + i64::from(month_from_march >= 10)
}

pub(crate) fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

pub(crate) fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// A wall-clock time of one day; `nanos` is the fraction of the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Clock {
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub nanos: u32,
}

/// Nanoseconds since the epoch of a UTC date and time, `None` when the date does not
/// exist or the result is outside `i64`. A leap second (`:60`) counts as the next second.
pub(crate) fn civil_to_ns(
    year: i64,
    month: u32,
    day: u32,
    clock: Clock,
    offset_secs: i64,
) -> Option<i64> {
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || clock.hour > 23
        || clock.minute > 59
        || clock.second > 60
    {
        return None;
    }
    let secs = i128::from(days_from_civil(year, month, day)) * i128::from(DAY_SECS)
        + i128::from(clock.hour * 3600 + clock.minute * 60 + clock.second)
        - i128::from(offset_secs);
    let ns = secs * i128::from(SECOND_NS) + i128::from(clock.nanos);
    i64::try_from(ns).ok()
}

/// A cursor over ASCII text for the small fixed grammars here.
struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// Exactly `n` ASCII digits.
    fn digits(&mut self, n: usize) -> Option<u32> {
        let d = self.s.get(self.at..self.at + n)?;
        if !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.at += n;
        Some(d.iter().fold(0, |v, b| v * 10 + u32::from(b - b'0')))
    }
}

/// Parses an RFC 3339 / ISO 8601 date-time to nanoseconds since the epoch.
///
/// Accepts `YYYY-MM-DD`, optionally followed by `T` (or `t`, or a space) and
/// `hh:mm[:ss[.fraction]]`, optionally followed by a zone: `Z`, `±hh:mm`, `±hhmm` or
/// `±hh`. A missing zone means UTC (what Elasticsearch assumes); fractions past 9 digits
/// are truncated. `None` when the text is anything else or the time is outside `i64`
/// nanoseconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let mut c = Cursor {
        s: text.as_bytes(),
        at: 0,
    };
    let year = i64::from(c.digits(4)?);
    if !c.eat(b'-') {
        return None;
    }
    let month = c.digits(2)?;
    if !c.eat(b'-') {
        return None;
    }
    let day = c.digits(2)?;
    let mut clock = Clock {
        hour: 0,
        minute: 0,
        second: 0,
        nanos: 0,
    };
    let mut offset_secs = 0;
    if c.eat(b'T') || c.eat(b't') || c.eat(b' ') {
        clock.hour = c.digits(2)?;
        if !c.eat(b':') {
            return None;
        }
        clock.minute = c.digits(2)?;
        if c.eat(b':') {
            clock.second = c.digits(2)?;
            if c.eat(b'.') || c.eat(b',') {
                clock.nanos = fraction_nanos(&mut c)?;
            }
        }
        offset_secs = zone(&mut c)?;
    }
    if c.at != text.len() {
        return None;
    }
    civil_to_ns(year, month, day, clock, offset_secs)
}

/// At least one digit of a second's fraction, as nanoseconds (digits past 9 ignored).
fn fraction_nanos(c: &mut Cursor<'_>) -> Option<u32> {
    let start = c.at;
    let mut nanos = 0u32;
    while let Some(b) = c.peek().filter(u8::is_ascii_digit) {
        if c.at - start < 9 {
            nanos = nanos * 10 + u32::from(b - b'0');
        }
        c.at += 1;
    }
    let digits = c.at - start;
    if digits == 0 {
        return None;
    }
    Some(nanos * 10u32.pow(9u32.saturating_sub(digits as u32)))
}

/// A zone designator as seconds east of UTC; none at all is UTC.
fn zone(c: &mut Cursor<'_>) -> Option<i64> {
    if c.eat(b'Z') || c.eat(b'z') || c.peek().is_none() {
        return Some(0);
    }
    let sign = if c.eat(b'+') {
        1
    } else if c.eat(b'-') {
        -1
    } else {
        return None;
    };
    let hours = c.digits(2)?;
    let minutes = if c.eat(b':') {
        c.digits(2)?
    } else {
        c.digits(2).unwrap_or(0)
    };
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some(sign * i64::from(hours * 3600 + minutes * 60))
}

/// Month number (1..=12) of an English three-letter abbreviation, any case.
pub(crate) fn month_of_abbrev(m: &[u8]) -> Option<u32> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    MONTHS
        .iter()
        .position(|name| name.eq_ignore_ascii_case(m))
        .map(|i| i as u32 + 1)
}

/// Parses the RFC 3164 timestamp `Mmm dd hh:mm:ss` (day padded with a space or a zero) at
/// the start of `s`; returns the month, day, clock and the bytes it took (always 15).
pub(crate) fn parse_bsd_timestamp(s: &[u8]) -> Option<(u32, u32, Clock, usize)> {
    let head = s.get(..15)?;
    let month = month_of_abbrev(&head[..3])?;
    if head[3] != b' ' {
        return None;
    }
    let day = match (head[4], head[5]) {
        (b' ', d @ b'1'..=b'9') => u32::from(d - b'0'),
        (a @ b'0'..=b'3', b @ b'0'..=b'9') => u32::from(a - b'0') * 10 + u32::from(b - b'0'),
        _ => return None,
    };
    let mut c = Cursor { s: head, at: 6 };
    if !c.eat(b' ') {
        return None;
    }
    let hour = c.digits(2)?;
    if !c.eat(b':') {
        return None;
    }
    let minute = c.digits(2)?;
    if !c.eat(b':') {
        return None;
    }
    let second = c.digits(2)?;
    let clock = Clock {
        hour,
        minute,
        second,
        nanos: 0,
    };
    Some((month, day, clock, 15))
}

/// The time of a year-less date (RFC 3164) in the year that puts it closest to
/// `reference_ns`: last December's line read in January is last year's. Local time is
/// taken as UTC (the text has no zone). `None` when the date exists in none of the
/// candidate years (29 February far from a leap year) or the clock is invalid.
pub(crate) fn nearest_year_ns(
    month: u32,
    day: u32,
    clock: Clock,
    reference_ns: i64,
) -> Option<i64> {
    let year = year_of(reference_ns);
    [year - 1, year, year + 1]
        .into_iter()
        .filter_map(|y| civil_to_ns(y, month, day, clock, 0))
        .min_by_key(|&ns| (i128::from(ns) - i128::from(reference_ns)).unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_forms() {
        let base = 1_705_314_030_000_000_000; // 2024-01-15T10:20:30Z
        let cases = [
            ("2024-01-15T10:20:30Z", base),
            ("2024-01-15T10:20:30.123Z", base + 123_000_000),
            ("2024-01-15t10:20:30.123456789z", base + 123_456_789),
            ("2024-01-15T10:20:30.1234567891Z", base + 123_456_789),
            ("2024-01-15T11:20:30+01:00", base),
            ("2024-01-15T11:20:30+0100", base),
            ("2024-01-15T11:20:30+01", base),
            ("2024-01-15T05:20:30-05:00", base),
            ("2024-01-15 10:20:30", base),
            ("2024-01-15T10:20", base - 30 * SECOND_NS),
            ("2024-01-15", base - (10 * 3600 + 20 * 60 + 30) * SECOND_NS),
            ("1970-01-01T00:00:00Z", 0),
        ];
        for (text, want) in cases {
            assert_eq!(parse_rfc3339(text), Some(want), "{text}");
        }
        for bad in [
            "",
            "2024-1-15",
            "2024-02-30T00:00:00Z",
            "2024-01-15T25:00:00Z",
            "2024-01-15T10:20:30.Z",
            "2024-01-15T10:20:30Q",
            "2024-01-15T10:20:30Z junk",
            "9999-12-31T23:59:59Z", // past i64 nanoseconds
            "1705314030",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        for ns in [0, 1_705_314_030_000_000_000, -1, i64::MAX, i64::MIN] {
            let y = year_of(ns);
            let start = days_from_civil(y, 1, 1) as i128 * 86_400 * SECOND_NS as i128;
            let next = days_from_civil(y + 1, 1, 1) as i128 * 86_400 * SECOND_NS as i128;
            assert!(start <= ns as i128 && (ns as i128) < next, "{ns} in {y}");
        }
    }

    #[test]
    fn bsd_timestamp_takes_the_nearest_year() {
        let (m, d, clock, n) = parse_bsd_timestamp(b"Dec  6 11:32:29 vm myapp").unwrap();
        assert_eq!((m, d, n), (12, 6, 15));
        // Received 2025-01-02: December is last year's.
        let jan_2025 = civil_to_ns(2025, 1, 2, clock, 0).unwrap();
        let got = nearest_year_ns(m, d, clock, jan_2025).unwrap();
        assert_eq!(year_of(got), 2024);
        // Received in the same December: this year.
        let dec_2024 = civil_to_ns(2024, 12, 6, clock, 0).unwrap();
        assert_eq!(nearest_year_ns(m, d, clock, dec_2024), Some(dec_2024));
        assert!(parse_bsd_timestamp(b"Dec 06 11:32:29").is_some());
        assert!(parse_bsd_timestamp(b"Dez  6 11:32:29").is_none());
        assert!(parse_bsd_timestamp(b"Dec  6 11:32").is_none());
        // 29 February read in 2023: 2024 is the only candidate leap year.
        let (m, d, clock, _) = parse_bsd_timestamp(b"Feb 29 00:00:00").unwrap();
        let mid_2023 = civil_to_ns(2023, 7, 1, clock, 0).unwrap();
        assert_eq!(
            year_of(nearest_year_ns(m, d, clock, mid_2023).unwrap()),
            2024
        );
        let mid_2022 = civil_to_ns(2022, 1, 1, clock, 0).unwrap();
        assert_eq!(nearest_year_ns(m, d, clock, mid_2022), None);
    }
}
