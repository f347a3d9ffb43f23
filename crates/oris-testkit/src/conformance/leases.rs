//! Leases: commits fenced by (run, epoch) succeed only with the run's current, unexpired,
//! unreleased lease and only for that run; renewals extend a live lease of its holder;
//! releases hand a run back, ready at once. A refused write changes nothing.
//!
//! Fenced commits are checked against the store's own clock, so the cases that commit
//! claim at the wall clock (`Timestamp::now()`) with a long lease, or far in the past with
//! a short one for an expired lease; renewals and releases take explicit times.

use std::sync::Arc;
use std::time::Duration;

use oris_core::id::{RunId, Timestamp};
use oris_core::store::{ClaimRequest, Error, Fence, RunRecord, Store};

use crate::build::{self, GRAPH};
use crate::check::{
    FullView, assert_invalid_commit, assert_lease_lost, err, ok, run_record, thread_record,
};
use crate::conformance::claims::{after_claim, claim_exactly, enqueue};
use crate::writer::Writer;

const HOUR: Duration = Duration::from_secs(3600);

/// A queued run on a new thread `thread`, pinned to a graph version of its own (the
/// thread's name), so that a claim can single it out.
pub(crate) async fn enqueue_own(s: &dyn Store, thread: &str, created: Timestamp) -> RunRecord {
    let t = build::thread_id(thread);
    enqueue(s, build::queued_run(&t, GRAPH, thread, created, 0, None)).await
}

/// Starts thread `thread` like [`Writer::start`] (a running run, driven in-process, with its
/// `RunStarted` at seq 1), its run pinned to a graph version of its own (the thread's name).
pub(crate) async fn start_own(s: &dyn Store, thread: &str) -> Writer {
    let t = build::thread_id(thread);
    let run = RunRecord {
        graph_version: thread.to_owned(),
        ..build::run_record(&t, GRAPH, 1)
    };
    let mut w = Writer {
        thread: t,
        run: run.clone(),
        head: 0,
    };
    w.commit(s, build::create(&run, vec![build::started(&run, 1)]))
        .await;
    w
}

/// Starts thread `thread` with a run driven by workers: queued (pinned to a graph version
/// of its own, the thread's name) and claimed by worker `w0` at the wall clock for an hour
/// (running, epoch 1, leased). The writer's record is the claimed one; its status changes
/// (unfenced, by [`move_to`](crate::conformance::suspension::move_to)) end the lease and
/// leave the run driven by workers, so the readiness rules apply to it.
pub(crate) async fn start_claimed(s: &dyn Store, thread: &str) -> Writer {
    let queued = enqueue_own(s, thread, build::at(1)).await;
    let (run, _) = claim_one(s, &queued, "w0", Timestamp::now(), HOUR).await;
    Writer {
        thread: queued.thread_id,
        run,
        head: 0,
    }
}

/// A claim of `run` alone (by its graph version) by `worker` at `now` for `ttl`.
pub(crate) fn claim_of(
    run: &RunRecord,
    worker: &str,
    now: Timestamp,
    ttl: Duration,
) -> ClaimRequest {
    ClaimRequest {
        graphs: vec![(run.graph.clone(), run.graph_version.clone())],
        ..build::claim_request(worker, now, ttl, 1)
    }
}

/// Claims `run` alone, which must be claimable; returns its record after and its fence.
pub(crate) async fn claim_one(
    s: &dyn Store,
    run: &RunRecord,
    worker: &str,
    now: Timestamp,
    ttl: Duration,
) -> (RunRecord, Fence) {
    let what = format!("claim of {} by {worker} at {now:?}", run.run_id);
    let got = claim_exactly(s, &claim_of(run, worker, now, ttl), &[run], &what).await;
    let r = got.into_iter().next().unwrap_or_else(|| panic!("{what}"));
    let f = build::fence(r.run_id, r.lease_epoch);
    (r, f)
}

/// Tries a commit that must fail with `LeaseLost` for `(run, epoch)` and change nothing on
/// `thread`.
pub(crate) async fn refused(
    s: &dyn Store,
    commit: oris_core::store::Commit,
    run: RunId,
    epoch: u64,
    what: &str,
) {
    let before = FullView::read(s, &commit.thread_id).await;
    let e = err(s.commit(commit).await, what);
    assert_lease_lost(&e, run, epoch, what);
    before.assert_unchanged(s, what).await;
}

