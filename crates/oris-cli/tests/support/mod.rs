//! Runs the real `oris` binary as a child process (`oris serve` on `127.0.0.1:0` and a
//! SQLite file) and talks to it over HTTP.
//!
//! The bound address comes from the documented startup line `oris: listening on http://…`
//! on stderr; stderr and stdout are drained by threads (a full pipe would block the server)
//! and kept for assertions.

#![allow(dead_code)] // Each test binary uses a different part.

use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

/// The admin token the tests provision with `--admin-token-file`.
pub const TOKEN: &str = "oris_testadmin_0123456789abcdefABCDEF";

/// How long a server may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes [`TOKEN`] to `dir/admin-token` and returns the path.
pub fn token_file(dir: &Path) -> PathBuf {
    let p = dir.join("admin-token");
    std::fs::write(&p, format!("{TOKEN}\n")).unwrap();
    p
}

/// A running `oris serve`.
#[derive(Debug)]
pub struct Oris {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    pub http: reqwest::Client,
    /// The bearer token sent with every request, if any.
    pub token: Option<String>,
}

/// The `oris` command with a clean environment for the settings it reads.
pub fn oris_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oris"));
    for var in [
        "ORIS_ADDR",
        "ORIS_DB",
        "ORIS_ADMIN_TOKEN",
        "ORIS_WORKERS",
        "ORIS_LOG_FORMAT",
    ] {
        c.env_remove(var);
    }
    c.env("RUST_LOG", "info");
    c
}

fn drain(
    from: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
    listening: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = &listening
                && let Some(url) = line.strip_prefix("oris: listening on ")
            {
                let _ = tx.send(url.trim().to_owned());
            }
            let mut s = into.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
}

impl Oris {
    /// Starts `oris serve --addr 127.0.0.1:0 --db sqlite://DB` plus `args`, and waits for
    /// its `listening on` line.
    pub fn start(db: &Path, args: &[&str]) -> Oris {
        Self::start_url(&format!("sqlite://{}", db.display()), args)
    }

