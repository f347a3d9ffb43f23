//! SSE: stored events first, then live ones, no gaps or duplicates, resumable, ends after
//! the terminal event.

use std::time::Duration;

use futures_util::StreamExt;
use oris_server::{Auth, Server};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

/// Reads SSE messages (id, event, data) until `stop` says so or the stream ends.
async fn read_sse(
    resp: reqwest::Response,
    mut stop: impl FnMut(&(u64, String, Value)) -> bool,
) -> (Vec<(u64, String, Value)>, bool) {
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(20), body.next())
            .await
            .expect("stream stalled");
        let Some(chunk) = chunk else {
            return (out, true);
        };
        buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut ev, mut data) = (None, None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<u64>().unwrap());
                } else if let Some(v) = line.strip_prefix("event:") {
                    ev = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str::<Value>(v.trim()).unwrap());
                }
            }
            if let (Some(id), Some(ev), Some(data)) = (id, ev, data) {
                let msg = (id, ev, data);
                let done = stop(&msg);
                out.push(msg);
                if done {
                    return (out, false);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_replays_stored_then_live_events_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let counts = Counts::new();
    let h = Harness::start(
        sqlite(&dir).await,
        Server::builder()
            .auth(Auth::Disabled)
            .graph(approval("1", counts)),
    )
    .await;
    h.post(
        "/v1/jobs",
        json!({ "graph": "approval", "thread_id": "s1" }),
    )
    .await;
    let resp = h
        .request(reqwest::Method::GET, "/v1/jobs/s1/stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let (first, ended) = read_sse(resp, |m| m.1 == "run_suspended").await;
    assert!(!ended);
    assert_eq!(first[0].0, 1);
    assert_eq!(first[0].1, "run_started");
    let raised = first
        .iter()
        .find(|m| m.1 == "interrupt_raised")
        .expect("interrupt event");
    let int_id = raised.2["data"]["interrupt_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(raised.2["data"]["payload"]["question"], "approve?");
    assert_eq!(raised.2["node"], "ask");
    let last_seen = first.last().unwrap().0;

    // Reconnect after the last seen event, then resume: live events continue the sequence
    // and the stream ends after run_completed.
    let resp = h
        .request(reqwest::Method::GET, "/v1/jobs/s1/stream")
        .header("Last-Event-ID", last_seen.to_string())
        .send()
        .await
        .unwrap();
    let answer = {
        let h2 = h.with_token("unused");
        let id = int_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            h2.post(
                &format!("/v1/interrupts/{id}/resume"),
                json!({ "value": { "approve": true } }),
            )
            .await
        })
    };
    let (rest, ended) = read_sse(resp, |_| false).await;
    assert_eq!(answer.await.unwrap().status, StatusCode::ACCEPTED);
    assert!(ended, "the stream ends after the terminal event");
    assert_eq!(rest.last().unwrap().1, "run_completed");
    let seqs: Vec<u64> = first.iter().chain(&rest).map(|m| m.0).collect();
    let expect: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expect, "no gaps, no duplicates");
    // Data matches the stored timeline.
    let tl = h.get("/v1/jobs/s1/timeline?limit=1000").await;
    let stored: Vec<Value> = tl.body["events"].as_array().unwrap().clone();
    let streamed: Vec<Value> = first.iter().chain(&rest).map(|m| m.2.clone()).collect();
    assert_eq!(stored, streamed);

    // A finished thread: all events, then the end; reconnecting at the end ends at once.
    let resp = h
        .request(reqwest::Method::GET, "/v1/jobs/s1/stream")
        .send()
        .await
        .unwrap();
    let (all, ended) = read_sse(resp, |_| false).await;
    assert!(ended);
    assert_eq!(all.len(), seqs.len());
    let resp = h
        .request(
            reqwest::Method::GET,
            &format!("/v1/jobs/s1/stream?after={}", seqs.len()),
        )
        .send()
        .await
        .unwrap();
    let (none, ended) = read_sse(resp, |_| false).await;
    assert!(ended && none.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_times_out_with_the_current_view() {
    let dir = tempfile::tempdir().unwrap();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let h = Harness::start(
        sqlite(&dir).await,
        Server::builder()
            .auth(Auth::Disabled)
            .graph(count(Counts::new(), Some(gate.clone()))),
    )
    .await;
    h.post("/v1/jobs", json!({ "graph": "count", "thread_id": "w1" }))
        .await;
    let r = h.get("/v1/jobs/w1/wait?timeout=300ms").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["timed_out"], true);
    assert!(matches!(
        r.body["job"]["status"].as_str(),
        Some("queued" | "running")
    ));
    assert_eq!(
        h.get("/v1/jobs/w1/wait?timeout=61s").await.code(),
        "invalid_input"
    );
    gate.add_permits(1);
    let r = h.get("/v1/jobs/w1/wait?timeout=10s").await;
    assert_eq!(r.body["timed_out"], false);
    assert_eq!(r.body["job"]["status"], "completed");
}
