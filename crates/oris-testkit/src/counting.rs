//! [`CountingStore`]: a store wrapper that counts every call and its time, per method — for
//! tests that bound how many store calls an operation makes, and for the benchmarks that
//! show where a run's time goes.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use oris_core::event::{Event, Payload};
use oris_core::id::{InterruptId, RunId, Seq, ThreadId, Timestamp};
use oris_core::store::{
    Answer, ApiKeyRecord, AuditFilter, AuditRecord, ClaimRequest, Commit, Delivery, Fence,
    IdempotencyRecord, InterruptFilter, InterruptRecord, PendingRun, Receipt, Reservation, Result,
    RunFilter, RunRecord, Snapshot, Store, StoredResponse, ThreadRecord, WorkerRecord,
};

/// The store methods, in trait order.
const METHODS: [&str; 38] = [
    "commit",
    "thread",
    "run",
    "runs",
    "due_runs",
    "events",
    "snapshot",
    "delete_snapshots",
    "interrupt",
    "interrupts",
    "answer_interrupt",
    "deliver",
    "delete_thread",
    "prune",
    "deliveries",
    "list_interrupts",
    "claim",
    "renew_lease",
    "release_lease",
    "reap_leases",
    "lease_counts",
    "register_worker",
    "touch_worker",
    "workers",
    "push_pending",
    "pending_runs",
    "pending_threads",
    "remove_pending",
    "reserve_idempotency",
    "complete_idempotency",
    "release_idempotency",
    "purge_idempotency",
    "create_api_key",
    "api_key",
    "api_keys",
    "revoke_api_key",
    "append_audit",
    "audit",
];

/// Calls of one method and their total time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Calls {
    /// Calls made.
    pub calls: u64,
    /// Their time summed, in nanoseconds.
    pub nanos: u64,
}

/// Decides, for a call (method name and the thread it concerns, if any), whether it waits
/// for a future first — see [`CountingStore::with_pause`].
pub type Pause = Box<
    dyn Fn(&'static str, Option<&ThreadId>) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>>
        + Send
        + Sync,
>;

/// Counts calls to the wrapped store; optionally holds chosen calls until the test lets
/// them go.
pub struct CountingStore {
    inner: Arc<dyn Store>,
    calls: [AtomicU64; METHODS.len()],
    nanos: [AtomicU64; METHODS.len()],
    pause: Option<Pause>,
}

impl std::fmt::Debug for CountingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingStore")
            .field("inner", &self.inner)
            .field("calls", &self.calls())
            .field("pause", &self.pause.is_some())
            .finish()
    }
}

impl CountingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        CountingStore {
            inner,
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            nanos: std::array::from_fn(|_| AtomicU64::new(0)),
            pause: None,
        }
    }

    /// Before each call, asks `pause` with the method's name and its thread (for methods
    /// about one thread); a returned future is awaited before the call goes to the wrapped
    /// store — e.g. to keep requests in flight until the test releases them.
    pub fn with_pause(
        mut self,
        pause: impl Fn(
            &'static str,
            Option<&ThreadId>,
        ) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.pause = Some(Box::new(pause));
        self
    }

    async fn paused(&self, method: &'static str, thread: Option<&ThreadId>) {
        if let Some(wait) = self.pause.as_ref().and_then(|p| p(method, thread)) {
            wait.await;
        }
    }

    /// Calls so far of every method called at least once.
    pub fn snapshot(&self) -> BTreeMap<String, Calls> {
        METHODS
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let calls = self.calls[i].load(Ordering::Relaxed);
                (calls > 0).then(|| {
                    let nanos = self.nanos[i].load(Ordering::Relaxed);
                    ((*m).to_owned(), Calls { calls, nanos })
                })
            })
            .collect()
    }

    /// Calls so far, by method (methods never called are absent).
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        METHODS
            .iter()
            .zip(&self.calls)
            .filter_map(|(m, c)| {
                let n = c.load(Ordering::Relaxed);
                (n > 0).then_some((*m, n))
            })
            .collect()
    }

    /// Calls of each method since `before` (an earlier [`CountingStore::calls`]); methods
    /// not called since are absent.
    pub fn since(&self, before: &BTreeMap<&'static str, u64>) -> BTreeMap<&'static str, u64> {
        self.calls()
            .into_iter()
            .filter_map(|(m, n)| {
                let d = n - before.get(m).copied().unwrap_or(0);
                (d > 0).then_some((m, d))
            })
            .collect()
    }

    fn record(&self, method: &str, took: Duration) {
        let i = METHODS
            .iter()
            .position(|m| *m == method)
            .expect("invariant: every wrapped method is in METHODS");
        self.calls[i].fetch_add(1, Ordering::Relaxed);
        self.nanos[i].fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }
}

