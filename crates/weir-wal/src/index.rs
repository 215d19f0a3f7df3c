//! In-memory map from log index to frame location.

use std::collections::VecDeque;

/// Where a frame lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    /// Segment sequence number.
    pub seq: u64,
    /// Offset of the frame (its length prefix) in the segment file.
    pub offset: u64,
    /// Total length of the frame.
    pub len: u32,
}

/// Dense map `first..=last -> Loc`. The segment of the entries never
/// decreases with the index (a later write replaces every higher index), which
/// the GC relies on.
#[derive(Debug, Clone, Default)]
pub(crate) struct IndexMap {
    first: u64,
    locs: VecDeque<Loc>,
}

impl IndexMap {
    pub fn first(&self) -> Option<u64> {
        (!self.locs.is_empty()).then_some(self.first)
    }

    pub fn last(&self) -> Option<u64> {
        (!self.locs.is_empty()).then(|| self.first + self.locs.len() as u64 - 1)
    }

    pub fn get(&self, index: u64) -> Option<Loc> {
        let i = index.checked_sub(self.first)?;
        self.locs.get(usize::try_from(i).ok()?).copied()
    }

    /// Applies "truncate the suffix from `index`, then put it": the replay rule
    /// of the log. An index below `first` restarts the map there (what is left
    /// after the GC removed the segments holding the old prefix). Returns the
    /// expected index on a gap.
    pub fn apply(&mut self, index: u64, loc: Loc) -> Result<(), u64> {
        match self.last() {
            None => self.first = index,
            Some(last) if index == last + 1 => {}
            Some(last) if index > last + 1 => return Err(last + 1),
            Some(_) if index < self.first => {
                self.locs.clear();
                self.first = index;
            }
            Some(_) => {
                let keep = (index - self.first) as usize;
                self.locs.truncate(keep);
            }
        }
        if let Some(prev) = self.locs.back() {
            assert!(prev.seq <= loc.seq, "index map segments must not decrease");
        }
        self.locs.push_back(loc);
        Ok(())
    }

    pub fn clear(&mut self) {
        self.locs.clear();
    }

    /// The highest index stored in a segment `<= seq`, if any.
    pub fn last_index_in_segments_upto(&self, seq: u64) -> Option<u64> {
        let n = self.locs.partition_point(|l| l.seq <= seq);
        (n > 0).then(|| self.first + n as u64 - 1)
    }

    /// Drops the entries stored in segments `<= seq` (a prefix).
    pub fn drop_segments_upto(&mut self, seq: u64) {
        let n = self.locs.partition_point(|l| l.seq <= seq);
        self.locs.drain(..n);
        self.first += n as u64;
    }

    pub fn last_loc(&self) -> Option<Loc> {
        self.locs.back().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(seq: u64) -> Loc {
        Loc {
            seq,
            offset: 0,
            len: 1,
        }
    }

    #[test]
    fn apply_truncates_and_rebases() {
        let mut m = IndexMap::default();
        assert_eq!(m.first(), None);
        for i in 5..10 {
            m.apply(i, loc(1)).unwrap();
        }
        assert_eq!((m.first(), m.last()), (Some(5), Some(9)));
        assert_eq!(m.apply(11, loc(1)), Err(10));
        m.apply(7, loc(2)).unwrap();
        assert_eq!(m.last(), Some(7));
        assert_eq!(m.get(7), Some(loc(2)));
        assert_eq!(m.last_index_in_segments_upto(1), Some(6));
        m.apply(3, loc(3)).unwrap();
        assert_eq!((m.first(), m.last()), (Some(3), Some(3)));
        m.apply(4, loc(3)).unwrap();
        m.drop_segments_upto(2);
        assert_eq!(m.first(), Some(3));
        m.drop_segments_upto(3);
        assert_eq!(m.first(), None);
    }
}
