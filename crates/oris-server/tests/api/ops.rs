//! Operations: metrics, readiness, the served OpenAPI document, graceful shutdown, graph
//! version pinning across servers on one store.

use std::sync::Arc;
use std::time::Duration;

use oris_core::graph::{END, START};
use oris_core::id::ThreadId;
use oris_core::status::StatusKind;
use oris_runtime::{CompiledGraph, NodeError, StateGraph};
use oris_server::{Auth, Server};
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::common::*;

/// `first` (gated) → `second`.
fn two(counts: Arc<Counts>, gate: Arc<Semaphore>) -> CompiledGraph<Doc> {
    let c2 = counts.clone();
    StateGraph::<Doc>::new("two", "1")
        .node("first", move |s: Doc, _ctx| {
            counts.hit("first");
            let gate = gate.clone();
            let counts = counts.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                counts.hit("first_done");
                Ok::<_, NodeError>(DocUpdate::default().n(s.n + 1))
            }
        })
        .node("second", move |s: Doc, _ctx| {
            c2.hit("second");
            async move { Ok(DocUpdate::default().n(s.n + 10)) }
        })
        .edge(START, "first")
        .edge("first", "second")
        .edge("second", END)
        .compile()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_running_node_and_hands_the_run_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let counts = Counts::new();
    let gate = Arc::new(Semaphore::new(0));
    let mut h = Harness::start(
        store.clone(),
        Server::builder()
            .auth(Auth::Disabled)
            .shutdown_grace(Duration::from_secs(20))
            .graph(two(counts.clone(), gate.clone())),
    )
    .await;
    h.post("/v1/jobs", json!({ "graph": "two", "thread_id": "g1" }))
        .await;
    h.until_status("g1", "running").await;
    for _ in 0..500 {
        if counts.get("first") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counts.get("first"), 1);
    // Shut down while `first` runs; it is let finish.
    let release = {
        let gate = gate.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            gate.add_permits(1);
        })
    };
    h.stop().await;
    release.await.unwrap();
    assert_eq!(counts.get("first_done"), 1);
    assert_eq!(
        counts.get("second"),
        0,
        "no new node starts during shutdown"
    );
    let t = ThreadId::new("g1").unwrap();
    let run = h.server.engine().latest_run(&t).await.unwrap();
    assert_eq!(run.status.kind(), StatusKind::Running);
    assert!(run.lease.is_none(), "the lease was handed back: {run:?}");
    assert!(run.ready_at.is_some());

    // The next start continues the run without running `first` again.
    let h2 = Harness::start(
        store,
        Server::builder()
            .auth(Auth::Disabled)
            .graph(two(counts.clone(), gate.clone())),
    )
    .await;
    let job = h2.settle("g1").await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["values"]["n"], 11);
    assert_eq!((counts.get("first"), counts.get("second")), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_stay_on_their_graph_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let counts = Counts::new();
    // v1 with workers: a run reaches its interrupt.
    let mut v1 = Harness::start(
        store.clone(),
        Server::builder()
            .auth(Auth::Disabled)
            .graph(approval("1", counts.clone())),
    )
    .await;
    v1.post(
        "/v1/jobs",
        json!({ "graph": "approval", "thread_id": "p1" }),
    )
    .await;
    let job = v1.settle("p1").await;
    let int_id = job["interrupts"][0]["interrupt_id"]
        .as_str()
        .unwrap()
        .to_owned();
    v1.stop().await;
    // An API-only v1 server queues a run nobody with v1 executes.
    let api_only = Harness::start(
        store.clone(),
        Server::builder()
            .auth(Auth::Disabled)
            .workers(0)
            .graph(approval("1", counts.clone())),
    )
    .await;
    assert_eq!(api_only.get("/readyz").await.body["workers"], "disabled");
    api_only
        .post(
            "/v1/jobs",
            json!({ "graph": "approval", "thread_id": "p2" }),
        )
        .await;

    // A v2-only server: never claims v1 runs; resuming them is a clear 409.
    let v2 = Harness::start(
        store.clone(),
        Server::builder()
            .auth(Auth::Disabled)
            .graph(approval("2", counts.clone())),
    )
    .await;
    let r = v2
        .post(
            &format!("/v1/interrupts/{int_id}/resume"),
            json!({ "value": { "approve": true } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "graph_version_missing");
    assert_eq!(r.body["error"]["details"]["version"], "1");
    let r = v2
        .post(
            "/v1/jobs/p1/resume",
            json!({ "value": { "approve": true } }),
        )
        .await;
    assert_eq!(r.code(), "graph_version_missing");
    let seen = v2.get("/v1/jobs/p1").await;
    assert_eq!(seen.status, StatusCode::OK);
    assert!(seen.body["values"].is_null());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(v2.get("/v1/jobs/p2").await.body["status"], "queued");
    assert_eq!(counts.get("draft"), 1);
    // New jobs use the latest registered version.
    let r = v2
        .post(
            "/v1/jobs",
            json!({ "graph": "approval", "thread_id": "p3" }),
        )
        .await;
    assert_eq!(r.body["graph_version"], "2");
    assert_eq!(v2.settle("p3").await["status"], "interrupted");
    assert_eq!(counts.get("draft"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_readiness_and_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let counts = Counts::new();
    let h = Harness::start(
        store.clone(),
        Server::builder()
            .auth(Auth::Disabled)
            .graph(count(counts.clone(), None))
            .graph(approval("1", counts.clone())),
    )
    .await;
    let ready = h.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["store"], "ok");
    assert_eq!(ready.body["workers"], "running");
    assert_eq!(h.get("/healthz").await.body["status"], "ok");

    h.post("/v1/jobs", json!({ "graph": "count", "thread_id": "m1" }))
        .await;
    assert_eq!(h.settle("m1").await["status"], "completed");
    h.post(
        "/v1/jobs",
        json!({ "graph": "approval", "thread_id": "m2" }),
    )
    .await;
    assert_eq!(h.settle("m2").await["status"], "interrupted");
    let mut text = String::new();
    for _ in 0..100 {
        text = h.get("/metrics").await.text;
        if text.contains("runs_total{") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for needle in [
        "http_requests_total{",
        "route=\"/v1/jobs\"",
        "status=\"202\"",
        "http_request_duration_seconds_bucket{",
        "runs_total{graph=\"count\",outcome=\"completed\"} 1",
        "run_duration_seconds_bucket{graph=\"count\"",
        "node_duration_seconds_bucket{node=\"inc\"",
        "claim_wait_seconds_bucket",
        "queue_depth 0",
        "interrupts_pending 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    // Another server in the same process keeps its own counts.
    let other = Harness::start(store, Server::builder().auth(Auth::Disabled).workers(0)).await;
    let text2 = other.get("/metrics").await.text;
    assert!(!text2.contains("runs_total{graph=\"count\""), "{text2}");

    let doc = h.get("/v1/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["openapi"], "3.1.0");
    assert!(doc.body["paths"]["/v1/jobs/{thread_id}/stream"]["get"].is_object());
    assert_eq!(doc.body, oris_server::openapi_document());
}
