//! The command line, and what this build can and cannot run yet.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use oris::Durability;

/// Benchmarks Oris workloads (see WORKLOADS.md) and prints one result per workload.
#[derive(Debug, Parser)]
#[command(name = "oris-bench", version)]
pub struct Cli {
    /// Workloads to run, comma-separated, in order (W1 … W5 in-process; S1, S2 over HTTP
    /// against the real server in a child process; S3: dispatch throughput of the store and
    /// of the worker protocol over HTTP).
    #[arg(
        long = "workload",
        value_enum,
        value_delimiter = ',',
        required = true,
        ignore_case = true
    )]
    workload: Vec<Workload>,

    /// The store: `memory`, `sqlite` (a fresh file per workload) or `postgres` (the
    /// database at ORIS_BENCH_PG_URL, a fresh schema per workload).
    #[arg(long, value_enum, default_value = "sqlite")]
    pub backend: Backend,

    /// Durability of every run.
    #[arg(long, value_enum, default_value = "sync")]
    pub durability: DurabilityArg,

    /// Runs per workload (default depends on the workload and backend).
    #[arg(long, conflicts_with = "seconds", value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: Option<u64>,

    /// Run each workload for this many seconds instead of a number of runs.
    #[arg(long, value_parser = positive_f64)]
    pub seconds: Option<f64>,

    /// Untimed runs of each engine workload (W1–W5) before it is measured, on threads of
    /// their own: a durable store's WAL is then past its first checkpoint, as it is in
    /// steady operation (a fresh WAL also extends its file on every fsync). 0: none.
    #[arg(long, default_value_t = 64)]
    pub warmup: u64,

    /// Runs in flight at once, each on a fresh thread (default 1; W5: 32). For S1 and S2:
    /// HTTP clients.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: Option<u32>,

    /// S3: SIGKILL failover rounds (0 skips the failover part).
    #[arg(long, default_value_t = 10)]
    pub failover_rounds: u32,

    /// W4's loop length (supersteps per run).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub steps: u32,

    /// How long to measure the raw durable commit rate before the workloads, in seconds.
    #[arg(long, default_value_t = 2.0, value_parser = positive_f64)]
    pub calibrate_seconds: f64,

    /// Directory for the SQLite files (default: a fresh temporary directory, removed at
    /// the end). Files of the same name in it are replaced.
    #[arg(long)]
    pub db_dir: Option<PathBuf>,

    /// Worker threads of the Tokio runtime the engine runs on (S1, S2: of the server process
    /// and, separately, of the clients).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: u16,

    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A workload of WORKLOADS.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Linear, ten nodes.
    #[value(name = "W1")]
    W1,
    /// Fan-out to eight workers and a join.
    #[value(name = "W2")]
    W2,
    /// Interrupt and resume.
    #[value(name = "W3")]
    W3,
    /// State growth: a loop of `--steps` supersteps.
    #[value(name = "W4")]
    W4,
    /// W1 with `--concurrency` runs in flight.
    #[value(name = "W5")]
    W5,
    /// Server: three-step run over HTTP.
    #[value(name = "S1")]
    S1,
    /// Server: interrupt round trip.
    #[value(name = "S2")]
    S2,
    /// Server: failover.
    #[value(name = "S3")]
    S3,
}

impl Workload {
    /// Name as written on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::W1 => "W1",
            Workload::W2 => "W2",
            Workload::W3 => "W3",
            Workload::W4 => "W4",
            Workload::W5 => "W5",
            Workload::S1 => "S1",
            Workload::S2 => "S2",
            Workload::S3 => "S3",
        }
    }
}

/// A store backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// `MemoryStore`: nothing persists; measures the engine's own overhead.
    Memory,
    /// `SqliteStore` on a fresh file per workload.
    Sqlite,
    /// PostgreSQL at ORIS_BENCH_PG_URL (a fresh schema per workload).
    Postgres,
}

impl Backend {
    /// Name as written on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// `--durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// Every commit fsynced before the run proceeds.
    Sync,
    /// Every commit written, not fsynced.
    Batched,
    /// Only start and end written.
    Exit,
}

