//! The lease reaper and lease counts: `reap_leases` clears leases that expired at or before
//! its `now` — the epoch stays (the old holder stays fenced out), the run stays claimable
//! and a new claim takes the next epoch; `lease_counts` counts, per graph, the runs that
//! hold an unexpired lease.
//!
//! Claims are made at the wall clock (`base`) with leases of hours, and the reaper is asked
//! about a `now` hours later: the old holder's lease is then still valid by the store's own
//! clock, so its refused commit proves the reap, not the time.

use std::sync::Arc;
use std::time::Duration;

use oris_core::id::Timestamp;
use oris_core::store::{RunRecord, Store};

use crate::build::{self, GRAPH};
use crate::check::{assert_lease_lost, err, ok, run_record};
use crate::conformance::claims::enqueue;
use crate::conformance::leases::{claim_one, enqueue_own, refused};

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

/// `run` with its lease cleared, as the reaper leaves it.
fn unleased(run: &RunRecord) -> RunRecord {
    RunRecord {
        lease: None,
        ..run.clone()
    }
}

/// Reaps at `now` with `limit`, which must succeed.
async fn reap(s: &dyn Store, now: Timestamp, limit: usize) -> Vec<RunRecord> {
    ok(
        s.reap_leases(now, limit).await,
        &format!("reap_leases at {now:?}, limit {limit}"),
    )
}

/// A reap clears the leases that expired at or before its `now` (one expiring exactly then
/// too) and returns those runs after, earliest expiry first: unleased, at the same epoch,
/// still running, ready since their lease's expiry. Live leases and unleased runs are left
/// as they were; reaping again finds nothing. The old holder's renewal, fenced commit and
/// release then fail with `LeaseLost` (and the commit writes nothing), although its lease
/// would still be valid by the store's clock; the run is claimable at once and the new
/// claim takes epoch 2. The holder of a live lease renews and commits as before.
pub async fn reaping_clears_only_expired_leases(store: Arc<dyn Store>) {
    let s = &*store;
    let base = Timestamp::now();
    let a = enqueue_own(s, "reap-early", build::at(1)).await;
    let c = enqueue_own(s, "reap-exact", build::at(2)).await;
    let b = enqueue_own(s, "reap-live", build::at(3)).await;
    let q = enqueue_own(s, "reap-queued", build::at(4)).await;
    let (ra, fa) = claim_one(s, &a, "w1", base, HOUR).await;
    let (rc, _) = claim_one(s, &c, "w1", base, 2 * HOUR).await;
    let (rb, fb) = claim_one(s, &b, "w2", base, 3 * HOUR).await;

    let early = base.plus(HOUR - Duration::from_millis(1));
    assert_eq!(
        reap(s, early, 10).await,
        vec![],
        "a reap a millisecond before the first expiry"
    );
    assert_eq!(run_record(s, a.run_id).await, ra, "a live lease is kept");

    let now = base.plus(2 * HOUR);
    let want = vec![unleased(&ra), unleased(&rc)];
    assert_eq!(
        reap(s, now, 10).await,
        want,
        "a reap two hours after the claims: the lease of one hour and the one expiring \
         exactly now, earliest expiry first, unleased at epoch 1"
    );
    assert_eq!(
        want[0].ready_at,
        Some(base.plus(HOUR)),
        "ready since its expiry"
    );
    assert_eq!(want[1].ready_at, Some(now), "ready since its expiry");
    for r in &want {
        assert_eq!(run_record(s, r.run_id).await, *r, "run() after the reap");
    }
    assert_eq!(
        run_record(s, b.run_id).await,
        rb,
        "a lease expiring after now is not reaped"
    );
    assert_eq!(
        run_record(s, q.run_id).await,
        q,
        "an unleased run is not touched"
    );
    assert_eq!(reap(s, now, 10).await, vec![], "a second reap");

    // The old holder is fenced out, although its lease (until base + 1h) has not expired
    // by the store's clock.
    let e = err(
        s.renew_lease(&fa, "w1", base, HOUR).await,
        "the old holder's renewal after the reap",
    );
    assert_lease_lost(&e, a.run_id, 1, "the old holder's renewal after the reap");
    let c1 = build::fenced(
        build::append(&a.thread_id, 0, vec![build::started(&a, 1)]),
        fa,
    );
    refused(s, c1, a.run_id, 1, "the old holder's commit after the reap").await;
    let e = err(
        s.release_lease(&fa, base).await,
        "the old holder's release after the reap",
    );
    assert_lease_lost(&e, a.run_id, 1, "the old holder's release after the reap");
    assert_eq!(
        run_record(s, a.run_id).await,
        want[0],
        "the refused calls change nothing"
    );

    // Claimable at once, at the next epoch; the new holder commits.
    let (ra2, fa2) = claim_one(s, &want[0], "w3", now, HOUR).await;
    assert_eq!(
        (ra2.lease_epoch, fa2.epoch),
        (2, 2),
        "the claim after the reap"
    );
    let c2 = build::fenced(
        build::append(&a.thread_id, 0, vec![build::started(&a, 1)]),
        fa2,
    );
    ok(s.commit(c2).await, "the new holder's commit");

    // The live lease is untouched: its holder renews and commits.
    let renewed = ok(
        s.renew_lease(&fb, "w2", now, HOUR).await,
        "renewal of the live lease after the reap",
    );
    assert_eq!(renewed.lease_epoch, 1);
    let cb = build::fenced(
        build::append(&b.thread_id, 0, vec![build::started(&b, 1)]),
        fb,
    );
    ok(
        s.commit(cb).await,
        "a commit with the live lease after the reap",
    );
}

