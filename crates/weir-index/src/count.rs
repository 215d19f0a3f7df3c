//! Counting records per group of stream-label values and per time bucket, from the index
//! alone: no stored record is read.
//!
//! This is what a metric query such as `sum by (level) (count_over_time({env="prod"}[1m]))`
//! needs. Reading every record through the doc store costs ~13 µs each; here a record
//! costs a look at its timestamp column and at one small array per label involved.
//!
//! Per segment, each label named by a filter or a grouping becomes an array from document
//! to value ordinal, filled by walking the postings of the label's terms in the `labels`
//! field (`tenant \0 name \0 value`, which holds stream labels and the standard fields
//! alike, never attributes). The request's query (the tenant's records, narrowed by a
//! Weir query if one is given) then drives the count. The answer is
//! exact: a record matches a filter when the value its label has (or `""` without one)
//! passes the filter's predicate, as LogQL's matchers compare.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use tantivy::columnar::ColumnIndex;
use tantivy::query::EnableScoring;
use tantivy::schema::IndexRecordOption;
use tantivy::{DocId, DocSet, Searcher, SegmentReader, COLLECT_BLOCK_BUFFER_LEN, TERMINATED};

use crate::query::Query;
use crate::schema::{label_prefix, prefix_range, Fields, F_TIMESTAMP};
use crate::{Error, Result};

/// Where a stream label's value comes from: the label terms of each name, a later name's
/// value replacing an earlier one's (`service_name` is the `service_name` label where a
/// record has one, else its service: `["service", "service_name"]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSource {
    /// Label names, lowest precedence first. Standard fields (`service`, `level`, ...) are
    /// label names here too: the index keeps their values as label terms.
    pub names: Vec<String>,
}

impl LabelSource {
    /// The label `name` itself.
    pub fn label(name: &str) -> LabelSource {
        LabelSource {
            names: vec![name.to_owned()],
        }
    }
}

/// Accepts or refuses a label value (`""` when the record has no such label).
pub type ValuePredicate = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// One condition on a stream label.
#[derive(Clone)]
pub struct LabelFilter {
    /// The label.
    pub label: LabelSource,
    /// Which values pass.
    pub accepts: ValuePredicate,
}

/// A count of one tenant's records per group and time bucket.
#[derive(Clone)]
pub struct CountRequest {
    /// Whose records. Empty means [`weir_proto::DEFAULT_TENANT`].
    pub tenant: String,
    /// Only records matching this query ([`Query::All`]: every record of the tenant).
    pub query: Query,
    /// Only records in `[start_ns, end_ns)` (besides the buckets' span).
    pub start_ns: i64,
    /// See `start_ns`.
    pub end_ns: i64,
    /// Every filter must pass.
    pub filters: Vec<LabelFilter>,
    /// The labels whose values make a group, in this order.
    pub group_by: Vec<LabelSource>,
    /// Bucket `k` holds the records with `origin_ns + k * width_ns <= timestamp <
    /// origin_ns + (k + 1) * width_ns`.
    pub origin_ns: i64,
    /// Bucket width, > 0.
    pub width_ns: i64,
    /// Number of buckets, > 0.
    pub buckets: usize,
    /// Most `groups × buckets` counters the answer may hold (memory: 8 bytes each);
    /// past it the count fails with [`Error::InvalidArgument`].
    pub cells_max: usize,
}

impl CountRequest {
    /// The end of the last bucket, exclusive.
    pub fn buckets_end_ns(&self) -> i64 {
        let span = i128::from(self.width_ns) * self.buckets as i128;
        (i128::from(self.origin_ns) + span).min(i128::from(i64::MAX)) as i64
    }

    /// The times counted: `[start, end)`, the buckets' span within the request's range.
    pub fn span(&self) -> (i64, i64) {
        (
            self.origin_ns.max(self.start_ns),
            self.buckets_end_ns().min(self.end_ns),
        )
    }
}

/// The counts of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupCounts {
    /// The value of each `group_by` label, `None` where a record has none.
    pub values: Vec<Option<String>>,
    /// Records per bucket.
    pub counts: Vec<u64>,
}

/// Adds `more` into `into`, group by group.
pub fn merge_counts(into: &mut Vec<GroupCounts>, more: Vec<GroupCounts>) {
    let mut at: HashMap<Vec<Option<String>>, usize> = into
        .iter()
        .enumerate()
        .map(|(i, g)| (g.values.clone(), i))
        .collect();
    for g in more {
        match at.get(&g.values) {
            Some(&i) => {
                for (a, b) in into[i].counts.iter_mut().zip(&g.counts) {
                    *a += b;
                }
            }
            None => {
                at.insert(g.values.clone(), into.len());
                into.push(g);
            }
        }
    }
}

