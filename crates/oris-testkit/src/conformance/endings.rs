//! How a run ends: a terminal status and its terminal event are committed together, the
//! event last and matching the status exactly; every status change carries an event, so the
//! head compare-and-set covers it.

use std::sync::Arc;

use oris_core::event::{Event, Failure, FailureKind};
use oris_core::id::Seq;
use oris_core::status::RunStatus;
use oris_core::store::{Commit, Store};

use crate::build::{self, GRAPH};
use crate::check::{
    ThreadView, all_events, assert_invalid_commit, assert_no_thread, assert_thread, err, ok,
    run_record, thread_record,
};
use crate::writer::Writer;

/// The three terminal statuses.
fn terminals() -> [RunStatus; 3] {
    [
        build::status_completed(1),
        build::status_failed("boom"),
        build::status_cancelled("stop"),
    ]
}

/// Asserts that `commit` on `thread` fails with `InvalidCommit` and changes nothing.
async fn rejected(s: &dyn Store, thread: &oris_core::id::ThreadId, commit: Commit, what: &str) {
    let before = ThreadView::read(s, thread).await;
    let e = err(s.commit(commit).await, what);
    assert_invalid_commit(&e, thread, what);
    before.assert_unchanged(s, what).await;
}

/// Asserts that `w`'s run ended with `status`, its terminal event last in the log.
async fn assert_ended(s: &dyn Store, w: &Writer, status: &RunStatus) {
    let r = w.run.run_id;
    assert_eq!(run_record(s, r).await.status, *status, "run {r}: status");
    assert_thread(&thread_record(s, &w.thread).await, w.head, None, Some(r));
    let last = all_events(s, &w.thread).await.pop();
    assert_eq!(
        last,
        Some(build::terminal_event(r, w.head, status)),
        "thread `{}`: the log ends with the run's terminal event",
        w.thread
    );
}

/// A terminal status set without its terminal event — with no event at all, or with other
/// events only — fails with `InvalidCommit` and changes nothing; with the event it succeeds.
/// For a running run and for a queued one (cancelling a queued run).
pub async fn terminal_status_requires_its_event(store: Arc<dyn Store>) {
    let s = &*store;
    for status in terminals() {
        let kind = status.kind().as_str();
        let mut w = Writer::start(s, &format!("end-no-event-{kind}")).await;
        w.steps(s, 1).await;
        let (t, r, h) = (w.thread.clone(), w.run.run_id, w.head);
        let bare = build::set_status(&t, h, r, status.clone(), vec![]);
        rejected(s, &t, bare, &format!("{kind} without any event")).await;
        let steps = vec![build::step(r, h + 1), build::step(r, h + 2)];
        let other = build::set_status(&t, h, r, status.clone(), steps);
        rejected(
            s,
            &t,
            other,
            &format!("{kind} with non-terminal events only"),
        )
        .await;
        w.finish(s, status.clone()).await;
        assert_ended(s, &w, &status).await;
    }

    let q = build::thread_id("end-no-event-queued");
    let queued = build::queued(build::run_record(&q, GRAPH, 1));
    ok(s.commit(build::create(&queued, vec![])).await, "queued run");
    let cancel = build::status_cancelled("never started");
    let bare = build::set_status(&q, 0, queued.run_id, cancel.clone(), vec![]);
    rejected(s, &q, bare, "queued → cancelled without its event").await;
    let mut w = Writer {
        thread: q.clone(),
        run: queued.clone(),
        head: 0,
    };
    w.finish(s, cancel.clone()).await;
    assert_ended(s, &w, &cancel).await;
}

/// A terminal event committed without the matching terminal status — by an append, a run
/// creation, or a non-terminal status change — fails with `InvalidCommit` and changes
/// nothing.
pub async fn terminal_event_requires_its_status(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "end-no-status").await;
    w.steps(s, 1).await;
    let (t, r, h) = (w.thread.clone(), w.run.run_id, w.head);
    let lone: [(&str, Event); 3] = [
        ("RunCompleted", build::run_completed(r, h + 1)),
        ("RunFailed", build::run_failed(r, h + 1, "boom")),
        ("RunCancelled", build::run_cancelled(r, h + 1, "stop")),
    ];
    for (kind, event) in lone {
        let commit = build::append(&t, h, vec![event.clone()]);
        rejected(s, &t, commit, &format!("appending {kind} alone")).await;
        let mut last = event;
        last.seq = Seq(h + 2);
        let commit = build::append(&t, h, vec![build::step(r, h + 1), last]);
        rejected(s, &t, commit, &format!("appending a step then {kind}")).await;
    }
    assert_eq!(run_record(s, r).await.status, RunStatus::Running);

    let c = build::thread_id("end-no-status-create");
    let run = build::run_record(&c, GRAPH, 1);
    let commit = build::create(
        &run,
        vec![build::started(&run, 1), build::run_completed(run.run_id, 2)],
    );
    let e = err(s.commit(commit).await, "a creation ending its run");
    assert_invalid_commit(&e, &c, "a creation ending its run");
    assert_no_thread(s, &c, "a creation ending its run").await;

    let q = build::thread_id("end-no-status-queued");
    let queued = build::queued(build::run_record(&q, GRAPH, 1));
    ok(s.commit(build::create(&queued, vec![])).await, "queued run");
    let commit = build::set_status(
        &q,
        0,
        queued.run_id,
        RunStatus::Running,
        vec![
            build::started(&queued, 1),
            build::run_cancelled(queued.run_id, 2, "stop"),
        ],
    );
    rejected(s, &q, commit, "queued → running with a terminal event").await;
}

