//! Bad input: each a clear 4xx with a stable code, and nothing recorded.

use oris_core::store::RunFilter;
use oris_server::Server;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let counts = Counts::new();
    let h = Harness::start(
        sqlite(&dir).await,
        Server::builder()
            .body_limit(4096)
            .graph(approval("1", counts.clone())),
    )
    .await;
    let raw = |body: &'static str, ct: Option<&'static str>| {
        let mut r = h.request(Method::POST, "/v1/jobs").body(body);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        Harness::send(r)
    };
    let cases: Vec<(Reply, StatusCode, &str)> = vec![
        (raw("{\"graph\": \"approval\", ", Some("application/json")).await, StatusCode::BAD_REQUEST, "invalid_input"),
        (raw("{\"graph\": \"approval\", \"thread_id\": \"b1\"}", Some("text/plain")).await, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        (raw("{\"graph\": \"approval\", \"thread_id\": \"b1\"}", None).await, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        (h.post("/v1/jobs", json!({ "graph": "approval", "thread_id": "b1", "input": { "log": ["x".repeat(5000)] } })).await, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        (h.post("/v1/jobs", json!({ "graph": "nope", "thread_id": "b1" })).await, StatusCode::NOT_FOUND, "graph_not_found"),
        (h.post("/v1/jobs", json!({ "graph": "approval", "version": "9", "thread_id": "b1" })).await, StatusCode::NOT_FOUND, "graph_not_found"),
        (h.post("/v1/jobs", json!({ "graph": "approval", "thread_id": "b1", "input": { "n": "ten" } })).await, StatusCode::BAD_REQUEST, "invalid_input"),
        (h.post("/v1/jobs", json!({ "graph": "approval", "thread_id": "b1", "input": 5 })).await, StatusCode::BAD_REQUEST, "invalid_input"),
        (h.post("/v1/jobs", json!({ "graph": "approval", "thread_id": "bad id/x" })).await, StatusCode::BAD_REQUEST, "invalid_input"),
        (h.post("/v1/jobs", json!({ "graph": "approval", "thread_id": "" })).await, StatusCode::BAD_REQUEST, "invalid_input"),
        (h.post("/v1/jobs", json!({ "graph": "approval" })).await, StatusCode::BAD_REQUEST, "invalid_input"),
        (h.post("/v1/jobs", json!({ "graph": "approval", "thread_id": "b1", "surprise": 1 })).await, StatusCode::BAD_REQUEST, "invalid_input"),
        (h.post("/v1/jobs", json!({ "graph": "approval", "thread_id": "b1", "timeout": "soon" })).await, StatusCode::BAD_REQUEST, "invalid_input"),
        (h.post("/v1/jobs", json!({ "graph": "approval", "thread_id": "b1", "durability": "maybe" })).await, StatusCode::BAD_REQUEST, "invalid_input"),
        (h.post("/v1/interrupts/int_nothex/resume", json!({ "value": 1 })).await, StatusCode::BAD_REQUEST, "invalid_input"),
        (h.post("/v1/interrupts/int_0193a3b2c4d5e6f708192a3b4c5d6e7f/resume", json!({ "value": 1 })).await, StatusCode::NOT_FOUND, "interrupt_not_found"),
        (h.get("/v1/interrupts/run_0193a3b2c4d5e6f708192a3b4c5d6e7f").await, StatusCode::BAD_REQUEST, "invalid_input"),
        (h.get("/v1/jobs/nobody").await, StatusCode::NOT_FOUND, "thread_not_found"),
        (h.post("/v1/jobs/nobody/resume", json!({ "value": 1 })).await, StatusCode::NOT_FOUND, "thread_not_found"),
        (h.call(Method::POST, "/v1/jobs/nobody/cancel", None).await, StatusCode::NOT_FOUND, "thread_not_found"),
        (h.get("/v1/jobs/nobody/timeline").await, StatusCode::NOT_FOUND, "thread_not_found"),
        (h.get("/v1/jobs/nobody/stream").await, StatusCode::NOT_FOUND, "thread_not_found"),
        (h.get("/v1/jobs/nobody/wait").await, StatusCode::NOT_FOUND, "thread_not_found"),
        (h.get("/v1/jobs?status=sleeping").await, StatusCode::BAD_REQUEST, "invalid_input"),
        (h.get("/v1/jobs?created_after=yesterday").await, StatusCode::BAD_REQUEST, "invalid_input"),
        (h.get("/v1/jobs?colour=red").await, StatusCode::BAD_REQUEST, "invalid_input"),
        (h.get("/v1/jobs?limit=0").await, StatusCode::BAD_REQUEST, "invalid_input"),
        (h.get("/v1/jobs?cursor=abc").await, StatusCode::BAD_REQUEST, "invalid_input"),
        (h.get("/v1/graphs/nope").await, StatusCode::NOT_FOUND, "graph_not_found"),
        (h.get("/v1/nothing/here").await, StatusCode::NOT_FOUND, "not_found"),
        (h.call(Method::PUT, "/v1/jobs", None).await, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (Harness::send(h.request(Method::POST, "/v1/jobs").header("Idempotency-Key", "has space").json(&json!({ "graph": "approval", "thread_id": "b1" }))).await, StatusCode::BAD_REQUEST, "invalid_input"),
    ];
    for (i, (r, status, code)) in cases.iter().enumerate() {
        assert_eq!(r.status, *status, "case {i}: {}", r.text);
        assert_eq!(r.code(), *code, "case {i}: {}", r.text);
        assert!(
            r.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "case {i}"
        );
        assert!(
            r.body["error"]["request_id"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "case {i}"
        );
        assert_eq!(
            r.headers["x-request-id"].to_str().unwrap(),
            r.body["error"]["request_id"].as_str().unwrap(),
            "case {i}"
        );
    }
    // The input error names the field.
    assert!(
        cases[6].0.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains('n'),
        "{}",
        cases[6].0.text
    );

    // Nothing was recorded: no run, no thread; each refusal of a create is audited.
    assert!(
        h.store
            .runs(&RunFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(counts.get("draft"), 0);
    let audit = h.get("/v1/audit?action=jobs.create&limit=100").await;
    let outcomes: Vec<&str> = audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    for code in [
        "invalid_input",
        "unsupported_media_type",
        "payload_too_large",
        "graph_not_found",
    ] {
        assert!(outcomes.contains(&code), "{code} not audited: {outcomes:?}");
    }
    assert!(!outcomes.contains(&"ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_when_valid() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(sqlite(&dir).await, Server::builder()).await;
    let r = Harness::send(
        h.request(Method::GET, "/healthz")
            .header("x-request-id", "client-id_1.2:3"),
    )
    .await;
    assert_eq!(r.headers["x-request-id"], "client-id_1.2:3");
    let r = Harness::send(
        h.request(Method::GET, "/healthz")
            .header("x-request-id", "bad id"),
    )
    .await;
    let id = r.headers["x-request-id"].to_str().unwrap();
    assert_ne!(id, "bad id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let r = Harness::send(
        h.request(Method::GET, "/v1/jobs/x")
            .header("x-request-id", "trace-me"),
    )
    .await;
    assert_eq!(r.body["error"]["request_id"], "trace-me");
}
