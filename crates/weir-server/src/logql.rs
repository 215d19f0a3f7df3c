//! LogQL over Weir's index: the [`weir_logql::Source`] the `weir-logql` engine reads.
//!
//! The engine asks for the entries of a stream selector in a time range, in time order;
//! this module turns the selector's equality matchers and the `|=` needles the engine
//! hints at into an index query (a sound pre-filter: it may let through lines that do not
//! match, never drop one that does), reads the hits page by page through the same
//! [`Searcher`] as the search API (every shard, here or on a peer), and hands them over as
//! LogQL entries. The engine checks the selector and every filter again on each entry, so
//! the answer is what evaluating the query on every line would give.
//!
//! # Labels
//!
//! A record's stream labels are its labels plus its non-empty standard fields `service`,
//! `namespace`, `pod`, `cluster` and `level` (no label may take those names), with
//! `service_name` (the service) and `detected_level` (the level) as Grafana names them,
//! unless the record has a label of that name. Its structured metadata is its attributes
//! plus `trace_id` and `span_id`.
//!
//! # Reading in windows
//!
//! A page of the index costs a pass over every match in its time range (the top-N
//! collector sees them all), so paging through a long range with one cursor would cost the
//! square of its size. The reader instead walks the range in windows sized to hold about
//! one page, halving a window that overflowed and doubling one that held little.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use weir_index::{Cursor, Match, Pattern, Query, SearchRequest, Sort, StoredRecord};
use weir_logql::{Direction, EngineError, Entry, EntryIter, Hints, Labels, MatchOp, Matcher};
use weir_proto::{ApiError, Level};

use crate::search::{RemoteSearch, ScanMsg, ScanQueue, Searcher};

/// Hits asked of the index per page.
const PAGE: usize = 2_000;
/// The first window's span.
const FIRST_WINDOW_NS: i64 = 60 * 1_000_000_000;
/// Records per batch of a scan (`Source::scan`): the unit in which shards hand records to
/// the engine and the budget is checked.
const SCAN_BATCH: usize = 1_000;
/// Batches a scan's shards may read ahead of the engine; with [`SCAN_BATCH`], this bounds
/// a scan's records in memory to `(SCAN_QUEUED + shards) * SCAN_BATCH`: a full queue
/// stops the shards' readers until the engine takes a batch.
const SCAN_QUEUED: usize = 4;
/// How often a scan waiting for its shards checks its deadline and cancellation.
const SCAN_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// What a query read, for the answer's statistics and its limits.
#[derive(Debug, Default)]
pub struct ReadStats {
    /// Records handed to the engine.
    pub records: AtomicU64,
    /// Their body bytes.
    pub bytes: AtomicU64,
    /// Index pages fetched, and batches of a scan ([`weir_logql::Source::scan`]).
    pub pages: AtomicU64,
    /// Records counted from the index without being read (metric queries that only
    /// count lines: see [`weir_logql::Source::count`]).
    pub counted: AtomicU64,
    /// Shards no node answered for (the answer is partial).
    pub missing_shards: Mutex<Vec<u32>>,
}

/// Why a query stops early: its deadline, its client gone, its read budget spent.
pub struct Budget {
    /// When the query is answered 503.
    pub deadline: Instant,
    /// The timeout, for the message.
    pub timeout_ms: u64,
    /// The key that set it (`query.timeout_ms`, or the tenant's `query_timeout_ms`).
    pub timeout_key: String,
    /// Set when the client went away.
    pub cancelled: Arc<AtomicBool>,
    /// Most records the query may read (`query.records_scanned_max`).
    pub records_max: u64,
}

/// The index of every shard as a LogQL [`weir_logql::Source`], for one tenant.
pub struct IndexSource {
    searcher: Arc<Searcher>,
    tenant: String,
    rt: tokio::runtime::Handle,
    budget: Budget,
    /// What was read.
    pub stats: Arc<ReadStats>,
}

