//! Per-tenant limits: ingest rate (lines and bytes, token buckets with a burst), active
//! streams, and the range, time and concurrency of queries.
//!
//! Every tenant has `[tenant_limits]` (0 everywhere: no limit), and a `[[tenants]]` table
//! overrides any of them for one tenant. A request over a limit is refused whole, naming
//! the tenant, the limit and its key: HTTP 429 with `Retry-After` (the time the bucket
//! needs to hold the batch) or gRPC `RESOURCE_EXHAUSTED`. Nothing of it is stored, so a
//! client that retries loses nothing; refusals are counted per tenant and limit
//! (`weir_tenant_limited_total`).
//!
//! The ingest rates are for the whole cluster. As Loki's distributors do, each node
//! enforces its share, the configured rate divided by the number of members, so agents
//! spread over the nodes get the whole rate; the burst is each node's own. Active streams
//! are counted by each node over what it receives (a stream sent to every node counts on
//! each): `streams_max` bounds what one node tracks for a tenant.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weir_proto::v1::StoredRecord;
use weir_proto::{ApiError, ErrorKind};

/// A stream counts as active this long after its last record.
pub const STREAM_IDLE: Duration = Duration::from_secs(30 * 60);

/// Tenants whose ingest state a node keeps before it forgets the idle ones.
const TENANT_STATES_MAX: usize = 10_000;

/// `[tenant_limits]`: the limits of every tenant; `0` means none. `[[tenants]]` tables
/// override them one tenant at a time.
///
/// ```toml
/// [tenant_limits]
/// ingest_lines_per_sec = 50000
///
/// [[tenants]]
/// name = "acme"
/// ingest_lines_per_sec = 2000
/// streams_max = 5000
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantLimits {
    /// Lines per second the cluster accepts for the tenant (each node: its share).
    pub ingest_lines_per_sec: u64,
    /// Bytes per second (bodies, labels and attributes) the cluster accepts for the tenant.
    pub ingest_bytes_per_sec: u64,
    /// Lines a node accepts at once above its share of the rate; 0: one second of the
    /// cluster-wide rate. A batch larger than this is refused as too large.
    pub ingest_lines_burst: u64,
    /// Bytes a node accepts at once above its share; 0: one second of the rate.
    pub ingest_bytes_burst: u64,
    /// Streams (distinct service, namespace, pod, cluster and labels) active at once on a
    /// node; a batch that would open one more is refused.
    pub streams_max: u64,
    /// Longest time range one query of the tenant may span; 0: `query.range_hours_max`.
    pub query_range_hours_max: u64,
    /// Time one query of the tenant may run; 0: `query.timeout_ms`.
    pub query_timeout_ms: u64,
    /// Queries of the tenant running at once on a node; one more is refused (429). 0: only
    /// the node-wide `query.concurrent_max` applies.
    pub queries_concurrent_max: u64,
}

/// One `[[tenants]]` table: a tenant's own limits where they differ from the defaults.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantOverride {
    /// The tenant.
    pub name: String,
    /// See [`TenantLimits::ingest_lines_per_sec`].
    pub ingest_lines_per_sec: Option<u64>,
    /// See [`TenantLimits::ingest_bytes_per_sec`].
    pub ingest_bytes_per_sec: Option<u64>,
    /// See [`TenantLimits::ingest_lines_burst`].
    pub ingest_lines_burst: Option<u64>,
    /// See [`TenantLimits::ingest_bytes_burst`].
    pub ingest_bytes_burst: Option<u64>,
    /// See [`TenantLimits::streams_max`].
    pub streams_max: Option<u64>,
    /// See [`TenantLimits::query_range_hours_max`].
    pub query_range_hours_max: Option<u64>,
    /// See [`TenantLimits::query_timeout_ms`].
    pub query_timeout_ms: Option<u64>,
    /// See [`TenantLimits::queries_concurrent_max`].
    pub queries_concurrent_max: Option<u64>,
}

impl TenantOverride {
    fn apply(&self, base: &TenantLimits) -> TenantLimits {
        TenantLimits {
            ingest_lines_per_sec: self
                .ingest_lines_per_sec
                .unwrap_or(base.ingest_lines_per_sec),
            ingest_bytes_per_sec: self
                .ingest_bytes_per_sec
                .unwrap_or(base.ingest_bytes_per_sec),
            ingest_lines_burst: self.ingest_lines_burst.unwrap_or(base.ingest_lines_burst),
            ingest_bytes_burst: self.ingest_bytes_burst.unwrap_or(base.ingest_bytes_burst),
            streams_max: self.streams_max.unwrap_or(base.streams_max),
            query_range_hours_max: self
                .query_range_hours_max
                .unwrap_or(base.query_range_hours_max),
            query_timeout_ms: self.query_timeout_ms.unwrap_or(base.query_timeout_ms),
            queries_concurrent_max: self
                .queries_concurrent_max
                .unwrap_or(base.queries_concurrent_max),
        }
    }
}

