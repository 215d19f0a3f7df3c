//! A metric query answered from a source's counts (no entry read) gives exactly what
//! reading the entries gives, for every step, range, offset and grouping; and the engine
//! asks for counts only where a count is the whole answer.

mod common;

use common::*;
use proptest::prelude::*;
use weir_logql::*;

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    prop::collection::vec(
        (0..600i64, 0..3u8, 0..3u8, prop::option::of(0..2u8)),
        0..120,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(ts, app, level, zone)| {
                let mut stream = labels(&[
                    ("app", ["api", "web", "db"][app as usize]),
                    ("level", ["info", "warn", "error"][level as usize]),
                ]);
                if let Some(z) = zone {
                    stream.insert("zone".into(), format!("z{z}"));
                }
                Entry {
                    // On, just before and just after whole seconds, where windows begin and end.
                    ts_ns: ts * SEC + [0, 1, -1, 2, 0][(ts % 5) as usize],
                    line: format!("line {ts}"),
                    stream,
                    metadata: Labels::new(),
                }
            })
            .collect()
    })
}

fn query() -> impl Strategy<Value = String> {
    let selector = prop::sample::select(vec![
        r#"{app=~".+"}"#,
        r#"{app="api"}"#,
        r#"{app!="web", zone=~"z.*"}"#,
        r#"{level=~"warn|error"}"#,
        r#"{app=~"a.+|d.+", zone=""}"#,
    ]);
    let function = prop::sample::select(vec!["count_over_time", "rate"]);
    let grouping = prop::sample::select(vec!["", "by (level)", "by (zone, app)", "by ()"]);
    let pipeline = prop::sample::select(vec!["", " | drop __error__"]);
    let range = prop::sample::select(vec!["1s", "7s", "30s", "1m", "$__auto"]);
    let offset = prop::sample::select(vec!["", " offset 13s"]);
    let shape = prop::sample::select(vec![0u8, 1, 2]);
    (selector, function, grouping, pipeline, range, offset, shape).prop_map(
        |(sel, f, g, p, r, o, shape)| {
            let inner = format!("sum {g} ({f}({sel}{p} [{r}]{o}))");
            match shape {
                0 => inner,
                1 => format!("topk(2, {inner})"),
                _ => format!("sum by (app) (sum by (app, level) ({f}({sel}{p} [{r}]{o})))"),
            }
        },
    )
}

fn run_both(q: &str, params: &QueryParams, entries: &[Entry]) -> (QueryResult, QueryResult, usize) {
    let read = VecSource::new(entries.to_vec());
    let mut counted = VecSource::new(entries.to_vec());
    counted.use_counts = true;
    let a = run(q, params, &read).unwrap();
    let b = run(q, params, &counted).unwrap();
    (a, b, counted.counts.get())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn counts_give_the_same_answer_as_reading(
        entries in entries(),
        q in query(),
        start in 0..300i64,
        len in 0..400i64,
        step in prop::sample::select(vec![1i64, 5, 10, 15, 60]),
        instant in any::<bool>(),
    ) {
        let params = if instant {
            QueryParams { step_ns: step * SEC, ..instant_params(start + len) }
        } else {
            range_params(start, start + len, step)
        };
        let (read, counted, asked) = run_both(&q, &params, &entries);
        prop_assert_eq!(read, counted, "{}", q);
        prop_assert!(asked > 0, "the engine counted {}", q);
    }
}

#[test]
fn only_bare_sums_of_line_counts_are_counted() {
    let entries: Vec<Entry> = (0..50)
        .map(|i| entry(i as f64, "status=500 took=3", &[("app", "api")]))
        .collect();
    let params = range_params(0, 60, 10);
    for q in [
        r#"sum(count_over_time({app="api"} |= "500" [10s]))"#,
        r#"sum(count_over_time({app="api"} | logfmt [10s]))"#,
        r#"count_over_time({app="api"}[10s])"#,
        r#"max(count_over_time({app="api"}[10s]))"#,
        r#"sum without (app) (count_over_time({app="api"}[10s]))"#,
        r#"sum(bytes_over_time({app="api"}[10s]))"#,
        r#"sum(sum_over_time({app="api"} | logfmt | unwrap took [10s]))"#,
    ] {
        let (read, counted, asked) = run_both(q, &params, &entries);
        assert_eq!(asked, 0, "{q} is not a bare count");
        assert_eq!(read, counted, "{q}");
    }
    let (_, _, asked) = run_both(
        r#"sum by (app) (rate({app="api"} | drop __error__ [10s]))"#,
        &params,
        &entries,
    );
    assert_eq!(asked, 1, "a bare count is counted");
}
