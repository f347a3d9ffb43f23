//! Assertions over a store, with failure messages that say what was expected.

use oris_core::event::Event;
use oris_core::id::{InterruptId, RunId, Seq, ThreadId};
use oris_core::store::ClaimRequest;
use oris_core::store::{
    Delivery, Error, InterruptRecord, Result, RunFilter, RunRecord, Snapshot, Store, ThreadRecord,
};

/// A read limit larger than any log the suite writes. The reads of the suite's own
/// bookkeeping use it rather than `usize::MAX`, so that a backend mishandling extreme bounds
/// fails the one case that tests them (`extreme_read_bounds`), not every case.
pub const ALL: usize = 1 << 20;

/// A snapshot bound past any head the suite reaches (see [`ALL`] for why not `u64::MAX`).
pub const LATEST: Seq = Seq(i64::MAX as u64);

/// Unwraps a store result, panicking with `what` and the error.
#[track_caller]
pub fn ok<T>(result: Result<T>, what: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{what}: expected success, got error: {e} ({e:?})"),
    }
}

/// Unwraps a store error, panicking with `what` if the operation succeeded.
#[track_caller]
pub fn err<T: std::fmt::Debug>(result: Result<T>, what: &str) -> Error {
    match result {
        Ok(v) => panic!("{what}: expected an error, but it succeeded with {v:?}"),
        Err(e) => e,
    }
}

/// Asserts that `error` is [`Error::InvalidCommit`] about `thread`.
#[track_caller]
pub fn assert_invalid_commit(error: &Error, thread: &ThreadId, what: &str) {
    match error {
        Error::InvalidCommit { thread_id, .. } if thread_id == thread => {}
        other => panic!("{what}: expected InvalidCommit on thread `{thread}`, got {other:?}"),
    }
}

/// Every event of `thread`, in seq order.
pub async fn all_events(store: &dyn Store, thread: &ThreadId) -> Vec<Event> {
    ok(
        store.events(thread, Seq::ZERO, ALL).await,
        &format!("events({thread})"),
    )
}

/// The thread record, which must exist.
pub async fn thread_record(store: &dyn Store, thread: &ThreadId) -> ThreadRecord {
    ok(store.thread(thread).await, &format!("thread({thread})"))
        .unwrap_or_else(|| panic!("thread `{thread}` should exist, but thread() returned None"))
}

/// The run record, which must exist.
pub async fn run_record(store: &dyn Store, run: RunId) -> RunRecord {
    ok(store.run(run).await, &format!("run({run})"))
        .unwrap_or_else(|| panic!("run {run} should exist, but run() returned None"))
}

/// The ids of the runs `filter` selects, in the order the store returned them.
pub async fn run_ids(store: &dyn Store, filter: &RunFilter) -> Vec<RunId> {
    ok(store.runs(filter).await, &format!("runs({filter:?})"))
        .into_iter()
        .map(|r| r.run_id)
        .collect()
}

/// Asserts the head, active run and last run of `thread`.
#[track_caller]
pub fn assert_thread(
    record: &ThreadRecord,
    head: u64,
    active_run: Option<RunId>,
    last_run: Option<RunId>,
) {
    let t = &record.thread_id;
    assert_eq!(record.head, Seq(head), "thread `{t}`: head");
    assert_eq!(record.active_run, active_run, "thread `{t}`: active_run");
    assert_eq!(record.last_run, last_run, "thread `{t}`: last_run");
}

/// Asserts that the events of a thread have seqs `1..=n` with no gap or duplicate.
#[track_caller]
pub fn assert_contiguous(thread: &ThreadId, events: &[Event]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.seq,
            Seq(i as u64 + 1),
            "thread `{thread}`: event {i} of {} has the wrong seq",
            events.len()
        );
    }
}

/// Everything the store holds about one thread, read through the trait. Taken before and
/// after a rejected commit to prove the commit changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadView {
    /// The thread record.
    pub thread: Option<ThreadRecord>,
    /// The whole log.
    pub events: Vec<Event>,
    /// The latest snapshot.
    pub snapshot: Option<Snapshot>,
    /// The thread's runs, oldest first.
    pub runs: Vec<RunRecord>,
}

impl ThreadView {
    /// Reads the view of `thread`.
    pub async fn read(store: &dyn Store, thread: &ThreadId) -> Self {
        let runs = RunFilter {
            thread_id: Some(thread.clone()),
            ..RunFilter::default()
        };
        ThreadView {
            thread: ok(store.thread(thread).await, &format!("thread({thread})")),
            events: all_events(store, thread).await,
            snapshot: ok(
                store.snapshot(thread, LATEST).await,
                &format!("snapshot({thread})"),
            ),
            runs: ok(store.runs(&runs).await, &format!("runs(thread {thread})")),
        }
    }

