//! The one mapping from Weir's errors to gRPC codes and HTTP statuses.
//!
//! Library crates keep their own error enums; the server turns each into an [`ApiError`]
//! (choosing its [`ErrorKind`]) and this module decides what that means on the wire.

use std::fmt;

/// What kind of failure an API error is; decides the gRPC code and HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong; retrying it unchanged will fail again.
    InvalidArgument,
    /// Weir is over a limit right now (queue full, disk full): retry later.
    ResourceExhausted,
    /// Weir cannot serve right now (shutting down, no leader, commit timed out): retry.
    Unavailable,
    /// Something that should exist does not.
    NotFound,
    /// A bug or an inconsistency inside Weir.
    Internal,
    /// The request carries no valid access key (none, unknown, revoked or malformed).
    Unauthenticated,
    /// The access key is valid but does not allow this: a scope it lacks, or a tenant
    /// it does not belong to.
    PermissionDenied,
}

/// An error as answered to a client: a kind and a message saying what was wrong and what
/// to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The kind, mapped to a code/status.
    pub kind: ErrorKind,
    /// Lower-case message naming what was wrong.
    pub message: String,
    /// When a retry may succeed, where the server knows (a tenant's rate limit refills at
    /// a known pace): HTTP answers it as `Retry-After`; `None` leaves the front end's
    /// default.
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// This error, telling the client to retry after `d`.
    #[must_use]
    pub fn retry_after(mut self, d: std::time::Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    /// Whole seconds a client should wait before retrying (at least 1), as `Retry-After`
    /// says it.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after
            .map_or(1, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .max(1)
    }

    /// Shorthand for [`ErrorKind::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// The gRPC code for this error.
    pub fn grpc_code(&self) -> tonic::Code {
        match self.kind {
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::Internal => tonic::Code::Internal,
            ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
        }
    }

    /// The HTTP status for this error (429 and 503 are retryable, 400 is not).
    pub fn http_status(&self) -> u16 {
        match self.kind {
            ErrorKind::InvalidArgument => 400,
            ErrorKind::ResourceExhausted => 429,
            ErrorKind::Unavailable => 503,
            ErrorKind::NotFound => 404,
            ErrorKind::Internal => 500,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::PermissionDenied => 403,
        }
    }

    /// Whether a client should retry the same request later.
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::ResourceExhausted | ErrorKind::Unavailable
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        tonic::Status::new(e.grpc_code(), e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_kinds_map_to_retryable_codes() {
        let e = ApiError::new(ErrorKind::ResourceExhausted, "queue full");
        assert_eq!(e.grpc_code(), tonic::Code::ResourceExhausted);
        assert_eq!(e.http_status(), 429);
        assert!(e.retryable());
        let e = ApiError::invalid("bad");
        assert_eq!(
            tonic::Status::from(e.clone()).code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(e.http_status(), 400);
        assert!(!e.retryable());
    }
}
