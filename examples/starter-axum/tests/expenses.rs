//! The README's walkthrough over real HTTP against the service binary on SQLite: an expense
//! approved through its interrupt, a rejected one, the business error shape (Oris'
//! conflicts mapped, never leaked), and authentication on both sides.
#![cfg(unix)]

mod support;

use serde_json::json;
use support::*;

fn start(dir: &tempfile::TempDir) -> Service {
    Service::start(
        dir.path(),
        "sqlite://expenses.db",
        &["--policy-latency-ms", "0"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expense_is_approved_through_its_interrupt() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&dir);
    let created = call_with(
        &svc,
        "POST",
        "/api/expenses",
        Some(API_TOKEN),
        Some(json!({"submitter": "ann", "amount_cents": 4200, "description": "taxi"})),
        &[("x-request-id", "req-create-1")],
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.request_id.as_deref(), Some("req-create-1"));
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("exp_"), "{id}");
    assert_eq!(created.body["status"], "submitted");
    assert_eq!(created.body["run"]["thread_id"], id.as_str());
    let run_id = created.body["run"]["run_id"].as_str().unwrap().to_owned();

    // The run is routed (a recorded step), then interrupts for the manager.
    let pending = until_status(&svc, &id, "pending_approval").await;
    assert_eq!(pending["approver"], "team-lead");
    assert_eq!(pending["run"]["status"], "interrupted");
    assert_eq!(pending["run"]["run_id"], run_id.as_str());
    assert_eq!(pending["decision"], serde_json::Value::Null);
    // The same run seen through the control plane: interrupted at `review`.
    let job = oris(&svc, "GET", &format!("/v1/jobs/{id}"), None).await;
    assert_eq!(job.status, 200, "{job:?}");
    assert_eq!(job.body["graph"], "expense_approval");
    assert_eq!(job.body["status"], "interrupted");
    assert_eq!(job.body["interrupts"][0]["node"], "review");
    assert_eq!(
        job.body["interrupts"][0]["payload"]["approver"],
        "team-lead"
    );
    assert_eq!(job.body["interrupts"][0]["payload"]["amount_cents"], 4200);

    let approved = api(
        &svc,
        "POST",
        &format!("/api/expenses/{id}/approve"),
        Some(json!({"by": "bob", "comment": "fine"})),
    )
    .await;
    assert_eq!(approved.status, 200, "{approved:?}");
    let b = &approved.body;
    assert_eq!(b["status"], "approved", "{b:#}");
    assert_eq!(b["decision"]["approved"], true);
    assert_eq!(b["decision"]["by"], "bob");
    assert_eq!(b["decision"]["comment"], "fine");
    assert_eq!(b["payout"], format!("payout-{id}"), "{b:#}");
    assert_eq!(b["run"]["status"], "completed", "{b:#}");
    assert_eq!(b["run"]["run_id"], run_id.as_str());

    let job = oris(&svc, "GET", &format!("/v1/jobs/{id}"), None).await;
    assert_eq!(job.body["status"], "completed", "{job:?}");
    assert_eq!(
        recorded_steps(&svc, &id).await,
        ["route-to-approver", "schedule-payout"]
    );
    // The request's log lines carry the run's correlation ids.
    let log = svc.log();
    let line = log
        .lines()
        .find(|l| l.contains("expense submitted"))
        .unwrap_or_else(|| panic!("no `expense submitted` line: {log}"));
    for field in [
        "request_id=req-create-1".to_owned(),
        format!("thread_id=\"{id}\""),
        format!("run_id={run_id}"),
    ] {
        assert!(line.contains(&field), "{field} missing in: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_expense_is_not_paid() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&dir);
    let id = submit(&svc, 250_000).await;
    let pending = until_status(&svc, &id, "pending_approval").await;
    assert_eq!(pending["approver"], "finance-director");
    // No body: the decision's defaults.
    let rejected = api(&svc, "POST", &format!("/api/expenses/{id}/reject"), None).await;
    assert_eq!(rejected.status, 200, "{rejected:?}");
    let b = &rejected.body;
    assert_eq!(b["status"], "rejected", "{b:#}");
    assert_eq!(b["decision"]["approved"], false);
    assert_eq!(b["decision"]["by"], "manager");
    assert_eq!(b["payout"], serde_json::Value::Null);
    assert_eq!(b["run"]["status"], "completed", "{b:#}");
    assert_eq!(recorded_steps(&svc, &id).await, ["route-to-approver"]);
    let again = api(&svc, "GET", &format!("/api/expenses/{id}"), None).await;
    assert_eq!(again.body["status"], "rejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_errors_keep_their_shape() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&dir);
    // Unknown expense, on every route.
    let a = api(&svc, "GET", "/api/expenses/exp_nope", None).await;
    assert_business_error(&a, 404, "not_found");
    assert!(a.request_id.is_some());
    let a = api(&svc, "POST", "/api/expenses/exp_nope/approve", None).await;
    assert_business_error(&a, 404, "not_found");
    let a = api(&svc, "GET", "/api/expenses/not%20a%20thread", None).await;
    assert_business_error(&a, 404, "not_found");
    let a = api(&svc, "GET", "/api/nothing-here", None).await;
    assert_business_error(&a, 404, "not_found");
    // Invalid bodies.
    let a = api(
        &svc,
        "POST",
        "/api/expenses",
        Some(json!({"submitter": "ann", "amount_cents": 0, "description": "x"})),
    )
    .await;
    assert_business_error(&a, 400, "invalid_request");
    let a = api(
        &svc,
        "POST",
        "/api/expenses",
        Some(json!({"submitter": "ann", "amount_cents": 5, "description": "x", "extra": 1})),
    )
    .await;
    assert_business_error(&a, 400, "invalid_request");

    let id = submit(&svc, 1_000).await;
    until_status(&svc, &id, "pending_approval").await;
    let approve = format!("/api/expenses/{id}/approve");
    // A retry of one decision (same Idempotency-Key) is the same answer: accepted again.
    for _ in 0..2 {
        let a = call_with(
            &svc,
            "POST",
            &approve,
            Some(API_TOKEN),
            Some(json!({"by": "bob"})),
            &[("idempotency-key", "decision-1")],
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body["status"], "approved");
        assert_eq!(a.body["decision"]["decision_id"], "decision-1");
    }
    // A second approval is another decision: Oris answers `ResumeConflict` (its 409
    // `resume_conflict` on the control plane), the business API its own 409.
    let a = api(&svc, "POST", &approve, Some(json!({"by": "bob"}))).await;
    assert_business_error(&a, 409, "already_decided");
    let a = api(&svc, "POST", &format!("/api/expenses/{id}/reject"), None).await;
    assert_business_error(&a, 409, "already_decided");
    // The control plane keeps Oris' own envelope for the same conflict.
    let interrupt = oris(
        &svc,
        "GET",
        &format!("/v1/interrupts?thread_id={id}&status=all"),
        None,
    )
    .await;
    let interrupt_id = interrupt.body["interrupts"][0]["interrupt_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{interrupt:?}"))
        .to_owned();
    let a = oris(
        &svc,
        "POST",
        &format!("/v1/interrupts/{interrupt_id}/resume"),
        Some(json!({"value": {"approved": false, "by": "eve"}})),
    )
    .await;
    assert_eq!(a.status, 409, "{a:?}");
    assert_eq!(a.body["error"]["code"], "resume_conflict", "{a:?}");
    // The expense is unchanged.
    let a = api(&svc, "GET", &format!("/api/expenses/{id}"), None).await;
    assert_eq!(a.body["status"], "approved");
    assert_eq!(a.body["decision"]["decision_id"], "decision-1");

    // An operator cancels a pending expense through the control plane: deciding it now is
    // Oris' `InterruptNotPending`, answered as `not_awaiting_approval`.
    let id = submit(&svc, 2_000).await;
    until_status(&svc, &id, "pending_approval").await;
    let a = oris(
        &svc,
        "POST",
        &format!("/v1/jobs/{id}/cancel"),
        Some(json!({"reason": "duplicate"})),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = api(&svc, "POST", &format!("/api/expenses/{id}/approve"), None).await;
    assert_business_error(&a, 409, "not_awaiting_approval");
    let a = api(&svc, "GET", &format!("/api/expenses/{id}"), None).await;
    assert_eq!(a.body["status"], "cancelled", "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_require_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&dir);
    let new = json!({"submitter": "ann", "amount_cents": 5, "description": "x"});
    // Business routes: their own bearer token, their own error shape.
    for token in [None, Some("wrong"), Some(ORIS_TOKEN)] {
        let a = call(&svc, "POST", "/api/expenses", token, Some(new.clone())).await;
        assert_business_error(&a, 401, "unauthorized");
        let a = call(&svc, "GET", "/api/expenses/exp_x", token, None).await;
        assert_business_error(&a, 401, "unauthorized");
    }
    // Control plane: Oris API keys; the business token is not one.
    for token in [None, Some(API_TOKEN)] {
        let a = call(&svc, "GET", "/oris/v1/jobs", token, None).await;
        assert_eq!(a.status, 401, "{a:?}");
        assert_eq!(a.body["error"]["code"], "unauthorized", "{a:?}");
    }
    let a = oris(&svc, "GET", "/v1/jobs", None).await;
    assert_eq!(a.status, 200, "{a:?}");
    // Nothing was created by the refused calls.
    assert_eq!(a.body["jobs"], json!([]), "{a:?}");
    // The control plane is mounted under the prefix: its Locations carry it.
    let a = oris(
        &svc,
        "POST",
        "/v1/jobs",
        Some(json!({
            "graph": "expense_approval", "thread_id": "exp_ops1",
            "input": {"expense_id": "exp_ops1", "submitter": "ops", "amount_cents": 10, "description": "x"}
        })),
    )
    .await;
    assert_eq!(a.status, 202, "{a:?}");
    let a = call(
        &svc,
        "GET",
        "/oris/v1/jobs/exp_ops1",
        Some(ORIS_TOKEN),
        None,
    )
    .await;
    assert_eq!(a.body["thread_id"], "exp_ops1", "{a:?}");
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/oris/v1/jobs", svc.url))
        .bearer_auth(ORIS_TOKEN)
        .json(&json!({"graph": "expense_approval", "thread_id": "exp_ops2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["location"], "/oris/v1/jobs/exp_ops2");
    // An expense started by an operator is an expense like any other.
    let a = until_status(&svc, "exp_ops1", "pending_approval").await;
    assert_eq!(a["submitter"], "ops");
    // Public: the service's health and the control plane's.
    let a = call(&svc, "GET", "/healthz", None, None).await;
    assert_eq!((a.status, &a.body), (200, &json!({"status": "ok"})));
    let a = call(&svc, "GET", "/oris/healthz", None, None).await;
    assert_eq!(a.status, 200, "{a:?}");
}
