//! The raft layer of a single node over real WAL files: what is acknowledged is durable,
//! readable through `CommittedLog`, and survives a restart; idempotency keys hold across
//! restarts.

mod common;

use common::payloads;
use std::time::Duration;

use weir_raft::{CommittedLog, DedupKey, Error, NodeConfig, RaftNode};

fn config(dir: &std::path::Path) -> NodeConfig {
    let mut c = NodeConfig::single(dir);
    c.shard_count = 3;
    c.wal.segment_size_bytes = 1 << 20;
    c
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn acknowledged_proposals_are_readable_in_order_from_the_committed_log() {
    let dir = tempfile::tempdir().unwrap();
    let node = RaftNode::start(config(dir.path())).unwrap();
    let rt = rt();
    let mut indexes = Vec::new();
    for i in 0..50u32 {
        let p = node
            .propose(i % 3, None, format!("entry {i}").into_bytes())
            .unwrap();
        let c = rt.block_on(p).unwrap().unwrap();
        assert!(!c.duplicate);
        indexes.push((i % 3, c.index));
    }
    for shard in 0..3 {
        let log = node.committed_log(shard);
        assert!(
            indexes
                .iter()
                .filter(|(s, _)| *s == shard)
                .all(|(_, i)| *i <= log.watermark()),
            "watermark covers every acked index"
        );
        let want: Vec<Vec<u8>> = (0..50u32)
            .filter(|i| i % 3 == shard)
            .map(|i| format!("entry {i}").into_bytes())
            .collect();
        assert_eq!(payloads(log.as_ref()), want, "shard {shard}");
    }
    node.shutdown();
}

#[test]
fn the_log_survives_a_restart_and_keeps_accepting() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let node = RaftNode::start(config(dir.path())).unwrap();
        for i in 0..20 {
            rt.block_on(node.propose(0, None, vec![i; 3000]).unwrap())
                .unwrap()
                .unwrap();
        }
        node.shutdown();
    }
    let node = RaftNode::start(config(dir.path())).unwrap();
    let log = node.committed_log(0);
    // After a restart the entries are committed again once the node is leader.
    let wm = log.wait_for(20, Duration::from_secs(5));
    assert!(wm >= 20, "watermark {wm}");
    let c = rt
        .block_on(node.propose(0, None, vec![99; 10]).unwrap())
        .unwrap()
        .unwrap();
    let mut want: Vec<Vec<u8>> = (0..20).map(|i| vec![i; 3000]).collect();
    want.push(vec![99; 10]);
    log.wait_for(c.index - 1, Duration::from_secs(5));
    assert_eq!(payloads(log.as_ref()), want);
    node.shutdown();
}

#[test]
fn a_dedup_key_is_stored_once_even_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let key = |s| {
        Some(DedupKey {
            producer: "t\u{0}p".into(),
            sequence: s,
        })
    };
    {
        let node = RaftNode::start(config(dir.path())).unwrap();
        // The original and its immediate retry race: the retry waits for the original.
        let a = node.propose(1, key(1), b"one".to_vec()).unwrap();
        let b = node.propose(1, key(1), b"one".to_vec()).unwrap();
        let (a, b) = (
            rt.block_on(a).unwrap().unwrap(),
            rt.block_on(b).unwrap().unwrap(),
        );
        assert!(!a.duplicate && b.duplicate);
        assert!(
            rt.block_on(node.propose(1, key(1), b"one".to_vec()).unwrap())
                .unwrap()
                .unwrap()
                .duplicate
        );
        node.shutdown();
    }
    let node = RaftNode::start(config(dir.path())).unwrap();
    let log = node.committed_log(1);
    log.wait_for(1, Duration::from_secs(5));
    // The table is rebuilt by re-applying the log before any new proposal is handled.
    std::thread::sleep(Duration::from_millis(300));
    let c = rt
        .block_on(node.propose(1, key(1), b"one".to_vec()).unwrap())
        .unwrap()
        .unwrap();
    assert!(c.duplicate, "retry after restart recognised");
    let c = rt
        .block_on(node.propose(1, key(2), b"two".to_vec()).unwrap())
        .unwrap()
        .unwrap();
    assert!(!c.duplicate);
    assert_eq!(
        payloads(log.as_ref()),
        vec![b"one".to_vec(), b"two".to_vec()]
    );
    node.shutdown();
}

