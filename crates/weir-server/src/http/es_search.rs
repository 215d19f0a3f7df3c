//! The Elasticsearch search API, as Grafana's Elasticsearch data source, Kibana-like
//! tools and the official clients call it (docs/elasticsearch-search.md):
//!
//! - `GET|POST /_search`, `/{index}/_search`: a query DSL body (or `q`, `size`, `from`,
//!   `sort` in the URL), lowered by [`crate::es_query`]; hits as ECS documents.
//! - `POST /_msearch`, `/{index}/_msearch`: NDJSON header and body pairs, each answered in
//!   `responses` (an error in one does not fail the others).
//! - `GET /_mapping`, `/{index}/_mapping`; `GET|POST /_field_caps`, `/{index}/_field_caps`:
//!   the ECS fields of the standard record fields, the tenant's label names and the
//!   attribute keys of its latest records.
//!
//! Index names: the tenant's virtual index `weir-<tenant>` (every record), or the
//! `es.index` that `_bulk` kept. The tenant is the caller's (`http::access`).
//!
//! Hits and counts go through the [`crate::search::Searcher`] (every shard, here or on a
//! peer), so the answer is the same on one node or a cluster; a shard nobody answered
//! for shows in `_shards.failed`. A `date_histogram` is one count-only search per bucket,
//! as `/api/v1/histogram` does (or, for a few records in many buckets, one read of their
//! times); a `terms` on a label is one count per value; what reads records (metrics,
//! `terms` on an attribute) stops at `query.records_scanned_max`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query as UrlQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Map, Value};
use weir_index::{Cursor, Hit, SearchRequest, Sort, StoredRecord};
use weir_proto::{ApiError, Level};

use super::ingest::decoded_body;
use crate::auth::Caller;
use crate::es_query::{
    self, exact, Agg, DateHistogram, EsError, FieldRef, Metric, NamedAgg, SearchFilter, Terms,
    TermsOrder, TrackTotal, TIME_FIELD,
};
use crate::search::{Page, RemoteSearch};
use crate::state::NodeState;

const MS: i64 = 1_000_000;
/// Counts in flight at once for one aggregation.
const CONCURRENT_COUNTS: usize = 8;
/// Records read per page when an aggregation reads records.
const SCAN_PAGE: usize = 5_000;
/// A histogram of more buckets than this over at most [`SCAN_PAGE`] records reads the
/// records' times instead of counting each bucket.
const SCAN_BUCKETS_MIN: usize = 16;
/// Records sampled for the attribute keys of `_mapping` and `_field_caps`.
const MAPPING_SAMPLE: usize = 1_000;

/// The search routes; `es.rs` mounts them under its product-header layer.
pub fn routes() -> Router<Arc<NodeState>> {
    Router::new()
        .route("/_search", get(search_route).post(search_route))
        .route("/{index}/_search", get(search_route).post(search_route))
        .route("/_msearch", get(msearch_route).post(msearch_route))
        .route("/{index}/_msearch", get(msearch_route).post(msearch_route))
        .route("/_mapping", get(mapping_route))
        .route("/{index}/_mapping", get(mapping_route))
        .route("/_field_caps", get(field_caps_route).post(field_caps_route))
        .route(
            "/{index}/_field_caps",
            get(field_caps_route).post(field_caps_route),
        )
}

/// The index expression of a route: the `{index}` segment, or `_all` where there is none.
fn index_of(index: Option<Path<String>>) -> String {
    index.map_or_else(|| "_all".to_owned(), |Path(i)| i)
}

// ---------------------------------------------------------------------------------------
// Errors

fn error_body(e: &EsError) -> Value {
    json!({
        "error": {
            "root_cause": [{"type": e.kind, "reason": e.reason}],
            "type": e.kind,
            "reason": e.reason,
        },
        "status": e.status,
    })
}

fn error_response(e: &EsError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(error_body(e))).into_response()
}

fn from_api(e: ApiError) -> EsError {
    let status = e.http_status();
    let kind = match status {
        400 => "illegal_argument_exception",
        429 => "es_rejected_execution_exception",
        503 => "unavailable_shards_exception",
        _ => "exception",
    };
    EsError {
        status,
        kind,
        reason: e.message,
    }
}

fn json_body(st: &NodeState, headers: &HeaderMap, body: Bytes) -> Result<Bytes, EsError> {
    decoded_body(headers, body, &st.config).map_err(|e| from_api(e.0))
}

// ---------------------------------------------------------------------------------------
// _search

async fn search_route(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    index: Option<Path<String>>,
    headers: HeaderMap,
    UrlQuery(params): UrlQuery<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    search(
        &st,
        &caller.tenant,
        &index_of(index),
        &headers,
        &params,
        body,
    )
    .await
}

async fn search(
    st: &NodeState,
    tenant: &str,
    index: &str,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    body: Bytes,
) -> Response {
    let answer = async {
        let tenant = tenant.to_owned();
        let body = json_body(st, headers, body)?;
        let mut body: Value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Object(Map::new())
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| EsError::parsing(format!("the search body is not JSON: {e}")))?
        };
        url_params_into_body(params, &mut body)?;
        let total_as_int = params
            .get("rest_total_hits_as_int")
            .is_some_and(|v| v != "false");
        run(st, &tenant, index, &body, total_as_int).await
    }
    .await;
    match answer {
        Ok(v) => Json(v).into_response(),
        Err(e) => error_response(&e),
    }
}

/// `q`, `size`, `from`, `sort` and `track_total_hits` of the URL, into the body (they win, as in
/// Elasticsearch). Other URL parameters are accepted and ignored.
fn url_params_into_body(params: &HashMap<String, String>, body: &mut Value) -> Result<(), EsError> {
    let Some(o) = body.as_object_mut() else {
        return Err(EsError::parsing("the search body must be a JSON object"));
    };
    if let Some(q) = params.get("q") {
        o.insert("query".into(), json!({"query_string": {"query": q}}));
    }
    if let Some(t) = params.get("track_total_hits") {
        let v = match t.trim() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            n => Value::from(n.to_owned()),
        };
        o.insert("track_total_hits".into(), v);
    }
    for k in ["size", "from"] {
        if let Some(v) = params.get(k) {
            o.insert(k.into(), Value::from(v.clone()));
        }
    }
    if let Some(s) = params.get("sort") {
        let items: Vec<Value> = s.split(',').map(|i| Value::from(i.trim())).collect();
        o.insert("sort".into(), Value::from(items));
    }
    Ok(())
}

