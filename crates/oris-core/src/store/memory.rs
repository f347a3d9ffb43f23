//! The in-memory store: for tests, benchmarks of engine overhead, and ephemeral graphs.
//! Nothing survives the process.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::control::check_fence_writer;
use super::{
    Answer, ApiKeyRecord, AuditFilter, AuditRecord, ClaimRequest, Commit, Delivery, Error, Fence,
    IdempotencyRecord, InterruptFilter, InterruptRecord, PendingRun, Receipt, Reservation, Result,
    RunFilter, RunRecord, RunWrite, Snapshot, Store, StoredResponse, ThreadRecord, WorkerRecord,
    check_prune, check_redelivery, consumed_deliveries, interrupt_effects, plan_answer, plan_claim,
    plan_commit, plan_reap, plan_release, plan_renew, plan_reservation, ready_on_answer,
    ready_on_delivery,
};
use crate::event::{Event, EventBody, Payload};
use crate::id::{DeliveryId, InterruptId, RunId, Seq, ThreadId, Timestamp};
use crate::protocol::ThreadImage;
use crate::status::RunStatus;

#[derive(Debug, Default)]
struct Thread {
    record: Option<ThreadRecord>,
    events: Vec<Event>,
    snapshot: Option<Snapshot>,
}

/// A claimable run's place in claim order: priority (highest first), `ready_at`, run id.
type ReadyKey = (Reverse<i32>, Timestamp, RunId);

fn ready_key(run: &RunRecord) -> Option<ReadyKey> {
    match run.ready_at {
        Some(t) if !run.status.is_terminal() => Some((Reverse(run.priority), t, run.run_id)),
        _ => None,
    }
}

/// The first ready key of priority `p` at or after `t`.
fn key_from(p: Reverse<i32>, t: Timestamp) -> ReadyKey {
    (p, t, RunId::from_uuid(uuid::Uuid::nil()))
}

/// The last ready key of priority `p` at or before `t`.
fn key_to(p: Reverse<i32>, t: Timestamp) -> ReadyKey {
    (p, t, RunId::from_uuid(uuid::Uuid::from_u128(u128::MAX)))
}

#[derive(Debug, Default)]
struct Inner {
    threads: HashMap<ThreadId, Thread>,
    /// Written only through [`Inner::put_run`] and [`Inner::remove_run`], which keep
    /// `ready` and `leases` in step.
    runs: BTreeMap<RunId, RunRecord>,
    /// The runs with a `ready_at`, in claim order: the index claims walk.
    ready: BTreeSet<ReadyKey>,
    /// The leased runs by lease expiry: the index the reaper and lease counts walk.
    leases: BTreeSet<(Timestamp, RunId)>,
    /// Remote workers by id.
    workers: BTreeMap<String, WorkerRecord>,
    /// By id, i.e. creation order.
    interrupts: BTreeMap<InterruptId, InterruptRecord>,
    /// Per thread, in arrival order.
    deliveries: HashMap<ThreadId, Vec<Delivery>>,
    /// By (scope, key).
    idempotency: HashMap<(String, String), IdempotencyRecord>,
    api_keys: HashMap<String, ApiKeyRecord>,
    /// In id order; the id of entry `i` is `i + 1`.
    audit: Vec<AuditRecord>,
    /// Pending runs per thread, by position.
    pending: BTreeMap<ThreadId, BTreeMap<u64, PendingRun>>,
}

impl Inner {
    /// Stores a run record, keeping the claim index in step.
    fn put_run(&mut self, run: RunRecord) {
        self.remove_run(run.run_id);
        if let Some(key) = ready_key(&run) {
            self.ready.insert(key);
        }
        if let Some(l) = &run.lease {
            self.leases.insert((l.expires_at, run.run_id));
        }
        self.runs.insert(run.run_id, run);
    }

    /// Removes a run record, keeping the indexes in step.
    fn remove_run(&mut self, run_id: RunId) {
        let Some(run) = self.runs.remove(&run_id) else {
            return;
        };
        if let Some(key) = ready_key(&run) {
            self.ready.remove(&key);
        }
        if let Some(l) = &run.lease {
            self.leases.remove(&(l.expires_at, run_id));
        }
    }

