//! Durations, byte sizes and number formatting as Loki and Prometheus write them.

const NS: i64 = 1;
const US: i64 = 1_000;
const MS: i64 = 1_000_000;
const SEC: i64 = 1_000_000_000;
const MIN: i64 = 60 * SEC;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// Splits `s` into `(number, unit)` pairs: `1h30m` -> [("1","h"),("30","m")].
fn split_units(s: &str) -> Option<Vec<(&str, &str)>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        if num.is_empty() || unit.is_empty() || num == "." {
            return None;
        }
        out.push((num, unit));
        rest = tail;
    }
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

fn unit_ns(unit: &str, prometheus: bool) -> Option<i64> {
    Some(match unit {
        "ns" => NS,
        "us" | "µs" | "μs" => US,
        "ms" => MS,
        "s" => SEC,
        "m" => MIN,
        "h" => HOUR,
        "d" if prometheus => DAY,
        "w" if prometheus => 7 * DAY,
        "y" if prometheus => 365 * DAY,
        _ => return None,
    })
}

fn sum_units(parts: &[(&str, &str)], prometheus: bool) -> Option<i64> {
    let mut total: i128 = 0;
    for (num, unit) in parts {
        let mult = unit_ns(unit, prometheus)? as i128;
        let value: i128 = match num.split_once('.') {
            None => num.parse::<i128>().ok()?.checked_mul(mult)?,
            Some((int, frac)) => {
                let int: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
                let frac_digits = frac.len().min(18) as u32;
                let frac_val: i128 = if frac.is_empty() {
                    0
                } else {
                    frac[..frac_digits as usize].parse().ok()?
                };
                int.checked_mul(mult)?
                    .checked_add(frac_val.checked_mul(mult)? / 10i128.pow(frac_digits))?
            }
        };
        total = total.checked_add(value)?;
    }
    i64::try_from(total).ok()
}

/// Parses a range or offset duration (`5m`, `1h30m`, `500ms`, `1d`, `1.5s`) into nanoseconds.
///
/// Accepts Prometheus' units (`y w d h m s ms`) and Go's sub-millisecond ones (`us ns`).
pub fn parse_range_duration(s: &str) -> Option<i64> {
    sum_units(&split_units(s)?, true)
}

/// Parses a duration the way Go's `time.ParseDuration` does (`1.5s`, `-2m3s`, `300ms`, `0`).
///
/// # Errors
/// A message in Go's wording when `s` is not a duration.
pub fn parse_go_duration(s: &str) -> Result<i64, String> {
    let err = || format!("time: invalid duration \"{s}\"");
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if body == "0" {
        return Ok(0);
    }
    let value = sum_units(&split_units(body).ok_or_else(err)?, false).ok_or_else(err)?;
    Ok(if neg { -value } else { value })
}

/// Formats nanoseconds as a duration both [`parse_range_duration`] and
/// [`parse_go_duration`] read back to the same value (`1h30m`, `500ms`, `0s`).
pub fn format_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    let mut rest = ns.unsigned_abs();
    if ns < 0 {
        out.push('-');
    }
    for (unit, size) in [
        ("h", HOUR),
        ("m", MIN),
        ("s", SEC),
        ("ms", MS),
        ("us", US),
        ("ns", NS),
    ] {
        let size = size as u64;
        if rest >= size {
            out.push_str(&format!("{}{}", rest / size, unit));
            rest %= size;
        }
    }
    out
}

/// Parses a byte size the way go-humanize's `ParseBytes` does: `10KB` (1000s), `1MiB`
/// (1024s), `42`, `1.5 GB`; units are case-insensitive.
///
/// # Errors
/// A message naming the problem when `s` is not a size.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
        .unwrap_or(t.len());
    let num: String = t[..split].chars().filter(|c| *c != ',').collect();
    let value: f64 = num
        .parse()
        .map_err(|_| format!("strconv.ParseFloat: parsing \"{num}\": invalid syntax"))?;
    let unit = t[split..].trim().to_ascii_lowercase();
    let mult: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "ki" | "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mi" | "mib" => 1024f64.powi(2),
        "g" | "gb" => 1e9,
        "gi" | "gib" => 1024f64.powi(3),
        "t" | "tb" => 1e12,
        "ti" | "tib" => 1024f64.powi(4),
        "p" | "pb" => 1e15,
        "pi" | "pib" => 1024f64.powi(5),
        "e" | "eb" => 1e18,
        "ei" | "eib" => 1024f64.powi(6),
        _ => return Err(format!("unhandled size name: {unit}")),
    };
    let bytes = value * mult;
    if bytes.is_nan() || bytes >= u64::MAX as f64 {
        return Err(format!("too large: {s}"));
    }
    Ok(bytes as u64)
}

/// Parses a float the way Go's `strconv.ParseFloat` accepts label values
/// (`1`, `-2.5`, `1e3`, `+Inf`, `NaN`).
pub fn parse_float(s: &str) -> Option<f64> {
    if s.is_empty() || s.contains(char::is_whitespace) {
        return None;
    }
    s.parse::<f64>().ok()
}

/// Formats a sample value as Prometheus does in JSON: `2`, `0.5`, `+Inf`, `-Inf`, `NaN`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_durations_sum_their_parts() {
        assert_eq!(parse_range_duration("1h30m"), Some(90 * MIN));
        assert_eq!(parse_range_duration("500ms"), Some(500 * MS));
        assert_eq!(parse_range_duration("1d"), Some(DAY));
        assert_eq!(parse_range_duration("1.5s"), Some(1500 * MS));
        assert_eq!(parse_range_duration("5"), None);
        assert_eq!(parse_range_duration("m"), None);
        assert_eq!(parse_range_duration("99999999999999999y"), None);
    }

    #[test]
    fn go_durations_accept_signs_and_zero() {
        assert_eq!(parse_go_duration("1.5s"), Ok(1500 * MS));
        assert_eq!(parse_go_duration("-2m3s"), Ok(-(2 * MIN + 3 * SEC)));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert!(parse_go_duration("1d").is_err());
        assert!(parse_go_duration("abc").is_err());
    }

    #[test]
    fn formatted_durations_read_back() {
        for ns in [0, 1, 999, MS, 90 * MIN, DAY + 3 * SEC + 7, -5 * SEC] {
            assert_eq!(parse_go_duration(&format_duration(ns)), Ok(ns));
        }
    }

    #[test]
    fn humanize_bytes() {
        assert_eq!(parse_bytes("10KB"), Ok(10_000));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("42"), Ok(42));
        assert_eq!(parse_bytes("1.5 gb"), Ok(1_500_000_000));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn values_format_like_prometheus() {
        assert_eq!(format_value(2.0), "2");
        assert_eq!(format_value(0.5), "0.5");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
    }
}
