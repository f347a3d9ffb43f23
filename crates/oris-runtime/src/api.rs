//! The engine at the JSON level, for a server: registered graphs described, runs queued for
//! workers instead of driven by the caller, resume values recorded, state read and edited as
//! JSON — all without knowing a graph's state type.
//!
//! Execution of queued runs is in `lease` ([`Engine::execute`]).

use std::collections::BTreeMap;

use oris_core::event::{Event, EventBody, Payload};
use oris_core::graph::{END, START};
use oris_core::id::{CheckpointId, InterruptId, RunId, Seq, ThreadId, Timestamp};
use oris_core::state::{ReducerKind, State};
use oris_core::status::RunStatus;
use oris_core::store::{Answer, InterruptRecord, RunRecord};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::{Created, Engine, GraphHandle, Launch, RunOptions, Start, checkpoint_event};
use crate::erased::ErasedGraph;
use crate::error::Error;
use crate::graph::CompiledGraph;
use crate::outcome::ThreadState;
use crate::replay::{fold, fold_known};

/// What the engine knows of a registered graph (for `GET /v1/graphs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraphInfo {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Nodes in declaration order.
    pub nodes: Vec<String>,
    /// Every edge, one per (source, target) pair; [`START`] and [`END`] appear by their
    /// reserved names.
    pub edges: Vec<EdgeInfo>,
    /// The nodes a run can start with (reachable from START by one edge).
    pub entry: Vec<String>,
    /// The graph as a Mermaid flowchart.
    pub mermaid: String,
    /// Static breakpoints before these nodes.
    pub interrupt_before: Vec<String>,
    /// Static breakpoints after these nodes.
    pub interrupt_after: Vec<String>,
    /// The state's fields and their reducers, as the state type declares them (empty for a
    /// hand-written `State` that does not list them).
    pub state_fields: Vec<StateField>,
}

/// One edge of a graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeInfo {
    /// Source node (or START).
    pub from: String,
    /// Target node (or END).
    pub to: String,
    /// What kind of edge.
    pub kind: EdgeKind,
}

/// The kinds of edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    /// A plain edge.
    Edge,
    /// One possible target of a conditional edge (a router picks at run time).
    Conditional,
    /// One source of a join: the target runs once every source finished.
    Join,
    /// A declared `ctx.goto` target.
    Goto,
}

/// A state field and its reducer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StateField {
    /// Field name as serialized.
    pub name: &'static str,
    /// How updates to it are merged.
    pub reducer: ReducerKind,
}

impl GraphInfo {
    pub(crate) fn of<S: State>(graph: &CompiledGraph<S>) -> Self {
        let t = graph.topology();
        let edge = |from: &str, to: &str, kind| EdgeInfo {
            from: from.to_owned(),
            to: to.to_owned(),
            kind,
        };
        let mut edges: Vec<EdgeInfo> = t
            .edges
            .iter()
            .map(|(f, to)| edge(f, to, EdgeKind::Edge))
            .collect();
        for b in &t.branches {
            edges.extend(
                b.targets
                    .iter()
                    .map(|to| edge(&b.from, to, EdgeKind::Conditional)),
            );
        }
        for j in &t.joins {
            edges.extend(
                j.sources
                    .iter()
                    .map(|from| edge(from, &j.target, EdgeKind::Join)),
            );
        }
        for b in &t.gotos {
            edges.extend(b.targets.iter().map(|to| edge(&b.from, to, EdgeKind::Goto)));
        }
        let mut entry: Vec<String> = Vec::new();
        for e in &edges {
            if e.from == START && e.to != END && !entry.contains(&e.to) {
                entry.push(e.to.clone());
            }
        }
        GraphInfo {
            name: graph.name().to_owned(),
            version: graph.version().to_owned(),
            nodes: t.nodes.clone(),
            edges,
            entry,
            mermaid: graph.mermaid(),
            interrupt_before: graph.inner.interrupt_before.clone(),
            interrupt_after: graph.inner.interrupt_after.clone(),
            state_fields: S::fields()
                .iter()
                .map(|f| StateField {
                    name: f.name,
                    reducer: f.reducer,
                })
                .collect(),
        }
    }
}

