//! `weir-chaos soak`: the long chaos run. Starts a three-process cluster, writes from
//! several writers, injects rounds of every fault until the duration is up, then checks
//! every node's copy and prints the summary (faults injected, records acked, lost,
//! duplicated). Exits non-zero when anything was lost, duplicated or invented.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use weir_chaos::{check, fault_round, summary, Cluster, Ledger, Writer};

#[derive(Parser)]
#[command(
    name = "weir-chaos",
    about = "Soak a real Weir cluster with faults and check it"
)]
struct Args {
    /// How long to inject faults, in seconds.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Writers.
    #[arg(long, default_value_t = 4)]
    writers: u32,
    /// Nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Shards.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// How long each fault lasts, in seconds.
    #[arg(long, default_value_t = 3)]
    hold: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut cluster = Cluster::start(a.nodes, a.shards).await?;
    eprintln!("cluster up in {}", cluster.dir.path().display());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let writers: Vec<Writer> = (0..a.writers)
        .map(|id| Writer::start(id, cluster.client_addrs(), ledger.clone()))
        .collect();
    let end = Instant::now() + Duration::from_secs(a.seconds);
    let mut round = 0;
    while Instant::now() < end {
        fault_round(&mut cluster, round, Duration::from_secs(a.hold)).await?;
        round += 1;
        let acked = ledger.lock().unwrap().batches_acked;
        eprintln!("round {round} done, {acked} batches acked so far");
    }
    for w in writers {
        w.stop().await;
    }
    let ledger = Arc::try_unwrap(ledger)
        .ok()
        .expect("writers stopped")
        .into_inner()?;
    let verdicts = check(&cluster, &ledger, Duration::from_secs(120)).await;
    println!("{}", summary(&cluster, &ledger, &verdicts));
    if verdicts.iter().all(|v| v.is_clean()) {
        Ok(())
    } else {
        let dir = cluster.keep();
        anyhow::bail!(
            "the cluster lost, duplicated or invented records; kept {}",
            dir.display()
        )
    }
}
