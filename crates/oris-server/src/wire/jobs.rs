//! Jobs: runs keyed by their thread.

use std::collections::BTreeMap;

use oris_core::event::{Event, EventBody, StepResult, Task};
use oris_core::status::{RunStatus, StatusKind};
use oris_core::store::RunRecord;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::value;
use crate::time::rfc3339;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Recorded, waiting for a worker.
    Queued,
    /// Being executed (or about to be continued by a worker).
    Running,
    /// Paused until its interrupts are resumed.
    Interrupted,
    /// Paused on a durable timer or an external event.
    Waiting,
    /// Reached END.
    Completed,
    /// Failed for good.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl From<StatusKind> for JobStatus {
    fn from(k: StatusKind) -> Self {
        match k {
            StatusKind::Queued => JobStatus::Queued,
            StatusKind::Running => JobStatus::Running,
            StatusKind::Interrupted => JobStatus::Interrupted,
            StatusKind::Waiting => JobStatus::Waiting,
            StatusKind::Completed => JobStatus::Completed,
            StatusKind::Failed => JobStatus::Failed,
            _ => JobStatus::Cancelled,
        }
    }
}

/// An interrupt the run waits on.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PendingInterruptView {
    /// Resume it with `POST /v1/interrupts/{interrupt_id}/resume`.
    pub interrupt_id: String,
    /// The node that raised it.
    pub node: String,
    /// What the node asked.
    pub payload: Value,
}

/// The worker holding the run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LeaseView {
    /// The worker (`host-pid-random`).
    pub worker_id: String,
    /// When the lease ends unless renewed.
    pub expires_at: String,
    /// Fencing epoch of the claim.
    pub epoch: u64,
}

/// A job: the latest (or a listed) run of a thread.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobView {
    /// The thread (the job's key).
    pub thread_id: String,
    /// The run.
    pub run_id: String,
    /// Graph name.
    pub graph: String,
    /// Graph version the run is pinned to.
    pub graph_version: String,
    /// Where the run is.
    pub status: JobStatus,
    /// Data of the status: `{"interrupts": [..]}` (interrupted), `{"until", "events"}`
    /// (waiting), `{"checkpoint_id"}` (completed), `{"error": {kind, message, node, chain}}`
    /// (failed), `{"reason"}` (cancelled); null when queued or running.
    pub status_detail: Option<Value>,
    /// Claim order: higher first.
    pub priority: i32,
    /// Caller-supplied labels.
    pub metadata: BTreeMap<String, String>,
    /// When the run was created.
    pub created_at: String,
    /// When its status last changed.
    pub updated_at: String,
    /// The seq of the run's first event in the thread's log: its events are those of the
    /// thread's stream after `first_seq - 1`.
    pub first_seq: u64,
    /// The worker holding the run, if one does.
    pub lease: Option<LeaseView>,
    /// Interrupts the run waits on (empty unless interrupted).
    pub interrupts: Vec<PendingInterruptView>,
}

impl JobView {
    /// The view of a run record.
    pub fn of(r: &RunRecord) -> Self {
        let (detail, interrupts) = match &r.status {
            RunStatus::Interrupted { interrupts } => (
                Some(
                    json!({ "interrupts": interrupts.iter().map(|i| i.interrupt_id.to_string()).collect::<Vec<_>>() }),
                ),
                interrupts
                    .iter()
                    .map(|i| PendingInterruptView {
                        interrupt_id: i.interrupt_id.to_string(),
                        node: i.node.clone(),
                        payload: i.payload.clone(),
                    })
                    .collect(),
            ),
            RunStatus::Waiting { until, events } => (
                Some(json!({ "until": until.map(rfc3339), "events": events })),
                Vec::new(),
            ),
            RunStatus::Completed { checkpoint } => (
                Some(json!({ "checkpoint_id": checkpoint.to_string() })),
                Vec::new(),
            ),
            RunStatus::Failed { error } => (Some(json!({ "error": error })), Vec::new()),
            RunStatus::Cancelled { reason } => (Some(json!({ "reason": reason })), Vec::new()),
            _ => (None, Vec::new()),
        };
        JobView {
            thread_id: r.thread_id.to_string(),
            run_id: r.run_id.to_string(),
            graph: r.graph.clone(),
            graph_version: r.graph_version.clone(),
            status: r.status.kind().into(),
            status_detail: detail,
            priority: r.priority,
            metadata: r.metadata_map(),
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
            first_seq: r.first_seq.0,
            lease: r.lease.as_ref().map(|l| LeaseView {
                worker_id: l.worker_id.clone(),
                expires_at: rfc3339(l.expires_at),
                epoch: r.lease_epoch,
            }),
            interrupts,
        }
    }
}

