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

use std::path::Path;
use std::time::Instant;

use anyhow::bail;
use reqwest::Method;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::calibrate::{self, Calibration};
use crate::cli::{Backend, Cli, Workload};
use crate::client::{self, Api};
use crate::counting;
use crate::harness::{Limit, Measured, Ran, drive, result};
use crate::report::{WorkloadResult, round};
use crate::server::{self, ServerProcess};
use crate::workloads;

/// The `wait` long-poll of one request (the server's maximum).
const WAIT: &str = "60s";

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

/// S1's and S2's calls; their errors are the verdicts of wrong runs.
impl Api {
    async fn call(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Vec<u8>, String> {
        self.send(req, what).await.map_err(|e| format!("{e:#}"))
    }

    /// `POST /v1/jobs` with the graph's initial state as input; expects 202.
    async fn create(&self, graph: &str, thread: &str, input: &Value) -> Result<(), String> {
        let req = self
            .request(Method::POST, "/v1/jobs")
            .json(&json!({ "graph": graph, "thread_id": thread, "input": input }));
        self.call(req, "create").await.map(drop)
    }

    /// `GET /v1/jobs/{thread}/wait`: the job once settled.
    async fn wait<V: DeserializeOwned>(&self, thread: &str) -> Result<Job<V>, String> {
        let req = self.request(
            Method::GET,
            &format!("/v1/jobs/{thread}/wait?timeout={WAIT}"),
        );
        let body = self.call(req, "wait").await?;
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
            .request(
                Method::POST,
                &format!("/v1/interrupts/{interrupt_id}/resume"),
            )
            .json(&json!({ "value": value }));
        self.call(req, "resume").await.map(drop)
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
    let token = client::token();
    let db = dir.join(format!("{}.db", w.name().to_ascii_lowercase()));
    let mut server = ServerProcess::spawn(cli, &db, server::DEFAULT_WORKERS, &token)?;
    let api = Api::new(&server.url, &token)?;
    api.ready().await?;
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
