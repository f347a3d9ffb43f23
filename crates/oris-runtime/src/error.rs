//! The runtime's error type.

use oris_core::id::{CheckpointId, IdError, InterruptId, RunId, Seq, ThreadId};
use oris_core::store;

/// Why an engine operation failed. A run that *ran* and failed is not an error: it is a
/// [`RunOutcome::Failed`](crate::RunOutcome::Failed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The thread id is not valid.
    #[error("invalid thread_id: {0}")]
    InvalidThreadId(#[from] IdError),
    /// The thread already has a queued or running run (one active run per thread).
    #[error("thread `{thread_id}` already has an active run ({run_id})")]
    RunActive {
        /// The thread.
        thread_id: ThreadId,
        /// Its active run.
        run_id: RunId,
    },
    /// The thread belongs to another graph.
    #[error("thread `{thread_id}` belongs to graph `{existing}`, not `{requested}`")]
    GraphMismatch {
        /// The thread.
        thread_id: ThreadId,
        /// Its graph.
        existing: String,
        /// The graph asked for.
        requested: String,
    },
    /// No such thread.
    #[error("thread `{0}` does not exist")]
    ThreadNotFound(ThreadId),
    /// The thread exists already (a fork needs a new thread id).
    #[error("thread `{0}` already exists")]
    ThreadExists(ThreadId),
    /// The thread has no queued or running run to continue or cancel.
    #[error("thread `{0}` has no unfinished run")]
    NoActiveRun(ThreadId),
    /// The run needs a graph version this engine does not have.
    #[error(
        "run {run_id} of thread `{thread_id}` is pinned to graph `{graph}` version `{version}`, which is not registered with this engine"
    )]
    GraphNotRegistered {
        /// The thread.
        thread_id: ThreadId,
        /// The run.
        run_id: RunId,
        /// Graph name.
        graph: String,
        /// Graph version.
        version: String,
    },
    /// No graph of this name (and version, if given) is registered with this engine.
    #[error("graph `{graph}`{} is not registered", version.as_ref().map(|v| format!(" version `{v}`")).unwrap_or_default())]
    GraphNotFound {
        /// Graph name.
        graph: String,
        /// The version asked for; `None` when any version would do.
        version: Option<String>,
    },
    /// This engine no longer holds the lease it drove the run under (it expired, was
    /// released, or a newer claim superseded it): it stopped, and wrote nothing more.
    #[error("lease on run {run_id} (epoch {epoch}) lost: {reason}")]
    LeaseLost {
        /// The run.
        run_id: RunId,
        /// The epoch this engine held.
        epoch: u64,
        /// Why.
        reason: &'static str,
    },
    /// No such checkpoint.
    #[error("thread `{thread_id}` has no checkpoint {checkpoint}")]
    CheckpointNotFound {
        /// The thread.
        thread_id: ThreadId,
        /// The checkpoint asked for.
        checkpoint: CheckpointId,
    },
    /// The input cannot be applied to the state.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Stored data does not decode into the graph's types.
    #[error("corrupt data in thread `{thread_id}`{}: {detail}", seq.map(|s| format!(" at seq {s}")).unwrap_or_default())]
    Corrupt {
        /// The thread.
        thread_id: ThreadId,
        /// The event.
        seq: Option<Seq>,
        /// What failed, with the field path.
        detail: String,
    },
    /// Another writer changed the thread (another process owns the run now); this engine
    /// stopped driving it and nothing it had not committed was written.
    #[error(
        "thread `{thread_id}` was changed by another writer; this engine stopped driving run {run_id}"
    )]
    Superseded {
        /// The thread.
        thread_id: ThreadId,
        /// The run.
        run_id: RunId,
    },
    /// No interrupt has this id.
    #[error("interrupt {0} does not exist")]
    InterruptNotFound(InterruptId),
    /// The interrupt cannot be resumed or rejected: its run ended without it.
    #[error("interrupt {interrupt_id} is not pending: its run is {status}")]
    InterruptNotPending {
        /// The interrupt.
        interrupt_id: InterruptId,
        /// The run's status.
        status: &'static str,
    },
    /// The interrupt was already resumed with a different value.
    #[error("interrupt {0} was already resumed with a different value")]
    ResumeConflict(InterruptId),
    /// Any other storage error.
    #[error(transparent)]
    Store(store::Error),
}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::RunActive { thread_id, run_id } => Error::RunActive { thread_id, run_id },
            store::Error::GraphMismatch {
                thread_id,
                existing,
                requested,
            } => Error::GraphMismatch {
                thread_id,
                existing,
                requested,
            },
            store::Error::ThreadNotFound { thread_id } => Error::ThreadNotFound(thread_id),
            store::Error::Corrupt {
                thread_id,
                seq,
                detail,
            } => Error::Corrupt {
                thread_id,
                seq,
                detail,
            },
            store::Error::InterruptNotFound { interrupt_id } => {
                Error::InterruptNotFound(interrupt_id)
            }
            store::Error::InterruptNotPending {
                interrupt_id,
                status,
            } => Error::InterruptNotPending {
                interrupt_id,
                status,
            },
            store::Error::ResumeConflict { interrupt_id } => Error::ResumeConflict(interrupt_id),
            store::Error::LeaseLost {
                run_id,
                epoch,
                reason,
            } => Error::LeaseLost {
                run_id,
                epoch,
                reason,
            },
            other => Error::Store(other),
        }
    }
}
