//! Idempotency records of the server: a key reserved per (scope, key) for one request,
//! in flight until completed with a response (then replayed) or released; a lock that
//! expires lets a retry take an abandoned reservation over; an expired record frees the
//! key; purging deletes expired records only. Reservations are atomic with their check.

use std::sync::Arc;

use oris_core::id::Timestamp;
use oris_core::store::{IdempotencyRecord, Reservation, Store, StoredResponse};
use tokio::sync::Barrier;

use crate::build;
use crate::check::ok;
use crate::conformance::concurrency::join;

const LOCK_MS: i64 = 30_000;
const KEEP_MS: i64 = 3_600_000;

/// A reservation of `key` in `scope` for a request hashed `hash`, made at `now`: locked for
/// 30 s, kept for an hour.
fn candidate(scope: &str, key: &str, hash: &str, now: Timestamp) -> IdempotencyRecord {
    IdempotencyRecord {
        scope: scope.to_owned(),
        key: key.to_owned(),
        request_hash: hash.to_owned(),
        created_at: now,
        expires_at: Timestamp(now.0 + KEEP_MS),
        locked_until: Timestamp(now.0 + LOCK_MS),
        response: None,
    }
}

async fn reserve(
    s: &dyn Store,
    scope: &str,
    key: &str,
    hash: &str,
    now: Timestamp,
    want: Reservation,
    what: &str,
) {
    let c = candidate(scope, key, hash, now);
    let got = ok(
        s.reserve_idempotency(&c, now).await,
        &format!("{what}: reserve ({scope}, {key}) with {hash} at {now:?}"),
    );
    assert_eq!(got, want, "{what}");
}

/// Reserve → `Reserved`; the same request while in flight → `InFlight`; another request
/// with the key → `Mismatch`; once completed, the same request → `Replay` with the stored
/// response (status and body exactly), another still `Mismatch`; releasing a completed record
/// does nothing. A lock that ran out (the reserving process died) lets the same request take
/// the reservation over (`Reserved`), locked again; releasing an unfinished reservation frees
/// the key. A record that expired counts as absent: any request reserves the key afresh.
/// Scopes are independent; completing an unknown key does nothing.
pub async fn idempotency_keys_reserve_replay_and_expire(store: Arc<dyn Store>) {
    let s = &*store;
    let t0 = build::at(1);
    let at = |ms: i64| Timestamp(t0.0 + ms);
    use Reservation::*;

    reserve(s, "alice", "k1", "h1", t0, Reserved, "first").await;
    reserve(
        s,
        "alice",
        "k1",
        "h1",
        at(1_000),
        InFlight,
        "same request, in flight",
    )
    .await;
    reserve(
        s,
        "alice",
        "k1",
        "h2",
        at(1_000),
        Mismatch,
        "another request",
    )
    .await;
    reserve(s, "bob", "k1", "h2", at(1_000), Reserved, "another scope").await;
    let response = StoredResponse {
        status: 201,
        body: r#"{"run_id": "run_1", "note": "ünïcode \"quoted\"", "n": 1.50}"#.to_owned(),
    };
    ok(
        s.complete_idempotency("alice", "k1", &response).await,
        "complete",
    );
    let replay = Replay(response.clone());
    reserve(
        s,
        "alice",
        "k1",
        "h1",
        at(2_000),
        replay.clone(),
        "completed",
    )
    .await;
    reserve(
        s,
        "alice",
        "k1",
        "h2",
        at(2_000),
        Mismatch,
        "completed, another request",
    )
    .await;
    reserve(
        s,
        "bob",
        "k1",
        "h2",
        at(2_000),
        InFlight,
        "the other scope is untouched",
    )
    .await;
    ok(
        s.release_idempotency("alice", "k1").await,
        "release a completed record",
    );
    reserve(
        s,
        "alice",
        "k1",
        "h1",
        at(3_000),
        replay.clone(),
        "still completed",
    )
    .await;

    // An abandoned reservation: its lock runs out at 30 s.
    reserve(s, "alice", "k2", "h1", t0, Reserved, "k2").await;
    reserve(
        s,
        "alice",
        "k2",
        "h1",
        at(LOCK_MS - 1),
        InFlight,
        "k2 locked",
    )
    .await;
    reserve(
        s,
        "alice",
        "k2",
        "h9",
        at(LOCK_MS),
        Mismatch,
        "k2, another request",
    )
    .await;
    reserve(
        s,
        "alice",
        "k2",
        "h1",
        at(LOCK_MS),
        Reserved,
        "k2 taken over",
    )
    .await;
    reserve(
        s,
        "alice",
        "k2",
        "h1",
        at(LOCK_MS + 1),
        InFlight,
        "k2 locked again",
    )
    .await;
    reserve(
        s,
        "alice",
        "k2",
        "h1",
        at(2 * LOCK_MS - 1),
        InFlight,
        "k2 locked by the take-over until its own lock ends",
    )
    .await;

    // Releasing an unfinished reservation frees the key.
    reserve(s, "alice", "k3", "h1", t0, Reserved, "k3").await;
    ok(s.release_idempotency("alice", "k3").await, "release k3");
    reserve(
        s,
        "alice",
        "k3",
        "h2",
        at(1),
        Reserved,
        "k3 after its release",
    )
    .await;
    ok(
        s.release_idempotency("alice", "never").await,
        "release an unknown key",
    );

    // Expiry: k1 (completed) is kept until t0 + 1 h.
    reserve(
        s,
        "alice",
        "k1",
        "h1",
        at(KEEP_MS - 1),
        replay,
        "k1 before expiry",
    )
    .await;
    reserve(
        s,
        "alice",
        "k1",
        "h2",
        at(KEEP_MS),
        Reserved,
        "k1 expired: another request",
    )
    .await;
    reserve(
        s,
        "alice",
        "k1",
        "h1",
        at(KEEP_MS + 1),
        Mismatch,
        "k1 now belongs to the new request",
    )
    .await;

    ok(
        s.complete_idempotency("carol", "unknown", &response).await,
        "complete an unknown key",
    );
    reserve(
        s,
        "carol",
        "unknown",
        "h1",
        t0,
        Reserved,
        "nothing was created",
    )
    .await;
}

