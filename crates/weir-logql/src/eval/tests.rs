//! Differential test of grouping pushdown: random entries carrying high-cardinality
//! labels (a unique `request_id` per entry, `trace_id`, `pod`), random queries from a
//! small grammar of pushable aggregations (chains of `sum`/`min`/`max` with random
//! `by`/`without` over the range aggregations they push into, a few unpushable ones
//! mixed in, wrapped in `topk`, `count`, ...) and random range/instant parameters,
//! evaluated with pushdown and without; the results must be the same.
//!
//! Equality is bit for bit where the arithmetic is exact: always for
//! `count_over_time`, `bytes_over_time`, `min_over_time` and `max_over_time` (integer
//! sums, and min/max of values among which no `-0` or `NaN` is generated), and for the
//! other functions in "dyadic" cases, whose unwrapped values are small binary fractions
//! and whose ranges powers of two seconds, so that every partial sum and quotient is
//! exact whatever the order. Otherwise pushdown sums each group's samples in time order
//! and divides a rate once, where the unpushed path sums each series' quotient, so values
//! are compared with a relative epsilon of 1e-12 plus an absolute one of 1e-9: a sum
//! that cancels to zero in one order (`0.1 + 0.2 - 0.3`) leaves a residue near 1e-17
//! in another, and relative error means nothing next to zero. The smallest value a wrong
//! answer could differ by here is about 1e-5 (`1e-3` over a 120 s range), far above
//! either epsilon. Only wrappers that do not order or compare values are generated,
//! since a last-bit difference may break a `topk` tie.
//! When the unpushed evaluation fails (an `__error__` series, a many-to-many match), the
//! pushed one must fail with the same message.

use proptest::prelude::*;

use super::evaluate_with;
use crate::*;

const SEC: i64 = 1_000_000_000;

struct Entries(Vec<Entry>);

impl Source for Entries {
    fn select(
        &self,
        selector: &[Matcher],
        _hints: &Hints,
        start_ns: i64,
        end_ns: i64,
        direction: Direction,
    ) -> Result<EntryIter<'_>> {
        let mut out: Vec<Entry> = self
            .0
            .iter()
            .filter(|e| e.ts_ns >= start_ns && e.ts_ns < end_ns)
            .filter(|e| selector.iter().all(|m| m.matches_labels(&e.stream)))
            .cloned()
            .collect();
        out.sort_by_key(|e| e.ts_ns);
        if direction == Direction::Backward {
            out.reverse();
        }
        Ok(Box::new(out.into_iter().map(Ok)))
    }
}

/// Unwrapped values whose sums are exact.
const DYADIC: [&str; 8] = ["0", "1", "2.5", "-3", "0.25", "1024", "7.75", "-0.5"];
/// Values whose sums round, and one that is not a number (`__error__`).
const OTHER: [&str; 4] = ["0.1", "1e-3", "3.3", "abc"];
const NAMES: [&str; 7] = ["app", "level", "pod", "request_id", "trace_id", "v", "msg"];

/// One entry: seconds, milliseconds (often 0, to hit window edges), app, level (3 =
/// none), pod (4 = none), trace, value index, message length.
type RawEntry = (i64, i64, usize, usize, usize, usize, usize, usize);

fn raw_entry() -> impl Strategy<Value = RawEntry> {
    (
        0i64..100,
        prop_oneof![Just(0i64), 0i64..1000],
        0usize..2,
        0usize..4,
        0usize..5,
        0usize..3,
        0usize..12,
        0usize..6,
    )
}

fn entries(raw: &[RawEntry], dyadic: bool) -> Vec<Entry> {
    raw.iter()
        .enumerate()
        .map(|(i, &(s, ms, app, level, pod, trace, val, len))| {
            let mut stream: Labels = [("app".to_string(), ["a", "b"][app].to_string())].into();
            if level < 3 {
                stream.insert("level".into(), ["info", "warn", "error"][level].into());
            }
            if pod < 4 {
                stream.insert("pod".into(), format!("p{pod}"));
            }
            let metadata: Labels = [
                ("request_id".to_string(), format!("r{i}")),
                ("trace_id".to_string(), format!("t{trace}")),
            ]
            .into();
            let v = if dyadic || val < DYADIC.len() {
                DYADIC[val % DYADIC.len()]
            } else {
                OTHER[val - DYADIC.len()]
            };
            Entry {
                ts_ns: s * SEC + ms * 1_000_000,
                line: format!("v={v} msg={}", "x".repeat(len)),
                stream,
                metadata,
            }
        })
        .collect()
}