macro_rules! counted {
    ($self:ident, $name:literal, thread = $thread:expr, $call:expr) => {{
        $self.paused($name, Some($thread)).await;
        let t = Instant::now();
        let r = $call.await;
        $self.record($name, t.elapsed());
        r
    }};
    ($self:ident, $name:literal, $call:expr) => {{
        $self.paused($name, None).await;
        let t = Instant::now();
        let r = $call.await;
        $self.record($name, t.elapsed());
        r
    }};
}

#[async_trait]
impl Store for CountingStore {
    async fn commit(&self, commit: Commit) -> Result<Receipt> {
        counted!(
            self,
            "commit",
            thread = &commit.thread_id,
            self.inner.commit(commit)
        )
    }
    async fn thread(&self, thread_id: &ThreadId) -> Result<Option<ThreadRecord>> {
        counted!(
            self,
            "thread",
            thread = thread_id,
            self.inner.thread(thread_id)
        )
    }
    async fn run(&self, run_id: RunId) -> Result<Option<RunRecord>> {
        counted!(self, "run", self.inner.run(run_id))
    }
    async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        counted!(self, "runs", self.inner.runs(filter))
    }
    async fn due_runs(&self, now: Timestamp, limit: usize) -> Result<Vec<RunRecord>> {
        counted!(self, "due_runs", self.inner.due_runs(now, limit))
    }
    async fn events(&self, thread_id: &ThreadId, after: Seq, limit: usize) -> Result<Vec<Event>> {
        counted!(
            self,
            "events",
            thread = thread_id,
            self.inner.events(thread_id, after, limit)
        )
    }
    async fn snapshot(&self, thread_id: &ThreadId, at_or_before: Seq) -> Result<Option<Snapshot>> {
        counted!(
            self,
            "snapshot",
            thread = thread_id,
            self.inner.snapshot(thread_id, at_or_before)
        )
    }
    async fn delete_snapshots(&self, thread_id: &ThreadId) -> Result<u64> {
        counted!(
            self,
            "delete_snapshots",
            thread = thread_id,
            self.inner.delete_snapshots(thread_id)
        )
    }
    async fn interrupt(&self, interrupt_id: InterruptId) -> Result<Option<InterruptRecord>> {
        counted!(self, "interrupt", self.inner.interrupt(interrupt_id))
    }
    async fn interrupts(&self, thread_id: &ThreadId) -> Result<Vec<InterruptRecord>> {
        counted!(
            self,
            "interrupts",
            thread = thread_id,
            self.inner.interrupts(thread_id)
        )
    }
    async fn answer_interrupt(
        &self,
        interrupt_id: InterruptId,
        value: Payload,
        at: Timestamp,
    ) -> Result<(Answer, InterruptRecord)> {
        counted!(
            self,
            "answer_interrupt",
            self.inner.answer_interrupt(interrupt_id, value, at)
        )
    }
    async fn deliver(
        &self,
        thread_id: &ThreadId,
        name: &str,
        payload: Payload,
        key: Option<String>,
        at: Timestamp,
    ) -> Result<(Delivery, bool)> {
        counted!(
            self,
            "deliver",
            thread = thread_id,
            self.inner.deliver(thread_id, name, payload, key, at)
        )
    }
    async fn delete_thread(&self, thread_id: &ThreadId) -> Result<()> {
        counted!(
            self,
            "delete_thread",
            thread = thread_id,
            self.inner.delete_thread(thread_id)
        )
    }
    async fn prune(&self, thread_id: &ThreadId, base: Event) -> Result<u64> {
        counted!(
            self,
            "prune",
            thread = thread_id,
            self.inner.prune(thread_id, base)
        )
    }
    async fn deliveries(&self, thread_id: &ThreadId, pending_only: bool) -> Result<Vec<Delivery>> {
        counted!(
            self,
            "deliveries",
            thread = thread_id,
            self.inner.deliveries(thread_id, pending_only)
        )
    }
    async fn list_interrupts(&self, filter: &InterruptFilter) -> Result<Vec<InterruptRecord>> {
        counted!(self, "list_interrupts", self.inner.list_interrupts(filter))
    }
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<RunRecord>> {
        counted!(self, "claim", self.inner.claim(request))
    }
    async fn renew_lease(
        &self,
        fence: &Fence,
        worker_id: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<RunRecord> {
        counted!(
            self,
            "renew_lease",
            self.inner.renew_lease(fence, worker_id, now, ttl)
        )
    }
    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<RunRecord> {
        counted!(self, "release_lease", self.inner.release_lease(fence, now))
    }
    async fn reap_leases(&self, now: Timestamp, limit: usize) -> Result<Vec<RunRecord>> {
        counted!(self, "reap_leases", self.inner.reap_leases(now, limit))
    }
    async fn lease_counts(&self, now: Timestamp) -> Result<Vec<(String, u64)>> {
        counted!(self, "lease_counts", self.inner.lease_counts(now))
    }
    async fn register_worker(&self, worker: &WorkerRecord) -> Result<()> {
        counted!(self, "register_worker", self.inner.register_worker(worker))
    }
    async fn touch_worker(&self, worker_id: &str, now: Timestamp) -> Result<bool> {
        counted!(
            self,
            "touch_worker",
            self.inner.touch_worker(worker_id, now)
        )
    }
    async fn workers(&self) -> Result<Vec<WorkerRecord>> {
        counted!(self, "workers", self.inner.workers())
    }
    async fn push_pending(&self, run: &PendingRun) -> Result<u64> {
        counted!(
            self,
            "push_pending",
            thread = &run.thread_id,
            self.inner.push_pending(run)
        )
    }
    async fn pending_runs(&self, thread_id: &ThreadId) -> Result<Vec<PendingRun>> {
        counted!(
            self,
            "pending_runs",
            thread = thread_id,
            self.inner.pending_runs(thread_id)
        )
    }
    async fn pending_threads(&self, limit: usize) -> Result<Vec<ThreadId>> {
        counted!(self, "pending_threads", self.inner.pending_threads(limit))
    }
    async fn remove_pending(&self, run_id: RunId) -> Result<bool> {
        counted!(self, "remove_pending", self.inner.remove_pending(run_id))
    }
    async fn reserve_idempotency(
        &self,
        candidate: &IdempotencyRecord,
        now: Timestamp,
    ) -> Result<Reservation> {
        counted!(
            self,
            "reserve_idempotency",
            self.inner.reserve_idempotency(candidate, now)
        )
    }
    async fn complete_idempotency(
        &self,
        scope: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<()> {
        counted!(
            self,
            "complete_idempotency",
            self.inner.complete_idempotency(scope, key, response)
        )
    }
    async fn release_idempotency(&self, scope: &str, key: &str) -> Result<()> {
        counted!(
            self,
            "release_idempotency",
            self.inner.release_idempotency(scope, key)
        )
    }
    async fn purge_idempotency(&self, now: Timestamp) -> Result<u64> {
        counted!(self, "purge_idempotency", self.inner.purge_idempotency(now))
    }
    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        counted!(self, "create_api_key", self.inner.create_api_key(key))
    }
    async fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>> {
        counted!(self, "api_key", self.inner.api_key(key_id))
    }
    async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        counted!(self, "api_keys", self.inner.api_keys())
    }
    async fn revoke_api_key(&self, key_id: &str, at: Timestamp) -> Result<bool> {
        counted!(
            self,
            "revoke_api_key",
            self.inner.revoke_api_key(key_id, at)
        )
    }
    async fn append_audit(&self, record: &AuditRecord) -> Result<u64> {
        counted!(self, "append_audit", self.inner.append_audit(record))
    }
    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        counted!(self, "audit", self.inner.audit(filter))
    }
}

#[cfg(test)]
mod tests {
    use oris_core::store::MemoryStore;

    use super::*;

    #[test]
    fn counts_calls_per_method() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = CountingStore::new(Arc::new(MemoryStore::new()));
            let t = ThreadId::new("t").unwrap();
            assert!(s.snapshot().is_empty());
            assert!(s.thread(&t).await.unwrap().is_none());
            let before = s.calls();
            assert!(s.thread(&t).await.unwrap().is_none());
            assert!(s.api_keys().await.unwrap().is_empty());
            let after = s.snapshot();
            assert_eq!(after.len(), 2);
            assert_eq!(after["thread"].calls, 2);
            assert_eq!(after["api_keys"].calls, 1);
            assert_eq!(
                s.since(&before),
                BTreeMap::from([("api_keys", 1), ("thread", 1)])
            );
        });
    }
}
