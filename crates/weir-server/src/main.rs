//! `weir`: run a node, push lines, query. Thin: everything lives in the library.

use std::io::BufRead;

/// mimalloc rather than glibc's malloc: ingest allocates and frees many small strings per
/// record on every worker thread, where glibc's arenas spent a fifth of the request path
/// (benches/RESULTS.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_proto::api::cluster::ClusterStatus;
use weir_proto::api::dlq::{
    DeadLetter, DlqListResponse, DlqSinksResponse, ReplayReport, ReplayRequest,
};
use weir_proto::api::error::ErrorBody;
use weir_proto::api::search::SearchResponse;
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
    /// Access key for the node's API (else $WEIR_KEY, else ./weir-data/admin.key or
    /// $WEIR_DATA_DIR/admin.key when readable).
    #[arg(long, global = true)]
    key: Option<String>,
    /// CA bundle (PEM) that an https:// node's certificate must chain to (default: the
    /// public roots).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for a node that asks for one (tls.client_ca_file).
    #[arg(long, global = true, requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The private key of --client-cert (PEM).
    #[arg(long, global = true, requires = "client_cert")]
    client_key: Option<PathBuf>,
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
        /// The data directory is a copy of another member's (a replacement for lost data):
        /// rejoin without voting until caught up (docs/cluster.md).
        #[arg(long)]
        rejoin: bool,
        /// Require access keys (auth.enabled); the first start writes an admin key to
        /// the data directory.
        #[arg(long)]
        auth: bool,
        /// Listen beyond loopback without access keys, and a cluster's peer port without
        /// mutual TLS (auth.insecure): anyone who reaches the node reads and writes every
        /// tenant.
        #[arg(long)]
        insecure: bool,
    },
    /// Send lines (from FILE or stdin) as log records, in batches.
    Push(PushArgs),
    /// Search and print hits.
    /// Follow records as they are committed: a LogQL log query such as
    /// '{service="pay"} |= "declined"'. Ctrl-C stops.
    Tail {
        /// HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        addr: String,
        /// Tenant (default: the key's, or `default`).
        #[arg(long)]
        tenant: Option<String>,
        /// Print each record as JSON (one per line) instead of a line of text.
        #[arg(long)]
        json: bool,
        /// The LogQL log query.
        query: String,
    },
    Query {
        /// HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        addr: String,
        /// Tenant (default: the key's, or `default`).
        #[arg(long)]
        tenant: Option<String>,
        /// Start (RFC 3339 or unix ns); default one hour before the end.
        #[arg(long, conflicts_with = "since")]
        start: Option<String>,
        /// Search this far back from now: 30s, 15m, 2h, 7d (instead of --start).
        #[arg(long, value_parser = parse_duration_ns)]
        since: Option<i64>,
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
        /// Print the answer as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Print how many records match per time bucket and level instead of the records.
        #[arg(long)]
        histogram: bool,
        /// With --histogram: the bucket width (30s, 5m, 1h); default about 60 buckets.
        #[arg(long, requires = "histogram")]
        interval: Option<String>,
        /// The query (see docs/query-language.md); empty matches everything.
        #[arg(default_value = "")]
        query: String,
    },
    /// Cluster state: nodes, shards, mirrors.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Start a local cluster of NODES processes on loopback ports, data under DIR; stops
    /// them all on Ctrl-C. Node i listens on BASE+10*(i-1) (gRPC), +1 (HTTP), +2 (peers).
    DevCluster {
        /// Where each node's configuration and data go (`DIR/node<i>.toml`, `DIR/node<i>`).
        #[arg(long, default_value = "weir-dev-cluster")]
        dir: PathBuf,
        /// The first port.
        #[arg(long, default_value_t = 14317)]
        base_port: u16,
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Shards (only used when the cluster is created).
        #[arg(long, default_value_t = 4)]
        shards: u32,
        /// A TOML file appended to every node's configuration (tables only, such as
        /// `[[mirror.sinks]]`).
        #[arg(long)]
        extra_config: Option<PathBuf>,
        /// TLS on gRPC and HTTP too (commands then need `https://` and `--ca
        /// DIR/tls/ca.crt`). The members always speak mutual TLS with each other.
        #[arg(long)]
        tls: bool,
    },
    /// Certificates: a CA and the members' certificates (`weir tls generate`).
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Access keys: create (the secret is shown once), list, revoke. Admin key needed.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Tenants that keys name or that the node ingested for. Admin key needed.
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// Per-tenant ingest rules: filters and sampling, applied before the log, in effect
    /// on every node within a second. Admin key needed.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Dead-letter logs of the mirrors: records a backend refused for good.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// The configuration file: every key with its default, or a check of a file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print every key with its default value and meaning, as a TOML file.
    Defaults,
    /// Load a configuration file as `weir server --config` would, and report problems.
    Check {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Print nodes, shards, mirrors and the health word.
    Status {
        /// HTTP endpoint of any node.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        addr: String,
        /// Print the answer as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Writes a new CA (DIR/ca.crt, DIR/ca.key) and a certificate per node
    /// (DIR/nodeN.crt, DIR/nodeN.key), each for server and client use: every member's
    /// tls.peer_ca_file is ca.crt, and its tls.cert_file/key_file (or peer_cert_file/
    /// peer_key_file) its nodeN pair. Keys are written with mode 0600; keep ca.key off
    /// the nodes.
    Generate {
        /// Where the files go; an existing CA there is never overwritten.
        #[arg(long)]
        dir: PathBuf,
        /// How many node certificates.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// A name every node's certificate carries: a DNS name or an IP address, `{i}`
        /// replaced by the node's number (`--name 'weir-{i}.example.net'`). Repeatable;
        /// the host of each member's `peer` (and `grpc`, `http`) address must be one.
        /// Default: localhost and 127.0.0.1.
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it (the only time it is shown).
    Create {
        /// HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        addr: String,
        /// A tenant the key belongs to (repeatable); none: every tenant (operator key).
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        /// Scopes, comma separated: write, read, admin (admin only without --tenant).
        #[arg(long, value_delimiter = ',', value_parser = weir_proto::api::keys::Scope::parse, required = true)]
        scope: Vec<weir_proto::api::keys::Scope>,
        /// A note for people: who or what uses it.
        #[arg(long, default_value = "")]
        note: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets).
    List {
        /// HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        addr: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a new key without asking a node: for `WEIR_ADMIN_KEY`, the first admin key
    /// every node of a cluster registers on its first start.
    Generate,
    /// Revoke a key: requests with it are refused from then on.
    Revoke {
        /// HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        addr: String,
        /// The key's id (from `weir keys list`).
        id: String,
    },
}

#[derive(Subcommand)]
enum TenantsCommand {
    /// List tenants.
    List {
        /// HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        addr: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// List the rules in effect (of one tenant, or all).
    List {
        /// HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        addr: String,
        /// Only this tenant's rules.
        #[arg(long)]
        tenant: Option<String>,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set (create or replace) a rule.
    Set {
        /// HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        addr: String,
        #[command(flatten)]
        rule: RuleArgs,
    },
    /// Count what a rule would drop of the tenant's last hour, before setting it.
    DryRun {
        /// HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        addr: String,
        #[command(flatten)]
        rule: RuleArgs,
    },
    /// Set a tenant's own retention (shorter than the index's), or show every tenant's.
    Retention {
        /// HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        addr: String,
        /// The tenant; none: list.
        tenant: Option<String>,
        /// Days its records are kept; 0: the index's retention.
        #[arg(long)]
        days: Option<u32>,
    },
    /// Delete a rule.
    Delete {
        /// HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        addr: String,
        /// The tenant.
        tenant: String,
        /// The rule's id.
        id: String,
    },
}

/// A rule on the command line: `weir rules set acme info-payment --order 30 --action
/// sample --rate 0.1 --level info --service payment-api`.
#[derive(clap::Args)]
struct RuleArgs {
    /// The tenant whose ingest it applies to.
    tenant: String,
    /// The rule's id within the tenant ([A-Za-z0-9_.-]).
    id: String,
    /// Rules are tried in ascending order; the first that matches decides.
    #[arg(long, default_value_t = 0)]
    order: u32,
    /// keep, drop or sample.
    #[arg(long, value_parser = parse_action)]
    action: weir_proto::api::rules::Action,
    /// For sample: the share kept, 0 to 1 (0.1: one record in ten).
    #[arg(long)]
    rate: Option<f64>,
    /// Match records of these levels (comma separated or repeated).
    #[arg(long = "level", value_delimiter = ',')]
    levels: Vec<String>,
    /// Match records of these services (comma separated or repeated).
    #[arg(long = "service", value_delimiter = ',')]
    services: Vec<String>,
    /// Match records with this stream label, NAME=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_pair)]
    labels: Vec<(String, String)>,
    /// Match records with this attribute, NAME=VALUE (repeatable).
    #[arg(long = "attribute", value_parser = parse_pair)]
    attributes: Vec<(String, String)>,
    /// Match records whose body matches this regular expression.
    #[arg(long)]
    body: Option<String>,
}

impl RuleArgs {
    fn spec(&self) -> weir_proto::api::rules::RuleSpec {
        weir_proto::api::rules::RuleSpec {
            order: self.order,
            action: Some(self.action),
            rate: self.rate,
            levels: self.levels.clone(),
            services: self.services.clone(),
            labels: self.labels.iter().cloned().collect(),
            attributes: self.attributes.iter().cloned().collect(),
            body: self.body.clone(),
        }
    }
}

fn parse_action(s: &str) -> Result<weir_proto::api::rules::Action, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| format!("{s:?}: keep, drop or sample"))
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?}: NAME=VALUE"))
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters of a sink (or, without a sink, how many each sink holds).
    List {
        /// HTTP endpoint of the node that dead-lettered them.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        addr: String,
        /// Sink name.
        sink: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print one dead letter in full.
    Show {
        /// HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        addr: String,
        /// Sink name.
        sink: String,
        /// Its number (from `weir dlq list`).
        seq: u64,
    },
    /// Send dead letters again (after the backend's problem is fixed); delivered ones are
    /// removed, refused ones stay with the new reason.
    Replay {
        /// HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        addr: String,
        /// Sink name.
        sink: String,
        /// Only these numbers (repeatable); all when absent.
        #[arg(long = "seq")]
        seqs: Vec<u64>,
    },
}

/// The access key the command presents: `--key`, else `$WEIR_KEY`, else the admin key
/// file a node wrote to its data directory on this machine (`$WEIR_DATA_DIR`, else
/// `./weir-data`). Set once in `main`.
static KEY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

fn find_key(given: Option<String>) -> Option<String> {
    if let Some(k) = given.or_else(|| std::env::var("WEIR_KEY").ok()) {
        return Some(k.trim().to_owned()).filter(|k| !k.is_empty());
    }
    let dir =
        std::env::var_os("WEIR_DATA_DIR").map_or_else(|| PathBuf::from("weir-data"), PathBuf::from);
    std::fs::read_to_string(dir.join(weir_server::auth::ADMIN_KEY_FILE))
        .ok()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
}

fn key() -> Option<&'static str> {
    KEY.get().and_then(|k| k.as_deref())
}

/// `--ca`, `--client-cert` and `--client-key`. Set once in `main`.
static TLS_FILES: std::sync::OnceLock<weir_server::tls::ClientFiles> = std::sync::OnceLock::new();

/// The client TLS files with `alpn`, if `--ca` or a client certificate was given.
fn tls_files(alpn: &'static [&'static [u8]]) -> Option<weir_server::tls::ClientFiles> {
    let f = TLS_FILES.get()?;
    (f.ca.is_some() || f.identity.is_some())
        .then(|| weir_server::tls::ClientFiles { alpn, ..f.clone() })
}

/// An HTTP client that presents the key (if any) on every request, and trusts `--ca`.
fn http_client() -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(v) =
        key().and_then(|k| reqwest::header::HeaderValue::from_str(&format!("Bearer {k}")).ok())
    {
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    let mut builder = reqwest::Client::builder().default_headers(headers);
    if let Some(files) = tls_files(weir_server::tls::ALPN_HTTP) {
        let tls = weir_server::tls::ClientTls::load(files)?;
        builder = builder.use_preconfigured_tls((*tls.current()).clone());
    }
    Ok(builder.build()?)
}

fn with_tenant(req: reqwest::RequestBuilder, tenant: Option<String>) -> reqwest::RequestBuilder {
    match tenant {
        Some(t) => req.header(weir_server::http::TENANT_HEADER, t),
        None => req,
    }
}

/// No request body, for [`api`].
const NO_BODY: Option<&()> = None;

/// GETs or POSTs `path` on `addr` (with `body` as JSON) and reads the answer as a `T`, or
/// returns the API's error.
async fn api<T: serde::de::DeserializeOwned>(
    addr: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&impl serde::Serialize>,
) -> anyhow::Result<T> {
    let url = format!("{}{path}", addr.trim_end_matches('/'));
    let mut req = http_client()?.request(method, &url);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.map_err(|e| unreachable_node(addr, e))?;
    read_answer(resp, &url).await
}

/// A Weir API answer as a `T`, or its [`ErrorBody`] as the error.
async fn read_answer<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    url: &str,
) -> anyhow::Result<T> {
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .with_context(|| format!("cannot read the answer of {url}"))?;
    if !status.is_success() {
        let why = serde_json::from_slice::<ErrorBody>(&bytes).map_or_else(
            |_| String::from_utf8_lossy(&bytes).into_owned(),
            |e| e.error,
        );
        anyhow::bail!("{status}: {}", why.trim());
    }
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "the answer of {url} is not the {} this weir expects (is the node another version?)",
            std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("body")
        )
    })
}

