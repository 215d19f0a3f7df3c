//! The configuration's keys as users see them: what each means (`weir config defaults`),
//! the deprecated spellings still accepted, and the nearest key to a misspelt one.
//!
//! Naming convention of every key: the thing, then its unit, then `_max` / `_min` for a
//! bound (`batch_bytes_max`, `disk_free_bytes_min`, `commit_interval_ms`); sizes,
//! intervals and capacities end with their unit (`segment_size_bytes`, `peer_queue_len`).
//! A key renamed to follow it keeps its old name as a deprecated alias (a `serde(alias)` on
//! the field and a row of [`DEPRECATED_KEYS`]) that logs a warning for one release.

use crate::config::Config;

/// Deprecated key -> the key that replaced it (dotted paths). Each also has a
/// `#[serde(alias)]` on the field, so old files keep working; loading one logs a warning.
pub const DEPRECATED_KEYS: &[(&str, &str)] = &[
    ("limits.max_batch_bytes", "limits.batch_bytes_max"),
    ("limits.max_batch_records", "limits.batch_records_max"),
    ("limits.max_record_bytes", "limits.record_bytes_max"),
    (
        "limits.max_labels_per_record",
        "limits.labels_per_record_max",
    ),
    (
        "limits.max_attributes_per_record",
        "limits.attributes_per_record_max",
    ),
    ("limits.max_label_name_bytes", "limits.label_name_bytes_max"),
    (
        "limits.max_label_value_bytes",
        "limits.label_value_bytes_max",
    ),
    (
        "limits.max_timestamp_age_secs",
        "limits.timestamp_age_secs_max",
    ),
    (
        "limits.max_timestamp_future_secs",
        "limits.timestamp_future_secs_max",
    ),
    ("storage.disk_free_min_bytes", "storage.disk_free_bytes_min"),
    (
        "cluster.replica_log_max_bytes",
        "cluster.replica_log_bytes_max",
    ),
    ("search.default_limit", "search.limit_default"),
    ("search.max_limit", "search.limit_max"),
];

