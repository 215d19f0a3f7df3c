//! Infix lookup over a segment's body words: which documents have a body word that
//! contains a fragment (`*clin*`, or the letters and digits of a LogQL needle that is not
//! a whole word).
//!
//! A term dictionary answers prefixes, not infixes: tantivy's `RegexQuery` for `.*frag.*`
//! has to walk every term of the field through the automaton, and a partition of log
//! lines holds millions of unique words (ids, hex keys, numbers). Here each segment's body
//! words are copied once into [`BodyWords`]: one byte string per word length, the words of
//! that length back to back. A fragment of `n` bytes can only be inside a word of `n` bytes
//! or more, so a lookup searches (SIMD `memmem`) the groups of length `n` and up, and a
//! match at offset `p` of the group of length `L` is the word `p / L` unless it crosses a
//! word boundary. Only the words found go back to the term dictionary for their postings.
//!
//! The copies are built on a segment's first infix lookup and kept in an [`InfixCache`]
//! bounded in bytes (least recently used out first); segments are immutable, so a copy
//! never goes stale, and one merged away is simply never asked for again.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use memchr::memmem;
use tantivy::index::SegmentId;
use tantivy::query::{
    BitSetDocSet, ConstScorer, EnableScoring, Explanation, Query, Scorer, Weight,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::termdict::TermDictionary;
use tantivy::{BitSet, DocId, Score, SegmentReader, TantivyError};

/// Default bound of an [`InfixCache`]: 512 MiB. Body words take ~25 bytes per record of
/// typical application logs (ids, hex keys and numbers are most of them): this holds
/// the words of ~20 M records.
pub const DEFAULT_INFIX_CACHE_BYTES: usize = 512 << 20;

/// A segment's words of one field, grouped by length in bytes.
pub struct BodyWords {
    /// `groups[len]`: every word of `len` bytes, in term order, back to back.
    groups: Vec<Vec<u8>>,
}

impl BodyWords {
    /// Copies every term of `dict`.
    ///
    /// # Errors
    /// I/O errors reading the term dictionary.
    pub fn build(dict: &TermDictionary) -> io::Result<BodyWords> {
        let mut groups: Vec<Vec<u8>> = Vec::new();
        let mut stream = dict.stream()?;
        while stream.advance() {
            let word = stream.key();
            if groups.len() <= word.len() {
                groups.resize_with(word.len() + 1, Vec::new);
            }
            groups[word.len()].extend_from_slice(word);
        }
        for g in &mut groups {
            g.shrink_to_fit();
        }
        Ok(BodyWords { groups })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.groups.iter().map(Vec::len).sum::<usize>()
            + self.groups.len() * std::mem::size_of::<Vec<u8>>()
    }

    /// Calls `f` once with each word that contains `fragment` (every word for an empty
    /// fragment).
    pub fn containing(&self, fragment: &[u8], mut f: impl FnMut(&[u8])) {
        let finder = memmem::Finder::new(fragment);
        for (len, hay) in self.groups.iter().enumerate().skip(fragment.len().max(1)) {
            let mut pos = 0;
            while pos < hay.len() {
                let Some(i) = finder.find(&hay[pos..]) else {
                    break;
                };
                let at = pos + i;
                let start = at - at % len;
                // `find` gives the leftmost match, so a match crossing into the next word
                // means this word has none: either way the next word is the next to look at.
                if at + fragment.len() <= start + len {
                    f(&hay[start..start + len]);
                }
                pos = start + len;
            }
        }
    }
}

/// The body words ([`BodyWords`]) of recently searched segments, bounded in bytes; shared by every
/// shard of a node.
pub struct InfixCache {
    budget: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    entries: HashMap<(SegmentId, Field), (Arc<BodyWords>, u64)>,
    bytes: usize,
    tick: u64,
}

impl fmt::Debug for InfixCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (entries, bytes) = self
            .inner
            .lock()
            .map(|c| (c.entries.len(), c.bytes))
            .unwrap_or_default();
        f.debug_struct("InfixCache")
            .field("budget", &self.budget)
            .field("entries", &entries)
            .field("bytes", &bytes)
            .finish()
    }
}

