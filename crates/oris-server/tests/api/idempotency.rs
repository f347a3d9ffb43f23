//! 50 identical concurrent creates: one run, one execution, 50 identical answers.

use oris_core::store::RunFilter;
use oris_server::Server;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_identical_creates_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let counts = Counts::new();
    let h = Harness::start(
        sqlite(&dir).await,
        Server::builder().graph(count(counts.clone(), None)),
    )
    .await;
    let body = json!({ "graph": "count", "thread_id": "idem-1", "input": { "n": 1 } });
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let req = h
            .request(Method::POST, "/v1/jobs")
            .header("Idempotency-Key", "create-idem-1")
            .json(&body);
        tasks.push(tokio::spawn(Harness::send(req)));
    }
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    for r in &replies {
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    }
    assert!(
        replies.iter().all(|r| r.text == replies[0].text),
        "bodies differ"
    );
    let replayed = replies
        .iter()
        .filter(|r| {
            r.headers
                .get("idempotent-replayed")
                .is_some_and(|v| v == "true")
        })
        .count();
    assert_eq!(replayed, 49);
    assert!(
        replies
            .iter()
            .all(|r| r.headers["location"] == "/v1/jobs/idem-1")
    );

    let job = h.settle("idem-1").await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["values"]["n"], 2);
    let runs = h
        .store
        .runs(&RunFilter {
            thread_id: Some(oris_core::id::ThreadId::new("idem-1").unwrap()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(counts.get("inc"), 1);

    // The same key with another request is refused, and nothing runs.
    let other = Harness::send(
        h.request(Method::POST, "/v1/jobs")
            .header("Idempotency-Key", "create-idem-1")
            .json(&json!({ "graph": "count", "thread_id": "idem-2" })),
    )
    .await;
    assert_eq!(other.status, StatusCode::CONFLICT);
    assert_eq!(other.code(), "idempotency_conflict");
    assert_eq!(h.get("/v1/jobs/idem-2").await.code(), "thread_not_found");

    // The key in the body works too; reordered keys are the same request.
    let a = h
        .post(
            "/v1/jobs",
            json!({ "graph": "count", "thread_id": "idem-3", "idempotency_key": "k3" }),
        )
        .await;
    let b = h
        .post(
            "/v1/jobs",
            json!({ "idempotency_key": "k3", "thread_id": "idem-3", "graph": "count" }),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(b.status, StatusCode::ACCEPTED);
    assert_eq!(a.text, b.text);
    assert_eq!(b.headers["idempotent-replayed"], "true");

    // A 4xx is remembered too: the same failing request replays the same error.
    let e1 = Harness::send(
        h.request(Method::POST, "/v1/jobs")
            .header("Idempotency-Key", "bad")
            .json(&json!({ "graph": "nope", "thread_id": "x" })),
    )
    .await;
    let e2 = Harness::send(
        h.request(Method::POST, "/v1/jobs")
            .header("Idempotency-Key", "bad")
            .json(&json!({ "graph": "nope", "thread_id": "x" })),
    )
    .await;
    assert_eq!(e1.code(), "graph_not_found");
    assert_eq!(e2.text, e1.text);
    assert_eq!(e2.headers["idempotent-replayed"], "true");

    // Keys are scoped per caller: another key's identical request is not a replay.
    let viewer_op = h
        .post("/v1/keys", json!({ "name": "op", "role": "operator" }))
        .await;
    let op = h.with_token(viewer_op.body["token"].as_str().unwrap());
    let c = Harness::send(
        op.request(Method::POST, "/v1/jobs")
            .header("Idempotency-Key", "create-idem-1")
            .json(&body),
    )
    .await;
    assert_eq!(c.status, StatusCode::ACCEPTED, "{}", c.text);
    assert!(c.headers.get("idempotent-replayed").is_none());
    assert_ne!(
        c.body["run_id"], replies[0].body["run_id"],
        "a new run, not a replay"
    );

    // Every attempt is audited, replays flagged.
    let audit = h.get("/v1/audit?action=jobs.create&limit=500").await;
    let entries = audit.body["entries"].as_array().unwrap();
    let first_50: Vec<_> = entries
        .iter()
        .filter(|e| e["details"]["idempotency_key"] == "create-idem-1")
        .collect();
    assert_eq!(first_50.len(), 52, "{}", audit.text);
    assert_eq!(
        first_50
            .iter()
            .filter(|e| e["details"]["replayed"] == true)
            .count(),
        49
    );
}