/// One label over one segment: each document's value ordinal (0: none) and the values.
struct Ordinals {
    of_doc: Vec<u32>,
    values: Vec<String>,
}

impl Ordinals {
    fn read(
        seg: &SegmentReader,
        dir: &Path,
        fields: &Fields,
        tenant: &str,
        src: &LabelSource,
    ) -> Result<Self> {
        let inv = seg.inverted_index(fields.labels)?;
        let mut of_doc = vec![0u32; seg.max_doc() as usize];
        let mut values: Vec<String> = Vec::new();
        let mut ordinal: HashMap<String, u32> = HashMap::new();
        for name in &src.names {
            let (lo, hi) = prefix_range(&label_prefix(tenant, name));
            let mut stream = inv
                .terms()
                .range()
                .ge(&lo)
                .lt(&hi)
                .into_stream()
                .map_err(|e| Error::io(dir, e))?;
            while stream.advance() {
                let Ok(value) = std::str::from_utf8(&stream.key()[lo.len()..]) else {
                    continue;
                };
                let next = values.len() as u32 + 1;
                let ord = *ordinal.entry(value.to_owned()).or_insert_with(|| {
                    values.push(value.to_owned());
                    next
                });
                let mut postings = inv
                    .read_postings_from_terminfo(stream.value(), IndexRecordOption::Basic)
                    .map_err(|e| Error::io(dir, e))?;
                let mut doc = postings.doc();
                while doc != TERMINATED {
                    of_doc[doc as usize] = ord;
                    doc = postings.advance();
                }
            }
        }
        Ok(Ordinals { of_doc, values })
    }

    fn value(&self, ord: u32) -> Option<&str> {
        (ord > 0).then(|| self.values[ord as usize - 1].as_str())
    }
}

/// Counts over the segments of `parts` (a searcher, the directory and whether long tokens
/// are marked, of each time partition).
/// One partition as a count reads it.
pub(crate) struct CountPart {
    pub searcher: Searcher,
    pub dir: PathBuf,
    /// Its documents carry the long-token marker.
    pub marked: bool,
    /// Only documents of log entries up to this (the rest is the head's).
    pub through: Option<u64>,
}

pub(crate) fn count(
    parts: &[CountPart],
    fields: &Fields,
    tenant: &str,
    req: &CountRequest,
) -> Result<Vec<GroupCounts>> {
    if req.width_ns <= 0 || req.buckets == 0 {
        return Err(Error::InvalidArgument(
            "a count needs a positive bucket width and at least one bucket".into(),
        ));
    }
    let (lo, hi) = req.span();
    let mut out: Vec<GroupCounts> = Vec::new();
    if lo >= hi {
        return Ok(out);
    }
    for CountPart {
        searcher,
        dir,
        marked,
        through,
    } in parts
    {
        let query = fields.filtered(
            fields.translate(
                &req.query,
                tenant,
                crate::schema::PartContext {
                    marked: *marked,
                    dir,
                },
                false,
            ),
            tenant,
            &[],
            None,
            *through,
        );
        let weight = query.weight(EnableScoring::disabled_from_searcher(searcher))?;
        for seg in searcher.segment_readers() {
            let mut docs = weight.scorer(seg, 1.0)?;
            let span = (lo, hi);
            let found = count_segment(seg, &mut docs, dir, fields, tenant, req, span)?;
            merge_counts(&mut out, found);
            if out.len().saturating_mul(req.buckets) > req.cells_max {
                return Err(too_many(req));
            }
        }
    }
    Ok(out)
}

pub(crate) fn too_many(req: &CountRequest) -> Error {
    Error::InvalidArgument(format!(
        "the count needs more than {} counters ({} buckets per group)",
        req.cells_max, req.buckets
    ))
}

