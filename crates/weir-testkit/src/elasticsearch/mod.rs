//! A fake Elasticsearch 8.x node for the bulk API: [`FakeElasticsearch`].
//!
//! # What is reproduced
//!
//! - Every response has `X-Elastic-Product: Elasticsearch`; `GET /` answers version
//!   `8.15.0` (what the official clients check before talking to a node).
//! - Authentication when configured ([`EsOptions::basic_auth`], [`EsOptions::api_key`]):
//!   a missing or wrong `Authorization` header gets 401 `security_exception`, the two
//!   `WWW-Authenticate` headers (`Basic realm="security", charset="UTF-8"` and `ApiKey`)
//!   and Elasticsearch's reasons (`missing authentication credentials for REST request
//!   [..]`, `unable to authenticate user [..] for REST request [..]`).
//! - Request bodies: a body without `Content-Type` gets 406 `Content-Type header is
//!   missing`; anything but `application/json`, `application/x-ndjson` or their
//!   `application/vnd.elasticsearch+…; compatible-with=7|8` forms gets 406 `Content-Type
//!   header [..] is not supported` (`{"error":..,"status":406}`). Bodies over 100 MiB
//!   (`http.max_content_length`) get 413.
//! - `POST|PUT /_bulk` and `/{index}/_bulk`, parsed like `BulkRequestParser`: an empty body
//!   is 400 `parse_exception` `request body is required`; a body that does not end with
//!   `\n` is 400 `The bulk request must be terminated by a newline [\n]`; blank action lines
//!   are skipped; action lines must be an object with exactly one of `index`, `create`,
//!   `update`, `delete` (`Malformed action/metadata line [N], expected field [create],
//!   [delete], [index] or [update] but found [x]`), whose metadata may only hold the 8.x
//!   parameters (`Action/metadata line [N] contains an unknown parameter [_type]`); line
//!   numbers are 1-based physical lines; unparseable action JSON is 400
//!   `x_content_parse_exception`; a trailing action without its source line is dropped.
//!   Then `BulkRequest.validate()`: `Validation Failed: 1: index is missing;2: source is
//!   missing;…` (also `id is missing`, versioning and `if_seq_no` rules, id > 512 bytes).
//!   Unknown query parameters are 400 `request [/_bulk] contains unrecognized parameter: [x]`.
//! - Items, in request order, status 200 overall with `errors`: `create` of an existing id is
//!   409 `version_conflict_engine_exception` `[id]: version conflict, document already exists
//!   (current version [v])`; new documents 201 `created`; `index` over an existing id 200
//!   `updated` with version + 1; `delete` 200 `deleted` / 404 `not_found` (both take a
//!   sequence number, tombstones keep versions); missing `_id` gets a random 20-character
//!   id; `if_seq_no`/`if_primary_term` and `version_type: external|external_gte` conflicts
//!   are 409 with Elasticsearch's reasons; `update` with `doc`, `upsert`, `doc_as_upsert`
//!   and `detect_noop` (result `noop`); invalid index names are 400
//!   `invalid_index_name_exception` with Elasticsearch's reason for each rule
//!   (`Invalid index name [X], must be lowercase`, …); a `pipeline` other than `_none` is
//!   400 `pipeline with id [x] does not exist` (there are no pipelines); `require_alias` is
//!   404 (there are no aliases); deleting from a missing index is 404
//!   `index_not_found_exception`. Item bodies carry `_index`, `_id`, `_version`, `result`,
//!   `_shards {total:2,successful:1,failed:0}`, `_seq_no`, `_primary_term`, `status`, or
//!   `_index`, `_id`, `status`, `error` (with `index_uuid`, `shard`, `index` where
//!   Elasticsearch has them).
//! - Concurrent bulk requests are parsed in parallel and applied item by item, interleaved,
//!   as Elasticsearch's write threads apply them; the store is held for one item at a time.
//! - Document checks (per item, 400): the source must be one JSON object (strict duplicate
//!   key detection, as Elasticsearch's parser); metadata fields (`_id`, …) are refused;
//!   dynamic mapping as in 8.x: strings become `text` + `keyword` (`ignore_above: 256`) or
//!   `date` when date detection (on by default, only for strings with more than one `-`, `:`
//!   or `/`) parses them as `strict_date_optional_time` (or `yyyy/MM/dd`), integers `long`,
//!   decimals `float`, booleans `boolean`, objects `object`, dotted names expand into
//!   objects; later conflicts give `document_parsing_exception` with Elasticsearch's
//!   reasons and `[line:col]` prefix: `failed to parse field [f] of type [t] in document with
//!   id 'X'. Preview of field's value: '…'`, `Could not dynamically add mapping for field
//!   [a.b]. Existing mapping for [a] must be of type object but found [text].`, `object
//!   mapping for [a] tried to parse field [a] as object, but found a concrete value`; numeric
//!   coercion ("5" and 5.7 go into a `long`), ranges of integer types, `boolean` strings,
//!   `ip`, `constant_keyword`, `date` formats (named ones and simple Java patterns),
//!   `ignore_malformed`, `dynamic: false|strict` (`strict_dynamic_mapping_exception`),
//!   `date_detection`, `numeric_detection`, `dynamic_templates` (`match_mapping_type`,
//!   `match`, `unmatch`, `path_match`, `path_unmatch`, `{name}`, `{dynamic_type}`),
//!   multi-fields, and `index.mapping.total_fields.limit` (default 1000,
//!   [`EsOptions::total_fields_limit`]) with `ignore_dynamic_beyond_limit`. A refused
//!   document leaves no mapping change behind.
//! - Composable index templates: `PUT|POST|GET|HEAD|DELETE /_index_template/{name}`,
//!   `GET /_index_template`; the highest-priority template whose `index_patterns` (`*` globs)
//!   match a new index supplies its mappings and settings; two templates with the same
//!   priority and overlapping patterns are refused as Elasticsearch does. Templates with
//!   `data_stream` create data streams: backing index `.ds-<name>-<yyyy.MM.dd>-000001` (the
//!   `_index` of items), only `create` is allowed (`only write ops with an op_type of create
//!   are allowed in data streams`), `@timestamp` is required. Like a real 8.x node the fake
//!   starts with Elasticsearch's built-in `logs` template (`logs-*-*`, priority 100) unless
//!   [`EsOptions::builtin_logs_template`] is false.
//! - Also `PUT|HEAD|GET|DELETE /{index}`, `GET /{index}/_mapping`, `GET|POST
//!   /{index}/_count` (`{"count":N,..}`), `GET /{index}/_doc/{id}`, `POST /{index}/_refresh`,
//!   `GET /_cluster/health`, `filter_path` on JSON answers, and Elasticsearch's 400 `no
//!   handler found for uri [..] and method [..]` / 405 `Incorrect HTTP method`.
//!
//! # What is not
//!
//! - One node, one shard, no replicas: `_shards` is always `{2,1,0}`, `_primary_term` 1,
//!   nothing is ever "unassigned", and every write is visible at once (refresh is a no-op).
//!   There is no search beyond `_count` and `_doc`.
//! - Scripts (`update` with `script` is a per-item 400 saying so), ingest pipelines,
//!   aliases, component templates (a template `composed_of` anything is refused), legacy
//!   `_template`, runtime fields, `nested` (treated as `object`), routing, TSDB/LogsDB modes.
//! - Error reasons are Elasticsearch's wording for the cases above; JSON syntax error texts
//!   approximate Jackson's (`Unexpected character ('x' (code 120)): …`, without the `at
//!   [Source: …]` suffix), and `[line:col]` positions are those of the offending value.
//!   `caused_by` is given for a few cases only. Keys of `invalid_index_name_exception`'s
//!   character list are in Elasticsearch 7's order (8.x prints an unordered set).
//! - Compressed request bodies (`Content-Encoding: gzip|deflate`, which Elasticsearch
//!   accepts) are answered 415 by the fake; SMILE/CBOR bodies are refused with 406 (real 8.x
//!   accepts SMILE for bulk).
//! - Tombstones of deleted documents are kept for ever (Elasticsearch: `gc_deletes`, 60 s).
//! - The built-in `logs` template is reduced to what changes indexing (data stream,
//!   `@timestamp`, `data_stream.*` `constant_keyword`s, strings as `keyword` with
//!   `ignore_above: 1024`, `message` as `match_only_text`, no date detection,
//!   `ignore_malformed`, `ignore_dynamic_beyond_limit`); the real one composes several
//!   component templates with many more ECS dynamic templates.
//!
//! # Faults
//!
//! [`FakeElasticsearch::fail_requests`] answers whole bulk requests with a status (429 and
//! 503 get the bodies a real node sends: `es_rejected_execution_exception`,
//! `cluster_block_exception`) and an optional `Retry-After`; [`FakeElasticsearch::fail_items`]
//! injects per-item statuses; [`FakeElasticsearch::set_latency`] delays every request;
//! [`FakeElasticsearch::set_down`] resets every connection (some clients, curl for one,
//! report a reset right after connecting as a failed connect). The admin API under
//! `/_testkit/` (see the crate docs) does the same from another process.

