//! Drives a workload: N runs (or S seconds) with C runs in flight, each on a fresh thread,
//! timing each `GraphHandle::start` (W3: each cycle's `start` and `resume`) and checking each
//! final state.
//!
//! The loop does as little as possible per run (one id string, one `Instant` pair per engine
//! call, one check) so that the engine's cost is what is measured; counters are read outside
//! it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use oris::store::Commit;
use oris::{Durability, Engine, EngineOptions, GraphHandle, Observer, RunOutcome, State};

use crate::backend::{self, Counters};
use crate::calibrate::{self, Calibration};
use crate::cli::{Backend, Cli, Workload};
use crate::report::{WorkloadResult, percentile, round};
use crate::workloads;

/// Counts the commits the engine makes (exact: called once per confirmed commit).
#[derive(Debug, Default)]
struct CommitCounter(AtomicU64);

impl Observer for CommitCounter {
    fn after_commit(&self, _commit: &Commit) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// When a workload stops starting runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Limit {
    Runs(u64),
    Seconds(Duration),
}

/// What the runs of one workload produced.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    /// Start→completion of every run (W3: start + resume; S2: the whole cycle), in
    /// nanoseconds, sorted at the end.
    pub latencies_ns: Vec<u64>,
    /// W3: the resume call of every cycle; S2: the resume call to the completion observed.
    /// In nanoseconds, sorted at the end.
    pub resume_ns: Vec<u64>,
    /// Runs made (thread ids `{prefix}0 … {prefix}{runs-1}`).
    pub runs: u64,
    /// Runs that ended wrong or with an error.
    pub wrong: u64,
    /// The first few problems, for stderr.
    pub problems: Vec<String>,
    /// Wall time from the first start to the last completion.
    pub elapsed: Duration,
}

const MAX_PROBLEMS: usize = 5;

type Check<S> = Arc<dyn Fn(&S) -> Result<(), String> + Send + Sync>;

/// The default number of runs of `w` on `backend`: a few seconds each on this machine.
fn default_runs(
    w: Workload,
    backend: Backend,
    durability: Durability,
    steps: u32,
    concurrency: u32,
) -> u64 {
    let memory = backend == Backend::Memory;
    let steps = u64::from(steps);
    // Without an fsync per commit a durable store runs about ten times as many.
    let scale = if memory || durability == Durability::Sync {
        1
    } else {
        10
    };
    scale
        * match w {
            Workload::W1 | Workload::W5 if memory => 50_000,
            Workload::W1 => 300,
            Workload::W5 => 2_000,
            Workload::W2 | Workload::W3 if memory => 20_000,
            Workload::W2 => 200,
            Workload::W3 => 300,
            // The engine clones the whole state every superstep, so W4's CPU cost per run
            // grows with steps²; the SQLite cost is fsync-bound, linear in steps.
            Workload::W4 if memory => (20_000_000 / (steps * steps)).clamp(3, 50_000),
            Workload::W4 => (5_000 / steps).max(3),
            // Over HTTP; enough runs for every client to make a hundred (S1) or fifty (S2).
            Workload::S1 => (100 * u64::from(concurrency)).max(if memory { 3_000 } else { 1_000 }),
            Workload::S2 => (50 * u64::from(concurrency)).max(if memory { 2_000 } else { 500 }),
            Workload::S3 => 0,
        }
}

/// Runs of a graph that completes in one `start` call, checked by `check`.
async fn runs_of<S: State>(
    handle: GraphHandle<S>,
    prefix: &str,
    limit: Limit,
    concurrency: u32,
    check: Check<S>,
) -> Samples {
    let run = move |id: String, _i: u64| {
        let (h, check) = (handle.clone(), check.clone());
        async move { one_run(&h, &id, &check).await }
    };
    drive(run, prefix, limit, concurrency).await
}

