//! The W3 shape end to end on memory: interrupt, resume, steps not re-run.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use oris_core::graph::{END, START};
use oris_core::store::MemoryStore;
use oris_runtime::{Engine, NodeError, RunOutcome, StateGraph};

#[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, oris_derive::State)]
#[oris(crate = "::oris_core")]
struct W3 {
    #[reducer(append)]
    log: Vec<String>,
}

#[tokio::test]
async fn interrupt_then_resume_runs_a_once_and_steps_once() {
    let a_runs = Arc::new(AtomicUsize::new(0));
    let step_runs = Arc::new(AtomicUsize::new(0));
    let (a2, s2) = (a_runs.clone(), step_runs.clone());
    let g = StateGraph::<W3>::new("w3", "1")
        .node("a", move |_s: W3, _ctx| {
            a2.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, NodeError>(W3Update::default().log(vec!["a".into()])) }
        })
        .node("b", move |_s: W3, ctx| {
            let s2 = s2.clone();
            async move {
                let charged: String = ctx
                    .step("charge", async move {
                        s2.fetch_add(1, Ordering::SeqCst);
                        Ok("ch_1".to_owned())
                    })
                    .await?;
                let v: String = ctx.interrupt("approve?").await?;
                Ok(W3Update::default().log(vec![format!("b:{v}:{charged}")]))
            }
        })
        .node("c", |_s: W3, _ctx| async {
            Ok(W3Update::default().log(vec!["c".into()]))
        })
        .edge(START, "a")
        .edge("a", "b")
        .edge("b", "c")
        .edge("c", END)
        .compile()
        .unwrap();
    let engine = Engine::new(Arc::new(MemoryStore::new()));
    let h = engine.register(g);
    let out = h.start("t", W3::default()).await.unwrap();
    let RunOutcome::Interrupted { interrupts, .. } = &out else {
        panic!("expected an interrupt, got {out:?}")
    };
    assert_eq!(interrupts.len(), 1);
    assert_eq!(interrupts[0].payload, serde_json::json!("approve?"));
    assert_eq!(h.state("t").await.unwrap().values.log, ["a"]);
    let id = interrupts[0].interrupt_id;
    let done = h.resume(id, "yes").await.unwrap().expect_completed();
    assert_eq!(done.log, ["a", "b:yes:ch_1", "c"]);
    assert_eq!(a_runs.load(Ordering::SeqCst), 1);
    assert_eq!(step_runs.load(Ordering::SeqCst), 1);
    // Same value again: same outcome, nothing re-applied.
    let again = h.resume(id, "yes").await.unwrap().expect_completed();
    assert_eq!(again.log, done.log);
    // Different value: conflict.
    assert!(matches!(
        h.resume(id, "no").await,
        Err(oris_runtime::Error::ResumeConflict(_))
    ));
    assert!(h.verify("t").await.unwrap().is_consistent());
}

/// The bench's W3 cycle (library mode, a new thread each cycle) makes only the store calls
/// it needs: the start reads the thread once and commits; the resume reads the interrupt
/// once, records the answer and reads nothing else before it commits.
#[tokio::test]
async fn a_w3_cycle_makes_few_store_calls() {
    use oris_testkit::counting::CountingStore;
    let store = Arc::new(CountingStore::new(Arc::new(MemoryStore::new())));
    let g = StateGraph::<W3>::new("w3", "1")
        .node("a", |_s: W3, _ctx| async {
            Ok::<_, NodeError>(W3Update::default().log(vec!["a".into()]))
        })
        .node("b", |_s: W3, ctx| async move {
            let v: String = ctx.interrupt("approve?").await?;
            Ok(W3Update::default().log(vec![format!("b:{v}")]))
        })
        .node("c", |_s: W3, _ctx| async {
            Ok(W3Update::default().log(vec!["c".into()]))
        })
        .edge(START, "a")
        .edge("a", "b")
        .edge("b", "c")
        .edge("c", END)
        .compile()
        .unwrap();
    let engine = Engine::new(store.clone());
    let h = engine.register(g);
    // A warm-up cycle, then the measured one (as in the bench, a new thread each cycle).
    for t in ["warm", "measured"] {
        let before = store.calls();
        let out = h.start(t, W3::default()).await.unwrap();
        let RunOutcome::Interrupted { interrupts, .. } = &out else {
            panic!("expected an interrupt, got {out:?}")
        };
        let started = store.since(&before);
        let before = store.calls();
        let done = h
            .resume(interrupts[0].interrupt_id, "yes")
            .await
            .unwrap()
            .expect_completed();
        assert_eq!(done.log, ["a", "b:yes", "c"]);
        let resumed = store.since(&before);
        // The start reads whether the thread exists and, before suspending, whether an
        // answer already arrived; it commits the run's start, a, the interrupt and the
        // suspension.
        assert_eq!(
            started,
            BTreeMap::from([("commit", 4), ("interrupt", 1), ("thread", 1)]),
            "{t}"
        );
        // The resume reads the interrupt and its thread once each, records the answer,
        // folds the short log in one read (no snapshot lookup) and does not read the
        // interrupt back for the value it has just recorded; then it commits the resumption,
        // b and c.
        assert_eq!(
            resumed,
            BTreeMap::from([
                ("answer_interrupt", 1),
                ("commit", 3),
                ("events", 1),
                ("interrupt", 1),
                ("thread", 1),
            ]),
            "{t}"
        );
    }
}
