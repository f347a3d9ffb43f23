//! Thread creation, appends, the compare-and-set head, and the succession of runs.

use std::sync::Arc;

use oris_core::id::{RunId, Seq, Timestamp};
use oris_core::store::{Commit, Error, RunFilter, Store};

use crate::build::{self, GRAPH};
use crate::check::{
    LATEST, ThreadView, all_events, assert_no_thread, assert_thread, err, ok, run_ids, run_record,
    thread_record,
};
use crate::writer::Writer;

/// The first commit (a run creation with `RunStarted` at seq 1) creates the thread, and
/// `thread`, `run`, `runs` and `events` read back exactly what was written.
pub async fn first_commit_creates_thread(store: Arc<dyn Store>) {
    let s = &*store;
    let t = build::thread_id("first");
    assert_eq!(ok(s.thread(&t).await, "thread() before creation"), None);

    let run = build::run_record(&t, GRAPH, 1);
    let started = build::started(&run, 1);
    let receipt = ok(
        s.commit(build::create(&run, vec![started.clone()])).await,
        "creating commit",
    );
    assert_eq!(receipt.head, Seq(1), "receipt head of the creating commit");

    let record = thread_record(s, &t).await;
    assert_eq!(record.thread_id, t, "thread record: thread_id");
    assert_eq!(record.graph, GRAPH, "thread record: graph");
    assert_thread(&record, 1, Some(run.run_id), Some(run.run_id));
    assert!(
        record.created_at <= record.updated_at,
        "thread record: created_at {:?} is after updated_at {:?}",
        record.created_at,
        record.updated_at
    );
    assert_eq!(
        run_record(s, run.run_id).await,
        run,
        "run() must return the created run record exactly"
    );
    assert_eq!(
        ok(s.runs(&RunFilter::default()).await, "runs()"),
        vec![run.clone()],
        "runs() must list exactly the created run"
    );
    assert_eq!(
        all_events(s, &t).await,
        vec![started],
        "events() must return the RunStarted event exactly"
    );
    assert_eq!(
        ok(s.snapshot(&t, LATEST).await, "snapshot()"),
        None,
        "no snapshot was written"
    );
}

/// A commit based on the current head succeeds and moves the head past its events; the
/// thread's `created_at` never changes.
pub async fn append_with_expected_head_advances(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "append").await;
    let created = thread_record(s, &w.thread).await;

    let mut expected = all_events(s, &w.thread).await;
    for n in [3, 1, 5] {
        let head = w.head;
        expected.extend(w.steps(s, n).await);
        assert_eq!(w.head, head + n, "head after appending {n} event(s)");
        let record = thread_record(s, &w.thread).await;
        assert_thread(&record, w.head, Some(w.run.run_id), Some(w.run.run_id));
        assert_eq!(
            record.created_at, created.created_at,
            "an append must not change the thread's created_at"
        );
        assert!(record.updated_at >= record.created_at);
        assert_eq!(all_events(s, &w.thread).await, expected, "log after append");
    }
    assert_eq!(
        run_record(s, w.run.run_id).await,
        w.run,
        "appends without a status change must not touch the run record"
    );
}

/// A commit based on a stale (or future) head fails with `Conflict { expected, actual }`,
/// whatever else it carries, and changes nothing.
pub async fn wrong_expected_head_conflicts(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "conflict").await;
    w.steps(s, 1).await;
    let snap = build::snapshot(w.run.run_id, 3, r#"{"at":3}"#);
    let commit = Commit {
        snapshot: Some(snap),
        ..build::append(&w.thread, 2, vec![build::step(w.run.run_id, 3)])
    };
    w.commit(s, commit).await;
    let before = ThreadView::read(s, &w.thread).await;
    let (t, run) = (w.thread.clone(), w.run.run_id);

    let next_run = build::run_record(&t, GRAPH, 1);
    let cases = [
        ("behind", build::append(&t, 2, vec![build::step(run, 3)])),
        (
            "far behind",
            build::append(&t, 0, vec![build::step(run, 1)]),
        ),
        ("ahead", build::append(&t, 4, vec![build::step(run, 5)])),
        (
            "stale creation",
            build::create(&next_run, vec![build::started(&next_run, 1)]),
        ),
        (
            "stale status change",
            build::finish(&t, 1, run, build::status_completed(1), vec![]),
        ),
        (
            "stale snapshot",
            Commit {
                snapshot: Some(build::snapshot(run, 2, "{}")),
                ..build::append(&t, 2, vec![])
            },
        ),
    ];
    for (what, commit) in cases {
        let expected = commit.expected_head;
        let e = err(s.commit(commit).await, what);
        assert_eq!(
            e,
            Error::Conflict {
                thread_id: t.clone(),
                expected,
                actual: Seq(3),
            },
            "{what}"
        );
        before.assert_unchanged(s, what).await;
    }
    assert_eq!(ok(s.run(next_run.run_id).await, "run()"), None);
}

