//! Access keys: who a request comes from, which tenants it may touch and what it may do.
//!
//! A key is `weir_<id>_<secret>`: a public id (16 hex digits, shown in listings, logs and
//! errors) and a secret of 256 random bits (43 base64url characters) that the node keeps
//! only as its SHA-256 and compares in constant time. A key belongs to some tenants, or
//! to every tenant (an operator key), and carries scopes ([`Scope`]: write, read, admin).
//!
//! Clients present a key as `Authorization: Bearer <key>`, as HTTP Basic (user = tenant,
//! password = key), as `Authorization: ApiKey base64(<id>:<key or secret>)`
//! (Elasticsearch clients) or as gRPC metadata `authorization` (Bearer or Basic).
//! [`Auth::caller`] turns what a request carries into a [`Caller`]: the tenant it acts
//! for and what it may do, or a 401 (no valid key) / 403 (valid, but not for this)
//! naming why.
//!
//! Where keys live is behind [`KeyStore`]; the node's is the replicated key table of
//! [`crate::keytable`] (hashes only). Checking a key costs one map lookup under a read
//! lock and one SHA-256 of 43 bytes (about a microsecond): no cache is needed in front of
//! it, and a revocation holds from the next request on.
//!
//! ```
//! use weir_server::auth::{generate_key, parse_key};
//! let (key, id, hash) = generate_key();
//! let parsed = parse_key(&key).unwrap();
//! assert_eq!(parsed.id, id);
//! assert!(weir_server::auth::hash_matches(&hash, parsed.secret));
//! ```

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use weir_proto::api::keys::{CreateKeyRequest, CreatedKey, KeyInfo, Scope};
use weir_proto::{ApiError, ErrorKind, DEFAULT_TENANT};

/// The prefix of every key.
pub const KEY_PREFIX: &str = "weir_";
/// The file the first admin key is written to in the data directory (mode 0600), where
/// `weir` commands on the same machine find it.
pub const ADMIN_KEY_FILE: &str = "admin.key";
/// Environment variable a node reads on its first start with keys on: the admin key to
/// register instead of generating one (every node of a cluster given the same one, so
/// that it is valid on each).
pub const BOOTSTRAP_KEY_ENV: &str = "WEIR_ADMIN_KEY";

const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// A set of [`Scope`]s, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope: what a request has where keys are off.
    pub const ALL: Scopes = Scopes(0b111);

    fn bit(s: Scope) -> u8 {
        match s {
            Scope::Write => 1,
            Scope::Read => 2,
            Scope::Admin => 4,
        }
    }

    /// The set of `scopes`.
    pub fn of(scopes: &[Scope]) -> Scopes {
        Scopes(scopes.iter().fold(0, |acc, s| acc | Self::bit(*s)))
    }

    /// Whether `s` is in the set.
    pub fn has(self, s: Scope) -> bool {
        self.0 & Self::bit(s) != 0
    }

    /// The scopes, in order.
    pub fn to_vec(self) -> Vec<Scope> {
        Scope::ALL.into_iter().filter(|s| self.has(*s)).collect()
    }
}

/// One key as the store keeps it: the hash of its secret, never the secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredKey {
    /// Public id.
    pub id: String,
    /// Its tenants; empty: every tenant.
    pub tenants: Vec<String>,
    /// What it allows.
    pub scopes: Vec<Scope>,
    /// A note for people.
    #[serde(default)]
    pub note: String,
    /// Creation time (ns since the epoch).
    pub created_ns: i64,
    /// Revocation time; `None` while valid.
    #[serde(default)]
    pub revoked_ns: Option<i64>,
    /// SHA-256 of the secret, lower-case hex.
    pub sha256: String,
}

impl StoredKey {
    /// As the API lists it.
    pub fn info(&self) -> KeyInfo {
        KeyInfo {
            id: self.id.clone(),
            tenants: self.tenants.clone(),
            scopes: self.scopes.clone(),
            note: self.note.clone(),
            created_ns: self.created_ns,
            revoked_ns: self.revoked_ns,
        }
    }

