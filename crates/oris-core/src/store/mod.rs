//! Storage traits, commit batches and records.
//!
//! A backend stores, per thread: the thread record (graph, head seq, active run), the run
//! records, the append-only event log, and the latest snapshot (materialised state at a
//! superstep boundary). Every write is a [`Commit`]: a batch of events, an optional run
//! creation or status change and an optional snapshot, applied atomically and only if the
//! thread's head is still `expected_head` (compare-and-set — two writers on one thread can
//! never both succeed). The rules a commit must satisfy are decided once, here, by
//! [`plan_commit`]; backends persist its result. The conformance suite in `oris-testkit`
//! checks every backend against the same cases.

mod control;
mod memory;

pub use control::{
    ApiKeyRecord, AuditFilter, AuditRecord, ClaimRequest, Fence, IdempotencyRecord,
    InterruptFilter, LeaseHolder, PendingRun, Reservation, StoredResponse, WorkerRecord,
    check_fence, check_fence_writer, driven_by_workers, plan_claim, plan_reap, plan_release,
    plan_renew, plan_reservation, ready_for_status, ready_on_answer, ready_on_delivery,
};
pub use memory::MemoryStore;

use async_trait::async_trait;

use crate::event::{Boundary, Durability, Event, EventBody, Payload};
use crate::id::{DeliveryId, InterruptId, RunId, Seq, ThreadId, Timestamp};
use crate::status::{RunStatus, StatusKind, TransitionError};

/// The record of a thread.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ThreadRecord {
    /// Identity.
    pub thread_id: ThreadId,
    /// The graph the thread belongs to (fixed by its first run).
    pub graph: String,
    /// Seq of the last event; [`Seq::ZERO`] for an empty log.
    pub head: Seq,
    /// The run currently queued or running, if any (at most one per thread).
    pub active_run: Option<RunId>,
    /// The most recently created run.
    pub last_run: Option<RunId>,
    /// When the thread was created.
    pub created_at: Timestamp,
    /// When the thread last changed.
    pub updated_at: Timestamp,
}

/// The record of a run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// Identity.
    pub run_id: RunId,
    /// Its thread.
    pub thread_id: ThreadId,
    /// Graph name.
    pub graph: String,
    /// Graph version the run is pinned to.
    pub graph_version: String,
    /// Where the run is.
    pub status: RunStatus,
    /// Seq of the run's first event.
    pub first_seq: Seq,
    /// When the run was created.
    pub created_at: Timestamp,
    /// When its status last changed.
    pub updated_at: Timestamp,
    /// Claim order: runs with a higher priority are claimed first. Default 0.
    pub priority: i32,
    /// Caller-supplied labels (a JSON object of strings), for filtering; `None` if none.
    pub metadata: Option<Payload>,
    /// When the run may be claimed by a worker (see [`plan_claim`]); `None` when it is
    /// not claimable (finished, interrupted without answers, or driven in-process by the
    /// library). Maintained by the store: set by [`plan_commit`] from the status, by claims,
    /// renewals and releases, and by answers and deliveries that make a run ready.
    pub ready_at: Option<Timestamp>,
    /// The fencing epoch of the latest claim (0: never claimed). Only ever increases.
    pub lease_epoch: u64,
    /// The current lease holder, if the run is leased.
    pub lease: Option<LeaseHolder>,
}

impl RunRecord {
    /// A new run record with the defaults of the server-only fields (priority 0, no
    /// metadata, not ready, never leased); [`plan_commit`] sets `ready_at` from the status.
    pub fn new(
        run_id: RunId,
        thread_id: ThreadId,
        graph: impl Into<String>,
        graph_version: impl Into<String>,
        status: RunStatus,
        first_seq: Seq,
        created_at: Timestamp,
    ) -> Self {
        RunRecord {
            run_id,
            thread_id,
            graph: graph.into(),
            graph_version: graph_version.into(),
            status,
            first_seq,
            created_at,
            updated_at: created_at,
            priority: 0,
            metadata: None,
            ready_at: None,
            lease_epoch: 0,
            lease: None,
        }
    }

    /// The metadata as a JSON object of strings (empty when absent or not such an object).
    pub fn metadata_map(&self) -> std::collections::BTreeMap<String, String> {
        self.metadata
            .as_ref()
            .and_then(|m| serde_json::from_str(m.json()).ok())
            .unwrap_or_default()
    }
}

/// Materialised state of a thread at a superstep boundary: the fold of events
/// `1..=at_seq`. An optimisation over the log, never the source of truth.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// The boundary event it stands at.
    pub at_seq: Seq,
    /// The run that wrote that event.
    pub run_id: RunId,
    /// Number of the superstep that `boundary.next` belongs to.
    pub next_superstep: u32,
    /// The state, serialized.
    pub state: Payload,
    /// Tasks and join progress at that boundary.
    pub boundary: Boundary,
    /// When it was taken.
    pub created_at: Timestamp,
}

