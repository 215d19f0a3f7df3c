//! The body of every Weir API error (status 400 and above), whatever the endpoint: what
//! the handlers answer for an [`ApiError`] and what the front door writes for a request it
//! refuses before a handler runs (404, 405, 413, 414, 431).

use serde::{Deserialize, Serialize};

use crate::ApiError;

/// `{"error": "..."}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// What was wrong and what to do, in lower case (the [`ApiError`]'s message).
    pub error: String,
}

impl From<ApiError> for ErrorBody {
    fn from(e: ApiError) -> Self {
        ErrorBody { error: e.message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::round_trip;

    #[test]
    fn an_error_body_round_trips_as_one_key() {
        let body = ErrorBody::from(ApiError::invalid(
            "limit must be a positive integer, not \"0\"",
        ));
        assert_eq!(
            round_trip(&body),
            r#"{"error":"limit must be a positive integer, not \"0\""}"#
        );
    }
}
