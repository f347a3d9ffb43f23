//! `/v1/workers`: the remote worker protocol (poll, heartbeat, report-step, ack, stop) and
//! the list of registered workers. The messages are `oris_core::protocol`'s.
//!
//! A worker polls for attempts (claims made for it, each with the thread's image), executes
//! them with the ordinary engine over a local copy, reports every commit the engine makes
//! (fenced by the lease; the store refuses a lost lease atomically), renews its leases with
//! heartbeats and ends each attempt with an ack. See `docs/api.md`, "Remote workers".

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use oris_core::event::EventRow;
use oris_core::id::{RunId, Seq, Timestamp};
use oris_core::protocol::{
    Ack, AckOutcome, AckResponse, Attempt, GraphRef, Heartbeat, HeartbeatResponse, LostLease,
    PROTOCOL_VERSION, PollRequest, PollResponse, RenewedLease, Report, ReportReceipt, ThreadImage,
};
use oris_core::status::{RunStatus, StatusKind};
use oris_core::store::{
    self, Commit, Fence, IdempotencyRecord, Reservation, RunFilter, RunRecord, RunWrite,
    StoredResponse, WorkerRecord,
};
use oris_runtime::Observer as _;
use serde_json::json;

use crate::dispatch;
use crate::error::{ApiError, ErrorCode, Json, Path};
use crate::guard::{AuditDetails, AuditTarget};
use crate::state::AppState;
use crate::time::rfc3339;
use crate::wire::{GraphVersionView, HeldLeaseView, WorkerList, WorkerView};

/// Longest time a poll is held open when nothing is ready.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(30);
/// Largest `capacity` (and so `max`) of a poll.
pub const MAX_CAPACITY: u32 = 1024;
/// Most graph versions one worker may register.
const MAX_GRAPHS: usize = 256;
/// Most leases one heartbeat may name.
const MAX_HEARTBEAT_LEASES: usize = 1024;
/// Page size when reading a thread's log for an image.
const EVENT_PAGE: usize = 1000;
/// Most unfinished runs read to list the leases workers hold.
const LEASE_SCAN: usize = 10_000;

/// Checks a worker id: 1–128 characters of `[A-Za-z0-9._:-]`.
pub(crate) fn check_worker_id(id: &str) -> Result<(), ApiError> {
    if oris_core::protocol::is_valid_worker_id(id) {
        Ok(())
    } else {
        Err(
            ApiError::invalid("a worker id is 1–128 characters of [A-Za-z0-9._:-]")
                .details(json!({ "field": "worker_id" })),
        )
    }
}

fn lease_lost(app: &AppState, route: &'static str, fence: &Fence, reason: &str) -> ApiError {
    app.metrics.lease_lost(route);
    ApiError::new(
        ErrorCode::LeaseLost,
        format!(
            "the lease on run {} (epoch {}) is not held: {reason}",
            fence.run_id, fence.epoch
        ),
    )
    .details(json!({ "run_id": fence.run_id, "epoch": fence.epoch, "reason": reason }))
}

fn check_poll(req: &PollRequest) -> Result<(), ApiError> {
    if req.protocol != PROTOCOL_VERSION {
        return Err(ApiError::new(
            ErrorCode::ProtocolMismatch,
            format!(
                "the worker speaks protocol {}, this server {PROTOCOL_VERSION}",
                req.protocol
            ),
        )
        .details(json!({ "server": PROTOCOL_VERSION, "worker": req.protocol })));
    }
    check_worker_id(&req.worker_id)?;
    if req.graphs.is_empty() || req.graphs.len() > MAX_GRAPHS {
        return Err(
            ApiError::invalid(format!("a worker executes 1–{MAX_GRAPHS} graph versions"))
                .details(json!({ "field": "graphs" })),
        );
    }
    if let Some(g) = req
        .graphs
        .iter()
        .find(|g| g.name.is_empty() || g.version.is_empty())
    {
        return Err(
            ApiError::invalid("a graph needs a name and a version").details(json!({
                "field": "graphs", "name": g.name, "version": g.version
            })),
        );
    }
    if !(1..=MAX_CAPACITY).contains(&req.capacity) {
        return Err(
            ApiError::invalid(format!("capacity must be 1–{MAX_CAPACITY}"))
                .details(json!({ "field": "capacity" })),
        );
    }
    if req.max == 0 || req.max > req.capacity {
        return Err(ApiError::invalid("max must be 1–capacity").details(json!({ "field": "max" })));
    }
    Ok(())
}

