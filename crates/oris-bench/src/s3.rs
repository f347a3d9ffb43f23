//! S3 of WORKLOADS.md: dispatch throughput — how many attempts per second the store, and
//! the server's worker protocol over HTTP, hand out to concurrent claimers — and failover.
//!
//! The two dispatch parts pre-fill `--runs` queued runs (default 4,000; not timed), then
//! `--concurrency` claimers (default 4) take them in batches of [`BATCH`] until none is
//! left, and finish every run they get with one fenced commit (`RunCompleted` and the
//! status) — each run is dispatched exactly once, and a claimer asks again only when its
//! batch is finished. No node runs: this measures dispatch, not execution. The rate is the
//! runs claimed and finished per second of the drain; the latencies are those of the claim
//! calls (polls).
//!
//! - `store`: `Store::claim` and `Store::commit` on the `--backend` store (SQLite: a durable
//!   file in the bench's directory), the path of the embedded worker pool.
//! - `http`: a real server process (this binary's `__server`, with `--workers 0`: no
//!   embedded pool) and remote-worker clients: `POST /v1/workers/poll` (claim, with thread
//!   images), `POST /v1/workers/{id}/report-step` (the fenced terminal commit) and
//!   `POST /v1/workers/{id}/ack` (`finished`) — three requests per run.
//!
//! Every run must be claimed once and end completed, otherwise it counts as wrong.
//!
//! - `failover`: `oris-crash serve` (SQLite, no embedded pool, a 2 s lease renewed every
//!   0.5 s) and two `oris-crash worker` processes executing its `chain` graph (`a → b → c`,
//!   two recorded steps per node, every execution marked in a shared file). Per round
//!   (`--failover-rounds`, default 10): a run whose node `b` sleeps a minute between its
//!   recorded steps on its first execution; once `b`'s first step is recorded, the lease
//!   holder gets SIGKILL; the time from the kill to the run completed (long-poll `wait`) is
//!   the failover time; then a fresh worker replaces the dead one. Completed nodes executed
//!   again (`exec` marks beyond one per node) and recorded step bodies run again must both
//!   be 0; the final state must be `a, b, c`. The `oris-crash` binary is found next to this
//!   one (`cargo build --release -p oris-crash -p oris-bench`) or at
//!   `ORIS_BENCH_CRASH_BIN`; without it the part is skipped with a message.

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use oris::event::{Barriers, Boundary, Event, EventBody, RunSettings, Task};
use oris::store::{ClaimRequest, Commit, Fence, RunFilter, RunRecord, RunWrite, Store};
use oris::{CheckpointId, Durability, RunId, RunStatus, Seq, ThreadId, Timestamp};
use serde::Serialize;
use serde_json::{Value, json};

use crate::backend;
use crate::calibrate::Calibration;
use crate::cli::Cli;
use crate::client::{self, Api};
use crate::report::{percentile, round};
use crate::server::ServerProcess;

/// Runs one claim (poll) asks for at most.
pub const BATCH: usize = 16;
/// Claimers by default.
const CLAIMERS: u32 = 4;
/// Runs pre-filled by default.
const DEFAULT_RUNS: u64 = 4_000;
/// Writers filling the queue.
const PREFILL_WRITERS: u64 = 32;
/// The lease of the store claims: longer than any drain, so nothing is claimed twice.
const LEASE: Duration = Duration::from_secs(300);
/// The graph of the store part's runs.
const STORE_GRAPH: &str = "bench-s3";
/// The graph of the HTTP part's runs: one the bench server registers.
const HTTP_GRAPH: (&str, &str) = ("bench-s1", "1");
/// The worker protocol version the bench speaks: this build's.
const PROTOCOL: u32 = oris_core::protocol::PROTOCOL_VERSION;

