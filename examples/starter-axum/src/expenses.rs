//! The business routes: `/api/expenses…`.
//!
//! An expense is an Oris thread (its id is the thread id) with one run of the
//! `expense_approval` graph. The handlers only record intent through the engine — a queued
//! run, an answer to the `review` interrupt — and read the thread back; the embedded worker
//! pool executes the runs.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use oris::event::Payload;
use oris::store::{InterruptRecord, RunRecord};
use oris::{Enqueue, EnqueueOptions, RunStatus, ThreadId};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::{BizError, Kind};
use crate::graph::{self, Decision, Expense};
use crate::telemetry::{correlate_expense, correlate_run};

/// `POST /api/expenses`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewExpense {
    /// Who submits it.
    pub submitter: String,
    /// Amount in cents, at least 1.
    pub amount_cents: u64,
    /// What it was for.
    pub description: String,
}

/// `POST /api/expenses/{id}/approve|reject` (the body is optional).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionBody {
    /// Who decides. Default `manager`.
    pub by: Option<String>,
    /// Why.
    pub comment: String,
}

/// An expense as the business API shows it.
#[derive(Debug, Serialize)]
pub struct ExpenseView {
    /// The expense's id (also its Oris thread id).
    pub id: String,
    /// Who submitted it.
    pub submitter: String,
    /// Amount in cents.
    pub amount_cents: u64,
    /// What it was for.
    pub description: String,
    /// `submitted` (being routed), `pending_approval`, `approved`, `rejected`, `failed`,
    /// `cancelled`.
    pub status: &'static str,
    /// Who must approve it, once routed.
    pub approver: Option<String>,
    /// The decision, once made.
    pub decision: Option<Decision>,
    /// The payout reference, once an approved expense is paid.
    pub payout: Option<String>,
    /// The Oris run behind it: inspect it with `oris inspect <thread_id>`.
    pub run: RunRef,
}

/// The Oris run of an expense.
#[derive(Debug, Serialize)]
pub struct RunRef {
    /// The thread (the expense id).
    pub thread_id: String,
    /// The run.
    pub run_id: String,
    /// The run's status (`queued`, `running`, `interrupted`, `completed`, …).
    pub status: &'static str,
}

/// The longest an approve/reject waits for the run to finish before answering.
const DECIDE_WAIT: Duration = Duration::from_secs(5);

fn parse<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, BizError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_required(body)
}

fn parse_required<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, BizError> {
    serde_json::from_slice(body)
        .map_err(|e| BizError::new(Kind::InvalidRequest, format!("invalid request body: {e}")))
}

/// `POST /api/expenses`: validates, creates the expense's run, answers 201 at once (the run
/// is routed in the background).
pub async fn create(State(app): State<AppState>, body: Bytes) -> Result<Response, BizError> {
    let new: NewExpense = parse_required(&body)?;
    if new.amount_cents == 0 {
        return Err(BizError::new(
            Kind::InvalidRequest,
            "amount_cents must be at least 1",
        ));
    }
    for (field, v) in [
        ("submitter", &new.submitter),
        ("description", &new.description),
    ] {
        if v.trim().is_empty() {
            return Err(BizError::new(
                Kind::InvalidRequest,
                format!("{field} must not be empty"),
            ));
        }
    }
    let id = format!("exp_{}", uuid::Uuid::now_v7().simple());
    correlate_expense(&id);
    let thread = ThreadId::new(&id).map_err(|e| BizError::from_engine(&id, e.into()))?;
    let expense = Expense {
        expense_id: id.clone(),
        submitter: new.submitter.clone(),
        amount_cents: new.amount_cents,
        description: new.description,
        ..Expense::default()
    };
    let input = serde_json::to_value(&expense)
        .map_err(|e| BizError::new(Kind::Internal, format!("encoding the expense: {e}")))?;
    let run = app
        .server
        .engine()
        .enqueue(Enqueue {
            graph: graph::GRAPH.into(),
            version: Some(graph::VERSION.into()),
            thread_id: thread.clone(),
            input,
            options: EnqueueOptions {
                metadata: Some(BTreeMap::from([("submitter".into(), new.submitter)])),
                ..EnqueueOptions::default()
            },
        })
        .await
        .map_err(|e| BizError::from_engine(&id, e))?;
    correlate_run(&run.run_id);
    tracing::info!(amount_cents = expense.amount_cents, "expense submitted");
    let view = view(&expense, &run, &[]);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/expenses/{id}"))],
        Json(view),
    )
        .into_response())
}

