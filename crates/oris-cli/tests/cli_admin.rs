//! The operator CLI's administration commands (keys, audit, workers), its error paths
//! (auth, network, usage, bulk cancel confirmation), help and completions, and the commands
//! on a local store (migrate, backup, restore, verify, timeline --db).

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    TOKEN, cli, client_command, code, json, ndjson, ok, oris_command, start_with_token as start,
    stderr, stdout,
};

fn run(url: &str, token: Option<&str>, args: &[&str]) -> Output {
    client_command(url, token, args)
        .output()
        .expect("oris runs")
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Keys, the audit log, remote workers, bulk cancel, and the auth errors.
#[tokio::test]
async fn keys_audit_workers_and_bulk_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let oris = start(dir.path());
    oris.ready().await;

    // Keys: create prints the token once on stdout; list; revoke.
    let o = cli(
        &oris,
        &["keys", "create", "--name", "ci", "--role", "viewer"],
    );
    code(&o, 0);
    let viewer = stdout(&o).trim().to_owned();
    assert!(viewer.starts_with("oris_"), "{viewer}");
    assert!(stderr(&o).contains("shown once"), "{}", stderr(&o));
    let keys = ndjson(&oris, &["keys", "list"]);
    let ci = keys
        .iter()
        .find(|k| k["name"] == "ci")
        .unwrap_or_else(|| panic!("{keys:?}"));
    assert_eq!(ci["role"], "viewer");
    assert!(ci.get("token").is_none(), "{ci}");
    let ci_id = ci["key_id"].as_str().unwrap().to_owned();
    let table = ok(&oris, &["keys", "list"]);
    assert!(table.starts_with("KEY "), "{table}");
    assert!(table.contains(&ci_id), "{table}");

    // The viewer reads but may not operate (403 → 5); a bad token is 401 → 5.
    let o = run(&oris.base, Some(&viewer), &["list"]);
    code(&o, 0);
    let o = run(&oris.base, Some(&viewer), &["cancel", "x"]);
    code(&o, 5);
    assert!(
        stderr(&o).contains("forbidden (HTTP 403)"),
        "{}",
        stderr(&o)
    );
    let o = run(&oris.base, None, &["list"]);
    code(&o, 5);
    assert!(
        stderr(&o).contains("unauthorized (HTTP 401)"),
        "{}",
        stderr(&o)
    );
    let o = run(
        &oris.base,
        Some("oris_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"),
        &["list"],
    );
    code(&o, 5);

    let revoked = json(&oris, &["keys", "revoke", &ci_id]);
    assert_eq!(revoked["key_id"], ci_id.as_str());
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let o = run(&oris.base, Some(&viewer), &["list"]);
    code(&o, 5);
    let o = cli(&oris, &["keys", "revoke", &ci_id]);
    code(&o, 4);
    let o = cli(&oris, &["keys", "revoke", "nosuchkey000"]);
    code(&o, 3);

    // The audit log names what the CLI did.
    let entries = ndjson(&oris, &["audit", "--action", "keys.revoke"]);
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert_eq!(entries[0]["target"], ci_id.as_str());
    assert_eq!(entries[0]["outcome"], "ok");
    let table = ok(&oris, &["audit", "--action", "keys.create"]);
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains("keys.create"), "{table}");

    // Remote workers: none, then one `oris worker`.
    let o = cli(&oris, &["workers", "list"]);
    code(&o, 0);
    assert_eq!(stdout(&o), "");
    let mut worker = oris_command()
        .args(["worker", "--server", &oris.base, "--token", TOKEN])
        .args(["--graph", "flaky", "--worker-id", "cli-w1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let workers = loop {
        let w = ndjson(&oris, &["workers", "list"]);
        if !w.is_empty() {
            break w;
        }
        assert!(Instant::now() < deadline, "the worker never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(workers[0]["worker_id"], "cli-w1");
    let table = ok(&oris, &["workers", "list"]);
    assert!(table.starts_with("WORKER "), "{table}");
    assert!(table.contains("cli-w1"), "{table}");
    assert!(table.contains("flaky@1"), "{table}");

    // Bulk cancel: refused without a filter, refused unconfirmed off a terminal, done
    // with --yes.
    for t in ["b-1", "b-2"] {
        ok(
            &oris,
            &[
                "run",
                "expense-approval",
                t,
                "--input",
                r#"{"amount_cents": 90000}"#,
                "--metadata",
                "batch=7",
                "--wait",
            ],
        );
    }
    let o = cli(&oris, &["cancel"]);
    code(&o, 2);
    let o = cli(&oris, &["cancel", "--metadata", "batch=7"]);
    code(&o, 2);
    let err = stderr(&o);
    assert!(err.contains("refusing to cancel 2 runs"), "{err}");
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(
        oris.get("/v1/jobs?status=interrupted").await.1["jobs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let o = cli(&oris, &["cancel", "--metadata", "batch=7", "--yes"]);
    code(&o, 0);
    assert_eq!(
        stdout(&o),
        "THREAD  RESULT\nb-1     cancelled\nb-2     cancelled\n"
    );
    assert!(
        stderr(&o).contains("2 cancelled, 0 skipped"),
        "{}",
        stderr(&o)
    );
    let res = json(
        &oris,
        &[
            "cancel",
            "--metadata",
            "batch=7",
            "--status",
            "interrupted",
            "--yes",
        ],
    );
    assert_eq!(res["cancelled"], serde_json::json!([]), "{res}");
}

/// Network failures name the URL (exit 7) — also for https, which this build speaks;
/// usage errors exit 2; every subcommand's help has an example; completions.
#[test]
fn network_usage_help_and_completions() {
    for scheme in ["http", "https"] {
        let url = format!("{scheme}://127.0.0.1:{}", closed_port());
        let o = run(&url, Some(TOKEN), &["list"]);
        code(&o, 7);
        let err = stderr(&o);
        assert!(
            err.starts_with(&format!("error: cannot reach the server at {url}")),
            "{err}"
        );
        assert!(!err.contains("scheme"), "{err}");
    }
    let o = run("ftp://x", None, &["list"]);
    code(&o, 2);

    let o = run("http://127.0.0.1:1", None, &["list", "--no-such-flag"]);
    code(&o, 2);
    let o = run("http://127.0.0.1:1", None, &["run"]);
    code(&o, 2);

    let help = stdout(&run("", None, &["--help"]));
    for line in ["Exit codes:", "3  not found", "7  network"] {
        assert!(help.contains(line), "{line} in {help}");
    }
    let leaves: &[&[&str]] = &[
        &["serve"],
        &["worker"],
        &["demo"],
        &["recover"],
        &["run"],
        &["list"],
        &["inspect"],
        &["history"],
        &["timeline"],
        &["resume"],
        &["replay"],
        &["fork"],
        &["cancel"],
        &["interrupts", "list"],
        &["interrupts", "show"],
        &["interrupts", "resume"],
        &["interrupts", "reject"],
        &["dlq", "list"],
        &["dlq", "show"],
        &["dlq", "replay"],
        &["graphs", "list"],
        &["graphs", "show"],
        &["workers", "list"],
        &["audit"],
        &["keys", "create"],
        &["keys", "list"],
        &["keys", "revoke"],
        &["verify"],
        &["migrate"],
        &["backup"],
        &["restore"],
        &["completions"],
    ];
    for leaf in leaves {
        let mut args = leaf.to_vec();
        args.push("--help");
        let o = run("", None, &args);
        code(&o, 0);
        let h = stdout(&o);
        assert!(
            h.contains("Example") && h.contains(&format!("oris {}", leaf.join(" "))),
            "{leaf:?} has no example:\n{h}"
        );
    }

    let o = run("", None, &["completions", "bash"]);
    code(&o, 0);
    let script = stdout(&o);
    assert!(script.contains("_oris()"), "{script}");
    assert!(
        script.contains("interrupts"),
        "a bash script for every subcommand"
    );
}

/// migrate, backup, restore, verify and timeline on a local SQLite store; PostgreSQL
/// backups are pg_dump's job (usage).
#[tokio::test]
async fn local_store_commands() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("oris.db").display());
    let local = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--db", &db]);
        run("", None, &a)
    };
    let o = local(&["migrate"]);
    code(&o, 0);
    assert_eq!(stdout(&o), "schema version 3 (migrated from 0)\n");
    let o = local(&["migrate", "-o", "json"]);
    code(&o, 0);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["version"], v["from"], "{v}");

    // A thread made by a server on that file.
    let oris = start(dir.path());
    oris.ready().await;
    let o = cli(
        &oris,
        &[
            "run",
            "expense-approval",
            "v-1",
            "--input",
            r#"{"amount_cents": 5000}"#,
            "--wait",
        ],
    );
    code(&o, 0);
    let backup = dir.path().join("backup.db");
    let o = local(&["backup", backup.to_str().unwrap()]);
    code(&o, 0);
    assert!(backup.exists());
    oris.terminate();
    let mut oris = oris;
    assert!(oris.wait_exit(Duration::from_secs(20)).is_some());

    let o = local(&["verify", "v-1"]);
    code(&o, 0);
    let out = stdout(&o);
    assert!(out.contains("result    consistent"), "{out}");
    let o = local(&["verify", "v-1", "-o", "json"]);
    code(&o, 0);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["consistent"], true, "{v}");
    assert_eq!(v["replayed_hash"], v["current_hash"]);
    let o = local(&["verify", "nope"]);
    code(&o, 3);

    let o = local(&["timeline", "v-1"]);
    code(&o, 0);
    assert!(stdout(&o).contains("run_completed"), "{}", stdout(&o));

    // Restore the backup over the file (nobody has it open now).
    std::fs::remove_file(dir.path().join("oris.db")).unwrap();
    let o = local(&["restore", backup.to_str().unwrap()]);
    code(&o, 0);
    let o = local(&["verify", "v-1"]);
    code(&o, 0);
    let o = local(&["restore", dir.path().join("missing.db").to_str().unwrap()]);
    code(&o, 3);

    // The in-process demo and recovery on the same file; verify knows every demo graph.
    let o = local(&["demo", "--prefix", "d"]);
    code(&o, 0);
    let out = stdout(&o);
    for line in ["== d-expense: ", "== d-research: ", "== d-flaky: "] {
        assert!(out.contains(line), "{line} in {out}");
    }
    let o = local(&["recover"]);
    code(&o, 0);
    assert_eq!(stdout(&o), "0 resumed, 0 skipped\n");
    for t in ["d-expense", "d-research", "d-flaky"] {
        let o = local(&["verify", t, "-o", "json"]);
        code(&o, 0);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["consistent"], true, "{v}");
    }
    let o = run(
        "",
        None,
        &[
            "backup",
            "x.dump",
            "--db",
            "postgres://oris@127.0.0.1:1/oris",
        ],
    );
    code(&o, 2);
    assert!(stderr(&o).contains("pg_dump"), "{}", stderr(&o));
}