/// A run record to create or a status to set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RunWrite {
    /// Create a run; the thread must have no active run. Creates the thread when its log is
    /// empty.
    Create(RunRecord),
    /// Change a run's status along an allowed edge of the state machine.
    SetStatus {
        /// The run.
        run_id: RunId,
        /// Its new status.
        status: RunStatus,
    },
}

/// One atomic write to one thread.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Commit {
    /// The thread.
    pub thread_id: ThreadId,
    /// The head the writer based this batch on; the commit fails with
    /// [`Error::Conflict`] if the stored head differs.
    pub expected_head: Seq,
    /// Events with seqs `expected_head + 1 ..`, contiguous.
    pub events: Vec<Event>,
    /// Run creation or status change.
    pub run: Option<RunWrite>,
    /// A new snapshot; replaces the thread's previous one.
    pub snapshot: Option<Snapshot>,
    /// How durable the write must be before `commit` returns.
    pub durability: Durability,
    /// The lease the writer holds on the run, if it drives the run under a lease: the
    /// commit then succeeds only while that lease is current and unexpired
    /// ([`check_fence`]), otherwise it fails with [`Error::LeaseLost`] and changes nothing.
    pub fence: Option<Fence>,
}

/// Checks a prune: `base` must be a `HistoryPruned` event within the log, written by a run
/// of the thread, before the first event of the thread's active run (whatever an unfinished
/// run needs stays), and `replaced` — the event now at `base.seq` — must close a superstep.
///
/// # Errors
/// [`Error::InvalidCommit`] naming the broken rule.
pub fn check_prune(
    thread: &ThreadRecord,
    active_first_seq: Option<Seq>,
    base: &Event,
    replaced: &Event,
) -> Result<()> {
    let invalid = |detail: String| Error::InvalidCommit {
        thread_id: thread.thread_id.clone(),
        detail,
    };
    if !matches!(base.body, EventBody::HistoryPruned { .. }) {
        return Err(invalid(
            "a prune base must be a history_pruned event".into(),
        ));
    }
    if base.seq == Seq::ZERO || base.seq > thread.head || replaced.seq != base.seq {
        return Err(invalid(format!(
            "prune point {} is outside the log (head {})",
            base.seq, thread.head
        )));
    }
    if replaced.body.boundary().is_none() {
        return Err(invalid(format!(
            "event {} is not a superstep boundary",
            base.seq
        )));
    }
    if let Some(first) = active_first_seq
        && base.seq >= first
    {
        return Err(invalid(format!(
            "prune point {} is inside the active run, which starts at {first}",
            base.seq
        )));
    }
    Ok(())
}

/// What a successful commit returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    /// The thread's new head.
    pub head: Seq,
}

/// Which runs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only runs of this thread.
    pub thread_id: Option<ThreadId>,
    /// Only runs of this graph.
    pub graph: Option<String>,
    /// Only runs in one of these statuses (empty: any).
    pub statuses: Vec<StatusKind>,
    /// Only runs created after this one (cursor; runs are ordered by id, i.e. creation).
    pub after: Option<RunId>,
    /// At most this many (0: no limit).
    pub limit: usize,
    /// Only runs created at or after this time.
    pub created_from: Option<Timestamp>,
    /// Only runs created before this time.
    pub created_to: Option<Timestamp>,
    /// Only runs whose status changed at or after this time.
    pub updated_from: Option<Timestamp>,
    /// Only runs whose status changed before this time.
    pub updated_to: Option<Timestamp>,
    /// Only runs whose metadata has every one of these top-level string values.
    pub metadata: Vec<(String, String)>,
}

impl RunFilter {
    /// Runs that are queued or running: what recovery must continue.
    pub fn unfinished() -> Self {
        RunFilter {
            statuses: vec![
                StatusKind::Queued,
                StatusKind::Running,
                StatusKind::Interrupted,
                StatusKind::Waiting,
            ],
            ..Default::default()
        }
    }

    /// Whether `run` passes the filter (the `after` cursor and limit aside).
    pub fn matches(&self, run: &RunRecord) -> bool {
        self.thread_id.as_ref().is_none_or(|t| *t == run.thread_id)
            && self.graph.as_ref().is_none_or(|g| *g == run.graph)
            && (self.statuses.is_empty() || self.statuses.contains(&run.status.kind()))
            && self.created_from.is_none_or(|t| run.created_at >= t)
            && self.created_to.is_none_or(|t| run.created_at < t)
            && self.updated_from.is_none_or(|t| run.updated_at >= t)
            && self.updated_to.is_none_or(|t| run.updated_at < t)
            && (self.metadata.is_empty() || {
                let m = run.metadata_map();
                self.metadata.iter().all(|(k, v)| m.get(k) == Some(v))
            })
    }
}

