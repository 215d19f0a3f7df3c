//! End-to-end tests of a shard index: real temp directories, real tantivy.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use weir_index::{
    merge, parse_query, Cursor, Error, Hit, IndexOptions, SearchRequest, ShardHits, ShardIndex,
    Sort,
};
use weir_proto::v1::{StoredBatch, StoredRecord};
use weir_proto::{Level, ShardId};

const HOUR: i64 = 3_600_000_000_000;
/// 2023-11-14T22:00:00Z, on an hour boundary.
const T0: i64 = 1_700_000_000_000_000_000 - 1_700_000_000_000_000_000 % HOUR;

fn rec(ts: i64, level: Level, service: &str, body: &str) -> StoredRecord {
    StoredRecord {
        timestamp_ns: ts,
        level: level as u32,
        body: body.into(),
        service: service.into(),
        namespace: "prod".into(),
        pod: format!("{service}-7f9c"),
        cluster: "eu-1".into(),
        ..Default::default()
    }
}

fn batch(tenant: &str, records: Vec<StoredRecord>) -> StoredBatch {
    StoredBatch {
        tenant: tenant.into(),
        records,
        received_ns: 0,
    }
}

fn open(dir: &Path, shard: u32) -> ShardIndex {
    ShardIndex::open(dir, ShardId(shard), IndexOptions::default()).unwrap()
}

fn req(q: &str) -> SearchRequest {
    SearchRequest {
        query: parse_query(q).unwrap(),
        tenant: "acme".into(),
        start_ns: i64::MIN,
        end_ns: i64::MAX,
        levels: vec![],
        limit: 100,
        sort: Sort::TimeDesc,
        after: None,
        prefilter: false,
    }
}

fn bodies(h: &ShardHits) -> Vec<String> {
    h.hits.iter().map(|h| h.record.body.clone()).collect()
}

fn search(ix: &ShardIndex, q: &str) -> Vec<String> {
    let mut b = bodies(&ix.search(&req(q)).unwrap());
    b.sort();
    b
}

/// A small corpus over three hours in one index, tenant "acme", plus one record of
/// tenant "other".
fn corpus(dir: &Path) -> ShardIndex {
    let ix = open(dir, 0);
    let mut r1 = rec(T0 + 10, Level::Error, "api", "connection reset by peer");
    r1.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736".into();
    r1.span_id = "00f067aa0ba902b7".into();
    r1.labels.insert("app".into(), "checkout".into());
    r1.attributes.insert("order_id".into(), "A-1001".into());
    let mut r2 = rec(T0 + 20, Level::Info, "api", "connection established to db");
    r2.labels.insert("app".into(), "checkout".into());
    r2.attributes.insert("order_id".into(), "A-1002".into());
    let r3 = rec(
        T0 + HOUR + 5,
        Level::Warn,
        "web",
        "the quick brown fox jumps",
    );
    let mut r4 = rec(
        T0 + HOUR + 6,
        Level::Info,
        "web",
        "the quick red fox sleeps",
    );
    r4.labels.insert("app".into(), "storefront".into());
    let r5 = rec(
        T0 + 2 * HOUR + 1,
        Level::Debug,
        "worker",
        "quick job done in 5ms",
    );
    let r6 = rec(T0 + 2 * HOUR + 2, Level::Error, "worker", "reset counters");
    ix.add_batch(1, &batch("acme", vec![r1, r2])).unwrap();
    ix.add_batch(2, &batch("acme", vec![r3, r4, r5])).unwrap();
    ix.add_batch(3, &batch("acme", vec![r6])).unwrap();
    ix.add_batch(
        4,
        &batch(
            "other",
            vec![rec(
                T0 + 30,
                Level::Error,
                "api",
                "connection reset by peer (other tenant)",
            )],
        ),
    )
    .unwrap();
    ix.commit().unwrap();
    ix
}

#[test]
fn every_query_kind_finds_what_it_should() {
    let dir = tempfile::tempdir().unwrap();
    let ix = corpus(dir.path());
    assert_eq!(ix.doc_count(), 7);
    assert_eq!(ix.partition_count(), 3);

    let cases: &[(&str, &[&str])] = &[
        // words (body, case-insensitive)
        ("RESET", &["connection reset by peer", "reset counters"]),
        (
            "body:fox",
            &["the quick brown fox jumps", "the quick red fox sleeps"],
        ),
        // standard exact fields
        (
            "service:web",
            &["the quick brown fox jumps", "the quick red fox sleeps"],
        ),
        (
            "level:error",
            &["connection reset by peer", "reset counters"],
        ),
        (
            "pod:worker-7f9c",
            &["quick job done in 5ms", "reset counters"],
        ),
        (
            "namespace:prod cluster:eu-1 service:worker level:debug",
            &["quick job done in 5ms"],
        ),
        // stream label and attribute, through the same field:value syntax
        ("app:storefront", &["the quick red fox sleeps"]),
        (
            "app:checkout",
            &["connection established to db", "connection reset by peer"],
        ),
        ("order_id:A-1002", &["connection established to db"]),
        ("order_id:\"A-1001\"", &["connection reset by peer"]),
        // phrase, slop
        ("\"quick brown\"", &["the quick brown fox jumps"]),
        ("\"quick fox\"", &[]),
        (
            "\"quick fox\"~1",
            &["the quick brown fox jumps", "the quick red fox sleeps"],
        ),
        // a word that tokenizes to several is a phrase
        ("reset-by", &["connection reset by peer"]),
        ("peer-reset", &[]),
        ("connection-reset", &["connection reset by peer"]),
        // prefixes: body word, exact field, label, attribute
        (
            "connect*",
            &["connection established to db", "connection reset by peer"],
        ),
        ("service:wor*", &["quick job done in 5ms", "reset counters"]),
        ("app:store*", &["the quick red fox sleeps"]),
        (
            "order_id:A-100*",
            &["connection established to db", "connection reset by peer"],
        ),
        // phrase prefix
        ("\"quick bro\"*", &["the quick brown fox jumps"]),
        ("\"the quick r\"*", &["the quick red fox sleeps"]),
        // booleans
        ("fox AND sleeps", &["the quick red fox sleeps"]),
        ("fox sleeps", &["the quick red fox sleeps"]),
        (
            "sleeps OR counters",
            &["reset counters", "the quick red fox sleeps"],
        ),
        ("fox NOT sleeps", &["the quick brown fox jumps"]),
        ("quick -fox", &["quick job done in 5ms"]),
        ("+quick +job", &["quick job done in 5ms"]),
        ("-quick -connection", &["reset counters"]),
        (
            "NOT level:info",
            &[
                "connection reset by peer",
                "quick job done in 5ms",
                "reset counters",
                "the quick brown fox jumps",
            ],
        ),
        (
            "(reset OR fox) service:web",
            &["the quick brown fox jumps", "the quick red fox sleeps"],
        ),
        (
            "reset OR fox service:web",
            &[
                "connection reset by peer",
                "reset counters",
                "the quick brown fox jumps",
                "the quick red fox sleeps",
            ],
        ),
        (
            "(service:api OR service:worker) -(reset OR db)",
            &["quick job done in 5ms"],
        ),
        // match all (of this tenant)
        (
            "*",
            &[
                "connection established to db",
                "connection reset by peer",
                "quick job done in 5ms",
                "reset counters",
                "the quick brown fox jumps",
                "the quick red fox sleeps",
            ],
        ),
        // punctuation only: nothing to search
        ("!!!", &[]),
    ];
    for (q, want) in cases {
        assert_eq!(search(&ix, q), *want, "query {q}");
    }
}

