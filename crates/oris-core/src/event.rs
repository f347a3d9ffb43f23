//! The events of a thread's append-only log.
//!
//! The log is the source of truth: a thread's state is the fold of its events through the
//! state's reducers, and everything else (checkpoints/snapshots, run status) is derived or
//! committed in the same transaction. Node events store the node's *update* (a delta),
//! never a copy of the state, so storage grows linearly with history.
//!
//! The superstep boundary is not a separate row: the event that finishes a superstep (the
//! last node completion, or `RunStarted` for the first superstep) carries a [`Boundary`]
//! with the next superstep's tasks. One superstep of one node is therefore one event and
//! one durable commit.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::id::{DeliveryId, InterruptId, RunId, Seq, Timestamp};

/// A JSON document stored verbatim (a node update, a run input, a task input, a state).
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// Serializes a value.
    ///
    /// # Errors
    /// When the value cannot be serialized to JSON (e.g. a map with non-string keys).
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Payload)
    }

    /// Wraps JSON text after checking it is valid JSON.
    ///
    /// # Errors
    /// When `json` is not valid JSON.
    pub fn from_json(json: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(json).map(Payload)
    }

    /// Deserializes into `T`, naming the path of the offending field on error
    /// (for example `log[3]: invalid type: integer 5, expected a string`).
    ///
    /// # Errors
    /// A [`DecodeError`] with the field path and serde's message.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        let mut de = serde_json::Deserializer::from_str(self.0.get());
        serde_path_to_error::deserialize(&mut de).map_err(|e| DecodeError {
            path: e.path().to_string(),
            message: e.inner().to_string(),
        })
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The JSON text, owned.
    pub fn into_json(self) -> String {
        self.0.get().to_owned()
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.get();
        if text.len() > 120 {
            write!(f, "Payload({}…)", &text[..text.floor_char_boundary(120)])
        } else {
            write!(f, "Payload({text})")
        }
    }
}

/// A stored value that no longer deserializes into its Rust type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at `{path}`: {message}")]
pub struct DecodeError {
    /// Path of the field that failed (`.` for the root).
    pub path: String,
    /// What serde said.
    pub message: String,
}

/// One unit of work in a superstep: a node to run, optionally with its own input
/// (dynamic fan-out, like LangGraph's `Send`).
///
/// Serialized as the bare node name when there is no input, to keep the log compact, and
/// as `{"node": …, "input": …}` otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Task {
    /// Run the node on the state.
    Node(String),
    /// Run the node with its own input.
    Send {
        /// The node.
        node: String,
        /// The task's input.
        input: Payload,
    },
}

impl Task {
    /// The node this task runs.
    pub fn node(&self) -> &str {
        match self {
            Task::Node(n) | Task::Send { node: n, .. } => n,
        }
    }

    /// The task's own input, if it is a fan-out task.
    pub fn input(&self) -> Option<&Payload> {
        match self {
            Task::Node(_) => None,
            Task::Send { input, .. } => Some(input),
        }
    }
}

// Hand-written because `#[serde(untagged)]` buffers its input, which a `RawValue` inside
// cannot be read from.
impl<'de> Deserialize<'de> for Task {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Task;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node name or {\"node\": name, \"input\": value}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Task, E> {
                Ok(Task::Node(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Task, A::Error> {
                let (mut node, mut input) = (None, None);
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match &*key {
                        "node" => node = Some(map.next_value::<String>()?),
                        "input" => input = Some(map.next_value::<Payload>()?),
                        other => {
                            return Err(serde::de::Error::unknown_field(other, &["node", "input"]));
                        }
                    }
                }
                let node = node.ok_or_else(|| serde::de::Error::missing_field("node"))?;
                Ok(match input {
                    Some(input) => Task::Send { node, input },
                    None => Task::Node(node),
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Join progress: for each join (by its index in the graph), the sources that have
/// finished since the join last ran.
pub type Barriers = BTreeMap<u32, BTreeSet<String>>;

/// What the event that closes a superstep records: the next superstep's tasks, in
/// execution (and merge) order, and the join progress.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Boundary {
    /// Tasks of the next superstep; empty means the run reached END.
    #[serde(rename = "n")]
    pub next: Vec<Task>,
    /// Join progress after this superstep.
    #[serde(rename = "b", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub barriers: Barriers,
}

/// How a commit must reach the disk before the run proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Every commit is fsynced before the run proceeds (commits of concurrent runs share
    /// one fsync). Survives process crashes and power loss.
    #[default]
    Sync,
    /// Every commit is written to the database before the run proceeds, but not fsynced.
    /// Survives a process crash; a power loss or OS crash can lose the last commits.
    Batched,
    /// Only the run's start, its interrupts and its end are written. Survives nothing in
    /// between: after a crash the run starts again from its input.
    Exit,
}

impl Durability {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Sync => "sync",
            Durability::Batched => "batched",
            Durability::Exit => "exit",
        }
    }
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sync" => Ok(Durability::Sync),
            "batched" => Ok(Durability::Batched),
            "exit" => Ok(Durability::Exit),
            other => Err(format!(
                "unknown durability `{other}` (expected sync, batched or exit)"
            )),
        }
    }
}

