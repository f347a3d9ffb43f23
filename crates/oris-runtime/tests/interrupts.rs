//! Interrupts and resume: W3 cycles, several interrupts per node, parallel interrupts,
//! idempotent and conflicting resumes (also concurrent), a resume that arrives while the run
//! is still suspending, reject, crash while paused, and replay consistency. In-memory store.

mod common;

use std::sync::Arc;

use common::*;
use oris_core::event::{EventBody, EventKind, Payload, Task};
use oris_core::graph::{END, START};
use oris_core::id::{InterruptId, Seq, Timestamp};
use oris_core::status::{RunStatus, StatusKind};
use oris_core::store::{Answer, MemoryStore, Store};
use oris_runtime::{Context, Engine, EngineOptions, Error, NodeError, RunOutcome, StateGraph};
use serde_json::json;
use tokio::sync::{Barrier, Semaphore, mpsc};

// ---------------------------------------------------------------------------------------
// Graphs

/// W3: `START → a → b → c → END`. `b` runs step `charge`, then interrupts with
/// "approve?" and logs `b:<value>`. Counters: `a`, `b` (executions), `charge` (step body),
/// `b:after` (code after the interrupt), `c`.
fn w3(runs: Arc<Counters>) -> StateGraph<Lin> {
    w3_with(runs, None)
}

/// [`w3`] whose `b` blocks right after its interrupt returned (a process about to die).
fn w3_with(runs: Arc<Counters>, block_after: Option<Blocker>) -> StateGraph<Lin> {
    let plain = |me: &'static str, runs: Arc<Counters>| {
        move |_s: Lin, _ctx: Context| {
            runs.hit(me);
            async move { Ok::<_, NodeError>(LinUpdate::default().log(vec![me.to_owned()])) }
        }
    };
    StateGraph::<Lin>::new("w3", "1")
        .node("a", plain("a", runs.clone()))
        .node("b", {
            let runs = runs.clone();
            move |_s: Lin, ctx: Context| {
                let runs = runs.clone();
                let block = block_after.clone();
                async move {
                    runs.hit("b");
                    let _: String = ctx
                        .step("charge", {
                            let runs = runs.clone();
                            async move {
                                runs.hit("charge");
                                Ok("ch_1".to_owned())
                            }
                        })
                        .await?;
                    let v: String = ctx.interrupt("approve?").await?;
                    runs.hit("b:after");
                    if let Some(b) = block {
                        b.block().await;
                    }
                    Ok(LinUpdate::default().log(vec![format!("b:{v}")]))
                }
            }
        })
        .node("c", plain("c", runs))
        .edge(START, "a")
        .edge("a", "b")
        .edge("b", "c")
        .edge("c", END)
}

/// `START → {p, q} → r → END`: `p` and `q` run in one superstep and each interrupts with
/// "<me>?", logging `<me>:<value>`. Counters: `p`, `q`, `p:after`, `q:after`, `r`.
fn par(runs: Arc<Counters>) -> StateGraph<Lin> {
    let asker = |me: &'static str, runs: Arc<Counters>| {
        move |_s: Lin, ctx: Context| {
            let runs = runs.clone();
            async move {
                runs.hit(me);
                let v: String = ctx.interrupt(&format!("{me}?")).await?;
                runs.hit(&format!("{me}:after"));
                Ok(LinUpdate::default().log(vec![format!("{me}:{v}")]))
            }
        }
    };
    StateGraph::<Lin>::new("par", "1")
        .node("p", asker("p", runs.clone()))
        .node("q", asker("q", runs.clone()))
        .node("r", move |_s: Lin, _ctx: Context| {
            runs.hit("r");
            async { Ok(LinUpdate::default().log(vec!["r".to_owned()])) }
        })
        .edge(START, "p")
        .edge(START, "q")
        .edge("p", "r")
        .edge("q", "r")
        .edge("r", END)
}

fn w3_engine(options: EngineOptions) -> (Arc<MemoryStore>, Engine, Arc<Counters>) {
    let (store, engine) = memory_engine(options);
    (store, engine, Counters::new())
}

fn counts(runs: &Counters, names: &[&str]) -> Vec<usize> {
    names.iter().map(|n| runs.count(n)).collect()
}

/// The `(interrupt_id, value)` of every `InterruptResumed` event.
fn resumed_events(events: &[oris_core::event::Event]) -> Vec<(InterruptId, serde_json::Value)> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::InterruptResumed {
                interrupt_id,
                value,
            } => Some((*interrupt_id, serde_json::from_str(value.json()).unwrap())),
            _ => None,
        })
        .collect()
}

fn completions_in(events: &[oris_core::event::Event], node: &str) -> usize {
    events
        .iter()
        .filter(|e| matches!(&e.body, EventBody::NodeCompleted { node: n, .. } if n == node))
        .count()
}

// ---------------------------------------------------------------------------------------
// 1. W3

