//! Builders and helpers shared by the SQLite backend's integration tests.

#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use oris_core::event::{
    Boundary, Durability, Event, EventBody, Failure, FailureKind, Payload, RunSettings, Task,
};
use oris_core::id::{CheckpointId, InterruptId, RunId, Seq, ThreadId, Timestamp};
use oris_core::status::{PendingInterrupt, RunStatus};
use oris_core::store::{Commit, Delivery, RunRecord, RunWrite, Snapshot};
use oris_sqlite::{SqliteOptions, SqliteStore};

pub fn tid(s: &str) -> ThreadId {
    ThreadId::new(s).unwrap()
}

pub fn json(s: &str) -> Payload {
    Payload::from_json(s.to_owned()).unwrap()
}

pub async fn open(path: &std::path::Path) -> SqliteStore {
    SqliteStore::open(path, SqliteOptions::default())
        .await
        .unwrap()
}

/// A run being driven through valid commits.
#[derive(Debug, Clone)]
pub struct Run {
    pub thread_id: ThreadId,
    pub run_id: RunId,
    pub head: Seq,
    pub superstep: u32,
    pub durability: Durability,
}

impl Run {
    /// A run that starts a new thread (or continues one whose head is `head`).
    pub fn new(thread: &str, head: Seq) -> Run {
        Run {
            thread_id: tid(thread),
            run_id: RunId::generate(),
            head,
            superstep: 0,
            durability: Durability::Sync,
        }
    }

    fn event(&self, offset: u64, body: EventBody) -> Event {
        Event {
            seq: Seq(self.head.0 + offset),
            run_id: self.run_id,
            at: Timestamp::now(),
            body,
        }
    }

    pub fn record(&self) -> RunRecord {
        let now = Timestamp::now();
        RunRecord {
            run_id: self.run_id,
            thread_id: self.thread_id.clone(),
            graph: "loop".into(),
            graph_version: "v1".into(),
            status: RunStatus::Running,
            first_seq: self.head.next(),
            created_at: now,
            updated_at: now,
            priority: 0,
            metadata: None,
            ready_at: None,
            lease_epoch: 0,
            lease: None,
        }
    }