/// LogQL checks every line against its filters, so its index query (`prefilter`) may
/// match more than it says: a conjunction of body words intersects only each segment's
/// three rarest words (walking common words' postings was most of a cold needle's cost).
/// It must never miss a record holding every word, a segment lacking any word must give
/// nothing, and what is under a NOT must stay exact (a superset there would hide records).
#[test]
fn a_prefilter_search_may_match_more_than_its_body_words_but_never_less() {
    let dir = tempfile::tempdir().unwrap();
    let ix = open(dir.path(), 0);
    let mut records = vec![
        rec(T0 + 1, Level::Info, "api", "w1 w2 w3 w4 common"),
        rec(T0 + 2, Level::Info, "api", "w1 w2 w3 common"),
    ];
    // w4 is the commonest of the four words: the one a prefilter leaves out.
    for i in 0..10 {
        records.push(rec(T0 + 10 + i, Level::Info, "api", "w4 common filler"));
    }
    ix.add_batch(1, &batch("acme", records)).unwrap();
    ix.commit().unwrap();
    // A second segment with one more record holding every word.
    ix.add_batch(
        2,
        &batch(
            "acme",
            vec![rec(T0 + 100, Level::Info, "api", "w4 w3 w2 w1 again")],
        ),
    )
    .unwrap();
    ix.commit().unwrap();
    let run = |q: &str, prefilter: bool| {
        let mut b = bodies(
            &ix.search(&SearchRequest {
                prefilter,
                ..req(q)
            })
            .unwrap(),
        );
        b.sort();
        b
    };
    assert_eq!(
        run("w1 w2 w3 w4", false),
        ["w1 w2 w3 w4 common", "w4 w3 w2 w1 again"],
        "an exact search holds every word"
    );
    assert_eq!(
        run("w1 w2 w3 w4", true),
        ["w1 w2 w3 common", "w1 w2 w3 w4 common", "w4 w3 w2 w1 again"],
        "a prefilter also matches the record lacking only the commonest word"
    );
    assert_eq!(
        run("\"w3 w1\" w2 w4", true),
        ["w1 w2 w3 common", "w1 w2 w3 w4 common", "w4 w3 w2 w1 again"],
        "a phrase's words count as words"
    );
    assert!(
        run("w1 w2 w3 nowhere", true).is_empty(),
        "a word no segment holds leaves nothing"
    );
    assert!(
        run("filler w1", true).is_empty(),
        "two words never in one record, each rare enough to be intersected"
    );
    assert_eq!(
        run("common NOT (w1 w2 w3 w4)", true).len(),
        11,
        "under NOT the words are exact: only the record with all four is left out"
    );
}

/// A time-ordered search skips the segments whose records are all outside its range
/// before looking up any term; the range's ends must still be where they were: the
/// start included, the end excluded, also where a segment begins or ends there.
#[test]
fn a_time_range_ending_or_starting_at_a_segments_edge_keeps_its_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let ix = open(dir.path(), 0);
    let at = |ts: i64| rec(T0 + ts, Level::Info, "api", &format!("tick {ts}"));
    ix.add_batch(1, &batch("acme", vec![at(10), at(20)]))
        .unwrap();
    ix.commit().unwrap();
    ix.add_batch(2, &batch("acme", vec![at(30), at(40)]))
        .unwrap();
    ix.commit().unwrap();
    let run = |start: i64, end: i64, sort: Sort| {
        let h = ix
            .search(&SearchRequest {
                start_ns: T0 + start,
                end_ns: T0 + end,
                sort,
                ..req("tick")
            })
            .unwrap();
        let mut b = bodies(&h);
        b.sort();
        (b, h.total)
    };
    for sort in [Sort::TimeDesc, Sort::TimeAsc] {
        assert_eq!(
            run(20, 30, sort),
            (vec!["tick 20".to_string()], 1),
            "{sort:?}"
        );
        assert_eq!(
            run(21, 31, sort),
            (vec!["tick 30".to_string()], 1),
            "{sort:?}"
        );
        assert_eq!(
            run(20, 31, sort),
            (vec!["tick 20".to_string(), "tick 30".to_string()], 2),
            "{sort:?}"
        );
        assert_eq!(run(41, 50, sort), (vec![], 0), "{sort:?}");
    }
}

/// A partition reads and writes the same whichever way its files are mapped
/// (`random_access_maps`), and a node may switch between the two across restarts.
#[test]
fn an_index_written_with_one_file_mapping_reads_the_same_with_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let with = |random: bool| {
        ShardIndex::open(
            dir.path(),
            ShardId(0),
            IndexOptions {
                random_access_maps: random,
                ..IndexOptions::default()
            },
        )
        .unwrap()
    };
    let ix = with(false);
    ix.add_batch(
        1,
        &batch(
            "acme",
            vec![rec(T0 + 1, Level::Info, "api", "mapped one way")],
        ),
    )
    .unwrap();
    ix.commit().unwrap();
    assert_eq!(search(&ix, "mapped"), ["mapped one way"]);
    ix.close().unwrap();
    drop(ix);
    let ix = with(true);
    assert_eq!(search(&ix, "mapped"), ["mapped one way"]);
    ix.add_batch(
        2,
        &batch(
            "acme",
            vec![rec(T0 + 2, Level::Info, "api", "mapped the other")],
        ),
    )
    .unwrap();
    ix.commit().unwrap();
    assert_eq!(
        search(&ix, "mapped"),
        ["mapped one way", "mapped the other"]
    );
}

#[test]
fn trace_id_and_span_id_are_exact_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let ix = corpus(dir.path());
    let h = ix
        .search(&req("trace_id:4bf92f3577b34da6a3ce929d0e0e4736"))
        .unwrap();
    assert_eq!(h.total, 1);
    assert_eq!(h.hits[0].record.span_id, "00f067aa0ba902b7");
    assert_eq!(h.hits[0].tenant, "acme");
    assert_eq!(h.hits[0].key.log_index, 1);
    assert_eq!(h.hits[0].key.offset, 0);
    assert_eq!(
        search(&ix, "trace_id:4bf92f3577b34da6"),
        Vec::<String>::new()
    );
    // Ids are stored in lower case and looked up in any case, never by prefix.
    assert_eq!(
        search(&ix, "trace_id:4BF92F3577B34DA6A3CE929D0E0E4736").len(),
        1
    );
    assert!(parse_query("trace_id:4bf92f35*").is_err());
    assert_eq!(search(&ix, "span_id:00f067aa0ba902b7").len(), 1);
}