    /// Asserts that `thread` still reads exactly as this view, after `what`.
    pub async fn assert_unchanged(&self, store: &dyn Store, what: &str) {
        let thread = match &self.thread {
            Some(t) => t.thread_id.clone(),
            None => panic!("assert_unchanged needs a view of an existing thread"),
        };
        let now = ThreadView::read(store, &thread).await;
        assert_eq!(now.thread, self.thread, "{what}: the thread record changed");
        assert_eq!(now.events, self.events, "{what}: the event log changed");
        assert_eq!(now.snapshot, self.snapshot, "{what}: the snapshot changed");
        assert_eq!(now.runs, self.runs, "{what}: the run records changed");
    }
}

/// Asserts that `thread` does not exist: no record, no events, no snapshot, no runs.
pub async fn assert_no_thread(store: &dyn Store, thread: &ThreadId, what: &str) {
    let view = ThreadView::read(store, thread).await;
    assert_eq!(
        view,
        ThreadView {
            thread: None,
            events: Vec::new(),
            snapshot: None,
            runs: Vec::new(),
        },
        "{what}: thread `{thread}` should not exist"
    );
}

/// The interrupt record, which must exist.
pub async fn interrupt_record(store: &dyn Store, id: InterruptId) -> InterruptRecord {
    ok(store.interrupt(id).await, &format!("interrupt({id})"))
        .unwrap_or_else(|| panic!("interrupt {id} should exist, but interrupt() returned None"))
}

/// The interrupts of `thread`, as `interrupts` lists them.
pub async fn interrupts_of(store: &dyn Store, thread: &ThreadId) -> Vec<InterruptRecord> {
    ok(
        store.interrupts(thread).await,
        &format!("interrupts({thread})"),
    )
}

/// The deliveries of `thread` (only unconsumed ones if `pending_only`), as listed.
pub async fn deliveries_of(
    store: &dyn Store,
    thread: &ThreadId,
    pending_only: bool,
) -> Vec<Delivery> {
    ok(
        store.deliveries(thread, pending_only).await,
        &format!("deliveries({thread}, pending_only: {pending_only})"),
    )
}

/// A [`ThreadView`] plus the thread's interrupts and deliveries: taken before and after a
/// rejected commit, answer or delivery to prove it changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullView {
    /// Records, log, snapshot and runs.
    pub base: ThreadView,
    /// Every interrupt of the thread, in raised order.
    pub interrupts: Vec<InterruptRecord>,
    /// Every delivery of the thread, in arrival order.
    pub deliveries: Vec<Delivery>,
}

impl FullView {
    /// Reads the view of `thread`, which must exist.
    pub async fn read(store: &dyn Store, thread: &ThreadId) -> Self {
        FullView {
            base: ThreadView::read(store, thread).await,
            interrupts: interrupts_of(store, thread).await,
            deliveries: deliveries_of(store, thread, false).await,
        }
    }

    /// Asserts that the thread still reads exactly as this view, after `what`.
    pub async fn assert_unchanged(&self, store: &dyn Store, what: &str) {
        self.base.assert_unchanged(store, what).await;
        let thread = match &self.base.thread {
            Some(t) => t.thread_id.clone(),
            None => panic!("assert_unchanged needs a view of an existing thread"),
        };
        assert_eq!(
            interrupts_of(store, &thread).await,
            self.interrupts,
            "{what}: the interrupts of thread `{thread}` changed"
        );
        assert_eq!(
            deliveries_of(store, &thread, false).await,
            self.deliveries,
            "{what}: the deliveries of thread `{thread}` changed"
        );
    }
}

/// Asserts that `error` is [`Error::LeaseLost`] for `run` at `epoch` (any reason).
#[track_caller]
pub fn assert_lease_lost(error: &Error, run: RunId, epoch: u64, what: &str) {
    match error {
        Error::LeaseLost {
            run_id, epoch: e, ..
        } if *run_id == run && *e == epoch => {}
        other => panic!("{what}: expected LeaseLost for run {run} at epoch {epoch}, got {other:?}"),
    }
}

/// Claims with `request`, which must succeed; returns the claimed records.
pub async fn claim(store: &dyn Store, request: &ClaimRequest) -> Vec<RunRecord> {
    ok(
        store.claim(request).await,
        &format!(
            "claim by {} at {:?} (limit {})",
            request.worker_id, request.now, request.limit
        ),
    )
}

/// The ids of the runs a claim with `request` takes, in the order returned.
pub async fn claim_ids(store: &dyn Store, request: &ClaimRequest) -> Vec<RunId> {
    claim(store, request)
        .await
        .into_iter()
        .map(|r| r.run_id)
        .collect()
}
