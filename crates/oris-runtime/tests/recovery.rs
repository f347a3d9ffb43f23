//! Crash recovery (simulated in process by aborting the task that drives a run), graph
//! version pinning, durability modes, and corrupted stored data.

mod common;

use std::sync::Arc;

use common::*;
use oris_core::event::{Boundary, Durability, Event, EventBody, Payload, RunSettings, Task};
use oris_core::graph::{END, START};
use oris_core::id::{RunId, Seq, ThreadId, Timestamp};
use oris_core::state::State as _;
use oris_core::status::{RunStatus, StatusKind};
use oris_core::store::{Commit, MemoryStore, RunRecord, RunWrite, Store};
use oris_runtime::{Engine, EngineOptions, Error, NodeError, RunOptions, StateGraph};

/// `START → fan → {a, b, c} → join [a, b, c] → after → END`. Every node appends its name
/// and counts its executions; `c` blocks while `block_c` (the "crashing" process).
fn crashy(version: &str, runs: Arc<Counters>, block_c: Option<Blocker>) -> StateGraph<Lin> {
    let node = |me: &'static str| {
        let runs = runs.clone();
        let block = if me == "c" { block_c.clone() } else { None };
        move |s: Lin, _ctx| {
            runs.hit(me);
            let block = block.clone();
            async move {
                if let Some(b) = block {
                    b.block().await;
                }
                let mut u = LinUpdate::default().log(vec![me.to_owned()]);
                if me == "after" {
                    u = u.counter(s.log.len() as i64);
                }
                Ok::<_, NodeError>(u)
            }
        }
    };
    StateGraph::<Lin>::new("crashy", version)
        .node("fan", node("fan"))
        .node("a", node("a"))
        .node("b", node("b"))
        .node("c", node("c"))
        .node("after", node("after"))
        .edge(START, "fan")
        .edge("fan", "a")
        .edge("fan", "b")
        .edge("fan", "c")
        .join(["a", "b", "c"], "after")
        .edge("after", END)
}

/// Starts `crashy` v1 on `thread` in a first engine, waits until `a` and `b` of the
/// parallel superstep are committed while `c` blocks, then aborts the driving task.
/// Returns the run id.
async fn crash_mid_superstep(
    store: &Arc<MemoryStore>,
    runs: &Arc<Counters>,
    thread: &str,
) -> RunId {
    let rec = Recorder::new();
    let first = Engine::with_options(store.clone(), rec.options());
    let (b, mut probe) = blocker();
    let dropped = probe.arm();
    let h = first.register(crashy("1", runs.clone(), Some(b)).compile().unwrap());
    let task = {
        let h = h.clone();
        let thread = thread.to_owned();
        tokio::spawn(async move { h.start(thread, Lin::default()).await })
    };
    probe.started().await;
    within(
        "a and b to be committed",
        rec.wait_until(thread, |c| {
            completions(c, "a") == 1 && completions(c, "b") == 1
        }),
    )
    .await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    within("c to be dropped", dropped).await.unwrap();
    first.latest_run(&tid(thread)).await.unwrap().run_id
}