/// Why something failed: a stable kind, a message, and the error chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Stable classification.
    pub kind: FailureKind,
    /// Human-readable message.
    pub message: String,
    /// The node involved, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Causes, outermost first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
}

impl Failure {
    /// A failure of `kind` with `message`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
            node: None,
            chain: Vec::new(),
        }
    }

    /// The same failure, attributed to `node`.
    pub fn at_node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Some(n) => write!(f, "{} in node `{n}`: {}", self.kind.as_str(), self.message)?,
            None => write!(f, "{}: {}", self.kind.as_str(), self.message)?,
        }
        for cause in &self.chain {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

/// Stable failure classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// A node returned an error.
    NodeError,
    /// A node panicked.
    NodePanicked,
    /// A node attempt exceeded its timeout.
    NodeTimeout,
    /// The run exceeded its timeout.
    RunTimeout,
    /// The run exceeded its superstep limit.
    SuperstepLimit,
    /// A superstep's updates could not be merged.
    ReduceConflict,
    /// A router returned a target the graph does not allow.
    InvalidRoute,
    /// A stored value or a node's output could not be (de)serialized.
    Serialization,
    /// A recorded step failed for good.
    StepFailed,
    /// A node's recorded calls no longer match its code (it was changed while runs were
    /// in flight).
    NonDeterminism,
}

impl FailureKind {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::NodeError => "node_error",
            FailureKind::NodePanicked => "node_panicked",
            FailureKind::NodeTimeout => "node_timeout",
            FailureKind::RunTimeout => "run_timeout",
            FailureKind::SuperstepLimit => "superstep_limit",
            FailureKind::ReduceConflict => "reduce_conflict",
            FailureKind::InvalidRoute => "invalid_route",
            FailureKind::Serialization => "serialization",
            FailureKind::StepFailed => "step_failed",
            FailureKind::NonDeterminism => "non_determinism",
        }
    }
}

/// Where a replayed or forked run comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The thread the checkpoint belongs to.
    #[serde(rename = "t")]
    pub thread_id: crate::id::ThreadId,
    /// The checkpoint the run starts from.
    #[serde(rename = "c")]
    pub checkpoint: crate::id::CheckpointId,
    /// The run that wrote the checkpoint (whose recorded steps may be reused).
    #[serde(rename = "r")]
    pub run_id: RunId,
    /// The superstep of that run the checkpoint precedes.
    #[serde(rename = "s")]
    pub superstep: u32,
    /// Whether recorded steps of the original run are executed again (`true`) or their
    /// results reused (`false`, the default).
    #[serde(rename = "x", default, skip_serializing_if = "std::ops::Not::not")]
    pub reexecute_steps: bool,
}

/// What a recorded step returned: its value, or its final error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepResult {
    /// The step's value.
    Ok(Payload),
    /// The step's final error (after its own retries).
    Err(Failure),
}

/// Settings fixed when a run starts, recorded in its `RunStarted` event so that a
/// recovering process applies the same limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSettings {
    /// Durability mode of the run.
    #[serde(rename = "d")]
    pub durability: Durability,
    /// The run fails with `run_timeout` after this instant.
    #[serde(rename = "dl", default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    /// Maximum supersteps.
    #[serde(rename = "l")]
    pub superstep_limit: u32,
    /// Per-run static breakpoints: pause before these nodes run.
    #[serde(rename = "ib", default, skip_serializing_if = "Vec::is_empty")]
    pub interrupt_before: Vec<String>,
    /// Per-run static breakpoints: pause after these nodes ran, before their update counts.
    #[serde(rename = "ia", default, skip_serializing_if = "Vec::is_empty")]
    pub interrupt_after: Vec<String>,
}