/// Counts the documents of `docs` (the query's matches in `seg`) in `[lo, hi)`.
fn count_segment(
    seg: &SegmentReader,
    docs: &mut dyn DocSet,
    dir: &Path,
    fields: &Fields,
    tenant: &str,
    req: &CountRequest,
    (lo, hi): (i64, i64),
) -> Result<Vec<GroupCounts>> {
    let timestamps = seg.fast_fields().i64(F_TIMESTAMP)?;
    // Each label once, however many filters and groupings name it (`{level=~"warn|error"}`
    // grouped by level).
    let mut read: Vec<(LabelSource, Rc<Ordinals>)> = Vec::new();
    let mut ordinals = |src: &LabelSource| -> Result<Rc<Ordinals>> {
        if let Some((_, o)) = read.iter().find(|(s, _)| s == src) {
            return Ok(o.clone());
        }
        let o = Rc::new(Ordinals::read(seg, dir, fields, tenant, src)?);
        read.push((src.clone(), o.clone()));
        Ok(o)
    };
    // Each filter as a table of which ordinals pass.
    let mut filters = Vec::with_capacity(req.filters.len());
    for f in &req.filters {
        let ords = ordinals(&f.label)?;
        let passes: Vec<bool> = (0..=ords.values.len() as u32)
            .map(|o| (f.accepts)(ords.value(o).unwrap_or("")))
            .collect();
        if !passes.iter().any(|p| *p) {
            return Ok(Vec::new());
        }
        filters.push((ords, passes));
    }
    let groups = req
        .group_by
        .iter()
        .map(&mut ordinals)
        .collect::<Result<Vec<_>>>()?;
    // A group is the mixed-radix number of its ordinals; its counters are found by hash
    // (the number of possible combinations may be large, the ones present are few).
    let radix: Vec<u64> = groups.iter().map(|g| g.values.len() as u64 + 1).collect();
    if radix
        .iter()
        .try_fold(1u64, |p, r| p.checked_mul(*r))
        .is_none()
    {
        return Err(too_many(req));
    }
    let mut slots: HashMap<u64, usize> = HashMap::new();
    let mut keys: Vec<u64> = Vec::new();
    let mut counts: Vec<u64> = Vec::new();
    let (mut last_key, mut last_slot) = (u64::MAX, 0usize);
    let alive = seg.alive_bitset();
    let mut bucket_of = BucketOf::new(req.origin_ns, req.width_ns);
    // Documents a block at a time (one virtual call per block), and their timestamps in
    // one call when every document has one (the column then maps document to row).
    let full = matches!(timestamps.index, ColumnIndex::Full);
    let mut block = [0 as DocId; COLLECT_BLOCK_BUFFER_LEN];
    let mut times = [0i64; COLLECT_BLOCK_BUFFER_LEN];
    loop {
        let n = docs.fill_buffer(&mut block);
        if n == 0 {
            break;
        }
        if full {
            timestamps.values.get_vals(&block[..n], &mut times[..n]);
        }
        'docs: for (i, &d) in block[..n].iter().enumerate() {
            if alive.is_some_and(|a| !a.is_alive(d)) {
                continue;
            }
            let ts = if full {
                times[i]
            } else {
                match timestamps.first(d) {
                    Some(ts) => ts,
                    None => continue,
                }
            };
            if ts < lo || ts >= hi {
                continue;
            }
            for (ords, passes) in &filters {
                if !passes[ords.of_doc[d as usize] as usize] {
                    continue 'docs;
                }
            }
            let mut key = 0u64;
            for (g, r) in groups.iter().zip(&radix) {
                key = key * r + u64::from(g.of_doc[d as usize]);
            }
            if key != last_key {
                last_slot = match slots.get(&key) {
                    Some(&s) => s,
                    None => {
                        if (keys.len() + 1).saturating_mul(req.buckets) > req.cells_max {
                            return Err(too_many(req));
                        }
                        keys.push(key);
                        counts.resize(counts.len() + req.buckets, 0);
                        slots.insert(key, keys.len() - 1);
                        keys.len() - 1
                    }
                };
                last_key = key;
            }
            counts[last_slot * req.buckets + bucket_of.bucket(ts)] += 1;
        }
        if n < COLLECT_BLOCK_BUFFER_LEN {
            break;
        }
    }
    let mut out = Vec::with_capacity(keys.len());
    for (slot, mut key) in keys.into_iter().enumerate() {
        let mut values = vec![None; groups.len()];
        for (i, (g, r)) in groups.iter().zip(&radix).enumerate().rev() {
            let ord = (key % r) as u32;
            key /= r;
            values[i] = g.value(ord).map(str::to_owned);
        }
        out.push(GroupCounts {
            values,
            counts: counts[slot * req.buckets..(slot + 1) * req.buckets].to_vec(),
        });
    }
    Ok(out)
}

/// The bucket of a timestamp, `(ts - origin) / width`, remembering the last bucket's
/// bounds: records come roughly in time order, so most fall in the bucket of the one
/// before and need no division (a 128-bit division per record was an eighth of a count's
/// time).
struct BucketOf {
    origin: i64,
    width: i64,
    /// `[start, end)` of the last bucket found, and its number.
    last: (i64, i64, usize),
}

impl BucketOf {
    fn new(origin: i64, width: i64) -> BucketOf {
        BucketOf {
            origin,
            width,
            last: (0, 0, 0),
        }
    }

    /// The bucket of `ts`, which is at or after the origin.
    #[inline]
    fn bucket(&mut self, ts: i64) -> usize {
        let (start, end, n) = self.last;
        if ts >= start && ts < end {
            return n;
        }
        let n = ((i128::from(ts) - i128::from(self.origin)) / i128::from(self.width)) as usize;
        let start = i128::from(self.origin) + n as i128 * i128::from(self.width);
        let clamp = |v: i128| v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        self.last = (clamp(start), clamp(start + i128::from(self.width)), n);
        n
    }
}
