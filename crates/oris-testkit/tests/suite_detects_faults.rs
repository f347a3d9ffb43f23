//! The suite can fail: each case below is run against a store with one planted fault
//! (a wrapper around `MemoryStore`) and must panic. A conformance case that passes a broken
//! backend would be worse than no case.

use std::sync::Arc;

use async_trait::async_trait;
use oris_core::event::{Event, EventBody, Payload};
use oris_core::id::{InterruptId, RunId, Seq, ThreadId, Timestamp};
use oris_core::status::{RunStatus, StatusKind};
use oris_core::store::{
    Answer, ApiKeyRecord, AuditFilter, AuditRecord, ClaimRequest, Commit, Delivery, Error, Fence,
    IdempotencyRecord, InterruptFilter, InterruptRecord, MemoryStore, PendingRun, Receipt,
    Reservation, Result, RunFilter, RunRecord, RunWrite, Snapshot, Store, StoredResponse,
    ThreadRecord, WorkerRecord,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// No fault: the wrapper itself must pass (so a mutant fails for its fault alone).
    Nothing,
    /// A conflict is reported as success.
    SwallowsConflicts,
    /// A conflict is reported as a storage failure.
    ConflictAsUnavailable,
    /// A failed commit still writes its events (no transaction).
    WritesEventsOfFailedCommits,
    /// Node updates go through `serde_json::Value` (key order, number spelling change).
    NormalisesJson,
    /// Event times are stored to the second.
    TruncatesTimes,
    /// `events(after)` includes the event at `after`.
    PagingOffByOne,
    /// `after` is cast to `i64`, so `u64::MAX` wraps to -1.
    SignedSeqCast,
    /// `snapshot` ignores its bound.
    SnapshotIgnoresBound,
    /// `runs` ignores the `after` cursor.
    RunsIgnoreCursor,
    /// `runs` returns newest first.
    RunsNewestFirst,
    /// `delete_snapshots` always says 0.
    DeleteCountsZero,
    /// Thread ids are compared case-insensitively (a NOCASE collation).
    CaseInsensitiveThreads,
    /// The data of a `Waiting` status is lost (only its kind is stored).
    DropsWaitingData,
    /// Interrupted and waiting runs are not selected by a status filter.
    FilterMissesSuspended,
    /// `interrupts` lists by id instead of raised order.
    InterruptsById,
    /// `answer_interrupt` checks and sets in two steps: concurrent callers all "record".
    AnswerCheckThenSet,
    /// Another value replaces the answer instead of conflicting.
    AnswerOverwrites,
    /// Answers are compared byte for byte, not as JSON values.
    AnswerComparesBytes,
    /// An interrupt of an ended run still takes an answer.
    AnswersEndedRuns,
    /// `InterruptResumed` does not mark the interrupt applied.
    NeverApplied,
    /// `deliveries` returns newest first.
    DeliveriesNewestFirst,
    /// `deliveries` ignores `pending_only`.
    PendingIgnored,
    /// A re-delivery with a used key is recorded again.
    RedeliveryRecorded,
    /// A used key with another event is accepted as a new delivery.
    KeyConflictIgnored,
    /// A commit of `StateUpdated` events on an idle thread is refused.
    RefusesEdits,
    /// A claim returns its runs in reverse order.
    ClaimsReversed,
    /// Runs claimed by one claim are handed out again by the next (no exclusion).
    ClaimsTwice,
    /// The (graph, version) list of a claim is ignored.
    ClaimIgnoresGraphs,
    /// Commits are not fenced (the fence is dropped).
    FenceIgnored,
    /// A fence is checked against its own run only, not against the commit's writer.
    FenceOfAnyRun,
    /// A renewal by another worker is accepted.
    RenewIgnoresWorker,
    /// A renewal at or after the expiry revives the lease.
    RenewRevivesExpired,
    /// A release with a superseded epoch releases the current lease.
    ReleaseAnyEpoch,
    /// Answers and deliveries that make a suspended run ready are not reflected in
    /// `ready_at` (only the status's own wake-up time is).
    SuspendedReadyOnlyByStatus,
    /// A suspended run driven by the library (never claimed) is made ready as if workers
    /// drove it: at its wake-up time, or since it suspended.
    LibraryRunsReady,
    /// A reservation racing an identical one at the same instant also wins (check, then set).
    ReserveCheckThenSet,
    /// A key used with another request reads as in flight instead of a mismatch.
    MismatchAsInFlight,
    /// `purge_idempotency` always says 0.
    PurgeCountsZero,
    /// A duplicate API key id is reported as created.
    DuplicateKeyAccepted,
    /// Revoking always says `true`.
    RevokeAlwaysTrue,
    /// API keys are listed by id.
    KeysById,
    /// `audit` ignores its cursor.
    AuditIgnoresCursor,
    /// Only the first metadata pair of a run filter is applied.
    MetadataFirstPairOnly,
    /// `created_to` includes its bound.
    CreatedToInclusive,
    /// `list_interrupts` ignores `open_only`.
    OpenIgnored,
    /// `list_interrupts` ignores the graph.
    InterruptGraphIgnored,
    /// The reaper clears live leases too.
    ReapIgnoresExpiry,
    /// The reaper returns the runs it would reap but stores nothing (the lease stays).
    ReapOnlyReports,
    /// The reaper reports the epoch of the next claim.
    ReapReportsNextEpoch,
    /// The reaper ignores its limit.
    ReapIgnoresLimit,
    /// The reaper returns its runs latest expiry first.
    ReapLatestFirst,
    /// Lease counts include expired leases.
    CountsExpiredLeases,
    /// Lease counts include a lease expiring exactly at `now`.
    CountsLeasesExpiringNow,
    /// Lease counts lump every graph together.
    CountsIgnoreGraphs,
    /// A re-registration replaces `registered_at` too.
    RegisterResetsRegisteredAt,
    /// A re-registration without a stop keeps the earlier stop.
    StopSticks,
    /// `touch_worker` answers `true` for unknown workers.
    TouchAlwaysTrue,
    /// `touch_worker` does not store `last_seen`.
    TouchNotStored,
    /// `workers` lists in reverse id order.
    WorkersUnordered,
    /// `pending_runs` lists newest position first.
    PendingNewestFirst,
    /// A duplicate pending run id is stored again instead of refused.
    PendingDuplicateAccepted,
    /// `remove_pending` answers `true` for unknown ids.
    RemovePendingAlwaysTrue,
    /// `pending_threads` ignores its limit.
    PendingThreadsIgnoreLimit,
    /// `pending_threads` also lists threads with an unfinished run.
    PendingThreadsIgnoreActive,
    /// Positions keep counting after the queue emptied (a per-thread counter, never reset).
    PendingPositionsNeverReset,
}