/// Runs workload `w` on a fresh store (SQLite: a fresh file in `dir`) and measures it.
///
/// # Errors
/// If the store cannot be opened or measured; wrong runs are counted, not errors.
pub async fn bench(
    cli: &Cli,
    w: Workload,
    dir: &Path,
    calibration: &Calibration,
) -> anyhow::Result<WorkloadResult> {
    let concurrency = cli.concurrency_for(w);
    let limit = match cli.seconds {
        Some(s) => Limit::Seconds(Duration::from_secs_f64(s)),
        None => Limit::Runs(cli.runs.unwrap_or_else(|| {
            default_runs(
                w,
                cli.backend,
                cli.durability.into(),
                cli.steps,
                concurrency,
            )
        })),
    };
    if matches!(w, Workload::S1 | Workload::S2) {
        return crate::http::bench(cli, w, dir, calibration, limit).await;
    }
    let path = dir.join(format!("{}.db", w.name().to_ascii_lowercase()));
    let opened = backend::open(cli.backend, &path).await?;
    let counter = Arc::new(CommitCounter::default());
    let engine = Engine::with_options(
        opened.store.clone(),
        EngineOptions {
            durability: cli.durability.into(),
            // W4 with long loops must not hit the default limit of 10,000 supersteps.
            superstep_limit: cli.steps.saturating_add(16).max(10_000),
            observer: Some(counter.clone()),
            ..EngineOptions::default()
        },
    );
    let prefix = format!("{}-", w.name().to_ascii_lowercase());
    if cli.warmup > 0 {
        let warm = format!("warmup-{}-", w.name().to_ascii_lowercase());
        let samples =
            engine_samples(cli, w, &engine, &warm, Limit::Runs(cli.warmup), concurrency).await?;
        if let Some(p) = samples.problems.first() {
            anyhow::bail!("{}: a warm-up run went wrong: {p}", w.name());
        }
        counter.0.store(0, Ordering::Relaxed);
    }
    let before = opened.counters().await?;
    let samples = engine_samples(cli, w, &engine, &prefix, limit, concurrency).await?;
    for p in &samples.problems {
        eprintln!("oris-bench: {}: {p}", w.name());
    }
    let after = opened.counters().await?;
    let commits = counter.0.load(Ordering::Relaxed);
    let memory_bytes = opened.memory_bytes(&prefix, samples.runs);
    drop(engine);
    drop(opened);
    // The disk's fsync time drifts within minutes: measure it again right after a durable
    // workload so that its `limit_ratio` can be judged against both ends.
    let calibration_after = if cli.backend == Backend::Memory {
        None
    } else {
        let (dir, secs) = (dir.to_owned(), (cli.calibrate_seconds / 2.0).max(0.05));
        let c = tokio::task::spawn_blocking(move || calibrate::run(&dir, secs)).await??;
        Some(c.durable_commits_per_sec)
    };
    let m = Measured {
        samples,
        commits,
        before,
        after,
        memory_bytes,
        calibration_after,
    };
    Ok(result(cli, w, concurrency, &m, calibration))
}

/// The samples of `limit` runs of engine workload `w` on threads named `prefix…`.
async fn engine_samples(
    cli: &Cli,
    w: Workload,
    engine: &Engine,
    prefix: &str,
    limit: Limit,
    concurrency: u32,
) -> anyhow::Result<Samples> {
    Ok(match w {
        Workload::W1 | Workload::W5 => {
            let h = engine.register(workloads::linear()?);
            runs_of(
                h,
                prefix,
                limit,
                concurrency,
                Arc::new(workloads::check_linear),
            )
            .await
        }
        Workload::W2 => {
            let h = engine.register(workloads::fan_out()?);
            runs_of(
                h,
                prefix,
                limit,
                concurrency,
                Arc::new(workloads::check_fan_out),
            )
            .await
        }
        Workload::W3 => {
            let a_runs = Arc::new(workloads::NodeRuns::default());
            let h = engine.register(workloads::interrupt_resume(a_runs.clone())?);
            let run = move |id: String, i: u64| {
                let (h, a_runs) = (h.clone(), a_runs.clone());
                async move { one_cycle(&h, &id, i, &a_runs).await }
            };
            drive(run, prefix, limit, concurrency).await
        }
        Workload::W4 => {
            let steps = cli.steps;
            let h = engine.register(workloads::growth(steps)?);
            let check = Arc::new(move |s: &workloads::Linear| workloads::check_growth(s, steps));
            runs_of(h, prefix, limit, concurrency, check).await
        }
        Workload::S1 | Workload::S2 | Workload::S3 => {
            anyhow::bail!("{} is not an engine workload", w.name())
        }
    })
}

/// The raw measurements of one workload.
#[derive(Debug)]
pub(crate) struct Measured {
    pub samples: Samples,
    /// Commits the engine made (observer count).
    pub commits: u64,
    pub before: Counters,
    pub after: Counters,
    /// `MemoryStore::approx_bytes` summed over the workload's threads.
    pub memory_bytes: Option<u64>,
    /// Durable commits per second measured right after the workload.
    pub calibration_after: Option<f64>,
}

