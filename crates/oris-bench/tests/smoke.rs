//! Runs the built `oris-bench` binary with tiny settings and checks its output and exit
//! status: the calibration line, one well-formed line per workload (W1–W5 on memory and
//! SQLite; S1 and S2 over HTTP against the real server on memory and SQLite; S3's dispatch
//! parts), and the clear refusals (exit status 2) of what cannot run (S3 for `--seconds`) or
//! is not configured (PostgreSQL without its URL).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oris-bench"))
        .args(args)
        .env_remove("ORIS_BENCH_PG_URL")
        .output()
        .expect("the oris-bench binary runs")
}

fn json_lines(out: &Output) -> Vec<Value> {
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "exit status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn number(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("`{field}` is not a number in {v}"))
}

fn check_calibration(line: &Value) {
    let c = &line["calibration"];
    assert!(number(c, "durable_commits_per_sec") > 0.0, "{line}");
    assert!(number(c, "seconds") >= 0.2, "{line}");
    assert!(c["commits"].as_u64().unwrap() >= 1, "{line}");
}

fn check_workloads(backend: &str, extra_dir: Option<&Path>) {
    let mut args = vec![
        "--workload",
        "W1,W2,W3,W4,W5",
        "--backend",
        backend,
        "--runs",
        "3",
        "--calibrate-seconds",
        "0.2",
        "--steps",
        "20",
        "--json",
    ];
    let dir_arg;
    if let Some(d) = extra_dir {
        dir_arg = d.display().to_string();
        args.extend(["--db-dir", &dir_arg]);
    }
    let out = bench(&args);
    assert_success(&out);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 6, "{lines:?}");
    check_calibration(&lines[0]);
    let durable = backend != "memory";
    for (line, workload) in lines[1..].iter().zip(["W1", "W2", "W3", "W4", "W5"]) {
        assert_eq!(line["workload"], workload, "{line}");
        assert_eq!(line["backend"], backend, "{line}");
        assert_eq!(line["durability"], "sync", "{line}");
        let concurrency = if workload == "W5" { 32 } else { 1 };
        assert_eq!(line["concurrency"], concurrency, "{line}");
        assert_eq!(line["runs"], 3, "{line}");
        assert_eq!(line["wrong_runs"], 0, "{line}");
        for field in [
            "seconds",
            "runs_per_sec",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "commits_per_run",
        ] {
            assert!(number(line, field) > 0.0, "`{field}` in {line}");
        }
        // SQLite grows by whole pages: three tiny runs may fit in the pages it has.
        assert!(number(line, "bytes_per_run") >= 0.0, "{line}");
        if !durable {
            assert!(number(line, "bytes_per_run") > 0.0, "{line}");
        }
        assert!(number(line, "p50_ms") <= number(line, "p95_ms"), "{line}");
        assert!(number(line, "p95_ms") <= number(line, "p99_ms"), "{line}");
        for field in [
            "limit_ratio",
            "fsyncs_per_run",
            "commits_per_fsync",
            "transactions_per_run",
            "durable_commits_per_sec_after",
        ] {
            if durable {
                assert!(number(line, field) > 0.0, "`{field}` in {line}");
            } else {
                assert!(line[field].is_null(), "`{field}` in {line}");
            }
        }
        if workload == "W3" {
            // A cycle: start to the interrupt, then resume to END.
            let (r50, r95) = (number(line, "resume_p50_ms"), number(line, "resume_p95_ms"));
            assert!(r50 > 0.0 && r50 <= r95, "{line}");
            assert!(r50 < number(line, "p50_ms"), "{line}");
            // Start, a's superstep, the interrupt, the resume value, b and c: well over 3.
            assert!(number(line, "commits_per_run") >= 4.0, "{line}");
        } else {
            assert!(
                line["resume_p50_ms"].is_null() && line["resume_p95_ms"].is_null(),
                "{line}"
            );
        }
        for field in [
            "store_calls_per_run",
            "server_cpu_ms_per_run",
            "client_cpu_ms_per_run",
        ] {
            assert!(line[field].is_null(), "`{field}` in {line}");
        }
        if workload == "W4" {
            assert_eq!(line["steps"], 20, "{line}");
            assert!(number(line, "bytes_per_step") >= 0.0, "{line}");
            // One commit per superstep plus the start.
            assert!(number(line, "commits_per_run") >= 21.0, "{line}");
        } else {
            assert!(
                line["steps"].is_null() && line["bytes_per_step"].is_null(),
                "{line}"
            );
        }
    }
}

#[test]
fn memory_workloads_report_every_field() {
    check_workloads("memory", None);
}