#[derive(Debug)]
struct Faulty {
    inner: MemoryStore,
    fault: Fault,
    /// The runs of the latest claim (for `ClaimsTwice`).
    last_claim: std::sync::Mutex<Vec<RunRecord>>,
    /// The `registered_at` of each worker's latest registration (for
    /// `RegisterResetsRegisteredAt`).
    registered: std::sync::Mutex<std::collections::HashMap<String, Timestamp>>,
    /// Pushes per thread (for `PendingPositionsNeverReset`).
    pushed: std::sync::Mutex<std::collections::HashMap<ThreadId, u64>>,
    /// Threads that got a pending run (for `PendingThreadsIgnoreActive`).
    pushed_threads: std::sync::Mutex<Vec<ThreadId>>,
}

impl Faulty {
    fn new(fault: Fault) -> Self {
        Faulty {
            inner: MemoryStore::new(),
            fault,
            last_claim: std::sync::Mutex::new(Vec::new()),
            registered: std::sync::Mutex::new(std::collections::HashMap::new()),
            pushed: std::sync::Mutex::new(std::collections::HashMap::new()),
            pushed_threads: std::sync::Mutex::new(Vec::new()),
        }
    }
}

fn normalise(p: &Payload) -> Payload {
    let value: serde_json::Value = serde_json::from_str(p.json()).expect("stored JSON");
    Payload::encode(&value).expect("re-encode")
}

impl Faulty {
    fn tid(&self, t: &ThreadId) -> ThreadId {
        if self.fault == Fault::CaseInsensitiveThreads {
            ThreadId::new(t.as_str().to_ascii_lowercase()).expect("valid id")
        } else {
            t.clone()
        }
    }

    fn read_run(&self, mut r: RunRecord) -> RunRecord {
        if self.fault == Fault::SuspendedReadyOnlyByStatus
            && r.lease.is_none()
            && matches!(
                r.status,
                RunStatus::Interrupted { .. } | RunStatus::Waiting { .. }
            )
        {
            r.ready_at = oris_core::store::wake_at(&r.status);
        }
        if self.fault == Fault::LibraryRunsReady
            && r.lease_epoch == 0
            && matches!(
                r.status,
                RunStatus::Interrupted { .. } | RunStatus::Waiting { .. }
            )
        {
            r.ready_at = oris_core::store::wake_at(&r.status).or(Some(r.updated_at));
        }
        if self.fault == Fault::DropsWaitingData
            && let RunStatus::Waiting { until, events } = &mut r.status
        {
            *until = None;
            events.clear();
        }
        r
    }

    fn read_interrupt(&self, mut r: InterruptRecord) -> InterruptRecord {
        if self.fault == Fault::NeverApplied {
            r.applied_seq = None;
        }
        r
    }

