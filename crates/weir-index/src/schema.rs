//! The tantivy schema, turning records into documents, and queries into tantivy queries.
//!
//! Term layouts (all raw, untokenized):
//!
//! | field | term | used for |
//! | --- | --- | --- |
//! | `tenant` | the value | every search's tenant filter, tenant retention |
//! | `trace_id`, `span_id` | the id's 6-hex-digit key ([`crate::idkey`]); 8 digits, or the whole id, in documents indexed earlier | exact lookup |
//! | `labels` | `tenant \0 name \0 value` for stream labels and the non-empty standard label fields (service, namespace, pod, cluster, level: its canonical name, `warn`) | `name:value` (standard fields included), the level filter, label names and values APIs, counts by label |
//! | `label_names` | [`LONG_TOKEN_MARKER`] only (and `tenant \0 name` in documents indexed before label names were read off `labels`) | infix lookups |
//! | `attrs` | `key \0 value`; for id-like values `key \0 \x01` and the value's 6-hex-digit key, and `key \0 \x02` and its first 3 characters ([`crate::idkey`]) | `key:value`, `key:prefix*` |
//! | `service`, `namespace`, `pod`, `cluster`, `level` | nothing (the value, in documents indexed before they were read off `labels`) | kept so that old partitions' schemas still match |
//!
//! Every record's standard fields are in `labels` anyway (the label APIs need them there),
//! so they are indexed once, there: a term of its own field and a `label_names` term for
//! every label cost indexing CPU and disk in every document and answered nothing `labels`
//! does not. Label terms carry the tenant so that the label APIs, which read term
//! dictionaries directly, never show one tenant another's names.
//!
//! No exact field keeps field norms: they are only read to score, and a term of an exact
//! field scores the same in every document that has it. Partitions written with them
//! open all the same ([`compatible`]).

use std::ops::Bound;
use std::path::Path;

use crate::exclude::Excluded;
use prost::Message;
use tantivy::query::{
    AllQuery, BooleanQuery, ConstScoreQuery, EmptyQuery, Occur, PhrasePrefixQuery, PhraseQuery,
    Query as TQuery, RangeQuery, TermQuery, TermSetQuery,
};
use tantivy::schema::{
    BytesOptions, Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions,
    Value, FAST, STORED, TEXT,
};
use tantivy::tokenizer::{LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer};
use tantivy::{TantivyDocument, Term};
use weir_proto::v1::StoredRecord;
use weir_proto::Level;

use crate::idkey::{
    attr_head_prefix, attr_head_term, attr_key_term, id_key, id_like, IdKind, IdQuery, HEAD_CHARS,
};
use crate::query::{Match, Pattern, Query, BODY_FIELD};
use crate::rarewords::RareWords;

/// How many terms a prefix may expand to. Past this the prefix matches the first terms
/// only (in byte order); a prefix this unselective is not a useful query anyway.
pub(crate) const MAX_PREFIX_EXPANSIONS: u32 = 100_000;
/// How many terms the last word of a multi-word phrase prefix may expand to.
pub(crate) const MAX_PHRASE_PREFIX_EXPANSIONS: u32 = 1_000;

/// The standard fields that are also labels of every record that has them: indexed only
/// as `labels` terms (the module doc), and decided on head records by value.
#[derive(Clone, Copy, Debug)]
pub(crate) enum StdField {
    Level,
    Service,
    Namespace,
    Pod,
    Cluster,
}

pub(crate) const STD_FIELDS: [StdField; 5] = [
    StdField::Level,
    StdField::Service,
    StdField::Namespace,
    StdField::Pod,
    StdField::Cluster,
];

impl StdField {
    pub(crate) fn name(self) -> &'static str {
        match self {
            StdField::Level => "level",
            StdField::Service => "service",
            StdField::Namespace => "namespace",
            StdField::Pod => "pod",
            StdField::Cluster => "cluster",
        }
    }

    pub(crate) fn of(name: &str) -> Option<StdField> {
        Some(match name {
            "level" => StdField::Level,
            "service" => StdField::Service,
            "namespace" => StdField::Namespace,
            "pod" => StdField::Pod,
            "cluster" => StdField::Cluster,
            _ => return None,
        })
    }

    /// The record's value of the field; empty when it has none.
    pub(crate) fn value(self, r: &StoredRecord) -> &str {
        match self {
            StdField::Level => Level::from_u32(r.level).map_or("", Level::as_str),
            StdField::Service => &r.service,
            StdField::Namespace => &r.namespace,
            StdField::Pod => &r.pod,
            StdField::Cluster => &r.cluster,
        }
    }
}

pub(crate) const F_TIMESTAMP: &str = "timestamp_ns";
pub(crate) const F_LOG_INDEX: &str = "log_index";
pub(crate) const F_OFFSET: &str = "offset";
pub(crate) const F_STREAM: &str = "stream";

