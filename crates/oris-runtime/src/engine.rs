//! The engine: registered graphs, a store, and the runs this process drives.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use oris_core::event::{Durability, Event, EventBody, Payload, RunSettings};
use oris_core::id::{CheckpointId, RunId, Seq, ThreadId, Timestamp};
use oris_core::state::{INPUT_WRITER, State, state_hash};
use oris_core::status::{RunStatus, StatusKind};
use oris_core::store::{self, Commit, Receipt, RunFilter, RunRecord, RunWrite, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::driver::{Driver, Position, first_tasks};
use crate::error::Error;
use crate::graph::{CompiledGraph, GraphInner};
use crate::node::BoxFuture;
use crate::outcome::{CheckpointInfo, RunOutcome, ThreadState, Verification};
use crate::replay::{Progress, fold};

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
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            durability: Durability::Sync,
            snapshot_every: 64,
            superstep_limit: 10_000,
            run_timeout: None,
            observer: None,
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
}

pub(crate) trait ErasedGraph: Send + Sync {
    fn resume(&self, engine: Engine, thread_id: ThreadId) -> BoxFuture<Result<StatusKind, Error>>;
}

impl<S: State> ErasedGraph for CompiledGraph<S> {
    fn resume(&self, engine: Engine, thread_id: ThreadId) -> BoxFuture<Result<StatusKind, Error>> {
        let graph = self.clone();
        Box::pin(async move {
            let outcome = engine.resume_typed(&graph, thread_id).await?;
            Ok(match outcome {
                RunOutcome::Completed { .. } => StatusKind::Completed,
                RunOutcome::Failed { .. } => StatusKind::Failed,
                RunOutcome::Cancelled { .. } => StatusKind::Cancelled,
            })
        })
    }
}

pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub options: EngineOptions,
    graphs: RwLock<HashMap<(String, String), Arc<dyn ErasedGraph>>>,
    live: Mutex<HashMap<ThreadId, Live>>,
}

impl Shared {
    pub async fn write(&self, commit: Commit) -> Result<Receipt, store::Error> {
        match &self.options.observer {
            None => self.store.commit(commit).await,
            Some(o) => {
                o.before_commit(&commit);
                let copy = commit.clone();
                let r = self.store.commit(commit).await?;
                o.after_commit(&copy);
                Ok(r)
            }
        }
    }
}