impl IndexSource {
    /// A source reading `tenant`'s records through `searcher`, on runtime `rt` (the engine
    /// runs on a blocking thread and waits for each page there).
    pub fn new(
        searcher: Arc<Searcher>,
        tenant: String,
        rt: tokio::runtime::Handle,
        budget: Budget,
    ) -> IndexSource {
        IndexSource {
            searcher,
            tenant,
            rt,
            budget,
            stats: Arc::default(),
        }
    }

    /// Hands `records` to the engine through `buffer`, counting them (a page or a scan's
    /// batch) in the query's statistics and against its read budget.
    fn hand_over(
        &self,
        records: impl ExactSizeIterator<Item = StoredRecord>,
        buffer: &mut VecDeque<Entry>,
    ) {
        let stats = &self.stats;
        stats.pages.fetch_add(1, Ordering::Relaxed);
        stats
            .records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let mut bytes = 0;
        buffer.extend(records.map(|r| {
            bytes += r.body.len() as u64;
            entry_of(r)
        }));
        stats.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// An error once the query is cancelled, past its deadline or over its read budget.
    fn check_budget(&self) -> Result<(), EngineError> {
        let b = &self.budget;
        if b.cancelled.load(Ordering::Relaxed) {
            return Err(EngineError::Source("the query was cancelled".to_owned()));
        }
        if Instant::now() > b.deadline {
            return Err(EngineError::Limit {
                what: "query.timeout_ms",
                limit: usize::try_from(b.timeout_ms).unwrap_or(usize::MAX),
                message: format!(
                    "the query ran past its timeout of {} ms ({}); narrow the selector or the \
                     time range",
                    b.timeout_ms, b.timeout_key
                ),
            });
        }
        let read = self.stats.records.load(Ordering::Relaxed);
        if read > b.records_max {
            return Err(EngineError::Limit {
                what: "query.records_scanned_max",
                limit: usize::try_from(b.records_max).unwrap_or(usize::MAX),
                message: format!(
                    "the query read more than {} records (query.records_scanned_max); narrow \
                     the selector, add a line filter with whole words, or shorten the range",
                    b.records_max
                ),
            });
        }
        Ok(())
    }
}

/// The index query for a selector and the engine's hints: the equality matchers as exact
/// label values, each hinted needle as its complete tokens or, without one, as a body
/// word containing its longest fragment (`*fragment*`); `*` when nothing narrows.
pub fn prefilter(selector: &[Matcher], hints: &Hints) -> Query {
    let mut all = Vec::new();
    for m in selector {
        if m.op == MatchOp::Eq && !m.value.is_empty() {
            all.push(equal(&m.name, &m.value));
        }
    }
    for alternatives in &hints.line_contains_all {
        let mut any = Vec::new();
        for needle in alternatives {
            let tokens = weir_index::complete_body_tokens(needle);
            if tokens.is_empty() {
                match infix_of(needle) {
                    Some(fragment) => {
                        any.push(Query::Match(Match {
                            field: None,
                            pattern: Pattern::Infix(fragment),
                        }));
                        continue;
                    }
                    None => {
                        // This alternative cannot be narrowed, so neither can the group.
                        any.clear();
                        break;
                    }
                }
            }
            let words: Vec<Query> = tokens
                .into_iter()
                .map(|t| {
                    Query::Match(Match {
                        field: None,
                        pattern: Pattern::Word(t),
                    })
                })
                .collect();
            any.push(and(words));
        }
        if !any.is_empty() {
            all.push(if any.len() == 1 {
                any.remove(0)
            } else {
                Query::Or(any)
            });
        }
    }
    and(all)
}

/// Shortest fragment worth an infix lookup: shorter ones are in too many words to narrow
/// anything, and cost a scan of the term dictionary all the same.
const INFIX_MIN_BYTES: usize = 3;

/// For a needle without a complete word: its longest run of ASCII letters and digits, lower
/// case, which every line containing the needle has inside one of its words (the run may
/// continue in the line on either side, but never across a non-alphanumeric character).
/// ASCII only, because lower-casing some other scripts depends on the letters around
/// (Greek's final sigma), so a lower-cased fragment could differ from the indexed word.
fn infix_of(needle: &str) -> Option<String> {
    needle
        .split(|c: char| !c.is_alphanumeric())
        .filter(|run| run.is_ascii() && run.len() >= INFIX_MIN_BYTES)
        .max_by_key(|run| run.len())
        .map(str::to_ascii_lowercase)
}

fn and(mut qs: Vec<Query>) -> Query {
    match qs.len() {
        0 => Query::All,
        1 => qs.remove(0),
        _ => Query::And(qs),
    }
}

/// The index query every record whose stream label `name` is `value` matches (see
/// [`entry_of`] for where a stream label comes from).
///
/// - `service`, `namespace`, `pod`, `cluster`, `level`: the record field (no label may
///   take these names, so the field is the label); a level that is not a canonical name
///   matches no record.
/// - `service_name`, `detected_level`: a label of that name if the record has one, else
///   the service or level, so either.
/// - Any other name: the label, which the index query also finds among attributes of
///   that name (more than needed, never less).
fn equal(name: &str, value: &str) -> Query {
    let exact = |field: &str| {
        Query::Match(Match {
            field: Some(field.to_owned()),
            pattern: Pattern::Phrase {
                text: value.to_owned(),
                slop: 0,
            },
        })
    };
    // Records always have a canonical level: another level value is in no record field.
    let in_field = |field: &str| field != "level" || Level::from_canonical(value).is_some();
    match (name, field_of_alias(name)) {
        ("level", _) if !in_field("level") => Query::Not(Box::new(Query::All)),
        (alias, Some(field)) if in_field(field) => Query::Or(vec![exact(field), exact(alias)]),
        (other, _) => exact(other),
    }
}

/// Grafana's names for two record fields: a stream label `service_name` or
/// `detected_level` where the record has a label of that name, else the field.
pub const GRAFANA_ALIASES: [(&str, &str); 2] =
    [("service_name", "service"), ("detected_level", "level")];

/// The record field a Grafana alias stands for, if `name` is one.
pub fn field_of_alias(name: &str) -> Option<&'static str> {
    GRAFANA_ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map(|(_, field)| *field)
}

