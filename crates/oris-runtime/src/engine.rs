//! The engine: registered graphs, a store, and the runs this process drives.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use oris_core::event::{Boundary, Durability, Event, EventBody, Origin, Payload, RunSettings};
use oris_core::id::{CheckpointId, InterruptId, RunId, Seq, ThreadId, Timestamp};
use oris_core::state::{INPUT_WRITER, State, state_hash};
use oris_core::status::{RunStatus, StatusKind};
use oris_core::store::{
    self, Commit, Delivery, InterruptRecord, Receipt, RunFilter, RunRecord, RunWrite, Store,
    ThreadRecord,
};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::driver::{Driven, Driver, LeaseLoss, Position, first_tasks};
use crate::erased::ErasedGraph;
use crate::error::Error;
use crate::graph::{CompiledGraph, GraphInner};
use crate::outcome::{CheckpointInfo, RunOutcome, ThreadState, Verification};
use crate::record::Record;
use crate::replay::{Progress, fold};

/// How soon [`Engine::wait_for`] first reads the store again for changes made elsewhere.
pub const WAIT_POLL_MIN: Duration = Duration::from_millis(10);
/// The longest interval between two reads of [`Engine::wait_for`] (it backs off to it).
pub const WAIT_POLL_MAX: Duration = Duration::from_millis(500);

/// Engine-wide settings. Every field has a default; see each.
#[derive(Clone)]
pub struct EngineOptions {
    /// Durability of runs that do not choose their own. Default [`Durability::Sync`].
    pub durability: Durability,
    /// Write a snapshot of the state every this many supersteps (and at the end of every
    /// completed run). Snapshots only bound recovery time; the log is the truth. Default 64.
    pub snapshot_every: u32,
    /// Supersteps a run may take before it fails with `superstep_limit`. Default 10,000.
    pub superstep_limit: u32,
    /// Time limit of a run, from its start; `None` (the default) means no limit.
    pub run_timeout: Option<Duration>,
    /// Called around every commit (tests, metrics, streaming). Default none.
    pub observer: Option<Arc<dyn Observer>>,
    /// The clock of durable timers. Default [`SystemClock`]; tests use a
    /// [`ManualClock`](crate::ManualClock).
    pub clock: Arc<dyn Clock>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            durability: Durability::Sync,
            snapshot_every: 64,
            superstep_limit: 10_000,
            run_timeout: None,
            observer: None,
            clock: Arc::new(SystemClock),
        }
    }
}

impl fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineOptions")
            .field("durability", &self.durability)
            .field("snapshot_every", &self.snapshot_every)
            .field("superstep_limit", &self.superstep_limit)
            .field("run_timeout", &self.run_timeout)
            .field("observer", &self.observer.is_some())
            .field("clock", &self.clock)
            .finish()
    }
}

/// Per-run overrides of [`EngineOptions`].
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Durability of this run.
    pub durability: Option<Durability>,
    /// Time limit of this run.
    pub timeout: Option<Duration>,
    /// Superstep limit of this run.
    pub superstep_limit: Option<u32>,
    /// Pause before these nodes run (in addition to the graph's own breakpoints).
    pub interrupt_before: Vec<String>,
    /// Pause after these nodes ran, before their update counts.
    pub interrupt_after: Vec<String>,
}

/// How a run starts.
pub(crate) enum Start<S> {
    /// From the thread's current state plus an input.
    Input(S),
    /// From a checkpoint's state and tasks (replay on the same thread, or a fork).
    Checkpoint {
        state: S,
        boundary: Boundary,
        origin: Origin,
        fork: bool,
    },
}

/// Whether a new run is driven by its creator or queued for a worker.
pub(crate) enum Launch {
    /// Running, driven by this process at once (`GraphHandle::start`).
    Drive,
    /// Queued: a worker claims and executes it (`Engine::enqueue`).
    Enqueue {
        priority: i32,
        metadata: Option<Payload>,
        /// A run id assigned before (a pending run of the multitask strategy `enqueue`);
        /// `None`: a new one.
        run_id: Option<RunId>,
    },
}

/// A run just recorded by [`Engine::create_run`].
pub(crate) struct Created<S: State> {
    /// Holds the thread in this engine until dropped.
    pub guard: LiveGuard,
    /// The run as stored.
    pub record: RunRecord,
    /// Where it stands (without the prior steps of a replay).
    pub position: Position<S>,
    /// Where a replay or fork comes from.
    pub origin: Option<Origin>,
}

/// Recorded steps of an original run: (replay superstep, task) → (node, index → record).
pub(crate) type PriorSteps = BTreeMap<(u32, u32), (String, BTreeMap<u32, Record>)>;

/// Options of a replay or fork.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Execute the step bodies again instead of returning their recorded results.
    pub reexecute_steps: bool,
    /// Options of the new run.
    pub run: RunOptions,
}

/// Sees every commit the engine makes, synchronously, around the store write.
pub trait Observer: Send + Sync + 'static {
    /// Just before the commit is handed to the store.
    fn before_commit(&self, _commit: &Commit) {}
    /// After the store confirmed the commit.
    fn after_commit(&self, _commit: &Commit) {}
}

/// Cancellation of one live run.
#[derive(Debug)]
pub(crate) struct CancelSlot {
    pub token: CancellationToken,
    reason: Mutex<Option<String>>,
    finished: watch::Sender<bool>,
}

impl CancelSlot {
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn cancel(&self, reason: String) {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(reason);
        self.token.cancel();
    }
}

struct Live {
    run_id: RunId,
    slot: Arc<CancelSlot>,
    /// The lease epoch a worker drives the run under, and how to tell it the lease is lost.
    lease: Option<(u64, Arc<LeaseLoss>)>,
}

/// A registered graph and when it was registered (the latest version of a name is the one
/// registered last).
#[derive(Clone)]
pub(crate) struct Registered {
    pub graph: Arc<dyn ErasedGraph>,
    pub order: u64,
}

pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub options: EngineOptions,
    pub(crate) graphs: RwLock<HashMap<(String, String), Registered>>,
    registrations: std::sync::atomic::AtomicU64,
    live: Mutex<HashMap<ThreadId, Live>>,
    /// Bumped after every commit and every finished driver: what `wait_for` watches.
    changes: watch::Sender<u64>,
    /// Bumped when this engine made a run claimable (enqueued, answered, handed back).
    pub(crate) ready: watch::Sender<u64>,
}

impl Shared {
    pub async fn write(&self, commit: Commit) -> Result<Receipt, store::Error> {
        let r = match &self.options.observer {
            None => self.store.commit(commit).await?,
            Some(o) => {
                o.before_commit(&commit);
                let copy = commit.clone();
                let r = self.store.commit(commit).await?;
                o.after_commit(&copy);
                r
            }
        };
        self.changed();
        Ok(r)
    }

