//! When a run is ready for a worker (`ready_at`) and who holds it, across status changes,
//! answers and deliveries: a status change ends the lease (except a fenced change to
//! running) and sets `ready_at` from the new status; an answer to the last open interrupt
//! of an interrupted run, or an event a waiting run waits for, makes it ready — also when it
//! arrived before the run suspended (raced the suspension commit). These rules hold for
//! runs driven by workers (queued, or claimed at least once); a run driven in-process by the
//! library is never ready, whatever happens to it.

use std::sync::Arc;
use std::time::Duration;

use oris_core::id::{InterruptId, RunId, Timestamp};
use oris_core::status::RunStatus;
use oris_core::store::{Answer, Delivery, Fence, RunRecord, Store};

use crate::build::{self, payload};
use crate::check::{assert_lease_lost, claim_ids, err, ok, run_record};
use crate::conformance::leases::{claim_of, claim_one, enqueue_own, start_claimed, start_own};
use crate::conformance::suspension::{move_to, suspension_events};
use crate::writer::Writer;

const HOUR: Duration = Duration::from_secs(3600);

/// Moves the writer's run to `status` like [`move_to`], fenced with `fence`.
async fn move_fenced(s: &dyn Store, w: &mut Writer, status: RunStatus, fence: Fence) {
    let events = suspension_events(w.run.run_id, w.head, &status);
    let commit = build::set_status(&w.thread, w.head, w.run.run_id, status, events);
    w.commit(s, build::fenced(commit, fence)).await;
}

/// Asserts the run's status, `ready_at`, epoch and holder (worker id), and that nothing else
/// but `updated_at` differs from `base`; returns the stored record.
#[track_caller]
fn assert_run(
    stored: &RunRecord,
    base: &RunRecord,
    status: &RunStatus,
    ready_at: Option<Timestamp>,
    epoch: u64,
    holder: Option<&str>,
    what: &str,
) {
    assert_eq!(&stored.status, status, "{what}: status");
    assert_eq!(stored.ready_at, ready_at, "{what}: ready_at");
    assert_eq!(stored.lease_epoch, epoch, "{what}: lease_epoch");
    assert_eq!(
        stored.lease.as_ref().map(|l| l.worker_id.as_str()),
        holder,
        "{what}: lease holder"
    );
    let expected = RunRecord {
        status: status.clone(),
        updated_at: stored.updated_at,
        ready_at,
        lease_epoch: epoch,
        lease: stored.lease.clone(),
        ..base.clone()
    };
    assert_eq!(stored, &expected, "{what}: the other fields");
}

