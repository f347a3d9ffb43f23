//! `verify` finds an event changed behind the engine's back in the SQLite file.

use oris::{END, Engine, NodeError, START, State, StateGraph};

#[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, State)]
struct Doc {
    #[reducer(append)]
    log: Vec<String>,
}

#[tokio::test]
async fn verify_detects_a_tampered_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oris.db");
    let url = format!("sqlite://{}", path.display());
    let graph = || {
        StateGraph::<Doc>::new("tamper", "1")
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
            .unwrap()
    };
    {
        let engine = Engine::new(oris::open_store(&url).await.unwrap());
        let h = engine.register(graph());
        h.start("t", Doc::default())
            .await
            .unwrap()
            .expect_completed();
        assert!(h.verify("t").await.unwrap().is_consistent());
    }
    // Rewrite node `a`'s recorded update in the file.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let changed = conn
            .execute(
                "UPDATE events SET data = '{\"log\":[\"forged\"]}' WHERE node = 'a'",
                [],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    let engine = Engine::new(oris::open_store(&url).await.unwrap());
    let h = engine.register(graph());
    let v = h.verify("t").await.unwrap();
    assert!(!v.is_consistent(), "{v:?}");
    let m = v.mismatch.expect("a mismatch is reported");
    assert!(m.contains("does not match the log"), "{m}");
}
