//! `/v1/interrupts`.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use oris_core::id::{InterruptId, RunId};
use oris_core::store::{InterruptFilter, InterruptRecord};

use super::jobs::{OptionalJson, answer};
use super::query::{self, MAX_LIMIT, Params, bad};
use crate::error::{ApiError, Json, Path, Query};
use crate::state::AppState;
use crate::wire::{InterruptList, InterruptView, JobView, RejectInterrupt, ResumeInterrupt};

/// Whether the runs of these interrupts ended (one read per run).
async fn ended(app: &AppState, recs: &[InterruptRecord]) -> Result<HashMap<RunId, bool>, ApiError> {
    let mut out = HashMap::new();
    for r in recs {
        if let std::collections::hash_map::Entry::Vacant(slot) = out.entry(r.run_id) {
            let e = app
                .store
                .run(r.run_id)
                .await?
                .is_none_or(|run| run.status.is_terminal());
            slot.insert(e);
        }
    }
    Ok(out)
}

/// List interrupts, oldest first.
#[utoipa::path(get, path = "/v1/interrupts", tag = "interrupts",
    params(
        ("status" = Option<String>, Query, description = "`pending` (default: waiting for a value), `open` (pending or answered, not yet applied), `all`"),
        ("graph" = Option<String>, Query, description = "Graph name"),
        ("thread_id" = Option<String>, Query, description = "Thread"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<usize>, Query, description = "Page size, 1–500, default 50"),
    ),
    responses((status = 200, description = "A page of interrupts", body = InterruptList)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<InterruptList>, ApiError> {
    let p = Params::new(pairs, &["status", "graph", "thread_id", "cursor", "limit"])?;
    let limit = p.limit(MAX_LIMIT)?;
    let status = p.get("status").unwrap_or("pending");
    if !matches!(status, "pending" | "open" | "all") {
        return Err(bad("status", "must be `pending`, `open` or `all`".into()));
    }
    let mut filter = InterruptFilter {
        thread_id: p.get("thread_id").map(query::thread).transpose()?,
        graph: p.get("graph").map(str::to_owned),
        open_only: status != "all",
        after: p.get("cursor").map(query::interrupt).transpose()?,
        limit: limit + 1,
    };
    // `pending` is `open` without answered ones: filter, and read on until the page is full.
    let mut found: Vec<InterruptRecord> = Vec::new();
    loop {
        let page = app.store.list_interrupts(&filter).await?;
        let last = page.last().map(|r| r.interrupt_id);
        let exhausted = page.len() < filter.limit;
        found.extend(
            page.into_iter()
                .filter(|r| status != "pending" || r.answer.is_none()),
        );
        if found.len() > limit || exhausted {
            break;
        }
        filter.after = last;
    }
    let more = found.len() > limit;
    found.truncate(limit);
    let ended = ended(&app, &found).await?;
    Ok(Json(InterruptList {
        next_cursor: more
            .then(|| found.last().map(|r| r.interrupt_id.to_string()))
            .flatten(),
        interrupts: found
            .iter()
            .map(|r| InterruptView::of(r, ended.get(&r.run_id).copied().unwrap_or(true)))
            .collect(),
    }))
}

async fn one(app: &AppState, id: InterruptId) -> Result<InterruptView, ApiError> {
    let rec = app
        .store
        .interrupt(id)
        .await?
        .ok_or(oris_runtime::Error::InterruptNotFound(id))?;
    let ended = ended(app, std::slice::from_ref(&rec)).await?;
    Ok(InterruptView::of(&rec, ended[&rec.run_id]))
}

/// An interrupt.
#[utoipa::path(get, path = "/v1/interrupts/{interrupt_id}", tag = "interrupts",
    params(("interrupt_id" = String, Path, description = "`int_…`")),
    responses((status = 200, description = "The interrupt", body = InterruptView),
        (status = 400, description = "`invalid_input` (malformed id)", body = crate::error::ErrorEnvelope),
        (status = 404, description = "`interrupt_not_found`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<InterruptView>, ApiError> {
    let id = query::interrupt(&id)?;
    Ok(Json(one(&app, id).await?))
}

/// Resume an interrupt with a value; its run continues in a worker.
#[utoipa::path(post, path = "/v1/interrupts/{interrupt_id}/resume", tag = "interrupts",
    request_body = ResumeInterrupt,
    params(("interrupt_id" = String, Path, description = "`int_…`"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the call safe to repeat")),
    responses((status = 202, description = "The value is recorded (the same value again is accepted as well)", body = InterruptView),
        (status = 404, description = "`interrupt_not_found`", body = crate::error::ErrorEnvelope),
        (status = 409, description = "`interrupt_not_pending`, `resume_conflict`, `graph_version_missing`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn resume(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<ResumeInterrupt>,
) -> Result<Response, ApiError> {
    let id = query::interrupt(&id)?;
    answer(&app, id, body.value).await?;
    Ok((StatusCode::ACCEPTED, Json(one(&app, id).await?)).into_response())
}

/// Reject an interrupt: its run is cancelled.
#[utoipa::path(post, path = "/v1/interrupts/{interrupt_id}/reject", tag = "interrupts",
    request_body(content = Option<RejectInterrupt>, description = "Optional"),
    params(("interrupt_id" = String, Path, description = "`int_…`"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the call safe to repeat")),
    responses((status = 200, description = "The run, cancelled", body = JobView),
        (status = 404, description = "`interrupt_not_found`", body = crate::error::ErrorEnvelope),
        (status = 409, description = "`interrupt_not_pending`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn reject(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: OptionalJson<RejectInterrupt>,
) -> Result<Json<JobView>, ApiError> {
    let id = query::interrupt(&id)?;
    let reason = body
        .0
        .reason
        .unwrap_or_else(|| "interrupt rejected via API".into());
    let run = app.engine.reject(id, reason).await?;
    tracing::info!(interrupt_id = %id, thread_id = %run.thread_id, run_id = %run.run_id, "interrupt rejected");
    Ok(Json(JobView::of(&run)))
}