/// The aggregations of one scope, evaluated (boxed: bucket aggregations recurse).
type AggsFuture<'s> =
    Pin<Box<dyn Future<Output = Result<Map<String, Value>, EsError>> + Send + 's>>;

/// What one search shares while it runs: the shards nobody answered for, the records
/// read so far against `query.records_scanned_max`, the buckets counted against
/// `search.histogram_buckets_max`.
struct Run<'a> {
    st: &'a NodeState,
    tenant: String,
    missing: Mutex<BTreeSet<u32>>,
    scanned: AtomicU64,
}

/// Plans and runs one search body against an index expression; the answer in
/// Elasticsearch's shape.
async fn run(
    st: &NodeState,
    tenant: &str,
    index: &str,
    body: &Value,
    total_as_int: bool,
) -> Result<Value, EsError> {
    let started = Instant::now();
    let plan = es_query::parse_search(body, weir_proto::now_ns())?;
    let filter = plan.filter.and(es_query::index_query(index, tenant)?)?;
    let window = st.config.search.limit_max.min(weir_index::MAX_LIMIT);
    if plan.from.saturating_add(plan.size) > window {
        return Err(EsError::illegal(format!(
            "Result window is too large, from + size must be less than or equal to: [{window}] \
             but was [{}] (search.limit_max); page with search_after",
            plan.from.saturating_add(plan.size)
        )));
    }
    let r = Run {
        st,
        tenant: tenant.to_owned(),
        missing: Mutex::default(),
        scanned: AtomicU64::new(0),
    };
    let (timeout, timeout_key) = st.limiter.query_timeout(tenant, st.config.query.timeout_ms);
    let _slot = st.limiter.query_slot(tenant).map_err(|e| EsError {
        status: 429,
        kind: "es_rejected_execution_exception",
        reason: e.message,
    })?;
    let work = async {
        let page = r
            .hits(
                &filter,
                plan.from + plan.size,
                plan.sort,
                plan.after,
                plan.track_total,
            )
            .await?;
        let aggs = r.aggs(&plan.aggs, &filter, None).await?;
        Ok::<_, EsError>((page, aggs))
    };
    let ((hits, total), aggs) =
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| EsError {
                status: 503,
                kind: "search_timeout_exception",
                reason: format!(
                    "the search ran past its timeout of {} ms ({timeout_key}); narrow the \
                 time range or the query",
                    timeout.as_millis()
                ),
            })??;
    let hits: Vec<Value> = hits
        .into_iter()
        .skip(plan.from)
        .map(|h| hit_json(h, plan.sort, tenant))
        .collect();
    let max_score = if plan.sort == Sort::Score {
        hits.iter()
            .filter_map(|h| h["_score"].as_f64())
            .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s))))
            .map_or(Value::Null, Value::from)
    } else {
        Value::Null
    };
    let mut answer = json!({
        "took": started.elapsed().as_millis() as u64,
        "timed_out": false,
        "_shards": r.shards(),
        "hits": {"max_score": max_score, "hits": hits},
    });
    if let Some(t) = total {
        answer["hits"]["total"] = if total_as_int {
            json!(t.value)
        } else {
            json!({"value": t.value, "relation": if t.exact { "eq" } else { "gte" }})
        };
    }
    if !plan.aggs.is_empty() {
        answer["aggregations"] = Value::Object(aggs);
    }
    Ok(answer)
}

