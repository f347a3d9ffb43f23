//! The remote worker protocol driven by hand (a "manual worker" speaking HTTP): poll,
//! report, heartbeat, ack, and the ways a lease is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use oris_core::event::{Boundary, Event, EventBody, Payload};
use oris_core::id::{CheckpointId, Seq, Timestamp};
use oris_core::protocol::{Attempt, PROTOCOL_VERSION, PollResponse, Report};
use oris_core::status::RunStatus;
use oris_core::store::{Commit, Fence, RunWrite};
use oris_server::{Auth, Server};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::*;

/// A worker speaking the protocol by hand.
pub struct Manual<'a> {
    pub h: &'a Harness,
    pub id: String,
}

impl<'a> Manual<'a> {
    pub fn new(h: &'a Harness, id: &str) -> Self {
        Manual { h, id: id.into() }
    }

    pub async fn poll_as(&self, graphs: &[(&str, &str)], max: u32, wait_ms: u64) -> Reply {
        let graphs: Vec<Value> = graphs
            .iter()
            .map(|(n, v)| json!({ "name": n, "version": v }))
            .collect();
        self.h
            .post(
                "/v1/workers/poll",
                json!({
                    "worker_id": self.id, "protocol": PROTOCOL_VERSION, "graphs": graphs,
                    "capacity": 4.max(max), "max": max, "wait_ms": wait_ms,
                }),
            )
            .await
    }

    /// Polls for `count` version 1.
    pub async fn poll(&self, max: u32, wait_ms: u64) -> PollResponse {
        let r = self.poll_as(&[("count", "1")], max, wait_ms).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        serde_json::from_str(&r.text).unwrap()
    }

    pub async fn heartbeat(&self, leases: &[Fence]) -> Reply {
        self.h
            .post(
                &format!("/v1/workers/{}/heartbeat", self.id),
                json!({ "leases": leases }),
            )
            .await
    }

    pub async fn report(&self, commit: &Commit) -> Reply {
        let report = Report {
            fence: commit.fence.unwrap(),
            commit: commit.clone(),
        };
        let r = self
            .h
            .request(
                Method::POST,
                &format!("/v1/workers/{}/report-step", self.id),
            )
            .header("content-type", "application/json")
            .body(serde_json::to_string(&report).unwrap());
        Harness::send(r).await
    }

    pub async fn ack(&self, fence: &Fence, outcome: &str) -> Reply {
        self.h
            .post(
                &format!("/v1/workers/{}/ack", self.id),
                json!({ "fence": fence, "outcome": outcome }),
            )
            .await
    }
}

/// The commit of node `inc` completing with `n` (closing the run's only superstep).
pub fn inc_completed(a: &Attempt, n: i64) -> Commit {
    let head = a.image.thread.head;
    let update = DocUpdate::default().n(n).log(vec![format!("inc by {n}")]);
    Commit {
        thread_id: a.run.thread_id.clone(),
        expected_head: head,
        events: vec![Event {
            seq: head.next(),
            run_id: a.run.run_id,
            at: Timestamp::now(),
            body: EventBody::NodeCompleted {
                superstep: 0,
                task: 0,
                node: "inc".into(),
                attempt: 1,
                update: Payload::encode(&update).unwrap(),
                boundary: Some(Boundary::default()),
            },
        }],
        run: None,
        snapshot: None,
        durability: Default::default(),
        fence: Some(a.fence),
    }
}

/// The commit ending the run as completed after `inc_completed` (head `head`).
pub fn run_completed(a: &Attempt, head: Seq) -> Commit {
    Commit {
        thread_id: a.run.thread_id.clone(),
        expected_head: head,
        events: vec![Event {
            seq: head.next(),
            run_id: a.run.run_id,
            at: Timestamp::now(),
            body: EventBody::RunCompleted,
        }],
        run: Some(RunWrite::SetStatus {
            run_id: a.run.run_id,
            status: RunStatus::Completed {
                checkpoint: CheckpointId(head),
            },
        }),
        snapshot: None,
        durability: Default::default(),
        fence: Some(a.fence),
    }
}

/// A server without embedded workers (remote workers only) with the `count` graph.
pub async fn remote_only(
    dir: &tempfile::TempDir,
    ttl: Duration,
    heartbeat: Duration,
    more: impl FnOnce(oris_server::ServerBuilder) -> oris_server::ServerBuilder,
) -> Harness {
    let store = sqlite(dir).await;
    let server = more(
        Server::builder()
            .store(store.clone())
            .auth(Auth::Disabled)
            .workers(0)
            .graph(count(Counts::new(), None))
            .poll_interval(Duration::from_millis(50))
            .lease(ttl, heartbeat),
    )
    .build()
    .await
    .unwrap();
    Harness::serve(store, server).await
}