/// A commit with no events, run write or snapshot is accepted at the right head (and moves
/// nothing) and refused with `Conflict` at a wrong one.
pub async fn empty_commit_checks_head(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "empty").await;
    w.steps(s, 1).await;
    let before = ThreadView::read(s, &w.thread).await;

    let e = err(s.commit(build::append(&w.thread, 1, vec![])).await, "stale");
    assert_eq!(
        e,
        Error::Conflict {
            thread_id: w.thread.clone(),
            expected: Seq(1),
            actual: Seq(2),
        }
    );
    before.assert_unchanged(s, "stale empty commit").await;

    let receipt = ok(
        s.commit(build::append(&w.thread, 2, vec![])).await,
        "empty commit at the head",
    );
    assert_eq!(receipt.head, Seq(2));
    let mut after = ThreadView::read(s, &w.thread).await;
    // The empty commit may touch `updated_at`; everything else must be as it was.
    let normalise = |v: &mut ThreadView| {
        if let Some(t) = v.thread.as_mut() {
            t.updated_at = Timestamp(0);
        }
    };
    let mut before = before;
    normalise(&mut before);
    normalise(&mut after);
    assert_eq!(after, before, "an empty commit must change nothing");
}

/// Writes to a thread that does not exist fail with `ThreadNotFound` (or `Conflict` when
/// they expect a non-zero head, as the head of a missing thread is 0) and create nothing; a
/// status change of a run that does not exist fails with `RunNotFound`; reads of missing
/// things return `None` or nothing.
pub async fn unknown_thread_or_run_is_not_found(store: Arc<dyn Store>) {
    let s = &*store;
    let ghost = build::thread_id("ghost");
    let stranger = RunId::generate();
    let not_found = Error::ThreadNotFound {
        thread_id: ghost.clone(),
    };

    let cases = [
        (
            "append to a missing thread",
            build::append(&ghost, 0, vec![build::step(stranger, 1)]),
        ),
        (
            "empty commit on a missing thread",
            build::append(&ghost, 0, vec![]),
        ),
        (
            "status change on a missing thread",
            build::finish(&ghost, 0, stranger, build::status_completed(1), vec![]),
        ),
        (
            "snapshot on a missing thread",
            Commit {
                snapshot: Some(build::snapshot(stranger, 1, "{}")),
                ..build::append(&ghost, 0, vec![build::step(stranger, 1)])
            },
        ),
    ];
    for (what, commit) in cases {
        assert_eq!(err(s.commit(commit).await, what), not_found, "{what}");
        assert_no_thread(s, &ghost, what).await;
    }
    let e = err(
        s.commit(build::append(&ghost, 5, vec![build::step(stranger, 6)]))
            .await,
        "append at head 5 to a missing thread",
    );
    assert_eq!(
        e,
        Error::Conflict {
            thread_id: ghost.clone(),
            expected: Seq(5),
            actual: Seq(0),
        }
    );
    assert_no_thread(s, &ghost, "append at head 5").await;

    assert_eq!(ok(s.run(stranger).await, "run(unknown)"), None);
    assert_eq!(ok(s.events(&ghost, Seq::ZERO, 10).await, "events"), vec![]);
    assert_eq!(ok(s.snapshot(&ghost, LATEST).await, "snapshot"), None);
    let by_thread = RunFilter {
        thread_id: Some(ghost.clone()),
        ..RunFilter::default()
    };
    assert_eq!(run_ids(s, &by_thread).await, vec![]);
    assert_eq!(
        err(
            s.delete_snapshots(&ghost).await,
            "delete_snapshots(unknown)"
        ),
        not_found,
        "delete_snapshots of a missing thread"
    );

    let w = Writer::start(s, "known").await;
    let before = ThreadView::read(s, &w.thread).await;
    let e = err(
        s.commit(build::finish(
            &w.thread,
            1,
            stranger,
            build::status_cancelled("x"),
            vec![],
        ))
        .await,
        "status change of an unknown run",
    );
    assert_eq!(e, Error::RunNotFound { run_id: stranger });
    before
        .assert_unchanged(s, "status change of an unknown run")
        .await;
}

