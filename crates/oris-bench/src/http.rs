//! S1 and S2: clients of the real server over HTTP/1.1 keep-alive.
//!
//! The server runs in a child process (this binary's hidden `__server` command, see
//! `server`), on a fresh store and a free loopback port, with a provisioned admin token;
//! the clients are `--concurrency` tasks sharing one connection pool.
//!
//! - S1: `POST /v1/jobs` (graph `bench-s1`), then `GET /v1/jobs/{thread}/wait` until the run
//!   completed; the latency is the whole of it.
//! - S2: `POST /v1/jobs` (graph `bench-w3`), wait until it is interrupted at `b`, then
//!   `POST /v1/interrupts/{id}/resume` and wait until it completed; `resume_*` time the
//!   resume call to the completion observed, the latency the whole cycle.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::calibrate::{self, Calibration};
use crate::cli::{Backend, Cli, Workload};
use crate::counting;
use crate::harness::{Limit, Measured, Ran, drive, result};
use crate::report::{WorkloadResult, round};
use crate::server::{self, ServerCounters};
use crate::workloads;

/// How long the server may take to start listening and be ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The `wait` long-poll of one request (the server's maximum).
const WAIT: &str = "60s";

/// The server child process.
#[derive(Debug)]
struct ServerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    url: String,
}

impl ServerProcess {
    /// Starts `oris-bench __server` for `w` and reads its address.
    fn spawn(cli: &Cli, w: Workload, dir: &Path, token: &str) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the bench binary")?;
        let db = dir.join(format!("{}.db", w.name().to_ascii_lowercase()));
        let durability = match oris::Durability::from(cli.durability) {
            oris::Durability::Sync => "sync",
            oris::Durability::Batched => "batched",
            _ => "exit",
        };
        let mut child = Command::new(exe)
            .arg(server::COMMAND)
            .args(["--backend", cli.backend.name(), "--durability", durability])
            .arg("--db")
            .arg(&db)
            .args(["--worker-threads", &cli.worker_threads.to_string()])
            .env(server::TOKEN_ENV, token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the bench server process")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .context("cannot read the bench server's address")?;
        let url = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["listening"].as_str().map(str::to_owned));
        let Some(url) = url else {
            let _ = child.kill();
            let status = child.wait();
            bail!("the bench server did not start ({status:?}): {line:?}");
        };
        Ok(ServerProcess {
            child,
            stdin,
            stdout,
            url,
        })
    }

    /// The server's counters (outside timed sections: this blocks).
    fn counters(&mut self) -> anyhow::Result<ServerCounters> {
        self.stdin.write_all(b"counters\n")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        serde_json::from_str(&line)
            .with_context(|| format!("bad counters line from the bench server: {line:?}"))
    }

    /// Stops the server gracefully and reaps it.
    fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stdin.write_all(b"stop\n");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the bench server exited with {status}");
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the bench server did not stop within 60 s; killed");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // After `stop` this finds it reaped; after an error it must not outlive the bench.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A fresh admin token: `oris_bench_<32 hex digits>` from the std hasher's random keys.
fn token() -> String {
    use std::hash::{BuildHasher as _, RandomState};
    let a = RandomState::new().hash_one(Instant::now());
    let b = RandomState::new().hash_one(std::process::id());
    format!("oris_bench_{a:016x}{b:016x}")
}

/// The HTTP client of one workload.
#[derive(Debug, Clone)]
struct Api {
    http: reqwest::Client,
    base: Arc<str>,
    auth: Arc<str>,
}

#[derive(Debug, Deserialize)]
struct WaitResult<V> {
    timed_out: bool,
    job: Job<V>,
}

#[derive(Debug, Deserialize)]
struct Job<V> {
    status: String,
    #[serde(default)]
    interrupts: Vec<Pending>,
    values: Option<V>,
}

#[derive(Debug, Deserialize)]
struct Pending {
    interrupt_id: String,
    node: String,
    payload: Value,
}

