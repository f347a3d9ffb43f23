//! Demo graphs that show the engine's behaviour: an approval flow with a conditional edge,
//! a recorded step and an interrupt; a fan-out/fan-in research flow with per-task input; a
//! node that fails twice before a retry succeeds; a reminder that sleeps durably; and a
//! batch of slow recorded steps, long enough to stop or kill a server in the middle of a
//! node. `oris demo` runs the first three in-process; `oris serve` serves all of them over
//! HTTP.

use std::collections::BTreeMap;
use std::time::Duration;

use oris::event::EventBody;
use oris::{
    CompiledGraph, END, Engine, GraphHandle, NodeError, NodePolicy, RetryPolicy, Route, RunOutcome,
    START, Seq, State, StateGraph, ThreadId,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An expense moving through review.
#[derive(Debug, Clone, Default, Serialize, Deserialize, State, ToSchema)]
// Inputs name only the fields they set; the rest keep their defaults.
#[serde(default)]
pub struct Expense {
    /// Amount in cents.
    pub amount_cents: i64,
    /// Risk score from 0 to 100.
    pub risk: i64,
    /// Final decision.
    pub decision: String,
    /// What happened, in order.
    #[reducer(append)]
    pub log: Vec<String>,
}

/// A research question fanned out to one task per topic.
#[derive(Debug, Clone, Default, Serialize, Deserialize, State, ToSchema)]
// Inputs name only the fields they set; the rest keep their defaults.
#[serde(default)]
pub struct Research {
    /// The question.
    pub question: String,
    /// Topics to research.
    pub topics: Vec<String>,
    /// Findings per topic.
    #[reducer(merge)]
    pub findings: BTreeMap<String, String>,
    /// The summary.
    pub summary: String,
}

/// A node that fails before it succeeds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, State, ToSchema)]
// Inputs name only the fields they set; the rest keep their defaults.
#[serde(default)]
pub struct Flaky {
    /// Attempts the flaky node needed.
    pub attempts: u32,
}

/// A reminder sent after a durable sleep.
#[derive(Debug, Clone, Default, Serialize, Deserialize, State, ToSchema)]
// Inputs name only the fields they set; the rest keep their defaults.
#[serde(default)]
pub struct Reminder {
    /// What to remind of.
    pub message: String,
    /// Seconds to wait before reminding.
    pub delay_secs: u64,
    /// The delivery receipt of the reminder, once sent.
    pub receipt: String,
}

/// A batch of slow steps, one per superstep: `work` runs `steps` times, each time a recorded
/// step that takes `delay_ms`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, State, ToSchema)]
// Inputs name only the fields they set; the rest keep their defaults.
#[serde(default)]
pub struct Batch {
    /// Steps to run, 1–1000 (0 means 1).
    pub steps: u32,
    /// Milliseconds each step takes, at most 60000.
    pub delay_ms: u64,
    /// Steps done so far.
    pub done: u32,
    /// What each step returned, in order.
    #[reducer(append)]
    pub log: Vec<String>,
}

/// Most steps a batch may ask for.
const BATCH_MAX_STEPS: u32 = 1000;
/// Longest delay of one batch step, in milliseconds.
const BATCH_MAX_DELAY_MS: u64 = 60_000;

/// The names of the graphs `oris serve` registers, in registration order.
pub const SERVED: [&str; 5] = ["expense-approval", "research", "flaky", "reminder", "batch"];

/// The demo graphs, compiled.
#[derive(Debug)]
pub struct DemoGraphs {
    pub expense: CompiledGraph<Expense>,
    pub research: CompiledGraph<Research>,
    pub flaky: CompiledGraph<Flaky>,
    pub reminder: CompiledGraph<Reminder>,
    pub batch: CompiledGraph<Batch>,
}

/// The demo graphs, registered on an engine.
#[derive(Debug)]
pub struct Demos {
    expense: GraphHandle<Expense>,
    research: GraphHandle<Research>,
    flaky: GraphHandle<Flaky>,
}

pub fn register(engine: &Engine) -> anyhow::Result<Demos> {
    let g = graphs()?;
    Ok(Demos {
        expense: engine.register(g.expense),
        research: engine.register(g.research),
        flaky: engine.register(g.flaky),
    })
}

pub fn graphs() -> anyhow::Result<DemoGraphs> {
    let expense = StateGraph::<Expense>::new("expense-approval", "1")
        .node("validate", |s: Expense, _ctx| async move {
            if s.amount_cents <= 0 {
                return Err(NodeError::permanent("amount must be positive"));
            }
            Ok(ExpenseUpdate::default().log(vec![format!("validated {} cents", s.amount_cents)]))
        })
        .node("score", |s: Expense, _ctx| async move {
            let risk = (s.amount_cents / 1000).min(100);
            Ok(ExpenseUpdate::default()
                .risk(risk)
                .log(vec![format!("risk {risk}")]))
        })
        .node("auto_approve", |_s: Expense, _ctx| async move {
            Ok(ExpenseUpdate::default()
                .decision("approved")
                .log(vec!["auto-approved".to_owned()]))
        })
        .node("escalate", |s: Expense, ctx| async move {
            // A recorded step: on re-execution after the resume it is not sent again.
            let ticket: String = ctx
                .step("notify_manager", async move {
                    Ok(format!("ticket-{}", s.amount_cents))
                })
                .await?;
            let answer: String = ctx
                .interrupt(&serde_json::json!({
                    "question": "approve this expense?",
                    "amount_cents": s.amount_cents,
                    "ticket": ticket,
                }))
                .await?;
            Ok(ExpenseUpdate::default()
                .decision(answer.clone())
                .log(vec![format!("manager answered `{answer}` on {ticket}")]))
        })
        .edge(START, "validate")
        .edge("validate", "score")
        .conditional_edge("score", ["auto_approve", "escalate"], |s: &Expense| {
            if s.risk < 50 {
                "auto_approve"
            } else {
                "escalate"
            }
        })
        .edge("auto_approve", END)
        .edge("escalate", END)
        .compile()?;
    let research = StateGraph::<Research>::new("research", "1")
        .node("plan", |s: Research, _ctx| async move {
            let topics = s
                .question
                .split_whitespace()
                .filter(|w| w.len() > 3)
                .map(str::to_lowercase)
                .collect::<Vec<_>>();
            Ok(ResearchUpdate::default().topics(topics))
        })
        .node("investigate", |_s: Research, ctx| async move {
            let topic: String = ctx
                .input()?
                .ok_or_else(|| NodeError::permanent("investigate needs a topic"))?;
            let finding = format!("{} facts about {topic}", topic.len());
            Ok(ResearchUpdate::default().findings(BTreeMap::from([(topic, finding)])))
        })
        .node("summarize", |s: Research, _ctx| async move {
            let summary = s.findings.values().cloned().collect::<Vec<_>>().join("; ");
            Ok(ResearchUpdate::default().summary(summary))
        })
        .edge(START, "plan")
        .conditional_edge("plan", ["investigate", END], |s: &Research| {
            s.topics
                .iter()
                .fold(Route::default(), |r, t| r.send("investigate", t))
        })
        .edge("investigate", "summarize")
        .edge("summarize", END)
        .compile()?;
    let flaky = StateGraph::<Flaky>::new("flaky", "1")
        .node_with(
            "call_partner",
            NodePolicy {
                retry: RetryPolicy::exponential(3).initial_interval(Duration::from_millis(20)),
                timeout: Some(Duration::from_secs(5)),
            },
            |_s: Flaky, ctx| async move {
                if ctx.attempt() < 3 {
                    return Err(NodeError::new(format!(
                        "partner unavailable (attempt {})",
                        ctx.attempt()
                    )));
                }
                Ok(FlakyUpdate::default().attempts(ctx.attempt()))
            },
        )
        .edge(START, "call_partner")
        .edge("call_partner", END)
        .compile()?;
    let reminder = StateGraph::<Reminder>::new("reminder", "1")
        .node("wait", |s: Reminder, ctx| async move {
            // A durable timer: the run is `waiting` and holds no task; it continues on time,
            // also after a restart of the server.
            ctx.sleep(Duration::from_secs(s.delay_secs)).await?;
            Ok(ReminderUpdate::default())
        })
        .node("remind", |s: Reminder, ctx| async move {
            let receipt: String = ctx
                .step("send_reminder", async move {
                    Ok(format!("sent `{}`", s.message))
                })
                .await?;
            Ok(ReminderUpdate::default().receipt(receipt))
        })
        .edge(START, "wait")
        .edge("wait", "remind")
        .edge("remind", END)
        .compile()?;
    let batch = StateGraph::<Batch>::new("batch", "1")
        .node("work", |s: Batch, ctx| async move {
            if s.steps > BATCH_MAX_STEPS || s.delay_ms > BATCH_MAX_DELAY_MS {
                return Err(NodeError::permanent(format!(
                    "a batch takes at most {BATCH_MAX_STEPS} steps of at most \
                     {BATCH_MAX_DELAY_MS} ms"
                )));
            }
            let (i, delay) = (s.done, Duration::from_millis(s.delay_ms));
            // The slow part is a recorded step: a node killed after it was recorded does
            // not do it again when the run continues.
            let item: String = ctx
                .step("work", async move {
                    tokio::time::sleep(delay).await;
                    Ok(format!("item {i}"))
                })
                .await?;
            Ok(BatchUpdate::default().done(i + 1).log(vec![item]))
        })
        .edge(START, "work")
        .conditional_edge("work", ["work", END], |s: &Batch| {
            if s.done < s.steps { "work" } else { END }
        })
        .compile()?;
    Ok(DemoGraphs {
        expense,
        research,
        flaky,
        reminder,
        batch,
    })
}

fn report<S: std::fmt::Debug>(thread: &str, outcome: &RunOutcome<S>) {
    match outcome {
        RunOutcome::Completed { run_id, state } => {
            println!("== {thread}: {run_id} completed\n   state: {state:?}")
        }
        RunOutcome::Failed { run_id, error } => println!("== {thread}: {run_id} failed: {error}"),
        RunOutcome::Cancelled { run_id, reason } => {
            println!("== {thread}: {run_id} cancelled: {reason}")
        }
        RunOutcome::Interrupted { run_id, interrupts } => {
            println!("== {thread}: {run_id} interrupted");
            for i in interrupts {
                println!(
                    "   waiting on {} from `{}`: {}",
                    i.interrupt_id, i.node, i.payload
                );
            }
        }
        RunOutcome::Waiting {
            run_id,
            until,
            events,
        } => {
            println!("== {thread}: {run_id} waiting until {until:?} for {events:?}")
        }
        other => println!("== {thread}: {}", other.run_id()),
    }
}

pub async fn run_all(engine: &Engine, demos: &Demos, prefix: &str) -> anyhow::Result<()> {
    let runs: [(String, _); 3] = [
        (format!("{prefix}-expense"), 0),
        (format!("{prefix}-research"), 1),
        (format!("{prefix}-flaky"), 2),
    ];
    for (thread, which) in runs {
        match which {
            0 => {
                // Large enough to be escalated: the run pauses at the manager's interrupt,
                // then the demo answers it as the manager would.
                let input = Expense {
                    amount_cents: 72_500,
                    ..Default::default()
                };
                let outcome = demos.expense.start(&thread, input).await?;
                report(&thread, &outcome);
                if let Some(pending) = outcome.interrupts().first() {
                    println!("   resuming {} with \"approved\"", pending.interrupt_id);
                    let done = demos
                        .expense
                        .resume(pending.interrupt_id, "approved")
                        .await?;
                    report(&thread, &done);
                }
            }
            1 => {
                let input = Research {
                    question: "How do durable workflow engines recover".into(),
                    ..Default::default()
                };
                report(&thread, &demos.research.start(&thread, input).await?);
            }
            _ => report(
                &thread,
                &demos.flaky.start(&thread, Flaky::default()).await?,
            ),
        }
        print_timeline(engine, &ThreadId::new(&thread)?, Seq::ZERO, false).await?;
        println!();
    }
    Ok(())
}

pub async fn print_timeline(
    engine: &Engine,
    thread: &ThreadId,
    after: Seq,
    json: bool,
) -> anyhow::Result<()> {
    let events = engine.timeline(thread, after, usize::MAX).await?;
    if events.is_empty() {
        anyhow::bail!("thread `{thread}` has no events");
    }
    for e in events {
        let kind = e.body.kind();
        let detail = match &e.body {
            EventBody::RunStarted { input, .. } => format!("input {}", input.json()),
            EventBody::NodeCompleted {
                update, boundary, ..
            } => match boundary {
                Some(b) => format!(
                    "update {} → next [{}]",
                    update.json(),
                    b.next
                        .iter()
                        .map(|t| t.node())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => format!("update {}", update.json()),
            },
            EventBody::NodeFailed {
                error, retry_at, ..
            } => {
                format!(
                    "{error}{}",
                    if retry_at.is_some() {
                        " (retry scheduled)"
                    } else {
                        ""
                    }
                )
            }
            EventBody::RunFailed { error } => error.to_string(),
            EventBody::RunCancelled { reason } => reason.clone(),
            EventBody::StepRecorded { name, result, .. } => match result {
                oris::event::StepResult::Ok(v) => format!("step `{name}` → {}", v.json()),
                oris::event::StepResult::Err(f) => format!("step `{name}` failed: {f}"),
            },
            EventBody::InterruptRaised {
                interrupt_id,
                payload,
                ..
            } => format!("{interrupt_id} asks {}", payload.json()),
            EventBody::InterruptResumed {
                interrupt_id,
                value,
            } => format!("{interrupt_id} answered {}", value.json()),
            EventBody::RunSuspended { interrupts, .. } => {
                format!("waiting on {} interrupt(s)", interrupts.len())
            }
            _ => String::new(),
        };
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "seq": e.seq, "at": e.at, "run_id": e.run_id, "kind": kind.as_str(),
                    "node": e.body.node(), "attempt": e.body.attempt(), "detail": detail,
                })
            );
        } else {
            println!(
                "  #{:<4} {:<15} {:<14} {:<3} {}",
                e.seq.0,
                kind.as_str(),
                e.body.node().unwrap_or("-"),
                e.body.attempt().map(|a| a.to_string()).unwrap_or_default(),
                detail
            );
        }
    }
    Ok(())
}
