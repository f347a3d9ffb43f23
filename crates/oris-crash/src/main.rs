//! `oris-crash`: the process the crash test (`tests/crash.rs`) kills with SIGKILL. Its
//! `serve` and `worker` modes (module `remote`) are the server and the remote worker
//! processes of the remote execution tests (`tests/remote.rs`).
//!
//! It runs one of six graphs on a SQLite file or in a PostgreSQL schema (`--db
//! postgres://… --pg-schema NAME`), records every node execution (and every
//! execution of a recorded step's body) in a marks file, and can stop at a named point —
//! printing `PAUSED <point>` on stdout and then blocking forever — so the test can kill it at
//! exactly that point. In `recover` mode it opens the same file, lets [`Engine::recover`]
//! finish whatever was unfinished, and prints the thread's final state as one JSON line; in
//! `resume` mode it answers an interrupt ([`GraphHandle::resume`]) and drives the run on; in
//! `send` mode it sends an external event ([`Engine::send_event`]).
//! A run left `waiting` on a durable timer (or a wait deadline) due within [`WAIT_LIMIT`]
//! is then waited for — the engine wakes it in this process — until it ends, is
//! interrupted or waits for an event only; in `send` mode a run that was waiting when the
//! event was sent is waited for the same way.
//!
//! ```text
//! oris-crash --db PATH|postgres://… [--pg-schema S] --marks PATH \
//!     --graph linear|fanout|loop|approval|sleeper|payment \
//!     --thread T (start|recover|resume|send) [--pause-at POINT] [--yields N] \
//!     [--durability MODE] [--snapshot-every N] [--value V] [--interrupt ID] [--key K] \
//!     [--sleep-ms N] [--node-ms N] [--gate PATH] \
//!     [--threads T1,T2,… [--recover-gate PATH] [--late-threads T,… --late-gate PATH]]
//! ```
//!
//! With `--threads` (linear graph only) one process runs many threads: `start` starts a
//! run on each concurrently (a refused start — `RunActive` because another process
//! runs the thread, or a store `Conflict` when both created the thread at once — is
//! reported as `{"error": "run_active" | "conflict"}`), then — with `--recover-gate`
//! — waits for that file and recovers every unfinished run of the store, including other
//! (killed) processes' runs; `recover` recovers them in a fresh process. `--gate` prints
//! `READY` and waits for a file before starting, so two processes start together;
//! `--node-ms` makes every node sleep, so their runs overlap; `--late-threads` are started
//! once the file `--late-gate` exists (when another process's runs on them are active). Commits (and pause points
//! counting them) are counted over all the process's runs.
//!
//! Graphs (`../shared/brief/WORKLOADS.md`):
//! - `linear`: W1, `n0 → … → n9`; final `counter == 10`, `log == [n0 … n9]`.
//! - `fanout`: W2, `fan → w0 … w7 → join`; final `counter == 9`, results `w0 … w7`. In
//!   `start` mode worker `wi` waits until `i` worker completions are committed, so every
//!   worker completion is its own commit, in order, while all eight still run in one
//!   superstep — which makes "k workers durable, the rest not" a well-defined point.
//! - `loop`: W4's shape with 30 iterations of `step`; final `counter == 30`, 30 items.
//! - `approval`: `a → b → c`, where `b` runs `step("charge")`, then `interrupt("approve?")`,
//!   then `step("notify")`; final `log == [a, b, c]`, `steps == [charge, notify]` (the
//!   recorded results: the tokens of the step body executions that were recorded) and
//!   `answer` the resume value.
//! - `sleeper`: `a → nap → c`, where `nap` runs `step("before-sleep")`, then
//!   `ctx.sleep(--sleep-ms)` on the system clock, then `step("after-sleep")`; final
//!   `log == [a, nap, c]`, `steps == [before-sleep, after-sleep]`.
//! - `payment`: `a → pay → c`, where `pay` runs `step("invoice")`, then
//!   `wait_for_event::<String>("paid", --sleep-ms)`, then `step("receipt")`; final
//!   `log == [a, pay, c]`, `steps == [invoice, receipt]`, `answer` the event's payload (or
//!   `timed out`).
//!
//! `resume` answers `--interrupt ID` (or the single pending interrupt of the thread's run)
//! with the string `--value`; a refused answer (conflict, not pending, unknown) is printed
//! as `"resume_error"`, not a failure. `send` sends the event `paid` with the string
//! `--value` as payload and `--key` as idempotency key, if given.
//!
//! Marks file lines (each written with one `write` on a file opened for append, so a
//! SIGKILL never tears a line):
//! - `exec <thread> <superstep> <task> <node> <attempt>`: a node body ran to its end (written
//!   before the node returns its update);
//! - `enter <thread> <superstep> <task> <node> <attempt>`: a node body of the `approval`,
//!   `sleeper` or `payment` graph started (also executions that pause at an interrupt, a
//!   sleep or a wait);
//! - `exec-step <thread> <superstep> <task> <node> <attempt> <step> <token>`: the body of a
//!   recorded step ran (its side effect); it returns `<token>` (`<step>#<pid>.<n>`), unique to
//!   this execution, so the recorded result names the execution that was recorded;
//! - `commit <n> <first-seq>..<last-seq>`: the n-th commit of this process was confirmed.
//!   Informational only: the store's timeline is the ground truth of what committed.
//!
//! Pause points (`--pause-at`; in `recover` mode too, with commits counted from 1 in that
//! process and fan-out workers not serialized):
//! - `node:<name>[@<superstep>]`: inside the node body, before its exec mark;
//! - `after-node:<name>[@<superstep>]`: after the exec mark, before the node returns (the
//!   node finished, its completion is not committed);
//! - `before-commit:<n>`: before the n-th commit reaches the store (1 = `RunStarted`);
//! - `after-commit:<n>`: after the store confirmed the n-th commit, before the driver goes on;
//! - `fanout-after:<k>`: before the commit that would make more than `k` worker
//!   completions durable (counting the ones this process committed);
//! - `after-step-body:<step>[@<superstep>]`: inside a recorded step's body, after its
//!   `exec-step` mark, before the body returns (the step ran, its record is not committed);
//! - `returned`: after the mode's call (`start`, `recover`, `resume`, `send`) returned, before
//!   waiting for a `waiting` run — e.g. with a durable timer pending in this process.
//!
//! In `resume` mode the value is stored (`Store::answer_interrupt`) before the first
//! commit of the process, which carries `InterruptResumed`: `before-commit:1` there is "the
//! value is durable, the run has not continued". Likewise in `send` mode the event is stored
//! (`Store::deliver`) before the first commit, which continues the waiting run.

