//! Evaluation against an in-memory source.

mod common;

use common::*;
use weir_logql::*;

fn matrix(r: QueryResult) -> Vec<(Labels, Vec<(i64, f64)>)> {
    match r {
        QueryResult::Matrix(m) => m
            .into_iter()
            .map(|s| {
                (
                    s.labels,
                    s.points.into_iter().map(|(t, v)| (t / SEC, v)).collect(),
                )
            })
            .collect(),
        other => panic!("not a matrix: {other:?}"),
    }
}

fn vector(r: QueryResult) -> Vec<(Labels, f64)> {
    match r {
        QueryResult::Vector(v) => v.into_iter().map(|s| (s.labels, s.value)).collect(),
        other => panic!("not a vector: {other:?}"),
    }
}

/// One `app=x` line a second from t=1s to t=10s, levels alternating.
fn ten_lines() -> VecSource {
    VecSource::new(
        (1..=10)
            .map(|i| {
                let level = if i % 2 == 0 { "error" } else { "info" };
                entry(
                    i as f64,
                    &format!("level={level} n={i} took={i}ms"),
                    &[("app", "x")],
                )
            })
            .collect(),
    )
}

#[test]
fn log_queries_group_by_final_labels_and_take_the_first_limit_in_direction_order() {
    let src = ten_lines();
    let mut p = range_params(0, 100, 1);
    p.limit = 3;
    p.direction = Direction::Backward;
    let QueryResult::Streams(streams) =
        run(r#"{app="x"} | logfmt | drop n, took"#, &p, &src).unwrap()
    else {
        panic!()
    };
    assert_eq!(streams.len(), 2);
    let ts: Vec<Vec<i64>> = streams
        .iter()
        .map(|s| s.entries.iter().map(|e| e.ts_ns / SEC).collect())
        .collect();
    assert_eq!(ts, vec![vec![10, 8], vec![9]], "newest three, newest first");
    assert_eq!(
        streams[0].labels,
        labels(&[("app", "x"), ("level", "error")])
    );
    assert_eq!(streams[0].stream, labels(&[("app", "x")]));
    p.direction = Direction::Forward;
    let QueryResult::Streams(streams) = run(r#"{app="x"} |= "n=1""#, &p, &src).unwrap() else {
        panic!()
    };
    let ts: Vec<i64> = streams[0].entries.iter().map(|e| e.ts_ns / SEC).collect();
    assert_eq!(ts, vec![1, 10]);
}

#[test]
fn range_windows_exclude_their_start_and_include_their_end() {
    let src = ten_lines();
    let m = matrix(
        run(
            r#"count_over_time({app="x"}[2s])"#,
            &range_params(0, 4, 2),
            &src,
        )
        .unwrap(),
    );
    // t=0: (−2,0] none; t=2: (0,2] = {1,2}; t=4: (2,4] = {3,4}.
    assert_eq!(m, vec![(labels(&[("app", "x")]), vec![(2, 2.0), (4, 2.0)])]);
    let m = matrix(run(r#"rate({app="x"}[4s])"#, &range_params(4, 4, 1), &src).unwrap());
    assert_eq!(m[0].1, vec![(4, 1.0)]);
}

#[test]
fn offset_shifts_the_window_back_and_keeps_the_step_time() {
    let src = ten_lines();
    let m = matrix(
        run(
            r#"count_over_time({app="x"}[2s] offset 5s)"#,
            &range_params(10, 10, 1),
            &src,
        )
        .unwrap(),
    );
    assert_eq!(m[0].1, vec![(10, 2.0)], "(3,5] holds 4 and 5");
}

#[test]
fn select_is_called_once_per_range_aggregation() {
    let src = ten_lines();
    run(
        r#"sum(count_over_time({app="x"}[3s])) / sum(count_over_time({app="x"}[1s]))"#,
        &range_params(0, 10, 1),
        &src,
    )
    .unwrap();
    assert_eq!(src.selects.get(), 2);
}

#[test]
fn vector_aggregations_group_by_labels() {
    let src = ten_lines();
    let q = r#"sum by (level) (count_over_time({app="x"} | logfmt | drop n, took [10s]))"#;
    let v = vector(run(q, &instant_params(10), &src).unwrap());
    assert_eq!(
        v,
        vec![
            (labels(&[("level", "error")]), 5.0),
            (labels(&[("level", "info")]), 5.0)
        ]
    );
    let q = r#"sum by (level, detected_level) (count_over_time({app="x"} | drop __error__ [1m]))"#;
    let v = vector(run(q, &instant_params(10), &src).unwrap());
    assert_eq!(v, vec![(Labels::new(), 10.0)]);
}

#[test]
fn grafana_health_check_and_scalars() {
    let src = VecSource::new(vec![]);
    let r = run("vector(1)+vector(1)", &instant_params(100), &src).unwrap();
    assert_eq!(vector(r.clone()), vec![(Labels::new(), 2.0)]);
    assert_eq!(
        r.to_loki_json(false),
        serde_json::json!({"resultType": "vector", "result": [{"metric": {}, "value": [100, "2"]}]})
    );
    assert_eq!(
        run("1 + 2 * 3", &instant_params(5), &src).unwrap(),
        QueryResult::Scalar {
            ts_ns: 5 * SEC,
            value: 7.0
        }
    );
    assert_eq!(
        run("2 > bool 1", &instant_params(5), &src).unwrap(),
        QueryResult::Scalar {
            ts_ns: 5 * SEC,
            value: 1.0
        }
    );
}

#[test]
fn unwrap_aggregations_drop_the_unwrapped_label() {
    let src = ten_lines();
    let base = r#"{app="x"} | logfmt | drop level, took | unwrap n"#;
    let cases = [
        ("sum_over_time", 55.0),
        ("avg_over_time", 5.5),
        ("min_over_time", 1.0),
        ("max_over_time", 10.0),
        ("first_over_time", 1.0),
        ("last_over_time", 10.0),
        ("stdvar_over_time", 8.25),
        ("rate", 5.5),
    ];
    for (f, want) in cases {
        let q = format!("{f}({base} [10s])");
        let v = vector(run(&q, &instant_params(10), &src).unwrap());
        assert_eq!(v, vec![(labels(&[("app", "x")]), want)], "{q}");
    }
    let q = r#"quantile_over_time(0.5, {app="x"} | logfmt | unwrap n [10s])"#;
    let v = vector(run(q, &instant_params(10), &src).unwrap());
    assert_eq!(v.len(), 10, "took differs per line: one series each");
    let q = r#"quantile_over_time(0.5, {app="x"} | logfmt | unwrap n [10s]) by (app)"#;
    assert_eq!(
        vector(run(q, &instant_params(10), &src).unwrap()),
        vec![(labels(&[("app", "x")]), 5.5)]
    );
    let q = r#"max_over_time({app="x"} | logfmt | unwrap duration(took) [10s]) by (level)"#;
    assert_eq!(
        vector(run(q, &instant_params(10), &src).unwrap()),
        vec![
            (labels(&[("level", "error")]), 0.01),
            (labels(&[("level", "info")]), 0.009)
        ]
    );
}

#[test]
fn errors_in_metric_series_are_refused_unless_filtered() {
    let src = VecSource::new(vec![entry(1.0, "not json", &[("app", "x")])]);
    let e = run(
        r#"count_over_time({app="x"} | json [1m])"#,
        &instant_params(10),
        &src,
    )
    .unwrap_err();
    assert!(
        matches!(&e, EngineError::Pipeline(m) if m.contains("JSONParserErr")),
        "{e}"
    );
    let v = vector(
        run(
            r#"count_over_time({app="x"} | json | __error__="" [1m])"#,
            &instant_params(10),
            &src,
        )
        .unwrap(),
    );
    assert!(v.is_empty());
    let q = r#"sum_over_time({app="x"} | logfmt | unwrap n | __error__="" [1m])"#;
    assert!(vector(
        run(
            q,
            &instant_params(10),
            &VecSource::new(vec![entry(1.0, "n=abc", &[("app", "x")])])
        )
        .unwrap()
    )
    .is_empty());
}

#[test]
fn absent_over_time_reports_steps_without_data() {
    let src = ten_lines();
    let m = matrix(
        run(
            r#"absent_over_time({app="x", env="prod"}[1s])"#,
            &range_params(9, 12, 1),
            &src,
        )
        .unwrap(),
    );
    let every_step = vec![(9, 1.0), (10, 1.0), (11, 1.0), (12, 1.0)];
    assert_eq!(
        m,
        vec![(labels(&[("app", "x"), ("env", "prod")]), every_step)]
    );
    let m = matrix(
        run(
            r#"absent_over_time({app="x"}[1s])"#,
            &range_params(9, 12, 1),
            &src,
        )
        .unwrap(),
    );
    assert_eq!(
        m,
        vec![(labels(&[("app", "x")]), vec![(11, 1.0), (12, 1.0)])]
    );
}

#[test]
fn topk_sort_and_binary_operators() {
    let src = ten_lines();
    let inner = r#"sum by (level) (count_over_time({app="x"} | logfmt | drop n, took [3s]))"#;
    let v = vector(run(&format!("topk(1, {inner})"), &instant_params(10), &src).unwrap());
    assert_eq!(v, vec![(labels(&[("level", "error")]), 2.0)]);
    let v = vector(run(&format!("sort_desc({inner})"), &instant_params(10), &src).unwrap());
    assert_eq!(v[0].1, 2.0);
    let v = vector(run(&format!("{inner} > 1"), &instant_params(10), &src).unwrap());
    assert_eq!(v, vec![(labels(&[("level", "error")]), 2.0)]);
    let v = vector(run(&format!("{inner} > bool 1"), &instant_params(10), &src).unwrap());
    assert_eq!(v.iter().map(|s| s.1).collect::<Vec<_>>(), vec![1.0, 0.0]);
    let v = vector(run(&format!("{inner} * 10"), &instant_params(10), &src).unwrap());
    assert_eq!(v.iter().map(|s| s.1).collect::<Vec<_>>(), vec![20.0, 10.0]);
    let total = r#"sum(count_over_time({app="x"}[3s]))"#;
    let v = vector(
        run(
            &format!("{inner} / ignoring(level) group_left {total}"),
            &instant_params(10),
            &src,
        )
        .unwrap(),
    );
    assert_eq!(
        v.iter().map(|s| s.1).collect::<Vec<_>>(),
        vec![2.0 / 3.0, 1.0 / 3.0]
    );
    let e = run(&format!("{inner} / {total}"), &instant_params(10), &src).unwrap();
    assert!(
        vector(e).is_empty(),
        "one-to-one on all labels matches nothing"
    );
    let v = vector(
        run(
            &format!("{inner} unless on(level) {inner} > 1"),
            &instant_params(10),
            &src,
        )
        .unwrap(),
    );
    assert_eq!(v, vec![(labels(&[("level", "info")]), 1.0)]);
    let v = vector(
        run(
            &format!("{inner} > 1 or vector(0)"),
            &instant_params(10),
            &src,
        )
        .unwrap(),
    );
    assert_eq!(v.len(), 2);
    let e = run(
        &format!("{inner} + on() {inner}"),
        &instant_params(10),
        &src,
    )
    .unwrap_err();
    assert!(e.to_string().contains("duplicate series"), "{e}");
}

#[test]
fn label_replace_rewrites_labels() {
    let src = ten_lines();
    let q = r#"label_replace(count_over_time({app="x"}[10s]), "svc", "$1-svc", "app", "(.*)")"#;
    let v = vector(run(q, &instant_params(10), &src).unwrap());
    assert_eq!(v, vec![(labels(&[("app", "x"), ("svc", "x-svc")]), 10.0)]);
}

#[test]
fn bytes_functions_measure_the_final_line() {
    let src = VecSource::new(vec![
        entry(1.0, "abcd", &[("app", "x")]),
        entry(2.0, "ef", &[("app", "x")]),
    ]);
    let v = vector(
        run(
            r#"bytes_over_time({app="x"}[10s])"#,
            &instant_params(10),
            &src,
        )
        .unwrap(),
    );
    assert_eq!(v[0].1, 6.0);
    let v = vector(
        run(
            r#"bytes_over_time({app="x"} | line_format "x" [10s])"#,
            &instant_params(10),
            &src,
        )
        .unwrap(),
    );
    assert_eq!(v[0].1, 2.0);
    let v = vector(run(r#"bytes_rate({app="x"}[2s])"#, &instant_params(2), &src).unwrap());
    assert_eq!(v[0].1, 3.0);
}

#[test]
fn limits_are_enforced_and_named() {
    let src = ten_lines();
    let mut p = range_params(0, 10, 1);
    p.limits.max_series = 1;
    let e = run(r#"count_over_time({app="x"} | logfmt [1s])"#, &p, &src).unwrap_err();
    assert!(
        matches!(
            e,
            EngineError::Limit {
                what: "max_series",
                limit: 1,
                ..
            }
        ),
        "{e}"
    );
    let mut p = range_params(0, 10_000, 1);
    p.limits.max_points_per_series = 100;
    let e = run(r#"count_over_time({app="x"}[1s])"#, &p, &src).unwrap_err();
    assert!(
        matches!(
            e,
            EngineError::Limit {
                what: "max_points_per_series",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("max_points_per_series=100"), "{e}");
}

#[test]
fn auto_range_is_the_step() {
    let src = ten_lines();
    let m = matrix(
        run(
            r#"count_over_time({app="x"}[$__auto])"#,
            &range_params(2, 6, 2),
            &src,
        )
        .unwrap(),
    );
    assert_eq!(m[0].1, vec![(2, 2.0), (4, 2.0), (6, 2.0)]);
}

#[test]
fn directions_parse_in_any_case() {
    assert_eq!("FORWARD".parse::<Direction>().unwrap(), Direction::Forward);
    assert_eq!(
        "backward".parse::<Direction>().unwrap(),
        Direction::Backward
    );
    assert!("sideways".parse::<Direction>().is_err());
}

#[test]
fn bad_parameters_are_invalid() {
    let src = ten_lines();
    let mut p = range_params(0, 10, 0);
    assert!(matches!(
        run(r#"count_over_time({app="x"}[1s])"#, &p, &src),
        Err(EngineError::Invalid(_))
    ));
    p.limit = 0;
    assert!(matches!(
        run(r#"{app="x"}"#, &p, &src),
        Err(EngineError::Invalid(_))
    ));
}

/// 2,000 `env=prod` lines, one every 10 ms from t=1s, each with a unique `request_id`
/// in its structured metadata; levels cycle info, warn, error; `service` alternates.
fn unique_requests() -> VecSource {
    VecSource::new(
        (0..2_000)
            .map(|i| {
                let level = ["info", "warn", "error"][i % 3];
                let service = ["api", "db"][i % 2];
                let mut e = entry(
                    1.0 + i as f64 * 0.01,
                    &format!("level={level} took={}ms", i % 7),
                    &[("env", "prod"), ("level", level), ("service", service)],
                );
                e.metadata = labels(&[("request_id", &format!("req-{i}"))]);
                e
            })
            .collect(),
    )
}

#[test]
fn sum_by_pushes_its_grouping_into_the_range_aggregation() {
    let src = unique_requests();
    let mut p = instant_params(60);
    p.limits.max_series = 10;
    let v = vector(
        run(
            r#"sum by (level) (count_over_time({env="prod"}[1m]))"#,
            &p,
            &src,
        )
        .unwrap(),
    );
    assert_eq!(
        v,
        vec![
            (labels(&[("level", "error")]), 666.0),
            (labels(&[("level", "info")]), 667.0),
            (labels(&[("level", "warn")]), 667.0),
        ]
    );
    // Through a chain of sums, and under a topk, which works on the sum's output.
    let v = vector(
        run(
            r#"topk(1, sum by (service) (sum without (request_id) (rate({env="prod"}[1m]))))"#,
            &p,
            &src,
        )
        .unwrap(),
    );
    assert_eq!(v, vec![(labels(&[("service", "api")]), 1000.0 / 60.0)]);
    // A range query: one group per level, whatever the request ids.
    let m = matrix(
        run(
            r#"sum without (request_id, service) (bytes_over_time({env="prod"}[10s]))"#,
            &range_params(10, 30, 10),
            &src,
        )
        .unwrap(),
    );
    assert_eq!(m.len(), 3);
    // max over max_over_time: the largest `took` per level.
    let v = vector(
        run(
            r#"max by (level) (max_over_time({env="prod"} | logfmt | unwrap duration(took) [1m]))"#,
            &p,
            &src,
        )
        .unwrap(),
    );
    assert_eq!(v.len(), 3);
    assert!(v.iter().all(|(_, x)| *x == 0.006), "{v:?}");
}

#[test]
fn aggregations_that_need_every_series_keep_the_series_limit() {
    let src = unique_requests();
    let mut p = instant_params(60);
    p.limits.max_series = 10;
    // `count` counts series: it needs all 2,000 (Loki too refuses more than its
    // max_query_series).
    for q in [
        r#"count by (level) (count_over_time({env="prod"}[1m]))"#,
        r#"max by (level) (count_over_time({env="prod"}[1m]))"#,
        r#"sum by (level) (max_over_time({env="prod"} | logfmt | unwrap duration(took) [1m]))"#,
    ] {
        let e = run(q, &p, &src).unwrap_err();
        assert!(
            matches!(
                e,
                EngineError::Limit {
                    what: "max_series",
                    limit: 10,
                    ..
                }
            ),
            "{q}: {e}"
        );
        assert!(e.to_string().contains("max_series=10"), "{e}");
    }
    // Pushed down, the limit counts groups.
    let e = run(
        r#"sum by (request_id) (count_over_time({env="prod"}[1m]))"#,
        &p,
        &src,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("grouped by the sum above it tracks more than 10 groups"),
        "{e}"
    );
}

#[test]
fn pushed_down_groupings_still_refuse_series_with_errors() {
    let mut src = unique_requests();
    src.entries[1_500].line = "level=info took=abc".into();
    let p = instant_params(60);
    for q in [
        r#"sum by (level) (count_over_time({env="prod"} | logfmt | took >= 0s [1m]))"#,
        r#"sum(rate({env="prod"} | logfmt | took >= 0s [1m]))"#,
    ] {
        let e = run(q, &p, &src).unwrap_err();
        assert!(
            matches!(&e, EngineError::Pipeline(m) if m.contains("LabelFilterErr") && m.contains("req-1500")),
            "{q}: {e}"
        );
    }
    let v = vector(
        run(
            r#"sum by (level) (count_over_time({env="prod"} | logfmt | took >= 0s | __error__="" [1m]))"#,
            &p,
            &src,
        )
        .unwrap(),
    );
    assert_eq!(v.iter().map(|(_, x)| x).sum::<f64>(), 1_999.0, "{v:?}");
}

/// Range aggregations whose value does not depend on the order of their entries read
/// them through `Source::scan`, which may hand them out in any order, and answer as they
/// do oldest first; the others (float sums, first and last) read oldest first.
#[test]
fn range_aggregations_answer_the_same_whatever_order_a_scan_gives_entries_in() {
    let entries: Vec<Entry> = (0..60)
        .map(|i| {
            let app = ["a", "b", "c"][i % 3];
            // Distinct times (first and last over time compare them), values repeating.
            entry(
                i as f64 * 0.37 + 0.1,
                &format!("level=info v={}", (i * 7) % 11),
                &[("job", "j"), ("app", app)],
            )
        })
        .collect();
    let ordered = VecSource::new(entries.clone());
    let mut scrambled = VecSource::new(entries);
    scrambled.scramble_scans = true;
    // (query, whether it scans)
    let queries = [
        (r#"sum by (app) (count_over_time({job="j"}[5s]))"#, true),
        (r#"count_over_time({job="j"} |= "v=3" [5s])"#, true),
        (r#"rate({job="j"}[3s])"#, true),
        (r#"bytes_over_time({job="j"}[4s])"#, true),
        (r#"bytes_rate({job="j"}[4s])"#, true),
        (r#"min_over_time({job="j"} | logfmt | unwrap v [5s])"#, true),
        (r#"max_over_time({job="j"} | logfmt | unwrap v [5s])"#, true),
        (
            r#"quantile_over_time(0.5, {job="j"} | logfmt | unwrap v [5s])"#,
            true,
        ),
        (r#"absent_over_time({job="j", app="none"}[5s])"#, true),
        (r#"topk(1, sum by (app) (rate({job="j"}[5s])))"#, true),
        // Not pushed down: the three apps' counts tie, and the series' order decides.
        (r#"topk(1, count_over_time({job="j"}[5s]))"#, true),
        (r#"avg(rate({job="j"}[5s]))"#, true),
        (
            r#"sum by (app) (sum_over_time({job="j"} | logfmt | unwrap v [5s]))"#,
            false,
        ),
        (r#"rate({job="j"} | logfmt | unwrap v [5s])"#, false),
        (
            r#"avg_over_time({job="j"} | logfmt | unwrap v [5s])"#,
            false,
        ),
        (
            r#"first_over_time({job="j"} | logfmt | unwrap v [5s])"#,
            false,
        ),
        (
            r#"last_over_time({job="j"} | logfmt | unwrap v [5s])"#,
            false,
        ),
        (
            r#"stddev_over_time({job="j"} | logfmt | unwrap v [5s])"#,
            false,
        ),
    ];
    let p = range_params(0, 24, 2);
    for (q, scans) in queries {
        let before = scrambled.scans.get();
        let want = matrix(run(q, &p, &ordered).unwrap());
        let got = matrix(run(q, &p, &scrambled).unwrap());
        assert_eq!(
            scrambled.scans.get() - before,
            usize::from(scans),
            "{q}: scans"
        );
        assert!(
            !want.is_empty() || q.starts_with("absent"),
            "{q}: no series"
        );
        assert_eq!(want.len(), got.len(), "{q}");
        for ((wl, wp), (gl, gp)) in want.iter().zip(&got) {
            assert_eq!(wl, gl, "{q}");
            assert_eq!(wp.len(), gp.len(), "{q} {wl:?}");
            for ((wt, wv), (gt, gv)) in wp.iter().zip(gp) {
                assert_eq!(wt, gt, "{q} {wl:?}");
                // Sums in another order may differ in their last bits.
                assert!(
                    (wv - gv).abs() <= 1e-9 * wv.abs().max(1.0),
                    "{q} {wl:?} at {wt}: {wv} oldest first, {gv} scrambled"
                );
            }
        }
    }
}
