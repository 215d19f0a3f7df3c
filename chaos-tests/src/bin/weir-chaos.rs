//! `weir-chaos`: the long chaos run. Starts a three-process cluster (or, with
//! `--compose docker/docker-compose.yml`, the compose cluster; the image must be built),
//! writes from several writers, injects rounds of every fault until the duration is up
//! (at least one round), then checks every node's copy and prints the summary (faults
//! injected, records acked, lost, duplicated). The cluster also mirrors to an
//! Elasticsearch and a Loki test server started here (unless `--no-mirrors`), and the
//! check covers what they received; the compose cluster's containers reach them through
//! the host gateway (`host.docker.internal`). Exits non-zero when anything was lost,
//! duplicated or invented.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use weir_chaos::{
    await_mirrors, check, fault_round, mirror_sinks, mirrors_clean, summary, Cluster,
    DockerCluster, Faults, Ledger, Writer,
};
use weir_testkit::elasticsearch::{EsOptions, FakeElasticsearch};
use weir_testkit::loki::{FakeLoki, LokiOptions};

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

/// The test backends the cluster mirrors to.
struct Backends {
    es: FakeElasticsearch,
    loki: FakeLoki,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if let Some(file) = &a.compose {
        // The containers reach the test servers through the host gateway, so they listen
        // on every address of this host.
        let backends = start_backends(&a, [0, 0, 0, 0]).await?;
        let sinks = backends
            .as_ref()
            .map(|b| {
                let url = |port: u16| format!("http://host.docker.internal:{port}");
                mirror_sinks(&url(b.es.addr().port()), &url(b.loki.addr().port()))
            })
            .unwrap_or_default();
        let mut cluster = DockerCluster::start_with(file, &sinks).await?;
        eprintln!("compose cluster up");
        let addrs = cluster.client_addrs();
        let r = soak(&mut cluster, addrs, &a, backends.as_ref()).await;
        if r.is_err() {
            eprintln!("{}", cluster.logs());
        }
        return r;
    }
    let backends = start_backends(&a, [127, 0, 0, 1]).await?;
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

/// The Elasticsearch and Loki test servers on `ip` and free ports, unless `--no-mirrors`.
async fn start_backends(a: &Args, ip: [u8; 4]) -> anyhow::Result<Option<Backends>> {
    if a.no_mirrors {
        return Ok(None);
    }
    let listen_addr = std::net::SocketAddr::from((ip, 0));
    Ok(Some(Backends {
        es: FakeElasticsearch::start_with(EsOptions {
            listen_addr,
            ..EsOptions::default()
        })
        .await?,
        loki: FakeLoki::start_with(LokiOptions {
            listen_addr,
            ..LokiOptions::default()
        })
        .await?,
    }))
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