/// A stored record as a LogQL entry (see the module docs for the labels).
pub fn entry_of(r: StoredRecord) -> Entry {
    let mut stream: Labels = r.labels.into_iter().collect();
    let level = Level::from_u32(r.level).map(Level::as_str).unwrap_or("");
    let fields = [
        ("service", r.service.as_str()),
        ("namespace", r.namespace.as_str()),
        ("pod", r.pod.as_str()),
        ("cluster", r.cluster.as_str()),
        ("level", level),
    ];
    let aliases = GRAFANA_ALIASES.iter().map(|(alias, field)| {
        let value = fields
            .iter()
            .find(|(f, _)| f == field)
            .map_or("", |(_, v)| *v);
        (*alias, value)
    });
    for (name, value) in fields.into_iter().chain(aliases) {
        if !value.is_empty() {
            stream
                .entry(name.to_owned())
                .or_insert_with(|| value.to_owned());
        }
    }
    let mut metadata: Labels = r.attributes.into_iter().collect();
    for (name, value) in [("trace_id", r.trace_id), ("span_id", r.span_id)] {
        if !value.is_empty() {
            metadata.entry(name.to_owned()).or_insert(value);
        }
    }
    Entry {
        ts_ns: r.timestamp_ns,
        line: r.body,
        stream,
        metadata,
    }
}

/// Most counters (groups × buckets, 8 bytes each) one count may hold per shard: 32 MiB.
/// A count needing more reads the records instead, bounded by the engine's limits.
const COUNT_CELLS_MAX: usize = 4 << 20;

/// Where the value of stream label `name` comes from in the index's label terms (see
/// [`entry_of`]): a Grafana alias is the record's label of that name where it has one,
/// else the field it stands for.
fn label_source(name: &str) -> weir_index::LabelSource {
    match field_of_alias(name) {
        Some(field) => weir_index::LabelSource {
            names: vec![field.to_owned(), name.to_owned()],
        },
        None => weir_index::LabelSource::label(name),
    }
}

