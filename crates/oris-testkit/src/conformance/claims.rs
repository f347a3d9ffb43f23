//! Claims: which runs a worker may take (ready, unfinished, of a graph it accepts), in which
//! order (priority, then `ready_at`, then run id), what a claim writes (epoch, holder,
//! `ready_at` at the lease's expiry, queued → running), and that concurrent claimers never
//! share a run. Times are explicit (`ClaimRequest::now`): nothing here sleeps.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use oris_core::id::{InterruptId, RunId, Timestamp};
use oris_core::status::RunStatus;
use oris_core::store::{ClaimRequest, LeaseHolder, RunRecord, Store};
use tokio::sync::Barrier;

use crate::build::{self, GRAPH, GRAPH_VERSION};
use crate::check::{ThreadView, claim, claim_ids, ok, run_record};
use crate::conformance::concurrency::join;
use crate::conformance::leases::start_claimed;
use crate::conformance::suspension::move_to;
use crate::writer::Writer;

/// Creates `run` (queued, without events) on its own new thread and checks the stored
/// record: exactly `run`, ready for a worker from its creation (`ready_at = created_at`),
/// never leased — whatever `ready_at`, `lease_epoch` and `lease` the writer put in the
/// record. Returns the stored record.
pub(crate) async fn enqueue(s: &dyn Store, run: RunRecord) -> RunRecord {
    let what = format!("queued run {} on `{}`", run.run_id, run.thread_id);
    let written = RunRecord {
        ready_at: Some(build::at(999_999)),
        lease_epoch: 7,
        lease: Some(LeaseHolder {
            worker_id: "forged".into(),
            expires_at: build::at(999_999),
        }),
        ..run.clone()
    };
    ok(s.commit(build::create(&written, vec![])).await, &what);
    let want = RunRecord {
        ready_at: Some(run.created_at),
        lease_epoch: 0,
        lease: None,
        ..run
    };
    assert_eq!(
        run_record(s, want.run_id).await,
        want,
        "{what}: stored as written, ready from its creation, unleased"
    );
    want
}

/// A queued run of the default graph on a new thread `thread`, created at `created`.
pub(crate) async fn enqueue_at(
    s: &dyn Store,
    thread: &str,
    created: Timestamp,
    priority: i32,
) -> RunRecord {
    let t = build::thread_id(thread);
    enqueue(
        s,
        build::queued_run(&t, GRAPH, GRAPH_VERSION, created, priority, None),
    )
    .await
}

/// What `run` must read as after `worker` claimed it at `now` for `ttl`: epoch + 1, the
/// worker as holder until `now + ttl`, ready again at that expiry, a queued run running
/// (with `updated_at = now`); nothing else changes.
pub(crate) fn after_claim(
    run: &RunRecord,
    worker: &str,
    now: Timestamp,
    ttl: Duration,
) -> RunRecord {
    let expires_at = Timestamp(now.0 + ttl.as_millis() as i64);
    let queued = run.status == RunStatus::Queued;
    RunRecord {
        status: if queued {
            RunStatus::Running
        } else {
            run.status.clone()
        },
        updated_at: if queued { now } else { run.updated_at },
        lease_epoch: run.lease_epoch + 1,
        lease: Some(LeaseHolder {
            worker_id: worker.to_owned(),
            expires_at,
        }),
        ready_at: Some(expires_at),
        ..run.clone()
    }
}

/// Claims with `request`, which must take exactly `runs` (in this order); checks the
/// returned records and the stored ones against [`after_claim`] and returns them.
pub(crate) async fn claim_exactly(
    s: &dyn Store,
    request: &ClaimRequest,
    runs: &[&RunRecord],
    what: &str,
) -> Vec<RunRecord> {
    let want: Vec<RunRecord> = runs
        .iter()
        .map(|r| after_claim(r, &request.worker_id, request.now, request.ttl))
        .collect();
    let got = claim(s, request).await;
    assert_eq!(got, want, "{what}: the claimed runs and their records");
    for r in &want {
        assert_eq!(
            run_record(s, r.run_id).await,
            *r,
            "{what}: run() after the claim"
        );
    }
    want
}

