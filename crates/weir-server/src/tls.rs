//! TLS for the node's ports and its outgoing connections: rustls with the ring provider.
//!
//! - [`ServerTls`]: a listener's `rustls::ServerConfig`, built from the `[tls]` files and
//!   built again when they change ([`spawn_reloader`] polls their modification times).
//!   A change that does not load keeps the previous config, and says why in the log.
//! - [`incoming`]: TLS connections of a `TcpListener` for a tonic server. Each handshake
//!   runs in its own task within `tls.handshake_timeout_ms`, at most [`HANDSHAKES_MAX`] at
//!   once, so a slow client never holds up the accept loop.
//! - [`ClientTls`] and [`Connector`]: the client side (the peer links, the CLI): a tonic
//!   channel over TLS with a reloadable `rustls::ClientConfig`.
//! - [`generate`]: a CA and certificates for a cluster's members (`weir tls generate`,
//!   `weir dev-cluster`, tests).
//!
//! ```no_run
//! # fn demo() -> anyhow::Result<()> {
//! use weir_server::tls;
//! let server = tls::ServerTls::load(tls::ServerFiles {
//!     cert: ("tls.cert_file", "node.crt".into()),
//!     key: ("tls.key_file", "node.key".into()),
//!     client_ca: None,
//!     alpn: tls::ALPN_GRPC,
//! })?;
//! let acceptor = tokio_rustls::TlsAcceptor::from(server.current());
//! # let _ = acceptor; Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

/// ALPN of the gRPC servers and clients: HTTP/2 only.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN of the HTTP server: HTTP/2 or HTTP/1.1, the client's choice.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];
/// TLS handshakes in progress at once on one listener; past it the accept loop waits
/// for one to end (each is bounded by `tls.handshake_timeout_ms`).
pub const HANDSHAKES_MAX: usize = 256;

/// The crypto of every TLS config Weir builds: ring (aws-lc-rs needs cmake and nasm to
/// build).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a file named by a config key (or a command-line option), naming both on error.
fn read(key: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{key} {}: cannot read it", path.display()))
}

/// Every certificate of a PEM file, in order (a chain: leaf first).
///
/// # Errors
/// Unreadable, not PEM, or no certificate in it; the message names `key` and the path.
pub fn load_certs(key: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{key} {}: not a PEM certificate: {e}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{key} {}: no certificate in it (expected PEM \"-----BEGIN CERTIFICATE-----\")",
        path.display()
    );
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// Unreadable, or no key in it; the message names `key` and the path.
pub fn load_key(key: &str, path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        anyhow::anyhow!(
            "{key} {}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1): {e}",
            path.display()
        )
    })
}

/// A trust store of every certificate of a PEM bundle.
///
/// # Errors
/// Unreadable, no certificate, or one that is not a valid trust anchor.
pub fn load_roots(key: &str, path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(key, path)? {
        roots.add(cert).map_err(|e| {
            anyhow::anyhow!("{key} {}: not a usable CA certificate: {e}", path.display())
        })?;
    }
    Ok(roots)
}