/// A job with its thread's current state.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobDetail {
    /// The latest run.
    #[serde(flatten)]
    pub job: JobView,
    /// The thread's state after the last superstep (null when this server lacks the run's
    /// graph version and cannot decode it).
    pub values: Option<Value>,
    /// The checkpoint the state stands at.
    pub checkpoint_id: Option<String>,
    /// Nodes of the next superstep (empty when the run is finished).
    pub next: Vec<String>,
    /// Why a run that is ready does not start: no executor has its graph version (neither
    /// this server's pool nor an active remote worker), e.g. "no worker has graph `g`
    /// version `2`"; null otherwise.
    pub waiting_for: Option<String>,
    /// Runs waiting for this thread (multitask strategy `enqueue`), oldest first: each
    /// starts, with its run id, when the run before it ends. Listed by
    /// `GET /v1/jobs/{thread_id}` only (absent from other answers carrying a job).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<Vec<crate::pending::PendingView>>,
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// Runs, oldest first.
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// How long a run may take: seconds, or a duration text (`30s`, `5m`, `1h`, `250ms`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DurationInput {
    /// Seconds.
    Seconds(u64),
    /// A duration text.
    Text(String),
}

/// `POST /v1/jobs`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// The registered graph.
    pub graph: String,
    /// A graph version; default: the most recently registered one.
    #[serde(default)]
    pub version: Option<String>,
    /// The thread: 1–200 characters of `[A-Za-z0-9-_.:@+=]`, chosen by the caller.
    pub thread_id: String,
    /// The input: JSON of the graph's state type, applied to the thread's state through its
    /// reducers. Top-level fields left out take their value in the state type's default;
    /// unknown fields are ignored unless the state denies them.
    #[serde(default = "empty_object")]
    pub input: Value,
    /// Claim order: higher first. Default 0.
    #[serde(default)]
    pub priority: i32,
    /// Labels to filter by (`GET /v1/jobs?metadata.key=value`).
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Time limit of the run from its start; the run fails with `run_timeout` after it.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub timeout: Option<DurationInput>,
    /// `sync` (default), `batched` or `exit`.
    #[serde(default)]
    pub durability: Option<String>,
    /// Pause before these nodes run.
    #[serde(default)]
    pub interrupt_before: Vec<String>,
    /// Pause after these nodes ran.
    #[serde(default)]
    pub interrupt_after: Vec<String>,
    /// What to do when the thread has an unfinished run (or pending runs): `reject`
    /// (default: 409 `run_active`) or `enqueue` (202 with a pending run, started when the
    /// runs before it ended; on a free thread it starts now, like `reject`).
    #[serde(default)]
    pub multitask_strategy: Option<String>,
    /// Same as the `Idempotency-Key` header (the header wins when both are given).
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

fn empty_object() -> Value {
    json!({})
}

/// `POST /v1/jobs/{thread_id}/resume`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeJob {
    /// The interrupt to resume; may be left out when the run waits on exactly one.
    #[serde(default)]
    pub interrupt_id: Option<String>,
    /// The resume value (what `ctx.interrupt` returns in the node).
    pub value: Value,
}

/// `POST /v1/jobs/{thread_id}/replay`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayJob {
    /// The checkpoint to start from (`ckpt_<seq>`, see `…/history`).
    pub checkpoint_id: String,
    /// Claim order of the new run.
    #[serde(default)]
    pub priority: i32,
    /// Labels of the new run.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// `POST /v1/jobs/{thread_id}/fork`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkJob {
    /// The checkpoint of this thread to fork from.
    pub checkpoint_id: String,
    /// The new thread (must not exist).
    pub new_thread_id: String,
    /// Claim order of the new run.
    #[serde(default)]
    pub priority: i32,
    /// Labels of the new run.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// `POST /v1/jobs/{thread_id}/cancel` (the body is optional).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelJob {
    /// Why; recorded in the run's `run_cancelled` event. Default `cancelled via API`.
    #[serde(default)]
    pub reason: Option<String>,
    /// Also drop the thread's pending runs (multitask strategy `enqueue`); by default
    /// they stay, and the oldest starts once the run is cancelled.
    #[serde(default)]
    pub include_pending: bool,
}