/// A gRPC request carrying the key (if any) as metadata `authorization`.
fn authorized<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Some(v) = key().and_then(|k| format!("Bearer {k}").parse().ok()) {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

async fn keys_command(c: KeysCommand) -> anyhow::Result<()> {
    use weir_proto::api::keys::{CreateKeyRequest, CreatedKey, KeyInfo, KeysResponse};
    match c {
        KeysCommand::Create {
            addr,
            tenants,
            scope,
            note,
            json,
        } => {
            let body = CreateKeyRequest {
                tenants,
                scopes: scope,
                note,
            };
            let k: CreatedKey =
                api(&addr, reqwest::Method::POST, "/api/v1/keys", Some(&body)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&k)?);
                return Ok(());
            }
            println!("{}", k.key);
            eprintln!(
                "key {} for {} with scopes {}: shown only now, keep it safe.\nElasticsearch clients (api_key): {}",
                k.info.id,
                tenants_text(&k.info.tenants),
                scopes_text(&k.info.scopes),
                k.api_key_encoded
            );
        }
        KeysCommand::List { addr, json } => {
            let r: KeysResponse = api(&addr, reqwest::Method::GET, "/api/v1/keys", NO_BODY).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            println!(
                "{:<18} {:<8} {:<18} {:<24} NOTE",
                "ID", "STATE", "SCOPES", "TENANTS"
            );
            for k in r.keys {
                let state = if k.revoked_ns.is_some() {
                    "revoked"
                } else {
                    "valid"
                };
                println!(
                    "{:<18} {:<8} {:<18} {:<24} {}",
                    k.id,
                    state,
                    scopes_text(&k.scopes),
                    tenants_text(&k.tenants),
                    k.note
                );
            }
        }
        KeysCommand::Generate => println!("{}", weir_server::auth::generate_key().0),
        KeysCommand::Revoke { addr, id } => {
            let k: KeyInfo = api(
                &addr,
                reqwest::Method::DELETE,
                &format!("/api/v1/keys/{id}"),
                NO_BODY,
            )
            .await?;
            println!("key {} revoked ({})", k.id, tenants_text(&k.tenants));
        }
    }
    Ok(())
}