#[test]
fn sqlite_workloads_report_every_field() {
    let dir = tempfile::tempdir().unwrap();
    check_workloads("sqlite", Some(dir.path()));
    for w in ["w1", "w2", "w3", "w4", "w5"] {
        assert!(dir.path().join(format!("{w}.db")).exists(), "{w}.db");
    }
}

#[test]
fn seconds_mode_and_table_output() {
    let out = bench(&[
        "--workload",
        "W1",
        "--backend",
        "memory",
        "--seconds",
        "0.2",
        "--calibrate-seconds",
        "0.2",
        "--json",
    ]);
    assert_success(&out);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    assert!(lines[1]["runs"].as_u64().unwrap() >= 1);

    let out = bench(&[
        "--workload",
        "W2",
        "--backend",
        "memory",
        "--runs",
        "2",
        "--calibrate-seconds",
        "0.2",
    ]);
    assert_success(&out);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("calibration:"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("W2 ")), "{stdout}");
}

#[test]
fn unavailable_workloads_and_backends_exit_with_2() {
    for (args, needle) in [
        (
            &[
                "--workload",
                "W1,S3",
                "--backend",
                "memory",
                "--seconds",
                "1",
            ][..],
            "--runs",
        ),
        (&["--workload", "W3", "--backend", "postgres"], "PostgreSQL"),
        (&["--workload", "S1", "--backend", "postgres"], "PostgreSQL"),
        (&["--workload", "W1", "--backend", "postgres"], "PostgreSQL"),
        (
            &["--workload", "W7", "--backend", "memory"],
            "invalid value",
        ),
        (
            &["--workload", "W1", "--backend", "oracle"],
            "invalid value",
        ),
    ] {
        let out = bench(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing is measured");
    }
}

/// S1 and S2 against the real server in a child process: a few runs each, every field, the
/// final states checked (by the bench: `wrong_runs` is 0 and the exit status 0).
fn check_server_workloads(backend: &str, dir: &Path, concurrency: &str) {
    let d = dir.display().to_string();
    let out = bench(&[
        "--workload",
        "S1,S2",
        "--backend",
        backend,
        "--runs",
        "6",
        "--concurrency",
        concurrency,
        "--calibrate-seconds",
        "0.2",
        "--db-dir",
        &d,
        "--json",
    ]);
    assert_success(&out);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "{lines:?}");
    check_calibration(&lines[0]);
    let durable = backend != "memory";
    for (line, workload) in lines[1..].iter().zip(["S1", "S2"]) {
        assert_eq!(line["workload"], workload, "{line}");
        assert_eq!(line["backend"], backend, "{line}");
        assert_eq!(
            line["concurrency"],
            concurrency.parse::<u64>().unwrap(),
            "{line}"
        );
        assert_eq!(line["runs"], 6, "{line}");
        assert_eq!(line["wrong_runs"], 0, "{line}");
        for field in ["seconds", "runs_per_sec", "p50_ms", "p95_ms", "p99_ms"] {
            assert!(number(line, field) > 0.0, "`{field}` in {line}");
        }
        assert!(number(line, "p50_ms") <= number(line, "p95_ms"), "{line}");
        // Commits the server's engine made: S1 starts and completes three nodes; S2 also
        // suspends and resumes.
        let commits = number(line, "commits_per_run");
        if workload == "S1" {
            assert!((4.0..=5.0).contains(&commits), "{line}");
            assert!(line["resume_p50_ms"].is_null(), "{line}");
        } else {
            assert!(commits >= 6.0, "{line}");
            let (r50, r95) = (number(line, "resume_p50_ms"), number(line, "resume_p95_ms"));
            assert!(r50 > 0.0 && r50 <= r95, "{line}");
            assert!(r50 < number(line, "p50_ms"), "{line}");
        }
        for field in ["limit_ratio", "fsyncs_per_run", "transactions_per_run"] {
            if durable {
                assert!(number(line, field) > 0.0, "`{field}` in {line}");
            } else {
                assert!(line[field].is_null(), "`{field}` in {line}");
            }
        }
        for field in ["server_cpu_ms_per_run", "client_cpu_ms_per_run"] {
            assert!(number(line, field) >= 0.0, "`{field}` in {line}");
        }
        // What the server asked of its store: every engine commit, and at least one claim.
        let calls = &line["store_calls_per_run"];
        assert_eq!(number(&calls["commit"], "per_run"), commits, "{line}");
        assert!(number(&calls["claim"], "per_run") > 0.0, "{line}");
        assert!(number(&calls["commit"], "mean_us") > 0.0, "{line}");
    }
}

