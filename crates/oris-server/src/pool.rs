//! The embedded worker pool: claims ready runs through the store — the same claim and lease
//! path remote workers use — and executes each under its lease.
//!
//! The loop claims up to the number of free slots, for the graph versions this server has
//! (runs pinned to other versions are never claimed), and spawns one execution per run. It
//! claims again only when there may be something to take: a wake-up arrived since its last
//! claim began (the engine made a run claimable here — enqueue, answer, release…; a handler,
//! a timer or an external signal ([`ServerBuilder::wake_on`](crate::ServerBuilder::wake_on))
//! woke it), or the last claim filled every free slot (more may be waiting) and a slot is
//! free again, or `poll_interval` passed since the last claim (runs made ready elsewhere:
//! other processes, timers, expired leases). An execution that ends frees a slot but is no
//! reason to claim by itself, so a lone run costs one claim — except with per-graph
//! concurrency limits ([`ServerBuilder::graph_limit`](crate::ServerBuilder::graph_limit)),
//! where an ending run may make room under its limit and so asks for a claim. Idle, the
//! pool costs one claim query per `poll_interval`. Claims go through `dispatch::claim`, the
//! one claim path of the pool and of remote worker polls (limits, lease-holder records).
//!
//! Shutdown: no new claims; executions are told to stop (running node attempts finish and
//! commit, leases are handed back); whatever has not stopped after the grace period is
//! dropped and its lease released, so the next start — or another worker — continues it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use oris_core::id::{RunId, Timestamp};
use oris_core::store::{Fence, RunRecord};
use oris_runtime::{LeaseOptions, Stop};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dispatch;
use crate::hub::Hub;
use crate::state::{AppState, PoolState};

/// Back-off after a failed claim.
const CLAIM_RETRY: Duration = Duration::from_millis(500);

/// An external source of wake-ups for the pool ([`ServerBuilder::wake_on`](crate::ServerBuilder::wake_on)).
pub(crate) struct WakeSource(pub std::pin::Pin<Box<dyn Stream<Item = ()> + Send + 'static>>);

impl std::fmt::Debug for WakeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WakeSource")
    }
}

/// Forwards each item of `source` as a pool wake-up until it ends or `stop` is cancelled.
pub(crate) async fn forward_wakes(hub: Arc<Hub>, mut source: WakeSource, stop: CancellationToken) {
    loop {
        tokio::select! {
            item = source.0.next() => match item {
                Some(()) => hub.wake_pool(),
                None => return,
            },
            _ = stop.cancelled() => return,
        }
    }
}

