//! Retention: deleting a thread, pruning its history to a superstep boundary.

use std::sync::Arc;

use oris_core::event::{Event, EventBody, Payload};
use oris_core::id::{Seq, Timestamp};
use oris_core::store::{Error, RunFilter, Store};

use crate::build;
use crate::check::{all_events, assert_invalid_commit, err, ok, thread_record};
use crate::writer::Writer;

/// A `HistoryPruned` base standing at `seq`.
fn base(w: &Writer, seq: u64, state: &str) -> Event {
    Event {
        seq: Seq(seq),
        run_id: w.run.run_id,
        at: Timestamp(0),
        body: EventBody::HistoryPruned {
            state: Payload::from_json(state.to_owned()).expect("test state is JSON"),
            boundary: build::boundary(&["a"]),
        },
    }
}

/// Deleting a thread removes its record, runs, events, snapshot, interrupts and
/// deliveries; other threads are untouched; a thread with an unfinished run is refused
/// (`RunActive`, nothing changes); an unknown thread is `ThreadNotFound`.
pub async fn delete_thread_removes_everything(store: Arc<dyn Store>) {
    let s = &*store;
    let mut keep = Writer::start(s, "retention-keep").await;
    keep.steps(s, 2).await;
    let kept = all_events(s, &keep.thread).await;

    let mut w = Writer::start(s, "retention-delete").await;
    w.steps(s, 3).await;
    let refused = err(s.delete_thread(&w.thread).await, "delete while running");
    assert!(
        matches!(refused, Error::RunActive { .. }),
        "delete while running: {refused:?}"
    );
    assert_eq!(all_events(s, &w.thread).await.len(), 4, "nothing deleted");
    w.complete(s).await;
    ok(
        s.deliver(
            &w.thread,
            "ping",
            Payload::from_json("1".into()).unwrap(),
            None,
            Timestamp(1),
        )
        .await,
        "deliver",
    );
    ok(s.delete_thread(&w.thread).await, "delete");
    assert_eq!(ok(s.thread(&w.thread).await, "thread()"), None);
    assert_eq!(ok(s.run(w.run.run_id).await, "run()"), None);
    assert!(all_events(s, &w.thread).await.is_empty());
    assert!(ok(s.deliveries(&w.thread, false).await, "deliveries").is_empty());
    assert!(ok(s.interrupts(&w.thread).await, "interrupts").is_empty());
    assert_eq!(
        ok(s.snapshot(&w.thread, Seq(u64::MAX)).await, "snapshot"),
        None
    );
    let runs = ok(
        s.runs(&RunFilter {
            thread_id: Some(w.thread.clone()),
            ..Default::default()
        })
        .await,
        "runs",
    );
    assert!(runs.is_empty(), "{runs:?}");
    assert!(matches!(
        err(s.delete_thread(&w.thread).await, "delete again"),
        Error::ThreadNotFound { .. }
    ));
    assert_eq!(
        all_events(s, &keep.thread).await,
        kept,
        "other thread intact"
    );

    // The thread id can be used again from scratch.
    let again = Writer::start(s, "retention-delete").await;
    assert_eq!(again.head, 1);
}

/// Pruning replaces the boundary event at the prune point with the base and deletes the
/// events before it: reads start at the base, later events are unchanged, the head does
/// not move, and appends continue. Prune points that are not boundaries, outside the log,
/// inside the active run, or not a `history_pruned` event are `InvalidCommit` and change
/// nothing.
pub async fn prune_keeps_a_self_contained_log(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "retention-prune").await;
    w.steps(s, 5).await;
    w.complete(s).await;
    // seq 1 started, 2..=6 steps (boundaries), 7 completed.
    let before = all_events(s, &w.thread).await;
    assert_eq!(before.len(), 7);

    // Refused prunes change nothing.
    for (what, b) in [
        ("not a boundary (run_completed)", base(&w, 7, "{}")),
        ("beyond the head", base(&w, 8, "{}")),
        ("seq zero", base(&w, 0, "{}")),
        ("not a history_pruned event", build::step(w.run.run_id, 4)),
    ] {
        let e = err(s.prune(&w.thread, b).await, what);
        assert_invalid_commit(&e, &w.thread, what);
        assert_eq!(all_events(s, &w.thread).await, before, "{what}");
    }

    let pruned_base = base(&w, 4, r#"{"log":["a","b","c"]}"#);
    let deleted = ok(s.prune(&w.thread, pruned_base.clone()).await, "prune");
    assert_eq!(deleted, 3, "events 1..=3 deleted");
    let after = all_events(s, &w.thread).await;
    assert_eq!(after.len(), 4, "{after:?}");
    assert_eq!(after[0].seq, Seq(4));
    assert_eq!(after[0].body, pruned_base.body, "the base reads back");
    assert_eq!(&after[1..], &before[4..], "later events unchanged");
    let page = ok(
        s.events(&w.thread, Seq(4), 10).await,
        "events after the base",
    );
    assert_eq!(page, before[4..].to_vec());
    assert_eq!(thread_record(s, &w.thread).await.head, Seq(7));

    // Pruning again to an earlier point is refused (it is gone); to a later boundary works.
    let e = err(
        s.prune(&w.thread, base(&w, 2, "{}")).await,
        "already pruned",
    );
    assert_invalid_commit(&e, &w.thread, "already pruned");
    assert_eq!(
        ok(s.prune(&w.thread, base(&w, 6, "{}")).await, "prune further"),
        2
    );
    assert_eq!(all_events(s, &w.thread).await.len(), 2);

    // A new run continues the pruned log.
    w.next_run(s).await;
    w.steps(s, 1).await;
    let events = all_events(s, &w.thread).await;
    assert_eq!(events.last().map(|e| e.seq), Some(Seq(9)));

    // Inside the active run: refused.
    let inside = Event {
        run_id: w.run.run_id,
        ..base(&w, 9, "{}")
    };
    let e = err(s.prune(&w.thread, inside).await, "inside the active run");
    assert_invalid_commit(&e, &w.thread, "inside the active run");
    assert_eq!(all_events(s, &w.thread).await, events);
}
