//! Cancellation in every state a run can be in — queued, running under a remote worker's
//! lease, interrupted, finished — and in bulk.

use std::time::Duration;

use oris_core::event::EventBody;
use oris_server::{Auth, Server};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;
use crate::workers::{Manual, create, inc_completed, remote_only, run_completed};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_queued_run_never_starts() {
    let dir = tempfile::tempdir().unwrap();
    let h = remote_only(&dir, secs(5), Duration::from_millis(500), |b| b).await;
    create(&h, "q-1", 1).await;
    let r = h
        .post(
            "/v1/jobs/q-1/cancel",
            json!({ "reason": "no longer needed" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "cancelled");
    assert_eq!(r.body["status_detail"]["reason"], "no longer needed");
    assert!(Manual::new(&h, "w1").poll(1, 0).await.attempts.is_empty());
    let job = h.get("/v1/jobs/q-1").await.body;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["waiting_for"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_held_by_a_remote_worker_ends_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let h = remote_only(&dir, secs(5), Duration::from_millis(500), |b| b).await;
    create(&h, "rc-1", 1).await;
    let w = Manual::new(&h, "w1");
    let a = w.poll(1, 0).await.attempts.remove(0);
    let r = h
        .post(
            "/v1/jobs/rc-1/cancel",
            json!({ "reason": "operator said stop" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "cancelled");
    // The worker's next heartbeat and report learn it: lease lost, run cancelled.
    let hb = w.heartbeat(&[a.fence]).await;
    assert_eq!(hb.status, StatusCode::CONFLICT, "{}", hb.text);
    assert_eq!(hb.code(), "lease_lost");
    assert_eq!(hb.body["error"]["details"]["lost"][0]["cancelled"], true);
    let r = w.report(&inc_completed(&a, 2)).await;
    assert_eq!(r.code(), "lease_lost", "{}", r.text);
    // Its ack of the attempt sees the run's end.
    let r = w.ack(&a.fence, "finished").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "cancelled");
    let job = h.get("/v1/jobs/rc-1").await.body;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["status_detail"]["reason"], "operator said stop");
    let events = h.get("/v1/jobs/rc-1/timeline").await.body["events"].clone();
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["run_started", "run_cancelled"], "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_an_interrupted_run_and_of_a_finished_one() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(
        sqlite(&dir).await,
        Server::builder()
            .auth(Auth::Disabled)
            .graph(approval("1", Counts::new()))
            .graph(count(Counts::new(), None)),
    )
    .await;
    h.post(
        "/v1/jobs",
        json!({ "graph": "approval", "thread_id": "i-1" }),
    )
    .await;
    let job = h.settle("i-1").await;
    assert_eq!(job["status"], "interrupted");
    let int_id = job["interrupts"][0]["interrupt_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = h.post("/v1/jobs/i-1/cancel", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "cancelled");
    let r = h
        .post(
            &format!("/v1/interrupts/{int_id}/resume"),
            json!({ "value": { "approve": true } }),
        )
        .await;
    assert_eq!(r.code(), "interrupt_not_pending", "{}", r.text);

    h.post("/v1/jobs", json!({ "graph": "count", "thread_id": "f-1" }))
        .await;
    assert_eq!(h.settle("f-1").await["status"], "completed");
    let r = h.post("/v1/jobs/f-1/cancel", json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "run_not_active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_cancel_by_filter() {
    let dir = tempfile::tempdir().unwrap();
    let h = remote_only(&dir, secs(5), Duration::from_millis(500), |b| b).await;
    let job = |thread: &str, batch: &str| json!({ "graph": "count", "thread_id": thread, "metadata": { "batch": batch } });
    // One run of batch a finishes first (through a manual worker).
    assert_eq!(
        h.post("/v1/jobs", job("done-a", "a")).await.status,
        StatusCode::ACCEPTED
    );
    let w = Manual::new(&h, "w1");
    let a = w.poll(1, 0).await.attempts.remove(0);
    assert_eq!(w.report(&inc_completed(&a, 2)).await.status, StatusCode::OK);
    let end = run_completed(&a, oris_core::id::Seq(2));
    assert_eq!(w.report(&end).await.status, StatusCode::OK);
    assert!(matches!(end.events[0].body, EventBody::RunCompleted));
    for (t, b) in [("a-1", "a"), ("a-2", "a"), ("b-1", "b")] {
        assert_eq!(
            h.post("/v1/jobs", job(t, b)).await.status,
            StatusCode::ACCEPTED
        );
    }

    let r = h
        .post("/v1/jobs/cancel", json!({ "filter": {}, "reason": "x" }))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = h
        .post(
            "/v1/jobs/cancel",
            json!({ "filter": { "graph": "count" }, "limit": 0 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);

    let r = h
        .post(
            "/v1/jobs/cancel",
            json!({
                "filter": { "metadata": { "batch": "a" }, "status": ["queued", "completed"] },
                "reason": "batch a dropped",
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["cancelled"], json!(["a-1", "a-2"]));
    assert_eq!(
        r.body["skipped"],
        json!([{ "thread_id": "done-a", "code": "run_not_active" }])
    );
    for t in ["a-1", "a-2"] {
        let j = h.get(&format!("/v1/jobs/{t}")).await.body;
        assert_eq!(j["status"], "cancelled");
        assert_eq!(j["status_detail"]["reason"], "batch a dropped");
    }
    assert_eq!(h.get("/v1/jobs/b-1").await.body["status"], "queued");
    assert_eq!(h.get("/v1/jobs/done-a").await.body["status"], "completed");

    // Audited once, with the counts.
    let audit = h.get("/v1/audit?action=jobs.cancel_bulk").await.body;
    let ok: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "ok")
        .collect();
    assert_eq!(ok.len(), 1, "{audit}");
    assert_eq!(ok[0]["details"]["cancelled"], 2);
    assert_eq!(ok[0]["details"]["skipped"], 1);
    // No single-cancel entries were written for them.
    let single = h.get("/v1/audit?action=jobs.cancel").await.body;
    assert_eq!(single["entries"], json!([]));
}

/// `POST /v1/jobs/cancel` shadows `GET /v1/jobs/{thread_id}` for a thread named `cancel`
/// (documented); every other route of that thread works, and the list finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_named_cancel_beside_the_bulk_route() {
    let dir = tempfile::tempdir().unwrap();
    let h = remote_only(&dir, secs(5), Duration::from_millis(500), |b| b).await;
    create(&h, "cancel", 1).await;
    assert_eq!(h.get("/v1/jobs/cancel").await.code(), "method_not_allowed");
    let list = h.get("/v1/jobs?thread_id=cancel").await;
    assert_eq!(list.body["jobs"][0]["thread_id"], "cancel", "{}", list.text);
    let t = h.get("/v1/jobs/cancel/timeline").await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.text);
    let r = h.post("/v1/jobs/cancel/cancel", json!({})).await;
    assert_eq!(r.body["status"], "cancelled", "{}", r.text);
}
