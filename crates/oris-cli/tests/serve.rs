//! `oris serve` as a process: the README quickstart over HTTP, the bootstrap token, the
//! `--no-auth` warning and clear start-up errors.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use support::{Oris, assert_nothing_repeated, of_kind, oris_command, token_file};

const LIMIT: Duration = Duration::from_secs(20);

/// Create an expense run → it interrupts at the manager's approval → resume it through the
/// interrupt → it completes; its history, timeline and interrupt read back.
#[tokio::test]
async fn quickstart_create_interrupt_resume_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let tf = token_file(dir.path());
    let oris = Oris::start(
        &dir.path().join("oris.db"),
        &["--admin-token-file", tf.to_str().unwrap()],
    );
    oris.ready().await;
    // The provisioned token is not printed; only generated ones are.
    assert_eq!(oris.stdout(), "");

    let (s, graphs) = oris.get("/v1/graphs").await;
    assert_eq!(s, StatusCode::OK, "{graphs}");
    let names: Vec<&str> = graphs["graphs"]
        .as_array()
        .unwrap_or_else(|| panic!("{graphs}"))
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    for g in ["expense-approval", "research", "flaky", "reminder", "batch"] {
        assert!(names.contains(&g), "{g} in {names:?}");
    }
    let (s, expense) = oris.get("/v1/graphs/expense-approval").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        expense["input_schema"]["properties"]["amount_cents"]["type"], "integer",
        "{expense}"
    );

    let job = oris
        .create(
            "expense-approval",
            "quick-1",
            json!({ "amount_cents": 72_500 }),
        )
        .await;
    assert_eq!(job["status"], "queued", "{job}");
    let job = oris.wait_status("quick-1", &["interrupted"], LIMIT).await;
    let [pending] = job["interrupts"].as_array().unwrap().as_slice() else {
        panic!("one interrupt expected: {job}");
    };
    assert_eq!(pending["node"], "escalate");
    assert_eq!(pending["payload"]["ticket"], "ticket-72500");
    let id = pending["interrupt_id"].as_str().unwrap();

    let (s, open) = oris.get("/v1/interrupts?status=pending").await;
    assert_eq!(s, StatusCode::OK, "{open}");
    assert!(
        open["interrupts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["interrupt_id"] == id),
        "{open}"
    );

    let (s, answered) = oris
        .post(
            &format!("/v1/interrupts/{id}/resume"),
            json!({ "value": "approved" }),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{answered}");
    let done = oris.wait_status("quick-1", &["completed"], LIMIT).await;
    assert_eq!(done["values"]["decision"], "approved", "{done}");
    assert_eq!(
        done["values"]["log"],
        json!([
            "validated 72500 cents",
            "risk 72",
            "manager answered `approved` on ticket-72500"
        ])
    );
    let (_, interrupt) = oris.get(&format!("/v1/interrupts/{id}")).await;
    assert_eq!(interrupt["status"], "applied", "{interrupt}");

    let (s, history) = oris.get("/v1/jobs/quick-1/history").await;
    assert_eq!(s, StatusCode::OK, "{history}");
    assert!(
        history["checkpoints"].as_array().unwrap().len() >= 3,
        "{history}"
    );
    let events = oris.timeline("quick-1").await;
    assert_nothing_repeated("quick-1", &events);
    let steps = of_kind(&events, "step_recorded");
    assert_eq!(steps.len(), 1, "notify_manager recorded once: {events:#?}");
    assert_eq!(steps[0]["data"]["name"], "notify_manager");
    assert_eq!(of_kind(&events, "interrupt_resumed").len(), 1);
    assert_eq!(of_kind(&events, "run_completed").len(), 1);

    // Auth is on: no token, no access.
    let r = oris
        .http
        .get(format!("{}/v1/jobs/quick-1", oris.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// The first start of an empty store prints an admin token on stdout, once; it works.
#[tokio::test]
async fn first_start_prints_a_working_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("oris.db");
    let mut oris = Oris::start(&db, &[]);
    oris.ready().await;
    let stdout = oris.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    let [token] = lines.as_slice() else {
        panic!("stdout must be the token alone: {stdout:?}");
    };
    assert!(token.starts_with("oris_"), "{token}");
    let stderr = oris.stderr();
    assert!(stderr.contains("shown only this once"), "{stderr}");
    assert!(!stderr.contains(token), "the token goes to stdout only");

    oris.token = None;
    assert_eq!(oris.get("/v1/jobs").await.0, StatusCode::UNAUTHORIZED);
    oris.token = Some((*token).to_owned());
    let (s, body) = oris.get("/v1/jobs").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let token = (*token).to_owned();
    oris.kill();

    // The next start has keys already: nothing printed, the token still works.
    let mut again = Oris::start(&db, &[]);
    again.ready().await;
    assert_eq!(again.stdout(), "");
    again.token = Some(token);
    assert_eq!(again.get("/v1/keys").await.0, StatusCode::OK);
}

#[tokio::test]
async fn no_auth_says_so_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let oris = Oris::start(&dir.path().join("oris.db"), &["--no-auth"]);
    oris.ready().await;
    let stderr = oris.stderr();
    assert!(
        stderr.contains("WARNING: AUTHENTICATION IS OFF"),
        "{stderr}"
    );
    assert_eq!(oris.stdout(), "", "no token without auth");
    let (s, body) = oris.get("/v1/jobs").await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

/// A store that cannot be opened stops the start with an error naming the URL — without
/// its password — and a non-zero status.
#[test]
fn bad_store_urls_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let under_file = format!("sqlite://{}/oris.db", file.display());
    for (db, needle) in [
        (
            "postgres://bob:hunter2@127.0.0.1:1/oris",
            "postgres://bob:***@127.0.0.1:1/oris",
        ),
        (
            "mysql://bob:hunter2@db.example/oris",
            "mysql://bob:***@db.example/oris",
        ),
        (under_file.as_str(), under_file.as_str()),
    ] {
        let out = oris_command()
            .args(["serve", "--addr", "127.0.0.1:0", "--db", db])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{db}: {stderr}");
        assert!(stderr.contains("error: "), "{db}: {stderr}");
        assert!(stderr.contains(needle), "{db}: {stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "{db}: password shown: {stderr}"
        );
        assert!(!stderr.contains("listening on"), "{db}: {stderr}");
        assert!(out.stdout.is_empty(), "{db}: no token for a failed start");
    }
    // A malformed provisioned token is refused before anything is created.
    let bad = dir.path().join("bad-token");
    std::fs::write(&bad, "not-a-token").unwrap();
    let out = oris_command()
        .args(["serve", "--addr", "127.0.0.1:0", "--db"])
        .arg(format!("sqlite://{}", dir.path().join("t.db").display()))
        .arg("--admin-token-file")
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("oris_<key_id>_<secret>"), "{stderr}");
}
