//! A thread image read from SQLite — what a server sends a remote worker with an attempt —
//! continues on the worker's local `MemoryStore`: with the latest snapshot inside the
//! claimed run, the image holds the log from the run's first event (the engine folds from
//! the snapshot but reads the run's settings in its `run_started`) and nothing before it
//! (an earlier run's log is absent), and the ordinary engine executes the run on it to its
//! end, applying the answer the server had recorded.

use std::sync::Arc;
use std::time::Duration;

use oris_core::event::{EventBody, Payload};
use oris_core::graph::{END, START};
use oris_core::id::{Seq, ThreadId, Timestamp};
use oris_core::protocol::ThreadImage;
use oris_core::status::StatusKind;
use oris_core::store::{ClaimRequest, MemoryStore, RunRecord, Store};
use oris_runtime::{
    Context, Engine, EngineOptions, Enqueue, EnqueueOptions, LeaseOptions, NodeError, StateGraph,
    Stop,
};
use oris_sqlite::{SqliteOptions, SqliteStore};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, oris_derive::State)]
#[oris(crate = "::oris_core")]
struct Chain {
    counter: i64,
    #[reducer(append)]
    log: Vec<String>,
}

/// `n0 → n1 → n2 → ask → n3 → n4`: each `n` adds one to `counter`; `ask` interrupts and
/// logs the answer.
fn chain() -> StateGraph<Chain> {
    let step = |name: &'static str| {
        move |s: Chain, _ctx: Context| async move {
            Ok::<_, NodeError>(
                ChainUpdate::default()
                    .counter(s.counter + 1)
                    .log(vec![name.to_owned()]),
            )
        }
    };
    StateGraph::<Chain>::new("chain", "1")
        .node("n0", step("n0"))
        .node("n1", step("n1"))
        .node("n2", step("n2"))
        .node("ask", |_s: Chain, ctx: Context| async move {
            let v: String = ctx.interrupt("go on?").await?;
            Ok(ChainUpdate::default().log(vec![format!("ask:{v}")]))
        })
        .node("n3", step("n3"))
        .node("n4", step("n4"))
        .edge(START, "n0")
        .edge("n0", "n1")
        .edge("n1", "n2")
        .edge("n2", "ask")
        .edge("ask", "n3")
        .edge("n3", "n4")
        .edge("n4", END)
}

/// Snapshots at every boundary, so that the image starts well after seq 1.
fn engine(store: Arc<dyn Store>) -> Engine {
    let engine = Engine::with_options(
        store,
        EngineOptions {
            snapshot_every: 1,
            ..EngineOptions::default()
        },
    );
    engine.register(chain().compile().expect("the chain compiles"));
    engine
}

fn lease(worker: &str) -> LeaseOptions {
    LeaseOptions {
        worker_id: worker.into(),
        ttl: Duration::from_secs(60),
        heartbeat: Duration::from_secs(3600),
    }
}

async fn claim_one(store: &dyn Store, worker: &str) -> RunRecord {
    let mut claimed = store
        .claim(&ClaimRequest {
            worker_id: worker.into(),
            now: Timestamp::now(),
            ttl: Duration::from_secs(60),
            limit: 1,
            graphs: Vec::new(),
        })
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "one claimable run: {claimed:?}");
    claimed.remove(0)
}

/// The image of `thread` as a server builds it: the latest snapshot and the log from its
/// seq — or from the claimed run's first seq when the snapshot lies inside the run (the
/// engine reads the run's settings in its `run_started`) — the runs the snapshot and the
/// claim name, the interrupts and deliveries.
async fn image_of(store: &dyn Store, thread: &ThreadId, run: &RunRecord) -> ThreadImage {
    let record = store.thread(thread).await.unwrap().expect("the thread");
    let snapshot = store.snapshot(thread, record.head).await.unwrap();
    let from = snapshot
        .as_ref()
        .map_or(Seq(1), |s| s.at_seq.min(run.first_seq));
    let mut runs = vec![run.clone()];
    if let Some(s) = &snapshot
        && s.run_id != run.run_id
    {
        runs.push(
            store
                .run(s.run_id)
                .await
                .unwrap()
                .expect("the snapshot's run"),
        );
    }
    ThreadImage {
        events: store.events(thread, Seq(from.0 - 1), 10_000).await.unwrap(),
        thread: record,
        runs,
        snapshot,
        interrupts: store.interrupts(thread).await.unwrap(),
        deliveries: store.deliveries(thread, false).await.unwrap(),
    }
}

