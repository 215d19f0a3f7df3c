//! Weir's own HTTP API: search, labels, cluster status, dead letters, health, metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use weir_index::{Cursor, Hit, SearchRequest, Sort};
use weir_proto::api::dlq::{
    DeadLetter, DlqListResponse, DlqSink, DlqSinksResponse, ReplayReport, ReplayRequest,
};
use weir_proto::api::labels::{LabelValuesResponse, LabelsResponse};
use weir_proto::api::{cluster::ClusterStatus, search};
use weir_proto::{ApiError, Level};

use super::HttpError;
use crate::auth::Caller;
use crate::state::NodeState;

/// Weir's own routes.
pub fn router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/api/v1/search", get(search))
        .route("/api/v1/histogram", get(super::histogram::histogram))
        .route("/api/v1/tail", get(super::tail::tail))
        .route("/api/v1/labels", get(labels))
        .route("/api/v1/labels/{name}/values", get(label_values))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/dlq", get(dlq_sinks))
        .route("/api/v1/dlq/{sink}", get(dlq_list))
        .route("/api/v1/dlq/{sink}/replay", post(dlq_replay))
        .route("/api/v1/dlq/{sink}/{seq}", get(dlq_show))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// A search hit as the API shows it; the score only with `sort=score`.
fn hit(h: Hit, with_score: bool) -> search::Hit {
    let r = h.record;
    search::Hit {
        timestamp: rfc3339(r.timestamp_ns),
        timestamp_ns: r.timestamp_ns,
        level: Level::from_u32(r.level).unwrap_or(Level::Info),
        body: r.body,
        service: r.service,
        namespace: r.namespace,
        pod: r.pod,
        cluster: r.cluster,
        labels: r.labels.into_iter().collect(),
        attributes: r.attributes.into_iter().collect(),
        trace_id: r.trace_id,
        span_id: r.span_id,
        score: with_score.then_some(h.score),
    }
}

async fn search(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<search::SearchResponse>, HttpError> {
    let started = Instant::now();
    let (req, notices) = parse_search(&params, caller.tenant, &st.config)?;
    let (start, end) = (rfc3339(req.start_ns), rfc3339(req.end_ns));
    let limit = req.limit;
    let with_score = matches!(req.sort, Sort::Score);
    let query = params.get("q").cloned().unwrap_or_default();
    let tenant = req.tenant.clone();
    let range = Some((req.start_ns, req.end_ns));
    let page = st
        .limiter
        .query(
            &tenant,
            range,
            &st.config.query,
            st.searcher.search(crate::search::RemoteSearch {
                request: req,
                query,
            }),
        )
        .await?;
    st.metrics.searches.inc_by(1);
    st.metrics.search_latency.observe(started.elapsed());
    Ok(Json(search::SearchResponse {
        hits: page.hits.into_iter().map(|h| hit(h, with_score)).collect(),
        total: page.total,
        took_ms: started.elapsed().as_millis() as u64,
        next_cursor: page.next.map(|c| c.encode()),
        limit,
        start,
        end,
        notices,
        partial: !page.missing_shards.is_empty(),
        missing_shards: page.missing_shards,
        scanned_records: page.scanned,
    }))
}

/// Parses the search API's query parameters; also returns the notices for the answer
/// (a default time range, a capped limit, a clamped date).
///
/// # Errors
/// InvalidArgument naming the parameter and what was wrong with it.
pub fn parse_search(
    params: &HashMap<String, String>,
    tenant: String,
    config: &crate::config::Config,
) -> Result<(SearchRequest, Vec<String>), ApiError> {
    let mut notices = Vec::new();
    let cfg = &config.search;
    let known = ["q", "start", "end", "level", "limit", "sort", "cursor"];
    if let Some(k) = params.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::invalid(format!(
            "unknown parameter {k:?}; accepted: {}",
            known.join(", ")
        )));
    }
    let q = params.get("q").map(String::as_str).unwrap_or("");
    let query = weir_index::parse_query(q)
        .map_err(|e| ApiError::invalid(format!("bad query q={q:?}: {e}")))?;
    let (start_ns, end_ns) = time_range(params, config, &mut notices)?;
    let levels = match params.get("level") {
        None => Vec::new(),
        Some(s) => s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                weir_ingest::parse_level(p.trim())
                    .map_err(|e| ApiError::invalid(format!("bad level: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let asked = match params.get("limit") {
        None => cfg.limit_default,
        Some(s) => s.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::invalid(format!("limit must be a positive integer, not {s:?}"))
        })?,
    };
    let limit = asked.min(cfg.limit_max);
    if limit < asked {
        notices.push(format!(
            "limit {asked} capped to {limit} (search.limit_max); page with next_cursor"
        ));
    }
    let sort = match params.get("sort").map(String::as_str) {
        None | Some("time_desc") => Sort::TimeDesc,
        Some("time_asc") => Sort::TimeAsc,
        Some("score") => Sort::Score,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "sort must be time_desc, time_asc or score, not {other:?}"
            )))
        }
    };
    let after = match params.get("cursor") {
        None => None,
        Some(c) => {
            Some(Cursor::decode(c).map_err(|e| ApiError::invalid(format!("bad cursor: {e}")))?)
        }
    };
    Ok((
        SearchRequest {
            query,
            tenant,
            start_ns,
            end_ns,
            levels,
            limit,
            sort,
            after,
            prefilter: false,
        },
        notices,
    ))
}

