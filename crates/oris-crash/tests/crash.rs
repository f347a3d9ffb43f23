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
use oris::event::{Event, EventBody, Task};
use oris::store::{SqliteOptions, SqliteStore, Store};
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
}

fn read_log(db: &Path) -> anyhow::Result<Log> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = SqliteStore::open(db, SqliteOptions::default())
            .await
            .with_context(|| format!("opening {}", db.display()))?;
        let thread = ThreadId::new(THREAD)?;
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
        drop(store);
        Ok(Log {
            exists: true,
            events,
            run_status,
            snapshot_at,
        })
    })
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
        other => format!("{other:?}"),
    };
    format!("{:>4} {} {body}", e.seq, e.run_id)
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

/// One `exec` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Exec {
    superstep: u32,
    task: u32,
    node: String,
    attempt: u32,
}

/// The exec lines of each segment of the marks file: before the first separator (the
/// first process), then after each separator (each recovery process).
fn read_marks(path: &Path) -> anyhow::Result<Vec<Vec<Exec>>> {
    let text = fs::read_to_string(path).context("reading the marks file")?;
    let mut segments = vec![Vec::new()];
    for line in text.lines() {
        if line == SEPARATOR {
            segments.push(Vec::new());
            continue;
        }
        let Some(rest) = line.strip_prefix("exec ") else {
            ensure!(
                line.starts_with("commit "),
                "unexpected marks line `{line}`"
            );
            continue;
        };
        let f: Vec<&str> = rest.split(' ').collect();
        let [thread, superstep, task, node, attempt] = f.as_slice() else {
            bail!("malformed exec line `{line}`");
        };
        ensure!(*thread == THREAD, "exec line of another thread: `{line}`");
        segments
            .last_mut()
            .expect("invariant: at least one segment")
            .push(Exec {
                superstep: superstep.parse()?,
                task: task.parse()?,
                node: (*node).to_owned(),
                attempt: attempt.parse()?,
            });
    }
    Ok(segments)
}

// --- one case ---------------------------------------------------------------------------

/// One case in its own directory, with everything needed to explain a failure.
struct Scene {
    _dir: tempfile::TempDir,
    path: PathBuf,
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
    fn new(graph: Graph, label: String) -> anyhow::Result<Scene> {
        let dir = tempfile::tempdir()?;
        Ok(Scene {
            path: dir.path().to_owned(),
            _dir: dir,
            graph,
            label,
            notes: Vec::new(),
            children: 0,
            kills: Vec::new(),
            after: None,
        })
    }

    fn db(&self) -> PathBuf {
        self.path.join("oris.db")
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
        cmd.arg("--db")
            .arg(self.db())
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

    /// Reads what the kill left durable from a copy of the database files, so the
    /// recovering child opens them exactly as the kill left them, and checks it against
    /// what the pause point promises.
    fn record_kill(
        &mut self,
        want: Option<(&str, Durable)>,
        extra: &[String],
    ) -> anyhow::Result<()> {
        let copy = self.path.join(format!("copy-{}", self.kills.len() + 1));
        fs::create_dir_all(&copy)?;
        for suffix in ["", "-wal"] {
            let src = PathBuf::from(format!("{}{suffix}", self.db().display()));
            if src.exists() {
                fs::copy(&src, copy.join(format!("oris.db{suffix}")))?;
            }
        }
        let log = read_log(&copy.join("oris.db"))?;
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
        self.after = Some(read_log(&self.db())?);
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
    let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    let mut failures = Vec::new();
    for faults in cases {
        let label = format!("{} {extra:?} / {faults:?}", graph.arg());
        let mut scene = Scene::new(graph, label.clone()).expect("temp dir");
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
    let mut reference =
        Scene::new(Graph::Loop, "loop / timing reference".to_owned()).expect("temp dir");
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
        let mut scene = Scene::new(Graph::Loop, label.clone()).expect("temp dir");
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
