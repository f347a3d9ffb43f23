//! What a server keeps beside the threads: leases on runs (which worker drives a run, with a
//! fencing epoch), the remote workers, idempotency records, API keys and the audit log.
//!
//! The rules are pure functions here ([`plan_claim`], [`plan_renew`], [`plan_release`],
//! [`plan_reap`], [`check_fence`], [`plan_reservation`], [`driven_by_workers`],
//! [`ready_on_answer`], [`ready_on_delivery`]), decided once for every backend, like
//! [`plan_commit`](super::plan_commit) for commits. Backends that claim or reap in SQL must
//! produce the same records (the conformance suite checks them).

use std::time::Duration;

use super::{Commit, Error, InterruptRecord, Result, RunRecord, RunWrite, ThreadRecord};
use crate::event::Payload;
use crate::id::{RunId, ThreadId, Timestamp};
use crate::status::RunStatus;

/// Who holds the lease on a run, and until when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseHolder {
    /// The worker that claimed the run.
    pub worker_id: String,
    /// The lease ends at this time unless renewed; after it, the run may be claimed again and
    /// the old holder can neither renew nor commit.
    pub expires_at: Timestamp,
}

/// The proof a lease holder presents with every write: run and fencing epoch. A write whose
/// epoch is not the run's current one, or whose lease expired, fails with
/// [`Error::LeaseLost`] and changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Fence {
    /// The run.
    pub run_id: RunId,
    /// Its epoch at the claim (the run's [`RunRecord::lease_epoch`] right after it).
    pub epoch: u64,
}

/// A worker asking for runs to drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The claiming worker.
    pub worker_id: String,
    /// The time of the claim (the store's notion of now; leases expire by it).
    pub now: Timestamp,
    /// How long the lease lasts unless renewed.
    pub ttl: Duration,
    /// At most this many runs.
    pub limit: usize,
    /// Only runs of these (graph, version) pairs; empty means any.
    pub graphs: Vec<(String, String)>,
}

impl ClaimRequest {
    /// Whether the worker can drive a run of this graph version.
    pub fn accepts(&self, graph: &str, version: &str) -> bool {
        self.graphs.is_empty() || self.graphs.iter().any(|(g, v)| g == graph && v == version)
    }
}

/// The record of `run` after `request` claims it, or `None` when it is not claimable: it
/// must be unfinished (queued, running, interrupted or waiting), ready (`ready_at` at or
/// before `now`) and of a graph version the worker accepts. A claim raises the epoch by
/// one, sets the holder, makes the run ready again at the lease's expiry (so an abandoned
/// run is claimed again), and turns a queued run into a running one.
///
/// Backends claim eligible runs in order of priority (highest first), then `ready_at`,
/// then run id; a run is claimed by at most one of concurrent claimers.
pub fn plan_claim(run: &RunRecord, request: &ClaimRequest) -> Option<RunRecord> {
    if run.status.is_terminal()
        || run.ready_at.is_none_or(|t| t > request.now)
        || !request.accepts(&run.graph, &run.graph_version)
    {
        return None;
    }
    let expires_at = request.now.plus(request.ttl);
    let mut r = run.clone();
    r.lease_epoch += 1;
    r.lease = Some(LeaseHolder {
        worker_id: request.worker_id.clone(),
        expires_at,
    });
    r.ready_at = Some(expires_at);
    if r.status == RunStatus::Queued {
        r.status = RunStatus::Running;
        r.updated_at = request.now;
    }
    Some(r)
}

/// Checks that `fence` is the current, unexpired lease of `run` at `now`.
///
/// # Errors
/// [`Error::LeaseLost`] when the epoch was superseded, the lease was released or ended with
/// a status change, or it expired.
pub fn check_fence(fence: &Fence, run: &RunRecord, now: Timestamp) -> Result<()> {
    let lost = |reason: &'static str| {
        Err(Error::LeaseLost {
            run_id: fence.run_id,
            epoch: fence.epoch,
            reason,
        })
    };
    if run.run_id != fence.run_id {
        return lost("the lease names another run");
    }
    if run.lease_epoch != fence.epoch {
        return lost("superseded by a newer claim");
    }
    match &run.lease {
        None => lost("released"),
        Some(l) if l.expires_at <= now => lost("expired"),
        Some(_) => Ok(()),
    }
}