impl weir_logql::Source for IndexSource {
    /// Counts from the index when every shard is live here; the answer is exact because
    /// the index's label terms hold exactly the stream labels [`entry_of`] gives
    /// (standard fields and labels, never attributes).
    fn count(
        &self,
        req: &weir_logql::CountRequest<'_>,
    ) -> Option<Result<weir_logql::GroupCounts, EngineError>> {
        let filters = req
            .selector
            .iter()
            .map(|m| {
                let m = m.clone();
                weir_index::LabelFilter {
                    label: label_source(&m.name),
                    accepts: Arc::new(move |v: &str| m.matches(v)),
                }
            })
            .collect();
        let request = weir_index::CountRequest {
            tenant: self.tenant.clone(),
            query: Query::All,
            start_ns: i64::MIN,
            end_ns: i64::MAX,
            filters,
            group_by: req.group_by.iter().map(|g| label_source(g)).collect(),
            origin_ns: req.origin_ns,
            width_ns: req.width_ns,
            buckets: req.buckets,
            cells_max: COUNT_CELLS_MAX,
        };
        let groups = match self.rt.block_on(self.searcher.count_local(request))? {
            Ok(groups) => groups,
            // Too many counters: reading the records is bounded by the engine instead.
            Err(e) if e.kind == weir_proto::ErrorKind::InvalidArgument => return None,
            Err(e) => return Some(Err(EngineError::Source(e.message))),
        };
        let mut out = Vec::with_capacity(groups.len());
        for g in groups {
            let labels: Labels = req
                .group_by
                .iter()
                .zip(g.values)
                .filter_map(|(name, v)| v.map(|v| (name.clone(), v)))
                .collect();
            let n: u64 = g.counts.iter().sum();
            self.stats.counted.fetch_add(n, Ordering::Relaxed);
            out.push((labels, g.counts));
        }
        Some(Ok(out))
    }

    /// Reads every shard in the order its index holds the records, when all are live
    /// here ([`Searcher::scan_local`]); else pages through them oldest first.
    fn scan(
        &self,
        selector: &[Matcher],
        hints: &Hints,
        start_ns: i64,
        end_ns: i64,
    ) -> Result<EntryIter<'_>, EngineError> {
        let request = SearchRequest {
            query: prefilter(selector, hints),
            tenant: self.tenant.clone(),
            start_ns,
            end_ns,
            levels: Vec::new(),
            limit: 0,
            sort: Sort::TimeAsc,
            after: None,
            // The engine checks every line against the query's line filters.
            prefilter: true,
        };
        match self
            .searcher
            .scan_local(&self.rt, request, SCAN_BATCH, SCAN_QUEUED)
        {
            Some(queue) => Ok(Box::new(Buffered::new(
                Scan {
                    source: self,
                    queue,
                    finished: 0,
                },
                false,
            ))),
            None => self.select(selector, hints, start_ns, end_ns, Direction::Forward),
        }
    }

    fn select(
        &self,
        selector: &[Matcher],
        hints: &Hints,
        start_ns: i64,
        end_ns: i64,
        direction: Direction,
    ) -> Result<EntryIter<'_>, EngineError> {
        let query = prefilter(selector, hints);
        Ok(Box::new(Buffered::new(
            Pages {
                source: self,
                text: query.to_string(),
                query,
                lo: start_ns,
                hi: end_ns,
                window_ns: FIRST_WINDOW_NS,
                forward: direction == Direction::Forward,
                cursor: None,
                window_end: None,
            },
            start_ns >= end_ns,
        )))
    }
}

/// The entries of one `select`, read window by window.
struct Pages<'a> {
    source: &'a IndexSource,
    query: Query,
    text: String,
    /// What is left to read: `[lo, hi)`.
    lo: i64,
    hi: i64,
    window_ns: i64,
    forward: bool,
    /// Within the current window: where the next page starts.
    cursor: Option<Cursor>,
    /// The far edge of the window being paged through, if one is.
    window_end: Option<i64>,
}