/// A recorded fact in a thread's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the thread's log.
    pub seq: Seq,
    /// The run that wrote it.
    pub run_id: RunId,
    /// When it was recorded.
    pub at: Timestamp,
    /// What happened.
    pub body: EventBody,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventBody {
    /// A run started: its input was applied to the state as an update.
    RunStarted {
        /// Graph name.
        graph: String,
        /// Graph version the run is pinned to.
        graph_version: String,
        /// The input, as the state's update type.
        input: Payload,
        /// Limits and durability of the run.
        settings: RunSettings,
        /// The first superstep's tasks.
        boundary: Boundary,
    },
    /// A node attempt finished and its update is recorded. Carries the boundary when it
    /// is the last task of its superstep to finish.
    NodeCompleted {
        /// Superstep number within the run, from 0.
        superstep: u32,
        /// Index of the task in the superstep's task list.
        task: u32,
        /// The node.
        node: String,
        /// Attempt number, from 1.
        attempt: u32,
        /// The node's update.
        update: Payload,
        /// Present when this completion closed the superstep.
        boundary: Option<Boundary>,
    },
    /// A node attempt failed.
    NodeFailed {
        /// Superstep number within the run.
        superstep: u32,
        /// Index of the task in the superstep.
        task: u32,
        /// The node.
        node: String,
        /// Attempt number, from 1.
        attempt: u32,
        /// What went wrong.
        error: Failure,
        /// When the next attempt is due; `None` when no retry follows.
        retry_at: Option<Timestamp>,
    },
    /// A recorded step (`ctx.step`) finished: its result or final error, returned from
    /// the log whenever the node runs again.
    StepRecorded {
        /// Superstep number within the run.
        superstep: u32,
        /// Index of the task in the superstep.
        task: u32,
        /// The node.
        node: String,
        /// Position of the call among the node's recorded calls (steps, interrupts), from 0.
        index: u32,
        /// The step's name, checked on re-execution (a mismatch is non-determinism).
        name: String,
        /// The result.
        result: StepResult,
    },
    /// A node (or a breakpoint) paused the run for input from outside.
    InterruptRaised {
        /// Superstep number within the run.
        superstep: u32,
        /// Index of the task in the superstep.
        task: u32,
        /// The node.
        node: String,
        /// Position of the call among the node's recorded calls, from 0.
        index: u32,
        /// The interrupt's identity.
        interrupt_id: InterruptId,
        /// What the node asked (shown to whoever answers).
        payload: Payload,
    },
    /// A resume value was applied: the interrupted node continues with it.
    InterruptResumed {
        /// The interrupt answered.
        interrupt_id: InterruptId,
        /// The value `ctx.interrupt` returns.
        value: Payload,
    },
    /// The run stopped to wait: every task of the superstep finished or is paused.
    RunSuspended {
        /// Interrupts waiting for a resume value.
        interrupts: Vec<InterruptId>,
        /// When the earliest durable timer (`ctx.sleep`, a wait's timeout) is due.
        until: Option<Timestamp>,
        /// External events the paused tasks wait for (`ctx.wait_for_event`).
        events: Vec<String>,
    },
    /// The run starts from a given state instead of the thread's current one: a replay of
    /// a checkpoint, or the first run of a fork. Committed just before its `RunStarted`.
    RunRebased {
        /// The state the run starts from (the checkpoint's).
        base: Payload,
        /// Where it comes from.
        origin: Origin,
    },
    /// An operator edit of the state, merged as if node `as_node` had returned it.
    StateUpdated {
        /// The node the update is attributed to.
        as_node: String,
        /// The update.
        update: Payload,
    },
    /// The thread's history before this event was pruned: this event replaced the boundary
    /// event that stood at its seq and carries the state there, so the log that remains
    /// still folds to the same state on its own.
    HistoryPruned {
        /// The state after the boundary that stood here.
        state: Payload,
        /// That boundary (the tasks that followed it and join progress).
        boundary: Boundary,
    },
    /// A node's wait for an external event ended: with the event, or by timeout.
    EventReceived {
        /// Superstep number within the run.
        superstep: u32,
        /// Index of the task in the superstep.
        task: u32,
        /// The node.
        node: String,
        /// Position of the call among the node's recorded calls.
        index: u32,
        /// The event name waited for.
        name: String,
        /// The delivery consumed, or `None` when the wait timed out.
        delivery: Option<DeliveryId>,
        /// The event's payload, when one was received.
        payload: Option<Payload>,
    },
    /// A suspended run continues.
    RunResumed,
    /// The run reached END.
    RunCompleted,
    /// The run failed.
    RunFailed {
        /// Why.
        error: Failure,
    },
    /// The run was cancelled.
    RunCancelled {
        /// Why, as given by whoever cancelled.
        reason: String,
    },
}

