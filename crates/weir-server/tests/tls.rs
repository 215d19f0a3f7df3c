//! TLS on the node's ports, with certificates made in the test: what a client that trusts
//! the node's CA gets (an ingest and search round trip over gRPC and HTTPS), what one that
//! does not or that lacks a client certificate gets (nothing: the handshake fails), a
//! certificate replaced on disk reaching new connections without a restart, and a cluster
//! whose peer port speaks only mutual TLS: it works, and a stranger without the cluster's
//! certificate gets nothing from it.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{record, test_config};
use weir_proto::v1::ingest_client::IngestClient;
use weir_proto::v1::peer_client::PeerClient;
use weir_proto::v1::{AppendRequest, HelloRequest};
use weir_server::config::MemberConfig;
use weir_server::tls::{self, ClientFiles, ClientTls};
use weir_server::{Config, Node};
use weir_testkit::ports::loopback_port as free_port;

/// A CA and certificates it signed, as files: `ca.crt`, and `node<i>.crt`/`node<i>.key`
/// naming `localhost` and `127.0.0.1`.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
}

impl Pki {
    fn new(dir: &Path, name: &str, nodes: usize) -> Pki {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let g = tls::generate(name, &vec![names; nodes]).unwrap();
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, &g.ca_cert).unwrap();
        for (i, (cert, key)) in g.nodes.iter().enumerate() {
            std::fs::write(dir.join(format!("node{i}.crt")), cert).unwrap();
            std::fs::write(dir.join(format!("node{i}.key")), key).unwrap();
        }
        Pki { dir, ca }
    }

    fn cert(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{i}.crt"))
    }

    fn key(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{i}.key"))
    }

    /// A client trusting this CA, presenting `identity` (a certificate of some CA).
    fn client(&self, identity: Option<(PathBuf, PathBuf)>) -> ClientFiles {
        ClientFiles {
            ca: Some(("test ca", self.ca.clone())),
            identity: identity.map(|(c, k)| [("test cert", c), ("test key", k)]),
            alpn: tls::ALPN_HTTP,
        }
    }
}

/// An HTTPS client with `files` (its CA, its certificate).
fn https(files: &ClientFiles) -> reqwest::Client {
    let tls = ClientTls::load(files.clone()).unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls.current()).clone())
        .build()
        .unwrap()
}

/// A gRPC client over TLS with `files`, connected (the handshake done) or the error.
async fn grpc(
    addr: SocketAddr,
    files: &ClientFiles,
) -> Result<IngestClient<tonic::transport::Channel>, tonic::transport::Error> {
    let tls = ClientTls::load(ClientFiles {
        alpn: tls::ALPN_GRPC,
        ..files.clone()
    })
    .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tls::Connector::new(tls))
        .await?;
    Ok(IngestClient::new(channel))
}

fn tls_config(dir: &Path, pki: &Pki) -> Config {
    let mut cfg = test_config(&dir.join("data"));
    cfg.tls.cert_file = pki.cert(0);
    cfg.tls.key_file = pki.key(0);
    cfg
}

