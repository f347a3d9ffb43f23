//! Threads and runs: cancellation (live, undriven, driven elsewhere), thread id rules, one
//! active run per thread, continuing a thread, graph mismatch.

mod common;

use std::sync::Arc;

use common::*;
use oris_core::event::EventBody;
use oris_core::graph::{END, START};
use oris_core::id::{IdError, Seq, THREAD_ID_MAX_LEN};
use oris_core::status::RunStatus;
use oris_core::store::{RunFilter, Store};
use oris_runtime::{Engine, EngineOptions, Error, GraphHandle, NodeError, RunOutcome, StateGraph};

/// `START → hold → END`, where `hold` blocks on its first `blocking` executions and
/// returns `{log: ["hold"]}` after that.
fn holding(b: Blocker, blocking: usize, runs: Arc<Counters>) -> StateGraph<Lin> {
    StateGraph::<Lin>::new("hold", "1")
        .node("hold", move |_s: Lin, _ctx| {
            let n = runs.hit("hold");
            let b = b.clone();
            async move {
                if n <= blocking {
                    b.block().await;
                }
                Ok::<_, NodeError>(LinUpdate::default().log(vec!["hold".to_owned()]))
            }
        })
        .edge(START, "hold")
        .edge("hold", END)
}

fn spawn_start(
    h: &GraphHandle<Lin>,
    thread: &str,
) -> tokio::task::JoinHandle<Result<RunOutcome<Lin>, Error>> {
    let h = h.clone();
    let thread = thread.to_owned();
    tokio::spawn(async move { h.start(thread, Lin::default()).await })
}

// ---------------------------------------------------------------------------------------
// 10. Cancellation
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn cancel_stops_a_live_run_and_drops_its_node() {
    let (b, mut probe) = blocker();
    let dropped = probe.arm();
    let (store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(holding(b, usize::MAX, Counters::new()).compile().unwrap());
    let task = spawn_start(&h, "c1");
    probe.started().await;

    let record = within("cancel", engine.cancel(&tid("c1"), "operator said stop"))
        .await
        .unwrap();
    let reason = "operator said stop".to_owned();
    assert_eq!(
        record.status,
        RunStatus::Cancelled {
            reason: reason.clone()
        }
    );
    match within("the run", task).await.unwrap().unwrap() {
        RunOutcome::Cancelled { reason: r, run_id } => {
            assert_eq!(r, reason);
            assert_eq!(run_id, record.run_id);
        }
        other => panic!("{other:?}"),
    }
    within("the node future to be dropped", dropped)
        .await
        .expect("dropped, not leaked");

    // Durable: the store says so, and the log ends with the cancellation.
    let t = store.thread(&tid("c1")).await.unwrap().unwrap();
    assert_eq!(t.active_run, None);
    let run = store.run(record.run_id).await.unwrap().unwrap();
    assert_eq!(
        run.status,
        RunStatus::Cancelled {
            reason: reason.clone()
        }
    );
    let events = all_events(&engine, "c1").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].body, EventBody::RunCancelled { reason });

    // Nothing left to cancel.
    assert_eq!(
        engine.cancel(&tid("c1"), "again").await.unwrap_err(),
        Error::NoActiveRun(tid("c1"))
    );
    assert_eq!(
        engine.cancel(&tid("nobody"), "x").await.unwrap_err(),
        Error::ThreadNotFound(tid("nobody"))
    );
}

#[tokio::test]
async fn cancelling_a_finished_run_is_no_active_run() {
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(linear("w1", 2).compile().unwrap());
    h.start("done", Lin::default())
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(
        engine.cancel(&tid("done"), "late").await.unwrap_err(),
        Error::NoActiveRun(tid("done"))
    );
    assert_eq!(
        all_events(&engine, "done").await.len(),
        4,
        "nothing written"
    );
}

