//! Snapshots: written with a commit, one per thread, bounded reads, deletion.

use std::sync::Arc;

use oris_core::event::{Barriers, Boundary, Task};
use oris_core::id::Seq;
use oris_core::store::{Commit, Error, Snapshot, Store};

use crate::build;
use crate::check::{
    LATEST, ThreadView, all_events, assert_invalid_commit, assert_no_thread, err, ok,
};
use crate::writer::Writer;

/// A commit carrying `events` and `snapshot`, at `w`'s head.
fn with_snapshot(w: &Writer, events: Vec<oris_core::event::Event>, snapshot: Snapshot) -> Commit {
    Commit {
        snapshot: Some(snapshot),
        ..build::append(&w.thread, w.head, events)
    }
}

/// A snapshot written with a commit reads back exactly: state JSON, boundary with fan-out
/// tasks and barriers, run, superstep and time.
pub async fn snapshot_round_trips(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "snap-exact").await;
    w.steps(s, 2).await;
    let snap = Snapshot {
        at_seq: Seq(4),
        run_id: w.run.run_id,
        next_superstep: 7,
        state: build::payload(r#"{"log":["a","b"],"n":{"deep":[1,2.5,null,true]},"s":"é🚀"}"#),
        boundary: Boundary {
            next: vec![
                Task::Node("join".into()),
                Task::Send {
                    node: "worker".into(),
                    input: build::payload(r#"{"item":1}"#),
                },
                Task::Send {
                    node: "worker".into(),
                    input: build::payload("null"),
                },
            ],
            barriers: Barriers::from([
                (0, ["a".to_owned(), "b".to_owned()].into()),
                (3, ["x".to_owned()].into()),
            ]),
        },
        created_at: build::at(4),
    };
    let event = build::step(w.run.run_id, 4);
    let commit = with_snapshot(&w, vec![event], snap.clone());
    w.commit(s, commit).await;

    let t = &w.thread;
    assert_eq!(
        ok(s.snapshot(t, LATEST).await, "latest"),
        Some(snap.clone())
    );
    assert_eq!(ok(s.snapshot(t, Seq(4)).await, "at 4"), Some(snap));
    assert_eq!(
        all_events(s, t).await.len(),
        4,
        "the commit's event is written too"
    );
}

/// `snapshot(at_or_before)` returns the snapshot only if it stands at or before the bound.
pub async fn snapshot_respects_bound(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "snap-bound").await;
    w.steps(s, 2).await;
    let snap = build::snapshot(w.run.run_id, 3, r#"{"at":3}"#);
    let commit = with_snapshot(&w, vec![], snap.clone());
    w.commit(s, commit).await;
    w.steps(s, 2).await;

    for (bound, want) in [
        (0, None),
        (1, None),
        (2, None),
        (3, Some(&snap)),
        (4, Some(&snap)),
        (5, Some(&snap)),
        (100, Some(&snap)),
    ] {
        assert_eq!(
            ok(s.snapshot(&w.thread, Seq(bound)).await, "snapshot()").as_ref(),
            want,
            "snapshot(at_or_before {bound}) with the only snapshot at 3"
        );
    }
}

/// A thread keeps one snapshot: a newer one replaces the old, which is no longer returned
/// for any bound.
pub async fn newer_snapshot_replaces_older(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "snap-replace").await;
    let old = build::snapshot(w.run.run_id, 2, r#"{"v":"old"}"#);
    let commit = with_snapshot(&w, vec![build::step(w.run.run_id, 2)], old.clone());
    w.commit(s, commit).await;
    assert_eq!(ok(s.snapshot(&w.thread, LATEST).await, "old"), Some(old));

    w.steps(s, 1).await;
    let new = build::snapshot(w.run.run_id, 4, r#"{"v":"new"}"#);
    let commit = with_snapshot(&w, vec![build::step(w.run.run_id, 4)], new.clone());
    w.commit(s, commit).await;

    let t = &w.thread;
    assert_eq!(ok(s.snapshot(t, LATEST).await, "latest"), Some(new.clone()));
    assert_eq!(ok(s.snapshot(t, Seq(4)).await, "at 4"), Some(new));
    assert_eq!(
        ok(s.snapshot(t, Seq(3)).await, "at 3"),
        None,
        "the replaced snapshot at 2 must be gone"
    );
    assert_eq!(
        ok(s.delete_snapshots(t).await, "delete_snapshots"),
        1,
        "one snapshot is left after a replacement"
    );
}

/// `delete_snapshots` removes the thread's snapshot and returns how many it removed (1,
/// then 0), touches nothing else (log, records, other threads' snapshots), and a snapshot
/// can be written again afterwards. A missing thread is `ThreadNotFound`.
pub async fn delete_snapshots_counts(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "snap-delete").await;
    assert_eq!(ok(s.delete_snapshots(&w.thread).await, "none yet"), 0);

    let snap = build::snapshot(w.run.run_id, 2, r#"{"v":2}"#);
    let commit = with_snapshot(&w, vec![build::step(w.run.run_id, 2)], snap.clone());
    w.commit(s, commit).await;
    let mut n = Writer::start(s, "snap-delete-neighbour").await;
    let theirs = build::snapshot(n.run.run_id, 1, r#"{"v":"theirs"}"#);
    let commit = with_snapshot(&n, vec![], theirs.clone());
    n.commit(s, commit).await;

    let mut before = ThreadView::read(s, &w.thread).await;
    assert_eq!(ok(s.delete_snapshots(&w.thread).await, "delete"), 1);
    assert_eq!(
        ok(s.snapshot(&w.thread, LATEST).await, "after delete"),
        None
    );
    before.snapshot = None;
    before.assert_unchanged(s, "delete_snapshots").await;
    assert_eq!(
        ok(s.snapshot(&n.thread, LATEST).await, "neighbour"),
        Some(theirs),
        "another thread's snapshot must survive"
    );
    assert_eq!(ok(s.delete_snapshots(&w.thread).await, "again"), 0);

    let again = build::snapshot(w.run.run_id, 3, r#"{"v":3}"#);
    let commit = with_snapshot(&w, vec![build::step(w.run.run_id, 3)], again.clone());
    w.commit(s, commit).await;
    assert_eq!(
        ok(s.snapshot(&w.thread, LATEST).await, "rewritten"),
        Some(again)
    );

    let ghost = build::thread_id("snap-delete-ghost");
    assert_eq!(
        err(
            s.delete_snapshots(&ghost).await,
            "delete on a missing thread"
        ),
        Error::ThreadNotFound { thread_id: ghost }
    );
}

/// A snapshot must stand inside the log as it is after the commit (`1 ..= new head`);
/// otherwise `InvalidCommit`, and the commit's events are not written either.
pub async fn snapshot_outside_log_is_invalid(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "snap-outside").await;
    w.steps(s, 1).await;
    let r = w.run.run_id;
    let before = ThreadView::read(s, &w.thread).await;
    for (what, at_seq) in [
        ("past the new head", 4),
        ("at seq 0", 0),
        ("far past", 1000),
    ] {
        let commit = with_snapshot(
            &w,
            vec![build::step(r, 3)],
            build::snapshot(r, at_seq, "{}"),
        );
        let e = err(s.commit(commit).await, what);
        assert_invalid_commit(&e, &w.thread, what);
        before.assert_unchanged(s, what).await;
    }

    let t = build::thread_id("snap-outside-new");
    let run = build::run_record(&t, build::GRAPH, 1);
    let commit = Commit {
        snapshot: Some(build::snapshot(run.run_id, 2, "{}")),
        ..build::create(&run, vec![build::started(&run, 1)])
    };
    let e = err(
        s.commit(commit).await,
        "snapshot past the head of a new thread",
    );
    assert_invalid_commit(&e, &t, "snapshot past the head of a new thread");
    assert_no_thread(s, &t, "rejected creation with a snapshot").await;
}

/// A commit may carry only a snapshot (of a seq already in the log): the head does not
/// move, the log is untouched, the snapshot reads back.
pub async fn snapshot_only_commit(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "snap-only").await;
    w.steps(s, 2).await;
    let before = ThreadView::read(s, &w.thread).await;
    let snap = build::snapshot(w.run.run_id, 2, r#"{"only":true}"#);
    let receipt = w.commit(s, with_snapshot(&w, vec![], snap.clone())).await;
    assert_eq!(receipt.head, Seq(3));
    assert_eq!(
        ok(s.snapshot(&w.thread, LATEST).await, "snapshot"),
        Some(snap)
    );
    assert_eq!(all_events(s, &w.thread).await, before.events);
    let record = crate::check::thread_record(s, &w.thread).await;
    assert_eq!(record.head, Seq(3));
}

/// A snapshot naming a run other than the one writing the commit (the created run, the run
/// whose status is set, or the thread's active run) fails with `InvalidCommit` and changes
/// nothing: an unknown run, an earlier run of the thread, or any run once the thread has
/// no active run.
pub async fn snapshot_of_another_run_is_invalid(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "snap-owner").await;
    w.steps(s, 1).await;
    let first = w.run.run_id;
    w.complete(s).await;
    let run = w.next_run(s).await;
    w.steps(s, 1).await;
    let (t, r, h) = (w.thread.clone(), run.run_id, w.head);
    let stranger = oris_core::id::RunId::generate();

    let step = || vec![build::step(r, h + 1)];
    let cases = [
        (
            "an append with an unknown run's snapshot",
            with_snapshot(&w, step(), build::snapshot(stranger, h + 1, "{}")),
        ),
        (
            "an append with an earlier run's snapshot",
            with_snapshot(&w, step(), build::snapshot(first, h + 1, "{}")),
        ),
        (
            "a snapshot-only commit naming an earlier run",
            with_snapshot(&w, vec![], build::snapshot(first, 2, "{}")),
        ),
        (
            "a terminal commit with an earlier run's snapshot",
            Commit {
                snapshot: Some(build::snapshot(first, h, "{}")),
                ..build::finish(&t, h, r, build::status_completed(h), vec![])
            },
        ),
    ];
    for (what, commit) in cases {
        let before = ThreadView::read(s, &t).await;
        let e = err(s.commit(commit).await, what);
        assert_invalid_commit(&e, &t, what);
        before.assert_unchanged(s, what).await;
    }

    // The writer's own snapshot is accepted, with a creation as with a status change.
    let mine = build::snapshot(r, h + 1, r#"{"mine":true}"#);
    let commit = Commit {
        snapshot: Some(mine.clone()),
        ..build::finish(&t, h, r, build::status_completed(h + 1), step())
    };
    w.commit(s, commit).await;
    assert_eq!(ok(s.snapshot(&t, LATEST).await, "snapshot"), Some(mine));

    // No active run: no run may write a snapshot without writing the commit.
    let what = "a snapshot-only commit on a thread without an active run";
    let before = ThreadView::read(s, &t).await;
    let e = err(
        s.commit(with_snapshot(&w, vec![], build::snapshot(r, w.head, "{}")))
            .await,
        what,
    );
    assert_invalid_commit(&e, &t, what);
    before.assert_unchanged(s, what).await;

    let n = build::thread_id("snap-owner-new");
    let created = build::run_record(&n, build::GRAPH, 1);
    let what = "a creation with another run's snapshot";
    let commit = Commit {
        snapshot: Some(build::snapshot(stranger, 1, "{}")),
        ..build::create(&created, vec![build::started(&created, 1)])
    };
    let e = err(s.commit(commit).await, what);
    assert_invalid_commit(&e, &n, what);
    assert_no_thread(s, &n, what).await;
    let own = build::snapshot(created.run_id, 1, "{}");
    let commit = Commit {
        snapshot: Some(own.clone()),
        ..build::create(&created, vec![build::started(&created, 1)])
    };
    ok(s.commit(commit).await, "a creation with its own snapshot");
    assert_eq!(ok(s.snapshot(&n, LATEST).await, "snapshot"), Some(own));
}