const TTL: Duration = Duration::from_secs(30);

/// A queued run is claimable at once: the claim returns it running, at epoch 1, held by the
/// worker until `now + ttl`, ready again at that expiry; the thread (head, log) does not
/// change. Before its expiry nobody claims it again; from the expiry on (`expires_at <=
/// now`) it is claimed again at epoch 2 (still running, `updated_at` of the first claim).
/// A queued run created after `now` is not ready yet.
pub async fn queued_runs_are_claimed_once_per_lease(store: Arc<dyn Store>) {
    let s = &*store;
    let q = enqueue_at(s, "claim-once", build::at(1), 0).await;
    let later = enqueue_at(s, "claim-later", build::at(100), 0).await;
    let view = ThreadView::read(s, &q.thread_id).await;

    let t0 = build::at(10);
    let first = claim_exactly(
        s,
        &build::claim_request("w1", t0, TTL, 10),
        &[&q],
        "first claim",
    )
    .await;
    let view_after = ThreadView::read(s, &q.thread_id).await;
    assert_eq!(
        (view_after.thread, view_after.events),
        (view.thread, view.events),
        "a claim does not touch the thread record or its log"
    );
    assert_eq!(
        run_record(s, later.run_id).await,
        later,
        "a run created after `now` is not claimed"
    );

    let expires = Timestamp(t0.0 + 30_000);
    for now in [build::at(11), Timestamp(expires.0 - 1)] {
        assert_eq!(
            claim_ids(s, &build::claim_request("w2", now, TTL, 10)).await,
            Vec::<RunId>::new(),
            "a claim at {now:?}, before the lease's expiry at {expires:?} (the run created at \
             {:?} is not ready yet either)",
            later.created_at
        );
    }
    assert_eq!(
        run_record(s, q.run_id).await,
        first[0],
        "a claim that takes nothing changes nothing"
    );

    let second = claim_exactly(
        s,
        &build::claim_request("w2", expires, TTL, 1),
        &[&first[0]],
        "a claim at the lease's expiry",
    )
    .await;
    assert_eq!(second[0].lease_epoch, 2, "the second claim's epoch");
    assert_eq!(second[0].updated_at, t0, "running stays running");
}

/// Claims take runs by priority (highest first), then `ready_at` (earliest first), then run
/// id; `limit` bounds each claim, and a claim with limit 0 takes nothing.
pub async fn claims_follow_priority_then_readiness(store: Arc<dyn Store>) {
    let s = &*store;
    // Created in this order (ids ascending).
    let p0_late = enqueue_at(s, "prio-0-late", build::at(5), 0).await;
    let p0_early = enqueue_at(s, "prio-0-early", build::at(3), 0).await;
    let p5_a = enqueue_at(s, "prio-5-a", build::at(9), 5).await;
    let neg = enqueue_at(s, "prio-neg", build::at(1), -1).await;
    let p5_b = enqueue_at(s, "prio-5-b", build::at(9), 5).await;
    let p9_late = enqueue_at(s, "prio-9-late", build::at(40), 9).await;

    let now = build::at(10);
    // Leases that outlast the case: claimed runs are not claimed again.
    const HOUR: Duration = Duration::from_secs(3600);
    assert_eq!(
        claim_ids(s, &build::claim_request("w", now, HOUR, 0)).await,
        Vec::<RunId>::new(),
        "limit 0"
    );
    assert_eq!(
        run_record(s, p5_a.run_id).await,
        p5_a,
        "a claim with limit 0 changes nothing"
    );
    claim_exactly(
        s,
        &build::claim_request("w", now, HOUR, 2),
        &[&p5_a, &p5_b],
        "highest priority first; equal ready_at by run id",
    )
    .await;
    claim_exactly(
        s,
        &build::claim_request("w", now, HOUR, 1),
        &[&p0_early],
        "then by ready_at",
    )
    .await;
    claim_exactly(
        s,
        &build::claim_request("w", now, HOUR, 10),
        &[&p0_late, &neg],
        "the rest, negative priority last; a not yet ready run of high priority is skipped",
    )
    .await;
    claim_exactly(
        s,
        &build::claim_request("w", build::at(40), HOUR, 10),
        &[&p9_late],
        "ready at its time",
    )
    .await;
}

