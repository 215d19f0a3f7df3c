//! Per-tenant ingest rules: filters and deterministic sampling, applied by the append path
//! after validation and before the log (bodies in [`weir_proto::api::rules`]).
//!
//! The rules are cluster state, kept like the access keys ([`crate::keytable`]): each
//! version of a rule and each deletion is a named entry of shard 0's raft group, applied
//! on every replica, compacted, snapshotted and replayed with the group:
//!
//! - `\u{2}rule/<tenant>/<id>/<the spec as JSON>` = time it was set (ns);
//! - `\u{2}ruledel/<tenant>/<id>` = time it was deleted (ns);
//! - `\u{2}retention/<tenant>/<days>` = time it was set (ns): the tenant's own retention,
//!   the newest setting winning (0 days: the index's `index.retention_secs`).
//!
//! A rule is the newest version of its `(tenant, id)`, unless a deletion is newer. Every
//! node rebuilds its table from the entries every [`crate::keytable::REFRESH_INTERVAL`],
//! so a change holds on every node within a second of its commit. An entry name holds at
//! most [`weir_raft::CURSOR_NAME_BYTES_MAX`] bytes, which bounds a rule's size (a body
//! regex of about 150 bytes); old versions stay in the applied state (a few hundred bytes
//! each).
//!
//! Sampling hashes the record's content (time, level, service, namespace, pod, cluster,
//! body, trace and span ids; not the tenant, not the node): the same record is kept or
//! dropped the same way on every node and on every retry. A record sent without a time
//! is stamped on arrival, so its retry is a new record to the hash.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use weir_proto::api::rules::{Action, Rule, RuleSpec};
use weir_proto::v1::StoredRecord;
use weir_proto::{ApiError, ErrorKind};
use weir_raft::RaftNode;

use crate::auth::StoreError;
use crate::metrics::LabeledCounters;

const RULE: &str = "\u{2}rule/";
const DELETED: &str = "\u{2}ruledel/";
const RETENTION: &str = "\u{2}retention/";
/// Bytes of a rule id.
pub const RULE_ID_BYTES_MAX: usize = 64;

/// A rule ready to be applied.
#[derive(Debug)]
pub struct Compiled {
    /// The rule as stored.
    pub rule: Rule,
    action: Action,
    /// `rate` as a share of the 64-bit hash space: kept when the hash is below it.
    keep_below: u64,
    keep_all: bool,
    /// Bit `level` set for each level that matches; 0: any.
    levels: u8,
    services: Vec<String>,
    labels: Vec<(String, String)>,
    attributes: Vec<(String, String)>,
    body: Option<regex::Regex>,
}

/// What the rules decided for one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Stored.
    Keep,
    /// Dropped by the filter rule at this position of the tenant's list.
    Filtered(usize),
    /// Dropped by the sampling rule at this position.
    SampledOut(usize),
}

impl Compiled {
    /// Checks and compiles `spec`.
    ///
    /// # Errors
    /// What is wrong with it, naming the field.
    pub fn new(rule: Rule) -> Result<Compiled, String> {
        let spec = &rule.spec;
        if rule.id.is_empty()
            || rule.id.len() > RULE_ID_BYTES_MAX
            || !rule
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(format!(
                "rule id {:?}: 1 to {RULE_ID_BYTES_MAX} of [A-Za-z0-9_.-]",
                rule.id
            ));
        }
        let Some(action) = spec.action else {
            return Err("the rule has no action: \"keep\", \"drop\" or \"sample\"".into());
        };
        let (keep_below, keep_all) = match (action, spec.rate) {
            (Action::Sample, Some(r)) if (0.0..=1.0).contains(&r) => {
                (((r * 2f64.powi(64)).min(u64::MAX as f64)) as u64, r >= 1.0)
            }
            (Action::Sample, Some(r)) => {
                return Err(format!(
                    "rate {r} is not a share from 0 to 1 (0.1 keeps one record in ten)"
                ))
            }
            (Action::Sample, None) => {
                return Err("a \"sample\" rule needs a rate: the share kept, from 0 to 1".into())
            }
            (_, Some(_)) => return Err("only a \"sample\" rule has a rate".into()),
            (_, None) => (0, false),
        };
        let mut levels = 0u8;
        for l in &spec.levels {
            let level = weir_ingest::parse_level(l).map_err(|e| format!("levels: {e}"))?;
            levels |= 1 << (level as u32);
        }
        let body = spec
            .body
            .as_deref()
            .map(|b| {
                regex::RegexBuilder::new(b)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("body is not a regular expression: {e}"))
            })
            .transpose()?;
        Ok(Compiled {
            action,
            keep_below,
            keep_all,
            levels,
            services: spec.services.clone(),
            labels: spec.labels.clone().into_iter().collect(),
            attributes: spec.attributes.clone().into_iter().collect(),
            body,
            rule,
        })
    }

    /// Whether every condition holds for `r`.
    pub fn matches(&self, r: &StoredRecord) -> bool {
        (self.levels == 0 || (r.level < 8 && self.levels & (1 << r.level) != 0))
            && (self.services.is_empty() || self.services.contains(&r.service))
            && self
                .labels
                .iter()
                .all(|(k, v)| r.labels.get(k).is_some_and(|x| x == v))
            && self
                .attributes
                .iter()
                .all(|(k, v)| r.attributes.get(k).is_some_and(|x| x == v))
            && self.body.as_ref().is_none_or(|b| b.is_match(&r.body))
    }

    /// Whether a record this rule matched is stored (for `sample`: by the content hash).
    pub fn keeps(&self, r: &StoredRecord) -> bool {
        match self.action {
            Action::Keep => true,
            Action::Drop => false,
            Action::Sample => self.keep_all || content_hash(r) < self.keep_below,
        }
    }
}