/// The record of `run` after its holder renews the lease at `now` for `ttl`. An expired
/// lease is not revived, even when nobody claimed the run since.
///
/// # Errors
/// [`Error::LeaseLost`] as [`check_fence`], or when `worker_id` is not the holder.
pub fn plan_renew(
    run: &RunRecord,
    fence: &Fence,
    worker_id: &str,
    now: Timestamp,
    ttl: Duration,
) -> Result<RunRecord> {
    check_fence(fence, run, now)?;
    if run.lease.as_ref().is_some_and(|l| l.worker_id != worker_id) {
        return Err(Error::LeaseLost {
            run_id: fence.run_id,
            epoch: fence.epoch,
            reason: "held by another worker",
        });
    }
    let expires_at = now.plus(ttl);
    let mut r = run.clone();
    if let Some(l) = &mut r.lease {
        l.expires_at = expires_at;
    }
    if matches!(r.status, RunStatus::Running | RunStatus::Queued) || r.ready_at.is_some() {
        r.ready_at = Some(expires_at);
    }
    Ok(r)
}

/// The record of `run` after its holder hands it back at `now` (graceful shutdown, or a
/// driver that stopped early): unleased and claimable again at once. That holds for a
/// suspended run too: it was claimed because it was ready (answered, due, or an event it
/// waits for arrived) and, still suspended, it has not acted on that yet — taking the
/// wake-up time of its status instead would strand an answered `interrupted` run (never
/// ready) and a `waiting` run woken by an event (ready only at `until`, if ever). A run
/// that ended has no lease to release (a status change ends it). Releasing an expired
/// lease is allowed (the holder gives up what it already lost) as long as no newer claim
/// superseded it.
///
/// # Errors
/// [`Error::LeaseLost`] when the epoch was superseded or the lease already released.
pub fn plan_release(run: &RunRecord, fence: &Fence, now: Timestamp) -> Result<RunRecord> {
    if run.run_id != fence.run_id || run.lease_epoch != fence.epoch || run.lease.is_none() {
        return Err(Error::LeaseLost {
            run_id: fence.run_id,
            epoch: fence.epoch,
            reason: "superseded or released",
        });
    }
    let mut r = run.clone();
    r.lease = None;
    r.ready_at = (!r.status.is_terminal()).then_some(now);
    Ok(r)
}

/// Checks that a fenced commit is written by the run its fence names: the run whose status
/// it sets or, without a status change, the thread's active run (`thread` is the stored
/// record of the commit's thread). A lease on one run does not entitle its holder to write
/// another run's events. Commits without a fence, run creations (refused fenced by
/// [`plan_commit`](super::plan_commit)) and commits on a missing thread pass (the commit's
/// other rules decide them).
///
/// # Errors
/// [`Error::LeaseLost`] (`the lease names another run`), nothing written.
pub fn check_fence_writer(commit: &Commit, thread: Option<&ThreadRecord>) -> Result<()> {
    let Some(fence) = &commit.fence else {
        return Ok(());
    };
    let writer = match (&commit.run, thread) {
        (Some(RunWrite::Create(_)), _) | (None, None) => return Ok(()),
        (Some(RunWrite::SetStatus { run_id, .. }), _) => Some(*run_id),
        (None, Some(t)) => t.active_run,
    };
    if writer == Some(fence.run_id) {
        Ok(())
    } else {
        Err(Error::LeaseLost {
            run_id: fence.run_id,
            epoch: fence.epoch,
            reason: "the lease names another run",
        })
    }
}

/// Whether a run is driven by workers through the store — queued for them, or claimed at
/// least once (`lease_epoch > 0`) — rather than in-process by the library (created running,
/// never claimed). Only runs driven by workers are ever claimable: a library run's timers,
/// answers and deliveries are acted on by the engine that drives it (or its recovery and
/// timer sweep, which find waiting runs by `wake_at`, not `ready_at`), so none of them sets
/// its `ready_at` — a server on the same database must not claim it. Every readiness rule
/// ([`ready_on_answer`], [`ready_on_delivery`], and [`plan_commit`](super::plan_commit)'s
/// use of [`ready_for_status`]) applies only to such runs.
pub fn driven_by_workers(run: &RunRecord) -> bool {
    run.status == RunStatus::Queued || run.lease_epoch > 0
}

