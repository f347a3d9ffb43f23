//! Suspended runs: the `Interrupted` and `Waiting` statuses, their edges, and recovery's
//! view of them (`RunFilter::unfinished`).

use std::sync::Arc;

use oris_core::event::Event;
use oris_core::id::{InterruptId, RunId};
use oris_core::status::{RunStatus, StatusKind, TransitionError};
use oris_core::store::{Error, RunFilter, RunRecord, Store};

use crate::build::{self, GRAPH};
use crate::check::{FullView, err, ok, run_ids, run_record, thread_record};
use crate::writer::Writer;

/// A commit moving the writer's run to `status`, with the events a runtime writes for it:
/// `InterruptRaised` events and `RunSuspended` for `Interrupted`, `RunSuspended` for
/// `Waiting`, `RunResumed` for `Running`, the terminal event for a terminal status.
pub(crate) fn suspension_events(run: RunId, head: u64, status: &RunStatus) -> Vec<Event> {
    let seq = head + 1;
    match status {
        RunStatus::Interrupted { interrupts } => {
            let mut events: Vec<Event> = interrupts
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    build::interrupt_raised(
                        run,
                        seq + i as u64,
                        &p.node,
                        p.interrupt_id,
                        &p.payload.to_string(),
                    )
                })
                .collect();
            let ids: Vec<InterruptId> = interrupts.iter().map(|p| p.interrupt_id).collect();
            events.push(build::run_suspended(
                run,
                seq + events.len() as u64,
                &ids,
                None,
                &[],
            ));
            events
        }
        RunStatus::Waiting { until, events } => {
            let names: Vec<&str> = events.iter().map(String::as_str).collect();
            vec![build::run_suspended(run, seq, &[], *until, &names)]
        }
        RunStatus::Running => vec![build::run_resumed(run, seq)],
        RunStatus::Queued => vec![build::step(run, seq)],
        terminal => vec![build::terminal_event(run, seq, terminal)],
    }
}

/// Moves the writer's run to `status` (which must be allowed), with [`suspension_events`].
pub(crate) async fn move_to(store: &dyn Store, w: &mut Writer, status: RunStatus) {
    let events = suspension_events(w.run.run_id, w.head, &status);
    let commit = build::set_status(&w.thread, w.head, w.run.run_id, status, events);
    w.commit(store, commit).await;
}