    pub(crate) fn changed(&self) {
        // Only tasks inside `Engine::wait_for` subscribe; without them this is one atomic.
        if self.changes.receiver_count() > 0 {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Tells workers of this process that a run may have become claimable.
    pub(crate) fn made_ready(&self) {
        if self.ready.receiver_count() > 0 {
            self.ready.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// Removes a run from the live set when its driver ends, however it ends.
pub(crate) struct LiveGuard {
    shared: Arc<Shared>,
    thread_id: ThreadId,
    pub(crate) slot: Arc<CancelSlot>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut live = self.shared.live.lock().unwrap_or_else(|e| e.into_inner());
        if live
            .get(&self.thread_id)
            .is_some_and(|l| Arc::ptr_eq(&l.slot, &self.slot))
        {
            live.remove(&self.thread_id);
        }
        drop(live);
        self.slot.finished.send_replace(true);
        self.shared.changed();
    }
}

/// Runs graphs durably on a store. Cheap to clone; clones share everything.
///
/// Register graphs with [`Engine::register`], then start runs through the returned
/// [`GraphHandle`]. After a crash, open the same store and call [`Engine::recover`].
#[derive(Clone)]
pub struct Engine {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.shared.store)
            .field("options", &self.shared.options)
            .finish()
    }
}

/// What [`Engine::recover`] did.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// Runs driven to an end: thread, run, final status.
    pub resumed: Vec<(ThreadId, RunId, StatusKind)>,
    /// Runs left alone, with why (graph version not registered, already live, error).
    pub skipped: Vec<(ThreadId, RunId, Error)>,
    /// Runs that belong to workers, left to them: queued runs and runs a worker has
    /// claimed (they are continued through [`Engine::execute`] after a claim).
    pub left_to_workers: Vec<(ThreadId, RunId)>,
}

/// Whether a run is executed by workers (queued for them, or claimed by one at least once)
/// rather than driven in-process: in-process recovery and wake-ups leave such runs alone,
/// the store hands them to a worker when they are ready.
fn for_workers(run: &RunRecord) -> bool {
    oris_core::store::driven_by_workers(run)
}

/// The event a checkpoint stands at: the superstep boundary at `checkpoint`'s seq.
///
/// # Errors
/// [`Error::CheckpointNotFound`] when there is no such event or it is not a boundary.
pub(crate) async fn checkpoint_event(
    store: &dyn Store,
    thread_id: &ThreadId,
    checkpoint: CheckpointId,
) -> Result<Event, Error> {
    let seq = checkpoint.at_seq();
    let not_found = || Error::CheckpointNotFound {
        thread_id: thread_id.clone(),
        checkpoint,
    };
    if seq == Seq::ZERO {
        return Err(not_found());
    }
    store
        .events(thread_id, Seq(seq.0 - 1), 1)
        .await?
        .into_iter()
        .next()
        .filter(|e| e.seq == seq && e.body.boundary().is_some())
        .ok_or_else(not_found)
}

impl Engine {
    /// An engine with default options.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_options(store, EngineOptions::default())
    }

