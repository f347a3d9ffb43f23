//! Executing a claimed run under its lease: what a worker does with a record
//! [`Store::claim`](oris_core::store::Store::claim) returned.
//!
//! The worker's driver is the ordinary one with three differences: every commit carries the
//! lease's fence (the store refuses it once the lease is lost, so a superseded worker can
//! never write), a heartbeat renews the lease and stops the driver at once when renewal is
//! refused, and a suspension is always handed to the store (which makes the run claimable
//! again when its answers, timer or event arrive) instead of being waited out in-process.

use std::sync::Arc;
use std::time::Duration;

use oris_core::id::{Seq, Timestamp};
use oris_core::state::State;
use oris_core::status::StatusKind;
use oris_core::store::{self, Fence, RunRecord, Store};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::driver::{Driven, Driver, LeaseCtl, LeaseLoss};
use crate::engine::Engine;
use crate::erased::status_of;
use crate::error::Error;
use crate::graph::CompiledGraph;
use crate::replay::fold_known;

/// How a worker holds the runs it executes.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// The worker's identity, recorded as the lease holder.
    pub worker_id: String,
    /// How long a lease lasts unless renewed (the `ttl` the run was claimed with). After
    /// it, another worker may claim the run and this one can no longer write. Default 30 s.
    pub ttl: Duration,
    /// How often the lease is renewed while the run executes; well below `ttl` (a third of
    /// it leaves room for two failed renewals). Default 10 s.
    pub heartbeat: Duration,
}

impl LeaseOptions {
    /// Default lease settings for `worker_id`: a 30 s lease renewed every 10 s.
    pub fn new(worker_id: impl Into<String>) -> Self {
        LeaseOptions {
            worker_id: worker_id.into(),
            ttl: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
        }
    }
}

/// What [`Engine::execute`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    /// The run's status when the execution stopped (as this worker last saw it).
    pub status: StatusKind,
    /// Why the execution stopped.
    pub stop: Stop,
}

/// Why an execution stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The run ended: completed, failed or cancelled.
    Finished,
    /// The run suspended (interrupted or waiting); the store makes it claimable again when
    /// it can continue.
    Suspended,
    /// A graceful stop: running node attempts finished and were committed, the lease was
    /// handed back, and the run is claimable at once.
    Shutdown,
    /// The lease was lost (expired, superseded by a newer claim, or ended by a
    /// cancellation elsewhere): the driver stopped at once and wrote nothing more. Whoever
    /// holds the run now continues it from its last durable point.
    LeaseLost,
}

impl Engine {
    /// Executes a run this worker claimed: `run` is the record
    /// [`Store::claim`](oris_core::store::Store::claim) returned. The run continues from its
    /// last durable point — a queued run from its `RunStarted` boundary, an interrupted one
    /// with its answers applied, a waiting one when due — with every commit fenced by
    /// `Fence { run_id, epoch: run.lease_epoch }`.
    ///
    /// A heartbeat renews the lease every `lease.heartbeat`. When a renewal or a commit is
    /// refused because the lease was lost, the driver stops at once (node futures dropped,
    /// nothing more committed) and this returns [`Stop::LeaseLost`]. A newer claim of the
    /// same run executed by this engine supersedes this execution the same way.
    ///
    /// When `stop` is cancelled (graceful shutdown), no new node attempt starts; attempts
    /// already running finish and are committed; then the lease is released (the run is
    /// claimable at once) and this returns [`Stop::Shutdown`]. A suspended run is never
    /// continued in-process: no wake-up timer, no settling of answers that raced the
    /// suspension — the store makes it claimable again.
    ///
    /// Emits a span `execute` with `thread_id`, `run_id`, `lease_epoch` and `worker_id`.
    ///
    /// # Example
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use oris_core::graph::{END, START};
    /// use oris_core::id::{ThreadId, Timestamp};
    /// use oris_core::store::{ClaimRequest, MemoryStore, Store};
    /// use oris_runtime::{Engine, Enqueue, LeaseOptions, NodeError, StateGraph, Stop};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// #[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize)]
    /// struct Count { n: i64 }
    /// impl oris_core::state::State for Count {
    ///     type Update = Option<i64>;
    ///     fn apply(&mut self, ups: Vec<(&str, Option<i64>)>) -> Result<(), oris_core::state::ReduceError> {
    ///         for (_, u) in ups { if let Some(n) = u { self.n = n } }
    ///         Ok(())
    ///     }
    ///     fn into_update(self) -> Option<i64> { Some(self.n) }
    /// }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store = Arc::new(MemoryStore::new());
    /// let engine = Engine::new(store.clone());
    /// engine.register(
    ///     StateGraph::<Count>::new("count", "1")
    ///         .node("inc", |s: Count, _ctx| async move { Ok::<_, NodeError>(Some(s.n + 1)) })
    ///         .edge(START, "inc")
    ///         .edge("inc", END)
    ///         .compile()
    ///         .unwrap(),
    /// );
    /// // An API call records the run…
    /// engine
    ///     .enqueue(Enqueue {
    ///         graph: "count".into(),
    ///         version: None,
    ///         thread_id: ThreadId::new("t1").unwrap(),
    ///         input: serde_json::json!({"n": 41}),
    ///         options: Default::default(),
    ///     })
    ///     .await
    ///     .unwrap();
    /// // …a worker claims it and executes it under the lease.
    /// let claimed = store
    ///     .claim(&ClaimRequest {
    ///         worker_id: "w1".into(),
    ///         now: Timestamp::now(),
    ///         ttl: Duration::from_secs(30),
    ///         limit: 1,
    ///         graphs: Vec::new(),
    ///     })
    ///     .await
    ///     .unwrap();
    /// let run = claimed.into_iter().next().unwrap();
    /// let done = engine
    ///     .execute(run, LeaseOptions::new("w1"), CancellationToken::new())
    ///     .await
    ///     .unwrap();
    /// assert_eq!(done.stop, Stop::Finished);
    /// let state = engine.state_json(&ThreadId::new("t1").unwrap()).await.unwrap();
    /// assert_eq!(state.values["n"], 42);
    /// # });
    /// ```
    ///
    /// Cancel safety: dropping the future drops the driver like a crash would; the lease
    /// expires and another worker continues the run.
    ///
    /// # Errors
    /// [`Error::GraphNotRegistered`] when this engine lacks the run's graph version (nothing
    /// changed; the caller releases the lease so a worker that has it can claim the run);
    /// storage errors and [`Error::Corrupt`], after which the lease is left to expire (a
    /// natural back-off before another attempt; the caller may release it instead).
    pub async fn execute(
        &self,
        run: RunRecord,
        lease: LeaseOptions,
        stop: CancellationToken,
    ) -> Result<Executed, Error> {
        let Some(graph) = self.registered(&run.graph, &run.graph_version) else {
            return Err(Error::GraphNotRegistered {
                thread_id: run.thread_id,
                run_id: run.run_id,
                graph: run.graph,
                version: run.graph_version,
            });
        };
        graph.execute(self.clone(), run, lease, stop).await
    }

