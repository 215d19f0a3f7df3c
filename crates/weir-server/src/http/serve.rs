//! The HTTP accept loop: hyper with the node's limits, instead of `axum::serve`, which
//! has neither a header-read timeout nor a connection cap.
//!
//! - At most `http.connections_max` connections are served at once; one more is answered
//!   `503` with a body saying so, and closed (a client retries; nothing queues unbounded).
//! - A client has `http.header_read_timeout_ms` to send a request's headers, also while a
//!   kept-alive connection waits for its next request: idle and slow-loris connections end.
//! - hyper's own header limits are set above `http.request_headers_bytes_max`, so that the
//!   front door's check answers first, with a body naming the limit.
//! - On stop, no new connection is taken and the open ones finish their requests, for at
//!   most [`DRAIN`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::HttpConfig;

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
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(http.connections_max));
    // The guard `wait_for` returns is not Send: drop it inside this future.
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        let (mut stream, _) = tokio::select! {
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let limit = http.connections_max;
            tokio::spawn(async move {
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
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
            drop(slot);
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
