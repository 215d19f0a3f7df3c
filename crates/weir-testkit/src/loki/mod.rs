//! A fake Grafana Loki 3.x (single binary: distributor + one ingester) for the push API:
//! [`FakeLoki`].
//!
//! # What is reproduced
//!
//! - `POST /loki/api/v1/push` and `POST /api/prom/push` (other methods: 405). Bodies are
//!   read like `push.ParseLokiRequest`: `Content-Encoding` empty or `snappy` (the body is a
//!   snappy *block*, as Loki decodes with `util.RawSnappy`), any other encoding 400
//!   `Content-Encoding "br" not supported`; `Content-Type` is parsed with Go's
//!   `mime.ParseMediaType`, so a missing one is 400 `mime: no media type`;
//!   `application/json` is JSON, **every other type is read as snappy protobuf**
//!   (`logproto.PushRequest`), as Loki does. A body that is not snappy is 400 `snappy:
//!   corrupt input`.
//! - JSON: `{"streams":[{"stream":{"k":"v"},"values":[["<ns>","<line>",{"k":"v"}]]}]}` on
//!   the v1 path (the legacy `{"streams":[{"labels":"{..}","entries":[{"ts":"<RFC3339>",
//!   "line":".."}]}]}` on `/api/prom/push`); timestamps must be JSON strings of integer
//!   nanoseconds, else 400.
//! - Tenant: `X-Scope-OrgID` is required when [`LokiOptions::auth_enabled`] (401 `no org
//!   id`), validated like dskit (`multiple org IDs present`, `tenant ID '..' contains
//!   unsupported character '..'`, `tenant ID is too long: max 150 characters`); without auth
//!   the tenant is `fake`.
//! - Labels are parsed like `syntax.ParseLabels` (PromQL `ParseMetric`: `{a="b"}`, Go
//!   escapes, `'..'` and `` `..` `` strings, a leading metric name becomes `__name__`,
//!   empty values dropped); a syntax error fails the **whole request** 400 `couldn't parse
//!   labels: 1:6: parse error: unexpected identifier "bar" in label set, expected string`,
//!   as in Loki 3.x's `ParseLokiRequest`.
//! - `service_name` discovery (Loki 3 default): a stream without `service_name` gets one
//!   from the first of [`LokiOptions::discover_service_name`] it has (`service`, `app`, …,
//!   `job`, …) or `unknown_service`. Stored labels include it, as a query would show. An
//!   empty list turns this off.
//! - Distributor validation, per stream then per entry; failures are **ignored while the
//!   valid entries of the same request are stored**: `error at least one label pair is
//!   required per stream`, `entry for stream '{..}' has 16 label names; limit 15`
//!   (`service_name` not counted, as in Loki), `stream '{..}' has label name too long: '..'`,
//!   `… label value too long …`, `… has duplicate label name: '..'`; per entry `entry for
//!   stream '{..}' has timestamp too old: <RFC3339>, oldest acceptable timestamp is:
//!   <RFC3339>`, `… has timestamp too new: <RFC3339>` (more than 10 min ahead), `Max entry
//!   size '262144' bytes exceeded for stream '{..}' while adding an entry with length '..'
//!   bytes`, and the structured-metadata limits (allowed, 64 KiB, 128 entries).
//! - Ingester, per stream (labels normalised and sorted): [`OrderMode::Unordered`] (Loki's
//!   default, window = `max_chunk_age / 2` = 1 h) refuses entries older than the stream's
//!   newest minus the window, `entry too far behind, entry timestamp is: <RFC3339>, oldest
//!   acceptable timestamp is: <RFC3339>`; [`OrderMode::Ordered`] refuses entries older than
//!   the newest with `entry out of order`. An entry equal to one already stored (same
//!   stream, timestamp and line) is dropped silently and counts as success (replays are
//!   safe); same timestamp with another line is stored.
//! - Answers: 204 with an empty body on success. Otherwise Go's `http.Error`: the text plus
//!   `\n`, `Content-Type: text/plain; charset=utf-8`. The text is exactly Loki's:
//!   - distributor errors are grouped like `util.GroupedErrors`: one error alone is its
//!     text, several are `N errors like: <text>; M errors like: <text>` (first-seen order;
//!     Loki iterates a Go map, so its order varies);
//!   - an ingester (ordering) error is one line per ignored entry, at most 10
//!     (`max_returned_stream_errors`), then the total:
//!     ```text
//!     entry with timestamp 2024-01-01 00:00:00.5 +0000 UTC ignored, reason: 'entry out of order',
//!     user 'tenant-a', total ignored: 1 out of 3 for stream: {job="weir", service_name="weir"}
//!     ```
//!     (timestamps in Go's `time.Time.String()` form, UTC);
//!   - as in Loki, when the ingester reports an error the distributor's validation errors
//!     of that request are not reported, and the ingester reports only the outcome of the
//!     **last** stream of the request (`instance.Push` overwrites its error per stream): an
//!     out-of-order entry in an earlier stream can be dropped under a 204. Clients cannot
//!     rely on the 400 body listing every dropped entry — neither with Loki.
//! - `GET /ready` (`ready`), `GET /loki/api/v1/status/buildinfo`, 404 `404 page not found`
//!   elsewhere.
//!
//! # What is not
//!
//! - Gzip and deflate request bodies (Loki accepts them) are answered 415 `weir-testkit:
//!   unsupported content encoding ..` rather than pulling in a decompressor.
//! - Rate limits (per tenant and per stream), stream limits, line truncation, log level
//!   detection (`detected_level` structured metadata), OTLP, querying (use
//!   [`FakeLoki::entries`] or `GET /_testkit/entries`), chunks, retention.
//! - Deduplication: Loki drops an exact duplicate only against the stream's last line and
//!   within the open head block; the fake drops it whenever it is already stored.
//!   `OrderMode::Ordered` compares with the newest entry of the stream (Loki: of the open
//!   chunk).
//! - Protobuf lines and labels must be UTF-8 (prost checks; Go's gogo types do not), and
//!   protobuf / JSON decoding error texts only approximate Go's (the status, 400, is
//!   exact).
//!
//! # Faults
//!
//! [`FakeLoki::fail_requests`] answers whole push requests with a status (429 with Loki's
//! rate-limit text), text body and an optional `Retry-After`; [`FakeLoki::set_latency`];
//! [`FakeLoki::set_down`]. The admin API under `/_testkit/` does the same from another
//! process.