fn tenants_text(t: &[String]) -> String {
    if t.is_empty() {
        "every tenant".into()
    } else {
        t.join(",")
    }
}

fn scopes_text(s: &[weir_proto::api::keys::Scope]) -> String {
    s.iter().map(|s| s.name()).collect::<Vec<_>>().join(",")
}

async fn tenants_command(c: TenantsCommand) -> anyhow::Result<()> {
    let TenantsCommand::List { addr, json } = c;
    let r: weir_proto::api::keys::TenantsResponse =
        api(&addr, reqwest::Method::GET, "/api/v1/tenants", NO_BODY).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("{:<32} {:>5} INGESTED", "TENANT", "KEYS");
    for t in r.tenants {
        println!(
            "{:<32} {:>5} {}",
            t.name,
            t.keys,
            if t.ingested { "yes" } else { "no" }
        );
    }
    Ok(())
}

async fn rules_command(c: RulesCommand) -> anyhow::Result<()> {
    use weir_proto::api::rules::{DryRunResponse, Rule, RulesResponse};
    match c {
        RulesCommand::List { addr, tenant, json } => {
            let path = match &tenant {
                Some(t) => format!("/api/v1/rules?tenant={t}"),
                None => "/api/v1/rules".to_owned(),
            };
            let r: RulesResponse = api(&addr, reqwest::Method::GET, &path, NO_BODY).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            println!("{:<20} {:<20} {:>6} RULE", "TENANT", "ID", "ORDER");
            for rule in r.rules {
                let mut spec = serde_json::to_value(&rule.spec)?;
                if let Some(m) = spec.as_object_mut() {
                    m.remove("order");
                }
                println!(
                    "{:<20} {:<20} {:>6} {spec}",
                    rule.tenant, rule.id, rule.spec.order
                );
            }
        }
        RulesCommand::Set { addr, rule } => {
            let path = format!("/api/v1/rules/{}/{}", rule.tenant, rule.id);
            let r: Rule = api(&addr, reqwest::Method::PUT, &path, Some(&rule.spec())).await?;
            println!("rule {} of tenant {} set", r.id, r.tenant);
        }
        RulesCommand::DryRun { addr, rule } => {
            let path = format!("/api/v1/rules/{}/{}/dry-run", rule.tenant, rule.id);
            let r: DryRunResponse =
                api(&addr, reqwest::Method::POST, &path, Some(&rule.spec())).await?;
            println!(
                "over {} stored records{}: the rule would decide {} and drop {}",
                r.records,
                if r.truncated {
                    " (the newest; the range holds more)"
                } else {
                    ""
                },
                r.matched,
                r.would_drop
            );
        }
        RulesCommand::Retention { addr, tenant, days } => match (tenant, days) {
            (Some(tenant), Some(days)) => {
                let _: weir_proto::api::rules::TenantRetention = api(
                    &addr,
                    reqwest::Method::PUT,
                    &format!("/api/v1/retention/{tenant}"),
                    Some(&weir_proto::api::rules::RetentionSpec { days }),
                )
                .await?;
                println!("tenant {tenant}: records kept {days} days (0: the index's retention)");
            }
            (None, None) => {
                let r: weir_proto::api::rules::RetentionResponse =
                    api(&addr, reqwest::Method::GET, "/api/v1/retention", NO_BODY).await?;
                println!(
                    "every tenant: {} days (index.retention_secs)",
                    r.default_days
                );
                for t in r.tenants {
                    println!("{:<32} {} days", t.tenant, t.days);
                }
            }
            _ => anyhow::bail!("give a tenant and --days to set a retention, or neither to list"),
        },
        RulesCommand::Delete { addr, tenant, id } => {
            let path = format!("/api/v1/rules/{tenant}/{id}");
            let r: Rule = api(&addr, reqwest::Method::DELETE, &path, NO_BODY).await?;
            println!("rule {} of tenant {} deleted", r.id, r.tenant);
        }
    }
    Ok(())
}

