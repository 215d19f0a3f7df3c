//! Syslog: one message to a record ([`parse_syslog`]), and the TCP framing of RFC 6587
//! ([`SyslogFramer`]). UDP carries one message per datagram and needs no framer.
//!
//! # Mapping
//!
//! | syslog | Weir |
//! | --- | --- |
//! | PRI severity 0-2 / 3 / 4 / 5-6 / 7 | level fatal / error / warn / info / debug |
//! | PRI facility | attribute `syslog.facility` (`kern`, `user`, ..., `local7`) |
//! | TIMESTAMP (RFC 5424: RFC 3339; RFC 3164: `Mmm dd hh:mm:ss`, in the year closest to the receive time, UTC) | `timestamp_ns`; `-` = the receive time |
//! | HOSTNAME | label `host` |
//! | APP-NAME / TAG | `service` |
//! | PROCID / `TAG[pid]` | attribute `syslog.procid` |
//! | MSGID | attribute `syslog.msgid` |
//! | STRUCTURED-DATA `[id p="v"]` | attribute `sd.id.p` (`sd.id` = "" for an element without parameters) |
//! | MSG (a UTF-8 BOM dropped) | `body` |
//!
//! A message that does not parse is kept whole as the body, with attribute `syslog.error`
//! naming what was wrong and where (and the level and facility when the PRI was readable).

use std::collections::BTreeMap;

use weir_proto::v1::Record;

use crate::timefmt::{nearest_year_ns, parse_bsd_timestamp, parse_rfc3339};
use crate::Level;

/// Facility names by number (RFC 5424 section 6.2.1, the keywords syslog daemons use).
const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

const BOM: &[u8] = b"\xef\xbb\xbf";

/// Parses one syslog message, RFC 5424 (`<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID
/// SD MSG`) or RFC 3164 (`<PRI>Mmm dd hh:mm:ss HOSTNAME TAG[pid]: MSG`, also with an RFC
/// 3339 timestamp as rsyslog's forwarding format writes it), into a record by the table of
/// the [module doc](crate::syslog). `received_ns` is the receive time: the time of a message without one,
/// and the reference that picks the year of an RFC 3164 timestamp.
///
/// Trailing `\n`, `\r` and NUL bytes are trimmed. Never fails: a malformed message is
/// stored whole with attribute `syslog.error` (see the [module doc](crate::syslog)).
///
/// ```
/// use weir_ingest::parse_syslog;
/// let r = parse_syslog(b"<155>1 2024-01-15T10:20:30.5Z vm myapp 42 - - card declined\n", 0);
/// assert_eq!((r.service.as_str(), r.level.as_str()), ("myapp", "error"));
/// assert_eq!(r.timestamp_ns, 1_705_314_030_500_000_000);
/// assert_eq!(r.labels["host"], "vm");
/// assert_eq!(r.attributes["syslog.facility"], "local3");
/// assert_eq!(r.body, b"card declined");
/// ```
pub fn parse_syslog(msg: &[u8], received_ns: i64) -> Record {
    let mut end = msg.len();
    while end > 0 && matches!(msg[end - 1], b'\n' | b'\r' | 0) {
        end -= 1;
    }
    let msg = &msg[..end];
    let (pri, after_pri) = match pri(msg) {
        Ok(found) => found,
        Err(e) => return malformed(msg, received_ns, None, e),
    };
    let parsed = if msg[after_pri..].starts_with(b"1 ") {
        rfc5424(msg, after_pri + 2, received_ns)
    } else {
        rfc3164(msg, after_pri, received_ns)
    };
    match parsed {
        Ok(mut record) => {
            set_pri(&mut record, pri);
            record
        }
        Err(e) => malformed(msg, received_ns, Some(pri), e),
    }
}

type Parsed<T> = std::result::Result<T, String>;

/// `<PRI>`: the priority value and the offset after `>`.
fn pri(msg: &[u8]) -> Parsed<(u8, usize)> {
    let expected = "expected <PRI> (\"<\", 0-191, \">\") at the start";
    if msg.first() != Some(&b'<') {
        return Err(expected.to_owned());
    }
    let digits = msg[1..].iter().take_while(|b| b.is_ascii_digit()).count();
    if !(1..=3).contains(&digits) || msg.get(1 + digits) != Some(&b'>') {
        return Err(expected.to_owned());
    }
    let value: u32 = msg[1..1 + digits]
        .iter()
        .fold(0, |v, b| v * 10 + u32::from(b - b'0'));
    u8::try_from(value)
        .ok()
        .filter(|&v| v <= 191)
        .map(|v| (v, digits + 2))
        .ok_or_else(|| format!("PRI {value} is out of range 0-191"))
}