pub(crate) async fn run(app: AppState, stop: CancellationToken) {
    let concurrency = app.config.workers;
    let slots = Arc::new(Semaphore::new(concurrency));
    let running: Arc<Mutex<HashMap<RunId, Fence>>> = Arc::default();
    let exec_stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut ready = app.engine.subscribe_ready();
    let mut wakes = app.hub.pool_wakes();
    let lease = LeaseOptions {
        worker_id: app.worker_id.clone(),
        ttl: app.config.lease_ttl,
        heartbeat: app.config.heartbeat,
    };
    app.set_pool_state(PoolState::Running);
    tracing::info!(worker_id = %app.worker_id, concurrency, "worker pool started");
    // Whether there may be runs to claim: at start, after a wake-up, after a claim that
    // filled its limit, after a failed claim, and at every poll.
    let mut wanted = true;
    let mut next_poll = Instant::now() + app.config.poll_interval;
    while !stop.is_cancelled() {
        while tasks.try_join_next().is_some() {}
        let free = slots.available_permits();
        let graphs = app.graph_versions.clone();
        // An empty list would mean "any graph": a server without graphs claims nothing.
        if wanted && free > 0 && !graphs.is_empty() {
            // Wake-ups so far are answered by this claim; one arriving from now on may
            // concern a run the claim does not see, and asks for another.
            ready.borrow_and_update();
            wakes.borrow_and_update();
            match dispatch::claim(&app, &app.worker_id, &graphs, free).await {
                Ok(runs) => {
                    // A claim held back by a per-graph limit is not a full one: the pool
                    // looks again at the next wake-up or poll.
                    wanted = runs.len() >= free;
                    next_poll = Instant::now() + app.config.poll_interval;
                    for run in runs {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            // Cannot happen: only this loop takes permits.
                            tracing::error!(run_id = %run.run_id, "claimed more runs than free slots");
                            break;
                        };
                        let app = app.clone();
                        let lease = lease.clone();
                        let stop = exec_stop.child_token();
                        let running = running.clone();
                        tasks.spawn(async move {
                            execute(&app, run, lease, stop, &running).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claim failed; retrying");
                    // Retried at the next poll, after a back-off.
                    wanted = false;
                    next_poll = Instant::now()
                        + CLAIM_RETRY.max(app.config.poll_interval.min(Duration::from_secs(5)));
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ready.changed() => wanted = true,
            _ = wakes.changed() => wanted = true,
            // A free slot: claims again if something is wanted — or, with per-graph
            // limits, since the run that ended may have made room under its limit.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                if !app.config.graph_limits.is_empty() {
                    wanted = true;
                }
            }
            _ = tokio::time::sleep_until(next_poll) => {
                wanted = true;
                next_poll = Instant::now() + app.config.poll_interval;
            }
        }
    }
    // Graceful stop.
    exec_stop.cancel();
    let in_flight = tasks.len();
    if in_flight > 0 {
        tracing::info!(in_flight, grace = ?app.config.shutdown_grace, "worker pool stopping: letting running nodes finish");
    }
    let drained = tokio::time::timeout(app.config.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !drained {
        tasks.shutdown().await;
        let left: Vec<Fence> = running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, f)| f)
            .collect();
        tracing::warn!(
            runs = left.len(),
            "grace period over: executions dropped, leases released"
        );
        for f in left {
            if let Err(e) = app.store.release_lease(&f, Timestamp::now()).await {
                tracing::warn!(run_id = %f.run_id, error = %e, "lease not released; it expires on its own");
            }
        }
    }
    app.set_pool_state(PoolState::Stopped);
    tracing::info!(worker_id = %app.worker_id, "worker pool stopped");
}

async fn execute(
    app: &AppState,
    run: RunRecord,
    lease: LeaseOptions,
    stop: CancellationToken,
    running: &Mutex<HashMap<RunId, Fence>>,
) {
    let fence = Fence {
        run_id: run.run_id,
        epoch: run.lease_epoch,
    };
    let run_id = run.run_id;
    let thread_id = run.thread_id.clone();
    if run.lease_epoch == 1 {
        let waited = Timestamp::now().as_millis() - run.created_at.as_millis();
        app.metrics
            .claim_wait(Duration::from_millis(u64::try_from(waited).unwrap_or(0)));
    }
    app.hub.track(&run);
    running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(run_id, fence);
    let result = app.engine.execute(run, lease, stop).await;
    running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&run_id);
    app.dispatch.forget(run_id);
    match result {
        Ok(done) => {
            tracing::debug!(%thread_id, %run_id, stop = ?done.stop, status = ?done.status, "execution ended");
            if done.stop == Stop::Suspended {
                arm_wake(app, run_id).await;
            }
        }
        Err(e) => {
            tracing::warn!(%thread_id, %run_id, error = %e, "execution failed; lease released");
            if let Err(e) = app.store.release_lease(&fence, Timestamp::now()).await {
                tracing::debug!(%run_id, error = %e, "lease not released");
            }
        }
    }
}

/// A run suspended on a timer: wake the pool when it is due (polling would find it too,
/// within a poll interval).
async fn arm_wake(app: &AppState, run_id: RunId) {
    let Ok(Some(run)) = app.store.run(run_id).await else {
        return;
    };
    let Some(at) = run.ready_at else { return };
    let wait = at.as_millis() - Timestamp::now().as_millis();
    let hub = app.hub.clone();
    let stop = app.shutdown.clone();
    if wait <= 0 {
        hub.wake_pool();
        return;
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => hub.wake_pool(),
            _ = stop.cancelled() => {}
        }
    });
}
