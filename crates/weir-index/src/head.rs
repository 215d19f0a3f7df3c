//! The scanned head: committed records the index has not made searchable yet, answered by
//! reading them.
//!
//! The indexer commits every `commit_interval_ms`, and under a burst it falls behind the
//! log. The log entries after the index's checkpoint (the head) are held decoded by the
//! caller (weir-server's `head` module) and handed to [`crate::ShardIndex::search_with_head`]
//! and [`crate::ShardIndex::count_with_head`], which answer from the index up to its
//! checkpoint and from the head after it, so that a record is found as soon as it is
//! committed. The index part is cut at the checkpoint (`log_index <= checkpoint`) so that a
//! record is never answered twice.
//!
//! [`RecordMatcher`] decides a [`Query`] on one record with the index's semantics: the body
//! is split by the index's own analyzer (tantivy's simple tokenizer, words of 40 bytes and
//! more dropped, lower-cased), so a word, a phrase (tokens at consecutive positions, or
//! within `slop` moves summed over the phrase), a prefix and an infix (`*frag*`: a body
//! word containing it, or any record with a word too long to be indexed, as the index
//! answers) match here exactly when they match there. Exact fields compare whole values;
//! ids compare lower-cased whole ids; any other field name is a stream label or an
//! attribute. Two differences remain, both where the index gives up first: the index
//! expands a prefix to at most 100,000 terms (1,000 for a phrase's last word) and the
//! head to every word, and a head record has no BM25 score (0: in score order it comes
//! after the index's hits). `tests/head.rs` runs the same queries both ways.

use std::collections::HashMap;
use std::sync::Arc;

use memchr::memmem;
use weir_proto::v1::{StoredBatch, StoredRecord};
use weir_proto::Level;

use crate::count::{CountRequest, GroupCounts, LabelSource};
use crate::page::{compare, Cursor, Hit, HitKey, ShardHits, Sort};
use crate::query::{Match, Pattern, Query, BODY_FIELD};
use crate::schema::{body_tokens, has_long_word, StdField, STD_FIELDS};
use crate::shard::tenant_or_default;

/// One committed log entry of the head: its raft index and its decoded batch.
pub type HeadEntry = (u64, Arc<HeadBatch>);

/// A decoded batch of the head, with its ASCII bodies lower-cased once, back to back, so
/// that a search finds the records holding a word by one substring search over the batch
/// instead of looking at every record.
#[derive(Debug)]
pub struct HeadBatch {
    /// The batch as committed.
    pub batch: StoredBatch,
    /// The bodies of ASCII records, lower-cased, each followed by `\n`; a non-ASCII body
    /// (whose lower case may change its length) is left out and always examined.
    lowered: String,
    /// Each record's span in `lowered`, `None` for a non-ASCII body.
    spans: Vec<Option<(u32, u32)>>,
    /// (start in `lowered`, record) of the ASCII records, in order.
    ascii: Vec<(u32, u32)>,
    /// The non-ASCII records.
    other: Vec<u32>,
}

impl HeadBatch {
    /// Prepares `batch` for scanning.
    pub fn new(batch: StoredBatch) -> HeadBatch {
        let total: usize = batch.records.iter().map(|r| r.body.len() + 1).sum();
        let mut lowered = String::with_capacity(total);
        let mut spans = Vec::with_capacity(batch.records.len());
        let mut ascii = Vec::with_capacity(batch.records.len());
        let mut other = Vec::new();
        for (i, r) in batch.records.iter().enumerate() {
            let fits = lowered.len() + r.body.len() < u32::MAX as usize;
            if r.body.is_ascii() && fits {
                let start = lowered.len();
                lowered.push_str(&r.body);
                // Bytewise: the body is ASCII.
                lowered[start..].make_ascii_lowercase();
                let start = start as u32;
                spans.push(Some((start, lowered.len() as u32)));
                ascii.push((start, i as u32));
                lowered.push('\n');
            } else {
                spans.push(None);
                other.push(i as u32);
            }
        }
        HeadBatch {
            batch,
            lowered,
            spans,
            ascii,
            other,
        }
    }

    /// Record `i`'s body, lower-cased, when it is ASCII.
    fn lowered(&self, i: usize) -> Option<&str> {
        let (start, end) = self.spans[i]?;
        self.lowered.get(start as usize..end as usize)
    }