/// The kind of an event, as stored and shown in timelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// See [`EventBody::RunStarted`].
    RunStarted,
    /// See [`EventBody::NodeCompleted`].
    NodeCompleted,
    /// See [`EventBody::NodeFailed`].
    NodeFailed,
    /// See [`EventBody::RunCompleted`].
    RunCompleted,
    /// See [`EventBody::RunFailed`].
    RunFailed,
    /// See [`EventBody::RunCancelled`].
    RunCancelled,
    /// See [`EventBody::StepRecorded`].
    StepRecorded,
    /// See [`EventBody::InterruptRaised`].
    InterruptRaised,
    /// See [`EventBody::InterruptResumed`].
    InterruptResumed,
    /// See [`EventBody::RunSuspended`].
    RunSuspended,
    /// See [`EventBody::RunResumed`].
    RunResumed,
    /// See [`EventBody::EventReceived`].
    EventReceived,
    /// See [`EventBody::RunRebased`].
    RunRebased,
    /// See [`EventBody::StateUpdated`].
    StateUpdated,
    /// See [`EventBody::HistoryPruned`].
    HistoryPruned,
}

impl EventKind {
    /// All kinds, for CHECK constraints and tests.
    pub const ALL: [EventKind; 15] = [
        EventKind::RunStarted,
        EventKind::NodeCompleted,
        EventKind::NodeFailed,
        EventKind::RunCompleted,
        EventKind::RunFailed,
        EventKind::RunCancelled,
        EventKind::StepRecorded,
        EventKind::InterruptRaised,
        EventKind::InterruptResumed,
        EventKind::RunSuspended,
        EventKind::RunResumed,
        EventKind::EventReceived,
        EventKind::RunRebased,
        EventKind::StateUpdated,
        EventKind::HistoryPruned,
    ];

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RunStarted => "run_started",
            EventKind::NodeCompleted => "node_completed",
            EventKind::NodeFailed => "node_failed",
            EventKind::RunCompleted => "run_completed",
            EventKind::RunFailed => "run_failed",
            EventKind::RunCancelled => "run_cancelled",
            EventKind::StepRecorded => "step_recorded",
            EventKind::InterruptRaised => "interrupt_raised",
            EventKind::InterruptResumed => "interrupt_resumed",
            EventKind::RunSuspended => "run_suspended",
            EventKind::RunResumed => "run_resumed",
            EventKind::EventReceived => "event_received",
            EventKind::RunRebased => "run_rebased",
            EventKind::StateUpdated => "state_updated",
            EventKind::HistoryPruned => "history_pruned",
        }
    }

    /// Parses a stable name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The stable storage code of this kind, shared by every SQL backend. These numbers are
    /// on disk: never renumber, only add. `node_completed` is 0 because it is by far the
    /// most frequent kind and SQLite stores the integers 0 and 1 in zero bytes.
    pub const fn code(self) -> u8 {
        match self {
            EventKind::NodeCompleted => 0,
            EventKind::RunStarted => 1,
            EventKind::NodeFailed => 2,
            EventKind::RunCompleted => 3,
            EventKind::RunFailed => 4,
            EventKind::RunCancelled => 5,
            EventKind::StepRecorded => 6,
            EventKind::InterruptRaised => 7,
            EventKind::InterruptResumed => 8,
            EventKind::RunSuspended => 9,
            EventKind::RunResumed => 10,
            EventKind::EventReceived => 11,
            EventKind::RunRebased => 12,
            EventKind::StateUpdated => 13,
            EventKind::HistoryPruned => 14,
        }
    }

    /// The kind with a storage code; `None` for a code no kind has.
    pub fn from_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|k| i64::from(k.code()) == code)
    }
}