impl From<DurabilityArg> for Durability {
    fn from(d: DurabilityArg) -> Self {
        match d {
            DurabilityArg::Sync => Durability::Sync,
            DurabilityArg::Batched => Durability::Batched,
            DurabilityArg::Exit => Durability::Exit,
        }
    }
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(_) => Err("must be a positive number".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

impl Cli {
    /// The requested workloads, in order, without repeats.
    pub fn workloads(&self) -> Vec<Workload> {
        let mut out = Vec::new();
        for &w in &self.workload {
            if !out.contains(&w) {
                out.push(w);
            }
        }
        out
    }

    /// Runs in flight for `w`.
    pub fn concurrency_for(&self, w: Workload) -> u32 {
        match (self.concurrency, w) {
            (Some(c), _) => c,
            (None, Workload::W5) => 32,
            (None, _) => 1,
        }
    }

    /// Refuses, with a message for the user, what this build cannot run yet. Checked before
    /// the calibration so that nothing is measured in vain.
    pub fn check_available(&self) -> Result<(), String> {
        if self.backend == Backend::Postgres
            && std::env::var("ORIS_BENCH_PG_URL").map_or(true, |u| u.is_empty())
        {
            return Err("--backend postgres needs a PostgreSQL database: set \
                 ORIS_BENCH_PG_URL=postgres://USER@HOST:PORT/DB (each workload runs in a fresh \
                 schema of that database)"
                .to_owned());
        }
        for w in self.workloads() {
            match w {
                Workload::S3 if self.seconds.is_some() => {
                    return Err(
                        "S3 drains --runs queued runs (default 4000); --seconds does not apply"
                            .to_owned(),
                    );
                }
                Workload::S3 => {}
                Workload::W1
                | Workload::W2
                | Workload::W3
                | Workload::W4
                | Workload::W5
                | Workload::S1
                | Workload::S2 => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_line() {
        let cli = Cli::try_parse_from([
            "oris-bench",
            "--workload",
            "W1,w4",
            "--backend",
            "memory",
            "--durability",
            "batched",
            "--runs",
            "5",
            "--concurrency",
            "4",
            "--steps",
            "20",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.workloads(), [Workload::W1, Workload::W4]);
        assert_eq!(cli.backend, Backend::Memory);
        assert_eq!(Durability::from(cli.durability), Durability::Batched);
        assert_eq!(cli.concurrency_for(Workload::W1), 4);
        assert!(cli.check_available().is_ok());
    }

    #[test]
    fn runs_and_seconds_conflict_and_unknown_names_are_usage_errors() {
        for args in [
            &[
                "oris-bench",
                "--workload",
                "W1",
                "--runs",
                "1",
                "--seconds",
                "1",
            ][..],
            &["oris-bench", "--workload", "W9"],
            &["oris-bench", "--workload", "W1", "--backend", "mysql"],
        ] {
            let e = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn unavailable_things_are_refused() {
        let cli = Cli::try_parse_from(["oris-bench", "--workload", "W1", "--backend", "postgres"])
            .unwrap();
        assert!(cli.check_available().unwrap_err().contains("PostgreSQL"));
        let cli =
            Cli::try_parse_from(["oris-bench", "--workload", "W1,S3", "--seconds", "2"]).unwrap();
        assert!(cli.check_available().unwrap_err().contains("--runs"));
        for b in ["memory", "sqlite"] {
            let cli =
                Cli::try_parse_from(["oris-bench", "--workload", "W1,W3,S1,S2,S3", "--backend", b])
                    .unwrap();
            assert!(cli.check_available().is_ok(), "W3, S1, S2, S3 on {b}");
        }
        let cli = Cli::try_parse_from(["oris-bench", "--workload", "W5"]).unwrap();
        assert_eq!(cli.concurrency_for(Workload::W5), 32);
        assert_eq!(cli.concurrency_for(Workload::W1), 1);
    }
}
