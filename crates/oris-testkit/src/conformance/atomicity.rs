//! A commit is all or nothing, and a failed commit harms neither its thread nor others.

use std::sync::Arc;

use oris_core::id::{RunId, Seq};
use oris_core::status::RunStatus;
use oris_core::store::{Commit, Error, RunWrite, Store};

use crate::build::{self, GRAPH};
use crate::check::{
    LATEST, ThreadView, all_events, assert_contiguous, assert_no_thread, err, ok, thread_record,
};
use crate::writer::Writer;

/// What kind of error a rejected commit must fail with.
fn same_kind(e: &Error, want: &str) -> bool {
    let kind = match e {
        Error::Conflict { .. } => "Conflict",
        Error::RunActive { .. } => "RunActive",
        Error::GraphMismatch { .. } => "GraphMismatch",
        Error::ThreadNotFound { .. } => "ThreadNotFound",
        Error::RunNotFound { .. } => "RunNotFound",
        Error::InvalidTransition { .. } => "InvalidTransition",
        Error::InvalidCommit { .. } => "InvalidCommit",
        _ => "another error",
    };
    kind == want
}

/// A commit whose events are valid but whose snapshot, status change or run creation is
/// not writes none of its parts; afterwards the store accepts the valid commit at the same
/// head (a backend must roll back, not leave a transaction or lock behind).
pub async fn failed_commit_is_all_or_nothing(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "atomic").await;
    w.steps(s, 2).await;
    let (t, r) = (w.thread.clone(), w.run.run_id);
    let old = build::snapshot(r, 2, r#"{"v":"old"}"#);
    let commit = Commit {
        snapshot: Some(old),
        ..build::append(&t, 3, vec![])
    };
    w.commit(s, commit).await;
    let before = ThreadView::read(s, &t).await;
    let stranger = RunId::generate();
    let next = build::run_record(&t, GRAPH, 4);
    let good_events = || vec![build::step(r, 4), build::step(r, 5)];
    let with_snapshot = |c: Commit, at: u64| Commit {
        snapshot: Some(build::snapshot(r, at, r#"{"v":"new"}"#)),
        ..c
    };

    let cases = [
        (
            "valid events with a snapshot past the head",
            with_snapshot(build::append(&t, 3, good_events()), 6),
            "InvalidCommit",
        ),
        (
            "valid events and snapshot with a refused status change",
            with_snapshot(
                build::set_status(&t, 3, r, RunStatus::Queued, good_events()),
                5,
            ),
            "InvalidTransition",
        ),
        (
            "valid events then a stranger's",
            build::append(&t, 3, vec![build::step(r, 4), build::step(stranger, 5)]),
            "InvalidCommit",
        ),
        (
            "valid events and snapshot with an unknown run's status",
            with_snapshot(
                build::finish(
                    &t,
                    3,
                    stranger,
                    build::status_completed(5),
                    vec![build::step(r, 4)],
                ),
                5,
            ),
            "RunNotFound",
        ),
        (
            "valid events with a run creation while a run is active",
            Commit {
                run: Some(RunWrite::Create(next.clone())),
                ..build::append(&t, 3, vec![build::started(&next, 4)])
            },
            "RunActive",
        ),
    ];
    for (what, commit, kind) in cases {
        let e = err(s.commit(commit).await, what);
        assert!(same_kind(&e, kind), "{what}: expected {kind}, got {e:?}");
        before.assert_unchanged(s, what).await;
    }
    assert_eq!(ok(s.run(next.run_id).await, "run()"), None);

    let commit = with_snapshot(build::append(&t, 3, good_events()), 5);
    let receipt = w.commit(s, commit).await;
    assert_eq!(receipt.head, Seq(5));
    let mut expected = before.events.clone();
    expected.extend(good_events());
    assert_eq!(
        all_events(s, &t).await,
        expected,
        "log after the valid commit"
    );
    assert_eq!(
        ok(s.snapshot(&t, LATEST).await, "snapshot").map(|sn| sn.at_seq),
        Some(Seq(5))
    );

    // A rejected creation leaves no thread behind.
    let fresh = build::thread_id("atomic-new");
    let run = build::run_record(&fresh, GRAPH, 1);
    let commit = Commit {
        snapshot: Some(build::snapshot(run.run_id, 3, "{}")),
        ..build::create(
            &run,
            vec![build::started(&run, 1), build::step(run.run_id, 2)],
        )
    };
    let e = err(
        s.commit(commit).await,
        "creation with a snapshot past its head",
    );
    assert!(same_kind(&e, "InvalidCommit"), "got {e:?}");
    assert_no_thread(s, &fresh, "rejected creation").await;
    assert_eq!(ok(s.run(run.run_id).await, "run()"), None);
    let commit = build::create(
        &run,
        vec![build::started(&run, 1), build::step(run.run_id, 2)],
    );
    ok(s.commit(commit).await, "the same creation, valid");
    assert_eq!(thread_record(s, &fresh).await.head, Seq(2));
}

/// One thread receiving a failing commit between each of its valid ones, while eight
/// other threads commit concurrently: every failure is reported as the right error, every
/// valid commit lands, and no log has a gap or a stray event.
pub async fn failing_commit_does_not_affect_other_threads(store: Arc<dyn Store>) {
    const ROUNDS: u64 = 30;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let s = &*store;
            let mut w = Writer::start(s, &format!("bystander-{i}")).await;
            for _ in 0..ROUNDS {
                w.steps(s, 1).await;
            }
            w
        }));
    }
    let bad = {
        let store = store.clone();
        tokio::spawn(async move {
            let s = &*store;
            let mut w = Writer::start(s, "troubled").await;
            let stranger = RunId::generate();
            for round in 0..ROUNDS {
                let (t, r, h) = (w.thread.clone(), w.run.run_id, w.head);
                let (what, commit, kind) = match round % 5 {
                    0 => (
                        "stale head",
                        build::append(&t, h - 1, vec![build::step(r, h)]),
                        "Conflict",
                    ),
                    1 => (
                        "gap",
                        build::append(&t, h, vec![build::step(r, h + 2)]),
                        "InvalidCommit",
                    ),
                    2 => (
                        "stranger",
                        build::append(&t, h, vec![build::step(stranger, h + 1)]),
                        "InvalidCommit",
                    ),
                    3 => (
                        "refused edge",
                        build::set_status(&t, h, r, RunStatus::Queued, vec![build::step(r, h + 1)]),
                        "InvalidTransition",
                    ),
                    _ => (
                        "bad snapshot",
                        Commit {
                            snapshot: Some(build::snapshot(r, h + 2, "{}")),
                            ..build::append(&t, h, vec![build::step(r, h + 1)])
                        },
                        "InvalidCommit",
                    ),
                };
                let e = err(s.commit(commit).await, what);
                assert!(
                    same_kind(&e, kind),
                    "round {round}, {what}: expected {kind}, got {e:?}"
                );
                w.steps(s, 1).await;
            }
            w
        })
    };
    let mut writers = Vec::new();
    for task in tasks {
        writers.push(super::concurrency::join(task).await);
    }
    writers.push(super::concurrency::join(bad).await);

    let s = &*store;
    for w in writers {
        let events = all_events(s, &w.thread).await;
        assert_eq!(events.len() as u64, ROUNDS + 1, "events of `{}`", w.thread);
        assert_contiguous(&w.thread, &events);
        for e in &events[1..] {
            assert_eq!(
                *e,
                build::step(w.run.run_id, e.seq.0),
                "thread `{}`",
                w.thread
            );
        }
        assert_eq!(thread_record(s, &w.thread).await.head, Seq(ROUNDS + 1));
    }
}
