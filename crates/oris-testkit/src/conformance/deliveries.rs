//! External events: deliveries buffered per thread in arrival order, consumed by
//! `EventReceived` events, recorded once per idempotency key.

use std::collections::BTreeSet;
use std::sync::Arc;

use oris_core::id::{DeliveryId, Seq, ThreadId, Timestamp};
use oris_core::store::{Delivery, Error, Store};
use tokio::sync::Barrier;

use crate::build::{self, payload};
use crate::check::{FullView, ThreadView, assert_no_thread, deliveries_of, err, ok};
use crate::conformance::concurrency::join;
use crate::writer::Writer;

/// Delivers an event that must be recorded anew; checks and returns the delivery.
async fn deliver_new(
    s: &dyn Store,
    thread: &ThreadId,
    name: &str,
    json: &str,
    key: Option<&str>,
    at: Timestamp,
) -> Delivery {
    let what = format!("deliver({thread}, {name}, {json}, key {key:?})");
    let (d, new) = ok(
        s.deliver(thread, name, payload(json), key.map(str::to_owned), at)
            .await,
        &what,
    );
    assert!(new, "{what}: a new delivery must be reported as new");
    let want = Delivery {
        delivery_id: d.delivery_id,
        thread_id: thread.clone(),
        name: name.to_owned(),
        payload: payload(json),
        key: key.map(str::to_owned),
        sent_at: at,
        consumed_seq: None,
    };
    assert_eq!(d, want, "{what}: the returned delivery");
    d
}

/// Delivers an event whose key was used before with the same event; it must return
/// `original` unchanged and report it as not new.
async fn deliver_again(s: &dyn Store, original: &Delivery, name: &str, json: &str, at: Timestamp) {
    let what = format!(
        "re-delivery of {} ({name}, {json}, key {:?})",
        original.delivery_id, original.key
    );
    let (d, new) = ok(
        s.deliver(
            &original.thread_id,
            name,
            payload(json),
            original.key.clone(),
            at,
        )
        .await,
        &what,
    );
    assert!(!new, "{what}: must not be reported as new");
    assert_eq!(&d, original, "{what}: must return the original delivery");
}

/// Consumes `ds` (in order) by one commit of the writer's run with an `EventReceived`
/// event each; returns the deliveries as they must read afterwards.
async fn consume(s: &dyn Store, w: &mut Writer, ds: &[&Delivery]) -> Vec<Delivery> {
    let r = w.run.run_id;
    let head = w.head;
    let events = ds
        .iter()
        .enumerate()
        .map(|(i, d)| {
            build::event_received(
                r,
                head + 1 + i as u64,
                &d.name,
                Some(d.delivery_id),
                Some(d.payload.json()),
            )
        })
        .collect();
    w.commit(s, build::append(&w.thread, head, events)).await;
    ds.iter()
        .enumerate()
        .map(|(i, d)| Delivery {
            consumed_seq: Some(Seq(head + 1 + i as u64)),
            ..(*d).clone()
        })
        .collect()
}

