//! The operator commands: one subcommand per control-plane route (docs/api.md), run
//! against `--url` with `--token`.

use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::client::{Client, Failure, Result, seg};
use crate::output::{Format, Out, cell, note};
use crate::progress::Progress;

/// How to reach the server and how to print: every client command has these.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// The server's URL (http:// or https://).
    #[arg(
        long,
        env = "ORIS_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub url: String,
    /// An API key (`oris_<key_id>_<secret>`); none for a server with `--no-auth`.
    #[arg(long, env = "ORIS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM file of CA certificates to trust for https, besides the built-in roots
    /// (a private CA).
    #[arg(long, env = "ORIS_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// `table` (readable) or `json` (the API's JSON; NDJSON for lists and --follow).
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

impl Conn {
    fn open(&self) -> Result<(Client, Out)> {
        Ok((
            Client::new(&self.url, self.token.clone(), self.ca_cert.as_deref())?,
            Out::new(self.output),
        ))
    }
}

/// A JSON argument: inline, `@FILE` or `-` (stdin).
pub fn json_arg(what: &str, raw: &str) -> Result<Value> {
    let text = if raw == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::usage(format!("{what}: cannot read stdin: {e}")))?;
        s
    } else if let Some(path) = raw.strip_prefix('@') {
        std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("{what}: cannot read `{path}`: {e}")))?
    } else {
        raw.to_owned()
    };
    serde_json::from_str(&text).map_err(|e| {
        Failure::usage(format!(
            "{what} is not JSON ({e}); a string needs quotes: '\"approved\"'"
        ))
    })
}

fn key_values(what: &str, pairs: &[String]) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("{what} `{p}`: expected KEY=VALUE")))?;
        m.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    Ok(m)
}

fn put(q: &mut Vec<(String, String)>, k: &str, v: &Option<String>) {
    if let Some(v) = v {
        q.push((k.to_owned(), v.clone()));
    }
}

// ---------------------------------------------------------------------------------------
// run

/// `oris run`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  oris run expense-approval order-1 --input '{\"amount_cents\": 72500}' --wait
  oris run research q-7 --input @question.json --metadata team=payments
  echo '{\"steps\": 3}' | oris run batch b-1 --input - --idempotency-key b-1-create")]