    /// Drops everything held for a thread: its record, log, snapshot, runs, interrupts and
    /// deliveries. Returns whether the thread was there.
    fn drop_thread(&mut self, thread_id: &ThreadId) -> bool {
        let existed = self.threads.remove(thread_id).is_some();
        let gone: Vec<RunId> = self
            .runs
            .values()
            .filter(|r| r.thread_id == *thread_id)
            .map(|r| r.run_id)
            .collect();
        for run_id in gone {
            self.remove_run(run_id);
        }
        self.interrupts.retain(|_, r| r.thread_id != *thread_id);
        self.deliveries.remove(thread_id);
        self.pending.remove(thread_id);
        existed
    }

    /// The interrupts `run` raised, in id order.
    fn interrupts_of_run(&self, run_id: RunId) -> Vec<InterruptRecord> {
        self.interrupts
            .values()
            .filter(|i| i.run_id == run_id)
            .cloned()
            .collect()
    }

    /// Sets `ready_at` of a run that just entered a suspended status, so that what raced the
    /// suspension is not lost: an `interrupted` run whose open interrupts are all answered
    /// is ready since its latest answer ([`ready_on_answer`]); a `waiting` run is ready at
    /// the earliest of its `until` and the arrival of a pending delivery it waits for
    /// ([`ready_on_delivery`]).
    fn settle_suspension(&self, run: &mut RunRecord) {
        match &run.status {
            RunStatus::Interrupted { .. } => {
                let interrupts = self.interrupts_of_run(run.run_id);
                let last_answer = interrupts
                    .iter()
                    .filter(|i| i.applied_seq.is_none())
                    .filter_map(|i| i.answer.as_ref().map(|(_, at)| *at))
                    .max();
                if let Some(at) = last_answer
                    && let Some(t) = ready_on_answer(run, &interrupts, at)
                {
                    run.ready_at = Some(t);
                }
            }
            RunStatus::Waiting { .. } => {
                for d in self.deliveries.get(&run.thread_id).into_iter().flatten() {
                    if d.consumed_seq.is_none()
                        && let Some(t) = ready_on_delivery(run, &d.name, d.sent_at)
                    {
                        run.ready_at = Some(t);
                    }
                }
            }
            _ => {}
        }
    }
}

/// A [`Store`] in process memory. Commits are linearized by one mutex.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied commit: commits are
        // validated first and applied without fallible steps.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces everything the store holds for `image.thread.thread_id` — thread record,
    /// log, snapshot, runs, interrupts and deliveries — with `image`: the local copy of a
    /// thread a remote worker executes a claimed run on (see [`ThreadImage`]).
    ///
    /// The log may start after seq 1 (the events before the snapshot are absent, as in a
    /// pruned log); reads, folds and commits continue from it as on any thread. The image's
    /// run records are stored as they are (a claimed run keeps its lease and epoch, so
    /// commits fenced by that lease succeed).
    ///
    /// The image must hold the active run's opening events (its `run_started`): an engine
    /// folding the thread from the snapshot reads the run's settings there. So when the
    /// snapshot lies inside the active run, the log must start at the run's first seq, not
    /// at the snapshot's.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the events are not contiguous; [`Error::InvalidCommit`] when
    /// the log does not end at the thread's head, the snapshot is outside the log, the log
    /// starts after seq 1 with neither a snapshot nor a `history_pruned` base, the log
    /// starts after the active run's first event, the active run or the snapshot's run is
    /// missing from the runs, a run, interrupt or delivery belongs to another thread (or
    /// its id is held by one here), or an id appears twice. Nothing changes then.
    pub fn load_image(&self, image: ThreadImage) -> Result<()> {
        let mut inner = self.lock();
        check_image(&inner, &image)?;
        let ThreadImage {
            thread,
            runs,
            snapshot,
            events,
            interrupts,
            deliveries,
        } = image;
        let tid = thread.thread_id.clone();
        inner.drop_thread(&tid);
        for run in runs {
            inner.put_run(run);
        }
        for i in interrupts {
            inner.interrupts.insert(i.interrupt_id, i);
        }
        if !deliveries.is_empty() {
            inner.deliveries.insert(tid.clone(), deliveries);
        }
        inner.threads.insert(
            tid,
            Thread {
                record: Some(thread),
                events,
                snapshot,
            },
        );
        Ok(())
    }

    /// Drops everything the store holds for a thread (record, log, snapshot, runs,
    /// interrupts, deliveries), whatever its runs' statuses — unlike
    /// [`Store::delete_thread`], which refuses a thread with an unfinished run. Returns
    /// whether the thread was there. A worker forgets its local copy of a thread with it
    /// once the attempt is over.
    pub fn forget_thread(&self, thread_id: &ThreadId) -> bool {
        self.lock().drop_thread(thread_id)
    }

    /// Approximate bytes held for a thread: the JSON of its events and snapshot.
    pub fn approx_bytes(&self, thread_id: &ThreadId) -> usize {
        let inner = self.lock();
        let Some(t) = inner.threads.get(thread_id) else {
            return 0;
        };
        let events: usize = t
            .events
            .iter()
            .map(|e| {
                crate::event::EventRow::from_event(e)
                    .map(|r| {
                        24 + r.data.map_or(0, |d| d.len())
                            + r.extra.map_or(0, |x| x.len())
                            + r.node.map_or(0, |n| n.len())
                    })
                    .unwrap_or(0)
            })
            .sum();
        events + t.snapshot.as_ref().map_or(0, |s| s.state.json().len())
    }
}