/// `deliver` to an unknown thread fails with `ThreadNotFound` and creates nothing. On a
/// thread, each delivery is recorded with its name, payload (verbatim), key and time, a
/// fresh id, not consumed, and touches neither log nor runs. `deliveries` lists a thread's
/// own, in arrival order; a commit with `EventReceived { delivery: Some(id) }` sets that
/// delivery's `consumed_seq` to the event's seq (a timed-out wait consumes nothing, a failed
/// commit nothing), and `pending_only` leaves consumed ones out. A thread whose run ended
/// still takes deliveries.
pub async fn deliveries_are_buffered_in_order(store: Arc<dyn Store>) {
    let s = &*store;
    let none = build::thread_id("dl-none");
    let e = err(
        s.deliver(&none, "paid", payload("{}"), None, build::at(1))
            .await,
        "deliver to an unknown thread",
    );
    assert_eq!(
        e,
        Error::ThreadNotFound {
            thread_id: none.clone()
        }
    );
    let e = err(
        s.deliver(&none, "paid", payload("{}"), Some("k".into()), build::at(1))
            .await,
        "keyed deliver to an unknown thread",
    );
    assert_eq!(
        e,
        Error::ThreadNotFound {
            thread_id: none.clone()
        }
    );
    assert_no_thread(s, &none, "deliver to an unknown thread").await;

    let mut a = Writer::start(s, "dl-a").await;
    let mut b = Writer::start(s, "dl-b").await;
    let log = ThreadView::read(s, &a.thread).await;
    let ta = a.thread.clone();
    let d1 = deliver_new(
        s,
        &ta,
        "paid",
        r#"{"amount": 5, "cur":"€"}"#,
        None,
        build::at(10),
    )
    .await;
    let d2 = deliver_new(s, &ta, "shipped 📦", "null", Some("k-1"), build::at(11)).await;
    let db = deliver_new(s, &b.thread, "paid", "{}", None, build::at(12)).await;
    let d3 = deliver_new(s, &ta, "paid", "[1.50,2]", None, build::at(13)).await;
    // The same event without a key is a new delivery.
    let d4 = deliver_new(
        s,
        &ta,
        "paid",
        r#"{"amount": 5, "cur":"€"}"#,
        None,
        build::at(14),
    )
    .await;
    let ids: BTreeSet<DeliveryId> = [&d1, &d2, &db, &d3, &d4]
        .iter()
        .map(|d| d.delivery_id)
        .collect();
    assert_eq!(ids.len(), 5, "every delivery has its own id");
    log.assert_unchanged(s, "deliveries").await;

    let all = vec![d1.clone(), d2.clone(), d3.clone(), d4.clone()];
    assert_eq!(deliveries_of(s, &ta, false).await, all, "in arrival order");
    assert_eq!(deliveries_of(s, &ta, true).await, all, "all pending");
    assert_eq!(deliveries_of(s, &b.thread, false).await, vec![db.clone()]);

    // Consuming d3 (not the oldest) and a timed-out wait.
    let head = a.head;
    let timed_out = build::event_received(a.run.run_id, head + 1, "shipped 📦", None, None);
    a.commit(s, build::append(&ta, head, vec![timed_out])).await;
    assert_eq!(
        deliveries_of(s, &ta, true).await,
        all,
        "a timeout consumes nothing"
    );
    let d3c = consume(s, &mut a, &[&d3]).await.remove(0);
    assert_eq!(
        deliveries_of(s, &ta, false).await,
        vec![d1.clone(), d2.clone(), d3c.clone(), d4.clone()],
        "d3 consumed"
    );
    assert_eq!(
        deliveries_of(s, &ta, true).await,
        vec![d1.clone(), d2.clone(), d4.clone()],
        "pending: d3 left out"
    );
    assert_eq!(deliveries_of(s, &b.thread, false).await, vec![db.clone()]);

    // A failed commit consumes nothing.
    let before = FullView::read(s, &ta).await;
    let stale = build::append(
        &ta,
        a.head - 1,
        vec![build::event_received(
            a.run.run_id,
            a.head,
            "paid",
            Some(d1.delivery_id),
            Some(d1.payload.json()),
        )],
    );
    err(s.commit(stale).await, "a stale commit consuming d1");
    before
        .assert_unchanged(s, "a stale commit consuming d1")
        .await;

    let consumed = consume(s, &mut a, &[&d2, &d1]).await;
    assert_eq!(
        deliveries_of(s, &ta, false).await,
        vec![
            consumed[1].clone(),
            consumed[0].clone(),
            d3c.clone(),
            d4.clone()
        ],
        "d1 and d2 consumed, listed in arrival order"
    );
    assert_eq!(deliveries_of(s, &ta, true).await, vec![d4.clone()]);

    // Later deliveries queue behind the pending ones; an ended run's thread takes them.
    a.complete(s).await;
    let d5 = deliver_new(s, &ta, "paid", "5", Some("k-5"), build::at(15)).await;
    assert_eq!(deliveries_of(s, &ta, true).await, vec![d4, d5]);
    b.finish(s, build::status_cancelled("x")).await;
    let db2 = deliver_new(s, &b.thread, "late", "{}", None, build::at(16)).await;
    assert_eq!(deliveries_of(s, &b.thread, true).await, vec![db, db2]);
}

