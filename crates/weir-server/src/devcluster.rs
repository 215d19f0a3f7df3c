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

/// The admin key of the local cluster in `dir` (`dir/admin.key`, mode 0600): the one a
/// previous run wrote, or a new one. Every node is started with it in `WEIR_ADMIN_KEY`.
///
/// # Errors
/// The file cannot be read or written.
pub fn admin_key(dir: &Path) -> std::io::Result<String> {
    let path = dir.join(crate::auth::ADMIN_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(k) if crate::auth::parse_key(k.trim()).is_some() => return Ok(k.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let (key, _, _) = crate::auth::generate_key();
    crate::auth::write_private(&path, format!("{key}\n").as_bytes())?;
    Ok(key)
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
    // Keys on, as a real cluster runs: every node registers the same admin key on its
    // first start (`WEIR_ADMIN_KEY`, set by `weir dev-cluster` from `dir/admin.key`).
    let _ = writeln!(s, "[auth]\nenabled = true\n");
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

/// The `[tls]` table of node `id` of a loopback cluster whose certificates are `files`
/// (`weir tls generate`): mutual TLS between the members, and TLS on gRPC and HTTP too
/// when `client_ports`.
pub fn tls_table(files: &crate::tls::ClusterFiles, id: u64, client_ports: bool) -> String {
    let Some((cert, key)) = usize::try_from(id - 1)
        .ok()
        .and_then(|i| files.nodes.get(i))
    else {
        return String::new();
    };
    let (cert, key, ca) = (cert.display(), key.display(), files.ca.display());
    if client_ports {
        format!(
            "\n[tls]\ncert_file = {:?}\nkey_file = {:?}\npeer_ca_file = {:?}\n",
            cert.to_string(),
            key.to_string(),
            ca.to_string()
        )
    } else {
        format!(
            "\n[tls]\npeer_cert_file = {:?}\npeer_key_file = {:?}\npeer_ca_file = {:?}\n",
            cert.to_string(),
            key.to_string(),
            ca.to_string()
        )
    }
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
        assert!(cfg.auth.enabled);
    }

    #[test]
    fn the_tls_table_gives_peers_mutual_tls_and_optionally_the_client_ports() {
        let files = crate::tls::ClusterFiles::in_dir(Path::new("/tmp/x/tls"), 3);
        for client_ports in [false, true] {
            let extra = tls_table(&files, 2, client_ports);
            let text = config(Path::new("/tmp/x"), 14317, 3, 2, 4, &extra);
            let cfg: crate::Config = toml::from_str(&text).unwrap();
            cfg.validate().unwrap();
            assert!(cfg.tls.peer_enabled());
            assert_eq!(cfg.tls.enabled(), client_ports);
            let [(_, cert), _] = cfg.tls.peer_identity().unwrap();
            assert_eq!(cert, Path::new("/tmp/x/tls/node2.crt"));
        }
    }
}