/// When a run driven by workers ([`driven_by_workers`]) that just entered `status` becomes
/// claimable (unleased): a queued run at once (`created`), a waiting run at its wake-up time,
/// a running run only under a lease (an unleased running run is driven in-process, recovered
/// by `Engine::recover`), an interrupted or finished one never (until answered). A run
/// driven by the library is never claimable, whatever its status.
pub fn ready_for_status(status: &RunStatus, created: Option<Timestamp>) -> Option<Timestamp> {
    match status {
        RunStatus::Queued => created,
        RunStatus::Waiting { until, .. } => *until,
        _ => None,
    }
}

/// The new `ready_at` of an interrupted run after one of its interrupts was answered at
/// `at`: `Some(at)` when the run is driven by workers ([`driven_by_workers`]), unleased, and
/// every interrupt it raised and has not applied now has an answer (the run can continue);
/// `None` when nothing changes. `interrupts` are the run's interrupt records after the
/// answer.
pub fn ready_on_answer(
    run: &RunRecord,
    interrupts: &[InterruptRecord],
    at: Timestamp,
) -> Option<Timestamp> {
    let open = interrupts
        .iter()
        .filter(|i| i.run_id == run.run_id && i.applied_seq.is_none());
    let mut any = false;
    for i in open {
        i.answer.as_ref()?;
        any = true;
    }
    (any && matches!(run.status, RunStatus::Interrupted { .. })
        && run.lease.is_none()
        && driven_by_workers(run))
    .then(|| run.ready_at.map_or(at, |r| r.min(at)))
}

/// The new `ready_at` of a thread's active run after an event named `name` arrived at `at`:
/// `Some` when the run is driven by workers ([`driven_by_workers`]), not leased, and waits
/// for that event; `None` when nothing changes.
pub fn ready_on_delivery(run: &RunRecord, name: &str, at: Timestamp) -> Option<Timestamp> {
    match &run.status {
        RunStatus::Waiting { events, .. }
            if run.lease.is_none()
                && driven_by_workers(run)
                && events.iter().any(|e| e == name) =>
        {
            Some(run.ready_at.map_or(at, |r| r.min(at)))
        }
        _ => None,
    }
}

/// A stored response to a state-changing request, returned again for a replay of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// HTTP status.
    pub status: u16,
    /// Body (JSON text).
    pub body: String,
}

/// The record of an idempotency key within a scope (the caller's identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The caller's identity (API key id, or `anonymous`).
    pub scope: String,
    /// The key the caller chose.
    pub key: String,
    /// Hash of the request (method, route, body), to tell a replay from a different request.
    pub request_hash: String,
    /// When the key was first reserved.
    pub created_at: Timestamp,
    /// When the record may be purged and the key reused.
    pub expires_at: Timestamp,
    /// Until when an unfinished reservation holds the key; after it (the process that
    /// reserved it died), the next request with the key takes it over.
    pub locked_until: Timestamp,
    /// The response, once the first request finished.
    pub response: Option<StoredResponse>,
}

/// What [`Store::reserve_idempotency`](super::Store::reserve_idempotency) decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The key is now reserved for this request: do the work, then complete it.
    Reserved,
    /// The same request finished before: return this response again.
    Replay(StoredResponse),
    /// The same request is being processed right now.
    InFlight,
    /// The key was used with a different request.
    Mismatch,
}

/// Decides a reservation against the stored record of the key (if any). Returns the
/// decision and the record to store when it changes (a new or taken-over reservation).
pub fn plan_reservation(
    existing: Option<&IdempotencyRecord>,
    candidate: &IdempotencyRecord,
    now: Timestamp,
) -> (Reservation, Option<IdempotencyRecord>) {
    match existing {
        Some(e) if e.expires_at > now => {
            if e.request_hash != candidate.request_hash {
                (Reservation::Mismatch, None)
            } else if let Some(r) = &e.response {
                (Reservation::Replay(r.clone()), None)
            } else if e.locked_until > now {
                (Reservation::InFlight, None)
            } else {
                let mut taken = e.clone();
                taken.locked_until = candidate.locked_until;
                (Reservation::Reserved, Some(taken))
            }
        }
        _ => (Reservation::Reserved, Some(candidate.clone())),
    }
}

/// An API key as stored: never the secret itself, only its keyed hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Public identifier (the part of the token before the secret), unique.
    pub key_id: String,
    /// A human name.
    pub name: String,
    /// `admin`, `operator`, `worker` or `viewer`.
    pub role: String,
    /// Hash of the secret (hex).
    pub secret_hash: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
}

