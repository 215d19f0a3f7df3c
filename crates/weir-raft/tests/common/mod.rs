//! Shared by the raft layer's integration tests.

use weir_raft::CommittedLog;

/// Every committed payload of `log`, in index order.
pub fn payloads(log: &dyn CommittedLog) -> Vec<Vec<u8>> {
    payloads_from(log, 1)
}

/// Every committed payload of `log` from index `first` on, in index order.
#[allow(dead_code)] // not every test binary that shares this module uses it
pub fn payloads_from(log: &dyn CommittedLog, first: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut next = first;
    let wm = log.watermark();
    while next <= wm {
        let got = log.read(next, wm, 1 << 20).unwrap();
        let Some(last) = got.last() else { break };
        next = last.index + 1;
        out.extend(got.into_iter().map(|e| e.data));
    }
    out
}

/// The committed payloads `log` holds now, from its first index on, or `None` when a snapshot
/// install or compaction moved the log's start between reading its first index and its
/// entries (the caller polls again). Polling loops use this: a replica catching up by
/// snapshot drops its old log while the test reads it.
#[allow(dead_code)] // not every test binary that shares this module uses it
pub fn tail_payloads(log: &weir_raft::ShardLog) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut next = log.first_index();
    let wm = log.watermark();
    while next <= wm {
        let got = log.read(next, wm, 1 << 20).ok()?;
        let Some(last) = got.last() else { break };
        next = last.index + 1;
        out.extend(got.into_iter().map(|e| e.data));
    }
    Some(out)
}