/// Removes a run from the live set when its driver ends, however it ends.
struct LiveGuard {
    shared: Arc<Shared>,
    thread_id: ThreadId,
    slot: Arc<CancelSlot>,
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
                live: Mutex::new(HashMap::new()),
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
        self.shared
            .graphs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (graph.name().to_owned(), graph.version().to_owned()),
                Arc::new(graph.clone()),
            );
        GraphHandle {
            engine: self.clone(),
            graph,
        }
    }

    fn claim(&self, thread_id: &ThreadId, run_id: RunId) -> Result<LiveGuard, Error> {
        let mut live = self.shared.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = live.get(thread_id) {
            return Err(Error::RunActive {
                thread_id: thread_id.clone(),
                run_id: l.run_id,
            });
        }
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
            },
        );
        Ok(LiveGuard {
            shared: self.shared.clone(),
            thread_id: thread_id.clone(),
            slot,
        })
    }

    pub(crate) async fn start_typed<S: State>(
        &self,
        graph: &CompiledGraph<S>,
        thread_id: ThreadId,
        input: S,
        options: RunOptions,
    ) -> Result<RunOutcome<S>, Error> {
        let g: &Arc<GraphInner<S>> = &graph.inner;
        let run_id = RunId::generate();
        let guard = self.claim(&thread_id, run_id)?;
        let store = &*self.shared.store;
        let existing = store.thread(&thread_id).await?;
        let (mut state, head, since_snapshot) = match &existing {
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
                let f = fold::<S>(store, &thread_id, Seq(u64::MAX), false).await?;
                (f.state, f.head, f.since_snapshot)
            }
        };
        let update = input.into_update();
        let payload = Payload::encode(&update)
            .map_err(|e| Error::InvalidInput(format!("input does not serialize: {e}")))?;
        state
            .apply(vec![(INPUT_WRITER, update)])
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let boundary = first_tasks(g, &state)
            .map_err(|f| Error::InvalidInput(format!("routing from START failed: {f}")))?;
        let now = Timestamp::now();
        let o = &self.shared.options;
        let settings = RunSettings {
            durability: options.durability.unwrap_or(o.durability),
            deadline: options.timeout.or(o.run_timeout).map(|d| now.plus(d)),
            superstep_limit: options.superstep_limit.unwrap_or(o.superstep_limit),
        };
        let first_seq = head.next();
        let commit = Commit {
            thread_id: thread_id.clone(),
            expected_head: head,
            events: vec![Event {
                seq: first_seq,
                run_id,
                at: now,
                body: EventBody::RunStarted {
                    graph: g.name.clone(),
                    graph_version: g.version.clone(),
                    input: payload,
                    settings: settings.clone(),
                    boundary: boundary.clone(),
                },
            }],
            run: Some(RunWrite::Create(RunRecord {
                run_id,
                thread_id: thread_id.clone(),
                graph: g.name.clone(),
                graph_version: g.version.clone(),
                status: RunStatus::Running,
                first_seq,
                created_at: now,
                updated_at: now,
            })),
            snapshot: None,
            durability: settings.durability,
        };
        self.shared.write(commit).await?;
        tracing::info!(thread_id = %thread_id, run_id = %run_id, graph = %g.name, "run started");
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
        };
        let at = Position {
            state,
            head: first_seq,
            last_boundary: first_seq,
            since_snapshot,
            progress,
        };
        let driver = Driver::new(
            g.clone(),
            self.shared.clone(),
            thread_id,
            at,
            guard.slot.clone(),
        );
        let outcome = driver.run().await;
        drop(guard);
        outcome
    }

    pub(crate) async fn resume_typed<S: State>(
        &self,
        graph: &CompiledGraph<S>,
        thread_id: ThreadId,
    ) -> Result<RunOutcome<S>, Error> {
        let g = &graph.inner;
        let store = &*self.shared.store;
        let t = store
            .thread(&thread_id)
            .await?
            .ok_or_else(|| Error::ThreadNotFound(thread_id.clone()))?;
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
        let f = fold::<S>(store, &thread_id, Seq(u64::MAX), false).await?;
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
        let at = Position {
            state: f.state,
            head: f.head,
            last_boundary: f.last_boundary.unwrap_or(f.head),
            since_snapshot: f.since_snapshot,
            progress,
        };
        let driver = Driver::new(
            g.clone(),
            self.shared.clone(),
            thread_id,
            at,
            guard.slot.clone(),
        );
        let outcome = driver.run().await;
        drop(guard);
        outcome
    }

    /// Continues every unfinished run in the store whose graph version is registered, from
    /// its last durable point, and waits for them to end. Completed nodes and supersteps
    /// are not executed again.
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
                let graph = self
                    .shared
                    .graphs
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&(run.graph.clone(), run.graph_version.clone()))
                    .cloned();
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
        let slot = self
            .shared
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(thread_id)
            .map(|l| l.slot.clone());
        if let Some(slot) = slot {
            let mut finished = slot.finished.subscribe();
            slot.cancel(reason.clone());
            let _ = finished.wait_for(|f| *f).await;
        } else {
            loop {
                let t = self
                    .shared
                    .store
                    .thread(thread_id)
                    .await?
                    .ok_or_else(|| Error::ThreadNotFound(thread_id.clone()))?;
                let Some(run_id) = t.active_run else {
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
                };
                match self.shared.write(commit).await {
                    Ok(_) => break,
                    Err(store::Error::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
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
                    EventBody::RunStarted { boundary, .. } => (0, boundary),
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
    engine: Engine,
    graph: CompiledGraph<S>,
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

    /// Continues the thread's unfinished run (after a crash) from its last durable point.
    ///
    /// # Errors
    /// [`Error::NoActiveRun`], [`Error::RunActive`] if this engine already drives it,
    /// [`Error::GraphNotRegistered`] if the run is pinned to another version.
    pub async fn resume(&self, thread_id: impl AsRef<str>) -> Result<RunOutcome<S>, Error> {
        let thread_id = ThreadId::new(thread_id)?;
        self.engine.resume_typed(&self.graph, thread_id).await
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
        let seq = checkpoint.at_seq();
        let not_found = || Error::CheckpointNotFound {
            thread_id: thread_id.clone(),
            checkpoint,
        };
        if seq == Seq::ZERO {
            return Err(not_found());
        }
        let e = store.events(&thread_id, Seq(seq.0 - 1), 1).await?;
        match e.first() {
            Some(e) if e.seq == seq && e.body.boundary().is_some() => {}
            _ => return Err(not_found()),
        }
        Ok(fold::<S>(store, &thread_id, seq, false).await?.state)
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
        Ok(Verification {
            head: full.head,
            replayed_hash: hash(&full.state)?,
            current_hash: hash(&current.state)?,
        })
    }
}
