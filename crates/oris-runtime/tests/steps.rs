//! Recorded steps (`ctx.step`, `ctx.step_with`, `ctx.step_key`, `ctx.now`, `ctx.random`):
//! recorded once, never re-executed on re-execution of their node, errors recorded too,
//! non-determinism detected and explained. In-memory store only.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use oris_core::event::{EventBody, EventKind, FailureKind, StepResult};
use oris_core::graph::{END, START};
use oris_core::id::Timestamp;
use oris_runtime::{
    BoxFuture, Context, EngineOptions, NodeError, NodePolicy, RetryPolicy, StateGraph,
};
use serde_json::json;

/// `(index, name, result)` of every `StepRecorded` event of a thread, in log order.
async fn steps_of(engine: &oris_runtime::Engine, thread: &str) -> Vec<(u32, String, StepResult)> {
    all_events(engine, thread)
        .await
        .into_iter()
        .filter_map(|e| match e.body {
            EventBody::StepRecorded {
                index,
                name,
                result,
                ..
            } => Some((index, name, result)),
            _ => None,
        })
        .collect()
}

type BoxedUpdate = BoxFuture<Result<LinUpdate, NodeError>>;

fn ok_json(r: &StepResult) -> serde_json::Value {
    match r {
        StepResult::Ok(p) => serde_json::from_str(p.json()).unwrap(),
        StepResult::Err(f) => panic!("expected a recorded value, got error {f:?}"),
    }
}

/// Keys seen by one execution of the node: (execution number, call position, key).
type Keys = Arc<Mutex<Vec<(usize, u32, String)>>>;

/// `START → b → END`; `b` runs step `first` (index 0), interrupts (index 1), then runs step
/// `second` (index 2). Counters: `b` (executions), `first`, `second` (step bodies).
fn step_interrupt_step(runs: Arc<Counters>, keys: Keys) -> StateGraph<Lin> {
    StateGraph::<Lin>::new("sis", "1")
        .node("b", move |_s: Lin, ctx: Context| {
            let runs = runs.clone();
            let keys = keys.clone();
            async move {
                let exec = runs.hit("b");
                let k0 = ctx.step_key();
                keys.lock().unwrap().push((exec, 0, k0.clone()));
                let r1: String = ctx
                    .step("first", {
                        let runs = runs.clone();
                        async move {
                            runs.hit("first");
                            Ok(format!("one@{k0}"))
                        }
                    })
                    .await?;
                let v: String = ctx.interrupt("go?").await?;
                let k2 = ctx.step_key();
                keys.lock().unwrap().push((exec, 2, k2.clone()));
                let r2: String = ctx
                    .step("second", async move {
                        runs.hit("second");
                        Ok(format!("two:{v}"))
                    })
                    .await?;
                Ok(LinUpdate::default().log(vec![r1, r2]))
            }
        })
        .edge(START, "b")
        .edge("b", END)
}

#[tokio::test]
async fn step_interrupt_step_does_not_rerun_the_first_step_after_resume() {
    let runs = Counters::new();
    let keys: Keys = Arc::default();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(
        step_interrupt_step(runs.clone(), keys.clone())
            .compile()
            .unwrap(),
    );

    let out = h.start("sis", Lin::default()).await.unwrap();
    let pending = paused(&out);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].payload, json!("go?"));
    assert_eq!(
        (runs.count("b"), runs.count("first"), runs.count("second")),
        (1, 1, 0)
    );
    // The first step is durable before the run pauses.
    let recorded = steps_of(&engine, "sis").await;
    assert_eq!(recorded.len(), 1);
    assert_eq!((recorded[0].0, recorded[0].1.as_str()), (0, "first"));

    let done = h
        .resume(pending[0].interrupt_id, "ok")
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(
        (runs.count("b"), runs.count("first"), runs.count("second")),
        (2, 1, 1),
        "the node re-ran from its first line, but the first step's body must not run again"
    );

    // Both results are in the log, at positions 0 and 2 (the interrupt is position 1).
    let recorded = steps_of(&engine, "sis").await;
    let summary: Vec<(u32, &str)> = recorded.iter().map(|(i, n, _)| (*i, n.as_str())).collect();
    assert_eq!(summary, [(0, "first"), (2, "second")]);
    let events = all_events(&engine, "sis").await;
    let raised: Vec<u32> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::InterruptRaised { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(raised, [1]);

    // The keys: the same position gives the same key in both executions, different
    // positions give different keys.
    let keys = keys.lock().unwrap().clone();
    let k = |exec: usize, pos: u32| {
        keys.iter()
            .find(|(e, p, _)| *e == exec && *p == pos)
            .map(|(_, _, k)| k.clone())
            .unwrap_or_else(|| panic!("no key for execution {exec} position {pos}: {keys:?}"))
    };
    assert_eq!(k(1, 0), k(2, 0));
    assert_ne!(k(2, 0), k(2, 2));
    assert!(
        !keys.iter().any(|(e, p, _)| *e == 1 && *p == 2),
        "the first execution paused before position 2"
    );

    // The node's update holds the recorded results: the first step's value as recorded in
    // the first execution (carrying that execution's key), the second with the resume value.
    let first_value = format!("one@{}", k(1, 0));
    assert_eq!(done.log, [first_value.clone(), "two:ok".to_owned()]);
    assert_eq!(ok_json(&recorded[0].2), json!(first_value));
    assert_eq!(ok_json(&recorded[1].2), json!("two:ok"));
}

