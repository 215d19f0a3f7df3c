//! The scanned head answers as the index does: random records in real tantivy partitions
//! (temp directories, several batches), random queries from a grammar covering every
//! clause kind (words, phrases with and without slop, prefixes, phrase prefixes, infixes,
//! exact fields, ids, labels and attributes, NOT/AND/OR), levels and time ranges. Each
//! query runs three ways over the same records and must give the same hits and totals:
//!
//! - all indexed (`ShardIndex::search`);
//! - none indexed, every record in the head (`search_with_head` over an empty index);
//! - the first half indexed and the whole log in the head, as a lagging indexer leaves it
//!   (some partitions already showing later records, committed when their writer was
//!   evicted): the index answers up to its checkpoint and the head after it, never both.
//!
//! Counts per group and bucket (`count_with_head`) are checked the same way, scans
//! (`scan_with_head`, every match in no order) find the records the searches find, and
//! paging through a split shard with a cursor returns every hit exactly once.

use std::sync::Arc;

use proptest::prelude::*;
use weir_index::{
    parse_query, CountRequest, HeadBatch, HeadEntry, Hit, IndexOptions, LabelFilter, LabelSource,
    Query, SearchRequest, ShardIndex, Sort,
};
use weir_proto::v1::{StoredBatch, StoredRecord};
use weir_proto::{Level, ShardId};

const SEC: i64 = 1_000_000_000;
const T0: i64 = 1_700_000_000 * SEC;

/// Body words: mixed case, a word inside another (`reset`/`preset`), digits, and one word
/// over the index's 40-byte limit.
const WORDS: [&str; 12] = [
    "Connection",
    "reset",
    "preset",
    "by",
    "PEER",
    "timeout",
    "db-01",
    "user_42",
    "GET",
    "/api/v1/orders",
    "ünïcode",
    "averyveryverylongwordthatthetokenizerdropsentirely",
];
const SERVICES: [&str; 3] = ["api", "api-gw", "db"];
const LEVELS: [Level; 3] = [Level::Info, Level::Warn, Level::Error];

type RawRecord = (u8, Vec<u8>, u8, u8, Option<u8>, Option<u8>, u8);

fn raw_record() -> impl Strategy<Value = RawRecord> {
    (
        0..60u8,
        prop::collection::vec(0..WORDS.len() as u8, 0..8),
        0..3u8,
        0..3u8,
        prop::option::of(0..3u8),
        prop::option::of(0..3u8),
        0..4u8,
    )
}

fn record(raw: &RawRecord) -> StoredRecord {
    let (secs, words, level, service, app, attr, trace) = raw;
    let mut r = StoredRecord {
        timestamp_ns: T0 + i64::from(*secs) * SEC,
        level: LEVELS[*level as usize] as u32,
        body: words
            .iter()
            .map(|w| WORDS[*w as usize])
            .collect::<Vec<_>>()
            .join(" "),
        service: SERVICES[*service as usize].into(),
        trace_id: if *trace == 0 {
            String::new()
        } else {
            format!("{:032x}", u128::from(*trace) * 0x1234_5678_9abc)
        },
        ..Default::default()
    };
    if let Some(a) = app {
        r.labels.insert("app".into(), format!("app{a}"));
    }
    if let Some(a) = attr {
        r.attributes.insert("user".into(), format!("u{a}"));
        // An id-like value: indexed by its key (weir_index's idkey module).
        r.attributes.insert(
            "req".into(),
            format!("{:016x}", u64::from(*a) * 0x1111_2222_3333),
        );
    }
    r
}

