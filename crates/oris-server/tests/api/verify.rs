//! `GET /v1/jobs/{thread_id}/verify`: a consistent thread, a thread whose stored snapshot
//! was corrupted behind the engine's back, an unknown thread, a missing graph version.

use oris_core::event::{Durability, Payload};
use oris_core::id::{Seq, ThreadId, Timestamp};
use oris_core::store::{Commit, Snapshot};
use oris_server::{Auth, Server};
use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_consistency_and_a_corrupted_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let counts = Counts::new();
    let mut h = Harness::start(
        store.clone(),
        Server::builder()
            .auth(Auth::Disabled)
            .graph(approval("1", counts.clone())),
    )
    .await;
    let r = h
        .post(
            "/v1/jobs",
            json!({ "graph": "approval", "thread_id": "vfy", "input": { "n": 5 } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job = h.settle("vfy").await;
    assert_eq!(job["status"], "interrupted");

    let tid = ThreadId::new("vfy").unwrap();
    let head = store.thread(&tid).await.unwrap().unwrap().head;
    let r = h.get("/v1/jobs/vfy/verify").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["thread_id"], "vfy");
    assert_eq!(r.body["graph"], "approval");
    assert_eq!(r.body["graph_version"], "1");
    assert_eq!(r.body["head"], head.0);
    assert_eq!(r.body["consistent"], true, "{}", r.text);
    assert!(r.body["mismatch"].is_null(), "{}", r.text);
    let hash = r.body["replayed_hash"].as_str().unwrap().to_owned();
    assert!(!hash.is_empty());
    assert_eq!(r.body["current_hash"], hash.as_str());

    // Store a checkpoint state (a snapshot) the log never had: a commit of no events
    // carrying a snapshot at the latest checkpoint with an altered state, written as the
    // thread's (interrupted, still active) run — what a bug in a snapshot writer, or a
    // damaged row, would leave.
    let history = h.get("/v1/jobs/vfy/history").await;
    let last = history.body["checkpoints"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let at: u64 = last["checkpoint_id"].as_str().unwrap()["ckpt_".len()..]
        .parse()
        .unwrap();
    let event = store.events(&tid, Seq(at - 1), 1).await.unwrap().remove(0);
    assert_eq!(event.seq, Seq(at));
    let state_at: serde_json::Value = h
        .get(&format!("/v1/jobs/vfy/checkpoints/ckpt_{at}"))
        .await
        .body["values"]
        .clone();
    let mut state: Doc = serde_json::from_value(state_at).unwrap();
    assert_eq!(state.n, 6, "draft incremented the input");
    state.n = 999;
    let snap = Snapshot {
        at_seq: Seq(at),
        run_id: event.run_id,
        next_superstep: last["superstep"].as_u64().unwrap() as u32,
        state: Payload::encode(&state).unwrap(),
        boundary: event
            .body
            .boundary()
            .cloned()
            .expect("a checkpoint closes a superstep"),
        created_at: Timestamp::now(),
    };
    store
        .commit(Commit {
            thread_id: tid.clone(),
            expected_head: head,
            events: vec![],
            run: None,
            snapshot: Some(snap),
            durability: Durability::default(),
            fence: None,
        })
        .await
        .expect("the store takes a snapshot from the active run");

    let r = h.get("/v1/jobs/vfy/verify").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["consistent"], false, "{}", r.text);
    let mismatch = r.body["mismatch"].as_str().unwrap();
    assert!(
        mismatch.contains(&format!("checkpoint ckpt_{at}"))
            && mismatch.contains("does not match the log"),
        "{mismatch}"
    );
    // The log itself is unchanged: its hash is the one verified before.
    assert_eq!(r.body["replayed_hash"], hash.as_str());
    assert_ne!(r.body["current_hash"], hash.as_str());

    // Unknown thread: 404.
    let r = h.get("/v1/jobs/nobody/verify").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.code(), "thread_not_found");
    h.stop().await;

    // A server without version 1 cannot decode the thread's state: 409.
    let mut v2 = Harness::start(
        store.clone(),
        Server::builder()
            .auth(Auth::Disabled)
            .workers(0)
            .graph(approval("2", counts.clone())),
    )
    .await;
    let r = v2.get("/v1/jobs/vfy/verify").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "graph_version_missing");
    assert_eq!(r.body["error"]["details"]["version"], "1");
    v2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_needs_the_viewer_role() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let mut h = Harness::start(
        store.clone(),
        Server::builder().graph(approval("1", Counts::new())),
    )
    .await;
    let anonymous = Harness::send(h.http.get(format!("{}/v1/jobs/x/verify", h.url))).await;
    assert_eq!(
        anonymous.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        anonymous.text
    );
    let r = h.get("/v1/jobs/x/verify").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.code(), "thread_not_found");
    h.stop().await;
}