/// Checks a [`ThreadImage`] before [`MemoryStore::load_image`] stores it.
fn check_image(inner: &Inner, image: &ThreadImage) -> Result<()> {
    let thread = &image.thread;
    let tid = &thread.thread_id;
    let invalid = |detail: String| Error::InvalidCommit {
        thread_id: tid.clone(),
        detail: format!("thread image: {detail}"),
    };
    let first = image.events.first().map_or(thread.head.next(), |e| e.seq);
    if first == Seq::ZERO {
        return Err(invalid("the log starts at seq 0".into()));
    }
    for (i, e) in image.events.iter().enumerate() {
        let want = Seq(first.0 + i as u64);
        if e.seq != want {
            return Err(Error::Corrupt {
                thread_id: tid.clone(),
                seq: Some(e.seq),
                detail: format!(
                    "thread image: events are not contiguous: event {i} has seq {}, \
                     expected {want}",
                    e.seq
                ),
            });
        }
    }
    let last = Seq(first.0 + image.events.len() as u64 - 1);
    if last != thread.head {
        return Err(invalid(format!(
            "the log ends at seq {last}, but the thread's head is {}",
            thread.head
        )));
    }
    match &image.snapshot {
        Some(s) if s.at_seq == Seq::ZERO || s.at_seq.next() < first || s.at_seq > last => {
            return Err(invalid(format!(
                "the snapshot at seq {} is outside the log ({first}..={last})",
                s.at_seq
            )));
        }
        // A fold from the snapshot reads the record of the run that wrote it.
        Some(s) if !image.runs.iter().any(|r| r.run_id == s.run_id) => {
            return Err(invalid(format!(
                "the snapshot's run {} is not among the runs",
                s.run_id
            )));
        }
        Some(_) => {}
        None if first > Seq(1)
            && !matches!(
                image.events.first().map(|e| &e.body),
                Some(EventBody::HistoryPruned { .. })
            ) =>
        {
            return Err(invalid(format!(
                "the log starts at seq {first} without a snapshot or a history_pruned base"
            )));
        }
        None => {}
    }
    let mut run_ids = BTreeSet::new();
    for r in &image.runs {
        if r.thread_id != *tid {
            return Err(invalid(format!(
                "run {} belongs to thread `{}`",
                r.run_id, r.thread_id
            )));
        }
        if !run_ids.insert(r.run_id) {
            return Err(invalid(format!("run {} appears twice", r.run_id)));
        }
        if let Some(other) = inner.runs.get(&r.run_id)
            && other.thread_id != *tid
        {
            return Err(invalid(format!(
                "run {} is held here for thread `{}`",
                r.run_id, other.thread_id
            )));
        }
    }
    if let Some(active) = thread.active_run {
        let Some(run) = image.runs.iter().find(|r| r.run_id == active) else {
            return Err(invalid(format!(
                "the thread's active run {active} is not among its runs"
            )));
        };
        // A fold from the snapshot reads the active run's settings from its opening
        // events (`run_started`, after `run_rebased` for a rebased run).
        if run.first_seq < first {
            return Err(invalid(format!(
                "the log starts at seq {first}, after the first event of the active run \
                 {active} (seq {}): the run's opening events must be in the image (send the \
                 log from the earlier of the snapshot's seq and the run's first seq)",
                run.first_seq
            )));
        }
    }
    let mut interrupt_ids = BTreeSet::new();
    for i in &image.interrupts {
        if i.thread_id != *tid {
            return Err(invalid(format!(
                "interrupt {} belongs to thread `{}`",
                i.interrupt_id, i.thread_id
            )));
        }
        if !interrupt_ids.insert(i.interrupt_id) {
            return Err(invalid(format!(
                "interrupt {} appears twice",
                i.interrupt_id
            )));
        }
        if let Some(other) = inner.interrupts.get(&i.interrupt_id)
            && other.thread_id != *tid
        {
            return Err(invalid(format!(
                "interrupt {} is held here for thread `{}`",
                i.interrupt_id, other.thread_id
            )));
        }
    }
    let mut delivery_ids = BTreeSet::new();
    for d in &image.deliveries {
        if d.thread_id != *tid {
            return Err(invalid(format!(
                "delivery {} belongs to thread `{}`",
                d.delivery_id, d.thread_id
            )));
        }
        if !delivery_ids.insert(d.delivery_id) {
            return Err(invalid(format!("delivery {} appears twice", d.delivery_id)));
        }
    }
    Ok(())
}

