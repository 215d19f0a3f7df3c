//! `GET /api/v1/tail?query=<LogQL>`: records as they commit, as Server-Sent Events.
//!
//! The query is a LogQL log query (`{service="pay"} |= "declined"`), as for Loki's tail;
//! its selector and pipeline run on each committed record of the tenant, and each match is
//! one `record` event whose data is a search hit (`weir_proto::api::search::Hit`, its
//! `body` the line after the pipeline). A reader too slow for the stream gets a `missed`
//! event (`{"missed_batches": n}`) and goes on from the newest; ingest never waits for it.
//! A comment line is sent every 15 s so that proxies keep the connection open.
//!
//! `/loki/api/v1/tail` (WebSocket, Loki's and logcli's live tail) shares the filter: it
//! sends first the last `limit` (default 100) entries since `start` (default an hour ago),
//! then every new match, each message `{"streams":[{"stream":{..},"values":[["ns",
//! "line"]]}],"dropped_entries":null}` as Loki does. `delay_for` (seconds, at most 5)
//! holds each live message back that long. When the reader falls behind, the next message
//! carries one `dropped_entries` marker per burst of lost batches (Weir drops whole
//! batches, so it cannot name each lost entry). A record committed while the first part is
//! read may appear in both parts.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use tokio::sync::broadcast::error::RecvError;
use weir_logql::{Expr, LogExpr, Pipeline};
use weir_proto::api::search::Hit;
use weir_proto::{ApiError, Level};

use super::HttpError;
use crate::auth::Caller;
use crate::state::NodeState;

/// One reader's filter.
pub(super) struct Filter {
    tenant: String,
    log: LogExpr,
    pipeline: Pipeline,
}

impl Filter {
    /// A filter for a LogQL log query of `tenant`.
    pub(super) fn new(query: Option<&String>, tenant: String) -> Result<Filter, ApiError> {
        let q = query.ok_or_else(|| {
            ApiError::invalid(
                "query is required: a LogQL log query such as {service=\"pay\"} |= \"error\"",
            )
        })?;
        let log = match weir_logql::parse(q).map_err(|e| ApiError::invalid(e.to_string()))? {
            Expr::Log(l) => l,
            Expr::Metric(_) => {
                return Err(ApiError::invalid(format!(
                    "{q:?} is a metric query; tail takes a log query (a selector and filters)"
                )))
            }
        };
        let pipeline = Pipeline::new(&log).map_err(|e| ApiError::invalid(e.to_string()))?;
        Ok(Filter {
            tenant,
            log,
            pipeline,
        })
    }

    /// The matching records of one committed batch, after the pipeline (none when the
    /// batch is another tenant's).
    fn matches<'a>(
        &'a self,
        batch: &'a weir_proto::v1::StoredBatch,
    ) -> impl Iterator<Item = (&'a weir_proto::v1::StoredRecord, weir_logql::Processed)> + 'a {
        let tenant = if batch.tenant.is_empty() {
            weir_proto::DEFAULT_TENANT
        } else {
            batch.tenant.as_str()
        };
        let mine = tenant == self.tenant;
        batch
            .records
            .iter()
            .filter(move |_| mine)
            .filter_map(move |r| {
                let entry = crate::logql::entry_of(r.clone());
                if !self
                    .log
                    .selector
                    .iter()
                    .all(|m| m.matches_labels(&entry.stream))
                {
                    return None;
                }
                self.pipeline.process(&entry).map(|p| (r, p))
            })
    }

    /// The SSE events for one committed batch.
    fn events(&self, batch: &weir_proto::v1::StoredBatch) -> Vec<Event> {
        let mut out = Vec::new();
        for (r, p) in self.matches(batch) {
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
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, HttpError> {
    let filter = Filter::new(params.get("query"), caller.tenant)?;
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

/// The Loki tail socket: `history` (Loki's streams JSON) first, then every match as it
/// commits, until the client closes or the node stops.
pub(super) async fn loki_socket(
    mut socket: WebSocket,
    history: serde_json::Value,
    mut rx: tokio::sync::broadcast::Receiver<Arc<weir_proto::v1::StoredBatch>>,
    filter: Filter,
    delay: Duration,
) {
    let first = serde_json::json!({"streams": history, "dropped_entries": null});
    if socket
        .send(Message::Text(first.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    let mut dropped: Vec<serde_json::Value> = Vec::new();
    loop {
        let batch = tokio::select! {
            b = rx.recv() => b,
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        let batch = match batch {
            Ok(b) => b,
            Err(RecvError::Lagged(_)) => {
                dropped.push(serde_json::json!({
                    "labels": {},
                    "timestamp": weir_proto::now_ns().to_string(),
                }));
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let mut streams: std::collections::BTreeMap<weir_logql::Labels, Vec<serde_json::Value>> =
            std::collections::BTreeMap::new();
        for (r, p) in filter.matches(&batch) {
            streams
                .entry(p.labels())
                .or_default()
                .push(serde_json::json!([r.timestamp_ns.to_string(), p.line]));
        }
        if streams.is_empty() && dropped.is_empty() {
            continue;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let streams: Vec<serde_json::Value> = streams
            .into_iter()
            .map(|(labels, values)| serde_json::json!({"stream": labels, "values": values}))
            .collect();
        let msg = serde_json::json!({
            "streams": streams,
            "dropped_entries": if dropped.is_empty() { serde_json::Value::Null } else { serde_json::json!(std::mem::take(&mut dropped)) },
        });
        if socket
            .send(Message::Text(msg.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
    }
}