/// Registers the worker and claims up to `max` runs of its graph versions, waiting up to
/// `wait_ms` (at most 30 s) when nothing is ready.
#[utoipa::path(post, path = "/v1/workers/poll", tag = "workers",
    request_body(content = Object, description = "A `PollRequest`: worker_id, protocol, graphs [{name, version}], capacity, max, wait_ms"),
    responses(
        (status = 200, description = "A `PollResponse`: attempts (possibly none), lease_ttl_ms, heartbeat_ms", body = Object),
        (status = 400, description = "`invalid_input`", body = crate::error::ErrorEnvelope),
        (status = 409, description = "`protocol_mismatch`", body = crate::error::ErrorEnvelope),
    ))]
pub(crate) async fn poll(
    State(app): State<AppState>,
    Json(req): Json<PollRequest>,
) -> Result<Json<PollResponse>, ApiError> {
    check_poll(&req)?;
    let mut graphs: Vec<(String, String)> = Vec::new();
    for GraphRef { name, version } in &req.graphs {
        let pair = (name.clone(), version.clone());
        if !graphs.contains(&pair) {
            graphs.push(pair);
        }
    }
    let now = Timestamp::now();
    app.store
        .register_worker(&WorkerRecord {
            worker_id: req.worker_id.clone(),
            graphs: graphs.clone(),
            capacity: req.capacity,
            registered_at: now,
            last_seen: now,
            stopped_at: None,
        })
        .await?;
    let wait = Duration::from_millis(req.wait_ms).min(MAX_POLL_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first claim: a wake-up from then on asks for another one.
    let mut ready = app.engine.subscribe_ready();
    let mut wakes = app.hub.pool_wakes();
    let mut attempts = Vec::new();
    loop {
        ready.borrow_and_update();
        wakes.borrow_and_update();
        let runs = dispatch::claim(&app, &req.worker_id, &graphs, req.max as usize).await?;
        for run in runs {
            if let Some(a) = attempt(&app, run).await {
                attempts.push(a);
            }
        }
        if !attempts.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            r = ready.changed() => if r.is_err() {
                tokio::time::sleep(app.config.poll_interval).await;
            },
            r = wakes.changed() => if r.is_err() {
                tokio::time::sleep(app.config.poll_interval).await;
            },
            _ = tokio::time::sleep(app.config.poll_interval) => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = app.shutdown.cancelled() => break,
        }
    }
    app.metrics.worker_poll(!attempts.is_empty());
    Ok(Json(PollResponse {
        attempts,
        lease_ttl_ms: millis(app.config.lease_ttl),
        heartbeat_ms: millis(app.config.heartbeat),
    }))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The attempt of a claimed run, or `None` (lease released) when its image cannot be read.
async fn attempt(app: &AppState, run: RunRecord) -> Option<Attempt> {
    let fence = Fence {
        run_id: run.run_id,
        epoch: run.lease_epoch,
    };
    let Some(expires_at) = run.lease.as_ref().map(|l| l.expires_at) else {
        tracing::error!(run_id = %run.run_id, "a claimed run has no lease");
        return None;
    };
    match image(app, &run).await {
        Ok(image) => {
            if run.lease_epoch == 1 {
                let waited = Timestamp::now().as_millis() - run.created_at.as_millis();
                app.metrics
                    .claim_wait(Duration::from_millis(u64::try_from(waited).unwrap_or(0)));
            }
            app.hub.track(&run);
            let attempt_id = Attempt::id_of(&fence);
            tracing::info!(
                %attempt_id,
                thread_id = %run.thread_id,
                run_id = %run.run_id,
                worker_id = run.lease.as_ref().map_or("", |l| l.worker_id.as_str()),
                "attempt handed to a remote worker"
            );
            Some(Attempt {
                attempt_id,
                fence,
                expires_at,
                run,
                image,
            })
        }
        Err(e) => {
            tracing::warn!(run_id = %run.run_id, error = %e, "image of a claimed run not readable; lease released");
            if let Err(e) = app.store.release_lease(&fence, Timestamp::now()).await {
                tracing::debug!(run_id = %run.run_id, error = %e, "lease not released");
            }
            app.dispatch.forget(run.run_id);
            None
        }
    }
}

/// What a worker needs of the run's thread: the thread, the latest snapshot, the log from
/// the snapshot's seq (inclusive) — or all of it — to the head, the runs those events,
/// interrupts and the thread name, its interrupts and deliveries.
async fn image(app: &AppState, run: &RunRecord) -> store::Result<ThreadImage> {
    let s = &app.store;
    let t = &run.thread_id;
    let thread = s
        .thread(t)
        .await?
        .ok_or_else(|| store::Error::ThreadNotFound {
            thread_id: t.clone(),
        })?;
    let snapshot = s.snapshot(t, thread.head).await?;
    // From the snapshot — or from the run's first event when the snapshot is inside the
    // run: the fold needs the run's opening events (its input and settings).
    let from = snapshot
        .as_ref()
        .map_or(Seq(1), |sn| sn.at_seq.min(run.first_seq));
    let mut after = Seq(from.0.saturating_sub(1));
    let mut events = Vec::new();
    loop {
        let page = s.events(t, after, EVENT_PAGE).await?;
        let n = page.len();
        if let Some(last) = page.last() {
            after = last.seq;
        }
        events.extend(page);
        if n < EVENT_PAGE || after >= thread.head {
            break;
        }
    }
    let deliveries = s.deliveries(t, false).await?;
    // The runs the image refers to — not every run of the thread's history, which would
    // cost a read per past run on every poll — and their interrupts.
    let mut ids: BTreeSet<RunId> = events.iter().map(|e| e.run_id).collect();
    ids.extend(snapshot.as_ref().map(|sn| sn.run_id));
    ids.extend(thread.active_run);
    ids.extend(thread.last_run);
    ids.insert(run.run_id);
    let mut interrupts = s.interrupts(t).await?;
    interrupts.retain(|i| ids.contains(&i.run_id));
    ids.remove(&run.run_id);
    let mut runs = vec![run.clone()];
    for id in ids {
        if let Some(r) = s.run(id).await? {
            runs.push(r);
        }
    }
    Ok(ThreadImage {
        thread,
        runs,
        snapshot,
        events,
        interrupts,
        deliveries,
    })
}

/// Renews the worker's leases and refreshes its `last_seen`.
#[utoipa::path(post, path = "/v1/workers/{worker_id}/heartbeat", tag = "workers",
    params(("worker_id" = String, Path, description = "The worker")),
    request_body(content = Object, description = "A `Heartbeat`: leases [{run_id, epoch}]"),
    responses(
        (status = 200, description = "A `HeartbeatResponse`: renewed [{fence, expires_at}], lost [{fence, reason, cancelled}]", body = Object),
        (status = 404, description = "`worker_not_found` (it must poll first)", body = crate::error::ErrorEnvelope),
        (status = 409, description = "`lease_lost`: every named lease is lost (details.lost)", body = crate::error::ErrorEnvelope),
    ))]
