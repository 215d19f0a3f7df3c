//! The access keys as cluster state: each key and each revocation is a raft entry of
//! shard 0's group, so every replica applies it, any node validates any key, and a
//! revocation holds on every node that is in touch with the cluster within a second.
//!
//! The entries are named values of the raft layer's applied state (what
//! `RaftNode::propose_cursor` writes for the mirrors' cursors, under a prefix of their
//! own): applied on every replica, saved with the applied state before each compaction,
//! carried by snapshots and re-applied on restart, with "the largest value wins" as the
//! merge rule, which suits records that are written once (a key, created at a time) or
//! only move forward (a revocation, at a time). No raft format changes for them.
//!
//! - `\u{2}key/<id>/<sha256 hex>/<scopes: w r a>/<tenants, comma separated>/<note>`
//!   = creation time (ns). Tenant names cannot hold `/` or `,`; the note is cut to fit
//!   the name limit ([`weir_raft::CURSOR_NAME_BYTES_MAX`]).
//! - `\u{2}revoked/<id>` = revocation time (ns).
//!
//! Proposals go to shard 0's leader: [`RaftKeyStore`] answers
//! [`StoreError::NotLeader`] elsewhere, and the admin API forwards the request there.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use weir_proto::api::keys::Scope;
use weir_raft::RaftNode;

use crate::auth::{KeyStore, StoreError, StoreFuture, StoredKey};

const KEY: &str = "\u{2}key/";
const REVOKED: &str = "\u{2}revoked/";
/// The shard whose group carries the key table.
pub const KEY_SHARD: u32 = 0;
/// How often every node rebuilds its view of the table from the applied entries: the
/// bound on how long a revocation proposed elsewhere takes to hold here, past the
/// replication itself.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(200);

/// The applied shard-0 cursor entries under `prefixes`, sorted, when they differ from what
/// `built_from` holds (which then takes them); `None` when nothing changed. The key table
/// and the rule table rebuild from these only when they change.
pub(crate) fn changed_entries(
    raft: &RaftNode,
    prefixes: &[&str],
    built_from: &std::sync::Mutex<Vec<(String, u64)>>,
) -> Option<Vec<(String, u64)>> {
    let log = raft.committed_log(KEY_SHARD);
    let mut entries: Vec<(String, u64)> = prefixes
        .iter()
        .flat_map(|p| log.cursors_with_prefix(p))
        .collect();
    entries.sort_unstable();
    let mut built = built_from.lock().unwrap_or_else(|p| p.into_inner());
    if *built == entries {
        return None;
    }
    built.clone_from(&entries);
    Some(entries)
}

fn scope_letters(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| match s {
            Scope::Write => 'w',
            Scope::Read => 'r',
            Scope::Admin => 'a',
        })
        .collect()
}

/// The entry name of a key.
///
/// # Errors
/// Its tenants do not fit the name limit.
pub fn key_entry(k: &StoredKey) -> Result<String, String> {
    let head = format!(
        "{KEY}{}/{}/{}/{}/",
        k.id,
        k.sha256,
        scope_letters(&k.scopes),
        k.tenants.join(",")
    );
    let room = weir_raft::CURSOR_NAME_BYTES_MAX.saturating_sub(head.len());
    if head.len() > weir_raft::CURSOR_NAME_BYTES_MAX {
        return Err(format!(
            "the key's tenants take {} bytes, more than the key table holds ({} bytes for \
             id, hash, scopes and tenants): give the key fewer or shorter tenants",
            k.tenants.join(",").len(),
            weir_raft::CURSOR_NAME_BYTES_MAX
        ));
    }
    let mut note = k.note.as_str();
    while note.len() > room {
        let mut cut = room.min(note.len());
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note = &note[..cut];
    }
    Ok(format!("{head}{note}"))
}

/// The key an entry names, created at `created_ns`; `None` for a name of another shape.
pub fn parse_key_entry(name: &str, created_ns: u64) -> Option<StoredKey> {
    let rest = name.strip_prefix(KEY)?;
    let mut parts = rest.splitn(5, '/');
    let id = parts.next()?.to_owned();
    let sha256 = parts.next()?.to_owned();
    let scopes = parts
        .next()?
        .chars()
        .map(|c| match c {
            'w' => Some(Scope::Write),
            'r' => Some(Scope::Read),
            'a' => Some(Scope::Admin),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    let tenants = parts
        .next()?
        .split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let note = parts.next().unwrap_or_default().to_owned();
    Some(StoredKey {
        id,
        tenants,
        scopes,
        note,
        created_ns: i64::try_from(created_ns).unwrap_or(i64::MAX),
        revoked_ns: None,
        sha256,
    })
}

/// The key table of shard 0's applied state, as this node last read it.
pub struct RaftKeyStore {
    raft: Arc<RaftNode>,
    table: RwLock<Arc<BTreeMap<String, Arc<StoredKey>>>>,
    /// The entries the table was last built from (sorted): a refresh that finds the same
    /// ones keeps the table instead of parsing every key again.
    built_from: std::sync::Mutex<Vec<(String, u64)>>,
}

impl RaftKeyStore {
    /// The table of `raft`'s shard 0, read once now.
    pub fn new(raft: Arc<RaftNode>) -> Arc<RaftKeyStore> {
        let s = Arc::new(RaftKeyStore {
            raft,
            table: RwLock::new(Arc::default()),
            built_from: std::sync::Mutex::new(vec![(String::new(), u64::MAX)]),
        });
        s.refresh();
        s
    }

    /// Reads the applied entries again.
    pub fn refresh(&self) {
        let Some(entries) = changed_entries(&self.raft, &[KEY, REVOKED], &self.built_from) else {
            return;
        };
        let mut table: BTreeMap<String, StoredKey> = entries
            .iter()
            .filter_map(|(name, at)| parse_key_entry(name, *at))
            .map(|k| (k.id.clone(), k))
            .collect();
        for (name, at) in &entries {
            if let Some(k) = name.strip_prefix(REVOKED).and_then(|id| table.get_mut(id)) {
                k.revoked_ns = Some(i64::try_from(*at).unwrap_or(i64::MAX));
            }
        }
        let table = table.into_iter().map(|(id, k)| (id, Arc::new(k))).collect();
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }

    /// Refreshes every [`REFRESH_INTERVAL`] until `stop` turns true.
    pub fn spawn_refresher(
        self: &Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => me.refresh(),
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        })
    }

    fn snapshot(&self) -> Arc<BTreeMap<String, Arc<StoredKey>>> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn propose(&self, name: &str, position: u64) -> Result<(), StoreError> {
        propose_entry(&self.raft, name, position).await?;
        self.refresh();
        Ok(())
    }
}