    /// The records that may match a query every match of which contains `word`
    /// (lower-case): those whose ASCII body holds it, and every non-ASCII one; in order.
    fn candidates(&self, word: &memmem::Finder<'_>) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        for at in word.find_iter(self.lowered.as_bytes()) {
            // The record whose body holds offset `at`.
            let k = self.ascii.partition_point(|(s, _)| (*s as usize) <= at);
            if let Some(&(_, i)) = k.checked_sub(1).and_then(|k| self.ascii.get(k)) {
                if out.last() != Some(&(i as usize)) {
                    out.push(i as usize);
                }
            }
        }
        if !self.other.is_empty() {
            out.extend(self.other.iter().map(|i| *i as usize));
            out.sort_unstable();
            out.dedup();
        }
        out
    }
}

/// A [`Query`] compiled for deciding records one by one.
#[derive(Debug)]
enum Node {
    All,
    Nothing,
    /// Body tokens (index position in the query, lower-cased text); the last one a prefix
    /// when `prefix`.
    Body {
        terms: Vec<(usize, String)>,
        slop: u32,
        prefix: bool,
    },
    Infix(String),
    Field {
        field: StdField,
        value: String,
        prefix: bool,
    },
    Id {
        trace: bool,
        id: String,
    },
    LabelOrAttr {
        name: String,
        value: String,
        prefix: bool,
    },
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
}

/// Decides a query, a tenant, levels and a time range on records, with the index's
/// semantics (see the module docs).
#[derive(Debug)]
pub struct RecordMatcher {
    root: Node,
    /// The longest body word every match contains, searched in a batch's lower-cased
    /// bodies to pick the records worth deciding.
    required: Option<memmem::Finder<'static>>,
    tenant: String,
    levels: Vec<Level>,
    start_ns: i64,
    end_ns: i64,
}

/// What one record's body looks like to the query, computed once per record and only
/// when a body clause asks.
#[derive(Default)]
struct BodyView<'b> {
    /// The body lower-cased when it is ASCII, as the head prepared it (then a token's
    /// absence is a cheap substring test).
    lowered: Option<&'b str>,
    tokens: Option<Vec<(usize, String)>>,
}

impl BodyView<'_> {
    fn ascii_lowered(&mut self, _body: &str) -> Option<&str> {
        self.lowered
    }

    fn tokens(&mut self, body: &str) -> &[(usize, String)] {
        self.tokens.get_or_insert_with(|| body_tokens(body))
    }
}

impl RecordMatcher {
    /// A matcher of `query` over `tenant`'s records (empty: the default tenant) with one of
    /// `levels` (empty: any) in `[start_ns, end_ns)`.
    pub fn new(
        query: &Query,
        tenant: &str,
        levels: &[Level],
        start_ns: i64,
        end_ns: i64,
    ) -> RecordMatcher {
        let root = compile(query);
        let required = required_words(&root)
            .into_iter()
            .max_by_key(|w| w.len())
            .map(|w| memmem::Finder::new(w.as_bytes()).into_owned());
        RecordMatcher {
            root,
            required,
            tenant: tenant_or_default(tenant).to_owned(),
            levels: levels.to_vec(),
            start_ns,
            end_ns,
        }
    }

    /// Whether the batch's records are of this matcher's tenant.
    pub fn tenant_matches(&self, batch: &StoredBatch) -> bool {
        tenant_or_default(&batch.tenant) == self.tenant
    }

    /// Whether record `r` (of a batch of this tenant) matches.
    pub fn matches(&self, r: &StoredRecord) -> bool {
        let lowered = r.body.is_ascii().then(|| r.body.to_ascii_lowercase());
        self.matches_lowered(r, lowered.as_deref())
    }

    /// [`RecordMatcher::matches`] with the body already lower-cased when it is ASCII.
    fn matches_lowered(&self, r: &StoredRecord, lowered: Option<&str>) -> bool {
        if r.timestamp_ns < self.start_ns || r.timestamp_ns >= self.end_ns {
            return false;
        }
        if !self.levels.is_empty()
            && !Level::from_u32(r.level).is_some_and(|l| self.levels.contains(&l))
        {
            return false;
        }
        eval(
            &self.root,
            r,
            &mut BodyView {
                lowered,
                tokens: None,
            },
        )
    }