mod labels;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use axum::Router;
use http::{HeaderMap, Method};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::http::{self as h, DownBody, FailBody, LatencyBody};
use crate::server::{self, lock, Conn, Faults, Server};
use crate::util;
use crate::Result;

/// Largest push body read (compressed).
const MAX_BODY_BYTES: usize = 100 * 1024 * 1024;

/// Go's zero `time.Time` in seconds since the epoch: what gogo protobuf decodes a missing
/// timestamp to.
const GO_ZERO_TIME_SECS: i64 = -62_135_596_800;

/// How the ingester orders entries within a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderMode {
    /// Loki's default (`unordered_writes: true`): entries may arrive in any order within
    /// `window` (Loki: `max_chunk_age / 2`, 1 h by default) of the stream's newest entry.
    Unordered {
        /// How far behind the newest entry an entry may be.
        window: Duration,
    },
    /// `unordered_writes: false`: an entry older than the stream's newest is refused.
    Ordered,
}

/// How to start a [`FakeLoki`]; the defaults are Loki 3's.
#[derive(Clone, Debug)]
pub struct LokiOptions {
    /// Ordering rule of the ingester. Default: unordered within 1 h.
    pub order: OrderMode,
    /// `reject_old_samples_max_age`; `None` disables `reject_old_samples`. Default 7 days.
    pub reject_old_samples_max_age: Option<Duration>,
    /// `creation_grace_period`: how far in the future an entry may be. Default 10 min.
    pub creation_grace_period: Duration,
    /// `max_line_size` in bytes; 0 disables. Default 256 KiB.
    pub max_line_size: usize,
    /// `max_label_names_per_series`. Default 15.
    pub max_label_names_per_series: usize,
    /// `max_label_name_length`. Default 1024.
    pub max_label_name_length: usize,
    /// `max_label_value_length`. Default 2048.
    pub max_label_value_length: usize,
    /// `auth_enabled`: require `X-Scope-OrgID`. Default true.
    pub auth_enabled: bool,
    /// `discover_service_name`: labels to copy into `service_name`; empty disables.
    /// Default: Loki 3's list.
    pub discover_service_name: Vec<String>,
    /// `allow_structured_metadata`. Default true.
    pub allow_structured_metadata: bool,
    /// `max_structured_metadata_size` in bytes. Default 64 KiB.
    pub max_structured_metadata_size: usize,
    /// `max_structured_metadata_entries_count`. Default 128.
    pub max_structured_metadata_entries_count: usize,
    /// The ingester's `max_returned_stream_errors`. Default 10.
    pub max_returned_stream_errors: usize,
    /// Address to listen on; port 0 picks a free one. Default `127.0.0.1:0`.
    pub listen_addr: SocketAddr,
    /// Keep the accepted entries. Default true. Without it every push is validated,
    /// ordered, deduplicated and answered exactly the same and the entries are counted
    /// ([`FakeLoki::entry_count`]), but [`FakeLoki::entries`] is empty: for long
    /// benchmarks, where millions of entries would fill the machine's memory.
    pub keep_entries: bool,
}

