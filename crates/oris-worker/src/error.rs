//! The worker's errors: what stops [`Worker::build`](crate::WorkerBuilder::build) or
//! [`Worker::run`](crate::Worker::run). Everything transient (the server unreachable or
//! overloaded, a lease lost) is handled inside and logged, never returned.

/// Why a worker cannot be built or cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder's settings are not usable.
    #[error("invalid worker configuration: {0}")]
    Config(String),
    /// The server refused the worker for a reason retrying will not change: bad or revoked
    /// token (401), a key without the worker role (403), a protocol version it does not
    /// speak (409 `protocol_mismatch`), a poll it finds invalid (400), or no worker routes
    /// at all (404, a server too old).
    #[error("the server at {url} refused the worker ({status} {code}): {message}")]
    Refused {
        /// The route called.
        url: String,
        /// HTTP status.
        status: u16,
        /// The server's error code.
        code: String,
        /// The server's message.
        message: String,
    },
}

impl Error {
    /// The server's error code, for a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Refused { code, .. } => Some(code),
            Error::Config(_) => None,
        }
    }
}