/// What translating a query needs to know of the partition it runs in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PartContext<'a> {
    /// Its documents carry the long-token marker ([`LONG_TOKEN_MARKER`]).
    pub marked: bool,
    /// Its directory, where an infix lookup may read a segment's term file ahead.
    pub dir: &'a Path,
}

/// Handles to every field of the schema.
#[derive(Clone, Debug)]
pub(crate) struct Fields {
    pub schema: Schema,
    pub timestamp: Field,
    pub tenant: Field,
    pub trace_id: Field,
    pub span_id: Field,
    pub labels: Field,
    pub label_names: Field,
    pub attrs: Field,
    pub body: Field,
    pub log_index: Field,
    pub offset: Field,
    pub record: Field,
    /// The record's stream (service, namespace, pod, cluster, labels) as a dictionary-
    /// encoded column ([`stored_parts`]); partitions created before it lack the field.
    pub stream: Field,
    /// Body words of searched segments, for infix lookups.
    pub infix: std::sync::Arc<crate::infix::InfixCache>,
    /// Partitions are opened with their lookup files mapped for random access
    /// ([`crate::IndexOptions::random_access_maps`]).
    pub random_access_maps: bool,
}

impl Fields {
    /// The schema's fields; infix lookups keep body words in `infix`; partitions are
    /// opened with `random_access_maps` ([`crate::IndexOptions::random_access_maps`]).
    pub fn new(
        infix: std::sync::Arc<crate::infix::InfixCache>,
        random_access_maps: bool,
    ) -> Fields {
        let mut b = Schema::builder();
        // Columns only: range queries on a fast field read the column (tantivy's
        // `RangeQuery`), so terms of these would be written and never read.
        let num_fast = NumericOptions::default().set_fast();
        // Untokenized, document ids only, no field norms (see the module doc).
        let exact = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("raw")
                .set_index_option(IndexRecordOption::Basic)
                .set_fieldnorms(false),
        );
        let timestamp = b.add_i64_field(F_TIMESTAMP, num_fast.clone());
        // The standard fields' own fields take no terms any more (the module doc); they
        // stay, in their places, so that earlier partitions' schemas still match.
        b.add_text_field("level", exact.clone());
        let tenant = b.add_text_field("tenant", exact.clone());
        b.add_text_field("service", exact.clone());
        b.add_text_field("namespace", exact.clone());
        b.add_text_field("pod", exact.clone());
        b.add_text_field("cluster", exact.clone());
        let trace_id = b.add_text_field("trace_id", exact.clone());
        let span_id = b.add_text_field("span_id", exact.clone());
        let labels = b.add_text_field("labels", exact.clone());
        let label_names = b.add_text_field("label_names", exact.clone());
        let attrs = b.add_text_field("attrs", exact);
        let body = b.add_text_field(BODY_FIELD, TEXT);
        let log_index = b.add_u64_field(F_LOG_INDEX, num_fast);
        let offset = b.add_u64_field(F_OFFSET, FAST);
        let record = b.add_bytes_field("record", BytesOptions::from(STORED));
        // Last, so that the schemas of partitions created before it are this one's prefix
        // ([`compatible`]).
        let stream = b.add_bytes_field(F_STREAM, BytesOptions::default().set_fast());
        Fields {
            schema: b.build(),
            timestamp,
            tenant,
            trace_id,
            span_id,
            labels,
            label_names,
            attrs,
            body,
            log_index,
            offset,
            record,
            stream,
            infix,
            random_access_maps,
        }
    }

    /// Where a copy of a segment's body words reads its term file through first: in the
    /// partition directory `dir` when the maps are random ([`crate::infix::InfixCache::words`]).
    pub fn read_ahead<'a>(&self, dir: &'a Path) -> Option<&'a Path> {
        self.random_access_maps.then_some(dir)
    }

    /// The document for one record of entry `log_index` at position `offset` in its batch,
    /// laid out as `layout` says.
    pub fn document(
        &self,
        tenant: &str,
        log_index: u64,
        offset: u32,
        r: &StoredRecord,
        layout: &Layout<'_>,
    ) -> TantivyDocument {
        let mut d = TantivyDocument::new();
        d.add_i64(self.timestamp, r.timestamp_ns);
        d.add_text(self.tenant, tenant);
        for f in STD_FIELDS {
            let value = f.value(r);
            if !value.is_empty() {
                d.add_text(self.labels, label_term(tenant, f.name(), value));
            }
        }
        if !r.trace_id.is_empty() {
            d.add_text(self.trace_id, id_key(&r.trace_id));
        }
        if !r.span_id.is_empty() {
            d.add_text(self.span_id, id_key(&r.span_id));
        }
        for (k, v) in &r.labels {
            d.add_text(self.labels, label_term(tenant, k, v));
        }
        for (k, v) in &r.attributes {
            if layout.keys(k, v) {
                d.add_text(self.attrs, attr_key_term(k, v));
                d.add_text(self.attrs, attr_head_term(k, v));
            } else {
                d.add_text(self.attrs, attr_term(k, v));
            }
        }
        d.add_text(self.body, &r.body);
        if has_long_word(&r.body) {
            d.add_text(self.label_names, LONG_TOKEN_MARKER);
        }
        d.add_u64(self.log_index, log_index);
        d.add_u64(self.offset, u64::from(offset));
        if layout.streams {
            let (rest, stream) = stored_parts(r);
            d.add_bytes(self.record, &rest);
            d.add_bytes(self.stream, &stream);
        } else {
            d.add_bytes(self.record, &stored_bytes(r));
        }
        d
    }

    /// The tantivy query for a parsed query, within `tenant` (label terms carry it), for a
    /// partition `part`. With
    /// `loose` (a caller that checks every hit itself: [`crate::SearchRequest::prefilter`])
    /// the body words of a conjunction may match a superset ([`crate::rarewords`]); what
    /// is under a `NOT` is always exact, or the superset would exclude too much.
    pub fn translate(
        &self,
        q: &Query,
        tenant: &str,
        part: PartContext<'_>,
        loose: bool,
    ) -> Box<dyn TQuery> {
        match q {
            Query::All => Box::new(AllQuery),
            Query::Match(m) => self.translate_match(m, tenant, part),
            Query::And(children) => {
                let mut clauses: Vec<(Occur, Box<dyn TQuery>)> = Vec::new();
                let mut words = Vec::new();
                for c in children {
                    match c {
                        Query::Not(inner) => clauses.push((
                            Occur::MustNot,
                            Box::new(Excluded(self.translate(inner, tenant, part, false))),
                        )),
                        Query::All => {}
                        Query::Match(m) if loose && self.body_words(m, &mut words) => {}
                        other => {
                            clauses.push((Occur::Must, self.translate(other, tenant, part, loose)))
                        }
                    }
                }
                match words.len() {
                    0 => {}
                    1 => clauses.push((
                        Occur::Must,
                        Box::new(TermQuery::new(words.remove(0), IndexRecordOption::Basic)),
                    )),
                    _ => clauses.push((Occur::Must, Box::new(RareWords::new(self.body, words)))),
                }
                if !clauses.iter().any(|(o, _)| *o == Occur::Must) {
                    // tantivy matches nothing with only negative clauses.
                    clauses.push((Occur::Must, Box::new(AllQuery)));
                }
                if clauses.len() == 1 && clauses[0].0 == Occur::Must {
                    // One clause is that clause (an `AllQuery` then stays recognisable).
                    return clauses.remove(0).1;
                }
                Box::new(BooleanQuery::new(clauses))
            }
            Query::Or(children) => Box::new(BooleanQuery::new(
                children
                    .iter()
                    .map(|c| (Occur::Should, self.translate(c, tenant, part, loose)))
                    .collect(),
            )),
            Query::Not(inner) => Box::new(BooleanQuery::new(vec![
                (Occur::Must, Box::new(AllQuery) as Box<dyn TQuery>),
                (
                    Occur::MustNot,
                    Box::new(Excluded(self.translate(inner, tenant, part, false))),
                ),
            ])),
        }
    }

    /// Adds the tokens of a body word or phrase to `words` (a phrase's tokens in any
    /// order: a superset of the phrase); false, adding nothing, for any other clause.
    fn body_words(&self, m: &Match, words: &mut Vec<Term>) -> bool {
        if m.field.as_deref().is_some_and(|f| f != BODY_FIELD) {
            return false;
        }
        let (Pattern::Word(text) | Pattern::Phrase { text, .. }) = &m.pattern else {
            return false;
        };
        words.extend(
            body_tokens(text)
                .into_iter()
                .map(|(_, t)| Term::from_field_text(self.body, &t)),
        );
        true
    }

    fn translate_match(&self, m: &Match, tenant: &str, part: PartContext<'_>) -> Box<dyn TQuery> {
        let field = m.field.as_deref().filter(|f| *f != BODY_FIELD);
        let Some(name) = field else {
            if let Pattern::Infix(fragment) = &m.pattern {
                return self.infix_query(fragment, part);
            }
            return self.body_query(&m.pattern);
        };
        let id = match name {
            "trace_id" => Some((self.trace_id, IdKind::Trace)),
            "span_id" => Some((self.span_id, IdKind::Span)),
            _ => None,
        };
        if let Some((field, kind)) = id {
            return self.id_query(field, kind, &m.pattern);
        }
        if StdField::of(name).is_some() {
            return exact_query(self.labels, &label_prefix(tenant, name), &m.pattern);
        }
        // A stream label or an attribute.
        let label = exact_query(self.labels, &label_prefix(tenant, name), &m.pattern);
        let attr = exact_query(self.attrs, &attr_prefix(name), &m.pattern);
        let mut clauses = vec![(Occur::Should, label), (Occur::Should, attr)];
        // Id-like values may be indexed by key ([`crate::idkey`]): a value is also looked
        // up by its key, checked against the record; a prefix also by the heads.
        let keyed: Option<Box<dyn TQuery>> = match &m.pattern {
            Pattern::Word(v) | Pattern::Phrase { text: v, .. } if id_like(v) => {
                Some(Box::new(IdQuery::attr(self.attrs, name, v, self.record)))
            }
            // Only a prefix of hex digits and dashes may start an id-like value: a short one
            // is a prefix of heads, a longer one checks the records with its head. (The
            // parser refuses an empty prefix; the whole-value clause would expand over the
            // keyed terms too.)
            Pattern::Prefix(v) | Pattern::PhrasePrefix(v)
                if !v.is_empty() && v.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') =>
            {
                Some(if v.len() <= HEAD_CHARS {
                    exact_query(
                        self.attrs,
                        &attr_head_prefix(name),
                        &Pattern::Prefix(v.clone()),
                    )
                } else {
                    Box::new(IdQuery::attr_prefix(self.attrs, name, v, self.record))
                })
            }
            _ => None,
        };
        clauses.extend(keyed.map(|q| (Occur::Should, q)));
        Box::new(BooleanQuery::new(clauses))
    }

    /// A trace or span id lookup: the id's keys, checked against the stored record, or,
    /// in documents indexed before keys, the whole id ([`crate::idkey`]). Ids are stored
    /// in lower case. The parser refuses prefixes of ids.
    fn id_query(&self, field: Field, kind: IdKind, p: &Pattern) -> Box<dyn TQuery> {
        let (Pattern::Word(v) | Pattern::Phrase { text: v, .. }) = p else {
            return Box::new(EmptyQuery);
        };
        let id = v.to_ascii_lowercase();
        Box::new(BooleanQuery::new(vec![
            (
                Occur::Should,
                Box::new(IdQuery::new(field, kind, &id, self.record)) as Box<dyn TQuery>,
            ),
            (
                Occur::Should,
                Box::new(TermQuery::new(
                    Term::from_field_text(field, &id),
                    IndexRecordOption::Basic,
                )),
            ),
        ]))
    }

    /// Body words containing `fragment` (letters and digits, lower case, as the parser
    /// leaves it): every body term containing it, plus every document whose body had a
    /// word too long to be indexed ([`LONG_TOKEN_MARKER`]), which may hold the fragment.
    /// Where documents are not marked, every document.
    fn infix_query(&self, fragment: &str, part: PartContext<'_>) -> Box<dyn TQuery> {
        if !part.marked {
            return Box::new(AllQuery);
        }
        let words: Box<dyn TQuery> = Box::new(crate::infix::InfixQuery {
            field: self.body,
            fragment: fragment.to_owned(),
            cache: self.infix.clone(),
            read_ahead: self.read_ahead(part.dir).map(Path::to_path_buf),
        });
        Box::new(BooleanQuery::new(vec![
            (Occur::Should, words),
            (
                Occur::Should,
                Box::new(TermQuery::new(
                    Term::from_field_text(self.label_names, LONG_TOKEN_MARKER),
                    IndexRecordOption::Basic,
                )),
            ),
        ]))
    }

    fn body_query(&self, p: &Pattern) -> Box<dyn TQuery> {
        let (text, slop, prefix) = match p {
            Pattern::Word(w) => (w.as_str(), 0, false),
            Pattern::Infix(_) => return Box::new(EmptyQuery),
            Pattern::Phrase { text, slop } => (text.as_str(), *slop, false),
            Pattern::Prefix(t) | Pattern::PhrasePrefix(t) => (t.as_str(), 0, true),
        };
        let mut terms = body_tokens(text)
            .into_iter()
            .map(|(pos, t)| (pos, Term::from_field_text(self.body, &t)))
            .collect::<Vec<_>>();
        match (terms.len(), prefix) {
            (0, _) => Box::new(EmptyQuery),
            (1, false) => Box::new(TermQuery::new(
                terms.remove(0).1,
                IndexRecordOption::WithFreqs,
            )),
            (1, true) => {
                let mut q = PhrasePrefixQuery::new_with_offset(terms);
                q.set_max_expansions(MAX_PREFIX_EXPANSIONS);
                Box::new(q)
            }
            (_, false) => Box::new(PhraseQuery::new_with_offset_and_slop(terms, slop)),
            (_, true) => {
                let mut q = PhrasePrefixQuery::new_with_offset(terms);
                q.set_max_expansions(MAX_PHRASE_PREFIX_EXPANSIONS);
                Box::new(q)
            }
        }
    }

    /// `tenant AND levels AND time range` around `user`, the filters scoring nothing.
    pub fn filtered(
        &self,
        user: Box<dyn TQuery>,
        tenant: &str,
        levels: &[Level],
        range: Option<(i64, i64)>,
        through: Option<u64>,
    ) -> Box<dyn TQuery> {
        let mut clauses: Vec<(Occur, Box<dyn TQuery>)> = Vec::with_capacity(5);
        // "Everything" adds nothing to the tenant's term but an intersection to walk; the
        // tenant's term then scores as it would have (1 per document).
        let everything = user.is::<AllQuery>();
        if !everything {
            clauses.push((Occur::Must, user));
        }
        clauses.push((
            Occur::Must,
            Box::new(ConstScoreQuery::new(
                Box::new(TermQuery::new(
                    Term::from_field_text(self.tenant, tenant),
                    IndexRecordOption::Basic,
                )),
                if everything { 1.0 } else { 0.0 },
            )),
        ));
        if !levels.is_empty() {
            let terms = levels.iter().map(|l| {
                Term::from_field_text(self.labels, &label_term(tenant, "level", l.as_str()))
            });
            clauses.push((
                Occur::Must,
                Box::new(ConstScoreQuery::new(
                    Box::new(TermSetQuery::new(terms)),
                    0.0,
                )),
            ));
        }
        if let Some((start, end)) = range {
            clauses.push((
                Occur::Must,
                Box::new(ConstScoreQuery::new(
                    Box::new(RangeQuery::new(
                        Bound::Included(Term::from_field_i64(self.timestamp, start)),
                        Bound::Excluded(Term::from_field_i64(self.timestamp, end)),
                    )),
                    0.0,
                )),
            ));
        }
        if let Some(through) = through {
            // Entries after `through` are answered from the log's head (crate::head).
            clauses.push((
                Occur::Must,
                Box::new(ConstScoreQuery::new(
                    Box::new(RangeQuery::new(
                        Bound::Unbounded,
                        Bound::Included(Term::from_field_u64(self.log_index, through)),
                    )),
                    0.0,
                )),
            ));
        }
        Box::new(BooleanQuery::new(clauses))
    }
}