fn set_pri(record: &mut Record, pri: u8) {
    record.level = match pri % 8 {
        0..=2 => Level::Fatal,
        3 => Level::Error,
        4 => Level::Warn,
        5 | 6 => Level::Info,
        _ => Level::Debug,
    }
    .as_str()
    .to_owned();
    record.attributes.insert(
        "syslog.facility".to_owned(),
        FACILITIES[usize::from(pri / 8)].to_owned(),
    );
}

fn malformed(msg: &[u8], received_ns: i64, pri: Option<u8>, reason: String) -> Record {
    let mut record = Record {
        timestamp_ns: received_ns,
        level: Level::Info.as_str().to_owned(),
        body: msg.to_vec(),
        ..Default::default()
    };
    record.attributes.insert("syslog.error".to_owned(), reason);
    if let Some(pri) = pri {
        set_pri(&mut record, pri);
    }
    record
}

/// A cursor over the message; offsets in errors are byte offsets into it.
struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a [u8] {
        &self.s[self.at.min(self.s.len())..]
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    /// The bytes up to the next space (not included), which is consumed.
    fn field(&mut self, name: &str) -> Parsed<&'a [u8]> {
        let start = self.at;
        let Some(len) = self.rest().iter().position(|&b| b == b' ') else {
            return Err(format!(
                "RFC 5424 header ends at byte {} before {name}",
                self.s.len()
            ));
        };
        self.at += len + 1;
        if len == 0 {
            return Err(format!("{name} is empty at byte {start} (use - for none)"));
        }
        Ok(&self.s[start..start + len])
    }
}

/// An RFC 5424 header field: `-` is none.
fn nil_or_text(field: &[u8]) -> String {
    if field == b"-" {
        String::new()
    } else {
        String::from_utf8_lossy(field).into_owned()
    }
}

fn rfc5424(msg: &[u8], start: usize, received_ns: i64) -> Parsed<Record> {
    let mut c = Cursor { s: msg, at: start };
    let ts_at = c.at;
    let ts = c.field("TIMESTAMP")?;
    let timestamp_ns = if ts == b"-" {
        received_ns
    } else {
        std::str::from_utf8(ts)
            .ok()
            .and_then(parse_rfc3339)
            .ok_or_else(|| {
                format!(
                    "TIMESTAMP {} at byte {ts_at} is not RFC 3339",
                    crate::quote(&String::from_utf8_lossy(ts))
                )
            })?
    };
    let host = nil_or_text(c.field("HOSTNAME")?);
    let app = nil_or_text(c.field("APP-NAME")?);
    let procid = nil_or_text(c.field("PROCID")?);
    let msgid = nil_or_text(c.field("MSGID")?);
    let mut attributes = BTreeMap::new();
    structured_data(&mut c, &mut attributes)?;
    let body = match c.peek() {
        None => &[][..],
        Some(b' ') => {
            c.at += 1;
            let rest = c.rest();
            rest.strip_prefix(BOM).unwrap_or(rest)
        }
        Some(_) => {
            return Err(format!(
                "expected a space before MSG at byte {} after STRUCTURED-DATA",
                c.at
            ))
        }
    };
    if !procid.is_empty() {
        attributes.insert("syslog.procid".to_owned(), procid);
    }
    if !msgid.is_empty() {
        attributes.insert("syslog.msgid".to_owned(), msgid);
    }
    Ok(record(timestamp_ns, host, app, attributes, body))
}

fn record(
    timestamp_ns: i64,
    host: String,
    service: String,
    attributes: BTreeMap<String, String>,
    body: &[u8],
) -> Record {
    let mut labels = BTreeMap::new();
    if !host.is_empty() {
        labels.insert("host".to_owned(), host);
    }
    Record {
        timestamp_ns,
        body: body.to_vec(),
        service,
        labels,
        attributes,
        ..Default::default()
    }
}

