//! Static breakpoints: `StateGraph::interrupt_before/after` (every run) and
//! `RunOptions::interrupt_before/after` (one run). In-memory store.

mod common;

use std::sync::Arc;

use common::*;
use oris_core::event::EventKind;
use oris_core::graph::{END, GraphError, START};
use oris_core::status::StatusKind;
use oris_runtime::{Context, Engine, EngineOptions, Error, NodeError, RunOptions, StateGraph};
use serde_json::json;

/// `START → a → b → c → END`; each node logs its name and counts its executions; `b` also
/// runs a recorded step `s` (counter `s`).
fn abc(runs: Arc<Counters>) -> StateGraph<Lin> {
    let plain = |me: &'static str, runs: Arc<Counters>| {
        move |_s: Lin, _ctx: Context| {
            runs.hit(me);
            async move { Ok::<_, NodeError>(LinUpdate::default().log(vec![me.to_owned()])) }
        }
    };
    StateGraph::<Lin>::new("abc", "1")
        .node("a", plain("a", runs.clone()))
        .node("b", {
            let runs = runs.clone();
            move |_s: Lin, ctx: Context| {
                let runs = runs.clone();
                async move {
                    runs.hit("b");
                    let n: u64 = ctx
                        .step("s", {
                            let runs = runs.clone();
                            async move { Ok(runs.hit("s") as u64) }
                        })
                        .await?;
                    Ok(LinUpdate::default().log(vec![format!("b{n}")]))
                }
            }
        })
        .node("c", plain("c", runs))
        .edge(START, "a")
        .edge("a", "b")
        .edge("b", "c")
        .edge("c", END)
}

fn abc_counts(runs: &Counters) -> [usize; 4] {
    ["a", "b", "s", "c"].map(|n| runs.count(n))
}

#[tokio::test]
async fn interrupt_before_pauses_before_the_node_runs() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(abc(runs.clone()).interrupt_before(["b"]).compile().unwrap());
    let out = h.start("bb", Lin::default()).await.unwrap();
    let pending = paused(&out);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].node, "b");
    assert_eq!(
        pending[0].payload,
        json!({"breakpoint": "before", "node": "b"})
    );
    assert_eq!(abc_counts(&runs), [1, 0, 0, 0], "b has not run");
    assert_eq!(h.state("bb").await.unwrap().values.log, ["a"]);
    assert_eq!(
        engine.latest_run(&tid("bb")).await.unwrap().status.kind(),
        StatusKind::Interrupted
    );

    // Any value lets b run, once.
    let done = h
        .resume(pending[0].interrupt_id, &json!(null))
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(done.log, ["a", "b1", "c"]);
    assert_eq!(abc_counts(&runs), [1, 1, 1, 1]);
    let events = all_events(&engine, "bb").await;
    assert_eq!(count_kind(&events, EventKind::InterruptRaised), 1);
    assert_eq!(count_kind(&events, EventKind::RunSuspended), 1);
}

#[tokio::test]
async fn interrupt_after_pauses_after_the_node_ran_before_its_update_counts() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(abc(runs.clone()).interrupt_after(["b"]).compile().unwrap());
    let out = h.start("ba", Lin::default()).await.unwrap();
    let pending = paused(&out);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].node, "b");
    assert_eq!(
        pending[0].payload,
        json!({"breakpoint": "after", "node": "b"})
    );
    assert_eq!(abc_counts(&runs), [1, 1, 1, 0], "b ran, c did not");
    assert_eq!(
        h.state("ba").await.unwrap().values.log,
        ["a"],
        "b's update does not count while paused"
    );
    let events = all_events(&engine, "ba").await;
    assert_eq!(completions_of(&events, "b"), 0);
    assert_eq!(count_kind(&events, EventKind::StepRecorded), 1);

    let done = h
        .resume(pending[0].interrupt_id, "go")
        .await
        .unwrap()
        .expect_completed();
    // b's update is merged once. Its body ran again on resume (documented: the node re-runs
    // from its first line), but its recorded step did not: `s` ran once and b's update
    // carries the recorded value 1.
    assert_eq!(done.log, ["a", "b1", "c"]);
    assert_eq!(abc_counts(&runs), [1, 2, 1, 1]);
    let events = all_events(&engine, "ba").await;
    assert_eq!(completions_of(&events, "b"), 1);
    assert_eq!(count_kind(&events, EventKind::StepRecorded), 1);
}