/// One S3 result line.
#[derive(Debug, Clone, Serialize)]
pub struct S3Result {
    /// `S3`.
    pub workload: &'static str,
    /// `store` or `http`.
    pub part: &'static str,
    /// `memory`, `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Durability of the finishing commits (`store`) or of the server's runs (`http`).
    pub durability: &'static str,
    /// Concurrent claimers.
    pub concurrency: u32,
    /// Runs one claim (poll) asks for at most.
    pub claim_batch: usize,
    /// Runs claimed and finished.
    pub runs: u64,
    /// Runs not claimed exactly once or not completed at the end.
    pub wrong_runs: u64,
    /// Wall time of the drain (failover: of every round), in seconds.
    pub seconds: f64,
    /// Runs claimed and finished per second (= `claims_per_sec`); `null` for failover.
    pub runs_per_sec: Option<f64>,
    /// Attempts claimed per second; `null` for failover.
    pub claims_per_sec: Option<f64>,
    /// Claim calls (polls) made, the empty last ones included; 0 for failover.
    pub claim_calls: u64,
    /// Median latency of a claim call (poll), in milliseconds; failover: of the failover.
    pub p50_ms: Option<f64>,
    /// 95th percentile, in milliseconds.
    pub p95_ms: Option<f64>,
    /// 99th percentile, in milliseconds.
    pub p99_ms: Option<f64>,
    /// Requests (or store calls) per run: claim share, finishing commit, ack; `null` for
    /// failover.
    pub calls_per_run: Option<f64>,
    /// Failover: the lease TTL, in milliseconds (`null` for the dispatch parts).
    pub lease_ms: Option<u64>,
    /// Failover: median time from the SIGKILL to the run completed by the other worker, in
    /// milliseconds (`null` for the dispatch parts).
    pub failover_p50_ms: Option<f64>,
    /// Failover: 95th percentile, in milliseconds.
    pub failover_p95_ms: Option<f64>,
    /// Failover: completed nodes executed again, over every round (must be 0).
    pub reexecuted_nodes: Option<u64>,
    /// Failover: recorded step bodies executed again, over every round (must be 0).
    pub reexecuted_steps: Option<u64>,
    /// The machine's durable commit rate measured before the workloads.
    pub durable_commits_per_sec: f64,
}

/// Claim calls of one claimer: what it got and how long each call took.
#[derive(Debug, Default)]
struct Claimed {
    runs: Vec<RunId>,
    /// Runs whose finishing failed, with why (the first few).
    problems: Vec<String>,
    failed: u64,
    latencies_ns: Vec<u64>,
}

impl Claimed {
    /// Counts the claimed `run`, wrong if finishing it failed.
    fn finished<T, E: std::fmt::Display>(&mut self, run: RunId, done: Result<T, E>) {
        self.runs.push(run);
        if let Err(e) = done {
            self.failed += 1;
            if self.problems.len() < 3 {
                self.problems.push(format!("finishing {run}: {e:#}"));
            }
        }
    }
}

/// Runs both parts of S3 and prints their lines; `Ok(false)` if any run was wrong.
///
/// # Errors
/// If a store or the server cannot be opened, started or read.
pub async fn run(cli: &Cli, dir: &Path, calibration: &Calibration) -> anyhow::Result<bool> {
    let mut correct = true;
    let mut report = |part: S3Result| {
        if part.wrong_runs > 0 {
            correct = false;
            eprintln!(
                "oris-bench: S3 {}: {} of {} runs went wrong (not claimed once and completed, \
                 or, failing over, executed a completed node or recorded step again)",
                part.part, part.wrong_runs, part.runs
            );
        }
        print(cli.json, &part);
    };
    report(store_part(cli, dir, calibration).await?);
    report(http_part(cli, dir, calibration).await?);
    if cli.failover_rounds > 0
        && let Some(part) = failover_part(cli, dir, calibration).await?
    {
        report(part);
    }
    Ok(correct)
}