#[test]
fn server_workloads_over_http_on_memory() {
    let dir = tempfile::tempdir().unwrap();
    check_server_workloads("memory", dir.path(), "3");
}

#[test]
fn server_workloads_over_http_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    check_server_workloads("sqlite", dir.path(), "1");
    for w in ["s1", "s2"] {
        assert!(dir.path().join(format!("{w}.db")).exists(), "{w}.db");
    }
}

/// S3's dispatch parts: the store's claims and the worker protocol over HTTP drain the
/// queue, every run claimed once and completed.
#[test]
fn s3_dispatch_on_memory_and_sqlite() {
    for backend in ["memory", "sqlite"] {
        let out = bench(&[
            "--workload",
            "S3",
            "--backend",
            backend,
            "--runs",
            "40",
            "--failover-rounds",
            "0",
            "--calibrate-seconds",
            "0.2",
            "--json",
        ]);
        assert_success(&out);
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 3, "calibration, store, http: {lines:?}");
        check_calibration(&lines[0]);
        for (line, part) in lines[1..].iter().zip(["store", "http"]) {
            assert_eq!(line["workload"], "S3", "{line}");
            assert_eq!(line["part"], part, "{line}");
            assert_eq!(line["backend"], backend, "{line}");
            assert_eq!(line["runs"], 40, "{line}");
            assert_eq!(line["wrong_runs"], 0, "{line}");
            assert_eq!(line["concurrency"], 4, "{line}");
            assert!(number(line, "claims_per_sec") > 0.0, "{line}");
            assert!(number(line, "p50_ms") <= number(line, "p99_ms"), "{line}");
            // 40 runs in batches of at most 16 take at least 3 claims, plus the empty ones.
            assert!(line["claim_calls"].as_u64().unwrap() >= 3 + 4, "{line}");
            assert!(line["failover_p50_ms"].is_null(), "{line}");
        }
    }
}

/// The `oris-crash` binary, built (or found up to date) by cargo for this test.
fn oris_crash_binary() -> std::path::PathBuf {
    let out = Command::new(env!("CARGO"))
        .args(["build", "-p", "oris-crash", "--message-format=json"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "cargo build -p oris-crash failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["target"]["name"] == "oris-crash")
        .find_map(|m| m["executable"].as_str().map(std::path::PathBuf::from))
        .expect("cargo names the oris-crash executable")
}

/// S3 on the memory store with 20 runs, `oris-crash` at `crash`, and `extra` arguments.
fn s3_on_memory(crash: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--workload",
        "S3",
        "--backend",
        "memory",
        "--runs",
        "20",
        "--calibrate-seconds",
        "0.2",
        "--json",
    ];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_oris-bench"))
        .args(args)
        .env("ORIS_BENCH_CRASH_BIN", crash)
        .output()
        .expect("the oris-bench binary runs")
}

/// S3's failover part: the lease holder is killed mid-node, the other worker completes the
/// run after about the lease TTL, and no completed node or recorded step runs again.
#[test]
fn s3_failover_kills_the_holder_and_nothing_runs_twice() {
    let out = s3_on_memory(&oris_crash_binary(), &["--failover-rounds", "2"]);
    assert_success(&out);
    let lines = json_lines(&out);
    assert_eq!(
        lines.len(),
        4,
        "calibration, store, http, failover: {lines:?}"
    );
    let f = &lines[3];
    assert_eq!(f["part"], "failover", "{f}");
    assert_eq!(f["runs"], 2, "{f}");
    assert_eq!(f["wrong_runs"], 0, "{f}");
    assert_eq!(f["reexecuted_nodes"], 0, "{f}");
    assert_eq!(f["reexecuted_steps"], 0, "{f}");
    let lease = number(f, "lease_ms");
    let (p50, p95) = (number(f, "failover_p50_ms"), number(f, "failover_p95_ms"));
    // A failover waits for the dead holder's lease to expire, and not for the slow node.
    assert!(p50 >= lease / 2.0 && p50 <= p95, "{f}");
    assert!(p95 < lease + 20_000.0, "{f}");
    assert!(f["claims_per_sec"].is_null(), "{f}");
}

/// Without the `oris-crash` binary the failover part is skipped, and says how to get it.
#[test]
fn s3_failover_without_oris_crash_is_skipped_with_a_message() {
    let out = s3_on_memory(Path::new("/nonexistent/oris-crash"), &[]);
    assert_success(&out);
    assert_eq!(json_lines(&out).len(), 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("failover skipped") && stderr.contains("-p oris-crash"),
        "{stderr}"
    );
}
