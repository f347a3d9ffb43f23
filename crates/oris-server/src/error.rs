//! The API's one error envelope and the one mapping from engine and store errors to it.
//!
//! Every error response is `{"error": {"code", "message", "details", "request_id"}}` with a
//! stable snake_case [`ErrorCode`] that decides the HTTP status. Engine and store errors are
//! classified here and nowhere else; 5xx bodies never carry internals (they are logged with
//! the request id instead).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use oris_core::store;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::request_id;

/// A stable error code. The wire form is the snake_case name; each code has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: the request is malformed or breaks a rule (bad JSON, bad id, input not matching
    /// the graph's state, unknown field, bad query parameter).
    InvalidInput,
    /// 401: no credentials, or they are not valid.
    Unauthorized,
    /// 403: the key's role does not allow this route.
    Forbidden,
    /// 404: no such route or resource.
    NotFound,
    /// 404: no thread has this id.
    ThreadNotFound,
    /// 404: no graph (or graph version) of this name is registered.
    GraphNotFound,
    /// 404: no interrupt has this id.
    InterruptNotFound,
    /// 404: the thread has no such checkpoint.
    CheckpointNotFound,
    /// 404: no remote worker has this id (it must poll first).
    WorkerNotFound,
    /// 404: no task attempt has this id.
    AttemptNotFound,
    /// 405: the route exists, not with this method.
    MethodNotAllowed,
    /// 409: a conflicting change happened concurrently; retry.
    Conflict,
    /// 409: the thread already has an unfinished run.
    RunActive,
    /// 409: the thread has no unfinished run to act on.
    RunNotActive,
    /// 409: the thread exists already (fork target).
    ThreadExists,
    /// 409: the thread belongs to another graph.
    GraphMismatch,
    /// 409: the idempotency key was used with a different request.
    IdempotencyConflict,
    /// 409: a request with this idempotency key is still being processed.
    IdempotencyInFlight,
    /// 409: the interrupt was already resumed or its run ended.
    InterruptNotPending,
    /// 409: the interrupt was already answered with a different value.
    ResumeConflict,
    /// 409: the run is pinned to a graph version this server does not have.
    GraphVersionMissing,
    /// 409: the worker speaks another protocol version.
    ProtocolMismatch,
    /// 409: the worker's lease on the run is not current (another worker holds it, or it
    /// expired, was released, or ended with the run); nothing was written.
    LeaseLost,
    /// 409: the run is not a dead-letter entry (not failed, or its thread moved on).
    NotDeadLettered,
    /// 413: the body is larger than the configured limit.
    PayloadTooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 429: too many requests; see `Retry-After`.
    RateLimited,
    /// 429: too many runs are queued; see `Retry-After`.
    QueueFull,
    /// 503: the server is overloaded or shutting down; see `Retry-After`.
    Overloaded,
    /// 503: the store is unreachable; see `Retry-After`.
    Unavailable,
    /// 500: a bug or an unexpected failure; details are in the server log.
    Internal,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 31] = [
        ErrorCode::InvalidInput,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::ThreadNotFound,
        ErrorCode::GraphNotFound,
        ErrorCode::InterruptNotFound,
        ErrorCode::CheckpointNotFound,
        ErrorCode::WorkerNotFound,
        ErrorCode::AttemptNotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::RunActive,
        ErrorCode::RunNotActive,
        ErrorCode::ThreadExists,
        ErrorCode::GraphMismatch,
        ErrorCode::IdempotencyConflict,
        ErrorCode::IdempotencyInFlight,
        ErrorCode::InterruptNotPending,
        ErrorCode::ResumeConflict,
        ErrorCode::GraphVersionMissing,
        ErrorCode::ProtocolMismatch,
        ErrorCode::LeaseLost,
        ErrorCode::NotDeadLettered,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RateLimited,
        ErrorCode::QueueFull,
        ErrorCode::Overloaded,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The HTTP status of the code.
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            InvalidInput => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden => StatusCode::FORBIDDEN,
            NotFound | ThreadNotFound | GraphNotFound | InterruptNotFound | CheckpointNotFound
            | WorkerNotFound | AttemptNotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Conflict | RunActive | RunNotActive | ThreadExists | GraphMismatch
            | IdempotencyConflict | IdempotencyInFlight | InterruptNotPending | ResumeConflict
            | GraphVersionMissing | ProtocolMismatch | LeaseLost | NotDeadLettered => {
                StatusCode::CONFLICT
            }
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RateLimited | QueueFull => StatusCode::TOO_MANY_REQUESTS,
            Overloaded | Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidInput => "invalid_input",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            NotFound => "not_found",
            ThreadNotFound => "thread_not_found",
            GraphNotFound => "graph_not_found",
            InterruptNotFound => "interrupt_not_found",
            CheckpointNotFound => "checkpoint_not_found",
            WorkerNotFound => "worker_not_found",
            AttemptNotFound => "attempt_not_found",
            MethodNotAllowed => "method_not_allowed",
            Conflict => "conflict",
            RunActive => "run_active",
            RunNotActive => "run_not_active",
            ThreadExists => "thread_exists",
            GraphMismatch => "graph_mismatch",
            IdempotencyConflict => "idempotency_conflict",
            IdempotencyInFlight => "idempotency_in_flight",
            InterruptNotPending => "interrupt_not_pending",
            ResumeConflict => "resume_conflict",
            GraphVersionMissing => "graph_version_missing",
            ProtocolMismatch => "protocol_mismatch",
            LeaseLost => "lease_lost",
            NotDeadLettered => "not_dead_lettered",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            RateLimited => "rate_limited",
            QueueFull => "queue_full",
            Overloaded => "overloaded",
            Unavailable => "unavailable",
            Internal => "internal",
        }
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code (see the error code table in `docs/api.md`).
    pub code: ErrorCode,
    /// Human-readable explanation; not stable, do not parse.
    pub message: String,
    /// Structured context (ids involved, the offending field), or null.
    pub details: Option<Value>,
    /// The request's id (also in the `x-request-id` header).
    pub request_id: String,
}