    /// An engine with options.
    pub fn with_options(store: Arc<dyn Store>, options: EngineOptions) -> Self {
        Engine {
            shared: Arc::new(Shared {
                store,
                options,
                graphs: RwLock::new(HashMap::new()),
                registrations: std::sync::atomic::AtomicU64::new(0),
                live: Mutex::new(HashMap::new()),
                changes: watch::channel(0).0,
                ready: watch::channel(0).0,
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// Registers a graph (replacing one with the same name and version) and returns a typed
    /// handle to run it.
    pub fn register<S: State>(&self, graph: CompiledGraph<S>) -> GraphHandle<S> {
        let order = self
            .shared
            .registrations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.shared
            .graphs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (graph.name().to_owned(), graph.version().to_owned()),
                Registered {
                    graph: Arc::new(graph.clone()),
                    order,
                },
            );
        GraphHandle {
            engine: self.clone(),
            graph,
        }
    }

    /// The registered graph of a name and version.
    pub(crate) fn registered(&self, graph: &str, version: &str) -> Option<Arc<dyn ErasedGraph>> {
        self.shared
            .graphs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(graph.to_owned(), version.to_owned()))
            .map(|r| r.graph.clone())
    }

    /// Whether a driver of this engine holds the thread.
    fn is_live(&self, thread_id: &ThreadId) -> bool {
        self.live_slot(thread_id).is_some()
    }

    /// The cancellation slot of the run this engine drives on the thread, if any.
    fn live_slot(&self, thread_id: &ThreadId) -> Option<Arc<CancelSlot>> {
        self.shared
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(thread_id)
            .map(|l| l.slot.clone())
    }

    pub(crate) fn claim(&self, thread_id: &ThreadId, run_id: RunId) -> Result<LiveGuard, Error> {
        let mut live = self.shared.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = live.get(thread_id) {
            return Err(Error::RunActive {
                thread_id: thread_id.clone(),
                run_id: l.run_id,
            });
        }
        Ok(self.insert_live(&mut live, thread_id, run_id, None))
    }

    /// Holds the thread to record a queued run. Something of this engine holding the thread
    /// is waited for when the thread has no unfinished run in the store (a driver that just
    /// wrote the end of its run, a short edit); only a run still unfinished is
    /// [`Error::RunActive`].
    async fn claim_to_enqueue(
        &self,
        thread_id: &ThreadId,
        run_id: RunId,
    ) -> Result<LiveGuard, Error> {
        loop {
            match self.claim(thread_id, run_id) {
                Err(Error::RunActive { .. }) => {
                    if let Some(t) = self.shared.store.thread(thread_id).await?
                        && let Some(active) = t.active_run
                    {
                        return Err(Error::RunActive {
                            thread_id: thread_id.clone(),
                            run_id: active,
                        });
                    }
                    self.wait_live(thread_id).await;
                }
                other => return other,
            }
        }
    }

    /// Holds the thread for a driver working under the lease `epoch` of `run_id`. A driver
    /// of this engine on an older lease of the run lost it to this claim: it is told so and
    /// stops at once; anything else holding the thread here (a short operation) is waited
    /// for.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when this engine already drives the run under a newer lease.
    pub(crate) async fn claim_leased(
        &self,
        thread_id: &ThreadId,
        run_id: RunId,
        epoch: u64,
        loss: Arc<LeaseLoss>,
    ) -> Result<LiveGuard, Error> {
        loop {
            let busy = {
                let mut live = self.shared.live.lock().unwrap_or_else(|e| e.into_inner());
                match live.get(thread_id) {
                    None => {
                        return Ok(self.insert_live(
                            &mut live,
                            thread_id,
                            run_id,
                            Some((epoch, loss)),
                        ));
                    }
                    Some(l) => {
                        if let Some((held, old)) = &l.lease
                            && l.run_id == run_id
                        {
                            if *held >= epoch {
                                return Err(Error::LeaseLost {
                                    run_id,
                                    epoch,
                                    reason: "superseded by a newer claim",
                                });
                            }
                            old.fire("superseded by a newer claim");
                        }
                        l.slot.clone()
                    }
                }
            };
            let mut finished = busy.finished.subscribe();
            let _ = finished.wait_for(|f| *f).await;
        }
    }

    fn insert_live(
        &self,
        live: &mut HashMap<ThreadId, Live>,
        thread_id: &ThreadId,
        run_id: RunId,
        lease: Option<(u64, Arc<LeaseLoss>)>,
    ) -> LiveGuard {
        let slot = Arc::new(CancelSlot {
            token: CancellationToken::new(),
            reason: Mutex::new(None),
            finished: watch::channel(false).0,
        });
        live.insert(
            thread_id.clone(),
            Live {
                run_id,
                slot: slot.clone(),
                lease,
            },
        );
        LiveGuard {
            shared: self.shared.clone(),
            thread_id: thread_id.clone(),
            slot,
        }
    }

    pub(crate) async fn start_typed<S: State>(
        &self,
        graph: &CompiledGraph<S>,
        thread_id: ThreadId,
        input: S,
        options: RunOptions,
    ) -> Result<RunOutcome<S>, Error> {
        self.start_run(graph, thread_id, Start::Input(input), options)
            .await
    }

    /// Starts a run: from the thread's state plus an input, or from a checkpoint's state.
    async fn start_run<S: State>(
        &self,
        graph: &CompiledGraph<S>,
        thread_id: ThreadId,
        start: Start<S>,
        options: RunOptions,
    ) -> Result<RunOutcome<S>, Error> {
        let Created {
            guard,
            position: at,
            origin,
            ..
        } = self
            .create_run(graph, thread_id.clone(), start, options, Launch::Drive)
            .await?;
        let prior = match &origin {
            Some(o) => self.prior_steps(o).await?,
            None => Default::default(),
        };
        let at = Position { prior, ..at };
        let mut driver = Driver::new(
            graph.inner.clone(),
            self.shared.clone(),
            thread_id,
            at,
            guard.slot.clone(),
        );
        let outcome = self.drive(&mut driver).await;
        drop(guard);
        outcome
    }

    /// Validates and records a new run (its `RunStarted`, and a `RunRebased` before it when
    /// it starts from a checkpoint): running, for this process to drive at once, or queued
    /// for a worker. Returns where the run stands, holding the thread in this engine.
    pub(crate) async fn create_run<S: State>(
        &self,
        graph: &CompiledGraph<S>,
        thread_id: ThreadId,
        start: Start<S>,
        options: RunOptions,
        launch: Launch,
    ) -> Result<Created<S>, Error> {
        let g: &Arc<GraphInner<S>> = &graph.inner;
        let run_id = match &launch {
            Launch::Enqueue {
                run_id: Some(id), ..
            } => *id,
            _ => RunId::generate(),
        };
        let guard = match launch {
            Launch::Drive => self.claim(&thread_id, run_id)?,
            Launch::Enqueue { .. } => self.claim_to_enqueue(&thread_id, run_id).await?,
        };
        let store = &*self.shared.store;
        let existing = store.thread(&thread_id).await?;
        let (current, head, since_snapshot) = match &existing {
            None => (S::default(), Seq::ZERO, 0),
            Some(t) => {
                if t.graph != g.name {
                    return Err(Error::GraphMismatch {
                        thread_id,
                        existing: t.graph.clone(),
                        requested: g.name.clone(),
                    });
                }
                if let Some(active) = t.active_run {
                    return Err(Error::RunActive {
                        thread_id,
                        run_id: active,
                    });
                }
                if matches!(start, Start::Checkpoint { fork: true, .. }) {
                    return Err(Error::ThreadExists(thread_id));
                }
                match &start {
                    // A rebased run replaces the state: no need to fold the current one.
                    Start::Checkpoint { .. } => (S::default(), t.head, 0),
                    Start::Input(_) => {
                        let f = fold::<S>(store, &thread_id, Seq(u64::MAX), false).await?;
                        (f.state, f.head, f.since_snapshot)
                    }
                }
            }
        };
        let now = Timestamp::now();
        let mut events = Vec::new();
        let (mut state, update, boundary, origin) = match start {
            Start::Input(input) => (current, input.into_update(), None, None),
            Start::Checkpoint {
                state,
                boundary,
                origin,
                ..
            } => {
                let base = Payload::encode(&state)
                    .map_err(|e| Error::InvalidInput(format!("state does not serialize: {e}")))?;
                events.push(EventBody::RunRebased {
                    base,
                    origin: origin.clone(),
                });
                (state, S::Update::default(), Some(boundary), Some(origin))
            }
        };
        let payload = Payload::encode(&update)
            .map_err(|e| Error::InvalidInput(format!("input does not serialize: {e}")))?;
        state
            .apply(vec![(INPUT_WRITER, update)])
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let boundary = match boundary {
            Some(b) => b,
            None => first_tasks(g, &state)
                .map_err(|f| Error::InvalidInput(format!("routing from START failed: {f}")))?,
        };
        let o = &self.shared.options;
        let settings = RunSettings {
            durability: options.durability.unwrap_or(o.durability),
            deadline: options.timeout.or(o.run_timeout).map(|d| now.plus(d)),
            superstep_limit: options.superstep_limit.unwrap_or(o.superstep_limit),
            interrupt_before: options.interrupt_before,
            interrupt_after: options.interrupt_after,
        };
        if let Some(n) = settings
            .interrupt_before
            .iter()
            .chain(&settings.interrupt_after)
            .find(|n| g.topology.node_index(n).is_none())
        {
            return Err(Error::InvalidInput(format!(
                "breakpoint names unknown node `{n}`"
            )));
        }
        events.push(EventBody::RunStarted {
            graph: g.name.clone(),
            graph_version: g.version.clone(),
            input: payload,
            settings: settings.clone(),
            boundary: boundary.clone(),
        });
        let first_seq = head.next();
        let started_seq = Seq(head.0 + events.len() as u64);
        let (status, priority, metadata) = match launch {
            Launch::Drive => (RunStatus::Running, 0, None),
            Launch::Enqueue {
                priority, metadata, ..
            } => (RunStatus::Queued, priority, metadata),
        };
        let mut record = RunRecord::new(
            run_id,
            thread_id.clone(),
            g.name.clone(),
            g.version.clone(),
            status,
            first_seq,
            now,
        );
        record.priority = priority;
        record.metadata = metadata;
        // What the store makes of it (`plan_commit`): a queued run is claimable at once.
        record.ready_at = store::ready_for_status(&record.status, Some(now));
        let commit = Commit {
            thread_id: thread_id.clone(),
            expected_head: head,
            events: events
                .into_iter()
                .enumerate()
                .map(|(i, body)| Event {
                    seq: Seq(first_seq.0 + i as u64),
                    run_id,
                    at: now,
                    body,
                })
                .collect(),
            run: Some(RunWrite::Create(record.clone())),
            snapshot: None,
            durability: settings.durability,
            fence: None,
        };
        if let Err(e) = self.shared.write(commit).await {
            // Another process started a run on this thread between our read and our commit:
            // report it as the active run it is, not as a raw head conflict.
            if let store::Error::Conflict { .. } = e
                && let Some(t) = store.thread(&thread_id).await?
                && let Some(active) = t.active_run
            {
                return Err(Error::RunActive {
                    thread_id,
                    run_id: active,
                });
            }
            return Err(e.into());
        }
        if record.status == RunStatus::Queued {
            tracing::info!(thread_id = %thread_id, run_id = %run_id, graph = %g.name, version = %g.version, priority = record.priority, "run queued");
            self.shared.made_ready();
        } else {
            tracing::info!(thread_id = %thread_id, run_id = %run_id, graph = %g.name, "run started");
        }
        let progress = Progress {
            run_id,
            settings,
            graph_version: g.version.clone(),
            superstep: 0,
            tasks: boundary.next,
            barriers: boundary.barriers,
            done: Default::default(),
            failed: Default::default(),
            retry_at: Default::default(),
            records: Default::default(),
            origin: origin.clone(),
        };
        let position = Position {
            state,
            head: started_seq,
            last_boundary: started_seq,
            since_snapshot,
            progress,
            suspended: false,
            prior: Default::default(),
        };
        Ok(Created {
            guard,
            record,
            position,
            origin,
        })
    }

    /// The recorded steps of the run a replay or fork comes from, by the replay's superstep
    /// and task, so the replay can return them instead of executing step bodies again.
    pub(crate) async fn prior_steps(&self, origin: &Origin) -> Result<PriorSteps, Error> {
        let mut prior = PriorSteps::new();
        if origin.reexecute_steps {
            return Ok(prior);
        }
        let store = &*self.shared.store;
        let mut after = origin.checkpoint.at_seq();
        loop {
            let page = store.events(&origin.thread_id, after, 1024).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in page {
                if e.run_id != origin.run_id {
                    return Ok(prior);
                }
                if let EventBody::StepRecorded {
                    superstep,
                    task,
                    node,
                    index,
                    name,
                    result,
                } = e.body
                    && superstep >= origin.superstep
                {
                    let entry = prior
                        .entry((superstep - origin.superstep, task))
                        .or_insert_with(|| (node.clone(), Default::default()));
                    if entry.0 == node {
                        entry.1.insert(index, Record::Step { name, result });
                    }
                }
            }
        }
        Ok(prior)
    }

    /// The state and boundary at a checkpoint of a thread, and where it stands in its run.
    pub(crate) async fn checkpoint_of<S: State>(
        &self,
        graph: &CompiledGraph<S>,
        thread_id: &ThreadId,
        checkpoint: CheckpointId,
        reexecute_steps: bool,
    ) -> Result<(S, Boundary, Origin), Error> {
        let store = &*self.shared.store;
        let t = store
            .thread(thread_id)
            .await?
            .ok_or_else(|| Error::ThreadNotFound(thread_id.clone()))?;
        if t.graph != graph.name() {
            return Err(Error::GraphMismatch {
                thread_id: thread_id.clone(),
                existing: t.graph,
                requested: graph.name().to_owned(),
            });
        }
        let e = checkpoint_event(store, thread_id, checkpoint).await?;
        let (superstep, boundary) = match e.body {
            EventBody::RunStarted { boundary, .. } => (0, boundary),
            EventBody::NodeCompleted {
                superstep,
                boundary: Some(b),
                ..
            } => (superstep + 1, b),
            // A pruned history's base: its superstep is gone with the pruned events.
            _ => {
                return Err(Error::CheckpointNotFound {
                    thread_id: thread_id.clone(),
                    checkpoint,
                });
            }
        };
        let state = fold::<S>(store, thread_id, checkpoint.at_seq(), false)
            .await?
            .state;
        Ok((
            state,
            boundary,
            Origin {
                thread_id: thread_id.clone(),
                checkpoint,
                run_id: e.run_id,
                superstep,
                reexecute_steps,
            },
        ))
    }

    /// Where a driver continues a run from: the folded state and log position, the run's
    /// progress, and the recorded steps of the run a replay comes from.
    pub(crate) async fn position<S: State>(
        &self,
        state: S,
        head: Seq,
        last_boundary: Option<Seq>,
        since_snapshot: u32,
        progress: Progress<S::Update>,
        suspended: bool,
    ) -> Result<Position<S>, Error> {
        let prior = match &progress.origin {
            Some(o) => self.prior_steps(o).await?,
            None => Default::default(),
        };
        Ok(Position {
            state,
            head,
            last_boundary: last_boundary.unwrap_or(head),
            since_snapshot,
            progress,
            suspended,
            prior,
        })
    }

    /// Runs a driver; when the run ends up waiting on a timer, schedules its wake-up.
    async fn drive<S: State>(&self, driver: &mut Driver<S>) -> Result<RunOutcome<S>, Error> {
        let outcome = match driver.run().await? {
            Driven::Ended(outcome) => outcome,
            Driven::Stopped => unreachable!("invariant: only a leased driver stops gracefully"),
        };
        if let Some(at) = driver.wake_at {
            self.schedule_wake(
                driver.thread_id.clone(),
                (driver.g.name.clone(), driver.g.version.clone()),
                at,
            );
        }
        Ok(outcome)
    }

    /// At `at`, continues the thread's run (if it still waits and its graph is registered).
    /// The task holds only a weak reference: dropping the engine cancels pending wake-ups;
    /// after a restart, [`Engine::recover`] schedules them again.
    fn schedule_wake(&self, thread_id: ThreadId, graph: (String, String), at: Timestamp) {
        let weak = Arc::downgrade(&self.shared);
        let sleep = self.shared.options.clock.sleep_until(at);
        tokio::spawn(async move {
            sleep.await;
            let Some(shared) = weak.upgrade() else { return };
            let engine = Engine { shared };
            let erased = engine.registered(&graph.0, &graph.1);
            if let Some(g) = erased {
                engine.wait_live(&thread_id).await;
                match g.resume(engine, thread_id.clone()).await {
                    Ok(status) => {
                        tracing::debug!(thread_id = %thread_id, status = status.as_str(), "woke waiting run")
                    }
                    Err(e) => {
                        tracing::debug!(thread_id = %thread_id, error = %e, "wake-up found nothing to do")
                    }
                }
            }
        });
    }

    pub(crate) async fn resume_typed<S: State>(
        &self,
        graph: &CompiledGraph<S>,
        thread_id: ThreadId,
    ) -> Result<RunOutcome<S>, Error> {
        self.resume_known(graph, thread_id, None, BTreeMap::new())
            .await
    }

    /// [`Engine::resume_typed`] for a caller that holds the thread's record (`known`, read
    /// just before) and the resume values it has just recorded (`answered`, as the store
    /// returned them): the thread is not read again, and a task paused at one of those
    /// interrupts is woken with its value without reading the interrupt back. A log short
    /// enough by the thread's head is folded whole, without a snapshot lookup.
    async fn resume_known<S: State>(
        &self,
        graph: &CompiledGraph<S>,
        thread_id: ThreadId,
        known: Option<ThreadRecord>,
        answered: BTreeMap<InterruptId, Payload>,
    ) -> Result<RunOutcome<S>, Error> {
        let g = &graph.inner;
        let store = &*self.shared.store;
        let t = match known {
            Some(t) => t,
            None => store
                .thread(&thread_id)
                .await?
                .ok_or_else(|| Error::ThreadNotFound(thread_id.clone()))?,
        };
        if t.graph != g.name {
            return Err(Error::GraphMismatch {
                thread_id,
                existing: t.graph,
                requested: g.name.clone(),
            });
        }
        let run_id = t
            .active_run
            .ok_or_else(|| Error::NoActiveRun(thread_id.clone()))?;
        let guard = self.claim(&thread_id, run_id)?;
        // A short log is read whole: one read instead of the snapshot lookup and a read of
        // the events after it. (Events appended since `t` was read are folded too.)
        let from_scratch = t.head.0 < crate::api::SHORT_LOG;
        let f = fold::<S>(store, &thread_id, Seq(u64::MAX), from_scratch).await?;
        // Interrupted or waiting: the log says so (its last status event is `RunSuspended`).
        let suspended = f.suspended;
        let progress = f
            .progress
            .ok_or_else(|| Error::NoActiveRun(thread_id.clone()))?;
        if progress.graph_version != g.version {
            return Err(Error::GraphNotRegistered {
                thread_id,
                run_id,
                graph: g.name.clone(),
                version: progress.graph_version,
            });
        }
        tracing::info!(thread_id = %thread_id, run_id = %run_id, superstep = progress.superstep, done = progress.done.len(), "resuming run");
        let at = self
            .position(
                f.state,
                f.head,
                f.last_boundary,
                f.since_snapshot,
                progress,
                suspended,
            )
            .await?;
        let mut driver = Driver::new(
            g.clone(),
            self.shared.clone(),
            thread_id,
            at,
            guard.slot.clone(),
        )
        .with_answers(answered);
        let outcome = self.drive(&mut driver).await;
        drop(guard);
        outcome
    }

    /// Continues every unfinished run in the store whose graph version is registered, from
    /// its last durable point, and waits for them to end. Completed nodes and supersteps
    /// are not executed again. Runs queued for workers or claimed by one are left to
    /// workers (`left_to_workers`).
    ///
    /// # Errors
    /// Only if the store cannot list runs; per-run problems are in the report.
    pub async fn recover(&self) -> Result<RecoveryReport, Error> {
        let mut report = RecoveryReport::default();
        let mut filter = RunFilter {
            limit: 500,
            ..RunFilter::unfinished()
        };
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let page = self.shared.store.runs(&filter).await?;
            let Some(last) = page.last() else { break };
            filter.after = Some(last.run_id);
            for run in page {
                if for_workers(&run) {
                    report.left_to_workers.push((run.thread_id, run.run_id));
                    continue;
                }
                let graph = self.registered(&run.graph, &run.graph_version);
                let Some(graph) = graph else {
                    report.skipped.push((
                        run.thread_id.clone(),
                        run.run_id,
                        Error::GraphNotRegistered {
                            thread_id: run.thread_id,
                            run_id: run.run_id,
                            graph: run.graph,
                            version: run.graph_version,
                        },
                    ));
                    continue;
                };
                let engine = self.clone();
                tasks.spawn(async move {
                    let r = graph.resume(engine, run.thread_id.clone()).await;
                    (run.thread_id, run.run_id, r)
                });
            }
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((t, r, Ok(status))) => report.resumed.push((t, r, status)),
                Ok((t, r, Err(e))) => report.skipped.push((t, r, e)),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        Ok(report)
    }

    /// Continues every waiting run whose timer is due — found by the store's index on
    /// wake-up times — and whose graph version is registered here, in the background.
    /// Covers runs whose wake-up was scheduled by a process that has since stopped; the
    /// engine that suspended a run wakes it on its own. Runs executed by workers are left to
    /// them (the store makes a due run claimable). Returns how many were continued.
    ///
    /// # Errors
    /// Storage errors of the query.
    pub async fn wake_due(&self) -> Result<usize, Error> {
        let now = self.shared.options.clock.now();
        let due = self.shared.store.due_runs(now, 256).await?;
        let mut woken = 0;
        for run in due.into_iter().filter(|r| !for_workers(r)) {
            let live = self.is_live(&run.thread_id);
            let graph = self.registered(&run.graph, &run.graph_version);
            let (false, Some(graph)) = (live, graph) else {
                continue;
            };
            let engine = self.clone();
            tokio::spawn(async move {
                if let Err(e) = graph.resume(engine, run.thread_id.clone()).await {
                    tracing::debug!(thread_id = %run.thread_id, error = %e, "due run not continued");
                }
            });
            woken += 1;
        }
        Ok(woken)
    }

    /// Sweeps due timers ([`Engine::wake_due`]) every `every` until `shutdown` completes:
    /// one indexed query per sweep, nothing else while idle.
    pub async fn run_timers(
        &self,
        every: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(every) => {
                    if let Err(e) = self.wake_due().await {
                        tracing::warn!(error = %e, "timer sweep failed");
                    }
                }
            }
        }
    }

