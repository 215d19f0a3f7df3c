//! The crate's error types: [`ParseError`] for query text, [`EngineError`] for evaluation.

/// A query that does not parse, or uses syntax this engine refuses.
///
/// `position` is a byte offset into the query text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parse error at position {position}: {message}")]
pub struct ParseError {
    /// Byte offset into the query where the problem was found.
    pub position: usize,
    /// What was wrong, and where possible what was expected instead.
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(position: usize, message: impl Into<String>) -> Self {
        ParseError {
            position,
            message: message.into(),
        }
    }
}

/// Why a query could not be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The storage layer ([`crate::Source`]) failed.
    #[error("source error: {0}")]
    Source(String),
    /// A [`crate::Limits`] bound was exceeded; `what` is the field's name.
    #[error("limit {what}={limit} exceeded: {message}")]
    Limit {
        /// The name of the [`crate::Limits`] field that was exceeded.
        what: &'static str,
        /// Its configured value.
        limit: usize,
        /// What the query would have needed, and what to do about it.
        message: String,
    },
    /// Syntax that was recognised but is not implemented by this engine.
    #[error("unsupported at position {position}: {message}")]
    Unsupported {
        /// Byte offset into the query of the refused construct (0 when unknown).
        position: usize,
        /// What was refused.
        message: String,
    },
    /// The query text does not parse.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// Parameters or query combination that cannot be evaluated (e.g. a zero step).
    #[error("invalid query: {0}")]
    Invalid(String),
    /// A metric query produced a series carrying `__error__` (as Loki refuses them).
    #[error("pipeline error: {0}")]
    Pipeline(String),
}

/// Result alias for evaluation.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
