//! `oris serve` killed with SIGKILL, or stopped with SIGTERM, in the middle of running
//! nodes; then started again on the same SQLite file: every run continues, nothing that
//! completed runs again.
//!
//! The servers use a short lease (`--lease 1s`) so that the restart after a SIGKILL does not
//! wait the default 10 s for the dead process's claims to expire.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Oris, assert_nothing_repeated, of_kind, token_file};

const LIMIT: Duration = Duration::from_secs(30);

const FAST_LEASE: [&str; 6] = [
    "--lease",
    "1s",
    "--heartbeat",
    "300ms",
    "--poll-interval",
    "100ms",
];

fn args<'a>(token_file: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--admin-token-file", token_file];
    a.extend(FAST_LEASE);
    a.extend(extra);
    a
}

/// Polls the thread's timeline until `ok` holds for it.
async fn until_timeline(oris: &Oris, thread: &str, what: &str, ok: impl Fn(&[Value]) -> bool) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let events = oris.timeline(thread).await;
        if ok(&events) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{thread}: never {what}: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// Checks a completed batch run: `steps` steps done, in order, each node completion and each
/// recorded step exactly once.
fn check_batch(thread: &str, job: &Value, events: &[Value], steps: u64) {
    assert_eq!(job["status"], "completed", "{thread}: {job}");
    assert_eq!(job["values"]["done"], steps, "{thread}: {job}");
    let expected: Vec<String> = (0..steps).map(|i| format!("item {i}")).collect();
    assert_eq!(job["values"]["log"], json!(expected), "{thread}: {job}");
    assert_nothing_repeated(thread, events);
    assert_eq!(
        of_kind(events, "node_completed").len() as u64,
        steps,
        "{thread}: one completion per step: {events:#?}"
    );
    assert_eq!(
        of_kind(events, "step_recorded").len() as u64,
        steps,
        "{thread}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_restart_continues_every_run_without_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("oris.db");
    let tf = token_file(dir.path());
    let tf = tf.to_str().unwrap();
    let oris = Oris::start(&db, &args(tf, &[]));
    oris.ready().await;

    const BATCHES: usize = 4;
    const STEPS: u64 = 5;
    for i in 0..BATCHES {
        oris.create(
            "batch",
            &format!("batch-{i}"),
            json!({ "steps": STEPS, "delay_ms": 150 }),
        )
        .await;
    }
    oris.create(
        "expense-approval",
        "expense",
        json!({ "amount_cents": 90_000 }),
    )
    .await;
    oris.create(
        "reminder",
        "reminder",
        json!({ "message": "water the plants", "delay_secs": 2 }),
    )
    .await;
    let paused = oris.wait_status("expense", &["interrupted"], LIMIT).await;
    let interrupt = paused["interrupts"][0]["interrupt_id"]
        .as_str()
        .unwrap()
        .to_owned();
    oris.wait_status("reminder", &["waiting"], LIMIT).await;
    // Every batch is half-way: some nodes completed, the next one is running.
    for i in 0..BATCHES {
        until_timeline(&oris, &format!("batch-{i}"), "completed 2 nodes", |ev| {
            of_kind(ev, "node_completed").len() >= 2
        })
        .await;
    }
    let mut running = 0;
    for i in 0..BATCHES {
        let (_, job) = oris.get(&format!("/v1/jobs/batch-{i}")).await;
        if job["status"] == "running" {
            running += 1;
        }
    }
    assert!(running > 0, "no batch was running at the kill");
    oris.kill();

    let oris = Oris::start(&db, &args(tf, &[]));
    oris.ready().await;
    for i in 0..BATCHES {
        let thread = format!("batch-{i}");
        let job = oris
            .wait_status(&thread, &["completed", "failed", "cancelled"], LIMIT)
            .await;
        check_batch(&thread, &job, &oris.timeline(&thread).await, STEPS);
    }
    let reminder = oris
        .wait_status("reminder", &["completed", "failed"], LIMIT)
        .await;
    assert_eq!(
        reminder["values"]["receipt"], "sent `water the plants`",
        "{reminder}"
    );
    assert_nothing_repeated("reminder", &oris.timeline("reminder").await);

    // The interrupted run waited through the crash; it is still resumable.
    let (s, _) = oris
        .post(
            &format!("/v1/interrupts/{interrupt}/resume"),
            json!({ "value": "approved" }),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let done = oris
        .wait_status("expense", &["completed", "failed"], LIMIT)
        .await;
    assert_eq!(done["values"]["decision"], "approved", "{done}");
    let events = oris.timeline("expense").await;
    assert_nothing_repeated("expense", &events);
    assert_eq!(of_kind(&events, "step_recorded").len(), 1, "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_node_finish_and_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("oris.db");
    let tf = token_file(dir.path());
    let tf = tf.to_str().unwrap();
    let mut oris = Oris::start(&db, &args(tf, &["--shutdown-grace", "20s"]));
    oris.ready().await;

    const STEPS: u64 = 3;
    oris.create("batch", "slow", json!({ "steps": STEPS, "delay_ms": 700 }))
        .await;
    // The second node is running: the first completed, its successor took its step.
    until_timeline(&oris, "slow", "completed the first node", |ev| {
        of_kind(ev, "node_completed").len() == 1
    })
    .await;
    let before = oris.timeline("slow").await;
    assert_eq!(of_kind(&before, "node_completed").len(), 1);
    assert_eq!(of_kind(&before, "run_completed").len(), 0);

    let stopping = Instant::now();
    oris.terminate();
    let status = oris
        .wait_exit(Duration::from_secs(15))
        .expect("a stopped server exits within its grace period");
    assert!(
        status.success(),
        "exit status {status:?}: {}",
        oris.stderr()
    );
    // It waited for the node (up to 0.7 s), not for the whole grace period.
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
    let stderr = oris.stderr();
    assert!(stderr.contains("oris: shutting down"), "{stderr}");
    assert!(stderr.contains("oris: stopped"), "{stderr}");
    drop(oris);

    // An API-only server (no workers) shows the log as the stopped process left it: the
    // node that was running at SIGTERM finished and committed, nothing after it started.
    let mut reader = Oris::start(&db, &args(tf, &["--workers", "0"]));
    reader.ready().await;
    let after = reader.timeline("slow").await;
    let completed = of_kind(&after, "node_completed");
    assert_eq!(completed.len(), 2, "{after:#?}");
    assert_eq!(completed[1]["superstep"], 1, "{after:#?}");
    assert_eq!(completed[1]["attempt"], 1, "{after:#?}");
    assert_eq!(of_kind(&after, "step_recorded").len(), 2, "{after:#?}");
    assert_eq!(of_kind(&after, "run_completed").len(), 0, "{after:#?}");
    let (_, job) = reader.get("/v1/jobs/slow").await;
    assert!(job["lease"].is_null(), "the lease was handed back: {job}");
    reader.terminate();
    assert!(
        reader
            .wait_exit(Duration::from_secs(15))
            .is_some_and(|s| s.success())
    );
    drop(reader);

    // The next start continues the run from there.
    let oris = Oris::start(&db, &args(tf, &[]));
    oris.ready().await;
    let job = oris
        .wait_status("slow", &["completed", "failed"], LIMIT)
        .await;
    check_batch("slow", &job, &oris.timeline("slow").await, STEPS);
}
