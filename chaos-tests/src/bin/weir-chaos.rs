//! `weir-chaos`: the long chaos run. Starts a three-process cluster (or, with
//! `--compose docker/docker-compose.yml`, the compose cluster; the image must be built),
//! writes from several writers, injects rounds of every fault until the duration is up
//! (at least one round), then checks every node's copy and prints the summary (faults
//! injected, records acked, lost, duplicated). The local cluster also mirrors to an
//! Elasticsearch and a Loki test server started here, and the check covers what they
//! received (the compose cluster's containers cannot reach them: `--no-mirrors` is
//! implied there). Exits non-zero when anything was lost, duplicated or invented.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use weir_chaos::{
    await_mirrors, check, fault_round, mirror_sinks, mirrors_clean, summary, Cluster,
    DockerCluster, Faults, Ledger, Writer,
};
use weir_testkit::elasticsearch::FakeElasticsearch;
use weir_testkit::loki::FakeLoki;

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
    /// Run against the docker compose cluster of this file instead of local processes.
    #[arg(long)]
    compose: Option<std::path::PathBuf>,
    /// Do not mirror to (and check) the Elasticsearch and Loki test servers.
    #[arg(long)]
    no_mirrors: bool,
}

/// The test backends the local cluster mirrors to.
struct Backends {
    es: FakeElasticsearch,
    loki: FakeLoki,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if let Some(file) = &a.compose {
        let mut cluster = DockerCluster::start(file).await?;
        eprintln!("compose cluster up");
        let addrs = cluster.client_addrs();
        let r = soak(&mut cluster, addrs, &a, None).await;
        if r.is_err() {
            eprintln!("{}", cluster.logs());
        }
        return r;
    }
    let backends = if a.no_mirrors {
        None
    } else {
        Some(Backends {
            es: FakeElasticsearch::start().await?,
            loki: FakeLoki::start().await?,
        })
    };
    let sinks = backends
        .as_ref()
        .map(|b| mirror_sinks(&b.es.url(), &b.loki.url()))
        .unwrap_or_default();
    let mut cluster = Cluster::start_with(a.nodes, a.shards, &sinks).await?;
    eprintln!("cluster up in {}", cluster.dir.path().display());
    let addrs = cluster.client_addrs();
    match soak(&mut cluster, addrs, &a, backends.as_ref()).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let dir = cluster.keep();
            anyhow::bail!("{e}; kept {}", dir.display())
        }
    }
}

/// Writers, rounds of faults, then the check; Err when anything was lost, duplicated or
/// invented.
async fn soak(
    cluster: &mut impl Faults,
    addrs: Vec<String>,
    a: &Args,
    backends: Option<&Backends>,
) -> anyhow::Result<()> {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let writers: Vec<Writer> = (0..a.writers)
        .map(|id| Writer::start(id, addrs.clone(), ledger.clone()))
        .collect();
    let end = Instant::now() + Duration::from_secs(a.seconds);
    let mut round = 0;
    loop {
        fault_round(cluster, round, Duration::from_secs(a.hold)).await?;
        round += 1;
        let acked = ledger.lock().unwrap().batches_acked;
        eprintln!("round {round} done, {acked} batches acked so far");
        if Instant::now() >= end {
            break;
        }
    }
    for w in writers {
        w.stop().await;
    }
    let ledger = Arc::try_unwrap(ledger)
        .ok()
        .expect("writers stopped")
        .into_inner()?;
    let verdicts = check(cluster, &ledger, Duration::from_secs(120)).await;
    println!("{}", summary(cluster.injected(), &ledger, &verdicts));
    anyhow::ensure!(
        verdicts.iter().all(|v| v.is_clean()) && ledger.batches_acked > 0,
        "the cluster lost, duplicated or invented records"
    );
    if let Some(b) = backends {
        let (es, loki) = await_mirrors(&b.es, &b.loki, &ledger, Duration::from_secs(120)).await;
        println!("{}\n{}", es.describe(), loki.describe());
        anyhow::ensure!(
            mirrors_clean(&es, &loki),
            "a mirror lost, duplicated (Elasticsearch) or invented records"
        );
    }
    Ok(())
}
