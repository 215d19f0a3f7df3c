//! Hits, sort orders, paging cursors, and merging per-shard pages.
//!
//! Paging:
//!
//! - **Time sorts** ([`Sort::TimeDesc`], [`Sort::TimeAsc`]) page by key: the cursor holds the
//!   [`HitKey`] of the last hit returned, and the next page holds the hits strictly after
//!   it. Keys are unique (shard, log index and batch offset name one record), so every hit
//!   is returned exactly once even when new records arrive between pages.
//! - **[`Sort::Score`]** pages by offset: the cursor holds how many hits were already
//!   returned; each shard returns its top `offset + limit` and [`merge`] skips `offset`.
//!   Scores depend on corpus statistics, which change as records arrive, so score paging
//!   is best effort; deep pages cost `offset + limit` per shard.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use weir_proto::v1::StoredRecord;

use crate::{Error, Result};

/// Result order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Sort {
    /// Newest first (the default).
    #[default]
    TimeDesc,
    /// Oldest first.
    TimeAsc,
    /// Best BM25 score first; ties newest first.
    Score,
}

impl Sort {
    /// The name accepted by [`Sort::from_str`] and printed by `Display`.
    pub fn as_str(self) -> &'static str {
        match self {
            Sort::TimeDesc => "time_desc",
            Sort::TimeAsc => "time_asc",
            Sort::Score => "score",
        }
    }

    fn tag(self) -> u8 {
        match self {
            Sort::TimeDesc => 1,
            Sort::TimeAsc => 2,
            Sort::Score => 3,
        }
    }

    fn from_tag(t: u8) -> Option<Sort> {
        Some(match t {
            1 => Sort::TimeDesc,
            2 => Sort::TimeAsc,
            3 => Sort::Score,
            _ => return None,
        })
    }
}

impl fmt::Display for Sort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Sort {
    type Err = Error;

    /// `time_desc`/`desc`/`newest`, `time_asc`/`asc`/`oldest`, `score`/`relevance`.
    fn from_str(s: &str) -> Result<Sort> {
        match s {
            "time_desc" | "desc" | "newest" => Ok(Sort::TimeDesc),
            "time_asc" | "asc" | "oldest" => Ok(Sort::TimeAsc),
            "score" | "relevance" => Ok(Sort::Score),
            _ => Err(Error::InvalidArgument(format!(
                "unknown sort '{s}' (expected time_desc, time_asc or score)"
            ))),
        }
    }
}

/// The identity and time-sort key of a hit. Ordered by (timestamp, shard, log index,
/// offset): a total order over all records of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HitKey {
    /// Record time, ns since the epoch.
    pub timestamp_ns: i64,
    /// The shard holding it.
    pub shard: u32,
    /// The raft log index of its batch.
    pub log_index: u64,
    /// Its position in the batch.
    pub offset: u32,
}

/// One search result.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    /// Identity and time-sort key.
    pub key: HitKey,
    /// BM25 score with [`Sort::Score`], 0 otherwise.
    pub score: f32,
    /// The record's tenant.
    pub tenant: String,
    /// The record as stored in the log.
    pub record: StoredRecord,
}

/// One shard's answer to a search.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardHits {
    /// Sorted by the request's order; at most `limit` (with a score cursor at offset `o`:
    /// at most `o + limit`, see the module docs).
    pub hits: Vec<Hit>,
    /// Every match in the time range, ignoring the cursor.
    pub total: u64,
    /// Records read from the log's head (committed, not yet indexed) to answer, rather
    /// than looked up in the index.
    pub scanned: u64,
}

/// `Less` when `a` comes before `b` in `sort` order.
pub(crate) fn compare(
    sort: Sort,
    a_key: &HitKey,
    a_score: f32,
    b_key: &HitKey,
    b_score: f32,
) -> Ordering {
    match sort {
        Sort::TimeDesc => b_key.cmp(a_key),
        Sort::TimeAsc => a_key.cmp(b_key),
        Sort::Score => b_score.total_cmp(&a_score).then_with(|| b_key.cmp(a_key)),
    }
}

/// Where the next page starts. Opaque to clients: [`Cursor::encode`] gives a URL-safe
/// string (lower-case hex) and [`Cursor::decode`] reads it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    sort: Sort,
    pos: CursorPos,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CursorPos {
    /// Time sorts: hits strictly after this key.
    After(HitKey),
    /// Score sort: skip this many hits.
    Offset(u64),
}

const CURSOR_VERSION: u8 = 1;
const CURSOR_TIME_LEN: usize = 2 + 8 + 4 + 8 + 4;
const CURSOR_SCORE_LEN: usize = 2 + 8;

