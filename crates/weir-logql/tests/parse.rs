//! Parser and printer: canonical round-trips, error positions, precedence, and that no
//! input makes the parser panic.

mod common;

use proptest::prelude::*;
use weir_logql::*;

fn rt(q: &str) -> Expr {
    let e = parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
    let printed = e.to_string();
    let again = parse(&printed).unwrap_or_else(|e| panic!("reparse of {printed:?}: {e}"));
    assert_eq!(again, e, "printed as {printed}");
    e
}

#[test]
fn documented_queries_round_trip() {
    for q in [
        r#"{app="x"}"#,
        r#"{a="x", b!="y", c=~"re.*", d!~`r\d`}"#,
        r#"{app="x"} |= "a" or "b" != "c" |~ "(?i)err" !~ `\d+`"#,
        r#"{app="x"} | json"#,
        r#"{app="x"} | json a="x.y", b, c="arr[0]", d=`["k y"]`"#,
        r#"{app="x"} | logfmt | logfmt a="key", b"#,
        r#"{app="x"} | regexp "(?P<ip>\\S+) (?P<status>\\d+)""#,
        r#"{app="x"} | pattern "<ip> - <_> <status>""#,
        r#"{app="x"} | unpack | decolorize"#,
        r#"{app="x"} | status >= 400 | duration > 1.5s | size < 10KB | level = "error" | msg =~ "re""#,
        r#"{app="x"} | status >= 400 and level="error" or (a="b", c!="d") | x="1" y="2""#,
        r#"{app="x"} | __error__ = """#,
        r#"{app="x"} | line_format "{{.label}} {{ .b | ToUpper }}""#,
        r#"{app="x"} | label_format new=old, x="{{.a}}-{{.b}}""#,
        r#"{app="x"} | drop a, b="v", __error__ | keep a, b=~"v.*""#,
        r#"count_over_time({app="x"}[5m])"#,
        r#"rate({app="x"} |= "err" [1h30m] offset 5m)"#,
        r#"bytes_over_time({app="x"}[500ms])"#,
        r#"bytes_rate({app="x"}[$__auto])"#,
        r#"absent_over_time({app="x"}[1m])"#,
        r#"sum_over_time({app="x"} | json | unwrap latency [1m])"#,
        r#"avg_over_time({app="x"} | logfmt | unwrap duration(took) | __error__="" [1m]) by (host)"#,
        r#"quantile_over_time(0.99, {app="x"} | unwrap bytes(size) [1m]) without (pod)"#,
        r#"rate({app="x"} | unwrap duration_seconds(d) [1m])"#,
        r#"first_over_time({app="x"} | unwrap v [1m]) by (a)"#,
        r#"sum by (level) (count_over_time({app="x"}[1m]))"#,
        r#"sum(count_over_time({app="x"}[1m])) by (level)"#,
        r#"topk(5, sum by (a) (rate({app="x"}[1m])))"#,
        r#"sort_desc(sum(rate({app="x"}[1m])))"#,
        r#"sum by (level, detected_level) (count_over_time({app="x"} | drop __error__ [1m]))"#,
        r#"vector(1) + vector(1)"#,
        r#"1 + 2 * 3 ^ 2 ^ 1"#,
        r#"sum(rate({a="b"}[1m])) / on(x) group_left(y) sum(rate({a="c"}[1m]))"#,
        r#"count_over_time({a="b"}[1m]) > bool 2"#,
        r#"count_over_time({a="b"}[1m]) or vector(0)"#,
        r#"label_replace(rate({a="b"}[1m]), "dst", "$1", "src", "(.*)")"#,
        r#"-1"#,
        r#"1 - -1"#,
    ] {
        rt(q);
    }
}