fn print(json: bool, r: &S3Result) {
    let line = if json {
        serde_json::to_string(r).expect("invariant: results serialize")
    } else {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        let wrong = if r.wrong_runs > 0 {
            format!("  WRONG: {}", r.wrong_runs)
        } else {
            String::new()
        };
        match (r.claims_per_sec, r.calls_per_run) {
            (Some(rate), Some(calls)) => format!(
                "S3 {:<8} {:<7} {:<7} {} claimers × {}: {} runs in {:.2} s = {rate:.0} \
                 claims/s (claim p50 {} ms, p95 {} ms, p99 {} ms; {} claim calls; {calls:.2} \
                 calls/run){wrong}",
                r.part,
                r.backend,
                r.durability,
                r.concurrency,
                r.claim_batch,
                r.runs,
                r.seconds,
                ms(r.p50_ms),
                ms(r.p95_ms),
                ms(r.p99_ms),
                r.claim_calls,
            ),
            _ => format!(
                "S3 {:<8} sqlite  sync    {} kills, lease {} ms: failover p50 {} ms, p95 {} ms; \
                 re-executed nodes {}, steps {}{wrong}",
                r.part,
                r.runs,
                r.lease_ms.unwrap_or(0),
                ms(r.failover_p50_ms),
                ms(r.failover_p95_ms),
                r.reexecuted_nodes.unwrap_or(0),
                r.reexecuted_steps.unwrap_or(0),
            ),
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The result line of a part from the claimers' samples.
fn result(
    cli: &Cli,
    part: &'static str,
    claimers: u32,
    expected: u64,
    claimed: Vec<Claimed>,
    elapsed: Duration,
    calibration: &Calibration,
) -> S3Result {
    let mut seen = HashSet::new();
    let mut duplicates = 0u64;
    let mut failed = 0u64;
    let mut latencies = Vec::new();
    for c in &claimed {
        for r in &c.runs {
            if !seen.insert(*r) {
                duplicates += 1;
            }
        }
        failed += c.failed;
        latencies.extend_from_slice(&c.latencies_ns);
        for p in &c.problems {
            eprintln!("oris-bench: S3 {part}: {p}");
        }
    }
    latencies.sort_unstable();
    let runs = seen.len() as u64;
    let missing = expected.saturating_sub(runs);
    let wrong = duplicates + failed + missing;
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        (runs - failed.min(runs)) as f64 / secs
    } else {
        0.0
    };
    let ms = |p: f64| percentile(&latencies, p).map(|ns| round(ns as f64 / 1e6, 3));
    S3Result {
        workload: "S3",
        part,
        backend: cli.backend.name(),
        durability: Durability::from(cli.durability).as_str(),
        concurrency: claimers,
        claim_batch: BATCH,
        runs,
        wrong_runs: wrong,
        seconds: round(secs, 3),
        runs_per_sec: Some(round(rate, 1)),
        claims_per_sec: Some(round(rate, 1)),
        claim_calls: latencies.len() as u64,
        p50_ms: ms(50.0),
        p95_ms: ms(95.0),
        p99_ms: ms(99.0),
        calls_per_run: None,
        lease_ms: None,
        failover_p50_ms: None,
        failover_p95_ms: None,
        reexecuted_nodes: None,
        reexecuted_steps: None,
        durable_commits_per_sec: round(calibration.durable_commits_per_sec, 1),
    }
}

fn runs(cli: &Cli) -> u64 {
    cli.runs.unwrap_or(DEFAULT_RUNS)
}

fn claimers(cli: &Cli) -> u32 {
    cli.concurrency.unwrap_or(CLAIMERS)
}

// --- The store part ---------------------------------------------------------------------

/// The queued run `i` of the store part and the commit creating it (`RunStarted` whose
/// first superstep runs `work`).
fn queued(i: u64) -> anyhow::Result<Commit> {
    let thread = ThreadId::new(format!("s3-{i}"))?;
    let now = Timestamp::now();
    let run = RunRecord::new(
        RunId::generate(),
        thread.clone(),
        STORE_GRAPH,
        "1",
        RunStatus::Queued,
        Seq(1),
        now,
    );
    let started = Event {
        seq: Seq(1),
        run_id: run.run_id,
        at: now,
        body: EventBody::RunStarted {
            graph: STORE_GRAPH.to_owned(),
            graph_version: "1".to_owned(),
            input: oris::event::Payload::from_json("{}".to_owned())?,
            settings: RunSettings {
                durability: Durability::Batched,
                deadline: None,
                superstep_limit: 25,
                interrupt_before: Vec::new(),
                interrupt_after: Vec::new(),
            },
            boundary: Boundary {
                next: vec![Task::Node("work".to_owned())],
                barriers: Barriers::new(),
            },
        },
    };
    Ok(Commit {
        thread_id: thread,
        expected_head: Seq::ZERO,
        events: vec![started],
        run: Some(RunWrite::Create(run)),
        snapshot: None,
        // Filling the queue is not measured; the drain's durable commits flush it.
        durability: Durability::Batched,
        fence: None,
    })
}

/// The fenced commit that ends a claimed run: `RunCompleted` after the thread's head
/// `head`, with the status.
fn finish(thread: ThreadId, head: Seq, fence: Fence, durability: Durability) -> Commit {
    Commit {
        thread_id: thread,
        expected_head: head,
        events: vec![Event {
            seq: head.next(),
            run_id: fence.run_id,
            at: Timestamp::now(),
            body: EventBody::RunCompleted,
        }],
        run: Some(RunWrite::SetStatus {
            run_id: fence.run_id,
            status: RunStatus::Completed {
                checkpoint: CheckpointId(head),
            },
        }),
        snapshot: None,
        durability,
        fence: Some(fence),
    }
}

/// Runs `n` jobs of `make(i)` on `PREFILL_WRITERS` tasks.
async fn prefill<F, Fut>(n: u64, make: F) -> anyhow::Result<()>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let make = Arc::new(make);
    let mut tasks = Vec::new();
    for k in 0..PREFILL_WRITERS.min(n.max(1)) {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = k;
            while i < n {
                make(i).await?;
                i += PREFILL_WRITERS;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn store_part(cli: &Cli, dir: &Path, calibration: &Calibration) -> anyhow::Result<S3Result> {
    let opened = backend::open(cli.backend, &dir.join("s3.db")).await?;
    let store = opened.store.clone();
    let n = runs(cli);
    let s = store.clone();
    prefill(n, move |i| {
        let s = s.clone();
        async move {
            s.commit(queued(i)?).await?;
            Ok(())
        }
    })
    .await
    .context("cannot fill the queue")?;
    let durability: Durability = cli.durability.into();
    let claimers = claimers(cli);
    let started = Instant::now();
    let tasks: Vec<_> = (0..claimers)
        .map(|k| tokio::spawn(store_claimer(store.clone(), k, durability)))
        .collect();
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.push(t.await??);
    }
    let elapsed = started.elapsed();
    let mut r = result(cli, "store", claimers, n, claimed, elapsed, calibration);
    let claim_calls = r.claim_calls as f64;
    r.calls_per_run = Some(round(
        (claim_calls + r.runs as f64) / r.runs.max(1) as f64,
        3,
    ));
    // Every run ended completed: none is left unfinished.
    let unfinished = store
        .runs(&RunFilter {
            graph: Some(STORE_GRAPH.to_owned()),
            ..RunFilter::unfinished()
        })
        .await?
        .len() as u64;
    r.wrong_runs = r.wrong_runs.max(unfinished);
    Ok(r)
}

/// Claims batches until none is ready, finishing each batch's runs concurrently.
async fn store_claimer(
    store: Arc<dyn Store>,
    k: u32,
    durability: Durability,
) -> anyhow::Result<Claimed> {
    let mut out = Claimed::default();
    let worker_id = format!("s3-claimer-{k}");
    loop {
        let t = Instant::now();
        let got = store
            .claim(&ClaimRequest {
                worker_id: worker_id.clone(),
                now: Timestamp::now(),
                ttl: LEASE,
                limit: BATCH,
                graphs: Vec::new(),
            })
            .await
            .context("claim")?;
        out.latencies_ns.push(t.elapsed().as_nanos() as u64);
        if got.is_empty() {
            return Ok(out);
        }
        let finishing: Vec<_> = got
            .into_iter()
            .map(|r| {
                let store = store.clone();
                let fence = Fence {
                    run_id: r.run_id,
                    epoch: r.lease_epoch,
                };
                let commit = finish(r.thread_id.clone(), r.first_seq, fence, durability);
                tokio::spawn(async move { (r.run_id, store.commit(commit).await) })
            })
            .collect();
        for f in finishing {
            let (run, done) = f.await?;
            out.finished(run, done);
        }
    }
}

// --- The HTTP part ----------------------------------------------------------------------

async fn http_part(cli: &Cli, dir: &Path, calibration: &Calibration) -> anyhow::Result<S3Result> {
    let token = client::token();
    // No embedded pool: the claimers are the only workers.
    let server = ServerProcess::spawn(cli, &dir.join("s3-http.db"), 0, &token)?;
    let api = Api::new(&server.url, &token)?;
    api.ready().await?;
    let n = runs(cli);
    let a = api.clone();
    prefill(n, move |i| {
        let a = a.clone();
        async move {
            let body = json!({
                "graph": HTTP_GRAPH.0,
                "thread_id": format!("s3-{i}"),
                "input": { "counter": 0, "log": [] },
            });
            a.post("/v1/jobs", &body).await.map(drop)
        }
    })
    .await
    .context("cannot fill the queue")?;
    let claimers = claimers(cli);
    let started = Instant::now();
    let tasks: Vec<_> = (0..claimers)
        .map(|k| tokio::spawn(http_claimer(api.clone(), k, cli.durability.into())))
        .collect();
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.push(t.await??);
    }
    let elapsed = started.elapsed();
    server.stop()?;
    let mut r = result(cli, "http", claimers, n, claimed, elapsed, calibration);
    let polls = r.claim_calls as f64;
    r.calls_per_run = Some(round(
        (polls + 2.0 * r.runs as f64) / r.runs.max(1) as f64,
        3,
    ));
    Ok(r)
}

/// Polls as a remote worker until nothing is ready; each attempt is finished with a report
/// of the terminal commit and an ack, the attempts of a poll concurrently.
async fn http_claimer(api: Api, k: u32, durability: Durability) -> anyhow::Result<Claimed> {
    let mut out = Claimed::default();
    let worker_id = format!("s3-worker-{k}");
    let poll = json!({
        "worker_id": worker_id,
        "protocol": PROTOCOL,
        "graphs": [{ "name": HTTP_GRAPH.0, "version": HTTP_GRAPH.1 }],
        "capacity": BATCH,
        "max": BATCH,
        "wait_ms": 0,
    });
    loop {
        let t = Instant::now();
        let resp = api.post("/v1/workers/poll", &poll).await?;
        out.latencies_ns.push(t.elapsed().as_nanos() as u64);
        let attempts = resp["attempts"]
            .as_array()
            .context("a poll answer without attempts")?
            .clone();
        if attempts.is_empty() {
            return Ok(out);
        }
        let finishing: Vec<_> = attempts
            .into_iter()
            .map(|attempt| {
                let api = api.clone();
                let worker_id = worker_id.clone();
                tokio::spawn(
                    async move { finish_attempt(&api, &worker_id, &attempt, durability).await },
                )
            })
            .collect();
        for f in finishing {
            let (run, done) = f.await??;
            out.finished(run, done);
        }
    }
}

/// Reports the terminal commit of an attempt and acks it; the run's id, and whether it
/// ended completed.
async fn finish_attempt(
    api: &Api,
    worker_id: &str,
    attempt: &Value,
    durability: Durability,
) -> anyhow::Result<(RunId, anyhow::Result<()>)> {
    let fence: Fence =
        serde_json::from_value(attempt["fence"].clone()).context("an attempt without a fence")?;
    let done = async {
        let thread = attempt["run"]["thread_id"]
            .as_str()
            .context("an attempt without a thread")?;
        let head = attempt["image"]["thread"]["head"]
            .as_u64()
            .context("an attempt without the thread's head")?;
        let commit = finish(ThreadId::new(thread)?, Seq(head), fence, durability);
        api.post(
            &format!("/v1/workers/{worker_id}/report-step"),
            &json!({ "fence": fence, "commit": commit }),
        )
        .await?;
        let ack = api
            .post(
                &format!("/v1/workers/{worker_id}/ack"),
                &json!({ "fence": fence, "outcome": "finished" }),
            )
            .await?;
        ensure!(
            ack["status"] == "completed",
            "the ack says the run is {}",
            ack["status"]
        );
        Ok(())
    }
    .await;
    Ok((fence.run_id, done))
}

// --- Failover ---------------------------------------------------------------------------

/// Lease TTL of the failover server.
const FAILOVER_LEASE_MS: u64 = 2_000;
/// Heartbeat interval it tells its workers.
const FAILOVER_HEARTBEAT_MS: u64 = 500;
/// How long node `b` sleeps on its first execution: far longer than any failover.
const SLOW_NODE_MS: u64 = 60_000;
/// How long a process may take to start, or a round to reach a state, on a loaded machine.
const SLOW: Duration = Duration::from_secs(30);
/// Where to find `oris-crash` when it is not next to this binary.
pub const CRASH_BIN_ENV: &str = "ORIS_BENCH_CRASH_BIN";

/// The `oris-crash` binary: `ORIS_BENCH_CRASH_BIN`, or next to this binary.
fn crash_bin() -> Option<PathBuf> {
    let path = match std::env::var_os(CRASH_BIN_ENV) {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe().ok()?.parent()?.join("oris-crash"),
    };
    path.is_file().then_some(path)
}

/// A child process of the failover part: stdout lines on a channel, stderr to a log file,
/// killed when dropped.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Proc {
    fn spawn(
        bin: &Path,
        name: &str,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> anyhow::Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Proc {
            name: name.to_owned(),
            child,
            lines,
            log,
        })
    }

    /// The rest of the first stdout line starting with `prefix`.
    fn line(&mut self, prefix: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + SLOW;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return Ok(rest.trim().to_owned());
                    }
                }
                Err(_) => bail!(
                    "{} printed no `{prefix}` line; its log:\n{}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The failover cluster: a server and its two live workers.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    url: String,
    token: String,
    api: Api,
    _server: Proc,
    workers: Vec<(String, Proc)>,
    started: u32,
}