    /// Cancels the thread's unfinished run, durably, with `reason`. A run driven by this
    /// engine stops at once (its node futures are dropped; nodes can watch
    /// [`Context::cancelled`](crate::Context::cancelled)); a run nobody drives is marked
    /// cancelled directly, and a run driven by another process stops at its next commit.
    ///
    /// # Errors
    /// [`Error::ThreadNotFound`], [`Error::NoActiveRun`] if the latest run already ended.
    pub async fn cancel(
        &self,
        thread_id: &ThreadId,
        reason: impl Into<String>,
    ) -> Result<RunRecord, Error> {
        let reason = reason.into();
        let slot = self.live_slot(thread_id);
        let was_live = slot.is_some();
        if let Some(slot) = slot {
            let mut finished = slot.finished.subscribe();
            slot.cancel(reason.clone());
            let _ = finished.wait_for(|f| *f).await;
        }
        // Not driven here — or the driver here could not record the cancellation (its lease
        // was lost meanwhile): mark the run cancelled in the store. A driver of another
        // process fails its next commit (or lease renewal) and stops.
        loop {
            let t = self
                .shared
                .store
                .thread(thread_id)
                .await?
                .ok_or_else(|| Error::ThreadNotFound(thread_id.clone()))?;
            let Some(run_id) = t.active_run else {
                if was_live {
                    break;
                }
                return Err(Error::NoActiveRun(thread_id.clone()));
            };
            let commit = Commit {
                thread_id: thread_id.clone(),
                expected_head: t.head,
                events: vec![Event {
                    seq: t.head.next(),
                    run_id,
                    at: Timestamp::now(),
                    body: EventBody::RunCancelled {
                        reason: reason.clone(),
                    },
                }],
                run: Some(RunWrite::SetStatus {
                    run_id,
                    status: RunStatus::Cancelled {
                        reason: reason.clone(),
                    },
                }),
                snapshot: None,
                durability: Durability::Sync,
                fence: None,
            };
            match self.shared.write(commit).await {
                Ok(_) => {
                    tracing::info!(thread_id = %thread_id, run_id = %run_id, reason = %reason, "run cancelled");
                    break;
                }
                Err(store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let t = self
            .shared
            .store
            .thread(thread_id)
            .await?
            .ok_or_else(|| Error::ThreadNotFound(thread_id.clone()))?;
        let run_id = t
            .last_run
            .ok_or_else(|| Error::NoActiveRun(thread_id.clone()))?;
        self.shared
            .store
            .run(run_id)
            .await?
            .ok_or_else(|| Error::NoActiveRun(thread_id.clone()))
    }

    pub(crate) async fn resume_typed_answers<S: State>(
        &self,
        graph: &CompiledGraph<S>,
        answers: Vec<(InterruptId, Payload)>,
    ) -> Result<RunOutcome<S>, Error> {
        let store = &*self.shared.store;
        let mut target: Option<(ThreadId, RunId)> = None;
        let mut records = Vec::with_capacity(answers.len());
        for (id, _) in &answers {
            let rec = store
                .interrupt(*id)
                .await?
                .ok_or(Error::InterruptNotFound(*id))?;
            match &target {
                Some((t, _)) if *t != rec.thread_id => {
                    return Err(Error::InvalidInput(
                        "interrupts resumed together must belong to one thread".into(),
                    ));
                }
                _ => target = Some((rec.thread_id.clone(), rec.run_id)),
            }
            records.push(rec);
        }
        let Some((thread_id, run_id)) = target else {
            return Err(Error::InvalidInput("no interrupt to resume".into()));
        };
        let t = store
            .thread(&thread_id)
            .await?
            .ok_or_else(|| Error::ThreadNotFound(thread_id.clone()))?;
        if t.graph != graph.name() {
            return Err(Error::GraphMismatch {
                thread_id,
                existing: t.graph,
                requested: graph.name().to_owned(),
            });
        }
        // Check every answer of a batch before recording any, so that a batch with one bad
        // answer records nothing. (Each `answer_interrupt` is atomic on its own — a lone
        // answer needs no pre-check — and a concurrent answer landing between this check
        // and the writes is caught there.)
        if answers.len() > 1 {
            for (rec, (_, value)) in records.iter().zip(&answers) {
                let run = store.run(rec.run_id).await?.ok_or(Error::Store(
                    store::Error::RunNotFound { run_id: rec.run_id },
                ))?;
                store::plan_answer(rec, &run.status, value, Timestamp::now())?;
            }
        }
        // Durable first: each value is in the store before anything acts on it. (SQLite
        // makes it durable with the commit that applies it, which `resume` makes before it
        // returns: see `Store::answer_interrupt`.)
        let mut answered = BTreeMap::new();
        for (id, value) in answers {
            let (_, rec) = store.answer_interrupt(id, value, Timestamp::now()).await?;
            // The value as stored (for an answer recorded earlier: the earlier, equal one).
            if let Some((stored, _)) = rec.answer {
                answered.insert(id, stored);
            }
        }
        // The thread record read above serves the first attempt: the answers changed
        // nothing in it, and whatever else changed since shows in the log the attempt folds
        // (a run that ended: `NoActiveRun`; one still driven here: `RunActive`, and the
        // next attempt reads the thread again).
        let mut known = Some(t);
        loop {
            let attempt = self
                .resume_known(
                    graph,
                    thread_id.clone(),
                    known.take(),
                    std::mem::take(&mut answered),
                )
                .await;
            match attempt {
                Err(Error::RunActive { .. }) => self.wait_live(&thread_id).await,
                Err(Error::NoActiveRun(_)) => return self.outcome_of::<S>(graph, run_id).await,
                Ok(outcome) if outcome.run_id() != run_id => {
                    return self.outcome_of::<S>(graph, run_id).await;
                }
                other => return other,
            }
        }
    }

    /// Waits until no driver of this engine holds the thread.
    async fn wait_live(&self, thread_id: &ThreadId) {
        let slot = self.live_slot(thread_id);
        if let Some(slot) = slot {
            let mut finished = slot.finished.subscribe();
            let _ = finished.wait_for(|f| *f).await;
        }
    }

    /// The outcome of a run that is not running here, from its record.
    async fn outcome_of<S: State>(
        &self,
        graph: &CompiledGraph<S>,
        run_id: RunId,
    ) -> Result<RunOutcome<S>, Error> {
        let store = &*self.shared.store;
        let run = store
            .run(run_id)
            .await?
            .ok_or(Error::Store(store::Error::RunNotFound { run_id }))?;
        Ok(match run.status {
            RunStatus::Completed { checkpoint } => RunOutcome::Completed {
                run_id,
                state: GraphHandle {
                    engine: self.clone(),
                    graph: graph.clone(),
                }
                .state_at(&run.thread_id, checkpoint)
                .await?,
            },
            RunStatus::Failed { error } => RunOutcome::Failed { run_id, error },
            RunStatus::Cancelled { reason } => RunOutcome::Cancelled { run_id, reason },
            RunStatus::Interrupted { interrupts } => RunOutcome::Interrupted { run_id, interrupts },
            _ => {
                return Err(Error::RunActive {
                    thread_id: run.thread_id,
                    run_id,
                });
            }
        })
    }

    /// Sends an external event to a thread: buffered durably until a node waiting for
    /// `name` (`ctx.wait_for_event`) consumes it — also if it arrives before the wait
    /// starts. A run waiting for it is continued in the background. With an idempotency
    /// `key`, sending the same event again records nothing new.
    ///
    /// # Errors
    /// [`Error::ThreadNotFound`], [`Error::InvalidInput`] (payload does not serialize),
    /// `Store(IdempotencyConflict)` when the key was used for a different event.
    pub async fn send_event(
        &self,
        thread_id: &ThreadId,
        name: &str,
        payload: &(impl Serialize + ?Sized),
        key: Option<String>,
    ) -> Result<Delivery, Error> {
        let payload = Payload::encode(payload)
            .map_err(|e| Error::InvalidInput(format!("event payload does not serialize: {e}")))?;
        let (delivery, _new) = self
            .shared
            .store
            .deliver(thread_id, name, payload, key, Timestamp::now())
            .await?;
        self.kick(thread_id.clone());
        // A worker's waiting run is made claimable by the store instead.
        self.shared.made_ready();
        Ok(delivery)
    }

    /// In the background: once no driver of this engine holds the thread, continues its run
    /// if it is waiting (an event it waits for may have arrived).
    fn kick(&self, thread_id: ThreadId) {
        let engine = self.clone();
        tokio::spawn(async move {
            engine.wait_live(&thread_id).await;
            let Ok(run) = engine.latest_run(&thread_id).await else {
                return;
            };
            if !matches!(run.status, RunStatus::Waiting { .. }) || for_workers(&run) {
                return;
            }
            let erased = engine.registered(&run.graph, &run.graph_version);
            if let Some(g) = erased
                && let Err(e) = g.resume(engine, thread_id.clone()).await
            {
                tracing::debug!(thread_id = %thread_id, error = %e, "event delivery woke nothing");
            }
        });
    }

    /// Waits until the thread's latest run satisfies `done` (e.g. `RunStatus::is_terminal`)
    /// and no driver of this engine holds it, and returns the run.
    ///
    /// What it sees: every commit of this engine (runs it drives in-process or executes for
    /// a worker, cancellations, edits) wakes it at once. Changes made elsewhere — another
    /// engine on the same store, another process, a remote worker — are seen by reading the
    /// store again, first after [`WAIT_POLL_MIN`] and then backing off to every
    /// [`WAIT_POLL_MAX`]; so such a change is observed at most [`WAIT_POLL_MAX`] after it
    /// was committed. Cancel safe: dropping the future stops the wait and nothing else.
    ///
    /// # Errors
    /// [`Error::ThreadNotFound`], storage errors.
    pub async fn wait_for(
        &self,
        thread_id: &ThreadId,
        done: impl Fn(&RunStatus) -> bool,
    ) -> Result<RunRecord, Error> {
        let mut changes = self.shared.changes.subscribe();
        let mut poll = WAIT_POLL_MIN;
        loop {
            let live = self.is_live(thread_id);
            if !live {
                let run = self.latest_run(thread_id).await?;
                if done(&run.status) {
                    return Ok(run);
                }
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return self.latest_run(thread_id).await;
                    }
                }
                _ = tokio::time::sleep(poll) => poll = (poll * 2).min(WAIT_POLL_MAX),
            }
        }
    }

    /// Rejects an interrupt: its run is cancelled, durably, with `reason`.
    ///
    /// # Errors
    /// [`Error::InterruptNotFound`]; [`Error::InterruptNotPending`] if it was already resumed
    /// or its run ended.
    pub async fn reject(
        &self,
        interrupt_id: InterruptId,
        reason: impl Into<String>,
    ) -> Result<RunRecord, Error> {
        let store = &*self.shared.store;
        let rec = store
            .interrupt(interrupt_id)
            .await?
            .ok_or(Error::InterruptNotFound(interrupt_id))?;
        let run = store
            .run(rec.run_id)
            .await?
            .ok_or(Error::Store(store::Error::RunNotFound {
                run_id: rec.run_id,
            }))?;
        if rec.answer.is_some() || run.status.is_terminal() {
            return Err(Error::InterruptNotPending {
                interrupt_id,
                status: if rec.answer.is_some() {
                    "resumed"
                } else {
                    run.status.kind().as_str()
                },
            });
        }
        self.cancel(&rec.thread_id, reason).await
    }

    /// An interrupt.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn interrupt(
        &self,
        interrupt_id: InterruptId,
    ) -> Result<Option<InterruptRecord>, Error> {
        Ok(self.shared.store.interrupt(interrupt_id).await?)
    }

