//! The remote worker protocol: the JSON messages a worker process and the server exchange
//! over `POST /v1/workers/…` (see `docs/api.md`, "Workers").
//!
//! A worker polls for attempts; an [`Attempt`] carries everything needed to execute it
//! without another round trip: the claimed run with its lease ([`Fence`] and expiry) and a
//! [`ThreadImage`] — the thread's latest snapshot and the log after it (the frontier of
//! nodes and every recorded step and answer the run needs), its interrupts and deliveries.
//! The worker executes with the ordinary engine over a local copy of that image and sends
//! every commit the engine makes back as a [`Report`], fenced by its lease; the server
//! applies it through its store, which refuses it (`lease_lost`, nothing written) once the
//! lease is superseded or expired. Heartbeats renew leases; an [`Ack`] ends an attempt.
//!
//! Store records, commits and events travel in their serde form (an event as its
//! [`EventRow`](crate::event::EventRow)); worker and server must speak the same
//! [`PROTOCOL_VERSION`].

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::id::{RunId, Seq, Timestamp};
use crate::store::{Commit, Delivery, Fence, InterruptRecord, RunRecord, Snapshot, ThreadRecord};

/// The protocol version this build speaks. A poll with another version is refused
/// (`protocol_mismatch`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Whether `id` is a valid worker id: 1–128 characters of `[A-Za-z0-9._:-]`. The server
/// refuses other ids; the worker library refuses to start with one.
pub fn is_valid_worker_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A worker id for this process: `host-pid-random` (the host name reduced to the valid
/// characters, at most 80 of them; `localhost` without one). Always valid.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
                .take(80)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    // The random tail of a UUIDv7.
    let suffix = uuid::Uuid::now_v7().as_u128() as u32;
    format!("{host}-{}-{suffix:08x}", std::process::id())
}

/// A graph version a worker executes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphRef {
    /// Graph name.
    pub name: String,
    /// Graph version.
    pub version: String,
}

/// `POST /v1/workers/poll`: registers (or refreshes) the worker and asks for attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollRequest {
    /// The worker's identity.
    pub worker_id: String,
    /// [`PROTOCOL_VERSION`] of the worker.
    pub protocol: u32,
    /// The graph versions it executes (at least one).
    pub graphs: Vec<GraphRef>,
    /// How many attempts it executes at once.
    pub capacity: u32,
    /// How many attempts it wants now (1..=capacity; what it has free).
    pub max: u32,
    /// How long the server may hold the request open when nothing is ready, in
    /// milliseconds (capped by the server; 0 answers at once).
    #[serde(default)]
    pub wait_ms: u64,
}

/// The answer to a poll: zero or more attempts, and the lease settings to honour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollResponse {
    /// The claimed attempts (empty when nothing was ready within the wait).
    pub attempts: Vec<Attempt>,
    /// The lease duration the server grants, in milliseconds.
    pub lease_ttl_ms: u64,
    /// How often the worker must send heartbeats, in milliseconds.
    pub heartbeat_ms: u64,
}

/// One claimed run to execute under a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// `<run_id>:<epoch>`: names this execution in logs, metrics and the timeline.
    pub attempt_id: String,
    /// The lease: every report, heartbeat and ack carries it.
    pub fence: Fence,
    /// The lease ends at this time unless renewed.
    pub expires_at: Timestamp,
    /// The run as claimed (status, graph version, lease).
    pub run: RunRecord,
    /// The thread as far as the run needs it.
    pub image: ThreadImage,
}

impl Attempt {
    /// The attempt id of a lease.
    pub fn id_of(fence: &Fence) -> String {
        format!("{}:{}", fence.run_id, fence.epoch)
    }
}

/// What a worker needs of a thread to continue its run: the thread record, the run
/// records it names, the latest snapshot, the log to the head from the earlier of that
/// snapshot's seq and the run's first event (the fold needs the run's opening events) — or
/// the whole log without a snapshot — the interrupts of those runs, and the thread's
/// deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadImage {
    /// The thread record.
    pub thread: ThreadRecord,
    /// The thread's runs the image refers to (at least the claimed one).
    pub runs: Vec<RunRecord>,
    /// The latest snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// The log from `min(snapshot.at_seq, run.first_seq)` (or from the start) to the head,
    /// in order.
    pub events: Vec<Event>,
    /// The interrupts of the image's runs.
    pub interrupts: Vec<InterruptRecord>,
    /// The thread's deliveries.
    pub deliveries: Vec<Delivery>,
}