/// A worker names the (graph, version) pairs it can drive: only runs pinned to one of them
/// are claimed (name and version both match; an empty list accepts any); the others stay
/// as they were, for another worker.
pub async fn claims_honour_the_graph_filter(store: Arc<dyn Store>) {
    let s = &*store;
    let run = |thread: &str, graph: &str, version: &str| {
        build::queued_run(
            &build::thread_id(thread),
            graph,
            version,
            build::at(1),
            0,
            None,
        )
    };
    let a1 = enqueue(s, run("graphs-a1", "alpha", "v1")).await;
    let a2 = enqueue(s, run("graphs-a2", "alpha", "v2")).await;
    let b1 = enqueue(s, run("graphs-b1", "beta", "v1")).await;
    let a1_again = enqueue(s, run("graphs-a1-again", "alpha", "v1")).await;
    let now = build::at(2);
    let with = |graphs: &[(&str, &str)]| ClaimRequest {
        graphs: graphs
            .iter()
            .map(|(g, v)| ((*g).to_owned(), (*v).to_owned()))
            .collect(),
        ..build::claim_request("w", now, TTL, 10)
    };

    for (what, graphs) in [
        ("an unknown graph", vec![("gamma", "v1")]),
        ("a known graph at an unknown version", vec![("alpha", "v3")]),
        ("names and versions crossed", vec![("beta", "v2")]),
    ] {
        assert_eq!(
            claim_ids(s, &with(&graphs)).await,
            Vec::<RunId>::new(),
            "{what}"
        );
    }
    claim_exactly(
        s,
        &with(&[("beta", "v1"), ("alpha", "v2")]),
        &[&a2, &b1],
        "two accepted versions",
    )
    .await;
    assert_eq!(run_record(s, a1.run_id).await, a1, "alpha v1 is left alone");
    claim_exactly(
        s,
        &with(&[]),
        &[&a1, &a1_again],
        "an empty list accepts any graph",
    )
    .await;
}

