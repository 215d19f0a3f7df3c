//! `hints`: which literals a source may use to skip lines, and a differential test that
//! a source skipping every line without a hinted literal changes no answer.

mod common;

use common::*;
use proptest::prelude::*;
use weir_logql::*;

fn log(q: &str) -> LogExpr {
    match parse(q).unwrap() {
        Expr::Log(l) => l,
        Expr::Metric(_) => panic!("{q} is a metric query"),
    }
}

#[test]
fn positive_filters_before_rewrites_become_hints() {
    let h = hints(&log(
        r#"{a="b"} |= "x" != "y" |~ "z" |= "p" or "q" | json |= "after_parser" | line_format "{{.a}}" |= "not_hinted""#,
    ));
    assert_eq!(
        h.line_contains_all,
        vec![
            vec!["x".to_string()],
            vec!["p".into(), "q".into()],
            vec!["after_parser".into()]
        ]
    );
    for rewriting in [r#"| line_format "x""#, "| decolorize", "| unpack"] {
        let h = hints(&log(&format!(r#"{{a="b"}} {rewriting} |= "x""#)));
        assert!(h.line_contains_all.is_empty(), "{rewriting}");
    }
    assert!(hints(&log(r#"{a="b"} |= """#)).line_contains_all.is_empty());
    let h = hints(&log(r#"{a="b"} |= "x""#));
    assert!(h.may_match("axb") && !h.may_match("ab"));
}

const WORDS: [&str; 8] = [
    "foo",
    "bar",
    "Foo",
    "level=error",
    "level=info",
    "n=1",
    "n=22",
    "x",
];

fn line() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&WORDS[..]), 0..5).prop_map(|w| w.join(" "))
}

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    prop::collection::vec(
        (
            0i64..20,
            line(),
            prop::sample::select(vec!["a", "b"]),
            prop::sample::select(vec!["x", "y"]),
        ),
        0..30,
    )
    .prop_map(|es| {
        es.into_iter()
            .map(|(t, line, app, env)| Entry {
                ts_ns: t * SEC,
                line,
                stream: labels(&[("app", app), ("env", env)]),
                metadata: Labels::new(),
            })
            .collect()
    })
}

fn word() -> impl Strategy<Value = String> {
    prop::sample::select(&WORDS[..]).prop_map(|w| format!("{w:?}"))
}

fn line_filter() -> impl Strategy<Value = String> {
    prop_oneof![
        word().prop_map(|w| format!("|= {w}")),
        (word(), word()).prop_map(|(a, b)| format!("|= {a} or {b}")),
        word().prop_map(|w| format!("!= {w}")),
        Just(r#"|~ "n=\\d+""#.to_string()),
        Just(r#"| line_format "{{.app}} {{__line__}}""#.to_string()),
        Just("| decolorize".to_string()),
    ]
}

fn log_query() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            r#"{app="a"}"#,
            r#"{app=~"a|b"}"#,
            r#"{env!="x", app=~".+"}"#,
        ]),
        prop::collection::vec(line_filter(), 0..4),
        prop::option::of(prop::sample::select(vec![
            r#"| logfmt | level="error""#,
            r#"| logfmt | n > 1"#,
            r#"| logfmt | __error__="""#,
        ])),
    )
        .prop_map(|(sel, filters, stage)| {
            format!("{sel} {} {}", filters.join(" "), stage.unwrap_or(""))
        })
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        log_query(),
        log_query().prop_map(|q| format!("count_over_time({q} [5s])")),
        log_query().prop_map(|q| format!("sum by (app) (rate({q} [3s]))")),
        log_query().prop_map(|q| format!("bytes_over_time({q} [4s]) > 3")),
        log_query()
            .prop_map(|q| format!(r#"sum_over_time({q} | logfmt | unwrap n | __error__="" [7s])"#)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn hints_never_change_an_answer(es in entries(), q in query(), backward in any::<bool>(), limit in 1usize..10) {
        let expr = parse(&q).map_err(|e| TestCaseError::fail(format!("{q}: {e}")))?;
        let mut params = range_params(0, 20, 2);
        params.limit = limit;
        if backward {
            params.direction = Direction::Backward;
        }
        let plain = VecSource::new(es.clone());
        let mut hinted = VecSource::new(es);
        hinted.use_hints = true;
        prop_assert_eq!(evaluate(&expr, &params, &plain), evaluate(&expr, &params, &hinted), "{}", q);
        params.instant = true;
        prop_assert_eq!(evaluate(&expr, &params, &plain), evaluate(&expr, &params, &hinted), "{}", q);
    }
}