/// Where a limit a refusal names is set for `tenant`: its `[[tenants]]` table when it has
/// one, else `[tenant_limits]`.
fn key_of(overridden: bool, field: &str) -> String {
    if overridden {
        format!("[[tenants]] {field}")
    } else {
        format!("tenant_limits.{field}")
    }
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + rate * elapsed).min(burst);
        self.at = now;
    }

    /// How long until `n` tokens are there (zero: now).
    fn wait_for(&self, n: f64, rate: f64) -> Duration {
        if n <= self.tokens {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(((n - self.tokens) / rate).min(3600.0))
        }
    }
}

/// One tenant's ingest state on this node.
#[derive(Debug)]
struct TenantState {
    lines: Bucket,
    bytes: Bucket,
    /// Active streams: hash -> last record.
    streams: HashMap<u64, Instant>,
    used: Instant,
}

/// A tenant's limits as this node enforces them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Effective<'a> {
    /// The limits.
    pub limits: &'a TenantLimits,
    /// Whether they come from a `[[tenants]]` table.
    pub overridden: bool,
}

impl Effective<'_> {
    /// The config key of `field` for this tenant (for refusals).
    pub fn key(&self, field: &str) -> String {
        key_of(self.overridden, field)
    }
}

/// Enforces the limits of every tenant on this node.
pub struct TenantLimiter {
    defaults: TenantLimits,
    overrides: HashMap<String, TenantLimits>,
    /// The cluster's members: each node takes this share of a rate.
    members: u64,
    ingest: Mutex<HashMap<String, TenantState>>,
    queries: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Refusals by tenant and limit.
    pub refused: crate::metrics::LabeledCounters,
}

impl TenantLimiter {
    /// A limiter for a cluster of `members` nodes.
    ///
    /// # Errors
    /// A tenant has two `[[tenants]]` tables, or one without a name.
    pub fn new(
        defaults: TenantLimits,
        overrides: &[TenantOverride],
        members: usize,
    ) -> anyhow::Result<TenantLimiter> {
        let mut by_name = HashMap::new();
        for o in overrides {
            if o.name.is_empty() {
                anyhow::bail!("a [[tenants]] table has no name: set name = \"<tenant>\"");
            }
            if by_name.insert(o.name.clone(), o.apply(&defaults)).is_some() {
                anyhow::bail!("tenant {:?} has two [[tenants]] tables", o.name);
            }
        }
        Ok(TenantLimiter {
            defaults,
            overrides: by_name,
            members: members.max(1) as u64,
            ingest: Mutex::default(),
            queries: Mutex::default(),
            refused: crate::metrics::LabeledCounters::new(
                "weir_tenant_limited_total",
                "requests refused for a tenant over one of its limits, by tenant and limit",
                ("tenant", "limit"),
            ),
        })
    }

    /// No limits at all (tests, tools).
    pub fn unlimited() -> TenantLimiter {
        TenantLimiter::new(TenantLimits::default(), &[], 1).unwrap_or_else(|_| unreachable!())
    }