/// The document store keeps a record without its timestamp (the column holds it): every
/// reader, a page of hits and a scan, puts it back, to the nanosecond.
#[test]
fn hits_return_the_stored_record_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let ix = open(dir.path(), 0);
    let mut r = rec(T0 + 123_456_789, Level::Fatal, "api", "boom");
    r.labels.insert("z".into(), "y".into());
    r.labels.insert("a".into(), "b".into());
    r.attributes.insert("k".into(), "v".into());
    r.trace_id = "t".into();
    let mut second = rec(T0 + 1, Level::Info, "api", "boom again");
    second.span_id = "s".into();
    ix.add_batch(7, &batch("acme", vec![r.clone(), second.clone()]))
        .unwrap();
    ix.commit().unwrap();
    let h = ix.search(&req("boom")).unwrap();
    assert_eq!(h.hits[0].record, r);
    assert_eq!(h.hits[1].record, second);
    let mut scanned = Vec::new();
    ix.scan_with_head(&req("boom"), &[], 10, &mut |batch| {
        scanned.extend(batch);
        true
    })
    .unwrap();
    scanned.sort_by_key(|r| r.timestamp_ns);
    assert_eq!(scanned, [second, r]);
}

#[test]
fn time_range_opens_only_overlapping_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let ix = corpus(dir.path());
    let before = ix.partitions_searched();
    let mut r = req("quick");
    r.start_ns = T0 + HOUR;
    r.end_ns = T0 + 2 * HOUR;
    let h = ix.search(&r).unwrap();
    assert_eq!(ix.partitions_searched() - before, 1);
    assert_eq!(h.total, 2);

    // A range inside a partition filters by timestamp too.
    let before = ix.partitions_searched();
    r.start_ns = T0 + HOUR + 6;
    r.end_ns = T0 + 2 * HOUR + 2;
    let h = ix.search(&r).unwrap();
    assert_eq!(ix.partitions_searched() - before, 2);
    assert_eq!(
        bodies(&h),
        ["quick job done in 5ms", "the quick red fox sleeps"]
    );

    // Outside everything: no partition opened.
    let before = ix.partitions_searched();
    r.start_ns = T0 + 10 * HOUR;
    r.end_ns = T0 + 11 * HOUR;
    assert_eq!(ix.search(&r).unwrap().total, 0);
    assert_eq!(ix.partitions_searched(), before);
}

#[test]
fn level_filter_keeps_only_the_given_levels() {
    let dir = tempfile::tempdir().unwrap();
    let ix = corpus(dir.path());
    let mut r = req("");
    r.levels = vec![Level::Warn, Level::Debug];
    let mut b = bodies(&ix.search(&r).unwrap());
    b.sort();
    assert_eq!(b, ["quick job done in 5ms", "the quick brown fox jumps"]);
}

#[test]
fn tenants_never_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let ix = corpus(dir.path());
    let mut r = req("reset");
    r.tenant = "other".into();
    let h = ix.search(&r).unwrap();
    assert_eq!(h.total, 1);
    assert_eq!(h.hits[0].tenant, "other");
    r.tenant = "nobody".into();
    assert_eq!(ix.search(&r).unwrap().total, 0);
    // Labels too.
    assert_eq!(
        ix.label_values("other", "service", i64::MIN, i64::MAX)
            .unwrap(),
        ["api"]
    );
    assert!(ix
        .label_names("nobody", i64::MIN, i64::MAX)
        .unwrap()
        .is_empty());
}

#[test]
fn sort_orders() {
    let dir = tempfile::tempdir().unwrap();
    let ix = corpus(dir.path());
    let ts = |sort: Sort| {
        let mut r = req("");
        r.sort = sort;
        ix.search(&r)
            .unwrap()
            .hits
            .iter()
            .map(|h| h.key.timestamp_ns - T0)
            .collect::<Vec<_>>()
    };
    let desc = vec![2 * HOUR + 2, 2 * HOUR + 1, HOUR + 6, HOUR + 5, 20, 10];
    assert_eq!(ts(Sort::TimeDesc), desc);
    assert_eq!(
        ts(Sort::TimeAsc),
        desc.iter().rev().copied().collect::<Vec<_>>()
    );

    // Score: the record with the query word twice and in a short body ranks first.
    let ix2dir = tempfile::tempdir().unwrap();
    let ix2 = open(ix2dir.path(), 0);
    ix2.add_batch(
        1,
        &batch(
            "acme",
            vec![
                rec(
                    T0,
                    Level::Info,
                    "a",
                    "timeout while waiting for the upstream service to answer",
                ),
                rec(T0 + 1, Level::Info, "a", "timeout timeout"),
                rec(T0 + 2, Level::Info, "a", "nothing here"),
            ],
        ),
    )
    .unwrap();
    ix2.commit().unwrap();
    let mut r = req("timeout");
    r.sort = Sort::Score;
    let h = ix2.search(&r).unwrap();
    assert_eq!(bodies(&h)[0], "timeout timeout");
    assert!(h.hits[0].score > h.hits[1].score && h.hits[1].score > 0.0);
}

/// Writes `n` records over 5 hours into shard `shard`'s index, several per batch, with
/// clashing timestamps so that the tie-breaks matter.
fn many(dir: &Path, shard: u32, n: usize) -> ShardIndex {
    let ix = open(dir, shard);
    let mut records = Vec::new();
    for i in 0..n {
        let ts = T0 + ((i * 7919) % (5 * 3600)) as i64 * 1_000_000_000 / 4 * 4;
        let ts = ts - ts % 3_000_000_000; // many equal timestamps
        let level = if i % 3 == 0 {
            Level::Error
        } else {
            Level::Info
        };
        records.push(rec(
            ts,
            level,
            "svc",
            &format!("event number {i} shard {shard}"),
        ));
    }
    for (li, chunk) in records.chunks(37).enumerate() {
        ix.add_batch(li as u64 + 1, &batch("acme", chunk.to_vec()))
            .unwrap();
    }
    ix.commit().unwrap();
    ix
}

fn page_through(shards: &[&ShardIndex], base: &SearchRequest) -> (Vec<Hit>, u64, usize) {
    let mut all = Vec::new();
    let mut after: Option<Cursor> = None;
    let mut pages = 0;
    let mut total_seen = None;
    loop {
        // The cursor goes through its string form, as over HTTP.
        let after_rt = after.map(|c| Cursor::decode(&c.encode()).unwrap());
        let mut r = base.clone();
        r.after = after_rt;
        let per_shard = shards.iter().map(|s| s.search(&r).unwrap()).collect();
        let (hits, total, next) = merge(per_shard, r.sort, r.limit, r.after.as_ref());
        assert!(hits.len() <= r.limit);
        if let Some(t) = total_seen {
            assert_eq!(t, total, "total ignores the cursor");
        }
        total_seen = Some(total);
        pages += 1;
        all.extend(hits);
        match next {
            Some(c) => after = Some(c),
            None => break,
        }
        assert!(pages < 1000, "paging does not terminate");
    }
    (all, total_seen.unwrap_or(0), pages)
}

fn assert_each_once(hits: &[Hit], total: u64) {
    let keys: BTreeSet<_> = hits.iter().map(|h| h.key).collect();
    assert_eq!(keys.len(), hits.len(), "a hit was returned twice");
    assert_eq!(hits.len() as u64, total, "a hit was missed");
}

