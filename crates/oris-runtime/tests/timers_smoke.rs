//! Durable sleep and external events, with a manual clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use oris_core::graph::{END, START};
use oris_core::id::{ThreadId, Timestamp};
use oris_core::status::RunStatus;
use oris_core::store::MemoryStore;
use oris_runtime::{Engine, EngineOptions, ManualClock, NodeError, RunOutcome, StateGraph};

#[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, oris_derive::State)]
#[oris(crate = "::oris_core")]
struct Doc {
    #[reducer(append)]
    log: Vec<String>,
}

fn engine(clock: &ManualClock) -> Engine {
    Engine::with_options(
        Arc::new(MemoryStore::new()),
        EngineOptions {
            clock: Arc::new(clock.clone()),
            ..EngineOptions::default()
        },
    )
}

#[tokio::test]
async fn sleep_suspends_and_the_clock_wakes_the_run() {
    let clock = ManualClock::new(Timestamp(1_000_000));
    let e = engine(&clock);
    let before = Arc::new(AtomicUsize::new(0));
    let b2 = before.clone();
    let g = StateGraph::<Doc>::new("sleepy", "1")
        .node("remind", move |_s: Doc, ctx| {
            let b2 = b2.clone();
            async move {
                ctx.step("before", async move {
                    b2.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .await?;
                ctx.sleep(Duration::from_secs(3600)).await?;
                Ok::<_, NodeError>(DocUpdate::default().log(vec!["reminded".into()]))
            }
        })
        .edge(START, "remind")
        .edge("remind", END)
        .compile()
        .unwrap();
    let h = e.register(g);
    let out = h.start("r1", Doc::default()).await.unwrap();
    let RunOutcome::Waiting { until, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(until, Some(Timestamp(1_000_000 + 3_600_000)));
    let t = ThreadId::new("r1").unwrap();
    assert!(matches!(
        e.latest_run(&t).await.unwrap().status,
        RunStatus::Waiting { .. }
    ));
    clock.advance(Duration::from_secs(3600));
    let run = e.wait_for(&t, |s| s.is_terminal()).await.unwrap();
    assert!(matches!(run.status, RunStatus::Completed { .. }), "{run:?}");
    assert_eq!(h.state("r1").await.unwrap().values.log, ["reminded"]);
    assert_eq!(before.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn events_sent_before_or_after_the_wait_are_delivered_once() {
    let clock = ManualClock::new(Timestamp(5_000));
    let e = engine(&clock);
    let g = StateGraph::<Doc>::new("payment", "1")
        .node("await_payment", |_s: Doc, ctx| async move {
            let paid: Option<u32> = ctx.wait_for_event("paid", Duration::from_secs(60)).await?;
            Ok::<_, NodeError>(DocUpdate::default().log(vec![format!("{paid:?}")]))
        })
        .edge(START, "await_payment")
        .edge("await_payment", END)
        .compile()
        .unwrap();
    let h = e.register(g);
    // After the wait started.
    let out = h.start("p1", Doc::default()).await.unwrap();
    assert!(
        matches!(out, RunOutcome::Waiting { ref events, .. } if events == &["paid"]),
        "{out:?}"
    );
    let t = ThreadId::new("p1").unwrap();
    e.send_event(&t, "paid", &42u32, None).await.unwrap();
    let run = e.wait_for(&t, |s| s.is_terminal()).await.unwrap();
    assert!(matches!(run.status, RunStatus::Completed { .. }), "{run:?}");
    assert_eq!(h.state("p1").await.unwrap().values.log, ["Some(42)"]);

    // Before the wait started: the second run on the thread finds it buffered.
    e.send_event(&t, "paid", &7u32, Some("k1".into()))
        .await
        .unwrap();
    e.send_event(&t, "paid", &7u32, Some("k1".into()))
        .await
        .unwrap();
    let done = h
        .start("p1", Doc::default())
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(done.log, ["Some(42)", "Some(7)"]);

    // Timeout.
    let out = h.start("p1", Doc::default()).await.unwrap();
    assert!(matches!(out, RunOutcome::Waiting { .. }), "{out:?}");
    clock.advance(Duration::from_secs(61));
    e.wait_for(&t, |s| s.is_terminal()).await.unwrap();
    assert_eq!(
        h.state("p1").await.unwrap().values.log,
        ["Some(42)", "Some(7)", "None"]
    );
    assert!(h.verify("p1").await.unwrap().is_consistent());
}

#[tokio::test]
async fn a_new_engine_wakes_due_runs_it_did_not_suspend() {
    let clock = ManualClock::new(Timestamp(1_000_000));
    let store = Arc::new(MemoryStore::new());
    let options = || EngineOptions {
        clock: Arc::new(clock.clone()),
        ..EngineOptions::default()
    };
    let graph = || {
        StateGraph::<Doc>::new("nap", "1")
            .node("nap", |_s: Doc, ctx| async move {
                ctx.sleep(Duration::from_secs(60)).await?;
                Ok::<_, NodeError>(DocUpdate::default().log(vec!["woke".into()]))
            })
            .edge(START, "nap")
            .edge("nap", END)
            .compile()
            .unwrap()
    };
    {
        let first = Engine::with_options(store.clone(), options());
        let h = first.register(graph());
        let out = h.start("n1", Doc::default()).await.unwrap();
        assert!(matches!(out, RunOutcome::Waiting { .. }), "{out:?}");
        // `first` is dropped here, like a process that stopped: its wake-up is gone.
    }
    let second = Engine::with_options(store.clone(), options());
    let h = second.register(graph());
    assert_eq!(second.wake_due().await.unwrap(), 0, "not due yet");
    clock.advance(Duration::from_secs(61));
    assert_eq!(second.wake_due().await.unwrap(), 1);
    let t = ThreadId::new("n1").unwrap();
    let run = second.wait_for(&t, |s| s.is_terminal()).await.unwrap();
    assert!(matches!(run.status, RunStatus::Completed { .. }), "{run:?}");
    assert_eq!(h.state("n1").await.unwrap().values.log, ["woke"]);
    assert_eq!(second.wake_due().await.unwrap(), 0, "nothing left");
}
