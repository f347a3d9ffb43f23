//! `/v1/jobs`: runs keyed by their thread. Handlers record intent through the engine and
//! return; the worker pool executes.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{OriginalUri, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use oris_core::event::{Durability, Payload};
use oris_core::id::{RunId, Seq, ThreadId, Timestamp};
use oris_core::status::{RunStatus, StatusKind};
use oris_core::store::{RunFilter, RunRecord};
use oris_runtime::{Enqueue, EnqueueOptions, RunOptions};
use serde_json::json;

use super::query::{self, MAX_LIMIT, Params, bad};
use crate::dispatch;
use crate::error::{ApiError, ErrorCode, Json, Path, Query};
use crate::guard::{AuditDetails, AuditTarget, job_location};
use crate::hub::RunChange;
use crate::state::AppState;
use crate::time::parse_duration;
use crate::wire::{
    CancelJob, CancelJobs, CancelledJobs, CheckpointList, CheckpointView, CreateJob, DurationInput,
    EventView, ForkJob, JobDetail, JobList, JobStatus, JobView, ReplayJob, ResumeJob, SendEvent,
    SentEvent, SkippedJob, StateView, Timeline, UpdateState, WaitResult,
};

/// Longest `wait` timeout.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// `wait` timeout when none is given.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// 202 with the job and its Location.
fn accepted(uri: &OriginalUri, run: &RunRecord) -> Response {
    let mut resp = (StatusCode::ACCEPTED, Json(JobView::of(run))).into_response();
    if let Ok(v) = HeaderValue::from_str(&job_location(uri.0.path(), run.thread_id.as_str())) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.extensions_mut()
        .insert(AuditTarget(run.thread_id.to_string()));
    resp
}

fn options(
    priority: i32,
    metadata: Option<BTreeMap<String, String>>,
    run: RunOptions,
) -> EnqueueOptions {
    EnqueueOptions {
        priority,
        metadata: metadata.filter(|m| !m.is_empty()),
        run,
        run_id: None,
    }
}

fn enqueued(run: &RunRecord) {
    tracing::Span::current().record("thread_id", run.thread_id.as_str());
    tracing::info!(thread_id = %run.thread_id, run_id = %run.run_id, graph = %run.graph, graph_version = %run.graph_version, "run enqueued");
}

/// Create a job: a queued run of a graph on a thread.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body = CreateJob,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the call safe to repeat (see the idempotency contract)")),
    responses(
        (status = 202, description = "The run is queued; a worker executes it", body = JobView,
            headers(("location" = String, description = "The job's URL"))),
        (status = 400, description = "`invalid_input`: bad JSON, thread id, input not matching the state", body = crate::error::ErrorEnvelope),
        (status = 404, description = "`graph_not_found`", body = crate::error::ErrorEnvelope),
        (status = 409, description = "`run_active`, `graph_mismatch`, `idempotency_conflict`, `idempotency_in_flight`", body = crate::error::ErrorEnvelope),
        (status = 429, description = "`queue_full` (see `Retry-After`)", body = crate::error::ErrorEnvelope),
    ))]