/// One entry of the audit log: who did what, when, with which result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the log, assigned by the store (ignored on append), increasing.
    pub id: u64,
    /// When.
    pub at: Timestamp,
    /// The caller's identity (API key id, or `anonymous`).
    pub actor: String,
    /// The caller's role.
    pub role: String,
    /// What was attempted, e.g. `jobs.create`.
    pub action: String,
    /// What it was attempted on (a thread id, an interrupt id, a key id).
    pub target: Option<String>,
    /// The request's id.
    pub request_id: String,
    /// HTTP status of the answer.
    pub status: u16,
    /// `ok`, or the error code (`forbidden`, `run_active`, …).
    pub outcome: String,
    /// Anything else worth keeping (JSON).
    pub details: Option<Payload>,
}

/// Which audit entries to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only entries with an id greater than this (cursor).
    pub after: Option<u64>,
    /// Only entries of this actor.
    pub actor: Option<String>,
    /// Only entries of this action.
    pub action: Option<String>,
    /// At most this many (0: no limit).
    pub limit: usize,
}

impl AuditFilter {
    /// Whether `record` passes the filter (cursor and limit aside).
    pub fn matches(&self, record: &AuditRecord) -> bool {
        self.actor.as_ref().is_none_or(|a| *a == record.actor)
            && self.action.as_ref().is_none_or(|a| *a == record.action)
    }
}

/// Which interrupts to list across threads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterruptFilter {
    /// Only interrupts of this thread.
    pub thread_id: Option<crate::id::ThreadId>,
    /// Only interrupts of threads of this graph.
    pub graph: Option<String>,
    /// Only open ones: not yet applied, and raised by a run that has not ended.
    pub open_only: bool,
    /// Only interrupts raised after this one (cursor; interrupts are ordered by id, i.e.
    /// creation).
    pub after: Option<crate::id::InterruptId>,
    /// At most this many (0: no limit).
    pub limit: usize,
}

/// A remote worker as the server knows it: registered by its polls, kept up to date by its
/// polls and heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerRecord {
    /// The worker's identity (chosen by the worker, unique among live workers).
    pub worker_id: String,
    /// The (graph, version) pairs it executes; runs of other versions are never
    /// dispatched to it.
    pub graphs: Vec<(String, String)>,
    /// How many attempts it executes at once.
    pub capacity: u32,
    /// When it first registered (kept across re-registrations).
    pub registered_at: Timestamp,
    /// When it last polled or sent a heartbeat.
    pub last_seen: Timestamp,
    /// When it announced a graceful stop; `None` while it runs. A new registration clears it.
    pub stopped_at: Option<Timestamp>,
}

impl WorkerRecord {
    /// Whether the worker executes runs of this graph version.
    pub fn accepts(&self, graph: &str, version: &str) -> bool {
        self.graphs.iter().any(|(g, v)| g == graph && v == version)
    }
}

/// A run waiting for its thread: a create request stored with the multitask strategy
/// `enqueue` while the thread had an unfinished run (or other pending runs). When the
/// thread's unfinished run ends, the oldest pending run is started as a normal queued run
/// with the pre-assigned `run_id`, then the row is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRun {
    /// The run id the run gets when it starts (assigned when the request was accepted).
    pub run_id: RunId,
    /// The thread it waits for.
    pub thread_id: ThreadId,
    /// Its place among the thread's pending runs: assigned by
    /// [`Store::push_pending`](super::Store::push_pending) (one more than the highest
    /// pending position of the thread, 1 when it has none; the value given is ignored).
    /// The lowest position starts first.
    pub position: u64,
    /// Graph name.
    pub graph: String,
    /// Graph version the request was validated against.
    pub graph_version: String,
    /// The request as JSON text: the input and the run options, as the caller encoded
    /// them (the store does not look inside).
    pub request: Payload,
    /// When the request was accepted.
    pub created_at: Timestamp,
}

