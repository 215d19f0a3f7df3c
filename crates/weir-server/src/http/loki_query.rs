//! The Loki query API (Grafana's Loki data source, logcli): LogQL over Weir's index, in
//! Loki's exact JSON shapes.
//!
//! - `GET`/`POST /loki/api/v1/query_range`: `streams` (log queries) or `matrix`.
//! - `GET`/`POST /loki/api/v1/query`: `vector` or `scalar` (a log query is refused, as
//!   Loki 3 does).
//! - `/loki/api/v1/labels` (also `/label`), `/loki/api/v1/label/{name}/values`: from the
//!   index's label terms, or, with `query`, from the records the selector picks.
//! - `/loki/api/v1/series` (`match[]`, `match`), `/loki/api/v1/index/stats`.
//! - `/loki/api/v1/index/volume` and `volume_range`: bytes per label set, evaluated as
//!   the LogQL query `sum by (<labels>) (bytes_over_time(<selector>[<range>]))`.
//! - `/loki/api/v1/detected_fields`, `/loki/api/v1/detected_field/{name}/values`: the
//!   fields of a sample of the query's lines (see [`super::loki_detected`]).
//! - `/loki/api/v1/tail`: live tail over WebSocket (see [`super::tail`]).
//!
//! Parameters come from the query string or, for `POST`, a form body, as Loki takes them.
//! Times are nanoseconds, seconds (ten digits or fewer, or with a fraction) or RFC 3339.
//! The tenant is `X-Scope-OrgID` (else Weir's tenant header). Errors are Loki's: a plain
//! text body with 400 for a bad query or parameter, 503 for a timeout.
//!
//! Every query runs on the blocking pool, at most `query.concurrent_max` at once, and
//! stops at its deadline (`query.timeout_ms`), when its client goes away, or when it has
//! read `query.records_scanned_max` records.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use weir_logql::{Direction, EngineError, Expr, QueryParams, QueryResult};

use crate::auth::Caller;
use crate::logql::{Budget, IndexSource, ReadStats};
use crate::state::NodeState;

const NS: i64 = 1_000_000_000;
/// The header Grafana sets to ask for structured metadata and parsed labels apart.
const ENCODING_FLAGS: &str = "x-loki-response-encoding-flags";

/// The router's state: the node, and the slots queries wait for.
#[derive(Clone)]
pub(super) struct Ctx {
    pub(super) st: Arc<NodeState>,
    slots: Arc<Semaphore>,
}

/// The Loki query routes.
pub fn router(st: Arc<NodeState>) -> Router {
    let slots = Arc::new(Semaphore::new(st.config.query.concurrent_max.max(1)));
    Router::new()
        .route(
            "/loki/api/v1/query_range",
            get(query_range).post(query_range),
        )
        .route("/loki/api/v1/query", get(instant).post(instant))
        .route("/loki/api/v1/labels", get(labels).post(labels))
        .route("/loki/api/v1/label", get(labels).post(labels))
        .route(
            "/loki/api/v1/label/{name}/values",
            get(label_values).post(label_values),
        )
        .route("/loki/api/v1/series", get(series).post(series))
        .route(
            "/loki/api/v1/index/stats",
            get(index_stats).post(index_stats),
        )
        .route("/loki/api/v1/index/volume", get(volume).post(volume))
        .route(
            "/loki/api/v1/index/volume_range",
            get(volume_range).post(volume_range),
        )
        .route(
            "/loki/api/v1/detected_fields",
            get(super::loki_detected::detected_fields).post(super::loki_detected::detected_fields),
        )
        .route(
            "/loki/api/v1/detected_field/{name}/values",
            get(super::loki_detected::detected_field_values)
                .post(super::loki_detected::detected_field_values),
        )
        .route("/loki/api/v1/tail", get(tail))
        .with_state(Ctx { st, slots })
}

/// A refusal in Loki's shape: a plain-text body.
pub struct LokiError(StatusCode, String);