async fn cluster_command(c: ClusterCommand) -> anyhow::Result<()> {
    let ClusterCommand::Status { addr, json } = c;
    let v: ClusterStatus = api(&addr, reqwest::Method::GET, "/api/v1/cluster", NO_BODY).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("cluster {}  health: {}", v.cluster_id, v.health);
    if let Some(reason) = &v.reason {
        println!("node {} did not answer: {reason}", v.node_id);
    }
    let Some(view) = v.view else {
        return Ok(());
    };
    for n in &view.nodes {
        println!(
            "node {}  {}  grpc {}  http {}  version {}",
            n.id,
            if n.up { "up" } else { "down" },
            n.grpc_addr,
            n.http_addr,
            n.version.as_deref().unwrap_or("")
        );
    }
    println!(
        "{:>5} {:>6} {:>6} {:>10} {:>10} {:>12}  replica lag (node:entries)",
        "shard", "leader", "term", "commit", "applied", "wal bytes"
    );
    for s in &view.shards {
        let lags: Vec<String> = s
            .replicas
            .iter()
            .map(|r| format!("{}:{}", r.node, r.lag))
            .collect();
        println!(
            "{:>5} {:>6} {:>6} {:>10} {:>10} {:>12}  {}",
            s.shard,
            s.leader,
            s.term,
            s.commit,
            s.applied,
            s.wal_bytes,
            lags.join(" ")
        );
    }
    for m in &view.mirrors {
        println!(
            "mirror {} ({})  breaker {}  sent {}  lag {} entries / ~{} records / {:.1} s  dead letters {}{}",
            m.name,
            m.backend,
            m.breaker,
            m.records_sent,
            m.lag_entries,
            m.lag_records,
            m.lag_seconds,
            m.dead_letters_held,
            m.last_error.as_ref().map(|e| format!("  last error: {e}")).unwrap_or_default()
        );
    }
    Ok(())
}