    /// `tenant`'s limits.
    pub fn of(&self, tenant: &str) -> Effective<'_> {
        match self.overrides.get(tenant) {
            Some(l) => Effective {
                limits: l,
                overridden: true,
            },
            None => Effective {
                limits: &self.defaults,
                overridden: false,
            },
        }
    }

    fn refuse(&self, tenant: &str, limit: &str, e: ApiError) -> ApiError {
        self.refused.inc(tenant, limit, 1);
        e
    }

    /// Admits `records` of `tenant` under its rate and stream limits, or refuses them all.
    ///
    /// # Errors
    /// ResourceExhausted (retry after the time it names) over a rate or the streams;
    /// InvalidArgument for a batch larger than the burst, which no wait admits.
    pub fn admit(&self, tenant: &str, records: &[(u32, StoredRecord)]) -> Result<(), ApiError> {
        let eff = self.of(tenant);
        let l = eff.limits;
        if l.ingest_lines_per_sec == 0 && l.ingest_bytes_per_sec == 0 && l.streams_max == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let lines = records.len() as f64;
        let bytes = if l.ingest_bytes_per_sec > 0 {
            records.iter().map(|(_, r)| record_bytes(r)).sum::<u64>() as f64
        } else {
            0.0
        };
        let streams: HashSet<u64> = if l.streams_max > 0 {
            records.iter().map(|(_, r)| stream_hash(r)).collect()
        } else {
            HashSet::new()
        };
        let mut all = self.ingest.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() >= TENANT_STATES_MAX && !all.contains_key(tenant) {
            all.retain(|_, s| now.saturating_duration_since(s.used) < STREAM_IDLE);
        }
        let rate = |per_sec: u64| per_sec as f64 / self.members as f64;
        let burst = |b: u64, per_sec: u64| if b == 0 { per_sec } else { b } as f64;
        let (lines_burst, bytes_burst) = (
            burst(l.ingest_lines_burst, l.ingest_lines_per_sec),
            burst(l.ingest_bytes_burst, l.ingest_bytes_per_sec),
        );
        let st = all.entry(tenant.to_owned()).or_insert_with(|| TenantState {
            lines: Bucket::full(lines_burst, now),
            bytes: Bucket::full(bytes_burst, now),
            streams: HashMap::new(),
            used: now,
        });
        st.used = now;
        for (per_sec, burst, n, what, field, field_burst, bucket) in [
            (
                l.ingest_lines_per_sec,
                lines_burst,
                lines,
                "lines",
                "ingest_lines_per_sec",
                "ingest_lines_burst",
                &mut st.lines,
            ),
            (
                l.ingest_bytes_per_sec,
                bytes_burst,
                bytes,
                "bytes",
                "ingest_bytes_per_sec",
                "ingest_bytes_burst",
                &mut st.bytes,
            ),
        ] {
            if per_sec == 0 {
                continue;
            }
            if n > burst {
                return Err(self.refuse(
                    tenant,
                    field_burst,
                    ApiError::invalid(format!(
                        "a batch of {n} {what} is more than tenant {tenant:?} may send at once \
                         ({burst} {what}, {}): send smaller batches, or raise the burst",
                        eff.key(field_burst)
                    )),
                ));
            }
            bucket.refill(rate(per_sec), burst, now);
            let wait = bucket.wait_for(n, rate(per_sec));
            if !wait.is_zero() {
                return Err(self.refuse(
                    tenant,
                    field,
                    ApiError::new(
                        ErrorKind::ResourceExhausted,
                        format!(
                            "tenant {tenant:?} is over its ingest rate of {per_sec} {what}/s \
                             ({}; this node's share: {:.0}/s): retry in {} ms; nothing of \
                             this batch was stored",
                            eff.key(field),
                            rate(per_sec),
                            wait.as_millis().max(1)
                        ),
                    )
                    .retry_after(wait),
                ));
            }
        }
        if l.streams_max > 0 {
            let new = streams
                .iter()
                .filter(|h| !st.streams.contains_key(h))
                .count() as u64;
            if new > 0 && st.streams.len() as u64 + new > l.streams_max {
                st.streams
                    .retain(|_, seen| now.saturating_duration_since(*seen) < STREAM_IDLE);
            }
            let active = st.streams.len() as u64;
            if new > 0 && active + new > l.streams_max {
                return Err(self.refuse(
                    tenant,
                    "streams_max",
                    ApiError::new(
                        ErrorKind::ResourceExhausted,
                        format!(
                            "tenant {tenant:?} has {active} active streams on this node and \
                             this batch opens {new} more, over its limit of {} ({}); a stream \
                             stops counting {} min after its last record. Nothing of this \
                             batch was stored",
                            l.streams_max,
                            eff.key("streams_max"),
                            STREAM_IDLE.as_secs() / 60
                        ),
                    )
                    .retry_after(Duration::from_secs(60)),
                ));
            }
        }
        // Admitted: take the tokens and mark the streams.
        if l.ingest_lines_per_sec > 0 {
            st.lines.tokens -= lines;
        }
        if l.ingest_bytes_per_sec > 0 {
            st.bytes.tokens -= bytes;
        }
        for h in streams {
            st.streams.insert(h, now);
        }
        Ok(())
    }

    /// Checks a query of `tenant` over `[start_ns, end_ns)` against its range limit
    /// (`node_max_hours`: `query.range_hours_max`, which also applies).
    ///
    /// # Errors
    /// InvalidArgument naming the tenant's limit.
    pub fn check_range(
        &self,
        tenant: &str,
        start_ns: i64,
        end_ns: i64,
        node_max_hours: u64,
    ) -> Result<(), ApiError> {
        let eff = self.of(tenant);
        let max = eff.limits.query_range_hours_max;
        if max == 0 || max >= node_max_hours {
            return Ok(());
        }
        let span = end_ns.saturating_sub(start_ns);
        let hours = span as f64 / 3.6e12;
        if span
            > i64::try_from(max)
                .unwrap_or(i64::MAX / 4)
                .saturating_mul(3_600_000_000_000)
        {
            return Err(self.refuse(
                tenant,
                "query_range_hours_max",
                ApiError::invalid(format!(
                    "the query time range of {hours:.1}h is longer than tenant {tenant:?} may \
                     query ({max}h, {}): narrow the range",
                    eff.key("query_range_hours_max")
                )),
            ));
        }
        Ok(())
    }

    /// How long a query of `tenant` may run (`node_ms`: `query.timeout_ms`, the most).
    pub fn query_timeout(&self, tenant: &str, node_ms: u64) -> (Duration, String) {
        let eff = self.of(tenant);
        let own = eff.limits.query_timeout_ms;
        if own == 0 || own >= node_ms {
            (Duration::from_millis(node_ms), "query.timeout_ms".into())
        } else {
            (Duration::from_millis(own), eff.key("query_timeout_ms"))
        }
    }

    /// A slot for one query of `tenant`, held while it runs.
    ///
    /// # Errors
    /// ResourceExhausted when the tenant has its limit of queries running on this node.
    pub fn query_slot(&self, tenant: &str) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        let eff = self.of(tenant);
        let max = eff.limits.queries_concurrent_max;
        if max == 0 {
            return Ok(None);
        }
        let sem = {
            let mut all = self.queries.lock().unwrap_or_else(|p| p.into_inner());
            if all.len() >= TENANT_STATES_MAX {
                // Idle tenants' semaphores: nobody holds a permit.
                all.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() == 0);
            }
            all.entry(tenant.to_owned())
                .or_insert_with(|| {
                    Arc::new(Semaphore::new(usize::try_from(max).unwrap_or(usize::MAX)))
                })
                .clone()
        };
        sem.try_acquire_owned().map(Some).map_err(|_| {
            self.refuse(
                tenant,
                "queries_concurrent_max",
                ApiError::new(
                    ErrorKind::ResourceExhausted,
                    format!(
                        "tenant {tenant:?} has {max} queries running on this node, its limit \
                         ({}): retry when one ends",
                        eff.key("queries_concurrent_max")
                    ),
                )
                .retry_after(Duration::from_secs(1)),
            )
        })
    }
}

