//! The SIGKILL crash test of the commit protocol.
//!
//! For each graph and each pause point of a table, in a fresh directory: start the
//! `oris-crash` target with the pause point, wait for its `PAUSED` line, SIGKILL it, read
//! from a copy of the SQLite files which node completions were durable, run the target in
//! `recover` mode, and check that
//!
//! 1. the final state is exactly the workload's expected final state (and its hash),
//! 2. replaying the log from scratch gives the same state (`verify`),
//! 3. every (superstep, task) of the run has exactly one `NodeCompleted`, the supersteps
//!    follow each other as their boundaries planned, and the run ends with `RunCompleted`,
//! 4. no completion that was durable before the kill was executed again,
//! 5. every completion that was not durable was executed after the kill, exactly once,
//! 6. a kill before the run's first commit leaves no run, recovery then has nothing to do,
//!    and a fresh start works.
//!
//! The events durable at a kill must also be an unchanged prefix of the final log. Some
//! cases kill the recovery as well (at its own pause point) before a last recovery; some
//! run with `batched` durability or frequent snapshots. A randomized case kills the loop
//! graph at a seeded random instant instead of a pause point (`ORIS_CRASH_SEED` replays a
//! seed, `ORIS_CRASH_ROUNDS` sets how many kills, default 10).
//!
//! A second part (see "recorded steps, interrupts and durable timers" below) kills runs of
//! graphs that record steps, interrupt, sleep durably and wait for external events — between
//! a step's body and its record, after an interrupt is recorded, after a resume value or an
//! event is stored but before the run continues, while sleeping — and checks that each
//! recorded call is in the log exactly once, resume values and events are applied exactly
//! once, and step bodies ran again only when a kill fell between their execution and their
//! record.
//!
//! A third part runs the same scenarios on PostgreSQL (a schema per case, dropped at its
//! end; `ORIS_TEST_PG_URL` must be set — the tests fail, never skip, without it), and a
//! last test runs two processes on one PostgreSQL schema, kills one and has the other
//! recover its runs (see `postgres_two_processes_share_one_database_and_recover_a_killed_one`).
//!
//! Each case prints `ok`/`FAIL` with its pause points on stderr (`--nocapture`); a failure
//! shows the steps taken, the marks file, every timeline read and the children's stderr.
#![cfg(unix)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, anyhow, bail, ensure};
use oris::event::{Event, EventBody, StepResult, Task};
use oris::store::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore, Store};
use oris::{Seq, ThreadId};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_oris-crash");
const THREAD: &str = "crash-thread";
/// How long a child may take to reach its pause point: generous so a loaded machine does
/// not fail the test, bounded so a child that never pauses fails it instead of hanging.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child may take to run to its end.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// The line the test appends to the marks file between the kill and the recovery.
const SEPARATOR: &str = "--- recover";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Graph {
    Linear,
    Fanout,
    Loop,
}

impl Graph {
    fn arg(self) -> &'static str {
        match self {
            Graph::Linear => "linear",
            Graph::Fanout => "fanout",
            Graph::Loop => "loop",
        }
    }

    /// The workload's final state, as JSON.
    fn expected_state(self) -> Value {
        match self {
            Graph::Linear => json!({
                "counter": 10,
                "log": (0..10).map(|i| format!("n{i}")).collect::<Vec<_>>(),
            }),
            // Updates of one superstep merge in task order, never arrival order, so the
            // results are in worker order however the workers finished.
            Graph::Fanout => json!({
                "counter": 9,
                "results": (0..8).map(|i| format!("w{i}")).collect::<Vec<_>>(),
            }),
            Graph::Loop => json!({
                "counter": 30,
                "log": (0..30).map(|i| format!("{i:04}{}", "x".repeat(60))).collect::<Vec<_>>(),
            }),
        }
    }

    /// Node completions of one run.
    fn completions(self) -> usize {
        match self {
            Graph::Linear | Graph::Fanout => 10,
            Graph::Loop => 30,
        }
    }
}

/// What must be durable when the child is killed at a pause point: a sanity check that
/// the point is where the table says it is.
#[derive(Debug, Clone, Copy)]
enum Durable {
    /// The run's first commit never happened: the thread does not exist.
    NoRun,
    /// The run exists with this many node completions.
    Completions(usize),
    /// Not determined by the point (e.g. parallel workers of a recovery).
    Any,
}

/// How the first process ends.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// It is not killed: the reference run.
    None,
    /// Killed at a pause point.
    Pause(&'static str, Durable),
    /// Killed this long after it was spawned.
    After(Duration),
}

// --- child processes --------------------------------------------------------------------

/// A child whose stdout lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn spawn(mut cmd: Command, stderr: &Path) -> anyhow::Result<Running> {
        let err = File::create(stderr).context("creating the child's stderr file")?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err));
        let mut child = cmd.spawn().with_context(|| format!("spawning {BIN}"))?;
        let out = child.stdout.take().expect("invariant: stdout is piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Running { child, lines })
    }

    /// SIGKILLs the child (`Child::kill` sends SIGKILL on Unix) and reaps it.
    fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        self.child.kill().context("killing the child")?;
        self.child.wait().context("reaping the child")
    }

    /// Waits for `PAUSED <point>` (the first line the child prints), then kills the child
    /// there.
    fn kill_at_pause(mut self, point: &str) -> anyhow::Result<()> {
        let want = format!("PAUSED {point}");
        match self.lines.recv_timeout(PAUSE_TIMEOUT) {
            Ok(line) if line == want => {}
            Ok(line) => {
                self.kill()?;
                bail!("expected `{want}`, the child printed `{line}`");
            }
            Err(RecvTimeoutError::Timeout) => {
                self.kill()?;
                bail!("the child did not reach pause point `{point}` within {PAUSE_TIMEOUT:?}");
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait()?;
                bail!("the child ended ({status}) without reaching pause point `{point}`");
            }
        }
        let status = self.kill()?;
        ensure!(
            status.signal() == Some(9),
            "the paused child ended with {status}, not by SIGKILL"
        );
        Ok(())
    }

    /// Waits for the child to end successfully; returns its last stdout line as JSON.
    fn finish(mut self) -> anyhow::Result<Value> {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let mut last = None;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => last = Some(line),
                Err(RecvTimeoutError::Timeout) => {
                    self.kill()?;
                    bail!("the child did not finish within {RUN_TIMEOUT:?}");
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let status = self.child.wait()?;
        ensure!(status.success(), "the child failed: {status}");
        let line = last.ok_or_else(|| anyhow!("the child printed nothing"))?;
        serde_json::from_str(&line).with_context(|| format!("the child's output `{line}`"))
    }
}

// --- what the store says ----------------------------------------------------------------

/// The thread as stored.
#[derive(Debug, Default)]
struct Log {
    exists: bool,
    events: Vec<Event>,
    run_status: Option<&'static str>,
    /// Seq of the latest snapshot.
    snapshot_at: Option<Seq>,
    /// Interrupts whose resume value is stored but not yet applied to the run (no
    /// `InterruptResumed` event yet).
    unapplied_answers: usize,
    /// Every external event delivered to the thread: id, and the seq of the
    /// `EventReceived` that consumed it.
    deliveries: Vec<(oris::DeliveryId, Option<Seq>)>,
}

fn read_log(db: &Where<'_>) -> anyhow::Result<Log> {
    read_thread_log(db, THREAD)
}

/// Opens the store at `db` (in a runtime of the caller's).
async fn open_store(db: &Where<'_>) -> anyhow::Result<Box<dyn Store>> {
    Ok(match db {
        Where::Sqlite(path) => Box::new(
            SqliteStore::open(path, SqliteOptions::default())
                .await
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        Where::Postgres(pg) => Box::new(
            PostgresStore::connect(
                &pg.base_url,
                PostgresOptions {
                    schema: Some(pg.schema.clone()),
                    pool_size: 2,
                    ..PostgresOptions::default()
                },
            )
            .await
            .with_context(|| format!("connecting to schema {}", pg.schema))?,
        ),
    })
}

fn read_thread_log(db: &Where<'_>, thread: &str) -> anyhow::Result<Log> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = open_store(db).await?;
        let thread = ThreadId::new(thread)?;
        let Some(t) = store.thread(&thread).await? else {
            return Ok(Log::default());
        };
        let mut events = Vec::new();
        let mut after = Seq::ZERO;
        loop {
            let page = store.events(&thread, after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            events.extend(page);
        }
        let run_status = match t.last_run {
            Some(r) => store.run(r).await?.map(|r| r.status.kind().as_str()),
            None => None,
        };
        let snapshot_at = store
            .snapshot(&thread, Seq(u64::MAX))
            .await?
            .map(|s| s.at_seq);
        let unapplied_answers = store
            .interrupts(&thread)
            .await?
            .iter()
            .filter(|i| i.answer.is_some() && i.applied_seq.is_none())
            .count();
        let deliveries = store
            .deliveries(&thread, false)
            .await?
            .into_iter()
            .map(|d| (d.delivery_id, d.consumed_seq))
            .collect();
        drop(store);
        Ok(Log {
            exists: true,
            events,
            run_status,
            snapshot_at,
            unapplied_answers,
            deliveries,
        })
    })
}

// --- backends ---------------------------------------------------------------------------

/// Which store a case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// A SQLite file in the case's directory.
    Sqlite,
    /// A schema of its own in the database at `ORIS_TEST_PG_URL`, dropped at the end.
    Postgres,
}

/// The database the PostgreSQL cases use. Panics — the test fails, it is never skipped —
/// when `ORIS_TEST_PG_URL` is not set.
fn pg_url() -> String {
    match std::env::var("ORIS_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "ORIS_TEST_PG_URL is not set: the PostgreSQL crash tests need a server. Run \
             ./scripts/test.sh (it starts a throwaway one), or set \
             ORIS_TEST_PG_URL=postgres://USER@HOST:PORT/DB"
        ),
    }
}

/// A fresh schema of the PostgreSQL database, dropped (with everything in it) when this
/// is. The children connect with an `application_name` naming the schema, so the test
/// can wait until the server has finished with a killed child's connections.
#[derive(Debug)]
struct PgSchema {
    /// `ORIS_TEST_PG_URL`.
    base_url: String,
    schema: String,
    /// The children's `application_name`.
    app: String,
}

impl PgSchema {
    fn new() -> PgSchema {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = format!(
            "crash_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        PgSchema {
            base_url: pg_url(),
            app: format!("oc_{schema}"),
            schema,
        }
    }

    /// The arguments naming the store for a child that connects as `application_name`
    /// `app`: the base URL with that name, and the schema.
    fn args_as(&self, app: &str) -> Vec<String> {
        let u = &self.base_url;
        let url = if u.starts_with("postgres://") || u.starts_with("postgresql://") {
            let sep = if u.contains('?') { '&' } else { '?' };
            format!("{u}{sep}application_name={app}")
        } else {
            format!("{u} application_name={app}")
        };
        vec![
            "--db".into(),
            url,
            "--pg-schema".into(),
            self.schema.clone(),
        ]
    }

    /// The arguments naming the store for a child.
    fn args(&self) -> Vec<String> {
        self.args_as(&self.app)
    }

    /// Runs `f` on a connection of its own (outside any store).
    fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(&tokio_postgres::Client) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&self.base_url, tokio_postgres::NoTls)
                .await
                .context("connecting to ORIS_TEST_PG_URL")?;
            let driver = tokio::spawn(conn);
            let r = f(&client).await;
            drop(client);
            let _ = driver.await;
            r
        })
    }

    /// Waits until no connection of a (killed) child is left on the server: whatever a
    /// killed child had sent is then committed or rolled back, so what is read next is
    /// exactly what its kill left durable.
    fn wait_children_gone(&self) -> anyhow::Result<()> {
        self.wait_gone(&self.app)
    }

    /// Waits until no connection named `app` is left on the server.
    fn wait_gone(&self, app: &str) -> anyhow::Result<()> {
        let app = app.to_owned();
        self.with_client(async move |c| {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let row = c
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                        &[&app],
                    )
                    .await?;
                let n: i64 = row.get(0);
                if n == 0 {
                    return Ok(());
                }
                ensure!(
                    Instant::now() < deadline,
                    "{n} connections of killed children are still open after 30 s"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let sql = format!(
            "SET lock_timeout = '20s'; DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        );
        let r = self.with_client(async move |c| Ok(c.batch_execute(&sql).await?));
        if let Err(e) = r
            && !thread::panicking()
        {
            panic!("dropping schema {}: {e:#}", self.schema);
        }
    }
}

/// A case's store.
#[derive(Debug)]
enum Db {
    /// The SQLite file.
    Sqlite(PathBuf),
    Postgres(PgSchema),
}

/// A store to read.
enum Where<'a> {
    Sqlite(&'a Path),
    Postgres(&'a PgSchema),
}

impl Db {
    fn new(backend: Backend, dir: &Path) -> Db {
        match backend {
            Backend::Sqlite => Db::Sqlite(dir.join("oris.db")),
            Backend::Postgres => Db::Postgres(PgSchema::new()),
        }
    }

    fn at(&self) -> Where<'_> {
        match self {
            Db::Sqlite(p) => Where::Sqlite(p),
            Db::Postgres(pg) => Where::Postgres(pg),
        }
    }

    /// The arguments naming the store for a child.
    fn args(&self) -> Vec<String> {
        match self {
            Db::Sqlite(p) => vec!["--db".into(), p.display().to_string()],
            Db::Postgres(pg) => pg.args(),
        }
    }

    /// The thread as stored now.
    fn read(&self) -> anyhow::Result<Log> {
        read_log(&self.at())
    }

    /// The thread as the kill of a child left it. SQLite: read from a copy (in `copy`) of
    /// the files, so the next child opens them exactly as the kill left them. PostgreSQL:
    /// once the server closed every connection of the killed child.
    fn read_at_kill(&self, copy: &Path) -> anyhow::Result<Log> {
        match self {
            Db::Sqlite(db) => {
                fs::create_dir_all(copy)?;
                for suffix in ["", "-wal"] {
                    let src = PathBuf::from(format!("{}{suffix}", db.display()));
                    if src.exists() {
                        fs::copy(&src, copy.join(format!("oris.db{suffix}")))?;
                    }
                }
                read_log(&Where::Sqlite(&copy.join("oris.db")))
            }
            Db::Postgres(pg) => {
                pg.wait_children_gone()?;
                read_log(&Where::Postgres(pg))
            }
        }
    }
}

/// One `NodeCompleted`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Completion {
    superstep: u32,
    task: u32,
    node: String,
    attempt: u32,
}

fn completions(events: &[Event]) -> Vec<Completion> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::NodeCompleted {
                superstep,
                task,
                node,
                attempt,
                ..
            } => Some(Completion {
                superstep: *superstep,
                task: *task,
                node: node.clone(),
                attempt: *attempt,
            }),
            _ => None,
        })
        .collect()
}