mod bulk;
mod date;
mod mapping;
mod out;
mod store;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use axum::Router;
use http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use self::bulk::{BulkParams, ItemFaultFn};
use self::out::{obj, EsError, Out};
use self::store::Store;
use crate::http::{self as h, DownBody, FailBody, LatencyBody};
use crate::server::{self, lock, Conn, Faults, Server};
use crate::Result;

/// Largest request body accepted (Elasticsearch's default `http.max_content_length`).
const MAX_CONTENT_LENGTH: usize = 100 * 1024 * 1024;

/// Query parameters `_bulk` accepts; others are refused as by Elasticsearch.
const BULK_PARAMS: &[&str] = &[
    "refresh",
    "pipeline",
    "routing",
    "timeout",
    "wait_for_active_shards",
    "_source",
    "_source_includes",
    "_source_excludes",
    "require_alias",
    "require_data_stream",
    "list_executed_pipelines",
    "include_source_on_error",
    "error_trace",
    "filter_path",
    "human",
    "pretty",
    "format",
];

/// How to start a [`FakeElasticsearch`].
#[derive(Clone, Debug)]
pub struct EsOptions {
    /// Require HTTP basic authentication with this user and password.
    pub basic_auth: Option<(String, String)>,
    /// Require (or also accept) `Authorization: ApiKey <this value>`, the value being the
    /// base64 `id:key` Elasticsearch hands out as `encoded`.
    pub api_key: Option<String>,
    /// Address to listen on; port 0 picks a free one. Default `127.0.0.1:0`.
    pub listen_addr: SocketAddr,
    /// `index.mapping.total_fields.limit` of new indices. Default 1000.
    pub total_fields_limit: usize,
    /// Install Elasticsearch's built-in `logs` index template (`logs-*-*` become data
    /// streams) as a real 8.x node has. Default true.
    pub builtin_logs_template: bool,
    /// Keep each document's source. Default true. Without it every request is parsed,
    /// mapped and answered exactly the same, and ids, versions and counts are kept, but
    /// [`FakeElasticsearch::docs`] shows `null` sources and an update starts from an
    /// empty document (so a no-op update answers `updated`, not `noop`): for long
    /// benchmarks of `create`/`index`, where millions of sources would fill the machine's
    /// memory.
    pub keep_sources: bool,
}

