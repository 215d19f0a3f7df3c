//! gRPC front end (port 4317): `weir.v1.Ingest/Append` and OTLP `LogsService/Export`.

use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};
use weir_proto::api::keys::Scope;
use weir_proto::otlp::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use weir_proto::otlp::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use weir_proto::v1::ingest_server::{Ingest, IngestServer};
use weir_proto::v1::{AppendRequest, AppendResponse};
use weir_proto::{ApiError, TENANT_HEADER};

use crate::append::Appender;
use crate::auth::{Auth, Caller, Presented};

/// Loki's tenant header, which OpenTelemetry collectors set for Loki-compatible backends.
const SCOPE_ORG_ID: &str = "x-scope-orgid";

/// Implements both gRPC services over one [`Appender`], each call checked by [`Auth`]
/// (metadata `authorization`: Bearer or Basic, as over HTTP).
#[derive(Clone)]
pub struct GrpcIngest {
    appender: Arc<Appender>,
    auth: Arc<Auth>,
}

impl GrpcIngest {
    /// The services, ready to add to a tonic router. Messages up to twice
    /// `limits.batch_bytes_max` are decoded so that the handler can refuse the ones over
    /// the limit with a message naming it; larger ones are refused by tonic itself.
    pub fn services(
        appender: Arc<Appender>,
        auth: Arc<Auth>,
    ) -> (IngestServer<GrpcIngest>, LogsServiceServer<GrpcIngest>) {
        let max = appender
            .limits()
            .batch_bytes_max
            .saturating_mul(2)
            .max(1 << 20);
        let s = GrpcIngest { appender, auth };
        (
            IngestServer::new(s.clone()).max_decoding_message_size(max),
            LogsServiceServer::new(s).max_decoding_message_size(max),
        )
    }

    fn check_size(&self, encoded_len: usize) -> Result<(), Status> {
        weir_ingest::check_batch_bytes(encoded_len, self.appender.limits())
            .map_err(|e| ApiError::invalid(e.to_string()).into())
    }

    /// The checked caller of a write: its key (metadata `authorization`) and the tenant
    /// it names (`named`, else metadata `x-weir-tenant` or `x-scope-orgid`), which must
    /// be one of the key's.
    fn writer<T>(&self, req: &Request<T>, named: Option<&str>) -> Result<Caller, Status> {
        let named = match named.filter(|t| !t.is_empty()) {
            Some(t) => Some(t.to_owned()),
            None => match metadata_text(req, TENANT_HEADER)? {
                Some(t) => Some(t),
                None => metadata_text(req, SCOPE_ORG_ID)?,
            },
        };
        let tenant = named
            .map(|t| weir_ingest::normalize_tenant(&t, self.appender.limits()))
            .transpose()
            .map_err(|e| Status::from(ApiError::invalid(e.to_string())))?;
        let authorization = metadata_text(req, "authorization")?;
        let caller = self.auth.caller(Presented {
            authorization: authorization.as_deref(),
            tenant,
        })?;
        caller.require(Scope::Write)?;
        Ok(caller)
    }
}

/// Metadata `key` of a request, if present. Not ASCII is refused rather than read as
/// absent (a tenant that silently became the default, a key that silently was none).
fn metadata_text<T>(req: &Request<T>, key: &str) -> Result<Option<String>, Status> {
    match req.metadata().get(key) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_owned()))
            .map_err(|_| ApiError::invalid(format!("metadata {key} is not ASCII text")).into()),
    }
}

#[tonic::async_trait]
impl Ingest for GrpcIngest {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let caller = self.writer(&request, Some(&request.get_ref().tenant))?;
        let mut req = request.into_inner();
        self.check_size(req.encoded_len())?;
        req.tenant = caller.tenant;
        let resp = self.appender.append(req).await?;
        Ok(Response::new(resp))
    }
}

#[tonic::async_trait]
impl LogsService for GrpcIngest {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let tenant = self.writer(&request, None)?.tenant;
        let req = request.into_inner();
        self.check_size(req.encoded_len())?;
        let resp = crate::protocol::export_otlp(
            &self.appender,
            crate::protocol::Protocol::OtlpGrpc,
            req,
            &tenant,
            None,
        )
        .await?;
        Ok(Response::new(resp))
    }
}
