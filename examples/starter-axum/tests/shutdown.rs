//! Graceful shutdown with a run in flight: SIGTERM while the policy service call of an
//! expense's `route` node is under way. The process lets the node finish and commit, exits
//! with status 0, and the next start continues the run from there (the recorded step is not
//! called again).
#![cfg(unix)]

mod support;

use std::time::{Duration, Instant};

use oris::event::EventBody;
use oris::{Engine, Seq, ThreadId};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_node_finish() {
    let dir = tempfile::tempdir().unwrap();
    let db = "sqlite://shutdown.db";
    let mut svc = Service::start(dir.path(), db, &["--policy-latency-ms", "1500"]);
    let id = submit(&svc, 9_900).await;
    // Wait until the run executes `route` (the policy call sleeps 1.5 s).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let a = api(&svc, "GET", &format!("/api/expenses/{id}"), None).await;
        if a.body["run"]["status"] == "running" {
            assert_eq!(a.body["status"], "submitted", "{a:?}");
            break;
        }
        assert!(Instant::now() < deadline, "never running: {a:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Not decidable yet: the run has not asked.
    let a = api(&svc, "POST", &format!("/api/expenses/{id}/approve"), None).await;
    assert_business_error(&a, 409, "not_awaiting_approval");
    assert!(
        recorded_steps(&svc, &id).await.is_empty(),
        "the policy call finished too early for this test"
    );

    let status = svc.terminate(Duration::from_secs(15));
    assert!(status.success(), "exit {status:?}: {}", svc.log());
    assert!(svc.log().contains("stopped"), "{}", svc.log());
    drop(svc);

    // What the process committed before it exited: the step and the node, once.
    {
        let store = oris::open_store(&format!("sqlite://{}/shutdown.db", dir.path().display()))
            .await
            .unwrap();
        let engine = Engine::new(store);
        let thread = ThreadId::new(&id).unwrap();
        let events = engine.timeline(&thread, Seq::ZERO, 100).await.unwrap();
        let steps = events
            .iter()
            .filter(|e| matches!(&e.body, EventBody::StepRecorded { name, .. } if name == "route-to-approver"))
            .count();
        let routed = events
            .iter()
            .filter(|e| matches!(&e.body, EventBody::NodeCompleted { node, .. } if node == "route"))
            .count();
        assert_eq!((steps, routed), (1, 1), "{events:#?}");
        let run = engine.latest_run(&thread).await.unwrap();
        assert!(run.lease.is_none(), "the lease was not released: {run:?}");
    }

    // The next start continues the run: the manager is asked, the expense is paid.
    let svc = Service::start(dir.path(), db, &["--policy-latency-ms", "0"]);
    let pending = until_status(&svc, &id, "pending_approval").await;
    assert_eq!(pending["approver"], "team-lead");
    let a = api(&svc, "POST", &format!("/api/expenses/{id}/approve"), None).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["status"], "approved");
    assert_eq!(a.body["run"]["status"], "completed", "{a:?}");
    assert_eq!(
        recorded_steps(&svc, &id).await,
        ["route-to-approver", "schedule-payout"]
    );
}
