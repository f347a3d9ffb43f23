//! The multitask strategy `enqueue`: runs queued behind a thread's unfinished run as
//! pending runs, started one after another in order; validation up front; `reject` on a
//! thread with pending runs; cancel with `include_pending`; a start done but not recorded
//! as done is not repeated.

use std::sync::Arc;
use std::time::Duration;

use oris_core::event::Payload;
use oris_core::graph::{END, START};
use oris_core::id::{ThreadId, Timestamp};
use oris_core::store::{PendingRun, RunFilter};
use oris_runtime::{CompiledGraph, NodeError, StateGraph};
use oris_server::{Auth, Server};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

/// One node: when the last log entry is `hold` it waits for a resume (then logs
/// `released`), otherwise it logs `ran:<last entry>` — so the log shows which input each
/// run saw, in order.
fn hold(counts: Arc<Counts>) -> CompiledGraph<Doc> {
    StateGraph::<Doc>::new("hold", "1")
        .node("work", move |s: Doc, ctx| {
            counts.hit("work");
            async move {
                let last = s.log.last().cloned().unwrap_or_default();
                if last == "hold" {
                    let _: Value = ctx.interrupt(&json!({ "q": "go?" })).await?;
                    return Ok::<_, NodeError>(DocUpdate::default().log(vec!["released".into()]));
                }
                Ok(DocUpdate::default().log(vec![format!("ran:{last}")]))
            }
        })
        .edge(START, "work")
        .edge("work", END)
        .compile()
        .unwrap()
}

async fn server(dir: &tempfile::TempDir, counts: Arc<Counts>) -> Harness {
    Harness::start(
        sqlite(dir).await,
        Server::builder().auth(Auth::Disabled).graph(hold(counts)),
    )
    .await
}

