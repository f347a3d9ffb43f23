//! The approval graph: one run per expense, on the thread named after the expense.
//!
//! `route → review → (pay | END)`:
//! - `route` asks the policy service who approves this amount — a **recorded step**
//!   (`route-to-approver`): once recorded it is never called again for this run, not after a
//!   crash, not when `review` is resumed.
//! - `review` **interrupts** for the manager: the run is suspended (no task, no lease held)
//!   until `POST /api/expenses/{id}/approve|reject` answers the interrupt with a
//!   [`Decision`].
//! - `pay` (approved expenses only) schedules the payout, another recorded step.

use std::time::Duration;

use oris::{CompiledGraph, Context, END, NodeError, START, State, StateGraph};
use serde::{Deserialize, Serialize};

/// The graph's name, as the control plane and the CLI show it.
pub const GRAPH: &str = "expense_approval";
/// The graph's version. Runs are pinned to the version they started on.
pub const VERSION: &str = "1";

/// Expenses above this amount (in cents) need the finance director; below, a team lead.
pub const DIRECTOR_THRESHOLD_CENTS: u64 = 100_000;

/// An expense and where its approval stands: the graph's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, State)]
#[serde(default)]
pub struct Expense {
    /// The expense's id (also the Oris thread id).
    pub expense_id: String,
    /// Who submitted it.
    pub submitter: String,
    /// Amount in cents.
    pub amount_cents: u64,
    /// What it was for.
    pub description: String,
    /// Who must approve it (the recorded `route-to-approver` step's result).
    pub approver: String,
    /// The manager's answer, once `review` has run with it.
    pub decision: Option<Decision>,
    /// The payout reference (the recorded `schedule-payout` step's result), once paid.
    pub payout: Option<String>,
}

/// The answer to the `review` interrupt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Approved (`true`) or rejected.
    pub approved: bool,
    /// Who decided.
    pub by: String,
    /// Why, if they said.
    #[serde(default)]
    pub comment: String,
    /// The deciding request's id (its `Idempotency-Key`, or a new id): a retry of the same
    /// request is the same answer, any other decision conflicts with it.
    #[serde(default)]
    pub decision_id: String,
}

/// What `review` asks the manager (the interrupt's payload).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReviewRequest {
    /// The expense to decide.
    pub expense_id: String,
    /// Its amount in cents.
    pub amount_cents: u64,
    /// Who is asked.
    pub approver: String,
}

/// The approval graph. `policy_latency` is how long the policy service takes to answer
/// (the `route` node's recorded step); the tests use it to have a node in flight.
///
/// # Errors
/// When the graph does not compile (a bug in this function).
pub fn expense_approval(policy_latency: Duration) -> anyhow::Result<CompiledGraph<Expense>> {
    Ok(StateGraph::<Expense>::new(GRAPH, VERSION)
        .node("route", move |e: Expense, ctx: Context| async move {
            let approver: String = ctx
                .step("route-to-approver", async move {
                    // A call to the policy service.
                    tokio::time::sleep(policy_latency).await;
                    Ok(approver_for(e.amount_cents).to_owned())
                })
                .await?;
            tracing::info!(thread_id = %ctx.thread_id(), run_id = %ctx.run_id(), %approver, "approver assigned");
            Ok::<_, NodeError>(ExpenseUpdate::default().approver(approver))
        })
        .node("review", |e: Expense, ctx: Context| async move {
            let decision: Decision = ctx
                .interrupt(&ReviewRequest {
                    expense_id: e.expense_id.clone(),
                    amount_cents: e.amount_cents,
                    approver: e.approver.clone(),
                })
                .await?;
            tracing::info!(thread_id = %ctx.thread_id(), run_id = %ctx.run_id(), approved = decision.approved, by = %decision.by, "expense decided");
            Ok(ExpenseUpdate::default().decision(Some(decision)))
        })
        .node("pay", |e: Expense, ctx: Context| async move {
            let payout: String = ctx
                .step("schedule-payout", async move {
                    // A call to the payments system.
                    Ok(format!("payout-{}", e.expense_id))
                })
                .await?;
            Ok::<_, NodeError>(ExpenseUpdate::default().payout(Some(payout)))
        })
        .edge(START, "route")
        .edge("route", "review")
        .conditional_edge("review", ["pay", END], |e: &Expense| {
            match &e.decision {
                Some(d) if d.approved => "pay",
                _ => END,
            }
        })
        .edge("pay", END)
        .compile()?)
}

/// The approval policy.
pub fn approver_for(amount_cents: u64) -> &'static str {
    if amount_cents > DIRECTOR_THRESHOLD_CENTS {
        "finance-director"
    } else {
        "team-lead"
    }
}
