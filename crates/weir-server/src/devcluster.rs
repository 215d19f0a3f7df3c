//! Configuration of a local cluster on loopback ports, for development (`weir dev-cluster`)
//! and for the tests that start real processes.

use std::fmt::Write as _;
use std::path::Path;

/// The ports of node `id` (1-based) in a local cluster whose first port is `base`:
/// `(grpc, http, peer)` = `base + 10 * (id - 1) + (0, 1, 2)`.
pub fn ports(base: u16, id: u64) -> (u16, u16, u16) {
    let p = base + 10 * (id as u16 - 1);
    (p, p + 1, p + 2)
}

/// The TOML configuration of node `id` of an `n`-node loopback cluster with data under
/// `dir/node<id>`. `extra` is appended as is (more sections or keys of the top level must
/// come before any table, so `extra` should only add tables).
pub fn config(dir: &Path, base: u16, n: u64, id: u64, shards: u32, extra: &str) -> String {
    let (grpc, http, peer) = ports(base, id);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "data_dir = {:?}",
        dir.join(format!("node{id}")).display().to_string()
    );
    let _ = writeln!(s, "grpc_addr = \"127.0.0.1:{grpc}\"");
    let _ = writeln!(s, "http_addr = \"127.0.0.1:{http}\"");
    let _ = writeln!(s, "\n[storage]\nshards = {shards}\n");
    let _ = writeln!(
        s,
        "[cluster]\nnode_id = {id}\npeer_addr = \"127.0.0.1:{peer}\""
    );
    for m in 1..=n {
        let (g, h, p) = ports(base, m);
        let _ = writeln!(
            s,
            "\n[[cluster.nodes]]\nid = {m}\npeer = \"127.0.0.1:{p}\"\ngrpc = \"127.0.0.1:{g}\"\nhttp = \"127.0.0.1:{h}\""
        );
    }
    s.push_str(extra);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_is_a_valid_member_of_its_cluster() {
        let text = config(Path::new("/tmp/x"), 14317, 3, 2, 4, "");
        let cfg: crate::Config = toml::from_str(&text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.cluster.node_id, 2);
        assert_eq!(cfg.cluster.voters(), vec![1, 2, 3]);
        assert_eq!(cfg.http_addr.port(), 14328);
        assert_eq!(cfg.cluster.peer_addr.port(), 14329);
        assert_eq!(cfg.cluster.nodes[2].peer, "127.0.0.1:14339");
    }
}
