//! `oris`: the operator CLI over the control-plane API (`run`, `list`, `inspect`, …), the
//! server (`oris serve`) and a remote worker (`oris worker`) with the demo graphs, and
//! store maintenance (`migrate`, `backup`, `restore`, `verify --db`). See docs/cli.md.
//!
//! # Layout
//! - `client`: the API client, its errors and the exit codes.
//! - `ops`: the operator commands, one per API route.
//! - `output`: tables, JSON and NDJSON; `progress`: the live display of `run --wait`.
//! - `local`: commands on a store opened directly (`--db`).
//! - `serve`: `oris serve` — flags, startup messages, signals; `worker`: `oris worker`.
//! - `demo`: the demo graphs (served, and run by `oris demo`) and the timeline printer.

mod client;
mod demo;
mod local;
mod ops;
mod output;
mod progress;
mod serve;
mod worker;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::client::Failure;
use crate::output::Format;

const AFTER_HELP: &str = "\
Environment: ORIS_URL (default http://127.0.0.1:8080), ORIS_TOKEN, ORIS_CA_CERT, ORIS_DB,
NO_COLOR, RUST_LOG.

Exit codes:
  0  ok
  1  failed: a local store error, `verify` found a mismatch, a run followed with --wait
     failed or was cancelled, `serve`/`worker` stopped on an error
  2  usage: bad flags or arguments, JSON that does not parse, bulk cancel unconfirmed
  3  not found (HTTP 404)
  4  conflict (HTTP 409)
  5  authentication or permission (HTTP 401, 403)
  6  server error, unavailable, overloaded or rate limited (HTTP 5xx, 429)
  7  network: the server URL could not be reached
  8  invalid input refused by the server (HTTP 400, 405, 413, 415, 422)

Example: oris run expense-approval order-1 --input '{\"amount_cents\": 72500}' --wait";

