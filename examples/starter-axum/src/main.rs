//! `starter-axum`: the expense-approval service. See README.md.

use std::time::Duration;

use clap::Parser;
use starter_axum::{Config, Service};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "starter-axum",
    about = "Expense approvals: a business API beside the Oris control plane"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "ADDR", default_value = "127.0.0.1:3000")]
    addr: String,
    /// Database: `sqlite://FILE` or `postgres://USER@HOST/DB`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://expenses.db")]
    db: String,
    /// Bearer token of the business API (`/api/…`).
    #[arg(long, env = "EXPENSES_API_TOKEN", hide_env_values = true)]
    api_token: String,
    /// Oris admin token to provision (`oris_<key_id>_<secret>`) for the control plane
    /// (`/oris/v1/…`); without it the first start prints a new one on stdout.
    #[arg(long, env = "ORIS_ADMIN_TOKEN", hide_env_values = true)]
    oris_admin_token: Option<String>,
    /// How long the (simulated) policy service takes to route an expense, in ms.
    #[arg(long, default_value_t = 200)]
    policy_latency_ms: u64,
    /// How long a shutdown waits for running nodes and open requests, in seconds.
    #[arg(long, default_value_t = 30)]
    shutdown_grace_secs: u64,
    /// Runs executed at once by the embedded worker pool.
    #[arg(long, default_value_t = 16)]
    workers: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Spans and their fields (request_id, thread_id, run_id) on every line; colours only on
    // a terminal and without NO_COLOR.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Bound first: a start that cannot listen must not create (and lose) the bootstrap
    // admin key.
    let listener = tokio::net::TcpListener::bind(&cli.addr).await?;
    let service = Service::build(
        &cli.db,
        Config {
            api_token: cli.api_token,
            oris_admin_token: cli.oris_admin_token,
            policy_latency: Duration::from_millis(cli.policy_latency_ms),
            shutdown_grace: Duration::from_secs(cli.shutdown_grace_secs),
            workers: cli.workers,
        },
    )
    .await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    if let Some(token) = service.bootstrap_token() {
        eprintln!("Oris admin token (shown once):");
        println!("{token}");
    }
    let stop = CancellationToken::new();
    spawn_signal_handler(stop.clone());
    service
        .serve(listener, async move { stop.cancelled().await })
        .await
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