    /// Every interrupt of a thread, oldest first (answered or not).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn interrupts(&self, thread_id: &ThreadId) -> Result<Vec<InterruptRecord>, Error> {
        Ok(self.shared.store.interrupts(thread_id).await?)
    }

    /// Deletes a thread and everything stored for it.
    ///
    /// # Errors
    /// [`Error::ThreadNotFound`]; [`Error::RunActive`] while it has an unfinished run
    /// (cancel it first).
    pub async fn delete_thread(&self, thread_id: &ThreadId) -> Result<(), Error> {
        // Hold the thread so that no run of this engine starts while it is deleted.
        let guard = self.claim(thread_id, RunId::generate())?;
        let r = self.shared.store.delete_thread(thread_id).await;
        drop(guard);
        Ok(r?)
    }

    /// The thread's latest run.
    ///
    /// # Errors
    /// [`Error::ThreadNotFound`].
    pub async fn latest_run(&self, thread_id: &ThreadId) -> Result<RunRecord, Error> {
        let t = self
            .shared
            .store
            .thread(thread_id)
            .await?
            .ok_or_else(|| Error::ThreadNotFound(thread_id.clone()))?;
        let run_id = t
            .last_run
            .ok_or_else(|| Error::ThreadNotFound(thread_id.clone()))?;
        self.shared
            .store
            .run(run_id)
            .await?
            .ok_or_else(|| Error::ThreadNotFound(thread_id.clone()))
    }

    /// Up to `limit` events of the thread after `after`, in order: the timeline.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn timeline(
        &self,
        thread_id: &ThreadId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<Event>, Error> {
        Ok(self.shared.store.events(thread_id, after, limit).await?)
    }

    /// Every checkpoint (superstep boundary) of the thread, oldest first.
    ///
    /// # Errors
    /// [`Error::ThreadNotFound`], storage errors.
    pub async fn checkpoints(&self, thread_id: &ThreadId) -> Result<Vec<CheckpointInfo>, Error> {
        if self.shared.store.thread(thread_id).await?.is_none() {
            return Err(Error::ThreadNotFound(thread_id.clone()));
        }
        let mut out = Vec::new();
        let mut after = Seq::ZERO;
        loop {
            let page = self.shared.store.events(thread_id, after, 1024).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in page {
                let (superstep, b) = match &e.body {
                    EventBody::RunStarted { boundary, .. }
                    | EventBody::HistoryPruned { boundary, .. } => (0, boundary),
                    EventBody::NodeCompleted {
                        superstep,
                        boundary: Some(b),
                        ..
                    } => (superstep + 1, b),
                    _ => continue,
                };
                out.push(CheckpointInfo {
                    id: CheckpointId(e.seq),
                    run_id: e.run_id,
                    superstep,
                    next: b.next.clone(),
                    at: e.at,
                });
            }
        }
        Ok(out)
    }
}