    fn read_event(&self, mut e: Event) -> Event {
        match (&mut e.body, self.fault) {
            (EventBody::NodeCompleted { update, .. }, Fault::NormalisesJson) => {
                *update = normalise(update);
            }
            (_, Fault::TruncatesTimes) => e.at = Timestamp(e.at.0 / 1000 * 1000),
            _ => {}
        }
        e
    }
}

#[async_trait]
impl Store for Faulty {
    async fn commit(&self, mut commit: Commit) -> Result<Receipt> {
        commit.thread_id = self.tid(&commit.thread_id);
        if let Some(RunWrite::Create(run)) = &mut commit.run {
            run.thread_id = self.tid(&run.thread_id);
        }
        let edit_only = !commit.events.is_empty()
            && commit
                .events
                .iter()
                .all(|e| matches!(e.body, EventBody::StateUpdated { .. }));
        if self.fault == Fault::RefusesEdits && edit_only && commit.run.is_none() {
            return Err(Error::InvalidCommit {
                thread_id: commit.thread_id,
                detail: "edits refused".into(),
            });
        }
        if self.fault == Fault::FenceIgnored {
            commit.fence = None;
        }
        if self.fault == Fault::FenceOfAnyRun
            && let Some(f) = commit.fence
        {
            let writer = match &commit.run {
                Some(RunWrite::SetStatus { run_id, .. }) => Some(*run_id),
                _ => self
                    .inner
                    .thread(&commit.thread_id)
                    .await?
                    .and_then(|t| t.active_run),
            };
            if writer != Some(f.run_id) {
                // Checks the fence on its own, then commits unfenced.
                let run = self.inner.run(f.run_id).await?;
                if let Some(run) = run {
                    oris_core::store::check_fence(&f, &run, Timestamp::now())?;
                }
                commit.fence = None;
            }
        }
        let attempt = commit.clone();
        match (self.inner.commit(commit).await, self.fault) {
            (Err(Error::Conflict { .. }), Fault::SwallowsConflicts) => Ok(Receipt {
                head: Seq(attempt.expected_head.0 + attempt.events.len() as u64),
            }),
            (Err(Error::Conflict { .. }), Fault::ConflictAsUnavailable) => {
                Err(Error::Unavailable("database is locked".into()))
            }
            (Err(e), Fault::WritesEventsOfFailedCommits) if !attempt.events.is_empty() => {
                let partial = Commit {
                    run: None,
                    snapshot: None,
                    ..attempt
                };
                let _ = self.inner.commit(partial).await;
                Err(e)
            }
            (result, _) => result,
        }
    }

    async fn thread(&self, thread_id: &ThreadId) -> Result<Option<ThreadRecord>> {
        self.inner.thread(&self.tid(thread_id)).await
    }

    async fn run(&self, run_id: RunId) -> Result<Option<RunRecord>> {
        Ok(self.inner.run(run_id).await?.map(|r| self.read_run(r)))
    }

