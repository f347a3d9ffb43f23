//! PostgreSQL by URL: the same approval flow with `--db postgres://…` (a fresh database on
//! the server of `ORIS_TEST_PG_URL`; scripts/test.sh starts one — the test fails, never
//! skips, without it).
#![cfg(unix)]

mod support;

use oris_testkit::database::TestDatabase;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expense_is_approved_on_postgres() {
    let db = TestDatabase::create("starter_axum").await;
    let dir = tempfile::tempdir().unwrap();
    {
        let svc = Service::start(dir.path(), &db.url, &["--policy-latency-ms", "0"]);
        let id = submit(&svc, 12_345).await;
        until_status(&svc, &id, "pending_approval").await;
        let a = api(
            &svc,
            "POST",
            &format!("/api/expenses/{id}/approve"),
            Some(json!({"by": "bob"})),
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body["status"], "approved");
        assert_eq!(a.body["payout"], format!("payout-{id}"));
        assert_eq!(a.body["run"]["status"], "completed", "{a:?}");
        let a = api(&svc, "POST", &format!("/api/expenses/{id}/reject"), None).await;
        assert_business_error(&a, 409, "already_decided");
        // Nothing was written to a SQLite file.
        assert!(!dir.path().join("expenses.db").exists());
    }
    db.drop_it().await;
}

/// Two replicas on one database: one serves the API only (`--workers 0`), the other
/// executes. An expense submitted and approved through the first is routed and paid by the
/// second, woken by PostgreSQL's notifications (its poll alone would take a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_work_on_postgres() {
    let db = TestDatabase::create("starter_axum").await;
    let dir = tempfile::tempdir().unwrap();
    {
        let front = Service::start(
            dir.path(),
            &db.url,
            &["--policy-latency-ms", "0", "--workers", "0"],
        );
        let back = Service::start(dir.path(), &db.url, &["--policy-latency-ms", "0"]);
        let id = submit(&front, 777).await;
        until_status(&front, &id, "pending_approval").await;
        let a = api(&front, "POST", &format!("/api/expenses/{id}/approve"), None).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body["status"], "approved");
        assert_eq!(a.body["run"]["status"], "completed", "{a:?}");
        assert_eq!(a.body["payout"], format!("payout-{id}"));
        // Executed by the second replica: its pool's `execute` spans name the run.
        let run_id = a.body["run"]["run_id"].as_str().unwrap().to_owned();
        assert!(back.log().contains(&run_id), "{}", back.log());
        assert!(!front.log().contains("executing run"), "{}", front.log());
    }
    db.drop_it().await;
}
