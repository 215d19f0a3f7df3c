//! The Elasticsearch ingest API, as Filebeat, Logstash, Fluent Bit, Vector and the official
//! clients use it: `_bulk`, and the handshakes they make before it.
//!
//! - Every answer carries `X-Elastic-Product: Elasticsearch` (the official clients refuse
//!   a server without it).
//! - `GET /` and `HEAD /`: an 8.x `version.number`, `build_flavor: default`, the tagline.
//!   `GET /_license`: an active basic licence. `GET /_cluster/health`: green.
//! - Index templates and ILM policies (`_index_template`, `_template`, `_ilm/policy`,
//!   `_component_template`): accepted without effect (`{"acknowledged":true}`), and reported
//!   as present, so setup steps pass; Weir maps documents itself (docs/ingest.md).
//! - `POST`/`PUT` on `/_bulk` and `/{index}/_bulk`: NDJSON action and source lines; `index`
//!   and `create` store the document as a record, `delete` and `update` are refused per item.
//!   The answer is Elasticsearch's: `took`, `errors`, `items` in request order with `_index`,
//!   `_id`, `status`, `result` or `error{type,reason}`. A retried identical bulk (within the
//!   dedup window) is not stored twice: its `create` items answer 409 as Elasticsearch's
//!   would, its `index` items 200 `updated`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use weir_ingest::{BulkAction, BulkItemError, BulkOp};
use weir_proto::v1::AppendRequest;
use weir_proto::ApiError;

use super::ingest::decoded_body;
use crate::auth::Caller;
use crate::protocol::{keyed, request_key, Protocol};
use crate::state::NodeState;

/// The Elasticsearch version Weir answers as: the clients' product check needs 8.x.
pub const ES_VERSION: &str = "8.15.0";

/// The Elasticsearch routes of the ingest side.
pub fn router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/", get(root).head(root_head))
        .route("/_license", get(license))
        .route("/_xpack", get(xpack))
        .route("/_cluster/health", get(health))
        .route("/_bulk", post(bulk_root).put(bulk_root))
        .route("/{index}/_bulk", post(bulk_index).put(bulk_index))
        .route("/_index_template/{name}", any(accepted))
        .route("/_template/{name}", any(accepted))
        .route("/_component_template/{name}", any(accepted))
        .route("/_ilm/policy/{name}", any(accepted))
        .merge(super::es_search::routes())
        .with_state(state)
        .layer(axum::middleware::from_fn(product_header))
}

/// Every answer says it is Elasticsearch, as the clients' product check requires.
async fn product_header(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        "x-elastic-product",
        HeaderValue::from_static("Elasticsearch"),
    );
    response
}

fn root_body(st: &NodeState) -> Value {
    json!({
        "name": format!("weir-{}", st.raft.node_id()),
        "cluster_name": "weir",
        "cluster_uuid": st.cluster_id,
        "version": {
            "number": ES_VERSION,
            "build_flavor": "default",
            "build_type": "weir",
            "build_hash": concat!("weir-", env!("CARGO_PKG_VERSION")),
            "build_date": "2026-01-01T00:00:00.000Z",
            "build_snapshot": false,
            "lucene_version": "9.11.1",
            "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0",
        },
        "tagline": "You Know, for Search",
    })
}

async fn root(State(st): State<Arc<NodeState>>) -> Json<Value> {
    Json(root_body(&st))
}

async fn root_head() -> StatusCode {
    StatusCode::OK
}

async fn license() -> Json<Value> {
    Json(json!({
        "license": {
            "status": "active",
            "uid": "00000000-0000-0000-0000-000000000000",
            "type": "basic",
            "issue_date_in_millis": 0,
            "max_nodes": 1000,
            "issued_to": "weir",
            "issuer": "weir",
            "start_date_in_millis": -1,
        }
    }))
}

async fn xpack() -> Json<Value> {
    Json(json!({
        "build": {},
        "license": {"status": "active", "type": "basic", "mode": "basic"},
        "features": {},
    }))
}

async fn health(State(st): State<Arc<NodeState>>) -> Json<Value> {
    Json(json!({
        "cluster_name": "weir",
        "status": "green",
        "timed_out": false,
        "number_of_nodes": st.config.cluster.voters().len(),
        "number_of_data_nodes": st.config.cluster.voters().len(),
        "active_primary_shards": st.raft.shard_count(),
        "active_shards": st.raft.shard_count(),
        "relocating_shards": 0,
        "initializing_shards": 0,
        "unassigned_shards": 0,
    }))
}

