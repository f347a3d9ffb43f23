//! Operator edits of an idle thread: a commit made only of `StateUpdated` events, written
//! by the thread's last run after it ended.

use std::sync::Arc;

use oris_core::event::Event;
use oris_core::id::RunId;
use oris_core::store::{Commit, Error, Store};

use crate::build::{self, GRAPH};
use crate::check::{
    FullView, all_events, assert_invalid_commit, assert_no_thread, assert_thread, err, ok,
    run_record, thread_record,
};
use crate::writer::Writer;

/// An edit of the thread at `head` by `run`: one `StateUpdated` event per update.
fn edit(w: &Writer, run: RunId, updates: &[&str]) -> Commit {
    let events: Vec<Event> = updates
        .iter()
        .enumerate()
        .map(|(i, u)| build::state_updated(run, w.head + 1 + i as u64, "editor", u))
        .collect();
    build::append(&w.thread, w.head, events)
}

/// A thread without an active run accepts a commit made only of `StateUpdated` events
/// written by its last run, whatever way that run ended: the head advances, the events read
/// back, the run and thread records are otherwise unchanged, and the next run continues
/// after the edit. The same events by another run (an older run of the thread, another
/// thread's, an unknown one), or mixed with another kind of event, are `InvalidCommit`
/// and write nothing. While a run is active only that run writes, edits included.
pub async fn idle_thread_accepts_edits_by_last_run(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "edits").await;
    let first = w.run.run_id;
    w.steps(s, 1).await;
    w.complete(s).await;
    let ended = run_record(s, first).await;

    // Edits by the last run.
    let c = edit(&w, first, &[r#"{"log":["edit"], "n" :1.50}"#]);
    let events = c.events.clone();
    w.commit(s, c).await;
    assert_eq!(w.head, 4, "the edit advances the head");
    assert_thread(&thread_record(s, &w.thread).await, 4, None, Some(first));
    assert_eq!(
        run_record(s, first).await,
        ended,
        "the run record is unchanged"
    );
    assert_eq!(
        all_events(s, &w.thread).await[3..],
        events[..],
        "the edit reads back"
    );
    let c = edit(&w, first, &["{}", "[]"]);
    w.commit(s, c).await;
    assert_thread(&thread_record(s, &w.thread).await, 6, None, Some(first));

    // Rejections.
    let other = Writer::start(s, "edits-other").await;
    let r = first;
    let h = w.head;
    let mixed = |events: Vec<Event>| build::append(&w.thread, h, events);
    let cases: Vec<(&str, Commit)> = vec![
        (
            "an edit by an unknown run",
            edit(&w, RunId::generate(), &["{}"]),
        ),
        (
            "an edit by another thread's run",
            edit(&w, other.run.run_id, &["{}"]),
        ),
        (
            "an edit followed by a step",
            mixed(vec![
                build::state_updated(r, h + 1, "editor", "{}"),
                build::step(r, h + 2),
            ]),
        ),
        (
            "a step followed by an edit",
            mixed(vec![
                build::step(r, h + 1),
                build::state_updated(r, h + 2, "editor", "{}"),
            ]),
        ),
        (
            "an edit with a RunResumed",
            mixed(vec![
                build::state_updated(r, h + 1, "editor", "{}"),
                build::run_resumed(r, h + 2),
            ]),
        ),
        (
            "an edit with an EventReceived",
            mixed(vec![
                build::event_received(r, h + 1, "paid", None, None),
                build::state_updated(r, h + 2, "editor", "{}"),
            ]),
        ),
        (
            "an edit by the last run and one by another",
            mixed(vec![
                build::state_updated(r, h + 1, "editor", "{}"),
                build::state_updated(other.run.run_id, h + 2, "editor", "{}"),
            ]),
        ),
    ];
    let before = FullView::read(s, &w.thread).await;
    let before_other = FullView::read(s, &other.thread).await;
    for (what, commit) in cases {
        assert_invalid_commit(&err(s.commit(commit).await, what), &w.thread, what);
        before.assert_unchanged(s, what).await;
        before_other.assert_unchanged(s, what).await;
    }

    let what = "an edit of an unknown thread";
    let ghost = build::thread_id("edits-ghost");
    let commit = build::append(&ghost, 0, vec![build::state_updated(r, 1, "editor", "{}")]);
    assert_eq!(
        err(s.commit(commit).await, what),
        Error::ThreadNotFound {
            thread_id: ghost.clone()
        },
        "{what}"
    );
    assert_no_thread(s, &ghost, what).await;

    // The next run continues after the edits; while it is active, only it writes.
    let second = w.next_run(s).await.run_id;
    assert_eq!(run_record(s, second).await.first_seq.0, 7);
    let before = FullView::read(s, &w.thread).await;
    let what = "an edit by the previous run while a run is active";
    assert_invalid_commit(
        &err(s.commit(edit(&w, first, &["{}"])).await, what),
        &w.thread,
        what,
    );
    before.assert_unchanged(s, what).await;
    let c = edit(&w, second, &[r#"{"by":"active run"}"#]);
    w.commit(s, c).await;

    // After the second run ends (cancelled), it is the one that edits.
    w.finish(s, build::status_cancelled("stop")).await;
    let before = FullView::read(s, &w.thread).await;
    let what = "an edit by a run that is no longer the last";
    assert_invalid_commit(
        &err(s.commit(edit(&w, first, &["{}"])).await, what),
        &w.thread,
        what,
    );
    before.assert_unchanged(s, what).await;
    let c = edit(&w, second, &[r#"{"after":"cancel"}"#]);
    w.commit(s, c).await;
    assert_thread(
        &thread_record(s, &w.thread).await,
        w.head,
        None,
        Some(second),
    );
    assert_eq!(
        run_record(s, second).await.status,
        build::status_cancelled("stop"),
        "an edit does not change the run's status"
    );

    // And the next run starts after them.
    let next = build::run_record(&w.thread, GRAPH, w.head + 1);
    ok(
        s.commit(build::create(
            &next,
            vec![build::started(&next, w.head + 1)],
        ))
        .await,
        "a run after the edits",
    );
}