mod remote;

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use oris::event::EventBody;
use oris::store::{Commit, PostgresOptions, PostgresStore, SqliteOptions, SqliteStore, Store};
use oris::{
    CompiledGraph, Context, Durability, END, Engine, EngineOptions, Error, GraphHandle,
    InterruptId, NodeError, Observer, RecoveryReport, RunOutcome, RunStatus, START, State,
    StateGraph, ThreadId, Timestamp,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

/// Iterations of the `loop` graph.
const LOOP_STEPS: i64 = 30;
/// Workers of the `fanout` graph.
const WORKERS: u32 = 8;
/// How long a process waits for a `waiting` run to be woken and to end; runs whose timer
/// is due later are not waited for.
const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// Runs a graph on a SQLite file and stops where the crash test wants to kill it.
#[derive(Debug, Parser)]
#[command(name = "oris-crash")]
struct Cli {
    /// The store: a SQLite file, or a `postgres://…` URL (with `--pg-schema`).
    #[arg(long)]
    db: String,
    /// The PostgreSQL schema holding the tables (created if missing); default `public`.
    #[arg(long)]
    pg_schema: Option<String>,
    /// The marks file (appended to).
    #[arg(long)]
    marks: PathBuf,
    /// Which graph.
    #[arg(long, value_enum)]
    graph: GraphKind,
    /// The thread to run.
    #[arg(long, default_value = "crash-thread")]
    thread: String,
    /// `linear` graph only: run on each of these threads instead of `--thread` — `start`
    /// starts a run on every one of them concurrently (a refused start is reported, not a
    /// failure); `recover` recovers every unfinished run. Prints one JSON line with every
    /// thread's outcome and final state.
    #[arg(long, value_delimiter = ',')]
    threads: Vec<String>,
    /// Print `READY` once the store is open, then wait until this file exists before the
    /// mode's action (to start several processes at the same instant).
    #[arg(long)]
    gate: Option<PathBuf>,
    /// With `--threads` in `start` mode: once every start returned, wait until this file
    /// exists, then recover every unfinished run of the store (other processes' too).
    #[arg(long)]
    recover_gate: Option<PathBuf>,
    /// With `--threads` in `start` mode: these threads (of `--threads`) are started only
    /// once the file `--late-gate` exists.
    #[arg(long, value_delimiter = ',')]
    late_threads: Vec<String>,
    /// See `--late-threads`.
    #[arg(long)]
    late_gate: Option<PathBuf>,
    /// How long every node sleeps before it finishes, in milliseconds.
    #[arg(long, default_value_t = 0)]
    node_ms: u64,
    /// Start a run on the thread, or recover every unfinished run.
    #[arg(value_enum)]
    mode: Mode,
    /// Where to stop and wait for the kill. Commits are counted from 1 in each process.
    #[arg(long)]
    pause_at: Option<Pause>,
    /// How many times each node yields to the scheduler before it finishes.
    #[arg(long, default_value_t = 0)]
    yields: u32,
    /// Durability of the runs: sync, batched or exit.
    #[arg(long, default_value = "sync")]
    durability: Durability,
    /// Snapshot the state every this many supersteps (the engine's default if unset).
    #[arg(long)]
    snapshot_every: Option<u32>,
    /// `resume`: the value to answer the interrupt with; `send`: the event's payload (both
    /// as a JSON string).
    #[arg(long)]
    value: Option<String>,
    /// `resume`: the interrupt to answer; default the single pending one of the thread.
    #[arg(long)]
    interrupt: Option<InterruptId>,
    /// `send`: the event's idempotency key.
    #[arg(long)]
    key: Option<String>,
    /// How long the `sleeper` graph's node sleeps (durably, on the system clock), and the
    /// timeout of the `payment` graph's wait.
    #[arg(long, default_value_t = 300)]
    sleep_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GraphKind {
    Linear,
    Fanout,
    Loop,
    Approval,
    Sleeper,
    Payment,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Start,
    Recover,
    Resume,
    Send,
}

/// A node, optionally only in one superstep (`step@15`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeAt {
    name: String,
    superstep: Option<u32>,
}

impl NodeAt {
    fn matches(&self, ctx: &Context) -> bool {
        self.name == ctx.node() && self.superstep.is_none_or(|s| s == ctx.superstep())
    }

    /// For a step: the name is the step's.
    fn matches_step(&self, step: &str, ctx: &Context) -> bool {
        self.name == step && self.superstep.is_none_or(|s| s == ctx.superstep())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pause {
    Node(NodeAt),
    AfterNode(NodeAt),
    BeforeCommit(u64),
    AfterCommit(u64),
    FanoutAfter(u32),
    AfterStepBody(NodeAt),
    Returned,
}

impl FromStr for Pause {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "returned" {
            return Ok(Pause::Returned);
        }
        let (kind, arg) = s
            .split_once(':')
            .ok_or_else(|| format!("pause point `{s}` has no `:`"))?;
        let node_at = || -> Result<NodeAt, String> {
            let (name, superstep) = match arg.split_once('@') {
                Some((n, at)) => (n, Some(at.parse().map_err(|e| format!("`{at}`: {e}"))?)),
                None => (arg, None),
            };
            if name.is_empty() {
                return Err(format!("pause point `{s}` names no node"));
            }
            Ok(NodeAt {
                name: name.to_owned(),
                superstep,
            })
        };
        let number = |what: &str| format!("pause point `{s}`: `{arg}` is not {what}");
        Ok(match kind {
            "node" => Pause::Node(node_at()?),
            "after-node" => Pause::AfterNode(node_at()?),
            "before-commit" => {
                Pause::BeforeCommit(arg.parse().map_err(|_| number("a commit number"))?)
            }
            "after-commit" => {
                Pause::AfterCommit(arg.parse().map_err(|_| number("a commit number"))?)
            }
            "fanout-after" => {
                Pause::FanoutAfter(arg.parse().map_err(|_| number("a worker count"))?)
            }
            "after-step-body" => Pause::AfterStepBody(node_at()?),
            other => return Err(format!("unknown pause point kind `{other}`")),
        })
    }
}

impl fmt::Display for Pause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let node = |f: &mut fmt::Formatter<'_>, kind: &str, n: &NodeAt| match n.superstep {
            Some(s) => write!(f, "{kind}:{}@{s}", n.name),
            None => write!(f, "{kind}:{}", n.name),
        };
        match self {
            Pause::Node(n) => node(f, "node", n),
            Pause::AfterNode(n) => node(f, "after-node", n),
            Pause::BeforeCommit(n) => write!(f, "before-commit:{n}"),
            Pause::AfterCommit(n) => write!(f, "after-commit:{n}"),
            Pause::FanoutAfter(k) => write!(f, "fanout-after:{k}"),
            Pause::AfterStepBody(n) => node(f, "after-step-body", n),
            Pause::Returned => f.write_str("returned"),
        }
    }
}