    /// The records of `b` that match, in order.
    pub(crate) fn matching<'b>(&self, b: &'b HeadBatch) -> Vec<(usize, &'b StoredRecord)> {
        let check = |i: usize| {
            let r = &b.batch.records[i];
            self.matches_lowered(r, b.lowered(i)).then_some((i, r))
        };
        match &self.required {
            Some(word) => b.candidates(word).into_iter().filter_map(check).collect(),
            None => (0..b.batch.records.len()).filter_map(check).collect(),
        }
    }
}

/// Body words (lower-case) that every record matching `n` contains as a substring of its
/// lower-cased body: the tokens of word, phrase and prefix clauses, through ANDs.
fn required_words(n: &Node) -> Vec<String> {
    match n {
        Node::Body { terms, .. } => terms.iter().map(|(_, t)| t.clone()).collect(),
        Node::And(c) => c.iter().flat_map(required_words).collect(),
        _ => Vec::new(),
    }
}

fn compile(q: &Query) -> Node {
    match q {
        Query::All => Node::All,
        Query::Match(m) => compile_match(m),
        Query::And(c) => Node::And(c.iter().map(compile).collect()),
        Query::Or(c) => Node::Or(c.iter().map(compile).collect()),
        Query::Not(c) => Node::Not(Box::new(compile(c))),
    }
}

fn compile_match(m: &Match) -> Node {
    let field = m.field.as_deref().filter(|f| *f != BODY_FIELD);
    let Some(name) = field else {
        let (text, slop, prefix) = match &m.pattern {
            Pattern::Infix(f) => return Node::Infix(f.clone()),
            Pattern::Word(w) => (w.as_str(), 0, false),
            Pattern::Phrase { text, slop } => (text.as_str(), *slop, false),
            Pattern::Prefix(t) | Pattern::PhrasePrefix(t) => (t.as_str(), 0, true),
        };
        let terms = body_tokens(text);
        if terms.is_empty() {
            return Node::Nothing;
        }
        return Node::Body {
            terms,
            slop,
            prefix,
        };
    };
    let (value, prefix) = match &m.pattern {
        Pattern::Word(v) | Pattern::Phrase { text: v, .. } => (v.clone(), false),
        Pattern::Prefix(v) | Pattern::PhrasePrefix(v) => (v.clone(), true),
        Pattern::Infix(_) => return Node::Nothing,
    };
    match name {
        "trace_id" | "span_id" if !prefix => Node::Id {
            trace: name == "trace_id",
            id: value.to_ascii_lowercase(),
        },
        "trace_id" | "span_id" => Node::Nothing,
        _ => match StdField::of(name) {
            Some(field) => Node::Field {
                field,
                value,
                prefix,
            },
            None => Node::LabelOrAttr {
                name: name.to_owned(),
                value,
                prefix,
            },
        },
    }
}

fn same(have: &str, want: &str, prefix: bool) -> bool {
    if prefix {
        have.starts_with(want)
    } else {
        have == want
    }
}

fn eval(n: &Node, r: &StoredRecord, body: &mut BodyView<'_>) -> bool {
    match n {
        Node::All => true,
        Node::Nothing => false,
        Node::And(c) => c.iter().all(|c| eval(c, r, body)),
        Node::Or(c) => c.iter().any(|c| eval(c, r, body)),
        Node::Not(c) => !eval(c, r, body),
        Node::Field {
            field,
            value,
            prefix,
        } => {
            let have = field.value(r);
            !have.is_empty() && same(have, value, *prefix)
        }
        Node::Id { trace, id } => {
            let have = if *trace { &r.trace_id } else { &r.span_id };
            !have.is_empty() && have == id
        }
        Node::LabelOrAttr {
            name,
            value,
            prefix,
        } => {
            r.labels.get(name).is_some_and(|v| same(v, value, *prefix))
                || r.attributes
                    .get(name)
                    .is_some_and(|v| same(v, value, *prefix))
        }
        Node::Infix(fragment) => {
            if has_long_word(&r.body) {
                // The index answers every record with an unindexed word here.
                return true;
            }
            if let Some(lowered) = body.ascii_lowered(&r.body) {
                if memmem::find(lowered.as_bytes(), fragment.as_bytes()).is_none() {
                    return false;
                }
            }
            body.tokens(&r.body)
                .iter()
                .any(|(_, t)| memmem::find(t.as_bytes(), fragment.as_bytes()).is_some())
        }
        Node::Body {
            terms,
            slop,
            prefix,
        } => {
            if let Some(lowered) = body.ascii_lowered(&r.body) {
                // Every token of the clause is a substring of the lower-cased body.
                if terms
                    .iter()
                    .any(|(_, t)| memmem::find(lowered.as_bytes(), t.as_bytes()).is_none())
                {
                    return false;
                }
            }
            phrase_matches(body.tokens(&r.body), terms, *slop, *prefix)
        }
    }
}

