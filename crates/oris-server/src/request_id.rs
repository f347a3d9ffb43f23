//! Request ids, the per-request span, and HTTP metrics: the outermost middleware.
//!
//! Every response carries `x-request-id`: the client's when it is 1–128 characters of
//! `[A-Za-z0-9._:-]`, otherwise a fresh UUIDv7. The id is the `request_id` field of the
//! request's span (so every log line of the request carries it) and of error bodies.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::state::AppState;

/// The header carrying the request id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled by this task, if any.
pub(crate) fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Whether a client-supplied request id is acceptable.
pub(crate) fn is_valid(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The route a response was served by, for metrics (set by the route guard).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteLabel(pub &'static str);

pub(crate) async fn middleware(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_valid(v))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        path = %req.uri().path(),
        thread_id = tracing::field::Empty,
        interrupt_id = tracing::field::Empty,
    );
    let start = Instant::now();
    let mut resp = REQUEST_ID
        .scope(id.clone(), next.run(req))
        .instrument(span.clone())
        .await;
    let elapsed = start.elapsed();
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let route = resp
        .extensions()
        .get::<RouteLabel>()
        .map_or("unmatched", |r| r.0);
    let status = resp.status().as_u16();
    app.metrics
        .http_request(route, method.as_str(), status, elapsed);
    tracing::debug!(parent: &span, status, elapsed_ms = elapsed.as_secs_f64() * 1e3, "request finished");
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_client_ids() {
        assert!(is_valid("abc-123_x.y:z"));
        assert!(is_valid(&"a".repeat(128)));
        assert!(!is_valid(""));
        assert!(!is_valid(&"a".repeat(129)));
        assert!(!is_valid("has space"));
        assert!(!is_valid("slash/no"));
    }
}