async fn dlq_command(c: DlqCommand) -> anyhow::Result<()> {
    match c {
        DlqCommand::List {
            addr, sink: None, ..
        } => {
            let v: DlqSinksResponse =
                api(&addr, reqwest::Method::GET, "/api/v1/dlq", NO_BODY).await?;
            for s in v.sinks {
                println!(
                    "{} ({}): {} dead letters",
                    s.sink, s.backend, s.dead_letters
                );
            }
        }
        DlqCommand::List {
            addr,
            sink: Some(sink),
            limit,
        } => {
            let v: DlqListResponse = api(
                &addr,
                reqwest::Method::GET,
                &format!("/api/v1/dlq/{sink}?limit={limit}"),
                NO_BODY,
            )
            .await?;
            for l in &v.dead_letters {
                println!(
                    "#{} shard {} index {} offset {} tenant {}: {}",
                    l.seq, l.shard, l.index, l.offset, l.tenant, l.reason
                );
            }
            eprintln!("{} dead letters in {sink}", v.total);
        }
        DlqCommand::Show { addr, sink, seq } => {
            let v: DeadLetter = api(
                &addr,
                reqwest::Method::GET,
                &format!("/api/v1/dlq/{sink}/{seq}"),
                NO_BODY,
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        DlqCommand::Replay { addr, sink, seqs } => {
            let body = ReplayRequest {
                seqs: (!seqs.is_empty()).then_some(seqs),
            };
            let v: ReplayReport = api(
                &addr,
                reqwest::Method::POST,
                &format!("/api/v1/dlq/{sink}/replay"),
                Some(&body),
            )
            .await?;
            println!(
                "delivered {}, refused again {}, not attempted {}{}",
                v.delivered,
                v.rejected_again,
                v.not_attempted,
                v.error.map(|e| format!(" ({e})")).unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Arguments of `weir push`.
#[derive(clap::Args)]
struct PushArgs {
    /// gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    addr: String,
    /// Tenant (default: the key's, or `default`).
    #[arg(long)]
    tenant: Option<String>,
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
    /// Bytes of lines per batch at most; a longer single line is refused here (the
    /// server refuses a record over its limits.record_bytes_max, 256 KiB by default).
    #[arg(long, default_value_t = 4 << 20)]
    batch_bytes: usize,
    /// Send empty lines as empty records (they are skipped by default).
    #[arg(long)]
    keep_blank: bool,
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

/// Exits 1 with the error and its causes on one line each, never a backtrace: a user's
/// `RUST_BACKTRACE` is for debugging Weir, not for a bad argument or a node that is down.
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,raft=warn,tantivy=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let _ = KEY.set(find_key(cli.key.clone()));
    let _ = TLS_FILES.set(weir_server::tls::ClientFiles {
        ca: cli.ca.clone().map(|p| ("--ca", p)),
        identity: cli
            .client_cert
            .clone()
            .zip(cli.client_key.clone())
            .map(|(c, k)| [("--client-cert", c), ("--client-key", k)]),
        alpn: weir_server::tls::ALPN_HTTP,
    });
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
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
                rejoin,
                auth,
                insecure,
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
                cfg.cluster.rejoin = rejoin;
                cfg.auth.enabled |= auth;
                cfg.auth.insecure |= insecure;
                weir_server::run(cfg, shutdown_signal()).await
            }
            Command::Push(args) => push(args).await,
            Command::Cluster { command } => cluster_command(command).await,
            Command::Dlq { command } => dlq_command(command).await,
            Command::Keys { command } => keys_command(command).await,
            Command::Tenants { command } => tenants_command(command).await,
            Command::Rules { command } => rules_command(command).await,
            Command::Config { command } => config_command(command),
            Command::DevCluster {
                dir,
                base_port,
                nodes,
                shards,
                extra_config,
                tls,
            } => dev_cluster(dir, base_port, nodes, shards, extra_config, tls).await,
            Command::Tls {
                command: TlsCommand::Generate { dir, nodes, names },
            } => tls_generate(&dir, nodes, names),
            Command::Tail {
                addr,
                tenant,
                json,
                query,
            } => tail_command(addr, tenant, query, json).await,
            Command::Query {
                addr,
                tenant,
                start,
                since,
                end,
                level,
                limit,
                sort,
                json,
                histogram,
                interval,
                query,
            } => {
                let start = start.or_else(|| {
                    since.map(|ns| weir_server::append::now_ns().saturating_sub(ns).to_string())
                });
                if histogram {
                    let mut params = vec![("q", query)];
                    params.extend(start.map(|s| ("start", s)));
                    params.extend(end.map(|s| ("end", s)));
                    params.extend(level.map(|s| ("level", s)));
                    params.extend(interval.map(|s| ("interval", s)));
                    return histogram_command(addr, tenant, params, json).await;
                }
                query_command(addr, tenant, start, end, level, limit, sort, json, query).await
            }
        }
    })
}

fn config_command(c: ConfigCommand) -> anyhow::Result<()> {
    match c {
        ConfigCommand::Defaults => {
            print!("{}", weir_server::config_keys::render_defaults());
            Ok(())
        }
        ConfigCommand::Check { file } => {
            let (cfg, warnings) = Config::from_toml_str(
                &std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?,
            )
            .with_context(|| format!("{} is not a valid configuration", file.display()))?;
            // The TLS files as the server would load them, on this machine.
            weir_server::tls::NodeTls::load(&cfg.tls)
                .with_context(|| format!("{}: a TLS file does not load", file.display()))?;
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            println!("{}: ok", file.display());
            Ok(())
        }
    }
}

/// `30s`, `15m`, `2h`, `7d` (or a plain number of seconds) in nanoseconds.
fn parse_duration_ns(s: &str) -> Result<i64, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = number
        .parse()
        .map_err(|_| format!("expected a duration such as 30s, 15m, 2h or 7d, not {s:?}"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}; use s, m, h, d or w"
            ))
        }
    };
    Ok(n.saturating_mul(unit_secs).saturating_mul(1_000_000_000))
}

#[allow(clippy::too_many_arguments)]
async fn query_command(
    addr: String,
    tenant: Option<String>,
    start: Option<String>,
    end: Option<String>,
    level: Option<String>,
    limit: usize,
    sort: String,
    json: bool,
    query: String,
) -> anyhow::Result<()> {
    let mut params = vec![("q", query), ("limit", limit.to_string()), ("sort", sort)];
    params.extend(start.map(|s| ("start", s)));
    params.extend(end.map(|s| ("end", s)));
    params.extend(level.map(|s| ("level", s)));
    let url = format!("{}/api/v1/search", addr.trim_end_matches('/'));
    let resp = with_tenant(http_client()?.get(&url), tenant)
        .query(&params)
        .send()
        .await
        .map_err(|e| unreachable_node(&addr, e))?;
    let body: SearchResponse = read_answer(resp, &url).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    for h in &body.hits {
        let level = h.level.as_str();
        println!("{} {level:5} {} {}", h.timestamp, h.service, h.body);
    }
    if body.partial {
        eprintln!(
            "partial answer: no replica of shards {:?} could be searched",
            body.missing_shards
        );
    }
    eprintln!(
        "{} of {} hits from {} to {}, {} ms",
        body.hits.len(),
        body.total,
        body.start,
        body.end,
        body.took_ms
    );
    for n in &body.notices {
        eprintln!("note: {n}");
    }
    Ok(())
}