/// `-` or one or more `[SD-ID *(SP PARAM-NAME="PARAM-VALUE")]`, into `sd.*` attributes.
fn structured_data(c: &mut Cursor<'_>, attributes: &mut BTreeMap<String, String>) -> Parsed<()> {
    match c.peek() {
        Some(b'-') => {
            c.at += 1;
            return Ok(());
        }
        Some(b'[') => {}
        _ => {
            return Err(format!(
                "STRUCTURED-DATA at byte {} is neither - nor [id ...]",
                c.at
            ))
        }
    }
    while c.peek() == Some(b'[') {
        let open = c.at;
        c.at += 1;
        let id = sd_name(c, "SD-ID")?;
        let mut params = 0;
        loop {
            match c.peek() {
                Some(b']') => {
                    c.at += 1;
                    break;
                }
                Some(b' ') => {
                    c.at += 1;
                    let name = sd_name(c, "PARAM-NAME")?;
                    if c.peek() != Some(b'=') || c.s.get(c.at + 1) != Some(&b'"') {
                        return Err(format!(
                            "expected =\" after PARAM-NAME {} at byte {}",
                            crate::quote(&name),
                            c.at
                        ));
                    }
                    c.at += 2;
                    let value = sd_value(c, open)?;
                    attributes.insert(format!("sd.{id}.{name}"), value);
                    params += 1;
                }
                _ => {
                    return Err(format!(
                        "SD-ELEMENT opened at byte {open} is not closed by ]"
                    ))
                }
            }
        }
        if params == 0 {
            attributes.insert(format!("sd.{id}"), String::new());
        }
    }
    Ok(())
}

/// An SD-NAME: 1 to 32 printable ASCII characters but `=`, space, `]` and `"`.
fn sd_name(c: &mut Cursor<'_>, what: &str) -> Parsed<String> {
    let start = c.at;
    let len = c
        .rest()
        .iter()
        .take_while(|&&b| (33..=126).contains(&b) && !matches!(b, b'=' | b']' | b'"'))
        .count();
    if !(1..=32).contains(&len) {
        return Err(format!(
            "{what} at byte {start} must be 1 to 32 printable ASCII characters (but = ] \" and space)"
        ));
    }
    c.at += len;
    Ok(String::from_utf8_lossy(&c.s[start..start + len]).into_owned())
}

/// A PARAM-VALUE after its opening quote, up to the closing one: `\"`, `\\` and `\]` are
/// escapes, any other backslash is literal (RFC 5424 section 6.3.3).
fn sd_value(c: &mut Cursor<'_>, open: usize) -> Parsed<String> {
    let mut value = Vec::new();
    loop {
        match c.peek() {
            None => {
                return Err(format!(
                    "a PARAM-VALUE in the SD-ELEMENT opened at byte {open} is not closed by \""
                ))
            }
            Some(b'"') => {
                c.at += 1;
                return Ok(String::from_utf8_lossy(&value).into_owned());
            }
            Some(b'\\') if matches!(c.s.get(c.at + 1), Some(b'"' | b'\\' | b']')) => {
                value.push(c.s[c.at + 1]);
                c.at += 2;
            }
            Some(b) => {
                value.push(b);
                c.at += 1;
            }
        }
    }
}

fn rfc3164(msg: &[u8], start: usize, received_ns: i64) -> Parsed<Record> {
    let mut c = Cursor { s: msg, at: start };
    let timestamp_ns = bsd_or_rfc3339_timestamp(&mut c, received_ns)?;
    // HOSTNAME, unless the next word is already the TAG (local senders leave it out).
    let word_len = c
        .rest()
        .iter()
        .position(|&b| b == b' ')
        .unwrap_or(c.rest().len());
    let word = &c.rest()[..word_len];
    let host = if word_len > 0
        && word_len < c.rest().len()
        && !word.ends_with(b":")
        && !word.contains(&b'[')
    {
        c.at += word_len + 1;
        String::from_utf8_lossy(word).into_owned()
    } else {
        String::new()
    };
    let mut attributes = BTreeMap::new();
    let (service, body) = match tag(c.rest()) {
        Some((tag, pid, rest)) => {
            if let Some(pid) = pid {
                attributes.insert("syslog.procid".to_owned(), pid);
            }
            (tag, rest)
        }
        None => (String::new(), c.rest()),
    };
    Ok(record(timestamp_ns, host, service, attributes, body))
}

