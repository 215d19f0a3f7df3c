//! Sink configuration: `[[mirror.sinks]]` tables of the node's TOML file.
//!
//! One struct for both backends keeps the file flat; keys that belong to the other
//! backend are refused by name in [`SinkConfig::validate`].

use std::path::PathBuf;

use serde::Deserialize;

/// Which backend a sink writes to: the API's type, since status and the dead-letter
/// listing name it too, spelled as in the configuration.
pub use weir_proto::api::mirror::Backend;

/// How Loki push bodies are encoded.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LokiFormat {
    /// `logproto.PushRequest`, snappy block compressed (what Promtail and Alloy send).
    #[default]
    Protobuf,
    /// `{"streams":[...]}`.
    Json,
}

/// One sink.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique name: `[a-z0-9_-]{1,64}`. Names the cursor, the dead-letter log and the
    /// metrics; renaming a sink starts it over from what the WAL still holds.
    pub name: String,
    /// `elasticsearch` or `loki`.
    #[serde(rename = "type")]
    pub backend: Backend,
    /// Base URL, e.g. `https://es:9200` or `http://loki:3100`.
    pub url: String,
    /// Tenants sent to this sink; empty sends every tenant.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Tenants never sent to this sink (e.g. those that have a sink of their own); not
    /// together with `tenants`.
    #[serde(default)]
    pub exclude_tenants: Vec<String>,
    /// Encoded bytes per request at most (a larger single record is sent alone).
    #[serde(default = "d_batch_bytes")]
    pub batch_bytes_max: usize,
    /// Records per request at most.
    #[serde(default = "d_batch_records")]
    pub batch_records_max: usize,
    /// How long a worker that has caught up waits before reading again.
    #[serde(default = "d_flush_interval")]
    pub flush_interval_ms: u64,
    /// Requests in flight to this backend at once, over all shards.
    #[serde(default = "d_concurrency")]
    pub concurrency: usize,
    /// Time limit of one request.
    #[serde(default = "d_request_timeout")]
    pub request_timeout_ms: u64,
    /// First retry delay; doubles per attempt (full jitter), capped by `retry_backoff_max_ms`.
    #[serde(default = "d_backoff_initial")]
    pub retry_backoff_initial_ms: u64,
    /// Largest retry delay.
    #[serde(default = "d_backoff_max")]
    pub retry_backoff_max_ms: u64,
    /// Consecutive failed requests that open the circuit breaker.
    #[serde(default = "d_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker waits before a half-open probe.
    #[serde(default = "d_breaker_open")]
    pub breaker_open_ms: u64,
    /// Bytes the dead-letter log of this sink may hold (it is also held in memory, to be
    /// listed and replayed); when full the sink stops
    /// advancing (nothing is dropped) until `weir dlq replay` or an operator frees it.
    #[serde(default = "d_dlq_bytes")]
    pub dlq_bytes_max: u64,
    /// Bytes of WAL per shard this sink may hold back from compaction before, and only
    /// while the node is under disk pressure (`storage.disk_free_bytes_min`), its oldest
    /// undelivered records are released: counted in `weir_mirror_dropped_records_total`,
    /// shown in status and logged. Estimated from the shard's WAL size and index span.
    #[serde(default = "d_unmirrored")]
    pub unmirrored_bytes_max: u64,

    // Elasticsearch
    /// Index name pattern: `{tenant}` and the date tokens `{yyyy.MM.dd}`, `{yyyy-MM-dd}`,
    /// `{yyyy.MM}`, `{yyyy}` of the record's UTC timestamp.
    pub index: Option<String>,
    /// Basic auth user (with `password`).
    pub username: Option<String>,
    /// Basic auth password.
    pub password: Option<String>,
    /// API key (`Authorization: ApiKey <key>`), instead of basic auth.
    pub api_key: Option<String>,
    /// Install an index template (timestamp as date, level and labels as keyword) at start.
    pub install_template: Option<bool>,

    // Loki
    /// `X-Scope-OrgID` for every request; by default the record's tenant.
    pub org_id: Option<String>,
    /// Record fields and label keys that become Loki stream labels; `labels.*` means every
    /// record label. Default: service, namespace, pod, cluster, level, labels.* — every
    /// part of a Weir stream's identity, so that each Loki stream is fed from one shard in
    /// log order (leaving one out merges streams of several shards into one Loki stream,
    /// whose entries then arrive from several workers out of time order).
    pub stream_labels: Option<Vec<String>>,
    /// Record fields, label and attribute keys sent as structured metadata.
    /// Default: trace_id, span_id.
    pub structured_metadata: Option<Vec<String>>,
    /// `protobuf` (default) or `json`.
    pub format: Option<LokiFormat>,

    // TLS (an https url)
    /// CA bundle (PEM) the backend's certificate must chain to, instead of the public
    /// roots built into Weir (Mozilla's).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) presented to a backend that asks for one.
    pub client_cert_file: Option<PathBuf>,
    /// The private key of `client_cert_file` (PEM, PKCS#8, PKCS#1 or SEC1).
    pub client_key_file: Option<PathBuf>,
    /// Accept any certificate the backend presents: encrypted, but to whoever answers.
    /// For a test bench only; logged as a warning at start.
    #[serde(default)]
    pub tls_insecure_skip_verify: bool,
}