/// A storage error. Driver errors are mapped inside each backend and never cross this
/// boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The thread's head moved: another writer committed first.
    #[error("thread `{thread_id}` changed concurrently: expected head {expected}, found {actual}")]
    Conflict {
        /// The thread.
        thread_id: ThreadId,
        /// The head the writer expected.
        expected: Seq,
        /// The stored head.
        actual: Seq,
    },
    /// The thread already has a queued or running run.
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
        /// The graph of the rejected run.
        requested: String,
    },
    /// No such thread.
    #[error("thread `{thread_id}` does not exist")]
    ThreadNotFound {
        /// The thread.
        thread_id: ThreadId,
    },
    /// No such run.
    #[error("run {run_id} does not exist")]
    RunNotFound {
        /// The run.
        run_id: RunId,
    },
    /// The requested status change is not an edge of the state machine.
    ///
    /// The message names the run and both statuses; the refused edge is a field, not the
    /// error's `source`, so that reports do not print it twice.
    #[error("run {run_id}: {transition}")]
    InvalidTransition {
        /// The run.
        run_id: RunId,
        /// The refused edge.
        transition: TransitionError,
    },
    /// The commit breaks a structural rule (a bug in the writer, not a race).
    #[error("invalid commit on thread `{thread_id}`: {detail}")]
    InvalidCommit {
        /// The thread.
        thread_id: ThreadId,
        /// The broken rule.
        detail: String,
    },
    /// A stored value cannot be read back.
    #[error("corrupt data in thread `{thread_id}`{}: {detail}", seq.map(|s| format!(" at seq {s}")).unwrap_or_default())]
    Corrupt {
        /// The thread.
        thread_id: ThreadId,
        /// The event, if the damage is in one.
        seq: Option<Seq>,
        /// What is wrong, with the field path.
        detail: String,
    },
    /// The storage could not be reached or failed; the operation may be retried.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The storage cannot be used by this build (e.g. its schema is newer than this code
    /// knows, or the file is not a database); retrying will not help.
    #[error("storage incompatible: {0}")]
    Incompatible(String),
    /// No interrupt has this id.
    #[error("interrupt {interrupt_id} does not exist")]
    InterruptNotFound {
        /// The interrupt.
        interrupt_id: InterruptId,
    },
    /// The interrupt cannot take a resume value: its run ended without it.
    #[error("interrupt {interrupt_id} is not pending: its run is {status}")]
    InterruptNotPending {
        /// The interrupt.
        interrupt_id: InterruptId,
        /// The run's status.
        status: &'static str,
    },
    /// The idempotency key was used before with a different request.
    #[error("idempotency key `{key}` was already used with a different request")]
    IdempotencyConflict {
        /// The key.
        key: String,
    },
    /// The interrupt was already answered with a different value.
    #[error("interrupt {interrupt_id} was already resumed with a different value")]
    ResumeConflict {
        /// The interrupt.
        interrupt_id: InterruptId,
    },
    /// The writer's lease on the run is not current (superseded, released or expired):
    /// it must stop driving the run. Nothing was written.
    #[error("lease on run {run_id} (epoch {epoch}) lost: {reason}")]
    LeaseLost {
        /// The run.
        run_id: RunId,
        /// The epoch the writer presented.
        epoch: u64,
        /// Why.
        reason: &'static str,
    },
    /// A record with this identity already exists (an API key id).
    #[error("{what} `{id}` already exists")]
    AlreadyExists {
        /// What kind of record.
        what: &'static str,
        /// Its identity.
        id: String,
    },
}

impl Error {
    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A storage backend.
///
/// Implementations must make [`Store::commit`] atomic and linearizable per thread, durable
/// as requested by [`Commit::durability`], and must validate it with [`plan_commit`].
/// Reads never block an async executor thread.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Applies a commit atomically.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the head moved, the rule violations of [`plan_commit`],
    /// [`Error::Unavailable`] on I/O failure (nothing was written).
    async fn commit(&self, commit: Commit) -> Result<Receipt>;

    /// Reads a thread record.
    async fn thread(&self, thread_id: &ThreadId) -> Result<Option<ThreadRecord>>;

    /// Reads a run record.
    async fn run(&self, run_id: RunId) -> Result<Option<RunRecord>>;

    /// Lists runs, oldest first.
    async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>>;

    /// Waiting runs whose wake-up time (`RunStatus::Waiting { until }`) is at or before
    /// `now`, earliest first, at most `limit`. Backends find them by an index on the wake-up
    /// time, not by scanning runs.
    async fn due_runs(&self, now: Timestamp, limit: usize) -> Result<Vec<RunRecord>>;

    /// Reads up to `limit` events with seq greater than `after`, in seq order. Fewer than
    /// `limit` events means the log ends there (readers stop without asking again).
    async fn events(&self, thread_id: &ThreadId, after: Seq, limit: usize) -> Result<Vec<Event>>;

    /// The thread's snapshot, if one exists at or before `at_or_before`.
    async fn snapshot(&self, thread_id: &ThreadId, at_or_before: Seq) -> Result<Option<Snapshot>>;

    /// Deletes every snapshot of the thread (they are an optimisation: state is rebuilt
    /// from the log). Returns how many were deleted.
    ///
    /// # Errors
    /// [`Error::ThreadNotFound`] when the thread does not exist, [`Error::Unavailable`] on
    /// I/O failure.
    async fn delete_snapshots(&self, thread_id: &ThreadId) -> Result<u64>;

