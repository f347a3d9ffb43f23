//! The structural rules of a commit: contiguous seqs, events only from the active run, run
//! creation, and the edges of the run-status state machine.

use std::sync::Arc;

use oris_core::id::{RunId, Seq};
use oris_core::status::{RunStatus, StatusKind, TransitionError};
use oris_core::store::{Commit, Error, RunFilter, RunRecord, RunWrite, Store};

use crate::build::{self, GRAPH};
use crate::check::{
    ThreadView, all_events, assert_invalid_commit, assert_no_thread, assert_thread, err, ok,
    run_record, thread_record,
};
use crate::writer::Writer;

/// Events whose seqs do not continue the log exactly (`expected_head + 1`, contiguous)
/// fail with `InvalidCommit`, and nothing is written — on a new thread as on an old one.
pub async fn non_contiguous_seqs_are_invalid(store: Arc<dyn Store>) {
    let s = &*store;
    let t = build::thread_id("seq-new");
    let run = build::run_record(&t, GRAPH, 1);
    let bad_creations = [
        ("creation starting at seq 2", vec![build::started(&run, 2)]),
        (
            "creation with a duplicate seq",
            vec![build::started(&run, 1), build::step(run.run_id, 1)],
        ),
        (
            "creation with a gap",
            vec![build::started(&run, 1), build::step(run.run_id, 3)],
        ),
    ];
    for (what, events) in bad_creations {
        let e = err(s.commit(build::create(&run, events)).await, what);
        assert_invalid_commit(&e, &t, what);
        assert_no_thread(s, &t, what).await;
        assert_eq!(ok(s.run(run.run_id).await, "run()"), None, "{what}");
    }

    let mut w = Writer::start(s, "seq-old").await;
    w.steps(s, 1).await;
    let before = ThreadView::read(s, &w.thread).await;
    let (t, r) = (w.thread.clone(), w.run.run_id);
    let bad_appends = [
        (
            "gap inside the batch",
            vec![build::step(r, 3), build::step(r, 5)],
        ),
        ("gap before the batch", vec![build::step(r, 4)]),
        ("rewrite of the head event", vec![build::step(r, 2)]),
        ("rewrite of seq 1", vec![build::step(r, 1)]),
        (
            "duplicate in the batch",
            vec![build::step(r, 3), build::step(r, 3)],
        ),
        (
            "descending seqs",
            vec![build::step(r, 4), build::step(r, 3)],
        ),
        ("seq 0", vec![build::step(r, 0)]),
    ];
    for (what, events) in bad_appends {
        let e = err(s.commit(build::append(&t, 2, events)).await, what);
        assert_invalid_commit(&e, &t, what);
        before.assert_unchanged(s, what).await;
    }
    w.steps(s, 2).await;
    assert_eq!(all_events(s, &t).await.len(), 4);
}

/// Events may only be written by the thread's active run (or the run a commit creates or
/// finishes); others fail with `InvalidCommit` and nothing is written.
pub async fn events_of_inactive_run_are_invalid(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "writers").await;
    let (t, active) = (w.thread.clone(), w.run.run_id);
    let stranger = RunId::generate();
    let before = ThreadView::read(s, &t).await;
    let cases = [
        ("event of an unknown run", vec![build::step(stranger, 2)]),
        (
            "active run's event followed by a stranger's",
            vec![build::step(active, 2), build::step(stranger, 3)],
        ),
    ];
    for (what, events) in cases {
        let e = err(s.commit(build::append(&t, 1, events)).await, what);
        assert_invalid_commit(&e, &t, what);
        before.assert_unchanged(s, what).await;
    }

    // Another thread's active run is a stranger here too.
    let other = Writer::start(s, "writers-other").await;
    let e = err(
        s.commit(build::append(&t, 1, vec![build::step(other.run.run_id, 2)]))
            .await,
        "event of another thread's run",
    );
    assert_invalid_commit(&e, &t, "event of another thread's run");
    before
        .assert_unchanged(s, "event of another thread's run")
        .await;

    // A finished run writes no more.
    w.complete(s).await;
    let before = ThreadView::read(s, &t).await;
    let e = err(
        s.commit(build::append(&t, 2, vec![build::step(active, 3)]))
            .await,
        "event of a finished run",
    );
    assert_invalid_commit(&e, &t, "event of a finished run");
    before.assert_unchanged(s, "event of a finished run").await;

    // A creating commit carries only the new run's events.
    let next = build::run_record(&t, GRAPH, 3);
    let e = err(
        s.commit(build::create(
            &next,
            vec![build::started(&next, 3), build::step(active, 4)],
        ))
        .await,
        "creation carrying the previous run's event",
    );
    assert_invalid_commit(&e, &t, "creation carrying the previous run's event");
    before
        .assert_unchanged(s, "creation with a foreign event")
        .await;
    assert_eq!(ok(s.run(next.run_id).await, "run()"), None);
}