/// Builds the reported numbers from the raw measurements.
pub(crate) fn result(
    cli: &Cli,
    w: Workload,
    concurrency: u32,
    m: &Measured,
    calibration: &Calibration,
) -> WorkloadResult {
    let (s, commits, before, after) = (&m.samples, m.commits, m.before, m.after);
    let runs = s.runs.max(1) as f64;
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let correct = s.runs - s.wrong;
    let runs_per_sec = correct as f64 / secs;
    let commits_per_run = commits as f64 / runs;
    let delta = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
    let transactions = delta(before.transactions, after.transactions);
    let fsyncs = delta(before.fsyncs, after.fsyncs);
    let store_commits = delta(before.commits, after.commits);
    let bytes = delta(before.bytes, after.bytes).or(m.memory_bytes);
    let bytes_per_run = bytes.map(|b| b as f64 / runs);
    let durable = cli.backend != Backend::Memory;
    let limit_ratio = (durable && calibration.durable_commits_per_sec > 0.0)
        .then(|| runs_per_sec * commits_per_run / calibration.durable_commits_per_sec);
    let ms_of = |v: &[u64], p: f64| percentile(v, p).map(|ns| round(ns as f64 / 1e6, 4));
    let ms = |p: f64| ms_of(&s.latencies_ns, p);
    let has_resume = matches!(w, Workload::W3 | Workload::S2);
    let is_w4 = w == Workload::W4;
    WorkloadResult {
        workload: w.name(),
        backend: cli.backend.name(),
        durability: oris::Durability::from(cli.durability).as_str(),
        concurrency,
        runs: s.runs,
        wrong_runs: s.wrong,
        seconds: round(secs, 4),
        runs_per_sec: round(runs_per_sec, 2),
        p50_ms: ms(50.0),
        p95_ms: ms(95.0),
        p99_ms: ms(99.0),
        resume_p50_ms: ms_of(&s.resume_ns, 50.0).filter(|_| has_resume),
        resume_p95_ms: ms_of(&s.resume_ns, 95.0).filter(|_| has_resume),
        commits_per_run: round(commits_per_run, 3),
        commits_per_sec: round(commits as f64 / secs, 1),
        bytes_per_run: bytes_per_run.map(|b| round(b, 1)),
        limit_ratio: limit_ratio.map(|r| round(r, 4)),
        durable_commits_per_sec_after: m.calibration_after.map(|c| round(c, 1)),
        fsyncs_per_run: fsyncs.map(|t| round(t as f64 / runs, 3)),
        commits_per_fsync: match (store_commits, fsyncs) {
            (Some(c), Some(t)) if t > 0 => Some(round(c as f64 / t as f64, 3)),
            _ => None,
        },
        transactions_per_run: transactions.map(|t| round(t as f64 / runs, 3)),
        steps: is_w4.then_some(cli.steps),
        bytes_per_step: bytes_per_run
            .filter(|_| is_w4)
            .map(|b| round(b / f64::from(cli.steps), 2)),
        store_calls_per_run: None,
        server_cpu_ms_per_run: None,
        client_cpu_ms_per_run: None,
    }
}

/// What one run (W3, S2: one cycle) produced.
#[derive(Debug)]
pub(crate) struct Ran {
    /// Time of the engine calls of the run (W3: start + resume), or of the HTTP calls (S1,
    /// S2: the whole run or cycle), in nanoseconds.
    pub latency_ns: u64,
    /// W3: time of the resume call alone; S2: the resume call to the completion observed.
    pub resume_ns: Option<u64>,
    /// Whether the run ended as the workload says.
    pub verdict: Result<(), String>,
}

/// The verdict on a run that should have completed in a state `check` accepts.
fn completed<S>(
    outcome: Result<RunOutcome<S>, oris::Error>,
    check: impl FnOnce(&S) -> Result<(), String>,
) -> Result<(), String> {
    match outcome {
        Ok(RunOutcome::Completed { state, .. }) => check(&state),
        Ok(RunOutcome::Failed { error, .. }) => Err(format!("run failed: {error}")),
        Ok(RunOutcome::Cancelled { reason, .. }) => Err(format!("run cancelled: {reason}")),
        Ok(other) => Err(format!(
            "run {} paused unexpectedly: {:?}",
            other.run_id(),
            other.interrupts()
        )),
        Err(e) => Err(format!("the engine returned an error: {e}")),
    }
}

/// One run of a graph that goes from START to END in one `start` call (W1, W2, W4, W5).
async fn one_run<S: State>(handle: &GraphHandle<S>, id: &str, check: &Check<S>) -> Ran {
    let t0 = Instant::now();
    let outcome = handle.start(id, S::default()).await;
    let latency_ns = t0.elapsed().as_nanos() as u64;
    Ran {
        latency_ns,
        resume_ns: None,
        verdict: completed(outcome, |s| check(s)),
    }
}

/// Every this many W3 cycles, the thread's state is also read back while the run is paused
/// (outside the timed calls, but inside the workload's wall time).
const W3_STATE_READ_EVERY: u64 = 64;

