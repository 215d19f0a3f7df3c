//! Trace and span ids in the index: a short key term, checked against the stored record.
//!
//! A trace id is 32 random hex digits and a span id 16, different in every record. Indexed
//! as they are, they were the most expensive terms of the index by far: every segment
//! builds, and every merge rebuilds, a term dictionary (an FST) whose cost grows with the
//! bytes of unshared suffix per term, and a random id is all suffix. Measured with
//! `cargo run --release -p weir-index --example load` (2 M records, 4 shards, 2 cores, CPU
//! seconds of the whole run, merges included): 112 s with whole ids against 72-82 s with
//! keys (benches/RESULTS.md).
//!
//! So an id is indexed as its key: 6 hex digits (the top 24 bits) of the id's 64-bit
//! FNV-1a hash. A lookup finds the documents with the key, and [`IdQuery`] drops those
//! whose stored record carries another id: in a partition of N distinct ids, about
//! N / 2^24 other ids share the key (0.16 for a segment of 2.7 M records, one more
//! document-store block read), and their records are read and dropped, never shown.
//! Partitions written before hold 8-digit keys (the top 32 bits), and before those the
//! whole id as the term; a lookup asks for all three, so they answer as before. Six digits
//! instead of eight took 1.4 bytes a record off each id's term dictionary in the cost
//! model's partitions (benches/RESULTS.md, "Disk"); a longer key costs more to index
//! (12 digits ran slower than 8 in single wall-clock runs) and saves almost nothing.
//!
//! What this costs: a prefix of an id (`trace_id:4bf9*`) has no term to expand, so the
//! query language refuses it with a message (ids are looked up whole).
//!
//! Attribute values that look like ids ([`id_like`]: 16 to 64 hex digits, dashes allowed,
//! such as request ids and UUIDs), held by one record of their batch (a value several
//! records share stays whole, [`crate::schema::Layout`]), are keyed the same way, as the
//! `attrs` term
//! `key \0 \x01 <6 hex digits>` ([`attr_key_term`]), and with their first
//! [`HEAD_CHARS`] characters as `key \0 \x02 <head>` ([`attr_head_term`], shared by many
//! records) for prefixes. Indexed whole they were the largest term dictionary of a node's
//! index (18 bytes a record for one random 16-digit `request_id`, benches/RESULTS.md
//! "Disk"). `key:value` with such a value asks for the key, checked against the stored
//! record, and for the whole value (documents indexed before). A prefix `key:abc*` of at
//! most [`HEAD_CHARS`] characters expands over the heads, exactly; a longer one reads the
//! records with its head (about one in 4,096 for random hex) and keeps those that start
//! with it.

use std::fmt;
use std::sync::Arc;

use tantivy::query::{EnableScoring, Explanation, Query, Scorer, TermSetQuery, Weight};
use tantivy::schema::Field;
use tantivy::store::StoreReader;
use tantivy::{DocId, DocSet, Score, SegmentReader, TantivyDocument, Term, TERMINATED};
use weir_proto::v1::StoredRecord;

use crate::schema::stored_record;

/// Length of a key in hex digits.
const KEY_HEX: usize = 6;
/// Length of the keys of partitions indexed before keys were shortened to [`KEY_HEX`].
const OLD_KEY_HEX: usize = 8;

/// The index term of an id: [`KEY_HEX`] hex digits of the id's 64-bit FNV-1a hash.
pub(crate) fn id_key(id: &str) -> String {
    key_of(id, KEY_HEX)
}

/// The top `digits` hex digits of `id`'s 64-bit FNV-1a hash.
fn key_of(id: &str, digits: usize) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:0width$x}", h >> (64 - 4 * digits), width = digits)
}

/// Which id of a record a query is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum IdKind {
    Trace,
    Span,
    /// The value of the attribute of this name.
    Attr(String),
}

/// Whether an attribute value may be indexed by its key ([`attr_key_term`]) rather than
/// whole: 16 to 64 characters, hex digits and dashes, at least one digit (request ids,
/// UUIDs, hex-encoded hashes). Those of them unique to their record are a term per record,
/// the most expensive thing an index holds; those many records share are kept whole
/// ([`crate::schema::Layout::keys`]).
pub(crate) fn id_like(v: &str) -> bool {
    (16..=64).contains(&v.len())
        && v.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        && v.bytes().any(|b| b.is_ascii_digit())
}

