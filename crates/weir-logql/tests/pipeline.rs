//! The log pipeline against the examples of Loki's LogQL documentation.

use weir_logql::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn entry(line: &str, stream: &[(&str, &str)]) -> Entry {
    Entry {
        ts_ns: 1_000,
        line: line.to_string(),
        stream: labels(stream),
        metadata: Labels::new(),
    }
}

fn run(query: &str, e: &Entry) -> Option<Processed> {
    let Ok(Expr::Log(log)) = parse(query) else {
        panic!("{query} is not a log query")
    };
    Pipeline::new(&log).unwrap().process(e)
}

fn parsed(query: &str, line: &str) -> Labels {
    run(query, &entry(line, &[("app", "x")]))
        .expect("kept")
        .parsed
}

const JSON_DOC: &str = r#"{"protocol": "HTTP/2.0", "servers": ["129.0.1.1","10.2.1.3"], "request": {"time": "6.032", "method": "GET", "host": "foo.grafana.net", "size": "55", "headers": {"Accept": "*/*", "User-Agent": "curl/7.68.0"}}, "response": {"status": 401, "size": "228", "latency_seconds": "6.031"}}"#;

#[test]
fn json_flattens_nested_objects_and_skips_arrays() {
    assert_eq!(
        parsed(r#"{app="x"} | json"#, JSON_DOC),
        labels(&[
            ("protocol", "HTTP/2.0"),
            ("request_headers_Accept", "*/*"),
            ("request_headers_User_Agent", "curl/7.68.0"),
            ("request_host", "foo.grafana.net"),
            ("request_method", "GET"),
            ("request_size", "55"),
            ("request_time", "6.032"),
            ("response_latency_seconds", "6.031"),
            ("response_size", "228"),
            ("response_status", "401"),
        ])
    );
}

#[test]
fn json_expressions_reach_into_arrays_and_odd_keys() {
    let q = r#"{app="x"} | json first_server="servers[0]", ua=`request.headers["User-Agent"]`, headers="request.headers""#;
    assert_eq!(
        parsed(q, JSON_DOC),
        labels(&[
            ("first_server", "129.0.1.1"),
            ("headers", r#"{"Accept":"*/*","User-Agent":"curl/7.68.0"}"#),
            ("ua", "curl/7.68.0"),
        ])
    );
}

#[test]
fn parsers_never_overwrite_a_stream_label() {
    let p = run(
        r#"{app="x"} | json"#,
        &entry(r#"{"app":"y","n":1}"#, &[("app", "x")]),
    )
    .unwrap();
    assert_eq!(p.stream, labels(&[("app", "x")]));
    assert_eq!(p.parsed, labels(&[("app_extracted", "y"), ("n", "1")]));
    let p = run(r#"{app="x"} | logfmt"#, &entry("app=z", &[("app", "x")])).unwrap();
    assert_eq!(p.parsed, labels(&[("app_extracted", "z")]));
}

#[test]
fn parse_errors_set_error_labels_and_keep_the_line() {
    let p = run(r#"{app="x"} | json"#, &entry("not json", &[("app", "x")])).unwrap();
    assert_eq!(
        p.parsed.get("__error__").map(String::as_str),
        Some("JSONParserErr")
    );
    assert!(p.parsed.contains_key("__error_details__"));
    assert!(run(
        r#"{app="x"} | json | __error__="""#,
        &entry("not json", &[("app", "x")])
    )
    .is_none());
    let p = run(
        r#"{app="x"} | json | drop __error__, __error_details__"#,
        &entry("[1]", &[("app", "x")]),
    )
    .unwrap();
    assert!(p.parsed.is_empty());
}

#[test]
fn logfmt_reads_the_documented_line() {
    let line = r#"at=info method=GET path=/ host=grafana.net fwd="124.133.124.161" service=8ms status=200"#;
    assert_eq!(
        parsed(r#"{app="x"} | logfmt"#, line),
        labels(&[
            ("at", "info"),
            ("fwd", "124.133.124.161"),
            ("host", "grafana.net"),
            ("method", "GET"),
            ("path", "/"),
            ("service", "8ms"),
            ("status", "200"),
        ])
    );
    assert_eq!(
        parsed(r#"{app="x"} | logfmt m="method", status"#, line),
        labels(&[("m", "GET"), ("status", "200")])
    );
    assert_eq!(
        parsed(r#"{app="x"} | logfmt"#, r#"a="q \"x\"" b= c d=1 e"f=2"#),
        labels(&[("a", "q \"x\""), ("d", "1")])
    );
}

#[test]
fn pattern_extracts_the_documented_nginx_line() {
    let line = r#"0.191.12.2 - - [10/Jun/2021:09:14:29 +0000] "GET /api/plugins/versioncheck HTTP/1.1" 200 2 "-" "Go-http-client/2.0" "13.76.247.102, 34.120.177.193" "TLS/1.2""#;
    let q = r#"{app="x"} | pattern `<ip> - - <_> "<method> <uri> <_>" <status> <size> <_> "<agent>" <_>`"#;
    assert_eq!(
        parsed(q, line),
        labels(&[
            ("agent", "Go-http-client/2.0"),
            ("ip", "0.191.12.2"),
            ("method", "GET"),
            ("size", "2"),
            ("status", "200"),
            ("uri", "/api/plugins/versioncheck"),
        ])
    );
}

#[test]
fn regexp_extracts_named_groups() {
    let q = r#"{app="x"} | regexp "(?P<method>\\w+) (?P<path>[\\w|/]+) \\((?P<status>\\d+?)\\) (?P<duration>.*)""#;
    assert_eq!(
        parsed(q, "POST /api/prom/api/v1/query_range (200) 1.5s"),
        labels(&[
            ("duration", "1.5s"),
            ("method", "POST"),
            ("path", "/api/prom/api/v1/query_range"),
            ("status", "200"),
        ])
    );
    assert!(parsed(q, "no match").is_empty());
}

#[test]
fn unpack_restores_the_original_line() {
    let p = run(
        r#"{app="x"} | unpack"#,
        &entry(
            r#"{"container":"myapp","pod":"pod-3223f","_entry":"original log message"}"#,
            &[("app", "x")],
        ),
    )
    .unwrap();
    assert_eq!(p.line, "original log message");
    assert_eq!(
        p.parsed,
        labels(&[("container", "myapp"), ("pod", "pod-3223f")])
    );
}

#[test]
fn line_filters_are_case_sensitive_and_or_means_any() {
    let e = entry("an Error here", &[("app", "x")]);
    assert!(run(r#"{app="x"} |= "Error""#, &e).is_some());
    assert!(run(r#"{app="x"} |= "error""#, &e).is_none());
    assert!(run(r#"{app="x"} |~ "(?i)error""#, &e).is_some());
    assert!(run(r#"{app="x"} |= "nope" or "here""#, &e).is_some());
    assert!(
        run(r#"{app="x"} != "nope" or "here""#, &e).is_none(),
        "a negative or needs none to match"
    );
    assert!(run(r#"{app="x"} !~ "Err.r""#, &e).is_none());
}

#[test]
fn label_filters_convert_types_as_loki_does() {
    let q = r#"{app="x"} | logfmt | duration >= 20ms or method="GET" and size <= 20KB"#;
    assert!(run(
        q,
        &entry("duration=1s method=POST size=1MB", &[("app", "x")])
    )
    .is_some());
    assert!(run(
        q,
        &entry("duration=1ms method=GET size=1KB", &[("app", "x")])
    )
    .is_some());
    assert!(run(
        q,
        &entry("duration=1ms method=GET size=1MB", &[("app", "x")])
    )
    .is_none());
    // A missing label drops the line; a value that does not convert keeps it with an error.
    assert!(run(
        r#"{app="x"} | logfmt | status > 400"#,
        &entry("a=1", &[("app", "x")])
    )
    .is_none());
    let p = run(
        r#"{app="x"} | logfmt | status > 400"#,
        &entry("status=abc", &[("app", "x")]),
    )
    .unwrap();
    assert_eq!(
        p.parsed.get("__error__").map(String::as_str),
        Some("LabelFilterErr")
    );
    // String filters compare a missing label as "".
    assert!(run(r#"{app="x"} | level="""#, &entry("", &[("app", "x")])).is_some());
    assert!(run(
        r#"{app="x"} | logfmt | status == 200 | x > 1.5"#,
        &entry("status=200 x=2", &[("app", "x")])
    )
    .is_some());
}

#[test]
fn formatters_rewrite_lines_and_labels() {
    let e = entry("query=up duration=2s", &[("app", "x")]);
    let p = run(r#"{app="x"} | logfmt | line_format "{{.query}} took {{.duration}} ({{ .app | ToUpper }})""#, &e).unwrap();
    assert_eq!(p.line, "up took 2s (X)");
    let p = run(
        r#"{app="x"} | logfmt | label_format q=query, both="{{.query}}-{{.duration}}""#,
        &e,
    )
    .unwrap();
    assert_eq!(
        p.parsed,
        labels(&[("both", "up-2s"), ("duration", "2s"), ("q", "up")])
    );
    let p = run(r#"{app="x"} | label_format service=app"#, &e).unwrap();
    assert_eq!(
        p.stream,
        labels(&[("service", "x")]),
        "a renamed stream label stays a stream label"
    );
}

#[test]
fn drop_and_keep_take_names_and_matchers() {
    let e = entry("a=1 b=2 c=3", &[("app", "x"), ("env", "prod")]);
    let p = run(r#"{app="x"} | logfmt | drop a, b="2", c="9", env"#, &e).unwrap();
    assert_eq!(p.labels(), labels(&[("app", "x"), ("c", "3")]));
    let p = run(r#"{app="x"} | logfmt | keep app, b=~"[0-9]""#, &e).unwrap();
    assert_eq!(p.labels(), labels(&[("app", "x"), ("b", "2")]));
    let p = run(r#"{app="x"} | json | keep app"#, &e).unwrap();
    assert_eq!(
        p.parsed.get("__error__").map(String::as_str),
        Some("JSONParserErr"),
        "keep never drops the error labels"
    );
}

#[test]
fn decolorize_removes_ansi_escapes() {
    let e = entry("\u{1b}[31mred\u{1b}[0m plain", &[("app", "x")]);
    assert_eq!(
        run(r#"{app="x"} | decolorize"#, &e).unwrap().line,
        "red plain"
    );
}

#[test]
fn structured_metadata_is_a_label_a_parser_may_override() {
    let mut e = entry(r#"{"trace":"p"}"#, &[("app", "x")]);
    e.metadata = labels(&[("trace", "m"), ("user", "u")]);
    assert!(run(r#"{app="x"} | user="u""#, &e).is_some());
    let p = run(r#"{app="x"} | json"#, &e).unwrap();
    assert_eq!(p.metadata, labels(&[("user", "u")]));
    assert_eq!(p.parsed, labels(&[("trace", "p")]));
}
