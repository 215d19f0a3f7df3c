//! One backend behind HTTP: turns items into requests and answers into per-item results.

use std::time::Duration;

use crate::config::{Backend, LokiFormat, SinkConfig};
use crate::es::{self, IndexPattern};
use crate::item::Item;
use crate::loki::{self, LokiMapping};

/// What became of one item of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemResult {
    /// Stored (or found already stored).
    Done,
    /// Refused for now (overload): send this item again.
    Retry(String),
    /// Refused for good: dead-letter it with this reason.
    Reject(String),
}

/// What became of one request.
#[derive(Debug)]
pub enum Attempt {
    /// The backend answered per item.
    Items(Vec<ItemResult>),
    /// Nothing was stored for sure: send the same request again later.
    Retry {
        /// For logs and status.
        reason: String,
        /// For metrics: `connect`, `timeout`, `http_429`, `http_5xx`, `http_4xx`, `bad_answer`.
        metric: &'static str,
        /// The backend's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The request as a whole was refused as bad (Loki 400 for some entries, too large):
    /// split it to find the items at fault; a single item is rejected with `reason`.
    Split {
        /// The backend's words.
        reason: String,
    },
}

/// How requests to Elasticsearch authenticate.
enum EsAuth {
    Basic(String, String),
    ApiKey(String),
}

fn authorize(req: reqwest::RequestBuilder, auth: &Option<EsAuth>) -> reqwest::RequestBuilder {
    match auth {
        Some(EsAuth::Basic(user, password)) => req.basic_auth(user, Some(password)),
        Some(EsAuth::ApiKey(key)) => req.header("authorization", format!("ApiKey {key}")),
        None => req,
    }
}

enum Kind {
    Elasticsearch {
        pattern: IndexPattern,
        auth: Option<EsAuth>,
    },
    Loki {
        mapping: LokiMapping,
        format: LokiFormat,
        org_id: Option<String>,
    },
}

/// A configured backend.
pub struct Sink {
    name: String,
    url: String,
    kind: Kind,
    cluster: String,
    client: reqwest::Client,
}

impl Sink {
    /// Builds the sink. `cluster` prefixes Elasticsearch ids (see [`Item::id`]).
    ///
    /// # Errors
    /// The index pattern does not parse (see [`SinkConfig::validate`], which callers run
    /// first), or the HTTP client cannot be built.
    pub fn new(cfg: &SinkConfig, cluster: &str) -> crate::Result<Sink> {
        let builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.request_timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.request_timeout_ms.min(5000)))
            .pool_max_idle_per_host(cfg.concurrency);
        let client = with_tls(builder, cfg)?.build().map_err(|e| {
            crate::Error::Config(format!(
                "mirror sink {}: cannot build http client: {e}",
                cfg.name
            ))
        })?;
        let kind = match cfg.backend {
            Backend::Elasticsearch => Kind::Elasticsearch {
                pattern: IndexPattern::parse(cfg.index_pattern()).map_err(crate::Error::Config)?,
                auth: match (&cfg.username, &cfg.password, &cfg.api_key) {
                    (Some(u), Some(p), _) => Some(EsAuth::Basic(u.clone(), p.clone())),
                    (_, _, Some(k)) => Some(EsAuth::ApiKey(k.clone())),
                    _ => None,
                },
            },
            Backend::Loki => Kind::Loki {
                mapping: LokiMapping {
                    stream_labels: cfg.stream_labels(),
                    structured_metadata: cfg.structured_metadata(),
                },
                format: cfg.format.unwrap_or_default(),
                org_id: cfg.org_id.clone(),
            },
        };
        Ok(Sink {
            name: cfg.name.clone(),
            url: cfg.url.trim_end_matches('/').to_owned(),
            kind,
            cluster: cluster.to_owned(),
            client,
        })
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether one delivery's requests must go one after the other. Loki: a stream's
    /// entries must arrive in time order (a Loki with ordered writes refuses the rest).
    /// Elasticsearch: no, every document carries its own `_id`.
    pub fn in_order(&self) -> bool {
        matches!(self.kind, Kind::Loki { .. })
    }

