//! Idempotent state-changing requests.
//!
//! A request with an `Idempotency-Key` (header, or the `idempotency_key` field of
//! `POST /v1/jobs`) is reserved in the store before any work, atomically with the check, in
//! the scope of the caller's key id (`anonymous` without auth). `request_hash` is the SHA-256
//! of the method, the request path and the body as canonical JSON (object keys sorted, no
//! whitespace), so a retry with reordered keys is the same request.
//!
//! - Reserved: the request runs; its response (2xx and 4xx) is stored for the TTL, a 5xx
//!   (and a 429 `queue_full`) releases the key so a retry may run.
//! - Replay: the stored status and body are returned, flagged `idempotent-replayed: true`.
//! - In flight: the duplicate waits (woken when a request finishes here, and polling the
//!   store for other processes) up to [`IN_FLIGHT_WAIT`], then replays — or answers 409
//!   `idempotency_in_flight` if the first is still running.
//! - Mismatch: 409 `idempotency_conflict`.

use std::time::{Duration, Instant};

use axum::body::{Body, to_bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use oris_core::id::Timestamp;
use oris_core::store::{IdempotencyRecord, Reservation, StoredResponse};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ErrorCode, Outcome};
use crate::state::AppState;

/// The request header carrying the key.
pub const HEADER: &str = "idempotency-key";
/// The response header flagging a replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// How long a duplicate waits for the first request to finish.
pub const IN_FLIGHT_WAIT: Duration = Duration::from_secs(10);
/// How long a reservation holds the key while its request runs; a reservation left by a
/// process that died is taken over after it.
pub const RESERVATION_LOCK: Duration = Duration::from_secs(60);
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// Checks a key: 1–255 visible ASCII characters.
pub(crate) fn validate_key(key: &str) -> Result<(), ApiError> {
    if (1..=MAX_KEY_LEN).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "an idempotency key must be 1–{MAX_KEY_LEN} visible ASCII characters"
        ))
        .details(json!({ "field": "idempotency_key" })))
    }
}

/// SHA-256 (hex) of method, path and body (canonical JSON when the body is JSON).
pub(crate) fn request_hash(method: &str, path: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update(b"\n");
    h.update(path.as_bytes());
    h.update(b"\n");
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let mut s = String::with_capacity(body.len());
            canonical(&v, &mut s);
            h.update(s.as_bytes());
        }
        Err(_) => h.update(body),
    }
    crate::auth::hex(&h.finalize())
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Runs `work` at most once for (`scope`, `key`, `hash`), as described in the module docs.
pub(crate) async fn run<F, Fut>(
    app: &AppState,
    scope: &str,
    key: &str,
    hash: String,
    work: F,
) -> Response
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Response>,
{
    let deadline = Instant::now() + IN_FLIGHT_WAIT;
    let mut work = Some(work);
    let mut backoff = Duration::from_millis(10);
    loop {
        let notified = app.idempotency_done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = Timestamp::now();
        let candidate = IdempotencyRecord {
            scope: scope.to_owned(),
            key: key.to_owned(),
            request_hash: hash.clone(),
            created_at: now,
            expires_at: now.plus(app.config.idempotency_ttl),
            locked_until: now.plus(RESERVATION_LOCK),
            response: None,
        };
        let decision = match app.store.reserve_idempotency(&candidate, now).await {
            Ok(d) => d,
            Err(e) => return ApiError::from(e).into_response(),
        };
        match decision {
            Reservation::Reserved => {
                let Some(work) = work.take() else {
                    return ApiError::internal(&"idempotent request reserved twice")
                        .into_response();
                };
                let resp = work().await;
                let resp = finish(app, scope, key, resp).await;
                app.idempotency_done.notify_waiters();
                return resp;
            }
            Reservation::Replay(stored) => return replay(stored),
            Reservation::Mismatch => {
                return ApiError::new(
                    ErrorCode::IdempotencyConflict,
                    "this idempotency key was already used with a different request",
                )
                .details(json!({ "key": key }))
                .into_response();
            }
            Reservation::InFlight => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return ApiError::new(
                        ErrorCode::IdempotencyInFlight,
                        "a request with this idempotency key is still being processed",
                    )
                    .details(json!({ "key": key }))
                    .retry_after(1)
                    .into_response();
                }
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(backoff.min(left)) => {}
                }
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// Stores the response of a reserved request (or releases the key after a 5xx or a 429 —
/// a refusal to be retried later, which must not be replayed).
async fn finish(app: &AppState, scope: &str, key: &str, resp: Response) -> Response {
    let (parts, body) = resp.into_parts();
    let bytes = match to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            let _ = app.store.release_idempotency(scope, key).await;
            return ApiError::internal(&format!("response body failed: {e}")).into_response();
        }
    };
    let r = if parts.status.is_server_error() || parts.status == StatusCode::TOO_MANY_REQUESTS {
        app.store.release_idempotency(scope, key).await
    } else {
        let stored = StoredResponse {
            status: parts.status.as_u16(),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        };
        app.store.complete_idempotency(scope, key, &stored).await
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, key, "idempotency record not updated; a retry may run the request again");
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// The stored response again, flagged as a replay.
fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let outcome = serde_json::from_str::<Value>(&stored.body)
        .ok()
        .and_then(|v| v.pointer("/error/code")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "ok".to_owned());
    let mut resp = (status, stored.body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    resp.extensions_mut().insert(Outcome(outcome));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_ignores_key_order_and_whitespace_but_not_values_or_paths() {
        let a = request_hash("POST", "/v1/jobs", br#"{"a":1,"b":{"y":[1,2],"x":"s"}}"#);
        let b = request_hash(
            "POST",
            "/v1/jobs",
            b"{ \"b\": {\"x\":\"s\", \"y\":[1, 2]}, \"a\": 1 }",
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            request_hash("POST", "/v1/jobs", br#"{"a":2,"b":{"y":[1,2],"x":"s"}}"#)
        );
        assert_ne!(
            a,
            request_hash("POST", "/v1/jobz", br#"{"a":1,"b":{"y":[1,2],"x":"s"}}"#)
        );
        assert_ne!(
            request_hash("POST", "/p", b"not json"),
            request_hash("POST", "/p", b"not json!")
        );
    }

    #[test]
    fn keys_are_validated() {
        assert!(validate_key("abc-123").is_ok());
        assert!(validate_key(&"k".repeat(255)).is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key(&"k".repeat(256)).is_err());
        assert!(validate_key("has space").is_err());
    }
}