    /// Reads an interrupt. Interrupts are created by commits carrying
    /// [`EventBody::InterruptRaised`] and marked applied by [`EventBody::InterruptResumed`]
    /// (see [`interrupt_effects`]).
    async fn interrupt(&self, interrupt_id: InterruptId) -> Result<Option<InterruptRecord>>;

    /// Every interrupt of a thread, in the order they were raised.
    async fn interrupts(&self, thread_id: &ThreadId) -> Result<Vec<InterruptRecord>>;

    /// Records a resume value for an interrupt before anything acts on it. The value waits
    /// in the store until the run applies it, so a resume never gets lost, even when it
    /// arrives while the run is still suspending or the process dies right after. It is
    /// durable when this returns, or — for backends with a sequential log (SQLite's WAL) —
    /// at the latest with the store's next durable commit, which the caller makes before it
    /// acknowledges the resume (the `InterruptResumed` commit that applies the value).
    ///
    /// Idempotent: the same value again returns [`Answer::AlreadyAnswered`]; the decision is
    /// made atomically with the check, so of many concurrent callers exactly one gets
    /// [`Answer::Recorded`].
    ///
    /// # Errors
    /// [`Error::InterruptNotFound`]; [`Error::ResumeConflict`] if answered with another
    /// value (JSON compared by value); [`Error::InterruptNotPending`] if its run ended.
    async fn answer_interrupt(
        &self,
        interrupt_id: InterruptId,
        value: Payload,
        at: Timestamp,
    ) -> Result<(Answer, InterruptRecord)>;

    /// Buffers an external event for a thread, durably. With an idempotency `key`, the same
    /// event sent again is not recorded twice (the earlier delivery is returned with
    /// `false`); the same key with a different event is refused.
    ///
    /// # Errors
    /// [`Error::ThreadNotFound`], [`Error::IdempotencyConflict`].
    async fn deliver(
        &self,
        thread_id: &ThreadId,
        name: &str,
        payload: Payload,
        key: Option<String>,
        at: Timestamp,
    ) -> Result<(Delivery, bool)>;

    /// Deletes a thread and everything stored for it (runs, events, snapshots, interrupts,
    /// deliveries, pending runs).
    ///
    /// # Errors
    /// [`Error::ThreadNotFound`]; [`Error::RunActive`] while it has a queued, running,
    /// interrupted or waiting run (cancel it first).
    async fn delete_thread(&self, thread_id: &ThreadId) -> Result<()>;

    /// Prunes a thread's history: deletes its events before `base.seq` and replaces the
    /// event at `base.seq` — which must be a superstep boundary — with `base`, a
    /// [`EventBody::HistoryPruned`] carrying the state there. Interrupts and deliveries
    /// applied or consumed before `base.seq` are deleted too. Returns how many events were
    /// deleted. See [`check_prune`] for the rules.
    ///
    /// # Errors
    /// [`Error::ThreadNotFound`], [`Error::InvalidCommit`] when `base` breaks a rule.
    async fn prune(&self, thread_id: &ThreadId, base: Event) -> Result<u64>;

    /// A thread's deliveries in arrival order; only unconsumed ones if `pending_only`.
    async fn deliveries(&self, thread_id: &ThreadId, pending_only: bool) -> Result<Vec<Delivery>>;

    /// Interrupts across threads, oldest first (by id).
    async fn list_interrupts(&self, filter: &InterruptFilter) -> Result<Vec<InterruptRecord>>;

    // --- Leases -------------------------------------------------------------------------

    /// Claims up to `request.limit` ready runs for a worker, atomically: each returned record
    /// is the run after [`plan_claim`], and no run is returned to two concurrent claimers.
    /// Runs are taken by priority (highest first), then `ready_at`, then run id; backends
    /// find them by an index on `ready_at`, not by scanning runs.
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<RunRecord>>;

    /// Extends the lease `fence` for `ttl` from `now` ([`plan_renew`]); returns the run after.
    ///
    /// # Errors
    /// [`Error::RunNotFound`], [`Error::LeaseLost`].
    async fn renew_lease(
        &self,
        fence: &Fence,
        worker_id: &str,
        now: Timestamp,
        ttl: std::time::Duration,
    ) -> Result<RunRecord>;

    /// Hands a leased run back ([`plan_release`]); returns the run after.
    ///
    /// # Errors
    /// [`Error::RunNotFound`], [`Error::LeaseLost`].
    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<RunRecord>;

    /// Clears up to `limit` leases that expired at or before `now` ([`plan_reap`]) and
    /// returns the runs after, earliest expiry first (then by run id), so that an expired
    /// lease is over by time at the store even when nobody claims the run: listings stop
    /// naming the dead holder, and the holder's late heartbeat, commit or release fails
    /// with [`Error::LeaseLost`] as before. The epoch stays (a new claim takes the next
    /// one) and the run stays claimable. Backends find the expired leases by an index on
    /// the lease expiry, not by scanning runs, and never wait for a run another writer
    /// holds (it is left for the next reap).
    async fn reap_leases(&self, now: Timestamp, limit: usize) -> Result<Vec<RunRecord>>;