fn task_nodes(tasks: &[Task]) -> Vec<&str> {
    tasks.iter().map(Task::node).collect()
}

fn describe(e: &Event) -> String {
    let body = match &e.body {
        EventBody::RunStarted { boundary, .. } => {
            format!("RunStarted next={:?}", task_nodes(&boundary.next))
        }
        EventBody::NodeCompleted {
            superstep,
            task,
            node,
            attempt,
            boundary,
            ..
        } => {
            let mut s =
                format!("NodeCompleted superstep={superstep} task={task} {node} attempt={attempt}");
            if let Some(b) = boundary {
                let _ = write!(s, " boundary next={:?}", task_nodes(&b.next));
            }
            s
        }
        EventBody::StepRecorded {
            superstep,
            task,
            node,
            index,
            name,
            result,
        } => format!(
            "StepRecorded superstep={superstep} task={task} {node} #{index} `{name}` = {}",
            match result {
                StepResult::Ok(p) => p.json().to_owned(),
                StepResult::Err(f) => format!("error {f}"),
            }
        ),
        EventBody::InterruptRaised {
            superstep,
            task,
            node,
            index,
            interrupt_id,
            ..
        } => format!(
            "InterruptRaised superstep={superstep} task={task} {node} #{index} {interrupt_id}"
        ),
        EventBody::InterruptResumed {
            interrupt_id,
            value,
        } => format!("InterruptResumed {interrupt_id} = {}", value.json()),
        other => format!("{other:?}"),
    };
    format!("{:>4} {} {} {body}", e.seq, e.run_id, e.at.as_millis())
}

/// Invariant 3: one run, supersteps in order as planned, each task completed exactly once,
/// ending with `RunCompleted`.
fn check_timeline(graph: Graph, events: &[Event]) -> anyhow::Result<()> {
    for (i, e) in events.iter().enumerate() {
        ensure!(
            e.seq == Seq(i as u64 + 1),
            "seqs are not contiguous from 1 at position {i}: {}",
            e.seq
        );
    }
    let (first, rest) = events
        .split_first()
        .ok_or_else(|| anyhow!("the final timeline is empty"))?;
    let EventBody::RunStarted { boundary, .. } = &first.body else {
        bail!("the timeline does not open with RunStarted");
    };
    let run_id = first.run_id;
    ensure!(
        events.iter().all(|e| e.run_id == run_id),
        "events of more than one run"
    );
    let mut tasks = boundary.next.clone();
    let mut superstep = 0u32;
    let mut done = BTreeSet::new();
    let mut it = rest.iter().peekable();
    let mut total = 0;
    while !tasks.is_empty() {
        let Some(e) = it.next() else {
            bail!(
                "the log ends inside superstep {superstep}; completed tasks {done:?} of {:?}",
                task_nodes(&tasks)
            );
        };
        let EventBody::NodeCompleted {
            superstep: s,
            task,
            node,
            boundary,
            ..
        } = &e.body
        else {
            bail!(
                "seq {}: expected a NodeCompleted of superstep {superstep}",
                e.seq
            );
        };
        ensure!(
            *s == superstep,
            "seq {}: NodeCompleted of superstep {s} while superstep {superstep} is open (a superstep was skipped or reopened)",
            e.seq
        );
        let planned = tasks
            .get(*task as usize)
            .ok_or_else(|| anyhow!("seq {}: task {task} was not planned", e.seq))?;
        ensure!(
            planned.node() == node,
            "seq {}: task {task} is `{}`, the completion names `{node}`",
            e.seq,
            planned.node()
        );
        ensure!(
            done.insert(*task),
            "seq {}: superstep {superstep} task {task} ({node}) completed twice",
            e.seq
        );
        total += 1;
        let closes = done.len() == tasks.len();
        match (boundary, closes) {
            (Some(b), true) => {
                tasks = b.next.clone();
                superstep += 1;
                done.clear();
            }
            (None, false) => {}
            (Some(_), false) => bail!(
                "seq {}: a boundary with tasks {:?} of superstep {superstep} still open",
                e.seq,
                BTreeSet::from_iter(0..tasks.len() as u32)
                    .difference(&done)
                    .collect::<Vec<_>>()
            ),
            (None, true) => bail!(
                "seq {}: the last completion of superstep {superstep} carries no boundary",
                e.seq
            ),
        }
    }
    let tail: Vec<&Event> = it.collect();
    ensure!(
        matches!(tail.as_slice(), [e] if matches!(e.body, EventBody::RunCompleted)),
        "after the last boundary the log should hold exactly RunCompleted, it holds {:?}",
        tail.iter().map(|e| describe(e)).collect::<Vec<_>>()
    );
    ensure!(
        total == graph.completions(),
        "{total} node completions, the graph has {}",
        graph.completions()
    );
    Ok(())
}

// --- marks ------------------------------------------------------------------------------

/// One `exec` line (a node body ran to its end) or `enter` line (a node body started).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Exec {
    superstep: u32,
    task: u32,
    node: String,
    attempt: u32,
}

/// One `exec-step` line: the body of a recorded step ran and returned `token`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StepExec {
    superstep: u32,
    task: u32,
    node: String,
    step: String,
    token: String,
}

/// The marks one process left.
#[derive(Debug, Default)]
struct Segment {
    execs: Vec<Exec>,
    enters: Vec<Exec>,
    steps: Vec<StepExec>,
}

/// The marks of each process: before the first separator (the first process), then after
/// each separator (each later process).
fn read_segments(path: &Path) -> anyhow::Result<Vec<Segment>> {
    let text = fs::read_to_string(path).context("reading the marks file")?;
    let mut segments = vec![Segment::default()];
    for line in text.lines() {
        if line == SEPARATOR {
            segments.push(Segment::default());
            continue;
        }
        let (kind, rest) = line
            .split_once(' ')
            .ok_or_else(|| anyhow!("malformed marks line `{line}`"))?;
        let f: Vec<&str> = rest.split(' ').collect();
        let seg = segments
            .last_mut()
            .expect("invariant: at least one segment");
        match (kind, f.as_slice()) {
            ("commit", _) => {}
            ("exec" | "enter", [thread, superstep, task, node, attempt]) => {
                ensure!(*thread == THREAD, "marks line of another thread: `{line}`");
                let x = Exec {
                    superstep: superstep.parse()?,
                    task: task.parse()?,
                    node: (*node).to_owned(),
                    attempt: attempt.parse()?,
                };
                if kind == "exec" {
                    seg.execs.push(x);
                } else {
                    seg.enters.push(x);
                }
            }
            ("exec-step", [thread, superstep, task, node, _attempt, step, token]) => {
                ensure!(*thread == THREAD, "marks line of another thread: `{line}`");
                seg.steps.push(StepExec {
                    superstep: superstep.parse()?,
                    task: task.parse()?,
                    node: (*node).to_owned(),
                    step: (*step).to_owned(),
                    token: (*token).to_owned(),
                });
            }
            _ => bail!("unexpected marks line `{line}`"),
        }
    }
    Ok(segments)
}

/// The `exec` lines of each process.
fn read_marks(path: &Path) -> anyhow::Result<Vec<Vec<Exec>>> {
    Ok(read_segments(path)?.into_iter().map(|s| s.execs).collect())
}

// --- one case ---------------------------------------------------------------------------

/// One case in its own directory, with everything needed to explain a failure.
struct Scene {
    _dir: tempfile::TempDir,
    path: PathBuf,
    db: Db,
    graph: Graph,
    label: String,
    notes: Vec<String>,
    children: usize,
    /// What was durable at each kill (the reference run records one empty log).
    kills: Vec<Log>,
    /// The log at the end.
    after: Option<Log>,
}

impl Scene {
    fn new(backend: Backend, graph: Graph, label: String) -> anyhow::Result<Scene> {
        let dir = tempfile::tempdir()?;
        Ok(Scene {
            path: dir.path().to_owned(),
            db: Db::new(backend, dir.path()),
            _dir: dir,
            graph,
            label,
            notes: Vec::new(),
            children: 0,
            kills: Vec::new(),
            after: None,
        })
    }

    fn marks(&self) -> PathBuf {
        self.path.join("marks.txt")
    }

    fn spawn(&mut self, mode: &str, extra: &[String]) -> anyhow::Result<Running> {
        self.children += 1;
        let stderr = self
            .path
            .join(format!("child-{}-{mode}.stderr", self.children));
        let mut cmd = Command::new(BIN);
        cmd.args(self.db.args())
            .arg("--marks")
            .arg(self.marks())
            .args(["--graph", self.graph.arg(), "--thread", THREAD, mode])
            .args(extra);
        self.notes.push(format!("spawn {mode} {extra:?}"));
        Running::spawn(cmd, &stderr)
    }

