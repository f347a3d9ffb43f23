//! Queued runs executed by workers under leases: enqueue → claim → execute, fenced commits,
//! lost leases, graceful stop, cancellation, version pinning, and the JSON-level API
//! (graph descriptions, state views and edits, replay and fork as queued runs).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use oris_core::event::{EventBody, EventKind, Payload};
use oris_core::graph::{END, START};
use oris_core::id::{Seq, Timestamp};
use oris_core::status::{RunStatus, StatusKind};
use oris_core::store::{Answer, ClaimRequest, Fence, MemoryStore, RunRecord, Store};
use oris_runtime::{
    EdgeKind, Engine, EngineOptions, Enqueue, EnqueueOptions, Error, Executed, LeaseOptions,
    NodeError, NodePolicy, RetryPolicy, RunOptions, StateGraph, Stop,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, oris_derive::State)]
#[oris(crate = "::oris_core")]
struct W {
    #[reducer(append)]
    log: Vec<String>,
    n: i64,
}

/// What the test graphs' nodes did, and a gate that holds the first `blocking` executions
/// of `slow` until the test releases them.
#[derive(Debug)]
struct Probe {
    runs: Arc<Counters>,
    blocking: AtomicUsize,
    release: Semaphore,
    /// Executions of `slow` that started.
    started: watch::Sender<usize>,
    /// Executions of `slow` that returned.
    finished: AtomicUsize,
    /// Executions of `slow` whose future was dropped before it returned.
    dropped: AtomicUsize,
}

impl Probe {
    fn new(blocking: usize) -> Arc<Self> {
        Arc::new(Probe {
            runs: Counters::new(),
            blocking: AtomicUsize::new(blocking),
            release: Semaphore::new(0),
            started: watch::channel(0).0,
            finished: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
        })
    }

    /// Waits until `n` executions of `slow` have started.
    async fn started(&self, n: usize) {
        let mut rx = self.started.subscribe();
        within("slow to start", rx.wait_for(|s| *s >= n))
            .await
            .expect("probe alive");
    }

    fn count(&self, node: &str) -> usize {
        self.runs.count(node)
    }
}

/// Counts a dropped `slow` future unless it was disarmed (the body returned).
struct DropGuard(Arc<Probe>, bool);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// `START → a → slow → b → END`; each appends its name to `log`.
fn gated(version: &str, probe: &Arc<Probe>) -> StateGraph<W> {
    let (pa, ps, pb) = (probe.clone(), probe.clone(), probe.clone());
    StateGraph::<W>::new("w", version)
        .node("a", move |_s: W, _ctx| {
            pa.runs.hit("a");
            async { Ok::<_, NodeError>(WUpdate::default().log(vec!["a".into()])) }
        })
        .node("slow", move |_s: W, _ctx| {
            let p = ps.clone();
            async move {
                let n = p.runs.hit("slow");
                let mut guard = DropGuard(p.clone(), false);
                p.started.send_modify(|s| *s += 1);
                if n <= p.blocking.load(Ordering::SeqCst) {
                    p.release.acquire().await.expect("open").forget();
                }
                guard.1 = true;
                p.finished.fetch_add(1, Ordering::SeqCst);
                Ok::<_, NodeError>(WUpdate::default().log(vec!["slow".into()]))
            }
        })
        .node("b", move |_s: W, _ctx| {
            pb.runs.hit("b");
            async { Ok::<_, NodeError>(WUpdate::default().log(vec!["b".into()])) }
        })
        .edge(START, "a")
        .edge("a", "slow")
        .edge("slow", "b")
        .edge("b", END)
}

/// `START → a → ask → b → END`: `ask` records a step, then asks for a value.
fn asking(probe: &Arc<Probe>) -> StateGraph<W> {
    let (pa, pk, pb) = (probe.clone(), probe.clone(), probe.clone());
    StateGraph::<W>::new("ask", "1")
        .node("a", move |_s: W, _ctx| {
            pa.runs.hit("a");
            async { Ok::<_, NodeError>(WUpdate::default().log(vec!["a".into()])) }
        })
        .node("ask", move |_s: W, ctx| {
            let p = pk.clone();
            async move {
                p.runs.hit("ask");
                let step = p.clone();
                let charged: String = ctx
                    .step("charge", async move {
                        step.runs.hit("charge");
                        Ok("ch_1".to_owned())
                    })
                    .await?;
                let v: String = ctx.interrupt(&json!({"approve": charged})).await?;
                Ok(WUpdate::default().log(vec![format!("ask:{v}:{charged}")]))
            }
        })
        .node("b", move |_s: W, _ctx| {
            pb.runs.hit("b");
            async { Ok::<_, NodeError>(WUpdate::default().log(vec!["b".into()])) }
        })
        .edge(START, "a")
        .edge("a", "ask")
        .edge("ask", "b")
        .edge("b", END)
}

fn input(first: &str) -> serde_json::Value {
    json!({"log": [first], "n": 0})
}

fn job(graph: &str, thread: &str) -> Enqueue {
    Enqueue {
        graph: graph.into(),
        version: None,
        thread_id: tid(thread),
        input: input("in"),
        options: EnqueueOptions::default(),
    }
}

/// Claims ready runs for `worker` as of `now`.
async fn claim_at(
    store: &Arc<MemoryStore>,
    worker: &str,
    now: Timestamp,
    ttl: Duration,
) -> Vec<RunRecord> {
    store
        .claim(&ClaimRequest {
            worker_id: worker.into(),
            now,
            ttl,
            limit: 10,
            graphs: Vec::new(),
        })
        .await
        .expect("claim")
}

/// Claims the one ready run for `worker` now, with a 30 s lease.
async fn claim_one(store: &Arc<MemoryStore>, worker: &str) -> RunRecord {
    let mut claimed = claim_at(store, worker, Timestamp::now(), Duration::from_secs(30)).await;
    assert_eq!(claimed.len(), 1, "expected one claimable run: {claimed:?}");
    claimed.remove(0)
}

/// A lease whose heartbeat never fires within a test.
fn quiet(worker: &str) -> LeaseOptions {
    LeaseOptions {
        worker_id: worker.into(),
        ttl: Duration::from_secs(30),
        heartbeat: Duration::from_secs(3600),
    }
}

/// A lease renewed every 10 ms.
fn beating(worker: &str) -> LeaseOptions {
    LeaseOptions {
        heartbeat: Duration::from_millis(10),
        ..quiet(worker)
    }
}