// ---------------------------------------------------------------------------------------
// 12. Crash recovery
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn recovery_finishes_the_run_without_re_executing_completed_nodes() {
    let store = Arc::new(MemoryStore::new());
    let runs = Counters::new();
    let run_id = crash_mid_superstep(&store, &runs, "crash").await;
    assert_eq!(
        ["fan", "a", "b", "c", "after"].map(|n| runs.count(n)),
        [1, 1, 1, 1, 0]
    );

    // What the store holds after the "crash": superstep 1 is open, a and b are done.
    let second = Engine::new(store.clone());
    let h = second.register(crashy("1", runs.clone(), None).compile().unwrap());
    let st = h.state("crash").await.unwrap();
    assert_eq!(st.run.as_ref().unwrap().status, RunStatus::Running);
    assert_eq!(st.values.log, ["fan"], "partial superstep is not merged");
    assert_eq!(st.next, ["a", "b", "c"].map(|n| Task::Node(n.into())));

    let report = second.recover().await.unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(
        report.resumed,
        [(tid("crash"), run_id, StatusKind::Completed)]
    );
    assert_eq!(
        ["fan", "a", "b", "c", "after"].map(|n| runs.count(n)),
        [1, 1, 1, 2, 1],
        "only the unfinished node ran again"
    );

    let st = h.state("crash").await.unwrap();
    assert_eq!(st.values.log, ["fan", "a", "b", "c", "after"]);
    assert_eq!(st.values.counter, 4);
    assert!(matches!(
        st.run.unwrap().status,
        RunStatus::Completed { .. }
    ));
    // Each node has exactly one recorded completion, all in the same run.
    let events = all_events(&second, "crash").await;
    assert!(events.iter().all(|e| e.run_id == run_id));
    for n in ["fan", "a", "b", "c", "after"] {
        let done: Vec<_> = events
            .iter()
            .filter(|e| matches!(&e.body, EventBody::NodeCompleted { node, .. } if node == n))
            .collect();
        assert_eq!(done.len(), 1, "{n}");
        assert_eq!(done[0].body.attempt(), Some(1));
    }
    assert!(h.verify("crash").await.unwrap().is_consistent());

    // Nothing left to recover; resuming a finished thread is a clear error.
    let again = second.recover().await.unwrap();
    assert!(again.resumed.is_empty() && again.skipped.is_empty());
    assert_eq!(
        h.recover_thread("crash").await.unwrap_err(),
        Error::NoActiveRun(tid("crash"))
    );
    assert_eq!(
        h.recover_thread("never-ran").await.unwrap_err(),
        Error::ThreadNotFound(tid("never-ran"))
    );
}

#[tokio::test]
async fn recovery_skips_runs_whose_graph_version_is_not_registered() {
    let store = Arc::new(MemoryStore::new());
    let runs = Counters::new();
    let run_id = crash_mid_superstep(&store, &runs, "pinned").await;

    let second = Engine::new(store.clone());
    let v2 = second.register(crashy("2", runs.clone(), None).compile().unwrap());
    let report = second.recover().await.unwrap();
    assert!(report.resumed.is_empty());
    assert_eq!(report.skipped.len(), 1);
    let (thread, run, err) = &report.skipped[0];
    assert_eq!((thread, *run), (&tid("pinned"), run_id));
    assert_eq!(
        err,
        &Error::GraphNotRegistered {
            thread_id: tid("pinned"),
            run_id,
            graph: "crashy".into(),
            version: "1".into(),
        }
    );
    // Resuming with the other version is refused too, and changes nothing.
    let err = v2.recover_thread("pinned").await.unwrap_err();
    assert!(
        matches!(&err, Error::GraphNotRegistered { version, .. } if version == "1"),
        "{err:?}"
    );
    assert_eq!(
        store.run(run_id).await.unwrap().unwrap().status,
        RunStatus::Running
    );
    assert_eq!(runs.count("c"), 1);

    // With v1 registered, the run continues.
    let v1 = second.register(crashy("1", runs.clone(), None).compile().unwrap());
    let s = v1
        .recover_thread("pinned")
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(s.log, ["fan", "a", "b", "c", "after"]);
    assert_eq!(
        ["fan", "a", "b", "c", "after"].map(|n| runs.count(n)),
        [1, 1, 1, 2, 1]
    );
}

// ---------------------------------------------------------------------------------------
// 13. Durability modes
// ---------------------------------------------------------------------------------------

/// Event bodies with the run's durability blanked out, for comparing modes.
fn normalized(events: &[Event]) -> Vec<EventBody> {
    events
        .iter()
        .map(|e| {
            let mut b = e.body.clone();
            if let EventBody::RunStarted { settings, .. } = &mut b {
                settings.durability = Durability::Sync;
            }
            b
        })
        .collect()
}

