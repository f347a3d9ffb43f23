//! Failures: the retries history of a task and the dead-letter queue (list, show, replay
//! once from the last checkpoint).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use oris_core::graph::{END, START};
use oris_runtime::{CompiledGraph, NodeError, NodePolicy, RetryPolicy, StateGraph};
use oris_server::{Auth, Server};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

/// `prep` → `work` (fails while `fail` is set; two attempts 50 ms apart) → END.
fn flaky(counts: Arc<Counts>, fail: Arc<AtomicBool>) -> CompiledGraph<Doc> {
    let c1 = counts.clone();
    StateGraph::<Doc>::new("flaky", "1")
        .node("prep", move |s: Doc, _ctx| {
            c1.hit("prep");
            async move { Ok::<_, NodeError>(DocUpdate::default().n(s.n + 1).log(vec!["prep".into()])) }
        })
        .node_with(
            "work",
            NodePolicy {
                retry: RetryPolicy::exponential(2)
                    .initial_interval(Duration::from_millis(50))
                    .jitter(false),
                timeout: None,
            },
            move |s: Doc, _ctx| {
                counts.hit("work");
                let failing = fail.load(Ordering::SeqCst);
                async move {
                    if failing {
                        Err(NodeError::new("the backend is down"))
                    } else {
                        Ok(DocUpdate::default().n(s.n * 10).log(vec!["work".into()]))
                    }
                }
            },
        )
        .edge(START, "prep")
        .edge("prep", "work")
        .edge("work", END)
        .compile()
        .unwrap()
}