/// Only unfinished, ready runs are claimable: not an ended run, not a running run driven
/// in-process (never ready), not an interrupted run without answers, not a waiting run
/// before its `until` or one waiting only for an event that has not arrived. A waiting run
/// is claimed from its `until` on and stays waiting (status and `updated_at` unchanged),
/// leased.
pub async fn only_ready_unfinished_runs_are_claimable(store: Arc<dyn Store>) {
    let s = &*store;
    let mut done = Writer::start(s, "ready-done").await;
    done.complete(s).await;
    let cancelled = enqueue_at(s, "ready-cancelled", build::at(1), 0).await;
    let c = build::finish(
        &cancelled.thread_id,
        0,
        cancelled.run_id,
        build::status_cancelled("not wanted"),
        vec![],
    );
    ok(s.commit(c).await, "cancel a queued run");
    let running = Writer::start(s, "ready-running").await;
    // The suspended runs are driven by workers (a run driven by the library never is
    // ready: `library_runs_are_never_claimable`).
    let mut interrupted = start_claimed(s, "ready-interrupted").await;
    let status = build::status_interrupted(vec![build::pending(
        InterruptId::generate(),
        "ask",
        r#"{"q":1}"#,
    )]);
    move_to(s, &mut interrupted, status).await;
    let mut event_only = start_claimed(s, "ready-event-only").await;
    move_to(s, &mut event_only, build::status_waiting(None, &["paid"])).await;
    let mut timer = start_claimed(s, "ready-timer").await;
    let until = build::at(50);
    move_to(s, &mut timer, build::status_waiting(Some(until), &["paid"])).await;

    let mut before = BTreeMap::new();
    for id in [
        done.run.run_id,
        cancelled.run_id,
        running.run.run_id,
        interrupted.run.run_id,
        event_only.run.run_id,
        timer.run.run_id,
    ] {
        before.insert(id, run_record(s, id).await);
    }
    for (id, r) in &before {
        let want = (*id == timer.run.run_id).then_some(until);
        assert_eq!(r.ready_at, want, "ready_at of {:?}", r.status.kind());
    }

    assert_eq!(
        claim_ids(
            s,
            &build::claim_request("w", Timestamp(until.0 - 1), TTL, 10)
        )
        .await,
        Vec::<RunId>::new(),
        "nothing is ready before the timer"
    );
    let timer_run = before[&timer.run.run_id].clone();
    // A lease that outlasts the claims below, which must find nothing.
    let long = Duration::from_secs(100 * 365 * 86_400);
    claim_exactly(
        s,
        &build::claim_request("w", until, long, 10),
        &[&timer_run],
        "the waiting run at its wake-up time",
    )
    .await;
    let far = Timestamp(until.0 + 10 * 365 * 86_400_000);
    assert_eq!(
        claim_ids(
            s,
            &build::claim_request("w", Timestamp(far.0 - 60_000), TTL, 10)
        )
        .await,
        Vec::<RunId>::new(),
        "ended, in-process, unanswered and event-waiting runs are never ready"
    );
    for (id, r) in before {
        if id != timer.run.run_id {
            assert_eq!(run_record(s, id).await, r, "a run that was not claimable");
        }
    }
}

/// Eight workers released together claim from 50 queued runs (limits 1 to 8, claiming
/// until nothing is left): every run is claimed exactly once, at epoch 1, by the worker
/// whose claim returned it, and reads back as returned.
pub async fn concurrent_claimers_take_each_run_once(store: Arc<dyn Store>) {
    let mut runs = BTreeMap::new();
    for i in 0..50u64 {
        let r = enqueue_at(&*store, &format!("swarm-{i:02}"), build::at(i % 7), 0).await;
        runs.insert(r.run_id, r);
    }
    let now = build::at(100);
    let barrier = Arc::new(Barrier::new(8));
    let tasks: Vec<_> = (0..8usize)
        .map(|k| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                let request = build::claim_request(&format!("worker-{k}"), now, TTL, k + 1);
                barrier.wait().await;
                let mut mine = Vec::new();
                loop {
                    let got = claim(&*store, &request).await;
                    assert!(
                        got.len() <= request.limit,
                        "worker-{k}: a claim with limit {} returned {}",
                        request.limit,
                        got.len()
                    );
                    if got.is_empty() {
                        break;
                    }
                    mine.extend(got.into_iter().map(|r| (request.worker_id.clone(), r)));
                    tokio::task::yield_now().await;
                }
                mine
            })
        })
        .collect();
    let mut taken: BTreeMap<RunId, (String, RunRecord)> = BTreeMap::new();
    for task in tasks {
        for (worker, r) in join(task).await {
            let id = r.run_id;
            if let Some((other, _)) = taken.insert(id, (worker.clone(), r)) {
                panic!("run {id} was claimed by both {other} and {worker}");
            }
        }
    }
    assert_eq!(
        taken.keys().copied().collect::<Vec<_>>(),
        runs.keys().copied().collect::<Vec<_>>(),
        "every queued run is claimed"
    );
    for (id, (worker, got)) in taken {
        let want = after_claim(&runs[&id], &worker, now, TTL);
        assert_eq!(got, want, "the record the claim of {worker} returned");
        assert_eq!(run_record(&*store, id).await, want, "run() of {id}");
    }
}
