//! Jobs: create → interrupt → resume → inspect, replay/fork, cancel, run_active.

use oris_server::{Auth, Server};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::*;

async fn open() -> (tempfile::TempDir, Harness, std::sync::Arc<Counts>) {
    let dir = tempfile::tempdir().unwrap();
    let counts = Counts::new();
    let h = Harness::start(
        sqlite(&dir).await,
        Server::builder()
            .auth(Auth::Disabled)
            .graph_with_schema(approval("1", counts.clone()))
            .graph(count(counts.clone(), None)),
    )
    .await;
    (dir, h, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_interrupt_resume_inspect() {
    let (_d, h, counts) = open().await;
    let r = h
        .post("/v1/jobs", json!({ "graph": "approval", "thread_id": "order-1", "input": { "n": 10 }, "metadata": { "team": "a" }, "priority": 3 }))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.headers["location"], "/v1/jobs/order-1");
    assert!(r.headers.contains_key("x-request-id"));
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["graph_version"], "1");
    assert_eq!(r.body["priority"], 3);
    assert_eq!(r.body["metadata"]["team"], "a");
    assert!(r.body["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(r.body["first_seq"], 1);

    let job = h.settle("order-1").await;
    assert_eq!(job["status"], "interrupted", "{job}");
    assert_eq!(job["interrupts"][0]["node"], "ask");
    assert_eq!(job["interrupts"][0]["payload"]["question"], "approve?");
    assert_eq!(job["values"]["log"], json!(["draft"]));
    assert_eq!(job["values"]["n"], 11);
    let int_id = job["interrupts"][0]["interrupt_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The interrupt is listed and readable.
    let list = h.get("/v1/interrupts?thread_id=order-1").await;
    assert_eq!(list.body["interrupts"][0]["interrupt_id"], int_id.as_str());
    assert_eq!(list.body["interrupts"][0]["status"], "pending");
    let one = h.get(&format!("/v1/interrupts/{int_id}")).await;
    assert_eq!(one.status, StatusCode::OK);

    let r = h
        .post(
            &format!("/v1/interrupts/{int_id}/resume"),
            json!({ "value": { "approve": true } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert!(matches!(
        r.body["status"].as_str(),
        Some("answered" | "applied")
    ));

    let job = h.settle("order-1").await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["values"]["log"], json!(["draft", "approved", "done"]));
    assert_eq!(job["next"], json!([]));
    assert_eq!((counts.get("draft"), counts.get("finish")), (1, 1));

    // Resuming again: not pending.
    let r = h
        .post(
            &format!("/v1/interrupts/{int_id}/resume"),
            json!({ "value": { "approve": false } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(
        matches!(r.code(), "interrupt_not_pending" | "resume_conflict"),
        "{}",
        r.text
    );

    // History, a checkpoint, the timeline.
    let hist = h.get("/v1/jobs/order-1/history").await;
    let cps = hist.body["checkpoints"].as_array().unwrap().clone();
    assert!(cps.len() >= 3, "{}", hist.text);
    let first = cps[0]["checkpoint_id"].as_str().unwrap();
    let cp = h
        .get(&format!("/v1/jobs/order-1/checkpoints/{first}"))
        .await;
    assert_eq!(cp.status, StatusCode::OK, "{}", cp.text);
    assert_eq!(cp.body["values"]["n"], 10);
    assert_eq!(cp.body["next"], json!(["draft"]));
    let tl = h.get("/v1/jobs/order-1/timeline?limit=2").await;
    assert_eq!(tl.body["events"][0]["kind"], "run_started");
    assert_eq!(tl.body["events"][0]["seq"], 1);
    let after = tl.body["next_after"].as_u64().unwrap();
    assert_eq!(after, 2);
    let rest = h
        .get(&format!(
            "/v1/jobs/order-1/timeline?after={after}&limit=1000"
        ))
        .await;
    let kinds: Vec<_> = rest.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert!(kinds.contains(&"interrupt_raised".to_owned()), "{kinds:?}");
    assert_eq!(kinds.last().unwrap(), "run_completed");
    assert!(rest.body["next_after"].is_null());

    // A later run's events start right after the history: its `first_seq` says where (what
    // `oris run --wait` follows from instead of the thread's first event).
    let head = rest.body["events"].as_array().unwrap().last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    let again = h
        .post(
            "/v1/jobs",
            json!({ "graph": "approval", "thread_id": "order-1", "input": { "n": 1 } }),
        )
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text);
    assert_eq!(again.body["first_seq"], head + 1, "{}", again.text);
    let first = h
        .get(&format!("/v1/jobs/order-1/timeline?after={head}&limit=1"))
        .await;
    assert_eq!(first.body["events"][0]["kind"], "run_started");
    assert_eq!(first.body["events"][0]["run_id"], again.body["run_id"]);
    assert_eq!(h.settle("order-1").await["status"], "interrupted");

    // Listing with filters and cursor.
    let all = h.get("/v1/jobs?metadata.team=a&status=completed").await;
    assert_eq!(
        all.body["jobs"].as_array().unwrap().len(),
        1,
        "{}",
        all.text
    );
    let none = h.get("/v1/jobs?metadata.team=b").await;
    assert_eq!(none.body["jobs"], json!([]));

    // Graph description with its input schema.
    let g = h.get("/v1/graphs/approval").await;
    assert_eq!(
        g.body["nodes"],
        json!(["draft", "ask", "finish"]),
        "{}",
        g.text
    );
    assert!(g.body["mermaid"].as_str().unwrap().contains("draft"));
    assert!(
        g.body["input_schema"]["properties"]["n"].is_object(),
        "{}",
        g.text
    );
    let list = h.get("/v1/graphs").await;
    assert_eq!(list.body["graphs"][0]["name"], "approval");
    assert!(h.get("/v1/graphs/count").await.body["input_schema"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_active_cancel_replay_fork_and_state_edit() {
    let (_d, h, counts) = open().await;
    assert_eq!(
        h.post(
            "/v1/jobs",
            json!({ "graph": "approval", "thread_id": "t1" })
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );
    let again = h
        .post(
            "/v1/jobs",
            json!({ "graph": "approval", "thread_id": "t1" }),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.code(), "run_active");
    assert_eq!(again.body["error"]["details"]["thread_id"], "t1");

    // Resume through the job route (the only pending interrupt).
    assert_eq!(h.settle("t1").await["status"], "interrupted");
    let r = h
        .post(
            "/v1/jobs/t1/resume",
            json!({ "value": { "approve": false } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job = h.settle("t1").await;
    assert_eq!(job["values"]["log"], json!(["draft", "rejected", "done"]));

    // Fork from the first checkpoint into a new thread.
    let cps = h.get("/v1/jobs/t1/history").await.body["checkpoints"].clone();
    let ck = cps[0]["checkpoint_id"].as_str().unwrap();
    let f = h
        .post(
            "/v1/jobs/t1/fork",
            json!({ "checkpoint_id": ck, "new_thread_id": "t1-fork" }),
        )
        .await;
    assert_eq!(f.status, StatusCode::ACCEPTED, "{}", f.text);
    assert_eq!(f.headers["location"], "/v1/jobs/t1-fork");
    assert_eq!(h.settle("t1-fork").await["status"], "interrupted");
    let f2 = h
        .post(
            "/v1/jobs/t1/fork",
            json!({ "checkpoint_id": ck, "new_thread_id": "t1-fork" }),
        )
        .await;
    // The fork's thread exists (and has an unfinished run): refused either way.
    assert!(
        matches!(f2.code(), "thread_exists" | "run_active"),
        "{}",
        f2.text
    );

    // Cancel the forked run while it waits; cancelling again is not possible.
    let c = h.call(Method::POST, "/v1/jobs/t1-fork/cancel", None).await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.text);
    assert_eq!(c.body["status"], "cancelled");
    assert_eq!(c.body["status_detail"]["reason"], "cancelled via API");
    let c = h
        .post("/v1/jobs/t1-fork/cancel", json!({ "reason": "again" }))
        .await;
    assert_eq!(c.code(), "run_not_active", "{}", c.text);

    // Replay t1 from its first checkpoint.
    let rp = h
        .post("/v1/jobs/t1/replay", json!({ "checkpoint_id": ck }))
        .await;
    assert_eq!(rp.status, StatusCode::ACCEPTED, "{}", rp.text);
    assert_eq!(h.settle("t1").await["status"], "interrupted");
    let c = h.post("/v1/jobs/t1/cancel", json!({})).await;
    assert_eq!(c.body["status"], "cancelled");

    // Edit the state of the idle thread as a node.
    let e = h
        .post(
            "/v1/jobs/t1/state",
            json!({ "values": { "n": 100 }, "as_node": "finish" }),
        )
        .await;
    assert_eq!(e.status, StatusCode::OK, "{}", e.text);
    assert_eq!(e.body["values"]["n"], 100);
    let bad = h
        .post("/v1/jobs/t1/state", json!({ "values": { "n": "x" } }))
        .await;
    assert_eq!(bad.code(), "invalid_input");

    // Reject an interrupt: the run is cancelled.
    h.post(
        "/v1/jobs",
        json!({ "graph": "approval", "thread_id": "t2" }),
    )
    .await;
    let job = h.settle("t2").await;
    let id = job["interrupts"][0]["interrupt_id"].as_str().unwrap();
    let r = h
        .post(
            &format!("/v1/interrupts/{id}/reject"),
            json!({ "reason": "no" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "cancelled");
    assert_eq!(r.body["status_detail"]["reason"], "no");
    assert!(counts.get("draft") >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_sent_over_http_continues_the_waiting_run_in_the_pool() {
    use oris_core::graph::{END, START};
    use oris_runtime::{NodeError, StateGraph};
    let listen = StateGraph::<Doc>::new("listen", "1")
        .node("wait", |_s: Doc, ctx| async move {
            let got: Option<serde_json::Value> = ctx
                .wait_for_event("go", std::time::Duration::from_secs(60))
                .await?;
            let got = got.map_or("timed out".to_owned(), |v| v["say"].to_string());
            Ok::<_, NodeError>(DocUpdate::default().log(vec![got]))
        })
        .edge(START, "wait")
        .edge("wait", END)
        .compile()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(
        sqlite(&dir).await,
        Server::builder().auth(Auth::Disabled).graph(listen),
    )
    .await;
    let r = h
        .post(
            "/v1/jobs",
            json!({ "graph": "listen", "thread_id": "ev-1" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job = h.settle("ev-1").await;
    assert_eq!(job["status"], "waiting", "{job}");

    let r = h
        .post(
            "/v1/jobs/ev-1/events",
            json!({ "name": "go", "payload": { "say": "hi" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.body["name"], "go");
    let job = h.until_status("ev-1", "completed").await;
    assert_eq!(job["values"]["log"], json!(["\"hi\""]), "{job}");
}
