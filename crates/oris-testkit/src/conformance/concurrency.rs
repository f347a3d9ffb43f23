//! Concurrent writers and readers: compare-and-set on the head, independent threads,
//! consistent reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use oris_core::id::Seq;
use oris_core::status::{RunStatus, StatusKind};
use oris_core::store::{Commit, Error, RunFilter, Store};
use tokio::sync::Barrier;
use tokio::task::JoinHandle;

use crate::build::{self, GRAPH};
use crate::check::{
    ALL, LATEST, all_events, assert_contiguous, ok, run_ids, run_record, thread_record,
};
use crate::writer::Writer;

/// Awaits a task, re-raising its panic (with its message) if it panicked.
pub(crate) async fn join<T>(task: JoinHandle<T>) -> T {
    match task.await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("a task of the case was cancelled: {e}"),
    }
}

/// Writers released together, all expecting the same head: exactly one commit succeeds,
/// every other fails with `Conflict { expected: head, actual: head + 1 }`, and the log holds
/// the winner's event. 100 rounds of 2 writers, then 20 rounds of 8.
pub async fn concurrent_appends_exactly_one_wins(store: Arc<dyn Store>) {
    let mut w = Writer::start(&*store, "race").await;
    let (t, r) = (w.thread.clone(), w.run.run_id);
    let rounds = (0..100).map(|i| (i, 2)).chain((100..120).map(|i| (i, 8)));
    for (round, contenders) in rounds {
        let head = w.head;
        let barrier = Arc::new(Barrier::new(contenders));
        let tasks: Vec<_> = (0..contenders)
            .map(|k| {
                let update = format!(r#"{{"writer":{k},"round":{round}}}"#);
                let event = build::completed(r, head + 1, round, "a", &update, None);
                let commit = build::append(&t, head, vec![event.clone()]);
                let (store, barrier) = (store.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    (event, store.commit(commit).await)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            match join(task).await {
                (event, Ok(receipt)) => {
                    assert_eq!(receipt.head, Seq(head + 1), "round {round}: winner's head");
                    winners.push(event);
                }
                (_, Err(e)) => assert_eq!(
                    e,
                    Error::Conflict {
                        thread_id: t.clone(),
                        expected: Seq(head),
                        actual: Seq(head + 1),
                    },
                    "round {round}: a losing writer's error"
                ),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} of {contenders} writers expecting head {head} succeeded",
            winners.len()
        );
        let got = ok(
            store.events(&t, Seq(head), ALL).await,
            "events after the race",
        );
        assert_eq!(
            got, winners,
            "round {round}: the log must hold the winner's event"
        );
        w.head += 1;
    }
    assert_eq!(thread_record(&*store, &t).await.head, Seq(w.head));
}

/// A status change and an append racing on the same head: exactly one wins, the other
/// fails with `Conflict { expected: head, actual: head + 1 }` (a status change carries an
/// event, so it moves the head like any append), and the stored run and log are the
/// winner's alone. 40 rounds of a cancellation against a step, then 40 of a queued run's
/// start against an event of that run.
pub async fn status_change_races_append_exactly_one_wins(store: Arc<dyn Store>) {
    for round in 0..80u32 {
        let s = &*store;
        let terminal = round < 40;
        let (t, run, head) = if terminal {
            let mut w = Writer::start(s, &format!("race-status-{round}")).await;
            w.steps(s, 1).await;
            (w.thread, w.run, w.head)
        } else {
            let t = build::thread_id(&format!("race-status-{round}"));
            let run = build::queued(build::run_record(&t, GRAPH, 1));
            ok(s.commit(build::create(&run, vec![])).await, "queued run");
            (t, run, 0)
        };
        let r = run.run_id;
        let status = if terminal {
            build::status_cancelled("raced")
        } else {
            RunStatus::Running
        };
        let change = if terminal {
            build::finish(&t, head, r, status.clone(), vec![])
        } else {
            build::set_status(
                &t,
                head,
                r,
                status.clone(),
                vec![build::started(&run, head + 1)],
            )
        };
        let append = build::append(&t, head, vec![build::step(r, head + 1)]);
        let expected_events = [change.events.clone(), append.events.clone()];
        let barrier = Arc::new(Barrier::new(2));
        let tasks: Vec<_> = [change, append]
            .into_iter()
            .map(|commit| {
                let (store, barrier) = (store.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.commit(commit).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(join(task).await);
        }
        let winners: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: status change → {:?}, append → {:?}: exactly one must win",
            results[0],
            results[1]
        );
        let winner = winners[0];
        let loser = &results[1 - winner];
        assert_eq!(
            loser.as_ref().err(),
            Some(&Error::Conflict {
                thread_id: t.clone(),
                expected: Seq(head),
                actual: Seq(head + 1),
            }),
            "round {round}: the loser's error"
        );
        let got = ok(
            store.events(&t, Seq(head), ALL).await,
            "events after the race",
        );
        assert_eq!(
            got, expected_events[winner],
            "round {round}: the log must hold the winner's events"
        );
        let want_status = if winner == 0 {
            status
        } else {
            run.status.clone()
        };
        let stored = run_record(s, r).await;
        assert_eq!(stored.status, want_status, "round {round}: run status");
        let record = thread_record(s, &t).await;
        assert_eq!(record.head, Seq(head + 1), "round {round}: head");
        let active = (!want_status.is_terminal()).then_some(r);
        assert_eq!(record.active_run, active, "round {round}: active run");
    }
}

/// Writers racing to create the same thread, each with its own run: exactly one wins,
/// the others fail with `Conflict { expected: 0, actual: 1 }`, and only the winner's run
/// and event exist. 40 rounds of 2 writers, then 10 rounds of 6.
pub async fn concurrent_creations_exactly_one_wins(store: Arc<dyn Store>) {
    let rounds = (0..40).map(|i| (i, 2)).chain((40..50).map(|i| (i, 6)));
    for (round, contenders) in rounds {
        let t = build::thread_id(&format!("create-race-{round}"));
        let barrier = Arc::new(Barrier::new(contenders));
        let tasks: Vec<_> = (0..contenders)
            .map(|_| {
                let run = build::run_record(&t, GRAPH, 1);
                let commit = build::create(&run, vec![build::started(&run, 1)]);
                let (store, barrier) = (store.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    (run, store.commit(commit).await)
                })
            })
            .collect();
        let (mut winners, mut losers) = (Vec::new(), Vec::new());
        for task in tasks {
            match join(task).await {
                (run, Ok(receipt)) => {
                    assert_eq!(receipt.head, Seq(1), "round {round}: winner's head");
                    winners.push(run);
                }
                (run, Err(e)) => {
                    assert_eq!(
                        e,
                        Error::Conflict {
                            thread_id: t.clone(),
                            expected: Seq::ZERO,
                            actual: Seq(1),
                        },
                        "round {round}: a losing creator's error"
                    );
                    losers.push(run);
                }
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} of {contenders} creators of one thread succeeded",
            winners.len()
        );
        let s = &*store;
        let winner = &winners[0];
        let record = thread_record(s, &t).await;
        assert_eq!(record.active_run, Some(winner.run_id), "round {round}");
        assert_eq!(all_events(s, &t).await, vec![build::started(winner, 1)]);
        let by_thread = RunFilter {
            thread_id: Some(t.clone()),
            ..RunFilter::default()
        };
        assert_eq!(run_ids(s, &by_thread).await, vec![winner.run_id]);
        for loser in losers {
            assert_eq!(ok(s.run(loser.run_id).await, "run(loser)"), None);
        }
    }
}

/// 32 threads, each written by its own task with 50 commits (create, 48 steps, complete),
/// all at once: every commit is visible to the next read, and in the end every log is
/// complete, contiguous and holds exactly its own run's events.
pub async fn many_threads_commit_concurrently(store: Arc<dyn Store>) {
    const THREADS: usize = 32;
    const STEPS: u64 = 48;
    let tasks: Vec<_> = (0..THREADS)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let s = &*store;
                let mut w = Writer::start(s, &format!("many-{i:02}")).await;
                for _ in 0..STEPS {
                    w.steps(s, 1).await;
                    let head = thread_record(s, &w.thread).await.head;
                    assert_eq!(
                        head,
                        Seq(w.head),
                        "`{}`: a commit must be visible",
                        w.thread
                    );
                }
                w.complete(s).await;
                w
            })
        })
        .collect();
    let mut writers = Vec::new();
    for task in tasks {
        writers.push(join(task).await);
    }

    let s = &*store;
    for w in &writers {
        let events = all_events(s, &w.thread).await;
        assert_eq!(events.len() as u64, STEPS + 2, "events of `{}`", w.thread);
        assert_contiguous(&w.thread, &events);
        assert_eq!(events[0], build::started(&w.run, 1), "`{}`", w.thread);
        for e in &events[1..=STEPS as usize] {
            assert_eq!(*e, build::step(w.run.run_id, e.seq.0), "`{}`", w.thread);
        }
        assert_eq!(
            events[STEPS as usize + 1],
            build::run_completed(w.run.run_id, STEPS + 2)
        );
        let record = thread_record(s, &w.thread).await;
        assert_eq!(record.head, Seq(STEPS + 2));
        assert_eq!(record.active_run, None);
        assert_eq!(record.last_run, Some(w.run.run_id));
        let run = run_record(s, w.run.run_id).await;
        assert_eq!(run.status.kind(), StatusKind::Completed, "`{}`", w.thread);
    }
    assert_eq!(run_ids(s, &RunFilter::default()).await.len(), THREADS);
    assert_eq!(run_ids(s, &RunFilter::unfinished()).await, vec![]);
}