/// A run must be created at `head + 1`, queued or running, on the commit's own thread;
/// otherwise `InvalidCommit` and nothing is written. A queued run may be created without
/// events, which creates the thread with head 0; it is ready for a worker from its creation
/// (`ready_at = created_at`).
pub async fn run_creation_rules_are_enforced(store: Arc<dyn Store>) {
    let s = &*store;
    let t = build::thread_id("create-rules");
    let elsewhere = build::thread_id("create-rules-elsewhere");

    let late = build::run_record(&t, GRAPH, 2);
    let misplaced = Commit {
        expected_head: Seq::ZERO,
        ..build::create(&late, vec![build::started(&late, 1)])
    };
    let terminal = |status: RunStatus| RunRecord {
        status,
        ..build::run_record(&t, GRAPH, 1)
    };
    let foreign = build::run_record(&elsewhere, GRAPH, 1);
    let foreign_commit = Commit {
        thread_id: t.clone(),
        ..build::create(&foreign, vec![build::started(&foreign, 1)])
    };
    let cases = [
        ("run starting past head + 1", misplaced),
        (
            "run created completed",
            build::create(&terminal(build::status_completed(1)), vec![]),
        ),
        (
            "run created failed",
            build::create(&terminal(build::status_failed("no")), vec![]),
        ),
        (
            "run created cancelled",
            build::create(&terminal(build::status_cancelled("no")), vec![]),
        ),
        ("run naming another thread", foreign_commit),
    ];
    for (what, commit) in cases {
        let id = match &commit.run {
            Some(RunWrite::Create(r)) => r.run_id,
            _ => unreachable!("every case creates a run"),
        };
        let e = err(s.commit(commit).await, what);
        assert_invalid_commit(&e, &t, what);
        assert_no_thread(s, &t, what).await;
        assert_no_thread(s, &elsewhere, what).await;
        assert_eq!(ok(s.run(id).await, "run()"), None, "{what}");
    }

    let queued = build::queued(build::run_record(&t, GRAPH, 1));
    let receipt = ok(
        s.commit(build::create(&queued, vec![])).await,
        "queued run without events",
    );
    assert_eq!(receipt.head, Seq::ZERO);
    let record = thread_record(s, &t).await;
    assert_eq!(record.graph, GRAPH);
    assert_thread(&record, 0, Some(queued.run_id), Some(queued.run_id));
    // A queued run is ready for a worker at once: from its creation.
    let queued = RunRecord {
        ready_at: Some(queued.created_at),
        ..queued
    };
    assert_eq!(run_record(s, queued.run_id).await, queued);
    assert!(all_events(s, &t).await.is_empty());

    // A run id is unique across threads: re-using one elsewhere is refused and leaves the
    // original run untouched.
    let what = "run id re-used on another thread";
    let dup = RunRecord {
        thread_id: elsewhere.clone(),
        ready_at: None,
        ..queued.clone()
    };
    let e = err(s.commit(build::create(&dup, vec![])).await, what);
    assert_invalid_commit(&e, &elsewhere, what);
    assert_no_thread(s, &elsewhere, what).await;
    assert_eq!(run_record(s, queued.run_id).await, queued, "{what}");
}