    async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let mut filter = filter.clone();
        filter.thread_id = filter.thread_id.map(|t| self.tid(&t));
        match self.fault {
            Fault::FilterMissesSuspended => filter
                .statuses
                .retain(|k| !matches!(k, StatusKind::Interrupted | StatusKind::Waiting)),
            Fault::RunsIgnoreCursor => filter.after = None,
            Fault::MetadataFirstPairOnly => filter.metadata.truncate(1),
            Fault::CreatedToInclusive => {
                filter.created_to = filter.created_to.map(|t| Timestamp(t.0 + 1));
            }
            Fault::RunsNewestFirst => {
                let mut all = self.inner.runs(&filter).await?;
                all.reverse();
                return Ok(all);
            }
            _ => {}
        }
        let runs = self.inner.runs(&filter).await?;
        Ok(runs.into_iter().map(|r| self.read_run(r)).collect())
    }

    async fn events(&self, thread_id: &ThreadId, after: Seq, limit: usize) -> Result<Vec<Event>> {
        let after = match self.fault {
            Fault::PagingOffByOne => Seq(after.0.saturating_sub(1)),
            Fault::SignedSeqCast => Seq((after.0 as i64).max(0) as u64),
            _ => after,
        };
        let events = self
            .inner
            .events(&self.tid(thread_id), after, limit)
            .await?;
        Ok(events.into_iter().map(|e| self.read_event(e)).collect())
    }

    async fn snapshot(&self, thread_id: &ThreadId, at_or_before: Seq) -> Result<Option<Snapshot>> {
        let bound = match self.fault {
            Fault::SnapshotIgnoresBound => Seq(u64::MAX),
            _ => at_or_before,
        };
        self.inner.snapshot(&self.tid(thread_id), bound).await
    }

    async fn delete_snapshots(&self, thread_id: &ThreadId) -> Result<u64> {
        let n = self.inner.delete_snapshots(&self.tid(thread_id)).await?;
        Ok(if self.fault == Fault::DeleteCountsZero {
            0
        } else {
            n
        })
    }

    async fn interrupt(&self, id: InterruptId) -> Result<Option<InterruptRecord>> {
        Ok(self
            .inner
            .interrupt(id)
            .await?
            .map(|r| self.read_interrupt(r)))
    }

    async fn interrupts(&self, thread_id: &ThreadId) -> Result<Vec<InterruptRecord>> {
        let mut all: Vec<InterruptRecord> = self
            .inner
            .interrupts(&self.tid(thread_id))
            .await?
            .into_iter()
            .map(|r| self.read_interrupt(r))
            .collect();
        if self.fault == Fault::InterruptsById {
            all.sort_by_key(|r| r.interrupt_id);
        }
        Ok(all)
    }

    async fn answer_interrupt(
        &self,
        id: InterruptId,
        value: Payload,
        at: Timestamp,
    ) -> Result<(Answer, InterruptRecord)> {
        let stored = self.inner.interrupt(id).await?;
        if self.fault == Fault::AnswerCheckThenSet {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let result = self.inner.answer_interrupt(id, value.clone(), at).await;
        let unanswered = stored.as_ref().is_some_and(|r| r.answer.is_none());
        let pretend = |r: &InterruptRecord| {
            let mut r = r.clone();
            r.answer = Some((value.clone(), at));
            Ok((Answer::Recorded, r))
        };
        match (result, self.fault, stored) {
            (Ok((Answer::AlreadyAnswered, _)), Fault::AnswerCheckThenSet, Some(r))
            | (Err(Error::ResumeConflict { .. }), Fault::AnswerCheckThenSet, Some(r))
                if unanswered =>
            {
                pretend(&r)
            }
            (Err(Error::ResumeConflict { .. }), Fault::AnswerOverwrites, Some(r)) => pretend(&r),
            (Err(Error::InterruptNotPending { .. }), Fault::AnswersEndedRuns, Some(r)) => {
                pretend(&r)
            }
            (Ok((Answer::AlreadyAnswered, r)), Fault::AnswerComparesBytes, _)
                if r.answer.as_ref().is_some_and(|(v, _)| v != &value) =>
            {
                Err(Error::ResumeConflict { interrupt_id: id })
            }
            (result, _, _) => result,
        }
    }

    async fn deliver(
        &self,
        thread_id: &ThreadId,
        name: &str,
        payload: Payload,
        key: Option<String>,
        at: Timestamp,
    ) -> Result<(Delivery, bool)> {
        let t = self.tid(thread_id);
        let result = self
            .inner
            .deliver(&t, name, payload.clone(), key.clone(), at)
            .await;
        match (result, self.fault) {
            (Ok((_, false)), Fault::RedeliveryRecorded)
            | (Err(Error::IdempotencyConflict { .. }), Fault::KeyConflictIgnored) => {
                let (d, _) = self.inner.deliver(&t, name, payload, None, at).await?;
                Ok((Delivery { key, ..d }, true))
            }
            (result, _) => result,
        }
    }

    async fn due_runs(&self, now: Timestamp, limit: usize) -> Result<Vec<RunRecord>> {
        self.inner.due_runs(now, limit).await
    }

    async fn delete_thread(&self, thread_id: &ThreadId) -> Result<()> {
        self.inner.delete_thread(&self.tid(thread_id)).await
    }

    async fn prune(&self, thread_id: &ThreadId, base: Event) -> Result<u64> {
        self.inner.prune(&self.tid(thread_id), base).await
    }

    async fn deliveries(&self, thread_id: &ThreadId, pending_only: bool) -> Result<Vec<Delivery>> {
        let t = self.tid(thread_id);
        let pending_only = pending_only && self.fault != Fault::PendingIgnored;
        let mut all = self.inner.deliveries(&t, pending_only).await?;
        if self.fault == Fault::DeliveriesNewestFirst {
            all.reverse();
        }
        Ok(all)
    }

    async fn list_interrupts(&self, filter: &InterruptFilter) -> Result<Vec<InterruptRecord>> {
        let mut filter = filter.clone();
        match self.fault {
            Fault::OpenIgnored => filter.open_only = false,
            Fault::InterruptGraphIgnored => filter.graph = None,
            _ => {}
        }
        self.inner.list_interrupts(&filter).await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<RunRecord>> {
        let mut request = request.clone();
        if self.fault == Fault::ClaimIgnoresGraphs {
            request.graphs.clear();
        }
        let mut got = self.inner.claim(&request).await?;
        match self.fault {
            Fault::ClaimsReversed => got.reverse(),
            Fault::ClaimsTwice => {
                let mut last = self.last_claim.lock().expect("last claim");
                let again = std::mem::replace(&mut *last, got.clone());
                got.extend(again);
                got.truncate(request.limit);
            }
            _ => {}
        }
        Ok(got.into_iter().map(|r| self.read_run(r)).collect())
    }

    async fn renew_lease(
        &self,
        fence: &Fence,
        worker_id: &str,
        now: Timestamp,
        ttl: std::time::Duration,
    ) -> Result<RunRecord> {
        let stored = self.inner.run(fence.run_id).await?;
        let lease = stored.and_then(|r| r.lease);
        let (worker, at) = match (self.fault, &lease) {
            (Fault::RenewIgnoresWorker, Some(l)) => (l.worker_id.clone(), now),
            (Fault::RenewRevivesExpired, Some(l)) if l.expires_at <= now => {
                (worker_id.to_owned(), Timestamp(l.expires_at.0 - 1))
            }
            _ => (worker_id.to_owned(), now),
        };
        self.inner.renew_lease(fence, &worker, at, ttl).await
    }

    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<RunRecord> {
        let mut fence = *fence;
        if self.fault == Fault::ReleaseAnyEpoch
            && let Some(r) = self.inner.run(fence.run_id).await?
            && r.lease.is_some()
        {
            fence.epoch = r.lease_epoch;
        }
        self.inner.release_lease(&fence, now).await
    }

    async fn reap_leases(&self, now: Timestamp, limit: usize) -> Result<Vec<RunRecord>> {
        let mut got = match self.fault {
            Fault::ReapIgnoresExpiry => {
                self.inner
                    .reap_leases(Timestamp(now.0 + 24 * 3_600_000), limit)
                    .await?
            }
            Fault::ReapIgnoresLimit => self.inner.reap_leases(now, usize::MAX).await?,
            Fault::ReapOnlyReports => {
                let mut due: Vec<RunRecord> = self
                    .inner
                    .runs(&RunFilter::unfinished())
                    .await?
                    .iter()
                    .filter_map(|r| oris_core::store::plan_reap(r, now))
                    .collect();
                due.sort_by_key(|r| r.ready_at);
                due.truncate(limit);
                due
            }
            _ => self.inner.reap_leases(now, limit).await?,
        };
        match self.fault {
            Fault::ReapReportsNextEpoch => got.iter_mut().for_each(|r| r.lease_epoch += 1),
            Fault::ReapLatestFirst => got.reverse(),
            _ => {}
        }
        Ok(got)
    }

    async fn lease_counts(&self, now: Timestamp) -> Result<Vec<(String, u64)>> {
        let at = match self.fault {
            Fault::CountsExpiredLeases => Timestamp(i64::MIN),
            Fault::CountsLeasesExpiringNow => Timestamp(now.0 - 1),
            _ => now,
        };
        let counts = self.inner.lease_counts(at).await?;
        if self.fault == Fault::CountsIgnoreGraphs && !counts.is_empty() {
            let total = counts.iter().map(|(_, n)| n).sum();
            return Ok(vec![(counts[0].0.clone(), total)]);
        }
        Ok(counts)
    }

    async fn register_worker(&self, worker: &WorkerRecord) -> Result<()> {
        let mut worker = worker.clone();
        if self.fault == Fault::StopSticks
            && worker.stopped_at.is_none()
            && let Some(old) = self
                .inner
                .workers()
                .await?
                .into_iter()
                .find(|w| w.worker_id == worker.worker_id)
        {
            worker.stopped_at = old.stopped_at;
        }
        if self.fault == Fault::RegisterResetsRegisteredAt {
            self.registered
                .lock()
                .expect("registered")
                .insert(worker.worker_id.clone(), worker.registered_at);
        }
        self.inner.register_worker(&worker).await
    }

    async fn touch_worker(&self, worker_id: &str, now: Timestamp) -> Result<bool> {
        match self.fault {
            Fault::TouchAlwaysTrue => {
                self.inner.touch_worker(worker_id, now).await?;
                Ok(true)
            }
            Fault::TouchNotStored => Ok(self
                .inner
                .workers()
                .await?
                .iter()
                .any(|w| w.worker_id == worker_id)),
            _ => self.inner.touch_worker(worker_id, now).await,
        }
    }

    async fn workers(&self) -> Result<Vec<WorkerRecord>> {
        let mut all = self.inner.workers().await?;
        match self.fault {
            Fault::RegisterResetsRegisteredAt => {
                let latest = self.registered.lock().expect("registered");
                for w in &mut all {
                    if let Some(at) = latest.get(&w.worker_id) {
                        w.registered_at = *at;
                    }
                }
            }
            Fault::WorkersUnordered => all.reverse(),
            _ => {}
        }
        Ok(all)
    }

    async fn push_pending(&self, run: &PendingRun) -> Result<u64> {
        {
            let mut threads = self.pushed_threads.lock().expect("threads");
            if !threads.contains(&run.thread_id) {
                threads.push(run.thread_id.clone());
            }
        }
        if self.fault == Fault::PendingDuplicateAccepted
            && let Err(Error::AlreadyExists { .. }) = self.inner.push_pending(run).await
        {
            let fresh = PendingRun {
                run_id: RunId::generate(),
                ..run.clone()
            };
            return self.inner.push_pending(&fresh).await;
        }
        if self.fault == Fault::PendingDuplicateAccepted {
            // The first push above stored it.
            let q = self.inner.pending_runs(&run.thread_id).await?;
            return Ok(q.last().map_or(1, |p| p.position));
        }
        let position = self.inner.push_pending(run).await?;
        if self.fault == Fault::PendingPositionsNeverReset {
            let mut pushed = self.pushed.lock().expect("pushed");
            let n = pushed.entry(run.thread_id.clone()).or_default();
            *n += 1;
            return Ok(*n);
        }
        Ok(position)
    }

    async fn pending_runs(&self, thread_id: &ThreadId) -> Result<Vec<PendingRun>> {
        let mut q = self.inner.pending_runs(thread_id).await?;
        if self.fault == Fault::PendingNewestFirst {
            q.reverse();
        }
        Ok(q)
    }

    async fn pending_threads(&self, limit: usize) -> Result<Vec<ThreadId>> {
        match self.fault {
            Fault::PendingThreadsIgnoreLimit => self.inner.pending_threads(usize::MAX).await,
            Fault::PendingThreadsIgnoreActive => {
                // Every thread with a pending run, whatever its run: those the inner store
                // lists, then the busy ones it leaves out.
                let mut all = self.inner.pending_threads(usize::MAX).await?;
                let known: Vec<ThreadId> = self.pushed_threads.lock().expect("threads").clone();
                for t in known {
                    if !all.contains(&t) && !self.inner.pending_runs(&t).await?.is_empty() {
                        all.push(t);
                    }
                }
                all.truncate(limit);
                Ok(all)
            }
            _ => self.inner.pending_threads(limit).await,
        }
    }

    async fn remove_pending(&self, run_id: RunId) -> Result<bool> {
        let removed = self.inner.remove_pending(run_id).await?;
        Ok(removed || self.fault == Fault::RemovePendingAlwaysTrue)
    }

    async fn reserve_idempotency(
        &self,
        candidate: &IdempotencyRecord,
        now: Timestamp,
    ) -> Result<Reservation> {
        let got = self.inner.reserve_idempotency(candidate, now).await?;
        Ok(match (got, self.fault) {
            // Lost the race, but had seen no record: "reserves" too.
            (Reservation::InFlight, Fault::ReserveCheckThenSet) if candidate.created_at == now => {
                Reservation::Reserved
            }
            (Reservation::Mismatch, Fault::MismatchAsInFlight) => Reservation::InFlight,
            (got, _) => got,
        })
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
        let n = self.inner.purge_idempotency(now).await?;
        Ok(if self.fault == Fault::PurgeCountsZero {
            0
        } else {
            n
        })
    }

    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        match (self.inner.create_api_key(key).await, self.fault) {
            (Err(Error::AlreadyExists { .. }), Fault::DuplicateKeyAccepted) => Ok(()),
            (result, _) => result,
        }
    }

    async fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>> {
        self.inner.api_key(key_id).await
    }

    async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        let mut keys = self.inner.api_keys().await?;
        if self.fault == Fault::KeysById {
            keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        }
        Ok(keys)
    }

    async fn revoke_api_key(&self, key_id: &str, at: Timestamp) -> Result<bool> {
        let revoked = self.inner.revoke_api_key(key_id, at).await?;
        Ok(revoked || self.fault == Fault::RevokeAlwaysTrue)
    }

    async fn append_audit(&self, record: &AuditRecord) -> Result<u64> {
        self.inner.append_audit(record).await
    }

    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let mut filter = filter.clone();
        if self.fault == Fault::AuditIgnoresCursor {
            filter.after = None;
        }
        self.inner.audit(&filter).await
    }
}