    /// Starts `oris serve --addr 127.0.0.1:0 --db URL` plus `args`, and waits for its
    /// `listening on` line.
    pub fn start_url(url: &str, args: &[&str]) -> Oris {
        let mut cmd = oris_command();
        cmd.arg("serve")
            .args(["--addr", "127.0.0.1:0", "--db", url])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the oris binary starts");
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let (tx, rx) = mpsc::channel();
        drain(child.stdout.take().unwrap(), Arc::clone(&stdout), None);
        drain(child.stderr.take().unwrap(), Arc::clone(&stderr), Some(tx));
        let base = match rx.recv_timeout(START_TIMEOUT) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "oris serve did not print its address ({status:?}); stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        let token = (!args.contains(&"--no-auth")).then(|| TOKEN.to_owned());
        Oris {
            child,
            base,
            stdout,
            stderr,
            http: reqwest::Client::new(),
            token,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Everything the process printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM {}", self.pid());
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// GET, returning the status and the JSON body (`null` when the body is not JSON).
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.req(reqwest::Method::GET, path).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .req(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits for `/readyz` to answer 200.
    pub async fn ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let (s, body) = self.get("/readyz").await;
            if s == StatusCode::OK {
                return;
            }
            assert!(Instant::now() < deadline, "not ready: {s} {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates a job; asserts 202.
    pub async fn create(&self, graph: &str, thread: &str, input: Value) -> Value {
        let (s, body) = self
            .post(
                "/v1/jobs",
                json!({ "graph": graph, "thread_id": thread, "input": input }),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "create {thread}: {body}");
        body
    }

    /// Long-polls `…/wait` until the job's status is one of `statuses`; returns the job
    /// detail. Fails after `limit`.
    pub async fn wait_status(&self, thread: &str, statuses: &[&str], limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let (s, body) = self
                .get(&format!("/v1/jobs/{thread}/wait?timeout=2s"))
                .await;
            assert_eq!(s, StatusCode::OK, "wait {thread}: {body}");
            let job = &body["job"];
            let status = job["status"].as_str().unwrap_or_default();
            if statuses.contains(&status) {
                return job.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{thread} is {status}, not one of {statuses:?} after {limit:?}: {job}"
            );
            // `wait` returns as soon as the run is settled in any state (e.g. `waiting` on a
            // timer, or `interrupted` when `completed` is awaited): ask again.
            if !body["timed_out"].as_bool().unwrap_or(false) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// The thread's whole timeline.
    pub async fn timeline(&self, thread: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let (s, body) = self
                .get(&format!(
                    "/v1/jobs/{thread}/timeline?after={after}&limit=500"
                ))
                .await;
            assert_eq!(s, StatusCode::OK, "timeline {thread}: {body}");
            events.extend(body["events"].as_array().unwrap().iter().cloned());
            match body["next_after"].as_u64() {
                Some(n) => after = n,
                None => return events,
            }
        }
    }
}

impl Drop for Oris {
    fn drop(&mut self) {
        // A test that failed half-way must not leave a server behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Events of `kind` in a timeline.
pub fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

/// Asserts that no node completed twice in one superstep of one run and that no recorded
/// step was recorded twice at one position: nothing that completed was executed again.
pub fn assert_nothing_repeated(thread: &str, events: &[Value]) {
    let mut completed = std::collections::HashSet::new();
    for e in of_kind(events, "node_completed") {
        let key = (
            e["run_id"].clone(),
            e["superstep"].clone(),
            e["task"].clone(),
        );
        assert!(
            completed.insert(key),
            "{thread}: node {} completed twice in superstep {}: {events:#?}",
            e["node"],
            e["superstep"]
        );
    }
    let mut steps = std::collections::HashSet::new();
    for e in of_kind(events, "step_recorded") {
        let key = (
            e["run_id"].clone(),
            e["superstep"].clone(),
            e["task"].clone(),
            e["data"]["index"].clone(),
        );
        assert!(
            steps.insert(key),
            "{thread}: step {} recorded twice: {events:#?}",
            e["data"]["name"]
        );
    }
}

// --- The operator CLI as a client of a server ---------------------------------------------

/// `oris ARGS` as a client of the server at `url` with `token` (none: no token), stdin
/// closed, `NO_COLOR` unset (colour decisions are the binary's).
pub fn client_command(url: &str, token: Option<&str>, args: &[&str]) -> Command {
    let mut c = oris_command();
    c.args(args)
        .env("ORIS_URL", url)
        .env_remove("ORIS_TOKEN")
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    if let Some(t) = token {
        c.env("ORIS_TOKEN", t);
    }
    c
}

/// `oris ARGS` against `oris` with the admin token; its output.
pub fn cli(oris: &Oris, args: &[&str]) -> std::process::Output {
    client_command(&oris.base, Some(TOKEN), args)
        .output()
        .expect("oris runs")
}

pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Asserts the exit code, showing both streams when it differs.
#[track_caller]
pub fn code(o: &std::process::Output, expected: i32) {
    assert_eq!(
        o.status.code(),
        Some(expected),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

/// `oris ARGS`, asserting success; its stdout.
#[track_caller]
pub fn ok(oris: &Oris, args: &[&str]) -> String {
    let o = cli(oris, args);
    code(&o, 0);
    stdout(&o)
}

/// `oris ARGS -o json`, parsed.
#[track_caller]
pub fn json(oris: &Oris, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let out = ok(oris, &a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `oris ARGS -o json` printing NDJSON, parsed line by line.
#[track_caller]
pub fn ndjson(oris: &Oris, args: &[&str]) -> Vec<Value> {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    ok(oris, &a)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `oris serve` on `dir/oris.db` with the test admin token provisioned.
pub fn start_with_token(dir: &Path) -> Oris {
    let tf = token_file(dir);
    Oris::start(
        &dir.join("oris.db"),
        &["--admin-token-file", tf.to_str().unwrap()],
    )
}
