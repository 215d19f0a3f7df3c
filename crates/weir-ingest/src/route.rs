//! Shard routing: which shard a stream lives in.
//!
//! Architecture invariant: [`stream_hash`] is part of the on-disk layout. Changing it (or
//! what it covers) moves every stream to another shard, so a stream's old and new records
//! would be in different shards and no longer in order. The golden values in the tests pin
//! it; change them only together with a migration.

use std::collections::BTreeMap;

use weir_proto::v1::{StoredBatch, StoredRecord};
use weir_proto::ShardId;

use crate::Normalized;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64, written out so that it cannot change under us (std's `DefaultHasher` is
/// allowed to change between Rust releases and is seeded per process for `HashMap`).
struct Fnv1a(u64);

impl Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    /// A length-prefixed field, so that ("ab", "c") and ("a", "bc") hash differently.
    fn field(&mut self, s: &str) {
        self.write(&(s.len() as u64).to_le_bytes());
        self.write(s.as_bytes());
    }
}

/// MurmurHash3's 64-bit finaliser: FNV-1a's low bits mix poorly, and the shard is the hash
/// modulo a small number.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Stable hash of a record's stream identity: the tenant, `service`, `namespace`, `pod`,
/// `cluster` and the stream labels sorted by name. Nothing else (not the level, not the
/// attributes) takes part, so every record of a stream hashes alike.
///
/// Stable across processes, platforms and versions: FNV-1a 64 over length-prefixed fields
/// (lengths as u64 little-endian), then MurmurHash3's `fmix64`. Independent of the label
/// map's iteration order.
///
/// ```
/// use weir_ingest::stream_hash;
/// use weir_proto::v1::StoredRecord;
/// let a = StoredRecord { service: "api".into(), body: "one".into(), ..Default::default() };
/// let b = StoredRecord { service: "api".into(), body: "two".into(), level: 5, ..Default::default() };
/// assert_eq!(stream_hash("acme", &a), stream_hash("acme", &b));
/// assert_ne!(stream_hash("acme", &a), stream_hash("other", &a));
/// ```
pub fn stream_hash(tenant: &str, r: &StoredRecord) -> u64 {
    let mut h = Fnv1a(FNV_OFFSET_BASIS);
    h.field(tenant);
    h.field(&r.service);
    h.field(&r.namespace);
    h.field(&r.pod);
    h.field(&r.cluster);
    // The map holds the labels in name order (bytewise, as String orders).
    h.write(&(r.labels.len() as u64).to_le_bytes());
    for (name, value) in &r.labels {
        h.field(name);
        h.field(value);
    }
    fmix64(h.0)
}

/// The shard a record's stream lives in: [`stream_hash`] modulo `shard_count`.
///
/// # Panics
///
/// If `shard_count` is 0. The shard count is cluster configuration, validated at start-up
/// to be at least 1; there is no shard to send anything to otherwise.
pub fn shard_for(tenant: &str, r: &StoredRecord, shard_count: u32) -> ShardId {
    assert!(shard_count > 0, "shard_count must be at least 1");
    // The remainder is < shard_count, a u32: the cast cannot truncate.
    ShardId((stream_hash(tenant, r) % u64::from(shard_count)) as u32)
}