impl IntoResponse for LokiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, self.1).into_response();
        if self.0 == StatusCode::TOO_MANY_REQUESTS || self.0 == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        r
    }
}

pub(super) fn bad(msg: impl Into<String>) -> LokiError {
    LokiError(StatusCode::BAD_REQUEST, msg.into())
}

impl From<EngineError> for LokiError {
    fn from(e: EngineError) -> Self {
        match &e {
            EngineError::Limit { what, .. } if *what == "query.timeout_ms" => {
                LokiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            EngineError::Source(m) if m.contains("cancelled") => LokiError(
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                e.to_string(),
            ),
            EngineError::Source(_) => LokiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            _ => bad(e.to_string()),
        }
    }
}

pub(super) type Answer = Result<Response, LokiError>;

/// The request's parameters, from the query string and (for `POST`) a form body; a
/// repeated name keeps every value in order.
pub(super) struct Params {
    pairs: Vec<(String, String)>,
    /// The caller's tenant, whose own range limit [`Params::range`] applies.
    tenant: String,
}

impl Params {
    fn read(method: &Method, raw: Option<String>, body: &Bytes) -> Result<Params, LokiError> {
        let mut all: Vec<(String, String)> =
            serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
                .map_err(|e| bad(format!("the query string is not URL-encoded: {e}")))?;
        if method == Method::POST && !body.is_empty() {
            let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
                .map_err(|e| bad(format!("the form body is not URL-encoded: {e}")))?;
            all.extend(form);
        }
        Ok(Params {
            pairs: all,
            tenant: String::new(),
        })
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A time parameter, `default` when absent.
    fn time(&self, name: &str, default: i64) -> Result<i64, LokiError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => parse_time(v).ok_or_else(|| {
                bad(format!(
                    "invalid {name} {v:?}: give nanoseconds, seconds or RFC 3339"
                ))
            }),
        }
    }

    /// `start` and `end`, with Loki's defaults (`since`, else the last hour, up to now); checked against
    /// `query.range_hours_max` and the tenant's `query_range_hours_max`.
    pub(super) fn range(&self, st: &NodeState) -> Result<(i64, i64), LokiError> {
        let now = weir_proto::now_ns();
        let end = self.time("end", now)?;
        // `since` (a duration back from `end`) stands in for `start`, as in Loki.
        let back = match self.get("since") {
            None => 3600 * NS,
            Some(v) => parse_step(v)
                .ok_or_else(|| bad(format!("invalid since {v:?}: a duration such as 15m or 1h")))?,
        };
        let start = self.time("start", end.saturating_sub(back))?;
        if end < start {
            return Err(bad(
                "end timestamp must not be before or equal to start time",
            ));
        }
        let max_hours = st.config.query.range_hours_max;
        let span_hours = (end - start) / (3600 * NS);
        if span_hours as u64 > max_hours {
            return Err(bad(format!(
                "the query time range exceeds the limit (query length: {}h, limit: {max_hours}h, query.range_hours_max)",
                span_hours
            )));
        }
        st.limiter
            .check_range(&self.tenant, start, end, max_hours)
            .map_err(|e| bad(e.message))?;
        Ok((start, end))
    }
}

/// What every Loki query endpoint reads first: its parameters (the query string, and
/// for `POST` a form body) and its tenant.
pub(super) struct LokiRequest {
    pub(super) p: Params,
    pub(super) tenant: String,
    /// `X-Loki-Response-Encoding-Flags: categorize-labels` was sent.
    categorized: bool,
}

impl axum::extract::FromRequest<Ctx> for LokiRequest {
    type Rejection = LokiError;