/// The outcome of a request as recorded in the audit log: `ok` or the error code. Set as a
/// response extension by [`ApiError::into_response`] and by idempotent replays.
#[derive(Debug, Clone)]
pub(crate) struct Outcome(pub String);

/// An API error: a code, a message, optional details.
#[derive(Debug, Clone)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    details: Option<Value>,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    /// Adds structured details.
    pub fn details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Adds a `Retry-After` header (seconds).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidInput, message)
    }

    /// A 500 whose cause is logged, never sent.
    pub(crate) fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            ErrorCode::Internal,
            "internal error; the server log has the details under this request id",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorEnvelope {
            error: ErrorBody {
                code: self.code,
                message: self.message,
                details: self.details,
                request_id: request_id::current().unwrap_or_default(),
            },
        };
        let mut resp = (self.code.status(), axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp.extensions_mut()
            .insert(Outcome(self.code.as_str().to_owned()));
        resp
    }
}

impl From<oris_runtime::Error> for ApiError {
    fn from(e: oris_runtime::Error) -> Self {
        use oris_runtime::Error as E;
        match e {
            E::InvalidThreadId(ref id) => ApiError::invalid(e.to_string())
                .details(json!({ "field": "thread_id", "reason": id.to_string() })),
            E::RunActive {
                ref thread_id,
                run_id,
            } => ApiError::new(ErrorCode::RunActive, e.to_string())
                .details(json!({ "thread_id": thread_id, "run_id": run_id })),
            E::GraphMismatch {
                ref thread_id,
                ref existing,
                ref requested,
            } => ApiError::new(ErrorCode::GraphMismatch, e.to_string()).details(
                json!({ "thread_id": thread_id, "graph": existing, "requested": requested }),
            ),
            E::ThreadNotFound(ref t) => ApiError::new(ErrorCode::ThreadNotFound, e.to_string())
                .details(json!({ "thread_id": t })),
            E::ThreadExists(ref t) => ApiError::new(ErrorCode::ThreadExists, e.to_string())
                .details(json!({ "thread_id": t })),
            E::NoActiveRun(ref t) => ApiError::new(ErrorCode::RunNotActive, e.to_string())
                .details(json!({ "thread_id": t })),
            E::GraphNotRegistered {
                ref thread_id,
                run_id,
                ref graph,
                ref version,
            } => ApiError::new(ErrorCode::GraphVersionMissing, e.to_string()).details(json!({
                "thread_id": thread_id, "run_id": run_id, "graph": graph, "version": version
            })),
            E::GraphNotFound {
                ref graph,
                ref version,
            } => ApiError::new(ErrorCode::GraphNotFound, e.to_string())
                .details(json!({ "graph": graph, "version": version })),
            E::CheckpointNotFound {
                ref thread_id,
                checkpoint,
            } => ApiError::new(ErrorCode::CheckpointNotFound, e.to_string())
                .details(json!({ "thread_id": thread_id, "checkpoint_id": checkpoint })),
            E::InvalidInput(ref m) => ApiError::invalid(m.clone()),
            E::InterruptNotFound(id) => ApiError::new(ErrorCode::InterruptNotFound, e.to_string())
                .details(json!({ "interrupt_id": id })),
            E::InterruptNotPending {
                interrupt_id,
                status,
            } => ApiError::new(ErrorCode::InterruptNotPending, e.to_string())
                .details(json!({ "interrupt_id": interrupt_id, "status": status })),
            E::ResumeConflict(id) => ApiError::new(ErrorCode::ResumeConflict, e.to_string())
                .details(json!({ "interrupt_id": id })),
            E::Superseded { .. } => ApiError::new(ErrorCode::Conflict, e.to_string()),
            E::Store(s) => s.into(),
            other => ApiError::internal(&other),
        }
    }
}