/// A terminal event that is not the last event of its commit fails with `InvalidCommit`,
/// even with the matching status; a terminal commit may carry other events before it.
pub async fn terminal_event_must_be_last(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "end-not-last").await;
    w.steps(s, 1).await;
    let (t, r, h) = (w.thread.clone(), w.run.run_id, w.head);
    let done = build::status_completed(h);
    let cases = [
        (
            "RunCompleted then a step",
            vec![build::run_completed(r, h + 1), build::step(r, h + 2)],
        ),
        (
            "RunCompleted twice",
            vec![
                build::run_completed(r, h + 1),
                build::run_completed(r, h + 2),
            ],
        ),
        (
            "RunCancelled then RunCompleted",
            vec![
                build::run_cancelled(r, h + 1, "stop"),
                build::run_completed(r, h + 2),
            ],
        ),
    ];
    for (what, events) in cases {
        let commit = build::set_status(&t, h, r, done.clone(), events);
        rejected(s, &t, commit, &format!("completed with {what}")).await;
    }

    let steps = vec![build::step(r, h + 1), build::step(r, h + 2)];
    let done = build::status_completed(h + 2);
    w.commit(s, build::finish(&t, h, r, done.clone(), steps))
        .await;
    assert_eq!(w.head, h + 3);
    assert_ended(s, &w, &done).await;
}

/// A terminal event that does not match the terminal status — another kind, another
/// error (message or cause chain), another reason — fails with `InvalidCommit` and changes
/// nothing.
pub async fn terminal_event_must_match_status(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "end-mismatch").await;
    let (t, r, h) = (w.thread.clone(), w.run.run_id, w.head);
    let seq = h + 1;
    let unchained = Event {
        body: oris_core::event::EventBody::RunFailed {
            error: Failure::new(FailureKind::NodeError, "boom"),
        },
        ..build::run_failed(r, seq, "boom")
    };
    let cases = [
        (
            "completed with RunCancelled",
            build::status_completed(h),
            build::run_cancelled(r, seq, "stop"),
        ),
        (
            "completed with RunFailed",
            build::status_completed(h),
            build::run_failed(r, seq, "boom"),
        ),
        (
            "failed with RunCompleted",
            build::status_failed("boom"),
            build::run_completed(r, seq),
        ),
        (
            "failed with another message",
            build::status_failed("boom"),
            build::run_failed(r, seq, "bang"),
        ),
        (
            "failed with another cause chain",
            build::status_failed("boom"),
            unchained,
        ),
        (
            "cancelled with another reason",
            build::status_cancelled("stop"),
            build::run_cancelled(r, seq, "halt"),
        ),
        (
            "cancelled with RunCompleted",
            build::status_cancelled("stop"),
            build::run_completed(r, seq),
        ),
    ];
    for (what, status, event) in cases {
        let commit = build::set_status(&t, h, r, status, vec![event]);
        rejected(s, &t, commit, what).await;
    }
    let failed = build::status_failed("boom");
    w.finish(s, failed.clone()).await;
    assert_ended(s, &w, &failed).await;
}

/// A status change without any event (so one that would not move the head) fails with
/// `InvalidCommit` and changes nothing — for a non-terminal change as for a terminal one.
pub async fn status_change_without_events_is_invalid(store: Arc<dyn Store>) {
    let s = &*store;
    let q = build::thread_id("status-only");
    let queued = build::queued(build::run_record(&q, GRAPH, 1));
    ok(s.commit(build::create(&queued, vec![])).await, "queued run");
    let r = queued.run_id;
    let bare = build::set_status(&q, 0, r, RunStatus::Running, vec![]);
    rejected(s, &q, bare, "queued → running without an event").await;
    let with_snapshot = Commit {
        snapshot: Some(build::snapshot(r, 1, "{}")),
        ..build::set_status(&q, 0, r, RunStatus::Running, vec![])
    };
    rejected(
        s,
        &q,
        with_snapshot,
        "queued → running with only a snapshot",
    )
    .await;

    let start = build::set_status(
        &q,
        0,
        r,
        RunStatus::Running,
        vec![build::started(&queued, 1)],
    );
    let receipt = ok(s.commit(start).await, "queued → running with its event");
    assert_eq!(receipt.head, Seq(1), "a status change moves the head");
    assert_eq!(run_record(s, r).await.status, RunStatus::Running);
    assert_thread(&thread_record(s, &q).await, 1, Some(r), Some(r));

    let mut w = Writer::start(s, "status-only-terminal").await;
    let (t, r, h) = (w.thread.clone(), w.run.run_id, w.head);
    for status in terminals() {
        let what = format!("running → {} without an event", status.kind().as_str());
        rejected(s, &t, build::set_status(&t, h, r, status, vec![]), &what).await;
    }
    w.complete(s).await;
}
