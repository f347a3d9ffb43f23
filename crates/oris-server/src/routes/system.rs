//! `/healthz`, `/readyz`, `/metrics`, `/v1/openapi.json`.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use oris_core::status::StatusKind;
use oris_core::store::{InterruptFilter, RunFilter};

use crate::state::{AppState, PoolState};
use crate::wire::{Health, Readiness};

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "system",
    responses((status = 200, description = "Alive", body = Health)))]
pub(crate) async fn healthz() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the store answers a read and the worker pool runs.
#[utoipa::path(get, path = "/readyz", tag = "system",
    responses((status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready; the fields say what fails", body = Readiness)))]
pub(crate) async fn readyz(State(app): State<AppState>) -> Response {
    let probe = RunFilter {
        limit: 1,
        ..Default::default()
    };
    let store = match app.store.runs(&probe).await {
        Ok(_) => "ok".to_owned(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: store check failed");
            format!("unreachable: {e}")
        }
    };
    let workers = if app.config.workers == 0 {
        "disabled"
    } else {
        match app.pool_state() {
            PoolState::Running => "running",
            PoolState::NotStarted => "not_started",
            PoolState::Stopped => "stopped",
        }
    };
    let ready = store == "ok" && matches!(workers, "running" | "disabled");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(Readiness {
            status: if ready { "ready" } else { "not_ready" }.into(),
            store,
            workers: workers.into(),
            worker_id: app.worker_id.clone(),
        }),
    )
        .into_response()
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text", content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(app): State<AppState>) -> Response {
    let queued = app
        .store
        .runs(&RunFilter {
            statuses: vec![StatusKind::Queued],
            ..Default::default()
        })
        .await
        .map(|r| r.len());
    let pending = app
        .store
        .list_interrupts(&InterruptFilter {
            open_only: true,
            ..Default::default()
        })
        .await
        .map(|r| r.iter().filter(|i| i.answer.is_none()).count());
    match (queued, pending) {
        (Ok(q), Ok(p)) => app.metrics.gauges(q, p),
        (Err(e), _) | (_, Err(e)) => tracing::warn!(error = %e, "metrics: gauges not refreshed"),
    }
    match super::workers::active_count(&app).await {
        Ok(n) => app.metrics.workers_active(n),
        Err(e) => tracing::debug!(error = %e, "metrics: active workers not counted"),
    }
    let mut resp = app.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "system",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub(crate) async fn openapi() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| crate::openapi::document().to_string());
    let mut resp = doc.clone().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