/// Template and ILM calls: accepted without effect (Weir maps documents itself).
async fn accepted(method: axum::http::Method) -> Response {
    if method == axum::http::Method::HEAD {
        return StatusCode::OK.into_response();
    }
    Json(json!({ "acknowledged": true })).into_response()
}

async fn bulk_root(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    bulk(&st, caller.tenant, &headers, body, None).await
}

async fn bulk_index(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    bulk(&st, caller.tenant, &headers, body, Some(&index)).await
}

/// A refusal before the handler (no key, wrong scope) as Elasticsearch answers it with
/// security on: a `security_exception`.
pub(super) fn security_refusal(status: StatusCode, reason: &str) -> Response {
    es_error(status, "security_exception", reason)
}

/// An Elasticsearch error answer: `{"error":{"type","reason"},"status"}`.
fn es_error(status: StatusCode, kind: &str, reason: &str) -> Response {
    es_error_retry(status, kind, reason, 1)
}

/// [`es_error`] whose 429 or 503 says to retry after `secs`.
fn es_error_retry(status: StatusCode, kind: &str, reason: &str, secs: u64) -> Response {
    let mut r = (
        status,
        Json(json!({
            "error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason},
            "status": status.as_u16(),
        })),
    )
        .into_response();
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(secs.max(1)),
        );
    }
    r
}

fn api_error(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match status.as_u16() {
        429 => "es_rejected_execution_exception",
        503 => "unavailable_shards_exception",
        400 => "illegal_argument_exception",
        _ => "exception",
    };
    es_error_retry(status, kind, &e.message, e.retry_after_secs())
}

/// How one bulk item ends, in request order.
enum ItemEnd {
    /// Stored as the append request's record at this position.
    Stored { op: BulkOp, position: u32 },
    /// A document with an `_id`: appended on its own under a key made of its index and
    /// id, so that it is stored once however often it is sent (see [`append_by_id`]).
    ById { op: BulkOp, outcome: ByIdOutcome },
    /// Refused before it reached the append path.
    Refused(BulkItemError),
}

/// What became of a document appended by its `_id`.
enum ByIdOutcome {
    /// Waiting to be appended: the record.
    Pending(Box<weir_proto::v1::Record>),
    /// Stored now.
    Stored,
    /// Stored before (a retry, or another request with the same `_id`).
    AlreadyStored,
    /// Refused by the append path: the reason.
    Refused(String),
    /// Not appended (the node is full or a shard has no leader): retry the item.
    Failed(ApiError),
}

/// `_id` documents appended at once per request.
const BY_ID_CONCURRENCY: usize = 32;

/// Appends each document that carries an `_id` as its own request with the producer key
/// `es_bulk_id/<index>/<id>` (producer keys are per tenant) and sequence 1: the raft
/// layer's idempotency table then stores it once, and answers a later copy as a
/// duplicate, whichever request it comes in, as long as the key is remembered
/// (`storage.dedup_producers_max` producers per shard, least recently used forgotten
/// first). A copy lands on the same shard when its stream fields (service, namespace,
/// pod, cluster) are the same, which is what a retry sends.
async fn append_by_id(st: &NodeState, tenant: &str, ends: &mut [ItemEnd]) {
    use futures_util::stream::{self, StreamExt};
    let pending: Vec<(usize, AppendRequest)> = ends
        .iter_mut()
        .enumerate()
        .filter_map(|(at, end)| match end {
            ItemEnd::ById { op, outcome } => {
                let ByIdOutcome::Pending(record) = std::mem::replace(outcome, ByIdOutcome::Stored)
                else {
                    return None;
                };
                Some((
                    at,
                    AppendRequest {
                        tenant: tenant.to_owned(),
                        records: vec![*record],
                        producer_id: format!(
                            "es_bulk_id/{}/{}",
                            op.index,
                            op.id.as_deref().unwrap_or_default()
                        ),
                        sequence: 1,
                    },
                ))
            }
            _ => None,
        })
        .collect();
    let results: Vec<(usize, ByIdOutcome)> = stream::iter(pending)
        .map(|(at, req)| async move {
            let outcome = match st.appender.append_via(Protocol::EsBulk, req).await {
                Ok(resp) if !resp.rejected.is_empty() => {
                    ByIdOutcome::Refused(resp.rejected[0].reason.clone())
                }
                Ok(resp) if resp.duplicate => ByIdOutcome::AlreadyStored,
                Ok(_) => ByIdOutcome::Stored,
                Err(e) => ByIdOutcome::Failed(e),
            };
            (at, outcome)
        })
        .buffer_unordered(BY_ID_CONCURRENCY)
        .collect()
        .await;
    for (at, done) in results {
        if let ItemEnd::ById { outcome, .. } = &mut ends[at] {
            *outcome = done;
        }
    }
}