/// What every node and the observer share.
#[derive(Debug)]
struct Env {
    marks: PathBuf,
    pause: Option<Pause>,
    yields: u32,
    /// Committed worker completions of the fan-out; `Some` when workers are serialized.
    workers: Option<watch::Receiver<u32>>,
    /// The `sleeper` graph's durable sleep and the `payment` graph's wait timeout.
    sleep: Duration,
    /// Step body executions of this process, for their tokens.
    step_bodies: AtomicU64,
    /// How long every node sleeps (on the tokio clock) before its exec mark.
    node_delay: Duration,
}

impl Env {
    /// Appends one line to the marks file with a single write.
    fn mark(&self, line: &str) -> std::io::Result<()> {
        append_line(&self.marks, line)
    }

    /// Tells the parent where we stopped and waits for its SIGKILL.
    fn pause_here(&self) -> ! {
        let point = self
            .pause
            .as_ref()
            .expect("invariant: pausing only at a configured pause point");
        let mut out = std::io::stdout().lock();
        // If the parent is gone there is nobody to kill us: exit rather than hang.
        if writeln!(out, "PAUSED {point}")
            .and_then(|()| out.flush())
            .is_err()
        {
            std::process::exit(3);
        }
        drop(out);
        loop {
            std::thread::park();
        }
    }