    async fn from_request(req: axum::extract::Request, ctx: &Ctx) -> Result<Self, LokiError> {
        let method = req.method().clone();
        let raw = req.uri().query().map(str::to_owned);
        // Checked by `http::access` before any handler runs.
        let tenant = req
            .extensions()
            .get::<Caller>()
            .map(|c| c.tenant.clone())
            .ok_or_else(|| {
                LokiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the route is mounted outside the access layer".to_owned(),
                )
            })?;
        let categorized = categorize(req.headers());
        let body = Bytes::from_request(req, ctx)
            .await
            .map_err(|e| bad(format!("cannot read the request body: {e}")))?;
        let mut p = Params::read(&method, raw, &body)?;
        // The range check applies the tenant's own limit.
        p.tenant.clone_from(&tenant);
        Ok(LokiRequest {
            p,
            tenant,
            categorized,
        })
    }
}

/// A Loki time: an RFC 3339 date, seconds with a fraction, or an integer (seconds when it
/// has ten digits or fewer, else nanoseconds), as Loki's own parser reads it.
pub fn parse_time(v: &str) -> Option<i64> {
    if v.contains('.') {
        if let Ok(f) = v.parse::<f64>() {
            let ns = (f * 1e9).round();
            return (ns.is_finite() && ns.abs() < 9.2e18).then_some(ns as i64);
        }
    }
    match v.parse::<i64>() {
        Ok(n) if v.trim_start_matches('-').len() <= 10 => n.checked_mul(NS),
        Ok(n) => Some(n),
        Err(_) => weir_ingest::parse_rfc3339(v),
    }
}

/// A step or interval: a Prometheus duration (`15s`, `1m30s`) or seconds (`15`, `0.5`).
fn parse_step(v: &str) -> Option<i64> {
    if let Ok(secs) = v.parse::<f64>() {
        let ns = (secs * 1e9).round();
        return (ns.is_finite() && ns > 0.0 && ns < 9.2e18).then_some(ns as i64);
    }
    weir_logql::units::parse_range_duration(v).filter(|d| *d > 0)
}

pub(super) fn parse_query(q: Option<&str>) -> Result<Expr, LokiError> {
    let q = q.ok_or_else(|| bad("query parameter is required"))?;
    weir_logql::parse(q).map_err(|e| bad(e.to_string()))
}

/// Runs `f` over an [`IndexSource`] on the blocking pool, holding a query slot; the
/// source stops when the deadline passes or the request is dropped (client gone).
pub(super) async fn run<T: Send + 'static>(
    ctx: &Ctx,
    tenant: String,
    f: impl FnOnce(&IndexSource) -> Result<T, EngineError> + Send + 'static,
) -> Result<(T, Arc<ReadStats>, Duration), LokiError> {
    let cfg = &ctx.st.config.query;
    let started = Instant::now();
    let (timeout, timeout_key) = ctx.st.limiter.query_timeout(&tenant, cfg.timeout_ms);
    // The tenant's own slot first: a tenant at its limit does not take the node's.
    let _tenant_slot = ctx
        .st
        .limiter
        .query_slot(&tenant)
        .map_err(|e| LokiError(StatusCode::TOO_MANY_REQUESTS, e.message))?;
    let _slot = tokio::time::timeout(timeout, ctx.slots.clone().acquire_owned())
        .await
        .map_err(|_| {
            LokiError(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many queries at once on this node ({} running, query.concurrent_max); retry later",
                    cfg.concurrent_max
                ),
            )
        })?
        .map_err(|_| LokiError(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping".into()))?;
    let cancelled = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(cancelled.clone());
    let source = IndexSource::new(
        ctx.st.searcher.clone(),
        tenant,
        tokio::runtime::Handle::current(),
        Budget {
            deadline: started + timeout,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            timeout_key,
            cancelled,
            records_max: cfg.records_scanned_max,
        },
    );
    let stats = source.stats.clone();
    let out = tokio::task::spawn_blocking(move || f(&source))
        .await
        .map_err(|e| {
            LokiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("query failed: {e}"),
            )
        })??;
    Ok((out, stats, started.elapsed()))
}

/// Sets the flag when the request's future is dropped before the query ends.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The engine's limits from `[query]`.
pub(super) fn limits(st: &NodeState) -> weir_logql::Limits {
    let q = &st.config.query;
    weir_logql::Limits {
        max_series: q.series_max,
        max_points_per_series: q.points_per_series_max,
        ..weir_logql::Limits::default()
    }
}

