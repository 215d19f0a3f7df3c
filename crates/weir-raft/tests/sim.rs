//! The deterministic simulation of the raft layer over many seeds (see `weir_raft::sim`
//! for what is simulated and checked).
//!
//! - CI: 200 seeds (`WEIR_SIM_SEEDS` and `WEIR_SIM_START` change the range).
//! - The longer run: `WEIR_SIM_SEEDS=10000 cargo test --release -p weir-raft --test sim`.
//! - Replay one seed: `WEIR_SIM_SEED=1234 cargo test -p weir-raft --test sim -- --nocapture`.

use weir_raft::sim::{run, SimConfig};

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

#[test]
fn every_seed_keeps_one_leader_per_term_stable_commits_and_exactly_once_after_healing() {
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
    let (mut acked, mut crashes, mut wipes, mut partitions, mut elections) = (0, 0, 0, 0, 0);
    for seed in start..start + seeds {
        let r = run(seed, &cfg).unwrap_or_else(|v| panic!("{v}"));
        acked += r.acked;
        crashes += r.crashes;
        wipes += r.wipes;
        partitions += r.partitions;
        elections += r.elections;
    }
    println!("{seeds} seeds from {start}: {acked} batches acknowledged, {elections} elections, {crashes} crashes, {wipes} wipes, {partitions} partitions");
    // The faults happened: a run that injected none would prove nothing.
    assert!(crashes > seeds / 2 && partitions > seeds / 2 && wipes > 0 && acked > seeds * 10);
}

#[test]
fn a_seed_replays_identically() {
    let cfg = SimConfig::default();
    let a = run(7, &cfg).unwrap_or_else(|v| panic!("{v}"));
    let b = run(7, &cfg).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}