impl TenantLimiter {
    /// Runs `work`, one query of `tenant` over `range` (when known), under the tenant's
    /// limits: its range, a slot among its concurrent queries, and its time (`query` holds
    /// the node-wide timeout; the node-wide range limit is LogQL's and is not applied here).
    ///
    /// # Errors
    /// The tenant's refusals; Unavailable (503) past the time limit; `work`'s own errors.
    pub async fn query<T>(
        &self,
        tenant: &str,
        range: Option<(i64, i64)>,
        query: &crate::config::QueryConfig,
        work: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        if let Some((start, end)) = range {
            self.check_range(tenant, start, end, u64::MAX)?;
        }
        let _slot = self.query_slot(tenant)?;
        let (timeout, key) = self.query_timeout(tenant, query.timeout_ms);
        tokio::time::timeout(timeout, work).await.map_err(|_| {
            ApiError::new(
                ErrorKind::Unavailable,
                format!(
                    "the query ran past its timeout of {} ms ({key}); narrow the query or the \
                     time range",
                    timeout.as_millis()
                ),
            )
        })?
    }
}

/// The bytes a record counts for against a byte rate: body, labels and attributes.
pub fn record_bytes(r: &StoredRecord) -> u64 {
    let kv = |m: &std::collections::BTreeMap<String, String>| {
        m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    };
    (r.body.len() + kv(&r.labels) + kv(&r.attributes)) as u64
}