pub(crate) async fn heartbeat(
    State(app): State<AppState>,
    Path(worker_id): Path<String>,
    Json(hb): Json<Heartbeat>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    check_worker_id(&worker_id)?;
    if hb.leases.len() > MAX_HEARTBEAT_LEASES {
        return Err(ApiError::invalid(format!(
            "a heartbeat names at most {MAX_HEARTBEAT_LEASES} leases"
        ))
        .details(json!({ "field": "leases" })));
    }
    let now = Timestamp::now();
    if !app.store.touch_worker(&worker_id, now).await? {
        return Err(ApiError::new(
            ErrorCode::WorkerNotFound,
            format!("no worker `{worker_id}` is registered: poll first"),
        )
        .details(json!({ "worker_id": worker_id })));
    }
    let mut renewed = Vec::new();
    let mut lost = Vec::new();
    for fence in hb.leases {
        match app
            .store
            .renew_lease(&fence, &worker_id, now, app.config.lease_ttl)
            .await
        {
            Ok(r) => renewed.push(RenewedLease {
                fence,
                expires_at: r
                    .lease
                    .map_or(now.plus(app.config.lease_ttl), |l| l.expires_at),
            }),
            Err(store::Error::LeaseLost { reason, .. }) => {
                let cancelled = app
                    .store
                    .run(fence.run_id)
                    .await?
                    .is_some_and(|r| r.status.kind() == StatusKind::Cancelled);
                lost.push(LostLease {
                    fence,
                    reason: reason.to_owned(),
                    cancelled,
                });
            }
            Err(store::Error::RunNotFound { .. }) => lost.push(LostLease {
                fence,
                reason: "no such run".into(),
                cancelled: false,
            }),
            Err(e) => return Err(e.into()),
        }
    }
    if renewed.is_empty() && !lost.is_empty() {
        app.metrics.lease_lost("heartbeat");
        return Err(ApiError::new(
            ErrorCode::LeaseLost,
            "every lease the heartbeat names is lost: stop executing those runs",
        )
        .details(json!({ "lost": lost })));
    }
    Ok(Json(HeartbeatResponse { renewed, lost }))
}

