//! A wrapper for the queries a record must not match (`NOT x`, `-x`).
//!
//! tantivy's `Exclude` asks each excluded scorer `seek_danger(candidate)` for every
//! candidate of the query, in increasing order from the first. A phrase scorer starts on
//! its first match, which may be past the first candidates, and tantivy 0.27's
//! `PhraseScorer::seek_danger` asserts (in debug builds) that it is never asked for a
//! document before the one it stands on: `error -"connection reset"` panicked in tests.
//! [`Excluded`] answers those questions itself from what it already knows (no match of
//! the inner query lies before its floor) and hands every other one to the inner scorer.

use tantivy::query::{EnableScoring, Explanation, Query, Scorer, Weight};
use tantivy::{DocId, DocSet, Score, SeekDangerResult, SegmentReader, Term};

/// `inner`, safe to use as an exclusion.
#[derive(Debug)]
pub(crate) struct Excluded(pub Box<dyn Query>);

impl Clone for Excluded {
    fn clone(&self) -> Self {
        Excluded(self.0.box_clone())
    }
}

impl Query for Excluded {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(ExcludedWeight(self.0.weight(scoring)?)))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        self.0.query_terms(visitor);
    }
}

struct ExcludedWeight(Box<dyn Weight>);

impl Weight for ExcludedWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let inner = self.0.scorer(reader, boost)?;
        let floor = inner.doc();
        Ok(Box::new(ExcludedScorer {
            inner,
            floor,
            on_floor: true,
        }))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.0.explain(reader, doc)
    }
}

struct ExcludedScorer {
    inner: Box<dyn Scorer>,
    /// No match of the inner query lies between the last target asked and this.
    floor: DocId,
    /// The inner scorer stands, validly, on `floor`, a match.
    on_floor: bool,
}

impl DocSet for ExcludedScorer {
    fn advance(&mut self) -> DocId {
        self.floor = self.inner.advance();
        self.on_floor = true;
        self.floor
    }

    fn seek(&mut self, target: DocId) -> DocId {
        if target > self.floor || !self.on_floor {
            self.floor = self.inner.seek(target.max(self.floor));
            self.on_floor = true;
        }
        self.floor
    }

    fn seek_danger(&mut self, target: DocId) -> SeekDangerResult {
        if target < self.floor {
            return SeekDangerResult::SeekLowerBound(self.floor);
        }
        if target == self.floor && self.on_floor {
            return SeekDangerResult::Found;
        }
        let found = self.inner.seek_danger(target);
        match found {
            SeekDangerResult::Found => {
                self.floor = target;
                self.on_floor = true;
            }
            SeekDangerResult::SeekLowerBound(bound) => {
                self.floor = bound;
                self.on_floor = false;
            }
        }
        found
    }

    fn doc(&self) -> DocId {
        self.inner.doc()
    }

    fn size_hint(&self) -> u32 {
        self.inner.size_hint()
    }
}

impl Scorer for ExcludedScorer {
    fn score(&mut self) -> Score {
        self.inner.score()
    }
}
