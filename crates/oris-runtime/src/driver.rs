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

use std::collections::BTreeMap;
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
use oris_core::id::{CheckpointId, InterruptId, RunId, Seq, ThreadId, Timestamp};
use oris_core::state::State;
use oris_core::status::{PendingInterrupt, RunStatus};
use oris_core::store::{self, Commit, Fence, RunWrite, Snapshot};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::engine::{CancelSlot, Shared};
use crate::error::Error;
use crate::graph::GraphInner;
use crate::node::{BoxFuture, Context, ContextInner, NodeError, NodeOutput};
use crate::outcome::RunOutcome;
use crate::record::{
    BREAKPOINT_AFTER, BREAKPOINT_BEFORE, Block, Record, RecordRequest, Recorder, Records,
    apply_record, blocked_on,
};
use crate::replay::Progress;

type AttemptResult<S> = (u32, u32, Result<NodeOutput<S>, NodeError>);

/// The attempts in flight in one superstep. Dropping it cancels them all: inline futures are
/// dropped, spawned ones aborted. `None`: an attempt that never ran its node (a spawned one
/// was aborted, or a delayed retry was dropped by a graceful stop).
type Running<S> = FuturesUnordered<BoxFuture<Option<AttemptResult<S>>>>;

/// How a lease holder learns that it lost the lease: fired by the heartbeat when a renewal
/// is refused, or by a newer claim of the same run in this process.
#[derive(Debug, Default)]
pub(crate) struct LeaseLoss {
    token: CancellationToken,
    reason: std::sync::OnceLock<&'static str>,
}

impl LeaseLoss {
    pub fn fire(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub fn is_fired(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn reason(&self) -> &'static str {
        self.reason.get().copied().unwrap_or("lost")
    }

    pub async fn fired(&self) {
        self.token.cancelled().await
    }
}

/// The lease a run is driven under (a worker's claim), if any. Every commit carries its
/// fence; the store refuses them once the lease is lost.
pub(crate) struct LeaseCtl {
    pub fence: Fence,
    pub loss: Arc<LeaseLoss>,
    /// Graceful stop: start no new node attempt, let the running ones finish and commit.
    pub stop: CancellationToken,
}

/// How a driver returned.
pub(crate) enum Driven<S> {
    /// The run ended or suspended.
    Ended(RunOutcome<S>),
    /// A graceful stop: running attempts finished and were committed, the run still runs
    /// (only leased drivers stop this way).
    Stopped,
}

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
    /// Recorded calls of the current superstep's tasks.
    pub records: Records,
    /// Nodes' requests to record calls.
    requests: mpsc::UnboundedReceiver<RecordRequest>,
    request_tx: mpsc::UnboundedSender<RecordRequest>,
    /// Whether the stored status is `interrupted` or `waiting` (the run was suspended).
    suspended: bool,
    /// Paused tasks whose timer is due, event arrived or wait timed out: run them again.
    wake: std::collections::BTreeSet<u32>,
    /// Deliveries consumed by this driver (their commit may still be buffered).
    claimed: std::collections::HashSet<oris_core::id::DeliveryId>,
    /// When the run must be woken up if it suspends (earliest timer or wait deadline).
    pub wake_at: Option<Timestamp>,
    /// Recorded steps of the run a replay comes from.
    prior: crate::engine::PriorSteps,
    /// The lease this driver holds, when a worker claimed the run.
    pub lease: Option<LeaseCtl>,
    /// Whether the lease is still held: false once a commit ended it (a status other than
    /// running: the run suspended or finished).
    pub holds_lease: bool,
    /// A graceful stop was requested: no new attempts.
    stopping: bool,
    /// Resume values recorded by the caller just before, not yet applied.
    answered: BTreeMap<InterruptId, Payload>,
}

/// Where a run stands when a driver takes it over.
pub(crate) struct Position<S: State> {
    pub state: S,
    pub head: Seq,
    pub last_boundary: Seq,
    pub since_snapshot: u32,
    pub progress: Progress<S::Update>,
    /// Whether the run's stored status is `interrupted` or `waiting`.
    pub suspended: bool,
    /// Recorded steps of the run a replay comes from.
    pub prior: crate::engine::PriorSteps,
}

enum Step<S: State> {
    Continue,
    Ended(RunOutcome<S>),
    Stopped,
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
    plan_with(g, state, finished, &[], &[], barriers)
}