/// How a partition takes the records of one batch ([`Fields::document`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout<'b> {
    /// The partition's schema has the stream column: a record's stream is kept there
    /// ([`stored_parts`]) and its id-like attribute values are keyed ([`crate::idkey`]).
    /// Partitions created before the column store whole records and index whole values,
    /// as the release that created them did, so that a replica of that release which
    /// accepts a copy of them also finds every value in it.
    pub streams: bool,
    /// Id-like attribute values, `(name, value)`, that more than one record of the batch
    /// holds ([`repeated_ids`]): indexed whole. Such values (a pod's uid, a container id, a
    /// commit) are shared by many records, and a keyed lookup reads the record of every
    /// document with the key; a whole term answers them from its postings.
    pub repeated: Option<&'b std::collections::HashSet<(&'b str, &'b str)>>,
}

impl Layout<'_> {
    /// Whether attribute `name`'s `value` is indexed by its key rather than whole.
    pub fn keys(&self, name: &str, value: &str) -> bool {
        self.streams && id_like(value) && !self.repeated.is_some_and(|r| r.contains(&(name, value)))
    }
}

/// Whether a partition of schema `schema` has the stream column ([`Layout::streams`]).
pub(crate) fn has_streams(schema: &Schema) -> bool {
    schema.get_field(F_STREAM).is_ok()
}