/// Query texts from a small grammar of every clause kind.
fn query_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("reset".to_string()),
        Just("RESET".to_string()),
        Just("peer".to_string()),
        Just("\"connection reset\"".to_string()),
        Just("\"reset connection\"~2".to_string()),
        Just("\"connection peer\"~3".to_string()),
        Just("\"by peer\"".to_string()),
        Just("db-01".to_string()),
        Just("res*".to_string()),
        Just("\"connection res\"*".to_string()),
        Just("*eset*".to_string()),
        Just("*ünï*".to_string()),
        Just("*word*".to_string()),
        Just("service:api".to_string()),
        Just("service:api*".to_string()),
        Just("level:warn".to_string()),
        Just("app:app1".to_string()),
        Just("user:u2".to_string()),
        Just("req:0000222244446666".to_string()),
        Just("req:00002*".to_string()),
        Just("req:0000*".to_string()),
        Just("req:000*".to_string()),
        Just("app:app*".to_string()),
        Just(format!("trace_id:{:032X}", 2u128 * 0x1234_5678_9abc)),
        Just("/api/v1/orders".to_string()),
        Just("user_42".to_string()),
        Just("averyveryverylongwordthatthetokenizerdropsentirely".to_string()),
        Just("\"--\"".to_string()),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} AND {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} OR {b})")),
            inner.clone().prop_map(|a| format!("NOT {a}")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("({a} -{b})")),
        ]
    })
}

fn opts() -> IndexOptions {
    IndexOptions {
        // Several partitions over the records' minute.
        partition_span_secs: 20,
        ..Default::default()
    }
}

/// The records cut into batches of up to 5, as log entries 1, 2, ...
fn entries(records: &[StoredRecord], tenant_of: impl Fn(usize) -> &'static str) -> Vec<HeadEntry> {
    records
        .chunks(5)
        .enumerate()
        .map(|(i, chunk)| {
            (
                i as u64 + 1,
                Arc::new(HeadBatch::new(StoredBatch {
                    tenant: tenant_of(i).into(),
                    records: chunk.to_vec(),
                    ..Default::default()
                })),
            )
        })
        .collect()
}

struct Three {
    _dirs: Vec<tempfile::TempDir>,
    all: ShardIndex,
    none: ShardIndex,
    half: ShardIndex,
    log: Vec<HeadEntry>,
}

fn three(log: Vec<HeadEntry>) -> Three {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let open = |d: &tempfile::TempDir, opts| ShardIndex::open(d.path(), ShardId(0), opts).unwrap();
    let (all, none) = (open(&dirs[0], opts()), open(&dirs[1], opts()));
    // One open writer: adding a record of another partition commits the open one, so
    // some partitions show records past the checkpoint, as a lagging indexer leaves them.
    let half = open(
        &dirs[2],
        IndexOptions {
            max_open_writers: 1,
            ..opts()
        },
    );
    for (i, b) in &log {
        all.add_batch(*i, &b.batch).unwrap();
        half.add_batch(*i, &b.batch).unwrap();
        if *i as usize == log.len() / 2 {
            half.commit().unwrap();
        }
    }
    all.commit().unwrap();
    Three {
        _dirs: dirs,
        all,
        none,
        half,
        log,
    }
}

fn keys(hits: &[Hit]) -> Vec<(i64, u64, u32)> {
    hits.iter()
        .map(|h| (h.key.timestamp_ns, h.key.log_index, h.key.offset))
        .collect()
}

