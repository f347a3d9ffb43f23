//! Pending runs (the multitask strategy `enqueue`): `push_pending` queues a run per thread
//! at the next position, `pending_runs` reads a thread's queue oldest first,
//! `pending_threads` finds the threads whose head may start (pending runs, no unfinished
//! run), `remove_pending` deletes one; deleting a thread deletes its pending runs.

use std::sync::Arc;

use oris_core::event::Payload;
use oris_core::id::{RunId, ThreadId};
use oris_core::store::{Error, PendingRun, Store};

use crate::build;
use crate::check::{err, ok};
use crate::writer::Writer;

/// A pending run of `thread` created at `build::at(at)`, whose request is `request_json`.
fn pending(thread: &ThreadId, at: u64, request_json: &str) -> PendingRun {
    PendingRun {
        run_id: RunId::generate(),
        thread_id: thread.clone(),
        // Ignored by the store: it assigns the position.
        position: 999,
        graph: build::GRAPH.to_owned(),
        graph_version: "v\"1\" ü".to_owned(),
        request: Payload::from_json(request_json.to_owned()).expect("test request is JSON"),
        created_at: build::at(at),
    }
}

async fn queue(s: &dyn Store, thread: &ThreadId, what: &str) -> Vec<PendingRun> {
    ok(
        s.pending_runs(thread).await,
        &format!("pending_runs {what}"),
    )
}

async fn push(s: &dyn Store, run: &PendingRun, what: &str) -> u64 {
    ok(s.push_pending(run).await, &format!("push_pending {what}"))
}

/// A new store has no pending runs. Pushed runs get positions 1, 2, 3 per thread (the
/// position given is ignored; another thread counts on its own) and read back exactly,
/// request JSON byte for byte, lowest position first. A duplicate id is `AlreadyExists`
/// and changes nothing. `remove_pending` deletes one run (`true`), then answers `false`
/// for it and for unknown ids. The next push follows the highest pending position; a
/// thread whose queue emptied starts again at 1.
pub async fn pending_runs_queue_per_thread(store: Arc<dyn Store>) {
    let s = &*store;
    let a = build::thread_id("pending-a");
    let b = build::thread_id("pending-b");
    assert_eq!(queue(s, &a, "of a new store").await, vec![]);
    assert_eq!(
        ok(
            s.pending_threads(10).await,
            "pending_threads of a new store"
        ),
        Vec::<ThreadId>::new()
    );

    let runs = [
        pending(
            &a,
            5,
            r#"{"input": {"z": 1, "a": [1.50, "ü"]},  "priority": -3}"#,
        ),
        pending(&a, 3, r#"{"input":null}"#),
        pending(&a, 4, r#"  "text with \"quotes\""  "#),
    ];
    let other = pending(&b, 1, "{}");
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(
            push(s, r, "on thread a").await,
            i as u64 + 1,
            "positions count from 1 per thread, in push order (not creation time)"
        );
        if i == 0 {
            assert_eq!(
                push(s, &other, "on thread b").await,
                1,
                "thread b counts alone"
            );
        }
    }
    let expected: Vec<PendingRun> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| PendingRun {
            position: i as u64 + 1,
            ..r.clone()
        })
        .collect();
    assert_eq!(
        queue(s, &a, "after three pushes").await,
        expected,
        "read back exactly, oldest position first"
    );
    assert_eq!(
        queue(s, &b, "of thread b").await,
        vec![PendingRun {
            position: 1,
            ..other.clone()
        }]
    );

    // A duplicate id is refused, also on another thread.
    let dup = PendingRun {
        thread_id: b.clone(),
        ..runs[1].clone()
    };
    let e = err(s.push_pending(&dup).await, "push of a duplicate id");
    assert!(
        matches!(e, Error::AlreadyExists { .. }),
        "duplicate pending run id: {e:?}"
    );
    assert_eq!(queue(s, &a, "after the duplicate").await, expected);
    assert_eq!(queue(s, &b, "after the duplicate").await.len(), 1);

    // Removal.
    assert!(ok(
        s.remove_pending(runs[1].run_id).await,
        "remove the middle run"
    ));
    assert!(
        !ok(s.remove_pending(runs[1].run_id).await, "remove it again"),
        "a removed run is gone"
    );
    assert!(
        !ok(s.remove_pending(RunId::generate()).await, "remove unknown"),
        "unknown id"
    );
    assert_eq!(
        queue(s, &a, "after a removal").await,
        vec![expected[0].clone(), expected[2].clone()]
    );
    let fourth = pending(&a, 6, "[4]");
    assert_eq!(
        push(s, &fourth, "after a removal").await,
        4,
        "the next position follows the highest pending one"
    );
    for r in [&runs[0], &runs[2], &fourth] {
        assert!(ok(s.remove_pending(r.run_id).await, "empty thread a"));
    }
    assert_eq!(queue(s, &a, "emptied").await, vec![]);
    assert_eq!(
        push(s, &pending(&a, 7, "5"), "on an emptied queue").await,
        1,
        "an emptied queue starts at 1 again"
    );
    assert_eq!(queue(s, &b, "at the end").await.len(), 1, "b untouched");
}