/// `Mmm dd hh:mm:ss` or an RFC 3339 timestamp, then a space (or the end).
fn bsd_or_rfc3339_timestamp(c: &mut Cursor<'_>, received_ns: i64) -> Parsed<i64> {
    let at = c.at;
    let rest = c.rest();
    let ns = if let Some((month, day, clock, len)) = parse_bsd_timestamp(rest) {
        c.at += len;
        nearest_year_ns(month, day, clock, received_ns).ok_or_else(|| {
            format!("timestamp at byte {at} is not a date in any year near the receive time")
        })?
    } else if rest.len() > 4 && rest[..4].iter().all(u8::is_ascii_digit) && rest[4] == b'-' {
        let len = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        let text = String::from_utf8_lossy(&rest[..len]);
        c.at += len;
        parse_rfc3339(&text).ok_or_else(|| {
            format!(
                "timestamp {} at byte {at} is not RFC 3339",
                crate::quote(&text)
            )
        })?
    } else {
        return Err(format!(
            "expected a timestamp (RFC 3164 Mmm dd hh:mm:ss, or RFC 3339) or the RFC 5424 \
             version \"1 \" at byte {at}"
        ));
    };
    match c.peek() {
        None => Ok(ns),
        Some(b' ') => {
            c.at += 1;
            Ok(ns)
        }
        Some(_) => Err(format!(
            "expected a space after the timestamp at byte {}",
            c.at
        )),
    }
}

/// Longest TAG read as one (RFC 3164 says 32; real ones such as `postfix/smtpd` or
/// `systemd-resolved` pass that rarely, but a word this long is prose, not a tag).
const TAG_BYTES_MAX: usize = 64;

/// `TAG: MSG` or `TAG[pid]: MSG` at the start of `s`: the tag, the pid and the message
/// (one space after the colon dropped). `None` when `s` does not start with a tag.
fn tag(s: &[u8]) -> Option<(String, Option<String>, &[u8])> {
    let len = s
        .iter()
        .take(TAG_BYTES_MAX + 1)
        .position(|&b| matches!(b, b'[' | b':' | b' '))?;
    if len == 0 || len > TAG_BYTES_MAX {
        return None;
    }
    let name = String::from_utf8_lossy(&s[..len]).into_owned();
    let (pid, after) = match s[len] {
        b':' => (None, len + 1),
        b'[' => {
            let close = s[len..].iter().take(34).position(|&b| b == b']')? + len;
            let pid = String::from_utf8_lossy(&s[len + 1..close]).into_owned();
            match s.get(close + 1) {
                Some(b':') => (Some(pid), close + 2),
                // `TAG[pid] MSG`: some senders leave the colon out.
                None | Some(b' ') => (Some(pid), close + 1),
                Some(_) => return None,
            }
        }
        _ => return None,
    };
    let rest = &s[after..];
    Some((name, pid, rest.strip_prefix(b" ").unwrap_or(rest)))
}

/// Splits a TCP byte stream into syslog messages (RFC 6587). Each frame's first byte tells
/// its framing: a digit is octet counting (`LEN SP MSG`), anything else (normally `<`) a
/// message ended by LF (or NUL, which some older senders use). Blank bytes between frames
/// (`\n`, `\r`, NUL, space) are skipped.
///
/// Memory is bounded by `max_message_bytes`: a message over it is answered with an `Err`
/// naming the limit as soon as that is known, and its bytes are skipped as they arrive,
/// never buffered. An octet count that is not followed by a space, or that has more than
/// 20 digits, loses the framing: the stream is skipped up to the next LF and read on from
/// there.
///
/// ```
/// use weir_ingest::SyslogFramer;
/// let mut f = SyslogFramer::new(1024);
/// let mut got = f.push(b"10 <13>1 - - ");
/// got.extend(f.push(b"<13>Jan  5 10:00:00 host app: hi\n<13>partial"));
/// assert_eq!(got, vec![Ok(b"<13>1 - - ".to_vec()), Ok(b"<13>Jan  5 10:00:00 host app: hi".to_vec())]);
/// assert_eq!(f.finish(), Some(b"<13>partial".to_vec()));
/// ```
#[derive(Debug)]
pub struct SyslogFramer {
    max: usize,
    buf: Vec<u8>,
    state: Frame,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    /// Between frames.
    Start,
    /// Reading an octet count: the value and the digits so far.
    Count(u64, u8),
    /// Reading an octet-counted message of this many bytes into `buf`.
    Octets(usize),
    /// Reading an LF-terminated message into `buf`.
    Line,
    /// Skipping this many bytes of an octet-counted message over the limit.
    SkipOctets(u64),
    /// Skipping up to the next LF (a line over the limit, or a lost octet count).
    SkipLine,
}