#[tokio::test]
async fn step_keys_differ_between_runs() {
    let runs = Counters::new();
    let keys: Keys = Arc::default();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(
        step_interrupt_step(runs.clone(), keys.clone())
            .compile()
            .unwrap(),
    );
    paused(&h.start("k1", Lin::default()).await.unwrap());
    paused(&h.start("k2", Lin::default()).await.unwrap());
    let keys = keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0].2, keys[1].2, "two runs must not share a step key");
}

/// `START → nd → END` version "1": `nd` calls `first` (a step or an interrupt), then
/// interrupts. Used to change the node's code under a paused run.
fn nd_graph(
    runs: Arc<Counters>,
    code: impl Fn(Context, Arc<Counters>) -> BoxedUpdate + Send + Sync + 'static,
) -> StateGraph<Lin> {
    StateGraph::<Lin>::new("nd", "1")
        .node("nd", move |_s: Lin, ctx: Context| code(ctx, runs.clone()))
        .edge(START, "nd")
        .edge("nd", END)
}

fn charge_then_ask(ctx: Context, runs: Arc<Counters>) -> BoxedUpdate {
    Box::pin(async move {
        let _: String = ctx
            .step("charge", async move {
                runs.hit("charge");
                Ok("ch_1".to_owned())
            })
            .await?;
        let v: String = ctx.interrupt("approve?").await?;
        Ok(LinUpdate::default().log(vec![v]))
    })
}

#[tokio::test]
async fn a_changed_step_name_is_non_determinism_naming_node_position_and_names() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let v1 = engine.register(nd_graph(runs.clone(), charge_then_ask).compile().unwrap());
    let out = v1.start("nd", Lin::default()).await.unwrap();
    let id = paused(&out)[0].interrupt_id;

    // "Deploy" changed code under the same name and version: `refund` comes first now.
    let changed = engine.register(
        nd_graph(runs.clone(), |ctx, runs| {
            Box::pin(async move {
                let _: String = ctx
                    .step("refund", async move {
                        runs.hit("refund");
                        Ok("re_1".to_owned())
                    })
                    .await?;
                let v: String = ctx.interrupt("approve?").await?;
                Ok(LinUpdate::default().log(vec![v]))
            })
        })
        .compile()
        .unwrap(),
    );
    let out = changed.resume(id, "yes").await.unwrap();
    let f = out.failure().expect("the run fails").clone();
    assert_eq!(f.kind, FailureKind::NonDeterminism, "{f:?}");
    assert_eq!(f.node.as_deref(), Some("nd"));
    for needle in ["`nd`", "#0", "`refund`", "`charge`"] {
        assert!(
            f.message.contains(needle),
            "{needle} missing in: {}",
            f.message
        );
    }
    assert_eq!(runs.count("refund"), 0, "the new step must not run");
    assert_eq!(runs.count("charge"), 1);
    let events = all_events(&engine, "nd").await;
    assert_eq!(count_kind(&events, EventKind::RunFailed), 1);
    assert_eq!(count_kind(&events, EventKind::StepRecorded), 1);
}