impl Api {
    fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(usize::MAX)
            .timeout(Duration::from_secs(120))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Api {
            http,
            base: base.into(),
            auth: format!("Bearer {token}").into(),
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Vec<u8>, String> {
        let resp = req
            .header(reqwest::header::AUTHORIZATION, &*self.auth)
            .send()
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| format!("{what}: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "{what}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(body.to_vec())
    }

    /// `POST /v1/jobs` with the graph's initial state as input; expects 202.
    async fn create(&self, graph: &str, thread: &str, input: &Value) -> Result<(), String> {
        let req = self
            .http
            .post(format!("{}/v1/jobs", self.base))
            .json(&json!({ "graph": graph, "thread_id": thread, "input": input }));
        self.send(req, "create").await.map(drop)
    }

    /// `GET /v1/jobs/{thread}/wait`: the job once settled.
    async fn wait<V: DeserializeOwned>(&self, thread: &str) -> Result<Job<V>, String> {
        let req = self.http.get(format!(
            "{}/v1/jobs/{thread}/wait?timeout={WAIT}",
            self.base
        ));
        let body = self.send(req, "wait").await?;
        let r: WaitResult<V> =
            serde_json::from_slice(&body).map_err(|e| format!("wait: bad body: {e}"))?;
        if r.timed_out {
            return Err(format!("wait timed out; the run is {}", r.job.status));
        }
        Ok(r.job)
    }

    /// `POST /v1/interrupts/{id}/resume`.
    async fn resume(&self, interrupt_id: &str, value: &str) -> Result<(), String> {
        let req = self
            .http
            .post(format!("{}/v1/interrupts/{interrupt_id}/resume", self.base))
            .json(&json!({ "value": value }));
        self.send(req, "resume").await.map(drop)
    }
}

/// The verdict on a job that should have completed in a state `check` accepts.
fn completed<V>(job: &Job<V>, check: impl FnOnce(&V) -> Result<(), String>) -> Result<(), String> {
    match (job.status.as_str(), &job.values) {
        ("completed", Some(v)) => check(v),
        ("completed", None) => Err("completed without values".to_owned()),
        (other, _) => Err(format!("the run is {other}, not completed")),
    }
}

/// One S1 run.
async fn s1_run(api: &Api, thread: &str) -> Ran {
    let t0 = Instant::now();
    let input = json!({ "counter": 0, "log": [] });
    let job = match api.create("bench-s1", thread, &input).await {
        Ok(()) => api.wait::<workloads::Linear>(thread).await,
        Err(e) => Err(e),
    };
    let latency_ns = t0.elapsed().as_nanos() as u64;
    Ran {
        latency_ns,
        resume_ns: None,
        verdict: job.and_then(|j| completed(&j, workloads::check_three_steps)),
    }
}

/// One S2 cycle.
async fn s2_cycle(api: &Api, thread: &str) -> Ran {
    let t0 = Instant::now();
    let fail = |verdict: String| Ran {
        latency_ns: t0.elapsed().as_nanos() as u64,
        resume_ns: None,
        verdict: Err(verdict),
    };
    if let Err(e) = api.create("bench-w3", thread, &json!({ "log": [] })).await {
        return fail(e);
    }
    let interrupt = match api.wait::<workloads::Approval>(thread).await {
        Ok(job) => match (job.status.as_str(), job.interrupts.as_slice()) {
            ("interrupted", [p]) if p.node == "b" && p.payload == workloads::W3_PAYLOAD => {
                p.interrupt_id.clone()
            }
            (status, ps) => {
                return fail(format!(
                    "expected one interrupt of b asking {:?}, the run is {status} with {ps:?}",
                    workloads::W3_PAYLOAD
                ));
            }
        },
        Err(e) => return fail(e),
    };
    let t1 = Instant::now();
    if let Err(e) = api.resume(&interrupt, workloads::W3_ANSWER).await {
        return fail(e);
    }
    // `wait` does not return the run as it stood before the resume: an answered interrupt
    // counts as about to continue. Still `interrupted` here is wrong.
    let job = api.wait::<workloads::Approval>(thread).await;
    let resume_ns = t1.elapsed().as_nanos() as u64;
    Ran {
        latency_ns: t0.elapsed().as_nanos() as u64,
        resume_ns: Some(resume_ns),
        verdict: job.and_then(|j| completed(&j, workloads::check_approval)),
    }
}

/// Runs S1 or S2 against a fresh server process and measures it.
///
/// # Errors
/// If the server cannot be started, read or stopped; wrong runs are counted, not errors.
pub async fn bench(
    cli: &Cli,
    w: Workload,
    dir: &Path,
    calibration: &Calibration,
    limit: Limit,
) -> anyhow::Result<WorkloadResult> {
    let token = token();
    let mut server = ServerProcess::spawn(cli, w, dir, &token)?;
    let api = Api::new(&server.url, &token)?;
    ready(&api).await?;
    let before = server.counters()?;
    let client_cpu_before = server::process_cpu_secs();
    let concurrency = cli.concurrency_for(w);
    let prefix = format!("{}-", w.name().to_ascii_lowercase());
    let samples = match w {
        Workload::S1 => {
            let run = move |id: String, _i: u64| {
                let api = api.clone();
                async move { s1_run(&api, &id).await }
            };
            drive(run, &prefix, limit, concurrency).await
        }
        Workload::S2 => {
            let run = move |id: String, _i: u64| {
                let api = api.clone();
                async move { s2_cycle(&api, &id).await }
            };
            drive(run, &prefix, limit, concurrency).await
        }
        _ => bail!("{} is not an HTTP workload", w.name()),
    };
    let client_cpu = server::process_cpu_secs()
        .zip(client_cpu_before)
        .map(|(a, b)| a - b);
    let after = server.counters()?;
    server.stop()?;
    let mut samples = samples;
    if w == Workload::S2 {
        // Node `a` runs once per cycle: a resume that ran it again is wrong even if the
        // final state looks right.
        let a_runs = after.a_runs - before.a_runs;
        if a_runs != samples.runs || after.a_repeated > 0 {
            samples.wrong = samples.wrong.max(1);
            samples.problems.push(format!(
                "node a ran {a_runs} times for {} cycles ({} threads more than once)",
                samples.runs, after.a_repeated
            ));
        }
    }
    for p in &samples.problems {
        eprintln!("oris-bench: {}: {p}", w.name());
    }
    let calibration_after = if cli.backend == Backend::Memory {
        None
    } else {
        let (dir, secs) = (dir.to_owned(), (cli.calibrate_seconds / 2.0).max(0.05));
        let c = tokio::task::spawn_blocking(move || calibrate::run(&dir, secs)).await??;
        Some(c.durable_commits_per_sec)
    };
    let runs = samples.runs;
    let m = Measured {
        samples,
        commits: after.commits - before.commits,
        before: before.store,
        after: after.store,
        memory_bytes: None,
        calibration_after,
    };
    let mut r = result(cli, w, concurrency, &m, calibration);
    r.store_calls_per_run = Some(counting::per_run(&before.calls, &after.calls, runs));
    let per_run_ms = |secs: f64| round(secs * 1e3 / runs.max(1) as f64, 3);
    r.server_cpu_ms_per_run = after
        .cpu_secs
        .zip(before.cpu_secs)
        .map(|(a, b)| per_run_ms(a - b));
    r.client_cpu_ms_per_run = client_cpu.map(per_run_ms);
    Ok(r)
}

/// Waits until `/readyz` answers 200.
async fn ready(api: &Api) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let r = api.http.get(format!("{}/readyz", api.base)).send().await;
        match r {
            Ok(r) if r.status().is_success() => return Ok(()),
            _ if Instant::now() >= deadline => {
                bail!("the bench server at {} was not ready within 60 s", api.base)
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
