//! `oris-bench`: the benchmark harness of Oris.
//!
//! Runs the engine workloads of `WORKLOADS.md` (W1 linear, W2 fan-out/fan-in, W3 interrupt +
//! resume, W4 state growth, W5 concurrency) in-process, and the server workloads (S1 a
//! three-step run, S2 an interrupt round trip) over HTTP against the real server started
//! in a child process, on the in-memory, SQLite or PostgreSQL store, and reports runs/s,
//! per-run latency percentiles (W3, S2: also of the resume), commits, fsyncs and bytes
//! stored per run:
//!
//! ```text
//! cargo run --release -p oris-bench -- --workload W1,W4 --backend memory|sqlite|postgres \
//!     [--durability sync|batched|exit] [--runs N | --seconds S] [--concurrency C] \
//!     [--steps K] [--calibrate-seconds F] [--db-dir PATH] [--worker-threads T] --json
//! ```
//!
//! It first measures the machine's durable commit rate with a raw SQLite loop (WAL,
//! `synchronous=FULL`, one small insert per transaction), because the disk's fsync time here
//! varies several-fold minute to minute; `limit_ratio` compares a workload with that bound.
//! For SQLite the calibration is repeated (half as long) after each workload and reported
//! as `durable_commits_per_sec_after`, so a drift of the disk during the workload shows.
//! With `--json` every result is one JSON object per line, the calibration first.
//!
//! Numbers that matter for comparisons come from release builds on an otherwise idle
//! machine; SQLite's byte counts grow by whole pages, so use enough runs (the defaults do).
//!
//! Every run's final state is checked; a wrong one is reported on stderr and makes the
//! process exit with status 1 at the end. What cannot run (PostgreSQL without
//! `ORIS_BENCH_PG_URL`, S3 with `--seconds`) exits with status 2 and says so.
//!
//! S1 and S2 re-execute this binary as `oris-bench __server …` (hidden): it serves
//! `oris::server::Server` with the bench graphs on a fresh store and a free loopback port,
//! auth on with a provisioned admin token, and reports its counters to the parent.
//!
//! # Layout
//! - `cli`: the command line and the checks of what this build can run.
//! - `calibrate`: the raw durable-commit loop.
//! - `backend`: opening a fresh store per workload; commit, fsync and byte counters.
//! - `workloads`: the states, graphs and final-state checks of W1, W2, W3, W4 and S1.
//! - `harness`: drives N runs or W3 cycles (or S seconds) with C in flight and collects
//!   latencies.
//! - `http`: S1 and S2 — their HTTP calls and measurement.
//! - `client`: the HTTP client of the servers the bench starts, and their admin token.
//! - `s3`: S3's dispatch throughput (store claims, and the worker protocol over HTTP).
//! - `server`: the hidden `__server` command and the parent's handle on that process (S1,
//!   S2, S3's HTTP part); `counting`: its store wrapper counting calls.
//! - `report`: percentiles, the per-workload result, JSON lines and the readable table.

mod backend;
mod calibrate;
mod cli;
mod client;
mod counting;
mod harness;
mod http;
mod report;
mod s3;
mod server;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

use crate::cli::{Cli, Workload};
use crate::report::Printer;

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == server::COMMAND)
    {
        let args = server::ServerArgs::parse_from(
            std::iter::once(std::ffi::OsString::from(server::COMMAND))
                .chain(std::env::args_os().skip(2)),
        );
        return match server::main(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("oris-bench server: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    if let Err(msg) = cli.check_available() {
        eprintln!("oris-bench: {msg}");
        return ExitCode::from(2);
    }
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("oris-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the calibration and every requested workload; `Ok(false)` if any run was wrong.
fn run(cli: &Cli) -> anyhow::Result<bool> {
    // Keeps the temporary directory alive until every workload is done.
    let (_temp, dir): (Option<tempfile::TempDir>, PathBuf) = match &cli.db_dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .with_context(|| format!("cannot create --db-dir {}", d.display()))?;
            (None, d.clone())
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("oris-bench-")
                .tempdir()
                .context("cannot create a temporary directory")?;
            let p = t.path().to_owned();
            (Some(t), p)
        }
    };
    let mut out = Printer::new(cli.json);
    let calibration = calibrate::run(&dir, cli.calibrate_seconds)?;
    out.calibration(&calibration);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(cli.worker_threads))
        .enable_all()
        .build()
        .context("cannot build the Tokio runtime")?;
    let mut all_correct = true;
    for &workload in &cli.workloads() {
        if workload == Workload::S3 {
            all_correct &= runtime.block_on(s3::run(cli, &dir, &calibration))?;
            continue;
        }
        let result = runtime.block_on(harness::bench(cli, workload, &dir, &calibration))?;
        if result.wrong_runs > 0 {
            all_correct = false;
            eprintln!(
                "oris-bench: {}: {} of {} runs ended with a wrong final state or an error",
                workload.name(),
                result.wrong_runs,
                result.runs,
            );
        }
        out.result(&result);
    }
    Ok(all_correct)
}
