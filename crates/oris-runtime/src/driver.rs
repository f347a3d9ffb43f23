//! The per-run driver: executes supersteps and commits their results.
//!
//! One driver owns a run in this process; it is the only writer of its thread here, and the
//! store's compare-and-set on the thread head stops it if anyone else writes. The commit
//! protocol:
//!
//! 1. Every node attempt of a superstep runs concurrently (a Tokio task each).
//! 2. When attempts finish, their results — updates (`NodeCompleted`) or failures
//!    (`NodeFailed`) — are committed together, in one transaction, before anything else
//!    happens. Completed tasks are never executed again, even after a crash.
//! 3. The commit that records the last task of a superstep also carries the boundary: the
//!    updates merged in task order, the next superstep's tasks, the join progress, and — at
//!    the end — `RunCompleted` and the run's status. One superstep of one node is one commit.
//! 4. Effects (starting the next tasks, returning the outcome) happen only after the commit
//!    succeeded.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use oris_core::event::{
    Barriers, Boundary, Durability, Event, EventBody, Failure, FailureKind, Payload, RunSettings,
    Task,
};
use oris_core::graph::{RouteError, START, Target};
use oris_core::id::{CheckpointId, RunId, Seq, ThreadId, Timestamp};
use oris_core::state::State;
use oris_core::status::RunStatus;
use oris_core::store::{self, Commit, RunWrite, Snapshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::engine::{CancelSlot, Shared};
use crate::error::Error;
use crate::graph::GraphInner;
use crate::node::{BoxFuture, Context, ContextInner, NodeError, NodeOutput};
use crate::outcome::RunOutcome;
use crate::replay::Progress;

type AttemptResult<S> = (u32, u32, Result<NodeOutput<S>, NodeError>);

/// The attempts in flight in one superstep. Dropping it cancels them all: inline futures are
/// dropped, spawned ones aborted.
type Running<S> = FuturesUnordered<BoxFuture<Option<AttemptResult<S>>>>;

pub(crate) struct Driver<S: State> {
    pub g: Arc<GraphInner<S>>,
    pub shared: Arc<Shared>,
    pub thread_id: ThreadId,
    pub run_id: RunId,
    pub settings: RunSettings,
    pub state: S,
    /// Head including buffered events.
    pub head: Seq,
    /// Head the store has.
    pub durable_head: Seq,
    /// Events not yet written (exit durability only).
    pub buffer: Vec<Event>,
    pub superstep: u32,
    pub tasks: Vec<Task>,
    pub barriers: Barriers,
    pub done: std::collections::BTreeMap<u32, S::Update>,
    pub failed: std::collections::BTreeMap<u32, u32>,
    /// Due times of retries scheduled before this driver took the run over.
    pub retry_at: std::collections::BTreeMap<u32, Timestamp>,
    pub last_boundary: Seq,
    pub since_snapshot: u32,
    pub cancel: CancellationToken,
    pub cancel_slot: Arc<CancelSlot>,
}

/// Where a run stands when a driver takes it over.
pub(crate) struct Position<S: State> {
    pub state: S,
    pub head: Seq,
    pub last_boundary: Seq,
    pub since_snapshot: u32,
    pub progress: Progress<S::Update>,
}

enum Step<S: State> {
    Continue,
    Ended(RunOutcome<S>),
}

/// Why planning the next superstep failed.
enum PlanFail {
    Route(RouteError),
    Router(String),
}

impl From<RouteError> for PlanFail {
    fn from(e: RouteError) -> Self {
        PlanFail::Route(e)
    }
}

/// Computes the tasks that follow `finished` on `state`, evaluating routers.
pub(crate) fn plan<S: State>(
    g: &GraphInner<S>,
    state: &S,
    finished: &[&str],
    barriers: &mut Barriers,
) -> Result<Vec<Task>, Failure> {
    g.topology
        .plan(finished, barriers, |i| {
            let router = &g.routers[i];
            let route = std::panic::catch_unwind(AssertUnwindSafe(|| router(state)))
                .map_err(|p| PlanFail::Router(format!("router panicked: {}", panic_message(&p))))?;
            match route.error {
                Some(e) => Err(PlanFail::Router(e)),
                None => Ok::<Vec<Target>, PlanFail>(route.targets),
            }
        })
        .map_err(|e| match e {
            PlanFail::Route(e) => Failure::new(FailureKind::InvalidRoute, e.to_string()),
            PlanFail::Router(m) => Failure::new(FailureKind::InvalidRoute, m),
        })
}

/// The tasks of a run's first superstep.
pub(crate) fn first_tasks<S: State>(g: &GraphInner<S>, state: &S) -> Result<Boundary, Failure> {
    let mut barriers = Barriers::new();
    let next = plan(g, state, &[START], &mut barriers)?;
    Ok(Boundary { next, barriers })
}

pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

impl<S: State> Driver<S> {
    pub(crate) fn new(
        g: Arc<GraphInner<S>>,
        shared: Arc<Shared>,
        thread_id: ThreadId,
        at: Position<S>,
        cancel_slot: Arc<CancelSlot>,
    ) -> Self {
        let Position {
            state,
            head,
            last_boundary,
            since_snapshot,
            progress: p,
        } = at;
        Driver {
            g,
            shared,
            thread_id,
            run_id: p.run_id,
            settings: p.settings,
            state,
            head,
            durable_head: head,
            buffer: Vec::new(),
            superstep: p.superstep,
            tasks: p.tasks,
            barriers: p.barriers,
            done: p.done,
            failed: p.failed,
            retry_at: p.retry_at,
            last_boundary,
            since_snapshot,
            cancel: cancel_slot.token.clone(),
            cancel_slot,
        }
    }

    /// Drives the run to its end.
    pub(crate) async fn run(mut self) -> Result<RunOutcome<S>, Error> {
        let deadline = self.settings.deadline.map(|d| {
            let left = d.0.saturating_sub(Timestamp::now().0).max(0) as u64;
            tokio::time::Instant::now() + Duration::from_millis(left)
        });
        loop {
            if self.tasks.is_empty() {
                return self.complete().await;
            }
            if self.superstep >= self.settings.superstep_limit {
                let f = Failure::new(
                    FailureKind::SuperstepLimit,
                    format!(
                        "the run reached its limit of {} supersteps; raise it with RunOptions::superstep_limit if the loop is intended",
                        self.settings.superstep_limit
                    ),
                );
                return self.end_failed(Vec::new(), f).await;
            }
            match self.superstep(deadline).await? {
                Step::Continue => {}
                Step::Ended(outcome) => return Ok(outcome),
            }
        }
    }

    fn spawn_attempt(
        &self,
        set: &mut Running<S>,
        task: u32,
        attempt: u32,
        delay: Option<Duration>,
        parallel: bool,
    ) {
        let t = &self.tasks[task as usize];
        let node_index = self
            .g
            .topology
            .node_index(t.node())
            .expect("invariant: planned tasks name graph nodes");
        let spec = &self.g.nodes[node_index];
        let run = spec.run.clone();
        let timeout = spec.policy.timeout;
        let ctx = Context {
            inner: Arc::new(ContextInner {
                thread_id: self.thread_id.clone(),
                run_id: self.run_id,
                node: t.node().to_owned(),
                superstep: self.superstep,
                task,
                attempt,
                input: t.input().cloned(),
                cancel: self.cancel.child_token(),
            }),
        };
        let state = self.state.clone();
        let fut = async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            // The node function is called inside `catch_unwind` too: a panic in its
            // synchronous part, before its future exists, is a node panic like any other.
            let fut = AssertUnwindSafe(async move { run(state, ctx).await }).catch_unwind();
            let result = match timeout {
                None => fut.await,
                Some(limit) => match tokio::time::timeout(limit, fut).await {
                    Ok(r) => r,
                    Err(_) => Ok(Err(NodeError::with_kind(
                        FailureKind::NodeTimeout,
                        format!("attempt exceeded its timeout of {limit:?}"),
                    ))),
                },
            };
            let result = result.unwrap_or_else(|p| {
                Err(NodeError::with_kind(
                    FailureKind::NodePanicked,
                    format!("node panicked: {}", panic_message(&p)),
                )
                .into_permanent())
            });
            (task, attempt, result)
        };
        // A superstep of several tasks runs them on the runtime's worker threads (true
        // parallelism); a lone task runs inside the driver's own task, which saves two
        // cross-thread wake-ups per node.
        if parallel {
            let handle = AbortOnDropHandle::new(tokio::spawn(fut));
            set.push(Box::pin(async move { handle.await.ok() }));
        } else {
            set.push(Box::pin(async move { Some(fut.await) }));
        }
    }

    async fn superstep(
        &mut self,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Step<S>, Error> {
        let mut set = Running::<S>::new();
        let pending = self.tasks.len() - self.done.len();
        let parallel = pending > 1;
        for i in 0..self.tasks.len() as u32 {
            if !self.done.contains_key(&i) {
                let attempt = self.failed.get(&i).copied().unwrap_or(0) + 1;
                // A retry recorded before a crash keeps its due time.
                let delay = self.retry_at.remove(&i).map(|at| {
                    Duration::from_millis(at.0.saturating_sub(Timestamp::now().0).max(0) as u64)
                });
                self.spawn_attempt(&mut set, i, attempt, delay, parallel);
            }
        }
        loop {
            let first = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    set.clear();
                    return self.end_cancelled().await.map(Step::Ended);
                }
                _ = sleep_until(deadline) => {
                    set.clear();
                    self.cancel.cancel();
                    let f = Failure::new(FailureKind::RunTimeout, "the run exceeded its timeout");
                    return self.end_failed(Vec::new(), f).await.map(Step::Ended);
                }
                r = set.next() => r,
            };
            let Some(first) = first else {
                unreachable!("invariant: a superstep with pending tasks has running attempts")
            };
            let mut finished = vec![first];
            while let Some(Some(r)) = set.next().now_or_never() {
                finished.push(r);
            }
            let mut events = Vec::new();
            let mut fatal = None;
            for joined in finished {
                // Attempts catch their own panics; `None` means a spawned attempt was aborted.
                let Some((task, attempt, result)) = joined else {
                    continue;
                };
                let node = self.tasks[task as usize].node().to_owned();
                match result {
                    Ok(out) => {
                        // The driver merges the update *as recorded*: encoded, then decoded
                        // again, exactly what a replay of the log will merge. An update that
                        // does not survive the trip (a NaN, a lossy custom Serialize) fails the
                        // node instead of producing a thread that no longer replays.
                        let recorded = Payload::encode(&out.update)
                            .map_err(|e| format!("update does not serialize: {e}"))
                            .and_then(|p| {
                                p.decode::<S::Update>()
                                    .map(|u| (p, u))
                                    .map_err(|e| format!("update does not read back from JSON {e}"))
                            });
                        let (update, decoded) = match recorded {
                            Ok(r) => r,
                            Err(message) => {
                                fatal = Some(
                                    Failure::new(FailureKind::Serialization, message)
                                        .at_node(&node),
                                );
                                continue;
                            }
                        };
                        events.push(EventBody::NodeCompleted {
                            superstep: self.superstep,
                            task,
                            node,
                            attempt,
                            update,
                            boundary: None,
                        });
                        self.done.insert(task, decoded);
                    }
                    Err(err) => {
                        let policy = &self.g.nodes[self
                            .g
                            .topology
                            .node_index(&node)
                            .expect("invariant: task node exists")]
                        .policy;
                        let retry = policy.retry.should_retry(&err, attempt) && fatal.is_none();
                        let delay = retry.then(|| policy.retry.delay(attempt));
                        tracing::warn!(thread_id = %self.thread_id, run_id = %self.run_id, node = %node, attempt, retry = retry, error = %err, "node attempt failed");
                        events.push(EventBody::NodeFailed {
                            superstep: self.superstep,
                            task,
                            node: node.clone(),
                            attempt,
                            error: err.to_failure(&node),
                            retry_at: delay.map(|d| Timestamp::now().plus(d)),
                        });
                        self.failed.insert(task, attempt);
                        match delay {
                            Some(d) => {
                                self.spawn_attempt(&mut set, task, attempt + 1, Some(d), parallel)
                            }
                            None => {
                                if fatal.is_none() {
                                    fatal = Some(err.to_failure(&node));
                                }
                            }
                        }
                    }
                }
            }
            if let Some(f) = fatal {
                set.clear();
                // Retries scheduled in this batch will not happen: the run ends.
                for e in &mut events {
                    if let EventBody::NodeFailed { retry_at, .. } = e {
                        *retry_at = None;
                    }
                }
                return self.end_failed(events, f).await.map(Step::Ended);
            }
            if self.done.len() < self.tasks.len() {
                if !events.is_empty() {
                    self.commit(events, None, false).await?;
                }
                continue;
            }
            return self.close_superstep(events).await;
        }
    }

    /// Merges the superstep, plans the next one, and commits both with the last results.
    async fn close_superstep(&mut self, mut events: Vec<EventBody>) -> Result<Step<S>, Error> {
        let done = std::mem::take(&mut self.done);
        let mut merged = self.state.clone();
        if let Err(e) = crate::replay::merge(&mut merged, &self.tasks, done) {
            let f = Failure::new(FailureKind::ReduceConflict, e);
            return self.end_failed(events, f).await.map(Step::Ended);
        }
        let finished: Vec<&str> = self.tasks.iter().map(Task::node).collect();
        let mut barriers = self.barriers.clone();
        let next = match plan(&self.g, &merged, &finished, &mut barriers) {
            Ok(n) => n,
            Err(f) => return self.end_failed(events, f).await.map(Step::Ended),
        };
        let boundary = Boundary {
            next: next.clone(),
            barriers: barriers.clone(),
        };
        match events.iter_mut().rev().find_map(|e| match e {
            EventBody::NodeCompleted { boundary, .. } => Some(boundary),
            _ => None,
        }) {
            Some(slot) => *slot = Some(boundary),
            None => unreachable!(
                "invariant: the commit that closes a superstep records its last completion"
            ),
        }
        self.state = merged;
        self.superstep += 1;
        self.tasks = next;
        self.barriers = barriers;
        self.failed.clear();
        self.retry_at.clear();
        self.since_snapshot += 1;
        // The boundary event's seq: the last NodeCompleted in `events`.
        let boundary_pos = events
            .iter()
            .rposition(|e| matches!(e, EventBody::NodeCompleted { .. }))
            .expect("invariant: boundary event present");
        self.last_boundary = Seq(self.head.0 + 1 + boundary_pos as u64);
        if self.tasks.is_empty() {
            events.push(EventBody::RunCompleted);
            let status = RunStatus::Completed {
                checkpoint: CheckpointId(self.last_boundary),
            };
            self.commit(events, Some(status), true).await?;
            return Ok(Step::Ended(self.completed_outcome()));
        }
        let snapshot = self.since_snapshot >= self.shared.options.snapshot_every.max(1);
        self.commit(events, None, snapshot).await?;
        Ok(Step::Continue)
    }

    fn completed_outcome(&self) -> RunOutcome<S> {
        RunOutcome::Completed {
            run_id: self.run_id,
            state: self.state.clone(),
        }
    }

    /// The run has no tasks left (e.g. START routed straight to END).
    async fn complete(&mut self) -> Result<RunOutcome<S>, Error> {
        let status = RunStatus::Completed {
            checkpoint: CheckpointId(self.last_boundary),
        };
        self.commit(vec![EventBody::RunCompleted], Some(status), true)
            .await?;
        Ok(self.completed_outcome())
    }

    async fn end_failed(
        &mut self,
        mut events: Vec<EventBody>,
        error: Failure,
    ) -> Result<RunOutcome<S>, Error> {
        tracing::info!(thread_id = %self.thread_id, run_id = %self.run_id, error = %error, "run failed");
        events.push(EventBody::RunFailed {
            error: error.clone(),
        });
        self.commit(
            events,
            Some(RunStatus::Failed {
                error: error.clone(),
            }),
            false,
        )
        .await?;
        Ok(RunOutcome::Failed {
            run_id: self.run_id,
            error,
        })
    }

    async fn end_cancelled(&mut self) -> Result<RunOutcome<S>, Error> {
        let reason = self
            .cancel_slot
            .reason()
            .unwrap_or_else(|| "cancelled".to_owned());
        tracing::info!(thread_id = %self.thread_id, run_id = %self.run_id, reason = %reason, "run cancelled");
        let events = vec![EventBody::RunCancelled {
            reason: reason.clone(),
        }];
        self.commit(
            events,
            Some(RunStatus::Cancelled {
                reason: reason.clone(),
            }),
            false,
        )
        .await?;
        Ok(RunOutcome::Cancelled {
            run_id: self.run_id,
            reason,
        })
    }

    /// Appends events (and a status change) to the thread, honouring the run's durability.
    async fn commit(
        &mut self,
        bodies: Vec<EventBody>,
        status: Option<RunStatus>,
        snapshot: bool,
    ) -> Result<(), Error> {
        let at = Timestamp::now();
        for body in bodies {
            self.head = self.head.next();
            self.buffer.push(Event {
                seq: self.head,
                run_id: self.run_id,
                at,
                body,
            });
        }
        let ends = status.as_ref().is_some_and(RunStatus::is_terminal);
        if self.settings.durability == Durability::Exit && !ends {
            return Ok(());
        }
        let snapshot = if snapshot
            || (ends
                && self.settings.durability == Durability::Exit
                && self.last_boundary > self.durable_head)
        {
            match Payload::encode(&self.state) {
                Ok(state) => {
                    self.since_snapshot = 0;
                    Some(Snapshot {
                        at_seq: self.last_boundary,
                        run_id: self.run_id,
                        next_superstep: self.superstep,
                        state,
                        boundary: Boundary {
                            next: self.tasks.clone(),
                            barriers: self.barriers.clone(),
                        },
                        created_at: at,
                    })
                }
                // The log is the source of truth; a state that does not serialize only
                // costs the snapshot.
                Err(e) => {
                    tracing::warn!(thread_id = %self.thread_id, error = %e, "state does not serialize; snapshot skipped");
                    None
                }
            }
        } else {
            None
        };
        let commit = Commit {
            thread_id: self.thread_id.clone(),
            expected_head: self.durable_head,
            events: std::mem::take(&mut self.buffer),
            run: status.map(|status| RunWrite::SetStatus {
                run_id: self.run_id,
                status,
            }),
            snapshot,
            durability: self.settings.durability,
        };
        self.shared.write(commit).await.map_err(|e| match e {
            store::Error::Conflict { .. } => Error::Superseded {
                thread_id: self.thread_id.clone(),
                run_id: self.run_id,
            },
            other => Error::from(other),
        })?;
        self.durable_head = self.head;
        Ok(())
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