#[tokio::test]
async fn w3_cycles_pause_at_b_and_resume_without_rerunning_a() {
    let (_store, engine, runs) = w3_engine(EngineOptions::default());
    let h = engine.register(w3(runs.clone()).compile().unwrap());
    let t = tid("w3");

    // Cycle 1: pauses at b.
    let out = h.start("w3", Lin::default()).await.unwrap();
    let pending = paused(&out);
    assert_eq!(pending.len(), 1);
    let id1 = pending[0].interrupt_id;
    assert_eq!(pending[0].node, "b");
    assert_eq!(pending[0].payload, json!("approve?"));
    assert_eq!(counts(&runs, &["a", "b", "b:after", "c"]), [1, 1, 0, 0]);

    // While paused: status interrupted with the pending interrupt, state after a only.
    let run = engine.latest_run(&t).await.unwrap();
    assert_eq!(run.run_id, out.run_id());
    assert_eq!(
        run.status,
        RunStatus::Interrupted {
            interrupts: pending.clone()
        }
    );
    let st = h.state("w3").await.unwrap();
    assert_eq!(st.values.log, ["a"]);
    assert_eq!(st.next, [Task::Node("b".into())]);
    let recs = engine.interrupts(&t).await.unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(
        (recs[0].interrupt_id, recs[0].node.as_str(), recs[0].run_id),
        (id1, "b", out.run_id())
    );
    assert_eq!(recs[0].payload.json(), r#""approve?""#);
    assert!(recs[0].answer.is_none() && recs[0].applied_seq.is_none());
    assert_eq!(
        engine.interrupt(id1).await.unwrap().as_ref(),
        Some(&recs[0])
    );

    // Resume: b continues, c runs, a does not run again.
    let done = h.resume(id1, "yes").await.unwrap().expect_completed();
    assert_eq!(done.log, ["a", "b:yes", "c"]);
    assert_eq!(
        counts(&runs, &["a", "b", "charge", "b:after", "c"]),
        [1, 2, 1, 1, 1]
    );

    // The timeline, in order.
    use EventKind::*;
    let events = all_events(&engine, "w3").await;
    assert_eq!(
        kinds(&events),
        [
            RunStarted,
            NodeCompleted,
            StepRecorded,
            InterruptRaised,
            RunSuspended,
            InterruptResumed,
            RunResumed,
            NodeCompleted,
            NodeCompleted,
            RunCompleted
        ]
    );
    match &events[4].body {
        EventBody::RunSuspended { interrupts, .. } => assert_eq!(interrupts, &[id1]),
        other => panic!("{other:?}"),
    }
    assert_eq!(resumed_events(&events), [(id1, json!("yes"))]);
    let rec = engine.interrupt(id1).await.unwrap().unwrap();
    assert_eq!(
        rec.answer.map(|(v, _)| v.into_json()),
        Some(r#""yes""#.into())
    );
    assert_eq!(rec.applied_seq, Some(events[5].seq));
    assert_eq!(rec.raised_seq, events[3].seq);

    // Cycle 2 on the same thread: a new interrupt with a new id; a runs once more.
    let out2 = h.start("w3", Lin::default()).await.unwrap();
    let pending2 = paused(&out2);
    assert_eq!(pending2.len(), 1);
    let id2 = pending2[0].interrupt_id;
    assert_ne!(id2, id1);
    assert_eq!(runs.count("a"), 2);
    assert_eq!(
        h.state("w3").await.unwrap().values.log,
        ["a", "b:yes", "c", "a"]
    );
    assert_eq!(engine.interrupts(&t).await.unwrap().len(), 2);

    // Resuming cycle 1's interrupt again (same value) returns cycle 1's outcome and touches
    // neither run.
    let head = all_events(&engine, "w3").await.len();
    let again = h.resume(id1, "yes").await.unwrap();
    assert_eq!(again.run_id(), out.run_id());
    assert_eq!(again.state().unwrap().log, ["a", "b:yes", "c"]);
    assert_eq!(all_events(&engine, "w3").await.len(), head);
    assert_eq!(
        engine.latest_run(&t).await.unwrap().status.kind(),
        StatusKind::Interrupted
    );

    let done2 = h.resume(id2, "no").await.unwrap().expect_completed();
    assert_eq!(done2.log, ["a", "b:yes", "c", "a", "b:no", "c"]);
    assert_eq!(
        counts(&runs, &["a", "charge", "b:after", "c"]),
        [2, 2, 2, 2]
    );
    // Both runs ended: each interrupt still answers with its own run's outcome.
    assert_eq!(h.resume(id1, "yes").await.unwrap(), again);
    assert_eq!(h.resume(id2, "no").await.unwrap().state(), Some(&done2));
    assert_eq!(
        counts(&runs, &["a", "charge", "b:after", "c"]),
        [2, 2, 2, 2]
    );
}

#[tokio::test]
async fn a_paused_thread_refuses_a_new_start() {
    let (_store, engine, runs) = w3_engine(EngineOptions::default());
    let h = engine.register(w3(runs.clone()).compile().unwrap());
    let out = h.start("busy", Lin::default()).await.unwrap();
    paused(&out);
    assert!(matches!(
        h.start("busy", Lin::default()).await,
        Err(Error::RunActive { run_id, .. }) if run_id == out.run_id()
    ));
    assert_eq!(runs.count("a"), 1);
}

// ---------------------------------------------------------------------------------------
// 3. A node that interrupts twice

#[tokio::test]
async fn a_node_that_interrupts_twice_pauses_twice_and_sees_both_values() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let g = StateGraph::<Lin>::new("twice", "1")
        .node("ask", {
            let runs = runs.clone();
            move |_s: Lin, ctx: Context| {
                let runs = runs.clone();
                async move {
                    runs.hit("ask");
                    let first: String = ctx.interrupt("first?").await?;
                    runs.hit("between");
                    let second: String = ctx.interrupt("second?").await?;
                    runs.hit("end");
                    Ok(LinUpdate::default().log(vec![format!("{first}+{second}")]))
                }
            }
        })
        .edge(START, "ask")
        .edge("ask", END)
        .compile()
        .unwrap();
    let h = engine.register(g);
    let out = h.start("twice", Lin::default()).await.unwrap();
    let p1 = paused(&out);
    assert_eq!(p1.len(), 1);
    assert_eq!(p1[0].payload, json!("first?"));
    let id1 = p1[0].interrupt_id;

    let out = h.resume(id1, "x").await.unwrap();
    let p2 = paused(&out);
    assert_eq!(p2.len(), 1, "only the second interrupt is pending: {p2:?}");
    assert_eq!(p2[0].payload, json!("second?"));
    let id2 = p2[0].interrupt_id;
    assert_ne!(id2, id1);
    assert_eq!(counts(&runs, &["ask", "between", "end"]), [2, 1, 0]);
    assert_eq!(
        engine.latest_run(&tid("twice")).await.unwrap().status,
        RunStatus::Interrupted {
            interrupts: p2.clone()
        }
    );

    // Answering the first again changes nothing and still reports the second as pending.
    let head = all_events(&engine, "twice").await.len();
    let same = h.resume(id1, "x").await.unwrap();
    assert_eq!(paused(&same), p2);
    assert_eq!(all_events(&engine, "twice").await.len(), head);
    assert_eq!(runs.count("ask"), 2);

    let done = h.resume(id2, "y").await.unwrap().expect_completed();
    assert_eq!(done.log, ["x+y"]);
    assert_eq!(counts(&runs, &["ask", "between", "end"]), [3, 2, 1]);
    let events = all_events(&engine, "twice").await;
    assert_eq!(
        resumed_events(&events),
        [(id1, json!("x")), (id2, json!("y"))],
        "each value is applied once; the first is not asked again"
    );
    assert_eq!(count_kind(&events, EventKind::InterruptRaised), 2);
    assert_eq!(count_kind(&events, EventKind::RunSuspended), 2);
}

// ---------------------------------------------------------------------------------------
// 4. Parallel interrupts

#[tokio::test]
async fn parallel_interrupts_have_distinct_ids_and_can_be_answered_one_at_a_time() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(par(runs.clone()).compile().unwrap());
    let out = h.start("par", Lin::default()).await.unwrap();
    let pending = paused(&out);
    assert_eq!(pending.len(), 2);
    assert_ne!(pending[0].interrupt_id, pending[1].interrupt_id);
    let by_node = |n: &str| {
        pending
            .iter()
            .find(|p| p.node == n)
            .unwrap_or_else(|| panic!("no interrupt of {n}: {pending:?}"))
            .clone()
    };
    let (p, q) = (by_node("p"), by_node("q"));
    assert_eq!(p.payload, json!("p?"));
    assert_eq!(q.payload, json!("q?"));

    // Answer p: p's work proceeds and is recorded; the run pauses again on q only.
    let out = h.resume(p.interrupt_id, "1").await.unwrap();
    assert_eq!(
        paused(&out),
        std::slice::from_ref(&q),
        "pending = unanswered only"
    );
    assert_eq!(
        engine.latest_run(&tid("par")).await.unwrap().status,
        RunStatus::Interrupted {
            interrupts: vec![q.clone()]
        }
    );
    assert_eq!(
        counts(&runs, &["p", "p:after", "q", "q:after", "r"]),
        [2, 1, 1, 0, 0]
    );
    let events = all_events(&engine, "par").await;
    assert_eq!(
        completions_in(&events, "p"),
        1,
        "p's completion is recorded"
    );
    assert_eq!(completions_in(&events, "q"), 0);
    // The superstep is not closed: the state has neither update yet.
    assert!(h.state("par").await.unwrap().values.log.is_empty());

    let done = h
        .resume(q.interrupt_id, "2")
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(done.log, ["p:1", "q:2", "r"]);
    assert_eq!(
        counts(&runs, &["p", "p:after", "q", "q:after", "r"]),
        [2, 1, 2, 1, 1]
    );
    let events = all_events(&engine, "par").await;
    assert_eq!(completions_in(&events, "p"), 1);
    assert_eq!(count_kind(&events, EventKind::RunResumed), 2);
}