impl Default for EsOptions {
    fn default() -> Self {
        Self {
            basic_auth: None,
            api_key: None,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            total_fields_limit: 1000,
            builtin_logs_template: true,
            keep_sources: true,
        }
    }
}

/// A stored document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EsDoc {
    /// The concrete index (for a data stream: its backing index, as in bulk responses).
    pub index: String,
    /// The document id.
    pub id: String,
    /// The source as sent.
    pub source: Value,
    /// The document's version.
    pub version: u64,
}

/// An injected per-item failure (see [`FakeElasticsearch::fail_items`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemFault {
    /// The item's status.
    pub status: u16,
    /// The error `type`.
    pub error_type: String,
    /// The error `reason`.
    pub reason: String,
}

impl ItemFault {
    /// Any status, type and reason.
    pub fn new(status: u16, error_type: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            status,
            error_type: error_type.into(),
            reason: reason.into(),
        }
    }

    /// 429 `es_rejected_execution_exception`, what a node under indexing pressure answers
    /// per item; clients retry these items.
    pub fn rejected() -> Self {
        Self::new(
            429,
            "es_rejected_execution_exception",
            "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, all_bytes=0, coordinating_operation_bytes=1024, max_coordinating_and_primary_bytes=0]",
        )
    }

    /// 400 `document_parsing_exception` with `reason`: a document the mapping refuses;
    /// clients dead-letter these items.
    pub fn mapper_parsing(reason: impl Into<String>) -> Self {
        Self::new(400, "document_parsing_exception", reason)
    }
}

struct EsApp {
    store: Mutex<Store>,
    faults: Arc<Faults>,
    item_faults: Mutex<Option<ItemFaultFn>>,
    bulk_requests: AtomicU64,
    opts: EsOptions,
}

/// A running fake Elasticsearch node. Dropping it (or [`FakeElasticsearch::shutdown`])
/// stops it.
///
/// ```no_run
/// # async fn demo() -> weir_testkit::Result<()> {
/// use weir_testkit::elasticsearch::{FakeElasticsearch, ItemFault};
///
/// let es = FakeElasticsearch::start().await?;
/// // Point the client at es.url(); make every item about "poison" fail with a 429:
/// es.fail_items(|source| (source["message"] == "poison").then(ItemFault::rejected));
/// // ... run the code under test, then:
/// assert_eq!(es.doc_count(), 0);
/// # Ok(()) }
/// ```
pub struct FakeElasticsearch {
    app: Arc<EsApp>,
    server: Server,
}

impl FakeElasticsearch {
    /// Starts a node with default options on `127.0.0.1` and a free port.
    ///
    /// # Errors
    ///
    /// If the address cannot be bound.
    pub async fn start() -> Result<Self> {
        Self::start_with(EsOptions::default()).await
    }

