//! Percentiles, the result of one workload, and how results are printed.

use std::collections::BTreeMap;
use std::io::Write as _;

use serde::Serialize;

use crate::calibrate::Calibration;
use crate::counting::PerRun;

/// The result of one workload, as printed (one JSON object per line with `--json`).
///
/// Rates count only runs that ended in the expected state; `runs` counts every run made.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadResult {
    /// `W1` … `W5`, `S1`, `S2`. For W3 and S2 a "run" is one cycle: start to the interrupt,
    /// then resume to END.
    pub workload: &'static str,
    /// `memory`, `sqlite` or `postgres`.
    pub backend: &'static str,
    /// `sync`, `batched` or `exit`.
    pub durability: &'static str,
    /// Runs in flight at once.
    pub concurrency: u32,
    /// Runs made.
    pub runs: u64,
    /// Runs whose final state was wrong or that returned an error.
    pub wrong_runs: u64,
    /// Wall time of the workload, in seconds.
    pub seconds: f64,
    /// Correct runs per second.
    pub runs_per_sec: f64,
    /// Median start→completion latency of a run, in milliseconds (nearest rank); for W3 the
    /// time of the cycle's two calls, start and resume; for S1 and S2 the time from the
    /// creating request to the completion observed by the client.
    pub p50_ms: Option<f64>,
    /// 95th percentile latency, in milliseconds.
    pub p95_ms: Option<f64>,
    /// 99th percentile latency, in milliseconds.
    pub p99_ms: Option<f64>,
    /// W3: median latency of the resume call alone (the cycle's second half); S2: of the
    /// resume request to the completion observed. In milliseconds; `null` for other
    /// workloads.
    pub resume_p50_ms: Option<f64>,
    /// W3, S2: 95th percentile latency of the resume, in milliseconds.
    pub resume_p95_ms: Option<f64>,
    /// Commits the engine made per run (counted by an observer).
    pub commits_per_run: f64,
    /// Commits the engine made per second.
    pub commits_per_sec: f64,
    /// Bytes stored per run: SQLite file growth (after a WAL checkpoint), or the memory
    /// store's `approx_bytes` of each run's thread.
    pub bytes_per_run: Option<f64>,
    /// `runs_per_sec ÷ (durable_commits_per_sec ÷ commits_per_run)`: the share of the raw
    /// fsync-bound rate reached (above 1 when commits share fsyncs). `null` for memory.
    pub limit_ratio: Option<f64>,
    /// The calibration repeated right after this workload (half as long), to show how far
    /// the disk drifted while it ran. `null` for memory.
    pub durable_commits_per_sec_after: Option<f64>,
    /// Fsynced store transactions per run. `null` for memory.
    pub fsyncs_per_run: Option<f64>,
    /// Engine commits carried by one fsync. `null` for memory, and when nothing was
    /// fsynced (`batched`).
    pub commits_per_fsync: Option<f64>,
    /// Store transactions (group commits, fsynced or not) per run. `null` for memory.
    pub transactions_per_run: Option<f64>,
    /// W4's loop length; `null` for other workloads.
    pub steps: Option<u32>,
    /// W4's bytes per step; `null` for other workloads.
    pub bytes_per_step: Option<f64>,
    /// S1, S2: the server's calls to its store per run and their mean time, by method
    /// (`{"commit": {"per_run": 4.0, "mean_us": 310.5}, …}`); `null` for other workloads.
    pub store_calls_per_run: Option<BTreeMap<String, PerRun>>,
    /// S1, S2: CPU time (user + system) the server process used per run, in milliseconds
    /// (1/100 s resolution, so use enough runs); `null` for other workloads.
    pub server_cpu_ms_per_run: Option<f64>,
    /// S1, S2: CPU time the bench's HTTP clients used per run, in milliseconds.
    pub client_cpu_ms_per_run: Option<f64>,
}

/// The sample at percentile `p` (0 < p ≤ 100) of sorted `samples`, by nearest rank.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Rounds to `digits` decimals (keeps the JSON readable; far below measurement noise).
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Prints results as JSON lines or as a table.
#[derive(Debug)]
pub struct Printer {
    json: bool,
    header_done: bool,
}

