//! Pending runs: `POST /v1/jobs` with `"multitask_strategy": "enqueue"` on a busy thread
//! stores the request (validated) as a pending run with a pre-assigned run id
//! ([`Store::push_pending`](oris_core::store::Store::push_pending)); the starter task here
//! starts a thread's oldest pending run when the thread's unfinished run ends, FIFO.
//!
//! Starting one is `Engine::enqueue` with the pre-assigned run id, then the removal of the
//! row. A crash between the two is repaired by the next sweep: the run exists, so the
//! enqueue returns it without recording anything, and the row is removed — nothing is
//! lost or started twice. A thread with pending runs pushed by this process is followed
//! through the hub: its next pending run starts when a run of it ends (a terminal status
//! committed here — by the embedded pool, a remote worker's report or a cancel). The
//! starter task sweeps
//! [`Store::pending_threads`](oris_core::store::Store::pending_threads) at start and every
//! poll interval for the rest (runs ended in another process, or while this one was down);
//! both run with or without the embedded worker pool. Threads without pending runs cost
//! nothing on the hot path.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use oris_core::event::{Durability, Payload};
use oris_core::id::{RunId, ThreadId};
use oris_core::store::{PendingRun, RunRecord};
use oris_runtime::{Enqueue, EnqueueOptions, RunOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::dispatch;
use crate::hub::{RunChange, ThreadWatch};
use crate::state::AppState;

/// Threads one sweep looks at.
const SWEEP_BATCH: usize = 256;

/// A pending run as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PendingView {
    /// The thread it waits for.
    pub thread_id: String,
    /// The run id it keeps when it starts.
    pub run_id: String,
    /// Always `pending`.
    pub status: String,
    /// Its place among the thread's pending runs: the lowest starts first. Positions
    /// increase per thread while it has pending runs (1 when the queue was empty).
    pub position: u64,
    /// Graph name.
    pub graph: String,
    /// The graph version it will run on.
    pub graph_version: String,
    /// When the request was accepted (RFC 3339).
    pub created_at: String,
}

impl PendingView {
    /// The view of a stored pending run.
    pub fn of(p: &PendingRun) -> Self {
        PendingView {
            thread_id: p.thread_id.to_string(),
            run_id: p.run_id.to_string(),
            status: "pending".into(),
            position: p.position,
            graph: p.graph.clone(),
            graph_version: p.graph_version.clone(),
            created_at: crate::time::rfc3339(p.created_at),
        }
    }
}

/// The answer of `POST /v1/jobs/{thread_id}/cancel`: the run (the thread's latest run
/// when only pending runs were dropped) and the pending runs dropped.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelledJob {
    /// The run.
    #[serde(flatten)]
    pub job: crate::wire::JobView,
    /// Run ids of the pending runs dropped (`include_pending`), oldest first; empty
    /// without it.
    pub dropped_pending: Vec<String>,
}

/// The create request as a pending run stores it (JSON text in the store).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PendingRequest {
    /// The input, as sent.
    pub input: Value,
    /// Claim order.
    pub priority: i32,
    /// Labels.
    pub metadata: Option<BTreeMap<String, String>>,
    /// `sync`, `batched` or `exit`, as sent.
    pub durability: Option<String>,
    /// Time limit from the run's start, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Pause before these nodes.
    pub interrupt_before: Vec<String>,
    /// Pause after these nodes.
    pub interrupt_after: Vec<String>,
}

impl PendingRequest {
    /// The enqueue request that starts the pending run `p` (graph version pinned, run id
    /// pre-assigned).
    fn enqueue(self, p: &PendingRun) -> Result<Enqueue, String> {
        let durability = self
            .durability
            .as_deref()
            .map(str::parse::<Durability>)
            .transpose()
            .map_err(|e| format!("durability: {e}"))?;
        Ok(Enqueue {
            graph: p.graph.clone(),
            version: Some(p.graph_version.clone()),
            thread_id: p.thread_id.clone(),
            input: self.input,
            options: EnqueueOptions {
                priority: self.priority,
                metadata: self.metadata.filter(|m| !m.is_empty()),
                run: RunOptions {
                    durability,
                    timeout: self.timeout_ms.map(Duration::from_millis),
                    superstep_limit: None,
                    interrupt_before: self.interrupt_before,
                    interrupt_after: self.interrupt_after,
                },
                run_id: Some(p.run_id),
            },
        })
    }
}

/// Stores `request` as a pending run of `thread_id` (graph version already resolved by
/// the caller's validation) and returns it as stored, with its position; then starts it
/// at once if the thread became free meanwhile.
pub(crate) async fn push(
    app: &AppState,
    thread_id: &ThreadId,
    graph: String,
    graph_version: String,
    request: &PendingRequest,
) -> Result<PendingRun, crate::error::ApiError> {
    let encoded = Payload::encode(request).map_err(|e| {
        crate::error::ApiError::invalid(format!("the request does not serialize: {e}"))
    })?;
    let mut run = PendingRun {
        run_id: RunId::generate(),
        thread_id: thread_id.clone(),
        position: 0,
        graph,
        graph_version,
        request: encoded,
        created_at: oris_core::id::Timestamp::now(),
    };
    // Watch before the push: the thread's run may end right after it.
    let watch = app.hub.watch_thread(thread_id);
    run.position = app.store.push_pending(&run).await?;
    tracing::info!(thread_id = %thread_id, run_id = %run.run_id, position = run.position, "run pending behind the thread's unfinished run");
    follow(app.clone(), thread_id.clone(), watch);
    Ok(run)
}