impl Cluster {
    async fn start(bin: PathBuf, dir: PathBuf) -> anyhow::Result<Cluster> {
        let token = client::token();
        let db = dir.join("oris.db");
        crate::calibrate::remove_db(&db);
        let _ = std::fs::remove_file(dir.join("marks"));
        let db_arg = db.to_str().context("the bench directory is not UTF-8")?;
        let (lease, heartbeat) = (
            FAILOVER_LEASE_MS.to_string(),
            FAILOVER_HEARTBEAT_MS.to_string(),
        );
        let mut server = Proc::spawn(
            &bin,
            "server",
            &dir,
            &[
                "serve",
                "--db",
                db_arg,
                "--token",
                &token,
                "--lease-ms",
                &lease,
                "--heartbeat-ms",
                &heartbeat,
                "--poll-ms",
                "100",
            ],
            &[],
        )?;
        let url = server.line("LISTENING ")?;
        let api = Api::new(&url, &token)?;
        let mut c = Cluster {
            bin,
            dir,
            url,
            token,
            api,
            _server: server,
            workers: Vec::new(),
            started: 0,
        };
        c.add_worker().await?;
        c.add_worker().await?;
        Ok(c)
    }

    /// Starts a worker and waits until the server counts it active.
    async fn add_worker(&mut self) -> anyhow::Result<()> {
        let id = format!("s3-w{}", self.started);
        self.started += 1;
        let marks = self.dir.join("marks");
        let mut p = Proc::spawn(
            &self.bin,
            &id,
            &self.dir,
            &[
                "worker",
                "--server",
                &self.url,
                "--token",
                &self.token,
                "--worker-id",
                &id,
                "--capacity",
                "1",
            ],
            &[("ORIS_CRASH_MARKS", &marks)],
        )?;
        ensure!(p.line("WORKER ")? == id, "worker {id} announced another id");
        self.workers.push((id.clone(), p));
        self.api
            .until("/v1/workers", &format!("worker {id} active"), SLOW, |v| {
                v["workers"].as_array().is_some_and(|ws| {
                    ws.iter()
                        .any(|w| w["worker_id"] == id.as_str() && w["state"] == "active")
                })
            })
            .await?;
        Ok(())
    }