/// Whether `commit`'s events are stored as they are (the report was applied before).
async fn already_applied(app: &AppState, commit: &Commit) -> Result<bool, ApiError> {
    let Some(first) = commit.events.first() else {
        return Ok(false);
    };
    let stored = app
        .store
        .events(
            &commit.thread_id,
            Seq(first.seq.0.saturating_sub(1)),
            commit.events.len(),
        )
        .await?;
    if stored.len() != commit.events.len() {
        return Ok(false);
    }
    for (a, b) in stored.iter().zip(&commit.events) {
        let same = match (EventRow::from_event(a), EventRow::from_event(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if !same {
            return Ok(false);
        }
    }
    Ok(true)
}

fn receipt(commit: &Commit, replayed: bool, attempt_id: &str) -> Response {
    let head = commit.events.last().map_or(commit.expected_head, |e| e.seq);
    let mut resp = Json(ReportReceipt { head, replayed }).into_response();
    resp.extensions_mut()
        .insert(AuditTarget(attempt_id.to_owned()));
    resp.extensions_mut().insert(AuditDetails(
        json!({ "head": head, "replayed_report": replayed }),
    ));
    resp
}

/// Applies one commit of the worker's attempt, fenced by its lease.
#[utoipa::path(post, path = "/v1/workers/{worker_id}/report-step", tag = "workers",
    params(("worker_id" = String, Path, description = "The worker")),
    request_body(content = Object, description = "A `Report`: fence, commit (the engine's commit, fenced)"),
    responses(
        (status = 200, description = "A `ReportReceipt`: head, replayed", body = Object),
        (status = 400, description = "`invalid_input`: the commit breaks a rule", body = crate::error::ErrorEnvelope),
        (status = 409, description = "`lease_lost` (nothing written), `conflict`", body = crate::error::ErrorEnvelope),
    ))]
