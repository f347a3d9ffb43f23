//! Wire types: the JSON the API accepts and returns, separate from the domain types so the
//! wire format can evolve on its own. Times are RFC 3339 strings in UTC; ids are their
//! display forms (`run_…`, `int_…`, `ckpt_…`).

mod admin;
mod dlq;
mod graphs;
mod interrupts;
mod jobs;
mod workers;

pub use admin::{AuditList, AuditView, CreateKey, CreatedKey, KeyList, KeyView};
pub use dlq::{AttemptView, DlqDetail, DlqEntry, DlqList, DlqReplay, FailureLink, RetryHistory};
pub use graphs::{EdgeView, GraphList, GraphSummary, GraphView};
pub use interrupts::{InterruptList, InterruptView, RejectInterrupt, ResumeInterrupt};
pub use jobs::{
    CancelJob, CancelJobs, CancelledJobs, CheckpointList, CheckpointView, CreateJob, DurationInput,
    EventView, ForkJob, JobDetail, JobFilter, JobList, JobStatus, JobView, LeaseView,
    PendingInterruptView, ReplayJob, ResumeJob, SendEvent, SentEvent, SkippedJob, StateView,
    Timeline, UpdateState, WaitResult,
};
pub use workers::{GraphVersionView, HeldLeaseView, WorkerList, WorkerView};

use oris_core::event::Payload;
use serde_json::Value;

/// A stored JSON payload as a JSON value (payloads are valid JSON by construction).
pub(crate) fn value(p: &Payload) -> Value {
    serde_json::from_str(p.json()).unwrap_or(Value::Null)
}

/// Health of the process.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// Readiness: every check and its result.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    /// `ok`, or what failed.
    pub store: String,
    /// `running`, `stopped` or `disabled` (a server with `workers(0)` serves the API only).
    pub workers: String,
    /// The worker id of this server's pool.
    pub worker_id: String,
}