/// A graph registered with an engine: start runs, resume them, read their threads.
pub struct GraphHandle<S: State> {
    pub(crate) engine: Engine,
    pub(crate) graph: CompiledGraph<S>,
}

impl<S: State> Clone for GraphHandle<S> {
    fn clone(&self) -> Self {
        GraphHandle {
            engine: self.engine.clone(),
            graph: self.graph.clone(),
        }
    }
}

impl<S: State> fmt::Debug for GraphHandle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphHandle")
            .field("graph", &self.graph)
            .finish()
    }
}

impl<S: State> GraphHandle<S> {
    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The graph.
    pub fn graph(&self) -> &CompiledGraph<S> {
        &self.graph
    }

    /// Starts a run on `thread_id` with `input` and drives it to its end. The input is
    /// applied to the thread's state through the reducers (a new thread starts from
    /// `S::default()`).
    ///
    /// # Errors
    /// [`Error::InvalidThreadId`], [`Error::RunActive`] if the thread has an unfinished
    /// run, [`Error::GraphMismatch`], [`Error::InvalidInput`], storage errors. A run that
    /// fails or is cancelled is an `Ok` [`RunOutcome`].
    pub async fn start(
        &self,
        thread_id: impl AsRef<str>,
        input: S,
    ) -> Result<RunOutcome<S>, Error> {
        self.start_with(thread_id, input, RunOptions::default())
            .await
    }