#[tokio::test]
async fn durability_modes_store_the_same_history_with_different_commit_counts() {
    let rec = Recorder::new();
    let (store, engine) = memory_engine(rec.options());
    let h = engine.register(linear("w1", 10).compile().unwrap());
    let mut states = Vec::new();
    for mode in [Durability::Sync, Durability::Batched, Durability::Exit] {
        let thread = mode.as_str();
        let s = h
            .start_with(
                thread,
                Lin::default(),
                RunOptions {
                    durability: Some(mode),
                    ..RunOptions::default()
                },
            )
            .await
            .unwrap()
            .expect_completed();
        states.push(hash(&s));
        match &all_events(&engine, thread).await[0].body {
            EventBody::RunStarted { settings, .. } => assert_eq!(settings.durability, mode),
            other => panic!("{other:?}"),
        }
        assert!(h.verify(thread).await.unwrap().is_consistent());
        store.delete_snapshots(&tid(thread)).await.unwrap();
        assert_eq!(hash(&h.state(thread).await.unwrap().values), hash(&s));
    }
    assert!(states.iter().all(|s| *s == states[0]), "same final state");
    let sync = normalized(&all_events(&engine, "sync").await);
    assert_eq!(sync.len(), 12);
    assert_eq!(normalized(&all_events(&engine, "batched").await), sync);
    assert_eq!(normalized(&all_events(&engine, "exit").await), sync);

    assert_eq!(rec.commits("sync").len(), 11);
    assert_eq!(rec.commits("batched").len(), 11);
    // Exit: the start, then everything else at the end, in one commit.
    let exit = rec.commits("exit");
    assert_eq!(exit.len(), 2, "{exit:#?}");
    assert_eq!(exit[0].events.len(), 1);
    assert_eq!(exit[1].events.len(), 11);
    assert_eq!(exit[1].expected_head, Seq(1));
    assert!(matches!(
        exit[1].run,
        Some(RunWrite::SetStatus {
            status: RunStatus::Completed { .. },
            ..
        })
    ));
    assert!(exit.iter().all(|c| c.durability == Durability::Exit));
    let snap = exit[1]
        .snapshot
        .as_ref()
        .expect("the final state is snapshotted");
    assert_eq!(snap.at_seq, Seq(11));
}

#[tokio::test]
async fn engine_wide_durability_applies_when_the_run_sets_none() {
    let rec = Recorder::new();
    let (_store, engine) = memory_engine(EngineOptions {
        durability: Durability::Exit,
        ..rec.options()
    });
    let h = engine.register(linear("w1", 5).compile().unwrap());
    h.start("exit-default", Lin::default())
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(rec.commits("exit-default").len(), 2);
}

#[tokio::test]
async fn exit_durability_restarts_a_crashed_run_from_its_input() {
    // The documented trade-off: nothing between start and end is durable, so after a
    // crash every node runs again.
    let store = Arc::new(MemoryStore::new());
    let runs = Counters::new();
    let rec = Recorder::new();
    let first = Engine::with_options(
        store.clone(),
        EngineOptions {
            durability: Durability::Exit,
            ..rec.options()
        },
    );
    let (b, mut probe) = blocker();
    let dropped = probe.arm();
    let h = first.register(crashy("1", runs.clone(), Some(b)).compile().unwrap());
    let task = {
        let h = h.clone();
        tokio::spawn(async move { h.start("exit-crash", Lin::default()).await })
    };
    probe.started().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    within("c to be dropped", dropped).await.unwrap();
    assert_eq!(
        rec.commits("exit-crash").len(),
        1,
        "only the start is stored"
    );
    assert_eq!(all_events(&first, "exit-crash").await.len(), 1);

    let second = Engine::new(store.clone());
    second.register(crashy("1", runs.clone(), None).compile().unwrap());
    let report = second.recover().await.unwrap();
    assert_eq!(report.resumed.len(), 1);
    assert_eq!(report.resumed[0].2, StatusKind::Completed);
    assert_eq!(
        ["fan", "a", "b", "c", "after"].map(|n| runs.count(n)),
        [2, 2, 2, 2, 1]
    );
}

