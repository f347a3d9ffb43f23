//! Reading the log: paging and bounds.

use std::sync::Arc;

use oris_core::id::{RunId, Seq};
use oris_core::store::{RunFilter, Store};

use crate::build;
use crate::check::{ALL, all_events, ok};
use crate::writer::Writer;

/// `events(after, limit)` returns exactly the events with seq in `after+1 ..`, at most
/// `limit` of them, across commit boundaries, never another thread's; past the head or for
/// an unknown thread it returns nothing; `limit` 0 returns nothing.
pub async fn events_paging_returns_exact_slices(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "paging").await;
    // A neighbour thread whose events must never leak into the pages.
    let mut n = Writer::start(s, "paging-neighbour").await;
    for k in [2, 3, 4] {
        w.steps(s, k).await;
        n.steps(s, k + 1).await;
    }
    let all = all_events(s, &w.thread).await;
    assert_eq!(all.len(), 10);
    crate::check::assert_contiguous(&w.thread, &all);
    assert!(all.iter().all(|e| e.run_id == w.run.run_id));

    for after in 0..=12u64 {
        for limit in [0, 1, 2, 3, 7, 10, 11, ALL] {
            let got = ok(
                s.events(&w.thread, Seq(after), limit).await,
                &format!("events(after {after}, limit {limit})"),
            );
            let want: Vec<_> = all
                .iter()
                .skip(after as usize)
                .take(limit)
                .cloned()
                .collect();
            assert_eq!(got, want, "events(after {after}, limit {limit})");
        }
    }

    // Walking pages by the last seq seen rebuilds the log.
    for page in [1, 3, 4] {
        let (mut after, mut walked) = (Seq::ZERO, Vec::new());
        loop {
            let got = ok(s.events(&w.thread, after, page).await, "page");
            assert!(got.len() <= page, "page of {page} returned {}", got.len());
            let Some(last) = got.last() else { break };
            after = last.seq;
            walked.extend(got);
        }
        assert_eq!(walked, all, "walking pages of {page}");
    }

    let ghost = build::thread_id("paging-ghost");
    assert_eq!(
        ok(s.events(&ghost, Seq::ZERO, ALL).await, "unknown"),
        vec![]
    );
}

/// Reads accept the extreme values of their bounds: `after = u64::MAX` (nothing),
/// `limit = usize::MAX` (everything), `at_or_before = u64::MAX` (the latest snapshot), and
/// run cursors below and above every id. A backend casting these to a signed SQL integer
/// must saturate, not wrap or fail.
pub async fn extreme_read_bounds(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "bounds").await;
    let snap = build::snapshot(w.run.run_id, 2, r#"{"x":2}"#);
    let commit = oris_core::store::Commit {
        snapshot: Some(snap.clone()),
        ..build::append(&w.thread, 1, vec![build::step(w.run.run_id, 2)])
    };
    w.commit(s, commit).await;
    w.steps(s, 1).await;
    let all = all_events(s, &w.thread).await;
    assert_eq!(all.len(), 3);
    let t = &w.thread;

    let events = |after: u64, limit: usize| async move {
        ok(
            s.events(t, Seq(after), limit).await,
            &format!("events(after {after}, limit {limit})"),
        )
    };
    assert_eq!(events(0, usize::MAX).await, all, "limit usize::MAX");
    assert_eq!(events(1, usize::MAX).await, all[1..], "after 1, limit MAX");
    assert_eq!(events(u64::MAX, ALL).await, vec![], "after u64::MAX");
    assert_eq!(
        events(u64::MAX, usize::MAX).await,
        vec![],
        "after MAX, limit MAX"
    );
    assert_eq!(events(i64::MAX as u64, 5).await, vec![], "after i64::MAX");
    assert_eq!(
        events(i64::MAX as u64 + 1, 5).await,
        vec![],
        "after i64::MAX + 1"
    );

    let snapshot = |bound: u64| async move {
        ok(
            s.snapshot(t, Seq(bound)).await,
            &format!("snapshot(at_or_before {bound})"),
        )
    };
    assert_eq!(
        snapshot(u64::MAX).await,
        Some(snap.clone()),
        "bound u64::MAX"
    );
    assert_eq!(
        snapshot(i64::MAX as u64 + 1).await,
        Some(snap),
        "bound 2^63"
    );
    assert_eq!(snapshot(0).await, None, "bound 0");

    let run = w.run.run_id;
    let cursor = |after: Option<RunId>, limit: usize| RunFilter {
        after,
        limit,
        ..RunFilter::default()
    };
    let ids = |f: RunFilter| async move { crate::check::run_ids(s, &f).await };
    assert_eq!(ids(cursor(None, usize::MAX)).await, vec![run], "limit MAX");
    let lowest = RunId::from_uuid(uuid::Uuid::nil());
    let highest = RunId::from_uuid(uuid::Uuid::max());
    assert_eq!(ids(cursor(Some(lowest), 0)).await, vec![run], "after nil");
    assert_eq!(ids(cursor(Some(highest), 0)).await, vec![], "after max");
}