impl Run<'_> {
    fn shards(&self) -> Value {
        let total = self.st.raft.shard_count();
        let missing = self.missing.lock().map(|m| m.clone()).unwrap_or_default();
        let failed = missing.len() as u32;
        let mut v = json!({
            "total": total,
            "successful": total.saturating_sub(failed),
            "skipped": 0,
            "failed": failed,
        });
        if failed > 0 {
            v["failures"] = missing
                .iter()
                .map(|s| {
                    json!({"shard": s, "index": es_query::tenant_index(&self.tenant),
                    "reason": {"type": "unavailable_shards_exception",
                        "reason": format!("no node answered for shard {s}; its hits and counts are missing")}})
                })
                .collect();
        }
        v
    }

    /// The first `n` hits in `sort` order and `hits.total` as `track` asks.
    ///
    /// Sorted by time without a cursor and without an exact total, the range is read in
    /// windows from its newest end (oldest for an ascending sort), a minute first and
    /// eight times wider each time: once the page is full and `track`'s count reached,
    /// the older windows cannot change the answer and are not read. Grafana's logs query
    /// (500 newest hits of an hour) then reads the last minute or so instead of every
    /// match of the hour, and so does a search for aggregations only (`size: 0`), whose
    /// total is all it needs from the hits.
    async fn hits(
        &self,
        f: &SearchFilter,
        n: usize,
        sort: Sort,
        after: Option<Cursor>,
        track: TrackTotal,
    ) -> Result<(Vec<Hit>, Option<Total>), EsError> {
        // Without hits to return the order does not matter: count from the newest end.
        let desc = sort != Sort::TimeAsc;
        // An unbounded end is no place to start windows from.
        let bounded = if desc {
            f.end_ns < i64::MAX
        } else {
            f.start_ns > i64::MIN
        };
        let windowed = (matches!(sort, Sort::TimeDesc | Sort::TimeAsc) || n == 0)
            && after.is_none()
            && track != TrackTotal::Exact
            && bounded
            && !f.is_empty();
        if !windowed {
            let page = self.search(f, n, sort, after).await?;
            return Ok((page.hits, Total::of(track, page.total, true)));
        }
        let (lo, hi) = (f.start_ns, f.end_ns);
        let mut edge = if desc { hi } else { lo };
        let mut hits: Vec<Hit> = Vec::with_capacity(n.min(weir_index::MAX_LIMIT));
        let mut total = 0u64;
        let mut width = FIRST_WINDOW_NS;
        loop {
            let (ws, we) = if desc {
                (edge.saturating_sub(width).max(lo), edge)
            } else {
                (edge, edge.saturating_add(width).min(hi))
            };
            let last = if desc { ws == lo } else { we == hi };
            let window_sort = if n == 0 { Sort::TimeDesc } else { sort };
            let page = self
                .search(&f.within(ws, we), n - hits.len(), window_sort, None)
                .await?;
            total += page.total;
            // Every hit of this window is older (newer, ascending) than those before it.
            hits.extend(page.hits);
            if last {
                return Ok((hits, Total::of(track, total, true)));
            }
            if hits.len() >= n {
                match track {
                    TrackTotal::Off => return Ok((hits, None)),
                    TrackTotal::UpTo(m) if total >= m => {
                        return Ok((hits, Total::of(track, total, false)))
                    }
                    _ => {}
                }
            }
            edge = if desc { ws } else { we };
            width = width.saturating_mul(8);
        }
    }

    /// One page through the searcher (every shard), noting missing shards.
    async fn search(
        &self,
        f: &SearchFilter,
        limit: usize,
        sort: Sort,
        after: Option<Cursor>,
    ) -> Result<Page, EsError> {
        if f.is_empty() {
            return Ok(Page {
                hits: Vec::new(),
                total: 0,
                next: None,
                missing_shards: Vec::new(),
                scanned: 0,
            });
        }
        let page = self
            .st
            .searcher
            .search(RemoteSearch {
                request: SearchRequest {
                    query: f.query.clone(),
                    tenant: self.tenant.clone(),
                    start_ns: f.start_ns,
                    end_ns: f.end_ns,
                    levels: Vec::new(),
                    limit,
                    sort,
                    after,
                    prefilter: false,
                },
                query: f.text.clone(),
            })
            .await
            .map_err(from_api)?;
        if !page.missing_shards.is_empty() {
            if let Ok(mut m) = self.missing.lock() {
                m.extend(page.missing_shards.iter().copied());
            }
        }
        Ok(page)
    }

    async fn count(&self, f: &SearchFilter) -> Result<u64, EsError> {
        Ok(self.search(f, 0, Sort::TimeDesc, None).await?.total)
    }

    /// Counts of many filters, a few at a time, in the order given.
    async fn counts(&self, filters: Vec<SearchFilter>) -> Result<Vec<u64>, EsError> {
        let mut out: Vec<(usize, u64)> = stream::iter(filters.into_iter().enumerate())
            .map(|(i, f)| async move { self.count(&f).await.map(|n| (i, n)) })
            .buffer_unordered(CONCURRENT_COUNTS)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        out.sort_unstable_by_key(|(i, _)| *i);
        Ok(out.into_iter().map(|(_, n)| n).collect())
    }

    /// For a scope bounded on both sides, the count of each bucket from the scope's first
    /// to its last (widened to the extended bounds), as [`Self::bucket_counts`] gives them,
    /// with the first bucket's key; `None` for an unbounded or empty scope, too many
    /// buckets, or a shard not live here.
    async fn bounded_bucket_counts(
        &self,
        h: &DateHistogram,
        scope: &SearchFilter,
    ) -> Result<Option<(i64, Vec<u64>)>, EsError> {
        let (lo, hi) = (scope.start_ns, scope.end_ns);
        if lo == i64::MIN || hi == i64::MAX || lo >= hi || scope.is_empty() {
            return Ok(None);
        }
        let data = (h.bucket_of(lo), h.bucket_of(hi - 1));
        let (first, last) = match extended_buckets(h, Some(data)) {
            Some(e) => (data.0.min(e.0), data.1.max(e.1)),
            None => data,
        };
        let n = (i128::from(last) - i128::from(first)) / i128::from(h.interval_ns) + 1;
        if n > self.st.config.search.histogram_buckets_max as i128 {
            return Ok(None);
        }
        Ok(self
            .bucket_counts(scope, first, h.interval_ns, n as usize)
            .await?
            .map(|counts| (first, counts)))
    }

    /// The count of `f`'s records in each of `buckets` buckets of `width` ns from
    /// `origin`, in one pass over the index's timestamp column per shard; `None` when a
    /// shard is not live on this node (the caller counts bucket by bucket, which fans
    /// out to peers).
    async fn bucket_counts(
        &self,
        f: &SearchFilter,
        origin: i64,
        width: i64,
        buckets: usize,
    ) -> Result<Option<Vec<u64>>, EsError> {
        let req = weir_index::CountRequest {
            tenant: self.tenant.clone(),
            query: f.query.clone(),
            start_ns: f.start_ns,
            end_ns: f.end_ns,
            filters: Vec::new(),
            group_by: Vec::new(),
            origin_ns: origin,
            width_ns: width,
            buckets,
            cells_max: buckets,
        };
        match self.st.searcher.count_local(req).await {
            None => Ok(None),
            Some(Err(e)) => Err(from_api(e)),
            Some(Ok(groups)) => Ok(Some(
                groups
                    .into_iter()
                    .next()
                    .map_or_else(|| vec![0; buckets], |g| g.counts),
            )),
        }
    }

    /// Reads every record `f` matches, oldest first, within `query.records_scanned_max`
    /// for the whole search.
    async fn scan(
        &self,
        f: &SearchFilter,
        mut visit: impl FnMut(&StoredRecord),
    ) -> Result<(), EsError> {
        let max = self.st.config.query.records_scanned_max;
        let mut after = None;
        loop {
            let page = self.search(f, SCAN_PAGE, Sort::TimeAsc, after).await?;
            if after.is_none() && self.scanned.load(Ordering::Relaxed) + page.total > max {
                return Err(scan_limit(max));
            }
            let n = page.hits.len() as u64;
            if self.scanned.fetch_add(n, Ordering::Relaxed) + n > max {
                return Err(scan_limit(max));
            }
            for h in &page.hits {
                visit(&h.record);
            }
            match page.next {
                Some(c) if n > 0 => after = Some(c),
                _ => return Ok(()),
            }
        }
    }

    /// Evaluates `aggs` over `scope`; `known_count` is the scope's count when known (0
    /// means nothing to read).
    fn aggs<'s>(
        &'s self,
        aggs: &'s [NamedAgg],
        scope: &'s SearchFilter,
        known_count: Option<u64>,
    ) -> AggsFuture<'s> {
        Box::pin(async move {
            let mut out = Map::new();
            for a in aggs {
                let v = if known_count == Some(0) {
                    empty_agg(&a.agg)
                } else {
                    match &a.agg {
                        Agg::DateHistogram(h) => self.date_histogram(h, &a.subs, scope).await?,
                        Agg::Terms(t) => self.terms(t, &a.subs, scope).await?,
                        Agg::Metric(m, field) => self.metric(*m, field, scope).await?,
                    }
                };
                out.insert(a.name.clone(), v);
            }
            Ok(out)
        })
    }

    async fn date_histogram(
        &self,
        h: &DateHistogram,
        subs: &[NamedAgg],
        scope: &SearchFilter,
    ) -> Result<Value, EsError> {
        let mut scope = scope.clone();
        if let Some((lo, hi)) = h.hard_bounds {
            scope = scope.within(lo, hi.saturating_add(1));
        }
        // A bounded scope counted here in one pass: its total is the buckets' sum, so it is
        // not counted again.
        let counted = self.bounded_bucket_counts(h, &scope).await?;
        let total = match &counted {
            Some((_, counts)) => counts.iter().sum(),
            None => self.count(&scope).await?,
        };
        let (mut lo, mut hi) = (scope.start_ns, scope.end_ns);
        if total > 0 && (lo == i64::MIN || hi == i64::MAX) {
            // No bound in the query: the buckets run from the first to the last record.
            let first = self.search(&scope, 1, Sort::TimeAsc, None).await?;
            let last = self.search(&scope, 1, Sort::TimeDesc, None).await?;
            if let (Some(a), Some(b)) = (first.hits.first(), last.hits.first()) {
                lo = lo.max(a.key.timestamp_ns);
                hi = hi.min(b.key.timestamp_ns.saturating_add(1));
            }
        }
        let data = (total > 0 && lo < hi).then(|| (h.bucket_of(lo), h.bucket_of(hi - 1)));
        let extended = extended_buckets(h, data);
        let (first, last) = match (data, extended) {
            (Some(d), Some(e)) => (d.0.min(e.0), d.1.max(e.1)),
            (Some(d), None) => d,
            (None, Some(e)) => e,
            (None, None) => return Ok(json!({"buckets": []})),
        };
        let n = (i128::from(last) - i128::from(first)) / i128::from(h.interval_ns) + 1;
        let max = self.st.config.search.histogram_buckets_max;
        if n > max as i128 {
            return Err(too_many_buckets(n, h.interval_ns, max));
        }
        let keys: Vec<i64> = (0..n as i64).map(|i| first + i * h.interval_ns).collect();
        let bucket_scope = |k: i64| scope.within(k, k.saturating_add(h.interval_ns));
        let counts = match counted {
            // Counted over the same buckets (the scope is bounded, so `data` is its range).
            Some((at, counts)) if at == first && counts.len() == keys.len() => counts,
            _ if total == 0 => vec![0; keys.len()],
            _ if total <= SCAN_PAGE as u64 && keys.len() > SCAN_BUCKETS_MIN => {
                // Few records in many buckets: reading their times is one page instead of a
                // search per bucket, and gives the same counts.
                let mut counts = vec![0u64; keys.len()];
                self.scan(&scope, |r| {
                    let i = (i128::from(h.bucket_of(r.timestamp_ns)) - i128::from(first))
                        / i128::from(h.interval_ns);
                    if let Some(c) = usize::try_from(i).ok().and_then(|i| counts.get_mut(i)) {
                        *c += 1;
                    }
                })
                .await?;
                counts
            }
            _ => match self
                .bucket_counts(&scope, first, h.interval_ns, keys.len())
                .await?
            {
                Some(counts) => counts,
                None => {
                    self.counts(keys.iter().map(|k| bucket_scope(*k)).collect())
                        .await?
                }
            },
        };
        // Buckets run from the first to the last that holds records, widened to the
        // extended bounds: the query's range alone does not make empty buckets.
        let held = |i: &usize| counts[*i] > 0;
        let first_held = (0..counts.len()).find(held);
        let last_held = (0..counts.len()).rev().find(held);
        let mut buckets = Vec::new();
        for (i, (k, count)) in keys.into_iter().zip(counts.iter().copied()).enumerate() {
            let in_data = first_held.is_some_and(|f| f <= i) && last_held.is_some_and(|l| i <= l);
            let in_extended = extended.is_some_and(|(a, b)| a <= k && k <= b);
            if count < h.min_doc_count || !(in_data || in_extended) {
                continue;
            }
            let mut b = Map::new();
            b.insert(
                "key_as_string".into(),
                key_as_string(k, h.epoch_millis).into(),
            );
            b.insert("key".into(), k.div_euclid(MS).into());
            b.insert("doc_count".into(), count.into());
            if !subs.is_empty() {
                b.extend(self.aggs(subs, &bucket_scope(k), Some(count)).await?);
            }
            buckets.push(Value::Object(b));
        }
        Ok(json!({ "buckets": buckets }))
    }

    async fn terms(
        &self,
        t: &Terms,
        subs: &[NamedAgg],
        scope: &SearchFilter,
    ) -> Result<Value, EsError> {
        let name = t.field.query_name().unwrap_or_default().to_owned();
        let mut counts: Vec<(String, u64)> = match self.label_values(&t.field, &name, scope).await?
        {
            Some(values) => {
                let filters = values
                    .iter()
                    .map(|v| scope.and(exact(&t.field, v)))
                    .collect::<Result<Vec<_>, _>>()?;
                let n = self.counts(filters).await?;
                values.into_iter().zip(n).collect()
            }
            None => {
                let mut by_value: BTreeMap<String, u64> = BTreeMap::new();
                self.scan(scope, |r| {
                    if let Some(v) = field_text(r, &t.field) {
                        *by_value.entry(v).or_default() += 1;
                    }
                })
                .await?;
                by_value.into_iter().collect()
            }
        };
        counts.retain(|(_, n)| *n >= t.min_doc_count);
        match t.order {
            TermsOrder::Count { asc } => counts.sort_by(|a, b| {
                let by = if asc { a.1.cmp(&b.1) } else { b.1.cmp(&a.1) };
                by.then_with(|| a.0.cmp(&b.0))
            }),
            TermsOrder::Key { asc } => {
                counts.sort_by(|a, b| if asc { a.0.cmp(&b.0) } else { b.0.cmp(&a.0) })
            }
        }
        let other: u64 = counts.iter().skip(t.size).map(|(_, n)| n).sum();
        counts.truncate(t.size);
        let mut buckets = Vec::with_capacity(counts.len());
        for (value, count) in counts {
            let mut b = Map::new();
            b.insert("key".into(), value.clone().into());
            b.insert("doc_count".into(), count.into());
            if !subs.is_empty() {
                let inner = scope.and(exact(&t.field, &value))?;
                b.extend(self.aggs(subs, &inner, Some(count)).await?);
            }
            buckets.push(Value::Object(b));
        }
        Ok(json!({
            "doc_count_error_upper_bound": 0,
            "sum_other_doc_count": other,
            "buckets": buckets,
        }))
    }

    /// The values of a label-like field (the standard label fields and stream labels)
    /// from the label index, when there are not too many to count one by one; `None`
    /// when the field is an attribute or an id (its values are read from the records).
    async fn label_values(
        &self,
        field: &FieldRef,
        name: &str,
        scope: &SearchFilter,
    ) -> Result<Option<Vec<String>>, EsError> {
        let searcher = &self.st.searcher;
        let label = match field {
            FieldRef::Standard(s) => !matches!(*s, "trace_id" | "span_id"),
            FieldRef::Other(n) => searcher
                .label_names(self.tenant.clone(), scope.start_ns, scope.end_ns)
                .await
                .map_err(from_api)?
                .contains(n),
            FieldRef::Timestamp | FieldRef::Body => false,
        };
        if !label {
            return Ok(None);
        }
        let values = searcher
            .label_values(
                self.tenant.clone(),
                name.to_owned(),
                scope.start_ns,
                scope.end_ns,
            )
            .await
            .map_err(from_api)?;
        Ok((values.len() <= self.st.config.search.histogram_buckets_max).then_some(values))
    }

    async fn metric(
        &self,
        m: Metric,
        field: &FieldRef,
        scope: &SearchFilter,
    ) -> Result<Value, EsError> {
        let (mut n, mut sum) = (0u64, 0.0f64);
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        let mut distinct = BTreeSet::new();
        self.scan(scope, |r| {
            let Some(text) = field_text(r, field) else {
                return;
            };
            match m {
                Metric::ValueCount => n += 1,
                Metric::Cardinality => {
                    distinct.insert(text);
                }
                _ => {
                    if let Ok(x) = text.trim().parse::<f64>() {
                        n += 1;
                        sum += x;
                        min = min.min(x);
                        max = max.max(x);
                    }
                }
            }
        })
        .await?;
        let value = match m {
            Metric::ValueCount => json!(n),
            Metric::Cardinality => json!(distinct.len()),
            Metric::Sum => json!(sum),
            _ if n == 0 => Value::Null,
            Metric::Min => json!(min),
            Metric::Max => json!(max),
            Metric::Avg => json!(sum / n as f64),
        };
        let mut v = json!({ "value": value });
        if *field == FieldRef::Timestamp && matches!(m, Metric::Min | Metric::Max) && n > 0 {
            let ms = value.as_f64().unwrap_or_default() as i64;
            v["value_as_string"] = key_as_string(ms * MS, false).into();
        }
        Ok(v)
    }
}

