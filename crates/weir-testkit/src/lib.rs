//! Faithful in-process test servers for the two backends Weir mirrors into: the
//! Elasticsearch bulk API ([`elasticsearch::FakeElasticsearch`]) and the Grafana Loki push
//! API ([`loki::FakeLoki`]).
//!
//! They validate requests the way the real servers do, answer with the real servers'
//! statuses and error texts (each module documents exactly which behaviours are reproduced
//! and which are not), keep what they accepted for assertions, and fail on command:
//! whole-request failures with a status and `Retry-After`, per-item failures
//! (Elasticsearch), latency, and "down" (connections accepted then reset).
//!
//! ```no_run
//! # async fn demo() -> weir_testkit::Result<()> {
//! use std::time::Duration;
//! use weir_testkit::{elasticsearch::FakeElasticsearch, loki::FakeLoki};
//!
//! // 1. Start the fakes on free ports of 127.0.0.1 (inside a tokio runtime).
//! let es = FakeElasticsearch::start().await?;
//! let loki = FakeLoki::start().await?;
//!
//! // 2. Point the code under test at es.url() and loki.url(), and inject faults:
//! es.fail_requests(2, 429, Some(1)); // the next two bulk requests get 429, Retry-After: 1
//! loki.set_latency(Duration::from_millis(200));
//!
//! // 3. Assert on what the backends accepted.
//! assert_eq!(es.doc_count(), 0);
//! assert!(loki.entries("tenant-a").is_empty());
//!
//! // 4. Dropping the handles (or `shutdown().await`) stops the servers.
//! # Ok(()) }
//! ```
//!
//! # Admin API
//!
//! Both servers also answer, on their own port, under `/_testkit/` (a prefix neither real
//! product uses), so that a test in another process (chaos tests, docker) can drive them:
//!
//! - `GET /_testkit/docs` (Elasticsearch: the documents, as [`elasticsearch::EsDoc`]s) or
//!   `GET /_testkit/entries` (Loki: `{"<tenant>": [LokiEntry, ..]}`), `GET /_testkit/stats`,
//!   `GET /_testkit/templates` (Elasticsearch);
//! - `POST /_testkit/fail {"requests": n, "status": 503, "retry_after_secs": null}`;
//! - `POST /_testkit/down {"down": true, "for_ms": 2000}`: a down server cannot answer, so
//!   `for_ms` brings it back up by itself; the answer to this very request still arrives;
//! - `POST /_testkit/latency {"ms": 200}`.
//!
//! The `weir-testkit` binary runs either server until SIGTERM or Ctrl-C:
//! `weir-testkit elasticsearch --addr 0.0.0.0:9200`, `weir-testkit loki --addr 0.0.0.0:3100`.

#![warn(missing_docs)]

pub mod elasticsearch;
mod http;
mod json;
pub mod loki;
pub mod ports;
mod server;
pub mod tls;
mod util;

use std::net::SocketAddr;

/// What can go wrong starting a fake server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