/// The id-like attribute values that more than one of `records` holds ([`Layout::repeated`]).
pub(crate) fn repeated_ids(records: &[StoredRecord]) -> std::collections::HashSet<(&str, &str)> {
    let mut seen = std::collections::HashSet::new();
    let mut repeated = std::collections::HashSet::new();
    for r in records {
        for (k, v) in &r.attributes {
            if id_like(v) && !seen.insert((k.as_str(), v.as_str())) {
                repeated.insert((k.as_str(), v.as_str()));
            }
        }
    }
    repeated
}

/// Whether a partition written with schema `old` reads and takes documents as `new`
/// describes: the same fields, in the same order, of the same types and options, except
/// for what only costs and is never read. Partitions written before these were dropped
/// have them:
///
/// - field norms of an exact field (only scoring reads them, and an exact term scores
///   the same in every document);
/// - terms of a numeric fast field (range queries read the column).
///
/// And partitions created before the stream column, the schema's last field, lack it:
/// their documents store the whole record, and new documents of theirs do too.
pub(crate) fn compatible(old: &Schema, new: &Schema) -> bool {
    let unread_dropped = |s: &Schema| -> Vec<serde_json::Value> {
        s.fields()
            .map(|(_, entry)| {
                let mut v = serde_json::to_value(entry).unwrap_or_default();
                if let Some(indexing) = v.pointer_mut("/options/indexing") {
                    if indexing.get("tokenizer").and_then(|t| t.as_str()) == Some("raw") {
                        if let Some(o) = indexing.as_object_mut() {
                            o.remove("fieldnorms");
                        }
                    }
                }
                let numeric = matches!(v.get("type").and_then(|t| t.as_str()), Some("i64" | "u64"));
                if let Some(o) = v.get_mut("options").and_then(|o| o.as_object_mut()) {
                    if numeric && o.get("fast") == Some(&serde_json::Value::Bool(true)) {
                        o.remove("indexed");
                        o.remove("fieldnorms");
                    }
                }
                v
            })
            .collect()
    };
    if old == new {
        return true;
    }
    let (old, new) = (unread_dropped(old), unread_dropped(new));
    // Partitions created before the stream column lack it, last field of the schema: their
    // documents store the whole record.
    old == new
        || (old.len() + 1 == new.len()
            && new
                .last()
                .and_then(|f| f.get("name"))
                .and_then(|n| n.as_str())
                == Some(F_STREAM)
            && old[..] == new[..old.len()])
}