    /// How many runs of each graph hold a lease unexpired at `now` (expiring after it),
    /// ordered by graph name; graphs without any are left out. What per-graph concurrency
    /// limits are checked against.
    async fn lease_counts(&self, now: Timestamp) -> Result<Vec<(String, u64)>>;

    // --- Workers ------------------------------------------------------------------------

    /// Records a remote worker (insert or update): an existing record keeps its
    /// `registered_at`; every other field is replaced (so a registration without
    /// `stopped_at` clears an earlier stop). Durable at the latest with the store's next
    /// durable commit (no sync of its own: a worker's every poll registers it again).
    async fn register_worker(&self, worker: &WorkerRecord) -> Result<()>;

    /// Updates a worker's `last_seen` (heartbeat); `false` when no such worker (nothing is
    /// created).
    async fn touch_worker(&self, worker_id: &str, now: Timestamp) -> Result<bool>;

    /// Every registered worker, by id (bytewise).
    async fn workers(&self) -> Result<Vec<WorkerRecord>>;

    // --- Pending runs -------------------------------------------------------------------

    /// Stores a pending run (multitask strategy `enqueue`) and returns the position it was
    /// given: one more than the highest position among the thread's pending runs, 1 when
    /// it has none (`run.position` is ignored). Durable when it returns (the caller
    /// acknowledges the request right after).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when a pending run with this id is stored.
    async fn push_pending(&self, run: &PendingRun) -> Result<u64>;

    /// The thread's pending runs, oldest (lowest position) first.
    async fn pending_runs(&self, thread_id: &ThreadId) -> Result<Vec<PendingRun>>;

    /// Up to `limit` threads that have pending runs and no unfinished run (no active run,
    /// or no thread record at all): the threads whose oldest pending run may start now.
    /// Ordered by the creation time of their oldest pending run, then thread id.
    async fn pending_threads(&self, limit: usize) -> Result<Vec<ThreadId>>;

    /// Deletes a pending run; `false` when there is none with this id.
    async fn remove_pending(&self, run_id: RunId) -> Result<bool>;

    // --- Idempotency --------------------------------------------------------------------

    /// Reserves `candidate.key` within `candidate.scope` for a request, atomically with the
    /// check ([`plan_reservation`]): of concurrent identical requests exactly one gets
    /// [`Reservation::Reserved`]. Durable with the store's next durable commit.
    async fn reserve_idempotency(
        &self,
        candidate: &IdempotencyRecord,
        now: Timestamp,
    ) -> Result<Reservation>;

    /// Stores the response of a reserved key; later identical requests get it as a replay.
    async fn complete_idempotency(
        &self,
        scope: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<()>;

    /// Drops an unfinished reservation (the request failed without doing anything), so a
    /// retry may take the key. Does nothing to a completed record.
    async fn release_idempotency(&self, scope: &str, key: &str) -> Result<()>;

    /// Deletes idempotency records that expired at or before `now`; returns how many.
    async fn purge_idempotency(&self, now: Timestamp) -> Result<u64>;

    // --- API keys -----------------------------------------------------------------------

    /// Stores a new API key.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when the key id is taken.
    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<()>;

    /// Reads an API key by id (revoked ones too).
    async fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>>;

    /// Every API key, oldest first.
    async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>>;

    /// Revokes a key; `false` when it does not exist or was already revoked.
    async fn revoke_api_key(&self, key_id: &str, at: Timestamp) -> Result<bool>;

    // --- Audit --------------------------------------------------------------------------

    /// Appends an entry to the audit log and returns its id. Durable with the store's next
    /// durable commit.
    async fn append_audit(&self, record: &AuditRecord) -> Result<u64>;

    /// Lists audit entries, oldest first.
    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>>;
}

/// An external event sent to a thread, buffered until a node waiting for its name
/// consumes it (`ctx.wait_for_event`). Deliveries are consumed in the order they arrived.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Delivery {
    /// Identity.
    pub delivery_id: DeliveryId,
    /// The thread it was sent to.
    pub thread_id: ThreadId,
    /// The event's name.
    pub name: String,
    /// The event's payload.
    pub payload: Payload,
    /// The sender's idempotency key, if any: the same key with the same event is recorded once.
    pub key: Option<String>,
    /// When it arrived.
    pub sent_at: Timestamp,
    /// Seq of the `EventReceived` event that consumed it.
    pub consumed_seq: Option<Seq>,
}

/// Deliveries a commit consumes: id and seq of the `EventReceived` event.
pub fn consumed_deliveries(commit: &Commit) -> Vec<(DeliveryId, Seq)> {
    commit
        .events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::EventReceived {
                delivery: Some(d), ..
            } => Some((*d, e.seq)),
            _ => None,
        })
        .collect()
}

