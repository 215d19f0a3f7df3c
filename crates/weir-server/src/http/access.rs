//! Who may call which route: every route's need in one table ([`ROUTES`]), and the one
//! extractor that turns a request's credentials and tenant header into a
//! [`Caller`] and checks that need before any handler runs.
//!
//! A route missing from the table is refused (500, naming the table) rather than served
//! open, and a test reads every router's source for `.route("...")` and fails on a path
//! the table lacks; the integration test `access.rs` walks the table with every kind of
//! wrong key.
//!
//! The tenant a request names: `X-Scope-OrgID` (Loki's, Grafana's) when present, else
//! `X-Weir-Tenant`, else (with a Basic credential) its user. Where keys are off it is
//! the caller's tenant as it stands; with a key it must be one of the key's tenants
//! (operator keys: any), else 403.

use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use weir_proto::api::keys::Scope;
use weir_proto::{ApiError, ErrorKind};

use super::ingest::SCOPE_ORG_ID;
use super::{tenant_in, HttpError, TENANT_HEADER};
use crate::auth::{Caller, Presented};
use crate::state::NodeState;

/// What a route needs of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing: liveness and readiness probes (no data, no tenant).
    Open,
    /// Any valid key, whatever its scopes: the handshakes clients make with the
    /// credentials they will use (Elasticsearch's `GET /`, `_license`; Loki's buildinfo).
    AnyKey,
    /// A key with this scope (admin: an operator key).
    Scope(Scope),
}

/// A route (its path as mounted) and what it needs.
#[derive(Clone, Copy, Debug)]
pub struct RouteNeed {
    /// The path as the router declares it (`/api/v1/labels/{name}/values`).
    pub path: &'static str,
    /// What a caller needs.
    pub need: Need,
}

const fn r(path: &'static str, need: Need) -> RouteNeed {
    RouteNeed { path, need }
}

const READ: Need = Need::Scope(Scope::Read);
const WRITE: Need = Need::Scope(Scope::Write);
const ADMIN: Need = Need::Scope(Scope::Admin);

/// Every route of the HTTP front door and what it needs: the one place a route's access
/// is decided.
pub const ROUTES: &[RouteNeed] = &[
    // Weir's own API.
    r("/api/v1/search", READ),
    r("/api/v1/histogram", READ),
    r("/api/v1/tail", READ),
    r("/api/v1/labels", READ),
    r("/api/v1/labels/{name}/values", READ),
    // Dead letters: a tenant sees its own (the handlers filter by tenant); replay sends
    // every tenant's records again, so it is admin.
    r("/api/v1/dlq", READ),
    r("/api/v1/dlq/{sink}", READ),
    r("/api/v1/dlq/{sink}/{seq}", READ),
    r("/api/v1/dlq/{sink}/replay", ADMIN),
    // Cluster status names every tenant's mirrors and lag; metrics count per tenant.
    r("/api/v1/cluster", ADMIN),
    r("/metrics", ADMIN),
    r("/api/v1/keys", ADMIN),
    r("/api/v1/keys/{id}", ADMIN),
    r("/api/v1/tenants", ADMIN),
    r("/api/v1/rules", ADMIN),
    r("/api/v1/rules/{tenant}/{id}", ADMIN),
    r("/api/v1/rules/{tenant}/{id}/dry-run", ADMIN),
    r("/api/v1/retention", ADMIN),
    r("/api/v1/retention/{tenant}", ADMIN),
    r("/healthz", Need::Open),
    r("/readyz", Need::Open),
    // OTLP.
    r("/v1/logs", WRITE),
    // Loki push, readiness (Vector's health check) and buildinfo (Grafana's handshake).
    r("/loki/api/v1/push", WRITE),
    r("/api/prom/push", WRITE),
    r("/ready", Need::Open),
    r("/loki/api/v1/status/buildinfo", Need::AnyKey),
    // Loki read API.
    r("/loki/api/v1/query_range", READ),
    r("/loki/api/v1/query", READ),
    r("/loki/api/v1/labels", READ),
    r("/loki/api/v1/label", READ),
    r("/loki/api/v1/label/{name}/values", READ),
    r("/loki/api/v1/series", READ),
    r("/loki/api/v1/index/stats", READ),
    r("/loki/api/v1/index/volume", READ),
    r("/loki/api/v1/index/volume_range", READ),
    r("/loki/api/v1/detected_fields", READ),
    r("/loki/api/v1/detected_field/{name}/values", READ),
    r("/loki/api/v1/tail", READ),
    // Elasticsearch: the handshakes answer with no tenant data but with the caller's
    // credentials (a client checks them there first); templates and policies come
    // from shippers' write keys.
    r("/", Need::AnyKey),
    r("/_license", Need::AnyKey),
    r("/_xpack", Need::AnyKey),
    r("/_cluster/health", Need::AnyKey),
    r("/_bulk", WRITE),
    r("/{index}/_bulk", WRITE),
    r("/_index_template/{name}", WRITE),
    r("/_template/{name}", WRITE),
    r("/_component_template/{name}", WRITE),
    r("/_ilm/policy/{name}", WRITE),
    r("/_search", READ),
    r("/{index}/_search", READ),
    r("/_msearch", READ),
    r("/{index}/_msearch", READ),
    r("/_mapping", READ),
    r("/{index}/_mapping", READ),
    r("/_field_caps", READ),
    r("/{index}/_field_caps", READ),
];

/// What the route mounted at `path` needs; `None` for a route missing from [`ROUTES`].
pub fn need_of(path: &str) -> Option<Need> {
    ROUTES.iter().find(|r| r.path == path).map(|r| r.need)
}