    /// Starts a node with `opts` on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// If `opts.listen_addr` cannot be bound.
    pub async fn start_with(opts: EsOptions) -> Result<Self> {
        let faults = server::new_faults();
        let app = Arc::new(EsApp {
            store: Mutex::new({
                let mut store = Store::new(opts.total_fields_limit, opts.builtin_logs_template);
                store.keep_sources = opts.keep_sources;
                store
            }),
            faults: Arc::clone(&faults),
            item_faults: Mutex::new(None),
            bulk_requests: AtomicU64::new(0),
            opts: opts.clone(),
        });
        let router = Router::new().fallback(handle).with_state(Arc::clone(&app));
        let server = Server::start(opts.listen_addr, router, faults).await?;
        tracing::info!(addr = %server.addr(), "fake elasticsearch listening");
        Ok(Self { app, server })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// All documents, in the order they were first written.
    pub fn docs(&self) -> Vec<EsDoc> {
        Self::docs_of(&self.app)
    }

    /// The documents of one index or data stream, in the order they were first written.
    pub fn docs_in(&self, index_or_data_stream: &str) -> Vec<EsDoc> {
        let concrete = lock(&self.app.store)
            .resolve(index_or_data_stream)
            .map(|t| t.index);
        self.docs()
            .into_iter()
            .filter(|d| Some(&d.index) == concrete.as_ref())
            .collect()
    }

    /// Number of documents in all indices.
    pub fn doc_count(&self) -> usize {
        lock(&self.app.store)
            .indices
            .values()
            .map(|i| i.docs.len())
            .sum()
    }

    /// Bulk requests received, including refused and failed ones.
    pub fn bulk_requests(&self) -> u64 {
        self.app.bulk_requests.load(Ordering::SeqCst)
    }

    /// The most `_bulk` requests that were ever being answered at once.
    pub fn peak_concurrent_bulks(&self) -> u64 {
        self.app.faults.peak_in_flight()
    }

    /// Index templates put by clients, with their bodies (the built-in one left out).
    pub fn templates(&self) -> Vec<(String, Value)> {
        lock(&self.app.store)
            .templates
            .iter()
            .filter(|(_, t)| !t.builtin)
            .map(|(n, t)| (n.clone(), t.body.clone()))
            .collect()
    }

    /// The mapping of an index or data stream as `GET /{index}/_mapping` shows it (the
    /// value of `mappings`), if it exists.
    pub fn mapping(&self, index_or_data_stream: &str) -> Option<Value> {
        let store = lock(&self.app.store);
        let target = store.resolve(index_or_data_stream)?;
        store
            .indices
            .get(&target.index)
            .map(|i| i.mapping.to_json())
    }

    /// Answers the next `n` bulk requests whole with `status` (an Elasticsearch-shaped
    /// error body) and `Retry-After: retry_after_secs` if given. `n == 0` clears.
    pub fn fail_requests(&self, n: usize, status: u16, retry_after_secs: Option<u64>) {
        self.app.faults.fail_requests(n, status, retry_after_secs);
    }

    /// While `down`, accepts TCP connections and resets them at once, and resets the
    /// connections already open.
    pub fn set_down(&self, down: bool) {
        self.app.faults.set_down(down);
    }

    /// Delays every answer by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.app.faults.set_latency(latency);
    }

    /// From now on, asks `f` about every bulk item (with its source, `null` for deletes
    /// and unparseable sources); `Some(fault)` fails the item with it, `None` lets it
    /// through to the normal checks.
    pub fn fail_items(&self, f: impl Fn(&Value) -> Option<ItemFault> + Send + Sync + 'static) {
        *lock(&self.app.item_faults) = Some(Arc::new(f));
    }

    /// Stops injecting item faults.
    pub fn clear_item_faults(&self) {
        *lock(&self.app.item_faults) = None;
    }

    /// Clears every injected fault: request failures, item faults, latency, down.
    pub fn clear_faults(&self) {
        self.fail_requests(0, 0, None);
        self.clear_item_faults();
        self.set_latency(Duration::ZERO);
        self.set_down(false);
    }