/// Oris — durable execution for graph workflows: the operator CLI over the control-plane
/// API, the server (`oris serve`), a remote worker (`oris worker`) and store maintenance.
///
/// The client commands take --url, --token and --output after the subcommand
/// (`oris list --url https://oris.internal -o json`), or ORIS_URL and ORIS_TOKEN.
#[derive(Debug, Parser)]
#[command(name = "oris", version, after_help = AFTER_HELP)]
struct Cli {
    /// Store URL of the commands that open a store (serve, demo, recover, migrate, backup,
    /// restore, verify, timeline --db): sqlite://PATH, postgres://USER@HOST:PORT/DB or
    /// memory://
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
    /// Example: `oris recover --db sqlite://oris-data/oris.db`
    Recover,
    /// Start a run of a graph on a thread (POST /v1/jobs); `--wait` follows it to its end.
    Run(ops::RunArgs),
    /// List runs with filters, oldest first (GET /v1/jobs).
    List(ops::ListArgs),
    /// A thread's latest run: status, state, pending interrupts, next nodes
    /// (GET /v1/jobs/{thread}).
    ///
    /// Example: `oris inspect order-1`
    Inspect(ops::ThreadArgs),
    /// A thread's checkpoints (GET /v1/jobs/{thread}/history).
    ///
    /// Example: `oris history order-1`
    History(ops::ThreadArgs),
    /// A thread's events (GET /v1/jobs/{thread}/timeline); `--follow` streams new ones;
    /// `--db URL` reads a local store instead of a server.
    Timeline(ops::TimelineArgs),
    /// Answer a thread's interrupt, or an interrupt by id; the run continues.
    Resume(ops::ResumeArgs),
    /// Run a thread again from a checkpoint (recorded steps are not executed again).
    Replay(ops::ReplayArgs),
    /// Start a new thread from a checkpoint of another.
    Fork(ops::ForkArgs),
    /// Cancel a thread's unfinished run, or in bulk the runs matching a filter (asks for
    /// confirmation unless --yes).
    Cancel(ops::CancelArgs),
    /// List, show, answer or reject interrupts.
    #[command(subcommand)]
    Interrupts(ops::InterruptsCmd),
    /// The dead-letter queue: failed runs, their error chains, replay.
    #[command(subcommand)]
    Dlq(ops::DlqCmd),
    /// Registered graphs; `show` prints a graph's Mermaid diagram.
    #[command(subcommand)]
    Graphs(ops::GraphsCmd),
    /// Remote workers registered with the server.
    #[command(subcommand)]
    Workers(ops::WorkersCmd),
    /// The audit log (admin).
    Audit(ops::AuditArgs),
    /// API keys (admin): create, list, revoke.
    #[command(subcommand)]
    Keys(ops::KeysCmd),
    /// Re-derive a thread's state from its log alone and compare it with the stored
    /// checkpoint state and the current state: through the server
    /// (`GET /v1/jobs/{thread}/verify`), or with `--db` on a local store (the demo graphs).
    /// Exits 1 on a mismatch.
    ///
    /// Example: `oris verify order-1 --url https://oris.internal`
    ///
    /// Example: `oris verify demo-expense --db sqlite://oris-data/oris.db`
    Verify(ops::ThreadArgs),
    /// Apply pending schema migrations to --db and print the schema version.
    ///
    /// Example: `oris migrate --db postgres://oris@db:5432/oris`
    Migrate {
        /// `table` or `json`.
        #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Write a consistent copy of a SQLite --db while it may be in use (PostgreSQL: use
    /// pg_dump).
    ///
    /// Example: `oris backup backups/oris-2026-11-26.db --db sqlite://oris-data/oris.db`
    Backup {
        /// The backup file to create (must not exist).
        dest: PathBuf,
    },
    /// Put a backup in place as the SQLite --db; stop every process using it first
    /// (PostgreSQL: use pg_restore).
    ///
    /// Example: `oris restore backups/oris-2026-11-26.db --db sqlite://oris-data/oris.db`
    Restore {
        /// The backup file.
        src: PathBuf,
    },
    /// Print a shell completion script.
    ///
    /// Example: `oris completions bash > /etc/bash_completion.d/oris`
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let db_given = matches
        .subcommand()
        .and_then(|(_, m)| m.value_source("db"))
        .or_else(|| matches.value_source("db"))
        == Some(ValueSource::CommandLine);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(&cli);
    match run(cli, db_given).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.code)
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

async fn run(cli: Cli, db_given: bool) -> Result<(), Failure> {
    client::install_tls_provider();
    let db = cli.db;
    match cli.command {
        Command::Serve(args) => Ok(serve::serve(&db, args).await?),
        Command::Worker(args) => Ok(worker::worker(args).await?),
        Command::Demo { prefix } => {
            let (engine, demos) = local(&db).await?;
            Ok(demo::run_all(&engine, &demos, &prefix).await?)
        }
        Command::Recover => {
            let (engine, _demos) = local(&db).await?;
            let report = engine.recover().await.map_err(anyhow::Error::from)?;
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
        Command::Run(a) => ops::run(a).await,
        Command::List(a) => ops::list(a).await,
        Command::Inspect(a) => ops::inspect(a).await,
        Command::History(a) => ops::history(a).await,
        Command::Timeline(a) if db_given => local::timeline(&db, &a.thread, a.conn.output).await,
        Command::Timeline(a) => ops::timeline(a).await,
        Command::Resume(a) => ops::resume(a).await,
        Command::Replay(a) => ops::replay(a).await,
        Command::Fork(a) => ops::fork(a).await,
        Command::Cancel(a) => ops::cancel(a).await,
        Command::Interrupts(c) => ops::interrupts(c).await,
        Command::Dlq(c) => ops::dlq(c).await,
        Command::Graphs(c) => ops::graphs(c).await,
        Command::Workers(c) => ops::workers(c).await,
        Command::Audit(a) => ops::audit(a).await,
        Command::Keys(c) => ops::keys(c).await,
        Command::Verify(a) if db_given => local::verify(&db, &a.thread, a.conn.output).await,
        Command::Verify(a) => ops::verify(a).await,
        Command::Migrate { output } => local::migrate(&db, output).await,
        Command::Backup { dest } => local::backup(&db, &dest).await,
        Command::Restore { src } => local::restore(&db, &src).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "oris", &mut std::io::stdout());
            Ok(())
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// The words of a shell command line: quotes removed, stopping at an unquoted `#`
    /// comment or redirection, split into segments at unquoted `|`, `&` and `;`.
    fn segments(line: &str) -> Vec<Vec<String>> {
        let (mut segs, mut words, mut word) = (Vec::new(), Vec::new(), None::<String>);
        let mut chars = line.chars();
        let mut quote = None;
        while let Some(c) = chars.next() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => word.get_or_insert_with(String::new).push(c),
                (None, '\'' | '"') => {
                    quote = Some(c);
                    word.get_or_insert_with(String::new);
                }
                (None, '\\') => {
                    if let Some(n) = chars.next() {
                        word.get_or_insert_with(String::new).push(n);
                    }
                }
                (None, ' ' | '\t') => words.extend(word.take()),
                (None, '|' | '&' | ';') => {
                    words.extend(word.take());
                    segs.push(std::mem::take(&mut words));
                }
                (None, '#' | '>' | '<') if word.is_none() => break,
                (None, c) => word.get_or_insert_with(String::new).push(c),
            }
        }
        words.extend(word.take());
        segs.push(words);
        segs
    }

