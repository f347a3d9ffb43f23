//! Due timers: waiting runs found by their wake-up time.

use std::sync::Arc;

use oris_core::id::{RunId, Timestamp};
use oris_core::status::RunStatus;
use oris_core::store::Store;

use crate::build;
use crate::check::ok;
use crate::writer::Writer;

fn waiting(until: Option<i64>) -> RunStatus {
    RunStatus::Waiting {
        until: until.map(Timestamp),
        events: vec!["e".into()],
    }
}

async fn ids(store: &dyn Store, now: i64, limit: usize) -> Vec<RunId> {
    ok(store.due_runs(Timestamp(now), limit).await, "due_runs")
        .into_iter()
        .map(|r| r.run_id)
        .collect()
}

/// `due_runs(now)` lists exactly the waiting runs whose wake-up time is at or before `now`,
/// earliest first, bounded by `limit`; a waiting run without a time (waiting only for an
/// event), a running run, and a run that left `waiting` are not listed.
pub async fn due_runs_are_found_by_wake_time(store: Arc<dyn Store>) {
    let s = &*store;
    let mut late = Writer::start(s, "due-late").await;
    let mut early = Writer::start(s, "due-early").await;
    let mut untimed = Writer::start(s, "due-untimed").await;
    let mut woken = Writer::start(s, "due-woken").await;
    let running = Writer::start(s, "due-running").await;
    for (w, until) in [
        (&mut late, Some(5_000)),
        (&mut early, Some(1_000)),
        (&mut untimed, None),
        (&mut woken, Some(2_000)),
    ] {
        let c = build::change(&w.thread, w.head, w.run.run_id, waiting(until));
        w.commit(s, c).await;
    }
    // `woken` continues: it is no longer due.
    let c = build::change(
        &woken.thread,
        woken.head,
        woken.run.run_id,
        RunStatus::Running,
    );
    woken.commit(s, c).await;

    assert_eq!(
        ids(s, 999, 10).await,
        Vec::<RunId>::new(),
        "nothing due yet"
    );
    assert_eq!(
        ids(s, 1_000, 10).await,
        vec![early.run.run_id],
        "due at its time"
    );
    assert_eq!(
        ids(s, 10_000, 10).await,
        vec![early.run.run_id, late.run.run_id],
        "earliest first"
    );
    assert_eq!(ids(s, 10_000, 1).await, vec![early.run.run_id], "limit");
    let due = ok(s.due_runs(Timestamp(10_000), 10).await, "due_runs");
    assert_eq!(due[1].status, waiting(Some(5_000)), "the record reads back");
    assert!(!ids(s, i64::MAX, 100).await.contains(&running.run.run_id));
    assert!(!ids(s, i64::MAX, 100).await.contains(&untimed.run.run_id));

    // Once it is cancelled, a run is no longer due.
    let c = build::change(
        &early.thread,
        early.head,
        early.run.run_id,
        build::status_cancelled("no longer needed"),
    );
    early.commit(s, c).await;
    assert_eq!(ids(s, 10_000, 10).await, vec![late.run.run_id]);
}