    /// Stops the node and waits until it no longer listens.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

async fn handle(
    State(app): State<Arc<EsApp>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let segs = h::path_segments(parts.uri.path());
    if segs.first().map(String::as_str) == Some("_testkit") {
        return admin(&app, &conn, &parts.method, &segs[1..], body).await;
    }
    let mut resp = app
        .serve(&parts.method, &parts.uri, &parts.headers, &segs, body)
        .await;
    h::add_header(&mut resp, "X-Elastic-Product", "Elasticsearch");
    resp
}

fn es_response(result: std::result::Result<Out, EsError>, query: &[(String, String)]) -> Response {
    match result {
        Ok(out) => json_filtered(200, out, query),
        Err(e) => es_error_response(&e, query),
    }
}

fn es_error_response(e: &EsError, query: &[(String, String)]) -> Response {
    let mut resp = json_filtered(e.status, e.body(), query);
    for (k, v) in &e.headers {
        h::add_header(&mut resp, k, v);
    }
    resp
}

fn json_filtered(status: u16, out: Out, query: &[(String, String)]) -> Response {
    match query.iter().find(|(k, _)| k == "filter_path") {
        Some((_, filter)) => {
            let filters: Vec<Vec<String>> = filter
                .split(',')
                .filter(|f| !f.is_empty())
                .map(|f| f.split('.').map(String::from).collect())
                .collect();
            let value = filter_path(&out.to_value(), &filters).unwrap_or_else(|| json!({}));
            h::json(status, &value)
        }
        None => h::json(status, &out),
    }
}

/// Elasticsearch's `filter_path`: keeps the parts of `v` some filter selects (`*` within a
/// name, `**` for any depth).
fn filter_path(v: &Value, filters: &[Vec<String>]) -> Option<Value> {
    if filters.iter().any(Vec::is_empty) {
        return Some(v.clone());
    }
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, child) in m {
                let mut next: Vec<Vec<String>> = Vec::new();
                for f in filters {
                    if f[0] == "**" {
                        next.push(f.clone());
                        if f.len() > 1 && mapping::glob_match(&f[1], k) {
                            next.push(f[2..].to_vec());
                        }
                    } else if mapping::glob_match(&f[0], k) {
                        next.push(f[1..].to_vec());
                    }
                }
                if next.is_empty() {
                    continue;
                }
                if let Some(c) = filter_path(child, &next) {
                    out.insert(k.clone(), c);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(items) => {
            let kept: Vec<Value> = items
                .iter()
                .filter_map(|i| filter_path(i, filters))
                .collect();
            (!kept.is_empty()).then_some(Value::Array(kept))
        }
        _ => None,
    }
}

fn simple_error(status: u16, message: &str) -> Response {
    h::json(status, &json!({"error": message, "status": status}))
}

fn method_not_allowed(uri: &http::Uri, method: &Method, allowed: &str) -> Response {
    simple_error(
        405,
        &format!(
            "Incorrect HTTP method for uri [{uri}] and method [{method}], allowed: [{allowed}]"
        ),
    )
}

impl EsApp {
    async fn serve(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        segs: &[String],
        body: Body,
    ) -> Response {
        let seg: Vec<&str> = segs.iter().map(String::as_str).collect();
        let is_bulk = matches!(seg.as_slice(), ["_bulk"] | [_, "_bulk"])
            && (method == Method::POST || method == Method::PUT);
        let _in_flight = is_bulk.then(|| {
            self.bulk_requests.fetch_add(1, Ordering::SeqCst);
            self.faults.enter()
        });
        self.faults.delay().await;
        let query = h::query_pairs(uri.query());
        if let Err(e) = self.authenticate(uri, headers) {
            return es_error_response(&e, &query);
        }
        let body = match to_bytes(body, MAX_CONTENT_LENGTH).await {
            Ok(b) => b,
            Err(_) => return h::empty(413),
        };
        if is_bulk {
            if let Some(plan) = self.faults.take_failure() {
                return injected_failure(plan.status, plan.retry_after_secs);
            }
        }
        let encoding = headers
            .get(http::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity") {
            return simple_error(
                415,
                &format!("weir-testkit: Content-Encoding [{encoding}] is not supported (Elasticsearch accepts gzip and deflate; the fake does not decompress)"),
            );
        }
        if !body.is_empty() {
            if let Some(resp) = content_type_error(headers) {
                return resp;
            }
        }
        let get_or_head = method == Method::GET || method == Method::HEAD;
        match seg.as_slice() {
            [] if get_or_head => h::json(200, &root_info()),
            [] => method_not_allowed(uri, method, "HEAD, GET"),
            ["_bulk"] | [_, "_bulk"] if is_bulk => {
                let index = (seg.len() == 2).then(|| segs[0].clone());
                self.bulk(uri, index, &query, &body)
            }
            ["_bulk"] | [_, "_bulk"] => method_not_allowed(uri, method, "POST, PUT"),
            ["_index_template"] if get_or_head => es_response(
                Ok(lock(&self.store)
                    .get_templates(None)
                    .unwrap_or(Out::A(Vec::new()))),
                &query,
            ),
            ["_index_template", name] => self.template(method, uri, name, &body, &query),
            ["_cluster", "health"] if get_or_head => {
                let shards = lock(&self.store).indices.len();
                h::json(
                    200,
                    &json!({"cluster_name": "testkit", "status": "green", "timed_out": false,
                        "number_of_nodes": 1, "number_of_data_nodes": 1,
                        "active_primary_shards": shards, "active_shards": shards,
                        "relocating_shards": 0, "initializing_shards": 0, "unassigned_shards": 0,
                        "delayed_unassigned_shards": 0, "number_of_pending_tasks": 0,
                        "number_of_in_flight_fetch": 0, "task_max_waiting_in_queue_millis": 0,
                        "active_shards_percent_as_number": 100.0}),
                )
            }
            ["_refresh"] => es_response(Ok(shards_ok(2, 1)), &query),
            [name, "_refresh"] => es_response(self.concrete(name).map(|_| shards_ok(2, 1)), &query),
            [name, "_count"] if get_or_head || method == Method::POST => {
                es_response(self.count(name), &query)
            }
            [name, "_mapping"] if get_or_head => es_response(self.get_mapping(name), &query),
            [name, "_doc", id] if get_or_head => self.get_doc(name, id, &query),
            [name] if !name.starts_with('_') => self.index_admin(method, name, &body, &query),
            _ => simple_error(
                400,
                &format!("no handler found for uri [{uri}] and method [{method}]"),
            ),
        }
    }