/// What [`Engine::verify_json`] found: the thread's state re-derived from its log alone,
/// compared with the latest stored checkpoint state (snapshot) and the current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The thread.
    pub thread_id: ThreadId,
    /// Its graph.
    pub graph: String,
    /// The graph version it was verified with (that of the thread's latest run).
    pub graph_version: String,
    /// Seq of the last event of the log.
    pub head: Seq,
    /// Hash of the state folded from the whole log, ignoring snapshots.
    pub replayed_hash: String,
    /// Hash of the state the engine uses: the latest snapshot plus the events after it.
    pub current_hash: String,
    /// Whether the log, the stored checkpoint state and the current state agree.
    pub consistent: bool,
    /// The first disagreement found, when not consistent.
    pub mismatch: Option<String>,
}

/// A run to queue: [`Engine::enqueue`].
#[derive(Debug, Clone)]
pub struct Enqueue {
    /// Graph name.
    pub graph: String,
    /// Graph version; `None`: the version of that name registered last.
    pub version: Option<String>,
    /// The thread (created by its first run).
    pub thread_id: ThreadId,
    /// The input: JSON of the graph's state type, applied to the thread's state through
    /// the reducers like [`GraphHandle::start`]'s input. Top-level fields left out of an
    /// input object take their value in `S::default()` (the object is merged onto the
    /// default state's JSON before decoding); fields the state does not have are ignored
    /// or refused as the state's serde attributes say.
    pub input: serde_json::Value,
    /// Priority, labels and run options.
    pub options: EnqueueOptions,
}

/// Options of a queued run.
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// Claim order: higher first. Default 0.
    pub priority: i32,
    /// Labels for filtering runs; stored as a JSON object of strings.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Durability, timeout (counted from the enqueue), superstep limit, breakpoints.
    pub run: RunOptions,
    /// The run id, assigned in advance (a server's pending run of the multitask strategy
    /// `enqueue` gets its id when the request is accepted and keeps it when it starts);
    /// `None`: a new one. When a run with this id already exists, [`Engine::enqueue`]
    /// returns it and records nothing: the start was done before (a crash between the
    /// start and the removal of the pending run repeats the start, which must not queue
    /// the run twice).
    pub run_id: Option<RunId>,
}

/// A thread's state as JSON, and where it stands.
#[derive(Debug, Clone, Serialize)]
pub struct StateView {
    /// The thread.
    pub thread_id: ThreadId,
    /// The state (JSON of the graph's state type).
    pub values: serde_json::Value,
    /// The checkpoint the state stands at (the last superstep boundary), if any.
    pub checkpoint: Option<CheckpointId>,
    /// Seq of the thread's last event included in `values`.
    pub head: Seq,
    /// The nodes of the next superstep (empty when no run is unfinished, or — at a
    /// checkpoint — the tasks that followed it).
    pub next: Vec<String>,
    /// The thread's latest run (at a checkpoint: the run that wrote it).
    pub run: Option<RunRecordView>,
}

/// A run record as JSON: the status is flattened into it (`"status": "interrupted",
/// "interrupts": […]`).
#[derive(Debug, Clone, Serialize)]
pub struct RunRecordView {
    /// The run.
    pub run_id: RunId,
    /// Its thread.
    pub thread_id: ThreadId,
    /// Graph name.
    pub graph: String,
    /// The graph version the run is pinned to.
    pub graph_version: String,
    /// Where the run is, with the data of that status.
    #[serde(flatten)]
    pub status: RunStatus,
    /// When it was created (ms since the epoch).
    pub created_at: Timestamp,
    /// When its status last changed (ms since the epoch).
    pub updated_at: Timestamp,
    /// Claim priority.
    pub priority: i32,
    /// Labels.
    pub metadata: BTreeMap<String, String>,
    /// When a worker may claim it; `None` when it is not claimable.
    pub ready_at: Option<Timestamp>,
    /// Fencing epoch of the latest claim (0: never claimed).
    pub lease_epoch: u64,
    /// The worker holding its lease, if any.
    pub lease: Option<LeaseView>,
}