/// A commit fenced with the run's current lease succeeds. With an epoch that is not the
/// current one (older or newer), after the lease was released, after a newer claim
/// superseded it, or once it expired (even if nobody claimed the run since), the commit
/// fails with `LeaseLost` naming the fence's run and epoch, and writes nothing (head, log,
/// run records unchanged) — a status change included.
pub async fn fenced_commits_need_the_current_lease(store: Arc<dyn Store>) {
    let s = &*store;
    let q = enqueue_own(s, "fence-current", build::at(1)).await;
    let (t, r) = (q.thread_id.clone(), q.run_id);
    let (_, f1) = claim_one(s, &q, "w1", Timestamp::now(), HOUR).await;
    assert_eq!(f1.epoch, 1);
    let c = build::fenced(build::append(&t, 0, vec![build::started(&q, 1)]), f1);
    ok(s.commit(c).await, "the first commit with the current fence");
    let c = build::fenced(build::append(&t, 1, vec![build::step(r, 2)]), f1);
    ok(s.commit(c).await, "a second commit with the current fence");
    assert_eq!(thread_record(s, &t).await.head.0, 2);

    for epoch in [0, 2, u64::MAX >> 1] {
        let c = build::fenced(
            build::append(&t, 2, vec![build::step(r, 3)]),
            build::fence(r, epoch),
        );
        refused(
            s,
            c,
            r,
            epoch,
            &format!("a commit at epoch {epoch} (current: 1)"),
        )
        .await;
    }
    let cancel = build::finish(&t, 2, r, build::status_cancelled("stale"), vec![]);
    refused(
        s,
        build::fenced(cancel.clone(), build::fence(r, 0)),
        r,
        0,
        "a stale status change",
    )
    .await;

    let released = ok(
        s.release_lease(&f1, Timestamp::now()).await,
        "release the lease",
    );
    assert_eq!(released.lease, None);
    let c = build::fenced(build::append(&t, 2, vec![build::step(r, 3)]), f1);
    refused(s, c, r, 1, "a commit after the release").await;

    let (_, f2) = claim_one(s, &released, "w2", Timestamp::now(), HOUR).await;
    assert_eq!(f2.epoch, 2);
    let c = build::fenced(build::append(&t, 2, vec![build::step(r, 3)]), f1);
    refused(s, c, r, 1, "a commit with a superseded lease").await;
    let c = build::fenced(build::append(&t, 2, vec![build::step(r, 3)]), f2);
    ok(s.commit(c).await, "a commit with the new lease");

    // Claimed ten minutes ago for one second: expired, and nobody claimed it since.
    let x = enqueue_own(s, "fence-expired", build::at(1)).await;
    let past = Timestamp(Timestamp::now().0 - 600_000);
    let (_, fx) = claim_one(s, &x, "w1", past, Duration::from_secs(1)).await;
    let c = build::fenced(
        build::append(&x.thread_id, 0, vec![build::started(&x, 1)]),
        fx,
    );
    refused(s, c, x.run_id, 1, "a commit with an expired lease").await;
    let c = build::finish(
        &x.thread_id,
        0,
        x.run_id,
        build::status_completed(1),
        vec![],
    );
    refused(
        s,
        build::fenced(c, fx),
        x.run_id,
        1,
        "a status change with an expired lease",
    )
    .await;
}

/// A lease entitles its holder to write its own run only: a commit fenced with run A's
/// (valid) lease that appends run B's events, or sets run B's status, fails with
/// `LeaseLost` naming A and writes nothing on either thread. A fenced commit cannot create a
/// run (`InvalidCommit`): a run is created unleased.
pub async fn fenced_commit_of_another_run_is_lost(store: Arc<dyn Store>) {
    let s = &*store;
    let now = Timestamp::now();
    let a = enqueue_own(s, "fence-a", build::at(1)).await;
    let b = enqueue_own(s, "fence-b", build::at(1)).await;
    let (_, fa) = claim_one(s, &a, "w", now, HOUR).await;
    let (_, fb) = claim_one(s, &b, "w", now, HOUR).await;
    let tb = b.thread_id.clone();
    let a_view = FullView::read(s, &a.thread_id).await;

    let c = build::fenced(build::append(&tb, 0, vec![build::started(&b, 1)]), fa);
    refused(s, c, a.run_id, 1, "run B's events under run A's lease").await;
    let c = build::finish(&tb, 0, b.run_id, build::status_cancelled("by A"), vec![]);
    refused(
        s,
        build::fenced(c, fa),
        a.run_id,
        1,
        "run B's cancellation under run A's lease",
    )
    .await;
    a_view
        .assert_unchanged(s, "commits on B under A's lease")
        .await;

    let c = build::fenced(build::append(&tb, 0, vec![build::started(&b, 1)]), fb);
    ok(s.commit(c).await, "run B's events under its own lease");
    let c = build::finish(&tb, 1, b.run_id, build::status_completed(1), vec![]);
    ok(
        s.commit(build::fenced(c, fb)).await,
        "run B's end under its own lease",
    );

    let next = build::run_record(&tb, GRAPH, 3);
    let before = FullView::read(s, &tb).await;
    let what = "a fenced run creation";
    let e = err(
        s.commit(build::fenced(
            build::create(&next, vec![build::started(&next, 3)]),
            fa,
        ))
        .await,
        what,
    );
    assert_invalid_commit(&e, &tb, what);
    before.assert_unchanged(s, what).await;
    assert_eq!(ok(s.run(next.run_id).await, "run()"), None, "{what}");
}

