//! Remote execution with real processes: an `oris-crash serve` (SQLite, no embedded
//! workers, short leases) and `oris-crash worker` processes executing the `chain` graph
//! (`a → b → c`, two recorded steps per node; see `src/remote.rs`), which mark every node
//! execution and every recorded step body in a shared marks file.
//!
//! - SIGKILL the lease holder mid-node: the other worker completes the run within the lease
//!   TTL plus a poll (plus slack); completed nodes and recorded steps ran exactly once, the
//!   node in flight at most twice.
//! - SIGSTOP the lease holder past its TTL, let the other finish, SIGCONT: its late report is
//!   refused (`lease_lost`), nothing it sends after the expiry is recorded, the result is the
//!   other worker's.
//! - A node failing twice with a retry policy, its worker killed after the first failure:
//!   the attempt counter continues on the other worker and every `retry_at` is honoured.
//! - Cancelling a run under a remote lease stops it at the next heartbeat: it ends
//!   `cancelled` with the reason and the node never completes.
//! - SIGTERM to a worker mid-node: the node finishes, the lease is handed back, the other
//!   worker continues at once (well before the TTL), the process exits 0.
//!
//! A failure prints the marks file, the timeline and every process's log.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_oris-crash");
/// How long a process may take to start, or a state to be reached, on a loaded machine.
const SLOW: Duration = Duration::from_secs(30);
/// The admin token the server provisions.
const TOKEN: &str = "oris_remotetest01_0123456789abcdefghijABCDEFGHIJ0123456789";

// --- processes -----------------------------------------------------------------------------

