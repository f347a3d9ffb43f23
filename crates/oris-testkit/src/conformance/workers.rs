//! The worker registry: `register_worker` inserts or replaces a worker's record but keeps
//! its first `registered_at`; `touch_worker` moves `last_seen` of a known worker only;
//! `workers` lists them all by id.

use std::sync::Arc;

use oris_core::id::Timestamp;
use oris_core::store::{Store, WorkerRecord};

use crate::build;
use crate::check::ok;

fn worker(id: &str, graphs: &[(&str, &str)], capacity: u32, at: Timestamp) -> WorkerRecord {
    WorkerRecord {
        worker_id: id.to_owned(),
        graphs: graphs
            .iter()
            .map(|(g, v)| ((*g).to_owned(), (*v).to_owned()))
            .collect(),
        capacity,
        registered_at: at,
        last_seen: at,
        stopped_at: None,
    }
}

async fn workers(s: &dyn Store, what: &str) -> Vec<WorkerRecord> {
    ok(s.workers().await, &format!("workers() {what}"))
}

/// A new store has no workers. Registered workers read back exactly (graph pairs in order,
/// JSON-unfriendly names included), listed by id whatever the registration order. A new
/// registration of a known worker replaces every field (graphs, capacity, `last_seen`,
/// `stopped_at`) but `registered_at`, which stays the first one: a stop recorded by a
/// registration is cleared by the next one. `touch_worker` moves only `last_seen` of a
/// known worker and answers `true`; for an unknown one it answers `false` and creates
/// nothing.
pub async fn workers_register_touch_and_list(store: Arc<dyn Store>) {
    let s = &*store;
    assert_eq!(workers(s, "of a new store").await, vec![]);

    let b = worker(
        "worker-b",
        &[("orders", "v2"), ("orders", "v1"), ("qu\"o'te ü", "1.0\\n")],
        4,
        build::at(1),
    );
    let a = worker("worker-a", &[("billing", "7")], 1, build::at(2));
    ok(s.register_worker(&b).await, "register worker-b");
    ok(s.register_worker(&a).await, "register worker-a");
    assert_eq!(
        workers(s, "after two registrations").await,
        vec![a.clone(), b.clone()],
        "read back exactly, by id"
    );

    // Re-registration: everything replaced but registered_at.
    let b2 = WorkerRecord {
        graphs: vec![("orders".into(), "v3".into())],
        capacity: 16,
        registered_at: build::at(5),
        last_seen: build::at(5),
        ..b.clone()
    };
    ok(s.register_worker(&b2).await, "re-register worker-b");
    let b2_stored = WorkerRecord {
        registered_at: build::at(1),
        ..b2.clone()
    };
    assert_eq!(
        workers(s, "after a re-registration").await,
        vec![a.clone(), b2_stored.clone()],
        "a re-registration keeps the first registered_at and replaces the rest"
    );

    // A stop, then a new registration clears it.
    let a_stopped = WorkerRecord {
        last_seen: build::at(6),
        stopped_at: Some(build::at(6)),
        ..a.clone()
    };
    ok(
        s.register_worker(&a_stopped).await,
        "record worker-a's stop",
    );
    assert_eq!(
        workers(s, "after a stop").await,
        vec![a_stopped.clone(), b2_stored.clone()]
    );
    let a_again = WorkerRecord {
        registered_at: build::at(7),
        last_seen: build::at(7),
        stopped_at: None,
        ..a.clone()
    };
    ok(s.register_worker(&a_again).await, "re-register worker-a");
    let a_again_stored = WorkerRecord {
        registered_at: build::at(2),
        ..a_again.clone()
    };
    assert_eq!(
        workers(s, "after registering again").await,
        vec![a_again_stored.clone(), b2_stored.clone()],
        "a new registration clears stopped_at"
    );

    // Heartbeats.
    assert!(
        ok(
            s.touch_worker("worker-b", build::at(9)).await,
            "touch worker-b"
        ),
        "touching a known worker answers true"
    );
    let b_touched = WorkerRecord {
        last_seen: build::at(9),
        ..b2_stored.clone()
    };
    assert_eq!(
        workers(s, "after a touch").await,
        vec![a_again_stored.clone(), b_touched.clone()],
        "a touch moves last_seen of that worker only"
    );
    assert!(
        !ok(
            s.touch_worker("nobody", build::at(9)).await,
            "touch an unknown worker"
        ),
        "touching an unknown worker answers false"
    );
    assert!(
        !ok(
            s.touch_worker("Worker-B", build::at(9)).await,
            "touch by another case"
        ),
        "worker ids are case-sensitive"
    );
    assert_eq!(
        workers(s, "after touching unknown workers").await,
        vec![a_again_stored, b_touched],
        "touching an unknown worker creates nothing"
    );
}