impl InfixCache {
    /// A cache holding at most `budget` bytes of words; a segment whose words alone are
    /// larger is looked up without being kept.
    pub fn new(budget: usize) -> InfixCache {
        InfixCache {
            budget,
            inner: Mutex::default(),
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().map(|c| c.bytes).unwrap_or(0)
    }

    /// The words of `field` in `segment`, copied on first use. `read_ahead` is the
    /// segment's partition directory where the index maps term files for random access
    /// (`advised.rs`): a copy first reads the segment's term file through once there, since
    /// a pass over such a map alone would read it from disk a page at a time. `None` where
    /// the kernel's read-ahead serves the pass.
    ///
    /// # Errors
    /// tantivy and I/O errors opening or reading the term dictionary.
    pub fn words(
        &self,
        segment: &SegmentReader,
        field: Field,
        read_ahead: Option<&Path>,
    ) -> tantivy::Result<Arc<BodyWords>> {
        let key = (segment.segment_id(), field);
        if let Ok(mut c) = self.inner.lock() {
            c.tick += 1;
            let tick = c.tick;
            if let Some((w, used)) = c.entries.get_mut(&key) {
                *used = tick;
                return Ok(w.clone());
            }
        }
        // Built outside the lock: two first lookups of one segment may both build it.
        if let Some(dir) = read_ahead {
            read_through(&dir.join(format!("{}.term", segment.segment_id().uuid_string())));
        }
        let words = Arc::new(BodyWords::build(segment.inverted_index(field)?.terms())?);
        let size = words.bytes();
        if size <= self.budget {
            if let Ok(mut c) = self.inner.lock() {
                while c.bytes + size > self.budget {
                    let Some(oldest) = c
                        .entries
                        .iter()
                        .min_by_key(|(_, (_, used))| *used)
                        .map(|(k, _)| *k)
                    else {
                        break;
                    };
                    if let Some((w, _)) = c.entries.remove(&oldest) {
                        c.bytes -= w.bytes();
                    }
                }
                c.tick += 1;
                let tick = c.tick;
                if c.entries.insert(key, (words.clone(), tick)).is_none() {
                    c.bytes += size;
                }
            }
        }
        Ok(words)
    }
}

impl InfixCache {
    /// Copies the words of `field` in `segment` ahead of a lookup, unless they are kept
    /// already or would fill the cache past nine tenths of its budget (warming never
    /// evicts: a cache too small for the recent segments is left to lookups).
    /// `read_ahead` as for [`InfixCache::words`].
    ///
    /// # Errors
    /// As [`InfixCache::words`].
    pub fn warm(
        &self,
        segment: &SegmentReader,
        field: Field,
        read_ahead: Option<&Path>,
    ) -> tantivy::Result<Warmed> {
        let key = (segment.segment_id(), field);
        let held = match self.inner.lock() {
            Ok(c) if c.entries.contains_key(&key) => return Ok(Warmed::Held),
            Ok(c) => c.bytes,
            Err(_) => return Ok(Warmed::Full),
        };
        let inverted = segment.inverted_index(field)?;
        // Words average well under 16 bytes; an estimate keeps a large segment from being
        // copied only to be refused.
        let estimate = inverted.terms().num_terms().saturating_mul(16);
        if held.saturating_add(estimate) > self.budget / 10 * 9 {
            return Ok(Warmed::Full);
        }
        self.words(segment, field, read_ahead)?;
        Ok(Warmed::Copied)
    }
}

/// Reads `path` through once, sequentially, so that the page cache holds it. A failure
/// only leaves the pass that follows slower.
fn read_through(path: &Path) {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else {
        return;
    };
    let mut buf = vec![0u8; 1 << 20];
    while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
}

/// What [`InfixCache::warm`] did with a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Warmed {
    /// Its words were copied.
    Copied,
    /// They were held already.
    Held,
    /// They would fill the cache past nine tenths of its budget; not copied.
    Full,
}

/// Documents with a word of `field` containing `fragment` (ASCII letters and digits, in
/// the analyzer's lower case), through an [`InfixCache`].
#[derive(Clone)]
pub(crate) struct InfixQuery {
    pub field: Field,
    pub fragment: String,
    pub cache: Arc<InfixCache>,
    /// The partition's directory where its term files are read ahead
    /// ([`InfixCache::words`]).
    pub read_ahead: Option<PathBuf>,
}

