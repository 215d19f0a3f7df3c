//! A TLS front for the fake servers: an https (or mutual TLS) address that forwards each
//! connection's bytes to a plain one, as a TLS-terminating proxy in front of a real
//! Elasticsearch or Loki would. The fakes themselves stay plain HTTP.
//!
//! ```no_run
//! # async fn demo(es: std::net::SocketAddr, cert: Vec<u8>, key: Vec<u8>) {
//! let front = weir_testkit::tls::TlsFront::start(es, &cert, &key, None).await.unwrap();
//! let url = format!("https://localhost:{}", front.addr().port());
//! # let _ = url; }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What can go wrong starting a TLS front.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The listen address could not be bound.
    #[error("cannot listen: {0}")]
    Bind(#[from] std::io::Error),
    /// The certificate, key or CA is not usable PEM.
    #[error("bad certificate or key: {0}")]
    Pem(String),
}

/// A listening TLS front; stops when dropped.
pub struct TlsFront {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TlsFront {
    /// Listens on a loopback port with `cert_pem` (chain) and `key_pem`, asking for a
    /// client certificate that chains to `client_ca_pem` when given, and forwards every
    /// connection that completes its handshake to `upstream`.
    ///
    /// # Errors
    /// No port, or PEM that does not make a server config.
    pub async fn start(
        upstream: SocketAddr,
        cert_pem: &[u8],
        key_pem: &[u8],
        client_ca_pem: Option<&[u8]>,
    ) -> Result<TlsFront, TlsError> {
        let pem = |e: &dyn std::fmt::Display| TlsError::Pem(e.to_string());
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem(&e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem(&e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| pem(&e))?;
        let builder = match client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(ca) {
                    roots.add(c.map_err(|e| pem(&e))?).map_err(|e| pem(&e))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| pem(&e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(certs, key).map_err(|e| pem(&e))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::debug!(error = %e, "tls front: handshake failed");
                            return;
                        }
                    };
                    let Ok(mut plain) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Ok(TlsFront { addr, task })
    }

    /// Where it listens (loopback).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