#[tokio::test]
async fn a_step_where_an_interrupt_was_recorded_is_non_determinism_at_that_position() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let v1 = engine.register(nd_graph(runs.clone(), charge_then_ask).compile().unwrap());
    let id = paused(&v1.start("nd", Lin::default()).await.unwrap())[0].interrupt_id;
    // New code: the same first step, then a step `notify` where the interrupt was (#1).
    let changed = engine.register(
        nd_graph(runs.clone(), |ctx, runs| {
            Box::pin(async move {
                let _: String = ctx
                    .step("charge", {
                        let runs = runs.clone();
                        async move {
                            runs.hit("charge");
                            Ok("ch_1".to_owned())
                        }
                    })
                    .await?;
                let _: String = ctx
                    .step("notify", async move {
                        runs.hit("notify");
                        Ok("sent".to_owned())
                    })
                    .await?;
                Ok(LinUpdate::default())
            })
        })
        .compile()
        .unwrap(),
    );
    let out = changed.resume(id, "yes").await.unwrap();
    let f = out.failure().expect("the run fails").clone();
    assert_eq!(f.kind, FailureKind::NonDeterminism);
    for needle in ["`nd`", "#1", "`notify`", "interrupt"] {
        assert!(
            f.message.contains(needle),
            "{needle} missing in: {}",
            f.message
        );
    }
    assert_eq!(runs.count("charge"), 1, "the recorded step is not re-run");
    assert_eq!(runs.count("notify"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_step_is_recorded_and_its_error_propagates_without_node_retries() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let policy = NodePolicy {
        retry: RetryPolicy::exponential(3)
            .initial_interval(Duration::from_millis(10))
            .jitter(false),
        timeout: None,
    };
    let g = StateGraph::<Lin>::new("sf", "1")
        .node_with("pay", policy, {
            let runs = runs.clone();
            move |_s: Lin, ctx: Context| {
                let runs = runs.clone();
                async move {
                    runs.hit("pay");
                    let _: String = ctx
                        .step("charge", async move {
                            runs.hit("charge");
                            Err(NodeError::new("card declined"))
                        })
                        .await?;
                    Ok(LinUpdate::default().log(vec!["paid".into()]))
                }
            }
        })
        .edge(START, "pay")
        .edge("pay", END)
        .compile()
        .unwrap();
    let h = engine.register(g);
    let out = h.start("sf", Lin::default()).await.unwrap();
    let f = out.failure().expect("the run fails").clone();
    assert_eq!(f.kind, FailureKind::StepFailed, "{f:?}");
    assert_eq!(f.node.as_deref(), Some("pay"));
    assert!(f.message.contains("card declined"), "{}", f.message);

    let recorded = steps_of(&engine, "sf").await;
    assert_eq!(recorded.len(), 1);
    assert_eq!((recorded[0].0, recorded[0].1.as_str()), (0, "charge"));
    match &recorded[0].2 {
        StepResult::Err(e) => {
            assert_eq!(e.kind, FailureKind::StepFailed);
            assert_eq!(e.message, "card declined");
            assert_eq!(e.node.as_deref(), Some("pay"));
        }
        other => panic!("expected a recorded error, got {other:?}"),
    }
    // A recorded step error is final: retrying the node could only return it again, so the
    // node's retry policy does not retry it (one attempt, one NodeFailed).
    assert_eq!(runs.count("charge"), 1);
    assert_eq!(runs.count("pay"), 1);
    let events = all_events(&engine, "sf").await;
    assert_eq!(count_kind(&events, EventKind::NodeFailed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_retried_node_gets_the_recorded_step_error_without_rerunning_the_body() {
    let runs = Counters::new();
    let seen = Arc::new(Mutex::new(Vec::<(u32, String)>::new()));
    let (_store, engine) = memory_engine(EngineOptions::default());
    let policy = NodePolicy {
        retry: RetryPolicy::exponential(3)
            .initial_interval(Duration::from_millis(10))
            .jitter(false),
        timeout: None,
    };
    let g = StateGraph::<Lin>::new("sr", "1")
        .node_with("pay", policy, {
            let runs = runs.clone();
            let seen = seen.clone();
            move |_s: Lin, ctx: Context| {
                let runs = runs.clone();
                let seen = seen.clone();
                async move {
                    runs.hit("pay");
                    let r: Result<String, NodeError> = ctx
                        .step("charge", async move {
                            runs.hit("charge");
                            Err(NodeError::new("gateway down"))
                        })
                        .await;
                    let e = r.expect_err("the step fails");
                    seen.lock()
                        .unwrap()
                        .push((ctx.attempt(), e.message().to_owned()));
                    if ctx.attempt() < 3 {
                        // Fail the node in a retryable way (not with the step's error).
                        return Err(NodeError::new(format!("attempt {}", ctx.attempt())));
                    }
                    Ok(LinUpdate::default().log(vec![format!("gave up: {}", e.message())]))
                }
            }
        })
        .edge(START, "pay")
        .edge("pay", END)
        .compile()
        .unwrap();
    let h = engine.register(g);
    let done = h
        .start("sr", Lin::default())
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(done.log, ["gave up: gateway down"]);
    assert_eq!(runs.count("pay"), 3, "the node was retried twice");
    assert_eq!(runs.count("charge"), 1, "the step body ran once");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (1, "gateway down".to_owned()),
            (2, "gateway down".to_owned()),
            (3, "gateway down".to_owned())
        ]
    );
    let events = all_events(&engine, "sr").await;
    assert_eq!(count_kind(&events, EventKind::StepRecorded), 1);
    assert_eq!(count_kind(&events, EventKind::NodeFailed), 2);
}

/// `START → s → END`: `s` runs `step_with` under `policy`, whose body fails `fails` times
/// (with `err`) before succeeding, then interrupts. Counter `body`.
fn step_with_graph(
    runs: Arc<Counters>,
    policy: RetryPolicy,
    fails: usize,
    err: fn(String) -> NodeError,
) -> StateGraph<Lin> {
    StateGraph::<Lin>::new("sw", "1")
        .node("s", move |_s: Lin, ctx: Context| {
            let runs = runs.clone();
            let policy = policy.clone();
            async move {
                runs.hit("s");
                let r: String = ctx
                    .step_with("flaky", &policy, || {
                        let runs = runs.clone();
                        async move {
                            let n = runs.hit("body");
                            if n <= fails {
                                Err(err(format!("try {n} failed")))
                            } else {
                                Ok(format!("ok on try {n}"))
                            }
                        }
                    })
                    .await?;
                let v: String = ctx.interrupt("go?").await?;
                Ok(LinUpdate::default().log(vec![r, v]))
            }
        })
        .edge(START, "s")
        .edge("s", END)
}

fn policy(n: u32) -> RetryPolicy {
    RetryPolicy::exponential(n)
        .initial_interval(Duration::from_millis(10))
        .jitter(false)
}

#[tokio::test(start_paused = true)]
async fn step_with_retries_the_body_and_records_only_the_final_result() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(
        step_with_graph(runs.clone(), policy(3), 2, NodeError::new)
            .compile()
            .unwrap(),
    );
    let out = h.start("sw", Lin::default()).await.unwrap();
    let id = paused(&out)[0].interrupt_id;
    assert_eq!(runs.count("body"), 3);
    let recorded = steps_of(&engine, "sw").await;
    assert_eq!(recorded.len(), 1, "only the final result is recorded");
    assert_eq!(ok_json(&recorded[0].2), json!("ok on try 3"));
    let events = all_events(&engine, "sw").await;
    assert_eq!(
        count_kind(&events, EventKind::NodeFailed),
        0,
        "step retries are not node retries"
    );

    let done = h.resume(id, "go").await.unwrap().expect_completed();
    assert_eq!(done.log, ["ok on try 3", "go"]);
    assert_eq!(
        runs.count("body"),
        3,
        "a recorded step is not retried again"
    );
    assert_eq!(runs.count("s"), 2);
}

#[tokio::test(start_paused = true)]
async fn step_with_records_the_last_error_when_retries_run_out() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(
        step_with_graph(runs.clone(), policy(2), 5, NodeError::new)
            .compile()
            .unwrap(),
    );
    let out = h.start("sw", Lin::default()).await.unwrap();
    let f = out.failure().expect("the run fails").clone();
    assert_eq!(f.kind, FailureKind::StepFailed);
    assert_eq!(runs.count("body"), 2);
    let recorded = steps_of(&engine, "sw").await;
    assert_eq!(recorded.len(), 1);
    match &recorded[0].2 {
        StepResult::Err(e) => assert_eq!(e.message, "try 2 failed"),
        other => panic!("expected the last error, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn step_with_does_not_retry_a_permanent_error() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(
        step_with_graph(runs.clone(), policy(5), 5, NodeError::permanent)
            .compile()
            .unwrap(),
    );
    let out = h.start("sw", Lin::default()).await.unwrap();
    assert_eq!(out.failure().map(|f| f.kind), Some(FailureKind::StepFailed));
    assert_eq!(runs.count("body"), 1);
}

#[tokio::test]
async fn now_and_random_return_the_recorded_values_on_re_execution() {
    let seen = Arc::new(Mutex::new(Vec::<(Timestamp, u64)>::new()));
    let execs = Arc::new(AtomicUsize::new(0));
    let (_store, engine) = memory_engine(EngineOptions::default());
    let g = StateGraph::<Lin>::new("det", "1")
        .node("d", {
            let seen = seen.clone();
            let execs = execs.clone();
            move |_s: Lin, ctx: Context| {
                let seen = seen.clone();
                let execs = execs.clone();
                async move {
                    execs.fetch_add(1, Ordering::SeqCst);
                    let t = ctx.now().await?;
                    let r = ctx.random().await?;
                    seen.lock().unwrap().push((t, r));
                    let _: String = ctx.interrupt("go?").await?;
                    Ok(LinUpdate::default().log(vec![t.0.to_string(), r.to_string()]))
                }
            }
        })
        .edge(START, "d")
        .edge("d", END)
        .compile()
        .unwrap();
    let h = engine.register(g);
    let before = Timestamp::now();
    let out = h.start("det", Lin::default()).await.unwrap();
    let after = Timestamp::now();
    let id = paused(&out)[0].interrupt_id;
    let (t0, r0) = seen.lock().unwrap()[0];
    assert!(
        before <= t0 && t0 <= after,
        "now() is the current time: {t0:?}"
    );
    // Let the wall clock move past the recorded value, so that a re-read would differ.
    while Timestamp::now() <= t0 {
        std::hint::spin_loop();
    }
    let done = h.resume(id, "go").await.unwrap().expect_completed();
    assert_eq!(execs.load(Ordering::SeqCst), 2);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, [(t0, r0), (t0, r0)]);
    assert_eq!(done.log, [t0.0.to_string(), r0.to_string()]);
    let names: Vec<String> = steps_of(&engine, "det")
        .await
        .into_iter()
        .map(|(_, n, _)| n)
        .collect();
    assert_eq!(names, ["oris.now", "oris.random"]);

    // Another run draws another random value.
    let out = h.start("det-2", Lin::default()).await.unwrap();
    paused(&out);
    let r1 = steps_of(&engine, "det-2").await[1].2.clone();
    assert_ne!(ok_json(&r1), json!(r0));
}

