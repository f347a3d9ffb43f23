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
        IdempotencyRecord, InterruptFilter, InterruptRecord, MemoryStore, PendingRun, Receipt,
        Reservation, Result, RunFilter, RunRecord, Snapshot, Store, StoredResponse, ThreadRecord,
        WorkerRecord,
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

        async fn reap_leases(&self, now: Timestamp, limit: usize) -> Result<Vec<RunRecord>> {
            self.inner.reap_leases(now, limit).await
        }

        async fn lease_counts(&self, now: Timestamp) -> Result<Vec<(String, u64)>> {
            self.inner.lease_counts(now).await
        }

        async fn register_worker(&self, worker: &WorkerRecord) -> Result<()> {
            self.inner.register_worker(worker).await
        }

        async fn touch_worker(&self, worker_id: &str, now: Timestamp) -> Result<bool> {
            self.inner.touch_worker(worker_id, now).await
        }

        async fn workers(&self) -> Result<Vec<WorkerRecord>> {
            self.inner.workers().await
        }

        async fn push_pending(&self, run: &PendingRun) -> Result<u64> {
            self.inner.push_pending(run).await
        }

        async fn pending_runs(&self, t: &ThreadId) -> Result<Vec<PendingRun>> {
            self.inner.pending_runs(t).await
        }

        async fn pending_threads(&self, limit: usize) -> Result<Vec<ThreadId>> {
            self.inner.pending_threads(limit).await
        }

        async fn remove_pending(&self, run_id: RunId) -> Result<bool> {
            self.inner.remove_pending(run_id).await
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

/// `MemoryStore::load_image` / `forget_thread`: a remote worker's local copy of a claimed
/// thread, loaded from an image that starts at the latest snapshot (or at the active run's
/// first event, when that is earlier).
mod images {
    use std::time::Duration;

    use oris_core::id::{InterruptId, RunId, Seq, ThreadId, Timestamp};
    use oris_core::protocol::ThreadImage;
    use oris_core::store::{Commit, Error, Fence, MemoryStore, RunRecord, Store};
    use oris_testkit::build::{self, GRAPH, GRAPH_VERSION};
    use oris_testkit::writer::Writer;

    const HOUR: Duration = Duration::from_secs(3600);

    /// The image a server sends for `t`: the thread, `runs`, the latest snapshot and the
    /// log from the earlier of its seq and the active run's first seq, interrupts and
    /// deliveries.
    async fn image_of(s: &MemoryStore, t: &ThreadId, runs: &[RunId]) -> ThreadImage {
        let thread = s.thread(t).await.unwrap().expect("the thread exists");
        let snapshot = s.snapshot(t, thread.head).await.unwrap();
        let mut records = Vec::new();
        for id in runs {
            records.push(s.run(*id).await.unwrap().expect("the run exists"));
        }
        let active_first = thread
            .active_run
            .and_then(|a| records.iter().find(|r| r.run_id == a))
            .map(|r| r.first_seq);
        let from = match (&snapshot, active_first) {
            (Some(sn), Some(f)) => sn.at_seq.min(f),
            (Some(sn), None) => sn.at_seq,
            (None, _) => Seq(1),
        };
        let events = s.events(t, Seq(from.0 - 1), usize::MAX).await.unwrap();
        ThreadImage {
            thread,
            runs: records,
            snapshot,
            events,
            interrupts: s.interrupts(t).await.unwrap(),
            deliveries: s.deliveries(t, false).await.unwrap(),
        }
    }

    /// A thread on `source` whose first run (driven in-process) wrote events 1–4, a
    /// snapshot at 5 and ended at 6; its second run, queued at 7, is claimed (lease of an
    /// hour from the wall clock) and driven under that lease: `run_started` at 7, an
    /// interrupt raised at 8, an event at 9; and a pending delivery. Returns the first run's
    /// id, the second run (as claimed), its fence and the raised interrupt.
    async fn leased_thread(
        source: &MemoryStore,
        t: &ThreadId,
    ) -> (RunId, RunRecord, Fence, InterruptId) {
        let mut w = Writer::start_graph(source, t, GRAPH).await;
        let first = w.run.run_id;
        w.steps(source, 3).await;
        let c = Commit {
            snapshot: Some(build::snapshot(first, 5, r#"{"step":5}"#)),
            ..build::append(t, 4, vec![build::step(first, 5)])
        };
        w.commit(source, c).await;
        w.complete(source).await;
        let q = RunRecord {
            first_seq: Seq(7),
            ..build::queued_run(t, GRAPH, GRAPH_VERSION, build::at(1), 0, None)
        };
        source.commit(build::create(&q, vec![])).await.unwrap();
        let claimed = source
            .claim(&build::claim_request("w1", Timestamp::now(), HOUR, 1))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "the queued run is claimed");
        let run = claimed.into_iter().next().unwrap();
        let f = build::fence(run.run_id, run.lease_epoch);
        let r = run.run_id;
        let interrupt = InterruptId::generate();
        let commits = [
            build::append(t, 6, vec![build::started(&q, 7)]),
            build::append(
                t,
                7,
                vec![build::interrupt_raised(
                    r,
                    8,
                    "a",
                    interrupt,
                    r#"{"ask":1}"#,
                )],
            ),
            build::append(t, 8, vec![build::step(r, 9)]),
        ];
        for c in commits {
            source.commit(build::fenced(c, f)).await.unwrap();
        }
        source
            .deliver(t, "ping", build::payload(r#"{"p":1}"#), None, build::at(7))
            .await
            .unwrap();
        let run = source.run(r).await.unwrap().unwrap();
        (first, run, f, interrupt)
    }

    #[tokio::test]
    async fn commits_continue_on_a_loaded_image() {
        let source = MemoryStore::new();
        let t = build::thread_id("image-continue");
        let (first, run, f, interrupt) = leased_thread(&source, &t).await;
        let r = run.run_id;
        let image = image_of(&source, &t, &[r, first]).await;
        assert_eq!(
            image.events.first().map(|e| e.seq),
            Some(Seq(5)),
            "the image starts at the snapshot"
        );

        let local = MemoryStore::new();
        local.load_image(image.clone()).unwrap();
        assert_eq!(local.thread(&t).await.unwrap(), Some(image.thread.clone()));
        assert_eq!(local.run(r).await.unwrap(), Some(run.clone()));
        assert_eq!(local.snapshot(&t, Seq(9)).await.unwrap(), image.snapshot);
        assert_eq!(local.snapshot(&t, Seq(4)).await.unwrap(), None);
        assert_eq!(
            local.events(&t, Seq::ZERO, 100).await.unwrap(),
            image.events
        );
        assert_eq!(
            local.events(&t, Seq(6), 2).await.unwrap(),
            image.events[2..4].to_vec(),
            "reading the active run's opening events"
        );
        assert_eq!(
            local.events(&t, Seq(8), 100).await.unwrap(),
            vec![build::step(r, 9)],
            "reading after an inner seq"
        );
        assert_eq!(local.events(&t, Seq(9), 100).await.unwrap(), vec![]);
        assert_eq!(
            local
                .interrupt(interrupt)
                .await
                .unwrap()
                .map(|i| i.raised_seq),
            Some(Seq(8))
        );
        assert_eq!(
            local.deliveries(&t, true).await.unwrap(),
            image.deliveries,
            "the pending delivery is carried"
        );

        // The next commit, fenced by the loaded run's lease, lands after the image's head.
        let c = build::fenced(build::append(&t, 9, vec![build::step(r, 10)]), f);
        assert_eq!(local.commit(c).await.unwrap().head, Seq(10));
        assert_eq!(
            local.events(&t, Seq(9), 100).await.unwrap(),
            vec![build::step(r, 10)]
        );
        assert_eq!(local.thread(&t).await.unwrap().unwrap().head, Seq(10));
        // A stale lease is refused as on the server.
        let stale = build::fenced(
            build::append(&t, 10, vec![build::step(r, 11)]),
            build::fence(r, f.epoch - 1),
        );
        assert!(matches!(
            local.commit(stale).await,
            Err(Error::LeaseLost { .. })
        ));
        // A snapshot and a status change work on the loaded copy too.
        let finish = Commit {
            snapshot: Some(build::snapshot(r, 11, r#"{"step":11}"#)),
            ..build::finish(&t, 10, r, build::status_completed(11), vec![])
        };
        local.commit(build::fenced(finish, f)).await.unwrap();
        assert_eq!(
            local.snapshot(&t, Seq(11)).await.unwrap().map(|s| s.at_seq),
            Some(Seq(11))
        );
        assert_eq!(local.thread(&t).await.unwrap().unwrap().active_run, None);
        // The source is untouched.
        assert_eq!(source.thread(&t).await.unwrap().unwrap().head, Seq(9));
    }

    #[tokio::test]
    async fn a_loaded_run_is_in_the_claim_index() {
        let source = MemoryStore::new();
        let t = build::thread_id("image-claims");
        let (first, run, f, _) = leased_thread(&source, &t).await;
        let local = MemoryStore::new();
        local
            .load_image(image_of(&source, &t, &[run.run_id, first]).await)
            .unwrap();
        let now = Timestamp::now();
        let held = local
            .claim(&build::claim_request("w2", now, HOUR, 5))
            .await
            .unwrap();
        assert_eq!(held, vec![], "the lease is held for an hour");
        let later = Timestamp(now.0 + 2 * 3_600_000);
        let taken = local
            .claim(&build::claim_request("w2", later, HOUR, 5))
            .await
            .unwrap();
        assert_eq!(
            taken.len(),
            1,
            "after the lease's expiry the run is claimable"
        );
        assert_eq!(taken[0].run_id, run.run_id);
        assert_eq!(taken[0].lease_epoch, f.epoch + 1);
    }

    #[tokio::test]
    async fn a_new_image_replaces_the_old_and_forget_drops_it() {
        let source = MemoryStore::new();
        let t = build::thread_id("image-replace");
        let (first, run, f, interrupt) = leased_thread(&source, &t).await;
        let r = run.run_id;
        let image = image_of(&source, &t, &[r, first]).await;
        let local = MemoryStore::new();
        local.load_image(image.clone()).unwrap();
        let c = build::fenced(build::append(&t, 9, vec![build::step(r, 10)]), f);
        local.commit(c).await.unwrap();
        local
            .deliver(&t, "local", build::payload("{}"), None, build::at(9))
            .await
            .unwrap();

        local.load_image(image.clone()).unwrap();
        assert_eq!(local.thread(&t).await.unwrap().unwrap().head, Seq(9));
        assert_eq!(local.events(&t, Seq(9), 100).await.unwrap(), vec![]);
        assert_eq!(local.deliveries(&t, false).await.unwrap(), image.deliveries);

        let other = build::thread_id("image-other");
        let w = Writer::start(&local, "image-other").await;
        assert!(local.forget_thread(&t));
        assert_eq!(local.thread(&t).await.unwrap(), None);
        assert_eq!(local.run(r).await.unwrap(), None);
        assert_eq!(local.run(first).await.unwrap(), None);
        assert_eq!(local.interrupt(interrupt).await.unwrap(), None);
        assert_eq!(local.events(&t, Seq::ZERO, 100).await.unwrap(), vec![]);
        assert_eq!(local.snapshot(&t, Seq(100)).await.unwrap(), None);
        assert_eq!(local.deliveries(&t, false).await.unwrap(), vec![]);
        let later = Timestamp(Timestamp::now().0 + 2 * 3_600_000);
        assert_eq!(
            local
                .claim(&build::claim_request("w2", later, HOUR, 5))
                .await
                .unwrap(),
            vec![],
            "a forgotten run leaves the claim index"
        );
        assert!(!local.forget_thread(&t), "forgetting twice finds nothing");
        assert_eq!(
            local.thread(&other).await.unwrap().map(|t| t.head),
            Some(Seq(w.head)),
            "other threads stay"
        );
    }

    #[tokio::test]
    async fn a_broken_image_is_refused_and_changes_nothing() {
        let source = MemoryStore::new();
        let t = build::thread_id("image-broken");
        let (first, run, _, _) = leased_thread(&source, &t).await;
        let good = image_of(&source, &t, &[run.run_id, first]).await;
        let local = MemoryStore::new();

        let mut gap = good.clone();
        gap.events[1].seq = Seq(11);
        gap.thread.head = Seq(11);
        gap.events.truncate(2);
        let mut short = good.clone();
        short.thread.head = Seq(12);
        let mut snapshot_outside = good.clone();
        if let Some(s) = &mut snapshot_outside.snapshot {
            s.at_seq = Seq(3);
        }
        let mut no_base = good.clone();
        no_base.snapshot = None;
        let mut foreign_run = good.clone();
        foreign_run.runs[0].thread_id = build::thread_id("elsewhere");
        let mut no_active = good.clone();
        no_active.runs.remove(0);
        let mut no_snapshot_run = good.clone();
        no_snapshot_run.runs.remove(1);
        let mut twice = good.clone();
        twice.runs.push(twice.runs[0].clone());
        let mut foreign_delivery = good.clone();
        foreign_delivery.deliveries[0].thread_id = build::thread_id("elsewhere");
        let mut foreign_interrupt = good.clone();
        foreign_interrupt.interrupts[0].thread_id = build::thread_id("elsewhere");
        // The snapshot inside the active run, the log sent from the snapshot only: the
        // run's `run_started` is missing.
        let mut no_opening = good.clone();
        if let Some(s) = &mut no_opening.snapshot {
            s.at_seq = Seq(8);
            s.run_id = run.run_id;
        }
        no_opening.events.retain(|e| e.seq >= Seq(8));

        let cases = [
            (gap, "a gap in the events", true),
            (short, "events ending before the head", false),
            (snapshot_outside, "a snapshot before the log", false),
            (no_base, "a log after seq 1 without a snapshot", false),
            (foreign_run, "a run of another thread", false),
            (no_active, "the active run missing", false),
            (no_snapshot_run, "the snapshot's run missing", false),
            (twice, "a run twice", false),
            (foreign_delivery, "a delivery of another thread", false),
            (foreign_interrupt, "an interrupt of another thread", false),
            (no_opening, "the active run's run_started missing", false),
        ];
        for (image, what, corrupt) in cases {
            let e = local.load_image(image).expect_err(what);
            if corrupt {
                assert!(matches!(e, Error::Corrupt { .. }), "{what}: {e}");
            } else {
                assert!(matches!(e, Error::InvalidCommit { .. }), "{what}: {e}");
            }
            assert!(e.to_string().contains("thread image"), "{what}: {e}");
            assert_eq!(
                local.thread(&t).await.unwrap(),
                None,
                "{what}: nothing stored"
            );
            assert_eq!(local.run(run.run_id).await.unwrap(), None, "{what}");
        }

        // The same snapshot inside the active run, with the log from the run's first seq:
        // accepted.
        let mut opening = good.clone();
        if let Some(s) = &mut opening.snapshot {
            s.at_seq = Seq(8);
            s.run_id = run.run_id;
        }
        opening.events.retain(|e| e.seq >= Seq(7));
        local.load_image(opening).unwrap();

        // A pruned log (starting with its history_pruned base) needs no snapshot.
        let pruned_source = MemoryStore::new();
        let p = build::thread_id("image-pruned");
        let mut w = Writer::start(&pruned_source, "image-pruned").await;
        w.steps(&pruned_source, 4).await;
        let first_run = w.run.run_id;
        w.complete(&pruned_source).await;
        w.next_run(&pruned_source).await;
        let base = build::event(
            first_run,
            3,
            oris_core::event::EventBody::HistoryPruned {
                state: build::payload(r#"{"step":3}"#),
                boundary: build::boundary(&["a"]),
            },
        );
        pruned_source.prune(&p, base).await.unwrap();
        let mut image = image_of(&pruned_source, &p, &[w.run.run_id]).await;
        assert_eq!(image.events.first().map(|e| e.seq), Some(Seq(3)));
        local.load_image(image.clone()).unwrap();
        assert_eq!(
            local.events(&p, Seq::ZERO, 100).await.unwrap(),
            image.events
        );
        image.events.remove(0);
        assert!(matches!(
            local.load_image(image),
            Err(Error::InvalidCommit { .. })
        ));
    }
}