/// An interrupted status waiting on `n` fresh interrupts of node `ask`.
fn interrupted(n: usize) -> RunStatus {
    build::status_interrupted(
        (0..n)
            .map(|i| {
                let json = format!(r#"{{"question":"¿ok {i}?","n":[1,2.5,{{"k":null}}]}}"#);
                build::pending(InterruptId::generate(), &format!("ask-{i}"), &json)
            })
            .collect(),
    )
}

/// Running ⇄ Interrupted, Running ⇄ Waiting and Interrupted|Waiting → Cancelled are
/// accepted; the status data (pending interrupts with their JSON, `until`, event names)
/// reads back exactly through `run` and `runs`; only status and `updated_at` change (the
/// run is driven by the library: never ready for a worker, even waiting with a timer); a
/// suspended run stays the thread's active run, a cancelled one does not.
pub async fn suspended_statuses_round_trip(store: Arc<dyn Store>) {
    let s = &*store;
    let paths: [(&str, Vec<RunStatus>); 3] = [
        (
            "suspend-long",
            vec![
                interrupted(2),
                RunStatus::Running,
                build::status_waiting(Some(build::at(500)), &["paid", "shipped 📦"]),
                RunStatus::Running,
                build::status_waiting(None, &["paid"]),
                RunStatus::Running,
                interrupted(1),
                RunStatus::Running,
                build::status_waiting(Some(build::at(501)), &[]),
                build::status_cancelled("timer no longer wanted"),
            ],
        ),
        (
            "suspend-int-x",
            vec![interrupted(3), build::status_cancelled("nobody answered")],
        ),
        (
            "suspend-int-done",
            vec![
                interrupted(1),
                RunStatus::Running,
                build::status_completed(4),
            ],
        ),
    ];
    for (name, statuses) in paths {
        let mut w = Writer::start(s, name).await;
        let mut expected = w.run.clone();
        for status in statuses {
            let what = format!("{name}: → {}", status.kind().as_str());
            move_to(s, &mut w, status.clone()).await;
            let stored = run_record(s, w.run.run_id).await;
            assert_eq!(stored.status, status, "{what}: stored status");
            // Driven by the library, the run is never ready for a worker, whatever its
            // status (a waiting run is woken by the library's timer sweep instead).
            expected = RunRecord {
                status: status.clone(),
                updated_at: stored.updated_at,
                ready_at: None,
                ..expected
            };
            assert_eq!(
                stored, expected,
                "{what}: only status, updated_at and ready_at change"
            );
            let listed = ok(
                s.runs(&RunFilter {
                    thread_id: Some(w.thread.clone()),
                    ..RunFilter::default()
                })
                .await,
                "runs()",
            );
            assert_eq!(listed, vec![stored], "{what}: runs() agrees with run()");
            let record = thread_record(s, &w.thread).await;
            let active = (!status.is_terminal()).then_some(w.run.run_id);
            crate::check::assert_thread(&record, w.head, active, Some(w.run.run_id));
        }
    }
}

/// From `Interrupted` and `Waiting` only `Running` and `Cancelled` are edges; a queued run
/// cannot suspend; a run that ended cannot suspend or resume. Each refused change fails
/// with `InvalidTransition` naming both statuses and writes nothing — not its events, not
/// the interrupts they raise. A suspended run is still active: no second run may start.
pub async fn suspended_statuses_refuse_other_edges(store: Arc<dyn Store>) {
    let s = &*store;
    let refused = |run_id: RunId, from: &'static str, to: &'static str| Error::InvalidTransition {
        run_id,
        transition: TransitionError { from, to },
    };
    let try_refused = async |w: &Writer, status: RunStatus, from: &'static str| {
        let to = status.kind().as_str();
        let what = format!("{}: {from} → {to}", w.thread);
        let raised: Vec<InterruptId> = match &status {
            RunStatus::Interrupted { interrupts } => {
                interrupts.iter().map(|p| p.interrupt_id).collect()
            }
            _ => vec![],
        };
        let before = FullView::read(s, &w.thread).await;
        let events = suspension_events(w.run.run_id, w.head, &status);
        let commit = build::set_status(&w.thread, w.head, w.run.run_id, status, events);
        assert_eq!(
            err(s.commit(commit).await, &what),
            refused(w.run.run_id, from, to),
            "{what}"
        );
        before.assert_unchanged(s, &what).await;
        for id in raised {
            assert_eq!(
                ok(s.interrupt(id).await, "interrupt()"),
                None,
                "{what}: the refused commit's interrupt {id} exists"
            );
        }
    };

    // A queued run cannot suspend.
    let q = build::thread_id("suspend-queued");
    let queued = build::queued(build::run_record(&q, GRAPH, 1));
    ok(s.commit(build::create(&queued, vec![])).await, "queued run");
    let wq = Writer {
        thread: q,
        run: queued,
        head: 0,
    };
    try_refused(&wq, interrupted(1), "queued").await;
    try_refused(&wq, build::status_waiting(None, &["x"]), "queued").await;

    // Neither suspended status leads anywhere but back to running or to cancelled.
    let others = || {
        vec![
            RunStatus::Queued,
            build::status_completed(9),
            build::status_failed("no"),
            interrupted(1),
            build::status_waiting(Some(build::at(7)), &["e"]),
        ]
    };

    let mut w = Writer::start(s, "suspend-refused").await;
    move_to(s, &mut w, interrupted(2)).await;
    for status in others() {
        try_refused(&w, status, "interrupted").await;
    }
    // Still active: a second run is refused, and nothing is written.
    let before = FullView::read(s, &w.thread).await;
    let next = build::run_record(&w.thread, GRAPH, w.head + 1);
    let e = err(
        s.commit(build::create(
            &next,
            vec![build::started(&next, w.head + 1)],
        ))
        .await,
        "a second run while interrupted",
    );
    assert_eq!(
        e,
        Error::RunActive {
            thread_id: w.thread.clone(),
            run_id: w.run.run_id,
        },
        "a second run while interrupted"
    );
    before
        .assert_unchanged(s, "a second run while interrupted")
        .await;

    move_to(s, &mut w, RunStatus::Running).await;
    move_to(s, &mut w, build::status_waiting(None, &["paid"])).await;
    for status in others() {
        try_refused(&w, status, "waiting").await;
    }
    move_to(s, &mut w, build::status_cancelled("enough")).await;
    for status in [
        RunStatus::Running,
        interrupted(1),
        build::status_waiting(None, &["paid"]),
    ] {
        try_refused(&w, status, "cancelled").await;
    }
    assert_eq!(
        run_record(s, w.run.run_id).await.status,
        build::status_cancelled("enough")
    );
}

