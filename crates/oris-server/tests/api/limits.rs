//! Load shedding (503 `overloaded`) and per-caller rate limits (429 `rate_limited`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use oris_core::event::{Event, Payload};
use oris_core::id::{InterruptId, RunId, Seq, ThreadId, Timestamp};
use oris_core::store::{
    Answer, ApiKeyRecord, AuditFilter, AuditRecord, ClaimRequest, Commit, Delivery, Fence,
    IdempotencyRecord, InterruptFilter, InterruptRecord, Receipt, Reservation, Result, RunFilter,
    RunRecord, Snapshot, Store, StoredResponse, ThreadRecord,
};
use oris_server::{Auth, Server};
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::common::*;

/// A store whose `thread` reads of threads named `parked…` wait until the gate closes:
/// requests reading them stay in flight as long as the test wants.
#[derive(Debug)]
struct GateStore {
    inner: Arc<dyn Store>,
    gate: Semaphore,
    parked: AtomicUsize,
}

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
    let gated = Arc::new(GateStore {
        inner: sqlite(&dir).await,
        gate: Semaphore::new(0),
        parked: AtomicUsize::new(0),
    });
    let store: Arc<dyn Store> = gated.clone();
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
    while gated.parked.load(Ordering::Acquire) < 2 {
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
    gated.gate.close();
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

#[async_trait]
impl Store for GateStore {
    async fn commit(&self, commit: Commit) -> Result<Receipt> {
        self.inner.commit(commit).await
    }
    async fn thread(&self, thread_id: &ThreadId) -> Result<Option<ThreadRecord>> {
        if thread_id.as_str().starts_with("parked") {
            self.parked.fetch_add(1, Ordering::AcqRel);
            let _ = self.gate.acquire().await;
        }
        self.inner.thread(thread_id).await
    }
    async fn run(&self, run_id: RunId) -> Result<Option<RunRecord>> {
        self.inner.run(run_id).await
    }
    async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        self.inner.runs(filter).await
    }
    async fn due_runs(&self, now: Timestamp, limit: usize) -> Result<Vec<RunRecord>> {
        self.inner.due_runs(now, limit).await
    }
    async fn events(&self, thread_id: &ThreadId, after: Seq, limit: usize) -> Result<Vec<Event>> {
        self.inner.events(thread_id, after, limit).await
    }
    async fn snapshot(&self, thread_id: &ThreadId, at_or_before: Seq) -> Result<Option<Snapshot>> {
        self.inner.snapshot(thread_id, at_or_before).await
    }
    async fn delete_snapshots(&self, thread_id: &ThreadId) -> Result<u64> {
        self.inner.delete_snapshots(thread_id).await
    }
    async fn interrupt(&self, interrupt_id: InterruptId) -> Result<Option<InterruptRecord>> {
        self.inner.interrupt(interrupt_id).await
    }
    async fn interrupts(&self, thread_id: &ThreadId) -> Result<Vec<InterruptRecord>> {
        self.inner.interrupts(thread_id).await
    }
    async fn answer_interrupt(
        &self,
        interrupt_id: InterruptId,
        value: Payload,
        at: Timestamp,
    ) -> Result<(Answer, InterruptRecord)> {
        self.inner.answer_interrupt(interrupt_id, value, at).await
    }
    async fn deliver(
        &self,
        thread_id: &ThreadId,
        name: &str,
        payload: Payload,
        key: Option<String>,
        at: Timestamp,
    ) -> Result<(Delivery, bool)> {
        self.inner.deliver(thread_id, name, payload, key, at).await
    }
    async fn delete_thread(&self, thread_id: &ThreadId) -> Result<()> {
        self.inner.delete_thread(thread_id).await
    }
    async fn prune(&self, thread_id: &ThreadId, base: Event) -> Result<u64> {
        self.inner.prune(thread_id, base).await
    }
    async fn deliveries(&self, thread_id: &ThreadId, pending_only: bool) -> Result<Vec<Delivery>> {
        self.inner.deliveries(thread_id, pending_only).await
    }
    async fn list_interrupts(&self, filter: &InterruptFilter) -> Result<Vec<InterruptRecord>> {
        self.inner.list_interrupts(filter).await
    }
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<RunRecord>> {
        self.inner.claim(request).await
    }
    async fn renew_lease(
        &self,
        fence: &Fence,
        worker_id: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<RunRecord> {
        self.inner.renew_lease(fence, worker_id, now, ttl).await
    }
    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<RunRecord> {
        self.inner.release_lease(fence, now).await
    }
    async fn reserve_idempotency(
        &self,
        candidate: &IdempotencyRecord,
        now: Timestamp,
    ) -> Result<Reservation> {
        self.inner.reserve_idempotency(candidate, now).await
    }
    async fn complete_idempotency(
        &self,
        scope: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<()> {
        self.inner.complete_idempotency(scope, key, response).await
    }
    async fn release_idempotency(&self, scope: &str, key: &str) -> Result<()> {
        self.inner.release_idempotency(scope, key).await
    }
    async fn purge_idempotency(&self, now: Timestamp) -> Result<u64> {
        self.inner.purge_idempotency(now).await
    }
    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        self.inner.create_api_key(key).await
    }
    async fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>> {
        self.inner.api_key(key_id).await
    }
    async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        self.inner.api_keys().await
    }
    async fn revoke_api_key(&self, key_id: &str, at: Timestamp) -> Result<bool> {
        self.inner.revoke_api_key(key_id, at).await
    }
    async fn append_audit(&self, record: &AuditRecord) -> Result<u64> {
        self.inner.append_audit(record).await
    }
    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        self.inner.audit(filter).await
    }
}