/// The `attrs` term of attribute `key` with the id-like `value`: the attribute's prefix,
/// `\x01` and the value's key. No id-like value starts with `\x01`, so these terms are
/// apart from the whole values of such attributes; a lookup of a keyed value checks the
/// record, so a whole value that does start with it is never taken for one.
pub(crate) fn attr_key_term(key: &str, value: &str) -> String {
    format!("{key}\0\x01{}", id_key(value))
}

/// How many leading characters of an id-like attribute value its head term holds.
pub(crate) const HEAD_CHARS: usize = 3;

/// The prefix of the head terms of attribute `key`: `key \0 \x02`.
pub(crate) fn attr_head_prefix(key: &str) -> String {
    format!("{key}\0\x02")
}

/// The head term of attribute `key` with the id-like `value`: its first [`HEAD_CHARS`]
/// characters (id-like values are ASCII).
pub(crate) fn attr_head_term(key: &str, value: &str) -> String {
    format!(
        "{}{}",
        attr_head_prefix(key),
        &value[..HEAD_CHARS.min(value.len())]
    )
}

impl IdKind {
    fn of<'r>(&self, r: &'r StoredRecord) -> Option<&'r str> {
        match self {
            IdKind::Trace => Some(&r.trace_id),
            IdKind::Span => Some(&r.span_id),
            IdKind::Attr(name) => r.attributes.get(name).map(String::as_str),
        }
    }
}

/// What a candidate's stored record must hold: its `kind` of id is `id`, or, for a
/// `prefix`, starts with it.
#[derive(Debug)]
struct IdCheck {
    kind: IdKind,
    id: String,
    prefix: bool,
    /// The stored field with the encoded record.
    record: Field,
}

impl IdCheck {
    /// Whether document `doc` of `store` holds the id.
    fn holds(&self, store: &StoreReader, doc: DocId) -> tantivy::Result<bool> {
        let d: TantivyDocument = store.get(doc)?;
        // Only the id is compared: the timestamp and stream are not needed.
        let r = stored_record(&d, self.record, 0, None)
            .map_err(|e| tantivy::TantivyError::InternalError(format!("document {doc}: {e}")))?;
        Ok(self.kind.of(&r).is_some_and(|v| {
            if self.prefix {
                v.starts_with(&self.id)
            } else {
                v == self.id
            }
        }))
    }
}

impl fmt::Display for IdCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.prefix { "starts with" } else { "=" };
        write!(f, "{:?} {op} {:?}", self.kind, self.id)
    }
}

/// Documents with one of the candidate terms whose stored record passes the check.
#[derive(Clone)]
pub(crate) struct IdQuery {
    /// The documents whose records are read: those with one of these terms.
    candidates: Vec<Term>,
    check: Arc<IdCheck>,
}

impl IdQuery {
    /// Matches documents of `field` (trace_id or span_id) holding `id`; `record` is the
    /// stored field with the encoded record. The key of each layout is asked for:
    /// [`KEY_HEX`] digits, then [`OLD_KEY_HEX`] (a document holds one).
    pub fn new(field: Field, kind: IdKind, id: &str, record: Field) -> IdQuery {
        let candidates = [KEY_HEX, OLD_KEY_HEX]
            .map(|d| Term::from_field_text(field, &key_of(id, d)))
            .into();
        IdQuery::checked(candidates, kind, id, false, record)
    }

    /// Matches documents whose attribute `name` holds the id-like `value` ([`id_like`]),
    /// indexed by its key in `attrs`.
    pub fn attr(attrs: Field, name: &str, value: &str, record: Field) -> IdQuery {
        let key = Term::from_field_text(attrs, &attr_key_term(name, value));
        IdQuery::checked(
            vec![key],
            IdKind::Attr(name.to_string()),
            value,
            false,
            record,
        )
    }

    /// Matches documents whose attribute `name` has a keyed value starting with `prefix`,
    /// longer than [`HEAD_CHARS`]: reads the records of those with its head term.
    pub fn attr_prefix(attrs: Field, name: &str, prefix: &str, record: Field) -> IdQuery {
        let head = Term::from_field_text(attrs, &attr_head_term(name, prefix));
        IdQuery::checked(
            vec![head],
            IdKind::Attr(name.to_string()),
            prefix,
            true,
            record,
        )
    }

    fn checked(
        candidates: Vec<Term>,
        kind: IdKind,
        id: &str,
        prefix: bool,
        record: Field,
    ) -> IdQuery {
        IdQuery {
            candidates,
            check: Arc::new(IdCheck {
                kind,
                id: id.to_string(),
                prefix,
                record,
            }),
        }
    }
}