/// Runs `openssl ARGS` in `dir`, asserting success.
fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command (it makes the test's certificates and TLS server)");
    assert!(o.status.success(), "openssl {args:?}: {}", stderr(&o));
}

/// A real TLS handshake: an https server (`openssl s_server -WWW`, serving a file as
/// `GET /v1/graphs`) with a certificate of a private CA is reached with `--ca-cert`, and
/// refused without it as a network error naming the URL.
/// A private CA (`ca.pem`) and a certificate it signed for localhost and 127.0.0.1
/// (`leaf.pem`, `leaf.key`), made in `d`.
fn private_ca(d: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        d,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=oris-test-ca",
            ],
        ]
        .concat(),
    );
    openssl(
        d,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "leaf.key",
                "-out",
                "leaf.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        d.join("ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    );
}

/// `openssl s_server` on a free port of localhost with `leaf.pem`: TLS only, printing what
/// it receives to `dir/received` (and answering nothing), for a client's handshake.
fn tls_listener(d: &Path) -> (std::process::Child, u16) {
    let port = closed_port();
    let server = Command::new("openssl")
        .args(["s_server", "-accept", &port.to_string(), "-ign_eof"])
        .args(["-cert", "leaf.pem", "-key", "leaf.key"])
        .current_dir(d)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(d.join("received")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, port)
}

