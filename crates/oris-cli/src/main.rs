//! `oris`: serve the control plane with the demo graphs (`oris serve`), run the demo graphs
//! in-process, and inspect threads — on the embedded SQLite store by default.
//!
//! # Layout
//! - `serve`: `oris serve` — flags, startup messages, signals.
//! - `demo`: the demo graphs (served, and run by `oris demo`) and the timeline printer.

mod demo;
mod serve;
mod worker;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use oris::{Seq, ThreadId};

/// Oris — durable execution for graph workflows.
#[derive(Debug, Parser)]
#[command(name = "oris", version, about)]
struct Cli {
    /// Store URL: sqlite://PATH, postgres://USER@HOST:PORT/DB or memory://
    #[arg(
        long,
        global = true,
        env = "ORIS_DB",
        default_value = "sqlite://oris-data/oris.db"
    )]
    db: String,
    /// Log format on stderr: readable text, or one JSON object per line.
    #[arg(long, global = true, env = "ORIS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Readable lines (coloured on a terminal).
    Text,
    /// JSON lines with the span fields (`request_id`, `thread_id`, `run_id`, …).
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the control plane (HTTP API under /v1) with the demo graphs and an embedded
    /// worker pool. Prints `oris: listening on http://ADDR` on stderr once it listens, and
    /// on the first start the admin token on stdout. SIGINT/SIGTERM stop it gracefully.
    ///
    /// Example: `oris serve --addr 127.0.0.1:8080 --db sqlite://oris-data/oris.db`
    Serve(serve::ServeArgs),
    /// Execute the demo graphs for a server elsewhere, as a remote worker: polls it for
    /// runs, executes them under its leases, reports every step. SIGINT/SIGTERM stop it
    /// gracefully (running nodes finish, runs are handed back).
    ///
    /// Example: `oris worker --server http://10.0.0.5:8080 --token $ORIS_TOKEN --capacity 8`
    Worker(worker::WorkerArgs),
    /// Run the demo graphs (expense approval, fan-out research, flaky retry) and print
    /// each run's timeline and final state.
    ///
    /// Example: `oris demo --prefix try1`
    Demo {
        /// Thread id prefix; runs on a thread that already exists continue it.
        #[arg(long, default_value = "demo")]
        prefix: String,
    },
    /// Continue every unfinished demo run in the store (after a crash).
    ///
    /// Example: `oris recover`
    Recover,
    /// Print a thread's events.
    ///
    /// Example: `oris timeline demo-expense`
    Timeline {
        /// The thread.
        thread: String,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr: human-readable on a terminal, JSON lines with `--log-format json`.
/// `RUST_LOG` filters them (default: `info` for the server, `warn` otherwise).
fn init_logging(cli: &Cli) {
    let default = match cli.command {
        Command::Serve(_) | Command::Worker(_) => "info",
        _ => "warn",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::serve(&cli.db, args).await,
        Command::Worker(args) => worker::worker(args).await,
        Command::Demo { prefix } => {
            let (engine, demos) = local(&cli.db).await?;
            demo::run_all(&engine, &demos, &prefix).await
        }
        Command::Recover => {
            let (engine, _demos) = local(&cli.db).await?;
            let report = engine.recover().await?;
            for (t, r, status) in &report.resumed {
                println!("resumed {t} {r}: {}", status.as_str());
            }
            for (t, r, e) in &report.skipped {
                println!("skipped {t} {r}: {e}");
            }
            println!(
                "{} resumed, {} skipped",
                report.resumed.len(),
                report.skipped.len()
            );
            Ok(())
        }
        Command::Timeline { thread, json } => {
            let (engine, _demos) = local(&cli.db).await?;
            let thread = ThreadId::new(&thread)?;
            demo::print_timeline(&engine, &thread, Seq::ZERO, json).await
        }
    }
}

/// An in-process engine on the store with the demo graphs registered.
async fn local(db: &str) -> anyhow::Result<(oris::Engine, demo::Demos)> {
    let store = oris::open_store(db).await?;
    let engine = oris::Engine::new(store);
    let demos = demo::register(&engine)?;
    Ok((engine, demos))
}