#[test]
fn cursor_paging_returns_every_hit_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let ix = many(dir.path(), 0, 500);
    for sort in [Sort::TimeDesc, Sort::TimeAsc, Sort::Score] {
        let mut base = req("event");
        base.sort = sort;
        base.limit = 37;
        base.levels = vec![Level::Error];
        let (hits, total, pages) = page_through(&[&ix], &base);
        assert_eq!(total, 167);
        assert_each_once(&hits, total);
        assert!(pages >= 5);
        let keys: Vec<_> = hits.iter().map(|h| h.key).collect();
        match sort {
            Sort::TimeDesc => assert!(keys.windows(2).all(|w| w[0] > w[1])),
            Sort::TimeAsc => assert!(keys.windows(2).all(|w| w[0] < w[1])),
            Sort::Score => {}
        }
    }
}

#[test]
fn merge_of_several_shards_pages_through_all_of_them() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let shards: Vec<ShardIndex> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| many(d.path(), i as u32, 200 + 50 * i))
        .collect();
    let refs: Vec<&ShardIndex> = shards.iter().collect();
    for sort in [Sort::TimeDesc, Sort::TimeAsc, Sort::Score] {
        let mut base = req("number");
        base.sort = sort;
        base.limit = 64;
        base.start_ns = T0 + HOUR;
        base.end_ns = T0 + 4 * HOUR;
        let (hits, total, _) = page_through(&refs, &base);
        assert!(total > 300, "{total}");
        assert_each_once(&hits, total);
        let per_shard: HashMap<u32, usize> = hits.iter().fold(HashMap::new(), |mut m, h| {
            *m.entry(h.key.shard).or_default() += 1;
            m
        });
        assert_eq!(per_shard.len(), 3);
        assert!(hits
            .iter()
            .all(|h| h.key.timestamp_ns >= base.start_ns && h.key.timestamp_ns < base.end_ns));
    }
}

#[test]
fn a_cursor_of_another_sort_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let ix = corpus(dir.path());
    let mut r = req("");
    r.after = Some(Cursor::offset(2));
    let e = ix.search(&r).unwrap_err();
    assert!(matches!(e, Error::BadCursor(_)), "{e}");
    assert!(e.is_client_error());
}

#[test]
fn checkpoint_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ix = corpus(dir.path());
        assert_eq!(ix.checkpoint(), 4);
        // Added but not committed: not durable.
        ix.add_batch(5, &batch("acme", vec![rec(T0, Level::Info, "a", "lost")]))
            .unwrap();
    }
    let ix = open(dir.path(), 0);
    assert_eq!(ix.checkpoint(), 4);
    assert_eq!(ix.doc_count(), 7);
    assert!(search(&ix, "lost").is_empty());
    // The indexer replays from checkpoint + 1.
    ix.add_batch(5, &batch("acme", vec![rec(T0, Level::Info, "a", "lost")]))
        .unwrap();
    ix.commit().unwrap();
    assert_eq!(search(&ix, "lost"), ["lost"]);
}

#[test]
fn replay_after_a_crash_between_partition_commits_adds_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let opts = IndexOptions {
        max_open_writers: 1,
        writer_memory_bytes: 15_000_000,
        ..IndexOptions::default()
    };
    // Entry i has records in hour 0 and hour 1. With one writer open, every switch of
    // partition commits the other: partitions get committed past the shard checkpoint.
    let entry = |i: u64| {
        batch(
            "acme",
            vec![
                rec(T0 + i as i64, Level::Info, "a", &format!("early {i}")),
                rec(T0 + HOUR + i as i64, Level::Info, "a", &format!("late {i}")),
            ],
        )
    };
    {
        let ix = ShardIndex::open(dir.path(), ShardId(0), opts.clone()).unwrap();
        for i in 1..=3 {
            ix.add_batch(i, &entry(i)).unwrap();
        }
        ix.commit().unwrap();
        for i in 4..=6 {
            ix.add_batch(i, &entry(i)).unwrap();
        }
        // Crash: no commit. Some of 4..=6 were committed by writer eviction.
    }
    let ix = ShardIndex::open(dir.path(), ShardId(0), opts).unwrap();
    assert_eq!(ix.checkpoint(), 3);
    let partial = ix.doc_count();
    assert!(
        partial > 6,
        "eviction should have committed some: {partial}"
    );
    // Replay, including entries at or below the checkpoint.
    for i in 1..=6 {
        ix.add_batch(i, &entry(i)).unwrap();
    }
    ix.commit().unwrap();
    assert_eq!(ix.checkpoint(), 6);
    assert_eq!(ix.doc_count(), 12);
    let mut r = req("");
    r.limit = 100;
    let h = ix.search(&r).unwrap();
    let keys: BTreeSet<_> = h
        .hits
        .iter()
        .map(|h| (h.key.log_index, h.key.offset))
        .collect();
    assert_eq!(keys.len(), 12);
}

#[test]
fn out_of_order_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ix = open(dir.path(), 0);
    ix.add_batch(5, &batch("acme", vec![rec(T0, Level::Info, "a", "x")]))
        .unwrap();
    let e = ix
        .add_batch(5, &batch("acme", vec![rec(T0, Level::Info, "a", "x")]))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::OutOfOrder {
                log_index: 5,
                last: 5
            }
        ),
        "{e}"
    );
}

#[test]
fn a_directory_belongs_to_one_shard() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), 1));
    let e = ShardIndex::open(dir.path(), ShardId(2), IndexOptions::default())
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            Error::WrongShard {
                expected: 2,
                found: 1,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn a_corrupt_checkpoint_file_is_reported_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), 0));
    std::fs::write(dir.path().join("checkpoint.json"), b"{\"garbage").unwrap();
    let e = ShardIndex::open(dir.path(), ShardId(0), IndexOptions::default())
        .err()
        .unwrap();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
}

#[test]
fn retention_drops_whole_partitions_and_replay_does_not_revive_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ix = corpus(dir.path());
        // Cutoff inside hour 1: only hour 0 ends at or before it.
        assert_eq!(ix.drop_partitions_before(T0 + HOUR + 30).unwrap(), 1);
        assert_eq!(ix.partition_count(), 2);
        assert_eq!(ix.doc_count(), 4);
        assert!(search(&ix, "connection").is_empty());
        assert_eq!(ix.drop_partitions_before(T0 + HOUR + 30).unwrap(), 0);
        assert_eq!(
            ix.partition_ranges(),
            [(T0 + HOUR, T0 + 2 * HOUR), (T0 + 2 * HOUR, T0 + 3 * HOUR)]
        );
    }
    let ix = open(dir.path(), 0);
    assert_eq!(ix.partition_count(), 2);
    // A late record older than the cutoff is not indexed again.
    ix.add_batch(
        5,
        &batch("acme", vec![rec(T0 + 1, Level::Info, "a", "ancient")]),
    )
    .unwrap();
    ix.commit().unwrap();
    assert_eq!(ix.partition_count(), 2);
    assert!(search(&ix, "ancient").is_empty());
}