pub(crate) async fn create(
    State(app): State<AppState>,
    uri: OriginalUri,
    Json(body): Json<CreateJob>,
) -> Result<Response, ApiError> {
    let thread_id = query::thread(&body.thread_id)?;
    tracing::Span::current().record("thread_id", thread_id.as_str());
    let enqueue_behind = match body.multitask_strategy.as_deref() {
        None | Some("reject") => false,
        Some("enqueue") => true,
        Some(s) => {
            return Err(ApiError::invalid(format!(
                "multitask_strategy `{s}` is not supported (`reject` or `enqueue`)"
            ))
            .details(json!({ "field": "multitask_strategy" })));
        }
    };
    if let Some(k) = &body.idempotency_key {
        crate::idempotency::validate_key(k)?;
    }
    let durability = body
        .durability
        .as_deref()
        .map(str::parse::<Durability>)
        .transpose()
        .map_err(|e| ApiError::invalid(e).details(json!({ "field": "durability" })))?;
    let timeout = body
        .timeout
        .map(|t| {
            match t {
                DurationInput::Seconds(s) => Some(Duration::from_secs(s)),
                DurationInput::Text(s) => parse_duration(&s),
            }
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                ApiError::invalid("timeout must be a positive duration (`30s`, `5m`, or seconds)")
                    .details(json!({ "field": "timeout" }))
            })
        })
        .transpose()?;
    if body.metadata.as_ref().is_some_and(|m| m.len() > 64) {
        return Err(ApiError::invalid("metadata holds at most 64 labels")
            .details(json!({ "field": "metadata" })));
    }
    let request = Enqueue {
        graph: body.graph,
        version: body.version,
        thread_id: thread_id.clone(),
        input: body.input,
        options: options(
            body.priority,
            body.metadata,
            RunOptions {
                durability,
                timeout,
                superstep_limit: None,
                interrupt_before: body.interrupt_before,
                interrupt_after: body.interrupt_after,
            },
        ),
    };
    // Pending runs make a thread busy as an unfinished run does: `enqueue` goes behind
    // them. (`reject` learns of them from the refusal: a thread with pending runs has an
    // unfinished run, but for the moment between a run's end and the start of the next.)
    if enqueue_behind && !app.store.pending_runs(&thread_id).await?.is_empty() {
        return create_pending(&app, &uri, request, durability_text(durability), timeout).await;
    }
    if let Some(max) = app.config.max_queued {
        let queued = dispatch::queued(&app, max).await?;
        if queued >= max {
            return Err(ApiError::new(
                ErrorCode::QueueFull,
                format!("{queued} runs are queued (the limit is {max}); retry later"),
            )
            .details(json!({ "queued": queued, "max_queued": max }))
            .retry_after(1));
        }
    }
    let run = match app.engine.enqueue(request.clone()).await {
        Ok(run) => run,
        // The thread has an unfinished run: behind it, as asked.
        Err(oris_runtime::Error::RunActive { .. }) if enqueue_behind => {
            return create_pending(&app, &uri, request, durability_text(durability), timeout).await;
        }
        // Refused: say how many pending runs wait too.
        Err(oris_runtime::Error::RunActive { thread_id, run_id }) => {
            let pending = app.store.pending_runs(&thread_id).await?.len();
            let e = oris_runtime::Error::RunActive {
                thread_id: thread_id.clone(),
                run_id,
            };
            if pending == 0 {
                return Err(e.into());
            }
            return Err(ApiError::new(
                ErrorCode::RunActive,
                format!("{e}; {pending} pending run(s) wait behind it"),
            )
            .details(json!({
                "thread_id": thread_id.as_str(),
                "run_id": run_id.to_string(),
                "pending": pending,
            })));
        }
        Err(e) => return Err(e.into()),
    };
    dispatch::queued_one_more(&app);
    enqueued(&run);
    Ok(accepted(&uri, &run))
}

fn durability_text(d: Option<Durability>) -> Option<String> {
    d.map(|d| match d {
        Durability::Sync => "sync".to_owned(),
        Durability::Batched => "batched".to_owned(),
        Durability::Exit => "exit".to_owned(),
    })
}

/// Validates `request` now, as a create would (bad input: 400, nothing stored), and
/// stores it as a pending run of its thread: 202 with `{thread_id, run_id, status:
/// "pending", position, …}`.
async fn create_pending(
    app: &AppState,
    uri: &OriginalUri,
    request: Enqueue,
    durability: Option<String>,
    timeout: Option<Duration>,
) -> Result<Response, ApiError> {
    let graph = app.engine.check_enqueue(&request)?;
    if let Some(t) = app.store.thread(&request.thread_id).await?
        && t.graph != graph.name
    {
        return Err(oris_runtime::Error::GraphMismatch {
            thread_id: request.thread_id.clone(),
            existing: t.graph,
            requested: graph.name,
        }
        .into());
    }
    let stored = crate::pending::PendingRequest {
        input: request.input,
        priority: request.options.priority,
        metadata: request.options.metadata,
        durability,
        timeout_ms: timeout.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        interrupt_before: request.options.run.interrupt_before,
        interrupt_after: request.options.run.interrupt_after,
    };
    let p =
        crate::pending::push(app, &request.thread_id, graph.name, graph.version, &stored).await?;
    let mut resp = (
        StatusCode::ACCEPTED,
        Json(crate::pending::PendingView::of(&p)),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&job_location(uri.0.path(), p.thread_id.as_str())) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.extensions_mut()
        .insert(AuditTarget(p.thread_id.to_string()));
    resp.extensions_mut().insert(AuditDetails(json!({
        "pending_run_id": p.run_id.to_string(),
        "position": p.position,
    })));
    Ok(resp)
}