pub(crate) async fn report_step(
    State(app): State<AppState>,
    Path(worker_id): Path<String>,
    Json(report): Json<Report>,
) -> Result<Response, ApiError> {
    const ROUTE: &str = "report-step";
    check_worker_id(&worker_id)?;
    let fence = report.fence;
    let commit = report.commit;
    if commit.fence != Some(fence) {
        return Err(lease_lost(
            &app,
            ROUTE,
            &fence,
            "the commit does not carry the report's lease",
        ));
    }
    if matches!(commit.run, Some(RunWrite::Create(_))) {
        return Err(ApiError::invalid("a worker cannot create runs"));
    }
    let attempt_id = Attempt::id_of(&fence);
    let Some(run) = app.store.run(fence.run_id).await? else {
        return Err(lease_lost(&app, ROUTE, &fence, "no such run"));
    };
    if run.thread_id != commit.thread_id {
        return Err(
            ApiError::invalid("the commit's thread is not the leased run's thread")
                .details(json!({ "run_id": fence.run_id, "thread_id": commit.thread_id })),
        );
    }
    if run.lease_epoch != fence.epoch {
        return Err(lease_lost(
            &app,
            ROUTE,
            &fence,
            "superseded by a newer claim",
        ));
    }
    match &run.lease {
        Some(l) if l.worker_id != worker_id => {
            return Err(lease_lost(&app, ROUTE, &fence, "held by another worker"));
        }
        Some(_) => {}
        // Released, expired and reaped, or ended by a status change: only a report already
        // applied (a retry after a lost answer) is answered.
        None => {
            if already_applied(&app, &commit).await? {
                app.metrics.worker_report(true);
                return Ok(receipt(&commit, true, &attempt_id));
            }
            return Err(lease_lost(
                &app,
                ROUTE,
                &fence,
                "released, expired, or ended with the run",
            ));
        }
    }
    let copy = commit.clone();
    app.hub.before_commit(&copy);
    match app.store.commit(commit).await {
        Ok(_) => {
            // Streams, long-polls and metrics see the remote progress as a local commit.
            app.hub.after_commit(&copy);
            app.metrics.worker_report(false);
            if let Some(RunWrite::SetStatus { status, .. }) = &copy.run {
                let suspended = matches!(
                    status,
                    RunStatus::Interrupted { .. } | RunStatus::Waiting { .. }
                );
                if status.is_terminal() {
                    app.dispatch.forget(fence.run_id);
                }
                // A suspension may be claimable at once (answers or events that raced it);
                // either ends the lease, which makes room under a per-graph limit.
                if suspended
                    || (status.is_terminal() && app.config.graph_limits.contains_key(&run.graph))
                {
                    app.hub.wake_pool();
                }
            }
            Ok(receipt(&copy, false, &attempt_id))
        }
        Err(store::Error::Conflict { .. }) => {
            if already_applied(&app, &copy).await? {
                app.metrics.worker_report(true);
                Ok(receipt(&copy, true, &attempt_id))
            } else {
                Err(ApiError::new(
                    ErrorCode::Conflict,
                    "the thread changed since the attempt's view (another writer committed first)",
                )
                .details(json!({ "run_id": fence.run_id, "thread_id": copy.thread_id })))
            }
        }
        Err(store::Error::LeaseLost { reason, .. }) => {
            if already_applied(&app, &copy).await? {
                app.metrics.worker_report(true);
                Ok(receipt(&copy, true, &attempt_id))
            } else {
                Err(lease_lost(&app, ROUTE, &fence, reason))
            }
        }
        Err(store::Error::InvalidCommit { detail, .. }) => Err(ApiError::invalid(format!(
            "the commit breaks a rule: {detail}"
        ))
        .details(json!({ "reason": "invalid_commit" }))),
        Err(e @ store::Error::InvalidTransition { .. }) => {
            Err(ApiError::invalid(e.to_string()).details(json!({ "reason": "invalid_transition" })))
        }
        Err(e) => Err(e.into()),
    }
}

const ACK_SCOPE: &str = "worker-ack";

fn outcome_name(o: AckOutcome) -> &'static str {
    match o {
        AckOutcome::Finished => "finished",
        AckOutcome::Suspended => "suspended",
        AckOutcome::Released => "released",
    }
}

