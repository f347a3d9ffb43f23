//! Remote workers as the API shows them. The worker protocol's own messages are the types
//! of `oris_core::protocol`, used as they are.

use serde::Serialize;
use utoipa::ToSchema;

/// A graph version a worker executes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GraphVersionView {
    /// Graph name.
    pub name: String,
    /// Graph version.
    pub version: String,
}

/// A lease a worker holds now.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HeldLeaseView {
    /// The run.
    pub run_id: String,
    /// Its thread.
    pub thread_id: String,
    /// Its graph.
    pub graph: String,
    /// The fencing epoch of the claim.
    pub epoch: u64,
    /// When the lease ends unless renewed.
    pub expires_at: String,
}

/// A remote worker.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkerView {
    /// The worker's id (chosen by the worker).
    pub worker_id: String,
    /// The graph versions it executes.
    pub graphs: Vec<GraphVersionView>,
    /// How many attempts it executes at once.
    pub capacity: u32,
    /// When it first registered.
    pub registered_at: String,
    /// When it last polled or sent a heartbeat.
    pub last_seen: String,
    /// When it announced a graceful stop; null while it runs.
    pub stopped_at: Option<String>,
    /// `active` (seen within the lease TTL), `stale` (not seen since), `stopped` (announced
    /// a stop and has not registered again).
    pub state: String,
    /// The leases it holds now (unexpired).
    pub leases: Vec<HeldLeaseView>,
}

/// `GET /v1/workers`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerList {
    /// Every registered worker, by id.
    pub workers: Vec<WorkerView>,
}