    /// Every `oris …` command in the shell blocks of the README, the docs and the examples'
    /// READMEs (also as `target/debug/oris …`) parses with this build's flags, so no
    /// document can drift from the binary.
    #[test]
    fn every_oris_command_in_the_docs_parses() {
        let docs = [
            ("README.md", include_str!("../../../README.md")),
            ("docs/cli.md", include_str!("../../../docs/cli.md")),
            ("docs/workers.md", include_str!("../../../docs/workers.md")),
            (
                "docs/operations.md",
                include_str!("../../../docs/operations.md"),
            ),
            ("docs/runbook.md", include_str!("../../../docs/runbook.md")),
            ("docs/storage.md", include_str!("../../../docs/storage.md")),
            (
                "examples/starter-axum/README.md",
                include_str!("../../../examples/starter-axum/README.md"),
            ),
            (
                "examples/worker-tokio/README.md",
                include_str!("../../../examples/worker-tokio/README.md"),
            ),
        ];
        let mut checked = 0;
        for (name, doc) in docs {
            let mut in_sh = false;
            for line in doc.lines() {
                let fence = line.trim_start();
                if fence.starts_with("```") {
                    in_sh = fence == "```sh";
                    continue;
                }
                if !in_sh {
                    continue;
                }
                for mut words in segments(line.trim()) {
                    match words.first() {
                        Some(w) if w == "oris" || w.ends_with("/oris") => words[0] = "oris".into(),
                        _ => continue,
                    }
                    if let Err(e) = Cli::command().try_get_matches_from(&words) {
                        panic!("{name}: `{line}` does not parse:\n{e}");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked >= 60, "only {checked} commands found");
    }

    #[test]
    fn shell_words() {
        assert_eq!(
            segments(r#"echo '{"a": 1}' | oris run g t --input - # comment"#),
            [
                vec!["echo".to_owned(), r#"{"a": 1}"#.to_owned()],
                ["oris", "run", "g", "t", "--input", "-"]
                    .map(String::from)
                    .to_vec(),
            ]
        );
        assert_eq!(
            segments(r#"oris resume t --value '"approved"' > out"#),
            [["oris", "resume", "t", "--value", "\"approved\""]
                .map(String::from)
                .to_vec()]
        );
    }
}