/// The record of `run` after the lease reaper ran at `now`, or `None` when it has nothing
/// to reap: a lease that expired at or before `now` is cleared (the epoch stays, so the old
/// holder stays fenced out; an unfinished run stays claimable — ready since the earlier of
/// its `ready_at` and the expiry, which is its `ready_at` as claims and renewals set it).
pub fn plan_reap(run: &RunRecord, now: Timestamp) -> Option<RunRecord> {
    match &run.lease {
        Some(l) if l.expires_at <= now => {
            let mut r = run.clone();
            r.lease = None;
            if !r.status.is_terminal() {
                r.ready_at = Some(r.ready_at.map_or(l.expires_at, |t| t.min(l.expires_at)));
            }
            Some(r)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{Seq, ThreadId};

    fn leased(status: RunStatus, ready_at: Option<i64>, expires_at: i64) -> RunRecord {
        let mut r = RunRecord::new(
            RunId::from_uuid(uuid::Uuid::now_v7()),
            ThreadId::new("t").unwrap(),
            "g",
            "1",
            status,
            Seq(1),
            Timestamp(100),
        );
        r.lease_epoch = 4;
        r.ready_at = ready_at.map(Timestamp);
        r.lease = Some(LeaseHolder {
            worker_id: "w".into(),
            expires_at: Timestamp(expires_at),
        });
        r
    }

    #[test]
    fn reap_clears_a_lease_expired_at_or_before_now_keeping_the_epoch() {
        let run = leased(RunStatus::Running, Some(1_000), 1_000);
        assert_eq!(plan_reap(&run, Timestamp(999)), None, "a live lease");
        for now in [1_000, 5_000] {
            let reaped = plan_reap(&run, Timestamp(now)).expect("expired");
            assert_eq!(
                reaped,
                RunRecord {
                    lease: None,
                    ..run.clone()
                },
                "at {now}: only the lease changes"
            );
            assert_eq!(reaped.lease_epoch, 4);
            // The holder's fence is refused afterwards, whatever the time.
            let fence = Fence {
                run_id: run.run_id,
                epoch: 4,
            };
            assert!(matches!(
                check_fence(&fence, &reaped, Timestamp(0)),
                Err(Error::LeaseLost { .. })
            ));
            assert!(plan_release(&reaped, &fence, Timestamp(now)).is_err());
            assert!(
                plan_renew(&reaped, &fence, "w", Timestamp(0), Duration::from_secs(1)).is_err()
            );
            // And the run is claimable at once, at the next epoch.
            let request = ClaimRequest {
                worker_id: "w2".into(),
                now: Timestamp(now),
                ttl: Duration::from_secs(1),
                limit: 1,
                graphs: Vec::new(),
            };
            let claimed = plan_claim(&reaped, &request).expect("claimable");
            assert_eq!(claimed.lease_epoch, 5);
        }
    }

    #[test]
    fn reap_leaves_unleased_runs_alone_and_keeps_a_run_ready() {
        let mut free = leased(RunStatus::Queued, Some(100), 1_000);
        free.lease = None;
        assert_eq!(plan_reap(&free, Timestamp(i64::MAX)), None);
        // A leased run is ready at its expiry; were it not ready, the reap makes it ready
        // since the expiry (never later than it was).
        let not_ready = leased(RunStatus::Running, None, 1_000);
        assert_eq!(
            plan_reap(&not_ready, Timestamp(2_000)).and_then(|r| r.ready_at),
            Some(Timestamp(1_000))
        );
        let earlier = leased(RunStatus::Running, Some(500), 1_000);
        assert_eq!(
            plan_reap(&earlier, Timestamp(2_000)).and_then(|r| r.ready_at),
            Some(Timestamp(500))
        );
        // A finished run never becomes ready.
        let done = leased(
            RunStatus::Cancelled {
                reason: "stop".into(),
            },
            None,
            1_000,
        );
        let reaped = plan_reap(&done, Timestamp(2_000)).expect("its lease is cleared");
        assert_eq!((reaped.lease, reaped.ready_at), (None, None));
    }

    #[test]
    fn a_worker_accepts_only_its_graph_versions() {
        let w = WorkerRecord {
            worker_id: "w".into(),
            graphs: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
            capacity: 1,
            registered_at: Timestamp(1),
            last_seen: Timestamp(1),
            stopped_at: None,
        };
        assert!(w.accepts("a", "1") && w.accepts("b", "2"));
        assert!(!w.accepts("a", "2") && !w.accepts("c", "1"));
        let none = WorkerRecord {
            graphs: Vec::new(),
            ..w.clone()
        };
        assert!(
            !none.accepts("a", "1"),
            "a worker without graphs accepts nothing"
        );
        let json = serde_json::to_string(&w).unwrap();
        assert!(json.contains(r#""graphs":[["a","1"],["b","2"]]"#), "{json}");
        assert_eq!(serde_json::from_str::<WorkerRecord>(&json).unwrap(), w);
    }
}