    pub(crate) async fn execute_typed<S: State>(
        &self,
        graph: &CompiledGraph<S>,
        run: RunRecord,
        lease: LeaseOptions,
        stop: CancellationToken,
    ) -> Result<Executed, Error> {
        let span = tracing::info_span!(
            "execute",
            thread_id = %run.thread_id,
            run_id = %run.run_id,
            lease_epoch = run.lease_epoch,
            worker_id = %lease.worker_id,
        );
        self.execute_leased(graph, run, lease, stop)
            .instrument(span)
            .await
    }

    async fn execute_leased<S: State>(
        &self,
        graph: &CompiledGraph<S>,
        run: RunRecord,
        lease: LeaseOptions,
        stop: CancellationToken,
    ) -> Result<Executed, Error> {
        let store = self.shared.store.clone();
        let fence = Fence {
            run_id: run.run_id,
            epoch: run.lease_epoch,
        };
        let loss = Arc::new(LeaseLoss::default());
        let heartbeat = spawn_heartbeat(
            store.clone(),
            fence,
            &lease,
            run.lease.as_ref().map(|l| l.expires_at),
            loss.clone(),
        );
        let driven = self
            .drive_leased(graph, &run, fence, loss.clone(), stop)
            .await;
        drop(heartbeat);
        let (driven, holds_lease) = match driven {
            Ok(d) => d,
            Err(Error::LeaseLost { reason, .. }) => return self.lost(&run, reason).await,
            // Another writer changed the thread (an operator's edit raced a commit): the
            // driver's view is stale. Hand the run back so a fresh execution continues it.
            Err(Error::Superseded { .. }) => {
                self.release(fence).await;
                return self
                    .lost(&run, "the thread was changed by another writer")
                    .await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "execution failed; the lease is left to expire");
                return Err(e);
            }
        };
        let executed = match driven {
            Driven::Ended(outcome) => {
                let status = status_of(&outcome);
                let stop = if status.is_terminal() {
                    Stop::Finished
                } else {
                    Stop::Suspended
                };
                if holds_lease {
                    // Claimed, yet nothing it waits on is due by this engine's clock (the
                    // claimer's clock disagreed): no status was written, the lease is still
                    // held. Releasing would make it claimable at once, again and again;
                    // letting the lease expire retries it one `ttl` later.
                    tracing::debug!("claimed suspended run is not due yet; lease left to expire");
                }
                Executed { status, stop }
            }
            Driven::Stopped => {
                self.release(fence).await;
                Executed {
                    status: StatusKind::Running,
                    stop: Stop::Shutdown,
                }
            }
        };
        if executed.stop == Stop::Suspended {
            // The store may have made it claimable at once (answers that raced it).
            self.shared.made_ready();
        }
        tracing::info!(status = executed.status.as_str(), stop = ?executed.stop, "execution ended");
        Ok(executed)
    }

    /// Holds the thread, rebuilds the run and drives it under the lease. Returns how the
    /// driver ended and whether it still holds the lease.
    async fn drive_leased<S: State>(
        &self,
        graph: &CompiledGraph<S>,
        run: &RunRecord,
        fence: Fence,
        loss: Arc<LeaseLoss>,
        stop: CancellationToken,
    ) -> Result<(Driven<S>, bool), Error> {
        let g = &graph.inner;
        let store = &*self.shared.store;
        let thread_id = run.thread_id.clone();
        let guard = self
            .claim_leased(&thread_id, run.run_id, fence.epoch, loss.clone())
            .await?;
        // A first claim of the first run of its thread: the log is that run's opening
        // events, and no snapshot can exist yet (one is written only at a boundary the
        // run has not reached) — fold the log without looking for one.
        let fresh = run.lease_epoch == 1 && run.first_seq == Seq(1);
        let f = fold_known::<S>(store, &thread_id, Seq(u64::MAX), fresh, Some(run)).await?;
        let Some(progress) = f.progress.filter(|p| p.run_id == run.run_id) else {
            // The run ended before this worker got to it (cancelled meanwhile).
            let now = store.run(run.run_id).await?;
            return match now {
                Some(r) if r.status.is_terminal() => Err(Error::LeaseLost {
                    run_id: run.run_id,
                    epoch: fence.epoch,
                    reason: "the run ended before it was executed",
                }),
                _ => Err(Error::Corrupt {
                    thread_id,
                    seq: Some(f.head),
                    detail: format!("claimed run {} is not in progress in the log", run.run_id),
                }),
            };
        };
        if progress.graph_version != g.version {
            return Err(Error::GraphNotRegistered {
                thread_id,
                run_id: run.run_id,
                graph: g.name.clone(),
                version: progress.graph_version,
            });
        }
        tracing::info!(
            superstep = progress.superstep,
            done = progress.done.len(),
            suspended = f.suspended,
            "executing run"
        );
        let at = self
            .position(
                f.state,
                f.head,
                f.last_boundary,
                f.since_snapshot,
                progress,
                f.suspended,
            )
            .await?;
        let mut driver = Driver::new(
            g.clone(),
            self.shared.clone(),
            thread_id,
            at,
            guard.slot.clone(),
        )
        .with_lease(LeaseCtl { fence, loss, stop });
        let driven = driver.run().await?;
        let holds = driver.holds_lease;
        drop(driver);
        drop(guard);
        Ok((driven, holds))
    }

    /// The execution lost its lease: report what the run is now.
    async fn lost(&self, run: &RunRecord, reason: &'static str) -> Result<Executed, Error> {
        tracing::warn!(reason, "lease lost; the driver stopped");
        let status = match self.shared.store.run(run.run_id).await {
            Ok(Some(r)) => r.status.kind(),
            _ => StatusKind::Running,
        };
        Ok(Executed {
            status,
            stop: Stop::LeaseLost,
        })
    }

    /// Hands the lease back; a lease lost meanwhile is nobody's to release.
    async fn release(&self, fence: Fence) {
        match self
            .shared
            .store
            .release_lease(&fence, Timestamp::now())
            .await
        {
            Ok(_) => {
                tracing::debug!("lease released");
                self.shared.made_ready();
            }
            Err(e) => tracing::debug!(error = %e, "lease not released"),
        }
    }
}

