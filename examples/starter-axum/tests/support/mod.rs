//! The service as a real process on a loopback port, and an HTTP client for it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_starter-axum");
/// The business API's bearer token.
pub const API_TOKEN: &str = "expenses-test-token";
/// The provisioned Oris admin token (control plane).
pub const ORIS_TOKEN: &str = "oris_startertest1_0123456789abcdefghijABCDEFGHIJ";
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A running service, killed when dropped.
pub struct Service {
    child: Child,
    pub url: String,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// Starts the service in `dir` on `db` with extra arguments; returns once it listens.
    pub fn start(dir: &Path, db: &str, extra: &[&str]) -> Service {
        let mut child = Command::new(BIN)
            .args(["--addr", "127.0.0.1:0", "--db", db])
            .args(extra)
            .current_dir(dir)
            .env("EXPENSES_API_TOKEN", API_TOKEN)
            .env("ORIS_ADMIN_TOKEN", ORIS_TOKEN)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn starter-axum");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn({
            let log = log.clone();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(url) = line.strip_prefix("listening on ") {
                        let _ = tx.send(url.trim().to_owned());
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let url = rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("the service does not listen: {}", log.lock().unwrap()));
        Service {
            child,
            url,
            stderr: log,
        }
    }

    /// Everything the service logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success());
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the service did not stop within {within:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An answer: status, `x-request-id`, JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub request_id: Option<String>,
    pub body: Value,
}

/// Calls `path` with `token` (if any) and a JSON body (if any).
pub async fn call(
    svc: &Service,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    call_with(svc, method, path, token, body, &[]).await
}

/// [`call`] with extra headers.
pub async fn call_with(
    svc: &Service,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Answer {
    let http = reqwest::Client::new();
    let mut r = http.request(method.parse().unwrap(), format!("{}{path}", svc.url));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.expect("the service answers");
    let status = resp.status().as_u16();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        request_id,
        body,
    }
}

/// The business API.
pub async fn api(svc: &Service, method: &str, path: &str, body: Option<Value>) -> Answer {
    call(svc, method, path, Some(API_TOKEN), body).await
}

/// The control plane, as the Oris admin.
pub async fn oris(svc: &Service, method: &str, path: &str, body: Option<Value>) -> Answer {
    call(svc, method, &format!("/oris{path}"), Some(ORIS_TOKEN), body).await
}

/// Submits an expense; returns its id.
pub async fn submit(svc: &Service, amount_cents: u64) -> String {
    let a = api(
        svc,
        "POST",
        "/api/expenses",
        Some(serde_json::json!({
            "submitter": "ann", "amount_cents": amount_cents, "description": "team lunch"
        })),
    )
    .await;
    assert_eq!(a.status, 201, "{a:?}");
    a.body["id"].as_str().unwrap().to_owned()
}

/// Polls the expense until its status is `status`.
pub async fn until_status(svc: &Service, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let a = api(svc, "GET", &format!("/api/expenses/{id}"), None).await;
        assert_eq!(a.status, 200, "{a:?}");
        if a.body["status"] == status {
            return a.body;
        }
        assert!(
            Instant::now() < deadline,
            "expense {id} never became {status}: {:#}",
            a.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The names of the thread's recorded steps, from the control plane's timeline.
pub async fn recorded_steps(svc: &Service, thread: &str) -> Vec<String> {
    let a = oris(svc, "GET", &format!("/v1/jobs/{thread}/timeline"), None).await;
    assert_eq!(a.status, 200, "{a:?}");
    a.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "step_recorded")
        .map(|e| e["data"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// A business error: exactly `{"error": "...", "kind": kind}`, nothing of Oris' envelope.
pub fn assert_business_error(a: &Answer, status: u16, kind: &str) {
    assert_eq!(a.status, status, "{a:?}");
    let obj = a.body.as_object().unwrap_or_else(|| panic!("{a:?}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["error", "kind"], "{a:?}");
    assert!(
        obj["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{a:?}"
    );
    assert_eq!(obj["kind"], kind, "{a:?}");
}