async fn bulk(
    st: &NodeState,
    tenant: String,
    headers: &HeaderMap,
    body: Bytes,
    path_index: Option<&str>,
) -> Response {
    let started = std::time::Instant::now();
    let body = match decoded_body(headers, body, &st.config) {
        Ok(b) => b,
        Err(e) => return api_error(&e.0),
    };
    let parsed = match weir_ingest::parse_bulk(&body, path_index) {
        Ok(p) => p,
        Err(e) => return es_error(StatusCode::BAD_REQUEST, "parse_exception", &e.to_string()),
    };
    let mut append = AppendRequest {
        tenant: tenant.clone(),
        ..Default::default()
    };
    let mut ends = Vec::with_capacity(parsed.len());
    let mut timestamped = true;
    for item in parsed {
        let mut op = match item {
            Ok(op) => op,
            Err(e) => {
                ends.push(ItemEnd::Refused(e));
                continue;
            }
        };
        match to_record(&mut op) {
            Ok(record) if op.id.is_some() => ends.push(ItemEnd::ById {
                op,
                outcome: ByIdOutcome::Pending(Box::new(record)),
            }),
            Ok(record) => {
                timestamped &= record.timestamp_ns != 0;
                ends.push(ItemEnd::Stored {
                    position: append.records.len() as u32,
                    op,
                });
                append.records.push(record);
            }
            Err(e) => ends.push(ItemEnd::Refused(e)),
        }
    }
    let (mut rejected, mut duplicate) = (Vec::new(), false);
    if !append.records.is_empty() {
        keyed(
            &mut append,
            request_key(Protocol::EsBulk, &body, timestamped),
        );
        match st.appender.append_via(Protocol::EsBulk, append).await {
            Ok(resp) => {
                rejected = resp.rejected;
                duplicate = resp.duplicate;
            }
            Err(e) => return api_error(&e),
        }
    }
    append_by_id(st, &tenant, &mut ends).await;
    let items: Vec<BulkItemAnswer> = ends
        .into_iter()
        .map(|end| item_answer(end, &rejected, duplicate))
        .collect();
    let answer = BulkAnswer {
        took: started.elapsed().as_millis() as u64,
        errors: items.iter().any(|i| i.outcome.error.is_some()),
        items,
    };
    // Serialized straight from the typed answer: building a `Value` tree per item cost
    // more than parsing the request.
    match serde_json::to_vec(&answer) {
        Ok(body) => ([("content-type", "application/json")], body).into_response(),
        Err(e) => es_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            &e.to_string(),
        ),
    }
}

/// `_bulk`'s answer.
#[derive(serde::Serialize)]
struct BulkAnswer {
    took: u64,
    errors: bool,
    items: Vec<BulkItemAnswer>,
}

/// One item: `{"<action>": {...}}`.
struct BulkItemAnswer {
    action: &'static str,
    outcome: ItemOutcome,
}

impl serde::Serialize for BulkItemAnswer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(self.action, &self.outcome)?;
        m.end()
    }
}

#[derive(serde::Serialize)]
struct ItemOutcome {
    _index: String,
    _id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    _version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    _shards: Option<Shards>,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ItemError>,
}

#[derive(serde::Serialize)]
struct Shards {
    total: u8,
    successful: u8,
    failed: u8,
}

#[derive(serde::Serialize)]
struct ItemError {
    #[serde(rename = "type")]
    kind: &'static str,
    reason: String,
}

fn refused(index: String, id: Option<String>, kind: &'static str, reason: String) -> ItemOutcome {
    ItemOutcome {
        _index: index,
        _id: id,
        _version: None,
        result: None,
        _shards: None,
        status: 400,
        error: Some(ItemError { kind, reason }),
    }
}