#[test]
fn label_names_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let ix = corpus(dir.path());
    assert_eq!(
        ix.label_names("acme", i64::MIN, i64::MAX).unwrap(),
        ["app", "cluster", "level", "namespace", "pod", "service"]
    );
    assert_eq!(
        ix.label_values("acme", "service", i64::MIN, i64::MAX)
            .unwrap(),
        ["api", "web", "worker"]
    );
    assert_eq!(
        ix.label_values("acme", "app", i64::MIN, i64::MAX).unwrap(),
        ["checkout", "storefront"]
    );
    assert_eq!(
        ix.label_values("acme", "level", i64::MIN, i64::MAX)
            .unwrap(),
        ["debug", "error", "info", "warn"]
    );
    // Partition granularity: hour 1 only.
    assert_eq!(
        ix.label_values("acme", "app", T0 + HOUR, T0 + HOUR + 1)
            .unwrap(),
        ["storefront"]
    );
    assert_eq!(
        ix.label_names("acme", T0 + 2 * HOUR, T0 + 3 * HOUR)
            .unwrap(),
        ["cluster", "level", "namespace", "pod", "service"]
    );
    // Attributes are not labels.
    assert!(ix
        .label_values("acme", "order_id", i64::MIN, i64::MAX)
        .unwrap()
        .is_empty());
    // A label name that is a prefix of another does not see its values.
    assert!(ix
        .label_values("acme", "ap", i64::MIN, i64::MAX)
        .unwrap()
        .is_empty());
}

#[test]
fn searches_run_while_the_indexer_writes() {
    let dir = tempfile::tempdir().unwrap();
    let ix = Arc::new(open(dir.path(), 0));
    let writer = {
        let ix = ix.clone();
        std::thread::spawn(move || {
            for i in 1..=40u64 {
                let records = (0..25)
                    .map(|j| rec(T0 + (i * 100 + j) as i64, Level::Info, "a", "tick"))
                    .collect();
                ix.add_batch(i, &batch("acme", records)).unwrap();
                if i % 5 == 0 {
                    ix.commit().unwrap();
                }
            }
        })
    };
    let mut last = 0;
    while !writer.is_finished() {
        let n = ix.search(&req("tick")).unwrap().total;
        assert!(n >= last, "searchable count went backwards");
        assert_eq!(n % 125, 0, "a commit was seen half-done: {n}");
        last = n;
    }
    writer.join().unwrap();
    assert_eq!(ix.search(&req("tick")).unwrap().total, 1000);
    assert_eq!(ix.checkpoint(), 40);
}

#[test]
fn a_limit_of_zero_counts_only() {
    let dir = tempfile::tempdir().unwrap();
    let ix = corpus(dir.path());
    let mut r = req("quick");
    r.limit = 0;
    let h = ix.search(&r).unwrap();
    assert_eq!((h.hits.len(), h.total), (0, 3));
    let (hits, total, next) = merge(vec![h], Sort::TimeDesc, 0, None);
    assert_eq!((hits.len(), total, next), (0, 3, None));
}

#[test]
fn an_exported_copy_installed_on_another_replica_holds_the_same_records_and_takes_more() {
    let leader_dir = tempfile::tempdir().unwrap();
    let leader = many(leader_dir.path(), 0, 500);
    // Added and not committed: export commits it first, so the copy holds it.
    let last = (500_u64).div_ceil(37) + 1;
    leader
        .add_batch(
            last,
            &batch("acme", vec![rec(T0, Level::Info, "a", "late")]),
        )
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let package = out.path().join("index");
    let checkpoint = leader.export(&package).unwrap();
    assert_eq!(
        checkpoint, last,
        "the export's checkpoint covers what was added"
    );
    assert!(
        leader.export(&package).is_err(),
        "exporting over an existing directory is refused"
    );
    // The leader keeps indexing after the export (its writers reopen).
    leader
        .add_batch(
            last + 1,
            &batch("acme", vec![rec(T0, Level::Info, "a", "after")]),
        )
        .unwrap();
    leader.commit().unwrap();

    // A replica that had indexed something else (it was behind, then wiped) installs it.
    let replica_dir = tempfile::tempdir().unwrap();
    let replica = open(replica_dir.path(), 0);
    replica
        .add_batch(1, &batch("acme", vec![rec(T0, Level::Info, "a", "stale")]))
        .unwrap();
    assert_eq!(replica.install(&package).unwrap(), last);
    assert!(!package.exists(), "the copy was moved into place");
    assert_eq!(replica.checkpoint(), last);
    assert_eq!(replica.doc_count(), 501);
    assert_eq!(search(&replica, "late"), ["late"]);
    assert!(
        search(&replica, "stale").is_empty(),
        "pending writes were dropped"
    );
    assert!(search(&replica, "after").is_empty());
    // Entries up to the checkpoint are skipped; the next one is indexed.
    replica
        .add_batch(
            last,
            &batch("acme", vec![rec(T0, Level::Info, "a", "late")]),
        )
        .unwrap();
    replica
        .add_batch(
            last + 1,
            &batch("acme", vec![rec(T0, Level::Info, "a", "after")]),
        )
        .unwrap();
    replica.commit().unwrap();
    assert_eq!(search(&replica, "late"), ["late"]);
    assert_eq!(search(&replica, "after"), ["after"]);
    drop(replica);
    // And it survives a restart.
    let reopened = open(replica_dir.path(), 0);
    assert_eq!(reopened.checkpoint(), last + 1);
    assert_eq!(reopened.doc_count(), 502);
}