/// Waits until `file` contains `text` (10 s at most); whether it did.
fn appears(file: &Path, text: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if String::from_utf8_lossy(&std::fs::read(file).unwrap_or_default()).contains(text) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `oris worker --ca-cert`: a real TLS handshake with a server whose certificate a private
/// CA signed — with the CA its first poll reaches the server; without it the poll fails
/// on the certificate (`UnknownIssuer`) and nothing is sent.
#[test]
fn worker_https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    private_ca(d);
    let (mut server, port) = tls_listener(d);
    let url = format!("https://localhost:{port}");
    let ca = d.join("ca.pem");
    let log = d.join("trusted.log");
    let mut trusted = client_command(&url, None, &["worker", "--ca-cert", ca.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let polled = appears(&d.join("received"), "POST /v1/workers/poll");
    let _ = trusted.kill();
    let _ = trusted.wait();
    let trusted_log = std::fs::read_to_string(&log).unwrap();

    let log = d.join("untrusted.log");
    let mut untrusted = client_command(&url, None, &["worker"])
        .env_remove("ORIS_CA_CERT")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let refused = appears(&log, "UnknownIssuer");
    let _ = untrusted.kill();
    let _ = untrusted.wait();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        polled,
        "the trusted worker's poll never reached the server:\n{trusted_log}"
    );
    assert!(!trusted_log.contains("UnknownIssuer"), "{trusted_log}");
    let untrusted_log = std::fs::read_to_string(&log).unwrap();
    assert!(refused, "{untrusted_log}");
    assert!(untrusted_log.contains("poll failed"), "{untrusted_log}");
    let received = std::fs::read_to_string(d.join("received")).unwrap_or_default();
    assert_eq!(
        received.matches("POST /v1/workers/poll").count(),
        1,
        "only the trusted worker's poll arrived:\n{received}"
    );
}

#[test]
fn https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    private_ca(d);
    std::fs::create_dir(d.join("v1")).unwrap();
    std::fs::write(
        d.join("v1/graphs"),
        r#"{"graphs":[{"name":"tls-graph","latest":"1","versions":["1"]}]}"#,
    )
    .unwrap();
    let port = closed_port();
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &port.to_string(),
            "-cert",
            "leaf.pem",
        ])
        .args(["-key", "leaf.key", "-WWW", "-quiet"])
        .current_dir(d)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("https://localhost:{port}");
    let ca = d.join("ca.pem");
    let trusted = run(
        &url,
        None,
        &["graphs", "list", "--ca-cert", ca.to_str().unwrap()],
    );
    let untrusted = run(&url, None, &["graphs", "list"]);
    let _ = server.kill();
    let _ = server.wait();
    code(&trusted, 0);
    assert_eq!(
        stdout(&trusted),
        "GRAPH      LATEST  VERSIONS\ntls-graph  1       1\n"
    );
    code(&untrusted, 7);
    let err = stderr(&untrusted);
    assert!(
        err.contains(&format!("cannot reach the server at {url}")),
        "{err}"
    );
    assert!(err.contains("UnknownIssuer"), "{err}");
}