/// Every key of the file (dotted path) and what it means. `weir config defaults` prints
/// them with their default values; a test checks that this table and [`Config`] name the
/// same keys.
pub const KEY_DOCS: &[(&str, &str)] = &[
    (
        "data_dir",
        "Where WAL segments, indexes and node state live.",
    ),
    (
        "grpc_addr",
        "gRPC listen address: weir.v1.Ingest/Append and OTLP LogsService/Export.",
    ),
    (
        "http_addr",
        "HTTP listen address: search API, health, metrics.",
    ),
    (
        "http.connections_max",
        "HTTP connections served at once; one more is answered 503.",
    ),
    (
        "http.header_read_timeout_ms",
        "Time a client has to send a request's headers (idle connections end).",
    ),
    (
        "http.request_uri_bytes_max",
        "Bytes of a request URI; over it: 414 with a body naming this key.",
    ),
    (
        "http.request_headers_bytes_max",
        "Bytes of a request's headers; over it: 431 with a body naming this key.",
    ),
    (
        "storage.shards",
        "Shards (raft groups); fixed for the life of a data directory.",
    ),
    (
        "storage.segment_size_bytes",
        "Largest WAL segment; segments start small and grow to it.",
    ),
    (
        "storage.io_backend",
        "WAL writes: \"auto\" (io_uring when allowed), \"uring\" or \"std\".",
    ),
    (
        "storage.proposal_queue_len",
        "Appends queued for the raft thread; past it: RESOURCE_EXHAUSTED, retry.",
    ),
    (
        "storage.commit_timeout_ms",
        "How long an append waits for its commit before UNAVAILABLE.",
    ),
    (
        "storage.dedup_producers_max",
        "Producers remembered per shard for idempotent retries.",
    ),
    (
        "storage.disk_free_bytes_min",
        "Below this free space: disk pressure (mirrors may release backlog).",
    ),
    (
        "limits.batch_bytes_max",
        "Encoded bytes of one request; over it the request is refused.",
    ),
    (
        "limits.batch_records_max",
        "Records in one request; over it the request is refused.",
    ),
    (
        "limits.record_bytes_max",
        "Body, label and attribute bytes of one record; over it the record is refused.",
    ),
    (
        "limits.labels_per_record_max",
        "Stream labels on one record.",
    ),
    (
        "limits.attributes_per_record_max",
        "Attributes on one record.",
    ),
    (
        "limits.label_name_bytes_max",
        "Bytes of a label or attribute name.",
    ),
    (
        "limits.label_value_bytes_max",
        "Bytes of a label value and of service, namespace, pod, cluster.",
    ),
    (
        "limits.timestamp_age_secs_max",
        "How far in the past a record's timestamp may be.",
    ),
    (
        "limits.timestamp_future_secs_max",
        "How far in the future a record's timestamp may be.",
    ),
    (
        "limits.tenant_bytes_max",
        "Bytes of a tenant name (characters A-Z a-z 0-9 _ . -).",
    ),
    (
        "index.partition_span_secs",
        "Time span of one index partition (retention drops whole partitions).",
    ),
    (
        "index.commit_interval_ms",
        "How often the indexer commits; records committed since are found by scanning the log's head.",
    ),
    (
        "index.head_bytes_max",
        "Bytes of committed log per shard that searches may scan while the index lags; past it, appends wait (then 429).",
    ),
    (
        "index.merge_fan_in",
        "Segments of about the same size an index partition gathers before merging them into one: more means less merging CPU and more segments per search (2 to 64).",
    ),
    (
        "index.random_access_maps",
        "Map the index files lookups read (terms, postings, stored records) for random access: a page read from disk brings only itself, not the disk's read-ahead window around it, which speeds the first lookups after a restart on a disk with a large read-ahead. Off by default: merges and long scans of data no longer cached then read a page at a time, and Linux 6.4+ reclaims pages of random-access maps first under memory pressure.",
    ),
    (
        "index.writer_memory_bytes",
        "Indexing memory per partition writer.",
    ),
    (
        "index.retention_secs",
        "Records older than this are dropped with their partition; 0 keeps all.",
    ),
    (
        "index.docstore_compression",
        "How new index partitions compress the stored records: zstd (smaller) or lz4 (cheaper to read back).",
    ),
    (
        "search.limit_default",
        "Hits per page when a search gives no limit.",
    ),
    (
        "search.limit_max",
        "Largest limit a search may ask for; larger ones are capped (and the answer says so).",
    ),
    (
        "search.histogram_buckets_max",
        "Most buckets one histogram (GET /api/v1/histogram) may have.",
    ),
    (
        "search.infix_cache_bytes",
        "Memory for infix lookups (*fragment*, a LogQL needle that is not a whole word): \
         the body words of recently searched index segments, kept for the next lookup.",
    ),
    (
        "query.range_hours_max",
        "Longest time range one LogQL query may span.",
    ),
    (
        "query.lines_max",
        "Most log lines one LogQL query returns; a larger limit is refused.",
    ),
    (
        "query.series_max",
        "Most series a LogQL metric query holds (each range aggregation and the result).",
    ),
    (
        "query.points_per_series_max",
        "Most points per series of a range query: (end - start) / step.",
    ),
    (
        "query.records_scanned_max",
        "Most records one LogQL query reads after the index narrowed it; past it, refused.",
    ),
    ("query.timeout_ms", "A LogQL query running longer is stopped and answered 503."),
    (
        "query.concurrent_max",
        "LogQL queries evaluated at once on a node; more wait for a slot within their timeout.",
    ),
    (
        "mirror.sinks",
        "Sinks to Elasticsearch and Loki, [[mirror.sinks]] tables: docs/mirrors.md.",
    ),
    ("syslog", "Syslog listeners, [[syslog]] tables: listen, transport (udp|tcp), tenant, message_bytes_max, connections_max. None by default."),
    (
        "auth.enabled",
        "Require an access key on every request but health; first start writes <data_dir>/admin.key.",
    ),
    (
        "auth.insecure",
        "Let a node without keys listen beyond loopback (anyone reaching it reads every tenant), \
         and a cluster's peer port without mutual TLS.",
    ),
    (
        "tls.cert_file",
        "This node's certificate chain (PEM) for gRPC and HTTP; empty: plaintext.",
    ),
    ("tls.key_file", "The private key of tls.cert_file (PEM)."),
    (
        "tls.client_ca_file",
        "CA bundle (PEM) client certificates must chain to on gRPC and HTTP; empty: none asked.",
    ),
    (
        "tls.peer_ca_file",
        "The cluster's CA (PEM): set, members speak mutual TLS on the peer port, both ways.",
    ),
    (
        "tls.peer_cert_file",
        "This node's certificate on the peer port, as server and client; empty: tls.cert_file.",
    ),
    (
        "tls.peer_key_file",
        "The private key of tls.peer_cert_file; empty: tls.key_file.",
    ),
    (
        "tls.reload_interval_secs",
        "How often the TLS files are checked; a changed file is loaded for new connections.",
    ),
    (
        "tls.handshake_timeout_ms",
        "Time a client has to finish its TLS handshake before it is disconnected.",
    ),
    ("tenant_limits.ingest_lines_per_sec", "Lines per second the cluster accepts for each tenant (each node: its share, divided by the members); 0: no limit. Over it: 429 with Retry-After."),
    ("tenant_limits.ingest_bytes_per_sec", "Bytes per second (body, labels, attributes) the cluster accepts for each tenant; 0: no limit."),
    ("tenant_limits.ingest_lines_burst", "Lines a node accepts at once above its share of the rate; 0: one second of the cluster-wide rate."),
    ("tenant_limits.ingest_bytes_burst", "Bytes a node accepts at once above its share of the rate; 0: one second of the rate."),
    ("tenant_limits.streams_max", "Streams of a tenant active at once on a node (a stream stays active 30 min after its last record); 0: no limit."),
    ("tenant_limits.query_range_hours_max", "Longest time range one query of a tenant may span; 0: query.range_hours_max."),
    ("tenant_limits.query_timeout_ms", "Time one query of a tenant may run; 0: query.timeout_ms."),
    ("tenant_limits.queries_concurrent_max", "Queries of one tenant running at once on a node; one more is answered 429. 0: only query.concurrent_max."),
    ("tenants", "One tenant's own limits, [[tenants]] tables: name, and any key of [tenant_limits]. None by default."),
    ("cluster.node_id", "This node's id, one of cluster.nodes."),
    (
        "cluster.peer_addr",
        "Where this node listens for peers (raft, forwarded appends, searches).",
    ),
    (
        "cluster.nodes",
        "Every member: [[cluster.nodes]] id, peer, grpc, http. Empty: one node.",
    ),
    (
        "cluster.peer_queue_len",
        "Raft messages queued per peer lane; past it they drop and raft resends.",
    ),
    (
        "cluster.replica_log_bytes_max",
        "WAL kept per shard for a replica that is behind; past it, it catches up by snapshot.",
    ),
    (
        "cluster.segment_replication",
        "Followers copy each shard leader's index segments instead of indexing again; false: every replica indexes.",
    ),
    (
        "cluster.segment_sync_interval_ms",
        "How often a follower fetches a shard leader's newest index segments (100 to 60000).",
    ),
];