impl Default for LokiOptions {
    fn default() -> Self {
        Self {
            order: OrderMode::Unordered {
                window: Duration::from_secs(3600),
            },
            reject_old_samples_max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            creation_grace_period: Duration::from_secs(600),
            max_line_size: 256 * 1024,
            max_label_names_per_series: 15,
            max_label_name_length: 1024,
            max_label_value_length: 2048,
            auth_enabled: true,
            discover_service_name: [
                "service",
                "app",
                "application",
                "app_name",
                "name",
                "app_kubernetes_io_name",
                "container",
                "container_name",
                "k8s_container_name",
                "component",
                "workload",
                "job",
                "k8s_job_name",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            allow_structured_metadata: true,
            max_structured_metadata_size: 64 * 1024,
            max_structured_metadata_entries_count: 128,
            max_returned_stream_errors: 10,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            keep_entries: true,
        }
    }
}

/// A 64-bit hash of a line, for the duplicate set.
fn line_hash(line: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(line)
}

/// An accepted log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LokiEntry {
    /// The stream's labels (after `service_name` discovery).
    pub labels: BTreeMap<String, String>,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    /// The log line.
    pub line: String,
    /// Structured metadata of the entry.
    pub structured_metadata: BTreeMap<String, String>,
}

#[derive(Default)]
struct StreamState {
    highest: Option<i128>,
    last: Option<(i128, String)>,
    /// Timestamp and a 64-bit hash of the line of every entry held: Loki compares whole
    /// lines; two different lines of one stream at the same nanosecond whose hashes also
    /// collide (about 2^-64 a pair) are the only case where the fake differs.
    seen: HashSet<(i128, u64)>,
}

#[derive(Default)]
struct TenantState {
    entries: Vec<LokiEntry>,
    /// Entries accepted (also when they are not kept).
    accepted: usize,
    streams: HashMap<String, StreamState>,
}

struct LokiApp {
    tenants: Mutex<BTreeMap<String, TenantState>>,
    faults: Arc<Faults>,
    push_requests: AtomicU64,
    /// Exact copies dropped (same stream, timestamp and line as an entry already held).
    duplicates_dropped: AtomicU64,
    opts: LokiOptions,
}

/// A running fake Loki. Dropping it (or [`FakeLoki::shutdown`]) stops it.
///
/// ```no_run
/// # async fn demo() -> weir_testkit::Result<()> {
/// use weir_testkit::loki::{FakeLoki, LokiOptions, OrderMode};
///
/// let loki = FakeLoki::start_with(LokiOptions {
///     order: OrderMode::Ordered,
///     ..LokiOptions::default()
/// })
/// .await?;
/// // Push to format!("{}/loki/api/v1/push", loki.url()) with X-Scope-OrgID: tenant-a, then:
/// assert!(loki.entries("tenant-a").is_empty());
/// # Ok(()) }
/// ```
pub struct FakeLoki {
    app: Arc<LokiApp>,
    server: Server,
}

impl FakeLoki {
    /// Starts a Loki with default options on `127.0.0.1` and a free port.
    ///
    /// # Errors
    ///
    /// If the address cannot be bound.
    pub async fn start() -> Result<Self> {
        Self::start_with(LokiOptions::default()).await
    }