/// [`plan`] with the routing commands (`ctx.goto`) of the finished tasks.
pub(crate) fn plan_with<S: State>(
    g: &GraphInner<S>,
    state: &S,
    finished: &[&str],
    overridden: &[&str],
    goto: &[&str],
    barriers: &mut Barriers,
) -> Result<Vec<Task>, Failure> {
    g.topology
        .plan_with(finished, overridden, goto, barriers, |i| {
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

/// The targets a task chose with `ctx.goto`, from its records.
fn goto_of(records: &std::collections::BTreeMap<u32, Record>) -> Option<Vec<String>> {
    records.values().rev().find_map(|r| match r {
        Record::Step {
            name,
            result: oris_core::event::StepResult::Ok(p),
        } if name == crate::record::GOTO_STEP => p.decode().ok(),
        _ => None,
    })
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
            suspended,
            prior,
        } = at;
        let (request_tx, requests) = mpsc::unbounded_channel();
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
            records: p.records,
            requests,
            request_tx,
            suspended,
            wake: Default::default(),
            claimed: Default::default(),
            wake_at: None,
            prior,
            lease: None,
            holds_lease: false,
            stopping: false,
            answered: BTreeMap::new(),
        }
    }

    /// Resume values the caller has just recorded in the store (as the store returned
    /// them): a task paused at one of these interrupts is woken with its value without
    /// reading the interrupt back.
    pub(crate) fn with_answers(mut self, answered: BTreeMap<InterruptId, Payload>) -> Self {
        self.answered = answered;
        self
    }

    /// Drives the run under a lease: every commit is fenced, a lost lease stops it at
    /// once, `stop` stops it gracefully, and a suspension is never settled in-process.
    pub(crate) fn with_lease(mut self, lease: LeaseCtl) -> Self {
        self.lease = Some(lease);
        self.holds_lease = true;
        self
    }

    fn lease_lost(&self) -> Error {
        match &self.lease {
            Some(l) => Error::LeaseLost {
                run_id: self.run_id,
                epoch: l.fence.epoch,
                reason: l.loss.reason(),
            },
            None => unreachable!("invariant: only a leased driver can lose its lease"),
        }
    }

    /// Whether a graceful stop was requested (now or before).
    fn stop_requested(&mut self) -> bool {
        if !self.stopping && self.lease.as_ref().is_some_and(|l| l.stop.is_cancelled()) {
            self.stopping = true;
        }
        self.stopping
    }

    /// Whether a task of the superstep is neither done nor paused: it needs an attempt
    /// (one a graceful stop did not start).
    fn has_unstarted(&self) -> bool {
        (0..self.tasks.len() as u32)
            .any(|i| !self.done.contains_key(&i) && blocked_on(&self.records, i).is_none())
    }

    /// Ends a graceful stop: what is still unwritten is committed, the run stays running.
    async fn stopped(&mut self, events: Vec<EventBody>) -> Result<Step<S>, Error> {
        if !events.is_empty() || !self.buffer.is_empty() {
            self.commit(events, None, false).await?;
        }
        tracing::info!(thread_id = %self.thread_id, run_id = %self.run_id, superstep = self.superstep, "driver stopped gracefully");
        Ok(Step::Stopped)
    }

    /// Drives the run to its end (or, under a lease, until it is stopped or the lease is
    /// lost: [`Error::LeaseLost`]).
    pub(crate) async fn run(&mut self) -> Result<Driven<S>, Error> {
        let deadline = self.settings.deadline.map(|d| {
            let left = d.0.saturating_sub(Timestamp::now().0).max(0) as u64;
            tokio::time::Instant::now() + Duration::from_millis(left)
        });
        if self.suspended {
            // A suspended run continues only when something it waits on is ready: a resume
            // value, a due timer, an arrived event, a passed deadline.
            let (resumed, ready) = self.wakeable().await?;
            if !ready {
                return Ok(Driven::Ended(self.paused_outcome()));
            }
            let mut events = resumed;
            events.push(EventBody::RunResumed);
            self.commit(events, Some(RunStatus::Running), false).await?;
            self.suspended = false;
            tracing::info!(thread_id = %self.thread_id, run_id = %self.run_id, "run resumed");
        }
        loop {
            if self.lease.as_ref().is_some_and(|l| l.loss.is_fired()) {
                return Err(self.lease_lost());
            }
            if self.tasks.is_empty() {
                return self.complete().await.map(Driven::Ended);
            }
            if self.superstep >= self.settings.superstep_limit {
                let f = Failure::new(
                    FailureKind::SuperstepLimit,
                    format!(
                        "the run reached its limit of {} supersteps; raise it with RunOptions::superstep_limit if the loop is intended",
                        self.settings.superstep_limit
                    ),
                );
                return self.end_failed(Vec::new(), f).await.map(Driven::Ended);
            }
            if self.stop_requested() {
                self.stopped(Vec::new()).await?;
                return Ok(Driven::Stopped);
            }
            match self.superstep(deadline).await? {
                Step::Continue => {}
                Step::Ended(outcome) => return Ok(Driven::Ended(outcome)),
                Step::Stopped => return Ok(Driven::Stopped),
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
                recorder: Recorder {
                    records: std::sync::Mutex::new(
                        self.records.get(&task).cloned().unwrap_or_default(),
                    ),
                    next: std::sync::Mutex::new(0),
                    tx: self.request_tx.clone(),
                    prior: self
                        .prior
                        .get(&(self.superstep, task))
                        .filter(|(node, _)| node == t.node())
                        .map(|(_, r)| r.clone())
                        .unwrap_or_default(),
                },
                clock: self.shared.options.clock.clone(),
            }),
        };
        let state = self.state.clone();
        let stop = self.lease.as_ref().map(|l| l.stop.clone());
        let fut = async move {
            if let Some(d) = delay {
                // A retry that has not started by a graceful stop does not start: its
                // `NodeFailed` already records when it is due, for the next driver.
                match &stop {
                    Some(stop) => {
                        tokio::select! {
                            _ = tokio::time::sleep(d) => {}
                            _ = stop.cancelled() => return None,
                        }
                    }
                    None => tokio::time::sleep(d).await,
                }
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
            Some((task, attempt, result))
        };
        // One span per node attempt. Its `attempt_id` (`<run>.<superstep>.<task>.<attempt>`)
        // names the attempt in logs; under a worker's `execute` span it also carries the
        // lease epoch and worker id.
        let span = tracing::info_span!(
            "node",
            node = t.node(),
            attempt,
            attempt_id = %format_args!("{}.{}.{task}.{attempt}", self.run_id, self.superstep),
            thread_id = %self.thread_id,
            run_id = %self.run_id,
        );
        let fut = tracing::Instrument::instrument(fut, span);
        // A superstep of several tasks runs them on the runtime's worker threads (true
        // parallelism); a lone task runs inside the driver's own task, which saves two
        // cross-thread wake-ups per node.
        if parallel {
            let handle = AbortOnDropHandle::new(tokio::spawn(fut));
            set.push(Box::pin(async move { handle.await.ok().flatten() }));
        } else {
            set.push(Box::pin(fut));
        }
    }

    /// Whether a static breakpoint applies to `node` at `index`.
    fn breakpoint(&self, node: &str, index: u32) -> bool {
        let (graph, run) = match index {
            BREAKPOINT_BEFORE => (&self.g.interrupt_before, &self.settings.interrupt_before),
            _ => (&self.g.interrupt_after, &self.settings.interrupt_after),
        };
        graph.iter().chain(run).any(|n| n == node)
    }

    /// The breakpoint interrupt at `index` that blocks `task`: `Some(None)` if it must be
    /// raised, `Some(Some(id))` if raised and unanswered, `None` if it does not block.
    fn breakpoint_blocks(&self, task: u32, index: u32) -> Option<Option<InterruptId>> {
        if !self.breakpoint(self.tasks[task as usize].node(), index) {
            return None;
        }
        match self.records.get(&task).and_then(|r| r.get(&index)) {
            None => Some(None),
            Some(Record::Interrupt {
                id, resumed: None, ..
            }) => Some(Some(*id)),
            Some(_) => None,
        }
    }

    /// Raises a breakpoint interrupt for `task` (driver-generated, recorded like a node's).
    fn raise_breakpoint(&mut self, task: u32, index: u32) -> EventBody {
        let node = self.tasks[task as usize].node().to_owned();
        let payload = serde_json::json!({
            "breakpoint": if index == BREAKPOINT_BEFORE { "before" } else { "after" },
            "node": node,
        });
        let body = EventBody::InterruptRaised {
            superstep: self.superstep,
            task,
            node,
            index,
            interrupt_id: InterruptId::generate(),
            payload: Payload::encode(&payload).expect("invariant: a JSON value serializes"),
        };
        apply_record(&mut self.records, &body);
        body
    }

    /// Starts every task of the superstep that is not done and not waiting on an
    /// interrupt. Returns breakpoint interrupts raised on the way (to be committed).
    fn start_tasks(&mut self, set: &mut Running<S>) -> Vec<EventBody> {
        let mut raised = Vec::new();
        let wake = std::mem::take(&mut self.wake);
        let runnable: Vec<u32> = (0..self.tasks.len() as u32)
            .filter(|i| {
                !self.done.contains_key(i)
                    && (wake.contains(i) || blocked_on(&self.records, *i).is_none())
            })
            .collect();
        let parallel = runnable.len() > 1;
        for i in runnable {
            match self.breakpoint_blocks(i, BREAKPOINT_BEFORE) {
                Some(None) => {
                    raised.push(self.raise_breakpoint(i, BREAKPOINT_BEFORE));
                    continue;
                }
                Some(Some(_)) => continue,
                None => {}
            }
            let attempt = self.failed.get(&i).copied().unwrap_or(0) + 1;
            // A retry recorded before a crash keeps its due time.
            let delay = self.retry_at.remove(&i).map(|at| {
                Duration::from_millis(at.0.saturating_sub(Timestamp::now().0).max(0) as u64)
            });
            self.spawn_attempt(set, i, attempt, delay, parallel);
        }
        raised
    }

    /// Checks what paused tasks wait on. Resume values waiting in the store become
    /// `InterruptResumed` events (returned, already applied to the records); tasks whose
    /// timer is due, whose event arrived or whose wait timed out are marked to run again.
    /// Returns the events and whether any paused task can run.
    async fn wakeable(&mut self) -> Result<(Vec<EventBody>, bool), Error> {
        let now = self.shared.options.clock.now();
        let mut events = Vec::new();
        let mut ready = false;
        let mut deliveries = None;
        for task in 0..self.tasks.len() as u32 {
            if self.done.contains_key(&task) {
                continue;
            }
            let due = match blocked_on(&self.records, task) {
                None => true,
                Some(Block::Interrupt(id)) => match self.answer_of(id).await? {
                    Some(value) => {
                        let body = EventBody::InterruptResumed {
                            interrupt_id: id,
                            value,
                        };
                        apply_record(&mut self.records, &body);
                        events.push(body);
                        blocked_on(&self.records, task).is_none()
                    }
                    None => false,
                },
                Some(Block::Timer(at)) => at <= now,
                Some(Block::Event { name, deadline }) => {
                    if deadline <= now {
                        true
                    } else {
                        if deliveries.is_none() {
                            deliveries =
                                Some(self.shared.store.deliveries(&self.thread_id, true).await?);
                        }
                        deliveries.as_ref().is_some_and(|ds| {
                            ds.iter()
                                .any(|d| d.name == name && !self.claimed.contains(&d.delivery_id))
                        })
                    }
                }
            };
            if due {
                self.wake.insert(task);
                ready = true;
            }
        }
        Ok((events, ready))
    }

    /// The resume value waiting in the store for interrupt `id`, if any: one the caller
    /// handed over ([`Driver::with_answers`]) is used once without a read.
    async fn answer_of(&mut self, id: InterruptId) -> Result<Option<Payload>, Error> {
        if let Some(value) = self.answered.remove(&id) {
            return Ok(Some(value));
        }
        Ok(self
            .shared
            .store
            .interrupt(id)
            .await?
            .and_then(|r| r.answer.map(|(value, _)| value)))
    }

    /// The earliest timer or deadline and the events paused tasks wait on.
    fn waits(&self) -> (Option<Timestamp>, Vec<String>) {
        let mut until: Option<Timestamp> = None;
        let mut names = Vec::new();
        for task in 0..self.tasks.len() as u32 {
            if self.done.contains_key(&task) {
                continue;
            }
            match blocked_on(&self.records, task) {
                Some(Block::Timer(at)) => until = Some(until.map_or(at, |u| u.min(at))),
                Some(Block::Event { name, deadline }) => {
                    until = Some(until.map_or(deadline, |u| u.min(deadline)));
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                _ => {}
            }
        }
        (until, names)
    }

    /// The interrupts the run waits on, for its status and outcome.
    fn pending_interrupts(&self) -> Vec<PendingInterrupt> {
        let mut out = Vec::new();
        for (task, records) in &self.records {
            if self.done.contains_key(task) {
                continue;
            }
            for r in records.values() {
                if let Record::Interrupt {
                    id,
                    payload,
                    resumed: None,
                } = r
                {
                    out.push(PendingInterrupt {
                        interrupt_id: *id,
                        node: self.tasks[*task as usize].node().to_owned(),
                        payload: serde_json::from_str(payload.json())
                            .unwrap_or(serde_json::Value::Null),
                    });
                }
            }
        }
        out
    }

    /// The status of the run while its remaining tasks are paused.
    fn paused_status(&self) -> RunStatus {
        let interrupts = self.pending_interrupts();
        if interrupts.is_empty() {
            let (until, events) = self.waits();
            RunStatus::Waiting { until, events }
        } else {
            RunStatus::Interrupted { interrupts }
        }
    }

    fn paused_outcome(&mut self) -> RunOutcome<S> {
        self.wake_at = self.waits().0;
        match self.paused_status() {
            RunStatus::Interrupted { interrupts } => RunOutcome::Interrupted {
                run_id: self.run_id,
                interrupts,
            },
            RunStatus::Waiting { until, events } => RunOutcome::Waiting {
                run_id: self.run_id,
                until,
                events,
            },
            _ => unreachable!("invariant: paused_status is interrupted or waiting"),
        }
    }

    /// Every task is done or paused: apply what already arrived (resume values, due timers,
    /// events) and go on, or suspend the run.
    async fn settle(
        &mut self,
        set: &mut Running<S>,
        mut events: Vec<EventBody>,
    ) -> Result<Option<RunOutcome<S>>, Error> {
        // Under a lease the run always suspends: the store makes it ready again (answers
        // and events that raced the suspension included) and a worker claims it.
        let (resumed, ready) = if self.lease.is_some() {
            (Vec::new(), false)
        } else {
            self.wakeable().await?
        };
        if ready {
            events.extend(resumed);
            events.extend(self.start_tasks(set));
            if !events.is_empty() {
                self.commit(events, None, false).await?;
            }
            return Ok(None);
        }
        events.extend(resumed);
        let (until, waiting_for) = self.waits();
        events.push(EventBody::RunSuspended {
            interrupts: self
                .pending_interrupts()
                .iter()
                .map(|p| p.interrupt_id)
                .collect(),
            until,
            events: waiting_for,
        });
        let status = self.paused_status();
        self.commit(events, Some(status), false).await?;
        for p in self.pending_interrupts() {
            tracing::info!(thread_id = %self.thread_id, run_id = %self.run_id, interrupt_id = %p.interrupt_id, node = %p.node, "interrupt pending");
        }
        tracing::info!(thread_id = %self.thread_id, run_id = %self.run_id, until = ?until, "run suspended");
        Ok(Some(self.paused_outcome()))
    }

    async fn superstep(
        &mut self,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Step<S>, Error> {
        let loss = self.lease.as_ref().map(|l| l.loss.clone());
        let stop = self.lease.as_ref().map(|l| l.stop.clone());
        let mut set = Running::<S>::new();
        let mut carried = self.start_tasks(&mut set);
        loop {
            if set.is_empty() && self.done.len() < self.tasks.len() {
                if self.stopping && self.has_unstarted() {
                    return self.stopped(std::mem::take(&mut carried)).await;
                }
                // Nothing runs and the superstep is not complete: every remaining task waits
                // on an interrupt.
                match self.settle(&mut set, std::mem::take(&mut carried)).await? {
                    Some(outcome) => return Ok(Step::Ended(outcome)),
                    None => continue,
                }
            }
            let first = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    set.clear();
                    return self.end_cancelled().await.map(Step::Ended);
                }
                _ = lease_lost(loss.as_deref()) => {
                    // Nothing more may be written: drop the attempts, stop at once.
                    set.clear();
                    return Err(self.lease_lost());
                }
                _ = sleep_until(deadline) => {
                    set.clear();
                    self.cancel.cancel();
                    let f = Failure::new(FailureKind::RunTimeout, "the run exceeded its timeout");
                    return self.end_failed(Vec::new(), f).await.map(Step::Ended);
                }
                _ = stop_requested(stop.as_ref()), if !self.stopping => {
                    self.stopping = true;
                    tracing::info!(thread_id = %self.thread_id, run_id = %self.run_id, running = set.len(), "graceful stop: finishing running attempts");
                    continue;
                }
                // The attempts before the requests they send: a node that asks for a record
                // (a step, an interrupt) is then served in this same poll instead of after a
                // round trip through the scheduler.
                r = set.next(), if !set.is_empty() => r,
                Some(req) = self.requests.recv() => {
                    self.record_requests(req, std::mem::take(&mut carried)).await?;
                    continue;
                }
            };
            let Some(first) = first else {
                unreachable!("invariant: a superstep with pending tasks has running attempts")
            };
            let mut finished = vec![first];
            while let Some(Some(r)) = set.next().now_or_never() {
                finished.push(r);
            }
            let mut events = std::mem::take(&mut carried);
            let mut fatal = None;
            for joined in finished {
                // Attempts catch their own panics; `None` means a spawned attempt was aborted.
                let Some((task, attempt, result)) = joined else {
                    continue;
                };
                let node = self.tasks[task as usize].node().to_owned();
                match result {
                    Ok(_) if self.breakpoint_blocks(task, BREAKPOINT_AFTER).is_some() => {
                        // The node ran; a breakpoint after it pauses the run before its update
                        // counts. On resume it runs again (its steps return their records).
                        if let Some(None) = self.breakpoint_blocks(task, BREAKPOINT_AFTER) {
                            events.push(self.raise_breakpoint(task, BREAKPOINT_AFTER));
                        }
                    }
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
                    // The node paused at an interrupt it recorded: not a failure.
                    Err(err) if err.is_pause() => {}
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
                            // A graceful stop starts no new attempt: the next driver
                            // retries at the recorded `retry_at`.
                            Some(_) if self.stopping => {}
                            Some(d) => {
                                let parallel = self.tasks.len() > 1;
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
                if set.is_empty() {
                    carried = events;
                } else if !events.is_empty() {
                    self.commit(events, None, false).await?;
                }
                continue;
            }
            return self.close_superstep(events).await;
        }
    }

    /// Commits the calls nodes asked to record (this request and any others waiting), then
    /// lets the nodes continue.
    async fn record_requests(
        &mut self,
        first: RecordRequest,
        mut events: Vec<EventBody>,
    ) -> Result<(), Error> {
        enum Ack {
            Recorded(tokio::sync::oneshot::Sender<Result<(), String>>),
            Received(
                tokio::sync::oneshot::Sender<Result<Option<Record>, String>>,
                Option<Record>,
            ),
        }
        let mut acks = Vec::new();
        let mut next = Some(first);
        while let Some(req) = next {
            match req {
                RecordRequest::Record { body, ack } => {
                    apply_record(&mut self.records, &body);
                    events.push(body);
                    acks.push(Ack::Recorded(ack));
                }
                RecordRequest::Receive {
                    superstep,
                    task,
                    node,
                    index,
                    name,
                    deadline,
                    ack,
                } => {
                    let pending = self.shared.store.deliveries(&self.thread_id, true).await?;
                    let found = pending
                        .into_iter()
                        .find(|d| d.name == name && !self.claimed.contains(&d.delivery_id));
                    let body = match found {
                        Some(d) => {
                            self.claimed.insert(d.delivery_id);
                            Some((Some(d.delivery_id), Some(d.payload)))
                        }
                        None if self.shared.options.clock.now() >= deadline => Some((None, None)),
                        None => None,
                    };
                    match body {
                        Some((delivery, payload)) => {
                            let body = EventBody::EventReceived {
                                superstep,
                                task,
                                node,
                                index,
                                name: name.clone(),
                                delivery,
                                payload: payload.clone(),
                            };
                            apply_record(&mut self.records, &body);
                            events.push(body);
                            acks.push(Ack::Received(ack, Some(Record::Received { name, payload })));
                        }
                        None => acks.push(Ack::Received(ack, None)),
                    }
                }
            }
            next = self.requests.try_recv().ok();
        }
        let result = if events.is_empty() {
            Ok(())
        } else {
            self.commit(events, None, false).await
        };
        let failure = result.as_ref().err().map(ToString::to_string);
        for ack in acks {
            match (ack, &failure) {
                (Ack::Recorded(a), None) => {
                    let _ = a.send(Ok(()));
                }
                (Ack::Received(a, r), None) => {
                    let _ = a.send(Ok(r));
                }
                (Ack::Recorded(a), Some(e)) => {
                    let _ = a.send(Err(e.clone()));
                }
                (Ack::Received(a, _), Some(e)) => {
                    let _ = a.send(Err(e.clone()));
                }
            }
        }
        result
    }

    /// Merges the superstep, plans the next one, and commits both with the last results.
    async fn close_superstep(&mut self, mut events: Vec<EventBody>) -> Result<Step<S>, Error> {
        let done = std::mem::take(&mut self.done);
        // Merged in place: if the run fails below, its in-memory state is abandoned.
        let merged = &mut self.state;
        if let Err(e) = crate::replay::merge(merged, &self.tasks, done) {
            let f = Failure::new(FailureKind::ReduceConflict, e);
            return self.end_failed(events, f).await.map(Step::Ended);
        }
        let finished: Vec<&str> = self.tasks.iter().map(Task::node).collect();
        // Routing commands: a task that called `ctx.goto` replaces its node's edges.
        let mut overridden: Vec<&str> = Vec::new();
        let mut goto: Vec<String> = Vec::new();
        for (i, t) in self.tasks.iter().enumerate() {
            if let Some(targets) = self.records.get(&(i as u32)).and_then(goto_of) {
                overridden.push(t.node());
                goto.extend(targets);
            }
        }
        // A node with several tasks keeps its edges if any of its tasks did not `goto`.
        overridden.retain(|n| {
            self.tasks.iter().enumerate().all(|(i, t)| {
                t.node() != *n || self.records.get(&(i as u32)).and_then(goto_of).is_some()
            })
        });
        let goto: Vec<&str> = goto.iter().map(String::as_str).collect();
        if let Some((task, bad)) = self.tasks.iter().enumerate().find_map(|(i, t)| {
            let declared = self.g.topology.gotos.iter().filter(|b| b.from == t.node());
            let chosen = self.records.get(&(i as u32)).and_then(goto_of)?;
            let allowed: Vec<&String> = declared.flat_map(|b| &b.targets).collect();
            chosen
                .into_iter()
                .find(|c| !allowed.contains(&c))
                .map(|c| (t.node().to_owned(), c))
        }) {
            let f = Failure::new(
                FailureKind::InvalidRoute,
                format!("node `{task}` routed to `{bad}` with goto, which is not among its declared goto targets (StateGraph::goto_targets)"),
            )
            .at_node(&task);
            return self.end_failed(events, f).await.map(Step::Ended);
        }
        let mut barriers = self.barriers.clone();
        let next = match plan_with(
            &self.g,
            &self.state,
            &finished,
            &overridden,
            &goto,
            &mut barriers,
        ) {
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
        self.superstep += 1;
        self.tasks = next;
        self.barriers = barriers;
        self.failed.clear();
        self.retry_at.clear();
        self.records.clear();
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
        let ends_lease = status.as_ref().is_some_and(|s| *s != RunStatus::Running);
        // `exit` durability writes only at status changes: the end and interrupts — and a
        // graceful stop, which hands the run over with everything done so far.
        if self.settings.durability == Durability::Exit && status.is_none() && !self.stopping {
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
            fence: self.lease.as_ref().map(|l| l.fence),
        };
        self.shared.write(commit).await.map_err(|e| match e {
            store::Error::Conflict { .. } => Error::Superseded {
                thread_id: self.thread_id.clone(),
                run_id: self.run_id,
            },
            other => Error::from(other),
        })?;
        self.durable_head = self.head;
        if ends_lease {
            self.holds_lease = false;
        }
        Ok(())
    }
}

async fn lease_lost(loss: Option<&LeaseLoss>) {
    match loss {
        Some(l) => l.fired().await,
        None => std::future::pending().await,
    }
}

async fn stop_requested(stop: Option<&CancellationToken>) {
    match stop {
        Some(s) => s.cancelled().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