#[tokio::test]
async fn resume_many_answers_parallel_interrupts_at_once() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(par(runs.clone()).compile().unwrap());
    let pending = paused(&h.start("par", Lin::default()).await.unwrap());
    let answers: Vec<(InterruptId, serde_json::Value)> = pending
        .iter()
        .map(|p| (p.interrupt_id, json!(format!("{}-ok", p.node))))
        .collect();
    let done = h.resume_many(answers).await.unwrap().expect_completed();
    assert_eq!(done.log, ["p:p-ok", "q:q-ok", "r"]);
    assert_eq!(
        counts(&runs, &["p", "p:after", "q", "q:after", "r"]),
        [2, 1, 2, 1, 1]
    );
    let events = all_events(&engine, "par").await;
    assert_eq!(count_kind(&events, EventKind::RunResumed), 1);
    assert_eq!(count_kind(&events, EventKind::RunSuspended), 1);
    assert_eq!(count_kind(&events, EventKind::InterruptResumed), 2);
}

#[tokio::test]
async fn fan_out_tasks_of_one_node_get_their_own_interrupts_and_values() {
    let (_store, engine) = memory_engine(EngineOptions::default());
    let g = StateGraph::<Lin>::new("fan", "1")
        .node("w", |_s: Lin, ctx: Context| async move {
            let i: i64 = ctx.input()?.expect("fan-out input");
            let v: String = ctx.interrupt(&json!({ "task": i })).await?;
            Ok(LinUpdate::default().log(vec![format!("w{i}:{v}")]))
        })
        .conditional_edge(START, ["w"], |_s: &Lin| {
            oris_runtime::Route::default()
                .send("w", &1)
                .send("w", &2)
                .send("w", &3)
        })
        .edge("w", END)
        .compile()
        .unwrap();
    let h = engine.register(g);
    let pending = paused(&h.start("fan", Lin::default()).await.unwrap());
    assert_eq!(pending.len(), 3);
    let mut ids: Vec<InterruptId> = pending.iter().map(|p| p.interrupt_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "identical ids in parallel tasks: {pending:?}");
    // Answer each task with a value derived from its own payload.
    let answers = pending.iter().map(|p| {
        let i = p.payload["task"].as_i64().unwrap();
        (p.interrupt_id, json!(format!("v{}", i * 10)))
    });
    let done = h.resume_many(answers).await.unwrap().expect_completed();
    assert_eq!(done.log, ["w1:v10", "w2:v20", "w3:v30"]);
}

#[tokio::test]
async fn resume_many_with_one_conflicting_answer_records_nothing() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(par(runs.clone()).compile().unwrap());
    let pending = paused(&h.start("par", Lin::default()).await.unwrap());
    let (p, q) = (pending[0].interrupt_id, pending[1].interrupt_id);
    // q is answered (and applied) with "2"; the run pauses on p.
    paused(&h.resume(q, "2").await.unwrap());
    // A batch answering p, and q with another value: q conflicts.
    let r = h.resume_many([(p, json!("1")), (q, json!("3"))]).await;
    assert!(
        matches!(r, Err(Error::ResumeConflict(id)) if id == q),
        "{r:?}"
    );
    // Expected: the failed call changed nothing, p is still unanswered and can be answered
    // with any value.
    assert!(
        engine.interrupt(p).await.unwrap().unwrap().answer.is_none(),
        "a failed resume_many left p answered (but not applied: the run stays paused)"
    );
    let done = h.resume(p, "9").await.unwrap().expect_completed();
    assert!(done.log.contains(&"p:9".to_owned()), "{:?}", done.log);
}

#[tokio::test]
async fn resume_many_across_threads_is_invalid_and_records_nothing() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(w3(runs.clone()).compile().unwrap());
    let a = paused(&h.start("ta", Lin::default()).await.unwrap())[0].interrupt_id;
    let b = paused(&h.start("tb", Lin::default()).await.unwrap())[0].interrupt_id;
    let r = h.resume_many([(a, json!("yes")), (b, json!("yes"))]).await;
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
    for id in [a, b] {
        assert!(
            engine
                .interrupt(id)
                .await
                .unwrap()
                .unwrap()
                .answer
                .is_none()
        );
    }
    assert!(matches!(
        h.resume_many(Vec::new()).await,
        Err(Error::InvalidInput(_))
    ));
}

// ---------------------------------------------------------------------------------------
// 5. Idempotency and errors