impl From<store::Error> for ApiError {
    fn from(e: store::Error) -> Self {
        use store::Error as E;
        match e {
            E::Unavailable(_) => {
                tracing::warn!(error = %e, "store unavailable");
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the store is unavailable; retry later",
                )
                .retry_after(1)
            }
            E::Conflict { .. } => ApiError::new(ErrorCode::Conflict, e.to_string()),
            E::LeaseLost {
                run_id,
                epoch,
                reason,
            } => ApiError::new(ErrorCode::LeaseLost, e.to_string())
                .details(json!({ "run_id": run_id, "epoch": epoch, "reason": reason })),
            E::IdempotencyConflict { ref key } => {
                ApiError::new(ErrorCode::IdempotencyConflict, e.to_string())
                    .details(json!({ "key": key }))
            }
            E::AlreadyExists { what, ref id } => ApiError::new(ErrorCode::Conflict, e.to_string())
                .details(json!({ "what": what, "id": id })),
            E::RunActive { .. }
            | E::GraphMismatch { .. }
            | E::ThreadNotFound { .. }
            | E::InterruptNotFound { .. }
            | E::InterruptNotPending { .. }
            | E::ResumeConflict { .. } => oris_runtime::Error::from(e).into(),
            other => ApiError::internal(&other),
        }
    }
}

/// `axum::Json` whose rejections are API errors (400 invalid_input, 413 payload_too_large,
/// 415 unsupported_media_type).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "expected a body with `Content-Type: application/json`",
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::invalid(format!(
            "malformed JSON: {}",
            std::error::Error::source(&e).map_or_else(|| e.body_text(), |s| s.to_string())
        ))
        .details(json!({ "reason": "malformed_json" })),
        JsonRejection::JsonDataError(e) => ApiError::invalid(format!(
            "the body does not match the expected shape: {}",
            std::error::Error::source(&e).map_or_else(|| e.body_text(), |s| s.to_string())
        ))
        .details(json!({ "reason": "invalid_body" })),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        other => ApiError::invalid(other.body_text()),
    }
}

pub(crate) fn too_large() -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        "the request body is larger than the server's limit",
    )
}

/// `axum::extract::Path` with API-error rejections.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|r: PathRejection| ApiError::invalid(r.body_text()))
    }
}

/// `axum::extract::Query` with API-error rejections.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|r: QueryRejection| {
                ApiError::invalid(format!("invalid query string: {}", r.body_text()))
            })
    }
}

/// The fallback for unknown routes.
pub(crate) async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

/// The fallback for a known route with another method.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not accept this method",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_stable_names_matching_serde() {
        for c in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), json!(c.as_str()));
        }
        assert_eq!(ErrorCode::RunActive.status(), StatusCode::CONFLICT);
        assert_eq!(
            ErrorCode::PayloadTooLarge.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let e: ApiError = store::Error::Incompatible("secret path /var/x".into()).into();
        assert_eq!(e.code(), ErrorCode::Internal);
        assert!(!e.message.contains("/var/x"));
    }
}