/// Renews the lease every `lease.heartbeat` until dropped. A refused renewal — or the lease
/// running out while the store cannot be reached — fires `loss`, which stops the driver.
fn spawn_heartbeat(
    store: Arc<dyn Store>,
    fence: Fence,
    lease: &LeaseOptions,
    expires_at: Option<Timestamp>,
    loss: Arc<LeaseLoss>,
) -> AbortOnDropHandle<()> {
    let worker_id = lease.worker_id.clone();
    let ttl = lease.ttl;
    let every = lease.heartbeat.max(Duration::from_millis(1));
    let beat = async move {
        let mut expires_at = expires_at;
        loop {
            tokio::time::sleep(every).await;
            match store
                .renew_lease(&fence, &worker_id, Timestamp::now(), ttl)
                .await
            {
                Ok(r) => {
                    expires_at = r.lease.map(|l| l.expires_at);
                    tracing::debug!(expires_at = ?expires_at, "lease renewed");
                }
                Err(store::Error::LeaseLost { reason, .. }) => {
                    loss.fire(reason);
                    return;
                }
                Err(store::Error::RunNotFound { .. }) => {
                    loss.fire("the run no longer exists");
                    return;
                }
                Err(e) => {
                    if expires_at.is_none_or(|t| Timestamp::now() >= t) {
                        loss.fire("expired while the store could not be reached");
                        return;
                    }
                    tracing::warn!(error = %e, "lease renewal failed; retrying");
                }
            }
        }
    };
    AbortOnDropHandle::new(tokio::spawn(beat.in_current_span()))
}