impl Cursor {
    /// A time-sort cursor: the next page starts strictly after `key`.
    ///
    /// # Panics
    ///
    /// If `sort` is [`Sort::Score`] (use [`Cursor::offset`]).
    pub fn after(sort: Sort, key: HitKey) -> Cursor {
        assert!(sort != Sort::Score, "a score cursor is an offset");
        Cursor {
            sort,
            pos: CursorPos::After(key),
        }
    }

    /// A score-sort cursor skipping `offset` hits.
    pub fn offset(offset: u64) -> Cursor {
        Cursor {
            sort: Sort::Score,
            pos: CursorPos::Offset(offset),
        }
    }

    /// The sort order this cursor pages through.
    pub fn sort(&self) -> Sort {
        self.sort
    }

    /// For time sorts, the key the next page starts after.
    pub fn after_key(&self) -> Option<HitKey> {
        match self.pos {
            CursorPos::After(k) => Some(k),
            CursorPos::Offset(_) => None,
        }
    }

    /// For the score sort, the number of hits already returned.
    pub fn skip(&self) -> u64 {
        match self.pos {
            CursorPos::After(_) => 0,
            CursorPos::Offset(o) => o,
        }
    }

    /// Checks the cursor was made for `sort`.
    ///
    /// # Errors
    ///
    /// [`Error::BadCursor`] naming both orders.
    pub fn check_sort(&self, sort: Sort) -> Result<()> {
        if self.sort != sort {
            return Err(Error::BadCursor(format!(
                "this cursor pages results sorted by {}, but the request sorts by {}; \
                 repeat the request with sort={} or drop the cursor",
                self.sort, sort, self.sort
            )));
        }
        Ok(())
    }

    /// The cursor as a URL-safe string (lower-case hex).
    pub fn encode(&self) -> String {
        let mut b = vec![CURSOR_VERSION, self.sort.tag()];
        match self.pos {
            CursorPos::After(k) => {
                b.extend_from_slice(&k.timestamp_ns.to_be_bytes());
                b.extend_from_slice(&k.shard.to_be_bytes());
                b.extend_from_slice(&k.log_index.to_be_bytes());
                b.extend_from_slice(&k.offset.to_be_bytes());
            }
            CursorPos::Offset(o) => b.extend_from_slice(&o.to_be_bytes()),
        }
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Reads back what [`Cursor::encode`] wrote.
    ///
    /// # Errors
    ///
    /// [`Error::BadCursor`] if `s` is not a cursor of this version.
    pub fn decode(s: &str) -> Result<Cursor> {
        let bad = |why: &str| Error::BadCursor(format!("'{s}' is not a valid cursor: {why}"));
        if !s.len().is_multiple_of(2) || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad("expected hex digits"));
        }
        let b: Vec<u8> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad("expected hex digits"))?;
        if b.len() < 2 {
            return Err(bad("too short"));
        }
        if b[0] != CURSOR_VERSION {
            return Err(bad("unknown cursor version"));
        }
        let sort = Sort::from_tag(b[1]).ok_or_else(|| bad("unknown sort"))?;
        let be8 = |i: usize| -> [u8; 8] { b[i..i + 8].try_into().unwrap_or([0; 8]) };
        let be4 = |i: usize| -> [u8; 4] { b[i..i + 4].try_into().unwrap_or([0; 4]) };
        let pos = match sort {
            Sort::Score => {
                if b.len() != CURSOR_SCORE_LEN {
                    return Err(bad("wrong length"));
                }
                CursorPos::Offset(u64::from_be_bytes(be8(2)))
            }
            Sort::TimeDesc | Sort::TimeAsc => {
                if b.len() != CURSOR_TIME_LEN {
                    return Err(bad("wrong length"));
                }
                CursorPos::After(HitKey {
                    timestamp_ns: i64::from_be_bytes(be8(2)),
                    shard: u32::from_be_bytes(be4(10)),
                    log_index: u64::from_be_bytes(be8(14)),
                    offset: u32::from_be_bytes(be4(22)),
                })
            }
        };
        Ok(Cursor { sort, pos })
    }

    /// Whether `key` comes strictly after the cursor (time sorts; always true otherwise).
    pub(crate) fn admits(&self, key: &HitKey) -> bool {
        match (self.sort, self.pos) {
            (Sort::TimeDesc, CursorPos::After(k)) => *key < k,
            (Sort::TimeAsc, CursorPos::After(k)) => *key > k,
            _ => true,
        }
    }
}

