//! A store wrapper that counts the calls made to it, by method: for tests that bound how
//! many store calls an operation makes. It forwards every `Store` method to the wrapped
//! store (written out in the shape `async_trait` gives the trait, so the tests need no
//! extra dependency).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oris_core::event::{Event, Payload};
use oris_core::id::{InterruptId, RunId, Seq, ThreadId, Timestamp};
use oris_core::store::{
    self, Answer, ApiKeyRecord, AuditFilter, AuditRecord, ClaimRequest, Commit, Delivery, Fence,
    IdempotencyRecord, InterruptFilter, InterruptRecord, Receipt, Reservation, RunFilter,
    RunRecord, Snapshot, Store, StoredResponse, ThreadRecord,
};

type StoreFut<'a, T> = Pin<Box<dyn Future<Output = store::Result<T>> + Send + 'a>>;

/// Counts calls to the wrapped store, by method name.
#[derive(Debug)]
pub struct Counting {
    inner: Arc<dyn Store>,
    calls: Mutex<BTreeMap<&'static str, u64>>,
}

impl Counting {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Counting {
            inner,
            calls: Mutex::default(),
        })
    }

    /// Calls so far, by method (methods never called are absent).
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.calls.lock().unwrap().clone()
    }

    /// Calls of each method since `before` (methods not called since are absent).
    pub fn since(&self, before: &BTreeMap<&'static str, u64>) -> BTreeMap<&'static str, u64> {
        self.calls()
            .into_iter()
            .filter_map(|(m, n)| {
                let d = n - before.get(m).copied().unwrap_or(0);
                (d > 0).then_some((m, d))
            })
            .collect()
    }

    fn hit(&self, method: &'static str) {
        *self.calls.lock().unwrap().entry(method).or_default() += 1;
    }
}