pub async fn create(h: &Harness, thread: &str, n: i64) {
    let r = h
        .post(
            "/v1/jobs",
            json!({ "graph": "count", "thread_id": thread, "input": { "n": n } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
}

async fn timeline_len(h: &Harness, thread: &str) -> usize {
    let r = h
        .get(&format!("/v1/jobs/{thread}/timeline?limit=1000"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["events"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_worker_executes_a_run_through_the_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let h = remote_only(
        &dir,
        Duration::from_secs(5),
        Duration::from_millis(500),
        |b| b,
    )
    .await;
    create(&h, "m-1", 1).await;
    // No executor has the version yet: the job says so.
    let job = h.get("/v1/jobs/m-1").await.body;
    assert_eq!(job["status"], "queued");
    assert_eq!(
        job["waiting_for"], "no worker has graph `count` version `1`",
        "{job}"
    );

    let w = Manual::new(&h, "w1");
    let poll = w.poll(2, 0).await;
    assert_eq!(poll.lease_ttl_ms, 5000);
    assert_eq!(poll.heartbeat_ms, 500);
    assert_eq!(poll.attempts.len(), 1);
    let a = &poll.attempts[0];
    assert_eq!(a.fence.epoch, 1);
    assert_eq!(a.attempt_id, format!("{}:1", a.run.run_id));
    assert_eq!(a.run.lease.as_ref().unwrap().worker_id, "w1");
    assert_eq!(a.image.thread.thread_id.as_str(), "m-1");
    assert_eq!(a.image.events.len(), 1);
    assert!(matches!(
        a.image.events[0].body,
        EventBody::RunStarted { .. }
    ));
    assert_eq!(a.image.runs[0].run_id, a.run.run_id);
    // Nothing else to take.
    assert!(w.poll(2, 0).await.attempts.is_empty());

    let job = h.get("/v1/jobs/m-1").await.body;
    assert_eq!(job["status"], "running");
    assert_eq!(job["lease"]["worker_id"], "w1");
    assert_eq!(job["waiting_for"], Value::Null);
    let workers = h.get("/v1/workers").await;
    assert_eq!(workers.status, StatusCode::OK, "{}", workers.text);
    let w1 = &workers.body["workers"][0];
    assert_eq!(w1["worker_id"], "w1");
    assert_eq!(w1["state"], "active");
    assert_eq!(w1["capacity"], 4);
    assert_eq!(w1["graphs"], json!([{ "name": "count", "version": "1" }]));
    assert_eq!(w1["leases"][0]["run_id"], a.run.run_id.to_string());

    // A heartbeat renews the lease.
    let before = a.expires_at;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let hb = w.heartbeat(&[a.fence]).await;
    assert_eq!(hb.status, StatusCode::OK, "{}", hb.text);
    assert_eq!(hb.body["lost"], json!([]));
    let renewed: Timestamp =
        serde_json::from_value(hb.body["renewed"][0]["expires_at"].clone()).unwrap();
    assert!(renewed > before);

    // Another worker can neither report nor ack this attempt: nothing is written.
    let intruder = Manual::new(&h, "w2");
    let step = inc_completed(a, 2);
    let r = intruder.report(&step).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "lease_lost");
    assert_eq!(timeline_len(&h, "m-1").await, 1);
    let r = intruder.ack(&a.fence, "released").await;
    assert_eq!(r.code(), "lease_lost", "{}", r.text);
    assert_eq!(h.get("/v1/jobs/m-1").await.body["lease"]["worker_id"], "w1");

    // The step lands once, even when reported twice (an answer lost on the way).
    let r = w.report(&step).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({ "head": 2, "replayed": false }));
    let r = w.report(&step).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({ "head": 2, "replayed": true }));
    assert_eq!(timeline_len(&h, "m-1").await, 2);
    // Another commit at the same seqs is a conflict.
    let other = inc_completed(a, 3);
    let r = w.report(&other).await;
    assert_eq!(r.code(), "conflict", "{}", r.text);

    let end = run_completed(a, Seq(2));
    let r = w.report(&end).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["head"], 3);
    // The end, reported again after its lease ended with the run: still a replay.
    let r = w.report(&end).await;
    assert_eq!(r.body, json!({ "head": 3, "replayed": true }), "{}", r.text);

    let r = w.ack(&a.fence, "finished").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "completed");
    assert_eq!(r.body["run_id"], a.run.run_id.to_string());
    let again = w.ack(&a.fence, "finished").await;
    assert_eq!(again.body, r.body);

    let job = h.get("/v1/jobs/m-1").await.body;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["values"]["n"], 2);
    assert_eq!(job["values"]["log"], json!(["inc by 2"]));
    assert_eq!(timeline_len(&h, "m-1").await, 3);

    // Reports and acks are audited; polls and heartbeats are not.
    let audit = h.get("/v1/audit?limit=500").await.body;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"workers.report_step"), "{actions:?}");
    assert!(actions.contains(&"workers.ack"), "{actions:?}");
    assert!(
        !actions
            .iter()
            .any(|a| a.contains("poll") || a.contains("heartbeat"))
    );
    let metrics = h.get("/metrics").await.text;
    assert!(metrics.contains("oris_worker_reports_total"), "{metrics}");
    assert!(metrics.contains("oris_lease_lost_total"), "{metrics}");
    assert!(metrics.contains("oris_workers_active 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_or_report_after_expiry_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let h = remote_only(
        &dir,
        Duration::from_millis(300),
        Duration::from_millis(100),
        |b| b,
    )
    .await;
    create(&h, "exp-1", 1).await;
    let w = Manual::new(&h, "w1");
    let a = w.poll(1, 0).await.attempts.remove(0);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let r = w.heartbeat(&[a.fence]).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "lease_lost");
    assert_eq!(r.body["error"]["details"]["lost"][0]["cancelled"], false);
    let r = w.report(&inc_completed(&a, 2)).await;
    assert_eq!(r.code(), "lease_lost", "{}", r.text);
    assert_eq!(timeline_len(&h, "exp-1").await, 1);
    // The expired holder cannot hand it back either; the run is claimable again.
    assert_eq!(w.ack(&a.fence, "released").await.code(), "lease_lost");
    let again = w.poll(1, 0).await;
    assert_eq!(again.attempts.len(), 1);
    assert_eq!(again.attempts[0].fence.epoch, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_report_after_another_worker_claimed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let h = remote_only(
        &dir,
        Duration::from_millis(300),
        Duration::from_millis(100),
        |b| b,
    )
    .await;
    create(&h, "late-1", 1).await;
    let slow = Manual::new(&h, "slow");
    let fast = Manual::new(&h, "fast");
    let a1 = slow.poll(1, 0).await.attempts.remove(0);
    // The slow worker stalls past its lease; the other claims the run (the long-poll
    // returns once the lease has expired).
    let a2 = fast.poll(1, 5000).await.attempts.remove(0);
    assert_eq!(a2.fence.epoch, 2);
    assert_eq!(a2.run.run_id, a1.run.run_id);
    let step = inc_completed(&a2, 20);
    assert_eq!(fast.report(&step).await.status, StatusCode::OK);
    assert_eq!(
        fast.report(&run_completed(&a2, Seq(2))).await.status,
        StatusCode::OK
    );
    // The stalled worker wakes up and reports what it did.
    let r = slow.report(&inc_completed(&a1, 10)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "lease_lost");
    assert_eq!(
        r.body["error"]["details"]["reason"],
        "superseded by a newer claim"
    );
    assert_eq!(slow.ack(&a1.fence, "finished").await.code(), "lease_lost");
    assert_eq!(slow.heartbeat(&[a1.fence]).await.code(), "lease_lost");
    let job = h.get("/v1/jobs/late-1").await.body;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["values"]["n"], 20, "{job}");
    assert_eq!(timeline_len(&h, "late-1").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_go_only_to_workers_with_their_graph_version() {
    let dir = tempfile::tempdir().unwrap();
    let h = remote_only(
        &dir,
        Duration::from_secs(5),
        Duration::from_millis(500),
        |b| b,
    )
    .await;
    create(&h, "route-1", 1).await;
    let v2 = Manual::new(&h, "v2-only");
    let r = v2.poll_as(&[("count", "2"), ("other", "1")], 1, 0).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["attempts"], json!([]));
    // An active worker exists, but not for this version.
    let job = h.get("/v1/jobs/route-1").await.body;
    assert_eq!(
        job["waiting_for"],
        "no worker has graph `count` version `1`"
    );
    let v1 = Manual::new(&h, "v1");
    let got = v1.poll(1, 0).await;
    assert_eq!(got.attempts.len(), 1);
    assert_eq!(got.attempts[0].run.graph_version, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_clears_an_expired_lease_without_any_poll() {
    let dir = tempfile::tempdir().unwrap();
    let h = remote_only(
        &dir,
        Duration::from_millis(300),
        Duration::from_millis(100),
        |b| b,
    )
    .await;
    create(&h, "reap-1", 1).await;
    let a = Manual::new(&h, "w1").poll(1, 0).await.attempts.remove(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let run = h.store.run(a.run.run_id).await.unwrap().unwrap();
        if run.lease.is_none() {
            assert_eq!(run.lease_epoch, 1, "the epoch stays");
            assert!(run.ready_at.is_some(), "claimable again");
            break;
        }
        assert!(Instant::now() < deadline, "the lease was never reaped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let job = h.get("/v1/jobs/reap-1").await.body;
    assert_eq!(job["lease"], Value::Null);
    let workers = h.get("/v1/workers").await.body;
    assert_eq!(workers["workers"][0]["leases"], json!([]));
    let metrics = h.get("/metrics").await.text;
    assert!(
        metrics.contains("oris_leases_expired_total{graph=\"count\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_poll_gets_a_run_created_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let h = remote_only(
        &dir,
        Duration::from_secs(5),
        Duration::from_millis(500),
        |b| {
            // Only wake-ups can bring the run in time.
            b.poll_interval(Duration::from_secs(30))
        },
    )
    .await;
    let w = Manual::new(&h, "w1");
    let started = Instant::now();
    let (got, ()) = tokio::join!(w.poll(1, 10_000), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        create(&h, "wake-1", 1).await;
    });
    assert_eq!(got.attempts.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
    // With nothing to take, a poll answers empty at its deadline.
    let started = Instant::now();
    let none = w.poll(1, 300).await;
    assert!(none.attempts.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_attempt_is_claimable_at_once_and_acks_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let h = remote_only(
        &dir,
        Duration::from_secs(5),
        Duration::from_millis(500),
        |b| b,
    )
    .await;
    create(&h, "rel-1", 1).await;
    let w1 = Manual::new(&h, "w1");
    let a = w1.poll(1, 0).await.attempts.remove(0);
    let r = w1.ack(&a.fence, "released").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "running");
    assert_eq!(w1.ack(&a.fence, "released").await.body, r.body);
    let b = Manual::new(&h, "w2").poll(1, 0).await.attempts.remove(0);
    assert_eq!(b.fence.epoch, 2);
    // A worker that says it finished but reported nothing hands the run back.
    let w2 = Manual::new(&h, "w2");
    let r = w2.ack(&b.fence, "finished").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "running");
    assert_eq!(h.get("/v1/jobs/rel-1").await.body["lease"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors() {
    let dir = tempfile::tempdir().unwrap();
    let h = remote_only(
        &dir,
        Duration::from_secs(5),
        Duration::from_millis(500),
        |b| b,
    )
    .await;
    let base = json!({
        "worker_id": "w1", "protocol": PROTOCOL_VERSION,
        "graphs": [{ "name": "count", "version": "1" }], "capacity": 2, "max": 1,
    });
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let r = h
        .post(
            "/v1/workers/poll",
            with("protocol", json!(PROTOCOL_VERSION + 1)),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "protocol_mismatch");
    for (k, v) in [
        ("worker_id", json!("")),
        ("worker_id", json!("has space")),
        ("graphs", json!([])),
        ("capacity", json!(0)),
        ("capacity", json!(2000)),
        ("max", json!(3)),
        ("max", json!(0)),
        ("graphs", json!("count")),
    ] {
        let r = h.post("/v1/workers/poll", with(k, v.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{k}={v}: {}", r.text);
        assert_eq!(r.code(), "invalid_input");
    }
    // A worker that never polled has no heartbeat.
    let r = h
        .post("/v1/workers/ghost/heartbeat", json!({ "leases": [] }))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.code(), "worker_not_found");
    let r = h
        .post("/v1/workers/w1/report-step", json!({ "fence": 1 }))
        .await;
    assert_eq!(r.code(), "invalid_input", "{}", r.text);
    let r = h.post("/v1/workers/w1/ack", json!({})).await;
    assert_eq!(r.code(), "invalid_input", "{}", r.text);
    let r = h.post("/v1/workers/ghost/stop", json!({})).await;
    assert_eq!(r.code(), "worker_not_found", "{}", r.text);

    // A registered worker announces its stop.
    assert_eq!(
        h.post("/v1/workers/poll", base.clone()).await.status,
        StatusCode::OK
    );
    let r = h.post("/v1/workers/w1/stop", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["state"], "stopped");
    assert!(r.body["stopped_at"].is_string());
    assert_eq!(
        h.get("/v1/workers").await.body["workers"][0]["state"],
        "stopped"
    );
    // Polling again registers it anew.
    assert_eq!(
        h.post("/v1/workers/poll", base).await.status,
        StatusCode::OK
    );
    assert_eq!(
        h.get("/v1/workers").await.body["workers"][0]["state"],
        "active"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_role_may_use_the_protocol_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let h = Harness::start(
        store,
        Server::builder()
            .workers(0)
            .graph(count(Counts::new(), None)),
    )
    .await;
    let mut tokens = std::collections::HashMap::new();
    for role in ["worker", "viewer", "operator"] {
        let r = h
            .post("/v1/keys", json!({ "name": role, "role": role }))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        tokens.insert(role, r.body["token"].as_str().unwrap().to_owned());
    }
    let worker = h.with_token(&tokens["worker"]);
    let viewer = h.with_token(&tokens["viewer"]);
    let operator = h.with_token(&tokens["operator"]);
    assert_eq!(
        Manual::new(&worker, "w1")
            .poll_as(&[("count", "1")], 1, 0)
            .await
            .status,
        StatusCode::OK
    );
    for who in [&viewer, &operator] {
        let r = Manual::new(who, "w1")
            .poll_as(&[("count", "1")], 1, 0)
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    }
    let r = worker
        .post("/v1/jobs", json!({ "graph": "count", "thread_id": "t" }))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        worker.get("/v1/workers").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(viewer.get("/v1/workers").await.status, StatusCode::OK);
    // The admin may use the protocol too.
    assert_eq!(
        Manual::new(&h, "admin-w")
            .poll_as(&[("count", "1")], 1, 0)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_limit_holds_for_remote_polls() {
    let dir = tempfile::tempdir().unwrap();
    let h = remote_only(
        &dir,
        Duration::from_secs(5),
        Duration::from_millis(500),
        |b| b.graph_limit("count", 1),
    )
    .await;
    for t in ["gl-1", "gl-2", "gl-3"] {
        create(&h, t, 1).await;
    }
    let w1 = Manual::new(&h, "w1");
    let w2 = Manual::new(&h, "w2");
    let a = w1.poll(3, 0).await.attempts;
    assert_eq!(a.len(), 1, "one run of `count` at a time");
    assert!(w2.poll(3, 0).await.attempts.is_empty());
    // The run ends: room for the next one.
    let a = &a[0];
    assert_eq!(w1.report(&inc_completed(a, 2)).await.status, StatusCode::OK);
    assert_eq!(
        w1.report(&run_completed(a, Seq(2))).await.status,
        StatusCode::OK
    );
    assert_eq!(w2.poll(3, 0).await.attempts.len(), 1);
    assert!(w1.poll(3, 0).await.attempts.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_limit_holds_for_the_pool_and_polls_together() {
    let dir = tempfile::tempdir().unwrap();
    let counts = Counts::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let h = Harness::start(
        sqlite(&dir).await,
        Server::builder()
            .auth(Auth::Disabled)
            .graph(count(counts.clone(), Some(gate.clone())))
            .graph_limit("count", 2),
    )
    .await;
    for i in 0..5 {
        create(&h, &format!("p-{i}"), 1).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while counts.get("inc") < 2 {
        assert!(Instant::now() < deadline, "the pool did not start two runs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Several claim rounds later, still two; a remote worker gets nothing either.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(counts.get("inc"), 2);
    assert!(Manual::new(&h, "w1").poll(2, 0).await.attempts.is_empty());
    gate.add_permits(5);
    for i in 0..5 {
        assert_eq!(h.settle(&format!("p-{i}")).await["status"], "completed");
    }
    assert_eq!(counts.get("inc_done"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_jobs_beyond_max_queued_is_refused_until_the_queue_drains() {
    let dir = tempfile::tempdir().unwrap();
    let h = remote_only(
        &dir,
        Duration::from_secs(5),
        Duration::from_millis(500),
        |b| b.max_queued(2),
    )
    .await;
    create(&h, "mq-1", 1).await;
    create(&h, "mq-2", 1).await;
    let third = || {
        h.request(Method::POST, "/v1/jobs")
            .header("idempotency-key", "mq-3-key")
            .json(&json!({ "graph": "count", "thread_id": "mq-3" }))
    };
    let r = Harness::send(third()).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.code(), "queue_full");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.body["error"]["details"]["max_queued"], 2);
    assert_eq!(h.get("/v1/jobs/mq-3").await.code(), "thread_not_found");
    // A worker takes one; once the count is read again, the same request (same key) is
    // accepted — the refusal was not kept as the key's answer.
    assert_eq!(Manual::new(&h, "w1").poll(1, 0).await.attempts.len(), 1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = Harness::send(third()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert!(!r.headers.contains_key("idempotent-replayed"));
}