fn spawn_execute(
    engine: &Engine,
    run: RunRecord,
    lease: LeaseOptions,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Result<Executed, Error>> {
    let engine = engine.clone();
    tokio::spawn(async move { engine.execute(run, lease, stop).await })
}

fn completed_nodes(events: &[oris_core::event::Event], node: &str) -> usize {
    events
        .iter()
        .filter(|e| matches!(&e.body, EventBody::NodeCompleted { node: n, .. } if n == node))
        .count()
}

async fn log_of(engine: &Engine, thread: &str) -> serde_json::Value {
    engine.state_json(&tid(thread)).await.unwrap().values["log"].clone()
}

// ---------------------------------------------------------------------------------------
// Enqueue, claim, execute
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_queued_run_executes_only_once_claimed_with_every_commit_fenced() {
    let recorder = Recorder::new();
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::with_options(store.clone(), recorder.options());
    let probe = Probe::new(0);
    let handle = engine.register(gated("1", &probe).compile().unwrap());
    let ready = engine.subscribe_ready();

    let metadata = BTreeMap::from([("team".to_owned(), "blue".to_owned())]);
    let queued = engine
        .enqueue(Enqueue {
            options: EnqueueOptions {
                priority: 7,
                metadata: Some(metadata.clone()),
                ..Default::default()
            },
            ..job("w", "t1")
        })
        .await
        .unwrap();
    assert_eq!(queued.status, RunStatus::Queued);
    assert_eq!(queued.graph_version, "1");
    assert_eq!(queued.priority, 7);
    assert_eq!(queued.metadata_map(), metadata);
    assert_eq!(queued.lease_epoch, 0);
    assert!(queued.ready_at.is_some());
    // The returned record is the stored one.
    assert_eq!(store.run(queued.run_id).await.unwrap().unwrap(), queued);
    assert!(ready.has_changed().unwrap(), "enqueue signals workers");

    // Nothing runs before a worker claims the run.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(probe.count("a") + probe.count("slow") + probe.count("b"), 0);
    let events = all_events(&engine, "t1").await;
    assert_eq!(kinds(&events), [EventKind::RunStarted]);

    let run = claim_one(&store, "w1").await;
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.lease_epoch, 1);
    let out = engine
        .execute(run.clone(), quiet("w1"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        out,
        Executed {
            status: StatusKind::Completed,
            stop: Stop::Finished
        }
    );
    assert_eq!(log_of(&engine, "t1").await, json!(["in", "a", "slow", "b"]));
    for n in ["a", "slow", "b"] {
        assert_eq!(probe.count(n), 1, "{n} ran once");
    }

    let stored = store.run(run.run_id).await.unwrap().unwrap();
    assert!(matches!(stored.status, RunStatus::Completed { .. }));
    assert_eq!(stored.lease, None);
    assert_eq!(stored.ready_at, None);
    assert!(
        claim_at(&store, "w2", Timestamp::now(), Duration::from_secs(1))
            .await
            .is_empty()
    );

    // The enqueue wrote unfenced; every commit of the execution carried the lease.
    let commits = recorder.commits("t1");
    assert!(commits.len() >= 4, "{} commits", commits.len());
    assert_eq!(commits[0].fence, None);
    let fence = Fence {
        run_id: run.run_id,
        epoch: 1,
    };
    assert!(commits[1..].iter().all(|c| c.fence == Some(fence)));
    assert!(handle.verify("t1").await.unwrap().is_consistent());
}

#[tokio::test]
async fn bad_input_unknown_graphs_and_bad_breakpoints_record_nothing() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let probe = Probe::new(0);
    engine.register(gated("1", &probe).compile().unwrap());

    let err = engine
        .enqueue(Enqueue {
            input: json!({"log": ["x", 3], "n": 0}),
            ..job("w", "bad")
        })
        .await
        .unwrap_err();
    match &err {
        Error::InvalidInput(m) => assert!(m.contains("`log[1]`"), "{m}"),
        other => panic!("expected invalid input, got {other:?}"),
    }
    let err = engine
        .enqueue(Enqueue {
            input: json!({"log": [], "n": "three"}),
            ..job("w", "bad")
        })
        .await
        .unwrap_err();
    match &err {
        Error::InvalidInput(m) => assert!(m.starts_with("input field `n`: invalid type"), "{m}"),
        other => panic!("expected invalid input, got {other:?}"),
    }
    let err = engine
        .enqueue(Enqueue {
            input: json!(3),
            ..job("w", "bad")
        })
        .await
        .unwrap_err();
    match &err {
        Error::InvalidInput(m) => assert!(m.starts_with("input: invalid type"), "{m}"),
        other => panic!("expected invalid input, got {other:?}"),
    }
    let err = engine
        .enqueue(Enqueue {
            options: EnqueueOptions {
                run: RunOptions {
                    interrupt_before: vec!["nope".into()],
                    ..Default::default()
                },
                ..Default::default()
            },
            ..job("w", "bad")
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("nope")),
        "{err:?}"
    );
    assert_eq!(
        engine.enqueue(job("nope", "bad")).await.unwrap_err(),
        Error::GraphNotFound {
            graph: "nope".into(),
            version: None
        }
    );
    let err = engine
        .enqueue(Enqueue {
            version: Some("9".into()),
            ..job("w", "bad")
        })
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::GraphNotFound {
            graph: "w".into(),
            version: Some("9".into())
        }
    );
    assert_eq!(err.to_string(), "graph `w` version `9` is not registered");

    assert!(store.thread(&tid("bad")).await.unwrap().is_none());
    assert!(
        claim_at(&store, "w1", Timestamp::now(), Duration::from_secs(1))
            .await
            .is_empty()
    );
}

/// A state that refuses fields it does not have.
#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, oris_derive::State)]
#[oris(crate = "::oris_core")]
#[serde(deny_unknown_fields)]
struct Strict {
    n: i64,
    tag: String,
}

#[tokio::test]
async fn input_fields_left_out_take_the_default_states_value() {
    let (_store, engine) = memory_engine(EngineOptions::default());
    let probe = Probe::new(0);
    engine.register(gated("1", &probe).compile().unwrap());
    engine.register(
        StateGraph::<Strict>::new("strict", "1")
            .node("x", |_s: Strict, _ctx| async {
                Ok::<_, NodeError>(StrictUpdate::default())
            })
            .edge(START, "x")
            .edge("x", END)
            .compile()
            .unwrap(),
    );
    let values = |t: &'static str| {
        let engine = engine.clone();
        async move { engine.state_json(&tid(t)).await.unwrap().values }
    };

    // `W` has no `#[serde(default)]`: a partial input is completed from `W::default()`.
    engine
        .enqueue(Enqueue {
            input: json!({"log": ["only"]}),
            ..job("w", "p1")
        })
        .await
        .unwrap();
    assert_eq!(values("p1").await, json!({"log": ["only"], "n": 0}));
    // `{}` — what the server sends for an absent input — is the default state.
    engine
        .enqueue(Enqueue {
            input: json!({}),
            ..job("w", "p2")
        })
        .await
        .unwrap();
    assert_eq!(values("p2").await, json!({"log": [], "n": 0}));
    // Given fields win over the defaults; a field the state lacks is serde's call: `W`
    // ignores it…
    engine
        .enqueue(Enqueue {
            input: json!({"n": 4, "extra": true}),
            ..job("w", "p3")
        })
        .await
        .unwrap();
    assert_eq!(values("p3").await, json!({"log": [], "n": 4}));
    // …and a `deny_unknown_fields` state refuses it, while taking a partial input.
    let err = engine
        .enqueue(Enqueue {
            input: json!({"n": 1, "extra": true}),
            ..job("strict", "p4")
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("unknown field `extra`")),
        "{err:?}"
    );
    engine
        .enqueue(Enqueue {
            input: json!({"tag": "t"}),
            ..job("strict", "p5")
        })
        .await
        .unwrap();
    assert_eq!(values("p5").await, json!({"n": 0, "tag": "t"}));
}