/// Which runs `POST /v1/jobs/cancel` cancels. At least one criterion besides `status` is
/// required.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobFilter {
    /// Statuses; default the unfinished ones (`queued`, `running`, `interrupted`,
    /// `waiting`). Runs in a finished status are reported as skipped.
    #[serde(default)]
    pub status: Vec<JobStatus>,
    /// Graph name.
    #[serde(default)]
    pub graph: Option<String>,
    /// Labels that must all match.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// RFC 3339; created at or after.
    #[serde(default)]
    pub created_after: Option<String>,
    /// RFC 3339; created before.
    #[serde(default)]
    pub created_before: Option<String>,
    /// RFC 3339; status changed at or after.
    #[serde(default)]
    pub updated_after: Option<String>,
    /// RFC 3339; status changed before.
    #[serde(default)]
    pub updated_before: Option<String>,
}

/// `POST /v1/jobs/cancel`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelJobs {
    /// Which runs.
    pub filter: JobFilter,
    /// Why; recorded in each run's `run_cancelled` event. Default `cancelled via API (bulk)`.
    #[serde(default)]
    pub reason: Option<String>,
    /// At most this many runs, oldest first: 1–1000, default 100.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// A run `POST /v1/jobs/cancel` matched but did not cancel.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SkippedJob {
    /// The thread.
    pub thread_id: String,
    /// Why: the error code a single cancel would have answered (`run_not_active`, …).
    pub code: String,
}

/// The answer of `POST /v1/jobs/cancel`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CancelledJobs {
    /// Threads whose run was cancelled.
    pub cancelled: Vec<String>,
    /// Threads matched but not cancelled, with why.
    pub skipped: Vec<SkippedJob>,
}

/// `POST /v1/jobs/{thread_id}/state`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateState {
    /// The edit, JSON of the graph's state update (merged by the reducers as if the node
    /// `as_node` had returned it).
    pub values: Value,
    /// The node the edit is attributed to (routing continues from it); default: none.
    #[serde(default)]
    pub as_node: Option<String>,
}

/// `POST /v1/jobs/{thread_id}/events`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendEvent {
    /// The event's name (what `ctx.wait_for_event` waits for).
    pub name: String,
    /// Its payload.
    #[serde(default)]
    pub payload: Value,
    /// The sender's key: the same event sent again with it is recorded once.
    #[serde(default)]
    pub key: Option<String>,
}

/// A buffered external event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SentEvent {
    /// Its id.
    pub delivery_id: String,
    /// The thread.
    pub thread_id: String,
    /// The name.
    pub name: String,
    /// When it arrived.
    pub sent_at: String,
}

/// A thread's state at a checkpoint.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StateView {
    /// The thread.
    pub thread_id: String,
    /// The state.
    pub values: Value,
    /// The checkpoint it stands at.
    pub checkpoint_id: Option<String>,
    /// Nodes of the superstep that follows it.
    pub next: Vec<String>,
}

/// A checkpoint (superstep boundary) of a thread.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CheckpointView {
    /// `ckpt_<seq>`.
    pub checkpoint_id: String,
    /// The run that wrote it.
    pub run_id: String,
    /// Number of the superstep that follows it within the run.
    pub superstep: u32,
    /// Nodes of that superstep.
    pub next: Vec<String>,
    /// When it was recorded.
    pub at: String,
}

/// A thread's checkpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointList {
    /// Oldest first.
    pub checkpoints: Vec<CheckpointView>,
}