    fn append_separator(&self) -> anyhow::Result<()> {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.marks())?;
        f.write_all(format!("{SEPARATOR}\n").as_bytes())?;
        Ok(())
    }

    /// Reads what the kill left durable (see [`Db::read_at_kill`]), and checks it against
    /// what the pause point promises.
    fn record_kill(
        &mut self,
        want: Option<(&str, Durable)>,
        extra: &[String],
    ) -> anyhow::Result<()> {
        let copy = self.path.join(format!("copy-{}", self.kills.len() + 1));
        let log = self.db.read_at_kill(&copy)?;
        let durable = completions(&log.events).len();
        let started = log
            .events
            .iter()
            .any(|e| matches!(e.body, EventBody::RunStarted { .. }));
        self.notes.push(format!(
            "durable at kill {}: thread exists {}, {} events, {durable} completions, snapshot at {:?}",
            self.kills.len() + 1,
            log.exists,
            log.events.len(),
            log.snapshot_at
        ));
        let snapshot_at = log.snapshot_at;
        let exists = log.exists;
        self.kills.push(log);
        // Make sure the snapshot path is exercised when the case asks for snapshots: in
        // the one-task-per-superstep graphs every completion closes a superstep.
        let every = extra
            .iter()
            .position(|a| a == "--snapshot-every")
            .and_then(|i| extra.get(i + 1)?.parse::<usize>().ok());
        if let Some(every) = every
            && self.graph != Graph::Fanout
            && durable >= every
        {
            ensure!(
                snapshot_at.is_some(),
                "{durable} supersteps closed with a snapshot every {every}, but no snapshot is stored"
            );
        }
        match want {
            None | Some((_, Durable::Any)) => {}
            Some((point, Durable::NoRun)) => ensure!(
                !started && !exists,
                "killed at `{point}`, before the run's first commit, the thread should not exist"
            ),
            Some((point, Durable::Completions(n))) => {
                ensure!(started, "killed at `{point}`, the run should exist");
                ensure!(
                    durable == n,
                    "killed at `{point}`, {n} completions should be durable, {durable} are"
                );
            }
        }
        Ok(())
    }

    fn diagnostics(&self, err: &anyhow::Error) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "=== {} FAILED: {err:#}", self.label);
        let _ = writeln!(s, "--- steps: {}", self.notes.join("; "));
        let _ = writeln!(s, "--- marks file:");
        match fs::read_to_string(self.marks()) {
            Ok(m) => s.push_str(&m),
            Err(e) => {
                let _ = writeln!(s, "(unreadable: {e})");
            }
        }
        let logs = self
            .kills
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("durable at kill {}", i + 1), Some(l)))
            .chain([("final".to_owned(), self.after.as_ref())]);
        for (name, log) in logs {
            let _ = writeln!(s, "--- timeline {name}:");
            match log {
                None => s.push_str("(not read)\n"),
                Some(l) if !l.exists => s.push_str("(no thread)\n"),
                Some(l) => {
                    for e in &l.events {
                        let _ = writeln!(s, "{}", describe(e));
                    }
                    let _ = writeln!(
                        s,
                        "run status: {:?}, latest snapshot at seq {:?}",
                        l.run_status, l.snapshot_at
                    );
                }
            }
        }
        if let Ok(dir) = fs::read_dir(&self.path) {
            let mut files: Vec<PathBuf> = dir
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "stderr"))
                .collect();
            files.sort();
            for f in files {
                let text = fs::read_to_string(&f).unwrap_or_default();
                if !text.is_empty() {
                    let _ = writeln!(s, "--- {}:\n{text}", f.display());
                }
            }
        }
        s
    }

    /// Runs the case and checks every invariant. `faults[0]` ends the first (`start`)
    /// process; each further fault — a pause point — ends one `recover` process; a last
    /// `recover` then runs to the end. `extra` (engine settings such as `--durability`)
    /// goes to every process.
    fn run(&mut self, faults: &[Fault], extra: &[String]) -> anyhow::Result<()> {
        let graph = self.graph;
        // 1. The first process, and how it ends.
        let mut output = None;
        match faults.first().copied().unwrap_or(Fault::None) {
            Fault::None => {
                // The reference: nothing is durable before the "crash", everything runs
                // after the separator.
                self.kills.push(Log::default());
                self.append_separator()?;
                output = Some(self.spawn("start", extra)?.finish()?);
            }
            Fault::Pause(point, want) => {
                let mut args = vec!["--pause-at".to_owned(), point.to_owned()];
                args.extend_from_slice(extra);
                self.spawn("start", &args)?.kill_at_pause(point)?;
                self.record_kill(Some((point, want)), extra)?;
            }
            Fault::After(delay) => {
                let mut child = self.spawn("start", extra)?;
                // Sleeping here is the fault injection itself — the kill instant — not a
                // wait for a condition.
                thread::sleep(delay);
                let status = child.kill()?;
                self.notes.push(format!("killed after {delay:?}: {status}"));
                self.record_kill(None, extra)?;
            }
        }

        // 2. Recoveries killed at their own pause points.
        for fault in faults.iter().skip(1) {
            let Fault::Pause(point, want) = *fault else {
                bail!("a recovery can only be killed at a pause point, not {fault:?}");
            };
            self.append_separator()?;
            let mut args = vec!["--pause-at".to_owned(), point.to_owned()];
            args.extend_from_slice(extra);
            self.spawn("recover", &args)?.kill_at_pause(point)?;
            self.record_kill(Some((point, want)), extra)?;
        }

        // 3. The last recovery (and a fresh start if the run never began).
        let last = self.kills.last().expect("invariant: one log per kill");
        let started = last
            .events
            .iter()
            .any(|e| matches!(e.body, EventBody::RunStarted { .. }));
        let ended = last.events.iter().any(|e| e.body.is_terminal());
        if output.is_none() {
            self.append_separator()?;
            let out = self.spawn("recover", extra)?.finish()?;
            self.notes.push(format!("recover printed {out}"));
            let report = &out["report"];
            ensure!(
                report["skipped"].as_array().is_some_and(Vec::is_empty),
                "recovery skipped runs: {}",
                report["skipped"]
            );
            let resumed = report["resumed"]
                .as_array()
                .ok_or_else(|| anyhow!("no resumed list in {out}"))?;
            if !started {
                // Invariant 6: nothing was committed, so there is nothing to recover, and
                // the thread is free for a fresh start.
                ensure!(
                    resumed.is_empty(),
                    "recovery resumed runs that never started: {resumed:?}"
                );
                ensure!(
                    out["exists"] == json!(false),
                    "after recovery the never-started thread exists: {out}"
                );
                let fresh = self.spawn("start", extra)?.finish()?;
                self.notes.push(format!("fresh start printed {fresh}"));
                output = Some(fresh);
            } else if ended {
                ensure!(
                    resumed.is_empty(),
                    "recovery resumed a run that had ended: {resumed:?}"
                );
                output = Some(out);
            } else {
                ensure!(
                    resumed.len() == 1 && resumed[0]["status"] == json!("completed"),
                    "recovery should have resumed the run to completion: {resumed:?}"
                );
                output = Some(out);
            }
        }
        let output = output.expect("invariant: set on every path");

        // 4. The final state, its hash and its verification (invariants 1 and 2).
        let expected = graph.expected_state();
        ensure!(
            output["state"] == expected,
            "final state {} != expected {expected}",
            output["state"]
        );
        ensure!(
            output["verify_consistent"] == json!(true),
            "verify: replaying the whole log does not give the current state: {output}"
        );
        let hash = oris::state::state_hash(&expected)?;
        ensure!(
            output["hash"] == json!(hash),
            "state hash {} != hash of the expected state {hash}",
            output["hash"]
        );
        ensure!(
            output["run_status"] == json!("completed"),
            "run status {}",
            output["run_status"]
        );

        // 5. The final log (invariant 3), and every durable event kept as it was.
        self.after = Some(self.db.read()?);
        let after = self.after.as_ref().expect("just set");
        ensure!(
            after.run_status == Some("completed"),
            "stored run status {:?}",
            after.run_status
        );
        check_timeline(graph, &after.events)?;
        let logs: Vec<&Log> = self.kills.iter().chain([after]).collect();
        for (i, pair) in logs.windows(2).enumerate() {
            let (a, b) = (&pair[0].events, &pair[1].events);
            ensure!(
                b.len() >= a.len() && b[..a.len()] == a[..],
                "the events durable at kill {} are not an unchanged prefix of the next log",
                i + 1
            );
        }

        // 6. Who ran in which process (invariants 4 and 5). Process j ran between
        // `durable[j]` and `durable[j + 1]`.
        let segments = read_marks(&self.marks())?;
        ensure!(
            segments.len() == logs.len(),
            "{} marks segments for {} processes",
            segments.len(),
            logs.len()
        );
        let durable: Vec<Vec<Completion>> = [Vec::new()]
            .into_iter()
            .chain(logs.iter().map(|l| completions(&l.events)))
            .collect();
        for (j, execs) in segments.iter().enumerate() {
            let known: BTreeSet<(u32, u32)> =
                durable[j].iter().map(|c| (c.superstep, c.task)).collect();
            let mut runs: BTreeMap<(u32, u32), usize> = BTreeMap::new();
            for x in execs {
                let k = (x.superstep, x.task);
                ensure!(
                    !known.contains(&k),
                    "process {}: {x:?} ran although its completion was durable before (a completed node re-executed)",
                    j + 1
                );
                *runs.entry(k).or_default() += 1;
            }
            if let Some(((s, t), n)) = runs.iter().find(|(_, n)| **n > 1) {
                bail!("process {}: superstep {s} task {t} ran {n} times", j + 1);
            }
            let new: Vec<&Completion> = durable[j + 1]
                .iter()
                .filter(|c| !known.contains(&(c.superstep, c.task)))
                .collect();
            for c in &new {
                ensure!(
                    execs
                        .iter()
                        .any(|x| (x.superstep, x.task, &x.node, x.attempt)
                            == (c.superstep, c.task, &c.node, c.attempt)),
                    "process {}: {c:?} became durable but has no exec mark in that process (lost or misattributed)",
                    j + 1
                );
            }
            if j + 1 == segments.len() {
                ensure!(
                    execs.len() == new.len(),
                    "the last process ran {} nodes for {} missing completions",
                    execs.len(),
                    new.len()
                );
            }
        }
        Ok(())
    }
}

fn run_cases(graph: Graph, extra: &[&str], cases: &[&[Fault]]) {
    run_cases_on(Backend::Sqlite, graph, extra, cases);
}