/// Threads a [`follow`] task of this process watches, by the server they belong to.
static FOLLOWED: Mutex<BTreeSet<(usize, ThreadId)>> = Mutex::new(BTreeSet::new());

/// Starts the thread's pending runs one after another: now if the thread is free, then
/// each time a run of the thread ends (its terminal commit through this process's hub:
/// the embedded pool's, a remote worker's report, a cancel), until none is left. One task
/// per thread and server; runs ended by another process are found by the sweep.
fn follow(app: AppState, thread_id: ThreadId, mut watch: ThreadWatch) {
    let key = (std::sync::Arc::as_ptr(&app) as usize, thread_id.clone());
    if !FOLLOWED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key.clone())
    {
        // Another task follows the thread (and will see this run too).
        return;
    }
    tokio::spawn(async move {
        loop {
            let free = match app.store.thread(&thread_id).await {
                Ok(t) => t.is_none_or(|t| t.active_run.is_none()),
                Err(_) => false,
            };
            if free {
                start_next(&app, &thread_id).await;
            }
            // Stop following once the queue is empty (the key goes first: a push racing
            // the exit spawns its own task, so nothing is left unfollowed).
            FOLLOWED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            match app.store.pending_runs(&thread_id).await {
                Ok(q) if q.is_empty() => return,
                _ => {}
            }
            if !FOLLOWED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone())
            {
                return;
            }
            // Until a run of the thread ends.
            loop {
                tokio::select! {
                    change = watch.next() => match change {
                        None => {
                            FOLLOWED.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                            return;
                        }
                        Some(Some(RunChange::Status(_, kind))) if kind.is_terminal() => break,
                        Some(_) => {}
                    },
                    _ = app.shutdown.cancelled() => {
                        FOLLOWED.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                        return;
                    }
                }
            }
        }
    });
}

/// The starter task: sweeps at start and every poll interval, until `stop` — for pending
/// runs whose thread's run ended in another process, or while this one was down.
pub(crate) async fn starter(app: AppState, stop: CancellationToken) {
    loop {
        sweep(&app).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(app.config.poll_interval) => {}
        }
    }
}

/// Starts the head pending run of every free thread with pending runs.
pub(crate) async fn sweep(app: &AppState) {
    match app.store.pending_threads(SWEEP_BATCH).await {
        Ok(threads) => {
            for t in threads {
                start_next(app, &t).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "pending runs not swept; retrying"),
    }
}

/// Starts the thread's oldest pending run, if the thread is free; returns the run started
/// (or found started by an earlier attempt).
pub(crate) async fn start_next(app: &AppState, thread_id: &ThreadId) -> Option<RunRecord> {
    let head = match app.store.pending_runs(thread_id).await {
        Ok(q) => q.into_iter().next()?,
        Err(e) => {
            tracing::warn!(thread_id = %thread_id, error = %e, "pending runs not read");
            return None;
        }
    };
    let request = serde_json::from_str::<PendingRequest>(head.request.json())
        .map_err(|e| e.to_string())
        .and_then(|r| r.enqueue(&head));
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            drop_unstartable(app, &head, &format!("stored request is unreadable: {e}")).await;
            return None;
        }
    };
    use oris_runtime::Error as E;
    match app.engine.enqueue(request).await {
        Ok(run) => {
            if let Err(e) = app.store.remove_pending(head.run_id).await {
                // The next sweep finds the run started and removes the row then.
                tracing::warn!(run_id = %head.run_id, error = %e, "started pending run not removed yet");
            }
            dispatch::queued_one_more(app);
            tracing::info!(thread_id = %thread_id, run_id = %run.run_id, position = head.position, "pending run started");
            Some(run)
        }
        // Started already, by a concurrent start of the same pending run.
        Err(E::RunActive { run_id, .. }) if run_id == head.run_id => {
            let _ = app.store.remove_pending(head.run_id).await;
            None
        }
        // Another run took the thread (a create raced the end): wait for its end.
        Err(E::RunActive { .. }) => None,
        Err(e @ (E::InvalidInput(_) | E::GraphNotFound { .. } | E::GraphMismatch { .. })) => {
            drop_unstartable(app, &head, &e.to_string()).await;
            None
        }
        Err(e) => {
            tracing::warn!(thread_id = %thread_id, run_id = %head.run_id, error = %e, "pending run not started; retrying at the next sweep");
            None
        }
    }
}

/// Removes a pending run that can never start (its graph version is gone, its input no
/// longer routes from the thread's state), so the runs behind it are not blocked.
async fn drop_unstartable(app: &AppState, head: &PendingRun, why: &str) {
    tracing::error!(thread_id = %head.thread_id, run_id = %head.run_id, reason = %why, "pending run cannot start; dropped");
    if let Err(e) = app.store.remove_pending(head.run_id).await {
        tracing::warn!(run_id = %head.run_id, error = %e, "unstartable pending run not removed");
    }
}
