//! gRPC front end (port 4317): `weir.v1.Ingest/Append` and OTLP `LogsService/Export`.

use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};
use weir_proto::otlp::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use weir_proto::otlp::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use weir_proto::v1::ingest_server::{Ingest, IngestServer};
use weir_proto::v1::{AppendRequest, AppendResponse};
use weir_proto::{ApiError, DEFAULT_TENANT, TENANT_HEADER};

use crate::append::Appender;

/// Implements both gRPC services over one [`Appender`].
#[derive(Clone)]
pub struct GrpcIngest {
    appender: Arc<Appender>,
}

impl GrpcIngest {
    /// The services, ready to add to a tonic router. Messages up to twice
    /// `limits.batch_bytes_max` are decoded so that the handler can refuse the ones over
    /// the limit with a message naming it; larger ones are refused by tonic itself.
    pub fn services(
        appender: Arc<Appender>,
    ) -> (IngestServer<GrpcIngest>, LogsServiceServer<GrpcIngest>) {
        let max = appender
            .limits()
            .batch_bytes_max
            .saturating_mul(2)
            .max(1 << 20);
        let s = GrpcIngest { appender };
        (
            IngestServer::new(s.clone()).max_decoding_message_size(max),
            LogsServiceServer::new(s).max_decoding_message_size(max),
        )
    }

    fn check_size(&self, encoded_len: usize) -> Result<(), Status> {
        weir_ingest::check_batch_bytes(encoded_len, self.appender.limits())
            .map_err(|e| ApiError::invalid(e.to_string()).into())
    }
}

/// The tenant metadata of a request, if any. Not ASCII is refused rather than read as the
/// default tenant (the name itself is checked by the append path).
fn tenant_of<T>(req: &Request<T>) -> Result<Option<String>, Status> {
    match req.metadata().get(TENANT_HEADER) {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.to_owned())).map_err(|_| {
            ApiError::invalid(format!(
                "metadata {TENANT_HEADER} is not ASCII text; a tenant is 1-128 of A-Z a-z 0-9 _ . - \
                 (empty or absent means {DEFAULT_TENANT:?})"
            ))
            .into()
        }),
    }
}

#[tonic::async_trait]
impl Ingest for GrpcIngest {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let header_tenant = tenant_of(&request)?;
        let mut req = request.into_inner();
        self.check_size(req.encoded_len())?;
        if req.tenant.is_empty() {
            req.tenant = header_tenant.unwrap_or_default();
        }
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
        let tenant = tenant_of(&request)?.unwrap_or_else(|| DEFAULT_TENANT.to_owned());
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