#[tokio::test]
async fn a_fresh_run_is_executed_and_read_back_with_few_store_calls() {
    use oris_testkit::counting::CountingStore;
    let memory = Arc::new(MemoryStore::new());
    let store = Arc::new(CountingStore::new(memory.clone()));
    let engine = Engine::new(store.clone());
    engine.register(linear("lin", 3).compile().unwrap());
    let t = tid("fresh");

    let before = store.calls();
    engine
        .enqueue(Enqueue {
            graph: "lin".into(),
            version: None,
            thread_id: t.clone(),
            input: json!({"counter": 0, "log": []}),
            options: EnqueueOptions::default(),
        })
        .await
        .unwrap();
    // The thread is looked up (a new one: nothing to fold), then one commit.
    assert_eq!(
        store.since(&before),
        BTreeMap::from([("commit", 1), ("thread", 1)])
    );

    let run = claim_one(&memory, "w1").await;
    let before = store.calls();
    let done = engine
        .execute(run.clone(), quiet("w1"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(done.status, StatusKind::Completed);
    // The first claim of a new thread's run: no snapshot to look for, the log in one read,
    // then one commit per superstep.
    assert_eq!(
        store.since(&before),
        BTreeMap::from([("commit", 3), ("events", 1)])
    );

    // The state of a run in hand, the thread's only one and short: its log in one read;
    // neither the run (the record is at hand) nor a snapshot is read.
    let latest = engine.latest_run(&t).await.unwrap();
    assert_eq!(latest.run_id, run.run_id);
    let before = store.calls();
    let view = engine.state_json_of(latest.clone()).await.unwrap();
    assert_eq!(store.since(&before), BTreeMap::from([("events", 1)]));
    assert_eq!(
        view.values,
        json!({"counter": 3, "log": ["n0", "n1", "n2"]})
    );
    assert_eq!(view.run.as_ref().map(|r| r.run_id), Some(run.run_id));
    assert!(view.next.is_empty());
    // The same view as reading everything again.
    let full = engine.state_json(&t).await.unwrap();
    assert_eq!(
        serde_json::to_value(&full).unwrap(),
        serde_json::to_value(&view).unwrap()
    );

    // A longer log is folded from the snapshot written at the run's end, still without
    // reading the run or its settings (it ended).
    engine.register(linear("long", 40).compile().unwrap());
    let t = tid("long");
    engine
        .enqueue(Enqueue {
            graph: "long".into(),
            version: None,
            thread_id: t.clone(),
            input: json!({"counter": 0, "log": []}),
            options: EnqueueOptions::default(),
        })
        .await
        .unwrap();
    let run = claim_one(&memory, "w1").await;
    engine
        .execute(run, quiet("w1"), CancellationToken::new())
        .await
        .unwrap();
    let latest = engine.latest_run(&t).await.unwrap();
    let before = store.calls();
    let view = engine.state_json_of(latest).await.unwrap();
    assert_eq!(
        store.since(&before),
        BTreeMap::from([("events", 1), ("snapshot", 1)])
    );
    assert_eq!(view.values["counter"], 40);
    assert_eq!(
        serde_json::to_value(engine.state_json(&t).await.unwrap()).unwrap(),
        serde_json::to_value(&view).unwrap()
    );
}

#[tokio::test]
async fn a_resumed_run_is_folded_from_its_own_snapshot_without_reading_its_record() {
    use oris_testkit::counting::CountingStore;
    let memory = Arc::new(MemoryStore::new());
    let store = Arc::new(CountingStore::new(memory.clone()));
    let engine = Engine::with_options(
        store.clone(),
        EngineOptions {
            snapshot_every: 1,
            ..EngineOptions::default()
        },
    );
    let probe = Probe::new(0);
    engine.register(asking(&probe).compile().unwrap());
    engine.enqueue(job("ask", "snap")).await.unwrap();
    let run = claim_one(&memory, "w1").await;
    let out = engine
        .execute(run, quiet("w1"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out.stop, Stop::Suspended);
    let pending = engine.interrupts(&tid("snap")).await.unwrap();
    engine
        .answer(pending[0].interrupt_id, Payload::encode(&"yes").unwrap())
        .await
        .unwrap();

    let run = claim_one(&memory, "w2").await;
    assert_eq!(run.lease_epoch, 2);
    let before = store.calls();
    let out = engine
        .execute(run, quiet("w2"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out.status, StatusKind::Completed);
    let calls = store.since(&before);
    // The snapshot after `a` is the run's own: its record is the claimed one, not read;
    // its settings come from its `run_started` event.
    assert_eq!(calls.get("snapshot"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("run"), None, "{calls:?}");
    assert_eq!(calls.get("thread"), None, "{calls:?}");
    assert_eq!(
        log_of(&engine, "snap").await,
        json!(["in", "a", "ask:yes:ch_1", "b"])
    );
}

#[tokio::test]
async fn a_thread_with_an_unfinished_run_refuses_another() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let probe = Probe::new(0);
    engine.register(gated("1", &probe).compile().unwrap());
    let first = engine.enqueue(job("w", "t")).await.unwrap();
    let err = engine.enqueue(job("w", "t")).await.unwrap_err();
    assert_eq!(
        err,
        Error::RunActive {
            thread_id: tid("t"),
            run_id: first.run_id
        }
    );
    // After it finished, the thread takes a new run, which starts from its state.
    let run = claim_one(&store, "w1").await;
    engine
        .execute(run, quiet("w1"), CancellationToken::new())
        .await
        .unwrap();
    engine
        .enqueue(Enqueue {
            input: input("again"),
            ..job("w", "t")
        })
        .await
        .unwrap();
    let run = claim_one(&store, "w1").await;
    engine
        .execute(run, quiet("w1"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        log_of(&engine, "t").await,
        json!(["in", "a", "slow", "b", "again", "a", "slow", "b"])
    );
}

// ---------------------------------------------------------------------------------------
// Interrupts
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_interrupted_run_suspends_and_continues_where_it_stopped_after_an_answer() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let probe = Probe::new(0);
    engine.register(asking(&probe).compile().unwrap());
    engine.enqueue(job("ask", "t")).await.unwrap();

    let run = claim_one(&store, "w1").await;
    let out = engine
        .execute(run.clone(), quiet("w1"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        out,
        Executed {
            status: StatusKind::Interrupted,
            stop: Stop::Suspended
        }
    );
    let stored = store.run(run.run_id).await.unwrap().unwrap();
    let RunStatus::Interrupted { interrupts } = &stored.status else {
        panic!("expected interrupted, got {:?}", stored.status)
    };
    assert_eq!(interrupts[0].payload, json!({"approve": "ch_1"}));
    assert_eq!(stored.lease, None, "the suspension ended the lease");
    assert_eq!(stored.ready_at, None, "not claimable until answered");
    assert!(
        claim_at(&store, "w1", Timestamp::now(), Duration::from_secs(1))
            .await
            .is_empty()
    );

    let id = interrupts[0].interrupt_id;
    let (answer, record) = engine
        .answer(id, Payload::encode(&"yes").unwrap())
        .await
        .unwrap();
    assert_eq!(answer, Answer::Recorded);
    assert_eq!(record.thread_id, tid("t"));
    // Answering records, drives nothing.
    assert_eq!(probe.count("ask"), 1);
    let (again, _) = engine
        .answer(id, Payload::encode(&"yes").unwrap())
        .await
        .unwrap();
    assert_eq!(again, Answer::AlreadyAnswered);
    assert!(matches!(
        engine.answer(id, Payload::encode(&"no").unwrap()).await,
        Err(Error::ResumeConflict(_))
    ));

    let run = claim_one(&store, "w2").await;
    assert_eq!(run.lease_epoch, 2);
    let out = engine
        .execute(run, quiet("w2"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        out,
        Executed {
            status: StatusKind::Completed,
            stop: Stop::Finished
        }
    );
    assert_eq!(
        log_of(&engine, "t").await,
        json!(["in", "a", "ask:yes:ch_1", "b"])
    );
    assert_eq!(
        probe.count("a"),
        1,
        "nodes before the interrupt are not re-run"
    );
    assert_eq!(probe.count("charge"), 1, "recorded steps are not re-run");
    assert_eq!(
        probe.count("ask"),
        2,
        "the interrupted node runs again from its start"
    );
    assert_eq!(probe.count("b"), 1);
}

// ---------------------------------------------------------------------------------------
// Lost leases
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_superseded_worker_never_commits_and_the_new_holder_finishes() {
    // Two engines on one store: two worker processes.
    let store = Arc::new(MemoryStore::new());
    let first = Engine::new(store.clone());
    let second = Engine::new(store.clone());
    let probe = Probe::new(1);
    first.register(gated("1", &probe).compile().unwrap());
    second.register(gated("1", &probe).compile().unwrap());
    first.enqueue(job("w", "t")).await.unwrap();

    let short = Duration::from_millis(200);
    let run1 = claim_at(&store, "w1", Timestamp::now(), short)
        .await
        .remove(0);
    let task1 = spawn_execute(&first, run1.clone(), quiet("w1"), CancellationToken::new());
    probe.started(1).await;

    // Once the lease expired, another worker claims the run (the claim is dated after the
    // expiry instead of waiting for it).
    let later = Timestamp::now().plus(Duration::from_secs(60));
    let mut run2 = claim_at(&store, "w2", later, Duration::from_secs(3600)).await;
    assert_eq!(run2.len(), 1);
    let run2 = run2.remove(0);
    assert_eq!(run2.lease_epoch, 2);
    let out2 = within(
        "the second worker",
        second.execute(run2, quiet("w2"), CancellationToken::new()),
    )
    .await
    .unwrap();
    assert_eq!(out2.stop, Stop::Finished);
    assert_eq!(out2.status, StatusKind::Completed);

    // The first worker's node finishes now; its commit must not land.
    probe.release.add_permits(1);
    let out1 = within("the first worker", task1).await.unwrap().unwrap();
    assert_eq!(
        out1,
        Executed {
            status: StatusKind::Completed,
            stop: Stop::LeaseLost
        }
    );
    assert_eq!(probe.finished.load(Ordering::SeqCst), 2, "both bodies ran");
    let events = all_events(&first, "t").await;
    assert_eq!(
        completed_nodes(&events, "slow"),
        1,
        "only the holder's result landed"
    );
    assert_eq!(completed_nodes(&events, "a"), 1);
    assert_eq!(
        probe.count("a"),
        1,
        "a completed node is never executed twice"
    );
    assert_eq!(probe.count("b"), 1);
    assert_eq!(log_of(&first, "t").await, json!(["in", "a", "slow", "b"]));
}

#[tokio::test]
async fn a_newer_claim_in_the_same_process_stops_the_older_execution_at_once() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let probe = Probe::new(1);
    engine.register(gated("1", &probe).compile().unwrap());
    engine.enqueue(job("w", "t")).await.unwrap();
    let run1 = claim_one(&store, "w1").await;
    let task1 = spawn_execute(&engine, run1, quiet("w1"), CancellationToken::new());
    probe.started(1).await;

    let later = Timestamp::now().plus(Duration::from_secs(3600));
    let run2 = claim_at(&store, "w2", later, Duration::from_secs(3600))
        .await
        .remove(0);
    let out2 = within(
        "the newer execution",
        engine.execute(run2, quiet("w2"), CancellationToken::new()),
    )
    .await
    .unwrap();
    assert_eq!(out2.status, StatusKind::Completed);
    let out1 = within("the older execution", task1).await.unwrap().unwrap();
    assert_eq!(out1.stop, Stop::LeaseLost);
    assert_eq!(
        probe.dropped.load(Ordering::SeqCst),
        1,
        "its node future was dropped"
    );
    assert_eq!(probe.finished.load(Ordering::SeqCst), 1);
    assert_eq!(probe.count("a"), 1);
    assert_eq!(log_of(&engine, "t").await, json!(["in", "a", "slow", "b"]));
}

#[tokio::test]
async fn a_refused_renewal_stops_the_driver_and_drops_its_node() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let probe = Probe::new(1);
    engine.register(gated("1", &probe).compile().unwrap());
    engine.enqueue(job("w", "t")).await.unwrap();
    let run1 = claim_one(&store, "w1").await;
    let task1 = spawn_execute(&engine, run1, beating("w1"), CancellationToken::new());
    probe.started(1).await;
    let head = store.thread(&tid("t")).await.unwrap().unwrap().head;

    // Another worker takes the run over; the first learns it from its next heartbeat while
    // its node is still blocked.
    let later = Timestamp::now().plus(Duration::from_secs(3600));
    let run2 = claim_at(&store, "w2", later, Duration::from_secs(3600))
        .await
        .remove(0);
    let out1 = within("the heartbeat to notice", task1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out1.stop, Stop::LeaseLost);
    assert_eq!(probe.dropped.load(Ordering::SeqCst), 1);
    assert_eq!(probe.finished.load(Ordering::SeqCst), 0);
    assert_eq!(store.thread(&tid("t")).await.unwrap().unwrap().head, head);

    let out2 = engine
        .execute(run2, quiet("w2"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out2.status, StatusKind::Completed);
    assert_eq!(probe.count("a"), 1);
    assert_eq!(log_of(&engine, "t").await, json!(["in", "a", "slow", "b"]));
}

#[tokio::test]
async fn the_heartbeat_keeps_a_lease_past_its_ttl() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let probe = Probe::new(1);
    engine.register(gated("1", &probe).compile().unwrap());
    engine.enqueue(job("w", "t")).await.unwrap();
    let ttl = Duration::from_millis(150);
    let run = claim_at(&store, "w1", Timestamp::now(), ttl)
        .await
        .remove(0);
    let first_expiry = run.lease.as_ref().unwrap().expires_at;
    let lease = LeaseOptions {
        worker_id: "w1".into(),
        ttl,
        heartbeat: Duration::from_millis(20),
    };
    let task = spawn_execute(&engine, run.clone(), lease, CancellationToken::new());
    probe.started(1).await;
    // Wait (on real time: leases expire by the clock) until well past the first expiry.
    within("the first lease to run out", async {
        while Timestamp::now() <= first_expiry.plus(Duration::from_millis(100)) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let now = store.run(run.run_id).await.unwrap().unwrap();
    assert_eq!(now.lease_epoch, 1);
    let holder = now.lease.expect("still leased");
    assert_eq!(holder.worker_id, "w1");
    assert!(holder.expires_at > first_expiry, "renewed");
    assert!(
        claim_at(&store, "w2", Timestamp::now(), ttl)
            .await
            .is_empty(),
        "a renewed lease is not claimable"
    );
    probe.release.add_permits(1);
    let out = within("the execution", task).await.unwrap().unwrap();
    assert_eq!(out.status, StatusKind::Completed);
    assert_eq!(out.stop, Stop::Finished);
}

// ---------------------------------------------------------------------------------------
// Graceful stop
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_graceful_stop_commits_running_nodes_and_hands_the_run_back() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let probe = Probe::new(1);
    engine.register(gated("1", &probe).compile().unwrap());
    engine.enqueue(job("w", "t")).await.unwrap();
    let run = claim_one(&store, "w1").await;
    let stop = CancellationToken::new();
    let task = spawn_execute(&engine, run.clone(), quiet("w1"), stop.clone());
    probe.started(1).await;

    stop.cancel();
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(!task.is_finished(), "the running node is waited for");
    probe.release.add_permits(1);
    let out = within("the stop", task).await.unwrap().unwrap();
    assert_eq!(
        out,
        Executed {
            status: StatusKind::Running,
            stop: Stop::Shutdown
        }
    );
    assert_eq!(probe.count("b"), 0, "no new attempt after the stop");
    let events = all_events(&engine, "t").await;
    assert_eq!(
        completed_nodes(&events, "slow"),
        1,
        "the running node was committed"
    );
    let stored = store.run(run.run_id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Running);
    assert_eq!(stored.lease, None, "the lease was released");
    assert!(stored.ready_at.is_some_and(|t| t <= Timestamp::now()));

    let run = claim_one(&store, "w2").await;
    let out = engine
        .execute(run, quiet("w2"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out.status, StatusKind::Completed);
    assert_eq!(probe.count("slow"), 1, "the committed node is not re-run");
    assert_eq!(probe.count("a"), 1);
    assert_eq!(probe.count("b"), 1);
    assert_eq!(log_of(&engine, "t").await, json!(["in", "a", "slow", "b"]));
}

#[tokio::test]
async fn a_stop_before_the_execution_runs_nothing() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let probe = Probe::new(0);
    engine.register(gated("1", &probe).compile().unwrap());
    engine.enqueue(job("w", "t")).await.unwrap();
    let run = claim_one(&store, "w1").await;
    let stop = CancellationToken::new();
    stop.cancel();
    let out = engine.execute(run, quiet("w1"), stop).await.unwrap();
    assert_eq!(out.stop, Stop::Shutdown);
    assert_eq!(probe.count("a"), 0);
    let again = claim_one(&store, "w2").await;
    assert_eq!(again.lease_epoch, 2);
}

#[tokio::test]
async fn a_graceful_stop_does_not_start_a_pending_retry() {
    let store = Arc::new(MemoryStore::new());
    let recorder = Recorder::new();
    let engine = Engine::with_options(store.clone(), recorder.options());
    let runs = Counters::new();
    let r = runs.clone();
    let policy = NodePolicy {
        retry: RetryPolicy::exponential(3)
            .initial_interval(Duration::from_millis(300))
            .jitter(false),
        timeout: None,
    };
    let g = StateGraph::<W>::new("flaky", "1")
        .node_with("f", policy, move |_s: W, _ctx| {
            let n = r.hit("f");
            async move {
                if n == 1 {
                    Err(NodeError::new("transient"))
                } else {
                    Ok(WUpdate::default().log(vec!["f".into()]))
                }
            }
        })
        .edge(START, "f")
        .edge("f", END)
        .compile()
        .unwrap();
    engine.register(g);
    engine.enqueue(job("flaky", "t")).await.unwrap();
    let run = claim_one(&store, "w1").await;
    let stop = CancellationToken::new();
    let task = spawn_execute(&engine, run, quiet("w1"), stop.clone());
    // The failure (with its retry time) is committed before the retry's delay ends.
    within(
        "the failure",
        recorder.wait_until("t", |cs| {
            cs.iter()
                .flat_map(|c| &c.events)
                .any(|e| matches!(e.body, EventBody::NodeFailed { .. }))
        }),
    )
    .await;
    stop.cancel();
    let out = within("the stop", task).await.unwrap().unwrap();
    assert_eq!(out.stop, Stop::Shutdown);
    assert_eq!(runs.count("f"), 1, "the retry did not start");

    let run = claim_one(&store, "w2").await;
    let out = engine
        .execute(run, quiet("w2"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out.status, StatusKind::Completed);
    assert_eq!(runs.count("f"), 2);
    let events = all_events(&engine, "t").await;
    let attempts: Vec<u32> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::NodeCompleted { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, [2], "the next worker made the second attempt");
}

// ---------------------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn cancelling_a_queued_run_makes_it_unclaimable() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let probe = Probe::new(0);
    engine.register(gated("1", &probe).compile().unwrap());
    engine.enqueue(job("w", "t")).await.unwrap();
    let record = engine.cancel(&tid("t"), "not needed").await.unwrap();
    assert_eq!(
        record.status,
        RunStatus::Cancelled {
            reason: "not needed".into()
        }
    );
    assert_eq!(record.ready_at, None);
    assert!(
        claim_at(&store, "w1", Timestamp::now(), Duration::from_secs(1))
            .await
            .is_empty()
    );
    assert_eq!(probe.count("a"), 0);
}

#[tokio::test]
async fn cancelling_a_run_executed_here_stops_its_driver() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let probe = Probe::new(usize::MAX);
    engine.register(gated("1", &probe).compile().unwrap());
    engine.enqueue(job("w", "t")).await.unwrap();
    let run = claim_one(&store, "w1").await;
    let task = spawn_execute(&engine, run.clone(), quiet("w1"), CancellationToken::new());
    probe.started(1).await;
    // The thread has an unfinished run: another is refused at once.
    let err = within("enqueue", engine.enqueue(job("w", "t")))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::RunActive {
            thread_id: tid("t"),
            run_id: run.run_id
        }
    );
    let record = within("cancel", engine.cancel(&tid("t"), "stop it"))
        .await
        .unwrap();
    assert_eq!(record.status.kind(), StatusKind::Cancelled);
    assert_eq!(record.lease, None);
    let out = within("the execution", task).await.unwrap().unwrap();
    assert_eq!(
        out,
        Executed {
            status: StatusKind::Cancelled,
            stop: Stop::Finished
        }
    );
    assert_eq!(probe.dropped.load(Ordering::SeqCst), 1);
    assert_eq!(
        count_kind(&all_events(&engine, "t").await, EventKind::RunCancelled),
        1
    );
}

#[tokio::test]
async fn cancelling_a_run_executed_elsewhere_stops_that_worker_at_its_heartbeat() {
    let store = Arc::new(MemoryStore::new());
    let worker = Engine::new(store.clone());
    let operator = Engine::new(store.clone());
    let probe = Probe::new(usize::MAX);
    worker.register(gated("1", &probe).compile().unwrap());
    operator.enqueue(job("w", "t")).await.unwrap_err(); // not registered there
    worker.enqueue(job("w", "t")).await.unwrap();
    let run = claim_one(&store, "w1").await;
    let task = spawn_execute(&worker, run, beating("w1"), CancellationToken::new());
    probe.started(1).await;

    let record = operator.cancel(&tid("t"), "from the API").await.unwrap();
    assert_eq!(record.status.kind(), StatusKind::Cancelled);
    let out = within("the worker to notice", task).await.unwrap().unwrap();
    assert_eq!(
        out,
        Executed {
            status: StatusKind::Cancelled,
            stop: Stop::LeaseLost
        }
    );
    assert_eq!(probe.dropped.load(Ordering::SeqCst), 1);
    let events = all_events(&worker, "t").await;
    assert_eq!(completed_nodes(&events, "slow"), 0);
    assert_eq!(count_kind(&events, EventKind::RunCancelled), 1);
}

// ---------------------------------------------------------------------------------------
// Versions
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_run_pinned_to_a_version_this_engine_lacks_is_refused_untouched() {
    let store = Arc::new(MemoryStore::new());
    let old = Engine::new(store.clone());
    let new = Engine::new(store.clone());
    let probe = Probe::new(0);
    old.register(gated("1", &probe).compile().unwrap());
    new.register(gated("2", &probe).compile().unwrap());
    old.enqueue(job("w", "t")).await.unwrap();
    let before = all_events(&old, "t").await;

    let run = claim_one(&store, "w-new").await;
    let err = new
        .execute(run.clone(), quiet("w-new"), CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::GraphNotRegistered {
            thread_id: tid("t"),
            run_id: run.run_id,
            graph: "w".into(),
            version: "1".into()
        }
    );
    assert!(err.to_string().contains("version `1`"), "{err}");
    assert_eq!(all_events(&old, "t").await, before, "nothing written");
    assert_eq!(probe.count("a"), 0);
    assert!(matches!(
        new.state_json(&tid("t")).await,
        Err(Error::GraphNotRegistered { .. })
    ));

    // The caller hands it back; a worker that has version 1 (and says so) takes it.
    let fence = Fence {
        run_id: run.run_id,
        epoch: run.lease_epoch,
    };
    store.release_lease(&fence, Timestamp::now()).await.unwrap();
    let only_v2 = store
        .claim(&ClaimRequest {
            worker_id: "w-new".into(),
            now: Timestamp::now(),
            ttl: Duration::from_secs(30),
            limit: 10,
            graphs: vec![("w".into(), "2".into())],
        })
        .await
        .unwrap();
    assert!(only_v2.is_empty());
    let run = claim_one(&store, "w-old").await;
    let out = old
        .execute(run, quiet("w-old"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out.status, StatusKind::Completed);
}

#[tokio::test]
async fn without_a_version_the_latest_registered_one_is_used() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let probe = Probe::new(0);
    engine.register(gated("1", &probe).compile().unwrap());
    engine.register(gated("2", &probe).compile().unwrap());
    assert_eq!(engine.graph_info("w", None).unwrap().version, "2");
    let r = engine.enqueue(job("w", "t2")).await.unwrap();
    assert_eq!(r.graph_version, "2");
    // Registering 1 again makes it the latest.
    engine.register(gated("1", &probe).compile().unwrap());
    assert_eq!(engine.graph_info("w", None).unwrap().version, "1");
    let r = engine
        .enqueue(Enqueue {
            version: Some("2".into()),
            ..job("w", "t3")
        })
        .await
        .unwrap();
    assert_eq!(r.graph_version, "2");
    assert_eq!(
        claim_at(&store, "w", Timestamp::now(), Duration::from_secs(1))
            .await
            .len(),
        2
    );
}

// ---------------------------------------------------------------------------------------
// Waiting for runs executed elsewhere
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn wait_for_sees_a_run_finished_by_another_engine() {
    let store = Arc::new(MemoryStore::new());
    let api = Engine::new(store.clone());
    let worker = Engine::new(store.clone());
    let probe = Probe::new(0);
    api.register(gated("1", &probe).compile().unwrap());
    worker.register(gated("1", &probe).compile().unwrap());
    api.enqueue(job("w", "t")).await.unwrap();
    let waiter = {
        let api = api.clone();
        tokio::spawn(async move { api.wait_for(&tid("t"), RunStatus::is_terminal).await })
    };
    let run = claim_one(&store, "w1").await;
    worker
        .execute(run, quiet("w1"), CancellationToken::new())
        .await
        .unwrap();
    let seen = within("the waiter", waiter).await.unwrap().unwrap();
    assert_eq!(seen.status.kind(), StatusKind::Completed);
}

// ---------------------------------------------------------------------------------------
// Graph descriptions, JSON state, replay and fork
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn graphs_are_described_sorted_with_every_edge() {
    let engine = Engine::new(Arc::new(MemoryStore::new()));
    let probe = Probe::new(0);
    engine.register(gated("2", &probe).compile().unwrap());
    engine.register(asking(&probe).compile().unwrap());
    engine.register(gated("1", &probe).compile().unwrap());
    let routed = StateGraph::<W>::new("routed", "1")
        .node("a", |_s: W, _ctx| async {
            Ok::<_, NodeError>(WUpdate::default())
        })
        .node("b", |_s: W, _ctx| async {
            Ok::<_, NodeError>(WUpdate::default())
        })
        .node("c", |_s: W, _ctx| async {
            Ok::<_, NodeError>(WUpdate::default())
        })
        .conditional_edge(START, ["a", "b"], |_s: &W| "a")
        .join(["a", "b"], "c")
        .goto_targets("c", [END])
        .edge("c", END)
        .interrupt_before(["c"])
        .compile()
        .unwrap();
    engine.register(routed);
    let all: Vec<(String, String)> = engine
        .graphs()
        .into_iter()
        .map(|g| (g.name, g.version))
        .collect();
    assert_eq!(
        all,
        [
            ("ask".to_owned(), "1".to_owned()),
            ("routed".into(), "1".into()),
            ("w".into(), "1".into()),
            ("w".into(), "2".into()),
        ]
    );
    let w = engine.graph_info("w", Some("1")).unwrap();
    assert_eq!(w.nodes, ["a", "slow", "b"]);
    assert_eq!(w.entry, ["a"]);
    assert_eq!(w.edges.len(), 4);
    assert!(w.edges.iter().all(|e| e.kind == EdgeKind::Edge));
    assert!(w.mermaid.contains("slow"));
    assert_eq!(w.state_fields.len(), 2);
    let r = engine.graph_info("routed", None).unwrap();
    assert_eq!(r.entry, ["a", "b"]);
    assert_eq!(r.interrupt_before, ["c"]);
    let kinds: Vec<(&str, &str, EdgeKind)> = r
        .edges
        .iter()
        .map(|e| (e.from.as_str(), e.to.as_str(), e.kind))
        .collect();
    assert!(kinds.contains(&(START, "b", EdgeKind::Conditional)));
    assert!(kinds.contains(&("b", "c", EdgeKind::Join)));
    assert!(kinds.contains(&("c", END, EdgeKind::Goto)));
    assert!(kinds.contains(&("c", END, EdgeKind::Edge)));
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["edges"][0]["kind"], "edge");
    assert!(engine.graph_info("nope", None).is_none());
    assert!(engine.graph_info("w", Some("3")).is_none());
}

#[tokio::test]
async fn state_is_read_and_edited_as_json() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let probe = Probe::new(0);
    engine.register(gated("1", &probe).compile().unwrap());
    let t = tid("t");
    assert!(matches!(
        engine.state_json(&t).await,
        Err(Error::ThreadNotFound(_))
    ));
    engine.enqueue(job("w", "t")).await.unwrap();
    let queued = engine.state_json(&t).await.unwrap();
    assert_eq!(queued.values["log"], json!(["in"]));
    assert_eq!(queued.next, ["a"]);
    assert_eq!(queued.run.as_ref().unwrap().status, RunStatus::Queued);

    let run = claim_one(&store, "w1").await;
    engine
        .execute(run, quiet("w1"), CancellationToken::new())
        .await
        .unwrap();
    let done = engine.state_json(&t).await.unwrap();
    assert_eq!(
        done.values,
        json!({"log": ["in", "a", "slow", "b"], "n": 0})
    );
    assert!(done.next.is_empty());
    let view = serde_json::to_value(&done).unwrap();
    assert_eq!(view["run"]["status"], "completed");
    assert_eq!(view["thread_id"], "t");
    assert_eq!(
        view["checkpoint"],
        json!(done.checkpoint.unwrap().to_string())
    );

    let checkpoints = engine.checkpoints(&t).await.unwrap();
    let first = checkpoints[0].id;
    let at = engine.state_at_json(&t, first).await.unwrap();
    assert_eq!(at.values["log"], json!(["in"]));
    assert_eq!(at.next, ["a"]);
    assert_eq!(at.checkpoint, Some(first));
    assert!(matches!(
        engine
            .state_at_json(&t, oris_core::id::CheckpointId(Seq(999)))
            .await,
        Err(Error::CheckpointNotFound { .. })
    ));

    let edited = engine
        .update_state_json(&t, None, json!({"log": ["edit"], "n": 5}))
        .await
        .unwrap();
    assert_eq!(
        edited.values["log"],
        json!(["in", "a", "slow", "b", "edit"])
    );
    assert_eq!(edited.values["n"], 5);
    let events = all_events(&engine, "t").await;
    assert!(matches!(
        &events.last().unwrap().body,
        EventBody::StateUpdated { as_node, .. } if as_node == "b"
    ));
    let err = engine
        .update_state_json(&t, Some("a".into()), json!({"log": "x"}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("`log`")),
        "{err:?}"
    );
    let err = engine
        .update_state_json(&t, Some("zz".into()), json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("zz")),
        "{err:?}"
    );
}