    /// Splits items into groups that can share a request (Loki: one tenant per request,
    /// since the tenant is a header).
    pub fn group(&self, items: Vec<Item>) -> Vec<Vec<Item>> {
        match &self.kind {
            Kind::Elasticsearch { .. }
            | Kind::Loki {
                org_id: Some(_), ..
            } => vec![items],
            Kind::Loki { org_id: None, .. } => {
                let mut by: std::collections::BTreeMap<String, Vec<Item>> = Default::default();
                for it in items {
                    by.entry(it.tenant.clone()).or_default().push(it);
                }
                by.into_values().collect()
            }
        }
    }

    /// Sends one request carrying `items` (one group of [`Sink::group`]); `body_bytes`
    /// is told the size of the request body before it goes out.
    pub async fn send(&self, items: &[Item], body_bytes: impl FnOnce(usize)) -> Attempt {
        match &self.kind {
            Kind::Elasticsearch { pattern, auth } => {
                let mut body = Vec::with_capacity(items.len() * 512);
                for it in items {
                    es::encode_item(&mut body, it, pattern, &self.cluster);
                }
                body_bytes(body.len());
                let mut req = self
                    .client
                    .post(format!("{}/_bulk", self.url))
                    .header("content-type", "application/x-ndjson")
                    .body(body);
                req = authorize(req, auth);
                let (status, headers, bytes) = match exchange(req).await {
                    Ok(r) => r,
                    Err(a) => return a,
                };
                match status {
                    200 => match es::parse_response(&bytes, items.len()) {
                        Ok(r) => Attempt::Items(r),
                        Err(e) => Attempt::Retry {
                            reason: e,
                            metric: "bad_answer",
                            retry_after: None,
                        },
                    },
                    400 | 413 => Attempt::Split {
                        reason: format!("{status}: {}", excerpt(&bytes)),
                    },
                    _ => retry_status(status, &headers, &bytes),
                }
            }
            Kind::Loki {
                mapping,
                format,
                org_id,
            } => {
                let tenant = org_id
                    .clone()
                    .unwrap_or_else(|| items.first().map(|i| i.tenant.clone()).unwrap_or_default());
                let (body, ct) = loki::encode(items, mapping, *format);
                body_bytes(body.len());
                let req = self
                    .client
                    .post(format!("{}/loki/api/v1/push", self.url))
                    .header("content-type", ct)
                    .header("x-scope-orgid", tenant)
                    .body(body);
                let (status, headers, bytes) = match exchange(req).await {
                    Ok(r) => r,
                    Err(a) => return a,
                };
                match status {
                    200 | 204 => Attempt::Items(vec![ItemResult::Done; items.len()]),
                    400 | 413 => Attempt::Split {
                        reason: format!("{status}: {}", excerpt(&bytes)),
                    },
                    _ => retry_status(status, &headers, &bytes),
                }
            }
        }
    }

    /// Installs the Elasticsearch index template (no-op for Loki).
    ///
    /// # Errors
    /// [`crate::Error::TemplateUnreachable`] when the backend could not be reached or was
    /// overloaded (retry); [`crate::Error::TemplateRefused`] when it refused (no
    /// permission, ...).
    pub async fn install_template(&self) -> crate::Result<()> {
        let Kind::Elasticsearch { pattern, auth } = &self.kind else {
            return Ok(());
        };
        let mut req = self
            .client
            .put(format!("{}/_index_template/weir-{}", self.url, self.name))
            .json(&es::template(pattern));
        req = authorize(req, auth);
        match exchange(req).await {
            Ok((200, _, _)) => Ok(()),
            Ok((s, _, b)) if s == 408 || s == 429 || s >= 500 => Err(
                crate::Error::TemplateUnreachable(format!("{s}: {}", excerpt(&b))),
            ),
            Ok((status, _, b)) => Err(crate::Error::TemplateRefused {
                status,
                reason: excerpt(&b),
            }),
            Err(Attempt::Retry { reason, .. }) => Err(crate::Error::TemplateUnreachable(reason)),
            Err(other) => Err(crate::Error::TemplateUnreachable(format!("{other:?}"))),
        }
    }
}

async fn exchange(
    req: reqwest::RequestBuilder,
) -> Result<(u16, reqwest::header::HeaderMap, Vec<u8>), Attempt> {
    let resp = req.send().await.map_err(transport_error)?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(transport_error)?;
    Ok((status, headers, body.to_vec()))
}