/// Applies the first matching rule of `rules` (in order) to `r`.
pub fn decide(rules: &[Arc<Compiled>], r: &StoredRecord) -> Decision {
    for (i, rule) in rules.iter().enumerate() {
        if rule.matches(r) {
            return match (rule.keeps(r), rule.action) {
                (true, _) => Decision::Keep,
                (false, Action::Sample) => Decision::SampledOut(i),
                (false, _) => Decision::Filtered(i),
            };
        }
    }
    Decision::Keep
}

/// The sampling hash of a record's content: its fields read 8 bytes at a time, each word
/// folded in with a multiply and rotate (FxHash's step), each field closed by its length,
/// and splitmix64's finaliser over the result to spread it evenly. Stable across versions
/// and machines: it decides what is stored, so it must never change.
pub fn content_hash(r: &StoredRecord) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    fn eat(h: &mut u64, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let w = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            *h = (h.rotate_left(5) ^ w).wrapping_mul(K);
        }
        let rest = words.remainder();
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        let end = u64::from_le_bytes(last) ^ ((bytes.len() as u64) << 56);
        *h = (h.rotate_left(5) ^ end).wrapping_mul(K);
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    eat(&mut h, &r.timestamp_ns.to_le_bytes());
    eat(&mut h, &r.level.to_le_bytes());
    for s in [
        &r.service,
        &r.namespace,
        &r.pod,
        &r.cluster,
        &r.body,
        &r.trace_id,
        &r.span_id,
    ] {
        eat(&mut h, s.as_bytes());
    }
    // splitmix64's finaliser.
    let mut z = h;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One tenant's rules, in the order they are tried.
pub type TenantRules = Arc<Vec<Arc<Compiled>>>;

/// The rules of every tenant, as this node last read them, and their counters.
pub struct RuleTable {
    raft: Option<Arc<RaftNode>>,
    by_tenant: RwLock<Arc<HashMap<String, TenantRules>>>,
    built_from: std::sync::Mutex<Vec<(String, u64)>>,
    /// Each tenant's own retention in days, where set (not 0).
    retention: RwLock<Arc<BTreeMap<String, u32>>>,
    /// Bumped whenever the retentions change, so that indexers apply a new one at once.
    retention_version: std::sync::atomic::AtomicU64,
    /// Records dropped by sampling rules, by tenant and rule.
    pub sampled_out: LabeledCounters,
    /// Records dropped by filter rules, by tenant and rule.
    pub filtered: LabeledCounters,
}

impl RuleTable {
    /// The table of `raft`'s shard 0 (none: no rules, ever; for tools and tests).
    pub fn new(raft: Option<Arc<RaftNode>>) -> Arc<RuleTable> {
        let t = Arc::new(RuleTable {
            raft,
            by_tenant: RwLock::default(),
            built_from: std::sync::Mutex::new(vec![(String::new(), u64::MAX)]),
            retention: RwLock::default(),
            retention_version: std::sync::atomic::AtomicU64::new(0),
            sampled_out: LabeledCounters::new(
                "weir_ingest_sampled_out_total",
                "records a tenant's sampling rule did not store, by tenant and rule",
                ("tenant", "rule"),
            ),
            filtered: LabeledCounters::new(
                "weir_ingest_filtered_total",
                "records a tenant's filter rule dropped, by tenant and rule",
                ("tenant", "rule"),
            ),
        });
        t.refresh();
        t
    }

