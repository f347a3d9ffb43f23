//! Replay, fork, update_state and history on memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use oris_core::graph::{END, START};
use oris_core::store::MemoryStore;
use oris_runtime::{Engine, Error, NodeError, ReplayOptions, StateGraph};

#[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, oris_derive::State)]
#[oris(crate = "::oris_core")]
struct Doc {
    #[reducer(append)]
    log: Vec<String>,
}

#[tokio::test]
async fn replay_reuses_recorded_steps_and_fork_is_independent() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let g = StateGraph::<Doc>::new("tt", "1")
        .node("a", |_s: Doc, _ctx| async {
            Ok::<_, NodeError>(DocUpdate::default().log(vec!["a".into()]))
        })
        .node("b", move |_s: Doc, ctx| {
            let c2 = c2.clone();
            async move {
                let n: usize = ctx
                    .step("call", async move { Ok(c2.fetch_add(1, Ordering::SeqCst)) })
                    .await?;
                Ok(DocUpdate::default().log(vec![format!("b{n}")]))
            }
        })
        .edge(START, "a")
        .edge("a", "b")
        .edge("b", END)
        .compile()
        .unwrap();
    let engine = Engine::new(Arc::new(MemoryStore::new()));
    let h = engine.register(g);
    let first = h
        .start("t", Doc::default())
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(first.log, ["a", "b0"]);
    let history = h.history("t", 0, None).await.unwrap();
    assert_eq!(history.len(), 3, "{history:?}");
    assert!(history[0].id > history[2].id, "newest first");
    let after_a = history[1].id;

    // Replay from after `a`: b runs again but its step returns the recorded result.
    let replayed = h
        .replay("t", after_a, ReplayOptions::default())
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(replayed.log, ["a", "b0"]);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "step body not executed again"
    );

    // Replay asking for re-execution runs the body.
    let again = h
        .replay(
            "t",
            after_a,
            ReplayOptions {
                reexecute_steps: true,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(again.log, ["a", "b1"]);

    // Fork into a new thread: independent, same starting point.
    let forked = h
        .fork("t", after_a, "t-fork", ReplayOptions::default())
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(forked.log, ["a", "b0"]);
    assert!(matches!(
        h.fork("t", after_a, "t-fork", ReplayOptions::default())
            .await,
        Err(Error::ThreadExists(_))
    ));
    // Edit the fork's state as node `a`.
    let edited = h
        .update_state("t-fork", DocUpdate::default().log(vec!["edit".into()]), "a")
        .await
        .unwrap();
    assert_eq!(edited.values.log, ["a", "b0", "edit"]);
    assert_eq!(h.state("t").await.unwrap().values.log, ["a", "b1"]);
    assert!(h.verify("t").await.unwrap().is_consistent());
    assert!(h.verify("t-fork").await.unwrap().is_consistent());
}

#[tokio::test]
async fn goto_overrides_the_nodes_edges() {
    let g = StateGraph::<Doc>::new("goto", "1")
        .node("a", |s: Doc, ctx| async move {
            if s.log.is_empty() {
                ctx.goto(["c"]).await?;
            }
            Ok::<_, NodeError>(DocUpdate::default().log(vec!["a".into()]))
        })
        .node("b", |_s: Doc, _ctx| async {
            Ok::<_, NodeError>(DocUpdate::default().log(vec!["b".into()]))
        })
        .node("c", |_s: Doc, _ctx| async {
            Ok::<_, NodeError>(DocUpdate::default().log(vec!["c".into()]))
        })
        .edge(START, "a")
        .edge("a", "b")
        .goto_targets("a", ["c"])
        .edge("b", END)
        .edge("c", END)
        .compile()
        .unwrap();
    let engine = Engine::new(Arc::new(MemoryStore::new()));
    let h = engine.register(g);
    let out = h
        .start("g", Doc::default())
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(out.log, ["a", "c"]);
    // Second run: the log is not empty, so `a` follows its edge to `b`.
    let out = h
        .start("g", Doc::default())
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(out.log, ["a", "c", "a", "b"]);
}

#[tokio::test]
async fn prune_keeps_the_state_and_delete_removes_the_thread() {
    let g = StateGraph::<Doc>::new("prune", "1")
        .node("a", |_s: Doc, _ctx| async {
            Ok::<_, NodeError>(DocUpdate::default().log(vec!["a".into()]))
        })
        .node("b", |_s: Doc, _ctx| async {
            Ok::<_, NodeError>(DocUpdate::default().log(vec!["b".into()]))
        })
        .edge(START, "a")
        .edge("a", "b")
        .edge("b", END)
        .compile()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::new(store.clone());
    let h = engine.register(g);
    for _ in 0..3 {
        h.start("p", Doc::default())
            .await
            .unwrap()
            .expect_completed();
    }
    let before = h.state("p").await.unwrap().values.log;
    let oldest = h.history("p", 0, None).await.unwrap().last().unwrap().id;
    let (at, deleted) = h.prune("p").await.unwrap().expect("something to prune");
    assert!(deleted > 0);
    assert_eq!(h.state("p").await.unwrap().values.log, before);
    let v = h.verify("p").await.unwrap();
    assert!(v.is_consistent(), "{v:?}");
    assert_eq!(
        h.history("p", 0, None).await.unwrap().last().unwrap().id,
        at
    );
    assert!(matches!(
        h.state_at("p", oldest).await,
        Err(Error::CheckpointNotFound { .. })
    ));
    // Nothing left to prune; a new run continues the pruned thread.
    assert_eq!(h.prune("p").await.unwrap(), None);
    let out = h
        .start("p", Doc::default())
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(out.log.len(), before.len() + 2);
    assert!(h.verify("p").await.unwrap().is_consistent());

    let t = oris_core::id::ThreadId::new("p").unwrap();
    engine.delete_thread(&t).await.unwrap();
    assert!(matches!(h.state("p").await, Err(Error::ThreadNotFound(_))));
    let fresh = h
        .start("p", Doc::default())
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(fresh.log, ["a", "b"]);
}
