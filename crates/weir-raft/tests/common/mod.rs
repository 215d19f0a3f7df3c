//! Shared by the raft layer's integration tests.

use weir_raft::CommittedLog;

/// Every committed payload of `log`, in index order.
pub fn payloads(log: &dyn CommittedLog) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut next = 1;
    let wm = log.watermark();
    while next <= wm {
        let got = log.read(next, wm, 1 << 20).unwrap();
        let Some(last) = got.last() else { break };
        next = last.index + 1;
        out.extend(got.into_iter().map(|e| e.data));
    }
    out
}
