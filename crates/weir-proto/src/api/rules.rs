//! Per-tenant ingest rules (admin scope): which records a tenant's ingest keeps, drops or
//! samples, decided at ingest before the log.
//!
//! - `GET /api/v1/rules` (`?tenant=acme` for one tenant): [`RulesResponse`].
//! - `PUT /api/v1/rules/{tenant}/{id}` with a [`RuleSpec`]: the stored [`Rule`].
//! - `DELETE /api/v1/rules/{tenant}/{id}`: the deleted [`Rule`].
//! - `POST /api/v1/rules/{tenant}/{id}/dry-run` with a [`RuleSpec`]: [`DryRunResponse`],
//!   what the rule would have dropped of the last hour's records had it been in place.
//! - `GET /api/v1/retention`: [`RetentionResponse`]; `PUT /api/v1/retention/{tenant}` with
//!   a [`RetentionSpec`]: a tenant's own retention, shorter than the index's.
//!
//! A tenant's rules are tried in ascending `order` (then id) and the first whose
//! conditions all hold decides: `keep`, `drop`, or `sample` (keep a share `rate` of the
//! matching records, by a hash of each record's content, so that a retried or replayed
//! record is decided the same way on every node). A record no rule matches is kept.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a rule does with the records it matches.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Store them (and stop: later rules are not tried).
    Keep,
    /// Do not store them.
    Drop,
    /// Store the share `rate` of them.
    Sample,
}

/// A rule as a client writes it. Every condition given must hold for a record to match;
/// none given matches every record.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Rules are tried in ascending order.
    #[serde(default)]
    pub order: u32,
    /// What happens to a matching record.
    pub action: Option<Action>,
    /// For `sample`: the share kept, from 0 to 1 (0.1 keeps one record in ten).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// The record's level is one of these (`trace` .. `fatal`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub levels: Vec<String>,
    /// The record's service (OTLP `service.name`, Loki `service_name`/`app`) is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Each stream label has this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Each attribute (OTLP attribute, structured metadata) has this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// The body matches this regular expression (RE2 syntax, unanchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// A rule in effect.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Rule {
    /// The tenant whose ingest it applies to.
    pub tenant: String,
    /// Its name within the tenant.
    pub id: String,
    /// When it was last set, ns since the epoch.
    pub updated_ns: i64,
    /// What it does.
    #[serde(flatten)]
    pub spec: RuleSpec,
}

/// `GET /api/v1/rules`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct RulesResponse {
    /// By tenant, then in the order they are tried.
    pub rules: Vec<Rule>,
}

/// `POST /api/v1/rules/{tenant}/{id}/dry-run`: the rule, put in place of the rule of that
/// id (or added), applied to the tenant's stored records of a time range.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct DryRunResponse {
    /// The range read, ns since the epoch (start inclusive, end exclusive).
    pub start_ns: i64,
    /// End of the range.
    pub end_ns: i64,
    /// Stored records read.
    pub records: u64,
    /// Records this rule would decide (the first rule to match them).
    pub matched: u64,
    /// Of those, the records it would drop (for `sample`: by the same hash ingest uses).
    pub would_drop: u64,
    /// The read stopped at its limit of records before the range's end: the counts are
    /// of the newest `records` only.
    pub truncated: bool,
    /// Records already dropped by rules at ingest are not stored and not counted here.
    pub note: String,
}

/// `PUT /api/v1/retention/{tenant}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RetentionSpec {
    /// Days the tenant's records are kept; 0: as long as the index keeps every record
    /// (`index.retention_secs`).
    pub days: u32,
}

/// One tenant's retention.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TenantRetention {
    /// The tenant.
    pub tenant: String,
    /// Days its records are kept.
    pub days: u32,
}

/// `GET /api/v1/retention`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct RetentionResponse {
    /// Days the index keeps every record (`index.retention_secs`), 0: forever.
    pub default_days: f64,
    /// The tenants with a retention of their own.
    pub tenants: Vec<TenantRetention>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_round_trips_with_its_spec_flattened() {
        let r = Rule {
            tenant: "acme".into(),
            id: "info-payment".into(),
            updated_ns: 5,
            spec: RuleSpec {
                order: 30,
                action: Some(Action::Sample),
                rate: Some(0.1),
                levels: vec!["info".into()],
                services: vec!["payment-api".into()],
                ..Default::default()
            },
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(
            j,
            r#"{"tenant":"acme","id":"info-payment","updated_ns":5,"order":30,"action":"sample","rate":0.1,"levels":["info"],"services":["payment-api"]}"#
        );
        assert_eq!(serde_json::from_str::<Rule>(&j).unwrap(), r);
        assert!(serde_json::from_str::<RuleSpec>(r#"{"action":"drop","level":"x"}"#).is_err());
    }
}