#[test]
fn a_published_copy_holds_the_last_commit_while_merges_run_and_an_idle_replica_takes_it() {
    const ENTRIES: u64 = 24;
    let leader_dir = tempfile::tempdir().unwrap();
    // Merges as soon as two segments of a size exist, so they run during the publishing.
    let opts = || IndexOptions {
        merge_fan_in: 2,
        ..Default::default()
    };
    let leader = ShardIndex::open(leader_dir.path(), ShardId(0), opts()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut published = Vec::new();
    // Each entry spreads over seven hourly partitions, more than the writers kept open:
    // adding one commits evicted partitions past the checkpoint, as on a real node.
    let entry_batch = |entry: u64| {
        let records = (0..25)
            .map(|i| {
                let n = entry * 25 + i;
                rec(
                    T0 + (n as i64 % 7) * HOUR,
                    Level::Info,
                    "svc",
                    &format!("tick {n}"),
                )
            })
            .collect();
        batch("acme", records)
    };
    let mut past_checkpoint = false;
    for entry in 1..=ENTRIES {
        leader.add_batch(entry, &entry_batch(entry)).unwrap();
        if entry % 2 == 0 {
            leader.commit().unwrap();
        }
        // Taken after every entry: the odd ones have one entry added and not committed.
        let dest = out.path().join(format!("copy-{entry}"));
        let checkpoint = leader.publish(&dest).unwrap();
        assert_eq!(
            checkpoint,
            entry - entry % 2,
            "a copy holds the last commit, not what was added since"
        );
        let furthest = ShardIndex::furthest_entry_of_copy(&dest).unwrap();
        assert!(
            (checkpoint..=entry).contains(&furthest),
            "copy at {checkpoint} after entry {entry}: partitions hold records up to {furthest}"
        );
        past_checkpoint |= furthest > checkpoint;
        published.push((dest, checkpoint));
    }
    assert!(
        past_checkpoint,
        "some copy has a partition past its checkpoint (an evicted writer's commit)"
    );
    assert!(
        leader.publish(&published[0].0).is_err(),
        "publishing over an existing directory is refused"
    );
    // Every copy opens as an index of its own, holds every record up to its checkpoint,
    // and replaying the log after it (as the replica's indexer would) gives every record
    // once.
    // (Some of them: each replay is slow. The eleventh and the last stay as published,
    // for the replicas below.)
    for n in [0, 1, 6, 13, 20] {
        let (dest, checkpoint) = &published[n];
        let copy = ShardIndex::open(dest, ShardId(0), IndexOptions::default()).unwrap();
        assert_eq!(copy.checkpoint(), *checkpoint);
        assert!(copy.doc_count() >= checkpoint * 25, "copy at {checkpoint}");
        for entry in checkpoint + 1..=ENTRIES {
            copy.add_batch(entry, &entry_batch(entry)).unwrap();
        }
        copy.commit().unwrap();
        assert_eq!(
            copy.doc_count(),
            ENTRIES * 25,
            "copy at {checkpoint}, replayed"
        );
        copy.close().unwrap();
    }

    // A replica that is writing (added, not committed) keeps its index.
    let busy_dir = tempfile::tempdir().unwrap();
    let busy = open(busy_dir.path(), 0);
    busy.add_batch(
        1,
        &batch("acme", vec![rec(T0, Level::Info, "svc", "tick 25")]),
    )
    .unwrap();
    let (newest, newest_ckpt) = published.last().unwrap().clone();
    assert_eq!(busy.install_if_idle(&newest).unwrap(), None);
    assert!(newest.exists(), "a refused copy is left where it is");
    busy.commit().unwrap();
    assert_eq!(busy.doc_count(), 1);

    // An idle replica takes it, and a copy behind it is refused the same way.
    let replica_dir = tempfile::tempdir().unwrap();
    let replica = ShardIndex::open(replica_dir.path(), ShardId(0), opts()).unwrap();
    assert_eq!(replica.install_if_idle(&newest).unwrap(), Some(newest_ckpt));
    assert_eq!(replica.doc_count(), newest_ckpt * 25);
    assert_eq!(search(&replica, "600").len(), 1);
    let (older, _) = published[10].clone();
    assert_eq!(replica.install_if_idle(&older).unwrap(), None);
    assert_eq!(replica.checkpoint(), newest_ckpt);

    // A later copy in which one partition changed: the others stay open as they were,
    // the changed one shows the new records.
    let later = ENTRIES + 1;
    leader
        .add_batch(
            later,
            &batch("acme", vec![rec(T0, Level::Info, "svc", "tick later")]),
        )
        .unwrap();
    leader.commit().unwrap();
    let copy = out.path().join("later");
    assert_eq!(leader.publish(&copy).unwrap(), later);
    assert_eq!(replica.install_if_idle(&copy).unwrap(), Some(later));
    assert_eq!(replica.doc_count(), ENTRIES * 25 + 1);
    assert_eq!(search(&replica, "later"), ["tick later"]);
    assert_eq!(search(&replica, "600").len(), 1);
    let newest_ckpt = later;

    // It then indexes the tail itself (it became leader), and merges collect the copied
    // segments too: the copy's `.managed.json` lists them.
    for entry in newest_ckpt + 1..newest_ckpt + 13 {
        let records = (0..25)
            .map(|i| rec(T0 + (i % 7) * HOUR, Level::Info, "svc", "later"))
            .collect();
        replica.add_batch(entry, &batch("acme", records)).unwrap();
        replica.commit().unwrap();
    }
    replica.close().unwrap();
    assert_eq!(replica.doc_count(), (newest_ckpt + 11) * 25 + 1);
    for part in std::fs::read_dir(replica_dir.path()).unwrap() {
        let part = part.unwrap().path();
        if !part.is_dir() {
            continue;
        }
        let meta = std::fs::read_to_string(part.join("meta.json")).unwrap();
        for f in std::fs::read_dir(&part).unwrap() {
            let name = f.unwrap().file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".idx") {
                let hyphenated = format!(
                    "{}-{}-{}-{}-{}",
                    &id[..8],
                    &id[8..12],
                    &id[12..16],
                    &id[16..20],
                    &id[20..]
                );
                assert!(
                    meta.contains(&hyphenated),
                    "{} holds segment {id}, merged away and not collected",
                    part.display()
                );
            }
        }
    }
}

#[test]
fn a_copy_of_another_shard_or_no_index_is_refused_and_the_index_stays() {
    let dir = tempfile::tempdir().unwrap();
    let other = many(dir.path(), 1, 40);
    let out = tempfile::tempdir().unwrap();
    other.export(&out.path().join("index")).unwrap();
    let mine_dir = tempfile::tempdir().unwrap();
    let mine = many(mine_dir.path(), 0, 40);
    assert!(matches!(
        mine.install(&out.path().join("index")),
        Err(Error::WrongShard { .. })
    ));
    std::fs::create_dir(out.path().join("empty")).unwrap();
    assert!(matches!(
        mine.install(&out.path().join("empty")),
        Err(Error::Corrupt { .. })
    ));
    assert_eq!(mine.doc_count(), 40, "the index is unchanged");
    assert_eq!(search(&mine, "number").len(), 40);
}

#[test]
fn a_crash_in_the_middle_of_an_install_brings_the_old_index_back() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("index");
    drop(many(&dir, 0, 40));
    // `install` set the old index aside and crashed before the copy took its place.
    std::fs::rename(&dir, root.path().join("index.old")).unwrap();
    let ix = open(&dir, 0);
    assert_eq!(ix.doc_count(), 40);
}

/// Every file in `dir` (recursively) with its length, but lock files.
fn tree(dir: &Path) -> BTreeSet<(String, u64)> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            out.extend(tree(&p));
        } else if !p.to_string_lossy().ends_with(".lock") {
            out.insert((p.display().to_string(), e.metadata().unwrap().len()));
        }
    }
    out
}

#[test]
fn a_closed_index_leaves_its_directory_alone_and_refuses_writes_but_still_answers() {
    // Seven commits make seven segments; the commit close makes is the eighth, which
    // starts a merge (tantivy's default policy merges eight segments of a level). A merge
    // finishing after close returned would rewrite meta.json and delete files in a
    // directory that another process, or a snapshot's copy, may own by then.
    let dir = tempfile::tempdir().unwrap();
    let ix = open(dir.path(), 0);
    let lines = |i: u64| {
        (0..3000)
            .map(|j| {
                rec(
                    T0 + (i * 10_000 + j) as i64,
                    Level::Info,
                    "svc",
                    &format!("line {i} {j}"),
                )
            })
            .collect()
    };
    for i in 1..=7_u64 {
        ix.add_batch(i, &batch("acme", lines(i))).unwrap();
        ix.commit().unwrap();
    }
    ix.add_batch(8, &batch("acme", lines(8))).unwrap();
    ix.add_batch(
        41,
        &batch("acme", vec![rec(T0, Level::Info, "svc", "last one")]),
    )
    .unwrap();
    ix.close().unwrap();
    assert_eq!(ix.checkpoint(), 41, "close commits what was added");
    let after_close = tree(dir.path());
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        tree(dir.path()),
        after_close,
        "nothing of the index changed its directory after close returned"
    );
    assert!(matches!(
        ix.add_batch(
            42,
            &batch("acme", vec![rec(T0, Level::Info, "svc", "too late")])
        ),
        Err(Error::Closed { .. })
    ));
    assert!(matches!(ix.commit(), Err(Error::Closed { .. })));
    assert_eq!(search(&ix, "last"), ["last one"]);
    ix.close().unwrap();
    drop(ix);
    // Reopened, it holds all of it.
    let ix = open(dir.path(), 0);
    assert_eq!((ix.checkpoint(), ix.doc_count()), (41, 8 * 3000 + 1));
}