/// The meaning of `key` (a dotted path), if it is one.
pub fn doc_of(key: &str) -> Option<&'static str> {
    KEY_DOCS.iter().find(|(k, _)| *k == key).map(|(_, d)| *d)
}

/// The deprecated keys present in a parsed file, each as a warning naming its
/// replacement.
pub fn deprecation_warnings(file: &toml::Table) -> Vec<String> {
    DEPRECATED_KEYS
        .iter()
        .filter(|(old, _)| has_path(file, old))
        .map(|(old, new)| {
            format!("config key {old} is deprecated and will be removed: rename it {new}")
        })
        .collect()
}

fn has_path(table: &toml::Table, dotted: &str) -> bool {
    let mut t = table;
    let mut parts = dotted.split('.').peekable();
    while let Some(p) = parts.next() {
        match (t.get(p), parts.peek()) {
            (Some(_), None) => return true,
            (Some(toml::Value::Table(inner)), Some(_)) => t = inner,
            _ => return false,
        }
    }
    false
}

/// Adds "did you mean" to serde's "unknown field `x`, expected one of `a`, `b`" when one
/// of the expected keys is close to the unknown one.
pub fn with_suggestion(message: String) -> String {
    let Some(rest) = message.split("unknown field `").nth(1) else {
        return message;
    };
    let Some((unknown, rest)) = rest.split_once('`') else {
        return message;
    };
    // serde lists the deprecated aliases too: suggest only current names.
    let deprecated = |k: &&str| {
        DEPRECATED_KEYS
            .iter()
            .any(|(old, _)| old.rsplit('.').next() == Some(*k))
    };
    let expected: Vec<&str> = rest
        .split("expected one of ")
        .nth(1)
        .or_else(|| rest.split("expected ").nth(1))
        .unwrap_or("")
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|k| !deprecated(k))
        .collect();
    match nearest(unknown, &expected) {
        Some(best) => format!("{message}\ndid you mean `{best}`?"),
        None => message,
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo or
/// a reordering of the same words.
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    // Words in another order are a near miss (max_batch_bytes ~ batch_bytes_max): compare
    // the spelling as given and with the words sorted, and keep the closer.
    let sorted = |w: &str| {
        let mut parts: Vec<&str> = w.split('_').collect();
        parts.sort_unstable();
        parts.join("_")
    };
    let sorted_word = sorted(word);
    candidates
        .iter()
        .map(|c| {
            let d = edit_distance(word, c).min(edit_distance(&sorted_word, &sorted(c)));
            (d, *c)
        })
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `weir config defaults`: every key with its default value and meaning, as a TOML file
/// that loads back to the defaults.
pub fn render_defaults() -> String {
    let value = serde_json::to_value(Config::default()).unwrap_or_default();
    let mut out = String::from(
        "# Weir's configuration keys with their defaults (weir config defaults).\n\
         # Every key is optional: an empty file, or none, is a working single node.\n\n",
    );
    let Some(top) = value.as_object() else {
        return out;
    };
    let (tables, scalars): (Vec<_>, Vec<_>) = top.iter().partition(|(_, v)| v.is_object());
    for (k, v) in scalars {
        push_key(&mut out, k, k, v);
    }
    for (name, table) in tables {
        out.push_str(&format!("\n[{name}]\n"));
        for (k, v) in table.as_object().into_iter().flatten() {
            push_key(&mut out, &format!("{name}.{k}"), k, v);
        }
        if name == "mirror" {
            push_key(&mut out, "mirror.sinks", "sinks", &serde_json::json!([]));
        }
    }
    out
}

fn push_key(out: &mut String, path: &str, key: &str, v: &serde_json::Value) {
    if let Some(doc) = doc_of(path) {
        out.push_str(&format!("# {doc}\n"));
    }
    // JSON scalars and arrays of them are valid TOML values (strings use the same escapes).
    out.push_str(&format!("{key} = {v}\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every dotted key of the default configuration.
    fn keys_of(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in v.as_object().into_iter().flatten() {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if v.is_object() {
                keys_of(v, &path, out);
            } else {
                out.push(path);
            }
        }
    }

    pub(crate) fn all_keys() -> Vec<String> {
        let mut keys = Vec::new();
        keys_of(
            &serde_json::to_value(Config::default()).unwrap(),
            "",
            &mut keys,
        );
        keys.push("mirror.sinks".into());
        keys
    }

    #[test]
    fn every_key_is_documented_and_every_documented_key_exists() {
        let keys = all_keys();
        for k in &keys {
            assert!(doc_of(k).is_some(), "config key {k} has no KEY_DOCS row");
        }
        for (k, _) in KEY_DOCS {
            assert!(keys.iter().any(|x| x == k), "KEY_DOCS names {k}, not a key");
        }
    }

    #[test]
    fn printed_defaults_load_back_as_the_defaults() {
        let text = render_defaults();
        let cfg: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            serde_json::to_value(&cfg).unwrap(),
            serde_json::to_value(Config::default()).unwrap()
        );
        assert!(text.contains("# Encoded bytes of one request"), "{text}");
        assert!(text.contains("batch_bytes_max = 16777216"), "{text}");
    }

    #[test]
    fn a_deprecated_key_still_loads_warns_and_means_its_replacement() {
        for (old, new) in DEPRECATED_KEYS {
            let (old_table, old_key) = old.split_once('.').unwrap();
            let (new_table, new_key) = new.split_once('.').unwrap();
            assert_eq!(old_table, new_table);
            let default = serde_json::to_value(Config::default()).unwrap();
            let value = &default[new_table][new_key];
            // A value other than the default, so the test sees it arrive.
            let changed = match value {
                serde_json::Value::Number(n) => (n.as_u64().unwrap() + 7).to_string(),
                other => panic!("{new}: {other}"),
            };
            let text = format!("[{old_table}]\n{old_key} = {changed}\n");
            let (cfg, warnings) = Config::from_toml_str(&text).unwrap();
            assert_eq!(
                serde_json::to_value(&cfg).unwrap()[new_table][new_key].to_string(),
                changed,
                "{old}"
            );
            assert_eq!(warnings.len(), 1, "{old}: {warnings:?}");
            assert!(warnings[0].contains(new), "{}", warnings[0]);
            assert!(all_keys().iter().any(|k| k == new), "{new} is not a key");
        }
    }

    #[test]
    fn an_unknown_key_suggests_the_nearest() {
        let e = Config::from_toml_str("[limits]\nmax_timestamp_future_ns = 5\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("did you mean `timestamp_future_secs_max`?"),
            "{e}"
        );
        let e = Config::from_toml_str("[storage]\nshardz = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `shards`?"), "{e}");
        let e = Config::from_toml_str("[storage]\nzzzzzzzzzzzz = 3\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("did you mean"), "{e}");
    }

    /// Refusals and docs name config keys (`limits.record_bytes_max`, ...): a name that
    /// is not a key sends an operator to a setting that stops the server from starting.
    /// Every `section.key` these texts mention must be a key.
    #[test]
    fn every_key_named_by_a_refusal_or_a_doc_exists() {
        let keys = all_keys();
        let texts = [
            (
                "weir-ingest/src/normalize.rs",
                include_str!("../../weir-ingest/src/normalize.rs"),
            ),
            (
                "weir-ingest/src/lib.rs",
                include_str!("../../weir-ingest/src/lib.rs"),
            ),
            (
                "weir-ingest/src/otlp.rs",
                include_str!("../../weir-ingest/src/otlp.rs"),
            ),
            (
                "weir-ingest/src/limits.rs",
                include_str!("../../weir-ingest/src/limits.rs"),
            ),
            ("weir-server/src/http/mod.rs", include_str!("http/mod.rs")),
            ("weir-server/src/http/api.rs", include_str!("http/api.rs")),
            (
                "weir-server/src/http/serve.rs",
                include_str!("http/serve.rs"),
            ),
            ("weir-server/src/grpc.rs", include_str!("grpc.rs")),
            ("weir-server/src/append.rs", include_str!("append.rs")),
            ("weir-server/src/config.rs", include_str!("config.rs")),
            ("weir-server/src/auth.rs", include_str!("auth.rs")),
            ("weir-server/src/tenants.rs", include_str!("tenants.rs")),
            ("weir-server/src/tls.rs", include_str!("tls.rs")),
            (
                "docs/security.md",
                include_str!("../../../docs/security.md"),
            ),
            ("docs/ingest.md", include_str!("../../../docs/ingest.md")),
            ("docs/tenants.md", include_str!("../../../docs/tenants.md")),
            (
                "docs/query-language.md",
                include_str!("../../../docs/query-language.md"),
            ),
            ("README.md", include_str!("../../../README.md")),
        ];
        let sections = [
            "limits.",
            "storage.",
            "search.",
            "index.",
            "cluster.",
            "http.",
            "query.",
            "auth.",
            "tenant_limits.",
            "tls.",
        ];
        let mut checked = 0;
        for (file, text) in texts {
            // Unit tests are code over local variables (`http.timestamp_ns`), not messages.
            let text = text.split("#[cfg(test)]").next().unwrap_or(text);
            for section in sections {
                for (at, _) in text.match_indices(section) {
                    let before = text[..at].chars().next_back();
                    if before.is_some_and(|c| c.is_ascii_alphanumeric() || "_.\"'-/".contains(c)) {
                        // `config.limits.x`, `self.search.x`: code; `"http.status"`: an
                        // attribute name in a test. Not key names.
                        continue;
                    }
                    let key: String = text[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_' || *c == '.')
                        .collect();
                    let key = key.trim_end_matches('.');
                    let next = text[at + key.len()..].chars().next();
                    // `f(` is a call; `http.status-code` an attribute name.
                    let not_a_key =
                        next.is_some_and(|c| c == '(' || c == '-' || c.is_ascii_alphanumeric());
                    if not_a_key
                        || key.len() <= section.len()
                        || key.ends_with(".rs")
                        || key.ends_with(".md")
                    {
                        continue;
                    }
                    checked += 1;
                    assert!(
                        keys.iter().any(|k| k == key)
                            || DEPRECATED_KEYS.iter().any(|(old, _)| *old == key),
                        "{file} names config key {key}, which does not exist"
                    );
                }
            }
        }
        assert!(checked > 20, "only {checked} key mentions found");
    }
}
