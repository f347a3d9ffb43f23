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

use crate::id::{RunId, Seq, Timestamp};

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
        }
    }
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
}

impl EventKind {
    /// All kinds, for CHECK constraints and tests.
    pub const ALL: [EventKind; 6] = [
        EventKind::RunStarted,
        EventKind::NodeCompleted,
        EventKind::NodeFailed,
        EventKind::RunCompleted,
        EventKind::RunFailed,
        EventKind::RunCancelled,
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
        }
    }

    /// Parses a stable name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
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
        }
    }

    /// The node the event is about, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            EventBody::NodeCompleted { node, .. } | EventBody::NodeFailed { node, .. } => {
                Some(node)
            }
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
            | EventBody::NodeFailed { superstep, .. } => Some(*superstep),
            _ => None,
        }
    }

    /// The boundary this event closes, if any.
    pub fn boundary(&self) -> Option<&Boundary> {
        match self {
            EventBody::RunStarted { boundary, .. } => Some(boundary),
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
