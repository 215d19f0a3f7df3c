//! Shared by the integration tests: a real node on port 0 in a temp dir, and clients.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use weir_proto::v1::ingest_client::IngestClient;
use weir_proto::v1::{AppendRequest, AppendResponse, Record};
use weir_server::{Config, Node};

pub struct TestNode {
    pub node: Option<Node>,
    pub dir: tempfile::TempDir,
    pub http: String,
    pub grpc: String,
}

pub fn test_config(dir: &std::path::Path) -> Config {
    let mut cfg = Config {
        data_dir: dir.to_path_buf(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    cfg.storage.segment_size_bytes = 4 << 20;
    cfg.index.writer_memory_bytes = 16 << 20;
    cfg
}

impl TestNode {
    pub async fn start() -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_config(dir.path());
        Self::start_with(dir, cfg).await
    }

    pub async fn start_with(dir: tempfile::TempDir, cfg: Config) -> TestNode {
        let node = Node::start(cfg).await.expect("node starts");
        let http = format!("http://{}", node.http_addr());
        let grpc = format!("http://{}", node.grpc_addr());
        TestNode {
            node: Some(node),
            dir,
            http,
            grpc,
        }
    }

    pub async fn client(&self) -> IngestClient<tonic::transport::Channel> {
        IngestClient::connect(self.grpc.clone())
            .await
            .expect("grpc connects")
    }

    pub async fn append(&self, req: AppendRequest) -> Result<AppendResponse, tonic::Status> {
        self.client()
            .await
            .append(req)
            .await
            .map(|r| r.into_inner())
    }

    /// Appends `records` to the default tenant; panics unless the node accepts them.
    pub async fn append_records(&self, records: Vec<Record>) -> AppendResponse {
        self.append(AppendRequest {
            records,
            ..Default::default()
        })
        .await
        .expect("append accepted")
    }

    /// GET /api/v1/search with these parameters, as JSON; panics on non-200.
    pub async fn search(&self, params: &[(&str, &str)]) -> serde_json::Value {
        let (status, body) = self.search_raw(params, None).await;
        assert_eq!(status, 200, "search {params:?} failed: {body}");
        body
    }

    pub async fn search_raw(
        &self,
        params: &[(&str, &str)],
        tenant: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut req = reqwest::Client::new()
            .get(format!("{}/api/v1/search", self.http))
            .query(params);
        if let Some(t) = tenant {
            req = req.header("x-weir-tenant", t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    /// Polls until the search returns `n` total hits (records become searchable within a
    /// second of their ack; this waits up to 10 s so a slow CI machine does not flake).
    pub async fn wait_total(&self, params: &[(&str, &str)], n: u64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let body = self.search(params).await;
            if body["total"].as_u64() == Some(n) || Instant::now() > deadline {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Graceful shutdown, then a new node on the same data directory and config.
    pub async fn restart(self) -> TestNode {
        let dir = self.stop().await;
        let cfg = test_config(dir.path());
        TestNode::start_with(dir, cfg).await
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        self.node
            .take()
            .unwrap()
            .shutdown()
            .await
            .expect("clean shutdown");
        self.dir
    }
}

pub use weir_proto::now_ns;

pub fn record(body: &str) -> Record {
    Record {
        body: body.as_bytes().to_vec(),
        timestamp_ns: now_ns(),
        level: "info".into(),
        service: "checkout".into(),
        ..Default::default()
    }
}

pub fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn bodies(v: &serde_json::Value) -> Vec<String> {
    v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["body"].as_str().unwrap().to_owned())
        .collect()
}
