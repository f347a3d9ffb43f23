//! The server side of S1 and S2: the bench binary re-executes itself as
//! `oris-bench __server …` (a hidden command), which serves the real
//! [`oris::server::Server`] with the bench graphs on a fresh store and a free loopback port.
//!
//! Protocol with the parent, one JSON object per line:
//! - on stdout, first `{"listening": "http://127.0.0.1:PORT"}` once it listens;
//! - on stdin the parent writes `counters` and gets back one [`ServerCounters`] line, taken
//!   outside timed sections (SQLite checkpoints its WAL to count bytes); it includes the
//!   server's store calls per method (the store is wrapped in a [`CountingStore`]);
//! - `stop` on stdin, or stdin closing (the parent exited), shuts it down gracefully.
//!
//! Logs go to stderr (warnings only; `RUST_LOG` changes that).

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use clap::Parser;
use oris::server::{Auth, Server};
use oris::store::Commit;
use oris::{EngineOptions, Observer};
use serde::{Deserialize, Serialize};

use crate::backend;
use crate::cli::{Backend, DurabilityArg};
use crate::counting::{Calls, CountingStore};
use crate::workloads;

/// The hidden command's name (first argument).
pub const COMMAND: &str = "__server";

/// Environment variable carrying the admin token the parent provisions.
pub const TOKEN_ENV: &str = "ORIS_BENCH_SERVER_TOKEN";

/// `oris-bench __server`: not for people; the parent passes every option.
#[derive(Debug, Parser)]
#[command(name = "oris-bench __server")]
pub struct ServerArgs {
    /// The store.
    #[arg(long, value_enum)]
    pub backend: Backend,
    /// SQLite: the file (replaced); PostgreSQL: its stem names the schema.
    #[arg(long)]
    pub db: PathBuf,
    /// Durability of every run.
    #[arg(long, value_enum)]
    pub durability: DurabilityArg,
    /// Worker threads of the server's Tokio runtime.
    #[arg(long)]
    pub worker_threads: u16,
    /// Executions at once in the embedded pool.
    #[arg(long, default_value_t = 64)]
    pub workers: usize,
}

/// Counters of the server process at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerCounters {
    /// Engine commits (observer count).
    pub commits: u64,
    /// The store's counters (SQLite: transactions, fsyncs, commits, bytes).
    pub store: backend::Counters,
    /// Executions of W3's node `a` (S2), in total.
    pub a_runs: u64,
    /// Threads on which node `a` ran more than once.
    pub a_repeated: u64,
    /// The server's calls to its store, per method.
    pub calls: BTreeMap<String, Calls>,
    /// CPU time the server process used so far (user + system), in seconds; `None` where
    /// `/proc` is missing.
    pub cpu_secs: Option<f64>,
}

/// CPU time (user + system) of this process so far, in seconds, from `/proc/self/stat`
/// (clock ticks of 1/100 s, Linux's fixed `USER_HZ`).
pub fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; it ends at the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // Fields 3… follow; utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

#[derive(Debug, Default)]
struct CommitCounter(AtomicU64);

impl Observer for CommitCounter {
    fn after_commit(&self, _commit: &Commit) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the hidden command; returns when told to stop.
///
/// # Errors
/// If the store cannot be opened or the server cannot start.
pub fn main(args: ServerArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.worker_threads))
        .enable_all()
        .build()
        .context("cannot build the Tokio runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let opened = backend::open(args.backend, &args.db).await?;
    let counting = Arc::new(CountingStore::new(opened.store.clone()));
    let commits = Arc::new(CommitCounter::default());
    let a_runs = Arc::new(workloads::NodeRuns::default());
    let mut builder = Server::builder()
        .store(counting.clone())
        .engine_options(EngineOptions {
            durability: args.durability.into(),
            observer: Some(commits.clone()),
            ..EngineOptions::default()
        })
        .graph(workloads::three_steps()?)
        .graph(workloads::interrupt_resume(a_runs.clone())?)
        .workers(args.workers);
    builder = match std::env::var(TOKEN_ENV) {
        Ok(token) if !token.is_empty() => builder.admin_token(token),
        _ => builder.auth(Auth::Disabled),
    };
    let server = builder.build().await.context("cannot build the server")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on a loopback port")?;
    let url = format!("http://{}", listener.local_addr()?);
    reply(&serde_json::json!({ "listening": url }))?;

    // Commands from the parent, read on a plain thread (stdin is blocking).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim().to_owned()).is_err() {
                return;
            }
        }
        // EOF: the parent is gone or done.
        let _ = tx.send("stop".to_owned());
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let commands = tokio::spawn(async move {
        let mut stop_tx = Some(stop_tx);
        while let Some(cmd) = rx.recv().await {
            match cmd.as_str() {
                "counters" => {
                    let store = match opened.counters().await {
                        Ok(c) => c,
                        Err(e) => {
                            eprintln!("oris-bench server: cannot read counters: {e:#}");
                            backend::Counters::default()
                        }
                    };
                    let (a_runs, a_repeated) = a_runs.summary();
                    let c = ServerCounters {
                        commits: commits.0.load(Ordering::Relaxed),
                        store,
                        a_runs,
                        a_repeated,
                        calls: counting.snapshot(),
                        cpu_secs: process_cpu_secs(),
                    };
                    if reply(&c).is_err() {
                        break;
                    }
                }
                "stop" => break,
                other => eprintln!("oris-bench server: unknown command `{other}`"),
            }
        }
        if let Some(tx) = stop_tx.take() {
            let _ = tx.send(());
        }
    });
    server
        .serve(listener, async {
            let _ = stop_rx.await;
        })
        .await?;
    commands.abort();
    Ok(())
}

/// One JSON line on stdout, flushed.
fn reply(v: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process_cpu_time() {
        let Some(before) = super::process_cpu_secs() else {
            return; // No /proc here.
        };
        let t = std::time::Instant::now();
        let mut x = 0_u64;
        while t.elapsed() < std::time::Duration::from_millis(120) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = super::process_cpu_secs().unwrap();
        assert!(after - before >= 0.05, "{before} → {after}");
    }
}
