//! The business API's own errors: `{"error": "<message>", "kind": "<kind>"}`.
//!
//! They never carry an Oris error code or envelope: every engine error met by a business
//! route is mapped here to what it means for an expense ([`BizError::from_engine`]); what
//! has no business meaning is logged (with the request's span: `request_id`, `thread_id`)
//! and answered as `internal`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What went wrong, for the client to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// No or a wrong bearer token.
    Unauthorized,
    /// The body is malformed or a field is invalid.
    InvalidRequest,
    /// No such expense (or route).
    NotFound,
    /// The expense was decided already (by another request).
    AlreadyDecided,
    /// The expense cannot be decided now: still being routed, or closed.
    NotAwaitingApproval,
    /// The database is unreachable; retry.
    Unavailable,
    /// A bug; the log has it under the request id.
    Internal,
}

impl Kind {
    fn status(self) -> StatusCode {
        match self {
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::InvalidRequest => StatusCode::BAD_REQUEST,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::AlreadyDecided | Kind::NotAwaitingApproval => StatusCode::CONFLICT,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A business API error.
#[derive(Debug, Clone, Serialize)]
pub struct BizError {
    /// For humans.
    pub error: String,
    /// For programs.
    pub kind: Kind,
}

impl BizError {
    /// An error of `kind`.
    pub fn new(kind: Kind, error: impl Into<String>) -> Self {
        BizError {
            error: error.into(),
            kind,
        }
    }

    /// No such expense.
    pub fn not_found(expense_id: &str) -> Self {
        BizError::new(Kind::NotFound, format!("expense `{expense_id}` not found"))
    }

    /// What an engine error means for the expense `expense_id`.
    pub fn from_engine(expense_id: &str, e: oris::Error) -> Self {
        use oris::Error as E;
        match e {
            E::ThreadNotFound(_) | E::InvalidThreadId(_) | E::InterruptNotFound(_) => {
                BizError::not_found(expense_id)
            }
            // Oris' 409s: the interrupt was answered with another decision, or its run
            // ended (decided and closed, or cancelled by an operator).
            E::ResumeConflict(_) => BizError::new(
                Kind::AlreadyDecided,
                format!("expense `{expense_id}` was already decided"),
            ),
            E::InterruptNotPending { status, .. } => BizError::new(
                Kind::NotAwaitingApproval,
                format!(
                    "expense `{expense_id}` is no longer awaiting approval (its run is {status})"
                ),
            ),
            E::Store(oris::store::Error::Unavailable(m)) => {
                tracing::warn!(error = %m, "database unavailable");
                BizError::new(Kind::Unavailable, "the database is unavailable; retry")
            }
            other => {
                tracing::error!(error = %other, "engine error");
                BizError::new(Kind::Internal, "internal error")
            }
        }
    }
}

impl IntoResponse for BizError {
    fn into_response(self) -> Response {
        (self.kind.status(), Json(self)).into_response()
    }
}