    /// [`GraphHandle::start`] with per-run options.
    ///
    /// # Errors
    /// As [`GraphHandle::start`].
    pub async fn start_with(
        &self,
        thread_id: impl AsRef<str>,
        input: S,
        options: RunOptions,
    ) -> Result<RunOutcome<S>, Error> {
        let thread_id = ThreadId::new(thread_id)?;
        self.engine
            .start_typed(&self.graph, thread_id, input, options)
            .await
    }

    /// Continues the thread's unfinished run (after a crash) from its last durable point. A
    /// run paused at interrupts continues only if resume values are waiting.
    ///
    /// # Errors
    /// [`Error::NoActiveRun`], [`Error::RunActive`] if this engine already drives it,
    /// [`Error::GraphNotRegistered`] if the run is pinned to another version.
    pub async fn recover_thread(&self, thread_id: impl AsRef<str>) -> Result<RunOutcome<S>, Error> {
        let thread_id = ThreadId::new(thread_id)?;
        self.engine.resume_typed(&self.graph, thread_id).await
    }

    /// Resumes an interrupt with `value` and drives the run until it ends or pauses again.
    ///
    /// The value is recorded durably first (it is never lost, even if this process dies
    /// right after), then the interrupted node runs again from its first line — recorded steps
    /// return their results, and its `ctx.interrupt` returns `value`. Completed nodes and
    /// earlier supersteps do not run again. Idempotent: the same id with the same value
    /// returns the run's outcome again without applying anything twice. When a superstep
    /// paused at several interrupts, the run continues once each has a value (answer them
    /// one at a time, or all at once with [`GraphHandle::resume_many`]).
    ///
    /// # Errors
    /// [`Error::InterruptNotFound`]; [`Error::ResumeConflict`] if it was resumed with another
    /// value; [`Error::InterruptNotPending`] if its run ended; [`Error::GraphMismatch`] if
    /// the interrupt belongs to another graph's thread; [`Error::InvalidInput`] if `value`
    /// does not serialize.
    pub async fn resume(
        &self,
        interrupt_id: InterruptId,
        value: &(impl Serialize + ?Sized),
    ) -> Result<RunOutcome<S>, Error> {
        let value = Payload::encode(value)
            .map_err(|e| Error::InvalidInput(format!("resume value does not serialize: {e}")))?;
        self.engine
            .resume_typed_answers(&self.graph, vec![(interrupt_id, value)])
            .await
    }