/// Loki's `stats` object, summary part, from what the query read.
fn stats_json(stats: &ReadStats, took: Duration, returned: usize) -> Value {
    // Lines counted from the index were processed too, without being read.
    let lines = stats.records.load(Ordering::Relaxed) + stats.counted.load(Ordering::Relaxed);
    let bytes = stats.bytes.load(Ordering::Relaxed);
    let secs = took.as_secs_f64().max(1e-9);
    json!({
        "summary": {
            "bytesProcessedPerSecond": (bytes as f64 / secs) as u64,
            "linesProcessedPerSecond": (lines as f64 / secs) as u64,
            "totalBytesProcessed": bytes,
            "totalLinesProcessed": lines,
            "execTime": secs,
            "queueTime": 0,
            "subqueries": 0,
            "totalEntriesReturned": returned,
            "splits": 0,
            "shards": 0,
        },
        "querier": {"store": {"totalChunksRef": 0, "totalChunksDownloaded": 0}},
        "ingester": {"totalReached": 0},
    })
}

/// `{"status":"success","data":...}`, with Loki's `warnings` when shards were missing.
fn success(data: Value, stats: &ReadStats) -> Response {
    let mut body = json!({"status": "success", "data": data});
    let missing = stats
        .missing_shards
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    if !missing.is_empty() {
        body["warnings"] = json!([format!(
            "partial result: no node answered for shards {missing:?}; their records are missing"
        )]);
    }
    axum::Json(body).into_response()
}

fn returned(r: &QueryResult) -> usize {
    match r {
        QueryResult::Streams(s) => s.iter().map(|s| s.entries.len()).sum(),
        QueryResult::Matrix(s) => s.len(),
        QueryResult::Vector(s) => s.len(),
        QueryResult::Scalar { .. } => 1,
    }
}

fn categorize(headers: &HeaderMap) -> bool {
    headers
        .get_all(ENCODING_FLAGS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|f| f.trim() == "categorize-labels"))
}

fn result_json(r: &QueryResult, categorized: bool, stats: Value) -> Value {
    let mut data = r.to_loki_json(categorized);
    if categorized {
        data["encodingFlags"] = json!(["categorize-labels"]);
    }
    data["stats"] = stats;
    data
}

fn limit_of(p: &Params, st: &NodeState) -> Result<usize, LokiError> {
    let max = st.config.query.lines_max;
    let limit = match p.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| bad(format!("invalid limit {v:?}: give a positive integer")))?,
    };
    if limit == 0 {
        return Err(bad("limit must be a positive value"));
    }
    if limit > max {
        return Err(bad(format!(
            "max entries limit per query exceeded, limit > max_entries_limit ({limit} > {max}, query.lines_max)"
        )));
    }
    Ok(limit)
}

fn direction_of(p: &Params) -> Result<Direction, LokiError> {
    match p.get("direction") {
        None => Ok(Direction::Backward),
        Some(d) => d
            .parse()
            .map_err(|_| bad(format!("invalid direction {d:?}: forward or backward"))),
    }
}

async fn query_range(
    State(ctx): State<Ctx>,
    LokiRequest {
        p,
        tenant,
        categorized,
    }: LokiRequest,
) -> Answer {
    let st = &ctx.st;
    let expr = parse_query(p.get("query"))?;
    let (start, end) = p.range(st)?;
    let step = match p.get("step") {
        Some(s) => parse_step(s)
            .ok_or_else(|| bad(format!("invalid step {s:?}: a duration (15s) or seconds")))?,
        None => ((end - start) / NS / 250).max(1) * NS,
    };
    if matches!(expr, Expr::Metric(_)) {
        let points = (end - start) / step;
        let max = st.config.query.points_per_series_max;
        if points as usize > max {
            return Err(bad(format!(
                "exceeded maximum resolution of {max} points per timeseries (query.points_per_series_max). Try increasing the value of the step parameter"
            )));
        }
    }
    let params = QueryParams {
        start_ns: start,
        end_ns: end,
        step_ns: step,
        limit: limit_of(&p, st)?,
        direction: direction_of(&p)?,
        instant: false,
        limits: limits(st),
    };
    let (result, stats, took) = run(&ctx, tenant, move |src| {
        weir_logql::evaluate(&expr, &params, src)
    })
    .await?;
    let data = result_json(
        &result,
        categorized,
        stats_json(&stats, took, returned(&result)),
    );
    Ok(success(data, &stats))
}