/// Decides a delivery against an earlier one with the same idempotency key: `Ok(())` if it
/// is the same event (nothing to record), [`Error::IdempotencyConflict`] otherwise.
///
/// # Errors
/// [`Error::IdempotencyConflict`].
pub fn check_redelivery(existing: &Delivery, name: &str, payload: &Payload) -> Result<()> {
    if existing.name == name && same_json(&existing.payload, payload) {
        Ok(())
    } else {
        Err(Error::IdempotencyConflict {
            key: existing.key.clone().unwrap_or_default(),
        })
    }
}

/// An interrupt as stored: raised by a run, answered at most once, applied at most once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InterruptRecord {
    /// Identity.
    pub interrupt_id: InterruptId,
    /// Its thread.
    pub thread_id: ThreadId,
    /// The run that raised it.
    pub run_id: RunId,
    /// The node that raised it.
    pub node: String,
    /// What the node asked.
    pub payload: Payload,
    /// Seq of the `InterruptRaised` event.
    pub raised_seq: Seq,
    /// When it was raised.
    pub raised_at: Timestamp,
    /// The resume value and when it arrived, once answered.
    pub answer: Option<(Payload, Timestamp)>,
    /// Seq of the `InterruptResumed` event that applied the answer to the run.
    pub applied_seq: Option<Seq>,
}

/// What [`Store::answer_interrupt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// This call recorded the value.
    Recorded,
    /// The same value had been recorded before; nothing changed.
    AlreadyAnswered,
}

/// When a run in `status` must be woken up: the `until` of a waiting run.
pub fn wake_at(status: &RunStatus) -> Option<Timestamp> {
    match status {
        RunStatus::Waiting { until, .. } => *until,
        _ => None,
    }
}

/// Whether two JSON payloads are the same value (object key order and whitespace aside).
pub fn same_json(a: &Payload, b: &Payload) -> bool {
    a == b
        || matches!(
            (
                serde_json::from_str::<serde_json::Value>(a.json()),
                serde_json::from_str::<serde_json::Value>(b.json()),
            ),
            (Ok(x), Ok(y)) if x == y
        )
}

/// The interrupt rows a commit creates and applies, derived from its events; every backend
/// writes these in the commit's transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterruptEffects {
    /// Interrupts raised by the commit.
    pub raised: Vec<InterruptRecord>,
    /// Interrupts applied by the commit: id, seq of the `InterruptResumed` event, value.
    pub applied: Vec<(InterruptId, Seq, Payload)>,
}

/// Derives the interrupt rows of a commit.
pub fn interrupt_effects(commit: &Commit) -> InterruptEffects {
    let mut out = InterruptEffects::default();
    for e in &commit.events {
        match &e.body {
            EventBody::InterruptRaised {
                node,
                interrupt_id,
                payload,
                ..
            } => out.raised.push(InterruptRecord {
                interrupt_id: *interrupt_id,
                thread_id: commit.thread_id.clone(),
                run_id: e.run_id,
                node: node.clone(),
                payload: payload.clone(),
                raised_seq: e.seq,
                raised_at: e.at,
                answer: None,
                applied_seq: None,
            }),
            EventBody::InterruptResumed {
                interrupt_id,
                value,
            } => out.applied.push((*interrupt_id, e.seq, value.clone())),
            _ => {}
        }
    }
    out
}

/// Decides an answer to an interrupt: `stored` is its record, `run_status` its run's
/// status. Returns the updated record, or `None` when nothing changes (same value again).
///
/// # Errors
/// As [`Store::answer_interrupt`].
pub fn plan_answer(
    stored: &InterruptRecord,
    run_status: &RunStatus,
    value: &Payload,
    at: Timestamp,
) -> Result<Option<InterruptRecord>> {
    match &stored.answer {
        Some((existing, _)) if same_json(existing, value) => Ok(None),
        Some(_) => Err(Error::ResumeConflict {
            interrupt_id: stored.interrupt_id,
        }),
        None if run_status.is_terminal() || stored.applied_seq.is_some() => {
            Err(Error::InterruptNotPending {
                interrupt_id: stored.interrupt_id,
                status: run_status.kind().as_str(),
            })
        }
        None => {
            let mut r = stored.clone();
            r.answer = Some((value.clone(), at));
            Ok(Some(r))
        }
    }
}

/// What a valid commit changes, as decided by [`plan_commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPlan {
    /// The thread record after the commit.
    pub thread: ThreadRecord,
    /// Whether the thread is created by this commit.
    pub thread_is_new: bool,
    /// The run record written by this commit, if any.
    pub run: Option<RunRecord>,
    /// Whether that run is created by this commit.
    pub run_is_new: bool,
}