    /// Whether it belongs to every tenant.
    pub fn is_operator(&self) -> bool {
        self.tenants.is_empty()
    }
}

/// Why a [`KeyStore`] could not make a change.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The change is wrong (an id that exists, a record too large for the store).
    #[error("{0}")]
    Invalid(String),
    /// No key has this id.
    #[error("no key with id {0:?}; `weir keys list` shows the ids")]
    NotFound(String),
    /// Only another node can make the change (the leader of the group that holds the
    /// keys), if one is known.
    #[error("this node does not lead the key table's group (leader: {leader:?})")]
    NotLeader {
        /// The node that does, if known.
        leader: Option<u64>,
    },
    /// Try again later (no quorum, stopping, a write failed).
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let kind = match &e {
            StoreError::Invalid(_) => ErrorKind::InvalidArgument,
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::NotLeader { .. } | StoreError::Unavailable(_) => ErrorKind::Unavailable,
        };
        ApiError::new(kind, e.to_string())
    }
}

/// What a [`KeyStore`]'s changes return: they may wait for replication.
pub type StoreFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where keys live. Every node validates every request against its store, so a store
/// shared by the cluster ([`crate::keytable::RaftKeyStore`]) makes any key valid on any
/// node. Reads are synchronous and cheap (every request does one); changes may wait.
pub trait KeyStore: Send + Sync {
    /// The key with this id, revoked or not.
    fn get(&self, id: &str) -> Option<Arc<StoredKey>>;
    /// Every key, oldest first.
    fn list(&self) -> Vec<Arc<StoredKey>>;
    /// Adds a key.
    fn insert(&self, key: StoredKey) -> StoreFuture<'_, ()>;
    /// Marks a key revoked at `at_ns` (a revoked key stays revoked at its first time);
    /// returns it as it is now.
    fn revoke(&self, id: &str, at_ns: i64) -> StoreFuture<'_, Arc<StoredKey>>;
}

/// Writes `bytes` to `path` atomically and durably, readable by the owner only: the
/// temporary file is created with mode 0600, so the secret-bearing contents are never
/// visible to others, not even between create and rename.
///
/// # Errors
/// Any I/O error; `path` then holds the old or the new contents.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    weir_wal::durable::fsync_dir(dir)
}

/// A new key: the whole key, its id and the hash of its secret.
pub fn generate_key() -> (String, String, String) {
    let mut rng = rand::rng(); // ThreadRng: a CSPRNG seeded from the OS
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let id = hex(&id);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let hash = hash_secret(&secret);
    (format!("{KEY_PREFIX}{id}_{secret}"), id, hash)
}

/// The id and secret of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// Public id.
    pub id: &'a str,
    /// Secret.
    pub secret: &'a str,
}

/// Splits `weir_<id>_<secret>`; `None` when the text is not shaped like a key.
pub fn parse_key(key: &str) -> Option<ParsedKey<'_>> {
    let rest = key.trim().strip_prefix(KEY_PREFIX)?;
    // The id is hex, so the first `_` ends it (the secret's alphabet has `_` too).
    let (id, secret) = rest.split_once('_')?;
    (id.len() == ID_BYTES * 2 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some(ParsedKey { id, secret })
}

