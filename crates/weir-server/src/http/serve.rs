//! The HTTP accept loop: hyper with the node's limits, instead of `axum::serve`, which
//! has neither a header-read timeout nor a connection cap.
//!
//! - At most `http.connections_max` connections are served at once; one more is answered
//!   `503` with a body saying so, and closed (a client retries; nothing queues unbounded).
//! - A client has `http.header_read_timeout_ms` to send a request's headers, also while a
//!   kept-alive connection waits for its next request: idle and slow-loris connections end.
//! - hyper's own header limits are set above `http.request_headers_bytes_max`, so that the
//!   front door's check answers first, with a body naming the limit.
//! - With TLS (`[tls]`), each connection's handshake runs in its own task within
//!   `tls.handshake_timeout_ms`, holding the connection's slot: a slow handshake never holds
//!   up the accept loop, and handshakes count against `http.connections_max` (a
//!   connection past the cap is closed without a handshake instead of answered 503).
//! - On stop, no new connection is taken and the open ones finish their requests, for at
//!   most [`DRAIN`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::HttpConfig;
use crate::tls::ServerTls;

/// TLS of the HTTP port: the reloadable config and the handshake's time limit.
#[derive(Clone)]
pub struct HttpTls {
    /// The config new connections use.
    pub config: Arc<ServerTls>,
    /// Time a client has to finish its handshake.
    pub handshake_timeout: Duration,
}

/// How long a stopping server waits for open requests to finish.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `stop` turns true.
///
/// # Errors
/// None today: accept errors (out of file descriptors) are logged and retried.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    http: HttpConfig,
    tls: Option<HttpTls>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(http.header_read_timeout_ms))
        // Above the front door's own limits, so that it answers with a body first.
        .max_headers(1000)
        .max_buf_size(http.request_headers_bytes_max.max(64 << 10) * 2 + (64 << 10));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(
            u32::try_from(http.request_headers_bytes_max * 2).unwrap_or(u32::MAX),
        );
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(http.connections_max));
    // The guard `wait_for` returns is not Send: drop it inside this future.
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stopped => break,
        };
        let _ = stream.set_nodelay(true);
        let slot = slots.clone().try_acquire_owned().ok();
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        if tls.is_some() && slot.is_none() {
            // No handshake for a connection that would only be told 503: that work is
            // what the cap bounds. The client sees the connection close, and retries.
            drop(stream);
            continue;
        }
        let watcher = graceful.watcher();
        let limit = http.connections_max;
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(front) = tls else {
                return serve_one(stream, slot, limit, builder, service, watcher).await;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(front.config.current());
            match tokio::time::timeout(front.handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve_one(stream, slot, limit, builder, service, watcher).await,
                Ok(Err(e)) => tracing::debug!(%remote, error = %e, "tls handshake failed"),
                Err(_) => tracing::debug!(%remote, "tls handshake timed out"),
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "http connections still open {} s after stop; closing them",
            DRAIN.as_secs()
        );
    }
    Ok(())
}

/// Serves one connection, or answers 503 and closes it when it got no slot.
async fn serve_one<S>(
    mut stream: S,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    limit: usize,
    builder: Arc<Builder<TokioExecutor>>,
    service: TowerToHyperService<Router>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(slot) = slot else {
        let body = format!(
            "{{\"error\":\"this node already serves {limit} HTTP connections \
             (http.connections_max); retry later\"}}"
        );
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             retry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
        return;
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
    drop(slot);
}
