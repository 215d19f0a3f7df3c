//! The idempotency table: which (producer, sequence) pairs a shard has already stored.
//!
//! Built only from the committed log, in log order, so every replica holds the same table
//! at the same applied index. Sequences of one producer are expected to increase; up to
//! [`WINDOW`] of them may arrive out of order (several batches in flight). A sequence below
//! the window of its producer counts as already stored.

use std::collections::{BTreeSet, HashMap};

use crate::DedupKey;

/// How many recent sequence numbers are remembered exactly per producer.
pub const WINDOW: usize = 1024;

/// What a [`DedupTable`] knows of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Never stored (as far as the window reaches).
    New,
    /// Stored: a retry.
    Stored,
    /// Below the producer's window: it cannot be told whether it was stored.
    TooOld {
        /// Every sequence at or below this one is outside the window.
        floor: u64,
    },
}

#[derive(Default)]
struct Producer {
    /// Every sequence `<= floor` counts as seen.
    floor: Option<u64>,
    seen: BTreeSet<u64>,
    last_used_index: u64,
}

/// Per-shard table of recently stored producer sequences. Bounded: at most `max_producers`
/// producers; past that the least recently used tenth is forgotten (their retries older
/// than that would be stored again — documented in docs/ingest.md).
pub struct DedupTable {
    producers: HashMap<String, Producer>,
    max_producers: usize,
}

impl DedupTable {
    /// An empty table that remembers at most `max_producers` producers.
    pub fn new(max_producers: usize) -> Self {
        DedupTable {
            producers: HashMap::new(),
            max_producers: max_producers.max(1),
        }
    }

    /// What the table knows of `key`.
    pub fn check(&self, key: &DedupKey) -> Seen {
        match self.producers.get(&key.producer) {
            None => Seen::New,
            Some(p) if p.seen.contains(&key.sequence) => Seen::Stored,
            Some(p) if p.floor.is_some_and(|f| key.sequence <= f) => Seen::TooOld {
                floor: p.floor.unwrap_or(0),
            },
            Some(_) => Seen::New,
        }
    }

    /// Whether `key` was recorded, or is too old to tell.
    pub fn contains(&self, key: &DedupKey) -> bool {
        self.check(key) != Seen::New
    }

    /// Records `key` as stored by the entry at `log_index`.
    pub fn insert(&mut self, key: &DedupKey, log_index: u64) {
        if !self.producers.contains_key(&key.producer) && self.producers.len() >= self.max_producers
        {
            self.evict();
        }
        let p = self.producers.entry(key.producer.clone()).or_default();
        // max: applying an entry twice (a snapshot's table, then the log after the
        // snapshot's index) leaves the table as applying it once did.
        p.last_used_index = p.last_used_index.max(log_index);
        if p.floor.is_some_and(|f| key.sequence <= f) {
            return;
        }
        p.seen.insert(key.sequence);
        while p.seen.len() > WINDOW {
            let oldest = p.seen.pop_first().expect("len > WINDOW > 0");
            p.floor = Some(p.floor.map_or(oldest, |f| f.max(oldest)));
        }
    }

    /// Number of producers remembered.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is remembered.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Appends the table's encoding (layout in `codec`'s module docs): each producer's
    /// remembered sequences as runs of consecutive numbers, usually one run.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let mut names: Vec<&String> = self.producers.keys().collect();
        names.sort();
        out.extend_from_slice(&(names.len() as u32).to_le_bytes());
        for name in names {
            let p = &self.producers[name];
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.push(u8::from(p.floor.is_some()));
            out.extend_from_slice(&p.floor.unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&p.last_used_index.to_le_bytes());
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for &s in &p.seen {
                match runs.last_mut() {
                    Some((first, count)) if *first + *count == s => *count += 1,
                    _ => runs.push((s, 1)),
                }
            }
            out.extend_from_slice(&(runs.len() as u32).to_le_bytes());
            for (first, count) in runs {
                out.extend_from_slice(&first.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
            }
        }
    }