/// `oris verify THREAD` without --db asks the server (`GET /v1/jobs/{thread}/verify`): a
/// consistent thread exits 0, an unknown one 3, and a thread whose stored checkpoint state
/// was replaced behind the engine's back (a snapshot committed through the store with a
/// state the log never had) prints the mismatch and exits 1 — as the local mode does.
#[tokio::test]
async fn verify_over_the_api() {
    use oris::id::{Seq, ThreadId, Timestamp};
    use oris::store::{Commit, Snapshot};

    let dir = tempfile::tempdir().unwrap();
    let oris = start(dir.path());
    oris.ready().await;
    let o = cli(
        &oris,
        &[
            "run",
            "expense-approval",
            "va-ok",
            "--input",
            r#"{"amount_cents": 5000}"#,
            "--wait",
        ],
    );
    code(&o, 0);
    let out = ok(&oris, &["verify", "va-ok"]);
    assert!(out.contains("result    consistent"), "{out}");
    assert!(out.contains("expense-approval v"), "{out}");
    let v = json(&oris, &["verify", "va-ok"]);
    assert_eq!(v["thread_id"], "va-ok", "{v}");
    assert_eq!(v["consistent"], true, "{v}");
    assert!(v["mismatch"].is_null(), "{v}");
    assert_eq!(v["replayed_hash"], v["current_hash"]);
    let o = cli(&oris, &["verify", "nope"]);
    code(&o, 3);
    assert!(stderr(&o).contains("thread_not_found"), "{}", stderr(&o));

    // A run paused at its interrupt (still the thread's active run), and a snapshot at its
    // latest checkpoint with a state the log never had.
    let o = cli(
        &oris,
        &[
            "run",
            "expense-approval",
            "va-bad",
            "--input",
            r#"{"amount_cents": 72500}"#,
        ],
    );
    code(&o, 0);
    oris.wait_status("va-bad", &["interrupted"], Duration::from_secs(20))
        .await;
    let (_, history) = oris.get("/v1/jobs/va-bad/history").await;
    let last = history["checkpoints"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let ckpt = last["checkpoint_id"].as_str().unwrap().to_owned();
    let at: u64 = ckpt["ckpt_".len()..].parse().unwrap();
    let (_, state) = oris
        .get(&format!("/v1/jobs/va-bad/checkpoints/{ckpt}"))
        .await;
    let mut values = state["values"].clone();
    assert_eq!(values["amount_cents"], 72500, "{values}");
    values["amount_cents"] = 1.into();
    let db = format!("sqlite://{}", dir.path().join("oris.db").display());
    let store = oris::open_store(&db).await.unwrap();
    let tid = ThreadId::new("va-bad").unwrap();
    let head = store.thread(&tid).await.unwrap().unwrap().head;
    let event = store.events(&tid, Seq(at - 1), 1).await.unwrap().remove(0);
    assert_eq!(event.seq, Seq(at));
    store
        .commit(Commit {
            thread_id: tid,
            expected_head: head,
            events: vec![],
            run: None,
            snapshot: Some(Snapshot {
                at_seq: Seq(at),
                run_id: event.run_id,
                next_superstep: last["superstep"].as_u64().unwrap() as u32,
                state: oris::event::Payload::encode(&values).unwrap(),
                boundary: event.body.boundary().cloned().unwrap(),
                created_at: Timestamp::now(),
            }),
            durability: Default::default(),
            fence: None,
        })
        .await
        .unwrap();
    drop(store);

    let o = cli(&oris, &["verify", "va-bad"]);
    code(&o, 1);
    let out = stdout(&o);
    assert!(
        out.contains(&format!(
            "MISMATCH: the stored state at checkpoint {ckpt} does not match the log"
        )),
        "{out}"
    );
    assert!(
        stderr(&o).contains("thread `va-bad` does not verify"),
        "{}",
        stderr(&o)
    );
    let o = cli(&oris, &["verify", "va-bad", "-o", "json"]);
    code(&o, 1);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["consistent"], false, "{v}");
    assert_ne!(v["replayed_hash"], v["current_hash"], "{v}");
    // The local mode reads the same store and agrees.
    let o = cli(&oris, &["verify", "va-bad", "--db", &db]);
    code(&o, 1);
    assert!(stdout(&o).contains("MISMATCH: "), "{}", stdout(&o));
}