    /// `tenant`'s rules in the order they are tried; `None` when it has none.
    pub fn of(&self, tenant: &str) -> Option<TenantRules> {
        let all = self.by_tenant.read().unwrap_or_else(|p| p.into_inner());
        if all.is_empty() {
            return None;
        }
        all.get(tenant).cloned()
    }

    /// Every rule, by tenant then order.
    pub fn list(&self, tenant: Option<&str>) -> Vec<Rule> {
        let all = self
            .by_tenant
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut tenants: Vec<_> = all
            .iter()
            .filter(|(t, _)| tenant.is_none_or(|x| x == t.as_str()))
            .collect();
        tenants.sort_by(|a, b| a.0.cmp(b.0));
        tenants
            .into_iter()
            .flat_map(|(_, rules)| rules.iter().map(|c| c.rule.clone()))
            .collect()
    }

    /// Drops the records of `records` that `tenant`'s rules do not keep, counting them;
    /// returns how many were dropped.
    pub fn apply(&self, tenant: &str, records: &mut Vec<(u32, StoredRecord)>) -> u64 {
        let Some(rules) = self.of(tenant) else {
            return 0;
        };
        let mut dropped = vec![(0u64, 0u64); rules.len()];
        let before = records.len();
        records.retain(|(_, r)| match decide(&rules, r) {
            Decision::Keep => true,
            Decision::Filtered(i) => {
                dropped[i].0 += 1;
                false
            }
            Decision::SampledOut(i) => {
                dropped[i].1 += 1;
                false
            }
        });
        for (rule, (filtered, sampled)) in rules.iter().zip(dropped) {
            self.filtered.inc(tenant, &rule.rule.id, filtered);
            self.sampled_out.inc(tenant, &rule.rule.id, sampled);
        }
        (before - records.len()) as u64
    }