#[tokio::test(start_paused = true)]
async fn a_retried_node_does_not_rerun_a_step_that_succeeded() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let g = StateGraph::<Lin>::new("rs", "1")
        .node_with(
            "pay",
            NodePolicy {
                retry: policy(3),
                timeout: None,
            },
            {
                let runs = runs.clone();
                move |_s: Lin, ctx: Context| {
                    let runs = runs.clone();
                    async move {
                        runs.hit("pay");
                        let charge: String = ctx
                            .step("charge", {
                                let runs = runs.clone();
                                async move {
                                    let n = runs.hit("charge");
                                    Ok(format!("ch_{n}"))
                                }
                            })
                            .await?;
                        if ctx.attempt() == 1 {
                            return Err(NodeError::new("receipt service down"));
                        }
                        Ok(LinUpdate::default().log(vec![charge]))
                    }
                }
            },
        )
        .edge(START, "pay")
        .edge("pay", END)
        .compile()
        .unwrap();
    let h = engine.register(g);
    let done = h
        .start("rs", Lin::default())
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(done.log, ["ch_1"]);
    assert_eq!((runs.count("pay"), runs.count("charge")), (2, 1));
    let events = all_events(&engine, "rs").await;
    assert_eq!(count_kind(&events, EventKind::StepRecorded), 1);
    assert_eq!(count_kind(&events, EventKind::NodeFailed), 1);
}

