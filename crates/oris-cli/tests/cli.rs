//! The operator CLI as a process against a real `oris serve` on a temp SQLite file: every
//! client subcommand, its table (golden, ids and times masked) and JSON output, and the
//! exit codes of the error paths.

mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    TOKEN, cli, client_command, code, json, ndjson, ok, start_with_token as start, stderr, stdout,
};

/// Ids and times replaced by fixed-width placeholders, so tables keep their alignment.
fn mask(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &s[i..];
        let hex_run = |prefix: &str| {
            rest.starts_with(prefix)
                && rest.len() >= prefix.len() + 32
                && rest.as_bytes()[prefix.len()..prefix.len() + 32]
                    .iter()
                    .all(u8::is_ascii_hexdigit)
        };
        if let Some(p) = ["run_", "int_"].into_iter().find(|p| hex_run(p)) {
            out.push_str(p);
            out.push_str(&"x".repeat(32));
            i += p.len() + 32;
            continue;
        }
        // 2026-11-26T20:01:01.391Z
        if rest.len() >= 24
            && rest.as_bytes()[4] == b'-'
            && rest.as_bytes()[10] == b'T'
            && rest.as_bytes()[23] == b'Z'
            && rest.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        {
            out.push_str("YYYY-MM-DDThh:mm:ss.sssZ");
            i += 24;
            continue;
        }
        let ch = rest.chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Graphs, runs (`--wait` to an interrupt and to the end), inspect, interrupts, resume,
/// list, history, timeline, replay, fork, cancel, the DLQ — tables and JSON — and the exit
/// codes of not found, conflict and invalid input.
#[tokio::test]
async fn jobs_from_start_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let oris = start(dir.path());
    oris.ready().await;

    assert_eq!(
        ok(&oris, &["graphs", "list"]),
        "\
GRAPH             LATEST  VERSIONS
batch             1       1
expense-approval  1       1
flaky             1       1
reminder          1       1
research          1       1
"
    );
    let graphs = ndjson(&oris, &["graphs", "list"]);
    assert_eq!(graphs.len(), 5, "{graphs:?}");
    let mermaid = ok(&oris, &["graphs", "show", "expense-approval", "--mermaid"]);
    assert!(
        mermaid.starts_with("flowchart") || mermaid.starts_with("graph"),
        "{mermaid}"
    );
    assert!(mermaid.contains("escalate"), "{mermaid}");
    let show = ok(&oris, &["graphs", "show", "expense-approval"]);
    assert!(show.starts_with("graph     "), "{show}");
    assert!(show.contains(mermaid.trim_end()), "{show}");

    // --wait to the interrupt: progress on stderr, the job on stdout.
    let o = cli(
        &oris,
        &[
            "run",
            "expense-approval",
            "exp-1",
            "--input",
            r#"{"amount_cents": 72500}"#,
            "--metadata",
            "team=payments",
            "--wait",
        ],
    );
    code(&o, 0);
    let progress = stderr(&o);
    for line in [
        "run started",
        "superstep 0",
        "  node validate completed",
        "superstep 1",
        "  node score completed",
        "superstep 2",
        "  node escalate step notify_manager",
        "run interrupted",
    ] {
        assert!(
            progress.lines().any(|l| l == line),
            "{line:?} in\n{progress}"
        );
    }
    assert_eq!(
        mask(&stdout(&o)),
        r#"thread      exp-1
run         run_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx
graph       expense-approval@1
status      interrupted
priority    0
detail      {"interrupts":["int_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]}
metadata    {"team":"payments"}
created     YYYY-MM-DDThh:mm:ss.sssZ
updated     YYYY-MM-DDThh:mm:ss.sssZ
next        escalate
checkpoint  ckpt_3

interrupts:
INTERRUPT                             NODE      PAYLOAD
int_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx  escalate  {"amount_cents":72500,"question":"approve this expense?","ticket":"ticket-72500"}

state:
{
  "amount_cents": 72500,
  "decision": "",
  "log": [
    "validated 72500 cents",
    "risk 72"
  ],
  "risk": 72
}
"#
    );
    let job = json(&oris, &["inspect", "exp-1"]);
    assert_eq!(job["status"], "interrupted");
    assert_eq!(job["next"], serde_json::json!(["escalate"]));
    let interrupt = job["interrupts"][0]["interrupt_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let pending = ndjson(&oris, &["interrupts", "list"]);
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["interrupt_id"], interrupt.as_str());
    assert_eq!(
        mask(&ok(&oris, &["interrupts", "list"])),
        "\
INTERRUPT                             THREAD  NODE      STATUS   PAYLOAD                                                                            RAISED
int_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx  exp-1   escalate  pending  {\"amount_cents\":72500,\"question\":\"approve this expense?\",\"ticket\":\"ticket-72500\"}  YYYY-MM-DDThh:mm:ss.sssZ
"
    );
    let shown = json(&oris, &["interrupts", "show", &interrupt]);
    assert_eq!(shown["status"], "pending");
    // A value that is not JSON is a usage error, sent nowhere.
    let o = cli(&oris, &["resume", &interrupt, "--value", "approved"]);
    code(&o, 2);
    assert!(stderr(&o).contains("not JSON"), "{}", stderr(&o));
    // Resume by interrupt id; the same value again is accepted, another one conflicts.
    let answered = json(&oris, &["resume", &interrupt, "--value", r#""approved""#]);
    assert_eq!(answered["interrupt_id"], interrupt.as_str());
    let done = oris
        .wait_status("exp-1", &["completed"], Duration::from_secs(20))
        .await;
    assert_eq!(done["status"], "completed");
    let o = cli(
        &oris,
        &["interrupts", "resume", &interrupt, "--value", r#""denied""#],
    );
    code(&o, 4);
    let err = stderr(&o);
    assert!(err.contains("(HTTP 409)"), "{err}");
    assert!(err.contains("request id: "), "{err}");

    // --wait to the end, input from a file; then a failing run (amount 0), from stdin.
    let input = dir.path().join("small.json");
    std::fs::write(&input, r#"{"amount_cents": 10000}"#).unwrap();
    let job = json(
        &oris,
        &[
            "run",
            "expense-approval",
            "exp-2",
            "--input",
            &format!("@{}", input.display()),
            "--priority",
            "3",
            "--wait",
        ],
    );
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["priority"], 3);
    assert_eq!(job["values"]["decision"], "approved");
    let mut c = client_command(
        &oris.base,
        Some(TOKEN),
        &[
            "run",
            "expense-approval",
            "exp-3",
            "--input",
            "-",
            "--wait",
            "-o",
            "json",
        ],
    );
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), br#"{"amount_cents": 0}"#).unwrap();
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    code(&o, 1);
    let failed: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(failed["status"], "failed");
    assert!(
        stderr(&o).contains("amount must be positive"),
        "{}",
        stderr(&o)
    );

    // Lists: table (golden) and NDJSON; filters; pagination.
    assert_eq!(
        mask(&ok(&oris, &["list"])),
        "\
THREAD  RUN                                   GRAPH               STATUS     PRIORITY  UPDATED
exp-1   run_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx  expense-approval@1  completed  0         YYYY-MM-DDThh:mm:ss.sssZ
exp-2   run_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx  expense-approval@1  completed  3         YYYY-MM-DDThh:mm:ss.sssZ
exp-3   run_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx  expense-approval@1  failed     0         YYYY-MM-DDThh:mm:ss.sssZ
"
    );
    let failed = ndjson(&oris, &["list", "--status", "failed"]);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["thread_id"], "exp-3");
    let tagged = ndjson(&oris, &["list", "--metadata", "team=payments"]);
    assert_eq!(tagged.len(), 1);
    assert_eq!(tagged[0]["thread_id"], "exp-1");
    let o = cli(&oris, &["list", "--limit", "2", "-o", "json"]);
    code(&o, 0);
    assert_eq!(stdout(&o).lines().count(), 2);
    let more = stderr(&o);
    let cursor = more
        .trim()
        .strip_prefix("more: --cursor ")
        .unwrap_or_else(|| panic!("{more}"));
    let rest = ndjson(&oris, &["list", "--limit", "2", "--cursor", cursor]);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["thread_id"], "exp-3");
    let all = ndjson(&oris, &["list", "--limit", "1", "--all"]);
    assert_eq!(all.len(), 3);

    // History and timeline.
    assert_eq!(
        mask(&ok(&oris, &["history", "exp-2"])),
        "\
CHECKPOINT  RUN                                   SUPERSTEP  NEXT          AT
ckpt_1      run_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx  0          validate      YYYY-MM-DDThh:mm:ss.sssZ
ckpt_2      run_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx  1          score         YYYY-MM-DDThh:mm:ss.sssZ
ckpt_3      run_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx  2          auto_approve  YYYY-MM-DDThh:mm:ss.sssZ
ckpt_4      run_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx  3          -             YYYY-MM-DDThh:mm:ss.sssZ
"
    );
    let events = ndjson(&oris, &["timeline", "exp-2"]);
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "run_started",
            "node_completed",
            "node_completed",
            "node_completed",
            "run_completed"
        ]
    );
    let table = mask(&ok(&oris, &["timeline", "exp-2"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "{table}");
    assert!(lines[0].starts_with("SEQ  AT "), "{table}");
    assert!(
        lines[5].starts_with(
            "#5   YYYY-MM-DDThh:mm:ss.sssZ  run_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx  run_completed"
        ),
        "{table}"
    );
    let after = ndjson(&oris, &["timeline", "exp-2", "--after", "3"]);
    assert_eq!(after.len(), 2);

    // Replay, fork, cancel.
    let replayed = json(&oris, &["replay", "exp-2", "--checkpoint", "ckpt_2"]);
    assert_eq!(replayed["status"], "queued", "{replayed}");
    oris.wait_status("exp-2", &["completed"], Duration::from_secs(20))
        .await;
    let forked = json(
        &oris,
        &["fork", "exp-2", "--checkpoint", "ckpt_2", "--to", "exp-2b"],
    );
    assert_eq!(forked["thread_id"], "exp-2b");
    oris.wait_status("exp-2b", &["completed"], Duration::from_secs(20))
        .await;
    let o = cli(
        &oris,
        &["fork", "exp-2", "--checkpoint", "ckpt_2", "--to", "exp-2b"],
    );
    code(&o, 4);
    assert!(stderr(&o).contains("thread_exists"), "{}", stderr(&o));
    let o = cli(
        &oris,
        &["fork", "exp-2", "--checkpoint", "ckpt_99", "--to", "x"],
    );
    code(&o, 3);
    assert!(
        stderr(&o).contains("checkpoint_not_found"),
        "{}",
        stderr(&o)
    );

    ok(
        &oris,
        &[
            "run",
            "expense-approval",
            "exp-4",
            "--input",
            r#"{"amount_cents": 99000}"#,
            "--wait",
        ],
    );
    // Interrupts answered and rejected by id.
    for t in ["exp-5", "exp-6"] {
        ok(
            &oris,
            &[
                "run",
                "expense-approval",
                t,
                "--input",
                r#"{"amount_cents": 77000}"#,
                "--wait",
            ],
        );
    }
    let id_of = |t: &str| {
        let open = ndjson(&oris, &["interrupts", "list", "--thread", t]);
        assert_eq!(open.len(), 1, "{open:?}");
        open[0]["interrupt_id"].as_str().unwrap().to_owned()
    };
    let (five, six) = (id_of("exp-5"), id_of("exp-6"));
    let rejected = json(
        &oris,
        &["interrupts", "reject", &five, "--reason", "over budget"],
    );
    assert_eq!(rejected["thread_id"], "exp-5");
    assert_eq!(rejected["status"], "cancelled", "{rejected}");
    let answered = json(
        &oris,
        &["interrupts", "resume", &six, "--value", r#""approved""#],
    );
    assert_eq!(answered["interrupt_id"], six.as_str());
    let done = oris
        .wait_status("exp-6", &["completed"], Duration::from_secs(20))
        .await;
    assert_eq!(done["values"]["decision"], "approved", "{done}");
    let o = cli(&oris, &["interrupts", "reject", &five]);
    code(&o, 4);
    let o = cli(
        &oris,
        &["interrupts", "show", "int_00000000000000000000000000000000"],
    );
    code(&o, 3);

    let cancelled = json(&oris, &["cancel", "exp-4", "--reason", "withdrawn"]);
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["status_detail"]["reason"], "withdrawn");
    let o = cli(&oris, &["cancel", "exp-4"]);
    code(&o, 4);
    assert!(stderr(&o).contains("run_not_active"), "{}", stderr(&o));

    // Errors: not found (3), invalid input (8), each with code, message and request id.
    let o = cli(&oris, &["inspect", "nope"]);
    code(&o, 3);
    let err = stderr(&o);
    assert!(
        err.starts_with("error: thread_not_found (HTTP 404): "),
        "{err}"
    );
    assert!(err.contains("request id: "), "{err}");
    let o = cli(&oris, &["run", "nograph", "t"]);
    code(&o, 3);
    let o = cli(
        &oris,
        &[
            "run",
            "expense-approval",
            "bad",
            "--input",
            r#"{"amount_cents": "x"}"#,
        ],
    );
    code(&o, 8);
    assert!(stderr(&o).contains("invalid_input"), "{}", stderr(&o));

    // The DLQ: exp-3 failed for good.
    let entries = ndjson(&oris, &["dlq", "list"]);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["thread_id"], "exp-3");
    let run = entries[0]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(
        mask(&ok(&oris, &["dlq", "list"])),
        "\
RUN                                   THREAD  GRAPH               FAILED                    ERROR
run_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx  exp-3   expense-approval@1  YYYY-MM-DDThh:mm:ss.sssZ  amount must be positive
"
    );
    let entry = json(&oris, &["dlq", "show", &run]);
    assert!(!entry["chain"].as_array().unwrap().is_empty(), "{entry}");
    let shown = ok(&oris, &["dlq", "show", &run]);
    assert!(shown.contains("chain:"), "{shown}");
    let first = json(&oris, &["dlq", "replay", &run]);
    assert_eq!(first["replayed"], false, "{first}");
    let again = json(&oris, &["dlq", "replay", &run]);
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["job"]["run_id"], first["job"]["run_id"]);
}

/// `timeline --follow` prints events as they happen and ends with the run.
#[tokio::test]
async fn timeline_follow_streams_events_as_they_happen() {
    let dir = tempfile::tempdir().unwrap();
    let oris = start(dir.path());
    oris.ready().await;
    ok(
        &oris,
        &[
            "run",
            "expense-approval",
            "f-1",
            "--input",
            r#"{"amount_cents": 88000}"#,
            "--wait",
        ],
    );
    let mut child = client_command(
        &oris.base,
        Some(TOKEN),
        &["timeline", "f-1", "--follow", "-o", "json"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // The stored events first, up to the suspension.
    while seen.last().map(|e: &Value| e["kind"].clone()) != Some("run_suspended".into()) {
        let line = lines.next().expect("an event").unwrap();
        seen.push(serde_json::from_str(&line).unwrap());
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    // Still following: nothing ends it until the run continues.
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "follow ended early");
    let resumed = Instant::now();
    ok(&oris, &["resume", "f-1", "--value", r#""approved""#]);
    let mut rest = Vec::new();
    for line in lines {
        let e: Value = serde_json::from_str(&line.unwrap()).unwrap();
        rest.push(e["kind"].as_str().unwrap().to_owned());
    }
    assert!(resumed.elapsed() < Duration::from_secs(10));
    assert_eq!(
        rest,
        [
            "interrupt_resumed",
            "run_resumed",
            "node_completed",
            "run_completed"
        ]
        .map(String::from)
        .to_vec(),
        "after the resume"
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // Seqs continue without gaps.
    let all = ndjson(&oris, &["timeline", "f-1"]);
    assert_eq!(all.len(), seen.len() + rest.len());
    // Following a finished thread prints its events in fixed columns and ends.
    let table = mask(&ok(&oris, &["timeline", "f-1", "--follow"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), all.len(), "{table}");
    assert_eq!(
        lines[lines.len() - 1],
        "#10    YYYY-MM-DDThh:mm:ss.sssZ  run_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx  run_completed      -               -"
    );
}

/// Colours only on a terminal (a pseudo-terminal from `script`), never with `NO_COLOR`
/// and never when piped (every other test pipes and compares plain text).
#[tokio::test]
async fn colours_only_on_a_terminal_without_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let oris = start(dir.path());
    oris.ready().await;
    ok(
        &oris,
        &[
            "run",
            "expense-approval",
            "c-1",
            "--input",
            r#"{"amount_cents": 100}"#,
            "--wait",
        ],
    );
    let on_tty = |no_color: Option<&str>| {
        let mut c = Command::new("script");
        c.args([
            "-qec",
            &format!("{} list", env!("CARGO_BIN_EXE_oris")),
            "/dev/null",
        ])
        .env("ORIS_URL", &oris.base)
        .env("ORIS_TOKEN", TOKEN)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let o = c.output().expect("the script command (a pseudo-terminal)");
        code(&o, 0);
        stdout(&o)
    };
    let coloured = on_tty(None);
    assert!(coloured.contains("\x1b[1mTHREAD"), "{coloured:?}");
    assert!(coloured.contains("\x1b[38;5;10m completed"), "{coloured:?}");
    let plain = on_tty(Some("1"));
    assert!(!plain.contains('\x1b'), "{plain:?}");
    assert!(plain.starts_with("THREAD  RUN"), "{plain:?}");
    let piped = ok(&oris, &["list"]);
    assert!(!piped.contains('\x1b'), "{piped:?}");
}
