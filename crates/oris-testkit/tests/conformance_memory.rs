//! The storage conformance suite against the in-memory store, the reference backend.

use oris_core::store::MemoryStore;

oris_testkit::store_conformance!(|| async { MemoryStore::new() });

/// The guarded form, as backends with a temporary directory or a database schema use it.
/// The store here checks, when dropped, that the guard is still alive: the macro promises
/// to drop the store first.
mod guarded {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use oris_core::event::{Event, Payload};
    use oris_core::id::{InterruptId, RunId, Seq, ThreadId, Timestamp};
    use oris_core::store::{
        Answer, ApiKeyRecord, AuditFilter, AuditRecord, ClaimRequest, Commit, Delivery, Fence,
        IdempotencyRecord, InterruptFilter, InterruptRecord, MemoryStore, Receipt, Reservation,
        Result, RunFilter, RunRecord, Snapshot, Store, StoredResponse, ThreadRecord,
    };

    /// Stands for a temporary directory or schema: marks itself dropped.
    #[derive(Debug)]
    struct Guard(Arc<AtomicBool>);

    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A `MemoryStore` that must be dropped while its guard lives.
    #[derive(Debug)]
    struct Watched {
        inner: MemoryStore,
        guard_dropped: Arc<AtomicBool>,
    }

    impl Drop for Watched {
        fn drop(&mut self) {
            assert!(
                !self.guard_dropped.load(Ordering::SeqCst),
                "the guard was dropped before the store"
            );
        }
    }

    #[async_trait]
    impl Store for Watched {
        async fn commit(&self, commit: Commit) -> Result<Receipt> {
            self.inner.commit(commit).await
        }
        async fn thread(&self, thread_id: &ThreadId) -> Result<Option<ThreadRecord>> {
            self.inner.thread(thread_id).await
        }
        async fn run(&self, run_id: RunId) -> Result<Option<RunRecord>> {
            self.inner.run(run_id).await
        }
        async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
            self.inner.runs(filter).await
        }
        async fn events(&self, t: &ThreadId, after: Seq, limit: usize) -> Result<Vec<Event>> {
            self.inner.events(t, after, limit).await
        }
        async fn snapshot(&self, t: &ThreadId, at_or_before: Seq) -> Result<Option<Snapshot>> {
            self.inner.snapshot(t, at_or_before).await
        }
        async fn delete_snapshots(&self, thread_id: &ThreadId) -> Result<u64> {
            self.inner.delete_snapshots(thread_id).await
        }
        async fn interrupt(&self, id: InterruptId) -> Result<Option<InterruptRecord>> {
            self.inner.interrupt(id).await
        }
        async fn interrupts(&self, thread_id: &ThreadId) -> Result<Vec<InterruptRecord>> {
            self.inner.interrupts(thread_id).await
        }
        async fn answer_interrupt(
            &self,
            id: InterruptId,
            value: Payload,
            at: Timestamp,
        ) -> Result<(Answer, InterruptRecord)> {
            self.inner.answer_interrupt(id, value, at).await
        }
        async fn deliver(
            &self,
            t: &ThreadId,
            name: &str,
            payload: Payload,
            key: Option<String>,
            at: Timestamp,
        ) -> Result<(Delivery, bool)> {
            self.inner.deliver(t, name, payload, key, at).await
        }
        async fn deliveries(&self, t: &ThreadId, pending_only: bool) -> Result<Vec<Delivery>> {
            self.inner.deliveries(t, pending_only).await
        }

        async fn due_runs(&self, now: Timestamp, limit: usize) -> Result<Vec<RunRecord>> {
            self.inner.due_runs(now, limit).await
        }

        async fn delete_thread(&self, t: &ThreadId) -> Result<()> {
            self.inner.delete_thread(t).await
        }

        async fn prune(&self, t: &ThreadId, base: Event) -> Result<u64> {
            self.inner.prune(t, base).await
        }

        async fn list_interrupts(&self, f: &InterruptFilter) -> Result<Vec<InterruptRecord>> {
            self.inner.list_interrupts(f).await
        }

        async fn claim(&self, request: &ClaimRequest) -> Result<Vec<RunRecord>> {
            self.inner.claim(request).await
        }

        async fn renew_lease(
            &self,
            fence: &Fence,
            worker_id: &str,
            now: Timestamp,
            ttl: std::time::Duration,
        ) -> Result<RunRecord> {
            self.inner.renew_lease(fence, worker_id, now, ttl).await
        }

        async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<RunRecord> {
            self.inner.release_lease(fence, now).await
        }

        async fn reserve_idempotency(
            &self,
            candidate: &IdempotencyRecord,
            now: Timestamp,
        ) -> Result<Reservation> {
            self.inner.reserve_idempotency(candidate, now).await
        }

        async fn complete_idempotency(
            &self,
            scope: &str,
            key: &str,
            response: &StoredResponse,
        ) -> Result<()> {
            self.inner.complete_idempotency(scope, key, response).await
        }

        async fn release_idempotency(&self, scope: &str, key: &str) -> Result<()> {
            self.inner.release_idempotency(scope, key).await
        }

        async fn purge_idempotency(&self, now: Timestamp) -> Result<u64> {
            self.inner.purge_idempotency(now).await
        }

        async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
            self.inner.create_api_key(key).await
        }

        async fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>> {
            self.inner.api_key(key_id).await
        }

        async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
            self.inner.api_keys().await
        }

        async fn revoke_api_key(&self, key_id: &str, at: Timestamp) -> Result<bool> {
            self.inner.revoke_api_key(key_id, at).await
        }

        async fn append_audit(&self, record: &AuditRecord) -> Result<u64> {
            self.inner.append_audit(record).await
        }

        async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
            self.inner.audit(filter).await
        }
    }

    async fn fixture() -> (Watched, Guard) {
        let flag = Arc::new(AtomicBool::new(false));
        let store = Watched {
            inner: MemoryStore::new(),
            guard_dropped: flag.clone(),
        };
        (store, Guard(flag))
    }

    // Attributes before the factory go on every generated test; this one never applies
    // and is here to keep the form compiling (a PostgreSQL suite would use, say,
    // `#[cfg_attr(not(feature = "pg-tests"), ignore)]`).
    oris_testkit::store_conformance!(#[cfg_attr(any(), ignore)] guarded: fixture);
}