fn completions_of(events: &[oris_core::event::Event], node: &str) -> usize {
    events
        .iter()
        .filter(|e| {
            matches!(&e.body, oris_core::event::EventBody::NodeCompleted { node: n, .. } if n == node)
        })
        .count()
}

#[tokio::test]
async fn before_and_after_on_one_node_pause_twice() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(
        abc(runs.clone())
            .interrupt_before(["b"])
            .interrupt_after(["b"])
            .compile()
            .unwrap(),
    );
    let first = paused(&h.start("bab", Lin::default()).await.unwrap());
    assert_eq!(first[0].payload["breakpoint"], "before");
    assert_eq!(abc_counts(&runs), [1, 0, 0, 0]);
    let second = paused(&h.resume(first[0].interrupt_id, "ok").await.unwrap());
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].payload["breakpoint"], "after");
    assert_ne!(second[0].interrupt_id, first[0].interrupt_id);
    assert_eq!(abc_counts(&runs), [1, 1, 1, 0]);
    let done = h
        .resume(second[0].interrupt_id, "ok")
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(done.log, ["a", "b1", "c"]);
    assert_eq!(abc_counts(&runs), [1, 2, 1, 1]);
}

#[tokio::test]
async fn per_run_breakpoints_apply_to_that_run_only() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(abc(runs.clone()).compile().unwrap());
    let options = RunOptions {
        interrupt_before: vec!["c".into()],
        ..RunOptions::default()
    };
    let out = h.start_with("pr", Lin::default(), options).await.unwrap();
    let pending = paused(&out);
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].payload,
        json!({"breakpoint": "before", "node": "c"})
    );
    assert_eq!(abc_counts(&runs), [1, 1, 1, 0]);
    assert_eq!(h.state("pr").await.unwrap().values.log, ["a", "b1"]);
    let done = h
        .resume(pending[0].interrupt_id, "ok")
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(done.log, ["a", "b1", "c"]);
    assert_eq!(abc_counts(&runs), [1, 1, 1, 1]);

    // The next run on the thread, and a run on another thread, do not stop.
    h.start("pr", Lin::default())
        .await
        .unwrap()
        .expect_completed();
    h.start("other", Lin::default())
        .await
        .unwrap()
        .expect_completed();

    // Per-run `after`.
    let options = RunOptions {
        interrupt_after: vec!["a".into()],
        ..RunOptions::default()
    };
    let out = h
        .start_with("pr-after", Lin::default(), options)
        .await
        .unwrap();
    let pending = paused(&out);
    assert_eq!(
        pending[0].payload,
        json!({"breakpoint": "after", "node": "a"})
    );
    assert!(h.state("pr-after").await.unwrap().values.log.is_empty());
    let a_runs = runs.count("a");
    let done = h
        .resume(pending[0].interrupt_id, "ok")
        .await
        .unwrap()
        .expect_completed();
    // `s` is counted across runs: this run's b recorded the fourth value.
    assert_eq!(done.log, ["a", "b4", "c"]);
    assert_eq!(
        runs.count("a"),
        a_runs + 1,
        "a re-ran once after its breakpoint"
    );
}

#[tokio::test]
async fn per_run_breakpoints_survive_a_new_engine() {
    let store = Arc::new(oris_core::store::MemoryStore::new());
    let runs = Counters::new();
    let options = RunOptions {
        interrupt_before: vec!["b".into(), "c".into()],
        ..RunOptions::default()
    };
    let id = {
        let first = Engine::new(store.clone());
        let h = first.register(abc(runs.clone()).compile().unwrap());
        let out = h.start_with("surv", Lin::default(), options).await.unwrap();
        paused(&out)[0].interrupt_id
    };
    let second = Engine::new(store);
    let h = second.register(abc(runs.clone()).compile().unwrap());
    let out = h.resume(id, "ok").await.unwrap();
    let pending = paused(&out);
    assert_eq!(
        pending[0].payload,
        json!({"breakpoint": "before", "node": "c"}),
        "the run's own breakpoints are part of its recorded settings"
    );
    h.resume(pending[0].interrupt_id, "ok")
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(abc_counts(&runs), [1, 1, 1, 1]);
}