/// The files of one listener, each with the key that names it in errors.
#[derive(Clone, Debug)]
pub struct ServerFiles {
    /// Certificate chain.
    pub cert: (&'static str, PathBuf),
    /// Its private key.
    pub key: (&'static str, PathBuf),
    /// When set, clients must present a certificate that chains to this CA bundle.
    pub client_ca: Option<(&'static str, PathBuf)>,
    /// Protocols offered (ALPN).
    pub alpn: &'static [&'static [u8]],
}

impl ServerFiles {
    fn paths(&self) -> Vec<PathBuf> {
        let mut p = vec![self.cert.1.clone(), self.key.1.clone()];
        p.extend(self.client_ca.iter().map(|(_, c)| c.clone()));
        p
    }

    fn build(&self) -> anyhow::Result<ServerConfig> {
        let certs = load_certs(self.cert.0, &self.cert.1)?;
        let key = load_key(self.key.0, &self.key.1)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("rustls has no protocol version for the ring provider")?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some((name, path)) => {
                let roots = Arc::new(load_roots(name, path)?);
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                        .build()
                        .map_err(|e| anyhow::anyhow!("{name} {}: {e}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            anyhow::anyhow!(
                "{} {} and {} {} do not make a usable pair: {e}",
                self.cert.0,
                self.cert.1.display(),
                self.key.0,
                self.key.1.display()
            )
        })?;
        config.alpn_protocols = self.alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// The files of a client: the CA bundle it trusts and the certificate it presents.
#[derive(Clone, Debug, Default)]
pub struct ClientFiles {
    /// Trusted CA bundle; `None`: the public roots (Mozilla's, built in).
    pub ca: Option<(&'static str, PathBuf)>,
    /// Certificate chain and key presented to servers that ask for one.
    pub identity: Option<[(&'static str, PathBuf); 2]>,
    /// Protocols offered (ALPN).
    pub alpn: &'static [&'static [u8]],
}

impl ClientFiles {
    fn paths(&self) -> Vec<PathBuf> {
        let mut p: Vec<PathBuf> = self.ca.iter().map(|(_, c)| c.clone()).collect();
        p.extend(self.identity.iter().flatten().map(|(_, f)| f.clone()));
        p
    }

    fn build(&self) -> anyhow::Result<ClientConfig> {
        let roots = match &self.ca {
            Some((name, path)) => load_roots(name, path)?,
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("rustls has no protocol version for the ring provider")?
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some([(cert_name, cert), (key_name, key)]) => builder
                .with_client_auth_cert(load_certs(cert_name, cert)?, load_key(key_name, key)?)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{cert_name} {} and {key_name} {} do not make a usable pair: {e}",
                        cert.display(),
                        key.display()
                    )
                })?,
        };
        config.alpn_protocols = self.alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// A TLS config built from files, rebuilt when they change.
pub struct Reloadable<F, T> {
    files: F,
    paths: Vec<PathBuf>,
    current: RwLock<Arc<T>>,
    /// The files' [`stamp`]s when last loaded or tried.
    stamps: Mutex<Vec<Option<(SystemTime, u64, u64)>>>,
}

/// A listener's TLS config.
pub type ServerTls = Reloadable<ServerFiles, ServerConfig>;
/// A client's TLS config.
pub type ClientTls = Reloadable<ClientFiles, ClientConfig>;

/// What [`spawn_reloader`] checks.
pub trait Reload: Send + Sync {
    /// Loads the files again if one changed since the last look. On failure the previous
    /// config stays in use and the error is returned (once per change).
    ///
    /// # Errors
    /// A changed file that does not load.
    fn reload_if_changed(&self) -> anyhow::Result<bool>;
}

trait Build {
    type Config;
    fn paths(&self) -> Vec<PathBuf>;
    fn build(&self) -> anyhow::Result<Self::Config>;
}

impl Build for ServerFiles {
    type Config = ServerConfig;
    fn paths(&self) -> Vec<PathBuf> {
        ServerFiles::paths(self)
    }
    fn build(&self) -> anyhow::Result<ServerConfig> {
        ServerFiles::build(self)
    }
}

impl Build for ClientFiles {
    type Config = ClientConfig;
    fn paths(&self) -> Vec<PathBuf> {
        ClientFiles::paths(self)
    }
    fn build(&self) -> anyhow::Result<ClientConfig> {
        ClientFiles::build(self)
    }
}

/// What tells a file changed: its modification time, length and inode (a file renamed
/// over it, as most tooling writes certificates, is a new inode even within one mtime tick).
fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

#[allow(private_bounds)]
impl<F: Build<Config = T>, T> Reloadable<F, T> {
    /// Loads the files.
    ///
    /// # Errors
    /// A file is missing, unreadable or not what its key says; the message names the key.
    pub fn load(files: F) -> anyhow::Result<Arc<Self>> {
        let paths = files.paths();
        let stamps = paths.iter().map(|p| stamp(p)).collect();
        let config = files.build()?;
        Ok(Arc::new(Reloadable {
            files,
            paths,
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
        }))
    }

    /// The config new connections use.
    pub fn current(&self) -> Arc<T> {
        // A poisoned lock still holds a complete Arc (it is replaced in one assignment).
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl<F: Build<Config = T> + Send + Sync, T: Send + Sync> Reload for Reloadable<F, T> {
    fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let now: Vec<_> = self.paths.iter().map(|p| stamp(p)).collect();
        {
            let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if *stamps == now {
                return Ok(false);
            }
            // Recorded before the attempt: a change that fails is reported once, and the
            // next change (the key written after its certificate) is tried again.
            *stamps = now;
        }
        let config = self.files.build()?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        Ok(true)
    }
}

/// Checks `items` every `interval` until `stop` turns true; each reload and each failure
/// is logged.
pub fn spawn_reloader(
    items: Vec<(&'static str, Arc<dyn Reload>)>,
    interval: Duration,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopped = async move {
            let mut stop = stop;
            let _ = stop.wait_for(|s| *s).await;
        };
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut stopped => return,
            }
            for (what, item) in &items {
                let item = item.clone();
                // Reading files and parsing keys is blocking work.
                match tokio::task::spawn_blocking(move || item.reload_if_changed()).await {
                    Ok(Ok(true)) => tracing::info!(listener = what, "tls certificate reloaded"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::error!(
                        listener = what,
                        error = %format!("{e:#}"),
                        "tls files changed but do not load; the previous certificate stays in use"
                    ),
                    Err(e) => tracing::error!(listener = what, error = %e, "tls reload failed"),
                }
            }
        }
    })
}

/// The TLS connections of `listener`, for `serve_with_incoming_shutdown`: accepted here,
/// each handshake in its own task (at most [`HANDSHAKES_MAX`] at once, each within
/// `handshake_timeout`). A failed handshake is logged at debug and dropped. Ends when
/// `stop` turns true or the server drops the stream.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    handshake_timeout: Duration,
    stop: watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<tokio_rustls::server::TlsStream<TcpStream>>>
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(HANDSHAKES_MAX));
        // The guard `wait_for` returns is not Send: drop it inside this future.
        let stopped = async move {
            let mut stop = stop;
            let _ = stop.wait_for(|s| *s).await;
        };
        tokio::pin!(stopped);
        loop {
            let (stream, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut stopped => return,
                () = tx.closed() => return,
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        drop(slot);
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "tls handshake failed"),
                    Err(_) => tracing::debug!(%remote, "tls handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A connector for tonic's `Endpoint::connect_with_connector_lazy`: TCP to the URI's host
/// and port, then TLS with the current client config, verifying the host name. The
/// endpoint's URI stays `http://` so that tonic does not try TLS of its own.
#[derive(Clone)]
pub struct Connector {
    tls: Arc<ClientTls>,
}

impl Connector {
    /// A connector presenting `tls`'s current config on each new connection.
    pub fn new(tls: Arc<ClientTls>) -> Self {
        Connector { tls }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = BoxFuture<io::Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.tls.current();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in uri"))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// A tonic channel over `endpoint` (an `http://` URI): TLS through [`Connector`] when
/// `tls` is given, else plaintext. Connects on first use.
pub fn lazy_channel(
    endpoint: tonic::transport::Endpoint,
    tls: Option<&Arc<ClientTls>>,
) -> tonic::transport::Channel {
    match tls {
        Some(tls) => endpoint.connect_with_connector_lazy(Connector::new(tls.clone())),
        None => endpoint.connect_lazy(),
    }
}

/// `addr` with `https://` turned into `http://`, and whether it was https: tonic's
/// endpoint keeps `http://` while [`Connector`] does the TLS.
pub fn strip_https(addr: &str) -> (String, bool) {
    match addr.strip_prefix("https://") {
        Some(rest) => (format!("http://{rest}"), true),
        None => (addr.to_owned(), false),
    }
}

/// Certificates for a cluster, made by [`generate`]: PEM text.
pub struct Generated {
    /// The CA's certificate (`ca.crt`): every member's `tls.peer_ca_file`, and the
    /// clients' `--ca`.
    pub ca_cert: String,
    /// The CA's private key (`ca.key`): keep it off the nodes.
    pub ca_key: String,
    /// Per node: (certificate, key), valid as a server and as a client for the names
    /// given.
    pub nodes: Vec<(String, String)>,
}

/// A new CA (`common_name`) and, for each entry of `nodes`, a certificate it signed
/// with those DNS names or IP addresses, for server and client authentication.
///
/// # Errors
/// A name that is neither a DNS name nor an IP address.
pub fn generate(common_name: &str, nodes: &[Vec<String>]) -> anyhow::Result<Generated> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, common_name.to_owned());
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let mut out = Vec::with_capacity(nodes.len());
    for names in nodes {
        let mut p = CertificateParams::new(names.clone())
            .with_context(|| format!("not DNS names or IP addresses: {names:?}"))?;
        if let Some(first) = names.first() {
            p.distinguished_name.push(DnType::CommonName, first.clone());
        }
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &issuer)?;
        out.push((cert.pem(), key.serialize_pem()));
    }
    Ok(Generated {
        ca_cert: ca_cert.pem(),
        ca_key: ca_key_pem,
        nodes: out,
    })
}

/// The files [`write_cluster_files`] writes into a directory.
pub struct ClusterFiles {
    /// `ca.crt`.
    pub ca: PathBuf,
    /// `node<i>.crt` and `node<i>.key`, node 1 first.
    pub nodes: Vec<(PathBuf, PathBuf)>,
}

impl ClusterFiles {
    /// The files of a cluster of `nodes` in `dir`, whether or not they exist.
    pub fn in_dir(dir: &Path, nodes: u64) -> ClusterFiles {
        ClusterFiles {
            ca: dir.join("ca.crt"),
            nodes: (1..=nodes)
                .map(|i| {
                    (
                        dir.join(format!("node{i}.crt")),
                        dir.join(format!("node{i}.key")),
                    )
                })
                .collect(),
        }
    }
}

/// Writes a new CA (`ca.crt`, `ca.key`) and a certificate for each of `nodes` nodes
/// (`node<i>.crt`, `node<i>.key`) into `dir`, private keys with mode 0600. Each node's
/// certificate carries `names` (DNS names or IP addresses), `{i}` replaced by its number,
/// and serves as server and as client (the members' mutual TLS).
///
/// # Errors
/// `dir` already holds a CA key (it is never overwritten), a name that is neither a DNS
/// name nor an IP address, or a file that cannot be written.
pub fn write_cluster_files(
    dir: &Path,
    nodes: u64,
    names: &[String],
) -> anyhow::Result<ClusterFiles> {
    let ca_key = dir.join("ca.key");
    anyhow::ensure!(
        !ca_key.exists(),
        "{} already exists: a CA is never overwritten (its certificates would stop \
         verifying). Remove the directory's files or choose another --dir",
        ca_key.display()
    );
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let per_node: Vec<Vec<String>> = (1..=nodes)
        .map(|i| {
            names
                .iter()
                .map(|n| n.replace("{i}", &i.to_string()))
                .collect()
        })
        .collect();
    let g = generate("weir cluster CA", &per_node)?;
    let files = ClusterFiles::in_dir(dir, nodes);
    let write = |path: &Path, text: &str, private: bool| -> anyhow::Result<()> {
        if private {
            crate::auth::write_private(path, text.as_bytes())
        } else {
            std::fs::write(path, text)
        }
        .with_context(|| format!("cannot write {}", path.display()))
    };
    write(&ca_key, &g.ca_key, true)?;
    write(&files.ca, &g.ca_cert, false)?;
    for ((cert, key), (cert_pem, key_pem)) in files.nodes.iter().zip(&g.nodes) {
        write(cert, cert_pem, false)?;
        write(key, key_pem, true)?;
    }
    Ok(files)
}

/// Every TLS config of a node, as `[tls]` sets them.
#[derive(Default)]
pub struct NodeTls {
    /// gRPC (4317) and HTTP (4318).
    pub clients: Option<Arc<ServerTls>>,
    /// The peer port (4319): mutual TLS against the cluster's CA.
    pub peer_server: Option<Arc<ServerTls>>,
    /// Connections to the other members' peer ports.
    pub peer_client: Option<Arc<ClientTls>>,
    /// Connections to the other members' HTTP ports (a key change forwarded to the key
    /// table's leader): verified against the cluster's CA.
    pub http_client: Option<Arc<ClientTls>>,
}

impl NodeTls {
    /// Loads every file `cfg` names.
    ///
    /// # Errors
    /// A file is missing, unreadable or not what its key says; the message names the key.
    pub fn load(cfg: &crate::config::TlsConfig) -> anyhow::Result<NodeTls> {
        let mut out = NodeTls::default();
        if cfg.enabled() {
            out.clients = Some(ServerTls::load(ServerFiles {
                cert: ("tls.cert_file", cfg.cert_file.clone()),
                key: ("tls.key_file", cfg.key_file.clone()),
                client_ca: cfg
                    .requires_client_certs()
                    .then(|| ("tls.client_ca_file", cfg.client_ca_file.clone())),
                alpn: ALPN_HTTP,
            })?);
        }
        if let Some([(cert_key, cert), (key_key, key)]) = cfg.peer_identity() {
            let ca = ("tls.peer_ca_file", cfg.peer_ca_file.clone());
            let identity = [(cert_key, cert.to_owned()), (key_key, key.to_owned())];
            out.peer_server = Some(ServerTls::load(ServerFiles {
                cert: identity[0].clone(),
                key: identity[1].clone(),
                client_ca: Some(ca.clone()),
                alpn: ALPN_GRPC,
            })?);
            out.peer_client = Some(ClientTls::load(ClientFiles {
                ca: Some(ca.clone()),
                identity: Some(identity.clone()),
                alpn: ALPN_GRPC,
            })?);
            out.http_client = Some(ClientTls::load(ClientFiles {
                ca: Some(ca),
                identity: Some(identity),
                alpn: ALPN_HTTP,
            })?);
        }
        Ok(out)
    }

    /// Starts the task that reloads every config whose files change.
    pub fn spawn_reloader(
        &self,
        interval: Duration,
        stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let mut items: Vec<(&'static str, Arc<dyn Reload>)> = Vec::new();
        if let Some(t) = &self.clients {
            items.push(("grpc+http", t.clone()));
        }
        if let Some(t) = &self.peer_server {
            items.push(("peer", t.clone()));
        }
        if let Some(t) = &self.peer_client {
            items.push(("peer client", t.clone()));
        }
        if let Some(t) = &self.http_client {
            items.push(("http client", t.clone()));
        }
        spawn_reloader(items, interval, stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `text` to `path` as certificate tooling does: a new file renamed over it.
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn a_change_that_does_not_load_keeps_the_previous_config_and_the_next_is_tried() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned()];
        let g = generate("test", &[names.clone(), names]).unwrap();
        let (cert, key) = (dir.path().join("n.crt"), dir.path().join("n.key"));
        replace(&cert, &g.nodes[0].0);
        replace(&key, &g.nodes[0].1);
        let tls = ServerTls::load(ServerFiles {
            cert: ("tls.cert_file", cert.clone()),
            key: ("tls.key_file", key.clone()),
            client_ca: None,
            alpn: ALPN_HTTP,
        })
        .unwrap();
        let first = tls.current();
        assert!(!tls.reload_if_changed().unwrap(), "nothing changed");

        // The certificate arrives before its key: a pair that does not match.
        replace(&cert, &g.nodes[1].0);
        let e = format!("{:#}", tls.reload_if_changed().unwrap_err());
        assert!(
            e.contains("tls.cert_file") && e.contains("tls.key_file"),
            "{e}"
        );
        assert!(Arc::ptr_eq(&first, &tls.current()), "the old config stays");
        assert!(
            !tls.reload_if_changed().unwrap(),
            "a failure is reported once"
        );

        replace(&key, &g.nodes[1].1);
        assert!(tls.reload_if_changed().unwrap());
        assert!(!Arc::ptr_eq(&first, &tls.current()));
    }
}