    fn authenticate(
        &self,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> std::result::Result<(), EsError> {
        if self.opts.basic_auth.is_none() && self.opts.api_key.is_none() {
            return Ok(());
        }
        let auth = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        let reason = match auth {
            Some(a) if a.len() > 6 && a[..6].eq_ignore_ascii_case("basic ") => {
                let decoded = crate::util::base64_decode(a[6..].trim())
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default();
                let (user, pass) = decoded.split_once(':').unwrap_or((&decoded, ""));
                if self
                    .opts
                    .basic_auth
                    .as_ref()
                    .is_some_and(|(u, p)| u == user && p == pass)
                {
                    return Ok(());
                }
                format!("unable to authenticate user [{user}] for REST request [{uri}]")
            }
            Some(a) if a.len() > 7 && a[..7].eq_ignore_ascii_case("apikey ") => {
                if self.opts.api_key.as_deref() == Some(a[7..].trim()) {
                    return Ok(());
                }
                "unable to authenticate with provided credentials and anonymous access is not allowed for this request".to_string()
            }
            _ => format!("missing authentication credentials for REST request [{uri}]"),
        };
        let challenge = [r#"Basic realm="security", charset="UTF-8""#, "ApiKey"];
        let mut e = EsError::new(401, "security_exception", reason).with(
            "header",
            obj([(
                "WWW-Authenticate",
                Out::A(challenge.iter().map(|c| Out::from(*c)).collect()),
            )]),
        );
        e.headers = challenge
            .iter()
            .map(|c| ("WWW-Authenticate", (*c).to_string()))
            .collect();
        Err(e)
    }

    fn bulk(
        &self,
        uri: &http::Uri,
        index: Option<String>,
        query: &[(String, String)],
        body: &[u8],
    ) -> Response {
        let started = Instant::now();
        let unknown: Vec<&str> = query
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !BULK_PARAMS.contains(k))
            .collect();
        if !unknown.is_empty() {
            let list = unknown
                .iter()
                .map(|k| format!("[{k}]"))
                .collect::<Vec<_>>()
                .join(", ");
            let plural = if unknown.len() > 1 { "s" } else { "" };
            return es_error_response(
                &EsError::illegal_argument(format!(
                    "request [{}] contains unrecognized parameter{plural}: {list}",
                    uri.path()
                )),
                query,
            );
        }
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        if let Some(r) = param("refresh") {
            if !matches!(r.as_str(), "" | "true" | "false" | "wait_for") {
                return es_error_response(
                    &EsError::illegal_argument(format!("Unknown value for refresh: [{r}].")),
                    query,
                );
            }
        }
        if body.is_empty() {
            return es_error_response(
                &EsError::new(400, "parse_exception", "request body is required"),
                query,
            );
        }
        let params = BulkParams {
            index,
            pipeline: param("pipeline"),
            require_alias: param("require_alias").is_some_and(|v| v.is_empty() || v == "true"),
        };
        let prepared = match bulk::prepare(body, &params) {
            Ok(p) => p,
            Err(e) => return es_error_response(&e, query),
        };
        let item_faults = lock(&self.item_faults).clone();
        let result = bulk::execute(&self.store, prepared, &params, item_faults, started);
        json_filtered(200, result.body, query)
    }

    fn template(
        &self,
        method: &Method,
        uri: &http::Uri,
        name: &str,
        body: &[u8],
        query: &[(String, String)],
    ) -> Response {
        let not_found = |reason: String| EsError::new(404, "resource_not_found_exception", reason);
        match *method {
            Method::PUT | Method::POST => {
                if body.is_empty() {
                    return es_error_response(
                        &EsError::new(400, "parse_exception", "request body is required"),
                        query,
                    );
                }
                let value = match parse_body_json(body) {
                    Ok(v) => v,
                    Err(e) => return es_error_response(&e, query),
                };
                let result = lock(&self.store).put_template(name, &value);
                es_response(result.map(|()| obj([("acknowledged", true.into())])), query)
            }
            Method::GET => {
                let found = lock(&self.store).get_templates(Some(name));
                es_response(
                    found.ok_or_else(|| {
                        not_found(format!("index template matching [{name}] not found"))
                    }),
                    query,
                )
            }
            Method::HEAD => {
                let exists = lock(&self.store).templates.contains_key(name);
                h::empty(if exists { 200 } else { 404 })
            }
            Method::DELETE => {
                let removed = lock(&self.store).templates.remove(name).is_some();
                es_response(
                    if removed {
                        Ok(obj([("acknowledged", true.into())]))
                    } else {
                        Err(not_found(format!("index_template [{name}] missing")))
                    },
                    query,
                )
            }
            _ => method_not_allowed(uri, method, "GET, HEAD, PUT, POST, DELETE"),
        }
    }

    /// Concrete indices for a name, data stream or `*` pattern.
    fn concrete(&self, name: &str) -> std::result::Result<Vec<String>, EsError> {
        let store = lock(&self.store);
        if name.contains('*') || name == "_all" {
            let pattern = if name == "_all" { "*" } else { name };
            let mut out: Vec<String> = store
                .data_streams
                .iter()
                .filter(|(ds, _)| mapping::glob_match(pattern, ds))
                .map(|(_, backing)| backing.clone())
                .collect();
            out.extend(
                store
                    .indices
                    .iter()
                    .filter(|(n, i)| i.data_stream.is_none() && mapping::glob_match(pattern, n))
                    .map(|(n, _)| n.clone()),
            );
            return Ok(out);
        }
        let mut out = Vec::new();
        for part in name.split(',') {
            match store.resolve(part) {
                Some(t) => out.push(t.index),
                None => return Err(EsError::index_not_found(part)),
            }
        }
        Ok(out)
    }

    fn count(&self, name: &str) -> std::result::Result<Out, EsError> {
        let indices = self.concrete(name)?;
        let store = lock(&self.store);
        let count: usize = indices
            .iter()
            .filter_map(|i| store.indices.get(i))
            .map(|i| i.docs.len())
            .sum();
        let n = indices.len() as u64;
        Ok(obj([
            ("count", (count as u64).into()),
            (
                "_shards",
                obj([
                    ("total", n.into()),
                    ("successful", n.into()),
                    ("skipped", 0u32.into()),
                    ("failed", 0u32.into()),
                ]),
            ),
        ]))
    }

    fn get_mapping(&self, name: &str) -> std::result::Result<Out, EsError> {
        let indices = self.concrete(name)?;
        let store = lock(&self.store);
        Ok(Out::O(
            indices
                .iter()
                .filter_map(|i| store.indices.get(i).map(|idx| (i, idx)))
                .map(|(i, idx)| {
                    (
                        i.clone(),
                        obj([("mappings", Out::V(idx.mapping.to_json()))]),
                    )
                })
                .collect(),
        ))
    }

    fn get_doc(&self, name: &str, id: &str, query: &[(String, String)]) -> Response {
        let store = lock(&self.store);
        let Some(target) = store.resolve(name) else {
            return es_error_response(&EsError::index_not_found(name), query);
        };
        let doc = store
            .indices
            .get(&target.index)
            .and_then(|i| i.docs.get(id));
        match doc {
            Some(d) => json_filtered(
                200,
                obj([
                    ("_index", target.index.as_str().into()),
                    ("_id", id.into()),
                    ("_version", d.version.into()),
                    ("_seq_no", d.seq_no.into()),
                    ("_primary_term", 1u32.into()),
                    ("found", true.into()),
                    ("_source", Out::V(d.source.clone())),
                ]),
                query,
            ),
            None => json_filtered(
                404,
                obj([
                    ("_index", target.index.as_str().into()),
                    ("_id", id.into()),
                    ("found", false.into()),
                ]),
                query,
            ),
        }
    }

    fn index_admin(
        &self,
        method: &Method,
        name: &str,
        body: &[u8],
        query: &[(String, String)],
    ) -> Response {
        match *method {
            Method::PUT => {
                let value = if body.is_empty() {
                    None
                } else {
                    match parse_body_json(body) {
                        Ok(v) => Some(v),
                        Err(e) => return es_error_response(&e, query),
                    }
                };
                let result = lock(&self.store).create_index(name, value.as_ref());
                es_response(
                    result.map(|()| {
                        obj([
                            ("acknowledged", true.into()),
                            ("shards_acknowledged", true.into()),
                            ("index", name.into()),
                        ])
                    }),
                    query,
                )
            }
            Method::HEAD => {
                let exists = lock(&self.store).resolve(name).is_some();
                h::empty(if exists { 200 } else { 404 })
            }
            Method::GET => {
                let result = self.concrete(name).map(|indices| {
                    let store = lock(&self.store);
                    Out::O(
                        indices
                            .iter()
                            .filter_map(|i| store.indices.get(i).map(|idx| (i, idx)))
                            .map(|(i, idx)| {
                                (
                                    i.clone(),
                                    obj([
                                        ("aliases", Out::V(json!({}))),
                                        ("mappings", Out::V(idx.mapping.to_json())),
                                        (
                                            "settings",
                                            Out::V(json!({"index": {
                                                "number_of_shards": "1",
                                                "number_of_replicas": "1",
                                                "uuid": idx.uuid,
                                                "provided_name": i,
                                                "mapping": {"total_fields": {"limit": idx.settings.total_fields_limit.to_string()}}
                                            }})),
                                        ),
                                    ]),
                                )
                            })
                            .collect(),
                    )
                });
                es_response(result, query)
            }
            Method::DELETE => {
                let mut store = lock(&self.store);
                let Some(target) = store.resolve(name) else {
                    return es_error_response(&EsError::index_not_found(name), query);
                };
                store.indices.remove(&target.index);
                if let Some(ds) = target.data_stream {
                    store.data_streams.remove(&ds);
                }
                es_response(Ok(obj([("acknowledged", true.into())])), query)
            }
            _ => simple_error(
                405,
                &format!("Incorrect HTTP method for uri [/{name}] and method [{method}], allowed: [HEAD, DELETE, GET, PUT]"),
            ),
        }
    }
}

fn shards_ok(total: u32, successful: u32) -> Out {
    obj([(
        "_shards",
        obj([
            ("total", total.into()),
            ("successful", successful.into()),
            ("failed", 0u32.into()),
        ]),
    )])
}

fn root_info() -> Value {
    json!({
        "name": "weir-testkit",
        "cluster_name": "testkit",
        "cluster_uuid": "weir-testkit-cluster-uuid",
        "version": {
            "number": "8.15.0",
            "build_flavor": "default",
            "build_type": "docker",
            "lucene_version": "9.11.1",
            "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0"
        },
        "tagline": "You Know, for Search"
    })
}

/// Parses a JSON request body with Elasticsearch's error shape.
fn parse_body_json(body: &[u8]) -> std::result::Result<Value, EsError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        EsError::new(
            400,
            "x_content_parse_exception",
            format!("[1:{}] Invalid UTF-8 start byte", e.valid_up_to() + 1),
        )
    })?;
    crate::json::parse(text).map(|n| n.to_value()).map_err(|e| {
        EsError::new(
            400,
            "x_content_parse_exception",
            format!("{} {}", e.pos, e.message),
        )
    })
}