fn d_batch_bytes() -> usize {
    4 << 20
}
fn d_batch_records() -> usize {
    5000
}
fn d_flush_interval() -> u64 {
    200
}
fn d_concurrency() -> usize {
    4
}
fn d_request_timeout() -> u64 {
    30_000
}
fn d_backoff_initial() -> u64 {
    100
}
fn d_backoff_max() -> u64 {
    30_000
}
fn d_breaker_failures() -> u32 {
    5
}
fn d_breaker_open() -> u64 {
    5_000
}
fn d_dlq_bytes() -> u64 {
    256 << 20
}
fn d_unmirrored() -> u64 {
    10 << 30
}

/// Default Elasticsearch index pattern.
pub const DEFAULT_INDEX_PATTERN: &str = "logs-{tenant}-{yyyy.MM.dd}";

impl SinkConfig {
    /// The index pattern in use.
    pub fn index_pattern(&self) -> &str {
        self.index.as_deref().unwrap_or(DEFAULT_INDEX_PATTERN)
    }

    /// Loki stream label sources in use.
    pub fn stream_labels(&self) -> Vec<String> {
        self.stream_labels.clone().unwrap_or_else(|| {
            [
                "service",
                "namespace",
                "pod",
                "cluster",
                "level",
                "labels.*",
            ]
            .map(String::from)
            .to_vec()
        })
    }

    /// Loki structured metadata sources in use.
    pub fn structured_metadata(&self) -> Vec<String> {
        self.structured_metadata
            .clone()
            .unwrap_or_else(|| ["trace_id", "span_id"].map(String::from).to_vec())
    }

    /// Whether records of `tenant` go to this sink.
    pub fn wants_tenant(&self, tenant: &str) -> bool {
        (self.tenants.is_empty() || self.tenants.iter().any(|t| t == tenant))
            && !self.exclude_tenants.iter().any(|t| t == tenant)
    }