/// Most seconds `delay_for` may hold a tail message back (Loki's own bound).
const TAIL_DELAY_SECS_MAX: u64 = 5;

async fn tail(
    State(ctx): State<Ctx>,
    caller: Caller,
    ws: axum::extract::WebSocketUpgrade,
    RawQuery(raw): RawQuery,
) -> Answer {
    let p = Params::read(&Method::GET, raw, &Bytes::new())?;
    let st = &ctx.st;
    let tenant = caller.tenant;
    let query = p.get("query").map(str::to_owned);
    let filter =
        super::tail::Filter::new(query.as_ref(), tenant.clone()).map_err(|e| bad(e.message))?;
    let expr = parse_query(query.as_deref())?;
    let delay = match p.get("delay_for") {
        None => 0,
        Some(d) => d
            .parse::<u64>()
            .ok()
            .filter(|d| *d <= TAIL_DELAY_SECS_MAX)
            .ok_or_else(|| {
                bad(format!(
                    "delay_for must be 0-{TAIL_DELAY_SECS_MAX} seconds, not {d:?}"
                ))
            })?,
    };
    let now = weir_proto::now_ns();
    let params = QueryParams {
        start_ns: p.time("start", now - 3600 * NS)?,
        end_ns: now,
        step_ns: 0,
        limit: limit_of(&p, st)?,
        direction: Direction::Backward,
        instant: false,
        limits: limits(st),
    };
    // Subscribed before the history is read, so nothing committed in between is lost.
    let rx = st.tail.subscribe().map_err(|e| {
        LokiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot start the tail: {e:#}"),
        )
    })?;
    let (history, _, _) = run(&ctx, tenant, move |src| {
        weir_logql::evaluate(&expr, &params, src)
    })
    .await?;
    let history = history.to_loki_json(false)["result"].clone();
    Ok(ws.on_upgrade(move |socket| {
        super::tail::loki_socket(socket, history, rx, filter, Duration::from_secs(delay))
    }))
}

async fn instant(State(ctx): State<Ctx>, LokiRequest { p, tenant, .. }: LokiRequest) -> Answer {
    let st = &ctx.st;
    let expr = parse_query(p.get("query"))?;
    if matches!(expr, Expr::Log(_)) {
        return Err(bad(
            "log queries are not supported as an instant query type, please change your query to a range query type",
        ));
    }
    let time = p.time("time", weir_proto::now_ns())?;
    let params = QueryParams {
        start_ns: time,
        end_ns: time,
        step_ns: 0,
        limit: limit_of(&p, st)?,
        direction: direction_of(&p)?,
        instant: true,
        limits: limits(st),
    };
    let (result, stats, took) = run(&ctx, tenant, move |src| {
        weir_logql::evaluate(&expr, &params, src)
    })
    .await?;
    let data = result_json(&result, false, stats_json(&stats, took, returned(&result)));
    Ok(success(data, &stats))
}

/// The selector of a `query`/`match[]` parameter, which must be a log query.
fn selector_of(q: &str) -> Result<weir_logql::LogExpr, LokiError> {
    match weir_logql::parse(q).map_err(|e| bad(e.to_string()))? {
        Expr::Log(l) => Ok(l),
        Expr::Metric(_) => Err(bad(format!(
            "{q:?} is a metric query; give a stream selector"
        ))),
    }
}

