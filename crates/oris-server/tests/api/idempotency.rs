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

/// `Idempotency-Key` on the other state-changing routes: a keyed resume, fork and cancel
/// sent twice answer the same (flagged as a replay) and act once; the same key with
/// another body is 409 `idempotency_conflict` and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_resume_fork_and_cancel_act_once() {
    let dir = tempfile::tempdir().unwrap();
    let counts = Counts::new();
    let h = Harness::start(
        sqlite(&dir).await,
        Server::builder().graph(approval("1", counts.clone())),
    )
    .await;
    let keyed = |method: Method, path: &str, key: &str, body: serde_json::Value| {
        Harness::send(
            h.request(method, path)
                .header("Idempotency-Key", key)
                .json(&body),
        )
    };
    let created = h
        .post(
            "/v1/jobs",
            json!({ "graph": "approval", "thread_id": "keyed-1", "input": {} }),
        )
        .await;
    assert_eq!(created.status, StatusCode::ACCEPTED, "{}", created.text);
    h.until_status("keyed-1", "interrupted").await;

    // Resume twice with one key: one answer recorded, the second reply is the first's.
    let resume = json!({ "value": { "approve": true } });
    let first = keyed(
        Method::POST,
        "/v1/jobs/keyed-1/resume",
        "resume-1",
        resume.clone(),
    )
    .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    let again = keyed(Method::POST, "/v1/jobs/keyed-1/resume", "resume-1", resume).await;
    assert_eq!(again.status, first.status);
    assert_eq!(again.text, first.text);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let other = keyed(
        Method::POST,
        "/v1/jobs/keyed-1/resume",
        "resume-1",
        json!({ "value": { "approve": false } }),
    )
    .await;
    assert_eq!(other.status, StatusCode::CONFLICT, "{}", other.text);
    assert_eq!(other.code(), "idempotency_conflict");
    let done = h.until_status("keyed-1", "completed").await;
    assert_eq!(done["values"]["log"], json!(["draft", "approved", "done"]));
    assert_eq!(counts.get("finish"), 1);

    // Fork twice with one key: one new thread.
    let history = h.get("/v1/jobs/keyed-1/history").await;
    // The checkpoint before `ask`: the fork asks again.
    let checkpoint = history.body["checkpoints"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["next"] == json!(["ask"])))
        .and_then(|c| c["checkpoint_id"].as_str())
        .unwrap_or_else(|| panic!("{}", history.text))
        .to_owned();
    let fork = json!({ "checkpoint_id": checkpoint, "new_thread_id": "keyed-fork" });
    let f1 = keyed(
        Method::POST,
        "/v1/jobs/keyed-1/fork",
        "fork-1",
        fork.clone(),
    )
    .await;
    assert!(f1.status.is_success(), "{}", f1.text);
    let f2 = keyed(Method::POST, "/v1/jobs/keyed-1/fork", "fork-1", fork).await;
    assert_eq!((f2.status, &f2.text), (f1.status, &f1.text));
    assert_eq!(f2.headers["idempotent-replayed"], "true");
    let forked = h
        .store
        .runs(&RunFilter {
            thread_id: Some(oris_core::id::ThreadId::new("keyed-fork").unwrap()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(forked.len(), 1, "one fork run: {forked:?}");

    // Cancel twice with one key: the second is the first's answer, not `run_not_active`.
    h.until_status("keyed-fork", "interrupted").await;
    let c1 = keyed(
        Method::POST,
        "/v1/jobs/keyed-fork/cancel",
        "cancel-1",
        json!({ "reason": "not needed" }),
    )
    .await;
    assert_eq!(c1.status, StatusCode::OK, "{}", c1.text);
    let c2 = keyed(
        Method::POST,
        "/v1/jobs/keyed-fork/cancel",
        "cancel-1",
        json!({ "reason": "not needed" }),
    )
    .await;
    assert_eq!((c2.status, &c2.text), (c1.status, &c1.text));
    assert_eq!(c2.headers["idempotent-replayed"], "true");
    let unkeyed = h
        .post("/v1/jobs/keyed-fork/cancel", json!({ "reason": "again" }))
        .await;
    assert_eq!(unkeyed.code(), "run_not_active");
}