/// Elasticsearch 8 accepts JSON and NDJSON (and their versioned vendor types) for bulk;
/// the answer for any other `Content-Type`.
fn content_type_error(headers: &HeaderMap) -> Option<Response> {
    let values: Vec<&str> = headers
        .get_all(http::header::CONTENT_TYPE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let Some(first) = values.first() else {
        return Some(simple_error(406, "Content-Type header is missing"));
    };
    let mut parts = first.split(';');
    let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let params: Vec<(String, String)> = parts
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((
                k.trim().to_ascii_lowercase(),
                v.trim().trim_matches('"').to_string(),
            ))
        })
        .collect();
    let unsupported = || {
        simple_error(
            406,
            &format!(
                "Content-Type header [{}] is not supported",
                values.join(", ")
            ),
        )
    };
    match media.as_str() {
        "application/json" | "application/x-ndjson" => None,
        "application/vnd.elasticsearch+json" | "application/vnd.elasticsearch+x-ndjson" => {
            match params.iter().find(|(k, _)| k == "compatible-with") {
                Some((_, v)) if v == "7" || v == "8" => None,
                _ => Some(es_error_response(
                    &EsError::new(
                        400,
                        "media_type_header_exception",
                        "Invalid media-type value on headers [Content-Type]",
                    ),
                    &[],
                )),
            }
        }
        _ => Some(unsupported()),
    }
}

