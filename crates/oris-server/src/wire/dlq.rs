//! Failures: a task's attempts (retries history) and the dead-letter queue.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::JobView;

/// One attempt of a task, from the log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttemptView {
    /// The attempt's id: `<run_id>.<superstep>.<task>.<attempt>`.
    pub attempt_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// When it ended.
    pub at: String,
    /// `completed` or `failed`.
    pub outcome: String,
    /// The failure (`kind`, `message`, `node`, `chain`); null when it completed.
    pub error: Option<Value>,
    /// When the next attempt was due; null when none followed (completed, or failed for
    /// good).
    pub retry_at: Option<String>,
    /// Seq of its event in the thread's log.
    pub seq: u64,
}

/// `GET /v1/attempts/{attempt_id}/retries`: every attempt of one task of a run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RetryHistory {
    /// The task: `<run_id>.<superstep>.<task>`.
    pub task_id: String,
    /// The run.
    pub run_id: String,
    /// Its thread.
    pub thread_id: String,
    /// Superstep number within the run.
    pub superstep: u32,
    /// Index of the task in the superstep.
    pub task: u32,
    /// The node.
    pub node: String,
    /// The attempts, oldest first.
    pub attempts: Vec<AttemptView>,
}

/// A dead-letter entry: a failed run that is still its thread's last run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DlqEntry {
    /// The entry's id: the failed run.
    pub run_id: String,
    /// Its thread.
    pub thread_id: String,
    /// Graph name.
    pub graph: String,
    /// Graph version.
    pub graph_version: String,
    /// When it failed.
    pub failed_at: String,
    /// The run's failure (`kind`, `message`, `node`, `chain`).
    pub error: Value,
    /// The run's labels.
    pub metadata: BTreeMap<String, String>,
}

/// A page of dead-letter entries.
#[derive(Debug, Serialize, ToSchema)]
pub struct DlqList {
    /// Entries, oldest run first.
    pub entries: Vec<DlqEntry>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// One link of a failure's chain: a failed attempt of a failing task, or the run's failure.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FailureLink {
    /// `node_failed` or `run_failed`.
    pub event: String,
    /// Seq of the event.
    pub seq: u64,
    /// When.
    pub at: String,
    /// The node (node failures).
    pub node: Option<String>,
    /// The attempt's id (node failures): `<run_id>.<superstep>.<task>.<attempt>`.
    pub attempt_id: Option<String>,
    /// The failure.
    pub error: Value,
    /// When a retry was due (null for the last attempt).
    pub retry_at: Option<String>,
}

/// `GET /v1/dlq/{run_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DlqDetail {
    /// The entry.
    #[serde(flatten)]
    pub entry: DlqEntry,
    /// The run as a job.
    pub job: JobView,
    /// The error chain: every failed attempt of the task(s) that failed for good, then the
    /// run's failure, in log order.
    pub chain: Vec<FailureLink>,
}

/// `POST /v1/dlq/{run_id}/replay`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DlqReplay {
    /// `true` when this entry had already been replayed: `job` is the run that replay
    /// created, and nothing new was queued.
    pub replayed: bool,
    /// The replay run.
    pub job: JobView,
}