/// Creating a run while the thread has a queued or running one fails with `RunActive`
/// naming the active run, and changes nothing.
pub async fn second_run_rejected_while_first_active(store: Arc<dyn Store>) {
    let s = &*store;
    // Active and running.
    let w = Writer::start(s, "busy").await;
    let before = ThreadView::read(s, &w.thread).await;
    let second = build::run_record(&w.thread, GRAPH, 2);
    let e = err(
        s.commit(build::create(&second, vec![build::started(&second, 2)]))
            .await,
        "second run while the first is running",
    );
    assert_eq!(
        e,
        Error::RunActive {
            thread_id: w.thread.clone(),
            run_id: w.run.run_id,
        }
    );
    before.assert_unchanged(s, "rejected second run").await;
    assert_eq!(ok(s.run(second.run_id).await, "run(rejected)"), None);

    // Active and queued (created without events: the head stays 0).
    let t = build::thread_id("queued");
    let first = build::queued(build::run_record(&t, GRAPH, 1));
    ok(s.commit(build::create(&first, vec![])).await, "queued run");
    assert_thread(
        &thread_record(s, &t).await,
        0,
        Some(first.run_id),
        Some(first.run_id),
    );
    let before = ThreadView::read(s, &t).await;
    let second = build::run_record(&t, GRAPH, 1);
    let e = err(
        s.commit(build::create(&second, vec![build::started(&second, 1)]))
            .await,
        "second run while the first is queued",
    );
    assert_eq!(
        e,
        Error::RunActive {
            thread_id: t.clone(),
            run_id: first.run_id,
        }
    );
    before.assert_unchanged(s, "rejected second run").await;
}

/// Once a run is finished, the thread's next run starts at `head + 1` and its events
/// continue the same log; `last_run` follows, `runs` lists them in creation order.
pub async fn next_run_continues_the_log(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "succession").await;
    w.steps(s, 2).await;
    w.complete(s).await;
    let first = w.run.run_id;
    assert_thread(&thread_record(s, &w.thread).await, 4, None, Some(first));

    let second = w.next_run(s).await;
    assert_eq!(second.first_seq, Seq(5));
    assert_eq!(run_record(s, second.run_id).await, second);
    assert_thread(
        &thread_record(s, &w.thread).await,
        5,
        Some(second.run_id),
        Some(second.run_id),
    );
    w.steps(s, 1).await;
    w.finish(s, build::status_failed("boom")).await;
    let third = w.next_run(s).await;
    assert_eq!(third.first_seq, Seq(8));

    let events = all_events(s, &w.thread).await;
    crate::check::assert_contiguous(&w.thread, &events);
    let owners: Vec<RunId> = events.iter().map(|e| e.run_id).collect();
    let (a, b, c) = (first, second.run_id, third.run_id);
    assert_eq!(
        owners,
        [a, a, a, a, b, b, b, c],
        "which run wrote each event"
    );
    assert_eq!(events[4], build::started(&second, 5));

    let by_thread = RunFilter {
        thread_id: Some(w.thread.clone()),
        ..RunFilter::default()
    };
    assert_eq!(run_ids(s, &by_thread).await, vec![a, b, c]);
    assert_thread(&thread_record(s, &w.thread).await, 8, Some(c), Some(c));
}

/// A thread belongs to the graph of its first run: a later run of another graph fails
/// with `GraphMismatch` and changes nothing.
pub async fn next_run_of_another_graph_is_rejected(store: Arc<dyn Store>) {
    let s = &*store;
    let t = build::thread_id("graph-bound");
    let mut w = Writer::start_graph(s, &t, "alpha").await;
    w.complete(s).await;
    let before = ThreadView::read(s, &t).await;

    let other = build::run_record(&t, "beta", 3);
    let e = err(
        s.commit(build::create(&other, vec![build::started(&other, 3)]))
            .await,
        "run of another graph",
    );
    assert_eq!(
        e,
        Error::GraphMismatch {
            thread_id: t.clone(),
            existing: "alpha".to_owned(),
            requested: "beta".to_owned(),
        }
    );
    before
        .assert_unchanged(s, "rejected run of another graph")
        .await;
    assert_eq!(ok(s.run(other.run_id).await, "run(rejected)"), None);

    let same = w.next_run(s).await;
    assert_eq!(thread_record(s, &t).await.graph, "alpha");
    assert!(matches!(
        ok(s.run(same.run_id).await, "run()").map(|r| r.graph),
        Some(g) if g == "alpha"
    ));
}
