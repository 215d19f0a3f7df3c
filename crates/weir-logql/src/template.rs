//! The subset of Go's text/template that `line_format` and `label_format` accept.
//!
//! Supported: text, `{{.name}}`, `{{ .name }}`, trim markers `{{-`/`-}}`, string and
//! number literals, `__line__`, `__timestamp__`, function calls and pipes with
//! `ToUpper`, `ToLower`, `upper`, `lower`, `trim`, `trimSpace`, `replace`, `default`,
//! `printf`. Anything else (other functions, `if`, `range`, variables) is refused when
//! the query is parsed, with a message naming it.

use std::fmt::Write as _;

/// A compiled template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Action(Vec<Command>),
}

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Field(String),
    Str(String),
    Int(i64),
    Float(f64),
    Line,
    Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
enum Command {
    Arg(Arg),
    Call(Func, Vec<Arg>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Upper,
    Lower,
    Trim,
    Replace,
    Default,
    Printf,
}

/// A value during execution: label values are strings; literals may be numbers.
#[derive(Debug, Clone)]
enum Val {
    Str(String),
    Int(i64),
    Float(f64),
}

impl Val {
    fn into_string(self) -> String {
        match self {
            Val::Str(s) => s,
            Val::Int(i) => i.to_string(),
            Val::Float(f) => format!("{f}"),
        }
    }
}

const FUNCS: &str = "ToUpper, ToLower, upper, lower, trim, trimSpace, replace, default, printf";

fn func(name: &str) -> Option<(Func, usize)> {
    Some(match name {
        "ToUpper" | "upper" => (Func::Upper, 1),
        "ToLower" | "lower" => (Func::Lower, 1),
        "trim" | "trimSpace" => (Func::Trim, 1),
        "replace" => (Func::Replace, 3),
        "default" => (Func::Default, 2),
        "printf" => (Func::Printf, usize::MAX),
        _ => return None,
    })
}

impl Template {
    /// Compiles a template.
    ///
    /// # Errors
    /// A message naming the unsupported function or action, or the syntax problem.
    pub fn parse(src: &str) -> Result<Template, String> {
        let mut nodes = Vec::new();
        let mut rest = src;
        let mut trim_next_text = false;
        while let Some(open) = rest.find("{{") {
            let mut text = &rest[..open];
            if trim_next_text {
                text = text.trim_start();
            }
            let after = &rest[open + 2..];
            let trim_left = after.starts_with("- ");
            if trim_left {
                text = text.trim_end();
            }
            if !text.is_empty() {
                nodes.push(Node::Text(text.to_string()));
            }
            let close = after.find("}}").ok_or_else(|| {
                format!(
                    "template: unclosed action opened at offset {}",
                    src.len() - rest.len() + open
                )
            })?;
            let mut body = &after[..close];
            if trim_left {
                body = &body[2..];
            }
            trim_next_text = body.ends_with(" -");
            if trim_next_text {
                body = &body[..body.len() - 2];
            }
            nodes.push(Node::Action(parse_pipeline(body)?));
            rest = &after[close + 2..];
        }
        let text = if trim_next_text {
            rest.trim_start()
        } else {
            rest
        };
        if !text.is_empty() {
            nodes.push(Node::Text(text.to_string()));
        }
        Ok(Template { nodes })
    }

    /// Renders the template; `label` looks a label up ("" when missing).
    pub fn render(&self, label: &dyn Fn(&str) -> String, line: &str, ts_ns: i64) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Action(cmds) => {
                    let mut piped: Option<Val> = None;
                    for cmd in cmds {
                        piped = Some(exec(cmd, piped.take(), label, line, ts_ns));
                    }
                    if let Some(v) = piped {
                        out.push_str(&v.into_string());
                    }
                }
            }
        }
        out
    }
}

fn tokenize(body: &str) -> Result<Vec<String>, String> {
    let mut toks = Vec::new();
    let mut chars = body.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '"' || c == '`' {
            let end = string_end(body, i)?;
            toks.push(body[i..end].to_string());
            while chars.peek().is_some_and(|(j, _)| *j < end) {
                chars.next();
            }
            continue;
        }
        if c == '|' || c == '(' || c == ')' {
            toks.push(c.to_string());
            chars.next();
            continue;
        }
        let mut end = body.len();
        while let Some(&(j, d)) = chars.peek() {
            if d.is_whitespace() || d == '|' || d == '(' || d == ')' {
                end = j;
                break;
            }
            chars.next();
        }
        toks.push(body[i..end].to_string());
    }
    Ok(toks)
}

fn string_end(body: &str, start: usize) -> Result<usize, String> {
    let bytes = body.as_bytes();
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        if bytes[i] == b'\\' && quote == b'"' {
            i += 2;
            continue;
        }
        if bytes[i] == quote {
            return Ok(i + 1);
        }
        i += 1;
    }
    Err("template: unterminated string".to_string())
}

