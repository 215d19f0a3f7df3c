//! `weir`: run a node, push lines, query. Thin: everything lives in the library.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_proto::v1::ingest_client::IngestClient;
use weir_proto::v1::{AppendRequest, Record};
use weir_server::Config;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Weir: a durable, searchable log buffer in front of Elasticsearch and Loki"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node. With no arguments: a single node, data in ./weir-data, gRPC 4317, HTTP 4318.
    Server {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides data_dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Overrides grpc_addr.
        #[arg(long)]
        grpc_addr: Option<std::net::SocketAddr>,
        /// Overrides http_addr.
        #[arg(long)]
        http_addr: Option<std::net::SocketAddr>,
    },
    /// Send lines (from FILE or stdin) as log records, in batches.
    Push(PushArgs),
    /// Search and print hits.
    Query {
        /// HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        addr: String,
        /// Tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Start (RFC 3339 or unix ns); default one hour ago.
        #[arg(long)]
        start: Option<String>,
        /// End (RFC 3339 or unix ns); default now.
        #[arg(long)]
        end: Option<String>,
        /// Levels, comma separated.
        #[arg(long)]
        level: Option<String>,
        /// Hits at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// time_desc, time_asc or score.
        #[arg(long, default_value = "time_desc")]
        sort: String,
        /// Print the raw JSON answer.
        #[arg(long)]
        json: bool,
        /// The query (see docs/query-language.md); empty matches everything.
        #[arg(default_value = "")]
        query: String,
    },
}

/// Arguments of `weir push`.
#[derive(clap::Args)]
struct PushArgs {
    /// gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    addr: String,
    /// Tenant.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// service of every record.
    #[arg(long, default_value = "")]
    service: String,
    /// level of every record.
    #[arg(long, default_value = "info")]
    level: String,
    /// Stream label, NAME=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_kv)]
    labels: Vec<(String, String)>,
    /// Lines per batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Producer id for idempotent retries (batches are numbered from 1).
    #[arg(long)]
    producer_id: Option<String>,
    /// File to read; stdin when absent.
    file: Option<PathBuf>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,raft=warn,tantivy=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Server {
                config,
                data_dir,
                grpc_addr,
                http_addr,
            } => {
                let mut cfg = match config {
                    Some(p) => Config::from_file(&p)?,
                    None => Config::default(),
                };
                if let Some(d) = data_dir {
                    cfg.data_dir = d;
                }
                if let Some(a) = grpc_addr {
                    cfg.grpc_addr = a;
                }
                if let Some(a) = http_addr {
                    cfg.http_addr = a;
                }
                weir_server::run(cfg, shutdown_signal()).await
            }
            Command::Push(args) => push(args).await,
            Command::Query {
                addr,
                tenant,
                start,
                end,
                level,
                limit,
                sort,
                json,
                query,
            } => {
                let mut params = vec![("q", query), ("limit", limit.to_string()), ("sort", sort)];
                params.extend(start.map(|s| ("start", s)));
                params.extend(end.map(|s| ("end", s)));
                params.extend(level.map(|s| ("level", s)));
                let resp = reqwest::Client::new()
                    .get(format!("{}/api/v1/search", addr.trim_end_matches('/')))
                    .header(weir_server::http::TENANT_HEADER, tenant)
                    .query(&params)
                    .send()
                    .await
                    .with_context(|| format!("cannot reach {addr}"))?;
                let status = resp.status();
                let body: serde_json::Value = resp.json().await.context("answer is not JSON")?;
                if !status.is_success() {
                    anyhow::bail!(
                        "{status}: {}",
                        body["error"].as_str().unwrap_or("unknown error")
                    );
                }
                if json {
                    println!("{}", serde_json::to_string_pretty(&body)?);
                } else {
                    for h in body["hits"].as_array().into_iter().flatten() {
                        println!(
                            "{} {:5} {} {}",
                            h["timestamp"].as_str().unwrap_or(""),
                            h["level"].as_str().unwrap_or(""),
                            h["service"].as_str().unwrap_or(""),
                            h["body"].as_str().unwrap_or("")
                        );
                    }
                    eprintln!(
                        "{} of {} hits, {} ms",
                        body["hits"].as_array().map_or(0, Vec::len),
                        body["total"],
                        body["took_ms"]
                    );
                }
                Ok(())
            }
        }
    })
}

async fn push(args: PushArgs) -> anyhow::Result<()> {
    let PushArgs {
        addr,
        tenant,
        service,
        level,
        labels,
        batch,
        producer_id,
        file,
    } = args;
    let batch = batch.max(1);
    let mut client = IngestClient::connect(addr.clone())
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let input: Box<dyn BufRead> = match &file {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let labels: std::collections::HashMap<String, String> = labels.into_iter().collect();
    // Every run is its own producer: its batches are numbered from 1, so reusing the
    // plain id across runs would make the second run's batches look like retries.
    let producer_id = producer_id.map(|p| format!("{p}/{}", weir_server::append::now_ns()));
    let (mut sent, mut rejected, mut seq) = (0u64, 0u64, 0u64);
    let mut records = Vec::with_capacity(batch);
    let mut lines = input.split(b'\n');
    let mut eof = false;
    while !eof {
        match lines.next().transpose()? {
            Some(mut l) => {
                if l.last() == Some(&b'\r') {
                    l.pop();
                }
                records.push(Record {
                    body: l,
                    level: level.clone(),
                    service: service.clone(),
                    labels: labels.clone(),
                    ..Default::default()
                });
            }
            None => eof = true,
        }
        if records.len() >= batch || (eof && !records.is_empty()) {
            seq += 1;
            let req = AppendRequest {
                tenant: tenant.clone(),
                producer_id: producer_id.clone().unwrap_or_default(),
                sequence: seq,
                records: std::mem::take(&mut records),
            };
            // Retryable refusals (queue or disk full, commit timeout) are retried with the
            // same producer id and sequence, so a batch that did land is not stored twice.
            let mut attempt = 0u32;
            let resp = loop {
                match client.append(req.clone()).await {
                    Ok(r) => break r.into_inner(),
                    Err(s)
                        if attempt < 5
                            && producer_id.is_some()
                            && matches!(
                                s.code(),
                                tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                            ) =>
                    {
                        attempt += 1;
                        eprintln!("batch {seq}: {} (retrying, attempt {attempt})", s.message());
                        tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                    }
                    Err(s) => anyhow::bail!(
                        "batch {seq}: append failed ({:?}): {}",
                        s.code(),
                        s.message()
                    ),
                }
            };
            if resp.duplicate {
                eprintln!("batch {seq}: already stored by an earlier attempt");
            }
            sent += resp.accepted;
            rejected += resp.rejected.len() as u64;
            for r in &resp.rejected {
                eprintln!("record {} of batch {seq} rejected: {}", r.index, r.reason);
            }
        }
    }
    eprintln!("pushed {sent} records ({rejected} rejected)");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
