//! Two `oris serve` processes on one PostgreSQL database (from `ORIS_TEST_PG_URL`; the test
//! command starts a throwaway server): a run queued through one server that runs no workers
//! is executed by the other, which learns about it from PostgreSQL's notifications — its
//! poll interval is far longer than the test allows — and every run completes exactly once.

mod support;

use std::time::{Duration, Instant};

use oris_testkit::database::TestDatabase;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_queued_through_one_server_starts_at_once_on_another() {
    let db = TestDatabase::create("oris_cli").await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let token = token.to_str().unwrap();
    // The API-only server: records intent, executes nothing.
    let api = Oris::start_url(&db.url, &["--admin-token-file", token, "--workers", "0"]);
    // The worker server: polls the store only every 60 s, so anything it runs within the
    // test's limits was started by a notification.
    let worker = Oris::start_url(
        &db.url,
        &["--admin-token-file", token, "--poll-interval", "60s"],
    );
    api.ready().await;
    worker.ready().await;
    // Give the worker's LISTEN a moment to be in effect before the first notification.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    for i in 0..5 {
        api.create(
            "research",
            &format!("pg-r{i}"),
            json!({"question": "How do durable engines recover"}),
        )
        .await;
    }
    for i in 0..5 {
        let job = api
            .wait_status(&format!("pg-r{i}"), &["completed"], Duration::from_secs(20))
            .await;
        assert_eq!(job["status"], "completed", "{job}");
        let events = api.timeline(&format!("pg-r{i}")).await;
        assert_nothing_repeated(&format!("pg-r{i}"), &events);
        assert_eq!(of_kind(&events, "run_completed").len(), 1);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "the worker server ran the queued runs only after {took:?}"
    );

    // A resume through the API server continues on the worker server, again by notification.
    api.create("expense-approval", "pg-e1", json!({"amount_cents": 90000}))
        .await;
    let job = api
        .wait_status("pg-e1", &["interrupted"], Duration::from_secs(20))
        .await;
    let interrupt = job["interrupts"][0]["interrupt_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = api
        .post(
            &format!("/v1/interrupts/{interrupt}/resume"),
            json!({"value": "approved"}),
        )
        .await;
    assert_eq!(status.as_u16(), 202);
    let job = api
        .wait_status("pg-e1", &["completed"], Duration::from_secs(20))
        .await;
    assert_eq!(job["values"]["decision"], "approved", "{job}");

    worker.terminate();
    api.terminate();
    drop((api, worker));
    db.drop_it().await;
}