/// `pending_threads` lists the threads with pending runs and no unfinished run — no thread
/// record, or no active run — by the creation time of their oldest pending run, at most
/// `limit` (0: none). A thread whose run is unfinished is left out until the run ends; a
/// new run takes it out again; removing its last pending run takes it out for good.
/// Deleting a thread deletes its pending runs.
pub async fn pending_threads_are_free_threads_with_pending_runs(store: Arc<dyn Store>) {
    let s = &*store;
    let threads = |limit: usize| async move {
        ok(
            s.pending_threads(limit).await,
            &format!("pending_threads({limit})"),
        )
    };

    // busy: a running run and a pending one.
    let mut busy = Writer::start(s, "pending-busy").await;
    let busy_run = pending(&busy.thread, 1, "1");
    push(s, &busy_run, "behind a running run").await;
    // idle: its run completed; two pending runs, the older created at 4.
    let mut idle = Writer::start(s, "pending-idle").await;
    idle.complete(s).await;
    push(s, &pending(&idle.thread, 4, "2"), "on an idle thread").await;
    push(s, &pending(&idle.thread, 2, "3"), "on an idle thread").await;
    // fresh: no thread record at all, pending created at 3.
    let fresh = build::thread_id("pending-fresh");
    let fresh_run = pending(&fresh, 3, "4");
    push(s, &fresh_run, "on a thread without record").await;
    // done: completed, nothing pending.
    let mut done = Writer::start(s, "pending-done").await;
    done.complete(s).await;

    assert_eq!(
        threads(10).await,
        vec![fresh.clone(), idle.thread.clone()],
        "free threads with pending runs, by their oldest (lowest position) pending run's \
         creation: fresh (3) before idle (4); busy has an unfinished run"
    );
    assert_eq!(threads(1).await, vec![fresh.clone()], "at most limit");
    assert_eq!(threads(0).await, Vec::<ThreadId>::new(), "limit 0");

    busy.complete(s).await;
    assert_eq!(
        threads(10).await,
        vec![busy.thread.clone(), fresh.clone(), idle.thread.clone()],
        "a thread whose run ended is listed"
    );
    idle.next_run(s).await;
    assert_eq!(
        threads(10).await,
        vec![busy.thread.clone(), fresh.clone()],
        "a new run makes the thread busy again"
    );
    assert!(ok(s.remove_pending(fresh_run.run_id).await, "remove"));
    assert_eq!(threads(10).await, vec![busy.thread.clone()]);

    ok(s.delete_thread(&busy.thread).await, "delete busy thread");
    assert_eq!(
        queue(s, &busy.thread, "of a deleted thread").await,
        vec![],
        "deleting a thread deletes its pending runs"
    );
    assert!(
        !ok(s.remove_pending(busy_run.run_id).await, "remove deleted"),
        "its pending run is gone"
    );
    assert_eq!(threads(10).await, Vec::<ThreadId>::new());
    assert_eq!(
        queue(s, &idle.thread, "of a busy thread").await.len(),
        2,
        "the idle thread's queue stays while its run is unfinished"
    );
}