/// `weir query --histogram`: one line per bucket, a bar scaled to the largest, and the
/// counts by level.
async fn histogram_command(
    addr: String,
    tenant: Option<String>,
    params: Vec<(&str, String)>,
    json: bool,
) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/histogram", addr.trim_end_matches('/'));
    let resp = with_tenant(http_client()?.get(&url), tenant)
        .query(&params)
        .send()
        .await
        .map_err(|e| unreachable_node(&addr, e))?;
    let body: weir_proto::api::search::HistogramResponse = read_answer(resp, &url).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    const BAR: usize = 40;
    let top = body
        .buckets
        .iter()
        .map(|b| b.count)
        .max()
        .unwrap_or(0)
        .max(1);
    for b in &body.buckets {
        let width = usize::try_from(b.count * BAR as u64 / top).unwrap_or(BAR);
        let by_level: Vec<String> = b
            .levels
            .iter()
            .map(|(l, n)| format!("{} {n}", l.as_str()))
            .collect();
        println!(
            "{} {:<BAR$} {:>8}  {}",
            b.start,
            "#".repeat(width),
            b.count,
            by_level.join(", ")
        );
    }
    if body.partial {
        eprintln!(
            "partial answer: no replica of shards {:?} could be counted",
            body.missing_shards
        );
    }
    eprintln!(
        "{} records from {} to {} in buckets of {} ms, {} ms",
        body.total, body.start, body.end, body.interval_ms, body.took_ms
    );
    for n in &body.notices {
        eprintln!("note: {n}");
    }
    Ok(())
}

/// `weir tail`: reads the node's Server-Sent Events and prints each record as it commits.
async fn tail_command(
    addr: String,
    tenant: Option<String>,
    query: String,
    json: bool,
) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/tail", addr.trim_end_matches('/'));
    let mut resp = with_tenant(http_client()?.get(&url), tenant)
        .query(&[("query", &query)])
        .send()
        .await
        .map_err(|e| unreachable_node(&addr, e))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<weir_proto::api::error::ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or(body);
        anyhow::bail!("{url} answered {status}: {msg}");
    }
    let (mut buf, mut event) = (String::new(), String::new());
    while let Some(chunk) = resp.chunk().await.context("the tail stream broke")? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(at) = buf.find('\n') {
            let line: String = buf.drain(..=at).collect();
            let line = line.trim_end();
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                let data = data.trim();
                match event.as_str() {
                    "record" if json => println!("{data}"),
                    "record" => {
                        let h: weir_proto::api::search::Hit = serde_json::from_str(data)?;
                        println!(
                            "{} {:5} {} {}",
                            h.timestamp,
                            h.level.as_str(),
                            h.service,
                            h.body
                        );
                    }
                    "missed" => eprintln!("note: too slow for the stream, missed {data}"),
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// A request that did not reach the node, with a hint.
fn unreachable_node(addr: &str, e: reqwest::Error) -> anyhow::Error {
    // reqwest says "error sending request"; the why (refused, a certificate that does not
    // verify) is in its sources.
    let mut why = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        why.push_str(&format!(": {s}"));
        source = s.source();
    }
    let tls = if addr.starts_with("https://") {
        "; an https node's certificate must chain to --ca (default: the public roots)"
    } else {
        ""
    };
    anyhow::anyhow!(
        "cannot reach {addr}: {why}\nhint: is a node running there? `weir server` starts one; \
         --addr names another{tls}"
    )
}

/// Runs `nodes` child processes of this binary as a loopback cluster until Ctrl-C or
/// SIGTERM, then stops them with SIGTERM (each shuts down gracefully).
async fn dev_cluster(
    dir: PathBuf,
    base: u16,
    nodes: u64,
    shards: u32,
    extra_config: Option<PathBuf>,
    tls: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!((1..=9).contains(&nodes), "--nodes must be between 1 and 9");
    let extra = match &extra_config {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read --extra-config {}", p.display()))?,
        None => String::new(),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir)?;
    let exe = std::env::current_exe().context("cannot find the weir binary")?;
    let key = weir_server::devcluster::admin_key(&dir)
        .with_context(|| format!("cannot read or write the admin key in {}", dir.display()))?;
    let certs = dev_certificates(&dir.join("tls"), nodes)?;
    let mut children = Vec::new();
    for id in 1..=nodes {
        let path = dir.join(format!("node{id}.toml"));
        let extra = format!(
            "{}{extra}",
            weir_server::devcluster::tls_table(&certs, id, tls)
        );
        std::fs::write(
            &path,
            weir_server::devcluster::config(&dir, base, nodes, id, shards, &extra),
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
        let child = start_dev_node(&exe, &dir, id, &key)?;
        let (g, h, p) = weir_server::devcluster::ports(base, id);
        println!(
            "node {id}: grpc 127.0.0.1:{g}  http 127.0.0.1:{h}  peer 127.0.0.1:{p}  log {}",
            dir.join(format!("node{id}.log")).display()
        );
        children.push(Some(child));
    }
    println!(
        "admin key: {} (every node's; pass it as WEIR_KEY or --key)",
        dir.join(weir_server::auth::ADMIN_KEY_FILE).display()
    );
    let (scheme, ca) = if tls {
        ("https", format!(" --ca {}", certs.ca.display()))
    } else {
        ("http", String::new())
    };
    println!(
        "status: WEIR_KEY=$(cat {}) weir cluster status --addr {scheme}://127.0.0.1:{}{ca}",
        dir.join(weir_server::auth::ADMIN_KEY_FILE).display(),
        base + 1
    );
    println!(
        "the members speak mutual TLS with the certificates in {}",
        certs.ca.parent().unwrap_or(&dir).display()
    );
    println!("type `restart N` and Enter to restart node N; Ctrl-C stops the cluster");
    let mut commands = stdin_lines();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    let mut stdin_open = true;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            line = commands.recv(), if stdin_open => match line {
                Some(line) => {
                    if let Err(e) = dev_command(&line, &exe, &dir, &mut children).await {
                        eprintln!("{e:#}");
                    }
                }
                // No terminal (or it closed): keep running until a signal. (A fresh
                // channel with its sender dropped would answer `None` at once, forever:
                // a busy loop.)
                None => stdin_open = false,
            },
            _ = tick.tick() => report_exited(&dir, &mut children),
        }
    }
    for c in children.iter().flatten() {
        if let Some(pid) = c.id() {
            // SAFETY: kill(2) with a pid of a child we spawned and have not reaped.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    for mut c in children.into_iter().flatten() {
        let _ = c.wait().await;
    }
    Ok(())
}

/// The local cluster's certificates in `dir`: the ones a previous run made, or new ones.
fn dev_certificates(
    dir: &std::path::Path,
    nodes: u64,
) -> anyhow::Result<weir_server::tls::ClusterFiles> {
    let files = weir_server::tls::ClusterFiles::in_dir(dir, nodes);
    if !dir.join("ca.key").exists() {
        let names = ["localhost", "127.0.0.1"].map(String::from);
        return weir_server::tls::write_cluster_files(dir, nodes, &names);
    }
    let missing = files
        .nodes
        .iter()
        .flat_map(|(c, k)| [c, k])
        .find(|p| !p.exists());
    if let Some(p) = missing {
        anyhow::bail!(
            "{} is missing: {} was made for fewer nodes; remove it and start again for new \
             certificates",
            p.display(),
            dir.display()
        );
    }
    Ok(files)
}

/// `weir tls generate`.
fn tls_generate(dir: &std::path::Path, nodes: u64, names: Vec<String>) -> anyhow::Result<()> {
    anyhow::ensure!(nodes >= 1, "--nodes must be at least 1");
    let names = if names.is_empty() {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    } else {
        names
    };
    let files = weir_server::tls::write_cluster_files(dir, nodes, &names)?;
    println!(
        "CA: {} (its key: {}; keep it off the nodes)",
        files.ca.display(),
        dir.join("ca.key").display()
    );
    for (i, (cert, key)) in files.nodes.iter().enumerate() {
        println!("node {}: {} {}", i + 1, cert.display(), key.display());
    }
    println!(
        "each node: [tls] peer_ca_file = ca.crt, cert_file and key_file = its pair (or \
         peer_cert_file and peer_key_file for the peer port only); clients: --ca ca.crt"
    );
    Ok(())
}

fn start_dev_node(
    exe: &std::path::Path,
    dir: &std::path::Path,
    id: u64,
    key: &str,
) -> anyhow::Result<tokio::process::Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("node{id}.log")))?;
    tokio::process::Command::new(exe)
        .args(["server", "--config"])
        .arg(dir.join(format!("node{id}.toml")))
        .env(weir_server::auth::BOOTSTRAP_KEY_ENV, key)
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start node {id}"))
}

