//! Access keys and tenants (admin scope, operator keys only):
//!
//! - `POST /api/v1/keys` with a [`CreateKeyRequest`]: [`CreatedKey`] (the secret, once).
//! - `GET /api/v1/keys`: [`KeysResponse`].
//! - `DELETE /api/v1/keys/{id}`: the revoked key's [`KeyInfo`].
//! - `GET /api/v1/tenants`: [`TenantsResponse`].
//!
//! A key is `weir_<id>_<secret>`: the id is public (it shows in logs, listings and
//! errors), the secret is 256 random bits that the node keeps only as a SHA-256 hash.

use serde::{Deserialize, Serialize};

/// What a key allows. Each API route needs exactly one of them (or none, for health).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every ingest path: gRPC Append and OTLP, OTLP/HTTP, Loki push, Elasticsearch bulk.
    Write,
    /// Every query path: search, labels, histogram, tail, Loki and Elasticsearch reads,
    /// the caller's own dead letters.
    Read,
    /// Keys, tenants, cluster status, metrics, dead-letter replay. Only keys that
    /// belong to every tenant (operator keys) may carry it.
    Admin,
}

impl Scope {
    /// Every scope, in order.
    pub const ALL: [Scope; 3] = [Scope::Write, Scope::Read, Scope::Admin];

    /// The scope's name as the API and the CLI spell it.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Write => "write",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    /// Parses `write`, `read` or `admin`.
    ///
    /// # Errors
    /// A message naming the word and the accepted ones.
    pub fn parse(word: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|s| s.name() == word.trim())
            .ok_or_else(|| format!("unknown scope {word:?}; scopes are write, read, admin"))
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The body of `POST /api/v1/keys`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateKeyRequest {
    /// The tenants the key belongs to; empty: every tenant (an operator key). With
    /// several, a request names one of them in its tenant header.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// What it allows; at least one.
    pub scopes: Vec<Scope>,
    /// A note for people (who or what uses the key).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// A key as listed: never its secret.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The public id (the middle of `weir_<id>_<secret>`).
    pub id: String,
    /// Its tenants; empty: every tenant.
    pub tenants: Vec<String>,
    /// What it allows.
    pub scopes: Vec<Scope>,
    /// The note given at creation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// When it was created, nanoseconds since the Unix epoch.
    pub created_ns: i64,
    /// When it was revoked; `None` while it is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ns: Option<i64>,
}

/// The answer of `POST /api/v1/keys`: the only time the secret is shown.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CreatedKey {
    /// The whole key, `weir_<id>_<secret>`: what `Authorization: Bearer` and the
    /// password of HTTP Basic carry.
    pub key: String,
    /// `base64(id:key)`, for clients that send `Authorization: ApiKey` (Elasticsearch
    /// clients' `api_key`).
    pub api_key_encoded: String,
    /// The key as listed.
    pub info: KeyInfo,
}

/// The answer of `GET /api/v1/keys`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KeysResponse {
    /// Every key, revoked ones included, oldest first.
    pub keys: Vec<KeyInfo>,
}

/// One tenant of a [`TenantsResponse`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TenantInfo {
    /// Its name.
    pub name: String,
    /// Valid keys that belong to it by name (operator keys not counted).
    pub keys: usize,
    /// Whether this node has received records for it since it started.
    pub ingested: bool,
}

/// The answer of `GET /api/v1/tenants`: tenants named by a key or seen by ingest.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TenantsResponse {
    /// By name.
    pub tenants: Vec<TenantInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::round_trip;

    #[test]
    fn bodies_round_trip_and_scopes_are_lowercase_words() {
        let info = KeyInfo {
            id: "0123abcd".into(),
            tenants: vec!["acme".into()],
            scopes: vec![Scope::Write, Scope::Read],
            note: String::new(),
            created_ns: 1,
            revoked_ns: None,
        };
        let json = round_trip(&info);
        assert!(json.contains(r#""scopes":["write","read"]"#), "{json}");
        assert!(!json.contains("revoked_ns"), "{json}");
        round_trip(&CreatedKey {
            key: "weir_0123abcd_x".into(),
            api_key_encoded: "eA==".into(),
            info: info.clone(),
        });
        round_trip(&KeysResponse { keys: vec![info] });
        let req: CreateKeyRequest = serde_json::from_str(r#"{"scopes":["admin"]}"#).unwrap();
        assert!(req.tenants.is_empty());
        assert_eq!(Scope::parse("read"), Ok(Scope::Read));
        assert!(Scope::parse("root")
            .unwrap_err()
            .contains("write, read, admin"));
    }
}
