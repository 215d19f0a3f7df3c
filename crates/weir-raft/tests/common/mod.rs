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
