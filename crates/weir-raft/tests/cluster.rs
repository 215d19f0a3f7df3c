//! Three raft nodes in one process over real WAL files, wired by an in-memory network that
//! can cut a node off: replication, failover, a proposal's fate across a leader change,
//! deduplication across leader changes, catch-up after a partition heals.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use weir_raft::{CommittedLog, DedupKey, Error, NodeConfig, Outbox, RaftNode};

/// Delivers every message to the destination node's `step`, unless either end is cut off.
#[derive(Default)]
struct Net {
    nodes: Mutex<Vec<Option<Arc<RaftNode>>>>,
    cut: Mutex<HashSet<u64>>,
}

struct NodeOutbox {
    from: u64,
    net: Arc<Net>,
}

impl Outbox for NodeOutbox {
    fn send(&self, to: u64, shard: u32, message: Vec<u8>) {
        let cut = self.net.cut.lock().unwrap();
        if cut.contains(&self.from) || cut.contains(&to) {
            return;
        }
        drop(cut);
        let target = self.net.nodes.lock().unwrap()[to as usize - 1].clone();
        if let Some(n) = target {
            n.step(shard, &message).unwrap();
        }
    }
}

struct Cluster {
    net: Arc<Net>,
    dirs: Vec<tempfile::TempDir>,
    nodes: Vec<Arc<RaftNode>>,
}

const SHARDS: u32 = 2;

fn start_node(net: &Arc<Net>, dir: &std::path::Path, id: u64) -> Arc<RaftNode> {
    let mut c = NodeConfig::single(dir);
    c.node_id = id;
    c.voters = vec![1, 2, 3];
    c.shard_count = SHARDS;
    c.wal.segment_size_bytes = 1 << 20;
    c.tick_interval_ms = 20;
    let node = Arc::new(
        RaftNode::start_with(
            c,
            Arc::new(NodeOutbox {
                from: id,
                net: net.clone(),
            }),
        )
        .unwrap(),
    );
    net.nodes.lock().unwrap()[id as usize - 1] = Some(node.clone());
    node
}

impl Cluster {
    fn start() -> Cluster {
        let net = Arc::new(Net::default());
        *net.nodes.lock().unwrap() = vec![None, None, None];
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let nodes = (1..=3)
            .map(|id| start_node(&net, dirs[id as usize - 1].path(), id))
            .collect();
        Cluster { net, dirs, nodes }
    }