/// `purge_idempotency(now)` deletes the records that expired at or before `now` and counts
/// them; later ones stay (a completed one still replays, another request with a kept key is refused).
pub async fn purge_deletes_expired_idempotency_records(store: Arc<dyn Store>) {
    let s = &*store;
    let t0 = build::at(1);
    let at = |ms: i64| Timestamp(t0.0 + ms);
    for (i, created) in [0, 1_000, 2_000, 3_000].into_iter().enumerate() {
        let c = candidate("s", &format!("k{i}"), "h", at(created));
        let got = ok(s.reserve_idempotency(&c, at(created)).await, "reserve");
        assert_eq!(got, Reservation::Reserved);
    }
    let response = StoredResponse {
        status: 200,
        body: "{}".into(),
    };
    ok(
        s.complete_idempotency("s", "k3", &response).await,
        "complete k3",
    );
    assert_eq!(
        ok(s.purge_idempotency(at(KEEP_MS - 1)).await, "purge"),
        0,
        "nothing expired yet"
    );
    assert_eq!(
        ok(s.purge_idempotency(at(KEEP_MS + 1_000)).await, "purge"),
        2,
        "k0 and k1 expired (k1 exactly at now)"
    );
    assert_eq!(
        ok(s.purge_idempotency(at(KEEP_MS + 1_000)).await, "purge"),
        0,
        "already purged"
    );
    let now = at(KEEP_MS + 1_500);
    let got = ok(
        s.reserve_idempotency(&candidate("s", "k3", "h", now), now)
            .await,
        "k3",
    );
    assert_eq!(got, Reservation::Replay(response), "k3 is kept");
    let got = ok(
        s.reserve_idempotency(&candidate("s", "k2", "other", now), now)
            .await,
        "k2",
    );
    assert_eq!(
        got,
        Reservation::Mismatch,
        "k2 is kept: another request with its key is refused"
    );
    assert_eq!(
        ok(s.purge_idempotency(Timestamp(i64::MAX)).await, "purge all"),
        2,
        "k2 and k3"
    );
}

/// 20 identical requests released together reserve one key: exactly one gets `Reserved`,
/// the others `InFlight`. Then 20 different requests on a fresh key: exactly one
/// `Reserved`, the others `Mismatch`.
pub async fn concurrent_reservations_reserve_once(store: Arc<dyn Store>) {
    let now = build::at(1);
    for (key, same) in [("same-request", true), ("different-requests", false)] {
        let barrier = Arc::new(Barrier::new(20));
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let hash = if same {
                    "h".to_owned()
                } else {
                    format!("h{i}")
                };
                let c = candidate("scope", key, &hash, now);
                let (store, barrier) = (store.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    ok(store.reserve_idempotency(&c, now).await, "reserve")
                })
            })
            .collect();
        let mut reserved = 0;
        for task in tasks {
            match join(task).await {
                Reservation::Reserved => reserved += 1,
                Reservation::InFlight if same => {}
                Reservation::Mismatch if !same => {}
                other => panic!("{key}: unexpected {other:?}"),
            }
        }
        assert_eq!(reserved, 1, "{key}: exactly one reservation");
    }
}