fn transport_error(e: reqwest::Error) -> Attempt {
    let metric = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    };
    // reqwest's message is "error sending request for url (...)": the why (refused, a
    // certificate that does not verify) is in its sources.
    let mut reason = format!("{metric}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason.push_str(&format!(": {s}"));
        source = s.source();
    }
    Attempt::Retry {
        reason,
        metric,
        retry_after: None,
    }
}

fn retry_status(status: u16, headers: &reqwest::header::HeaderMap, body: &[u8]) -> Attempt {
    let retry_after = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let metric = match status {
        429 => "http_429",
        500..=599 => "http_5xx",
        _ => "http_4xx",
    };
    Attempt::Retry {
        reason: format!("{status}: {}", excerpt(body)),
        metric,
        retry_after,
    }
}

/// At most 300 bytes of a body, for error messages.
fn excerpt(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(300)]);
    s.trim().replace('\n', " ")
}

/// `builder` with the sink's TLS keys: its CA bundle instead of the public roots, its
/// client certificate, or no verification at all.
///
/// # Errors
/// A file that cannot be read or is not PEM, named by its key.
fn with_tls(
    mut builder: reqwest::ClientBuilder,
    cfg: &SinkConfig,
) -> crate::Result<reqwest::ClientBuilder> {
    let key = |k: &str| format!("mirror.sinks[name={}].{k}", cfg.name);
    let read = |k: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| {
            crate::Error::Config(format!("{} {}: cannot read it: {e}", key(k), p.display()))
        })
    };
    if let Some(ca) = &cfg.ca_file {
        let pem = read("ca_file", ca)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            crate::Error::Config(format!(
                "{} {}: not PEM certificates: {e}",
                key("ca_file"),
                ca.display()
            ))
        })?;
        if certs.is_empty() {
            return Err(crate::Error::Config(format!(
                "{} {}: no certificate in it",
                key("ca_file"),
                ca.display()
            )));
        }
        builder = builder.tls_built_in_root_certs(false);
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    if let (Some(cert), Some(k)) = (&cfg.client_cert_file, &cfg.client_key_file) {
        let mut pem = read("client_cert_file", cert)?;
        pem.push(b'\n');
        pem.extend(read("client_key_file", k)?);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
            crate::Error::Config(format!(
                "{} {} with {} {}: not a PEM certificate and key: {e}",
                key("client_cert_file"),
                cert.display(),
                key("client_key_file"),
                k.display()
            ))
        })?;
        builder = builder.identity(identity);
    }
    if cfg.tls_insecure_skip_verify {
        tracing::warn!(
            sink = %cfg.name,
            "tls_insecure_skip_verify: this sink accepts any certificate; records go to whoever answers at {}",
            cfg.url
        );
        builder = builder.danger_accept_invalid_certs(true);
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_testkit::elasticsearch::{EsOptions, FakeElasticsearch};

    fn sink(url: &str, auth: &str) -> Sink {
        let cfg: SinkConfig = toml::from_str(&format!(
            "name = \"es\"\ntype = \"elasticsearch\"\nurl = \"{url}\"\n{auth}"
        ))
        .unwrap();
        Sink::new(&cfg, "c1").unwrap()
    }

    #[tokio::test]
    async fn basic_auth_and_api_key_reach_elasticsearch_as_it_expects_them() {
        let es = FakeElasticsearch::start_with(EsOptions {
            basic_auth: Some(("elastic".into(), "changeme".into())),
            api_key: Some("aWQ6a2V5".into()),
            ..EsOptions::default()
        })
        .await
        .unwrap();
        let ok = sink(&es.url(), "username = \"elastic\"\npassword = \"changeme\"");
        ok.install_template().await.unwrap();
        let key = sink(&es.url(), "api_key = \"aWQ6a2V5\"");
        key.install_template().await.unwrap();
        let wrong = sink(&es.url(), "username = \"elastic\"\npassword = \"nope\"");
        let e = wrong.install_template().await.unwrap_err();
        assert!(
            matches!(e, crate::Error::TemplateRefused { status: 401, .. }),
            "{e}"
        );
        let none = sink(&es.url(), "");
        assert!(
            none.install_template().await.is_err(),
            "no credentials, no access"
        );
    }
}