fn parse_pipeline(body: &str) -> Result<Vec<Command>, String> {
    let toks = tokenize(body)?;
    if toks.is_empty() {
        return Err("template: missing value for command".to_string());
    }
    let mut cmds = Vec::new();
    for (idx, part) in toks.split(|t| t == "|").enumerate() {
        cmds.push(parse_command(part, idx > 0)?);
    }
    Ok(cmds)
}

fn parse_command(toks: &[String], piped: bool) -> Result<Command, String> {
    let Some(first) = toks.first() else {
        return Err("template: missing command in pipeline".to_string());
    };
    if let Some(kw) = [
        "if", "else", "end", "range", "with", "define", "template", "block", "break", "continue",
    ]
    .iter()
    .find(|k| *k == first)
    {
        return Err(format!("template action {kw:?} is not supported"));
    }
    if first.starts_with('$') || first == "(" || first == ")" {
        return Err(format!("template syntax {first:?} is not supported"));
    }
    let is_name = first
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && first != "__line__"
        && first != "__timestamp__";
    if !is_name {
        if toks.len() > 1 {
            return Err(format!(
                "template: {first} is not a function and takes no arguments"
            ));
        }
        return Ok(Command::Arg(parse_arg(first)?));
    }
    let (f, arity) = func(first).ok_or_else(|| {
        format!("template function {first:?} is not supported (supported: {FUNCS})")
    })?;
    let args = toks[1..]
        .iter()
        .map(|t| parse_arg(t))
        .collect::<Result<Vec<_>, _>>()?;
    let given = args.len() + usize::from(piped);
    let ok = if arity == usize::MAX {
        given >= 1
    } else {
        given == arity
    };
    if !ok {
        return Err(format!(
            "template: wrong number of args for {first}: want {} got {given}",
            if arity == usize::MAX { 1 } else { arity }
        ));
    }
    Ok(Command::Call(f, args))
}

fn parse_arg(t: &str) -> Result<Arg, String> {
    if let Some(name) = t.strip_prefix('.') {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "template field {t:?} is not supported: use .label_name"
            ));
        }
        return Ok(Arg::Field(name.to_string()));
    }
    match t {
        "__line__" => return Ok(Arg::Line),
        "__timestamp__" => return Ok(Arg::Timestamp),
        _ => {}
    }
    if t.starts_with('`') {
        return Ok(Arg::Str(t[1..t.len() - 1].to_string()));
    }
    if t.starts_with('"') {
        return match crate::lexer::lex(t)
            .map_err(|e| e.message)?
            .first()
            .map(|tok| &tok.tok)
        {
            Some(crate::lexer::Tok::Str(s)) => Ok(Arg::Str(s.clone())),
            _ => Err(format!("template: bad string {t}")),
        };
    }
    if let Ok(i) = t.parse::<i64>() {
        return Ok(Arg::Int(i));
    }
    if let Ok(f) = t.parse::<f64>() {
        if t.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') {
            return Ok(Arg::Float(f));
        }
    }
    Err(format!("template: unsupported argument {t:?} (function {t:?} is not supported if it is one; supported: {FUNCS})"))
}

fn eval_arg(a: &Arg, label: &dyn Fn(&str) -> String, line: &str, ts_ns: i64) -> Val {
    match a {
        Arg::Field(n) => Val::Str(label(n)),
        Arg::Str(s) => Val::Str(s.clone()),
        Arg::Int(i) => Val::Int(*i),
        Arg::Float(f) => Val::Float(*f),
        Arg::Line => Val::Str(line.to_string()),
        Arg::Timestamp => Val::Str(go_time_string(ts_ns)),
    }
}

fn exec(
    cmd: &Command,
    piped: Option<Val>,
    label: &dyn Fn(&str) -> String,
    line: &str,
    ts_ns: i64,
) -> Val {
    let (f, args) = match cmd {
        Command::Arg(a) => return eval_arg(a, label, line, ts_ns),
        Command::Call(f, args) => (*f, args),
    };
    let mut vals: Vec<Val> = args
        .iter()
        .map(|a| eval_arg(a, label, line, ts_ns))
        .collect();
    vals.extend(piped);
    let mut strs = vals.iter().cloned().map(Val::into_string);
    let mut s = || strs.next().unwrap_or_default();
    match f {
        Func::Upper => Val::Str(s().to_uppercase()),
        Func::Lower => Val::Str(s().to_lowercase()),
        Func::Trim => Val::Str(s().trim().to_string()),
        Func::Replace => {
            let (old, new, src) = (s(), s(), s());
            Val::Str(src.replace(&old, &new))
        }
        Func::Default => {
            let (def, given) = (s(), s());
            Val::Str(if given.is_empty() { def } else { given })
        }
        Func::Printf => Val::Str(sprintf(&s(), &vals[1..])),
    }
}