/// `POST /v1/workers/{worker_id}/report-step`: one commit of the attempt's engine (node
/// completions and failures, recorded steps, interrupts, status changes), fenced by the
/// lease. Idempotent by lease and sequence: the same report sent again after it was
/// applied (a lost answer) answers the same receipt with `replayed: true`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The lease; must equal `commit.fence`.
    pub fence: Fence,
    /// The commit, as the engine made it.
    pub commit: Commit,
}

/// The answer to a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportReceipt {
    /// The thread's head after the commit.
    pub head: Seq,
    /// The same report had already been applied; nothing was written now.
    pub replayed: bool,
}

/// `POST /v1/workers/{worker_id}/heartbeat`: renews the worker's leases and refreshes its
/// `last_seen`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The leases the worker holds.
    pub leases: Vec<Fence>,
}

/// The answer to a heartbeat: which leases were renewed, which are lost (the worker must
/// stop executing those runs at once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Renewed leases with their new expiry.
    pub renewed: Vec<RenewedLease>,
    /// Lost leases, with why.
    pub lost: Vec<LostLease>,
}

/// A renewed lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewedLease {
    /// The lease.
    pub fence: Fence,
    /// Its new expiry.
    pub expires_at: Timestamp,
}

/// A lease the worker no longer holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostLease {
    /// The lease.
    pub fence: Fence,
    /// Why (`expired`, `superseded by a newer claim`, `released`, …).
    pub reason: String,
    /// The run was cancelled: the worker stops it (its node futures are dropped).
    pub cancelled: bool,
}

/// How an attempt ended, as the worker tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckOutcome {
    /// The run ended (completed, failed or cancelled) through the attempt's reports.
    Finished,
    /// The run suspended (interrupted or waiting) through the attempt's reports.
    Suspended,
    /// The worker hands the run back unfinished (graceful shutdown, or it cannot execute
    /// it): the lease is released and the run is claimable at once.
    Released,
}

/// `POST /v1/workers/{worker_id}/ack`: ends an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The lease.
    pub fence: Fence,
    /// How it ended.
    pub outcome: AckOutcome,
    /// An error the worker hit, for the server's log and the audit (e.g. the graph version
    /// is missing, or the store copy was corrupt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to an ack: the run as the server has it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckResponse {
    /// The run.
    pub run_id: RunId,
    /// Its status name (`completed`, `interrupted`, `queued`…).
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Boundary, EventBody, Payload, RunSettings};
    use crate::id::ThreadId;
    use crate::status::RunStatus;

    #[test]
    fn worker_ids() {
        assert!(is_valid_worker_id("w-1.a_b:c"));
        assert!(is_valid_worker_id(&"a".repeat(128)));
        for bad in ["", "a b", "w/1", "é", &"a".repeat(129)] {
            assert!(!is_valid_worker_id(bad), "{bad}");
        }
        let id = default_worker_id();
        assert!(is_valid_worker_id(&id), "{id}");
        assert_ne!(default_worker_id(), id, "the suffix is random");
    }

    #[test]
    fn an_image_round_trips_through_json() {
        let run_id = RunId::from_uuid(uuid::Uuid::now_v7());
        let thread_id = ThreadId::new("t-1").unwrap();
        let at = Timestamp(1_700_000_000_000);
        let started = Event {
            seq: Seq(1),
            run_id,
            at,
            body: EventBody::RunStarted {
                graph: "g".into(),
                graph_version: "1".into(),
                input: Payload::encode(&serde_json::json!({"n": 1})).unwrap(),
                settings: RunSettings {
                    durability: crate::event::Durability::Sync,
                    deadline: None,
                    superstep_limit: 25,
                    interrupt_before: Vec::new(),
                    interrupt_after: Vec::new(),
                },
                boundary: Boundary::default(),
            },
        };
        let run = RunRecord::new(
            run_id,
            thread_id.clone(),
            "g",
            "1",
            RunStatus::Queued,
            Seq(1),
            at,
        );
        let image = ThreadImage {
            thread: ThreadRecord {
                thread_id,
                graph: "g".into(),
                head: Seq(1),
                active_run: Some(run_id),
                last_run: Some(run_id),
                created_at: at,
                updated_at: at,
            },
            runs: vec![run],
            snapshot: None,
            events: vec![started],
            interrupts: Vec::new(),
            deliveries: Vec::new(),
        };
        let json = serde_json::to_string(&image).unwrap();
        let back: ThreadImage = serde_json::from_str(&json).unwrap();
        assert_eq!(back, image);
    }
}
