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
//!
//! The parent's side is [`ServerProcess`]: S1 and S2 start it with the embedded worker pool
//! and read its counters, S3's HTTP part starts it without a pool (remote workers claim).

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use oris::server::{Auth, Server};
use oris::store::Commit;
use oris::{EngineOptions, Observer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend;
use crate::cli::{Backend, Cli, DurabilityArg};
use crate::counting::{Calls, CountingStore};
use crate::workloads;

/// The hidden command's name (first argument).
pub const COMMAND: &str = "__server";

/// Environment variable carrying the admin token the parent provisions.
pub const TOKEN_ENV: &str = "ORIS_BENCH_SERVER_TOKEN";

/// Executions at once in the embedded pool unless told otherwise (S1, S2).
pub const DEFAULT_WORKERS: usize = 64;

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
    /// Executions at once in the embedded pool; 0: none (only remote workers claim).
    #[arg(long, default_value_t = DEFAULT_WORKERS)]
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

/// The parent's handle on the server child process: killed when dropped unless stopped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl ServerProcess {
    /// Starts `oris-bench __server` on the store `db` with `cli`'s backend, durability and
    /// worker threads, `workers` executions at once in its embedded pool (0: no pool), and
    /// the admin token `token`; reads its address.
    ///
    /// # Errors
    /// If the process cannot be started or does not announce its address.
    pub fn spawn(cli: &Cli, db: &Path, workers: usize, token: &str) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the bench binary")?;
        let durability = oris::Durability::from(cli.durability).as_str();
        let mut child = Command::new(exe)
            .arg(COMMAND)
            .args(["--backend", cli.backend.name(), "--durability", durability])
            .arg("--db")
            .arg(db)
            .args(["--worker-threads", &cli.worker_threads.to_string()])
            .args(["--workers", &workers.to_string()])
            .env(TOKEN_ENV, token)
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
    ///
    /// # Errors
    /// If the server does not answer with a counters line.
    pub fn counters(&mut self) -> anyhow::Result<ServerCounters> {
        self.stdin.write_all(b"counters\n")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        serde_json::from_str(&line)
            .with_context(|| format!("bad counters line from the bench server: {line:?}"))
    }

    /// Stops the server gracefully and reaps it.
    ///
    /// # Errors
    /// If it exits unsuccessfully or does not stop within 60 s (then it is killed).
    pub fn stop(mut self) -> anyhow::Result<()> {
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