#[test]
fn alternative_spellings_parse_to_the_canonical_tree() {
    assert_eq!(
        rt(r#"count_over_time({app="x"}[5m] |= "a")"#),
        rt(r#"count_over_time({app="x"} |= "a" [5m])"#)
    );
    assert_eq!(
        rt(r#"count_over_time(({app="x"} |= "a")[5m])"#),
        rt(r#"count_over_time({app="x"} |= "a" [5m])"#)
    );
    assert_eq!(rt("sum by (a) (vector(1))"), rt("sum(vector(1)) by (a)"));
    assert_eq!(rt(r#"{a="b"} | x = 5"#), rt(r#"{a="b"} | x == 5"#));
}

#[test]
fn precedence_follows_prometheus() {
    let Expr::Metric(MetricExpr::Binary(b)) = rt("1 + 2 * 3") else {
        panic!()
    };
    assert_eq!(b.op, BinOp::Add);
    let Expr::Metric(MetricExpr::Binary(b)) = rt("2 ^ 3 ^ 2") else {
        panic!()
    };
    assert_eq!(b.lhs, MetricExpr::Number(2.0), "^ is right-associative");
    let Expr::Metric(MetricExpr::Binary(b)) = rt("1 - 2 - 3") else {
        panic!()
    };
    assert_eq!(b.rhs, MetricExpr::Number(3.0), "- is left-associative");
    let q = r#"vector(1) or vector(2) and vector(3) > bool 1 + 1"#;
    let Expr::Metric(MetricExpr::Binary(b)) = rt(q) else {
        panic!()
    };
    assert_eq!(b.op, BinOp::Or);
    assert_eq!(parse("(1 + 2) * 3").unwrap().to_string(), "(1 + 2) * 3");
    assert_eq!(parse("1 - (2 - 3)").unwrap().to_string(), "1 - (2 - 3)");
    assert_eq!(parse("(2 ^ 3) ^ 2").unwrap().to_string(), "(2 ^ 3) ^ 2");
}

fn err_at(q: &str) -> ParseError {
    match parse(q) {
        Err(e) => e,
        Ok(e) => panic!("{q} parsed as {e}"),
    }
}

#[test]
fn errors_name_the_position_and_what_was_expected() {
    let e = err_at(r#"{app="x""#);
    assert_eq!(e.position, 8);
    assert!(
        e.message
            .contains("to close the stream selector opened at 0"),
        "{e}"
    );
    let e = err_at(r#"count_over_time({app="x"})"#);
    assert_eq!(e.position, 25);
    assert!(e.message.contains("range"), "{e}");
    let e = err_at(r#"{app="x"} | foo"#);
    assert_eq!(e.position, 15);
    let e = err_at(r#"{app=~".*"}"#);
    assert_eq!(e.position, 0);
    assert!(e.message.contains("empty-compatible"), "{e}");
    let e = err_at(r#"sum_over_time({app="x"}[1m])"#);
    assert!(e.message.contains("without unwrap"), "{e}");
    let e = err_at(r#"count_over_time({app="x"}[1m]) by (a)"#);
    assert!(e.message.contains("grouping not allowed"), "{e}");
    let e = err_at(r#"{app="x"} |~ "(""#);
    assert_eq!(e.position, 13);
    let e = err_at("1 > 2");
    assert!(e.message.contains("bool"), "{e}");
    let e = err_at(r#"{app="x"} | line_format "{{ regexReplaceAll .a }}""#);
    assert!(e.message.contains("regexReplaceAll"), "{e}");
    assert_eq!(e.position, 24);
}

#[test]
fn refused_syntax_is_named_with_its_position() {
    for (q, pos, what) in [
        (r#"{app="x"} |> "<_> foo""#, 10, "pattern line filters"),
        (r#"{app="x"} | logfmt --strict"#, 19, "logfmt --strict"),
        (r#"{app="x"} | distinct a"#, 12, "distinct"),
        (r#"{app="x"} | addr = ip("10.0.0.0/8")"#, 19, "ip()"),
        (r#"rate_counter({app="x"}[1m])"#, 0, "rate_counter"),
    ] {
        let e = err_at(q);
        assert_eq!(e.position, pos, "{q}: {e}");
        assert!(
            e.message.starts_with("unsupported") && e.message.contains(what),
            "{q}: {e}"
        );
    }
}

#[test]
fn nesting_is_bounded() {
    let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(err_at(&deep).message.contains("too deep"));
    let chain = vec!["1"; 10_000].join(" + ");
    assert!(err_at(&chain).message.contains("too deep"));
    let pow = vec!["2"; 10_000].join(" ^ ");
    assert!(err_at(&pow).message.contains("too deep"));
    let lf = format!(
        r#"{{a="b"}} | {}x="1"{}"#,
        "(".repeat(10_000),
        ")".repeat(10_000)
    );
    assert!(err_at(&lf).message.contains("too deep"));
    let many = vec![r#"x="1""#; 10_000].join(" and ");
    rt(&format!(r#"{{a="b"}} | {many}"#));
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,80}") {
        let _ = parse(&s);
    }

    #[test]
    fn logql_like_text_never_panics(s in r#"[{}()\[\]|=~!<>,"`a-z0-9_ .$+*/%^-]{0,60}"#) {
        let _ = parse(&s);
    }

    #[test]
    fn generated_trees_round_trip(e in gen::expr()) {
        let printed = e.to_string();
        let parsed = parse(&printed).map_err(|err| TestCaseError::fail(format!("{printed}: {err}")))?;
        prop_assert_eq!(parsed, e, "printed as {}", printed);
    }
}

fn sample_source() -> common::VecSource {
    let lines = [
        r#"{"app":"y","status":"200","a":{"b":"c"}}"#,
        "status=500 msg=\"x y\" level=error",
        "\u{1b}[31m200 GET\u{1b}[0m",
        "not json at all",
    ];
    common::VecSource::new(
        (0..12)
            .map(|i| {
                common::entry(
                    i as f64 * 1.7,
                    lines[i % lines.len()],
                    &[
                        ("app", "a"),
                        ("level", if i % 3 == 0 { "error" } else { "info" }),
                    ],
                )
            })
            .collect(),
    )
}

proptest! {
    #[test]
    fn generated_trees_evaluate_without_panicking(e in gen::expr(), instant in any::<bool>()) {
        let mut params = common::range_params(0, 20, 2);
        params.instant = instant;
        let _ = evaluate(&e, &params, &sample_source());
    }
}

mod gen {
    use proptest::prelude::*;
    use weir_logql::*;

    const NAMES: [&str; 7] = ["app", "level", "status", "msg", "a_b", "_x", "n1"];

    pub fn name() -> impl Strategy<Value = String> {
        prop::sample::select(&NAMES[..]).prop_map(String::from)
    }

    fn any_string() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{0,5}",
            "\\PC{0,8}",
            Just("\\d+\"`".to_string()),
            Just("tab\there\r\n".to_string()),
        ]
    }

    fn matcher() -> impl Strategy<Value = Matcher> {
        prop_oneof![
            (name(), any_string()).prop_map(|(n, v)| Matcher::new(n, MatchOp::Eq, v).unwrap()),
            (name(), any_string()).prop_map(|(n, v)| Matcher::new(n, MatchOp::Neq, v).unwrap()),
            (name(), prop::sample::select(vec!["a.*", "b|c", "\\d+", ""]))
                .prop_map(|(n, v)| Matcher::new(n, MatchOp::Re, v).unwrap()),
            (name(), prop::sample::select(vec!["x+", "(?i)y"])).prop_map(|(n, v)| Matcher::new(
                n,
                MatchOp::Nre,
                v
            )
            .unwrap()),
        ]
    }

    fn selector() -> impl Strategy<Value = Vec<Matcher>> {
        let first = prop_oneof![
            Just(("app".to_string(), "a".to_string())),
            (name(), "[a-z]{1,4}")
        ];
        (first, prop::collection::vec(matcher(), 0..2)).prop_map(|((n, v), mut rest)| {
            rest.insert(0, Matcher::new(n, MatchOp::Eq, v).unwrap());
            rest
        })
    }

    fn cmp() -> impl Strategy<Value = CmpOp> {
        prop::sample::select(vec![
            CmpOp::Eq,
            CmpOp::Neq,
            CmpOp::Gt,
            CmpOp::Ge,
            CmpOp::Lt,
            CmpOp::Le,
        ])
    }

    fn label_filter_leaf() -> impl Strategy<Value = LabelFilter> {
        prop_oneof![
            matcher().prop_map(LabelFilter::Match),
            (name(), cmp(), -1e6f64..1e6).prop_map(|(name, op, value)| LabelFilter::Number {
                name,
                op,
                value
            }),
            (name(), cmp(), -10_000_000_000i64..10_000_000_000)
                .prop_map(|(name, op, value_ns)| LabelFilter::Duration { name, op, value_ns }),
            (name(), cmp(), any::<u32>()).prop_map(|(name, op, v)| LabelFilter::Bytes {
                name,
                op,
                value: v as u64
            }),
        ]
    }

    pub fn label_filter() -> impl Strategy<Value = LabelFilter> {
        label_filter_leaf().prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 2..4).prop_map(LabelFilter::And),
                prop::collection::vec(inner, 2..4).prop_map(LabelFilter::Or),
            ]
        })
    }

    fn extraction() -> impl Strategy<Value = Extraction> {
        (
            name(),
            prop::sample::select(vec!["a.b", "x[0]", "[\"k y\"]", "app"]),
        )
            .prop_map(|(label, path)| Extraction {
                label,
                path: path.to_string(),
            })
    }

    fn line_filter() -> impl Strategy<Value = Stage> {
        prop_oneof![
            (
                prop::sample::select(vec![LineFilterOp::Contains, LineFilterOp::NotContains]),
                prop::collection::vec(any_string(), 1..3)
            )
                .prop_map(|(op, values)| Stage::LineFilter { op, values }),
            (
                prop::sample::select(vec![LineFilterOp::Match, LineFilterOp::NotMatch]),
                prop::collection::vec(
                    prop::sample::select(vec!["a.*", "\\d", "(?i)err"]).prop_map(String::from),
                    1..3
                )
            )
                .prop_map(|(op, values)| Stage::LineFilter { op, values }),
        ]
    }

    fn label_sel() -> impl Strategy<Value = LabelSel> {
        prop_oneof![
            name().prop_map(LabelSel::Name),
            matcher().prop_map(LabelSel::Matcher)
        ]
    }

    pub fn stage() -> impl Strategy<Value = Stage> {
        prop_oneof![
            line_filter(),
            prop::collection::vec(extraction(), 0..3).prop_map(|fields| Stage::Json { fields }),
            prop::collection::vec(extraction(), 0..2).prop_map(|fields| Stage::Logfmt { fields }),
            Just(Stage::Regexp {
                pattern: "(?P<status>\\d+) (?P<msg>.*)".into()
            }),
            Just(Stage::Pattern {
                pattern: "<_> <status> \"<msg>\"".into()
            }),
            Just(Stage::Unpack),
            Just(Stage::Decolorize),
            label_filter().prop_map(Stage::LabelFilter),
            Just(Stage::LineFormat {
                template: "{{.app}} {{ .msg | ToUpper }}".into()
            }),
            Just(Stage::LabelFormat {
                ops: vec![
                    LabelFormatOp::Rename {
                        to: "a_b".into(),
                        from: "app".into()
                    },
                    LabelFormatOp::Template {
                        to: "n1".into(),
                        template: "{{.level}}-x".into()
                    },
                ]
            }),
            prop::collection::vec(label_sel(), 1..3).prop_map(|labels| Stage::Drop { labels }),
            prop::collection::vec(label_sel(), 1..3).prop_map(|labels| Stage::Keep { labels }),
        ]
    }

    pub fn log_expr() -> impl Strategy<Value = LogExpr> {
        (selector(), prop::collection::vec(stage(), 0..4)).prop_map(|(selector, mut pipeline)| {
            // `| keep a != "x"` reads as a matcher, as in Loki: a negative line filter
            // right after drop/keep ending in a bare name cannot be written.
            for i in 1..pipeline.len() {
                let bare_end = matches!(&pipeline[i - 1],
                    Stage::Drop { labels } | Stage::Keep { labels } if matches!(labels.last(), Some(LabelSel::Name(_))));
                if let (true, Stage::LineFilter { op, .. }) = (bare_end, &mut pipeline[i]) {
                    *op = match *op {
                        LineFilterOp::NotContains => LineFilterOp::Contains,
                        LineFilterOp::NotMatch => LineFilterOp::Match,
                        other => other,
                    };
                }
            }
            LogExpr { selector, pipeline }
        })
    }

    fn grouping() -> impl Strategy<Value = Grouping> {
        (any::<bool>(), prop::collection::vec(name(), 0..3))
            .prop_map(|(without, labels)| Grouping { without, labels })
    }

    fn range_agg() -> impl Strategy<Value = MetricExpr> {
        (
            prop::sample::select(RangeOp::ALL.to_vec()),
            log_expr(),
            any::<bool>(),
            prop::option::of(label_filter()),
            prop::sample::select(vec![
                Conversion::Float,
                Conversion::Duration,
                Conversion::DurationSeconds,
                Conversion::Bytes,
            ]),
            prop_oneof![
                (1i64..100_000_000_000_000).prop_map(RangeSpan::Fixed),
                Just(RangeSpan::Auto)
            ],
            prop_oneof![Just(0i64), 1i64..10_000_000_000_000],
            prop::option::of(grouping()),
            0.0f64..1.0,
        )
            .prop_map(
                |(op, log, want_unwrap, post, conversion, range, offset_ns, grouping, q)| {
                    let unwrap = (op.allows_unwrap() && (want_unwrap || !op.allows_no_unwrap()))
                        .then(|| Unwrap {
                            label: "status".into(),
                            conversion,
                            post_filters: post.into_iter().collect(),
                        });
                    MetricExpr::Range(Box::new(RangeAgg {
                        op,
                        param: (op == RangeOp::QuantileOverTime).then_some(q),
                        log,
                        unwrap,
                        range,
                        offset_ns,
                        grouping: grouping.filter(|_| op.allows_grouping()),
                    }))
                },
            )
    }

    fn leaf() -> impl Strategy<Value = MetricExpr> {
        prop_oneof![
            3 => range_agg(),
            1 => (-1e6f64..1e6).prop_map(MetricExpr::Number),
            1 => (-10f64..10.0).prop_map(MetricExpr::VectorLiteral),
        ]
    }

    fn matching() -> impl Strategy<Value = Option<VectorMatching>> {
        prop::option::of((
            any::<bool>(),
            prop::collection::vec(name(), 0..2),
            prop::option::of((any::<bool>(), prop::collection::vec(name(), 0..2))),
        ))
        .prop_map(|m| {
            m.map(|(on, labels, group)| VectorMatching {
                on,
                labels,
                group: group.map(|(right, include)| GroupModifier { right, include }),
            })
        })
    }

    pub fn metric() -> impl Strategy<Value = MetricExpr> {
        leaf().prop_recursive(3, 16, 2, |inner| {
            prop_oneof![
                (
                    prop::sample::select(VectorOp::ALL.to_vec()),
                    prop::option::of(grouping()),
                    inner.clone(),
                    1u32..10
                )
                    .prop_map(|(op, grouping, e, k)| {
                        let e = if e.is_scalar() {
                            MetricExpr::VectorLiteral(1.0)
                        } else {
                            e
                        };
                        MetricExpr::Aggregate(VectorAgg {
                            op,
                            param: op.takes_param().then_some(k as f64),
                            grouping: grouping
                                .filter(|_| !matches!(op, VectorOp::Sort | VectorOp::SortDesc)),
                            inner: Box::new(e),
                        })
                    }),
                (
                    prop::sample::select(BinOp::ALL.to_vec()),
                    inner.clone(),
                    inner,
                    any::<bool>(),
                    matching()
                )
                    .prop_map(|(op, lhs, rhs, b, matching)| binary(op, lhs, rhs, b, matching)),
            ]
        })
    }

    /// Adjusts a random binary expression to one the parser accepts.
    fn binary(
        op: BinOp,
        lhs: MetricExpr,
        rhs: MetricExpr,
        b: bool,
        matching: Option<VectorMatching>,
    ) -> MetricExpr {
        let (lhs, rhs) = if op.is_set() {
            let v = |e: MetricExpr| {
                if e.is_scalar() {
                    MetricExpr::VectorLiteral(2.0)
                } else {
                    e
                }
            };
            (v(lhs), v(rhs))
        } else {
            (lhs, rhs)
        };
        let scalars = lhs.is_scalar() || rhs.is_scalar();
        let return_bool = op.is_comparison() && (b || (lhs.is_scalar() && rhs.is_scalar()));
        let matching = if scalars {
            None
        } else {
            matching.map(|mut m| {
                if op.is_set() {
                    m.group = None;
                }
                m
            })
        };
        MetricExpr::Binary(Box::new(BinaryExpr {
            op,
            lhs,
            rhs,
            return_bool,
            matching,
        }))
    }

    pub fn expr() -> impl Strategy<Value = Expr> {
        prop_oneof![
            log_expr().prop_map(Expr::Log),
            metric().prop_map(Expr::Metric)
        ]
    }
}