#[test]
fn a_word_between_stars_finds_body_words_containing_it_even_words_too_long_to_index() {
    let dir = tempfile::tempdir().unwrap();
    let long = format!("sha{}Declined{}", "a".repeat(30), "b".repeat(10));
    assert!(long.len() >= 40, "a word the index drops");
    let bodies = [
        "payment declined by bank",
        "undeclinedCharge posted",
        long.as_str(),
        "payment accepted",
        &format!("{} accepted", "c".repeat(45)),
    ];
    let fill = |ix: &ShardIndex| {
        let records = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| rec(T0 + i as i64, Level::Info, "pay", b))
            .collect();
        ix.add_batch(1, &batch("acme", records)).unwrap();
        ix.commit().unwrap();
    };
    let ix = open(dir.path(), 0);
    fill(&ix);
    // Every body with a word containing the fragment, and every body with a word too
    // long to index (which might hold it: the index cannot tell).
    let mut with_long_words = [long.as_str(), bodies[4]];
    with_long_words.sort();
    let mut found = search(&ix, "*declin*");
    found.sort();
    let mut want = vec![bodies[0], bodies[1], long.as_str(), bodies[4]];
    want.sort();
    assert_eq!(found, want);
    let mut found = search(&ix, "*zzz*");
    found.sort();
    assert_eq!(found, with_long_words);
    assert_eq!(
        search(&ix, "*accep*").len(),
        3,
        "the two accepted payments and the other long word"
    );
    drop(ix);

    // A partition written before documents were marked narrows nothing: the search then
    // finds every record, which is more than asked, never less (the LogQL engine that
    // uses this as a pre-filter checks every line).
    let old = tempfile::tempdir().unwrap();
    let ix = open(old.path(), 0);
    fill(&ix);
    drop(ix);
    let mut unmarked = 0;
    for part in std::fs::read_dir(old.path()).unwrap() {
        let marker = part.unwrap().path().join("weir-long-tokens-marked");
        if marker.exists() {
            std::fs::remove_file(marker).unwrap();
            unmarked += 1;
        }
    }
    assert_eq!(unmarked, 1, "one partition");
    let ix = open(old.path(), 0);
    assert_eq!(
        ix.search(&req("*declin*")).unwrap().total,
        bodies.len() as u64
    );
}

/// A time-sorted search visits segments from the newest record (oldest, ascending) and
/// only counts those holding nothing that could enter the page: its page and total must
/// equal the first hits of a search that ranks every match.
#[test]
fn a_time_sorted_page_over_many_segments_equals_ranking_every_match() {
    let dir = tempfile::tempdir().unwrap();
    let ix = open(dir.path(), 0);
    // Six commits (six segments) over three hourly partitions: two by two their times
    // interleave, and the pairs follow each other (so whole segments can be only counted).
    for seg in 0..6i64 {
        let records = (0..50i64)
            .map(|j| {
                let ts = T0
                    + (seg / 2) * 2_500_000_000_000
                    + ((seg * 37 + j * 101) % 150) * 15_000_000_000;
                let level = if j % 2 == 0 {
                    Level::Error
                } else {
                    Level::Info
                };
                rec(ts, level, "svc", &format!("seg {seg} rec {j}"))
            })
            .collect();
        ix.add_batch(seg as u64 + 1, &batch("acme", records))
            .unwrap();
        ix.commit().unwrap();
    }
    for sort in [Sort::TimeDesc, Sort::TimeAsc] {
        for levels in [vec![], vec![Level::Error]] {
            let mut every = req("seg");
            every.sort = sort;
            every.levels = levels.clone();
            every.limit = 10_000;
            let every = ix.search(&every).unwrap();
            assert_eq!(
                every.total,
                if levels.is_empty() { 300 } else { 150 },
                "{sort:?}"
            );
            for limit in [1, 7, 60, 299] {
                let mut r = req("seg");
                r.sort = sort;
                r.levels = levels.clone();
                r.limit = limit;
                let page = ix.search(&r).unwrap();
                assert_eq!(page.total, every.total, "{sort:?} limit {limit}");
                let got: Vec<_> = page.hits.iter().map(|h| h.key).collect();
                let want: Vec<_> = every.hits.iter().take(limit).map(|h| h.key).collect();
                assert_eq!(got, want, "{sort:?} limit {limit} levels {levels:?}");
            }
        }
    }
}

/// Warming copies each segment's body words once, and never past nine tenths of the
/// cache's budget: a cache too small is left to the lookups themselves.
#[test]
fn warming_copies_each_new_segment_once_and_stays_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let ix = open(dir.path(), 0);
    for k in 0..3 {
        let records = (0..20)
            .map(|i| {
                rec(
                    T0 + i,
                    Level::Info,
                    "svc",
                    &format!("order {k}x{i} declined"),
                )
            })
            .collect();
        ix.add_batch(k + 1, &batch("acme", records)).unwrap();
        ix.commit().unwrap();
    }
    assert_eq!(ix.warm_infix().unwrap(), 3, "three segments, each copied");
    assert_eq!(ix.warm_infix().unwrap(), 0, "nothing new");
    let found = ix.search(&req("*eclin*")).unwrap().total;
    assert_eq!(found, 60);
    drop(ix);

    let opts = IndexOptions {
        infix_cache: Arc::new(weir_index::InfixCache::new(64)),
        ..IndexOptions::default()
    };
    let ix = ShardIndex::open(dir.path(), ShardId(0), opts).unwrap();
    assert_eq!(ix.warm_infix().unwrap(), 0, "a 64-byte cache holds none");
    assert_eq!(
        ix.search(&req("*eclin*")).unwrap().total,
        60,
        "lookups still work"
    );
}

