//! [`RemoteStore`]: the store a worker's engine executes on — a local copy of each claimed
//! thread, with the writes that matter sent to the server first.
//!
//! The engine is the ordinary one ([`oris_runtime::Engine::execute`]); only its store
//! differs. Reads and every method the execution does not write through act on the local
//! [`MemoryStore`] holding the attempt's [`ThreadImage`](oris_core::protocol::ThreadImage).
//! Three methods talk to the server:
//!
//! - `commit` sends the commit, fence included, as a report and applies it to the local
//!   copy only once the server accepted it — without the fence: the server is the authority
//!   on the lease, and the local copy must not judge expiry by this machine's clock. A
//!   refusal because the lease is lost is [`store::Error::LeaseLost`] (the engine stops the
//!   driver at once, nothing written anywhere); no answer is retried with the same report
//!   (the server recognises a report it already applied and answers `replayed`) until the
//!   lease's end, then [`store::Error::Unavailable`].
//! - `renew_lease` is a heartbeat naming that lease;
//! - `release_lease` is an ack with outcome `released`.
//!
//! Lease ends are tracked on this machine's monotonic clock: a lease granted or renewed by
//! a request sent at instant `t` lasts at least until `t + ttl`, whatever the two clocks say.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use oris_core::event::{Event, Payload};
use oris_core::id::{InterruptId, RunId, Seq, ThreadId, Timestamp};
use oris_core::protocol::{Ack, AckOutcome, Heartbeat, Report};
use oris_core::store::{
    self, Answer, ApiKeyRecord, AuditFilter, AuditRecord, ClaimRequest, Commit, Delivery, Fence,
    IdempotencyRecord, InterruptFilter, InterruptRecord, LeaseHolder, MemoryStore, PendingRun,
    Receipt, Reservation, RunFilter, RunRecord, Snapshot, Store, StoredResponse, ThreadRecord,
    WorkerRecord,
};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::client::{CallError, Client};

/// First pause before a report or an ack is sent again.
const RESEND_FIRST: Duration = Duration::from_millis(50);
/// Longest pause between two sends of the same report.
const RESEND_MAX: Duration = Duration::from_secs(1);

/// A lease this worker holds, as far as it knows.
#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: u64,
    /// The lease lasts at least until then (the send instant of the request that granted
    /// or last renewed it, plus its ttl).
    until: Instant,
}

/// The engine's store on a worker (see the module docs).
#[derive(Debug)]
pub(crate) struct RemoteStore {
    /// The local copies of the claimed threads.
    pub(crate) local: MemoryStore,
    client: Arc<Client>,
    held: Mutex<HashMap<RunId, Held>>,
}