/// A record's stream: service, namespace, pod, cluster and labels (in name order).
pub fn stream_hash(r: &StoredRecord) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&r.service, &r.namespace, &r.pod, &r.cluster).hash(&mut h);
    if !r.labels.is_empty() {
        // An ordered map: the labels hash in name order.
        r.labels.hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(service: &str, body: &str) -> (u32, StoredRecord) {
        (
            0,
            StoredRecord {
                service: service.into(),
                body: body.into(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn a_tenant_over_its_line_rate_is_refused_with_a_wait_and_another_is_not() {
        let l = TenantLimiter::new(
            TenantLimits::default(),
            &[TenantOverride {
                name: "acme".into(),
                ingest_lines_per_sec: Some(100),
                ..Default::default()
            }],
            1,
        )
        .unwrap();
        let batch: Vec<_> = (0..60).map(|_| rec("a", "x")).collect();
        l.admit("acme", &batch).unwrap();
        let e = l.admit("acme", &batch).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ResourceExhausted);
        assert!(
            e.message.contains("[[tenants]] ingest_lines_per_sec"),
            "{e}"
        );
        let wait = e.retry_after.unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(210),
            "{wait:?}"
        );
        // Others are not limited; the refusal took nothing from acme's bucket.
        for _ in 0..100 {
            l.admit("beta", &batch).unwrap();
        }
        assert_eq!(l.refused.get("acme", "ingest_lines_per_sec"), 1);
        // Larger than the burst: no wait helps.
        let big: Vec<_> = (0..101).map(|_| rec("a", "x")).collect();
        let e = l.admit("acme", &big).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("ingest_lines_burst"), "{e}");
    }

    #[test]
    fn the_cluster_rate_is_shared_between_the_members() {
        let defaults = TenantLimits {
            ingest_bytes_per_sec: 3000,
            ingest_bytes_burst: 10_000,
            ..Default::default()
        };
        let l = TenantLimiter::new(defaults, &[], 3).unwrap();
        let b = vec![rec("a", &"x".repeat(1000))];
        for _ in 0..10 {
            l.admit("t", &b).unwrap();
        }
        let e = l.admit("t", &b).unwrap_err();
        assert!(
            e.message.contains("tenant_limits.ingest_bytes_per_sec"),
            "{e}"
        );
        assert!(e.message.contains("share: 1000/s"), "{e}");
        let wait = e.retry_after.unwrap();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }

    #[test]
    fn a_batch_opening_streams_past_the_limit_is_refused_and_known_streams_still_flow() {
        let defaults = TenantLimits {
            streams_max: 2,
            ..Default::default()
        };
        let l = TenantLimiter::new(defaults, &[], 1).unwrap();
        l.admit("t", &[rec("a", "1"), rec("b", "2"), rec("a", "3")])
            .unwrap();
        let e = l.admit("t", &[rec("a", "1"), rec("c", "2")]).unwrap_err();
        assert!(
            e.message.contains("2 active streams") && e.message.contains("streams_max"),
            "{e}"
        );
        l.admit("t", &[rec("b", "4")]).unwrap();
        l.admit("u", &[rec("c", "1"), rec("d", "1")]).unwrap();
    }

    #[test]
    fn query_slots_and_ranges_follow_the_tenant() {
        let l = TenantLimiter::new(
            TenantLimits {
                queries_concurrent_max: 1,
                query_range_hours_max: 24,
                query_timeout_ms: 5000,
                ..Default::default()
            },
            &[TenantOverride {
                name: "big".into(),
                queries_concurrent_max: Some(0),
                query_range_hours_max: Some(0),
                ..Default::default()
            }],
            1,
        )
        .unwrap();
        let held = l.query_slot("a").unwrap();
        assert!(held.is_some());
        let e = l.query_slot("a").unwrap_err();
        assert!(
            e.message.contains("tenant_limits.queries_concurrent_max"),
            "{e}"
        );
        assert!(l.query_slot("b").unwrap().is_some());
        drop(held);
        assert!(l.query_slot("a").unwrap().is_some());
        assert!(l.query_slot("big").unwrap().is_none());
        let h = 3_600_000_000_000i64;
        l.check_range("a", 0, 24 * h, 721).unwrap();
        let e = l.check_range("a", 0, 25 * h, 721).unwrap_err();
        assert!(
            e.message.contains("tenant_limits.query_range_hours_max"),
            "{e}"
        );
        l.check_range("big", 0, 700 * h, 721).unwrap();
        assert_eq!(l.query_timeout("a", 60_000).0, Duration::from_secs(5));
        assert_eq!(l.query_timeout("big", 60_000).0, Duration::from_secs(5));
        assert_eq!(l.query_timeout("a", 1000).0, Duration::from_secs(1));
    }
}