/// Ends an attempt.
#[utoipa::path(post, path = "/v1/workers/{worker_id}/ack", tag = "workers",
    params(("worker_id" = String, Path, description = "The worker")),
    request_body(content = Object, description = "An `Ack`: fence, outcome (`finished`, `suspended`, `released`), error"),
    responses(
        (status = 200, description = "An `AckResponse`: run_id, status", body = Object),
        (status = 404, description = "`not_found`: no such run", body = crate::error::ErrorEnvelope),
        (status = 409, description = "`lease_lost`", body = crate::error::ErrorEnvelope),
    ))]
pub(crate) async fn ack(
    State(app): State<AppState>,
    Path(worker_id): Path<String>,
    Json(ack): Json<Ack>,
) -> Result<Response, ApiError> {
    check_worker_id(&worker_id)?;
    let fence = ack.fence;
    let attempt_id = Attempt::id_of(&fence);
    if let Some(e) = &ack.error {
        tracing::warn!(%attempt_id, %worker_id, outcome = outcome_name(ack.outcome), error = %e, "worker reported an error with its ack");
    }
    // The same ack again answers the same: the first answer is kept (scope `worker-ack`,
    // key `<worker_id> <attempt_id>`) for the idempotency TTL.
    let key = format!("{worker_id} {attempt_id}");
    let now = Timestamp::now();
    let candidate = IdempotencyRecord {
        scope: ACK_SCOPE.into(),
        key: key.clone(),
        request_hash: outcome_name(ack.outcome).into(),
        created_at: now,
        expires_at: now.plus(app.config.idempotency_ttl),
        locked_until: now.plus(Duration::from_secs(60)),
        response: None,
    };
    let reserved = match app.store.reserve_idempotency(&candidate, now).await? {
        Reservation::Replay(stored) => {
            if let Ok(r) = serde_json::from_str::<AckResponse>(&stored.body) {
                return Ok(ack_response(r, &attempt_id, &ack));
            }
            false
        }
        Reservation::Reserved => true,
        Reservation::InFlight | Reservation::Mismatch => false,
    };
    let result = decide_ack(&app, &worker_id, &ack).await;
    if reserved {
        let done = match &result {
            Ok(r) => match serde_json::to_string(r) {
                Ok(body) => {
                    app.store
                        .complete_idempotency(
                            ACK_SCOPE,
                            &key,
                            &StoredResponse { status: 200, body },
                        )
                        .await
                }
                Err(e) => Err(store::Error::Incompatible(e.to_string())),
            },
            Err(_) => app.store.release_idempotency(ACK_SCOPE, &key).await,
        };
        if let Err(e) = done {
            tracing::warn!(%attempt_id, error = %e, "ack answer not kept for repeats");
        }
    }
    Ok(ack_response(result?, &attempt_id, &ack))
}

fn ack_response(r: AckResponse, attempt_id: &str, ack: &Ack) -> Response {
    let mut resp = Json(r).into_response();
    resp.extensions_mut()
        .insert(AuditTarget(attempt_id.to_owned()));
    resp.extensions_mut().insert(AuditDetails(json!({
        "outcome": outcome_name(ack.outcome),
        "worker_error": ack.error,
    })));
    resp
}

