//! `oris`: run the demo graphs on the embedded SQLite store and inspect threads.

mod demo;

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let store = oris::open_store(&cli.db).await?;
    let engine = oris::Engine::new(store);
    let demos = demo::register(&engine)?;
    match cli.command {
        Command::Demo { prefix } => demo::run_all(&engine, &demos, &prefix).await,
        Command::Recover => {
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
            let thread = ThreadId::new(&thread)?;
            demo::print_timeline(&engine, &thread, Seq::ZERO, json).await
        }
    }
}
