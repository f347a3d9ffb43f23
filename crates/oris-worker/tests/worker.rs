//! The worker library against a real server (in this process, over HTTP on 127.0.0.1, on a
//! MemoryStore, no embedded workers): runs execute on the worker and land in the server's
//! store; interrupts suspend and resume through it; a cancellation stops the node on the
//! worker; a graceful shutdown finishes the running node and hands the run back to another
//! worker; a lost report answer is sent again and recognised; refusals and bad settings are
//! errors.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oris_core::graph::{END, START};
use oris_core::store::{MemoryStore, Store};
use oris_runtime::{CompiledGraph, NodeError, StateGraph};
use oris_server::{Auth, Server};
use oris_worker::{CancellationToken, Error, Worker};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long any awaited state change may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, oris_derive::State)]
#[oris(crate = "::oris_core")]
#[serde(default)]
struct Doc {
    #[reducer(append)]
    log: Vec<String>,
    #[reducer(append)]
    steps: Vec<String>,
}

/// What the test graphs' nodes did, by node name.
#[derive(Debug)]
struct Probe {
    entered: Mutex<Vec<String>>,
    done: Mutex<Vec<String>>,
    step_bodies: AtomicUsize,
    /// Nodes named `slow` take a permit before finishing.
    gate: Semaphore,
}

impl Probe {
    fn count(list: &Mutex<Vec<String>>, node: &str) -> usize {
        list.lock().unwrap().iter().filter(|n| *n == node).count()
    }
    fn entered(&self, node: &str) -> usize {
        Self::count(&self.entered, node)
    }
    fn done(&self, node: &str) -> usize {
        Self::count(&self.done, node)
    }

    /// Waits until `node` was entered `n` times.
    async fn entered_times(&self, node: &str, n: usize) {
        let deadline = Instant::now() + DEADLINE;
        while self.entered(node) < n {
            assert!(Instant::now() < deadline, "{node} not entered {n} times");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            entered: Mutex::default(),
            done: Mutex::default(),
            step_bodies: AtomicUsize::new(0),
            gate: Semaphore::new(0),
        }
    }
}

/// `a` (a recorded step) → `slow` (waits for the probe's gate) → `c`.
fn gated(probe: &Arc<Probe>) -> CompiledGraph<Doc> {
    let node = |name: &'static str, probe: Arc<Probe>| {
        move |_s: Doc, ctx: oris_runtime::Context| {
            let probe = probe.clone();
            async move {
                probe.entered.lock().unwrap().push(name.into());
                let mut steps = Vec::new();
                if name == "a" {
                    let p = probe.clone();
                    let r: String = ctx
                        .step("charge", async move {
                            p.step_bodies.fetch_add(1, Ordering::SeqCst);
                            Ok("charged".to_owned())
                        })
                        .await?;
                    steps.push(r);
                }
                if name == "slow" {
                    probe.gate.acquire().await.unwrap().forget();
                }
                probe.done.lock().unwrap().push(name.into());
                Ok::<_, NodeError>(DocUpdate::default().log(vec![name.into()]).steps(steps))
            }
        }
    };
    StateGraph::<Doc>::new("gated", "1")
        .node("a", node("a", probe.clone()))
        .node("slow", node("slow", probe.clone()))
        .node("c", node("c", probe.clone()))
        .edge(START, "a")
        .edge("a", "slow")
        .edge("slow", "c")
        .edge("c", END)
        .compile()
        .unwrap()
}

/// `draft` → `ask` (interrupt) → `finish`.
fn approval(probe: &Arc<Probe>) -> CompiledGraph<Doc> {
    let (p1, p2, p3) = (probe.clone(), probe.clone(), probe.clone());
    StateGraph::<Doc>::new("approval", "1")
        .node("draft", move |_s: Doc, _ctx| {
            p1.done.lock().unwrap().push("draft".into());
            async move { Ok::<_, NodeError>(DocUpdate::default().log(vec!["draft".into()])) }
        })
        .node("ask", move |_s: Doc, ctx| {
            p2.entered.lock().unwrap().push("ask".into());
            async move {
                let answer: Value = ctx.interrupt(&json!({"question": "ok?"})).await?;
                Ok(DocUpdate::default().log(vec![format!("answer {answer}")]))
            }
        })
        .node("finish", move |_s: Doc, _ctx| {
            p3.done.lock().unwrap().push("finish".into());
            async move { Ok(DocUpdate::default().log(vec!["finish".into()])) }
        })
        .edge(START, "draft")
        .edge("draft", "ask")
        .edge("ask", "finish")
        .edge("finish", END)
        .compile()
        .unwrap()
}

