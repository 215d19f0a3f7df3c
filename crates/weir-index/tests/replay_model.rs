//! Model-based property test of crash recovery: random entries spread over partitions,
//! random commits and crashes (dropping the index without committing), the indexer
//! replaying from `checkpoint() + 1` after each crash. At the end the index must hold
//! every record exactly once.

use std::collections::BTreeSet;

use proptest::prelude::*;
use weir_index::{parse_query, IndexOptions, SearchRequest, ShardIndex, Sort};
use weir_proto::v1::{StoredBatch, StoredRecord};
use weir_proto::ShardId;

const HOUR: i64 = 3_600_000_000_000;

#[derive(Clone, Debug)]
enum Step {
    Add,
    Commit,
    Crash,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![6 => Just(Step::Add), 2 => Just(Step::Commit), 1 => Just(Step::Crash)]
}

/// Entry `i`'s records: their hours (partitions).
fn entries() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(0u8..4, 1..5), 1..14)
}

fn batch(hours: &[u8], li: u64) -> StoredBatch {
    StoredBatch {
        tenant: "t".into(),
        records: hours
            .iter()
            .enumerate()
            .map(|(off, h)| StoredRecord {
                timestamp_ns: i64::from(*h) * HOUR + li as i64 * 1000 + off as i64,
                level: 3,
                body: format!("entry {li} record {off}"),
                ..Default::default()
            })
            .collect(),
        received_ns: 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn crashes_and_replays_keep_every_record_exactly_once(
        entries in entries(),
        steps in prop::collection::vec(step(), 0..40),
        max_open_writers in 1usize..3,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let opts = IndexOptions {
            max_open_writers,
            writer_memory_bytes: 15_000_000,
            ..IndexOptions::default()
        };
        let open = || ShardIndex::open(dir.path(), ShardId(0), opts.clone()).unwrap();
        let mut ix = open();
        let mut next = 1u64;
        let mut durable = 0u64;
        let n = entries.len() as u64;
        for s in steps {
            match s {
                Step::Add if next <= n => {
                    ix.add_batch(next, &batch(&entries[next as usize - 1], next)).unwrap();
                    next += 1;
                }
                Step::Add => {}
                Step::Commit => {
                    ix.commit().unwrap();
                    durable = next - 1;
                    prop_assert_eq!(ix.checkpoint(), durable);
                }
                Step::Crash => {
                    drop(ix);
                    ix = open();
                    prop_assert_eq!(ix.checkpoint(), durable, "checkpoint lost or ahead");
                    // Replay a little before the checkpoint too: it must be a no-op.
                    for li in durable.saturating_sub(2).max(1)..=durable {
                        ix.add_batch(li, &batch(&entries[li as usize - 1], li)).unwrap();
                    }
                    next = durable + 1;
                }
            }
        }
        while next <= n {
            ix.add_batch(next, &batch(&entries[next as usize - 1], next)).unwrap();
            next += 1;
        }
        ix.commit().unwrap();
        let want: usize = entries.iter().map(Vec::len).sum();
        let hits = ix
            .search(&SearchRequest {
                query: parse_query("").unwrap(),
                tenant: "t".into(),
                start_ns: i64::MIN,
                end_ns: i64::MAX,
                levels: vec![],
                limit: 1000,
                sort: Sort::TimeAsc,
                after: None,
                prefilter: false,
            })
            .unwrap();
        let keys: BTreeSet<(u64, u32)> =
            hits.hits.iter().map(|h| (h.key.log_index, h.key.offset)).collect();
        prop_assert_eq!(hits.total as usize, want, "duplicates or losses");
        prop_assert_eq!(keys.len(), want);
        prop_assert_eq!(ix.doc_count() as usize, want);
    }
}
