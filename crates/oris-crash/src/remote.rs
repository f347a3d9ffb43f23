//! `oris-crash serve` and `oris-crash worker`: a control-plane server without embedded
//! workers and remote worker processes, for the process tests of remote execution
//! (`tests/remote.rs`): SIGKILL or SIGSTOP the worker holding a run, SIGTERM it, cancel the
//! run under it.
//!
//! ```text
//! oris-crash serve --db PATH --token TOKEN [--addr 127.0.0.1:0] [--lease-ms 2000]
//!     [--heartbeat-ms 500] [--poll-ms 100]
//! oris-crash worker --server URL --token TOKEN --worker-id ID [--capacity 1]
//!     [--grace-ms 30000] [--retry-ms 2500]   (marks file: the ORIS_CRASH_MARKS variable)
//! ```
//!
//! `serve` prints `LISTENING http://ADDR` on stdout once it listens; SIGTERM stops it.
//! `worker` prints `WORKER <id>` once built. Both register the `chain` graph
//! (`a → b → c`); only workers execute it. Its state's input chooses the faults: `slow`
//! names a node whose first execution on the thread (by any process: the marks file is
//! shared) sleeps `sleep_ms` between its two recorded steps; `flaky` names a node whose
//! first `fail_times` attempts fail (each retried `--retry-ms` later, no jitter). Every
//! node:
//!
//! 1. marks `enter <thread> <node> <attempt> <pid> <ms>`;
//! 2. if flaky and `attempt <= fail_times`: marks `fail <thread> <node> <attempt> <pid> <ms>`
//!    and fails (retryable);
//! 3. runs the recorded step `before` (its body marks
//!    `step <thread> <node> before <attempt> <pid> <ms>` and returns `<node>-before#<pid>`);
//! 4. if slow and no earlier `enter` of this node on this thread is marked: sleeps
//!    `sleep_ms`;
//! 5. runs the recorded step `after` (same, `after`);
//! 6. marks `exec <thread> <node> <attempt> <pid> <ms>` and returns `log: [node]`,
//!    `steps: [before token, after token]`.
//!
//! `<ms>` is the wall clock in milliseconds since the epoch; marks are single appended
//! writes (a SIGKILL never tears a line). A `worker` exits 0 after a graceful stop on
//! SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use oris::server::Server;
use oris::store::{SqliteOptions, SqliteStore};
use oris::{
    CompiledGraph, Context, END, NodeError, NodePolicy, RetryPolicy, START, State, StateGraph,
};
use oris_worker::{CancellationToken, Worker};
use serde::{Deserialize, Serialize};

/// The environment variable naming the marks file of `worker`.
pub const MARKS_ENV: &str = "ORIS_CRASH_MARKS";

/// `serve`'s options.
#[derive(Debug, Parser)]
#[command(name = "oris-crash serve")]
struct ServeCli {
    /// The SQLite file.
    #[arg(long)]
    db: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: String,
    /// The admin token to provision (`oris_<12>_<40>`).
    #[arg(long)]
    token: String,
    /// Lease TTL.
    #[arg(long, default_value_t = 2000)]
    lease_ms: u64,
    /// Heartbeat interval workers are told.
    #[arg(long, default_value_t = 500)]
    heartbeat_ms: u64,
    /// How often the server looks for runs made ready without a wake-up.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
}

/// `worker`'s options.
#[derive(Debug, Parser)]
#[command(name = "oris-crash worker")]
struct WorkerCli {
    /// The server's URL.
    #[arg(long)]
    server: String,
    /// API key.
    #[arg(long)]
    token: String,
    /// The worker id.
    #[arg(long)]
    worker_id: String,
    /// Attempts at once.
    #[arg(long, default_value_t = 1)]
    capacity: u32,
    /// Graceful shutdown grace.
    #[arg(long, default_value_t = 30_000)]
    grace_ms: u64,
    /// Delay before each retry of a failed node attempt.
    #[arg(long, default_value_t = 2500)]
    retry_ms: u64,
}

/// Runs `serve` or `worker` when the first argument names one of them; `None` otherwise
/// (the crash test's own modes).
pub fn main() -> Option<ExitCode> {
    let mode = std::env::args().nth(1)?;
    if mode != "serve" && mode != "worker" {
        return None;
    }
    let args = std::env::args().skip(1);
    init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oris-crash {mode}: cannot start the runtime: {e}");
            return Some(ExitCode::FAILURE);
        }
    };
    let result = rt.block_on(async move {
        if mode == "serve" {
            serve(ServeCli::parse_from(args)).await
        } else {
            work(WorkerCli::parse_from(args)).await
        }
    });
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oris-crash: {e:#}");
            ExitCode::FAILURE
        }
    })
}

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