#[test]
fn a_full_proposal_queue_is_refused_at_once_not_blocked() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.proposal_queue_len = 1;
    let node = RaftNode::start(cfg).unwrap();
    // Until the new leader has applied its first entry, proposals are held back (and a
    // full hold-back list is also answered Overloaded); wait for that, to test the queue.
    node.committed_log(0).wait_for(0, Duration::from_secs(5));
    let mut overloaded = 0;
    let mut accepted = Vec::new();
    for _ in 0..2000 {
        match node.propose(0, None, vec![7; 64 << 10]) {
            Ok(p) => accepted.push(p),
            Err(Error::Overloaded) => overloaded += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(
        overloaded > 0,
        "a queue of one must overflow under 2000 back-to-back proposals"
    );
    let rt = rt();
    for p in accepted {
        match rt.block_on(p).unwrap() {
            Ok(_) | Err(Error::Overloaded) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    node.shutdown();
}

#[test]
fn reading_above_the_watermark_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = RaftNode::start(config(dir.path())).unwrap();
    let log = node.committed_log(2);
    let wm = log.wait_for(0, Duration::from_secs(5));
    match log.read(1, wm + 10, 1024) {
        Err(Error::NotCommitted { watermark, .. }) => assert_eq!(watermark, wm),
        other => panic!("expected NotCommitted, got {other:?}"),
    }
    node.shutdown();
}

#[test]
fn a_full_disk_refuses_appends_loses_nothing_and_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let node = RaftNode::start(config(dir.path())).unwrap();
    let rt = rt();
    let log = node.committed_log(0);
    log.wait_for(0, Duration::from_secs(5));
    rt.block_on(node.propose(0, None, b"before".to_vec()).unwrap())
        .unwrap()
        .unwrap();

    node.inject_wal_write_error(0, Some(28)); // ENOSPC
    let in_flight = node.propose(0, None, b"during".to_vec()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !node
        .health()
        .disk_full
        .load(std::sync::atomic::Ordering::Acquire)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "disk_full never reported"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    match node.propose(0, None, b"refused".to_vec()) {
        Err(Error::DiskFull) => {}
        other => panic!("expected DiskFull, got {:?}", other.map(|_| ())),
    }

    node.inject_wal_write_error(0, None);
    let c = rt
        .block_on(in_flight)
        .unwrap()
        .expect("the in-flight append commits once space returns");
    assert!(!node
        .health()
        .disk_full
        .load(std::sync::atomic::Ordering::Acquire));
    rt.block_on(node.propose(0, None, b"after".to_vec()).unwrap())
        .unwrap()
        .unwrap();
    log.wait_for(c.index, Duration::from_secs(5));
    node.shutdown();

    // Everything acknowledged is there after a restart, exactly once and in order.
    let node = RaftNode::start(config(dir.path())).unwrap();
    let log = node.committed_log(0);
    log.wait_for(c.index + 1, Duration::from_secs(5));
    assert_eq!(
        payloads(log.as_ref()),
        vec![b"before".to_vec(), b"during".to_vec(), b"after".to_vec()]
    );
    node.shutdown();
}

#[test]
fn a_producer_sequence_below_the_window_is_an_error_not_a_silent_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let node = RaftNode::start(config(dir.path())).unwrap();
    let rt = rt();
    node.committed_log(0).wait_for(0, Duration::from_secs(5));
    let key = |s| {
        Some(DedupKey {
            producer: "t\u{0}p".into(),
            sequence: s,
        })
    };
    let mut last = None;
    for s in 1..=(weir_raft::DEDUP_WINDOW as u64 + 5) {
        last = Some(node.propose(0, key(s), vec![1]).unwrap());
    }
    rt.block_on(last.unwrap()).unwrap().unwrap();
    match rt
        .block_on(node.propose(0, key(2), vec![1]).unwrap())
        .unwrap()
    {
        Err(Error::SequenceTooOld { sequence: 2, .. }) => {}
        other => panic!("expected SequenceTooOld, got {other:?}"),
    }
    node.shutdown();
}

/// Waits until the node leads `log`'s shard and has re-applied its log (cursors current).
fn wait_leader(log: &weir_raft::ShardLog) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !log.is_leader() {
        assert!(
            std::time::Instant::now() < deadline,
            "never became a current leader"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_consumer_cursor_is_committed_survives_restart_and_is_never_read_as_payload() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let node = RaftNode::start(config(dir.path())).unwrap();
        let log = node.committed_log(1);
        wait_leader(&log);
        assert_eq!(log.cursor("mirror/es"), None);
        let mut last = 0;
        for i in 0..5u8 {
            last = rt
                .block_on(node.propose(1, None, vec![i]).unwrap())
                .unwrap()
                .unwrap()
                .index;
        }
        rt.block_on(node.propose_cursor(1, "mirror/es", last).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(log.cursor("mirror/es"), Some(last));
        // Cursors only move forward.
        rt.block_on(node.propose_cursor(1, "mirror/es", 2).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(log.cursor("mirror/es"), Some(last));
        assert_eq!(
            payloads(log.as_ref()),
            (0..5u8).map(|i| vec![i]).collect::<Vec<_>>(),
            "cursor entries are not payload"
        );
        node.shutdown();
    }
    let node = RaftNode::start(config(dir.path())).unwrap();
    let log = node.committed_log(1);
    wait_leader(&log);
    assert_eq!(
        log.cursor("mirror/es"),
        Some(5 + 1),
        "rebuilt from the log (index 1 is the election's empty entry)"
    );
    assert_eq!(log.cursor("mirror/loki"), None);
    node.shutdown();
}

#[test]
fn compaction_never_passes_a_required_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = config(dir.path());
    c.wal.segment_size_bytes = 1 << 20;
    let node = RaftNode::start(c).unwrap();
    node.require_cursors(vec!["mirror/loki".into()]);
    let mut indexes = Vec::new();
    for _ in 0..40 {
        // 100 KiB of noise each (lz4 cannot shrink it): 40 entries span several segments.
        let noise: Vec<u8> = (0..100 << 10).map(|_| rand::random::<u8>()).collect();
        let p = node.propose(0, None, noise).unwrap();
        indexes.push(rt.block_on(p).unwrap().unwrap().index);
    }
    let log = node.committed_log(0);
    // Unset required cursor: nothing may be removed.
    node.compact(0, log.watermark() + 1);
    let status = rt.block_on(node.status()).unwrap();
    assert_eq!(status[0].first_index, 1, "no cursor yet, nothing removed");
    // The cursor reached entry 20: compaction stops at or before 21.
    rt.block_on(node.propose_cursor(0, "mirror/loki", indexes[20]).unwrap())
        .unwrap()
        .unwrap();
    // Compaction is rate-limited per shard; restart so the next request is honoured.
    node.shutdown();
    drop(node);
    let mut c = config(dir.path());
    c.wal.segment_size_bytes = 1 << 20;
    let node = RaftNode::start(c).unwrap();
    node.require_cursors(vec!["mirror/loki".into()]);
    let log = node.committed_log(0);
    wait_leader(&log);
    assert_eq!(log.cursor("mirror/loki"), Some(indexes[20]));
    node.compact(0, log.watermark() + 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let first = loop {
        let s = rt.block_on(node.status()).unwrap();
        if s[0].first_index > 1 {
            break s[0].first_index;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "compaction never happened"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        first > 1 && first <= indexes[20] + 1,
        "first index {first} must not pass the cursor {}",
        indexes[20]
    );
    // Everything above the cursor is still readable.
    let got = log
        .read(indexes[20] + 1, log.watermark(), 64 << 20)
        .unwrap();
    assert_eq!(got.len(), 19);
    node.shutdown();
}

#[test]
fn a_retry_of_a_batch_whose_entry_was_compacted_away_is_still_a_duplicate_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let key = |s: u64| {
        Some(DedupKey {
            producer: "acme/agent-7".into(),
            sequence: s,
        })
    };
    let node = RaftNode::start(config(dir.path())).unwrap();
    let log = node.committed_log(0);
    wait_leader(&log);
    for s in 0..40 {
        // 100 KiB of noise each: 40 entries span several 1 MiB segments.
        let noise: Vec<u8> = (0..100 << 10).map(|_| rand::random::<u8>()).collect();
        rt.block_on(node.propose(0, key(s), noise).unwrap())
            .unwrap()
            .unwrap();
    }
    node.compact(0, log.watermark() + 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while rt.block_on(node.status()).unwrap()[0].first_index <= 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "compaction never happened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    node.shutdown();
    drop(node);
    // Sequence 0's entry is gone from the log; the table saved at compaction still knows it.
    let node = RaftNode::start(config(dir.path())).unwrap();
    let log = node.committed_log(0);
    wait_leader(&log);
    assert!(log.first_index() > 2, "the first entries were compacted");
    let again = rt
        .block_on(node.propose(0, key(0), b"retry".to_vec()).unwrap())
        .unwrap()
        .unwrap();
    assert!(again.duplicate, "a retry of sequence 0 is recognised");
    let fresh = rt
        .block_on(node.propose(0, key(40), b"new".to_vec()).unwrap())
        .unwrap()
        .unwrap();
    assert!(!fresh.duplicate);
    node.shutdown();
}