/// `GET /api/expenses/{id}`.
pub async fn show(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ExpenseView>, BizError> {
    let (thread, run) = expense_run(&app, &id).await?;
    Ok(Json(read(&app, &id, &thread, &run).await?))
}

/// `POST /api/expenses/{id}/approve`.
pub async fn approve(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ExpenseView>, BizError> {
    decide(app, id, true, &headers, &body).await
}

/// `POST /api/expenses/{id}/reject`.
pub async fn reject(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ExpenseView>, BizError> {
    decide(app, id, false, &headers, &body).await
}

/// Answers the expense's `review` interrupt with a decision, then follows the run to its
/// end (at most [`DECIDE_WAIT`]; the decision is durable either way).
///
/// Every decision carries an id — the request's `Idempotency-Key`, or a new one — so a
/// retry with the same key is the same answer (accepted again, nothing changes), while any
/// other decision on a decided expense is the engine's `ResumeConflict`, answered as 409
/// `already_decided`.
async fn decide(
    app: AppState,
    id: String,
    approved: bool,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Json<ExpenseView>, BizError> {
    let b: DecisionBody = parse(body)?;
    let (thread, run) = expense_run(&app, &id).await?;
    let engine = app.server.engine();
    let interrupts = engine
        .interrupts(&thread)
        .await
        .map_err(|e| BizError::from_engine(&id, e))?;
    let Some(review) = interrupts.iter().rev().find(|i| i.node == "review") else {
        return Err(BizError::new(
            Kind::NotAwaitingApproval,
            format!(
                "expense `{id}` is not awaiting approval yet (status {})",
                status(None, &run.status)
            ),
        ));
    };
    let decision_id = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let decision = Decision {
        approved,
        by: b.by.unwrap_or_else(|| "manager".into()),
        comment: b.comment,
        decision_id,
    };
    let value = Payload::encode(&decision)
        .map_err(|e| BizError::new(Kind::Internal, format!("encoding the decision: {e}")))?;
    engine
        .answer(review.interrupt_id, value)
        .await
        .map_err(|e| BizError::from_engine(&id, e))?;
    tracing::info!(approved, by = %decision.by, "decision recorded");
    // Follow the run to its end, so the answer shows the payout; give up at the deadline
    // or when the service shuts down (the run continues at the next start).
    tokio::select! {
        r = tokio::time::timeout(DECIDE_WAIT, engine.wait_for(&thread, RunStatus::is_terminal)) => {
            if let Ok(Err(e)) = r {
                return Err(BizError::from_engine(&id, e));
            }
        }
        _ = app.stop.cancelled() => {}
    }
    let run = engine
        .latest_run(&thread)
        .await
        .map_err(|e| BizError::from_engine(&id, e))?;
    Ok(Json(read(&app, &id, &thread, &run).await?))
}

/// The expense's thread and run; `not_found` for an unknown id or a thread of another
/// graph (the business API shows expenses only).
async fn expense_run(app: &AppState, id: &str) -> Result<(ThreadId, RunRecord), BizError> {
    correlate_expense(id);
    let thread = ThreadId::new(id).map_err(|_| BizError::not_found(id))?;
    let run = app
        .server
        .engine()
        .latest_run(&thread)
        .await
        .map_err(|e| BizError::from_engine(id, e))?;
    if run.graph != graph::GRAPH {
        return Err(BizError::not_found(id));
    }
    correlate_run(&run.run_id);
    Ok((thread, run))
}

async fn read(
    app: &AppState,
    id: &str,
    thread: &ThreadId,
    run: &RunRecord,
) -> Result<ExpenseView, BizError> {
    let engine = app.server.engine();
    let state = engine
        .state_json(thread)
        .await
        .map_err(|e| BizError::from_engine(id, e))?;
    let expense: Expense = serde_json::from_value(state.values).map_err(|e| {
        tracing::error!(error = %e, "stored expense does not decode");
        BizError::new(Kind::Internal, "internal error")
    })?;
    let interrupts = engine
        .interrupts(thread)
        .await
        .map_err(|e| BizError::from_engine(id, e))?;
    Ok(view(&expense, run, &interrupts))
}

/// The decision: in the state once `review` ran with it, else the recorded answer of the
/// `review` interrupt (durable as soon as it is recorded, applied by the run shortly after).
fn decision_of(expense: &Expense, interrupts: &[InterruptRecord]) -> Option<Decision> {
    expense.decision.clone().or_else(|| {
        interrupts
            .iter()
            .rev()
            .find(|i| i.node == "review")
            .and_then(|i| i.answer.as_ref())
            .and_then(|(v, _)| v.decode().ok())
    })
}

fn status(decision: Option<&Decision>, run: &RunStatus) -> &'static str {
    match (decision, run) {
        (Some(d), _) if d.approved => "approved",
        (Some(_), _) => "rejected",
        (None, RunStatus::Interrupted { .. }) => "pending_approval",
        (None, RunStatus::Failed { .. }) => "failed",
        (None, RunStatus::Cancelled { .. }) => "cancelled",
        (None, _) => "submitted",
    }
}

fn view(expense: &Expense, run: &RunRecord, interrupts: &[InterruptRecord]) -> ExpenseView {
    let decision = decision_of(expense, interrupts);
    ExpenseView {
        id: expense.expense_id.clone(),
        submitter: expense.submitter.clone(),
        amount_cents: expense.amount_cents,
        description: expense.description.clone(),
        status: status(decision.as_ref(), &run.status),
        approver: Some(expense.approver.clone()).filter(|a| !a.is_empty()),
        decision,
        payout: expense.payout.clone(),
        run: RunRef {
            thread_id: run.thread_id.to_string(),
            run_id: run.run_id.to_string(),
            status: run.status.kind().as_str(),
        },
    }
}

/// Unknown paths: the business error shape.
pub async fn not_found() -> BizError {
    BizError::new(Kind::NotFound, "no such route")
}