    /// Starts a Loki with `opts` on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// If `opts.listen_addr` cannot be bound.
    pub async fn start_with(opts: LokiOptions) -> Result<Self> {
        let faults = server::new_faults();
        let app = Arc::new(LokiApp {
            tenants: Mutex::new(BTreeMap::new()),
            faults: Arc::clone(&faults),
            push_requests: AtomicU64::new(0),
            duplicates_dropped: AtomicU64::new(0),
            opts: opts.clone(),
        });
        let router = Router::new().fallback(handle).with_state(Arc::clone(&app));
        let server = Server::start(opts.listen_addr, router, faults).await?;
        tracing::info!(addr = %server.addr(), "fake loki listening");
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

    /// The entries accepted for `tenant`, in acceptance order.
    pub fn entries(&self, tenant: &str) -> Vec<LokiEntry> {
        lock(&self.app.tenants)
            .get(tenant)
            .map(|t| t.entries.clone())
            .unwrap_or_default()
    }

    /// The entries of every tenant.
    pub fn all_entries(&self) -> BTreeMap<String, Vec<LokiEntry>> {
        self.app.all_entries()
    }

    /// Number of entries accepted, all tenants.
    pub fn entry_count(&self) -> usize {
        self.app.entry_count()
    }

    /// Exact copies of held entries that were pushed again and dropped (a client that
    /// never resends leaves this at 0).
    pub fn duplicates_dropped(&self) -> u64 {
        self.app.duplicates_dropped.load(Ordering::SeqCst)
    }

    /// Push requests received, including refused and failed ones.
    pub fn push_requests(&self) -> u64 {
        self.app.push_requests.load(Ordering::SeqCst)
    }

    /// The most pushes that were ever being answered at once.
    pub fn peak_concurrent_pushes(&self) -> u64 {
        self.app.faults.peak_in_flight()
    }

    /// Answers the next `n` push requests with `status` (a text body like Loki's) and
    /// `Retry-After: retry_after_secs` if given. `n == 0` clears.
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

    /// Clears every injected fault: request failures, latency, down.
    pub fn clear_faults(&self) {
        self.fail_requests(0, 0, None);
        self.set_latency(Duration::ZERO);
        self.set_down(false);
    }

    /// Stops the server and waits until it no longer listens.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// Go's `http.Error`.
fn go_error(status: u16, text: &str) -> Response {
    let mut resp = h::response(status, "text/plain; charset=utf-8", format!("{text}\n"));
    h::add_header(&mut resp, "X-Content-Type-Options", "nosniff");
    resp
}

async fn handle(
    State(app): State<Arc<LokiApp>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let segs = h::path_segments(path);
    if segs.first().map(String::as_str) == Some("_testkit") {
        return admin(&app, &conn, &parts.method, &segs[1..], body).await;
    }
    let legacy = match path {
        "/loki/api/v1/push" => false,
        "/api/prom/push" => true,
        "/ready" if parts.method == Method::GET => {
            return h::response(200, "text/plain; charset=utf-8", "ready\n")
        }
        "/loki/api/v1/status/buildinfo" if parts.method == Method::GET => {
            return h::json(
                200,
                &json!({"version":"3.4.2","revision":"weir-testkit","branch":"HEAD","buildUser":"weir-testkit","buildDate":"","goVersion":""}),
            )
        }
        _ => return go_error(404, "404 page not found"),
    };
    if parts.method != Method::POST {
        return h::empty(405);
    }
    app.push_requests.fetch_add(1, Ordering::SeqCst);
    let _in_flight = app.faults.enter();
    app.faults.delay().await;
    app.push(&parts.headers, body, legacy).await
}

/// One stream of a decoded push request.
struct RawStream {
    labels: String,
    entries: Vec<RawEntry>,
}

#[derive(Clone)]
struct RawEntry {
    ts: i128,
    line: String,
    metadata: Vec<(String, String)>,
}

/// dskit's `tenant.TenantID`.
fn validate_tenant(id: &str) -> std::result::Result<(), String> {
    if id.contains('|') {
        return Err("multiple org IDs present".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "!-_.*'()".contains(*c)))
    {
        return Err(format!(
            "tenant ID '{id}' contains unsupported character '{c}'"
        ));
    }
    if id.len() > 150 {
        return Err("tenant ID is too long: max 150 characters".into());
    }
    if id == "." || id == ".." {
        return Err("tenant ID is '.' or '..'".into());
    }
    Ok(())
}

/// Go's `mime.ParseMediaType`, as far as Loki's errors need it.
fn parse_media_type(v: &str) -> std::result::Result<String, &'static str> {
    let is_token = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c);
    let base = v.split(';').next().unwrap_or_default().trim();
    if base.is_empty() {
        return Err("mime: no media type");
    }
    let Some((major, minor)) = base.split_once('/') else {
        return Err("mime: expected slash after first token");
    };
    if major.is_empty() || !major.chars().all(is_token) {
        return Err("mime: expected token after slash");
    }
    if minor.is_empty() || !minor.chars().all(is_token) {
        return Err("mime: expected token after slash");
    }
    Ok(base.to_ascii_lowercase())
}

fn decode_protobuf(body: &[u8]) -> std::result::Result<Vec<RawStream>, String> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|_| "snappy: corrupt input".to_string())?;
    let req = weir_proto::logproto::PushRequest::decode(raw.as_slice())
        .map_err(|e| format!("proto: {e}"))?;
    req.streams
        .into_iter()
        .map(|s| {
            let entries = s
                .entries
                .into_iter()
                .map(|e| {
                    let ts = match e.timestamp {
                        None => i128::from(GO_ZERO_TIME_SECS) * 1_000_000_000,
                        Some(t) => {
                            if !(0..1_000_000_000).contains(&t.nanos) {
                                return Err(format!(
                                    "timestamp: seconds:{} nanos:{}: nanos not in range [0, 1e9)",
                                    t.seconds, t.nanos
                                ));
                            }
                            if t.seconds < GO_ZERO_TIME_SECS || t.seconds >= 253_402_300_800 {
                                return Err(format!(
                                    "timestamp: seconds:{} nanos:{}: timestamp out of range",
                                    t.seconds, t.nanos
                                ));
                            }
                            i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
                        }
                    };
                    Ok(RawEntry {
                        ts,
                        line: e.line,
                        metadata: e
                            .structured_metadata
                            .into_iter()
                            .map(|l| (l.name, l.value))
                            .collect(),
                    })
                })
                .collect::<std::result::Result<Vec<_>, String>>()?;
            Ok(RawStream {
                labels: s.labels,
                entries,
            })
        })
        .collect()
}

const JSON_CTX: &str = "loghttp.PushRequest.Streams: []*loghttp.Stream";

fn json_type_error(what: &str, v: &Value) -> String {
    let found = match v {
        Value::Null => "n",
        Value::Bool(true) => "t",
        Value::Bool(false) => "f",
        Value::Number(_) => "number",
        Value::String(_) => "\"",
        Value::Array(_) => "[",
        Value::Object(_) => "{",
    };
    format!("{JSON_CTX}: {what}: expects \" or n, but found {found}")
}

fn json_string_map(v: &Value, what: &str) -> std::result::Result<Vec<(String, String)>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                Value::Null => Ok((k.clone(), String::new())),
                other => Err(json_type_error(&format!("{what}: ReadString"), other)),
            })
            .collect(),
        other => Err(format!(
            "{JSON_CTX}: {what}: ReadMapCB: expect {{ or n, but found {}",
            json_type_error("", other).chars().last().unwrap_or('?')
        )),
    }
}