/// The buckets (first and last key) that `min_doc_count: 0` with `extended_bounds` asks
/// for, within the hard bounds; an open end reaches to the data's buckets.
/// The first window a time-sorted search reads (see [`Run::hits`]): one minute.
const FIRST_WINDOW_NS: i64 = 60_000_000_000;

/// `hits.total`: a count, exact or a lower bound (`"relation": "gte"`).
#[derive(Clone, Copy, Debug)]
struct Total {
    value: u64,
    exact: bool,
}

impl Total {
    /// What `track_total_hits` shows of `counted` matches; `complete` when every match
    /// was counted.
    fn of(track: TrackTotal, counted: u64, complete: bool) -> Option<Total> {
        match track {
            TrackTotal::Off => None,
            TrackTotal::Exact => Some(Total {
                value: counted,
                exact: true,
            }),
            TrackTotal::UpTo(m) if counted > m || (counted == m && !complete) => Some(Total {
                value: m,
                exact: false,
            }),
            TrackTotal::UpTo(_) => Some(Total {
                value: counted,
                exact: true,
            }),
        }
    }
}

fn extended_buckets(h: &DateHistogram, data: Option<(i64, i64)>) -> Option<(i64, i64)> {
    (h.min_doc_count == 0)
        .then_some(h.extended_bounds)
        .flatten()
        .map(|(a, b)| {
            let (a, b) = match h.hard_bounds {
                Some((x, y)) => (a.max(x), b.min(y)),
                None => (a, b),
            };
            let a = if a == i64::MIN {
                data.map_or(b, |d| d.0)
            } else {
                a
            };
            let b = if b == i64::MAX {
                data.map_or(a, |d| d.1)
            } else {
                b
            };
            (h.bucket_of(a), h.bucket_of(b))
        })
        .filter(|(a, b)| a <= b)
}