#[tokio::test]
async fn steps_with_one_name_are_matched_by_call_order() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let g = StateGraph::<Lin>::new("same", "1")
        .node("page", {
            let runs = runs.clone();
            move |_s: Lin, ctx: Context| {
                let runs = runs.clone();
                async move {
                    let mut pages = Vec::new();
                    for i in 0..3 {
                        let p: String = ctx
                            .step("fetch", {
                                let runs = runs.clone();
                                async move {
                                    let n = runs.hit("fetch");
                                    Ok(format!("page{i}#{n}"))
                                }
                            })
                            .await?;
                        pages.push(p);
                    }
                    let _: String = ctx.interrupt("more?").await?;
                    Ok(LinUpdate::default().log(pages))
                }
            }
        })
        .edge(START, "page")
        .edge("page", END)
        .compile()
        .unwrap();
    let h = engine.register(g);
    let id = paused(&h.start("same", Lin::default()).await.unwrap())[0].interrupt_id;
    let done = h.resume(id, "no").await.unwrap().expect_completed();
    assert_eq!(done.log, ["page0#1", "page1#2", "page2#3"]);
    assert_eq!(runs.count("fetch"), 3);
}

/// `START → n → END`: `n` runs step `outer`, whose body itself makes a recorded call
/// (`inner` step or an interrupt, per `nested_interrupt`), then `n` interrupts ("last?").
fn nested(runs: Arc<Counters>, nested_interrupt: bool) -> StateGraph<Lin> {
    StateGraph::<Lin>::new("nested", "1")
        .node("n", move |_s: Lin, ctx: Context| {
            let runs = runs.clone();
            async move {
                runs.hit("n");
                let inner_ctx = ctx.clone();
                let outer: String = ctx
                    .step("outer", {
                        let runs = runs.clone();
                        async move {
                            runs.hit("outer");
                            if nested_interrupt {
                                let v: String = inner_ctx.interrupt("inner?").await?;
                                Ok(format!("outer({v})"))
                            } else {
                                let v: String = inner_ctx
                                    .step("inner", async move {
                                        runs.hit("inner");
                                        Ok("in".to_owned())
                                    })
                                    .await?;
                                Ok(format!("outer({v})"))
                            }
                        }
                    })
                    .await?;
                let last: String = ctx.interrupt("last?").await?;
                Ok(LinUpdate::default().log(vec![outer, last]))
            }
        })
        .edge(START, "n")
        .edge("n", END)
}