/// Reads entries a batch at a time, for [`Buffered`].
trait Fill {
    /// Appends the next entries to `buffer`; true once there are no more.
    fn fill(&mut self, buffer: &mut VecDeque<Entry>) -> Result<bool, EngineError>;
}

/// The entries a [`Fill`] reads, then the error that stopped it, if one did.
struct Buffered<F> {
    fill: F,
    buffer: VecDeque<Entry>,
    done: bool,
}

impl<F: Fill> Buffered<F> {
    fn new(fill: F, done: bool) -> Self {
        Buffered {
            fill,
            buffer: VecDeque::new(),
            done,
        }
    }
}

impl<F: Fill> Iterator for Buffered<F> {
    type Item = Result<Entry, EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                return Some(Ok(e));
            }
            if self.done {
                return None;
            }
            match self.fill.fill(&mut self.buffer) {
                Ok(done) => self.done = done,
                Err(e) => {
                    // Dropping `fill` with the iterator ends its reading (a scan's readers
                    // stop at their next batch).
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Fill for Pages<'_> {
    /// Reads the next page into the buffer; true at the end of the range.
    fn fill(&mut self, buffer: &mut VecDeque<Entry>) -> Result<bool, EngineError> {
        self.source.check_budget()?;
        let (w_lo, w_hi) = match self.window_end {
            Some(edge) if self.forward => (self.lo, edge),
            Some(edge) => (edge, self.hi),
            None if self.forward => (self.lo, self.hi.min(self.lo.saturating_add(self.window_ns))),
            None => (self.lo.max(self.hi.saturating_sub(self.window_ns)), self.hi),
        };
        self.window_end = Some(if self.forward { w_hi } else { w_lo });
        let request = SearchRequest {
            query: self.query.clone(),
            tenant: self.source.tenant.clone(),
            start_ns: w_lo,
            end_ns: w_hi,
            levels: Vec::new(),
            limit: PAGE,
            sort: if self.forward {
                Sort::TimeAsc
            } else {
                Sort::TimeDesc
            },
            after: self.cursor,
            // The engine checks every line against the query's line filters.
            prefilter: true,
        };
        let page = self
            .source
            .rt
            .block_on(self.source.searcher.search(RemoteSearch {
                request,
                query: self.text.clone(),
            }))
            .map_err(|e: ApiError| EngineError::Source(e.message))?;
        if !page.missing_shards.is_empty() {
            let mut missing = self
                .source
                .stats
                .missing_shards
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            missing.extend(&page.missing_shards);
            missing.sort_unstable();
            missing.dedup();
        }
        let full = page.hits.len() >= PAGE;
        self.source
            .hand_over(page.hits.into_iter().map(|h| h.record), buffer);
        match page.next {
            Some(next) if full => {
                // The window holds more than a page: go on in it, and try a smaller one next.
                self.cursor = Some(next);
                self.window_ns = (self.window_ns / 2).max(1);
            }
            _ => {
                // The window is read: move past it.
                if self.forward {
                    self.lo = w_hi;
                } else {
                    self.hi = w_lo;
                }
                self.cursor = None;
                self.window_end = None;
                if buffer.len() < PAGE / 4 {
                    self.window_ns = self.window_ns.saturating_mul(2);
                }
                return Ok(self.lo >= self.hi);
            }
        }
        Ok(false)
    }
}

/// The entries of one [`weir_logql::Source::scan`] over shards all live here: batches
/// from the shards' readers, in the order they arrive.
struct Scan<'a> {
    source: &'a IndexSource,
    queue: ScanQueue,
    /// Readers that sent [`ScanMsg::Done`].
    finished: usize,
}