fn too_many_buckets(n: i128, interval_ns: i64, max: usize) -> EsError {
    EsError {
        status: 400,
        kind: "too_many_buckets_exception",
        reason: format!(
            "{n} buckets of {} ms, limit {max} (search.histogram_buckets_max); use a \
             wider interval or a shorter range",
            interval_ns / MS
        ),
    }
}

fn scan_limit(max: u64) -> EsError {
    EsError::illegal(format!(
        "the aggregation would read more than {max} records (query.records_scanned_max); \
         narrow the time range or the query"
    ))
}

/// An aggregation over no records.
fn empty_agg(agg: &Agg) -> Value {
    match agg {
        Agg::DateHistogram(_) => json!({"buckets": []}),
        Agg::Terms(_) => {
            json!({"doc_count_error_upper_bound": 0, "sum_other_doc_count": 0, "buckets": []})
        }
        Agg::Metric(Metric::Sum | Metric::ValueCount | Metric::Cardinality, _) => {
            json!({"value": 0})
        }
        Agg::Metric(..) => json!({"value": null}),
    }
}

/// A bucket key as text: epoch ms, or ISO 8601 with milliseconds (Elasticsearch's
/// default date format).
fn key_as_string(ns: i64, epoch_millis: bool) -> String {
    let ms = ns.div_euclid(MS);
    if epoch_millis {
        return ms.to_string();
    }
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * i128::from(MS)) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => ms.to_string(),
    }
}

