//! Request ids, the request span, and the business routes' bearer check.
//!
//! Every business request runs in a `request` span with `request_id`, `method`, `path` and
//! — recorded by the handlers once known — `expense_id`, `thread_id` and `run_id`, so a
//! request's log lines join the engine's own `execute` span of the run (which carries the
//! same `thread_id` and `run_id`). The control plane under `/oris` has its own request ids
//! and spans (`docs/api.md`, "Request ids and tracing"); both answer `x-request-id`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;
use tracing::field::Empty;

use crate::error::{BizError, Kind};

/// The request id header, read (when valid) and answered.
pub const REQUEST_ID: &str = "x-request-id";

/// The caller's request id when it is 1–128 characters of `[A-Za-z0-9._:-]`, else a new
/// UUIDv7.
fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            (1..=128).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// Middleware: runs the request in its `request` span and answers `x-request-id`.
pub async fn request_span(req: Request, next: Next) -> Response {
    let id = request_id(&req);
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
        expense_id = Empty,
        thread_id = Empty,
        run_id = Empty,
    );
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_ms = started.elapsed().as_millis() as u64,
            "request finished"
        )
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// Records the expense (and its thread: the same id) on the current request span.
pub fn correlate_expense(expense_id: &str) {
    let span = tracing::Span::current();
    span.record("expense_id", expense_id);
    span.record("thread_id", expense_id);
}

/// Records the expense's run on the current request span.
pub fn correlate_run(run_id: &oris::RunId) {
    tracing::Span::current().record("run_id", tracing::field::display(run_id));
}

/// The business API's bearer token.
#[derive(Clone)]
pub struct BearerToken(pub Arc<str>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(…)")
    }
}

/// Middleware: the business routes need `Authorization: Bearer <token>`.
pub async fn require_bearer(
    State(token): State<BearerToken>,
    req: Request,
    next: Next,
) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if same(g.trim().as_bytes(), token.0.as_bytes()) => next.run(req).await,
        _ => {
            tracing::info!("business request refused: missing or wrong bearer token");
            let mut resp = BizError::new(Kind::Unauthorized, "missing or invalid bearer token")
                .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