/// `renew_lease` by the holder of a live lease moves its expiry (and `ready_at`) to
/// `now + ttl`, nothing else. It fails with `LeaseLost` (changing nothing) for another
/// worker id, a stale or future epoch, an expired lease (even if nobody claimed the run
/// since: an expired lease is not revived) and a superseded one; `RunNotFound` for an
/// unknown run.
pub async fn renewals_extend_only_a_live_lease(store: Arc<dyn Store>) {
    let s = &*store;
    let q = enqueue_own(s, "renew", build::at(1)).await;
    let r = q.run_id;
    let ttl = Duration::from_secs(10);
    let t0 = build::at(10);
    let (claimed, f1) = claim_one(s, &q, "w1", t0, ttl).await;
    let at = |ms: i64| Timestamp(t0.0 + ms);

    let renewed = ok(s.renew_lease(&f1, "w1", at(5_000), ttl).await, "renew");
    let mut want = claimed.clone();
    if let Some(l) = &mut want.lease {
        l.expires_at = at(15_000);
    }
    want.ready_at = Some(at(15_000));
    assert_eq!(renewed, want, "the renewed record");
    assert_eq!(run_record(s, r).await, want, "run() after the renewal");

    let failures: [(&str, Fence, &str, Timestamp); 4] = [
        ("another worker", f1, "w2", at(6_000)),
        ("epoch 0", build::fence(r, 0), "w1", at(6_000)),
        ("epoch 2", build::fence(r, 2), "w1", at(6_000)),
        ("at the expiry", f1, "w1", at(15_000)),
    ];
    for (what, f, worker, now) in failures {
        let e = err(s.renew_lease(&f, worker, now, ttl).await, what);
        assert_lease_lost(&e, r, f.epoch, what);
        assert_eq!(run_record(s, r).await, want, "{what}: the run changed");
    }
    let unknown = RunId::generate();
    assert_eq!(
        err(
            s.renew_lease(&build::fence(unknown, 1), "w1", at(6_000), ttl)
                .await,
            "renew an unknown run"
        ),
        Error::RunNotFound { run_id: unknown }
    );

    let (_, f2) = claim_one(s, &want, "w2", at(15_000), ttl).await;
    assert_eq!(f2.epoch, 2);
    let e = err(
        s.renew_lease(&f1, "w1", at(16_000), ttl).await,
        "renew a superseded lease",
    );
    assert_lease_lost(&e, r, 1, "renew a superseded lease");
    let renewed = ok(
        s.renew_lease(&f2, "w2", at(16_000), ttl).await,
        "renew the new lease",
    );
    assert_eq!(renewed.ready_at, Some(at(26_000)));
    assert_eq!(renewed.lease_epoch, 2);
}

/// `release_lease` hands a leased run back: unleased, ready at `now` (claimable at once by
/// anyone), epoch, status and `updated_at` unchanged. Releasing again, or with a superseded
/// epoch, fails with `LeaseLost` and changes nothing; an expired lease nobody superseded may
/// still be released; an unknown run is `RunNotFound`. A released lease cannot be renewed.
pub async fn releases_hand_runs_back(store: Arc<dyn Store>) {
    let s = &*store;
    let q = enqueue_own(s, "release", build::at(1)).await;
    let r = q.run_id;
    let ttl = Duration::from_secs(10);
    let t0 = build::at(10);
    let at = |ms: i64| Timestamp(t0.0 + ms);
    let (claimed, f1) = claim_one(s, &q, "w1", t0, ttl).await;

    let released = ok(s.release_lease(&f1, at(1_000)).await, "release");
    let want = RunRecord {
        lease: None,
        ready_at: Some(at(1_000)),
        ..claimed
    };
    assert_eq!(released, want, "the released record");
    assert_eq!(run_record(s, r).await, want, "run() after the release");
    let e = err(s.release_lease(&f1, at(1_000)).await, "release twice");
    assert_lease_lost(&e, r, 1, "release twice");
    let e = err(
        s.renew_lease(&f1, "w1", at(1_000), ttl).await,
        "renew a released lease",
    );
    assert_lease_lost(&e, r, 1, "renew a released lease");
    assert_eq!(run_record(s, r).await, want, "refusals change nothing");

    let (c2, f2) = claim_one(s, &want, "w2", at(1_000), ttl).await;
    assert_eq!(
        c2,
        after_claim(&want, "w2", at(1_000), ttl),
        "claimed again at once"
    );
    let e = err(
        s.release_lease(&f1, at(2_000)).await,
        "release a superseded lease",
    );
    assert_lease_lost(&e, r, 1, "release a superseded lease");
    assert_eq!(run_record(s, r).await, c2, "refusals change nothing");

    // Expired at 11 s; nobody claimed it since.
    let late = ok(
        s.release_lease(&f2, at(20_000)).await,
        "release an expired lease",
    );
    assert_eq!(
        late,
        RunRecord {
            lease: None,
            ready_at: Some(at(20_000)),
            ..c2
        }
    );
    let unknown = RunId::generate();
    assert_eq!(
        err(
            s.release_lease(&build::fence(unknown, 1), at(1)).await,
            "release an unknown run"
        ),
        Error::RunNotFound { run_id: unknown }
    );
}