/// Decides whether `commit` may be applied to a thread whose stored record is `thread`,
/// and what the thread and run records become. `run` is the stored record of the run
/// named by [`RunWrite::SetStatus`] or by [`Commit::fence`], if the commit has either.
///
/// Leases: a fenced commit must hold the run's current, unexpired lease ([`check_fence`])
/// and be written by that run ([`check_fence_writer`]).
/// A created run is unleased and ready as [`ready_for_status`] says. A status change to
/// running keeps the writer's lease when the commit is fenced (the run stays ready at the
/// lease's expiry) and otherwise leaves the run unleased and not ready; any other status
/// change ends the lease and sets `ready_at` from the status for a run driven by workers
/// ([`driven_by_workers`]; a run driven by the library is never ready). Backends then adjust
/// `ready_at` of a run entering `interrupted` with [`ready_on_answer`] (answers that
/// arrived while it was suspending) and of a run entering `waiting` with the earliest
/// pending delivery it waits for, so a resume or event that raced the suspension is not
/// lost.
///
/// # Errors
/// [`Error::Conflict`], [`Error::RunActive`], [`Error::GraphMismatch`],
/// [`Error::ThreadNotFound`], [`Error::RunNotFound`], [`Error::InvalidTransition`] or
/// [`Error::InvalidCommit`].
pub fn plan_commit(
    commit: &Commit,
    thread: Option<&ThreadRecord>,
    run: Option<&RunRecord>,
    now: Timestamp,
) -> Result<CommitPlan> {
    let tid = &commit.thread_id;
    let invalid = |detail: String| Error::InvalidCommit {
        thread_id: tid.clone(),
        detail,
    };
    if let Some(f) = &commit.fence {
        check_fence_writer(commit, thread)?;
        let r = run
            .filter(|r| r.run_id == f.run_id)
            .ok_or(Error::RunNotFound { run_id: f.run_id })?;
        check_fence(f, r, now)?;
        if matches!(commit.run, Some(RunWrite::Create(_))) {
            return Err(invalid(
                "a run is created unleased: the commit must not be fenced".into(),
            ));
        }
    }
    let actual = thread.map_or(Seq::ZERO, |t| t.head);
    if actual != commit.expected_head {
        return Err(Error::Conflict {
            thread_id: tid.clone(),
            expected: commit.expected_head,
            actual,
        });
    }
    for (i, e) in commit.events.iter().enumerate() {
        let want = Seq(commit.expected_head.0 + 1 + i as u64);
        if e.seq != want {
            return Err(invalid(format!(
                "event {i} has seq {}, expected {want}",
                e.seq
            )));
        }
    }
    // An interrupt id is unique: a commit raises each at most once (backends check ids
    // already stored).
    let raised: Vec<(InterruptId, Seq)> = commit
        .events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::InterruptRaised { interrupt_id, .. } => Some((*interrupt_id, e.seq)),
            _ => None,
        })
        .collect();
    for (i, (id, seq)) in raised.iter().enumerate() {
        if raised[..i].iter().any(|(other, _)| other == id) {
            return Err(invalid(format!(
                "interrupt {id} is raised again at seq {seq} in the same commit"
            )));
        }
    }
    let mut next = match thread {
        Some(t) => t.clone(),
        None => match &commit.run {
            Some(RunWrite::Create(r)) => ThreadRecord {
                thread_id: tid.clone(),
                graph: r.graph.clone(),
                head: Seq::ZERO,
                active_run: None,
                last_run: None,
                created_at: now,
                updated_at: now,
            },
            _ => {
                return Err(Error::ThreadNotFound {
                    thread_id: tid.clone(),
                });
            }
        },
    };
    let mut run_out = None;
    let mut run_is_new = false;
    match &commit.run {
        None => {}
        Some(RunWrite::Create(r)) => {
            if let Some(active) = next.active_run {
                return Err(Error::RunActive {
                    thread_id: tid.clone(),
                    run_id: active,
                });
            }
            if r.graph != next.graph {
                return Err(Error::GraphMismatch {
                    thread_id: tid.clone(),
                    existing: next.graph.clone(),
                    requested: r.graph.clone(),
                });
            }
            if r.thread_id != *tid {
                return Err(invalid(format!(
                    "run {} names thread `{}`",
                    r.run_id, r.thread_id
                )));
            }
            if !matches!(r.status.kind(), StatusKind::Queued | StatusKind::Running) {
                return Err(invalid(format!(
                    "run {} must be created queued or running, not {}",
                    r.run_id,
                    r.status.kind().as_str()
                )));
            }
            if r.first_seq != commit.expected_head.next() {
                return Err(invalid(format!(
                    "run {} starts at seq {}, but the log continues at {}",
                    r.run_id,
                    r.first_seq,
                    commit.expected_head.next()
                )));
            }
            next.active_run = Some(r.run_id);
            next.last_run = Some(r.run_id);
            let mut r = r.clone();
            r.ready_at = ready_for_status(&r.status, Some(r.created_at));
            r.lease_epoch = 0;
            r.lease = None;
            run_out = Some(r);
            run_is_new = true;
        }
        Some(RunWrite::SetStatus { run_id, status }) => {
            let stored = run
                .filter(|r| r.run_id == *run_id)
                .ok_or(Error::RunNotFound { run_id: *run_id })?;
            if stored.thread_id != *tid {
                return Err(invalid(format!(
                    "run {run_id} belongs to thread `{}`",
                    stored.thread_id
                )));
            }
            stored
                .status
                .check_transition(status)
                .map_err(|transition| Error::InvalidTransition {
                    run_id: *run_id,
                    transition,
                })?;
            let mut r = stored.clone();
            r.status = status.clone();
            r.updated_at = now;
            let leased =
                *status == RunStatus::Running && commit.fence.is_some_and(|f| f.run_id == *run_id);
            if !leased {
                r.lease = None;
                // A run driven by the library never becomes claimable.
                r.ready_at = if driven_by_workers(stored) {
                    ready_for_status(status, None)
                } else {
                    None
                };
            }
            if status.is_terminal() && next.active_run == Some(*run_id) {
                next.active_run = None;
            }
            run_out = Some(r);
        }
    }
    // Events may only be written by the run that is (or, in this commit, was) active.
    let only_edits = !commit.events.is_empty()
        && commit
            .events
            .iter()
            .all(|e| matches!(e.body, EventBody::StateUpdated { .. }));
    let writer = match &commit.run {
        Some(RunWrite::Create(r)) => Some(r.run_id),
        Some(RunWrite::SetStatus { run_id, .. }) => Some(*run_id),
        // An operator edit of an idle thread is attributed to its last run.
        None if only_edits && next.active_run.is_none() => next.last_run,
        None => next.active_run,
    };
    if let Some(e) = commit.events.iter().find(|e| Some(e.run_id) != writer) {
        return Err(invalid(format!(
            "event {} belongs to run {}, which is not the thread's active run",
            e.seq, e.run_id
        )));
    }
    if let Some(RunWrite::SetStatus { run_id, .. }) = &commit.run
        && thread.and_then(|t| t.active_run) != Some(*run_id)
    {
        return Err(invalid(format!(
            "run {run_id} is not the thread's active run"
        )));
    }
    check_terminal(commit).map_err(invalid)?;
    next.head = Seq(commit.expected_head.0 + commit.events.len() as u64);
    if let Some(s) = &commit.snapshot {
        if s.at_seq == Seq::ZERO || s.at_seq > next.head {
            return Err(invalid(format!(
                "snapshot at seq {} is outside the log (head {})",
                s.at_seq, next.head
            )));
        }
        if Some(s.run_id) != writer {
            return Err(invalid(match writer {
                Some(w) => format!(
                    "snapshot names run {}, but the commit is written by run {w}",
                    s.run_id
                ),
                None => format!(
                    "snapshot names run {}, but the thread has no active run",
                    s.run_id
                ),
            }));
        }
    }
    next.updated_at = now;
    Ok(CommitPlan {
        thread_is_new: thread.is_none(),
        thread: next,
        run: run_out,
        run_is_new,
    })
}

