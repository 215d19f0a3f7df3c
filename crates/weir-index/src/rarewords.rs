//! A conjunction of body words for a caller that checks every hit itself (LogQL's line
//! filters: [`crate::SearchRequest::prefilter`]): it may match more documents than hold
//! every word, never fewer.
//!
//! A needle of whole words (`|= "user 43809 logged in from 10.44.57.228 …"`) becomes
//! every one of its words, and an exact conjunction walks each word's postings to the
//! candidate documents in every segment. Common words (`eu`, `west`, `svc`, in most
//! records) narrow nothing, and walking their postings (skip lists of thousands of
//! entries) was most of such a query's work: from a cold page cache, 17 MB of postings
//! read for one needle over 14 M records (benches/RESULTS.md, cold lookups). Here each
//! segment looks up every word's term info (a segment missing any word matches nothing,
//! exactly as before) and intersects the postings of the [`RARE_WORDS_KEPT`] rarest only.

use std::fmt;

use tantivy::query::{
    intersect_scorers, ConstScorer, EmptyScorer, EnableScoring, Explanation, Query, Scorer, Weight,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocId, DocSet, Score, SegmentReader, Term};

/// How many of a segment's rarest words are intersected; the rest only have to be in
/// the segment's term dictionary. Three words that rare leave few candidates for the
/// caller to check.
pub(crate) const RARE_WORDS_KEPT: usize = 3;

/// Documents of one field holding at least the [`RARE_WORDS_KEPT`] rarest of `terms` (in
/// each segment), in segments holding all of them.
#[derive(Clone)]
pub(crate) struct RareWords {
    field: Field,
    terms: Vec<Term>,
}

impl RareWords {
    /// Over `terms`, all of field `field`; duplicates are dropped.
    pub fn new(field: Field, mut terms: Vec<Term>) -> RareWords {
        terms.sort();
        terms.dedup();
        RareWords { field, terms }
    }
}

impl fmt::Debug for RareWords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RareWords({:?})", self.terms)
    }
}

impl Query for RareWords {
    fn weight(&self, _scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(self.clone()))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        for t in &self.terms {
            visitor(t, false);
        }
    }
}

impl Weight for RareWords {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let inverted = reader.inverted_index(self.field)?;
        let mut infos = Vec::with_capacity(self.terms.len());
        for t in &self.terms {
            match inverted.get_term_info(t)? {
                Some(info) => infos.push(info),
                None => return Ok(Box::new(EmptyScorer)),
            }
        }
        infos.sort_by_key(|i| i.doc_freq);
        let mut scorers: Vec<Box<dyn Scorer>> = Vec::with_capacity(RARE_WORDS_KEPT);
        for info in infos.iter().take(RARE_WORDS_KEPT) {
            let postings = inverted.read_postings_from_terminfo(info, IndexRecordOption::Basic)?;
            scorers.push(Box::new(ConstScorer::new(postings, boost)));
        }
        if scorers.is_empty() {
            return Ok(Box::new(EmptyScorer));
        }
        Ok(intersect_scorers(scorers, reader.max_doc()))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let mut s = self.scorer(reader, 1.0)?;
        if s.seek(doc) != doc {
            return Err(tantivy::TantivyError::InvalidArgument(format!(
                "document {doc} does not hold the rarest of {} words",
                self.terms.len()
            )));
        }
        Ok(Explanation::new("RareWords", 1.0))
    }
}