/// Whether `tokens` (a body's) hold `terms` as the index's phrase query sees them: each
/// term at its query position relative to the first, the moves needed summed over the
/// phrase at most `slop`; the last term a prefix when `prefix` (then without slop).
fn phrase_matches(
    tokens: &[(usize, String)],
    terms: &[(usize, String)],
    slop: u32,
    prefix: bool,
) -> bool {
    let last = terms.len() - 1;
    let is = |i: usize, t: &str| {
        if prefix && i == last {
            t.starts_with(terms[i].1.as_str())
        } else {
            t == terms[i].1
        }
    };
    // (position in the body minus position in the query, moves spent so far).
    let mut states: Vec<(i64, u32)> = tokens
        .iter()
        .filter(|(_, t)| is(0, t))
        .map(|(p, _)| (*p as i64 - terms[0].0 as i64, 0))
        .collect();
    for (i, (query_pos, _)) in terms.iter().enumerate().skip(1) {
        if states.is_empty() {
            return false;
        }
        let mut next: Vec<(i64, u32)> = Vec::new();
        for (p, t) in tokens {
            if !is(i, t) {
                continue;
            }
            let at = *p as i64 - *query_pos as i64;
            let best = states
                .iter()
                .map(|(s, spent)| spent.saturating_add(s.abs_diff(at) as u32))
                .min()
                .unwrap_or(u32::MAX);
            if best <= slop {
                next.push((at, best));
            }
        }
        states = next;
    }
    !states.is_empty()
}

/// The hits of `req` among the records of `entries` (a shard's head; entries at or below
/// `after_index` are skipped), sorted and cut as [`crate::ShardIndex::search`] cuts its
/// own: the first `n` after the cursor, `total` counting every match and `scanned` every
/// record of the tenant looked at.
pub(crate) fn search_entries(
    matcher: &RecordMatcher,
    entries: &[HeadEntry],
    after_index: u64,
    shard: u32,
    sort: Sort,
    after: Option<&Cursor>,
    n: usize,
) -> ShardHits {
    let mut found: Vec<(HitKey, &StoredRecord)> = Vec::new();
    let mut total = 0u64;
    let mut scanned = 0u64;
    for (log_index, b) in entries {
        if *log_index <= after_index || !matcher.tenant_matches(&b.batch) {
            continue;
        }
        scanned += b.batch.records.len() as u64;
        for (offset, r) in matcher.matching(b) {
            total += 1;
            let key = HitKey {
                timestamp_ns: r.timestamp_ns,
                shard,
                log_index: *log_index,
                offset: offset as u32,
            };
            if sort != Sort::Score && after.is_some_and(|c| !c.admits(&key)) {
                continue;
            }
            found.push((key, r));
        }
    }
    found.sort_by(|a, b| compare(sort, &a.0, 0.0, &b.0, 0.0));
    found.truncate(n);
    let hits = found
        .into_iter()
        .map(|(key, r)| Hit {
            key,
            score: 0.0,
            tenant: matcher.tenant.clone(),
            record: r.clone(),
        })
        .collect();
    ShardHits {
        hits,
        total,
        scanned,
    }
}

/// Adds the counts of `req` over the records of `entries` after `after_index` to `out`.
pub(crate) fn count_entries(
    req: &CountRequest,
    entries: &[HeadEntry],
    after_index: u64,
    out: &mut Vec<GroupCounts>,
) -> u64 {
    let (lo, hi) = req.span();
    let matcher = RecordMatcher::new(&req.query, &req.tenant, &[], lo, hi);
    let mut groups: HashMap<Vec<Option<String>>, Vec<u64>> = HashMap::new();
    let mut scanned = 0u64;
    for (log_index, b) in entries {
        if *log_index <= after_index || !matcher.tenant_matches(&b.batch) {
            continue;
        }
        scanned += b.batch.records.len() as u64;
        for (_, r) in matcher.matching(b) {
            if !req
                .filters
                .iter()
                .all(|f| (f.accepts)(label_value(r, &f.label).unwrap_or("")))
            {
                continue;
            }
            let values: Vec<Option<String>> = req
                .group_by
                .iter()
                .map(|s| label_value(r, s).map(str::to_owned))
                .collect();
            let k =
                (i128::from(r.timestamp_ns) - i128::from(req.origin_ns)) / i128::from(req.width_ns);
            let Ok(k) = usize::try_from(k) else { continue };
            if k >= req.buckets {
                continue;
            }
            groups.entry(values).or_insert_with(|| vec![0; req.buckets])[k] += 1;
        }
    }
    crate::count::merge_counts(
        out,
        groups
            .into_iter()
            .map(|(values, counts)| GroupCounts { values, counts })
            .collect(),
    );
    scanned
}