/// Every edge of the state machine is accepted with the status data stored exactly; a
/// terminal status clears `active_run` (keeping `last_run`), a non-terminal one keeps it.
pub async fn allowed_transitions_succeed(store: Arc<dyn Store>) {
    let s = &*store;
    // (thread, created queued?, [(status, terminal event?)])
    let paths: [(&str, bool, Vec<RunStatus>); 4] = [
        (
            "edge-q-r-c",
            true,
            vec![RunStatus::Running, build::status_completed(2)],
        ),
        (
            "edge-q-x",
            true,
            vec![build::status_cancelled("ça suffit ✋")],
        ),
        ("edge-r-f", false, vec![build::status_failed("exploded 💥")]),
        ("edge-r-x", false, vec![build::status_cancelled("operator")]),
    ];
    for (name, starts_queued, statuses) in paths {
        let t = build::thread_id(name);
        let mut run = build::run_record(&t, GRAPH, 1);
        let mut head = 0;
        let mut events = Vec::new();
        if starts_queued {
            run = build::queued(run);
        } else {
            events.push(build::started(&run, 1));
        }
        head += events.len() as u64;
        ok(s.commit(build::create(&run, events)).await, name);
        for status in statuses {
            let seq = head + 1;
            let event = match status.kind() {
                StatusKind::Running => build::started(&run, seq),
                _ => build::terminal_event(run.run_id, seq, &status),
            };
            let what = format!("{name}: → {}", status.kind().as_str());
            let commit = build::set_status(&t, head, run.run_id, status.clone(), vec![event]);
            ok(s.commit(commit).await, &what);
            head = seq;

            let stored = run_record(s, run.run_id).await;
            assert_eq!(stored.status, status, "{what}: stored status");
            // Unfenced, a run set running is driven in-process (not ready for a worker);
            // an ended one is never ready.
            let expected = RunRecord {
                status: status.clone(),
                updated_at: stored.updated_at,
                ready_at: None,
                ..run.clone()
            };
            assert_eq!(
                stored, expected,
                "{what}: only status and updated_at change"
            );
            let listed = ok(
                s.runs(&RunFilter {
                    thread_id: Some(t.clone()),
                    ..RunFilter::default()
                })
                .await,
                "runs()",
            );
            assert_eq!(listed, vec![stored], "{what}: runs() agrees with run()");
            let active = (!status.is_terminal()).then_some(run.run_id);
            assert_thread(&thread_record(s, &t).await, head, active, Some(run.run_id));
            run.status = status;
        }
    }
}

/// A status change that is not an edge of the state machine fails with
/// `InvalidTransition` naming both statuses, and nothing of the commit is written.
pub async fn disallowed_transitions_are_rejected(store: Arc<dyn Store>) {
    let s = &*store;
    let refused = |run_id: RunId, from: &'static str, to: &'static str| Error::InvalidTransition {
        run_id,
        transition: TransitionError { from, to },
    };

    let mut w = Writer::start(s, "refused-running").await;
    let (t, r) = (w.thread.clone(), w.run.run_id);
    let before = ThreadView::read(s, &t).await;
    let cases = [
        (RunStatus::Queued, "queued"),
        (RunStatus::Running, "running"),
    ];
    for (status, to) in cases {
        let what = format!("running → {to}");
        let commit = build::change(&t, 1, r, status);
        assert_eq!(
            err(s.commit(commit).await, &what),
            refused(r, "running", to)
        );
        before.assert_unchanged(s, &what).await;
    }

    let q = build::thread_id("refused-queued");
    let queued = build::queued(build::run_record(&q, GRAPH, 1));
    ok(s.commit(build::create(&queued, vec![])).await, "queued run");
    let before_q = ThreadView::read(s, &q).await;
    let cases = [
        (RunStatus::Queued, "queued"),
        (build::status_completed(1), "completed"),
        (build::status_failed("x"), "failed"),
    ];
    for (status, to) in cases {
        let what = format!("queued → {to}");
        let commit = build::change(&q, 0, queued.run_id, status);
        assert_eq!(
            err(s.commit(commit).await, &what),
            refused(queued.run_id, "queued", to)
        );
        before_q.assert_unchanged(s, &what).await;
    }

    w.complete(s).await;
    let before = ThreadView::read(s, &t).await;
    let cases = [
        (RunStatus::Running, "running"),
        (RunStatus::Queued, "queued"),
        (build::status_completed(2), "completed"),
        (build::status_cancelled("late"), "cancelled"),
    ];
    for (status, to) in cases {
        let what = format!("completed → {to}");
        let commit = build::change(&t, 2, r, status);
        assert_eq!(
            err(s.commit(commit).await, &what),
            refused(r, "completed", to)
        );
        before.assert_unchanged(s, &what).await;
    }
    assert!(run_record(s, r).await.status.is_terminal());
}

/// A status change naming a run of another thread fails with `InvalidCommit` and changes
/// neither thread.
pub async fn status_of_another_threads_run_is_invalid(store: Arc<dyn Store>) {
    let s = &*store;
    let x = Writer::start(s, "owner-x").await;
    let y = Writer::start(s, "owner-y").await;
    let before_x = ThreadView::read(s, &x.thread).await;
    let before_y = ThreadView::read(s, &y.thread).await;

    let commit = build::set_status(
        &x.thread,
        1,
        y.run.run_id,
        build::status_completed(2),
        vec![build::run_completed(y.run.run_id, 2)],
    );
    let e = err(s.commit(commit).await, "finishing another thread's run");
    assert_invalid_commit(&e, &x.thread, "finishing another thread's run");
    before_x.assert_unchanged(s, "foreign status change").await;
    before_y.assert_unchanged(s, "foreign status change").await;
}