impl EventBody {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            EventBody::RunStarted { .. } => EventKind::RunStarted,
            EventBody::NodeCompleted { .. } => EventKind::NodeCompleted,
            EventBody::NodeFailed { .. } => EventKind::NodeFailed,
            EventBody::RunCompleted => EventKind::RunCompleted,
            EventBody::RunFailed { .. } => EventKind::RunFailed,
            EventBody::RunCancelled { .. } => EventKind::RunCancelled,
            EventBody::StepRecorded { .. } => EventKind::StepRecorded,
            EventBody::InterruptRaised { .. } => EventKind::InterruptRaised,
            EventBody::InterruptResumed { .. } => EventKind::InterruptResumed,
            EventBody::RunSuspended { .. } => EventKind::RunSuspended,
            EventBody::RunResumed => EventKind::RunResumed,
            EventBody::EventReceived { .. } => EventKind::EventReceived,
            EventBody::RunRebased { .. } => EventKind::RunRebased,
            EventBody::StateUpdated { .. } => EventKind::StateUpdated,
            EventBody::HistoryPruned { .. } => EventKind::HistoryPruned,
        }
    }

    /// The node the event is about, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            EventBody::NodeCompleted { node, .. }
            | EventBody::NodeFailed { node, .. }
            | EventBody::StepRecorded { node, .. }
            | EventBody::InterruptRaised { node, .. }
            | EventBody::EventReceived { node, .. } => Some(node),
            _ => None,
        }
    }

    /// The task (index within its superstep) the event is about, if any.
    pub fn task(&self) -> Option<u32> {
        match self {
            EventBody::NodeCompleted { task, .. }
            | EventBody::NodeFailed { task, .. }
            | EventBody::StepRecorded { task, .. }
            | EventBody::InterruptRaised { task, .. }
            | EventBody::EventReceived { task, .. } => Some(*task),
            _ => None,
        }
    }

    /// The node attempt, if any.
    pub fn attempt(&self) -> Option<u32> {
        match self {
            EventBody::NodeCompleted { attempt, .. } | EventBody::NodeFailed { attempt, .. } => {
                Some(*attempt)
            }
            _ => None,
        }
    }

    /// The superstep, if the event belongs to one.
    pub fn superstep(&self) -> Option<u32> {
        match self {
            EventBody::NodeCompleted { superstep, .. }
            | EventBody::NodeFailed { superstep, .. }
            | EventBody::StepRecorded { superstep, .. }
            | EventBody::InterruptRaised { superstep, .. }
            | EventBody::EventReceived { superstep, .. } => Some(*superstep),
            _ => None,
        }
    }

    /// The boundary this event closes, if any.
    pub fn boundary(&self) -> Option<&Boundary> {
        match self {
            EventBody::RunStarted { boundary, .. } | EventBody::HistoryPruned { boundary, .. } => {
                Some(boundary)
            }
            EventBody::NodeCompleted { boundary, .. } => boundary.as_ref(),
            _ => None,
        }
    }

    /// Whether this event ends its run.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventBody::RunCompleted | EventBody::RunFailed { .. } | EventBody::RunCancelled { .. }
        )
    }
}

/// A backend-neutral flat form of an event: the columns a SQL backend stores.
///
/// `data` holds the main JSON payload (input, update, error or reason) and `extra` the
/// rest (boundary, settings, retry time). Every backend uses [`EventRow::from_event`] and
/// [`EventRow::into_event`], the one tested conversion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    /// Position in the log.
    pub seq: Seq,
    /// The run.
    pub run_id: RunId,
    /// When.
    pub at: Timestamp,
    /// Kind.
    pub kind: EventKind,
    /// Superstep, for node events.
    pub superstep: Option<u32>,
    /// Task index, for node events.
    pub task: Option<u32>,
    /// Node name, for node events.
    pub node: Option<String>,
    /// Attempt, for node events.
    pub attempt: Option<u32>,
    /// Main payload (JSON).
    pub data: Option<String>,
    /// Other fields (JSON).
    pub extra: Option<String>,
}

/// A stored event row that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event #{seq} ({kind}): {detail}")]
pub struct RowError {
    /// The event's seq.
    pub seq: Seq,
    /// The stored kind.
    pub kind: &'static str,
    /// What is wrong (missing column, bad JSON with its field path).
    pub detail: String,
}

#[derive(Serialize, Deserialize)]
struct StepExtra {
    i: u32,
    n: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    e: bool,
}