/// Every entry of `selectors` in `[start, end)`, folded by `f`.
async fn fold_entries<T: Send + 'static>(
    ctx: &Ctx,
    tenant: String,
    selectors: Vec<weir_logql::LogExpr>,
    (start, end): (i64, i64),
    init: T,
    f: impl Fn(&mut T, &weir_logql::Entry) + Send + 'static,
) -> Result<(T, Arc<ReadStats>), LokiError> {
    let (acc, stats, _) = run(ctx, tenant, move |src| {
        let mut acc = init;
        for sel in &selectors {
            let hints = weir_logql::hints(sel);
            let pipeline =
                weir_logql::Pipeline::new(sel).map_err(|e| EngineError::Invalid(e.to_string()))?;
            let entries = weir_logql::Source::select(
                src,
                &sel.selector,
                &hints,
                start,
                end,
                Direction::Forward,
            )?;
            for e in entries {
                let e = e?;
                if sel.selector.iter().all(|m| m.matches_labels(&e.stream))
                    && (sel.pipeline.is_empty() || pipeline.process(&e).is_some())
                {
                    f(&mut acc, &e);
                }
            }
        }
        Ok(acc)
    })
    .await?;
    Ok((acc, stats))
}

async fn labels(State(ctx): State<Ctx>, LokiRequest { p, tenant, .. }: LokiRequest) -> Answer {
    let st = &ctx.st;
    let range = p.range(st)?;
    let (names, stats) = match p.get("query") {
        Some(q) => {
            let sel = selector_of(q)?;
            fold_entries(&ctx, tenant, vec![sel], range, BTreeSet::new(), |acc, e| {
                acc.extend(e.stream.keys().cloned());
            })
            .await?
        }
        None => {
            let mut names: BTreeSet<String> = st
                .searcher
                .label_names(tenant, range.0, range.1)
                .await
                .map_err(|e| LokiError(StatusCode::INTERNAL_SERVER_ERROR, e.message))?
                .into_iter()
                .collect();
            for (alias, field) in crate::logql::GRAFANA_ALIASES {
                if names.contains(field) {
                    names.insert(alias.to_owned());
                }
            }
            (names, Arc::default())
        }
    };
    Ok(success(
        json!(names.into_iter().collect::<Vec<_>>()),
        &stats,
    ))
}

async fn label_values(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    LokiRequest { p, tenant, .. }: LokiRequest,
) -> Answer {
    let st = &ctx.st;
    let range = p.range(st)?;
    let (values, stats) = match p.get("query") {
        Some(q) => {
            let sel = selector_of(q)?;
            let wanted = name.clone();
            fold_entries(
                &ctx,
                tenant,
                vec![sel],
                range,
                BTreeSet::new(),
                move |acc, e| {
                    if let Some(v) = e.stream.get(&wanted) {
                        acc.insert(v.clone());
                    }
                },
            )
            .await?
        }
        None => {
            // Grafana's names are a label of that name where a record has one, else the
            // record's service or level: the values of both.
            let fields: Vec<&str> = std::iter::once(name.as_str())
                .chain(crate::logql::field_of_alias(&name))
                .collect();
            let mut values = BTreeSet::new();
            for field in fields {
                values.extend(
                    st.searcher
                        .label_values(tenant.clone(), field.to_owned(), range.0, range.1)
                        .await
                        .map_err(|e| LokiError(StatusCode::INTERNAL_SERVER_ERROR, e.message))?,
                );
            }
            (values, Arc::default())
        }
    };
    Ok(success(
        json!(values.into_iter().collect::<Vec<_>>()),
        &stats,
    ))
}

/// `match[]` (or `match`) selectors; at least one.
fn matches(p: &Params) -> Result<Vec<weir_logql::LogExpr>, LokiError> {
    let sels: Vec<_> = p
        .all("match[]")
        .chain(p.all("match"))
        .filter(|s| !s.is_empty())
        .map(selector_of)
        .collect::<Result<_, _>>()?;
    if sels.is_empty() {
        return Err(bad("match[] parameter is required: give a stream selector"));
    }
    Ok(sels)
}