    /// Checks what parses but cannot work; every message names the sink and the key.
    ///
    /// # Errors
    /// A description of the first problem found.
    pub fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        let key = |k: &str| format!("mirror.sinks[name={n}].{k}");
        if n.is_empty()
            || n.len() > 64
            || !n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "mirror sink name {n:?} must be 1-64 characters of a-z, 0-9, _ and -"
            ));
        }
        let https = self.url.starts_with("https://");
        let rest = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"))
            .ok_or_else(|| {
                format!(
                    "{} must start with http:// or https://, not {:?}",
                    key("url"),
                    self.url
                )
            })?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("{} has no host: {:?}", key("url"), self.url));
        }
        for (v, k) in [
            (self.batch_bytes_max as u64, "batch_bytes_max"),
            (self.batch_records_max as u64, "batch_records_max"),
            (self.concurrency as u64, "concurrency"),
            (self.request_timeout_ms, "request_timeout_ms"),
            (self.retry_backoff_initial_ms, "retry_backoff_initial_ms"),
            (u64::from(self.breaker_failures), "breaker_failures"),
            (self.dlq_bytes_max, "dlq_bytes_max"),
        ] {
            if v == 0 {
                return Err(format!("{} must be positive", key(k)));
            }
        }
        if self.retry_backoff_max_ms < self.retry_backoff_initial_ms {
            return Err(format!(
                "{} must be at least retry_backoff_initial_ms",
                key("retry_backoff_max_ms")
            ));
        }
        let es_only = [
            ("index", self.index.is_some()),
            ("username", self.username.is_some()),
            ("password", self.password.is_some()),
            ("api_key", self.api_key.is_some()),
            ("install_template", self.install_template.is_some()),
        ];
        let loki_only = [
            ("org_id", self.org_id.is_some()),
            ("stream_labels", self.stream_labels.is_some()),
            ("structured_metadata", self.structured_metadata.is_some()),
            ("format", self.format.is_some()),
        ];
        let (wrong, other) = match self.backend {
            Backend::Elasticsearch => (&loki_only[..], "loki"),
            Backend::Loki => (&es_only[..], "elasticsearch"),
        };
        if let Some((k, _)) = wrong.iter().find(|(_, set)| *set) {
            return Err(format!(
                "{} applies to {other} sinks only, and this sink's type is {}",
                key(k),
                self.backend.as_str()
            ));
        }
        if !self.tenants.is_empty() && !self.exclude_tenants.is_empty() {
            return Err(format!(
                "{}: give either tenants (only these) or exclude_tenants (all but these), not both",
                key("exclude_tenants")
            ));
        }
        let tls_keys = [
            ("ca_file", self.ca_file.is_some()),
            ("client_cert_file", self.client_cert_file.is_some()),
            ("client_key_file", self.client_key_file.is_some()),
            ("tls_insecure_skip_verify", self.tls_insecure_skip_verify),
        ];
        if let Some((k, _)) = tls_keys.iter().find(|(_, set)| *set && !https) {
            return Err(format!(
                "{} applies to an https url, and this sink's url is {:?}",
                key(k),
                self.url
            ));
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(format!(
                "{}: client_cert_file and client_key_file go together",
                key("client_cert_file")
            ));
        }
        if self.tls_insecure_skip_verify && self.ca_file.is_some() {
            return Err(format!(
                "{}: a ca_file is not used when verification is off; remove one of them",
                key("tls_insecure_skip_verify")
            ));
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(format!(
                "{}: username and password go together",
                key("username")
            ));
        }
        if self.username.is_some() && self.api_key.is_some() {
            return Err(format!(
                "{}: use either basic auth or an api key, not both",
                key("api_key")
            ));
        }
        if self.backend == Backend::Elasticsearch {
            crate::es::IndexPattern::parse(self.index_pattern())
                .map_err(|e| format!("{}: {e}", key("index")))?;
        }
        if self.backend == Backend::Loki && self.stream_labels().is_empty() {
            return Err(format!(
                "{} must name at least one field: Loki needs a label per stream",
                key("stream_labels")
            ));
        }
        Ok(())
    }
}

/// Checks a whole set of sinks: each one, and that names are unique.
///
/// # Errors
/// [`crate::Error::Config`] describing the first problem found.
pub fn validate_sinks(sinks: &[SinkConfig]) -> crate::Result<()> {
    let mut names = std::collections::BTreeSet::new();
    for s in sinks {
        s.validate().map_err(crate::Error::Config)?;
        if !names.insert(&s.name) {
            return Err(crate::Error::Config(format!(
                "two mirror sinks are named {:?}; mirror.sinks names must be unique",
                s.name
            )));
        }
    }
    Ok(())
}