fn injected_failure(status: u16, retry_after_secs: Option<u64>) -> Response {
    let e = match status {
        429 => EsError::new(
            429,
            "es_rejected_execution_exception",
            "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, all_bytes=0, coordinating_operation_bytes=1048576, max_coordinating_and_primary_bytes=0]",
        ),
        503 => EsError::new(
            503,
            "cluster_block_exception",
            "blocked by: [SERVICE_UNAVAILABLE/2/no master];",
        ),
        401 => EsError::new(401, "security_exception", "unable to authenticate user [elastic] for REST request [/_bulk]"),
        403 => EsError::new(
            403,
            "security_exception",
            "action [indices:data/write/bulk] is unauthorized for user [elastic] with effective roles [] on indices [weir], this action is granted by the index privileges [create_doc,create,index,write,all]",
        ),
        413 => return h::empty(413),
        s => EsError::new(s, "exception", format!("weir-testkit: injected failure with status {s}")),
    };
    let mut resp = es_error_response(&e, &[]);
    if let Some(secs) = retry_after_secs {
        h::add_header(&mut resp, "Retry-After", &secs.to_string());
    }
    resp
}

async fn admin(
    app: &Arc<EsApp>,
    conn: &Conn,
    method: &Method,
    segs: &[String],
    body: Body,
) -> Response {
    let Ok(body) = to_bytes(body, 1024 * 1024).await else {
        return h::admin_error("admin request body too large");
    };
    let seg: Vec<&str> = segs.iter().map(String::as_str).collect();
    match (method.clone(), seg.as_slice()) {
        (Method::GET, ["docs"]) => {
            let docs = FakeElasticsearch::docs_of(app);
            h::json(200, &docs)
        }
        (Method::GET, ["templates"]) => {
            let templates: Vec<Value> = lock(&app.store)
                .templates
                .iter()
                .filter(|(_, t)| !t.builtin)
                .map(|(n, t)| json!({"name": n, "body": t.body}))
                .collect();
            h::json(200, &templates)
        }
        (Method::GET, ["stats"]) => {
            let doc_count: usize = lock(&app.store)
                .indices
                .values()
                .map(|i| i.docs.len())
                .sum();
            h::json(
                200,
                &json!({"bulk_requests": app.bulk_requests.load(Ordering::SeqCst), "doc_count": doc_count}),
            )
        }
        (Method::POST, ["fail"]) => match serde_json::from_slice::<FailBody>(&body) {
            Ok(f) => {
                app.faults
                    .fail_requests(f.requests, f.status, f.retry_after_secs);
                h::json(200, &json!({"acknowledged": true}))
            }
            Err(e) => h::admin_error(format!("bad fail request: {e}")),
        },
        (Method::POST, ["latency"]) => match serde_json::from_slice::<LatencyBody>(&body) {
            Ok(l) => {
                app.faults.set_latency(Duration::from_millis(l.ms));
                h::json(200, &json!({"acknowledged": true}))
            }
            Err(e) => h::admin_error(format!("bad latency request: {e}")),
        },
        (Method::POST, ["down"]) => match serde_json::from_slice::<DownBody>(&body) {
            Ok(d) => server::admin_down(&app.faults, conn, &d),
            Err(e) => h::admin_error(format!("bad down request: {e}")),
        },
        _ => h::response(
            404,
            "text/plain; charset=utf-8",
            "unknown weir-testkit admin endpoint\n",
        ),
    }
}

impl FakeElasticsearch {
    fn docs_of(app: &Arc<EsApp>) -> Vec<EsDoc> {
        let store = lock(&app.store);
        let mut docs: Vec<(u64, EsDoc)> = store
            .indices
            .iter()
            .flat_map(|(name, index)| {
                index.docs.iter().map(move |(id, d)| {
                    (
                        d.order,
                        EsDoc {
                            index: name.clone(),
                            id: id.clone(),
                            source: d.source.clone(),
                            version: d.version,
                        },
                    )
                })
            })
            .collect();
        docs.sort_by_key(|(order, _)| *order);
        docs.into_iter().map(|(_, d)| d).collect()
    }
}
