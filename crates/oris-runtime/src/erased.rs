//! Registered graphs without their state type: what the engine can do with a graph it
//! finds by name and version (recovery, the JSON-level API, workers' executions).
//!
//! Each method forwards to the typed implementation in `engine`, `api` or `lease`; this file
//! only erases `S`.

use oris_core::id::{CheckpointId, ThreadId};
use oris_core::state::State;
use oris_core::status::StatusKind;
use oris_core::store::RunRecord;
use tokio_util::sync::CancellationToken;

use crate::api::{EnqueueOptions, GraphInfo, StateView};
use crate::engine::{Engine, GraphHandle};
use crate::error::Error;
use crate::graph::CompiledGraph;
use crate::lease::{Executed, LeaseOptions};
use crate::node::BoxFuture;
use crate::outcome::{RunOutcome, Verification};

pub(crate) trait ErasedGraph: Send + Sync {
    /// Continues the thread's unfinished run in-process (recovery, wake-ups).
    fn resume(&self, engine: Engine, thread_id: ThreadId) -> BoxFuture<Result<StatusKind, Error>>;

    /// What the graph looks like.
    fn info(&self) -> GraphInfo;

    /// Whether a JSON input decodes into the state type.
    fn check_input(&self, input: serde_json::Value) -> Result<(), Error>;

    /// Records a queued run from a JSON input.
    fn enqueue(
        &self,
        engine: Engine,
        thread_id: ThreadId,
        input: serde_json::Value,
        options: EnqueueOptions,
    ) -> BoxFuture<Result<RunRecord, Error>>;

    /// Records a queued run on `target` from `checkpoint` of `source` (replay or fork).
    fn enqueue_from(
        &self,
        engine: Engine,
        source: ThreadId,
        checkpoint: CheckpointId,
        target: ThreadId,
        fork: bool,
        options: EnqueueOptions,
    ) -> BoxFuture<Result<RunRecord, Error>>;

    /// Executes a claimed run under its lease.
    fn execute(
        &self,
        engine: Engine,
        run: RunRecord,
        lease: LeaseOptions,
        stop: CancellationToken,
    ) -> BoxFuture<Result<Executed, Error>>;

    /// The thread's state now (`at: None`) or at a checkpoint, as JSON. `latest`: the
    /// thread's latest run as the caller just read it (now only), so it is not read again.
    fn state(
        &self,
        engine: Engine,
        thread_id: ThreadId,
        at: Option<CheckpointId>,
        latest: Option<RunRecord>,
    ) -> BoxFuture<Result<StateView, Error>>;

    /// Edits the thread's state from a JSON update.
    fn update_state(
        &self,
        engine: Engine,
        thread_id: ThreadId,
        as_node: Option<String>,
        values: serde_json::Value,
    ) -> BoxFuture<Result<StateView, Error>>;

    /// Re-derives the thread's state from its log alone and compares it with the stored
    /// checkpoint state and the current state ([`GraphHandle::verify`](crate::GraphHandle::verify)).
    fn verify(&self, engine: Engine, thread_id: ThreadId)
    -> BoxFuture<Result<Verification, Error>>;
}

impl<S: State> ErasedGraph for CompiledGraph<S> {
    fn resume(&self, engine: Engine, thread_id: ThreadId) -> BoxFuture<Result<StatusKind, Error>> {
        let graph = self.clone();
        Box::pin(async move {
            let outcome = engine.resume_typed(&graph, thread_id).await?;
            Ok(status_of(&outcome))
        })
    }

    fn info(&self) -> GraphInfo {
        GraphInfo::of(self)
    }

    fn check_input(&self, input: serde_json::Value) -> Result<(), Error> {
        Engine::check_input_typed::<S>(input)
    }

    fn enqueue(
        &self,
        engine: Engine,
        thread_id: ThreadId,
        input: serde_json::Value,
        options: EnqueueOptions,
    ) -> BoxFuture<Result<RunRecord, Error>> {
        let graph = self.clone();
        Box::pin(async move {
            engine
                .enqueue_typed(&graph, thread_id, input, options)
                .await
        })
    }

    fn enqueue_from(
        &self,
        engine: Engine,
        source: ThreadId,
        checkpoint: CheckpointId,
        target: ThreadId,
        fork: bool,
        options: EnqueueOptions,
    ) -> BoxFuture<Result<RunRecord, Error>> {
        let graph = self.clone();
        Box::pin(async move {
            engine
                .enqueue_from_typed(&graph, source, checkpoint, target, fork, options)
                .await
        })
    }

    fn execute(
        &self,
        engine: Engine,
        run: RunRecord,
        lease: LeaseOptions,
        stop: CancellationToken,
    ) -> BoxFuture<Result<Executed, Error>> {
        let graph = self.clone();
        Box::pin(async move { engine.execute_typed(&graph, run, lease, stop).await })
    }

    fn state(
        &self,
        engine: Engine,
        thread_id: ThreadId,
        at: Option<CheckpointId>,
        latest: Option<RunRecord>,
    ) -> BoxFuture<Result<StateView, Error>> {
        let graph = self.clone();
        Box::pin(async move { engine.state_view_typed(&graph, thread_id, at, latest).await })
    }

    fn update_state(
        &self,
        engine: Engine,
        thread_id: ThreadId,
        as_node: Option<String>,
        values: serde_json::Value,
    ) -> BoxFuture<Result<StateView, Error>> {
        let graph = self.clone();
        Box::pin(async move {
            engine
                .update_state_typed(&graph, thread_id, as_node, values)
                .await
        })
    }

    fn verify(
        &self,
        engine: Engine,
        thread_id: ThreadId,
    ) -> BoxFuture<Result<Verification, Error>> {
        let handle = GraphHandle {
            engine,
            graph: self.clone(),
        };
        Box::pin(async move { handle.verify(&thread_id).await })
    }
}

/// The status a run outcome stands for.
pub(crate) fn status_of<S>(outcome: &RunOutcome<S>) -> StatusKind {
    match outcome {
        RunOutcome::Completed { .. } => StatusKind::Completed,
        RunOutcome::Failed { .. } => StatusKind::Failed,
        RunOutcome::Cancelled { .. } => StatusKind::Cancelled,
        RunOutcome::Interrupted { .. } => StatusKind::Interrupted,
        RunOutcome::Waiting { .. } => StatusKind::Waiting,
    }
}