    /// The common body of every node: wait for its turn (fan-out workers), yield, pause
    /// if asked to, record the execution, pause again if asked to.
    async fn node(&self, ctx: &Context) -> Result<(), NodeError> {
        if let (Some(rx), Some(i)) = (&self.workers, worker_index(ctx.node())) {
            rx.clone()
                .wait_for(|done| *done >= i)
                .await
                .map_err(|_| NodeError::permanent("worker gate closed"))?;
        }
        for _ in 0..self.yields {
            tokio::task::yield_now().await;
        }
        if !self.node_delay.is_zero() {
            tokio::time::sleep(self.node_delay).await;
        }
        if let Some(Pause::Node(at)) = &self.pause
            && at.matches(ctx)
        {
            self.pause_here();
        }
        let line = format!(
            "exec {} {} {} {} {}",
            ctx.thread_id(),
            ctx.superstep(),
            ctx.task(),
            ctx.node(),
            ctx.attempt()
        );
        self.mark(&line)
            .map_err(|e| NodeError::permanent(format!("cannot write the marks file: {e}")))?;
        if let Some(Pause::AfterNode(at)) = &self.pause
            && at.matches(ctx)
        {
            self.pause_here();
        }
        Ok(())
    }
}

impl Env {
    /// Records that a node body started (`approval`, `sleeper` and `payment` graphs).
    fn enter(&self, ctx: &Context) -> Result<(), NodeError> {
        let line = format!(
            "enter {} {} {} {} {}",
            ctx.thread_id(),
            ctx.superstep(),
            ctx.task(),
            ctx.node(),
            ctx.attempt()
        );
        self.mark(&line)
            .map_err(|e| NodeError::permanent(format!("cannot write the marks file: {e}")))
    }

    /// The body of recorded step `step`: its side effect is an `exec-step` mark; it returns
    /// a token unique to this execution. Pauses after the mark at `after-step-body:<step>`.
    fn step_body(
        self: &Arc<Self>,
        ctx: &Context,
        step: &'static str,
    ) -> impl Future<Output = Result<String, NodeError>> + Send + use<> {
        let env = self.clone();
        let ctx = ctx.clone();
        async move {
            let n = env.step_bodies.fetch_add(1, Ordering::SeqCst) + 1;
            let token = format!("{step}#{}.{n}", std::process::id());
            let line = format!(
                "exec-step {} {} {} {} {} {step} {token}",
                ctx.thread_id(),
                ctx.superstep(),
                ctx.task(),
                ctx.node(),
                ctx.attempt()
            );
            env.mark(&line)
                .map_err(|e| NodeError::permanent(format!("cannot write the marks file: {e}")))?;
            if let Some(Pause::AfterStepBody(at)) = &env.pause
                && at.matches_step(step, &ctx)
            {
                env.pause_here();
            }
            Ok(token)
        }
    }
}

fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write call: O_APPEND makes it land whole at the end; a short write of a line
    // this small does not happen on a local file, and would be an error here.
    let n = f.write(buf.as_bytes())?;
    if n != buf.len() {
        return Err(std::io::Error::other(format!(
            "short write to the marks file: {n} of {} bytes",
            buf.len()
        )));
    }
    Ok(())
}

/// `wi` → `i` for fan-out workers.
fn worker_index(node: &str) -> Option<u32> {
    node.strip_prefix('w')?.parse().ok()
}

fn worker_completions(commit: &Commit) -> u32 {
    commit
        .events
        .iter()
        .filter(|e| {
            matches!(&e.body, EventBody::NodeCompleted { node, .. } if worker_index(node).is_some())
        })
        .count() as u32
}

/// Counts commits, records them, releases fan-out workers, and pauses at commit points.
struct Hooks {
    env: Arc<Env>,
    commits: AtomicU64,
    workers: watch::Sender<u32>,
}

impl Observer for Hooks {
    fn before_commit(&self, commit: &Commit) {
        let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        match &self.env.pause {
            Some(Pause::BeforeCommit(at)) if *at == n => self.env.pause_here(),
            Some(Pause::FanoutAfter(k))
                if *self.workers.borrow() + worker_completions(commit) > *k =>
            {
                self.env.pause_here()
            }
            _ => {}
        }
    }

    fn after_commit(&self, commit: &Commit) {
        let n = self.commits.load(Ordering::SeqCst);
        let (first, last) = match (commit.events.first(), commit.events.last()) {
            (Some(f), Some(l)) => (f.seq.0, l.seq.0),
            _ => (0, 0),
        };
        if let Err(e) = self.env.mark(&format!("commit {n} {first}..{last}")) {
            eprintln!("oris-crash: cannot write the marks file: {e}");
        }
        let w = worker_completions(commit);
        if w > 0 {
            self.workers.send_modify(|done| *done += w);
        }
        if self.env.pause == Some(Pause::AfterCommit(n)) {
            self.env.pause_here();
        }
    }
}

/// W1 and W4's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, State)]
struct Doc {
    counter: i64,
    #[reducer(append)]
    log: Vec<String>,
}

/// W2's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, State)]
struct Fan {
    counter: i64,
    #[reducer(append)]
    results: Vec<String>,
}

/// The `approval`, `sleeper` and `payment` graphs' state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, State)]
struct Flow {
    /// The nodes that completed, in order.
    #[reducer(append)]
    log: Vec<String>,
    /// The results of the recorded steps, in call order.
    #[reducer(append)]
    steps: Vec<String>,
    /// The resume value (`approval`) or the event received (`payment`).
    answer: String,
}