/// Go's `fmt.Sprintf` for the verbs `%s %v %d %f %g %q %x %%` with flags, width and precision.
fn sprintf(format: &str, args: &[Val]) -> String {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&d) = chars.peek() {
            if d.is_ascii_digit() || matches!(d, '-' | '+' | ' ' | '.' | '#') {
                spec.push(d);
                chars.next();
            } else {
                break;
            }
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        match args.next() {
            Some(v) => out.push_str(&format_verb(verb, &spec, v)),
            None => {
                let _ = write!(out, "%!{verb}(MISSING)");
            }
        }
    }
    let extra: Vec<String> = args
        .map(|v| format!("string={}", v.clone().into_string()))
        .collect();
    if !extra.is_empty() {
        let _ = write!(out, "%!(EXTRA {})", extra.join(", "));
    }
    out
}

fn format_verb(verb: char, spec: &str, v: &Val) -> String {
    let left = spec.contains('-');
    let zero = spec.starts_with('0') || spec.contains("+0") || spec.contains("-0");
    let (width, prec) = match spec
        .trim_start_matches(['-', '+', ' ', '#', '0'])
        .split_once('.')
    {
        Some((w, p)) => (
            w.parse::<usize>().ok(),
            Some(p.parse::<usize>().unwrap_or(0)),
        ),
        None => (
            spec.trim_start_matches(['-', '+', ' ', '#', '0'])
                .parse::<usize>()
                .ok(),
            None,
        ),
    };
    let body = match (verb, v) {
        ('s' | 'v', Val::Str(s)) => match prec {
            Some(p) => s.chars().take(p).collect(),
            None => s.clone(),
        },
        ('v' | 'd', Val::Int(i)) => i.to_string(),
        ('v' | 'g', Val::Float(f)) => format!("{f}"),
        ('f' | 'F', Val::Float(f)) => format!("{:.*}", prec.unwrap_or(6), f),
        ('f' | 'F', Val::Int(i)) => format!("%!f(int={i})"),
        ('q', Val::Str(s)) => format!("{s:?}"),
        ('x', Val::Str(s)) => s.bytes().map(|b| format!("{b:02x}")).collect(),
        ('x', Val::Int(i)) => format!("{i:x}"),
        (verb, Val::Str(s)) => format!("%!{verb}(string={s})"),
        (verb, Val::Int(i)) => format!("%!{verb}(int={i})"),
        (verb, Val::Float(f)) => format!("%!{verb}(float64={f})"),
    };
    let Some(w) = width else {
        return body;
    };
    let len = body.chars().count();
    if len >= w {
        return body;
    }
    let pad = w - len;
    if left {
        format!("{body}{}", " ".repeat(pad))
    } else if zero && matches!(v, Val::Int(_) | Val::Float(_)) {
        format!("{}{body}", "0".repeat(pad))
    } else {
        format!("{}{body}", " ".repeat(pad))
    }
}

/// Go's `time.Time.String()` in UTC: `2006-01-02 15:04:05.999999999 +0000 UTC`.
pub(crate) fn go_time_string(ts_ns: i64) -> String {
    let secs = ts_ns.div_euclid(1_000_000_000);
    let nanos = ts_ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push_str(" +0000 UTC");
    s
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn render(t: &str, labels: &[(&str, &str)]) -> String {
        let map: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = |n: &str| map.get(n).cloned().unwrap_or_default();
        Template::parse(t)
            .unwrap()
            .render(&lookup, "the line", 1_600_000_000_123_000_000)
    }

    #[test]
    fn fields_functions_and_pipes() {
        let l = [("a", "x"), ("b", " Y ")];
        assert_eq!(render("{{.a}}-{{ .b | trim | lower }}", &l), "x-y");
        assert_eq!(render("{{ ToUpper .a }}", &l), "X");
        assert_eq!(render("{{ .missing | default \"none\" }}", &l), "none");
        assert_eq!(render("{{ .a | replace \"x\" \"z\" }}", &l), "z");
        assert_eq!(
            render("{{ printf \"%s=%5s|%d\" .a .a 42 }}", &l),
            "x=    x|42"
        );
        assert_eq!(render("{{__line__}}!", &l), "the line!");
        assert_eq!(render("a  {{- .a -}}  b", &l), "axb");
    }

    #[test]
    fn timestamps_print_like_go() {
        assert_eq!(
            render("{{__timestamp__}}", &[]),
            "2020-09-13 12:26:40.123 +0000 UTC"
        );
        assert_eq!(go_time_string(0), "1970-01-01 00:00:00 +0000 UTC");
    }

    #[test]
    fn unknown_functions_and_actions_are_named() {
        let e = Template::parse("{{ regexReplaceAll \"a\" .b \"c\" }}").unwrap_err();
        assert!(e.contains("regexReplaceAll"), "{e}");
        let e = Template::parse("{{ if .a }}x{{ end }}").unwrap_err();
        assert!(e.contains("\"if\""), "{e}");
        assert!(Template::parse("{{ .a ").is_err());
        assert!(Template::parse("{{ replace \"a\" }}").is_err());
    }
}