/// Go's `strconv.ParseInt(s, 10, 64)` error text.
fn parse_int_error(s: &str) -> String {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    let why = if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
        "value out of range"
    } else {
        "invalid syntax"
    };
    format!("strconv.ParseInt: parsing {}: {why}", util::go_quote(s))
}

fn decode_json(body: &[u8], legacy: bool) -> std::result::Result<Vec<RawStream>, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("loghttp.PushRequest: ReadObject: {e}"))?;
    let streams =
        match &v {
            Value::Null => return Ok(Vec::new()),
            Value::Object(m) => match m.get("streams") {
                None | Some(Value::Null) => return Ok(Vec::new()),
                Some(Value::Array(a)) => a,
                Some(_) => return Err(
                    "loghttp.PushRequest.Streams: []*loghttp.Stream: decode slice: expect [ or n"
                        .into(),
                ),
            },
            _ => return Err("loghttp.PushRequest: ReadObjectCB: expect { or n".into()),
        };
    let mut out = Vec::new();
    for s in streams {
        let Value::Object(s) = s else {
            if s.is_null() {
                continue;
            }
            return Err(format!("{JSON_CTX}: ReadObjectCB: expect {{ or n"));
        };
        if legacy {
            out.push(decode_legacy_stream(s)?);
            continue;
        }
        let labels = json_string_map(
            s.get("stream").unwrap_or(&Value::Null),
            "loghttp.Stream.Labels",
        )?;
        let mut sorted = labels.clone();
        sorted.sort();
        let labels = labels::to_string(&sorted);
        let mut entries = Vec::new();
        let values = match s.get("values") {
            None | Some(Value::Null) => &Vec::new(),
            Some(Value::Array(a)) => a,
            Some(_) => {
                return Err(format!(
                    "{JSON_CTX}: loghttp.Stream.Entries: ReadArrayCB: expect [ or n"
                ))
            }
        };
        for value in values {
            let Value::Array(parts) = value else {
                return Err(format!(
                    "{JSON_CTX}: loghttp.Stream.Entries: ReadArrayCB: expect [ or n"
                ));
            };
            if parts.len() > 3 {
                return Err(format!(
                    "{JSON_CTX}: loghttp.Stream.Entries: error reading entry: array must contains 2 values"
                ));
            }
            let ts = match parts.first() {
                Some(Value::String(t)) => t.parse::<i64>().map_err(|_| {
                    format!(
                        "{JSON_CTX}: loghttp.Stream.Entries: error reading entry timestamp: {}",
                        parse_int_error(t)
                    )
                })?,
                Some(other) => {
                    return Err(json_type_error("loghttp.Stream.Entries: ReadString", other))
                }
                None => 0,
            };
            let line = match parts.get(1) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(l)) => l.clone(),
                Some(other) => {
                    return Err(json_type_error("loghttp.Stream.Entries: ReadString", other))
                }
            };
            let metadata = match parts.get(2) {
                None => Vec::new(),
                Some(m) => json_string_map(m, "loghttp.Stream.Entries")?,
            };
            entries.push(RawEntry {
                ts: i128::from(ts),
                line,
                metadata,
            });
        }
        out.push(RawStream { labels, entries });
    }
    Ok(out)
}

/// The pre-v1 JSON format of `/api/prom/push`.
fn decode_legacy_stream(
    s: &serde_json::Map<String, Value>,
) -> std::result::Result<RawStream, String> {
    let labels = match s.get("labels") {
        Some(Value::String(l)) => l.clone(),
        None | Some(Value::Null) => String::new(),
        Some(other) => return Err(json_type_error("logproto.Stream.Labels: ReadString", other)),
    };
    let mut entries = Vec::new();
    if let Some(Value::Array(items)) = s.get("entries") {
        for item in items {
            let ts = match item.get("ts") {
                Some(Value::String(t)) => parse_rfc3339_nanos(t).ok_or_else(|| {
                    format!(
                        "logproto.Stream.Entries: parsing time {} as \"2006-01-02T15:04:05Z07:00\": cannot parse",
                        util::go_quote(t)
                    )
                })?,
                _ => i128::from(GO_ZERO_TIME_SECS) * 1_000_000_000,
            };
            let line = item
                .get("line")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            entries.push(RawEntry {
                ts,
                line,
                metadata: Vec::new(),
            });
        }
    }
    Ok(RawStream { labels, entries })
}

/// RFC 3339 with optional fraction and offset, to nanoseconds since the epoch.
fn parse_rfc3339_nanos(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d, hh, mm, ss) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo)
        || d < 1
        || d > i64::from(util::days_in_month(y, mo as u32))
        || hh > 23
        || mm > 59
        || ss > 60
    {
        return None;
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = s.get(start..i)?;
        if frac.is_empty() {
            return None;
        }
        let padded = format!("{:0<9}", &frac[..frac.len().min(9)]);
        nanos = padded.parse().ok()?;
    }
    let offset_secs: i64 = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let secs = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    let days = util::days_from_civil(y, mo as u32, d as u32);
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss - offset_secs;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
}