impl RemoteStore {
    pub(crate) fn new(client: Arc<Client>) -> Self {
        RemoteStore {
            local: MemoryStore::new(),
            client,
            held: Mutex::default(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts tracking a lease granted by a poll sent at `sent`.
    pub(crate) fn hold(&self, fence: Fence, sent: Instant, ttl: Duration) {
        self.held().insert(
            fence.run_id,
            Held {
                epoch: fence.epoch,
                until: sent + ttl,
            },
        );
    }

    /// Stops tracking a lease (the attempt is over), unless a newer claim replaced it.
    pub(crate) fn forget_lease(&self, fence: Fence) {
        let mut held = self.held();
        if held
            .get(&fence.run_id)
            .is_some_and(|h| h.epoch == fence.epoch)
        {
            held.remove(&fence.run_id);
        }
    }

    /// The leases still tracked (what a shutdown that ran out of time hands back).
    pub(crate) fn leases(&self) -> Vec<Fence> {
        self.held()
            .iter()
            .map(|(run_id, h)| Fence {
                run_id: *run_id,
                epoch: h.epoch,
            })
            .collect()
    }

    /// Until when `fence` certainly holds; `None` when it is not (or no longer) this
    /// worker's.
    fn until(&self, fence: &Fence) -> Option<Instant> {
        self.held()
            .get(&fence.run_id)
            .filter(|h| h.epoch == fence.epoch)
            .map(|h| h.until)
    }

    fn renewed(&self, fence: &Fence, sent: Instant, ttl: Duration) {
        if let Some(h) = self.held().get_mut(&fence.run_id)
            && h.epoch == fence.epoch
        {
            h.until = h.until.max(sent + ttl);
        }
    }

    /// Sends a report until the server answers it or the lease ends.
    async fn report(&self, report: &Report) -> store::Result<()> {
        let fence = report.fence;
        let mut backoff = Backoff::new(RESEND_FIRST, RESEND_MAX);
        loop {
            let error = match self.client.report(report).await {
                Ok(receipt) => {
                    if receipt.replayed {
                        tracing::info!(head = %receipt.head, "report had already been applied (replayed)");
                    }
                    return Ok(());
                }
                Err(e) => e,
            };
            if !error.is_transient() {
                return Err(refusal(&error, &fence, &report.commit.thread_id));
            }
            let until = self.until(&fence);
            let pause = backoff.next(error.retry_after());
            if until.is_none_or(|u| Instant::now() + pause >= u) {
                tracing::warn!(error = %error, server = %self.client.base(), "report not delivered before the lease ends");
                return Err(store::Error::Unavailable(format!(
                    "report to {} not delivered before the lease ended: {error}",
                    self.client.base()
                )));
            }
            tracing::warn!(error = %error, server = %self.client.base(), retry_in = ?pause, "report not delivered; sending it again");
            tokio::time::sleep(pause).await;
        }
    }

    /// The local record of a run, or [`store::Error::RunNotFound`].
    async fn local_run(&self, run_id: RunId) -> store::Result<RunRecord> {
        self.local
            .run(run_id)
            .await?
            .ok_or(store::Error::RunNotFound { run_id })
    }
}

/// Maps a refused report, heartbeat or ack to the store error the engine acts on.
fn refusal(error: &CallError, fence: &Fence, thread_id: &ThreadId) -> store::Error {
    match error.code() {
        Some("lease_lost") => store::Error::LeaseLost {
            run_id: fence.run_id,
            epoch: fence.epoch,
            reason: "the server refused the write: the lease is no longer this worker's",
        },
        // The head moved under the report: another writer committed first. The engine
        // treats it as superseded and hands the run back.
        Some("conflict") => store::Error::Conflict {
            thread_id: thread_id.clone(),
            expected: Seq::ZERO,
            actual: Seq::ZERO,
        },
        Some("invalid_input") => store::Error::InvalidCommit {
            thread_id: thread_id.clone(),
            detail: format!("the server refused the report: {error}"),
        },
        _ => store::Error::Unavailable(format!("the server refused the write: {error}")),
    }
}

#[async_trait]
impl Store for RemoteStore {
    async fn commit(&self, commit: Commit) -> store::Result<Receipt> {
        let Some(fence) = commit.fence else {
            // Only executions write, and an execution's commits are always fenced.
            return Err(store::Error::InvalidCommit {
                thread_id: commit.thread_id,
                detail: "a remote worker writes only fenced commits of the runs it executes".into(),
            });
        };
        let report = Report { fence, commit };
        self.report(&report).await?;
        let mut local = report.commit;
        let thread_id = local.thread_id.clone();
        local.fence = None;
        self.local
            .commit(local)
            .await
            .map_err(|e| store::Error::Corrupt {
                thread_id,
                seq: None,
                detail: format!(
                    "the server applied a commit the worker's local copy refuses ({e}); the \
                     attempt cannot go on"
                ),
            })
    }

    async fn renew_lease(
        &self,
        fence: &Fence,
        worker_id: &str,
        _now: Timestamp,
        ttl: Duration,
    ) -> store::Result<RunRecord> {
        let sent = Instant::now();
        let sent_at = Timestamp::now();
        let answer = self
            .client
            .heartbeat(&Heartbeat {
                leases: vec![*fence],
            })
            .await;
        let mut run = self.local_run(fence.run_id).await?;
        let resp = match answer {
            Ok(r) => r,
            Err(e) => {
                return Err(refusal(&e, fence, &run.thread_id));
            }
        };
        if let Some(lost) = resp.lost.iter().find(|l| l.fence == *fence) {
            tracing::warn!(reason = %lost.reason, cancelled = lost.cancelled, "heartbeat: lease lost");
            return Err(store::Error::LeaseLost {
                run_id: fence.run_id,
                epoch: fence.epoch,
                reason: if lost.cancelled {
                    "the run was cancelled"
                } else {
                    "the server refused the renewal"
                },
            });
        }
        if !resp.renewed.iter().any(|r| r.fence == *fence) {
            return Err(store::Error::Unavailable(
                "the heartbeat answer does not name the lease".into(),
            ));
        }
        self.renewed(fence, sent, ttl);
        // The expiry on this machine's clock (the engine compares it with its own `now`
        // when the server cannot be reached): at least `ttl` after the request was sent.
        run.lease = Some(LeaseHolder {
            worker_id: worker_id.to_owned(),
            expires_at: sent_at.plus(ttl),
        });
        run.lease_epoch = fence.epoch;
        Ok(run)
    }

    async fn release_lease(&self, fence: &Fence, _now: Timestamp) -> store::Result<RunRecord> {
        let mut run = self.local_run(fence.run_id).await?;
        let ack = Ack {
            fence: *fence,
            outcome: AckOutcome::Released,
            error: None,
        };
        let mut backoff = Backoff::new(RESEND_FIRST, RESEND_MAX);
        loop {
            match self.client.ack(&ack).await {
                Ok(_) => break,
                Err(e) if e.is_transient() => {
                    let pause = backoff.next(e.retry_after());
                    if self
                        .until(fence)
                        .is_none_or(|u| Instant::now() + pause >= u)
                    {
                        return Err(store::Error::Unavailable(format!(
                            "release not delivered before the lease ended: {e}"
                        )));
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(refusal(&e, fence, &run.thread_id)),
            }
        }
        self.forget_lease(*fence);
        run.lease = None;
        Ok(run)
    }

    // --- The local copy ------------------------------------------------------------------

    async fn thread(&self, thread_id: &ThreadId) -> store::Result<Option<ThreadRecord>> {
        self.local.thread(thread_id).await
    }

    async fn run(&self, run_id: RunId) -> store::Result<Option<RunRecord>> {
        self.local.run(run_id).await
    }

    async fn runs(&self, filter: &RunFilter) -> store::Result<Vec<RunRecord>> {
        self.local.runs(filter).await
    }

    async fn due_runs(&self, now: Timestamp, limit: usize) -> store::Result<Vec<RunRecord>> {
        self.local.due_runs(now, limit).await
    }

    async fn events(
        &self,
        thread_id: &ThreadId,
        after: Seq,
        limit: usize,
    ) -> store::Result<Vec<Event>> {
        self.local.events(thread_id, after, limit).await
    }

    async fn snapshot(
        &self,
        thread_id: &ThreadId,
        at_or_before: Seq,
    ) -> store::Result<Option<Snapshot>> {
        self.local.snapshot(thread_id, at_or_before).await
    }

    async fn delete_snapshots(&self, thread_id: &ThreadId) -> store::Result<u64> {
        self.local.delete_snapshots(thread_id).await
    }

    async fn interrupt(&self, interrupt_id: InterruptId) -> store::Result<Option<InterruptRecord>> {
        self.local.interrupt(interrupt_id).await
    }

    async fn interrupts(&self, thread_id: &ThreadId) -> store::Result<Vec<InterruptRecord>> {
        self.local.interrupts(thread_id).await
    }

    async fn answer_interrupt(
        &self,
        interrupt_id: InterruptId,
        value: Payload,
        at: Timestamp,
    ) -> store::Result<(Answer, InterruptRecord)> {
        self.local.answer_interrupt(interrupt_id, value, at).await
    }

    async fn deliver(
        &self,
        thread_id: &ThreadId,
        name: &str,
        payload: Payload,
        key: Option<String>,
        at: Timestamp,
    ) -> store::Result<(Delivery, bool)> {
        self.local.deliver(thread_id, name, payload, key, at).await
    }

    async fn delete_thread(&self, thread_id: &ThreadId) -> store::Result<()> {
        self.local.delete_thread(thread_id).await
    }

    async fn prune(&self, thread_id: &ThreadId, base: Event) -> store::Result<u64> {
        self.local.prune(thread_id, base).await
    }

    async fn deliveries(
        &self,
        thread_id: &ThreadId,
        pending_only: bool,
    ) -> store::Result<Vec<Delivery>> {
        self.local.deliveries(thread_id, pending_only).await
    }

    async fn list_interrupts(
        &self,
        filter: &InterruptFilter,
    ) -> store::Result<Vec<InterruptRecord>> {
        self.local.list_interrupts(filter).await
    }

    async fn claim(&self, request: &ClaimRequest) -> store::Result<Vec<RunRecord>> {
        self.local.claim(request).await
    }

    async fn reap_leases(&self, now: Timestamp, limit: usize) -> store::Result<Vec<RunRecord>> {
        self.local.reap_leases(now, limit).await
    }

    async fn lease_counts(&self, now: Timestamp) -> store::Result<Vec<(String, u64)>> {
        self.local.lease_counts(now).await
    }

    async fn register_worker(&self, worker: &WorkerRecord) -> store::Result<()> {
        self.local.register_worker(worker).await
    }

    async fn touch_worker(&self, worker_id: &str, now: Timestamp) -> store::Result<bool> {
        self.local.touch_worker(worker_id, now).await
    }

    async fn workers(&self) -> store::Result<Vec<WorkerRecord>> {
        self.local.workers().await
    }

    async fn push_pending(&self, run: &PendingRun) -> store::Result<u64> {
        self.local.push_pending(run).await
    }

    async fn pending_runs(&self, thread_id: &ThreadId) -> store::Result<Vec<PendingRun>> {
        self.local.pending_runs(thread_id).await
    }

    async fn pending_threads(&self, limit: usize) -> store::Result<Vec<ThreadId>> {
        self.local.pending_threads(limit).await
    }

    async fn remove_pending(&self, run_id: RunId) -> store::Result<bool> {
        self.local.remove_pending(run_id).await
    }

    async fn reserve_idempotency(
        &self,
        candidate: &IdempotencyRecord,
        now: Timestamp,
    ) -> store::Result<Reservation> {
        self.local.reserve_idempotency(candidate, now).await
    }

    async fn complete_idempotency(
        &self,
        scope: &str,
        key: &str,
        response: &StoredResponse,
    ) -> store::Result<()> {
        self.local.complete_idempotency(scope, key, response).await
    }

    async fn release_idempotency(&self, scope: &str, key: &str) -> store::Result<()> {
        self.local.release_idempotency(scope, key).await
    }

    async fn purge_idempotency(&self, now: Timestamp) -> store::Result<u64> {
        self.local.purge_idempotency(now).await
    }

    async fn create_api_key(&self, key: &ApiKeyRecord) -> store::Result<()> {
        self.local.create_api_key(key).await
    }

    async fn api_key(&self, key_id: &str) -> store::Result<Option<ApiKeyRecord>> {
        self.local.api_key(key_id).await
    }

    async fn api_keys(&self) -> store::Result<Vec<ApiKeyRecord>> {
        self.local.api_keys().await
    }

    async fn revoke_api_key(&self, key_id: &str, at: Timestamp) -> store::Result<bool> {
        self.local.revoke_api_key(key_id, at).await
    }

    async fn append_audit(&self, record: &AuditRecord) -> store::Result<u64> {
        self.local.append_audit(record).await
    }

    async fn audit(&self, filter: &AuditFilter) -> store::Result<Vec<AuditRecord>> {
        self.local.audit(filter).await
    }
}

/// The local copies in use: a thread's copy is loaded by each attempt on it and forgotten
/// when the last one ends (a second attempt of the same thread may start on this worker
/// while the first, which lost its lease, is still winding down).
#[derive(Debug, Default)]
pub(crate) struct Copies {
    users: Mutex<HashMap<ThreadId, usize>>,
}

impl Copies {
    /// Counts one more attempt on `thread_id`; the guard uncounts it and forgets the copy
    /// when it was the last.
    pub(crate) fn acquire(
        self: &Arc<Self>,
        store: Arc<RemoteStore>,
        thread_id: ThreadId,
    ) -> CopyGuard {
        *self
            .users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(thread_id.clone())
            .or_default() += 1;
        CopyGuard {
            copies: self.clone(),
            store,
            thread_id,
        }
    }

    #[cfg(test)]
    fn users(&self, thread_id: &ThreadId) -> usize {
        self.users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(thread_id)
            .copied()
            .unwrap_or(0)
    }
}

/// One attempt's use of a local copy (see [`Copies`]).
#[derive(Debug)]
pub(crate) struct CopyGuard {
    copies: Arc<Copies>,
    store: Arc<RemoteStore>,
    thread_id: ThreadId,
}

impl Drop for CopyGuard {
    fn drop(&mut self) {
        let mut users = self.copies.users.lock().unwrap_or_else(|e| e.into_inner());
        let last = match users.get_mut(&self.thread_id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => true,
        };
        if last {
            users.remove(&self.thread_id);
            // Under the lock, so a new attempt cannot load the thread in between.
            self.store.local.forget_thread(&self.thread_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store whose server nobody answers for (port 9, discard).
    fn unreachable_store() -> RemoteStore {
        let client = Client::new(
            "http://127.0.0.1:9",
            None,
            "w".into(),
            Duration::from_secs(1),
        )
        .unwrap();
        RemoteStore::new(Arc::new(client))
    }

    #[test]
    fn a_copy_is_forgotten_with_its_last_user() {
        let store = Arc::new(unreachable_store());
        let copies = Arc::new(Copies::default());
        let t = ThreadId::new("t1").unwrap();
        let a = copies.acquire(store.clone(), t.clone());
        let b = copies.acquire(store.clone(), t.clone());
        assert_eq!(copies.users(&t), 2);
        drop(a);
        assert_eq!(copies.users(&t), 1);
        drop(b);
        assert_eq!(copies.users(&t), 0);
    }

    #[tokio::test]
    async fn leases_are_tracked_per_epoch() {
        let store = unreachable_store();
        let run_id = RunId::generate();
        let old = Fence { run_id, epoch: 1 };
        let new = Fence { run_id, epoch: 2 };
        let t0 = Instant::now();
        store.hold(old, t0, Duration::from_secs(2));
        assert_eq!(store.until(&old), Some(t0 + Duration::from_secs(2)));
        store.hold(new, t0, Duration::from_secs(3));
        assert_eq!(store.until(&old), None, "a newer claim replaces the lease");
        store.renewed(&new, t0 + Duration::from_secs(1), Duration::from_secs(3));
        assert_eq!(store.until(&new), Some(t0 + Duration::from_secs(4)));
        store.forget_lease(old);
        assert_eq!(
            store.leases(),
            vec![new],
            "the old epoch does not drop the new lease"
        );
        store.forget_lease(new);
        assert!(store.leases().is_empty());
    }
}