    /// `(kind, node, step)` of every mark of `thread`: `enter`, `fail`, `step`, `exec`.
    fn marks(&self, thread: &str) -> Vec<(String, String, Option<String>)> {
        std::fs::read_to_string(self.dir.join("marks"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.len() >= 6 && f[1] == thread).then(|| {
                    let step = (f[0] == "step").then(|| f[3].to_owned());
                    (f[0].to_owned(), f[2].to_owned(), step)
                })
            })
            .collect()
    }

    /// One round: a run whose `b` sleeps, the holder killed once `b`'s first step is
    /// recorded, the run completed by the other worker. The failover time, and the nodes
    /// and steps executed again.
    async fn round(&mut self, i: u32) -> anyhow::Result<(Duration, u64, u64)> {
        let thread = format!("s3-failover-{i}");
        self.api
            .post(
                "/v1/jobs",
                &json!({
                    "graph": "chain",
                    "thread_id": thread,
                    "input": { "slow": "b", "sleep_ms": SLOW_NODE_MS },
                }),
            )
            .await?;
        self.api
            .until(
                &format!("/v1/jobs/{thread}/timeline?limit=1000"),
                "b's first step recorded",
                SLOW,
                |v| {
                    v["events"].as_array().is_some_and(|es| {
                        es.iter().any(|e| {
                            e["kind"] == "step_recorded"
                                && e["node"] == "b"
                                && e["data"]["name"] == "before"
                        })
                    })
                },
            )
            .await?;
        let job = self.api.get(&format!("/v1/jobs/{thread}")).await?;
        let holder = job["lease"]["worker_id"]
            .as_str()
            .context("the running run names no lease holder")?
            .to_owned();
        let at = self
            .workers
            .iter()
            .position(|(id, _)| *id == holder)
            .with_context(|| format!("the holder {holder} is not one of the workers"))?;
        let killed = Instant::now();
        let (_, mut dead) = self.workers.remove(at);
        dead.kill();
        let deadline = killed + SLOW;
        let job = loop {
            let r = self
                .api
                .get(&format!("/v1/jobs/{thread}/wait?timeout=30s"))
                .await?;
            if r["job"]["status"] == "completed" {
                break r["job"].clone();
            }
            ensure!(
                Instant::now() < deadline,
                "{thread}: not completed {SLOW:?} after the kill: {r}"
            );
        };
        let took = killed.elapsed();
        ensure!(
            job["values"]["log"] == json!(["a", "b", "c"]),
            "{thread}: final log {}",
            job["values"]["log"]
        );
        let marks = self.marks(&thread);
        let mut nodes = 0u64;
        let mut steps = 0u64;
        for node in ["a", "b", "c"] {
            let count = |kind: &str, step: Option<&str>| {
                marks
                    .iter()
                    .filter(|(k, n, s)| k == kind && n == node && s.as_deref() == step)
                    .count() as u64
            };
            nodes += count("exec", None).saturating_sub(1);
            for step in ["before", "after"] {
                steps += count("step", Some(step)).saturating_sub(1);
            }
        }
        self.add_worker().await?;
        Ok((took, nodes, steps))
    }
}