// ---------------------------------------------------------------------------------------
// 14. Corrupted data
// ---------------------------------------------------------------------------------------

/// Writes a run by hand: `RunStarted` with a valid input, then one `NodeCompleted` whose
/// update is `update_json`, closing the only superstep.
async fn write_by_hand(
    store: &MemoryStore,
    thread: &ThreadId,
    input_json: &str,
    update_json: &str,
) {
    let run_id = RunId::generate();
    let now = Timestamp::now();
    let started = Commit {
        thread_id: thread.clone(),
        expected_head: Seq::ZERO,
        events: vec![Event {
            seq: Seq(1),
            run_id,
            at: now,
            body: EventBody::RunStarted {
                graph: "w1".into(),
                graph_version: "1".into(),
                input: Payload::from_json(input_json.to_owned()).unwrap(),
                settings: RunSettings {
                    durability: Durability::Sync,
                    deadline: None,
                    superstep_limit: 10,
                    interrupt_before: vec![],
                    interrupt_after: vec![],
                },
                boundary: Boundary {
                    next: vec![Task::Node("n0".into())],
                    barriers: Default::default(),
                },
            },
        }],
        run: Some(RunWrite::Create(RunRecord {
            run_id,
            thread_id: thread.clone(),
            graph: "w1".into(),
            graph_version: "1".into(),
            status: RunStatus::Running,
            first_seq: Seq(1),
            created_at: now,
            updated_at: now,
            priority: 0,
            metadata: None,
            ready_at: None,
            lease_epoch: 0,
            lease: None,
        })),
        snapshot: None,
        durability: Durability::Sync,
        fence: None,
    };
    store.commit(started).await.unwrap();
    let completed = Commit {
        thread_id: thread.clone(),
        expected_head: Seq(1),
        events: vec![Event {
            seq: Seq(2),
            run_id,
            at: now,
            body: EventBody::NodeCompleted {
                superstep: 0,
                task: 0,
                node: "n0".into(),
                attempt: 1,
                update: Payload::from_json(update_json.to_owned()).unwrap(),
                boundary: Some(Boundary::default()),
            },
        }],
        run: None,
        snapshot: None,
        durability: Durability::Sync,
        fence: None,
    };
    store.commit(completed).await.unwrap();
}

