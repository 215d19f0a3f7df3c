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

use std::fmt;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdKind {
    Trace,
    Span,
}

impl IdKind {
    fn of(self, r: &StoredRecord) -> &str {
        match self {
            IdKind::Trace => &r.trace_id,
            IdKind::Span => &r.span_id,
        }
    }
}

/// Documents whose key term is one of `keys` and whose stored record's id is `id`.
#[derive(Clone)]
pub(crate) struct IdQuery {
    /// The key of each layout: [`KEY_HEX`] digits, then [`OLD_KEY_HEX`].
    keys: [Term; 2],
    id: String,
    kind: IdKind,
    record: Field,
}

impl IdQuery {
    /// Matches documents of `field` (trace_id or span_id) holding `id`; `record` is the
    /// stored field with the encoded record.
    pub fn new(field: Field, kind: IdKind, id: &str, record: Field) -> IdQuery {
        IdQuery {
            keys: [KEY_HEX, OLD_KEY_HEX].map(|d| Term::from_field_text(field, &key_of(id, d))),
            id: id.to_string(),
            kind,
            record,
        }
    }
}

impl fmt::Debug for IdQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IdQuery({:?} = {:?}, keys {:?})",
            self.kind, self.id, self.keys
        )
    }
}

impl Query for IdQuery {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        // A document holds one key of one length, so the union never counts one twice.
        let inner = TermSetQuery::new(self.keys.clone()).weight(scoring)?;
        Ok(Box::new(IdWeight {
            inner,
            id: self.id.clone(),
            kind: self.kind,
            record: self.record,
        }))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        for key in &self.keys {
            visitor(key, false);
        }
    }
}

struct IdWeight {
    inner: Box<dyn Weight>,
    id: String,
    kind: IdKind,
    record: Field,
}

impl IdWeight {
    fn id_scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<IdScorer> {
        let inner = self.inner.scorer(reader, boost)?;
        let mut s = IdScorer {
            inner,
            // One cached block: the documents of one trace usually sit close together.
            store: reader.get_store_reader(1)?,
            id: self.id.clone(),
            kind: self.kind,
            record: self.record,
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
                "document {doc} does not hold {:?} {}",
                self.kind, self.id
            )));
        }
        self.inner.explain(reader, doc)
    }
}

/// The key term's documents, less those whose record holds another id.
struct IdScorer {
    inner: Box<dyn Scorer>,
    store: StoreReader,
    id: String,
    kind: IdKind,
    record: Field,
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
            match self.holds(doc) {
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

    fn holds(&self, doc: DocId) -> tantivy::Result<bool> {
        let d: TantivyDocument = self.store.get(doc)?;
        // Only the id is compared: the timestamp is not needed.
        let r = stored_record(&d, self.record, 0, None)
            .map_err(|e| tantivy::TantivyError::InternalError(format!("document {doc}: {e}")))?;
        Ok(self.kind.of(&r) == self.id)
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
        w.add_document(f.document("default", 1, 0, &record(TRACE_A, "keyed"), true))
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
}