/// Merges per-shard pages (each sorted by `sort`, from requests carrying the same `limit`
/// and `after`) into one page of at most `limit` hits, the total over all shards, and the
/// cursor for the next page (`None` when there is none).
///
/// With a time sort a cursor is returned when the page is full and some shard may hold
/// more; at worst the last page is then empty. With the score sort the total is exact, so
/// the cursor is exact too. A cursor of another sort order is ignored here; reject it
/// before the fan-out with [`Cursor::check_sort`].
pub fn merge(
    results: Vec<ShardHits>,
    sort: Sort,
    limit: usize,
    after: Option<&Cursor>,
) -> (Vec<Hit>, u64, Option<Cursor>) {
    let after = after.filter(|c| c.sort == sort);
    let total: u64 = results.iter().map(|r| r.total).sum();
    let some_shard_full = results.iter().any(|r| r.hits.len() >= limit);
    let mut all: Vec<Hit> = results.into_iter().flat_map(|r| r.hits).collect();
    all.sort_by(|a, b| compare(sort, &a.key, a.score, &b.key, b.score));
    match sort {
        Sort::TimeDesc | Sort::TimeAsc => {
            if let Some(c) = after {
                all.retain(|h| c.admits(&h.key));
            }
            let more = all.len() > limit || (limit > 0 && some_shard_full);
            all.truncate(limit);
            let next = match all.last() {
                Some(last) if more && all.len() == limit => Some(Cursor::after(sort, last.key)),
                _ => None,
            };
            (all, total, next)
        }
        Sort::Score => {
            let skip = after.map_or(0, |c| c.skip());
            let hits: Vec<Hit> = all
                .into_iter()
                .skip(usize::try_from(skip).unwrap_or(usize::MAX))
                .take(limit)
                .collect();
            let end = skip.saturating_add(hits.len() as u64);
            let next =
                (limit > 0 && hits.len() == limit && end < total).then(|| Cursor::offset(end));
            (hits, total, next)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ts: i64, shard: u32, li: u64, off: u32) -> HitKey {
        HitKey {
            timestamp_ns: ts,
            shard,
            log_index: li,
            offset: off,
        }
    }

    fn hit(k: HitKey, score: f32) -> Hit {
        Hit {
            key: k,
            score,
            tenant: "t".into(),
            record: StoredRecord::default(),
        }
    }

    #[test]
    fn cursor_round_trips_and_is_url_safe() {
        for c in [
            Cursor::after(Sort::TimeDesc, key(-5, 3, u64::MAX, 7)),
            Cursor::after(Sort::TimeAsc, key(i64::MAX, 0, 0, u32::MAX)),
            Cursor::offset(1234),
        ] {
            let s = c.encode();
            assert!(s.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(Cursor::decode(&s).unwrap(), c);
        }
    }

    #[test]
    fn cursor_rejects_garbage_and_other_sorts() {
        for s in [
            "",
            "zz",
            "0",
            "02",
            "0101",
            "01ff0000000000000000",
            "01030000",
        ] {
            assert!(matches!(Cursor::decode(s), Err(Error::BadCursor(_))), "{s}");
        }
        let c = Cursor::offset(3);
        let e = c.check_sort(Sort::TimeDesc).unwrap_err();
        assert!(e.to_string().contains("sorted by score"), "{e}");
        assert!(c.check_sort(Sort::Score).is_ok());
    }

    #[test]
    fn merge_interleaves_shards_by_time_and_pages() {
        let a = ShardHits {
            hits: vec![hit(key(9, 0, 1, 0), 0.0), hit(key(5, 0, 1, 1), 0.0)],
            total: 3,
            scanned: 0,
        };
        let b = ShardHits {
            hits: vec![hit(key(9, 1, 1, 0), 0.0), hit(key(7, 1, 2, 0), 0.0)],
            total: 2,
            scanned: 0,
        };
        let (hits, total, next) = merge(vec![a, b], Sort::TimeDesc, 2, None);
        assert_eq!(total, 5);
        assert_eq!(
            hits.iter().map(|h| h.key).collect::<Vec<_>>(),
            [key(9, 1, 1, 0), key(9, 0, 1, 0)]
        );
        assert_eq!(next, Some(Cursor::after(Sort::TimeDesc, key(9, 0, 1, 0))));
    }

    #[test]
    fn merge_by_score_skips_the_offset() {
        let a = ShardHits {
            hits: vec![hit(key(1, 0, 1, 0), 3.0), hit(key(2, 0, 1, 1), 1.0)],
            total: 2,
            scanned: 0,
        };
        let b = ShardHits {
            hits: vec![hit(key(3, 1, 1, 0), 2.0)],
            total: 1,
            scanned: 0,
        };
        let (hits, total, next) = merge(vec![a.clone(), b.clone()], Sort::Score, 2, None);
        assert_eq!(total, 3);
        assert_eq!(hits.iter().map(|h| h.score).collect::<Vec<_>>(), [3.0, 2.0]);
        assert_eq!(next, Some(Cursor::offset(2)));
        let (hits, _, next) = merge(vec![a, b], Sort::Score, 2, Some(&Cursor::offset(2)));
        assert_eq!(hits.iter().map(|h| h.score).collect::<Vec<_>>(), [1.0]);
        assert_eq!(next, None);
    }
}