/// Who holds a run's lease.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseView {
    /// The worker.
    pub worker_id: String,
    /// When the lease ends unless renewed (ms since the epoch).
    pub expires_at: Timestamp,
}

impl From<&RunRecord> for RunRecordView {
    fn from(r: &RunRecord) -> Self {
        RunRecordView {
            run_id: r.run_id,
            thread_id: r.thread_id.clone(),
            graph: r.graph.clone(),
            graph_version: r.graph_version.clone(),
            status: r.status.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            priority: r.priority,
            metadata: r.metadata_map(),
            ready_at: r.ready_at,
            lease_epoch: r.lease_epoch,
            lease: r.lease.as_ref().map(|l| LeaseView {
                worker_id: l.worker_id.clone(),
                expires_at: l.expires_at,
            }),
        }
    }
}

/// Decodes JSON into `T`, naming the path of the offending field.
fn decode_json<T: DeserializeOwned>(what: &str, value: serde_json::Value) -> Result<T, Error> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            Error::InvalidInput(format!("{what}: {}", e.inner()))
        } else {
            Error::InvalidInput(format!("{what} field `{path}`: {}", e.inner()))
        }
    })
}

/// The input of a new run with the fields it leaves out taken from `S::default()`: an
/// input object is merged key by key onto the JSON of the default state, so a state type
/// needs no `#[serde(default)]` for a partial input. Anything else (an array, a number, a
/// state that does not serialize to an object) is left as it is for the decoder to judge.
/// Keys the state does not have are kept: the state's serde attributes decide about them
/// (ignored by default, refused with `#[serde(deny_unknown_fields)]`).
fn with_defaults<S: State>(input: serde_json::Value) -> serde_json::Value {
    let serde_json::Value::Object(given) = input else {
        return input;
    };
    match serde_json::to_value(S::default()) {
        Ok(serde_json::Value::Object(mut merged)) => {
            merged.extend(given);
            serde_json::Value::Object(merged)
        }
        _ => serde_json::Value::Object(given),
    }
}

fn to_json<S: Serialize>(thread_id: &ThreadId, state: &S) -> Result<serde_json::Value, Error> {
    serde_json::to_value(state).map_err(|e| Error::Corrupt {
        thread_id: thread_id.clone(),
        seq: None,
        detail: format!("state does not serialize: {e}"),
    })
}

impl Engine {
    /// Every registered graph, sorted by (name, version).
    pub fn graphs(&self) -> Vec<GraphInfo> {
        let graphs = self.shared.graphs.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<GraphInfo> = graphs.values().map(|r| r.graph.info()).collect();
        drop(graphs);
        out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        out
    }

    /// A registered graph; `version: None` = the most recently registered version of that
    /// name.
    pub fn graph_info(&self, name: &str, version: Option<&str>) -> Option<GraphInfo> {
        self.lookup(name, version).map(|g| g.info())
    }

