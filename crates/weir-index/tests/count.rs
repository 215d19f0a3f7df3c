//! Counting per label group and time bucket from the index agrees with counting the
//! records themselves: real temp directories, real tantivy, several partitions and
//! segments, two tenants, and attributes named like labels (which a count must ignore).

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use weir_index::{
    merge_counts, parse_query, CountRequest, Error, GroupCounts, IndexOptions, LabelFilter,
    LabelSource, Query, ShardIndex,
};
use weir_proto::v1::{StoredBatch, StoredRecord};
use weir_proto::{Level, ShardId};

const SEC: i64 = 1_000_000_000;
const HOUR: i64 = 3_600 * SEC;
const T0: i64 = 1_700_000_000 * SEC - (1_700_000_000 * SEC) % HOUR;

#[derive(Clone, Debug)]
struct Gen {
    tenant: bool,
    offset_s: i64,
    level: u8,
    service: u8,
    app: Option<u8>,
    service_name: Option<u8>,
    attr_app: Option<u8>,
}

fn gen() -> impl Strategy<Value = Gen> {
    (
        any::<bool>(),
        0..3 * 3_600i64,
        0..4u8,
        0..3u8,
        prop::option::of(0..3u8),
        prop::option::weighted(0.2, 0..2u8),
        prop::option::of(0..3u8),
    )
        .prop_map(
            |(tenant, offset_s, level, service, app, service_name, attr_app)| Gen {
                tenant,
                offset_s,
                level,
                service,
                app,
                service_name,
                attr_app,
            },
        )
}

const LEVELS: [Level; 4] = [Level::Debug, Level::Info, Level::Warn, Level::Error];

fn record(g: &Gen) -> StoredRecord {
    let mut r = StoredRecord {
        timestamp_ns: T0 + g.offset_s * SEC,
        level: LEVELS[g.level as usize] as u32,
        body: format!("line at {}", g.offset_s),
        service: format!("svc{}", g.service),
        ..Default::default()
    };
    if let Some(a) = g.app {
        r.labels.insert("app".into(), format!("app{a}"));
    }
    if let Some(s) = g.service_name {
        r.labels.insert("service_name".into(), format!("named{s}"));
    }
    if let Some(a) = g.attr_app {
        r.attributes.insert("app".into(), format!("app{a}"));
    }
    r
}

/// A record's stream labels as LogQL sees them (`service_name` the label, else the service).
fn stream(r: &StoredRecord) -> BTreeMap<String, String> {
    let mut s: BTreeMap<String, String> = r.labels.clone().into_iter().collect();
    s.insert("service".into(), r.service.clone());
    s.insert(
        "level".into(),
        Level::from_u32(r.level).unwrap().as_str().into(),
    );
    s.entry("service_name".into())
        .or_insert_with(|| r.service.clone());
    s
}

fn source(name: &str) -> LabelSource {
    match name {
        "service_name" => LabelSource {
            names: vec!["service".into(), "service_name".into()],
        },
        other => LabelSource::label(other),
    }
}

/// What the queries of the test match, written out on the record.
fn query_matches(kind: u8, r: &StoredRecord) -> bool {
    let app1 =
        |m: &std::collections::BTreeMap<String, String>| m.get("app").is_some_and(|v| v == "app1");
    match kind {
        0 => true,
        1 => r.level == Level::Warn as u32 || r.level == Level::Error as u32,
        // A name that is not a standard field is a label or an attribute.
        _ => app1(&r.labels) || app1(&r.attributes),
    }
}

const QUERIES: [&str; 3] = ["*", "level:warn OR level:error", "app:app1"];

fn brute(
    records: &[(bool, StoredRecord)],
    query: u8,
    filters: &[(String, String, bool)],
    group_by: &[String],
    req: &CountRequest,
) -> BTreeMap<Vec<Option<String>>, Vec<u64>> {
    let mut out = BTreeMap::new();
    let (lo, hi) = req.span();
    for (acme, r) in records {
        if !acme || r.timestamp_ns < lo || r.timestamp_ns >= hi || !query_matches(query, r) {
            continue;
        }
        let s = stream(r);
        let value = |n: &str| s.get(n).cloned().unwrap_or_default();
        if !filters.iter().all(|(n, v, eq)| (value(n) == *v) == *eq) {
            continue;
        }
        let key: Vec<Option<String>> = group_by.iter().map(|g| s.get(g).cloned()).collect();
        let counts = out.entry(key).or_insert_with(|| vec![0; req.buckets]);
        counts[((r.timestamp_ns - req.origin_ns) / req.width_ns) as usize] += 1;
    }
    out
}