/// The text of an Elasticsearch field in a record; `@timestamp` as epoch ms.
fn field_text(r: &StoredRecord, field: &FieldRef) -> Option<String> {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    match field {
        FieldRef::Timestamp => Some(r.timestamp_ns.div_euclid(MS).to_string()),
        FieldRef::Body => non_empty(&r.body),
        FieldRef::Standard("level") => Level::from_u32(r.level).map(|l| l.as_str().to_owned()),
        FieldRef::Standard("service") => non_empty(&r.service),
        FieldRef::Standard("namespace") => non_empty(&r.namespace),
        FieldRef::Standard("pod") => non_empty(&r.pod),
        FieldRef::Standard("cluster") => non_empty(&r.cluster),
        FieldRef::Standard("trace_id") => non_empty(&r.trace_id),
        FieldRef::Standard("span_id") => non_empty(&r.span_id),
        FieldRef::Standard(other) => r.labels.get(*other).cloned(),
        FieldRef::Other(name) => r
            .labels
            .get(name)
            .or_else(|| r.attributes.get(name))
            .cloned(),
    }
}

// ---------------------------------------------------------------------------------------
// Hits as documents

/// One hit: `_index` (the `es.index` it came in with, else the tenant's index), `_id`
/// (its `es.id`, else one made of its place in the log), `_source`, `sort`.
fn hit_json(h: Hit, sort: Sort, tenant: &str) -> Value {
    let r = &h.record;
    let index = r
        .attributes
        .get("es.index")
        .cloned()
        .unwrap_or_else(|| es_query::tenant_index(tenant));
    let id = r
        .attributes
        .get("es.id")
        .cloned()
        .unwrap_or_else(|| format!("w{}.{}.{}", h.key.shard, h.key.log_index, h.key.offset));
    let mut v = json!({
        "_index": index,
        "_id": id,
        "_score": if sort == Sort::Score { json!(h.score) } else { Value::Null },
        "_source": source(r),
    });
    if sort != Sort::Score {
        v["sort"] = Value::from(es_query::sort_values(sort, &h.key));
    }
    v
}

/// A record as an ECS document: the standard fields under their ECS names, then the
/// labels and attributes, dotted names made nested objects again. Attribute values are
/// text (Weir stores them so).
pub fn source(r: &StoredRecord) -> Value {
    let mut flat: Vec<(String, String)> = vec![
        (
            TIME_FIELD.to_owned(),
            weir_mirror::item::rfc3339(r.timestamp_ns),
        ),
        ("message".to_owned(), r.body.clone()),
    ];
    if let Some(l) = Level::from_u32(r.level) {
        flat.push(("log.level".to_owned(), l.as_str().to_owned()));
    }
    for (name, value) in [
        ("service", &r.service),
        ("namespace", &r.namespace),
        ("pod", &r.pod),
        ("cluster", &r.cluster),
        ("trace_id", &r.trace_id),
        ("span_id", &r.span_id),
    ] {
        if !value.is_empty() {
            flat.push((es_query::ecs_name(name).to_owned(), value.clone()));
        }
    }
    let mut rest: Vec<(&String, &String)> = r
        .labels
        .iter()
        .chain(
            r.attributes
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "es.index" | "es.id")),
        )
        .collect();
    rest.sort();
    flat.extend(rest.into_iter().map(|(k, v)| (k.clone(), v.clone())));
    unflatten(flat)
}

/// Dotted names into nested objects. Shorter names go first; a name whose prefix is
/// already a value stays dotted beside it (`{"a": "x", "a.b": "y"}`), and a name seen
/// twice keeps its first value.
fn unflatten(mut flat: Vec<(String, String)>) -> Value {
    flat.sort_by_key(|(k, _)| k.matches('.').count());
    let mut root = Map::new();
    for (key, value) in flat {
        insert_path(&mut root, &key, Value::String(value));
    }
    Value::Object(root)
}

fn insert_path(obj: &mut Map<String, Value>, key: &str, value: Value) {
    match key.split_once('.') {
        Some((head, tail)) if !head.is_empty() && !tail.is_empty() => {
            match obj
                .entry(head.to_owned())
                .or_insert_with(|| Value::Object(Map::new()))
            {
                Value::Object(inner) => insert_path(inner, tail, value),
                _ => {
                    obj.entry(key.to_owned()).or_insert(value);
                }
            }
        }
        _ => {
            obj.entry(key.to_owned()).or_insert(value);
        }
    }
}

// ---------------------------------------------------------------------------------------
// _msearch

async fn msearch_route(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    index: Option<Path<String>>,
    headers: HeaderMap,
    UrlQuery(params): UrlQuery<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    msearch(
        &st,
        &caller.tenant,
        &index_of(index),
        &headers,
        &params,
        body,
    )
    .await
}