/// Readers polling a thread while it is written see, at every read, a committed prefix of
/// the log (contiguous from seq 1, never shorter than the head read just before, never
/// shrinking, with exactly the written events) and a snapshot that stands inside the log;
/// the writer sees each of its commits in its next read.
pub async fn reads_during_writes_see_committed_prefixes(store: Arc<dyn Store>) {
    const COMMITS: u64 = 200;
    let s = &*store;
    let mut w = Writer::start(s, "prefix").await;
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|k| {
            let (store, done, w) = (store.clone(), done.clone(), w.clone());
            tokio::spawn(async move {
                let s = &*store;
                let mut seen = 0;
                loop {
                    let last_pass = done.load(Ordering::Acquire);
                    let snap = ok(s.snapshot(&w.thread, LATEST).await, "snapshot");
                    let head = thread_record(s, &w.thread).await.head;
                    let events = all_events(s, &w.thread).await;
                    let len = events.len() as u64;
                    assert_contiguous(&w.thread, &events);
                    assert!(
                        len >= head.0,
                        "reader {k}: {len} events after reading head {head}"
                    );
                    assert!(
                        len >= seen,
                        "reader {k}: the log shrank from {seen} to {len}"
                    );
                    assert_eq!(events[0], build::started(&w.run, 1), "reader {k}");
                    for e in &events[1..] {
                        assert_eq!(*e, build::step(w.run.run_id, e.seq.0), "reader {k}");
                    }
                    if let Some(snap) = snap {
                        let at = snap.at_seq.0;
                        assert!(at <= len, "reader {k}: snapshot at {at}, log of {len}");
                        assert_eq!(snap.state, build::payload(&format!(r#"{{"at":{at}}}"#)));
                    }
                    seen = len;
                    if last_pass {
                        assert_eq!(len, COMMITS + 1, "reader {k}: the final read");
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();

    for i in 1..=COMMITS {
        let seq = w.head + 1;
        let mut commit = build::append(&w.thread, w.head, vec![build::step(w.run.run_id, seq)]);
        if i % 10 == 0 {
            let state = format!(r#"{{"at":{seq}}}"#);
            commit = Commit {
                snapshot: Some(build::snapshot(w.run.run_id, seq, &state)),
                ..commit
            };
        }
        w.commit(s, commit).await;
        assert_eq!(
            all_events(s, &w.thread).await.len() as u64,
            w.head,
            "read your writes"
        );
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        join(reader).await;
    }
}
