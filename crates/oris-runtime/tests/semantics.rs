//! Graph semantics: supersteps, edges, loops, joins, fan-out, reducers, limits, the
//! commit-per-superstep protocol, Mermaid output and compile-time validation.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use oris_core::event::{Barriers, EventBody, FailureKind, Payload, Task};
use oris_core::graph::{END, GraphError, START};
use oris_core::id::{CheckpointId, Seq};
use oris_core::state::State as _;
use oris_core::status::RunStatus;
use oris_core::store::{RunWrite, Store};
use oris_runtime::{EngineOptions, Error, NodeError, Route, RunOptions, StateGraph};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------
// 1. Linear graph (W1)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn linear_graph_records_every_step_and_replays_from_the_log_alone() {
    let rec = Recorder::new();
    let (store, engine) = memory_engine(EngineOptions {
        // Mid-run snapshots, so that their content is checked against the log too.
        snapshot_every: 3,
        ..rec.options()
    });
    let h = engine.register(linear("w1", 10).compile().unwrap());
    let out = h.start("w1-a", Lin::default()).await.unwrap();
    let run_id = out.run_id();
    let state = out.expect_completed();
    assert_eq!(state.counter, 10);
    assert_eq!(state.log, names("n", 10));

    // Timeline: RunStarted, ten NodeCompleted each closing its superstep, RunCompleted.
    let events = all_events(&engine, "w1-a").await;
    assert_eq!(events.len(), 12, "{events:#?}");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, Seq(i as u64 + 1), "seqs are contiguous from 1");
        assert_eq!(e.run_id, run_id);
    }
    match &events[0].body {
        EventBody::RunStarted {
            graph,
            graph_version,
            boundary,
            settings,
            input,
        } => {
            assert_eq!((graph.as_str(), graph_version.as_str()), ("w1", "1"));
            assert_eq!(boundary.next, vec![Task::Node("n0".into())]);
            assert_eq!(settings.superstep_limit, 10_000);
            assert_eq!(input.decode::<LinUpdate>().unwrap().counter, Some(0));
        }
        other => panic!("first event is {other:?}"),
    }
    for k in 0..10usize {
        match &events[k + 1].body {
            EventBody::NodeCompleted {
                superstep,
                task,
                node,
                attempt,
                update,
                boundary: Some(b),
            } => {
                assert_eq!(*superstep, k as u32);
                assert_eq!((*task, *attempt), (0, 1));
                assert_eq!(node, &format!("n{k}"));
                let u: LinUpdate = update.decode().unwrap();
                assert_eq!(u.counter, Some(k as i64 + 1));
                assert_eq!(u.log, Some(vec![format!("n{k}")]));
                let next: Vec<Task> = if k < 9 {
                    vec![Task::Node(format!("n{}", k + 1))]
                } else {
                    vec![]
                };
                assert_eq!(b.next, next);
            }
            other => panic!("event {} is {other:?}", k + 2),
        }
    }
    assert_eq!(events[11].body, EventBody::RunCompleted);

    // Eleven checkpoints; the state at checkpoint k is the state after k nodes.
    let cps = engine.checkpoints(&tid("w1-a")).await.unwrap();
    assert_eq!(cps.len(), 11);
    for (k, cp) in cps.iter().enumerate() {
        assert_eq!(cp.id, CheckpointId(Seq(k as u64 + 1)));
        assert_eq!(cp.superstep, k as u32);
        assert_eq!(cp.run_id, run_id);
        let s = h.state_at("w1-a", cp.id).await.unwrap();
        assert_eq!(s.counter, k as i64);
        assert_eq!(s.log, names("n", k));
    }
    // RunCompleted closes no superstep: not a checkpoint.
    assert!(matches!(
        h.state_at("w1-a", CheckpointId(Seq(12))).await,
        Err(Error::CheckpointNotFound { .. })
    ));

    // The run record points at the last checkpoint.
    let run = engine.latest_run(&tid("w1-a")).await.unwrap();
    assert_eq!(
        run.status,
        RunStatus::Completed {
            checkpoint: CheckpointId(Seq(11))
        }
    );

    // Every snapshot the engine wrote equals the fold of the log up to its seq.
    let snapshots: Vec<_> = rec
        .commits("w1-a")
        .into_iter()
        .filter_map(|c| c.snapshot)
        .collect();
    let at: Vec<u64> = snapshots.iter().map(|s| s.at_seq.0).collect();
    assert_eq!(
        at,
        [4, 7, 10, 11],
        "snapshot every 3 supersteps and at the end"
    );
    for s in &snapshots {
        let from_log = h.state_at("w1-a", CheckpointId(s.at_seq)).await.unwrap();
        assert_eq!(s.state.decode::<Lin>().unwrap(), from_log);
    }

    // Invariant 1: the log alone gives the same state, bit for bit.
    let v = h.verify("w1-a").await.unwrap();
    assert!(v.is_consistent(), "{v:?}");
    assert_eq!(v.head, Seq(12));
    assert_eq!(v.replayed_hash, hash(&state));
    let before = h.state("w1-a").await.unwrap();
    assert!(
        store
            .snapshot(&tid("w1-a"), Seq(u64::MAX))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.delete_snapshots(&tid("w1-a")).await.unwrap(), 1);
    assert!(
        store
            .snapshot(&tid("w1-a"), Seq(u64::MAX))
            .await
            .unwrap()
            .is_none()
    );
    let after = h.state("w1-a").await.unwrap();
    assert_eq!(hash(&after.values), hash(&before.values));
    assert_eq!(hash(&after.values), hash(&state));
    assert_eq!(after.head, Seq(12));
    assert_eq!(after.checkpoint, Some(CheckpointId(Seq(11))));
    assert!(after.next.is_empty());
    assert!(h.verify("w1-a").await.unwrap().is_consistent());
}