    /// Reads the applied entries again.
    pub fn refresh(&self) {
        let Some(raft) = &self.raft else {
            return;
        };
        let Some(entries) =
            crate::keytable::changed_entries(raft, &[RULE, DELETED, RETENTION], &self.built_from)
        else {
            return;
        };
        // (tenant, id) -> newest version (time, spec JSON); then deletions.
        let mut newest: BTreeMap<(String, String), (u64, &str)> = BTreeMap::new();
        let mut deleted: HashMap<(String, String), u64> = HashMap::new();
        let mut retention: HashMap<&str, (u64, u32)> = HashMap::new();
        for (name, at) in &entries {
            if let Some((tenant, days)) = name
                .strip_prefix(RETENTION)
                .and_then(|rest| rest.split_once('/'))
            {
                let Ok(days) = days.parse::<u32>() else {
                    continue;
                };
                if retention.get(tenant).is_none_or(|(when, _)| when < at) {
                    retention.insert(tenant, (*at, days));
                }
                continue;
            }
            if let Some(rest) = name.strip_prefix(RULE) {
                let mut parts = rest.splitn(3, '/');
                let (Some(t), Some(id), Some(spec)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let k = (t.to_owned(), id.to_owned());
                if newest.get(&k).is_none_or(|(when, _)| when < at) {
                    newest.insert(k, (*at, spec));
                }
            } else if let Some(rest) = name.strip_prefix(DELETED) {
                if let Some((t, id)) = rest.split_once('/') {
                    let k = (t.to_owned(), id.to_owned());
                    let e = deleted.entry(k).or_default();
                    *e = (*e).max(*at);
                }
            }
        }
        let mut by_tenant: HashMap<String, Vec<Arc<Compiled>>> = HashMap::new();
        for ((tenant, id), (at, spec)) in newest {
            if deleted
                .get(&(tenant.clone(), id.clone()))
                .is_some_and(|d| *d >= at)
            {
                continue;
            }
            let parsed = serde_json::from_str::<RuleSpec>(spec)
                .map_err(|e| e.to_string())
                .and_then(|spec| {
                    Compiled::new(Rule {
                        tenant: tenant.clone(),
                        id: id.clone(),
                        updated_ns: i64::try_from(at).unwrap_or(i64::MAX),
                        spec,
                    })
                });
            match parsed {
                Ok(c) => by_tenant.entry(tenant).or_default().push(Arc::new(c)),
                // Written by a node of another version: skipped here, said once a refresh.
                Err(e) => tracing::warn!(%tenant, rule = %id, error = %e, "ingest rule skipped"),
            }
        }
        let by_tenant = by_tenant
            .into_iter()
            .map(|(t, mut rules)| {
                rules.sort_by(|a, b| {
                    (a.rule.spec.order, &a.rule.id).cmp(&(b.rule.spec.order, &b.rule.id))
                });
                (t, Arc::new(rules))
            })
            .collect();
        *self.by_tenant.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(by_tenant);
        let retention: BTreeMap<String, u32> = retention
            .into_iter()
            .filter(|(_, (_, days))| *days > 0)
            .map(|(t, (_, days))| (t.to_owned(), days))
            .collect();
        let mut current = self.retention.write().unwrap_or_else(|p| p.into_inner());
        if **current != retention {
            *current = Arc::new(retention);
            self.retention_version
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }

    /// Each tenant's own retention in days (tenants without one are not listed).
    pub fn retentions(&self) -> Arc<BTreeMap<String, u32>> {
        self.retention
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes whenever [`RuleTable::retentions`] does.
    pub fn retention_version(&self) -> u64 {
        self.retention_version
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sets `tenant`'s retention to `days` (0: the index's own).
    ///
    /// # Errors
    /// As [`RuleTable::set`].
    pub async fn set_retention(&self, tenant: &str, days: u32) -> Result<(), StoreError> {
        self.propose(&format!("{RETENTION}{tenant}/{days}"), weir_proto::now_ns())
            .await
    }

    /// Refreshes every [`crate::keytable::REFRESH_INTERVAL`] until `stop` turns true.
    pub fn spawn_refresher(
        self: &Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::keytable::REFRESH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => me.refresh(),
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        })
    }

    /// Sets rule `id` of `tenant` to `spec` (checked first).
    ///
    /// # Errors
    /// Invalid for a bad rule; NotLeader off shard 0's leader; Unavailable without a
    /// commit.
    pub async fn set(&self, tenant: &str, id: &str, spec: RuleSpec) -> Result<Rule, StoreError> {
        let now = weir_proto::now_ns();
        let rule = Rule {
            tenant: tenant.to_owned(),
            id: id.to_owned(),
            updated_ns: now,
            spec,
        };
        Compiled::new(rule.clone()).map_err(StoreError::Invalid)?;
        let json =
            serde_json::to_string(&rule.spec).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let name = format!("{RULE}{tenant}/{id}/{json}");
        if name.len() > weir_raft::CURSOR_NAME_BYTES_MAX {
            return Err(StoreError::Invalid(format!(
                "the rule takes {} bytes, more than a rule may ({} bytes for tenant, id and \
                 conditions): shorten its body regex or split it into several rules",
                name.len(),
                weir_raft::CURSOR_NAME_BYTES_MAX
            )));
        }
        self.propose(&name, now).await?;
        Ok(rule)
    }

    /// Deletes rule `id` of `tenant`.
    ///
    /// # Errors
    /// NotFound when it has no such rule; as [`RuleTable::set`] otherwise.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<Rule, StoreError> {
        let Some(rule) = self.list(Some(tenant)).into_iter().find(|r| r.id == id) else {
            return Err(StoreError::NotFound(format!(
                "rule {id} of tenant {tenant}"
            )));
        };
        self.propose(&format!("{DELETED}{tenant}/{id}"), weir_proto::now_ns())
            .await?;
        Ok(rule)
    }

    async fn propose(&self, name: &str, at: i64) -> Result<(), StoreError> {
        let Some(raft) = &self.raft else {
            return Err(StoreError::Unavailable("this node keeps no rules".into()));
        };
        crate::keytable::propose_entry(raft, name, u64::try_from(at).unwrap_or(0)).await?;
        self.refresh();
        Ok(())
    }
}