/// A node of the `approval`, `sleeper` and `payment` graphs that only records itself.
fn plain_node(
    env: &Arc<Env>,
) -> impl Fn(
    Flow,
    Context,
) -> std::pin::Pin<Box<dyn Future<Output = Result<FlowUpdate, NodeError>> + Send>>
+ Send
+ Sync
+ 'static {
    let env = env.clone();
    move |_s: Flow, ctx: Context| {
        let env = env.clone();
        Box::pin(async move {
            env.enter(&ctx)?;
            env.node(&ctx).await?;
            Ok(FlowUpdate::default().log(vec![ctx.node().to_owned()]))
        })
    }
}

fn approval_graph(env: &Arc<Env>) -> anyhow::Result<CompiledGraph<Flow>> {
    let e = env.clone();
    Ok(StateGraph::<Flow>::new("crash-approval", "1")
        .node("a", plain_node(env))
        .node("b", move |_s: Flow, ctx: Context| {
            let env = e.clone();
            async move {
                env.enter(&ctx)?;
                let charge: String = ctx.step("charge", env.step_body(&ctx, "charge")).await?;
                let answer: String = ctx.interrupt("approve?").await?;
                let notify: String = ctx.step("notify", env.step_body(&ctx, "notify")).await?;
                env.node(&ctx).await?;
                Ok(FlowUpdate::default()
                    .log(vec!["b".to_owned()])
                    .steps(vec![charge, notify])
                    .answer(answer))
            }
        })
        .node("c", plain_node(env))
        .edge(START, "a")
        .edge("a", "b")
        .edge("b", "c")
        .edge("c", END)
        .compile()?)
}

fn sleeper_graph(env: &Arc<Env>) -> anyhow::Result<CompiledGraph<Flow>> {
    let e = env.clone();
    Ok(StateGraph::<Flow>::new("crash-sleeper", "1")
        .node("a", plain_node(env))
        .node("nap", move |_s: Flow, ctx: Context| {
            let env = e.clone();
            async move {
                env.enter(&ctx)?;
                let before: String = ctx
                    .step("before-sleep", env.step_body(&ctx, "before-sleep"))
                    .await?;
                ctx.sleep(env.sleep).await?;
                let after: String = ctx
                    .step("after-sleep", env.step_body(&ctx, "after-sleep"))
                    .await?;
                env.node(&ctx).await?;
                Ok(FlowUpdate::default()
                    .log(vec!["nap".to_owned()])
                    .steps(vec![before, after]))
            }
        })
        .node("c", plain_node(env))
        .edge(START, "a")
        .edge("a", "nap")
        .edge("nap", "c")
        .edge("c", END)
        .compile()?)
}

fn payment_graph(env: &Arc<Env>) -> anyhow::Result<CompiledGraph<Flow>> {
    let e = env.clone();
    Ok(StateGraph::<Flow>::new("crash-payment", "1")
        .node("a", plain_node(env))
        .node("pay", move |_s: Flow, ctx: Context| {
            let env = e.clone();
            async move {
                env.enter(&ctx)?;
                let invoice: String = ctx.step("invoice", env.step_body(&ctx, "invoice")).await?;
                let paid: Option<String> = ctx.wait_for_event("paid", env.sleep).await?;
                let receipt: String = ctx.step("receipt", env.step_body(&ctx, "receipt")).await?;
                env.node(&ctx).await?;
                Ok(FlowUpdate::default()
                    .log(vec!["pay".to_owned()])
                    .steps(vec![invoice, receipt])
                    .answer(paid.unwrap_or_else(|| "timed out".to_owned())))
            }
        })
        .node("c", plain_node(env))
        .edge(START, "a")
        .edge("a", "pay")
        .edge("pay", "c")
        .edge("c", END)
        .compile()?)
}

fn linear_graph(env: &Arc<Env>) -> anyhow::Result<CompiledGraph<Doc>> {
    let mut g = StateGraph::<Doc>::new("crash-linear", "1");
    for i in 0..10 {
        let env = env.clone();
        g = g.node(format!("n{i}"), move |s: Doc, ctx: Context| {
            let env = env.clone();
            async move {
                env.node(&ctx).await?;
                Ok(DocUpdate::default()
                    .counter(s.counter + 1)
                    .log(vec![ctx.node().to_owned()]))
            }
        });
    }
    g = g.edge(START, "n0");
    for i in 0..9 {
        g = g.edge(format!("n{i}"), format!("n{}", i + 1));
    }
    Ok(g.edge("n9", END).compile()?)
}

fn fanout_graph(env: &Arc<Env>) -> anyhow::Result<CompiledGraph<Fan>> {
    let e = env.clone();
    let mut g =
        StateGraph::<Fan>::new("crash-fanout", "1").node("fan", move |s: Fan, ctx: Context| {
            let env = e.clone();
            async move {
                env.node(&ctx).await?;
                Ok(FanUpdate::default().counter(s.counter + 1))
            }
        });
    for i in 0..WORKERS {
        let env = env.clone();
        g = g.node(format!("w{i}"), move |_s: Fan, ctx: Context| {
            let env = env.clone();
            async move {
                env.node(&ctx).await?;
                Ok(FanUpdate::default().results(vec![ctx.node().to_owned()]))
            }
        });
    }
    let e = env.clone();
    g = g
        .node("join", move |s: Fan, ctx: Context| {
            let env = e.clone();
            async move {
                env.node(&ctx).await?;
                Ok(FanUpdate::default().counter(s.counter + s.results.len() as i64))
            }
        })
        .edge(START, "fan");
    for i in 0..WORKERS {
        g = g.edge("fan", format!("w{i}"));
    }
    Ok(g.join((0..WORKERS).map(|i| format!("w{i}")), "join")
        .edge("join", END)
        .compile()?)
}