#[tokio::test]
async fn a_breakpoint_in_a_loop_pauses_at_every_visit() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let g = StateGraph::<Lin>::new("loop", "1")
        .node("step", {
            let runs = runs.clone();
            move |s: Lin, _ctx: Context| {
                runs.hit("step");
                async move { Ok::<_, NodeError>(LinUpdate::default().counter(s.counter + 1)) }
            }
        })
        .edge(START, "step")
        .conditional_edge("step", ["step", END], |s: &Lin| {
            if s.counter < 2 { "step" } else { END }
        })
        .interrupt_before(["step"])
        .compile()
        .unwrap();
    let h = engine.register(g);
    let mut out = h.start("loop", Lin::default()).await.unwrap();
    let mut ids = Vec::new();
    while let oris_runtime::RunOutcome::Interrupted { interrupts, .. } = &out {
        assert_eq!(interrupts.len(), 1);
        ids.push(interrupts[0].interrupt_id);
        assert_eq!(runs.count("step"), ids.len() - 1);
        out = h.resume(interrupts[0].interrupt_id, "ok").await.unwrap();
        assert!(ids.len() <= 3, "too many pauses");
    }
    assert_eq!(out.expect_completed().counter, 2);
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    assert_eq!(runs.count("step"), 2);
}

#[tokio::test]
async fn a_breakpoint_on_one_of_two_parallel_nodes_lets_the_other_finish() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let node = |me: &'static str, runs: Arc<Counters>| {
        move |_s: Lin, _ctx: Context| {
            runs.hit(me);
            async move { Ok::<_, NodeError>(LinUpdate::default().log(vec![me.to_owned()])) }
        }
    };
    let g = StateGraph::<Lin>::new("pb", "1")
        .node("x", node("x", runs.clone()))
        .node("y", node("y", runs.clone()))
        .edge(START, "x")
        .edge(START, "y")
        .edge("x", END)
        .edge("y", END)
        .interrupt_before(["y"])
        .compile()
        .unwrap();
    let h = engine.register(g);
    let pending = paused(&h.start("pb", Lin::default()).await.unwrap());
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].node, "y");
    assert_eq!((runs.count("x"), runs.count("y")), (1, 0));
    assert_eq!(completions_of(&all_events(&engine, "pb").await, "x"), 1);
    let done = h
        .resume(pending[0].interrupt_id, "ok")
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(done.log, ["x", "y"]);
    assert_eq!((runs.count("x"), runs.count("y")), (1, 1));
}

#[tokio::test]
async fn a_breakpoint_on_an_unknown_node_is_refused() {
    let runs = Counters::new();
    match abc(runs.clone()).interrupt_before(["nope"]).compile() {
        Err(GraphError::UnknownNode { node, .. }) => assert_eq!(node, "nope"),
        Err(other) => panic!("unexpected error {other:?}"),
        Ok(_) => panic!("a breakpoint on an unknown node compiled"),
    }
    assert!(matches!(
        abc(runs.clone()).interrupt_after(["zz"]).compile(),
        Err(GraphError::UnknownNode { .. })
    ));

    let (store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(abc(runs.clone()).compile().unwrap());
    for options in [
        RunOptions {
            interrupt_before: vec!["nope".into()],
            ..RunOptions::default()
        },
        RunOptions {
            interrupt_after: vec![END.into()],
            ..RunOptions::default()
        },
    ] {
        let r = h.start_with("unk", Lin::default(), options).await;
        assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
    }
    use oris_core::store::Store as _;
    assert!(
        store.thread(&tid("unk")).await.unwrap().is_none(),
        "nothing stored"
    );
    assert_eq!(abc_counts(&runs), [0, 0, 0, 0]);
}