impl fmt::Debug for InfixQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfixQuery({:?}, *{}*)", self.field, self.fragment)
    }
}

impl Query for InfixQuery {
    fn weight(&self, _scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(self.clone()))
    }
}

impl Weight for InfixQuery {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let words = self
            .cache
            .words(reader, self.field, self.read_ahead.as_deref())?;
        let inverted = reader.inverted_index(self.field)?;
        let mut docs = BitSet::with_max_value(reader.max_doc());
        let mut failed = None;
        words.containing(self.fragment.as_bytes(), |word| {
            if failed.is_some() {
                return;
            }
            let postings = inverted.terms().get(word).and_then(|info| match info {
                Some(info) => inverted
                    .read_block_postings_from_terminfo(&info, IndexRecordOption::Basic)
                    .map(Some),
                None => Ok(None),
            });
            match postings {
                Ok(Some(mut block)) => loop {
                    let ids = block.docs();
                    if ids.is_empty() {
                        break;
                    }
                    for &d in ids {
                        docs.insert(d);
                    }
                    block.advance();
                },
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        });
        if let Some(e) = failed {
            return Err(e.into());
        }
        Ok(Box::new(ConstScorer::new(BitSetDocSet::from(docs), boost)))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let mut scorer = self.scorer(reader, 1.0)?;
        if scorer.seek(doc) == doc {
            Ok(Explanation::new("InfixQuery", 1.0))
        } else {
            Err(TantivyError::InvalidArgument(format!(
                "document {doc} has no body word containing {:?}",
                self.fragment
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> BodyWords {
        let mut groups: Vec<Vec<u8>> = Vec::new();
        let mut sorted = list.to_vec();
        sorted.sort_unstable();
        for w in sorted {
            if groups.len() <= w.len() {
                groups.resize_with(w.len() + 1, Vec::new);
            }
            groups[w.len()].extend_from_slice(w.as_bytes());
        }
        BodyWords { groups }
    }

    fn found(w: &BodyWords, fragment: &str) -> Vec<String> {
        let mut out = Vec::new();
        w.containing(fragment.as_bytes(), |t| {
            out.push(String::from_utf8_lossy(t).into_owned())
        });
        out.sort();
        out
    }

    #[test]
    fn a_match_across_two_words_of_one_length_is_not_a_word_containing_it() {
        // "abcd" + "efgh" back to back hold "cdef", which neither word contains; the second
        // group's "xcdefx" does.
        let w = words(&["abcd", "efgh", "xcdefx"]);
        assert_eq!(found(&w, "cdef"), vec!["xcdefx"]);
        assert_eq!(found(&w, "de"), vec!["xcdefx"]);
        // A crossing match first, then a real one in a later word of the same length.
        let w = words(&["abcd", "efgh", "zcde"]);
        assert_eq!(found(&w, "cde"), vec!["zcde"]);
    }

    #[test]
    fn a_word_is_reported_once_however_often_it_holds_the_fragment() {
        let w = words(&["aaaa", "abab", "baba"]);
        assert_eq!(found(&w, "a"), vec!["aaaa", "abab", "baba"]);
        assert_eq!(found(&w, "ab"), vec!["abab", "baba"]);
    }

    #[test]
    fn words_shorter_than_the_fragment_are_not_searched() {
        let w = words(&["ab", "abc", "zabcz"]);
        assert_eq!(found(&w, "abc"), vec!["abc", "zabcz"]);
    }

    proptest::proptest! {
        #[test]
        fn containing_agrees_with_a_substring_test_on_every_word(
            list in proptest::collection::vec("[a-c]{1,6}", 0..40),
            fragment in "[a-c]{1,3}",
        ) {
            let mut unique = list.iter().map(String::as_str).collect::<Vec<_>>();
            unique.sort_unstable();
            unique.dedup();
            let w = words(&unique);
            let mut want: Vec<String> = unique
                .iter()
                .filter(|t| t.contains(fragment.as_str()))
                .map(|t| t.to_string())
                .collect();
            want.sort();
            proptest::prop_assert_eq!(found(&w, &fragment), want);
        }
    }
}