#[derive(Serialize, Deserialize)]
struct SuspendedExtra {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    i: Vec<InterruptId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    u: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    e: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct ReceivedExtra {
    i: u32,
    n: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<DeliveryId>,
}

#[derive(Serialize, Deserialize)]
struct InterruptExtra {
    i: u32,
    id: InterruptId,
}

#[derive(Serialize, Deserialize)]
struct StartedExtra {
    g: String,
    v: String,
    s: RunSettings,
    b: Boundary,
}

impl EventRow {
    /// Flattens an event.
    ///
    /// # Errors
    /// Only if a value cannot be serialized, which the types here rule out in practice.
    pub fn from_event(e: &Event) -> Result<Self, serde_json::Error> {
        let mut row = EventRow {
            seq: e.seq,
            run_id: e.run_id,
            at: e.at,
            kind: e.body.kind(),
            superstep: e.body.superstep(),
            task: None,
            node: e.body.node().map(str::to_owned),
            attempt: e.body.attempt(),
            data: None,
            extra: None,
        };
        match &e.body {
            EventBody::RunStarted {
                graph,
                graph_version,
                input,
                settings,
                boundary,
            } => {
                row.data = Some(input.json().to_owned());
                row.extra = Some(serde_json::to_string(&StartedExtra {
                    g: graph.clone(),
                    v: graph_version.clone(),
                    s: settings.clone(),
                    b: boundary.clone(),
                })?);
            }
            EventBody::NodeCompleted {
                task,
                update,
                boundary,
                ..
            } => {
                row.task = Some(*task);
                row.data = Some(update.json().to_owned());
                row.extra = boundary.as_ref().map(serde_json::to_string).transpose()?;
            }
            EventBody::NodeFailed {
                task,
                error,
                retry_at,
                ..
            } => {
                row.task = Some(*task);
                row.data = Some(serde_json::to_string(error)?);
                row.extra = retry_at.map(|t| t.0.to_string());
            }
            EventBody::StepRecorded {
                task,
                index,
                name,
                result,
                ..
            } => {
                row.task = Some(*task);
                let (data, e) = match result {
                    StepResult::Ok(v) => (v.json().to_owned(), false),
                    StepResult::Err(f) => (serde_json::to_string(f)?, true),
                };
                row.data = Some(data);
                row.extra = Some(serde_json::to_string(&StepExtra {
                    i: *index,
                    n: name.clone(),
                    e,
                })?);
            }
            EventBody::InterruptRaised {
                task,
                index,
                interrupt_id,
                payload,
                ..
            } => {
                row.task = Some(*task);
                row.data = Some(payload.json().to_owned());
                row.extra = Some(serde_json::to_string(&InterruptExtra {
                    i: *index,
                    id: *interrupt_id,
                })?);
            }
            EventBody::InterruptResumed {
                interrupt_id,
                value,
            } => {
                row.data = Some(value.json().to_owned());
                row.extra = Some(serde_json::to_string(interrupt_id)?);
            }
            EventBody::RunSuspended {
                interrupts,
                until,
                events,
            } => {
                row.extra = Some(serde_json::to_string(&SuspendedExtra {
                    i: interrupts.clone(),
                    u: *until,
                    e: events.clone(),
                })?);
            }
            EventBody::RunRebased { base, origin } => {
                row.data = Some(base.json().to_owned());
                row.extra = Some(serde_json::to_string(origin)?);
            }
            EventBody::StateUpdated { as_node, update } => {
                row.node = Some(as_node.clone());
                row.data = Some(update.json().to_owned());
            }
            EventBody::HistoryPruned { state, boundary } => {
                row.data = Some(state.json().to_owned());
                row.extra = Some(serde_json::to_string(boundary)?);
            }
            EventBody::EventReceived {
                task,
                index,
                name,
                delivery,
                payload,
                ..
            } => {
                row.task = Some(*task);
                row.data = payload.as_ref().map(|p| p.json().to_owned());
                row.extra = Some(serde_json::to_string(&ReceivedExtra {
                    i: *index,
                    n: name.clone(),
                    d: *delivery,
                })?);
            }
            EventBody::RunResumed => {}
            EventBody::RunCompleted => {}
            EventBody::RunFailed { error } => row.data = Some(serde_json::to_string(error)?),
            EventBody::RunCancelled { reason } => row.data = Some(serde_json::to_string(reason)?),
        }
        Ok(row)
    }