/// Reaps nodes that exited and says so, with where to look and how to bring them back.
fn report_exited(dir: &std::path::Path, children: &mut [Option<tokio::process::Child>]) {
    for (i, slot) in children.iter_mut().enumerate() {
        let Some(child) = slot else { continue };
        if let Ok(Some(status)) = child.try_wait() {
            let id = i + 1;
            println!(
                "node {id} exited ({status}); its log: {}; type `restart {id}` to start it again",
                dir.join(format!("node{id}.log")).display()
            );
            *slot = None;
        }
    }
}

/// `restart N`: stops node N if it runs (SIGTERM, then waits) and starts it again.
async fn dev_command(
    line: &str,
    exe: &std::path::Path,
    dir: &std::path::Path,
    children: &mut [Option<tokio::process::Child>],
) -> anyhow::Result<()> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let id = match words.as_slice() {
        [] => return Ok(()),
        ["restart", n] => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=children.len()).contains(n))
            .ok_or_else(|| anyhow::anyhow!("no node {n}: nodes are 1 to {}", children.len()))?,
        _ => anyhow::bail!("unknown command {line:?}; type `restart N`"),
    };
    if let Some(mut child) = children[id - 1].take() {
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) with a pid of a child we spawned and have not reaped.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let _ = child.wait().await;
    }
    let key = weir_server::devcluster::admin_key(dir)?;
    children[id - 1] = Some(start_dev_node(exe, dir, id as u64, &key)?);
    println!("node {id} restarted");
    Ok(())
}

/// Lines typed on stdin, read on a thread of their own (stdin blocks).
fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// One line read for `weir push`: its number in the input and the record made of it.
struct Line {
    number: u64,
    record: Record,
}

/// What `weir push` did, for its summary and exit status.
#[derive(Default)]
struct PushTally {
    sent: u64,
    refused: u64,
    skipped_blank: u64,
}