impl Store for Counting {
    fn commit<'l0, 'at>(&'l0 self, commit: Commit) -> StoreFut<'at, Receipt>
    where
        'l0: 'at,
        Self: 'at,
    {
        self.hit("commit");
        self.inner.commit(commit)
    }
    fn thread<'l0, 'l1, 'at>(&'l0 self, t: &'l1 ThreadId) -> StoreFut<'at, Option<ThreadRecord>>
    where
        'l0: 'at,
        'l1: 'at,
        Self: 'at,
    {
        self.hit("thread");
        self.inner.thread(t)
    }
    fn run<'l0, 'at>(&'l0 self, run_id: RunId) -> StoreFut<'at, Option<RunRecord>>
    where
        'l0: 'at,
        Self: 'at,
    {
        self.hit("run");
        self.inner.run(run_id)
    }
    fn runs<'l0, 'l1, 'at>(&'l0 self, f: &'l1 RunFilter) -> StoreFut<'at, Vec<RunRecord>>
    where
        'l0: 'at,
        'l1: 'at,
        Self: 'at,
    {
        self.hit("runs");
        self.inner.runs(f)
    }
    fn due_runs<'l0, 'at>(&'l0 self, now: Timestamp, limit: usize) -> StoreFut<'at, Vec<RunRecord>>
    where
        'l0: 'at,
        Self: 'at,
    {
        self.hit("due_runs");
        self.inner.due_runs(now, limit)
    }
    fn events<'l0, 'l1, 'at>(
        &'l0 self,
        t: &'l1 ThreadId,
        after: Seq,
        limit: usize,
    ) -> StoreFut<'at, Vec<Event>>
    where
        'l0: 'at,
        'l1: 'at,
        Self: 'at,
    {
        self.hit("events");
        self.inner.events(t, after, limit)
    }
    fn snapshot<'l0, 'l1, 'at>(
        &'l0 self,
        t: &'l1 ThreadId,
        at_or_before: Seq,
    ) -> StoreFut<'at, Option<Snapshot>>
    where
        'l0: 'at,
        'l1: 'at,
        Self: 'at,
    {
        self.hit("snapshot");
        self.inner.snapshot(t, at_or_before)
    }
    fn delete_snapshots<'l0, 'l1, 'at>(&'l0 self, t: &'l1 ThreadId) -> StoreFut<'at, u64>
    where
        'l0: 'at,
        'l1: 'at,
        Self: 'at,
    {
        self.hit("delete_snapshots");
        self.inner.delete_snapshots(t)
    }
    fn interrupt<'l0, 'at>(&'l0 self, id: InterruptId) -> StoreFut<'at, Option<InterruptRecord>>
    where
        'l0: 'at,
        Self: 'at,
    {
        self.hit("interrupt");
        self.inner.interrupt(id)
    }
    fn interrupts<'l0, 'l1, 'at>(&'l0 self, t: &'l1 ThreadId) -> StoreFut<'at, Vec<InterruptRecord>>
    where
        'l0: 'at,
        'l1: 'at,
        Self: 'at,
    {
        self.hit("interrupts");
        self.inner.interrupts(t)
    }
    fn answer_interrupt<'l0, 'at>(
        &'l0 self,
        id: InterruptId,
        value: Payload,
        at: Timestamp,
    ) -> StoreFut<'at, (Answer, InterruptRecord)>
    where
        'l0: 'at,
        Self: 'at,
    {
        self.hit("answer_interrupt");
        self.inner.answer_interrupt(id, value, at)
    }
    fn deliver<'l0, 'l1, 'l2, 'at>(
        &'l0 self,
        t: &'l1 ThreadId,
        name: &'l2 str,
        payload: Payload,
        key: Option<String>,
        at: Timestamp,
    ) -> StoreFut<'at, (Delivery, bool)>
    where
        'l0: 'at,
        'l1: 'at,
        'l2: 'at,
        Self: 'at,
    {
        self.hit("deliver");
        self.inner.deliver(t, name, payload, key, at)
    }
    fn delete_thread<'l0, 'l1, 'at>(&'l0 self, t: &'l1 ThreadId) -> StoreFut<'at, ()>
    where
        'l0: 'at,
        'l1: 'at,
        Self: 'at,
    {
        self.hit("delete_thread");
        self.inner.delete_thread(t)
    }
    fn prune<'l0, 'l1, 'at>(&'l0 self, t: &'l1 ThreadId, base: Event) -> StoreFut<'at, u64>
    where
        'l0: 'at,
        'l1: 'at,
        Self: 'at,
    {
        self.hit("prune");
        self.inner.prune(t, base)
    }
    fn deliveries<'l0, 'l1, 'at>(
        &'l0 self,
        t: &'l1 ThreadId,
        pending_only: bool,
    ) -> StoreFut<'at, Vec<Delivery>>
    where
        'l0: 'at,
        'l1: 'at,
        Self: 'at,
    {
        self.hit("deliveries");
        self.inner.deliveries(t, pending_only)
    }
    fn list_interrupts<'l0, 'l1, 'at>(
        &'l0 self,
        f: &'l1 InterruptFilter,
    ) -> StoreFut<'at, Vec<InterruptRecord>>
    where
        'l0: 'at,
        'l1: 'at,
        Self: 'at,
    {
        self.hit("list_interrupts");
        self.inner.list_interrupts(f)
    }
    fn claim<'l0, 'l1, 'at>(&'l0 self, r: &'l1 ClaimRequest) -> StoreFut<'at, Vec<RunRecord>>
    where
        'l0: 'at,
        'l1: 'at,
        Self: 'at,
    {
        self.hit("claim");
        self.inner.claim(r)
    }
    fn renew_lease<'l0, 'l1, 'l2, 'at>(
        &'l0 self,
        f: &'l1 Fence,
        w: &'l2 str,
        now: Timestamp,
        ttl: Duration,
    ) -> StoreFut<'at, RunRecord>
    where
        'l0: 'at,
        'l1: 'at,
        'l2: 'at,
        Self: 'at,
    {
        self.hit("renew_lease");
        self.inner.renew_lease(f, w, now, ttl)
    }
    fn release_lease<'l0, 'l1, 'at>(
        &'l0 self,
        f: &'l1 Fence,
        now: Timestamp,
    ) -> StoreFut<'at, RunRecord>
    where
        'l0: 'at,
        'l1: 'at,
        Self: 'at,
    {
        self.hit("release_lease");
        self.inner.release_lease(f, now)
    }
    fn reserve_idempotency<'l0, 'l1, 'at>(
        &'l0 self,
        c: &'l1 IdempotencyRecord,
        now: Timestamp,
    ) -> StoreFut<'at, Reservation>
    where
        'l0: 'at,
        'l1: 'at,
        Self: 'at,
    {
        self.hit("reserve_idempotency");
        self.inner.reserve_idempotency(c, now)
    }
    fn complete_idempotency<'l0, 'l1, 'l2, 'l3, 'at>(
        &'l0 self,
        s: &'l1 str,
        k: &'l2 str,
        r: &'l3 StoredResponse,
    ) -> StoreFut<'at, ()>
    where
        'l0: 'at,
        'l1: 'at,
        'l2: 'at,
        'l3: 'at,
        Self: 'at,
    {
        self.hit("complete_idempotency");
        self.inner.complete_idempotency(s, k, r)
    }
    fn release_idempotency<'l0, 'l1, 'l2, 'at>(
        &'l0 self,
        s: &'l1 str,
        k: &'l2 str,
    ) -> StoreFut<'at, ()>
    where
        'l0: 'at,
        'l1: 'at,
        'l2: 'at,
        Self: 'at,
    {
        self.hit("release_idempotency");
        self.inner.release_idempotency(s, k)
    }
    fn purge_idempotency<'l0, 'at>(&'l0 self, now: Timestamp) -> StoreFut<'at, u64>
    where
        'l0: 'at,
        Self: 'at,
    {
        self.hit("purge_idempotency");
        self.inner.purge_idempotency(now)
    }
    fn create_api_key<'l0, 'l1, 'at>(&'l0 self, k: &'l1 ApiKeyRecord) -> StoreFut<'at, ()>
    where
        'l0: 'at,
        'l1: 'at,
        Self: 'at,
    {
        self.hit("create_api_key");
        self.inner.create_api_key(k)
    }
    fn api_key<'l0, 'l1, 'at>(&'l0 self, k: &'l1 str) -> StoreFut<'at, Option<ApiKeyRecord>>
    where
        'l0: 'at,
        'l1: 'at,
        Self: 'at,
    {
        self.hit("api_key");
        self.inner.api_key(k)
    }
    fn api_keys<'l0, 'at>(&'l0 self) -> StoreFut<'at, Vec<ApiKeyRecord>>
    where
        'l0: 'at,
        Self: 'at,
    {
        self.hit("api_keys");
        self.inner.api_keys()
    }
    fn revoke_api_key<'l0, 'l1, 'at>(&'l0 self, k: &'l1 str, at: Timestamp) -> StoreFut<'at, bool>
    where
        'l0: 'at,
        'l1: 'at,
        Self: 'at,
    {
        self.hit("revoke_api_key");
        self.inner.revoke_api_key(k, at)
    }
    fn append_audit<'l0, 'l1, 'at>(&'l0 self, r: &'l1 AuditRecord) -> StoreFut<'at, u64>
    where
        'l0: 'at,
        'l1: 'at,
        Self: 'at,
    {
        self.hit("append_audit");
        self.inner.append_audit(r)
    }
    fn audit<'l0, 'l1, 'at>(&'l0 self, f: &'l1 AuditFilter) -> StoreFut<'at, Vec<AuditRecord>>
    where
        'l0: 'at,
        'l1: 'at,
        Self: 'at,
    {
        self.hit("audit");
        self.inner.audit(f)
    }
}