    /// Rebuilds the event.
    ///
    /// # Errors
    /// [`RowError`] naming the seq, kind and the field that is missing or malformed.
    pub fn into_event(self) -> Result<Event, RowError> {
        let kind = self.kind.as_str();
        let seq = self.seq;
        let err = |detail: String| RowError { seq, kind, detail };
        let need =
            |v: Option<u32>, col: &str| v.ok_or_else(|| err(format!("column `{col}` is null")));
        let text =
            |v: Option<String>, col: &str| v.ok_or_else(|| err(format!("column `{col}` is null")));
        let json = |v: String, col: &str| {
            Payload::from_json(v).map_err(|e| err(format!("column `{col}` is not JSON: {e}")))
        };
        fn parse<T: DeserializeOwned>(p: &Payload, col: &str) -> Result<T, String> {
            p.decode().map_err(|e| format!("column `{col}` {e}"))
        }
        let body = match self.kind {
            EventKind::RunStarted => {
                let extra = json(text(self.extra, "extra")?, "extra")?;
                let x: StartedExtra = parse(&extra, "extra").map_err(err)?;
                EventBody::RunStarted {
                    graph: x.g,
                    graph_version: x.v,
                    input: json(text(self.data, "data")?, "data")?,
                    settings: x.s,
                    boundary: x.b,
                }
            }
            EventKind::NodeCompleted => EventBody::NodeCompleted {
                superstep: need(self.superstep, "superstep")?,
                task: need(self.task, "task")?,
                node: text(self.node, "node")?,
                attempt: need(self.attempt, "attempt")?,
                update: json(text(self.data, "data")?, "data")?,
                boundary: match self.extra {
                    None => None,
                    Some(x) => Some(parse(&json(x, "extra")?, "extra").map_err(err)?),
                },
            },
            EventKind::NodeFailed => EventBody::NodeFailed {
                superstep: need(self.superstep, "superstep")?,
                task: need(self.task, "task")?,
                node: text(self.node, "node")?,
                attempt: need(self.attempt, "attempt")?,
                error: parse(&json(text(self.data, "data")?, "data")?, "data").map_err(err)?,
                retry_at: match self.extra {
                    None => None,
                    Some(x) => {
                        Some(Timestamp(x.parse().map_err(|_| {
                            err(format!("column `extra` is not a time: {x:?}"))
                        })?))
                    }
                },
            },
            EventKind::StepRecorded => {
                let x: StepExtra =
                    parse(&json(text(self.extra, "extra")?, "extra")?, "extra").map_err(err)?;
                let data = json(text(self.data, "data")?, "data")?;
                EventBody::StepRecorded {
                    superstep: need(self.superstep, "superstep")?,
                    task: need(self.task, "task")?,
                    node: text(self.node, "node")?,
                    index: x.i,
                    name: x.n,
                    result: if x.e {
                        StepResult::Err(parse(&data, "data").map_err(err)?)
                    } else {
                        StepResult::Ok(data)
                    },
                }
            }
            EventKind::InterruptRaised => {
                let x: InterruptExtra =
                    parse(&json(text(self.extra, "extra")?, "extra")?, "extra").map_err(err)?;
                EventBody::InterruptRaised {
                    superstep: need(self.superstep, "superstep")?,
                    task: need(self.task, "task")?,
                    node: text(self.node, "node")?,
                    index: x.i,
                    interrupt_id: x.id,
                    payload: json(text(self.data, "data")?, "data")?,
                }
            }
            EventKind::InterruptResumed => EventBody::InterruptResumed {
                interrupt_id: parse(&json(text(self.extra, "extra")?, "extra")?, "extra")
                    .map_err(err)?,
                value: json(text(self.data, "data")?, "data")?,
            },
            EventKind::RunSuspended => {
                let x: SuspendedExtra =
                    parse(&json(text(self.extra, "extra")?, "extra")?, "extra").map_err(err)?;
                EventBody::RunSuspended {
                    interrupts: x.i,
                    until: x.u,
                    events: x.e,
                }
            }
            EventKind::EventReceived => {
                let x: ReceivedExtra =
                    parse(&json(text(self.extra, "extra")?, "extra")?, "extra").map_err(err)?;
                EventBody::EventReceived {
                    superstep: need(self.superstep, "superstep")?,
                    task: need(self.task, "task")?,
                    node: text(self.node, "node")?,
                    index: x.i,
                    name: x.n,
                    delivery: x.d,
                    payload: self.data.map(|d| json(d, "data")).transpose()?,
                }
            }
            EventKind::RunResumed => EventBody::RunResumed,
            EventKind::RunRebased => EventBody::RunRebased {
                base: json(text(self.data, "data")?, "data")?,
                origin: parse(&json(text(self.extra, "extra")?, "extra")?, "extra").map_err(err)?,
            },
            EventKind::HistoryPruned => EventBody::HistoryPruned {
                state: json(text(self.data, "data")?, "data")?,
                boundary: parse(&json(text(self.extra, "extra")?, "extra")?, "extra")
                    .map_err(err)?,
            },
            EventKind::StateUpdated => EventBody::StateUpdated {
                as_node: text(self.node, "node")?,
                update: json(text(self.data, "data")?, "data")?,
            },
            EventKind::RunCompleted => EventBody::RunCompleted,
            EventKind::RunFailed => EventBody::RunFailed {
                error: parse(&json(text(self.data, "data")?, "data")?, "data").map_err(err)?,
            },
            EventKind::RunCancelled => EventBody::RunCancelled {
                reason: parse(&json(text(self.data, "data")?, "data")?, "data").map_err(err)?,
            },
        };
        Ok(Event {
            seq: self.seq,
            run_id: self.run_id,
            at: self.at,
            body,
        })
    }
}

/// An event's serde form is its [`EventRow`]: the same flat form the SQL backends store,
/// so an event crosses the wire (the remote worker protocol) through the one tested
/// conversion.
impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        EventRow::from_event(self)
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        EventRow::deserialize(deserializer)?
            .into_event()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(json: &str) -> Payload {
        Payload::from_json(json.to_owned()).unwrap()
    }