/// An idempotency key records one delivery per thread: the same key with the same name and
/// payload (JSON compared by value) returns the original delivery — its bytes, time and
/// consumption — as not new and records nothing; the same key with another payload or name
/// fails with `IdempotencyConflict` and changes nothing. The same key on another thread is
/// independent; another key, or none, records a new delivery.
pub async fn delivery_keys_are_idempotent(store: Arc<dyn Store>) {
    let s = &*store;
    let mut a = Writer::start(s, "key-a").await;
    let b = Writer::start(s, "key-b").await;
    let ta = a.thread.clone();
    let json = r#"{"amount":5,"cur":"EUR"}"#;
    let d1 = deliver_new(s, &ta, "paid", json, Some("order-1"), build::at(10)).await;
    deliver_again(s, &d1, "paid", json, build::at(11)).await;
    deliver_again(
        s,
        &d1,
        "paid",
        " { \"cur\" : \"EUR\",\n\"amount\":5 } ",
        build::at(12),
    )
    .await;
    assert_eq!(
        deliveries_of(s, &ta, false).await,
        vec![d1.clone()],
        "one delivery"
    );

    let before_a = FullView::read(s, &ta).await;
    let before_b = FullView::read(s, &b.thread).await;
    let conflicts = [
        ("paid", r#"{"amount":6,"cur":"EUR"}"#),
        ("paid", r#"{"amount":5}"#),
        ("paid", r#"{"amount":5,"cur":"EUR","note":null}"#),
        ("refunded", json),
        ("Paid", json),
    ];
    for (name, other) in conflicts {
        let what = format!("key order-1 with ({name}, {other})");
        let e = err(
            s.deliver(
                &ta,
                name,
                payload(other),
                Some("order-1".into()),
                build::at(13),
            )
            .await,
            &what,
        );
        assert_eq!(
            e,
            Error::IdempotencyConflict {
                key: "order-1".into()
            },
            "{what}"
        );
        before_a.assert_unchanged(s, &what).await;
        before_b.assert_unchanged(s, &what).await;
    }

    // Keys are per thread.
    let tb = b.thread.clone();
    let b1 = deliver_new(
        s,
        &tb,
        "paid",
        r#"{"amount":7}"#,
        Some("order-1"),
        build::at(14),
    )
    .await;
    deliver_again(s, &b1, "paid", r#"{"amount":7}"#, build::at(15)).await;
    let b2 = deliver_new(s, &tb, "paid", json, Some("order-1b"), build::at(16)).await;
    assert_eq!(deliveries_of(s, &tb, false).await, vec![b1, b2]);
    assert_eq!(
        deliveries_of(s, &ta, false).await,
        vec![d1.clone()],
        "thread a unchanged"
    );

    // Another key, or none, is another delivery.
    let d2 = deliver_new(s, &ta, "paid", json, Some("order-2"), build::at(17)).await;
    let d3 = deliver_new(s, &ta, "paid", json, None, build::at(18)).await;
    let d4 = deliver_new(s, &ta, "paid", json, None, build::at(19)).await;

    // A consumed delivery still answers for its key.
    let d1c = consume(s, &mut a, &[&d1]).await.remove(0);
    deliver_again(s, &d1c, "paid", json, build::at(20)).await;
    let what = "key of a consumed delivery with another payload";
    let before = FullView::read(s, &ta).await;
    let e = err(
        s.deliver(
            &ta,
            "paid",
            payload("{}"),
            Some("order-1".into()),
            build::at(21),
        )
        .await,
        what,
    );
    assert_eq!(
        e,
        Error::IdempotencyConflict {
            key: "order-1".into()
        },
        "{what}"
    );
    before.assert_unchanged(s, what).await;
    assert_eq!(
        deliveries_of(s, &ta, false).await,
        vec![d1c, d2.clone(), d3.clone(), d4.clone()]
    );
    assert_eq!(deliveries_of(s, &ta, true).await, vec![d2, d3, d4]);
}

/// Concurrent deliveries are decided atomically. 32 senders with one key and the same
/// event (spelt two ways): exactly one is new, all get the same delivery, one is listed.
/// 32 senders with one key and 32 payloads: exactly one is recorded, the others get
/// `IdempotencyConflict`. 32 senders with 32 keys: 32 deliveries, none lost. 4 rounds each.
pub async fn concurrent_deliveries_with_one_key_record_one(store: Arc<dyn Store>) {
    const SENDERS: usize = 32;
    let s = &*store;
    let w = Writer::start(s, "key-race").await;
    let mut expected: Vec<Delivery> = Vec::new();
    for round in 0..12usize {
        // 0..4: one key, one event; 4..8: one key, 32 events; 8..12: 32 keys.
        let mode = round / 4;
        let barrier = Arc::new(Barrier::new(SENDERS));
        let tasks: Vec<_> = (0..SENDERS)
            .map(|k| {
                let json = match (mode, k % 2) {
                    (0, 0) => format!(r#"{{"round":{round},"n":1}}"#),
                    (0, _) => format!(r#"{{ "n" : 1 , "round" : {round} }}"#),
                    _ => format!(r#"{{"round":{round},"sender":{k}}}"#),
                };
                let key = if mode == 2 {
                    format!("round-{round}-sender-{k}")
                } else {
                    format!("round-{round}")
                };
                let at = build::at(1_000 + k as u64);
                let (store, barrier, t) = (store.clone(), barrier.clone(), w.thread.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .deliver(&t, "tick", payload(&json), Some(key), at)
                        .await
                })
            })
            .collect();
        let mut new = Vec::new();
        let mut returned = Vec::new();
        for task in tasks {
            let what = format!("round {round}");
            match join(task).await {
                Ok((d, true)) => new.push(d),
                Ok((d, false)) => {
                    assert_eq!(mode, 0, "{what}: a re-delivery of a different event");
                    returned.push(d);
                }
                Err(e) => {
                    assert_eq!(mode, 1, "{what}: a delivery failed with {e:?}");
                    assert_eq!(
                        e,
                        Error::IdempotencyConflict {
                            key: format!("round-{round}")
                        },
                        "{what}"
                    );
                }
            }
        }
        let want_new = if mode == 2 { SENDERS } else { 1 };
        assert_eq!(
            new.len(),
            want_new,
            "round {round}: {} of {SENDERS} concurrent deliveries were new",
            new.len()
        );
        for d in returned {
            assert_eq!(d, new[0], "round {round}: a re-delivery returned another");
        }
        let listed = deliveries_of(s, &w.thread, false).await;
        assert_eq!(
            listed.len(),
            expected.len() + want_new,
            "round {round}: deliveries listed"
        );
        assert_eq!(
            listed[..expected.len()],
            expected[..],
            "round {round}: earlier ones"
        );
        let ids: BTreeSet<DeliveryId> = listed.iter().map(|d| d.delivery_id).collect();
        assert_eq!(
            ids.len(),
            listed.len(),
            "round {round}: a delivery listed twice"
        );
        for d in &listed[expected.len()..] {
            assert!(
                new.contains(d),
                "round {round}: listed {d:?}, which no sender was given as new"
            );
        }
        expected = listed;
    }
}