#[tokio::test]
async fn replay_and_fork_are_queued_for_workers() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let probe = Probe::new(0);
    engine.register(gated("1", &probe).compile().unwrap());
    let t = tid("t");
    engine.enqueue(job("w", "t")).await.unwrap();
    let run = claim_one(&store, "w1").await;
    engine
        .execute(run, quiet("w1"), CancellationToken::new())
        .await
        .unwrap();
    let checkpoints = engine.checkpoints(&t).await.unwrap();
    // After `a`: the replay runs `slow` and `b` again.
    let after_a = checkpoints[1].id;

    let replay = engine
        .enqueue_replay(&t, after_a, EnqueueOptions::default())
        .await
        .unwrap();
    assert_eq!(replay.status, RunStatus::Queued);
    assert!(matches!(
        engine
            .enqueue_replay(&t, after_a, EnqueueOptions::default())
            .await,
        Err(Error::RunActive { .. })
    ));
    assert_eq!(probe.count("slow"), 1, "queued, not run");
    let run = claim_one(&store, "w1").await;
    assert_eq!(run.run_id, replay.run_id);
    engine
        .execute(run, quiet("w1"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(log_of(&engine, "t").await, json!(["in", "a", "slow", "b"]));
    assert_eq!(probe.count("a"), 1);
    assert_eq!(probe.count("slow"), 2);

    let fork = engine
        .enqueue_fork(&t, after_a, tid("t2"), EnqueueOptions::default())
        .await
        .unwrap();
    assert_eq!(fork.thread_id, tid("t2"));
    let run = claim_one(&store, "w1").await;
    engine
        .execute(run, quiet("w1"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(log_of(&engine, "t2").await, json!(["in", "a", "slow", "b"]));
    assert!(matches!(
        engine
            .enqueue_fork(&t, after_a, tid("t2"), EnqueueOptions::default())
            .await,
        Err(Error::ThreadExists(_))
    ));
    assert_eq!(probe.count("a"), 1, "the fork starts after a");
    assert!(matches!(
        engine
            .enqueue_replay(&tid("nope"), after_a, EnqueueOptions::default())
            .await,
        Err(Error::ThreadNotFound(_))
    ));
}

#[tokio::test]
async fn an_answer_that_races_the_suspension_makes_the_run_claimable() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let probe = Probe::new(1);
    let p = probe.clone();
    // Two tasks in one superstep: `x` asks at once, `slow` keeps the run from suspending
    // until the test lets it finish.
    let g = StateGraph::<W>::new("race", "1")
        .node("x", move |_s: W, ctx| async move {
            let v: String = ctx.interrupt(&"x?").await?;
            Ok::<_, NodeError>(WUpdate::default().log(vec![format!("x:{v}")]))
        })
        .node("slow", move |_s: W, _ctx| {
            let p = p.clone();
            async move {
                let n = p.runs.hit("slow");
                p.started.send_modify(|s| *s += 1);
                if n <= p.blocking.load(Ordering::SeqCst) {
                    p.release.acquire().await.expect("open").forget();
                }
                Ok::<_, NodeError>(WUpdate::default().log(vec!["slow".into()]))
            }
        })
        .edge(START, "x")
        .edge(START, "slow")
        .edge("x", END)
        .edge("slow", END)
        .compile()
        .unwrap();
    engine.register(g);
    engine.enqueue(job("race", "t")).await.unwrap();
    let run = claim_one(&store, "w1").await;
    let task = spawn_execute(&engine, run, quiet("w1"), CancellationToken::new());
    probe.started(1).await;
    // `x`'s interrupt is recorded while the run still executes `slow`.
    let interrupt = within("x's interrupt", async {
        loop {
            if let Some(i) = engine.interrupts(&tid("t")).await.unwrap().pop() {
                return i;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    engine
        .answer(interrupt.interrupt_id, Payload::encode(&"ok").unwrap())
        .await
        .unwrap();
    probe.release.add_permits(1);
    let out = within("the execution", task).await.unwrap().unwrap();
    // The worker suspends without looking at the answer; the store makes the run ready.
    assert_eq!(
        out,
        Executed {
            status: StatusKind::Interrupted,
            stop: Stop::Suspended
        }
    );
    let run = claim_one(&store, "w2").await;
    let out = engine
        .execute(run, quiet("w2"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out.status, StatusKind::Completed);
    assert_eq!(log_of(&engine, "t").await, json!(["in", "x:ok", "slow"]));
    assert_eq!(probe.count("slow"), 1);
}

#[tokio::test]
async fn recovery_leaves_queued_and_claimed_runs_to_workers() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let probe = Probe::new(0);
    engine.register(gated("1", &probe).compile().unwrap());
    let queued = engine.enqueue(job("w", "q")).await.unwrap();
    let other = engine
        .enqueue(Enqueue {
            options: EnqueueOptions {
                priority: 1,
                ..Default::default()
            },
            ..job("w", "c")
        })
        .await
        .unwrap();
    let claimed = store
        .claim(&ClaimRequest {
            worker_id: "w1".into(),
            now: Timestamp::now(),
            ttl: Duration::from_secs(30),
            limit: 1,
            graphs: Vec::new(),
        })
        .await
        .unwrap()
        .remove(0);
    let report = engine.recover().await.unwrap();
    assert!(report.resumed.is_empty());
    assert!(report.skipped.is_empty());
    let mut left: Vec<_> = report.left_to_workers.iter().map(|(_, r)| *r).collect();
    left.sort();
    assert_eq!(
        claimed.run_id, other.run_id,
        "the higher priority is claimed first"
    );
    let mut expected = vec![queued.run_id, claimed.run_id];
    expected.sort();
    assert_eq!(left, expected);
    assert_eq!(probe.count("a"), 0);
}

// ---------------------------------------------------------------------------------------
// Timers and events
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_sleeping_run_is_claimed_again_when_due_and_not_before() {
    let clock = oris_runtime::ManualClock::new(Timestamp::now());
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::with_options(
        store.clone(),
        EngineOptions {
            clock: Arc::new(clock.clone()),
            ..EngineOptions::default()
        },
    );
    let runs = Counters::new();
    let r = runs.clone();
    let g = StateGraph::<W>::new("sleepy", "1")
        .node("remind", move |_s: W, ctx| {
            let r = r.clone();
            async move {
                ctx.step("before", async move {
                    r.hit("before");
                    Ok(())
                })
                .await?;
                ctx.sleep(Duration::from_secs(3600)).await?;
                Ok::<_, NodeError>(WUpdate::default().log(vec!["reminded".into()]))
            }
        })
        .edge(START, "remind")
        .edge("remind", END)
        .compile()
        .unwrap();
    engine.register(g);
    engine.enqueue(job("sleepy", "t")).await.unwrap();
    let run = claim_one(&store, "w1").await;
    let out = engine
        .execute(run.clone(), quiet("w1"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        out,
        Executed {
            status: StatusKind::Waiting,
            stop: Stop::Suspended
        }
    );
    let stored = store.run(run.run_id).await.unwrap().unwrap();
    let RunStatus::Waiting {
        until: Some(until), ..
    } = stored.status
    else {
        panic!("{:?}", stored.status)
    };
    assert_eq!(
        stored.ready_at,
        Some(until),
        "claimable when the timer is due"
    );
    assert_eq!(stored.lease, None);
    assert!(
        claim_at(&store, "w1", Timestamp::now(), Duration::from_secs(30))
            .await
            .is_empty()
    );

    // A claimer whose clock runs ahead of the engine's: the run is not due here, so the
    // worker leaves it as it was and keeps the lease until it expires (no hot loop).
    let ttl = Duration::from_secs(30);
    let early = claim_at(&store, "w2", until, ttl).await.remove(0);
    let out = engine
        .execute(early, quiet("w2"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out.stop, Stop::Suspended);
    let stored = store.run(run.run_id).await.unwrap().unwrap();
    assert_eq!(
        stored.lease.as_ref().map(|l| l.worker_id.as_str()),
        Some("w2")
    );
    assert!(claim_at(&store, "w3", until, ttl).await.is_empty());
    assert_eq!(
        count_kind(&all_events(&engine, "t").await, EventKind::RunResumed),
        0
    );

    // Due now: after that lease ran out, a worker continues the run.
    clock.advance(Duration::from_secs(3600));
    let due = claim_at(&store, "w3", until.plus(ttl), ttl).await.remove(0);
    assert_eq!(due.lease_epoch, 3);
    let out = engine
        .execute(due, quiet("w3"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out.status, StatusKind::Completed);
    assert_eq!(runs.count("before"), 1, "the recorded step is not re-run");
    assert_eq!(log_of(&engine, "t").await, json!(["in", "reminded"]));
}

#[tokio::test]
async fn an_event_makes_a_waiting_run_claimable() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let g = StateGraph::<W>::new("events", "1")
        .node("listen", |_s: W, ctx| async move {
            let got: Option<String> = ctx.wait_for_event("go", Duration::from_secs(3600)).await?;
            Ok::<_, NodeError>(WUpdate::default().log(vec![format!("got:{got:?}")]))
        })
        .edge(START, "listen")
        .edge("listen", END)
        .compile()
        .unwrap();
    engine.register(g);
    engine.enqueue(job("events", "t")).await.unwrap();
    let run = claim_one(&store, "w1").await;
    let out = engine
        .execute(run, quiet("w1"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out.status, StatusKind::Waiting);
    assert!(
        claim_at(&store, "w1", Timestamp::now(), Duration::from_secs(30))
            .await
            .is_empty()
    );
    engine
        .send_event(&tid("t"), "go", &"now", None)
        .await
        .unwrap();
    // The engine does not continue a worker's run in-process: it stays waiting for a claim.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        engine.latest_run(&tid("t")).await.unwrap().status.kind(),
        StatusKind::Waiting
    );
    let run = claim_one(&store, "w2").await;
    let out = engine
        .execute(run, quiet("w2"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out.status, StatusKind::Completed);
    assert_eq!(
        log_of(&engine, "t").await,
        json!(["in", "got:Some(\"now\")"])
    );
}