/// What an ack does (see `docs/api.md`): `released` hands the lease back; `finished` and
/// `suspended` confirm what the reports did — when the run is not in that state and this
/// worker still holds the lease, the lease is released (the run continues elsewhere).
async fn decide_ack(app: &AppState, worker_id: &str, ack: &Ack) -> Result<AckResponse, ApiError> {
    const ROUTE: &str = "ack";
    let fence = ack.fence;
    let Some(run) = app.store.run(fence.run_id).await? else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("run {} does not exist", fence.run_id),
        )
        .details(json!({ "run_id": fence.run_id })));
    };
    if run.lease_epoch != fence.epoch {
        return Err(lease_lost(
            app,
            ROUTE,
            &fence,
            "superseded by a newer claim",
        ));
    }
    let held = match &run.lease {
        Some(l) if l.worker_id != worker_id => {
            return Err(lease_lost(app, ROUTE, &fence, "held by another worker"));
        }
        Some(_) => true,
        None => false,
    };
    let answer = |r: &RunRecord| AckResponse {
        run_id: r.run_id,
        status: r.status.kind().as_str().to_owned(),
    };
    let release = || async {
        match app.store.release_lease(&fence, Timestamp::now()).await {
            Ok(r) => {
                app.dispatch.forget(fence.run_id);
                app.hub.wake_pool();
                Ok(r)
            }
            Err(store::Error::LeaseLost { reason, .. }) => {
                Err(lease_lost(app, ROUTE, &fence, reason))
            }
            Err(e) => Err(ApiError::from(e)),
        }
    };
    match ack.outcome {
        AckOutcome::Released => {
            if !held {
                return Err(lease_lost(app, ROUTE, &fence, "released or expired"));
            }
            let r = release().await?;
            tracing::info!(run_id = %r.run_id, %worker_id, "attempt handed back by its worker");
            Ok(answer(&r))
        }
        outcome => {
            let kind = run.status.kind();
            let matches = match outcome {
                AckOutcome::Finished => run.status.is_terminal(),
                _ => matches!(kind, StatusKind::Interrupted | StatusKind::Waiting),
            };
            if matches {
                // A suspended run whose lease is still held was claimed before anything it
                // waits on was due: the lease is left to expire (as the embedded pool does),
                // which retries it one TTL later.
                app.dispatch.forget(fence.run_id);
                return Ok(answer(&run));
            }
            if !held {
                return Err(lease_lost(app, ROUTE, &fence, "released or expired"));
            }
            tracing::warn!(
                run_id = %run.run_id,
                %worker_id,
                outcome = outcome_name(outcome),
                status = kind.as_str(),
                "ack does not match the run's reported state; lease released so the run continues elsewhere"
            );
            let r = release().await?;
            Ok(answer(&r))
        }
    }
}

/// Announces the worker's graceful stop.
#[utoipa::path(post, path = "/v1/workers/{worker_id}/stop", tag = "workers",
    params(("worker_id" = String, Path, description = "The worker")),
    responses(
        (status = 200, description = "The worker, stopped", body = WorkerView),
        (status = 404, description = "`worker_not_found`", body = crate::error::ErrorEnvelope),
    ))]
pub(crate) async fn stop(
    State(app): State<AppState>,
    Path(worker_id): Path<String>,
) -> Result<Json<WorkerView>, ApiError> {
    check_worker_id(&worker_id)?;
    let Some(mut w) = app
        .store
        .workers()
        .await?
        .into_iter()
        .find(|w| w.worker_id == worker_id)
    else {
        return Err(ApiError::new(
            ErrorCode::WorkerNotFound,
            format!("no worker `{worker_id}` is registered"),
        )
        .details(json!({ "worker_id": worker_id })));
    };
    let now = Timestamp::now();
    if w.stopped_at.is_none() {
        w.stopped_at = Some(now);
        w.last_seen = now;
        app.store.register_worker(&w).await?;
        tracing::info!(%worker_id, "worker announced a graceful stop");
    }
    let leases = held_leases(&app, now).await?;
    Ok(Json(view(&app, w, &leases, now)))
}

/// `active`, `stale` or `stopped`.
pub(crate) fn state_of(app: &AppState, w: &WorkerRecord, now: Timestamp) -> &'static str {
    if w.stopped_at.is_some() {
        "stopped"
    } else if w.last_seen.plus(app.config.lease_ttl) > now {
        "active"
    } else {
        "stale"
    }
}