/// A server with no embedded workers, serving until dropped.
struct TestServer {
    url: String,
    http: reqwest::Client,
    token: Option<String>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    async fn start(graphs: Vec<CompiledGraph<Doc>>, auth: Auth) -> TestServer {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let mut b = Server::builder()
            .store(store)
            .workers(0)
            .auth(auth)
            .lease(Duration::from_secs(3), Duration::from_millis(300))
            .poll_interval(Duration::from_millis(50));
        for g in graphs {
            b = b.graph(g);
        }
        let server = b.build().await.unwrap();
        let token = server.bootstrap_token().map(str::to_owned);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async move { s.cancelled().await })
                .await
                .unwrap();
        });
        TestServer {
            url,
            http: reqwest::Client::new(),
            token,
            stop,
            task: Some(task),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn create(&self, graph: &str, thread: &str) {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/jobs",
                Some(json!({"graph": graph, "thread_id": thread})),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }

    async fn job(&self, thread: &str) -> Value {
        let (status, body) = self
            .call(reqwest::Method::GET, &format!("/v1/jobs/{thread}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Polls the job until `pred` holds.
    async fn until(&self, thread: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let job = self.job(thread).await;
            if pred(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "{thread}: not {what}: {job:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn status(&self, thread: &str, status: &str) -> Value {
        self.until(thread, status, |j| j["status"] == status).await
    }

    async fn timeline(&self, thread: &str) -> Vec<Value> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/jobs/{thread}/timeline?limit=1000"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["events"].as_array().cloned().unwrap_or_default()
    }

    async fn workers(&self) -> Vec<Value> {
        let (status, body) = self.call(reqwest::Method::GET, "/v1/workers", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["workers"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A worker running in a task, with its shutdown token.
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    fn spawn(worker: Worker) -> Running {
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move { worker.run(s).await });
        Running { shutdown, task }
    }

    async fn stop(self) -> Result<(), Error> {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the worker stops")
            .unwrap()
    }
}

fn kinds(timeline: &[Value]) -> Vec<String> {
    timeline
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_execute_on_the_worker_and_every_step_lands_on_the_server() {
    let probe = Arc::new(Probe::default());
    let server = TestServer::start(vec![gated(&probe)], Auth::Disabled).await;
    let worker = Worker::builder(&server.url)
        .worker_id("w-1")
        .capacity(2)
        .graph(gated(&probe))
        .build()
        .unwrap();
    let running = Running::spawn(worker);
    probe.gate.add_permits(3);
    for t in ["t1", "t2", "t3"] {
        server.create("gated", t).await;
    }
    for t in ["t1", "t2", "t3"] {
        let job = server.status(t, "completed").await;
        assert_eq!(job["values"]["log"], json!(["a", "slow", "c"]), "{job:#}");
        assert_eq!(job["values"]["steps"], json!(["charged"]), "{job:#}");
        assert_eq!(job["lease"], Value::Null);
        let kinds = kinds(&server.timeline(t).await);
        assert_eq!(
            kinds.first().map(String::as_str),
            Some("run_started"),
            "{kinds:?}"
        );
        assert_eq!(
            kinds.last().map(String::as_str),
            Some("run_completed"),
            "{kinds:?}"
        );
        assert_eq!(
            kinds.iter().filter(|k| *k == "node_completed").count(),
            3,
            "{kinds:?}"
        );
    }
    for node in ["a", "slow", "c"] {
        assert_eq!(probe.done(node), 3, "{node}");
        assert_eq!(probe.entered(node), 3, "{node}");
    }
    assert_eq!(probe.step_bodies.load(Ordering::SeqCst), 3);
    let workers = server.workers().await;
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(workers[0]["worker_id"], "w-1");
    assert_eq!(workers[0]["state"], "active", "{workers:?}");
    assert_eq!(workers[0]["capacity"], 2);
    running.stop().await.unwrap();
    let workers = server.workers().await;
    assert_eq!(
        workers[0]["state"], "stopped",
        "a graceful stop is announced: {workers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_suspends_and_continues_on_a_worker_after_the_answer() {
    let probe = Arc::new(Probe::default());
    let server = TestServer::start(vec![approval(&probe)], Auth::Disabled).await;
    let worker = Worker::builder(&server.url)
        .worker_id("w-approval")
        .graph(approval(&probe))
        .build()
        .unwrap();
    let running = Running::spawn(worker);
    server.create("approval", "order-1").await;
    let job = server.status("order-1", "interrupted").await;
    assert_eq!(
        job["lease"],
        Value::Null,
        "a suspended run is not leased: {job:#}"
    );
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            "/v1/jobs/order-1/resume",
            Some(json!({"value": "yes"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let job = server.status("order-1", "completed").await;
    assert_eq!(
        job["values"]["log"],
        json!(["draft", "answer \"yes\"", "finish"]),
        "{job:#}"
    );
    assert_eq!(
        probe.done("draft"),
        1,
        "draft ran once, before the interrupt"
    );
    assert_eq!(probe.done("finish"), 1);
    assert_eq!(
        probe.entered("ask"),
        2,
        "ask ran to its interrupt, then with the answer"
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_stops_the_node_on_the_worker() {
    let probe = Arc::new(Probe::default());
    let server = TestServer::start(vec![gated(&probe)], Auth::Disabled).await;
    let worker = Worker::builder(&server.url)
        .worker_id("w-cancel")
        .capacity(1)
        .graph(gated(&probe))
        .build()
        .unwrap();
    let running = Running::spawn(worker);
    server.create("gated", "doomed").await;
    probe.entered_times("slow", 1).await;
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            "/v1/jobs/doomed/cancel",
            Some(json!({"reason": "changed my mind"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let job = server.status("doomed", "cancelled").await;
    assert_eq!(job["status_detail"]["reason"], "changed my mind", "{job:#}");
    // The worker learns it at its next heartbeat and drops the node: with capacity 1, the
    // next run executes only once the cancelled attempt is gone.
    server.create("gated", "next").await;
    probe.entered_times("slow", 2).await;
    // Opening the gate now finishes only the live node; the dropped one never completes.
    probe.gate.add_permits(1);
    server.status("next", "completed").await;
    assert_eq!(probe.done("slow"), 1, "the cancelled node never completed");
    let kinds = kinds(&server.timeline("doomed").await);
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("run_cancelled"),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "node_completed").count(),
        1,
        "only `a` completed: {kinds:?}"
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_finishes_the_node_and_hands_the_run_to_another_worker() {
    let probe = Arc::new(Probe::default());
    let server = TestServer::start(vec![gated(&probe)], Auth::Disabled).await;
    let first = Worker::builder(&server.url)
        .worker_id("w-first")
        .graph(gated(&probe))
        .build()
        .unwrap();
    let first = Running::spawn(first);
    server.create("gated", "handover").await;
    probe.entered_times("slow", 1).await;
    let job = server.job("handover").await;
    assert_eq!(job["lease"]["worker_id"], "w-first", "{job:#}");
    // Shutdown: the running node is let finish.
    first.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !first.task.is_finished(),
        "the worker waits for its running node"
    );
    probe.gate.add_permits(1);
    let stopped_at = Instant::now();
    tokio::time::timeout(DEADLINE, first.task)
        .await
        .expect("the worker stops")
        .unwrap()
        .unwrap();
    assert_eq!(probe.done("slow"), 1);
    assert_eq!(
        probe.entered("c"),
        0,
        "no new node attempt after the shutdown began"
    );
    let job = server.job("handover").await;
    assert_eq!(
        job["lease"],
        Value::Null,
        "the lease was handed back: {job:#}"
    );
    // Another worker continues at once, well before the 3 s lease would have expired.
    let second = Worker::builder(&server.url)
        .worker_id("w-second")
        .graph(gated(&probe))
        .build()
        .unwrap();
    let second = Running::spawn(second);
    let job = server.status("handover", "completed").await;
    assert!(
        stopped_at.elapsed() < Duration::from_secs(3),
        "continued after {:?}",
        stopped_at.elapsed()
    );
    assert_eq!(job["values"]["log"], json!(["a", "slow", "c"]), "{job:#}");
    assert_eq!(probe.done("a"), 1);
    assert_eq!(probe.done("slow"), 1, "the finished node is not run again");
    assert_eq!(probe.done("c"), 1);
    assert_eq!(probe.step_bodies.load(Ordering::SeqCst), 1);
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_bad_settings_are_errors() {
    let probe = Arc::new(Probe::default());
    let server = TestServer::start(vec![gated(&probe)], Auth::Keys).await;
    // No token: 401, for good.
    let worker = Worker::builder(&server.url)
        .worker_id("w-anon")
        .graph(gated(&probe))
        .build()
        .unwrap();
    let err = tokio::time::timeout(DEADLINE, worker.run(CancellationToken::new()))
        .await
        .expect("a refusal ends the worker")
        .unwrap_err();
    assert!(
        matches!(&err, Error::Refused { status: 401, code, .. } if code == "unauthorized"),
        "{err:?}"
    );
    // With the admin token it registers.
    let token = server.token.clone().expect("bootstrap token");
    let worker = Worker::builder(format!("{}/", server.url))
        .token(token)
        .worker_id("w-admin")
        .graph(gated(&probe))
        .build()
        .unwrap();
    let running = Running::spawn(worker);
    let deadline = Instant::now() + DEADLINE;
    while server.workers().await.is_empty() {
        assert!(Instant::now() < deadline, "the worker never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await.unwrap();

    let build = |url: &str, f: fn(oris_worker::WorkerBuilder) -> oris_worker::WorkerBuilder| {
        f(Worker::builder(url)).build().map(drop).unwrap_err()
    };
    let g = gated(&probe);
    // https URLs are spoken (rustls on ring).
    Worker::builder("https://oris.example")
        .graph(g)
        .build()
        .expect("an https URL builds");
    assert!(
        matches!(build("http://127.0.0.1:1", |b| b), Error::Config(m) if m.contains("at least one graph"))
    );
    assert!(matches!(build("ftp://x", |b| b), Error::Config(_)));
    let e = Worker::builder("http://127.0.0.1:1")
        .worker_id("bad id")
        .graph(gated(&probe))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("worker id"), "{e}");
    let e = Worker::builder("http://127.0.0.1:1")
        .capacity(0)
        .graph(gated(&probe))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("capacity"), "{e}");
    let e = Worker::builder("http://127.0.0.1:1")
        .graph(gated(&probe))
        .graph(gated(&probe))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_retried_until_shutdown() {
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let probe = Arc::new(Probe::default());
    let worker = Worker::builder(url)
        .worker_id("w-lonely")
        .graph(gated(&probe))
        .build()
        .unwrap();
    let running = Running::spawn(worker);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !running.task.is_finished(),
        "transport failures are retried, not fatal"
    );
    running.stop().await.unwrap();
}

/// A proxy in front of the server that forwards every request and, for the report-steps
/// it is told to, closes the connection instead of passing the answer on: the report was
/// applied, the worker never hears of it.
struct LossyProxy {
    url: String,
    /// The bodies of the report-steps seen, in order.
    reports: Arc<Mutex<Vec<Vec<u8>>>>,
    /// The answers to polls that carried attempts.
    polls: Arc<Mutex<Vec<Value>>>,
    task: JoinHandle<()>,
}

impl LossyProxy {
    /// Drops the answers of the report-steps numbered (from 1) in `lose`.
    async fn start(upstream: String, lose: Vec<usize>) -> LossyProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let reports: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let polls: Arc<Mutex<Vec<Value>>> = Arc::default();
        let lose = Arc::new(lose);
        let http = reqwest::Client::new();
        let seen = reports.clone();
        let answers = polls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (upstream, lose, http, seen, answers) = (
                    upstream.clone(),
                    lose.clone(),
                    http.clone(),
                    seen.clone(),
                    answers.clone(),
                );
                tokio::spawn(async move {
                    let _ = proxy_connection(conn, &upstream, &lose, &http, &seen, &answers).await;
                });
            }
        });
        LossyProxy {
            url,
            reports,
            polls,
            task,
        }
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one keep-alive connection: request by request.
async fn proxy_connection(
    conn: tokio::net::TcpStream,
    upstream: &str,
    lose: &[usize],
    http: &reqwest::Client,
    seen: &Mutex<Vec<Vec<u8>>>,
    polls: &Mutex<Vec<Value>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        // Headers.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = read_some(&conn, &mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split(' ');
        let method = first.next().unwrap_or_default().to_owned();
        let path = first.next().unwrap_or_default().to_owned();
        let mut length = 0usize;
        let mut auth = None;
        for line in lines {
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "authorization" => auth = Some(v.trim().to_owned()),
                    _ => {}
                }
            }
        }
        while buf.len() < end + length {
            let mut chunk = [0u8; 4096];
            let n = read_some(&conn, &mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = buf[end..end + length].to_vec();
        buf.drain(..end + length);
        let report = path.ends_with("/report-step").then(|| body.clone());
        let mut req = http
            .request(method.parse().unwrap(), format!("{upstream}{path}"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.map_err(std::io::Error::other)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(std::io::Error::other)?;
        if path.ends_with("/poll")
            && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
            && v["attempts"].as_array().is_some_and(|a| !a.is_empty())
        {
            polls.lock().unwrap().push(v);
        }
        if let Some(report) = report {
            let n = {
                let mut seen = seen.lock().unwrap();
                seen.push(report);
                seen.len()
            };
            if lose.contains(&n) {
                // Applied upstream; the answer is lost on the way back.
                return Ok(());
            }
        }
        let head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            bytes.len()
        );
        write_all(&conn, head.as_bytes()).await?;
        write_all(&conn, &bytes).await?;
    }
}

/// Reads what is there (0 at the end of the stream), without tokio's `io-util`.
async fn read_some(conn: &tokio::net::TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        conn.readable().await?;
        match conn.try_read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

async fn write_all(conn: &tokio::net::TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        conn.writable().await?;
        match conn.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_whose_answer_was_lost_is_sent_again_and_recognised() {
    let probe = Arc::new(Probe::default());
    probe.gate.add_permits(1);
    let server = TestServer::start(vec![gated(&probe)], Auth::Disabled).await;
    // The answers of the 1st (the step `charge`) and 3rd reports are lost.
    let proxy = LossyProxy::start(server.url.clone(), vec![1, 3]).await;
    let worker = Worker::builder(&proxy.url)
        .worker_id("w-lossy")
        .graph(gated(&probe))
        .build()
        .unwrap();
    let running = Running::spawn(worker);
    server.create("gated", "lossy").await;
    let job = server.status("lossy", "completed").await;
    assert_eq!(job["values"]["log"], json!(["a", "slow", "c"]), "{job:#}");
    assert_eq!(job["values"]["steps"], json!(["charged"]), "{job:#}");
    // Nothing ran twice, nothing was written twice.
    assert_eq!(probe.step_bodies.load(Ordering::SeqCst), 1);
    for node in ["a", "slow", "c"] {
        assert_eq!(probe.done(node), 1, "{node}");
    }
    let timeline = server.timeline("lossy").await;
    let kinds = kinds(&timeline);
    assert_eq!(
        kinds.iter().filter(|k| *k == "step_recorded").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "node_completed").count(),
        3,
        "{kinds:?}"
    );
    let seqs: Vec<u64> = timeline
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    // Each report whose answer was lost was sent again, the same; nothing else was.
    let reports = proxy.reports.lock().unwrap().clone();
    assert!(reports.len() >= 5, "{} reports", reports.len());
    assert_eq!(
        reports[1], reports[0],
        "the 1st report is sent again as it was"
    );
    assert_eq!(
        reports[3], reports[2],
        "the 3rd report is sent again as it was"
    );
    let distinct: std::collections::BTreeSet<&Vec<u8>> = reports.iter().collect();
    assert_eq!(distinct.len(), reports.len() - 2);
    running.stop().await.unwrap();
}

/// `wait` (waits up to 30 s for the event `paid`) → `done`.
fn payment(probe: &Arc<Probe>) -> CompiledGraph<Doc> {
    let (p1, p2) = (probe.clone(), probe.clone());
    StateGraph::<Doc>::new("payment", "1")
        .node("wait", move |_s: Doc, ctx| {
            p1.entered.lock().unwrap().push("wait".into());
            async move {
                let paid: Option<String> =
                    ctx.wait_for_event("paid", Duration::from_secs(30)).await?;
                Ok::<_, NodeError>(
                    DocUpdate::default().log(vec![format!("paid {}", paid.unwrap_or_default())]),
                )
            }
        })
        .node("done", move |_s: Doc, _ctx| {
            p2.done.lock().unwrap().push("done".into());
            async move { Ok(DocUpdate::default().log(vec!["done".into()])) }
        })
        .edge(START, "wait")
        .edge("wait", "done")
        .edge("done", END)
        .compile()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_waiting_for_an_event_continues_on_a_worker_when_it_arrives() {
    let probe = Arc::new(Probe::default());
    let server = TestServer::start(vec![payment(&probe)], Auth::Disabled).await;
    let worker = Worker::builder(&server.url)
        .worker_id("w-events")
        .graph(payment(&probe))
        .build()
        .unwrap();
    let running = Running::spawn(worker);
    server.create("payment", "invoice-1").await;
    let job = server.status("invoice-1", "waiting").await;
    assert_eq!(
        job["lease"],
        Value::Null,
        "a waiting run is not leased: {job:#}"
    );
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            "/v1/jobs/invoice-1/events",
            Some(json!({"name": "paid", "payload": "42 EUR"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let job = server.status("invoice-1", "completed").await;
    assert_eq!(
        job["values"]["log"],
        json!(["paid 42 EUR", "done"]),
        "{job:#}"
    );
    assert_eq!(probe.done("done"), 1);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_continue_from_snapshots_the_worker_reported() {
    let probe = Arc::new(Probe::default());
    probe.gate.add_permits(2);
    let server = TestServer::start(vec![gated(&probe)], Auth::Disabled).await;
    // Watches the attempts the worker receives.
    let proxy = LossyProxy::start(server.url.clone(), Vec::new()).await;
    // A snapshot at every superstep: the second run's image starts at one, without the
    // log before it.
    let worker = Worker::builder(&proxy.url)
        .worker_id("w-snap")
        .engine_options(oris_runtime::EngineOptions {
            snapshot_every: 1,
            ..Default::default()
        })
        .graph(gated(&probe))
        .build()
        .unwrap();
    let running = Running::spawn(worker);
    server.create("gated", "twice").await;
    server.status("twice", "completed").await;
    // The same thread again: a new run on top of the first one's state.
    server.create("gated", "twice").await;
    let job = server
        .until("twice", "completed twice", |j| {
            j["status"] == "completed"
                && j["values"]["log"].as_array().is_some_and(|l| l.len() == 6)
        })
        .await;
    assert_eq!(
        job["values"]["log"],
        json!(["a", "slow", "c", "a", "slow", "c"]),
        "{job:#}"
    );
    assert_eq!(job["values"]["steps"], json!(["charged", "charged"]));
    assert_eq!(probe.done("c"), 2);
    let timeline = server.timeline("twice").await;
    let seqs: Vec<u64> = timeline
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    // The second attempt's image: the snapshot the first run's worker reported, and the
    // log from it on only.
    let polls = proxy.polls.lock().unwrap().clone();
    assert_eq!(polls.len(), 2, "one attempt per run: {polls:#?}");
    let image = &polls[1]["attempts"][0]["image"];
    let at = image["snapshot"]["at_seq"]
        .as_u64()
        .expect("a snapshot in the image");
    let first = image["events"][0]["seq"].as_u64().unwrap();
    assert!(
        at > 1 && first == at,
        "snapshot at {at}, events from {first}: {image:#}"
    );
    running.stop().await.unwrap();
}

/// A run resumed on a worker after a snapshot was taken inside it: the image carries the
/// log from the run's first event (the fold needs the run's input and settings), not only
/// from the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_resumed_after_a_snapshot_inside_it_continues_on_a_worker() {
    let probe = Arc::new(Probe::default());
    let server = TestServer::start(vec![approval(&probe)], Auth::Disabled).await;
    let proxy = LossyProxy::start(server.url.clone(), Vec::new()).await;
    let worker = Worker::builder(&proxy.url)
        .worker_id("w-snap-inside")
        .engine_options(oris_runtime::EngineOptions {
            snapshot_every: 1,
            ..Default::default()
        })
        .graph(approval(&probe))
        .build()
        .unwrap();
    let running = Running::spawn(worker);
    server.create("approval", "inside-1").await;
    server.status("inside-1", "interrupted").await;
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            "/v1/jobs/inside-1/resume",
            Some(json!({"value": "yes"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let job = server.status("inside-1", "completed").await;
    assert_eq!(
        job["values"]["log"],
        json!(["draft", "answer \"yes\"", "finish"]),
        "{job:#}"
    );
    assert_eq!(probe.done("draft"), 1);
    // The resumed attempt's image: a snapshot after the run's start, and the log from the
    // run's first event.
    let polls = proxy.polls.lock().unwrap().clone();
    let attempts: Vec<&Value> = polls
        .iter()
        .flat_map(|p| p["attempts"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(attempts.len(), 2, "{polls:#?}");
    let image = &attempts[1]["image"];
    let at = image["snapshot"]["at_seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("a snapshot in the image: {image:#}"));
    let first = image["events"][0]["seq"].as_u64().unwrap();
    assert!(
        at > 1 && first == 1,
        "snapshot at {at}, events from {first}"
    );
    running.stop().await.unwrap();
}