/// The stream label names of `tenant`'s head records in `[start_ns, end_ns)`, with those of
/// `service`, `namespace`, `pod`, `cluster` and `level` that have a value, as
/// [`crate::ShardIndex::label_names`] lists them from the index.
pub fn label_names(
    entries: &[HeadEntry],
    tenant: &str,
    start_ns: i64,
    end_ns: i64,
) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for r in head_records(entries, tenant, start_ns, end_ns) {
        for f in STD_FIELDS {
            if !f.value(r).is_empty() {
                out.insert(f.name().to_owned());
            }
        }
        out.extend(r.labels.keys().cloned());
    }
    out
}

/// The values of label `name` in `tenant`'s head records in `[start_ns, end_ns)`, as
/// [`crate::ShardIndex::label_values`] lists them from the index (a standard field's value
/// is a label value of its name).
pub fn label_values(
    entries: &[HeadEntry],
    tenant: &str,
    name: &str,
    start_ns: i64,
    end_ns: i64,
) -> std::collections::BTreeSet<String> {
    let std = StdField::of(name);
    let mut out = std::collections::BTreeSet::new();
    for r in head_records(entries, tenant, start_ns, end_ns) {
        if let Some(v) = std.map(|f| f.value(r)).filter(|v| !v.is_empty()) {
            out.insert(v.to_owned());
        }
        if let Some(v) = r.labels.get(name) {
            out.insert(v.clone());
        }
    }
    out
}

fn head_records<'e>(
    entries: &'e [HeadEntry],
    tenant: &str,
    start_ns: i64,
    end_ns: i64,
) -> impl Iterator<Item = &'e StoredRecord> + 'e {
    let tenant = tenant_or_default(tenant).to_owned();
    entries
        .iter()
        .filter(move |(_, b)| tenant_or_default(&b.batch.tenant) == tenant)
        .flat_map(|(_, b)| b.batch.records.iter())
        .filter(move |r| r.timestamp_ns >= start_ns && r.timestamp_ns < end_ns)
}

/// The value a record's label terms give `src` (a later name's value replacing an earlier
/// one's), as the index's count reads it: standard fields and stream labels, never
/// attributes.
fn label_value<'r>(r: &'r StoredRecord, src: &LabelSource) -> Option<&'r str> {
    let mut out = None;
    for name in &src.names {
        let v = match StdField::of(name) {
            Some(f) => Some(f.value(r)).filter(|v| !v.is_empty()),
            None => r.labels.get(name).map(String::as_str),
        };
        if v.is_some() {
            out = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<(usize, String)> {
        body_tokens(s)
    }

    #[test]
    fn phrases_follow_positions_and_slop() {
        let body = toks("connection to db reset by peer");
        assert!(phrase_matches(&body, &toks("reset by"), 0, false));
        assert!(!phrase_matches(&body, &toks("by reset"), 0, false));
        assert!(phrase_matches(&body, &toks("connection reset"), 2, false));
        assert!(!phrase_matches(&body, &toks("connection reset"), 1, false));
        assert!(phrase_matches(&body, &toks("db res"), 0, true));
        assert!(!phrase_matches(&body, &toks("to res"), 0, true));
    }

    #[test]
    fn ascii_pre_filter_never_refuses_a_token_that_is_there() {
        let m = RecordMatcher::new(
            &crate::parse_query("\"Reset BY\"").unwrap(),
            "",
            &[],
            0,
            i64::MAX,
        );
        let r = StoredRecord {
            timestamp_ns: 1,
            body: "connection RESET-by peer".into(),
            ..Default::default()
        };
        assert!(m.matches(&r));
    }
}