async fn series(State(ctx): State<Ctx>, LokiRequest { p, tenant, .. }: LokiRequest) -> Answer {
    let st = &ctx.st;
    let range = p.range(st)?;
    let sels = matches(&p)?;
    let max = st.config.query.series_max;
    let (set, stats) = fold_entries(
        &ctx,
        tenant,
        sels,
        range,
        BTreeSet::new(),
        move |acc: &mut BTreeSet<BTreeMap<String, String>>, e| {
            if acc.len() <= max {
                acc.insert(e.stream.clone());
            }
        },
    )
    .await?;
    if set.len() > max {
        return Err(bad(format!(
            "the series match more than {max} streams (query.series_max); narrow the selector"
        )));
    }
    Ok(success(json!(set.into_iter().collect::<Vec<_>>()), &stats))
}

async fn index_stats(State(ctx): State<Ctx>, LokiRequest { p, tenant, .. }: LokiRequest) -> Answer {
    let st = &ctx.st;
    let range = p.range(st)?;
    let sel = selector_of(p.get("query").unwrap_or(""))?;
    #[derive(Default)]
    struct Acc {
        streams: BTreeSet<BTreeMap<String, String>>,
        bytes: u64,
        entries: u64,
    }
    let (acc, _) = fold_entries(
        &ctx,
        tenant,
        vec![sel],
        range,
        Acc::default(),
        |acc: &mut Acc, e| {
            acc.streams.insert(e.stream.clone());
            acc.bytes += e.line.len() as u64;
            acc.entries += 1;
        },
    )
    .await?;
    // Loki's answer is the object itself, not wrapped in status/data.
    Ok(axum::Json(json!({
        "streams": acc.streams.len(),
        "chunks": acc.streams.len(),
        "bytes": acc.bytes,
        "entries": acc.entries,
    }))
    .into_response())
}

/// The LogQL queries behind a volume request, each with the labels its series carry when
/// `aggregateBy=labels` (one query per label name, its series labelled `{name=""}`).
fn volume_queries(p: &Params, range: &str) -> Result<Vec<(String, Option<String>)>, LokiError> {
    let q = p
        .get("query")
        .ok_or_else(|| bad("query parameter is required"))?;
    let sel = selector_of(q)?;
    if !sel.pipeline.is_empty() {
        return Err(bad(format!(
            "{q:?}: volume takes a stream selector only, without filters"
        )));
    }
    let labels: Vec<String> = match p.get("targetLabels") {
        Some(t) => t
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        None => {
            let mut names: Vec<String> = sel.selector.iter().map(|m| m.name.clone()).collect();
            names.dedup();
            names
        }
    };
    if let Some(bad_name) = labels.iter().find(|l| {
        !l.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    }) {
        return Err(bad(format!(
            "targetLabels: {bad_name:?} is not a label name"
        )));
    }
    let selector = sel.to_string();
    match p.get("aggregateBy").unwrap_or("series") {
        "series" => Ok(vec![(
            format!(
                "sum by ({}) (bytes_over_time({selector}[{range}]))",
                labels.join(", ")
            ),
            None,
        )]),
        "labels" => Ok(labels
            .into_iter()
            .map(|l| {
                let with = format!("{}, {l}=~\".+\"}}", selector.trim_end_matches('}'));
                (format!("sum(bytes_over_time({with}[{range}]))"), Some(l))
            })
            .collect()),
        other => Err(bad(format!(
            "aggregateBy must be series or labels, not {other:?}"
        ))),
    }
}