async fn search_total(client: &reqwest::Client, addr: SocketAddr, q: &str) -> u64 {
    let v: serde_json::Value = client
        .get(format!("https://localhost:{}/api/v1/search", addr.port()))
        .query(&[("q", q)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["total"].as_u64().unwrap()
}

/// Polls `f` until it is true, for up to 20 s.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn ingest_over_grpc_tls_and_search_over_https_with_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca", 1);
    let node = Node::start(tls_config(dir.path(), &pki)).await.unwrap();
    let trusted = pki.client(None);

    let mut client = grpc(node.grpc_addr(), &trusted).await.unwrap();
    client
        .append(AppendRequest {
            records: vec![record("over tls")],
            ..Default::default()
        })
        .await
        .unwrap();
    let http = https(&trusted);
    eventually("the record is searchable over https", || async {
        search_total(&http, node.http_addr(), "tls").await == 1
    })
    .await;
    let health = http
        .get(format!(
            "https://127.0.0.1:{}/healthz",
            node.http_addr().port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        health.status(),
        200,
        "an IP address in the URL matches its SAN"
    );
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca", 1);
    let other = Pki::new(dir.path(), "other", 0);
    let node = Node::start(tls_config(dir.path(), &pki)).await.unwrap();

    let e = https(&other.client(None))
        .get(format!(
            "https://localhost:{}/healthz",
            node.http_addr().port()
        ))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{e:?}");
    assert!(grpc(node.grpc_addr(), &other.client(None)).await.is_err());
    // Plaintext to a TLS port: no answer either.
    let plain = reqwest::get(format!("http://{}/healthz", node.http_addr())).await;
    assert!(plain.is_err(), "{plain:?}");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_client_ca_file_a_client_without_a_certificate_from_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca", 1);
    let clients = Pki::new(dir.path(), "clients", 1);
    let strangers = Pki::new(dir.path(), "strangers", 1);
    let mut cfg = tls_config(dir.path(), &pki);
    cfg.tls.client_ca_file = clients.ca.clone();
    // Beyond loopback without keys: allowed, because every client must show a certificate.
    cfg.http_addr = "0.0.0.0:0".parse().unwrap();
    cfg.check_exposure().unwrap();
    cfg.http_addr = "127.0.0.1:0".parse().unwrap();
    let node = Node::start(cfg).await.unwrap();
    let url = format!("https://localhost:{}/healthz", node.http_addr().port());

    for (who, files) in [
        ("no certificate", pki.client(None)),
        (
            "a certificate of another CA",
            pki.client(Some((strangers.cert(0), strangers.key(0)))),
        ),
    ] {
        let r = https(&files).get(&url).send().await;
        assert!(r.is_err(), "{who}: {r:?}");
        let r = grpc(node.grpc_addr(), &files).await;
        if let Ok(mut c) = r {
            // TLS 1.3: the server's refusal of the certificate arrives after the client
            // finished its side of the handshake, with the first request.
            let appended = c
                .append(AppendRequest {
                    records: vec![record("stranger")],
                    ..Default::default()
                })
                .await;
            assert!(appended.is_err(), "{who}: {appended:?}");
        }
    }
    let member = pki.client(Some((clients.cert(0), clients.key(0))));
    assert_eq!(https(&member).get(&url).send().await.unwrap().status(), 200);
    let mut c = grpc(node.grpc_addr(), &member).await.unwrap();
    c.append(AppendRequest {
        records: vec![record("member")],
        ..Default::default()
    })
    .await
    .unwrap();
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_replaced_certificate_reaches_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let old = Pki::new(dir.path(), "old", 1);
    let new = Pki::new(dir.path(), "new", 1);
    let files = dir.path().join("live");
    std::fs::create_dir_all(&files).unwrap();
    let (cert, key) = (files.join("node.crt"), files.join("node.key"));
    std::fs::copy(old.cert(0), &cert).unwrap();
    std::fs::copy(old.key(0), &key).unwrap();
    let mut cfg = test_config(&dir.path().join("data"));
    cfg.tls.cert_file = cert.clone();
    cfg.tls.key_file = key.clone();
    cfg.tls.reload_interval_secs = 1;
    let node = Node::start(cfg).await.unwrap();
    let url = format!("https://localhost:{}/healthz", node.http_addr().port());
    assert_eq!(
        https(&old.client(None))
            .get(&url)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Written as an operator's tooling would: new files renamed over the old ones.
    for (from, to) in [(new.key(0), &key), (new.cert(0), &cert)] {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
    eventually("a new connection gets the new certificate", || async {
        // A new client each time: a pooled connection keeps the old session.
        https(&new.client(None)).get(&url).send().await.is_ok()
    })
    .await;
    assert!(https(&old.client(None)).get(&url).send().await.is_err());
    assert!(grpc(node.grpc_addr(), &new.client(None)).await.is_ok());
    node.shutdown().await.unwrap();
}

/// Configs of a three-node cluster on loopback whose members speak mutual TLS with
/// `pki`'s certificates, on the peer port and (same certificates) on gRPC and HTTP.
fn cluster_configs(root: &Path, pki: &Pki) -> Vec<Config> {
    let ports: Vec<(u16, u16, u16)> = (0..3)
        .map(|_| (free_port(), free_port(), free_port()))
        .collect();
    let members: Vec<MemberConfig> = ports
        .iter()
        .enumerate()
        .map(|(i, (g, h, p))| MemberConfig {
            id: i as u64 + 1,
            peer: format!("127.0.0.1:{p}"),
            grpc: format!("127.0.0.1:{g}"),
            http: format!("127.0.0.1:{h}"),
        })
        .collect();
    ports
        .iter()
        .enumerate()
        .map(|(i, (g, h, p))| {
            let mut cfg = test_config(&root.join(format!("node{i}")));
            cfg.grpc_addr = format!("127.0.0.1:{g}").parse().unwrap();
            cfg.http_addr = format!("127.0.0.1:{h}").parse().unwrap();
            cfg.storage.shards = 2;
            cfg.storage.commit_timeout_ms = 5000;
            cfg.cluster.node_id = i as u64 + 1;
            cfg.cluster.peer_addr = format!("127.0.0.1:{p}").parse().unwrap();
            cfg.cluster.nodes = members.clone();
            cfg.tls.cert_file = pki.cert(i);
            cfg.tls.key_file = pki.key(i);
            cfg.tls.peer_ca_file = pki.ca.clone();
            cfg
        })
        .collect()
}

#[tokio::test]
async fn a_cluster_speaks_mutual_tls_and_a_stranger_gets_nothing_from_the_peer_port() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster", 3);
    let strangers = Pki::new(dir.path(), "strangers", 1);
    let cfgs = cluster_configs(dir.path(), &pki);
    let starts: Vec<_> = cfgs
        .iter()
        .map(|c| tokio::spawn(Node::start(c.clone())))
        .collect();
    let mut nodes = Vec::new();
    for s in starts {
        nodes.push(s.await.unwrap().expect("a member starts"));
    }
    let trusted = pki.client(None);

    // Appended through node 2, searched from node 3: raft, forwarded appends and
    // fan-out searches all cross the peer port.
    let batch = AppendRequest {
        records: (0..20).map(|i| record(&format!("mutual {i}"))).collect(),
        producer_id: "tls-test".into(),
        sequence: 1,
        ..Default::default()
    };
    let mut client = grpc(nodes[1].grpc_addr(), &trusted).await.unwrap();
    // Retried with the same producer and sequence until the shards have leaders.
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = client.append(batch.clone()).await {
        assert!(Instant::now() < deadline, "appends never commit: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let http = https(&trusted);
    eventually("node 3 finds all 20 records", || async {
        search_total(&http, nodes[2].http_addr(), "mutual").await == 20
    })
    .await;

    let peer = nodes[0].peer_addr().unwrap();
    let hello = HelloRequest::default();
    // Plaintext.
    if let Ok(mut c) = PeerClient::connect(format!("http://{peer}")).await {
        assert!(c.hello(hello.clone()).await.is_err());
    }
    // TLS trusting the cluster's CA, without a certificate or with another CA's.
    for identity in [None, Some((strangers.cert(0), strangers.key(0)))] {
        let tls = ClientTls::load(ClientFiles {
            alpn: tls::ALPN_GRPC,
            ..pki.client(identity.clone())
        })
        .unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{peer}"))
            .unwrap()
            .connect_with_connector(tls::Connector::new(tls))
            .await;
        if let Ok(ch) = channel {
            let answer = PeerClient::new(ch).hello(hello.clone()).await;
            assert!(answer.is_err(), "{identity:?}: {answer:?}");
        }
    }
    // A member's certificate is what it takes.
    let member = ClientTls::load(ClientFiles {
        alpn: tls::ALPN_GRPC,
        ..pki.client(Some((pki.cert(1), pki.key(1))))
    })
    .unwrap();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{peer}"))
        .unwrap()
        .connect_with_connector(tls::Connector::new(member))
        .await
        .unwrap();
    assert!(PeerClient::new(ch).hello(hello).await.is_ok());

    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_missing_or_unusable_tls_file_is_named_by_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca", 2);
    let mut cfg = tls_config(dir.path(), &pki);
    cfg.tls.key_file = dir.path().join("nope.key");
    let e = format!("{:#}", Node::start(cfg).await.err().unwrap());
    assert!(e.contains("tls.key_file") && e.contains("nope.key"), "{e}");

    let mut cfg = tls_config(dir.path(), &pki);
    cfg.tls.key_file = pki.key(1);
    let e = format!("{:#}", Node::start(cfg).await.err().unwrap());
    assert!(
        e.contains("tls.cert_file") && e.contains("tls.key_file"),
        "{e}"
    );

    let mut cfg = tls_config(dir.path(), &pki);
    cfg.tls.client_ca_file = pki.key(0);
    let e = format!("{:#}", Node::start(cfg).await.err().unwrap());
    assert!(e.contains("tls.client_ca_file"), "{e}");
}

#[tokio::test]
async fn mirrors_deliver_over_https_with_their_ca_and_are_refused_without_it() {
    use weir_testkit::elasticsearch::FakeElasticsearch;
    use weir_testkit::loki::FakeLoki;
    use weir_testkit::tls::TlsFront;

    let dir = tempfile::tempdir().unwrap();
    let backend = Pki::new(dir.path(), "backend", 1);
    let clients = Pki::new(dir.path(), "clients", 1);
    let read = |p: PathBuf| std::fs::read(p).unwrap();
    let es = FakeElasticsearch::start().await.unwrap();
    let loki = FakeLoki::start().await.unwrap();
    let untrusted_es = FakeElasticsearch::start().await.unwrap();
    let (cert, key) = (read(backend.cert(0)), read(backend.key(0)));
    let es_front = TlsFront::start(es.addr(), &cert, &key, None).await.unwrap();
    // Loki behind mutual TLS: the sink presents its client certificate.
    let client_ca = read(clients.ca.clone());
    let loki_front = TlsFront::start(loki.addr(), &cert, &key, Some(&client_ca))
        .await
        .unwrap();
    let untrusted_front = TlsFront::start(untrusted_es.addr(), &cert, &key, None)
        .await
        .unwrap();
    let url = |f: &TlsFront| format!("https://localhost:{}", f.addr().port());
    let ca = backend.ca.display().to_string();
    let text = format!(
        r#"
[[mirror.sinks]]
name = "es"
type = "elasticsearch"
url = "{es}"
ca_file = "{ca}"
flush_interval_ms = 20

[[mirror.sinks]]
name = "loki"
type = "loki"
url = "{loki}"
ca_file = "{ca}"
client_cert_file = "{client_cert}"
client_key_file = "{client_key}"
flush_interval_ms = 20

[[mirror.sinks]]
name = "untrusted"
type = "elasticsearch"
url = "{untrusted}"
flush_interval_ms = 20
retry_backoff_initial_ms = 20
retry_backoff_max_ms = 200
"#,
        es = url(&es_front),
        loki = url(&loki_front),
        untrusted = url(&untrusted_front),
        client_cert = clients.cert(0).display(),
        client_key = clients.key(0).display(),
    );
    let mut cfg = test_config(&dir.path().join("data"));
    cfg.mirror = toml::from_str::<Config>(&text).unwrap().mirror;
    let node = Node::start(cfg).await.unwrap();
    let mut client = IngestClient::connect(format!("http://{}", node.grpc_addr()))
        .await
        .unwrap();
    client
        .append(AppendRequest {
            records: (0..10).map(|i| record(&format!("mirrored {i}"))).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    eventually("both backends receive every record over https", || async {
        es.doc_count() == 10 && loki.entry_count() == 10
    })
    .await;
    // The sink without the backend's CA (public roots only) never gets past the handshake:
    // it retries, says why, and its backend has nothing.
    let status_url = format!("http://{}/api/v1/cluster", node.http_addr());
    eventually("the untrusted sink reports a certificate error", || async {
        let c: serde_json::Value = reqwest::get(&status_url)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        c["mirrors"].as_array().unwrap().iter().any(|m| {
            m["name"] == "untrusted"
                && m["last_error"]
                    .as_str()
                    .is_some_and(|e| e.to_lowercase().contains("certificate"))
        })
    })
    .await;
    assert_eq!(untrusted_es.doc_count(), 0);
    node.shutdown().await.unwrap();
}

/// Runs the `weir` binary with `stdin`; returns its exit code, stdout and stderr.
fn weir(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .env_remove("WEIR_KEY")
        .env_remove("WEIR_DATA_DIR")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `weir tls generate` makes certificates a node serves; `weir push` and `weir query`
/// reach it over https with `--ca`, and fail, saying so, without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_tls_with_ca_and_generates_the_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.display().to_string();
    let (code, out, err) = weir(
        &["tls", "generate", "--dir", &certs_arg, "--nodes", "1"],
        b"",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("node1.crt"), "{out}");
    let (code, _, err) = weir(&["tls", "generate", "--dir", &certs_arg], b"");
    assert_ne!(code, 0);
    assert!(err.contains("never overwritten"), "{err}");
    // `weir config check` loads the files as the server would.
    let file = dir.path().join("weir.toml");
    for (key, code_wanted) in [("node1.key", 0), ("missing.key", 1)] {
        let text = format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            certs.join("node1.crt").display().to_string(),
            certs.join(key).display().to_string()
        );
        std::fs::write(&file, text).unwrap();
        let (code, _, err) = weir(&["config", "check", file.to_str().unwrap()], b"");
        assert_eq!(code, code_wanted, "{err}");
        if code != 0 {
            assert!(
                err.contains("tls.key_file") && err.contains("missing.key"),
                "{err}"
            );
        }
    }
    let mut cfg = test_config(&dir.path().join("data"));
    cfg.tls.cert_file = certs.join("node1.crt");
    cfg.tls.key_file = certs.join("node1.key");
    let node = Node::start(cfg).await.unwrap();
    let ca = certs.join("ca.crt").display().to_string();
    let grpc_url = format!("https://localhost:{}", node.grpc_addr().port());
    let http_url = format!("https://127.0.0.1:{}", node.http_addr().port());

    let (code, _, err) = weir(
        &["push", "--addr", &grpc_url, "--ca", &ca],
        b"over the cli\n",
    );
    assert_eq!(code, 0, "{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, err) = weir(&["query", "--addr", &http_url, "--ca", &ca, "cli"], b"");
        assert_eq!(code, 0, "{err}");
        if out.contains("over the cli") {
            break;
        }
        assert!(Instant::now() < deadline, "never found: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Without --ca the public roots do not know this CA.
    let (code, _, err) = weir(&["query", "--addr", &http_url, "cli"], b"");
    assert_ne!(code, 0);
    assert!(err.contains("certificate"), "{err}");
    let (code, _, err) = weir(&["push", "--addr", &grpc_url], b"x\n");
    assert_ne!(code, 0);
    assert!(err.contains("--ca"), "{err}");
    node.shutdown().await.unwrap();
}