/// Splits a normalised request into one [`StoredBatch`] per shard that has records, in
/// ascending shard order. Within a batch, records keep their request order; next to each
/// batch are the records' positions in the request, in the same order, so the proposer can
/// report each record's outcome. `received_ns` is stamped on every batch. Refused records
/// (`n.rejected`) are not in any batch; the caller reports them.
///
/// # Panics
///
/// If `shard_count` is 0 (see [`shard_for`]).
pub fn split_by_shard(
    n: Normalized,
    shard_count: u32,
    received_ns: i64,
) -> Vec<(ShardId, StoredBatch, Vec<u32>)> {
    let mut by_shard: BTreeMap<ShardId, (Vec<StoredRecord>, Vec<u32>)> = BTreeMap::new();
    for (position, record) in n.records {
        let shard = shard_for(&n.tenant, &record, shard_count);
        let (records, positions) = by_shard.entry(shard).or_default();
        records.push(record);
        positions.push(position);
    }
    by_shard
        .into_iter()
        .map(|(shard, (records, positions))| {
            let batch = StoredBatch {
                tenant: n.tenant.clone(),
                records,
                received_ns,
            };
            (shard, batch, positions)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn stream(service: &str, labels: &[(&str, &str)]) -> StoredRecord {
        StoredRecord {
            service: service.into(),
            labels: labels
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference (isthe.com/chongo/tech/comp/fnv): "" and "a".
        let mut h = Fnv1a(FNV_OFFSET_BASIS);
        assert_eq!(h.0, 0xcbf29ce484222325);
        h.write(b"a");
        assert_eq!(h.0, 0xaf63dc4c8601ec8c);
        let mut h = Fnv1a(FNV_OFFSET_BASIS);
        h.write(b"foobar");
        assert_eq!(h.0, 0x85944171f73967e8);
    }

    /// Golden values: a change here re-shards every stream of every cluster. Do not update
    /// these to make the test pass; see the module docs.
    #[test]
    fn stream_hash_golden_values() {
        let empty = StoredRecord::default();
        let api = StoredRecord {
            service: "api".into(),
            namespace: "prod".into(),
            pod: "api-7d9f-x2".into(),
            cluster: "eu-1".into(),
            ..stream("api", &[("app", "web"), ("env", "prod")])
        };
        let got = [
            stream_hash("default", &empty),
            stream_hash("acme", &api),
            stream_hash("acme", &stream("api", &[])),
        ];
        let want: [u64; 3] = GOLDEN;
        assert_eq!(
            got, want,
            "stream_hash changed: this would re-shard every stream"
        );
        assert_eq!(
            shard_for("acme", &api, 16),
            ShardId((GOLDEN[1] % 16) as u32)
        );
    }

    /// Computed with this implementation and checked against an independent one (a
    /// ten-line Python transcription of the algorithm in the docs of [`stream_hash`]).
    const GOLDEN: [u64; 3] = [
        2_307_527_779_116_552_256,
        679_364_121_018_254_240,
        17_866_927_852_641_930_802,
    ];

    #[test]
    fn stream_hash_ignores_label_insertion_order() {
        let pairs: Vec<(String, String)> = (0..20)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect();
        let forward = StoredRecord {
            labels: pairs.iter().cloned().collect(),
            ..Default::default()
        };
        let mut backward_map = HashMap::new();
        for (k, v) in pairs.iter().rev() {
            backward_map.insert(k.clone(), v.clone());
        }
        let backward = StoredRecord {
            labels: backward_map.into_iter().collect(),
            ..Default::default()
        };
        assert_eq!(stream_hash("t", &forward), stream_hash("t", &backward));
    }

    #[test]
    fn stream_hash_separates_fields() {
        let a = stream("ab", &[]);
        let b = StoredRecord {
            service: "a".into(),
            namespace: "b".into(),
            ..Default::default()
        };
        assert_ne!(stream_hash("t", &a), stream_hash("t", &b));
        let c = stream("", &[("x", "1")]);
        let d = stream("", &[("x", "2")]);
        assert_ne!(stream_hash("t", &c), stream_hash("t", &d));
    }

    #[test]
    fn shards_spread_streams() {
        let mut seen = [0u32; 8];
        for i in 0..800 {
            let r = stream(&format!("svc-{i}"), &[]);
            seen[shard_for("t", &r, 8).0 as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (60..=140).contains(&c)), "{seen:?}");
    }

    #[test]
    #[should_panic(expected = "shard_count must be at least 1")]
    fn zero_shards_panics() {
        shard_for("t", &StoredRecord::default(), 0);
    }

    #[test]
    fn split_keeps_order_and_positions_per_shard() {
        let records: Vec<(u32, StoredRecord)> = (0..200u32)
            .map(|i| {
                let mut r = stream(&format!("svc-{}", i % 7), &[]);
                r.body = format!("line {i}");
                (i * 2, r) // positions with gaps, as after rejections
            })
            .collect();
        let n = Normalized {
            tenant: "acme".into(),
            records: records.clone(),
            ..Default::default()
        };
        let pieces = split_by_shard(n, 4, 99);
        let shards: Vec<u32> = pieces.iter().map(|(s, _, _)| s.0).collect();
        assert!(
            shards.windows(2).all(|w| w[0] < w[1]),
            "ascending: {shards:?}"
        );
        let mut total = 0;
        for (shard, batch, positions) in &pieces {
            assert_eq!(batch.tenant, "acme");
            assert_eq!(batch.received_ns, 99);
            assert_eq!(batch.records.len(), positions.len());
            assert!(
                positions.windows(2).all(|w| w[0] < w[1]),
                "request order kept"
            );
            for (r, &p) in batch.records.iter().zip(positions) {
                assert_eq!(r, &records[(p / 2) as usize].1);
                assert_eq!(shard_for("acme", r, 4), *shard);
            }
            total += positions.len();
        }
        assert_eq!(total, 200);
    }
}