fn run_cases_on(backend: Backend, graph: Graph, extra: &[&str], cases: &[&[Fault]]) {
    let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    let mut failures = Vec::new();
    for faults in cases {
        let on = match backend {
            Backend::Sqlite => "",
            Backend::Postgres => "postgres: ",
        };
        let label = format!("{on}{} {extra:?} / {faults:?}", graph.arg());
        let mut scene = Scene::new(backend, graph, label.clone()).expect("temp dir");
        let started = Instant::now();
        match scene.run(faults, &extra) {
            Ok(()) => eprintln!("ok   {label} ({:?})", started.elapsed()),
            Err(e) => {
                eprintln!("FAIL {label}: {e:#}");
                failures.push(scene.diagnostics(&e));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} crash cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

use Durable::{Any, Completions as C, NoRun};
use Fault::Pause as P;

/// W1: 11 commits — RunStarted, then one per node (the last also completes the run).
const LINEAR: &[&[Fault]] = &[
    &[Fault::None],
    &[P("node:n0", C(0))],
    &[P("node:n5", C(5))],
    &[P("node:n9", C(9))],
    &[P("after-node:n0", C(0))],
    &[P("after-node:n5", C(5))],
    &[P("after-node:n9", C(9))],
    &[P("before-commit:1", NoRun)],
    &[P("before-commit:2", C(0))],
    &[P("before-commit:6", C(4))],
    &[P("before-commit:11", C(9))],
    &[P("after-commit:1", C(0))],
    &[P("after-commit:6", C(5))],
    &[P("after-commit:11", C(10))],
];

#[test]
fn linear_survives_kills_at_every_kind_of_point() {
    run_cases(Graph::Linear, &[], LINEAR);
}

/// `batched` writes every commit without fsync: documented to survive a process crash,
/// which is exactly what SIGKILL is.
#[test]
fn linear_survives_kills_with_batched_durability() {
    run_cases(Graph::Linear, &["--durability", "batched"], LINEAR);
}

#[test]
fn fanout_survives_kills_mid_fan_out() {
    // 11 commits: RunStarted, fan, w0 … w7 one by one (w7's closes the superstep), join.
    run_cases(
        Graph::Fanout,
        &[],
        &[
            &[Fault::None],
            &[P("node:fan", C(0))],
            &[P("after-node:fan", C(0))],
            &[P("node:w0", C(1))],
            &[P("node:w3", C(4))],
            &[P("after-node:w7", C(8))],
            &[P("node:join", C(9))],
            &[P("after-node:join", C(9))],
            &[P("fanout-after:0", C(1))],
            &[P("fanout-after:3", C(4))],
            &[P("fanout-after:7", C(8))],
            &[P("before-commit:1", NoRun)],
            &[P("after-commit:1", C(0))],
            &[P("after-commit:5", C(4))],
            &[P("before-commit:11", C(9))],
            &[P("after-commit:11", C(10))],
        ],
    );
}

#[test]
fn loop_survives_kills_mid_loop() {
    // 31 commits: RunStarted, then one per iteration.
    run_cases(
        Graph::Loop,
        &[],
        &[
            &[Fault::None],
            &[P("node:step@0", C(0))],
            &[P("node:step@15", C(15))],
            &[P("after-node:step@15", C(15))],
            &[P("node:step@29", C(29))],
            &[P("after-node:step@29", C(29))],
            &[P("before-commit:1", NoRun)],
            &[P("after-commit:1", C(0))],
            &[P("before-commit:17", C(15))],
            &[P("after-commit:16", C(15))],
            &[P("before-commit:31", C(29))],
            &[P("after-commit:31", C(30))],
        ],
    );
}

/// With a snapshot every 4 supersteps, commits 5, 9, 13, 17, … (of step@3, @7, @11,
/// @15, …) carry one: recovery then starts from a snapshot plus a tail of events (or no
/// tail), and `verify` compares that with a replay of the whole log.
#[test]
fn loop_survives_kills_around_snapshots() {
    run_cases(
        Graph::Loop,
        &["--snapshot-every", "4"],
        &[
            &[Fault::None],
            &[P("node:step@15", C(15))],
            &[P("after-node:step@15", C(15))],
            &[P("before-commit:17", C(15))],
            &[P("after-commit:16", C(15))],
            &[P("after-commit:17", C(16))],
            &[P("after-commit:18", C(17))],
            &[P("after-commit:31", C(30))],
        ],
    );
}

/// splitmix64: a seeded generator good enough to pick kill instants.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[test]
fn loop_survives_kills_at_random_instants() {
    let seed = std::env::var("ORIS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    eprintln!("random crash seed {seed} (replay with ORIS_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let rounds = std::env::var("ORIS_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10u32);
    // The window is 5–50 ms after spawn, cut to how long one clean run of the graph takes
    // here (spawn to exit), so that most kills land during the run rather than after it on
    // a fast disk. The machine's speed varies, so where kills land varies too; each round
    // prints what was durable at its kill.
    let mut reference = Scene::new(
        Backend::Sqlite,
        Graph::Loop,
        "loop / timing reference".to_owned(),
    )
    .expect("temp dir");
    let t0 = Instant::now();
    let timed = reference
        .spawn("start", &["--yields".to_owned(), "3".to_owned()])
        .and_then(Running::finish);
    if let Err(e) = timed {
        panic!("{}", reference.diagnostics(&e));
    }
    let window_ms = (t0.elapsed().as_millis() as u64).clamp(6, 50);
    eprintln!("kill window 5..={window_ms} ms after spawn");
    let mut failures = Vec::new();
    // Kills before the run's first commit, mid-run, after the run completed.
    let mut tally = [0u32; 3];
    for round in 0..rounds {
        let delay = Duration::from_millis(5 + rng.next() % (window_ms - 4));
        // Every other round snapshots every 3 supersteps, every third writes `batched`.
        let mut extra = vec!["--yields".to_owned(), "3".to_owned()];
        if round % 2 == 1 {
            extra.extend(["--snapshot-every".to_owned(), "3".to_owned()]);
        }
        if round % 3 == 2 {
            extra.extend(["--durability".to_owned(), "batched".to_owned()]);
        }
        let label =
            format!("loop {extra:?} / random round {round}, kill after {delay:?}, seed {seed}");
        let mut scene = Scene::new(Backend::Sqlite, Graph::Loop, label.clone()).expect("temp dir");
        match scene.run(&[Fault::After(delay)], &extra) {
            Ok(()) => {
                let at_kill = match scene.kills.first() {
                    Some(b) if b.exists => {
                        let ended = b.run_status == Some("completed");
                        tally[if ended { 2 } else { 1 }] += 1;
                        format!(
                            "{} completions durable, run {}",
                            completions(&b.events).len(),
                            b.run_status.unwrap_or("?")
                        )
                    }
                    _ => {
                        tally[0] += 1;
                        "no run yet".to_owned()
                    }
                };
                eprintln!("ok   {label}: at the kill {at_kill}");
            }
            Err(e) => {
                eprintln!("FAIL {label}: {e:#}");
                failures.push(scene.diagnostics(&e));
            }
        }
    }
    eprintln!(
        "random kills: {} before the run's first commit, {} mid-run, {} after it completed",
        tally[0], tally[1], tally[2]
    );
    assert!(
        failures.is_empty(),
        "{} of {rounds} random kills failed (seed {seed}; replay with ORIS_CRASH_SEED={seed}):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A recovery killed in turn: the second process resumes the run and is killed at its own
/// pause point (commits counted from 1 in each process), the third finishes it.
#[test]
fn runs_survive_kills_during_recovery() {
    // Killed twice right after n3 ran: n3 runs three times, is recorded once.
    run_cases(
        Graph::Linear,
        &[],
        &[
            &[P("after-node:n3", C(3)), P("after-node:n3", C(3))],
            &[P("node:n2", C(2)), P("after-commit:3", C(5))],
            &[P("after-commit:4", C(3)), P("before-commit:1", C(3))],
        ],
    );
    // The recovery runs the missing workers in parallel: how many it commits before its
    // first commit returns depends on the scheduler.
    run_cases(
        Graph::Fanout,
        &[],
        &[
            &[P("fanout-after:3", C(4)), P("after-commit:1", Any)],
            &[P("fanout-after:3", C(4)), P("node:w6", Any)],
            &[P("fanout-after:7", C(8)), P("after-node:w7", C(8))],
            &[P("node:join", C(9)), P("after-commit:1", C(10))],
        ],
    );
    run_cases(
        Graph::Loop,
        &["--snapshot-every", "4"],
        &[
            &[P("node:step@10", C(10)), P("after-commit:3", C(13))],
            &[P("after-commit:17", C(16)), P("node:step@20", C(20))],
            &[P("after-commit:18", C(17)), P("after-commit:1", C(18))],
        ],
    );
}

// --- recorded steps, interrupts and durable timers --------------------------------------
//
// The `approval` graph (`a → b → c`; `b` = `step("charge")`, `interrupt("approve?")`,
// `step("notify")`), the `sleeper` graph (`a → nap → c`; `nap` = `step("before-sleep")`,
// `ctx.sleep`, `step("after-sleep")`) and the `payment` graph (`a → pay → c`; `pay` =
// `step("invoice")`, `wait_for_event("paid")`, `step("receipt")`) are killed between a
// step's body and its record, after an interrupt is recorded, after a resume value or an
// event is stored but before the run continues, and while sleeping or waiting. Every process
// of a case runs to its end or is killed at a pause point whose durable events are checked
// exactly (see `summary`); after the last process:
//
// 1. the final state is exactly the expected one (its `steps` are the recorded results,
//    its `answer` the value applied or the event received), `verify` is consistent, the run
//    completed, no resume value is left unapplied, and the one delivery (however often it
//    was sent with its key) was consumed by the run's one `EventReceived`;
// 2. the timeline: one run, each node completed exactly once in order, every recorded call
//    of the middle node (StepRecorded, InterruptRaised, EventReceived) exactly once per
//    (superstep, task, index) with the expected call at each index, InterruptResumed
//    exactly once for the interrupt and with the expected value, suspends and resumes
//    alternating, a woken node (or a timed-out wait) no earlier than its recorded time;
// 3. the events durable at every kill are an unchanged prefix of every later log, and a
//    refused or repeated resume or send changes nothing;
// 4. marks: no node whose completion was durable ran again; every completion was executed
//    by the process that made it durable; a node ran to its end once, plus once per kill
//    between its end and its completion's commit; each node started exactly the number of
//    times the case states;
// 5. step bodies: a step whose record was durable never ran again; a body ran in a process
//    at most once, and again later only when that process was killed between the body and
//    its record being durable; the recorded result is the token of the execution in the
//    process that recorded it; the total number of executions is exactly the one the case
//    states.

/// The graphs with recorded calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Approval,
    Sleeper,
    Payment,
}

impl Flow {
    fn arg(self) -> &'static str {
        match self {
            Flow::Approval => "approval",
            Flow::Sleeper => "sleeper",
            Flow::Payment => "payment",
        }
    }

    /// The node of each superstep.
    fn nodes(self) -> [&'static str; 3] {
        match self {
            Flow::Approval => ["a", "b", "c"],
            Flow::Sleeper => ["a", "nap", "c"],
            Flow::Payment => ["a", "pay", "c"],
        }
    }

    /// The node with the recorded calls (superstep 1).
    fn middle(self) -> &'static str {
        self.nodes()[1]
    }

    /// The middle node's recorded calls, by index: `step NAME`, `interrupt` or
    /// `received NAME`.
    fn calls(self) -> &'static [&'static str] {
        match self {
            Flow::Approval => &["step charge", "interrupt", "step notify"],
            Flow::Sleeper => &["step before-sleep", "step oris.sleep", "step after-sleep"],
            Flow::Payment => &[
                "step invoice",
                "step oris.wait:paid",
                "received paid",
                "step receipt",
            ],
        }
    }

    /// The steps whose bodies leave `exec-step` marks, in call order.
    fn bodies(self) -> [&'static str; 2] {
        match self {
            Flow::Approval => ["charge", "notify"],
            Flow::Sleeper => ["before-sleep", "after-sleep"],
            Flow::Payment => ["invoice", "receipt"],
        }
    }
}

/// What a process does.
#[derive(Debug, Clone, Copy)]
enum Act {
    Start,
    Recover,
    /// Resume the interrupt (its id read from the log and passed explicitly) with a value.
    Resume(&'static str),
    /// Resume with a value, letting the target find the single pending interrupt.
    ResumePending(&'static str),
    /// Send the event `paid` with a payload and an optional idempotency key.
    Send(&'static str, Option<&'static str>),
}

/// One process of a case.
#[derive(Debug, Clone, Copy)]
enum Proc {
    /// Runs to its end; the run's status afterwards.
    Run(Act, &'static str),
    /// Killed at a pause point: (act, point, the events durable then as [`summary`] gives
    /// them, the run's stored status then).
    Kill(Act, &'static str, &'static str, &'static str),
    /// Runs to its end without changing the store (a refused or repeated resume, a repeated
    /// send): the resume's outcome or refusal, or for a send the run's status.
    Idle(Act, &'static str),
}

/// One scenario.
#[derive(Debug)]
struct FlowCase {
    name: &'static str,
    flow: Flow,
    /// The `sleeper` node's durable sleep.
    sleep_ms: u64,
    procs: &'static [Proc],
    /// Executions of each body step (`Flow::bodies`) over all processes.
    bodies: [usize; 2],
    /// Executions of each node (`Flow::nodes`) that started, over all processes.
    enters: [usize; 3],
    /// The value the interrupt must have been resumed with (`approval`), or the payload of
    /// the event received (`payment`).
    answer: &'static str,
    /// Whether a recovery must find the run waiting on its timer and reschedule it (checked
    /// when the recovery was spawned more than `RESCHEDULE_MARGIN` before the wake-up).
    must_reschedule: bool,
}

/// What `payment` records when its wait times out.
const TIMED_OUT: &str = "timed out";

/// See [`FlowCase::must_reschedule`].
const RESCHEDULE_MARGIN_MS: i64 = 1000;

/// The durable log in short: one word per event (`start`, a node name for its completion, a
/// step name for its record, `raise`, `resumed`, `received`, `suspend`, `continue`, `end`),
/// then `+answered` when a resume value is stored but not applied yet and `+delivered` when
/// an event is stored but not consumed yet.
fn summary(log: &Log) -> String {
    let mut words: Vec<String> = log
        .events
        .iter()
        .map(|e| match &e.body {
            EventBody::RunStarted { .. } => "start".to_owned(),
            EventBody::NodeCompleted { node, .. } => node.clone(),
            EventBody::StepRecorded { name, .. } => name.clone(),
            EventBody::InterruptRaised { .. } => "raise".to_owned(),
            EventBody::InterruptResumed { .. } => "resumed".to_owned(),
            EventBody::EventReceived { .. } => "received".to_owned(),
            EventBody::RunSuspended { .. } => "suspend".to_owned(),
            EventBody::RunResumed => "continue".to_owned(),
            EventBody::RunCompleted => "end".to_owned(),
            other => format!("{other:?}"),
        })
        .collect();
    if log.unapplied_answers > 0 {
        words.push("+answered".to_owned());
    }
    if log
        .deliveries
        .iter()
        .any(|(_, consumed)| consumed.is_none())
    {
        words.push("+delivered".to_owned());
    }
    words.join(" ")
}

/// The string result of a recorded step.
fn step_value(result: &StepResult) -> anyhow::Result<String> {
    match result {
        StepResult::Ok(p) => Ok(p.decode()?),
        StepResult::Err(f) => bail!("the step failed: {f}"),
    }
}

/// The recorded result of step `name` of the run in `events`, if durable.
fn recorded_step(events: &[Event], name: &str) -> anyhow::Result<Option<String>> {
    let mut found = None;
    for e in events {
        if let EventBody::StepRecorded {
            name: n, result, ..
        } = &e.body
            && n == name
        {
            ensure!(found.is_none(), "step `{name}` is recorded twice");
            found = Some(step_value(result)?);
        }
    }
    Ok(found)
}

/// The time (ms) a step recorded — a sleep's wake-up, a wait's deadline — if durable.
fn recorded_ms(events: &[Event], step: &str) -> anyhow::Result<Option<i64>> {
    for e in events {
        if let EventBody::StepRecorded {
            name,
            result: StepResult::Ok(p),
            ..
        } = &e.body
            && name == step
        {
            return Ok(Some(p.decode::<i64>()?));
        }
    }
    Ok(None)
}

/// The wake-up time the sleep step recorded, if durable.
fn recorded_wake(events: &[Event]) -> anyhow::Result<Option<i64>> {
    recorded_ms(events, "oris.sleep")
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Invariant 2 for the graphs with recorded calls.
fn check_flow_timeline(flow: Flow, answer: &str, events: &[Event]) -> anyhow::Result<()> {
    for (i, e) in events.iter().enumerate() {
        ensure!(
            e.seq == Seq(i as u64 + 1),
            "seqs are not contiguous from 1 at position {i}: {}",
            e.seq
        );
    }
    let first = events
        .first()
        .ok_or_else(|| anyhow!("the final timeline is empty"))?;
    ensure!(
        matches!(first.body, EventBody::RunStarted { .. }),
        "the timeline does not open with RunStarted"
    );
    ensure!(
        events.iter().all(|e| e.run_id == first.run_id),
        "events of more than one run"
    );
    let nodes = flow.nodes();
    let mut superstep = 0u32;
    let mut calls: BTreeMap<u32, (Seq, String)> = BTreeMap::new();
    let mut raised: Option<oris::InterruptId> = None;
    let mut resumed = 0;
    let mut suspended = false;
    let mut ended = false;
    for e in &events[1..] {
        ensure!(!ended, "seq {}: an event after RunCompleted", e.seq);
        match &e.body {
            EventBody::NodeCompleted {
                superstep: s,
                task,
                node,
                boundary,
                ..
            } => {
                ensure!(
                    *s == superstep && *task == 0 && node == nodes[superstep as usize],
                    "seq {}: completion of superstep {s} task {task} `{node}`, expected superstep {superstep} task 0 `{}` (a node completed twice or out of order)",
                    e.seq,
                    nodes[superstep as usize]
                );
                let next: Vec<&str> = boundary
                    .as_ref()
                    .map(|b| task_nodes(&b.next))
                    .ok_or_else(|| anyhow!("seq {}: a completion without boundary", e.seq))?;
                let want: Vec<&str> = nodes
                    .get(superstep as usize + 1)
                    .into_iter()
                    .copied()
                    .collect();
                ensure!(
                    next == want,
                    "seq {}: boundary plans {next:?}, expected {want:?}",
                    e.seq
                );
                ensure!(
                    !suspended,
                    "seq {}: a node completed while the run was suspended",
                    e.seq
                );
                superstep += 1;
            }
            EventBody::StepRecorded {
                superstep: s,
                task,
                node,
                index,
                name,
                ..
            } => {
                ensure!(
                    *s == 1 && *s == superstep && *task == 0 && node == flow.middle(),
                    "seq {}: step `{name}` recorded for superstep {s} task {task} `{node}` while superstep {superstep} is open",
                    e.seq
                );
                let call = format!("step {name}");
                if let Some((seq, prev)) = calls.insert(*index, (e.seq, call.clone())) {
                    bail!(
                        "seq {}: call #{index} ({call}) of superstep {s} task {task} recorded twice (first at seq {seq}: {prev})",
                        e.seq
                    );
                }
            }
            EventBody::InterruptRaised {
                superstep: s,
                task,
                node,
                index,
                interrupt_id,
                ..
            } => {
                ensure!(
                    *s == 1 && *s == superstep && *task == 0 && node == flow.middle(),
                    "seq {}: interrupt raised by superstep {s} task {task} `{node}` while superstep {superstep} is open",
                    e.seq
                );
                if let Some((seq, prev)) = calls.insert(*index, (e.seq, "interrupt".to_owned())) {
                    bail!(
                        "seq {}: call #{index} (interrupt) of superstep {s} task {task} recorded twice (first at seq {seq}: {prev})",
                        e.seq
                    );
                }
                ensure!(raised.is_none(), "seq {}: a second interrupt", e.seq);
                raised = Some(*interrupt_id);
            }
            EventBody::EventReceived {
                superstep: s,
                task,
                node,
                index,
                name,
                delivery,
                payload,
            } => {
                ensure!(
                    *s == 1 && *s == superstep && *task == 0 && node == flow.middle(),
                    "seq {}: event received by superstep {s} task {task} `{node}` while superstep {superstep} is open",
                    e.seq
                );
                let call = format!("received {name}");
                if let Some((seq, prev)) = calls.insert(*index, (e.seq, call.clone())) {
                    bail!(
                        "seq {}: call #{index} ({call}) of superstep {s} task {task} recorded twice (first at seq {seq}: {prev})",
                        e.seq
                    );
                }
                let v: String = match (delivery, payload) {
                    (Some(_), Some(p)) => p.decode()?,
                    (None, None) => {
                        // A timeout: not before the recorded deadline.
                        let deadline = recorded_ms(events, "oris.wait:paid")?
                            .ok_or_else(|| anyhow!("a timeout without a recorded deadline"))?;
                        ensure!(
                            e.at.as_millis() >= deadline,
                            "seq {}: the wait timed out at {} ms, before its deadline {deadline} ms",
                            e.seq,
                            e.at.as_millis()
                        );
                        TIMED_OUT.to_owned()
                    }
                    _ => bail!("seq {}: a delivery without payload or the reverse", e.seq),
                };
                ensure!(
                    v == answer,
                    "seq {}: received `{v}`, expected `{answer}`",
                    e.seq
                );
            }
            EventBody::InterruptResumed {
                interrupt_id,
                value,
            } => {
                ensure!(
                    raised == Some(*interrupt_id),
                    "seq {}: InterruptResumed for {interrupt_id}, raised {raised:?}",
                    e.seq
                );
                resumed += 1;
                ensure!(
                    resumed == 1,
                    "seq {}: interrupt {interrupt_id} resumed {resumed} times",
                    e.seq
                );
                let v: String = value.decode()?;
                ensure!(
                    v == answer,
                    "seq {}: resumed with `{v}`, expected `{answer}`",
                    e.seq
                );
            }
            EventBody::RunSuspended { .. } => {
                ensure!(!suspended, "seq {}: suspended twice in a row", e.seq);
                suspended = true;
            }
            EventBody::RunResumed => {
                ensure!(suspended, "seq {}: RunResumed without RunSuspended", e.seq);
                suspended = false;
            }
            EventBody::RunCompleted => {
                ensure!(
                    superstep == 3,
                    "seq {}: RunCompleted after {superstep} supersteps",
                    e.seq
                );
                ended = true;
            }
            _ => bail!("seq {}: unexpected event {}", e.seq, describe(e)),
        }
    }
    ensure!(ended, "the run did not complete");
    let got: Vec<&str> = calls.values().map(|(_, c)| c.as_str()).collect();
    ensure!(
        calls.keys().copied().eq(0..flow.calls().len() as u32) && got == flow.calls(),
        "the middle node's recorded calls by index are {calls:?}, expected {:?}",
        flow.calls()
    );
    if flow == Flow::Approval {
        ensure!(resumed == 1, "the interrupt was never resumed");
    } else if flow == Flow::Sleeper {
        // The woken node ran its later step and completed no earlier than the wake-up.
        let wake = recorded_wake(events)?.ok_or_else(|| anyhow!("no recorded sleep"))?;
        for e in events {
            let late = match &e.body {
                EventBody::StepRecorded { name, .. } => name == "after-sleep",
                EventBody::NodeCompleted { node, .. } => node == "nap",
                _ => false,
            };
            ensure!(
                !late || e.at.as_millis() >= wake,
                "seq {}: {} at {} ms, before the recorded wake-up {wake} ms",
                e.seq,
                describe(e),
                e.at.as_millis()
            );
        }
    }
    Ok(())
}

/// One case with recorded calls, in its own directory.
struct FlowScene {
    _dir: tempfile::TempDir,
    path: PathBuf,
    db: Db,
    case: &'static FlowCase,
    /// Engine settings passed to every process (`--durability`).
    extra: Vec<String>,
    notes: Vec<String>,
    children: usize,
    /// The store after each process (read from a copy after a kill).
    logs: Vec<Log>,
    /// Whether each process was killed.
    killed: Vec<bool>,
    /// Recoveries that found the run waiting and rescheduled it / found the timer due.
    rescheduled: usize,
    due: usize,
}

impl FlowScene {
    fn new(backend: Backend, case: &'static FlowCase, extra: &[&str]) -> anyhow::Result<FlowScene> {
        let dir = tempfile::tempdir()?;
        Ok(FlowScene {
            path: dir.path().to_owned(),
            db: Db::new(backend, dir.path()),
            _dir: dir,
            case,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            notes: Vec::new(),
            children: 0,
            logs: Vec::new(),
            killed: Vec::new(),
            rescheduled: 0,
            due: 0,
        })
    }

    fn marks(&self) -> PathBuf {
        self.path.join("marks.txt")
    }

    fn spawn(&mut self, act: Act, pause: Option<&str>) -> anyhow::Result<Running> {
        self.children += 1;
        let mut args: Vec<String> = vec![
            "--graph".into(),
            self.case.flow.arg().into(),
            "--thread".into(),
            THREAD.into(),
            "--sleep-ms".into(),
            self.case.sleep_ms.to_string(),
        ];
        args.extend(self.extra.iter().cloned());
        if let Some(p) = pause {
            args.extend(["--pause-at".into(), p.into()]);
        }
        let mode = match act {
            Act::Start => "start",
            Act::Recover => "recover",
            Act::Resume(value) | Act::ResumePending(value) => {
                args.extend(["--value".into(), value.into()]);
                if matches!(act, Act::Resume(_)) {
                    let id = self
                        .logs
                        .last()
                        .into_iter()
                        .flat_map(|l| &l.events)
                        .find_map(|e| match &e.body {
                            EventBody::InterruptRaised { interrupt_id, .. } => Some(*interrupt_id),
                            _ => None,
                        })
                        .ok_or_else(|| anyhow!("no interrupt to resume in the log"))?;
                    args.extend(["--interrupt".into(), id.to_string()]);
                }
                "resume"
            }
            Act::Send(value, key) => {
                args.extend(["--value".into(), value.into()]);
                if let Some(k) = key {
                    args.extend(["--key".into(), k.into()]);
                }
                "send"
            }
        };
        args.push(mode.into());
        let stderr = self
            .path
            .join(format!("child-{}-{mode}.stderr", self.children));
        let mut cmd = Command::new(BIN);
        cmd.args(self.db.args())
            .arg("--marks")
            .arg(self.marks())
            .args(&args);
        self.notes.push(format!("spawn {args:?}"));
        Running::spawn(cmd, &stderr)
    }

    fn append_separator(&self) -> anyhow::Result<()> {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.marks())?;
        f.write_all(format!("{SEPARATOR}\n").as_bytes())?;
        Ok(())
    }

    /// Reads the store as a killed process left it (see [`Db::read_at_kill`]).
    fn read_killed(&self) -> anyhow::Result<Log> {
        let copy = self.path.join(format!("copy-{}", self.logs.len() + 1));
        self.db.read_at_kill(&copy)
    }

    /// Checks a finished process's printed line against what it was to do.
    fn check_output(&mut self, act: Act, out: &Value, spawned_at: i64) -> anyhow::Result<()> {
        let before = self.logs.last();
        match act {
            Act::Recover => {
                let report = &out["report"];
                ensure!(
                    report["skipped"].as_array().is_some_and(Vec::is_empty),
                    "recovery skipped runs: {}",
                    report["skipped"]
                );
                let resumed = report["resumed"]
                    .as_array()
                    .ok_or_else(|| anyhow!("no resumed list in {out}"))?;
                let unfinished = before.is_some_and(|l| {
                    l.run_status
                        .is_some_and(|s| !matches!(s, "completed" | "failed" | "cancelled"))
                });
                ensure!(
                    resumed.len() == usize::from(unfinished),
                    "recovery resumed {} runs, {} unfinished: {resumed:?}",
                    resumed.len(),
                    usize::from(unfinished)
                );
                if let Some(r) = resumed.first() {
                    let status = r["status"].as_str().unwrap_or_default();
                    if status == "waiting" && out["run_status"] != json!("waiting") {
                        ensure!(
                            out["waited"] == json!(true),
                            "recovery left the run waiting but did not wait for it: {out}"
                        );
                        self.rescheduled += 1;
                    } else {
                        ensure!(
                            status == out["run_status"],
                            "recovery reported {status}, the run is {}",
                            out["run_status"]
                        );
                        if let Some(wake) = before
                            .map(|l| recorded_wake(&l.events))
                            .transpose()?
                            .flatten()
                            && self.case.flow == Flow::Sleeper
                        {
                            self.due += 1;
                            if self.case.must_reschedule && spawned_at + RESCHEDULE_MARGIN_MS < wake
                            {
                                bail!(
                                    "the recovery was spawned {} ms before the recorded wake-up, yet it did not find the run waiting ({status})",
                                    wake - spawned_at
                                );
                            }
                        }
                    }
                }
            }
            Act::Resume(_) | Act::ResumePending(_) => {
                let r = &out["resume"];
                ensure!(
                    r["outcome"] == out["run_status"],
                    "resume returned {}, the run is {}",
                    r,
                    out["run_status"]
                );
            }
            Act::Send(..) => {
                let to_waiting = before.is_some_and(|l| l.run_status == Some("waiting"));
                ensure!(
                    out["send"]["to_waiting"] == json!(to_waiting)
                        && out["waited"] == json!(to_waiting),
                    "the event was sent to a run that was {:?}, yet the process printed {}",
                    before.and_then(|l| l.run_status),
                    out["send"]
                );
            }
            Act::Start => ensure!(
                out["outcome"] == out["run_status"]
                    || (out["outcome"] == json!("waiting") && out["waited"] == json!(true)),
                "start returned {}, the run is {}",
                out["outcome"],
                out["run_status"]
            ),
        }
        Ok(())
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let case = self.case;
        let mut output = None;
        for (j, proc) in case.procs.iter().enumerate() {
            if j > 0 {
                self.append_separator()?;
            }
            match *proc {
                Proc::Run(act, status) => {
                    let spawned_at = wall_ms();
                    let out = self.spawn(act, None)?.finish()?;
                    self.notes.push(format!("printed {out}"));
                    ensure!(
                        out["run_status"] == json!(status),
                        "process {}: the run is {}, expected {status}",
                        j + 1,
                        out["run_status"]
                    );
                    self.check_output(act, &out, spawned_at)
                        .with_context(|| format!("process {}", j + 1))?;
                    let log = self.db.read()?;
                    ensure!(
                        log.run_status == Some(status),
                        "process {}: the stored run is {:?}, expected {status}",
                        j + 1,
                        log.run_status
                    );
                    self.notes
                        .push(format!("after process {}: {}", j + 1, summary(&log)));
                    self.logs.push(log);
                    self.killed.push(false);
                    output = Some(out);
                }
                Proc::Kill(act, point, durable, status) => {
                    self.spawn(act, Some(point))?.kill_at_pause(point)?;
                    let log = self.read_killed()?;
                    let got = summary(&log);
                    self.notes
                        .push(format!("durable at the kill of process {}: {got}", j + 1));
                    ensure!(
                        got == durable && log.run_status == Some(status),
                        "killed at `{point}`: durable `{got}` with the run {:?}, expected `{durable}` with the run {status}",
                        log.run_status
                    );
                    // With a snapshot every superstep, every closed superstep left one.
                    if self
                        .extra
                        .windows(2)
                        .any(|w| w == ["--snapshot-every", "1"])
                        && log.events.iter().any(|e| {
                            e.body.boundary().is_some()
                                && matches!(e.body, EventBody::NodeCompleted { .. })
                        })
                    {
                        ensure!(
                            log.snapshot_at.is_some(),
                            "a superstep closed with a snapshot every superstep, but no snapshot is stored"
                        );
                    }
                    self.logs.push(log);
                    self.killed.push(true);
                    output = None;
                }
                Proc::Idle(act, result) => {
                    let out = self.spawn(act, None)?.finish()?;
                    self.notes.push(format!("printed {out}"));
                    let r = match act {
                        Act::Send(..) => &out["run_status"],
                        _ => &out["resume"],
                    };
                    ensure!(
                        *r == json!(result)
                            || r["outcome"] == json!(result)
                            || r["resume_error"] == json!(result),
                        "process {}: got {r}, expected {result}",
                        j + 1
                    );
                    let log = self.db.read()?;
                    let prev = self.logs.last().ok_or_else(|| anyhow!("idle first"))?;
                    ensure!(
                        log.events == prev.events
                            && log.run_status == prev.run_status
                            && log.unapplied_answers == prev.unapplied_answers
                            && log.deliveries == prev.deliveries,
                        "process {}: `{result}` changed the store: `{}` → `{}`",
                        j + 1,
                        summary(prev),
                        summary(&log)
                    );
                    self.logs.push(log);
                    self.killed.push(false);
                    output = Some(out);
                }
            }
        }
        let output = output.ok_or_else(|| anyhow!("the last process was killed"))?;
        let last = self.logs.last().expect("invariant: one log per process");
        let events = &last.events;

        // 1. The final state.
        let flow = case.flow;
        let steps: Vec<String> = flow
            .bodies()
            .iter()
            .map(|s| recorded_step(events, s)?.ok_or_else(|| anyhow!("step `{s}` not recorded")))
            .collect::<anyhow::Result<_>>()?;
        let expected = json!({
            "log": flow.nodes(),
            "steps": steps,
            "answer": case.answer,
        });
        ensure!(
            output["state"] == expected,
            "final state {} != expected {expected}",
            output["state"]
        );
        ensure!(
            output["verify_consistent"] == json!(true),
            "verify: replaying the whole log does not give the current state: {output}"
        );
        let hash = oris::state::state_hash(&expected)?;
        ensure!(
            output["hash"] == json!(hash),
            "state hash {} != hash of the expected state {hash}",
            output["hash"]
        );
        ensure!(
            output["run_status"] == json!("completed") && last.run_status == Some("completed"),
            "run status {}",
            output["run_status"]
        );
        ensure!(
            last.unapplied_answers == 0,
            "a stored resume value was never applied"
        );
        // Exactly the deliveries the case sent (one, whatever the retries with its key),
        // each consumed by the run's one EventReceived.
        let received: Vec<(oris::DeliveryId, Seq)> = events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::EventReceived {
                    delivery: Some(d), ..
                } => Some((*d, e.seq)),
                _ => None,
            })
            .collect();
        let stored: Vec<(oris::DeliveryId, Option<Seq>)> =
            received.iter().map(|(d, seq)| (*d, Some(*seq))).collect();
        ensure!(
            last.deliveries == stored,
            "deliveries {:?}, the log consumed {received:?}",
            last.deliveries
        );

        // 2. The timeline.
        check_flow_timeline(flow, case.answer, events)?;

        // 3. Durable events are kept.
        for (i, pair) in self.logs.windows(2).enumerate() {
            let (a, b) = (&pair[0].events, &pair[1].events);
            ensure!(
                b.len() >= a.len() && b[..a.len()] == a[..],
                "the events durable after process {} are not an unchanged prefix of the next log",
                i + 1
            );
        }

        // 4. Node executions.
        let segments = read_segments(&self.marks())?;
        ensure!(
            segments.len() == self.logs.len(),
            "{} marks segments for {} processes",
            segments.len(),
            self.logs.len()
        );
        let empty = Log::default();
        let starts: Vec<&Log> = [&empty].into_iter().chain(&self.logs).collect();
        for (j, seg) in segments.iter().enumerate() {
            let known: BTreeSet<(u32, u32)> = completions(&starts[j].events)
                .iter()
                .map(|c| (c.superstep, c.task))
                .collect();
            let mut runs: BTreeMap<(u32, u32), usize> = BTreeMap::new();
            for x in &seg.execs {
                let k = (x.superstep, x.task);
                ensure!(
                    !known.contains(&k),
                    "process {}: {x:?} ran although its completion was durable before (a completed node re-executed)",
                    j + 1
                );
                *runs.entry(k).or_default() += 1;
            }
            if let Some(((s, t), n)) = runs.iter().find(|(_, n)| **n > 1) {
                bail!("process {}: superstep {s} task {t} ran {n} times", j + 1);
            }
            for c in completions(&starts[j + 1].events)
                .iter()
                .filter(|c| !known.contains(&(c.superstep, c.task)))
            {
                ensure!(
                    seg.execs
                        .iter()
                        .any(|x| (x.superstep, x.task, &x.node, x.attempt)
                            == (c.superstep, c.task, &c.node, c.attempt)),
                    "process {}: {c:?} became durable but has no exec mark in that process",
                    j + 1
                );
            }
        }
        // A node body ran to its end once, plus once per process killed after that and
        // before its completion was durable (nodes are at-least-once too); how many times
        // each node started is exactly what the case states.
        for (i, node) in flow.nodes().into_iter().enumerate() {
            let mut total = 0;
            let mut lost = 0;
            for (j, seg) in segments.iter().enumerate() {
                let ran = seg.execs.iter().filter(|x| x.node == node).count();
                total += ran;
                let durable = completions(&starts[j + 1].events)
                    .iter()
                    .any(|c| c.node == node);
                if ran > 0 && !durable {
                    ensure!(
                        self.killed[j],
                        "process {}: node `{node}` ran to its end but its completion is not durable",
                        j + 1
                    );
                    lost += 1;
                }
            }
            ensure!(
                total == lost + 1,
                "node `{node}` ran to its end {total} times, {lost} of them lost to a kill before its completion"
            );
            let enters = segments
                .iter()
                .flat_map(|s| &s.enters)
                .filter(|x| x.node == node)
                .count();
            ensure!(
                enters == case.enters[i],
                "node `{node}` started {enters} times, the case expects {}",
                case.enters[i]
            );
        }

        // 5. Step bodies: at-least-once executed, exactly-once recorded.
        for (k, step) in flow.bodies().iter().enumerate() {
            let mut total = 0;
            let mut lost = 0;
            for (j, seg) in segments.iter().enumerate() {
                let ran: Vec<&StepExec> = seg.steps.iter().filter(|x| x.step == *step).collect();
                ensure!(
                    ran.len() <= 1,
                    "process {}: the body of step `{step}` ran {} times",
                    j + 1,
                    ran.len()
                );
                ensure!(
                    ran.iter()
                        .all(|x| (x.superstep, x.task, x.node.as_str()) == (1, 0, flow.middle())),
                    "process {}: step `{step}` ran in the wrong task: {ran:?}",
                    j + 1
                );
                total += ran.len();
                let before = recorded_step(&starts[j].events, step)?;
                let after = recorded_step(&starts[j + 1].events, step)?;
                match (ran.first(), &before, &after) {
                    (Some(x), Some(v), _) => bail!(
                        "process {}: the body of step `{step}` ran again ({}) although its result `{v}` was recorded",
                        j + 1,
                        x.token
                    ),
                    (Some(x), None, Some(v)) => ensure!(
                        x.token == *v,
                        "process {}: step `{step}` recorded `{v}`, its body returned `{}`",
                        j + 1,
                        x.token
                    ),
                    (Some(x), None, None) => {
                        ensure!(
                            self.killed[j],
                            "process {}: the body of step `{step}` ran ({}) but its result was never recorded",
                            j + 1,
                            x.token
                        );
                        // Killed between the body and its record: the documented
                        // at-least-once execution.
                        lost += 1;
                    }
                    (None, None, Some(v)) => bail!(
                        "process {}: step `{step}` recorded `{v}` without its body running",
                        j + 1
                    ),
                    (None, _, _) => {}
                }
            }
            ensure!(
                total == lost + 1,
                "the body of step `{step}` ran {total} times, {lost} of them lost to a kill before the record"
            );
            ensure!(
                total == case.bodies[k],
                "the body of step `{step}` ran {total} times, the case expects {}",
                case.bodies[k]
            );
        }
        Ok(())
    }

    fn diagnostics(&self, err: &anyhow::Error) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "=== {} / {} FAILED: {err:#}",
            self.case.flow.arg(),
            self.case.name
        );
        let _ = writeln!(s, "--- steps:");
        for n in &self.notes {
            let _ = writeln!(s, "  {n}");
        }
        let _ = writeln!(s, "--- marks file:");
        match fs::read_to_string(self.marks()) {
            Ok(m) => s.push_str(&m),
            Err(e) => {
                let _ = writeln!(s, "(unreadable: {e})");
            }
        }
        for (i, l) in self.logs.iter().enumerate() {
            let _ = writeln!(
                s,
                "--- timeline after process {}{}:",
                i + 1,
                if self.killed[i] { " (killed)" } else { "" }
            );
            for e in &l.events {
                let _ = writeln!(s, "{}", describe(e));
            }
            let _ = writeln!(
                s,
                "run status: {:?}, unapplied answers: {}, deliveries: {:?}",
                l.run_status, l.unapplied_answers, l.deliveries
            );
        }
        if let Ok(dir) = fs::read_dir(&self.path) {
            let mut files: Vec<PathBuf> = dir
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "stderr"))
                .collect();
            files.sort();
            for f in files {
                let text = fs::read_to_string(&f).unwrap_or_default();
                if !text.is_empty() {
                    let _ = writeln!(s, "--- {}:\n{text}", f.display());
                }
            }
        }
        s
    }
}

fn run_flow_cases(cases: &'static [FlowCase], extra: &[&str]) {
    run_flow_cases_on(Backend::Sqlite, cases.iter().collect(), extra);
}

fn run_flow_cases_on(backend: Backend, cases: Vec<&'static FlowCase>, extra: &[&str]) {
    let mut failures = Vec::new();
    let (mut rescheduled, mut due) = (0, 0);
    for case in &cases {
        let case: &'static FlowCase = case;
        let on = match backend {
            Backend::Sqlite => "",
            Backend::Postgres => "postgres: ",
        };
        let label = format!("{on}{} {extra:?} / {}", case.flow.arg(), case.name);
        let mut scene = FlowScene::new(backend, case, extra).expect("temp dir");
        let started = Instant::now();
        match scene.run() {
            Ok(()) => eprintln!("ok   {label} ({:?})", started.elapsed()),
            Err(e) => {
                eprintln!("FAIL {label}: {e:#}");
                failures.push(scene.diagnostics(&e));
            }
        }
        rescheduled += scene.rescheduled;
        due += scene.due;
    }
    if rescheduled + due > 0 {
        eprintln!(
            "recoveries of a run waiting on a timer: {rescheduled} found it not due and rescheduled its wake-up, {due} found its sleep already due"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

use Act::{Recover, Resume, ResumePending, Send, Start};
use Proc::{Idle, Kill, Run};

/// `approval`'s first process commits: 1 RunStarted, 2 `a`, 3 `charge`, 4 the interrupt,
/// 5 the suspension. A resuming process: 1 InterruptResumed + RunResumed, 2 `notify`,
/// 3 `b`, 4 `c` + RunCompleted.
const APPROVAL: &[FlowCase] = &[
    FlowCase {
        name: "reference: interrupted, then resumed",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Run(Start, "interrupted"),
            Run(ResumePending("yes"), "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed between the charge body and its record",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Kill(Start, "after-step-body:charge", "start a", "running"),
            Run(Recover, "interrupted"),
            Run(Resume("yes"), "completed"),
        ],
        bodies: [2, 1],
        enters: [1, 3, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed just before the charge's record commit",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Kill(Start, "before-commit:3", "start a", "running"),
            Run(Recover, "interrupted"),
            Run(Resume("yes"), "completed"),
        ],
        bodies: [2, 1],
        enters: [1, 3, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed twice between the charge body and its record",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Kill(Start, "after-step-body:charge", "start a", "running"),
            Kill(Recover, "after-step-body:charge", "start a", "running"),
            Run(Recover, "interrupted"),
            Run(Resume("yes"), "completed"),
        ],
        bodies: [3, 1],
        enters: [1, 4, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed after the charge was recorded, before the interrupt",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Kill(Start, "after-commit:3", "start a charge", "running"),
            Run(Recover, "interrupted"),
            Run(Resume("yes"), "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 3, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed after the interrupt was recorded, before the suspension",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Kill(Start, "after-commit:4", "start a charge raise", "running"),
            Run(Recover, "interrupted"),
            Run(Resume("yes"), "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed after the interrupt was recorded; resumed without a recovery first",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Kill(Start, "after-commit:4", "start a charge raise", "running"),
            Run(Resume("yes"), "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed while interrupted",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Kill(
                Start,
                "returned",
                "start a charge raise suspend",
                "interrupted",
            ),
            Run(Recover, "interrupted"),
            Run(ResumePending("yes"), "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed after the resume value was stored, before the run continued; recovered",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Run(Start, "interrupted"),
            Kill(
                Resume("yes"),
                "before-commit:1",
                "start a charge raise suspend +answered",
                "interrupted",
            ),
            Run(Recover, "completed"),
            Idle(Resume("yes"), "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed after the resume value was stored; resumed again with the same value",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Run(Start, "interrupted"),
            Kill(
                Resume("yes"),
                "before-commit:1",
                "start a charge raise suspend +answered",
                "interrupted",
            ),
            Run(Resume("yes"), "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed after the resume value was stored; another value refused, then recovered",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Run(Start, "interrupted"),
            Kill(
                Resume("yes"),
                "before-commit:1",
                "start a charge raise suspend +answered",
                "interrupted",
            ),
            Idle(Resume("no"), "resume_conflict"),
            Run(Recover, "completed"),
            Idle(Resume("no"), "resume_conflict"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed after the resume value was stored, and its recovery killed there too",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Run(Start, "interrupted"),
            Kill(
                Resume("yes"),
                "before-commit:1",
                "start a charge raise suspend +answered",
                "interrupted",
            ),
            Kill(
                Recover,
                "before-commit:1",
                "start a charge raise suspend +answered",
                "interrupted",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed after the resume was applied, before the node ran again",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Run(Start, "interrupted"),
            Kill(
                Resume("yes"),
                "after-commit:1",
                "start a charge raise suspend resumed continue",
                "running",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed after the resume was applied; resumed again with the same value",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Run(Start, "interrupted"),
            Kill(
                Resume("yes"),
                "after-commit:1",
                "start a charge raise suspend resumed continue",
                "running",
            ),
            Run(Resume("yes"), "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed before the suspension, then after the resume value was stored",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Kill(Start, "after-commit:4", "start a charge raise", "running"),
            Kill(
                Resume("yes"),
                "before-commit:1",
                "start a charge raise +answered",
                "running",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed between the notify body and its record",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Run(Start, "interrupted"),
            Kill(
                Resume("yes"),
                "after-step-body:notify",
                "start a charge raise suspend resumed continue",
                "running",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 2],
        enters: [1, 3, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed after b finished, before its completion was committed",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Run(Start, "interrupted"),
            Kill(
                Resume("yes"),
                "after-node:b",
                "start a charge raise suspend resumed continue notify",
                "running",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 3, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "resumed again after completion, with the same and another value",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Run(Start, "interrupted"),
            Run(Resume("yes"), "completed"),
            Idle(Resume("yes"), "completed"),
            Idle(Resume("no"), "resume_conflict"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "yes",
        must_reschedule: false,
    },
];

/// `sleeper`'s first process commits: 1 RunStarted, 2 `a`, 3 `before-sleep`, 4 the sleep,
/// 5 the suspension (`waiting`); once woken in the same process: 6 RunResumed,
/// 7 `after-sleep`, 8 `nap`, 9 `c` + RunCompleted.
const SLEEPER: &[FlowCase] = &[
    FlowCase {
        name: "reference: sleeps and wakes in one process",
        flow: Flow::Sleeper,
        sleep_ms: 300,
        procs: &[Run(Start, "completed")],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed while sleeping",
        flow: Flow::Sleeper,
        sleep_ms: 300,
        procs: &[
            Kill(
                Start,
                "returned",
                "start a before-sleep oris.sleep suspend",
                "waiting",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed while sleeping long: the recovery reschedules the wake-up",
        flow: Flow::Sleeper,
        sleep_ms: 2000,
        procs: &[
            Kill(
                Start,
                "returned",
                "start a before-sleep oris.sleep suspend",
                "waiting",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "",
        must_reschedule: true,
    },
    FlowCase {
        name: "killed while sleeping, and its recovery killed while sleeping too",
        flow: Flow::Sleeper,
        sleep_ms: 2000,
        procs: &[
            Kill(
                Start,
                "returned",
                "start a before-sleep oris.sleep suspend",
                "waiting",
            ),
            Kill(
                Recover,
                "returned",
                "start a before-sleep oris.sleep suspend",
                "waiting",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "",
        must_reschedule: true,
    },
    FlowCase {
        name: "killed after the sleep was recorded, before the run was marked waiting",
        flow: Flow::Sleeper,
        sleep_ms: 300,
        procs: &[
            Kill(
                Start,
                "after-commit:4",
                "start a before-sleep oris.sleep",
                "running",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed between the before-sleep body and its record",
        flow: Flow::Sleeper,
        sleep_ms: 300,
        procs: &[
            Kill(Start, "after-step-body:before-sleep", "start a", "running"),
            Run(Recover, "completed"),
        ],
        bodies: [2, 1],
        enters: [1, 3, 1],
        answer: "",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed after waking, before the node ran again",
        flow: Flow::Sleeper,
        sleep_ms: 300,
        procs: &[
            Kill(
                Start,
                "after-commit:6",
                "start a before-sleep oris.sleep suspend continue",
                "running",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed between the after-sleep body and its record",
        flow: Flow::Sleeper,
        sleep_ms: 300,
        procs: &[
            Kill(
                Start,
                "after-step-body:after-sleep",
                "start a before-sleep oris.sleep suspend continue",
                "running",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 2],
        enters: [1, 3, 1],
        answer: "",
        must_reschedule: false,
    },
];

/// `exit` durability writes only at status changes (start, suspension, resumption, end): a
/// kill loses everything since, and recorded steps among it run again — as documented.
/// `approval`'s first process writes 1 RunStarted, 2 `a charge raise suspend`; a resuming
/// process 1 `resumed continue`, 2 `notify b c end`.
const EXIT: &[FlowCase] = &[
    FlowCase {
        name: "killed between the charge body and its record",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Kill(Start, "after-step-body:charge", "start", "running"),
            Run(Recover, "interrupted"),
            Run(Resume("yes"), "completed"),
        ],
        bodies: [2, 1],
        enters: [2, 3, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed while interrupted",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Kill(
                Start,
                "returned",
                "start a charge raise suspend",
                "interrupted",
            ),
            Run(Resume("yes"), "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed after the resume value was stored, before the run continued",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Run(Start, "interrupted"),
            Kill(
                Resume("yes"),
                "before-commit:1",
                "start a charge raise suspend +answered",
                "interrupted",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed before the final write: notify's record was only in memory",
        flow: Flow::Approval,
        sleep_ms: 0,
        procs: &[
            Run(Start, "interrupted"),
            Kill(
                Resume("yes"),
                "before-commit:2",
                "start a charge raise suspend resumed continue",
                "running",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 2],
        enters: [1, 3, 2],
        answer: "yes",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed while sleeping",
        flow: Flow::Sleeper,
        sleep_ms: 300,
        procs: &[
            Kill(
                Start,
                "returned",
                "start a before-sleep oris.sleep suspend",
                "waiting",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed between the after-sleep body and its record",
        flow: Flow::Sleeper,
        sleep_ms: 300,
        procs: &[
            Kill(
                Start,
                "after-step-body:after-sleep",
                "start a before-sleep oris.sleep suspend continue",
                "running",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 2],
        enters: [1, 3, 1],
        answer: "",
        must_reschedule: false,
    },
];

/// `payment`'s first process commits: 1 RunStarted, 2 `a`, 3 `invoice`, 4 the wait's
/// deadline, 5 the suspension (`waiting` for `paid`, with a 60 s timeout unless said). A process sending the event to the
/// waiting run: 1 RunResumed, 2 EventReceived, 3 `receipt`, 4 `pay`, 5 `c` + RunCompleted.
const PAYMENT: &[FlowCase] = &[
    FlowCase {
        name: "reference: waits, the event arrives",
        flow: Flow::Payment,
        sleep_ms: 60_000,
        procs: &[
            Run(Start, "waiting"),
            Run(Send("paid-42", None), "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "paid-42",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed after the event was stored, before the run continued; recovered",
        flow: Flow::Payment,
        sleep_ms: 60_000,
        procs: &[
            Run(Start, "waiting"),
            Kill(
                Send("paid-42", Some("k1")),
                "before-commit:1",
                "start a invoice oris.wait:paid suspend +delivered",
                "waiting",
            ),
            Run(Recover, "completed"),
            Idle(Send("paid-42", Some("k1")), "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "paid-42",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed after the event was stored; sent again with its key",
        flow: Flow::Payment,
        sleep_ms: 60_000,
        procs: &[
            Run(Start, "waiting"),
            Kill(
                Send("paid-42", Some("k1")),
                "before-commit:1",
                "start a invoice oris.wait:paid suspend +delivered",
                "waiting",
            ),
            Run(Send("paid-42", Some("k1")), "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "paid-42",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed after the event was consumed, before the node went on",
        flow: Flow::Payment,
        sleep_ms: 60_000,
        procs: &[
            Run(Start, "waiting"),
            Kill(
                Send("paid-42", None),
                "after-commit:2",
                "start a invoice oris.wait:paid suspend continue received",
                "running",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 3, 1],
        answer: "paid-42",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed between the receipt body and its record",
        flow: Flow::Payment,
        sleep_ms: 60_000,
        procs: &[
            Run(Start, "waiting"),
            Kill(
                Send("paid-42", None),
                "after-step-body:receipt",
                "start a invoice oris.wait:paid suspend continue received",
                "running",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 2],
        enters: [1, 3, 1],
        answer: "paid-42",
        must_reschedule: false,
    },
    FlowCase {
        name: "event sent to a run killed before its wait started",
        flow: Flow::Payment,
        sleep_ms: 60_000,
        procs: &[
            Kill(Start, "after-step-body:invoice", "start a", "running"),
            Run(Send("paid-42", None), "running"),
            Run(Recover, "completed"),
        ],
        bodies: [2, 1],
        enters: [1, 2, 1],
        answer: "paid-42",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed after the run continued for the event, before consuming it",
        flow: Flow::Payment,
        sleep_ms: 60_000,
        procs: &[
            Run(Start, "waiting"),
            Kill(
                Send("paid-42", None),
                "after-commit:1",
                "start a invoice oris.wait:paid suspend continue +delivered",
                "running",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "paid-42",
        must_reschedule: false,
    },
    FlowCase {
        name: "killed while waiting; the wait timed out while nobody ran",
        flow: Flow::Payment,
        sleep_ms: 300,
        procs: &[
            Kill(
                Start,
                "returned",
                "start a invoice oris.wait:paid suspend",
                "waiting",
            ),
            Run(Recover, "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: TIMED_OUT,
        must_reschedule: false,
    },
    FlowCase {
        name: "killed while waiting for the event",
        flow: Flow::Payment,
        sleep_ms: 60_000,
        procs: &[
            Kill(
                Start,
                "returned",
                "start a invoice oris.wait:paid suspend",
                "waiting",
            ),
            Run(Recover, "waiting"),
            Run(Send("paid-42", None), "completed"),
        ],
        bodies: [1, 1],
        enters: [1, 2, 1],
        answer: "paid-42",
        must_reschedule: false,
    },
];

#[test]
fn external_events_survive_kills() {
    run_flow_cases(PAYMENT, &[]);
}

/// Recovery folds a snapshot plus the records after it (steps, interrupts, receipts).
#[test]
fn flows_survive_kills_with_a_snapshot_every_superstep() {
    run_flow_cases(APPROVAL, &["--snapshot-every", "1"]);
    run_flow_cases(PAYMENT, &["--snapshot-every", "1"]);
}

#[test]
fn steps_and_interrupts_survive_kills() {
    run_flow_cases(APPROVAL, &[]);
}

/// `batched` commits without fsync: a process crash loses nothing, so the same points
/// leave the same durable events.
#[test]
fn steps_and_interrupts_survive_kills_with_batched_durability() {
    run_flow_cases(APPROVAL, &["--durability", "batched"]);
}

#[test]
fn durable_sleeps_survive_kills() {
    run_flow_cases(SLEEPER, &[]);
}

#[test]
fn suspended_runs_survive_kills_with_exit_durability() {
    run_flow_cases(EXIT, &["--durability", "exit"]);
}

// --- PostgreSQL -------------------------------------------------------------------------
//
// The same scenarios, the same target and the same invariant checks, on PostgreSQL: each
// case in a schema of its own (dropped at its end) of the database at `ORIS_TEST_PG_URL`.
// These tests fail, never skip, when it is not set. What a kill left durable is read once
// the server has closed every connection of the killed child (`PgSchema::wait_gone`).

/// W1 on PostgreSQL: kills during a node, between a node's completion and its commit,
/// before and after the first, a middle and the last commit, and during a recovery.
const PG_LINEAR: &[&[Fault]] = &[
    &[Fault::None],
    &[P("node:n0", C(0))],
    &[P("node:n5", C(5))],
    &[P("after-node:n0", C(0))],
    &[P("after-node:n5", C(5))],
    &[P("after-node:n9", C(9))],
    &[P("before-commit:1", NoRun)],
    &[P("before-commit:2", C(0))],
    &[P("before-commit:6", C(4))],
    &[P("before-commit:11", C(9))],
    &[P("after-commit:1", C(0))],
    &[P("after-commit:6", C(5))],
    &[P("after-commit:11", C(10))],
    &[P("after-node:n3", C(3)), P("after-node:n3", C(3))],
    &[P("node:n2", C(2)), P("after-commit:3", C(5))],
];

#[test]
fn postgres_linear_survives_kills_at_every_kind_of_point() {
    pg_url();
    run_cases_on(Backend::Postgres, Graph::Linear, &[], PG_LINEAR);
}

/// `batched` on PostgreSQL commits with `synchronous_commit = off`: a crash of the Oris
/// process (SIGKILL) loses nothing.
#[test]
fn postgres_linear_survives_kills_with_batched_durability() {
    pg_url();
    run_cases_on(
        Backend::Postgres,
        Graph::Linear,
        &["--durability", "batched"],
        PG_LINEAR,
    );
}

#[test]
fn postgres_fanout_survives_kills_mid_fan_out() {
    pg_url();
    run_cases_on(
        Backend::Postgres,
        Graph::Fanout,
        &[],
        &[
            &[Fault::None],
            &[P("node:fan", C(0))],
            &[P("after-node:fan", C(0))],
            &[P("node:w0", C(1))],
            &[P("node:w3", C(4))],
            &[P("after-node:w7", C(8))],
            &[P("node:join", C(9))],
            &[P("fanout-after:0", C(1))],
            &[P("fanout-after:3", C(4))],
            &[P("fanout-after:7", C(8))],
            &[P("after-commit:5", C(4))],
            &[P("before-commit:11", C(9))],
            &[P("fanout-after:3", C(4)), P("after-commit:1", Any)],
            &[P("fanout-after:7", C(8)), P("after-node:w7", C(8))],
        ],
    );
}

/// Recovery from a snapshot plus a tail of events, on PostgreSQL.
#[test]
fn postgres_loop_survives_kills_around_snapshots() {
    pg_url();
    run_cases_on(
        Backend::Postgres,
        Graph::Loop,
        &["--snapshot-every", "4"],
        &[
            &[Fault::None],
            &[P("node:step@15", C(15))],
            &[P("after-node:step@15", C(15))],
            &[P("before-commit:17", C(15))],
            &[P("after-commit:17", C(16))],
            &[P("after-commit:31", C(30))],
            &[P("after-commit:18", C(17)), P("after-commit:1", C(18))],
        ],
    );
}

/// Recorded steps and interrupts on PostgreSQL: kills after a step's body before its
/// record, after the interrupt is recorded, while interrupted, after the resume value is
/// stored before the run continues.
#[test]
fn postgres_steps_and_interrupts_survive_kills() {
    pg_url();
    run_flow_cases_on(Backend::Postgres, APPROVAL.iter().collect(), &[]);
}

/// Durable sleeps on PostgreSQL: killed while sleeping (the recovery wakes the run, or
/// reschedules its wake-up), around the sleep's records.
#[test]
fn postgres_durable_sleeps_survive_kills() {
    pg_url();
    run_flow_cases_on(Backend::Postgres, SLEEPER.iter().collect(), &[]);
}

/// External events on PostgreSQL: stored before the run continues, delivered once.
#[test]
fn postgres_external_events_survive_kills() {
    pg_url();
    run_flow_cases_on(Backend::Postgres, PAYMENT.iter().collect(), &[]);
}

/// `exit` durability on PostgreSQL: a kill loses what was not written at a status change,
/// as documented, and nothing else.
#[test]
fn postgres_suspended_runs_survive_kills_with_exit_durability() {
    pg_url();
    run_flow_cases_on(
        Backend::Postgres,
        EXIT.iter().collect(),
        &["--durability", "exit"],
    );
}

// --- two processes on one PostgreSQL ----------------------------------------------------

/// Runs per process on threads of its own.
const OWN_RUNS: usize = 20;
/// Threads both processes start a run on, at the same instant.
const SHARED_RUNS: usize = 4;
/// Threads A starts at once and B once A was killed with its runs on them unfinished.
const LATE_RUNS: usize = 2;
/// The first process is killed as its commit number this begins (of about 11 per run).
const KILL_AFTER_COMMIT: u64 = 90;

/// The `exec` marks of a process, per thread: (superstep, task, node, attempt).
fn exec_marks(path: &Path) -> anyhow::Result<BTreeMap<String, Vec<Completion>>> {
    let mut out: BTreeMap<String, Vec<Completion>> = BTreeMap::new();
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).context("reading a marks file"),
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["commit", ..] => {}
            ["exec", thread, superstep, task, node, attempt] => {
                out.entry((*thread).to_owned())
                    .or_default()
                    .push(Completion {
                        superstep: superstep.parse()?,
                        task: task.parse()?,
                        node: (*node).to_owned(),
                        attempt: attempt.parse()?,
                    });
            }
            _ => bail!("unexpected marks line `{line}`"),
        }
    }
    Ok(out)
}

/// Waits for the next stdout line of a child.
fn next_line(r: &Running, what: &str) -> anyhow::Result<String> {
    r.lines
        .recv_timeout(PAUSE_TIMEOUT)
        .map_err(|e| anyhow!("waiting for {what}: {e}"))
}

/// Two processes A and B start `linear` runs concurrently in one PostgreSQL schema — 20
/// on threads of their own each, 4 on threads both start at the same instant, and 2 that
/// only A starts at first — and A is SIGKILLed as its 90th commit begins (other commits of
/// its may be in flight). B, still running, then starts runs on the 2 late threads (A's
/// unfinished runs there are still active), then recovers A's unfinished runs; a fresh process finds nothing left to do.
/// Checks: on every thread both started at once exactly one start won and the other was
/// refused with `RunActive` (also when both created the thread at once); on each late thread B was refused with `RunActive`; every thread holds one run whose log is
/// contiguous with one `NodeCompleted` per (superstep, task) and exactly one
/// `RunCompleted`; the final states and hashes are exact and `verify` is consistent; the
/// events durable at the kill are an unchanged prefix of the final log; no node whose
/// completion was durable at the kill ran again, and every other one ran in B exactly once.
#[test]
fn postgres_two_processes_share_one_database_and_recover_a_killed_one() {
    pg_url();
    let dir = tempfile::tempdir().expect("temp dir");
    let pg = PgSchema::new();
    let started = Instant::now();
    if let Err(e) = two_processes(dir.path(), &pg) {
        let mut s = format!("two processes on one PostgreSQL FAILED: {e:#}\n");
        let mut files: Vec<PathBuf> = fs::read_dir(dir.path())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            let text = fs::read_to_string(&f).unwrap_or_default();
            let _ = writeln!(s, "--- {}:\n{text}", f.display());
        }
        panic!("{s}");
    }
    eprintln!(
        "ok   postgres: two processes, one killed, recovered by the other ({:?})",
        started.elapsed()
    );
}

fn two_processes(dir: &Path, pg: &PgSchema) -> anyhow::Result<()> {
    let shared: Vec<String> = (0..SHARED_RUNS).map(|i| format!("s-{i}")).collect();
    let own = |p: &'static str| (0..OWN_RUNS).map(move |i| format!("{p}-{i:02}"));
    let late: Vec<String> = (0..LATE_RUNS).map(|i| format!("l-{i}")).collect();
    // Shared threads first: they are started first.
    let threads_a: Vec<String> = shared
        .iter()
        .chain(&late)
        .cloned()
        .chain(own("a"))
        .collect();
    let threads_b: Vec<String> = shared
        .iter()
        .chain(&late)
        .cloned()
        .chain(own("b"))
        .collect();
    let all: Vec<String> = shared
        .iter()
        .chain(&late)
        .cloned()
        .chain(own("a"))
        .chain(own("b"))
        .collect();
    let gate = dir.join("go");
    let recover_gate = dir.join("recover");
    let late_gate = dir.join("late");
    let (app_a, app_b, app_c) = (
        format!("{}_a", pg.app),
        format!("{}_b", pg.app),
        format!("{}_c", pg.app),
    );
    let spawn = |name: &str, app: &str, threads: &[String], extra: &[String], mode: &str| {
        let mut cmd = Command::new(BIN);
        cmd.args(pg.args_as(app))
            .arg("--marks")
            .arg(dir.join(format!("marks-{name}.txt")))
            .args(["--graph", "linear", "--threads", &threads.join(",")])
            .args(extra)
            .arg(mode);
        Running::spawn(cmd, &dir.join(format!("{name}.stderr")))
    };
    let go = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "--gate".into(),
            gate.display().to_string(),
            "--node-ms".into(),
            "15".into(),
        ];
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    // `before-commit`: counted as commits begin, so exact with many runs in flight (an
    // `after-commit` count can be overtaken by the next commit's start).
    let kill_point = format!("before-commit:{KILL_AFTER_COMMIT}");
    let mut a = spawn(
        "a",
        &app_a,
        &threads_a,
        &go(&["--pause-at", &kill_point]),
        "start",
    )?;
    let b = spawn(
        "b",
        &app_b,
        &threads_b,
        &go(&[
            "--recover-gate",
            &recover_gate.display().to_string(),
            "--late-threads",
            &late.join(","),
            "--late-gate",
            &late_gate.display().to_string(),
        ]),
        "start",
    )?;
    for (r, name) in [(&a, "A"), (&b, "B")] {
        let line = next_line(r, &format!("{name}'s READY"))?;
        ensure!(line == "READY", "{name} printed `{line}` instead of READY");
    }
    // Both start their runs now.
    File::create(&gate)?;

    // A: the refused starts, then the pause; killed there.
    let mut refused_a = BTreeSet::new();
    let mut a_conflict = BTreeSet::new();
    let mut conflicts = 0;
    loop {
        let line = next_line(&a, "A's pause")?;
        if let Some(rest) = line.strip_prefix("REFUSED ") {
            let (t, why) = rest.split_once(' ').unwrap_or((rest, ""));
            // A start that lost the race is told which run is active, even when both
            // read an empty thread and the other's `RunStarted` committed first.
            ensure!(
                why.starts_with("run_active "),
                "A's start on {t} was refused: {why}"
            );
            refused_a.insert(t.to_owned());
            if why.starts_with("conflict ") {
                a_conflict.insert(t.to_owned());
            }
        } else {
            ensure!(line == format!("PAUSED {kill_point}"), "A printed `{line}`");
            break;
        }
    }
    let status = a.kill()?;
    ensure!(status.signal() == Some(9), "A ended with {status}");
    pg.wait_gone(&app_a)?;

    // What A's kill left durable, on A's threads (B is still running its own).
    let mut at_kill: BTreeMap<String, Log> = BTreeMap::new();
    for t in &threads_a {
        at_kill.insert(t.clone(), read_thread_log(&Where::Postgres(pg), t)?);
    }
    for t in &late {
        let log = &at_kill[t];
        ensure!(
            log.exists && log.run_status == Some("running"),
            "A was killed before its run on {t} started, or after it ended: {:?}",
            log.run_status
        );
    }
    // B starts runs on the late threads — refused, A's runs there are active — and then
    // recovers what A left unfinished, once its own starts returned.
    File::create(&late_gate)?;
    File::create(&recover_gate)?;
    let out_b = b.finish()?;

    // Who won each shared thread: exactly one of the two starts.
    let mut won_by_a: BTreeSet<String> = own("a").collect();
    for t in &shared {
        let rb = &out_b["threads"][t];
        // Refused with `RunActive` — also when both read an empty thread and the other's
        // `RunStarted` committed first. Either way one run, no fork (checked below).
        ensure!(
            rb["error"] != json!("conflict"),
            "B's start on {t} lost a creation race but was not told RunActive: {rb}"
        );
        let b_refused = rb["error"] == json!("run_active");
        if b_refused && rb["error"] == json!("conflict") || a_conflict.contains(t) {
            conflicts += 1;
        }
        let a_refused = refused_a.contains(t);
        ensure!(
            a_refused != b_refused,
            "shared thread {t}: A refused {a_refused}, B refused {b_refused}, B's result {rb}"
        );
        if b_refused {
            won_by_a.insert(t.clone());
        } else {
            ensure!(rb["outcome"] == json!("completed"), "B's run on {t}: {rb}");
        }
    }
    // A's run on a late thread was active when B started: B was refused with RunActive.
    for t in &late {
        let rb = &out_b["threads"][t];
        ensure!(
            rb["error"] == json!("run_active") && !refused_a.contains(t),
            "late thread {t}: B's start should have been refused with RunActive (A refused: {}), B got {rb}",
            refused_a.contains(t)
        );
        won_by_a.insert(t.clone());
    }
    for t in own("b") {
        let rb = &out_b["threads"][&t];
        ensure!(rb["outcome"] == json!("completed"), "B's run on {t}: {rb}");
    }
    // A was killed mid-way: some of its runs were unfinished, and exactly those were
    // recovered, each to completion.
    let unfinished: BTreeSet<String> = won_by_a
        .iter()
        .filter(|t| at_kill[*t].run_status != Some("completed"))
        .cloned()
        .collect();
    ensure!(
        !unfinished.is_empty(),
        "A's runs had all completed when it was killed"
    );
    let report = &out_b["report"];
    ensure!(
        report["skipped"].as_array().is_some_and(Vec::is_empty),
        "B's recovery skipped runs: {report}"
    );
    let resumed: BTreeSet<String> = report["resumed"]
        .as_array()
        .ok_or_else(|| anyhow!("no recovery report in B's output {out_b}"))?
        .iter()
        .map(|r| {
            ensure!(r["status"] == json!("completed"), "recovered run {r}");
            Ok(r["thread"].as_str().unwrap_or_default().to_owned())
        })
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        resumed == unfinished,
        "B recovered {resumed:?}; A left unfinished {unfinished:?}"
    );

    // A fresh process: nothing left to recover; every thread's final state.
    let out_c = spawn("c", &app_c, &all, &[], "recover")?.finish()?;
    ensure!(
        out_c["report"]["resumed"]
            .as_array()
            .is_some_and(Vec::is_empty)
            && out_c["report"]["skipped"]
                .as_array()
                .is_some_and(Vec::is_empty),
        "a fresh recovery found work left: {}",
        out_c["report"]
    );
    let expected = Graph::Linear.expected_state();
    let hash = oris::state::state_hash(&expected)?;
    let marks_a = exec_marks(&dir.join("marks-a.txt"))?;
    let marks_b = exec_marks(&dir.join("marks-b.txt"))?;
    let marks_c = exec_marks(&dir.join("marks-c.txt"))?;
    ensure!(
        marks_c.is_empty(),
        "the fresh process ran nodes: {marks_c:?}"
    );
    let none = Vec::new();
    let mut durable_total = 0;
    for t in &all {
        let fin = &out_c["finals"][t];
        ensure!(
            fin["state"] == expected,
            "{t}: final state {}",
            fin["state"]
        );
        ensure!(fin["hash"] == json!(hash), "{t}: hash {}", fin["hash"]);
        ensure!(fin["verify_consistent"] == json!(true), "{t}: verify {fin}");
        ensure!(fin["run_status"] == json!("completed"), "{t}: {fin}");
        let log = read_thread_log(&Where::Postgres(pg), t)?;
        ensure!(
            log.run_status == Some("completed"),
            "{t}: {:?}",
            log.run_status
        );
        check_timeline(Graph::Linear, &log.events).with_context(|| format!("thread {t}"))?;
        let final_done = completions(&log.events);
        let (ea, eb) = (
            marks_a.get(t).unwrap_or(&none),
            marks_b.get(t).unwrap_or(&none),
        );
        let key = |c: &Completion| (c.superstep, c.task);
        for (who, execs) in [("A", ea), ("B", eb)] {
            let mut seen = BTreeSet::new();
            for x in execs {
                ensure!(seen.insert(key(x)), "{t}: {who} ran {x:?} twice");
            }
        }
        if won_by_a.contains(t) {
            let kill = &at_kill[t];
            ensure!(
                log.events.len() >= kill.events.len()
                    && log.events[..kill.events.len()] == kill.events[..],
                "{t}: the events durable at A's kill are not a prefix of the final log"
            );
            let durable = completions(&kill.events);
            durable_total += durable.len();
            let durable_keys: BTreeSet<_> = durable.iter().map(key).collect();
            for c in &durable {
                ensure!(
                    ea.contains(c),
                    "{t}: {c:?} was durable at the kill but A has no exec mark for it"
                );
            }
            for x in eb {
                ensure!(
                    !durable_keys.contains(&key(x)),
                    "{t}: B ran {x:?} again although its completion was durable at A's kill"
                );
            }
            let missing: Vec<&Completion> = final_done
                .iter()
                .filter(|c| !durable_keys.contains(&key(c)))
                .collect();
            ensure!(
                eb.len() == missing.len() && missing.iter().all(|c| eb.contains(c)),
                "{t}: B's executions {eb:?} are not exactly the completions missing at the kill {missing:?}"
            );
        } else {
            ensure!(ea.is_empty(), "{t}: B's thread, but A ran {ea:?}");
            ensure!(
                eb.len() == final_done.len() && final_done.iter().all(|c| eb.contains(c)),
                "{t}: B's executions {eb:?} are not its completions {final_done:?}"
            );
        }
    }
    eprintln!(
        "two processes: A won {} of {SHARED_RUNS} threads both started at once (the other start refused: {} with RunActive, {conflicts} with a head conflict) and the {LATE_RUNS} late ones (B refused with RunActive), was killed with {durable_total} of its completions durable and {} runs unfinished; B recovered them",
        won_by_a.len() - OWN_RUNS - LATE_RUNS,
        SHARED_RUNS - conflicts,
        unfinished.len()
    );
    Ok(())
}