    /// The registered graph of `name` at `version`, or the one of that name registered last.
    fn lookup(&self, name: &str, version: Option<&str>) -> Option<std::sync::Arc<dyn ErasedGraph>> {
        match version {
            Some(v) => self.registered(name, v),
            None => self
                .shared
                .graphs
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|((n, _), _)| n == name)
                .max_by_key(|(_, r)| r.order)
                .map(|(_, r)| r.graph.clone()),
        }
    }

    /// The graph a thread's runs use: its name from the thread record, its version from the
    /// thread's latest run.
    async fn thread_graph(
        &self,
        thread_id: &ThreadId,
    ) -> Result<std::sync::Arc<dyn ErasedGraph>, Error> {
        let run = self.latest_run(thread_id).await?;
        self.registered(&run.graph, &run.graph_version)
            .ok_or(Error::GraphNotRegistered {
                thread_id: run.thread_id,
                run_id: run.run_id,
                graph: run.graph,
                version: run.graph_version,
            })
    }

    /// Validates and durably records a queued run — its `RunStarted` event and a run record
    /// with status queued, priority and metadata set, which the store makes claimable at
    /// once — and returns the record. Executes nothing: a worker claims the run
    /// ([`Store::claim`](oris_core::store::Store::claim)) and runs it with
    /// [`Engine::execute`].
    ///
    /// # Errors
    /// [`Error::GraphNotFound`] for an unknown graph or version; [`Error::InvalidInput`] when
    /// the input does not match the state type (the message names the field path), does not
    /// route from START, or a breakpoint names an unknown node — nothing is recorded then;
    /// [`Error::RunActive`] if the thread has an unfinished run; [`Error::GraphMismatch`]
    /// if the thread belongs to another graph; storage errors.
    pub async fn enqueue(&self, request: Enqueue) -> Result<RunRecord, Error> {
        if let Some(id) = request.options.run_id
            && let Some(existing) = self.shared.store.run(id).await?
        {
            if existing.thread_id != request.thread_id {
                return Err(Error::InvalidInput(format!(
                    "run id {id} belongs to thread `{}`, not `{}`",
                    existing.thread_id, request.thread_id
                )));
            }
            return Ok(existing);
        }
        let graph = self
            .lookup(&request.graph, request.version.as_deref())
            .ok_or_else(|| Error::GraphNotFound {
                graph: request.graph.clone(),
                version: request.version.clone(),
            })?;
        graph
            .enqueue(
                self.clone(),
                request.thread_id,
                request.input,
                request.options,
            )
            .await
    }

    /// Checks a run to queue without recording anything, as far as it can be checked
    /// before the thread is free: the graph and version exist, the input decodes into the
    /// graph's state type, breakpoints name nodes of the graph, metadata serializes.
    /// Returns the graph it resolved (its version pins a run queued later). What depends
    /// on the thread's state when the run starts (routing from START) is checked then.
    ///
    /// # Errors
    /// [`Error::GraphNotFound`], [`Error::InvalidInput`].
    pub fn check_enqueue(&self, request: &Enqueue) -> Result<GraphInfo, Error> {
        let graph = self
            .lookup(&request.graph, request.version.as_deref())
            .ok_or_else(|| Error::GraphNotFound {
                graph: request.graph.clone(),
                version: request.version.clone(),
            })?;
        graph.check_input(request.input.clone())?;
        let info = graph.info();
        let run = &request.options.run;
        if let Some(n) = run
            .interrupt_before
            .iter()
            .chain(&run.interrupt_after)
            .find(|n| !info.nodes.contains(n))
        {
            return Err(Error::InvalidInput(format!(
                "breakpoint names unknown node `{n}`"
            )));
        }
        if let Some(m) = &request.options.metadata {
            Payload::encode(m)
                .map_err(|e| Error::InvalidInput(format!("metadata does not serialize: {e}")))?;
        }
        Ok(info)
    }

    /// Queues a run on the same thread from `checkpoint` (what [`GraphHandle::replay`] does,
    /// recorded for a worker; recorded steps of the original run are returned, not
    /// executed again). The run uses the graph version of the thread's latest run.
    ///
    /// # Errors
    /// [`Error::ThreadNotFound`], [`Error::CheckpointNotFound`], [`Error::RunActive`] if
    /// the thread has an unfinished run, [`Error::GraphNotRegistered`] if this engine lacks
    /// the thread's graph version.
    pub async fn enqueue_replay(
        &self,
        thread_id: &ThreadId,
        checkpoint: CheckpointId,
        options: EnqueueOptions,
    ) -> Result<RunRecord, Error> {
        let graph = self.thread_graph(thread_id).await?;
        graph
            .enqueue_from(
                self.clone(),
                thread_id.clone(),
                checkpoint,
                thread_id.clone(),
                false,
                options,
            )
            .await
    }

    /// Queues a run on the new thread `new_thread` from `checkpoint` of `thread_id` (what
    /// [`GraphHandle::fork`] does, recorded for a worker), with the graph version of the
    /// source thread's latest run.
    ///
    /// # Errors
    /// [`Error::ThreadExists`] if `new_thread` exists, and as [`Engine::enqueue_replay`].
    pub async fn enqueue_fork(
        &self,
        thread_id: &ThreadId,
        checkpoint: CheckpointId,
        new_thread: ThreadId,
        options: EnqueueOptions,
    ) -> Result<RunRecord, Error> {
        let graph = self.thread_graph(thread_id).await?;
        graph
            .enqueue_from(
                self.clone(),
                thread_id.clone(),
                checkpoint,
                new_thread,
                true,
                options,
            )
            .await
    }

    /// Records a resume value for an interrupt (durably, idempotently — see
    /// [`Store::answer_interrupt`](oris_core::store::Store::answer_interrupt)) without
    /// driving anything: the store makes the run claimable once its last open interrupt is
    /// answered, and a worker continues it.
    ///
    /// # Errors
    /// [`Error::InterruptNotFound`]; [`Error::ResumeConflict`] if it was answered with
    /// another value; [`Error::InterruptNotPending`] if its run ended.
    pub async fn answer(
        &self,
        interrupt_id: InterruptId,
        value: Payload,
    ) -> Result<(Answer, InterruptRecord), Error> {
        let r = self
            .shared
            .store
            .answer_interrupt(interrupt_id, value, Timestamp::now())
            .await?;
        tracing::info!(interrupt_id = %interrupt_id, thread_id = %r.1.thread_id, run_id = %r.1.run_id, answer = ?r.0, "interrupt answered");
        self.shared.made_ready();
        Ok(r)
    }

    /// A receiver that changes whenever this engine made a run claimable (a run enqueued,
    /// an interrupt answered, a run handed back by a graceful stop or suspended with work
    /// already waiting): workers of this process can wait on it between claims instead of
    /// polling the store. Runs made claimable elsewhere (other processes, timers coming
    /// due) do not signal it.
    pub fn subscribe_ready(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.ready.subscribe()
    }

    /// The thread's current state as JSON, with its latest run.
    ///
    /// # Errors
    /// [`Error::ThreadNotFound`]; [`Error::GraphNotRegistered`] if this engine lacks the
    /// graph version of the thread's latest run; [`Error::Corrupt`].
    pub async fn state_json(&self, thread_id: &ThreadId) -> Result<StateView, Error> {
        let run = self.latest_run(thread_id).await?;
        self.state_json_of(run).await
    }

    /// [`Engine::state_json`] for a caller that holds the thread's latest run record (just
    /// read, e.g. with [`Engine::latest_run`]): the record names the graph version and is
    /// the view's `run`, so neither the thread nor the run is read again — only the log is
    /// folded (from its latest snapshot). A run created on the thread after `latest` was
    /// read is folded in, though `run` still shows `latest`.
    ///
    /// # Errors
    /// [`Error::GraphNotRegistered`] if this engine lacks the run's graph version;
    /// [`Error::Corrupt`]; storage errors.
    pub async fn state_json_of(&self, latest: RunRecord) -> Result<StateView, Error> {
        let Some(graph) = self.registered(&latest.graph, &latest.graph_version) else {
            return Err(Error::GraphNotRegistered {
                thread_id: latest.thread_id,
                run_id: latest.run_id,
                graph: latest.graph,
                version: latest.graph_version,
            });
        };
        let thread_id = latest.thread_id.clone();
        graph
            .state(self.clone(), thread_id, None, Some(latest))
            .await
    }

    /// The thread's state at a checkpoint as JSON, with the run that wrote it.
    ///
    /// # Errors
    /// [`Error::CheckpointNotFound`], and as [`Engine::state_json`].
    pub async fn state_at_json(
        &self,
        thread_id: &ThreadId,
        checkpoint: CheckpointId,
    ) -> Result<StateView, Error> {
        let graph = self.thread_graph(thread_id).await?;
        graph
            .state(self.clone(), thread_id.clone(), Some(checkpoint), None)
            .await
    }

    /// [`GraphHandle::update_state`] at the JSON level: `values` is JSON of the state's
    /// `Update` type (the fields to set, merged through their reducers as if node `as_node`
    /// had returned them). `as_node: None` means the node that completed last on the
    /// thread. Returns the state after the edit.
    ///
    /// The edit is an event, not a superstep boundary: the returned `checkpoint` is the
    /// boundary the edited state follows, and a replay or fork from it does not include the
    /// edit.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `values` does not match the update type (naming the
    /// field path), `as_node` is unknown, or no node completed yet and `as_node` is `None`;
    /// [`Error::RunActive`] while a run executes; and as [`Engine::state_json`].
    pub async fn update_state_json(
        &self,
        thread_id: &ThreadId,
        as_node: Option<String>,
        values: serde_json::Value,
    ) -> Result<StateView, Error> {
        let graph = self.thread_graph(thread_id).await?;
        graph
            .update_state(self.clone(), thread_id.clone(), as_node, values)
            .await
    }

    /// [`GraphHandle::verify`] for a graph known by name: re-derives the thread's state
    /// from its log alone, with the graph version of the thread's latest run, and compares
    /// it with the latest stored checkpoint state and the current state. A mismatch is a
    /// report (`consistent: false`, `mismatch` naming it), not an error.
    ///
    /// # Errors
    /// [`Error::ThreadNotFound`]; [`Error::GraphNotRegistered`] if this engine lacks the
    /// graph version of the thread's latest run; [`Error::Corrupt`] when an event or the
    /// snapshot does not decode; storage errors.
    pub async fn verify_json(&self, thread_id: &ThreadId) -> Result<VerifyReport, Error> {
        let run = self.latest_run(thread_id).await?;
        let Some(graph) = self.registered(&run.graph, &run.graph_version) else {
            return Err(Error::GraphNotRegistered {
                thread_id: run.thread_id,
                run_id: run.run_id,
                graph: run.graph,
                version: run.graph_version,
            });
        };
        let v = graph.verify(self.clone(), thread_id.clone()).await?;
        Ok(VerifyReport {
            thread_id: thread_id.clone(),
            graph: run.graph,
            graph_version: run.graph_version,
            head: v.head,
            consistent: v.is_consistent(),
            replayed_hash: v.replayed_hash,
            current_hash: v.current_hash,
            mismatch: v.mismatch,
        })
    }

    /// Whether `input` decodes into `S` (with the defaults of left-out fields).
    pub(crate) fn check_input_typed<S: State>(input: serde_json::Value) -> Result<(), Error> {
        let _: S = decode_json("input", with_defaults::<S>(input))?;
        Ok(())
    }

    pub(crate) async fn enqueue_typed<S: State>(
        &self,
        graph: &CompiledGraph<S>,
        thread_id: ThreadId,
        input: serde_json::Value,
        options: EnqueueOptions,
    ) -> Result<RunRecord, Error> {
        let input: S = decode_json("input", with_defaults::<S>(input))?;
        self.enqueue_start(graph, thread_id, Start::Input(input), options)
            .await
    }

    pub(crate) async fn enqueue_from_typed<S: State>(
        &self,
        graph: &CompiledGraph<S>,
        source: ThreadId,
        checkpoint: CheckpointId,
        target: ThreadId,
        fork: bool,
        options: EnqueueOptions,
    ) -> Result<RunRecord, Error> {
        let (state, boundary, origin) = self
            .checkpoint_of(graph, &source, checkpoint, false)
            .await?;
        let start = Start::Checkpoint {
            state,
            boundary,
            origin,
            fork,
        };
        self.enqueue_start(graph, target, start, options).await
    }

    async fn enqueue_start<S: State>(
        &self,
        graph: &CompiledGraph<S>,
        thread_id: ThreadId,
        start: Start<S>,
        options: EnqueueOptions,
    ) -> Result<RunRecord, Error> {
        let metadata = options
            .metadata
            .map(|m| Payload::encode(&m))
            .transpose()
            .map_err(|e| Error::InvalidInput(format!("metadata does not serialize: {e}")))?;
        let launch = Launch::Enqueue {
            priority: options.priority,
            metadata,
            run_id: options.run_id,
        };
        let Created { guard, record, .. } = self
            .create_run(graph, thread_id, start, options.run, launch)
            .await?;
        drop(guard);
        Ok(record)
    }

    pub(crate) async fn state_view_typed<S: State>(
        &self,
        graph: &CompiledGraph<S>,
        thread_id: ThreadId,
        at: Option<CheckpointId>,
        latest: Option<RunRecord>,
    ) -> Result<StateView, Error> {
        let handle = GraphHandle {
            engine: self.clone(),
            graph: graph.clone(),
        };
        match at {
            None => {
                let ts = match latest {
                    Some(run) => {
                        let store = &*self.shared.store;
                        let f = fold_known::<S>(
                            store,
                            &thread_id,
                            Seq(u64::MAX),
                            short_log(&run),
                            Some(&run),
                        )
                        .await?;
                        ThreadState {
                            values: f.state,
                            head: f.head,
                            checkpoint: f.last_boundary.map(CheckpointId),
                            run: Some(run),
                            next: f.progress.map(|p| p.tasks).unwrap_or_default(),
                        }
                    }
                    None => handle.state(&thread_id).await?,
                };
                view_of(thread_id, ts)
            }
            Some(checkpoint) => {
                let store = &*self.shared.store;
                let seq = checkpoint.at_seq();
                let event = checkpoint_event(store, &thread_id, checkpoint).await?;
                let next = event
                    .body
                    .boundary()
                    .map(|b| b.next.iter().map(|t| t.node().to_owned()).collect())
                    .unwrap_or_default();
                let state = fold::<S>(store, &thread_id, seq, false).await?.state;
                let run = store.run(event.run_id).await?;
                Ok(StateView {
                    values: to_json(&thread_id, &state)?,
                    thread_id,
                    checkpoint: Some(checkpoint),
                    head: seq,
                    next,
                    run: run.as_ref().map(RunRecordView::from),
                })
            }
        }
    }

    pub(crate) async fn update_state_typed<S: State>(
        &self,
        graph: &CompiledGraph<S>,
        thread_id: ThreadId,
        as_node: Option<String>,
        values: serde_json::Value,
    ) -> Result<StateView, Error> {
        let update: S::Update = decode_json("update", values)?;
        let as_node = match as_node {
            Some(n) => n,
            None => self.last_completed_node(&thread_id).await?.ok_or_else(|| {
                Error::InvalidInput(
                    "as_node is required: no node has completed on this thread yet".into(),
                )
            })?,
        };
        let handle = GraphHandle {
            engine: self.clone(),
            graph: graph.clone(),
        };
        let ts = handle.update_state(&thread_id, update, &as_node).await?;
        view_of(thread_id, ts)
    }

    /// The node of the thread's last `NodeCompleted` event: the tail of the log first, the
    /// whole log only if the tail has none.
    async fn last_completed_node(&self, thread_id: &ThreadId) -> Result<Option<String>, Error> {
        const TAIL: u64 = 256;
        let store = &*self.shared.store;
        let t = store
            .thread(thread_id)
            .await?
            .ok_or_else(|| Error::ThreadNotFound(thread_id.clone()))?;
        let last = |events: &[Event]| {
            events.iter().rev().find_map(|e| match &e.body {
                EventBody::NodeCompleted { node, .. } => Some(node.clone()),
                _ => None,
            })
        };
        let tail_from = Seq(t.head.0.saturating_sub(TAIL));
        let tail = store.events(thread_id, tail_from, TAIL as usize).await?;
        if let Some(n) = last(&tail) {
            return Ok(Some(n));
        }
        let mut found = None;
        let mut after = Seq::ZERO;
        while after < tail_from {
            let page = store.events(thread_id, after, 1024).await?;
            let Some(e) = page.last() else { break };
            after = e.seq;
            if let Some(n) = last(&page) {
                found = Some(n);
            }
        }
        Ok(found)
    }
}

