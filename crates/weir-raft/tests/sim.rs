//! The deterministic simulation of the raft layer over many seeds (see `weir_raft::sim`
//! for what is simulated and checked).
//!
//! - CI: 200 seeds (`WEIR_SIM_SEEDS` and `WEIR_SIM_START` change the range).
//! - The longer run: `WEIR_SIM_SEEDS=10000 cargo test --release -p weir-raft --test sim`.
//! - Replay one seed: `WEIR_SIM_SEED=1234 cargo test -p weir-raft --test sim -- --nocapture`.

use weir_raft::sim::{run, SimConfig, SimReport};

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

#[test]
fn every_seed_keeps_one_leader_per_term_stable_commits_exact_indexes_and_exactly_once_after_healing(
) {
    let cfg = SimConfig::default();
    if let Some(seed) = env("WEIR_SIM_SEED") {
        match run(seed, &cfg) {
            Ok(r) => println!("{r:?}"),
            Err(v) => panic!("{v}"),
        }
        return;
    }
    let start = env("WEIR_SIM_START").unwrap_or(0);
    let seeds = env("WEIR_SIM_SEEDS").unwrap_or(200);
    let mut total = SimReport::default();
    for seed in start..start + seeds {
        let r = run(seed, &cfg).unwrap_or_else(|v| panic!("{v}"));
        total.acked += r.acked;
        total.crashes += r.crashes;
        total.wipes += r.wipes;
        total.partitions += r.partitions;
        total.elections += r.elections;
        total.compactions += r.compactions;
        total.snapshots_built += r.snapshots_built;
        total.snapshots_installed += r.snapshots_installed;
        total.snapshots_answered += r.snapshots_answered;
        total.segment_copies += r.segment_copies;
    }
    let t = &total;
    println!(
        "{seeds} seeds from {start}: {} batches acknowledged, {} elections, {} crashes, {} wipes, {} partitions, {} compactions, {} snapshots built, {} installed, {} answered without a fetch, {} segment copies",
        t.acked, t.elections, t.crashes, t.wipes, t.partitions, t.compactions, t.snapshots_built, t.snapshots_installed, t.snapshots_answered, t.segment_copies
    );
    // The faults happened: a run that injected none would prove nothing.
    assert!(
        t.crashes > seeds / 2 && t.partitions > seeds / 2 && t.wipes > 0 && t.acked > seeds * 10
    );
    // So did compaction, snapshots and segment transfer, or the index invariants would
    // hold vacuously.
    assert!(t.compactions > 0, "no log was ever compacted");
    assert!(t.snapshots_installed > 0, "no snapshot was ever installed");
    assert!(
        t.segment_copies > 0,
        "no follower ever installed a copy of its leader's index"
    );
}

#[test]
fn a_seed_replays_identically() {
    let cfg = SimConfig::default();
    let a = run(7, &cfg).unwrap_or_else(|v| panic!("{v}"));
    let b = run(7, &cfg).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

#[test]
fn a_replica_offered_a_snapshot_it_has_committed_past_answers_it_and_catches_up() {
    // Seed 9266: a leader released its log past a lagging replica (its WAL passed
    // replica_log_bytes_max) while it still believed the replica held nothing, so it
    // offered a snapshot the replica had already committed past. The replica declined to
    // fetch it and raft never heard back: the leader offered the same snapshot forever
    // and the replica never caught up. Such a snapshot is now stepped into raft, which
    // answers with its commit index, and the leader resumes sending entries from there.
    let r = run(9266, &SimConfig::default()).unwrap_or_else(|v| panic!("{v}"));
    assert!(
        r.snapshots_answered > 0,
        "the seed no longer offers a snapshot below a replica's commit index: {r:?}"
    );
}