pub struct RunArgs {
    /// The graph to run.
    pub graph: String,
    /// The thread (yours: 1–200 of `[A-Za-z0-9-_.:@+=]`).
    pub thread: String,
    /// The input (JSON of the graph's state): inline, `@FILE` or `-` for stdin.
    #[arg(long, short, default_value = "{}")]
    pub input: String,
    /// The graph version (default: the latest registered).
    #[arg(long, value_name = "VERSION")]
    pub graph_version: Option<String>,
    /// Makes a retried create a no-op (the first answer is returned).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Claim order (higher first).
    #[arg(long)]
    pub priority: Option<i32>,
    /// Metadata `KEY=VALUE` (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Fail the run after this long (`30s`, `5m`, `1h`).
    #[arg(long)]
    pub timeout: Option<String>,
    /// On a busy thread: `reject` (409) or `enqueue` (run after the current one).
    #[arg(long, value_name = "STRATEGY")]
    pub multitask: Option<String>,
    /// Follow the run until it completes, fails, is cancelled or waits for input, showing
    /// supersteps and nodes as they happen (on stderr).
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn run(a: RunArgs) -> Result<()> {
    let (c, out) = a.conn.open()?;
    let mut body = json!({
        "graph": a.graph,
        "thread_id": a.thread,
        "input": json_arg("--input", &a.input)?,
    });
    let metadata = key_values("--metadata", &a.metadata)?;
    if !metadata.is_empty() {
        body["metadata"] = Value::Object(metadata);
    }
    if let Some(v) = a.graph_version {
        body["version"] = v.into();
    }
    if let Some(p) = a.priority {
        body["priority"] = p.into();
    }
    if let Some(t) = a.timeout {
        body["timeout"] = t.into();
    }
    if let Some(m) = a.multitask {
        body["multitask_strategy"] = m.into();
    }
    let created = c
        .post("/v1/jobs", &body, a.idempotency_key.as_deref())
        .await?
        .body;
    if !a.wait {
        return print_job(&out, &created);
    }
    let run_id = created["run_id"].as_str().unwrap_or_default().to_owned();
    note(format!("oris: started {run_id} on {}", a.thread));
    // The run's events start at its first seq: a long thread's history is not replayed.
    let after = created["first_seq"]
        .as_u64()
        .map_or(0, |s| s.saturating_sub(1));
    let status = follow_run(&c, &a.thread, &run_id, after).await?;
    let job = c.get(&format!("/v1/jobs/{}", seg(&a.thread)), &[]).await?;
    print_job(&out, &job)?;
    match status.as_str() {
        "failed" | "cancelled" => Err(Failure::failed(format!(
            "run {run_id} {status}{}",
            job["status_detail"]["error"]["message"]
                .as_str()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ))),
        _ => Ok(()),
    }
}

/// Follows `run_id`'s events after seq `after` until it ends or suspends; returns its last
/// status.
async fn follow_run(c: &Client, thread: &str, run_id: &str, mut after: u64) -> Result<String> {
    let mut progress = Progress::new();
    loop {
        let mut stream = c.stream(thread, after).await?;
        while let Some(e) = stream.next().await? {
            after = e["seq"].as_u64().unwrap_or(after);
            if e["run_id"] != run_id {
                continue;
            }
            progress.event(&e);
            let end = match e["kind"].as_str().unwrap_or_default() {
                "run_completed" => Some("completed"),
                "run_failed" => Some("failed"),
                "run_cancelled" => Some("cancelled"),
                "run_suspended" => Some(
                    if e["data"]["interrupts"]
                        .as_array()
                        .is_some_and(|a| !a.is_empty())
                    {
                        "interrupted"
                    } else {
                        "waiting"
                    },
                ),
                _ => None,
            };
            if let Some(s) = end {
                progress.finish(s);
                return Ok(s.to_owned());
            }
        }
        // The stream ended without our run's end (a server shutting down, or the run was
        // superseded): ask the job, and reconnect while it is still going.
        let job = c.get(&format!("/v1/jobs/{}", seg(thread)), &[]).await?;
        let status = job["status"].as_str().unwrap_or_default().to_owned();
        if job["run_id"] != run_id
            || matches!(
                status.as_str(),
                "completed" | "failed" | "cancelled" | "interrupted"
            )
        {
            progress.finish(&status);
            return Ok(status);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn print_job(out: &Out, job: &Value) -> Result<()> {
    if out.json() {
        out.value(job);
        return Ok(());
    }
    let mut f = vec![
        ("thread", cell(&job["thread_id"])),
        ("run", cell(&job["run_id"])),
        (
            "graph",
            format!("{}@{}", cell(&job["graph"]), cell(&job["graph_version"])),
        ),
        ("status", cell(&job["status"])),
    ];
    if let Some(p) = job.get("position") {
        f.push(("position", cell(p)));
    }
    if let Some(p) = job.get("priority") {
        f.push(("priority", cell(p)));
    }
    if job["status_detail"].is_object() {
        f.push(("detail", job["status_detail"].to_string()));
    }
    if let Some(m) = job["metadata"].as_object().filter(|m| !m.is_empty()) {
        f.push(("metadata", Value::Object(m.clone()).to_string()));
    }
    f.push(("created", cell(&job["created_at"])));
    if job.get("updated_at").is_some() {
        f.push(("updated", cell(&job["updated_at"])));
    }
    if let Some(l) = job["lease"].as_object() {
        f.push((
            "lease",
            format!(
                "{} (epoch {}, expires {})",
                cell(&l["worker_id"]),
                cell(&l["epoch"]),
                cell(&l["expires_at"])
            ),
        ));
    }
    if let Some(w) = job["waiting_for"].as_str() {
        f.push(("waiting for", w.to_owned()));
    }
    if job.get("next").is_some() {
        f.push(("next", cell(&job["next"])));
    }
    if job.get("checkpoint_id").is_some() {
        f.push(("checkpoint", cell(&job["checkpoint_id"])));
    }
    if let Some(d) = job["dropped_pending"].as_array().filter(|d| !d.is_empty()) {
        f.push(("dropped", cell(&Value::Array(d.clone()))));
    }
    out.fields(&f);
    if let Some(ints) = job["interrupts"].as_array().filter(|a| !a.is_empty()) {
        println!("\ninterrupts:");
        out.table(
            &["INTERRUPT", "NODE", "PAYLOAD"],
            ints.iter()
                .map(|i| {
                    vec![
                        cell(&i["interrupt_id"]),
                        cell(&i["node"]),
                        i["payload"].to_string(),
                    ]
                })
                .collect(),
            None,
        );
    }
    if let Some(p) = job["pending"].as_array().filter(|a| !a.is_empty()) {
        println!("\npending runs:");
        out.table(
            &["RUN", "POSITION", "CREATED"],
            p.iter()
                .map(|r| {
                    vec![
                        cell(&r["run_id"]),
                        cell(&r["position"]),
                        cell(&r["created_at"]),
                    ]
                })
                .collect(),
            None,
        );
    }
    if job.get("values").is_some_and(|v| !v.is_null()) {
        println!(
            "\nstate:\n{}",
            serde_json::to_string_pretty(&job["values"]).unwrap_or_default()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// list

/// Filters of runs (`list`, bulk `cancel`).
#[derive(Debug, Clone, Args)]
pub struct JobFilter {
    /// Status (repeatable or comma-separated): queued, running, interrupted, waiting,
    /// completed, failed, cancelled.
    #[arg(long, value_delimiter = ',')]
    pub status: Vec<String>,
    /// The graph's name.
    #[arg(long)]
    pub graph: Option<String>,
    /// Metadata `KEY=VALUE` (repeatable; all must match).
    #[arg(long, value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Created at or after (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub created_after: Option<String>,
    /// Created before (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub created_before: Option<String>,
    /// Updated at or after (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub updated_after: Option<String>,
    /// Updated before (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub updated_before: Option<String>,
}

impl JobFilter {
    fn query(&self) -> Result<Vec<(String, String)>> {
        let mut q = Vec::new();
        if !self.status.is_empty() {
            q.push(("status".into(), self.status.join(",")));
        }
        put(&mut q, "graph", &self.graph);
        for (k, v) in key_values("--metadata", &self.metadata)? {
            q.push((
                format!("metadata.{k}"),
                v.as_str().unwrap_or_default().into(),
            ));
        }
        put(&mut q, "created_after", &self.created_after);
        put(&mut q, "created_before", &self.created_before);
        put(&mut q, "updated_after", &self.updated_after);
        put(&mut q, "updated_before", &self.updated_before);
        Ok(q)
    }

    fn is_empty(&self) -> bool {
        self.status.is_empty()
            && self.graph.is_none()
            && self.metadata.is_empty()
            && self.created_after.is_none()
            && self.created_before.is_none()
            && self.updated_after.is_none()
            && self.updated_before.is_none()
    }

    fn body(&self) -> Result<Value> {
        let mut f = Map::new();
        if !self.status.is_empty() {
            f.insert("status".into(), json!(self.status));
        }
        let opt = |f: &mut Map<String, Value>, k: &str, v: &Option<String>| {
            if let Some(v) = v {
                f.insert(k.into(), v.clone().into());
            }
        };
        opt(&mut f, "graph", &self.graph);
        let m = key_values("--metadata", &self.metadata)?;
        if !m.is_empty() {
            f.insert("metadata".into(), Value::Object(m));
        }
        opt(&mut f, "created_after", &self.created_after);
        opt(&mut f, "created_before", &self.created_before);
        opt(&mut f, "updated_after", &self.updated_after);
        opt(&mut f, "updated_before", &self.updated_before);
        Ok(Value::Object(f))
    }
}

/// Pagination of a list.
#[derive(Debug, Clone, Args)]
pub struct Page {
    /// Items per page (1–500).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Continue from a previous page's cursor.
    #[arg(long)]
    pub cursor: Option<String>,
    /// Follow every cursor to the end.
    #[arg(long)]
    pub all: bool,
}

impl Page {
    fn query(&self, q: &mut Vec<(String, String)>) {
        if let Some(l) = self.limit {
            q.push(("limit".into(), l.to_string()));
        }
        put(q, "cursor", &self.cursor);
    }
}

/// The table of a list: headers, the status column (coloured) and a row per item.
struct Columns {
    headers: &'static [&'static str],
    status_col: Option<usize>,
    row: fn(&Value) -> Vec<String>,
}

/// Prints a list page by page: NDJSON lines as they come, or one table at the end.
async fn list_cmd(
    c: &Client,
    out: &Out,
    (path, items): (&str, &str),
    mut query: Vec<(String, String)>,
    page: &Page,
    Columns {
        headers,
        status_col,
        row,
    }: Columns,
) -> Result<()> {
    page.query(&mut query);
    let mut rows = Vec::new();
    let json = out.json();
    let next = c
        .list(path, &query, items, page.all, |v| {
            if json {
                out.line(v);
            } else {
                rows.push(row(v));
            }
        })
        .await?;
    if !json {
        if rows.is_empty() {
            note("(none)");
        } else {
            out.table(headers, rows, status_col);
        }
    }
    if let Some(n) = next {
        note(format!("more: --cursor {n}"));
    }
    Ok(())
}

/// `oris list`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  oris list --status interrupted,waiting --graph expense-approval
  oris list --metadata team=payments --created-after 2026-05-01T00:00:00Z --all -o json")]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: JobFilter,
    /// Only this thread.
    #[arg(long)]
    pub thread: Option<String>,
    #[command(flatten)]
    pub page: Page,
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn list(a: ListArgs) -> Result<()> {
    let (c, out) = a.conn.open()?;
    let mut q = a.filter.query()?;
    put(&mut q, "thread_id", &a.thread);
    list_cmd(
        &c,
        &out,
        ("/v1/jobs", "jobs"),
        q,
        &a.page,
        Columns {
            headers: &["THREAD", "RUN", "GRAPH", "STATUS", "PRIORITY", "UPDATED"],
            status_col: Some(3),
            row: |j| {
                vec![
                    cell(&j["thread_id"]),
                    cell(&j["run_id"]),
                    format!("{}@{}", cell(&j["graph"]), cell(&j["graph_version"])),
                    cell(&j["status"]),
                    cell(&j["priority"]),
                    cell(&j["updated_at"]),
                ]
            },
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------
// inspect, history, timeline

/// A thread argument with the connection.
#[derive(Debug, Args)]
pub struct ThreadArgs {
    /// The thread.
    pub thread: String,
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn inspect(a: ThreadArgs) -> Result<()> {
    let (c, out) = a.conn.open()?;
    let job = c.get(&format!("/v1/jobs/{}", seg(&a.thread)), &[]).await?;
    print_job(&out, &job)
}

/// `oris verify THREAD` over the API (`GET /v1/jobs/{thread}/verify`); a mismatch is
/// printed and exits 1.
pub async fn verify(a: ThreadArgs) -> Result<()> {
    let (c, out) = a.conn.open()?;
    let v = c
        .get(&format!("/v1/jobs/{}/verify", seg(&a.thread)), &[])
        .await?;
    let consistent = v["consistent"] == true;
    let mismatch = v["mismatch"].as_str().unwrap_or("hashes differ").to_owned();
    if out.json() {
        out.value(&v);
    } else {
        out.fields(&[
            ("thread", cell(&v["thread_id"])),
            (
                "graph",
                format!("{} v{}", cell(&v["graph"]), cell(&v["graph_version"])),
            ),
            ("head", format!("#{}", cell(&v["head"]))),
            ("replayed", cell(&v["replayed_hash"])),
            ("current", cell(&v["current_hash"])),
            (
                "result",
                if consistent {
                    "consistent".to_owned()
                } else {
                    format!("MISMATCH: {mismatch}")
                },
            ),
        ]);
    }
    if consistent {
        Ok(())
    } else {
        Err(Failure::failed(format!(
            "thread `{}` does not verify: {mismatch}",
            a.thread
        )))
    }
}

pub async fn history(a: ThreadArgs) -> Result<()> {
    let (c, out) = a.conn.open()?;
    let h = c
        .get(&format!("/v1/jobs/{}/history", seg(&a.thread)), &[])
        .await?;
    let cps = h["checkpoints"].as_array().cloned().unwrap_or_default();
    if out.json() {
        for cp in &cps {
            out.line(cp);
        }
        return Ok(());
    }
    out.table(
        &["CHECKPOINT", "RUN", "SUPERSTEP", "NEXT", "AT"],
        cps.iter()
            .map(|cp| {
                vec![
                    cell(&cp["checkpoint_id"]),
                    cell(&cp["run_id"]),
                    cell(&cp["superstep"]),
                    cell(&cp["next"]),
                    cell(&cp["at"]),
                ]
            })
            .collect(),
        None,
    );
    Ok(())
}

/// `oris timeline`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  oris timeline order-1
  oris timeline order-1 --follow -o json | jq .kind
  oris timeline demo-expense --db sqlite://oris-data/oris.db   (read a local store)")]
pub struct TimelineArgs {
    /// The thread.
    pub thread: String,
    /// Only events after this seq.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Keep printing new events as they happen (until the thread's run ends).
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// One line of a timeline: `#SEQ AT KIND NODE SUPERSTEP.TASK DETAIL`.
fn event_row(e: &Value) -> Vec<String> {
    let d = &e["data"];
    let detail = match e["kind"].as_str().unwrap_or_default() {
        "run_started" => format!("input {}", d["input"]),
        "node_completed" => format!("update {}", d["update"]),
        "node_failed" => format!(
            "{}{}",
            cell(&d["error"]["message"]),
            if d["retry_at"].is_null() {
                ""
            } else {
                " (retry scheduled)"
            }
        ),
        "interrupt_raised" => format!("{} asks {}", cell(&d["interrupt_id"]), d["payload"]),
        "interrupt_resumed" => format!("{} answered {}", cell(&d["interrupt_id"]), d["value"]),
        "run_failed" => cell(&d["error"]["message"]),
        "run_cancelled" => cell(&d["reason"]),
        "step_recorded" => format!("step {}", cell(&d["name"])),
        "event_received" => format!("event {}", cell(&d["name"])),
        "run_suspended" => {
            let n = d["interrupts"].as_array().map_or(0, Vec::len);
            if n > 0 {
                format!("waiting on {n} interrupt(s)")
            } else {
                "waiting".to_owned()
            }
        }
        _ => String::new(),
    };
    vec![
        format!("#{}", cell(&e["seq"])),
        cell(&e["at"]),
        cell(&e["run_id"]),
        cell(&e["kind"]),
        cell(&e["node"]),
        match (e["superstep"].as_u64(), e["task"].as_u64()) {
            (Some(s), Some(t)) => format!("{s}.{t}"),
            (Some(s), None) => s.to_string(),
            _ => "-".to_owned(),
        },
        detail,
    ]
}

const EVENT_HEADERS: [&str; 7] = ["SEQ", "AT", "RUN", "KIND", "NODE", "STEP", "DETAIL"];

/// An event row while following: columns of fixed widths, since later rows are not known.
fn follow_line(e: &Value) -> String {
    const WIDTHS: [usize; 6] = [5, 24, 36, 17, 14, 5];
    let row = event_row(e);
    let mut line = String::new();
    for (i, c) in row.iter().enumerate() {
        match WIDTHS.get(i) {
            Some(&w) => line.push_str(&format!("{c:w$}  ")),
            None => line.push_str(c),
        }
    }
    line.trim_end().to_owned()
}

pub async fn timeline(a: TimelineArgs) -> Result<()> {
    let (c, out) = a.conn.open()?;
    let path = format!("/v1/jobs/{}/timeline", seg(&a.thread));
    let mut after = a.after;
    let mut rows = Vec::new();
    loop {
        let page = c
            .get(
                &path,
                &[
                    ("after".into(), after.to_string()),
                    ("limit".into(), "1000".into()),
                ],
            )
            .await?;
        for e in page["events"].as_array().into_iter().flatten() {
            after = e["seq"].as_u64().unwrap_or(after);
            if out.json() {
                out.line(e);
            } else if a.follow {
                println!("{}", follow_line(e));
            } else {
                rows.push(event_row(e));
            }
        }
        match page["next_after"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    if !a.follow {
        if !out.json() {
            out.table(&EVENT_HEADERS, rows, Some(3));
        }
        return Ok(());
    }
    let _ = std::io::stdout().flush();
    let mut stream = c.stream(&a.thread, after).await?;
    while let Some(e) = stream.next().await? {
        if out.json() {
            out.line(&e);
        } else {
            println!("{}", follow_line(&e));
            let _ = std::io::stdout().flush();
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// resume, replay, fork, cancel

/// `oris resume`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  oris resume order-1 --value '\"approved\"'
  oris resume int_0193a1b2c3 --value @answer.json
  oris resume order-1 --interrupt int_0193a1b2c3 --value '{\"ok\": true}'")]
pub struct ResumeArgs {
    /// The thread, or an interrupt id (`int_…`).
    pub target: String,
    /// The answer (JSON): inline, `@FILE` or `-` for stdin.
    #[arg(long)]
    pub value: String,
    /// Which interrupt of the thread (needed when several wait).
    #[arg(long)]
    pub interrupt: Option<String>,
    #[arg(long)]
    /// Makes a retried resume a no-op.
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn resume(a: ResumeArgs) -> Result<()> {
    let (c, out) = a.conn.open()?;
    let value = json_arg("--value", &a.value)?;
    let key = a.idempotency_key.as_deref();
    if a.target.starts_with("int_") && a.interrupt.is_none() {
        let i = c
            .post(
                &format!("/v1/interrupts/{}/resume", seg(&a.target)),
                &json!({ "value": value }),
                key,
            )
            .await?
            .body;
        return print_interrupt(&out, &i);
    }
    let mut body = json!({ "value": value });
    if let Some(i) = a.interrupt {
        body["interrupt_id"] = i.into();
    }
    let job = c
        .post(&format!("/v1/jobs/{}/resume", seg(&a.target)), &body, key)
        .await?
        .body;
    print_job(&out, &job)
}

/// `oris replay`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  oris replay order-1
  oris replay order-1 --checkpoint ckpt_12 --priority 5")]
pub struct ReplayArgs {
    /// The thread.
    pub thread: String,
    /// The checkpoint to replay from (default: the latest).
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// Claim order of the new run.
    #[arg(long)]
    pub priority: Option<i32>,
    /// Metadata `KEY=VALUE` of the new run (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn replay(a: ReplayArgs) -> Result<()> {
    let (c, out) = a.conn.open()?;
    let mut body = json!({});
    if let Some(cp) = a.checkpoint {
        body["checkpoint_id"] = cp.into();
    }
    if let Some(p) = a.priority {
        body["priority"] = p.into();
    }
    let m = key_values("--metadata", &a.metadata)?;
    if !m.is_empty() {
        body["metadata"] = Value::Object(m);
    }
    let job = c
        .post(&format!("/v1/jobs/{}/replay", seg(&a.thread)), &body, None)
        .await?
        .body;
    print_job(&out, &job)
}

/// `oris fork`.
#[derive(Debug, Args)]
#[command(after_help = "Example:
  oris fork order-1 --checkpoint ckpt_12 --to order-1-retry")]
pub struct ForkArgs {
    /// The source thread.
    pub thread: String,
    /// The checkpoint to start from.
    #[arg(long)]
    pub checkpoint: String,
    /// The new thread.
    #[arg(long, value_name = "NEW_THREAD")]
    pub to: String,
    /// Claim order of the new run.
    #[arg(long)]
    pub priority: Option<i32>,
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn fork(a: ForkArgs) -> Result<()> {
    let (c, out) = a.conn.open()?;
    let mut body = json!({ "checkpoint_id": a.checkpoint, "new_thread_id": a.to });
    if let Some(p) = a.priority {
        body["priority"] = p.into();
    }
    let job = c
        .post(&format!("/v1/jobs/{}/fork", seg(&a.thread)), &body, None)
        .await?
        .body;
    print_job(&out, &job)
}

/// `oris cancel`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  oris cancel order-1 --reason 'customer withdrew'
  oris cancel --status queued,waiting --graph expense-approval --metadata batch=7 --yes")]
pub struct CancelArgs {
    /// The thread whose unfinished run to cancel; leave out to cancel in bulk by filter.
    pub thread: Option<String>,
    /// Why (recorded in the run and the audit log).
    #[arg(long)]
    pub reason: Option<String>,
    /// Also drop the thread's pending runs (single cancel).
    #[arg(long)]
    pub include_pending: bool,
    #[command(flatten)]
    pub filter: JobFilter,
    /// Bulk: at most this many runs (1–1000, default 100).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Bulk: do not ask for confirmation.
    #[arg(long, short)]
    pub yes: bool,
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn cancel(a: CancelArgs) -> Result<()> {
    let (c, out) = a.conn.open()?;
    if let Some(thread) = &a.thread {
        if !a.filter.is_empty() || a.limit.is_some() {
            return Err(Failure::usage(
                "a thread and bulk filters cannot be combined: name a thread, or filter",
            ));
        }
        let mut body = json!({});
        if let Some(r) = &a.reason {
            body["reason"] = r.clone().into();
        }
        if a.include_pending {
            body["include_pending"] = true.into();
        }
        let job = c
            .post(&format!("/v1/jobs/{}/cancel", seg(thread)), &body, None)
            .await?
            .body;
        return print_job(&out, &job);
    }
    if a.filter.is_empty() {
        return Err(Failure::usage(
            "name a thread, or filter the runs to cancel in bulk (--status, --graph, \
             --metadata, --created-…/--updated-…)",
        ));
    }
    if !a.yes {
        let mut q = a.filter.query()?;
        q.push(("limit".into(), a.limit.unwrap_or(100).min(500).to_string()));
        let page = c.get("/v1/jobs", &q).await?;
        let n = page["jobs"]
            .as_array()
            .map_or(0, |j| j.iter().filter(|j| unfinished(j)).count());
        let more = if page["next_cursor"].is_null() {
            ""
        } else {
            " or more"
        };
        if !std::io::stdin().is_terminal() {
            return Err(Failure::usage(format!(
                "refusing to cancel {n}{more} runs without confirmation: stdin is not a \
                 terminal; pass --yes"
            )));
        }
        eprint!("cancel {n}{more} unfinished runs matching the filter? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err(Failure::usage("not confirmed; nothing cancelled"));
        }
    }
    let mut body = json!({ "filter": a.filter.body()? });
    if let Some(r) = a.reason {
        body["reason"] = r.into();
    }
    if let Some(l) = a.limit {
        body["limit"] = l.into();
    }
    let res = c.post("/v1/jobs/cancel", &body, None).await?.body;
    if out.json() {
        out.value(&res);
        return Ok(());
    }
    let cancelled = res["cancelled"].as_array().cloned().unwrap_or_default();
    let skipped = res["skipped"].as_array().cloned().unwrap_or_default();
    let mut rows: Vec<Vec<String>> = cancelled
        .iter()
        .map(|t| vec![cell(t), "cancelled".into()])
        .collect();
    rows.extend(skipped.iter().map(|s| {
        vec![
            cell(&s["thread_id"]),
            format!("skipped: {}", cell(&s["code"])),
        ]
    }));
    if !rows.is_empty() {
        out.table(&["THREAD", "RESULT"], rows, Some(1));
    }
    note(format!(
        "{} cancelled, {} skipped",
        cancelled.len(),
        skipped.len()
    ));
    Ok(())
}

fn unfinished(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("queued" | "running" | "interrupted" | "waiting")
    )
}

// ---------------------------------------------------------------------------------------
// interrupts

#[derive(Debug, Subcommand)]
pub enum InterruptsCmd {
    /// List interrupts.
    ///
    /// Example: `oris interrupts list --status pending --graph expense-approval`
    List {
        /// `pending` (waiting for a value), `open` (pending or answered, not applied) or
        /// `all`.
        #[arg(long)]
        status: Option<String>,
        /// The graph's name.
        #[arg(long)]
        graph: Option<String>,
        /// Only this thread.
        #[arg(long)]
        thread: Option<String>,
        #[command(flatten)]
        page: Page,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one interrupt.
    ///
    /// Example: `oris interrupts show int_0193a1b2c3`
    Show {
        /// The interrupt id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Answer an interrupt; its run continues.
    ///
    /// Example: `oris interrupts resume int_0193a1b2c3 --value '"approved"'`
    Resume {
        /// The interrupt id.
        id: String,
        /// The answer (JSON): inline, `@FILE` or `-` for stdin.
        #[arg(long)]
        value: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Reject an interrupt: its run is cancelled.
    ///
    /// Example: `oris interrupts reject int_0193a1b2c3 --reason 'over budget'`
    Reject {
        /// The interrupt id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

fn print_interrupt(out: &Out, i: &Value) -> Result<()> {
    if out.json() {
        out.value(i);
        return Ok(());
    }
    out.fields(&[
        ("interrupt", cell(&i["interrupt_id"])),
        ("thread", cell(&i["thread_id"])),
        ("run", cell(&i["run_id"])),
        ("node", cell(&i["node"])),
        ("status", cell(&i["status"])),
        ("payload", i["payload"].to_string()),
        ("raised", cell(&i["raised_at"])),
        ("answer", i["answer"].to_string()),
        ("answered", cell(&i["answered_at"])),
    ]);
    Ok(())
}

pub async fn interrupts(cmd: InterruptsCmd) -> Result<()> {
    match cmd {
        InterruptsCmd::List {
            status,
            graph,
            thread,
            page,
            conn,
        } => {
            let (c, out) = conn.open()?;
            let mut q = Vec::new();
            put(&mut q, "status", &status);
            put(&mut q, "graph", &graph);
            put(&mut q, "thread_id", &thread);
            list_cmd(
                &c,
                &out,
                ("/v1/interrupts", "interrupts"),
                q,
                &page,
                Columns {
                    headers: &["INTERRUPT", "THREAD", "NODE", "STATUS", "PAYLOAD", "RAISED"],
                    status_col: Some(3),
                    row: |i| {
                        vec![
                            cell(&i["interrupt_id"]),
                            cell(&i["thread_id"]),
                            cell(&i["node"]),
                            cell(&i["status"]),
                            i["payload"].to_string(),
                            cell(&i["raised_at"]),
                        ]
                    },
                },
            )
            .await
        }
        InterruptsCmd::Show { id, conn } => {
            let (c, out) = conn.open()?;
            let i = c.get(&format!("/v1/interrupts/{}", seg(&id)), &[]).await?;
            print_interrupt(&out, &i)
        }
        InterruptsCmd::Resume { id, value, conn } => {
            let (c, out) = conn.open()?;
            let value = json_arg("--value", &value)?;
            let i = c
                .post(
                    &format!("/v1/interrupts/{}/resume", seg(&id)),
                    &json!({ "value": value }),
                    None,
                )
                .await?
                .body;
            print_interrupt(&out, &i)
        }
        InterruptsCmd::Reject { id, reason, conn } => {
            let (c, out) = conn.open()?;
            let body = match reason {
                Some(r) => json!({ "reason": r }),
                None => json!({}),
            };
            let job = c
                .post(&format!("/v1/interrupts/{}/reject", seg(&id)), &body, None)
                .await?
                .body;
            print_job(&out, &job)
        }
    }
}

// ---------------------------------------------------------------------------------------
// dlq

#[derive(Debug, Subcommand)]
pub enum DlqCmd {
    /// List dead-letter entries (failed runs still last on their thread).
    ///
    /// Example: `oris dlq list --graph flaky`
    List {
        /// The graph's name.
        #[arg(long)]
        graph: Option<String>,
        #[command(flatten)]
        page: Page,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show an entry with its error chain.
    ///
    /// Example: `oris dlq show run_0193a1b2c3`
    Show {
        /// The failed run's id.
        run_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Queue the failed run again from its last checkpoint (once per entry).
    ///
    /// Example: `oris dlq replay run_0193a1b2c3`
    Replay {
        /// The failed run's id.
        run_id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub async fn dlq(cmd: DlqCmd) -> Result<()> {
    match cmd {
        DlqCmd::List { graph, page, conn } => {
            let (c, out) = conn.open()?;
            let mut q = Vec::new();
            put(&mut q, "graph", &graph);
            list_cmd(
                &c,
                &out,
                ("/v1/dlq", "entries"),
                q,
                &page,
                Columns {
                    headers: &["RUN", "THREAD", "GRAPH", "FAILED", "ERROR"],
                    status_col: None,
                    row: |e| {
                        vec![
                            cell(&e["run_id"]),
                            cell(&e["thread_id"]),
                            format!("{}@{}", cell(&e["graph"]), cell(&e["graph_version"])),
                            cell(&e["failed_at"]),
                            cell(&e["error"]["message"]),
                        ]
                    },
                },
            )
            .await
        }
        DlqCmd::Show { run_id, conn } => {
            let (c, out) = conn.open()?;
            let e = c.get(&format!("/v1/dlq/{}", seg(&run_id)), &[]).await?;
            if out.json() {
                out.value(&e);
                return Ok(());
            }
            out.fields(&[
                ("run", cell(&e["run_id"])),
                ("thread", cell(&e["thread_id"])),
                (
                    "graph",
                    format!("{}@{}", cell(&e["graph"]), cell(&e["graph_version"])),
                ),
                ("failed", cell(&e["failed_at"])),
                ("error", e["error"].to_string()),
            ]);
            if let Some(chain) = e["chain"].as_array() {
                println!("\nchain:");
                out.table(
                    &["SEQ", "KIND", "NODE", "ATTEMPT", "ERROR"],
                    chain
                        .iter()
                        .map(|ev| {
                            vec![
                                format!("#{}", cell(&ev["seq"])),
                                cell(&ev["kind"]),
                                cell(&ev["node"]),
                                cell(&ev["attempt"]),
                                cell(&ev["data"]["error"]["message"]),
                            ]
                        })
                        .collect(),
                    None,
                );
            }
            Ok(())
        }
        DlqCmd::Replay { run_id, conn } => {
            let (c, out) = conn.open()?;
            let r = c
                .post(
                    &format!("/v1/dlq/{}/replay", seg(&run_id)),
                    &json!({}),
                    None,
                )
                .await?
                .body;
            if out.json() {
                out.value(&r);
                return Ok(());
            }
            if r["replayed"].as_bool() == Some(true) {
                note("already replayed: the run it started");
            }
            print_job(&out, &r["job"])
        }
    }
}

// ---------------------------------------------------------------------------------------
// graphs, workers, audit, keys

#[derive(Debug, Subcommand)]
pub enum GraphsCmd {
    /// List registered graphs and their versions.
    ///
    /// Example: `oris graphs list`
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a graph: nodes, edges and its Mermaid diagram.
    ///
    /// Example: `oris graphs show expense-approval --mermaid > expense.mmd`
    Show {
        /// The graph's name.
        name: String,
        /// A version (default: the latest).
        #[arg(long, value_name = "VERSION")]
        graph_version: Option<String>,
        /// Print only the Mermaid diagram.
        #[arg(long)]
        mermaid: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

pub async fn graphs(cmd: GraphsCmd) -> Result<()> {
    match cmd {
        GraphsCmd::List { conn } => {
            let (c, out) = conn.open()?;
            let g = c.get("/v1/graphs", &[]).await?;
            let gs = g["graphs"].as_array().cloned().unwrap_or_default();
            if out.json() {
                for g in &gs {
                    out.line(g);
                }
                return Ok(());
            }
            out.table(
                &["GRAPH", "LATEST", "VERSIONS"],
                gs.iter()
                    .map(|g| vec![cell(&g["name"]), cell(&g["latest"]), cell(&g["versions"])])
                    .collect(),
                None,
            );
            Ok(())
        }
        GraphsCmd::Show {
            name,
            graph_version,
            mermaid,
            conn,
        } => {
            let (c, out) = conn.open()?;
            let mut q = Vec::new();
            put(&mut q, "version", &graph_version);
            let g = c.get(&format!("/v1/graphs/{}", seg(&name)), &q).await?;
            if out.json() {
                out.value(&g);
                return Ok(());
            }
            let diagram = g["mermaid"].as_str().unwrap_or_default();
            if mermaid {
                println!("{}", diagram.trim_end());
                return Ok(());
            }
            out.fields(&[
                ("graph", cell(&g["name"])),
                ("version", cell(&g["version"])),
                ("versions", cell(&g["versions"])),
                ("entry", cell(&g["entry"])),
                ("nodes", cell(&g["nodes"])),
                ("interrupt before", cell(&g["interrupt_before"])),
                ("interrupt after", cell(&g["interrupt_after"])),
                (
                    "input schema",
                    if g["input_schema"].is_null() {
                        "-".into()
                    } else {
                        "yes (-o json shows it)".into()
                    },
                ),
            ]);
            println!("\n{}", diagram.trim_end());
            Ok(())
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum WorkersCmd {
    /// List registered remote workers, their state and leases.
    ///
    /// Example: `oris workers list`
    List {
        #[command(flatten)]
        conn: Conn,
    },
}

pub async fn workers(cmd: WorkersCmd) -> Result<()> {
    let WorkersCmd::List { conn } = cmd;
    let (c, out) = conn.open()?;
    let w = c.get("/v1/workers", &[]).await?;
    let ws = w["workers"].as_array().cloned().unwrap_or_default();
    if out.json() {
        for w in &ws {
            out.line(w);
        }
        return Ok(());
    }
    if ws.is_empty() {
        note("(no remote workers)");
        return Ok(());
    }
    out.table(
        &[
            "WORKER",
            "STATE",
            "GRAPHS",
            "CAPACITY",
            "LEASES",
            "LAST SEEN",
        ],
        ws.iter()
            .map(|w| {
                vec![
                    cell(&w["worker_id"]),
                    cell(&w["state"]),
                    w["graphs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|g| format!("{}@{}", cell(&g["name"]), cell(&g["version"])))
                        .collect::<Vec<_>>()
                        .join(","),
                    cell(&w["capacity"]),
                    w["leases"].as_array().map_or(0, Vec::len).to_string(),
                    cell(&w["last_seen"]),
                ]
            })
            .collect(),
        Some(1),
    );
    Ok(())
}

/// `oris audit`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  oris audit --action jobs.cancel_bulk
  oris audit --actor k3y1d0000000 --all -o json")]
pub struct AuditArgs {
    /// Only this key id (or `anonymous`).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only this action (`jobs.create`, `keys.revoke`, …).
    #[arg(long)]
    pub action: Option<String>,
    #[command(flatten)]
    pub page: Page,
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn audit(a: AuditArgs) -> Result<()> {
    let (c, out) = a.conn.open()?;
    let mut q = Vec::new();
    put(&mut q, "actor", &a.actor);
    put(&mut q, "action", &a.action);
    list_cmd(
        &c,
        &out,
        ("/v1/audit", "entries"),
        q,
        &a.page,
        Columns {
            headers: &[
                "ID", "AT", "ACTOR", "ROLE", "ACTION", "TARGET", "STATUS", "OUTCOME",
            ],
            status_col: Some(7),
            row: |e| {
                vec![
                    cell(&e["id"]),
                    cell(&e["at"]),
                    cell(&e["actor"]),
                    cell(&e["role"]),
                    cell(&e["action"]),
                    cell(&e["target"]),
                    cell(&e["status"]),
                    cell(&e["outcome"]),
                ]
            },
        },
    )
    .await
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create an API key; its token is printed once, on stdout.
    ///
    /// Example: `oris keys create --name ci --role operator`
    Create {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// `admin`, `operator`, `viewer` or `worker`.
        #[arg(long)]
        role: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List keys (never their secrets).
    ///
    /// Example: `oris keys list`
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a key: it stops working at once.
    ///
    /// Example: `oris keys revoke k3y1d0000000`
    Revoke {
        /// The key id.
        key_id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

fn key_row(k: &Value) -> Vec<String> {
    vec![
        cell(&k["key_id"]),
        cell(&k["name"]),
        cell(&k["role"]),
        cell(&k["created_at"]),
        cell(&k["revoked_at"]),
    ]
}

const KEY_HEADERS: [&str; 5] = ["KEY", "NAME", "ROLE", "CREATED", "REVOKED"];

pub async fn keys(cmd: KeysCmd) -> Result<()> {
    match cmd {
        KeysCmd::Create { name, role, conn } => {
            let (c, out) = conn.open()?;
            let k = c
                .post("/v1/keys", &json!({ "name": name, "role": role }), None)
                .await?
                .body;
            if out.json() {
                out.value(&k);
            } else {
                note(format!(
                    "oris: key {} ({}) created; its token is shown once:",
                    cell(&k["key_id"]),
                    cell(&k["role"])
                ));
                println!("{}", cell(&k["token"]));
            }
            Ok(())
        }
        KeysCmd::List { conn } => {
            let (c, out) = conn.open()?;
            let k = c.get("/v1/keys", &[]).await?;
            let ks = k["keys"].as_array().cloned().unwrap_or_default();
            if out.json() {
                for k in &ks {
                    out.line(k);
                }
                return Ok(());
            }
            out.table(&KEY_HEADERS, ks.iter().map(key_row).collect(), None);
            Ok(())
        }
        KeysCmd::Revoke { key_id, conn } => {
            let (c, out) = conn.open()?;
            let k = c.delete(&format!("/v1/keys/{}", seg(&key_id))).await?;
            if out.json() {
                out.value(&k);
            } else {
                out.table(&KEY_HEADERS, vec![key_row(&k)], None);
            }
            Ok(())
        }
    }
}