/// Events up to which a thread's log is read whole rather than from its latest snapshot:
/// one read of a few events costs less than finding the snapshot first.
pub(crate) const SHORT_LOG: u64 = 32;

/// Whether `run`, the thread's latest run, says the thread's log is short: the thread's
/// only run (its log starts with it), completed at a checkpoint within [`SHORT_LOG`]
/// events. (Whatever was appended after its end — an edit, a newer run — is folded too; it
/// only makes the read longer.)
fn short_log(run: &RunRecord) -> bool {
    match &run.status {
        RunStatus::Completed { checkpoint } => {
            run.first_seq == Seq(1) && checkpoint.at_seq().0 < SHORT_LOG
        }
        _ => false,
    }
}

fn view_of<S: State>(thread_id: ThreadId, ts: ThreadState<S>) -> Result<StateView, Error> {
    Ok(StateView {
        values: to_json(&thread_id, &ts.values)?,
        thread_id,
        checkpoint: ts.checkpoint,
        head: ts.head,
        next: ts.next.iter().map(|t| t.node().to_owned()).collect(),
        run: ts.run.as_ref().map(RunRecordView::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oris_core::status::PendingInterrupt;

    #[test]
    fn run_view_flattens_the_status() {
        let mut r = RunRecord::new(
            RunId::generate(),
            ThreadId::new("t").unwrap(),
            "g",
            "1",
            RunStatus::Interrupted {
                interrupts: vec![PendingInterrupt {
                    interrupt_id: InterruptId::generate(),
                    node: "ask".into(),
                    payload: serde_json::json!({"q": 1}),
                }],
            },
            Seq(1),
            Timestamp(5),
        );
        r.metadata = Some(Payload::encode(&serde_json::json!({"team": "a"})).unwrap());
        let v = serde_json::to_value(RunRecordView::from(&r)).unwrap();
        assert_eq!(v["status"], "interrupted");
        assert_eq!(v["interrupts"][0]["node"], "ask");
        assert_eq!(v["metadata"]["team"], "a");
        assert_eq!(v["graph_version"], "1");
        assert!(v["lease"].is_null());
        r.status = RunStatus::Queued;
        let v = serde_json::to_value(RunRecordView::from(&r)).unwrap();
        assert_eq!(v["status"], "queued");
    }

    #[test]
    fn decode_errors_name_the_path() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct T {
            a: Vec<i64>,
        }
        let e = decode_json::<T>("input", serde_json::json!({"a": [1, "x"]})).unwrap_err();
        match e {
            Error::InvalidInput(m) => assert!(m.contains("`a[1]`"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
        let e = decode_json::<T>("input", serde_json::json!(3)).unwrap_err();
        match e {
            Error::InvalidInput(m) => assert!(m.starts_with("input: "), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