/// Runs the volume queries; the series (or samples) with the most bytes first, at most
/// `limit` (default 100).
async fn volume_answer(
    ctx: &Ctx,
    tenant: String,
    p: &Params,
    params: QueryParams,
    range: &str,
) -> Answer {
    let limit = match p.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad(format!("invalid limit {v:?}")))?,
    };
    let queries = volume_queries(p, range)?;
    let (results, stats, _) = run(ctx, tenant, move |src| {
        let mut out = Vec::new();
        for (q, label) in queries {
            let expr = weir_logql::parse(&q).map_err(EngineError::Parse)?;
            out.push((weir_logql::evaluate(&expr, &params, src)?, label));
        }
        Ok(out)
    })
    .await?;
    let relabel = |labels: &mut weir_logql::Labels, label: &Option<String>| {
        if let Some(l) = label {
            *labels = [(l.clone(), String::new())].into();
        }
    };
    let mut samples = Vec::new();
    let mut series = Vec::new();
    for (result, label) in results {
        match result {
            QueryResult::Vector(v) => samples.extend(v.into_iter().map(|mut s| {
                relabel(&mut s.labels, &label);
                s
            })),
            QueryResult::Matrix(m) => series.extend(m.into_iter().map(|mut s| {
                relabel(&mut s.labels, &label);
                s
            })),
            _ => {}
        }
    }
    let data = if series.is_empty() {
        samples.sort_by(|a, b| {
            b.value
                .total_cmp(&a.value)
                .then_with(|| a.labels.cmp(&b.labels))
        });
        samples.truncate(limit);
        QueryResult::Vector(samples).to_loki_json(false)
    } else {
        let total = |s: &weir_logql::Series| s.points.iter().map(|(_, v)| v).sum::<f64>();
        series.sort_by(|a, b| {
            total(b)
                .total_cmp(&total(a))
                .then_with(|| a.labels.cmp(&b.labels))
        });
        series.truncate(limit);
        QueryResult::Matrix(series).to_loki_json(false)
    };
    Ok(success(data, &stats))
}

/// `index/volume`: bytes per label set over `(start, end]`, as a vector at `end`.
async fn volume(State(ctx): State<Ctx>, LokiRequest { p, tenant, .. }: LokiRequest) -> Answer {
    let (start, end) = p.range(&ctx.st)?;
    let range = weir_logql::units::format_duration((end - start).max(1));
    let params = QueryParams {
        start_ns: end,
        end_ns: end,
        step_ns: 0,
        limit: 1,
        direction: Direction::Backward,
        instant: true,
        limits: limits(&ctx.st),
    };
    volume_answer(&ctx, tenant, &p, params, &range).await
}

/// `index/volume_range`: bytes per label set in each step, as a matrix.
async fn volume_range(
    State(ctx): State<Ctx>,
    LokiRequest { p, tenant, .. }: LokiRequest,
) -> Answer {
    let (start, end) = p.range(&ctx.st)?;
    let step = match p.get("step") {
        Some(s) => parse_step(s)
            .ok_or_else(|| bad(format!("invalid step {s:?}: a duration (15s) or seconds")))?,
        None => ((end - start) / NS / 250).max(1) * NS,
    };
    let range = weir_logql::units::format_duration(step);
    let params = QueryParams {
        start_ns: start,
        end_ns: end,
        step_ns: step,
        limit: 1,
        direction: Direction::Backward,
        instant: false,
        limits: limits(&ctx.st),
    };
    volume_answer(&ctx, tenant, &p, params, &range).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_loki_reads_them() {
        assert_eq!(parse_time("1700000000"), Some(1_700_000_000 * NS));
        assert_eq!(parse_time("1700000000000000000"), Some(1_700_000_000 * NS));
        assert_eq!(
            parse_time("1700000000.5"),
            Some(1_700_000_000 * NS + NS / 2)
        );
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(1_700_000_000 * NS));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn steps_are_durations_or_seconds() {
        assert_eq!(parse_step("15s"), Some(15 * NS));
        assert_eq!(parse_step("1m30s"), Some(90 * NS));
        assert_eq!(parse_step("15"), Some(15 * NS));
        assert_eq!(parse_step("0.5"), Some(NS / 2));
        assert_eq!(parse_step("0"), None);
        assert_eq!(parse_step("-1"), None);
    }
}