/// A reap takes at most `limit` expired leases, earliest expiry first, leaving the rest
/// for the next reap; a limit of 0 reaps nothing.
pub async fn reaping_takes_at_most_limit(store: Arc<dyn Store>) {
    let s = &*store;
    let base = Timestamp::now();
    let mut claimed = Vec::new();
    // Enqueued in the reverse order of their expiries, so that neither creation nor id
    // order is expiry order.
    for i in (1..=5u32).rev() {
        let q = enqueue_own(s, &format!("reap-limit-{i}"), build::at(u64::from(i))).await;
        let (r, _) = claim_one(s, &q, "w1", base, i * MINUTE).await;
        claimed.push(r);
    }
    claimed.reverse();
    let now = base.plus(HOUR);
    assert_eq!(reap(s, now, 0).await, vec![], "a reap with limit 0");
    for r in &claimed {
        assert_eq!(
            run_record(s, r.run_id).await,
            *r,
            "after a reap with limit 0"
        );
    }
    let mut reaped = Vec::new();
    for (round, n) in [2usize, 2, 1, 0].into_iter().enumerate() {
        let got = reap(s, now, 2).await;
        let want: Vec<RunRecord> = claimed[reaped.len()..reaped.len() + n]
            .iter()
            .map(unleased)
            .collect();
        assert_eq!(
            got,
            want,
            "reap {} with limit 2: the next {n} earliest expiries",
            round + 1
        );
        reaped.extend(got);
    }
    for r in &reaped {
        assert_eq!(run_record(s, r.run_id).await, *r, "run() after the reaps");
    }
}

/// `lease_counts(now)` counts, per graph name (ordered by name), the runs holding a lease
/// that expires after `now`: not expired leases (one expiring exactly at `now` included),
/// released ones, or unleased runs; graphs without any are absent. Reaping expired leases
/// does not change the counts at a later time, and removes them from counts at an earlier
/// one.
pub async fn lease_counts_count_live_leases_per_graph(store: Arc<dyn Store>) {
    let s = &*store;
    let base = Timestamp::now();
    let q = |thread: &'static str, graph: &'static str, n: u64| async move {
        let t = build::thread_id(thread);
        enqueue(
            s,
            build::queued_run(&t, graph, thread, build::at(n), 0, None),
        )
        .await
    };
    let a1 = q("count-a1", "alpha", 1).await;
    let a2 = q("count-a2", "alpha", 2).await;
    let a3 = q("count-a3", "alpha", 3).await;
    q("count-a4", "alpha", 4).await;
    let b1 = q("count-b1", "beta", 5).await;
    let b2 = q("count-b2", "beta", 6).await;
    let g1 = q("count-g1", "gamma", 7).await;
    q("count-d1", GRAPH, 8).await;
    claim_one(s, &a1, "w1", base, 2 * HOUR).await;
    claim_one(s, &a2, "w2", base, 3 * HOUR).await;
    claim_one(s, &a3, "w1", base, 30 * MINUTE).await;
    claim_one(s, &b1, "w2", base, 2 * HOUR).await;
    let (_, fb2) = claim_one(s, &b2, "w1", base, 2 * HOUR).await;
    ok(s.release_lease(&fb2, base).await, "release of b2");
    claim_one(s, &g1, "w3", base, 30 * MINUTE).await;

    let counts = |at: Timestamp| async move {
        ok(s.lease_counts(at).await, &format!("lease_counts at {at:?}"))
    };
    let pairs = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|(g, n)| ((*g).to_owned(), *n)).collect()
    };
    assert_eq!(
        counts(base).await,
        pairs(&[("alpha", 3), ("beta", 1), ("gamma", 1)]),
        "at the claims: every held lease, the released one and unleased runs aside"
    );
    assert_eq!(
        counts(base.plus(30 * MINUTE)).await,
        pairs(&[("alpha", 2), ("beta", 1)]),
        "when two leases expire exactly"
    );
    let now = base.plus(HOUR);
    assert_eq!(
        counts(now).await,
        pairs(&[("alpha", 2), ("beta", 1)]),
        "an hour after the claims"
    );
    assert_eq!(
        counts(base.plus(3 * HOUR)).await,
        vec![],
        "once every lease expired"
    );

    let reaped = reap(s, now, 10).await;
    assert_eq!(
        reaped.iter().map(|r| r.run_id).collect::<Vec<_>>(),
        vec![a3.run_id, g1.run_id],
        "the expired leases (same expiry: run id order)"
    );
    assert_eq!(
        counts(now).await,
        pairs(&[("alpha", 2), ("beta", 1)]),
        "after the reap"
    );
    assert_eq!(
        counts(base).await,
        pairs(&[("alpha", 2), ("beta", 1)]),
        "after the reap, at the time of the claims: the reaped leases are gone"
    );
}