/// Runs `case` against a store with `fault` on its own thread and asserts that it panics.
fn assert_detects<C, F>(fault: Fault, name: &str, case: C)
where
    C: FnOnce(Arc<dyn Store>) -> F + Send + 'static,
    F: std::future::Future<Output = ()>,
{
    silence_expected_panics();
    let label = format!("{name} against {fault:?}");
    let outcome = std::thread::Builder::new()
        .name(format!("expected-to-fail {label}"))
        .spawn(move || {
            oris_testkit::__private::run_case("mutant", || async move { Faulty::new(fault) }, case)
        })
        .expect("spawn")
        .join();
    assert!(outcome.is_err(), "{label}: the case passed a broken store");
}

/// Keeps the expected panics of the mutant runs out of the test output.
fn silence_expected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().map(str::to_owned);
            // The case's own tokio workers panic too (in spawned tasks).
            let expected = name.as_deref().is_some_and(|n| {
                n.starts_with("expected-to-fail") || n.starts_with("tokio-runtime-worker")
            });
            if !expected {
                default(info);
            }
        }));
    });
}

macro_rules! detects {
    ($($test:ident: $fault:ident => $case:ident;)*) => {
        $(
            #[test]
            fn $test() {
                assert_detects(Fault::$fault, stringify!($case), oris_testkit::conformance::$case);
            }
        )*
    };
}