fn as_map(groups: Vec<GroupCounts>) -> BTreeMap<Vec<Option<String>>, Vec<u64>> {
    groups.into_iter().map(|g| (g.values, g.counts)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn counts_from_the_index_equal_counting_the_records(
        gens in prop::collection::vec(gen(), 1..300),
        filters in prop::collection::vec(
            (prop::sample::select(vec!["app", "level", "service", "service_name"]), 0..4u8, any::<bool>()),
            0..3,
        ),
        group_by in prop::sample::subsequence(vec!["app", "level", "service_name"], 0..=3),
        origin_s in 0..3_600i64,
        width_s in 1..2_000i64,
        buckets in 1..12usize,
        chunk in 1..80usize,
        query in 0..3u8,
        range in prop::option::of((0..3 * 3_600i64, 0..3 * 3_600i64)),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let ix = ShardIndex::open(dir.path(), ShardId(0), IndexOptions::default()).unwrap();
        let records: Vec<(bool, StoredRecord)> = gens.iter().map(|g| (g.tenant, record(g))).collect();
        for (i, batch) in records.chunks(chunk).enumerate() {
            for tenant in [true, false] {
                let b = StoredBatch {
                    tenant: if tenant { "acme" } else { "other" }.into(),
                    records: batch.iter().filter(|(t, _)| *t == tenant).map(|(_, r)| r.clone()).collect(),
                    received_ns: 0,
                };
                ix.add_batch(2 * i as u64 + u64::from(!tenant) + 1, &b).unwrap();
            }
            // Several segments per partition.
            ix.commit().unwrap();
        }
        let values = |name: &str, k: u8| match name {
            "app" => format!("app{k}"),
            "level" => LEVELS[k as usize % 4].as_str().to_owned(),
            "service" => format!("svc{k}"),
            _ => if k == 3 { "named0".to_owned() } else { format!("svc{k}") },
        };
        let filters: Vec<(String, String, bool)> = filters
            .into_iter()
            .map(|(n, k, eq)| (n.to_owned(), if k == 3 && n == "app" { String::new() } else { values(n, k) }, eq))
            .collect();
        let group_by: Vec<String> = group_by.into_iter().map(str::to_owned).collect();
        let req = CountRequest {
            tenant: "acme".into(),
            query: parse_query(QUERIES[query as usize]).unwrap(),
            start_ns: range.map_or(i64::MIN, |(a, _)| T0 + a * SEC),
            end_ns: range.map_or(i64::MAX, |(a, b)| T0 + a.max(b) * SEC),
            filters: filters
                .iter()
                .map(|(n, v, eq)| {
                    let (v, eq) = (v.clone(), *eq);
                    LabelFilter { label: source(n), accepts: Arc::new(move |x: &str| (x == v) == eq) }
                })
                .collect(),
            group_by: group_by.iter().map(|g| source(g)).collect(),
            origin_ns: T0 + origin_s * SEC,
            width_ns: width_s * SEC,
            buckets,
            cells_max: 1 << 20,
        };
        let got = as_map(ix.count(&req).unwrap());
        let want = brute(&records, query, &filters, &group_by, &req);
        // Groups whose every bucket is 0 are not reported.
        let want: BTreeMap<_, _> = want.into_iter().filter(|(_, c)| c.iter().any(|n| *n > 0)).collect();
        prop_assert_eq!(got, want);
    }
}

#[test]
fn a_count_past_its_counter_bound_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ix = ShardIndex::open(dir.path(), ShardId(0), IndexOptions::default()).unwrap();
    let records = (0..10)
        .map(|i| {
            record(&Gen {
                tenant: true,
                offset_s: i,
                level: 0,
                service: (i % 3) as u8,
                app: None,
                service_name: None,
                attr_app: None,
            })
        })
        .collect();
    let b = StoredBatch {
        tenant: "acme".into(),
        records,
        received_ns: 0,
    };
    ix.add_batch(1, &b).unwrap();
    ix.commit().unwrap();
    let req = CountRequest {
        tenant: "acme".into(),
        query: Query::All,
        start_ns: i64::MIN,
        end_ns: i64::MAX,
        filters: vec![],
        group_by: vec![LabelSource::label("service")],
        origin_ns: T0,
        width_ns: SEC,
        buckets: 10,
        cells_max: 25,
    };
    let err = ix.count(&req).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("more than 25 counters")),
        "{err}"
    );
    let fits = ix
        .count(&CountRequest {
            cells_max: 30,
            ..req
        })
        .unwrap();
    let mut total = Vec::new();
    merge_counts(&mut total, fits);
    assert_eq!(total.len(), 3, "one group per service");
    assert_eq!(total.iter().flat_map(|g| &g.counts).sum::<u64>(), 10);
}