#[tokio::test]
async fn updates_that_do_not_match_the_state_are_reported_as_corrupt() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(linear("w1", 1).compile().unwrap());
    let input = Payload::encode(&Lin::default().into_update()).unwrap();

    // The control: the same hand-written log with a well-formed update reads fine.
    write_by_hand(
        &store,
        &tid("fine"),
        input.json(),
        r#"{"counter":1,"log":["n0"]}"#,
    )
    .await;
    let st = h.state("fine").await.unwrap();
    assert_eq!(st.values.counter, 1);
    assert_eq!(st.values.log, ["n0"]);

    for (thread, update, path) in [
        ("bad-counter", r#"{"counter":"ten"}"#, "counter"),
        ("bad-log", r#"{"log":["ok", 5]}"#, "log[1]"),
    ] {
        write_by_hand(&store, &tid(thread), input.json(), update).await;
        let err = h.state(thread).await.unwrap_err();
        match &err {
            Error::Corrupt {
                thread_id,
                seq,
                detail,
            } => {
                assert_eq!(thread_id, &tid(thread));
                assert_eq!(*seq, Some(Seq(2)));
                assert!(detail.contains(&format!("`{path}`")), "{detail}");
            }
            other => panic!("{thread}: {other:?}"),
        }
        let shown = err.to_string();
        assert!(shown.contains(thread) && shown.contains("seq 2"), "{shown}");
        // Every read path reports it the same way.
        assert_eq!(h.verify(thread).await.unwrap_err(), err);
        assert_eq!(
            h.state_at(thread, oris_core::id::CheckpointId(Seq(2)))
                .await
                .unwrap_err(),
            err
        );
    }

    // A corrupt input is named as such.
    write_by_hand(&store, &tid("bad-input"), r#"{"log":"nope"}"#, "{}").await;
    match h.state("bad-input").await.unwrap_err() {
        Error::Corrupt { seq, detail, .. } => {
            assert_eq!(seq, Some(Seq(1)));
            assert!(
                detail.contains("input") && detail.contains("`log`"),
                "{detail}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn recovery_reports_a_corrupt_run_instead_of_running_it() {
    let (store, engine) = memory_engine(EngineOptions::default());
    let runs = Counters::new();
    let r = runs.clone();
    let g = StateGraph::<Lin>::new("w1", "1")
        .node("n0", move |_s: Lin, _ctx| {
            r.hit("n0");
            async { Ok::<_, NodeError>(LinUpdate::default()) }
        })
        .node("n1", |_s: Lin, _ctx| async {
            Ok::<_, NodeError>(LinUpdate::default())
        })
        .edge(START, "n0")
        .edge("n0", "n1")
        .edge("n1", END)
        .compile()
        .unwrap();
    engine.register(g);
    let input = Payload::encode(&Lin::default().into_update()).unwrap();
    // A run left unfinished (its boundary says nothing follows, but no RunCompleted).
    write_by_hand(&store, &tid("rotten"), input.json(), r#"{"counter":[]}"#).await;
    let report = engine.recover().await.unwrap();
    assert!(report.resumed.is_empty());
    assert_eq!(report.skipped.len(), 1);
    assert!(
        matches!(&report.skipped[0].2, Error::Corrupt { seq: Some(Seq(2)), detail, .. } if detail.contains("`counter`")),
        "{:?}",
        report.skipped
    );
    assert_eq!(runs.count("n0"), 0);
}

/// `a → b → c`, `a → d`, join `[c, d] → e`; `c` blocks while `block_c`.
fn late_join(runs: Arc<Counters>, block_c: Option<Blocker>) -> StateGraph<Lin> {
    let node = |me: &'static str| {
        let runs = runs.clone();
        let block = if me == "c" { block_c.clone() } else { None };
        move |_s: Lin, _ctx| {
            runs.hit(me);
            let block = block.clone();
            async move {
                if let Some(b) = block {
                    b.block().await;
                }
                Ok::<_, NodeError>(LinUpdate::default().log(vec![me.to_owned()]))
            }
        }
    };
    StateGraph::<Lin>::new("late-join", "1")
        .node("a", node("a"))
        .node("b", node("b"))
        .node("c", node("c"))
        .node("d", node("d"))
        .node("e", node("e"))
        .edge(START, "a")
        .edge("a", "b")
        .edge("b", "c")
        .edge("a", "d")
        .join(["c", "d"], "e")
        .edge("e", END)
}

#[tokio::test]
async fn recovery_from_a_snapshot_keeps_join_progress() {
    let store = Arc::new(MemoryStore::new());
    let runs = Counters::new();
    let first = Engine::with_options(
        store.clone(),
        EngineOptions {
            snapshot_every: 1,
            ..EngineOptions::default()
        },
    );
    let (b, mut probe) = blocker();
    let dropped = probe.arm();
    let h = first.register(late_join(runs.clone(), Some(b)).compile().unwrap());
    let task = {
        let h = h.clone();
        tokio::spawn(async move { h.start("snap-join", Lin::default()).await })
    };
    probe.started().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    within("c to be dropped", dropped).await.unwrap();
    // The latest snapshot stands after superstep 1 (b, d) and holds d's arrival.
    let snap = store
        .snapshot(&tid("snap-join"), Seq(u64::MAX))
        .await
        .unwrap()
        .expect("snapshot every superstep");
    assert_eq!(snap.at_seq, Seq(4));
    assert_eq!(snap.next_superstep, 2);
    assert_eq!(snap.boundary.next, [Task::Node("c".into())]);
    assert_eq!(snap.boundary.barriers.len(), 1);

    let second = Engine::new(store.clone());
    let h = second.register(late_join(runs.clone(), None).compile().unwrap());
    let report = second.recover().await.unwrap();
    assert_eq!(report.resumed.len(), 1, "{report:?}");
    let st = h.state("snap-join").await.unwrap();
    assert_eq!(st.values.log, ["a", "b", "d", "c", "e"]);
    assert_eq!(
        ["a", "b", "c", "d", "e"].map(|n| runs.count(n)),
        [1, 1, 2, 1, 1]
    );
    assert!(h.verify("snap-join").await.unwrap().is_consistent());
}

#[tokio::test(start_paused = true)]
async fn a_retry_scheduled_before_a_crash_waits_for_its_retry_at_after_recovery() {
    // Attempt 1 fails and schedules attempt 2 in 20 s; the process dies during the
    // backoff. The recovered run must not hammer the failing dependency at once.
    let store = Arc::new(MemoryStore::new());
    let rec = Recorder::new();
    let runs = Counters::new();
    let graph = |runs: Arc<Counters>| {
        StateGraph::<Lin>::new("backoff", "1")
            .node_with(
                "n",
                oris_runtime::NodePolicy {
                    retry: oris_runtime::RetryPolicy::exponential(3)
                        .initial_interval(std::time::Duration::from_secs(20))
                        .jitter(false),
                    timeout: None,
                },
                move |_s: Lin, ctx| {
                    runs.hit("n");
                    async move {
                        if ctx.attempt() == 1 {
                            Err(NodeError::new("rate limited"))
                        } else {
                            Ok(LinUpdate::default().counter(i64::from(ctx.attempt())))
                        }
                    }
                },
            )
            .edge(START, "n")
            .edge("n", END)
            .compile()
            .unwrap()
    };
    let first = Engine::with_options(store.clone(), rec.options());
    let h = first.register(graph(runs.clone()));
    let task = {
        let h = h.clone();
        tokio::spawn(async move { h.start("backoff", Lin::default()).await })
    };
    within(
        "the failure to be committed",
        rec.wait_until("backoff", |c| {
            c.iter()
                .flat_map(|c| &c.events)
                .any(|e| matches!(e.body, EventBody::NodeFailed { .. }))
        }),
    )
    .await;
    task.abort();
    let _ = task.await;
    assert_eq!(runs.count("n"), 1);

    let t0 = tokio::time::Instant::now();
    let second = Engine::new(store.clone());
    let h = second.register(graph(runs.clone()));
    let s = h
        .recover_thread("backoff")
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(s.counter, 2, "attempt numbering survives the crash");
    assert_eq!(runs.count("n"), 2);
    let waited = t0.elapsed();
    assert!(
        (std::time::Duration::from_secs(19)..=std::time::Duration::from_secs(20)).contains(&waited),
        "the retry ran {waited:?} after recovery instead of at its retry_at"
    );
}

#[derive(
    Clone, Default, Debug, PartialEq, serde::Serialize, serde::Deserialize, oris_derive::State,
)]
#[oris(crate = "::oris_core")]
struct Score {
    score: f64,
}

#[tokio::test]
async fn an_update_that_cannot_be_replayed_is_never_recorded_as_a_success() {
    // serde_json writes NaN as `null`, which does not read back as an f64. Whatever the
    // engine does about it (refuse the update with `serialization`, or store it
    // faithfully), the thread must stay readable and equal to what the run returned.
    let g = StateGraph::<Score>::new("nan", "1")
        .node("n", |_s: Score, _ctx| async {
            Ok::<_, NodeError>(ScoreUpdate::default().score(f64::NAN))
        })
        .edge(START, "n")
        .edge("n", END)
        .compile()
        .unwrap();
    let (store, engine) = memory_engine(EngineOptions::default());
    let h = engine.register(g);
    let out = h.start("nan", Score::default()).await.unwrap();
    let f = out
        .failure()
        .expect("a NaN update cannot be recorded faithfully");
    assert_eq!(f.kind, oris_core::event::FailureKind::Serialization, "{f}");
    assert_eq!(f.node.as_deref(), Some("n"));
    let st = h.state("nan").await.expect("the thread stays readable");
    assert!(h.verify("nan").await.unwrap().is_consistent());
    store.delete_snapshots(&tid("nan")).await.unwrap();
    let replayed = h.state("nan").await.expect("the log alone replays");
    assert_eq!(hash(&replayed.values), hash(&st.values));
    if let Some(s) = out.state() {
        assert_eq!(hash(s), hash(&replayed.values));
    }
}

#[tokio::test]
async fn recovery_keeps_fan_out_tasks_paired_with_their_inputs() {
    #[derive(
        Clone, Default, Debug, PartialEq, serde::Serialize, serde::Deserialize, oris_derive::State,
    )]
    #[oris(crate = "::oris_core")]
    struct Items {
        items: Vec<u32>,
        #[reducer(append)]
        out: Vec<String>,
    }
    let build = |runs: Arc<Counters>, block: Option<Blocker>| {
        StateGraph::<Items>::new("send-crash", "1")
            .node("plan", |_s: Items, _ctx| async {
                Ok::<_, NodeError>(ItemsUpdate::default())
            })
            .node("work", move |_s: Items, ctx| {
                let runs = runs.clone();
                let block = block.clone();
                async move {
                    let item: u32 = ctx.input()?.unwrap();
                    runs.hit(&format!("work-{item}"));
                    if item == 30
                        && let Some(b) = block
                    {
                        b.block().await;
                    }
                    Ok::<_, NodeError>(
                        ItemsUpdate::default().out(vec![format!("{}:{item}", ctx.task())]),
                    )
                }
            })
            .edge(START, "plan")
            .conditional_edge("plan", ["work"], |s: &Items| {
                s.items
                    .iter()
                    .fold(oris_runtime::Route::default(), |r, i| r.send("work", i))
            })
            .edge("work", END)
            .compile()
            .unwrap()
    };
    let store = Arc::new(MemoryStore::new());
    let runs = Counters::new();
    let rec = Recorder::new();
    let first = Engine::with_options(store.clone(), rec.options());
    let (b, mut probe) = blocker();
    let dropped = probe.arm();
    let h = first.register(build(runs.clone(), Some(b)));
    let input = Items {
        items: vec![10, 20, 30, 40],
        out: vec![],
    };
    let task = {
        let h = h.clone();
        tokio::spawn(async move { h.start("send-crash", input).await })
    };
    probe.started().await;
    within(
        "the other workers to be committed",
        rec.wait_until("send-crash", |c| completions(c, "work") == 3),
    )
    .await;
    task.abort();
    let _ = task.await;
    within("the blocked worker to be dropped", dropped)
        .await
        .unwrap();

    let second = Engine::new(store.clone());
    let h = second.register(build(runs.clone(), None));
    let s = h
        .recover_thread("send-crash")
        .await
        .unwrap()
        .expect_completed();
    assert_eq!(s.out, ["0:10", "1:20", "2:30", "3:40"]);
    assert_eq!(
        [10, 20, 30, 40].map(|i| runs.count(&format!("work-{i}"))),
        [1, 1, 2, 1]
    );
}