/// Proposes the named entry `name = value` to shard 0's group and waits for its commit
/// (at most 10 s): how the key table and the ingest rules ([`crate::rules`]) change.
///
/// # Errors
/// Invalid for a name over the limit; NotLeader off the group's leader; Unavailable
/// without a commit.
pub async fn propose_entry(raft: &RaftNode, name: &str, value: u64) -> Result<(), StoreError> {
    if name.len() > weir_raft::CURSOR_NAME_BYTES_MAX {
        return Err(StoreError::Invalid(format!(
            "cluster table entry of {} bytes, limit {}",
            name.len(),
            weir_raft::CURSOR_NAME_BYTES_MAX
        )));
    }
    let proposal = raft
        .propose_cursor(KEY_SHARD, name, value)
        .map_err(raft_error)?;
    match tokio::time::timeout(Duration::from_secs(10), proposal).await {
        Ok(Ok(Ok(_))) => Ok(()),
        Ok(Ok(Err(e))) => Err(raft_error(e)),
        Ok(Err(_)) => Err(StoreError::Unavailable("the raft layer stopped".into())),
        Err(_) => Err(StoreError::Unavailable(
            "the entry was not committed within 10 s (no quorum?); retry".into(),
        )),
    }
}

fn raft_error(e: weir_raft::Error) -> StoreError {
    match e {
        weir_raft::Error::NotLeader { leader, .. } => StoreError::NotLeader {
            leader: (leader != 0).then_some(leader),
        },
        other => StoreError::Unavailable(other.to_string()),
    }
}

impl KeyStore for RaftKeyStore {
    fn get(&self, id: &str) -> Option<Arc<StoredKey>> {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn list(&self) -> Vec<Arc<StoredKey>> {
        let mut v: Vec<_> = self.snapshot().values().cloned().collect();
        v.sort_by(|a, b| (a.created_ns, &a.id).cmp(&(b.created_ns, &b.id)));
        v
    }

    fn insert(&self, key: StoredKey) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            if self.get(&key.id).is_some() {
                return Err(StoreError::Invalid(format!("key id {} exists", key.id)));
            }
            let name = key_entry(&key).map_err(StoreError::Invalid)?;
            self.propose(&name, u64::try_from(key.created_ns).unwrap_or(0))
                .await
        })
    }

    fn revoke(&self, id: &str, at_ns: i64) -> StoreFuture<'_, Arc<StoredKey>> {
        let id = id.to_owned();
        Box::pin(async move {
            let Some(k) = self.get(&id) else {
                return Err(StoreError::NotFound(id));
            };
            if k.revoked_ns.is_some() {
                return Ok(k);
            }
            self.propose(&format!("{REVOKED}{id}"), u64::try_from(at_ns).unwrap_or(0))
                .await?;
            self.get(&id).ok_or(StoreError::NotFound(id))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_entry_reads_back_and_a_long_note_is_cut_to_fit() {
        let k = StoredKey {
            id: "0123456789abcdef".into(),
            tenants: vec!["acme".into(), "beta.eu-1".into()],
            scopes: vec![Scope::Write, Scope::Read],
            note: "agents/eu é".repeat(40),
            created_ns: 42,
            revoked_ns: None,
            sha256: "ab".repeat(32),
        };
        let name = key_entry(&k).unwrap();
        assert!(name.len() <= weir_raft::CURSOR_NAME_BYTES_MAX);
        let back = parse_key_entry(&name, 42).unwrap();
        assert!(k.note.starts_with(&back.note) && !back.note.is_empty());
        assert_eq!(
            StoredKey {
                note: back.note.clone(),
                ..k.clone()
            },
            back
        );
        let op = StoredKey {
            tenants: vec![],
            scopes: vec![Scope::Admin],
            note: String::new(),
            ..k.clone()
        };
        assert_eq!(parse_key_entry(&key_entry(&op).unwrap(), 42).unwrap(), op);
        let too_many = StoredKey {
            tenants: (0..40).map(|i| format!("tenant-{i}")).collect(),
            ..k
        };
        assert!(key_entry(&too_many)
            .unwrap_err()
            .contains("fewer or shorter tenants"));
        assert!(parse_key_entry("mirror-es", 1).is_none());
    }
}