fn interrupted(ids: &[InterruptId]) -> RunStatus {
    build::status_interrupted(
        ids.iter()
            .map(|id| build::pending(*id, "ask", r#"{"q":"ok?"}"#))
            .collect(),
    )
}

/// A fenced status change to running keeps the lease (holder, expiry, `ready_at` at the
/// expiry); a fenced change to waiting, interrupted or an end ends it (no holder, epoch
/// kept) and sets `ready_at` from the status: the wake-up time of a waiting run, none for
/// an interrupted or ended one. The old fence then fails (`LeaseLost`), commits and renewals
/// alike. An unfenced status change ends a lease the same way (a cancellation of a claimed
/// run, or a claimed run resumed in-process: running, unleased, not ready).
pub async fn status_changes_end_or_keep_the_lease(store: Arc<dyn Store>) {
    let s = &*store;
    let now = Timestamp::now();
    let mut w = start_claimed(s, "status-lease").await;
    let r = w.run.run_id;
    move_to(
        s,
        &mut w,
        build::status_waiting(Some(build::at(5)), &["paid"]),
    )
    .await;
    let waiting = run_record(s, r).await;
    assert_eq!(
        waiting.ready_at,
        Some(build::at(5)),
        "waiting: ready at until"
    );
    let (claimed, f1) = claim_one(s, &waiting, "w1", now, HOUR).await;

    move_fenced(s, &mut w, RunStatus::Running, f1).await;
    let running = run_record(s, r).await;
    assert_eq!(
        running.lease, claimed.lease,
        "fenced → running keeps the lease"
    );
    assert_run(
        &running,
        &claimed,
        &RunStatus::Running,
        claimed.ready_at,
        2,
        Some("w1"),
        "fenced → running",
    );

    let status = build::status_waiting(Some(build::at(7)), &["x"]);
    move_fenced(s, &mut w, status.clone(), f1).await;
    let stored = run_record(s, r).await;
    assert_run(
        &stored,
        &claimed,
        &status,
        Some(build::at(7)),
        2,
        None,
        "fenced → waiting",
    );
    let c = build::fenced(
        build::append(&w.thread, w.head, vec![build::step(r, w.head + 1)]),
        f1,
    );
    let e = err(s.commit(c).await, "a commit after the lease ended");
    assert_lease_lost(&e, r, 2, "a commit after the lease ended");
    let e = err(
        s.renew_lease(&f1, "w1", Timestamp::now(), HOUR).await,
        "a renewal after the lease ended",
    );
    assert_lease_lost(&e, r, 2, "a renewal after the lease ended");

    let (_, f2) = claim_one(s, &stored, "w2", Timestamp::now(), HOUR).await;
    move_fenced(s, &mut w, RunStatus::Running, f2).await;
    let i = InterruptId::generate();
    move_fenced(s, &mut w, interrupted(&[i]), f2).await;
    let stored = run_record(s, r).await;
    assert_run(
        &stored,
        &claimed,
        &interrupted(&[i]),
        None,
        3,
        None,
        "fenced → interrupted",
    );

    let at = build::at(30);
    ok(
        s.answer_interrupt(i, payload("true"), at).await,
        "answer the interrupt",
    );
    let answered = run_record(s, r).await;
    assert_eq!(
        answered.ready_at,
        Some(at),
        "answered: ready since the answer"
    );
    let (_, f3) = claim_one(s, &answered, "w3", Timestamp::now(), HOUR).await;
    move_fenced(s, &mut w, RunStatus::Running, f3).await;
    let done = build::status_completed(w.head);
    let c = build::finish(&w.thread, w.head, r, done.clone(), vec![]);
    w.commit(s, build::fenced(c, f3)).await;
    assert_run(
        &run_record(s, r).await,
        &claimed,
        &done,
        None,
        4,
        None,
        "fenced → completed",
    );

    // Unfenced status changes end a lease too.
    let q = enqueue_own(s, "status-lease-cancel", build::at(1)).await;
    let (cq, fq) = claim_one(s, &q, "w1", Timestamp::now(), HOUR).await;
    let cancelled = build::status_cancelled("operator");
    let c = build::finish(&q.thread_id, 0, q.run_id, cancelled.clone(), vec![]);
    ok(s.commit(c).await, "cancel a claimed run");
    assert_run(
        &run_record(s, q.run_id).await,
        &cq,
        &cancelled,
        None,
        1,
        None,
        "unfenced cancellation of a claimed run",
    );
    let c = build::fenced(
        build::append(&q.thread_id, 1, vec![build::step(q.run_id, 2)]),
        fq,
    );
    let e = err(s.commit(c).await, "a commit after the cancellation");
    assert_lease_lost(&e, q.run_id, 1, "a commit after the cancellation");
    let e = err(
        s.release_lease(&fq, Timestamp::now()).await,
        "a release after the cancellation",
    );
    assert_lease_lost(&e, q.run_id, 1, "a release after the cancellation");

    let mut v = start_claimed(s, "status-lease-inprocess").await;
    move_to(s, &mut v, build::status_waiting(Some(build::at(5)), &[])).await;
    let vw = run_record(s, v.run.run_id).await;
    let (cv, _) = claim_one(s, &vw, "w1", Timestamp::now(), HOUR).await;
    move_to(s, &mut v, RunStatus::Running).await;
    assert_run(
        &run_record(s, v.run.run_id).await,
        &cv,
        &RunStatus::Running,
        None,
        2,
        None,
        "unfenced → running of a claimed run",
    );
}

/// Answers and an interrupted run: the run is ready (`ready_at` = the answer's time) once
/// every interrupt it raised and has not applied is answered, not before; a repeated answer
/// changes nothing. Answers recorded while the run was still running (before its
/// suspension commit) make it ready when it suspends, at the latest of their times; an
/// interrupt already applied does not count.
pub async fn answers_make_interrupted_runs_ready(store: Arc<dyn Store>) {
    let s = &*store;
    let answer = async |id: InterruptId, at: Timestamp, want: Answer| {
        let what = format!("answer {id} at {at:?}");
        let (got, _) = ok(
            s.answer_interrupt(id, payload(r#"{"ok":true}"#), at).await,
            &what,
        );
        assert_eq!(got, want, "{what}");
    };
    let ready_at = async |w: &Writer| run_record(s, w.run.run_id).await.ready_at;

    let mut w = start_claimed(s, "answers").await;
    let (i1, i2) = (InterruptId::generate(), InterruptId::generate());
    move_to(s, &mut w, interrupted(&[i1, i2])).await;
    assert_eq!(ready_at(&w).await, None, "interrupted, unanswered");
    answer(i1, build::at(20), Answer::Recorded).await;
    assert_eq!(ready_at(&w).await, None, "one of two answered");
    answer(i2, build::at(30), Answer::Recorded).await;
    assert_eq!(ready_at(&w).await, Some(build::at(30)), "both answered");
    answer(i2, build::at(40), Answer::AlreadyAnswered).await;
    assert_eq!(ready_at(&w).await, Some(build::at(30)), "a repeated answer");
    let stored = run_record(s, w.run.run_id).await;
    assert_eq!(
        claim_ids(s, &claim_of(&stored, "w", build::at(29), HOUR)).await,
        Vec::<RunId>::new(),
        "not claimable before the answer's time"
    );
    claim_one(s, &stored, "w", build::at(30), HOUR).await;

    // Both answers arrive before the run suspends.
    let mut raced = start_claimed(s, "answers-raced").await;
    let (j1, j2) = (InterruptId::generate(), InterruptId::generate());
    raise(s, &mut raced, &[j1, j2]).await;
    answer(j2, build::at(45), Answer::Recorded).await;
    answer(j1, build::at(40), Answer::Recorded).await;
    assert_eq!(
        ready_at(&raced).await,
        raced.run.ready_at,
        "running, leased: ready at its lease's expiry, whatever the answers"
    );
    suspend_on(s, &mut raced, &[j1, j2]).await;
    assert_eq!(
        ready_at(&raced).await,
        Some(build::at(45)),
        "suspended with every interrupt answered: ready since the latest answer"
    );

    // One answer before the suspension, one after.
    let mut half = start_claimed(s, "answers-half").await;
    let (k1, k2) = (InterruptId::generate(), InterruptId::generate());
    raise(s, &mut half, &[k1, k2]).await;
    answer(k1, build::at(50), Answer::Recorded).await;
    suspend_on(s, &mut half, &[k1, k2]).await;
    assert_eq!(
        ready_at(&half).await,
        None,
        "suspended with one of two answered"
    );
    answer(k2, build::at(60), Answer::Recorded).await;
    assert_eq!(
        ready_at(&half).await,
        Some(build::at(60)),
        "the last answer"
    );

    // An applied interrupt is done with: only the open one counts.
    let mut applied = start_claimed(s, "answers-applied").await;
    let (m1, m2) = (InterruptId::generate(), InterruptId::generate());
    raise(s, &mut applied, &[m1]).await;
    answer(m1, build::at(70), Answer::Recorded).await;
    let (r, head) = (applied.run.run_id, applied.head);
    let c = build::append(
        &applied.thread,
        head,
        vec![build::interrupt_resumed(r, head + 1, m1, r#"{"ok":true}"#)],
    );
    applied.commit(s, c).await;
    raise(s, &mut applied, &[m2]).await;
    suspend_on(s, &mut applied, &[m2]).await;
    assert_eq!(
        ready_at(&applied).await,
        None,
        "its open interrupt is unanswered"
    );
    answer(m2, build::at(80), Answer::Recorded).await;
    assert_eq!(ready_at(&applied).await, Some(build::at(80)), "answered");
}

/// Raises `ids` in one commit of the writer's running run (no status change).
async fn raise(s: &dyn Store, w: &mut Writer, ids: &[InterruptId]) {
    let (r, head) = (w.run.run_id, w.head);
    let events = ids
        .iter()
        .enumerate()
        .map(|(i, id)| build::interrupt_raised(r, head + 1 + i as u64, "ask", *id, r#"{"q":1}"#))
        .collect();
    let c = build::append(&w.thread, head, events);
    w.commit(s, c).await;
}

/// Suspends the writer's run on the already raised `ids` (a `RunSuspended` event only).
async fn suspend_on(s: &dyn Store, w: &mut Writer, ids: &[InterruptId]) {
    let (r, head) = (w.run.run_id, w.head);
    let c = build::set_status(
        &w.thread,
        head,
        r,
        interrupted(ids),
        vec![build::run_suspended(r, head + 1, ids, None, &[])],
    );
    w.commit(s, c).await;
}

/// Delivers `name` to the writer's thread at `at` (a new delivery).
async fn deliver(s: &dyn Store, w: &Writer, name: &str, at: Timestamp) -> Delivery {
    let what = format!("deliver {name} to {} at {at:?}", w.thread);
    let (d, new) = ok(
        s.deliver(&w.thread, name, payload(r#"{"n":1}"#), None, at)
            .await,
        &what,
    );
    assert!(new, "{what}: new");
    d
}

/// Deliveries and a waiting run: an event the (unleased) run waits for makes it ready at
/// the event's arrival if that is before its `until`; other events do not; a run waiting
/// only for events is ready from the first of them. Events that arrived while the run was
/// still running make it ready when it suspends (earliest pending matching arrival, or its
/// `until` if earlier); consumed ones do not count. A leased run is left to its holder, and
/// a running run is not affected.
pub async fn deliveries_make_waiting_runs_ready(store: Arc<dyn Store>) {
    let s = &*store;
    let ready_at = async |w: &Writer| run_record(s, w.run.run_id).await.ready_at;

    let mut w = start_claimed(s, "deliveries-ready").await;
    move_to(
        s,
        &mut w,
        build::status_waiting(Some(build::at(500)), &["paid"]),
    )
    .await;
    assert_eq!(
        ready_at(&w).await,
        Some(build::at(500)),
        "waiting: its until"
    );
    deliver(s, &w, "other", build::at(10)).await;
    assert_eq!(
        ready_at(&w).await,
        Some(build::at(500)),
        "an event it does not wait for"
    );
    deliver(s, &w, "paid", build::at(20)).await;
    assert_eq!(
        ready_at(&w).await,
        Some(build::at(20)),
        "the event it waits for"
    );
    let stored = run_record(s, w.run.run_id).await;
    let (claimed, _) = claim_one(s, &stored, "w", build::at(20), HOUR).await;
    deliver(s, &w, "paid", build::at(21)).await;
    assert_eq!(
        run_record(s, w.run.run_id).await,
        claimed,
        "an event for a leased run changes nothing"
    );

    let mut untimed = start_claimed(s, "deliveries-untimed").await;
    move_to(
        s,
        &mut untimed,
        build::status_waiting(None, &["paid", "shipped"]),
    )
    .await;
    assert_eq!(ready_at(&untimed).await, None, "waiting for events only");
    deliver(s, &untimed, "shipped", build::at(30)).await;
    assert_eq!(
        ready_at(&untimed).await,
        Some(build::at(30)),
        "one of its events"
    );

    let mut raced = start_claimed(s, "deliveries-raced").await;
    deliver(s, &raced, "other", build::at(35)).await;
    deliver(s, &raced, "paid", build::at(40)).await;
    deliver(s, &raced, "paid", build::at(42)).await;
    assert_eq!(
        ready_at(&raced).await,
        raced.run.ready_at,
        "running, leased: not affected"
    );
    move_to(
        s,
        &mut raced,
        build::status_waiting(Some(build::at(900)), &["paid"]),
    )
    .await;
    assert_eq!(
        ready_at(&raced).await,
        Some(build::at(40)),
        "suspended after its event arrived: ready since the earliest one"
    );

    let mut early = start_claimed(s, "deliveries-until-first").await;
    deliver(s, &early, "paid", build::at(40)).await;
    move_to(
        s,
        &mut early,
        build::status_waiting(Some(build::at(35)), &["paid"]),
    )
    .await;
    assert_eq!(
        ready_at(&early).await,
        Some(build::at(35)),
        "its until came first"
    );

    let mut consumed = start_claimed(s, "deliveries-consumed").await;
    let d = deliver(s, &consumed, "paid", build::at(40)).await;
    let (r, head) = (consumed.run.run_id, consumed.head);
    let c = build::append(
        &consumed.thread,
        head,
        vec![build::event_received(
            r,
            head + 1,
            "paid",
            Some(d.delivery_id),
            Some(r#"{"n":1}"#),
        )],
    );
    consumed.commit(s, c).await;
    move_to(s, &mut consumed, build::status_waiting(None, &["paid"])).await;
    assert_eq!(
        ready_at(&consumed).await,
        None,
        "its event was consumed already"
    );
}

/// A released suspended run is ready at once: it was claimed because it was ready (answered,
/// or woken by an event) and has not acted on that yet — it must not be stranded.
pub async fn released_suspended_runs_stay_ready(store: Arc<dyn Store>) {
    let s = &*store;
    let ttl = Duration::from_secs(10);
    let mut w = start_claimed(s, "release-interrupted").await;
    let i = InterruptId::generate();
    move_to(s, &mut w, interrupted(&[i])).await;
    ok(
        s.answer_interrupt(i, payload("1"), build::at(30)).await,
        "answer",
    );
    let answered = run_record(s, w.run.run_id).await;
    let (claimed, f) = claim_one(s, &answered, "w1", build::at(30), ttl).await;
    let released = ok(s.release_lease(&f, build::at(31)).await, "release");
    assert_eq!(
        released,
        RunRecord {
            lease: None,
            ready_at: Some(build::at(31)),
            ..claimed
        },
        "a released answered run"
    );
    claim_one(s, &released, "w2", build::at(31), ttl).await;

    let mut v = start_claimed(s, "release-waiting").await;
    move_to(s, &mut v, build::status_waiting(None, &["paid"])).await;
    deliver(s, &v, "paid", build::at(40)).await;
    let woken = run_record(s, v.run.run_id).await;
    let (claimed, f) = claim_one(s, &woken, "w1", build::at(40), ttl).await;
    let released = ok(s.release_lease(&f, build::at(41)).await, "release");
    assert_eq!(
        released,
        RunRecord {
            lease: None,
            ready_at: Some(build::at(41)),
            ..claimed
        },
        "a released run woken by an event"
    );
    claim_one(s, &released, "w2", build::at(41), ttl).await;
}

/// A run driven by the library (created running, never claimed) is never claimable: not
/// while it waits with a timer (not even long past its `until`), not when an event it waits
/// for arrives (after it suspended, or before — racing the suspension), not when its
/// interrupt is answered (after it suspended, or before). Its `ready_at` stays empty and a
/// claim for its graph version finds nothing, while a run driven by workers in the same
/// state is claimed by the same kind of request. The library's timer sweep still finds its
/// waiting runs by wake-up time (`due_runs`).
pub async fn library_runs_are_never_claimable(store: Arc<dyn Store>) {
    let s = &*store;
    let answer = async |id: InterruptId, at: Timestamp| {
        let what = format!("answer {id} at {at:?}");
        let (got, _) = ok(
            s.answer_interrupt(id, payload(r#"{"ok":true}"#), at).await,
            &what,
        );
        assert_eq!(got, Answer::Recorded, "{what}");
    };
    let far = build::at(100_000);

    let mut timer = start_own(s, "library-timer").await;
    move_to(
        s,
        &mut timer,
        build::status_waiting(Some(build::at(5)), &["paid"]),
    )
    .await;
    let mut woken = start_own(s, "library-event").await;
    move_to(s, &mut woken, build::status_waiting(None, &["paid"])).await;
    deliver(s, &woken, "paid", build::at(10)).await;
    let mut early_event = start_own(s, "library-event-raced").await;
    deliver(s, &early_event, "paid", build::at(11)).await;
    move_to(
        s,
        &mut early_event,
        build::status_waiting(Some(build::at(6)), &["paid"]),
    )
    .await;
    let mut answered = start_own(s, "library-answer").await;
    let i = InterruptId::generate();
    move_to(s, &mut answered, interrupted(&[i])).await;
    answer(i, build::at(20)).await;
    let mut early_answer = start_own(s, "library-answer-raced").await;
    let j = InterruptId::generate();
    raise(s, &mut early_answer, &[j]).await;
    answer(j, build::at(21)).await;
    suspend_on(s, &mut early_answer, &[j]).await;

    for w in [&timer, &woken, &early_event, &answered, &early_answer] {
        let what = format!("the library's run on `{}`", w.thread);
        let r = run_record(s, w.run.run_id).await;
        assert_eq!(r.ready_at, None, "{what}: never ready");
        assert_eq!(
            claim_ids(s, &claim_of(&r, "w", far, HOUR)).await,
            Vec::<RunId>::new(),
            "{what}: not claimable"
        );
        assert_eq!(
            run_record(s, w.run.run_id).await,
            r,
            "{what}: unchanged by the claim"
        );
    }

    // The same as the answered one, driven by workers: claimed by the same kind of request.
    let mut worker = start_claimed(s, "library-contrast").await;
    let k = InterruptId::generate();
    move_to(s, &mut worker, interrupted(&[k])).await;
    answer(k, build::at(22)).await;
    let r = run_record(s, worker.run.run_id).await;
    assert_eq!(r.ready_at, Some(build::at(22)), "a worker's answered run");
    claim_one(s, &r, "w", far, HOUR).await;

    // The library wakes its own waiting runs by their wake-up time.
    let due: Vec<RunId> = ok(s.due_runs(far, 1_000).await, "due_runs")
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    for w in [&timer, &early_event] {
        assert!(
            due.contains(&w.run.run_id),
            "the library's timer on `{}` is due: {due:?}",
            w.thread
        );
    }
}