/// Loki's `util.GroupedErrors.Error()` (first-seen order instead of Go map order).
fn grouped(errors: &[String]) -> Option<String> {
    if errors.is_empty() {
        return None;
    }
    let mut counts: Vec<(&String, usize)> = Vec::new();
    for e in errors {
        match counts.iter_mut().find(|(k, _)| *k == e) {
            Some((_, n)) => *n += 1,
            None => counts.push((e, 1)),
        }
    }
    let unique = counts.len();
    Some(
        counts
            .iter()
            .map(|(e, n)| {
                if unique > 1 || *n > 1 {
                    format!("{n} errors like: {e}")
                } else {
                    (*e).clone()
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// A stream that passed the distributor, on its way to the ingester.
struct Validated {
    key: String,
    labels: BTreeMap<String, String>,
    entries: Vec<RawEntry>,
}

impl LokiApp {
    /// Entries accepted, all tenants (kept or not).
    fn entry_count(&self) -> usize {
        lock(&self.tenants).values().map(|t| t.accepted).sum()
    }

    fn all_entries(&self) -> BTreeMap<String, Vec<LokiEntry>> {
        lock(&self.tenants)
            .iter()
            .map(|(t, s)| (t.clone(), s.entries.clone()))
            .collect()
    }

    async fn push(&self, headers: &HeaderMap, body: Body, legacy: bool) -> Response {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let tenant = if self.opts.auth_enabled {
            let id = header("X-Scope-OrgID");
            if id.is_empty() {
                return go_error(401, "no org id");
            }
            id
        } else {
            "fake".to_string()
        };
        if let Err(e) = validate_tenant(&tenant) {
            return go_error(400, &e);
        }
        let Ok(body) = to_bytes(body, MAX_BODY_BYTES).await else {
            return go_error(413, "request body too large");
        };
        let decoded = self.decode(headers, &body, legacy);
        if let Some(plan) = self.faults.take_failure() {
            let (lines, bytes) = decoded.as_ref().map_or((0, 0), |streams| {
                streams
                    .iter()
                    .flat_map(|s| &s.entries)
                    .fold((0, 0), |(n, b), e| (n + 1, b + e.line.len()))
            });
            let text = match plan.status {
                429 => format!(
                    "Ingestion rate limit exceeded for user {tenant} (limit: 4194304 bytes/sec) while attempting to ingest '{lines}' lines totaling '{bytes}' bytes, reduce log volume or contact your Loki administrator to see if the limit can be increased"
                ),
                500 => "rpc error: code = Internal desc = weir-testkit: injected failure".to_string(),
                s => format!("weir-testkit: injected failure with status {s}"),
            };
            let mut resp = go_error(plan.status, &text);
            if let Some(secs) = plan.retry_after_secs {
                h::add_header(&mut resp, "Retry-After", &secs.to_string());
            }
            return resp;
        }
        let streams = match decoded {
            Ok(s) => s,
            Err((status, text)) => return go_error(status, &text),
        };
        // ParseLokiRequest: every stream's labels must parse, else the whole request fails.
        let mut prepared = Vec::with_capacity(streams.len());
        for s in streams {
            let parsed = match labels::parse(&s.labels) {
                Ok(l) => l,
                Err(e) => return go_error(400, &format!("couldn't parse labels: {e}")),
            };
            prepared.push(self.discover_service_name(s, parsed));
        }
        match self.distribute(&tenant, prepared) {
            None => h::empty(204),
            Some(text) => go_error(400, &text),
        }
    }

    /// Decodes the body; `Err((status, text))`.
    fn decode(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        legacy: bool,
    ) -> std::result::Result<Vec<RawStream>, (u16, String)> {
        let header = |name: http::header::HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        match header(http::header::CONTENT_ENCODING).as_str() {
            "" | "snappy" => {}
            enc @ ("gzip" | "deflate") => {
                return Err((
                    415,
                    format!("weir-testkit: unsupported content encoding {enc:?} (Loki accepts it; the fake does not decompress it)"),
                ))
            }
            other => return Err((400, format!("Content-Encoding {} not supported", util::go_quote(other)))),
        }
        let media = parse_media_type(&header(http::header::CONTENT_TYPE))
            .map_err(|e| (400, e.to_string()))?;
        if media == "application/json" {
            decode_json(body, legacy).map_err(|e| (400, e))
        } else {
            decode_protobuf(body).map_err(|e| (400, e))
        }
    }

    /// Adds `service_name` as Loki 3's `ParseLokiRequest` does; returns the stream with its
    /// labels string (normalised if a label was added).
    fn discover_service_name(&self, mut s: RawStream, mut parsed: labels::Labels) -> RawStream {
        let list = &self.opts.discover_service_name;
        let has = |l: &labels::Labels, name: &str| l.iter().any(|(k, _)| k == name);
        let internal = has(&parsed, "__aggregated_metric__") || has(&parsed, "__pattern__");
        if list.is_empty() || internal || has(&parsed, "service_name") {
            return s;
        }
        let value = list
            .iter()
            .find_map(|name| {
                parsed
                    .iter()
                    .find(|(k, v)| k == name && !v.is_empty())
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| "unknown_service".to_string());
        parsed.push(("service_name".into(), value));
        parsed.sort_by(|a, b| a.0.cmp(&b.0));
        s.labels = labels::to_string(&parsed);
        s
    }

    /// The distributor and the ingester; `None` for 204, else the 400 text.
    fn distribute(&self, tenant: &str, streams: Vec<RawStream>) -> Option<String> {
        let now = util::now_nanos();
        let mut errors: Vec<String> = Vec::new();
        let mut valid: Vec<Validated> = Vec::new();
        for s in streams {
            if s.entries.is_empty() {
                continue;
            }
            let ls = match labels::parse(&s.labels) {
                Ok(l) => l,
                Err(e) => {
                    errors.push(format!(
                        "Error parsing labels '{}' with error: {e}",
                        s.labels
                    ));
                    continue;
                }
            };
            if let Err(e) = self.validate_labels(&ls, &s.labels) {
                errors.push(e);
                continue;
            }
            let lbs = labels::to_string(&ls);
            let mut entries = Vec::new();
            for e in s.entries {
                match self.validate_entry(&e, &lbs, now) {
                    Ok(()) => entries.push(e),
                    Err(reason) => errors.push(reason),
                }
            }
            if entries.is_empty() {
                continue;
            }
            valid.push(Validated {
                key: lbs,
                labels: ls.into_iter().collect(),
                entries,
            });
        }
        let validation_error = grouped(&errors);
        if valid.is_empty() {
            return validation_error;
        }
        let mut tenants = lock(&self.tenants);
        let state = tenants.entry(tenant.to_string()).or_default();
        // instance.Push: the error of the last stream wins, even if it is none.
        let mut ingester_error = None;
        for v in valid {
            ingester_error = self.ingest(tenant, state, v);
        }
        ingester_error.or(validation_error)
    }

    fn validate_labels(&self, ls: &labels::Labels, raw: &str) -> std::result::Result<(), String> {
        let o = &self.opts;
        if ls.is_empty() {
            return Err("error at least one label pair is required per stream".into());
        }
        if ls
            .iter()
            .any(|(k, _)| k == "__aggregated_metric__" || k == "__pattern__")
        {
            return Ok(());
        }
        let mut names = ls.len();
        if ls.iter().any(|(k, _)| k == "service_name") {
            names -= 1;
        }
        if names > o.max_label_names_per_series {
            return Err(format!(
                "entry for stream '{raw}' has {names} label names; limit {}",
                o.max_label_names_per_series
            ));
        }
        let mut last = "";
        for (k, v) in ls {
            if k.len() > o.max_label_name_length {
                return Err(format!("stream '{raw}' has label name too long: '{k}'"));
            }
            if v.len() > o.max_label_value_length {
                return Err(format!("stream '{raw}' has label value too long: '{v}'"));
            }
            if k == last {
                return Err(format!("stream '{raw}' has duplicate label name: '{k}'"));
            }
            last = k;
        }
        Ok(())
    }

    fn validate_entry(
        &self,
        e: &RawEntry,
        lbs: &str,
        now: i128,
    ) -> std::result::Result<(), String> {
        let o = &self.opts;
        if let Some(max_age) = o.reject_old_samples_max_age {
            let oldest = now - max_age.as_nanos() as i128;
            if e.ts < oldest {
                return Err(format!(
                    "entry for stream '{lbs}' has timestamp too old: {}, oldest acceptable timestamp is: {}",
                    util::go_rfc3339(e.ts),
                    util::go_rfc3339(oldest)
                ));
            }
        }
        if e.ts > now + o.creation_grace_period.as_nanos() as i128 {
            return Err(format!(
                "entry for stream '{lbs}' has timestamp too new: {}",
                util::go_rfc3339(e.ts)
            ));
        }
        if o.max_line_size != 0 && e.line.len() > o.max_line_size {
            return Err(format!(
                "Max entry size '{}' bytes exceeded for stream '{lbs}' while adding an entry with length '{}' bytes",
                o.max_line_size,
                e.line.len()
            ));
        }
        if !e.metadata.is_empty() {
            if !o.allow_structured_metadata {
                return Err(format!(
                    "stream '{lbs}' includes structured metadata, but this feature is disallowed. Please see `limits_config.allow_structured_metadata` or contact your Loki administrator to enable it."
                ));
            }
            let size: usize = e.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
            if o.max_structured_metadata_size != 0 && size > o.max_structured_metadata_size {
                return Err(format!(
                    "stream '{lbs}' has structured metadata too large: '{size}' bytes, limit: '{}' bytes. Please see `limits_config.max_structured_metadata_size` or contact your Loki administrator to increase it.",
                    o.max_structured_metadata_size
                ));
            }
            let count = e.metadata.len();
            if o.max_structured_metadata_entries_count != 0
                && count > o.max_structured_metadata_entries_count
            {
                return Err(format!(
                    "stream '{lbs}' has too many structured metadata labels: '{count}', limit: '{}'. Please see `limits_config.max_structured_metadata_entries_count` or contact your Loki administrator to increase it.",
                    o.max_structured_metadata_entries_count
                ));
            }
        }
        Ok(())
    }

    /// The ingester's `stream.Push` for one stream; the error text if entries were refused.
    fn ingest(&self, tenant: &str, state: &mut TenantState, v: Validated) -> Option<String> {
        let stream = state.streams.entry(v.key.clone()).or_default();
        let total = v.entries.len();
        let mut failed: Vec<(i128, String)> = Vec::new();
        let mut to_store = Vec::new();
        let mut highest = stream.highest;
        for e in v.entries {
            if stream
                .last
                .as_ref()
                .is_some_and(|(ts, line)| *ts == e.ts && *line == e.line)
            {
                continue;
            }
            if let OrderMode::Unordered { window } = self.opts.order {
                if let Some(h) = highest {
                    let cutoff = h - window.as_nanos() as i128;
                    if e.ts < cutoff {
                        failed.push((
                            e.ts,
                            format!(
                                "entry too far behind, entry timestamp is: {}, oldest acceptable timestamp is: {}",
                                util::go_rfc3339(e.ts),
                                util::go_rfc3339(cutoff)
                            ),
                        ));
                        continue;
                    }
                }
                if highest.is_none_or(|h| h < e.ts) {
                    highest = Some(e.ts);
                }
            }
            to_store.push(e);
        }
        for e in to_store {
            if self.opts.order == OrderMode::Ordered && stream.highest.is_some_and(|h| e.ts < h) {
                failed.push((e.ts, "entry out of order".into()));
                continue;
            }
            stream.last = Some((e.ts, e.line.clone()));
            if stream.highest.is_none_or(|h| h < e.ts) {
                stream.highest = Some(e.ts);
            }
            if !stream.seen.insert((e.ts, line_hash(&e.line))) {
                // An exact duplicate: Loki drops it and reports success.
                self.duplicates_dropped.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            state.accepted += 1;
            if !self.opts.keep_entries {
                continue;
            }
            state.entries.push(LokiEntry {
                labels: v.labels.clone(),
                timestamp_ns: e.ts.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
                line: e.line,
                structured_metadata: e.metadata.into_iter().collect(),
            });
        }
        if failed.is_empty() {
            return None;
        }
        let mut text = String::new();
        let shown = if self.opts.max_returned_stream_errors > 0 {
            self.opts.max_returned_stream_errors
        } else {
            usize::MAX
        };
        for (ts, reason) in failed.iter().take(shown) {
            text.push_str(&format!(
                "entry with timestamp {} ignored, reason: '{reason}',\n",
                util::go_time_string(*ts)
            ));
        }
        text.push_str(&format!(
            "user '{tenant}', total ignored: {} out of {total} for stream: {}",
            failed.len(),
            v.key
        ));
        Some(text)
    }
}

async fn admin(
    app: &Arc<LokiApp>,
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
        (Method::GET, ["entries"]) => h::json(200, &app.all_entries()),
        (Method::GET, ["stats"]) => {
            let count = app.entry_count();
            h::json(
                200,
                &json!({"push_requests": app.push_requests.load(Ordering::SeqCst), "entry_count": count}),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_errors_like_loki() {
        assert_eq!(grouped(&[]), None);
        assert_eq!(grouped(&["a".into()]).as_deref(), Some("a"));
        assert_eq!(
            grouped(&["a".into(), "a".into()]).as_deref(),
            Some("2 errors like: a")
        );
        assert_eq!(
            grouped(&["a".into(), "b".into(), "a".into()]).as_deref(),
            Some("2 errors like: a; 1 errors like: b")
        );
    }

    #[test]
    fn tenants_and_media_types() {
        assert!(validate_tenant("tenant-a").is_ok());
        assert_eq!(
            validate_tenant("a|b").unwrap_err(),
            "multiple org IDs present"
        );
        assert!(validate_tenant("a b")
            .unwrap_err()
            .contains("unsupported character ' '"));
        assert_eq!(parse_media_type("").unwrap_err(), "mime: no media type");
        assert_eq!(
            parse_media_type("Application/JSON; charset=utf-8").as_deref(),
            Ok("application/json")
        );
        assert_eq!(
            parse_media_type("json").unwrap_err(),
            "mime: expected slash after first token"
        );
    }

    #[test]
    fn rfc3339() {
        assert_eq!(
            parse_rfc3339_nanos("1970-01-01T00:00:01.5Z"),
            Some(1_500_000_000)
        );
        assert_eq!(parse_rfc3339_nanos("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_rfc3339_nanos("yesterday"), None);
        assert_eq!(
            parse_int_error("abc"),
            "strconv.ParseInt: parsing \"abc\": invalid syntax"
        );
        assert_eq!(
            parse_int_error("99999999999999999999"),
            "strconv.ParseInt: parsing \"99999999999999999999\": value out of range"
        );
    }
}