/// One event of a thread's log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    /// Position in the thread's log (contiguous from 1).
    pub seq: u64,
    /// The run that wrote it.
    pub run_id: String,
    /// When.
    pub at: String,
    /// `run_started`, `node_completed`, `node_failed`, `step_recorded`,
    /// `interrupt_raised`, `interrupt_resumed`, `run_suspended`, `run_resumed`,
    /// `event_received`, `run_rebased`, `state_updated`, `history_pruned`,
    /// `run_completed`, `run_failed` or `run_cancelled`.
    pub kind: String,
    /// The node, for node events.
    pub node: Option<String>,
    /// The superstep, for node events.
    pub superstep: Option<u32>,
    /// The task index within the superstep, for node events.
    pub task: Option<u32>,
    /// The attempt, for node completions and failures.
    pub attempt: Option<u32>,
    /// The kind's own fields (an update, an input, an error, an interrupt's payload…).
    pub data: Value,
}

fn tasks(ts: &[Task]) -> Vec<String> {
    ts.iter().map(|t| t.node().to_owned()).collect()
}

impl EventView {
    /// The view of an event.
    pub fn of(e: &Event) -> Self {
        let data = match &e.body {
            EventBody::RunStarted {
                graph,
                graph_version,
                input,
                settings,
                boundary,
            } => json!({
                "graph": graph, "graph_version": graph_version, "input": value(input),
                "durability": settings.durability.as_str(),
                "deadline": settings.deadline.map(rfc3339),
                "superstep_limit": settings.superstep_limit,
                "next": tasks(&boundary.next),
            }),
            EventBody::NodeCompleted {
                update, boundary, ..
            } => json!({
                "update": value(update),
                "next": boundary.as_ref().map(|b| tasks(&b.next)),
            }),
            EventBody::NodeFailed {
                error, retry_at, ..
            } => json!({ "error": error, "retry_at": retry_at.map(rfc3339) }),
            EventBody::StepRecorded {
                index,
                name,
                result,
                ..
            } => match result {
                StepResult::Ok(v) => json!({ "index": index, "name": name, "result": value(v) }),
                StepResult::Err(f) => json!({ "index": index, "name": name, "error": f }),
            },
            EventBody::InterruptRaised {
                index,
                interrupt_id,
                payload,
                ..
            } => json!({
                "index": index, "interrupt_id": interrupt_id.to_string(), "payload": value(payload)
            }),
            EventBody::InterruptResumed {
                interrupt_id,
                value: v,
            } => json!({ "interrupt_id": interrupt_id.to_string(), "value": value(v) }),
            EventBody::RunSuspended {
                interrupts,
                until,
                events,
            } => json!({
                "interrupts": interrupts.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "until": until.map(rfc3339),
                "events": events,
            }),
            EventBody::RunRebased { origin, .. } => json!({
                "origin_thread_id": origin.thread_id, "checkpoint_id": origin.checkpoint.to_string(),
                "origin_run_id": origin.run_id.to_string(),
            }),
            EventBody::StateUpdated { as_node, update } => {
                json!({ "as_node": as_node, "update": value(update) })
            }
            EventBody::HistoryPruned { boundary, .. } => json!({ "next": tasks(&boundary.next) }),
            EventBody::EventReceived {
                index,
                name,
                delivery,
                payload,
                ..
            } => json!({
                "index": index, "name": name,
                "delivery_id": delivery.map(|d| d.to_string()),
                "payload": payload.as_ref().map(value),
                "timed_out": delivery.is_none(),
            }),
            EventBody::RunFailed { error } => json!({ "error": error }),
            EventBody::RunCancelled { reason } => json!({ "reason": reason }),
            _ => json!({}),
        };
        EventView {
            seq: e.seq.0,
            run_id: e.run_id.to_string(),
            at: rfc3339(e.at),
            kind: e.body.kind().as_str().to_owned(),
            node: e.body.node().map(str::to_owned),
            superstep: e.body.superstep(),
            task: e.body.task(),
            attempt: e.body.attempt(),
            data,
        }
    }
}

/// A page of a thread's events.
#[derive(Debug, Serialize, ToSchema)]
pub struct Timeline {
    /// Events in seq order.
    pub events: Vec<EventView>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_after: Option<u64>,
}

/// The result of `GET /v1/jobs/{thread_id}/wait`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WaitResult {
    /// True when the timeout passed (or the server is shutting down) before the run
    /// settled; `job` is then its current view.
    pub timed_out: bool,
    /// The job.
    pub job: JobDetail,
}