async fn open() -> (tempfile::TempDir, Harness, Arc<Counts>, Arc<AtomicBool>) {
    let dir = tempfile::tempdir().unwrap();
    let counts = Counts::new();
    let fail = Arc::new(AtomicBool::new(true));
    let h = Harness::start(
        sqlite(&dir).await,
        Server::builder()
            .auth(Auth::Disabled)
            .graph(flaky(counts.clone(), fail.clone()))
            .graph(count(Counts::new(), None)),
    )
    .await;
    (dir, h, counts, fail)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_dead_lettered_shown_and_replayed_once() {
    let (_d, h, counts, fail) = open().await;
    let r = h
        .post(
            "/v1/jobs",
            json!({ "graph": "flaky", "thread_id": "d-1", "input": { "n": 1 }, "metadata": { "team": "x" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let failed = h.settle("d-1").await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let run_id = failed["run_id"].as_str().unwrap().to_owned();
    assert_eq!((counts.get("prep"), counts.get("work")), (1, 2));
    // A run that completes is not an entry.
    h.post("/v1/jobs", json!({ "graph": "count", "thread_id": "ok-1" }))
        .await;
    assert_eq!(h.settle("ok-1").await["status"], "completed");

    let list = h.get("/v1/dlq").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let entries = list.body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{}", list.text);
    assert_eq!(entries[0]["run_id"], run_id.as_str());
    assert_eq!(entries[0]["thread_id"], "d-1");
    assert_eq!(entries[0]["graph"], "flaky");
    assert_eq!(entries[0]["metadata"]["team"], "x");
    assert!(
        entries[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the backend is down"),
        "{}",
        list.text
    );
    assert_eq!(list.body["next_cursor"], Value::Null);
    assert_eq!(
        h.get("/v1/dlq?graph=count").await.body["entries"],
        json!([])
    );
    assert_eq!(h.get("/v1/dlq?bogus=1").await.code(), "invalid_input");

    // The entry with its error chain: both attempts of `work`, then the run's failure.
    let one = h.get(&format!("/v1/dlq/{run_id}")).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text);
    assert_eq!(one.body["job"]["status"], "failed");
    let chain = one.body["chain"].as_array().unwrap();
    let events: Vec<&str> = chain.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        ["node_failed", "node_failed", "run_failed"],
        "{}",
        one.text
    );
    assert_eq!(chain[0]["node"], "work");
    assert_eq!(chain[0]["attempt_id"], format!("{run_id}.1.0.1"));
    assert!(chain[0]["retry_at"].is_string());
    assert_eq!(chain[1]["attempt_id"], format!("{run_id}.1.0.2"));
    assert_eq!(chain[1]["retry_at"], Value::Null);

    // Replayed from its last checkpoint (after `prep`): `prep` is not executed again.
    fail.store(false, Ordering::SeqCst);
    let r = h.post(&format!("/v1/dlq/{run_id}/replay"), json!({})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.body["replayed"], false);
    assert_eq!(r.headers["location"], "/v1/jobs/d-1");
    let new_run = r.body["job"]["run_id"].as_str().unwrap().to_owned();
    assert_ne!(new_run, run_id);
    let done = h.settle("d-1").await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["run_id"], new_run.as_str());
    assert_eq!(done["values"]["n"], 20);
    assert_eq!((counts.get("prep"), counts.get("work")), (1, 3));

    // Replaying the entry again answers the same run, without a second one.
    let again = h.post(&format!("/v1/dlq/{run_id}/replay"), json!({})).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body["replayed"], true);
    assert_eq!(again.body["job"]["run_id"], new_run.as_str());
    assert_eq!(counts.get("work"), 3);
    // The thread moved on: no longer an entry.
    assert_eq!(h.get("/v1/dlq").await.body["entries"], json!([]));
    assert_eq!(
        h.get(&format!("/v1/dlq/{run_id}")).await.code(),
        "not_dead_lettered"
    );
    let r = h
        .post(&format!("/v1/dlq/{new_run}/replay"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "not_dead_lettered");
    assert_eq!(
        h.post("/v1/dlq/nonsense/replay", json!({})).await.code(),
        "invalid_input"
    );
    let missing = oris_core::id::RunId::generate();
    assert_eq!(
        h.post(&format!("/v1/dlq/{missing}/replay"), json!({}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // Audited as dlq.replay, with the run it created.
    let audit = h.get("/v1/audit?action=dlq.replay").await.body;
    let entries = audit["entries"].as_array().unwrap();
    assert!(entries.len() >= 2, "{audit}");
    assert_eq!(entries[0]["target"], run_id.as_str());
    assert_eq!(entries[0]["details"]["replay_run_id"], new_run.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retries_history_of_a_task() {
    let (_d, h, _counts, _fail) = open().await;
    h.post(
        "/v1/jobs",
        json!({ "graph": "flaky", "thread_id": "r-1", "input": { "n": 1 } }),
    )
    .await;
    let job = h.settle("r-1").await;
    let run_id = job["run_id"].as_str().unwrap().to_owned();

    let r = h.get(&format!("/v1/attempts/{run_id}.1.0/retries")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["node"], "work");
    assert_eq!(r.body["task_id"], format!("{run_id}.1.0"));
    assert_eq!(r.body["thread_id"], "r-1");
    let attempts = r.body["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{}", r.text);
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[0]["outcome"], "failed");
    assert_eq!(attempts[0]["error"]["kind"], "node_error");
    assert!(attempts[0]["retry_at"].is_string());
    assert_eq!(attempts[1]["attempt"], 2);
    assert_eq!(attempts[1]["retry_at"], Value::Null);
    assert_eq!(attempts[1]["attempt_id"], format!("{run_id}.1.0.2"));

    // The full attempt id (as in the node's span) names the same task.
    let r2 = h.get(&format!("/v1/attempts/{run_id}.1.0.2/retries")).await;
    assert_eq!(r2.body, r.body);
    // A completed task has one attempt.
    let prep = h.get(&format!("/v1/attempts/{run_id}.0.0/retries")).await;
    assert_eq!(
        prep.body["attempts"][0]["outcome"], "completed",
        "{}",
        prep.text
    );
    assert_eq!(prep.body["attempts"][0]["error"], Value::Null);

    for missing in [
        format!("{run_id}.1.0.9"),
        format!("{run_id}.7.0"),
        format!("{}.0.0", oris_core::id::RunId::generate()),
    ] {
        let r = h.get(&format!("/v1/attempts/{missing}/retries")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{missing}: {}", r.text);
        assert_eq!(r.code(), "attempt_not_found");
    }
    for bad in [
        "garbage",
        "run_x.1.0",
        &format!("{run_id}.1"),
        &format!("{run_id}.a.0"),
    ] {
        let r = h.get(&format!("/v1/attempts/{bad}/retries")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
    }
}