impl Printer {
    /// A printer; `json` selects JSON lines.
    pub fn new(json: bool) -> Self {
        Printer {
            json,
            header_done: false,
        }
    }

    /// The calibration line (always first).
    pub fn calibration(&mut self, c: &Calibration) {
        if self.json {
            let line = serde_json::json!({
                "calibration": {
                    "durable_commits_per_sec": round(c.durable_commits_per_sec, 1),
                    "seconds": round(c.seconds, 3),
                    "commits": c.commits,
                }
            });
            emit(&line.to_string());
        } else {
            emit(&format!(
                "calibration: {:.0} durable commits/s (SQLite WAL, synchronous=FULL, {} commits in {:.2} s)\n",
                c.durable_commits_per_sec, c.commits, c.seconds
            ));
        }
    }

    /// One workload's result.
    pub fn result(&mut self, r: &WorkloadResult) {
        if self.json {
            emit(&serde_json::to_string(r).expect("invariant: results serialize"));
            return;
        }
        if !self.header_done {
            self.header_done = true;
            emit(&format!(
                "{:<4} {:<7} {:<7} {:>5} {:>7} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>7} {:>8}",
                "wl",
                "backend",
                "durab.",
                "conc",
                "runs",
                "secs",
                "runs/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "com/run",
                "bytes/run",
                "limit",
                "fs/run",
                "com/fs"
            ));
        }
        let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_owned(), |v| format!("{v:.prec$}"));
        let mut line = format!(
            "{:<4} {:<7} {:<7} {:>5} {:>7} {:>7.2} {:>10.1} {:>8} {:>8} {:>8} {:>8.2} {:>9} {:>7} {:>7} {:>8}",
            r.workload,
            r.backend,
            r.durability,
            r.concurrency,
            r.runs,
            r.seconds,
            r.runs_per_sec,
            opt(r.p50_ms, 3),
            opt(r.p95_ms, 3),
            opt(r.p99_ms, 3),
            r.commits_per_run,
            opt(r.bytes_per_run, 0),
            opt(r.limit_ratio, 2),
            opt(r.fsyncs_per_run, 2),
            opt(r.commits_per_fsync, 2),
        );
        if let (Some(p50), Some(p95)) = (r.resume_p50_ms, r.resume_p95_ms) {
            line.push_str(&format!("  (resume p50 {p50:.3} ms, p95 {p95:.3} ms)"));
        }
        if let (Some(steps), Some(b)) = (r.steps, r.bytes_per_step) {
            line.push_str(&format!("  ({steps} steps, {b:.1} bytes/step)"));
        }
        if let Some(c) = r.durable_commits_per_sec_after {
            line.push_str(&format!("  (calibration after: {c:.0}/s)"));
        }
        if r.wrong_runs > 0 {
            line.push_str(&format!("  WRONG: {}", r.wrong_runs));
        }
        emit(&line);
        if let (Some(server), Some(client)) = (r.server_cpu_ms_per_run, r.client_cpu_ms_per_run) {
            emit(&format!(
                "     CPU per run: server {server:.3} ms, clients {client:.3} ms"
            ));
        }
        if let Some(calls) = &r.store_calls_per_run {
            let parts: Vec<String> = calls
                .iter()
                .map(|(m, c)| format!("{m} {:.2}× {:.0} µs", c.per_run, c.mean_us))
                .collect();
            emit(&format!("     store calls per run: {}", parts.join(", ")));
        }
    }
}

fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (e.g. `| head`) is not worth a panic.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&s, 50.0), Some(50));
        assert_eq!(percentile(&s, 95.0), Some(95));
        assert_eq!(percentile(&s, 99.0), Some(99));
        assert_eq!(percentile(&s, 100.0), Some(100));
        assert_eq!(percentile(&[7], 50.0), Some(7));
        assert_eq!(percentile(&[1, 2, 3], 50.0), Some(2));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn rounding() {
        assert_eq!(round(1.23456, 2), 1.23);
        assert_eq!(round(2.5e-7, 3), 0.0);
    }
}