const HOUR_NS: i64 = 3600 * 1_000_000_000;

/// `start`/`end` as given, or the last hour (said in `notices`, since older data then
/// looks missing). The default end includes records stamped up to
/// `limits.timestamp_future_secs_max` ahead of now, since those were accepted.
fn time_range(
    params: &HashMap<String, String>,
    config: &crate::config::Config,
    notices: &mut Vec<String>,
) -> Result<(i64, i64), ApiError> {
    let now = crate::append::now_ns();
    let end = match params.get("end") {
        Some(s) => parse_time("end", s, notices)?,
        None => now.saturating_add(config.limits.to_limits().timestamp_future_ns_max()),
    };
    let start = match params.get("start") {
        Some(s) => parse_time("start", s, notices)?,
        // The hour before the given end, or the last hour.
        None => {
            notices.push(
                "no start given: searched the hour before end; pass start (RFC 3339 or \
                 unix ns) to search further back"
                    .to_owned(),
            );
            params
                .get("end")
                .map_or(now, |_| end)
                .saturating_sub(HOUR_NS)
        }
    };
    if start >= end {
        return Err(ApiError::invalid(format!(
            "start ({}) must be before end ({})",
            rfc3339(start),
            rfc3339(end)
        )));
    }
    Ok((start, end))
}

/// Parses RFC 3339 or unix nanoseconds. A date outside what nanoseconds in an i64 hold
/// (1677-09-21 to 2262-04-11) is clamped to that range, with a notice, never wrapped.
fn parse_time(name: &str, s: &str, notices: &mut Vec<String>) -> Result<i64, ApiError> {
    if let Ok(ns) = s.parse::<i64>() {
        return Ok(ns);
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| ApiError::invalid(format!("{name} must be RFC 3339 (2026-11-21T10:00:00Z) or unix nanoseconds, not {s:?}: {e}")))?;
    let ns = t.unix_timestamp_nanos();
    let clamped = ns.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    if i128::from(clamped) != ns {
        notices.push(format!(
            "{name} {s} is outside 1677-09-21..2262-04-11, the times Weir stores; clamped to {}",
            rfc3339(clamped)
        ));
    }
    Ok(clamped)
}

pub use weir_mirror::item::rfc3339;