    /// The node every live node agrees leads `shard`, once there is one.
    fn leader(&self, shard: u32) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let cut = self.net.cut.lock().unwrap().clone();
            let views: Vec<Option<u64>> = self
                .nodes
                .iter()
                .filter(|n| !cut.contains(&n.node_id()))
                .map(|n| n.leader_of(shard))
                .collect();
            if let Some(Some(l)) = views.first() {
                if !cut.contains(l) && views.iter().all(|v| *v == Some(*l)) {
                    return *l;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader for shard {shard}: {views:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn node(&self, id: u64) -> &Arc<RaftNode> {
        &self.nodes[id as usize - 1]
    }
}

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Proposes on whoever leads, retrying refusals that prove nothing was stored.
fn propose(c: &Cluster, shard: u32, key: Option<DedupKey>, data: &[u8]) -> weir_raft::Committed {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let leader = c.leader(shard);
        let p = c
            .node(leader)
            .propose(shard, key.clone(), data.to_vec())
            .unwrap();
        match rt().block_on(async { tokio::time::timeout(Duration::from_secs(5), p).await }) {
            Ok(Ok(Ok(committed))) => return committed,
            Ok(Ok(Err(Error::NotLeader { .. } | Error::Dropped { .. }))) | Err(_) => {}
            other => panic!("unexpected proposal result {other:?}"),
        }
        assert!(Instant::now() < deadline, "proposal never committed");
    }
}

fn payloads(log: &dyn CommittedLog) -> Vec<Vec<u8>> {
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

/// Waits until every node's committed log of `shard` holds `want` in order.
fn assert_replicated(c: &Cluster, shard: u32, want: &[Vec<u8>]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in &c.nodes {
        loop {
            let got = payloads(&*n.committed_log(shard));
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} shard {shard} holds {} entries, want {}",
                n.node_id(),
                got.len(),
                want.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn every_acknowledged_entry_is_on_every_replica_in_the_same_order() {
    let c = Cluster::start();
    let mut want = Vec::new();
    for i in 0..40 {
        let data = format!("entry {i}").into_bytes();
        let committed = propose(&c, 0, None, &data);
        assert!(!committed.duplicate);
        want.push(data);
    }
    assert_replicated(&c, 0, &want);
}

#[test]
fn leaders_settle_on_the_preferred_node_of_each_shard() {
    let c = Cluster::start();
    // Shard s prefers voter s % 3 + 1: with two shards, nodes 1 and 2 lead one each.
    let deadline = Instant::now() + Duration::from_secs(15);
    while (c.leader(0), c.leader(1)) != (1, 2) {
        assert!(
            Instant::now() < deadline,
            "leaders did not settle: {} {}",
            c.leader(0),
            c.leader(1)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_cut_off_leader_is_replaced_and_the_retried_batch_is_stored_once() {
    let c = Cluster::start();
    let key = |seq| {
        Some(DedupKey {
            producer: "default\0agent-1".into(),
            sequence: seq,
        })
    };
    let mut want = vec![b"one".to_vec()];
    propose(&c, 0, key(1), b"one");
    let old = c.leader(0);
    // The batch reaches the leader, which is then cut off: it may or may not commit it
    // before losing its quorum; the client does not know and retries elsewhere.
    c.net.cut.lock().unwrap().insert(old);
    let _ = c.node(old).propose(0, key(2), b"two".to_vec());
    let new = c.leader(0);
    assert_ne!(new, old, "a new leader was elected among the other two");
    let first = propose(&c, 0, key(2), b"two");
    let again = propose(&c, 0, key(2), b"two");
    assert!(
        again.duplicate,
        "the retry of an acknowledged batch is a duplicate"
    );
    let _ = first;
    want.push(b"two".to_vec());
    propose(&c, 0, key(3), b"three");
    want.push(b"three".to_vec());
    // Heal: the old leader catches up and holds exactly what the others hold.
    c.net.cut.lock().unwrap().clear();
    assert_replicated(&c, 0, &want);
}

#[test]
fn a_shard_without_quorum_refuses_instead_of_acknowledging() {
    let c = Cluster::start();
    propose(&c, 1, None, b"before");
    let leader = c.leader(1);
    let others: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
    c.net.cut.lock().unwrap().extend(others.iter().copied());
    let p = c.node(leader).propose(1, None, b"lonely".to_vec());
    // Either refused at once (the leader stepped down) or never committed: never Ok.
    if let Ok(p) = p {
        let r = rt().block_on(async { tokio::time::timeout(Duration::from_secs(3), p).await });
        assert!(
            !matches!(r, Ok(Ok(Ok(_)))),
            "committed without a quorum: {r:?}"
        );
    }
    // check_quorum: the isolated leader steps down and says it does not know a leader.
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.node(leader).leader_of(1) == Some(leader) {
        assert!(Instant::now() < deadline, "isolated leader kept leading");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.net.cut.lock().unwrap().clear();
    propose(&c, 1, None, b"after");
    let logs = payloads(&*c.node(c.leader(1)).committed_log(1));
    assert_eq!(logs.first().map(Vec::as_slice), Some(&b"before"[..]));
    assert_eq!(logs.last().map(Vec::as_slice), Some(&b"after"[..]));
}

#[test]
fn a_restarted_follower_catches_up_from_the_log() {
    let mut c = Cluster::start();
    let mut want = Vec::new();
    for i in 0..10 {
        let d = format!("a{i}").into_bytes();
        propose(&c, 0, None, &d);
        want.push(d);
    }
    let follower = (1..=3).find(|n| *n != c.leader(0)).unwrap();
    let node = c.nodes[follower as usize - 1].clone();
    c.net.nodes.lock().unwrap()[follower as usize - 1] = None;
    // Down counts as cut off, for `leader` too.
    c.net.cut.lock().unwrap().insert(follower);
    node.shutdown();
    drop(node);
    for i in 0..10 {
        let d = format!("b{i}").into_bytes();
        propose(&c, 0, None, &d);
        want.push(d);
    }
    let n = start_node(&c.net, c.dirs[follower as usize - 1].path(), follower);
    c.nodes[follower as usize - 1] = n;
    c.net.cut.lock().unwrap().clear();
    assert_replicated(&c, 0, &want);
}