/// The error a rule store refusal is answered with.
pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(what) => ApiError::new(ErrorKind::NotFound, format!("no {what}")),
        other => ApiError::from(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(order: u32, action: Action, rate: Option<f64>) -> RuleSpec {
        RuleSpec {
            order,
            action: Some(action),
            rate,
            ..Default::default()
        }
    }

    fn compiled(id: &str, spec: RuleSpec) -> Arc<Compiled> {
        Arc::new(
            Compiled::new(Rule {
                tenant: "t".into(),
                id: id.into(),
                updated_ns: 0,
                spec,
            })
            .unwrap(),
        )
    }

    fn rec(i: i64, level: weir_proto::Level, service: &str) -> StoredRecord {
        StoredRecord {
            timestamp_ns: 1_700_000_000_000_000_000 + i * 1000,
            level: level as u32,
            service: service.into(),
            body: format!("request {i} done"),
            ..Default::default()
        }
    }

    /// The tiered pipeline users asked for: errors always, warn at a rate, info per
    /// service, debug only for listed services.
    #[test]
    fn the_first_matching_rule_decides_and_sampling_keeps_its_share() {
        use weir_proto::Level as L;
        let rules = vec![
            compiled(
                "errors",
                RuleSpec {
                    levels: vec!["error".into(), "fatal".into()],
                    ..rule(10, Action::Keep, None)
                },
            ),
            compiled(
                "warn",
                RuleSpec {
                    levels: vec!["warn".into()],
                    ..rule(20, Action::Sample, Some(0.5))
                },
            ),
            compiled(
                "info-payment",
                RuleSpec {
                    levels: vec!["info".into()],
                    services: vec!["payment-api".into()],
                    ..rule(30, Action::Sample, Some(0.1))
                },
            ),
            compiled(
                "debug-checkout",
                RuleSpec {
                    levels: vec!["debug".into()],
                    services: vec!["checkout".into()],
                    ..rule(40, Action::Keep, None)
                },
            ),
            compiled(
                "debug",
                RuleSpec {
                    levels: vec!["debug".into()],
                    ..rule(50, Action::Drop, None)
                },
            ),
        ];
        let n = 20_000;
        let count = |level, service| {
            (0..n)
                .filter(|i| decide(&rules, &rec(*i, level, service)) == Decision::Keep)
                .count() as f64
        };
        assert_eq!(count(L::Error, "payment-api"), n as f64);
        assert_eq!(count(L::Fatal, "x"), n as f64);
        assert_eq!(count(L::Debug, "checkout"), n as f64);
        assert_eq!(count(L::Debug, "payment-api"), 0.0);
        assert_eq!(count(L::Info, "other"), n as f64);
        // Binomial: 5 standard deviations either side.
        for (level, service, p) in [(L::Warn, "x", 0.5), (L::Info, "payment-api", 0.1)] {
            let kept = count(level, service);
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (kept - n as f64 * p).abs() < 5.0 * sd,
                "{level:?}: kept {kept} of {n}, want {p}"
            );
        }
        assert_eq!(
            decide(&rules, &rec(1, L::Debug, "a")),
            Decision::Filtered(4)
        );
    }

    #[test]
    fn the_same_record_gets_the_same_decision_and_the_hash_is_pinned() {
        let r = rec(7, weir_proto::Level::Info, "payment-api");
        // Pinned: the hash decides what is stored, so it must not change across versions.
        assert_eq!(format!("{:016x}", content_hash(&r)), PINNED_INFO_7);
        assert_eq!(
            format!("{:016x}", content_hash(&StoredRecord::default())),
            PINNED_EMPTY
        );
        assert_ne!(
            content_hash(&r),
            content_hash(&rec(8, weir_proto::Level::Info, "payment-api"))
        );
    }

    const PINNED_EMPTY: &str = "f3313c5f44e55ae9";
    const PINNED_INFO_7: &str = "8e00e46b7c9e8a0d";

    #[test]
    fn bad_rules_are_refused_naming_the_field() {
        let bad = |spec: RuleSpec, id: &str, want: &str| {
            let e = Compiled::new(Rule {
                tenant: "t".into(),
                id: id.into(),
                updated_ns: 0,
                spec,
            })
            .unwrap_err();
            assert!(e.contains(want), "{e}");
        };
        bad(rule(0, Action::Sample, None), "a", "needs a rate");
        bad(rule(0, Action::Sample, Some(1.5)), "a", "share from 0 to 1");
        bad(rule(0, Action::Drop, Some(0.5)), "a", "only a \"sample\"");
        bad(RuleSpec::default(), "a", "no action");
        bad(rule(0, Action::Drop, None), "a/b", "rule id");
        bad(
            RuleSpec {
                levels: vec!["loud".into()],
                ..rule(0, Action::Drop, None)
            },
            "a",
            "levels",
        );
        bad(
            RuleSpec {
                body: Some("(".into()),
                ..rule(0, Action::Drop, None)
            },
            "a",
            "body is not a regular expression",
        );
    }

    #[test]
    fn labels_attributes_and_body_must_all_hold() {
        let r = compiled(
            "x",
            RuleSpec {
                labels: [("env".to_owned(), "prod".to_owned())].into(),
                attributes: [("route".to_owned(), "/health".to_owned())].into(),
                body: Some("^GET ".into()),
                ..rule(0, Action::Drop, None)
            },
        );
        let mut rec = StoredRecord {
            body: "GET /health 200".into(),
            ..Default::default()
        };
        rec.labels.insert("env".into(), "prod".into());
        rec.attributes.insert("route".into(), "/health".into());
        assert!(r.matches(&rec));
        rec.body = "POST /health".into();
        assert!(!r.matches(&rec));
        rec.body = "GET /x".into();
        rec.attributes.insert("route".into(), "/x".into());
        assert!(!r.matches(&rec));
    }
}