detects! {
    swallowed_conflict: SwallowsConflicts => wrong_expected_head_conflicts;
    swallowed_conflict_in_race: SwallowsConflicts => concurrent_appends_exactly_one_wins;
    swallowed_conflict_on_creation: SwallowsConflicts => concurrent_creations_exactly_one_wins;
    conflict_as_unavailable: ConflictAsUnavailable => concurrent_appends_exactly_one_wins;
    partial_writes: WritesEventsOfFailedCommits => failed_commit_is_all_or_nothing;
    partial_writes_bad_snapshot: WritesEventsOfFailedCommits => snapshot_outside_log_is_invalid;
    partial_writes_bad_status: WritesEventsOfFailedCommits => disallowed_transitions_are_rejected;
    normalised_json: NormalisesJson => json_is_stored_verbatim;
    truncated_times: TruncatesTimes => every_event_body_round_trips;
    paging_off_by_one: PagingOffByOne => events_paging_returns_exact_slices;
    signed_seq_cast: SignedSeqCast => extreme_read_bounds;
    snapshot_bound_ignored: SnapshotIgnoresBound => snapshot_respects_bound;
    snapshot_bound_ignored_replace: SnapshotIgnoresBound => newer_snapshot_replaces_older;
    runs_cursor_ignored: RunsIgnoreCursor => runs_paginate_in_creation_order;
    runs_newest_first: RunsNewestFirst => runs_filter_by_thread_graph_status;
    delete_count_zero: DeleteCountsZero => delete_snapshots_counts;
    case_insensitive_ids: CaseInsensitiveThreads => thread_id_edge_cases;
    truncated_times_new_events: TruncatesTimes => workflow_event_bodies_round_trip;
    waiting_data_dropped: DropsWaitingData => suspended_statuses_round_trip;
    unfinished_misses_suspended: FilterMissesSuspended => runs_unfinished_lists_suspended_runs;
    interrupts_by_id: InterruptsById => raised_interrupts_are_recorded;
    answer_check_then_set: AnswerCheckThenSet => concurrent_answers_exactly_one_wins;
    answer_overwrites: AnswerOverwrites => answer_interrupt_records_once;
    answer_overwrites_in_race: AnswerOverwrites => concurrent_answers_exactly_one_wins;
    answer_compares_bytes: AnswerComparesBytes => answer_interrupt_records_once;
    answers_ended_runs: AnswersEndedRuns => interrupt_of_ended_run_is_not_pending;
    never_applied: NeverApplied => resumed_interrupts_are_marked_applied;
    deliveries_newest_first: DeliveriesNewestFirst => deliveries_are_buffered_in_order;
    pending_ignored: PendingIgnored => deliveries_are_buffered_in_order;
    redelivery_recorded: RedeliveryRecorded => delivery_keys_are_idempotent;
    redelivery_recorded_in_race: RedeliveryRecorded => concurrent_deliveries_with_one_key_record_one;
    key_conflict_ignored: KeyConflictIgnored => delivery_keys_are_idempotent;
    edits_refused: RefusesEdits => idle_thread_accepts_edits_by_last_run;
    claims_reversed: ClaimsReversed => claims_follow_priority_then_readiness;
    claims_twice: ClaimsTwice => queued_runs_are_claimed_once_per_lease;
    claims_twice_in_race: ClaimsTwice => concurrent_claimers_take_each_run_once;
    claim_ignores_graphs: ClaimIgnoresGraphs => claims_honour_the_graph_filter;
    fence_ignored: FenceIgnored => fenced_commits_need_the_current_lease;
    fence_ignored_on_status: FenceIgnored => status_changes_end_or_keep_the_lease;
    fence_of_any_run: FenceOfAnyRun => fenced_commit_of_another_run_is_lost;
    renew_ignores_worker: RenewIgnoresWorker => renewals_extend_only_a_live_lease;
    renew_revives_expired: RenewRevivesExpired => renewals_extend_only_a_live_lease;
    release_any_epoch: ReleaseAnyEpoch => releases_hand_runs_back;
    answers_do_not_wake: SuspendedReadyOnlyByStatus => answers_make_interrupted_runs_ready;
    deliveries_do_not_wake: SuspendedReadyOnlyByStatus => deliveries_make_waiting_runs_ready;
    library_runs_ready: LibraryRunsReady => library_runs_are_never_claimable;
    reserve_check_then_set: ReserveCheckThenSet => concurrent_reservations_reserve_once;
    mismatch_as_in_flight: MismatchAsInFlight => idempotency_keys_reserve_replay_and_expire;
    purge_counts_zero: PurgeCountsZero => purge_deletes_expired_idempotency_records;
    duplicate_key_accepted: DuplicateKeyAccepted => api_keys_are_stored_listed_and_revoked;
    revoke_always_true: RevokeAlwaysTrue => api_keys_are_stored_listed_and_revoked;
    keys_by_id: KeysById => api_keys_are_stored_listed_and_revoked;
    audit_cursor_ignored: AuditIgnoresCursor => audit_log_appends_and_filters;
    metadata_first_pair_only: MetadataFirstPairOnly => runs_filter_by_time_and_metadata;
    created_to_inclusive: CreatedToInclusive => runs_filter_by_time_and_metadata;
    open_ignored: OpenIgnored => interrupts_are_listed_across_threads;
    interrupt_graph_ignored: InterruptGraphIgnored => interrupts_are_listed_across_threads;
    reap_ignores_expiry: ReapIgnoresExpiry => reaping_clears_only_expired_leases;
    reap_only_reports: ReapOnlyReports => reaping_clears_only_expired_leases;
    reap_only_reports_in_counts: ReapOnlyReports => lease_counts_count_live_leases_per_graph;
    reap_reports_next_epoch: ReapReportsNextEpoch => reaping_clears_only_expired_leases;
    reap_ignores_limit: ReapIgnoresLimit => reaping_takes_at_most_limit;
    reap_latest_first: ReapLatestFirst => reaping_takes_at_most_limit;
    counts_expired_leases: CountsExpiredLeases => lease_counts_count_live_leases_per_graph;
    counts_leases_expiring_now: CountsLeasesExpiringNow => lease_counts_count_live_leases_per_graph;
    counts_ignore_graphs: CountsIgnoreGraphs => lease_counts_count_live_leases_per_graph;
    register_resets_registered_at: RegisterResetsRegisteredAt => workers_register_touch_and_list;
    stop_sticks: StopSticks => workers_register_touch_and_list;
    touch_always_true: TouchAlwaysTrue => workers_register_touch_and_list;
    touch_not_stored: TouchNotStored => workers_register_touch_and_list;
    workers_unordered: WorkersUnordered => workers_register_touch_and_list;
    pending_newest_first: PendingNewestFirst => pending_runs_queue_per_thread;
    pending_duplicate_accepted: PendingDuplicateAccepted => pending_runs_queue_per_thread;
    remove_pending_always_true: RemovePendingAlwaysTrue => pending_runs_queue_per_thread;
    pending_positions_never_reset: PendingPositionsNeverReset => pending_runs_queue_per_thread;
    pending_threads_ignore_limit: PendingThreadsIgnoreLimit => pending_threads_are_free_threads_with_pending_runs;
    pending_threads_ignore_active: PendingThreadsIgnoreActive => pending_threads_are_free_threads_with_pending_runs;
}