/// `RunFilter::unfinished()` lists queued, running, interrupted and waiting runs (what
/// recovery must continue), oldest first, and follows their status changes; status filters
/// select `Interrupted` and `Waiting` runs by kind.
pub async fn runs_unfinished_lists_suspended_runs(store: Arc<dyn Store>) {
    let s = &*store;
    // Created in this order (ids ascending).
    let t0 = build::thread_id("unfinished-0");
    let q = build::queued(build::run_record(&t0, GRAPH, 1));
    ok(s.commit(build::create(&q, vec![])).await, "queued run");
    let r = Writer::start(s, "unfinished-1").await;
    let mut i = Writer::start(s, "unfinished-2").await;
    let mut w = Writer::start(s, "unfinished-3").await;
    let mut c = Writer::start(s, "unfinished-4").await;
    let mut x = Writer::start(s, "unfinished-5").await;
    move_to(s, &mut i, interrupted(1)).await;
    move_to(
        s,
        &mut w,
        build::status_waiting(Some(build::at(99)), &["paid"]),
    )
    .await;
    c.complete(s).await;
    move_to(s, &mut x, build::status_waiting(None, &["paid"])).await;
    move_to(s, &mut x, build::status_cancelled("gave up")).await;

    let (q, r, i_id, w_id) = (q.run_id, r.run.run_id, i.run.run_id, w.run.run_id);
    let unfinished = RunFilter::unfinished();
    let by = |kinds: &[StatusKind]| RunFilter {
        statuses: kinds.to_vec(),
        ..RunFilter::default()
    };
    assert_eq!(
        run_ids(s, &unfinished).await,
        vec![q, r, i_id, w_id],
        "unfinished: queued, running, interrupted, waiting"
    );
    assert_eq!(
        run_ids(s, &by(&[StatusKind::Interrupted])).await,
        vec![i_id],
        "interrupted"
    );
    assert_eq!(
        run_ids(s, &by(&[StatusKind::Waiting])).await,
        vec![w_id],
        "waiting"
    );
    assert_eq!(
        run_ids(s, &by(&[StatusKind::Waiting, StatusKind::Interrupted])).await,
        vec![i_id, w_id],
        "interrupted or waiting"
    );
    assert_eq!(
        run_ids(s, &by(&[StatusKind::Cancelled])).await,
        vec![x.run.run_id],
        "cancelled"
    );

    move_to(s, &mut i, RunStatus::Running).await;
    assert_eq!(
        run_ids(s, &unfinished).await,
        vec![q, r, i_id, w_id],
        "a resumed run is still unfinished"
    );
    assert_eq!(
        run_ids(s, &by(&[StatusKind::Interrupted])).await,
        vec![],
        "no interrupted run left"
    );
    i.complete(s).await;
    move_to(s, &mut w, build::status_cancelled("timeout")).await;
    assert_eq!(
        run_ids(s, &unfinished).await,
        vec![q, r],
        "ended runs leave the unfinished list"
    );
    let on_thread = RunFilter {
        thread_id: Some(w.thread.clone()),
        ..RunFilter::unfinished()
    };
    assert_eq!(
        run_ids(s, &on_thread).await,
        vec![],
        "unfinished on thread 3"
    );
}