/// SHA-256 of a secret, lower-case hex.
pub fn hash_secret(secret: &str) -> String {
    hex(&sha2::Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` hashes to `hash` (hex), compared in constant time.
pub fn hash_matches(hash: &str, secret: &str) -> bool {
    let got = hash_secret(secret);
    got.len() == hash.len()
        && got
            .bytes()
            .zip(hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `base64(id:key)`: what Elasticsearch clients send after `ApiKey`.
pub fn api_key_encoded(id: &str, key: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{id}:{key}"))
}

/// What a request carries, before it is checked.
#[derive(Debug, Default)]
pub struct Presented<'a> {
    /// The `Authorization` header (HTTP) or `authorization` metadata (gRPC).
    pub authorization: Option<&'a str>,
    /// The tenant the request names (a tenant header), checked already.
    pub tenant: Option<String>,
}

/// Who a request comes from, once checked: the tenant it acts for and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The tenant every read and write of the request is confined to.
    pub tenant: String,
    /// What it may do.
    pub scopes: Scopes,
    /// The key's id; `None` where keys are off.
    pub key_id: Option<String>,
    /// Whether the key belongs to every tenant (or keys are off).
    pub operator: bool,
}

impl Caller {
    /// The caller where keys are off: the tenant it names, everything allowed.
    pub fn open(tenant: Option<String>) -> Caller {
        Caller {
            tenant: tenant.unwrap_or_else(|| DEFAULT_TENANT.to_owned()),
            scopes: Scopes::ALL,
            key_id: None,
            operator: true,
        }
    }

    /// Checks that the caller may do what needs `scope`.
    ///
    /// # Errors
    /// 403 naming the scope, the key and its tenant.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if !self.scopes.has(scope) {
            return Err(ApiError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "key {} (tenant {:?}) lacks scope {scope}, which this needs; it has: {}",
                    self.key_id.as_deref().unwrap_or("-"),
                    self.tenant,
                    scope_list(self.scopes)
                ),
            ));
        }
        if scope == Scope::Admin && !self.operator {
            return Err(ApiError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "key {} belongs to tenant {:?}; admin needs an operator key (one created \
                     without --tenant)",
                    self.key_id.as_deref().unwrap_or("-"),
                    self.tenant
                ),
            ));
        }
        Ok(())
    }
}

fn scope_list(s: Scopes) -> String {
    let v: Vec<&str> = s.to_vec().into_iter().map(Scope::name).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(",")
    }
}

/// The node's access control: whether keys are required, and the store.
pub struct Auth {
    enabled: bool,
    store: Arc<dyn KeyStore>,
}

fn unauthenticated(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::Unauthenticated, message)
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::PermissionDenied, message)
}

impl Auth {
    /// Access control over `store`; with `enabled` false every request is let through
    /// as the tenant it names.
    pub fn new(enabled: bool, store: Arc<dyn KeyStore>) -> Auth {
        Auth { enabled, store }
    }

    /// Whether keys are required.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// Who a request is: with keys off, the tenant it names with every scope (any
    /// credential ignored: a client configured with one still works against an open
    /// node); with keys on, the key's (a tenant header or Basic user naming another
    /// tenant is refused).
    ///
    /// # Errors
    /// 401 with no credential, a malformed one, an unknown or revoked key, or a wrong
    /// secret; 403 when the tenant named is not the key's.
    pub fn caller(&self, p: Presented<'_>) -> Result<Caller, ApiError> {
        if !self.enabled {
            return Ok(Caller::open(p.tenant));
        }
        let Some(auth) = p.authorization.map(str::trim).filter(|a| !a.is_empty()) else {
            return Err(unauthenticated(
                "this node requires an access key: send Authorization: Bearer <key>, \
                 HTTP Basic (user = tenant, password = key) or ApiKey; create keys with \
                 `weir keys create` (docs/security.md)",
            ));
        };
        let (credential, basic_user) = credential_of(auth)?;
        let key = self.check(&credential)?;
        let wanted = p.tenant.or(basic_user.filter(|u| !u.is_empty()));
        tenant_for(&key, wanted).map(|tenant| Caller {
            tenant,
            scopes: Scopes::of(&key.scopes),
            key_id: Some(key.id.clone()),
            operator: key.is_operator(),
        })
    }

    /// The stored key a credential names, when its secret matches and it is not revoked.
    fn check(&self, c: &Credential) -> Result<Arc<StoredKey>, ApiError> {
        let key = self
            .store
            .get(&c.id)
            .filter(|k| hash_matches(&k.sha256, &c.secret))
            .ok_or_else(|| {
                unauthenticated(format!(
                    "access key {} is not valid (unknown id or wrong secret); ask an \
                     operator for a key (`weir keys create`)",
                    c.id
                ))
            })?;
        if key.revoked_ns.is_some() {
            return Err(unauthenticated(format!(
                "access key {} was revoked; ask an operator for a new one",
                key.id
            )));
        }
        Ok(key)
    }
}

impl Auth {
    /// Creates a key as `request` describes and stores it (see [`prepare_key`]).
    ///
    /// # Errors
    /// As [`prepare_key`], and the store's refusal.
    pub async fn create_key(
        &self,
        request: CreateKeyRequest,
        limits: &weir_ingest::Limits,
        secret_key: Option<&str>,
    ) -> Result<CreatedKey, ApiError> {
        let (stored, created) = prepare_key(request, limits, secret_key)?;
        self.store.insert(stored).await?;
        Ok(created)
    }
}

/// The key `request` describes, as the store keeps it and as its creator sees it (with
/// the secret, which exists nowhere else from then on). `secret_key`: that key (a
/// bootstrap key given to every node) instead of a new one.
///
/// # Errors
/// 400 naming what is wrong with the request: a tenant name, no scope, admin on a tenant
/// key, a malformed given key.
pub fn prepare_key(
    request: CreateKeyRequest,
    limits: &weir_ingest::Limits,
    secret_key: Option<&str>,
) -> Result<(StoredKey, CreatedKey), ApiError> {
    {
        let mut tenants = Vec::with_capacity(request.tenants.len());
        for t in &request.tenants {
            let t = weir_ingest::normalize_tenant(t, limits)
                .map_err(|e| ApiError::invalid(format!("tenant {t:?}: {e}")))?;
            if !tenants.contains(&t) {
                tenants.push(t);
            }
        }
        if request.scopes.is_empty() {
            return Err(ApiError::invalid(
                "a key needs at least one scope: write, read or admin",
            ));
        }
        if request.scopes.contains(&Scope::Admin) && !tenants.is_empty() {
            return Err(ApiError::invalid(
                "scope admin is for operator keys (no tenant): it manages keys and sees every \
                 tenant's dead letters and metrics",
            ));
        }
        let (key, id, sha256) = match secret_key {
            None => generate_key(),
            Some(k) => {
                let p = parse_key(k).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "{BOOTSTRAP_KEY_ENV} is not a key (weir_<16 hex digits>_<secret>)"
                    ))
                })?;
                if p.secret.len() < 32 {
                    return Err(ApiError::invalid(format!(
                        "{BOOTSTRAP_KEY_ENV}: the secret after the id must be at least 32 \
                         characters"
                    )));
                }
                (k.trim().to_owned(), p.id.to_owned(), hash_secret(p.secret))
            }
        };
        let scopes = Scopes::of(&request.scopes).to_vec();
        let stored = StoredKey {
            id: id.clone(),
            tenants,
            scopes,
            note: request.note,
            created_ns: weir_proto::now_ns(),
            revoked_ns: None,
            sha256,
        };
        let created = CreatedKey {
            api_key_encoded: api_key_encoded(&id, &key),
            key,
            info: stored.info(),
        };
        Ok((stored, created))
    }
}

/// The tenant a request with `key` acts for, given the tenant it names (if any).
fn tenant_for(key: &StoredKey, wanted: Option<String>) -> Result<String, ApiError> {
    match (wanted, key.tenants.as_slice()) {
        (Some(t), []) => Ok(t),
        (None, []) => Ok(DEFAULT_TENANT.to_owned()),
        (None, [only]) => Ok(only.clone()),
        (Some(t), tenants) if tenants.contains(&t) => Ok(t),
        (None, tenants) => Err(forbidden(format!(
            "key {} belongs to several tenants ({}): name one in X-Scope-OrgID or \
             X-Weir-Tenant",
            key.id,
            tenants.join(", ")
        ))),
        (Some(t), tenants) => Err(forbidden(format!(
            "key {} belongs to tenant {} and may not act for tenant {t:?}",
            key.id,
            tenants.join(", ")
        ))),
    }
}

/// A key's id and secret as a request presented them.
struct Credential {
    id: String,
    secret: String,
}

fn malformed(what: &str) -> ApiError {
    unauthenticated(format!(
        "malformed Authorization {what}; send Bearer <key>, Basic base64(tenant:key) or \
         ApiKey base64(id:key)"
    ))
}

/// The credential of an `Authorization` value, and the Basic user if it was Basic.
fn credential_of(value: &str) -> Result<(Credential, Option<String>), ApiError> {
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    let b64 = |s: &str, what: &str| -> Result<String, ApiError> {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| malformed(what))
    };
    let whole = |key: &str, what: &str| -> Result<Credential, ApiError> {
        let p = parse_key(key).ok_or_else(|| malformed(what))?;
        Ok(Credential {
            id: p.id.to_owned(),
            secret: p.secret.to_owned(),
        })
    };
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => Ok((
            whole(rest, "Bearer value (not a weir_<id>_<secret> key)")?,
            None,
        )),
        "basic" => {
            let text = b64(rest, "Basic value (not base64 of user:password)")?;
            let (user, password) = text
                .split_once(':')
                .ok_or_else(|| malformed("Basic value (no ':' between user and password)"))?;
            Ok((
                whole(password, "Basic password (not a weir_<id>_<secret> key)")?,
                Some(user.to_owned()),
            ))
        }
        "apikey" => {
            let text = b64(rest, "ApiKey value (not base64 of id:key)")?;
            let (id, key) = text
                .split_once(':')
                .ok_or_else(|| malformed("ApiKey value (no ':' between id and key)"))?;
            match parse_key(key) {
                Some(p) if p.id == id => Ok((whole(key, "ApiKey key")?, None)),
                Some(_) => Err(malformed("ApiKey value (the id is not the key's)")),
                // Elasticsearch's own shape: id and the secret alone.
                None => Ok((
                    Credential {
                        id: id.to_owned(),
                        secret: key.to_owned(),
                    },
                    None,
                )),
            }
        }
        _ => Err(malformed(&format!("scheme {scheme:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    fn now<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A store in memory: the trait's contract without raft.
    #[derive(Default)]
    struct MemKeyStore(Mutex<BTreeMap<String, Arc<StoredKey>>>);

    impl KeyStore for MemKeyStore {
        fn get(&self, id: &str) -> Option<Arc<StoredKey>> {
            self.0.lock().unwrap().get(id).cloned()
        }
        fn list(&self) -> Vec<Arc<StoredKey>> {
            self.0.lock().unwrap().values().cloned().collect()
        }
        fn insert(&self, key: StoredKey) -> StoreFuture<'_, ()> {
            self.0.lock().unwrap().insert(key.id.clone(), Arc::new(key));
            Box::pin(async { Ok(()) })
        }
        fn revoke(&self, id: &str, at_ns: i64) -> StoreFuture<'_, Arc<StoredKey>> {
            let mut m = self.0.lock().unwrap();
            let mut k = (**m.get(id).unwrap()).clone();
            k.revoked_ns.get_or_insert(at_ns);
            let k = Arc::new(k);
            m.insert(id.to_owned(), k.clone());
            Box::pin(async move { Ok(k) })
        }
    }

    fn store() -> ((), Arc<MemKeyStore>) {
        ((), Arc::<MemKeyStore>::default())
    }

    fn add(s: &MemKeyStore, tenants: &[&str], scopes: &[Scope]) -> (String, String) {
        let (key, id, sha256) = generate_key();
        now(s.insert(StoredKey {
            id: id.clone(),
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
            scopes: scopes.to_vec(),
            note: String::new(),
            created_ns: 1,
            revoked_ns: None,
            sha256,
        }))
        .unwrap();
        (key, id)
    }

    fn bearer(k: &str) -> String {
        format!("Bearer {k}")
    }

    #[test]
    fn every_way_of_presenting_a_key_is_the_same_caller() {
        let (_d, s) = store();
        let (key, id) = add(&s, &["acme"], &[Scope::Write]);
        let auth = Auth::new(true, s);
        let by = |a: &str| {
            auth.caller(Presented {
                authorization: Some(a),
                tenant: None,
            })
        };
        let b64 = |t: String| base64::engine::general_purpose::STANDARD.encode(t);
        for a in [
            bearer(&key),
            format!("Basic {}", b64(format!("acme:{key}"))),
            format!("ApiKey {}", api_key_encoded(&id, &key)),
            format!(
                "ApiKey {}",
                b64(format!("{id}:{}", parse_key(&key).unwrap().secret))
            ),
        ] {
            let c = by(&a).unwrap_or_else(|e| panic!("{a}: {e:?}"));
            assert_eq!(c.tenant, "acme");
            assert_eq!(c.key_id.as_deref(), Some(id.as_str()));
            assert!(c.scopes.has(Scope::Write) && !c.scopes.has(Scope::Read));
        }
        // Basic naming another tenant is that tenant's header: refused.
        let e = by(&format!("Basic {}", b64(format!("other:{key}")))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e:?}");
        assert!(e.message.contains("\"other\""), "{}", e.message);
    }

    #[test]
    fn a_wrong_secret_an_unknown_id_and_a_revoked_key_are_401() {
        let (_d, s) = store();
        let (key, id) = add(&s, &["acme"], &[Scope::Read]);
        let auth = Auth::new(true, s.clone());
        let call = |a: &str| {
            auth.caller(Presented {
                authorization: Some(a),
                tenant: None,
            })
        };
        let mut wrong = key.clone();
        wrong.pop();
        wrong.push(if key.ends_with('A') { 'B' } else { 'A' });
        for a in [
            bearer(&wrong),
            bearer("weir_0000000000000000_x"),
            bearer("nope"),
            "Digest x".into(),
        ] {
            assert_eq!(
                call(&a).unwrap_err().kind,
                ErrorKind::Unauthenticated,
                "{a}"
            );
        }
        assert!(call(&bearer(&key)).is_ok());
        now(s.revoke(&id, 5)).unwrap();
        let e = call(&bearer(&key)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unauthenticated);
        assert!(
            e.message.contains("revoked") && e.message.contains(&id),
            "{}",
            e.message
        );
        // No credential at all: 401 with keys on, the named tenant with keys off.
        let none = Presented {
            authorization: None,
            tenant: Some("t".into()),
        };
        assert_eq!(
            auth.caller(none).unwrap_err().kind,
            ErrorKind::Unauthenticated
        );
        let open = Auth::new(false, s);
        let c = open
            .caller(Presented {
                authorization: None,
                tenant: Some("t".into()),
            })
            .unwrap();
        assert_eq!(c, Caller::open(Some("t".into())));
    }

    #[test]
    fn the_tenant_comes_from_the_key_and_a_header_picks_only_among_its_tenants() {
        let (_d, s) = store();
        let (one, _) = add(&s, &["acme"], &[Scope::Read]);
        let (two, _) = add(&s, &["acme", "beta"], &[Scope::Read]);
        let (op, _) = add(&s, &[], &[Scope::Read, Scope::Admin]);
        let auth = Auth::new(true, s);
        let call = |k: &str, t: Option<&str>| {
            auth.caller(Presented {
                authorization: Some(&bearer(k)),
                tenant: t.map(str::to_owned),
            })
        };
        assert_eq!(call(&one, None).unwrap().tenant, "acme");
        assert_eq!(call(&one, Some("acme")).unwrap().tenant, "acme");
        assert_eq!(
            call(&one, Some("beta")).unwrap_err().kind,
            ErrorKind::PermissionDenied
        );
        assert_eq!(call(&two, Some("beta")).unwrap().tenant, "beta");
        assert!(call(&two, None).unwrap_err().message.contains("acme, beta"));
        assert_eq!(call(&op, Some("beta")).unwrap().tenant, "beta");
        assert_eq!(call(&op, None).unwrap().tenant, DEFAULT_TENANT);
        // Admin is for operator keys only.
        let c = call(&op, None).unwrap();
        assert!(c.require(Scope::Admin).is_ok());
        assert!(c
            .require(Scope::Write)
            .unwrap_err()
            .message
            .contains("lacks scope write"));
        let mut tenant_admin = call(&one, None).unwrap();
        tenant_admin.scopes = Scopes::ALL;
        assert!(tenant_admin
            .require(Scope::Admin)
            .unwrap_err()
            .message
            .contains("operator"));
    }
}
