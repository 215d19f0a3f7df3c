//! The collector behind every search: counts all matches, keeps the best `n` by the
//! request's order (time key or score), and only considers hits after the cursor.
//!
//! tantivy's `TopDocs` orders by one fast field; Weir's time order needs the full
//! (timestamp, shard, log index, offset) key to page without gaps or repeats, so this
//! collector reads the three fast columns itself.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::{DocAddress, DocId, Score, SegmentOrdinal, SegmentReader};

use crate::page::{compare, Cursor, HitKey, Sort};
use crate::schema::{F_LOG_INDEX, F_OFFSET, F_TIMESTAMP};

/// A hit before its stored record is fetched.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub key: HitKey,
    pub score: f32,
    pub doc: DocAddress,
    /// Which of the searched partitions it came from (set by the shard search).
    pub part: usize,
}

/// What one collection yields: the match count and the best candidates, best first.
pub(crate) struct Collected {
    pub total: u64,
    pub top: Vec<Candidate>,
}

pub(crate) struct TopCollector {
    pub sort: Sort,
    /// How many candidates to keep.
    pub n: usize,
    pub after: Option<Cursor>,
    pub shard: u32,
}

/// A heap entry ordered so that the heap's maximum is the worst candidate kept.
struct Ranked {
    sort: Sort,
    c: Candidate,
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(
            self.sort,
            &self.c.key,
            self.c.score,
            &other.c.key,
            other.c.score,
        )
    }
}

/// Keeps the best `n` candidates seen.
pub(crate) struct TopN {
    sort: Sort,
    n: usize,
    heap: BinaryHeap<Ranked>,
}

impl TopN {
    pub fn new(sort: Sort, n: usize) -> TopN {
        TopN {
            sort,
            n,
            heap: BinaryHeap::with_capacity(n.min(1024) + 1),
        }
    }

    pub fn push(&mut self, c: Candidate) {
        if self.n == 0 {
            return;
        }
        let r = Ranked { sort: self.sort, c };
        if self.heap.len() < self.n {
            self.heap.push(r);
        } else if let Some(mut worst) = self.heap.peek_mut() {
            if r < *worst {
                *worst = r;
            }
        }
    }

    /// Whether, with a time sort, no candidate with this timestamp can enter any more
    /// (the heap is full of strictly better ones); saves reading the other columns.
    #[inline]
    pub fn cannot_take_timestamp(&self, ts: i64) -> bool {
        if self.heap.len() < self.n {
            return false;
        }
        match (self.sort, self.heap.peek()) {
            (Sort::TimeDesc, Some(worst)) => ts < worst.c.key.timestamp_ns,
            (Sort::TimeAsc, Some(worst)) => ts > worst.c.key.timestamp_ns,
            _ => false,
        }
    }

    /// Best first.
    pub fn into_sorted(self) -> Vec<Candidate> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|r| r.c)
            .collect()
    }
}

pub(crate) struct TopSegmentCollector {
    segment: SegmentOrdinal,
    shard: u32,
    after: Option<Cursor>,
    timestamp: Column<i64>,
    log_index: Column<u64>,
    offset: Column<u64>,
    total: u64,
    top: TopN,
}

impl Collector for TopCollector {
    type Fruit = Collected;
    type Child = TopSegmentCollector;

    fn for_segment(
        &self,
        segment_local_id: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<TopSegmentCollector> {
        let ff = segment.fast_fields();
        Ok(TopSegmentCollector {
            segment: segment_local_id,
            shard: self.shard,
            after: self.after,
            timestamp: ff.i64(F_TIMESTAMP)?,
            log_index: ff.u64(F_LOG_INDEX)?,
            offset: ff.u64(F_OFFSET)?,
            total: 0,
            top: TopN::new(self.sort, self.n),
        })
    }

    fn requires_scoring(&self) -> bool {
        self.sort == Sort::Score
    }

    fn merge_fruits(&self, fruits: Vec<Collected>) -> tantivy::Result<Collected> {
        let mut top = TopN::new(self.sort, self.n);
        let mut total = 0;
        for f in fruits {
            total += f.total;
            for c in f.top {
                top.push(c);
            }
        }
        Ok(Collected {
            total,
            top: top.into_sorted(),
        })
    }
}

impl SegmentCollector for TopSegmentCollector {
    type Fruit = Collected;

    fn collect(&mut self, doc: DocId, score: Score) {
        self.total += 1;
        if self.top.n == 0 {
            return;
        }
        // Every document has all three columns (see `Fields::document`).
        let timestamp_ns = self.timestamp.first(doc).unwrap_or(i64::MIN);
        if self.top.cannot_take_timestamp(timestamp_ns) {
            return;
        }
        let key = HitKey {
            timestamp_ns,
            shard: self.shard,
            log_index: self.log_index.first(doc).unwrap_or(0),
            offset: self
                .offset
                .first(doc)
                .and_then(|o| u32::try_from(o).ok())
                .unwrap_or(0),
        };
        if let Some(c) = &self.after {
            if !c.admits(&key) {
                return;
            }
        }
        self.top.push(Candidate {
            key,
            score,
            doc: DocAddress::new(self.segment, doc),
            part: 0,
        });
    }

    fn harvest(self) -> Collected {
        Collected {
            total: self.total,
            top: self.top.into_sorted(),
        }
    }
}
