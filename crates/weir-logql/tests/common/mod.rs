//! An in-memory [`Source`]: a brute-force filter over a `Vec<Entry>`.

#![allow(dead_code)]

use std::cell::Cell;

use weir_logql::*;

pub const SEC: i64 = 1_000_000_000;

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn entry(ts_s: f64, line: &str, stream: &[(&str, &str)]) -> Entry {
    Entry {
        ts_ns: (ts_s * SEC as f64) as i64,
        line: line.to_string(),
        stream: labels(stream),
        metadata: Labels::new(),
    }
}

/// Hands out every entry the selector picks, in the asked order; with `use_hints`, skips
/// every line lacking a hinted substring.
pub struct VecSource {
    pub entries: Vec<Entry>,
    pub use_hints: bool,
    pub selects: Cell<usize>,
    /// Answer [`Source::count`] (by counting the entries) instead of declining.
    pub use_counts: bool,
    /// How many counts were asked.
    pub counts: Cell<usize>,
    /// [`Source::scan`] hands the entries out newest first, every other one first (as
    /// an unordered source may), instead of oldest first.
    pub scramble_scans: bool,
    /// How many scans were asked.
    pub scans: Cell<usize>,
}

impl VecSource {
    pub fn new(entries: Vec<Entry>) -> Self {
        VecSource {
            entries,
            use_hints: false,
            selects: Cell::new(0),
            use_counts: false,
            counts: Cell::new(0),
            scramble_scans: false,
            scans: Cell::new(0),
        }
    }
}

impl Source for VecSource {
    fn select(
        &self,
        selector: &[Matcher],
        hints: &Hints,
        start_ns: i64,
        end_ns: i64,
        direction: Direction,
    ) -> Result<EntryIter<'_>, EngineError> {
        self.selects.set(self.selects.get() + 1);
        let mut out: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| e.ts_ns >= start_ns && e.ts_ns < end_ns)
            .filter(|e| selector.iter().all(|m| m.matches_labels(&e.stream)))
            .filter(|e| !self.use_hints || hints.may_match(&e.line))
            .cloned()
            .collect();
        out.sort_by_key(|e| e.ts_ns);
        if direction == Direction::Backward {
            out.reverse();
        }
        Ok(Box::new(out.into_iter().map(Ok)))
    }

    fn scan(
        &self,
        selector: &[Matcher],
        hints: &Hints,
        start_ns: i64,
        end_ns: i64,
    ) -> Result<EntryIter<'_>, EngineError> {
        self.scans.set(self.scans.get() + 1);
        if !self.scramble_scans {
            return self.select(selector, hints, start_ns, end_ns, Direction::Forward);
        }
        let all = self.select(selector, hints, start_ns, end_ns, Direction::Backward)?;
        let (even, odd): (Vec<_>, Vec<_>) = all.enumerate().partition(|(i, _)| i % 2 == 0);
        Ok(Box::new(even.into_iter().chain(odd).map(|(_, e)| e)))
    }

    fn count(&self, req: &CountRequest<'_>) -> Option<Result<GroupCounts, EngineError>> {
        if !self.use_counts {
            return None;
        }
        self.counts.set(self.counts.get() + 1);
        let mut groups: std::collections::BTreeMap<Labels, Vec<u64>> = Default::default();
        let end = req.origin_ns + req.width_ns * req.buckets as i64;
        for e in &self.entries {
            if e.ts_ns < req.origin_ns || e.ts_ns >= end {
                continue;
            }
            if !req.selector.iter().all(|m| m.matches_labels(&e.stream)) {
                continue;
            }
            let key: Labels = e
                .stream
                .iter()
                .filter(|(k, _)| req.group_by.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let counts = groups.entry(key).or_insert_with(|| vec![0; req.buckets]);
            counts[((e.ts_ns - req.origin_ns) / req.width_ns) as usize] += 1;
        }
        Some(Ok(groups.into_iter().collect()))
    }
}

pub fn range_params(start_s: i64, end_s: i64, step_s: i64) -> QueryParams {
    QueryParams {
        start_ns: start_s * SEC,
        end_ns: end_s * SEC,
        step_ns: step_s * SEC,
        limit: 100,
        direction: Direction::Forward,
        instant: false,
        limits: Limits::default(),
    }
}

pub fn instant_params(at_s: i64) -> QueryParams {
    QueryParams {
        instant: true,
        ..range_params(at_s, at_s, 0)
    }
}

pub fn run(q: &str, params: &QueryParams, src: &VecSource) -> Result<QueryResult, EngineError> {
    evaluate(&parse(q)?, params, src)
}
