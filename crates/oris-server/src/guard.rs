//! The per-route guard: authentication, the role check, idempotency and the audit entry of
//! state-changing calls, in that order, for every route of the table (`routes`).

use axum::body::{Body, HttpBody as _, to_bytes};
use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, OriginalUri, RawPathParams, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::audit;
use crate::auth::{Access, Auth, Caller};
use crate::error::{ApiError, ErrorCode, Outcome, too_large};
use crate::idempotency;
use crate::limits::Slot;
use crate::request_id::{self, RouteLabel};
use crate::routes::RouteSpec;
use crate::state::AppState;

/// A handler's word on what its call acted on (for the audit log), when the path does not
/// say (`POST /v1/jobs` names its thread in the body).
#[derive(Debug, Clone)]
pub(crate) struct AuditTarget(pub String);

/// More for the audit entry's `details`, from the handler (a JSON object merged into them):
/// what a bulk call did, the error a worker reported.
#[derive(Debug, Clone)]
pub(crate) struct AuditDetails(pub Value);

#[derive(Clone)]
pub(crate) struct Guarded {
    pub app: AppState,
    pub spec: RouteSpec,
}

pub(crate) async fn guard(State(g): State<Guarded>, req: Request, next: Next) -> Response {
    // Load shedding first: a refusal costs no store call (and is not audited).
    let slot = if g.spec.access == Access::Public {
        None
    } else {
        let limit = if g.spec.long_lived {
            &g.app.streams
        } else {
            &g.app.in_flight
        };
        match limit.enter() {
            Some(s) => Some(s),
            None => {
                let mut resp = reject(&g, overloaded());
                resp.extensions_mut().insert(RouteLabel(g.spec.path));
                return resp;
            }
        }
    };
    let (mut parts, body) = req.into_parts();
    let params: Vec<(String, String)> = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .map(|p| {
            p.iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let span = tracing::Span::current();
    for (k, v) in &params {
        if k == "thread_id" || k == "interrupt_id" {
            span.record(k.as_str(), v.as_str());
        }
    }
    let mut resp = guarded(&g, parts, body, params, next).await;
    resp.extensions_mut().insert(RouteLabel(g.spec.path));
    match slot {
        // A stream's place is held until its body ends.
        Some(slot) if g.spec.long_lived && resp.body().size_hint().exact().is_none() => {
            hold_until_body_ends(resp, slot)
        }
        _ => resp,
    }
}

fn hold_until_body_ends(resp: Response, slot: Slot) -> Response {
    let (parts, body) = resp.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &slot;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

async fn guarded(
    g: &Guarded,
    mut parts: axum::http::request::Parts,
    body: Body,
    params: Vec<(String, String)>,
    next: Next,
) -> Response {
    let app = &g.app;
    let spec = &g.spec;
    if spec.access == Access::Public {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let caller = match app.auth.authenticate(&parts.headers).await {
        Ok(c) => Some(c),
        Err(e) => return deny(g, None, &params, e).await,
    };
    if let (Some(limiter), Some(c)) = (&app.rate_limiter, &caller)
        && let Err(secs) = limiter.take(&rate_key(app, c, &parts), Instant::now())
    {
        return reject(g, rate_limited(secs));
    }
    if let Some(c) = &caller {
        if !c.role.allows(spec.access) {
            let e = ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "the role `{}` may not use this route (it needs {})",
                    c.role.as_str(),
                    spec.access.roles()
                ),
            );
            return deny(g, Some(c), &params, e).await;
        }
        parts.extensions.insert(c.clone());
    }
    let Some(action) = spec.action else {
        return next.run(Request::from_parts(parts, body)).await;
    };

    // A state-changing call: buffer the body (for the request hash), run it idempotently
    // when a key is given, and audit the result.
    let bytes = match to_bytes(body, app.config.body_limit).await {
        Ok(b) => b,
        Err(_) => return deny(g, caller.as_ref(), &params, too_large()).await,
    };
    let key = match idempotency_key(spec, &parts.headers, &bytes) {
        Ok(k) => k,
        Err(e) => return deny(g, caller.as_ref(), &params, e).await,
    };
    let path = parts
        .extensions
        .get::<OriginalUri>()
        .map_or_else(|| parts.uri.path().to_owned(), |u| u.0.path().to_owned());
    let method = parts.method.as_str().to_owned();
    let scope = caller
        .as_ref()
        .map_or_else(|| "anonymous".to_owned(), |c| c.key_id.clone());
    let mut resp = match &key {
        None => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Some(k) => {
            let hash = idempotency::request_hash(&method, &path, &bytes);
            let req = Request::from_parts(parts, Body::from(bytes));
            idempotency::run(app, &scope, k, hash, move || next.run(req)).await
        }
    };
    let replayed = resp.headers().contains_key(idempotency::REPLAYED_HEADER);
    if replayed && spec.location && resp.status().is_success() {
        add_location(&mut resp, &path).await;
    }
    let target = resp
        .extensions()
        .get::<AuditTarget>()
        .map(|t| t.0.clone())
        .or_else(|| params.first().map(|(_, v)| v.clone()));
    let outcome = outcome_of(&resp);
    let mut details = json!({
        "method": method, "path": path,
        "idempotency_key": key, "replayed": replayed,
    });
    if let (Some(AuditDetails(Value::Object(more))), Value::Object(d)) =
        (resp.extensions().get::<AuditDetails>(), &mut details)
    {
        for (k, v) in more {
            d.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    audit::record(
        app,
        audit::Entry {
            caller: caller.as_ref(),
            action,
            target,
            request_id: request_id::current().unwrap_or_default(),
            status: resp.status().as_u16(),
            outcome,
            details,
        },
    )
    .await;
    resp
}

/// Whose bucket a call takes from: the key id; without authentication, the client IP
/// (when the app is served with connection info) or `anonymous`.
fn rate_key(app: &AppState, caller: &Caller, parts: &axum::http::request::Parts) -> String {
    if app.auth.mode != Auth::Disabled {
        return format!("key:{}", caller.key_id);
    }
    match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => format!("ip:{}", addr.ip()),
        None => "anonymous".to_owned(),
    }
}

fn overloaded() -> ApiError {
    ApiError::new(
        ErrorCode::Overloaded,
        "the server is handling too many requests; retry shortly",
    )
    .retry_after(1)
}

fn rate_limited(secs: u64) -> ApiError {
    ApiError::new(
        ErrorCode::RateLimited,
        format!("too many requests from this caller; retry in {secs} s"),
    )
    .details(json!({ "retry_after_seconds": secs }))
    .retry_after(secs)
}

/// A refusal by load shedding or the rate limit: counted and logged, not audited (it must
/// stay cheap, and writing to the store under overload makes things worse).
fn reject(g: &Guarded, e: ApiError) -> Response {
    let reason = e.code().as_str();
    g.app.metrics.rejected(reason, g.spec.path);
    tracing::debug!(reason, route = g.spec.path, "request refused");
    e.into_response()
}

/// The key of the request: the header, else (for routes that take one) the body field.
fn idempotency_key(
    spec: &RouteSpec,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<Option<String>, ApiError> {
    let key = match headers.get(idempotency::HEADER) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::invalid("the Idempotency-Key header is not ASCII"))?
                .to_owned(),
        ),
        None if spec.body_key => serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("idempotency_key")?.as_str().map(str::to_owned)),
        None => None,
    };
    if let Some(k) = &key {
        idempotency::validate_key(k)?;
    }
    Ok(key)
}