/// An exact (or prefix) match on a raw field whose terms are `prefix ++ value`.
fn exact_query(field: Field, prefix: &str, p: &Pattern) -> Box<dyn TQuery> {
    match p {
        Pattern::Word(v) | Pattern::Phrase { text: v, .. } => Box::new(TermQuery::new(
            Term::from_field_text(field, &format!("{prefix}{v}")),
            IndexRecordOption::Basic,
        )),
        Pattern::Prefix(v) | Pattern::PhrasePrefix(v) => {
            let mut q =
                PhrasePrefixQuery::new(vec![Term::from_field_text(field, &format!("{prefix}{v}"))]);
            q.set_max_expansions(MAX_PREFIX_EXPANSIONS);
            Box::new(q)
        }
        // The parser takes an infix in the body only.
        Pattern::Infix(_) => Box::new(EmptyQuery),
    }
}

/// The term, in the `label_names` field, of a document whose body has a word of
/// [`LONG_WORD_BYTES`] or more, which the analyzer drops: an infix lookup in the body
/// terms cannot see such a word, so it takes these documents too. It starts with `\0`, so
/// no tenant's label name prefix (`tenant \0`) reaches it.
pub(crate) const LONG_TOKEN_MARKER: &str = "\0long-body-word";

/// Body words this long (bytes) or longer are not indexed.
pub(crate) const LONG_WORD_BYTES: usize = 40;

