//! The machine's durable commit rate, measured outside Oris.
//!
//! A fresh SQLite file in WAL mode with `synchronous=FULL`, one small insert per
//! transaction, for a fixed time: every commit waits for its own fsync of the WAL, so the
//! rate is what the disk allows one writer that never batches. Workload results are
//! compared with it (`limit_ratio`) because the disk's fsync time moves several-fold from
//! minute to minute on the machines this runs on.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use rusqlite::Connection;
use serde::Serialize;

/// The result of the calibration.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// Durable (fsynced) commits per second of one writer.
    pub durable_commits_per_sec: f64,
    /// Time measured, in seconds.
    pub seconds: f64,
    /// Commits made.
    pub commits: u64,
}

/// Runs the calibration for `seconds` on a fresh file in `dir` (removed afterwards).
///
/// # Errors
/// If the file cannot be created or written.
pub fn run(dir: &Path, seconds: f64) -> anyhow::Result<Calibration> {
    let path = dir.join("calibration.db");
    remove_db(&path);
    let result = measure(&path, Duration::from_secs_f64(seconds));
    remove_db(&path);
    result.with_context(|| format!("calibration on {} failed", path.display()))
}

fn measure(path: &Path, limit: Duration) -> anyhow::Result<Calibration> {
    let conn = Connection::open(path)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    ensure!(
        mode.eq_ignore_ascii_case("wal"),
        "journal_mode is {mode}, not wal"
    );
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE calibration (id INTEGER PRIMARY KEY, payload BLOB NOT NULL);",
    )?;
    let mut insert = conn.prepare("INSERT INTO calibration (payload) VALUES (?1)")?;
    let payload = [0x5a_u8; 64];
    let start = Instant::now();
    let mut commits = 0_u64;
    loop {
        // Autocommit: each statement is its own transaction, fsynced before it returns.
        insert.execute([&payload[..]])?;
        commits += 1;
        if start.elapsed() >= limit {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Calibration {
        durable_commits_per_sec: commits as f64 / seconds,
        seconds,
        commits,
    })
}

/// Removes a database file and its WAL and shared-memory files, if present.
pub fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        // Absent files are the normal case.
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_something() {
        let dir = tempfile::tempdir().unwrap();
        let c = run(dir.path(), 0.05).unwrap();
        assert!(c.commits >= 1);
        assert!(c.durable_commits_per_sec > 0.0);
        assert!(!dir.path().join("calibration.db").exists());
    }
}
