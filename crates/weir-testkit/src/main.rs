//! `weir-testkit`: runs a fake Elasticsearch or Loki until SIGTERM or Ctrl-C, for tests
//! that run in other processes (chaos tests, docker). Drive its faults through the admin
//! API under `/_testkit/` (see the library docs).

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use weir_testkit::elasticsearch::{EsOptions, FakeElasticsearch};
use weir_testkit::loki::{FakeLoki, LokiOptions, OrderMode};

#[derive(Debug, Parser)]
#[command(
    name = "weir-testkit",
    about = "Fake Elasticsearch and Loki servers for Weir's tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A fake Elasticsearch 8 node (bulk API).
    Elasticsearch(EsArgs),
    /// A fake Loki 3 (push API).
    Loki(LokiArgs),
}

#[derive(Debug, Args)]
struct EsArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9200")]
    addr: SocketAddr,
    /// Require basic authentication, as `user:password`.
    #[arg(long)]
    basic_auth: Option<String>,
    /// Require `Authorization: ApiKey <this>`.
    #[arg(long)]
    api_key: Option<String>,
    /// Leave out Elasticsearch's built-in `logs-*-*` data stream template.
    #[arg(long)]
    no_builtin_logs_template: bool,
    /// Keep ids and counts but not document sources (long benchmarks; `/_testkit/docs`
    /// then shows `null` sources).
    #[arg(long)]
    count_only: bool,
}

#[derive(Debug, Args)]
struct LokiArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3100")]
    addr: SocketAddr,
    /// Do not require `X-Scope-OrgID` (the tenant is then `fake`).
    #[arg(long)]
    auth_disabled: bool,
    /// Refuse entries older than a stream's newest (`unordered_writes: false`).
    #[arg(long)]
    ordered: bool,
    /// Turn off `service_name` discovery.
    #[arg(long)]
    no_service_name_discovery: bool,
    /// Count accepted entries without keeping them (long benchmarks; `/_testkit/entries`
    /// is then empty).
    #[arg(long)]
    count_only: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Elasticsearch(args) => {
            let basic_auth = match args.basic_auth {
                Some(pair) => {
                    let (user, password) = pair
                        .split_once(':')
                        .context("--basic-auth must be user:password")?;
                    Some((user.to_string(), password.to_string()))
                }
                None => None,
            };
            let es = FakeElasticsearch::start_with(EsOptions {
                basic_auth,
                api_key: args.api_key,
                listen_addr: args.addr,
                builtin_logs_template: !args.no_builtin_logs_template,
                keep_sources: !args.count_only,
                ..EsOptions::default()
            })
            .await
            .context("starting the fake elasticsearch")?;
            println!("weir-testkit elasticsearch listening on {}", es.url());
            shutdown_signal().await?;
            es.shutdown().await;
        }
        Command::Loki(args) => {
            let mut opts = LokiOptions {
                auth_enabled: !args.auth_disabled,
                listen_addr: args.addr,
                keep_entries: !args.count_only,
                ..LokiOptions::default()
            };
            if args.ordered {
                opts.order = OrderMode::Ordered;
            }
            if args.no_service_name_discovery {
                opts.discover_service_name.clear();
            }
            let loki = FakeLoki::start_with(opts)
                .await
                .context("starting the fake loki")?;
            println!("weir-testkit loki listening on {}", loki.url());
            shutdown_signal().await?;
            loki.shutdown().await;
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for ctrl-c")?,
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    Ok(())
}