// ---------------------------------------------------------------------------------------
// 16. One commit per superstep
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn observer_sees_one_commit_for_the_start_and_one_per_superstep() {
    let rec = Recorder::new();
    let (_store, engine) = memory_engine(rec.options());
    let h = engine.register(linear("w1", 10).compile().unwrap());
    h.start("w1-commits", Lin::default())
        .await
        .unwrap()
        .expect_completed();
    let commits = rec.commits("w1-commits");
    assert_eq!(commits.len(), 11, "{commits:#?}");
    assert!(matches!(commits[0].run, Some(RunWrite::Create(_))));
    assert_eq!(commits[0].events.len(), 1);
    assert!(matches!(
        commits[0].events[0].body,
        EventBody::RunStarted { .. }
    ));
    let mut head = 1;
    for (i, c) in commits.iter().enumerate().skip(1) {
        assert_eq!(c.expected_head, Seq(head), "commits chain on the head");
        head += c.events.len() as u64;
        let closing: Vec<_> = c
            .events
            .iter()
            .filter(|e| {
                matches!(
                    e.body,
                    EventBody::NodeCompleted {
                        boundary: Some(_),
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(closing.len(), 1, "commit {i} closes exactly one superstep");
        if i < 10 {
            assert_eq!(c.events.len(), 1);
            assert!(c.run.is_none());
        } else {
            assert_eq!(c.events.len(), 2);
            assert_eq!(c.events[1].body, EventBody::RunCompleted);
            assert!(matches!(
                c.run,
                Some(RunWrite::SetStatus {
                    status: RunStatus::Completed { .. },
                    ..
                })
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. Conditional edges and loops (W4)
// ---------------------------------------------------------------------------------------

fn w4(limit: i64) -> StateGraph<Lin> {
    StateGraph::<Lin>::new("w4", "1")
        .node("step", |s: Lin, _ctx| async move {
            let i = s.counter;
            Ok::<_, NodeError>(
                LinUpdate::default()
                    .counter(i + 1)
                    .log(vec![format!("{i:04}{}", "x".repeat(60))]),
            )
        })
        .edge(START, "step")
        .conditional_edge("step", ["step", END], move |s: &Lin| {
            if s.counter < limit { "step" } else { END }
        })
}

#[tokio::test]
async fn loop_runs_until_its_router_returns_end() {
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(w4(100).compile().unwrap());
    let s = h
        .start("w4", Lin::default())
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(s.counter, 100);
    assert_eq!(s.log.len(), 100);
    assert!(s.log.iter().all(|l| l.len() == 64));
    assert!(s.log[0].starts_with("0000"));
    assert!(s.log[99].starts_with("0099"));
    let events = all_events(&engine, "w4").await;
    assert_eq!(events.len(), 102);
    assert_eq!(engine.checkpoints(&tid("w4")).await.unwrap().len(), 101);
    assert!(h.verify("w4").await.unwrap().is_consistent());

    // A loop that starts past its condition runs the node once and ends.
    let s = h
        .start(
            "w4-late",
            Lin {
                counter: 500,
                log: vec![],
            },
        )
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(s.counter, 501);
}

#[tokio::test]
async fn router_from_start_can_end_the_run_at_once() {
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let g = StateGraph::<Lin>::new("skip", "1")
        .node("work", move |_s: Lin, _ctx| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, NodeError>(LinUpdate::default().log(vec!["work".to_owned()])) }
        })
        .conditional_edge(START, ["work", END], |s: &Lin| {
            if s.counter > 0 {
                Route::from("work")
            } else {
                Route::end()
            }
        })
        .edge("work", END)
        .compile()
        .unwrap();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(g);
    let s = h
        .start(
            "skip-0",
            Lin {
                counter: 0,
                log: vec!["in".into()],
            },
        )
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(s.log, ["in"]);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    let events = all_events(&engine, "skip-0").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].body, EventBody::RunCompleted);
    assert_eq!(
        engine.latest_run(&tid("skip-0")).await.unwrap().status,
        RunStatus::Completed {
            checkpoint: CheckpointId(Seq(1))
        }
    );
    let s = h
        .start(
            "skip-1",
            Lin {
                counter: 1,
                log: vec![],
            },
        )
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(s.log, ["work"]);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn router_returning_an_undeclared_target_fails_the_run_with_invalid_route() {
    let g = StateGraph::<Lin>::new("bad-route", "1")
        .node("step", |s: Lin, _ctx| async move {
            Ok::<_, NodeError>(LinUpdate::default().counter(s.counter + 1))
        })
        .node("other", |_s: Lin, _ctx| async move {
            Ok::<_, NodeError>(LinUpdate::default())
        })
        .edge(START, "step")
        .edge("other", END)
        .conditional_edge("step", ["step", "other", END], |s: &Lin| {
            if s.counter < 3 { "step" } else { "ghost" }
        })
        .compile()
        .unwrap();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(g);
    let out = h.start("route", Lin::default()).await.unwrap();
    let f = out.failure().expect("the run fails").clone();
    assert_eq!(f.kind, FailureKind::InvalidRoute);
    assert!(f.message.contains("`ghost`"), "{f}");
    assert!(f.message.contains("`step`"), "names the branch source: {f}");
    // The superstep whose routing failed is not merged.
    let st = h.state("route").await.unwrap();
    assert_eq!(st.values.counter, 2);
    assert_eq!(
        st.run.unwrap().status,
        RunStatus::Failed { error: f.clone() }
    );
    let events = all_events(&engine, "route").await;
    assert_eq!(
        events.last().unwrap().body,
        EventBody::RunFailed { error: f }
    );
    assert!(h.verify("route").await.unwrap().is_consistent());
}

// ---------------------------------------------------------------------------------------
// 3. Fan-out / fan-in with a join (W2)
// ---------------------------------------------------------------------------------------

#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, oris_derive::State)]
#[oris(crate = "::oris_core")]
struct Fan {
    counter: i64,
    #[reducer(append)]
    results: Vec<String>,
}

#[tokio::test(start_paused = true)]
async fn fan_out_workers_run_concurrently_in_one_superstep_and_join_once() {
    // Every worker waits for all eight: if they ran one after another, the first would
    // wait forever (and the paused clock would fire `within` at once).
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let joins = Arc::new(AtomicUsize::new(0));
    let mut g = StateGraph::<Fan>::new("w2", "1")
        .node("fan", |s: Fan, _ctx| async move {
            Ok::<_, NodeError>(FanUpdate::default().counter(s.counter + 1))
        })
        .edge(START, "fan");
    for i in 0..8 {
        let b = barrier.clone();
        let me = format!("w{i}");
        g = g
            .node(me.clone(), move |_s: Fan, ctx| {
                let b = b.clone();
                let me = me.clone();
                async move {
                    assert_eq!(ctx.superstep(), 1);
                    b.wait().await;
                    Ok::<_, NodeError>(FanUpdate::default().results(vec![me]))
                }
            })
            .edge("fan", format!("w{i}"));
    }
    let j = joins.clone();
    let g = g
        .node("join", move |s: Fan, ctx| {
            j.fetch_add(1, Ordering::SeqCst);
            async move {
                assert_eq!(ctx.superstep(), 2);
                Ok::<_, NodeError>(FanUpdate::default().counter(s.counter + s.results.len() as i64))
            }
        })
        .join(names("w", 8), "join")
        .edge("join", END)
        .compile()
        .unwrap();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(g);
    let s = within("the fan-out run", h.start("w2", Fan::default()))
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(s.counter, 9);
    // Merged in task (declaration) order, not completion order.
    assert_eq!(s.results, names("w", 8));
    assert_eq!(joins.load(Ordering::SeqCst), 1);
    let events = all_events(&engine, "w2").await;
    let in_superstep = |k: u32| {
        events
            .iter()
            .filter(
                |e| matches!(e.body, EventBody::NodeCompleted { superstep, .. } if superstep == k),
            )
            .count()
    };
    assert_eq!(
        (in_superstep(0), in_superstep(1), in_superstep(2)),
        (1, 8, 1)
    );
    assert_eq!(engine.checkpoints(&tid("w2")).await.unwrap().len(), 4);
    assert!(h.verify("w2").await.unwrap().is_consistent());
}

// ---------------------------------------------------------------------------------------
// 4. A join whose sources finish in different supersteps
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn join_waits_for_sources_finishing_in_different_supersteps() {
    let e_runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = |me: &'static str| {
        move |_s: Lin, _ctx| async move {
            Ok::<_, NodeError>(LinUpdate::default().log(vec![me.to_owned()]))
        }
    };
    let seen = e_runs.clone();
    let g = StateGraph::<Lin>::new("late-join", "1")
        .node("a", log("a"))
        .node("b", log("b"))
        .node("c", log("c"))
        .node("d", log("d"))
        .node("e", move |s: Lin, ctx| {
            seen.lock().unwrap().push((ctx.superstep(), s.log.clone()));
            async { Ok::<_, NodeError>(LinUpdate::default().log(vec!["e".to_owned()])) }
        })
        .edge(START, "a")
        .edge("a", "b")
        .edge("b", "c")
        .edge("a", "d")
        .join(["c", "d"], "e")
        .edge("e", END)
        .compile()
        .unwrap();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(g);
    let s = h
        .start("late", Lin::default())
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(s.log, ["a", "b", "d", "c", "e"]);
    let runs = e_runs.lock().unwrap().clone();
    assert_eq!(
        runs,
        [(3, vec!["a".to_owned(), "b".into(), "d".into(), "c".into()])],
        "e runs once, after both c and d"
    );
    // The join progress is recorded at each boundary: `d` arrived in superstep 1.
    let boundaries: Vec<(Vec<Task>, Barriers)> = all_events(&engine, "late")
        .await
        .iter()
        .filter_map(|e| e.body.boundary().cloned())
        .map(|b| (b.next, b.barriers))
        .collect();
    let node = |n: &str| Task::Node(n.to_owned());
    assert_eq!(
        boundaries,
        [
            (vec![node("a")], Barriers::new()),
            (vec![node("b"), node("d")], Barriers::new()),
            (
                vec![node("c")],
                Barriers::from([(0, BTreeSet::from(["d".to_owned()]))])
            ),
            (vec![node("e")], Barriers::new()),
            (vec![], Barriers::new()),
        ]
    );
    assert!(h.verify("late").await.unwrap().is_consistent());
}

// ---------------------------------------------------------------------------------------
// 5. Dynamic fan-out: per-task input, merge in task order whatever the completion order
// ---------------------------------------------------------------------------------------

#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, oris_derive::State)]
#[oris(crate = "::oris_core")]
struct Batch {
    /// The items to fan out, one task each.
    items: Vec<u32>,
    /// The order in which the tasks are made to finish (task indexes).
    finish_order: Vec<u32>,
    #[reducer(append)]
    results: Vec<String>,
}

#[tokio::test]
async fn dynamic_fan_out_merges_in_task_order_whatever_the_completion_order() {
    let rec = Recorder::new();
    let (store, engine) = memory_engine(rec.options());
    let r = rec.clone();
    let g = StateGraph::<Batch>::new("send", "1")
        .node("plan", |_s: Batch, _ctx| async {
            Ok::<_, NodeError>(BatchUpdate::default())
        })
        .node("worker", move |s: Batch, ctx| {
            let r = r.clone();
            async move {
                let item: u32 = ctx.input()?.expect("fan-out tasks carry an input");
                assert_eq!(s.items[ctx.task() as usize], item, "task i gets item i");
                // Finish only once the workers ranked before this one are committed.
                let rank = s
                    .finish_order
                    .iter()
                    .position(|t| *t == ctx.task())
                    .unwrap();
                let thread = ctx.thread_id().as_str().to_owned();
                r.wait_until(&thread, |c| completions(c, "worker") >= rank)
                    .await;
                Ok::<_, NodeError>(BatchUpdate::default().results(vec![format!("item-{item}")]))
            }
        })
        .edge(START, "plan")
        .conditional_edge("plan", ["worker"], |s: &Batch| {
            s.items
                .iter()
                .fold(Route::default(), |r, i| r.send("worker", i))
        })
        .edge("worker", END)
        .compile()
        .unwrap();
    let h = engine.register(g);
    let items = vec![10, 20, 30, 40, 50];
    let expected: Vec<String> = items.iter().map(|i| format!("item-{i}")).collect();
    let orders: [[u32; 5]; 5] = [
        [0, 1, 2, 3, 4],
        [4, 3, 2, 1, 0],
        [2, 4, 0, 3, 1],
        [1, 0, 3, 4, 2],
        [4, 3, 2, 1, 0],
    ];
    for (n, order) in orders.iter().enumerate() {
        let thread = format!("send-{n}");
        let input = Batch {
            items: items.clone(),
            finish_order: order.to_vec(),
            results: vec![],
        };
        let s = within("the fan-out run", h.start(&thread, input))
            .await
            .unwrap()
            .expect_completed();
        assert_eq!(s.results, expected, "order {order:?}");
        // The tasks really finished (and were recorded) in the order asked for.
        let finished: Vec<u32> = all_events(&engine, &thread)
            .await
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::NodeCompleted { node, task, .. } if node == "worker" => Some(*task),
                _ => None,
            })
            .collect();
        assert_eq!(finished, order.to_vec());
        // The superstep's tasks carry their inputs in the log.
        let cps = engine.checkpoints(&tid(&thread)).await.unwrap();
        let inputs: Vec<u32> = cps[1]
            .next
            .iter()
            .map(|t| {
                assert_eq!(t.node(), "worker");
                t.input().unwrap().decode().unwrap()
            })
            .collect();
        assert_eq!(inputs, items);
        // Replay merges in task order too, not in log order.
        assert!(h.verify(&thread).await.unwrap().is_consistent());
        store.delete_snapshots(&tid(&thread)).await.unwrap();
        assert_eq!(h.state(&thread).await.unwrap().values.results, expected);
    }
}

// ---------------------------------------------------------------------------------------
// 6. Conflicting last-value writes
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn two_writers_of_a_last_value_field_fail_the_run_and_leave_state_untouched() {
    let write = |me: &'static str, v: i64| {
        move |_s: Lin, _ctx| async move {
            Ok::<_, NodeError>(LinUpdate::default().counter(v).log(vec![me.to_owned()]))
        }
    };
    let g = StateGraph::<Lin>::new("conflict", "1")
        .node("fan", write("fan", 7))
        .node("a", write("a", 1))
        .node("b", write("b", 2))
        .edge(START, "fan")
        .edge("fan", "a")
        .edge("fan", "b")
        .edge("a", END)
        .edge("b", END)
        .compile()
        .unwrap();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(g);
    let out = h.start("conflict", Lin::default()).await.unwrap();
    let f = out.failure().expect("the run fails").clone();
    assert_eq!(f.kind, FailureKind::ReduceConflict);
    for needle in ["`counter`", "`a`", "`b`"] {
        assert!(f.message.contains(needle), "{needle} missing from {f}");
    }
    // The state is the one before the conflicting superstep: neither `a` nor `b` is
    // merged, not even their (append) log entries.
    let st = h.state("conflict").await.unwrap();
    assert_eq!(
        st.values,
        Lin {
            counter: 7,
            log: vec!["fan".into()]
        }
    );
    assert_eq!(st.run.unwrap().status, RunStatus::Failed { error: f });
    assert!(h.verify("conflict").await.unwrap().is_consistent());
}

// ---------------------------------------------------------------------------------------
// 7. Superstep limit
// ---------------------------------------------------------------------------------------

fn forever(runs: Arc<AtomicUsize>) -> StateGraph<Lin> {
    StateGraph::<Lin>::new("forever", "1")
        .node("spin", move |s: Lin, _ctx| {
            runs.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, NodeError>(LinUpdate::default().counter(s.counter + 1)) }
        })
        .edge(START, "spin")
        .conditional_edge("spin", ["spin", END], |_s: &Lin| "spin")
}

#[tokio::test]
async fn infinite_loop_stops_at_the_superstep_limit() {
    let runs = Arc::new(AtomicUsize::new(0));
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(forever(runs.clone()).compile().unwrap());
    let out = h
        .start_with(
            "spin",
            Lin::default(),
            RunOptions {
                superstep_limit: Some(50),
                ..RunOptions::default()
            },
        )
        .await
        .unwrap();
    let f = out.failure().expect("the run fails");
    assert_eq!(f.kind, FailureKind::SuperstepLimit);
    assert!(f.message.contains("50"), "{f}");
    assert_eq!(runs.load(Ordering::SeqCst), 50, "exactly 50 supersteps ran");
    assert_eq!(h.state("spin").await.unwrap().values.counter, 50);

    // The engine-wide limit applies when the run sets none; the run's own wins.
    assert_eq!(EngineOptions::default().superstep_limit, 10_000);
    let (_store, engine) = memory_engine(EngineOptions {
        superstep_limit: 7,
        ..EngineOptions::default()
    });
    let runs = Arc::new(AtomicUsize::new(0));
    let h = engine.register(forever(runs.clone()).compile().unwrap());
    let out = h.start("spin-7", Lin::default()).await.unwrap();
    assert_eq!(out.failure().unwrap().kind, FailureKind::SuperstepLimit);
    assert_eq!(runs.load(Ordering::SeqCst), 7);
    let out = h
        .start_with(
            "spin-3",
            Lin::default(),
            RunOptions {
                superstep_limit: Some(3),
                ..RunOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(out.failure().unwrap().kind, FailureKind::SuperstepLimit);
    assert_eq!(runs.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn default_superstep_limit_is_ten_thousand_and_recorded_with_the_run() {
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(linear("w1", 1).compile().unwrap());
    h.start("limit", Lin::default())
        .await
        .unwrap()
        .expect_completed();
    match &all_events(&engine, "limit").await[0].body {
        EventBody::RunStarted { settings, .. } => {
            assert_eq!(settings.superstep_limit, 10_000);
            assert_eq!(settings.deadline, None);
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// 17. Mermaid
// ---------------------------------------------------------------------------------------

#[test]
fn mermaid_shows_every_node_and_edge_kind() {
    let noop = |_s: Lin, _ctx| async { Ok::<_, NodeError>(LinUpdate::default()) };
    let g = StateGraph::<Lin>::new("all-edges", "1")
        .node("a", noop)
        .node("b", noop)
        .node("c", noop)
        .node("d", noop)
        .edge(START, "a")
        .conditional_edge("a", ["b", "c", END], |_s: &Lin| Route::from(["b", "c"]))
        .join(["b", "c"], "d")
        .edge("d", END)
        .compile()
        .unwrap();
    let m = g.mermaid();
    let lines: Vec<&str> = m.lines().map(str::trim).collect();
    assert_eq!(lines[0], "flowchart TD");
    for want in [
        "__start__([START])",
        "__end__([END])",
        "a[\"a\"]",
        "b[\"b\"]",
        "c[\"c\"]",
        "d[\"d\"]",
        "__start__ --> a",
        "a -.-> b",
        "a -.-> c",
        "a -.-> __end__",
        "b & c --> d",
        "d --> __end__",
    ] {
        assert!(lines.contains(&want), "missing `{want}` in\n{m}");
    }
    assert_eq!(lines.len(), 13, "nothing else:\n{m}");
}

#[test]
fn mermaid_gives_distinct_nodes_distinct_ids() {
    // `-`, `.` and `_` are all allowed in node names; the diagram must not merge nodes
    // whose names differ only there.
    let noop = |_s: Lin, _ctx| async { Ok::<_, NodeError>(LinUpdate::default()) };
    let g = StateGraph::<Lin>::new("ids", "1")
        .node("load-data", noop)
        .node("load_data", noop)
        .node("load.data", noop)
        .edge(START, "load-data")
        .edge("load-data", "load_data")
        .edge("load_data", "load.data")
        .edge("load.data", END)
        .compile()
        .unwrap();
    let m = g.mermaid();
    let ids: BTreeSet<&str> = m
        .lines()
        .filter_map(|l| l.trim().split_once("[\"").map(|(id, _)| id))
        .collect();
    assert_eq!(ids.len(), 3, "node ids collide:\n{m}");
    let edges: BTreeSet<&str> = m.lines().filter(|l| l.contains("-->")).collect();
    assert_eq!(edges.len(), 4, "{m}");
    for e in &edges {
        let (from, to) = e.trim().split_once(" --> ").unwrap();
        assert_ne!(from, to, "a self-loop that the graph does not have:\n{m}");
    }
}

// ---------------------------------------------------------------------------------------
// 18. compile() errors
// ---------------------------------------------------------------------------------------

#[test]
fn compile_rejects_malformed_graphs() {
    let noop = |_s: Lin, _ctx| async { Ok::<_, NodeError>(LinUpdate::default()) };
    let base = || {
        StateGraph::<Lin>::new("bad", "1")
            .node("a", noop)
            .edge(START, "a")
            .edge("a", END)
    };
    base().compile().expect("the base graph is valid");

    let e = base().node("a", noop).compile().unwrap_err();
    assert_eq!(e, GraphError::DuplicateNode("a".into()));

    let e = base().edge("a", "ghost").compile().unwrap_err();
    assert!(
        matches!(&e, GraphError::UnknownNode { node, edge } if node == "ghost" && edge.contains("a -> ghost")),
        "{e:?}"
    );
    let e = base()
        .conditional_edge("a", ["phantom", END], |_s: &Lin| END)
        .compile()
        .unwrap_err();
    assert!(
        matches!(&e, GraphError::UnknownNode { node, .. } if node == "phantom"),
        "{e:?}"
    );
    let e = base().join(["a", "nobody"], "a").compile().unwrap_err();
    assert!(
        matches!(&e, GraphError::UnknownNode { node, .. } if node == "nobody"),
        "{e:?}"
    );

    let e = base()
        .node("island", noop)
        .edge("island", END)
        .compile()
        .unwrap_err();
    assert_eq!(e, GraphError::Unreachable("island".into()));

    let e = base()
        .node("sink", noop)
        .edge("a", "sink")
        .compile()
        .unwrap_err();
    assert_eq!(e, GraphError::NoPathToEnd("sink".into()));

    // A cycle with no exit has no path to END either.
    let e = base()
        .node("x", noop)
        .node("y", noop)
        .edge("a", "x")
        .edge("x", "y")
        .edge("y", "x")
        .compile()
        .unwrap_err();
    assert!(matches!(e, GraphError::NoPathToEnd(_)), "{e:?}");

    for reserved in [START, END, "__private"] {
        let e = base()
            .node(reserved, noop)
            .edge("a", reserved)
            .compile()
            .unwrap_err();
        assert!(
            matches!(&e, GraphError::InvalidNodeName { name, .. } if name == reserved),
            "{reserved}: {e:?}"
        );
    }

    let e = StateGraph::<Lin>::new("bad", "1")
        .node("a", noop)
        .edge("a", END)
        .compile()
        .unwrap_err();
    assert_eq!(e, GraphError::NoEntry);
}

#[test]
fn update_builders_and_apply_follow_the_reducers() {
    // Sanity check of the derive the whole suite relies on.
    let mut s = Lin::default();
    s.apply(vec![
        (
            "a",
            LinUpdate::default().counter(3).log(vec!["x".to_owned()]),
        ),
        ("b", LinUpdate::default().log(vec!["y".to_owned()])),
    ])
    .unwrap();
    assert_eq!(
        s,
        Lin {
            counter: 3,
            log: vec!["x".into(), "y".into()]
        }
    );
    let p = Payload::encode(&LinUpdate::default().log(vec![])).unwrap();
    assert_eq!(p.json(), r#"{"log":[]}"#);
}
