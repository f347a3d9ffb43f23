//! What a run ended with, and what can be read about a thread.

use oris_core::event::{Failure, Task};
use oris_core::id::{CheckpointId, RunId, Seq, Timestamp};
use oris_core::status::PendingInterrupt;
use oris_core::store::RunRecord;

/// How a run ended — or paused.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
#[non_exhaustive]
pub enum RunOutcome<S> {
    /// The run reached END with this state.
    Completed {
        /// The run.
        run_id: RunId,
        /// The final state.
        state: S,
    },
    /// The run failed for good.
    Failed {
        /// The run.
        run_id: RunId,
        /// Why.
        error: Failure,
    },
    /// The run was cancelled.
    Cancelled {
        /// The run.
        run_id: RunId,
        /// Why.
        reason: String,
    },
    /// The run paused: it continues when its interrupts are resumed.
    Interrupted {
        /// The run.
        run_id: RunId,
        /// What it waits on.
        interrupts: Vec<PendingInterrupt>,
    },
    /// The run waits on durable timers or external events; the engine continues it when
    /// one is due or arrives.
    Waiting {
        /// The run.
        run_id: RunId,
        /// When the earliest timer or wait deadline is due.
        until: Option<Timestamp>,
        /// Events it waits for.
        events: Vec<String>,
    },
}

impl<S> RunOutcome<S> {
    /// The run.
    pub fn run_id(&self) -> RunId {
        match self {
            RunOutcome::Completed { run_id, .. }
            | RunOutcome::Failed { run_id, .. }
            | RunOutcome::Cancelled { run_id, .. }
            | RunOutcome::Interrupted { run_id, .. }
            | RunOutcome::Waiting { run_id, .. } => *run_id,
        }
    }

    /// The final state, if the run completed.
    pub fn state(&self) -> Option<&S> {
        match self {
            RunOutcome::Completed { state, .. } => Some(state),
            _ => None,
        }
    }

    /// The final state.
    ///
    /// # Panics
    /// If the run did not complete; for tests and examples.
    #[track_caller]
    pub fn expect_completed(self) -> S {
        match self {
            RunOutcome::Completed { state, .. } => state,
            RunOutcome::Failed { error, .. } => panic!("run failed: {error}"),
            RunOutcome::Cancelled { reason, .. } => panic!("run cancelled: {reason}"),
            RunOutcome::Interrupted { interrupts, .. } => {
                panic!("run interrupted, waiting on {interrupts:?}")
            }
            RunOutcome::Waiting { until, events, .. } => {
                panic!("run waiting until {until:?} for {events:?}")
            }
        }
    }

    /// The interrupts the run waits on, if it paused.
    pub fn interrupts(&self) -> &[PendingInterrupt] {
        match self {
            RunOutcome::Interrupted { interrupts, .. } => interrupts,
            _ => &[],
        }
    }

    /// The failure, if the run failed.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            RunOutcome::Failed { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A thread's current state and where its latest run stands.
#[derive(Debug, Clone)]
pub struct ThreadState<S> {
    /// The state after the last superstep.
    pub values: S,
    /// Seq of the last event.
    pub head: Seq,
    /// The checkpoint the state stands at (the last superstep boundary).
    pub checkpoint: Option<CheckpointId>,
    /// The thread's latest run.
    pub run: Option<RunRecord>,
    /// Tasks of the next superstep, if a run is unfinished.
    pub next: Vec<Task>,
}

/// A superstep boundary of a thread: every one is a checkpoint whose state can be read,
/// replayed or forked, whether or not a snapshot of it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Identity (`ckpt_<seq>`).
    pub id: CheckpointId,
    /// The run that wrote it.
    pub run_id: RunId,
    /// The number of the superstep that follows it within the run (0 = after the input).
    pub superstep: u32,
    /// The tasks that follow it.
    pub next: Vec<Task>,
    /// When it was recorded.
    pub at: Timestamp,
}

/// The result of re-deriving a thread's state from its log alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Head of the log.
    pub head: Seq,
    /// State hash from the full log, ignoring snapshots.
    pub replayed_hash: String,
    /// State hash from the latest snapshot plus the events after it.
    pub current_hash: String,
    /// The first disagreement found: a stored checkpoint state that differs from the log
    /// at its seq, or the current state differing from the log's.
    pub mismatch: Option<String>,
}

impl Verification {
    /// Whether the log, every stored checkpoint state and the current state agree.
    pub fn is_consistent(&self) -> bool {
        self.mismatch.is_none() && self.replayed_hash == self.current_hash
    }
}