impl Fill for Scan<'_> {
    /// Waits for the next batch, checking the budget at least every [`SCAN_POLL`]; true
    /// when every shard's reader has finished.
    fn fill(&mut self, buffer: &mut VecDeque<Entry>) -> Result<bool, EngineError> {
        use std::sync::mpsc::RecvTimeoutError;
        loop {
            self.source.check_budget()?;
            match self.queue.rx.recv_timeout(SCAN_POLL) {
                Ok(ScanMsg::Batch(records)) => {
                    self.source.hand_over(records.into_iter(), buffer);
                    return Ok(false);
                }
                Ok(ScanMsg::Done) => self.finished += 1,
                Ok(ScanMsg::Failed(e)) => return Err(EngineError::Source(e.message)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) if self.finished == self.queue.shards => {
                    return Ok(true);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(EngineError::Source(format!(
                        "{} of {} shards' readers stopped before reading every match",
                        self.queue.shards - self.finished,
                        self.queue.shards
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(q: &str) -> weir_logql::LogExpr {
        match weir_logql::parse(q).unwrap() {
            weir_logql::Expr::Log(l) => l,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn equality_matchers_and_whole_words_of_needles_narrow_the_index_query() {
        let l = sel(
            r#"{app="api", service_name="pay", env!="dev", pod=~"a.*"} |= "rror: Timeout after" |= "x" or "id=7 ""#,
        );
        let q = prefilter(&l.selector, &weir_logql::hints(&l));
        assert_eq!(
            q.to_string(),
            r#"app:"api" AND (service:"pay" OR service_name:"pay") AND timeout"#,
            "the `or` group has an alternative without a whole word, so it cannot narrow"
        );
        let l = sel(r#"{app="api"} |= " disk full " or " oom ""#);
        let q = prefilter(&l.selector, &weir_logql::hints(&l));
        assert_eq!(q.to_string(), r#"app:"api" AND ((disk AND full) OR oom)"#);
    }

    #[test]
    fn a_needle_without_a_whole_word_narrows_by_its_longest_fragment() {
        let l = sel(r#"{app="api"} |= "4bf92f35" |= "id=Declined" |= "é-x" "#);
        assert_eq!(
            prefilter(&l.selector, &weir_logql::hints(&l)).to_string(),
            r#"app:"api" AND *4bf92f35* AND *declined*"#,
            "fragments touch the needle's ends, so only an infix is sound; 'é' and 'x' are too short or not ASCII"
        );
    }

    #[test]
    fn grafanas_names_find_a_label_of_that_name_or_the_field() {
        let l = sel(r#"{detected_level="warn", level="WARNING"}"#);
        assert_eq!(
            prefilter(&l.selector, &weir_logql::hints(&l)).to_string(),
            r#"(level:"warn" OR detected_level:"warn") AND NOT *"#
        );
    }

    #[test]
    fn nothing_to_narrow_reads_everything_of_the_tenant() {
        let l = sel(r#"{app=~".+"} |~ "err.*""#);
        assert_eq!(prefilter(&l.selector, &weir_logql::hints(&l)), Query::All);
    }

    #[test]
    fn a_record_becomes_an_entry_with_grafanas_label_names() {
        let r = StoredRecord {
            timestamp_ns: 5,
            level: Level::Warn as u32,
            body: "hello".into(),
            service: "pay".into(),
            namespace: "shop".into(),
            labels: [("app".to_owned(), "web".to_owned())].into(),
            attributes: [("user".to_owned(), "7".to_owned())].into(),
            trace_id: "ab".repeat(16),
            ..Default::default()
        };
        let e = entry_of(r);
        let stream: Vec<(&str, &str)> = e
            .stream
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            stream,
            [
                ("app", "web"),
                ("detected_level", "warn"),
                ("level", "warn"),
                ("namespace", "shop"),
                ("service", "pay"),
                ("service_name", "pay")
            ]
        );
        assert_eq!(e.metadata["user"], "7");
        assert_eq!(e.metadata["trace_id"], "ab".repeat(16));
        assert_eq!((e.ts_ns, e.line.as_str()), (5, "hello"));
    }
}