/// A child process, killed when dropped; its stderr goes to a log file.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(name: &str, dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .env("RUST_LOG", "info,oris_worker=debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn oris-crash");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc {
            name: name.to_owned(),
            child,
            log,
            lines,
        }
    }

    /// The first stdout line starting with `prefix`, without it.
    fn line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + SLOW;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return rest.trim().to_owned();
                    }
                }
                Err(_) => panic!(
                    "{} printed no `{prefix}` line; its log:\n{}",
                    self.name,
                    self.log_text()
                ),
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `SIG<sig>` with the shell's `kill` builtin (no `unsafe` libc call, no
    /// dependency on procps being installed).
    fn signal(&self, sig: &str) {
        let ok = send_signal(sig, self.pid());
        assert!(ok, "kill -{sig} {} failed", self.name);
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}; its log:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send_signal(sig: &str, pid: u32) -> bool {
    Command::new("sh")
        .args(["-c", &format!("kill -{sig} {pid}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One line of the marks file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mark {
    /// `enter`, `fail`, `step`, `exec`.
    kind: String,
    thread: String,
    node: String,
    /// `before` / `after` for `step` marks.
    step: Option<String>,
    attempt: u32,
    pid: u32,
    ms: i64,
}

fn parse_mark(line: &str) -> Mark {
    let f: Vec<&str> = line.split(' ').collect();
    let (step, rest) = if f[0] == "step" {
        (Some(f[3].to_owned()), &f[4..])
    } else {
        (None, &f[3..])
    };
    Mark {
        kind: f[0].to_owned(),
        thread: f[1].to_owned(),
        node: f[2].to_owned(),
        step,
        attempt: rest[0].parse().expect("attempt"),
        pid: rest[1].parse().expect("pid"),
        ms: rest[2].parse().expect("ms"),
    }
}

/// A server and its workers in a temp directory.
struct Cluster {
    dir: tempfile::TempDir,
    url: String,
    http: reqwest::Client,
    server: Proc,
    workers: BTreeMap<String, Proc>,
    lease: Duration,
}

impl Cluster {
    fn start(lease_ms: u64, heartbeat_ms: u64) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("oris.db");
        let lease = lease_ms.to_string();
        let heartbeat = heartbeat_ms.to_string();
        let mut server = Proc::spawn(
            "server",
            dir.path(),
            &[
                "serve",
                "--db",
                db.to_str().expect("utf-8 path"),
                "--token",
                TOKEN,
                "--lease-ms",
                &lease,
                "--heartbeat-ms",
                &heartbeat,
                "--poll-ms",
                "100",
            ],
            &[],
        );
        let url = server.line("LISTENING ");
        Cluster {
            dir,
            url,
            http: reqwest::Client::new(),
            server,
            workers: BTreeMap::new(),
            lease: Duration::from_millis(lease_ms),
        }
    }

    fn marks_path(&self) -> PathBuf {
        self.dir.path().join("marks")
    }

    fn worker(&mut self, id: &str) -> u32 {
        let marks = self.marks_path();
        let mut p = Proc::spawn(
            id,
            self.dir.path(),
            &[
                "worker",
                "--server",
                &self.url,
                "--token",
                TOKEN,
                "--worker-id",
                id,
                "--capacity",
                "1",
                "--retry-ms",
                "2500",
            ],
            &[("ORIS_CRASH_MARKS", &marks)],
        );
        assert_eq!(p.line("WORKER "), id);
        let pid = p.pid();
        self.workers.insert(id.to_owned(), p);
        pid
    }

    fn proc(&mut self, id: &str) -> &mut Proc {
        self.workers.get_mut(id).expect("a started worker")
    }

    fn marks(&self) -> Vec<Mark> {
        std::fs::read_to_string(self.marks_path())
            .unwrap_or_default()
            .lines()
            .map(parse_mark)
            .collect()
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .timeout(Duration::from_secs(10));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("the server answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn create(&self, thread: &str, input: Value) {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/jobs",
                Some(json!({"graph": "chain", "thread_id": thread, "input": input})),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }

    async fn job(&self, thread: &str) -> Value {
        let (status, body) = self
            .call(reqwest::Method::GET, &format!("/v1/jobs/{thread}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn timeline(&self, thread: &str) -> Vec<Value> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/jobs/{thread}/timeline?limit=1000"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["events"].as_array().cloned().unwrap_or_default()
    }

    /// `oris_lease_lost_total` over every route: worker calls the server refused because
    /// the lease was not the caller's.
    async fn lease_lost_refusals(&self) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("the server answers")
            .text()
            .await
            .expect("a body");
        text.lines()
            .filter(|l| l.starts_with("oris_lease_lost_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    async fn workers_view(&self) -> Vec<Value> {
        let (status, body) = self.call(reqwest::Method::GET, "/v1/workers", None).await;
        assert_eq!(status, 200, "{body}");
        body["workers"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until every worker in `ids` is registered and active.
    async fn registered(&self, ids: &[&str]) {
        let deadline = Instant::now() + SLOW;
        loop {
            let ws = self.workers_view().await;
            let active = |id: &&str| {
                ws.iter()
                    .any(|w| w["worker_id"] == *id && w["state"] == "active")
            };
            if ids.iter().all(active) {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!("workers {ids:?} not all active: {ws:#?}"), None)
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls the job until `pred` holds, for at most `within`.
    async fn until(
        &self,
        thread: &str,
        what: &str,
        within: Duration,
        pred: impl Fn(&Value, &[Value]) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let job = self.job(thread).await;
            let timeline = self.timeline(thread).await;
            if pred(&job, &timeline) {
                return job;
            }
            if Instant::now() > deadline {
                self.fail(
                    &format!("{thread}: not {what} within {within:?}"),
                    Some(thread),
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the step `name` of `node` is recorded: the node is running on a worker,
    /// past its first recorded step.
    async fn step_recorded(&self, thread: &str, node: &str, name: &str) -> Value {
        self.until(thread, &format!("past step {node}/{name}"), SLOW, |_, t| {
            t.iter().any(|e| is_step(e, node, name))
        })
        .await
    }

    /// Panics with everything a reader needs to see what happened.
    async fn fail(&self, what: &str, thread: Option<&str>) {
        panic!("{}", self.report(what, thread).await);
    }

    /// What happened: `what`, the marks, the job and its timeline, every process's log.
    async fn report(&self, what: &str, thread: Option<&str>) -> String {
        let mut out = format!("{what}\n--- marks\n");
        out.push_str(&std::fs::read_to_string(self.marks_path()).unwrap_or_default());
        if let Some(t) = thread {
            out.push_str(&format!("--- job\n{:#}\n--- timeline\n", self.job(t).await));
            for e in self.timeline(t).await {
                out.push_str(&format!("{e}\n"));
            }
        }
        out.push_str(&format!("--- server log\n{}", self.server.log_text()));
        for (id, p) in &self.workers {
            out.push_str(&format!("--- {id} (pid {}) log\n{}", p.pid(), p.log_text()));
        }
        out
    }
}

fn is_step(e: &Value, node: &str, name: &str) -> bool {
    e["kind"] == "step_recorded" && e["node"] == node && e["data"]["name"] == name
}

fn count(marks: &[Mark], kind: &str, node: &str) -> usize {
    marks
        .iter()
        .filter(|m| m.kind == kind && m.node == node)
        .count()
}

fn step_marks<'a>(marks: &'a [Mark], node: &str, step: &str) -> Vec<&'a Mark> {
    marks
        .iter()
        .filter(|m| m.kind == "step" && m.node == node && m.step.as_deref() == Some(step))
        .collect()
}

/// Every node completed once and every recorded step recorded once in the timeline.
fn check_log_once(timeline: &[Value]) -> Result<(), String> {
    for node in ["a", "b", "c"] {
        let n = timeline
            .iter()
            .filter(|e| e["kind"] == "node_completed" && e["node"] == node)
            .count();
        if n != 1 {
            return Err(format!("{node} completed {n} times"));
        }
        for step in ["before", "after"] {
            let n = timeline.iter().filter(|e| is_step(e, node, step)).count();
            if n != 1 {
                return Err(format!("{node}/{step} recorded {n} times"));
            }
        }
    }
    let seqs: Vec<u64> = timeline.iter().filter_map(|e| e["seq"].as_u64()).collect();
    if seqs != (1..=seqs.len() as u64).collect::<Vec<_>>() {
        return Err(format!("seqs are not contiguous: {seqs:?}"));
    }
    Ok(())
}

/// `2026-05-01T12:00:00.123Z` → milliseconds since the epoch.
fn rfc3339_ms(s: &str) -> i64 {
    let (date, time) = s
        .trim_end_matches('Z')
        .split_once('T')
        .expect("a date-time");
    let d: Vec<i64> = date.split('-').map(|x| x.parse().expect("date")).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().expect("time")).collect();
    let ms: i64 = format!("{frac:0<3}")[..3].parse().expect("millis");
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m, day) = (if d[1] <= 2 { d[0] - 1 } else { d[0] }, d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + t[0]) * 60 + t[1]) * 60_000 + t[2] * 1000 + ms
}

#[test]
fn rfc3339_parses() {
    assert_eq!(rfc3339_ms("1970-01-01T00:00:00.000Z"), 0);
    assert_eq!(rfc3339_ms("2000-03-01T00:00:01.5Z"), 951_868_801_500);
    assert_eq!(rfc3339_ms("2026-05-01T12:00:00.123Z"), 1_777_636_800_123);
}

/// The worker holding the job's lease (`w1` or `w2`) and the other one.
fn holder_and_other(job: &Value) -> (String, &'static str) {
    let holder = job["lease"]["worker_id"]
        .as_str()
        .expect("a lease holder")
        .to_owned();
    let other = if holder == "w1" { "w2" } else { "w1" };
    (holder, other)
}

// --- the scenarios -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_lease_holder_fails_over_to_the_other_worker() {
    let mut c = Cluster::start(2000, 500);
    let pids = BTreeMap::from([("w1", c.worker("w1")), ("w2", c.worker("w2"))]);
    c.registered(&["w1", "w2"]).await;
    // `b`'s first execution sleeps a minute: only a failover can finish the run in time.
    c.create("failover", json!({"slow": "b", "sleep_ms": 60_000}))
        .await;
    let job = c.step_recorded("failover", "b", "before").await;
    let (holder, other) = holder_and_other(&job);
    let killed = Instant::now();
    c.proc(&holder).signal("KILL");
    let status = c.proc(&holder).wait_exit(SLOW);
    assert_eq!(status.code(), None, "killed by a signal");
    // Lease TTL + a poll interval, plus slack for a loaded CI machine.
    let within = c.lease + Duration::from_millis(100) + Duration::from_secs(6);
    let job = c
        .until("failover", "completed", within, |j, _| {
            j["status"] == "completed"
        })
        .await;
    let took = killed.elapsed();
    let (hp, op) = (pids[holder.as_str()], pids[other]);
    let expected_steps = json!([
        format!("a-before#{hp}"),
        format!("a-after#{hp}"),
        format!("b-before#{hp}"),
        format!("b-after#{op}"),
        format!("c-before#{op}"),
        format!("c-after#{op}"),
    ]);
    let timeline = c.timeline("failover").await;
    let marks: Vec<Mark> = c
        .marks()
        .into_iter()
        .filter(|m| m.thread == "failover")
        .collect();
    let checks = (|| -> Result<(), String> {
        if job["values"]["log"] != json!(["a", "b", "c"]) {
            return Err("wrong log".into());
        }
        if job["values"]["steps"] != expected_steps {
            return Err(format!(
                "steps {} != {expected_steps}",
                job["values"]["steps"]
            ));
        }
        check_log_once(&timeline)?;
        // Completed nodes and recorded steps ran exactly once; the node in flight twice.
        for node in ["a", "b", "c"] {
            if count(&marks, "exec", node) != 1 {
                return Err(format!(
                    "{node} finished {} times",
                    count(&marks, "exec", node)
                ));
            }
            for step in ["before", "after"] {
                if step_marks(&marks, node, step).len() != 1 {
                    return Err(format!("step {node}/{step} body ran more than once"));
                }
            }
        }
        let enters: Vec<u32> = marks
            .iter()
            .filter(|m| m.kind == "enter" && m.node == "b")
            .map(|m| m.pid)
            .collect();
        if enters != [hp, op] {
            return Err(format!("b entered by {enters:?}, expected [{hp}, {op}]"));
        }
        if count(&marks, "enter", "a") != 1 || count(&marks, "enter", "c") != 1 {
            return Err("a or c entered more than once".into());
        }
        Ok(())
    })();
    if let Err(e) = checks {
        c.fail(
            &format!("after the failover ({took:?}): {e}"),
            Some("failover"),
        )
        .await;
    }
    eprintln!(
        "failover: completed {took:?} after the kill (lease {:?})",
        c.lease
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_lease_holder_resumed_after_expiry_writes_nothing() {
    let mut c = Cluster::start(2000, 500);
    let pids = BTreeMap::from([("w1", c.worker("w1")), ("w2", c.worker("w2"))]);
    c.registered(&["w1", "w2"]).await;
    c.create("frozen", json!({"slow": "b", "sleep_ms": 1500}))
        .await;
    let job = c.step_recorded("frozen", "b", "before").await;
    let (holder, other) = holder_and_other(&job);
    let (hp, op) = (pids[holder.as_str()], pids[other]);
    c.proc(&holder).signal("STOP");
    let within = c.lease + Duration::from_millis(100) + Duration::from_secs(6);
    let job = c
        .until("frozen", "completed by the other worker", within, |j, _| {
            j["status"] == "completed"
        })
        .await;
    let before = c.timeline("frozen").await;
    // Resumed, the holder's sleep is over: it runs its `after` step body and reports it (or
    // heartbeats first) — refused, its lease is long gone.
    assert_eq!(
        c.lease_lost_refusals().await,
        0,
        "no refusal before the holder resumed"
    );
    c.proc(&holder).signal("CONT");
    let deadline = Instant::now() + SLOW;
    loop {
        let tried = c
            .marks()
            .iter()
            .any(|m| m.thread == "frozen" && m.kind == "step" && m.node == "b" && m.pid == hp);
        let refused =
            c.proc(&holder).log_text().contains("lease lost") && c.lease_lost_refusals().await > 0;
        if tried && refused {
            break;
        }
        if Instant::now() > deadline {
            c.fail(
                "the resumed holder never tried its late report",
                Some("frozen"),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = c.timeline("frozen").await;
    let job_after = c.job("frozen").await;
    let marks: Vec<Mark> = c
        .marks()
        .into_iter()
        .filter(|m| m.thread == "frozen")
        .collect();
    let checks = (|| -> Result<(), String> {
        if after != before {
            return Err("the timeline changed after the stale worker resumed".into());
        }
        if job_after["values"] != job["values"] {
            return Err("the result changed after the stale worker resumed".into());
        }
        let steps = json!([
            format!("a-before#{hp}"),
            format!("a-after#{hp}"),
            format!("b-before#{hp}"),
            format!("b-after#{op}"),
            format!("c-before#{op}"),
            format!("c-after#{op}"),
        ]);
        if job["values"]["steps"] != steps {
            return Err(format!("steps {} != {steps}", job["values"]["steps"]));
        }
        check_log_once(&after)?;
        // The stale worker ran its `after` body (unavoidable: it was mid-node) but never
        // finished the node nor got anything recorded.
        let late: Vec<&Mark> = step_marks(&marks, "b", "after")
            .into_iter()
            .filter(|m| m.pid == hp)
            .collect();
        if late.len() != 1 {
            return Err(format!("stale after-step bodies: {late:?}"));
        }
        if marks
            .iter()
            .any(|m| m.kind == "exec" && m.node == "b" && m.pid == hp)
        {
            return Err("the stale worker finished b".into());
        }
        Ok(())
    })();
    if let Err(e) = checks {
        c.fail(&e, Some("frozen")).await;
    }
    // The stale worker is healthy again: it still polls (active in the registry).
    c.registered(&[holder.as_str()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_continue_across_a_worker_crash_and_honour_retry_at() {
    let mut c = Cluster::start(2000, 500);
    let pids = BTreeMap::from([("w1", c.worker("w1")), ("w2", c.worker("w2"))]);
    c.registered(&["w1", "w2"]).await;
    c.create("retry", json!({"flaky": "b", "fail_times": 2}))
        .await;
    // The first failure is recorded (with its retry_at); its worker waits out the delay.
    let job = c
        .until("retry", "failed once", SLOW, |_, t| {
            t.iter()
                .any(|e| e["kind"] == "node_failed" && e["node"] == "b")
        })
        .await;
    let (holder, other) = holder_and_other(&job);
    let (hp, op) = (pids[holder.as_str()], pids[other]);
    c.proc(&holder).signal("KILL");
    c.proc(&holder).wait_exit(SLOW);
    let job = c
        .until("retry", "completed", SLOW, |j, _| {
            j["status"] == "completed"
        })
        .await;
    let timeline = c.timeline("retry").await;
    let marks: Vec<Mark> = c
        .marks()
        .into_iter()
        .filter(|m| m.thread == "retry")
        .collect();
    let checks = (|| -> Result<(), String> {
        if job["values"]["log"] != json!(["a", "b", "c"]) {
            return Err("wrong log".into());
        }
        let failed: Vec<(u64, i64)> = timeline
            .iter()
            .filter(|e| e["kind"] == "node_failed" && e["node"] == "b")
            .map(|e| {
                (
                    e["attempt"].as_u64().unwrap_or(0),
                    rfc3339_ms(
                        e["data"]["retry_at"]
                            .as_str()
                            .unwrap_or("1970-01-01T00:00:00Z"),
                    ),
                )
            })
            .collect();
        let attempts: Vec<u64> = failed.iter().map(|(a, _)| *a).collect();
        if attempts != [1, 2] {
            return Err(format!("failed attempts {attempts:?}, expected [1, 2]"));
        }
        let completed: Vec<u64> = timeline
            .iter()
            .filter(|e| e["kind"] == "node_completed" && e["node"] == "b")
            .filter_map(|e| e["attempt"].as_u64())
            .collect();
        if completed != [3] {
            return Err(format!(
                "b completed at attempts {completed:?}, expected [3]"
            ));
        }
        let enters: Vec<(u32, u32, i64)> = marks
            .iter()
            .filter(|m| m.kind == "enter" && m.node == "b")
            .map(|m| (m.attempt, m.pid, m.ms))
            .collect();
        let who: Vec<(u32, u32)> = enters.iter().map(|(a, p, _)| (*a, *p)).collect();
        if who != [(1, hp), (2, op), (3, op)] {
            return Err(format!(
                "b's attempts ran as {who:?}, expected [(1, {hp}), (2, {op}), (3, {op})]"
            ));
        }
        // Each retry started no earlier than the retry_at its failure recorded.
        for ((attempt, retry_at), (next, _, started)) in failed.iter().zip(&enters[1..]) {
            if *started < *retry_at {
                return Err(format!(
                    "attempt {next} started at {started}, before attempt {attempt}'s retry_at {retry_at}"
                ));
            }
        }
        check_log_once(&timeline)?;
        Ok(())
    })();
    if let Err(e) = checks {
        c.fail(&e, Some("retry")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_on_a_remote_worker_stops_its_node() {
    let mut c = Cluster::start(2000, 500);
    c.worker("w1");
    c.registered(&["w1"]).await;
    let sleep_ms = 3000;
    c.create("doomed", json!({"slow": "b", "sleep_ms": sleep_ms}))
        .await;
    c.step_recorded("doomed", "b", "before").await;
    let (status, body) = c
        .call(
            reqwest::Method::POST,
            "/v1/jobs/doomed/cancel",
            Some(json!({"reason": "no longer needed"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let job = c.job("doomed").await;
    assert_eq!(job["status"], "cancelled", "{job:#}");
    assert_eq!(
        job["status_detail"]["reason"], "no longer needed",
        "{job:#}"
    );
    // The worker (capacity 1) drops the attempt at its next heartbeat and takes new work
    // long before the cancelled node's sleep would have ended.
    c.create("next", json!({})).await;
    c.until("next", "completed", SLOW, |j, _| j["status"] == "completed")
        .await;
    let b_entered = c
        .marks()
        .iter()
        .find(|m| m.thread == "doomed" && m.kind == "enter" && m.node == "b")
        .map(|m| m.ms)
        .expect("b entered");
    let freed = oris::Timestamp::now().as_millis();
    if freed >= b_entered + sleep_ms {
        c.fail(
            "the worker was busy until the cancelled node's end",
            Some("doomed"),
        )
        .await;
    }
    // Past the end of the sleep, the node still never completed.
    let wait = (b_entered + sleep_ms + 300 - oris::Timestamp::now().as_millis()).max(0);
    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    let marks = c.marks();
    let timeline = c.timeline("doomed").await;
    let late = marks.iter().any(|m| {
        m.thread == "doomed"
            && m.node == "b"
            && (m.kind == "exec" || m.step.as_deref() == Some("after"))
    });
    let kinds: Vec<&str> = timeline.iter().filter_map(|e| e["kind"].as_str()).collect();
    if late
        || kinds.last() != Some(&"run_cancelled")
        || kinds.iter().filter(|k| **k == "node_completed").count() != 1
    {
        c.fail("the cancelled node went on", Some("doomed")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_node_hands_the_run_back_and_exits_0() {
    // A long lease: the handover must not wait for it.
    let mut c = Cluster::start(10_000, 500);
    let pids = BTreeMap::from([("w1", c.worker("w1")), ("w2", c.worker("w2"))]);
    c.registered(&["w1", "w2"]).await;
    c.create("handover", json!({"slow": "b", "sleep_ms": 1500}))
        .await;
    let job = c.step_recorded("handover", "b", "before").await;
    let (holder, other) = holder_and_other(&job);
    let (hp, op) = (pids[holder.as_str()], pids[other]);
    let signalled = Instant::now();
    c.proc(&holder).signal("TERM");
    let status = c.proc(&holder).wait_exit(SLOW);
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
    let job = c
        .until("handover", "completed", SLOW, |j, _| {
            j["status"] == "completed"
        })
        .await;
    let took = signalled.elapsed();
    let timeline = c.timeline("handover").await;
    let marks: Vec<Mark> = c
        .marks()
        .into_iter()
        .filter(|m| m.thread == "handover")
        .collect();
    let workers = c.workers_view().await;
    let checks = (|| -> Result<(), String> {
        if took >= c.lease {
            return Err(format!(
                "the handover took {took:?}, not well before the lease's {:?}",
                c.lease
            ));
        }
        check_log_once(&timeline)?;
        let steps = json!([
            format!("a-before#{hp}"),
            format!("a-after#{hp}"),
            format!("b-before#{hp}"),
            format!("b-after#{hp}"),
            format!("c-before#{op}"),
            format!("c-after#{op}"),
        ]);
        if job["values"]["steps"] != steps {
            return Err(format!(
                "steps {} != {steps}: b finishes on the stopping worker, c runs on the other",
                job["values"]["steps"]
            ));
        }
        let exec: Vec<(String, u32)> = marks
            .iter()
            .filter(|m| m.kind == "exec")
            .map(|m| (m.node.clone(), m.pid))
            .collect();
        let want = vec![
            ("a".to_owned(), hp),
            ("b".to_owned(), hp),
            ("c".to_owned(), op),
        ];
        if exec != want {
            return Err(format!("executions {exec:?}, expected {want:?}"));
        }
        let stopped = workers
            .iter()
            .any(|w| w["worker_id"] == holder.as_str() && w["state"] == "stopped");
        if !stopped {
            return Err(format!("{holder} is not `stopped`: {workers:#?}"));
        }
        Ok(())
    })();
    if let Err(e) = checks {
        c.fail(&e, Some("handover")).await;
    }
    eprintln!(
        "handover: completed {took:?} after SIGTERM (lease {:?})",
        c.lease
    );
}