/// Unexpired leases of unfinished runs, by holder.
async fn held_leases(
    app: &AppState,
    now: Timestamp,
) -> Result<BTreeMap<String, Vec<HeldLeaseView>>, ApiError> {
    let mut filter = RunFilter::unfinished();
    filter.statuses.retain(|s| *s != StatusKind::Queued);
    filter.limit = LEASE_SCAN;
    let mut by: BTreeMap<String, Vec<HeldLeaseView>> = BTreeMap::new();
    for r in app.store.runs(&filter).await? {
        if let Some(l) = &r.lease
            && l.expires_at > now
        {
            by.entry(l.worker_id.clone())
                .or_default()
                .push(HeldLeaseView {
                    run_id: r.run_id.to_string(),
                    thread_id: r.thread_id.to_string(),
                    graph: r.graph.clone(),
                    epoch: r.lease_epoch,
                    expires_at: rfc3339(l.expires_at),
                });
        }
    }
    Ok(by)
}

fn view(
    app: &AppState,
    w: WorkerRecord,
    leases: &BTreeMap<String, Vec<HeldLeaseView>>,
    now: Timestamp,
) -> WorkerView {
    WorkerView {
        state: state_of(app, &w, now).to_owned(),
        leases: leases.get(&w.worker_id).cloned().unwrap_or_default(),
        graphs: w
            .graphs
            .into_iter()
            .map(|(name, version)| GraphVersionView { name, version })
            .collect(),
        capacity: w.capacity,
        registered_at: rfc3339(w.registered_at),
        last_seen: rfc3339(w.last_seen),
        stopped_at: w.stopped_at.map(rfc3339),
        worker_id: w.worker_id,
    }
}

/// Registered remote workers, their state and the leases they hold.
#[utoipa::path(get, path = "/v1/workers", tag = "workers",
    responses((status = 200, description = "Every registered worker", body = WorkerList)))]
pub(crate) async fn list(State(app): State<AppState>) -> Result<Json<WorkerList>, ApiError> {
    let now = Timestamp::now();
    let workers = app.store.workers().await?;
    let leases = held_leases(&app, now).await?;
    Ok(Json(WorkerList {
        workers: workers
            .into_iter()
            .map(|w| view(&app, w, &leases, now))
            .collect(),
    }))
}

/// The number of active remote workers (for the metrics gauge).
pub(crate) async fn active_count(app: &AppState) -> store::Result<usize> {
    let now = Timestamp::now();
    Ok(app
        .store
        .workers()
        .await?
        .iter()
        .filter(|w| state_of(app, w, now) == "active")
        .count())
}

/// Whether any active remote worker executes this graph version.
pub(crate) async fn served_remotely(
    app: &AppState,
    graph: &str,
    version: &str,
) -> store::Result<bool> {
    let now = Timestamp::now();
    Ok(app
        .store
        .workers()
        .await?
        .iter()
        .any(|w| state_of(app, w, now) == "active" && w.accepts(graph, version)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids() {
        for ok in ["w1", "host-1.pid:2_x", &"a".repeat(128)] {
            assert!(check_worker_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "w 1", "w/1", "é", &"a".repeat(129)] {
            assert!(check_worker_id(bad).is_err(), "{bad}");
        }
    }

    fn poll_req() -> PollRequest {
        PollRequest {
            worker_id: "w1".into(),
            protocol: PROTOCOL_VERSION,
            graphs: vec![GraphRef {
                name: "g".into(),
                version: "1".into(),
            }],
            capacity: 4,
            max: 2,
            wait_ms: 0,
        }
    }

    #[test]
    fn poll_checks() {
        assert!(check_poll(&poll_req()).is_ok());
        let mut r = poll_req();
        r.protocol += 1;
        assert_eq!(
            check_poll(&r).unwrap_err().code(),
            ErrorCode::ProtocolMismatch
        );
        let mut r = poll_req();
        r.graphs.clear();
        assert_eq!(check_poll(&r).unwrap_err().code(), ErrorCode::InvalidInput);
        let mut r = poll_req();
        r.max = 5;
        assert_eq!(check_poll(&r).unwrap_err().code(), ErrorCode::InvalidInput);
        let mut r = poll_req();
        r.max = 0;
        assert!(check_poll(&r).is_err());
        let mut r = poll_req();
        r.capacity = MAX_CAPACITY + 1;
        r.max = 1;
        assert!(check_poll(&r).is_err());
    }
}