/// A `hold` run on `thread`, interrupted; returns its interrupt id.
async fn held(h: &Harness, thread: &str) -> String {
    let r = h
        .post(
            "/v1/jobs",
            json!({ "graph": "hold", "thread_id": thread, "input": { "log": ["hold"] } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job = h.settle(thread).await;
    assert_eq!(job["status"], "interrupted", "{job}");
    job["interrupts"][0]["interrupt_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn enqueue(h: &Harness, thread: &str, entry: &str) -> crate::common::Reply {
    h.post(
        "/v1/jobs",
        json!({
            "graph": "hold",
            "thread_id": thread,
            "input": { "log": [entry] },
            "multitask_strategy": "enqueue",
        }),
    )
    .await
}

fn tid(s: &str) -> ThreadId {
    ThreadId::new(s).unwrap()
}

async fn runs_of(h: &Harness, thread: &str) -> Vec<oris_core::store::RunRecord> {
    h.store
        .runs(&RunFilter {
            thread_id: Some(tid(thread)),
            ..Default::default()
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueued_runs_start_one_after_another_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let counts = Counts::new();
    let h = server(&dir, counts.clone()).await;
    let int_id = held(&h, "fifo").await;

    let mut ids = Vec::new();
    for (i, entry) in ["a", "b", "c"].iter().enumerate() {
        let r = enqueue(&h, "fifo", entry).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        assert_eq!(r.body["status"], "pending");
        assert_eq!(r.body["thread_id"], "fifo");
        assert_eq!(r.body["position"], i as u64 + 1, "{}", r.text);
        assert_eq!(r.body["graph_version"], "1");
        assert_eq!(r.headers["location"], "/v1/jobs/fifo");
        ids.push(r.body["run_id"].as_str().unwrap().to_owned());
    }
    let job = h.get("/v1/jobs/fifo").await.body;
    assert_eq!(job["status"], "interrupted", "the held run is untouched");
    let listed: Vec<(&str, u64)> = job["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["run_id"].as_str().unwrap(),
                p["position"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (ids[0].as_str(), 1),
            (ids[1].as_str(), 2),
            (ids[2].as_str(), 3)
        ]
    );
    assert!(job["pending"][0]["created_at"].is_string(), "{job}");
    assert_eq!(runs_of(&h, "fifo").await.len(), 1, "nothing started yet");

    let r = h
        .post(
            &format!("/v1/interrupts/{int_id}/resume"),
            json!({ "value": true }),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);

    // Every pending run starts, in order, each after the one before ended.
    let mut done = Value::Null;
    for _ in 0..500 {
        done = h.get("/v1/jobs/fifo").await.body;
        if done["run_id"] == ids[2].as_str() && done["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["values"]["log"],
        json!(["hold", "released", "a", "ran:a", "b", "ran:b", "c", "ran:c"]),
        "each input applied after the run before it ended, FIFO"
    );
    assert_eq!(done["pending"], json!([]));
    let runs = runs_of(&h, "fifo").await;
    let run_ids: Vec<String> = runs.iter().map(|r| r.run_id.to_string()).collect();
    assert_eq!(run_ids[1..], ids[..], "the pending runs kept their run ids");
    assert!(runs.iter().all(|r| r.status.is_terminal()));
    // Each run executed its node once (the held one twice: before and after the resume).
    assert_eq!(counts.get("work"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_validates_now_and_reject_counts_pending_runs() {
    let dir = tempfile::tempdir().unwrap();
    let h = server(&dir, Counts::new()).await;
    held(&h, "busy").await;

    // Bad input: 400 at once, nothing stored.
    let r = h
        .post(
            "/v1/jobs",
            json!({
                "graph": "hold", "thread_id": "busy", "input": { "n": "not a number" },
                "multitask_strategy": "enqueue",
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.code(), "invalid_input");
    let r = h
        .post(
            "/v1/jobs",
            json!({
                "graph": "hold", "thread_id": "busy", "interrupt_before": ["nope"],
                "multitask_strategy": "enqueue",
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = h
        .post(
            "/v1/jobs",
            json!({ "graph": "nope", "thread_id": "busy", "multitask_strategy": "enqueue" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = h
        .post(
            "/v1/jobs",
            json!({ "graph": "hold", "thread_id": "busy", "multitask_strategy": "later" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(h.store.pending_runs(&tid("busy")).await.unwrap().is_empty());
    assert_eq!(h.get("/v1/jobs/busy").await.body["pending"], json!([]));

    // `reject` (the default) on a thread with a pending run: 409 naming the count.
    let r = enqueue(&h, "busy", "x").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    for strategy in [json!(null), json!("reject")] {
        let r = h
            .post(
                "/v1/jobs",
                json!({ "graph": "hold", "thread_id": "busy", "multitask_strategy": strategy }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
        assert_eq!(r.code(), "run_active");
        assert_eq!(r.body["error"]["details"]["pending"], 1, "{}", r.text);
    }
    assert_eq!(h.store.pending_runs(&tid("busy")).await.unwrap().len(), 1);

    // On a free thread `enqueue` starts at once, like `reject`.
    let r = enqueue(&h, "free", "now").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.body["status"], "queued", "{}", r.text);
    let job = h.settle("free").await;
    assert_eq!(job["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_drops_pending_runs_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let h = server(&dir, Counts::new()).await;

    // include_pending: the run and its pending runs go; nothing starts.
    held(&h, "drop").await;
    let a = enqueue(&h, "drop", "a").await.body["run_id"].clone();
    let b = enqueue(&h, "drop", "b").await.body["run_id"].clone();
    let r = h
        .post(
            "/v1/jobs/drop/cancel",
            json!({ "reason": "all of it", "include_pending": true }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "cancelled");
    assert_eq!(r.body["dropped_pending"], json!([a, b]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runs_of(&h, "drop").await.len(), 1, "no pending run started");
    assert_eq!(h.get("/v1/jobs/drop").await.body["pending"], json!([]));

    // Without it: the run is cancelled, the pending one starts after it.
    held(&h, "keep").await;
    let next = enqueue(&h, "keep", "k").await.body["run_id"].clone();
    let r = h.post("/v1/jobs/keep/cancel", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["dropped_pending"], json!([]));
    let mut job = Value::Null;
    for _ in 0..500 {
        job = h.get("/v1/jobs/keep").await.body;
        if job["run_id"] == next && job["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["values"]["log"], json!(["hold", "k", "ran:k"]));
}

/// A crash between starting a pending run and removing its row leaves a row whose run
/// exists: the starter removes it without starting anything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_run_already_started_is_not_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let counts = Counts::new();
    let h = server(&dir, counts.clone()).await;
    let r = h
        .post(
            "/v1/jobs",
            json!({ "graph": "hold", "thread_id": "crash", "input": { "log": ["x"] } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job = h.settle("crash").await;
    assert_eq!(job["status"], "completed");
    let started = runs_of(&h, "crash").await.remove(0);

    // The row of the run just started, as if its removal was lost.
    let request = json!({
        "input": { "log": ["again"] }, "priority": 0, "metadata": null, "durability": null,
        "timeout_ms": null, "interrupt_before": [], "interrupt_after": [],
    });
    h.store
        .push_pending(&PendingRun {
            run_id: started.run_id,
            thread_id: tid("crash"),
            position: 0,
            graph: "hold".into(),
            graph_version: "1".into(),
            request: Payload::encode(&request).unwrap(),
            created_at: Timestamp::now(),
        })
        .await
        .unwrap();
    for _ in 0..250 {
        if h.store
            .pending_runs(&tid("crash"))
            .await
            .unwrap()
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        h.store
            .pending_runs(&tid("crash"))
            .await
            .unwrap()
            .is_empty(),
        "the sweep removes the row"
    );
    let runs = runs_of(&h, "crash").await;
    assert_eq!(runs.len(), 1, "not started twice: {runs:?}");
    assert_eq!(runs[0], started);
    assert_eq!(counts.get("work"), 1);
    let job = h.get("/v1/jobs/crash").await.body;
    assert_eq!(job["values"]["log"], json!(["x", "ran:x"]));
}