fn loop_graph(env: &Arc<Env>) -> anyhow::Result<CompiledGraph<Doc>> {
    let env = env.clone();
    Ok(StateGraph::<Doc>::new("crash-loop", "1")
        .node("step", move |s: Doc, ctx: Context| {
            let env = env.clone();
            async move {
                env.node(&ctx).await?;
                let i = s.counter;
                Ok(DocUpdate::default()
                    .counter(i + 1)
                    .log(vec![format!("{i:04}{}", "x".repeat(60))]))
            }
        })
        .edge(START, "step")
        .conditional_edge("step", ["step", END], |s: &Doc| {
            if s.counter < LOOP_STEPS { "step" } else { END }
        })
        .compile()?)
}

/// The thread's final state, verification and latest run, as JSON.
async fn final_state<S: State>(h: &GraphHandle<S>, thread: &str) -> anyhow::Result<Value> {
    let st = match h.state(thread).await {
        Ok(st) => st,
        Err(Error::ThreadNotFound(_)) => {
            return Ok(
                json!({"exists": false, "state": null, "verify_consistent": null,
                "hash": null, "run_status": null}),
            );
        }
        Err(e) => return Err(e).context("reading the thread's state"),
    };
    let v = h.verify(thread).await.context("verifying the thread")?;
    Ok(json!({
        "exists": true,
        "state": serde_json::to_value(&st.values)?,
        "verify_consistent": v.is_consistent(),
        "hash": v.replayed_hash,
        "run_status": st.run.map(|r| r.status.kind().as_str()),
    }))
}

fn report_json(r: &RecoveryReport) -> Value {
    json!({
        "resumed": r.resumed.iter().map(|(t, run, s)| json!({
            "thread": t.to_string(), "run": run.to_string(), "status": s.as_str(),
        })).collect::<Vec<_>>(),
        "skipped": r.skipped.iter().map(|(t, run, e)| json!({
            "thread": t.to_string(), "run": run.to_string(), "error": e.to_string(),
        })).collect::<Vec<_>>(),
    })
}

fn outcome_kind<S>(o: &RunOutcome<S>) -> &'static str {
    match o {
        RunOutcome::Completed { .. } => "completed",
        RunOutcome::Failed { .. } => "failed",
        RunOutcome::Cancelled { .. } => "cancelled",
        RunOutcome::Interrupted { .. } => "interrupted",
        RunOutcome::Waiting { .. } => "waiting",
        _ => "unknown",
    }
}

/// `resume` mode: answers the interrupt and drives the run. Returns the outcome's kind, or
/// the refusal (`resume_conflict`, `interrupt_not_pending`, `interrupt_not_found`).
async fn resume(h: &GraphHandle<Flow>, cli: &Cli) -> anyhow::Result<Value> {
    let value = cli
        .value
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("`resume` needs --value"))?;
    let id = match cli.interrupt {
        Some(id) => id,
        None => {
            let st = h.state(&cli.thread).await.context("reading the thread")?;
            match st.run.map(|r| r.status) {
                Some(RunStatus::Interrupted { interrupts }) if interrupts.len() == 1 => {
                    interrupts[0].interrupt_id
                }
                other => anyhow::bail!(
                    "no single pending interrupt to resume; the run's status is {other:?}"
                ),
            }
        }
    };
    Ok(match h.resume(id, value).await {
        Ok(o) => json!({"interrupt": id.to_string(), "outcome": outcome_kind(&o)}),
        Err(e) => {
            let kind = match &e {
                Error::ResumeConflict(_) => "resume_conflict",
                Error::InterruptNotPending { .. } => "interrupt_not_pending",
                Error::InterruptNotFound(_) => "interrupt_not_found",
                _ => return Err(e).context("resuming"),
            };
            json!({"interrupt": id.to_string(), "resume_error": kind, "message": e.to_string()})
        }
    })
}

/// Whether the thread's latest run waits: at all (`soon == false`), or on a timer or
/// deadline due within [`WAIT_LIMIT`] (`soon == true`; a run waiting only for an external
/// event, or for a far deadline, is not worth waiting for).
async fn is_waiting(engine: &Engine, thread: &ThreadId, soon: bool) -> anyhow::Result<bool> {
    match engine.latest_run(thread).await {
        Ok(run) => Ok(match run.status {
            RunStatus::Waiting { until, .. } => {
                !soon || until.is_some_and(|u| u < Timestamp::now().plus(WAIT_LIMIT))
            }
            _ => false,
        }),
        Err(Error::ThreadNotFound(_)) => Ok(false),
        Err(e) => Err(e).context("reading the latest run"),
    }
}