async fn failover_part(
    cli: &Cli,
    dir: &Path,
    calibration: &Calibration,
) -> anyhow::Result<Option<S3Result>> {
    let Some(bin) = crash_bin() else {
        eprintln!(
            "oris-bench: S3 failover skipped: it needs the oris-crash binary next to this one \
             (cargo build --release -p oris-crash -p oris-bench) or at {CRASH_BIN_ENV}"
        );
        return Ok(None);
    };
    let fdir = dir.join("s3-failover");
    std::fs::create_dir_all(&fdir).with_context(|| format!("cannot create {}", fdir.display()))?;
    let mut cluster = Cluster::start(bin, fdir).await?;
    let started = Instant::now();
    let rounds = cli.failover_rounds;
    let mut times = Vec::new();
    let (mut nodes, mut steps, mut wrong) = (0u64, 0u64, 0u64);
    for i in 0..rounds {
        match cluster.round(i).await {
            Ok((took, n, s)) => {
                times.push(took.as_nanos() as u64);
                nodes += n;
                steps += s;
                if n + s > 0 {
                    wrong += 1;
                }
            }
            Err(e) => {
                wrong += 1;
                eprintln!("oris-bench: S3 failover round {i}: {e:#}");
                break;
            }
        }
    }
    times.sort_unstable();
    let ms = |p: f64| percentile(&times, p).map(|ns| round(ns as f64 / 1e6, 1));
    Ok(Some(S3Result {
        workload: "S3",
        part: "failover",
        backend: "sqlite",
        durability: "sync",
        concurrency: 2,
        claim_batch: 1,
        runs: u64::from(rounds),
        wrong_runs: wrong.max(u64::from(rounds) - times.len() as u64),
        seconds: round(started.elapsed().as_secs_f64(), 3),
        runs_per_sec: None,
        claims_per_sec: None,
        claim_calls: 0,
        p50_ms: ms(50.0),
        p95_ms: ms(95.0),
        p99_ms: ms(99.0),
        calls_per_run: None,
        lease_ms: Some(FAILOVER_LEASE_MS),
        failover_p50_ms: ms(50.0),
        failover_p95_ms: ms(95.0),
        reexecuted_nodes: Some(nodes),
        reexecuted_steps: Some(steps),
        durable_commits_per_sec: round(calibration.durable_commits_per_sec, 1),
    }))
}
