//! `to_loki_json` against the response examples of Loki's HTTP API documentation
//! (`docs/sources/reference/loki-http-api.md`), `stats` left out.

mod common;

use common::labels;
use serde_json::json;
use weir_logql::*;

const T: i64 = 1_588_889_221_000_000_000;

#[test]
fn instant_vector_matches_the_documented_response() {
    let r = QueryResult::Vector(vec![
        Sample {
            labels: Labels::new(),
            ts_ns: T,
            value: 1267.1266666666666,
        },
        Sample {
            labels: labels(&[("level", "warn")]),
            ts_ns: T,
            value: 37.77166666666667,
        },
        Sample {
            labels: labels(&[("level", "info")]),
            ts_ns: T,
            value: 37.69,
        },
    ]);
    assert_eq!(
        r.to_loki_json(false),
        json!({
            "resultType": "vector",
            "result": [
                {"metric": {}, "value": [1588889221, "1267.1266666666666"]},
                {"metric": {"level": "warn"}, "value": [1588889221, "37.77166666666667"]},
                {"metric": {"level": "info"}, "value": [1588889221, "37.69"]}
            ]
        })
    );
}

#[test]
fn matrix_matches_the_documented_response() {
    let series = |level: &str, values: [f64; 3]| Series {
        labels: labels(&[("level", level)]),
        points: values.iter().map(|v| (T, *v)).collect(),
    };
    let r = QueryResult::Matrix(vec![
        series("info", [137.95, 467.115, 658.8516666666667]),
        series("warn", [137.27833333333334, 467.69, 660.6933333333334]),
    ]);
    assert_eq!(
        r.to_loki_json(false),
        json!({
            "resultType": "matrix",
            "result": [
                {"metric": {"level": "info"}, "values": [[1588889221, "137.95"], [1588889221, "467.115"], [1588889221, "658.8516666666667"]]},
                {"metric": {"level": "warn"}, "values": [[1588889221, "137.27833333333334"], [1588889221, "467.69"], [1588889221, "660.6933333333334"]]}
            ]
        })
    );
}

fn documented_streams() -> QueryResult {
    let entry = |ts_ns: i64, line: &str| StreamEntry {
        ts_ns,
        line: line.into(),
        metadata: Labels::new(),
        parsed: Labels::new(),
    };
    QueryResult::Streams(vec![Stream {
        labels: labels(&[
            ("filename", "/var/log/myproject.log"),
            ("job", "varlogs"),
            ("level", "info"),
        ]),
        stream: labels(&[("filename", "/var/log/myproject.log"), ("job", "varlogs")]),
        entries: vec![
            entry(1569266497240578000, "foo"),
            entry(1569266492548155000, "bar"),
        ],
    }])
}

#[test]
fn streams_match_the_documented_response() {
    assert_eq!(
        documented_streams().to_loki_json(false),
        json!({
            "resultType": "streams",
            "result": [{
                "stream": {"filename": "/var/log/myproject.log", "job": "varlogs", "level": "info"},
                "values": [["1569266497240578000", "foo"], ["1569266492548155000", "bar"]]
            }]
        })
    );
}

#[test]
fn categorized_streams_carry_metadata_and_parsed_labels_per_entry() {
    let QueryResult::Streams(mut streams) = documented_streams() else {
        unreachable!()
    };
    streams[0].entries[0].metadata = labels(&[("trace_id", "abc")]);
    streams[0].entries[0].parsed = labels(&[("level", "info")]);
    assert_eq!(
        QueryResult::Streams(streams).to_loki_json(true),
        json!({
            "resultType": "streams",
            "result": [{
                "stream": {"filename": "/var/log/myproject.log", "job": "varlogs"},
                "values": [
                    ["1569266497240578000", "foo", {"structuredMetadata": {"trace_id": "abc"}, "parsed": {"level": "info"}}],
                    ["1569266492548155000", "bar", {}]
                ]
            }]
        })
    );
}

#[test]
fn scalars_and_special_values_format_like_prometheus() {
    let r = QueryResult::Scalar {
        ts_ns: 1_500,
        value: f64::INFINITY,
    };
    assert_eq!(
        r.to_loki_json(false),
        json!({"resultType": "scalar", "result": [0, "+Inf"]})
    );
    let r = QueryResult::Scalar {
        ts_ns: 1_588_889_221_123_456_789,
        value: f64::NAN,
    };
    assert_eq!(
        r.to_loki_json(false),
        json!({"resultType": "scalar", "result": [1588889221.123, "NaN"]})
    );
    let r = QueryResult::Scalar {
        ts_ns: 0,
        value: -0.5,
    };
    assert_eq!(r.to_loki_json(false)["result"][1], "-0.5");
}
