//! The compose cluster of `docker/` as a target of the same faults: containers killed
//! (`SIGKILL`), frozen (`docker pause`, the cgroup freezer), disconnected from the compose
//! network (a partition from peers and from clients, whose port mappings go through it),
//! and removed with their data volume.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::Faults;

/// A running `docker compose` project of `docker/docker-compose.yml`.
pub struct DockerCluster {
    project: String,
    /// The compose file, then the override that adds the extra config, if any.
    files: Vec<PathBuf>,
    /// Holds the override and the node configs it mounts.
    _configs: Option<tempfile::TempDir>,
    compose: Vec<String>,
    /// The first admin key of every node (`WEIR_ADMIN_KEY`): keys are on in the compose
    /// cluster, and the harness presents this one.
    admin_key: String,
    killed: HashSet<u64>,
    isolated: HashSet<u64>,
    /// Faults injected so far.
    pub faults: Vec<String>,
}

/// Node `id`'s published HTTP and gRPC ports (see docker-compose.yml).
fn ports(id: u64) -> (u16, u16) {
    let base = 24307 + 10 * id as u16;
    (base + 1, base)
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl DockerCluster {
    /// The compose command here (`docker compose` or `docker-compose`), if a Docker engine
    /// answers.
    pub fn compose_command() -> Option<Vec<String>> {
        let ok = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
        if !ok(Command::new("docker").arg("info")) {
            return None;
        }
        if ok(Command::new("docker").args(["compose", "version"])) {
            Some(vec!["docker".into(), "compose".into()])
        } else if ok(Command::new("docker-compose").arg("version")) {
            Some(vec!["docker-compose".into()])
        } else {
            None
        }
    }

    /// Starts the project (the image `weir:dev` must exist: `docker/build.sh`).
    pub async fn start(file: &Path) -> anyhow::Result<DockerCluster> {
        Self::start_with(file, "").await
    }

    /// Starts the project with `extra_config` appended to every node's config (mirror
    /// sinks, for example). The containers reach services on this host as
    /// `host.docker.internal` (the engine's host gateway); a service they are to reach must
    /// listen on an address of the host other than loopback, such as 0.0.0.0.
    pub async fn start_with(file: &Path, extra_config: &str) -> anyhow::Result<DockerCluster> {
        let compose = Self::compose_command().context("no Docker engine or compose here")?;
        let mut files = vec![file.to_path_buf()];
        let configs = if extra_config.is_empty() {
            None
        } else {
            let dir = tempfile::tempdir()?;
            let base = file.parent().unwrap_or(Path::new(".")).join("config");
            let mut services = String::from("services:\n");
            for id in 1..=3 {
                let src = base.join(format!("node{id}.toml"));
                let toml = std::fs::read_to_string(&src)
                    .with_context(|| format!("cannot read {}", src.display()))?;
                let dst = dir.path().join(format!("node{id}.toml"));
                std::fs::write(&dst, format!("{toml}\n{extra_config}"))?;
                services.push_str(&format!(
                    "  weir{id}:\n    extra_hosts: [\"host.docker.internal:host-gateway\"]\n    volumes:\n      - {}:/etc/weir/weir.toml:ro\n",
                    dst.display()
                ));
            }
            let over = dir.path().join("override.yml");
            std::fs::write(&over, format!("version: \"3.7\"\n{services}"))?;
            files.push(over);
            Some(dir)
        };
        let admin_key = std::env::var("WEIR_ADMIN_KEY")
            .ok()
            .filter(|k| !k.is_empty())
            .unwrap_or_else(new_key);
        crate::set_api_key(admin_key.clone());
        let c = DockerCluster {
            admin_key,
            project: format!("weir-chaos-{}", std::process::id()),
            files,
            _configs: configs,
            compose,
            killed: HashSet::new(),
            isolated: HashSet::new(),
            faults: Vec::new(),
        };
        c.dc(&["up", "-d"])?;
        crate::wait_healthy(&c, std::time::Duration::from_secs(90)).await?;
        Ok(c)
    }

    fn dc(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..]).args(["-p", &self.project]);
        cmd.env("WEIR_ADMIN_KEY", &self.admin_key);
        for f in &self.files {
            cmd.arg("-f").arg(f);
        }
        cmd.args(args);
        run(&mut cmd)
    }

    fn container(&self, id: u64) -> anyhow::Result<String> {
        self.dc(&["ps", "-q", &format!("weir{id}")])
    }

    fn network(&self) -> String {
        format!("{}_default", self.project)
    }

    /// gRPC addresses clients use, by node id.
    pub fn client_addrs(&self) -> Vec<String> {
        (1..=3)
            .map(|id| format!("http://127.0.0.1:{}", ports(id).1))
            .collect()
    }

    /// The containers' logs, for a failure message.
    pub fn logs(&self) -> String {
        self.dc(&["logs", "--no-color", "--tail", "30"])
            .unwrap_or_default()
    }
}

impl Faults for DockerCluster {
    fn members(&self) -> u64 {
        3
    }

    fn running_http(&self) -> Vec<(u64, SocketAddr)> {
        (1..=3)
            .filter(|id| !self.killed.contains(id))
            .map(|id| (id, SocketAddr::from(([127, 0, 0, 1], ports(id).0))))
            .collect()
    }

    fn injected(&mut self) -> &mut Vec<String> {
        &mut self.faults
    }

    fn kill_node(&mut self, id: u64) -> anyhow::Result<()> {
        self.dc(&["kill", "-s", "SIGKILL", &format!("weir{id}")])?;
        self.killed.insert(id);
        Ok(())
    }

    fn restart_node(&mut self, id: u64) -> anyhow::Result<()> {
        self.dc(&["up", "-d", &format!("weir{id}")])?;
        self.killed.remove(&id);
        Ok(())
    }

    fn pause_node(&mut self, id: u64) -> anyhow::Result<()> {
        self.dc(&["pause", &format!("weir{id}")]).map(drop)
    }

    fn resume_node(&mut self, id: u64) -> anyhow::Result<()> {
        self.dc(&["unpause", &format!("weir{id}")]).map(drop)
    }

    fn isolate_node(&mut self, id: u64) -> anyhow::Result<()> {
        let c = self.container(id)?;
        run(Command::new("docker").args(["network", "disconnect", &self.network(), &c]))?;
        self.isolated.insert(id);
        Ok(())
    }

    fn heal_all(&mut self) -> anyhow::Result<()> {
        for id in std::mem::take(&mut self.isolated) {
            let c = self.container(id)?;
            // The alias is the service name, as compose gave it.
            run(Command::new("docker").args([
                "network",
                "connect",
                "--alias",
                &format!("weir{id}"),
                &self.network(),
                &c,
            ]))?;
        }
        Ok(())
    }

    fn wipe_node(&mut self, id: u64) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.killed.contains(&id),
            "wipe a node only after killing it"
        );
        self.dc(&["rm", "-f", &format!("weir{id}")])?;
        run(Command::new("docker").args([
            "volume",
            "rm",
            &format!("{}_weir{id}-data", self.project),
        ]))?;
        Ok(())
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        let _ = self.dc(&["down", "-v"]);
    }
}

/// A new access key in Weir's format (`weir_<16 hex digits>_<43 base64url characters>`),
/// as `weir keys generate` prints: the compose nodes register it as their first admin key.
fn new_key() -> String {
    use rand::Rng as _;
    const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    let id: String = (0..16)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect();
    let secret: String = (0..43)
        .map(|_| B64URL[rng.random_range(0..B64URL.len())] as char)
        .collect();
    format!("weir_{id}_{secret}")
}