async fn push(args: PushArgs) -> anyhow::Result<()> {
    let PushArgs {
        addr,
        tenant,
        service,
        level,
        labels,
        batch,
        batch_bytes,
        keep_blank,
        producer_id,
        file,
    } = args;
    let batch = batch.max(1);
    let (uri, https) = weir_server::tls::strip_https(&addr);
    let endpoint = tonic::transport::Endpoint::from_shared(uri)
        .with_context(|| format!("--addr {addr} is not a URI"))?;
    let channel = if https {
        let files =
            tls_files(weir_server::tls::ALPN_GRPC).unwrap_or(weir_server::tls::ClientFiles {
                alpn: weir_server::tls::ALPN_GRPC,
                ..Default::default()
            });
        let tls = weir_server::tls::ClientTls::load(files)?;
        endpoint
            .connect_with_connector(weir_server::tls::Connector::new(tls))
            .await
    } else {
        endpoint.connect().await
    };
    let mut client = IngestClient::new(channel.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to {addr}: {e:#}\nhint: is a node running there? `weir server` starts \
             one; an https node's certificate must chain to --ca"
        )
    })?);
    let input: Box<dyn BufRead> = match &file {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let labels: std::collections::BTreeMap<String, String> = labels.into_iter().collect();
    // Every run is its own producer: its batches are numbered from 1, so reusing the
    // plain id across runs would make the second run's batches look like retries.
    let producer_id = producer_id.map(|p| format!("{p}/{}", weir_server::append::now_ns()));
    let mut sender = BatchSender {
        client: &mut client,
        tenant,
        producer_id,
        seq: 0,
        tally: PushTally::default(),
    };
    let mut lines = Vec::with_capacity(batch);
    let mut bytes = 0usize;
    // Each line gets its own timestamp, strictly increasing, so that the order of the
    // input stays visible in time order even within one batch.
    let mut last_ts = 0i64;
    for (number, line) in input.split(b'\n').enumerate() {
        let number = number as u64 + 1;
        let mut body = line.context("cannot read the input")?;
        if body.last() == Some(&b'\r') {
            body.pop();
        }
        if body.is_empty() && !keep_blank {
            sender.tally.skipped_blank += 1;
            continue;
        }
        if body.len() > batch_bytes {
            eprintln!(
                "line {number} refused: it is {} bytes, over --batch-bytes {batch_bytes} (and \
                 a record holds at most the server's limits.record_bytes_max, 256 KiB by \
                 default); not sent",
                body.len()
            );
            sender.tally.refused += 1;
            continue;
        }
        if !lines.is_empty() && (lines.len() >= batch || bytes + body.len() > batch_bytes) {
            sender.send(std::mem::take(&mut lines)).await?;
            bytes = 0;
        }
        last_ts = weir_server::append::now_ns().max(last_ts + 1);
        bytes += body.len();
        lines.push(Line {
            number,
            record: Record {
                body,
                level: level.clone(),
                service: service.clone(),
                labels: labels.clone(),
                timestamp_ns: last_ts,
                ..Default::default()
            },
        });
    }
    if !lines.is_empty() {
        sender.send(lines).await?;
    }
    let t = sender.tally;
    let blank = if t.skipped_blank > 0 {
        format!(
            ", {} blank lines skipped (--keep-blank sends them)",
            t.skipped_blank
        )
    } else {
        String::new()
    };
    eprintln!("pushed {} records, {} refused{blank}", t.sent, t.refused);
    anyhow::ensure!(
        t.refused == 0,
        "{} of {} lines were refused (reasons above)",
        t.refused,
        t.sent + t.refused
    );
    Ok(())
}

/// Sends batches for `weir push`: retries what the node refuses as retryable (with the
/// same producer id and sequence, when there is one), and splits a batch the node finds
/// too large (its limits.batch_bytes_max may be below --batch-bytes) until each piece fits
/// or a single line is refused.
struct BatchSender<'a> {
    client: &'a mut IngestClient<tonic::transport::Channel>,
    tenant: Option<String>,
    producer_id: Option<String>,
    seq: u64,
    tally: PushTally,
}

impl BatchSender<'_> {
    async fn send(&mut self, lines: Vec<Line>) -> anyhow::Result<()> {
        let mut pending = vec![lines];
        while let Some(lines) = pending.pop() {
            match self.append(&lines).await? {
                Sent::Done => {}
                Sent::TooLarge(_) if lines.len() > 1 => {
                    let mut first = lines;
                    let second = first.split_off(first.len() / 2);
                    pending.push(second);
                    pending.push(first);
                }
                Sent::TooLarge(reason) => {
                    eprintln!("line {} refused: {reason}", lines[0].number);
                    self.tally.refused += 1;
                }
            }
        }
        Ok(())
    }

    async fn append(&mut self, lines: &[Line]) -> anyhow::Result<Sent> {
        self.seq += 1;
        let seq = self.seq;
        let req = AppendRequest {
            tenant: self.tenant.clone().unwrap_or_default(),
            producer_id: self.producer_id.clone().unwrap_or_default(),
            sequence: seq,
            records: lines.iter().map(|l| l.record.clone()).collect(),
        };
        let mut attempt = 0u32;
        let resp = loop {
            match self.client.append(authorized(req.clone())).await {
                Ok(r) => break r.into_inner(),
                Err(s) if too_large(&s) => return Ok(Sent::TooLarge(s.message().to_owned())),
                Err(s)
                    if attempt < 5
                        && self.producer_id.is_some()
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
                    "batch {seq} (lines {}-{}): append failed ({:?}): {}",
                    lines.first().map_or(0, |l| l.number),
                    lines.last().map_or(0, |l| l.number),
                    s.code(),
                    s.message()
                ),
            }
        };
        if resp.duplicate {
            eprintln!("batch {seq}: already stored by an earlier attempt");
        }
        self.tally.sent += resp.accepted;
        self.tally.refused += resp.rejected.len() as u64;
        for r in &resp.rejected {
            let number = lines.get(r.index as usize).map_or(0, |l| l.number);
            eprintln!("line {number} refused: {}", r.reason);
        }
        Ok(Sent::Done)
    }
}

enum Sent {
    Done,
    /// The node refused the request as too large; the reason it gave.
    TooLarge(String),
}

/// Whether the node refused a request for its size (over limits.batch_bytes_max, or past
/// what gRPC decodes at all).
fn too_large(s: &tonic::Status) -> bool {
    (s.code() == tonic::Code::InvalidArgument && s.message().contains("limits.batch_bytes_max"))
        || (s.code() == tonic::Code::OutOfRange && s.message().contains("message length too large"))
        || s.code() == tonic::Code::ResourceExhausted && s.message().contains("message length")
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