/// List jobs (runs), oldest first, with filters and a cursor.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    params(
        ("status" = Option<String>, Query, description = "Comma-separated statuses (`queued,running,…`)"),
        ("graph" = Option<String>, Query, description = "Graph name"),
        ("thread_id" = Option<String>, Query, description = "Only runs of this thread"),
        ("created_after" = Option<String>, Query, description = "RFC 3339; created at or after"),
        ("created_before" = Option<String>, Query, description = "RFC 3339; created before"),
        ("updated_after" = Option<String>, Query, description = "RFC 3339; status changed at or after"),
        ("updated_before" = Option<String>, Query, description = "RFC 3339; status changed before"),
        ("metadata.{key}" = Option<String>, Query, description = "Label equals value; repeat for several"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<usize>, Query, description = "Page size, 1–500, default 50"),
    ),
    responses((status = 200, description = "A page of jobs", body = JobList)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<JobList>, ApiError> {
    let p = Params::new(
        pairs,
        &[
            "status",
            "graph",
            "thread_id",
            "created_after",
            "created_before",
            "updated_after",
            "updated_before",
            "metadata.",
            "cursor",
            "limit",
        ],
    )?;
    let limit = p.limit(MAX_LIMIT)?;
    let statuses = match p.get("status") {
        None | Some("") => Vec::new(),
        Some(s) => s
            .split(',')
            .map(|k| {
                StatusKind::parse(k.trim()).ok_or_else(|| {
                    bad("status", format!("unknown status `{k}` (queued, running, interrupted, waiting, completed, failed, cancelled)"))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let filter = RunFilter {
        thread_id: p.get("thread_id").map(query::thread).transpose()?,
        graph: p.get("graph").map(str::to_owned),
        statuses,
        after: p.parsed::<RunId>("cursor")?,
        limit: limit + 1,
        created_from: p.time("created_after")?,
        created_to: p.time("created_before")?,
        updated_from: p.time("updated_after")?,
        updated_to: p.time("updated_before")?,
        metadata: p
            .prefixed("metadata.")
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    };
    let mut runs = app.store.runs(&filter).await?;
    let more = runs.len() > limit;
    runs.truncate(limit);
    Ok(Json(JobList {
        next_cursor: more
            .then(|| runs.last().map(|r| r.run_id.to_string()))
            .flatten(),
        jobs: runs.iter().map(JobView::of).collect(),
    }))
}

/// The job view of a thread's latest run with its state (state omitted when this server
/// lacks the run's graph version).
pub(crate) async fn detail(app: &AppState, thread_id: &ThreadId) -> Result<JobDetail, ApiError> {
    let run = app.engine.latest_run(thread_id).await?;
    detail_of(app, run).await
}

/// [`detail`] of the thread's latest run as just read: only the log is read (folded once).
async fn detail_of(app: &AppState, run: RunRecord) -> Result<JobDetail, ApiError> {
    let job = JobView::of(&run);
    let terminal = run.status.is_terminal();
    let waiting_for = waiting_for(app, &run).await;
    let (values, checkpoint_id, next) = if app.has_graph(&run.graph, &run.graph_version) {
        let s = app.engine.state_json_of(run).await?;
        (
            Some(s.values),
            s.checkpoint.map(|c| c.to_string()),
            if terminal { Vec::new() } else { s.next },
        )
    } else {
        (None, None, Vec::new())
    };
    Ok(JobDetail {
        job,
        values,
        checkpoint_id,
        next,
        waiting_for,
        pending: None,
    })
}

/// Why a claimable run has no executor: `Some` when it is ready and unleased and neither
/// the embedded pool nor any active remote worker has its graph version.
async fn waiting_for(app: &AppState, run: &RunRecord) -> Option<String> {
    let ready = !run.status.is_terminal()
        && run.lease.is_none()
        && run.ready_at.is_some_and(|t| t <= Timestamp::now());
    if !ready || (app.config.workers > 0 && app.has_graph(&run.graph, &run.graph_version)) {
        return None;
    }
    match super::workers::served_remotely(app, &run.graph, &run.graph_version).await {
        Ok(true) => None,
        Ok(false) => Some(format!(
            "no worker has graph `{}` version `{}`",
            run.graph, run.graph_version
        )),
        Err(e) => {
            tracing::debug!(error = %e, "workers not read for waiting_for");
            None
        }
    }
}

/// A job: the thread's latest run, its state and pending interrupts.
#[utoipa::path(get, path = "/v1/jobs/{thread_id}", tag = "jobs",
    params(("thread_id" = String, Path, description = "The thread")),
    responses((status = 200, description = "The job", body = JobDetail),
        (status = 404, description = "`thread_not_found`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Path(thread_id): Path<String>,
) -> Result<Json<JobDetail>, ApiError> {
    let t = query::thread(&thread_id)?;
    let mut job = detail(&app, &t).await?;
    job.pending = Some(
        app.store
            .pending_runs(&t)
            .await?
            .iter()
            .map(crate::pending::PendingView::of)
            .collect(),
    );
    Ok(Json(job))
}

/// The thread's checkpoints (superstep boundaries), oldest first.
#[utoipa::path(get, path = "/v1/jobs/{thread_id}/history", tag = "jobs",
    params(("thread_id" = String, Path, description = "The thread")),
    responses((status = 200, description = "Checkpoints", body = CheckpointList),
        (status = 404, description = "`thread_not_found`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn history(
    State(app): State<AppState>,
    Path(thread_id): Path<String>,
) -> Result<Json<CheckpointList>, ApiError> {
    let t = query::thread(&thread_id)?;
    let cps = app.engine.checkpoints(&t).await?;
    Ok(Json(CheckpointList {
        checkpoints: cps
            .iter()
            .map(|c| CheckpointView {
                checkpoint_id: c.id.to_string(),
                run_id: c.run_id.to_string(),
                superstep: c.superstep,
                next: c.next.iter().map(|t| t.node().to_owned()).collect(),
                at: crate::time::rfc3339(c.at),
            })
            .collect(),
    }))
}

/// The thread's state at a checkpoint.
#[utoipa::path(get, path = "/v1/jobs/{thread_id}/checkpoints/{checkpoint_id}", tag = "jobs",
    params(("thread_id" = String, Path, description = "The thread"),
        ("checkpoint_id" = String, Path, description = "`ckpt_<seq>`")),
    responses((status = 200, description = "The state there", body = StateView),
        (status = 404, description = "`thread_not_found`, `checkpoint_not_found`", body = crate::error::ErrorEnvelope),
        (status = 409, description = "`graph_version_missing`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn checkpoint(
    State(app): State<AppState>,
    Path((thread_id, checkpoint_id)): Path<(String, String)>,
) -> Result<Json<StateView>, ApiError> {
    let t = query::thread(&thread_id)?;
    let c = query::checkpoint(&checkpoint_id)?;
    Ok(Json(state_view(app.engine.state_at_json(&t, c).await?)))
}

fn state_view(s: oris_runtime::StateView) -> StateView {
    StateView {
        thread_id: s.thread_id.to_string(),
        values: s.values,
        checkpoint_id: s.checkpoint.map(|c| c.to_string()),
        next: s.next,
    }
}

/// The thread's events, in order, a page at a time.
#[utoipa::path(get, path = "/v1/jobs/{thread_id}/timeline", tag = "jobs",
    params(("thread_id" = String, Path, description = "The thread"),
        ("after" = Option<u64>, Query, description = "Events after this seq (default 0)"),
        ("limit" = Option<usize>, Query, description = "Page size, 1–1000, default 50")),
    responses((status = 200, description = "A page of events", body = Timeline),
        (status = 404, description = "`thread_not_found`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn timeline(
    State(app): State<AppState>,
    Path(thread_id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<Timeline>, ApiError> {
    let t = query::thread(&thread_id)?;
    let p = Params::new(pairs, &["after", "limit"])?;
    let limit = p.limit(1000)?;
    let after = p.parsed::<u64>("after")?.unwrap_or(0);
    if app.store.thread(&t).await?.is_none() {
        return Err(oris_runtime::Error::ThreadNotFound(t).into());
    }
    let mut events = app.engine.timeline(&t, Seq(after), limit + 1).await?;
    let more = events.len() > limit;
    events.truncate(limit);
    Ok(Json(Timeline {
        next_after: more.then(|| events.last().map(|e| e.seq.0)).flatten(),
        events: events.iter().map(EventView::of).collect(),
    }))
}

/// Whether a run has settled: it will not change without outside input or time. An
/// interrupted run whose interrupts are answered (the store made it ready) or a waiting run
/// that is due is about to continue, so it has not settled; neither has one a worker holds.
fn settled(r: &RunRecord, now: Timestamp) -> bool {
    match r.status.kind() {
        StatusKind::Queued | StatusKind::Running => false,
        StatusKind::Interrupted => r.lease.is_none() && r.ready_at.is_none(),
        StatusKind::Waiting => r.lease.is_none() && r.ready_at.is_none_or(|t| t > now),
        _ => true,
    }
}

/// First re-read of a waited-on run when this process committed nothing to its thread for
/// that long (a change made elsewhere); the interval doubles up to [`POLL_MAX`].
const POLL_MIN: Duration = Duration::from_millis(10);
/// Longest interval between two re-reads of a waited-on run.
const POLL_MAX: Duration = Duration::from_millis(500);

/// Waits until the thread's latest run settles: `Ok(Some(run))` with the run as just read
/// when it did, `Ok(None)` at the deadline or at shutdown.
///
/// Reads the thread's latest run once, then follows this process's commits to the thread:
/// events alone and a run created, queued, running or resumed do not settle it, so they
/// cost nothing; a terminal, interrupted or waiting status set on the run is checked
/// against the store (one read: answers or an event may already make it ready, and the
/// answer needs the stored record). When no commit of this process touched the thread for
/// [`POLL_MIN`] — doubling up to [`POLL_MAX`] while it stays quiet — the run is re-read
/// for changes made elsewhere (another process, a remote worker, an expired lease).
async fn wait_settled(
    app: &AppState,
    t: &ThreadId,
    timeout: Duration,
) -> Result<Option<RunRecord>, ApiError> {
    let mut live = app.hub.watch_thread(t);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut poll = POLL_MIN;
    let mut run = app.engine.latest_run(t).await?;
    loop {
        if settled(&run, Timestamp::now()) {
            return Ok(Some(run));
        }
        // The run to read next: the followed one (a run created on the thread here
        // becomes its latest).
        let mut current = run.run_id;
        let tick = tokio::time::sleep(poll);
        tokio::pin!(tick);
        loop {
            tokio::select! {
                m = live.next() => match m {
                    Some(change) => {
                        // This process moves the run along: no need to look elsewhere yet.
                        tick.as_mut().reset(tokio::time::Instant::now() + poll);
                        match change {
                            Some(RunChange::Created(id)) => current = id,
                            Some(RunChange::Status(id, kind))
                                if id == current
                                    && !matches!(kind, StatusKind::Queued | StatusKind::Running) =>
                            {
                                break;
                            }
                            _ => {}
                        }
                    }
                    None => return Ok(None),
                },
                _ = &mut tick => {
                    poll = (poll * 2).min(POLL_MAX);
                    break;
                }
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                _ = app.shutdown.cancelled() => return Ok(None),
            }
        }
        run = match app.store.run(current).await? {
            Some(r) => r,
            // Deleted meanwhile: what the thread says now (not found, most likely).
            None => app.engine.latest_run(t).await?,
        };
    }
}

/// Long-poll until the thread's latest run settles (terminal, interrupted or waiting).
#[utoipa::path(get, path = "/v1/jobs/{thread_id}/wait", tag = "jobs",
    params(("thread_id" = String, Path, description = "The thread"),
        ("timeout" = Option<String>, Query, description = "How long to wait: `30s` (default), at most `60s`")),
    responses((status = 200, description = "The job once settled, or at the timeout (`timed_out: true`)", body = WaitResult),
        (status = 404, description = "`thread_not_found`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn wait(
    State(app): State<AppState>,
    Path(thread_id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<WaitResult>, ApiError> {
    let t = query::thread(&thread_id)?;
    let p = Params::new(pairs, &["timeout"])?;
    let timeout = match p.get("timeout") {
        None => DEFAULT_WAIT,
        Some(s) => parse_duration(s)
            .filter(|d| *d <= MAX_WAIT)
            .ok_or_else(|| {
                bad(
                    "timeout",
                    "must be a duration up to 60s (`30s`, `500ms`)".into(),
                )
            })?,
    };
    let (timed_out, job) = match wait_settled(&app, &t, timeout).await? {
        Some(run) => (false, detail_of(&app, run).await?),
        None => (true, detail(&app, &t).await?),
    };
    Ok(Json(WaitResult { timed_out, job }))
}

/// Resume the thread's interrupted run with a value.
#[utoipa::path(post, path = "/v1/jobs/{thread_id}/resume", tag = "jobs",
    request_body = ResumeJob,
    params(("thread_id" = String, Path, description = "The thread"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the call safe to repeat")),
    responses((status = 202, description = "The value is recorded; a worker continues the run", body = JobView),
        (status = 400, description = "`invalid_input` (several interrupts pending and none named)", body = crate::error::ErrorEnvelope),
        (status = 404, description = "`thread_not_found`, `interrupt_not_found`", body = crate::error::ErrorEnvelope),
        (status = 409, description = "`interrupt_not_pending`, `resume_conflict`, `graph_version_missing`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn resume(
    State(app): State<AppState>,
    Path(thread_id): Path<String>,
    Json(body): Json<ResumeJob>,
) -> Result<Response, ApiError> {
    let t = query::thread(&thread_id)?;
    let run = app.engine.latest_run(&t).await?;
    let id = match body.interrupt_id {
        Some(s) => {
            let id = query::interrupt(&s)?;
            let rec = app.store.interrupt(id).await?;
            if rec.is_none_or(|r| r.thread_id != t) {
                return Err(ApiError::new(
                    ErrorCode::InterruptNotFound,
                    format!("thread `{t}` has no interrupt {id}"),
                )
                .details(json!({ "interrupt_id": id, "thread_id": t })));
            }
            id
        }
        None => {
            let RunStatus::Interrupted { interrupts } = &run.status else {
                return Err(ApiError::new(
                    ErrorCode::InterruptNotPending,
                    format!(
                        "the latest run of thread `{t}` is {}, not interrupted",
                        run.status.kind().as_str()
                    ),
                )
                .details(json!({ "thread_id": t, "status": run.status.kind().as_str() })));
            };
            let open: Vec<_> = {
                let mut open = Vec::new();
                for i in interrupts {
                    let answered = app
                        .store
                        .interrupt(i.interrupt_id)
                        .await?
                        .is_some_and(|r| r.answer.is_some());
                    if !answered {
                        open.push(i.interrupt_id);
                    }
                }
                open
            };
            match open.as_slice() {
                [one] => *one,
                [] => {
                    return Err(ApiError::new(
                        ErrorCode::InterruptNotPending,
                        "every interrupt of the run is already answered",
                    ));
                }
                many => {
                    return Err(ApiError::invalid(
                        "the run waits on several interrupts: name one with `interrupt_id`",
                    )
                    .details(json!({ "interrupts": many })));
                }
            }
        }
    };
    answer(&app, id, body.value).await?;
    let run = app.engine.latest_run(&t).await?;
    Ok((StatusCode::ACCEPTED, Json(JobView::of(&run))).into_response())
}

/// Records a resume value after checking this server can continue the run.
pub(crate) async fn answer(
    app: &AppState,
    id: oris_core::id::InterruptId,
    value: serde_json::Value,
) -> Result<oris_core::store::InterruptRecord, ApiError> {
    let rec = app
        .store
        .interrupt(id)
        .await?
        .ok_or(oris_runtime::Error::InterruptNotFound(id))?;
    tracing::Span::current().record("thread_id", rec.thread_id.as_str());
    if let Some(run) = app.store.run(rec.run_id).await?
        && !run.status.is_terminal()
        && !app.has_graph(&run.graph, &run.graph_version)
    {
        return Err(oris_runtime::Error::GraphNotRegistered {
            thread_id: run.thread_id,
            run_id: run.run_id,
            graph: run.graph,
            version: run.graph_version,
        }
        .into());
    }
    let payload = Payload::encode(&value).map_err(|e| ApiError::invalid(e.to_string()))?;
    // The engine tells the pool when the answer makes the run claimable.
    let (_, rec) = app.engine.answer(id, payload).await?;
    Ok(rec)
}

/// Queue a replay of the thread from one of its checkpoints.
#[utoipa::path(post, path = "/v1/jobs/{thread_id}/replay", tag = "jobs",
    request_body = ReplayJob,
    params(("thread_id" = String, Path, description = "The thread"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the call safe to repeat")),
    responses((status = 202, description = "The replay run is queued", body = JobView,
            headers(("location" = String, description = "The job's URL"))),
        (status = 404, description = "`thread_not_found`, `checkpoint_not_found`", body = crate::error::ErrorEnvelope),
        (status = 409, description = "`run_active`, `graph_version_missing`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn replay(
    State(app): State<AppState>,
    uri: OriginalUri,
    Path(thread_id): Path<String>,
    Json(body): Json<ReplayJob>,
) -> Result<Response, ApiError> {
    let t = query::thread(&thread_id)?;
    let c = query::checkpoint(&body.checkpoint_id)?;
    let run = app
        .engine
        .enqueue_replay(
            &t,
            c,
            options(body.priority, body.metadata, RunOptions::default()),
        )
        .await?;
    enqueued(&run);
    Ok(accepted(&uri, &run))
}

/// Queue a run on a new thread from a checkpoint of this one.
#[utoipa::path(post, path = "/v1/jobs/{thread_id}/fork", tag = "jobs",
    request_body = ForkJob,
    params(("thread_id" = String, Path, description = "The source thread"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the call safe to repeat")),
    responses((status = 202, description = "The new thread's run is queued", body = JobView,
            headers(("location" = String, description = "The new job's URL"))),
        (status = 404, description = "`thread_not_found`, `checkpoint_not_found`", body = crate::error::ErrorEnvelope),
        (status = 409, description = "`thread_exists`, `graph_version_missing`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn fork(
    State(app): State<AppState>,
    uri: OriginalUri,
    Path(thread_id): Path<String>,
    Json(body): Json<ForkJob>,
) -> Result<Response, ApiError> {
    let t = query::thread(&thread_id)?;
    let c = query::checkpoint(&body.checkpoint_id)?;
    let new = query::thread(&body.new_thread_id)?;
    let run = app
        .engine
        .enqueue_fork(
            &t,
            c,
            new,
            options(body.priority, body.metadata, RunOptions::default()),
        )
        .await?;
    enqueued(&run);
    Ok(accepted(&uri, &run))
}

/// Cancel the thread's unfinished run.
#[utoipa::path(post, path = "/v1/jobs/{thread_id}/cancel", tag = "jobs",
    request_body(content = Option<CancelJob>, description = "Optional"),
    params(("thread_id" = String, Path, description = "The thread"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the call safe to repeat")),
    responses((status = 200, description = "The run, cancelled, and the pending runs dropped", body = crate::pending::CancelledJob),
        (status = 404, description = "`thread_not_found`", body = crate::error::ErrorEnvelope),
        (status = 409, description = "`run_not_active` (and, with `include_pending`, no pending run either)", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn cancel(
    State(app): State<AppState>,
    Path(thread_id): Path<String>,
    body: OptionalJson<CancelJob>,
) -> Result<Response, ApiError> {
    let t = query::thread(&thread_id)?;
    let reason = body.0.reason.unwrap_or_else(|| "cancelled via API".into());
    // Pending runs go first: once the run is cancelled, the oldest would start.
    let mut dropped = Vec::new();
    if body.0.include_pending {
        for p in app.store.pending_runs(&t).await? {
            if app.store.remove_pending(p.run_id).await? {
                dropped.push(p.run_id.to_string());
            }
        }
    }
    let run = match app.engine.cancel(&t, reason).await {
        Ok(run) => {
            tracing::info!(thread_id = %t, run_id = %run.run_id, dropped_pending = dropped.len(), "run cancelled");
            run
        }
        // Only pending runs were there to drop: answer with the thread's latest run.
        Err(oris_runtime::Error::NoActiveRun(_)) if !dropped.is_empty() => {
            tracing::info!(thread_id = %t, dropped_pending = dropped.len(), "pending runs dropped");
            app.engine.latest_run(&t).await?
        }
        Err(e) => return Err(e.into()),
    };
    let mut resp = Json(crate::pending::CancelledJob {
        job: JobView::of(&run),
        dropped_pending: dropped.clone(),
    })
    .into_response();
    if body.0.include_pending {
        resp.extensions_mut().insert(AuditDetails(json!({
            "include_pending": true,
            "dropped_pending": dropped,
        })));
    }
    Ok(resp)
}

/// Default and largest number of runs one bulk cancel acts on.
const BULK_DEFAULT: usize = 100;
const BULK_MAX: usize = 1000;

fn status_kind(s: JobStatus) -> StatusKind {
    match s {
        JobStatus::Queued => StatusKind::Queued,
        JobStatus::Running => StatusKind::Running,
        JobStatus::Interrupted => StatusKind::Interrupted,
        JobStatus::Waiting => StatusKind::Waiting,
        JobStatus::Completed => StatusKind::Completed,
        JobStatus::Failed => StatusKind::Failed,
        JobStatus::Cancelled => StatusKind::Cancelled,
    }
}

/// Cancel every unfinished run matching a filter.
#[utoipa::path(post, path = "/v1/jobs/cancel", tag = "jobs",
    request_body = CancelJobs,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the call safe to repeat")),
    responses((status = 200, description = "What was cancelled and what was skipped", body = CancelledJobs),
        (status = 400, description = "`invalid_input` (no criterion, bad time, bad limit)", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn cancel_bulk(
    State(app): State<AppState>,
    Json(body): Json<CancelJobs>,
) -> Result<Response, ApiError> {
    let f = body.filter;
    if f.graph.is_none()
        && f.metadata.is_empty()
        && f.created_after.is_none()
        && f.created_before.is_none()
        && f.updated_after.is_none()
        && f.updated_before.is_none()
    {
        return Err(ApiError::invalid(
            "the filter needs at least one criterion besides status (graph, metadata or a time range)",
        )
        .details(json!({ "field": "filter" })));
    }
    let limit = body.limit.unwrap_or(BULK_DEFAULT);
    if !(1..=BULK_MAX).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be 1–{BULK_MAX}"))
            .details(json!({ "field": "limit" })));
    }
    let time = |field: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| {
                crate::time::parse_rfc3339(s).ok_or_else(|| {
                    ApiError::invalid(format!("{field} must be an RFC 3339 time"))
                        .details(json!({ "field": format!("filter.{field}") }))
                })
            })
            .transpose()
    };
    let mut filter = RunFilter {
        graph: f.graph.clone(),
        statuses: f.status.iter().map(|s| status_kind(*s)).collect(),
        limit,
        created_from: time("created_after", &f.created_after)?,
        created_to: time("created_before", &f.created_before)?,
        updated_from: time("updated_after", &f.updated_after)?,
        updated_to: time("updated_before", &f.updated_before)?,
        metadata: f.metadata.into_iter().collect(),
        ..Default::default()
    };
    if filter.statuses.is_empty() {
        filter.statuses = RunFilter::unfinished().statuses;
    }
    let reason = body
        .reason
        .unwrap_or_else(|| "cancelled via API (bulk)".into());
    let runs = app.store.runs(&filter).await?;
    let mut cancelled = Vec::new();
    let mut skipped = Vec::new();
    for run in runs {
        let thread = run.thread_id.to_string();
        if run.status.is_terminal() {
            skipped.push(SkippedJob {
                thread_id: thread,
                code: ErrorCode::RunNotActive.as_str().into(),
            });
            continue;
        }
        match app.engine.cancel(&run.thread_id, reason.clone()).await {
            Ok(r) => {
                tracing::info!(thread_id = %r.thread_id, run_id = %r.run_id, "run cancelled (bulk)");
                cancelled.push(thread);
            }
            Err(e) => skipped.push(SkippedJob {
                thread_id: thread,
                code: ApiError::from(e).code().as_str().into(),
            }),
        }
    }
    let details =
        json!({ "cancelled": cancelled.len(), "skipped": skipped.len(), "reason": reason });
    let mut resp = Json(CancelledJobs { cancelled, skipped }).into_response();
    resp.extensions_mut().insert(AuditTarget("jobs".into()));
    resp.extensions_mut().insert(AuditDetails(details));
    Ok(resp)
}

/// Edit the thread's state as if a node had returned the update.
#[utoipa::path(post, path = "/v1/jobs/{thread_id}/state", tag = "jobs",
    request_body = UpdateState,
    params(("thread_id" = String, Path, description = "The thread"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the call safe to repeat")),
    responses((status = 200, description = "The state after the edit", body = StateView),
        (status = 400, description = "`invalid_input` (update not matching the state)", body = crate::error::ErrorEnvelope),
        (status = 404, description = "`thread_not_found`", body = crate::error::ErrorEnvelope),
        (status = 409, description = "`run_active`, `graph_version_missing`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn update_state(
    State(app): State<AppState>,
    Path(thread_id): Path<String>,
    Json(body): Json<UpdateState>,
) -> Result<Json<StateView>, ApiError> {
    let t = query::thread(&thread_id)?;
    let s = app
        .engine
        .update_state_json(&t, body.as_node, body.values)
        .await?;
    Ok(Json(state_view(s)))
}

/// Send an external event to the thread (what `ctx.wait_for_event` waits for).
#[utoipa::path(post, path = "/v1/jobs/{thread_id}/events", tag = "jobs",
    request_body = SendEvent,
    params(("thread_id" = String, Path, description = "The thread"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the call safe to repeat")),
    responses((status = 202, description = "Buffered; a waiting run continues", body = SentEvent),
        (status = 404, description = "`thread_not_found`", body = crate::error::ErrorEnvelope),
        (status = 409, description = "`idempotency_conflict` (the key was used for another event)", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn send_event(
    State(app): State<AppState>,
    Path(thread_id): Path<String>,
    Json(body): Json<SendEvent>,
) -> Result<Response, ApiError> {
    let t = query::thread(&thread_id)?;
    if body.name.is_empty() || body.name.len() > 200 {
        return Err(
            ApiError::invalid("name must be 1–200 characters").details(json!({ "field": "name" }))
        );
    }
    // The store makes a worker's run waiting for the event claimable, and the engine wakes
    // the pool for it.
    let d = app
        .engine
        .send_event(&t, &body.name, &body.payload, body.key)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SentEvent {
            delivery_id: d.delivery_id.to_string(),
            thread_id: d.thread_id.to_string(),
            name: d.name,
            sent_at: crate::time::rfc3339(d.sent_at),
        }),
    )
        .into_response())
}

/// A JSON body that may be absent (empty): then `T::default()`.
#[derive(Debug)]
pub(crate) struct OptionalJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for OptionalJson<T>
where
    T: serde::de::DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let empty = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v == "0")
            || (!req.headers().contains_key(header::CONTENT_TYPE)
                && axum::body::HttpBody::size_hint(req.body()).exact() == Some(0));
        if empty {
            return Ok(OptionalJson(T::default()));
        }
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(OptionalJson(v))
    }
}