async fn labels(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<LabelsResponse>, HttpError> {
    let (start, end) = time_range(&params, &st.config, &mut Vec::new())?;
    let labels = st.searcher.label_names(caller.tenant, start, end).await?;
    Ok(Json(LabelsResponse { labels }))
}

async fn label_values(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<LabelValuesResponse>, HttpError> {
    let (start, end) = time_range(&params, &st.config, &mut Vec::new())?;
    let values = st
        .searcher
        .label_values(caller.tenant, name.clone(), start, end)
        .await?;
    Ok(Json(LabelValuesResponse {
        label: name,
        values,
    }))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<Arc<NodeState>>) -> Response {
    match crate::status::readiness(&st) {
        Ok(()) => "ready\n".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn metrics(State(st): State<Arc<NodeState>>) -> impl IntoResponse {
    let mut out = st.metrics.render();
    st.mirror.render_metrics(&mut out);
    st.limiter.refused.render(&mut out);
    st.rules.sampled_out.render(&mut out);
    st.rules.filtered.render(&mut out);
    st.searcher.render_head_metrics(&mut out);
    render_cluster_metrics(&st, &mut out);
    ([("content-type", "text/plain; version=0.0.4")], out)
}

/// Shard leadership and, on a cluster, the peers, in the Prometheus text format.
fn render_cluster_metrics(st: &NodeState, out: &mut String) {
    use std::fmt::Write as _;
    let me = st.raft.node_id();
    let _ = writeln!(out, "# HELP weir_raft_shard_leader Whether this node leads the shard.\n# TYPE weir_raft_shard_leader gauge");
    for shard in 0..st.raft.shard_count() {
        let leads = st.raft.leader_of(shard) == Some(me);
        let _ = writeln!(
            out,
            "weir_raft_shard_leader{{shard=\"{shard}\"}} {}",
            u8::from(leads)
        );
    }
    let _ = writeln!(out, "# HELP weir_raft_shard_has_leader Whether this node knows a leader of the shard (0: an election is under way or this node is cut off).\n# TYPE weir_raft_shard_has_leader gauge");
    for shard in 0..st.raft.shard_count() {
        let known = st.raft.leader_of(shard).is_some();
        let _ = writeln!(
            out,
            "weir_raft_shard_has_leader{{shard=\"{shard}\"}} {}",
            u8::from(known)
        );
    }
    let Some(links) = &st.links else { return };
    let _ = writeln!(out, "# HELP weir_peer_up Whether the last exchange with the peer worked.\n# TYPE weir_peer_up gauge");
    for p in links.all() {
        let _ = writeln!(
            out,
            "weir_peer_up{{peer=\"{}\"}} {}",
            p.id,
            u8::from(p.is_up())
        );
    }
    let _ = writeln!(out, "# HELP weir_peer_raft_messages_dropped_total Raft messages dropped because the peer's queue was full (raft resends).\n# TYPE weir_peer_raft_messages_dropped_total counter");
    for p in links.all() {
        let _ = writeln!(
            out,
            "weir_peer_raft_messages_dropped_total{{peer=\"{}\"}} {}",
            p.id,
            p.dropped.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}

/// `GET /api/v1/cluster`: every node (up or down, addresses, version), every shard (leader,
/// term, commit and applied index, each replica's lag behind the leader's commit), every
/// mirror, and one health word ([`crate::status::Health`]; the policy lives in
/// [`crate::status`]).
async fn cluster(State(st): State<Arc<NodeState>>) -> Json<ClusterStatus> {
    Json(crate::status::cluster_status(&st).await)
}

fn mirror_error(e: weir_mirror::Error) -> HttpError {
    let kind = match e {
        weir_mirror::Error::UnknownSink(_) => weir_proto::ErrorKind::NotFound,
        _ => weir_proto::ErrorKind::Internal,
    };
    HttpError(ApiError::new(kind, e.to_string()))
}

/// Whether `caller` may see a dead letter of `tenant`: its own tenant's, or every one
/// for an operator with the admin scope (and everyone where keys are off).
fn sees_dead_letter(caller: &Caller, tenant: &str) -> bool {
    caller.tenant == tenant || sees_every_dead_letter(caller)
}

fn sees_every_dead_letter(caller: &Caller) -> bool {
    caller.operator && caller.scopes.has(weir_proto::api::keys::Scope::Admin)
}

/// `GET /api/v1/dlq`: each sink and how many dead letters it holds (of the caller's
/// tenant, unless the caller is an operator).
async fn dlq_sinks(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
) -> Result<Json<DlqSinksResponse>, HttpError> {
    let mut sinks = Vec::new();
    for s in st.mirror.status() {
        let dead_letters = if sees_dead_letter(&caller, "\0every tenant") {
            s.dead_letters_held
        } else {
            st.mirror
                .dead_letters(&s.name)
                .map_err(mirror_error)?
                .iter()
                .filter(|l| l.item.tenant == caller.tenant)
                .count()
        };
        sinks.push(DlqSink {
            backend: s.backend,
            dead_letters,
            sink: s.name,
        });
    }
    Ok(Json(DlqSinksResponse { sinks }))
}

/// `GET /api/v1/dlq/{sink}?limit=N&after=SEQ`: dead letters, oldest first.
async fn dlq_list(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    Path(sink): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<DlqListResponse>, HttpError> {
    let num = |k: &str, d: u64| -> Result<u64, HttpError> {
        params.get(k).map_or(Ok(d), |v| {
            v.parse().map_err(|_| {
                HttpError(ApiError::invalid(format!(
                    "{k} must be a non-negative integer, not {v:?}"
                )))
            })
        })
    };
    let limit = num("limit", 100)? as usize;
    let after = num("after", 0)?;
    let mut all = st.mirror.dead_letters(&sink).map_err(mirror_error)?;
    all.retain(|l| sees_dead_letter(&caller, &l.item.tenant));
    let total = all.len();
    let dead_letters = all
        .iter()
        .filter(|l| l.seq > after)
        .take(limit)
        .map(|l| l.to_api())
        .collect();
    Ok(Json(DlqListResponse {
        dead_letters,
        sink,
        total,
    }))
}

/// `GET /api/v1/dlq/{sink}/{seq}`: one dead letter.
async fn dlq_show(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    Path((sink, seq)): Path<(String, String)>,
) -> Result<Json<DeadLetter>, HttpError> {
    let seq: u64 = seq.parse().map_err(|_| {
        HttpError(ApiError::invalid(format!(
            "dead letter number must be an integer, not {seq:?}"
        )))
    })?;
    let all = st.mirror.dead_letters(&sink).map_err(mirror_error)?;
    // Another tenant's dead letter is answered as absent: its existence is not the
    // caller's to know.
    all.iter()
        .find(|l| l.seq == seq && sees_dead_letter(&caller, &l.item.tenant))
        .map(|l| Json(l.to_api()))
        .ok_or_else(|| {
            HttpError(ApiError::new(
                weir_proto::ErrorKind::NotFound,
                format!("sink {sink:?} holds no dead letter {seq}"),
            ))
        })
}

/// `POST /api/v1/dlq/{sink}/replay`, body optional [`ReplayRequest`] (`{"seqs":[1,2]}`):
/// sends dead letters again; delivered ones are removed.
async fn dlq_replay(
    State(st): State<Arc<NodeState>>,
    Path(sink): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<ReplayReport>, HttpError> {
    let seqs = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let request: ReplayRequest = serde_json::from_slice(&body).map_err(|e| {
            HttpError(ApiError::invalid(format!(
                "replay body must be JSON like {{\"seqs\":[1,2]}} (seqs: dead letter numbers, \
                 every one when absent): {e}"
            )))
        })?;
        request.seqs
    };
    // On its own task: a client that hangs up must not cancel a replay halfway (it holds
    // the sink's breaker probe and rewrites the dead-letter log).
    let mirror = st.mirror.clone();
    let report = tokio::spawn(async move { mirror.replay(&sink, seqs).await })
        .await
        .map_err(|e| {
            HttpError(ApiError::new(
                weir_proto::ErrorKind::Internal,
                format!("replay failed: {e}"),
            ))
        })?
        .map_err(mirror_error)?;
    Ok(Json(report))
}
