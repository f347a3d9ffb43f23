//! Failures: `GET /v1/attempts/{attempt_id}/retries` (every attempt of a task, from the
//! log) and the dead-letter queue (`/v1/dlq`): failed runs that are still their thread's
//! last run, with their error chain, and their replay from the last checkpoint.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::extract::{OriginalUri, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use oris_core::event::{Event, EventBody, Failure};
use oris_core::id::{RunId, Seq, Timestamp};
use oris_core::status::{RunStatus, StatusKind};
use oris_core::store::{IdempotencyRecord, Reservation, RunFilter, RunRecord, StoredResponse};
use oris_runtime::{EnqueueOptions, RunOptions};
use serde_json::{Value, json};

use super::query::{MAX_LIMIT, Params};
use crate::error::{ApiError, ErrorCode, Json, Path, Query};
use crate::guard::{AuditDetails, job_location};
use crate::state::AppState;
use crate::time::rfc3339;
use crate::wire::{
    AttemptView, DlqDetail, DlqEntry, DlqList, DlqReplay, FailureLink, JobView, RetryHistory,
};

/// Page size when reading a run's events.
const EVENT_PAGE: usize = 1000;
/// Failed runs examined per page of failed runs when listing the queue.
const SCAN_PAGE: usize = 200;
/// Most failed runs one listing examines (a page may come back short, with a cursor).
const SCAN_MAX: usize = 5000;
/// The idempotency scope recording which run a DLQ entry was replayed into.
pub(crate) const DLQ_SCOPE: &str = "dlq";
/// How long that record is kept.
const DLQ_LINK_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A task attempt id: `<run_id>.<superstep>.<task>` or `…​.<attempt>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TaskRef {
    pub run_id: RunId,
    pub superstep: u32,
    pub task: u32,
    pub attempt: Option<u32>,
}

impl TaskRef {
    pub(crate) fn parse(s: &str) -> Result<TaskRef, ApiError> {
        let bad = || {
            ApiError::invalid(format!(
                "invalid attempt id `{s}`: expected `<run_id>.<superstep>.<task>` or `<run_id>.<superstep>.<task>.<attempt>`"
            ))
            .details(json!({ "field": "attempt_id" }))
        };
        let parts: Vec<&str> = s.split('.').collect();
        if !(3..=4).contains(&parts.len()) {
            return Err(bad());
        }
        let run_id = parts[0].parse::<RunId>().map_err(|_| bad())?;
        let num = |p: &str| p.parse::<u32>().map_err(|_| bad());
        Ok(TaskRef {
            run_id,
            superstep: num(parts[1])?,
            task: num(parts[2])?,
            attempt: parts.get(3).map(|p| num(p)).transpose()?,
        })
    }

    fn task_id(&self) -> String {
        format!("{}.{}.{}", self.run_id, self.superstep, self.task)
    }
}

fn attempt_id(run: RunId, superstep: u32, task: u32, attempt: u32) -> String {
    format!("{run}.{superstep}.{task}.{attempt}")
}

fn failure_json(f: &Failure) -> Value {
    serde_json::to_value(f).unwrap_or(Value::Null)
}

/// The run's events, in order (read from its first event until its end or the head).
async fn run_events(app: &AppState, run: &RunRecord) -> Result<Vec<Event>, ApiError> {
    let mut after = Seq(run.first_seq.0.saturating_sub(1));
    let mut out = Vec::new();
    loop {
        let page = app.store.events(&run.thread_id, after, EVENT_PAGE).await?;
        let n = page.len();
        let mut ended = false;
        for e in page {
            after = e.seq;
            if e.run_id == run.run_id {
                ended = e.body.is_terminal();
                out.push(e);
                if ended {
                    break;
                }
            }
        }
        if ended || n < EVENT_PAGE {
            return Ok(out);
        }
    }
}

/// Every attempt of one task.
#[utoipa::path(get, path = "/v1/attempts/{attempt_id}/retries", tag = "failures",
    params(("attempt_id" = String, Path, description = "`<run_id>.<superstep>.<task>` or `<run_id>.<superstep>.<task>.<attempt>` (the id in the runtime's node span)")),
    responses((status = 200, description = "The task's attempts, oldest first", body = RetryHistory),
        (status = 400, description = "`invalid_input`: malformed id", body = crate::error::ErrorEnvelope),
        (status = 404, description = "`attempt_not_found`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn retries(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RetryHistory>, ApiError> {
    let t = TaskRef::parse(&id)?;
    let not_found = || {
        ApiError::new(
            ErrorCode::AttemptNotFound,
            format!("no attempt `{id}` is in the log"),
        )
        .details(json!({ "attempt_id": id }))
    };
    let run = app.store.run(t.run_id).await?.ok_or_else(not_found)?;
    let mut node_name = None;
    let mut attempts = Vec::new();
    for e in run_events(&app, &run).await? {
        let (superstep, task, node, attempt, outcome, error, retry_at) = match &e.body {
            EventBody::NodeCompleted {
                superstep,
                task,
                node,
                attempt,
                ..
            } => (*superstep, *task, node, *attempt, "completed", None, None),
            EventBody::NodeFailed {
                superstep,
                task,
                node,
                attempt,
                error,
                retry_at,
            } => (
                *superstep,
                *task,
                node,
                *attempt,
                "failed",
                Some(failure_json(error)),
                retry_at.map(rfc3339),
            ),
            _ => continue,
        };
        if superstep != t.superstep || task != t.task {
            continue;
        }
        node_name.get_or_insert_with(|| node.clone());
        attempts.push(AttemptView {
            attempt_id: attempt_id(run.run_id, superstep, task, attempt),
            attempt,
            at: rfc3339(e.at),
            outcome: outcome.into(),
            error,
            retry_at,
            seq: e.seq.0,
        });
    }
    let Some(node) = node_name else {
        return Err(not_found());
    };
    if let Some(n) = t.attempt
        && !attempts.iter().any(|a| a.attempt == n)
    {
        return Err(not_found());
    }
    Ok(Json(RetryHistory {
        task_id: t.task_id(),
        run_id: run.run_id.to_string(),
        thread_id: run.thread_id.to_string(),
        superstep: t.superstep,
        task: t.task,
        node,
        attempts,
    }))
}

/// The run's failure, when it is a dead-letter entry: failed, and its thread's last run.
async fn dead_lettered(app: &AppState, run: &RunRecord) -> Result<Option<Failure>, ApiError> {
    let RunStatus::Failed { error } = &run.status else {
        return Ok(None);
    };
    let last = app
        .store
        .thread(&run.thread_id)
        .await?
        .and_then(|t| t.last_run);
    Ok((last == Some(run.run_id)).then(|| error.clone()))
}

fn entry(run: &RunRecord, error: &Failure) -> DlqEntry {
    DlqEntry {
        run_id: run.run_id.to_string(),
        thread_id: run.thread_id.to_string(),
        graph: run.graph.clone(),
        graph_version: run.graph_version.clone(),
        failed_at: rfc3339(run.updated_at),
        error: failure_json(error),
        metadata: run.metadata_map(),
    }
}

fn not_dead_lettered(run: &RunRecord, why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotDeadLettered,
        format!("run {} is not a dead-letter entry: {why}", run.run_id),
    )
    .details(json!({
        "run_id": run.run_id,
        "thread_id": run.thread_id,
        "status": run.status.kind().as_str(),
    }))
}

async fn read_run(app: &AppState, id: &str) -> Result<RunRecord, ApiError> {
    let run_id = id.parse::<RunId>().map_err(|e| {
        ApiError::invalid(format!("invalid run id `{id}`: {e}"))
            .details(json!({ "field": "run_id" }))
    })?;
    app.store.run(run_id).await?.ok_or_else(|| {
        ApiError::new(ErrorCode::NotFound, format!("run {run_id} does not exist"))
            .details(json!({ "run_id": run_id }))
    })
}

/// Dead-letter entries: failed runs that are still their thread's last run.
#[utoipa::path(get, path = "/v1/dlq", tag = "failures",
    params(
        ("graph" = Option<String>, Query, description = "Graph name"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<usize>, Query, description = "Page size, 1–500, default 50"),
    ),
    responses((status = 200, description = "A page of entries", body = DlqList)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<DlqList>, ApiError> {
    let p = Params::new(pairs, &["graph", "cursor", "limit"])?;
    let limit = p.limit(MAX_LIMIT)?;
    let mut after = p.parsed::<RunId>("cursor")?;
    let graph = p.get("graph").map(str::to_owned);
    let mut entries = Vec::new();
    let mut examined = 0;
    let mut next_cursor = None;
    'scan: loop {
        let page = app
            .store
            .runs(&RunFilter {
                graph: graph.clone(),
                statuses: vec![StatusKind::Failed],
                after,
                limit: SCAN_PAGE,
                ..Default::default()
            })
            .await?;
        let n = page.len();
        for run in page {
            after = Some(run.run_id);
            examined += 1;
            if let Some(error) = dead_lettered(&app, &run).await? {
                entries.push(entry(&run, &error));
                if entries.len() == limit {
                    next_cursor = Some(run.run_id.to_string());
                    break 'scan;
                }
            }
            if examined >= SCAN_MAX {
                next_cursor = Some(run.run_id.to_string());
                break 'scan;
            }
        }
        if n < SCAN_PAGE {
            break;
        }
    }
    // A full page whose last entry was the last failed run: the next page is empty, which
    // is fine (the cursor stays valid).
    Ok(Json(DlqList {
        entries,
        next_cursor,
    }))
}

/// One entry with its error chain.
#[utoipa::path(get, path = "/v1/dlq/{run_id}", tag = "failures",
    params(("run_id" = String, Path, description = "The failed run")),
    responses((status = 200, description = "The entry", body = DlqDetail),
        (status = 404, description = "`not_found`: no such run", body = crate::error::ErrorEnvelope),
        (status = 409, description = "`not_dead_lettered`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DlqDetail>, ApiError> {
    let run = read_run(&app, &id).await?;
    let Some(error) = dead_lettered(&app, &run).await? else {
        return Err(not_dead_lettered(
            &run,
            if run.status.kind() == StatusKind::Failed {
                "its thread has a later run"
            } else {
                "it did not fail"
            },
        ));
    };
    let events = run_events(&app, &run).await?;
    // The tasks that failed for good: a failure with no retry after it.
    let failing: BTreeSet<(u32, u32)> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::NodeFailed {
                superstep,
                task,
                retry_at: None,
                ..
            } => Some((*superstep, *task)),
            _ => None,
        })
        .collect();
    let chain = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::NodeFailed {
                superstep,
                task,
                node,
                attempt,
                error,
                retry_at,
            } if failing.contains(&(*superstep, *task)) => Some(FailureLink {
                event: "node_failed".into(),
                seq: e.seq.0,
                at: rfc3339(e.at),
                node: Some(node.clone()),
                attempt_id: Some(attempt_id(run.run_id, *superstep, *task, *attempt)),
                error: failure_json(error),
                retry_at: retry_at.map(rfc3339),
            }),
            EventBody::RunFailed { error } => Some(FailureLink {
                event: "run_failed".into(),
                seq: e.seq.0,
                at: rfc3339(e.at),
                node: error.node.clone(),
                attempt_id: None,
                error: failure_json(error),
                retry_at: None,
            }),
            _ => None,
        })
        .collect();
    Ok(Json(DlqDetail {
        entry: entry(&run, &error),
        job: JobView::of(&run),
        chain,
    }))
}

/// Queue the entry again from its run's last checkpoint.
#[utoipa::path(post, path = "/v1/dlq/{run_id}/replay", tag = "failures",
    params(("run_id" = String, Path, description = "The failed run"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the call safe to repeat (it is idempotent per entry anyway)")),
    responses(
        (status = 202, description = "A replay run is queued", body = DlqReplay,
            headers(("location" = String, description = "The job's URL"))),
        (status = 200, description = "The entry was replayed before: that run (`replayed: true`)", body = DlqReplay),
        (status = 404, description = "`not_found`: no such run", body = crate::error::ErrorEnvelope),
        (status = 409, description = "`not_dead_lettered`, `graph_version_missing`, `idempotency_in_flight`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn replay(
    State(app): State<AppState>,
    uri: OriginalUri,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let run = read_run(&app, &id).await?;
    let key = run.run_id.to_string();
    let now = Timestamp::now();
    let candidate = IdempotencyRecord {
        scope: DLQ_SCOPE.into(),
        key: key.clone(),
        request_hash: "replay".into(),
        created_at: now,
        expires_at: now.plus(DLQ_LINK_TTL),
        locked_until: now.plus(Duration::from_secs(60)),
        response: None,
    };
    match app.store.reserve_idempotency(&candidate, now).await? {
        Reservation::Replay(stored) => {
            let new = serde_json::from_str::<Value>(&stored.body)
                .ok()
                .and_then(|v| v["run_id"].as_str()?.parse::<RunId>().ok());
            let Some(new) = new else {
                return Err(ApiError::internal(&format!(
                    "the DLQ replay record of {key} is unreadable"
                )));
            };
            let replayed = app.store.run(new).await?.ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    format!("run {new}, the replay of {key}, no longer exists"),
                )
            })?;
            let mut resp = Json(DlqReplay {
                replayed: true,
                job: JobView::of(&replayed),
            })
            .into_response();
            resp.extensions_mut().insert(AuditDetails(
                json!({ "replay_run_id": new, "already": true }),
            ));
            Ok(resp)
        }
        Reservation::InFlight | Reservation::Mismatch => Err(ApiError::new(
            ErrorCode::IdempotencyInFlight,
            "a replay of this entry is being queued",
        )
        .retry_after(1)),
        Reservation::Reserved => match queue_replay(&app, &run).await {
            Ok(new) => {
                let body = json!({ "run_id": new.run_id }).to_string();
                if let Err(e) = app
                    .store
                    .complete_idempotency(DLQ_SCOPE, &key, &StoredResponse { status: 202, body })
                    .await
                {
                    tracing::warn!(run_id = %run.run_id, error = %e, "the DLQ replay link was not recorded; a repeat may answer not_dead_lettered");
                }
                tracing::info!(run_id = %run.run_id, replay_run_id = %new.run_id, thread_id = %new.thread_id, "dead-letter entry replayed");
                let mut resp = (
                    StatusCode::ACCEPTED,
                    Json(DlqReplay {
                        replayed: false,
                        job: JobView::of(&new),
                    }),
                )
                    .into_response();
                if let Ok(v) = HeaderValue::from_str(&job_location(
                    &jobs_path(uri.0.path()),
                    new.thread_id.as_str(),
                )) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                resp.extensions_mut()
                    .insert(AuditDetails(json!({ "replay_run_id": new.run_id })));
                Ok(resp)
            }
            Err(e) => {
                if let Err(e) = app.store.release_idempotency(DLQ_SCOPE, &key).await {
                    tracing::warn!(error = %e, "DLQ replay reservation not released; it lapses in 60 s");
                }
                Err(e)
            }
        },
    }
}

/// `…/v1/jobs` under the same mount as `…/v1/dlq/…`.
fn jobs_path(request_path: &str) -> String {
    let base = request_path
        .rfind("/v1/dlq")
        .map_or("", |i| &request_path[..i]);
    format!("{base}/v1/jobs")
}

async fn queue_replay(app: &AppState, run: &RunRecord) -> Result<RunRecord, ApiError> {
    if dead_lettered(app, run).await?.is_none() {
        return Err(not_dead_lettered(
            run,
            if run.status.kind() == StatusKind::Failed {
                "its thread has a later run"
            } else {
                "it did not fail"
            },
        ));
    }
    let last = app
        .engine
        .checkpoints(&run.thread_id)
        .await?
        .into_iter()
        .last()
        .ok_or_else(|| not_dead_lettered(run, "its thread has no checkpoint"))?;
    let metadata = run.metadata_map();
    Ok(app
        .engine
        .enqueue_replay(
            &run.thread_id,
            last.id,
            EnqueueOptions {
                priority: run.priority,
                metadata: (!metadata.is_empty()).then_some(metadata),
                run: RunOptions::default(),
                run_id: None,
            },
        )
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_ids_parse() {
        let run = RunId::generate();
        let t = TaskRef::parse(&format!("{run}.3.1")).unwrap();
        assert_eq!(
            (t.run_id, t.superstep, t.task, t.attempt),
            (run, 3, 1, None)
        );
        assert_eq!(t.task_id(), format!("{run}.3.1"));
        let t = TaskRef::parse(&format!("{run}.0.0.2")).unwrap();
        assert_eq!(t.attempt, Some(2));
        for bad in [
            "x.1.1".to_owned(),
            format!("{run}.1"),
            format!("{run}.1.1.1.1"),
            format!("{run}.a.1"),
            format!("{run}.1.-1"),
            String::new(),
        ] {
            assert!(TaskRef::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replay_location_keeps_the_mount() {
        assert_eq!(jobs_path("/v1/dlq/run_x/replay"), "/v1/jobs");
        assert_eq!(jobs_path("/api/v1/dlq/run_x/replay"), "/api/v1/jobs");
    }
}