    fn samples() -> Vec<EventBody> {
        vec![
            EventBody::RunStarted {
                graph: "g".into(),
                graph_version: "1".into(),
                input: p(r#"{"counter":0}"#),
                settings: RunSettings {
                    durability: Durability::Batched,
                    deadline: Some(Timestamp(5)),
                    superstep_limit: 10,
                    interrupt_before: vec!["b".into()],
                    interrupt_after: vec![],
                },
                boundary: Boundary {
                    next: vec![
                        Task::Node("a".into()),
                        Task::Send {
                            node: "w".into(),
                            input: p("[1,2]"),
                        },
                    ],
                    barriers: Barriers::from([(0, BTreeSet::from(["x".to_owned()]))]),
                },
            },
            EventBody::NodeCompleted {
                superstep: 3,
                task: 1,
                node: "a".into(),
                attempt: 2,
                update: p(r#"{"log":["a"]}"#),
                boundary: None,
            },
            EventBody::NodeCompleted {
                superstep: 3,
                task: 0,
                node: "b".into(),
                attempt: 1,
                update: p("{}"),
                boundary: Some(Boundary::default()),
            },
            EventBody::NodeFailed {
                superstep: 0,
                task: 0,
                node: "a".into(),
                attempt: 1,
                error: Failure::new(FailureKind::NodeTimeout, "slow").at_node("a"),
                retry_at: Some(Timestamp(99)),
            },
            EventBody::StepRecorded {
                superstep: 2,
                task: 1,
                node: "a".into(),
                index: 0,
                name: "charge".into(),
                result: StepResult::Ok(p(r#"{"id":"ch_1"}"#)),
            },
            EventBody::StepRecorded {
                superstep: 2,
                task: 1,
                node: "a".into(),
                index: 1,
                name: "refund".into(),
                result: StepResult::Err(Failure::new(FailureKind::StepFailed, "declined")),
            },
            EventBody::InterruptRaised {
                superstep: 0,
                task: 0,
                node: "b".into(),
                index: 2,
                interrupt_id: InterruptId::generate(),
                payload: p(r#""approve?""#),
            },
            EventBody::InterruptResumed {
                interrupt_id: InterruptId::generate(),
                value: p(r#""yes""#),
            },
            EventBody::RunSuspended {
                interrupts: vec![InterruptId::generate(), InterruptId::generate()],
                until: Some(Timestamp(77)),
                events: vec!["paid".into()],
            },
            EventBody::RunSuspended {
                interrupts: vec![],
                until: None,
                events: vec![],
            },
            EventBody::EventReceived {
                superstep: 1,
                task: 0,
                node: "w".into(),
                index: 3,
                name: "paid".into(),
                delivery: Some(DeliveryId::generate()),
                payload: Some(p(r#"{"amount":5}"#)),
            },
            EventBody::EventReceived {
                superstep: 1,
                task: 0,
                node: "w".into(),
                index: 4,
                name: "paid".into(),
                delivery: None,
                payload: None,
            },
            EventBody::RunResumed,
            EventBody::RunRebased {
                base: p(r#"{"log":["a"]}"#),
                origin: Origin {
                    thread_id: crate::id::ThreadId::new("src").unwrap(),
                    checkpoint: crate::id::CheckpointId(Seq(4)),
                    run_id: RunId::generate(),
                    superstep: 2,
                    reexecute_steps: true,
                },
            },
            EventBody::StateUpdated {
                as_node: "b".into(),
                update: p(r#"{"log":["edit"]}"#),
            },
            EventBody::HistoryPruned {
                state: p(r#"{"log":["a","b"]}"#),
                boundary: Boundary {
                    next: vec![Task::Node("c".into())],
                    barriers: Barriers::new(),
                },
            },
            EventBody::RunCompleted,
            EventBody::RunFailed {
                error: Failure::new(FailureKind::SuperstepLimit, "limit"),
            },
            EventBody::RunCancelled {
                reason: "operator".into(),
            },
        ]
    }

    #[test]
    fn every_event_round_trips_through_its_row() {
        let run_id = RunId::generate();
        for (i, body) in samples().into_iter().enumerate() {
            let e = Event {
                seq: Seq(i as u64 + 1),
                run_id,
                at: Timestamp(1000 + i as i64),
                body,
            };
            let row = EventRow::from_event(&e).unwrap();
            assert_eq!(row.kind, e.body.kind());
            assert_eq!(row.clone().into_event().unwrap(), e);
        }
    }

    #[test]
    fn corrupted_rows_name_seq_and_column() {
        let e = Event {
            seq: Seq(7),
            run_id: RunId::generate(),
            at: Timestamp(0),
            body: samples().remove(3),
        };
        let mut row = EventRow::from_event(&e).unwrap();
        row.data = Some(r#"{"kind":"nope","message":"x"}"#.into());
        let err = row.clone().into_event().unwrap_err();
        assert_eq!(err.seq, Seq(7));
        assert!(err.detail.contains("`data`"), "{err}");
        assert!(err.detail.contains("kind"), "{err}");
        row.data = None;
        assert!(row.into_event().unwrap_err().detail.contains("null"));
    }

    #[test]
    fn compact_boundary_encoding() {
        let b = Boundary {
            next: vec![Task::Node("step".into())],
            barriers: Barriers::new(),
        };
        assert_eq!(serde_json::to_string(&b).unwrap(), r#"{"n":["step"]}"#);
    }
}