/// One search of an `_msearch`: its index expression and body, or why its lines were
/// refused.
type MsearchItem = Result<(String, Value), EsError>;

/// Splits an `_msearch` body into header and body pairs. Blank lines are skipped.
fn msearch_items(body: &[u8], path_index: &str) -> Result<Vec<MsearchItem>, EsError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| EsError::parsing("the _msearch body is not UTF-8"))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() % 2 == 1 {
        return Err(EsError::parsing(
            "the _msearch body must hold a header line and a body line for each search",
        ));
    }
    Ok(lines
        .chunks(2)
        .map(|pair| {
            let header: Value = serde_json::from_str(pair[0])
                .map_err(|e| EsError::parsing(format!("_msearch header is not JSON: {e}")))?;
            let index = match header.get("index") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                _ => path_index.to_owned(),
            };
            let body: Value = serde_json::from_str(pair[1])
                .map_err(|e| EsError::parsing(format!("_msearch body is not JSON: {e}")))?;
            Ok((index, body))
        })
        .collect())
}

async fn msearch(
    st: &NodeState,
    tenant: &str,
    index: &str,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let total_as_int = params
        .get("rest_total_hits_as_int")
        .is_some_and(|v| v != "false");
    let prepared = (|| {
        let tenant = tenant.to_owned();
        let body = json_body(st, headers, body)?;
        Ok::<_, EsError>((tenant, msearch_items(&body, index)?))
    })();
    let (tenant, items) = match prepared {
        Ok(p) => p,
        Err(e) => return error_response(&e),
    };
    let mut responses = Vec::with_capacity(items.len());
    for item in items {
        let answer = match item {
            Ok((index, body)) => run(st, &tenant, &index, &body, total_as_int).await,
            Err(e) => Err(e),
        };
        responses.push(match answer {
            Ok(mut v) => {
                v["status"] = 200.into();
                v
            }
            Err(e) => error_body(&e),
        });
    }
    Json(json!({
        "took": started.elapsed().as_millis() as u64,
        "responses": responses,
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------
// _mapping and _field_caps

/// The Elasticsearch type of each field a tenant's documents have, by dotted name:
/// the standard ones, the label names, and the attribute keys of the latest records.
async fn fields_of(
    st: &NodeState,
    tenant: &str,
    index: &str,
) -> Result<BTreeMap<String, &'static str>, EsError> {
    let mut fields = BTreeMap::new();
    fields.insert(TIME_FIELD.to_owned(), "date");
    fields.insert("message".to_owned(), "text");
    for name in [
        "level",
        "service",
        "namespace",
        "pod",
        "cluster",
        "trace_id",
        "span_id",
    ] {
        fields.insert(es_query::ecs_name(name).to_owned(), "keyword");
    }
    let labels = st
        .searcher
        .label_names(tenant.to_owned(), i64::MIN, i64::MAX)
        .await
        .map_err(from_api)?;
    let standard = ["level", "service", "namespace", "pod", "cluster"];
    for l in labels
        .into_iter()
        .filter(|l| !standard.contains(&l.as_str()))
    {
        fields.entry(l).or_insert("keyword");
    }
    let r = Run {
        st,
        tenant: tenant.to_owned(),
        missing: Mutex::default(),
        scanned: AtomicU64::new(0),
    };
    let scope = SearchFilter::new(es_query::index_query(index, tenant)?, i64::MIN, i64::MAX)?;
    let day = 86_400 * 1_000 * MS;
    let now = weir_proto::now_ns();
    let mut sample = r
        .search(
            &scope.within(now - day, i64::MAX),
            MAPPING_SAMPLE,
            Sort::TimeDesc,
            None,
        )
        .await?;
    if sample.hits.is_empty() {
        sample = r
            .search(&scope, MAPPING_SAMPLE, Sort::TimeDesc, None)
            .await?;
    }
    for h in &sample.hits {
        for k in h.record.attributes.keys() {
            if !matches!(k.as_str(), "es.index" | "es.id") {
                fields.entry(k.clone()).or_insert("keyword");
            }
        }
    }
    Ok(fields)
}

/// The concrete index names an expression answers for: the tenant's index for `_all`
/// and patterns it matches, else the names as given.
fn index_names(expr: &str, tenant: &str) -> Vec<String> {
    let own = es_query::tenant_index(tenant);
    let mut names: Vec<String> = expr
        .split(',')
        .map(str::trim)
        .filter(|n| !n.starts_with('-'))
        .map(|n| {
            if n.is_empty() || n == "_all" || n == "*" || n == own || n.contains('*') {
                own.clone()
            } else {
                n.to_owned()
            }
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

async fn mapping_route(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    index: Option<Path<String>>,
) -> Response {
    mapping(&st, &caller.tenant, &index_of(index)).await
}

async fn mapping(st: &NodeState, tenant: &str, index: &str) -> Response {
    let answer = async {
        let tenant = tenant.to_owned();
        let fields = fields_of(st, &tenant, index).await?;
        let mut properties = Map::new();
        for (name, kind) in &fields {
            insert_mapping(&mut properties, name, kind);
        }
        let mappings = json!({"mappings": {"properties": properties}});
        Ok::<_, EsError>(Value::Object(
            index_names(index, &tenant)
                .into_iter()
                .map(|n| (n, mappings.clone()))
                .collect(),
        ))
    }
    .await;
    match answer {
        Ok(v) => Json(v).into_response(),
        Err(e) => error_response(&e),
    }
}

/// `a.b.c` of type `t` into mapping properties (`{"a":{"properties":{"b":...}}}`); a name
/// under a field that is not an object is left out.
fn insert_mapping(props: &mut Map<String, Value>, name: &str, kind: &str) {
    match name.split_once('.') {
        Some((head, tail)) if !head.is_empty() && !tail.is_empty() => {
            let entry = props
                .entry(head.to_owned())
                .or_insert_with(|| json!({"properties": {}}));
            if let Some(Value::Object(inner)) = entry.get_mut("properties") {
                insert_mapping(inner, tail, kind);
            }
        }
        _ => {
            props
                .entry(name.to_owned())
                .or_insert_with(|| json!({ "type": kind }));
        }
    }
}

async fn field_caps_route(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    index: Option<Path<String>>,
    headers: HeaderMap,
    UrlQuery(params): UrlQuery<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    field_caps(
        &st,
        &caller.tenant,
        &index_of(index),
        &headers,
        &params,
        body,
    )
    .await
}

async fn field_caps(
    st: &NodeState,
    tenant: &str,
    index: &str,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    body: Bytes,
) -> Response {
    let answer = async {
        let tenant = tenant.to_owned();
        let body: Value =
            serde_json::from_slice(&json_body(st, headers, body)?).unwrap_or(Value::Null);
        let wanted: Vec<String> = match params.get("fields") {
            Some(f) => f.split(',').map(|s| s.trim().to_owned()).collect(),
            None => match body.get("fields") {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                Some(Value::String(s)) => s.split(',').map(|s| s.trim().to_owned()).collect(),
                _ => vec!["*".to_owned()],
            },
        };
        let fields = fields_of(st, &tenant, index).await?;
        let names = index_names(index, &tenant);
        Ok::<_, EsError>(json!({
            "indices": names,
            "fields": field_caps_of(&fields, &wanted),
        }))
    }
    .await;
    match answer {
        Ok(v) => Json(v).into_response(),
        Err(e) => error_response(&e),
    }
}

/// `_field_caps`' `fields`: every leaf with its type, the objects above them, and the
/// metadata fields `_id` and `_index`; only names one of `wanted` (wildcards) matches.
fn field_caps_of(fields: &BTreeMap<String, &'static str>, wanted: &[String]) -> Value {
    let cap = |kind: &str, searchable: bool, aggregatable: bool, meta: bool| {
        json!({ kind: {"type": kind, "metadata_field": meta, "searchable": searchable,
            "aggregatable": aggregatable}})
    };
    let mut out = Map::new();
    let matches = |name: &str| wanted.iter().any(|w| wildcard(w, name));
    for (name, kind) in fields {
        let mut parent = name.as_str();
        while let Some((p, _)) = parent.rsplit_once('.') {
            parent = p;
            if matches(p) && !fields.contains_key(p) {
                out.entry(p.to_owned())
                    .or_insert_with(|| cap("object", false, false, false));
            }
        }
        if matches(name) {
            out.insert(name.clone(), cap(kind, true, *kind != "text", false));
        }
    }
    for meta in ["_id", "_index"] {
        if matches(meta) {
            out.insert(meta.to_owned(), cap("keyword", true, true, true));
        }
    }
    Value::Object(out)
}

fn wildcard(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => name.strip_prefix(head).is_some_and(|rest| {
            (0..=rest.len())
                .filter(|i| rest.is_char_boundary(*i))
                .any(|i| wildcard(tail, &rest[i..]))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_becomes_an_ecs_document_with_nested_attributes() {
        let mut r = StoredRecord {
            timestamp_ns: 1_705_314_030_123_000_000,
            level: Level::Warn as u32,
            body: "order shipped".into(),
            service: "shipping".into(),
            pod: "ship-1".into(),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            ..Default::default()
        };
        for (k, v) in [
            ("order.id", "77"),
            ("kubernetes.labels.app", "ship"),
            ("es.index", "logs-shop"),
            ("es.id", "x1"),
            ("a", "scalar"),
            ("a.b", "under a scalar"),
        ] {
            r.attributes.insert(k.into(), v.into());
        }
        r.labels.insert("job".into(), "ship".into());
        let doc = source(&r);
        assert_eq!(
            doc,
            json!({
                "@timestamp": "2024-01-15T10:20:30.123Z",
                "message": "order shipped",
                "log": {"level": "warn"},
                "service": {"name": "shipping"},
                "kubernetes": {"pod": {"name": "ship-1"}, "labels": {"app": "ship"}},
                "trace": {"id": "0af7651916cd43dd8448eb211c80319c"},
                "order": {"id": "77"},
                "job": "ship",
                "a": "scalar",
                "a.b": "under a scalar",
            })
        );
    }

    #[test]
    fn msearch_pairs_take_the_header_index_or_the_paths() {
        let body =
            b"{\"index\":\"a,b\",\"ignore_unavailable\":true}\n{\"size\":0}\n\n{}\n{\"size\":1}\n";
        let items = msearch_items(body, "p").unwrap();
        assert_eq!(items[0].as_ref().unwrap().0, "a,b");
        assert_eq!(
            items[1].as_ref().unwrap(),
            &("p".to_owned(), json!({"size": 1}))
        );
        assert!(msearch_items(b"{}\n", "p").is_err());
        let bad = msearch_items(b"{}\nnot json\n", "p").unwrap();
        assert!(bad[0].is_err());
    }

    #[test]
    fn field_caps_lists_leaves_objects_and_filters_by_pattern() {
        let mut f = BTreeMap::new();
        f.insert("@timestamp".to_owned(), "date");
        f.insert("message".to_owned(), "text");
        f.insert("kubernetes.pod.name".to_owned(), "keyword");
        let all = field_caps_of(&f, &["*".to_owned()]);
        assert_eq!(all["@timestamp"]["date"]["aggregatable"], true);
        assert_eq!(all["message"]["text"]["aggregatable"], false);
        assert_eq!(all["kubernetes"]["object"]["type"], "object");
        assert_eq!(all["kubernetes.pod"]["object"]["type"], "object");
        let some = field_caps_of(&f, &["kube*".to_owned()]);
        assert!(some.get("message").is_none() && some.get("kubernetes.pod.name").is_some());
    }

    #[test]
    fn bucket_keys_print_as_elasticsearch_does() {
        assert_eq!(
            key_as_string(1_705_314_030_000 * MS, false),
            "2024-01-15T10:20:30.000Z"
        );
        assert_eq!(key_as_string(1_705_314_030_000 * MS, true), "1705314030000");
    }
}