/// A partition written before the standard fields were indexed only as labels, with
/// field norms on every exact field, a `label_names` term per label and terms for the
/// timestamp and log index, built here with
/// tantivy exactly as that schema and document layout were: it must open, and every query
/// kind that reads those fields (`service:`, `level:`, the level filter, label names and
/// values) must answer from it as from a partition written now.
#[test]
fn a_partition_written_with_the_earlier_layout_opens_and_answers_the_same() {
    use prost::Message;
    use tantivy::schema::{BytesOptions, NumericOptions, Schema, FAST, STORED, STRING, TEXT};

    let dir = tempfile::tempdir().unwrap();
    let old_dir = dir.path().join("old");
    let new_dir = dir.path().join("new");
    let records = vec![
        rec(T0 + 10, Level::Error, "api", "connection reset by peer"),
        rec(T0 + 20, Level::Info, "web", "request completed"),
        {
            let mut r = rec(T0 + 30, Level::Warn, "api", "slow query detected");
            r.labels.insert("app".into(), "checkout".into());
            r
        },
    ];

    // The earlier layout, field for field.
    std::fs::create_dir_all(&old_dir).unwrap();
    open(&old_dir, 0).close().unwrap();
    let part = old_dir.join(format!("part_{}_3600", T0 / 1_000_000_000));
    std::fs::create_dir(&part).unwrap();
    let mut b = Schema::builder();
    // The timestamp and log index had terms too.
    let num = NumericOptions::default().set_indexed().set_fast();
    let timestamp = b.add_i64_field("timestamp_ns", num.clone());
    let level = b.add_text_field("level", STRING);
    let tenant = b.add_text_field("tenant", STRING);
    let service = b.add_text_field("service", STRING);
    let namespace = b.add_text_field("namespace", STRING);
    let pod = b.add_text_field("pod", STRING);
    let cluster = b.add_text_field("cluster", STRING);
    b.add_text_field("trace_id", STRING);
    b.add_text_field("span_id", STRING);
    let labels = b.add_text_field("labels", STRING);
    let label_names = b.add_text_field("label_names", STRING);
    b.add_text_field("attrs", STRING);
    let body = b.add_text_field("body", TEXT);
    let log_index = b.add_u64_field("log_index", num);
    let offset = b.add_u64_field("offset", FAST);
    let stored = b.add_bytes_field("record", BytesOptions::from(STORED));
    let index = tantivy::Index::create_in_dir(&part, b.build()).unwrap();
    let mut w: tantivy::IndexWriter<tantivy::TantivyDocument> =
        index.writer_with_num_threads(1, 15_000_000).unwrap();
    for (i, r) in records.iter().enumerate() {
        let mut d = tantivy::TantivyDocument::new();
        d.add_i64(timestamp, r.timestamp_ns);
        d.add_text(tenant, "acme");
        let lvl = Level::from_u32(r.level).unwrap().as_str();
        for (name, field, value) in [
            ("service", service, r.service.as_str()),
            ("namespace", namespace, r.namespace.as_str()),
            ("pod", pod, r.pod.as_str()),
            ("cluster", cluster, r.cluster.as_str()),
            ("level", level, lvl),
        ] {
            d.add_text(field, value);
            d.add_text(labels, format!("acme\0{name}\0{value}"));
            d.add_text(label_names, format!("acme\0{name}"));
        }
        for (k, v) in &r.labels {
            d.add_text(labels, format!("acme\0{k}\0{v}"));
            d.add_text(label_names, format!("acme\0{k}"));
        }
        d.add_text(body, &r.body);
        d.add_u64(log_index, 1);
        d.add_u64(offset, i as u64);
        d.add_bytes(stored, &r.encode_to_vec());
        w.add_document(d).unwrap();
    }
    let mut prepared = w.prepare_commit().unwrap();
    prepared.set_payload("1");
    prepared.commit().unwrap();
    drop(w);
    // The shard's checkpoint covers entry 1, as the commit that wrote the partition did.
    let ckpt = old_dir.join("checkpoint.json");
    let text = std::fs::read_to_string(&ckpt).unwrap();
    assert!(text.contains(r#""checkpoint":0"#), "{text}");
    std::fs::write(
        &ckpt,
        text.replace(r#""checkpoint":0"#, r#""checkpoint":1"#),
    )
    .unwrap();

    let new = open(&new_dir, 0);
    new.add_batch(1, &batch("acme", records)).unwrap();
    new.commit().unwrap();
    let old = open(&old_dir, 0);

    for ix in [&old, &new] {
        assert_eq!(search(ix, "service:api").len(), 2);
        assert_eq!(search(ix, "service:we*"), ["request completed"]);
        assert_eq!(search(ix, "level:warn"), ["slow query detected"]);
        assert_eq!(search(ix, "app:checkout"), ["slow query detected"]);
        let mut r = req("");
        r.levels = vec![Level::Error, Level::Warn];
        assert_eq!(ix.search(&r).unwrap().total, 2);
        let mut r = req("");
        (r.start_ns, r.end_ns) = (T0 + 15, T0 + 30);
        assert_eq!(bodies(&ix.search(&r).unwrap()), ["request completed"]);
        assert_eq!(
            ix.label_names("acme", i64::MIN, i64::MAX).unwrap(),
            ["app", "cluster", "level", "namespace", "pod", "service"]
        );
        assert_eq!(
            ix.label_values("acme", "service", i64::MIN, i64::MAX)
                .unwrap(),
            ["api", "web"]
        );
        assert!(ix
            .label_names("other", i64::MIN, i64::MAX)
            .unwrap()
            .is_empty());
    }
    // The old partition takes new records, in the new layout, beside its old ones.
    old.add_batch(
        2,
        &batch(
            "acme",
            vec![rec(T0 + 40, Level::Warn, "db", "vacuum started")],
        ),
    )
    .unwrap();
    old.commit().unwrap();
    assert_eq!(search(&old, "level:warn").len(), 2);
    assert_eq!(search(&old, "service:db"), ["vacuum started"]);
    assert_eq!(
        old.label_values("acme", "service", i64::MIN, i64::MAX)
            .unwrap(),
        ["api", "db", "web"]
    );
}

/// Label names are read off the label terms, skipping past each name's values: a name
/// that another name starts with, and one with many values, must neither hide nor repeat
/// a name, nor show one of another tenant.
#[test]
fn label_names_skip_each_names_values_and_miss_none() {
    let dir = tempfile::tempdir().unwrap();
    let ix = open(dir.path(), 0);
    let mut records = Vec::new();
    for (i, (k, v)) in [
        ("app", "a"),
        ("app", "b"),
        ("app_tier", "x"),
        ("appz", "y"),
        ("b", "1"),
    ]
    .into_iter()
    .chain((0..50).map(|i| ("many", if i % 2 == 0 { "even" } else { "odd" })))
    .enumerate()
    {
        let mut r = rec(T0 + i as i64, Level::Info, "", "x");
        (r.namespace, r.pod, r.cluster) = (String::new(), String::new(), String::new());
        r.labels.insert(k.into(), format!("{v}{i}"));
        records.push(r);
    }
    ix.add_batch(1, &batch("acme", records)).unwrap();
    ix.add_batch(2, &batch("other", vec![rec(T0, Level::Info, "api", "y")]))
        .unwrap();
    ix.commit().unwrap();
    assert_eq!(
        ix.label_names("acme", i64::MIN, i64::MAX).unwrap(),
        ["app", "app_tier", "appz", "b", "level", "many"]
    );
    assert_eq!(
        ix.label_values("acme", "many", i64::MIN, i64::MAX)
            .unwrap()
            .len(),
        50
    );
}