impl fmt::Debug for IdQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdQuery({}, {:?})", self.check, self.candidates)
    }
}

impl Query for IdQuery {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        // A document holds one key of one length, so the union never counts one twice.
        let inner = TermSetQuery::new(self.candidates.clone()).weight(scoring)?;
        Ok(Box::new(IdWeight {
            inner,
            check: self.check.clone(),
        }))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        for key in &self.candidates {
            visitor(key, false);
        }
    }
}

struct IdWeight {
    inner: Box<dyn Weight>,
    check: Arc<IdCheck>,
}

impl IdWeight {
    fn id_scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<IdScorer> {
        let inner = self.inner.scorer(reader, boost)?;
        let mut s = IdScorer {
            inner,
            // One cached block: the documents of one trace usually sit close together.
            store: reader.get_store_reader(1)?,
            check: self.check.clone(),
            failed: None,
        };
        s.settle();
        if let Some(e) = s.failed.take() {
            return Err(e);
        }
        Ok(s)
    }
}

impl Weight for IdWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        Ok(Box::new(self.id_scorer(reader, boost)?))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let mut s = self.id_scorer(reader, 1.0)?;
        if s.seek(doc) != doc {
            return Err(tantivy::TantivyError::InvalidArgument(format!(
                "document {doc} does not hold {}",
                self.check
            )));
        }
        self.inner.explain(reader, doc)
    }
}

/// The key term's documents, less those whose record holds another id.
struct IdScorer {
    inner: Box<dyn Scorer>,
    store: StoreReader,
    check: Arc<IdCheck>,
    /// A stored document that could not be read. `DocSet` cannot return errors, so the
    /// scorer ends and the error is reported by `IdWeight::scorer` when it happens on
    /// the first document; later ones are logged.
    failed: Option<tantivy::TantivyError>,
}

impl IdScorer {
    /// Moves forward from the inner scorer's current document to the first that holds
    /// the id (or to the end).
    fn settle(&mut self) -> DocId {
        let mut doc = self.inner.doc();
        while doc != TERMINATED {
            match self.check.holds(&self.store, doc) {
                Ok(true) => return doc,
                Ok(false) => doc = self.inner.advance(),
                Err(e) => {
                    tracing::error!(doc, error = %e, "stored record unreadable while checking an id; the lookup stops here");
                    self.failed = Some(e);
                    while self.inner.advance() != TERMINATED {}
                    return TERMINATED;
                }
            }
        }
        TERMINATED
    }
}

impl DocSet for IdScorer {
    fn advance(&mut self) -> DocId {
        if self.inner.doc() == TERMINATED {
            return TERMINATED;
        }
        self.inner.advance();
        self.settle()
    }

    fn seek(&mut self, target: DocId) -> DocId {
        if self.inner.doc() >= target {
            return self.inner.doc();
        }
        self.inner.seek(target);
        self.settle()
    }

    fn doc(&self) -> DocId {
        self.inner.doc()
    }

    fn size_hint(&self) -> u32 {
        self.inner.size_hint()
    }
}

