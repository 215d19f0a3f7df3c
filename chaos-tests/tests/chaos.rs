//! The bounded chaos run of CI: a real three-process cluster mirroring to an
//! Elasticsearch and a Loki test server, two writers, and one round of every fault (leader
//! SIGKILL, SIGSTOP/SIGCONT, a partition isolating a node from its peers and its clients, a
//! node wiped and restarted), then every node's copy is checked (every acknowledged record
//! exactly once, nothing unacknowledged twice, nothing invented), and so is what each
//! backend received: Elasticsearch every acknowledged record exactly once, Loki at least
//! once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_chaos::{
    await_mirrors, check, fault_round, mirror_sinks, mirrors_clean, summary, Cluster, Ledger,
    Writer,
};
use weir_testkit::elasticsearch::FakeElasticsearch;
use weir_testkit::loki::FakeLoki;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_record_survives_every_fault_exactly_once_on_every_node() {
    let es = FakeElasticsearch::start().await.unwrap();
    let loki = FakeLoki::start().await.unwrap();
    let mut cluster = Cluster::start_with(3, 4, &mirror_sinks(&es.url(), &loki.url()))
        .await
        .expect("cluster starts");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let writers: Vec<Writer> = (0..2)
        .map(|id| Writer::start(id, cluster.client_addrs(), ledger.clone()))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Err(e) = fault_round(&mut cluster, 0, Duration::from_secs(3)).await {
        let tails: Vec<String> = (1..=3)
            .map(|id| format!("--- node {id}\n{}", cluster.log_tail(id)))
            .collect();
        let dir = cluster.keep();
        panic!("{e}\nkept {}\n{}", dir.display(), tails.join("\n"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for w in writers {
        w.stop().await;
    }
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    assert!(
        ledger.batches_acked > 20,
        "the writers made progress: {} batches",
        ledger.batches_acked
    );
    let verdicts = check(&cluster, &ledger, Duration::from_secs(60)).await;
    let report = summary(&cluster.faults, &ledger, &verdicts);
    println!("{report}");
    assert_eq!(verdicts.len(), 3, "every node was checked");
    let (es_v, loki_v) = await_mirrors(&es, &loki, &ledger, Duration::from_secs(60)).await;
    println!("{}\n{}", es_v.describe(), loki_v.describe());
    if !mirrors_clean(&es_v, &loki_v) {
        let dir = cluster.keep();
        panic!(
            "{}\n{}\nkept {}",
            es_v.describe(),
            loki_v.describe(),
            dir.display()
        );
    }
    if !verdicts.iter().all(|v| v.is_clean()) {
        for id in 1..=3 {
            if let Ok(s) = cluster.status(id).await {
                println!("node {id} shards: {:?}", s.view.map(|v| v.shards));
            }
        }
        let dir = cluster.keep();
        panic!("{report}\nkept {}", dir.display());
    }
}