/// Waits (event-driven, bounded) until the engine of this process continued the thread's
/// waiting run and it ended, paused at an interrupt or waits for an event.
async fn settle_waiting(engine: &Engine, thread: &ThreadId) -> anyhow::Result<()> {
    let settled = |s: &RunStatus| {
        !matches!(
            s,
            RunStatus::Waiting { .. } | RunStatus::Running | RunStatus::Queued
        )
    };
    tokio::time::timeout(WAIT_LIMIT, engine.wait_for(thread, settled))
        .await
        .map_err(|_| anyhow::anyhow!("the waiting run did not end within {WAIT_LIMIT:?}"))?
        .context("waiting for the run")?;
    Ok(())
}

/// Opens the store `--db` names: PostgreSQL for a `postgres://` or `postgresql://` URL (in
/// `--pg-schema`), else a SQLite file.
async fn open(cli: &Cli) -> anyhow::Result<Arc<dyn Store>> {
    if cli.db.starts_with("postgres://") || cli.db.starts_with("postgresql://") {
        let store = PostgresStore::connect(
            &cli.db,
            PostgresOptions {
                schema: cli.pg_schema.clone(),
                ..PostgresOptions::default()
            },
        )
        .await
        .with_context(|| format!("connecting to {}", oris::store::redact_url(&cli.db)))?;
        return Ok(Arc::new(store));
    }
    anyhow::ensure!(
        cli.pg_schema.is_none(),
        "--pg-schema needs a postgres:// URL as --db"
    );
    let store = SqliteStore::open(&cli.db, SqliteOptions::default())
        .await
        .with_context(|| format!("opening {}", cli.db))?;
    Ok(Arc::new(store))
}