/// Enqueues a run of the chain on `thread` and executes it on the server's store up to its
/// interrupt, which it then answers `yes`; returns the run claimed again (epoch 2).
async fn to_the_answer(on_server: &Engine, server: &dyn Store, thread: &ThreadId) -> RunRecord {
    on_server
        .enqueue(Enqueue {
            graph: "chain".into(),
            version: None,
            thread_id: thread.clone(),
            input: serde_json::json!({"counter": 0, "log": ["in"]}),
            options: EnqueueOptions::default(),
        })
        .await
        .unwrap();
    let first = claim_one(server, "w1").await;
    let done = on_server
        .execute(first, lease("w1"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(done.stop, Stop::Suspended);
    let open: Vec<_> = server
        .interrupts(thread)
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.applied_seq.is_none())
        .collect();
    assert_eq!(open.len(), 1);
    server
        .answer_interrupt(
            open[0].interrupt_id,
            Payload::from_json("\"yes\"".to_owned()).unwrap(),
            Timestamp::now(),
        )
        .await
        .unwrap();
    let again = claim_one(server, "w2").await;
    assert_eq!(again.lease_epoch, 2);
    again
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_from_sqlite_runs_to_the_end_on_a_memory_store() {
    let dir = tempfile::tempdir().unwrap();
    let server: Arc<dyn Store> = Arc::new(
        SqliteStore::open(dir.path().join("oris.db"), SqliteOptions::default())
            .await
            .unwrap(),
    );
    let on_server = engine(server.clone());
    let thread = ThreadId::new("image-chain").unwrap();
    // A first run of the thread ends on the server.
    let earlier = to_the_answer(&on_server, &*server, &thread).await;
    let done = on_server
        .execute(earlier, lease("w2"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(done.stop, Stop::Finished);

    // The second run's second attempt runs on a worker's copy, whose log starts at the
    // run's first event (the earlier run's log is absent).
    let second = to_the_answer(&on_server, &*server, &thread).await;
    let image = image_of(&*server, &thread, &second).await;
    let snapshot_at = image
        .snapshot
        .as_ref()
        .map(|s| s.at_seq)
        .expect("a snapshot");
    assert!(
        snapshot_at > second.first_seq.next().next(),
        "the snapshot stands well inside the run: {snapshot_at}, run from {}",
        second.first_seq
    );
    assert_eq!(image.events[0].seq, second.first_seq);
    assert!(second.first_seq > Seq(10), "{}", second.first_seq);
    let local = Arc::new(MemoryStore::new());
    // The log from the snapshot alone lacks the run's `run_started`: refused, clearly.
    let mut from_snapshot = image.clone();
    from_snapshot.events.retain(|e| e.seq >= snapshot_at);
    let refused = local.load_image(from_snapshot).unwrap_err().to_string();
    assert!(refused.contains("opening events"), "{refused}");
    local.load_image(image.clone()).unwrap();
    let on_worker = engine(local.clone());
    let done = on_worker
        .execute(second, lease("w2"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        (done.stop, done.status),
        (Stop::Finished, StatusKind::Completed)
    );

    let state = on_worker.state_json(&thread).await.unwrap();
    assert_eq!(state.values["counter"], 5);
    let once = ["in", "n0", "n1", "n2", "ask:yes", "n3", "n4"];
    let twice: Vec<&str> = once.iter().chain(once.iter()).copied().collect();
    assert_eq!(state.values["log"], serde_json::json!(twice));
    // The worker's commits continue the log from the image's head.
    let head = image.thread.head;
    let added = local.events(&thread, head, 10_000).await.unwrap();
    assert_eq!(added.first().map(|e| e.seq), Some(head.next()));
    assert!(
        added
            .iter()
            .any(|e| matches!(e.body, EventBody::InterruptResumed { .. }))
    );
    assert!(matches!(
        added.last().map(|e| &e.body),
        Some(EventBody::RunCompleted)
    ));
    // The server's store did not move: the worker's copy is its own.
    assert_eq!(server.thread(&thread).await.unwrap().unwrap().head, head);
}
