//! Load shedding (503 `overloaded`) and per-caller rate limits (429 `rate_limited`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use oris_core::store::Store;
use oris_server::{Auth, Server};
use oris_testkit::counting::CountingStore;
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::common::*;

fn retry_after(r: &Reply) -> u64 {
    r.headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {}", r.text))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_beyond_max_in_flight_are_shed_but_health_and_long_polls_are_not() {
    let dir = tempfile::tempdir().unwrap();
    // `thread` reads of threads named `parked…` wait until the gate closes: requests reading
    // them stay in flight as long as the test wants.
    let gate = Arc::new(Semaphore::new(0));
    let parked_reads = Arc::new(AtomicUsize::new(0));
    let store: Arc<dyn Store> = Arc::new(CountingStore::new(sqlite(&dir).await).with_pause({
        let (gate, parked_reads) = (gate.clone(), parked_reads.clone());
        move |method, thread| {
            if method != "thread" || !thread.is_some_and(|t| t.as_str().starts_with("parked")) {
                return None;
            }
            parked_reads.fetch_add(1, Ordering::AcqRel);
            let gate = gate.clone();
            Some(Box::pin(async move {
                let _ = gate.acquire().await;
            }))
        }
    }));
    let h = Harness::start(
        store,
        Server::builder()
            .graph(count(Counts::new(), None))
            .max_in_flight(2),
    )
    .await;

    // Two requests parked in the store hold both slots.
    let parked: Vec<_> = (0..2)
        .map(|i| {
            let r = h.request(
                reqwest::Method::GET,
                &format!("/v1/jobs/parked-{i}/timeline"),
            );
            tokio::spawn(Harness::send(r))
        })
        .collect();
    let t0 = Instant::now();
    while parked_reads.load(Ordering::Acquire) < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "requests never parked"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A third is refused at once, reads and writes alike.
    let r = h.get("/v1/jobs").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.code(), "overloaded");
    assert_eq!(retry_after(&r), 1);
    assert!(
        r.body["error"]["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    let r = h
        .post("/v1/jobs", json!({ "graph": "count", "thread_id": "shed" }))
        .await;
    assert_eq!(r.code(), "overloaded", "{}", r.text);
    // Health, readiness and metrics still answer; so do long-polls (their own answer:
    // the thread does not exist).
    for path in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"] {
        assert_eq!(h.get(path).await.status, StatusCode::OK, "{path}");
    }
    let r = h.get("/v1/jobs/nothing/wait?timeout=1s").await;
    assert_ne!(r.code(), "overloaded", "{}", r.text);

    // Once the parked requests finish, calls go through again.
    gate.close();
    for p in parked {
        let r = p.await.unwrap();
        assert_ne!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    }
    assert_eq!(h.get("/v1/jobs").await.status, StatusCode::OK);
    let r = h
        .post(
            "/v1/jobs",
            json!({ "graph": "count", "thread_id": "after" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);

    // Shed calls are counted, not audited (no store write under overload).
    let metrics = h.get("/metrics").await.text;
    let shed: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("http_requests_rejected_total") && l.contains("reason=\"overloaded\"")
        })
        .collect();
    assert!(
        shed.iter()
            .any(|l| l.contains("route=\"/v1/jobs\"") && l.ends_with(" 2")),
        "{metrics}"
    );
    let audit = h.get("/v1/audit?action=jobs.create").await;
    let outcomes: Vec<&str> = audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["ok"], "{}", audit.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_long_polls_have_their_own_limit_held_while_the_stream_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(
        sqlite(&dir).await,
        Server::builder()
            .graph(approval("1", Counts::new()))
            .max_streams(1)
            .max_in_flight(1),
    )
    .await;
    let r = h
        .post("/v1/jobs", json!({ "graph": "approval", "thread_id": "s" }))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    h.until_status("s", "interrupted").await;

    // An interrupted run keeps its stream open: it holds the one place.
    let open = h
        .request(reqwest::Method::GET, "/v1/jobs/s/stream")
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    let r = tokio::time::timeout(Duration::from_secs(5), h.get("/v1/jobs/s/stream"))
        .await
        .expect("a second stream was admitted");
    assert_eq!(r.code(), "overloaded", "{}", r.text);
    assert_eq!(retry_after(&r), 1);
    let r = h.get("/v1/jobs/s/wait?timeout=1s").await;
    assert_eq!(r.code(), "overloaded", "{}", r.text);
    // Other calls are counted apart (max_in_flight 1 is free).
    assert_eq!(h.get("/v1/jobs/s").await.status, StatusCode::OK);

    // Cancelling ends the stream, which frees its place.
    let c = h.post("/v1/jobs/s/cancel", json!({})).await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.text);
    let rest = tokio::time::timeout(Duration::from_secs(10), open.text())
        .await
        .expect("the stream ends after the run's end")
        .unwrap();
    assert!(rest.contains("run_cancelled"), "{rest}");
    let mut freed = false;
    for _ in 0..200 {
        let r = h.get("/v1/jobs/s/wait?timeout=1s").await;
        if r.status == StatusCode::OK {
            assert_eq!(r.body["job"]["status"], "cancelled", "{}", r.text);
            freed = true;
            break;
        }
        assert_eq!(r.code(), "overloaded", "{}", r.text);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(freed, "the ended stream still holds its place");
    // A long-poll's place is freed when it returns: the next one is admitted.
    assert_eq!(
        h.get("/v1/jobs/s/wait?timeout=1s").await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_has_its_own_token_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(
        sqlite(&dir).await,
        Server::builder()
            .graph(count(Counts::new(), None))
            .rate_limit(2, 2),
    )
    .await;
    let r = h
        .post("/v1/keys", json!({ "name": "v", "role": "viewer" }))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let viewer = h.with_token(r.body["token"].as_str().unwrap());

    // A burst of two, then 429 with the wait until the next token.
    assert_eq!(viewer.get("/v1/graphs").await.status, StatusCode::OK);
    assert_eq!(viewer.get("/v1/graphs").await.status, StatusCode::OK);
    let r = viewer.get("/v1/graphs").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.code(), "rate_limited");
    let wait = retry_after(&r);
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    assert_eq!(r.body["error"]["details"]["retry_after_seconds"], wait);

    // Another key is unaffected; public routes are never limited.
    assert_eq!(h.get("/v1/graphs").await.status, StatusCode::OK);
    for _ in 0..5 {
        assert_eq!(h.get("/healthz").await.status, StatusCode::OK);
    }

    // After the wait, the key works again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(viewer.get("/v1/graphs").await.status, StatusCode::OK);

    let metrics = h.get("/metrics").await.text;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("http_requests_rejected_total")
                && l.contains("reason=\"rate_limited\"")
                && l.contains("route=\"/v1/graphs\"")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_the_limit_is_per_client_ip() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(
        sqlite(&dir).await,
        Server::builder()
            .auth(Auth::Disabled)
            .graph(count(Counts::new(), None))
            .rate_limit(1, 1),
    )
    .await;
    assert_eq!(h.get("/v1/graphs").await.status, StatusCode::OK);
    let r = h.get("/v1/graphs").await;
    assert_eq!(r.code(), "rate_limited", "{}", r.text);
    assert!(retry_after(&r) >= 1);
}

#[tokio::test]
async fn a_zero_rate_limit_is_a_configuration_error() {
    for (rate, burst) in [(0, 5), (5, 0)] {
        let e = Server::builder()
            .store(Arc::new(oris_core::store::MemoryStore::new()))
            .rate_limit(rate, burst)
            .build()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("rate limit"), "{e}");
    }
}
