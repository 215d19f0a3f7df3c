//! `GET /api/v1/tail?query=<LogQL>`: records as they commit, as Server-Sent Events.
//!
//! The query is a LogQL log query (`{service="pay"} |= "declined"`), as for Loki's tail;
//! its selector and pipeline run on each committed record of the tenant, and each match is
//! one `record` event whose data is a search hit (`weir_proto::api::search::Hit`, its
//! `body` the line after the pipeline). A reader too slow for the stream gets a `missed`
//! event (`{"missed_batches": n}`) and goes on from the newest; ingest never waits for it.
//! A comment line is sent every 15 s so that proxies keep the connection open.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use tokio::sync::broadcast::error::RecvError;
use weir_logql::{Expr, LogExpr, Pipeline};
use weir_proto::api::search::Hit;
use weir_proto::{ApiError, Level};

use super::{tenant, HttpError};
use crate::state::NodeState;

/// One reader's filter.
struct Filter {
    tenant: String,
    log: LogExpr,
    pipeline: Pipeline,
}

impl Filter {
    /// The events for one committed batch (none when it is another tenant's).
    fn events(&self, batch: &weir_proto::v1::StoredBatch) -> Vec<Event> {
        let tenant = if batch.tenant.is_empty() {
            weir_proto::DEFAULT_TENANT
        } else {
            batch.tenant.as_str()
        };
        if tenant != self.tenant {
            return Vec::new();
        }
        let mut out = Vec::new();
        for r in &batch.records {
            let entry = crate::logql::entry_of(r.clone());
            if !self
                .log
                .selector
                .iter()
                .all(|m| m.matches_labels(&entry.stream))
            {
                continue;
            }
            let Some(p) = self.pipeline.process(&entry) else {
                continue;
            };
            let hit = Hit {
                timestamp: super::rfc3339(r.timestamp_ns),
                timestamp_ns: r.timestamp_ns,
                level: Level::from_u32(r.level).unwrap_or(Level::Info),
                body: p.line,
                service: r.service.clone(),
                namespace: r.namespace.clone(),
                pod: r.pod.clone(),
                cluster: r.cluster.clone(),
                labels: r.labels.clone().into_iter().collect(),
                attributes: r.attributes.clone().into_iter().collect(),
                trace_id: r.trace_id.clone(),
                span_id: r.span_id.clone(),
                score: None,
            };
            if let Ok(e) = Event::default().event("record").json_data(hit) {
                out.push(e);
            }
        }
        out
    }
}

pub(super) async fn tail(
    State(st): State<Arc<NodeState>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, HttpError> {
    let q = params.get("query").ok_or_else(|| {
        ApiError::invalid(
            "query is required: a LogQL log query such as {service=\"pay\"} |= \"error\"",
        )
    })?;
    let log = match weir_logql::parse(q).map_err(|e| ApiError::invalid(e.to_string()))? {
        Expr::Log(l) => l,
        Expr::Metric(_) => {
            return Err(ApiError::invalid(format!(
                "{q:?} is a metric query; tail takes a log query (a selector and filters)"
            ))
            .into())
        }
    };
    let pipeline = Pipeline::new(&log).map_err(|e| ApiError::invalid(e.to_string()))?;
    let filter = Filter {
        tenant: tenant(&headers, &st.config)?,
        log,
        pipeline,
    };
    let rx = st.tail.subscribe().map_err(|e| {
        ApiError::new(
            weir_proto::ErrorKind::Internal,
            format!("cannot start the tail: {e:#}"),
        )
    })?;
    Ok(Sse::new(events(rx, filter))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// The event stream of one reader: each batch's matching records, and `missed` events.
fn events(
    rx: tokio::sync::broadcast::Receiver<Arc<weir_proto::v1::StoredBatch>>,
    filter: Filter,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let pending: std::collections::VecDeque<Event> = std::collections::VecDeque::new();
    stream::unfold(
        (rx, filter, pending),
        |(mut rx, filter, mut pending)| async move {
            loop {
                if let Some(e) = pending.pop_front() {
                    return Some((Ok(e), (rx, filter, pending)));
                }
                match rx.recv().await {
                    Ok(batch) => pending.extend(filter.events(&batch)),
                    Err(RecvError::Lagged(n)) => {
                        let e = Event::default()
                            .event("missed")
                            .data(format!("{{\"missed_batches\":{n}}}"));
                        return Some((Ok(e), (rx, filter, pending)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    )
}
