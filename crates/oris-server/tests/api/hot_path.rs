//! The hot path of a run — create, claim, execute, wait — in store calls: what each step
//! reads, that the pool claims once per run, and that an external signal wakes the pool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use oris_core::id::ThreadId;
use oris_runtime::{Engine, Enqueue, EnqueueOptions};
use oris_server::{Auth, Server};
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::mpsc;

use crate::common::*;
use oris_testkit::counting::CountingStore;

/// Creates a `count` job on `thread` and waits for it; returns the job.
async fn cycle(h: &Harness, thread: &str) -> serde_json::Value {
    let r = h
        .post(
            "/v1/jobs",
            json!({ "graph": "count", "thread_id": thread, "input": { "n": 1 } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    h.settle(thread).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_costs_one_claim_and_few_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(CountingStore::new(sqlite(&dir).await));
    let counts = Counts::new();
    // No polling within the test: every claim is one the pool was asked for.
    let server = Server::builder()
        .store(store.clone())
        .auth(Auth::Disabled)
        .poll_interval(Duration::from_secs(600))
        .graph(count(counts.clone(), None))
        .build()
        .await
        .unwrap();
    let h = Harness::serve(store.clone(), server).await;
    // Warm-up cycles let the pool's start-up claim (and one a wake-up during it asks for)
    // pass.
    for t in ["warm-1", "warm-2"] {
        assert_eq!(cycle(&h, t).await["status"], "completed");
    }

    let before = store.calls();
    let started = Instant::now();
    let job = cycle(&h, "hot").await;
    let took = started.elapsed();
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["values"], json!({ "log": ["inc"], "n": 2 }));
    let calls = store.since(&before);
    let n = |m: &str| calls.get(m).copied().unwrap_or(0);
    // One claim for the run — none for the execution that ended, none empty.
    assert_eq!(n("claim"), 1, "{calls:?}");
    // The create's thread lookup and the wait's.
    assert_eq!(n("thread"), 2, "{calls:?}");
    // The execution folds the new thread's log in one read, without a snapshot, and so
    // does the wait's answer (the thread's log is short).
    assert_eq!(n("events"), 2, "{calls:?}");
    // The wait reads the run when it starts and when this server's commit ends it, plus
    // once per quiet spell (10 ms, doubling) in which this server committed nothing to the
    // thread — at most one per 10 ms of the cycle.
    let quiet = took.as_millis() as u64 / 10;
    assert!((1..=2 + quiet).contains(&n("run")), "{calls:?} in {took:?}");
    // Create and node commits; the create's audit entry; nothing else.
    assert_eq!((n("commit"), n("append_audit")), (2, 1), "{calls:?}");
    let expected = [
        "append_audit",
        "claim",
        "commit",
        "events",
        "run",
        "snapshot",
        "thread",
    ];
    assert!(calls.keys().all(|m| expected.contains(m)), "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_signal_wakes_the_pool_for_runs_made_ready_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let counts = Counts::new();
    let (tx, rx) = mpsc::unbounded_channel::<()>();
    let signal =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|()| ((), rx)) },
        );
    let server = Server::builder()
        .store(store.clone())
        .auth(Auth::Disabled)
        .poll_interval(Duration::from_secs(600))
        .graph(count(counts.clone(), None))
        .wake_on(signal)
        .build()
        .await
        .unwrap();
    let h = Harness::serve(store.clone(), server).await;
    assert_eq!(cycle(&h, "local").await["status"], "completed");

    // Another process (an engine of its own on the same store) queues a run: this server
    // hears nothing of it and does not poll within the test.
    let elsewhere = Engine::new(store.clone());
    elsewhere.register(count(counts.clone(), None));
    elsewhere
        .enqueue(Enqueue {
            graph: "count".into(),
            version: None,
            thread_id: ThreadId::new("remote").unwrap(),
            input: json!({ "n": 5 }),
            options: EnqueueOptions::default(),
        })
        .await
        .unwrap();
    let r = h.get("/v1/jobs/remote/wait?timeout=300ms").await;
    assert_eq!(r.body["timed_out"], true, "{}", r.text);
    assert_eq!(r.body["job"]["status"], "queued", "{}", r.text);

    // The signal (say, a PostgreSQL notification) wakes the pool, which claims the run.
    tx.send(()).unwrap();
    let job = h.settle("remote").await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["values"]["n"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_sees_a_run_another_server_executes() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let counts = Counts::new();
    // This server only records intent; its waits see none of the executing server's
    // commits and find them by re-reading the store.
    let api = Harness::start(
        store.clone(),
        Server::builder()
            .auth(Auth::Disabled)
            .workers(0)
            .graph(approval("1", counts.clone())),
    )
    .await;
    let _worker = Harness::start(
        store.clone(),
        Server::builder()
            .auth(Auth::Disabled)
            .graph(approval("1", counts.clone())),
    )
    .await;
    let r = api
        .post(
            "/v1/jobs",
            json!({ "graph": "approval", "thread_id": "far", "input": { "n": 1 } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job = api.settle("far").await;
    assert_eq!(job["status"], "interrupted", "{job}");
    assert_eq!(job["values"], json!({ "log": ["draft"], "n": 2 }));
    let r = api
        .post(
            "/v1/jobs/far/resume",
            json!({ "value": { "approve": true } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    // Not the old interrupt: the run is about to continue elsewhere.
    let job = api.settle("far").await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["values"]["log"], json!(["draft", "approved", "done"]));
    assert_eq!((counts.get("draft"), counts.get("finish")), (1, 1));
}