fn println_flush(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Polls (every 2 ms) until `path` exists.
async fn wait_for_file(path: &Path) {
    while !path.exists() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `--threads`: starts a `linear` run on every thread concurrently (`start`), or recovers
/// every unfinished run (`recover`; in `start` mode too after `--recover-gate`, printing
/// `STARTED` first). A refused start prints `REFUSED <thread> <kind> <message>` at once. At the end
/// it prints `{"mode", "threads": {thread: {"outcome"} | {"error", "message"}}, "report",
/// "finals": {thread: final state}}`.
async fn run_many(
    cli: &Cli,
    engine: &Engine,
    linear: &GraphHandle<Doc>,
    env: &Arc<Env>,
) -> anyhow::Result<()> {
    let mut line = json!({"mode": null, "threads": null, "report": null});
    match cli.mode {
        Mode::Start => {
            let mut tasks = tokio::task::JoinSet::new();
            for t in &cli.threads {
                let (h, t) = (linear.clone(), t.clone());
                let gate = cli
                    .late_gate
                    .clone()
                    .filter(|_| cli.late_threads.contains(&t));
                tasks.spawn(async move {
                    if let Some(gate) = gate {
                        wait_for_file(&gate).await;
                    }
                    let r = h.start(&t, Doc::default()).await;
                    (t, r)
                });
            }
            let mut threads = serde_json::Map::new();
            while let Some(joined) = tasks.join_next().await {
                let (t, r) = joined.context("a start task panicked")?;
                let v = match r {
                    Ok(o) => json!({"outcome": outcome_kind(&o), "run": o.run_id().to_string()}),
                    Err(e) => {
                        let kind = match &e {
                            Error::RunActive { .. } => "run_active",
                            // Lost the race to create the thread: the other start's
                            // `RunStarted` is the thread's head now.
                            Error::Store(oris::store::Error::Conflict { .. }) => "conflict",
                            _ => "other",
                        };
                        // At once, so a process killed later has told which starts were
                        // refused.
                        println_flush(&format!("REFUSED {t} {kind} {e}"))?;
                        json!({"error": kind, "message": e.to_string()})
                    }
                };
                threads.insert(t, v);
            }
            line["mode"] = json!("start");
            line["threads"] = Value::Object(threads);
            if let Some(gate) = &cli.recover_gate {
                println_flush("STARTED")?;
                wait_for_file(gate).await;
                let r = engine.recover().await.context("recovering")?;
                line["report"] = report_json(&r);
            }
        }
        Mode::Recover => {
            let r = engine.recover().await.context("recovering")?;
            line["mode"] = json!("recover");
            line["report"] = report_json(&r);
        }
        Mode::Resume | Mode::Send => anyhow::bail!("--threads supports start and recover only"),
    }
    if env.pause == Some(Pause::Returned) {
        env.pause_here();
    }
    let mut finals = serde_json::Map::new();
    for t in &cli.threads {
        finals.insert(t.clone(), final_state(linear, t).await?);
    }
    line["finals"] = Value::Object(finals);
    println_flush(&line.to_string())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (workers_tx, workers_rx) = watch::channel(0u32);
    let serialize_workers = cli.mode == Mode::Start && cli.graph == GraphKind::Fanout;
    let env = Arc::new(Env {
        marks: cli.marks.clone(),
        pause: cli.pause_at.clone(),
        yields: cli.yields,
        workers: serialize_workers.then_some(workers_rx),
        sleep: Duration::from_millis(cli.sleep_ms),
        step_bodies: AtomicU64::new(0),
        node_delay: Duration::from_millis(cli.node_ms),
    });
    let hooks = Arc::new(Hooks {
        env: env.clone(),
        commits: AtomicU64::new(0),
        workers: workers_tx,
    });
    let store = open(&cli).await?;
    let defaults = EngineOptions::default();
    let engine = Engine::with_options(
        store,
        EngineOptions {
            observer: Some(hooks),
            durability: cli.durability,
            snapshot_every: cli.snapshot_every.unwrap_or(defaults.snapshot_every),
            ..defaults
        },
    );
    // Every graph is registered so `recover` can continue any of them.
    let linear = engine.register(linear_graph(&env)?);
    let fanout = engine.register(fanout_graph(&env)?);
    let looped = engine.register(loop_graph(&env)?);
    let approval = engine.register(approval_graph(&env)?);
    let sleeper = engine.register(sleeper_graph(&env)?);
    let payment = engine.register(payment_graph(&env)?);
    if let Some(gate) = &cli.gate {
        println_flush("READY")?;
        wait_for_file(gate).await;
    }
    if !cli.threads.is_empty() {
        anyhow::ensure!(
            cli.graph == GraphKind::Linear,
            "--threads runs the linear graph only"
        );
        return run_many(&cli, &engine, &linear, &env).await;
    }
    let flow = match cli.graph {
        GraphKind::Approval => Some(&approval),
        GraphKind::Sleeper => Some(&sleeper),
        GraphKind::Payment => Some(&payment),
        _ => None,
    };
    let thread = cli.thread.as_str();
    let thread_id = ThreadId::new(thread)?;
    // In `send` mode: whether the run was waiting when the event was sent.
    let mut sent_to_waiting = false;

    let mut extra = serde_json::Map::new();
    match cli.mode {
        Mode::Start => {
            let (run, kind) = match cli.graph {
                GraphKind::Linear => {
                    let o = linear.start(thread, Doc::default()).await?;
                    (o.run_id(), outcome_kind(&o))
                }
                GraphKind::Fanout => {
                    let o = fanout.start(thread, Fan::default()).await?;
                    (o.run_id(), outcome_kind(&o))
                }
                GraphKind::Loop => {
                    let o = looped.start(thread, Doc::default()).await?;
                    (o.run_id(), outcome_kind(&o))
                }
                GraphKind::Approval | GraphKind::Sleeper | GraphKind::Payment => {
                    let h = flow.expect("invariant: a flow graph");
                    let o = h.start(thread, Flow::default()).await?;
                    (o.run_id(), outcome_kind(&o))
                }
            };
            extra.insert("started_run".into(), json!(run.to_string()));
            extra.insert("outcome".into(), json!(kind));
        }
        Mode::Recover => {
            extra.insert(
                "recover_started_at".into(),
                json!(Timestamp::now().as_millis()),
            );
            let r = engine.recover().await.context("recovering")?;
            extra.insert("report".into(), report_json(&r));
        }
        Mode::Resume => {
            let h = flow.ok_or_else(|| anyhow::anyhow!("`resume` needs --graph approval"))?;
            extra.insert("resume".into(), resume(h, &cli).await?);
        }
        Mode::Send => {
            let value = cli
                .value
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("`send` needs --value"))?;
            sent_to_waiting = is_waiting(&engine, &thread_id, false).await?;
            let d = engine
                .send_event(&thread_id, "paid", value, cli.key.clone())
                .await
                .context("sending the event")?;
            extra.insert(
                "send".into(),
                json!({"delivery": d.delivery_id.to_string(), "to_waiting": sent_to_waiting}),
            );
        }
    }
    if env.pause == Some(Pause::Returned) {
        env.pause_here();
    }
    let waited = sent_to_waiting || is_waiting(&engine, &thread_id, true).await?;
    if waited {
        settle_waiting(&engine, &thread_id).await?;
    }
    let mut line = match cli.graph {
        GraphKind::Linear => final_state(&linear, thread).await?,
        GraphKind::Fanout => final_state(&fanout, thread).await?,
        GraphKind::Loop => final_state(&looped, thread).await?,
        GraphKind::Approval => final_state(&approval, thread).await?,
        GraphKind::Sleeper => final_state(&sleeper, thread).await?,
        GraphKind::Payment => final_state(&payment, thread).await?,
    };
    line["mode"] = json!(match cli.mode {
        Mode::Start => "start",
        Mode::Recover => "recover",
        Mode::Resume => "resume",
        Mode::Send => "send",
    });
    line["waited"] = json!(waited);
    line["started_run"] = Value::Null;
    line["report"] = Value::Null;
    for (k, v) in extra {
        line[k.as_str()] = v;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn main() -> ExitCode {
    // `serve` and `worker`: the remote execution tests' processes (see `remote`).
    if let Some(code) = remote::main() {
        return code;
    }
    // One thread for everything: a pause that blocks it freezes the whole run (the SQLite
    // writer thread has nothing queued at any pause point), so the kill lands exactly there.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oris-crash: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(Cli::parse())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oris-crash: {e:#}");
            ExitCode::FAILURE
        }
    }
}