async fn serve(cli: ServeCli) -> anyhow::Result<()> {
    let store = SqliteStore::open(&cli.db, SqliteOptions::default()).await?;
    let listener = tokio::net::TcpListener::bind(&cli.addr).await?;
    let addr = listener.local_addr()?;
    let server = Server::builder()
        .store(Arc::new(store))
        .graph(chain_graph(None, Duration::ZERO)?)
        .workers(0)
        .admin_token(cli.token)
        .lease(
            Duration::from_millis(cli.lease_ms),
            Duration::from_millis(cli.heartbeat_ms),
        )
        .poll_interval(Duration::from_millis(cli.poll_ms))
        .shutdown_grace(Duration::from_secs(5))
        .build()
        .await?;
    crate::println_flush(&format!("LISTENING http://{addr}"))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    server
        .serve(listener, async move {
            term.recv().await;
        })
        .await?;
    Ok(())
}

async fn work(cli: WorkerCli) -> anyhow::Result<()> {
    let marks = std::env::var_os(MARKS_ENV)
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("{MARKS_ENV} must name the marks file"))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let worker = Worker::builder(&cli.server)
        .token(cli.token)
        .worker_id(cli.worker_id)
        .capacity(cli.capacity)
        .lease_wait(Duration::from_secs(1))
        .shutdown_grace(Duration::from_millis(cli.grace_ms))
        .graph(chain_graph(
            Some(Arc::new(marks)),
            Duration::from_millis(cli.retry_ms),
        )?)
        .build()?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        stop.cancel();
    });
    crate::println_flush(&format!("WORKER {}", worker.worker_id()))?;
    worker.run(shutdown).await?;
    Ok(())
}

/// The `chain` graph's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, State)]
#[serde(default)]
pub struct Chain {
    /// The node that sleeps between its recorded steps.
    pub slow: String,
    /// How long it sleeps.
    pub sleep_ms: u64,
    /// The node whose first attempts fail.
    pub flaky: String,
    /// How many of its attempts fail.
    pub fail_times: u32,
    /// Nodes completed, in order.
    #[reducer(append)]
    pub log: Vec<String>,
    /// Recorded step results, in order.
    #[reducer(append)]
    pub steps: Vec<String>,
}

/// The `chain` graph; `marks` is `None` on the server (which never executes it).
fn chain_graph(
    marks: Option<Arc<PathBuf>>,
    retry: Duration,
) -> anyhow::Result<CompiledGraph<Chain>> {
    let policy = NodePolicy {
        retry: RetryPolicy::exponential(5)
            .initial_interval(retry)
            .backoff_factor(1.0)
            .max_interval(retry)
            .jitter(false),
        timeout: None,
    };
    let mut g = StateGraph::<Chain>::new("chain", "1");
    for name in ["a", "b", "c"] {
        let marks = marks.clone();
        g = g.node_with(name, policy.clone(), move |s: Chain, ctx: Context| {
            let marks = marks.clone();
            async move { chain_node(marks.as_deref(), s, ctx).await }
        });
    }
    Ok(g.edge(START, "a")
        .edge("a", "b")
        .edge("b", "c")
        .edge("c", END)
        .compile()?)
}

async fn chain_node(
    marks: Option<&PathBuf>,
    s: Chain,
    ctx: Context,
) -> Result<ChainUpdate, NodeError> {
    let marks = marks.ok_or_else(|| NodeError::permanent("this process does not execute"))?;
    let node = ctx.node().to_owned();
    let pid = std::process::id();
    let mark = |what: &str| {
        let line = format!(
            "{what} {} {node} {} {pid} {}",
            ctx.thread_id(),
            ctx.attempt(),
            oris::Timestamp::now().as_millis()
        );
        crate::append_line(marks, &line)
            .map_err(|e| NodeError::permanent(format!("cannot write the marks file: {e}")))
    };
    // Before this execution's own mark: whether the node ran on this thread before.
    let first = s.slow == node && {
        let earlier = format!("enter {} {node} ", ctx.thread_id());
        let text = std::fs::read_to_string(marks).unwrap_or_default();
        !text.lines().any(|l| l.starts_with(&earlier))
    };
    mark("enter")?;
    if s.flaky == node && ctx.attempt() <= s.fail_times {
        mark("fail")?;
        return Err(NodeError::new(format!(
            "planned failure of attempt {}",
            ctx.attempt()
        )));
    }
    let step = |which: &'static str| {
        let ctx = ctx.clone();
        let node = node.clone();
        async move {
            ctx.step(which, async {
                let line = format!(
                    "step {} {node} {which} {} {pid} {}",
                    ctx.thread_id(),
                    ctx.attempt(),
                    oris::Timestamp::now().as_millis()
                );
                crate::append_line(marks, &line).map_err(|e| {
                    NodeError::permanent(format!("cannot write the marks file: {e}"))
                })?;
                Ok(format!("{node}-{which}#{pid}"))
            })
            .await
        }
    };
    let before: String = step("before").await?;
    if first {
        tokio::time::sleep(Duration::from_millis(s.sleep_ms)).await;
    }
    let after: String = step("after").await?;
    mark("exec")?;
    Ok(ChainUpdate::default()
        .log(vec![node.clone()])
        .steps(vec![before, after]))
}