    /// Creates the run with its `RunStarted` event.
    pub fn start(&self) -> Commit {
        Commit {
            thread_id: self.thread_id.clone(),
            expected_head: self.head,
            events: vec![self.event(
                1,
                EventBody::RunStarted {
                    graph: "loop".into(),
                    graph_version: "v1".into(),
                    input: json(r#"{"counter":0,"log":[]}"#),
                    settings: RunSettings {
                        durability: self.durability,
                        deadline: None,
                        superstep_limit: 1000,
                        interrupt_before: vec![],
                        interrupt_after: vec![],
                    },
                    boundary: Boundary {
                        next: vec![Task::Node("step".into())],
                        ..Default::default()
                    },
                },
            )],
            run: Some(RunWrite::Create(self.record())),
            snapshot: None,
            durability: self.durability,
            fence: None,
        }
    }

    /// The W4 update of superstep `i`: `{counter: i+1, log: ["0042xxx…"]}` (~90 bytes).
    pub fn update(i: u32) -> Payload {
        json(&format!(
            r#"{{"counter":{},"log":["{:04}{}"]}}"#,
            i + 1,
            i,
            "x".repeat(60)
        ))
    }

    /// One superstep: a node completion closing it.
    pub fn step(&self) -> Commit {
        self.step_with(Self::update(self.superstep))
    }

    pub fn step_with(&self, update: Payload) -> Commit {
        Commit {
            thread_id: self.thread_id.clone(),
            expected_head: self.head,
            events: vec![self.event(
                1,
                EventBody::NodeCompleted {
                    superstep: self.superstep,
                    task: 0,
                    node: "step".into(),
                    attempt: 1,
                    update,
                    boundary: Some(Boundary {
                        next: vec![Task::Node("step".into())],
                        ..Default::default()
                    }),
                },
            )],
            run: None,
            snapshot: None,
            durability: self.durability,
            fence: None,
        }
    }

    /// Completes the run.
    pub fn finish(&self) -> Commit {
        Commit {
            thread_id: self.thread_id.clone(),
            expected_head: self.head,
            events: vec![self.event(1, EventBody::RunCompleted)],
            run: Some(RunWrite::SetStatus {
                run_id: self.run_id,
                status: RunStatus::Completed {
                    checkpoint: CheckpointId(self.head),
                },
            }),
            snapshot: None,
            durability: self.durability,
            fence: None,
        }
    }

    /// A node failure with a retry, then a run failure.
    pub fn fail(&self) -> Commit {
        let error = Failure::new(FailureKind::NodeError, "boom").at_node("step");
        Commit {
            thread_id: self.thread_id.clone(),
            expected_head: self.head,
            events: vec![
                self.event(
                    1,
                    EventBody::NodeFailed {
                        superstep: self.superstep,
                        task: 0,
                        node: "step".into(),
                        attempt: 3,
                        error: error.clone(),
                        retry_at: Some(Timestamp(1_900_000_000_000)),
                    },
                ),
                self.event(
                    2,
                    EventBody::RunFailed {
                        error: error.clone(),
                    },
                ),
            ],
            run: Some(RunWrite::SetStatus {
                run_id: self.run_id,
                status: RunStatus::Failed { error },
            }),
            snapshot: None,
            durability: self.durability,
            fence: None,
        }
    }

    /// Cancels the run.
    pub fn cancel(&self) -> Commit {
        Commit {
            thread_id: self.thread_id.clone(),
            expected_head: self.head,
            events: vec![self.event(
                1,
                EventBody::RunCancelled {
                    reason: "operator".into(),
                },
            )],
            run: Some(RunWrite::SetStatus {
                run_id: self.run_id,
                status: RunStatus::Cancelled {
                    reason: "operator".into(),
                },
            }),
            snapshot: None,
            durability: self.durability,
            fence: None,
        }
    }

    /// Raises one interrupt per id (node `ask`, payload `{"q": k}`) and suspends the run
    /// (`Interrupted`).
    pub fn suspend(&self, ids: &[InterruptId]) -> Commit {
        let mut events: Vec<Event> = ids
            .iter()
            .enumerate()
            .map(|(k, id)| {
                self.event(
                    1 + k as u64,
                    EventBody::InterruptRaised {
                        superstep: self.superstep,
                        task: k as u32,
                        node: "ask".into(),
                        index: 0,
                        interrupt_id: *id,
                        payload: json(&format!(r#"{{"q": {k}}}"#)),
                    },
                )
            })
            .collect();
        events.push(self.event(
            1 + ids.len() as u64,
            EventBody::RunSuspended {
                interrupts: ids.to_vec(),
                until: None,
                events: vec![],
            },
        ));
        let pending = ids
            .iter()
            .enumerate()
            .map(|(k, id)| PendingInterrupt {
                interrupt_id: *id,
                node: "ask".into(),
                payload: serde_json::json!({ "q": k }),
            })
            .collect();
        Commit {
            thread_id: self.thread_id.clone(),
            expected_head: self.head,
            events,
            run: Some(RunWrite::SetStatus {
                run_id: self.run_id,
                status: RunStatus::Interrupted {
                    interrupts: pending,
                },
            }),
            snapshot: None,
            durability: self.durability,
            fence: None,
        }
    }

    /// Applies `value` to interrupt `id` and resumes the run (`Running`).
    pub fn resume(&self, id: InterruptId, value: Payload) -> Commit {
        Commit {
            thread_id: self.thread_id.clone(),
            expected_head: self.head,
            events: vec![
                self.event(
                    1,
                    EventBody::InterruptResumed {
                        interrupt_id: id,
                        value,
                    },
                ),
                self.event(2, EventBody::RunResumed),
            ],
            run: Some(RunWrite::SetStatus {
                run_id: self.run_id,
                status: RunStatus::Running,
            }),
            snapshot: None,
            durability: self.durability,
            fence: None,
        }
    }

    /// Consumes `delivery` (an `EventReceived` event).
    pub fn receive(&self, delivery: &Delivery) -> Commit {
        Commit {
            thread_id: self.thread_id.clone(),
            expected_head: self.head,
            events: vec![self.event(
                1,
                EventBody::EventReceived {
                    superstep: self.superstep,
                    task: 0,
                    node: "wait".into(),
                    index: 0,
                    name: delivery.name.clone(),
                    delivery: Some(delivery.delivery_id),
                    payload: Some(delivery.payload.clone()),
                },
            )],
            run: None,
            snapshot: None,
            durability: self.durability,
            fence: None,
        }
    }

    /// A snapshot of `state` at the current head.
    pub fn snapshot(&self, state: Payload) -> Snapshot {
        Snapshot {
            at_seq: self.head,
            run_id: self.run_id,
            next_superstep: self.superstep,
            state,
            boundary: Boundary {
                next: vec![Task::Node("step".into())],
                ..Default::default()
            },
            created_at: Timestamp::now(),
        }
    }

    /// Records that `commit` landed.
    pub fn advance(&mut self, commit: &Commit) {
        self.head = Seq(self.head.0 + commit.events.len() as u64);
        if commit
            .events
            .iter()
            .any(|e| matches!(e.body, EventBody::NodeCompleted { .. }))
        {
            self.superstep += 1;
        }
    }
}

/// The W4 state after `n` supersteps.
pub fn state_after(n: u32) -> Payload {
    let log: Vec<String> = (0..n)
        .map(|i| format!("{i:04}{}", "x".repeat(60)))
        .collect();
    Payload::encode(&serde_json::json!({ "counter": n, "log": log })).unwrap()
}

/// Polls a future once (so that it sends its request), without waiting for it.
pub fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

/// Waits (up to 10 s) until `condition` holds.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A raw connection that holds the database's write lock until dropped or released:
/// the store's writer blocks in `BEGIN IMMEDIATE` (busy timeout) meanwhile.
pub struct WriteLock(rusqlite::Connection);

impl WriteLock {
    pub fn take(path: &std::path::Path) -> WriteLock {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        WriteLock(conn)
    }

    pub fn release(self) {
        self.0.execute_batch("COMMIT").unwrap();
    }
}

/// Applies the commits `steps` builds, one after the other, advancing the run.
pub async fn drive(store: &SqliteStore, run: &mut Run, steps: &[fn(&Run) -> Commit]) {
    use oris_core::store::Store;
    for make in steps {
        let c = make(run);
        store.commit(c.clone()).await.unwrap();
        run.advance(&c);
    }
}