fn request(
    query: Query,
    levels: Vec<Level>,
    start_s: i64,
    end_s: i64,
    sort: Sort,
) -> SearchRequest {
    SearchRequest {
        query,
        tenant: "acme".into(),
        start_ns: T0 + start_s * SEC,
        end_ns: T0 + end_s * SEC,
        levels,
        limit: 1000,
        sort,
        after: None,
        prefilter: false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn the_head_answers_as_the_index_does(
        raws in prop::collection::vec(raw_record(), 1..60),
        queries in prop::collection::vec(query_text(), 4),
        level in prop::option::of(0..3usize),
        (start_s, len_s) in (0..50i64, 1..70i64),
    ) {
        let records: Vec<StoredRecord> = raws.iter().map(record).collect();
        // Every fourth batch is another tenant's: never an answer.
        let t = three(entries(&records, |i| if i % 4 == 3 { "other" } else { "acme" }));
        let levels: Vec<Level> = level.map(|l| vec![LEVELS[l]]).unwrap_or_default();
        for text in &queries {
            let q = parse_query(text).unwrap();
            for sort in [Sort::TimeDesc, Sort::TimeAsc] {
                let req = request(q.clone(), levels.clone(), start_s, start_s + len_s, sort);
                let want = t.all.search(&req).unwrap();
                let head_only = t.none.search_with_head(&req, &t.log).unwrap();
                let split = t.half.search_with_head(&req, &t.log).unwrap();
                prop_assert_eq!(keys(&head_only.hits), keys(&want.hits), "head only: {}", text);
                prop_assert_eq!(head_only.total, want.total, "head only: {}", text);
                prop_assert_eq!(keys(&split.hits), keys(&want.hits), "split: {}", text);
                prop_assert_eq!(split.total, want.total, "split: {}", text);
                prop_assert_eq!(want.scanned, 0);
                // The head's records of the tenant were read (not the other tenant's).
                prop_assert!(head_only.scanned <= records.len() as u64);
            }
            // Every match once, in batches of at most 3, whichever way the shard holds it.
            let req = request(q.clone(), levels.clone(), start_s, start_s + len_s, Sort::TimeAsc);
            let want = sorted_records(t.all.search(&req).unwrap().hits.into_iter().map(|h| h.record));
            for (how, ix, log) in [("index", &t.all, &[][..]), ("head only", &t.none, &t.log[..]), ("split", &t.half, &t.log[..])] {
                let mut got = Vec::new();
                let mut biggest = 0;
                ix.scan_with_head(&req, log, 3, &mut |batch| {
                    biggest = biggest.max(batch.len());
                    got.extend(batch);
                    true
                })
                .unwrap();
                prop_assert!(biggest <= 3, "{}: a batch of {}", how, biggest);
                prop_assert_eq!(sorted_records(got), want.clone(), "scan, {}: {}", how, text);
            }
        }
    }

    #[test]
    fn head_counts_add_up_with_the_index(
        raws in prop::collection::vec(raw_record(), 1..60),
        text in query_text(),
        width_s in 1..30i64,
    ) {
        let records: Vec<StoredRecord> = raws.iter().map(record).collect();
        let t = three(entries(&records, |_| "acme"));
        let req = CountRequest {
            tenant: "acme".into(),
            query: parse_query(&text).unwrap(),
            start_ns: T0,
            end_ns: T0 + 3600 * SEC,
            filters: vec![LabelFilter {
                label: LabelSource::label("level"),
                accepts: Arc::new(|v| v != "info"),
            }],
            group_by: vec![LabelSource::label("service"), LabelSource::label("app")],
            origin_ns: T0,
            width_ns: width_s * SEC,
            buckets: 70,
            cells_max: 1 << 20,
        };
        let sorted = |mut g: Vec<weir_index::GroupCounts>| {
            g.sort_by(|a, b| a.values.cmp(&b.values));
            g.into_iter().map(|g| (g.values, g.counts)).collect::<Vec<_>>()
        };
        let want = sorted(t.all.count(&req).unwrap());
        let (head_only, scanned) = t.none.count_with_head(&req, &t.log).unwrap();
        prop_assert_eq!(scanned, records.len() as u64);
        prop_assert_eq!(sorted(head_only), want.clone(), "head only: {}", &text);
        let (split, _) = t.half.count_with_head(&req, &t.log).unwrap();
        prop_assert_eq!(sorted(split), want, "split: {}", &text);
    }
}

/// Records in an order of their own, to compare answers given in different orders.
fn sorted_records(records: impl IntoIterator<Item = StoredRecord>) -> Vec<String> {
    let mut v: Vec<String> = records.into_iter().map(|r| format!("{r:?}")).collect();
    v.sort();
    v
}

/// A scan stops reading when its receiver says so, and never returns records a tenant's
/// retention deleted from the index.
#[test]
fn a_scan_stops_when_told_and_skips_deleted_records() {
    let records: Vec<StoredRecord> = (0..50)
        .map(|i| StoredRecord {
            timestamp_ns: T0 + i * SEC,
            body: format!("request {i} served"),
            service: "api".into(),
            ..Default::default()
        })
        .collect();
    // Every other batch another tenant's, so that deleting one tenant's records leaves
    // them in segments that stay, marked deleted.
    let t = three(entries(
        &records,
        |i| if i % 2 == 0 { "acme" } else { "other" },
    ));
    let req = request(
        parse_query("served").unwrap(),
        vec![],
        0,
        100,
        Sort::TimeAsc,
    );
    let mut batches = 0;
    t.all
        .scan_with_head(&req, &[], 7, &mut |_| {
            batches += 1;
            false
        })
        .unwrap();
    assert_eq!(batches, 1, "the scan went on after its receiver stopped it");
    // Partitions are 20 s wide: those ending by T0 + 40 s lose the tenant's records.
    assert_eq!(
        t.all.delete_tenant_before("acme", T0 + 40 * SEC).unwrap(),
        2
    );
    let mut got = Vec::new();
    t.all
        .scan_with_head(&req, &[], 7, &mut |b| {
            got.extend(b);
            true
        })
        .unwrap();
    let want = sorted_records(
        t.all
            .search(&req)
            .unwrap()
            .hits
            .into_iter()
            .map(|h| h.record),
    );
    assert_eq!(
        want.len(),
        5,
        "records 40 to 44 are acme's and after the cutoff"
    );
    assert_eq!(sorted_records(got), want);
}

/// Paging with a cursor through a shard whose index holds half the log returns every
/// match once, in order, across the index/head boundary.
#[test]
fn pages_cross_from_index_to_head_without_repeats() {
    let records: Vec<StoredRecord> = (0..97)
        .map(|i| StoredRecord {
            // Out of log order in time, so that pages interleave index and head.
            timestamp_ns: T0 + ((i * 37) % 97) * SEC,
            body: format!("request {i} served"),
            service: "api".into(),
            ..Default::default()
        })
        .collect();
    let t = three(entries(&records, |_| "acme"));
    for sort in [Sort::TimeDesc, Sort::TimeAsc] {
        let mut req = request(parse_query("served").unwrap(), vec![], 0, 100, sort);
        req.limit = 10;
        let mut seen = Vec::new();
        loop {
            let page = t.half.search_with_head(&req, &t.log).unwrap();
            assert_eq!(page.total, 97);
            let (hits, _, next) =
                weir_index::merge(vec![page], sort, req.limit, req.after.as_ref());
            seen.extend(keys(&hits));
            match next {
                Some(c) => req.after = Some(c),
                None => break,
            }
        }
        let mut want = keys(
            &t.all
                .search(&request(
                    parse_query("served").unwrap(),
                    vec![],
                    0,
                    100,
                    sort,
                ))
                .unwrap()
                .hits,
        );
        assert_eq!(seen.len(), 97, "{sort}");
        assert_eq!(seen, std::mem::take(&mut want), "{sort}");
    }
}

/// A phrase after NOT (`user_42 -"api v1"`) is excluded right: tantivy's phrase scorer,
/// asked as an exclusion about a document before its first match, used to fail a debug
/// assertion (see `exclude.rs`).
#[test]
fn a_phrase_after_not_excludes_its_matches() {
    let bodies = [
        "user_42 GET",
        "user_42 /api/v1/orders",
        "x",
        "user_42",
        "/api/v1/orders",
    ];
    let records: Vec<StoredRecord> = bodies
        .iter()
        .map(|b| StoredRecord {
            timestamp_ns: T0,
            body: b.to_string(),
            ..Default::default()
        })
        .collect();
    let t = three(entries(&records, |_| "acme"));
    for (q, want) in [("(user_42 -\"api v1\")", 2), ("NOT \"api v1\"", 3)] {
        let req = request(parse_query(q).unwrap(), vec![], 0, 1, Sort::TimeAsc);
        assert_eq!(t.all.search(&req).unwrap().total, want, "{q}");
    }
}