#[tokio::test]
async fn cancel_of_a_run_nobody_drives_is_durable() {
    let (b, mut probe) = blocker();
    let dropped = probe.arm();
    let runs = Counters::new();
    let (store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(holding(b, 1, runs.clone()).compile().unwrap());
    let task = spawn_start(&h, "orphan");
    probe.started().await;
    // The process driving the run "dies": its task is aborted mid-node.
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    within("the node future to be dropped", dropped)
        .await
        .unwrap();
    let run_id = engine.latest_run(&tid("orphan")).await.unwrap().run_id;
    assert_eq!(
        store.run(run_id).await.unwrap().unwrap().status,
        RunStatus::Running,
        "the run is left running in the store"
    );

    let record = engine.cancel(&tid("orphan"), "cleanup").await.unwrap();
    assert_eq!(record.run_id, run_id);
    let cancelled = RunStatus::Cancelled {
        reason: "cleanup".into(),
    };
    assert_eq!(record.status, cancelled);
    assert_eq!(store.run(run_id).await.unwrap().unwrap().status, cancelled);
    assert_eq!(
        store
            .thread(&tid("orphan"))
            .await
            .unwrap()
            .unwrap()
            .active_run,
        None
    );
    let events = all_events(&engine, "orphan").await;
    assert_eq!(
        events.last().unwrap().body,
        EventBody::RunCancelled {
            reason: "cleanup".into()
        }
    );
    assert_eq!(
        h.recover_thread("orphan").await.unwrap_err(),
        Error::NoActiveRun(tid("orphan"))
    );
    // The thread takes a new run afterwards.
    let s = h
        .start("orphan", Lin::default())
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(s.log, ["hold"]);
    assert_eq!(runs.count("hold"), 2);
}

#[tokio::test]
async fn cancel_from_another_engine_stops_the_driver_at_its_next_commit() {
    let store = Arc::new(oris_core::store::MemoryStore::new());
    let driving = Engine::new(store.clone());
    let other = Engine::new(store.clone());
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let g = StateGraph::<Lin>::new("gated", "1")
        .node("gated", move |_s: Lin, _ctx| {
            let mut rx = release_rx.clone();
            let started = started_tx.clone();
            async move {
                let _ = started.send(());
                let _ = rx.wait_for(|go| *go).await;
                Ok::<_, NodeError>(LinUpdate::default().log(vec!["gated".to_owned()]))
            }
        })
        .edge(START, "gated")
        .edge("gated", END)
        .compile()
        .unwrap();
    let h = driving.register(g);
    let task = spawn_start(&h, "elsewhere");
    within("the node to start", started_rx.recv())
        .await
        .unwrap();

    let record = other.cancel(&tid("elsewhere"), "operator").await.unwrap();
    assert!(matches!(record.status, RunStatus::Cancelled { .. }));
    release_tx.send(true).unwrap();
    let err = within("the driver", task).await.unwrap().unwrap_err();
    assert!(
        matches!(&err, Error::Superseded { thread_id, run_id } if thread_id.as_str() == "elsewhere" && *run_id == record.run_id),
        "{err:?}"
    );
    // The node's result was not written after the cancellation.
    let events = all_events(&driving, "elsewhere").await;
    assert_eq!(events.len(), 2);
    assert!(matches!(events[1].body, EventBody::RunCancelled { .. }));
    assert_eq!(
        h.state("elsewhere").await.unwrap().values.log,
        Vec::<String>::new()
    );
}

// ---------------------------------------------------------------------------------------
// 11. Thread rules
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_thread_ids_are_rejected_and_nothing_is_stored() {
    let runs = Counters::new();
    let (b, _probe) = blocker();
    let (store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(holding(b, 0, runs.clone()).compile().unwrap());
    let too_long = "x".repeat(THREAD_ID_MAX_LEN + 1);
    for (id, want) in [
        ("", IdError::Empty),
        (
            "a b",
            IdError::InvalidChar {
                found: ' ',
                position: 1,
            },
        ),
        (too_long.as_str(), IdError::TooLong { len: 201 }),
    ] {
        assert_eq!(
            h.start(id, Lin::default()).await.unwrap_err(),
            Error::InvalidThreadId(want.clone()),
            "{id:?}"
        );
        assert!(matches!(h.state(id).await, Err(Error::InvalidThreadId(_))));
        assert!(matches!(
            h.recover_thread(id).await,
            Err(Error::InvalidThreadId(_))
        ));
    }
    assert_eq!(runs.count("hold"), 0);
    assert!(store.runs(&RunFilter::default()).await.unwrap().is_empty());

    // The longest allowed id works.
    let longest = "y".repeat(THREAD_ID_MAX_LEN);
    h.start(&longest, Lin::default())
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(store.runs(&RunFilter::default()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn second_start_on_a_thread_with_an_active_run_is_run_active() {
    let (b, mut probe) = blocker();
    let runs = Counters::new();
    let (store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(holding(b.clone(), 1, runs.clone()).compile().unwrap());
    let task = spawn_start(&h, "busy");
    probe.started().await;
    let active = engine.latest_run(&tid("busy")).await.unwrap().run_id;

    let err = h.start("busy", Lin::default()).await.unwrap_err();
    assert_eq!(
        err,
        Error::RunActive {
            thread_id: tid("busy"),
            run_id: active
        }
    );
    // Another engine on the same store sees the active run in the store.
    let other = Engine::new(store.clone());
    let h2 = other.register(holding(b, 0, runs.clone()).compile().unwrap());
    let err = h2.start("busy", Lin::default()).await.unwrap_err();
    assert_eq!(
        err,
        Error::RunActive {
            thread_id: tid("busy"),
            run_id: active
        }
    );
    assert_eq!(runs.count("hold"), 1, "the rejected starts ran nothing");
    assert_eq!(
        all_events(&engine, "busy").await.len(),
        1,
        "and wrote nothing"
    );

    engine.cancel(&tid("busy"), "done").await.unwrap();
    assert!(matches!(
        task.await.unwrap().unwrap(),
        RunOutcome::Cancelled { .. }
    ));
}

#[tokio::test]
async fn a_second_run_continues_the_thread_through_the_reducers() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(linear("w1", 10).compile().unwrap());
    let first = h.start("again", Lin::default()).await.unwrap();
    let first_id = first.run_id();
    first.expect_completed();
    let second = h
        .start(
            "again",
            Lin {
                counter: 100,
                log: vec!["second".into()],
            },
        )
        .await
        .unwrap();
    let second_id = second.run_id();
    assert_ne!(first_id, second_id);
    let s = second.expect_completed();
    // The input sets `counter` (last-value) and appends to `log`.
    assert_eq!(s.counter, 110);
    let mut want = names("n", 10);
    want.push("second".into());
    want.extend(names("n", 10));
    assert_eq!(s.log, want);

    let events = all_events(&engine, "again").await;
    assert_eq!(events.len(), 24);
    assert!(events[..12].iter().all(|e| e.run_id == first_id));
    assert!(events[12..].iter().all(|e| e.run_id == second_id));
    assert!(matches!(events[12].body, EventBody::RunStarted { .. }));
    let cps = engine.checkpoints(&tid("again")).await.unwrap();
    assert_eq!(cps.len(), 22);
    // The second run's first checkpoint is the old state plus its input.
    let at_start = h.state_at("again", cps[11].id).await.unwrap();
    assert_eq!(at_start.counter, 100);
    assert_eq!(at_start.log.len(), 11);
    assert_eq!(
        engine.latest_run(&tid("again")).await.unwrap().run_id,
        second_id
    );

    assert!(h.verify("again").await.unwrap().is_consistent());
    store.delete_snapshots(&tid("again")).await.unwrap();
    assert_eq!(hash(&h.state("again").await.unwrap().values), hash(&s));
}

#[tokio::test]
async fn another_graph_cannot_start_on_the_thread() {
    let (_store, engine) = memory_engine(EngineOptions::default());
    let w1 = engine.register(linear("w1", 2).compile().unwrap());
    let other = engine.register(linear("other", 2).compile().unwrap());
    w1.start("mine", Lin::default())
        .await
        .unwrap()
        .expect_completed();
    let err = other.start("mine", Lin::default()).await.unwrap_err();
    assert_eq!(
        err,
        Error::GraphMismatch {
            thread_id: tid("mine"),
            existing: "w1".into(),
            requested: "other".into()
        }
    );
    assert_eq!(
        other.recover_thread("mine").await.unwrap_err(),
        Error::GraphMismatch {
            thread_id: tid("mine"),
            existing: "w1".into(),
            requested: "other".into()
        }
    );
    let events = all_events(&engine, "mine").await;
    assert_eq!(events.len(), 4, "nothing written");
    assert_eq!(events.last().unwrap().seq, Seq(4));
}