#[async_trait]
impl Store for MemoryStore {
    async fn commit(&self, commit: Commit) -> Result<Receipt> {
        let mut inner = self.lock();
        let thread = inner
            .threads
            .get(&commit.thread_id)
            .and_then(|t| t.record.as_ref());
        check_fence_writer(&commit, thread)?;
        let named = match (&commit.run, &commit.fence) {
            (Some(RunWrite::SetStatus { run_id, .. }), _) => Some(*run_id),
            (_, Some(f)) => Some(f.run_id),
            _ => None,
        };
        let stored_run = named.and_then(|id| inner.runs.get(&id).cloned());
        if let Some(RunWrite::Create(r)) = &commit.run
            && inner.runs.contains_key(&r.run_id)
        {
            return Err(Error::InvalidCommit {
                thread_id: commit.thread_id.clone(),
                detail: format!("run {} already exists", r.run_id),
            });
        }
        let plan = plan_commit(&commit, thread, stored_run.as_ref(), Timestamp::now())?;
        let effects = interrupt_effects(&commit);
        if let Some(r) = effects
            .raised
            .iter()
            .find(|r| inner.interrupts.contains_key(&r.interrupt_id))
        {
            return Err(Error::InvalidCommit {
                thread_id: commit.thread_id.clone(),
                detail: format!("interrupt {} already exists", r.interrupt_id),
            });
        }
        for r in effects.raised {
            inner.interrupts.insert(r.interrupt_id, r);
        }
        let consumed = consumed_deliveries(&commit);
        if !consumed.is_empty() {
            let list = inner
                .deliveries
                .entry(commit.thread_id.clone())
                .or_default();
            for (id, seq) in consumed {
                if let Some(d) = list.iter_mut().find(|d| d.delivery_id == id) {
                    d.consumed_seq = Some(seq);
                }
            }
        }
        for (id, seq, value) in effects.applied {
            if let Some(r) = inner.interrupts.get_mut(&id) {
                r.applied_seq = Some(seq);
                if r.answer.is_none() {
                    r.answer = Some((value, Timestamp::now()));
                }
            }
        }
        if let Some(mut run) = plan.run {
            if !plan.run_is_new {
                inner.settle_suspension(&mut run);
            }
            inner.put_run(run);
        }
        let head = plan.thread.head;
        let t = inner.threads.entry(commit.thread_id).or_default();
        t.record = Some(plan.thread);
        t.events.extend(commit.events);
        if let Some(s) = commit.snapshot {
            t.snapshot = Some(s);
        }
        Ok(Receipt { head })
    }

    async fn thread(&self, thread_id: &ThreadId) -> Result<Option<ThreadRecord>> {
        Ok(self
            .lock()
            .threads
            .get(thread_id)
            .and_then(|t| t.record.clone()))
    }

    async fn run(&self, run_id: RunId) -> Result<Option<RunRecord>> {
        Ok(self.lock().runs.get(&run_id).cloned())
    }