/// The record an `index` or `create` item stores; `delete` and `update` are refused.
fn to_record(op: &mut BulkOp) -> Result<weir_proto::v1::Record, BulkItemError> {
    let source = op.source.take();
    let refuse = |error_type: &'static str, reason: String| BulkItemError {
        action: action_name(op.action).to_owned(),
        index: op.index.clone(),
        id: op.id.clone(),
        error_type,
        reason,
    };
    match op.action {
        BulkAction::Delete | BulkAction::Update => Err(refuse(
            "illegal_argument_exception",
            format!(
                "{} is not supported: Weir stores log records, which are not changed or removed one by one (retention drops them)",
                action_name(op.action)
            ),
        )),
        BulkAction::Index | BulkAction::Create => {
            let Some(source) = source else {
                return Err(refuse(
                    "action_request_validation_exception",
                    "the action has no source line".to_owned(),
                ));
            };
            weir_ingest::es_doc_to_record(source, &op.index, op.id.as_deref())
                .map_err(|reason| refuse("document_parsing_exception", reason))
        }
    }
}

fn action_name(a: BulkAction) -> &'static str {
    match a {
        BulkAction::Index => "index",
        BulkAction::Create => "create",
        BulkAction::Delete => "delete",
        BulkAction::Update => "update",
    }
}

/// One item of the answer, under its action.
fn item_answer(
    end: ItemEnd,
    rejected: &[weir_proto::v1::RecordError],
    duplicate: bool,
) -> BulkItemAnswer {
    match end {
        ItemEnd::Refused(e) => BulkItemAnswer {
            action: match e.action.as_str() {
                "index" => "index",
                "create" => "create",
                "delete" => "delete",
                "update" => "update",
                _ => "index",
            },
            outcome: refused(e.index, e.id, e.error_type, e.reason),
        },
        ItemEnd::Stored { op, position } => {
            let action = action_name(op.action);
            let id = op.id.clone().unwrap_or_else(|| generated_id(&op, position));
            if let Some(r) = rejected.iter().find(|r| r.index == position) {
                return BulkItemAnswer {
                    action,
                    outcome: refused(
                        op.index,
                        Some(id),
                        "document_parsing_exception",
                        r.reason.clone(),
                    ),
                };
            }
            stored_answer(op, id, duplicate)
        }
        ItemEnd::ById { op, outcome } => {
            let action = action_name(op.action);
            let id = op.id.clone().unwrap_or_default();
            match outcome {
                ByIdOutcome::Stored | ByIdOutcome::Pending(_) => stored_answer(op, id, false),
                ByIdOutcome::AlreadyStored => stored_answer(op, id, true),
                ByIdOutcome::Refused(reason) => BulkItemAnswer {
                    action,
                    outcome: refused(op.index, Some(id), "document_parsing_exception", reason),
                },
                ByIdOutcome::Failed(e) => {
                    let status = e.http_status();
                    let kind = match status {
                        429 => "es_rejected_execution_exception",
                        503 => "unavailable_shards_exception",
                        _ => "exception",
                    };
                    let mut outcome = refused(op.index, Some(id), kind, e.message);
                    outcome.status = status;
                    BulkItemAnswer { action, outcome }
                }
            }
        }
    }
}

/// The answer for a stored item: 201 `created`; for a copy of one stored before, 409
/// `version_conflict_engine_exception` to a `create` (as Elasticsearch answers) and 200
/// `updated` to an `index` (Weir keeps the first version: records are not replaced).
fn stored_answer(op: BulkOp, id: String, duplicate: bool) -> BulkItemAnswer {
    let (status, result, error) = match (duplicate, op.action) {
        (true, BulkAction::Create) => (
            409,
            None,
            Some(ItemError {
                kind: "version_conflict_engine_exception",
                reason: format!(
                    "[{id}]: version conflict, document already exists (Weir had stored it)"
                ),
            }),
        ),
        (true, _) => (200, Some("updated"), None),
        (false, _) => (201, Some("created"), None),
    };
    BulkItemAnswer {
        action: action_name(op.action),
        outcome: ItemOutcome {
            _index: op.index,
            _id: Some(id),
            _version: Some(1),
            result,
            _shards: Some(Shards {
                total: 1,
                successful: 1,
                failed: 0,
            }),
            status,
            error,
        },
    }
}

/// An id for a document sent without one (Elasticsearch makes up a random one).
fn generated_id(op: &BulkOp, position: u32) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let now = weir_proto::now_ns();
    for b in op
        .index
        .bytes()
        .chain(position.to_le_bytes())
        .chain(now.to_le_bytes())
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("w{h:016x}")
}