/// A refusal before the handler ran; audited when the route changes state.
async fn deny(
    g: &Guarded,
    caller: Option<&Caller>,
    params: &[(String, String)],
    e: ApiError,
) -> Response {
    let resp = e.clone().into_response();
    if let Some(action) = g.spec.action {
        audit::record(
            &g.app,
            audit::Entry {
                caller,
                action,
                target: params.first().map(|(_, v)| v.clone()),
                request_id: request_id::current().unwrap_or_default(),
                status: resp.status().as_u16(),
                outcome: e.code().as_str().to_owned(),
                details: json!({ "path": g.spec.path }),
            },
        )
        .await;
    }
    resp
}

fn outcome_of(resp: &Response) -> String {
    match resp.extensions().get::<Outcome>() {
        Some(o) => o.0.clone(),
        None if resp.status().is_success() => "ok".to_owned(),
        None => format!("http_{}", resp.status().as_u16()),
    }
}

/// Location of the job named by a (replayed) response body's `thread_id`.
async fn add_location(resp: &mut Response, path: &str) {
    let body = std::mem::replace(resp.body_mut(), Body::empty());
    let Ok(bytes) = to_bytes(body, usize::MAX).await else {
        return;
    };
    if let Some(t) = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("thread_id")?.as_str().map(str::to_owned))
        && let Ok(v) = HeaderValue::from_str(&job_location(path, &t))
    {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    *resp.body_mut() = Body::from(bytes);
}

/// The URL path of a job, relative to wherever the API is mounted: the request path up to
/// and including `/v1/jobs`, then the thread id.
pub(crate) fn job_location(request_path: &str, thread_id: &str) -> String {
    let base = request_path
        .rfind("/v1/jobs")
        .map_or("/v1/jobs", |i| &request_path[..i + "/v1/jobs".len()]);
    format!("{base}/{thread_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_location_keeps_the_mount_prefix() {
        assert_eq!(job_location("/v1/jobs", "t1"), "/v1/jobs/t1");
        assert_eq!(job_location("/oris/v1/jobs", "t1"), "/oris/v1/jobs/t1");
        assert_eq!(
            job_location("/api/v1/jobs/src/fork", "t2"),
            "/api/v1/jobs/t2"
        );
    }
}
