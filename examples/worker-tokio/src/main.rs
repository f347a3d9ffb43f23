//! `worker-tokio`: one binary, two modes sharing one graph definition (`graph.rs`).
//!
//! - `worker-tokio serve`: the control plane (HTTP API, SQLite store) with the `fulfil`
//!   graph registered and no embedded workers: it records runs and hands them to remote
//!   workers. Prints `listening on http://ADDR` on stderr, and on the first start the admin
//!   token on stdout.
//! - `worker-tokio work --server URL --token T`: a worker process executing `fulfil` runs
//!   for that server. SIGINT/SIGTERM stop it gracefully (running nodes finish, runs are
//!   handed back).
//!
//! See README.md for the walkthrough.

mod graph;

use std::time::Duration;

use clap::{Parser, Subcommand};
use oris::server::Server;
use oris::worker::{CancellationToken, Worker};

#[derive(Debug, Parser)]
#[command(name = "worker-tokio", about = "Oris remote workers, end to end")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Serve the API with the `fulfil` graph and no embedded workers.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Store URL.
        #[arg(long, default_value = "sqlite://worker-tokio.db")]
        db: String,
        /// Lease TTL in milliseconds: how long a dead worker's run waits before another
        /// worker takes it over.
        #[arg(long, default_value_t = 10_000)]
        lease_ms: u64,
        /// Heartbeat interval workers are told, in milliseconds.
        #[arg(long, default_value_t = 3_000)]
        heartbeat_ms: u64,
    },
    /// Execute `fulfil` runs for a server.
    Work {
        /// The server's URL.
        #[arg(long, env = "ORIS_URL", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// An API key with the `worker` role.
        #[arg(long, env = "ORIS_TOKEN", hide_env_values = true)]
        token: String,
        /// The worker's id (default `host-pid-random`).
        #[arg(long)]
        worker_id: Option<String>,
        /// Runs executed at once.
        #[arg(long, default_value_t = 4)]
        capacity: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().mode {
        Mode::Serve {
            addr,
            db,
            lease_ms,
            heartbeat_ms,
        } => serve(&addr, &db, lease_ms, heartbeat_ms).await,
        Mode::Work {
            server,
            token,
            worker_id,
            capacity,
        } => work(&server, token, worker_id, capacity).await,
    }
}

async fn serve(addr: &str, db: &str, lease_ms: u64, heartbeat_ms: u64) -> anyhow::Result<()> {
    let store = oris::open_store(db).await?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let mut builder = Server::builder()
        .store(store)
        .graph(graph::fulfil()?)
        // Execution is left to remote workers.
        .workers(0)
        .lease(
            Duration::from_millis(lease_ms),
            Duration::from_millis(heartbeat_ms),
        );
    // A provisioned admin token (scripts, tests); otherwise the first start makes one.
    if let Ok(token) = std::env::var("ORIS_ADMIN_TOKEN") {
        builder = builder.admin_token(token);
    }
    let server = builder.build().await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    if let Some(token) = server.bootstrap_token() {
        eprintln!("admin token (shown once):");
        println!("{token}");
    }
    let stop = CancellationToken::new();
    spawn_signal_handler(stop.clone());
    server
        .serve(listener, async move { stop.cancelled().await })
        .await?;
    Ok(())
}

async fn work(
    server: &str,
    token: String,
    worker_id: Option<String>,
    capacity: u32,
) -> anyhow::Result<()> {
    let mut builder = Worker::builder(server)
        .token(token)
        .capacity(capacity)
        .graph(graph::fulfil()?);
    if let Some(id) = worker_id {
        builder = builder.worker_id(id);
    }
    let worker = builder.build()?;
    eprintln!("worker {} polling {server}", worker.worker_id());
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    worker.run(shutdown).await?;
    eprintln!("worker {} stopped", worker.worker_id());
    Ok(())
}

/// Cancels `stop` at the first SIGINT or SIGTERM.
fn spawn_signal_handler(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    // Registered now, before any signal can arrive unhandled.
    let signals =
        signal(SignalKind::interrupt()).and_then(|int| Ok((int, signal(SignalKind::terminate())?)));
    match signals {
        Ok((mut int, mut term)) => {
            tokio::spawn(async move {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                stop.cancel();
            });
        }
        Err(e) => eprintln!("cannot listen for signals ({e}); stop with SIGKILL"),
    }
}