/// One W3 cycle: `start` (must stop at b's interrupt with the payload `"approve?"`), then
/// `resume` with `"yes"` (must complete with `log == ["a", "b:yes", "c"]`); node `a` must
/// have run exactly once.
async fn one_cycle(
    handle: &GraphHandle<workloads::Approval>,
    id: &str,
    i: u64,
    a_runs: &workloads::NodeRuns,
) -> Ran {
    let t0 = Instant::now();
    let first = handle.start(id, workloads::Approval::default()).await;
    let start_ns = t0.elapsed().as_nanos() as u64;
    let interrupt = match first {
        Ok(RunOutcome::Interrupted { interrupts, .. }) => match interrupts.as_slice() {
            [p] if p.node == "b" && p.payload == workloads::W3_PAYLOAD => Ok(p.interrupt_id),
            _ => Err(format!(
                "start paused at {interrupts:?}, not at one interrupt of b asking {:?}",
                workloads::W3_PAYLOAD
            )),
        },
        Ok(RunOutcome::Completed { state, .. }) => Err(format!(
            "start completed without stopping at the interrupt, log {:?}",
            state.log
        )),
        other => Err(format!(
            "start did not stop at the interrupt: {}",
            completed(other, |_| Ok(())).err().unwrap_or_default()
        )),
    };
    let interrupt = match interrupt {
        Ok(id) => id,
        Err(problem) => {
            a_runs.take(id);
            return Ran {
                latency_ns: start_ns,
                resume_ns: None,
                verdict: Err(problem),
            };
        }
    };
    if i.is_multiple_of(W3_STATE_READ_EVERY) {
        let paused = match handle.state(id).await {
            Ok(t) if t.values.log == ["a"] => Ok(()),
            Ok(t) => Err(format!(
                "while paused the thread's log is {:?}, not [a]",
                t.values.log
            )),
            Err(e) => Err(format!("cannot read the paused thread: {e}")),
        };
        if let Err(problem) = paused {
            a_runs.take(id);
            return Ran {
                latency_ns: start_ns,
                resume_ns: None,
                verdict: Err(problem),
            };
        }
    }
    let t1 = Instant::now();
    let second = handle.resume(interrupt, &workloads::W3_ANSWER).await;
    let resume_ns = t1.elapsed().as_nanos() as u64;
    let a = a_runs.take(id);
    let verdict = completed(second, workloads::check_approval).and_then(|()| {
        if a == 1 {
            Ok(())
        } else {
            Err(format!("node a ran {a} times in the cycle, not once"))
        }
    });
    Ran {
        latency_ns: start_ns + resume_ns,
        resume_ns: Some(resume_ns),
        verdict,
    }
}

/// Makes runs `run(id, i)` on fresh threads `{prefix}{i}` with `concurrency` in flight until
/// `limit`, collecting their timings and verdicts.
pub(crate) async fn drive<F, Fut>(run: F, prefix: &str, limit: Limit, concurrency: u32) -> Samples
where
    F: Fn(String, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Ran> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let prefix: Arc<str> = prefix.into();
    let start = Instant::now();
    let (max_runs, deadline) = match limit {
        Limit::Runs(n) => (n, None),
        Limit::Seconds(d) => (u64::MAX, Some(start + d)),
    };
    let per_worker = match limit {
        Limit::Runs(n) => (n / u64::from(concurrency) + 1) as usize,
        Limit::Seconds(_) => 1024,
    };
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (run, next, prefix) = (run.clone(), next.clone(), prefix.clone());
        workers.spawn(async move {
            let mut s = Samples {
                latencies_ns: Vec::with_capacity(per_worker),
                ..Samples::default()
            };
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max_runs {
                    break;
                }
                let mut id = String::with_capacity(prefix.len() + 12);
                id.push_str(&prefix);
                id.push_str(&i.to_string());
                let ran = run(id, i).await;
                s.latencies_ns.push(ran.latency_ns);
                s.resume_ns.extend(ran.resume_ns);
                s.runs += 1;
                if let Err(problem) = ran.verdict {
                    s.wrong += 1;
                    if s.problems.len() < MAX_PROBLEMS {
                        s.problems.push(format!("thread {prefix}{i}: {problem}"));
                    }
                }
            }
            s
        });
    }
    let mut all = Samples::default();
    while let Some(joined) = workers.join_next().await {
        let s = joined.expect("invariant: bench workers do not panic");
        all.latencies_ns.extend(s.latencies_ns);
        all.resume_ns.extend(s.resume_ns);
        all.runs += s.runs;
        all.wrong += s.wrong;
        for p in s.problems {
            if all.problems.len() < MAX_PROBLEMS {
                all.problems.push(p);
            }
        }
    }
    all.elapsed = start.elapsed();
    all.latencies_ns.sort_unstable();
    all.resume_ns.sort_unstable();
    all
}