/// The raft cursor names of `sinks`: the cursors that hold back WAL compaction.
pub fn cursor_names(sinks: &[SinkConfig]) -> Vec<String> {
    sinks.iter().map(|s| crate::cursor_name(&s.name)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> SinkConfig {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn defaults_make_a_working_sink() {
        let c = parse("name = \"es\"\ntype = \"elasticsearch\"\nurl = \"http://es:9200\"\n");
        c.validate().unwrap();
        assert_eq!(c.index_pattern(), DEFAULT_INDEX_PATTERN);
    }

    #[test]
    fn a_key_of_the_other_backend_is_named() {
        let c = parse("name = \"l\"\ntype = \"loki\"\nurl = \"http://loki:3100\"\nindex = \"x\"\n");
        let e = c.validate().unwrap_err();
        assert!(
            e.contains("mirror.sinks[name=l].index") && e.contains("elasticsearch"),
            "{e}"
        );
    }

    #[test]
    fn a_tenant_with_its_own_sink_can_be_left_out_of_the_shared_one() {
        let shared = parse("name = \"es\"\ntype = \"elasticsearch\"\nurl = \"http://e:9200\"\nexclude_tenants = [\"acme\"]\n");
        shared.validate().unwrap();
        let own = parse("name = \"acme-es\"\ntype = \"elasticsearch\"\nurl = \"http://acme:9200\"\ntenants = [\"acme\"]\n");
        own.validate().unwrap();
        assert!(shared.wants_tenant("default") && !shared.wants_tenant("acme"));
        assert!(own.wants_tenant("acme") && !own.wants_tenant("default"));
        let both = parse("name = \"x\"\ntype = \"loki\"\nurl = \"http://l:3100\"\ntenants = [\"a\"]\nexclude_tenants = [\"b\"]\n");
        assert!(both.validate().unwrap_err().contains("not both"));
    }

    #[test]
    fn tls_keys_need_an_https_url_and_go_together() {
        let https = "name = \"l\"\ntype = \"loki\"\nurl = \"https://loki:3100\"\n";
        parse(https).validate().unwrap();
        parse(&format!("{https}ca_file = \"/ca.crt\"\nclient_cert_file = \"/c.crt\"\nclient_key_file = \"/c.key\"\n"))
            .validate()
            .unwrap();
        let e = parse(
            "name = \"l\"\ntype = \"loki\"\nurl = \"http://loki:3100\"\nca_file = \"/ca.crt\"\n",
        )
        .validate()
        .unwrap_err();
        assert!(
            e.contains("mirror.sinks[name=l].ca_file") && e.contains("https"),
            "{e}"
        );
        let e = parse(&format!("{https}client_cert_file = \"/c.crt\"\n"))
            .validate()
            .unwrap_err();
        assert!(e.contains("client_key_file"), "{e}");
        let e = parse(&format!(
            "{https}ca_file = \"/ca.crt\"\ntls_insecure_skip_verify = true\n"
        ))
        .validate()
        .unwrap_err();
        assert!(e.contains("tls_insecure_skip_verify"), "{e}");
        let e = parse("name = \"l\"\ntype = \"loki\"\nurl = \"ftp://loki\"\n")
            .validate()
            .unwrap_err();
        assert!(e.contains("http:// or https://"), "{e}");
    }

    #[test]
    fn a_bad_index_pattern_is_named() {
        let c = parse("name = \"e\"\ntype = \"elasticsearch\"\nurl = \"http://e:9200\"\nindex = \"logs-{month}\"\n");
        let e = c.validate().unwrap_err();
        assert!(e.contains(".index") && e.contains("{month}"), "{e}");
    }
}