/// Whether `body` has a word the analyzer drops (a run of letters and digits of
/// [`LONG_WORD_BYTES`] or more, as the tokenizer splits).
pub(crate) fn has_long_word(body: &str) -> bool {
    let mut run = 0;
    for c in body.chars() {
        if c.is_alphanumeric() {
            run += c.len_utf8();
            if run >= LONG_WORD_BYTES {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// The body analyzer: tantivy's `default` (split on non-alphanumerics, drop tokens over 40
/// bytes, lower-case). Queries are tokenized the same way as documents.
pub(crate) fn body_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(LONG_WORD_BYTES))
        .filter(LowerCaser)
        .build()
}

/// The body tokens that every line containing `needle` (as a case-sensitive substring)
/// has in the index: the tokens of `needle` that cannot be part of a longer word of the
/// line. A token touching the start or the end of `needle` may continue in the line
/// (`"rror"` inside `"error"`), so it is left out; so are tokens the analyzer drops (40
/// bytes and longer). Lower-cased, as indexed. A LogQL `|= "needle"` filter becomes a
/// conjunction of these terms: a sound pre-filter, the exact filter runs afterwards.
///
/// ```
/// assert_eq!(weir_index::complete_body_tokens("rror: Timeout after"), ["timeout"]);
/// assert_eq!(weir_index::complete_body_tokens(" id=42 "), ["id", "42"]);
/// assert!(weir_index::complete_body_tokens("abc").is_empty());
/// ```
pub fn complete_body_tokens(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in needle.char_indices().chain([(needle.len(), ' ')]) {
        match (c.is_alphanumeric() && i < needle.len(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                start = None;
                let touches_edge = s == 0 || i == needle.len();
                if !touches_edge && i - s < LONG_WORD_BYTES {
                    out.push(needle[s..i].to_lowercase());
                }
            }
            _ => {}
        }
    }
    out
}

/// The body tokens of `text` with their positions.
pub(crate) fn body_tokens(text: &str) -> Vec<(usize, String)> {
    let mut analyzer = body_analyzer();
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while let Some(t) = stream.next() {
        out.push((t.position, t.text.clone()));
    }
    out
}

/// The record as the document store keeps it: encoded without its timestamp, which the
/// timestamp column holds already. A nanosecond timestamp's low bytes differ in every
/// record, so the document store's compression kept 6.4 bytes a record of it in the cost
/// model (benches/RESULTS.md, "Disk"). Readers put the column's value back
/// ([`stored_record`]).
pub(crate) fn stored_bytes(r: &StoredRecord) -> Vec<u8> {
    let mut buf = r.encode_to_vec();
    if r.timestamp_ns != 0 {
        // prost writes fields in tag order, so a non-zero timestamp (tag 1, a varint) is
        // the encoding's first key and value.
        let len = 1 + prost::encoding::encoded_len_varint(r.timestamp_ns as u64);
        debug_assert_eq!(buf[0], 0x08, "the timestamp leads the encoding");
        buf.drain(..len);
    }
    buf
}

/// The record as the document store keeps it in a partition with the stream column, and
/// its stream as that column keeps it: both encoded as a [`StoredRecord`] (prost's
/// encoding, fields in tag order), the first without the timestamp ([`stored_bytes`]) and
/// without the stream's fields (service, namespace, pod, cluster, labels), the second with
/// those only. Decoding the first and merging the second gives the record back
/// ([`stored_record`]).
///
/// Why: a partition holds a few hundred streams, and every record repeats its stream's
/// ~60 bytes, which the document store's compression kept at 5.5 bytes a record in the
/// cost model and 9.4 on a node (benches/RESULTS.md, "Disk: streams in a column"); the
/// column keeps each distinct stream once and a record's ordinal in a few bits.
pub(crate) fn stored_parts(r: &StoredRecord) -> (Vec<u8>, Vec<u8>) {
    use prost::encoding::{btree_map, string, uint32};
    let map = |tag, m, buf: &mut Vec<u8>| {
        btree_map::encode(
            string::encode,
            string::encoded_len,
            string::encode,
            string::encoded_len,
            tag,
            m,
            buf,
        );
    };
    // Every field named, so that a field added to the message fails to compile here
    // rather than go unstored.
    let StoredRecord {
        timestamp_ns: _,
        level,
        body,
        service,
        namespace,
        pod,
        cluster,
        labels,
        attributes,
        trace_id,
        span_id,
    } = r;
    let mut rest = Vec::with_capacity(r.encoded_len());
    if *level != 0 {
        uint32::encode(2, level, &mut rest);
    }
    if !body.is_empty() {
        string::encode(3, body, &mut rest);
    }
    map(9, attributes, &mut rest);
    if !trace_id.is_empty() {
        string::encode(10, trace_id, &mut rest);
    }
    if !span_id.is_empty() {
        string::encode(11, span_id, &mut rest);
    }
    let mut stream = Vec::new();
    for (tag, v) in [(4, service), (5, namespace), (6, pod), (7, cluster)] {
        if !v.is_empty() {
            string::encode(tag, v, &mut stream);
        }
    }
    map(8, labels, &mut stream);
    (rest, stream)
}

/// The record stored in document `d` (its `record` field), whose timestamp column holds
/// `timestamp_ns` and stream column `stream` (none in partitions created before the
/// column: their documents store the whole record). Documents indexed before the stored
/// record left its timestamp out hold it in both places, alike.
pub(crate) fn stored_record(
    d: &TantivyDocument,
    record: Field,
    timestamp_ns: i64,
    stream: Option<&[u8]>,
) -> Result<StoredRecord, String> {
    let bytes = d
        .get_first(record)
        .and_then(|v| v.as_bytes())
        .ok_or("no stored record")?;
    let mut r =
        StoredRecord::decode(bytes).map_err(|e| format!("stored record does not decode: {e}"))?;
    if let Some(stream) = stream {
        r.merge(stream)
            .map_err(|e| format!("stored stream does not decode: {e}"))?;
    }
    r.timestamp_ns = timestamp_ns;
    Ok(r)
}

pub(crate) fn label_term(tenant: &str, name: &str, value: &str) -> String {
    format!("{tenant}\0{name}\0{value}")
}

/// The term range `[lo, hi)` of every term starting with `prefix`, which ends in the `\0`
/// separator: its last byte bumped to `\x01` bounds it above.
pub(crate) fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    debug_assert!(prefix.ends_with('\0'), "prefixes end in the separator");
    let lo = prefix.as_bytes().to_vec();
    let mut hi = lo.clone();
    if let Some(last) = hi.last_mut() {
        *last += 1;
    }
    (lo, hi)
}

pub(crate) fn label_prefix(tenant: &str, name: &str) -> String {
    format!("{tenant}\0{name}\0")
}

fn attr_term(key: &str, value: &str) -> String {
    format!("{key}\0{value}")
}

fn attr_prefix(key: &str) -> String {
    format!("{key}\0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The stored bytes leave the timestamp out whatever its sign, and a document of
    /// either layout (without it, or whole as indexed before) reads back the same record.
    #[test]
    fn stored_records_leave_the_timestamp_to_the_column() {
        let f = Fields::new(Arc::new(crate::InfixCache::new(0)), false);
        for ts in [1_700_000_000_123_456_789, -5, 0, i64::MAX, i64::MIN] {
            let mut r = StoredRecord {
                timestamp_ns: ts,
                level: 3,
                body: "hello".into(),
                ..Default::default()
            };
            r.labels.insert("app".into(), "api".into());
            let bytes = stored_bytes(&r);
            let without = StoredRecord::decode(bytes.as_slice()).unwrap();
            assert_eq!(without.timestamp_ns, 0, "{ts}");
            assert_eq!(without.body, "hello");
            assert_eq!(without.labels, r.labels);
            for stored in [bytes, r.encode_to_vec()] {
                let mut d = TantivyDocument::new();
                d.add_bytes(f.record, &stored);
                assert_eq!(stored_record(&d, f.record, ts, None).unwrap(), r, "{ts}");
            }
        }
    }

    /// The stored record and its stream split a record's fields between them, each field
    /// in exactly one, and merge back into the record; a record without a stream has an
    /// empty one.
    #[test]
    fn stored_parts_split_the_stream_off_and_merge_back() {
        let f = Fields::new(Arc::new(crate::InfixCache::new(0)), false);
        let mut full = StoredRecord {
            timestamp_ns: 1_700_000_000_123_456_789,
            level: 5,
            body: "boom".into(),
            service: "api".into(),
            namespace: "prod".into(),
            pod: "api-7f9c".into(),
            cluster: "eu-1".into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            ..Default::default()
        };
        full.labels.insert("env".into(), "live".into());
        full.labels.insert("app".into(), "shop".into());
        full.attributes.insert("user".into(), "u1".into());
        full.attributes.insert("http.status".into(), "500".into());
        let bare = StoredRecord {
            timestamp_ns: -3,
            body: "no stream".into(),
            ..Default::default()
        };
        let stream_only = StoredRecord {
            pod: "p".into(),
            labels: [("a".into(), "".into())].into(),
            ..Default::default()
        };
        for r in [full, bare, stream_only, StoredRecord::default()] {
            let (rest, stream) = stored_parts(&r);
            let rest_r = StoredRecord::decode(rest.as_slice()).unwrap();
            let stream_r = StoredRecord::decode(stream.as_slice()).unwrap();
            let want_rest = StoredRecord {
                timestamp_ns: 0,
                service: String::new(),
                namespace: String::new(),
                pod: String::new(),
                cluster: String::new(),
                labels: Default::default(),
                ..r.clone()
            };
            assert_eq!(rest_r, want_rest, "{r:?}");
            assert_eq!(rest, want_rest.encode_to_vec(), "prost's own encoding");
            let want_stream = StoredRecord {
                service: r.service.clone(),
                namespace: r.namespace.clone(),
                pod: r.pod.clone(),
                cluster: r.cluster.clone(),
                labels: r.labels.clone(),
                ..Default::default()
            };
            assert_eq!(stream_r, want_stream, "{r:?}");
            let mut d = TantivyDocument::new();
            d.add_bytes(f.record, &rest);
            let back = stored_record(&d, f.record, r.timestamp_ns, Some(&stream)).unwrap();
            assert_eq!(back, r);
        }
    }

    #[test]
    fn body_tokens_split_on_non_alphanumerics_and_lower_case() {
        let toks: Vec<String> = body_tokens("Connection-RESET by_peer")
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        assert_eq!(toks, ["connection", "reset", "by", "peer"]);
    }

    /// Partitions written when exact fields kept field norms and the timestamp and log
    /// index had terms must still open.
    #[test]
    fn a_schema_with_field_norms_on_exact_fields_and_indexed_columns_is_compatible() {
        use tantivy::schema::STRING;
        let new = Fields::new(Arc::new(crate::InfixCache::new(1 << 20)), false).schema;
        let rebuild = |exact: &dyn Fn() -> TextOptions, body: TextOptions| {
            let mut b = Schema::builder();
            for (_, entry) in new.fields() {
                let name = entry.name();
                match entry.field_type() {
                    tantivy::schema::FieldType::Str(_) if name == BODY_FIELD => {
                        b.add_text_field(name, body.clone());
                    }
                    tantivy::schema::FieldType::Str(_) => {
                        b.add_text_field(name, exact());
                    }
                    tantivy::schema::FieldType::I64(_) => {
                        b.add_i64_field(name, NumericOptions::default().set_indexed().set_fast());
                    }
                    tantivy::schema::FieldType::U64(o) if o.is_fast() && name != F_OFFSET => {
                        b.add_u64_field(name, NumericOptions::default().set_indexed().set_fast());
                    }
                    _ => {
                        b.add_field(entry.clone());
                    }
                }
            }
            b.build()
        };
        let with_norms = rebuild(&|| STRING, TEXT);
        assert_ne!(with_norms, new, "the old schema differs in norms and terms");
        assert!(compatible(&with_norms, &new));
        // A body without positions (not a norms difference) is not compatible.
        let no_positions = rebuild(&|| STRING, tantivy::schema::STRING);
        assert!(!compatible(&no_positions, &new));
        // Partitions created before the stream column lack it: compatible. Without any
        // other field, not.
        for (missing, ok) in [(F_STREAM, true), ("record", false), ("attrs", false)] {
            let mut b = Schema::builder();
            for (_, entry) in new.fields().filter(|(_, e)| e.name() != missing) {
                b.add_field(entry.clone());
            }
            assert_eq!(compatible(&b.build(), &new), ok, "without {missing}");
        }
        // Nor is a missing field.
        let mut b = Schema::builder();
        b.add_text_field(BODY_FIELD, TEXT);
        assert!(!compatible(&b.build(), &new));
    }
}