    /// Reads what [`DedupTable::encode`] wrote.
    pub(crate) fn decode(
        r: &mut crate::codec::Reader<'_>,
        max_producers: usize,
    ) -> Result<DedupTable, crate::codec::Malformed> {
        let mut t = DedupTable::new(max_producers);
        let n = r.u32()? as usize;
        for _ in 0..n {
            let len = r.u32()? as usize;
            let name = r.str(len, "producer id")?;
            let has_floor = r.u8()? != 0;
            let floor = r.u64()?;
            let last_used_index = r.u64()?;
            let runs = r.u32()? as usize;
            let mut seen = BTreeSet::new();
            for _ in 0..runs {
                let (first, count) = (r.u64()?, r.u64()?);
                if seen.len() as u64 + count > WINDOW as u64 {
                    return Err(crate::codec::Malformed::WindowOverflow {
                        producer: name,
                        window: WINDOW,
                    });
                }
                seen.extend((0..count).map(|i| first.wrapping_add(i)));
            }
            t.producers.insert(
                name,
                Producer {
                    floor: has_floor.then_some(floor),
                    seen,
                    last_used_index,
                },
            );
        }
        while t.producers.len() > t.max_producers {
            t.evict();
        }
        Ok(t)
    }

    fn evict(&mut self) {
        let mut by_age: Vec<(u64, String)> = self
            .producers
            .iter()
            .map(|(k, p)| (p.last_used_index, k.clone()))
            .collect();
        by_age.sort_unstable();
        let n = (self.max_producers / 10).max(1);
        for (_, k) in by_age.into_iter().take(n) {
            self.producers.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(p: &str, s: u64) -> DedupKey {
        DedupKey {
            producer: p.into(),
            sequence: s,
        }
    }

    #[test]
    fn remembers_sequences_per_producer() {
        let mut t = DedupTable::new(10);
        t.insert(&k("a", 5), 1);
        assert!(t.contains(&k("a", 5)));
        assert!(
            !t.contains(&k("a", 4)),
            "out-of-order sequences within the window are new"
        );
        assert!(!t.contains(&k("b", 5)), "producers are independent");
    }

    #[test]
    fn sequences_that_fell_out_of_the_window_count_as_stored() {
        let mut t = DedupTable::new(10);
        for s in 0..(WINDOW as u64 + 10) {
            t.insert(&k("a", s), s + 1);
        }
        assert!(
            matches!(t.check(&k("a", 3)), Seen::TooOld { .. }),
            "too old to tell, not silently a duplicate"
        );
        assert_eq!(t.check(&k("a", WINDOW as u64 + 9)), Seen::Stored);
        assert!(!t.contains(&k("a", WINDOW as u64 + 10)));
    }

    #[test]
    fn bounded_number_of_producers_evicts_least_recently_used() {
        let mut t = DedupTable::new(10);
        for i in 0..25u64 {
            t.insert(&k(&format!("p{i}"), 1), i + 1);
        }
        assert!(t.len() <= 10);
        assert!(t.contains(&k("p24", 1)), "the newest producer is kept");
        assert!(
            !t.contains(&k("p0", 1)),
            "the oldest producer was forgotten"
        );
    }

    #[test]
    fn the_table_a_snapshot_carries_knows_what_the_original_knew() {
        let mut t = DedupTable::new(100);
        for s in 0..(WINDOW as u64 + 10) {
            t.insert(&k("a", s), s + 1);
        }
        t.insert(&k("b", 7), 2000);
        t.insert(&k("b", 9), 2001);
        let mut cursors = std::collections::HashMap::new();
        cursors.insert("elasticsearch/main".to_owned(), 1999);
        let bytes = crate::codec::encode_state(2001, &cursors, &t);
        let (applied, c, mut back) = crate::codec::decode_state(&bytes, 100).unwrap();
        assert_eq!((applied, &c), (2001, &cursors));
        for probe in [
            k("a", 3),
            k("a", 500),
            k("a", WINDOW as u64 + 9),
            k("a", 99_999),
            k("b", 7),
            k("b", 8),
            k("b", 9),
            k("c", 1),
        ] {
            assert_eq!(back.check(&probe), t.check(&probe), "{probe:?}");
        }
        // Applying the entries after the snapshot's index again changes nothing.
        back.insert(&k("b", 9), 2001);
        assert_eq!(crate::codec::encode_state(2001, &c, &back), bytes);
        assert!(crate::codec::decode_state(&bytes[..bytes.len() - 1], 100).is_err());
    }
}
