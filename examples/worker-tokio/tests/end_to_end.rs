//! The README's walkthrough, automated: `serve` (short lease), two `work` processes, a run
//! created over HTTP, the worker executing it killed mid-node, the run finished by the
//! other worker — with the recorded steps made before the kill reused, not called again.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_worker-tokio");
const TOKEN: &str = "oris_workertokio1_0123456789abcdefghijABCDEFGHIJ0123456789";
const DEADLINE: Duration = Duration::from_secs(30);

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], dir: &std::path::Path, name: &str) -> Proc {
    let child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("ORIS_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    Proc(child)
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Value {
    let mut r = http.request(method, url).bearer_auth(TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("the server answers");
    let status = resp.status();
    let body: Value = resp.json().await.expect("a JSON body");
    assert!(status.is_success(), "{url}: {status} {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_run_finishes_on_the_other_worker() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn(
        &[
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--db",
            "sqlite://e2e.db",
            "--lease-ms",
            "2000",
            "--heartbeat-ms",
            "500",
        ],
        dir.path(),
        "serve",
    );
    // `listening on http://ADDR` on stderr.
    let stderr = server.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let url = rx.recv_timeout(DEADLINE).expect("the server listens");
    let http = reqwest::Client::new();
    // A key with the worker role, as the README does it.
    let key = call(
        &http,
        reqwest::Method::POST,
        &format!("{url}/v1/keys"),
        Some(json!({"name": "workers", "role": "worker"})),
    )
    .await;
    let worker_token = key["token"].as_str().expect("a token").to_owned();
    let mut workers = Vec::new();
    for id in ["w1", "w2"] {
        let p = Command::new(BIN)
            .args([
                "work",
                "--server",
                &url,
                "--worker-id",
                id,
                "--capacity",
                "1",
            ])
            .env("ORIS_TOKEN", &worker_token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a worker");
        workers.push((id, Proc(p)));
    }
    call(
        &http,
        reqwest::Method::POST,
        &format!("{url}/v1/jobs"),
        Some(json!({
            "graph": "fulfil", "thread_id": "order-1",
            "input": {"order_id": "o1", "amount_cents": 4200, "work_ms": 800}
        })),
    )
    .await;
    // Wait until `charge` is running (its step recorded) on some worker, then kill it.
    let deadline = Instant::now() + DEADLINE;
    let holder = loop {
        let timeline = call(
            &http,
            reqwest::Method::GET,
            &format!("{url}/v1/jobs/order-1/timeline"),
            None,
        )
        .await;
        let charged = timeline["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "step_recorded" && e["data"]["name"] == "charge-card");
        let job = call(
            &http,
            reqwest::Method::GET,
            &format!("{url}/v1/jobs/order-1"),
            None,
        )
        .await;
        if charged && let Some(h) = job["lease"]["worker_id"].as_str() {
            break h.to_owned();
        }
        assert!(Instant::now() < deadline, "charge never started: {job:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (_, victim) = workers
        .iter_mut()
        .find(|(id, _)| *id == holder)
        .expect("the holder");
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();
    let job = loop {
        let job = call(
            &http,
            reqwest::Method::GET,
            &format!("{url}/v1/jobs/order-1"),
            None,
        )
        .await;
        if job["status"] == "completed" {
            break job;
        }
        assert_ne!(job["status"], "failed", "{job:#}");
        assert!(Instant::now() < deadline, "the run did not finish: {job:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let v = &job["values"];
    assert_eq!(v["payment"], "pay-o1-4200c", "{job:#}");
    let log: Vec<&str> = v["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(log[0].starts_with("reserve (attempt 1)"), "{log:?}");
    // `charge` failed once (attempt 1), then attempt 2 started on the killed worker and
    // finished on the other one — still attempt 2, its payment step reused.
    assert!(log[1].starts_with("charge (attempt 2)"), "{log:?}");
    assert!(log[2].starts_with("ship (attempt 1)"), "{log:?}");
    let timeline = call(
        &http,
        reqwest::Method::GET,
        &format!("{url}/v1/jobs/order-1/timeline"),
        None,
    )
    .await;
    let steps: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "step_recorded")
        .map(|e| e["data"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["reserve-stock", "charge-card", "book-courier"]);
}
