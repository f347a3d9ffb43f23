//! `oris worker` as a process, for an `oris serve --workers 0`: it executes the demo graphs
//! it was given (and only those), shows in `GET /v1/workers`, and stops gracefully on
//! SIGTERM with exit status 0.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Oris, TOKEN, oris_command, token_file};

const LIMIT: Duration = Duration::from_secs(20);

/// Starts `oris worker` for `server`.
fn worker(server: &Oris, id: &str, graphs: &[&str]) -> Child {
    let mut cmd = oris_command();
    cmd.env_remove("ORIS_URL")
        .env_remove("ORIS_TOKEN")
        .arg("worker")
        .args(["--server", &server.base, "--worker-id", id])
        .env("ORIS_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for g in graphs {
        cmd.args(["--graph", g]);
    }
    cmd.spawn().expect("oris worker starts")
}

async fn worker_view(oris: &Oris, id: &str) -> Option<Value> {
    let (s, list) = oris.get("/v1/workers").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    list["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .find(|w| w["worker_id"] == id)
        .cloned()
}

#[tokio::test]
async fn a_worker_process_executes_its_graphs_and_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let tf = token_file(dir.path());
    let oris = Oris::start(
        &dir.path().join("oris.db"),
        &["--admin-token-file", tf.to_str().unwrap(), "--workers", "0"],
    );
    oris.ready().await;
    let mut w = worker(&oris, "cli-worker-1", &["expense-approval"]);

    // The server executes nothing itself: the expense run is the worker's.
    oris.create(
        "expense-approval",
        "remote-1",
        json!({ "amount_cents": 72_500 }),
    )
    .await;
    let job = oris.wait_status("remote-1", &["interrupted"], LIMIT).await;
    let id = job["interrupts"][0]["interrupt_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{job}"))
        .to_owned();
    let view = worker_view(&oris, "cli-worker-1")
        .await
        .expect("the worker is registered");
    assert_eq!(view["state"], "active", "{view}");
    assert_eq!(view["capacity"], 4, "{view}");

    // A graph the worker does not execute waits, and says why.
    oris.create("flaky", "not-served-1", json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, flaky) = oris.get("/v1/jobs/not-served-1").await;
    assert_eq!(flaky["status"], "queued", "{flaky}");
    assert!(
        flaky["waiting_for"]
            .as_str()
            .is_some_and(|w| w.contains("flaky")),
        "{flaky}"
    );

    let (s, answered) = oris
        .post(
            &format!("/v1/interrupts/{id}/resume"),
            json!({ "value": "approved" }),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{answered}");
    let done = oris.wait_status("remote-1", &["completed"], LIMIT).await;
    assert_eq!(done["values"]["decision"], "approved", "{done}");

    // SIGTERM: a graceful stop, exit status 0, the server is told.
    let ok = Command::new("kill")
        .args(["-TERM", &w.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = w.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the worker did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    let view = worker_view(&oris, "cli-worker-1").await.unwrap();
    assert_eq!(view["state"], "stopped", "{view}");
    assert!(!view["stopped_at"].is_null(), "{view}");
}

#[tokio::test]
async fn a_bad_token_or_an_unknown_graph_is_a_clear_failure() {
    let dir = tempfile::tempdir().unwrap();
    let tf = token_file(dir.path());
    let oris = Oris::start(
        &dir.path().join("oris.db"),
        &["--admin-token-file", tf.to_str().unwrap(), "--workers", "0"],
    );
    oris.ready().await;

    let out = oris_command()
        .env_remove("ORIS_URL")
        .env_remove("ORIS_TOKEN")
        .args(["worker", "--server", &oris.base, "--graph", "no-such-graph"])
        .env("ORIS_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-graph"), "{err}");

    let out = oris_command()
        .env_remove("ORIS_URL")
        .env_remove("ORIS_TOKEN")
        .args(["worker", "--server", &oris.base, "--token", "oris_nope_x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") || err.contains("unauthorized"), "{err}");
}