impl Scorer for IdScorer {
    fn score(&mut self) -> Score {
        self.inner.score()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::parse_query;
    use crate::schema::Fields;
    use tantivy::collector::DocSetCollector;
    use tantivy::Index;

    /// A partition created now, with nothing repeated in the batch.
    const NEW: crate::schema::Layout<'static> = crate::schema::Layout {
        streams: true,
        repeated: None,
    };
    const TRACE_A: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const TRACE_B: &str = "00f067aa0ba902b7a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn record(trace: &str, body: &str) -> StoredRecord {
        StoredRecord {
            timestamp_ns: 1,
            body: body.into(),
            trace_id: trace.into(),
            span_id: SPAN.into(),
            ..Default::default()
        }
    }

    /// The bodies of the documents `q` finds.
    fn found(ix: &Index, f: &Fields, q: &str) -> Vec<String> {
        let searcher = ix.reader().unwrap().searcher();
        let part = crate::schema::PartContext {
            marked: true,
            dir: std::path::Path::new(""),
        };
        let query = f.translate(&parse_query(q).unwrap(), "default", part, false);
        let mut bodies: Vec<String> = searcher
            .search(query.as_ref(), &DocSetCollector)
            .unwrap()
            .into_iter()
            .map(|a| {
                let d: TantivyDocument = searcher.doc(a).unwrap();
                stored_record(&d, f.record, 0, None).unwrap().body
            })
            .collect();
        bodies.sort();
        bodies
    }

    /// Four documents: one as indexed now, one with the 8-digit key of partitions
    /// indexed before keys were shortened, one as indexed before keys (the whole id as
    /// the term), and one whose key term is B's while its record holds A (a collision).
    fn index() -> (Index, Fields) {
        let f = Fields::new(std::sync::Arc::new(crate::InfixCache::new(0)), false);
        let ix = Index::create_in_ram(f.schema.clone());
        let mut w = ix.writer_with_num_threads(1, 15_000_000).unwrap();
        w.add_document(f.document("default", 1, 0, &record(TRACE_A, "keyed"), &NEW))
            .unwrap();
        let mut eight = TantivyDocument::new();
        eight.add_text(f.trace_id, key_of(TRACE_A, OLD_KEY_HEX));
        eight.add_text(f.tenant, "default");
        eight.add_bytes(
            f.record,
            &prost::Message::encode_to_vec(&record(TRACE_A, "eight-digit key")),
        );
        w.add_document(eight).unwrap();
        let mut legacy = TantivyDocument::new();
        legacy.add_text(f.trace_id, TRACE_A);
        legacy.add_text(f.tenant, "default");
        legacy.add_bytes(
            f.record,
            &prost::Message::encode_to_vec(&record(TRACE_A, "legacy")),
        );
        w.add_document(legacy).unwrap();
        let mut collision = TantivyDocument::new();
        collision.add_text(f.trace_id, id_key(TRACE_B));
        collision.add_text(f.tenant, "default");
        collision.add_bytes(
            f.record,
            &prost::Message::encode_to_vec(&record(TRACE_A, "collides with b")),
        );
        w.add_document(collision).unwrap();
        w.commit().unwrap();
        (ix, f)
    }

    #[test]
    fn an_id_lookup_finds_keyed_and_legacy_documents_in_any_case() {
        let (ix, f) = index();
        assert_eq!(
            found(&ix, &f, &format!("trace_id:{TRACE_A}")),
            ["eight-digit key", "keyed", "legacy"]
        );
        assert_eq!(
            found(&ix, &f, &format!("trace_id:{}", TRACE_A.to_uppercase())),
            ["eight-digit key", "keyed", "legacy"]
        );
        assert_eq!(found(&ix, &f, &format!("span_id:{SPAN}")), ["keyed"]);
    }

    #[test]
    fn a_document_whose_key_matches_but_whose_id_differs_is_not_found() {
        let (ix, f) = index();
        assert!(found(&ix, &f, &format!("trace_id:{TRACE_B}")).is_empty());
        // The check holds under negation and inside boolean queries too.
        assert_eq!(
            found(&ix, &f, &format!("* -trace_id:{TRACE_B}")),
            ["collides with b", "eight-digit key", "keyed", "legacy"]
        );
        assert_eq!(
            found(&ix, &f, &format!("trace_id:{TRACE_B} OR keyed")),
            ["keyed"]
        );
    }

    #[test]
    fn keys_are_six_hex_digits_of_fnv1a_stable_across_releases() {
        // Changing the function would orphan every key already indexed: these values are
        // the format, and the older partitions' eight digits extend the same hash.
        assert_eq!(id_key(""), "cbf29c");
        assert_eq!(id_key("a"), "af63dc");
        assert_eq!(key_of("", OLD_KEY_HEX), "cbf29ce4");
        assert_eq!(key_of("a", OLD_KEY_HEX), "af63dc4c");
        assert_eq!(id_key("4bf92f3577b34da6").len(), KEY_HEX);
        assert_ne!(id_key("4bf92f3577b34da6"), id_key("4bf92f3577b34da7"));
    }

    #[test]
    fn id_like_values_are_long_hex_or_uuids_with_a_digit() {
        for v in [
            "00f067aa0ba902b7",
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "123e4567-e89b-12d3-a456-426614174000",
            "1234567890123456",
        ] {
            assert!(id_like(v), "{v}");
        }
        for v in [
            "00f067aa0ba902b",  // 15 characters
            "deadbeefdeadbeef", // no digit: could be a word
            "u123456789012345z",
            "GET /api/v1/orders",
            "",
            &"a1".repeat(33), // 66 characters
        ] {
            assert!(!id_like(v), "{v}");
        }
    }

    /// An id-like value with [`SPAN`]'s first three characters.
    const SAME_HEAD: &str = "00fabcdef0123456";

    /// Attribute values: a request id indexed by key now, one indexed whole (before keyed
    /// values), one whose key term is another id's (a collision), one short value, one
    /// id-like value of another attribute and one that shares the first's head.
    fn attr_index() -> (Index, Fields) {
        let f = Fields::new(std::sync::Arc::new(crate::InfixCache::new(0)), false);
        let ix = Index::create_in_ram(f.schema.clone());
        let mut w = ix.writer_with_num_threads(1, 15_000_000).unwrap();
        let with = |body: &str, attrs: &[(&str, &str)]| StoredRecord {
            body: body.into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        w.add_document(f.document(
            "default",
            1,
            0,
            &with("keyed", &[("request_id", SPAN), ("user", "u1")]),
            &NEW,
        ))
        .unwrap();
        w.add_document(f.document(
            "default",
            1,
            1,
            &with("other attribute", &[("session", SPAN)]),
            &NEW,
        ))
        .unwrap();
        w.add_document(f.document(
            "default",
            1,
            2,
            &with("same head", &[("request_id", SAME_HEAD)]),
            &NEW,
        ))
        .unwrap();
        let mut whole = TantivyDocument::new();
        whole.add_text(f.tenant, "default");
        whole.add_text(f.attrs, format!("request_id\0{SPAN}"));
        whole.add_bytes(
            f.record,
            &prost::Message::encode_to_vec(&with("whole", &[("request_id", SPAN)])),
        );
        w.add_document(whole).unwrap();
        let mut collision = TantivyDocument::new();
        collision.add_text(f.tenant, "default");
        collision.add_text(f.attrs, attr_key_term("request_id", TRACE_B));
        collision.add_bytes(
            f.record,
            &prost::Message::encode_to_vec(&with("collides with b", &[("request_id", SPAN)])),
        );
        w.add_document(collision).unwrap();
        w.commit().unwrap();
        (ix, f)
    }

    #[test]
    fn id_like_attribute_values_are_keyed_and_found_as_before() {
        let (ix, f) = attr_index();
        // The keyed document's term is the key, not the value.
        let searcher = ix.reader().unwrap().searcher();
        let terms = searcher.segment_reader(0).inverted_index(f.attrs).unwrap();
        let has = |t: &str| terms.terms().get(t.as_bytes()).unwrap().is_some();
        assert!(has(&attr_key_term("request_id", SPAN)));
        assert!(has("user\0u1"), "short values stay whole");
        assert_eq!(
            found(&ix, &f, &format!("request_id:{SPAN}")),
            ["keyed", "whole"]
        );
        assert_eq!(
            found(&ix, &f, &format!("request_id:\"{SPAN}\"")),
            ["keyed", "whole"]
        );
        assert_eq!(
            found(&ix, &f, &format!("session:{SPAN}")),
            ["other attribute"]
        );
        assert_eq!(found(&ix, &f, "user:u1"), ["keyed"]);
        // Another value with the same key is checked against the record and dropped;
        // so is a key shared by two ids.
        assert!(found(&ix, &f, &format!("request_id:{TRACE_B}")).is_empty());
        assert!(found(&ix, &f, &format!("request_id:{}", SPAN.to_uppercase())).is_empty());
        assert_eq!(
            found(&ix, &f, &format!("* -request_id:{SPAN}")),
            ["collides with b", "other attribute", "same head"]
        );
    }

    #[test]
    fn a_prefix_of_an_id_like_attribute_value_finds_it_by_its_head() {
        let (ix, f) = attr_index();
        // Longer than a head: the records with its head are read and checked.
        let prefix = &SPAN[..6];
        assert_eq!(
            found(&ix, &f, &format!("request_id:{prefix}*")),
            ["keyed", "whole"]
        );
        assert_eq!(found(&ix, &f, "request_id:00fa*"), ["same head"]);
        // A head or shorter: the heads expand, no record read.
        assert_eq!(
            found(&ix, &f, "request_id:00f*"),
            ["keyed", "same head", "whole"]
        );
        assert_eq!(
            found(&ix, &f, "request_id:0*"),
            ["keyed", "same head", "whole"]
        );
        assert!(found(&ix, &f, "request_id:ffff*").is_empty());
        assert!(found(&ix, &f, "request_id:f*").is_empty());
        assert_eq!(found(&ix, &f, "user:u*"), ["keyed"]);
        assert_eq!(
            found(&ix, &f, &format!("session:{prefix}*")),
            ["other attribute"]
        );
    }
}