#[tokio::test]
async fn resume_is_idempotent_conflicts_on_another_value_and_knows_unknown_ids() {
    let (_store, engine, runs) = w3_engine(EngineOptions::default());
    let h = engine.register(w3(runs.clone()).compile().unwrap());
    let id = paused(&h.start("idem", Lin::default()).await.unwrap())[0].interrupt_id;
    let first = h.resume(id, "yes").await.unwrap();
    let RunOutcome::Completed { run_id, state } = &first else {
        panic!("{first:?}")
    };
    let names = ["a", "b", "charge", "b:after", "c"];
    let counted = counts(&runs, &names);
    let timeline = all_events(&engine, "idem").await;

    // The same value again: the same outcome, nothing executed, nothing written.
    for _ in 0..3 {
        let again = h.resume(id, "yes").await.unwrap();
        assert_eq!(again, first);
    }
    assert_eq!(counts(&runs, &names), counted);
    assert_eq!(all_events(&engine, "idem").await, timeline);

    // Another value: a conflict, nothing changes.
    assert_eq!(
        h.resume(id, "no").await.unwrap_err(),
        Error::ResumeConflict(id)
    );
    assert_eq!(counts(&runs, &names), counted);
    assert_eq!(all_events(&engine, "idem").await, timeline);
    let rec = engine.interrupt(id).await.unwrap().unwrap();
    assert_eq!(rec.answer.unwrap().0.json(), r#""yes""#);

    // Unknown id.
    let unknown = InterruptId::generate();
    assert_eq!(
        h.resume(unknown, "yes").await.unwrap_err(),
        Error::InterruptNotFound(unknown)
    );
    assert_eq!(
        h.resume_many([(id, json!("yes")), (unknown, json!("yes"))])
            .await
            .unwrap_err(),
        Error::InterruptNotFound(unknown)
    );
    assert_eq!(
        engine.latest_run(&tid("idem")).await.unwrap().run_id,
        *run_id
    );
    assert_eq!(state.log, ["a", "b:yes", "c"]);
}

#[tokio::test]
async fn resuming_an_interrupt_of_a_cancelled_run_is_not_pending() {
    let (_store, engine, runs) = w3_engine(EngineOptions::default());
    let h = engine.register(w3(runs.clone()).compile().unwrap());
    let id = paused(&h.start("cx", Lin::default()).await.unwrap())[0].interrupt_id;
    let run = engine.cancel(&tid("cx"), "operator").await.unwrap();
    assert_eq!(
        run.status,
        RunStatus::Cancelled {
            reason: "operator".into()
        }
    );
    let timeline = all_events(&engine, "cx").await;
    let e = h.resume(id, "yes").await.unwrap_err();
    assert_eq!(
        e,
        Error::InterruptNotPending {
            interrupt_id: id,
            status: "cancelled"
        }
    );
    assert_eq!(all_events(&engine, "cx").await, timeline);
    assert!(
        engine
            .interrupt(id)
            .await
            .unwrap()
            .unwrap()
            .answer
            .is_none()
    );
    assert_eq!(counts(&runs, &["b:after", "c"]), [0, 0]);
}

#[tokio::test]
async fn resuming_an_interrupt_of_a_failed_run_is_not_pending() {
    // p interrupts while q, in the same superstep, fails for good: the run fails.
    let (_store, engine) = memory_engine(EngineOptions::default());
    let q_gate = Arc::new(Semaphore::new(0));
    let g = StateGraph::<Lin>::new("pf", "1")
        .node("p", |_s: Lin, ctx: Context| async move {
            let v: String = ctx.interrupt("p?").await?;
            Ok(LinUpdate::default().log(vec![v]))
        })
        .node("q", {
            let q_gate = q_gate.clone();
            move |_s: Lin, _ctx: Context| {
                let q_gate = q_gate.clone();
                async move {
                    // Fail only after p's interrupt is recorded.
                    q_gate.acquire().await.expect("gate open").forget();
                    Err::<LinUpdate, _>(NodeError::permanent("q broke"))
                }
            }
        })
        .edge(START, "p")
        .edge(START, "q")
        .edge("p", END)
        .edge("q", END)
        .compile()
        .unwrap();
    let rec = Recorder::new();
    let engine = Engine::with_options(engine.store().clone(), rec.options());
    let h = engine.register(g);
    let run = {
        let h = h.clone();
        tokio::spawn(async move { h.start("pf", Lin::default()).await })
    };
    within(
        "p's interrupt to be recorded",
        rec.wait_until("pf", |c| {
            c.iter()
                .flat_map(|c| &c.events)
                .any(|e| e.body.kind() == EventKind::InterruptRaised)
        }),
    )
    .await;
    q_gate.add_permits(1);
    let out = within("the run to end", run).await.unwrap().unwrap();
    assert_eq!(out.failure().map(|f| f.message.as_str()), Some("q broke"));
    let id = engine.interrupts(&tid("pf")).await.unwrap()[0].interrupt_id;
    assert_eq!(
        h.resume(id, "yes").await.unwrap_err(),
        Error::InterruptNotPending {
            interrupt_id: id,
            status: "failed"
        }
    );
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Ab {
    a: i64,
    b: i64,
}

#[derive(serde::Serialize)]
struct Ba {
    b: i64,
    a: i64,
}

#[tokio::test]
async fn resume_values_are_compared_as_json_values() {
    let (_store, engine) = memory_engine(EngineOptions::default());
    let g = StateGraph::<Lin>::new("json", "1")
        .node("j", |_s: Lin, ctx: Context| async move {
            let v: Ab = ctx.interrupt("numbers?").await?;
            Ok(LinUpdate::default().log(vec![format!("{}+{}", v.a, v.b)]))
        })
        .edge(START, "j")
        .edge("j", END)
        .compile()
        .unwrap();
    let h = engine.register(g);
    let id = paused(&h.start("json", Lin::default()).await.unwrap())[0].interrupt_id;
    let first = h.resume(id, &Ab { a: 1, b: 2 }).await.unwrap();
    assert_eq!(first.state().unwrap().log, ["1+2"]);
    // The same value with the keys the other way round, and with other whitespace.
    assert_eq!(
        serde_json::to_string(&Ba { b: 2, a: 1 }).unwrap(),
        r#"{"b":2,"a":1}"#
    );
    assert_eq!(h.resume(id, &Ba { b: 2, a: 1 }).await.unwrap(), first);
    let spaced =
        serde_json::value::RawValue::from_string(r#"{ "b" : 2 ,  "a" : 1 }"#.into()).unwrap();
    assert_eq!(h.resume(id, &spaced).await.unwrap(), first);
    // A different value is a conflict.
    assert_eq!(
        h.resume(id, &Ab { a: 1, b: 3 }).await.unwrap_err(),
        Error::ResumeConflict(id)
    );
    assert_eq!(
        count_kind(
            &all_events(&engine, "json").await,
            EventKind::InterruptResumed
        ),
        1
    );
}

#[tokio::test]
async fn a_resume_value_that_does_not_serialize_is_invalid_and_records_nothing() {
    let (_store, engine, runs) = w3_engine(EngineOptions::default());
    let h = engine.register(w3(runs.clone()).compile().unwrap());
    let id = paused(&h.start("bad", Lin::default()).await.unwrap())[0].interrupt_id;
    let bad: std::collections::BTreeMap<(i32, i32), i32> = [((1, 2), 3)].into();
    assert!(matches!(
        h.resume(id, &bad).await,
        Err(Error::InvalidInput(_))
    ));
    assert!(
        engine
            .interrupt(id)
            .await
            .unwrap()
            .unwrap()
            .answer
            .is_none()
    );
    // It can still be answered.
    h.resume(id, "yes").await.unwrap().expect_completed();
}

#[tokio::test]
async fn resuming_through_another_graph_is_a_mismatch_and_records_nothing() {
    let (_store, engine, runs) = w3_engine(EngineOptions::default());
    let h = engine.register(w3(runs.clone()).compile().unwrap());
    let other = engine.register(par(Counters::new()).compile().unwrap());
    let id = paused(&h.start("gm", Lin::default()).await.unwrap())[0].interrupt_id;
    assert!(matches!(
        other.resume(id, "yes").await,
        Err(Error::GraphMismatch { .. })
    ));
    assert!(
        engine
            .interrupt(id)
            .await
            .unwrap()
            .unwrap()
            .answer
            .is_none()
    );
    h.resume(id, "no").await.unwrap().expect_completed();
}

// ---------------------------------------------------------------------------------------
// 6. Concurrent resumes

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_resumes_with_one_value_apply_it_once() {
    let (_store, engine, runs) = w3_engine(EngineOptions::default());
    let h = engine.register(w3(runs.clone()).compile().unwrap());
    let id = paused(&h.start("c16", Lin::default()).await.unwrap())[0].interrupt_id;
    let barrier = Arc::new(Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (h, barrier) = (h.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                h.resume(id, "yes").await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(within("a resume", t).await.unwrap().unwrap());
    }
    for o in &outcomes {
        assert_eq!(o, &outcomes[0]);
        assert_eq!(
            o.state().map(|s| s.log.clone()).unwrap(),
            ["a", "b:yes", "c"]
        );
    }
    assert_eq!(
        counts(&runs, &["a", "charge", "b:after", "c"]),
        [1, 1, 1, 1]
    );
    let events = all_events(&engine, "c16").await;
    assert_eq!(count_kind(&events, EventKind::InterruptResumed), 1);
    assert_eq!(count_kind(&events, EventKind::RunResumed), 1);
    assert_eq!(count_kind(&events, EventKind::RunCompleted), 1);
    assert_eq!(completions_in(&events, "b"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_resumes_with_different_values_apply_exactly_one() {
    let (_store, engine, runs) = w3_engine(EngineOptions::default());
    let h = engine.register(w3(runs.clone()).compile().unwrap());
    let id = paused(&h.start("d16", Lin::default()).await.unwrap())[0].interrupt_id;
    let barrier = Arc::new(Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (h, barrier) = (h.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                (i, h.resume(id, &format!("v{i}")).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        match within("a resume", t).await.unwrap() {
            (i, Ok(o)) => winners.push((i, o)),
            (_, Err(Error::ResumeConflict(c))) => assert_eq!(c, id),
            (i, Err(e)) => panic!("resume {i}: unexpected {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one value wins: {winners:?}");
    let (i, o) = &winners[0];
    let value = format!("v{i}");
    assert_eq!(
        o.state().unwrap().log,
        ["a".to_owned(), format!("b:{value}"), "c".to_owned()]
    );
    let events = all_events(&engine, "d16").await;
    assert_eq!(resumed_events(&events), [(id, json!(value))]);
    assert_eq!(count_kind(&events, EventKind::RunCompleted), 1);
    assert_eq!(counts(&runs, &["b:after", "c"]), [1, 1]);
}

// ---------------------------------------------------------------------------------------
// 7. A resume that arrives while the run is still suspending

/// Waits until the store holds an answer for `id` (the resume call recorded its value).
async fn answer_stored(store: &dyn Store, id: InterruptId) {
    while store
        .interrupt(id)
        .await
        .unwrap()
        .is_none_or(|r| r.answer.is_none())
    {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// How `B` of [`race`] behaves.
#[derive(Clone)]
enum BMode {
    /// Reports its start, then waits for a permit.
    Gate(Arc<Semaphore>, mpsc::UnboundedSender<()>),
    /// Blocks until dropped.
    Block(Blocker),
    /// Finishes at once.
    Free,
}

/// `START → {A, B} → END`: `A` interrupts with "a?" and logs `A:<value>`; `B` logs `B`
/// after behaving as `b` says. Counters: `A`, `A:after`, `B`.
fn race(runs: Arc<Counters>, b: BMode) -> StateGraph<Lin> {
    StateGraph::<Lin>::new("race", "1")
        .node("A", {
            let runs = runs.clone();
            move |_s: Lin, ctx: Context| {
                let runs = runs.clone();
                async move {
                    runs.hit("A");
                    let v: String = ctx.interrupt("a?").await?;
                    runs.hit("A:after");
                    Ok(LinUpdate::default().log(vec![format!("A:{v}")]))
                }
            }
        })
        .node("B", move |_s: Lin, _ctx: Context| {
            let runs = runs.clone();
            let b = b.clone();
            async move {
                runs.hit("B");
                match b {
                    BMode::Gate(gate, started) => {
                        let _ = started.send(());
                        gate.acquire().await.expect("gate open").forget();
                    }
                    BMode::Block(blocker) => blocker.block().await,
                    BMode::Free => {}
                }
                Ok(LinUpdate::default().log(vec!["B".to_owned()]))
            }
        })
        .edge(START, "A")
        .edge(START, "B")
        .edge("A", END)
        .edge("B", END)
}

/// Waits until a commit of `thread` carried an event of `kind`.
async fn committed(rec: &Recorder, thread: &str, kind: EventKind) {
    within(
        &format!("a {} commit", kind.as_str()),
        rec.wait_until(thread, |c| {
            c.iter()
                .flat_map(|c| &c.events)
                .any(|e| e.body.kind() == kind)
        }),
    )
    .await;
}

#[tokio::test]
async fn a_resume_that_arrives_while_the_run_is_still_running_is_not_lost() {
    let runs = Counters::new();
    let gate = Arc::new(Semaphore::new(0));
    let (b_started_tx, mut b_started) = mpsc::unbounded_channel::<()>();
    let g = race(runs.clone(), BMode::Gate(gate.clone(), b_started_tx))
        .compile()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let rec = Recorder::new();
    let engine = Engine::with_options(store.clone(), rec.options());
    let h = engine.register(g);

    let run = {
        let h = h.clone();
        tokio::spawn(async move { h.start("race", Lin::default()).await })
    };
    within("B to start", b_started.recv()).await.unwrap();
    within(
        "A's interrupt to be recorded",
        rec.wait_until("race", |c| {
            c.iter()
                .flat_map(|c| &c.events)
                .any(|e| e.body.kind() == EventKind::InterruptRaised)
        }),
    )
    .await;
    let id = engine.interrupts(&tid("race")).await.unwrap()[0].interrupt_id;
    // B still runs: the run is not suspended yet.
    assert_eq!(
        engine.latest_run(&tid("race")).await.unwrap().status,
        RunStatus::Running
    );

    let resume = {
        let h = h.clone();
        tokio::spawn(async move { h.resume(id, "go").await })
    };
    within("the resume value to be stored", answer_stored(&*store, id)).await;
    assert_eq!(counts(&runs, &["A", "A:after", "B"]), [1, 0, 1]);

    // Release B: the run goes on with the stored value, without another resume.
    gate.add_permits(1);
    let out = within("the run to end", run).await.unwrap().unwrap();
    let state = out.state().expect("the run completes").clone();
    assert_eq!(state.log, ["A:go", "B"]);
    let resumed = within("the resume call", resume).await.unwrap().unwrap();
    assert_eq!(resumed, out);
    assert_eq!(counts(&runs, &["A", "A:after", "B"]), [2, 1, 1]);
    let events = all_events(&engine, "race").await;
    assert_eq!(resumed_events(&events), [(id, json!("go"))]);
    assert_eq!(
        count_kind(&events, EventKind::RunSuspended),
        0,
        "the value arrived before the run suspended: it never had to"
    );
    assert_eq!(count_kind(&events, EventKind::RunCompleted), 1);
}

// ---------------------------------------------------------------------------------------
// 8. Reject

#[tokio::test]
async fn reject_cancels_the_run_and_only_a_pending_interrupt_can_be_rejected() {
    let (_store, engine, runs) = w3_engine(EngineOptions::default());
    let h = engine.register(w3(runs.clone()).compile().unwrap());
    let id = paused(&h.start("rj", Lin::default()).await.unwrap())[0].interrupt_id;
    let run = engine.reject(id, "no").await.unwrap();
    assert_eq!(
        run.status,
        RunStatus::Cancelled {
            reason: "no".into()
        }
    );
    assert_eq!(
        engine.latest_run(&tid("rj")).await.unwrap().status,
        run.status
    );
    let events = all_events(&engine, "rj").await;
    assert!(
        matches!(&events.last().unwrap().body, EventBody::RunCancelled { reason } if reason == "no")
    );
    assert_eq!(counts(&runs, &["b:after", "c"]), [0, 0]);

    // Again: not pending (its run is cancelled); resume too.
    assert_eq!(
        engine.reject(id, "no").await.unwrap_err(),
        Error::InterruptNotPending {
            interrupt_id: id,
            status: "cancelled"
        }
    );
    assert!(matches!(
        h.resume(id, "yes").await,
        Err(Error::InterruptNotPending { .. })
    ));
    assert_eq!(all_events(&engine, "rj").await, events);

    // A resumed interrupt cannot be rejected; the completed run stays completed.
    let id2 = paused(&h.start("rj2", Lin::default()).await.unwrap())[0].interrupt_id;
    h.resume(id2, "yes").await.unwrap().expect_completed();
    assert_eq!(
        engine.reject(id2, "late").await.unwrap_err(),
        Error::InterruptNotPending {
            interrupt_id: id2,
            status: "resumed"
        }
    );
    assert_eq!(
        engine.latest_run(&tid("rj2")).await.unwrap().status.kind(),
        StatusKind::Completed
    );

    let unknown = InterruptId::generate();
    assert_eq!(
        engine.reject(unknown, "x").await.unwrap_err(),
        Error::InterruptNotFound(unknown)
    );
}

#[tokio::test]
async fn rejecting_the_answered_one_of_two_parallel_interrupts_is_refused() {
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(par(runs.clone()).compile().unwrap());
    let pending = paused(&h.start("rp", Lin::default()).await.unwrap());
    let (p, q) = (pending[0].interrupt_id, pending[1].interrupt_id);
    paused(&h.resume(p, "1").await.unwrap());
    assert!(matches!(
        engine.reject(p, "no").await,
        Err(Error::InterruptNotPending {
            status: "resumed",
            ..
        })
    ));
    assert_eq!(
        engine.latest_run(&tid("rp")).await.unwrap().status.kind(),
        StatusKind::Interrupted
    );
    let run = engine.reject(q, "stop").await.unwrap();
    assert_eq!(
        run.status,
        RunStatus::Cancelled {
            reason: "stop".into()
        }
    );
    assert_eq!(runs.count("r"), 0);
}

// ---------------------------------------------------------------------------------------
// 13. Crash while paused

#[tokio::test]
async fn a_new_engine_resumes_a_run_paused_by_another() {
    let store = Arc::new(MemoryStore::new());
    let runs = Counters::new();
    let id = {
        let first = Engine::new(store.clone());
        let h = first.register(w3(runs.clone()).compile().unwrap());
        paused(&h.start("crash", Lin::default()).await.unwrap())[0].interrupt_id
        // The first engine is dropped here: the "process" is gone.
    };
    let second = Engine::new(store.clone());
    let h = second.register(w3(runs.clone()).compile().unwrap());
    let done = h.resume(id, "yes").await.unwrap().expect_completed();
    assert_eq!(done.log, ["a", "b:yes", "c"]);
    assert_eq!(
        counts(&runs, &["a", "b", "charge", "b:after", "c"]),
        [1, 2, 1, 1, 1]
    );
    assert!(h.verify("crash").await.unwrap().is_consistent());
}

#[tokio::test]
async fn recover_continues_a_run_whose_resume_value_was_stored_before_a_crash() {
    let store = Arc::new(MemoryStore::new());
    let runs = Counters::new();
    let out = {
        let first = Engine::new(store.clone());
        let h = first.register(w3(runs.clone()).compile().unwrap());
        h.start("crash", Lin::default()).await.unwrap()
    };
    let id = paused(&out)[0].interrupt_id;
    let t = tid("crash");

    // Recovery without a value: the run stays paused, nothing runs, nothing is written.
    let before = store.events(&t, Seq::ZERO, usize::MAX).await.unwrap();
    let idle = Engine::new(store.clone());
    idle.register(w3(runs.clone()).compile().unwrap());
    let report = idle.recover().await.unwrap();
    assert_eq!(
        report.resumed,
        [(t.clone(), out.run_id(), StatusKind::Interrupted)]
    );
    let idle_h = idle.register(w3(runs.clone()).compile().unwrap());
    assert_eq!(
        paused(&idle_h.recover_thread("crash").await.unwrap()),
        paused(&out),
        "recovering a paused run reports what it waits on"
    );
    assert_eq!(
        store.events(&t, Seq::ZERO, usize::MAX).await.unwrap(),
        before
    );
    assert_eq!(counts(&runs, &["a", "b"]), [1, 1]);

    // "Crash" right after the value was stored, before the run continued.
    let (answer, _) = store
        .answer_interrupt(id, Payload::encode("yes").unwrap(), Timestamp::now())
        .await
        .unwrap();
    assert_eq!(answer, Answer::Recorded);
    assert_eq!(
        store
            .run(out.run_id())
            .await
            .unwrap()
            .unwrap()
            .status
            .kind(),
        StatusKind::Interrupted
    );

    let third = Engine::new(store.clone());
    let h = third.register(w3(runs.clone()).compile().unwrap());
    let report = third.recover().await.unwrap();
    assert_eq!(
        report.resumed,
        [(t.clone(), out.run_id(), StatusKind::Completed)]
    );
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(
        h.state("crash").await.unwrap().values.log,
        ["a", "b:yes", "c"]
    );
    assert_eq!(
        counts(&runs, &["a", "b", "charge", "b:after", "c"]),
        [1, 2, 1, 1, 1]
    );
    let events = store.events(&t, Seq::ZERO, usize::MAX).await.unwrap();
    assert_eq!(resumed_events(&events), [(id, json!("yes"))]);

    // The caller's retry of the resume (same value) gets the outcome; another is a conflict.
    assert_eq!(
        h.resume(id, "yes").await.unwrap().state().unwrap().log,
        ["a", "b:yes", "c"]
    );
    assert_eq!(
        h.resume(id, "no").await.unwrap_err(),
        Error::ResumeConflict(id)
    );
}

// ---------------------------------------------------------------------------------------
// 14. Replay consistency

#[tokio::test]
async fn verify_is_consistent_and_snapshots_do_not_change_the_state_after_interrupts() {
    let options = EngineOptions {
        snapshot_every: 1,
        ..EngineOptions::default()
    };
    let (store, engine, runs) = w3_engine(options);
    let h = engine.register(w3(runs.clone()).compile().unwrap());
    let p = engine.register(par(Counters::new()).compile().unwrap());
    let t = tid("vfy");

    for (cycle, value) in ["yes", "no"].into_iter().enumerate() {
        let id = paused(&h.start("vfy", Lin::default()).await.unwrap())[0].interrupt_id;
        // Paused: the snapshot-based state and the full replay agree.
        let v = h.verify("vfy").await.unwrap();
        assert!(v.is_consistent(), "cycle {cycle} paused: {v:?}");
        assert_eq!(v.current_hash, hash(&h.state("vfy").await.unwrap().values));
        h.resume(id, value).await.unwrap().expect_completed();
    }
    let state = h.state("vfy").await.unwrap().values;
    assert_eq!(state.log, ["a", "b:yes", "c", "a", "b:no", "c"]);
    let v = h.verify("vfy").await.unwrap();
    assert!(v.is_consistent(), "{v:?}");
    assert_eq!(v.replayed_hash, hash(&state));
    assert_eq!(store.delete_snapshots(&t).await.unwrap(), 1);
    assert_eq!(hash(&h.state("vfy").await.unwrap().values), hash(&state));
    assert!(h.verify("vfy").await.unwrap().is_consistent());

    // Parallel interrupts answered one at a time, snapshots deleted mid-way.
    let pending = paused(&p.start("vfy-par", Lin::default()).await.unwrap());
    paused(&p.resume(pending[0].interrupt_id, "1").await.unwrap());
    assert!(p.verify("vfy-par").await.unwrap().is_consistent());
    store.delete_snapshots(&tid("vfy-par")).await.unwrap();
    let done = p
        .resume(pending[1].interrupt_id, "2")
        .await
        .unwrap()
        .expect_completed();
    let v = p.verify("vfy-par").await.unwrap();
    assert!(v.is_consistent(), "{v:?}");
    assert_eq!(v.replayed_hash, hash(&done));
    store.delete_snapshots(&tid("vfy-par")).await.unwrap();
    assert_eq!(hash(&p.state("vfy-par").await.unwrap().values), hash(&done));
}

// ---------------------------------------------------------------------------------------
// Crash windows around a resume (in process: the task driving the run is aborted, a new
// engine on the same store takes over).

#[tokio::test]
async fn a_crash_after_the_resume_was_applied_but_before_the_node_finished_recovers_once() {
    let store = Arc::new(MemoryStore::new());
    let runs = Counters::new();
    let rec = Recorder::new();
    let first = Engine::with_options(store.clone(), rec.options());
    let (blk, mut probe) = blocker();
    let dropped = probe.arm();
    let h1 = first.register(w3_with(runs.clone(), Some(blk)).compile().unwrap());
    let out = h1.start("cr", Lin::default()).await.unwrap();
    let id = paused(&out)[0].interrupt_id;
    let task = {
        let h1 = h1.clone();
        tokio::spawn(async move { h1.resume(id, "yes").await })
    };
    probe.started().await; // b is past its interrupt: the value was applied.
    committed(&rec, "cr", EventKind::RunResumed).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    within("b to be dropped", dropped).await.unwrap();
    assert_eq!(
        store.run(out.run_id()).await.unwrap().unwrap().status,
        RunStatus::Running
    );

    let second = Engine::new(store.clone());
    let h2 = second.register(w3(runs.clone()).compile().unwrap());
    let report = second.recover().await.unwrap();
    assert_eq!(
        report.resumed,
        [(tid("cr"), out.run_id(), StatusKind::Completed)]
    );
    assert_eq!(
        h2.state("cr").await.unwrap().values.log,
        ["a", "b:yes", "c"]
    );
    // a and the step are not re-run; the code after the interrupt (not a step) ran in both
    // processes: b re-executes from its first line, its interrupt returns the recorded value.
    assert_eq!(
        counts(&runs, &["a", "b", "charge", "b:after", "c"]),
        [1, 3, 1, 2, 1]
    );
    let events = store
        .events(&tid("cr"), Seq::ZERO, usize::MAX)
        .await
        .unwrap();
    assert_eq!(resumed_events(&events), [(id, json!("yes"))]);
    assert_eq!(count_kind(&events, EventKind::RunResumed), 1);
    // The caller retries its resume: the same outcome.
    assert_eq!(
        h2.resume(id, "yes").await.unwrap().state().unwrap().log,
        ["a", "b:yes", "c"]
    );
}

#[tokio::test]
async fn a_crash_while_suspending_keeps_the_resume_value_that_had_arrived() {
    let mem = Arc::new(MemoryStore::new());
    let runs = Counters::new();
    let rec = Recorder::new();
    let first = Engine::with_options(mem.clone(), rec.options());
    let (blk, mut probe) = blocker();
    let dropped = probe.arm();
    let h1 = first.register(race(runs.clone(), BMode::Block(blk)).compile().unwrap());
    let run = {
        let h1 = h1.clone();
        tokio::spawn(async move { h1.start("cw", Lin::default()).await })
    };
    probe.started().await;
    committed(&rec, "cw", EventKind::InterruptRaised).await;
    let id = first.interrupts(&tid("cw")).await.unwrap()[0].interrupt_id;
    let resume = {
        let h1 = h1.clone();
        tokio::spawn(async move { h1.resume(id, "go").await })
    };
    within("the value to be stored", answer_stored(&*mem, id)).await;
    // The process dies: the run never suspended, B never finished.
    run.abort();
    resume.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    assert!(resume.await.unwrap_err().is_cancelled());
    within("B to be dropped", dropped).await.unwrap();
    let run_id = first.latest_run(&tid("cw")).await.unwrap().run_id;
    drop(first);

    let second = Engine::new(mem.clone());
    let h2 = second.register(race(runs.clone(), BMode::Free).compile().unwrap());
    let report = second.recover().await.unwrap();
    assert_eq!(report.resumed, [(tid("cw"), run_id, StatusKind::Completed)]);
    assert_eq!(h2.state("cw").await.unwrap().values.log, ["A:go", "B"]);
    assert_eq!(counts(&runs, &["A", "A:after", "B"]), [2, 1, 2]);
    let events = mem.events(&tid("cw"), Seq::ZERO, usize::MAX).await.unwrap();
    assert_eq!(resumed_events(&events), [(id, json!("go"))]);
    assert_eq!(count_kind(&events, EventKind::RunCompleted), 1);
}

#[tokio::test]
async fn a_crash_after_an_interrupt_was_recorded_suspends_on_recovery() {
    // The interrupt is durable, the run is still `running` (B was in flight): recovery
    // re-runs B, then suspends on A's interrupt, which can then be resumed.
    let mem = Arc::new(MemoryStore::new());
    let runs = Counters::new();
    let rec = Recorder::new();
    let first = Engine::with_options(mem.clone(), rec.options());
    let (blk, mut probe) = blocker();
    let dropped = probe.arm();
    let h1 = first.register(race(runs.clone(), BMode::Block(blk)).compile().unwrap());
    let run = {
        let h1 = h1.clone();
        tokio::spawn(async move { h1.start("ci", Lin::default()).await })
    };
    probe.started().await;
    committed(&rec, "ci", EventKind::InterruptRaised).await;
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    within("B to be dropped", dropped).await.unwrap();
    let id = first.interrupts(&tid("ci")).await.unwrap()[0].interrupt_id;
    drop(first);

    let second = Engine::new(mem.clone());
    let h2 = second.register(race(runs.clone(), BMode::Free).compile().unwrap());
    let report = second.recover().await.unwrap();
    assert_eq!(report.resumed.len(), 1);
    assert_eq!(report.resumed[0].2, StatusKind::Interrupted);
    let status = second.latest_run(&tid("ci")).await.unwrap().status;
    let RunStatus::Interrupted { interrupts } = status else {
        panic!("{status:?}")
    };
    assert_eq!(interrupts.len(), 1);
    assert_eq!(
        interrupts[0].interrupt_id, id,
        "the recorded interrupt keeps its id"
    );
    assert_eq!(
        counts(&runs, &["A", "B"]),
        [1, 2],
        "A is not re-run while it waits"
    );
    let done = h2.resume(id, "go").await.unwrap().expect_completed();
    assert_eq!(done.log, ["A:go", "B"]);
    assert_eq!(counts(&runs, &["A", "A:after", "B"]), [2, 1, 2]);
}

// ---------------------------------------------------------------------------------------
// Concurrent answers to the two interrupts of one paused superstep.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_answers_to_parallel_interrupts_complete_the_run_once() {
    const ROUNDS: usize = 20;
    let runs = Counters::new();
    let (_store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(par(runs.clone()).compile().unwrap());
    for i in 0..ROUNDS {
        let thread = format!("pq-{i}");
        let pending = paused(&h.start(&thread, Lin::default()).await.unwrap());
        let barrier = Arc::new(Barrier::new(2));
        let tasks: Vec<_> = pending
            .iter()
            .map(|p| {
                let (h, barrier) = (h.clone(), barrier.clone());
                let (id, node) = (p.interrupt_id, p.node.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    h.resume(id, &format!("{node}-v")).await
                })
            })
            .collect();
        let mut completed = 0;
        for t in tasks {
            match within("a resume", t).await.unwrap().unwrap() {
                RunOutcome::Completed { state, .. } => {
                    assert_eq!(state.log, ["p:p-v", "q:q-v", "r"]);
                    completed += 1;
                }
                // The caller that drove first may see the other answer arrive too late.
                RunOutcome::Interrupted { interrupts, .. } => assert_eq!(interrupts.len(), 1),
                other => panic!("{other:?}"),
            }
        }
        assert!(completed >= 1, "round {i}: nobody saw the run complete");
        let events = all_events(&engine, &thread).await;
        assert_eq!(
            count_kind(&events, EventKind::InterruptResumed),
            2,
            "round {i}"
        );
        assert_eq!(count_kind(&events, EventKind::RunCompleted), 1, "round {i}");
        assert_eq!(
            engine
                .latest_run(&tid(&thread))
                .await
                .unwrap()
                .status
                .kind(),
            StatusKind::Completed,
            "round {i}"
        );
    }
    assert_eq!(
        counts(&runs, &["p:after", "q:after", "r"]),
        [ROUNDS, ROUNDS, ROUNDS]
    );
}

#[tokio::test]
async fn a_resume_value_of_the_wrong_shape_fails_the_run_naming_node_and_position() {
    let (_store, engine) = memory_engine(EngineOptions::default());
    let g = StateGraph::<Lin>::new("shape", "1")
        .node("j", |_s: Lin, ctx: Context| async move {
            let v: String = ctx.interrupt("text?").await?;
            Ok(LinUpdate::default().log(vec![v]))
        })
        .edge(START, "j")
        .edge("j", END)
        .compile()
        .unwrap();
    let h = engine.register(g);
    let id = paused(&h.start("shape", Lin::default()).await.unwrap())[0].interrupt_id;
    // The engine cannot know the type the node expects: the value is recorded and the node
    // fails when it reads it.
    let out = h.resume(id, &42).await.unwrap();
    let f = out.failure().expect("the run fails");
    assert_eq!(f.node.as_deref(), Some("j"));
    assert!(
        f.message.contains("`j`") && f.message.contains("#0"),
        "{}",
        f.message
    );
}

#[tokio::test]
async fn exit_durability_writes_the_pause_and_a_new_engine_resumes_it() {
    let store = Arc::new(MemoryStore::new());
    let runs = Counters::new();
    let options = oris_runtime::RunOptions {
        durability: Some(oris_core::event::Durability::Exit),
        ..Default::default()
    };
    let out = {
        let first = Engine::new(store.clone());
        let h = first.register(w3(runs.clone()).compile().unwrap());
        h.start_with("exit", Lin::default(), options).await.unwrap()
    };
    let id = paused(&out)[0].interrupt_id;
    // The pause is durable: the interrupt, the step before it and a's completion.
    let events = store
        .events(&tid("exit"), Seq::ZERO, usize::MAX)
        .await
        .unwrap();
    assert_eq!(count_kind(&events, EventKind::InterruptRaised), 1);
    assert_eq!(count_kind(&events, EventKind::StepRecorded), 1);
    assert_eq!(count_kind(&events, EventKind::RunSuspended), 1);

    let second = Engine::new(store.clone());
    let h = second.register(w3(runs.clone()).compile().unwrap());
    let done = h.resume(id, "yes").await.unwrap().expect_completed();
    assert_eq!(done.log, ["a", "b:yes", "c"]);
    assert_eq!(
        counts(&runs, &["a", "charge", "b:after", "c"]),
        [1, 1, 1, 1]
    );
    assert!(h.verify("exit").await.unwrap().is_consistent());
    assert_eq!(
        h.resume(id, "yes").await.unwrap(),
        RunOutcome::Completed {
            run_id: out.run_id(),
            state: done,
        }
    );
}

/// Polls `fut` to completion on the current task, counting its polls.
async fn count_polls<F: std::future::Future>(fut: F) -> (F::Output, usize) {
    let mut fut = std::pin::pin!(fut);
    let mut polls = 0;
    let out = std::future::poll_fn(|cx| {
        polls += 1;
        fut.as_mut().poll(cx)
    })
    .await;
    (out, polls)
}

/// A node's record request (its step, its interrupt) is served in the same poll of the
/// driver: on a store that answers at once, a W3 cycle never returns `Pending` to the
/// runtime. (It did once: the driver looked for requests before polling the node that sends
/// them, so each request cost a trip through the scheduler — on a multi-thread runtime a
/// wake-up of another worker, and with a blocking store a hand-off of the worker's core.)
#[tokio::test]
async fn a_cycle_on_an_immediate_store_never_yields_to_the_runtime() {
    let (_store, engine, runs) = w3_engine(EngineOptions::default());
    let h = engine.register(w3(runs.clone()).compile().unwrap());
    let (out, polls) = count_polls(h.start("polls", Lin::default())).await;
    let id = paused(&out.unwrap())[0].interrupt_id;
    assert_eq!(polls, 1, "start of a run that steps, then interrupts");
    let (done, polls) = count_polls(h.resume(id, "yes")).await;
    assert_eq!(done.unwrap().expect_completed().log, ["a", "b:yes", "c"]);
    assert_eq!(polls, 1, "resume");
}