/// The tenant a request names: `X-Scope-OrgID`, else `X-Weir-Tenant`; `None` when
/// neither is there.
///
/// # Errors
/// 400 naming the header and the rule its value breaks.
pub fn named_tenant(
    headers: &axum::http::HeaderMap,
    config: &crate::config::Config,
) -> Result<Option<String>, HttpError> {
    match tenant_in(headers, SCOPE_ORG_ID, config)? {
        Some(t) => Ok(Some(t)),
        None => tenant_in(headers, TENANT_HEADER, config),
    }
}

/// The middleware in front of every route: finds the route's need, checks the caller
/// against it and hands the [`Caller`] to the handler (as a request extension).
pub async fn authorize(
    State(st): State<Arc<NodeState>>,
    mut request: Request,
    next: Next,
) -> Response {
    // No matched path: the fallback (404), which serves nothing.
    let Some(path) = request.extensions().get::<MatchedPath>().cloned() else {
        return next.run(request).await;
    };
    let Some(need) = need_of(path.as_str()) else {
        return refusal(ApiError::new(
            ErrorKind::Internal,
            format!(
                "route {} declares no access need (http::access::ROUTES); refused",
                path.as_str()
            ),
        ));
    };
    if need == Need::Open {
        return next.run(request).await;
    }
    match caller_of(&st, &request, need) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => refusal_for(path.as_str(), request.headers(), e),
    }
}

/// [`refusal`] in the shape the route's API family answers errors in, since each client
/// reads its own: Elasticsearch's `security_exception`, an OTLP `Status`, Loki's plain
/// text; Weir's own API and the rest, `{"error": ...}`.
fn refusal_for(path: &str, headers: &axum::http::HeaderMap, e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut response = if path == "/v1/logs" {
        super::otlp::refusal(headers, status, &e.message)
    } else if path.starts_with("/loki/") || path.starts_with("/api/prom/") {
        (status, format!("{}\n", e.message)).into_response()
    } else if path == "/" || path.starts_with("/_") || path.starts_with("/{index}") {
        super::es::security_refusal(status, &e.message)
    } else {
        return refusal(e);
    };
    if e.kind == ErrorKind::Unauthenticated {
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(CHALLENGES),
        );
    }
    response
}

/// What a 401 offers a client to answer with.
const CHALLENGES: &str = "Bearer realm=\"weir\", Basic realm=\"weir\", ApiKey";

fn caller_of(st: &NodeState, request: &Request, need: Need) -> Result<Caller, ApiError> {
    let headers = request.headers();
    let tenant = named_tenant(headers, &st.config).map_err(|e| e.0)?;
    let authorization = match headers.get(axum::http::header::AUTHORIZATION) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::new(
                ErrorKind::Unauthenticated,
                "the Authorization header is not ASCII text",
            )
        })?),
    };
    let caller = st.auth.caller(Presented {
        authorization,
        tenant,
    })?;
    if let Need::Scope(scope) = need {
        caller.require(scope)?;
    }
    Ok(caller)
}

/// A 401 or 403 as every API family can read it: JSON `{"error": ...}`, and on a 401 the
/// challenges a client may answer.
fn refusal(e: ApiError) -> Response {
    let unauthenticated = e.kind == ErrorKind::Unauthenticated;
    let mut response = HttpError(e).into_response();
    if unauthenticated {
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(CHALLENGES),
        );
    }
    response
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    /// The caller [`authorize`] checked. Only a route missing its layer lacks one: a
    /// 500, never an open door.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(weir_proto::api::error::ErrorBody {
                    error: format!(
                        "{} has no checked caller: the route is mounted outside the access \
                         layer",
                        parts.uri.path()
                    ),
                }),
            )
                .into_response()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route added to a router without a row in [`ROUTES`] would answer 500 to
    /// everyone; this finds it before anyone does, by reading the routers' source.
    #[test]
    fn every_mounted_route_declares_its_need() {
        let sources = [
            ("api.rs", include_str!("api.rs")),
            ("admin.rs", include_str!("admin.rs")),
            ("otlp.rs", include_str!("otlp.rs")),
            ("loki.rs", include_str!("loki.rs")),
            ("loki_query.rs", include_str!("loki_query.rs")),
            ("es.rs", include_str!("es.rs")),
            ("es_search.rs", include_str!("es_search.rs")),
            ("mod.rs", include_str!("mod.rs")),
        ];
        let mut found = 0;
        for (file, text) in sources {
            let text = text.split("#[cfg(test)]").next().unwrap_or(text);
            for (at, _) in text.match_indices(".route(") {
                let rest = text[at + ".route(".len()..].trim_start();
                let Some(rest) = rest.strip_prefix('"') else {
                    panic!(
                        "{file}: a .route( whose path is not a literal: {}",
                        &rest[..40.min(rest.len())]
                    );
                };
                let path = &rest[..rest.find('"').unwrap()];
                found += 1;
                assert!(
                    need_of(path).is_some(),
                    "{file} mounts {path} without a row in http::access::ROUTES"
                );
            }
        }
        assert!(
            found >= ROUTES.len(),
            "found {found} routes, table has {}",
            ROUTES.len()
        );
    }

    #[test]
    fn no_route_is_declared_twice() {
        for (i, a) in ROUTES.iter().enumerate() {
            assert!(
                ROUTES[i + 1..].iter().all(|b| b.path != a.path),
                "{} twice",
                a.path
            );
        }
    }
}