/// `by (..)`/`without (..)` over a subset of [`NAMES`], or none.
fn grouping() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        3 => (any::<bool>(), proptest::sample::subsequence(NAMES.to_vec(), 0..=3)).prop_map(
            |(without, names)| format!(
                "{} ({})",
                if without { "without" } else { "by" },
                names.join(", ")
            )
        ),
    ]
}

#[derive(Debug, Clone)]
struct Query {
    text: String,
    /// Whether pushed and unpushed results must be equal bit for bit.
    exact: bool,
}

#[allow(clippy::too_many_arguments)]
fn query(
    kind: usize,
    odd_op: usize,
    dyadic: bool,
    range_idx: usize,
    offset: i64,
    logfmt: bool,
    filter_errors: bool,
    range_grouping: String,
    chain: Vec<String>,
    wrapper: usize,
) -> Query {
    let ranges: [i64; 5] = if dyadic {
        [1, 4, 8, 32, 64]
    } else {
        [1, 5, 10, 30, 60]
    };
    let range = ranges[range_idx];
    let selector = if logfmt {
        r#"{app=~"a|b"} | logfmt"#
    } else {
        r#"{app=~"a|b"}"#
    };
    let post = if filter_errors {
        r#" | __error__="""#
    } else {
        ""
    };
    let unwrapped = format!(r#"{{app=~"a|b"}} | logfmt | unwrap v{post}"#);
    let window = if offset > 0 {
        format!("[{range}s] offset {offset}s")
    } else {
        format!("[{range}s]")
    };
    let (func, inner, op, exact_op) = match kind {
        0 => ("count_over_time", selector.to_string(), "sum", true),
        1 => ("rate", selector.to_string(), "sum", false),
        2 => ("bytes_over_time", selector.to_string(), "sum", true),
        3 => ("bytes_rate", selector.to_string(), "sum", false),
        4 => ("sum_over_time", unwrapped, "sum", false),
        5 => ("rate", unwrapped, "sum", false),
        6 => ("min_over_time", unwrapped, "min", true),
        _ => ("max_over_time", unwrapped, "max", true),
    };
    let mut text = format!("{func}({inner} {window})");
    if kind >= 6 {
        text = format!("{text} {range_grouping}");
    }
    // Now and then an operator that is not pushed down over this function.
    let op = match odd_op {
        0 => "max",
        1 => "count",
        2 => "avg",
        3 if kind < 6 => "min",
        _ => op,
    };
    for g in chain {
        text = format!("{op} {g} ({text})");
    }
    let exact = dyadic || exact_op;
    let text = match (wrapper, exact) {
        (1, _) => format!("count({text})"),
        (2, _) => format!("{text} * 2"),
        (3, true) => format!("topk(2, {text})"),
        (4, true) => format!("bottomk(1, {text})"),
        (5, true) => format!("sort_desc({text})"),
        (6, true) => format!("{text} > 1"),
        (7, true) => format!("sum by (app) ({text}) / ignoring(level) {text}"),
        _ => text,
    };
    Query { text, exact }
}

fn query_strategy() -> impl Strategy<Value = (Query, bool)> {
    (
        (0usize..8, 0usize..12, any::<bool>(), 0usize..5),
        (
            prop_oneof![Just(0i64), Just(1), Just(7), Just(30)],
            any::<bool>(),
        ),
        (prop_oneof![3 => Just(true), 1 => Just(false)], grouping()),
        (
            prop_oneof![
                3 => proptest::collection::vec(grouping(), 1..=1),
                1 => proptest::collection::vec(grouping(), 2..=3),
            ],
            0usize..10,
        ),
    )
        .prop_map(
            |((kind, odd, dyadic, ri), (off, logfmt), (filt, rg), (chain, wrapper))| {
                (
                    query(kind, odd, dyadic, ri, off, logfmt, filt, rg, chain, wrapper),
                    dyadic,
                )
            },
        )
}

fn params() -> impl Strategy<Value = QueryParams> {
    (
        any::<bool>(),
        0i64..110,
        prop_oneof![Just(0i64), Just(500)],
        0i64..120,
        prop_oneof![Just(1i64), Just(3), Just(7), Just(10), Just(30)],
    )
        .prop_map(|(instant, start, ms, len, step)| {
            let start_ns = start * SEC + ms * 1_000_000;
            QueryParams {
                start_ns,
                end_ns: if instant {
                    start_ns
                } else {
                    start_ns + len * SEC
                },
                step_ns: if instant { 0 } else { step * SEC },
                instant,
                limits: Limits {
                    max_series: 1_000_000,
                    ..Limits::default()
                },
                ..QueryParams::default()
            }
        })
}

fn same_value(a: f64, b: f64, exact: bool) -> bool {
    a.to_bits() == b.to_bits()
        || (a.is_nan() && b.is_nan())
        || (!exact && (a - b).abs() <= 1e-12 * a.abs().max(b.abs()) + 1e-9)
}

fn same(a: &QueryResult, b: &QueryResult, exact: bool) -> bool {
    match (a, b) {
        (QueryResult::Matrix(x), QueryResult::Matrix(y)) => {
            x.len() == y.len()
                && x.iter().zip(y).all(|(s, t)| {
                    s.labels == t.labels
                        && s.points.len() == t.points.len()
                        && s.points
                            .iter()
                            .zip(&t.points)
                            .all(|(p, q)| p.0 == q.0 && same_value(p.1, q.1, exact))
                })
        }
        (QueryResult::Vector(x), QueryResult::Vector(y)) => {
            x.len() == y.len()
                && x.iter().zip(y).all(|(s, t)| {
                    s.labels == t.labels
                        && s.ts_ns == t.ts_ns
                        && same_value(s.value, t.value, exact)
                })
        }
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn pushdown_gives_the_unpushed_result(
        raw in proptest::collection::vec(raw_entry(), 0..120),
        (query, dyadic) in query_strategy(),
        params in params(),
    ) {
        let source = Entries(entries(&raw, dyadic));
        let expr = parse(&query.text).unwrap();
        let unpushed = evaluate_with(&expr, &params, &source, false);
        let pushed = evaluate_with(&expr, &params, &source, true);
        match (&unpushed, &pushed) {
            (Ok(u), Ok(p)) => prop_assert!(
                same(u, p, query.exact),
                "{}\nunpushed: {u:?}\npushed:   {p:?}", query.text
            ),
            (Err(u), Err(p)) => prop_assert_eq!(u.to_string(), p.to_string(), "{}", query.text),
            _ => prop_assert!(false, "{}\nunpushed: {unpushed:?}\npushed:   {pushed:?}", query.text),
        }
    }
}

/// The grammar reaches the pushed-down path for every function, composing the
/// groupings of a chain, and the unpushed path.
#[test]
fn the_grammar_covers_pushed_and_unpushed_queries() {
    let plan = |kind, odd| {
        let chain = vec!["by (level, pod)".to_string(), "without (pod)".to_string()];
        let q = query(kind, odd, true, 1, 0, true, true, String::new(), chain, 0);
        let Ok(Expr::Metric(MetricExpr::Aggregate(agg))) = parse(&q.text) else {
            panic!("{}", q.text);
        };
        super::Pushdown::of(&agg).map(|p| {
            let series: Labels = [("level", "info"), ("pod", "p1"), ("app", "a")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into();
            (p.range.op, p.key(&series))
        })
    };
    let info: Labels = [("level".to_string(), "info".to_string())].into();
    for kind in 0..8 {
        let (_, key) = plan(kind, 11).unwrap_or_else(|| panic!("{kind} is not pushed down"));
        assert_eq!(key, info);
        assert!(plan(kind, 1).is_none(), "{kind}: count is pushed down");
    }
    assert_eq!(plan(0, 11).unwrap().0, RangeOp::CountOverTime);
    assert_eq!(plan(7, 11).unwrap().0, RangeOp::MaxOverTime);
    assert!(
        plan(0, 0).is_none(),
        "max over count_over_time is pushed down"
    );
}