    async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let inner = self.lock();
        let start = match filter.after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        let limit = if filter.limit == 0 {
            usize::MAX
        } else {
            filter.limit
        };
        Ok(inner
            .runs
            .range((start, std::ops::Bound::Unbounded))
            .map(|(_, r)| r)
            .filter(|r| filter.matches(r))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn due_runs(&self, now: Timestamp, limit: usize) -> Result<Vec<RunRecord>> {
        let mut due: Vec<RunRecord> = self
            .lock()
            .runs
            .values()
            .filter(|r| super::wake_at(&r.status).is_some_and(|t| t <= now))
            .cloned()
            .collect();
        due.sort_by_key(|r| (super::wake_at(&r.status), r.run_id));
        due.truncate(limit);
        Ok(due)
    }

    async fn events(&self, thread_id: &ThreadId, after: Seq, limit: usize) -> Result<Vec<Event>> {
        let inner = self.lock();
        let Some(t) = inner.threads.get(thread_id) else {
            return Ok(Vec::new());
        };
        // Seqs are contiguous from the first retained event (1, or a prune point).
        let first = t.events.first().map_or(1, |e| e.seq.0);
        let from = usize::try_from(after.0.saturating_add(1).saturating_sub(first))
            .unwrap_or(usize::MAX)
            .min(t.events.len());
        Ok(t.events[from..].iter().take(limit).cloned().collect())
    }

    async fn snapshot(&self, thread_id: &ThreadId, at_or_before: Seq) -> Result<Option<Snapshot>> {
        Ok(self
            .lock()
            .threads
            .get(thread_id)
            .and_then(|t| t.snapshot.clone())
            .filter(|s| s.at_seq <= at_or_before))
    }

    async fn interrupt(&self, interrupt_id: InterruptId) -> Result<Option<InterruptRecord>> {
        Ok(self.lock().interrupts.get(&interrupt_id).cloned())
    }

    async fn interrupts(&self, thread_id: &ThreadId) -> Result<Vec<InterruptRecord>> {
        let mut out: Vec<InterruptRecord> = self
            .lock()
            .interrupts
            .values()
            .filter(|r| r.thread_id == *thread_id)
            .cloned()
            .collect();
        out.sort_by_key(|r| r.raised_seq);
        Ok(out)
    }

    async fn answer_interrupt(
        &self,
        interrupt_id: InterruptId,
        value: Payload,
        at: Timestamp,
    ) -> Result<(Answer, InterruptRecord)> {
        let mut inner = self.lock();
        let stored = inner
            .interrupts
            .get(&interrupt_id)
            .cloned()
            .ok_or(Error::InterruptNotFound { interrupt_id })?;
        let status = inner
            .runs
            .get(&stored.run_id)
            .map(|r| r.status.clone())
            .ok_or(Error::RunNotFound {
                run_id: stored.run_id,
            })?;
        match plan_answer(&stored, &status, &value, at)? {
            None => Ok((Answer::AlreadyAnswered, stored)),
            Some(updated) => {
                inner.interrupts.insert(interrupt_id, updated.clone());
                let interrupts = inner.interrupts_of_run(stored.run_id);
                if let Some(run) = inner.runs.get(&stored.run_id)
                    && let Some(t) = ready_on_answer(run, &interrupts, at)
                {
                    let mut run = run.clone();
                    run.ready_at = Some(t);
                    inner.put_run(run);
                }
                Ok((Answer::Recorded, updated))
            }
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
        let mut inner = self.lock();
        let Some(active) = inner.threads.get(thread_id).map(|t| {
            t.record
                .as_ref()
                .and_then(|r| r.active_run)
                .and_then(|id| inner.runs.get(&id))
        }) else {
            return Err(Error::ThreadNotFound {
                thread_id: thread_id.clone(),
            });
        };
        let woken = active.and_then(|run| {
            let t = ready_on_delivery(run, name, at)?;
            let mut run = run.clone();
            run.ready_at = Some(t);
            Some(run)
        });
        let list = inner.deliveries.entry(thread_id.clone()).or_default();
        if let Some(k) = &key
            && let Some(existing) = list.iter().find(|d| d.key.as_ref() == Some(k))
        {
            check_redelivery(existing, name, &payload)?;
            return Ok((existing.clone(), false));
        }
        let d = Delivery {
            delivery_id: DeliveryId::generate(),
            thread_id: thread_id.clone(),
            name: name.to_owned(),
            payload,
            key,
            sent_at: at,
            consumed_seq: None,
        };
        list.push(d.clone());
        if let Some(run) = woken {
            inner.put_run(run);
        }
        Ok((d, true))
    }

    async fn delete_thread(&self, thread_id: &ThreadId) -> Result<()> {
        let mut inner = self.lock();
        let record = inner
            .threads
            .get(thread_id)
            .and_then(|t| t.record.clone())
            .ok_or_else(|| Error::ThreadNotFound {
                thread_id: thread_id.clone(),
            })?;
        if let Some(run_id) = record.active_run {
            return Err(Error::RunActive {
                thread_id: thread_id.clone(),
                run_id,
            });
        }
        inner.drop_thread(thread_id);
        Ok(())
    }

    async fn prune(&self, thread_id: &ThreadId, base: Event) -> Result<u64> {
        let mut inner = self.lock();
        let not_found = || Error::ThreadNotFound {
            thread_id: thread_id.clone(),
        };
        let t = inner.threads.get(thread_id).ok_or_else(not_found)?;
        let record = t.record.clone().ok_or_else(not_found)?;
        let active_first = record
            .active_run
            .and_then(|r| inner.runs.get(&r))
            .map(|r| r.first_seq);
        let replaced = t
            .events
            .iter()
            .find(|e| e.seq == base.seq)
            .cloned()
            .ok_or_else(|| Error::InvalidCommit {
                thread_id: thread_id.clone(),
                detail: format!("no event at seq {} (already pruned?)", base.seq),
            })?;
        check_prune(&record, active_first, &base, &replaced)?;
        let at = base.seq;
        let t = inner.threads.get_mut(thread_id).ok_or_else(not_found)?;
        let before = t.events.len();
        t.events.retain(|e| e.seq > at);
        let deleted = (before - t.events.len()) as u64;
        t.events.insert(0, base);
        inner
            .interrupts
            .retain(|_, r| r.thread_id != *thread_id || r.applied_seq.is_none_or(|s| s >= at));
        if let Some(list) = inner.deliveries.get_mut(thread_id) {
            list.retain(|d| d.consumed_seq.is_none_or(|s| s >= at));
        }
        Ok(deleted.saturating_sub(1))
    }

    async fn deliveries(&self, thread_id: &ThreadId, pending_only: bool) -> Result<Vec<Delivery>> {
        Ok(self
            .lock()
            .deliveries
            .get(thread_id)
            .map(|l| {
                l.iter()
                    .filter(|d| !pending_only || d.consumed_seq.is_none())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn delete_snapshots(&self, thread_id: &ThreadId) -> Result<u64> {
        let mut inner = self.lock();
        let Some(t) = inner.threads.get_mut(thread_id) else {
            return Err(Error::ThreadNotFound {
                thread_id: thread_id.clone(),
            });
        };
        Ok(u64::from(t.snapshot.take().is_some()))
    }

    async fn list_interrupts(&self, filter: &InterruptFilter) -> Result<Vec<InterruptRecord>> {
        let inner = self.lock();
        let start = match filter.after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let limit = if filter.limit == 0 {
            usize::MAX
        } else {
            filter.limit
        };
        let graph_of = |t: &ThreadId| {
            inner
                .threads
                .get(t)
                .and_then(|t| t.record.as_ref())
                .map(|r| r.graph.as_str())
        };
        let open = |i: &InterruptRecord| {
            i.applied_seq.is_none()
                && inner
                    .runs
                    .get(&i.run_id)
                    .is_some_and(|r| !r.status.is_terminal())
        };
        Ok(inner
            .interrupts
            .range((start, Bound::Unbounded))
            .map(|(_, i)| i)
            .filter(|i| filter.thread_id.as_ref().is_none_or(|t| *t == i.thread_id))
            .filter(|i| {
                filter
                    .graph
                    .as_deref()
                    .is_none_or(|g| graph_of(&i.thread_id) == Some(g))
            })
            .filter(|i| !filter.open_only || open(i))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<RunRecord>> {
        let mut inner = self.lock();
        let mut claimed = Vec::new();
        // Walk the index one priority at a time, each up to `now`: runs that become ready
        // later (held leases among them) are skipped without being visited.
        let mut from = Bound::Unbounded;
        'priorities: while claimed.len() < request.limit {
            let Some(&(priority, _, _)) = inner.ready.range((from, Bound::Unbounded)).next() else {
                break;
            };
            let due = key_from(priority, Timestamp(i64::MIN))..=key_to(priority, request.now);
            for (_, _, run_id) in inner.ready.range(due) {
                if let Some(run) = inner.runs.get(run_id).and_then(|r| plan_claim(r, request)) {
                    claimed.push(run);
                    if claimed.len() == request.limit {
                        break 'priorities;
                    }
                }
            }
            from = Bound::Excluded(key_to(priority, Timestamp(i64::MAX)));
        }
        for run in &claimed {
            inner.put_run(run.clone());
        }
        Ok(claimed)
    }

    async fn renew_lease(
        &self,
        fence: &Fence,
        worker_id: &str,
        now: Timestamp,
        ttl: std::time::Duration,
    ) -> Result<RunRecord> {
        let mut inner = self.lock();
        let run = inner.runs.get(&fence.run_id).ok_or(Error::RunNotFound {
            run_id: fence.run_id,
        })?;
        let renewed = plan_renew(run, fence, worker_id, now, ttl)?;
        inner.put_run(renewed.clone());
        Ok(renewed)
    }

    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<RunRecord> {
        let mut inner = self.lock();
        let run = inner.runs.get(&fence.run_id).ok_or(Error::RunNotFound {
            run_id: fence.run_id,
        })?;
        let released = plan_release(run, fence, now)?;
        inner.put_run(released.clone());
        Ok(released)
    }

    async fn reap_leases(&self, now: Timestamp, limit: usize) -> Result<Vec<RunRecord>> {
        let mut inner = self.lock();
        let expired: Vec<RunId> = inner
            .leases
            .range(..=(now, RunId::from_uuid(uuid::Uuid::from_u128(u128::MAX))))
            .take(limit)
            .map(|(_, id)| *id)
            .collect();
        let mut reaped = Vec::with_capacity(expired.len());
        for id in expired {
            if let Some(run) = inner.runs.get(&id).and_then(|r| plan_reap(r, now)) {
                inner.put_run(run.clone());
                reaped.push(run);
            }
        }
        Ok(reaped)
    }

    async fn lease_counts(&self, now: Timestamp) -> Result<Vec<(String, u64)>> {
        let inner = self.lock();
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let live = (
            Bound::Excluded((now, RunId::from_uuid(uuid::Uuid::from_u128(u128::MAX)))),
            Bound::Unbounded,
        );
        for (_, id) in inner.leases.range(live) {
            if let Some(run) = inner.runs.get(id) {
                *counts.entry(run.graph.clone()).or_default() += 1;
            }
        }
        Ok(counts.into_iter().collect())
    }

    async fn register_worker(&self, worker: &WorkerRecord) -> Result<()> {
        let mut inner = self.lock();
        let registered_at = inner
            .workers
            .get(&worker.worker_id)
            .map_or(worker.registered_at, |w| w.registered_at);
        inner.workers.insert(
            worker.worker_id.clone(),
            WorkerRecord {
                registered_at,
                ..worker.clone()
            },
        );
        Ok(())
    }

    async fn touch_worker(&self, worker_id: &str, now: Timestamp) -> Result<bool> {
        Ok(match self.lock().workers.get_mut(worker_id) {
            Some(w) => {
                w.last_seen = now;
                true
            }
            None => false,
        })
    }

    async fn workers(&self) -> Result<Vec<WorkerRecord>> {
        Ok(self.lock().workers.values().cloned().collect())
    }

    async fn push_pending(&self, run: &PendingRun) -> Result<u64> {
        let mut inner = self.lock();
        if inner
            .pending
            .values()
            .any(|q| q.values().any(|p| p.run_id == run.run_id))
        {
            return Err(Error::AlreadyExists {
                what: "pending run",
                id: run.run_id.to_string(),
            });
        }
        let queue = inner.pending.entry(run.thread_id.clone()).or_default();
        let position = queue.keys().next_back().map_or(1, |p| p + 1);
        queue.insert(
            position,
            PendingRun {
                position,
                ..run.clone()
            },
        );
        Ok(position)
    }

    async fn pending_runs(&self, thread_id: &ThreadId) -> Result<Vec<PendingRun>> {
        Ok(self
            .lock()
            .pending
            .get(thread_id)
            .map(|q| q.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn pending_threads(&self, limit: usize) -> Result<Vec<ThreadId>> {
        let inner = self.lock();
        let mut free: Vec<(Timestamp, ThreadId)> = inner
            .pending
            .iter()
            .filter(|(t, _)| {
                inner
                    .threads
                    .get(*t)
                    .and_then(|t| t.record.as_ref())
                    .is_none_or(|r| r.active_run.is_none())
            })
            .filter_map(|(t, q)| q.values().next().map(|p| (p.created_at, t.clone())))
            .collect();
        free.sort();
        Ok(free.into_iter().take(limit).map(|(_, t)| t).collect())
    }

    async fn remove_pending(&self, run_id: RunId) -> Result<bool> {
        let mut inner = self.lock();
        let found = inner.pending.iter().find_map(|(t, q)| {
            q.values()
                .find(|p| p.run_id == run_id)
                .map(|p| (t.clone(), p.position))
        });
        let Some((thread_id, position)) = found else {
            return Ok(false);
        };
        if let Some(q) = inner.pending.get_mut(&thread_id) {
            q.remove(&position);
            if q.is_empty() {
                inner.pending.remove(&thread_id);
            }
        }
        Ok(true)
    }

    async fn reserve_idempotency(
        &self,
        candidate: &IdempotencyRecord,
        now: Timestamp,
    ) -> Result<Reservation> {
        let mut inner = self.lock();
        let id = (candidate.scope.clone(), candidate.key.clone());
        let (decision, write) = plan_reservation(inner.idempotency.get(&id), candidate, now);
        if let Some(record) = write {
            inner.idempotency.insert(id, record);
        }
        Ok(decision)
    }

    async fn complete_idempotency(
        &self,
        scope: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<()> {
        let mut inner = self.lock();
        if let Some(r) = inner
            .idempotency
            .get_mut(&(scope.to_owned(), key.to_owned()))
        {
            r.response = Some(response.clone());
        }
        Ok(())
    }

    async fn release_idempotency(&self, scope: &str, key: &str) -> Result<()> {
        let mut inner = self.lock();
        let id = (scope.to_owned(), key.to_owned());
        if inner
            .idempotency
            .get(&id)
            .is_some_and(|r| r.response.is_none())
        {
            inner.idempotency.remove(&id);
        }
        Ok(())
    }

    async fn purge_idempotency(&self, now: Timestamp) -> Result<u64> {
        let mut inner = self.lock();
        let before = inner.idempotency.len();
        inner.idempotency.retain(|_, r| r.expires_at > now);
        Ok((before - inner.idempotency.len()) as u64)
    }

    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        let mut inner = self.lock();
        if inner.api_keys.contains_key(&key.key_id) {
            return Err(Error::AlreadyExists {
                what: "api key",
                id: key.key_id.clone(),
            });
        }
        inner.api_keys.insert(key.key_id.clone(), key.clone());
        Ok(())
    }

    async fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>> {
        Ok(self.lock().api_keys.get(key_id).cloned())
    }

    async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        let mut keys: Vec<ApiKeyRecord> = self.lock().api_keys.values().cloned().collect();
        keys.sort_by(|a, b| (a.created_at, &a.key_id).cmp(&(b.created_at, &b.key_id)));
        Ok(keys)
    }

    async fn revoke_api_key(&self, key_id: &str, at: Timestamp) -> Result<bool> {
        let mut inner = self.lock();
        match inner.api_keys.get_mut(key_id) {
            Some(k) if k.revoked_at.is_none() => {
                k.revoked_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn append_audit(&self, record: &AuditRecord) -> Result<u64> {
        let mut inner = self.lock();
        let id = inner.audit.len() as u64 + 1;
        inner.audit.push(AuditRecord {
            id,
            ..record.clone()
        });
        Ok(id)
    }

    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let inner = self.lock();
        let from = filter
            .after
            .map_or(0, |a| usize::try_from(a).unwrap_or(usize::MAX))
            .min(inner.audit.len());
        let limit = if filter.limit == 0 {
            usize::MAX
        } else {
            filter.limit
        };
        Ok(inner.audit[from..]
            .iter()
            .filter(|r| filter.matches(r))
            .take(limit)
            .cloned()
            .collect())
    }
}