#[tokio::test]
async fn a_step_nested_in_a_step_body_is_refused_on_first_execution() {
    // A recorded call inside a step's body would take a call position that re-execution
    // (which returns the step's record without running its body) cannot reproduce: it is
    // refused up front with a clear error instead of failing later as non-determinism.
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(nested(runs.clone(), false).compile().unwrap());
    let out = h.start("nest", Lin::default()).await.unwrap();
    let f = out.failure().expect("nested step refused");
    assert!(
        f.message.contains("inside the body of a recorded step"),
        "{f}"
    );
    assert!(f.message.contains("ctx.step(\"inner\")"), "{f}");
    assert_eq!(runs.count("inner"), 0, "the nested body never ran");
}

#[tokio::test]
async fn an_interrupt_nested_in_a_step_body_is_refused() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(nested(runs.clone(), true).compile().unwrap());
    let out = h.start("nest-i", Lin::default()).await.unwrap();
    let f = out.failure().expect("nested interrupt refused");
    assert!(f.message.contains("ctx.interrupt"), "{f}");
    assert!(
        f.message.contains("inside the body of a recorded step"),
        "{f}"
    );
}

#[tokio::test]
async fn sibling_steps_polled_together_are_not_nested() {
    #[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, oris_derive::State)]
    #[oris(crate = "::oris_core")]
    struct Pair {
        #[reducer(append)]
        log: Vec<String>,
    }
    let runs = Counters::new();
    let r = runs.clone();
    let g = oris_runtime::StateGraph::<Pair>::new("siblings", "1")
        .node("n", move |_s: Pair, ctx| {
            let r = r.clone();
            async move {
                let (a, b) = futures_util::future::join(
                    ctx.step("a", {
                        let r = r.clone();
                        async move {
                            r.hit("a");
                            Ok(1)
                        }
                    }),
                    ctx.step("b", {
                        let r = r.clone();
                        async move {
                            r.hit("b");
                            Ok(2)
                        }
                    }),
                )
                .await;
                let v: String = ctx.interrupt("go?").await?;
                Ok::<_, oris_runtime::NodeError>(
                    PairUpdate::default().log(vec![format!("{}{}{v}", a?, b?)]),
                )
            }
        })
        .edge(oris_core::graph::START, "n")
        .edge("n", oris_core::graph::END)
        .compile()
        .unwrap();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(g);
    let out = h.start("sib", Pair::default()).await.unwrap();
    let id = paused(&out)[0].interrupt_id;
    let done = h.resume(id, "!").await.unwrap().expect_completed();
    assert_eq!(done.log, ["12!"]);
    assert_eq!((runs.count("a"), runs.count("b")), (1, 1));
}