    /// Resumes several interrupts of one thread at once, then drives the run.
    ///
    /// # Errors
    /// As [`GraphHandle::resume`]; [`Error::InvalidInput`] if the interrupts belong to
    /// different threads.
    pub async fn resume_many(
        &self,
        answers: impl IntoIterator<Item = (InterruptId, serde_json::Value)>,
    ) -> Result<RunOutcome<S>, Error> {
        let answers = answers
            .into_iter()
            .map(|(id, v)| {
                Payload::encode(&v).map(|p| (id, p)).map_err(|e| {
                    Error::InvalidInput(format!("resume value does not serialize: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.engine.resume_typed_answers(&self.graph, answers).await
    }

    /// Runs the thread again from `checkpoint`: a new run on the same thread starts from the
    /// checkpoint's state and tasks (the thread's later history stays in the log). Recorded
    /// steps of the original run return their results without executing their bodies,
    /// unless `options.reexecute_steps`.
    ///
    /// # Errors
    /// [`Error::CheckpointNotFound`], [`Error::RunActive`], [`Error::ThreadNotFound`].
    pub async fn replay(
        &self,
        thread_id: impl AsRef<str>,
        checkpoint: CheckpointId,
        options: ReplayOptions,
    ) -> Result<RunOutcome<S>, Error> {
        let thread_id = ThreadId::new(thread_id)?;
        self.start_at_checkpoint(thread_id.clone(), checkpoint, thread_id, false, options)
            .await
    }

    /// Forks `thread_id` at `checkpoint` into the new thread `new_thread_id`, which starts
    /// from the checkpoint's state and tasks and continues independently (its first event
    /// records where it came from; the source's history stays readable on the source).
    ///
    /// # Errors
    /// [`Error::ThreadExists`] if `new_thread_id` exists, and as [`GraphHandle::replay`].
    pub async fn fork(
        &self,
        thread_id: impl AsRef<str>,
        checkpoint: CheckpointId,
        new_thread_id: impl AsRef<str>,
        options: ReplayOptions,
    ) -> Result<RunOutcome<S>, Error> {
        let thread_id = ThreadId::new(thread_id)?;
        let new_thread_id = ThreadId::new(new_thread_id)?;
        self.start_at_checkpoint(thread_id, checkpoint, new_thread_id, true, options)
            .await
    }

    /// Starts a run on `target` from `checkpoint` of `source`.
    async fn start_at_checkpoint(
        &self,
        source: ThreadId,
        checkpoint: CheckpointId,
        target: ThreadId,
        fork: bool,
        options: ReplayOptions,
    ) -> Result<RunOutcome<S>, Error> {
        let (state, boundary, origin) = self
            .engine
            .checkpoint_of(&self.graph, &source, checkpoint, options.reexecute_steps)
            .await?;
        let start = Start::Checkpoint {
            state,
            boundary,
            origin,
            fork,
        };
        self.engine
            .start_run(&self.graph, target, start, options.run)
            .await
    }

    /// Edits the thread's state as if node `as_node` had returned `update` (an operator
    /// action, recorded as a `state_updated` event and merged through the reducers). Allowed
    /// while the thread is idle, interrupted or waiting — not while a run executes.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an unknown node, [`Error::RunActive`] while a run
    /// executes, [`Error::ThreadNotFound`].
    pub async fn update_state(
        &self,
        thread_id: impl AsRef<str>,
        update: S::Update,
        as_node: &str,
    ) -> Result<ThreadState<S>, Error> {
        let thread_id = ThreadId::new(thread_id)?;
        if self.graph.topology().node_index(as_node).is_none() {
            return Err(Error::InvalidInput(format!("unknown node `{as_node}`")));
        }
        let store = &*self.engine.shared.store;
        let t = store
            .thread(&thread_id)
            .await?
            .ok_or_else(|| Error::ThreadNotFound(thread_id.clone()))?;
        if t.graph != self.graph.name() {
            return Err(Error::GraphMismatch {
                thread_id,
                existing: t.graph,
                requested: self.graph.name().to_owned(),
            });
        }
        let writer = t
            .active_run
            .or(t.last_run)
            .ok_or_else(|| Error::ThreadNotFound(thread_id.clone()))?;
        let guard = self.engine.claim(&thread_id, writer)?;
        if let Some(active) = t.active_run {
            let run = store.run(active).await?;
            if matches!(
                run.map(|r| r.status),
                Some(RunStatus::Running | RunStatus::Queued)
            ) {
                return Err(Error::RunActive {
                    thread_id,
                    run_id: active,
                });
            }
        }
        // Check the edit applies before recording it.
        let mut probe = fold::<S>(store, &thread_id, Seq(u64::MAX), false)
            .await?
            .state;
        let payload = Payload::encode(&update)
            .map_err(|e| Error::InvalidInput(format!("update does not serialize: {e}")))?;
        probe
            .apply(vec![(as_node, update)])
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let commit = Commit {
            thread_id: thread_id.clone(),
            expected_head: t.head,
            events: vec![Event {
                seq: t.head.next(),
                run_id: writer,
                at: Timestamp::now(),
                body: EventBody::StateUpdated {
                    as_node: as_node.to_owned(),
                    update: payload,
                },
            }],
            run: None,
            snapshot: None,
            durability: Durability::Sync,
            fence: None,
        };
        self.engine.shared.write(commit).await?;
        drop(guard);
        self.state(thread_id).await
    }

    /// Prunes the thread's history to its latest checkpoint that an unfinished run does not
    /// need: the events before it are deleted and the checkpoint's event is replaced by a
    /// `history_pruned` event carrying the state there, so the remaining log still replays
    /// to the same state (`verify` stays consistent). Checkpoints before it can no longer
    /// be read, replayed or forked. Returns the checkpoint the history now starts at and
    /// how many events were deleted (`None` if there was nothing to prune).
    ///
    /// # Errors
    /// [`Error::ThreadNotFound`], storage errors.
    pub async fn prune(
        &self,
        thread_id: impl AsRef<str>,
    ) -> Result<Option<(CheckpointId, u64)>, Error> {
        let thread_id = ThreadId::new(thread_id)?;
        let store = &*self.engine.shared.store;
        let t = store
            .thread(&thread_id)
            .await?
            .ok_or_else(|| Error::ThreadNotFound(thread_id.clone()))?;
        let limit = match t.active_run {
            Some(r) => match store.run(r).await? {
                Some(run) => Seq(run.first_seq.0.saturating_sub(1)),
                None => return Err(Error::NoActiveRun(thread_id)),
            },
            None => t.head,
        };
        let Some(point) = self
            .engine
            .checkpoints(&thread_id)
            .await?
            .into_iter()
            .rfind(|c| c.id.at_seq() <= limit)
        else {
            return Ok(None);
        };
        let at = point.id.at_seq();
        let first = store.events(&thread_id, Seq::ZERO, 1).await?;
        if first.first().is_some_and(|e| e.seq >= at) {
            return Ok(None);
        }
        let state = fold::<S>(store, &thread_id, at, false).await?.state;
        let state = Payload::encode(&state)
            .map_err(|e| Error::InvalidInput(format!("state does not serialize: {e}")))?;
        let base = Event {
            seq: at,
            run_id: point.run_id,
            at: point.at,
            body: EventBody::HistoryPruned {
                state,
                boundary: Boundary {
                    next: point.next,
                    barriers: Default::default(),
                },
            },
        };
        let deleted = store.prune(&thread_id, base).await?;
        Ok(Some((point.id, deleted)))
    }

    /// Checkpoints of the thread, newest first: at most `limit` (0 = all), older than
    /// `before` if given.
    ///
    /// # Errors
    /// [`Error::ThreadNotFound`].
    pub async fn history(
        &self,
        thread_id: impl AsRef<str>,
        limit: usize,
        before: Option<CheckpointId>,
    ) -> Result<Vec<CheckpointInfo>, Error> {
        let thread_id = ThreadId::new(thread_id)?;
        let mut all = self.engine.checkpoints(&thread_id).await?;
        all.reverse();
        Ok(all
            .into_iter()
            .filter(|c| before.is_none_or(|b| c.id < b))
            .take(if limit == 0 { usize::MAX } else { limit })
            .collect())
    }

    /// The thread's current state.
    ///
    /// # Errors
    /// [`Error::ThreadNotFound`], [`Error::Corrupt`] if stored data no longer decodes.
    pub async fn state(&self, thread_id: impl AsRef<str>) -> Result<ThreadState<S>, Error> {
        let thread_id = ThreadId::new(thread_id)?;
        let store = &*self.engine.shared.store;
        let t = store
            .thread(&thread_id)
            .await?
            .ok_or_else(|| Error::ThreadNotFound(thread_id.clone()))?;
        let f = fold::<S>(store, &thread_id, Seq(u64::MAX), false).await?;
        let run = match t.last_run {
            Some(r) => store.run(r).await?,
            None => None,
        };
        Ok(ThreadState {
            values: f.state,
            head: f.head,
            checkpoint: f.last_boundary.map(CheckpointId),
            run,
            next: f.progress.map(|p| p.tasks).unwrap_or_default(),
        })
    }

    /// The state at a checkpoint.
    ///
    /// # Errors
    /// [`Error::CheckpointNotFound`] if `checkpoint` is not a superstep boundary of the thread.
    pub async fn state_at(
        &self,
        thread_id: impl AsRef<str>,
        checkpoint: CheckpointId,
    ) -> Result<S, Error> {
        let thread_id = ThreadId::new(thread_id)?;
        let store = &*self.engine.shared.store;
        checkpoint_event(store, &thread_id, checkpoint).await?;
        Ok(fold::<S>(store, &thread_id, checkpoint.at_seq(), false)
            .await?
            .state)
    }

    /// Re-derives the state from the whole log, ignoring snapshots, and compares its hash
    /// with the state the engine would use (latest snapshot + later events).
    ///
    /// # Errors
    /// [`Error::ThreadNotFound`], [`Error::Corrupt`].
    pub async fn verify(&self, thread_id: impl AsRef<str>) -> Result<Verification, Error> {
        let thread_id = ThreadId::new(thread_id)?;
        let store = &*self.engine.shared.store;
        if store.thread(&thread_id).await?.is_none() {
            return Err(Error::ThreadNotFound(thread_id));
        }
        let full = fold::<S>(store, &thread_id, Seq(u64::MAX), true).await?;
        let current = fold::<S>(store, &thread_id, Seq(u64::MAX), false).await?;
        let hash = |s: &S| {
            state_hash(s).map_err(|e| Error::Corrupt {
                thread_id: thread_id.clone(),
                seq: None,
                detail: format!("state does not serialize: {e}"),
            })
        };
        let replayed_hash = hash(&full.state)?;
        let current_hash = hash(&current.state)?;
        // Every stored checkpoint state (the latest snapshot) against the log at its seq.
        let mut mismatch = None;
        if let Some(snap) = store.snapshot(&thread_id, Seq(u64::MAX)).await? {
            let at = snap.at_seq;
            let from_log = fold::<S>(store, &thread_id, at, true).await?;
            let stored: S = snap.state.decode().map_err(|e| Error::Corrupt {
                thread_id: thread_id.clone(),
                seq: Some(at),
                detail: format!("snapshot state {e}"),
            })?;
            let (log_hash, snap_hash) = (hash(&from_log.state)?, hash(&stored)?);
            if log_hash != snap_hash {
                mismatch = Some(format!(
                    "the stored state at checkpoint {} does not match the log (log {log_hash}, stored {snap_hash})",
                    CheckpointId(at)
                ));
            }
        }
        if mismatch.is_none() && replayed_hash != current_hash {
            mismatch = Some(format!(
                "the state from the log ({replayed_hash}) differs from the current state ({current_hash})"
            ));
        }
        Ok(Verification {
            head: full.head,
            replayed_hash,
            current_hash,
            mismatch,
        })
    }
}