/// Most digits an octet count may have: enough for any `u64`.
const COUNT_DIGITS_MAX: u8 = 20;

impl SyslogFramer {
    /// A framer for messages of at most `max_message_bytes` (the message itself, not the
    /// octet count in front of it).
    pub fn new(max_message_bytes: usize) -> Self {
        SyslogFramer {
            max: max_message_bytes,
            buf: Vec::new(),
            state: Frame::Start,
        }
    }

    /// Bytes held for a message not complete yet; never more than `max_message_bytes`.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Feeds the next bytes of the stream; returns the messages they complete, in order,
    /// and an `Err` for each message skipped (over the limit, or a broken octet count).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<std::result::Result<Vec<u8>, String>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            i += self.step(&bytes[i..], &mut out);
        }
        out
    }

    /// Consumes some of `bytes` (at least one) in the current state.
    fn step(&mut self, bytes: &[u8], out: &mut Vec<std::result::Result<Vec<u8>, String>>) -> usize {
        match self.state {
            Frame::Start => {
                match bytes[0] {
                    b'\n' | b'\r' | 0 | b' ' => {}
                    b'0'..=b'9' => self.state = Frame::Count(0, 0),
                    _ => self.state = Frame::Line,
                }
                // A digit or the first byte of a line is read again in its new state.
                usize::from(self.state == Frame::Start)
            }
            Frame::Count(n, digits) => {
                self.count(bytes[0], n, digits, out);
                1
            }
            Frame::Octets(len) => {
                let take = (len - self.buf.len()).min(bytes.len());
                self.buf.extend_from_slice(&bytes[..take]);
                if self.buf.len() == len {
                    out.push(Ok(std::mem::take(&mut self.buf)));
                    self.state = Frame::Start;
                }
                take
            }
            Frame::Line => {
                let end = bytes.iter().position(|&b| b == b'\n' || b == 0);
                let piece = &bytes[..end.unwrap_or(bytes.len())];
                if self.buf.len() + piece.len() > self.max {
                    self.buf = Vec::new();
                    out.push(Err(format!(
                        "syslog message is longer than {} bytes (the message size limit); \
                         it was skipped up to its end of line",
                        self.max
                    )));
                    self.state = Frame::SkipLine;
                    return piece.len();
                }
                self.buf.extend_from_slice(piece);
                match end {
                    Some(end) => {
                        out.push(Ok(std::mem::take(&mut self.buf)));
                        self.state = Frame::Start;
                        end + 1
                    }
                    None => bytes.len(),
                }
            }
            Frame::SkipOctets(left) => {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                let left = left - take as u64;
                self.state = if left == 0 {
                    Frame::Start
                } else {
                    Frame::SkipOctets(left)
                };
                take
            }
            Frame::SkipLine => match bytes.iter().position(|&b| b == b'\n' || b == 0) {
                Some(end) => {
                    self.state = Frame::Start;
                    end + 1
                }
                None => bytes.len(),
            },
        }
    }

    /// One byte of an octet count (`n` so far, of `digits` digits).
    fn count(
        &mut self,
        b: u8,
        n: u64,
        digits: u8,
        out: &mut Vec<std::result::Result<Vec<u8>, String>>,
    ) {
        let lost = |out: &mut Vec<_>, why: String| {
            out.push(Err(format!(
                "{why}; octet counting is \"LEN SP MSG\" (RFC 6587); skipped to the next LF"
            )));
            Frame::SkipLine
        };
        self.state = match b {
            b'0'..=b'9' if digits < COUNT_DIGITS_MAX => {
                match n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(b - b'0')))
                {
                    Some(n) => Frame::Count(n, digits + 1),
                    None => lost(out, "the octet count is past 2^64".to_owned()),
                }
            }
            b'0'..=b'9' => lost(
                out,
                format!("the octet count has more than {COUNT_DIGITS_MAX} digits"),
            ),
            b' ' if n == 0 => lost(out, "the octet count is 0".to_owned()),
            b' ' => match usize::try_from(n).ok().filter(|&n| n <= self.max) {
                Some(len) => Frame::Octets(len),
                None => {
                    out.push(Err(format!(
                        "syslog message of {n} bytes (octet count) is longer than {} bytes \
                         (the message size limit); it was skipped",
                        self.max
                    )));
                    Frame::SkipOctets(n)
                }
            },
            // A line end ends the broken frame itself: read on from the next byte.
            b'\n' => {
                lost(
                    out,
                    format!("the octet count {n} is followed by a line end, not a space"),
                );
                Frame::Start
            }
            other => lost(
                out,
                format!(
                    "the octet count {n} is followed by {:?}, not a space",
                    char::from(other)
                ),
            ),
        };
    }

    /// Ends the stream: the last message if it was LF-framed and its LF never came. A
    /// partial octet-counted message is incomplete by its own count and is dropped.
    pub fn finish(self) -> Option<Vec<u8>> {
        (self.state == Frame::Line && !self.buf.is_empty()).then_some(self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timefmt::{civil_to_ns, Clock};
    use crate::{normalize, Limits};

    /// 2026-12-06T11:32:30Z, just after util-linux `logger` wrote the messages below.
    fn received() -> i64 {
        let clock = Clock {
            hour: 11,
            minute: 32,
            second: 30,
            nanos: 0,
        };
        civil_to_ns(2026, 12, 6, clock, 0).unwrap()
    }

    fn attrs(r: &Record) -> Vec<(&str, &str)> {
        let mut a: Vec<(&str, &str)> = r
            .attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        a.sort_unstable();
        a
    }

    #[test]
    fn logger_rfc5424() {
        // `logger --rfc5424 -t myapp -p local3.err 'hello world'` over UDP.
        let msg = br#"<155>1 2026-12-06T11:32:29.906552+00:00 vm myapp - - [timeQuality tzKnown="1" isSynced="0"] hello world"#;
        let r = parse_syslog(msg, received());
        assert_eq!(r.timestamp_ns, received() - 1_000_000_000 + 906_552_000);
        assert_eq!(r.level, "error");
        assert_eq!(r.service, "myapp");
        assert_eq!(
            r.labels,
            BTreeMap::from([("host".to_owned(), "vm".to_owned())])
        );
        assert_eq!(r.body, b"hello world");
        assert_eq!(
            attrs(&r),
            [
                ("sd.timeQuality.isSynced", "0"),
                ("sd.timeQuality.tzKnown", "1"),
                ("syslog.facility", "local3"),
            ]
        );
        let n = normalize(
            weir_proto::v1::AppendRequest {
                records: vec![r],
                ..Default::default()
            },
            received(),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(n.rejected, vec![]);
    }

    #[test]
    fn logger_rfc5424_with_procid_msgid_and_two_elements() {
        // `logger --rfc5424 --id=77 --msgid ID47 --sd-id exampleSDID@32473
        //  --sd-param 'iut="3"' --sd-param 'eventSource="Application"' -t app 'msg with sd'`
        let msg = br#"<13>1 2026-12-06T11:32:31.063062+00:00 vm app 77 ID47 [timeQuality tzKnown="1" isSynced="0"][exampleSDID@32473 iut="3" eventSource="Application"] msg with sd"#;
        let r = parse_syslog(msg, received());
        assert_eq!((r.level.as_str(), r.service.as_str()), ("info", "app"));
        assert_eq!(r.body, b"msg with sd");
        assert_eq!(
            attrs(&r),
            [
                ("sd.exampleSDID@32473.eventSource", "Application"),
                ("sd.exampleSDID@32473.iut", "3"),
                ("sd.timeQuality.isSynced", "0"),
                ("sd.timeQuality.tzKnown", "1"),
                ("syslog.facility", "user"),
                ("syslog.msgid", "ID47"),
                ("syslog.procid", "77"),
            ]
        );
    }

    #[test]
    fn rfc5424_edge_cases() {
        // The RFC's own examples: a BOM before the message, nil fields, escapes, no MSG.
        let r = parse_syslog(
            b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \xef\xbb\xbf'su root' failed\r\n",
            0,
        );
        assert_eq!(r.level, "fatal");
        assert_eq!(r.attributes["syslog.facility"], "auth");
        assert_eq!(r.timestamp_ns, 1_065_910_455_003_000_000);
        assert_eq!(r.body, b"'su root' failed");
        let r = parse_syslog(
            br#"<165>1 2003-08-24T05:14:15.000003-07:00 - - - - [ex@1 a="x\"y\]z\\w\q"][solo]"#,
            0,
        );
        assert_eq!(r.level, "info");
        assert_eq!(r.attributes["syslog.facility"], "local4");
        assert_eq!(r.attributes["sd.ex@1.a"], r#"x"y]z\w\q"#);
        assert_eq!(r.attributes["sd.solo"], "");
        assert!(r.labels.is_empty() && r.service.is_empty());
        assert_eq!(r.body, b"");
        let r = parse_syslog(b"<15>1 - host - - - -", 42);
        assert_eq!((r.timestamp_ns, r.level.as_str()), (42, "debug"));
        assert!(!r.attributes.contains_key("syslog.error"));
    }

    #[test]
    fn logger_rfc3164_and_rsyslog_forms() {
        // `logger --rfc3164 -t myapp -p user.warning --id=4242 'hello 3164'`.
        let r = parse_syslog(
            b"<12>Dec  6 11:32:29 vm myapp[4242]: hello 3164",
            received(),
        );
        assert_eq!(r.timestamp_ns, received() - 1_000_000_000);
        assert_eq!((r.level.as_str(), r.service.as_str()), ("warn", "myapp"));
        assert_eq!(r.labels["host"], "vm");
        assert_eq!(r.attributes["syslog.procid"], "4242");
        assert_eq!(r.body, b"hello 3164");
        // Over TCP without octet counting, logger ends the line with LF.
        let r = parse_syslog(b"<13>Dec  6 11:32:31 vm app: two\n", received());
        assert_eq!(
            (r.service.as_str(), r.body.as_slice()),
            ("app", &b"two"[..])
        );
        // Local senders (the /dev/log form) leave the hostname out.
        let r = parse_syslog(b"<30>Dec  6 11:32:29 systemd[1]: Started cron.", received());
        assert_eq!((r.service.as_str(), r.labels.len()), ("systemd", 0));
        assert_eq!(r.attributes["syslog.facility"], "daemon");
        // rsyslog's RSYSLOG_ForwardFormat: an RFC 3339 timestamp, no version.
        let r = parse_syslog(
            b"<86>2024-01-15T10:20:30.123456+01:00 web1 sshd[311]: Accepted publickey",
            0,
        );
        assert_eq!(r.timestamp_ns, 1_705_310_430_123_456_000);
        assert_eq!(
            (r.service.as_str(), r.labels["host"].as_str()),
            ("sshd", "web1")
        );
        assert_eq!(r.attributes["syslog.facility"], "authpriv");
        // No tag: the rest is the message.
        let r = parse_syslog(b"<13>Dec  6 11:32:29 vm just some words", received());
        assert_eq!(
            (r.service.as_str(), r.body.as_slice()),
            ("", &b"just some words"[..])
        );
        assert!(!r.attributes.contains_key("syslog.error"));
    }

    #[test]
    fn last_decembers_line_read_in_january_is_last_year() {
        let clock = Clock {
            hour: 0,
            minute: 0,
            second: 5,
            nanos: 0,
        };
        let jan_1 = civil_to_ns(2027, 1, 1, clock, 0).unwrap();
        let r = parse_syslog(b"<13>Dec 31 23:59:59 h t: late", jan_1);
        assert_eq!(r.timestamp_ns, jan_1 - 6_000_000_000);
    }

    #[test]
    fn malformed_messages_are_kept_whole_with_the_reason() {
        let cases: [(&[u8], &str, Option<&str>); 8] = [
            (b"no pri at all", "expected <PRI> (\"<\", 0-191, \">\") at the start", None),
            (b"<192>1 - - - - - -", "PRI 192 is out of range 0-191", None),
            (b"<13>1 2024-13-01T00:00:00Z h a - - - x", "TIMESTAMP \"2024-13-01T00:00:00Z\" at byte 6 is not RFC 3339", Some("info")),
            (b"<11>1 - h a", "RFC 5424 header ends at byte 11 before APP-NAME", Some("error")),
            (b"<13>1 - h a - - [x a=\"1", "a PARAM-VALUE in the SD-ELEMENT opened at byte 16 is not closed", Some("info")),
            (b"<13>1 - h a - - [x a=\"1\"", "SD-ELEMENT opened at byte 16 is not closed by ]", Some("info")),
            (b"<13>1 - h a - - x", "STRUCTURED-DATA at byte 16 is neither - nor [id ...]", Some("info")),
            (b"<13>yesterday h t: m", "expected a timestamp (RFC 3164 Mmm dd hh:mm:ss, or RFC 3339) or the RFC 5424 version \"1 \" at byte 4", Some("info")),
        ];
        for (msg, want, level) in cases {
            let r = parse_syslog(msg, 7);
            let e = &r.attributes["syslog.error"];
            assert!(e.starts_with(want), "{e}");
            assert_eq!(r.body, msg, "kept whole");
            assert_eq!(r.timestamp_ns, 7);
            assert_eq!(
                r.attributes.contains_key("syslog.facility"),
                level.is_some()
            );
            assert_eq!(r.level, level.unwrap_or("info"));
        }
        let r = parse_syslog(b"\xff\xfe<13>\0\0", 0);
        assert_eq!(r.body, b"\xff\xfe<13>");
    }

    #[test]
    fn framer_reads_octet_counting_and_lf_framing_in_one_stream() {
        // What `logger --tcp --octet-count` and `logger --tcp` send, back to back and cut
        // at every byte.
        let stream: &[u8] = b"92 <13>1 2026-12-06T11:32:31.065052+00:00 vm app - - [timeQuality tzKnown=\"1\" isSynced=\"0\"] one\
<13>Dec  6 11:32:31 vm app: two\n\r\n5 <1>ab\n";
        let want: Vec<std::result::Result<Vec<u8>, String>> = vec![
            Ok(stream[3..95].to_vec()),
            Ok(b"<13>Dec  6 11:32:31 vm app: two".to_vec()),
            Ok(b"<1>ab".to_vec()),
        ];
        for cut in 0..stream.len() {
            let mut f = SyslogFramer::new(1024);
            let mut got = f.push(&stream[..cut]);
            got.extend(f.push(&stream[cut..]));
            assert_eq!(got, want, "cut at {cut}");
            assert_eq!(f.finish(), None);
        }
        let mut f = SyslogFramer::new(1024);
        let got: Vec<_> = stream.iter().flat_map(|b| f.push(&[*b])).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn framer_skips_messages_over_the_limit_without_holding_them() {
        let mut f = SyslogFramer::new(8);
        let mut got = f.push(b"20 <13>");
        assert_eq!(got.len(), 1);
        assert!(got
            .remove(0)
            .unwrap_err()
            .contains("of 20 bytes (octet count) is longer than 8 bytes"));
        assert_eq!(f.buffered_bytes(), 0);
        assert_eq!(f.push(b"4567890123456789"), vec![]);
        assert_eq!(f.push(b"<1>ok\n<13>this line is too long"), vec![
            Ok(b"<1>ok".to_vec()),
            Err("syslog message is longer than 8 bytes (the message size limit); it was skipped up to its end of line".to_owned()),
        ]);
        assert_eq!(f.buffered_bytes(), 0);
        assert_eq!(
            f.push(b" still\n8 <1>exact"),
            vec![Ok(b"<1>exact".to_vec())]
        );
        assert_eq!(f.push(b"<1>1234\n"), vec![Ok(b"<1>1234".to_vec())]);
        assert_eq!(f.push(b"<1>"), vec![]);
        assert_eq!(f.finish(), Some(b"<1>".to_vec()));
    }

    #[test]
    fn framer_recovers_from_a_broken_octet_count_at_the_next_line() {
        let mut f = SyslogFramer::new(64);
        let got = f.push(b"2024-01-15 not syslog\n<1>next\n0 x\n12\n<1>after\n99999999999999999999999 z\n<1>end\n");
        let summary: Vec<String> = got
            .into_iter()
            .map(|r| match r {
                Ok(m) => String::from_utf8(m).unwrap(),
                Err(e) => format!("err: {e}"),
            })
            .collect();
        assert_eq!(summary.len(), 7, "{summary:#?}");
        assert!(
            summary[0].starts_with("err: the octet count 2024 is followed by '-'"),
            "{}",
            summary[0]
        );
        assert_eq!(summary[1], "<1>next");
        assert!(summary[2].starts_with("err: the octet count is 0"));
        assert!(summary[3].starts_with("err: the octet count 12 is followed by a line end"));
        assert_eq!(summary[4], "<1>after");
        assert!(
            summary[5].starts_with("err: the octet count is past 2^64"),
            "{}",
            summary[5]
        );
        assert_eq!(summary[6], "<1>end");
    }
}