/// With no fault planted, the wrapper passes the cases above: their mutants fail because of
/// the fault, not because of the wrapper.
macro_rules! sound {
    ($($case:ident),* $(,)?) => {
        mod sound {
            use super::*;
            $(
                #[test]
                fn $case() {
                    oris_testkit::__private::run_case(
                        stringify!($case),
                        || async { Faulty::new(Fault::Nothing) },
                        oris_testkit::conformance::$case,
                    );
                }
            )*
        }
    };
}

sound! {
    workflow_event_bodies_round_trip,
    suspended_statuses_round_trip,
    runs_unfinished_lists_suspended_runs,
    raised_interrupts_are_recorded,
    concurrent_answers_exactly_one_wins,
    answer_interrupt_records_once,
    interrupt_of_ended_run_is_not_pending,
    resumed_interrupts_are_marked_applied,
    deliveries_are_buffered_in_order,
    delivery_keys_are_idempotent,
    concurrent_deliveries_with_one_key_record_one,
    idle_thread_accepts_edits_by_last_run,
    queued_runs_are_claimed_once_per_lease,
    claims_follow_priority_then_readiness,
    claims_honour_the_graph_filter,
    concurrent_claimers_take_each_run_once,
    fenced_commits_need_the_current_lease,
    fenced_commit_of_another_run_is_lost,
    renewals_extend_only_a_live_lease,
    releases_hand_runs_back,
    status_changes_end_or_keep_the_lease,
    answers_make_interrupted_runs_ready,
    deliveries_make_waiting_runs_ready,
    idempotency_keys_reserve_replay_and_expire,
    purge_deletes_expired_idempotency_records,
    concurrent_reservations_reserve_once,
    api_keys_are_stored_listed_and_revoked,
    audit_log_appends_and_filters,
    runs_filter_by_time_and_metadata,
    interrupts_are_listed_across_threads,
    reaping_clears_only_expired_leases,
    reaping_takes_at_most_limit,
    lease_counts_count_live_leases_per_graph,
    workers_register_touch_and_list,
    pending_runs_queue_per_thread,
    pending_threads_are_free_threads_with_pending_runs,
}