/// The rules tying a run's end to its log: a status change carries at least one event (so
/// the head compare-and-set covers it); a terminal status is set together with the
/// matching terminal event as the commit's last event; a terminal event appears only
/// there. Returns the broken rule.
fn check_terminal(commit: &Commit) -> Result<(), String> {
    let status = match &commit.run {
        Some(RunWrite::SetStatus { run_id, status }) => Some((*run_id, status)),
        _ => None,
    };
    let last = commit.events.len().checked_sub(1);
    for (i, e) in commit.events.iter().enumerate() {
        if !e.body.is_terminal() {
            continue;
        }
        let kind = e.body.kind().as_str();
        if Some(i) != last {
            return Err(format!(
                "terminal event {kind} at seq {} is not the last event of the commit",
                e.seq
            ));
        }
        if !status.is_some_and(|(_, s)| s.is_terminal()) {
            return Err(format!(
                "terminal event {kind} at seq {} is not committed with its run's terminal status",
                e.seq
            ));
        }
    }
    let Some((run_id, status)) = status else {
        return Ok(());
    };
    let to = status.kind().as_str();
    let Some(event) = commit.events.last() else {
        return Err(format!(
            "status change of run {run_id} to {to} carries no event (a status change must \
             advance the head)"
        ));
    };
    if !status.is_terminal() {
        return Ok(());
    }
    let matches = match (status, &event.body) {
        (RunStatus::Completed { .. }, EventBody::RunCompleted) => true,
        (RunStatus::Failed { error }, EventBody::RunFailed { error: e }) => error == e,
        (RunStatus::Cancelled { reason }, EventBody::RunCancelled { reason: r }) => reason == r,
        _ => false,
    };
    if matches {
        Ok(())
    } else if event.body.is_terminal() {
        Err(format!(
            "run {run_id} is set to {to}, but its terminal event {} at seq {} does not match \
             it (kind, error or reason differ)",
            event.body.kind().as_str(),
            event.seq
        ))
    } else {
        Err(format!(
            "run {run_id} is set to {to} without its terminal event: the last event (seq {}) \
             is {}",
            event.seq,
            event.body.kind().as_str()
        ))
    }
}
